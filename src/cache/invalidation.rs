//! Invalidation between replicas: the message format of the
//! [`Topic::Invalidation`](crate::redis::Topic) messages on the process's
//! one listener, dropping what a message names from this process (L1
//! entry, in-flight load, generation bump), and the [`Listener`] that
//! applies them.
//!
//! Messages are text: `v1 <instance> key <redis key>` or
//! `v1 <instance> scope <kind> <cluster|*>`. A replica ignores its own.
//! Messages published while the listener is disconnected are lost, so on
//! every resubscription the whole L1 is dropped.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::future::BoxFuture;

use super::keys;
use super::{CacheKey, Kind, Local};

/// What an invalidation drops.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Target {
    Key(CacheKey),
    Scope(Kind, Option<u64>),
}

pub(crate) fn encode(instance: &str, target: &Target) -> String {
    match target {
        Target::Key(key) => format!("v1 {instance} key {}", key.redis_key()),
        Target::Scope(kind, cluster) => {
            let cluster = cluster.map_or_else(|| "*".to_string(), |c| c.to_string());
            format!("v1 {instance} scope {} {cluster}", kind.as_str())
        }
    }
}

pub(crate) fn decode(message: &str) -> Option<(&str, Target)> {
    let mut parts = message.splitn(4, ' ');
    if parts.next()? != "v1" {
        return None;
    }
    let instance = parts.next()?;
    let what = parts.next()?;
    let rest = parts.next()?;
    let target = match what {
        "key" => Target::Key(keys::parse_entry(rest)?),
        "scope" => {
            let (kind, cluster) = rest.split_once(' ')?;
            let cluster = match cluster {
                "*" => None,
                c => Some(c.parse().ok()?),
            };
            Target::Scope(Kind::parse(kind)?, cluster)
        }
        _ => return None,
    };
    Some((instance, target))
}

impl Local {
    /// Drops what `target` names from this process. The generation goes
    /// first, so a load finishing meanwhile cannot write back.
    pub(crate) async fn drop_target(&self, target: &Target) {
        match target {
            Target::Key(key) => {
                self.gens.bump_key(key);
                self.flights.detach(key);
                self.l1.remove(key).await;
            }
            Target::Scope(kind, cluster) => {
                self.gens.bump_scope(*kind, *cluster);
                self.flights.detach_scope(*kind, *cluster);
                self.l1.remove_scope(*kind, *cluster);
            }
        }
    }

    /// Drops everything (invalidations may have been missed).
    pub(crate) fn drop_all(&self) {
        self.gens.bump_all();
        self.flights.detach_all();
        self.l1.clear();
    }
}

/// Applies other replicas' invalidations to this process.
pub(crate) struct Listener {
    pub(crate) local: Arc<Local>,
    /// Set once the cache serves; a subscription made after that drops L1.
    pub(crate) serving: Arc<AtomicBool>,
}

impl crate::redis::Handler for Listener {
    fn message<'a>(&'a self, body: &'a [u8]) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let Ok(text) = std::str::from_utf8(body) else {
                tracing::warn!("undecodable invalidation message ignored");
                return;
            };
            match decode(text) {
                Some((from, _)) if from == self.local.instance => {}
                Some((_, target)) => {
                    self.local.stats.invalidation_received();
                    self.local.drop_target(&target).await;
                }
                None => tracing::warn!(message = %text, "malformed invalidation message ignored"),
            }
        })
    }

    fn subscribed(&self) {
        if self.serving.load(Ordering::Acquire) {
            tracing::info!(
                "invalidation listener (re)subscribed; dropping all of L1 \
                 (messages sent meanwhile are lost)"
            );
            self.local.drop_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_roundtrip() {
        let targets = [
            Target::Key(CacheKey::peer(
                9,
                &crate::ids::PeerKey::from_path("h1/t:2/p 3").unwrap(),
            )),
            Target::Key(CacheKey::hosts(1)),
            Target::Scope(Kind::Task, Some(4)),
            Target::Scope(Kind::Hosts, None),
        ];
        for target in targets {
            let text = encode("abc", &target);
            assert_eq!(decode(&text), Some(("abc", target)));
        }
        assert_eq!(decode("v2 a key dfgraph:v1:task:1:x"), None);
        assert_eq!(decode("v1 a key other:v1:task:1:x"), None);
        assert_eq!(decode("v1 a scope nope *"), None);
        assert_eq!(decode("v1 a"), None);
    }
}
