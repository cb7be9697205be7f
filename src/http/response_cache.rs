//! Whole responses to hot read-only queries (the console overview), kept
//! while the host lists they were computed from are current, and shared
//! execution of identical queries in flight.
//!
//! - Eligible: a query whose every root field (through fragments too) is
//!   `hosts`, `host`, `hostStats` or `__typename`. These read nothing but
//!   host lists, through the request's loaders, which note each value read
//!   (`Freshness`). A field added below them that reads anything else must
//!   read it through the loaders too, or the response would be kept past
//!   a change of it.
//! - Key: the principal's role, `operationName`, the variables as JSON
//!   with object keys sorted, and the query text as sent. The text is not
//!   re-printed (async-graphql has no printer): a client sends the same
//!   text each time, and two spellings of one query are only two entries.
//! - Kept: a response with no errors whose every read was a fresh host
//!   list (at least one), while the set of served clusters did not change
//!   during the execution.
//! - Served: while the hosts cache holds, fresh in L1, the very same
//!   values for those clusters, and the served clusters are the same. An
//!   invalidation, a reload or a replaced list gives new values, so a kept
//!   response is never served where an execution would answer otherwise.
//!   The check is a lookup like the execution's (hit counts,
//!   refresh-ahead), and `extensions.freshness` is computed from it.
//!   Past fresh, the query runs again (serving stale and reloading as a
//!   normal execution would).
//! - Shared: identical eligible requests arriving while one executes wait
//!   for it and get its response, kept or not. The execution runs in a task
//!   of its own, so the first caller going away does not fail the others.
//!
//! Eligible responses say which way they came in
//! `extensions.responseCache`: `"hit"`, `"shared"` or `"miss"`.

use std::any::Any;
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use async_graphql::Positioned;
use async_graphql::parser::types::{ExecutableDocument, Selection, SelectionSet};
use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use serde::{Deserialize, Serialize};
use tracing::Instrument;

use super::document::Outline;
use crate::auth::Role;
use crate::cache::CacheKey;
use crate::graphql::GatewayState;
use crate::graphql::freshness::Freshness;
use crate::setting::Invalid;

/// Root fields whose responses may be kept: they read only host lists.
const ELIGIBLE: [&str; 4] = ["hosts", "host", "hostStats", "__typename"];

/// Fragment nesting followed when checking root fields; deeper is refused.
const MAX_FRAGMENT_DEPTH: usize = 8;

/// Per-entry bookkeeping beyond the body and key, in bytes.
const OVERHEAD: usize = 128;

/// `[response_cache]`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ResponseCacheConfig {
    /// Keep and share responses of eligible queries.
    pub enabled: bool,
    /// Bytes of kept responses (body and key), least used dropped first.
    pub max_bytes: u64,
}

impl Default for ResponseCacheConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_bytes: 16 * 1024 * 1024,
        }
    }
}

impl ResponseCacheConfig {
    /// A cache that is on can keep something.
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.enabled && self.max_bytes == 0 {
            return Err(Invalid::new(
                "max_bytes",
                "must be greater than zero (set enabled = false to keep no responses)",
            ));
        }
        Ok(())
    }
}

/// A response as JSON text. One that never ran (a request error: the
/// document does not parse or validate, the variables do not fit) has no
/// `data` entry, as the GraphQL spec's response format asks.
pub fn encode(response: &async_graphql::Response, never_ran: bool) -> String {
    /// A response without `data`.
    #[derive(serde::Serialize)]
    struct RequestError<'a> {
        errors: &'a [async_graphql::ServerError],
        #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
        extensions: &'a std::collections::BTreeMap<String, async_graphql::Value>,
    }
    let encoded = if never_ran {
        serde_json::to_string(&RequestError {
            errors: &response.errors,
            extensions: &response.extensions,
        })
    } else {
        serde_json::to_string(response)
    };
    encoded.unwrap_or_else(|e| {
        serde_json::json!({"errors": [{"message": format!("cannot encode response: {e}")}]})
            .to_string()
    })
}

/// What an execution produced, for the response cache to render and keep.
pub struct Executed {
    pub response: async_graphql::Response,
    /// What the execution read.
    pub freshness: Arc<Freshness>,
    /// A request error: execution never started.
    pub never_ran: bool,
}

/// A response rendered once, its extensions apart so each caller gets its
/// own freshness and label.
pub struct Rendered {
    /// The response as JSON without `extensions` and the closing brace.
    head: String,
    extensions: serde_json::Map<String, serde_json::Value>,
    /// `head` deflated, made on the first gzip answer (see
    /// [`Rendered::gzip_body`]); `None` inside when not worth it.
    deflated_head: OnceLock<Option<DeflatedHead>>,
    /// How many errors the response has.
    pub errors: usize,
    pub never_ran: bool,
}

/// A response head compressed once for every gzip answer made of it.
struct DeflatedHead {
    /// Raw deflate blocks, none final, ending on a byte boundary (a sync
    /// flush), so another deflate stream may follow them.
    blocks: Vec<u8>,
    /// The CRC-32 of the head, to be continued over the tail.
    crc: crc32fast::Hasher,
}

/// Heads shorter than this are not worth a compressor (the HTTP layer's
/// threshold too).
const GZIP_MIN_BYTES: usize = 1024;

impl Rendered {
    fn of(mut response: async_graphql::Response, never_ran: bool) -> Self {
        let extensions = std::mem::take(&mut response.extensions)
            .into_iter()
            .filter_map(|(name, value)| Some((name, value.into_json().ok()?)))
            .collect();
        let mut head = encode(&response, never_ran);
        head.pop();
        Self {
            head,
            extensions,
            deflated_head: OnceLock::new(),
            errors: response.errors.len(),
            never_ran,
        }
    }

    /// The body, with `freshness` (if given, instead of the execution's)
    /// and the label in `extensions`.
    pub fn body(&self, freshness: Option<serde_json::Value>, label: &str) -> String {
        let mut body = String::with_capacity(self.head.len() + 256);
        body.push_str(&self.head);
        body.push_str(&self.tail(freshness, label));
        body
    }

    /// The same body gzipped, when it is large enough to be worth it. The
    /// head is compressed once per response; each answer compresses only
    /// its own `extensions` as a deflate stream of its own after it (a
    /// single gzip member: the head's blocks end on a byte boundary and are
    /// not final, and the tail's stream needs nothing before it).
    pub fn gzip_body(&self, freshness: Option<serde_json::Value>, label: &str) -> Option<Vec<u8>> {
        let head = self.deflated_head()?;
        let tail = self.tail(freshness, label);
        let tail_blocks = deflate(tail.as_bytes(), flate2::FlushCompress::Finish)?;
        let mut crc = head.crc.clone();
        crc.update(tail.as_bytes());
        let length = (self.head.len() + tail.len()) as u32;
        // A gzip member: its header (deflate, no name, no mtime, unknown OS),
        // the deflate stream, then CRC-32 and length, little endian.
        let mut body = Vec::with_capacity(18 + head.blocks.len() + tail_blocks.len());
        body.extend_from_slice(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff]);
        body.extend_from_slice(&head.blocks);
        body.extend_from_slice(&tail_blocks);
        body.extend_from_slice(&crc.finalize().to_le_bytes());
        body.extend_from_slice(&length.to_le_bytes());
        Some(body)
    }

    /// The head deflated: made by the first caller (kept responses are
    /// prepared before they are kept). Never waits for another thread
    /// making it: two callers racing both compress, one result stays.
    fn deflated_head(&self) -> Option<&DeflatedHead> {
        if let Some(made) = self.deflated_head.get() {
            return made.as_ref();
        }
        let made = (self.head.len() >= GZIP_MIN_BYTES)
            .then(|| {
                let mut crc = crc32fast::Hasher::new();
                crc.update(self.head.as_bytes());
                let mut blocks = deflate(self.head.as_bytes(), flate2::FlushCompress::Sync)?;
                blocks.shrink_to_fit();
                Some(DeflatedHead { blocks, crc })
            })
            .flatten();
        let _ = self.deflated_head.set(made);
        self.deflated_head.get()?.as_ref()
    }

    /// Bytes of the deflated head, made now if it was not yet.
    fn deflated_len(&self) -> usize {
        self.deflated_head().map_or(0, |head| head.blocks.len())
    }

    /// What follows the head: `extensions` and the closing brace.
    fn tail(&self, freshness: Option<serde_json::Value>, label: &str) -> String {
        let mut extensions = self.extensions.clone();
        if let Some(freshness) = freshness {
            extensions.insert("freshness".into(), freshness);
        }
        extensions.insert("responseCache".into(), label.into());
        let extensions = serde_json::Value::Object(extensions);
        let separator = if self.head.len() > 1 { "," } else { "" };
        format!("{separator}\"extensions\":{extensions}}}")
    }
}

/// `input` as raw deflate at the fastest level, ending with `flush`
/// (`Sync`: open for more; `Finish`: a final block). `None` if the
/// compressor fails.
fn deflate(input: &[u8], flush: flate2::FlushCompress) -> Option<Vec<u8>> {
    let mut compressor = flate2::Compress::new(flate2::Compression::fast(), false);
    let mut out = Vec::with_capacity(input.len() / 3 + 64);
    loop {
        if out.capacity() - out.len() < 64 {
            out.reserve(out.capacity().max(1024));
        }
        let consumed = compressor.total_in() as usize;
        let status = compressor
            .compress_vec(input.get(consumed..)?, &mut out, flush)
            .ok()?;
        let all_in = compressor.total_in() as usize == input.len();
        let done = match flush {
            flate2::FlushCompress::Finish => status == flate2::Status::StreamEnd,
            // Flushed once a call with all input in leaves room unused.
            _ => all_in && out.len() < out.capacity(),
        };
        if done {
            return Some(out);
        }
    }
}

/// The key of an eligible request.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Key(Arc<str>);

/// A kept response and what it was computed from.
struct Kept {
    rendered: Arc<Rendered>,
    /// The served clusters at the time.
    clusters: Vec<u64>,
    /// The host list read of each cluster, by identity.
    lists: Vec<(u64, Weak<dyn Any + Send + Sync>)>,
}

type Flight = Shared<BoxFuture<'static, Option<Arc<Rendered>>>>;

/// How a response was served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Served {
    Hit,
    Shared,
    Miss,
}

impl Served {
    pub fn as_str(self) -> &'static str {
        match self {
            Served::Hit => "hit",
            Served::Shared => "shared",
            Served::Miss => "miss",
        }
    }
}

/// The response cache of one process; clones share it.
#[derive(Clone)]
pub struct ResponseCache {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    kept: moka::future::Cache<Key, Arc<Kept>>,
    flights: Mutex<HashMap<Key, (u64, Flight)>>,
    next_flight: AtomicU64,
}

impl ResponseCache {
    /// Off with the entry cache off: nothing could be checked current, and
    /// every lookup is meant to reach the schedulers. Responses live at
    /// most the hosts' fresh TTL: no host list stays fresh longer, so no
    /// response stays valid longer.
    pub fn new(config: &ResponseCacheConfig, cache: &crate::cache::CacheConfig) -> Self {
        if !config.enabled || !cache.enabled {
            return Self { inner: None };
        }
        let longest_fresh = cache.ttl(crate::cache::Kind::Hosts).fresh;
        let kept = moka::future::Cache::builder()
            .name("dfgraph-responses")
            .max_capacity(config.max_bytes)
            .weigher(|key: &Key, kept: &Arc<Kept>| {
                // Weighing compresses the head: in the execution's task,
                // before the first hit could want it.
                let bytes = key.0.len()
                    + kept.rendered.head.len()
                    + kept.rendered.deflated_len()
                    + kept.lists.len() * 32
                    + kept.clusters.len() * 8
                    + OVERHEAD;
                bytes.min(u32::MAX as usize) as u32
            })
            .time_to_live(longest_fresh.max(Duration::from_millis(1)))
            .build();
        Self {
            inner: Some(Arc::new(Inner {
                kept,
                flights: Mutex::default(),
                next_flight: AtomicU64::new(1),
            })),
        }
    }

    /// The key of `request` run as `role`, if its response may be kept
    /// (`outline` is its document's, see [`Outline`]).
    pub fn key(
        &self,
        request: &async_graphql::Request,
        role: Role,
        outline: Option<&Outline>,
    ) -> Option<Key> {
        self.inner.as_ref()?;
        if !outline?.keepable {
            return None;
        }
        let variables = serde_json::to_value(&request.variables).ok()?;
        Some(Key(format!(
            "{}\u{0}{}\u{0}{}\u{0}{}",
            role.as_str(),
            request.operation_name.as_deref().unwrap_or(""),
            canonical(variables),
            request.query
        )
        .into()))
    }

    /// The response for `key`: kept and current, or from the execution of
    /// an identical request in flight, or from `execution` (run in a task
    /// of its own). `execution` must be the request `key` was made of.
    pub async fn serve<F>(
        &self,
        key: Key,
        gateway: &Arc<GatewayState>,
        execution: F,
    ) -> (Arc<Rendered>, Option<serde_json::Value>, Served)
    where
        F: Future<Output = Executed> + Send + 'static,
    {
        let Some(inner) = &self.inner else {
            // No key is made when off; run it anyway.
            let executed = execution.await;
            return (
                Arc::new(Rendered::of(executed.response, executed.never_ran)),
                None,
                Served::Miss,
            );
        };
        // Nobody was watching the host lists: the first look executes, so
        // its lists are loaded fresh (see `Loaders::host_lists_younger_than`).
        let first_sight = gateway.events.config.enabled && !gateway.events.interest.hosts_wanted();
        if !first_sight
            && let Some(kept) = inner.kept.get(&key).await
            && let Some(freshness) = current(&kept, gateway).await
        {
            // The hosts resolvers would have noted the interest.
            gateway.events.interest.touch_hosts();
            return (kept.rendered.clone(), Some(freshness), Served::Hit);
        }
        let (flight, served) = inner.join_or_start(key, gateway, execution);
        match flight.await {
            Some(rendered) => (rendered, None, served),
            // The execution panicked: an internal error, not a hang.
            None => (
                Arc::new(Rendered::of(
                    async_graphql::Response::from_errors(vec![async_graphql::ServerError::new(
                        "the execution of this request failed",
                        None,
                    )]),
                    false,
                )),
                None,
                served,
            ),
        }
    }
}

impl Inner {
    fn join_or_start<F>(
        self: &Arc<Self>,
        key: Key,
        gateway: &Arc<GatewayState>,
        execution: F,
    ) -> (Flight, Served)
    where
        F: Future<Output = Executed> + Send + 'static,
    {
        let mut flights = self.flights.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, flight)) = flights.get(&key) {
            return (flight.clone(), Served::Shared);
        }
        let id = self.next_flight.fetch_add(1, Ordering::Relaxed);
        let landing = Landing {
            inner: self.clone(),
            key: key.clone(),
            id,
        };
        let gateway = gateway.clone();
        let task = tokio::spawn(
            async move {
                let clusters = gateway.cluster.cluster_ids();
                let executed = execution.await;
                let lists = executed.freshness.fresh_host_lists();
                let rendered = Arc::new(Rendered::of(executed.response, executed.never_ran));
                let unchanged = gateway.cluster.cluster_ids() == clusters;
                if let Some(lists) = lists
                    && unchanged
                    && !rendered.never_ran
                    && rendered.errors == 0
                {
                    let kept = Arc::new(Kept {
                        rendered: rendered.clone(),
                        clusters,
                        lists,
                    });
                    landing.inner.kept.insert(landing.key.clone(), kept).await;
                }
                drop(landing);
                rendered
            }
            // The first caller's span is the execution's parent.
            .in_current_span(),
        );
        let flight = async move { task.await.ok() }.boxed().shared();
        flights.insert(key, (id, flight.clone()));
        (flight, Served::Miss)
    }
}

/// Ends a flight (also when its task panics or is cancelled): identical
/// requests after it look at what was kept, or start a new one.
struct Landing {
    inner: Arc<Inner>,
    key: Key,
    id: u64,
}

impl Drop for Landing {
    fn drop(&mut self) {
        let mut flights = self.inner.flights.lock().unwrap_or_else(|e| e.into_inner());
        if flights.get(&self.key).is_some_and(|(id, _)| *id == self.id) {
            flights.remove(&self.key);
        }
    }
}

/// The freshness report for serving `kept` now, if it is still current.
async fn current(kept: &Kept, gateway: &GatewayState) -> Option<serde_json::Value> {
    if gateway.cluster.cluster_ids() != kept.clusters {
        return None;
    }
    let keys: Vec<CacheKey> = kept
        .lists
        .iter()
        .map(|(cluster, _)| CacheKey::hosts(*cluster))
        .collect();
    let fetched = gateway
        .origins
        .hosts
        .fresh_in_l1(&keys, |i, value| {
            kept.lists.get(i).is_some_and(|(_, read)| {
                std::ptr::addr_eq(read.as_ptr(), Arc::as_ptr(value) as *const ())
            })
        })
        .await?;
    let freshness = Freshness::default();
    for (key, fetched) in keys.iter().zip(&fetched) {
        freshness.record(key, fetched);
    }
    Some(freshness.to_json())
}

/// True when every root field `selection_set` selects is eligible.
pub(crate) fn eligible(
    document: &ExecutableDocument,
    selection_set: &Positioned<SelectionSet>,
    depth: usize,
) -> bool {
    if depth > MAX_FRAGMENT_DEPTH {
        return false;
    }
    selection_set
        .node
        .items
        .iter()
        .all(|item| match &item.node {
            Selection::Field(field) => ELIGIBLE.contains(&field.node.name.node.as_str()),
            Selection::InlineFragment(fragment) => {
                eligible(document, &fragment.node.selection_set, depth + 1)
            }
            Selection::FragmentSpread(spread) => document
                .fragments
                .get(&spread.node.fragment_name.node)
                .is_some_and(|fragment| {
                    eligible(document, &fragment.node.selection_set, depth + 1)
                }),
        })
}

/// `value` as JSON text with every object's keys in order.
fn canonical(value: serde_json::Value) -> String {
    fn sort(value: serde_json::Value) -> serde_json::Value {
        match value {
            serde_json::Value::Object(map) => {
                let mut entries: Vec<_> = map.into_iter().collect();
                entries.sort_by(|a, b| a.0.cmp(&b.0));
                serde_json::Value::Object(entries.into_iter().map(|(k, v)| (k, sort(v))).collect())
            }
            serde_json::Value::Array(items) => {
                serde_json::Value::Array(items.into_iter().map(sort).collect())
            }
            other => other,
        }
    }
    sort(value).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache() -> ResponseCache {
        ResponseCache::new(&ResponseCacheConfig::default(), &Default::default())
    }

    fn request(query: &str, variables: serde_json::Value) -> async_graphql::Request {
        async_graphql::Request::new(query).variables(async_graphql::Variables::from_json(variables))
    }

    fn key_of(cache: &ResponseCache, request: &async_graphql::Request, role: Role) -> Option<Key> {
        let outline = Outline::of(&request.query, request.operation_name.as_deref());
        cache.key(request, role, outline.as_ref())
    }

    #[test]
    fn only_host_list_queries_are_eligible() {
        let cache = cache();
        let key = |q: &str| key_of(&cache, &request(q, serde_json::json!({})), Role::Viewer);
        assert!(key("{ hostStats { total } hosts(first: 5) { totalCount } }").is_some());
        assert!(key("query O { ...F } fragment F on Query { host(id: \"a\") { id } }").is_some());
        assert!(key("{ ... on Query { hosts { totalCount } } }").is_some());
        assert!(key("{ hosts { totalCount } schedulers { id } }").is_none());
        assert!(key("{ task(id: \"t\") { id } }").is_none());
        assert!(key("{ ...F } fragment F on Query { schedulerClusters { id } }").is_none());
        assert!(key("{ __schema { queryType { name } } }").is_none());
        assert!(key("mutation { deleteHost(id: \"h\") }").is_none());
        assert!(key("subscription { hostEvents { kind } }").is_none());
        assert!(key("{ hosts {").is_none());
        let off = ResponseCache::new(
            &ResponseCacheConfig {
                enabled: false,
                ..Default::default()
            },
            &Default::default(),
        );
        assert!(
            key_of(
                &off,
                &request("{ hosts { totalCount } }", serde_json::json!({})),
                Role::Viewer
            )
            .is_none()
        );
    }

    #[test]
    fn keys_separate_roles_and_variables_but_not_variable_order() {
        let cache = cache();
        let query =
            "query($f: HostFilter, $n: Int) { hosts(filter: $f, first: $n) { totalCount } }";
        let key =
            |variables: serde_json::Value, role| key_of(&cache, &request(query, variables), role);
        let a = key(
            serde_json::json!({"n": 1, "f": {"os": "linux", "idc": "x"}}),
            Role::Viewer,
        );
        let b = key(
            serde_json::json!({"f": {"idc": "x", "os": "linux"}, "n": 1}),
            Role::Viewer,
        );
        assert!(a.is_some());
        assert_eq!(a, b);
        assert_ne!(
            a,
            key(
                serde_json::json!({"n": 2, "f": {"os": "linux", "idc": "x"}}),
                Role::Viewer
            )
        );
        assert_ne!(
            a,
            key(
                serde_json::json!({"n": 1, "f": {"os": "linux", "idc": "x"}}),
                Role::Admin
            )
        );
    }

    #[test]
    fn a_gzip_body_inflates_to_the_body_and_its_head_is_compressed_once() {
        use std::io::Read;
        let hosts: Vec<_> = (0..200)
            .map(|n| serde_json::json!({"id": format!("host-{n}"), "ip": format!("10.0.{}.{}", n / 256, n % 256)}))
            .collect();
        let response = async_graphql::Response::new(
            async_graphql::Value::from_json(serde_json::json!({"hosts": hosts})).unwrap(),
        )
        .extension("freshness", async_graphql::Value::from(1));
        let rendered = Rendered::of(response, false);
        for (freshness, label) in [(Some(serde_json::json!({"age": 2})), "hit"), (None, "miss")] {
            let gzipped = rendered
                .gzip_body(freshness.clone(), label)
                .expect("large enough");
            let plain = rendered.body(freshness, label);
            assert!(
                gzipped.len() < plain.len() / 2,
                "{} of {}",
                gzipped.len(),
                plain.len()
            );
            // One member, as a browser's decoder reads it (not several).
            let mut decoder = flate2::read::GzDecoder::new(&gzipped[..]);
            let mut inflated = String::new();
            decoder.read_to_string(&mut inflated).expect("valid gzip");
            assert_eq!(inflated, plain);
            let mut rest = Vec::new();
            decoder.into_inner().read_to_end(&mut rest).unwrap();
            assert!(rest.is_empty(), "bytes after the member");
        }
        let head_blocks = |r: &Rendered| {
            r.deflated_head
                .get()
                .and_then(Option::as_ref)
                .map(|head| head.blocks.as_ptr())
        };
        let head = head_blocks(&rendered);
        rendered.gzip_body(None, "hit").unwrap();
        let again = head_blocks(&rendered);
        assert!(head.is_some());
        assert_eq!(head, again, "the head was compressed again");

        let small = Rendered::of(
            async_graphql::Response::new(async_graphql::Value::from(1)),
            false,
        );
        assert!(
            small.gzip_body(None, "hit").is_none(),
            "a small body is sent as it is"
        );
    }

    #[test]
    fn a_rendered_body_is_the_response_with_its_extensions() {
        let response = async_graphql::Response::new(
            async_graphql::Value::from_json(serde_json::json!({"hosts": {"totalCount": 3}}))
                .unwrap(),
        )
        .extension("freshness", async_graphql::Value::from(1));
        let rendered = Rendered::of(response, false);
        let body: serde_json::Value =
            serde_json::from_str(&rendered.body(Some(serde_json::json!(2)), "hit")).unwrap();
        assert_eq!(
            body,
            serde_json::json!({
                "data": {"hosts": {"totalCount": 3}},
                "extensions": {"freshness": 2, "responseCache": "hit"},
            })
        );
        let kept: serde_json::Value = serde_json::from_str(&rendered.body(None, "miss")).unwrap();
        assert_eq!(kept["extensions"]["freshness"], 1);
        assert_eq!(rendered.errors, 0);
        let failed = Rendered::of(
            async_graphql::Response::from_errors(vec![async_graphql::ServerError::new("no", None)]),
            true,
        );
        assert_eq!(failed.errors, 1);
    }
}
