//! Key fingerprints: what traces and stats show instead of key material.
//!
//! A fingerprint is HMAC-SHA-256 of the key under a random per-process
//! secret, truncated to 64 bits. It identifies the same key within one run
//! (program, reprogram, evict) without revealing anything about the key:
//! without the secret, which never leaves the process, it cannot even be
//! used to test a guess.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use std::fmt;
use zeroize::Zeroizing;

/// A 64-bit key fingerprint, printed as 16 hex digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub u64);

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// Computes fingerprints under one secret.
pub struct Fingerprinter {
    secret: Zeroizing<[u8; 32]>,
}

impl Fingerprinter {
    /// A fingerprinter with a fresh random secret.
    pub fn random() -> Self {
        let mut secret = Zeroizing::new([0u8; 32]);
        rand::fill(&mut secret[..]);
        Self { secret }
    }

    /// The fingerprint of `key`.
    pub fn fingerprint(&self, key: &[u8]) -> Fingerprint {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.secret[..])
            .expect("HMAC takes keys of any length");
        mac.update(key);
        let tag = mac.finalize().into_bytes();
        let mut first = [0u8; 8];
        first.copy_from_slice(&tag[..8]);
        Fingerprint(u64::from_be_bytes(first))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_key_same_fingerprint_and_no_key_bytes() {
        let fingerprinter = Fingerprinter::random();
        let key = [0x41u8; 64];
        let first = fingerprinter.fingerprint(&key);
        assert_eq!(first, fingerprinter.fingerprint(&key));
        assert_ne!(first, fingerprinter.fingerprint(&[0x42u8; 64]));
        assert!(!first.to_string().contains("4141"));
        // A different process (secret) gives a different fingerprint.
        assert_ne!(first, Fingerprinter::random().fingerprint(&key));
    }
}
