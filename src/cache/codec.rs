//! The byte format of one cached value in Redis: a small versioned header
//! with the entry's deadlines, then the protobuf payload, optionally lz4
//! compressed and optionally sealed with XChaCha20-Poly1305.
//!
//! ```text
//! offset size field
//!      0    1 magic 0xDF
//!      1    1 format version (1)
//!      2    1 flags: 1 compressed, 2 encrypted, 4 tombstone (not found)
//!      3    1 encryption key id (0 when not encrypted)
//!      4    8 fetched_at   ms since epoch, big endian
//!     12    8 fresh_until  ms
//!     20    8 stale_until  ms
//!     28    4 body length  (bytes after the header; catches truncation)
//!     32    . body: [24-byte nonce][ciphertext+tag] when encrypted,
//!               else the (compressed) payload
//! ```
//!
//! A compressed payload is the uncompressed length (u32, little endian)
//! then an lz4 block. Compression happens before encryption. The AEAD's
//! associated data is the header followed by the Redis key, so a value can
//! neither be moved to another key nor have its deadlines altered.
//!
//! Every decoding problem is a [`CodecError`]; the cache treats it as a miss.

use std::borrow::Cow;
use std::sync::Arc;

use chacha20poly1305::XNonce;
use chacha20poly1305::aead::{Aead, Payload};

use super::keyring::KeyRing;
use crate::clock::Millis;

pub const MAGIC: u8 = 0xDF;
pub const FORMAT_VERSION: u8 = 1;
pub const HEADER_LEN: usize = 32;
pub const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
const FLAG_COMPRESSED: u8 = 1;
const FLAG_ENCRYPTED: u8 = 2;
const FLAG_TOMBSTONE: u8 = 4;
const KNOWN_FLAGS: u8 = FLAG_COMPRESSED | FLAG_ENCRYPTED | FLAG_TOMBSTONE;
/// No cached value decompresses to more than this (a corrupt length prefix
/// must not make us allocate gigabytes).
pub const MAX_DECOMPRESSED: usize = 64 << 20;

/// An entry's deadlines and kind, as stored before its payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub fetched_at: Millis,
    pub fresh_until: Millis,
    pub stale_until: Millis,
    /// The origin said the entry does not exist; no payload.
    pub tombstone: bool,
}

/// Why bytes could not be turned back into a value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("value too short ({0} bytes)")]
    Truncated(usize),
    #[error("body length {stored} in header, {actual} present")]
    Length { stored: usize, actual: usize },
    #[error("bad magic byte {0:#04x}")]
    BadMagic(u8),
    #[error("unsupported format version {0}")]
    Version(u8),
    #[error("unknown flags {0:#04x}")]
    Flags(u8),
    #[error("value is encrypted but no encryption keys are configured")]
    NoKeys,
    #[error("value is not encrypted but encryption is configured")]
    NotEncrypted,
    #[error("value encrypted with unknown key id {0}")]
    UnknownKeyId(u8),
    #[error("decryption failed (wrong key or tampered value)")]
    Decrypt,
    #[error("encryption failed")]
    Encrypt,
    #[error("value too large to store ({0} bytes)")]
    TooLarge(usize),
    #[error("lz4 decompression failed: {0}")]
    Decompress(String),
    #[error("protobuf decoding failed: {0}")]
    Protobuf(String),
}

/// Encodes and decodes cached values; cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Codec {
    compress_min_bytes: usize,
    keyring: Option<Arc<KeyRing>>,
}

impl Codec {
    /// Payloads of at least `compress_min_bytes` are compressed (when that
    /// helps); with a key ring every value is encrypted with its current key.
    pub fn new(compress_min_bytes: usize, keyring: Option<Arc<KeyRing>>) -> Self {
        Self {
            compress_min_bytes,
            keyring,
        }
    }

    pub fn encrypts(&self) -> bool {
        self.keyring.is_some()
    }

    /// Encodes a protobuf payload (empty for a tombstone) under `redis_key`.
    pub fn encode(
        &self,
        redis_key: &str,
        header: &Header,
        payload: &[u8],
    ) -> Result<Vec<u8>, CodecError> {
        let mut flags = 0u8;
        if header.tombstone {
            flags |= FLAG_TOMBSTONE;
        }
        let compressed;
        let body: &[u8] = if !payload.is_empty() && payload.len() >= self.compress_min_bytes {
            let block = lz4_flex::block::compress(payload);
            if block.len() + 4 < payload.len() {
                let len = u32::try_from(payload.len())
                    .map_err(|_| CodecError::TooLarge(payload.len()))?;
                let mut out = Vec::with_capacity(block.len() + 4);
                out.extend_from_slice(&len.to_le_bytes());
                out.extend_from_slice(&block);
                compressed = out;
                flags |= FLAG_COMPRESSED;
                &compressed
            } else {
                payload
            }
        } else {
            payload
        };

        let Some(ring) = &self.keyring else {
            let head = header_bytes(header, flags, 0, body.len())?;
            let mut out = Vec::with_capacity(HEADER_LEN + body.len());
            out.extend_from_slice(&head);
            out.extend_from_slice(body);
            return Ok(out);
        };
        let cipher = ring.current().ok_or(CodecError::Encrypt)?;
        flags |= FLAG_ENCRYPTED;
        let body_len = NONCE_LEN + body.len() + TAG_LEN;
        let head = header_bytes(header, flags, ring.current_id(), body_len)?;
        let nonce: [u8; NONCE_LEN] = rand::random();
        let aad = associated_data(&head, redis_key);
        let sealed = cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: body,
                    aad: &aad,
                },
            )
            .map_err(|_| CodecError::Encrypt)?;
        let mut out = Vec::with_capacity(HEADER_LEN + NONCE_LEN + sealed.len());
        out.extend_from_slice(&head);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// Decodes bytes stored under `redis_key` into the header and the
    /// protobuf payload (empty for a tombstone).
    pub fn decode<'a>(
        &self,
        redis_key: &str,
        bytes: &'a [u8],
    ) -> Result<(Header, Cow<'a, [u8]>), CodecError> {
        if bytes.len() < HEADER_LEN {
            return Err(CodecError::Truncated(bytes.len()));
        }
        let (head, body) = bytes.split_at(HEADER_LEN);
        if head[0] != MAGIC {
            return Err(CodecError::BadMagic(head[0]));
        }
        if head[1] != FORMAT_VERSION {
            return Err(CodecError::Version(head[1]));
        }
        let flags = head[2];
        if flags & !KNOWN_FLAGS != 0 {
            return Err(CodecError::Flags(flags));
        }
        let key_id = head[3];
        let header = Header {
            fetched_at: read_u64(head, 4),
            fresh_until: read_u64(head, 12),
            stale_until: read_u64(head, 20),
            tombstone: flags & FLAG_TOMBSTONE != 0,
        };
        let stored = read_u32(head, 28) as usize;
        if stored != body.len() {
            return Err(CodecError::Length {
                stored,
                actual: body.len(),
            });
        }

        let plain: Cow<'a, [u8]> = if flags & FLAG_ENCRYPTED != 0 {
            let ring = self.keyring.as_ref().ok_or(CodecError::NoKeys)?;
            let cipher = ring.get(key_id).ok_or(CodecError::UnknownKeyId(key_id))?;
            if body.len() < NONCE_LEN + TAG_LEN {
                return Err(CodecError::Truncated(bytes.len()));
            }
            let (nonce, sealed) = body.split_at(NONCE_LEN);
            let aad = associated_data(head, redis_key);
            let opened = cipher
                .decrypt(
                    XNonce::from_slice(nonce),
                    Payload {
                        msg: sealed,
                        aad: &aad,
                    },
                )
                .map_err(|_| CodecError::Decrypt)?;
            Cow::Owned(opened)
        } else if self.keyring.is_some() {
            return Err(CodecError::NotEncrypted);
        } else {
            Cow::Borrowed(body)
        };

        if flags & FLAG_COMPRESSED == 0 {
            return Ok((header, plain));
        }
        if plain.len() < 4 {
            return Err(CodecError::Truncated(bytes.len()));
        }
        let (len, block) = plain.split_at(4);
        let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
        // lz4 cannot expand more than ~255 times.
        if len > MAX_DECOMPRESSED || len > block.len().saturating_mul(255) + 16 {
            return Err(CodecError::Decompress(format!(
                "implausible length {len} for {} compressed bytes",
                block.len()
            )));
        }
        let out = lz4_flex::block::decompress(block, len)
            .map_err(|e| CodecError::Decompress(e.to_string()))?;
        Ok((header, Cow::Owned(out)))
    }

    /// Encodes a value (`None`: a tombstone).
    pub fn encode_value<V: prost::Message>(
        &self,
        redis_key: &str,
        header: &Header,
        value: Option<&V>,
    ) -> Result<Vec<u8>, CodecError> {
        let payload = value.map(|v| v.encode_to_vec()).unwrap_or_default();
        let header = Header {
            tombstone: value.is_none(),
            ..*header
        };
        self.encode(redis_key, &header, &payload)
    }

    /// Decodes a value (`None`: a tombstone).
    pub fn decode_value<V: prost::Message + Default>(
        &self,
        redis_key: &str,
        bytes: &[u8],
    ) -> Result<(Header, Option<V>), CodecError> {
        let (header, payload) = self.decode(redis_key, bytes)?;
        if header.tombstone {
            return Ok((header, None));
        }
        let value = V::decode(payload.as_ref()).map_err(|e| CodecError::Protobuf(e.to_string()))?;
        Ok((header, Some(value)))
    }
}

fn header_bytes(
    header: &Header,
    flags: u8,
    key_id: u8,
    body_len: usize,
) -> Result<[u8; HEADER_LEN], CodecError> {
    let body_len = u32::try_from(body_len).map_err(|_| CodecError::TooLarge(body_len))?;
    let mut out = [0u8; HEADER_LEN];
    out[0] = MAGIC;
    out[1] = FORMAT_VERSION;
    out[2] = flags;
    out[3] = key_id;
    out[4..12].copy_from_slice(&header.fetched_at.to_be_bytes());
    out[12..20].copy_from_slice(&header.fresh_until.to_be_bytes());
    out[20..28].copy_from_slice(&header.stale_until.to_be_bytes());
    out[28..32].copy_from_slice(&body_len.to_be_bytes());
    Ok(out)
}

fn associated_data(head: &[u8], redis_key: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(head.len() + redis_key.len());
    aad.extend_from_slice(head);
    aad.extend_from_slice(redis_key.as_bytes());
    aad
}

fn read_u64(bytes: &[u8], at: usize) -> u64 {
    let mut buf = [0u8; 8];
    buf.copy_from_slice(&bytes[at..at + 8]);
    u64::from_be_bytes(buf)
}

fn read_u32(bytes: &[u8], at: usize) -> u32 {
    let mut buf = [0u8; 4];
    buf.copy_from_slice(&bytes[at..at + 4]);
    u32::from_be_bytes(buf)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[derive(Clone, PartialEq, prost::Message)]
    struct Msg {
        #[prost(string, tag = "1")]
        text: String,
        #[prost(uint64, tag = "2")]
        n: u64,
    }

    const KEY: &str = "dfgraph:v1:task:7:abc";

    fn header() -> Header {
        Header {
            fetched_at: 1_700_000_000_000,
            fresh_until: 1_700_000_030_000,
            stale_until: 1_700_000_330_000,
            tombstone: false,
        }
    }

    fn ring(current: u8, ids: &[u8]) -> Arc<KeyRing> {
        let keys: HashMap<u8, [u8; 32]> = ids.iter().map(|id| (*id, [*id; 32])).collect();
        Arc::new(KeyRing::new(current, &keys).unwrap())
    }

    fn small() -> Msg {
        Msg {
            text: "hello".into(),
            n: 42,
        }
    }

    fn big() -> Msg {
        Msg {
            text: "dragonfly ".repeat(500),
            n: 7,
        }
    }

    #[test]
    fn roundtrip_plain() {
        let codec = Codec::new(1024, None);
        let bytes = codec.encode_value(KEY, &header(), Some(&small())).unwrap();
        assert_eq!(bytes[2] & FLAG_COMPRESSED, 0);
        let (h, v) = codec.decode_value::<Msg>(KEY, &bytes).unwrap();
        assert_eq!(h, header());
        assert_eq!(v, Some(small()));
    }

    #[test]
    fn roundtrip_compressed() {
        let codec = Codec::new(1024, None);
        let bytes = codec.encode_value(KEY, &header(), Some(&big())).unwrap();
        assert_ne!(bytes[2] & FLAG_COMPRESSED, 0);
        assert!(bytes.len() < prost::Message::encoded_len(&big()));
        let (_, v) = codec.decode_value::<Msg>(KEY, &bytes).unwrap();
        assert_eq!(v, Some(big()));
    }

    #[test]
    fn roundtrip_encrypted_and_compressed() {
        let codec = Codec::new(1024, Some(ring(1, &[1])));
        for msg in [small(), big()] {
            let bytes = codec.encode_value(KEY, &header(), Some(&msg)).unwrap();
            assert_ne!(bytes[2] & FLAG_ENCRYPTED, 0);
            assert_eq!(bytes[3], 1);
            let (h, v) = codec.decode_value::<Msg>(KEY, &bytes).unwrap();
            assert_eq!(h, header());
            assert_eq!(v, Some(msg));
        }
    }

    #[test]
    fn tombstones() {
        for codec in [Codec::new(0, None), Codec::new(0, Some(ring(3, &[3])))] {
            let bytes = codec.encode_value::<Msg>(KEY, &header(), None).unwrap();
            let (h, v) = codec.decode_value::<Msg>(KEY, &bytes).unwrap();
            assert!(h.tombstone);
            assert_eq!(v, None);
        }
    }

    #[test]
    fn key_rotation() {
        let old = Codec::new(1024, Some(ring(1, &[1])));
        let rotated = Codec::new(1024, Some(ring(2, &[1, 2])));
        let retired = Codec::new(1024, Some(ring(2, &[2])));
        let by_old = old.encode_value(KEY, &header(), Some(&small())).unwrap();
        let by_new = rotated
            .encode_value(KEY, &header(), Some(&small()))
            .unwrap();
        assert_eq!(by_new[3], 2);
        assert_eq!(
            rotated.decode_value::<Msg>(KEY, &by_old).unwrap().1,
            Some(small())
        );
        assert_eq!(
            retired.decode_value::<Msg>(KEY, &by_new).unwrap().1,
            Some(small())
        );
        assert_eq!(
            retired.decode_value::<Msg>(KEY, &by_old).unwrap_err(),
            CodecError::UnknownKeyId(1)
        );
        assert_eq!(
            old.decode_value::<Msg>(KEY, &by_new).unwrap_err(),
            CodecError::UnknownKeyId(2)
        );
    }

    #[test]
    fn wrong_key_same_id_fails_to_decrypt() {
        let a = Codec::new(1024, Some(ring(1, &[1])));
        let keys: HashMap<u8, [u8; 32]> = [(1u8, [9u8; 32])].into();
        let b = Codec::new(1024, Some(Arc::new(KeyRing::new(1, &keys).unwrap())));
        let bytes = a.encode_value(KEY, &header(), Some(&small())).unwrap();
        assert_eq!(
            b.decode_value::<Msg>(KEY, &bytes).unwrap_err(),
            CodecError::Decrypt
        );
    }

    #[test]
    fn aad_binds_key_and_header() {
        let codec = Codec::new(1024, Some(ring(1, &[1])));
        let bytes = codec.encode_value(KEY, &header(), Some(&small())).unwrap();
        assert_eq!(
            codec
                .decode_value::<Msg>("dfgraph:v1:task:7:other", &bytes)
                .unwrap_err(),
            CodecError::Decrypt
        );
        let mut tampered = bytes.clone();
        tampered[19] ^= 1; // fresh_until
        assert_eq!(
            codec.decode_value::<Msg>(KEY, &tampered).unwrap_err(),
            CodecError::Decrypt
        );
    }

    #[test]
    fn bad_bytes_are_errors() {
        let codec = Codec::new(1024, None);
        let bytes = codec.encode_value(KEY, &header(), Some(&big())).unwrap();
        for cut in [
            0,
            5,
            HEADER_LEN - 1,
            HEADER_LEN,
            HEADER_LEN + 3,
            bytes.len() - 1,
        ] {
            assert!(
                codec.decode_value::<Msg>(KEY, &bytes[..cut]).is_err(),
                "cut at {cut}"
            );
        }
        assert!(matches!(
            codec.decode_value::<Msg>(KEY, b"not a cached value at all, no no no"),
            Err(CodecError::BadMagic(b'n'))
        ));
        let mut version = bytes.clone();
        version[1] = 9;
        assert_eq!(
            codec.decode_value::<Msg>(KEY, &version).unwrap_err(),
            CodecError::Version(9)
        );
        let mut flags = bytes.clone();
        flags[2] |= 0x80;
        assert!(matches!(
            codec.decode_value::<Msg>(KEY, &flags),
            Err(CodecError::Flags(_))
        ));
        // A bomb: a compressed body claiming a huge length.
        let mut bomb = bytes.clone();
        bomb[HEADER_LEN..HEADER_LEN + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            codec.decode_value::<Msg>(KEY, &bomb),
            Err(CodecError::Decompress(_))
        ));
        // Garbage protobuf behind a valid header.
        let junk = codec.encode(KEY, &header(), &[0xff, 0xff, 0xff]).unwrap();
        assert!(matches!(
            codec.decode_value::<Msg>(KEY, &junk),
            Err(CodecError::Protobuf(_))
        ));
    }

    #[test]
    fn encryption_settings_must_match() {
        let plain = Codec::new(1024, None);
        let sealed = Codec::new(1024, Some(ring(1, &[1])));
        let p = plain.encode_value(KEY, &header(), Some(&small())).unwrap();
        let s = sealed.encode_value(KEY, &header(), Some(&small())).unwrap();
        assert_eq!(
            sealed.decode_value::<Msg>(KEY, &p).unwrap_err(),
            CodecError::NotEncrypted
        );
        assert_eq!(
            plain.decode_value::<Msg>(KEY, &s).unwrap_err(),
            CodecError::NoKeys
        );
    }
}
