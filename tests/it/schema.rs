//! The checked-in `schema.graphql` is what the code exports; regenerate it
//! with `cargo run -- schema > schema.graphql`.

#[test]
fn schema_file_matches_the_code() {
    let exported = dfgraph::graphql::sdl();
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/schema.graphql");
    let checked_in = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        checked_in == exported,
        "schema.graphql is out of date: run `cargo run -- schema > schema.graphql`"
    );
}
