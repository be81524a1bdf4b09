//! Descriptor chains as the caller describes them (VIRTIO 1.2 §2.7.5).
//!
//! Two levels:
//! - [`Segment`]: one buffer, readable or writable by the device. A list
//!   of segments becomes a well-formed chain (linked with NEXT, in order).
//! - [`RawDescriptor`]: one descriptor with arbitrary flags and `next`,
//!   for negative tests: loops, dangling `next`, indirect tables (valid or
//!   not), anything the driver rules of §2.7.5.2 forbid.
//!
//! Addresses are never checked here: a chain may point outside guest
//! memory on purpose.

use virtio_queue::desc::split::Descriptor;

use crate::error::{Error, Result};
use crate::vring::{DESC_SIZE, VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE};

/// One buffer of a descriptor chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Guest physical address.
    pub addr: u64,
    /// Length in bytes.
    pub len: u32,
    /// True when the device may write it (VIRTQ_DESC_F_WRITE).
    pub writable: bool,
}

impl Segment {
    /// A device-readable buffer.
    pub const fn readable(addr: u64, len: u32) -> Self {
        Self {
            addr,
            len,
            writable: false,
        }
    }

    /// A device-writable buffer.
    pub const fn writable(addr: u64, len: u32) -> Self {
        Self {
            addr,
            len,
            writable: true,
        }
    }
}

/// Where a raw descriptor's `next` points.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RawNext {
    /// Last descriptor: NEXT is not added (it stays set if the caller put
    /// it in `flags`, with `next` = 0).
    End,
    /// The descriptor at this position of the same list (in the ring:
    /// whatever slot the queue gave it; in an indirect table: this
    /// index). Sets NEXT. Pointing backwards makes a loop.
    Index(usize),
    /// This raw value, e.g. past the end of the table. Sets NEXT.
    Absolute(u16),
}

/// One descriptor exactly as it will be written (`struct virtq_desc`,
/// §2.7.5), except that `next` is symbolic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawDescriptor {
    /// Guest physical address.
    pub addr: u64,
    /// Length in bytes.
    pub len: u32,
    /// VIRTQ_DESC_F_* flags; NEXT is added when `next` is not `End`.
    pub flags: u16,
    /// Successor.
    pub next: RawNext,
}

impl RawDescriptor {
    /// A descriptor for `segment`, with no successor.
    pub const fn from_segment(segment: Segment) -> Self {
        Self {
            addr: segment.addr,
            len: segment.len,
            flags: if segment.writable {
                VIRTQ_DESC_F_WRITE
            } else {
                0
            },
            next: RawNext::End,
        }
    }

    /// A descriptor naming an indirect table of `entries` descriptors at
    /// `addr` (§2.7.5.3).
    pub const fn indirect(addr: u64, entries: u32) -> Self {
        Self {
            addr,
            len: entries.saturating_mul(DESC_SIZE as u32),
            flags: VIRTQ_DESC_F_INDIRECT,
            next: RawNext::End,
        }
    }

    /// The same descriptor with another successor.
    pub const fn with_next(self, next: RawNext) -> Self {
        Self { next, ..self }
    }

    /// The same descriptor with extra flags ORed in.
    pub const fn with_flags(self, flags: u16) -> Self {
        Self {
            flags: self.flags | flags,
            ..self
        }
    }

    /// Encodes the descriptor; `slots[i]` is the table index the `i`-th
    /// descriptor of the list occupies.
    pub(crate) fn encode(&self, slots: &[u16]) -> Result<Descriptor> {
        let (flags, next) = match self.next {
            RawNext::End => (self.flags, 0),
            RawNext::Absolute(next) => (self.flags | VIRTQ_DESC_F_NEXT, next),
            RawNext::Index(position) => {
                let next = *slots.get(position).ok_or_else(|| {
                    Error::InvalidArgument(format!(
                        "raw descriptor links to position {position} of a {}-descriptor list",
                        slots.len()
                    ))
                })?;
                (self.flags | VIRTQ_DESC_F_NEXT, next)
            }
        };
        Ok(Descriptor::new(self.addr, self.len, flags, next))
    }
}

/// Links segments in order into a well-formed chain.
pub fn link(segments: &[Segment]) -> Vec<RawDescriptor> {
    let last = segments.len().saturating_sub(1);
    segments
        .iter()
        .enumerate()
        .map(|(position, segment)| {
            let raw = RawDescriptor::from_segment(*segment);
            if position == last {
                raw
            } else {
                raw.with_next(RawNext::Index(position + 1))
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_sets_next_on_all_but_the_last() {
        let chain = link(&[
            Segment::readable(0x1000, 16),
            Segment::writable(0x2000, 512),
            Segment::writable(0x3000, 1),
        ]);
        let slots = [7u16, 3, 9];
        let encoded: Vec<Descriptor> = chain
            .iter()
            .map(|d| d.encode(&slots).expect("valid"))
            .collect();
        assert_eq!(encoded[0].flags(), VIRTQ_DESC_F_NEXT);
        assert_eq!(encoded[0].next(), 3);
        assert_eq!(encoded[1].flags(), VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE);
        assert_eq!(encoded[1].next(), 9);
        assert_eq!(encoded[2].flags(), VIRTQ_DESC_F_WRITE);
        assert_eq!(encoded[2].len(), 1);
    }

    #[test]
    fn raw_links_can_loop_or_dangle() {
        let looped =
            RawDescriptor::from_segment(Segment::readable(0, 1)).with_next(RawNext::Index(0));
        assert_eq!(looped.encode(&[5]).expect("valid").next(), 5);
        let dangling =
            RawDescriptor::from_segment(Segment::readable(0, 1)).with_next(RawNext::Absolute(999));
        assert_eq!(dangling.encode(&[5]).expect("valid").next(), 999);
        assert!(looped.with_next(RawNext::Index(3)).encode(&[5]).is_err());
        let table = RawDescriptor::indirect(0x4000, 3);
        assert_eq!(table.len, 48);
        assert_eq!(table.flags, VIRTQ_DESC_F_INDIRECT);
    }
}
