//! Walking a descriptor chain (VIRTIO 1.2 §2.7.5, §2.7.13) into readable
//! and writable segments, and byte cursors over them.
//!
//! Nothing here allocates once the caller's [`Segments`] has grown to its
//! working size; every guest address is checked against guest memory
//! before the request does anything else.

use vm_memory::{Bytes, GuestAddress, GuestMemory, Permissions};

/// One buffer of a chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Guest physical address.
    pub addr: GuestAddress,
    /// Length in bytes.
    pub len: u32,
}

/// What is wrong with a chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// The chain ended early: a loop, a `next` past the table, or a bad
    /// indirect table.
    #[error(
        "guest gave a broken descriptor chain (loop, next index out of range, or bad indirect table)"
    )]
    Broken,
    /// A device-readable descriptor followed a device-writable one.
    #[error("guest placed a device-readable descriptor after a device-writable one")]
    ReadableAfterWritable,
    /// A descriptor points outside guest memory.
    #[error("guest gave a descriptor at {addr:#x}+{len} outside guest memory")]
    OutsideMemory {
        /// Start address.
        addr: u64,
        /// Length.
        len: u32,
    },
}

/// The segments of one chain, readable first. Reused across requests.
#[derive(Debug, Default)]
pub struct Segments {
    readable: Vec<Segment>,
    writable: Vec<Segment>,
}

impl Segments {
    /// Collects `descriptors` (a chain, as `virtio_queue::DescriptorChain`
    /// yields it). Zero-length descriptors are dropped.
    pub fn collect<M: GuestMemory>(
        &mut self,
        mem: &M,
        descriptors: impl Iterator<Item = virtio_queue::desc::split::Descriptor>,
    ) -> Result<(), ChainError> {
        self.readable.clear();
        self.writable.clear();
        let mut ended_cleanly = false;
        let mut error = None;
        for desc in descriptors {
            ended_cleanly = !desc.has_next();
            if desc.len() == 0 {
                continue;
            }
            let segment = Segment {
                addr: desc.addr(),
                len: desc.len(),
            };
            let access = if desc.is_write_only() {
                Permissions::Write
            } else {
                Permissions::Read
            };
            if !mem.check_range(segment.addr, segment.len as usize, access) {
                error.get_or_insert(ChainError::OutsideMemory {
                    addr: segment.addr.0,
                    len: segment.len,
                });
                continue;
            }
            if desc.is_write_only() {
                self.writable.push(segment);
            } else if self.writable.is_empty() {
                self.readable.push(segment);
            } else {
                error.get_or_insert(ChainError::ReadableAfterWritable);
            }
        }
        match error {
            Some(error) => Err(error),
            None if !ended_cleanly => Err(ChainError::Broken),
            None => Ok(()),
        }
    }

    /// Total device-readable bytes.
    pub fn readable_len(&self) -> u64 {
        self.readable.iter().map(|s| u64::from(s.len)).sum()
    }

    /// Total device-writable bytes.
    pub fn writable_len(&self) -> u64 {
        self.writable.iter().map(|s| u64::from(s.len)).sum()
    }

    /// A cursor over the readable bytes.
    pub fn reader(&self) -> Cursor<'_> {
        Cursor::new(&self.readable)
    }

    /// A cursor over the writable bytes.
    pub fn writer(&self) -> Cursor<'_> {
        Cursor::new(&self.writable)
    }

    /// Address of the last writable byte (the status byte), if any.
    pub fn status_addr(&self) -> Option<GuestAddress> {
        let last = self.writable.last()?;
        Some(GuestAddress(last.addr.0 + u64::from(last.len) - 1))
    }
}

/// A position in a list of segments.
#[derive(Clone, Debug)]
pub struct Cursor<'a> {
    segments: &'a [Segment],
    index: usize,
    offset: u32,
    remaining: u64,
}

impl<'a> Cursor<'a> {
    fn new(segments: &'a [Segment]) -> Self {
        Self {
            segments,
            index: 0,
            offset: 0,
            remaining: segments.iter().map(|s| u64::from(s.len)).sum(),
        }
    }

    /// Bytes left.
    pub fn remaining(&self) -> u64 {
        self.remaining
    }

    /// Copies the next `buf.len()` bytes out of guest memory. The caller
    /// checks `remaining()` first; a short chain or a memory error leaves
    /// an error.
    pub fn read<M: GuestMemory>(
        &mut self,
        mem: &M,
        buf: &mut [u8],
    ) -> Result<(), vm_memory::GuestMemoryError> {
        self.walk(buf.len(), |addr, start, len| {
            mem.read_slice(&mut buf[start..start + len], addr)
        })
    }

    /// Copies `buf` into guest memory at the cursor.
    pub fn write<M: GuestMemory>(
        &mut self,
        mem: &M,
        buf: &[u8],
    ) -> Result<(), vm_memory::GuestMemoryError> {
        self.walk(buf.len(), |addr, start, len| {
            mem.write_slice(&buf[start..start + len], addr)
        })
    }

    /// The guest-contiguous piece at the cursor: the rest of the current
    /// segment, at most `max` bytes. `None` when nothing is left or `max`
    /// is 0. The cursor does not move.
    pub fn piece(&self, max: u64) -> Option<(GuestAddress, u64)> {
        if self.remaining == 0 || max == 0 {
            return None;
        }
        let segment = self.segments[self.index];
        let len = u64::from(segment.len - self.offset).min(max);
        Some((GuestAddress(segment.addr.0 + u64::from(self.offset)), len))
    }

    /// Moves the cursor `len` bytes forward.
    pub fn advance(&mut self, len: usize) -> Result<(), vm_memory::GuestMemoryError> {
        self.walk(len, |_, _, _| Ok(()))
    }

    fn walk(
        &mut self,
        total: usize,
        mut copy: impl FnMut(GuestAddress, usize, usize) -> Result<(), vm_memory::GuestMemoryError>,
    ) -> Result<(), vm_memory::GuestMemoryError> {
        if total as u64 > self.remaining {
            return Err(vm_memory::GuestMemoryError::PartialBuffer {
                expected: total,
                completed: 0,
            });
        }
        let mut done = 0;
        while done < total {
            let segment = self.segments[self.index];
            let available = (segment.len - self.offset) as usize;
            let len = available.min(total - done);
            copy(
                GuestAddress(segment.addr.0 + u64::from(self.offset)),
                done,
                len,
            )?;
            done += len;
            self.offset += len as u32;
            if self.offset == segment.len {
                self.index += 1;
                self.offset = 0;
            }
        }
        self.remaining -= total as u64;
        Ok(())
    }
}
