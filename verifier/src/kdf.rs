//! fscrypt v2 key derivation.
//!
//! Standards: RFC 5869 (HKDF) instantiated with SHA-512 (FIPS 180-4), as
//! used by Linux `fs/crypto/hkdf.c`; the derivation contexts and their
//! `info` strings are those of `fs/crypto/fscrypt_private.h` and
//! `fs/crypto/keysetup.c`, described in
//! `Documentation/filesystems/fscrypt.rst` ("Key hierarchy"). SipHash-2-4
//! (Aumasson and Bernstein, "SipHash: a fast short-input PRF", 2012) hashes
//! the inode number for IV_INO_LBLK_32.
//!
//! For a hardware-wrapped key the engine's inline encryption key encrypts
//! the contents and the software secret is the master key of this HKDF
//! (both from [`crate::hw_kdf`]). v1 policies and DIRECT_KEY (Adiantum
//! only) are non-goals.

use hkdf::Hkdf;
use sha2::Sha512;
use siphasher::sip::SipHasher24;

/// `HKDF_CONTEXT_KEY_IDENTIFIER` (for a raw key).
pub const HKDF_CONTEXT_KEY_IDENTIFIER: u8 = 1;
/// `HKDF_CONTEXT_KEY_IDENTIFIER_FOR_HW_WRAPPED_KEY`: a hardware-wrapped
/// key's identifier, from its software secret.
pub const HKDF_CONTEXT_KEY_IDENTIFIER_FOR_HW_WRAPPED_KEY: u8 = 8;
/// `HKDF_CONTEXT_PER_FILE_ENC_KEY`: info is the file's 16-byte nonce.
pub const HKDF_CONTEXT_PER_FILE_ENC_KEY: u8 = 2;
/// `HKDF_CONTEXT_IV_INO_LBLK_64_KEY`: info is mode number || fs UUID.
pub const HKDF_CONTEXT_IV_INO_LBLK_64_KEY: u8 = 4;
/// `HKDF_CONTEXT_IV_INO_LBLK_32_KEY`: info is mode number || fs UUID.
pub const HKDF_CONTEXT_IV_INO_LBLK_32_KEY: u8 = 6;
/// `HKDF_CONTEXT_INODE_HASH_KEY`: no info; a SipHash key.
pub const HKDF_CONTEXT_INODE_HASH_KEY: u8 = 7;

/// The fixed prefix of every fscrypt HKDF `info` ("fscrypt\0").
const INFO_PREFIX: &[u8; 8] = b"fscrypt\0";

/// Size of an AES-256-XTS key (two AES-256 keys).
pub const AES_256_XTS_KEY_SIZE: usize = 64;
/// Size of a master key identifier.
pub const KEY_IDENTIFIER_SIZE: usize = 16;
/// Size of the per-file nonce (`FSCRYPT_FILE_NONCE_SIZE`).
pub const FILE_NONCE_SIZE: usize = 16;

/// A master key's HKDF state: the pseudorandom key of RFC 5869 §2.2.
pub struct MasterKeyHkdf(Hkdf<Sha512>);

impl MasterKeyHkdf {
    /// HKDF-Extract, unsalted: RFC 5869 §2.2 treats a missing salt as
    /// HashLen zero bytes, which is what `fscrypt_init_hkdf` passes.
    pub fn new(master_key: &[u8]) -> Self {
        Self(Hkdf::<Sha512>::new(None, master_key))
    }

    /// HKDF-Expand with info = "fscrypt\0" || context || info
    /// (`fscrypt_hkdf_expand`).
    pub fn expand(&self, context: u8, info: &[u8], okm: &mut [u8]) {
        let mut full = Vec::with_capacity(INFO_PREFIX.len() + 1 + info.len());
        full.extend_from_slice(INFO_PREFIX);
        full.push(context);
        full.extend_from_slice(info);
        self.0
            .expand(&full, okm)
            .expect("fscrypt never asks for more than 255*64 bytes");
    }

    /// The master key identifier (`FSCRYPT_KEY_IDENTIFIER_SIZE` bytes).
    pub fn key_identifier(&self) -> [u8; KEY_IDENTIFIER_SIZE] {
        let mut out = [0; KEY_IDENTIFIER_SIZE];
        self.expand(HKDF_CONTEXT_KEY_IDENTIFIER, &[], &mut out);
        out
    }

    /// The identifier of a hardware-wrapped key, this HKDF being keyed by
    /// its software secret.
    pub fn hw_wrapped_key_identifier(&self) -> [u8; KEY_IDENTIFIER_SIZE] {
        let mut out = [0; KEY_IDENTIFIER_SIZE];
        self.expand(
            HKDF_CONTEXT_KEY_IDENTIFIER_FOR_HW_WRAPPED_KEY,
            &[],
            &mut out,
        );
        out
    }

    /// The per-file contents key of a default v2 policy.
    pub fn per_file_key(&self, nonce: &[u8; FILE_NONCE_SIZE]) -> [u8; AES_256_XTS_KEY_SIZE] {
        let mut out = [0; AES_256_XTS_KEY_SIZE];
        self.expand(HKDF_CONTEXT_PER_FILE_ENC_KEY, nonce, &mut out);
        out
    }

    /// The per-mode key of IV_INO_LBLK_64 or IV_INO_LBLK_32
    /// (`setup_per_mode_enc_key` with `include_fs_uuid`).
    pub fn per_mode_key(
        &self,
        context: u8,
        mode_num: u8,
        fs_uuid: &[u8; 16],
    ) -> [u8; AES_256_XTS_KEY_SIZE] {
        let mut info = [0; 17];
        info[0] = mode_num;
        info[1..].copy_from_slice(fs_uuid);
        let mut out = [0; AES_256_XTS_KEY_SIZE];
        self.expand(context, &info, &mut out);
        out
    }

    /// The SipHash-2-4 key used to hash inode numbers (IV_INO_LBLK_32).
    pub fn inode_hash_key(&self) -> [u8; 16] {
        let mut out = [0; 16];
        self.expand(HKDF_CONTEXT_INODE_HASH_KEY, &[], &mut out);
        out
    }
}

/// `ci_hashed_ino`: the low 32 bits of SipHash-2-4 over the inode number as
/// a little-endian u64 (`siphash_1u64`). The kernel's `siphash_key_t` is two
/// u64s loaded from the derived bytes in little-endian order, as SipHash's
/// reference key schedule does.
pub fn hashed_ino(inode_hash_key: &[u8; 16], ino: u64) -> u32 {
    SipHasher24::new_with_key(inode_hash_key).hash(&ino.to_le_bytes()) as u32
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::hex::{from_hex, to_hex};

    // Vectors computed independently by verifier/tests/vectors.py (Python
    // hashlib + hmac for HKDF-SHA512, a from-the-paper SipHash-2-4 checked
    // against the paper's Appendix A vector) with master key 00..3f,
    // nonce 64..73, fs UUID 5e9e0e69-8096-44d2-b149-79c608aea629, ino 12.
    pub const MK: [u8; 64] = {
        let mut k = [0; 64];
        let mut i = 0;
        while i < 64 {
            k[i] = i as u8;
            i += 1;
        }
        k
    };
    pub const NONCE: [u8; 16] = [
        100, 101, 102, 103, 104, 105, 106, 107, 108, 109, 110, 111, 112, 113, 114, 115,
    ];
    pub const UUID: &str = "5e9e0e69809644d2b14979c608aea629";
    pub const PER_FILE_KEY: &str = "150587bde889cb21adcd1fe65a5ac46c9881beab7c652429ccaa59f4f7c55c86d085a040af6fcfe8134786e1c35054fd04579535ac7fd3c841b8fd2f7ec2f5d5";
    pub const LBLK64_KEY: &str = "cfb61d43ba7bad3cc9b4d34d064c1ef6e5415eb31a3a1a488c849097d9e2f5466de4356c929218c1b1f001dc56f56ef658738db4a1bc2869debb113be4ec33d9";
    pub const LBLK32_KEY: &str = "6ddc3f987dead362fe71d81515ba487e597753a35a1449dd724aeaf9f80dfe3fff16c100700d017e07329fbd12f12b2f1a9069286fc233811e149568039b26df";
    pub const KEY_ID: &str = "8699c2c53707405da5aba5ae4d8583c0";
    pub const HASHED_INO_12: u32 = 0x8258b545;

    pub fn uuid() -> [u8; 16] {
        from_hex(UUID).unwrap().try_into().unwrap()
    }

    #[test]
    fn hkdf_sha512_known_answer() {
        let h = Hkdf::<Sha512>::new(None, &MK);
        let mut okm = [0; 42];
        h.expand(b"x", &mut okm).unwrap();
        assert_eq!(
            to_hex(&okm),
            "2d80b7ec91b18d72b4f9e69d3a032d1e369b120075b903e6cbe0f3230e1a1f6d5eae59b3f2976581f267"
        );
    }

    #[test]
    fn fscrypt_derivations_known_answer() {
        let h = MasterKeyHkdf::new(&MK);
        assert_eq!(to_hex(&h.key_identifier()), KEY_ID);
        assert_eq!(to_hex(&h.per_file_key(&NONCE)), PER_FILE_KEY);
        assert_eq!(
            to_hex(&h.per_mode_key(HKDF_CONTEXT_IV_INO_LBLK_64_KEY, 1, &uuid())),
            LBLK64_KEY
        );
        assert_eq!(
            to_hex(&h.per_mode_key(HKDF_CONTEXT_IV_INO_LBLK_32_KEY, 1, &uuid())),
            LBLK32_KEY
        );
        assert_eq!(
            to_hex(&h.inode_hash_key()),
            "670f76f85d2f3cb8a67e0bba366c1014"
        );
        assert_eq!(hashed_ino(&h.inode_hash_key(), 12), HASHED_INO_12);
    }

    #[test]
    fn siphash24_known_answer() {
        let key: [u8; 16] = core::array::from_fn(|i| i as u8);
        // SipHash paper, Appendix A: message 00..0e.
        let msg: Vec<u8> = (0..15).collect();
        assert_eq!(
            SipHasher24::new_with_key(&key).hash(&msg),
            0xa129ca6149be45e5
        );
        let msg: Vec<u8> = (0..64).collect();
        assert_eq!(
            SipHasher24::new_with_key(&key).hash(&msg),
            0xacd2c40b8502cad8
        );
    }
}
