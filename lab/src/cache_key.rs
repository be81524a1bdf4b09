//! Cache keys that stay the same across Rust releases and machines: the
//! first 8 bytes of a SHA-256 over length-prefixed fields. (`DefaultHasher`
//! is documented to change between releases, which would silently rebuild
//! or, worse, mix up persisted caches.)

use sha2::{Digest, Sha256};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Builds a cache key from fields added in order.
#[derive(Default)]
pub struct CacheKey {
    hasher: Sha256,
}

impl CacheKey {
    /// Adds a field. Each field is length-prefixed, so ("ab", "c") and
    /// ("a", "bc") give different keys.
    pub fn field(&mut self, bytes: &[u8]) -> &mut Self {
        self.hasher.update((bytes.len() as u64).to_le_bytes());
        self.hasher.update(bytes);
        self
    }

    /// Adds a path, as its bytes.
    pub fn path(&mut self, path: &Path) -> &mut Self {
        self.field(path.as_os_str().as_bytes())
    }

    /// Adds a number.
    pub fn number(&mut self, value: u64) -> &mut Self {
        self.field(&value.to_le_bytes())
    }

    /// The key.
    pub fn finish(&self) -> u64 {
        let digest = self.hasher.clone().finalize();
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        u64::from_be_bytes(first)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_stable_and_field_boundaries_count() {
        // SHA-256 of (le64 3, "abc"), computed independently with
        // `printf '\x03\0\0\0\0\0\0\0abc' | sha256sum`.
        assert_eq!(
            CacheKey::default().field(b"abc").finish(),
            0xce91_dc5e_ec01_39ad
        );
        let ab_c = CacheKey::default().field(b"ab").field(b"c").finish();
        let a_bc = CacheKey::default().field(b"a").field(b"bc").finish();
        assert_ne!(ab_c, a_bc);
    }
}
