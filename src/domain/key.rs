//! API keys: scopes, what each scope may call, and the key format.
//!
//! A key is `pulse_` followed by 32 random bytes in unpadded base64url
//! (43 characters). Only its SHA-256 is ever stored or kept in memory; the
//! key itself exists once, on the stdout of `pulse keys create`.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// What every key starts with, so a leaked key is recognisable in a scan.
pub const KEY_PREFIX: &str = "pulse_";

/// The SHA-256 of a key string: what the database and the servers hold.
pub type KeyHash = [u8; 32];

named_enum! {
    /// What a key may call. The names are stored in `api_keys.scope`.
    pub enum Scope {
        /// `IngestService` only.
        Ingest = "ingest",
        /// `QueryService` and the dashboard's JSON API.
        Query = "query",
        /// Everything: alert rules, `WatchAlerts`, and what the others may call.
        Admin = "admin",
    }
}

impl Scope {
    /// Parses a scope, with an error that lists the scopes.
    pub fn from_name(text: &str) -> Result<Self> {
        Self::parse(text).ok_or_else(|| {
            Error::InvalidArgument(format!("scope `{text}` is not one of {}", Self::names()))
        })
    }

    /// True when a key of this scope may call what `required` guards.
    pub fn allows(self, required: Scope) -> bool {
        self == Scope::Admin || self == required
    }
}

/// A new key and the hash to store for it.
pub struct NewKey {
    /// The key to hand to the client: shown once, never stored.
    pub secret: String,
    pub hash: KeyHash,
}

impl NewKey {
    /// 32 bytes from the operating system's CSPRNG (through `rand`'s
    /// thread-local generator, reseeded from it).
    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        let secret = format!("{KEY_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes));
        let hash = hash_key(&secret);
        Self { secret, hash }
    }
}

/// The SHA-256 of `key` as presented by a client.
pub fn hash_key(key: &str) -> KeyHash {
    let digest = Sha256::digest(key.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_slice());
    out
}

/// A key name: 1–200 bytes after trimming, no control characters.
pub fn validate_name(name: &str) -> Result<&str> {
    let name = name.trim();
    if name.is_empty() || name.len() > 200 {
        return Err(Error::InvalidArgument(
            "the key name must be 1–200 bytes".into(),
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(Error::InvalidArgument(
            "the key name may not hold control characters (newlines, tabs, escape codes)".into(),
        ));
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_allows_everything_and_others_only_themselves() {
        for required in [Scope::Ingest, Scope::Query, Scope::Admin] {
            assert!(Scope::Admin.allows(required));
        }
        assert!(Scope::Ingest.allows(Scope::Ingest));
        assert!(!Scope::Ingest.allows(Scope::Query));
        assert!(!Scope::Query.allows(Scope::Ingest));
        assert!(!Scope::Query.allows(Scope::Admin));
    }

    #[test]
    fn keys_are_random_prefixed_and_hashed() {
        let a = NewKey::generate();
        let b = NewKey::generate();
        assert_ne!(a.secret, b.secret);
        assert!(a.secret.starts_with(KEY_PREFIX));
        assert_eq!(a.secret.len(), KEY_PREFIX.len() + 43);
        assert_eq!(hash_key(&a.secret), a.hash);
        assert_ne!(a.hash, b.hash);
    }

    #[test]
    fn names_are_trimmed_printable_text() {
        assert_eq!(validate_name("  ops team  ").unwrap(), "ops team");
        assert_eq!(validate_name("équipe données").unwrap(), "équipe données");
        for bad in [
            "",
            "   ",
            "a\nb",
            "ops\x1b[31m",
            "tab\there",
            &"x".repeat(201),
        ] {
            assert!(validate_name(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn scopes_round_trip() {
        for scope in [Scope::Ingest, Scope::Query, Scope::Admin] {
            assert_eq!(Scope::parse(scope.as_str()), Some(scope));
        }
        assert!(Scope::from_name("root").is_err());
    }
}
