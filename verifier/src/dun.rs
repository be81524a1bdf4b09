//! fscrypt v2 contents policies and the IV / data unit number (DUN) of
//! each data unit.
//!
//! Standards: Linux `Documentation/filesystems/fscrypt.rst` ("Contents
//! encryption", "Encryption modes and usage"), `fs/crypto/crypto.c`
//! (`fscrypt_generate_iv`) and `fs/crypto/inline_crypt.c`
//! (`fscrypt_generate_dun`): the IV is `union fscrypt_iv`, a little-endian
//! 64-bit index followed by zeros (the nonce half is used only with
//! DIRECT_KEY, a non-goal here), and blk-crypto's DUN is that same value.
//! The index counts *data units* of the file (`1 << log2_data_unit_size`
//! bytes, the filesystem block size when the field is 0).

use crate::kdf::{
    self, AES_256_XTS_KEY_SIZE, FILE_NONCE_SIZE, HKDF_CONTEXT_IV_INO_LBLK_32_KEY,
    HKDF_CONTEXT_IV_INO_LBLK_64_KEY, MasterKeyHkdf,
};

/// `FSCRYPT_MODE_AES_256_XTS`.
pub const FSCRYPT_MODE_AES_256_XTS: u8 = 1;
/// `FSCRYPT_POLICY_FLAG_DIRECT_KEY`.
pub const FSCRYPT_POLICY_FLAG_DIRECT_KEY: u8 = 0x04;
/// `FSCRYPT_POLICY_FLAG_IV_INO_LBLK_64`.
pub const FSCRYPT_POLICY_FLAG_IV_INO_LBLK_64: u8 = 0x08;
/// `FSCRYPT_POLICY_FLAG_IV_INO_LBLK_32`.
pub const FSCRYPT_POLICY_FLAG_IV_INO_LBLK_32: u8 = 0x10;
/// `FSCRYPT_POLICY_FLAGS_PAD_MASK` (filenames padding; no effect on contents).
pub const FSCRYPT_POLICY_FLAGS_PAD_MASK: u8 = 0x03;

/// A data unit number: the 128-bit XTS tweak is its little-endian encoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Dun(pub u64);

impl Dun {
    /// The XTS tweak (IEEE 1619 "data unit sequence number" as 16 LE bytes).
    pub fn tweak(self) -> [u8; 16] {
        u128::from(self.0).to_le_bytes()
    }
}

/// How a policy's contents key and IVs are chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IvScheme {
    /// Default v2: a per-file key from the nonce, DUN = data unit index.
    PerFile,
    /// IV_INO_LBLK_64: one key per (master key, mode, fs),
    /// DUN = inode number << 32 | data unit index.
    IvInoLblk64,
    /// IV_INO_LBLK_32: one key per (master key, mode, fs),
    /// DUN = (u32)(SipHash(inode number) + data unit index).
    IvInoLblk32,
}

impl IvScheme {
    /// The scheme of a policy's flags byte, or an explanation.
    pub fn from_flags(flags: u8) -> Result<Self, String> {
        let known = FSCRYPT_POLICY_FLAGS_PAD_MASK
            | FSCRYPT_POLICY_FLAG_DIRECT_KEY
            | FSCRYPT_POLICY_FLAG_IV_INO_LBLK_64
            | FSCRYPT_POLICY_FLAG_IV_INO_LBLK_32;
        if flags & !known != 0 {
            return Err(format!("unknown policy flags {flags:#04x}"));
        }
        match flags & !FSCRYPT_POLICY_FLAGS_PAD_MASK {
            0 => Ok(Self::PerFile),
            FSCRYPT_POLICY_FLAG_IV_INO_LBLK_64 => Ok(Self::IvInoLblk64),
            FSCRYPT_POLICY_FLAG_IV_INO_LBLK_32 => Ok(Self::IvInoLblk32),
            FSCRYPT_POLICY_FLAG_DIRECT_KEY => {
                Err("DIRECT_KEY (Adiantum only) is not modelled".into())
            }
            f => Err(format!("conflicting policy flags {f:#04x}")),
        }
    }
}

/// Everything needed to encrypt any data unit of one file.
pub struct FileCrypt {
    /// The AES-256-XTS key actually used for contents.
    pub key: [u8; AES_256_XTS_KEY_SIZE],
    scheme: IvScheme,
    ino: u64,
    hashed_ino: u32,
}

impl FileCrypt {
    /// Derive the contents key and IV parameters of file `ino` under
    /// `scheme` (`fscrypt_setup_v2_file_key`).
    pub fn derive(
        master: &MasterKeyHkdf,
        scheme: IvScheme,
        nonce: &[u8; FILE_NONCE_SIZE],
        fs_uuid: &[u8; 16],
        ino: u64,
    ) -> Self {
        let (key, hashed_ino) = match scheme {
            IvScheme::PerFile => (master.per_file_key(nonce), 0),
            IvScheme::IvInoLblk64 => (
                master.per_mode_key(
                    HKDF_CONTEXT_IV_INO_LBLK_64_KEY,
                    FSCRYPT_MODE_AES_256_XTS,
                    fs_uuid,
                ),
                0,
            ),
            IvScheme::IvInoLblk32 => (
                master.per_mode_key(
                    HKDF_CONTEXT_IV_INO_LBLK_32_KEY,
                    FSCRYPT_MODE_AES_256_XTS,
                    fs_uuid,
                ),
                kdf::hashed_ino(&master.inode_hash_key(), ino),
            ),
        };
        Self {
            key,
            scheme,
            ino,
            hashed_ino,
        }
    }

    /// The contents key and IV parameters of file `ino` under a
    /// hardware-wrapped key: the engine's inline encryption key encrypts
    /// the contents; fscrypt's HKDF (`master`, keyed by the software
    /// secret) gives IV_INO_LBLK_32's inode-hash key. Only the
    /// IV_INO_LBLK policies take hardware-wrapped keys.
    pub fn hw_wrapped(
        inline_key: [u8; AES_256_XTS_KEY_SIZE],
        master: &MasterKeyHkdf,
        scheme: IvScheme,
        ino: u64,
    ) -> Result<Self, String> {
        let hashed_ino = match scheme {
            IvScheme::PerFile => {
                return Err(
                    "a per-file-key policy cannot use a hardware-wrapped key (fscrypt refuses it)"
                        .to_owned(),
                );
            }
            IvScheme::IvInoLblk64 => 0,
            IvScheme::IvInoLblk32 => kdf::hashed_ino(&master.inode_hash_key(), ino),
        };
        Ok(Self {
            key: inline_key,
            scheme,
            ino,
            hashed_ino,
        })
    }

    /// The DUN of data unit `index` (counted from the start of the file),
    /// as `fscrypt_generate_iv` computes it.
    pub fn dun(&self, index: u64) -> Dun {
        match self.scheme {
            IvScheme::PerFile => Dun(index),
            // The kernel refuses these policies when the inode number or
            // data unit index would not fit in 32 bits, so plain OR is exact.
            IvScheme::IvInoLblk64 => Dun((self.ino << 32) | (index & 0xffff_ffff)),
            IvScheme::IvInoLblk32 => Dun(u64::from(self.hashed_ino.wrapping_add(index as u32))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kdf::tests::{HASHED_INO_12, MK, NONCE, uuid};

    fn file(scheme: IvScheme) -> FileCrypt {
        FileCrypt::derive(&MasterKeyHkdf::new(&MK), scheme, &NONCE, &uuid(), 12)
    }

    #[test]
    fn dun_per_policy() {
        assert_eq!(file(IvScheme::PerFile).dun(7), Dun(7));
        assert_eq!(file(IvScheme::IvInoLblk64).dun(7), Dun((12 << 32) | 7));
        assert_eq!(
            file(IvScheme::IvInoLblk32).dun(7),
            Dun(u64::from(HASHED_INO_12) + 7)
        );
        // 32-bit wrap: hashed_ino + index is truncated to u32.
        let wrap = u64::from(u32::MAX - HASHED_INO_12) + 1;
        assert_eq!(file(IvScheme::IvInoLblk32).dun(wrap + 3), Dun(3));
    }

    #[test]
    fn tweak_is_little_endian() {
        let t = Dun(0x0102_0304_0506_0708).tweak();
        assert_eq!(t[..8], [8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(t[8..], [0; 8]);
    }

    #[test]
    fn flags() {
        assert_eq!(IvScheme::from_flags(0x02), Ok(IvScheme::PerFile));
        assert_eq!(IvScheme::from_flags(0x0a), Ok(IvScheme::IvInoLblk64));
        assert_eq!(IvScheme::from_flags(0x10), Ok(IvScheme::IvInoLblk32));
        assert!(IvScheme::from_flags(0x18).is_err());
        assert!(IvScheme::from_flags(0x04).is_err());
        assert!(IvScheme::from_flags(0x40).is_err());
    }
}
