//! The fscrypt user API: structs and ioctl numbers of Linux's
//! `include/uapi/linux/fscrypt.h`, written out here (the runner is built on
//! a host whose headers may be older than the guest kernel), with safe
//! wrappers. Documentation/filesystems/fscrypt.rst, "User API", describes
//! every call.
//!
//! Sizes and numbers are checked by unit tests against the values the
//! header defines.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

use zeroize::{Zeroize, Zeroizing};

// --- constants (names as in the header) ----------------------------------------

/// `FSCRYPT_POLICY_V2`: the policy version with HKDF and key identifiers.
pub const FSCRYPT_POLICY_V2: u8 = 2;
/// `FSCRYPT_KEY_IDENTIFIER_SIZE`.
pub const FSCRYPT_KEY_IDENTIFIER_SIZE: usize = 16;
/// `FSCRYPT_KEY_DESCRIPTOR_SIZE` (v1 policies; only for the ioctl size).
pub const FSCRYPT_KEY_DESCRIPTOR_SIZE: usize = 8;
/// `FSCRYPT_MAX_KEY_SIZE`: the largest master key.
pub const FSCRYPT_MAX_KEY_SIZE: usize = 64;
/// `FS_IV_NONCE_SIZE` (fs/crypto): the per-file nonce.
pub const FSCRYPT_FILE_NONCE_SIZE: usize = 16;

/// `FSCRYPT_MODE_AES_256_XTS`: contents encryption.
pub const FSCRYPT_MODE_AES_256_XTS: u8 = 1;
/// `FSCRYPT_MODE_AES_256_CTS`: filenames encryption.
pub const FSCRYPT_MODE_AES_256_CTS: u8 = 4;

/// `FSCRYPT_POLICY_FLAGS_PAD_32`: filenames padded to 32 bytes.
pub const FSCRYPT_POLICY_FLAGS_PAD_32: u8 = 0x03;
/// `FSCRYPT_POLICY_FLAG_DIRECT_KEY`.
pub const FSCRYPT_POLICY_FLAG_DIRECT_KEY: u8 = 0x04;
/// `FSCRYPT_POLICY_FLAG_IV_INO_LBLK_64`.
pub const FSCRYPT_POLICY_FLAG_IV_INO_LBLK_64: u8 = 0x08;
/// `FSCRYPT_POLICY_FLAG_IV_INO_LBLK_32`.
pub const FSCRYPT_POLICY_FLAG_IV_INO_LBLK_32: u8 = 0x10;

/// `FSCRYPT_KEY_SPEC_TYPE_IDENTIFIER`: a v2 key, named by its identifier.
pub const FSCRYPT_KEY_SPEC_TYPE_IDENTIFIER: u32 = 2;

/// `FSCRYPT_ADD_KEY_FLAG_HW_WRAPPED` (Linux 6.15+): the key added is a
/// hardware-wrapped key in ephemerally-wrapped form.
pub const FSCRYPT_ADD_KEY_FLAG_HW_WRAPPED: u32 = 0x1;
/// `FSCRYPT_MAX_HW_WRAPPED_KEY_SIZE` (fs/crypto/fscrypt_private.h: blk-crypto's
/// `BLK_CRYPTO_MAX_HW_WRAPPED_KEY_SIZE`): the largest hardware-wrapped key.
pub const FSCRYPT_MAX_HW_WRAPPED_KEY_SIZE: usize = 128;

/// `FSCRYPT_KEY_REMOVAL_STATUS_FLAG_FILES_BUSY`.
pub const FSCRYPT_KEY_REMOVAL_STATUS_FLAG_FILES_BUSY: u32 = 0x1;
/// `FSCRYPT_KEY_REMOVAL_STATUS_FLAG_OTHER_USERS`.
pub const FSCRYPT_KEY_REMOVAL_STATUS_FLAG_OTHER_USERS: u32 = 0x2;

/// `FSCRYPT_KEY_STATUS_ABSENT`.
pub const FSCRYPT_KEY_STATUS_ABSENT: u32 = 1;
/// `FSCRYPT_KEY_STATUS_PRESENT`.
pub const FSCRYPT_KEY_STATUS_PRESENT: u32 = 2;
/// `FSCRYPT_KEY_STATUS_INCOMPLETELY_REMOVED`.
pub const FSCRYPT_KEY_STATUS_INCOMPLETELY_REMOVED: u32 = 3;

// --- structs ------------------------------------------------------------------

/// `struct fscrypt_policy_v1` (only its size matters: it names
/// FS_IOC_SET_ENCRYPTION_POLICY).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct FscryptPolicyV1 {
    /// `version` (0 for v1).
    pub version: u8,
    /// `contents_encryption_mode`.
    pub contents_encryption_mode: u8,
    /// `filenames_encryption_mode`.
    pub filenames_encryption_mode: u8,
    /// `flags`.
    pub flags: u8,
    /// `master_key_descriptor`.
    pub master_key_descriptor: [u8; FSCRYPT_KEY_DESCRIPTOR_SIZE],
}

/// `struct fscrypt_policy_v2`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FscryptPolicyV2 {
    /// `version`: [`FSCRYPT_POLICY_V2`].
    pub version: u8,
    /// `contents_encryption_mode`.
    pub contents_encryption_mode: u8,
    /// `filenames_encryption_mode`.
    pub filenames_encryption_mode: u8,
    /// `flags`.
    pub flags: u8,
    /// `log2_data_unit_size` (Linux 6.7+; was `__reserved[0]`, 0 means the
    /// filesystem block size).
    pub log2_data_unit_size: u8,
    /// `__reserved`.
    pub reserved: [u8; 3],
    /// `master_key_identifier`.
    pub master_key_identifier: [u8; FSCRYPT_KEY_IDENTIFIER_SIZE],
}

/// `struct fscrypt_key_specifier` with `type` IDENTIFIER or DESCRIPTOR; the
/// union is the 32 reserved bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct FscryptKeySpecifier {
    /// `type`: one of `FSCRYPT_KEY_SPEC_TYPE_*`.
    pub spec_type: u32,
    /// `__reserved`.
    pub reserved: u32,
    /// The union `u`: the identifier in its first 16 bytes.
    pub u: [u8; 32],
}

impl FscryptKeySpecifier {
    /// A v2 key specifier naming `identifier`.
    pub fn identifier(identifier: &KeyIdentifier) -> Self {
        let mut u = [0u8; 32];
        u[..FSCRYPT_KEY_IDENTIFIER_SIZE].copy_from_slice(&identifier.0);
        FscryptKeySpecifier {
            spec_type: FSCRYPT_KEY_SPEC_TYPE_IDENTIFIER,
            reserved: 0,
            u,
        }
    }
}

/// `struct fscrypt_add_key_arg` (without the flexible `raw[]`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct FscryptAddKeyArg {
    /// `key_spec`: in, the type; out, the identifier.
    pub key_spec: FscryptKeySpecifier,
    /// `raw_size`: bytes of `raw[]`.
    pub raw_size: u32,
    /// `key_id`: a keyring key of type fscrypt-provisioning, or 0.
    pub key_id: u32,
    /// `flags` (Linux 6.15+; was `__reserved[0]`): 0 for a raw key.
    pub flags: u32,
    /// `__reserved`.
    pub reserved: [u32; 7],
}

/// `struct fscrypt_remove_key_arg`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct FscryptRemoveKeyArg {
    /// `key_spec`.
    pub key_spec: FscryptKeySpecifier,
    /// `removal_status_flags` (out).
    pub removal_status_flags: u32,
    /// `__reserved`.
    pub reserved: [u32; 5],
}

/// `struct fscrypt_get_key_status_arg`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct FscryptGetKeyStatusArg {
    /// `key_spec` (in).
    pub key_spec: FscryptKeySpecifier,
    /// `__reserved`.
    pub reserved: [u32; 6],
    /// `status` (out): `FSCRYPT_KEY_STATUS_*`.
    pub status: u32,
    /// `status_flags` (out).
    pub status_flags: u32,
    /// `user_count` (out).
    pub user_count: u32,
    /// `__out_reserved`.
    pub out_reserved: [u32; 13],
}

/// `struct fscrypt_get_policy_ex_arg` for a v2 policy (the union's largest
/// member).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct FscryptGetPolicyExArg {
    /// `policy_size` (in: room; out: the policy's size).
    pub policy_size: u64,
    /// The union `policy`.
    pub policy: FscryptPolicyV2,
}

/// FS_IOC_ADD_ENCRYPTION_KEY's argument with its raw key appended; the key
/// bytes are wiped when it is dropped.
#[repr(C)]
struct AddKeyRequest {
    arg: FscryptAddKeyArg,
    raw: [u8; FSCRYPT_MAX_KEY_SIZE],
}

impl Drop for AddKeyRequest {
    fn drop(&mut self) {
        self.raw.zeroize();
    }
}

/// FS_IOC_ADD_ENCRYPTION_KEY's argument with room for a hardware-wrapped
/// key appended; wiped when dropped.
#[repr(C)]
struct AddWrappedKeyRequest {
    arg: FscryptAddKeyArg,
    raw: [u8; FSCRYPT_MAX_HW_WRAPPED_KEY_SIZE],
}

impl Drop for AddWrappedKeyRequest {
    fn drop(&mut self) {
        self.raw.zeroize();
    }
}

// --- ioctl numbers (asm-generic/ioctl.h) -----------------------------------------

const IOC_WRITE: u32 = 1;
const IOC_READ: u32 = 2;

/// `_IOC(dir, type, nr, size)` of asm-generic/ioctl.h (x86 uses it).
const fn ioc(dir: u32, ty: u8, nr: u8, size: usize) -> libc::c_ulong {
    ((dir << 30) | ((size as u32) << 16) | ((ty as u32) << 8) | nr as u32) as libc::c_ulong
}

/// `FS_IOC_SET_ENCRYPTION_POLICY`: `_IOR('f', 19, struct fscrypt_policy_v1)`
/// (the number names the v1 struct; the kernel reads the version byte).
pub const FS_IOC_SET_ENCRYPTION_POLICY: libc::c_ulong =
    ioc(IOC_READ, b'f', 19, size_of::<FscryptPolicyV1>());
/// `FS_IOC_GET_ENCRYPTION_POLICY_EX`: `_IOWR('f', 22, __u8[9])`.
pub const FS_IOC_GET_ENCRYPTION_POLICY_EX: libc::c_ulong = ioc(IOC_READ | IOC_WRITE, b'f', 22, 9);
/// `FS_IOC_ADD_ENCRYPTION_KEY`: `_IOWR('f', 23, struct fscrypt_add_key_arg)`.
pub const FS_IOC_ADD_ENCRYPTION_KEY: libc::c_ulong = ioc(
    IOC_READ | IOC_WRITE,
    b'f',
    23,
    size_of::<FscryptAddKeyArg>(),
);
/// `FS_IOC_REMOVE_ENCRYPTION_KEY`: `_IOWR('f', 24, struct fscrypt_remove_key_arg)`.
pub const FS_IOC_REMOVE_ENCRYPTION_KEY: libc::c_ulong = ioc(
    IOC_READ | IOC_WRITE,
    b'f',
    24,
    size_of::<FscryptRemoveKeyArg>(),
);
/// `FS_IOC_REMOVE_ENCRYPTION_KEY_ALL_USERS`: `_IOWR('f', 25, struct fscrypt_remove_key_arg)`.
pub const FS_IOC_REMOVE_ENCRYPTION_KEY_ALL_USERS: libc::c_ulong = ioc(
    IOC_READ | IOC_WRITE,
    b'f',
    25,
    size_of::<FscryptRemoveKeyArg>(),
);
/// `FS_IOC_GET_ENCRYPTION_KEY_STATUS`: `_IOWR('f', 26, struct fscrypt_get_key_status_arg)`.
pub const FS_IOC_GET_ENCRYPTION_KEY_STATUS: libc::c_ulong = ioc(
    IOC_READ | IOC_WRITE,
    b'f',
    26,
    size_of::<FscryptGetKeyStatusArg>(),
);
/// `FS_IOC_GET_ENCRYPTION_NONCE`: `_IOR('f', 27, __u8[16])`.
pub const FS_IOC_GET_ENCRYPTION_NONCE: libc::c_ulong =
    ioc(IOC_READ, b'f', 27, FSCRYPT_FILE_NONCE_SIZE);

// --- safe wrappers ----------------------------------------------------------------

/// A failed ioctl (fscrypt's, or blk-crypto's of [`crate::blk_crypto`]):
/// which one and the errno.
#[derive(Debug, thiserror::Error)]
#[error("{ioctl} on {what}: {}", crate::sys::Errno(source.raw_os_error().unwrap_or(0)))]
pub struct Error {
    /// The ioctl's name.
    pub ioctl: &'static str,
    /// The file it was issued on.
    pub what: String,
    /// The errno.
    #[source]
    pub source: io::Error,
}

/// Result alias for this module.
pub type Result<T> = std::result::Result<T, Error>;

/// A v2 master key identifier (public: a hash of the key).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyIdentifier(pub [u8; FSCRYPT_KEY_IDENTIFIER_SIZE]);

impl KeyIdentifier {
    /// Lower-case hex, as `fscrypt` and the kernel's keyring show it.
    pub fn to_hex(&self) -> String {
        crate::data::hex(&self.0)
    }
}

/// A raw master key; wiped when dropped. Never printed.
pub struct MasterKey(Zeroizing<[u8; FSCRYPT_MAX_KEY_SIZE]>);

impl MasterKey {
    /// A fresh random 64-byte key from the kernel's CSPRNG.
    pub fn random() -> crate::sys::Result<MasterKey> {
        let mut key = Zeroizing::new([0u8; FSCRYPT_MAX_KEY_SIZE]);
        crate::sys::getrandom(key.as_mut())?;
        Ok(MasterKey(key))
    }
}

impl MasterKey {
    /// The key generated from `key_seed` ([`crate::data::master_key_bytes`]):
    /// reproducible from the seed, which is all a report names.
    pub fn from_seed(key_seed: u64) -> MasterKey {
        MasterKey(crate::data::master_key_bytes(key_seed))
    }
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

/// Issues `ioctl(fd, request, arg)`.
///
/// # Safety
/// `arg` must point to a live value of the type `request` expects.
pub(crate) unsafe fn ioctl<T>(file: &File, request: libc::c_ulong, arg: *mut T) -> io::Result<()> {
    loop {
        // SAFETY: the caller guarantees `arg` matches `request`.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), request, arg) };
        if rc >= 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINTR) {
            return Err(err);
        }
    }
}

/// Turns an ioctl's `io::Error` into an [`Error`] naming it and `what`.
pub(crate) fn ioctl_error<'a>(
    ioctl: &'static str,
    what: &'a str,
) -> impl FnOnce(io::Error) -> Error + 'a {
    move |source| Error {
        ioctl,
        what: what.to_owned(),
        source,
    }
}

/// FS_IOC_ADD_ENCRYPTION_KEY: adds `key` to the filesystem of `file` as a v2
/// key and returns its identifier. The copy handed to the kernel is wiped.
pub fn add_key(file: &File, what: &str, key: &MasterKey) -> Result<KeyIdentifier> {
    let mut req = AddKeyRequest {
        arg: FscryptAddKeyArg {
            key_spec: FscryptKeySpecifier {
                spec_type: FSCRYPT_KEY_SPEC_TYPE_IDENTIFIER,
                ..Default::default()
            },
            raw_size: FSCRYPT_MAX_KEY_SIZE as u32,
            ..Default::default()
        },
        raw: *key.0,
    };
    // SAFETY: `req` is a fscrypt_add_key_arg followed by raw_size key bytes.
    unsafe { ioctl(file, FS_IOC_ADD_ENCRYPTION_KEY, &mut req.arg) }
        .map_err(ioctl_error("FS_IOC_ADD_ENCRYPTION_KEY", what))?;
    let mut id = [0u8; FSCRYPT_KEY_IDENTIFIER_SIZE];
    id.copy_from_slice(&req.arg.key_spec.u[..FSCRYPT_KEY_IDENTIFIER_SIZE]);
    Ok(KeyIdentifier(id))
}

/// FS_IOC_ADD_ENCRYPTION_KEY with `FSCRYPT_ADD_KEY_FLAG_HW_WRAPPED`: adds
/// the hardware-wrapped key `eph_key`, in ephemerally-wrapped form (as
/// BLKCRYPTOPREPAREKEY returns it), to the filesystem of `file` as a v2
/// key and returns its identifier. fscrypt asks the block device for the
/// key's software secret (blk-crypto's `derive_sw_secret`), from which it
/// derives the identifier; file contents are encrypted with the key the
/// device derives itself. A key longer than
/// [`FSCRYPT_MAX_HW_WRAPPED_KEY_SIZE`] is refused with EINVAL here, as the
/// kernel would.
pub fn add_hw_wrapped_key(file: &File, what: &str, eph_key: &[u8]) -> Result<KeyIdentifier> {
    let mut req = AddWrappedKeyRequest {
        arg: FscryptAddKeyArg {
            key_spec: FscryptKeySpecifier {
                spec_type: FSCRYPT_KEY_SPEC_TYPE_IDENTIFIER,
                ..Default::default()
            },
            raw_size: eph_key.len() as u32,
            flags: FSCRYPT_ADD_KEY_FLAG_HW_WRAPPED,
            ..Default::default()
        },
        raw: [0; FSCRYPT_MAX_HW_WRAPPED_KEY_SIZE],
    };
    let Some(room) = req.raw.get_mut(..eph_key.len()) else {
        return Err(Error {
            ioctl: "FS_IOC_ADD_ENCRYPTION_KEY",
            what: what.to_owned(),
            source: io::Error::from_raw_os_error(libc::EINVAL),
        });
    };
    room.copy_from_slice(eph_key);
    // SAFETY: `req` is a fscrypt_add_key_arg followed by raw_size key bytes.
    unsafe { ioctl(file, FS_IOC_ADD_ENCRYPTION_KEY, &mut req.arg) }
        .map_err(ioctl_error("FS_IOC_ADD_ENCRYPTION_KEY", what))?;
    let mut id = [0u8; FSCRYPT_KEY_IDENTIFIER_SIZE];
    id.copy_from_slice(&req.arg.key_spec.u[..FSCRYPT_KEY_IDENTIFIER_SIZE]);
    Ok(KeyIdentifier(id))
}

/// FS_IOC_SET_ENCRYPTION_POLICY: sets a v2 `policy` on the empty
/// directory `dir`.
pub fn set_policy(dir: &File, what: &str, policy: &FscryptPolicyV2) -> Result<()> {
    let mut policy = *policy;
    // SAFETY: the kernel reads the version byte, then a fscrypt_policy_v2.
    unsafe { ioctl(dir, FS_IOC_SET_ENCRYPTION_POLICY, &mut policy) }
        .map_err(ioctl_error("FS_IOC_SET_ENCRYPTION_POLICY", what))
}

/// FS_IOC_GET_ENCRYPTION_POLICY_EX: the v2 policy of `file`. A v1 policy
/// (smaller) is returned with `version` 0 and the rest zero.
pub fn get_policy(file: &File, what: &str) -> Result<FscryptPolicyV2> {
    let mut arg = FscryptGetPolicyExArg {
        policy_size: size_of::<FscryptPolicyV2>() as u64,
        ..Default::default()
    };
    // SAFETY: `arg` is a fscrypt_get_policy_ex_arg with room for a v2 policy.
    unsafe { ioctl(file, FS_IOC_GET_ENCRYPTION_POLICY_EX, &mut arg) }
        .map_err(ioctl_error("FS_IOC_GET_ENCRYPTION_POLICY_EX", what))?;
    Ok(arg.policy)
}

/// FS_IOC_GET_ENCRYPTION_NONCE: the 16-byte nonce of an encrypted file
/// (public: it is stored in the clear in the file's xattr).
pub fn get_nonce(file: &File, what: &str) -> Result<[u8; FSCRYPT_FILE_NONCE_SIZE]> {
    let mut nonce = [0u8; FSCRYPT_FILE_NONCE_SIZE];
    // SAFETY: the kernel writes 16 bytes to `nonce`.
    unsafe { ioctl(file, FS_IOC_GET_ENCRYPTION_NONCE, &mut nonce) }
        .map_err(ioctl_error("FS_IOC_GET_ENCRYPTION_NONCE", what))?;
    Ok(nonce)
}

/// FS_IOC_REMOVE_ENCRYPTION_KEY: removes the calling user's claim to the
/// key; returns `removal_status_flags`.
pub fn remove_key(file: &File, what: &str, id: &KeyIdentifier) -> Result<u32> {
    let mut arg = FscryptRemoveKeyArg {
        key_spec: FscryptKeySpecifier::identifier(id),
        ..Default::default()
    };
    // SAFETY: `arg` is a fscrypt_remove_key_arg.
    unsafe { ioctl(file, FS_IOC_REMOVE_ENCRYPTION_KEY, &mut arg) }
        .map_err(ioctl_error("FS_IOC_REMOVE_ENCRYPTION_KEY", what))?;
    Ok(arg.removal_status_flags)
}

/// FS_IOC_GET_ENCRYPTION_KEY_STATUS: returns (status, status_flags,
/// user_count).
pub fn key_status(file: &File, what: &str, id: &KeyIdentifier) -> Result<(u32, u32, u32)> {
    let mut arg = FscryptGetKeyStatusArg {
        key_spec: FscryptKeySpecifier::identifier(id),
        ..Default::default()
    };
    // SAFETY: `arg` is a fscrypt_get_key_status_arg.
    unsafe { ioctl(file, FS_IOC_GET_ENCRYPTION_KEY_STATUS, &mut arg) }
        .map_err(ioctl_error("FS_IOC_GET_ENCRYPTION_KEY_STATUS", what))?;
    Ok((arg.status, arg.status_flags, arg.user_count))
}

/// The name of a contents or filenames mode: its UAPI constant's name
/// (`FSCRYPT_MODE_AES_256_XTS` is `AES-256-XTS`). Not fscrypt's
/// `friendly_name`, which has changed between kernel versions for some
/// modes (AES-256-CTS-CBC became AES-256-CBC-CTS).
pub fn mode_name(mode: u8) -> &'static str {
    match mode {
        FSCRYPT_MODE_AES_256_XTS => "AES-256-XTS",
        FSCRYPT_MODE_AES_256_CTS => "AES-256-CTS",
        5 => "AES-128-CBC",
        6 => "AES-128-CTS",
        7 => "SM4-XTS",
        8 => "SM4-CTS",
        9 => "Adiantum",
        10 => "AES-256-HCTR2",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn struct_sizes_match_the_uapi_header() {
        assert_eq!(size_of::<FscryptPolicyV1>(), 12);
        assert_eq!(size_of::<FscryptPolicyV2>(), 24);
        assert_eq!(size_of::<FscryptKeySpecifier>(), 40);
        assert_eq!(size_of::<FscryptAddKeyArg>(), 80);
        assert_eq!(size_of::<FscryptRemoveKeyArg>(), 64);
        assert_eq!(size_of::<FscryptGetKeyStatusArg>(), 128);
        assert_eq!(size_of::<FscryptGetPolicyExArg>(), 32);
        assert_eq!(size_of::<AddKeyRequest>(), 80 + 64);
        assert_eq!(size_of::<AddWrappedKeyRequest>(), 80 + 128);
        assert_eq!(std::mem::offset_of!(FscryptAddKeyArg, flags), 48);
        assert_eq!(std::mem::offset_of!(AddWrappedKeyRequest, raw), 80);
        assert_eq!(std::mem::offset_of!(FscryptAddKeyArg, raw_size), 40);
        assert_eq!(std::mem::offset_of!(FscryptAddKeyArg, key_id), 44);
        assert_eq!(std::mem::offset_of!(AddKeyRequest, raw), 80);
        assert_eq!(
            std::mem::offset_of!(FscryptPolicyV2, master_key_identifier),
            8
        );
        assert_eq!(
            std::mem::offset_of!(FscryptRemoveKeyArg, removal_status_flags),
            40
        );
        assert_eq!(std::mem::offset_of!(FscryptGetKeyStatusArg, status), 64);
        assert_eq!(std::mem::offset_of!(FscryptGetPolicyExArg, policy), 8);
    }

    #[test]
    fn ioctl_numbers_match_the_uapi_header() {
        // Values of the x86_64 header's macros (checked with a C program
        // that prints them).
        assert_eq!(FS_IOC_SET_ENCRYPTION_POLICY, 0x800c_6613);
        assert_eq!(FS_IOC_GET_ENCRYPTION_POLICY_EX, 0xc009_6616);
        assert_eq!(FS_IOC_ADD_ENCRYPTION_KEY, 0xc050_6617);
        assert_eq!(FS_IOC_REMOVE_ENCRYPTION_KEY, 0xc040_6618);
        assert_eq!(FS_IOC_REMOVE_ENCRYPTION_KEY_ALL_USERS, 0xc040_6619);
        assert_eq!(FS_IOC_GET_ENCRYPTION_KEY_STATUS, 0xc080_661a);
        assert_eq!(FS_IOC_GET_ENCRYPTION_NONCE, 0x8010_661b);
    }

    #[test]
    fn key_specifier_puts_the_identifier_first() {
        let id = KeyIdentifier([0xab; 16]);
        let spec = FscryptKeySpecifier::identifier(&id);
        assert_eq!(spec.spec_type, FSCRYPT_KEY_SPEC_TYPE_IDENTIFIER);
        assert_eq!(&spec.u[..16], &[0xab; 16]);
        assert_eq!(&spec.u[16..], &[0; 16]);
        assert_eq!(id.to_hex(), "ab".repeat(16));
    }

    #[test]
    fn master_key_is_random_and_not_printed() {
        let a = MasterKey::random().expect("getrandom");
        let b = MasterKey::random().expect("getrandom");
        assert_ne!(*a.0, *b.0);
        assert_eq!(format!("{a:?}"), "MasterKey(..)");
    }

    #[test]
    fn ioctl_errors_name_the_call_and_errno() {
        let file = File::open("/").expect("open /");
        let e = get_nonce(&file, "/").expect_err("/ is not encrypted");
        let text = e.to_string();
        assert!(
            text.starts_with("FS_IOC_GET_ENCRYPTION_NONCE on /: E"),
            "{text}"
        );
    }
}
