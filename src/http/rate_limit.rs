//! Per-client rate limits on the API entry points (`/graphql`, the REST
//! routes under `/api/v1/`, the `/graphql/ws` upgrade, and each operation
//! started on an open socket):
//! one GCRA bucket (governor's keyed limiter) per authenticated principal,
//! else per client address, answered with 429, `Retry-After` and a
//! GraphQL-shaped `RATE_LIMITED` error.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::Clock;
use governor::{DefaultKeyedRateLimiter, Quota};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::AppState;
use crate::auth::{AuthError, Method, Principal};
use crate::setting::Invalid;

/// How often buckets back at full capacity are dropped.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// The `[rate_limit]` settings. Off unless `per_second` is set.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Requests (and websocket operations) per second one client may
    /// sustain.
    pub per_second: Option<u32>,
    /// Requests one client may send at once before the rate applies
    /// (default: `per_second`).
    pub burst: Option<u32>,
    /// Proxies (addresses or CIDR blocks) whose `X-Forwarded-For` is
    /// believed; a request from anywhere else is keyed by its peer address.
    pub trusted_proxies: Vec<String>,
}

impl RateLimitConfig {
    /// The quota and trusted proxies, or the setting that is wrong and why.
    fn parse(&self) -> Result<Option<(Quota, Vec<IpNet>)>, Invalid> {
        let trusted = self
            .trusted_proxies
            .iter()
            .map(|entry| {
                parse_net(entry).ok_or_else(|| {
                    Invalid::new(
                        "trusted_proxies",
                        format!("{entry:?} is not an address or CIDR block (10.0.0.0/8, ::1)"),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let Some(per_second) = self.per_second else {
            if self.burst.is_some() {
                return Err(Invalid::new(
                    "burst",
                    "a burst needs a rate: set rate_limit.per_second too",
                ));
            }
            return Ok(None);
        };
        let rate = NonZeroU32::new(per_second).ok_or(Invalid::new(
            "per_second",
            "must be at least 1 (leave it out to switch rate limiting off)".to_owned(),
        ))?;
        let burst = match self.burst {
            None => rate,
            Some(burst) => NonZeroU32::new(burst).ok_or(Invalid::new(
                "burst",
                "must be at least 1 (a client must be able to send one request)",
            ))?,
        };
        Ok(Some((Quota::per_second(rate).allow_burst(burst), trusted)))
    }

    /// Checks the settings; the error names the one that is wrong.
    pub fn validate(&self) -> Result<(), Invalid> {
        self.parse().map(|_| ())
    }
}

fn parse_net(entry: &str) -> Option<IpNet> {
    let entry = entry.trim();
    entry
        .parse::<IpNet>()
        .ok()
        .or_else(|| entry.parse::<IpAddr>().ok().map(IpNet::from))
}

/// Whose bucket a request draws from.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ClientKey {
    /// An authenticated caller, by subject (`manager:1`, `oidc:alice`,
    /// `token:ci`): its limit follows it across addresses.
    Principal(Arc<str>),
    /// Anyone else, by address; IPv6 by its /64, since one host usually
    /// holds a whole /64 and could otherwise take a new bucket per request.
    Address(IpAddr),
}

impl ClientKey {
    pub fn new(principal: Option<&Principal>, client: IpAddr) -> ClientKey {
        match principal {
            Some(p) if p.method != Method::Anonymous => {
                ClientKey::Principal(p.subject.as_str().into())
            }
            _ => ClientKey::Address(network_of(client)),
        }
    }
}

fn network_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// The limiter of one gateway (shared by its handlers); does nothing when
/// rate limiting is off.
#[derive(Clone, Default)]
pub struct RateLimiter {
    inner: Option<Arc<Inner>>,
    /// `trusted_proxies`, read with rate limiting off too (the manager
    /// front door believes their `X-Forwarded-*`).
    proxies: Arc<Vec<IpNet>>,
}

struct Inner {
    buckets: DefaultKeyedRateLimiter<ClientKey>,
    trusted: Vec<IpNet>,
}

impl RateLimiter {
    /// The limiter `config` describes; its error names the setting within
    /// `[rate_limit]`.
    pub fn new(config: &RateLimitConfig) -> Result<RateLimiter, Invalid> {
        let parsed = config.parse()?;
        let proxies = Arc::new(
            config
                .trusted_proxies
                .iter()
                .filter_map(|entry| parse_net(entry))
                .collect(),
        );
        Ok(RateLimiter {
            inner: parsed.map(|(quota, trusted)| {
                Arc::new(Inner {
                    buckets: DefaultKeyedRateLimiter::keyed(quota),
                    trusted,
                })
            }),
            proxies,
        })
    }

    /// True when `peer` is one of `trusted_proxies`.
    pub fn trusts(&self, peer: IpAddr) -> bool {
        let peer = peer.to_canonical();
        self.proxies.iter().any(|net| net.contains(&peer))
    }

    pub fn enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// The address a request comes from: the peer, or, when the peer is a
    /// trusted proxy, the nearest address in `X-Forwarded-For` that is not
    /// a trusted proxy. Entries are read right to left because each proxy
    /// appends the address it was connected from: everything left of the
    /// first untrusted hop was written by the client and proves nothing.
    pub fn client_address(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let Some(inner) = &self.inner else {
            return peer;
        };
        let trusted = |ip: IpAddr| {
            let ip = ip.to_canonical();
            inner.trusted.iter().any(|net| net.contains(&ip))
        };
        let mut client = peer;
        if !trusted(client) {
            return client;
        }
        let lines: Vec<_> = headers.get_all("x-forwarded-for").iter().collect();
        for line in lines.into_iter().rev() {
            // Unreadable or unparseable: the hop that sent it is the
            // client as far as anyone can tell.
            let Ok(line) = line.to_str() else {
                return client;
            };
            for hop in line.rsplit(',') {
                let Some(ip) = parse_hop(hop) else {
                    return client;
                };
                client = ip;
                if !trusted(ip) {
                    return ip;
                }
            }
        }
        client
    }

    /// Takes one request from `key`'s bucket, or says how long until one
    /// is available.
    pub fn check(&self, key: &ClientKey) -> Result<(), Duration> {
        let Some(inner) = &self.inner else {
            return Ok(());
        };
        inner
            .buckets
            .check_key(key)
            .map_err(|not_until| not_until.wait_time_from(inner.buckets.clock().now()))
    }

    /// Drops, every few seconds, the buckets of clients that have been
    /// quiet long enough for theirs to be full again (indistinguishable
    /// from a new one): memory follows the clients active in the last
    /// `burst / per_second` seconds plus one sweep, not every client ever
    /// seen.
    pub fn spawn_sweeper(&self, stop: CancellationToken) {
        let Some(inner) = self.inner.clone() else {
            return;
        };
        tokio::spawn(async move {
            let mut every = tokio::time::interval(SWEEP_EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = every.tick() => {
                        inner.buckets.retain_recent();
                        inner.buckets.shrink_to_fit();
                        metrics::gauge!(super::metric::RATE_LIMIT_CLIENTS).set(inner.buckets.len() as f64);
                    }
                }
            }
        });
    }
}

/// `1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1`, `[2001:db8::1]:5678`.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    hop.parse::<IpAddr>()
        .ok()
        .or_else(|| hop.parse::<SocketAddr>().ok().map(|s| s.ip()))
        .map(|ip| ip.to_canonical())
}

/// Whole seconds to wait, rounded up (`Retry-After` has no fractions, and
/// a client that retries early is refused again).
pub fn retry_after_secs(wait: Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}

/// The GraphQL error a refused request or operation carries.
pub fn error(wait: Duration) -> serde_json::Value {
    let secs = retry_after_secs(wait);
    serde_json::json!({
        "message": format!("rate limit exceeded: retry in {secs} s"),
        "extensions": { "code": "RATE_LIMITED", "retryAfter": secs },
    })
}

/// 429 with `Retry-After` and a GraphQL-shaped body.
pub fn too_many_requests(wait: Duration) -> Response {
    refusal(wait, serde_json::json!({ "errors": [error(wait)] }))
}

/// 429 with `Retry-After` and the manager's `{"message": ...}` (the
/// console shows `message`), for the REST routes.
pub fn too_many_rest_requests(wait: Duration) -> Response {
    let secs = retry_after_secs(wait);
    refusal(
        wait,
        serde_json::json!({ "message": format!("rate limit exceeded: retry in {secs} s") }),
    )
}

fn refusal(wait: Duration, body: serde_json::Value) -> Response {
    let mut response = (StatusCode::TOO_MANY_REQUESTS, body.to_string()).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    headers.insert(
        header::RETRY_AFTER,
        HeaderValue::from(retry_after_secs(wait)),
    );
    response
}

/// Counts one refusal of `what` (see [`super::metric::RATE_LIMITED`]).
pub fn count_refusal(what: &'static str) {
    metrics::counter!(super::metric::RATE_LIMITED, "what" => what).increment(1);
}

/// What the entry middleware learnt about a request, for its handler: the
/// client's address and the outcome of authenticating it (done once,
/// here, because the bucket is the principal's).
#[derive(Clone, Debug)]
pub struct Admitted {
    pub client: IpAddr,
    pub principal: Result<Principal, AuthError>,
}

/// Middleware on the GraphQL routes: authenticates, keys, and refuses
/// with 429 a client over its rate. Authentication failures are the
/// handler's to answer (a websocket authenticates again at
/// `connection_init`); they are keyed by address.
pub async fn admit(State(app): State<AppState>, mut request: Request, next: Next) -> Response {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
        .unwrap_or(IpAddr::from([0, 0, 0, 0]));
    let client = app.rate_limit.client_address(peer, request.headers());
    let token = super::access::token(&app.auth, request.headers());
    let principal = app.auth.authenticate(token.as_deref()).await;
    let key = ClientKey::new(principal.as_ref().ok(), client);
    if let Err(wait) = app.rate_limit.check(&key) {
        let websocket = request
            .headers()
            .get(header::UPGRADE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
        let rest = request.uri().path().starts_with("/api/");
        count_refusal(match (websocket, rest) {
            (true, _) => "graphql_ws",
            (false, true) => "rest",
            (false, false) => "graphql",
        });
        tracing::debug!(?key, "rate limited");
        return if rest {
            too_many_rest_requests(wait)
        } else {
            too_many_requests(wait)
        };
    }
    request
        .extensions_mut()
        .insert(Admitted { client, principal });
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(trusted: &[&str]) -> RateLimiter {
        RateLimiter::new(&RateLimitConfig {
            per_second: Some(1),
            burst: Some(1),
            trusted_proxies: trusted.iter().map(|s| s.to_string()).collect(),
        })
        .unwrap()
    }

    fn forwarded(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append("x-forwarded-for", HeaderValue::from_str(v).unwrap());
        }
        headers
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let limiter = limiter(&["10.0.0.0/8", "192.168.1.1"]);
        let headers = forwarded(&["6.6.6.6, 203.0.113.7"]);
        // Not a proxy: the header is the client's own word.
        assert_eq!(
            limiter.client_address(ip("198.51.100.1"), &headers),
            ip("198.51.100.1")
        );
        // A proxy: the rightmost untrusted hop, not the spoofed 6.6.6.6.
        assert_eq!(
            limiter.client_address(ip("10.1.2.3"), &headers),
            ip("203.0.113.7")
        );
        // Through two proxies, over two header lines.
        let headers = forwarded(&["6.6.6.6, 203.0.113.7", "192.168.1.1"]);
        assert_eq!(
            limiter.client_address(ip("10.1.2.3"), &headers),
            ip("203.0.113.7")
        );
        // A proxy without the header is the client.
        assert_eq!(
            limiter.client_address(ip("10.1.2.3"), &HeaderMap::new()),
            ip("10.1.2.3")
        );
        // Garbage stops the walk at the last hop that could be read.
        let headers = forwarded(&["unknown, 10.9.9.9"]);
        assert_eq!(
            limiter.client_address(ip("10.1.2.3"), &headers),
            ip("10.9.9.9")
        );
        // Ports and IPv4-mapped IPv6 addresses.
        let headers = forwarded(&["[2001:db8::1]:443, ::ffff:10.0.0.2"]);
        assert_eq!(
            limiter.client_address(ip("::ffff:10.0.0.1"), &headers),
            ip("2001:db8::1")
        );
    }

    #[test]
    fn addresses_of_one_ipv6_network_share_a_bucket() {
        let a = ClientKey::new(None, ip("2001:db8:1:2::1"));
        let b = ClientKey::new(None, ip("2001:db8:1:2:ffff::9"));
        let c = ClientKey::new(None, ip("2001:db8:1:3::1"));
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(
            ClientKey::new(None, ip("::ffff:192.0.2.1")),
            ClientKey::new(None, ip("192.0.2.1"))
        );
        let anonymous = Principal::anonymous_viewer();
        assert_eq!(
            ClientKey::new(Some(&anonymous), ip("192.0.2.1")),
            ClientKey::Address(ip("192.0.2.1"))
        );
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1000)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1001)), 2);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
    }

    #[test]
    fn bad_settings_name_themselves() {
        let setting = |c: RateLimitConfig| c.validate().unwrap_err().within("rate_limit").setting;
        assert_eq!(
            setting(RateLimitConfig {
                per_second: Some(0),
                ..Default::default()
            }),
            "rate_limit.per_second"
        );
        assert_eq!(
            setting(RateLimitConfig {
                per_second: Some(5),
                burst: Some(0),
                ..Default::default()
            }),
            "rate_limit.burst"
        );
        assert_eq!(
            setting(RateLimitConfig {
                burst: Some(5),
                ..Default::default()
            }),
            "rate_limit.burst"
        );
        assert_eq!(
            setting(RateLimitConfig {
                per_second: Some(5),
                trusted_proxies: vec!["10.0.0.0/33".into()],
                ..Default::default()
            }),
            "rate_limit.trusted_proxies"
        );
        assert!(RateLimitConfig::default().validate().is_ok());
    }

    #[test]
    fn an_empty_bucket_says_how_long_to_wait() {
        let limiter = limiter(&[]);
        let key = ClientKey::Address(ip("192.0.2.1"));
        assert!(limiter.check(&key).is_ok());
        let wait = limiter.check(&key).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        assert!(limiter.check(&ClientKey::Address(ip("192.0.2.2"))).is_ok());
        assert!(RateLimiter::default().check(&key).is_ok(), "off by default");
    }
}
