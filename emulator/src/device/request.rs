//! Serving one virtio-blk request (VIRTIO 1.2 §5.2.6) with the
//! inline-encryption extension (docs/PROTOCOL.md).
//!
//! Every check happens before the first byte moves between the image and
//! guest memory, so a refused request leaves the image untouched. The
//! status byte is the last device-writable byte of the chain.

use super::chain::{Cursor, Segments};
use super::default_key;
use super::error::RequestError;
use super::guest_io;
use super::image::Image;
use super::mapped_io;
use super::refusal_log::{Admission, RefusalLog};
use crate::engine::Engine;
use crate::engine::trace::{GetIdEvent, RejectEvent, RejectStatus, TraceEvent};
use crate::engine::xts::Direction;
use crate::protocol::{
    CryptoMsg, DEVICE_ID_BYTES, DiscardSegment, KeyBlob, KeyDesc, OutHeader, QueueRole,
    RequestType, SECTOR_SIZE, SW_SECRET_SIZE, Status,
};
use std::sync::atomic::Ordering::Relaxed;
use vm_memory::{Bytes, GuestMemory};
use zeroize::Zeroizing;

/// Limits the device advertises and enforces.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest data transfer in one request, in bytes.
    pub max_data_bytes: u64,
    /// Most segments in one DISCARD or WRITE_ZEROES.
    pub max_discard_seg: u32,
    /// Largest DISCARD or WRITE_ZEROES segment, in sectors.
    pub max_discard_sectors: u32,
    /// The GET_ID answer.
    pub device_id: [u8; DEVICE_ID_BYTES],
}

/// Per-thread buffers, reused for every request so that the request path
/// does not allocate once warm. `buffer` holds CRYPTO_OUT's ciphertext on
/// its way to a sparse image, or a data unit that straddles two runs of
/// guest memory; all other data moves straight between the image (its
/// mapping, [`mapped_io`], or system calls, [`guest_io`]) and guest memory.
#[derive(Debug, Default)]
pub struct Scratch {
    segments: Segments,
    buffer: Vec<u8>,
}

/// What serving a request needs from the device.
pub struct Context<'a> {
    /// The crypto engine.
    pub engine: &'a Engine,
    /// The image.
    pub image: &'a Image,
    /// The device's limits.
    pub limits: &'a Limits,
    /// Queue the request came from (for logs and traces).
    pub queue: u16,
    /// What that queue carries.
    pub role: QueueRole,
    /// The driver negotiated inline encryption (INLINE_ENCRYPTION and
    /// CTRL_VQ).
    pub crypto_negotiated: bool,
    /// Which refusals get a log line.
    pub refusals: &'a RefusalLog,
}

/// Serves the chain and returns the used length to report: the bytes the
/// device wrote, status byte included. Never fails: a refused request gets
/// its status (when the chain has room for one), a log line, a stats count
/// and a trace event.
pub fn serve<M: GuestMemory>(
    ctx: &Context<'_>,
    mem: &M,
    descriptors: impl Iterator<Item = virtio_queue::desc::split::Descriptor>,
    scratch: &mut Scratch,
) -> u32 {
    let Scratch { segments, buffer } = scratch;
    let chain = segments.collect(mem, descriptors);
    let status_addr = segments.status_addr();
    let mut header = None;
    let outcome = chain
        .map_err(RequestError::from)
        .and_then(|()| status_addr.ok_or(RequestError::NoStatusByte))
        .and_then(|_| {
            let mut reader = segments.reader();
            let parsed = read_header(mem, &mut reader)?;
            header = Some(parsed);
            execute(ctx, mem, &parsed, segments, reader, buffer)
        });
    let (status, written) = match outcome {
        Ok(written) => (Status::Ok, written),
        Err(error) => {
            reject(ctx, header.as_ref(), &error);
            (error.status(), 0)
        }
    };
    let Some(status_addr) = status_addr else {
        return 0;
    };
    if mem.write_obj(status as u8, status_addr).is_err() {
        // Checked with the chain; only a memory map change could get here.
        tracing::warn!(queue = ctx.queue, "cannot write the status byte");
        return 0;
    }
    written + 1
}

/// Bytes at the start of a read's source that [`prefetch_source`] asks
/// for. Measured at 4 KiB random reads, QD 32, medians of 5 rounds
/// (benches/README.md): 1 KiB took ICE on's device CPU per GB from 0.486
/// to 0.405 s and left ICE off's at 0.35; 512 B, 2 and 4 KiB gained less.
const LOOKAHEAD_BYTES: usize = 1024;

/// Called with the next request's first descriptor before the current
/// request is served: when it holds the header of a read (IN or
/// CRYPTO_IN) from the image mapping, asks the CPU for the first
/// [`LOOKAHEAD_BYTES`] of its source, so that their fetch from memory
/// overlaps the current request. A hint only: whatever the header says,
/// nothing is read from the image and nothing faults; `serve` checks the
/// request when its turn comes.
pub fn prefetch_source<M: GuestMemory>(
    ctx: &Context<'_>,
    mem: &M,
    first: virtio_queue::desc::split::Descriptor,
) {
    if first.is_write_only() || (first.len() as usize) < OutHeader::SIZE {
        return;
    }
    let Ok(bytes) = mem.read_obj::<[u8; OutHeader::SIZE]>(first.addr()) else {
        return;
    };
    let header = OutHeader::parse(&bytes);
    if !matches!(header.request_type, RequestType::In | RequestType::CryptoIn) {
        return;
    }
    if let (Some(mapping), Some(offset)) =
        (ctx.image.mapping(), header.sector.checked_mul(SECTOR_SIZE))
    {
        mapping.prefetch(offset, LOOKAHEAD_BYTES);
    }
}

/// Reads the outhdr, leaving `reader` at the payload.
fn read_header<M: GuestMemory>(
    mem: &M,
    reader: &mut Cursor<'_>,
) -> Result<OutHeader, RequestError> {
    if reader.remaining() < OutHeader::SIZE as u64 {
        return Err(RequestError::ShortHeader(reader.remaining()));
    }
    let mut bytes = [0u8; OutHeader::SIZE];
    reader.read(mem, &mut bytes).map_err(RequestError::Memory)?;
    Ok(OutHeader::parse(&bytes))
}

/// Logs (rate-limited per kind, see [`RefusalLog`]), counts and traces a
/// refused request.
fn reject(ctx: &Context<'_>, header: Option<&OutHeader>, error: &RequestError) {
    let request = header.map(|h| h.request_type.to_string());
    let sector = header.map(|h| h.sector);
    let kind = error.kind();
    ctx.engine.stats().count_rejection(kind);
    let admission = ctx.refusals.admit(kind, std::time::Instant::now());
    let message = error_chain(error);
    let log = |message: &str| {
        if error.is_host_fault() {
            tracing::error!(queue = ctx.queue, request, sector, kind, "{message}");
        } else {
            tracing::warn!(queue = ctx.queue, request, sector, kind, "{message}");
        }
    };
    match admission {
        Admission::Log => log(&message),
        Admission::LogLast => log(&format!(
            "{message} (further refusals of kind {kind} are summarised every few seconds; \
             the stats count all of them)"
        )),
        Admission::Summary { count, over } => tracing::warn!(
            kind,
            count,
            "{count} more requests refused as {kind} in the last {:.1} s (latest: {message})",
            over.as_secs_f64()
        ),
        Admission::Quiet => {}
    }
    if let Some(trace) = ctx.engine.trace() {
        let status = match error.status() {
            Status::Ok => RejectStatus::Ok,
            Status::IoErr => RejectStatus::IoErr,
            Status::Unsupp => RejectStatus::Unsupp,
        };
        trace.event(TraceEvent::Reject(RejectEvent {
            queue: ctx.queue,
            request,
            sector,
            kind: kind.to_owned(),
            status,
            message,
        }));
    }
}

fn error_chain(error: &RequestError) -> String {
    let mut message = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

/// Runs a request whose header parsed (`reader` is at the payload);
/// returns the data bytes written to guest memory (status byte excluded).
fn execute<M: GuestMemory>(
    ctx: &Context<'_>,
    mem: &M,
    header: &OutHeader,
    segments: &Segments,
    mut reader: Cursor<'_>,
    buffer: &mut Vec<u8>,
) -> Result<u32, RequestError> {
    let request = header.request_type;
    if request.is_inline_encryption() && ctx.engine.capabilities().is_none() {
        return Err(RequestError::Unsupported(request));
    }
    if !ctx.role.carries(request) {
        return Err(RequestError::WrongQueue {
            request,
            queue: ctx.role,
        });
    }
    if request.is_inline_encryption() && !ctx.crypto_negotiated {
        return Err(RequestError::CryptoNotNegotiated(request));
    }
    let answer_room = segments.writable_len() - 1;
    let stats = ctx.engine.stats();
    if ctx.role == QueueRole::Control {
        stats.control_commands.fetch_add(1, Relaxed);
        if matches!(
            request,
            RequestType::KeyslotProgram | RequestType::KeyslotEvict
        ) {
            stats.control_keyslot_commands.fetch_add(1, Relaxed);
        }
    }
    match request {
        RequestType::In => {
            let range = checked_range(ctx, request, header.sector, answer_room, false)?;
            if let Some(key) = ctx.engine.default_key() {
                let span = (range.offset, range.len);
                default_key::read(ctx.engine, key, ctx.image, mem, segments, span, buffer)?;
                return Ok(range.len as u32);
            }
            let mut writer = segments.writer();
            mapped_io::read_plain(
                ctx.image,
                mem,
                request,
                &mut writer,
                range.len,
                range.offset,
            )?;
            stats.plain_reads.add(range.len);
            Ok(range.len as u32)
        }
        RequestType::Out => {
            let range = checked_range(ctx, request, header.sector, reader.remaining(), true)?;
            if let Some(key) = ctx.engine.default_key() {
                let span = (range.offset, range.len);
                default_key::write(ctx.engine, key, ctx.image, mem, &mut reader, span, buffer)?;
                return Ok(0);
            }
            guest_io::write_from_guest(
                ctx.image,
                mem,
                request,
                &mut reader,
                range.len,
                range.offset,
            )?;
            stats.plain_writes.add(range.len);
            Ok(0)
        }
        RequestType::CryptoOut => {
            let msg = read_crypto_msg(mem, &mut reader, request)?;
            let range = checked_range(ctx, request, header.sector, reader.remaining(), true)?;
            let key = ctx.engine.key_for(&msg, range.offset, range.len)?;
            ctx.engine.charge(&key, Direction::Encrypt, range.len)?;
            // Out of place into the page cache or the write buffer: the
            // guest's plaintext is read once and stays as the guest left it.
            let span = (range.offset, range.len);
            mapped_io::write_encrypted(
                ctx.image,
                mem,
                request,
                &mut reader,
                span,
                &key,
                &msg.dun,
                buffer,
            )?;
            stats.crypto_writes.add(range.len);
            Ok(0)
        }
        RequestType::CryptoIn => {
            let msg = read_crypto_msg(mem, &mut reader, request)?;
            let range = checked_range(ctx, request, header.sector, answer_room, false)?;
            let key = ctx.engine.key_for(&msg, range.offset, range.len)?;
            let mut writer = segments.writer();
            let span = (range.offset, range.len);
            mapped_io::read_decrypted(
                ctx.image,
                mem,
                request,
                &mut writer,
                span,
                &key,
                &msg.dun,
                buffer,
            )?;
            ctx.engine.charge(&key, Direction::Decrypt, range.len)?;
            stats.crypto_reads.add(range.len);
            Ok(range.len as u32)
        }
        RequestType::Flush => {
            ctx.image
                .flush()
                .map_err(|source| guest_io::io_error(request, source))?;
            stats.flushes.fetch_add(1, Relaxed);
            Ok(0)
        }
        RequestType::GetId => {
            let id = &ctx.limits.device_id;
            answer(mem, segments, request, answer_room, id)?;
            stats.queries.fetch_add(1, Relaxed);
            // The guest marks points in time by reading its disk's serial
            // (one GET_ID each): the event lands in the trace before the
            // guest sees the completion, so it orders guest actions
            // against keyslot events.
            if let Some(trace) = ctx.engine.trace() {
                trace.event(TraceEvent::GetId(GetIdEvent { queue: ctx.queue }));
            }
            Ok(id.len() as u32)
        }
        RequestType::Discard | RequestType::WriteZeroes => {
            discard_or_write_zeroes(ctx, mem, request, &mut reader, buffer)?;
            let counter = if request == RequestType::Discard {
                &stats.discards
            } else {
                &stats.write_zeroes
            };
            counter.fetch_add(1, Relaxed);
            Ok(0)
        }
        RequestType::GetCryptoModes => {
            let caps = ctx
                .engine
                .capabilities()
                .ok_or(RequestError::Unsupported(request))?;
            let mut bytes = [0u8; 8];
            for (chunk, mode) in bytes.chunks_exact_mut(4).zip(caps.modes()) {
                chunk.copy_from_slice(&mode.to_le_bytes());
            }
            answer(mem, segments, request, answer_room, &bytes)?;
            stats.queries.fetch_add(1, Relaxed);
            Ok(bytes.len() as u32)
        }
        RequestType::KeyslotProgram | RequestType::KeyslotEvict => {
            let desc = read_key_desc(mem, &mut reader, request)?;
            if request == RequestType::KeyslotProgram {
                ctx.engine.program(&desc, ctx.queue)?;
            } else {
                ctx.engine.evict(&desc, ctx.queue)?;
            }
            Ok(0)
        }
        RequestType::DeriveSwSecret => {
            // A capability the engine lacks is UNSUPP whatever the payload.
            ctx.engine.check_wrapped_keys_offered()?;
            let blob = read_key_blob(mem, &mut reader, request)?;
            answer_fits(request, answer_room, SW_SECRET_SIZE)?;
            let secret = ctx.engine.derive_sw_secret(&blob)?;
            answer(mem, segments, request, answer_room, &secret[..])?;
            Ok(SW_SECRET_SIZE as u32)
        }
        RequestType::GenerateKey => {
            ctx.engine.check_wrapped_keys_offered()?;
            no_payload(&reader, request)?;
            answer_fits(request, answer_room, KeyBlob::SIZE)?;
            let blob = ctx.engine.generate_key()?;
            answer_key_blob(mem, segments, request, answer_room, &blob)
        }
        RequestType::ImportKey | RequestType::PrepareKey => {
            ctx.engine.check_wrapped_keys_offered()?;
            let payload = read_key_blob(mem, &mut reader, request)?;
            answer_fits(request, answer_room, KeyBlob::SIZE)?;
            let blob = if request == RequestType::ImportKey {
                ctx.engine.import_key(&payload)?
            } else {
                ctx.engine.prepare_key(&payload)?
            };
            answer_key_blob(mem, segments, request, answer_room, &blob)
        }
        RequestType::Unsupported(_) => Err(RequestError::Unsupported(request)),
    }
}

/// A checked byte range of the image.
struct Range {
    offset: u64,
    len: u64,
}

/// Checks a data transfer of `len` bytes at `sector`.
fn checked_range(
    ctx: &Context<'_>,
    request: RequestType,
    sector: u64,
    len: u64,
    writes: bool,
) -> Result<Range, RequestError> {
    if writes && ctx.image.read_only() {
        return Err(RequestError::ReadOnly(request));
    }
    if len == 0 {
        return Err(RequestError::NoData(request));
    }
    if !len.is_multiple_of(SECTOR_SIZE) {
        return Err(RequestError::NotSectorMultiple { request, len });
    }
    if len > ctx.limits.max_data_bytes {
        return Err(RequestError::TooLarge {
            request,
            len,
            max: ctx.limits.max_data_bytes,
        });
    }
    sector_range(ctx.image, sector, len / SECTOR_SIZE)
}

fn sector_range(image: &Image, sector: u64, sectors: u64) -> Result<Range, RequestError> {
    let beyond = || RequestError::BeyondCapacity {
        sector,
        sectors,
        capacity: image.capacity() / SECTOR_SIZE,
    };
    let offset = sector.checked_mul(SECTOR_SIZE).ok_or_else(beyond)?;
    let len = sectors * SECTOR_SIZE;
    if !image.contains(offset, len) {
        return Err(beyond());
    }
    Ok(Range { offset, len })
}

fn read_crypto_msg<M: GuestMemory>(
    mem: &M,
    reader: &mut Cursor<'_>,
    request: RequestType,
) -> Result<CryptoMsg, RequestError> {
    let mut bytes = [0u8; CryptoMsg::SIZE];
    if reader.remaining() < bytes.len() as u64 {
        return Err(RequestError::PayloadSize {
            request,
            what: "crypto_msg",
            got: reader.remaining(),
            want: CryptoMsg::SIZE as u64,
        });
    }
    reader.read(mem, &mut bytes).map_err(RequestError::Memory)?;
    Ok(CryptoMsg::parse(&bytes))
}

fn read_key_desc<M: GuestMemory>(
    mem: &M,
    reader: &mut Cursor<'_>,
    request: RequestType,
) -> Result<KeyDesc, RequestError> {
    if reader.remaining() != KeyDesc::SIZE as u64 {
        return Err(RequestError::PayloadSize {
            request,
            what: "key_desc",
            got: reader.remaining(),
            want: KeyDesc::SIZE as u64,
        });
    }
    let mut bytes = Zeroizing::new([0u8; KeyDesc::SIZE]);
    reader
        .read(mem, &mut bytes[..])
        .map_err(RequestError::Memory)?;
    Ok(KeyDesc::parse(&bytes))
}

/// The `key_blob` payload of requests 32, 34 and 35: exactly
/// [`KeyBlob::SIZE`] bytes, read into memory that is wiped after use.
fn read_key_blob<M: GuestMemory>(
    mem: &M,
    reader: &mut Cursor<'_>,
    request: RequestType,
) -> Result<KeyBlob, RequestError> {
    if reader.remaining() != KeyBlob::SIZE as u64 {
        return Err(RequestError::PayloadSize {
            request,
            what: "key_blob",
            got: reader.remaining(),
            want: KeyBlob::SIZE as u64,
        });
    }
    let mut bytes = Zeroizing::new([0u8; KeyBlob::SIZE]);
    reader
        .read(mem, &mut bytes[..])
        .map_err(RequestError::Memory)?;
    Ok(KeyBlob::parse(&bytes))
}

/// A request that takes no payload after its header (GENERATE_KEY).
fn no_payload(reader: &Cursor<'_>, request: RequestType) -> Result<(), RequestError> {
    match reader.remaining() {
        0 => Ok(()),
        got => Err(RequestError::PayloadSize {
            request,
            what: "payload",
            got,
            want: 0,
        }),
    }
}

/// Writes a `key_blob` answer (wiped from the device's memory after).
fn answer_key_blob<M: GuestMemory>(
    mem: &M,
    segments: &Segments,
    request: RequestType,
    room: u64,
    blob: &KeyBlob,
) -> Result<u32, RequestError> {
    let bytes = Zeroizing::new(blob.encode());
    answer(mem, segments, request, room, &bytes[..])?;
    Ok(KeyBlob::SIZE as u32)
}

/// Checks, before the work is done, that the answer will fit.
fn answer_fits(request: RequestType, room: u64, len: usize) -> Result<(), RequestError> {
    if room < len as u64 {
        return Err(RequestError::ShortAnswer {
            request,
            got: room,
            want: len as u64,
        });
    }
    Ok(())
}

fn answer<M: GuestMemory>(
    mem: &M,
    segments: &Segments,
    request: RequestType,
    room: u64,
    bytes: &[u8],
) -> Result<(), RequestError> {
    if room < bytes.len() as u64 {
        return Err(RequestError::ShortAnswer {
            request,
            got: room,
            want: bytes.len() as u64,
        });
    }
    segments
        .writer()
        .write(mem, bytes)
        .map_err(RequestError::Memory)
}

/// Most segments one DISCARD or WRITE_ZEROES may carry, whatever
/// `max_discard_seg` says: the bound of the on-stack copy below.
pub const MAX_DISCARD_SEGMENTS: usize = 256;

/// DISCARD and WRITE_ZEROES: all segments are checked before any is
/// applied (VIRTIO 1.2 §5.2.6.2). The segments are read from guest memory
/// once, into a local copy, and only the copy is checked and applied: a
/// guest that rewrites a segment after the check cannot change what is
/// done.
fn discard_or_write_zeroes<M: GuestMemory>(
    ctx: &Context<'_>,
    mem: &M,
    request: RequestType,
    reader: &mut Cursor<'_>,
    buffer: &mut Vec<u8>,
) -> Result<(), RequestError> {
    if ctx.image.read_only() {
        return Err(RequestError::ReadOnly(request));
    }
    let payload = reader.remaining();
    let count = payload / DiscardSegment::SIZE as u64;
    if count == 0 || !payload.is_multiple_of(DiscardSegment::SIZE as u64) {
        return Err(RequestError::PayloadSize {
            request,
            what: "discard/write-zeroes segments",
            got: payload,
            want: DiscardSegment::SIZE as u64,
        });
    }
    let max = ctx.limits.max_discard_seg.min(MAX_DISCARD_SEGMENTS as u32);
    if count > u64::from(max) {
        return Err(RequestError::TooManySegments {
            request,
            got: count,
            max,
        });
    }
    let allowed_flags = if request == RequestType::WriteZeroes {
        DiscardSegment::FLAG_UNMAP
    } else {
        0
    };
    // `count` <= MAX_DISCARD_SEGMENTS, checked above.
    let mut copy = [DiscardSegment {
        sector: 0,
        num_sectors: 0,
        flags: 0,
    }; MAX_DISCARD_SEGMENTS];
    let segments = &mut copy[..count as usize];
    for segment in segments.iter_mut() {
        *segment = read_segment(mem, reader)?;
    }
    let mut ranges = [(0u64, 0u64); MAX_DISCARD_SEGMENTS];
    for (segment, range) in segments.iter().zip(ranges.iter_mut()) {
        if segment.flags & !allowed_flags != 0 {
            return Err(RequestError::UnsupportedFlags {
                request,
                flags: segment.flags,
            });
        }
        if segment.num_sectors > ctx.limits.max_discard_sectors {
            return Err(RequestError::TooLarge {
                request,
                len: u64::from(segment.num_sectors) * SECTOR_SIZE,
                max: u64::from(ctx.limits.max_discard_sectors) * SECTOR_SIZE,
            });
        }
        let checked = sector_range(ctx.image, segment.sector, u64::from(segment.num_sectors))?;
        *range = (checked.offset, checked.len);
    }
    // With a default key, WRITE_ZEROES writes encrypted zeros (checked
    // and charged for every segment first); DISCARD punches holes, which
    // read back as noise: after a DISCARD the contents are undefined.
    let zeroes_key = ctx
        .engine
        .default_key()
        .filter(|_| request == RequestType::WriteZeroes);
    if let Some(key) = zeroes_key {
        let mut total = 0;
        for &(offset, len) in ranges[..count as usize].iter() {
            default_key::check_zeroes(key, offset, len)?;
            total += len;
        }
        ctx.engine.charge(key, Direction::Encrypt, total)?;
        for &(offset, len) in ranges[..count as usize].iter() {
            default_key::write_zeroes(key, ctx.image, (offset, len), buffer)?;
        }
        ctx.engine.stats().default_key_writes.add(total);
        return Ok(());
    }
    for (segment, &(offset, len)) in segments.iter().zip(ranges.iter()) {
        let done =
            if request == RequestType::Discard || segment.flags & DiscardSegment::FLAG_UNMAP != 0 {
                ctx.image.punch_hole(offset, len)
            } else {
                ctx.image.write_zeroes(offset, len)
            };
        done.map_err(|source| guest_io::io_error(request, source))?;
    }
    Ok(())
}

fn read_segment<M: GuestMemory>(
    mem: &M,
    reader: &mut Cursor<'_>,
) -> Result<DiscardSegment, RequestError> {
    let mut bytes = [0u8; DiscardSegment::SIZE];
    reader.read(mem, &mut bytes).map_err(RequestError::Memory)?;
    Ok(DiscardSegment::parse(&bytes))
}

#[cfg(test)]
mod tests {
    //! The request parser on plain guest memory, without a process or a
    //! socket: descriptor chains are built by hand, as a guest would.

    use super::*;
    use crate::device::image::Image;
    use crate::engine::Engine;
    use std::sync::atomic::{AtomicBool, Ordering};
    use virtio_queue::desc::split::Descriptor;
    use vm_memory::{GuestAddress, GuestMemoryMmap};

    const MEMORY: usize = 1 << 20;
    const HEADER: u64 = 0x1000;
    const PAYLOAD: u64 = 0x2000;
    const STATUS: u64 = 0x3000;
    const WRITE: u16 = virtio_bindings::virtio_ring::VRING_DESC_F_WRITE as u16;
    const NEXT: u16 = virtio_bindings::virtio_ring::VRING_DESC_F_NEXT as u16;

    struct Fixture {
        _dir: tempfile::TempDir,
        path: std::path::PathBuf,
        image: Image,
        engine: Engine,
        limits: Limits,
        mem: GuestMemoryMmap,
        refusals: RefusalLog,
    }

    impl Fixture {
        fn new() -> Self {
            let dir = tempfile::tempdir().expect("temp dir");
            let path = dir.path().join("disk.img");
            let image = Image::open(&path, Some(1 << 20), false).expect("image");
            let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEMORY)]).expect("memory");
            Self {
                _dir: dir,
                path,
                image,
                engine: Engine::new(None, None),
                limits: Limits {
                    max_data_bytes: 1 << 20,
                    max_discard_seg: 32,
                    max_discard_sectors: 1 << 20,
                    device_id: [0; DEVICE_ID_BYTES],
                },
                mem,
                refusals: RefusalLog::default(),
            }
        }

        /// Serves header + payload (device-readable) + status (writable).
        fn serve(&self, header: &OutHeader, payload_len: u32) -> (u32, u8) {
            self.mem
                .write_slice(&header.encode(), GuestAddress(HEADER))
                .expect("header");
            self.mem
                .write_obj(0xffu8, GuestAddress(STATUS))
                .expect("status");
            let chain = [
                Descriptor::new(HEADER, OutHeader::SIZE as u32, NEXT, 1),
                Descriptor::new(PAYLOAD, payload_len, NEXT, 2),
                Descriptor::new(STATUS, 1, WRITE, 0),
            ];
            let ctx = Context {
                engine: &self.engine,
                image: &self.image,
                limits: &self.limits,
                queue: 0,
                role: QueueRole::Request(0),
                crypto_negotiated: false,
                refusals: &self.refusals,
            };
            let used = serve(&ctx, &self.mem, chain.into_iter(), &mut Scratch::default());
            let status: u8 = self.mem.read_obj(GuestAddress(STATUS)).expect("status");
            (used, status)
        }

        fn image_bytes(&self) -> Vec<u8> {
            std::fs::read(&self.path).expect("read image")
        }
    }

    fn discard_header() -> OutHeader {
        OutHeader {
            request_type: RequestType::Discard,
            ioprio: 0,
            sector: 0,
        }
    }

    fn write_segments(mem: &GuestMemoryMmap, segments: &[DiscardSegment]) {
        for (index, segment) in segments.iter().enumerate() {
            let at = PAYLOAD + (index * DiscardSegment::SIZE) as u64;
            mem.write_slice(&segment.encode(), GuestAddress(at))
                .expect("segment");
        }
    }

    fn segment(sector: u64) -> DiscardSegment {
        DiscardSegment {
            sector,
            num_sectors: 8,
            flags: 0,
        }
    }

    #[test]
    fn a_valid_discard_is_applied() {
        let fixture = Fixture::new();
        std::fs::write(&fixture.path, vec![0xa5; 1 << 20]).expect("fill");
        write_segments(&fixture.mem, &[segment(0), segment(64)]);
        let (used, status) = fixture.serve(&discard_header(), 32);
        assert_eq!((used, status), (1, Status::Ok as u8));
        let image = fixture.image_bytes();
        assert!(image[..4096].iter().all(|b| *b == 0));
        assert!(image[4096..64 * 512].iter().all(|b| *b == 0xa5));
    }

    #[test]
    fn a_discard_with_one_bad_segment_changes_nothing() {
        let fixture = Fixture::new();
        std::fs::write(&fixture.path, vec![0xa5; 1 << 20]).expect("fill");
        write_segments(&fixture.mem, &[segment(0), segment(u64::MAX / 512)]);
        let (used, status) = fixture.serve(&discard_header(), 32);
        assert_eq!((used, status), (1, Status::IoErr as u8));
        assert!(fixture.image_bytes().iter().all(|b| *b == 0xa5));
    }

    /// Regression: segments used to be read twice (checked, then read again
    /// and applied), so a guest flipping a segment between the two reads
    /// got IOERR for a request that had already discarded its first
    /// segment. The segments are now copied once.
    #[test]
    fn a_segment_rewritten_during_the_request_cannot_split_check_and_use() {
        let fixture = Fixture::new();
        let stop = AtomicBool::new(false);
        let bad = segment(u64::MAX / 512).encode();
        let good = segment(64).encode();
        let second = GuestAddress(PAYLOAD + DiscardSegment::SIZE as u64);
        let (mut refused, mut torn) = (0, 0);
        std::thread::scope(|scope| {
            scope.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    fixture.mem.write_slice(&bad, second).expect("flip");
                    fixture.mem.write_slice(&good, second).expect("flip");
                }
            });
            for _ in 0..20_000 {
                // Sector 0..8 holds data; the request discards it only when
                // it succeeds.
                fixture
                    .image
                    .write_at(&[0xa5; 4096], 0)
                    .expect("refill sector 0");
                fixture
                    .mem
                    .write_slice(&segment(0).encode(), GuestAddress(PAYLOAD))
                    .expect("segment 0");
                let (_, status) = fixture.serve(&discard_header(), 32);
                if status == Status::IoErr as u8 {
                    refused += 1;
                    let mut first = [0u8; 4096];
                    fixture.image.read_at(&mut first, 0).expect("read back");
                    if first.iter().any(|b| *b != 0xa5) {
                        torn += 1;
                    }
                }
            }
            stop.store(true, Ordering::Relaxed);
        });
        assert_eq!(
            torn, 0,
            "{torn} of {refused} refused DISCARDs had already discarded segment 0"
        );
    }

    #[test]
    fn more_segments_than_the_copy_holds_are_refused() {
        let mut fixture = Fixture::new();
        fixture.limits.max_discard_seg = u32::MAX;
        let segments = vec![segment(0); MAX_DISCARD_SEGMENTS + 1];
        write_segments(&fixture.mem, &segments);
        let len = (segments.len() * DiscardSegment::SIZE) as u32;
        let (_, status) = fixture.serve(&discard_header(), len);
        assert_eq!(status, Status::IoErr as u8);
    }

    #[test]
    fn a_control_command_on_a_request_queue_is_refused_before_its_payload_is_read() {
        let fixture = Fixture::new();
        let header = OutHeader {
            request_type: RequestType::KeyslotProgram,
            ioprio: 0,
            sector: 0,
        };
        let (used, status) = fixture.serve(&header, KeyDesc::SIZE as u32);
        assert_eq!((used, status), (1, Status::Unsupp as u8));
    }
}
