//! API tokens: a random secret shown once, stored only as its SHA-256 (with an id, a
//! scope and a label). Creating, listing and revoking them are engine operations; checking
//! a bearer token against the stored hashes is the server's.

use sha2::{Digest as _, Sha256};

use crate::catalogue::TokenRecord;
use crate::format::Digest;
use crate::Error;

/// SHA-256 of a token secret, as stored.
pub fn token_hash(secret: &str) -> Digest {
    Digest(Sha256::digest(secret.as_bytes()).into())
}

/// Creates a token: returns the secret (shown once) and the record to store.
pub fn new_token(scope: &str, label: &str) -> Result<(String, TokenRecord), Error> {
    if scope != "push" && scope != "admin" {
        return Err(Error::Invalid(format!(
            "token scope {scope:?}: use push or admin"
        )));
    }
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|e| Error::Invalid(format!("no randomness for a token: {e}")))?;
    let secret = format!("vdna_{}", hex::encode(bytes));
    let id = hex::encode(&Sha256::digest(secret.as_bytes())[..6]);
    Ok((
        secret.clone(),
        TokenRecord {
            id,
            scope: scope.into(),
            hash: token_hash(&secret),
            label: label.into(),
            created: crate::now_secs(),
        },
    ))
}
