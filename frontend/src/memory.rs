//! Guest memory: a memfd the backend maps through SET_MEM_TABLE.
//!
//! There is no VM, so the frontend plays the guest: it creates one memfd,
//! maps it itself (through vm-memory) and sends the fd to the backend,
//! which maps the same pages. Guest physical addresses start at 0; the
//! first page is mapped but never handed out, so a zero address in a
//! request always names memory nobody allocated.
//!
//! [`SharedMemory`] is cheap to clone and `Send + Sync`; queues on
//! different threads share it. [`GuestBuffer`] is an allocated range that
//! returns itself to the allocator when dropped.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};

use vhost::VhostUserMemoryRegionInfo;
use vm_memory::{
    Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestRegionMmap,
    MmapRegion,
};

use crate::allocator::Allocator;
use crate::error::{Error, Result};

/// Default guest memory size: 64 MiB.
pub const DEFAULT_MEMORY_SIZE: u64 = 64 << 20;
/// Page size the memory size must be a multiple of.
pub const PAGE_SIZE: u64 = 4096;

/// The frontend's guest memory, shared with the backend.
#[derive(Clone)]
pub struct SharedMemory {
    inner: Arc<Inner>,
}

struct Inner {
    mmap: GuestMemoryMmap,
    size: u64,
    allocator: Mutex<Allocator>,
}

impl std::fmt::Debug for SharedMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedMemory")
            .field("size", &self.inner.size)
            .field("free", &self.free_bytes())
            .finish()
    }
}

impl SharedMemory {
    /// Creates `size` bytes of memfd-backed guest memory at guest physical
    /// address 0. `size` must be a non-zero multiple of [`PAGE_SIZE`].
    pub fn new(size: u64) -> Result<Self> {
        if size == 0 || !size.is_multiple_of(PAGE_SIZE) {
            return Err(Error::InvalidArgument(format!(
                "guest memory size {size} is not a non-zero multiple of {PAGE_SIZE}"
            )));
        }
        let map_len = usize::try_from(size).map_err(|_| {
            Error::InvalidArgument(format!("guest memory size {size} does not fit in usize"))
        })?;
        let file = memfd("icelab-guest-memory")?;
        file.set_len(size).map_err(|source| Error::MemorySetup {
            what: "ftruncate of the memfd",
            source,
        })?;
        let region =
            MmapRegion::from_file(FileOffset::new(file, 0), map_len).map_err(|source| {
                Error::MemorySetup {
                    what: "mmap of the memfd",
                    source: io::Error::other(source),
                }
            })?;
        let region =
            GuestRegionMmap::new(region, GuestAddress(0)).ok_or_else(|| Error::MemorySetup {
                what: "guest region at address 0",
                source: io::Error::other("vm-memory rejected the region"),
            })?;
        let mmap =
            GuestMemoryMmap::from_regions(vec![region]).map_err(|source| Error::MemorySetup {
                what: "guest memory map",
                source: io::Error::other(source),
            })?;
        Ok(Self {
            inner: Arc::new(Inner {
                mmap,
                size,
                allocator: Mutex::new(Allocator::new(PAGE_SIZE, size - PAGE_SIZE)),
            }),
        })
    }

    /// Size of guest memory in bytes; valid guest addresses are
    /// `0..size()`.
    pub fn size(&self) -> u64 {
        self.inner.size
    }

    /// Free bytes left in the allocator (possibly fragmented).
    pub fn free_bytes(&self) -> u64 {
        self.allocator().free_bytes()
    }

    /// Allocates `len` bytes aligned to `align` (a power of two; at least
    /// 64 is used). The contents are whatever the range held before.
    pub fn alloc(&self, len: u64, align: u64) -> Result<GuestBuffer> {
        if !align.is_power_of_two() {
            return Err(Error::InvalidArgument(format!(
                "alignment {align} is not a power of two"
            )));
        }
        let mut allocator = self.allocator();
        let addr = allocator
            .alloc(len, align)
            .ok_or_else(|| Error::OutOfGuestMemory {
                requested: len,
                free: allocator.free_bytes(),
            })?;
        Ok(GuestBuffer {
            memory: self.clone(),
            addr,
            len,
        })
    }

    /// Allocates `len` zeroed bytes aligned to `align`.
    pub fn alloc_zeroed(&self, len: u64, align: u64) -> Result<GuestBuffer> {
        let buffer = self.alloc(len, align)?;
        buffer.fill(0)?;
        Ok(buffer)
    }

    /// Copies `data` into guest memory at `addr`.
    pub fn write(&self, addr: u64, data: &[u8]) -> Result<()> {
        self.inner
            .mmap
            .write_slice(data, GuestAddress(addr))
            .map_err(|source| Error::GuestMemory {
                addr,
                len: data.len(),
                source,
            })
    }

    /// Copies guest memory at `addr` into `out`.
    pub fn read(&self, addr: u64, out: &mut [u8]) -> Result<()> {
        self.inner
            .mmap
            .read_slice(out, GuestAddress(addr))
            .map_err(|source| Error::GuestMemory {
                addr,
                len: out.len(),
                source,
            })
    }

    /// Reads `len` bytes at `addr` into a new vector.
    pub fn read_vec(&self, addr: u64, len: usize) -> Result<Vec<u8>> {
        let mut out = vec![0u8; len];
        self.read(addr, &mut out)?;
        Ok(out)
    }

    /// Sets `len` bytes at `addr` to `byte`.
    pub fn fill(&self, addr: u64, len: u64, byte: u8) -> Result<()> {
        const CHUNK: u64 = 4096;
        let pattern = [byte; CHUNK as usize];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(CHUNK);
            // n <= CHUNK, so the cast cannot truncate.
            self.write(addr + done, &pattern[..n as usize])?;
            done += n;
        }
        Ok(())
    }

    /// Writes a plain-old-data value (a descriptor, a used element).
    pub(crate) fn write_obj<T: vm_memory::ByteValued>(&self, addr: u64, value: T) -> Result<()> {
        self.inner
            .mmap
            .write_obj(value, GuestAddress(addr))
            .map_err(|source| Error::GuestMemory {
                addr,
                len: size_of::<T>(),
                source,
            })
    }

    /// Atomically stores a little-endian u16 (ring indices and flags).
    pub(crate) fn store_u16(&self, addr: u64, value: u16, order: Ordering) -> Result<()> {
        self.inner
            .mmap
            .store(value.to_le(), GuestAddress(addr), order)
            .map_err(|source| Error::GuestMemory {
                addr,
                len: 2,
                source,
            })
    }

    /// Atomically loads a little-endian u16.
    pub(crate) fn load_u16(&self, addr: u64, order: Ordering) -> Result<u16> {
        self.inner
            .mmap
            .load::<u16>(GuestAddress(addr), order)
            .map(u16::from_le)
            .map_err(|source| Error::GuestMemory {
                addr,
                len: 2,
                source,
            })
    }

    /// Atomically loads a little-endian u32.
    pub(crate) fn load_u32(&self, addr: u64, order: Ordering) -> Result<u32> {
        self.inner
            .mmap
            .load::<u32>(GuestAddress(addr), order)
            .map(u32::from_le)
            .map_err(|source| Error::GuestMemory {
                addr,
                len: 4,
                source,
            })
    }

    /// The region as SET_MEM_TABLE describes it: guest address, size, the
    /// frontend's own virtual address, and the memfd with offset 0.
    pub(crate) fn region_info(&self) -> Result<VhostUserMemoryRegionInfo> {
        let region = self
            .inner
            .mmap
            .iter()
            .next()
            .ok_or_else(|| Error::MemorySetup {
                what: "guest memory has no region",
                source: io::Error::other("empty guest memory map"),
            })?;
        VhostUserMemoryRegionInfo::from_guest_region(region).map_err(|source| Error::MemorySetup {
            what: "memory region info",
            source: io::Error::other(source),
        })
    }

    /// The frontend's virtual address of a guest physical address.
    /// vhost-user's SET_VRING_ADDR speaks in these addresses, which the
    /// backend translates through the `userspace_addr` of SET_MEM_TABLE.
    pub(crate) fn user_address(&self, addr: u64) -> Result<u64> {
        self.inner
            .mmap
            .get_host_address(GuestAddress(addr))
            .map(|ptr| ptr as u64)
            .map_err(|source| Error::GuestMemory {
                addr,
                len: 0,
                source,
            })
    }

    /// The vm-memory view, for unit tests that play the device.
    #[cfg(test)]
    pub(crate) fn guest_memory(&self) -> &GuestMemoryMmap {
        &self.inner.mmap
    }

    fn allocator(&self) -> MutexGuard<'_, Allocator> {
        // The allocator holds no invariant a panicking thread could break
        // half-way (alloc and free are each one BTreeMap edit), so a
        // poisoned lock is still usable.
        self.inner
            .allocator
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Creates an anonymous memory file (`memfd_create(2)`).
fn memfd(name: &str) -> Result<File> {
    let name = std::ffi::CString::new(name).map_err(|_| Error::MemorySetup {
        what: "memfd name",
        source: io::Error::other("name contains a NUL byte"),
    })?;
    // SAFETY: `name` is a valid NUL-terminated string that outlives the
    // call; memfd_create has no other memory-safety preconditions.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(Error::MemorySetup {
            what: "memfd_create",
            source: io::Error::last_os_error(),
        });
    }
    // SAFETY: `fd` was just returned by memfd_create, is valid, and nothing
    // else owns it; the File takes sole ownership and closes it on drop.
    let file = unsafe { File::from_raw_fd(fd) };
    debug_assert!(file.as_raw_fd() >= 0);
    Ok(file)
}

/// A range of guest memory owned by the caller; freed on drop.
#[derive(Debug)]
pub struct GuestBuffer {
    memory: SharedMemory,
    addr: u64,
    len: u64,
}

impl GuestBuffer {
    /// Guest physical address of the first byte.
    pub fn addr(&self) -> u64 {
        self.addr
    }

    /// Length in bytes as requested.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True for a zero-length buffer.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The guest memory the buffer belongs to.
    pub fn memory(&self) -> &SharedMemory {
        &self.memory
    }

    /// Guest address of byte `offset`.
    pub fn at(&self, offset: u64) -> u64 {
        self.addr + offset
    }

    /// Writes `data` at `offset` into the buffer.
    pub fn write(&self, offset: u64, data: &[u8]) -> Result<()> {
        self.check(offset, data.len() as u64)?;
        self.memory.write(self.addr + offset, data)
    }

    /// Reads `out.len()` bytes at `offset`.
    pub fn read(&self, offset: u64, out: &mut [u8]) -> Result<()> {
        self.check(offset, out.len() as u64)?;
        self.memory.read(self.addr + offset, out)
    }

    /// Reads the whole buffer.
    pub fn to_vec(&self) -> Result<Vec<u8>> {
        let len = usize::try_from(self.len)
            .map_err(|_| Error::InvalidArgument(format!("buffer of {} bytes", self.len)))?;
        self.memory.read_vec(self.addr, len)
    }

    /// Sets every byte to `byte`.
    pub fn fill(&self, byte: u8) -> Result<()> {
        self.memory.fill(self.addr, self.len, byte)
    }

    fn check(&self, offset: u64, len: u64) -> Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => Ok(()),
            _ => Err(Error::InvalidArgument(format!(
                "access {offset}+{len} outside a guest buffer of {} bytes",
                self.len
            ))),
        }
    }
}

impl Drop for GuestBuffer {
    fn drop(&mut self) {
        self.memory.allocator().free(self.addr, self.len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_sizes_that_are_not_pages() {
        assert!(matches!(
            SharedMemory::new(0),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            SharedMemory::new(4097),
            Err(Error::InvalidArgument(_))
        ));
    }

    #[test]
    fn buffers_round_trip_and_are_freed() {
        let memory = SharedMemory::new(1 << 20).expect("memfd");
        let free = memory.free_bytes();
        {
            let buffer = memory.alloc(10, 4096).expect("room");
            assert_eq!(buffer.addr() % 4096, 0);
            assert!(buffer.addr() >= PAGE_SIZE, "page 0 is never handed out");
            buffer.write(2, b"hello").expect("in bounds");
            let mut out = [0u8; 5];
            buffer.read(2, &mut out).expect("in bounds");
            assert_eq!(&out, b"hello");
            assert!(buffer.write(8, b"xyz").is_err(), "bounds are checked");
        }
        assert_eq!(memory.free_bytes(), free);
    }

    #[test]
    fn region_info_points_at_the_memfd() {
        let memory = SharedMemory::new(1 << 20).expect("memfd");
        let info = memory.region_info().expect("region");
        assert_eq!(info.guest_phys_addr, 0);
        assert_eq!(info.memory_size, 1 << 20);
        assert_eq!(info.mmap_offset, 0);
        assert!(info.mmap_handle >= 0);
        assert_eq!(memory.user_address(0).expect("mapped"), info.userspace_addr);
        memory
            .store_u16(4096, 0xbeef, Ordering::Release)
            .expect("mapped");
        assert_eq!(
            memory.load_u16(4096, Ordering::Acquire).expect("mapped"),
            0xbeef
        );
        assert!(memory.write(1 << 20, &[1]).is_err(), "outside guest memory");
    }
}
