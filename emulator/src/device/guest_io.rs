//! Request data moved straight between the image and guest memory with
//! system calls, without a copy through a bounce buffer: the path when
//! the image is not mapped ([`super::mapped_io`] prefers the mapping).
//!
//! - IN and OUT: `preadv`/`pwritev` on iovecs that point into guest memory.
//! - CRYPTO_IN: `preadv` into guest memory, then decrypt there in place.
//! - CRYPTO_OUT: encrypt out of place from guest memory into the caller's
//!   write buffer (each guest byte is read once, so the image gets the
//!   encryption of one snapshot of the guest's data even if the guest
//!   changes its buffer meanwhile), which the caller then writes.
//!
//! Every host address comes from vm-memory for a range of a segment that
//! [`super::chain::Segments::collect`] already checked; a guest address is
//! never turned into a pointer any other way. A data unit that straddles
//! two host-contiguous runs (two descriptors, or two memory regions) goes
//! through a unit-sized buffer with vm-memory's own copies instead.
//!
//! Guest memory is shared with the guest, which may write to it at any
//! time. For the syscalls that is harmless. The cipher works on plain
//! slices of guest memory, so a guest that writes to a buffer while the
//! device crypts it in place races with the device: the bytes are only
//! loaded into registers, combined and stored, nothing branches on them and
//! nothing is read back for a decision, so such a guest gets garbage in its
//! own buffer and nothing else (as with a DMA engine). Data the device
//! takes from the guest (CRYPTO_OUT's plaintext) is read once.

use super::chain::Cursor;
use super::error::RequestError;
use super::image::Image;
use crate::engine::ProgrammedKey;
use crate::engine::xts::Direction;
use crate::protocol::{Dun, RequestType};
use std::io;
use vm_memory::bitmap::Bitmap;
use vm_memory::{GuestAddress, GuestMemory, GuestMemoryError, Permissions};

/// Iovecs handed to one `preadv`/`pwritev` (kept on the stack).
const IOVECS: usize = 64;

/// A host-contiguous run of guest memory.
pub(super) struct HostRun {
    pub(super) ptr: *mut u8,
    pub(super) len: usize,
}

/// The host-contiguous start of the `len` guest bytes at `addr` (all of
/// them unless they cross a memory region boundary), marked dirty when the
/// device is going to write it.
pub(super) fn host_run<M: GuestMemory>(
    mem: &M,
    addr: GuestAddress,
    len: u64,
    access: Permissions,
) -> Result<HostRun, RequestError> {
    // A piece never exceeds one descriptor's u32 length.
    let len = usize::try_from(len)
        .map_err(|_| RequestError::Memory(GuestMemoryError::InvalidGuestAddress(addr)))?;
    let slice = mem
        .get_slices(addr, len, access)
        .map_err(RequestError::Memory)?
        .next()
        .ok_or(RequestError::Memory(GuestMemoryError::InvalidGuestAddress(
            addr,
        )))?
        .map_err(RequestError::Memory)?;
    if access.has_write() {
        slice.bitmap().mark_dirty(0, slice.len());
    }
    // Without Xen's on-demand mappings (not enabled) the guard only
    // carries the pointer: the mapping lives as long as `mem` is borrowed.
    let ptr = slice.ptr_guard_mut().as_ptr();
    Ok(HostRun {
        ptr,
        len: slice.len(),
    })
}

/// Reads `len` bytes of the image at `offset` into guest memory at
/// `cursor` (IN, and the first half of CRYPTO_IN).
pub fn read_into_guest<M: GuestMemory>(
    image: &Image,
    mem: &M,
    request: RequestType,
    cursor: &mut Cursor<'_>,
    len: u64,
    offset: u64,
) -> Result<(), RequestError> {
    transfer(
        mem,
        cursor,
        len,
        Permissions::Write,
        |iov, at| {
            // SAFETY: every iovec is a host run that vm-memory mapped for a
            // checked guest range; the mapping outlives this call because
            // `mem` is borrowed; no Rust reference covers guest memory here.
            unsafe { image.read_vectored_at(iov, at) }.map_err(|source| io_error(request, source))
        },
        offset,
    )
}

/// Writes `len` bytes from guest memory at `cursor` to the image at
/// `offset` (OUT).
pub fn write_from_guest<M: GuestMemory>(
    image: &Image,
    mem: &M,
    request: RequestType,
    cursor: &mut Cursor<'_>,
    len: u64,
    offset: u64,
) -> Result<(), RequestError> {
    transfer(
        mem,
        cursor,
        len,
        Permissions::Read,
        |iov, at| {
            // SAFETY: as in `read_into_guest`; pwritev only reads the runs.
            unsafe { image.write_vectored_at(iov, at) }.map_err(|source| io_error(request, source))
        },
        offset,
    )
}

/// Builds iovecs for the `len` bytes at `cursor`, [`IOVECS`] at a time,
/// and hands each batch to `io` with its image offset.
fn transfer<M: GuestMemory>(
    mem: &M,
    cursor: &mut Cursor<'_>,
    len: u64,
    access: Permissions,
    mut io: impl FnMut(&mut [libc::iovec], u64) -> Result<(), RequestError>,
    offset: u64,
) -> Result<(), RequestError> {
    let empty = libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    };
    let mut iov = [empty; IOVECS];
    let mut count = 0;
    let mut batch = 0u64;
    let mut at = offset;
    let mut left = len;
    while let Some((addr, piece)) = cursor.piece(left) {
        let run = host_run(mem, addr, piece, access)?;
        iov[count] = libc::iovec {
            iov_base: run.ptr.cast(),
            iov_len: run.len,
        };
        count += 1;
        batch += run.len as u64;
        left -= run.len as u64;
        cursor.advance(run.len).map_err(RequestError::Memory)?;
        if count == IOVECS || left == 0 {
            io(&mut iov[..count], at)?;
            at += batch;
            batch = 0;
            count = 0;
        }
    }
    short_chain(len, len - left)
}

/// Decrypts, in place, the `len` bytes of guest memory at `cursor` that
/// [`read_into_guest`] just filled (CRYPTO_IN). `unit_buffer` takes a data
/// unit that straddles two host runs. The stack the cipher used is
/// scrubbed once, when this returns, not after every run.
pub fn decrypt_in_guest<M: GuestMemory>(
    mem: &M,
    cursor: &mut Cursor<'_>,
    len: u64,
    key: &ProgrammedKey,
    dun: &Dun,
    unit_buffer: &mut Vec<u8>,
) -> Result<(), RequestError> {
    let _scrub = key.scrub_guard();
    let unit = u64::from(key.data_unit_size);
    let mut done = 0u64;
    while let Some((addr, piece)) = cursor.piece(len - done) {
        let run = host_run(mem, addr, piece, Permissions::ReadWrite)?;
        let whole = run.len as u64 / unit * unit;
        if whole > 0 {
            // SAFETY: a host run of mapped guest memory that vm-memory
            // gave for a checked range, alive while `mem` is borrowed; this
            // slice is the only reference to it in the device and ends
            // with the call. The guest may race on it (module docs).
            let data = unsafe { std::slice::from_raw_parts_mut(run.ptr, whole as usize) };
            key.crypt_at_unscrubbed(Direction::Decrypt, data, dun, done / unit);
            cursor
                .advance(whole as usize)
                .map_err(RequestError::Memory)?;
            done += whole;
        } else {
            let buffer = reusable_prefix(unit_buffer, unit as usize);
            cursor
                .clone()
                .read(mem, buffer)
                .map_err(RequestError::Memory)?;
            key.crypt_at_unscrubbed(Direction::Decrypt, buffer, dun, done / unit);
            cursor.write(mem, buffer).map_err(RequestError::Memory)?;
            done += unit;
        }
    }
    short_chain(len, done)
}

/// Encrypts the `out.len()` bytes of guest memory at `cursor` into `out`
/// (CRYPTO_OUT), reading each guest byte once. The stack the cipher used
/// is scrubbed once, when this returns.
pub fn encrypt_from_guest<M: GuestMemory>(
    mem: &M,
    cursor: &mut Cursor<'_>,
    key: &ProgrammedKey,
    dun: &Dun,
    out: &mut [u8],
) -> Result<(), RequestError> {
    let _scrub = key.scrub_guard();
    let unit = key.data_unit_size as usize;
    let len = out.len();
    let mut done = 0usize;
    while let Some((addr, piece)) = cursor.piece((len - done) as u64) {
        let run = host_run(mem, addr, piece, Permissions::Read)?;
        let whole = run.len / unit * unit;
        let skip = (done / unit) as u64;
        if whole > 0 {
            // SAFETY: as in `decrypt_in_guest`; read only, and once.
            let source = unsafe { std::slice::from_raw_parts(run.ptr.cast_const(), whole) };
            let dest = &mut out[done..done + whole];
            key.crypt_from_unscrubbed(Direction::Encrypt, source, dest, dun, skip);
            cursor.advance(whole).map_err(RequestError::Memory)?;
            done += whole;
        } else {
            let dest = &mut out[done..done + unit];
            cursor.read(mem, dest).map_err(RequestError::Memory)?;
            key.crypt_at_unscrubbed(Direction::Encrypt, dest, dun, skip);
            done += unit;
        }
    }
    short_chain(len as u64, done as u64)
}

/// An error when a cursor ran out before `len` bytes (the caller checked
/// the chain's length, so only a bug gets here).
pub(super) fn short_chain(len: u64, done: u64) -> Result<(), RequestError> {
    if done == len {
        return Ok(());
    }
    Err(RequestError::Memory(GuestMemoryError::PartialBuffer {
        expected: len as usize,
        completed: done as usize,
    }))
}

/// The first `len` bytes of a reusable buffer, grown if needed.
pub fn reusable_prefix(buffer: &mut Vec<u8>, len: usize) -> &mut [u8] {
    if buffer.len() < len {
        buffer.resize(len, 0);
    }
    &mut buffer[..len]
}

pub(super) fn io_error(request: RequestType, source: io::Error) -> RequestError {
    RequestError::Io { request, source }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::device::chain::Segments;
    use crate::engine::Engine;
    use crate::engine::capabilities::ProfileName;
    use crate::protocol::{CryptoMsg, KeyDesc};
    use std::sync::Arc;
    use virtio_queue::desc::split::Descriptor;
    use vm_memory::{Bytes, GuestMemoryMmap};

    pub(crate) const REGION: u64 = 0x1_0000;
    const NEXT: u16 = 1;
    const WRITE: u16 = 2;

    /// Two adjacent 64 KiB regions: guest-contiguous across 0x10000, two
    /// separate host mappings.
    pub(crate) fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), REGION as usize),
            (GuestAddress(REGION), REGION as usize),
        ])
        .unwrap()
    }

    pub(crate) fn chain(mem: &GuestMemoryMmap, pieces: &[(u64, u32)], write: bool) -> Segments {
        let flags = if write { WRITE } else { 0 };
        let descriptors: Vec<_> = pieces
            .iter()
            .enumerate()
            .map(|(i, &(addr, len))| {
                let next = if i + 1 < pieces.len() { NEXT } else { 0 };
                Descriptor::new(addr, len, flags | next, i as u16 + 1)
            })
            .collect();
        let mut segments = Segments::default();
        segments.collect(mem, descriptors.into_iter()).unwrap();
        segments
    }

    pub(crate) fn put(mem: &GuestMemoryMmap, pieces: &[(u64, u32)], data: &[u8]) {
        let mut at = 0;
        for &(addr, len) in pieces {
            let len = len as usize;
            mem.write_slice(&data[at..at + len], GuestAddress(addr))
                .unwrap();
            at += len;
        }
    }

    pub(crate) fn get(mem: &GuestMemoryMmap, pieces: &[(u64, u32)]) -> Vec<u8> {
        let mut data = Vec::new();
        for &(addr, len) in pieces {
            let mut piece = vec![0u8; len as usize];
            mem.read_slice(&mut piece, GuestAddress(addr)).unwrap();
            data.extend(piece);
        }
        data
    }

    pub(crate) fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(29).wrapping_add(seed) ^ (i >> 9) as u8)
            .collect()
    }

    pub(crate) fn image() -> (tempfile::TempDir, Image) {
        let dir = tempfile::tempdir().unwrap();
        let image = Image::open(&dir.path().join("disk.img"), Some(1 << 20), false).unwrap();
        (dir, image)
    }

    /// 16 KiB in three descriptors: the first crosses the region boundary
    /// 3000 bytes in, data units 0-2 straddle a run boundary, unit 3 lies
    /// inside one run.
    pub(crate) const STRADDLING: [(u64, u32); 3] = [
        (REGION - 3000, 8000),
        (REGION + 0x2000, 1192),
        (REGION + 0x4000, 7192),
    ];

    pub(crate) fn programmed(data_unit_size: u32) -> (Engine, Arc<ProgrammedKey>, CryptoMsg) {
        let engine = Engine::new(Some(ProfileName::Ufs.capabilities()), None);
        let key: [u8; 64] = core::array::from_fn(|i| (i as u8).wrapping_mul(5) ^ 0x3c);
        engine
            .program(&KeyDesc::raw_aes_256_xts(2, &key, data_unit_size, 8), 0)
            .unwrap();
        let msg = CryptoMsg {
            slot: 2,
            reserved: 0,
            dun: crate::protocol::Dun::from_u64(1000),
        };
        let key = engine.key_for(&msg, 8192, 16384).unwrap();
        (engine, key, msg)
    }

    #[test]
    fn crypto_round_trip_across_descriptors_and_regions_equals_contiguous_crypt() {
        for data_unit_size in [512u32, 4096] {
            let mem = memory();
            let (_dir, image) = image();
            let (_engine, key, msg) = programmed(data_unit_size);
            let plain = pattern(16384, data_unit_size as u8);
            let mut expected = plain.clone();
            key.crypt(Direction::Encrypt, &mut expected, &msg.dun);

            put(&mem, &STRADDLING, &plain);
            let readable = chain(&mem, &STRADDLING, false);
            let mut out = vec![0u8; plain.len()];
            encrypt_from_guest(&mem, &mut readable.reader(), &key, &msg.dun, &mut out).unwrap();
            assert!(out == expected, "unit {data_unit_size}: ciphertext");
            assert!(get(&mem, &STRADDLING) == plain, "guest plaintext untouched");

            image.write_at(&out, 8192).unwrap();
            put(&mem, &STRADDLING, &vec![0xa5; plain.len()]);
            let writable = chain(&mem, &STRADDLING, true);
            let len = plain.len() as u64;
            read_into_guest(
                &image,
                &mem,
                RequestType::CryptoIn,
                &mut writable.writer(),
                len,
                8192,
            )
            .unwrap();
            assert!(get(&mem, &STRADDLING) == expected, "ciphertext read in");
            let mut unit = Vec::new();
            decrypt_in_guest(&mem, &mut writable.writer(), len, &key, &msg.dun, &mut unit).unwrap();
            assert_eq!(
                get(&mem, &STRADDLING),
                plain,
                "unit {data_unit_size}: decrypted"
            );
        }
    }

    /// More descriptors than one `preadv` batch, one across the regions.
    #[test]
    fn plain_io_over_many_descriptors_round_trips() {
        let mem = memory();
        let (_dir, image) = image();
        let pieces: Vec<(u64, u32)> = (0..150u64)
            .map(|i| (REGION - 75 * 800 + i * 800 + 300, 512))
            .collect();
        let data = pattern(150 * 512, 7);
        put(&mem, &pieces, &data);
        let readable = chain(&mem, &pieces, false);
        let len = data.len() as u64;
        write_from_guest(
            &image,
            &mem,
            RequestType::Out,
            &mut readable.reader(),
            len,
            4096,
        )
        .unwrap();
        let mut on_disk = vec![0u8; data.len()];
        image.read_at(&mut on_disk, 4096).unwrap();
        assert!(on_disk == data, "OUT from 150 descriptors");

        let shifted = [
            (REGION - 700, 1000),
            (0x100, 40_000),
            (REGION + 0x1000, 35_800),
        ];
        let writable = chain(&mem, &shifted, true);
        read_into_guest(
            &image,
            &mem,
            RequestType::In,
            &mut writable.writer(),
            len,
            4096,
        )
        .unwrap();
        assert!(get(&mem, &shifted) == data, "IN into three descriptors");
    }

    #[test]
    fn a_cursor_shorter_than_the_length_is_an_error_not_a_panic() {
        let mem = memory();
        let (_dir, image) = image();
        let pieces = [(0x1000u64, 1024u32)];
        let writable = chain(&mem, &pieces, true);
        let error = read_into_guest(
            &image,
            &mem,
            RequestType::In,
            &mut writable.writer(),
            4096,
            0,
        );
        assert!(matches!(error, Err(RequestError::Memory(_))));
    }
}
