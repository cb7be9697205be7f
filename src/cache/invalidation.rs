//! Invalidation between replicas: the message format on the
//! `dfgraph:v1:invalidate` channel, dropping what a message names from this
//! process (L1 entry, in-flight load, generation bump), and the subscriber
//! task that listens on its own Redis pub/sub connection.
//!
//! Messages are text: `v1 <instance> key <redis key>` or
//! `v1 <instance> scope <kind> <cluster|*>`. A replica ignores its own.
//! Messages published while a subscriber is disconnected are lost, so on
//! every reconnect the whole L1 is dropped.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::{oneshot, watch};

use super::keys::{self, INVALIDATION_CHANNEL};
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

/// How the subscriber task runs.
pub(crate) struct Subscriber {
    pub(crate) client: deadpool_redis::redis::Client,
    pub(crate) local: Arc<Local>,
    pub(crate) connect_timeout: Duration,
    pub(crate) backoff_min: Duration,
    pub(crate) backoff_max: Duration,
    /// Liveness check of an idle subscription.
    pub(crate) ping_every: Duration,
    /// Set once the cache serves; a subscription made after that drops L1.
    pub(crate) serving: Arc<AtomicBool>,
    pub(crate) shown_url: String,
}

impl Subscriber {
    /// Runs until `shutdown`'s sender is dropped. `ready` fires on the first
    /// subscription.
    pub(crate) async fn run(self, ready: oneshot::Sender<()>, mut shutdown: watch::Receiver<()>) {
        let mut ready = Some(ready);
        let mut backoff = self.backoff_min;
        // Warn once per failure streak, not on every retry.
        let mut warned = false;
        loop {
            let subscribed = tokio::select! {
                result = self.subscribe() => result,
                _ = shutdown.changed() => return,
            };
            match subscribed {
                Ok(pubsub) => {
                    if self.serving.load(Ordering::Acquire) {
                        tracing::info!(
                            url = %self.shown_url,
                            "invalidation subscriber (re)connected; dropping all of L1 \
                             (messages sent meanwhile are lost)"
                        );
                        self.local.drop_all();
                    }
                    if let Some(ready) = ready.take() {
                        let _ = ready.send(());
                    }
                    backoff = self.backoff_min;
                    warned = false;
                    if self.listen(pubsub, &mut shutdown).await {
                        return;
                    }
                    tracing::warn!(
                        url = %self.shown_url,
                        "invalidation subscriber lost Redis; reconnecting"
                    );
                }
                Err(error) if !warned => {
                    warned = true;
                    tracing::warn!(
                        %error,
                        url = %self.shown_url,
                        channel = INVALIDATION_CHANNEL,
                        "invalidation subscriber cannot subscribe; other replicas' \
                         invalidations do not reach this one until it can (retrying)"
                    );
                }
                Err(error) => {
                    tracing::debug!(%error, url = %self.shown_url, "invalidation subscriber still cannot subscribe");
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = shutdown.changed() => return,
            }
            backoff = (backoff * 2).min(self.backoff_max);
        }
    }

    async fn subscribe(&self) -> Result<deadpool_redis::redis::aio::PubSub, String> {
        let connect = async {
            let mut pubsub = self
                .client
                .get_async_pubsub()
                .await
                .map_err(|e| e.to_string())?;
            pubsub
                .subscribe(INVALIDATION_CHANNEL)
                .await
                .map_err(|e| e.to_string())?;
            Ok(pubsub)
        };
        match tokio::time::timeout(self.connect_timeout, connect).await {
            Ok(result) => result,
            Err(_) => Err(format!("timed out after {:?}", self.connect_timeout)),
        }
    }

    /// Applies messages until the connection fails (false) or shutdown
    /// (true).
    async fn listen(
        &self,
        pubsub: deadpool_redis::redis::aio::PubSub,
        shutdown: &mut watch::Receiver<()>,
    ) -> bool {
        let (mut sink, mut stream) = pubsub.split();
        let mut ping = tokio::time::interval(self.ping_every);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.tick().await;
        loop {
            tokio::select! {
                message = stream.next() => {
                    let Some(message) = message else { return false };
                    let Ok(text) = message.get_payload::<String>() else {
                        tracing::warn!("undecodable invalidation message ignored");
                        continue;
                    };
                    match decode(&text) {
                        Some((from, _)) if from == self.local.instance => {}
                        Some((_, target)) => {
                            self.local.stats.invalidation_received();
                            self.local.drop_target(&target).await;
                        }
                        None => tracing::warn!(message = %text, "malformed invalidation message ignored"),
                    }
                }
                _ = ping.tick() => {
                    let alive = tokio::time::timeout(
                        self.connect_timeout,
                        sink.ping::<deadpool_redis::redis::Value>(),
                    )
                    .await;
                    if !matches!(alive, Ok(Ok(_))) {
                        return false;
                    }
                }
                _ = shutdown.changed() => return true,
            }
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
