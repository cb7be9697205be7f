//! The `[auth]` settings: which credentials are accepted and how each
//! maps to a role. Secrets (the manager's key, static tokens) never appear
//! in `Debug` output or logs; static tokens are stored only as hashes.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::Role;
use super::jwks::{JwksError, JwksSource};
use crate::setting::Invalid;

/// What a request without credentials may do.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Anonymous {
    /// Refused (401).
    Off,
    /// Queries and subscriptions (the embedded demo's setting).
    #[default]
    Viewer,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    pub anonymous: Anonymous,
    /// Dragonfly manager console sessions (HS256 JWTs).
    pub manager: Option<ManagerAuth>,
    /// Tokens of the site's identity provider (RS256/ES256 via JWKS).
    pub oidc: Option<OidcAuth>,
    /// Static API tokens, stored as hashes.
    pub tokens: Vec<StaticToken>,
    /// More static tokens, one `NAME ROLE SHA256` per line (`#` comments).
    pub tokens_file: Option<PathBuf>,
}

/// The manager's session tokens: signed with its `auth.jwt.key`, the user
/// id in claim `id`.
#[derive(Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ManagerAuth {
    /// The manager's `auth.jwt.key` itself (prefer a file or variable).
    pub jwt_key: Option<String>,
    pub jwt_key_file: Option<PathBuf>,
    /// Name of an environment variable holding the key.
    pub jwt_key_env: Option<String>,
    /// Manager user id -> role; wins over the manager's RBAC.
    pub users: BTreeMap<String, Role>,
    /// Role of a manager session neither listed in `users` nor `root` in
    /// the manager's RBAC (asked through `manager_api` when set). A valid
    /// session can read peers in the manager, so the default is `viewer`.
    pub default_role: Role,
}

impl std::fmt::Debug for ManagerAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManagerAuth")
            .field("jwt_key", &self.jwt_key.as_ref().map(|_| "<redacted>"))
            .field("jwt_key_file", &self.jwt_key_file)
            .field("jwt_key_env", &self.jwt_key_env)
            .field("users", &self.users)
            .field("default_role", &self.default_role)
            .finish()
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct OidcAuth {
    /// Expected `iss`.
    pub issuer: String,
    /// Expected `aud`.
    pub audience: String,
    pub jwks_url: Option<String>,
    pub jwks_file: Option<PathBuf>,
    /// Claim naming the role (a string, or a list: the strongest wins).
    pub role_claim: String,
    /// Role when the claim names none (none: refused).
    pub default_role: Option<Role>,
    /// How often the key set is fetched again (also on an unknown `kid`).
    #[serde(with = "humantime_serde")]
    pub jwks_refresh: Duration,
}

impl Default for OidcAuth {
    fn default() -> Self {
        OidcAuth {
            issuer: String::new(),
            audience: String::new(),
            jwks_url: None,
            jwks_file: None,
            role_claim: "dfgraph_role".into(),
            default_role: None,
            jwks_refresh: Duration::from_secs(600),
        }
    }
}

/// One static API token: `sha256` is the hex SHA-256 of the token
/// (`printf %s TOKEN | sha256sum`).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StaticToken {
    pub name: String,
    pub sha256: String,
    pub role: Role,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthConfigError {
    #[error("auth.manager: {0}")]
    ManagerKey(String),
    #[error("auth.oidc: {0}")]
    Oidc(String),
    #[error("auth.oidc: {0}")]
    Jwks(#[from] JwksError),
    #[error("auth.tokens: {0}")]
    Tokens(String),
}

impl AuthConfigError {
    /// The same error as the setting it is about, within `[auth]`.
    pub fn into_invalid(self) -> Invalid {
        match self {
            AuthConfigError::ManagerKey(m) => Invalid::new("manager", m),
            AuthConfigError::Oidc(m) => Invalid::new("oidc", m),
            AuthConfigError::Jwks(e) => Invalid::new("oidc", e.to_string()),
            AuthConfigError::Tokens(m) => Invalid::new("tokens", m),
        }
    }
}

impl ManagerAuth {
    /// The signing key, from whichever of the three places holds it.
    pub fn key(&self) -> Result<String, AuthConfigError> {
        let bad = |m: String| AuthConfigError::ManagerKey(m);
        let key = match (&self.jwt_key, &self.jwt_key_file, &self.jwt_key_env) {
            (Some(key), None, None) => key.clone(),
            (None, Some(file), None) => std::fs::read_to_string(file)
                .map_err(|e| bad(format!("jwt_key_file {}: {e}", file.display())))?
                .trim_end_matches(['\r', '\n'])
                .to_owned(),
            (None, None, Some(var)) => std::env::var(var)
                .map_err(|_| bad(format!("jwt_key_env: variable {var} is not set")))?,
            (None, None, None) => {
                return Err(bad("set one of jwt_key, jwt_key_file, jwt_key_env".into()));
            }
            _ => {
                return Err(bad(
                    "set only one of jwt_key, jwt_key_file, jwt_key_env".into()
                ));
            }
        };
        if key.is_empty() {
            return Err(bad("the JWT key is empty".into()));
        }
        Ok(key)
    }
}

impl OidcAuth {
    pub fn jwks_source(&self) -> Result<JwksSource, AuthConfigError> {
        if self.issuer.is_empty() || self.audience.is_empty() {
            return Err(AuthConfigError::Oidc(
                "issuer and audience are required".into(),
            ));
        }
        if self.jwks_refresh < Duration::from_secs(1) {
            return Err(AuthConfigError::Oidc(
                "jwks_refresh must be at least 1s".into(),
            ));
        }
        match (&self.jwks_url, &self.jwks_file) {
            (Some(url), None) => Ok(JwksSource::Url(url.clone())),
            (None, Some(file)) => Ok(JwksSource::File(file.clone())),
            _ => Err(AuthConfigError::Oidc(
                "set one of jwks_url, jwks_file".into(),
            )),
        }
    }
}

impl AuthConfig {
    /// True when some way to authenticate is configured.
    pub fn has_method(&self) -> bool {
        self.manager.is_some()
            || self.oidc.is_some()
            || !self.tokens.is_empty()
            || self.tokens_file.is_some()
    }

    /// Every static token, from the config and the tokens file.
    pub fn static_tokens(&self) -> Result<Vec<StaticToken>, AuthConfigError> {
        let mut tokens = self.tokens.clone();
        if let Some(file) = &self.tokens_file {
            let text = std::fs::read_to_string(file).map_err(|e| {
                AuthConfigError::Tokens(format!("tokens_file {}: {e}", file.display()))
            })?;
            for (n, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let fields: Vec<&str> = line.split_whitespace().collect();
                let [name, role, sha256] = fields[..] else {
                    return Err(AuthConfigError::Tokens(format!(
                        "{}:{}: expected NAME ROLE SHA256",
                        file.display(),
                        n + 1
                    )));
                };
                let role = Role::parse(role).ok_or_else(|| {
                    AuthConfigError::Tokens(format!(
                        "{}:{}: role {role:?} is not viewer or admin",
                        file.display(),
                        n + 1
                    ))
                })?;
                tokens.push(StaticToken {
                    name: name.into(),
                    sha256: sha256.into(),
                    role,
                });
            }
        }
        for token in &tokens {
            let hex_ok =
                token.sha256.len() == 64 && token.sha256.chars().all(|c| c.is_ascii_hexdigit());
            if !hex_ok {
                return Err(AuthConfigError::Tokens(format!(
                    "token {:?}: sha256 must be 64 hex digits (the hash of the token, not the token)",
                    token.name
                )));
            }
        }
        Ok(tokens)
    }

    /// Checks what can be checked without the network.
    pub fn validate(&self) -> Result<(), Invalid> {
        if let Some(manager) = &self.manager {
            manager.key().map_err(AuthConfigError::into_invalid)?;
        }
        if let Some(oidc) = &self.oidc {
            oidc.jwks_source().map_err(AuthConfigError::into_invalid)?;
        }
        self.static_tokens()
            .map_err(AuthConfigError::into_invalid)?;
        Ok(())
    }
}
