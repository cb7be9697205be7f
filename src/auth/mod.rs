//! Who is asking, and what they may do. A request's credentials (a
//! Dragonfly manager session JWT, an OIDC token, or a static API token)
//! become a [`Principal`] with a [`Role`]; `viewer` may query and
//! subscribe, `admin` may also run mutations. Depends on nothing above it:
//! the HTTP layer extracts credentials, the schema checks roles.

pub mod config;
mod jwks;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use config::{Anonymous, AuthConfig, ManagerAuth, OidcAuth, StaticToken};
pub use jwks::JwksError;

/// What a principal may do.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Queries and subscriptions.
    #[default]
    Viewer,
    /// Everything a viewer may, and mutations.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Admin => "admin",
        }
    }

    fn parse(value: &str) -> Option<Role> {
        match value.trim().to_ascii_lowercase().as_str() {
            "viewer" => Some(Role::Viewer),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

/// How a principal proved who it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Anonymous,
    /// A console session signed by the Dragonfly manager (HS256).
    Manager,
    /// A token from the site's identity provider (RS256/ES256, JWKS).
    Oidc,
    /// A static API token from the configuration.
    Token,
}

/// The caller of one request or websocket connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// Who, for audit logs: `manager:<user id>`, `oidc:<sub>`,
    /// `token:<name>`, or `anonymous`.
    pub subject: String,
    pub role: Role,
    pub method: Method,
    /// When the credential stops being valid (a websocket is closed then).
    pub expires_at: Option<SystemTime>,
    /// The role was stated for this caller (a `users` entry, a static
    /// token, an OIDC claim, the manager's RBAC), not a default. A stated
    /// viewer is refused what the manager refuses its `guest` (jobs).
    pub role_stated: bool,
}

impl Principal {
    pub fn anonymous_viewer() -> Principal {
        Principal {
            subject: "anonymous".into(),
            role: Role::Viewer,
            method: Method::Anonymous,
            expires_at: None,
            role_stated: false,
        }
    }

    pub fn may_mutate(&self) -> bool {
        self.role == Role::Admin
    }

    /// True when the manager would refuse this caller a write (a `POST`
    /// such as a job): its role is a viewer the operator or the manager's
    /// RBAC named so. Anonymous and default-role callers are not refused:
    /// what dfgraph writes for them (a cache refresh) only re-reads live data.
    pub fn denied_writes(&self) -> bool {
        self.role == Role::Viewer && self.role_stated
    }

    /// Time left before the credential expires (`None`: it does not).
    pub fn expires_in(&self) -> Option<Duration> {
        self.expires_at
            .map(|at| at.duration_since(SystemTime::now()).unwrap_or_default())
    }
}

/// Why credentials were refused. Messages never contain the token.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum AuthError {
    #[error("authentication required: send Authorization: Bearer <token>")]
    Missing,
    #[error("the token is malformed")]
    Malformed,
    #[error("the token's signature does not verify")]
    BadSignature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token was rejected: {0}")]
    Rejected(String),
    #[error("no role for {subject}")]
    NoRole { subject: String },
}

/// Checks credentials against every configured method.
#[derive(Clone)]
pub struct Authenticator {
    inner: Arc<Inner>,
}

struct Inner {
    anonymous: Anonymous,
    manager: Option<ManagerVerifier>,
    oidc: Option<OidcVerifier>,
    /// Static tokens by the hex SHA-256 of the token.
    tokens: HashMap<String, (String, Role)>,
}

struct ManagerVerifier {
    key: DecodingKey,
    users: HashMap<String, Role>,
    default_role: Role,
    /// The manager's own RBAC, when dfgraph can ask the manager.
    rbac: Option<ManagerRbac>,
}

/// Asks the Dragonfly manager for the RBAC roles of a user
/// (`GET /api/v1/users/{id}/roles`, answered with e.g. `["root"]`),
/// presenting that user's own session token. Implemented by the HTTP
/// layer, which holds the client toward the manager.
pub trait ManagerRoles: Send + Sync {
    fn roles<'a>(
        &'a self,
        user: &'a str,
        token: &'a str,
    ) -> futures::future::BoxFuture<'a, Result<Vec<String>, RolesError>>;
}

/// Why the manager did not tell a user's roles.
#[derive(Debug, thiserror::Error)]
pub enum RolesError {
    /// The manager refused the user (401/403): its RBAC gives this user
    /// no more than a guest's reads.
    #[error("refused by the manager: {0}")]
    Refused(String),
    /// The manager could not be asked or answered nonsense.
    #[error("{0}")]
    Unavailable(String),
}

/// The manager's RBAC role that may do everything (`rbac.RootRole`).
const MANAGER_ROOT_ROLE: &str = "root";

/// How long a failed roles lookup is kept: long enough that a hung
/// manager does not stall each of a user's requests by the lookup's
/// timeout, short enough that a blip does not pin a user's role.
const ROLES_FAILURE_TTL: Duration = Duration::from_secs(5);

/// The manager's RBAC, asked at most once per user per `ttl`.
struct ManagerRbac {
    source: Arc<dyn ManagerRoles>,
    /// User id -> dfgraph role, `None` when the manager could not say
    /// (kept [`ROLES_FAILURE_TTL`] only).
    roles: moka::future::Cache<String, Option<Role>>,
}

/// Answers are kept for the configured ttl, failures briefly.
struct RolesExpiry {
    ttl: Duration,
}

impl moka::Expiry<String, Option<Role>> for RolesExpiry {
    fn expire_after_create(
        &self,
        _user: &String,
        role: &Option<Role>,
        _now: std::time::Instant,
    ) -> Option<Duration> {
        Some(match role {
            Some(_) => self.ttl,
            None => self.ttl.min(ROLES_FAILURE_TTL),
        })
    }
}

impl ManagerRbac {
    /// `admin` for the manager's `root`, `viewer` for any other role set
    /// (the manager's `guest` may only read) and for a user the manager
    /// refuses; `None` when the manager could not be asked.
    async fn role(&self, user: &str, token: &str) -> Option<Role> {
        self.roles
            .get_with(user.to_owned(), async {
                match self.source.roles(user, token).await {
                    Ok(roles) if roles.iter().any(|r| r == MANAGER_ROOT_ROLE) => Some(Role::Admin),
                    Ok(_) => Some(Role::Viewer),
                    Err(RolesError::Refused(why)) => {
                        tracing::info!(user, why, "the manager refuses a user its roles; a viewer");
                        Some(Role::Viewer)
                    }
                    Err(RolesError::Unavailable(e)) => {
                        tracing::warn!(user, error = %e, "cannot ask the manager for a user's roles; a viewer for now");
                        None
                    }
                }
            })
            .await
    }
}

struct OidcVerifier {
    keys: jwks::KeySet,
    issuer: String,
    audience: String,
    role_claim: String,
    default_role: Option<Role>,
}

/// Claims of the manager's console session (gin-jwt): the user id under
/// `id`, and the standard time claims.
#[derive(Deserialize)]
struct ManagerClaims {
    id: serde_json::Value,
    exp: u64,
}

/// Leeway for clock skew between dfgraph and the token's issuer.
const LEEWAY_SECS: u64 = 5;

impl Authenticator {
    /// Builds the verifiers (reads key files, loads the JWKS once and
    /// starts refreshing it).
    pub async fn new(config: &AuthConfig) -> Result<Authenticator, config::AuthConfigError> {
        let manager = match &config.manager {
            Some(m) => Some(ManagerVerifier {
                key: DecodingKey::from_secret(m.key()?.as_bytes()),
                users: m
                    .users
                    .iter()
                    .map(|(user, role)| (user.clone(), *role))
                    .collect(),
                default_role: m.default_role,
                rbac: None,
            }),
            None => None,
        };
        let oidc = match &config.oidc {
            Some(o) => Some(OidcVerifier {
                keys: jwks::KeySet::load(o.jwks_source()?, o.jwks_refresh).await?,
                issuer: o.issuer.clone(),
                audience: o.audience.clone(),
                role_claim: o.role_claim.clone(),
                default_role: o.default_role,
            }),
            None => None,
        };
        let tokens = config
            .static_tokens()?
            .into_iter()
            .map(|t| (t.sha256.to_ascii_lowercase(), (t.name, t.role)))
            .collect();
        Ok(Authenticator {
            inner: Arc::new(Inner {
                anonymous: config.anonymous,
                manager,
                oidc,
                tokens,
            }),
        })
    }

    /// Asks the manager's RBAC for the role of manager sessions not listed
    /// in `auth.manager.users`, keeping each answer for `ttl`. Without a
    /// manager verifier there is nothing to ask for.
    pub fn with_manager_roles(mut self, source: Arc<dyn ManagerRoles>, ttl: Duration) -> Self {
        let Some(inner) = Arc::get_mut(&mut self.inner) else {
            return self;
        };
        if let Some(manager) = &mut inner.manager {
            manager.rbac = Some(ManagerRbac {
                source,
                roles: moka::future::Cache::builder()
                    .expire_after(RolesExpiry { ttl })
                    .max_capacity(100_000)
                    .build(),
            });
        }
        self
    }

    /// True when the manager's `jwt` session cookie is a credential
    /// addressed to this gateway: it can verify one, or nothing is allowed
    /// without credentials anyway. Otherwise the console's cookie (sent
    /// with every request) is not ours to judge and is left unread.
    pub fn reads_session_cookie(&self) -> bool {
        self.inner.manager.is_some() || self.inner.anonymous == Anonymous::Off
    }

    /// Anonymous viewers only, no method configured (tests, the demo).
    pub fn open() -> Authenticator {
        Authenticator {
            inner: Arc::new(Inner {
                anonymous: Anonymous::Viewer,
                manager: None,
                oidc: None,
                tokens: HashMap::new(),
            }),
        }
    }

    /// The principal for a request that presented `token` (or none). A
    /// presented token that fails is refused even where anonymous access
    /// is allowed: a client that means to authenticate must learn that it
    /// did not.
    pub async fn authenticate(&self, token: Option<&str>) -> Result<Principal, AuthError> {
        let Some(token) = token.map(str::trim).filter(|t| !t.is_empty()) else {
            return match self.inner.anonymous {
                Anonymous::Viewer => Ok(Principal::anonymous_viewer()),
                Anonymous::Off => Err(AuthError::Missing),
            };
        };
        let digest = hex::encode(Sha256::digest(token.as_bytes()));
        if let Some((name, role)) = self.inner.tokens.get(&digest) {
            return Ok(Principal {
                subject: format!("token:{name}"),
                role: *role,
                method: Method::Token,
                expires_at: None,
                role_stated: true,
            });
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Malformed)?;
        match header.alg {
            Algorithm::HS256 => match &self.inner.manager {
                Some(manager) => manager.verify(token).await,
                None => Err(AuthError::Rejected(
                    "manager sessions are not accepted here".into(),
                )),
            },
            Algorithm::RS256 | Algorithm::ES256 => match &self.inner.oidc {
                Some(oidc) => oidc.verify(token, header).await,
                None => Err(AuthError::Rejected(
                    "OIDC tokens are not accepted here".into(),
                )),
            },
            other => Err(AuthError::Rejected(format!(
                "algorithm {other:?} is not accepted"
            ))),
        }
    }
}

fn validation(alg: Algorithm) -> Validation {
    let mut validation = Validation::new(alg);
    validation.leeway = LEEWAY_SECS;
    validation.validate_nbf = true;
    validation.set_required_spec_claims(&["exp"]);
    validation
}

fn map_jwt_error(e: jsonwebtoken::errors::Error) -> AuthError {
    use jsonwebtoken::errors::ErrorKind;
    match e.kind() {
        ErrorKind::InvalidSignature => AuthError::BadSignature,
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
        ErrorKind::InvalidToken
        | ErrorKind::Base64(_)
        | ErrorKind::Json(_)
        | ErrorKind::Utf8(_) => AuthError::Malformed,
        ErrorKind::InvalidIssuer => AuthError::Rejected("wrong issuer".into()),
        ErrorKind::InvalidAudience => AuthError::Rejected("wrong audience".into()),
        ErrorKind::MissingRequiredClaim(claim) => {
            AuthError::Rejected(format!("missing claim {claim}"))
        }
        _ => AuthError::Rejected("invalid token".into()),
    }
}

fn expiry(exp: u64) -> Option<SystemTime> {
    UNIX_EPOCH.checked_add(Duration::from_secs(exp))
}

impl ManagerVerifier {
    async fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        let data =
            jsonwebtoken::decode::<ManagerClaims>(token, &self.key, &validation(Algorithm::HS256))
                .map_err(map_jwt_error)?;
        let user = match &data.claims.id {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Number(n) => n.to_string(),
            _ => return Err(AuthError::Rejected("claim id is not a user id".into())),
        };
        let subject = format!("manager:{user}");
        let (stated, fallback) = match self.users.get(&user) {
            Some(role) => (Some(*role), self.default_role),
            None => match &self.rbac {
                // The manager was asked and could not say: never more than
                // a viewer, whatever default_role grants, so that a manager
                // blip cannot make a guest an admin.
                Some(rbac) => (
                    rbac.role(&user, token).await,
                    self.default_role.min(Role::Viewer),
                ),
                None => (None, self.default_role),
            },
        };
        Ok(Principal {
            subject,
            role: stated.unwrap_or(fallback),
            method: Method::Manager,
            expires_at: expiry(data.claims.exp),
            role_stated: stated.is_some(),
        })
    }
}

impl OidcVerifier {
    async fn verify(
        &self,
        token: &str,
        header: jsonwebtoken::Header,
    ) -> Result<Principal, AuthError> {
        let key = self.keys.key_for(header.kid.as_deref(), header.alg).await?;
        let mut validation = validation(header.alg);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        let data = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
            token,
            &key,
            &validation,
        )
        .map_err(map_jwt_error)?;
        let claims = data.claims;
        let sub = claims
            .get("sub")
            .and_then(serde_json::Value::as_str)
            .unwrap_or("?");
        let subject = format!("oidc:{sub}");
        let claimed = match claims.get(&self.role_claim) {
            Some(serde_json::Value::String(role)) => Role::parse(role),
            // A list of roles (groups): the strongest one known.
            Some(serde_json::Value::Array(roles)) => roles
                .iter()
                .filter_map(serde_json::Value::as_str)
                .filter_map(Role::parse)
                .max(),
            _ => None,
        };
        let role = claimed.or(self.default_role).ok_or(AuthError::NoRole {
            subject: subject.clone(),
        })?;
        let exp = claims.get("exp").and_then(serde_json::Value::as_u64);
        Ok(Principal {
            subject,
            role,
            method: Method::Oidc,
            expires_at: exp.and_then(expiry),
            role_stated: claimed.is_some(),
        })
    }
}

/// The hex SHA-256 of a static token, as the configuration stores it.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}
