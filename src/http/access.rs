//! Credentials over HTTP: the token a request carries (`Authorization:
//! Bearer`, or the Dragonfly manager's `jwt` cookie), and the refusal
//! sent when it does not authenticate.

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::AppState;
use crate::auth::{AuthError, Authenticator, Principal};

/// The manager's console keeps its session in this cookie.
const SESSION_COOKIE: &str = "jwt";

/// The bearer token of `Authorization`, or the manager session cookie
/// when `auth` reads it (see [`Authenticator::reads_session_cookie`]: the
/// console sends its cookie with every request, addressed to the manager).
pub fn token(auth: &Authenticator, headers: &HeaderMap) -> Option<String> {
    presented(headers, auth.reads_session_cookie())
}

fn presented(headers: &HeaderMap, read_cookie: bool) -> Option<String> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(strip_bearer);
    if let Some(token) = bearer {
        return Some(token.to_owned());
    }
    if !read_cookie {
        return None;
    }
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value.trim().to_owned())
}

/// `Bearer TOKEN` (any case) to `TOKEN`.
pub fn strip_bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// The principal of a request, or the 401 to answer it with.
pub async fn principal(app: &AppState, headers: &HeaderMap) -> Result<Principal, Response> {
    app.auth
        .authenticate(token(&app.auth, headers).as_deref())
        .await
        .map_err(|e| unauthenticated(&e))
}

/// 401 with a GraphQL-shaped body (the console and GraphQL clients read
/// `errors`) and `WWW-Authenticate`.
pub fn unauthenticated(error: &AuthError) -> Response {
    let body = serde_json::json!({ "errors": [{
        "message": error.to_string(),
        "extensions": { "code": "UNAUTHENTICATED" },
    }]});
    let mut response = (StatusCode::UNAUTHORIZED, body.to_string()).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_header_wins_over_the_session_cookie() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; jwt=cookie-token"),
        );
        assert_eq!(presented(&headers, true).as_deref(), Some("cookie-token"));
        assert_eq!(presented(&headers, false), None, "not ours to read");
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bearer header-token"),
        );
        assert_eq!(presented(&headers, true).as_deref(), Some("header-token"));
        assert_eq!(presented(&headers, false).as_deref(), Some("header-token"));
        assert_eq!(strip_bearer("Basic abc"), None);
    }
}
