//! What a check works with: its context ([`Ctx`]: the device's advertised
//! capabilities, fresh connections, test keys), one vhost-user session
//! ([`Session`]), requests that describe themselves ([`Op`]) and the
//! device's answers ([`Reply`]).
//!
//! Everything the device returns is untrusted: a status byte the spec does
//! not define, a short answer, a timeout or a hang-up become a
//! [`Failure`] naming the request, never a panic.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use icelab_frontend::blk::{BlkQueue, Request};
use icelab_frontend::{Frontend, FrontendOptions};
use icelab_protocol::{
    CryptoMode, CryptoMsg, DEVICE_ID_BYTES, Dun, KeyDesc, KeyType, OutHeader, RequestType, Status,
};

use crate::check::{Failure, Stop};
use crate::device::{CryptoInfo, DeviceInfo};
use crate::oracle::TestKey;
use zeroize::Zeroizing;

/// Where checks put their data: sector 128 (64 KiB), aligned to every
/// data unit size up to 64 KiB. Nothing is written past 1 MiB.
pub const AREA_SECTOR: u64 = 128;

/// Guest memory of each connection.
const MEMORY_SIZE: u64 = 16 << 20;

/// How checks connect.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The device's vhost-user socket.
    pub socket: PathBuf,
    /// Longest wait for one request or vhost-user message.
    pub timeout: Duration,
}

impl Settings {
    /// The frontend options of every connection.
    pub fn frontend_options(&self) -> FrontendOptions {
        FrontendOptions {
            memory_size: MEMORY_SIZE,
            socket_timeout: self.timeout,
            connect_timeout: self.timeout,
            ..FrontendOptions::default()
        }
    }
}

/// A check's view of the device under test.
pub struct Ctx<'a> {
    /// What the probe found: offered features, config, crypto modes.
    pub device: &'a DeviceInfo,
    /// The data unit size of a [`crate::check::Param::PerDataUnitSize`]
    /// check.
    pub data_unit_size: Option<u32>,
    settings: &'a Settings,
    keys: u32,
    /// Connections that failed during this check.
    pub(crate) connect_failures: u32,
}

impl<'a> Ctx<'a> {
    /// A context for one check.
    pub fn new(
        device: &'a DeviceInfo,
        settings: &'a Settings,
        data_unit_size: Option<u32>,
    ) -> Self {
        Self {
            device,
            data_unit_size,
            settings,
            keys: 0,
            connect_failures: 0,
        }
    }

    /// The per-request timeout.
    pub fn timeout(&self) -> Duration {
        self.settings.timeout
    }

    /// A new vhost-user session acking every offered feature the frontend
    /// knows.
    pub fn connect(&mut self) -> Result<Session, Failure> {
        self.connect_with(|_| {})
    }

    /// A new session with options edited by `edit` (e.g. a feature
    /// withheld).
    pub fn connect_with(
        &mut self,
        edit: impl FnOnce(&mut FrontendOptions),
    ) -> Result<Session, Failure> {
        let mut options = self.settings.frontend_options();
        edit(&mut options);
        Session::open(&self.settings.socket, &options, self.settings.timeout).map_err(|error| {
            self.connect_failures += 1;
            Failure::new(format!(
                "cannot open a vhost-user session on {}: {} (the device must accept a new \
                 connection for every check; with icelab serve, pass --persist)",
                self.settings.socket.display(),
                error_chain(&error)
            ))
        })
    }

    /// The device's inline-encryption capabilities; a skip when it does not
    /// offer VIRTIO_BLK_F_INLINE_ENCRYPTION, a failure when what it
    /// advertises cannot be used.
    pub fn crypto(&self) -> Result<CryptoInfo, Stop> {
        self.device.crypto()
    }

    /// The data unit size of this check instance (per-size checks), else
    /// the preferred one.
    pub fn data_unit_size(&self, crypto: &CryptoInfo) -> u32 {
        self.data_unit_size
            .unwrap_or_else(|| crypto.default_data_unit_size())
    }

    /// A fresh random AES-256-XTS key, named "key #n" in descriptions.
    pub fn new_key(&mut self) -> TestKey {
        self.keys += 1;
        TestKey::random(self.keys)
    }
}

/// Which queue a request goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Q {
    /// Request queue 0.
    Request,
    /// The control queue (the last virtqueue).
    Control,
}

/// One vhost-user session with its queues.
pub struct Session {
    frontend: Frontend,
    requests: Vec<BlkQueue>,
    control: Option<BlkQueue>,
    timeout: Duration,
}

impl Session {
    /// Connects with `options` and takes every queue.
    pub(crate) fn open(
        socket: &std::path::Path,
        options: &FrontendOptions,
        timeout: Duration,
    ) -> icelab_frontend::Result<Self> {
        let mut frontend = Frontend::connect(socket, options)?;
        let requests = frontend.take_blk_queues()?;
        let control = frontend
            .take_control_queue()
            .map(BlkQueue::new)
            .transpose()?;
        Ok(Self {
            frontend,
            requests,
            control,
            timeout,
        })
    }

    /// The negotiated frontend (features, config, raw vhost-user).
    pub fn frontend(&mut self) -> &mut Frontend {
        &mut self.frontend
    }

    /// Names queue `q` as requests are described.
    pub fn queue_name(&self, q: Q) -> String {
        match q {
            Q::Request => "request queue 0".into(),
            Q::Control => match self.frontend.control_queue_index() {
                Some(index) => format!("the control queue (virtqueue {index})"),
                None => "the control queue (not negotiated)".into(),
            },
        }
    }

    /// The description of `op` on `q`, as failures show it.
    pub fn describe(&self, q: Q, op: &Op) -> String {
        op.describe(&self.queue_name(q))
    }

    /// Sends `op` on `q` and waits for its completion.
    pub fn run(&mut self, q: Q, op: &Op) -> Result<Reply, Failure> {
        let description = self.describe(q, op);
        let timeout = self.timeout;
        let queue = match q {
            Q::Request => self.requests.first_mut(),
            Q::Control => self.control.as_mut(),
        };
        let Some(queue) = queue else {
            return Err(Failure::new(format!(
                "cannot send {}: the session has no such queue (VIRTIO_BLK_F_CTRL_VQ not negotiated?)",
                op.kind
            ))
            .request(description));
        };
        match queue.submit_and_wait(&op.request, timeout) {
            Ok(completion) => Ok(Reply {
                status: completion.status,
                used_len: completion.used_len,
                data: Zeroizing::new(completion.data.clone()),
                hidden: op.hide_answer,
            }),
            Err(error) => Err(
                Failure::new(format!("{} got no completion: {error}", op.kind))
                    .request(description)
                    .response(format!("none ({error})")),
            ),
        }
    }

    /// Sends `op` on `q` and fails unless the status is `want`. `what`
    /// names the step in the failure message.
    pub fn expect(&mut self, q: Q, op: &Op, want: Status, what: &str) -> Result<Reply, Failure> {
        let reply = self.run(q, op)?;
        if reply.status() == Some(want) {
            Ok(reply)
        } else {
            Err(Failure::new(format!(
                "{what}: expected status {}, got {}",
                status_name(want as u8),
                status_name(reply.status)
            ))
            .request(self.describe(q, op))
            .response(reply.describe()))
        }
    }

    /// Programs `key` into `slot` (OK expected).
    pub fn program(
        &mut self,
        key: &TestKey,
        slot: u32,
        data_unit_size: u32,
        dun_bytes: u32,
    ) -> Result<(), Failure> {
        let op = Op::program(&key.desc(slot, data_unit_size, dun_bytes), key.name());
        self.expect(
            Q::Control,
            &op,
            Status::Ok,
            &format!("programming slot {slot}"),
        )?;
        Ok(())
    }

    /// Evicts `slot` (OK expected).
    pub fn evict(&mut self, slot: u32) -> Result<(), Failure> {
        self.expect(
            Q::Control,
            &Op::evict(slot),
            Status::Ok,
            &format!("evicting slot {slot}"),
        )?;
        Ok(())
    }

    /// Plain-writes random bytes at `sector` and returns them.
    pub fn fill(&mut self, sector: u64, len: usize) -> Result<Vec<u8>, Failure> {
        let data = random_bytes(len);
        self.expect(
            Q::Request,
            &Op::write(sector, data.clone()),
            Status::Ok,
            "plain OUT preparing the area",
        )?;
        Ok(data)
    }

    /// Plain-reads `len` bytes at `sector`.
    pub fn read_plain(&mut self, sector: u64, len: usize, what: &str) -> Result<Reply, Failure> {
        let len = u32::try_from(len).map_err(|_| {
            Failure::new(format!("{what}: {len} bytes is too long for one request"))
        })?;
        let op = Op::read(sector, len);
        let reply = self.expect(Q::Request, &op, Status::Ok, what)?;
        let wanted = u64::from(len) + 1;
        if u64::from(reply.used_len) < wanted {
            return Err(Failure::new(format!(
                "{what}: used length {} is less than the {len} bytes read plus the status byte",
                reply.used_len
            ))
            .request(self.describe(Q::Request, &op))
            .response(reply.describe()));
        }
        Ok(reply)
    }

    /// CRYPTO_OUT of random data and CRYPTO_IN of the same range both get
    /// `want` on `q`, and the refused write leaves the image untouched;
    /// `what` ends both descriptions (`CRYPTO_OUT {what}`).
    pub fn crypto_refused(
        &mut self,
        q: Q,
        at: &CryptoRange,
        want: Status,
        what: &str,
    ) -> Result<(), Failure> {
        let len = at.len as usize;
        let write = Op::crypto_write(at.sector, at.slot, at.dun, random_bytes(len), at.unit);
        let out = format!("CRYPTO_OUT {what}");
        self.refused_untouched(q, &write, want, at.sector, len, &out)?;
        let read = Op::crypto_read(at.sector, at.slot, at.dun, at.len, at.unit);
        self.expect(q, &read, want, &format!("CRYPTO_IN {what}"))?;
        Ok(())
    }

    /// Sends `op` (a request the device must refuse with `want`) after
    /// filling its area, then checks the area still holds what was
    /// there: "nothing is read from or written to the image".
    pub fn refused_untouched(
        &mut self,
        q: Q,
        op: &Op,
        want: Status,
        sector: u64,
        len: usize,
        what: &str,
    ) -> Result<(), Failure> {
        let before = self.fill(sector, len)?;
        self.expect(q, op, want, what)?;
        let after = self.read_plain(sector, len, "plain IN reading the area back")?;
        if let Some(at) = first_difference(&before, &after.data) {
            return Err(Failure::new(format!(
                "{what}: the device refused the request but the image changed at byte {at} \
                 of sector {sector} (refused requests must leave the image untouched)"
            ))
            .request(self.describe(q, op))
            .response(after.describe()));
        }
        Ok(())
    }
}

/// The range of a pair of crypto requests: slot, first sector and DUN,
/// length, and the data unit size their description names.
pub struct CryptoRange {
    /// First sector.
    pub sector: u64,
    /// Keyslot.
    pub slot: u32,
    /// DUN of the first data unit.
    pub dun: Dun,
    /// Bytes.
    pub len: u32,
    /// Data unit size, for the description.
    pub unit: Option<u32>,
}

/// `error` and its sources, joined with ": ".
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The device's answer to one request.
#[derive(Clone, PartialEq, Eq)]
pub struct Reply {
    /// The status byte as written (0xff: not written).
    pub status: u8,
    /// The used element's length.
    pub used_len: u32,
    /// The device-writable bytes before the status byte (wiped when
    /// dropped; never shown when the answer may hold key material).
    pub data: Zeroizing<Vec<u8>>,
    hidden: bool,
}

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl Reply {
    /// The status, `None` for a value the spec does not define.
    pub fn status(&self) -> Option<Status> {
        Status::from_wire(self.status)
    }

    /// Status, used length and the first bytes of the data.
    pub fn describe(&self) -> String {
        let mut out = format!(
            "status {}, used length {}",
            status_name(self.status),
            self.used_len
        );
        if self.hidden {
            out.push_str(", data withheld (may hold key material)");
        } else if !self.data.is_empty() {
            let _ = write!(out, ", data {}", hex_prefix(&self.data));
        }
        out
    }
}

/// "OK (0)", "IOERR (1)", "UNSUPP (2)", or what an undefined byte means.
pub fn status_name(status: u8) -> String {
    match Status::from_wire(status) {
        Some(Status::Ok) => "OK (0)".into(),
        Some(Status::IoErr) => "IOERR (1)".into(),
        Some(Status::Unsupp) => "UNSUPP (2)".into(),
        None if status == icelab_frontend::blk::STATUS_NOT_WRITTEN => {
            "none (the status byte was not written)".into()
        }
        None => format!("{status} (undefined)"),
    }
}

/// The first 16 bytes in hex, with the total length.
pub fn hex_prefix(data: &[u8]) -> String {
    let mut out = String::new();
    for byte in data.iter().take(16) {
        let _ = write!(out, "{byte:02x}");
    }
    if data.len() > 16 {
        let _ = write!(out, "... ({} bytes)", data.len());
    } else {
        let _ = write!(out, " ({} bytes)", data.len());
    }
    out
}

/// Index of the first byte where `a` and `b` differ (a length difference
/// counts).
pub fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .or_else(|| (a.len() != b.len()).then(|| a.len().min(b.len())))
}

/// Random bytes.
pub fn random_bytes(len: usize) -> Vec<u8> {
    let mut data = vec![0u8; len];
    rand::fill(&mut data[..]);
    data
}

/// A DUN in hex.
pub fn dun_text(dun: &Dun) -> String {
    let [a, b, c, d] = dun.0;
    if c == 0 && d == 0 {
        format!("{:#x}", dun.low_u128())
    } else {
        format!("0x{d:016x}{c:016x}{b:016x}{a:016x}")
    }
}

/// A request plus everything needed to describe it exactly (never the key
/// bytes).
#[derive(Clone)]
pub struct Op {
    request: Request,
    kind: RequestType,
    detail: String,
    /// (what, bytes, device-writable), in descriptor order.
    chain: Vec<(String, u64, bool)>,
    hide_answer: bool,
}

impl std::fmt::Debug for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe("a queue"))
    }
}

impl Op {
    fn new(request: Request, detail: String, middle: &[(&'static str, u64, bool)]) -> Self {
        let kind = request.request_type();
        let mut chain = vec![("outhdr".to_owned(), OutHeader::SIZE as u64, false)];
        chain.extend(
            middle
                .iter()
                .filter(|(_, len, _)| *len > 0)
                .map(|(what, len, writable)| ((*what).to_owned(), *len, *writable)),
        );
        chain.push(("status".to_owned(), 1, true));
        Self {
            request,
            kind,
            detail,
            chain,
            hide_answer: false,
        }
    }

    /// Any request, described by the caller: `middle` lists the
    /// descriptors between the outhdr and the status byte.
    pub fn custom(request: Request, detail: String, middle: &[(&'static str, u64, bool)]) -> Self {
        Self::new(request, detail, middle)
    }

    /// Cuts the data into descriptors of at most `size` bytes.
    pub fn segmented(mut self, size: u32) -> Self {
        self.request = self.request.with_segment_size(size);
        for (what, len, _) in &mut self.chain {
            if what == "data" && *len > u64::from(size) {
                *what = format!(
                    "data in {} descriptors of at most {size} B:",
                    len.div_ceil(u64::from(size.max(1)))
                );
            }
        }
        self
    }

    /// Never show the answer in descriptions (it may hold key material;
    /// the check still reads it, e.g. a wrapped key to pass on).
    pub fn hiding_answer(mut self) -> Self {
        self.hide_answer = true;
        self
    }

    /// The request type.
    pub fn kind(&self) -> RequestType {
        self.kind
    }

    /// "TYPE (n) on QUEUE: details; descriptors: ...".
    pub fn describe(&self, queue: &str) -> String {
        let mut out = format!("{} ({}) on {queue}", self.kind, self.kind.to_wire());
        if !self.detail.is_empty() {
            let _ = write!(out, ": {}", self.detail);
        }
        out.push_str("; descriptors: ");
        let parts: Vec<String> = self
            .chain
            .iter()
            .map(|(what, len, writable)| {
                format!("{what} {len} B {}", if *writable { "W" } else { "R" })
            })
            .collect();
        out.push_str(&parts.join(", "));
        out
    }

    /// IN: read `len` bytes at `sector`.
    pub fn read(sector: u64, len: u32) -> Self {
        Self::new(
            Request::read(sector, len),
            format!("sector {sector}, {len} bytes"),
            &[("data", u64::from(len), true)],
        )
    }

    /// OUT: write `data` at `sector`.
    pub fn write(sector: u64, data: Vec<u8>) -> Self {
        let len = data.len() as u64;
        Self::new(
            Request::write(sector, data),
            format!("sector {sector}, {len} bytes"),
            &[("data", len, false)],
        )
    }

    /// FLUSH.
    pub fn flush() -> Self {
        Self::new(Request::flush(), String::new(), &[])
    }

    /// GET_ID with the standard 20-byte answer buffer.
    pub fn get_id() -> Self {
        Self::new(
            Request::get_id(),
            String::new(),
            &[("id", DEVICE_ID_BYTES as u64, true)],
        )
    }

    /// GET_CRYPTO_MODES with an answer buffer of `len` bytes (8 is right).
    pub fn get_crypto_modes(len: u32) -> Self {
        Self::new(
            Request::raw(RequestType::GetCryptoModes, 0).with_data_in(len),
            format!("answer buffer {len} bytes"),
            &[("modes", u64::from(len), true)],
        )
    }

    /// KEYSLOT_PROGRAM with `desc`, whose key is called `key`.
    pub fn program(desc: &KeyDesc, key: &str) -> Self {
        Self::new(
            Request::keyslot_program(desc),
            format!("key_desc {}", describe_desc(desc, key)),
            &[("key_desc", KeyDesc::SIZE as u64, false)],
        )
    }

    /// KEYSLOT_PROGRAM whose payload is `desc` followed by `extra` zero
    /// bytes (a key_desc of the wrong size).
    pub fn program_padded(desc: &KeyDesc, key: &str, extra: usize) -> Self {
        let mut payload = desc.encode().to_vec();
        payload.resize(KeyDesc::SIZE + extra, 0);
        let len = payload.len() as u64;
        let request = Request::raw(RequestType::KeyslotProgram, 0).with_key_payload(&payload);
        zeroize::Zeroize::zeroize(&mut payload);
        Self::new(
            request,
            format!(
                "a {len}-byte key_desc: {} followed by {extra} zero bytes",
                describe_desc(desc, key)
            ),
            &[("key_desc", len, false)],
        )
    }

    /// KEYSLOT_EVICT of `slot`, every other key_desc field zero.
    pub fn evict(slot: u32) -> Self {
        Self::new(
            Request::keyslot_evict_slot(slot),
            format!("key_desc {{slot {slot}, every other field 0}}"),
            &[("key_desc", KeyDesc::SIZE as u64, false)],
        )
    }

    /// KEYSLOT_EVICT with a full descriptor.
    pub fn evict_desc(desc: &KeyDesc, key: &str) -> Self {
        Self::new(
            Request::keyslot_evict(desc),
            format!("key_desc {}", describe_desc(desc, key)),
            &[("key_desc", KeyDesc::SIZE as u64, false)],
        )
    }

    /// CRYPTO_OUT of `data` at `sector` with `slot` and `dun`;
    /// `data_unit_size` (if known) only makes the description clearer.
    pub fn crypto_write(
        sector: u64,
        slot: u32,
        dun: Dun,
        data: Vec<u8>,
        data_unit_size: Option<u32>,
    ) -> Self {
        let len = data.len() as u64;
        let msg = CryptoMsg {
            slot,
            reserved: 0,
            dun,
        };
        Self::new(
            Request::crypto_write(sector, &msg, data),
            crypto_detail(sector, &msg, len, data_unit_size),
            &[
                ("crypto_msg", CryptoMsg::SIZE as u64, false),
                ("data", len, false),
            ],
        )
    }

    /// CRYPTO_IN of `len` bytes at `sector` with `slot` and `dun`.
    pub fn crypto_read(
        sector: u64,
        slot: u32,
        dun: Dun,
        len: u32,
        data_unit_size: Option<u32>,
    ) -> Self {
        let msg = CryptoMsg {
            slot,
            reserved: 0,
            dun,
        };
        Self::new(
            Request::crypto_read(sector, &msg, len),
            crypto_detail(sector, &msg, u64::from(len), data_unit_size),
            &[
                ("crypto_msg", CryptoMsg::SIZE as u64, false),
                ("data", u64::from(len), true),
            ],
        )
    }
}

fn crypto_detail(sector: u64, msg: &CryptoMsg, len: u64, data_unit_size: Option<u32>) -> String {
    let mut out = format!(
        "sector {sector}, crypto_msg {{slot {}, dun {}}}, {len} bytes of data",
        msg.slot,
        dun_text(&msg.dun)
    );
    if let Some(size) = data_unit_size.filter(|size| *size > 0) {
        let size = u64::from(size);
        if len.is_multiple_of(size) {
            let _ = write!(out, " ({} data units of {size})", len / size);
        } else {
            let _ = write!(
                out,
                " ({:.2} data units of {size})",
                len as f64 / size as f64
            );
        }
    }
    out
}

/// `{slot, key, key_size, crypto_mode, key_type, data unit, dun_bytes}`
/// with the key named, never shown.
pub fn describe_desc(desc: &KeyDesc, key: &str) -> String {
    let mode = match CryptoMode::from_wire(desc.crypto_mode) {
        Some(CryptoMode::Aes256Xts) => " (AES-256-XTS)",
        None => " (unknown)",
    };
    let key_type = match KeyType::from_wire(desc.key_type) {
        Some(KeyType::Raw) => " (raw)",
        Some(KeyType::HardwareWrapped) => " (hardware-wrapped)",
        None => " (unknown)",
    };
    let unit = 1u64
        .checked_shl(desc.data_unit_size_bits)
        .map_or_else(String::new, |size| format!(" ({size} B)"));
    format!(
        "{{slot {}, {key}, key_size {}, crypto_mode {}{mode}, key_type {}{key_type}, \
         data_unit_size_bits {}{unit}, dun_bytes {}}}",
        desc.slot,
        desc.key_size,
        desc.crypto_mode,
        desc.key_type,
        desc.data_unit_size_bits,
        desc.dun_bytes
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptions_name_the_key_and_never_show_it() {
        let key = TestKey::random(3);
        let desc = key.desc(5, 4096, 8);
        let text = Op::program(&desc, key.name()).describe("the control queue (virtqueue 1)");
        assert!(text.starts_with("KEYSLOT_PROGRAM (30) on the control queue (virtqueue 1)"));
        assert!(text.contains("slot 5, key #3, key_size 64"), "{text}");
        assert!(text.contains("data_unit_size_bits 12 (4096 B), dun_bytes 8"));
        assert!(text.ends_with("outhdr 16 B R, key_desc 152 B R, status 1 B W"));
        let write = Op::crypto_write(
            128,
            0,
            Dun::from_u64(0xffff_fffe),
            vec![0; 8192],
            Some(4096),
        );
        let text = write.describe("request queue 0");
        assert!(
            text.contains(
                "crypto_msg {slot 0, dun 0xfffffffe}, 8192 bytes of data (2 data units of 4096)"
            ),
            "{text}"
        );
    }

    #[test]
    fn replies_show_status_length_and_a_prefix() {
        let reply = Reply {
            status: 1,
            used_len: 1,
            data: Zeroizing::new(vec![0xab; 40]),
            hidden: false,
        };
        assert_eq!(
            reply.describe(),
            "status IOERR (1), used length 1, data abababababababababababababababab... (40 bytes)"
        );
        assert_eq!(status_name(0xff), "none (the status byte was not written)");
        assert_eq!(status_name(9), "9 (undefined)");
        assert_eq!(first_difference(b"abc", b"abd"), Some(2));
        assert_eq!(first_difference(b"ab", b"abc"), Some(2));
        assert_eq!(first_difference(b"ab", b"ab"), None);
        assert_eq!(
            dun_text(&Dun([1, 0, 0, 2])),
            format!("0x{:016x}{:016x}{:016x}{:016x}", 2, 0, 0, 1)
        );
    }
}
