//! The key manager: the engine's hardware-wrapped keys
//! (Documentation/block/inline-encryption.rst, "Hardware-wrapped keys";
//! docs/PROTOCOL.md). The kernel never sees the key that encrypts data:
//! it holds wrapped blobs, the engine unwraps them inside.
//!
//! - the *long-term wrapping key* and the *device id* are derived from
//!   the device secret ([`super::device_secret`]) with the SP 800-108 KDF
//!   of [`super::hw_kdf`] under icelab's own label ([`LABEL`]) and
//!   contexts: long-term blobs survive resets, and restarts with the same
//!   secret;
//! - the *ephemeral wrapping key* is random and renewed at every device
//!   reset ([`KeyManager::renew_ephemeral_key`]): an ephemerally-wrapped
//!   key is good for one boot of the engine only; its id, the *boot id*,
//!   is random too;
//! - IMPORT_KEY seals a raw 32-byte hardware key long-term, GENERATE_KEY a
//!   random one; PREPARE_KEY opens a long-term blob and seals the key
//!   ephemerally; DERIVE_SW_SECRET opens an ephemeral blob and answers the
//!   software secret; programming a keyslot with a hardware-wrapped key
//!   opens an ephemeral blob and derives the inline encryption key
//!   ([`super::hw_kdf`]).
//!
//! Hardware keys exist only unwrapped on the stack of these calls (wiped,
//! and the engine scrubs the stack after each), wrapping keys and the
//! device secret only in the key arena. Nothing here logs or traces key
//! material; the engine logs fingerprints.

use super::device_secret::DeviceSecret;
use super::hw_kdf::{self, HW_KEY_SIZE, INLINE_KEY_SIZE, SW_SECRET_SIZE};
use super::secure::SecureMemoryError;
use super::wrapped_key::{BLOB_SIZE, KeyId, Kind, OpenError, WRAPPING_KEY_SIZE, WrappingKey};
use crate::protocol::Status;
use icelab_contract::device::reject_kind;
use std::sync::RwLock;
use zeroize::Zeroizing;

/// The SP 800-108 Label of the key manager's own derivations (the
/// hardware KDF's constants are for the hardware key only).
pub const LABEL: &[u8] = b"icelab key manager";
/// Context of the long-term wrapping key.
pub const LONG_TERM_CONTEXT: &[u8] = b"long-term wrapping key";
/// Context of the device id.
pub const DEVICE_ID_CONTEXT: &[u8] = b"device id";

/// Why the key manager refuses a raw key or a blob. All are the guest's
/// doing and answered IOERR, except a request to an engine that offers no
/// hardware-wrapped keys (UNSUPP).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyManagerError {
    /// The engine's `key_types` lacks hardware-wrapped keys.
    #[error(
        "guest sent a hardware-wrapped key request, but the engine's key_types offer none \
         (--key-types)"
    )]
    NotOffered,
    /// IMPORT_KEY of a raw key that is not a hardware key.
    #[error(
        "guest imported a {got}-byte raw key; a hardware key is {HW_KEY_SIZE} bytes (the KDF \
         is keyed by it)"
    )]
    RawKeySize {
        /// key_size the guest sent.
        got: u32,
    },
    /// A blob that does not open (see [`OpenError`]).
    #[error("guest gave a wrapped key the engine refuses: {0}")]
    Blob(OpenError),
}

impl KeyManagerError {
    /// The status the guest gets.
    pub const fn status(&self) -> Status {
        match self {
            Self::NotOffered => Status::Unsupp,
            Self::RawKeySize { .. } | Self::Blob(_) => Status::IoErr,
        }
    }

    /// A stable short name for stats and traces (`reject_kind`).
    pub const fn kind(&self) -> &'static str {
        match self {
            Self::NotOffered => reject_kind::WRAPPED_KEYS_NOT_OFFERED,
            Self::RawKeySize { .. } => reject_kind::WRONG_RAW_KEY_SIZE,
            Self::Blob(OpenError::Size { .. } | OpenError::Header) => {
                reject_kind::WRAPPED_KEY_MALFORMED
            }
            Self::Blob(OpenError::WrongKind { .. }) => reject_kind::WRAPPED_KEY_WRONG_KIND,
            Self::Blob(OpenError::OtherKey {
                kind: Kind::LongTerm,
            }) => reject_kind::WRAPPED_KEY_FOREIGN,
            Self::Blob(OpenError::OtherKey {
                kind: Kind::Ephemeral,
            }) => reject_kind::WRAPPED_KEY_STALE,
            Self::Blob(OpenError::Unauthentic { .. }) => reject_kind::WRAPPED_KEY_UNAUTHENTIC,
        }
    }
}

/// A wrapped key as the engine answers it (`key_size` = [`BLOB_SIZE`]).
pub type Blob = [u8; BLOB_SIZE];

/// The key manager of one engine.
pub struct KeyManager {
    long_term: WrappingKey,
    ephemeral: RwLock<WrappingKey>,
}

impl std::fmt::Debug for KeyManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyManager")
            .field("long_term", &self.long_term)
            .finish_non_exhaustive()
    }
}

impl KeyManager {
    /// A key manager rooted in `secret`, with a fresh ephemeral key. The
    /// caller scrubs the stack.
    pub fn new(secret: &DeviceSecret) -> Result<Self, SecureMemoryError> {
        let mut key = Zeroizing::new([0u8; WRAPPING_KEY_SIZE]);
        hw_kdf::counter_mode_cmac(secret.bytes(), LABEL, LONG_TERM_CONTEXT, &mut key[..]);
        let mut id = [0u8; 16];
        hw_kdf::counter_mode_cmac(secret.bytes(), LABEL, DEVICE_ID_CONTEXT, &mut id);
        let device_id: KeyId = id[..8].try_into().expect("8 bytes");
        Ok(Self {
            long_term: WrappingKey::new(&key, device_id, Kind::LongTerm)?,
            ephemeral: RwLock::new(WrappingKey::random(Kind::Ephemeral)?),
        })
    }

    /// The device id: names the device secret in long-term blobs (not
    /// secret; derived one way from it).
    pub fn device_id(&self) -> KeyId {
        self.long_term.id()
    }

    /// The boot id: names the current ephemeral wrapping key.
    pub fn boot_id(&self) -> KeyId {
        self.read_ephemeral().id()
    }

    /// A new ephemeral wrapping key: every ephemerally-wrapped key of the
    /// previous boot is refused from now on (`wrapped-key-stale`).
    pub fn renew_ephemeral_key(&self) -> Result<(), SecureMemoryError> {
        let fresh = WrappingKey::random(Kind::Ephemeral)?;
        *self
            .ephemeral
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = fresh;
        Ok(())
    }

    /// IMPORT_KEY: `raw` (a 32-byte hardware key) sealed long-term; the
    /// key itself for the caller's fingerprint.
    pub fn import(
        &self,
        raw: &[u8],
    ) -> Result<(Blob, Zeroizing<[u8; HW_KEY_SIZE]>), KeyManagerError> {
        let hw_key: &[u8; HW_KEY_SIZE] =
            raw.try_into().map_err(|_| KeyManagerError::RawKeySize {
                got: u32::try_from(raw.len()).unwrap_or(u32::MAX),
            })?;
        Ok((self.long_term.seal(hw_key), Zeroizing::new(*hw_key)))
    }

    /// GENERATE_KEY: a random hardware key sealed long-term.
    pub fn generate(&self) -> (Blob, Zeroizing<[u8; HW_KEY_SIZE]>) {
        let mut hw_key = Zeroizing::new([0u8; HW_KEY_SIZE]);
        rand::fill(&mut hw_key[..]);
        (self.long_term.seal(&hw_key), hw_key)
    }

    /// PREPARE_KEY: the key of a long-term blob, sealed ephemerally.
    pub fn prepare(
        &self,
        long_term: &[u8],
    ) -> Result<(Blob, Zeroizing<[u8; HW_KEY_SIZE]>), KeyManagerError> {
        let hw_key = self
            .long_term
            .open(long_term)
            .map_err(KeyManagerError::Blob)?;
        Ok((self.read_ephemeral().seal(&hw_key), hw_key))
    }

    /// The hardware key of an ephemeral blob of this boot.
    pub fn open_ephemeral(
        &self,
        ephemeral: &[u8],
    ) -> Result<Zeroizing<[u8; HW_KEY_SIZE]>, KeyManagerError> {
        self.read_ephemeral()
            .open(ephemeral)
            .map_err(KeyManagerError::Blob)
    }

    /// DERIVE_SW_SECRET: the software secret of an ephemeral blob.
    pub fn derive_sw_secret(
        &self,
        ephemeral: &[u8],
    ) -> Result<Zeroizing<[u8; SW_SECRET_SIZE]>, KeyManagerError> {
        Ok(hw_kdf::software_secret(&*self.open_ephemeral(ephemeral)?))
    }

    /// KEYSLOT_PROGRAM of a hardware-wrapped key: the inline encryption
    /// key of an ephemeral blob.
    pub fn inline_key(
        &self,
        ephemeral: &[u8],
    ) -> Result<Zeroizing<[u8; INLINE_KEY_SIZE]>, KeyManagerError> {
        Ok(hw_kdf::inline_encryption_key(
            &*self.open_ephemeral(ephemeral)?,
        ))
    }

    fn read_ephemeral(&self) -> std::sync::RwLockReadGuard<'_, WrappingKey> {
        self.ephemeral
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manager() -> KeyManager {
        KeyManager::new(&DeviceSecret::random().expect("secret")).expect("key manager")
    }

    const RAW: [u8; 32] = [0x11; 32];

    #[test]
    fn import_prepare_derive_and_program_agree_with_the_kdf() {
        let km = manager();
        let (long_term, key) = km.import(&RAW).expect("import");
        assert_eq!(*key, RAW);
        let (ephemeral, key) = km.prepare(&long_term).expect("prepare");
        assert_eq!(*key, RAW);
        assert_eq!(
            km.derive_sw_secret(&ephemeral).expect("derive"),
            hw_kdf::software_secret(&RAW)
        );
        assert_eq!(
            km.inline_key(&ephemeral).expect("inline key"),
            hw_kdf::inline_encryption_key(&RAW)
        );
        let (generated, key) = km.generate();
        let (other, _) = km.generate();
        assert_ne!(generated, other);
        let (ephemeral, _) = km.prepare(&generated).expect("prepare");
        assert_eq!(km.open_ephemeral(&ephemeral).expect("open"), key);
    }

    #[test]
    fn refusals_have_their_own_kinds() {
        let km = manager();
        let (long_term, _) = km.import(&RAW).expect("import");
        let (ephemeral, _) = km.prepare(&long_term).expect("prepare");
        let kind = |error: KeyManagerError| (error.kind(), error.status());
        assert_eq!(
            kind(km.import(&[0; 64]).unwrap_err()),
            (reject_kind::WRONG_RAW_KEY_SIZE, Status::IoErr)
        );
        assert_eq!(
            kind(km.derive_sw_secret(&long_term).unwrap_err()),
            (reject_kind::WRAPPED_KEY_WRONG_KIND, Status::IoErr)
        );
        assert_eq!(
            kind(km.inline_key(&long_term).unwrap_err()).0,
            reject_kind::WRAPPED_KEY_WRONG_KIND
        );
        assert_eq!(
            kind(km.prepare(&ephemeral).unwrap_err()).0,
            reject_kind::WRAPPED_KEY_WRONG_KIND
        );
        let mut tampered = ephemeral;
        tampered[40] ^= 0x80;
        assert_eq!(
            kind(km.derive_sw_secret(&tampered).unwrap_err()).0,
            reject_kind::WRAPPED_KEY_UNAUTHENTIC
        );
        assert_eq!(
            kind(km.derive_sw_secret(&ephemeral[..10]).unwrap_err()).0,
            reject_kind::WRAPPED_KEY_MALFORMED
        );
        let other = manager();
        assert_eq!(
            kind(other.prepare(&long_term).unwrap_err()).0,
            reject_kind::WRAPPED_KEY_FOREIGN
        );
        assert_eq!(
            kind(other.derive_sw_secret(&ephemeral).unwrap_err()).0,
            reject_kind::WRAPPED_KEY_STALE
        );
        let boot = km.boot_id();
        km.renew_ephemeral_key().expect("renew");
        assert_ne!(km.boot_id(), boot);
        assert_eq!(
            kind(km.derive_sw_secret(&ephemeral).unwrap_err()).0,
            reject_kind::WRAPPED_KEY_STALE
        );
        // The long-term blob outlives the reset.
        let (fresh, _) = km.prepare(&long_term).expect("prepare after reset");
        assert!(km.derive_sw_secret(&fresh).is_ok());
        assert_eq!(
            KeyManagerError::NotOffered.status(),
            Status::Unsupp,
            "a capability the engine lacks"
        );
    }

    #[test]
    fn the_same_secret_gives_the_same_long_term_key() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("km.state");
        let (secret, _) = DeviceSecret::load_or_create(&path).expect("create");
        let first = KeyManager::new(&secret).expect("key manager");
        let (long_term, _) = first.import(&RAW).expect("import");
        drop((first, secret));
        let (secret, _) = DeviceSecret::load_or_create(&path).expect("read");
        let second = KeyManager::new(&secret).expect("key manager");
        let (ephemeral, key) = second.prepare(&long_term).expect("prepare");
        assert_eq!(*key, RAW);
        assert!(second.derive_sw_secret(&ephemeral).is_ok());
    }
}
