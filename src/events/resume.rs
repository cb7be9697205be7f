//! Resuming from the event log without a gap or a duplicate: what to
//! replay after a cursor (or after what a replica last heard), and the
//! per-cluster high-water mark ([`Seen`]) that drops an event already
//! delivered, at the seam between replay and live and whenever the bus
//! hands the same event twice.
//!
//! The seam: listen live first (buffered), then read the log; a live event
//! at or below what the log gave is dropped. Per cluster, the log's ids
//! grow in publish order and one replica publishes a cluster's events, so
//! a high-water mark per cluster is exact.

use std::collections::HashMap;
use std::sync::Arc;

use super::Event;
use super::log::{EventCursor, EventLog, LogError, LogId, Range};

/// The newest log id delivered per cluster.
#[derive(Clone, Debug, Default)]
pub struct Seen(HashMap<u64, LogId>);

impl Seen {
    /// Whether `event` is new here (then it counts as delivered). An event
    /// without a cursor (not logged) is always new.
    pub fn fresh(&mut self, event: &Event) -> bool {
        let Some(cursor) = event.cursor else {
            return true;
        };
        match self.0.get(&cursor.cluster_id) {
            Some(&seen) if cursor.id <= seen => false,
            _ => {
                self.0.insert(cursor.cluster_id, cursor.id);
                true
            }
        }
    }

    /// The newest id delivered of `cluster`.
    pub fn get(&self, cluster: u64) -> Option<LogId> {
        self.0.get(&cluster).copied()
    }
}

/// Why a subscription cannot resume.
#[derive(Debug, thiserror::Error)]
pub enum ResumeError {
    /// The cursor's event is gone from the log (older than the retention,
    /// trimmed by size, or lost with the log itself): events after it may
    /// be lost.
    #[error(
        "the event log no longer holds this cursor's event (it keeps {retention}, unless the log itself was lost); subscribe without `after`, or from the oldest cursor available"
    )]
    Expired {
        oldest: Option<EventCursor>,
        retention: String,
    },
    #[error(transparent)]
    Log(#[from] LogError),
}

/// Checks that the log still holds `after`'s own event, so it holds
/// everything after it: a log that was trimmed past it, or lost (Redis
/// restarted without persistence, even before anything new was logged), is
/// refused rather than replayed with a silent gap.
pub async fn check(log: &EventLog, after: EventCursor) -> Result<(), ResumeError> {
    if !log.holds(after).await? {
        let (oldest, _) = log.extent(after.cluster_id).await?;
        return Err(ResumeError::Expired {
            oldest,
            retention: humantime::format_duration(log.config().retention).to_string(),
        });
    }
    Ok(())
}

/// The ids of `cluster` after `after` in the order of cursors (by id,
/// then cluster).
fn after_cursor(cluster: u64, after: EventCursor) -> Range {
    if cluster > after.cluster_id {
        Range {
            from: after.id,
            ..Range::all()
        }
    } else {
        Range::all().after(after.id)
    }
}

/// Reads `ranges` (one per cluster) oldest first and merges them in cursor
/// order; whether a cluster's scan stopped at `max_scan`.
async fn merged(
    log: &EventLog,
    ranges: Vec<(u64, Range)>,
) -> Result<(Vec<Arc<Event>>, bool), LogError> {
    let mut events = Vec::new();
    let mut limited = false;
    for (cluster, range) in ranges {
        limited |= log
            .scan(cluster, range, false, |event| {
                events.push(event.clone());
                true
            })
            .await?;
    }
    events.sort_by_key(|e| e.cursor);
    Ok((events, limited))
}

/// Every logged event of `clusters` after `after`, oldest first, and the
/// marks of what they deliver. Errors when the log no longer reaches it.
pub async fn replay(
    log: &EventLog,
    clusters: &[u64],
    after: EventCursor,
) -> Result<(Vec<Arc<Event>>, Seen), ResumeError> {
    check(log, after).await?;
    let ranges = clusters
        .iter()
        .map(|&c| (c, after_cursor(c, after)))
        .collect();
    let (events, limited) = merged(log, ranges).await?;
    if limited {
        tracing::warn!(
            max_scan = log.config().max_scan,
            "a resumed subscription replays only the oldest part of what it missed ([event_log] max_scan)"
        );
    }
    let mut seen = Seen::default();
    for event in &events {
        seen.fresh(event);
    }
    Ok((events, seen))
}

/// What a replica missed of `clusters` while it could not hear the bus:
/// every logged event after the last one it delivered of each cluster (or
/// since `since_ms` for a cluster it has delivered none of), oldest first.
pub async fn missed(
    log: &EventLog,
    clusters: &[u64],
    heard: &Seen,
    since_ms: i64,
) -> Result<Vec<Arc<Event>>, LogError> {
    let ranges = clusters
        .iter()
        .map(|&c| {
            let range = match heard.get(c) {
                Some(id) => Range::all().after(id),
                None => Range {
                    from: LogId::at(since_ms),
                    ..Range::all()
                },
            };
            (c, range)
        })
        .collect();
    Ok(merged(log, ranges).await?.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::log::EventLogConfig;
    use crate::events::{HostChange, What};
    use crate::proto::common::v2::Host;

    fn joined(cluster_id: u64) -> Event {
        Event {
            cluster_id,
            observed_at_ms: 1,
            what: What::Host {
                change: HostChange::Joined,
                host: Arc::new(Host::default()),
                changed_fields: Vec::new(),
            },
            cursor: None,
        }
    }

    #[tokio::test]
    async fn replay_starts_right_after_the_cursor_in_every_cluster_and_marks_the_seam() {
        let log = EventLog::new(EventLogConfig::default(), None).expect("enabled");
        let mut logged = Vec::new();
        for cluster in [1, 2, 1, 2, 1] {
            let mut event = joined(cluster);
            log.append_local(&mut event);
            logged.push(event);
        }
        let after = logged[1].cursor.expect("logged");
        let (events, mut seen) = replay(&log, &[1, 2], after).await.expect("resumable");
        let mut expected: Vec<_> = logged[2..].iter().filter_map(|e| e.cursor).collect();
        expected.sort();
        let got: Vec<_> = events.iter().filter_map(|e| e.cursor).collect();
        assert_eq!(got, expected);
        // What the replay gave is not given again live; the next is.
        assert!(!seen.fresh(&logged[4]));
        let mut next = joined(1);
        log.append_local(&mut next);
        assert!(seen.fresh(&next));
        assert!(!seen.fresh(&next));
        // An event without a cursor always passes.
        assert!(seen.fresh(&joined(1)));
    }

    #[tokio::test]
    async fn a_cursor_the_log_no_longer_holds_is_expired_with_the_oldest_one() {
        let config = EventLogConfig {
            max_entries: 2,
            ..EventLogConfig::default()
        };
        let log = EventLog::new(config, None).expect("enabled");
        let mut logged = Vec::new();
        for _ in 0..4 {
            let mut event = joined(1);
            log.append_local(&mut event);
            logged.push(event.cursor.expect("logged"));
        }
        match replay(&log, &[1], logged[0]).await {
            Err(ResumeError::Expired { oldest, .. }) => assert_eq!(oldest, Some(logged[2])),
            other => panic!("expected expiry, got {other:?}"),
        }
        // The oldest kept still resumes.
        assert!(replay(&log, &[1], logged[2]).await.is_ok());
    }

    #[tokio::test]
    async fn a_cursor_of_a_log_that_was_lost_is_expired_even_before_anything_new_is_logged() {
        let lost = EventLog::new(EventLogConfig::default(), None).expect("enabled");
        let mut event = joined(1);
        lost.append_local(&mut event);
        let cursor = event.cursor.expect("logged");
        // The same deployment's log started again empty (a Redis restarted
        // without persistence): nothing to replay is not "nothing missed".
        let empty = EventLog::new(EventLogConfig::default(), None).expect("enabled");
        match replay(&empty, &[1], cursor).await {
            Err(ResumeError::Expired { oldest, .. }) => assert_eq!(oldest, None),
            other => panic!("expected expiry, got {other:?}"),
        }
        // Once it logs again (a later millisecond), its oldest event is the
        // place to resume from.
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        let mut next = joined(1);
        empty.append_local(&mut next);
        match replay(&empty, &[1], cursor).await {
            Err(ResumeError::Expired { oldest, .. }) => assert_eq!(oldest, next.cursor),
            other => panic!("expected expiry, got {other:?}"),
        }
    }
}
