//! Requests without a crypto context on a device with a default key
//! (`icelab serve --default-key`, docs/PROTOCOL.md "Device default key"):
//! IN, OUT and WRITE_ZEROES go through the engine with the default key,
//! AES-256-XTS with data units of the logical block size and the DUN =
//! the data unit's index on the device. The guest sees a normal disk; the
//! image holds only ciphertext.

use super::chain::{Cursor, Segments};
use super::error::RequestError;
use super::guest_io;
use super::image::Image;
use super::mapped_io;
use crate::engine::xts::Direction;
use crate::engine::{Engine, EngineError, ProgrammedKey};
use crate::protocol::{Dun, RequestType};
use vm_memory::GuestMemory;

/// Bytes of zeros encrypted at a time for WRITE_ZEROES.
const ZEROES_CHUNK: usize = 256 * 1024;

/// The DUN of the data unit at byte `offset` of the device, after checking
/// that `offset` and `len` are whole data units of `key`. (The guest
/// driver learns the logical block size from the config space, so a
/// well-behaved guest never sends anything else.)
fn first_dun(key: &ProgrammedKey, offset: u64, len: u64) -> Result<Dun, EngineError> {
    let unit = u64::from(key.data_unit_size);
    if !offset.is_multiple_of(unit) {
        return Err(EngineError::Misaligned {
            offset,
            data_unit_size: key.data_unit_size,
        });
    }
    if !len.is_multiple_of(unit) {
        return Err(EngineError::PartialDataUnit {
            len,
            data_unit_size: key.data_unit_size,
        });
    }
    Ok(Dun::from_u64(offset / unit))
}

/// IN: decrypts `len` bytes at `offset` into guest memory at
/// `segments`'s writable part.
pub fn read<M: GuestMemory>(
    engine: &Engine,
    key: &ProgrammedKey,
    image: &Image,
    mem: &M,
    segments: &Segments,
    (offset, len): (u64, u64),
    buffer: &mut Vec<u8>,
) -> Result<(), RequestError> {
    let dun = first_dun(key, offset, len)?;
    let mut writer = segments.writer();
    let span = (offset, len);
    mapped_io::read_decrypted(
        image,
        mem,
        RequestType::In,
        &mut writer,
        span,
        key,
        &dun,
        buffer,
    )?;
    engine.charge(key, Direction::Decrypt, len)?;
    engine.stats().default_key_reads.add(len);
    Ok(())
}

/// OUT: encrypts the `len` bytes of guest memory at `reader` onto the
/// image at `offset` (through the mapping, or `buffer` and `pwrite`).
pub fn write<M: GuestMemory>(
    engine: &Engine,
    key: &ProgrammedKey,
    image: &Image,
    mem: &M,
    reader: &mut Cursor<'_>,
    (offset, len): (u64, u64),
    buffer: &mut Vec<u8>,
) -> Result<(), RequestError> {
    let dun = first_dun(key, offset, len)?;
    engine.charge(key, Direction::Encrypt, len)?;
    let span = (offset, len);
    mapped_io::write_encrypted(
        image,
        mem,
        RequestType::Out,
        reader,
        span,
        key,
        &dun,
        buffer,
    )?;
    engine.stats().default_key_writes.add(len);
    Ok(())
}

/// Checks a WRITE_ZEROES range before anything is applied.
pub fn check_zeroes(key: &ProgrammedKey, offset: u64, len: u64) -> Result<(), EngineError> {
    first_dun(key, offset, len).map(drop)
}

/// WRITE_ZEROES (with or without UNMAP): the range gets encrypted zeros,
/// so that the guest reads zeros back (a hole would decrypt to noise).
pub fn write_zeroes(
    key: &ProgrammedKey,
    image: &Image,
    (offset, len): (u64, u64),
    buffer: &mut Vec<u8>,
) -> Result<(), RequestError> {
    let dun = first_dun(key, offset, len)?;
    let unit = u64::from(key.data_unit_size);
    let mut done = 0u64;
    while done < len {
        let piece = (len - done).min(ZEROES_CHUNK as u64);
        let chunk = guest_io::reusable_prefix(buffer, piece as usize);
        chunk.fill(0);
        key.crypt_at(Direction::Encrypt, chunk, &dun, done / unit);
        image
            .write_at(chunk, offset + done)
            .map_err(|source| guest_io::io_error(RequestType::WriteZeroes, source))?;
        done += piece;
    }
    Ok(())
}
