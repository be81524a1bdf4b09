//! A shared mapping of the whole image, so that the engine reads the
//! page cache once and writes guest memory once (CRYPTO_IN), and writes
//! the page cache straight from guest memory (CRYPTO_OUT).
//!
//! The capacity is fixed at open, so the file is mapped once, whole
//! (`MAP_SHARED`; `PROT_READ` for a read-only image). The mapping is
//! virtual only: a large image costs address space, not memory.
//!
//! Coherence: the mapping shows the page cache, like `pread`. Stores
//! through it dirty page-cache pages that `fdatasync` (FLUSH) writes back
//! like any other: Linux tracks dirtying of shared file mappings per page
//! (write faults after each writeback), so no `msync` is needed. Punching
//! holes and zeroing ranges (`fallocate`) unmap the affected pages from
//! every mapping, so DISCARD and WRITE_ZEROES stay coherent too.
//!
//! Faults: see [`super::sigbus`]. A request brackets its use of the
//! mapping with [`Mapping::watch`] and [`Watch::faulted`].

use super::page_set::PageSet;
use super::sigbus::{self, Registration};
use std::fs::File;
use std::io;
use std::os::unix::io::AsRawFd;
use std::ptr::NonNull;

/// `madvise` advice of Linux 5.14 (not in the libc crate yet): fault in
/// the pages writable, allocating blocks, or fail instead of SIGBUS.
const MADV_POPULATE_WRITE: libc::c_int = 23;

/// Why an image cannot be mapped (the device then uses `pread`/`pwrite`).
#[derive(Debug, thiserror::Error)]
pub enum MappingError {
    /// The image does not fit the address space.
    #[error("the image of {0} bytes does not fit the address space")]
    TooLarge(u64),
    /// `mmap` failed.
    #[error("mmap failed")]
    Map(#[source] io::Error),
    /// The SIGBUS handler could not be installed.
    #[error("cannot install the SIGBUS handler")]
    Handler(#[source] io::Error),
    /// Every slot of the SIGBUS handler's table is taken.
    #[error("too many image mappings in this process")]
    TooMany,
}

/// The image, mapped shared.
#[derive(Debug)]
pub struct Mapping {
    base: NonNull<u8>,
    /// Bytes that may be accessed: the image's capacity.
    len: usize,
    /// Bytes mapped: `len` rounded up to whole pages.
    mapped: usize,
    writable: bool,
    /// Pages [`Mapping::populate_write`] has made writable, until
    /// [`Mapping::forget_populated`].
    populated: PageSet,
    /// Always `Some` until dropped (taken out first in `drop`).
    registration: Option<Registration>,
}

// SAFETY: the mapping is plain shared memory owned by this value; the raw
// pointer is only dereferenced through bounds-checked ranges by callers
// that follow the rules of `Mapping::range`. Its fault counter is atomic.
unsafe impl Send for Mapping {}
// SAFETY: as above; nothing in `Mapping` is mutated through `&self`
// except the kernel-side state of `madvise`.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps the first `len` bytes of `file` (which must be at least that
    /// long), writable when `writable` (the file must then be open for
    /// writing).
    pub fn new(file: &File, len: u64, writable: bool) -> Result<Self, MappingError> {
        let len = usize::try_from(len).map_err(|_| MappingError::TooLarge(len))?;
        let page = sigbus::page_size();
        let mapped = len
            .checked_next_multiple_of(page)
            .ok_or(MappingError::TooLarge(len as u64))?;
        let protection = if writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        // SAFETY: a new shared mapping at an address the kernel picks; it
        // aliases no Rust value.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                mapped,
                protection,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(MappingError::Map(io::Error::last_os_error()));
        }
        // Without MAP_FIXED the kernel never maps page zero.
        let Some(start) = NonNull::new(base.cast::<u8>()) else {
            return Err(MappingError::Map(io::ErrorKind::AddrNotAvailable.into()));
        };
        let unmap = || {
            // SAFETY: the mapping just made, used by nothing yet.
            unsafe { libc::munmap(base, mapped) };
        };
        let registration = match sigbus::register(base as usize, mapped) {
            Ok(Some(registration)) => registration,
            Ok(None) => {
                unmap();
                return Err(MappingError::TooMany);
            }
            Err(error) => {
                unmap();
                return Err(MappingError::Handler(error));
            }
        };
        Ok(Self {
            base: start,
            len,
            mapped,
            writable,
            populated: PageSet::new(if writable { mapped / page } else { 0 }),
            registration: Some(registration),
        })
    }

    /// True when the mapping may be written.
    pub fn writable(&self) -> bool {
        self.writable
    }

    /// SIGBUSes repaired in this mapping so far; once non-zero, some of
    /// its pages are zero pages instead of the file's.
    pub fn faults(&self) -> u64 {
        self.registration.as_ref().map_or(0, |r| r.slot().faults())
    }

    /// Starts watching for faults during one request.
    pub fn watch(&self) -> Watch<'_> {
        Watch {
            mapping: self,
            before: self.faults(),
        }
    }

    /// The address of the `len` bytes at `offset`, or `None` when they
    /// are not all inside the image.
    ///
    /// Dereferencing it: the bytes are the page cache, which other
    /// requests, other processes and the kernel may change at any time.
    /// Like guest memory (see [`super::guest_io`]), the engine only loads,
    /// combines and stores them and decides nothing on them, so a race
    /// gives garbage data, nothing else. A fault is repaired and counted
    /// ([`super::sigbus`]). Stores need [`Mapping::writable`].
    pub fn range(&self, offset: u64, len: usize) -> Option<NonNull<u8>> {
        let offset = usize::try_from(offset).ok()?;
        let end = offset.checked_add(len)?;
        if end > self.len {
            return None;
        }
        // SAFETY: `offset <= self.len`, inside (or one past) the mapping.
        Some(unsafe { self.base.add(offset) })
    }

    /// Asks the CPU to bring the `len` bytes at `offset` into its caches,
    /// if they are inside the image (a hint: it never faults).
    pub fn prefetch(&self, offset: u64, len: usize) {
        if let Some(start) = self.range(offset, len) {
            crate::engine::xts::prefetch_range(start.as_ptr(), len);
        }
    }

    /// True when every page of the `len` bytes at `offset` is in the page
    /// cache (`mincore`). Storing into a page that is not costs a page
    /// fault that reads or zeroes it and, on a fresh image, converts its
    /// block (measured: 2.3-2.7x the device CPU of encrypt + `pwrite` for
    /// 128 KiB writes to a fresh allocated image); `pwrite` brings it in
    /// for next time.
    pub fn resident(&self, offset: u64, len: usize) -> io::Result<bool> {
        if self.range(offset, len).is_none() {
            return Err(io::ErrorKind::InvalidInput.into());
        }
        const CHUNK: usize = 64;
        let page = sigbus::page_size();
        let mut start = offset as usize / page * page;
        let end = (offset as usize + len).next_multiple_of(page);
        let mut pages = [0u8; CHUNK];
        while start < end {
            let count = ((end - start) / page).min(CHUNK);
            // SAFETY: the page-aligned range lies inside our mapping;
            // mincore writes one byte per page into `pages`, which holds
            // `count` of them.
            let rc = unsafe {
                libc::mincore(
                    self.base.as_ptr().add(start).cast(),
                    count * page,
                    pages.as_mut_ptr(),
                )
            };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
            if pages[..count].iter().any(|state| state & 1 == 0) {
                return Ok(false);
            }
            start += count * page;
        }
        Ok(true)
    }

    /// Faults in the pages of `len` bytes at `offset` writable (allocating
    /// blocks, reading pages in) so that the stores that follow do not
    /// fault; an error (EFAULT past the end of the file, ENOMEM, ENOSPC
    /// shows as EFAULT or ENOMEM, EIO, EINVAL before Linux 5.14) instead
    /// of a SIGBUS. A truncation racing with the stores still faults.
    ///
    /// Each page is populated once: its block stays allocated until
    /// [`Mapping::forget_populated`] (DISCARD, WRITE_ZEROES), so a later
    /// write fault on it (after writeback write-protects it, or after
    /// reclaim) allocates nothing. Walking the page tables again for
    /// pages already populated cost about 12% of the device CPU of
    /// 128 KiB CRYPTO_OUT writes. Such a late fault that fails anyway (an
    /// I/O error reading the page back) is a SIGBUS: IOERR for the
    /// request, as for a truncation.
    pub fn populate_write(&self, offset: u64, len: usize) -> io::Result<()> {
        if !self.writable || self.range(offset, len).is_none() {
            return Err(io::ErrorKind::InvalidInput.into());
        }
        let page = sigbus::page_size();
        let start = offset as usize / page * page;
        let end = (offset as usize + len).next_multiple_of(page);
        let (first, count) = (start / page, (end - start) / page);
        if self.populated.contains_all(first, count) {
            return Ok(());
        }
        loop {
            // SAFETY: the page-aligned range lies inside our mapping
            // (`end <= mapped`); MADV_POPULATE_WRITE only faults pages in.
            let rc = unsafe {
                libc::madvise(
                    self.base.as_ptr().add(start).cast(),
                    end - start,
                    MADV_POPULATE_WRITE,
                )
            };
            if rc == 0 {
                self.populated.insert(first, count);
                return Ok(());
            }
            let error = io::Error::last_os_error();
            if error.kind() != io::ErrorKind::Interrupted {
                return Err(error);
            }
        }
    }

    /// Forgets that the pages overlapping `len` bytes at `offset` were
    /// populated: their blocks are being deallocated or zeroed, so the
    /// next write through the mapping must populate them again.
    pub fn forget_populated(&self, offset: u64, len: u64) {
        let page = sigbus::page_size() as u64;
        let first = offset / page;
        let end = offset.saturating_add(len).div_ceil(page);
        let count = end.saturating_sub(first);
        self.populated.remove(
            usize::try_from(first).unwrap_or(usize::MAX),
            usize::try_from(count).unwrap_or(usize::MAX),
        );
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        let base = self.base.as_ptr().cast();
        let mapped = self.mapped;
        // The registration goes first: once the range is unmapped, the
        // addresses may be reused by anyone.
        drop(self.registration.take());
        // SAFETY: our own mapping; no request uses it (we are dropped).
        unsafe { libc::munmap(base, mapped) };
    }
}

/// Faults seen between [`Mapping::watch`] and [`Watch::faulted`].
#[derive(Debug)]
pub struct Watch<'a> {
    mapping: &'a Mapping,
    before: u64,
}

impl Watch<'_> {
    /// True when the mapping faulted since the watch began (here or in
    /// another request): what was read or written through it is not
    /// trustworthy.
    pub fn faulted(&self) -> bool {
        self.mapping.faults() != self.before
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    fn file(len: u64) -> (tempfile::TempDir, File) {
        let dir = tempfile::tempdir().unwrap();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join("image"))
            .unwrap();
        file.set_len(len).unwrap();
        (dir, file)
    }

    #[test]
    fn the_mapping_and_positioned_io_see_the_same_bytes() {
        let (_dir, file) = file(1 << 20);
        let mapping = Mapping::new(&file, 1 << 20, true).unwrap();
        file.write_all_at(&[7; 4096], 8192).unwrap();
        let at = mapping.range(8192, 4096).unwrap();
        // SAFETY: inside the mapping; nothing else touches it.
        assert_eq!(unsafe { at.add(4095).read_volatile() }, 7);
        assert!(mapping.resident(8192, 4096).unwrap());
        mapping.populate_write(8190, 4).unwrap();
        // SAFETY: as above, and the mapping is writable.
        unsafe { at.write_volatile(9) };
        let mut back = [0u8; 1];
        file.read_exact_at(&mut back, 8192).unwrap();
        assert_eq!(back, [9]);
        assert_eq!(mapping.faults(), 0);
    }

    #[test]
    fn ranges_outside_the_image_are_refused() {
        let (_dir, file) = file(3 * 512);
        let mapping = Mapping::new(&file, 3 * 512, false).unwrap();
        assert!(mapping.range(0, 3 * 512).is_some());
        assert!(mapping.range(512, 1025).is_none());
        assert!(mapping.range(u64::MAX, 2).is_none());
        assert!(!mapping.writable());
        assert!(mapping.populate_write(0, 512).is_err(), "read-only mapping");
    }

    /// Populating records the pages and skips recorded ones; forgetting a
    /// range removes every page it overlaps and no other; a populated page
    /// past a truncated end is not resident, so no write goes through the
    /// mapping there (`Image::mapping_for_write` asks `resident` first).
    #[test]
    fn populated_pages_are_recorded_and_forgotten_by_range() {
        let (_dir, file) = file(1 << 20);
        let mapping = Mapping::new(&file, 1 << 20, true).unwrap();
        let page = sigbus::page_size();
        assert!(!mapping.populated.contains_all(1, 2));
        mapping.populate_write(2 * page as u64 - 2, 4).unwrap();
        assert!(mapping.populated.contains_all(1, 2));
        assert!(!mapping.populated.contains_all(0, 1));
        assert!(!mapping.populated.contains_all(3, 1));
        mapping.forget_populated(2 * page as u64 + 1, 1);
        assert!(mapping.populated.contains_all(1, 1));
        assert!(!mapping.populated.contains_all(2, 1));
        mapping.populate_write(0, 1 << 20).unwrap();
        assert!(mapping.populated.contains_all(0, (1 << 20) / page));
        file.set_len(64 * 1024).unwrap();
        assert!(!mapping.resident(512 * 1024, 4096).unwrap());
        // Recorded pages skip the madvise (which would fail past the new
        // end); forgotten ones do it again.
        mapping.populate_write(512 * 1024, 4096).unwrap();
        mapping.forget_populated(512 * 1024, 4096);
        let error = mapping.populate_write(512 * 1024, 4096).unwrap_err();
        assert_eq!(error.raw_os_error(), Some(libc::EFAULT), "{error}");
    }

    /// A page past the end of a truncated file: SIGBUS, repaired into a
    /// zero page and counted; populating it for a write fails instead.
    #[test]
    fn a_sigbus_past_the_end_is_counted_not_fatal() {
        let (_dir, file) = file(1 << 20);
        let mapping = Mapping::new(&file, 1 << 20, true).unwrap();
        file.write_all_at(&[7; 4096], 512 * 1024).unwrap();
        file.set_len(64 * 1024).unwrap();
        let error = mapping.populate_write(512 * 1024, 4096).unwrap_err();
        assert_eq!(error.raw_os_error(), Some(libc::EFAULT), "{error}");
        let watch = mapping.watch();
        assert!(!watch.faulted());
        let at = mapping.range(512 * 1024 + 100, 1).unwrap();
        // SAFETY: inside the mapping; the fault is what is tested.
        let byte = unsafe { at.read_volatile() };
        assert_eq!(byte, 0);
        assert_eq!(mapping.faults(), 1);
        assert!(watch.faulted());
    }
}
