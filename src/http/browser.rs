//! Browser safety: the CORS allowlist, CSRF prevention for `/graphql`
//! (refusing what a page on another site could make a browser send
//! without a preflight), and the websocket `Origin` check against
//! cross-site websocket hijacking. Credentials ride on cookies (the
//! manager's `jwt`), so a browser would attach them to such requests.

use axum::http::{HeaderMap, HeaderValue, Method, header};
use serde::{Deserialize, Serialize};
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::setting::Invalid;

/// The `[browser]` settings: which other origins may call dfgraph from a
/// page, and refusing requests a browser would send without a CORS
/// preflight.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrowserConfig {
    /// Origins (`https://console.example.com`) allowed cross-origin; the
    /// default, none, allows only same-origin pages.
    pub cors_allowed_origins: Vec<String>,
    /// Refuse `/graphql` requests a browser could send cross-site without a
    /// preflight (form or text/plain bodies; GET without a non-simple
    /// header), as Apollo's CSRF prevention does.
    pub csrf_prevention: bool,
}

impl Default for BrowserConfig {
    fn default() -> Self {
        BrowserConfig {
            cors_allowed_origins: Vec::new(),
            csrf_prevention: true,
        }
    }
}

impl BrowserConfig {
    /// Every allowed origin must be a single origin: never `*`.
    pub fn validate(&self) -> Result<(), Invalid> {
        for origin in &self.cors_allowed_origins {
            if origin == "*" || HeaderValue::from_str(origin).is_err() || !origin.contains("://") {
                return Err(Invalid::new(
                    "cors_allowed_origins",
                    format!(
                        "{origin:?} is not an origin like https://console.example.com (no wildcards)"
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// Headers that make a browser preflight a request (and that curl or a
/// script adds at no cost), as Apollo's CSRF prevention accepts them.
const PREFLIGHT_HEADERS: &[&str] = &["apollo-require-preflight", "x-apollo-operation-name"];

/// The CORS layer: only the configured origins, never `*`.
pub fn cors(config: &BrowserConfig) -> CorsLayer {
    let origins: Vec<HeaderValue> = config
        .cors_allowed_origins
        .iter()
        .filter_map(|o| HeaderValue::from_str(o).ok())
        .collect();
    CorsLayer::new()
        .allow_origin(AllowOrigin::list(origins))
        // The manager's methods: behind `manager_api`, the console's
        // updates and deletes pass through dfgraph too.
        .allow_methods([
            Method::GET,
            Method::HEAD,
            Method::PUT,
            Method::POST,
            Method::DELETE,
            Method::PATCH,
        ])
        .allow_headers([
            header::CONTENT_TYPE,
            header::AUTHORIZATION,
            header::ACCEPT,
            header::HeaderName::from_static("apollo-require-preflight"),
        ])
        .expose_headers(EXPOSED.map(header::HeaderName::from_static))
        .allow_credentials(true)
}

/// Response headers a page on a listed origin may read: the manager's own
/// (`Link` carries the peers pages' pagination, which the console parses),
/// and dfgraph's notes on partial or old host lists.
const EXPOSED: [&str; 5] = [
    "link",
    "location",
    "authorization",
    super::rest::UNAVAILABLE_HEADER,
    super::rest::LIST_AGE_HEADER,
];

/// Why a request looks like one a browser sent cross-site unasked.
pub fn csrf_refusal(method: &Method, headers: &HeaderMap) -> Option<&'static str> {
    if PREFLIGHT_HEADERS.iter().any(|h| headers.contains_key(*h))
        || headers.contains_key(header::AUTHORIZATION)
    {
        return None;
    }
    let simple_type = match headers.get(header::CONTENT_TYPE) {
        None => true,
        Some(value) => {
            let media = value
                .to_str()
                .unwrap_or("")
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            matches!(
                media.as_str(),
                "application/x-www-form-urlencoded" | "multipart/form-data" | "text/plain"
            )
        }
    };
    if !simple_type {
        return None;
    }
    Some(if method == Method::GET {
        "GET /graphql needs a header a browser would preflight: `apollo-require-preflight: true` (or an Authorization header)"
    } else {
        "this content type could be sent by any web page: send application/json"
    })
}

/// True when a websocket upgrade may proceed: no `Origin` (not a
/// browser), the page's own origin, or an allowed one.
pub fn origin_allowed(config: &BrowserConfig, headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()) else {
        return true;
    };
    if config.cors_allowed_origins.iter().any(|o| o == origin) {
        return true;
    }
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let origin_host = origin.split_once("://").map(|(_, rest)| rest);
    matches!((origin_host, host), (Some(o), Some(h)) if o.eq_ignore_ascii_case(h))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(*k, HeaderValue::from_static(v));
        }
        map
    }

    #[test]
    fn simple_requests_are_refused_and_preflighted_ones_pass() {
        let post = Method::POST;
        assert!(csrf_refusal(&post, &headers(&[("content-type", "text/plain")])).is_some());
        assert!(
            csrf_refusal(
                &post,
                &headers(&[("content-type", "application/x-www-form-urlencoded")])
            )
            .is_some()
        );
        assert!(csrf_refusal(&post, &headers(&[("content-type", "application/json")])).is_none());
        assert!(csrf_refusal(&Method::GET, &headers(&[])).is_some());
        assert!(
            csrf_refusal(
                &Method::GET,
                &headers(&[("apollo-require-preflight", "true")])
            )
            .is_none()
        );
        assert!(csrf_refusal(&Method::GET, &headers(&[("authorization", "Bearer x")])).is_none());
    }

    #[test]
    fn websocket_origins_same_site_or_listed() {
        let config = BrowserConfig {
            cors_allowed_origins: vec!["https://console.example.com".into()],
            csrf_prevention: true,
        };
        assert!(origin_allowed(&config, &headers(&[])));
        assert!(origin_allowed(
            &config,
            &headers(&[
                ("origin", "http://127.0.0.1:8080"),
                ("host", "127.0.0.1:8080")
            ])
        ));
        assert!(origin_allowed(
            &config,
            &headers(&[
                ("origin", "https://console.example.com"),
                ("host", "dfgraph:8080")
            ])
        ));
        assert!(!origin_allowed(
            &config,
            &headers(&[("origin", "https://evil.example"), ("host", "dfgraph:8080")])
        ));
    }
}
