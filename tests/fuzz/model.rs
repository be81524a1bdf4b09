//! The model of the device: what docs/PROTOCOL.md says a request must do,
//! computed from the bytes in guest memory alone (never from what the
//! generator meant to send).
//!
//! [`predict`] takes a request's [`Wire`] and gives every outcome the
//! device may choose: usually exactly one; for a crypto request racing
//! with keyslot commands on the control queue, one per state its slot
//! went through during the batch. [`check`] compares what came back with
//! those outcomes. Ciphertext comes from the `xts-mode` oracle.

use super::wire::{self, Walk, Wire};
use std::fmt::Write as _;

// Request types (docs/PROTOCOL.md, "Requests"; VIRTIO 1.2 §5.2.6).
pub const T_IN: u32 = 0;
pub const T_OUT: u32 = 1;
pub const T_FLUSH: u32 = 4;
pub const T_GET_ID: u32 = 8;
pub const T_DISCARD: u32 = 11;
pub const T_WRITE_ZEROES: u32 = 13;
pub const T_CRYPTO_OUT: u32 = 27;
pub const T_CRYPTO_IN: u32 = 28;
pub const T_GET_CRYPTO_MODES: u32 = 29;
pub const T_PROGRAM: u32 = 30;
pub const T_EVICT: u32 = 31;

pub const OK: u8 = 0;
pub const IOERR: u8 = 1;
pub const UNSUPP: u8 = 2;

pub const SECTOR: u64 = 512;
pub const KEY_DESC_SIZE: usize = 152;
pub const CRYPTO_MSG_SIZE: usize = 40;
/// `max_discard_seg` of the device.
pub const MAX_DISCARD_SEG: u64 = 32;
/// `max_discard_sectors` of the device.
pub const MAX_DISCARD_SECTORS: u32 = u32::MAX / 512;

/// The engine's capabilities.
#[derive(Clone, Copy, Debug)]
pub struct Caps {
    pub slots: u32,
    pub max_dun_bytes: u32,
    /// `modes[1]`: bit i set means 2^i-byte data units.
    pub dus_mask: u32,
}

impl Caps {
    /// The supported data unit sizes.
    pub fn sizes(&self) -> Vec<u32> {
        (9..32)
            .filter(|bit| self.dus_mask & (1 << bit) != 0)
            .map(|bit| 1 << bit)
            .collect()
    }
}

/// What the device is, as far as requests can tell.
#[derive(Clone, Debug)]
pub struct Shape {
    /// `None`: `--no-inline-encryption`.
    pub caps: Option<Caps>,
    /// The driver acked INLINE_ENCRYPTION and CTRL_VQ.
    pub crypto_negotiated: bool,
    pub read_only: bool,
    /// Bytes, a multiple of 512.
    pub capacity: u64,
    /// `seg_max * size_max`.
    pub max_data_bytes: u64,
    /// The GET_ID answer.
    pub serial: [u8; 20],
    /// Entries per virtqueue (the frontend's).
    pub queue_size: u16,
    /// Bytes of guest memory.
    pub mem_size: u64,
}

/// Which kind of queue a request is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Request,
    Control,
}

/// A programmed key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Key {
    pub key: [u8; 64],
    pub dus: u32,
    pub dun_bytes: u32,
    /// Number of the program command that put it there (for messages).
    pub id: u64,
}

/// A keyslot: empty or holding a key.
pub type Slot = Option<Key>;

/// A 256-bit DUN, word 0 least significant.
pub type Dun = [u64; 4];

/// One state a slot can be in for a request: its index in the slot's
/// history during the batch, and the state.
pub type Candidate = (usize, Slot);

/// A change of the image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    Bytes { offset: u64, data: Vec<u8> },
    Zero { offset: u64, len: u64 },
}

impl Effect {
    pub fn apply(&self, image: &mut [u8]) {
        match self {
            Effect::Bytes { offset, data } => {
                image[*offset as usize..*offset as usize + data.len()].copy_from_slice(data)
            }
            Effect::Zero { offset, len } => {
                image[*offset as usize..(*offset + *len) as usize].fill(0)
            }
        }
    }

    /// True when `image` shows this effect.
    pub fn shown_by(&self, image: &[u8]) -> bool {
        match self {
            Effect::Bytes { offset, data } => {
                image.get(*offset as usize..*offset as usize + data.len()) == Some(&data[..])
            }
            Effect::Zero { offset, len } => image
                .get(*offset as usize..(*offset + *len) as usize)
                .is_some_and(|range| range.iter().all(|b| *b == 0)),
        }
    }
}

/// One outcome the device may choose.
#[derive(Clone, Debug)]
pub struct Alt {
    /// Why, in words (`OK`, `IOERR: slot 3 is empty`, ...).
    pub why: String,
    /// The status byte; `None` when the chain has no room for one.
    pub status: Option<u8>,
    /// The used length.
    pub used_len: u32,
    /// The answer, written at the start of the writable stream.
    pub answer: Vec<u8>,
    /// What happens to the image.
    pub effects: Vec<Effect>,
    /// A keyslot command's new slot state.
    pub slot_change: Option<(u32, Slot)>,
    /// Index of the slot state the outcome used (races).
    pub candidate: Option<usize>,
    /// The stats counter a success increments.
    pub counter: Option<&'static str>,
}

impl Alt {
    fn refused(status: u8, why: impl Into<String>) -> Self {
        Self {
            why: why.into(),
            status: Some(status),
            used_len: 1,
            answer: Vec::new(),
            effects: Vec::new(),
            slot_change: None,
            candidate: None,
            counter: None,
        }
    }

    fn ok(counter: &'static str) -> Self {
        Self {
            why: "OK".to_owned(),
            status: Some(OK),
            used_len: 1,
            answer: Vec::new(),
            effects: Vec::new(),
            slot_change: None,
            candidate: None,
            counter: Some(counter),
        }
    }

    fn answer(mut self, answer: Vec<u8>) -> Self {
        self.used_len = answer.len() as u32 + 1;
        self.answer = answer;
        self
    }

    /// The arena as it must look afterwards.
    pub fn expected_arena(&self, wire: &Wire, walk: &Walk) -> Vec<u8> {
        let mut arena = wire.arena.clone();
        walk.write_stream(&mut arena, &self.answer);
        if let (Some(at), Some(status)) = (walk.status_at(), self.status) {
            arena[at as usize] = status;
        }
        arena
    }
}

/// Every outcome allowed for one request.
#[derive(Clone, Debug)]
pub struct Prediction {
    pub walk: Walk,
    pub alts: Vec<Alt>,
    /// The request type in the header, when there is a header.
    pub request_type: Option<u32>,
    /// The slot a crypto request names.
    pub slot: Option<u32>,
}

/// The request types, for messages.
pub fn type_name(request_type: u32) -> String {
    match request_type {
        T_IN => "IN".into(),
        T_OUT => "OUT".into(),
        T_FLUSH => "FLUSH".into(),
        T_GET_ID => "GET_ID".into(),
        T_DISCARD => "DISCARD".into(),
        T_WRITE_ZEROES => "WRITE_ZEROES".into(),
        T_CRYPTO_OUT => "CRYPTO_OUT".into(),
        T_CRYPTO_IN => "CRYPTO_IN".into(),
        T_GET_CRYPTO_MODES => "GET_CRYPTO_MODES".into(),
        T_PROGRAM => "KEYSLOT_PROGRAM".into(),
        T_EVICT => "KEYSLOT_EVICT".into(),
        32..=35 => format!("HW_KEY_{request_type}"),
        other => format!("type {other}"),
    }
}

fn le32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

fn le64(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

/// `dun + n`, or `None` past 2^256 - 1.
pub fn dun_add(dun: &Dun, n: u64) -> Option<Dun> {
    let mut out = *dun;
    let mut carry = n;
    for word in &mut out {
        let (sum, overflow) = word.overflowing_add(carry);
        *word = sum;
        carry = u64::from(overflow);
    }
    (carry == 0).then_some(out)
}

/// Bytes needed to write `dun` (0 for 0).
pub fn dun_bytes_needed(dun: &Dun) -> u32 {
    for index in (0..4).rev() {
        if dun[index] != 0 {
            return index as u32 * 8 + (64 - dun[index].leading_zeros()).div_ceil(8);
        }
    }
    0
}

/// The oracle: AES-256-XTS (IEEE 1619) of whole data units, tweak = DUN
/// as a 16-byte little-endian number, by the `xts-mode` crate.
pub fn xts(key: &Key, data: &[u8], dun: &Dun, encrypt: bool) -> Vec<u8> {
    let tweak = u128::from(dun[0]) | (u128::from(dun[1]) << 64);
    if encrypt {
        crate::ice::oracle_encrypt(&key.key, data, key.dus as usize, tweak)
    } else {
        crate::ice::oracle_decrypt(&key.key, data, key.dus as usize, tweak)
    }
}

/// The byte range of a data transfer, or the refusal (`checked_range`).
fn data_range(shape: &Shape, sector: u64, len: u64, writes: bool) -> Result<(u64, u64), String> {
    if writes && shape.read_only {
        return Err("write to a read-only device".into());
    }
    if len == 0 {
        return Err("no data".into());
    }
    if !len.is_multiple_of(SECTOR) {
        return Err(format!("{len} bytes is not a multiple of 512"));
    }
    if len > shape.max_data_bytes {
        return Err(format!("{len} bytes > {} max", shape.max_data_bytes));
    }
    sector_range(shape, sector, len / SECTOR)
}

fn sector_range(shape: &Shape, sector: u64, sectors: u64) -> Result<(u64, u64), String> {
    let offset = sector
        .checked_mul(SECTOR)
        .ok_or_else(|| format!("sector {sector} overflows"))?;
    match offset.checked_add(sectors * SECTOR) {
        Some(end) if end <= shape.capacity => Ok((offset, sectors * SECTOR)),
        _ => Err(format!(
            "sectors {sector}+{sectors} beyond capacity {}",
            shape.capacity / SECTOR
        )),
    }
}

/// The key a CRYPTO_IN/OUT may use with slot state `slot`.
fn crypto_key<'a>(
    slot: &'a Slot,
    index: u32,
    offset: u64,
    len: u64,
    dun: &Dun,
) -> Result<&'a Key, String> {
    let key = slot
        .as_ref()
        .ok_or_else(|| format!("slot {index} is empty"))?;
    let unit = u64::from(key.dus);
    if !offset.is_multiple_of(unit) {
        return Err(format!(
            "offset {offset} not aligned to the {unit}-byte data unit (key #{})",
            key.id
        ));
    }
    if !len.is_multiple_of(unit) {
        return Err(format!(
            "{len} bytes not whole {unit}-byte data units (key #{})",
            key.id
        ));
    }
    let fits =
        dun_add(dun, len / unit - 1).is_some_and(|last| dun_bytes_needed(&last) <= key.dun_bytes);
    if !fits {
        return Err(format!(
            "DUN {dun:x?} + {} units overflows {} DUN bytes (key #{})",
            len / unit,
            key.dun_bytes,
            key.id
        ));
    }
    Ok(key)
}

/// Every outcome the device may choose for `wire` on a queue of `role`,
/// with the image as `image` and `candidates(slot)` the states slot
/// `slot` may be in (one, unless it races with the control queue).
pub fn predict(
    shape: &Shape,
    role: Role,
    wire: &Wire,
    image: &[u8],
    candidates: &dyn Fn(u32) -> Vec<Candidate>,
) -> Prediction {
    let walk = wire::walk(wire, shape.queue_size, shape.mem_size);
    let mut prediction = Prediction {
        walk,
        alts: Vec::new(),
        request_type: None,
        slot: None,
    };
    let walk = &prediction.walk;
    if walk.status_at().is_none() {
        let mut alt = Alt::refused(0, "no writable byte for a status");
        alt.status = None;
        alt.used_len = 0;
        prediction.alts.push(alt);
        return prediction;
    }
    if let Some(error) = walk.error {
        prediction
            .alts
            .push(Alt::refused(IOERR, format!("malformed chain: {error}")));
        return prediction;
    }
    let readable = walk.readable_bytes(&wire.arena);
    if readable.len() < 16 {
        prediction.alts.push(Alt::refused(
            IOERR,
            format!("header of {} bytes", readable.len()),
        ));
        return prediction;
    }
    let request_type = le32(&readable, 0);
    prediction.request_type = Some(request_type);
    let sector = le64(&readable, 8);
    let rest = &readable[16..];
    let room = walk.writable_len() - 1;
    let crypto = (27..=35).contains(&request_type);
    let control_command = (29..=35).contains(&request_type);
    let wrong_queue = match role {
        Role::Control => !control_command,
        Role::Request => control_command,
    };
    let refusal = if crypto && shape.caps.is_none() {
        Some("crypto request to a device without an engine")
    } else if wrong_queue {
        Some("request on the wrong kind of queue")
    } else if crypto && !shape.crypto_negotiated {
        Some("crypto not negotiated")
    } else {
        None
    };
    if let Some(why) = refusal {
        prediction.alts.push(Alt::refused(UNSUPP, why));
        return prediction;
    }
    let alts = match request_type {
        T_IN => match data_range(shape, sector, room, false) {
            Ok((offset, len)) => vec![
                Alt::ok("plain_in")
                    .answer(image[offset as usize..(offset + len) as usize].to_vec()),
            ],
            Err(why) => vec![Alt::refused(IOERR, why)],
        },
        T_OUT => match data_range(shape, sector, rest.len() as u64, true) {
            Ok((offset, _)) => {
                let mut alt = Alt::ok("plain_out");
                alt.effects.push(Effect::Bytes {
                    offset,
                    data: rest.to_vec(),
                });
                vec![alt]
            }
            Err(why) => vec![Alt::refused(IOERR, why)],
        },
        T_CRYPTO_OUT | T_CRYPTO_IN => predict_crypto(
            shape,
            request_type,
            sector,
            rest,
            room,
            image,
            candidates,
            &mut prediction.slot,
        ),
        T_FLUSH => vec![Alt::ok("flush")],
        T_GET_ID => {
            if room < 20 {
                vec![Alt::refused(
                    IOERR,
                    format!("GET_ID answer room {room} < 20"),
                )]
            } else {
                vec![Alt::ok("queries").answer(shape.serial.to_vec())]
            }
        }
        T_DISCARD | T_WRITE_ZEROES => vec![predict_discard(shape, request_type, rest)],
        T_GET_CRYPTO_MODES => {
            if room < 8 {
                vec![Alt::refused(IOERR, format!("modes answer room {room} < 8"))]
            } else {
                let caps = shape.caps.expect("checked above");
                let mut answer = vec![0u8; 8];
                answer[4..].copy_from_slice(&caps.dus_mask.to_le_bytes());
                vec![Alt::ok("queries").answer(answer)]
            }
        }
        T_PROGRAM | T_EVICT => vec![predict_keyslot(shape, request_type, rest)],
        _ => vec![Alt::refused(
            UNSUPP,
            format!("unsupported request type {request_type}"),
        )],
    };
    prediction.alts = alts;
    prediction
}

#[allow(clippy::too_many_arguments)]
fn predict_crypto(
    shape: &Shape,
    request_type: u32,
    sector: u64,
    rest: &[u8],
    room: u64,
    image: &[u8],
    candidates: &dyn Fn(u32) -> Vec<Candidate>,
    slot_out: &mut Option<u32>,
) -> Vec<Alt> {
    if rest.len() < CRYPTO_MSG_SIZE {
        return vec![Alt::refused(
            IOERR,
            format!("crypto_msg of {} bytes", rest.len()),
        )];
    }
    let slot = le32(rest, 0);
    *slot_out = Some(slot);
    let dun: Dun = [
        le64(rest, 8),
        le64(rest, 16),
        le64(rest, 24),
        le64(rest, 32),
    ];
    let data = &rest[CRYPTO_MSG_SIZE..];
    let out = request_type == T_CRYPTO_OUT;
    let len = if out { data.len() as u64 } else { room };
    let (offset, len) = match data_range(shape, sector, len, out) {
        Ok(range) => range,
        Err(why) => return vec![Alt::refused(IOERR, why)],
    };
    let caps = shape.caps.expect("crypto negotiated");
    if slot >= caps.slots {
        return vec![Alt::refused(IOERR, format!("slot {slot} out of range"))];
    }
    let mut alts = Vec::new();
    for (index, state) in candidates(slot) {
        let mut alt = match crypto_key(&state, slot, offset, len, &dun) {
            Err(why) => Alt::refused(IOERR, why),
            Ok(key) if out => {
                let mut alt = Alt::ok("crypto_out");
                alt.why = format!("OK with key #{}", key.id);
                alt.effects.push(Effect::Bytes {
                    offset,
                    data: xts(key, data, &dun, true),
                });
                alt
            }
            Ok(key) => {
                let stored = &image[offset as usize..(offset + len) as usize];
                let mut alt = Alt::ok("crypto_in").answer(xts(key, stored, &dun, false));
                alt.why = format!("OK with key #{}", key.id);
                alt
            }
        };
        alt.candidate = Some(index);
        alts.push(alt);
    }
    alts
}

fn predict_discard(shape: &Shape, request_type: u32, payload: &[u8]) -> Alt {
    let name = type_name(request_type);
    if shape.read_only {
        return Alt::refused(IOERR, format!("{name} on a read-only device"));
    }
    let count = payload.len() as u64 / 16;
    if count == 0 || !payload.len().is_multiple_of(16) {
        return Alt::refused(IOERR, format!("{name} payload of {} bytes", payload.len()));
    }
    if count > MAX_DISCARD_SEG {
        return Alt::refused(IOERR, format!("{name} with {count} segments"));
    }
    let allowed_flags = if request_type == T_WRITE_ZEROES { 1 } else { 0 };
    let mut effects = Vec::new();
    for index in 0..count as usize {
        let segment = &payload[index * 16..index * 16 + 16];
        let sector = le64(segment, 0);
        let sectors = le32(segment, 8);
        let flags = le32(segment, 12);
        if flags & !allowed_flags != 0 {
            return Alt::refused(UNSUPP, format!("{name} segment {index} flags {flags:#x}"));
        }
        if sectors > MAX_DISCARD_SECTORS {
            return Alt::refused(
                IOERR,
                format!("{name} segment {index} of {sectors} sectors"),
            );
        }
        match sector_range(shape, sector, u64::from(sectors)) {
            Ok((offset, len)) => effects.push(Effect::Zero { offset, len }),
            Err(why) => return Alt::refused(IOERR, format!("{name} segment {index}: {why}")),
        }
    }
    let mut alt = Alt::ok(if request_type == T_DISCARD {
        "discard"
    } else {
        "write_zeroes"
    });
    alt.effects = effects;
    alt
}

fn predict_keyslot(shape: &Shape, request_type: u32, payload: &[u8]) -> Alt {
    let caps = shape.caps.expect("control queue implies an engine");
    if payload.len() != KEY_DESC_SIZE {
        return Alt::refused(IOERR, format!("key_desc of {} bytes", payload.len()));
    }
    let slot = le32(payload, 0);
    if slot >= caps.slots {
        return Alt::refused(IOERR, format!("slot {slot} out of range"));
    }
    if request_type == T_EVICT {
        let mut alt = Alt::ok("evicted");
        alt.slot_change = Some((slot, None));
        alt.why = format!("OK: slot {slot} evicted");
        return alt;
    }
    let key_size = le32(payload, 132);
    let mode = le32(payload, 136);
    let key_type = le32(payload, 140);
    let bits = le32(payload, 144);
    let dun_bytes = le32(payload, 148);
    if mode != 1 {
        return Alt::refused(UNSUPP, format!("crypto_mode {mode}"));
    }
    if key_type != 1 {
        return Alt::refused(UNSUPP, format!("key_type {key_type}"));
    }
    if key_size != 64 {
        return Alt::refused(IOERR, format!("key_size {key_size}"));
    }
    if bits >= 32 || caps.dus_mask & (1 << bits) == 0 {
        return Alt::refused(UNSUPP, format!("data unit size 2^{bits}"));
    }
    if dun_bytes == 0 {
        return Alt::refused(IOERR, "dun_bytes 0");
    }
    if dun_bytes > caps.max_dun_bytes {
        return Alt::refused(
            UNSUPP,
            format!("dun_bytes {dun_bytes} > {}", caps.max_dun_bytes),
        );
    }
    let mut key = [0u8; 64];
    key.copy_from_slice(&payload[4..68]);
    let mut alt = Alt::ok("programmed");
    alt.why = format!("OK: slot {slot} programmed");
    alt.slot_change = Some((
        slot,
        Some(Key {
            key,
            dus: 1 << bits,
            dun_bytes,
            id: 0,
        }),
    ));
    alt
}

/// What came back for one request.
#[derive(Clone, Debug)]
pub struct Observed {
    pub used_len: u32,
    /// The whole arena after completion.
    pub arena: Vec<u8>,
}

/// The outcomes of `prediction` that `observed` matches (status, used
/// length, every byte of the request's guest memory), or a description
/// of the mismatch.
pub fn check(
    wire: &Wire,
    prediction: &Prediction,
    observed: &Observed,
) -> Result<Vec<usize>, String> {
    let walk = &prediction.walk;
    let mut matching = Vec::new();
    for (index, alt) in prediction.alts.iter().enumerate() {
        if alt.used_len == observed.used_len && alt.expected_arena(wire, walk) == observed.arena {
            matching.push(index);
        }
    }
    if !matching.is_empty() {
        return Ok(matching);
    }
    let status = walk
        .status_at()
        .map(|at| format!("{}", observed.arena[at as usize]))
        .unwrap_or_else(|| "none".into());
    let mut message = format!(
        "the device answered status {status}, used length {}, which no allowed outcome matches:",
        observed.used_len
    );
    for alt in &prediction.alts {
        let expected = alt.expected_arena(wire, walk);
        let _ = write!(
            message,
            "\n  - allowed: {}: status {}, used length {}",
            alt.why,
            alt.status.map_or("none".to_string(), |s| s.to_string()),
            alt.used_len
        );
        if let Some(at) = expected
            .iter()
            .zip(&observed.arena)
            .position(|(a, b)| a != b)
        {
            let area = describe_offset(walk, at as u64);
            let _ = write!(
                message,
                "; guest memory differs first at arena byte {at} ({area}): expected {:02x?}, got {:02x?}",
                &expected[at..(at + 8).min(expected.len())],
                &observed.arena[at..(at + 8).min(observed.arena.len())]
            );
        }
    }
    Err(message)
}

/// Which part of the request an arena offset belongs to.
fn describe_offset(walk: &Walk, at: u64) -> String {
    let mut stream = 0u64;
    for (offset, len) in &walk.writable {
        if (*offset..offset + u64::from(*len)).contains(&at) {
            return format!("writable stream byte {}", stream + at - offset);
        }
        stream += u64::from(*len);
    }
    let mut stream = 0u64;
    for (offset, len) in &walk.readable {
        if (*offset..offset + u64::from(*len)).contains(&at) {
            return format!(
                "readable stream byte {} (the device must not write it)",
                stream + at - offset
            );
        }
        stream += u64::from(*len);
    }
    "memory the device did not collect (it must not write it)".into()
}

/// The first difference between the model's image and the file, as a
/// message, or `None` when they are equal.
pub fn compare_image(model: &[u8], disk: &[u8]) -> Option<String> {
    if model.len() != disk.len() {
        return Some(format!(
            "the image file is {} bytes, the model's {} bytes",
            disk.len(),
            model.len()
        ));
    }
    let at = model.iter().zip(disk).position(|(a, b)| a != b)?;
    let differing = model.iter().zip(disk).filter(|(a, b)| a != b).count();
    Some(format!(
        "the image differs from the model at byte {at} (sector {}; {differing} bytes differ): \
         expected {:02x?}, on disk {:02x?}",
        at as u64 / SECTOR,
        &model[at..(at + 16).min(model.len())],
        &disk[at..(at + 16).min(disk.len())]
    ))
}
