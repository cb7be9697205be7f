//! The websocket handshake of `/graphql/ws` (RFC 6455 over HTTP/1.1),
//! answered here rather than by axum's `WebSocketUpgrade` so that the
//! connection keeps the raw socket: its one writer puts ready frames
//! straight onto it ([`super::ws`]), which axum's `WebSocket` cannot do.
//! Requests are checked as axum checked them, with the same statuses.

use std::future::Future;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Version, header};
use axum::response::{IntoResponse, Response};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

/// An upgraded connection's socket.
pub type Socket = TokioIo<Upgraded>;

/// A websocket upgrade request, not answered yet.
pub struct Upgrade {
    key: HeaderValue,
    /// The sub-protocols the client offered, in its order.
    offered: Vec<Vec<u8>>,
    on_upgrade: OnUpgrade,
}

/// Why a request cannot be upgraded.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("Request method must be `GET`")]
    MethodNotGet,
    #[error("Connection header did not include 'upgrade'")]
    ConnectionHeader,
    #[error("`Upgrade` header did not include 'websocket'")]
    UpgradeHeader,
    #[error("`Sec-WebSocket-Version` header did not include '13'")]
    VersionHeader,
    #[error("`Sec-WebSocket-Key` header missing")]
    KeyMissing,
    #[error("WebSocket request couldn't be upgraded since no upgrade state was present")]
    NotUpgradable,
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        let status = match self {
            Refused::MethodNotGet => StatusCode::METHOD_NOT_ALLOWED,
            Refused::NotUpgradable => StatusCode::UPGRADE_REQUIRED,
            _ => StatusCode::BAD_REQUEST,
        };
        (status, self.to_string()).into_response()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Upgrade {
    type Rejection = Refused;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Refused> {
        // HTTP/2's extended CONNECT is not served (axum::serve speaks
        // HTTP/1 here): such a request has nothing to upgrade.
        if parts.version > Version::HTTP_11 {
            return Err(Refused::NotUpgradable);
        }
        if parts.method != Method::GET {
            return Err(Refused::MethodNotGet);
        }
        if !header_lists(&parts.headers, header::CONNECTION, "upgrade") {
            return Err(Refused::ConnectionHeader);
        }
        if !header_is(&parts.headers, header::UPGRADE, "websocket") {
            return Err(Refused::UpgradeHeader);
        }
        if !header_is(&parts.headers, header::SEC_WEBSOCKET_VERSION, "13") {
            return Err(Refused::VersionHeader);
        }
        let key = parts
            .headers
            .get(header::SEC_WEBSOCKET_KEY)
            .ok_or(Refused::KeyMissing)?
            .clone();
        let offered = parts
            .headers
            .get_all(header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .flat_map(|value| value.as_bytes().split(|&b| b == b','))
            .map(|protocol| protocol.trim_ascii().to_vec())
            .collect();
        let on_upgrade = parts
            .extensions
            .remove::<OnUpgrade>()
            .ok_or(Refused::NotUpgradable)?;
        Ok(Upgrade {
            key,
            offered,
            on_upgrade,
        })
    }
}

impl Upgrade {
    /// The first of `ours` that the client offered.
    pub fn select(&self, ours: &[&'static str]) -> Option<&'static str> {
        ours.iter()
            .copied()
            .find(|ours| self.offered.iter().any(|o| o == ours.as_bytes()))
    }

    /// Switches protocols (speaking `protocol`, if any) and hands the
    /// socket to `serve` once the client has it.
    pub fn accept<F, Fut>(self, protocol: Option<&'static str>, serve: F) -> Response
    where
        F: FnOnce(Socket) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let on_upgrade = self.on_upgrade;
        tokio::spawn(async move {
            match on_upgrade.await {
                Ok(upgraded) => serve(TokioIo::new(upgraded)).await,
                Err(e) => tracing::debug!(error = %e, "websocket upgrade failed"),
            }
        });
        let mut response = Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header(header::CONNECTION, HeaderValue::from_static("upgrade"))
            .header(header::UPGRADE, HeaderValue::from_static("websocket"))
            .header(
                header::SEC_WEBSOCKET_ACCEPT,
                derive_accept_key(self.key.as_bytes()),
            );
        if let Some(protocol) = protocol {
            response = response.header(
                header::SEC_WEBSOCKET_PROTOCOL,
                HeaderValue::from_static(protocol),
            );
        }
        // Every part above is a valid header: building cannot fail.
        response
            .body(axum::body::Body::empty())
            .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
    }
}

/// Whether the comma-separated header `name` lists `token` (any case).
fn header_lists(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|value| {
        value
            .as_bytes()
            .split(|&b| b == b',')
            .any(|item| item.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
}

/// Whether header `name` is `value` (any case).
fn header_is(headers: &HeaderMap, name: HeaderName, value: &str) -> bool {
    headers
        .get(name)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(value.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_tokens_are_matched_as_axum_matched_them() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        headers.insert(header::UPGRADE, HeaderValue::from_static("WebSocket"));
        assert!(header_lists(&headers, header::CONNECTION, "upgrade"));
        assert!(!header_lists(&headers, header::CONNECTION, "close"));
        assert!(header_is(&headers, header::UPGRADE, "websocket"));
        assert!(!header_is(&headers, header::SEC_WEBSOCKET_VERSION, "13"));
    }
}
