//! icelab's wire format: virtio-blk with the inline-encryption extension.
//!
//! Standard parts follow the VIRTIO 1.2 specification, section 5.2 (Block
//! Device). The inline-encryption parts follow the newest public draft
//! ("variant B", v4 of 2026-09-25/2026-10-09): feature bits 22
//! (CTRL_VQ) and 23 (INLINE_ENCRYPTION), config bytes 96..104, request
//! types 27..35, the 40-byte `crypto_msg` and the 152-byte `key_desc`.
//! `docs/PROTOCOL.md` is the prose definition: negotiation, which queue
//! carries which request, every payload and the device's refusals. All
//! integers are little-endian.
//!
//! This crate is the one Rust definition of the format: the device, the
//! native frontend and the conformance tests import it; the guest driver's
//! C header and the QEMU patch are checked against it by a test
//! (`tests/protocol_definitions.rs`). It is pure: byte layouts, no
//! devices, engines or guest memory.

use std::fmt;

// ---------------------------------------------------------------------------
// Feature bits (VIRTIO 1.2 §5.2.3, plus the draft's bits 22 and 23)
// ---------------------------------------------------------------------------

/// Maximum size of any single segment is in `size_max`.
pub const VIRTIO_BLK_F_SIZE_MAX: u32 = 1;
/// Maximum number of segments in a request is in `seg_max`.
pub const VIRTIO_BLK_F_SEG_MAX: u32 = 2;
/// Device is read-only.
pub const VIRTIO_BLK_F_RO: u32 = 5;
/// Block size of disk is in `blk_size`.
pub const VIRTIO_BLK_F_BLK_SIZE: u32 = 6;
/// Cache flush command support.
pub const VIRTIO_BLK_F_FLUSH: u32 = 9;
/// Topology information is available.
pub const VIRTIO_BLK_F_TOPOLOGY: u32 = 10;
/// Device supports multiqueue.
pub const VIRTIO_BLK_F_MQ: u32 = 12;
/// Device can support discard command.
pub const VIRTIO_BLK_F_DISCARD: u32 = 13;
/// Device can support write zeroes command.
pub const VIRTIO_BLK_F_WRITE_ZEROES: u32 = 14;
/// Draft: the device has a control virtqueue, the last virtqueue (after
/// the request queues). Inline encryption needs it: key management
/// travels there.
pub const VIRTIO_BLK_F_CTRL_VQ: u32 = 22;
/// Draft: the device has an inline crypto engine (config bytes 96..104,
/// request types 27..35). Enabled only when [`VIRTIO_BLK_F_CTRL_VQ`] is
/// negotiated too.
pub const VIRTIO_BLK_F_INLINE_ENCRYPTION: u32 = 23;

/// Indirect descriptors (VIRTIO 1.2 §2.7.5.3).
pub const VIRTIO_RING_F_INDIRECT_DESC: u32 = 28;
/// Used/available event index suppression (VIRTIO 1.2 §2.7.10).
pub const VIRTIO_RING_F_EVENT_IDX: u32 = 29;
/// Compliance with VIRTIO 1.x.
pub const VIRTIO_F_VERSION_1: u32 = 32;
/// vhost-user: protocol features are negotiated (not a virtio feature).
pub const VHOST_USER_F_PROTOCOL_FEATURES: u32 = 30;

/// Returns the feature mask with `bit` set.
pub const fn feature(bit: u32) -> u64 {
    1u64 << bit
}

/// True when `features` (the negotiated set) enable inline encryption:
/// the draft requires both INLINE_ENCRYPTION and CTRL_VQ.
pub const fn crypto_negotiated(features: u64) -> bool {
    let both = feature(VIRTIO_BLK_F_INLINE_ENCRYPTION) | feature(VIRTIO_BLK_F_CTRL_VQ);
    features & both == both
}

// ---------------------------------------------------------------------------
// Virtqueues
// ---------------------------------------------------------------------------

/// What a virtqueue carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueRole {
    /// A request queue: block I/O, CRYPTO_IN/OUT and the standard requests.
    Request(u16),
    /// The control queue: GET_CRYPTO_MODES and key management (29..35).
    Control,
}

impl QueueRole {
    /// The role of virtqueue `index` on a device with `num_queues` request
    /// queues (config `num_queues`, 1 without MQ): the control queue is the
    /// one after the last request queue.
    pub const fn of(index: u16, num_queues: u16) -> Option<Self> {
        if index < num_queues {
            Some(Self::Request(index))
        } else if index == num_queues {
            Some(Self::Control)
        } else {
            None
        }
    }

    /// True when a request of type `request` belongs on a queue of this
    /// role: control commands on the control queue, everything else on
    /// request queues.
    pub const fn carries(self, request: RequestType) -> bool {
        match self {
            Self::Control => request.is_control_command(),
            Self::Request(_) => !request.is_control_command(),
        }
    }
}

/// Index of the control virtqueue on a device with `num_queues` request
/// queues.
pub const fn control_queue_index(num_queues: u16) -> u16 {
    num_queues
}

// ---------------------------------------------------------------------------
// Request types (VIRTIO 1.2 §5.2.6, plus the draft's 27..35)
// ---------------------------------------------------------------------------

/// The type field of `struct virtio_blk_outhdr`, decoded. Unknown values
/// are kept as `Unsupported`, which the device answers with UNSUPP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestType {
    /// 0: read sectors.
    In,
    /// 1: write sectors.
    Out,
    /// 4: flush the volatile write cache.
    Flush,
    /// 8: read the 20-byte device id string.
    GetId,
    /// 11: discard sectors.
    Discard,
    /// 13: write zeroes.
    WriteZeroes,
    /// 27: encrypt with a keyslot, then write.
    CryptoOut,
    /// 28: read, then decrypt with a keyslot.
    CryptoIn,
    /// 29: report the supported crypto modes.
    GetCryptoModes,
    /// 30: program a key into a keyslot.
    KeyslotProgram,
    /// 31: evict a keyslot.
    KeyslotEvict,
    /// 32: hardware-wrapped keys: derive the software secret.
    DeriveSwSecret,
    /// 33: hardware-wrapped keys: generate a long-term wrapped key.
    GenerateKey,
    /// 34: hardware-wrapped keys: import a raw key as a long-term wrapped key.
    ImportKey,
    /// 35: hardware-wrapped keys: re-wrap a long-term key ephemerally.
    PrepareKey,
    /// Anything else.
    Unsupported(u32),
}

impl RequestType {
    /// Decodes the wire value.
    pub const fn from_wire(value: u32) -> Self {
        match value {
            0 => Self::In,
            1 => Self::Out,
            4 => Self::Flush,
            8 => Self::GetId,
            11 => Self::Discard,
            13 => Self::WriteZeroes,
            27 => Self::CryptoOut,
            28 => Self::CryptoIn,
            29 => Self::GetCryptoModes,
            30 => Self::KeyslotProgram,
            31 => Self::KeyslotEvict,
            32 => Self::DeriveSwSecret,
            33 => Self::GenerateKey,
            34 => Self::ImportKey,
            35 => Self::PrepareKey,
            other => Self::Unsupported(other),
        }
    }

    /// Encodes the wire value.
    pub const fn to_wire(self) -> u32 {
        match self {
            Self::In => 0,
            Self::Out => 1,
            Self::Flush => 4,
            Self::GetId => 8,
            Self::Discard => 11,
            Self::WriteZeroes => 13,
            Self::CryptoOut => 27,
            Self::CryptoIn => 28,
            Self::GetCryptoModes => 29,
            Self::KeyslotProgram => 30,
            Self::KeyslotEvict => 31,
            Self::DeriveSwSecret => 32,
            Self::GenerateKey => 33,
            Self::ImportKey => 34,
            Self::PrepareKey => 35,
            Self::Unsupported(other) => other,
        }
    }

    /// True for the request types of the inline-encryption extension.
    pub const fn is_inline_encryption(self) -> bool {
        matches!(self.to_wire(), 27..=35)
    }

    /// True for the control commands (29..35: GET_CRYPTO_MODES, keyslot
    /// management, hardware-wrapped key management): they travel on the
    /// control queue only.
    pub const fn is_control_command(self) -> bool {
        matches!(self.to_wire(), 29..=35)
    }
}

impl fmt::Display for RequestType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Self::In => "IN",
            Self::Out => "OUT",
            Self::Flush => "FLUSH",
            Self::GetId => "GET_ID",
            Self::Discard => "DISCARD",
            Self::WriteZeroes => "WRITE_ZEROES",
            Self::CryptoOut => "CRYPTO_OUT",
            Self::CryptoIn => "CRYPTO_IN",
            Self::GetCryptoModes => "GET_CRYPTO_MODES",
            Self::KeyslotProgram => "KEYSLOT_PROGRAM",
            Self::KeyslotEvict => "KEYSLOT_EVICT",
            Self::DeriveSwSecret => "DERIVE_SW_SECRET",
            Self::GenerateKey => "GENERATE_KEY",
            Self::ImportKey => "IMPORT_KEY",
            Self::PrepareKey => "PREPARE_KEY",
            Self::Unsupported(t) => return write!(f, "type {t}"),
        };
        f.write_str(name)
    }
}

/// The status byte the device writes last (VIRTIO 1.2 §5.2.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Status {
    /// VIRTIO_BLK_S_OK.
    Ok = 0,
    /// VIRTIO_BLK_S_IOERR.
    IoErr = 1,
    /// VIRTIO_BLK_S_UNSUPP.
    Unsupp = 2,
}

impl Status {
    /// Decodes a status byte; `None` for values the spec does not define.
    pub const fn from_wire(value: u8) -> Option<Self> {
        match value {
            0 => Some(Self::Ok),
            1 => Some(Self::IoErr),
            2 => Some(Self::Unsupp),
            _ => None,
        }
    }
}

/// Sector size of the virtio-blk addressing unit, whatever `blk_size` is.
pub const SECTOR_SIZE: u64 = 512;
/// log2 of [`SECTOR_SIZE`].
pub const SECTOR_SHIFT: u32 = 9;
/// Length of the GET_ID answer.
pub const DEVICE_ID_BYTES: usize = 20;

/// `struct virtio_blk_outhdr`: le32 type, le32 ioprio, le64 sector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutHeader {
    /// Request type as sent.
    pub request_type: RequestType,
    /// I/O priority (ignored by icelab).
    pub ioprio: u32,
    /// Start sector in 512-byte units.
    pub sector: u64,
}

impl OutHeader {
    /// Wire size.
    pub const SIZE: usize = 16;

    /// Parses the header.
    pub fn parse(bytes: &[u8; Self::SIZE]) -> Self {
        Self {
            request_type: RequestType::from_wire(le32(bytes, 0)),
            ioprio: le32(bytes, 4),
            sector: le64(bytes, 8),
        }
    }

    /// Encodes the header.
    pub fn encode(&self) -> [u8; Self::SIZE] {
        let mut out = [0u8; Self::SIZE];
        out[0..4].copy_from_slice(&self.request_type.to_wire().to_le_bytes());
        out[4..8].copy_from_slice(&self.ioprio.to_le_bytes());
        out[8..16].copy_from_slice(&self.sector.to_le_bytes());
        out
    }
}

/// `struct virtio_blk_discard_write_zeroes`: le64 sector, le32 num_sectors,
/// le32 flags (bit 0: unmap, WRITE_ZEROES only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiscardSegment {
    /// First sector.
    pub sector: u64,
    /// Number of sectors.
    pub num_sectors: u32,
    /// Flags; only [`DiscardSegment::FLAG_UNMAP`] is defined.
    pub flags: u32,
}

impl DiscardSegment {
    /// Wire size.
    pub const SIZE: usize = 16;
    /// WRITE_ZEROES may deallocate.
    pub const FLAG_UNMAP: u32 = 1;

    /// Parses a segment.
    pub fn parse(bytes: &[u8; Self::SIZE]) -> Self {
        Self {
            sector: le64(bytes, 0),
            num_sectors: le32(bytes, 8),
            flags: le32(bytes, 12),
        }
    }

    /// Encodes a segment.
    pub fn encode(&self) -> [u8; Self::SIZE] {
        let mut out = [0u8; Self::SIZE];
        out[0..8].copy_from_slice(&self.sector.to_le_bytes());
        out[8..12].copy_from_slice(&self.num_sectors.to_le_bytes());
        out[12..16].copy_from_slice(&self.flags.to_le_bytes());
        out
    }
}

// ---------------------------------------------------------------------------
// Inline-encryption payloads (draft)
// ---------------------------------------------------------------------------

/// Crypto modes as numbered in `modes[]` and `key_desc.crypto_mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CryptoMode {
    /// modes[1]: AES-256-XTS, 64-byte raw key, 16-byte tweak.
    Aes256Xts,
}

impl CryptoMode {
    /// Number of entries in the GET_CRYPTO_MODES answer (`modes[0]` is
    /// reserved).
    pub const TABLE_LEN: usize = 2;

    /// Decodes `crypto_mode`; `None` for reserved or unknown modes.
    pub const fn from_wire(value: u32) -> Option<Self> {
        match value {
            1 => Some(Self::Aes256Xts),
            _ => None,
        }
    }

    /// Encodes `crypto_mode`.
    pub const fn to_wire(self) -> u32 {
        match self {
            Self::Aes256Xts => 1,
        }
    }

    /// Raw key size the mode takes.
    pub const fn raw_key_size(self) -> usize {
        match self {
            Self::Aes256Xts => 64,
        }
    }

    /// IV (tweak) size: the largest DUN the mode can carry, in bytes.
    pub const fn iv_size(self) -> usize {
        match self {
            Self::Aes256Xts => 16,
        }
    }
}

/// Key types of `key_desc.key_type`; the config's `key_types` has bit
/// `(type - 1)` set for each type the device accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyType {
    /// 1: the key itself.
    Raw,
    /// 2: a hardware-wrapped key (ephemerally wrapped when programmed).
    HardwareWrapped,
}

impl KeyType {
    /// Decodes `key_type`.
    pub const fn from_wire(value: u32) -> Option<Self> {
        match value {
            1 => Some(Self::Raw),
            2 => Some(Self::HardwareWrapped),
            _ => None,
        }
    }

    /// Encodes `key_type`.
    pub const fn to_wire(self) -> u32 {
        match self {
            Self::Raw => 1,
            Self::HardwareWrapped => 2,
        }
    }

    /// The bit of this type in the config's `key_types`.
    pub const fn config_bit(self) -> u8 {
        match self {
            Self::Raw => 1 << 0,
            Self::HardwareWrapped => 1 << 1,
        }
    }
}

/// A 256-bit data unit number, `dun[0]` least significant.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Dun(pub [u64; 4]);

impl Dun {
    /// DUN from a 64-bit value.
    pub const fn from_u64(value: u64) -> Self {
        Self([value, 0, 0, 0])
    }

    /// DUN from a 128-bit value.
    pub const fn from_u128(value: u128) -> Self {
        Self([value as u64, (value >> 64) as u64, 0, 0])
    }

    /// Number of significant bytes (0 for DUN 0).
    pub fn significant_bytes(&self) -> u32 {
        for (index, word) in self.0.iter().enumerate().rev() {
            if *word != 0 {
                return index as u32 * 8 + (64 - word.leading_zeros()).div_ceil(8);
            }
        }
        0
    }

    /// True when `self + units - 1` still fits in `dun_bytes` bytes, i.e.
    /// a request of `units` data units starting here does not overflow the
    /// slot's DUN size. `units` of 0 is treated as 1.
    pub fn range_fits(&self, units: u64, dun_bytes: u32) -> bool {
        let Some(last) = self.checked_add(units.max(1) - 1) else {
            return false;
        };
        last.significant_bytes() <= dun_bytes
    }

    /// `self + n`, or `None` past 2^256 - 1.
    pub fn checked_add(&self, n: u64) -> Option<Self> {
        let mut out = self.0;
        let mut carry = n;
        for word in out.iter_mut() {
            if carry == 0 {
                break;
            }
            let (sum, overflow) = word.overflowing_add(carry);
            *word = sum;
            carry = u64::from(overflow);
        }
        (carry == 0).then_some(Self(out))
    }

    /// The low 128 bits, which is the XTS tweak for AES-256-XTS.
    pub const fn low_u128(&self) -> u128 {
        (self.0[0] as u128) | ((self.0[1] as u128) << 64)
    }
}

/// `crypto_msg`: le32 slot, 4 reserved bytes, le64 dun[4]. Sent after the
/// outhdr of CRYPTO_IN and CRYPTO_OUT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CryptoMsg {
    /// Keyslot index.
    pub slot: u32,
    /// Reserved; the device ignores it.
    pub reserved: u32,
    /// DUN of the first data unit of the request.
    pub dun: Dun,
}

impl CryptoMsg {
    /// Wire size.
    pub const SIZE: usize = 40;

    /// Parses the message.
    pub fn parse(bytes: &[u8; Self::SIZE]) -> Self {
        Self {
            slot: le32(bytes, 0),
            reserved: le32(bytes, 4),
            dun: Dun([
                le64(bytes, 8),
                le64(bytes, 16),
                le64(bytes, 24),
                le64(bytes, 32),
            ]),
        }
    }

    /// Encodes the message.
    pub fn encode(&self) -> [u8; Self::SIZE] {
        let mut out = [0u8; Self::SIZE];
        out[0..4].copy_from_slice(&self.slot.to_le_bytes());
        out[4..8].copy_from_slice(&self.reserved.to_le_bytes());
        for (index, word) in self.dun.0.iter().enumerate() {
            out[8 + index * 8..16 + index * 8].copy_from_slice(&word.to_le_bytes());
        }
        out
    }
}

/// Largest key a `key_desc` or `key_blob` carries.
pub const MAX_KEY_BYTES: usize = 128;

/// `key_desc`, the payload of KEYSLOT_PROGRAM and KEYSLOT_EVICT:
/// le32 slot, u8 bytes[128], le32 key_size, le32 crypto_mode,
/// le32 key_type, le32 data_unit_size_bits, le32 dun_bytes: 152 bytes, no
/// trailing reserved field (the draft's `struct virtio_blk_crypto_key_desc`).
///
/// The key bytes are wiped when the value is dropped.
#[derive(Clone, PartialEq, Eq, zeroize::Zeroize, zeroize::ZeroizeOnDrop)]
pub struct KeyDesc {
    /// Keyslot index.
    pub slot: u32,
    /// Key bytes; only the first `key_size` are meaningful.
    pub bytes: [u8; MAX_KEY_BYTES],
    /// Number of key bytes.
    pub key_size: u32,
    /// Wire `crypto_mode`.
    pub crypto_mode: u32,
    /// Wire `key_type`.
    pub key_type: u32,
    /// log2 of the data unit size.
    pub data_unit_size_bits: u32,
    /// Number of DUN bytes the slot's requests may use.
    pub dun_bytes: u32,
}

impl fmt::Debug for KeyDesc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the key bytes.
        f.debug_struct("KeyDesc")
            .field("slot", &self.slot)
            .field("key_size", &self.key_size)
            .field("crypto_mode", &self.crypto_mode)
            .field("key_type", &self.key_type)
            .field("data_unit_size_bits", &self.data_unit_size_bits)
            .field("dun_bytes", &self.dun_bytes)
            .finish_non_exhaustive()
    }
}

impl KeyDesc {
    /// Wire size.
    pub const SIZE: usize = 152;

    /// Parses a descriptor.
    pub fn parse(bytes: &[u8; Self::SIZE]) -> Self {
        // The key goes straight into the result (returned in the caller's
        // place): no temporary array holding a copy that nothing wipes.
        let mut desc = Self {
            slot: le32(bytes, 0),
            bytes: [0; MAX_KEY_BYTES],
            key_size: le32(bytes, 132),
            crypto_mode: le32(bytes, 136),
            key_type: le32(bytes, 140),
            data_unit_size_bits: le32(bytes, 144),
            dun_bytes: le32(bytes, 148),
        };
        desc.bytes.copy_from_slice(&bytes[4..4 + MAX_KEY_BYTES]);
        desc
    }

    /// Encodes the descriptor. The caller should wipe the result after use.
    pub fn encode(&self) -> [u8; Self::SIZE] {
        let mut out = [0u8; Self::SIZE];
        out[0..4].copy_from_slice(&self.slot.to_le_bytes());
        out[4..4 + MAX_KEY_BYTES].copy_from_slice(&self.bytes);
        out[132..136].copy_from_slice(&self.key_size.to_le_bytes());
        out[136..140].copy_from_slice(&self.crypto_mode.to_le_bytes());
        out[140..144].copy_from_slice(&self.key_type.to_le_bytes());
        out[144..148].copy_from_slice(&self.data_unit_size_bits.to_le_bytes());
        out[148..152].copy_from_slice(&self.dun_bytes.to_le_bytes());
        out
    }

    /// A descriptor programming a raw AES-256-XTS `key` into `slot` with
    /// data units of `data_unit_size` bytes (a power of two) and
    /// `dun_bytes` DUN bytes.
    pub fn raw_aes_256_xts(slot: u32, key: &[u8; 64], data_unit_size: u32, dun_bytes: u32) -> Self {
        // As in `parse`: no temporary copy of the key.
        let mut desc = Self {
            slot,
            bytes: [0; MAX_KEY_BYTES],
            key_size: 64,
            crypto_mode: CryptoMode::Aes256Xts.to_wire(),
            key_type: KeyType::Raw.to_wire(),
            data_unit_size_bits: data_unit_size.trailing_zeros(),
            dun_bytes,
        };
        desc.bytes[..64].copy_from_slice(key);
        desc
    }

    /// The meaningful key bytes, or `None` when `key_size` exceeds the
    /// array.
    pub fn key(&self) -> Option<&[u8]> {
        self.bytes.get(..usize::try_from(self.key_size).ok()?)
    }
}

/// `key_blob`: le32 key_size, u8 key[128]. Used by requests 32..35.
pub const KEY_BLOB_SIZE: usize = 4 + MAX_KEY_BYTES;
/// Size of DERIVE_SW_SECRET's answer.
pub const SW_SECRET_SIZE: usize = 32;

/// `key_blob`, the payload and answer of the hardware-wrapped key
/// requests (32..35): le32 key_size, u8 key[128]. What the key bytes are
/// depends on the request: a raw key (IMPORT_KEY's payload) or a blob the
/// device wrapped, which the guest treats as opaque bytes.
///
/// The key bytes are wiped when the value is dropped.
#[derive(Clone, PartialEq, Eq, zeroize::Zeroize, zeroize::ZeroizeOnDrop)]
pub struct KeyBlob {
    /// Number of meaningful key bytes.
    pub key_size: u32,
    /// Key bytes; only the first `key_size` are meaningful.
    pub bytes: [u8; MAX_KEY_BYTES],
}

impl fmt::Debug for KeyBlob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the key bytes.
        f.debug_struct("KeyBlob")
            .field("key_size", &self.key_size)
            .finish_non_exhaustive()
    }
}

impl KeyBlob {
    /// Wire size.
    pub const SIZE: usize = KEY_BLOB_SIZE;

    /// A blob holding `key`; `None` when it is longer than
    /// [`MAX_KEY_BYTES`].
    pub fn new(key: &[u8]) -> Option<Self> {
        let key_size = u32::try_from(key.len()).ok()?;
        let mut blob = Self {
            key_size,
            bytes: [0; MAX_KEY_BYTES],
        };
        blob.bytes.get_mut(..key.len())?.copy_from_slice(key);
        Some(blob)
    }

    /// Parses a blob.
    pub fn parse(bytes: &[u8; Self::SIZE]) -> Self {
        // As in `KeyDesc::parse`: the key goes straight into the result.
        let mut blob = Self {
            key_size: le32(bytes, 0),
            bytes: [0; MAX_KEY_BYTES],
        };
        blob.bytes.copy_from_slice(&bytes[4..]);
        blob
    }

    /// Encodes the blob. The caller should wipe the result after use.
    pub fn encode(&self) -> [u8; Self::SIZE] {
        let mut out = [0u8; Self::SIZE];
        out[0..4].copy_from_slice(&self.key_size.to_le_bytes());
        out[4..].copy_from_slice(&self.bytes);
        out
    }

    /// The meaningful key bytes, or `None` when `key_size` exceeds the
    /// array.
    pub fn key(&self) -> Option<&[u8]> {
        self.bytes.get(..usize::try_from(self.key_size).ok()?)
    }
}

// ---------------------------------------------------------------------------
// Configuration space (VIRTIO 1.2 §5.2.4, plus the draft's bytes 96..104)
// ---------------------------------------------------------------------------

/// Byte offsets of the config fields icelab fills in.
pub mod config_offset {
    /// le64 capacity in 512-byte sectors.
    pub const CAPACITY: usize = 0;
    /// le32 size_max.
    pub const SIZE_MAX: usize = 8;
    /// le32 seg_max.
    pub const SEG_MAX: usize = 12;
    /// le32 blk_size.
    pub const BLK_SIZE: usize = 20;
    /// u8 physical_block_exp.
    pub const PHYSICAL_BLOCK_EXP: usize = 24;
    /// le16 min_io_size (in blk_size units).
    pub const MIN_IO_SIZE: usize = 26;
    /// le32 opt_io_size (in blk_size units).
    pub const OPT_IO_SIZE: usize = 28;
    /// le16 num_queues.
    pub const NUM_QUEUES: usize = 34;
    /// le32 max_discard_sectors.
    pub const MAX_DISCARD_SECTORS: usize = 36;
    /// le32 max_discard_seg.
    pub const MAX_DISCARD_SEG: usize = 40;
    /// le32 discard_sector_alignment.
    pub const DISCARD_SECTOR_ALIGNMENT: usize = 44;
    /// le32 max_write_zeroes_sectors.
    pub const MAX_WRITE_ZEROES_SECTORS: usize = 48;
    /// le32 max_write_zeroes_seg.
    pub const MAX_WRITE_ZEROES_SEG: usize = 52;
    /// u8 write_zeroes_may_unmap.
    pub const WRITE_ZEROES_MAY_UNMAP: usize = 56;
    /// Draft: le16 max_slots.
    pub const MAX_SLOTS: usize = 96;
    /// Draft: u8 max_dun_bytes.
    pub const MAX_DUN_BYTES: usize = 98;
    /// Draft: u8 key_types.
    pub const KEY_TYPES: usize = 99;
    /// Draft: le32 reserved.
    pub const CRYPTO_RESERVED: usize = 100;
}

/// Length of the config space without the inline-encryption fields (the
/// end of the zoned characteristics).
pub const CONFIG_SIZE_STANDARD: usize = 96;
/// Length of the config space with the inline-encryption fields.
pub const CONFIG_SIZE: usize = 104;

/// The inline-encryption fields of the config space (the supported data
/// unit sizes travel separately, in the GET_CRYPTO_MODES answer).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CryptoCapabilities {
    /// Number of keyslots.
    pub max_slots: u16,
    /// Largest `dun_bytes` a slot may be programmed with.
    pub max_dun_bytes: u8,
    /// Bit set of [`KeyType::config_bit`].
    pub key_types: u8,
}

/// The fields of the block config space that icelab sets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockConfig {
    /// Capacity in 512-byte sectors.
    pub capacity_sectors: u64,
    /// Largest segment in bytes.
    pub size_max: u32,
    /// Most data segments per request.
    pub seg_max: u32,
    /// Logical block size.
    pub blk_size: u32,
    /// Number of request queues.
    pub num_queues: u16,
    /// Largest discard, in sectors.
    pub max_discard_sectors: u32,
    /// Most discard segments per request.
    pub max_discard_seg: u32,
    /// Largest write-zeroes, in sectors.
    pub max_write_zeroes_sectors: u32,
    /// Most write-zeroes segments per request.
    pub max_write_zeroes_seg: u32,
    /// Inline-encryption fields; `None` when the feature is not offered.
    pub crypto: Option<CryptoCapabilities>,
}

impl BlockConfig {
    /// Encodes the config space ([`CONFIG_SIZE`] bytes; the crypto bytes
    /// are zero when the feature is not offered).
    pub fn encode(&self) -> [u8; CONFIG_SIZE] {
        use config_offset as o;
        let mut out = [0u8; CONFIG_SIZE];
        put(&mut out, o::CAPACITY, &self.capacity_sectors.to_le_bytes());
        put(&mut out, o::SIZE_MAX, &self.size_max.to_le_bytes());
        put(&mut out, o::SEG_MAX, &self.seg_max.to_le_bytes());
        put(&mut out, o::BLK_SIZE, &self.blk_size.to_le_bytes());
        put(&mut out, o::MIN_IO_SIZE, &1u16.to_le_bytes());
        put(&mut out, o::NUM_QUEUES, &self.num_queues.to_le_bytes());
        put(
            &mut out,
            o::MAX_DISCARD_SECTORS,
            &self.max_discard_sectors.to_le_bytes(),
        );
        put(
            &mut out,
            o::MAX_DISCARD_SEG,
            &self.max_discard_seg.to_le_bytes(),
        );
        let alignment = self.blk_size / SECTOR_SIZE as u32;
        put(
            &mut out,
            o::DISCARD_SECTOR_ALIGNMENT,
            &alignment.to_le_bytes(),
        );
        put(
            &mut out,
            o::MAX_WRITE_ZEROES_SECTORS,
            &self.max_write_zeroes_sectors.to_le_bytes(),
        );
        put(
            &mut out,
            o::MAX_WRITE_ZEROES_SEG,
            &self.max_write_zeroes_seg.to_le_bytes(),
        );
        out[o::WRITE_ZEROES_MAY_UNMAP] = 1;
        if let Some(crypto) = &self.crypto {
            put(&mut out, o::MAX_SLOTS, &crypto.max_slots.to_le_bytes());
            out[o::MAX_DUN_BYTES] = crypto.max_dun_bytes;
            out[o::KEY_TYPES] = crypto.key_types;
        }
        out
    }
}

impl BlockConfig {
    /// Parses a config space of however many bytes a device returned:
    /// fields past the end read as 0, and the crypto fields are `None`
    /// unless all [`CONFIG_SIZE`] bytes are there. The inverse of
    /// [`BlockConfig::encode`] for every field icelab sets.
    pub fn parse(raw: &[u8]) -> Self {
        use config_offset as o;
        let le = |offset: usize, width: usize| -> u64 {
            raw.get(offset..offset + width).map_or(0, |bytes| {
                bytes
                    .iter()
                    .rev()
                    .fold(0u64, |value, byte| (value << 8) | u64::from(*byte))
            })
        };
        // Each value is read with the width of its field, so the narrowing
        // casts cannot lose bits.
        let crypto = (raw.len() >= CONFIG_SIZE).then(|| CryptoCapabilities {
            max_slots: le(o::MAX_SLOTS, 2) as u16,
            max_dun_bytes: le(o::MAX_DUN_BYTES, 1) as u8,
            key_types: le(o::KEY_TYPES, 1) as u8,
        });
        Self {
            capacity_sectors: le(o::CAPACITY, 8),
            size_max: le(o::SIZE_MAX, 4) as u32,
            seg_max: le(o::SEG_MAX, 4) as u32,
            blk_size: le(o::BLK_SIZE, 4) as u32,
            num_queues: le(o::NUM_QUEUES, 2) as u16,
            max_discard_sectors: le(o::MAX_DISCARD_SECTORS, 4) as u32,
            max_discard_seg: le(o::MAX_DISCARD_SEG, 4) as u32,
            max_write_zeroes_sectors: le(o::MAX_WRITE_ZEROES_SECTORS, 4) as u32,
            max_write_zeroes_seg: le(o::MAX_WRITE_ZEROES_SEG, 4) as u32,
            crypto,
        }
    }

    /// Capacity in bytes.
    pub fn capacity_bytes(&self) -> u64 {
        self.capacity_sectors.saturating_mul(SECTOR_SIZE)
    }
}

fn put(out: &mut [u8], offset: usize, bytes: &[u8]) {
    out[offset..offset + bytes.len()].copy_from_slice(bytes);
}

fn le32(bytes: &[u8], offset: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[offset..offset + 4]);
    u32::from_le_bytes(word)
}

fn le64(bytes: &[u8], offset: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[offset..offset + 8]);
    u64::from_le_bytes(word)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_types_round_trip() {
        for wire in 0..64 {
            assert_eq!(RequestType::from_wire(wire).to_wire(), wire);
        }
        assert!(RequestType::CryptoOut.is_inline_encryption());
        assert!(!RequestType::Out.is_inline_encryption());
    }

    #[test]
    fn key_desc_layout_is_152_bytes_and_round_trips() {
        let mut desc = KeyDesc {
            slot: 7,
            bytes: [0; MAX_KEY_BYTES],
            key_size: 64,
            crypto_mode: 1,
            key_type: 1,
            data_unit_size_bits: 12,
            dun_bytes: 8,
        };
        desc.bytes[0] = 0xaa;
        desc.bytes[127] = 0xbb;
        let wire = desc.encode();
        assert_eq!(wire.len(), 152);
        assert_eq!(&wire[0..4], &7u32.to_le_bytes());
        assert_eq!(wire[4], 0xaa);
        assert_eq!(wire[131], 0xbb);
        assert_eq!(&wire[132..136], &64u32.to_le_bytes());
        assert_eq!(&wire[148..152], &8u32.to_le_bytes());
        assert_eq!(KeyDesc::parse(&wire), desc);
        assert!(
            !format!("{desc:?}").contains("170"),
            "Debug must not print key bytes"
        );
    }

    #[test]
    fn key_blob_layout_is_132_bytes_and_round_trips() {
        let blob = KeyBlob::new(&[0xaa; 76]).expect("fits");
        let wire = blob.encode();
        assert_eq!(wire.len(), 132);
        assert_eq!(&wire[0..4], &76u32.to_le_bytes());
        assert_eq!(wire[4], 0xaa);
        assert_eq!(wire[79], 0xaa);
        assert_eq!(wire[80], 0);
        assert_eq!(KeyBlob::parse(&wire), blob);
        assert_eq!(blob.key(), Some(&[0xaa; 76][..]));
        assert!(KeyBlob::new(&[0; 129]).is_none());
        let mut huge = blob.clone();
        huge.key_size = 129;
        assert_eq!(huge.key(), None);
        assert!(
            !format!("{blob:?}").contains("170"),
            "Debug must not print key bytes"
        );
    }

    #[test]
    fn crypto_msg_layout() {
        let msg = CryptoMsg {
            slot: 3,
            reserved: 0,
            dun: Dun([1, 2, 3, 4]),
        };
        let wire = msg.encode();
        assert_eq!(&wire[8..16], &1u64.to_le_bytes());
        assert_eq!(&wire[32..40], &4u64.to_le_bytes());
        assert_eq!(CryptoMsg::parse(&wire), msg);
    }

    #[test]
    fn dun_range_checks_overflow_of_dun_bytes() {
        assert!(Dun::from_u64(u32::MAX as u64).range_fits(1, 4));
        assert!(!Dun::from_u64(u32::MAX as u64).range_fits(2, 4));
        assert!(Dun::from_u64(u64::MAX - 7).range_fits(8, 8));
        assert!(!Dun::from_u64(u64::MAX - 7).range_fits(9, 8));
        assert!(Dun::from_u64(u64::MAX).range_fits(2, 9));
        assert!(Dun::from_u64(0).range_fits(1, 0));
        assert!(!Dun([u64::MAX; 4]).range_fits(2, 32));
        assert_eq!(
            Dun::from_u64(u64::MAX).checked_add(1),
            Some(Dun([0, 1, 0, 0]))
        );
    }

    #[test]
    fn config_places_crypto_fields_at_96() {
        let config = BlockConfig {
            capacity_sectors: 2048,
            size_max: 1 << 20,
            seg_max: 126,
            blk_size: 512,
            num_queues: 2,
            max_discard_sectors: 1 << 20,
            max_discard_seg: 1,
            max_write_zeroes_sectors: 1 << 20,
            max_write_zeroes_seg: 1,
            crypto: Some(CryptoCapabilities {
                max_slots: 32,
                max_dun_bytes: 8,
                key_types: 1,
            }),
        };
        let bytes = config.encode();
        assert_eq!(&bytes[0..8], &2048u64.to_le_bytes());
        assert_eq!(&bytes[34..36], &2u16.to_le_bytes());
        assert_eq!(&bytes[96..100], &[32, 0, 8, 1]);
        assert_eq!(&bytes[100..104], &[0, 0, 0, 0]);
        assert_eq!(BlockConfig::parse(&bytes), config);
        assert_eq!(config.capacity_bytes(), 2048 * 512);
    }

    #[test]
    fn short_config_leaves_missing_fields_zero() {
        let mut raw = vec![0u8; 60];
        raw[..8].copy_from_slice(&2048u64.to_le_bytes());
        let parsed = BlockConfig::parse(&raw);
        assert_eq!(parsed.capacity_sectors, 2048);
        assert_eq!(parsed.crypto, None);
        assert_eq!(BlockConfig::parse(&[]).capacity_sectors, 0);
        assert_eq!(BlockConfig::parse(&[0u8; CONFIG_SIZE - 1]).crypto, None);
    }

    #[test]
    fn control_queue_follows_the_request_queues() {
        assert_eq!(QueueRole::of(0, 2), Some(QueueRole::Request(0)));
        assert_eq!(QueueRole::of(1, 2), Some(QueueRole::Request(1)));
        assert_eq!(QueueRole::of(2, 2), Some(QueueRole::Control));
        assert_eq!(QueueRole::of(3, 2), None);
        assert_eq!(control_queue_index(1), 1);
        for wire in 0..64 {
            let request = RequestType::from_wire(wire);
            let control = (29..=35).contains(&wire);
            assert_eq!(request.is_control_command(), control, "{request}");
            assert_eq!(QueueRole::Control.carries(request), control);
            assert_eq!(QueueRole::Request(0).carries(request), !control);
        }
    }

    #[test]
    fn crypto_needs_both_feature_bits() {
        let ice = feature(VIRTIO_BLK_F_INLINE_ENCRYPTION);
        let ctrl = feature(VIRTIO_BLK_F_CTRL_VQ);
        assert!(crypto_negotiated(ice | ctrl | feature(VIRTIO_F_VERSION_1)));
        assert!(!crypto_negotiated(ice));
        assert!(!crypto_negotiated(ctrl));
        assert_eq!(VIRTIO_BLK_F_CTRL_VQ, 22);
        assert_eq!(VIRTIO_BLK_F_INLINE_ENCRYPTION, 23);
    }
}
