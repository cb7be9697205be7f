//! Response keys in the order the document asks for them (the GraphQL
//! spec's "Serialized Map Ordering"). async-graphql resolves an object's
//! fields concurrently and keeps them in the order they finish, so `{
//! hostStats { total } __typename }` would answer `__typename` first. A
//! [`Shape`] is worked out once per document (it is part of its
//! [`super::document::Outline`]) and puts every object of a response back
//! in selection-set order, fragments expanded where they stand, before the
//! response is serialized: over HTTP, into the response cache and on
//! websockets alike.

use std::collections::HashMap;

use async_graphql::parser::types::{ExecutableDocument, Selection, SelectionSet};
use async_graphql::{Name, Value};

/// Selection sets followed below the root: deeper than any query the
/// depth limit lets run, and a bound on a hostile document's recursion
/// (the shape is made before validation).
const MAX_DEPTH: usize = 64;

/// The order of one selection set's response keys, and the shapes of the
/// selection sets below them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Shape {
    /// Position of each response key (alias or field name).
    position: HashMap<Name, usize>,
    /// The shape of each key's own selection set, merged over every place
    /// the key is selected (as execution merges them).
    below: HashMap<Name, Shape>,
}

impl Shape {
    /// The shape of an operation's selection set.
    pub fn of(document: &ExecutableDocument, selection_set: &SelectionSet) -> Shape {
        Self::of_sets(document, &[selection_set], 0)
    }

    fn of_sets(document: &ExecutableDocument, sets: &[&SelectionSet], depth: usize) -> Shape {
        let mut keys: Vec<Name> = Vec::new();
        let mut subsets: HashMap<Name, Vec<&SelectionSet>> = HashMap::new();
        let mut spreads = Vec::new();
        for set in sets {
            collect(document, set, &mut keys, &mut subsets, &mut spreads);
        }
        let position = keys
            .iter()
            .enumerate()
            .map(|(i, key)| (key.clone(), i))
            .collect();
        let below = if depth >= MAX_DEPTH {
            HashMap::new()
        } else {
            subsets
                .into_iter()
                .map(|(key, sets)| (key, Self::of_sets(document, &sets, depth + 1)))
                .collect()
        };
        Shape { position, below }
    }

    /// Puts every object of `value` (this shape's selection set's value:
    /// an object, or lists of them) in selection-set order. Keys the shape
    /// does not know keep their order, after the known ones.
    pub fn apply(&self, value: &mut Value) {
        match value {
            Value::Object(map) => {
                let rank = |key: &Name| self.position.get(key).copied().unwrap_or(usize::MAX);
                let in_order = map
                    .keys()
                    .zip(map.keys().skip(1))
                    .all(|(a, b)| rank(a) <= rank(b));
                if !in_order {
                    map.sort_by_cached_key(|key, _| rank(key));
                }
                for (key, value) in map.iter_mut() {
                    if let Some(below) = self.below.get(key) {
                        below.apply(value);
                    }
                }
            }
            Value::List(items) => items.iter_mut().for_each(|item| self.apply(item)),
            _ => {}
        }
    }
}

/// Appends the response keys of `set` not seen yet, in order, fragments
/// expanded in place (each named fragment once per path, so a cycle, which
/// validation refuses later, cannot recurse here), and gathers each key's
/// selection sets.
fn collect<'a>(
    document: &'a ExecutableDocument,
    set: &'a SelectionSet,
    keys: &mut Vec<Name>,
    subsets: &mut HashMap<Name, Vec<&'a SelectionSet>>,
    spreads: &mut Vec<&'a str>,
) {
    for item in &set.items {
        match &item.node {
            Selection::Field(field) => {
                let key = field.node.response_key().node.clone();
                if !subsets.contains_key(&key) {
                    keys.push(key.clone());
                }
                subsets
                    .entry(key)
                    .or_default()
                    .push(&field.node.selection_set.node);
            }
            Selection::InlineFragment(fragment) => {
                collect(
                    document,
                    &fragment.node.selection_set.node,
                    keys,
                    subsets,
                    spreads,
                );
            }
            Selection::FragmentSpread(spread) => {
                let name = spread.node.fragment_name.node.as_str();
                let Some(fragment) = document.fragments.get(name) else {
                    continue;
                };
                if spreads.contains(&name) {
                    continue;
                }
                spreads.push(name);
                collect(
                    document,
                    &fragment.node.selection_set.node,
                    keys,
                    subsets,
                    spreads,
                );
                spreads.pop();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ordered(query: &str, data: &str) -> String {
        let document = async_graphql::parser::parse_query(query).unwrap();
        let operation = match &document.operations {
            async_graphql::parser::types::DocumentOperations::Single(op) => op,
            async_graphql::parser::types::DocumentOperations::Multiple(ops) => {
                ops.values().next().unwrap()
            }
        };
        let shape = Shape::of(&document, &operation.node.selection_set.node);
        let mut value: Value = serde_json::from_str(data).unwrap();
        shape.apply(&mut value);
        serde_json::to_string(&value).unwrap()
    }

    #[test]
    fn objects_follow_the_selection_set_at_every_level() {
        assert_eq!(
            ordered(
                "{ hostStats { total } __typename list: hosts { edges { node { b a } } } }",
                r#"{"__typename":"Query","list":{"edges":[{"node":{"a":1,"b":2}},{"node":{"a":3,"b":4}}]},"hostStats":{"total":2}}"#,
            ),
            r#"{"hostStats":{"total":2},"__typename":"Query","list":{"edges":[{"node":{"b":2,"a":1}},{"node":{"b":4,"a":3}}]}}"#
        );
    }

    #[test]
    fn fragments_stand_where_they_are_spread_and_repeated_keys_merge() {
        assert_eq!(
            ordered(
                "query { c ...F a { y } ... on Query { b } a { x } } fragment F on Query { a { z } }",
                r#"{"b":1,"a":{"x":1,"y":2,"z":3},"c":0}"#,
            ),
            r#"{"c":0,"a":{"z":3,"y":2,"x":1},"b":1}"#
        );
    }

    #[test]
    fn a_fragment_cycle_ends() {
        assert_eq!(
            ordered(
                "{ ...A } fragment A on Query { b ...B } fragment B on Query { a ...A }",
                r#"{"a":1,"b":2}"#,
            ),
            r#"{"b":2,"a":1}"#
        );
    }
}
