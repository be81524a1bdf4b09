//! The malformed-request matrix, in process, on virtio-queue's
//! `MockSplitQueue` (tests/malformed.rs runs a smaller set end to end
//! against a real `icelab serve`).
//!
//! Each row of [`rows`] is one request: a name; where it is offered (`On`:
//! the request or control queue of a full device, or of a read-only device,
//! a device without an engine, one whose engine takes raw keys only, or one
//! whose driver did not negotiate inline encryption); a builder that writes the request's buffers and its
//! descriptor chain (direct, indirect, looped, ...) into a
//! `GuestMemoryMmap`; the status the device must write (OK, IOERR, UNSUPP,
//! or NONE when the chain has no device-writable byte); and the used length
//! it must return. The harness places the chain in the descriptor table of
//! a split virtqueue laid out by `MockSplitQueue`, makes it available, pops
//! it as the vhost-user backend does, hands its first descriptor to
//! [`request::prefetch_source`] and the chain to [`request::serve`] (what
//! the backend calls for every chain) and returns it to the used ring. A
//! row then checks: the status byte at the place the row names; the used
//! length in the used ring; that every other device-writable byte still
//! holds its canary (a refused request writes nothing but its status; a
//! valid read writes exactly its answer) and every device-readable byte is
//! unchanged; that the tempfile image is byte for byte what it was (or, for
//! a valid request, exactly what that request makes of it: the `xts-mode`
//! oracle gives the ciphertext); that the stats count one refusal (none for
//! a success); and that service continues on the same queues right after:
//! GET_ID, a plain write read back, a CRYPTO_OUT whose ciphertext matches
//! the oracle under slot 0's original key, read back by CRYPTO_IN, and
//! GET_CRYPTO_MODES, as far as the device offers them. Adding a case is
//! adding a line to [`rows`].

use crate::device::backend::{BlockDevice, DeviceConfig};
use crate::device::image::Image;
use crate::device::refusal_log::RefusalLog;
use crate::device::request::{self, Context, Limits, Scratch};
use crate::engine::{Capabilities, Engine, EngineError, KeyTypes, ProfileName};
use crate::protocol::{
    CryptoMsg, DEVICE_ID_BYTES, DiscardSegment, Dun, KEY_BLOB_SIZE, KeyBlob, KeyDesc, OutHeader,
    QueueRole, RequestType, SECTOR_SIZE, Status, VIRTIO_BLK_F_CTRL_VQ,
    VIRTIO_BLK_F_INLINE_ENCRYPTION, crypto_negotiated, feature,
};
use aes::Aes256;
use aes::cipher::KeyInit;
use aes::cipher::array::Array;
use std::path::PathBuf;
use std::sync::Arc;
use vhost_user_backend::VhostUserBackend;
use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::RawDescriptor;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryAtomic, GuestMemoryMmap};
use xts_mode::Xts128;

// ---------------------------------------------------------------------------
// The lab: guest memory, queues, image, keys
// ---------------------------------------------------------------------------

/// Queue size; the device derives seg_max (126) and so its largest
/// transfer (126 x 64 KiB) from it.
const QUEUE_SIZE: u16 = 128;
/// Guest memory: two adjacent regions of this size, so one guest-contiguous
/// buffer can span two host mappings.
const REGION: u64 = 16 << 20;
const MEMORY_END: u64 = 2 * REGION;
/// Where the request queue's and the control queue's rings live.
const REQUEST_RING: u64 = 0;
const CONTROL_RING: u64 = 0x4000;
/// Buffers are allocated from here, fresh for every request...
const HEAP: u64 = 0x1_0000;
/// ... up to here; the last MiB before the region boundary is for rows
/// that place buffers across it by hand.
const HEAP_END: u64 = REGION - (1 << 20);
/// Far outside guest memory.
const OUTSIDE: u64 = 1 << 40;
const IMAGE_SIZE: u64 = 512 << 10;
const CAPACITY: u64 = IMAGE_SIZE / SECTOR_SIZE;
/// What every device-writable byte holds before the device serves a chain.
const CANARY: u8 = 0xee;

const W: u16 = VRING_DESC_F_WRITE as u16;
const NEXT: u16 = VRING_DESC_F_NEXT as u16;
const INDIRECT: u16 = VRING_DESC_F_INDIRECT as u16;

const IN: u32 = RequestType::In.to_wire();
const OUT: u32 = RequestType::Out.to_wire();
const FLUSH: u32 = RequestType::Flush.to_wire();
const GET_ID: u32 = RequestType::GetId.to_wire();
const DISCARD: u32 = RequestType::Discard.to_wire();
const WRITE_ZEROES: u32 = RequestType::WriteZeroes.to_wire();
const CRYPTO_OUT: u32 = RequestType::CryptoOut.to_wire();
const CRYPTO_IN: u32 = RequestType::CryptoIn.to_wire();
const GET_CRYPTO_MODES: u32 = RequestType::GetCryptoModes.to_wire();
const PROGRAM: u32 = RequestType::KeyslotProgram.to_wire();
const EVICT: u32 = RequestType::KeyslotEvict.to_wire();
const DERIVE_SW_SECRET: u32 = RequestType::DeriveSwSecret.to_wire();
const GENERATE_KEY: u32 = RequestType::GenerateKey.to_wire();
const IMPORT_KEY: u32 = RequestType::ImportKey.to_wire();
const PREPARE_KEY: u32 = RequestType::PrepareKey.to_wire();

const UNMAP: u32 = DiscardSegment::FLAG_UNMAP;

/// Slot 0: 4096-byte data units, 8 DUN bytes. Slot 1: 512-byte data
/// units, 4 DUN bytes. Slot 2: programmed, then evicted. Slots 3..32:
/// never programmed (rows program 4 and 5 successfully; refused programs
/// go to 6 or to slot 0, whose key must survive them).
const KEY0: [u8; 64] = key(0x11);
const KEY1: [u8; 64] = key(0x5c);
const KEY_NEW: [u8; 64] = key(0xa7);

const fn key(seed: u8) -> [u8; 64] {
    let mut key = [0u8; 64];
    let mut i = 0;
    while i < key.len() {
        key[i] = seed.wrapping_add((i as u8).wrapping_mul(37));
        i += 1;
    }
    key
}

/// The key and data unit size of the slots the lab programs.
fn slot_key(slot: u32) -> Option<(&'static [u8; 64], usize)> {
    match slot {
        0 => Some((&KEY0, 4096)),
        1 => Some((&KEY1, 512)),
        _ => None,
    }
}

/// AES-256-XTS by the `xts-mode` oracle: one data unit per XTS sector,
/// the DUN as the 16-byte little-endian tweak.
fn xts(key: &[u8; 64], unit: usize, dun: u128, data: &mut [u8], encrypt: bool) {
    let k1 = Aes256::new(&Array::try_from(&key[..32]).expect("32 bytes"));
    let k2 = Aes256::new(&Array::try_from(&key[32..]).expect("32 bytes"));
    let cipher = Xts128::new(k1, k2);
    let tweak = |i: u128| i.to_le_bytes().into();
    if encrypt {
        cipher.encrypt_area(data, unit, dun, tweak);
    } else {
        cipher.decrypt_area(data, unit, dun, tweak);
    }
}

fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// The devices rows run against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Device {
    /// An engine (ufs profile: raw and hardware-wrapped keys), inline
    /// encryption negotiated, writable.
    Full,
    /// As `Full`, but the engine takes raw keys only.
    RawOnly,
    /// As `Full`, on a read-only image.
    ReadOnly,
    /// No engine: neither feature bit is offered.
    NoEngine,
    /// An engine, but the driver acked neither CTRL_VQ nor
    /// INLINE_ENCRYPTION.
    NotNegotiated,
}

/// Where a row's chain is offered.
#[derive(Clone, Copy, Debug)]
struct On {
    device: Device,
    control: bool,
}

/// The request queue of the full device.
const Q: On = On {
    device: Device::Full,
    control: false,
};
/// The control queue of the full device.
const C: On = On {
    device: Device::Full,
    control: true,
};
/// The control queue of a device whose engine takes raw keys only.
const RAW_C: On = On {
    device: Device::RawOnly,
    control: true,
};
/// The request queue of a read-only device.
const RO: On = On {
    device: Device::ReadOnly,
    control: false,
};
/// The (only) queue of a device without an engine.
const NOENG: On = On {
    device: Device::NoEngine,
    control: false,
};
/// The request queue of a device whose driver did not negotiate inline
/// encryption.
const NONEG: On = On {
    device: Device::NotNegotiated,
    control: false,
};
/// The control queue of that device.
const NONEG_C: On = On {
    device: Device::NotNegotiated,
    control: true,
};

/// One device with its image, guest memory and configuration, as
/// `icelab serve` would set it up.
struct Lab {
    _dir: tempfile::TempDir,
    path: PathBuf,
    device: BlockDevice,
    mem: GuestMemoryMmap,
    limits: Limits,
    refusals: RefusalLog,
    crypto_negotiated: bool,
    kind: Device,
}

impl Lab {
    fn new(kind: Device) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("disk.img");
        std::fs::write(&path, pattern(IMAGE_SIZE as usize, 7)).expect("fill the image");
        let image = Image::open(&path, None, kind == Device::ReadOnly).expect("image");
        let ufs = ProfileName::Ufs.capabilities();
        let capabilities = match kind {
            Device::NoEngine => None,
            Device::RawOnly => Some(Capabilities {
                key_types: KeyTypes::RAW,
                ..ufs
            }),
            Device::Full | Device::ReadOnly | Device::NotNegotiated => Some(ufs),
        };
        let engine = Arc::new(Engine::new(capabilities, None));
        let mem = GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), REGION as usize),
            (GuestAddress(REGION), REGION as usize),
        ])
        .expect("guest memory");
        let config = DeviceConfig {
            num_queues: 1,
            queue_size: QUEUE_SIZE,
            blk_size: 512,
            serial: "icelab-unit-matrix".to_owned(),
        };
        let device = BlockDevice::new(
            config.clone(),
            image,
            engine,
            GuestMemoryAtomic::new(mem.clone()),
        );
        let mut features = device.features();
        if kind == Device::NotNegotiated {
            features &= !(feature(VIRTIO_BLK_F_CTRL_VQ) | feature(VIRTIO_BLK_F_INLINE_ENCRYPTION));
        }
        device.acked_features(features);
        // The limits the device advertises (and BlockDevice enforces).
        let block = device.block_config();
        let mut device_id = [0u8; DEVICE_ID_BYTES];
        let serial = config.serial.as_bytes();
        device_id[..serial.len()].copy_from_slice(serial);
        let limits = Limits {
            max_data_bytes: u64::from(block.seg_max) * u64::from(block.size_max),
            max_discard_seg: block.max_discard_seg,
            max_discard_sectors: block.max_discard_sectors,
            device_id,
        };
        assert_eq!(block.capacity_sectors, CAPACITY);
        if kind != Device::NoEngine {
            let engine = device.engine();
            let program = |slot, key, unit, dun_bytes| {
                engine
                    .program(&KeyDesc::raw_aes_256_xts(slot, key, unit, dun_bytes), 0)
                    .expect("program");
            };
            program(0, &KEY0, 4096, 8);
            program(1, &KEY1, 512, 4);
            program(2, &KEY1, 4096, 8);
            engine
                .evict(&KeyDesc::raw_aes_256_xts(2, &[0; 64], 4096, 8), 0)
                .expect("evict");
        }
        Self {
            _dir: dir,
            path,
            device,
            mem,
            limits,
            refusals: RefusalLog::default(),
            crypto_negotiated: crypto_negotiated(features),
            kind,
        }
    }

    /// What the backend hands `request::serve` for a queue of `role`.
    fn context(&self, role: QueueRole) -> Context<'_> {
        Context {
            engine: self.device.engine(),
            image: self.device.image(),
            limits: &self.limits,
            queue: match role {
                QueueRole::Request(index) => index,
                QueueRole::Control => 1,
            },
            role,
            crypto_negotiated: self.crypto_negotiated,
            refusals: &self.refusals,
        }
    }

    fn image_bytes(&self) -> Vec<u8> {
        std::fs::read(&self.path).expect("read the image")
    }

    fn rejections(&self) -> u64 {
        self.device.engine().stats().rejections()
    }
}

/// A split virtqueue in guest memory, laid out by `MockSplitQueue`, and
/// the device's side of it (a `Queue` and the per-queue scratch buffers).
struct Ring<'m> {
    mock: MockSplitQueue<'m, GuestMemoryMmap>,
    queue: Queue,
    role: QueueRole,
    scratch: Scratch,
}

impl<'m> Ring<'m> {
    fn new(mem: &'m GuestMemoryMmap, base: u64, role: QueueRole) -> Self {
        let mock = MockSplitQueue::create(mem, GuestAddress(base), QUEUE_SIZE);
        let queue = mock.create_queue::<Queue>().expect("queue");
        Self {
            mock,
            queue,
            role,
            scratch: Scratch::default(),
        }
    }

    /// Writes `chain` to the descriptor table from index 0, makes head 0
    /// available, serves it as the backend does and returns the length the
    /// used ring reports.
    fn serve(&mut self, lab: &Lab, chain: &[Descriptor]) -> Result<u32, String> {
        for (index, descriptor) in chain.iter().enumerate() {
            let index = u16::try_from(index).map_err(|_| "chain longer than u16")?;
            self.mock
                .desc_table()
                .store(index, RawDescriptor::from(*descriptor))
                .map_err(|error| format!("row error: descriptor {index}: {error}"))?;
        }
        let avail = self.mock.avail();
        let avail_idx = avail.idx().load();
        avail
            .ring()
            .ref_at(usize::from(avail_idx % QUEUE_SIZE))
            .expect("avail slot")
            .store(0);
        avail.idx().store(avail_idx.wrapping_add(1));

        let chain = self
            .queue
            .pop_descriptor_chain(&lab.mem)
            .ok_or("the queue offered no chain")?;
        let head = chain.head_index();
        let context = lab.context(self.role);
        // The serve loop first looks at each request as the next one
        // (`prefetch_source`): every row goes through that too.
        if let Some(first) = chain.clone().next() {
            request::prefetch_source(&context, &lab.mem, first);
        }
        let used = request::serve(&context, &lab.mem, chain, &mut self.scratch);
        self.queue
            .add_used(&lab.mem, head, used)
            .map_err(|error| format!("add_used: {error}"))?;

        let used_ring = self.mock.used();
        let used_idx = used_ring.idx().load();
        if used_idx != self.queue.next_used() {
            return Err(format!("used index {used_idx} in guest memory"));
        }
        let element = used_ring
            .ring()
            .ref_at(usize::from(used_idx.wrapping_sub(1) % QUEUE_SIZE))
            .expect("used slot")
            .load();
        if element.id() != u32::from(head) {
            return Err(format!("used element for head {}", element.id()));
        }
        Ok(element.len())
    }
}

// ---------------------------------------------------------------------------
// Building chains as a guest driver would (or would not)
// ---------------------------------------------------------------------------

/// The guest side of one request: allocates and fills buffers, records
/// what the device may and must do to them.
struct Guest<'a> {
    mem: &'a GuestMemoryMmap,
    /// The image before the request.
    image: &'a [u8],
    device_id: [u8; DEVICE_ID_BYTES],
    seed: u64,
    next: u64,
    /// Where the status byte must land (the last device-writable byte of
    /// the chain); set by [`Guest::status`] or by hand.
    status_at: Option<u64>,
    /// Canary-filled buffers the device may write only as expected.
    writable: Vec<(u64, usize)>,
    /// Buffers the device must not change.
    readable: Vec<(u64, Vec<u8>)>,
    /// Where a successful request's answer goes, in order, and what it is.
    answer: Vec<(u64, usize)>,
    answer_bytes: Vec<u8>,
    /// What a successful request writes to the image.
    image_effects: Vec<(u64, Vec<u8>)>,
}

impl<'a> Guest<'a> {
    fn new(lab: &'a Lab, image: &'a [u8], seed: u64) -> Self {
        Self {
            mem: &lab.mem,
            image,
            device_id: lab.limits.device_id,
            seed,
            next: HEAP,
            status_at: None,
            writable: Vec::new(),
            readable: Vec::new(),
            answer: Vec::new(),
            answer_bytes: Vec::new(),
            image_effects: Vec::new(),
        }
    }

    fn alloc(&mut self, len: u64) -> u64 {
        let at = self.next;
        self.next = (at + len + 31) & !15;
        assert!(self.next <= HEAP_END, "row error: guest heap exhausted");
        at
    }

    fn fresh(&mut self, len: usize) -> Vec<u8> {
        self.seed = self.seed.wrapping_add(0x1234_5679);
        pattern(len, self.seed)
    }

    /// A device-readable buffer holding `bytes` at `addr`.
    fn put_at(&mut self, addr: u64, bytes: &[u8]) -> Descriptor {
        self.mem
            .write_slice(bytes, GuestAddress(addr))
            .expect("row error: readable buffer outside memory");
        self.readable.push((addr, bytes.to_vec()));
        Descriptor::new(addr, bytes.len() as u32, 0, 0)
    }

    fn bytes(&mut self, bytes: &[u8]) -> Descriptor {
        let at = self.alloc(bytes.len() as u64);
        self.put_at(at, bytes)
    }

    /// `len` bytes of device-readable data.
    fn data(&mut self, len: usize) -> Descriptor {
        let bytes = self.fresh(len);
        self.bytes(&bytes)
    }

    /// A device-writable buffer of `len` bytes at `addr`.
    fn buf_at(&mut self, addr: u64, len: usize) -> Descriptor {
        self.mem
            .write_slice(&vec![CANARY; len], GuestAddress(addr))
            .expect("row error: writable buffer outside memory");
        self.writable.push((addr, len));
        Descriptor::new(addr, len as u32, W, 0)
    }

    fn buf(&mut self, len: usize) -> Descriptor {
        let at = self.alloc(len as u64);
        self.buf_at(at, len)
    }

    /// The one-byte status buffer.
    fn status(&mut self) -> Descriptor {
        let status = self.buf(1);
        self.status_at = Some(status.addr().0);
        status
    }

    fn hdr(&mut self, request: u32, sector: u64) -> Descriptor {
        let header = OutHeader {
            request_type: RequestType::from_wire(request),
            ioprio: 0,
            sector,
        };
        self.bytes(&header.encode())
    }

    fn msg(&mut self, msg: CryptoMsg) -> Descriptor {
        self.bytes(&msg.encode())
    }

    /// The answer a successful request leaves in `pieces`.
    fn expect_answer(&mut self, pieces: &[(u64, usize)], bytes: Vec<u8>) {
        self.answer = pieces.to_vec();
        self.answer_bytes = bytes;
    }

    fn expect_image(&mut self, sector: u64, bytes: Vec<u8>) {
        if let Some(offset) = sector.checked_mul(SECTOR_SIZE) {
            self.image_effects.push((offset, bytes));
        }
    }

    /// The image's bytes at `sector` (empty when out of range).
    fn on_image(&self, sector: u64, len: usize) -> Vec<u8> {
        sector
            .checked_mul(SECTOR_SIZE)
            .and_then(|offset| {
                let start = usize::try_from(offset).ok()?;
                self.image.get(start..start.checked_add(len)?)
            })
            .map(<[u8]>::to_vec)
            .unwrap_or_default()
    }

    // -- requests, as their parts (unlinked): header, payload, status --

    fn request(&mut self, request: u32) -> Vec<Descriptor> {
        vec![self.hdr(request, 0), self.status()]
    }

    fn write(&mut self, sector: u64, len: usize) -> Vec<Descriptor> {
        let hdr = self.hdr(OUT, sector);
        let bytes = self.fresh(len);
        let data = self.bytes(&bytes);
        self.expect_image(sector, bytes);
        vec![hdr, data, self.status()]
    }

    fn read(&mut self, sector: u64, len: usize) -> Vec<Descriptor> {
        let hdr = self.hdr(IN, sector);
        let buf = self.buf(len);
        let expected = self.on_image(sector, len);
        self.expect_answer(&[(buf.addr().0, len)], expected);
        vec![hdr, buf, self.status()]
    }

    fn crypto_write(&mut self, sector: u64, slot: u32, dun: Dun, len: usize) -> Vec<Descriptor> {
        let msg = CryptoMsg {
            slot,
            reserved: 0,
            dun,
        };
        self.crypto_write_msg(sector, msg, len)
    }

    fn crypto_write_msg(&mut self, sector: u64, msg: CryptoMsg, len: usize) -> Vec<Descriptor> {
        let hdr = self.hdr(CRYPTO_OUT, sector);
        let msg_desc = self.msg(msg);
        let plain = self.fresh(len);
        let data = self.bytes(&plain);
        if let Some((key, unit)) = slot_key(msg.slot)
            && len.is_multiple_of(unit)
        {
            let mut cipher = plain;
            xts(key, unit, msg.dun.low_u128(), &mut cipher, true);
            self.expect_image(sector, cipher);
        }
        vec![hdr, msg_desc, data, self.status()]
    }

    fn crypto_read(&mut self, sector: u64, slot: u32, dun: Dun, len: usize) -> Vec<Descriptor> {
        let hdr = self.hdr(CRYPTO_IN, sector);
        let msg = self.msg(CryptoMsg {
            slot,
            reserved: 0,
            dun,
        });
        let buf = self.buf(len);
        let mut expected = self.on_image(sector, len);
        if let Some((key, unit)) = slot_key(slot)
            && expected.len() == len
            && len.is_multiple_of(unit)
        {
            xts(key, unit, dun.low_u128(), &mut expected, false);
            self.expect_answer(&[(buf.addr().0, len)], expected);
        }
        vec![hdr, msg, buf, self.status()]
    }

    /// DISCARD, WRITE_ZEROES (or another type) with these segments:
    /// (sector, num_sectors, flags).
    fn segments(&mut self, request: u32, segments: &[(u64, u32, u32)]) -> Vec<Descriptor> {
        let hdr = self.hdr(request, 0);
        let mut payload = Vec::new();
        for &(sector, num_sectors, flags) in segments {
            let segment = DiscardSegment {
                sector,
                num_sectors,
                flags,
            };
            payload.extend_from_slice(&segment.encode());
            if sector
                .checked_add(u64::from(num_sectors))
                .is_some_and(|end| end <= CAPACITY)
            {
                self.expect_image(sector, vec![0; num_sectors as usize * 512]);
            }
        }
        let segments = self.bytes(&payload);
        vec![hdr, segments, self.status()]
    }

    fn get_id(&mut self, len: usize) -> Vec<Descriptor> {
        let hdr = self.hdr(GET_ID, 0);
        let buf = self.buf(len);
        let id = self.device_id.to_vec();
        self.expect_answer(&[(buf.addr().0, id.len())], id);
        vec![hdr, buf, self.status()]
    }

    fn modes(&mut self, len: usize) -> Vec<Descriptor> {
        let hdr = self.hdr(GET_CRYPTO_MODES, 0);
        let buf = self.buf(len);
        let modes: Vec<u8> = ProfileName::Ufs
            .capabilities()
            .modes()
            .iter()
            .flat_map(|mode| mode.to_le_bytes())
            .collect();
        self.expect_answer(&[(buf.addr().0, modes.len())], modes);
        vec![hdr, buf, self.status()]
    }

    /// KEYSLOT_PROGRAM of a valid key_desc for `slot`, edited by `edit`.
    fn program(&mut self, slot: u32, edit: fn(&mut KeyDesc)) -> Vec<Descriptor> {
        self.key_command(PROGRAM, slot, edit)
    }

    /// A key command carrying a valid key_desc for `slot`, edited by `edit`.
    fn key_command(&mut self, request: u32, slot: u32, edit: fn(&mut KeyDesc)) -> Vec<Descriptor> {
        let mut desc = KeyDesc::raw_aes_256_xts(slot, &KEY_NEW, 4096, 8);
        edit(&mut desc);
        let hdr = self.hdr(request, 0);
        let payload = self.bytes(&desc.encode());
        vec![hdr, payload, self.status()]
    }

    fn evict(&mut self, slot: u32) -> Vec<Descriptor> {
        let desc = KeyDesc::raw_aes_256_xts(slot, &[0; 64], 4096, 8);
        let hdr = self.hdr(EVICT, 0);
        let payload = self.bytes(&desc.encode());
        vec![hdr, payload, self.status()]
    }

    /// A hardware-wrapped key command (32, 34, 35) whose key_blob holds
    /// `key`, with an answer buffer of `answer` bytes.
    fn key_blob_command(&mut self, request: u32, key: &[u8], answer: usize) -> Vec<Descriptor> {
        let blob = KeyBlob::new(key).expect("row error: the key fits a key_blob");
        let hdr = self.hdr(request, 0);
        let payload = self.bytes(&blob.encode());
        vec![hdr, payload, self.buf(answer), self.status()]
    }

    /// A hardware-wrapped key command (32..35) with its payload and answer.
    fn wrapped_key(&mut self, request: u32, payload: bool, answer: usize) -> Vec<Descriptor> {
        let mut parts = vec![self.hdr(request, 0)];
        if payload {
            parts.push(self.data(KEY_BLOB_SIZE));
        }
        parts.push(self.buf(answer));
        parts.push(self.status());
        parts
    }

    // -- moving buffers around --

    /// The same buffer at other places (`(addr, len)`, lengths adding up to
    /// `d`'s): its bytes copied when device-readable, canary-filled (and
    /// the expected answer moved with it) when device-writable.
    fn scatter_at(&mut self, d: Descriptor, places: &[(u64, u32)]) -> Vec<Descriptor> {
        let total: u64 = places.iter().map(|&(_, len)| u64::from(len)).sum();
        assert_eq!(total, u64::from(d.len()), "row error: scatter lengths");
        if d.is_write_only() {
            let pieces: Vec<Descriptor> = places
                .iter()
                .map(|&(addr, len)| self.buf_at(addr, len as usize))
                .collect();
            let old = (d.addr().0, d.len() as usize);
            if let Some(index) = self.answer.iter().position(|piece| *piece == old) {
                let moved = places.iter().map(|&(addr, len)| (addr, len as usize));
                self.answer.splice(index..=index, moved);
            }
            pieces
        } else {
            let mut bytes = vec![0u8; d.len() as usize];
            self.mem
                .read_slice(&mut bytes, d.addr())
                .expect("row error: scatter source");
            let mut at = 0;
            places
                .iter()
                .map(|&(addr, len)| {
                    let piece = self.put_at(addr, &bytes[at..at + len as usize]);
                    at += len as usize;
                    piece
                })
                .collect()
        }
    }

    /// `d` in pieces of `sizes` (and the rest), each at its own odd,
    /// non-contiguous address.
    fn scatter(&mut self, d: Descriptor, sizes: &[u32]) -> Vec<Descriptor> {
        let mut sizes = sizes.to_vec();
        let sum: u32 = sizes.iter().sum();
        if sum < d.len() {
            sizes.push(d.len() - sum);
        }
        let places: Vec<(u64, u32)> = sizes
            .iter()
            .map(|&len| (self.alloc(u64::from(len) + 64) + 3, len))
            .collect();
        self.scatter_at(d, &places)
    }

    /// The device-readable `parts`, concatenated into one buffer.
    fn merge(&mut self, parts: &[Descriptor]) -> Descriptor {
        let mut bytes = Vec::new();
        for part in parts {
            let mut piece = vec![0u8; part.len() as usize];
            self.mem
                .read_slice(&mut piece, part.addr())
                .expect("row error: merge source");
            bytes.extend(piece);
        }
        self.bytes(&bytes)
    }

    /// An indirect table holding `entries` exactly as given, at `addr`;
    /// entries that do not fit in guest memory are left out.
    fn table_at(&mut self, addr: u64, entries: &[Descriptor]) -> Descriptor {
        for (index, entry) in entries.iter().enumerate() {
            let at = GuestAddress(addr + 16 * index as u64);
            if self.mem.write_obj(*entry, at).is_ok() {
                self.readable
                    .push((at.0, RawDescriptor::from(*entry).as_slice().to_vec()));
            }
        }
        Descriptor::new(addr, 16 * entries.len() as u32, INDIRECT, 0)
    }

    /// An indirect table holding `entries` as given (no linking).
    fn table(&mut self, entries: &[Descriptor]) -> Descriptor {
        let at = self.alloc(16 * entries.len() as u64);
        self.table_at(at, entries)
    }

    /// An indirect table holding `parts`, linked in order.
    fn indirect(&mut self, parts: Vec<Descriptor>) -> Descriptor {
        self.table(&link(parts))
    }
}

/// Builder-style edits of a descriptor.
trait Edit: Sized {
    fn with_len(self, len: u32) -> Descriptor;
    fn with_addr(self, addr: u64) -> Descriptor;
    fn plus(self, flags: u16) -> Descriptor;
    fn minus(self, flags: u16) -> Descriptor;
    /// Sets NEXT and the next index.
    fn next_to(self, next: u16) -> Descriptor;
}

impl Edit for Descriptor {
    fn with_len(self, len: u32) -> Descriptor {
        Descriptor::new(self.addr().0, len, self.flags(), self.next())
    }
    fn with_addr(self, addr: u64) -> Descriptor {
        Descriptor::new(addr, self.len(), self.flags(), self.next())
    }
    fn plus(self, flags: u16) -> Descriptor {
        Descriptor::new(self.addr().0, self.len(), self.flags() | flags, self.next())
    }
    fn minus(self, flags: u16) -> Descriptor {
        Descriptor::new(
            self.addr().0,
            self.len(),
            self.flags() & !flags,
            self.next(),
        )
    }
    fn next_to(self, next: u16) -> Descriptor {
        Descriptor::new(self.addr().0, self.len(), self.flags() | NEXT, next)
    }
}

/// The parts as one chain in table order: each one's NEXT to the
/// following, the last without NEXT.
fn link(parts: Vec<Descriptor>) -> Vec<Descriptor> {
    let count = parts.len();
    parts
        .into_iter()
        .enumerate()
        .map(|(index, d)| {
            if index + 1 < count {
                d.next_to(index as u16 + 1)
            } else {
                Descriptor::new(d.addr().0, d.len(), d.flags() & !NEXT, 0)
            }
        })
        .collect()
}

/// `parts` with part `index` edited.
fn at(
    mut parts: Vec<Descriptor>,
    index: usize,
    edit: impl FnOnce(Descriptor) -> Descriptor,
) -> Vec<Descriptor> {
    parts[index] = edit(parts[index]);
    parts
}

/// `parts` with part `index` replaced by several.
fn splice(
    mut parts: Vec<Descriptor>,
    index: usize,
    with: impl FnOnce(Descriptor) -> Vec<Descriptor>,
) -> Vec<Descriptor> {
    let pieces = with(parts[index]);
    parts.splice(index..=index, pieces);
    parts
}

/// `d` cut into contiguous pieces of `sizes` and the rest.
fn split(d: Descriptor, sizes: &[u32]) -> Vec<Descriptor> {
    let mut pieces = Vec::new();
    let mut offset = 0;
    for &size in sizes {
        pieces.push(Descriptor::new(
            d.addr().0 + u64::from(offset),
            size,
            d.flags(),
            0,
        ));
        offset += size;
    }
    if offset < d.len() {
        pieces.push(Descriptor::new(
            d.addr().0 + u64::from(offset),
            d.len() - offset,
            d.flags(),
            0,
        ));
    }
    pieces
}

/// A zero-length descriptor.
fn empty(flags: u16) -> Descriptor {
    Descriptor::new(HEAP, 0, flags, 0)
}

fn dun(value: u64) -> Dun {
    Dun::from_u64(value)
}

fn keep(_: &mut KeyDesc) {}

// ---------------------------------------------------------------------------
// The matrix
// ---------------------------------------------------------------------------

/// What a row must get back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    Status(Status),
    /// No device-writable byte: nothing written, used length 0.
    NoStatus,
}

const OK: Expect = Expect::Status(Status::Ok);
const IOERR: Expect = Expect::Status(Status::IoErr);
const UNSUPP: Expect = Expect::Status(Status::Unsupp);
const NONE: Expect = Expect::NoStatus;

type Build = fn(&mut Guest<'_>) -> Vec<Descriptor>;

struct Row {
    name: &'static str,
    on: On,
    build: Build,
    expect: Expect,
    used: u32,
}

fn row(name: &'static str, on: On, build: Build, expect: Expect, used: u32) -> Row {
    Row {
        name,
        on,
        build,
        expect,
        used,
    }
}

/// Largest transfer the device takes: seg_max (126 for a 128-entry queue)
/// x size_max (64 KiB); 8 MiB is more.
const TOO_LARGE: usize = 8 << 20;

/// One row per case: name, where, chain, status, used length.
#[rustfmt::skip]
fn rows() -> Vec<Row> {
    vec![
        // -- baselines: the harness's view of a valid request of each kind --
        row("valid write", Q, |g| link(g.write(8, 4096)), OK, 1),
        row("valid read", Q, |g| link(g.read(8, 4096)), OK, 4097),
        row("valid crypto-out (slot 0, 2 units)", Q, |g| link(g.crypto_write(8, 0, dun(40), 8192)), OK, 1),
        row("valid crypto-in (slot 0, 2 units)", Q, |g| link(g.crypto_read(8, 0, dun(40), 8192)), OK, 8193),
        row("valid crypto-in (slot 1, 512-byte units, odd sector)", Q, |g| link(g.crypto_read(3, 1, dun(9), 1536)), OK, 1537),
        row("valid write of the last sector", Q, |g| link(g.write(CAPACITY - 1, 512)), OK, 1),
        row("valid read of the last sector", Q, |g| link(g.read(CAPACITY - 1, 512)), OK, 513),

        // -- no device-writable byte --
        row("no status descriptor", Q, |g| { let p = g.write(0, 4096); link(p[..2].to_vec()) }, NONE, 0),
        row("header only", Q, |g| vec![g.hdr(OUT, 0)], NONE, 0),
        row("read-only status on a write", Q, |g| link(at(g.write(0, 4096), 2, |d| d.minus(W))), NONE, 0),
        row("unknown type without a status byte", Q, |g| link(vec![g.hdr(99, 0), g.data(512)]), NONE, 0),

        // -- readable/writable order and direction --
        row("read-only status on a read: readable after writable, status in the data's last byte", Q, |g| { let p = g.read(0, 4096); g.status_at = Some(p[1].addr().0 + 4095); link(at(p, 2, |d| d.minus(W))) }, IOERR, 1),
        row("write-only header (no readable byte)", Q, |g| { let p = g.write(0, 4096); link(vec![p[0].plus(W), p[2]]) }, IOERR, 1),
        row("write-only header before readable data", Q, |g| link(at(g.write(0, 4096), 0, |d| d.plus(W))), IOERR, 1),
        row("readable data after the status", Q, |g| { let p = g.write(0, 4096); link(vec![p[0], p[2], p[1]]) }, IOERR, 1),
        row("write whose data is device-writable", Q, |g| link(at(g.write(0, 4096), 1, |d| d.plus(W))), IOERR, 1),
        row("read whose buffer is device-readable", Q, |g| link(at(g.read(0, 4096), 1, |d| d.minus(W))), IOERR, 1),

        // -- the header --
        row("short header: 8 bytes, nothing else readable", Q, |g| { let p = g.write(0, 4096); link(vec![p[0].with_len(8), p[2]]) }, IOERR, 1),
        row("short header: 15 bytes, nothing else readable", Q, |g| { let p = g.write(0, 4096); link(vec![p[0].with_len(15), p[2]]) }, IOERR, 1),
        row("header split 8+4 (12 bytes), nothing else readable", Q, |g| { let p = g.write(0, 4096); link(vec![p[0].with_len(8), p[0].with_len(4), p[2]]) }, IOERR, 1),
        row("12-byte header before the data (misframed: data not whole sectors)", Q, |g| link(at(g.write(0, 4096), 0, |d| d.with_len(12))), IOERR, 1),
        row("valid: header split 8+8", Q, |g| link(splice(g.write(0, 4096), 0, |d| split(d, &[8]))), OK, 1),
        row("valid: header split 1+15", Q, |g| link(splice(g.write(0, 4096), 0, |d| split(d, &[1]))), OK, 1),
        row("valid: header in 16 one-byte descriptors", Q, |g| link(splice(g.write(0, 4096), 0, |d| split(d, &[1; 15]))), OK, 1),
        row("valid: header tail and data in one descriptor", Q, |g| { let p = g.write(0, 4096); let m = g.merge(&p[..2]); link([split(m, &[8]), vec![p[2]]].concat()) }, OK, 1),
        row("valid: header, crypto_msg and data in one descriptor", Q, |g| { let p = g.crypto_write(8, 0, dun(3), 4096); link(vec![g.merge(&p[..3]), p[3]]) }, OK, 1),
        row("valid: crypto_msg split 20+20", Q, |g| link(splice(g.crypto_write(8, 0, dun(3), 4096), 1, |d| split(d, &[20]))), OK, 1),
        row("valid: read with data and status in one 4097-byte descriptor", Q, |g| { let h = g.hdr(IN, 2); let b = g.buf(4097); g.status_at = Some(b.addr().0 + 4096); let e = g.on_image(2, 4096); g.expect_answer(&[(b.addr().0, 4096)], e); link(vec![h, b]) }, OK, 4097),

        // -- zero-length descriptors --
        row("zero-length header, nothing else readable", Q, |g| { let p = g.write(0, 4096); link(vec![p[0].with_len(0), p[2]]) }, IOERR, 1),
        row("zero-length data on a write", Q, |g| link(at(g.write(0, 4096), 1, |d| d.with_len(0))), IOERR, 1),
        row("zero-length read buffer", Q, |g| link(at(g.read(0, 4096), 1, |d| d.with_len(0))), IOERR, 1),
        row("zero-length status on a write (no writable byte)", Q, |g| link(at(g.write(0, 4096), 2, |d| d.with_len(0))), NONE, 0),
        row("zero-length status on a read: status in the data's last byte, 4095-byte answer", Q, |g| { let p = g.read(0, 4096); g.status_at = Some(p[1].addr().0 + 4095); link(at(p, 2, |d| d.with_len(0))) }, IOERR, 1),
        row("valid: zero-length descriptor before the header", Q, |g| link([vec![empty(0)], g.write(0, 4096)].concat()), OK, 1),
        row("valid: zero-length descriptor among the data", Q, |g| link(splice(g.write(0, 4096), 1, |d| { let s = split(d, &[2048]); vec![s[0], empty(0), s[1]] })), OK, 1),
        row("valid: zero-length writable descriptor before the status", Q, |g| link(splice(g.read(0, 4096), 2, |d| vec![empty(W), d])), OK, 4097),
        row("valid: zero-length descriptor outside guest memory is ignored", Q, |g| link(splice(g.write(0, 4096), 1, |d| vec![empty(0).with_addr(OUTSIDE), d])), OK, 1),
        row("valid: zero-length readable descriptor after the status is ignored", Q, |g| link([g.write(0, 4096), vec![empty(0)]].concat()), OK, 1),

        // -- descriptors outside guest memory --
        row("header outside guest memory", Q, |g| link(at(g.write(0, 4096), 0, |d| d.with_addr(OUTSIDE))), IOERR, 1),
        row("data outside guest memory", Q, |g| link(at(g.write(0, 4096), 1, |d| d.with_addr(OUTSIDE))), IOERR, 1),
        row("data crossing the end of guest memory", Q, |g| link(at(g.write(0, 4096), 1, |d| d.with_addr(MEMORY_END - 100))), IOERR, 1),
        row("data whose end overflows u64", Q, |g| link(at(g.write(0, 4096), 1, |d| d.with_addr(u64::MAX - 100))), IOERR, 1),
        row("data descriptor of 2 GiB (more than guest memory)", Q, |g| link(at(g.write(0, 4096), 1, |d| d.with_len(1 << 31))), IOERR, 1),
        row("data descriptor of u32::MAX bytes (chain over 4 GiB: ends before the status)", Q, |g| link(at(g.write(0, 4096), 1, |d| d.with_len(u32::MAX))), NONE, 0),
        row("read buffer outside guest memory", Q, |g| link(at(g.read(0, 4096), 1, |d| d.with_addr(OUTSIDE))), IOERR, 1),
        row("crypto-in buffer crossing the end of guest memory", Q, |g| link(at(g.crypto_read(0, 0, dun(0), 4096), 2, |d| d.with_addr(MEMORY_END - 2048))), IOERR, 1),
        row("status outside guest memory (no writable byte left)", Q, |g| link(at(g.write(0, 4096), 2, |d| d.with_addr(OUTSIDE))), NONE, 0),
        row("status outside guest memory on a read: the status lands in the data's last byte", Q, |g| { let p = g.read(0, 4096); g.status_at = Some(p[1].addr().0 + 4095); link(at(p, 2, |d| d.with_addr(OUTSIDE))) }, IOERR, 1),

        // -- chains that loop or run off the table --
        row("chain looping back to the header", Q, |g| { let p = g.write(0, 4096); vec![p[0].next_to(1), p[1].next_to(2), p[2].next_to(0)] }, IOERR, 1),
        row("status descriptor looping to itself", Q, |g| { let p = g.write(0, 4096); vec![p[0].next_to(1), p[1].next_to(2), p[2].next_to(2)] }, IOERR, 1),
        row("header looping to itself (no writable byte)", Q, |g| { let p = g.write(0, 4096); vec![p[0].next_to(0), p[1], p[2]] }, NONE, 0),
        row("status's next past the queue size", Q, |g| { let p = g.write(0, 4096); vec![p[0].next_to(1), p[1].next_to(2), p[2].next_to(60000)] }, IOERR, 1),
        row("status's next = queue size", Q, |g| { let p = g.write(0, 4096); vec![p[0].next_to(1), p[1].next_to(2), p[2].next_to(QUEUE_SIZE)] }, IOERR, 1),
        row("header's next past the queue size (no writable byte)", Q, |g| { let p = g.write(0, 4096); vec![p[0].next_to(200), p[1], p[2]] }, NONE, 0),
        row("chain longer than 4 GiB (ends before the status)", Q, |g| { let p = g.write(0, 4096); link(vec![p[0], Descriptor::new(HEAP, 0xffff_f000, 0, 0), Descriptor::new(HEAP, 0x2000, 0, 0), p[2]]) }, NONE, 0),

        // -- indirect tables --
        row("valid: a whole write in an indirect table", Q, |g| { let p = g.write(0, 4096); vec![g.indirect(p)] }, OK, 1),
        row("valid: a whole read in an indirect table", Q, |g| { let p = g.read(0, 4096); vec![g.indirect(p)] }, OK, 4097),
        row("valid: header direct, the rest in an indirect table", Q, |g| { let p = g.crypto_write(8, 0, dun(3), 8192); let t = g.indirect(p[1..].to_vec()); link(vec![p[0], t]) }, OK, 1),
        row("valid: indirect descriptor flagged WRITE (ignored)", Q, |g| { let p = g.write(0, 4096); vec![g.indirect(p).plus(W)] }, OK, 1),
        row("valid: indirect descriptor flagged NEXT (ignored)", Q, |g| { let p = g.write(0, 4096); vec![g.indirect(p).next_to(1), g.data(512)] }, OK, 1),
        row("indirect flagged NEXT to a direct status (NEXT ignored: no status byte)", Q, |g| { let p = g.write(0, 4096); vec![g.indirect(p[..2].to_vec()).next_to(1), p[2]] }, NONE, 0),
        row("indirect table length 20 (not a multiple of 16)", Q, |g| { let p = g.write(0, 4096); vec![g.indirect(p).with_len(20)] }, NONE, 0),
        row("indirect table length 8", Q, |g| { let p = g.write(0, 4096); vec![g.indirect(p).with_len(8)] }, NONE, 0),
        row("indirect table length 0", Q, |g| { let p = g.write(0, 4096); vec![g.indirect(p).with_len(0)] }, NONE, 0),
        row("indirect table after a direct header, length 20", Q, |g| { let p = g.write(0, 4096); let t = g.indirect(p[1..].to_vec()).with_len(20); link(vec![p[0], t]) }, NONE, 0),
        row("indirect table outside guest memory", Q, |g| { let p = g.write(0, 4096); vec![g.indirect(p).with_addr(OUTSIDE)] }, NONE, 0),
        row("indirect table crossing the end of guest memory (status entry outside)", Q, |g| { let p = g.write(0, 4096); vec![g.table_at(MEMORY_END - 32, &link(p))] }, NONE, 0),
        row("indirect table of 65536 descriptors (more than u16)", Q, |g| { let p = g.write(0, 4096); vec![g.indirect(p).with_len(16 << 16)] }, NONE, 0),
        row("nested indirect table as the first entry", Q, |g| { let p = g.write(0, 4096); let inner = g.indirect(p); vec![g.indirect(vec![inner])] }, NONE, 0),
        row("nested indirect table after the status", Q, |g| { let q = g.write(16, 512); let inner = g.indirect(q); let p = g.write(0, 4096); vec![g.indirect([p, vec![inner]].concat())] }, IOERR, 1),
        row("indirect entry's next past the table", Q, |g| { let p = g.write(0, 4096); let l = link(p); vec![g.table(&[l[0], l[1], l[2].next_to(5)])] }, IOERR, 1),
        row("indirect table looping back to its first entry", Q, |g| { let p = g.write(0, 4096); vec![g.table(&[p[0].next_to(1), p[1].next_to(2), p[2].next_to(0)])] }, IOERR, 1),
        row("indirect entry outside guest memory", Q, |g| { let p = at(g.write(0, 4096), 1, |d| d.with_addr(OUTSIDE)); vec![g.indirect(p)] }, IOERR, 1),
        row("indirect table with readable data after the status", Q, |g| { let p = g.write(0, 4096); vec![g.indirect(vec![p[0], p[2], p[1]])] }, IOERR, 1),
        row("valid: indirect table of 300 descriptors (more than the queue and seg_max; bytes within limits)", Q, |g| { let p = g.write(0, 298 * 512); let t = g.indirect([vec![p[0]], split(p[1], &[512; 297]), vec![p[2]]].concat()); vec![t] }, OK, 1),

        // -- data units and buffers split across descriptors (valid) --
        row("valid: crypto-out units over 3 scattered descriptors", Q, |g| link(splice(g.crypto_write(8, 0, dun(9), 8192), 2, |d| g.scatter(d, &[1000, 3000]))), OK, 1),
        row("valid: crypto-in units over 3 scattered descriptors", Q, |g| link(splice(g.crypto_read(8, 0, dun(9), 8192), 2, |d| g.scatter(d, &[1000, 3000]))), OK, 8193),
        row("valid: crypto-out of 512-byte units in 7 odd pieces (slot 1)", Q, |g| link(splice(g.crypto_write(5, 1, dun(77), 2048), 2, |d| g.scatter(d, &[1, 100, 411, 511, 513, 300]))), OK, 1),
        row("valid: crypto-in of 512-byte units in 7 odd pieces (slot 1)", Q, |g| link(splice(g.crypto_read(5, 1, dun(77), 2048), 2, |d| g.scatter(d, &[1, 100, 411, 511, 513, 300]))), OK, 2049),
        row("valid: crypto-out unit across the guest memory region boundary", Q, |g| link(splice(g.crypto_write(8, 0, dun(1), 8192), 2, |d| g.scatter_at(d, &[(REGION - 5000, 8192)]))), OK, 1),
        row("valid: crypto-in unit across the guest memory region boundary", Q, |g| link(splice(g.crypto_read(8, 0, dun(1), 8192), 2, |d| g.scatter_at(d, &[(REGION - 5000, 8192)]))), OK, 8193),
        row("valid: read in pieces, one across the region boundary", Q, |g| link(splice(g.read(8, 8192), 1, |d| g.scatter_at(d, &[(REGION - 7000, 1000), (REGION - 300, 5000), (REGION + 0x8000, 2192)]))), OK, 8193),
        row("valid: write of 100 descriptors of 512 bytes", Q, |g| link(splice(g.write(0, 100 * 512), 1, |d| g.scatter(d, &[512; 99]))), OK, 1),

        // -- plain IN/OUT lengths and sectors --
        row("write of 100 bytes", Q, |g| link(g.write(0, 100)), IOERR, 1),
        row("write of 4097 bytes", Q, |g| link(g.write(0, 4097)), IOERR, 1),
        row("read of 100 bytes", Q, |g| link(g.read(0, 100)), IOERR, 1),
        row("read without a buffer", Q, |g| { let p = g.read(0, 512); link(vec![p[0], p[2]]) }, IOERR, 1),
        row("write at the capacity", Q, |g| link(g.write(CAPACITY, 512)), IOERR, 1),
        row("write straddling the end of the disk", Q, |g| link(g.write(CAPACITY - 1, 1024)), IOERR, 1),
        row("read at the capacity", Q, |g| link(g.read(CAPACITY, 512)), IOERR, 1),
        row("read at sector u64::MAX", Q, |g| link(g.read(u64::MAX, 512)), IOERR, 1),
        row("write whose byte end overflows u64", Q, |g| link(g.write(u64::MAX / 512, 4096)), IOERR, 1),
        row("write larger than seg_max x size_max", Q, |g| link(g.write(0, TOO_LARGE)), IOERR, 1),
        row("read larger than seg_max x size_max", Q, |g| link(g.read(0, TOO_LARGE)), IOERR, 1),

        // -- CRYPTO_IN/OUT: slots --
        row("crypto-out to a never-programmed slot", Q, |g| link(g.crypto_write(0, 3, dun(0), 4096)), IOERR, 1),
        row("crypto-in from a never-programmed slot", Q, |g| link(g.crypto_read(0, 3, dun(0), 4096)), IOERR, 1),
        row("crypto-out to an evicted slot", Q, |g| link(g.crypto_write(0, 2, dun(0), 4096)), IOERR, 1),
        row("crypto-in from an evicted slot", Q, |g| link(g.crypto_read(0, 2, dun(0), 4096)), IOERR, 1),
        row("crypto-out to slot 32 (one past the last)", Q, |g| link(g.crypto_write(0, 32, dun(0), 4096)), IOERR, 1),
        row("crypto-in from slot u32::MAX", Q, |g| link(g.crypto_read(0, u32::MAX, dun(0), 4096)), IOERR, 1),

        // -- CRYPTO_IN/OUT: alignment and length for the slot's data unit --
        row("crypto-out start not on a 4096-byte unit (sector 1)", Q, |g| link(g.crypto_write(1, 0, dun(0), 4096)), IOERR, 1),
        row("crypto-in start not on a 4096-byte unit (sector 7)", Q, |g| link(g.crypto_read(7, 0, dun(0), 4096)), IOERR, 1),
        row("crypto-out of one sector on a 4096-byte slot", Q, |g| link(g.crypto_write(0, 0, dun(0), 512)), IOERR, 1),
        row("crypto-in of 4608 bytes on a 4096-byte slot", Q, |g| link(g.crypto_read(0, 0, dun(0), 4608)), IOERR, 1),
        row("crypto-out of 100 bytes", Q, |g| link(g.crypto_write(0, 1, dun(0), 100)), IOERR, 1),
        row("crypto-in of 0 bytes", Q, |g| { let p = g.crypto_read(0, 0, dun(0), 512); link(vec![p[0], p[1], p[3]]) }, IOERR, 1),
        row("crypto-out with no data", Q, |g| { let p = g.crypto_write(0, 0, dun(0), 512); link(vec![p[0], p[1], p[3]]) }, IOERR, 1),
        row("crypto-out beyond the capacity", Q, |g| link(g.crypto_write(CAPACITY - 8, 0, dun(0), 8192)), IOERR, 1),
        row("crypto-in at sector u64::MAX", Q, |g| link(g.crypto_read(u64::MAX, 1, dun(0), 512)), IOERR, 1),
        row("crypto-out larger than seg_max x size_max", Q, |g| link(g.crypto_write(0, 0, dun(0), TOO_LARGE)), IOERR, 1),

        // -- CRYPTO_IN/OUT: crypto_msg --
        row("crypto-in without a crypto_msg", Q, |g| { let p = g.crypto_read(0, 0, dun(0), 4096); link(vec![p[0], p[2], p[3]]) }, IOERR, 1),
        row("crypto-in with a 39-byte crypto_msg", Q, |g| link(at(g.crypto_read(0, 0, dun(0), 4096), 1, |d| d.with_len(39))), IOERR, 1),
        row("crypto-out with a 20-byte crypto_msg before the data", Q, |g| link(at(g.crypto_write(0, 0, dun(0), 4096), 1, |d| d.with_len(20))), IOERR, 1),
        row("crypto-in with its crypto_msg device-writable", Q, |g| link(at(g.crypto_read(0, 0, dun(0), 4096), 1, |d| d.plus(W))), IOERR, 1),
        row("valid: crypto-out with the reserved word set (ignored)", Q, |g| link(g.crypto_write_msg(8, CryptoMsg { slot: 0, reserved: u32::MAX, dun: dun(6) }, 4096)), OK, 1),

        // -- CRYPTO_IN/OUT: DUNs --
        row("DUN word 1 set on an 8-byte slot", Q, |g| link(g.crypto_read(0, 0, Dun([0, 1, 0, 0]), 4096)), IOERR, 1),
        row("DUN word 2 set on an 8-byte slot", Q, |g| link(g.crypto_write(0, 0, Dun([0, 0, 1, 0]), 4096)), IOERR, 1),
        row("DUN word 3's top bit set", Q, |g| link(g.crypto_read(0, 0, Dun([5, 0, 0, 1 << 63]), 4096)), IOERR, 1),
        row("DUN 2^32 on a 4-byte slot", Q, |g| link(g.crypto_write(0, 1, dun(1 << 32), 512)), IOERR, 1),
        row("DUN overflow at the last unit: u64::MAX and 2 units on an 8-byte slot", Q, |g| link(g.crypto_write(0, 0, dun(u64::MAX), 8192)), IOERR, 1),
        row("DUN overflow at the last unit: 2^32 - 2 and 3 units on a 4-byte slot", Q, |g| link(g.crypto_read(0, 1, dun(0xffff_fffe), 1536)), IOERR, 1),
        row("256-bit DUN of all ones, 2 units", Q, |g| link(g.crypto_read(0, 0, Dun([u64::MAX; 4]), 8192)), IOERR, 1),
        row("valid: last unit's DUN exactly u64::MAX", Q, |g| link(g.crypto_write(8, 0, dun(u64::MAX - 1), 8192)), OK, 1),
        row("valid: crypto-in at DUN u64::MAX, one unit", Q, |g| link(g.crypto_read(8, 0, dun(u64::MAX), 4096)), OK, 4097),
        row("valid: 4-byte slot, DUN 2^32 - 1, one unit", Q, |g| link(g.crypto_write(9, 1, dun(0xffff_ffff), 512)), OK, 1),

        // -- DISCARD / WRITE_ZEROES --
        row("discard with no segment", Q, |g| link(g.segments(DISCARD, &[])), IOERR, 1),
        row("write-zeroes with no segment", Q, |g| link(g.segments(WRITE_ZEROES, &[])), IOERR, 1),
        row("discard with 33 segments (max 32)", Q, |g| link(g.segments(DISCARD, &[(0, 8, 0); 33])), IOERR, 1),
        row("write-zeroes with 33 segments (max 32)", Q, |g| link(g.segments(WRITE_ZEROES, &[(0, 8, 0); 33])), IOERR, 1),
        row("discard payload of 24 bytes", Q, |g| link(at(g.segments(DISCARD, &[(0, 8, 0), (8, 8, 0)]), 1, |d| d.with_len(24))), IOERR, 1),
        row("write-zeroes payload of 8 bytes", Q, |g| link(at(g.segments(WRITE_ZEROES, &[(0, 8, 0)]), 1, |d| d.with_len(8))), IOERR, 1),
        row("discard segments device-writable", Q, |g| link(at(g.segments(DISCARD, &[(0, 8, 0)]), 1, |d| d.plus(W))), IOERR, 1),
        row("discard with the unmap flag", Q, |g| link(g.segments(DISCARD, &[(0, 8, UNMAP)])), UNSUPP, 1),
        row("discard with reserved flag bit 1", Q, |g| link(g.segments(DISCARD, &[(0, 8, 2)])), UNSUPP, 1),
        row("write-zeroes with reserved flag bit 1", Q, |g| link(g.segments(WRITE_ZEROES, &[(0, 8, 2)])), UNSUPP, 1),
        row("write-zeroes with unmap and reserved bit 31", Q, |g| link(g.segments(WRITE_ZEROES, &[(0, 8, UNMAP | 1 << 31)])), UNSUPP, 1),
        row("write-zeroes: reserved flag on the last of 3 segments", Q, |g| link(g.segments(WRITE_ZEROES, &[(0, 8, 0), (16, 8, UNMAP), (32, 8, 4)])), UNSUPP, 1),
        row("discard beyond the capacity", Q, |g| link(g.segments(DISCARD, &[(CAPACITY - 1, 8, 0)])), IOERR, 1),
        row("write-zeroes beyond the capacity", Q, |g| link(g.segments(WRITE_ZEROES, &[(CAPACITY, 1, 0)])), IOERR, 1),
        row("discard at sector u64::MAX", Q, |g| link(g.segments(DISCARD, &[(u64::MAX, 1, 0)])), IOERR, 1),
        row("discard whose byte end overflows u64", Q, |g| link(g.segments(DISCARD, &[(u64::MAX / 512, 8, 0)])), IOERR, 1),
        row("write-zeroes of u32::MAX sectors (over max_write_zeroes_sectors)", Q, |g| link(g.segments(WRITE_ZEROES, &[(0, u32::MAX, 0)])), IOERR, 1),
        row("discard: second of two segments beyond the capacity", Q, |g| link(g.segments(DISCARD, &[(0, 8, 0), (CAPACITY, 8, 0)])), IOERR, 1),
        row("valid: discard of two segments", Q, |g| link(g.segments(DISCARD, &[(0, 8, 0), (64, 16, 0)])), OK, 1),
        row("valid: write-zeroes with unmap", Q, |g| link(g.segments(WRITE_ZEROES, &[(8, 8, UNMAP)])), OK, 1),
        row("valid: write-zeroes of 32 segments", Q, |g| link(g.segments(WRITE_ZEROES, &[(40, 1, 0); 32])), OK, 1),
        row("valid: discard of 0 sectors", Q, |g| link(g.segments(DISCARD, &[(0, 0, 0)])), OK, 1),
        row("valid: write-zeroes segment split 8+8 over two descriptors", Q, |g| link(splice(g.segments(WRITE_ZEROES, &[(100, 4, 0)]), 1, |d| split(d, &[8]))), OK, 1),

        // -- request types --
        row("unknown type 2", Q, |g| link(g.request(2)), UNSUPP, 1),
        row("unknown type 3", Q, |g| link(g.request(3)), UNSUPP, 1),
        row("GET_LIFETIME (10), not offered", Q, |g| { let h = g.hdr(10, 0); let b = g.buf(12); link(vec![h, b, g.status()]) }, UNSUPP, 1),
        row("SECURE_ERASE (14), not offered", Q, |g| link(g.segments(14, &[(0, 8, 0)])), UNSUPP, 1),
        row("ZONE_APPEND (15), not offered", Q, |g| link(vec![g.hdr(15, 0), g.data(4096), g.status()]), UNSUPP, 1),
        row("ZONE_RESET_ALL (26), not offered", Q, |g| link(g.request(26)), UNSUPP, 1),
        row("type 36, just past the crypto types", Q, |g| link(g.request(36)), UNSUPP, 1),
        row("legacy barrier bit with OUT (0x80000001)", Q, |g| link(vec![g.hdr(0x8000_0001, 0), g.data(4096), g.status()]), UNSUPP, 1),
        row("type u32::MAX", Q, |g| link(g.request(u32::MAX)), UNSUPP, 1),

        // -- control commands (29..35) on a request queue --
        row("GET_CRYPTO_MODES on a request queue", Q, |g| link(g.modes(8)), UNSUPP, 1),
        row("KEYSLOT_PROGRAM on a request queue", Q, |g| link(g.program(4, keep)), UNSUPP, 1),
        row("KEYSLOT_EVICT of slot 0 on a request queue", Q, |g| link(g.evict(0)), UNSUPP, 1),
        row("DERIVE_SW_SECRET on a request queue", Q, |g| link(g.wrapped_key(DERIVE_SW_SECRET, true, 32)), UNSUPP, 1),
        row("GENERATE_KEY on a request queue", Q, |g| link(g.wrapped_key(GENERATE_KEY, false, KEY_BLOB_SIZE)), UNSUPP, 1),
        row("IMPORT_KEY on a request queue", Q, |g| link(g.wrapped_key(IMPORT_KEY, true, KEY_BLOB_SIZE)), UNSUPP, 1),
        row("PREPARE_KEY on a request queue", Q, |g| link(g.wrapped_key(PREPARE_KEY, true, KEY_BLOB_SIZE)), UNSUPP, 1),

        // -- GET_ID, FLUSH --
        row("get-id with a 10-byte buffer", Q, |g| link(g.get_id(10)), IOERR, 1),
        row("get-id with a 19-byte buffer", Q, |g| link(g.get_id(19)), IOERR, 1),
        row("get-id with no answer buffer", Q, |g| link(g.request(GET_ID)), IOERR, 1),
        row("valid: get-id with a 64-byte buffer", Q, |g| link(g.get_id(64)), OK, 21),
        row("valid: get-id answer split 7+13", Q, |g| link(splice(g.get_id(20), 1, |d| split(d, &[7]))), OK, 21),
        row("valid: flush", Q, |g| link(g.request(FLUSH)), OK, 1),
        row("valid: flush with readable data (ignored)", Q, |g| link(vec![g.hdr(FLUSH, 0), g.data(4096), g.status()]), OK, 1),
        row("valid: flush with a writable buffer (left alone)", Q, |g| link(vec![g.hdr(FLUSH, 0), g.buf(512), g.status()]), OK, 1),
        row("valid: flush with a sector number (ignored)", Q, |g| link(vec![g.hdr(FLUSH, 12345), g.status()]), OK, 1),

        // -- the control queue: key descriptors --
        row("program: key_desc of 151 bytes", C, |g| link(at(g.program(6, keep), 1, |d| d.with_len(151))), IOERR, 1),
        row("program: key_desc of 153 bytes", C, |g| link(at(g.program(6, keep), 1, |d| d.with_len(153))), IOERR, 1),
        row("program: key_desc of 156 bytes (the old layout)", C, |g| link(at(g.program(6, keep), 1, |d| d.with_len(156))), IOERR, 1),
        row("program: no key_desc", C, |g| link(at(g.program(6, keep), 1, |d| d.with_len(0))), IOERR, 1),
        row("program: key_desc device-writable", C, |g| link(at(g.program(6, keep), 1, |d| d.plus(W))), IOERR, 1),
        row("program: key type 0", C, |g| link(g.program(6, |d| d.key_type = 0)), UNSUPP, 1),
        row("program: key type 2 (hardware-wrapped, not offered)", RAW_C, |g| link(g.program(6, |d| d.key_type = 2)), UNSUPP, 1),
        row("program: key type 2, a 64-byte key that is no wrapped key", C, |g| link(g.program(6, |d| d.key_type = 2)), IOERR, 1),
        row("program: key type 2, 76 bytes the device never wrapped", C, |g| link(g.program(6, |d| { d.key_type = 2; d.key_size = 76 })), IOERR, 1),
        row("program: key type 2, key size 129", C, |g| link(g.program(6, |d| { d.key_type = 2; d.key_size = 129 })), IOERR, 1),
        row("program: key type 3 (unknown)", C, |g| link(g.program(6, |d| d.key_type = 3)), UNSUPP, 1),
        row("program: key type u32::MAX", C, |g| link(g.program(6, |d| d.key_type = u32::MAX)), UNSUPP, 1),
        row("program: mode 0 (reserved)", C, |g| link(g.program(6, |d| d.crypto_mode = 0)), UNSUPP, 1),
        row("program: mode 2 (unknown)", C, |g| link(g.program(6, |d| d.crypto_mode = 2)), UNSUPP, 1),
        row("program: mode u32::MAX", C, |g| link(g.program(6, |d| d.crypto_mode = u32::MAX)), UNSUPP, 1),
        row("program: key size 0", C, |g| link(g.program(6, |d| d.key_size = 0)), IOERR, 1),
        row("program: key size 32", C, |g| link(g.program(6, |d| d.key_size = 32)), IOERR, 1),
        row("program: key size 65", C, |g| link(g.program(6, |d| d.key_size = 65)), IOERR, 1),
        row("program: key size 128", C, |g| link(g.program(6, |d| d.key_size = 128)), IOERR, 1),
        row("program: key size 129 (past the key array)", C, |g| link(g.program(6, |d| d.key_size = 129)), IOERR, 1),
        row("program: key size u32::MAX", C, |g| link(g.program(6, |d| d.key_size = u32::MAX)), IOERR, 1),
        row("program: dun_bytes 0", C, |g| link(g.program(6, |d| d.dun_bytes = 0)), IOERR, 1),
        row("program: dun_bytes 9 (over max_dun_bytes 8)", C, |g| link(g.program(6, |d| d.dun_bytes = 9)), UNSUPP, 1),
        row("program: dun_bytes 17", C, |g| link(g.program(6, |d| d.dun_bytes = 17)), UNSUPP, 1),
        row("program: dun_bytes u32::MAX", C, |g| link(g.program(6, |d| d.dun_bytes = u32::MAX)), UNSUPP, 1),
        row("program: data unit 2^8 bytes", C, |g| link(g.program(6, |d| d.data_unit_size_bits = 8)), UNSUPP, 1),
        row("program: data unit 2^13 bytes", C, |g| link(g.program(6, |d| d.data_unit_size_bits = 13)), UNSUPP, 1),
        row("program: data unit bits 32", C, |g| link(g.program(6, |d| d.data_unit_size_bits = 32)), UNSUPP, 1),
        row("program: data unit bits u32::MAX", C, |g| link(g.program(6, |d| d.data_unit_size_bits = u32::MAX)), UNSUPP, 1),
        row("program: slot 32 (out of range)", C, |g| link(g.program(32, keep)), IOERR, 1),
        row("program: slot u32::MAX", C, |g| link(g.program(u32::MAX, keep)), IOERR, 1),
        row("program over slot 0 with dun_bytes 0 (slot 0 keeps its key)", C, |g| link(g.program(0, |d| d.dun_bytes = 0)), IOERR, 1),
        row("program over slot 0 with mode 2 (slot 0 keeps its key)", C, |g| link(g.program(0, |d| d.crypto_mode = 2)), UNSUPP, 1),
        row("valid: program slot 4", C, |g| link(g.program(4, keep)), OK, 1),
        row("valid: program slot 5, key_desc split 100+52", C, |g| link(splice(g.program(5, keep), 1, |d| split(d, &[100]))), OK, 1),
        row("evict: slot 32 (out of range)", C, |g| link(g.evict(32)), IOERR, 1),
        row("evict: 16-byte payload", C, |g| link(at(g.evict(0), 1, |d| d.with_len(16))), IOERR, 1),
        row("evict: no payload", C, |g| link(g.request(EVICT)), IOERR, 1),
        row("valid: evict a never-programmed slot", C, |g| link(g.evict(7)), OK, 1),
        row("valid: evict with garbage in every field but slot (only slot is read)", C, |g| link(g.key_command(EVICT, 7, |d| { d.key_size = u32::MAX; d.crypto_mode = 9; d.key_type = 9; d.data_unit_size_bits = 99; d.dun_bytes = 0 })), OK, 1),
        row("get-crypto-modes with a 4-byte buffer", C, |g| link(g.modes(4)), IOERR, 1),
        row("get-crypto-modes with a 7-byte buffer", C, |g| link(g.modes(7)), IOERR, 1),
        row("get-crypto-modes with no answer buffer", C, |g| link(g.request(GET_CRYPTO_MODES)), IOERR, 1),
        row("valid: get-crypto-modes with a 16-byte buffer", C, |g| link(g.modes(16)), OK, 9),
        row("DERIVE_SW_SECRET (hardware-wrapped keys not offered)", RAW_C, |g| link(g.wrapped_key(DERIVE_SW_SECRET, true, 32)), UNSUPP, 1),
        row("GENERATE_KEY (hardware-wrapped keys not offered)", RAW_C, |g| link(g.wrapped_key(GENERATE_KEY, false, KEY_BLOB_SIZE)), UNSUPP, 1),
        row("IMPORT_KEY (hardware-wrapped keys not offered)", RAW_C, |g| link(g.wrapped_key(IMPORT_KEY, true, KEY_BLOB_SIZE)), UNSUPP, 1),
        row("PREPARE_KEY (hardware-wrapped keys not offered)", RAW_C, |g| link(g.wrapped_key(PREPARE_KEY, true, KEY_BLOB_SIZE)), UNSUPP, 1),
        row("GENERATE_KEY with a payload and no answer buffer (not offered: UNSUPP first)", RAW_C, |g| link(vec![g.hdr(GENERATE_KEY, 0), g.data(16), g.status()]), UNSUPP, 1),

        // -- the control queue: hardware-wrapped keys (refusals; the
        // answers of valid requests are random, tests/wrapped_keys.rs
        // checks them) --
        row("DERIVE_SW_SECRET of random bytes", C, |g| link(g.wrapped_key(DERIVE_SW_SECRET, true, 32)), IOERR, 1),
        row("DERIVE_SW_SECRET of 76 bytes the device never wrapped", C, |g| link(g.key_blob_command(DERIVE_SW_SECRET, &[0x5a; 76], 32)), IOERR, 1),
        row("DERIVE_SW_SECRET: key_blob of 131 bytes", C, |g| link(at(g.key_blob_command(DERIVE_SW_SECRET, &[0x5a; 76], 32), 1, |d| d.with_len(131))), IOERR, 1),
        row("DERIVE_SW_SECRET with a 31-byte answer buffer", C, |g| link(g.key_blob_command(DERIVE_SW_SECRET, &[0x5a; 76], 31)), IOERR, 1),
        row("IMPORT_KEY of a 64-byte raw key", C, |g| link(g.key_blob_command(IMPORT_KEY, &KEY_NEW, KEY_BLOB_SIZE)), IOERR, 1),
        row("IMPORT_KEY of a 16-byte raw key", C, |g| link(g.key_blob_command(IMPORT_KEY, &KEY_NEW[..16], KEY_BLOB_SIZE)), IOERR, 1),
        row("IMPORT_KEY with a 131-byte answer buffer", C, |g| link(g.key_blob_command(IMPORT_KEY, &KEY_NEW[..32], 131)), IOERR, 1),
        row("IMPORT_KEY: key_blob device-writable", C, |g| link(at(g.key_blob_command(IMPORT_KEY, &KEY_NEW[..32], KEY_BLOB_SIZE), 1, |d| d.plus(W))), IOERR, 1),
        row("PREPARE_KEY of 76 bytes the device never wrapped", C, |g| link(g.key_blob_command(PREPARE_KEY, &[0x5a; 76], KEY_BLOB_SIZE)), IOERR, 1),
        row("PREPARE_KEY of random bytes", C, |g| link(g.wrapped_key(PREPARE_KEY, true, KEY_BLOB_SIZE)), IOERR, 1),
        row("GENERATE_KEY with a 131-byte answer buffer", C, |g| link(g.wrapped_key(GENERATE_KEY, false, 131)), IOERR, 1),
        row("GENERATE_KEY with a payload", C, |g| link(g.wrapped_key(GENERATE_KEY, true, KEY_BLOB_SIZE)), IOERR, 1),
        row("GENERATE_KEY without an answer buffer", C, |g| link(g.request(GENERATE_KEY)), IOERR, 1),

        // -- other requests on the control queue --
        row("write on the control queue", C, |g| link(g.write(0, 4096)), UNSUPP, 1),
        row("read on the control queue", C, |g| link(g.read(0, 4096)), UNSUPP, 1),
        row("crypto-out on the control queue", C, |g| link(g.crypto_write(0, 0, dun(0), 4096)), UNSUPP, 1),
        row("crypto-in on the control queue", C, |g| link(g.crypto_read(0, 0, dun(0), 4096)), UNSUPP, 1),
        row("flush on the control queue", C, |g| link(g.request(FLUSH)), UNSUPP, 1),
        row("get-id on the control queue", C, |g| link(g.get_id(20)), UNSUPP, 1),
        row("discard on the control queue", C, |g| link(g.segments(DISCARD, &[(0, 8, 0)])), UNSUPP, 1),
        row("unknown type on the control queue", C, |g| link(g.request(99)), UNSUPP, 1),

        // -- a read-only device --
        row("read-only: write", RO, |g| link(g.write(0, 4096)), IOERR, 1),
        row("read-only: crypto-out", RO, |g| link(g.crypto_write(0, 0, dun(0), 4096)), IOERR, 1),
        row("read-only: discard", RO, |g| link(g.segments(DISCARD, &[(0, 8, 0)])), IOERR, 1),
        row("read-only: write-zeroes", RO, |g| link(g.segments(WRITE_ZEROES, &[(0, 8, 0)])), IOERR, 1),
        row("read-only, valid: read", RO, |g| link(g.read(8, 4096)), OK, 4097),
        row("read-only, valid: crypto-in", RO, |g| link(g.crypto_read(8, 0, dun(2), 4096)), OK, 4097),
        row("read-only, valid: flush", RO, |g| link(g.request(FLUSH)), OK, 1),

        // -- a device without an engine, a driver that did not negotiate --
        row("no engine: crypto-out", NOENG, |g| link(g.crypto_write(0, 0, dun(0), 4096)), UNSUPP, 1),
        row("no engine: crypto-in", NOENG, |g| link(g.crypto_read(0, 0, dun(0), 4096)), UNSUPP, 1),
        row("no engine: keyslot program", NOENG, |g| link(g.program(4, keep)), UNSUPP, 1),
        row("no engine: get-crypto-modes", NOENG, |g| link(g.modes(8)), UNSUPP, 1),
        row("no engine, valid: write", NOENG, |g| link(g.write(0, 4096)), OK, 1),
        row("not negotiated: crypto-out", NONEG, |g| link(g.crypto_write(0, 0, dun(0), 4096)), UNSUPP, 1),
        row("not negotiated: crypto-in (bad slot too)", NONEG, |g| link(g.crypto_read(0, 99, dun(0), 4096)), UNSUPP, 1),
        row("not negotiated: program on the control queue", NONEG_C, |g| link(g.program(4, keep)), UNSUPP, 1),
        row("not negotiated: get-crypto-modes on the control queue", NONEG_C, |g| link(g.modes(8)), UNSUPP, 1),
        row("not negotiated, valid: write", NONEG, |g| link(g.write(0, 4096)), OK, 1),
    ]
}

/// The requests that show the device still serves, after each row.
#[rustfmt::skip]
fn follow_ups(device: Device) -> Vec<Row> {
    let on = |control| On { device, control };
    let mut rows = vec![row("GET_ID", on(false), |g| link(g.get_id(20)), OK, 21)];
    if device != Device::ReadOnly {
        rows.push(row("write", on(false), |g| link(g.write(16, 4096)), OK, 1));
        rows.push(row("read back", on(false), |g| link(g.read(16, 4096)), OK, 4097));
    }
    match device {
        Device::Full | Device::RawOnly => {
            rows.push(row("crypto-out with slot 0's key", on(false), |g| link(g.crypto_write(24, 0, dun(5), 8192)), OK, 1));
            rows.push(row("crypto-in back", on(false), |g| link(g.crypto_read(24, 0, dun(5), 8192)), OK, 8193));
            rows.push(row("get-crypto-modes", on(true), |g| link(g.modes(8)), OK, 9));
        }
        Device::ReadOnly => rows.push(row("crypto-in", on(false), |g| link(g.crypto_read(24, 0, dun(5), 8192)), OK, 8193)),
        Device::NoEngine | Device::NotNegotiated => {}
    }
    rows
}

// ---------------------------------------------------------------------------
// The harness
// ---------------------------------------------------------------------------

/// Runs one row and returns what is wrong (nothing when it passes).
fn run(lab: &Lab, ring: &mut Ring<'_>, row: &Row, seed: u64) -> Vec<String> {
    let before = lab.image_bytes();
    let mut guest = Guest::new(lab, &before, seed);
    let chain = (row.build)(&mut guest);
    let rejected = lab.rejections();
    let used = match ring.serve(lab, &chain) {
        Ok(used) => used,
        Err(error) => return vec![error],
    };
    let mut problems = Vec::new();
    let mem = &lab.mem;
    let read = |addr: u64, len: usize| {
        let mut bytes = vec![0u8; len];
        mem.read_slice(&mut bytes, GuestAddress(addr))
            .expect("read guest memory");
        bytes
    };

    if used != row.used {
        problems.push(format!("used length {used}, expected {}", row.used));
    }
    let ok = row.expect == OK;
    let status_at = match row.expect {
        Expect::Status(status) => match guest.status_at {
            None => {
                problems.push("row error: a status is expected but there is no status byte".into());
                None
            }
            Some(at) => {
                let got = read(at, 1)[0];
                if got != status as u8 {
                    problems.push(format!("status {got:#04x}, expected {status:?}"));
                }
                Some(at)
            }
        },
        Expect::NoStatus => None,
    };
    let answer = if ok { guest.answer.clone() } else { Vec::new() };
    if ok && !guest.answer.is_empty() {
        let got: Vec<u8> = answer
            .iter()
            .flat_map(|&(addr, len)| read(addr, len))
            .collect();
        if got != guest.answer_bytes {
            problems.push("the answer in guest memory is not the expected one".into());
        }
    }
    let expected_write = |addr: u64| {
        Some(addr) == status_at
            || answer
                .iter()
                .any(|&(at, len)| (at..at + len as u64).contains(&addr))
    };
    for &(addr, len) in &guest.writable {
        let bytes = read(addr, len);
        if let Some(offset) =
            (0..len).find(|&i| bytes[i] != CANARY && !expected_write(addr + i as u64))
        {
            problems.push(format!(
                "the device wrote {:#04x} at {:#x} (byte {offset} of a {len}-byte writable buffer)",
                bytes[offset],
                addr + offset as u64
            ));
        }
    }
    for (addr, bytes) in &guest.readable {
        if read(*addr, bytes.len()) != *bytes {
            problems.push(format!(
                "the device changed the device-readable buffer at {addr:#x}"
            ));
        }
    }
    let mut expected = before.clone();
    if ok {
        for (offset, bytes) in &guest.image_effects {
            let start = *offset as usize;
            match expected.get_mut(start..start + bytes.len()) {
                Some(range) => range.copy_from_slice(bytes),
                None => problems.push("row error: an expected write beyond the image".into()),
            }
        }
    }
    let after = lab.image_bytes();
    if after != expected {
        let first = after.iter().zip(&expected).position(|(a, b)| a != b);
        problems.push(format!(
            "the image is not as expected (first difference at byte {first:?}, {})",
            if ok {
                "after a valid request"
            } else {
                "after a refused request"
            }
        ));
    }
    let counted = lab.rejections() - rejected;
    let want = u64::from(!ok);
    if counted != want {
        problems.push(format!(
            "{counted} refusals counted in the stats, expected {want}"
        ));
    }
    problems
}

/// Runs `rows` (those for `device`), each followed by the follow-ups, on
/// one device; returns every problem found.
fn run_on(device: Device, rows: &[Row]) -> Vec<String> {
    let lab = Lab::new(device);
    assert_eq!(lab.kind, device);
    let mut requests = Ring::new(&lab.mem, REQUEST_RING, QueueRole::Request(0));
    let mut control = Ring::new(&lab.mem, CONTROL_RING, QueueRole::Control);
    let follow_ups = follow_ups(device);
    let mut problems = Vec::new();
    let mut seed = device as u64 * 1_000_000;
    for row in rows.iter().filter(|row| row.on.device == device) {
        for step in std::iter::once(row).chain(&follow_ups) {
            seed += 1;
            let ring = if step.on.control {
                &mut control
            } else {
                &mut requests
            };
            let name = if std::ptr::eq(step, row) {
                row.name.to_owned()
            } else {
                format!("{}, then {}", row.name, step.name)
            };
            problems.extend(
                run(&lab, ring, step, seed)
                    .into_iter()
                    .map(|p| format!("{name}: {p}")),
            );
        }
    }
    if device == Device::Full {
        // No refused KEYSLOT_PROGRAM took effect (slot 0's key is checked
        // by the follow-ups against the oracle).
        let msg = CryptoMsg {
            slot: 6,
            reserved: 0,
            dun: dun(0),
        };
        if !matches!(
            lab.device.engine().key_for(&msg, 0, 4096),
            Err(EngineError::SlotEmpty { slot: 6 })
        ) {
            problems.push("slot 6 was programmed by a refused KEYSLOT_PROGRAM".into());
        }
    }
    problems
}

#[test]
fn the_matrix_has_at_least_80_distinct_rows() {
    let rows = rows();
    assert!(
        rows.len() >= 80,
        "the matrix must keep at least 80 rows, has {}",
        rows.len()
    );
    let mut names: Vec<&str> = rows.iter().map(|row| row.name).collect();
    names.sort_unstable();
    let count = names.len();
    names.dedup();
    assert_eq!(names.len(), count, "row names are unique");
    for row in &rows {
        let consistent = match row.expect {
            Expect::NoStatus => row.used == 0,
            Expect::Status(Status::Ok) => row.used >= 1,
            Expect::Status(_) => row.used == 1,
        };
        assert!(
            consistent,
            "{}: a refused request's used length is 1 (0 without a status byte)",
            row.name
        );
    }
}

#[test]
fn full_device_rows() {
    let problems = run_on(Device::Full, &rows());
    assert!(
        problems.is_empty(),
        "{} problems:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

#[test]
fn read_only_no_engine_raw_only_and_not_negotiated_rows() {
    let rows = rows();
    let mut problems = Vec::new();
    for device in [
        Device::ReadOnly,
        Device::NoEngine,
        Device::NotNegotiated,
        Device::RawOnly,
    ] {
        problems.extend(run_on(device, &rows));
    }
    assert!(
        problems.is_empty(),
        "{} problems:\n{}",
        problems.len(),
        problems.join("\n")
    );
}
