//! Persisted operations. Automatic Persisted Queries (Apollo's protocol:
//! `extensions.persistedQuery.sha256Hash`, the document sent once and then
//! only its hash) with the documents kept in Redis, so every replica knows
//! what any replica was sent; and a safelist mode in which only the
//! operations of a manifest run, whatever a client sends.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::cache::keys;
use crate::redis::Redis;

/// How long Redis keeps a persisted document after it was last sent.
const APQ_TTL: Duration = Duration::from_secs(24 * 3600);

/// Which requests may name a persisted operation, and which must.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Documents only; a hash-only request is refused.
    Off,
    /// Automatic Persisted Queries: any document, by hash once sent.
    #[default]
    Apq,
    /// Only the operations of `safelist_file` run.
    Safelist,
}

/// Why a request's persisted operation cannot run.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PersistedError {
    /// Apollo clients match this message and send the document again.
    #[error("PersistedQueryNotFound")]
    NotFound,
    #[error("PersistedQueryNotSupported")]
    NotSupported,
    #[error("the document's SHA-256 is not the hash the request names")]
    HashMismatch,
    #[error("this server runs registered operations only; {hash} is not one of them")]
    NotInSafelist { hash: String },
    #[error("malformed extensions.persistedQuery: {0}")]
    Malformed(String),
}

impl PersistedError {
    pub fn code(&self) -> &'static str {
        match self {
            PersistedError::NotFound => "PERSISTED_QUERY_NOT_FOUND",
            PersistedError::NotSupported => "PERSISTED_QUERY_NOT_SUPPORTED",
            PersistedError::HashMismatch => "PERSISTED_QUERY_HASH_MISMATCH",
            PersistedError::NotInSafelist { .. } => "OPERATION_NOT_IN_SAFELIST",
            PersistedError::Malformed(_) => "BAD_REQUEST",
        }
    }

    /// The GraphQL error body of this refusal.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({ "errors": [{
            "message": self.to_string(),
            "extensions": { "code": self.code() },
        }]})
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("graphql.safelist_file {path}: {message}")]
    Read { path: String, message: String },
}

impl ManifestError {
    /// The same error as the setting it is about, within `[graphql]`.
    pub fn into_invalid(self) -> crate::setting::Invalid {
        let ManifestError::Read { path, message } = self;
        crate::setting::Invalid::new("safelist_file", format!("{path}: {message}"))
    }
}

/// Apollo's persisted query manifest: `{"operations": [{"id", "body"}]}`
/// with `id` the hex SHA-256 of `body`.
#[derive(Deserialize)]
struct Manifest {
    operations: Vec<ManifestOperation>,
}

#[derive(Deserialize)]
struct ManifestOperation {
    id: String,
    body: String,
}

/// Resolves and checks the persisted operation of each request.
#[derive(Clone)]
pub struct PersistedQueries {
    mode: Mode,
    /// Safelist mode: the registered documents by hash.
    safelist: std::sync::Arc<HashMap<String, String>>,
    /// APQ without Redis (or while it fails): this replica's own store.
    local: moka::future::Cache<String, String>,
    redis: Option<Redis>,
}

pub fn sha256_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

impl PersistedQueries {
    pub fn new(
        mode: Mode,
        safelist_file: Option<&Path>,
        redis: Option<Redis>,
    ) -> Result<Self, ManifestError> {
        let safelist = match (mode, safelist_file) {
            (Mode::Safelist, Some(path)) => load_manifest(path)?,
            (Mode::Safelist, None) => {
                return Err(ManifestError::Read {
                    path: String::new(),
                    message: "safelist mode needs graphql.safelist_file".into(),
                });
            }
            _ => HashMap::new(),
        };
        Ok(PersistedQueries {
            mode,
            safelist: std::sync::Arc::new(safelist),
            local: moka::future::Cache::builder()
                .max_capacity(10_000)
                .time_to_idle(APQ_TTL)
                .build(),
            redis,
        })
    }

    /// Fills in the document of a hash-only request, stores newly sent
    /// documents (APQ), and refuses what the mode does not allow.
    pub async fn resolve(
        &self,
        request: &mut async_graphql::Request,
    ) -> Result<(), PersistedError> {
        let hash = requested_hash(request)?;
        let has_document = !request.query.trim().is_empty();
        match self.mode {
            Mode::Off => match hash {
                Some(_) if !has_document => Err(PersistedError::NotSupported),
                _ => Ok(()),
            },
            Mode::Safelist => {
                let hash = match hash {
                    Some(hash) => hash,
                    None => sha256_hex(&request.query),
                };
                match self.safelist.get(&hash) {
                    Some(document) => {
                        if has_document && sha256_hex(&request.query) != hash {
                            return Err(PersistedError::HashMismatch);
                        }
                        request.query = document.clone();
                        Ok(())
                    }
                    None => Err(PersistedError::NotInSafelist { hash }),
                }
            }
            Mode::Apq => {
                let Some(hash) = hash else { return Ok(()) };
                if has_document {
                    if sha256_hex(&request.query) != hash {
                        return Err(PersistedError::HashMismatch);
                    }
                    self.store(&hash, &request.query).await;
                    return Ok(());
                }
                match self.load(&hash).await {
                    Some(document) => {
                        request.query = document;
                        Ok(())
                    }
                    None => Err(PersistedError::NotFound),
                }
            }
        }
    }

    async fn store(&self, hash: &str, document: &str) {
        self.local
            .insert(hash.to_owned(), document.to_owned())
            .await;
        let Some(redis) = &self.redis else {
            return;
        };
        let mut cmd = redis::cmd("SET");
        cmd.arg(keys::persisted_query(hash))
            .arg(document)
            .arg("PX")
            .arg(APQ_TTL.as_millis() as u64);
        if let Err(e) = redis.cmd::<()>("apq_store", &cmd).await {
            tracing::debug!(error = %e, "APQ: storing in Redis failed");
        }
    }

    async fn load(&self, hash: &str) -> Option<String> {
        if let Some(document) = self.local.get(hash).await {
            return Some(document);
        }
        let redis = self.redis.as_ref()?;
        let mut cmd = redis::cmd("GET");
        cmd.arg(keys::persisted_query(hash));
        let document = redis.cmd::<Option<String>>("apq_load", &cmd).await.ok()??;
        // What another replica stored must still be what the hash names.
        if sha256_hex(&document) != hash {
            return None;
        }
        self.local.insert(hash.to_owned(), document.clone()).await;
        Some(document)
    }
}

/// The hash of `extensions.persistedQuery`, if the request names one.
fn requested_hash(request: &async_graphql::Request) -> Result<Option<String>, PersistedError> {
    let Some(persisted) = request.extensions.get("persistedQuery") else {
        return Ok(None);
    };
    let value = persisted
        .clone()
        .into_json()
        .map_err(|e| PersistedError::Malformed(e.to_string()))?;
    if value.get("version").and_then(serde_json::Value::as_u64) != Some(1) {
        return Err(PersistedError::Malformed("version must be 1".into()));
    }
    let hash = value
        .get("sha256Hash")
        .and_then(serde_json::Value::as_str)
        .ok_or_else(|| PersistedError::Malformed("sha256Hash is missing".into()))?
        .to_ascii_lowercase();
    if hash.len() != 64 || !hash.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(PersistedError::Malformed(
            "sha256Hash must be 64 hex digits".into(),
        ));
    }
    Ok(Some(hash))
}

pub(crate) fn load_manifest(path: &Path) -> Result<HashMap<String, String>, ManifestError> {
    let failed = |message: String| ManifestError::Read {
        path: path.display().to_string(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| failed(e.to_string()))?;
    let manifest: Manifest = serde_json::from_str(&text).map_err(|e| failed(e.to_string()))?;
    let mut operations = HashMap::with_capacity(manifest.operations.len());
    for op in manifest.operations {
        let id = op.id.to_ascii_lowercase();
        if sha256_hex(&op.body) != id {
            return Err(failed(format!(
                "operation {id}: id is not the SHA-256 of its body"
            )));
        }
        operations.insert(id, op.body);
    }
    Ok(operations)
}
