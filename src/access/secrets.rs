//! Credentials: generated here, shown once, stored only as hashes.

use std::path::Path;

use argon2::{Argon2, PasswordHasher, PasswordVerifier};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

/// Prefix of every API key, so secret scanners and people recognise one.
pub const API_KEY_PREFIX: &str = "acrm_";
/// How much of a key is kept in clear to tell keys apart.
const SHOWN_PREFIX_LEN: usize = 12;

pub(crate) fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    // The OS generator failing is not something a caller can cause or fix.
    getrandom::fill(&mut bytes).expect("the operating system's random generator is available");
    bytes
}

/// A new API key and what to store of it: (key, shown prefix, SHA-256 of the key).
pub fn new_api_key() -> (String, String, Vec<u8>) {
    let key = format!(
        "{API_KEY_PREFIX}{}",
        URL_SAFE_NO_PAD.encode(random_bytes::<32>())
    );
    let prefix = key[..SHOWN_PREFIX_LEN].to_owned();
    let hash = digest(&key);
    (key, prefix, hash)
}

/// API keys and refresh tokens carry 256 random bits: a fast digest is enough to look
/// them up without storing them (no dictionary to attack).
pub fn digest(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

pub fn new_client_id() -> String {
    format!("agt_{}", hex::encode(random_bytes::<10>()))
}

/// A new client secret and its argon2id hash (PHC string).
pub fn new_client_secret() -> (String, String) {
    let secret = format!("acs_{}", URL_SAFE_NO_PAD.encode(random_bytes::<32>()));
    let hash = Argon2::default()
        .hash_password(secret.as_bytes())
        .expect("argon2 with default parameters hashes any input")
        .to_string();
    (secret, hash)
}

pub fn verify_client_secret(secret: &str, hash: &str) -> bool {
    Argon2::default()
        .verify_password(secret.as_bytes(), hash)
        .is_ok()
}

/// Shorter server keys are refused: HS256 and the vault are only as strong as their key.
const MIN_SERVER_KEY_LEN: usize = 32;

/// A server-wide key (token signing, secret encryption).
#[derive(Debug, Clone, Copy)]
pub struct ServerKey {
    /// The environment variable that sets it (every process sharing a database needs the same).
    pub env: &'static str,
    /// On the embedded default, the file in the data directory it is generated into.
    pub file: &'static str,
}

pub const JWT_KEY: ServerKey = ServerKey {
    env: "AGENTCRM_JWT_SECRET",
    file: "jwt-secret",
};
pub const ENCRYPTION_KEY: ServerKey = ServerKey {
    env: "AGENTCRM_ENCRYPTION_KEY",
    file: "encryption-key",
};

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{0} must be at least {MIN_SERVER_KEY_LEN} characters")]
    TooShort(&'static str),
    #[error("could not read or create the server key {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

impl ServerKey {
    /// The key from its environment variable, or on the embedded default (`data_dir`) a key
    /// generated once and kept in the data directory (mode 0600). `None`: not configured.
    pub fn load(self, data_dir: Option<&Path>) -> Result<Option<Vec<u8>>, KeyError> {
        let configured = std::env::var(self.env).ok();
        if let Some(secret) = configured.filter(|s| !s.is_empty()) {
            if secret.len() < MIN_SERVER_KEY_LEN {
                return Err(KeyError::TooShort(self.env));
            }
            return Ok(Some(secret.into_bytes()));
        }
        let Some(dir) = data_dir else { return Ok(None) };
        let path = dir.join(self.file);
        let io = |source| KeyError::Io {
            path: path.display().to_string(),
            source,
        };
        match std::fs::read_to_string(&path) {
            Ok(text) if text.trim().len() >= MIN_SERVER_KEY_LEN => {
                return Ok(Some(text.trim().as_bytes().to_vec()));
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let (secret, _, _) = new_api_key();
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .map_err(io)?;
        file.write_all(secret.as_bytes()).map_err(io)?;
        Ok(Some(secret.into_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_random_and_verifiable() {
        let (a, prefix, hash) = new_api_key();
        let (b, _, _) = new_api_key();
        assert_ne!(a, b);
        assert!(a.starts_with(API_KEY_PREFIX) && a.starts_with(&prefix));
        assert_eq!(hash, digest(&a));

        let (secret, hash) = new_client_secret();
        assert!(verify_client_secret(&secret, &hash));
        assert!(!verify_client_secret("acs_wrong", &hash));
        assert!(!hash.contains(&secret));
    }
}
