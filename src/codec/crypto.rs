//! Encryption of stored objects (envelope encryption, pure code without I/O).
//!
//! A repository has one random 256-bit *data key*. Every object is compressed, then each
//! compressed frame is sealed with XChaCha20-Poly1305 under the data key, with a fresh random
//! 192-bit nonce and, as associated data, the object's key in the repository, the frame's
//! index and its kind: a frame moved to another object, another position, or cut off fails
//! to authenticate. An *end* frame, sealed the same way, carries the original length, CRC-32
//! and frame count, so that dropping or appending whole frames is caught too.
//!
//! The data key is stored only *wrapped*: sealed with XChaCha20-Poly1305 under a
//! key-encryption key (KEK) derived from a passphrase (Argon2id), from a key file (HKDF-SHA256)
//! or held by AWS KMS. Several wraps of the same data key may exist; adding or removing one
//! rewrites no data object.
//!
//! Why XChaCha20-Poly1305 (docs/architecture.md): random 192-bit nonces cannot collide in
//! practice, however many hosts write with the same key, where AES-GCM's 96-bit random nonces
//! need a per-key message budget; and it is fast without AES instructions too.

use std::fmt;
use std::sync::Arc;

use chacha20poly1305::aead::{AeadInOut, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

pub const KEY_LEN: usize = 32;
pub const NONCE_LEN: usize = 24;
pub const TAG_LEN: usize = 16;

/// Random bytes from the operating system.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).expect("the operating system's random source works");
    bytes
}

/// A short, stable name for a key that reveals nothing of it.
fn fingerprint_of(domain: &[u8], key: &[u8]) -> String {
    let digest = Sha256::new()
        .chain_update(domain)
        .chain_update(key)
        .finalize();
    hex::encode(&digest[..8])
}

/// Seals `plaintext` in place (the tag is appended) under `cipher` with a fresh nonce.
fn seal(cipher: &XChaCha20Poly1305, aad: &[u8], buffer: &mut Vec<u8>) -> [u8; NONCE_LEN] {
    let nonce = random_bytes::<NONCE_LEN>();
    cipher
        .encrypt_in_place(&XNonce::from(nonce), aad, buffer)
        .expect("a buffer in memory can grow by a tag");
    nonce
}

/// Opens what [`seal`] sealed, in place; false if it does not authenticate.
fn open(
    cipher: &XChaCha20Poly1305,
    nonce: &[u8; NONCE_LEN],
    aad: &[u8],
    buffer: &mut Vec<u8>,
) -> bool {
    cipher
        .decrypt_in_place(&XNonce::from(*nonce), aad, buffer)
        .is_ok()
}

/// The repository's data key, unwrapped. Cheap to clone; the key bytes are wiped on drop.
#[derive(Clone)]
pub struct DataKey {
    cipher: Arc<XChaCha20Poly1305>,
    bytes: Arc<Zeroizing<[u8; KEY_LEN]>>,
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DataKey({})", self.fingerprint())
    }
}

impl DataKey {
    pub fn generate() -> Self {
        Self::from_bytes(Zeroizing::new(random_bytes::<KEY_LEN>()))
    }

    fn from_bytes(bytes: Zeroizing<[u8; KEY_LEN]>) -> Self {
        DataKey {
            cipher: Arc::new(XChaCha20Poly1305::new(&(*bytes).into())),
            bytes: Arc::new(bytes),
        }
    }

    /// Names the key in keys.json and messages.
    pub fn fingerprint(&self) -> String {
        fingerprint_of(b"pitr data key\0", &self.bytes[..])
    }

    /// The cipher for the object stored under `object_key`.
    pub fn for_object(&self, object_key: &str) -> ObjectCipher {
        ObjectCipher {
            cipher: Arc::clone(&self.cipher),
            object_key: object_key.as_bytes().to_vec(),
        }
    }

    /// The data key sealed under `kek` (a wrap's `nonce` and `wrapped` bytes).
    pub fn wrap(&self, kek: &Kek) -> ([u8; NONCE_LEN], Vec<u8>) {
        let mut buffer = self.bytes[..].to_vec();
        let nonce = seal(&kek.cipher, WRAP_AAD, &mut buffer);
        (nonce, buffer)
    }

    /// The data key `wrapped` under `kek`; `None` when `kek` is not the key it was wrapped
    /// under (or the wrap was changed).
    pub fn unwrap(kek: &Kek, nonce: &[u8; NONCE_LEN], wrapped: &[u8]) -> Option<Self> {
        let mut buffer = Zeroizing::new(wrapped.to_vec());
        if !open(&kek.cipher, nonce, WRAP_AAD, &mut buffer) || buffer.len() != KEY_LEN {
            return None;
        }
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        bytes.copy_from_slice(&buffer);
        Some(Self::from_bytes(bytes))
    }

    /// The raw key, for a key management service to wrap; never printed or stored in clear.
    pub fn expose(&self) -> &[u8] {
        &self.bytes[..]
    }

    /// The data key a key management service unwrapped.
    pub fn from_exposed(bytes: &[u8]) -> Option<Self> {
        let bytes: [u8; KEY_LEN] = bytes.try_into().ok()?;
        Some(Self::from_bytes(Zeroizing::new(bytes)))
    }
}

const WRAP_AAD: &[u8] = b"pitr wrapped data key v1";

/// A key-encryption key: what unlocks a wrap of the data key.
pub struct Kek {
    cipher: XChaCha20Poly1305,
    fingerprint: String,
}

/// How a passphrase becomes a key-encryption key: Argon2id with these costs, recorded with
/// each wrap so that they can change for new wraps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Argon2Params {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

impl Argon2Params {
    /// OWASP's recommended minimum for Argon2id (19 MiB, 2 passes): a guess costs an attacker
    /// that much, and every pitr process that unlocks the repository pays it once.
    pub const DEFAULT: Argon2Params = Argon2Params {
        memory_kib: 19 * 1024,
        iterations: 2,
        parallelism: 1,
    };
}

impl Kek {
    fn new(key: &[u8; KEY_LEN]) -> Self {
        Kek {
            cipher: XChaCha20Poly1305::new(&(*key).into()),
            fingerprint: fingerprint_of(b"pitr key-encryption key\0", key),
        }
    }

    /// From a passphrase, with the wrap's salt and costs.
    pub fn from_passphrase(
        passphrase: &[u8],
        salt: &[u8],
        params: Argon2Params,
    ) -> Result<Self, String> {
        let argon_params = argon2::Params::new(
            params.memory_kib,
            params.iterations,
            params.parallelism,
            Some(KEY_LEN),
        )
        .map_err(|e| format!("Argon2id parameters {params:?} are invalid: {e}"))?;
        let argon = argon2::Argon2::new(
            argon2::Algorithm::Argon2id,
            argon2::Version::V0x13,
            argon_params,
        );
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        argon
            .hash_password_into(passphrase, salt, &mut key[..])
            .map_err(|e| format!("Argon2id failed: {e}"))?;
        Ok(Kek::new(&key))
    }

    /// From the content of a key file (random bytes, 32 or more), with the wrap's salt.
    pub fn from_key_file(content: &[u8], salt: &[u8]) -> Self {
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        hkdf::Hkdf::<Sha256>::new(Some(salt), content)
            .expand(b"pitr key file v1", &mut key[..])
            .expect("32 bytes is a valid HKDF-SHA256 length");
        Kek::new(&key)
    }

    /// Names this key in keys.json, `pitr key list` and messages; reveals nothing of it.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }
}

/// Seals and opens the frames of one object: the data key bound to the object's key.
#[derive(Clone)]
pub struct ObjectCipher {
    cipher: Arc<XChaCha20Poly1305>,
    object_key: Vec<u8>,
}

impl fmt::Debug for ObjectCipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ObjectCipher({})",
            String::from_utf8_lossy(&self.object_key)
        )
    }
}

/// What a sealed frame holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    /// A compressed chunk of the object.
    Data = 0,
    /// The object's end: its length, CRC-32 and frame count.
    End = 1,
}

impl FrameKind {
    pub fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            0 => Some(FrameKind::Data),
            1 => Some(FrameKind::End),
            _ => None,
        }
    }
}

impl ObjectCipher {
    fn aad(&self, index: u64, kind: FrameKind) -> Vec<u8> {
        let mut aad = Vec::with_capacity(self.object_key.len() + 32);
        aad.extend_from_slice(b"pitr object frame v1\0");
        aad.extend_from_slice(&self.object_key);
        aad.push(0);
        aad.extend_from_slice(&index.to_le_bytes());
        aad.push(kind as u8);
        aad
    }

    /// Seals `buffer` in place (appending the tag); returns the nonce.
    pub fn seal(&self, index: u64, kind: FrameKind, buffer: &mut Vec<u8>) -> [u8; NONCE_LEN] {
        seal(&self.cipher, &self.aad(index, kind), buffer)
    }

    /// Opens a sealed frame in place; false if it does not authenticate as frame `index` of
    /// kind `kind` of this object.
    pub fn open(
        &self,
        index: u64,
        kind: FrameKind,
        nonce: &[u8; NONCE_LEN],
        buffer: &mut Vec<u8>,
    ) -> bool {
        open(&self.cipher, nonce, &self.aad(index, kind), buffer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_opens_only_as_itself() {
        let key = DataKey::generate();
        let cipher = key.for_object("wal/a.lz4");
        let mut buffer = b"compressed frame".to_vec();
        let nonce = cipher.seal(3, FrameKind::Data, &mut buffer);
        assert_eq!(buffer.len(), 16 + TAG_LEN);
        let sealed = buffer.clone();
        assert!(cipher.open(3, FrameKind::Data, &nonce, &mut buffer));
        assert_eq!(buffer, b"compressed frame");

        let attempts: [(&ObjectCipher, u64, FrameKind); 3] = [
            (&key.for_object("wal/b.lz4"), 3, FrameKind::Data),
            (&cipher, 4, FrameKind::Data),
            (&cipher, 3, FrameKind::End),
        ];
        for (other, index, kind) in attempts {
            let mut copy = sealed.clone();
            assert!(!other.open(index, kind, &nonce, &mut copy));
        }
        let mut flipped = sealed.clone();
        flipped[0] ^= 1;
        assert!(!cipher.open(3, FrameKind::Data, &nonce, &mut flipped));
        let other_key = DataKey::generate().for_object("wal/a.lz4");
        assert!(!other_key.open(3, FrameKind::Data, &nonce, &mut sealed.clone()));
    }

    #[test]
    fn a_wrap_opens_with_its_kek_only() {
        let key = DataKey::generate();
        let salt = random_bytes::<16>();
        let cheap = Argon2Params {
            memory_kib: 64,
            iterations: 1,
            parallelism: 1,
        };
        let kek = Kek::from_passphrase(b"correct horse", &salt, cheap).unwrap();
        let (nonce, wrapped) = key.wrap(&kek);
        let unwrapped = DataKey::unwrap(&kek, &nonce, &wrapped).unwrap();
        assert_eq!(unwrapped.fingerprint(), key.fingerprint());
        assert_eq!(unwrapped.expose(), key.expose());

        let wrong = Kek::from_passphrase(b"correct horsf", &salt, cheap).unwrap();
        assert!(DataKey::unwrap(&wrong, &nonce, &wrapped).is_none());
        assert_ne!(wrong.fingerprint(), kek.fingerprint());
        let file_kek = Kek::from_key_file(&[7u8; 32], &salt);
        assert!(DataKey::unwrap(&file_kek, &nonce, &wrapped).is_none());
        let (nonce, wrapped) = key.wrap(&file_kek);
        assert!(
            DataKey::unwrap(&Kek::from_key_file(&[7u8; 32], &salt), &nonce, &wrapped).is_some()
        );
        assert!(
            DataKey::unwrap(&Kek::from_key_file(&[8u8; 32], &salt), &nonce, &wrapped).is_none()
        );
        // The fingerprint names the key without showing it.
        assert!(!key.fingerprint().contains(&hex::encode(&key.expose()[..4])));
    }
}
