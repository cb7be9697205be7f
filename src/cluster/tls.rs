//! TLS toward schedulers and the manager: the `[tls]` settings and the
//! tonic client configuration they describe.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

use crate::setting::Invalid;

/// The `[tls]` settings. A CA alone gives server-verified TLS; adding a
/// certificate and key gives mutual TLS.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file of the CA that signed the schedulers' certificates.
    pub ca_cert: Option<PathBuf>,
    /// PEM certificate dfgraph presents (mutual TLS, with `key`).
    pub cert: Option<PathBuf>,
    /// PEM private key of `cert`.
    pub key: Option<PathBuf>,
    /// Name to verify in the server certificate, when it differs from the
    /// address dialled.
    pub domain: Option<String>,
}

impl TlsConfig {
    pub fn enabled(&self) -> bool {
        self.ca_cert.is_some() || self.cert.is_some()
    }

    /// A certificate goes with its key.
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.cert.is_some() != self.key.is_some() {
            return Err(Invalid::new("", "mutual TLS needs both `cert` and `key`"));
        }
        Ok(())
    }

    /// The client configuration, its files read (`None`: plaintext).
    pub fn client_config(&self) -> Result<Option<ClientTlsConfig>, Invalid> {
        if !self.enabled() {
            return Ok(None);
        }
        let mut client = ClientTlsConfig::new();
        if let Some(ca) = &self.ca_cert {
            client = client.ca_certificate(Certificate::from_pem(read("ca_cert", ca)?));
        }
        if let (Some(cert), Some(key)) = (&self.cert, &self.key) {
            client = client.identity(Identity::from_pem(read("cert", cert)?, read("key", key)?));
        }
        if let Some(domain) = &self.domain {
            client = client.domain_name(domain.clone());
        }
        Ok(Some(client))
    }
}

fn read(setting: &str, path: &Path) -> Result<Vec<u8>, Invalid> {
    std::fs::read(path)
        .map_err(|e| Invalid::new(setting, format!("cannot read {}: {e}", path.display())))
}
