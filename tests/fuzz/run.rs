//! The fuzz loop: sessions of a real `icelab serve` on one image file,
//! batches of generated requests on every queue at once, and after every
//! batch the check of each answer against the model, of the whole image
//! file against the model's copy, and of the device's liveness.

use super::generate::{self, Body, Ctx};
use super::model::{
    self, Candidate, Caps, IOERR, OK, Observed, Prediction, Role, SECTOR, Shape, Slot,
    T_GET_CRYPTO_MODES, T_GET_ID, UNSUPP,
};
use super::rng::Rng;
use super::wire::Wire;
use crate::support::{self, Device};
use icelab_emulator::protocol::{VIRTIO_BLK_F_CTRL_VQ, VIRTIO_RING_F_EVENT_IDX, feature};
use icelab_frontend::memory::GuestBuffer;
use icelab_frontend::{Frontend, FrontendOptions, Queue};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Image file: 4 MiB and 5 sectors of capacity, and 100 bytes past the
/// last whole sector that the device must never touch.
pub const IMAGE_LEN: u64 = (4 << 20) + 5 * 512 + 100;
/// Guest memory of the frontend.
const MEMORY: u64 = 64 << 20;
/// Arena bytes one batch may allocate.
const BATCH_BYTES: u64 = 40 << 20;
/// Longest wait for a completion.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// How inline encryption is set up in a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CryptoSetup {
    /// INLINE_ENCRYPTION and CTRL_VQ acked, a control queue.
    Full,
    /// The driver leaves CTRL_VQ out: crypto requests get UNSUPP.
    NoCtrlVq,
    /// `icelab serve --no-inline-encryption`.
    NoEngine,
}

/// One session's configuration (device options and frontend options).
#[derive(Clone, Debug)]
struct Config {
    queues: u16,
    event_idx: bool,
    crypto: CryptoSetup,
    profile: &'static str,
    slots: Option<u16>,
    max_dun_bytes: Option<u8>,
    data_unit_sizes: Option<Vec<u32>>,
    read_only: bool,
    device_queue_size: u16,
    queue_size: u16,
    serial: String,
    batches: u32,
}

impl Config {
    fn random(rng: &mut Rng, engine_required: bool) -> Self {
        let crypto = match rng.weighted(&[88, 6, if engine_required { 0 } else { 6 }]) {
            0 => CryptoSetup::Full,
            1 => CryptoSetup::NoCtrlVq,
            _ => CryptoSetup::NoEngine,
        };
        let engine_options = crypto != CryptoSetup::NoEngine;
        let device_queue_size = rng.pick(&[64u16, 256, 1024]);
        let queue_size = loop {
            let size = rng.pick(&[16u16, 32, 64, 128, 256]);
            if size <= device_queue_size {
                break size;
            }
        };
        let serial_len = rng.urange(1, 20);
        let serial: String = (0..serial_len)
            .map(|_| rng.pick(&b"abcdefghijklmnopqrstuvwxyz0123456789-"[..]) as char)
            .collect();
        let data_unit_sizes = (engine_options && rng.percent(40)).then(|| {
            let all = [512u32, 1024, 2048, 4096, 8192, 65536];
            let mut sizes: Vec<u32> = all.iter().copied().filter(|_| rng.percent(50)).collect();
            if sizes.is_empty() {
                sizes.push(rng.pick(&all));
            }
            sizes
        });
        Self {
            queues: if rng.percent(65) { 2 } else { 1 },
            event_idx: rng.percent(50),
            crypto,
            profile: if rng.percent(70) { "ufs" } else { "emmc" },
            slots: (engine_options && rng.percent(60)).then(|| rng.pick(&[1u16, 2, 4, 8])),
            max_dun_bytes: (engine_options && rng.percent(40)).then(|| rng.range(1, 16) as u8),
            data_unit_sizes,
            read_only: rng.percent(5),
            device_queue_size,
            queue_size,
            serial,
            batches: rng.range(10, 120) as u32,
        }
    }

    fn caps(&self) -> Option<Caps> {
        if self.crypto == CryptoSetup::NoEngine {
            return None;
        }
        let mask = match &self.data_unit_sizes {
            Some(sizes) => sizes.iter().fold(0, |mask, size| mask | size),
            None => 0x1e00,
        };
        Some(Caps {
            slots: u32::from(self.slots.unwrap_or(32)),
            max_dun_bytes: u32::from(self.max_dun_bytes.unwrap_or(if self.profile == "ufs" {
                8
            } else {
                4
            })),
            dus_mask: mask,
        })
    }

    fn args(&self) -> Vec<String> {
        let mut args = vec![
            "--queues".to_owned(),
            self.queues.to_string(),
            "--queue-size".to_owned(),
            self.device_queue_size.to_string(),
            format!("--serial={}", self.serial),
            "--profile".to_owned(),
            self.profile.to_owned(),
        ];
        if self.crypto == CryptoSetup::NoEngine {
            args.push("--no-inline-encryption".into());
        } else {
            // The model knows raw keys only: hardware-wrapped key requests
            // (random blobs, random answers) are tests/wrapped_keys.rs's.
            args.extend(["--key-types".into(), "raw".into()]);
        }
        if let Some(slots) = self.slots {
            args.extend(["--slots".into(), slots.to_string()]);
        }
        if let Some(bytes) = self.max_dun_bytes {
            args.extend(["--max-dun-bytes".into(), bytes.to_string()]);
        }
        if let Some(sizes) = &self.data_unit_sizes {
            let list: Vec<String> = sizes.iter().map(u32::to_string).collect();
            args.extend(["--data-unit-sizes".into(), list.join(",")]);
        }
        if self.read_only {
            args.push("--read-only".into());
        }
        args
    }

    fn describe(&self) -> String {
        format!(
            "icelab serve {}; frontend: queue size {}, EVENT_IDX {}, {:?}",
            self.args().join(" "),
            self.queue_size,
            if self.event_idx { "on" } else { "off" },
            self.crypto
        )
    }
}

/// What the device's stats must say at the end of a session.
#[derive(Debug, Default)]
struct Expected {
    refused: u64,
    broken_ring: u64,
    evicted_by_reset: u64,
    counters: BTreeMap<&'static str, u64>,
}

/// A running device and its frontend.
struct Session {
    number: u32,
    config: Config,
    shape: Shape,
    dir: PathBuf,
    stats: PathBuf,
    device: Device,
    frontend: Option<Frontend>,
    /// Request queues, then the control queue.
    queues: Vec<Queue>,
    control: Option<usize>,
    expected: Expected,
    batches_left: u32,
}

/// One request of a batch.
struct Item {
    queue: usize,
    role: Role,
    body: Body,
    notes: Vec<&'static str>,
    wire: Wire,
    exclusive: bool,
    prediction: Option<Prediction>,
    arena: Option<GuestBuffer>,
    _table: Option<GuestBuffer>,
    observed: Option<Observed>,
}

impl Item {
    fn describe(&self) -> String {
        let mut out = format!("{} on queue {}", self.body.label, self.queue);
        if !self.notes.is_empty() {
            let _ = write!(out, " [{}]", self.notes.join(", "));
        }
        let _ = write!(out, "\n  wire: {}", self.wire.describe());
        out
    }
}

/// A byte range of the image claimed by a request of a batch.
struct Claim {
    start: u64,
    end: u64,
    queue: usize,
    exclusive: bool,
}

/// The queue a request touching `touch` may go to: the one that already
/// owns what it touches (requests on different queues run concurrently,
/// so they must not overlap); `None` when it cannot be placed. A request
/// that races with the control queue owns its range alone.
fn place(claims: &[Claim], queue: usize, touch: &[(u64, u64)], exclusive: bool) -> Option<usize> {
    let mut owner = None;
    for claim in claims {
        for &(start, end) in touch {
            if start < claim.end && claim.start < end {
                if claim.exclusive || exclusive {
                    return None;
                }
                match owner {
                    None => owner = Some(claim.queue),
                    Some(other) if other != claim.queue => return None,
                    Some(_) => {}
                }
            }
        }
    }
    Some(owner.unwrap_or(queue))
}

/// Run totals.
#[derive(Debug, Default)]
pub struct Totals {
    pub sent: BTreeMap<&'static str, u64>,
    pub notes: BTreeMap<&'static str, u64>,
    pub outcomes: BTreeMap<&'static str, u64>,
    pub events: BTreeMap<String, u64>,
    pub racing: u64,
    pub race_older: u64,
    pub race_newer: u64,
    pub batches: u64,
    pub requests: u64,
}

/// The fuzzer.
pub struct Fuzzer {
    pub seed: u64,
    rng: Rng,
    dir: tempfile::TempDir,
    image: PathBuf,
    model: Vec<u8>,
    slots: Vec<Slot>,
    next_key: u64,
    session: Option<Session>,
    sessions: u32,
    pub totals: Totals,
    started: Instant,
    /// More `icelab serve` arguments for every session (e.g. `--fault`).
    device_args: Vec<String>,
}

type Failure = String;

impl Fuzzer {
    /// A fuzzer for `seed`; the image starts as a seeded pattern.
    /// `device_args` go to every `icelab serve` (sessions then always have
    /// an engine).
    pub fn new(seed: u64, device_args: Vec<String>) -> Self {
        let mut rng = Rng::new(seed);
        let dir = support::temp_dir("fuzz");
        let image = dir.path().join("disk.img");
        let model = rng.bytes(IMAGE_LEN as usize);
        std::fs::write(&image, &model).expect("write the image");
        Self {
            seed,
            rng,
            dir,
            image,
            model,
            slots: Vec::new(),
            next_key: 1,
            session: None,
            sessions: 0,
            totals: Totals::default(),
            started: Instant::now(),
            device_args,
        }
    }

    /// Runs until `deadline`, then ends the last session. Panics with the
    /// seed, the batch and the request on the first mismatch.
    pub fn run(&mut self, deadline: Instant) {
        if let Err(message) = self.try_run(deadline) {
            panic!("{message}");
        }
    }

    /// Like [`Fuzzer::run`], but returns the failure report.
    pub fn try_run(&mut self, deadline: Instant) -> Result<(), String> {
        while Instant::now() < deadline {
            self.step().map_err(|failure| self.report(&failure))?;
        }
        self.end_session().map_err(|failure| self.report(&failure))
    }

    /// The failure report: seed, batch, session, what went wrong, how to
    /// replay it, the device's log.
    fn report(&self, failure: &str) -> String {
        let mut message = format!(
            "FUZZ FAILURE: seed {:016x}, batch {}",
            self.seed, self.totals.batches
        );
        if let Some(session) = &self.session {
            let _ = write!(
                message,
                ", session {} ({})",
                session.number,
                session.config.describe()
            );
        }
        if !self.device_args.is_empty() {
            let _ = write!(message, ", device arguments {:?}", self.device_args);
        }
        let _ = write!(
            message,
            "\n{failure}\nreplay (the stream does not depend on timing, only on the seed): \
             ICELAB_FUZZ_SEED={:016x} ICELAB_FUZZ_SECONDS={} cargo test --release --test fuzz -- --nocapture",
            self.seed,
            2 * self.started.elapsed().as_secs() + 10
        );
        if let Some(session) = &self.session {
            let _ = write!(message, "\n{}", session.device.logs());
        }
        message
    }

    fn step(&mut self) -> Result<(), Failure> {
        if self.session.as_ref().is_none_or(|s| s.batches_left == 0) {
            self.end_session()?;
            self.start_session()?;
        }
        let has_request_queue = self.session.as_ref().is_some_and(|s| s.config.queues > 0);
        match self.rng.weighted(&[96, 2, 2]) {
            1 if has_request_queue => self.corrupt_ring(),
            2 => self.reset_device(),
            _ => self.batch(),
        }
    }

    fn count_event(&mut self, event: impl Into<String>) {
        *self.totals.events.entry(event.into()).or_default() += 1;
    }

    fn start_session(&mut self) -> Result<(), Failure> {
        self.sessions += 1;
        let config = Config::random(&mut self.rng, !self.device_args.is_empty());
        let dir = self.dir.path().join(format!("session-{}", self.sessions));
        std::fs::create_dir_all(&dir).map_err(|e| format!("session dir: {e}"))?;
        let socket = dir.join("icelab.sock");
        let stats = dir.join("stats.json");
        let builder = Device::builder(&self.image, &socket)
            .stats(&stats)
            .arg("--trace")
            .arg(dir.join("trace.jsonl"))
            .args(config.args())
            .args(&self.device_args);
        let device = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| builder.spawn()))
            .map_err(|panic| {
                let text = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .unwrap_or_else(|| "(no message)".to_owned());
                format!("session {}: {}: {text}", self.sessions, config.describe())
            })?;
        let mut without = 0;
        if !config.event_idx {
            without |= feature(VIRTIO_RING_F_EVENT_IDX);
        }
        let mut num_queues = None;
        if config.crypto == CryptoSetup::NoCtrlVq {
            without |= feature(VIRTIO_BLK_F_CTRL_VQ);
            num_queues = Some(config.queues);
        }
        let options = FrontendOptions {
            memory_size: MEMORY,
            queue_size: config.queue_size,
            num_queues,
            without_features: without,
            ..FrontendOptions::default()
        };
        let caps = config.caps();
        let shape = Shape {
            caps,
            crypto_negotiated: config.crypto == CryptoSetup::Full,
            read_only: config.read_only,
            capacity: IMAGE_LEN - IMAGE_LEN % SECTOR,
            max_data_bytes: u64::from((config.device_queue_size - 2).clamp(1, 128)) * 65536,
            serial: {
                let mut serial = [0u8; 20];
                serial[..config.serial.len()].copy_from_slice(config.serial.as_bytes());
                serial
            },
            queue_size: config.queue_size,
            mem_size: MEMORY,
        };
        self.count_event(format!(
            "session: {} request queue(s), EVENT_IDX {}, {:?}",
            config.queues,
            if config.event_idx { "on" } else { "off" },
            config.crypto
        ));
        let mut session = Session {
            number: self.sessions,
            batches_left: config.batches,
            config,
            shape,
            dir,
            stats,
            device,
            frontend: None,
            queues: Vec::new(),
            control: None,
            expected: Expected::default(),
        };
        let mut frontend = match Frontend::connect(&socket, &options) {
            Ok(frontend) => frontend,
            Err(error) => {
                self.session = Some(session);
                return Err(format!("cannot connect to icelab serve: {error}"));
            }
        };
        session.queues = frontend.take_queues();
        if let Some(control) = frontend.take_control_queue() {
            session.queues.push(control);
            session.control = Some(session.queues.len() - 1);
        }
        let config_space = frontend.block_config();
        let event_idx = frontend.has_feature(VIRTIO_RING_F_EVENT_IDX);
        session.frontend = Some(frontend);
        self.slots = vec![None; caps.map_or(0, |c| c.slots as usize)];
        self.session = Some(session);
        let session = self.session.as_ref().expect("just set");
        let config_space = config_space.map_err(|e| format!("GET_CONFIG: {e}"))?;
        let mut problems = Vec::new();
        if event_idx != session.config.event_idx {
            problems.push(format!("EVENT_IDX negotiated: {event_idx}"));
        }
        if session.queues.len()
            != usize::from(session.config.queues) + usize::from(session.control.is_some())
            || session.control.is_some() != (session.config.crypto == CryptoSetup::Full)
        {
            problems.push(format!(
                "{} queues set up, control queue {:?}",
                session.queues.len(),
                session.control
            ));
        }
        if config_space.capacity_sectors * SECTOR != session.shape.capacity {
            problems.push(format!(
                "capacity {} sectors",
                config_space.capacity_sectors
            ));
        }
        if u64::from(config_space.seg_max) * u64::from(config_space.size_max)
            != session.shape.max_data_bytes
        {
            problems.push(format!(
                "seg_max {} x size_max {}",
                config_space.seg_max, config_space.size_max
            ));
        }
        if config_space.max_discard_seg as u64 != model::MAX_DISCARD_SEG
            || config_space.max_discard_sectors != model::MAX_DISCARD_SECTORS
        {
            problems.push(format!(
                "discard limits {} segments of {} sectors",
                config_space.max_discard_seg, config_space.max_discard_sectors
            ));
        }
        let crypto = config_space.crypto.map(|c| {
            (
                u32::from(c.max_slots),
                u32::from(c.max_dun_bytes),
                c.key_types,
            )
        });
        let want = caps.map(|c| (c.slots, c.max_dun_bytes, 1));
        if crypto != want {
            problems.push(format!("crypto config {crypto:?}, expected {want:?}"));
        }
        if !problems.is_empty() {
            return Err(format!(
                "the device's configuration does not match its options: {}",
                problems.join("; ")
            ));
        }
        Ok(())
    }

    /// Disconnects, checks the device exits 0, and compares its stats with
    /// what the model counted.
    fn end_session(&mut self) -> Result<(), Failure> {
        let Some(session) = self.session.as_mut() else {
            return Ok(());
        };
        session.expected.evicted_by_reset +=
            self.slots.iter().filter(|s| s.is_some()).count() as u64;
        session.queues.clear();
        session.frontend = None;
        let status = session
            .device
            .process()
            .wait_timeout(support::DEVICE_EXIT_TIMEOUT);
        match status {
            Some(status) if status.success() => {}
            Some(status) => {
                return Err(format!(
                    "icelab serve exited with {status} after the frontend left"
                ));
            }
            None => {
                return Err(format!(
                    "icelab serve did not exit within {:?} after the frontend left",
                    support::DEVICE_EXIT_TIMEOUT
                ));
            }
        }
        let stats = support::read_stats(&session.stats);
        let value = |path: &str| {
            path.split('.')
                .try_fold(&stats, |node, key| node.get(key))
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(0)
        };
        let expected = &session.expected;
        let mut checks: Vec<(&str, u64)> = vec![
            (
                "stats.rejected.total",
                expected.refused + expected.broken_ring,
            ),
            ("stats.rejected.by_kind.broken-ring", expected.broken_ring),
            ("stats.keyslots.evicted_by_reset", expected.evicted_by_reset),
        ];
        for (counter, path) in [
            ("plain_in", "stats.plain_in.requests"),
            ("plain_out", "stats.plain_out.requests"),
            ("crypto_in", "stats.crypto_in.requests"),
            ("crypto_out", "stats.crypto_out.requests"),
            ("flush", "stats.flush"),
            ("discard", "stats.discard"),
            ("write_zeroes", "stats.write_zeroes"),
            ("queries", "stats.queries"),
            ("programmed", "stats.keyslots.programmed"),
            ("evicted", "stats.keyslots.evicted"),
        ] {
            checks.push((path, expected.counters.get(counter).copied().unwrap_or(0)));
        }
        let wrong: Vec<String> = checks
            .iter()
            .filter(|(path, want)| value(path) != *want)
            .map(|(path, want)| format!("{path} = {}, the model counted {want}", value(path)))
            .collect();
        if !wrong.is_empty() {
            return Err(format!(
                "the device's stats at exit disagree with the requests it answered:\n  {}\n{stats:#}",
                wrong.join("\n  ")
            ));
        }
        let dir = session.dir.clone();
        self.session = None;
        if std::env::var_os("ICELAB_KEEP_TEST_DIRS").is_none() {
            let _ = std::fs::remove_dir_all(dir);
        }
        Ok(())
    }

    /// SET_FEATURES again, as QEMU does when the guest resets the device:
    /// every keyslot must be emptied.
    fn reset_device(&mut self) -> Result<(), Failure> {
        let session = self.session.as_mut().expect("a session");
        let frontend = session.frontend.as_mut().expect("connected");
        let features = frontend.acked_features();
        frontend
            .vhost_request("SET_FEATURES", |v| {
                use vhost::VhostBackend;
                v.set_features(features)
            })
            .map_err(|e| format!("SET_FEATURES (device reset): {e}"))?;
        session.expected.evicted_by_reset +=
            self.slots.iter().filter(|s| s.is_some()).count() as u64;
        for slot in &mut self.slots {
            *slot = None;
        }
        self.count_event("device reset (SET_FEATURES)");
        self.liveness(None)
    }

    /// Corrupts the avail ring of one queue: its index far ahead or
    /// behind (the device must mark the queue broken), or an entry naming
    /// a descriptor past the table. The other queues must keep working,
    /// nothing may complete on the corrupt queue, the image stays as it
    /// was; then the session is ended and a new one started.
    fn corrupt_ring(&mut self) -> Result<(), Failure> {
        let session = self.session.as_mut().expect("a session");
        let requests = usize::from(session.config.queues);
        let queue_index = match session.control {
            Some(control) if self.rng.one_in(5) => control,
            _ => self.rng.urange(0, requests - 1),
        };
        let variant = self.rng.below(3);
        let queue = &mut session.queues[queue_index];
        let memory = queue.memory().clone();
        let layout = queue.layout();
        let size = queue.size();
        let avail = load16(&memory, layout.avail_idx())?;
        let used_before = load16(&memory, layout.used_idx())?;
        let (new_idx, what) = match variant {
            0 => (
                avail
                    .wrapping_add(size)
                    .wrapping_add(self.rng.range(1, 1000) as u16),
                "avail index far ahead",
            ),
            1 => (
                avail.wrapping_sub(self.rng.range(1, u64::from(u16::MAX - size - 1)) as u16),
                "avail index behind",
            ),
            _ => {
                let head = self.rng.range(u64::from(size), u64::from(u16::MAX)) as u16;
                memory
                    .write(layout.avail_entry(avail), &head.to_le_bytes())
                    .map_err(|e| format!("write avail entry: {e}"))?;
                (
                    avail.wrapping_add(1),
                    "avail entry naming a descriptor past the table",
                )
            }
        };
        memory
            .write(layout.avail_idx(), &new_idx.to_le_bytes())
            .map_err(|e| format!("write avail idx: {e}"))?;
        queue.kick_always().map_err(|e| format!("kick: {e}"))?;
        if variant == 2 {
            session.expected.refused += 1;
        } else {
            session.expected.broken_ring += 1;
        }
        // Wait until the device has seen the corrupt ring: its stats
        // (written on SIGUSR1) count it.
        let want = session.expected.refused + session.expected.broken_ring;
        let counted = wait_for_stat(session, "stats.rejected.total", want);
        let used_after = load16(&memory, layout.used_idx())?;
        let context =
            format!("after corrupting queue {queue_index} ({what}: avail {avail} -> {new_idx})");
        self.count_event(format!("ring corruption: {what}"));
        if let Err(got) = counted {
            return Err(format!(
                "{context}: after 10 s the device's stats count {got} refused requests, the model {want}"
            ));
        }
        if used_after != used_before {
            return Err(format!(
                "{context}: the device returned {} used element(s) on the corrupt queue",
                used_after.wrapping_sub(used_before)
            ));
        }
        self.liveness(Some(queue_index))
            .map_err(|e| format!("{context}: {e}"))?;
        self.check_image().map_err(|e| format!("{context}: {e}"))?;
        self.end_session().map_err(|e| format!("{context}: {e}"))
    }

    /// The device process runs and every queue but `skip` answers.
    fn liveness(&mut self, skip: Option<usize>) -> Result<(), Failure> {
        let session = self.session.as_mut().expect("a session");
        if let Some(status) = session.device.process().try_wait() {
            return Err(format!("icelab serve died: {status}"));
        }
        let mut items = Vec::new();
        for queue in 0..session.queues.len() {
            if Some(queue) == skip {
                continue;
            }
            let (role, body) = if Some(queue) == session.control {
                (Role::Control, generate::probe_body(T_GET_CRYPTO_MODES, 8))
            } else {
                (Role::Request, generate::probe_body(T_GET_ID, 20))
            };
            items.push(Item {
                queue,
                role,
                wire: generate::lay_plain(&body),
                body,
                notes: Vec::new(),
                exclusive: false,
                prediction: None,
                arena: None,
                _table: None,
                observed: None,
            });
        }
        self.execute(&mut items, "liveness")?;
        for item in &items {
            if item.observed.as_ref().map(|o| o.used_len) == Some(1) {
                return Err(format!("liveness probe refused: {}", item.describe()));
            }
        }
        Ok(())
    }

    fn check_image(&self) -> Result<(), Failure> {
        let disk = std::fs::read(&self.image).map_err(|e| format!("read the image: {e}"))?;
        match model::compare_image(&self.model, &disk) {
            None => Ok(()),
            Some(difference) => Err(difference),
        }
    }

    /// One batch: keyslot commands on the control queue and requests on
    /// every request queue, submitted together, reaped, checked.
    fn batch(&mut self) -> Result<(), Failure> {
        let session = self.session.as_mut().expect("a session");
        session.batches_left -= 1;
        self.totals.batches += 1;
        let rng = &mut self.rng;
        let shape = session.shape.clone();
        let requests = usize::from(session.config.queues);
        let mut budgets: Vec<usize> = session.queues.iter().map(Queue::free_descriptors).collect();
        let mut bytes = 0u64;

        let control_bodies: Vec<Body> = match session.control {
            Some(_) => {
                let count = match rng.weighted(&[40, 45, 15]) {
                    0 => 0,
                    1 => rng.range(1, 2),
                    _ => rng.range(3, 6),
                };
                let ctx = Ctx {
                    shape: &shape,
                    slots: &self.slots,
                    hot: &[],
                };
                (0..count)
                    .map(|_| generate::control_body(rng, &ctx))
                    .collect()
            }
            None => Vec::new(),
        };
        let caps_slots = shape.caps.map_or(0, |c| c.slots);
        let hot: Vec<u32> = control_bodies
            .iter()
            .filter(|b| matches!(b.kind, "program" | "evict"))
            .filter_map(|b| b.slot)
            .filter(|slot| *slot < caps_slots)
            .collect();
        let ctx = Ctx {
            shape: &shape,
            slots: &self.slots,
            hot: &hot,
        };

        let mut items: Vec<Item> = Vec::new();
        let mut claims: Vec<Claim> = Vec::new();
        let count = if rng.one_in(10) {
            rng.range(20, 48)
        } else {
            rng.range(1, 16)
        };
        for _ in 0..count {
            let body = generate::request_body(rng, &ctx);
            let exclusive = matches!(body.kind, "crypto_out" | "crypto_in")
                && body.slot.is_some_and(|slot| hot.contains(&slot));
            let wanted = rng.urange(0, requests - 1);
            let Some(queue) = place(&claims, wanted, &body.touch, exclusive) else {
                *self
                    .totals
                    .notes
                    .entry("skipped: range in use on another queue")
                    .or_default() += 1;
                continue;
            };
            let Some(laid) = generate::lay_out(rng, &body, &shape, budgets[queue]) else {
                continue;
            };
            if bytes + laid.wire.arena.len() as u64 > BATCH_BYTES {
                continue;
            }
            bytes += laid.wire.arena.len() as u64;
            budgets[queue] -= laid.wire.ring.len();
            for &(start, end) in &body.touch {
                claims.push(Claim {
                    start,
                    end,
                    queue,
                    exclusive,
                });
            }
            items.push(Item {
                queue,
                role: Role::Request,
                body,
                notes: laid.notes,
                wire: laid.wire,
                exclusive,
                prediction: None,
                arena: None,
                _table: None,
                observed: None,
            });
        }
        if let Some(control) = session.control {
            for body in control_bodies {
                let Some(laid) = generate::lay_out(rng, &body, &shape, budgets[control]) else {
                    continue;
                };
                budgets[control] -= laid.wire.ring.len();
                let at = rng.urange(0, items.len());
                items.insert(
                    at,
                    Item {
                        queue: control,
                        role: Role::Control,
                        body,
                        notes: laid.notes,
                        wire: laid.wire,
                        exclusive: false,
                        prediction: None,
                        arena: None,
                        _table: None,
                        observed: None,
                    },
                );
            }
        }
        let batch = self.totals.batches;
        self.execute(&mut items, &format!("batch {batch}"))?;
        self.liveness(None)
    }

    /// Predicts, submits, reaps and checks `items`, then applies their
    /// effects to the model and compares the image file with it.
    fn execute(&mut self, items: &mut [Item], what: &str) -> Result<(), Failure> {
        let session = self.session.as_mut().expect("a session");
        let shape = session.shape.clone();

        // 1. Predictions. The control queue first: its commands run in
        //    order, so each slot goes through a known sequence of states.
        let mut slots = self.slots.clone();
        let mut history: Vec<Vec<Slot>> = slots.iter().map(|s| vec![s.clone()]).collect();
        for item in items.iter_mut().filter(|i| i.role == Role::Control) {
            let current = slots.clone();
            let candidates = move |slot: u32| -> Vec<Candidate> {
                vec![(0, current.get(slot as usize).cloned().flatten())]
            };
            let mut prediction =
                model::predict(&shape, Role::Control, &item.wire, &self.model, &candidates);
            assert_eq!(
                prediction.alts.len(),
                1,
                "harness bug: a control command with several outcomes"
            );
            if let Some((_, Some(key))) = &mut prediction.alts[0].slot_change {
                key.id = self.next_key;
                self.next_key += 1;
            }
            if let Some((slot, state)) = &prediction.alts[0].slot_change {
                slots[*slot as usize] = state.clone();
                history[*slot as usize].push(state.clone());
            }
            item.prediction = Some(prediction);
        }
        // Request queues, each in order, on a scratch copy of the image:
        // requests on different queues touch disjoint ranges.
        let mut scratch = self.model.clone();
        for item in items.iter_mut().filter(|i| i.role == Role::Request) {
            let history = &history;
            let candidates = |slot: u32| -> Vec<Candidate> {
                match history.get(slot as usize) {
                    Some(states) => states.iter().cloned().enumerate().collect(),
                    None => vec![(0, None)],
                }
            };
            let prediction =
                model::predict(&shape, Role::Request, &item.wire, &scratch, &candidates);
            if prediction.alts.len() > 1 {
                assert!(
                    item.exclusive,
                    "harness bug: a request not planned as racing has {} outcomes: {}",
                    prediction.alts.len(),
                    item.describe()
                );
            } else {
                for effect in &prediction.alts[0].effects {
                    effect.apply(&mut scratch);
                }
            }
            item.prediction = Some(prediction);
        }

        // 2. Submission, in the batch's order, with kicks at random points.
        let memory = session
            .frontend
            .as_ref()
            .expect("connected")
            .memory()
            .clone();
        let mut heads: HashMap<(usize, u16), usize> = HashMap::new();
        for (index, item) in items.iter_mut().enumerate() {
            let align = if item.wire.arena.len() > 4096 {
                4096
            } else {
                64
            };
            let arena = memory
                .alloc(item.wire.arena.len() as u64, align)
                .map_err(|e| format!("allocate guest memory: {e}"))?;
            arena
                .write(0, &item.wire.arena)
                .map_err(|e| format!("write arena: {e}"))?;
            let table = if item.wire.table.is_empty() {
                None
            } else {
                let table = memory
                    .alloc(16 * item.wire.table.len() as u64, 16)
                    .map_err(|e| format!("allocate a table: {e}"))?;
                let mut bytes = Vec::with_capacity(16 * item.wire.table.len());
                for desc in &item.wire.table {
                    let raw = desc.raw(arena.addr(), table.addr());
                    let (flags, next) = match raw.next {
                        icelab_frontend::RawNext::End => (raw.flags, 0u16),
                        icelab_frontend::RawNext::Index(i) => (raw.flags | 1, i as u16),
                        icelab_frontend::RawNext::Absolute(n) => (raw.flags | 1, n),
                    };
                    bytes.extend_from_slice(&raw.addr.to_le_bytes());
                    bytes.extend_from_slice(&raw.len.to_le_bytes());
                    bytes.extend_from_slice(&flags.to_le_bytes());
                    bytes.extend_from_slice(&next.to_le_bytes());
                }
                table
                    .write(0, &bytes)
                    .map_err(|e| format!("write table: {e}"))?;
                Some(table)
            };
            let table_addr = table.as_ref().map_or(0, GuestBuffer::addr);
            let raws: Vec<_> = item
                .wire
                .ring
                .iter()
                .map(|d| d.raw(arena.addr(), table_addr))
                .collect();
            let queue = &mut session.queues[item.queue];
            let head = queue
                .add_raw_chain(&raws, Vec::new())
                .map_err(|e| format!("add a chain to queue {}: {e}", item.queue))?;
            heads.insert((item.queue, head), index);
            item.arena = Some(arena);
            item._table = table;
            if self.rng.percent(30) {
                queue.kick().map_err(|e| format!("kick: {e}"))?;
            }
            *self.totals.sent.entry(item.body.kind).or_default() += 1;
            for note in &item.notes {
                *self.totals.notes.entry(note).or_default() += 1;
            }
            self.totals.requests += 1;
        }
        for queue in &mut session.queues {
            queue.kick().map_err(|e| format!("kick: {e}"))?;
        }

        // 3. Reaping.
        for (queue_index, queue) in session.queues.iter_mut().enumerate() {
            while queue.in_flight() > 0 {
                let used = queue.wait_used(REQUEST_TIMEOUT).map_err(|error| {
                    let pending: Vec<String> = items
                        .iter()
                        .filter(|i| i.queue == queue_index && i.observed.is_none())
                        .map(Item::describe)
                        .collect();
                    format!(
                        "{what}: queue {queue_index}: {error}; requests without an answer:\n{}",
                        pending.join("\n")
                    )
                })?;
                let index = *heads.get(&(queue_index, used.head)).ok_or_else(|| {
                    format!(
                        "{what}: queue {queue_index} returned head {} that no request has",
                        used.head
                    )
                })?;
                let item = &mut items[index];
                let arena = item
                    .arena
                    .as_ref()
                    .expect("submitted")
                    .to_vec()
                    .map_err(|e| format!("read arena: {e}"))?;
                item.observed = Some(Observed {
                    used_len: used.len,
                    arena,
                });
            }
        }

        // 4. Checks: each answer, then the image.
        let disk = std::fs::read(&self.image).map_err(|e| format!("read the image: {e}"))?;
        let mut chosen: Vec<usize> = Vec::with_capacity(items.len());
        for item in items.iter() {
            let prediction = item.prediction.as_ref().expect("predicted");
            let observed = item.observed.as_ref().expect("reaped");
            let matching = model::check(&item.wire, prediction, observed)
                .map_err(|mismatch| format!("{what}: request {}\n  {mismatch}", item.describe()))?;
            // Several outcomes fit the answer (a race): the image decides.
            let shown: Vec<usize> = matching
                .iter()
                .copied()
                .filter(|i| {
                    prediction.alts[*i]
                        .effects
                        .iter()
                        .all(|e| e.shown_by(&disk))
                })
                .collect();
            let pick = match (shown.first(), matching.len()) {
                (Some(first), _) => *first,
                (None, 1) => matching[0],
                (None, _) => {
                    return Err(format!(
                        "{what}: request {}\n  the answer fits {} outcomes but the image shows none of them",
                        item.describe(),
                        matching.len()
                    ));
                }
            };
            chosen.push(pick);
        }
        // A queue never sees a slot go back to an older state.
        let mut seen: HashMap<(usize, u32), usize> = HashMap::new();
        for (index, item) in items.iter().enumerate() {
            let prediction = item.prediction.as_ref().expect("predicted");
            if prediction.alts.len() < 2 {
                continue;
            }
            let slot = prediction.slot.expect("a racing request names a slot");
            let floor = seen.get(&(item.queue, slot)).copied().unwrap_or(0);
            let candidate = prediction.alts[chosen[index]].candidate.unwrap_or(0);
            // The outcomes that fit the answer, and the image if it shows
            // any of them (if it shows none, the image check says so).
            let observed = item.observed.as_ref().expect("reaped");
            let answer_fits: Vec<&model::Alt> = prediction
                .alts
                .iter()
                .filter(|alt| {
                    alt.used_len == observed.used_len
                        && alt.expected_arena(&item.wire, &prediction.walk) == observed.arena
                })
                .collect();
            let on_disk: Vec<&model::Alt> = answer_fits
                .iter()
                .copied()
                .filter(|alt| alt.effects.iter().all(|e| e.shown_by(&disk)))
                .collect();
            let fits: Vec<usize> = if on_disk.is_empty() {
                answer_fits
            } else {
                on_disk
            }
            .iter()
            .filter_map(|alt| alt.candidate)
            .collect();
            let Some(next) = fits.iter().copied().filter(|c| *c >= floor).min() else {
                return Err(format!(
                    "{what}: request {}\n  used slot {slot} state {candidate} after an earlier request on the same queue used state {floor}",
                    item.describe()
                ));
            };
            seen.insert((item.queue, slot), next);
            self.totals.racing += 1;
            if next == 0 {
                self.totals.race_older += 1;
            } else {
                self.totals.race_newer += 1;
            }
        }
        // Apply: control commands (slots) and every request's effects.
        for (index, item) in items.iter().enumerate() {
            let alt = &item.prediction.as_ref().expect("predicted").alts[chosen[index]];
            for effect in &alt.effects {
                effect.apply(&mut self.model);
            }
            let outcome = match alt.status {
                Some(OK) => "OK",
                Some(IOERR) => "IOERR",
                Some(UNSUPP) => "UNSUPP",
                _ => "no status (used length 0)",
            };
            *self.totals.outcomes.entry(outcome).or_default() += 1;
            if alt.status == Some(OK) {
                if let Some(counter) = alt.counter {
                    *session.expected.counters.entry(counter).or_default() += 1;
                }
            } else {
                session.expected.refused += 1;
            }
        }
        self.slots = slots;
        if let Some(difference) = model::compare_image(&self.model, &disk) {
            let mut touching = Vec::new();
            let at = difference_offset(&self.model, &disk);
            for item in items.iter() {
                let hit = item.body.touch.iter().any(|(s, e)| (*s..*e).contains(&at));
                if hit {
                    touching.push(item.describe());
                }
            }
            return Err(format!(
                "{what}: {difference}\nrequests of the batch that touch it:\n{}",
                if touching.is_empty() {
                    "(none)".to_owned()
                } else {
                    touching.join("\n")
                }
            ));
        }
        Ok(())
    }
}

/// Asks the device for its stats (SIGUSR1) until the counter at `path`
/// reads `want`, for up to 10 s; the last value read otherwise.
fn wait_for_stat(session: &mut Session, path: &str, want: u64) -> Result<(), u64> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let pid = session.device.process().id() as libc::pid_t;
    let mut last = 0;
    loop {
        // SAFETY: kill(2) with the pid of our own child and a signal number.
        unsafe { libc::kill(pid, libc::SIGUSR1) };
        std::thread::sleep(Duration::from_millis(20));
        if let Ok(text) = std::fs::read_to_string(&session.stats)
            && let Ok(stats) = serde_json::from_str::<serde_json::Value>(&text)
        {
            last = path
                .split('.')
                .try_fold(&stats, |node, key| node.get(key))
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(0);
            if last == want {
                return Ok(());
            }
        }
        if Instant::now() >= deadline {
            return Err(last);
        }
    }
}

fn load16(memory: &icelab_frontend::SharedMemory, addr: u64) -> Result<u16, Failure> {
    let mut bytes = [0u8; 2];
    memory
        .read(addr, &mut bytes)
        .map_err(|e| format!("read guest memory at {addr:#x}: {e}"))?;
    Ok(u16::from_le_bytes(bytes))
}

fn difference_offset(model: &[u8], disk: &[u8]) -> u64 {
    model
        .iter()
        .zip(disk)
        .position(|(a, b)| a != b)
        .unwrap_or(0) as u64
}

impl Drop for Fuzzer {
    fn drop(&mut self) {
        // Kill a device left running by a failure.
        if let Some(session) = &mut self.session {
            session.queues.clear();
            session.frontend = None;
            session.device.process().kill();
        }
    }
}
