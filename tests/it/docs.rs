//! The documentation a newcomer reads first stays short and its links lead
//! somewhere: the README is the front door (the reference lives in
//! `docs/`), and every relative link in it and in `docs/` names a file
//! that exists.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The targets of `[text](target)` links in `markdown`.
fn links(markdown: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = markdown;
    while let Some(at) = rest.find("](") {
        rest = &rest[at + 2..];
        if let Some(end) = rest.find(')') {
            found.push(rest[..end].to_string());
            rest = &rest[end..];
        }
    }
    found
}

fn markdown_files() -> Vec<PathBuf> {
    let mut files = vec![root().join("README.md"), root().join("BENCHMARKS.md")];
    let docs = std::fs::read_dir(root().join("docs")).expect("docs/ exists");
    for entry in docs {
        let path = entry.expect("a readable docs/ entry").path();
        if path.extension().is_some_and(|e| e == "md") {
            files.push(path);
        }
    }
    files
}

#[test]
fn the_readme_is_a_front_door_not_the_reference() {
    let readme = std::fs::read_to_string(root().join("README.md")).expect("README.md");
    let lines = readme.lines().count();
    assert!(
        lines <= 200,
        "README.md has {lines} lines; move reference material to docs/"
    );
    let architecture = readme
        .lines()
        .position(|l| l == "## How it works")
        .expect("README.md has a `## How it works` section");
    assert!(
        architecture < lines / 2,
        "the architecture (line {architecture}) belongs in the README's first half"
    );
}

#[test]
fn every_relative_link_in_the_docs_names_a_file_that_exists() {
    for file in markdown_files() {
        let text = std::fs::read_to_string(&file).expect("a readable markdown file");
        let dir = file.parent().unwrap_or(Path::new("."));
        for link in links(&text) {
            if link.starts_with("http://") || link.starts_with("https://") || link.starts_with('#')
            {
                continue;
            }
            let path = link.split('#').next().unwrap_or_default();
            assert!(
                dir.join(path).exists(),
                "{} links to {link}, which does not exist",
                file.display()
            );
        }
    }
}
