//! Encryption at rest for secrets the server must read back (webhook signing secrets; a
//! hash would not do, the server signs with them). XChaCha20-Poly1305 with a random nonce
//! per value, keyed by SHA-256 of the server's encryption key, with the owning row's id as
//! associated data so a ciphertext copied onto another row does not open.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use sha2::{Digest, Sha256};

use super::secrets::random_bytes;

/// First byte of every sealed value: the format, so the scheme can change later.
const VERSION: u8 = 1;
const NONCE_LEN: usize = 24;

#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error("a stored secret could not be decrypted (wrong AGENTCRM_ENCRYPTION_KEY, or damaged)")]
    Open,
}

#[derive(Clone)]
pub struct Vault {
    cipher: XChaCha20Poly1305,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Vault(..)")
    }
}

impl Vault {
    pub fn new(key: &[u8]) -> Vault {
        let digest: [u8; 32] = Sha256::digest(key).into();
        Vault {
            cipher: XChaCha20Poly1305::new(&digest.into()),
        }
    }

    /// `plaintext` sealed for the row identified by `context`.
    pub fn seal(&self, plaintext: &[u8], context: &[u8]) -> Vec<u8> {
        let nonce: [u8; NONCE_LEN] = random_bytes();
        let sealed = self
            .cipher
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: plaintext,
                    aad: context,
                },
            )
            .expect("XChaCha20-Poly1305 encrypts any message under 256 GiB");
        let mut out = Vec::with_capacity(1 + NONCE_LEN + sealed.len());
        out.push(VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }

    pub fn open(&self, sealed: &[u8], context: &[u8]) -> Result<Vec<u8>, VaultError> {
        let (&version, rest) = sealed.split_first().ok_or(VaultError::Open)?;
        if version != VERSION || rest.len() < NONCE_LEN {
            return Err(VaultError::Open);
        }
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| VaultError::Open)?;
        self.cipher
            .decrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: ciphertext,
                    aad: context,
                },
            )
            .map_err(|_| VaultError::Open)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_with_their_key_and_row() {
        let vault = Vault::new(b"an encryption key of at least thirty-two bytes");
        let sealed = vault.seal(b"whsec_secret", b"row-1");
        assert!(!sealed.windows(12).any(|w| w == b"whsec_secret"));
        assert_ne!(sealed, vault.seal(b"whsec_secret", b"row-1"), "fresh nonce");
        assert_eq!(vault.open(&sealed, b"row-1").unwrap(), b"whsec_secret");
        assert!(vault.open(&sealed, b"row-2").is_err());
        let other = Vault::new(b"another encryption key, also long enough!!");
        assert!(other.open(&sealed, b"row-1").is_err());
        let mut damaged = sealed.clone();
        *damaged.last_mut().unwrap() ^= 1;
        assert!(vault.open(&damaged, b"row-1").is_err());
        assert!(vault.open(&[], b"row-1").is_err());
    }
}
