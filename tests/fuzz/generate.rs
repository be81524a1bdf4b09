//! The request generator: what to send (a [`Body`]: the readable bytes and
//! the writable room of a request) and how to lay it out in guest memory
//! (a [`Wire`]: split, scattered, zero-length descriptors, malformed
//! chains, indirect tables). Everything comes from the seeded [`Rng`];
//! nothing depends on what the device answered, so a seed replays.

use super::model::{
    CRYPTO_MSG_SIZE, Caps, Dun, KEY_DESC_SIZE, MAX_DISCARD_SECTORS, SECTOR, Shape, Slot,
    T_CRYPTO_IN, T_CRYPTO_OUT, T_DISCARD, T_EVICT, T_FLUSH, T_GET_CRYPTO_MODES, T_GET_ID, T_IN,
    T_OUT, T_PROGRAM, T_WRITE_ZEROES,
};
use super::rng::Rng;
use super::wire::{Addr, Desc, Next, Wire};
use std::collections::BTreeSet;

/// What a request says, before it is laid out.
#[derive(Clone, Debug)]
pub struct Body {
    /// For messages.
    pub label: String,
    /// For the run's totals.
    pub kind: &'static str,
    /// Header, payload and data out.
    pub readable: Vec<u8>,
    /// Natural boundaries inside `readable` (end of header, of payload).
    pub r_cuts: Vec<usize>,
    /// Writable bytes, status byte included (at least 1).
    pub writable: u32,
    /// Natural boundaries inside the writable bytes (end of data in).
    pub w_cuts: Vec<u32>,
    /// Byte ranges of the image the request may touch, [start, end).
    pub touch: Vec<(u64, u64)>,
    /// The keyslot a crypto or keyslot request names.
    pub slot: Option<u32>,
}

fn header(request_type: u32, sector: u64, rng: &mut Rng) -> Vec<u8> {
    let ioprio = if rng.one_in(8) {
        rng.next_u64() as u32
    } else {
        0
    };
    let mut out = Vec::with_capacity(16);
    out.extend_from_slice(&request_type.to_le_bytes());
    out.extend_from_slice(&ioprio.to_le_bytes());
    out.extend_from_slice(&sector.to_le_bytes());
    out
}

impl Body {
    fn new(kind: &'static str, label: String, header: Vec<u8>) -> Self {
        Self {
            label,
            kind,
            readable: header,
            r_cuts: Vec::new(),
            writable: 1,
            w_cuts: Vec::new(),
            touch: Vec::new(),
            slot: None,
        }
    }

    fn payload(mut self, bytes: &[u8]) -> Self {
        if !bytes.is_empty() {
            self.r_cuts.push(self.readable.len());
            self.readable.extend_from_slice(bytes);
        }
        self
    }

    fn data_in(mut self, len: u32) -> Self {
        if len > 0 {
            self.w_cuts.push(len);
        }
        self.writable = len + 1;
        self
    }

    fn touching(mut self, capacity: u64, offset: Option<u64>, len: u64) -> Self {
        if let Some(offset) = offset {
            let end = offset.saturating_add(len.max(1)).min(capacity);
            if offset < end {
                self.touch.push((offset, end));
            }
        }
        self
    }
}

/// What the generator knows at the start of a batch.
pub struct Ctx<'a> {
    pub shape: &'a Shape,
    /// Slot states at the start of the batch.
    pub slots: &'a [Slot],
    /// Slots this batch's control commands name.
    pub hot: &'a [u32],
}

/// A data length for plain I/O.
fn plain_len(rng: &mut Rng) -> u64 {
    match rng.weighted(&[50, 30, 12, 1, 4, 3]) {
        0 => SECTOR * rng.range(1, 8),
        1 => SECTOR * rng.range(9, 128),
        2 => SECTOR * rng.range(129, 2048),
        3 => SECTOR * rng.range(2049, 8200),
        4 => SECTOR * rng.range(0, 16) + rng.range(1, 511),
        _ => 0,
    }
}

/// A start sector for `len` bytes aligned to `align`; mostly inside the
/// capacity, sometimes across its end, misaligned or overflowing.
fn pick_sector(rng: &mut Rng, capacity: u64, len: u64, align: u64) -> (u64, Option<u64>) {
    let align = align.max(SECTOR);
    let fits = |rng: &mut Rng| {
        if len > capacity {
            return 0;
        }
        let slots = (capacity - len) / align;
        rng.range(0, slots) * align
    };
    let offset = match rng.weighted(&[85, 5, 4, 2, 4]) {
        0 => fits(rng),
        1 => capacity.saturating_sub(len) + align * rng.range(1, 3),
        2 => fits(rng) + SECTOR * rng.range(1, (align / SECTOR).max(2) - 1),
        3 => {
            let sector = rng.range(u64::MAX / SECTOR - 2, u64::MAX);
            return (sector, None);
        }
        _ => {
            if len > capacity {
                0
            } else {
                (capacity - len) / align * align
            }
        }
    };
    (offset / SECTOR, Some(offset - offset % SECTOR))
}

fn read_body(rng: &mut Rng, shape: &Shape) -> Body {
    let len = plain_len(rng);
    let (sector, offset) = pick_sector(rng, shape.capacity, len, SECTOR);
    let mut body = Body::new(
        "read",
        format!("IN sector {sector} len {len}"),
        header(T_IN, sector, rng),
    );
    if rng.one_in(20) {
        let len = rng.urange(1, 64);
        let extra = rng.bytes(len);
        body = body.payload(&extra);
        body.label.push_str(" +readable bytes");
    }
    body.data_in(len as u32)
        .touching(shape.capacity, offset, len)
}

fn write_body(rng: &mut Rng, shape: &Shape) -> Body {
    let len = plain_len(rng);
    let (sector, offset) = pick_sector(rng, shape.capacity, len, SECTOR);
    let data = rng.bytes(len as usize);
    Body::new(
        "write",
        format!("OUT sector {sector} len {len}"),
        header(T_OUT, sector, rng),
    )
    .payload(&data)
    .touching(shape.capacity, offset, len)
}

fn discard_body(rng: &mut Rng, shape: &Shape, zeroes: bool) -> Body {
    let (request_type, kind) = if zeroes {
        (T_WRITE_ZEROES, "write_zeroes")
    } else {
        (T_DISCARD, "discard")
    };
    let count = match rng.weighted(&[85, 3, 4, 4]) {
        0 => rng.range(1, 4),
        1 => 0,
        2 => rng.range(MAX_DISCARD_SEG_PLUS, MAX_DISCARD_SEG_PLUS + 4),
        _ => rng.range(1, 3),
    };
    let ragged = count > 0 && count < MAX_DISCARD_SEG_PLUS && rng.one_in(12);
    let mut payload = Vec::new();
    let mut touch = Vec::new();
    let mut label = format!("{} [", kind.to_uppercase());
    let capacity_sectors = shape.capacity / SECTOR;
    for _ in 0..count {
        let sectors: u32 = match rng.weighted(&[80, 5, 3, 2]) {
            0 => rng.range(1, 64) as u32,
            1 => 0,
            2 => rng.range(65, 2048) as u32,
            _ => rng.pick(&[u32::MAX, MAX_DISCARD_SECTORS + 1]),
        };
        let sector = match rng.weighted(&[90, 5, 5]) {
            0 => rng.range(0, capacity_sectors.saturating_sub(u64::from(sectors))),
            1 => capacity_sectors - rng.range(0, 2),
            _ => rng.range(u64::MAX / SECTOR - 1, u64::MAX),
        };
        let flags: u32 = match rng.weighted(&[70, 20, 10]) {
            0 => 0,
            1 => 1,
            _ => rng.pick(&[2, 4, 0x8000_0000, 3]),
        };
        if sectors <= MAX_DISCARD_SECTORS
            && let Some(start) = sector.checked_mul(SECTOR)
        {
            let end = start
                .saturating_add(u64::from(sectors) * SECTOR)
                .min(shape.capacity);
            if start < end {
                touch.push((start, end));
            }
        }
        payload.extend_from_slice(&sector.to_le_bytes());
        payload.extend_from_slice(&sectors.to_le_bytes());
        payload.extend_from_slice(&flags.to_le_bytes());
        label.push_str(&format!(" {sector}+{sectors}/{flags:#x}"));
    }
    if ragged {
        let cut = rng.urange(1, 15);
        payload.truncate(payload.len() - cut);
        label.push_str(&format!(" -{cut}B"));
    }
    label.push_str(" ]");
    let mut body = Body::new(kind, label, header(request_type, 0, rng)).payload(&payload);
    body.touch = touch;
    body
}

/// One more than the device's `max_discard_seg`.
const MAX_DISCARD_SEG_PLUS: u64 = super::model::MAX_DISCARD_SEG + 1;

/// A crypto_msg.
fn crypto_msg(rng: &mut Rng, slot: u32, dun: &Dun) -> Vec<u8> {
    let mut out = Vec::with_capacity(CRYPTO_MSG_SIZE);
    out.extend_from_slice(&slot.to_le_bytes());
    let reserved = if rng.one_in(10) {
        rng.next_u64() as u32
    } else {
        0
    };
    out.extend_from_slice(&reserved.to_le_bytes());
    for word in dun {
        out.extend_from_slice(&word.to_le_bytes());
    }
    out
}

/// 2^(8 * bytes) - `sub` as a 256-bit number (`bytes` <= 16).
fn dun_limit_minus(bytes: u32, sub: u64) -> Dun {
    let limit: Dun = match bytes {
        0..=7 => [1u64 << (8 * bytes), 0, 0, 0],
        8 => [0, 1, 0, 0],
        9..=15 => [0, 1u64 << (8 * (bytes - 8)), 0, 0],
        _ => [0, 0, 1, 0],
    };
    // limit - sub, by adding the two's complement.
    let mut out = [0u64; 4];
    let mut borrow = sub;
    for (index, word) in limit.iter().enumerate() {
        let (value, under) = word.overflowing_sub(borrow);
        out[index] = value;
        borrow = u64::from(under);
    }
    out
}

/// A DUN for `units` data units under a slot of `dun_bytes`: small, random
/// and fitting, exactly at the top, one past it, across 2^64, or with high
/// words set.
fn pick_dun(rng: &mut Rng, dun_bytes: u32, units: u64) -> (Dun, &'static str) {
    let units = units.max(1);
    match rng.weighted(&[30, 20, 10, 10, 8, 12, 10]) {
        0 => ([rng.range(0, 1000), 0, 0, 0], "small"),
        1 => {
            let top = dun_limit_minus(dun_bytes, units);
            let dun = if top[1] == 0 && top[2] == 0 {
                [rng.range(0, top[0]), 0, 0, 0]
            } else if top[2] == 0 && top[1] > 0 {
                [rng.next_u64(), rng.range(0, top[1] - 1), 0, 0]
            } else {
                [rng.next_u64(), rng.next_u64(), 0, 0]
            };
            (dun, "random")
        }
        2 => (dun_limit_minus(dun_bytes, units), "top"),
        3 => (dun_limit_minus(dun_bytes, units - 1), "top+1"),
        4 => {
            let below = rng.range(1, units);
            (dun_limit_minus(8, below), "carry-2^64")
        }
        5 => {
            let mut dun = [rng.next_u64(), rng.next_u64(), 0, 0];
            if rng.percent(50) {
                dun[2] = rng.next_u64() | 1;
            } else {
                dun[3] = rng.next_u64() | (1 << 63);
            }
            (dun, "high-words")
        }
        _ => ([rng.next_u64(), rng.next_u64(), 0, 0], "128-bit"),
    }
}

fn crypto_body(rng: &mut Rng, ctx: &Ctx<'_>, out: bool) -> Body {
    let shape = ctx.shape;
    let caps = shape.caps.unwrap_or(Caps {
        slots: 32,
        max_dun_bytes: 8,
        dus_mask: 0x1e00,
    });
    let programmed: Vec<u32> = (0..ctx.slots.len() as u32)
        .filter(|slot| ctx.slots[*slot as usize].is_some())
        .collect();
    let empty: Vec<u32> = (0..ctx.slots.len() as u32)
        .filter(|slot| ctx.slots[*slot as usize].is_none())
        .collect();
    let slot = match rng.weighted(&[60, 20, 10, 4, 6]) {
        0 if !programmed.is_empty() => rng.pick(&programmed),
        1 if !ctx.hot.is_empty() => rng.pick(ctx.hot),
        2 if !empty.is_empty() => rng.pick(&empty),
        3 => rng.pick(&[caps.slots, caps.slots + 1, u32::MAX, caps.slots + 100]),
        _ => rng.range(0, u64::from(caps.slots) - 1) as u32,
    };
    let (dus, dun_bytes) = match ctx.slots.get(slot as usize).and_then(|s| s.as_ref()) {
        Some(key) => (u64::from(key.dus), key.dun_bytes),
        None => (
            u64::from(rng.pick(&caps.sizes())),
            rng.range(1, u64::from(caps.max_dun_bytes)) as u32,
        ),
    };
    let units = match rng.weighted(&[60, 30, 5]) {
        0 => rng.range(1, 4),
        1 => rng.range(5, 32),
        _ => rng.range(33, ((1 << 20) / dus).max(34)),
    };
    let mut len = units * dus;
    let mut shape_note = "";
    match rng.weighted(&[90, 4, 3, 3]) {
        0 => {}
        1 if dus > SECTOR => {
            len += SECTOR * rng.range(1, dus / SECTOR - 1);
            shape_note = " partial-unit";
        }
        2 => {
            len += rng.range(1, 511);
            shape_note = " odd-length";
        }
        3 => {
            len = 0;
            shape_note = " empty";
        }
        _ => {}
    }
    let (sector, offset) = pick_sector(rng, shape.capacity, len, dus);
    let (dun, dun_kind) = pick_dun(rng, dun_bytes, len / dus);
    let msg = crypto_msg(rng, slot, &dun);
    let kind = if out { "crypto_out" } else { "crypto_in" };
    let label = format!(
        "{} slot {slot} sector {sector} len {len}{shape_note} dun {dun_kind} {:x?}",
        if out { "CRYPTO_OUT" } else { "CRYPTO_IN" },
        dun
    );
    let request_type = if out { T_CRYPTO_OUT } else { T_CRYPTO_IN };
    let mut body = Body::new(kind, label, header(request_type, sector, rng));
    if rng.one_in(40) {
        // A short crypto_msg.
        let cut = rng.urange(1, CRYPTO_MSG_SIZE - 1);
        body = body.payload(&msg[..cut]);
        body.label.push_str(&format!(" msg cut to {cut}"));
    } else {
        body = body.payload(&msg);
    }
    body.slot = Some(slot);
    if out {
        let data = rng.bytes(len as usize);
        body = body.payload(&data);
    } else {
        body = body.data_in(len as u32);
    }
    body.touching(shape.capacity, offset, len)
}

/// A key_desc.
fn key_desc(
    slot: u32,
    key: &[u8],
    key_size: u32,
    mode: u32,
    key_type: u32,
    bits: u32,
    dun_bytes: u32,
) -> Vec<u8> {
    let mut out = vec![0u8; KEY_DESC_SIZE];
    out[0..4].copy_from_slice(&slot.to_le_bytes());
    out[4..4 + key.len()].copy_from_slice(key);
    out[132..136].copy_from_slice(&key_size.to_le_bytes());
    out[136..140].copy_from_slice(&mode.to_le_bytes());
    out[140..144].copy_from_slice(&key_type.to_le_bytes());
    out[144..148].copy_from_slice(&bits.to_le_bytes());
    out[148..152].copy_from_slice(&dun_bytes.to_le_bytes());
    out
}

fn pick_slot(rng: &mut Rng, caps: &Caps) -> u32 {
    if rng.one_in(25) {
        rng.pick(&[caps.slots, caps.slots + 7, u32::MAX])
    } else {
        rng.range(0, u64::from(caps.slots) - 1) as u32
    }
}

fn program_body(rng: &mut Rng, caps: &Caps) -> Body {
    let slot = pick_slot(rng, caps);
    let mut key = rng.bytes(128);
    if rng.percent(70) {
        // Bytes past the key are not part of it.
        key[64..].fill(0);
    }
    let dus = rng.pick(&caps.sizes());
    let mut bits = dus.trailing_zeros();
    let mut dun_bytes = rng.range(1, u64::from(caps.max_dun_bytes)) as u32;
    let (mut mode, mut key_type, mut key_size) = (1u32, 1u32, 64u32);
    let mut what = "";
    if rng.one_in(6) {
        match rng.below(7) {
            0 => {
                mode = rng.pick(&[0, 2, 3, u32::MAX]);
                what = " bad mode";
            }
            1 => {
                key_type = rng.pick(&[0, 2, 3, 0x100]);
                what = " bad key type";
            }
            2 => {
                key_size = rng.pick(&[0, 32, 63, 65, 128, 129, u32::MAX]);
                what = " bad key size";
            }
            3 => {
                bits = rng.pick(&[0, 8, 17, 31, 32, 44, u32::MAX]);
                what = " bad data unit size";
            }
            4 => {
                dun_bytes = 0;
                what = " dun_bytes 0";
            }
            5 => {
                dun_bytes = rng.range(u64::from(caps.max_dun_bytes) + 1, 40) as u32;
                what = " dun_bytes too large";
            }
            _ => {
                bits = rng.range(9, 16) as u32;
                what = " some data unit size";
            }
        }
    }
    let mut payload = key_desc(slot, &key, key_size, mode, key_type, bits, dun_bytes);
    let mut label = format!("KEYSLOT_PROGRAM slot {slot} dus 2^{bits} dun_bytes {dun_bytes}{what}");
    if rng.one_in(30) {
        let len = rng.pick(&[0usize, 100, 151, 153, 156, 300]);
        payload.resize(len, 0);
        label.push_str(&format!(" key_desc {len} B"));
    }
    let mut body = Body::new("program", label, header(T_PROGRAM, 0, rng)).payload(&payload);
    body.slot = Some(slot);
    body
}

fn evict_body(rng: &mut Rng, caps: &Caps) -> Body {
    let slot = pick_slot(rng, caps);
    let mut payload = if rng.percent(50) {
        key_desc(slot, &[0; 64], 0, 0, 0, 0, 0)
    } else {
        let mut garbage = rng.bytes(KEY_DESC_SIZE);
        garbage[0..4].copy_from_slice(&slot.to_le_bytes());
        garbage
    };
    let mut label = format!("KEYSLOT_EVICT slot {slot}");
    if rng.one_in(30) {
        let len = rng.pick(&[0usize, 4, 151, 156]);
        payload.resize(len, 0);
        label.push_str(&format!(" key_desc {len} B"));
    }
    let mut body = Body::new("evict", label, header(T_EVICT, 0, rng)).payload(&payload);
    body.slot = Some(slot);
    body
}

/// A request for a request queue.
pub fn request_body(rng: &mut Rng, ctx: &Ctx<'_>) -> Body {
    let shape = ctx.shape;
    let caps = shape.caps.unwrap_or(Caps {
        slots: 32,
        max_dun_bytes: 8,
        dus_mask: 0x1e00,
    });
    match rng.weighted(&[12, 12, 20, 16, 3, 3, 4, 4, 2, 2]) {
        0 => read_body(rng, shape),
        1 => write_body(rng, shape),
        2 => crypto_body(rng, ctx, true),
        3 => crypto_body(rng, ctx, false),
        4 => {
            let mut body = Body::new(
                "flush",
                "FLUSH".into(),
                header(T_FLUSH, rng.next_u64(), rng),
            );
            if rng.one_in(4) {
                body = body.data_in(16);
            }
            body
        }
        5 => {
            let room = rng.pick(&[20u32, 20, 20, 19, 0, 21, 64]);
            Body::new(
                "get_id",
                format!("GET_ID room {room}"),
                header(T_GET_ID, 0, rng),
            )
            .data_in(room)
        }
        6 => discard_body(rng, shape, false),
        7 => discard_body(rng, shape, true),
        8 => {
            let mut body = match rng.below(3) {
                0 => program_body(rng, &caps),
                1 => evict_body(rng, &caps),
                _ => Body::new(
                    "get_modes",
                    "GET_CRYPTO_MODES".into(),
                    header(T_GET_CRYPTO_MODES, 0, rng),
                )
                .data_in(8),
            };
            body.kind = "wrong_queue";
            body.label = format!("{} on a request queue", body.label);
            body.slot = None;
            body
        }
        _ => unknown_body(rng),
    }
}

fn unknown_body(rng: &mut Rng) -> Body {
    let request_type = loop {
        let candidate = match rng.below(3) {
            0 => rng.range(0, 40) as u32,
            1 => rng.next_u64() as u32,
            _ => rng.range(32, 35) as u32,
        };
        if ![T_IN, T_OUT, T_FLUSH, T_GET_ID, T_DISCARD, T_WRITE_ZEROES].contains(&candidate)
            && !(27..=31).contains(&candidate)
        {
            break candidate;
        }
    };
    let payload_len = rng.pick(&[0usize, 16, 132]);
    let payload = rng.bytes(payload_len);
    Body::new(
        "unknown_type",
        format!("type {request_type}"),
        header(request_type, rng.next_u64(), rng),
    )
    .payload(&payload)
    .data_in(rng.pick(&[0u32, 32, 132]))
}

/// A command for the control queue.
pub fn control_body(rng: &mut Rng, ctx: &Ctx<'_>) -> Body {
    let caps = ctx.shape.caps.expect("a control queue implies an engine");
    match rng.weighted(&[12, 6, 2, 1, 2]) {
        0 => program_body(rng, &caps),
        1 => evict_body(rng, &caps),
        2 => {
            let room = rng.pick(&[8u32, 8, 8, 4, 0, 16]);
            Body::new(
                "get_modes",
                format!("GET_CRYPTO_MODES room {room}"),
                header(T_GET_CRYPTO_MODES, 0, rng),
            )
            .data_in(room)
        }
        3 => {
            let mut body = unknown_body(rng);
            body.kind = "hw_key_or_unknown";
            body
        }
        _ => {
            let mut body = match rng.below(3) {
                0 => read_body(rng, ctx.shape),
                1 => write_body(rng, ctx.shape),
                _ => {
                    let out = rng.percent(50);
                    crypto_body(rng, ctx, out)
                }
            };
            body.kind = "wrong_queue";
            body.label = format!("{} on the control queue", body.label);
            body.slot = None;
            body.touch.clear();
            body
        }
    }
}

/// Cuts `len` bytes into pieces at the natural boundaries and maybe more.
fn cut(rng: &mut Rng, len: usize, natural: &[usize]) -> Vec<usize> {
    if len == 0 {
        return Vec::new();
    }
    let mut points: BTreeSet<usize> = natural
        .iter()
        .copied()
        .filter(|p| *p > 0 && *p < len)
        .collect();
    match rng.weighted(&[55, 28, 10, 7]) {
        0 => {}
        1 => {
            for _ in 0..rng.range(1, 6) {
                if len > 1 {
                    points.insert(rng.urange(1, len - 1));
                }
            }
        }
        2 => {
            let step = if rng.percent(50) {
                rng.pick(&[7usize, 16, 100, 511, 512, 1000, 1536, 4096])
            } else {
                rng.urange(1, 4096)
            };
            if len / step <= 120 {
                points.extend((1..).map(|i| i * step).take_while(|p| *p < len));
            }
        }
        _ => {
            for natural in natural {
                for delta in [1usize, 2, 3] {
                    if *natural > delta {
                        points.insert(natural - delta);
                    }
                    if natural + delta < len {
                        points.insert(natural + delta);
                    }
                }
            }
            if len > 2 {
                points.insert(1);
            }
        }
    }
    let mut pieces = Vec::with_capacity(points.len() + 1);
    let mut last = 0;
    for point in points {
        pieces.push(point - last);
        last = point;
    }
    pieces.push(len - last);
    pieces
}

/// A guest address outside guest memory for a descriptor of `len` bytes.
fn outside(rng: &mut Rng, mem_size: u64, len: u32) -> u64 {
    match rng.below(3) {
        0 => mem_size + rng.below(1 << 40),
        1 => u64::MAX - rng.below(4096),
        _ if len >= 2 => mem_size - rng.range(1, u64::from(len) - 1).min(mem_size),
        _ => mem_size,
    }
}

/// A request laid out in guest memory.
pub struct Laid {
    pub wire: Wire,
    /// What was done to the chain, for the totals and for messages.
    pub notes: Vec<&'static str>,
}

/// Lays `body` out as descriptors in an arena; `budget` is the number of
/// ring descriptors still free on its queue. `None` when it does not fit.
pub fn lay_out(rng: &mut Rng, body: &Body, shape: &Shape, budget: usize) -> Option<Laid> {
    let mut notes = Vec::new();
    let r_pieces = cut(rng, body.readable.len(), &body.r_cuts);
    let mut w_natural: Vec<usize> = body.w_cuts.iter().map(|c| *c as usize).collect();
    if !w_natural.is_empty() && rng.one_in(7) {
        w_natural.clear();
        notes.push("data+status in one descriptor");
    }
    let w_pieces = cut(rng, body.writable as usize, &w_natural);
    if r_pieces.len() + w_pieces.len() > 2 + body.r_cuts.len() + body.w_cuts.len() {
        notes.push("split descriptors");
    }

    // Place the pieces in the arena, in chain order or shuffled, with gaps.
    let pieces: Vec<(bool, usize)> = r_pieces
        .iter()
        .map(|len| (false, *len))
        .chain(w_pieces.iter().map(|len| (true, *len)))
        .collect();
    let mut order: Vec<usize> = (0..pieces.len()).collect();
    if rng.one_in(5) {
        for i in (1..order.len()).rev() {
            order.swap(i, rng.urange(0, i));
        }
        notes.push("scattered");
    }
    let mut offsets = vec![0u64; pieces.len()];
    let mut end = 0u64;
    for index in order {
        end += match rng.weighted(&[50, 30, 20]) {
            0 => 0,
            1 => rng.range(1, 63),
            _ => end.next_multiple_of(4096) - end,
        };
        offsets[index] = end;
        end += pieces[index].1 as u64;
    }
    let arena_len = end + rng.range(0, 64);
    let mut arena = rng.bytes(arena_len as usize);
    let mut at = 0;
    for (index, (write, len)) in pieces.iter().enumerate() {
        if !write {
            let offset = offsets[index] as usize;
            arena[offset..offset + len].copy_from_slice(&body.readable[at..at + len]);
            at += len;
        }
    }
    let mut list: Vec<Desc> = pieces
        .iter()
        .zip(&offsets)
        .map(|((write, len), offset)| Desc::new(Addr::Arena(*offset), *len as u32, *write))
        .collect();

    // Zero-length descriptors anywhere, pointing anywhere.
    if rng.one_in(8) {
        for _ in 0..rng.range(1, 3) {
            let addr = if rng.percent(50) && arena_len > 0 {
                Addr::Arena(rng.below(arena_len))
            } else {
                Addr::Abs(outside(rng, shape.mem_size, 0))
            };
            let at = rng.urange(0, list.len());
            list.insert(at, Desc::new(addr, 0, rng.percent(50)));
        }
        notes.push("zero-length descriptors");
    }

    // At most one malformation of the chain's contents.
    let mut relink: Option<(usize, Next)> = None;
    if rng.percent(22) {
        let nonzero: Vec<usize> = (0..list.len()).filter(|i| list[*i].len > 0).collect();
        match rng.weighted(&[3, 3, 3, 1, 2, 2, 2, 1, 1, 1]) {
            0 => {
                if let Some(first) = list.iter().position(|d| d.len > 0 && !d.write) {
                    list[first].write = true;
                    notes.push("write-only header");
                }
            }
            1 if !nonzero.is_empty() => {
                let at = rng.pick(&nonzero);
                list[at].write = !list[at].write;
                notes.push("wrong direction");
            }
            2 if !nonzero.is_empty() => {
                let at = rng.pick(&nonzero);
                list[at].addr = Addr::Abs(outside(rng, shape.mem_size, list[at].len));
                notes.push("outside memory");
            }
            3 => {
                let len = rng.range(0xffff_0000, u64::from(u32::MAX)) as u32;
                for _ in 0..2 {
                    let at = rng.urange(0, list.len());
                    let addr = Addr::Abs(shape.mem_size + rng.below(1 << 30));
                    list.insert(at, Desc::new(addr, len, rng.percent(50)));
                }
                notes.push("chain over 4 GiB");
            }
            4 => {
                let at = rng.urange(0, list.len() - 1);
                let index = rng.range(u64::from(shape.queue_size), u64::from(u16::MAX)) as u16;
                relink = Some((at, Next::Raw(index)));
                notes.push("next past the table");
            }
            5 => {
                let target = rng.urange(0, list.len() - 1);
                relink = Some((list.len() - 1, Next::Pos(target)));
                notes.push("loop");
            }
            6 => {
                if let Some(last) = list.iter().rposition(|d| d.write)
                    && list.len() > 1
                {
                    list.remove(last);
                    notes.push("no status descriptor");
                }
            }
            7 => {
                let kept: Vec<Desc> = list
                    .iter()
                    .copied()
                    .filter(|d| d.write || d.len == 0)
                    .collect();
                if !kept.is_empty() {
                    list = kept;
                    notes.push("no readable descriptor");
                }
            }
            8 => {
                // A header shorter than 16 bytes, when nothing else is readable.
                if body.readable.len() == 16
                    && let Some(first) = list.iter().position(|d| d.len > 1 && !d.write)
                {
                    list[first].len = rng.range(1, u64::from(list[first].len) - 1) as u32;
                    notes.push("short header");
                }
            }
            _ => {
                for desc in list.iter_mut().filter(|d| d.len > 0) {
                    if let Addr::Arena(_) = desc.addr
                        && rng.one_in(3)
                    {
                        desc.write = rng.percent(50);
                    }
                }
                notes.push("random directions");
            }
        }
    }
    let count = list.len();
    for (index, desc) in list.iter_mut().enumerate() {
        desc.next = if index + 1 < count {
            Next::Pos(index + 1)
        } else {
            Next::End
        };
    }
    if let Some((at, next)) = relink {
        list[at].next = next;
    }

    // An indirect table, well-formed or not; forced when the ring is full.
    let mut wire = Wire {
        arena,
        ring: list,
        table: Vec::new(),
    };
    let must = wire.ring.len() > budget;
    if must || rng.percent(22) {
        if budget == 0 || wire.ring.len() > usize::from(u16::MAX) {
            return None;
        }
        let entries = wire.ring.len();
        let mut head = Desc {
            addr: Addr::Table,
            len: (entries * 16) as u32,
            write: rng.one_in(10),
            indirect: true,
            next: Next::End,
        };
        if head.write {
            notes.push("indirect descriptor flagged writable");
        }
        wire.table = std::mem::take(&mut wire.ring);
        if !must && rng.percent(30) {
            match rng.below(6) {
                0 => {
                    head.len += rng.range(1, 15) as u32;
                    notes.push("indirect table length not whole descriptors");
                }
                1 => {
                    head.len = 0;
                    notes.push("empty indirect table");
                }
                2 => {
                    head.len = 16 * rng.range(65536, u64::from(u32::MAX / 16)) as u32;
                    notes.push("indirect table over 65535 entries");
                }
                3 => {
                    head.addr = Addr::Abs(
                        outside(rng, shape.mem_size, head.len.max(16)).max(shape.mem_size),
                    );
                    notes.push("indirect table outside memory");
                }
                4 => {
                    let at = rng.urange(0, entries - 1);
                    let next = wire.table[at].next;
                    wire.table[at] = Desc {
                        addr: Addr::Table,
                        len: 16,
                        write: false,
                        indirect: true,
                        next,
                    };
                    notes.push("nested indirect table");
                }
                _ => {
                    if entries >= 2 {
                        head.len = 16 * rng.range(1, entries as u64 - 1) as u32;
                        notes.push("indirect table shorter than its chain");
                    }
                }
            }
        } else {
            notes.push("indirect table");
        }
        wire.ring = vec![head];
    }
    Some(Laid { wire, notes })
}

/// A fixed request with no randomness: the liveness probes.
pub fn probe_body(request_type: u32, room: u32) -> Body {
    let mut header = Vec::with_capacity(16);
    header.extend_from_slice(&request_type.to_le_bytes());
    header.extend_from_slice(&[0u8; 12]);
    Body::new(
        "liveness_probe",
        super::model::type_name(request_type),
        header,
    )
    .data_in(room)
}

/// `body` as the simplest well-formed chain: one descriptor per area,
/// contiguous in the arena.
pub fn lay_plain(body: &Body) -> Wire {
    let mut arena = body.readable.clone();
    arena.resize(body.readable.len() + body.writable as usize, 0xa5);
    let mut ring = Vec::new();
    let mut start = 0usize;
    for end in body.r_cuts.iter().copied().chain([body.readable.len()]) {
        ring.push(Desc::new(
            Addr::Arena(start as u64),
            (end - start) as u32,
            false,
        ));
        start = end;
    }
    let mut start = 0u32;
    for end in body.w_cuts.iter().copied().chain([body.writable]) {
        let offset = body.readable.len() as u64 + u64::from(start);
        ring.push(Desc::new(Addr::Arena(offset), end - start, true));
        start = end;
    }
    let count = ring.len();
    for (index, desc) in ring.iter_mut().enumerate() {
        if index + 1 < count {
            desc.next = Next::Pos(index + 1);
        }
    }
    Wire {
        arena,
        ring,
        table: Vec::new(),
    }
}

/// A request with these payloads and this much room for an answer, no
/// randomness (for the harness's own tests).
pub fn fixed_body(request_type: u32, sector: u64, payloads: &[&[u8]], room: u32) -> Body {
    let mut header = Vec::with_capacity(16);
    header.extend_from_slice(&request_type.to_le_bytes());
    header.extend_from_slice(&0u32.to_le_bytes());
    header.extend_from_slice(&sector.to_le_bytes());
    let mut body = Body::new("fixed", super::model::type_name(request_type), header);
    for payload in payloads {
        body = body.payload(payload);
    }
    body.data_in(room)
}

/// A crypto_msg with reserved bytes 0.
pub fn crypto_msg_plain(slot: u32, dun: &Dun) -> Vec<u8> {
    let mut out = Vec::with_capacity(CRYPTO_MSG_SIZE);
    out.extend_from_slice(&slot.to_le_bytes());
    out.extend_from_slice(&[0u8; 4]);
    for word in dun {
        out.extend_from_slice(&word.to_le_bytes());
    }
    out
}
