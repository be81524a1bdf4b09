//! The hardware KDF of hardware-wrapped keys, as the verifier computes it.
//!
//! A file protected by a hardware-wrapped key is encrypted with the
//! *inline encryption key* that the inline crypto engine derives from the
//! unwrapped 32-byte *hardware key*; fscrypt derives its other keys (key
//! identifier, IV_INO_LBLK_32's inode-hash key) from the *software secret*
//! the engine derives from the same key. Linux leaves the derivation to
//! the hardware (Documentation/block/inline-encryption.rst, "Hardware-
//! wrapped keys"); the one every known engine uses, and the one xfstests'
//! `fscrypt-crypt-util --enable-hw-kdf` recomputes, is NIST SP 800-108's
//! KDF in counter mode with AES-256-CMAC (NIST SP 800-38B) as the PRF:
//!
//! ```text
//! block(i) = AES-256-CMAC(hardware key,
//!                         be32(i) || label || 0x00 || context || be32(bits))
//! ```
//!
//! for i = 1, 2, ... until `bits` are produced. The label and the two
//! contexts below are the values of fscrypt-crypt-util.c (with the SM8650
//! fix of January 2025). Written here from the standards and that source,
//! independently of the emulator's engine; the known answers in the tests
//! come from a separate Python implementation (`cryptography`'s CMAC):
//! `emulator/tests/hw_kdf_vectors.py`.

use aes::Aes256;
use cmac::{Cmac, KeyInit, Mac};

/// Bytes of a hardware key (what BLKCRYPTOIMPORTKEY imports).
pub const HARDWARE_KEY_BYTES: usize = 32;

/// SP 800-108 `Label`.
const LABEL: &[u8] = &[0, 0, 0x40, 0, 0, 0, 0, 0, 0, 0, 0x20];

/// `Context` of the inline encryption key: the text, 6 zeros, 9 bytes.
fn inline_key_context() -> Vec<u8> {
    let mut context = b"inline encryption key".to_vec();
    context.extend_from_slice(&[0; 6]);
    context.extend_from_slice(&[0x02, 0x43, 0x00, 0x82, 0x50, 0, 0, 0, 0]);
    context
}

/// `Context` of the software secret: the text, 9 zeros, 9 bytes.
fn software_secret_context() -> Vec<u8> {
    let mut context = b"raw secret".to_vec();
    context.extend_from_slice(&[0; 9]);
    context.extend_from_slice(&[0x02, 0x17, 0x00, 0x80, 0x50, 0, 0, 0, 0]);
    context
}

/// SP 800-108 counter mode with AES-256-CMAC; `out.len()` is a multiple of
/// the 16-byte block (the KDF's outputs are 32 and 64 bytes).
fn counter_mode(key: &[u8; HARDWARE_KEY_BYTES], context: &[u8], out: &mut [u8]) {
    let bits = u32::try_from(out.len() * 8).unwrap_or(u32::MAX);
    for (index, block) in out.chunks_mut(16).enumerate() {
        let counter = u32::try_from(index + 1).unwrap_or(u32::MAX);
        let mut prf = <Cmac<Aes256> as KeyInit>::new(key.into());
        prf.update(&counter.to_be_bytes());
        prf.update(LABEL);
        prf.update(&[0]);
        prf.update(context);
        prf.update(&bits.to_be_bytes());
        let tag = prf.finalize().into_bytes();
        block.copy_from_slice(&tag[..block.len()]);
    }
}

/// The 64-byte AES-256-XTS key the engine encrypts a hardware-wrapped
/// key's files with.
pub fn inline_encryption_key(hardware_key: &[u8; HARDWARE_KEY_BYTES]) -> [u8; 64] {
    let mut key = [0; 64];
    counter_mode(hardware_key, &inline_key_context(), &mut key);
    key
}

/// The 32-byte software secret fscrypt uses as the master key of its own
/// HKDF for a hardware-wrapped key.
pub fn software_secret(hardware_key: &[u8; HARDWARE_KEY_BYTES]) -> [u8; 32] {
    let mut secret = [0; 32];
    counter_mode(hardware_key, &software_secret_context(), &mut secret);
    secret
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(text: &str) -> Vec<u8> {
        let text: String = text.split_whitespace().collect();
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex"))
            .collect()
    }

    /// Known answers of emulator/tests/hw_kdf_vectors.py (Python's
    /// `cryptography`, its CMAC checked against SP 800-38B D.3 and
    /// `openssl mac`): (hardware key, inline encryption key, software
    /// secret).
    #[test]
    fn the_kdf_gives_the_independent_known_answers() {
        let vectors: [([u8; 32], &str, &str); 3] = [
            (
                core::array::from_fn(|i| i as u8),
                "16317c8fe3133e7aef46bdede2b39f09a81e9fbe0c095f906c5c1341da6eaf17
                 f151e2982f4f14a5495f78761066cafa5ebb995997d3fb5c8678bb394b6b57dc",
                "48b69fb100fda3d600b75d7f25e2b8f1cf95e5de1bd624b9273d537519270c65",
            ),
            (
                core::array::from_fn(|i| 0xff - i as u8),
                "334b0025fd1d300cd2661729d8e4b1d6910798438657eb8188e2063c62760e1d
                 dc2d4a05791b5457dd4210f8190d7b8e129b15fd4a255aec69ca50b83488c55a",
                "c1266beb51f571881d6a5776ddcc171a628a636ff76b9fd216da1724a4b6efa9",
            ),
            (
                core::array::from_fn(|i| (37 * i as u8).wrapping_add(11)),
                "eadf1e1a504a2616470b99e425358a3faf62d1ca2375e8ed0e2731774993a787
                 6a697cbe074cc6f068e119ae019db9c14603197fcc683ec05b52924d02a4b51d",
                "92195737595060d9ec58fbe8d20f22484ecb674081e62b4feacee3e1f90b719a",
            ),
        ];
        for (key, inline, secret) in vectors {
            assert_eq!(inline_encryption_key(&key)[..], hex(inline)[..]);
            assert_eq!(software_secret(&key)[..], hex(secret)[..]);
        }
    }

    #[test]
    fn the_contexts_have_fscrypt_crypt_utils_lengths() {
        assert_eq!(LABEL.len(), 11);
        assert_eq!(inline_key_context().len(), 36);
        assert_eq!(software_secret_context().len(), 28);
    }

    /// The counter and the length are part of every block: the two
    /// halves of the inline key differ, and the software secret is not a
    /// prefix of it.
    #[test]
    fn blocks_depend_on_counter_and_length() {
        let key = [7u8; 32];
        let inline = inline_encryption_key(&key);
        assert_ne!(inline[..16], inline[16..32]);
        assert_ne!(software_secret(&key)[..], inline[..32]);
    }
}
