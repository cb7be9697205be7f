//! The encryption keys of cached values: which key encrypts new values, and
//! every key (by one-byte id) that may still decrypt old ones, so keys can
//! rotate without dropping the cache. Keys come from a file or an
//! environment variable, never from the config file itself.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;

use base64::Engine as _;
use chacha20poly1305::{KeyInit, XChaCha20Poly1305};

/// Where the value encryption keys come from.
///
/// The key text (file contents or the variable's value) is a list of
/// `id:key` (or `id=key`) entries separated by newlines, commas or spaces;
/// `#` starts a comment line. A key is 32 bytes written as 64 hex digits or
/// as base64 (standard or URL-safe, padded or not), e.g.
/// `1:8f3a...e2` or `2=q83vEjRWeJq83vEjRWeJq83vEjRWeJq83vEjRWeJq8=`.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct EncryptionConfig {
    /// The id of the key that encrypts new values.
    pub current_key_id: u8,
    /// A file holding the key text.
    pub keys_file: Option<PathBuf>,
    /// The name of an environment variable holding the key text (used when
    /// `keys_file` is not set).
    pub keys_env: Option<String>,
}

/// Why the encryption keys could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeyRingError {
    #[error("no encryption key source: set keys_file or keys_env")]
    NoSource,
    #[error("cannot read encryption keys file {path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("environment variable {0} (encryption keys) is not set or not unicode")]
    Env(String),
    #[error("encryption key entry {0:?} is not of the form id:key")]
    Entry(String),
    #[error("encryption key id {0:?} is not a number from 0 to 255")]
    KeyId(String),
    #[error("encryption key {0} is neither 64 hex digits nor base64 of 32 bytes")]
    KeyBytes(u8),
    #[error("encryption key id {0} is defined twice")]
    Duplicate(u8),
    #[error("the current encryption key id {0} has no key")]
    MissingCurrent(u8),
}

/// Ready-to-use ciphers by key id. Its `Debug` never shows key bytes.
#[derive(Clone)]
pub struct KeyRing {
    current: u8,
    ciphers: HashMap<u8, XChaCha20Poly1305>,
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut ids: Vec<u8> = self.ciphers.keys().copied().collect();
        ids.sort_unstable();
        f.debug_struct("KeyRing")
            .field("current", &self.current)
            .field("key_ids", &ids)
            .finish()
    }
}

impl KeyRing {
    /// A key ring from raw keys; `current` must be one of them.
    pub fn new(current: u8, keys: &HashMap<u8, [u8; 32]>) -> Result<Self, KeyRingError> {
        if !keys.contains_key(&current) {
            return Err(KeyRingError::MissingCurrent(current));
        }
        let ciphers = keys
            .iter()
            .map(|(id, key)| (*id, XChaCha20Poly1305::new(key.into())))
            .collect();
        Ok(Self { current, ciphers })
    }

    /// Parses key text (see [`EncryptionConfig`]).
    pub fn parse(current: u8, text: &str) -> Result<Self, KeyRingError> {
        let mut keys = HashMap::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            for entry in line
                .split(|c: char| c == ',' || c.is_whitespace())
                .filter(|e| !e.is_empty())
            {
                let (id, key) = entry
                    .split_once([':', '='])
                    .ok_or_else(|| KeyRingError::Entry(redact(entry)))?;
                let id: u8 = id
                    .trim()
                    .parse()
                    .map_err(|_| KeyRingError::KeyId(id.to_string()))?;
                let bytes = parse_key(key.trim()).ok_or(KeyRingError::KeyBytes(id))?;
                if keys.insert(id, bytes).is_some() {
                    return Err(KeyRingError::Duplicate(id));
                }
            }
        }
        Self::new(current, &keys)
    }

    /// Loads the keys named by the config.
    pub fn from_config(config: &EncryptionConfig) -> Result<Self, KeyRingError> {
        let text = match (&config.keys_file, &config.keys_env) {
            (Some(path), _) => {
                std::fs::read_to_string(path).map_err(|source| KeyRingError::File {
                    path: path.clone(),
                    source,
                })?
            }
            (None, Some(var)) => std::env::var(var).map_err(|_| KeyRingError::Env(var.clone()))?,
            (None, None) => return Err(KeyRingError::NoSource),
        };
        Self::parse(config.current_key_id, &text)
    }

    pub fn current_id(&self) -> u8 {
        self.current
    }

    pub(crate) fn current(&self) -> Option<&XChaCha20Poly1305> {
        self.ciphers.get(&self.current)
    }

    pub(crate) fn get(&self, id: u8) -> Option<&XChaCha20Poly1305> {
        self.ciphers.get(&id)
    }
}

/// Shows only the id part of a malformed entry, never key material.
fn redact(entry: &str) -> String {
    let shown: String = entry.chars().take(4).collect();
    format!("{shown}…")
}

fn parse_key(text: &str) -> Option<[u8; 32]> {
    if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        let mut out = [0u8; 32];
        for (i, chunk) in text.as_bytes().chunks(2).enumerate() {
            let hi = hex_digit(chunk[0])?;
            let lo = hex_digit(chunk[1])?;
            out[i] = (hi << 4) | lo;
        }
        return Some(out);
    }
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
        .iter()
        .find_map(|engine| engine.decode(text).ok())
        .and_then(|bytes| <[u8; 32]>::try_from(bytes.as_slice()).ok())
}

fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    #[test]
    fn parses_hex_and_base64_entries() {
        let b64 = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        let ring = KeyRing::parse(2, &format!("# keys\n1:{HEX}\n2={b64}")).unwrap();
        assert_eq!(ring.current_id(), 2);
        assert!(ring.get(1).is_some() && ring.get(2).is_some());
        let ring = KeyRing::parse(1, &format!("1:{HEX}, 3:{b64}")).unwrap();
        assert!(ring.get(3).is_some());
    }

    #[test]
    fn rejects_bad_text() {
        assert!(matches!(
            KeyRing::parse(1, "1:abcd"),
            Err(KeyRingError::KeyBytes(1))
        ));
        assert!(matches!(
            KeyRing::parse(9, &format!("1:{HEX}")),
            Err(KeyRingError::MissingCurrent(9))
        ));
        assert!(matches!(
            KeyRing::parse(1, &format!("1:{HEX}\n1:{HEX}")),
            Err(KeyRingError::Duplicate(1))
        ));
        assert!(matches!(
            KeyRing::parse(1, "nonsense"),
            Err(KeyRingError::Entry(_))
        ));
        assert!(matches!(
            KeyRing::parse(1, &format!("300:{HEX}")),
            Err(KeyRingError::KeyId(_))
        ));
    }

    #[test]
    fn debug_hides_keys() {
        let ring = KeyRing::parse(1, &format!("1:{HEX}")).unwrap();
        let shown = format!("{ring:?}");
        assert!(!shown.contains("0a0b"), "{shown}");
    }

    #[test]
    fn loads_from_file_and_env() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        std::fs::write(&path, format!("5:{HEX}\n")).unwrap();
        let ring = KeyRing::from_config(&EncryptionConfig {
            current_key_id: 5,
            keys_file: Some(path),
            keys_env: None,
        })
        .unwrap();
        assert_eq!(ring.current_id(), 5);
        assert!(matches!(
            KeyRing::from_config(&EncryptionConfig {
                current_key_id: 5,
                keys_file: None,
                keys_env: Some("DFGRAPH_TEST_SURELY_UNSET_VAR".into()),
            }),
            Err(KeyRingError::Env(_))
        ));
    }
}
