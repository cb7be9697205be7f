//! The configuration reference says what the code does. Every setting of
//! `Config` is documented in a table of `docs/` (one with a `key` and a
//! `default` column), every key written there exists, and every default
//! written there is the built-in one: change a default or add a setting
//! without its line in the docs, and this fails.
//!
//! How a table is read: the key cell holds backticked keys (`a.b`, or
//! `b` for a sibling of the key before it; a header `key (`[cache]`)`
//! prefixes them all), the default cell one backticked value per key, in
//! the same order, read as a TOML value (`30s` and other bare words are
//! strings; durations compare as durations; `none` is unset), or a cell
//! starting `none` / `off` for settings that are unset by default. A key ending in `.*` points to
//! another page and is not checked.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

/// One default as the docs write it.
struct Documented {
    key: String,
    /// `None`: the docs say the setting is unset (`none`, `off`).
    value: Option<Value>,
    /// `file:line`, for the failure message.
    at: String,
}

fn docs() -> Vec<(String, String)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("docs/ exists")
        .map(|entry| entry.expect("a readable docs/ entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "md"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let name = format!("docs/{}", path.file_name().unwrap_or_default().display());
            (
                name,
                std::fs::read_to_string(&path).expect("a readable page"),
            )
        })
        .collect()
}

/// The cells of a table row; a `|` inside backticks is text, not a border.
fn cells(row: &str) -> Vec<String> {
    let row = row.trim().trim_start_matches('|').trim_end_matches('|');
    let (mut cells, mut cell, mut in_code) = (Vec::new(), String::new(), false);
    for c in row.chars() {
        match c {
            '`' => {
                in_code = !in_code;
                cell.push(c);
            }
            '|' if !in_code => cells.push(std::mem::take(&mut cell).trim().to_owned()),
            _ => cell.push(c),
        }
    }
    cells.push(cell.trim().to_owned());
    cells
}

/// The backticked spans of a cell.
fn code_spans(cell: &str) -> Vec<String> {
    cell.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

fn is_key(token: &str) -> bool {
    let token = token.strip_suffix(".*").unwrap_or(token);
    !token.is_empty()
        && token.split('.').all(|part| {
            !part.is_empty()
                && part
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        })
}

/// The full keys a key cell names.
fn keys_of(cell: &str, prefix: &str) -> Vec<String> {
    let mut keys: Vec<String> = Vec::new();
    for token in code_spans(cell).into_iter().filter(|t| is_key(t)) {
        let key = match keys.last() {
            Some(previous) if !token.contains('.') => match previous.rsplit_once('.') {
                Some((parent, _)) => format!("{parent}.{token}"),
                None => token,
            },
            _ => format!("{prefix}{token}"),
        };
        keys.push(key);
    }
    keys
}

/// A default as written: a TOML value, else the bare text as a string.
fn parse_value(text: &str) -> Value {
    match toml::from_str::<toml::Table>(&format!("v = {text}")) {
        Ok(mut table) => table
            .remove("v")
            .and_then(|v| serde_json::to_value(v).ok())
            .unwrap_or(Value::Null),
        Err(_) => Value::String(text.to_owned()),
    }
}

/// Every default the docs' configuration tables write, or the reasons a
/// row cannot be read.
fn documented() -> (Vec<Documented>, Vec<String>) {
    let (mut found, mut problems) = (Vec::new(), Vec::new());
    for (file, text) in docs() {
        let lines: Vec<&str> = text.lines().collect();
        let mut i = 0;
        while i + 1 < lines.len() {
            let header = cells(lines[i]);
            let is_table = lines[i].starts_with('|') && lines[i + 1].starts_with("| ---");
            let key_col = header.iter().position(|c| c.starts_with("key"));
            let default_col = header.iter().position(|c| c == "default");
            let (Some(key_col), Some(default_col), true) = (key_col, default_col, is_table) else {
                i += 1;
                continue;
            };
            let prefix = code_spans(&header[key_col])
                .iter()
                .find_map(|t| {
                    t.strip_prefix('[')?
                        .strip_suffix(']')
                        .map(|s| format!("{s}."))
                })
                .unwrap_or_default();
            i += 2;
            while i < lines.len() && lines[i].starts_with('|') {
                let row = cells(lines[i]);
                let at = format!("{file}:{}", i + 1);
                i += 1;
                let keys = keys_of(row.get(key_col).map_or("", |c| c), &prefix);
                if keys.is_empty() || keys.iter().any(|k| k.ends_with(".*")) {
                    continue;
                }
                let cell = row.get(default_col).map_or("", |c| c);
                let values = code_spans(cell);
                let unset = cell.starts_with("none") || cell.starts_with("off");
                if values.len() == keys.len() && !unset {
                    for (key, value) in keys.into_iter().zip(values) {
                        let value = (value != "none").then(|| parse_value(&value));
                        found.push(Documented {
                            key,
                            value,
                            at: at.clone(),
                        });
                    }
                } else if unset {
                    for key in keys {
                        found.push(Documented {
                            key,
                            value: None,
                            at: at.clone(),
                        });
                    }
                } else {
                    problems.push(format!(
                        "{at}: {} keys but {} backticked defaults: write one default per key, \
                         in backticks and in order (or `none`/`off` first for unset settings)",
                        keys.len(),
                        values.len()
                    ));
                }
            }
        }
    }
    (found, problems)
}

/// The built-in configuration as JSON.
fn defaults() -> Value {
    serde_json::to_value(dfgraph::config::Config::default()).expect("the defaults serialize")
}

fn lookup<'a>(root: &'a Value, key: &str) -> Option<&'a Value> {
    key.split('.').try_fold(root, |value, part| value.get(part))
}

/// Unset by default: null, or an empty list, table or string.
fn is_unset(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Array(items) => items.is_empty(),
        Value::Object(table) => table.is_empty(),
        Value::String(text) => text.is_empty(),
        Value::Bool(on) => !on,
        Value::Number(_) => false,
    }
}

fn duration(value: &Value) -> Option<Duration> {
    humantime::parse_duration(value.as_str()?).ok()
}

fn same(documented: &Value, code: &Value) -> bool {
    match (documented, code) {
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
        (Value::String(a), Value::String(b)) if a == b => true,
        (Value::String(_), Value::String(_)) => {
            duration(documented).is_some() && duration(documented) == duration(code)
        }
        (Value::Array(a), Value::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(a, b)| same(a, b))
        }
        (Value::Object(a), Value::Object(b)) => {
            a.len() == b.len() && a.iter().all(|(k, v)| b.get(k).is_some_and(|c| same(v, c)))
        }
        _ => documented == code,
    }
}

/// Every leaf setting of `value`, dotted (a table unset by default is one).
fn leaves(prefix: &str, value: &Value, out: &mut Vec<(String, bool)>) {
    match value {
        Value::Object(table) if !table.is_empty() => {
            for (key, value) in table {
                let key = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                leaves(&key, value, out);
            }
        }
        leaf => out.push((prefix.to_owned(), is_unset(leaf))),
    }
}

#[test]
fn every_documented_default_is_the_built_in_one() {
    let defaults = defaults();
    let (documented, mut problems) = documented();
    for doc in &documented {
        match lookup(&defaults, &doc.key) {
            Some(code) => match &doc.value {
                None if is_unset(code) => {}
                None => problems.push(format!(
                    "{}: `{}` is documented as unset but defaults to {code}",
                    doc.at, doc.key
                )),
                Some(value) if same(value, code) => {}
                Some(value) => problems.push(format!(
                    "{}: `{}` is documented as {value} but defaults to {code}",
                    doc.at, doc.key
                )),
            },
            // A setting of a table that is absent by default (`auth.manager`)
            // or an entry of a map: its nearest existing parent is unset.
            None => {
                let parent_unset = std::iter::successors(Some(doc.key.as_str()), |k| {
                    k.rsplit_once('.').map(|(parent, _)| parent)
                })
                .skip(1)
                .find_map(|parent| lookup(&defaults, parent))
                .is_some_and(is_unset);
                if !parent_unset {
                    problems.push(format!("{}: `{}` is not a setting", doc.at, doc.key));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn every_setting_is_documented() {
    let mut settings = Vec::new();
    leaves("", &defaults(), &mut settings);
    let (documented, _) = documented();
    let covered = |key: &str, unset: bool| {
        documented.iter().any(|doc| {
            doc.key == key
                || key.starts_with(&format!("{}.", doc.key))
                || (unset && doc.key.starts_with(&format!("{key}.")))
        })
    };
    let missing: Vec<_> = settings
        .iter()
        .filter(|(key, unset)| !covered(key, *unset))
        .map(|(key, _)| key.as_str())
        .collect();
    assert!(
        missing.is_empty(),
        "settings with no row in a docs/ configuration table (key | ... | default): {}",
        missing.join(", ")
    );
}
