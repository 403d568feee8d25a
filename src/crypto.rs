//! The server key and what it protects: device IDs at rest and device cookies.
//!
//! * Device IDs are sealed deterministically per (user, device) so that equality
//!   lookups still work: the nonce is an HMAC of user and ID under a key of its
//!   own (a synthetic IV), the user is the associated data. Without the key a
//!   copy of the database reveals no ID, and the same device under two users
//!   gives unrelated ciphertexts, so a seized cookie cannot be matched to an
//!   account.
//! * Device cookies seal a random device ID under a random nonce.
//!
//! Both use AES-256-GCM with subkeys derived from the one 32-byte server key.

use std::path::Path;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
const COOKIE_AAD: &[u8] = b"usermetadb device cookie v1";
/// Random bytes in a minted device ID.
const DEVICE_ID_BYTES: usize = 16;
/// A cookie longer than this is not ours; it is not even decoded.
const MAX_COOKIE_LEN: usize = 512;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read key file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("key file {path} must hold 32 bytes (raw, hex or base64), found {found}")]
    Length { path: String, found: usize },
    #[error("cannot create key file {path}: {source}")]
    Create {
        path: String,
        source: std::io::Error,
    },
}

/// A new agent API key: 32 random bytes as 64 hex digits.
pub fn new_agent_key() -> String {
    let mut k = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut k);
    hex(&k)
}

/// What is stored of an agent API key: its SHA-256. The keys are random, so
/// a plain hash is enough to make a copy of the database useless to post
/// events with.
pub fn agent_key_hash(key: &str) -> [u8; 32] {
    use sha2::Digest;
    Sha256::digest(key.as_bytes()).into()
}

/// The server's device key. `Debug` never shows it.
#[derive(Clone)]
pub struct DeviceKey {
    id_cipher: Aes256Gcm,
    id_siv: HmacSha256,
    cookie_cipher: Aes256Gcm,
    agent_tags: HmacSha256,
}

impl std::fmt::Debug for DeviceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DeviceKey(<redacted>)")
    }
}

/// HMAC-SHA256 keyed with 32 bytes. HMAC zero-pads keys to the block size, so
/// padding here gives the same MAC without a fallible constructor.
fn hmac(key: &[u8; 32]) -> HmacSha256 {
    let mut block = [0u8; 64];
    block[..32].copy_from_slice(key);
    <HmacSha256 as KeyInit>::new(&block.into())
}

fn derive(master: &[u8; 32], label: &[u8]) -> [u8; 32] {
    let mut mac = hmac(master);
    mac.update(label);
    mac.finalize().into_bytes().into()
}

impl DeviceKey {
    pub fn from_bytes(master: &[u8; 32]) -> DeviceKey {
        let id_key = derive(master, b"usermetadb device-id encryption");
        let siv_key = derive(master, b"usermetadb device-id nonce");
        let cookie_key = derive(master, b"usermetadb device cookie");
        let agent_key = derive(master, b"usermetadb agent event tag");
        DeviceKey {
            id_cipher: Aes256Gcm::new(&id_key.into()),
            id_siv: hmac(&siv_key),
            cookie_cipher: Aes256Gcm::new(&cookie_key.into()),
            agent_tags: hmac(&agent_key),
        }
    }

    pub fn random() -> DeviceKey {
        let mut k = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut k);
        DeviceKey::from_bytes(&k)
    }

    /// Reads a key file holding 32 bytes raw, as 64 hex digits or as base64.
    pub fn load(path: &Path) -> Result<DeviceKey, KeyError> {
        let p = path.display().to_string();
        let data = std::fs::read(path).map_err(|source| KeyError::Read {
            path: p.clone(),
            source,
        })?;
        let bytes = decode_key(&data).ok_or(KeyError::Length {
            path: p,
            found: data.len(),
        })?;
        Ok(DeviceKey::from_bytes(&bytes))
    }

    /// Loads the key, or creates a random one (mode 0600) when the file does
    /// not exist. Returns whether it was created.
    pub fn load_or_create(path: &Path) -> Result<(DeviceKey, bool), KeyError> {
        if path.exists() {
            return Ok((DeviceKey::load(path)?, false));
        }
        let mut k = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut k);
        write_private(path, hex(&k).as_bytes()).map_err(|source| KeyError::Create {
            path: path.display().to_string(),
            source,
        })?;
        Ok((DeviceKey::from_bytes(&k), true))
    }

    /// A keyed hash of `parts` (each length-prefixed, so no two lists
    /// collide): recognises an agent's retried event, or names a session,
    /// without storing what it hashes.
    pub fn agent_tag(&self, parts: &[&[u8]]) -> [u8; 32] {
        let mut mac = self.agent_tags.clone();
        for p in parts {
            mac.update(&(p.len() as u64).to_be_bytes());
            mac.update(p);
        }
        mac.finalize().into_bytes().into()
    }

    /// Seals a device ID for storage under `user`. Deterministic.
    pub fn seal_id(&self, user: &str, id: &str) -> Vec<u8> {
        if id.is_empty() {
            return Vec::new();
        }
        let mut siv = self.id_siv.clone();
        siv.update(&(user.len() as u64).to_be_bytes());
        siv.update(user.as_bytes());
        siv.update(id.as_bytes());
        let tag = siv.finalize().into_bytes();
        let nonce = Nonce::from_slice(&tag[..NONCE_LEN]);
        let ct = self
            .id_cipher
            .encrypt(
                nonce,
                Payload {
                    msg: id.as_bytes(),
                    aad: user.as_bytes(),
                },
            )
            .unwrap_or_default();
        let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
        out.extend_from_slice(nonce);
        out.extend_from_slice(&ct);
        out
    }

    /// Opens a sealed device ID; `None` if it was not sealed under this key and user.
    pub fn open_id(&self, user: &str, sealed: &[u8]) -> Option<String> {
        if sealed.is_empty() {
            return Some(String::new());
        }
        if sealed.len() < NONCE_LEN + TAG_LEN {
            return None;
        }
        let (nonce, ct) = sealed.split_at(NONCE_LEN);
        let pt = self
            .id_cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ct,
                    aad: user.as_bytes(),
                },
            )
            .ok()?;
        String::from_utf8(pt).ok()
    }

    /// Mints a new random device ID and its cookie.
    pub fn mint_cookie(&self) -> (String, String) {
        let mut raw = [0u8; DEVICE_ID_BYTES];
        rand::thread_rng().fill_bytes(&mut raw);
        let id = URL_SAFE_NO_PAD.encode(raw);
        let cookie = self.seal_cookie(&id);
        (id, cookie)
    }

    /// Seals a device ID into a cookie value (random nonce, base64url).
    pub fn seal_cookie(&self, id: &str) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        rand::thread_rng().fill_bytes(&mut nonce);
        let ct = self
            .cookie_cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: id.as_bytes(),
                    aad: COOKIE_AAD,
                },
            )
            .unwrap_or_default();
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ct);
        URL_SAFE_NO_PAD.encode(out)
    }

    /// Opens a cookie; `None` for anything tampered, truncated, oversized or
    /// sealed under another key.
    pub fn open_cookie(&self, cookie: &str) -> Option<String> {
        if cookie.is_empty() || cookie.len() > MAX_COOKIE_LEN {
            return None;
        }
        let raw = URL_SAFE_NO_PAD.decode(cookie.trim_end_matches('=')).ok()?;
        if raw.len() < NONCE_LEN + TAG_LEN + 1 {
            return None;
        }
        let (nonce, ct) = raw.split_at(NONCE_LEN);
        let pt = self
            .cookie_cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ct,
                    aad: COOKIE_AAD,
                },
            )
            .ok()?;
        String::from_utf8(pt).ok().filter(|id| !id.is_empty())
    }
}

/// Bytes as lowercase hex.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// 32 bytes from exactly 64 hex digits.
pub fn unhex32(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 || !text.bytes().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, chunk) in text.as_bytes().chunks(2).enumerate() {
        out[i] = u8::from_str_radix(std::str::from_utf8(chunk).ok()?, 16).ok()?;
    }
    Some(out)
}

fn decode_key(data: &[u8]) -> Option<[u8; 32]> {
    if data.len() == 32 {
        return data.try_into().ok();
    }
    let text = std::str::from_utf8(data).ok()?.trim();
    if let Some(key) = unhex32(text) {
        return Some(key);
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(text)
        .or_else(|_| URL_SAFE_NO_PAD.decode(text.trim_end_matches('=')))
        .ok()?;
    decoded.try_into().ok()
}

/// Writes a new file readable by its owner only; fails if it exists.
pub fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(data)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_ids_are_deterministic_per_user_and_round_trip() {
        let k = DeviceKey::random();
        let a = k.seal_id("alice", "device-1");
        assert_eq!(a, k.seal_id("alice", "device-1"));
        assert_ne!(a, k.seal_id("bob", "device-1"));
        assert_ne!(a, k.seal_id("alice", "device-2"));
        assert!(!a.windows(8).any(|w| w == b"device-1"[..8].as_ref()));
        assert_eq!(k.open_id("alice", &a).as_deref(), Some("device-1"));
        // Another user's row or another key cannot open it.
        assert_eq!(k.open_id("bob", &a), None);
        assert_eq!(DeviceKey::random().open_id("alice", &a), None);
        let mut tampered = a.clone();
        tampered[20] ^= 1;
        assert_eq!(k.open_id("alice", &tampered), None);
    }

    #[test]
    fn cookies_round_trip_and_reject_tampering() {
        let k = DeviceKey::random();
        let (id, cookie) = k.mint_cookie();
        assert_eq!(k.open_cookie(&cookie).as_deref(), Some(id.as_str()));
        assert_ne!(cookie, k.seal_cookie(&id), "cookie nonces are random");
        assert_eq!(DeviceKey::random().open_cookie(&cookie), None);
        assert_eq!(k.open_cookie(&cookie[..cookie.len() - 2]), None);
        assert_eq!(k.open_cookie(""), None);
        assert_eq!(k.open_cookie("!!!not base64!!!"), None);
        assert_eq!(k.open_cookie(&"A".repeat(10_000)), None);
        let mut bytes = cookie.clone().into_bytes();
        bytes[5] = if bytes[5] == b'A' { b'B' } else { b'A' };
        assert_eq!(k.open_cookie(std::str::from_utf8(&bytes).unwrap()), None);
    }

    #[test]
    fn key_files_are_created_private_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("device.key");
        let (k1, created) = DeviceKey::load_or_create(&path).unwrap();
        assert!(created);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let (k2, created) = DeviceKey::load_or_create(&path).unwrap();
        assert!(!created);
        let sealed = k1.seal_id("u", "d");
        assert_eq!(k2.open_id("u", &sealed).as_deref(), Some("d"));
        std::fs::write(dir.path().join("short.key"), b"abc").unwrap();
        assert!(DeviceKey::load(&dir.path().join("short.key")).is_err());
    }
}
