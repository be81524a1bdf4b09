//! The reference the device's ciphertext is compared with: AES-256-XTS
//! (IEEE 1619) by the `xts-mode` crate, one tweak per data unit, the tweak
//! being the DUN as a 16-byte little-endian number (docs/PROTOCOL.md,
//! "Device rules"). Independent of icelab's engine.

use aes::Aes256;
use aes::cipher::KeyInit;
use icelab_protocol::KeyDesc;
use xts_mode::{Xts128, get_tweak_default};
use zeroize::Zeroizing;

/// A random test key, known to the report only by its name ("key #n").
pub struct TestKey {
    name: String,
    bytes: Zeroizing<[u8; 64]>,
}

impl std::fmt::Debug for TestKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)
    }
}

impl TestKey {
    /// A fresh random key named "key #`number`".
    pub fn random(number: u32) -> Self {
        let mut bytes = Zeroizing::new([0u8; 64]);
        rand::fill(&mut bytes[..]);
        Self {
            name: format!("key #{number}"),
            bytes,
        }
    }

    /// "key #n".
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A raw AES-256-XTS key_desc programming this key into `slot`.
    pub fn desc(&self, slot: u32, data_unit_size: u32, dun_bytes: u32) -> KeyDesc {
        KeyDesc::raw_aes_256_xts(slot, &self.bytes, data_unit_size, dun_bytes)
    }

    /// The same key with its two 32-byte halves swapped (a diagnosis of
    /// a device that takes the tweak key first).
    pub fn with_halves_swapped(&self) -> Self {
        let mut bytes = self.bytes.clone();
        bytes.rotate_left(32);
        Self {
            name: format!("{} with its halves swapped", self.name),
            bytes,
        }
    }

    fn xts(&self) -> Xts128<Aes256> {
        // Both halves are exactly 32 bytes, the AES-256 key size.
        let half = |range: std::ops::Range<usize>| {
            let mut key = aes::cipher::Key::<Aes256>::default();
            key.copy_from_slice(&self.bytes[range]);
            Aes256::new(&key)
        };
        Xts128::new(half(0..32), half(32..64))
    }

    /// `data` encrypted as data units of `data_unit_size` bytes, the first
    /// with DUN `dun`. A trailing partial unit is left as it is (callers
    /// send whole units).
    pub fn encrypt(&self, data: &[u8], data_unit_size: usize, dun: u128) -> Vec<u8> {
        self.crypt(data, data_unit_size, dun, true)
    }

    /// The inverse of [`TestKey::encrypt`].
    pub fn decrypt(&self, data: &[u8], data_unit_size: usize, dun: u128) -> Vec<u8> {
        self.crypt(data, data_unit_size, dun, false)
    }

    fn crypt(&self, data: &[u8], data_unit_size: usize, dun: u128, encrypt: bool) -> Vec<u8> {
        let mut out = data.to_vec();
        if data_unit_size < 16 {
            return out;
        }
        let xts = self.xts();
        for (index, unit) in out.chunks_exact_mut(data_unit_size).enumerate() {
            let tweak = get_tweak_default(dun.wrapping_add(index as u128));
            if encrypt {
                xts.encrypt_sector(unit, tweak);
            } else {
                xts.decrypt_sector(unit, tweak);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_tweak_per_data_unit_and_round_trip() {
        let key = TestKey::random(1);
        let data: Vec<u8> = (0..8192u32).map(|i| i as u8).collect();
        let whole = key.encrypt(&data, 4096, 7);
        assert_ne!(whole, data);
        assert_eq!(whole[4096..], key.encrypt(&data[4096..], 4096, 8));
        assert_eq!(key.decrypt(&whole, 4096, 7), data);
        // The DUN may reach 2^128 - 1 without overflow.
        let top = key.encrypt(&data, 512, u128::MAX - 15);
        assert_eq!(key.decrypt(&top, 512, u128::MAX - 15), data);
    }

    #[test]
    fn the_64_byte_key_is_data_key_then_tweak_key() {
        // IEEE 1619 vector 10 (XTS-AES-256, 512-byte data unit 0xff).
        let mut bytes = Zeroizing::new([0u8; 64]);
        let key1 = "2718281828459045235360287471352662497757247093699959574966967627";
        let key2 = "3141592653589793238462643383279502884197169399375105820974944592";
        for (i, pair) in key1
            .as_bytes()
            .chunks(2)
            .chain(key2.as_bytes().chunks(2))
            .enumerate()
        {
            let text = std::str::from_utf8(pair).expect("ascii");
            bytes[i] = u8::from_str_radix(text, 16).expect("hex");
        }
        let key = TestKey {
            name: "vector".into(),
            bytes,
        };
        let plain: Vec<u8> = (0..512u32).map(|i| i as u8).collect();
        let cipher = key.encrypt(&plain, 512, 0xff);
        assert_eq!(
            cipher[..16],
            [
                0x1c, 0x3b, 0x3a, 0x10, 0x2f, 0x77, 0x03, 0x86, 0xe4, 0x83, 0x6c, 0x99, 0xe3, 0x70,
                0xcf, 0x9b
            ]
        );
    }
}
