//! The backing image file: positioned I/O that is safe from many threads.

use crate::protocol::SECTOR_SIZE;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

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
}

/// An open image. Its capacity is the file length rounded down to whole
/// sectors, fixed at open time.
#[derive(Debug)]
pub struct Image {
    file: File,
    capacity: u64,
    read_only: bool,
}

impl Image {
    /// Opens `path`, creating a sparse file of `create_size` bytes if it
    /// does not exist.
    pub fn open(
        path: &Path,
        create_size: Option<u64>,
        read_only: bool,
    ) -> Result<Self, ImageError> {
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
        let len = file
            .metadata()
            .map_err(|source| ImageError::Open {
                path: path.to_owned(),
                source,
            })?
            .len();
        let capacity = len - len % SECTOR_SIZE;
        if capacity == 0 {
            return Err(ImageError::TooSmall(path.to_owned()));
        }
        Ok(Self {
            file,
            capacity,
            read_only,
        })
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
            return Ok(());
        }
        self.write_zeroes_slowly(offset, len)
    }

    /// Zeroes a range, keeping it allocated where the filesystem can.
    pub fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        let mode = libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE;
        if self.fallocate(mode, offset, len).is_ok() {
            return Ok(());
        }
        self.punch_hole(offset, len)
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
