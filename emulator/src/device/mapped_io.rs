//! Request data between the image's shared mapping and guest memory, in
//! one pass, with the syscall paths of [`guest_io`] as the fallback.
//!
//! - IN: copies from the mapping into guest memory (one copy, like
//!   `preadv`, without the system call).
//! - CRYPTO_IN: the engine reads the ciphertext from the mapping (the
//!   page cache) and writes the plaintext straight into guest memory,
//!   where `preadv` + decrypt in place moved every byte twice.
//! - CRYPTO_OUT on an allocated image ([`Image::mapping_for_write`]): the
//!   engine reads the guest's plaintext once and writes the ciphertext
//!   straight into the page cache, where encrypt into a buffer + `pwrite`
//!   moved it twice. On a sparse image it encrypts + `pwrite`s as before.
//!
//! A request that finds the mapping faulted during its copy
//! ([`super::sigbus`]) fails with IOERR: what it moved is not the file's.
//! Without a usable mapping every function takes the `pread`/`pwrite`
//! path, which the guest cannot tell apart.

use super::chain::Cursor;
use super::error::RequestError;
use super::guest_io::{self, host_run, io_error, reusable_prefix, short_chain};
use super::image::Image;
use super::mapping::{Mapping, Watch};
use crate::engine::ProgrammedKey;
use crate::engine::xts::Direction;
use crate::protocol::{Dun, RequestType};
use std::io;
use std::ptr::NonNull;
use vm_memory::{GuestMemory, Permissions};

/// The error a request gets when the mapping faulted under it.
#[derive(Debug, thiserror::Error)]
#[error(
    "the image mapping faulted (SIGBUS) during the request: was the image truncated under \
     the device, or is its disk failing? The data moved is discarded"
)]
pub struct MappingFaulted;

/// IN: `len` bytes of the image at `offset` into guest memory at `cursor`.
pub fn read_plain<M: GuestMemory>(
    image: &Image,
    mem: &M,
    request: RequestType,
    cursor: &mut Cursor<'_>,
    len: u64,
    offset: u64,
) -> Result<(), RequestError> {
    let Some(mapping) = image.mapping() else {
        return guest_io::read_into_guest(image, mem, request, cursor, len, offset);
    };
    let (source, watch) = start(mapping, request, offset, len)?;
    let mut done = 0u64;
    while let Some((addr, piece)) = cursor.piece(len - done) {
        let run = host_run(mem, addr, piece, Permissions::Write)?;
        // SAFETY: `source + done .. + run.len` lies inside the checked
        // range of the mapping; `run` is a host run of guest memory that
        // vm-memory mapped for a checked range, alive while `mem` is
        // borrowed, and a different mapping than the image's. Either side
        // may change meanwhile (module docs of `guest_io`, `Mapping::range`).
        unsafe {
            std::ptr::copy_nonoverlapping(source.as_ptr().add(done as usize), run.ptr, run.len);
        }
        cursor.advance(run.len).map_err(RequestError::Memory)?;
        done += run.len as u64;
    }
    finish(&watch, request)?;
    short_chain(len, done)
}

/// CRYPTO_IN (and IN under a default key): the `len` bytes of the image
/// at `offset` decrypted into guest memory at `cursor`. `unit_buffer`
/// takes a data unit that straddles two host runs of guest memory.
#[allow(clippy::too_many_arguments)]
pub fn read_decrypted<M: GuestMemory>(
    image: &Image,
    mem: &M,
    request: RequestType,
    cursor: &mut Cursor<'_>,
    (offset, len): (u64, u64),
    key: &ProgrammedKey,
    dun: &Dun,
    unit_buffer: &mut Vec<u8>,
) -> Result<(), RequestError> {
    let Some(mapping) = image.mapping() else {
        let mut writer = cursor.clone();
        guest_io::read_into_guest(image, mem, request, &mut writer, len, offset)?;
        return guest_io::decrypt_in_guest(mem, cursor, len, key, dun, unit_buffer);
    };
    let (source, watch) = start(mapping, request, offset, len)?;
    let _scrub = key.scrub_guard();
    let unit = u64::from(key.data_unit_size);
    let mut done = 0u64;
    while let Some((addr, piece)) = cursor.piece(len - done) {
        let run = host_run(mem, addr, piece, Permissions::Write)?;
        let whole = (run.len as u64 / unit * unit).max(unit).min(len - done) as usize;
        // SAFETY: `done + whole <= len`, inside the checked range of the
        // mapping; only loaded from (`Mapping::range`).
        let from = unsafe { std::slice::from_raw_parts(source.as_ptr().add(done as usize), whole) };
        let skip = done / unit;
        if run.len >= whole {
            // SAFETY: a host run of guest memory for a checked range, at
            // least `whole` bytes, alive while `mem` is borrowed; this
            // slice is the device's only reference to it and ends with the
            // call. The guest may race on it (`guest_io` module docs).
            let to = unsafe { std::slice::from_raw_parts_mut(run.ptr, whole) };
            key.crypt_from_unscrubbed(Direction::Decrypt, from, to, dun, skip);
            cursor.advance(whole).map_err(RequestError::Memory)?;
        } else {
            // A data unit across two runs: through the buffer.
            let buffer = reusable_prefix(unit_buffer, whole);
            key.crypt_from_unscrubbed(Direction::Decrypt, from, buffer, dun, skip);
            cursor.write(mem, buffer).map_err(RequestError::Memory)?;
        }
        done += whole as u64;
    }
    finish(&watch, request)?;
    short_chain(len, done)
}

/// CRYPTO_OUT (and OUT under a default key): the `len` bytes of guest
/// memory at `cursor` encrypted onto the image at `offset`, each guest
/// byte read once. `buffer` takes the ciphertext on the `pwrite` path, or
/// a data unit that straddles two host runs.
#[allow(clippy::too_many_arguments)]
pub fn write_encrypted<M: GuestMemory>(
    image: &Image,
    mem: &M,
    request: RequestType,
    cursor: &mut Cursor<'_>,
    (offset, len): (u64, u64),
    key: &ProgrammedKey,
    dun: &Dun,
    buffer: &mut Vec<u8>,
) -> Result<(), RequestError> {
    let mapping = usize::try_from(len)
        .ok()
        .and_then(|len| image.mapping_for_write(offset, len));
    let Some(mapping) = mapping else {
        let buffer = reusable_prefix(buffer, len as usize);
        guest_io::encrypt_from_guest(mem, cursor, key, dun, buffer)?;
        return image
            .write_at(buffer, offset)
            .map_err(|source| io_error(request, source));
    };
    let (dest, watch) = start(mapping, request, offset, len)?;
    let _scrub = key.scrub_guard();
    let unit = u64::from(key.data_unit_size);
    let mut done = 0u64;
    while let Some((addr, piece)) = cursor.piece(len - done) {
        let run = host_run(mem, addr, piece, Permissions::Read)?;
        let whole = (run.len as u64 / unit * unit).max(unit).min(len - done) as usize;
        // SAFETY: `done + whole <= len`, inside the checked range of a
        // writable mapping (`mapping_for_write`); stored to only. Another
        // request writing the same blocks at the same time races like two
        // DMA transfers would (`Mapping::range`).
        let to = unsafe { std::slice::from_raw_parts_mut(dest.as_ptr().add(done as usize), whole) };
        let skip = done / unit;
        if run.len >= whole {
            // SAFETY: a host run of guest memory for a checked range, at
            // least `whole` bytes, read once (`guest_io` module docs).
            let from = unsafe { std::slice::from_raw_parts(run.ptr.cast_const(), whole) };
            key.crypt_from_unscrubbed(Direction::Encrypt, from, to, dun, skip);
            cursor.advance(whole).map_err(RequestError::Memory)?;
        } else {
            let unit_buffer = reusable_prefix(buffer, whole);
            cursor
                .read(mem, unit_buffer)
                .map_err(RequestError::Memory)?;
            key.crypt_from_unscrubbed(Direction::Encrypt, unit_buffer, to, dun, skip);
        }
        done += whole as u64;
    }
    finish(&watch, request)?;
    short_chain(len, done)
}

/// The mapping's address for the request's range, and a watch for faults.
fn start<'a>(
    mapping: &'a Mapping,
    request: RequestType,
    offset: u64,
    len: u64,
) -> Result<(NonNull<u8>, Watch<'a>), RequestError> {
    let range = usize::try_from(len)
        .ok()
        .and_then(|len| mapping.range(offset, len));
    // The request's range was checked against the capacity, which the
    // mapping covers; only a bug gets here.
    let range = range.ok_or_else(|| {
        io_error(
            request,
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "range outside the image mapping",
            ),
        )
    })?;
    Ok((range, mapping.watch()))
}

/// IOERR when the mapping faulted during the request.
fn finish(watch: &Watch<'_>, request: RequestType) -> Result<(), RequestError> {
    if watch.faulted() {
        return Err(io_error(request, io::Error::other(MappingFaulted)));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::guest_io::tests::{
        STRADDLING, chain, get, image, memory, pattern, programmed, put,
    };
    use crate::device::image::{ImageOptions, Preallocate};
    use vm_memory::GuestMemoryMmap;

    const OFFSET: u64 = 8192;

    /// Encrypts `plain` at [`STRADDLING`] onto the image and decrypts it
    /// back, as CRYPTO_OUT and CRYPTO_IN do; returns the image's bytes.
    fn round_trip(
        image: &Image,
        mem: &GuestMemoryMmap,
        data_unit_size: u32,
        plain: &[u8],
    ) -> Vec<u8> {
        let (_engine, key, msg) = programmed(data_unit_size);
        let span = (OFFSET, plain.len() as u64);
        // Pages in the page cache: a mapped image is written through the
        // mapping (a first write to a page goes through pwrite).
        image.write_at(&vec![0; plain.len()], OFFSET).unwrap();
        assert_eq!(
            image.mapping_for_write(OFFSET, plain.len()).is_some(),
            image.writes_through_mapping()
        );
        put(mem, &STRADDLING, plain);
        let readable = chain(mem, &STRADDLING, false);
        let mut buffer = Vec::new();
        write_encrypted(
            image,
            mem,
            RequestType::CryptoOut,
            &mut readable.reader(),
            span,
            &key,
            &msg.dun,
            &mut buffer,
        )
        .unwrap();
        assert!(get(mem, &STRADDLING) == plain, "guest plaintext untouched");
        put(mem, &STRADDLING, &vec![0xa5; plain.len()]);
        let writable = chain(mem, &STRADDLING, true);
        read_decrypted(
            image,
            mem,
            RequestType::CryptoIn,
            &mut writable.writer(),
            span,
            &key,
            &msg.dun,
            &mut buffer,
        )
        .unwrap();
        assert!(
            get(mem, &STRADDLING) == plain,
            "unit {data_unit_size}: decrypted"
        );
        let mut on_disk = vec![0u8; plain.len()];
        image.read_at(&mut on_disk, OFFSET).unwrap();
        on_disk
    }

    /// The mapping paths and the system-call paths put the same
    /// ciphertext on the image and give the same plaintext back, for data
    /// units inside one host run and across runs and regions.
    #[test]
    fn mapped_and_syscall_paths_agree_across_descriptors_and_regions() {
        for data_unit_size in [512u32, 4096] {
            let plain = pattern(16384, data_unit_size as u8);
            let (_dir, mapped) = image();
            assert!(
                mapped.writes_through_mapping(),
                "a new image is allocated and mapped"
            );
            let dir = tempfile::tempdir().unwrap();
            let options = ImageOptions {
                create_size: Some(1 << 20),
                no_mmap: true,
                ..ImageOptions::default()
            };
            let unmapped = Image::open_with(&dir.path().join("disk.img"), &options).unwrap();
            assert!(unmapped.mapping().is_none());
            let through_mapping = round_trip(&mapped, &memory(), data_unit_size, &plain);
            let through_syscalls = round_trip(&unmapped, &memory(), data_unit_size, &plain);
            assert!(
                through_mapping == through_syscalls,
                "unit {data_unit_size}: same ciphertext"
            );
            let (_engine, key, msg) = programmed(data_unit_size);
            let mut expected = plain.clone();
            key.crypt(Direction::Encrypt, &mut expected, &msg.dun);
            assert!(
                through_mapping == expected,
                "unit {data_unit_size}: the engine's ciphertext"
            );
        }
    }

    #[test]
    fn a_sparse_image_is_read_through_the_mapping_and_written_with_pwrite() {
        let dir = tempfile::tempdir().unwrap();
        let options = ImageOptions {
            create_size: Some(1 << 20),
            preallocate: Preallocate::Never,
            ..ImageOptions::default()
        };
        let image = Image::open_with(&dir.path().join("disk.img"), &options).unwrap();
        assert!(image.mapping().is_some());
        assert!(!image.writes_through_mapping());
        let plain = pattern(16384, 3);
        let on_disk = round_trip(&image, &memory(), 4096, &plain);
        assert_ne!(on_disk, plain);
    }

    #[test]
    fn plain_in_copies_from_the_mapping_across_regions() {
        let mem = memory();
        let (_dir, image) = image();
        let data = pattern(16384, 9);
        image.write_at(&data, OFFSET).unwrap();
        let writable = chain(&mem, &STRADDLING, true);
        let mut cursor = writable.writer();
        read_plain(
            &image,
            &mem,
            RequestType::In,
            &mut cursor,
            data.len() as u64,
            OFFSET,
        )
        .unwrap();
        assert!(get(&mem, &STRADDLING) == data);
    }

    /// The image shrinks under the device: reading the lost range through
    /// the mapping raises SIGBUS, which becomes IOERR for the request (not
    /// a dead process); the device then reads through `pread`, which
    /// still serves what is left and fails past the new end.
    #[test]
    fn a_truncated_image_gives_ioerr_and_the_next_requests_are_served() {
        let mem = memory();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        let image = Image::open(&path, Some(1 << 20), false).unwrap();
        let (_engine, key, msg) = programmed(4096);
        let kept = pattern(16384, 5);
        image.write_at(&kept, OFFSET).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(64 * 1024)
            .unwrap();
        let writable = chain(&mem, &STRADDLING, true);
        let mut buffer = Vec::new();
        let lost = (512 * 1024, 16384);
        let error = read_decrypted(
            &image,
            &mem,
            RequestType::CryptoIn,
            &mut writable.writer(),
            lost,
            &key,
            &msg.dun,
            &mut buffer,
        )
        .expect_err("IOERR");
        assert_eq!(error.status(), crate::protocol::Status::IoErr);
        let message = std::error::Error::source(&error).unwrap().to_string();
        assert!(message.contains("SIGBUS"), "{message}");
        assert!(
            image.mapping().is_none(),
            "a faulted mapping is no longer used"
        );
        let mut cursor = writable.writer();
        read_plain(&image, &mem, RequestType::In, &mut cursor, 16384, OFFSET).unwrap();
        assert!(get(&mem, &STRADDLING) == kept, "what is left is served");
        let mut cursor = writable.writer();
        let past = read_plain(
            &image,
            &mem,
            RequestType::In,
            &mut cursor,
            16384,
            512 * 1024,
        );
        assert!(past.is_err(), "past the new end: IOERR from pread");
    }

    /// Writing into a range the file no longer covers: populating fails,
    /// so the write goes through `pwrite` (which extends the file, as it
    /// always did), never through a SIGBUS.
    #[test]
    fn a_write_past_a_truncated_end_does_not_fault_the_mapping() {
        let mem = memory();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        let image = Image::open(&path, Some(1 << 20), false).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(64 * 1024)
            .unwrap();
        assert!(image.mapping_for_write(512 * 1024, 16384).is_none());
        let (_engine, key, msg) = programmed(4096);
        put(&mem, &STRADDLING, &pattern(16384, 1));
        let readable = chain(&mem, &STRADDLING, false);
        let mut buffer = Vec::new();
        let span = (512 * 1024, 16384);
        write_encrypted(
            &image,
            &mem,
            RequestType::CryptoOut,
            &mut readable.reader(),
            span,
            &key,
            &msg.dun,
            &mut buffer,
        )
        .unwrap();
        assert_eq!(image.mapping().map(Mapping::faults), Some(0));
    }
}
