//! Why the engine refuses a keyslot operation or a crypto request.

use super::fingerprint::Fingerprint;
use super::key_manager::KeyManagerError;
use crate::protocol::Status;

/// A refusal by the engine. Every variant but `KeyMemory` is the guest's
/// doing; the messages say so. [`EngineError::status`] is the one place
/// that maps refusals to the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    /// The device offers no inline encryption.
    #[error(
        "guest sent an inline-encryption request, but the device offers none (--no-inline-encryption)"
    )]
    NoInlineEncryption,
    /// Keyslot index past the table.
    #[error("guest named keyslot {slot}, but the engine has only {slots} keyslots")]
    SlotOutOfRange {
        /// Index the guest sent.
        slot: u32,
        /// Number of keyslots.
        slots: u16,
    },
    /// Keyslot holds no key.
    #[error("guest used keyslot {slot}, which holds no key (program it first)")]
    SlotEmpty {
        /// Index the guest sent.
        slot: u32,
    },
    /// Unknown or unsupported crypto mode.
    #[error("guest asked for crypto mode {0}; the engine supports only 1 (AES-256-XTS)")]
    UnsupportedMode(u32),
    /// Key type the engine does not accept.
    #[error("guest asked for key type {0}; the engine accepts only the types in its key_types")]
    UnsupportedKeyType(u32),
    /// Key of the wrong length for the mode.
    #[error("guest gave a {got}-byte key; AES-256-XTS takes {want} bytes")]
    WrongKeySize {
        /// key_size the guest sent.
        got: u32,
        /// Size the mode takes.
        want: usize,
    },
    /// Data unit size not in `modes[]`.
    #[error("guest asked for data units of 2^{0} bytes, which the engine's modes[] do not list")]
    UnsupportedDataUnitSize(u32),
    /// `dun_bytes` of zero.
    #[error("guest asked for 0 DUN bytes; a keyslot needs at least 1")]
    ZeroDunBytes,
    /// `dun_bytes` above `max_dun_bytes`.
    #[error("guest asked for {got} DUN bytes; the engine supports at most {max}")]
    DunBytesTooLarge {
        /// dun_bytes the guest sent.
        got: u32,
        /// The engine's max_dun_bytes.
        max: u8,
    },
    /// Request does not start on a data unit boundary.
    #[error(
        "guest request starts at byte {offset}, not on a {data_unit_size}-byte data unit boundary"
    )]
    Misaligned {
        /// Byte offset of the request on the image.
        offset: u64,
        /// The keyslot's data unit size.
        data_unit_size: u32,
    },
    /// Request is not a whole number of data units (or is empty).
    #[error(
        "guest request carries {len} bytes, not a whole non-zero number of {data_unit_size}-byte data units"
    )]
    PartialDataUnit {
        /// Data length of the request.
        len: u64,
        /// The keyslot's data unit size.
        data_unit_size: u32,
    },
    /// Last DUN of the request does not fit in the keyslot's DUN size.
    #[error("guest request's DUN range overflows the keyslot's {dun_bytes} DUN bytes")]
    DunOverflow {
        /// The keyslot's dun_bytes.
        dun_bytes: u32,
    },
    /// CRYPTO_OUT (or a default-key write) refused by
    /// `--key-usage-limit-action refuse`.
    #[error(
        "guest asked key {fingerprint} to encrypt {request} more bytes after {encrypted}; that passes \
         --key-usage-limit {limit} (action refuse): the guest must program a new key"
    )]
    KeyUsageLimit {
        /// The key.
        fingerprint: Fingerprint,
        /// Bytes it encrypted so far.
        encrypted: u64,
        /// Bytes of the refused request.
        request: u64,
        /// The limit.
        limit: u64,
    },
    /// The key manager refused a raw key or a wrapped blob (hardware-wrapped
    /// keys: requests 32..35, KEYSLOT_PROGRAM with key type 2).
    #[error(transparent)]
    KeyManager(#[from] KeyManagerError),
    /// The device could not map locked memory for a key schedule (the one
    /// refusal that is not the guest's doing: the host is out of memory).
    #[error("the device could not map memory for the key schedule (errno {errno})")]
    KeyMemory {
        /// `mmap`'s errno.
        errno: i32,
    },
}

impl EngineError {
    /// The status the guest gets: UNSUPP for a capability the engine lacks,
    /// IOERR for a malformed or inconsistent request.
    pub const fn status(&self) -> Status {
        match self {
            Self::KeyManager(error) => error.status(),
            Self::NoInlineEncryption
            | Self::UnsupportedMode(_)
            | Self::UnsupportedKeyType(_)
            | Self::UnsupportedDataUnitSize(_)
            | Self::DunBytesTooLarge { .. } => Status::Unsupp,
            Self::SlotOutOfRange { .. }
            | Self::SlotEmpty { .. }
            | Self::WrongKeySize { .. }
            | Self::ZeroDunBytes
            | Self::Misaligned { .. }
            | Self::PartialDataUnit { .. }
            | Self::DunOverflow { .. }
            | Self::KeyMemory { .. }
            | Self::KeyUsageLimit { .. } => Status::IoErr,
        }
    }

    /// A stable short name for stats and traces.
    pub const fn kind(&self) -> &'static str {
        match self {
            Self::KeyManager(error) => error.kind(),
            Self::NoInlineEncryption => "no-inline-encryption",
            Self::SlotOutOfRange { .. } => "slot-out-of-range",
            Self::SlotEmpty { .. } => icelab_contract::device::reject_kind::SLOT_EMPTY,
            Self::UnsupportedMode(_) => "unsupported-mode",
            Self::UnsupportedKeyType(_) => "unsupported-key-type",
            Self::WrongKeySize { .. } => "wrong-key-size",
            Self::UnsupportedDataUnitSize(_) => "unsupported-data-unit-size",
            Self::ZeroDunBytes => "zero-dun-bytes",
            Self::DunBytesTooLarge { .. } => "dun-bytes-too-large",
            Self::Misaligned { .. } => "misaligned",
            Self::PartialDataUnit { .. } => "partial-data-unit",
            Self::DunOverflow { .. } => "dun-overflow",
            Self::KeyMemory { .. } => "key-memory",
            Self::KeyUsageLimit { .. } => icelab_contract::device::reject_kind::KEY_USAGE_LIMIT,
        }
    }
}
