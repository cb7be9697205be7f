//! The identity provider's signing keys (a JWKS), from a URL or a file,
//! fetched at start, again every `jwks_refresh`, and on a token whose
//! `kid` is unknown (at most once per [`MIN_REFETCH`]), so a key rotation
//! at the provider is picked up without a restart.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey};

use super::AuthError;

/// Unknown `kid`s trigger a fetch at most this often.
const MIN_REFETCH: Duration = Duration::from_secs(30);
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone, Debug)]
pub enum JwksSource {
    Url(String),
    File(PathBuf),
}

#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("cannot fetch the JWKS from {url}: {message}")]
    Fetch { url: String, message: String },
    #[error("cannot read the JWKS file {path}: {message}")]
    Read { path: String, message: String },
    #[error("the JWKS is not valid: {0}")]
    Parse(String),
}

struct Key {
    kid: Option<String>,
    alg: Option<Algorithm>,
    key: DecodingKey,
}

#[derive(Clone)]
pub struct KeySet {
    inner: Arc<Shared>,
}

struct Shared {
    source: JwksSource,
    keys: RwLock<Arc<Vec<Key>>>,
    last_fetch: tokio::sync::Mutex<Instant>,
    http: reqwest::Client,
}

impl KeySet {
    /// Loads the set once (an error is a configuration error) and keeps
    /// refreshing it every `refresh` while the set lives.
    pub async fn load(source: JwksSource, refresh: Duration) -> Result<KeySet, JwksError> {
        let http = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .build()
            .map_err(|e| JwksError::Fetch {
                url: String::new(),
                message: e.to_string(),
            })?;
        let keys = fetch(&source, &http).await?;
        let set = KeySet {
            inner: Arc::new(Shared {
                source,
                keys: RwLock::new(Arc::new(keys)),
                last_fetch: tokio::sync::Mutex::new(Instant::now()),
                http,
            }),
        };
        let weak = Arc::downgrade(&set.inner);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(refresh);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(shared) = weak.upgrade() else { break };
                KeySet { inner: shared }.refetch().await;
            }
        });
        Ok(set)
    }

    async fn refetch(&self) {
        let mut last = self.inner.last_fetch.lock().await;
        match fetch(&self.inner.source, &self.inner.http).await {
            Ok(keys) => {
                if let Ok(mut slot) = self.inner.keys.write() {
                    *slot = Arc::new(keys);
                }
            }
            // The keys we have stay in use.
            Err(error) => tracing::warn!(%error, "JWKS refresh failed"),
        }
        *last = Instant::now();
    }

    fn find(&self, kid: Option<&str>, alg: Algorithm) -> Option<DecodingKey> {
        let keys = self.inner.keys.read().ok()?.clone();
        keys.iter()
            .filter(|k| k.alg.is_none_or(|a| a == alg))
            .find(|k| kid.is_none() || k.kid.as_deref() == kid)
            .map(|k| k.key.clone())
    }

    /// The key that verifies a token with this `kid` and algorithm.
    pub async fn key_for(
        &self,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Result<DecodingKey, AuthError> {
        if let Some(key) = self.find(kid, alg) {
            return Ok(key);
        }
        let stale = self.inner.last_fetch.lock().await.elapsed() >= MIN_REFETCH;
        if stale {
            self.refetch().await;
        }
        self.find(kid, alg).ok_or_else(|| {
            AuthError::Rejected("no key of the identity provider matches the token".into())
        })
    }
}

async fn fetch(source: &JwksSource, http: &reqwest::Client) -> Result<Vec<Key>, JwksError> {
    let text = match source {
        JwksSource::Url(url) => {
            let failed = |e: reqwest::Error| JwksError::Fetch {
                url: url.clone(),
                message: e.to_string(),
            };
            http.get(url)
                .send()
                .await
                .and_then(reqwest::Response::error_for_status)
                .map_err(failed)?
                .text()
                .await
                .map_err(failed)?
        }
        JwksSource::File(path) => std::fs::read_to_string(path).map_err(|e| JwksError::Read {
            path: path.display().to_string(),
            message: e.to_string(),
        })?,
    };
    let set: JwkSet = serde_json::from_str(&text).map_err(|e| JwksError::Parse(e.to_string()))?;
    let keys: Vec<Key> = set
        .keys
        .iter()
        .filter_map(|jwk| {
            let key = DecodingKey::from_jwk(jwk).ok()?;
            let alg = jwk
                .common
                .key_algorithm
                .and_then(|a| a.to_string().parse::<Algorithm>().ok());
            Some(Key {
                kid: jwk.common.key_id.clone(),
                alg,
                key,
            })
        })
        .collect();
    if keys.is_empty() {
        return Err(JwksError::Parse("no usable key".into()));
    }
    Ok(keys)
}
