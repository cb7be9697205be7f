//! The schema's promises, checked against real responses: `schema.graphql`
//! parsed, every value of a response walked against the type of its field
//! (a non-null field is never null, an `Int` fits 32 bits, a `Float` is a
//! number), and a selection of every field of a type, for queries that
//! ask for everything. Not in `support`: the CLI's tests share that, and
//! they do not depend on async-graphql.

use std::collections::BTreeMap;

use async_graphql::parser::parse_schema;
use async_graphql::parser::types::{BaseType, Type, TypeKind, TypeSystemDefinition};
use serde_json::Value;

/// A field: its type and whether it needs arguments.
struct Field {
    ty: Type,
    needs_arguments: bool,
}

/// The object and interface types of a schema, by name.
pub struct Schema {
    types: BTreeMap<String, BTreeMap<String, Field>>,
}

impl Schema {
    /// The repository's `schema.graphql`.
    pub fn exported() -> Schema {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/schema.graphql");
        let text = std::fs::read_to_string(path).expect("schema.graphql is readable");
        let document = parse_schema(&text).expect("schema.graphql parses");
        let mut types = BTreeMap::new();
        for definition in document.definitions {
            let TypeSystemDefinition::Type(t) = definition else {
                continue;
            };
            let t = t.node;
            let fields = match t.kind {
                TypeKind::Object(o) => o.fields,
                TypeKind::Interface(i) => i.fields,
                _ => continue,
            };
            let fields = fields
                .into_iter()
                .map(|f| {
                    let f = f.node;
                    let needs_arguments = f
                        .arguments
                        .iter()
                        .any(|a| !a.node.ty.node.nullable && a.node.default_value.is_none());
                    (
                        f.name.node.to_string(),
                        Field {
                            ty: f.ty.node,
                            needs_arguments,
                        },
                    )
                })
                .collect();
            types.insert(t.name.node.to_string(), fields);
        }
        Schema { types }
    }

    /// A selection of every field of `type_name` that takes no required
    /// argument, objects followed `depth` levels down.
    pub fn every_field(&self, type_name: &str, depth: usize) -> String {
        let Some(fields) = self.types.get(type_name) else {
            return String::new();
        };
        let mut out = Vec::new();
        for (name, field) in fields {
            if field.needs_arguments {
                continue;
            }
            let named = base_name(&field.ty);
            if self.types.contains_key(named) {
                if depth > 0 {
                    let inner = self.every_field(named, depth - 1);
                    if !inner.is_empty() {
                        out.push(format!("{name} {{ {inner} }}"));
                    }
                }
            } else {
                out.push(name.clone());
            }
        }
        out.join(" ")
    }

    /// Every broken promise in `data` (the response's `data`, a selection
    /// of `root`), as "path: what".
    pub fn broken_promises(&self, root: &str, data: &Value) -> Vec<String> {
        let mut broken = Vec::new();
        self.walk_object(root, data, "", &mut broken);
        broken
    }

    fn walk_object(&self, type_name: &str, value: &Value, path: &str, broken: &mut Vec<String>) {
        let Some(fields) = self.types.get(type_name) else {
            return;
        };
        let Some(object) = value.as_object() else {
            broken.push(format!("{path}: {type_name} is not an object: {value}"));
            return;
        };
        for (key, value) in object {
            let at = format!("{path}.{key}");
            match fields.get(key.as_str()) {
                Some(field) => self.walk(&field.ty, value, &at, broken),
                None if key == "__typename" => {}
                None => broken.push(format!("{at}: no such field of {type_name}")),
            }
        }
    }

    fn walk(&self, ty: &Type, value: &Value, path: &str, broken: &mut Vec<String>) {
        if value.is_null() {
            if !ty.nullable {
                broken.push(format!("{path}: null where the schema says {ty}"));
            }
            return;
        }
        match &ty.base {
            BaseType::List(inner) => match value.as_array() {
                Some(items) => {
                    for (i, item) in items.iter().enumerate() {
                        self.walk(inner, item, &format!("{path}[{i}]"), broken);
                    }
                }
                None => broken.push(format!("{path}: not a list: {value}")),
            },
            BaseType::Named(name) => match name.as_str() {
                "Int" if value.as_i64().is_none_or(|n| i32::try_from(n).is_err()) => {
                    broken.push(format!("{path}: {value} is not a 32-bit Int"));
                }
                "Float" if !value.is_number() => {
                    broken.push(format!("{path}: {value} is not a Float"));
                }
                "UInt32" if value.as_u64().is_none_or(|n| u32::try_from(n).is_err()) => {
                    broken.push(format!("{path}: {value} is not a UInt32"));
                }
                "UInt64" if value.as_u64().is_none() => {
                    broken.push(format!("{path}: {value} is not a UInt64"));
                }
                "String" | "ID" if !value.is_string() => {
                    broken.push(format!("{path}: {value} is not a {name}"));
                }
                name if self.types.contains_key(name) => {
                    self.walk_object(name, value, path, broken);
                }
                _ => {}
            },
        }
    }
}

fn base_name(ty: &Type) -> &str {
    match &ty.base {
        BaseType::Named(name) => name.as_str(),
        BaseType::List(inner) => base_name(inner),
    }
}
