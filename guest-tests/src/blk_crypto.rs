//! The blk-crypto user API for hardware-wrapped keys: the structs and
//! ioctl numbers of Linux's `include/uapi/linux/blk-crypto.h` (6.15+),
//! written out here like [`crate::fscrypt`]'s, with safe wrappers.
//! Documentation/block/inline-encryption.rst, "Hardware-wrapped keys",
//! describes the calls; they go to the block device's crypto profile
//! (icelab_vblk's `import_key`, `generate_key`, `prepare_key` ops).
//!
//! Sizes and numbers are checked by unit tests against the values the
//! header defines.

use std::fs::File;

use zeroize::Zeroizing;

use crate::fscrypt::{Error, Result, ioctl, ioctl_error};

/// `BLK_CRYPTO_MAX_HW_WRAPPED_KEY_SIZE` (include/linux/blk-crypto.h): the
/// largest wrapped key the kernel takes or returns.
pub const BLK_CRYPTO_MAX_HW_WRAPPED_KEY_SIZE: usize = 128;

/// `struct blk_crypto_import_key_arg`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct BlkCryptoImportKeyArg {
    /// `raw_key_ptr`: the raw key (in).
    pub raw_key_ptr: u64,
    /// `raw_key_size`.
    pub raw_key_size: u64,
    /// `lt_key_ptr`: room for the long-term wrapped key (out).
    pub lt_key_ptr: u64,
    /// `lt_key_size`: in, the room; out, the key's size.
    pub lt_key_size: u64,
    /// `reserved`: zero.
    pub reserved: [u64; 4],
}

/// `struct blk_crypto_generate_key_arg`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct BlkCryptoGenerateKeyArg {
    /// `lt_key_ptr`: room for the long-term wrapped key (out).
    pub lt_key_ptr: u64,
    /// `lt_key_size`: in, the room; out, the key's size.
    pub lt_key_size: u64,
    /// `reserved`: zero.
    pub reserved: [u64; 4],
}

/// `struct blk_crypto_prepare_key_arg`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct BlkCryptoPrepareKeyArg {
    /// `lt_key_ptr`: the long-term wrapped key (in).
    pub lt_key_ptr: u64,
    /// `lt_key_size`.
    pub lt_key_size: u64,
    /// `eph_key_ptr`: room for the ephemerally-wrapped key (out).
    pub eph_key_ptr: u64,
    /// `eph_key_size`: in, the room; out, the key's size.
    pub eph_key_size: u64,
    /// `reserved`: zero.
    pub reserved: [u64; 4],
}

const IOC_WRITE: u32 = 1;
const IOC_READ: u32 = 2;

/// `_IOWR(0x12, nr, size)` (the block device ioctl space, uapi/linux/fs.h).
const fn iowr_blk(nr: u8, size: usize) -> libc::c_ulong {
    (((IOC_READ | IOC_WRITE) << 30) | ((size as u32) << 16) | (0x12 << 8) | nr as u32)
        as libc::c_ulong
}

/// `BLKCRYPTOIMPORTKEY`: `_IOWR(0x12, 137, struct blk_crypto_import_key_arg)`.
pub const BLKCRYPTOIMPORTKEY: libc::c_ulong = iowr_blk(137, size_of::<BlkCryptoImportKeyArg>());
/// `BLKCRYPTOGENERATEKEY`: `_IOWR(0x12, 138, struct blk_crypto_generate_key_arg)`.
pub const BLKCRYPTOGENERATEKEY: libc::c_ulong = iowr_blk(138, size_of::<BlkCryptoGenerateKeyArg>());
/// `BLKCRYPTOPREPAREKEY`: `_IOWR(0x12, 139, struct blk_crypto_prepare_key_arg)`.
pub const BLKCRYPTOPREPAREKEY: libc::c_ulong = iowr_blk(139, size_of::<BlkCryptoPrepareKeyArg>());

/// A hardware-wrapped key as the kernel hands it out: opaque bytes only
/// the device can unwrap (long-term or ephemerally wrapped). Not secret
/// the way a raw key is, but never printed either; wiped when dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct WrappedKey(Zeroizing<Vec<u8>>);

impl WrappedKey {
    /// A wrapped key of these bytes (read back from a file, or altered on
    /// purpose).
    pub fn from_bytes(bytes: &[u8]) -> WrappedKey {
        WrappedKey(Zeroizing::new(bytes.to_vec()))
    }

    /// The key's bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }

    /// Its size in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether it has no bytes.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for WrappedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WrappedKey({} bytes)", self.0.len())
    }
}

/// The key the kernel wrote into `room`, `size` bytes of it.
fn answered(ioctl: &'static str, what: &str, room: &[u8], size: u64) -> Result<WrappedKey> {
    match usize::try_from(size).ok().and_then(|n| room.get(..n)) {
        Some(key) => Ok(WrappedKey::from_bytes(key)),
        // The kernel checks the room itself (EOVERFLOW); a size beyond it
        // here would be its bug, reported the same way.
        None => Err(Error {
            ioctl,
            what: what.to_owned(),
            source: std::io::Error::from_raw_os_error(libc::EOVERFLOW),
        }),
    }
}

/// BLKCRYPTOIMPORTKEY: imports the raw key `raw` on the block device
/// `disk` and returns it wrapped long-term.
pub fn import_key(disk: &File, what: &str, raw: &[u8]) -> Result<WrappedKey> {
    let mut room = Zeroizing::new([0u8; BLK_CRYPTO_MAX_HW_WRAPPED_KEY_SIZE]);
    let mut arg = BlkCryptoImportKeyArg {
        raw_key_ptr: raw.as_ptr() as u64,
        raw_key_size: raw.len() as u64,
        lt_key_ptr: room.as_mut_ptr() as u64,
        lt_key_size: room.len() as u64,
        ..Default::default()
    };
    // SAFETY: `arg` is a blk_crypto_import_key_arg whose pointers name
    // `raw` (read) and `room` (written, at most its size), both live.
    unsafe { ioctl(disk, BLKCRYPTOIMPORTKEY, &mut arg) }
        .map_err(ioctl_error("BLKCRYPTOIMPORTKEY", what))?;
    answered("BLKCRYPTOIMPORTKEY", what, room.as_ref(), arg.lt_key_size)
}

/// BLKCRYPTOGENERATEKEY: a new key the device made, wrapped long-term.
pub fn generate_key(disk: &File, what: &str) -> Result<WrappedKey> {
    let mut room = Zeroizing::new([0u8; BLK_CRYPTO_MAX_HW_WRAPPED_KEY_SIZE]);
    let mut arg = BlkCryptoGenerateKeyArg {
        lt_key_ptr: room.as_mut_ptr() as u64,
        lt_key_size: room.len() as u64,
        ..Default::default()
    };
    // SAFETY: `arg` is a blk_crypto_generate_key_arg whose pointer names
    // `room` (written, at most its size), live.
    unsafe { ioctl(disk, BLKCRYPTOGENERATEKEY, &mut arg) }
        .map_err(ioctl_error("BLKCRYPTOGENERATEKEY", what))?;
    answered("BLKCRYPTOGENERATEKEY", what, room.as_ref(), arg.lt_key_size)
}

/// BLKCRYPTOPREPAREKEY: the long-term wrapped key `lt` wrapped
/// ephemerally (what fscrypt takes with `FSCRYPT_ADD_KEY_FLAG_HW_WRAPPED`).
pub fn prepare_key(disk: &File, what: &str, lt: &[u8]) -> Result<WrappedKey> {
    let mut room = Zeroizing::new([0u8; BLK_CRYPTO_MAX_HW_WRAPPED_KEY_SIZE]);
    let mut arg = BlkCryptoPrepareKeyArg {
        lt_key_ptr: lt.as_ptr() as u64,
        lt_key_size: lt.len() as u64,
        eph_key_ptr: room.as_mut_ptr() as u64,
        eph_key_size: room.len() as u64,
        ..Default::default()
    };
    // SAFETY: `arg` is a blk_crypto_prepare_key_arg whose pointers name
    // `lt` (read) and `room` (written, at most its size), both live.
    unsafe { ioctl(disk, BLKCRYPTOPREPAREKEY, &mut arg) }
        .map_err(ioctl_error("BLKCRYPTOPREPAREKEY", what))?;
    answered("BLKCRYPTOPREPAREKEY", what, room.as_ref(), arg.eph_key_size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn struct_sizes_match_the_uapi_header() {
        assert_eq!(size_of::<BlkCryptoImportKeyArg>(), 64);
        assert_eq!(size_of::<BlkCryptoGenerateKeyArg>(), 48);
        assert_eq!(size_of::<BlkCryptoPrepareKeyArg>(), 64);
        assert_eq!(
            std::mem::offset_of!(BlkCryptoPrepareKeyArg, eph_key_size),
            24
        );
    }

    #[test]
    fn ioctl_numbers_match_the_uapi_header() {
        // Printed by a C program built against Debian trixie's
        // linux-libc-dev (7.3) <linux/blk-crypto.h> on x86_64.
        assert_eq!(BLKCRYPTOIMPORTKEY, 0xc040_1289);
        assert_eq!(BLKCRYPTOGENERATEKEY, 0xc030_128a);
        assert_eq!(BLKCRYPTOPREPAREKEY, 0xc040_128b);
    }

    #[test]
    fn wrapped_keys_are_not_printed() {
        let key = WrappedKey::from_bytes(&[0xab; 76]);
        assert_eq!(format!("{key:?}"), "WrappedKey(76 bytes)");
        assert_eq!(key.len(), 76);
        assert_eq!(key.bytes()[0], 0xab);
    }

    #[test]
    fn an_answer_larger_than_its_room_is_an_error() {
        let room = [1u8; 8];
        assert_eq!(answered("X", "d", &room, 4).unwrap().bytes(), &[1; 4]);
        let e = answered("X", "d", &room, 9).unwrap_err();
        assert!(e.to_string().starts_with("X on d: "), "{e}");
    }

    #[test]
    fn the_calls_name_the_ioctl_and_errno() {
        // Not a block device: the kernel refuses the ioctl.
        let file = File::open("/").expect("open /");
        let e = prepare_key(&file, "/", &[0; 76]).expect_err("/ is no disk");
        assert!(
            e.to_string().starts_with("BLKCRYPTOPREPAREKEY on /: E"),
            "{e}"
        );
    }
}
