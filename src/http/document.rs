//! What a request's document asks for (its operation's type and name, and
//! whether the response cache may keep the answer), worked out once per
//! distinct document and operation name. Clients send the same few
//! documents over and over, and parsing the console's overview costs more
//! than serving it from the response cache. The outline also holds the
//! order its responses' keys are written in (see [`super::order`]).

use std::hash::BuildHasher;
use std::sync::Arc;

use async_graphql::parser::types::OperationType;

use super::fanout::selected_operation;
use super::order::Shape;
use super::response_cache;

/// Bytes of document text remembered; the least used are forgotten first.
const MEMO_BYTES: u64 = 4 * 1024 * 1024;

/// Per-entry bookkeeping beyond the texts, in bytes.
const OVERHEAD: usize = 96;

/// The operation a document runs under an operation name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outline {
    pub ty: OperationType,
    /// The operation's name, when the document names it.
    pub name: Option<String>,
    /// A query whose every root field reads host lists only, so its
    /// response may be kept (see [`response_cache`]).
    pub keepable: bool,
    /// The order its responses' keys are written in.
    pub shape: Shape,
}

impl Outline {
    /// Parses `query` and finds the operation `operation_name` selects;
    /// `None` when it does not parse or selects nothing.
    pub fn of(query: &str, operation_name: Option<&str>) -> Option<Self> {
        let document = async_graphql::parser::parse_query(query).ok()?;
        let (name, operation) = match (&document.operations, operation_name) {
            (async_graphql::parser::types::DocumentOperations::Multiple(ops), None)
                if ops.len() == 1 =>
            {
                let (name, op) = ops.iter().next()?;
                (Some(name.to_string()), op)
            }
            (async_graphql::parser::types::DocumentOperations::Multiple(_), Some(name)) => (
                Some(name.to_owned()),
                selected_operation(&document, Some(name))?,
            ),
            _ => (None, selected_operation(&document, operation_name)?),
        };
        let ty = operation.node.ty;
        let keepable = ty == OperationType::Query
            && response_cache::eligible(&document, &operation.node.selection_set, 0);
        let shape = Shape::of(&document, &operation.node.selection_set.node);
        Some(Self {
            ty,
            name,
            keepable,
            shape,
        })
    }
}

/// An outline and the text it was made of (compared on every hit, so two
/// documents whose hashes collide never share one).
struct Remembered {
    query: Box<str>,
    operation_name: Option<Box<str>>,
    outline: Arc<Outline>,
}

/// Outlines of the documents seen lately; clones share them.
#[derive(Clone)]
pub struct Outlines {
    memo: moka::sync::Cache<u64, Arc<Remembered>>,
    hasher: std::collections::hash_map::RandomState,
}

impl Default for Outlines {
    fn default() -> Self {
        Self {
            memo: moka::sync::Cache::builder()
                .name("dfgraph-documents")
                .max_capacity(MEMO_BYTES)
                .weigher(|_, remembered: &Arc<Remembered>| {
                    let bytes = remembered.query.len()
                        + remembered.operation_name.as_ref().map_or(0, |n| n.len())
                        + OVERHEAD;
                    bytes.min(u32::MAX as usize) as u32
                })
                .build(),
            hasher: Default::default(),
        }
    }
}

impl Outlines {
    /// The outline of `request`'s document, parsed only the first time.
    pub fn of(&self, request: &async_graphql::Request) -> Option<Arc<Outline>> {
        let operation_name = request.operation_name.as_deref();
        let hash = self.hasher.hash_one((&request.query, operation_name));
        if let Some(remembered) = self.memo.get(&hash)
            && *remembered.query == *request.query
            && remembered.operation_name.as_deref() == operation_name
        {
            return Some(remembered.outline.clone());
        }
        let outline = Arc::new(Outline::of(&request.query, operation_name)?);
        self.memo.insert(
            hash,
            Arc::new(Remembered {
                query: request.query.as_str().into(),
                operation_name: operation_name.map(Into::into),
                outline: outline.clone(),
            }),
        );
        Some(outline)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outline(query: &str, name: Option<&str>) -> Option<Outline> {
        let mut request = async_graphql::Request::new(query);
        if let Some(name) = name {
            request = request.operation_name(name);
        }
        Outlines::default().of(&request).map(|o| (*o).clone())
    }

    #[test]
    fn an_outline_names_the_selected_operation_and_whether_it_may_be_kept() {
        let overview = outline("query Overview { hostStats { total } }", None).unwrap();
        assert_eq!(overview.ty, OperationType::Query);
        assert_eq!(overview.name.as_deref(), Some("Overview"));
        assert!(overview.keepable);

        let anonymous = outline("{ hosts(first: 1) { totalCount } }", None).unwrap();
        assert_eq!((anonymous.name, anonymous.keepable), (None, true));

        let two = "query A { hostStats { total } } mutation B { deleteHost(id: \"x\") }";
        assert_eq!(outline(two, None), None, "two operations and no name");
        let b = outline(two, Some("B")).unwrap();
        assert_eq!(
            (b.ty, b.name.as_deref(), b.keepable),
            (OperationType::Mutation, Some("B"), false)
        );
        assert!(outline(two, Some("A")).unwrap().keepable);
        assert_eq!(outline(two, Some("C")), None);

        let task = outline("{ task(id: \"t\") { id } }", None).unwrap();
        assert!(!task.keepable, "reads more than host lists");
        assert_eq!(outline("not graphql", None), None);
    }

    #[test]
    fn a_remembered_outline_is_only_given_for_the_same_text_and_name() {
        let outlines = Outlines::default();
        let query = "query A { hostStats { total } } query B { task(id: \"t\") { id } }";
        let a = async_graphql::Request::new(query).operation_name("A");
        let b = async_graphql::Request::new(query).operation_name("B");
        assert!(outlines.of(&a).unwrap().keepable);
        assert!(!outlines.of(&b).unwrap().keepable);
        // Asked again, each gets its own, the same as the first time.
        assert!(outlines.of(&a).unwrap().keepable);
        assert!(!outlines.of(&b).unwrap().keepable);
        assert_eq!(outlines.of(&a).unwrap().name.as_deref(), Some("A"));
    }
}
