//! The Dragonfly manager's front door: with `manager_api` set, every
//! request dfgraph does not answer itself (the console's files at `/`, the
//! rest of `/api/v1/*`, `/oapi/*`) passes to the manager unchanged:
//! method, path, query, headers, cookies and a streamed body one way; the
//! manager's status, headers (redirects are not followed) and streamed
//! body the other. An operator points the console's address at dfgraph and
//! the console gets live peers from dfgraph and everything else from the
//! manager. A manager that is down or slow gets the manager's own error
//! shape, `{"message": ...}`, with 502 or 504.
//!
//! The same client asks the manager's RBAC for the roles of a console
//! session ([`crate::auth::ManagerRoles`]).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::uri::{Authority, PathAndQuery, Scheme};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use futures::FutureExt;
use futures::future::BoxFuture;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};

use super::AppState;
use crate::auth::RolesError;

/// The `[manager_proxy]` settings: how dfgraph talks to the manager named
/// by the top-level `manager_api`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ManagerProxyConfig {
    /// Connecting to the manager; past it, 502.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Waiting for the manager's response headers (its `sync_peers` runs
    /// synchronously); past it, 504. The body then streams unbounded.
    #[serde(with = "humantime_serde")]
    pub response_timeout: Duration,
    /// How long the manager's answer to "which roles has user N" is kept:
    /// a role granted or revoked in the manager shows within this.
    #[serde(with = "humantime_serde")]
    pub roles_ttl: Duration,
}

impl Default for ManagerProxyConfig {
    fn default() -> Self {
        ManagerProxyConfig {
            connect_timeout: Duration::from_secs(3),
            response_timeout: Duration::from_secs(60),
            roles_ttl: Duration::from_secs(30),
        }
    }
}

impl ManagerProxyConfig {
    /// Timeouts above zero (a zero timeout fails every call).
    pub fn validate(&self) -> Result<(), crate::setting::Invalid> {
        crate::setting::positive("connect_timeout", self.connect_timeout)?;
        crate::setting::positive("response_timeout", self.response_timeout)
    }
}

/// Why `manager_api` or `[manager_proxy]` cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ManagerProxyError(String);

impl ManagerProxyConfig {
    /// Checks the section and the `manager_api` URL it goes with.
    pub fn check(&self, manager_api: Option<&str>) -> Result<(), ManagerProxyError> {
        if self.connect_timeout.is_zero() || self.response_timeout.is_zero() {
            return Err(ManagerProxyError(
                "manager_proxy: connect_timeout and response_timeout must be greater than zero"
                    .into(),
            ));
        }
        if let Some(url) = manager_api {
            Base::parse(url)?;
        }
        Ok(())
    }
}

/// Waiting for the manager's answer to dfgraph's own questions (a user's
/// roles, a cluster's description): a console request waits on it.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest answer to one of dfgraph's own questions.
const LOOKUP_MAX_BYTES: usize = 1024 * 1024;

/// Headers of one connection, not of the message (RFC 9110 7.6.1): never
/// passed on.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// What a client says about where a request came from: believed only
/// from `rate_limit.trusted_proxies`, else replaced.
const FORWARDING: [&str; 5] = [
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "forwarded",
    "x-real-ip",
];

/// Where the manager is: scheme and authority, and a path prefix when it
/// is served under one.
#[derive(Clone, Debug)]
struct Base {
    scheme: Scheme,
    authority: Authority,
    prefix: String,
}

impl Base {
    fn parse(url: &str) -> Result<Base, ManagerProxyError> {
        let bad = |why: &str| {
            ManagerProxyError(format!(
                "manager_api {url:?}: {why} (expected the manager's REST address, e.g. http://manager:8080)"
            ))
        };
        let uri: Uri = url.parse().map_err(|_| bad("not a URL"))?;
        let scheme = uri.scheme().cloned().ok_or_else(|| bad("no scheme"))?;
        if scheme != Scheme::HTTP {
            return Err(bad(
                "only http:// is supported; put TLS in front of dfgraph, not between it and the manager",
            ));
        }
        let authority = uri.authority().cloned().ok_or_else(|| bad("no host"))?;
        // Credentials in the URL would reach logs and error messages.
        if authority.as_str().contains('@') {
            return Err(bad("no user or password in the URL"));
        }
        if uri.query().is_some() {
            return Err(bad("no query string"));
        }
        Ok(Base {
            scheme,
            authority,
            prefix: uri.path().trim_end_matches('/').to_owned(),
        })
    }

    /// The manager's URI for a path and query of dfgraph's.
    fn uri(&self, path_and_query: &str) -> Result<Uri, axum::http::Error> {
        let path = PathAndQuery::try_from(format!("{}{path_and_query}", self.prefix))?;
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(path)
            .build()
    }
}

/// The client toward the manager's REST API.
#[derive(Clone)]
pub struct ManagerProxy {
    base: Base,
    client: Client<HttpConnector, Body>,
    response_timeout: Duration,
}

impl std::fmt::Debug for ManagerProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManagerProxy")
            .field("manager", &self.base.authority)
            .finish()
    }
}

impl ManagerProxy {
    pub fn new(
        manager_api: &str,
        config: &ManagerProxyConfig,
    ) -> Result<ManagerProxy, ManagerProxyError> {
        config.check(Some(manager_api))?;
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(config.connect_timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector);
        Ok(ManagerProxy {
            base: Base::parse(manager_api)?,
            client,
            response_timeout: config.response_timeout,
        })
    }

    /// Where requests go, for logs.
    pub fn manager(&self) -> String {
        format!(
            "{}://{}{}",
            self.base.scheme, self.base.authority, self.base.prefix
        )
    }

    /// Passes `request` to the manager and its answer back.
    pub async fn forward(
        &self,
        request: Request,
        client: Option<IpAddr>,
        trusted_peer: bool,
    ) -> Response {
        let (mut parts, body) = request.into_parts();
        let path = parts
            .uri
            .path_and_query()
            .map(PathAndQuery::as_str)
            .unwrap_or("/");
        parts.uri = match self.base.uri(path) {
            Ok(uri) => uri,
            Err(e) => return message(StatusCode::BAD_REQUEST, &format!("bad path: {e}")),
        };
        forwarded_headers(&mut parts.headers, client, trusted_peer);
        // HTTP/1.1 toward the manager, whatever the client spoke.
        parts.version = axum::http::Version::HTTP_11;
        let outbound = axum::http::Request::from_parts(parts, body);
        let answered = tokio::time::timeout(self.response_timeout, self.client.request(outbound));
        match answered.await {
            Ok(Ok(response)) => {
                let (mut parts, body) = response.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                // dfgraph's CORS layer answers for the whole origin; the
                // manager's (which reflects any origin) would double it.
                let manager_cors: Vec<HeaderName> = parts
                    .headers
                    .keys()
                    .filter(|name| name.as_str().starts_with("access-control-"))
                    .cloned()
                    .collect();
                for name in manager_cors {
                    parts.headers.remove(name);
                }
                Response::from_parts(parts, Body::new(body))
            }
            Ok(Err(e)) => {
                tracing::warn!(manager = %self.manager(), error = %e, "the manager did not answer");
                // The manager's address is for the logs, not for clients.
                message(
                    StatusCode::BAD_GATEWAY,
                    "the Dragonfly manager is unreachable",
                )
            }
            Err(_) => {
                tracing::warn!(manager = %self.manager(), timeout = ?self.response_timeout, "the manager did not answer in time");
                message(
                    StatusCode::GATEWAY_TIMEOUT,
                    &format!(
                        "the Dragonfly manager did not answer within {} s",
                        self.response_timeout.as_secs_f64()
                    ),
                )
            }
        }
    }

    /// `GET` of a manager path as the user whose session `token` is, for
    /// dfgraph's own use: the body of a 200 as `T`. The request and the
    /// whole body are under one [`LOOKUP_TIMEOUT`]: a manager that sends
    /// headers and then stalls must not hold a console request.
    pub async fn get_as<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        token: &str,
    ) -> Result<T, LookupError> {
        let uri = self
            .base
            .uri(path)
            .map_err(|e| LookupError::Failed(e.to_string()))?;
        let request = axum::http::Request::get(uri)
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .header(header::ACCEPT, "application/json")
            .body(Body::empty())
            .map_err(|e| LookupError::Failed(e.to_string()))?;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| LookupError::Failed(e.to_string()))?;
            let status = response.status();
            let body = axum::body::to_bytes(Body::new(response.into_body()), LOOKUP_MAX_BYTES)
                .await
                .map_err(|e| LookupError::Failed(e.to_string()))?;
            Ok::<_, LookupError>((status, body))
        };
        let (status, body) = tokio::time::timeout(LOOKUP_TIMEOUT, exchange)
            .await
            .map_err(|_| {
                LookupError::Failed(format!("no answer within {} s", LOOKUP_TIMEOUT.as_secs()))
            })??;
        if status != StatusCode::OK {
            return Err(LookupError::Status {
                path: path.to_owned(),
                status,
                body: String::from_utf8_lossy(&body).into_owned(),
            });
        }
        serde_json::from_slice(&body)
            .map_err(|e| LookupError::Failed(format!("{path}: unexpected answer: {e}")))
    }

    /// The manager's RBAC roles of `user` (`GET /api/v1/users/{id}/roles`),
    /// asked with the user's own session.
    async fn user_roles(&self, user: &str, token: &str) -> Result<Vec<String>, RolesError> {
        if user.is_empty() || !user.bytes().all(|b| b.is_ascii_digit()) {
            return Err(RolesError::Unavailable(format!(
                "user id {user:?} is not a manager user id"
            )));
        }
        match self
            .get_as(&format!("/api/v1/users/{user}/roles"), token)
            .await
        {
            Ok(roles) => Ok(roles),
            Err(
                e @ LookupError::Status {
                    status: StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN,
                    ..
                },
            ) => Err(RolesError::Refused(e.to_string())),
            Err(e) => Err(RolesError::Unavailable(e.to_string())),
        }
    }
}

/// Why one of dfgraph's own questions to the manager got no answer.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    /// The manager answered with another status than 200.
    #[error("{path}: status {status}: {body}")]
    Status {
        path: String,
        status: StatusCode,
        body: String,
    },
    /// No usable answer (unreachable, too slow, not the expected JSON).
    #[error("{0}")]
    Failed(String),
}

impl crate::auth::ManagerRoles for ManagerProxy {
    fn roles<'a>(
        &'a self,
        user: &'a str,
        token: &'a str,
    ) -> BoxFuture<'a, Result<Vec<String>, RolesError>> {
        self.user_roles(user, token).boxed()
    }
}

/// Drops what belongs to one connection, and the headers `Connection`
/// names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// Hop-by-hop headers out; `Host` becomes the manager's (the client sets
/// it from the URI); the original host, scheme and client address in
/// `X-Forwarded-*`. Only a trusted proxy's own `X-Forwarded-*` are kept
/// (appended to); anyone else's, with `Forwarded` and `X-Real-IP`, are
/// dropped: the manager must not believe an address a client made up.
fn forwarded_headers(headers: &mut HeaderMap, client: Option<IpAddr>, trusted_peer: bool) {
    strip_hop_by_hop(headers);
    if !trusted_peer {
        for name in FORWARDING {
            headers.remove(name);
        }
    }
    let host = headers.remove(header::HOST);
    if let Some(ip) = client {
        let chain = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
            Some(before) => format!("{before}, {ip}"),
            None => ip.to_string(),
        };
        if let Ok(value) = HeaderValue::from_str(&chain) {
            headers.insert("x-forwarded-for", value);
        }
    }
    if let Some(host) = host
        && !headers.contains_key("x-forwarded-host")
    {
        headers.insert("x-forwarded-host", host);
    }
    if !headers.contains_key("x-forwarded-proto") {
        headers.insert("x-forwarded-proto", HeaderValue::from_static("http"));
    }
}

/// The manager's error shape (`{"message": ...}`, which the console shows).
fn message(status: StatusCode, text: &str) -> Response {
    let mut response = (status, serde_json::json!({ "message": text }).to_string()).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    response
}

/// The router's fallback, and the fallback of dfgraph's REST routes for
/// the manager's other methods on the same paths.
pub async fn pass(State(app): State<AppState>, request: Request) -> Response {
    pass_on(&app, request).await
}

/// Passes `request` to the manager (404 without one), after the CSRF
/// check dfgraph's own writes get.
pub async fn pass_on(app: &AppState, request: Request) -> Response {
    match &app.manager_proxy {
        Some(proxy) => {
            // The console sends JSON with every write: a simple (form or
            // text) cross-site write riding its cookie is refused here.
            let method = request.method().clone();
            if !matches!(method, Method::GET | Method::HEAD | Method::OPTIONS)
                && app.browser.csrf_prevention
                && let Some(why) = super::browser::csrf_refusal(&method, request.headers())
            {
                return message(StatusCode::BAD_REQUEST, why);
            }
            let client = client_ip(&request);
            let trusted = client.is_some_and(|ip| app.rate_limit.trusts(ip));
            proxy.forward(request, client, trusted).await
        }
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// The address of the socket `request` came on.
pub fn client_ip(request: &Request) -> Option<IpAddr> {
    request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manager_urls_are_checked_and_joined() {
        let base = Base::parse("http://manager:8080").unwrap();
        assert_eq!(
            base.uri("/api/v1/users/1?x=1").unwrap().to_string(),
            "http://manager:8080/api/v1/users/1?x=1"
        );
        let prefixed = Base::parse("http://10.0.0.1:8080/dragonfly/").unwrap();
        assert_eq!(
            prefixed.uri("/").unwrap().to_string(),
            "http://10.0.0.1:8080/dragonfly/"
        );
        for bad in [
            "manager:8080",
            "https://manager",
            "http://m/?a=1",
            "http://admin:secret@manager:8080",
            "http://admin@manager",
            "not a url",
        ] {
            let err = Base::parse(bad).unwrap_err().to_string();
            assert!(err.contains("manager_api"), "{bad}: {err}");
        }
    }

    #[test]
    fn hop_by_hop_headers_stay_and_forwarding_is_told() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-private"),
        );
        headers.insert("x-private", HeaderValue::from_static("1"));
        headers.insert(
            header::HOST,
            HeaderValue::from_static("console.example.com"),
        );
        headers.insert(header::COOKIE, HeaderValue::from_static("jwt=abc"));
        headers.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.9"));
        headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        let mut untrusted = headers.clone();
        untrusted.insert("x-forwarded-host", HeaderValue::from_static("evil.example"));
        untrusted.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        untrusted.insert("forwarded", HeaderValue::from_static("for=1.2.3.4"));
        untrusted.insert("x-real-ip", HeaderValue::from_static("1.2.3.4"));
        forwarded_headers(&mut untrusted, Some(IpAddr::from([127, 0, 0, 1])), false);
        assert_eq!(untrusted["x-forwarded-for"], "127.0.0.1");
        assert_eq!(untrusted["x-forwarded-host"], "console.example.com");
        assert_eq!(untrusted["x-forwarded-proto"], "http");
        assert!(untrusted.get("forwarded").is_none());
        assert!(untrusted.get("x-real-ip").is_none());
        forwarded_headers(&mut headers, Some(IpAddr::from([127, 0, 0, 1])), true);
        assert!(headers.get(header::TRANSFER_ENCODING).is_none());
        assert!(headers.get(header::CONNECTION).is_none());
        assert!(headers.get("x-private").is_none());
        assert!(headers.get(header::HOST).is_none());
        assert_eq!(headers["cookie"], "jwt=abc");
        assert_eq!(headers["x-forwarded-for"], "10.0.0.9, 127.0.0.1");
        assert_eq!(headers["x-forwarded-host"], "console.example.com");
        assert_eq!(headers["x-forwarded-proto"], "http");
    }
}
