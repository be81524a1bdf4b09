//! The backing image file: positioned I/O that is safe from many threads,
//! and a shared mapping of it ([`Mapping`]) that the data path prefers.

use super::mapping::Mapping;
use crate::protocol::SECTOR_SIZE;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::Relaxed;

/// Why an image cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The file does not exist and no size was given.
    #[error("image {0} does not exist; pass --size (e.g. --size 1G) to create it")]
    Missing(PathBuf),
    /// Opening or creating failed.
    #[error("cannot open image {path}")]
    Open {
        /// The image path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Resizing a new image failed.
    #[error("cannot size new image {path} to {size} bytes")]
    Resize {
        /// The image path.
        path: PathBuf,
        /// Requested size.
        size: u64,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The image is smaller than one sector.
    #[error("image {0} is smaller than one 512-byte sector; give a larger image or --size")]
    TooSmall(PathBuf),
    /// `--preallocate` could not allocate the image's blocks.
    #[error("cannot preallocate image {path} (--preallocate)")]
    Preallocate {
        /// The image path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// Whether the image's blocks are allocated up front, which decides how
/// CRYPTO_OUT writes: an allocated image is written through the mapping
/// (one pass from guest memory into the page cache); writing through a
/// mapping into holes costs a page fault and a block allocation per page
/// (several times a `pwrite` into a hole), so a sparse image is written
/// with `pwrite`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Preallocate {
    /// Allocate an image this open creates (best effort: a filesystem
    /// that cannot leaves it sparse); keep an existing one as it is.
    #[default]
    NewImage,
    /// Allocate the whole image, new or existing (contents are kept); an
    /// error if the filesystem cannot.
    Always,
    /// Leave the image sparse.
    Never,
}

/// How to open an image.
#[derive(Clone, Debug, Default)]
pub struct ImageOptions {
    /// Create the image with this size when it does not exist.
    pub create_size: Option<u64>,
    /// Refuse writes (and map the image read-only).
    pub read_only: bool,
    /// Block allocation.
    pub preallocate: Preallocate,
    /// Serve through `pread`/`pwrite` only, never through a mapping.
    pub no_mmap: bool,
}

/// An open image. Its capacity is the file length rounded down to whole
/// sectors, fixed at open time.
#[derive(Debug)]
pub struct Image {
    file: File,
    capacity: u64,
    read_only: bool,
    /// The shared mapping; `None` when mapping failed or was not wanted.
    mapping: Option<Mapping>,
    /// Writes go through the mapping (the image was fully allocated at
    /// open, the mapping is writable, MADV_POPULATE_WRITE works).
    write_through: AtomicBool,
    /// The mapping's fault has been logged.
    fault_logged: AtomicBool,
}

impl Image {
    /// Opens `path`, creating a file of `create_size` bytes (allocated,
    /// see [`Preallocate::NewImage`]) if it does not exist.
    pub fn open(
        path: &Path,
        create_size: Option<u64>,
        read_only: bool,
    ) -> Result<Self, ImageError> {
        Self::open_with(
            path,
            &ImageOptions {
                create_size,
                read_only,
                ..ImageOptions::default()
            },
        )
    }

    /// Opens `path` as `options` say.
    pub fn open_with(path: &Path, options: &ImageOptions) -> Result<Self, ImageError> {
        let ImageOptions {
            create_size,
            read_only,
            preallocate,
            no_mmap,
        } = *options;
        let exists = path.exists();
        if !exists && create_size.is_none() {
            return Err(ImageError::Missing(path.to_owned()));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only || !exists)
            .create(!exists)
            .truncate(false)
            .open(path)
            .map_err(|source| ImageError::Open {
                path: path.to_owned(),
                source,
            })?;
        if let (false, Some(size)) = (exists, create_size) {
            file.set_len(size).map_err(|source| ImageError::Resize {
                path: path.to_owned(),
                size,
                source,
            })?;
        }
        let metadata = file.metadata().map_err(|source| ImageError::Open {
            path: path.to_owned(),
            source,
        })?;
        let len = metadata.len();
        let capacity = len - len % SECTOR_SIZE;
        if capacity == 0 {
            return Err(ImageError::TooSmall(path.to_owned()));
        }
        let writable = !read_only;
        let mut allocated = metadata.blocks().saturating_mul(512) >= len;
        let wanted = match preallocate {
            Preallocate::NewImage => !exists,
            Preallocate::Always => true,
            Preallocate::Never => false,
        };
        if writable && wanted && !allocated {
            match allocate(&file, len) {
                Ok(()) => allocated = true,
                Err(source) if preallocate == Preallocate::Always => {
                    return Err(ImageError::Preallocate {
                        path: path.to_owned(),
                        source,
                    });
                }
                Err(error) => tracing::warn!(
                    image = %path.display(),
                    "cannot preallocate the new image ({error}); it stays sparse and \
                     CRYPTO_OUT writes with pwrite"
                ),
            }
        }
        let mapping = if no_mmap {
            None
        } else {
            Mapping::new(&file, capacity, writable)
                .inspect_err(|error| {
                    tracing::warn!(
                        image = %path.display(),
                        "cannot map the image ({}); serving through pread/pwrite",
                        error_chain(error)
                    );
                })
                .ok()
        };
        let write_through = allocated && mapping.as_ref().is_some_and(Mapping::writable);
        Ok(Self {
            file,
            capacity,
            read_only,
            mapping,
            write_through: AtomicBool::new(write_through),
            fault_logged: AtomicBool::new(false),
        })
    }

    /// The shared mapping, while its pages are the file's: `None` without
    /// one, or once a SIGBUS was repaired in it (the device then serves
    /// through `pread`/`pwrite` until it is restarted).
    pub fn mapping(&self) -> Option<&Mapping> {
        let mapping = self.mapping.as_ref()?;
        if mapping.faults() == 0 {
            return Some(mapping);
        }
        if !self.fault_logged.swap(true, Relaxed) {
            tracing::warn!(
                "the image mapping took a SIGBUS (was the image truncated under the device, \
                 or is its disk failing?): requests that used it got IOERR; serving through \
                 pread/pwrite from now on"
            );
        }
        None
    }

    /// The mapping to write `len` bytes at `offset` through, with their
    /// pages faulted in writable (MADV_POPULATE_WRITE): `None` when
    /// writes go through `pwrite`: a sparse image, no writable mapping,
    /// pages not in the page cache (a first write there is cheaper with
    /// `pwrite`, see [`Mapping::resident`]), or populating failed (past
    /// the end of a truncated file, no space, an I/O error), in which case
    /// `pwrite` reports the real error.
    pub fn mapping_for_write(&self, offset: u64, len: usize) -> Option<&Mapping> {
        if !self.write_through.load(Relaxed) {
            return None;
        }
        let mapping = self.mapping()?;
        if !mapping.resident(offset, len).unwrap_or(false) {
            return None;
        }
        match mapping.populate_write(offset, len) {
            Ok(()) => Some(mapping),
            Err(error) => {
                if error.raw_os_error() == Some(libc::EINVAL) {
                    self.write_through.store(false, Relaxed);
                    tracing::warn!(
                        "MADV_POPULATE_WRITE is not available (Linux before 5.14?): \
                         CRYPTO_OUT writes with pwrite"
                    );
                } else {
                    tracing::debug!(offset, len, "cannot populate for a mapped write: {error}");
                }
                None
            }
        }
    }

    /// True when writes go through the mapping (see [`Preallocate`]).
    pub fn writes_through_mapping(&self) -> bool {
        self.write_through.load(Relaxed) && self.mapping.is_some()
    }

    /// Capacity in bytes (a multiple of 512).
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// True when the device refuses writes.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// True when `len` bytes from `offset` lie within the capacity.
    pub fn contains(&self, offset: u64, len: u64) -> bool {
        offset
            .checked_add(len)
            .is_some_and(|end| end <= self.capacity)
    }

    /// Reads exactly `buf.len()` bytes at `offset`.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    /// Writes all of `buf` at `offset`.
    pub fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.file.write_all_at(buf, offset)
    }

    /// Reads exactly the total length of `iov` at `offset`, scattered over
    /// the buffers in order (`preadv`, repeated after a short read or an
    /// interrupt). `iov` is consumed: on return its entries are advanced.
    ///
    /// # Safety
    /// Every entry must point to memory that is valid for writes of its
    /// length for the whole call, and that no Rust reference covers.
    pub unsafe fn read_vectored_at(&self, iov: &mut [libc::iovec], offset: u64) -> io::Result<()> {
        // SAFETY: the caller guarantees the buffers; preadv writes at most
        // `iov_len` bytes into each.
        unsafe {
            self.vectored(iov, offset, |fd, iov, count, at| {
                libc::preadv(fd, iov, count, at)
            })
        }
    }

    /// Writes the whole of `iov` at `offset`, gathered from the buffers in
    /// order (`pwritev`, repeated after a short write or an interrupt).
    ///
    /// # Safety
    /// Every entry must point to memory that is valid for reads of its
    /// length for the whole call.
    pub unsafe fn write_vectored_at(&self, iov: &mut [libc::iovec], offset: u64) -> io::Result<()> {
        // SAFETY: the caller guarantees the buffers; pwritev only reads them.
        unsafe {
            self.vectored(iov, offset, |fd, iov, count, at| {
                libc::pwritev(fd, iov, count, at)
            })
        }
    }

    /// The loop around `preadv`/`pwritev`: skips what was transferred,
    /// retries on EINTR, fails on end of file (the image shrank under us).
    unsafe fn vectored(
        &self,
        mut iov: &mut [libc::iovec],
        mut offset: u64,
        call: impl Fn(i32, *const libc::iovec, i32, libc::off_t) -> isize,
    ) -> io::Result<()> {
        loop {
            while let Some(first) = iov.first()
                && first.iov_len == 0
            {
                iov = &mut std::mem::take(&mut iov)[1..];
            }
            if iov.is_empty() {
                return Ok(());
            }
            let count = iov.len().min(libc::UIO_MAXIOV as usize) as i32;
            let at = libc::off_t::try_from(offset)
                .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
            let done = call(self.file.as_raw_fd(), iov.as_ptr(), count, at);
            if done < 0 {
                let error = io::Error::last_os_error();
                if error.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(error);
            }
            if done == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the image file ended inside the device's capacity (was it truncated?)",
                ));
            }
            offset += done as u64;
            let mut done = done as usize;
            while done > 0 {
                let first = &mut iov[0];
                let step = done.min(first.iov_len);
                // SAFETY: `step <= iov_len`, so the pointer stays within
                // (or one past the end of) the caller's buffer.
                first.iov_base = unsafe { first.iov_base.cast::<u8>().add(step) }.cast();
                first.iov_len -= step;
                done -= step;
                if first.iov_len == 0 {
                    iov = &mut std::mem::take(&mut iov)[1..];
                }
            }
        }
    }

    /// Makes written data durable (FLUSH).
    pub fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// Deallocates a range; reads return zeroes afterwards. Filesystems
    /// that cannot punch holes get the zeroes written instead.
    pub fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
        if self.fallocate(mode, offset, len).is_ok() {
            self.forget_populated(offset, len);
            return Ok(());
        }
        self.write_zeroes_slowly(offset, len)
    }

    /// Zeroes a range, keeping it allocated where the filesystem can.
    pub fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        let mode = libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE;
        if self.fallocate(mode, offset, len).is_ok() {
            self.forget_populated(offset, len);
            return Ok(());
        }
        self.punch_hole(offset, len)
    }

    /// After `fallocate` changed the blocks of a range: writes through
    /// the mapping must populate its pages again.
    fn forget_populated(&self, offset: u64, len: u64) {
        if let Some(mapping) = &self.mapping {
            mapping.forget_populated(offset, len);
        }
    }

    fn fallocate(&self, mode: i32, offset: u64, len: u64) -> io::Result<()> {
        let (Ok(offset), Ok(len)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len))
        else {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        };
        // SAFETY: fallocate takes a valid open descriptor and plain integers;
        // it does not touch our memory.
        let rc = unsafe { libc::fallocate(self.file.as_raw_fd(), mode, offset, len) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    fn write_zeroes_slowly(&self, offset: u64, len: u64) -> io::Result<()> {
        const CHUNK: u64 = 64 * 1024;
        let zeroes = [0u8; CHUNK as usize];
        let mut done = 0;
        while done < len {
            let step = CHUNK.min(len - done);
            self.file
                .write_all_at(&zeroes[..step as usize], offset + done)?;
            done += step;
        }
        Ok(())
    }
}

/// Allocates every block of the first `len` bytes, keeping contents.
fn allocate(file: &File, len: u64) -> io::Result<()> {
    let len =
        libc::off_t::try_from(len).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: fallocate on a valid open descriptor, plain integers.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_sparse_image_and_refuses_missing_without_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        assert!(matches!(
            Image::open(&path, None, false),
            Err(ImageError::Missing(_))
        ));
        let image = Image::open(&path, Some(1 << 20), false).unwrap();
        assert_eq!(image.capacity(), 1 << 20);
        image.write_at(&[7; 4096], 8192).unwrap();
        image.write_zeroes(8192, 512).unwrap();
        image.punch_hole(8704, 512).unwrap();
        let mut back = [1u8; 4096];
        image.read_at(&mut back, 8192).unwrap();
        assert!(back[..1024].iter().all(|b| *b == 0));
        assert!(back[1024..].iter().all(|b| *b == 7));
        assert!(image.contains(0, 1 << 20));
        assert!(!image.contains(1, 1 << 20));
        assert!(!image.contains(u64::MAX, 2));
    }
}
