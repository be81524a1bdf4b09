//! AES-256-XTS of one data unit: IEEE Std 1619-2018 over AES-256
//! (FIPS 197), through the RustCrypto `xts-mode` and `aes` crates. The
//! tweak is the data unit's DUN as 16 little-endian bytes (blk-crypto,
//! `Documentation/block/inline-encryption.rst`). Whole data units only.

use aes::Aes256;
use aes::cipher::KeyInit;
use aes::cipher::array::Array;
use xts_mode::Xts128;

use crate::dun::Dun;
use crate::kdf::AES_256_XTS_KEY_SIZE;

/// An AES-256-XTS key ready to encrypt data units.
pub struct XtsKey(Xts128<Aes256>);

impl XtsKey {
    /// Key1 (data) is the first half, key2 (tweak) the second, as in
    /// IEEE 1619 and the kernel's `xts(aes)`.
    pub fn new(key: &[u8; AES_256_XTS_KEY_SIZE]) -> Self {
        let k1 = Array::try_from(&key[..32]).expect("32 bytes");
        let k2 = Array::try_from(&key[32..]).expect("32 bytes");
        Self(Xts128::new(Aes256::new(&k1), Aes256::new(&k2)))
    }

    /// Encrypt one whole data unit (a multiple of 16 bytes) in place.
    pub fn encrypt_data_unit(&self, dun: Dun, data_unit: &mut [u8]) {
        self.0.encrypt_sector(data_unit, Array(dun.tweak()));
    }

    /// Decrypt one whole data unit (a multiple of 16 bytes) in place.
    pub fn decrypt_data_unit(&self, dun: Dun, data_unit: &mut [u8]) {
        self.0.decrypt_sector(data_unit, Array(dun.tweak()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hex::{from_hex, to_hex};
    use crate::kdf::tests::{LBLK64_KEY, PER_FILE_KEY};
    use sha2::{Digest, Sha256};

    fn key(hex: &str) -> [u8; 64] {
        from_hex(hex).unwrap().try_into().unwrap()
    }

    /// Vectors from verifier/tests/vectors.py (Python `cryptography`'s
    /// AES-XTS with the 16-byte little-endian DUN as tweak).
    #[test]
    fn xts_known_answer() {
        let pt: Vec<u8> = (0..4096u32).map(|i| (i * 7 + 3) as u8).collect();
        let mut du = pt.clone();
        XtsKey::new(&key(PER_FILE_KEY)).encrypt_data_unit(Dun(5), &mut du);
        assert_eq!(
            to_hex(&Sha256::digest(&du)),
            "46091067ca077d3f7788710b847cee605caae9759d592aa48af8c7ca3f7cb0de"
        );
        let mut du = pt[..512].to_vec();
        XtsKey::new(&key(LBLK64_KEY)).encrypt_data_unit(Dun((12 << 32) | 3), &mut du);
        assert_eq!(
            to_hex(&Sha256::digest(&du)),
            "997bd69936f1151a81cecefdf0b1f7dcb37214f8a4749255164bf7d1f6f347a2"
        );
        XtsKey::new(&key(LBLK64_KEY)).decrypt_data_unit(Dun((12 << 32) | 3), &mut du);
        assert_eq!(du, pt[..512]);
    }
}
