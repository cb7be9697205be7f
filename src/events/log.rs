//! The event log: the events this deployment published, kept per
//! scheduler cluster for `[event_log] retention` so the past can be asked
//! about (`hostEventLog`, churn) and a subscriber can resume from where it
//! was. With Redis, one stream per cluster ([`keys::event_log`], hash
//! tagged), appended by the replica that publishes the event (the
//! cluster's lease holder, so each event once), trimmed approximately by
//! age and by `max_entries`; without Redis, a bounded ring in this
//! process. Every logged event carries an [`EventCursor`]: its cluster and
//! its id in the log, opaque to clients, versioned and checked.
//!
//! What is logged: host joins, leaves and changes (not changes of load
//! figures alone, which the watcher sees on almost every poll), peer
//! and task changes (not the baselines a new watch starts with), and
//! scheduler reachability and circuit transitions (as their cluster's
//! health recorder sees them, see [`super::health`]).

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use redis::Value;
use serde::{Deserialize, Serialize};

use super::{Event, HostChange, What, bus};
use crate::cache::keys;
use crate::clock::{Clock, SystemClock};
use crate::redis::{Redis, RedisError};
use crate::setting::{Invalid, positive};

/// The `[event_log]` settings.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct EventLogConfig {
    /// Off: nothing is kept; queries over the past answer empty and
    /// subscriptions cannot resume.
    pub enabled: bool,
    /// How long an event is kept (trimmed approximately; older ones are
    /// never answered).
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    /// Most events kept per scheduler cluster, whatever their age (the
    /// memory bound: about 1 KiB per host event in Redis).
    pub max_entries: usize,
    /// Most log entries one query reads (per cluster) before it answers
    /// with what it found.
    pub max_scan: usize,
    /// Record scheduler reachability and circuit transitions: one replica
    /// per scheduler cluster probes each of its schedulers every
    /// `watch.interval`, whether anyone subscribes or not (see
    /// [`super::health`]). Off: each replica probes only for its own
    /// `clusterHealth` subscribers, and nothing of it is logged.
    pub scheduler_health: bool,
}

impl Default for EventLogConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            retention: Duration::from_secs(24 * 3600),
            max_entries: 200_000,
            max_scan: 50_000,
            scheduler_health: true,
        }
    }
}

impl EventLogConfig {
    /// A retention of at least a second, room for at least one event.
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.retention < Duration::from_secs(1) {
            return Err(Invalid::new("retention", "must be at least 1s"));
        }
        positive("max_entries", self.max_entries)?;
        positive("max_scan", self.max_scan)
    }
}

/// An entry's place in its cluster's log: Redis stream id `ms-seq`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LogId {
    pub ms: u64,
    pub seq: u64,
}

impl LogId {
    /// The first id at or after unix milliseconds `ms`.
    pub fn at(ms: i64) -> LogId {
        LogId {
            ms: u64::try_from(ms).unwrap_or(0),
            seq: 0,
        }
    }

    /// The id right after this one.
    fn next(self) -> LogId {
        match self.seq.checked_add(1) {
            Some(seq) => LogId { seq, ..self },
            None => LogId {
                ms: self.ms.saturating_add(1),
                seq: 0,
            },
        }
    }

    /// The id right before this one (`None` for the very first).
    pub fn prev(self) -> Option<LogId> {
        match self.seq.checked_sub(1) {
            Some(seq) => Some(LogId { seq, ..self }),
            None => Some(LogId {
                ms: self.ms.checked_sub(1)?,
                seq: u64::MAX,
            }),
        }
    }

    pub fn parse(s: &str) -> Option<LogId> {
        let (ms, seq) = s.split_once('-')?;
        Some(LogId {
            ms: ms.parse().ok()?,
            seq: seq.parse().ok()?,
        })
    }
}

impl std::fmt::Display for LogId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// Where one logged event is: its cluster and its id there. Cursors are
/// totally ordered, newest last: by id, then by cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EventCursor {
    pub cluster_id: u64,
    pub id: LogId,
}

impl PartialOrd for EventCursor {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for EventCursor {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.id, self.cluster_id).cmp(&(other.id, other.cluster_id))
    }
}

/// The text before an encoded cursor: its format version.
const CURSOR_PREFIX: &str = "ev1_";

/// Why a cursor was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("not an event cursor (cursors are opaque: pass back one dfgraph gave)")]
pub struct BadCursor;

/// FNV-1a over the cursor's bytes: catches a cursor mistyped, cut or made
/// up by hand (not an authenticity check: cursors are not secrets).
fn checksum(bytes: &[u8]) -> [u8; 4] {
    let mut hash: u32 = 0x811c_9dc5;
    for b in b"dfgraph-event-cursor".iter().chain(bytes) {
        hash ^= u32::from(*b);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash.to_be_bytes()
}

impl EventCursor {
    /// The opaque text form clients pass back.
    pub fn encode(&self) -> String {
        let mut bytes = Vec::with_capacity(28);
        bytes.extend_from_slice(&self.cluster_id.to_be_bytes());
        bytes.extend_from_slice(&self.id.ms.to_be_bytes());
        bytes.extend_from_slice(&self.id.seq.to_be_bytes());
        let check = checksum(&bytes);
        bytes.extend_from_slice(&check);
        format!("{CURSOR_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes))
    }

    pub fn decode(text: &str) -> Result<EventCursor, BadCursor> {
        let body = text.strip_prefix(CURSOR_PREFIX).ok_or(BadCursor)?;
        let bytes = URL_SAFE_NO_PAD.decode(body).map_err(|_| BadCursor)?;
        if bytes.len() != 28 || checksum(&bytes[..24]) != bytes[24..] {
            return Err(BadCursor);
        }
        let word = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[at..at + 8]);
            u64::from_be_bytes(b)
        };
        Ok(EventCursor {
            cluster_id: word(0),
            id: LogId {
                ms: word(8),
                seq: word(16),
            },
        })
    }

    /// When the event was logged (unix ms).
    pub fn logged_at_ms(&self) -> i64 {
        i64::try_from(self.id.ms).unwrap_or(i64::MAX)
    }
}

/// Whether `event` belongs in the log (see the module doc).
pub fn loggable(event: &Event) -> bool {
    match &event.what {
        What::Host {
            change: super::HostChange::Updated,
            changed_fields,
            ..
        } => !super::diff::only_resources(changed_fields),
        What::Host { .. } => true,
        What::Peer { baseline, .. } | What::Task { baseline, .. } => !baseline,
        What::Scheduler { .. } => true,
    }
}

/// Why the log could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("event log unavailable: {0}")]
    Redis(#[from] RedisError),
    #[error("event log entry unreadable: {0}")]
    Entry(String),
}

/// One cluster's events in this process, oldest first.
#[derive(Default)]
struct RingCluster {
    events: VecDeque<Arc<Event>>,
    last: LogId,
}

/// Which bound of a read is open.
#[derive(Clone, Copy, Debug)]
pub struct Range {
    /// Oldest id included.
    pub from: LogId,
    /// Newest id included.
    pub to: LogId,
}

impl Range {
    pub fn all() -> Range {
        Range {
            from: LogId::default(),
            to: LogId {
                ms: u64::MAX,
                seq: u64::MAX,
            },
        }
    }

    /// The ids strictly after `id`, up to this range's end.
    pub fn after(self, id: LogId) -> Range {
        Range {
            from: self.from.max(id.next()),
            ..self
        }
    }

    /// The ids strictly before `id`, from this range's start (`None`:
    /// nothing is before it).
    pub fn before(self, id: LogId) -> Option<Range> {
        let to = id.prev()?;
        Some(Range {
            to: self.to.min(to),
            ..self
        })
    }

    fn is_empty(&self) -> bool {
        self.from > self.to
    }
}

/// The log, in Redis or in this process; cheap to clone.
#[derive(Clone)]
pub struct EventLog {
    inner: Arc<LogInner>,
}

struct LogInner {
    config: EventLogConfig,
    store: Store,
}

enum Store {
    Redis(Redis),
    Ring(Mutex<BTreeMap<u64, RingCluster>>),
}

/// How often (at most) a cluster's stream is trimmed by age; between
/// trims each append caps it by `max_entries`.
pub(crate) const TRIM_EVERY: Duration = Duration::from_secs(10);

/// Entries read per round trip while scanning.
const CHUNK: usize = 500;

/// Appends a host's transition unless the log's last transition of that
/// host already is it (then answers that entry's id instead): two replicas
/// that both observed one change (one still polling for itself while it
/// could not reach Redis) log it once, and both tell it under one cursor.
/// KEYS: the stream, the hash of each host's last logged state ("<id>
/// <state>"). ARGV: field, state, "p" (a join: a copy of any present
/// state) or "=", max entries, entry, how long states are kept (ms), a
/// field to forget (a host that joins or leaves starts its reachability
/// afresh), the oldest id (ms) a copy's original may have: copies come
/// within seconds of each other, and an older state may be stale (a
/// leave that happened while Redis was down was never logged, so a
/// rejoin must not pass for a copy of the join before it).
/// Answers {id, 1 if appended}.
const APPEND_TRANSITION: &str = r"
local last = redis.call('HGET', KEYS[2], ARGV[1])
if last then
  local at = string.find(last, ' ', 1, true)
  if at then
    local state = string.sub(last, at + 1)
    local id = string.sub(last, 1, at - 1)
    local logged_ms = tonumber(string.match(id, '^(%d+)'))
    local recent = logged_ms and logged_ms >= tonumber(ARGV[8])
    if recent and (state == ARGV[2] or (ARGV[3] == 'p' and string.sub(state, 1, 2) == 'P:')) then
      return {id, 0}
    end
  end
end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[4], '*', 'e', ARGV[5])
redis.call('HSET', KEYS[2], ARGV[1], id .. ' ' .. ARGV[2])
if ARGV[7] ~= '' then
  redis.call('HDEL', KEYS[2], ARGV[7])
end
redis.call('PEXPIRE', KEYS[2], ARGV[6])
return {id, 1}
";

/// How far apart two replicas' observations of one change may be logged
/// (their polls are a watch interval apart; a replica's append waits at
/// most its Redis command timeout).
const COPY_WINDOW_MS: i64 = 30_000;

/// What a host event makes of its host, for [`APPEND_TRANSITION`].
struct Transition {
    /// The host id; its reachability is kept beside its presence.
    field: String,
    /// `P:<record hash>` present, `G` gone, `R1`/`R0` reachable or not.
    state: String,
    /// A join is a copy when the host is present with any record (two
    /// observations of one join may differ in load figures).
    any_present: bool,
    /// Forgotten when this is appended ("" for none).
    forget: String,
}

impl Transition {
    fn of(event: &Event) -> Option<Transition> {
        let What::Host { change, host, .. } = &event.what else {
            return None;
        };
        let present = || format!("P:{:032x}", super::told::record_hash(host));
        let reach = || format!("{}\nreach", host.id);
        let (field, state, forget) = match change {
            HostChange::Joined => (host.id.clone(), present(), reach()),
            HostChange::Updated => (host.id.clone(), present(), String::new()),
            HostChange::Left => (host.id.clone(), "G".to_owned(), reach()),
            HostChange::Reachable => (reach(), "R1".to_owned(), String::new()),
            HostChange::Unreachable => (reach(), "R0".to_owned(), String::new()),
        };
        Some(Transition {
            field,
            state,
            any_present: *change == HostChange::Joined,
            forget,
        })
    }
}

/// The id an append answered: XADD's id, or [`APPEND_TRANSITION`]'s pair.
fn appended_id(reply: &Value) -> Option<LogId> {
    let id = match reply {
        Value::Array(pair) => pair.first()?,
        id => id,
    };
    crate::redis::value_string(id).and_then(|s| LogId::parse(&s))
}

impl EventLog {
    /// A log in Redis when given one, else in this process; `None` when
    /// switched off.
    pub fn new(config: EventLogConfig, redis: Option<Redis>) -> Option<EventLog> {
        if !config.enabled {
            return None;
        }
        let store = match redis {
            Some(redis) => Store::Redis(redis),
            None => Store::Ring(Mutex::default()),
        };
        Some(EventLog {
            inner: Arc::new(LogInner { config, store }),
        })
    }

    pub fn config(&self) -> &EventLogConfig {
        &self.inner.config
    }

    /// Whether `event` goes in this log: it is [`loggable`], and scheduler
    /// transitions only while they are recorded (`scheduler_health`).
    pub fn keeps(&self, event: &Event) -> bool {
        loggable(event)
            && (self.inner.config.scheduler_health || !matches!(event.what, What::Scheduler { .. }))
    }

    /// Whether scheduler health is recorded in this log.
    pub fn records_scheduler_health(&self) -> bool {
        self.inner.config.scheduler_health
    }

    /// Where the log lives: `redis` or `memory`.
    pub fn backend(&self) -> &'static str {
        match self.inner.store {
            Store::Redis(_) => "redis",
            Store::Ring(_) => "memory",
        }
    }

    pub fn in_redis(&self) -> bool {
        matches!(self.inner.store, Store::Redis(_))
    }

    /// The oldest id a reader may be answered: the retention's start.
    pub fn floor(&self) -> LogId {
        let retention = i64::try_from(self.inner.config.retention.as_millis()).unwrap_or(i64::MAX);
        LogId::at(SystemClock.now_ms_signed().saturating_sub(retention))
    }

    /// Appends `event` to the in-process ring and gives it its cursor
    /// (nothing when the log is in Redis: see [`EventLog::append`]).
    pub fn append_local(&self, event: &mut Event) {
        let Store::Ring(ring) = &self.inner.store else {
            return;
        };
        let floor = self.floor();
        let Ok(mut ring) = ring.lock() else { return };
        let cluster = ring.entry(event.cluster_id).or_default();
        let now = LogId::at(SystemClock.now_ms_signed());
        let id = if now.ms > cluster.last.ms {
            now
        } else {
            cluster.last.next()
        };
        cluster.last = id;
        event.cursor = Some(EventCursor {
            cluster_id: event.cluster_id,
            id,
        });
        cluster.events.push_back(Arc::new(event.clone()));
        while cluster.events.len() > self.inner.config.max_entries
            || cluster
                .events
                .front()
                .and_then(|e| e.cursor)
                .is_some_and(|c| c.id < floor)
        {
            cluster.events.pop_front();
        }
    }

    /// Appends `events` (all loggable) to their clusters' streams in one
    /// round trip and gives each its cursor. `trim` names the clusters
    /// whose streams are also trimmed by age now.
    pub async fn append(&self, events: &mut [&mut Event], trim: &[u64]) -> Result<(), LogError> {
        let Store::Redis(redis) = &self.inner.store else {
            for event in events.iter_mut() {
                self.append_local(event);
            }
            return Ok(());
        };
        if events.is_empty() {
            return Ok(());
        }
        let mut cmds = Vec::with_capacity(events.len() + trim.len());
        let memory_ms = u64::try_from(self.inner.config.retention.as_millis()).unwrap_or(u64::MAX);
        let copies_since_ms = SystemClock
            .now_ms_signed()
            .saturating_sub(COPY_WINDOW_MS)
            .max(0);
        for event in events.iter() {
            let bytes = bus::encode("", event);
            let stream = keys::event_log(event.cluster_id);
            let cmd = match Transition::of(event) {
                Some(transition) => {
                    let mut eval = redis::cmd("EVAL");
                    eval.arg(APPEND_TRANSITION)
                        .arg(2)
                        .arg(stream)
                        .arg(keys::event_log_states(event.cluster_id))
                        .arg(transition.field)
                        .arg(transition.state)
                        .arg(if transition.any_present { "p" } else { "=" })
                        .arg(self.inner.config.max_entries)
                        .arg(bytes)
                        .arg(memory_ms)
                        .arg(transition.forget)
                        .arg(copies_since_ms);
                    eval
                }
                None => {
                    let mut xadd = redis::cmd("XADD");
                    xadd.arg(stream)
                        .arg("MAXLEN")
                        .arg("~")
                        .arg(self.inner.config.max_entries)
                        .arg("*")
                        .arg("e")
                        .arg(bytes);
                    xadd
                }
            };
            cmds.push(cmd);
        }
        let floor = self.floor();
        for &cluster in trim {
            let mut xtrim = redis::cmd("XTRIM");
            xtrim
                .arg(keys::event_log(cluster))
                .arg("MINID")
                .arg("~")
                .arg(floor.to_string());
            cmds.push(xtrim);
        }
        let replies = redis.batch("event_log_append", cmds).await?;
        for (event, reply) in events.iter_mut().zip(replies) {
            let id = appended_id(&reply)
                .ok_or_else(|| LogError::Entry(format!("append answered {reply:?}")))?;
            if matches!(&reply, Value::Array(pair) if pair.get(1) == Some(&Value::Int(0))) {
                metrics::counter!(super::metric::LOG_COPIES).increment(1);
            }
            event.cursor = Some(EventCursor {
                cluster_id: event.cluster_id,
                id,
            });
        }
        Ok(())
    }

    /// Up to `count` events of `cluster` within `range` (and the
    /// retention), newest first when `newest_first`, else oldest first.
    pub async fn read(
        &self,
        cluster: u64,
        range: Range,
        newest_first: bool,
        count: usize,
    ) -> Result<Vec<Arc<Event>>, LogError> {
        let range = Range {
            from: range.from.max(self.floor()),
            ..range
        };
        if range.is_empty() || count == 0 {
            return Ok(Vec::new());
        }
        match &self.inner.store {
            Store::Ring(ring) => {
                let Ok(ring) = ring.lock() else {
                    return Ok(Vec::new());
                };
                let Some(events) = ring.get(&cluster).map(|c| &c.events) else {
                    return Ok(Vec::new());
                };
                let within = |e: &&Arc<Event>| {
                    e.cursor
                        .is_some_and(|c| c.id >= range.from && c.id <= range.to)
                };
                Ok(if newest_first {
                    events
                        .iter()
                        .rev()
                        .filter(within)
                        .take(count)
                        .cloned()
                        .collect()
                } else {
                    events.iter().filter(within).take(count).cloned().collect()
                })
            }
            Store::Redis(redis) => {
                let mut cmd = redis::cmd(if newest_first { "XREVRANGE" } else { "XRANGE" });
                cmd.arg(keys::event_log(cluster));
                let (from, to) = (range.from.to_string(), range.to.to_string());
                if newest_first {
                    cmd.arg(to).arg(from);
                } else {
                    cmd.arg(from).arg(to);
                }
                cmd.arg("COUNT").arg(count);
                let reply: Value = redis.cmd("event_log_read", &cmd).await?;
                entries(cluster, reply)
            }
        }
    }

    /// Calls `each` on the events of `cluster` within `range`, oldest
    /// first when `!newest_first`, until it returns false, the range ends
    /// or `max_scan` entries were read; returns whether the scan stopped
    /// at that limit.
    pub async fn scan(
        &self,
        cluster: u64,
        mut range: Range,
        newest_first: bool,
        mut each: impl FnMut(&Arc<Event>) -> bool,
    ) -> Result<bool, LogError> {
        let mut scanned = 0;
        loop {
            let chunk = CHUNK.min(self.inner.config.max_scan - scanned);
            if chunk == 0 {
                return Ok(true);
            }
            let events = self.read(cluster, range, newest_first, chunk).await?;
            scanned += events.len();
            for event in &events {
                if !each(event) {
                    return Ok(false);
                }
            }
            let (Some(last), true) = (events.last().and_then(|e| e.cursor), events.len() == chunk)
            else {
                return Ok(false);
            };
            range = if newest_first {
                match range.before(last.id) {
                    Some(range) => range,
                    None => return Ok(false),
                }
            } else {
                range.after(last.id)
            };
        }
    }

    /// Whether the log still holds the entry `cursor` names (within the
    /// retention). False when it was trimmed, and when the log lost it: a
    /// Redis restarted without persistence, another deployment's log, or
    /// (without Redis) another process's ring. Entries are not decoded, so
    /// an event kind this replica does not know still counts.
    pub async fn holds(&self, cursor: EventCursor) -> Result<bool, LogError> {
        if cursor.id < self.floor() {
            return Ok(false);
        }
        match &self.inner.store {
            Store::Ring(ring) => Ok(ring.lock().ok().is_some_and(|ring| {
                ring.get(&cursor.cluster_id).is_some_and(|c| {
                    c.events
                        .binary_search_by_key(&Some(cursor.id), |e| e.cursor.map(|c| c.id))
                        .is_ok()
                })
            })),
            Store::Redis(redis) => {
                let id = cursor.id.to_string();
                let mut xrange = redis::cmd("XRANGE");
                xrange
                    .arg(keys::event_log(cursor.cluster_id))
                    .arg(&id)
                    .arg(&id)
                    .arg("COUNT")
                    .arg(1);
                let reply: Value = redis.cmd("event_log_holds", &xrange).await?;
                match reply {
                    Value::Array(items) => Ok(!items.is_empty()),
                    other => Err(LogError::Entry(format!("XRANGE answered {other:?}"))),
                }
            }
        }
    }

    /// The oldest event of `cluster` still answered, and how many the log
    /// holds for it.
    pub async fn extent(&self, cluster: u64) -> Result<(Option<EventCursor>, u64), LogError> {
        let oldest = self
            .read(cluster, Range::all(), false, 1)
            .await?
            .first()
            .and_then(|e| e.cursor);
        let length = match &self.inner.store {
            Store::Ring(ring) => ring
                .lock()
                .ok()
                .and_then(|r| r.get(&cluster).map(|c| c.events.len() as u64))
                .unwrap_or(0),
            Store::Redis(redis) => {
                let mut xlen = redis::cmd("XLEN");
                xlen.arg(keys::event_log(cluster));
                redis.cmd("event_log_len", &xlen).await?
            }
        };
        Ok((oldest, length))
    }
}

/// The events of an `XRANGE`/`XREVRANGE` reply.
fn entries(cluster: u64, reply: Value) -> Result<Vec<Arc<Event>>, LogError> {
    let Value::Array(items) = reply else {
        return Err(LogError::Entry(format!("range answered {reply:?}")));
    };
    let mut events = Vec::with_capacity(items.len());
    for item in items {
        let Value::Array(mut parts) = item else {
            return Err(LogError::Entry("entry is not a pair".into()));
        };
        if parts.len() != 2 {
            return Err(LogError::Entry("entry is not a pair".into()));
        }
        let fields = parts.pop().unwrap_or(Value::Nil);
        let id = parts
            .pop()
            .as_ref()
            .and_then(crate::redis::value_string)
            .and_then(|s| LogId::parse(&s))
            .ok_or_else(|| LogError::Entry("entry without an id".into()))?;
        let bytes = match fields {
            Value::Array(fields) => fields
                .chunks(2)
                .find(|kv| crate::redis::value_string(&kv[0]).as_deref() == Some("e"))
                .and_then(|kv| kv.get(1).cloned()),
            Value::Map(fields) => fields
                .into_iter()
                .find(|(k, _)| crate::redis::value_string(k).as_deref() == Some("e"))
                .map(|(_, v)| v),
            _ => None,
        };
        let Some(Value::BulkString(bytes)) = bytes else {
            return Err(LogError::Entry(format!("entry {id} has no event")));
        };
        match bus::decode(&bytes) {
            Ok((_, mut event)) => {
                event.cursor = Some(EventCursor {
                    cluster_id: cluster,
                    id,
                });
                events.push(Arc::new(event));
            }
            // A newer replica's event kind: skipped, not fatal.
            Err(error) => tracing::debug!(%error, %id, "event log entry skipped"),
        }
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::HostChange;
    use crate::proto::common::v2::Host;

    #[test]
    fn cursors_round_trip_and_refuse_what_they_did_not_make() {
        let cursor = EventCursor {
            cluster_id: 7,
            id: LogId {
                ms: 1_765_000_000_123,
                seq: 4,
            },
        };
        let text = cursor.encode();
        assert!(text.starts_with("ev1_"));
        assert_eq!(EventCursor::decode(&text), Ok(cursor));
        // One character changed, cut short, another version, garbage.
        let mut tampered = text.clone().into_bytes();
        let last = tampered.len() - 3;
        tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(tampered).expect("ascii");
        assert_eq!(EventCursor::decode(&tampered), Err(BadCursor));
        assert_eq!(EventCursor::decode(&text[..text.len() - 2]), Err(BadCursor));
        assert_eq!(
            EventCursor::decode(&text.replace("ev1_", "ev2_")),
            Err(BadCursor)
        );
        assert_eq!(EventCursor::decode("1765000000123-4"), Err(BadCursor));
    }

    #[test]
    fn cursors_order_by_id_then_cluster() {
        let c = |cluster_id, ms, seq| EventCursor {
            cluster_id,
            id: LogId { ms, seq },
        };
        assert!(c(2, 10, 0) < c(1, 10, 1));
        assert!(c(1, 10, 1) < c(2, 10, 1));
        assert!(c(9, 9, 9) < c(1, 10, 0));
    }

    #[test]
    fn bad_settings_are_named_from_the_whole_config() {
        let mut config = crate::config::Config::default();
        config.event_log.retention = Duration::ZERO;
        let error = config.validate().expect_err("no retention");
        assert_eq!(error.setting, "event_log.retention");
        config.event_log = EventLogConfig {
            max_entries: 0,
            ..EventLogConfig::default()
        };
        let error = config.validate().expect_err("no room");
        assert_eq!(error.setting, "event_log.max_entries");
        assert!(EventLogConfig::default().validate().is_ok());
    }

    fn host_event(change: HostChange, fields: &[&str]) -> Event {
        Event {
            cluster_id: 1,
            observed_at_ms: 1,
            what: What::Host {
                change,
                host: Arc::new(Host {
                    id: "h".into(),
                    ..Host::default()
                }),
                changed_fields: fields.iter().map(|f| f.to_string()).collect(),
            },
            cursor: None,
        }
    }

    #[test]
    fn load_figures_alone_are_not_history() {
        assert!(loggable(&host_event(HostChange::Joined, &[])));
        assert!(loggable(&host_event(HostChange::Left, &[])));
        assert!(loggable(&host_event(HostChange::Updated, &["hostname"])));
        assert!(!loggable(&host_event(HostChange::Updated, &["cpu"])));
    }

    #[tokio::test]
    async fn the_ring_keeps_order_and_its_bound() {
        let config = EventLogConfig {
            max_entries: 3,
            ..EventLogConfig::default()
        };
        let log = EventLog::new(config, None).expect("enabled");
        let mut cursors = Vec::new();
        for _ in 0..5 {
            let mut event = host_event(HostChange::Joined, &[]);
            log.append_local(&mut event);
            cursors.push(event.cursor.expect("logged"));
        }
        assert!(cursors.windows(2).all(|w| w[0] < w[1]), "{cursors:?}");
        let newest: Vec<_> = log
            .read(1, Range::all(), true, 10)
            .await
            .expect("read")
            .iter()
            .filter_map(|e| e.cursor)
            .collect();
        assert_eq!(newest, vec![cursors[4], cursors[3], cursors[2]]);
        let after: Vec<_> = log
            .read(1, Range::all().after(cursors[2].id), false, 10)
            .await
            .expect("read")
            .iter()
            .filter_map(|e| e.cursor)
            .collect();
        assert_eq!(after, vec![cursors[3], cursors[4]]);
        assert_eq!(log.extent(1).await.expect("extent"), (Some(cursors[2]), 3));
    }
}
