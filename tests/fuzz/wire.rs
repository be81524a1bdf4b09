//! A request as it lies in guest memory: one arena of bytes (every buffer
//! of the request at some offset), the descriptors in the ring and an
//! optional indirect table; and the walk a device makes over them.
//!
//! The walk follows VIRTIO 1.2 §2.7.5 the way the device's queue library
//! (virtio-queue) reads a chain, and then the device's own rule for
//! collecting it (emulator/src/device/chain.rs): zero-length descriptors
//! are skipped, a descriptor outside guest memory or a readable one after
//! a writable one makes the chain malformed, and a chain that does not end
//! on a descriptor without NEXT is broken. The status byte is the last
//! byte of the last writable segment collected.

use icelab_frontend::vring::{VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_WRITE};
use icelab_frontend::{RawDescriptor, RawNext};

/// Where a descriptor points.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Addr {
    /// This offset of the request's arena (in guest memory).
    Arena(u64),
    /// The request's indirect table.
    Table,
    /// An absolute guest address; the generator only uses addresses that
    /// are outside guest memory for descriptors with a length.
    Abs(u64),
}

/// A descriptor's successor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// No NEXT flag.
    End,
    /// The descriptor at this position of the same list (ring or table).
    Pos(usize),
    /// This raw index: past the ring (>= queue size) or past the table.
    Raw(u16),
}

/// One descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Desc {
    pub addr: Addr,
    pub len: u32,
    pub write: bool,
    pub indirect: bool,
    pub next: Next,
}

impl Desc {
    /// A plain descriptor with no successor.
    pub fn new(addr: Addr, len: u32, write: bool) -> Self {
        Self {
            addr,
            len,
            write,
            indirect: false,
            next: Next::End,
        }
    }

    fn has_next(&self) -> bool {
        self.next != Next::End
    }

    /// The descriptor for the frontend, with the arena and the table at
    /// these guest addresses.
    pub fn raw(&self, arena: u64, table: u64) -> RawDescriptor {
        let addr = match self.addr {
            Addr::Arena(offset) => arena + offset,
            Addr::Table => table,
            Addr::Abs(addr) => addr,
        };
        let mut flags = 0;
        if self.write {
            flags |= VIRTQ_DESC_F_WRITE;
        }
        if self.indirect {
            flags |= VIRTQ_DESC_F_INDIRECT;
        }
        RawDescriptor {
            addr,
            len: self.len,
            flags,
            next: match self.next {
                Next::End => RawNext::End,
                Next::Pos(position) => RawNext::Index(position),
                Next::Raw(index) => RawNext::Absolute(index),
            },
        }
    }
}

/// A request in guest memory.
#[derive(Clone, Debug)]
pub struct Wire {
    /// The arena's contents before submission.
    pub arena: Vec<u8>,
    /// The descriptors in the ring, head first.
    pub ring: Vec<Desc>,
    /// The entries of the indirect table, when a ring descriptor points at
    /// `Addr::Table`.
    pub table: Vec<Desc>,
}

impl Wire {
    /// A short description of the descriptors, for failure messages.
    pub fn describe(&self) -> String {
        let one = |d: &Desc| {
            let addr = match d.addr {
                Addr::Arena(offset) => format!("arena+{offset}"),
                Addr::Table => "table".to_owned(),
                Addr::Abs(addr) => format!("{addr:#x}"),
            };
            let next = match d.next {
                Next::End => String::new(),
                Next::Pos(position) => format!("->{position}"),
                Next::Raw(index) => format!("->raw{index}"),
            };
            format!(
                "{}{}{addr}:{}{next}",
                if d.indirect { "I" } else { "" },
                if d.write { "W" } else { "R" },
                d.len
            )
        };
        let ring: Vec<String> = self.ring.iter().map(one).collect();
        let mut out = format!("ring [{}]", ring.join(" "));
        if !self.table.is_empty() {
            let table: Vec<String> = self.table.iter().map(one).collect();
            out.push_str(&format!(" table [{}]", table.join(" ")));
        }
        out.push_str(&format!(" arena {} B", self.arena.len()));
        out
    }
}

/// What the device collects from a chain.
#[derive(Clone, Debug, Default)]
pub struct Walk {
    /// Readable arena segments (offset, length), in chain order.
    pub readable: Vec<(u64, u32)>,
    /// Writable arena segments, in chain order.
    pub writable: Vec<(u64, u32)>,
    /// Why the chain is malformed, if it is.
    pub error: Option<&'static str>,
}

impl Walk {
    /// Arena offset of the status byte: the last writable byte.
    pub fn status_at(&self) -> Option<u64> {
        self.writable
            .last()
            .map(|(offset, len)| offset + u64::from(*len) - 1)
    }

    /// Total writable bytes.
    pub fn writable_len(&self) -> u64 {
        self.writable.iter().map(|(_, len)| u64::from(*len)).sum()
    }

    /// The readable bytes, concatenated.
    pub fn readable_bytes(&self, arena: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for (offset, len) in &self.readable {
            let start = *offset as usize;
            out.extend_from_slice(&arena[start..start + *len as usize]);
        }
        out
    }

    /// Writes `bytes` into `arena` at the start of the writable stream.
    pub fn write_stream(&self, arena: &mut [u8], bytes: &[u8]) {
        let mut done = 0;
        for (offset, len) in &self.writable {
            if done == bytes.len() {
                break;
            }
            let n = (*len as usize).min(bytes.len() - done);
            let start = *offset as usize;
            arena[start..start + n].copy_from_slice(&bytes[done..done + n]);
            done += n;
        }
        assert_eq!(
            done,
            bytes.len(),
            "harness bug: answer longer than the writable stream"
        );
    }
}

/// Where the cursor of the walk is.
#[derive(Clone, Copy)]
enum At {
    Ring(usize),
    Table(usize),
    Beyond,
}

/// The walk of `wire` by a device with queues of `queue_size` entries and
/// `mem_size` bytes of guest memory.
pub fn walk(wire: &Wire, queue_size: u16, mem_size: u64) -> Walk {
    // 1. The descriptors the chain yields (virtio-queue's DescriptorChain).
    let mut yielded: Vec<Desc> = Vec::new();
    let mut at = At::Ring(0);
    let mut size = u32::from(queue_size);
    let mut ttl = size;
    let mut in_table = false;
    let mut table_readable = false;
    let mut bytes: u32 = 0;
    loop {
        if ttl == 0 {
            break;
        }
        let desc = match at {
            At::Beyond => break,
            At::Ring(position) => wire.ring[position],
            At::Table(index) => {
                if !table_readable {
                    break;
                }
                *wire.table.get(index).unwrap_or_else(|| {
                    panic!(
                        "harness bug: table entry {index} of {} read",
                        wire.table.len()
                    )
                })
            }
        };
        if desc.indirect {
            if in_table || desc.len % 16 != 0 || desc.len / 16 > u32::from(u16::MAX) {
                break;
            }
            size = desc.len / 16;
            ttl = size;
            in_table = true;
            table_readable = match desc.addr {
                Addr::Table => true,
                Addr::Abs(addr) => {
                    assert!(
                        addr >= mem_size,
                        "harness bug: absolute table address inside memory"
                    );
                    false
                }
                Addr::Arena(_) => panic!("harness bug: indirect table in the arena"),
            };
            at = if size == 0 { At::Beyond } else { At::Table(0) };
            continue;
        }
        match bytes.checked_add(desc.len) {
            Some(total) => bytes = total,
            None => break,
        }
        if desc.has_next() {
            ttl -= 1;
            at = match (desc.next, in_table) {
                (Next::Pos(position), false) => At::Ring(position),
                (Next::Raw(index), false) => {
                    assert!(
                        index >= queue_size,
                        "harness bug: raw next {index} inside the ring"
                    );
                    At::Beyond
                }
                (Next::Pos(index), true) if (index as u64) < u64::from(size) => At::Table(index),
                (Next::Raw(index), true) if u32::from(index) < size => {
                    At::Table(usize::from(index))
                }
                (_, true) => At::Beyond,
                (Next::End, _) => unreachable!(),
            };
        } else {
            ttl = 0;
        }
        yielded.push(desc);
    }

    // 2. What the device collects (emulator/src/device/chain.rs).
    let mut walk = Walk::default();
    let ended_cleanly = yielded.last().is_some_and(|d| !d.has_next());
    let arena_len = wire.arena.len() as u64;
    for desc in &yielded {
        if desc.len == 0 {
            continue;
        }
        let offset = match desc.addr {
            Addr::Arena(offset) => {
                assert!(
                    offset + u64::from(desc.len) <= arena_len,
                    "harness bug: descriptor past the arena"
                );
                offset
            }
            Addr::Abs(addr) => {
                assert!(
                    addr.checked_add(u64::from(desc.len))
                        .is_none_or(|end| end > mem_size),
                    "harness bug: absolute descriptor inside guest memory"
                );
                walk.error.get_or_insert("outside-guest-memory");
                continue;
            }
            Addr::Table => panic!("harness bug: data descriptor on the table"),
        };
        if desc.write {
            walk.writable.push((offset, desc.len));
        } else if walk.writable.is_empty() {
            walk.readable.push((offset, desc.len));
        } else {
            walk.error.get_or_insert("readable-after-writable");
        }
    }
    if walk.error.is_none() && !ended_cleanly {
        walk.error = Some("broken-chain");
    }
    walk
}
