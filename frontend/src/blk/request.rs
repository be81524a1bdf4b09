//! virtio-blk requests and their completions (VIRTIO 1.2 §5.2.6, plus the
//! draft's inline-encryption types 27..35).
//!
//! A request is, in descriptor order (§5.2.6):
//!
//! ```text
//! device-readable:  outhdr (16 B) | payload (crypto_msg, key_desc, ...) | data out
//! device-writable:  data in | status (1 B)
//! ```
//!
//! [`Request`] says what to send; [`Request::prepare`] writes it into
//! guest memory and yields the [`Segment`]s of a well-formed chain, which
//! a negative test may edit before submitting. Data can be cut into
//! segments of a chosen size to exercise `seg_max`. The layouts of the
//! payloads are [`icelab_protocol`]'s, not redone here.

use std::time::Duration;

use icelab_protocol::{
    CryptoMode, CryptoMsg, DEVICE_ID_BYTES, DiscardSegment, KEY_BLOB_SIZE, KeyDesc, MAX_KEY_BYTES,
    OutHeader, RequestType, SW_SECRET_SIZE, Status,
};
use zeroize::{Zeroize, Zeroizing};

use crate::chain::Segment;
use crate::error::{Error, Result};
use crate::memory::{GuestBuffer, SharedMemory};

/// The status byte is preset to this before submission; a completion that
/// still shows it means the device never wrote the status.
pub const STATUS_NOT_WRITTEN: u8 = 0xff;

/// What to send to the device.
#[derive(Clone)]
pub struct Request {
    request_type: RequestType,
    ioprio: u32,
    sector: u64,
    /// Device-readable bytes after the outhdr, in one descriptor.
    payload: Zeroizing<Vec<u8>>,
    /// Device-readable data.
    data_out: Vec<u8>,
    /// Device-writable bytes before the status byte.
    data_in_len: u32,
    /// Largest data descriptor; `None` puts each data area in one.
    segment_size: Option<u32>,
    /// Submit through an indirect descriptor table.
    indirect: bool,
    /// Payload or answer holds key material: wipe guest memory after use.
    sensitive: bool,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the payload: it may be a key.
        f.debug_struct("Request")
            .field("type", &self.request_type)
            .field("sector", &self.sector)
            .field("payload_len", &self.payload.len())
            .field("data_out_len", &self.data_out.len())
            .field("data_in_len", &self.data_in_len)
            .field("segment_size", &self.segment_size)
            .field("indirect", &self.indirect)
            .finish_non_exhaustive()
    }
}

impl Request {
    /// A request of any type with no payload and no data; add them with
    /// the `with_*` methods. Also the way to send unsupported types or
    /// payloads of the wrong size.
    pub fn raw(request_type: RequestType, sector: u64) -> Self {
        Self {
            request_type,
            ioprio: 0,
            sector,
            payload: Zeroizing::new(Vec::new()),
            data_out: Vec::new(),
            data_in_len: 0,
            segment_size: None,
            indirect: false,
            sensitive: false,
        }
    }

    /// IN (type 0): read `len` bytes from `sector`.
    pub fn read(sector: u64, len: u32) -> Self {
        Self::raw(RequestType::In, sector).with_data_in(len)
    }

    /// OUT (type 1): write `data` at `sector`.
    pub fn write(sector: u64, data: impl Into<Vec<u8>>) -> Self {
        Self::raw(RequestType::Out, sector).with_data_out(data)
    }

    /// FLUSH (type 4).
    pub fn flush() -> Self {
        Self::raw(RequestType::Flush, 0)
    }

    /// GET_ID (type 8): the 20-byte device id string.
    pub fn get_id() -> Self {
        Self::raw(RequestType::GetId, 0).with_data_in(DEVICE_ID_BYTES as u32)
    }

    /// DISCARD (type 11) of the given ranges.
    pub fn discard(segments: &[DiscardSegment]) -> Self {
        Self::raw(RequestType::Discard, 0).with_payload(discard_payload(segments))
    }

    /// WRITE_ZEROES (type 13) of the given ranges.
    pub fn write_zeroes(segments: &[DiscardSegment]) -> Self {
        Self::raw(RequestType::WriteZeroes, 0).with_payload(discard_payload(segments))
    }

    /// CRYPTO_OUT (type 27): encrypt `data` with `msg`'s keyslot and DUN,
    /// write it at `sector`. Readable: outhdr, crypto_msg, data.
    pub fn crypto_write(sector: u64, msg: &CryptoMsg, data: impl Into<Vec<u8>>) -> Self {
        Self::raw(RequestType::CryptoOut, sector)
            .with_payload(msg.encode().to_vec())
            .with_data_out(data)
    }

    /// CRYPTO_IN (type 28): read `len` bytes at `sector` and decrypt them
    /// with `msg`'s keyslot and DUN. Readable: outhdr, crypto_msg;
    /// writable: data, status.
    pub fn crypto_read(sector: u64, msg: &CryptoMsg, len: u32) -> Self {
        Self::raw(RequestType::CryptoIn, sector)
            .with_payload(msg.encode().to_vec())
            .with_data_in(len)
    }

    /// GET_CRYPTO_MODES (type 29): answers `le32 modes[2]`.
    pub fn get_crypto_modes() -> Self {
        Self::raw(RequestType::GetCryptoModes, 0).with_data_in((CryptoMode::TABLE_LEN * 4) as u32)
    }

    /// KEYSLOT_PROGRAM (type 30) with `desc`. The key is wiped from the
    /// request and from guest memory once done with.
    pub fn keyslot_program(desc: &KeyDesc) -> Self {
        let mut wire = desc.encode();
        let request = Self::raw(RequestType::KeyslotProgram, 0).with_key_payload(&wire);
        wire.zeroize();
        request
    }

    /// KEYSLOT_EVICT (type 31) with `desc`.
    pub fn keyslot_evict(desc: &KeyDesc) -> Self {
        let mut wire = desc.encode();
        let request = Self::raw(RequestType::KeyslotEvict, 0).with_key_payload(&wire);
        wire.zeroize();
        request
    }

    /// KEYSLOT_EVICT of `slot`, with every other key_desc field zero.
    pub fn keyslot_evict_slot(slot: u32) -> Self {
        let desc = KeyDesc {
            slot,
            bytes: [0; MAX_KEY_BYTES],
            key_size: 0,
            crypto_mode: 0,
            key_type: 0,
            data_unit_size_bits: 0,
            dun_bytes: 0,
        };
        Self::keyslot_evict(&desc)
    }

    /// DERIVE_SW_SECRET (type 32): `blob` is an ephemerally wrapped key in
    /// key_blob layout (see [`key_blob`]); answers the 32-byte secret.
    pub fn derive_sw_secret(blob: &[u8; KEY_BLOB_SIZE]) -> Self {
        Self::raw(RequestType::DeriveSwSecret, 0)
            .with_key_payload(blob)
            .with_data_in(SW_SECRET_SIZE as u32)
    }

    /// GENERATE_KEY (type 33): answers a long-term wrapped key_blob.
    pub fn generate_key() -> Self {
        let mut request = Self::raw(RequestType::GenerateKey, 0).with_data_in(KEY_BLOB_SIZE as u32);
        request.sensitive = true;
        request
    }

    /// IMPORT_KEY (type 34): `blob` holds the raw key in key_blob layout;
    /// answers a long-term wrapped key_blob.
    pub fn import_key(blob: &[u8; KEY_BLOB_SIZE]) -> Self {
        Self::raw(RequestType::ImportKey, 0)
            .with_key_payload(blob)
            .with_data_in(KEY_BLOB_SIZE as u32)
    }

    /// PREPARE_KEY (type 35): `blob` is a long-term wrapped key; answers
    /// it ephemerally wrapped.
    pub fn prepare_key(blob: &[u8; KEY_BLOB_SIZE]) -> Self {
        Self::raw(RequestType::PrepareKey, 0)
            .with_key_payload(blob)
            .with_data_in(KEY_BLOB_SIZE as u32)
    }

    /// Sets the device-readable payload after the outhdr (one descriptor).
    pub fn with_payload(mut self, payload: impl Into<Vec<u8>>) -> Self {
        self.payload = Zeroizing::new(payload.into());
        self
    }

    /// Sets a payload holding key material: the request and guest memory
    /// are wiped after use.
    pub fn with_key_payload(mut self, payload: &[u8]) -> Self {
        self.payload = Zeroizing::new(payload.to_vec());
        self.sensitive = true;
        self
    }

    /// Sets the device-readable data.
    pub fn with_data_out(mut self, data: impl Into<Vec<u8>>) -> Self {
        self.data_out = data.into();
        self
    }

    /// Sets the number of device-writable bytes before the status byte.
    pub fn with_data_in(mut self, len: u32) -> Self {
        self.data_in_len = len;
        self
    }

    /// Cuts data into descriptors of at most `size` bytes (0 means one
    /// descriptor per data area).
    pub fn with_segment_size(mut self, size: u32) -> Self {
        self.segment_size = (size > 0).then_some(size);
        self
    }

    /// Sends the chain through an indirect descriptor table.
    pub fn with_indirect(mut self, indirect: bool) -> Self {
        self.indirect = indirect;
        self
    }

    /// Sets the outhdr's ioprio.
    pub fn with_ioprio(mut self, ioprio: u32) -> Self {
        self.ioprio = ioprio;
        self
    }

    /// The request type.
    pub fn request_type(&self) -> RequestType {
        self.request_type
    }

    /// The start sector.
    pub fn sector(&self) -> u64 {
        self.sector
    }

    /// True when the chain goes through an indirect table.
    pub fn indirect(&self) -> bool {
        self.indirect
    }

    /// Bytes of device-readable data.
    pub fn data_out_len(&self) -> usize {
        self.data_out.len()
    }

    /// Bytes of device-writable data (excluding the status byte).
    pub fn data_in_len(&self) -> u32 {
        self.data_in_len
    }

    /// Descriptors the chain takes in the descriptor table: 1 for an
    /// indirect chain, else one per segment.
    pub fn descriptors_needed(&self) -> usize {
        if self.indirect {
            return 1;
        }
        let pieces = |len: u64| match (len, self.segment_size) {
            (0, _) => 0,
            (len, Some(size)) => len.div_ceil(u64::from(size)) as usize,
            (_, None) => 1,
        };
        2 + usize::from(!self.payload.is_empty())
            + pieces(self.data_out.len() as u64)
            + pieces(u64::from(self.data_in_len))
    }

    /// Writes the request into newly allocated guest memory and returns
    /// the segments of a well-formed chain. Layout of the allocation: data
    /// out, data in (zeroed), outhdr, payload, status (preset to
    /// [`STATUS_NOT_WRITTEN`]); data areas start on 64-byte boundaries and
    /// the allocation on a page when there is data.
    pub fn prepare(&self, memory: &SharedMemory) -> Result<PreparedRequest> {
        let data_out_len = self.data_out.len() as u64;
        let data_in_len = u64::from(self.data_in_len);
        let data_in_offset = data_out_len.next_multiple_of(64);
        let header_offset = (data_in_offset + data_in_len).next_multiple_of(64);
        let payload_offset = header_offset + OutHeader::SIZE as u64;
        let status_offset = payload_offset + self.payload.len() as u64;
        let total = status_offset + 1;
        let align = if data_out_len + data_in_len > 0 {
            4096
        } else {
            64
        };
        let buffer = memory.alloc(total, align)?;

        let header = OutHeader {
            request_type: self.request_type,
            ioprio: self.ioprio,
            sector: self.sector,
        };
        buffer.write(0, &self.data_out)?;
        memory.fill(buffer.at(data_in_offset), data_in_len, 0)?;
        buffer.write(header_offset, &header.encode())?;
        buffer.write(payload_offset, &self.payload)?;
        buffer.write(status_offset, &[STATUS_NOT_WRITTEN])?;

        let mut segments = vec![Segment::readable(
            buffer.at(header_offset),
            OutHeader::SIZE as u32,
        )];
        if !self.payload.is_empty() {
            segments.push(Segment::readable(
                buffer.at(payload_offset),
                checked_u32(self.payload.len())?,
            ));
        }
        self.push_data(&mut segments, buffer.addr(), data_out_len, false)?;
        self.push_data(&mut segments, buffer.at(data_in_offset), data_in_len, true)?;
        segments.push(Segment::writable(buffer.at(status_offset), 1));

        Ok(PreparedRequest {
            request_type: self.request_type,
            segments,
            status_addr: buffer.at(status_offset),
            data_in_addr: buffer.at(data_in_offset),
            data_in_len: self.data_in_len,
            indirect: self.indirect,
            sensitive: self.sensitive,
            buffer,
        })
    }

    fn push_data(
        &self,
        segments: &mut Vec<Segment>,
        addr: u64,
        len: u64,
        writable: bool,
    ) -> Result<()> {
        let step = self.segment_size.map_or(len.max(1), u64::from);
        let mut offset = 0;
        while offset < len {
            let piece = checked_u32((len - offset).min(step))?;
            segments.push(Segment {
                addr: addr + offset,
                len: piece,
                writable,
            });
            offset += u64::from(piece);
        }
        Ok(())
    }
}

fn checked_u32(len: impl TryInto<u32> + Copy + std::fmt::Display) -> Result<u32> {
    len.try_into()
        .map_err(|_| Error::InvalidArgument(format!("{len} bytes do not fit one descriptor")))
}

fn discard_payload(segments: &[DiscardSegment]) -> Vec<u8> {
    segments
        .iter()
        .flat_map(|segment| segment.encode())
        .collect()
}

/// Encodes a `key_blob` (le32 key_size, u8 key\[128\]) around `key`;
/// `None` when the key is longer than 128 bytes.
pub fn key_blob(key: &[u8]) -> Option<Zeroizing<[u8; KEY_BLOB_SIZE]>> {
    if key.len() > MAX_KEY_BYTES {
        return None;
    }
    let mut blob = Zeroizing::new([0u8; KEY_BLOB_SIZE]);
    // key.len() <= 128, so it fits a u32.
    blob[..4].copy_from_slice(&(key.len() as u32).to_le_bytes());
    blob[4..4 + key.len()].copy_from_slice(key);
    Some(blob)
}

/// A request written into guest memory, not yet submitted. The segments
/// describe a well-formed chain; a negative test may edit them (or build
/// raw descriptors from them) before submitting.
pub struct PreparedRequest {
    /// The request type in the outhdr.
    pub request_type: RequestType,
    /// The chain, in order.
    pub segments: Vec<Segment>,
    /// Where the status byte is read back from.
    pub status_addr: u64,
    /// Where the device-writable data starts.
    pub data_in_addr: u64,
    /// Bytes of device-writable data read back on completion.
    pub data_in_len: u32,
    /// Submit through an indirect table.
    pub indirect: bool,
    sensitive: bool,
    buffer: GuestBuffer,
}

impl std::fmt::Debug for PreparedRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreparedRequest")
            .field("request_type", &self.request_type)
            .field("segments", &self.segments)
            .field("status_addr", &format_args!("{:#x}", self.status_addr))
            .field("indirect", &self.indirect)
            .finish_non_exhaustive()
    }
}

impl PreparedRequest {
    /// The guest memory holding the request.
    pub fn buffer(&self) -> &GuestBuffer {
        &self.buffer
    }

    /// Reads back what the device produced.
    pub(crate) fn complete(
        &self,
        used_len: u32,
        latency: Duration,
        tag: Tag,
    ) -> Result<Completion> {
        let memory = self.buffer.memory();
        let mut status = [STATUS_NOT_WRITTEN];
        memory.read(self.status_addr, &mut status)?;
        let mut data = vec![0u8; self.data_in_len as usize];
        memory.read(self.data_in_addr, &mut data)?;
        // Key material in guest memory is wiped when `self` drops.
        Ok(Completion {
            tag,
            request_type: self.request_type,
            status: status[0],
            used_len,
            data,
            sensitive: self.sensitive,
            latency,
        })
    }
}

impl Drop for PreparedRequest {
    fn drop(&mut self) {
        if self.sensitive {
            // Best effort: the range is ours and mapped, so this only fails
            // if guest memory itself is broken, and then nothing can be done.
            let _ = self.buffer.fill(0);
        }
    }
}

/// Identifies a submitted request within its queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag(pub u64);

/// What came back for one request.
#[derive(Clone)]
pub struct Completion {
    /// The tag returned at submission.
    pub tag: Tag,
    /// The request type sent.
    pub request_type: RequestType,
    /// The raw status byte ([`STATUS_NOT_WRITTEN`] if the device left it).
    pub status: u8,
    /// `len` of the used element: bytes the device says it wrote.
    pub used_len: u32,
    /// The device-writable bytes before the status byte.
    pub data: Vec<u8>,
    /// From submission to the moment the frontend saw the used element.
    pub latency: Duration,
    sensitive: bool,
}

impl std::fmt::Debug for Completion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut s = f.debug_struct("Completion");
        s.field("tag", &self.tag)
            .field("request_type", &self.request_type)
            .field("status", &self.status)
            .field("used_len", &self.used_len)
            .field("latency", &self.latency);
        if self.sensitive {
            s.field(
                "data",
                &format_args!("<{} bytes withheld>", self.data.len()),
            );
        } else {
            s.field("data_len", &self.data.len());
        }
        s.finish()
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        if self.sensitive {
            self.data.zeroize();
        }
    }
}

impl Completion {
    /// The status, or `None` for a byte the spec does not define
    /// (including [`STATUS_NOT_WRITTEN`]).
    pub fn status(&self) -> Option<Status> {
        Status::from_wire(self.status)
    }

    /// True for VIRTIO_BLK_S_OK.
    pub fn is_ok(&self) -> bool {
        self.status() == Some(Status::Ok)
    }

    /// `Ok(self)` for VIRTIO_BLK_S_OK, else [`Error::RequestFailed`].
    pub fn ok(self) -> Result<Self> {
        if self.is_ok() {
            Ok(self)
        } else {
            Err(Error::RequestFailed {
                request: self.request_type,
                status: self.status,
            })
        }
    }

    /// GET_ID's answer as text, up to the first NUL.
    pub fn device_id(&self) -> String {
        let end = self
            .data
            .iter()
            .position(|b| *b == 0)
            .unwrap_or(self.data.len());
        String::from_utf8_lossy(&self.data[..end]).into_owned()
    }

    /// GET_CRYPTO_MODES's answer, when the data is long enough.
    pub fn crypto_modes(&self) -> Option<[u32; CryptoMode::TABLE_LEN]> {
        let mut modes = [0u32; CryptoMode::TABLE_LEN];
        for (index, mode) in modes.iter_mut().enumerate() {
            let bytes = self.data.get(index * 4..index * 4 + 4)?;
            *mode = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        }
        Some(modes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use icelab_protocol::Dun;

    #[test]
    fn crypto_in_has_header_msg_data_status_in_that_order() {
        let memory = SharedMemory::new(1 << 20).expect("memfd");
        let msg = CryptoMsg {
            slot: 2,
            reserved: 0,
            dun: Dun::from_u64(9),
        };
        let request = Request::crypto_read(8, &msg, 8192).with_segment_size(4096);
        let prepared = request.prepare(&memory).expect("room");
        let kinds: Vec<(u32, bool)> = prepared
            .segments
            .iter()
            .map(|s| (s.len, s.writable))
            .collect();
        assert_eq!(
            kinds,
            vec![
                (16, false),
                (40, false),
                (4096, true),
                (4096, true),
                (1, true)
            ]
        );
        assert_eq!(request.descriptors_needed(), 5);
        let mut header = [0u8; 16];
        memory
            .read(prepared.segments[0].addr, &mut header)
            .expect("mapped");
        let header = OutHeader::parse(&header);
        assert_eq!(header.request_type, RequestType::CryptoIn);
        assert_eq!(header.sector, 8);
        let mut wire = [0u8; CryptoMsg::SIZE];
        memory
            .read(prepared.segments[1].addr, &mut wire)
            .expect("mapped");
        assert_eq!(CryptoMsg::parse(&wire), msg);
        let mut status = [0u8];
        memory
            .read(prepared.status_addr, &mut status)
            .expect("mapped");
        assert_eq!(status[0], STATUS_NOT_WRITTEN);
        assert_eq!(prepared.segments[2].addr % 4096, 0, "data is page aligned");
    }

    #[test]
    fn write_splits_data_and_keeps_contents() {
        let memory = SharedMemory::new(1 << 20).expect("memfd");
        let data: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
        let prepared = Request::write(0, data.clone())
            .with_segment_size(2048)
            .prepare(&memory)
            .expect("room");
        let lens: Vec<u32> = prepared.segments.iter().map(|s| s.len).collect();
        assert_eq!(lens, vec![16, 2048, 2048, 904, 1]);
        let mut back = vec![0u8; 5000];
        memory
            .read(prepared.segments[1].addr, &mut back)
            .expect("mapped");
        assert_eq!(back, data);
    }

    #[test]
    fn key_requests_carry_the_key_desc_and_hide_it() {
        let memory = SharedMemory::new(1 << 20).expect("memfd");
        let desc = KeyDesc::raw_aes_256_xts(1, &[0x5a; 64], 4096, 8);
        let request = Request::keyslot_program(&desc);
        assert!(
            !format!("{request:?}").contains("90"),
            "no key bytes in Debug"
        );
        let prepared = request.prepare(&memory).expect("room");
        assert_eq!(prepared.segments[1].len as usize, KeyDesc::SIZE);
        let completion = prepared
            .complete(1, Duration::ZERO, Tag(0))
            .expect("readable");
        assert_eq!(completion.status, STATUS_NOT_WRITTEN);
        assert_eq!(completion.status(), None);
    }

    #[test]
    fn blobs_and_answers_decode() {
        let blob = key_blob(&[7u8; 64]).expect("short key");
        assert_eq!(&blob[..4], &64u32.to_le_bytes());
        assert!(key_blob(&[0u8; 129]).is_none());
        let completion = Completion {
            tag: Tag(1),
            request_type: RequestType::GetCryptoModes,
            status: 0,
            used_len: 9,
            data: vec![0, 0, 0, 0, 0x00, 0x1e, 0, 0],
            latency: Duration::ZERO,
            sensitive: false,
        };
        assert_eq!(completion.crypto_modes(), Some([0, 0x1e00]));
        assert!(completion.is_ok());
        let mut id = completion.clone();
        id.data = b"icelab\0\0\0".to_vec();
        assert_eq!(id.device_id(), "icelab");
    }
}
