//! Why the device refuses a request: the guest's mistakes (parse layer)
//! and the engine's or the host's (execution layer), mapped to the wire
//! status in exactly one place, [`RequestError::status`].

use super::chain::ChainError;
use crate::engine::EngineError;
use crate::protocol::{QueueRole, RequestType, Status};
use std::io;

/// A refused request.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The descriptor chain itself is malformed.
    #[error(transparent)]
    Chain(#[from] ChainError),
    /// Fewer device-readable bytes than the request header.
    #[error("guest sent a {0}-byte request header; virtio-blk needs 16")]
    ShortHeader(u64),
    /// The chain has no device-writable byte for the status.
    #[error("guest gave no device-writable byte for the status")]
    NoStatusByte,
    /// Device-readable payload of the wrong size.
    #[error("guest sent {got} bytes of {what} for {request}; it takes {want}")]
    PayloadSize {
        /// The request.
        request: RequestType,
        /// The structure.
        what: &'static str,
        /// Bytes present.
        got: u64,
        /// Bytes needed.
        want: u64,
    },
    /// Fewer device-writable bytes than the answer needs.
    #[error(
        "guest left {got} device-writable bytes for {request}'s answer; it needs {want} plus the status byte"
    )]
    ShortAnswer {
        /// The request.
        request: RequestType,
        /// Bytes present (without the status byte).
        got: u64,
        /// Bytes needed.
        want: u64,
    },
    /// Data is not a whole number of sectors.
    #[error("guest sent {len} data bytes for {request}, not a multiple of 512")]
    NotSectorMultiple {
        /// The request.
        request: RequestType,
        /// Data length.
        len: u64,
    },
    /// A read or write with no data at all.
    #[error("guest sent {0} with no data")]
    NoData(RequestType),
    /// Larger than the device accepts in one request.
    #[error(
        "guest sent {len} bytes in one {request}; the device takes at most {max} (seg_max x size_max)"
    )]
    TooLarge {
        /// The request.
        request: RequestType,
        /// Data length.
        len: u64,
        /// Limit.
        max: u64,
    },
    /// Range past the end of the disk.
    #[error(
        "guest addressed sectors {sector}..+{sectors} beyond the capacity of {capacity} sectors"
    )]
    BeyondCapacity {
        /// First sector.
        sector: u64,
        /// Number of sectors.
        sectors: u64,
        /// Capacity in sectors.
        capacity: u64,
    },
    /// A write to a read-only device.
    #[error("guest sent {0} to a read-only device")]
    ReadOnly(RequestType),
    /// More discard/write-zeroes segments than `max_discard_seg`.
    #[error("guest sent {got} segments in {request}; the device takes at most {max}")]
    TooManySegments {
        /// The request.
        request: RequestType,
        /// Segments sent.
        got: u64,
        /// Limit.
        max: u32,
    },
    /// Discard/write-zeroes flags the spec makes UNSUPP.
    #[error("guest set flags {flags:#x} on {request}, which the device does not support")]
    UnsupportedFlags {
        /// The request.
        request: RequestType,
        /// The flags.
        flags: u32,
    },
    /// A request type the device does not implement.
    #[error("guest sent {0}, which this device does not implement")]
    Unsupported(RequestType),
    /// A request on a queue that does not carry it (docs/PROTOCOL.md,
    /// "Virtqueues"): a control command on a request queue, or anything
    /// else on the control queue.
    #[error(
        "guest sent {request} on {}; {}",
        queue_name(*.queue),
        if .request.is_control_command() { "control commands (types 29-35) go on the control queue" }
        else { "the control queue carries only control commands (types 29-35)" }
    )]
    WrongQueue {
        /// The request.
        request: RequestType,
        /// The queue it came on.
        queue: QueueRole,
    },
    /// An inline-encryption request although the driver did not
    /// negotiate both VIRTIO_BLK_F_INLINE_ENCRYPTION and VIRTIO_BLK_F_CTRL_VQ.
    #[error(
        "guest sent {0} without negotiating both VIRTIO_BLK_F_INLINE_ENCRYPTION (23) and VIRTIO_BLK_F_CTRL_VQ (22)"
    )]
    CryptoNotNegotiated(RequestType),
    /// Guest memory access failed although the range was checked.
    #[error("guest memory access failed")]
    Memory(#[source] vm_memory::GuestMemoryError),
    /// The engine refused the request.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The host failed: image I/O.
    #[error("host I/O error during {request} on the image")]
    Io {
        /// The request.
        request: RequestType,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

fn queue_name(queue: QueueRole) -> String {
    match queue {
        QueueRole::Request(index) => format!("request queue {index}"),
        QueueRole::Control => "the control queue".to_owned(),
    }
}

impl RequestError {
    /// The status the guest gets.
    pub fn status(&self) -> Status {
        match self {
            Self::Unsupported(_)
            | Self::UnsupportedFlags { .. }
            | Self::WrongQueue { .. }
            | Self::CryptoNotNegotiated(_) => Status::Unsupp,
            Self::Engine(error) => error.status(),
            Self::Chain(_)
            | Self::ShortHeader(_)
            | Self::NoStatusByte
            | Self::PayloadSize { .. }
            | Self::ShortAnswer { .. }
            | Self::NotSectorMultiple { .. }
            | Self::NoData(_)
            | Self::TooLarge { .. }
            | Self::BeyondCapacity { .. }
            | Self::ReadOnly(_)
            | Self::TooManySegments { .. }
            | Self::Memory(_)
            | Self::Io { .. } => Status::IoErr,
        }
    }

    /// A stable short name for stats and traces.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Chain(ChainError::Broken) => "broken-chain",
            Self::Chain(ChainError::ReadableAfterWritable) => "readable-after-writable",
            Self::Chain(ChainError::OutsideMemory { .. }) => "outside-guest-memory",
            Self::ShortHeader(_) => "short-header",
            Self::NoStatusByte => "no-status-byte",
            Self::PayloadSize { .. } => "payload-size",
            Self::ShortAnswer { .. } => "short-answer-buffer",
            Self::NotSectorMultiple { .. } => "not-sector-multiple",
            Self::NoData(_) => "no-data",
            Self::TooLarge { .. } => "too-large",
            Self::BeyondCapacity { .. } => "beyond-capacity",
            Self::ReadOnly(_) => "read-only",
            Self::TooManySegments { .. } => "too-many-segments",
            Self::UnsupportedFlags { .. } => "unsupported-flags",
            Self::Unsupported(_) => "unsupported-request",
            Self::WrongQueue { .. } => "wrong-queue",
            Self::CryptoNotNegotiated(_) => "crypto-not-negotiated",
            Self::Memory(_) => "guest-memory",
            Self::Engine(error) => error.kind(),
            Self::Io { .. } => "host-io",
        }
    }

    /// True when the host, not the guest, is at fault.
    pub fn is_host_fault(&self) -> bool {
        matches!(self, Self::Io { .. })
    }
}
