//! `icelab bench device`: a load generator on the native vhost-user
//! frontend. It drives `icelab serve` (started here on a fresh image, or
//! any vhost-user-blk backend given with --socket) without a VM and
//! reports IOPS, MB/s, latency percentiles and the backend's CPU seconds
//! per GB. Several queue counts in one invocation give ratios measured in
//! the same run.

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use icelab_contract::bench::Percentiles;
use icelab_emulator::protocol::{CryptoMsg, Dun, KeyDesc, SECTOR_SIZE, Status};
use icelab_frontend::blk::{BlkQueue, Completion, Request, Tag};
use icelab_frontend::{Frontend, FrontendOptions};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::fair::{self, Pinning};
use super::peers;
use crate::serve_process::{DeviceOptions, Logs, START_TIMEOUT, ServeConfig, ServeProcess};

/// Access pattern.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Pattern {
    /// Sequential reads.
    Read,
    /// Sequential writes.
    Write,
    /// Random reads.
    Randread,
    /// Random writes.
    Randwrite,
    /// Random, half reads half writes.
    Randrw,
}

impl Pattern {
    /// Whether the load writes.
    pub fn writes(self) -> bool {
        !matches!(self, Pattern::Read | Pattern::Randread)
    }
}

/// Options of `icelab bench device`.
#[derive(clap::Args, Debug)]
pub struct DeviceArgs {
    /// Queue counts to measure, one run each, e.g. 1,2 (each queue gets its own submitting thread).
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    pub queues: Vec<u16>,
    /// Block size, e.g. 4K or 128K.
    #[arg(long, default_value = "64K")]
    pub block_size: String,
    /// Requests in flight per queue.
    #[arg(long, default_value_t = 32)]
    pub depth: usize,
    /// Access pattern.
    #[arg(long, value_enum, default_value = "write")]
    pub pattern: Pattern,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
    /// Seconds of untimed load before each measurement (the image is also
    /// written in full before the first).
    #[arg(long, default_value_t = 0.5)]
    pub warmup: f64,
    /// Leave the device and the load generator unpinned (by default, with
    /// 2 or more CPUs, they run on different ones).
    #[arg(long)]
    pub no_pin: bool,
    /// Inline encryption: on (programmed keyslot, CRYPTO_IN/OUT) or off
    /// (plain IN/OUT). Default on, or off with --socket or a qsd target.
    #[arg(long)]
    pub ice: Option<String>,
    /// Image size (the region the load covers).
    #[arg(long, default_value = "1G")]
    pub size: String,
    /// Drive an already running vhost-user-blk backend at PATH instead of
    /// starting one (nothing is spawned; no device CPU figure).
    #[arg(long, value_name = "PATH", conflicts_with = "target")]
    pub socket: Option<PathBuf>,
    /// What to start and measure: icelab (ICE per --ice), qsd-raw or
    /// qsd-luks (qemu-storage-daemon's vhost-user-blk export).
    #[arg(long, value_enum)]
    pub target: Option<TargetKind>,
    /// Write the figures as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

/// The kinds of backend `--target` starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TargetKind {
    /// `icelab serve` on a fresh image.
    Icelab,
    /// qemu-storage-daemon exporting a raw image.
    QsdRaw,
    /// qemu-storage-daemon exporting a LUKS image (aes-xts-plain64).
    QsdLuks,
}

/// A backend to measure: started here, or already running.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// `icelab serve` on a fresh image, ICE on or off.
    Icelab {
        /// Program a keyslot and use CRYPTO_IN/OUT.
        ice: bool,
    },
    /// qemu-storage-daemon's vhost-user-blk export of a raw image.
    QsdRaw,
    /// qemu-storage-daemon's vhost-user-blk export of a LUKS image.
    QsdLuks,
    /// A vhost-user-blk backend already listening at a socket.
    External {
        /// Its socket.
        socket: PathBuf,
        /// Program a keyslot and use CRYPTO_IN/OUT.
        ice: bool,
    },
}

impl Target {
    /// Short stable name, used as a key in JSON and tables.
    pub fn name(&self) -> &'static str {
        match self {
            Target::Icelab { ice: true } => "icelab-ice-on",
            Target::Icelab { ice: false } => "icelab-ice-off",
            Target::QsdRaw => "qsd-raw",
            Target::QsdLuks => "qsd-luks",
            Target::External { .. } => "external",
        }
    }

    /// Whether the load uses CRYPTO_IN/OUT on a programmed keyslot.
    pub fn ice(&self) -> bool {
        match self {
            Target::Icelab { ice } | Target::External { ice, .. } => *ice,
            Target::QsdRaw | Target::QsdLuks => false,
        }
    }

    /// Starts the backend with `queues` queues on a fresh image of `size`
    /// bytes (nothing to start for an external one).
    pub fn start(&self, size: u64, queues: u16) -> anyhow::Result<Backend> {
        let prepared = self.prepare(size, false)?;
        let mut backend = self.start_on(prepared.as_ref(), queues)?;
        backend.image = prepared;
        Ok(backend)
    }

    /// Makes the image this target's backends serve: `size` bytes of
    /// payload (a LUKS image for qsd-luks), written in full first when
    /// `fill` so that no measurement pays for allocating blocks and
    /// page-cache pages of a sparse file (none for an external backend).
    pub fn prepare(&self, size: u64, fill: bool) -> anyhow::Result<Option<Image>> {
        if let Target::External { .. } = self {
            return Ok(None);
        }
        let dir = tempfile::Builder::new()
            .prefix("icelab-bench-image-")
            .tempdir()?;
        let path = dir.path().join("disk.img");
        let mut note = String::new();
        match self {
            Target::Icelab { .. } | Target::QsdRaw => {
                let file = std::fs::File::create(&path)?;
                file.set_len(size)?;
                if fill {
                    fill_file(&file, size)?;
                }
            }
            Target::QsdLuks => {
                let (format, why) = peers::make_luks_image(dir.path(), &path, size, fill)?;
                note = format!("{format}: {why}");
            }
            Target::External { .. } => unreachable!("handled above"),
        }
        Ok(Some(Image {
            _dir: dir,
            path,
            note,
        }))
    }

    /// Starts the backend with `queues` queues on `image` (from
    /// [`Target::prepare`]; nothing to start for an external one).
    pub fn start_on(&self, image: Option<&Image>, queues: u16) -> anyhow::Result<Backend> {
        if let Target::External { socket, .. } = self {
            return Ok(Backend {
                process: None,
                dir: None,
                image: None,
                socket: socket.clone(),
                note: String::new(),
            });
        }
        let Some(image) = image else {
            bail!("no image prepared for the {} backend", self.name());
        };
        let dir = tempfile::Builder::new().prefix("icelab-bench-").tempdir()?;
        let socket = dir.path().join("backend.sock");
        let logs = Logs::combined(dir.path().join("backend.log"));
        let process = match self {
            Target::Icelab { .. } => {
                let config = ServeConfig {
                    device: DeviceOptions {
                        queues: Some(queues),
                        ..DeviceOptions::default()
                    },
                    ..ServeConfig::new(&image.path, &socket)
                };
                ServeProcess::spawn_icelab(&crate::icelab_exe(), &config, logs, START_TIMEOUT)
            }
            Target::QsdRaw => {
                let command = qsd_command(&image.path, false, &socket, queues);
                ServeProcess::spawn(self.name(), command, &socket, logs, START_TIMEOUT)
            }
            Target::QsdLuks => {
                let command = qsd_command(&image.path, true, &socket, queues);
                ServeProcess::spawn(self.name(), command, &socket, logs, START_TIMEOUT)
            }
            Target::External { .. } => unreachable!("handled above"),
        }
        .with_context(|| format!("cannot start the {} backend", self.name()))?;
        Ok(Backend {
            process: Some(process),
            dir: Some(dir),
            image: None,
            socket,
            note: image.note.clone(),
        })
    }
}

/// An image prepared for a target's backends; removed when dropped.
#[derive(Debug)]
pub struct Image {
    _dir: tempfile::TempDir,
    path: PathBuf,
    /// What was made and why (e.g. which LUKS format), empty when nothing to say.
    pub note: String,
}

impl Image {
    /// Writes the image's dirty pages back and waits for them, so that
    /// the kernel's write-back of one measurement's writes does not run
    /// during (and bill its CPU to) a later one: 30 s after a write load,
    /// the flusher writes the image back; for a backend that writes
    /// through a mapping that also write-protects every page again, and
    /// each next store faults (measured: a 128 KiB pass over a 1 GiB
    /// mapped image 1.4-2.3x slower right after `fdatasync`).
    pub fn write_back(&self) -> anyhow::Result<()> {
        std::fs::File::open(&self.path)
            .and_then(|file| file.sync_data())
            .with_context(|| format!("cannot write back {}", self.path.display()))
    }
}

/// Writes `len` bytes of a non-zero pattern over `file` from offset 0 and
/// waits for them to reach the disk (so that no write-back runs during
/// the measurements); the pages stay in the page cache.
pub(crate) fn fill_file(file: &std::fs::File, len: u64) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt as _;
    let chunk: Vec<u8> = (0..1u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8 | 1)
        .collect();
    let mut offset = 0;
    while offset < len {
        let n = (len - offset).min(chunk.len() as u64) as usize;
        file.write_all_at(&chunk[..n], offset)?;
        offset += n as u64;
    }
    file.sync_all()
}

/// qemu-storage-daemon exporting `image` (raw, or LUKS opened with the
/// bench passphrase) over vhost-user-blk. The page cache is used, as by
/// `icelab serve`.
fn qsd_command(image: &Path, luks: bool, socket: &Path, queues: u16) -> Command {
    let mut command = Command::new("qemu-storage-daemon");
    command.arg("--blockdev").arg(format!(
        "driver=file,node-name=file0,filename={},cache.direct=off,aio=threads",
        image.display()
    ));
    let node = if luks {
        command
            .arg("--object")
            .arg(format!("secret,id=sec0,data={}", peers::PASSPHRASE))
            .arg("--blockdev")
            .arg("driver=luks,node-name=disk,file=file0,key-secret=sec0");
        "disk"
    } else {
        "file0"
    };
    command.arg("--export").arg(format!(
        "type=vhost-user-blk,id=exp0,node-name={node},addr.type=unix,addr.path={},writable=on,num-queues={queues}",
        socket.display()
    ));
    command
}

/// A running backend; a started one is killed when dropped (its process
/// first, then its directory).
#[derive(Debug)]
pub struct Backend {
    process: Option<ServeProcess>,
    dir: Option<tempfile::TempDir>,
    /// The image, when this backend owns it (`Target::start`).
    image: Option<Image>,
    socket: PathBuf,
    /// What was used and why (e.g. which LUKS format), empty when nothing to say.
    pub note: String,
}

impl Backend {
    fn log_tail(&self) -> String {
        self.process
            .as_ref()
            .map(|p| format!("; its log:\n{}", p.log_tail(20)))
            .unwrap_or_default()
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.process.take();
        let _ = self.dir.take();
        let _ = self.image.take();
    }
}

/// One load: what every target is driven with.
#[derive(Clone, Debug)]
pub struct Load {
    /// Access pattern.
    pub pattern: Pattern,
    /// Bytes per request, a multiple of 4096.
    pub block_size: u64,
    /// Requests in flight per queue.
    pub depth: usize,
    /// Queues, one submitting thread each.
    pub queues: u16,
    /// Seconds of load.
    pub seconds: f64,
    /// Seconds of untimed load before the timed run.
    pub warmup_seconds: f64,
    /// Bytes of the image the load covers.
    pub size: u64,
}

impl Load {
    /// Checks the figures the device can take.
    pub fn check(&self) -> anyhow::Result<()> {
        if !self.block_size.is_multiple_of(4096)
            || self.block_size == 0
            || self.block_size > 8 << 20
        {
            bail!(
                "--block-size must be a multiple of 4K up to 8M (the device's seg_max x size_max)"
            );
        }
        if self.depth == 0 || self.queues == 0 {
            bail!("--depth and every --queues count must be at least 1");
        }
        if self.size < self.block_size * u64::from(self.queues) {
            bail!("--size must hold at least one block per queue");
        }
        Ok(())
    }
}

/// Figures of one measurement.
#[derive(Debug)]
pub struct Measurement {
    queues: u16,
    requests: u64,
    bytes: u64,
    elapsed: Duration,
    latency: Histogram<u64>,
    device_cpu: Option<Duration>,
    generator_cpu: Option<Duration>,
}

impl Measurement {
    /// Megabytes (10^6) per second.
    pub fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / self.elapsed.as_secs_f64() / 1e6
    }

    /// Requests per second.
    pub fn iops(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    /// The backend's CPU seconds per GB moved, when it was started here.
    pub fn cpu_s_per_gb(&self) -> Option<f64> {
        self.device_cpu
            .map(|cpu| cpu.as_secs_f64() / (self.bytes as f64 / 1e9))
    }

    /// The load generator's CPU seconds (its submitting threads) per GB moved.
    pub fn generator_cpu_s_per_gb(&self) -> Option<f64> {
        self.generator_cpu
            .map(|cpu| cpu.as_secs_f64() / (self.bytes as f64 / 1e9))
    }

    /// Latency at quantile `q`, in microseconds.
    pub fn latency_us(&self, q: f64) -> f64 {
        self.latency.value_at_quantile(q) as f64 / 1000.0
    }

    /// Every figure, as the JSON documents carry them.
    pub fn figures(&self) -> Figures {
        Figures {
            queues: self.queues,
            requests: self.requests,
            bytes: self.bytes,
            seconds: self.elapsed.as_secs_f64(),
            iops: self.iops(),
            mb_per_s: self.mb_per_s(),
            latency_us: Percentiles {
                p50: self.latency_us(0.5),
                p99: self.latency_us(0.99),
                p99_9: self.latency_us(0.999),
            },
            device_cpu_s_per_gb: self.cpu_s_per_gb(),
            loadgen_cpu_s_per_gb: self.generator_cpu_s_per_gb(),
        }
    }
}

#[cfg(test)]
impl Measurement {
    /// `bytes` moved in one second, in 4096-byte requests.
    pub(crate) fn for_test(bytes: u64) -> Self {
        Self {
            queues: 1,
            requests: bytes / 4096,
            bytes,
            elapsed: Duration::from_secs(1),
            latency: Histogram::new(3).expect("a histogram"),
            device_cpu: None,
            generator_cpu: None,
        }
    }

    /// As [`Measurement::for_test`], with the device's CPU time.
    pub(crate) fn for_test_cpu(bytes: u64, device_cpu: Duration) -> Self {
        Self {
            device_cpu: Some(device_cpu),
            ..Self::for_test(bytes)
        }
    }
}

/// The figures of one measurement in the JSON documents (`bench device`'s
/// runs, `bench all`'s points).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Figures {
    /// Queues, one submitting thread each.
    pub queues: u16,
    /// Requests completed.
    pub requests: u64,
    /// Bytes moved.
    pub bytes: u64,
    /// Seconds measured.
    pub seconds: f64,
    /// Requests per second.
    pub iops: f64,
    /// Megabytes (10^6) per second.
    pub mb_per_s: f64,
    /// Request latency percentiles.
    pub latency_us: Percentiles,
    /// The backend's CPU seconds per GB moved (null: not started here).
    pub device_cpu_s_per_gb: Option<f64>,
    /// The load generator's CPU seconds (its submitting threads) per GB
    /// moved (null: not measured).
    #[serde(default)]
    pub loadgen_cpu_s_per_gb: Option<f64>,
}

/// The JSON document of `icelab bench device`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeviceDocument {
    /// The CPU model.
    pub cpu: String,
    /// The target's name.
    pub target: String,
    /// The access pattern's name.
    pub pattern: String,
    /// Bytes per request.
    pub block_size: u64,
    /// Requests in flight per queue.
    pub depth: usize,
    /// Whether the load used CRYPTO_IN/OUT.
    pub ice: bool,
    /// Which CPUs the device and the load generator ran on, in words.
    #[serde(default)]
    pub pinning: String,
    /// One per queue count.
    pub runs: Vec<Figures>,
}

/// Runs the measurements and prints a table with ratios to the first.
pub fn run(args: DeviceArgs) -> anyhow::Result<()> {
    let block_size = crate::size::parse_size(&args.block_size)
        .map_err(|error| anyhow::anyhow!("--block-size: {error}"))?;
    let size =
        crate::size::parse_size(&args.size).map_err(|error| anyhow::anyhow!("--size: {error}"))?;
    let ice = match args.ice.as_deref() {
        Some("on") => true,
        Some("off") => false,
        None => args.socket.is_none() && matches!(args.target, None | Some(TargetKind::Icelab)),
        Some(other) => bail!("--ice {other:?}: use on or off"),
    };
    let target = match (&args.socket, args.target) {
        (Some(socket), _) => Target::External {
            socket: socket.clone(),
            ice,
        },
        (None, None | Some(TargetKind::Icelab)) => Target::Icelab { ice },
        (None, Some(TargetKind::QsdRaw | TargetKind::QsdLuks)) if ice => {
            bail!("--ice on needs icelab: qemu-storage-daemon has no inline encryption")
        }
        (None, Some(TargetKind::QsdRaw)) => Target::QsdRaw,
        (None, Some(TargetKind::QsdLuks)) => Target::QsdLuks,
    };
    if args.queues.is_empty() {
        bail!("--queues needs at least one count");
    }
    if !(0.0..=600.0).contains(&args.warmup) {
        bail!("--warmup {}: use 0 to 600 seconds", args.warmup);
    }
    let pinning = if args.no_pin {
        None
    } else {
        Pinning::for_this_machine()
    };
    let pinned = Pinning::describe(pinning.as_ref());
    println!("pinning: {pinned}");
    let image = target.prepare(size, true)?;
    if let Some(note) = image.as_ref().map(|i| &i.note).filter(|n| !n.is_empty()) {
        println!("{}: {note}", target.name());
    }
    let mut measurements = Vec::new();
    for &queues in &args.queues {
        let load = Load {
            pattern: args.pattern,
            block_size,
            depth: args.depth,
            queues,
            seconds: args.seconds,
            warmup_seconds: args.warmup,
            size,
        };
        load.check()?;
        let backend = target.start_on(image.as_ref(), queues)?;
        measurements.push(measure(&target, &backend, &load, pinning.as_ref())?);
    }
    print_table(&args, block_size, &target, &measurements);
    if let Some(path) = &args.json {
        let document = DeviceDocument {
            cpu: crate::bench::cpu_model(),
            target: target.name().to_owned(),
            pattern: pattern_name(args.pattern).to_owned(),
            block_size,
            depth: args.depth,
            ice,
            pinning: pinned,
            runs: measurements.iter().map(Measurement::figures).collect(),
        };
        std::fs::write(path, super::baseline::encode(&document)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// The lower-case name of a pattern, as on the command line.
pub fn pattern_name(pattern: Pattern) -> &'static str {
    match pattern {
        Pattern::Read => "read",
        Pattern::Write => "write",
        Pattern::Randread => "randread",
        Pattern::Randwrite => "randwrite",
        Pattern::Randrw => "randrw",
    }
}

/// Drives `backend` with `load` and returns the figures: an untimed
/// warm-up of `load.warmup_seconds`, then the timed run. With `pinning`,
/// every thread of the backend runs on its device CPUs and the load
/// threads on its generator CPUs.
pub fn measure(
    target: &Target,
    backend: &Backend,
    load: &Load,
    pinning: Option<&Pinning>,
) -> anyhow::Result<Measurement> {
    let queues = load.queues;
    let block_size = load.block_size;
    let ice = target.ice();
    let options = FrontendOptions {
        memory_size: (u64::from(queues) * load.depth as u64 * block_size * 2 + (16 << 20))
            .next_multiple_of(4096),
        queue_size: 256,
        num_queues: Some(queues),
        ..FrontendOptions::default()
    };
    let mut frontend = Frontend::connect(&backend.socket, &options).with_context(|| {
        format!(
            "cannot connect to the {} backend at {}{}",
            target.name(),
            backend.socket.display(),
            backend.log_tail()
        )
    })?;
    let mut handles: Vec<BlkQueue> = frontend
        .take_queues()
        .into_iter()
        .map(BlkQueue::new)
        .collect::<Result<_, _>>()?;
    if handles.len() < usize::from(queues) {
        bail!(
            "the {} backend gave {} queues, {queues} wanted",
            target.name(),
            handles.len()
        );
    }
    if ice {
        let mut key = zeroize::Zeroizing::new([0u8; 64]);
        rand::fill(&mut key[..]);
        let desc = KeyDesc::raw_aes_256_xts(0, &key, 4096, 8);
        let control = frontend.take_control_queue().with_context(|| {
            format!(
                "the {} backend did not negotiate a control queue (VIRTIO_BLK_F_CTRL_VQ)",
                target.name()
            )
        })?;
        let done = BlkQueue::new(control)?
            .submit_and_wait(&Request::keyslot_program(&desc), Duration::from_secs(10))?;
        if done.status() != Some(Status::Ok) {
            bail!(
                "the device refused to program a keyslot (status {})",
                done.status
            );
        }
    }
    let pid = backend.process.as_ref().map(ServeProcess::id);
    let pin_device = || -> anyhow::Result<()> {
        if let (Some(pinning), Some(pid)) = (pinning, pid) {
            fair::pin_process(pid, &pinning.device_cpus)
                .with_context(|| format!("cannot pin the {} backend", target.name()))?;
        }
        Ok(())
    };
    pin_device()?;
    let generator_cpus = pinning.map(|p| p.generator_cpus.as_slice());
    let region = load.size / u64::from(queues);
    // The untimed warm-up: the same load, so that caches, the device's
    // threads and the CPU clocks are in their steady state when timing
    // starts.
    if load.warmup_seconds > 0.0 {
        let deadline = Instant::now() + Duration::from_secs_f64(load.warmup_seconds);
        for result in run_queues(&mut handles, load, region, ice, deadline, generator_cpus) {
            result.with_context(|| format!("warm-up load on {}", target.name()))?;
        }
        // Threads the backend started during the warm-up.
        pin_device()?;
    }
    let cpu_before = pid.and_then(process_cpu);
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(load.seconds);
    let results = run_queues(&mut handles, load, region, ice, deadline, generator_cpus);
    let elapsed = started.elapsed();
    let cpu_after = pid.and_then(process_cpu);
    let mut latency = Histogram::<u64>::new(3)?;
    let (mut requests, mut bytes) = (0, 0);
    let mut generator_cpu = Duration::ZERO;
    for result in results {
        let done = result.with_context(|| format!("load on {}", target.name()))?;
        requests += done.requests;
        bytes += done.bytes;
        generator_cpu += done.cpu;
        latency.add(done.latency)?;
    }
    let device_cpu = cpu_before
        .zip(cpu_after)
        .map(|(before, after)| after.saturating_sub(before));
    Ok(Measurement {
        queues,
        requests,
        bytes,
        elapsed,
        latency,
        device_cpu,
        generator_cpu: Some(generator_cpu),
    })
}

/// What one queue's load loop did.
struct Driven {
    requests: u64,
    bytes: u64,
    latency: Histogram<u64>,
    /// CPU time of the submitting thread over the loop.
    cpu: Duration,
}

/// Drives every queue from its own thread (pinned to `cpus` when given)
/// until `deadline`.
fn run_queues(
    handles: &mut [BlkQueue],
    load: &Load,
    region: u64,
    ice: bool,
    deadline: Instant,
    cpus: Option<&[usize]>,
) -> Vec<anyhow::Result<Driven>> {
    std::thread::scope(|scope| {
        let workers: Vec<_> = handles
            .iter_mut()
            .enumerate()
            .map(|(index, queue)| {
                let start = index as u64 * region;
                scope.spawn(move || {
                    if let Some(cpus) = cpus {
                        fair::pin_thread(0, cpus).context("cannot pin a load thread")?;
                    }
                    let cpu = fair::thread_cpu();
                    let (requests, bytes, latency) =
                        drive(queue, load, start, region, ice, deadline)?;
                    Ok(Driven {
                        requests,
                        bytes,
                        latency,
                        cpu: fair::thread_cpu().saturating_sub(cpu),
                    })
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a load thread panicked")))
            })
            .collect()
    })
}

/// One queue's load loop: keeps `depth` requests in flight until the
/// deadline, then drains.
fn drive(
    queue: &mut BlkQueue,
    load: &Load,
    start: u64,
    region: u64,
    ice: bool,
    deadline: Instant,
) -> anyhow::Result<(u64, u64, Histogram<u64>)> {
    let mut histogram = Histogram::<u64>::new(3)?;
    let block_size = load.block_size;
    let data = {
        let mut data = vec![0u8; block_size as usize];
        rand::fill(&mut data[..]);
        data
    };
    let blocks = (region / block_size).max(1);
    let mut next_block = 0u64;
    let mut in_flight: VecDeque<Tag> = VecDeque::new();
    let (mut requests, mut bytes) = (0u64, 0u64);
    let mut n = 0u64;
    loop {
        let open = Instant::now() < deadline;
        while open && in_flight.len() < load.depth {
            let block = match load.pattern {
                Pattern::Read | Pattern::Write => {
                    next_block = (next_block + 1) % blocks;
                    next_block
                }
                _ => rand::random_range(0..blocks),
            };
            let offset = start + block * block_size;
            let sector = offset / SECTOR_SIZE;
            let write = match load.pattern {
                Pattern::Write | Pattern::Randwrite => true,
                Pattern::Read | Pattern::Randread => false,
                Pattern::Randrw => n.is_multiple_of(2),
            };
            n += 1;
            let msg = CryptoMsg {
                slot: 0,
                reserved: 0,
                dun: Dun::from_u64(offset / 4096),
            };
            let request = match (ice, write) {
                (true, true) => Request::crypto_write(sector, &msg, data.clone()),
                (true, false) => Request::crypto_read(sector, &msg, block_size as u32),
                (false, true) => Request::write(sector, data.clone()),
                (false, false) => Request::read(sector, block_size as u32),
            };
            in_flight.push_back(queue.submit(&request)?);
        }
        let Some(tag) = in_flight.pop_front() else {
            break;
        };
        let completion: Completion = queue.wait_for(tag, Duration::from_secs(30))?;
        if completion.status() != Some(Status::Ok) {
            bail!(
                "the device answered {:?} with status {}",
                completion.request_type,
                completion.status
            );
        }
        histogram.record(completion.latency.as_nanos() as u64)?;
        requests += 1;
        bytes += block_size;
    }
    Ok((requests, bytes, histogram))
}

/// CPU time (user + system) of a process, from /proc/PID/stat.
fn process_cpu(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Fields 14 and 15 of stat(5), counted from the state field (3).
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (hz > 0).then(|| Duration::from_secs_f64(ticks as f64 / hz as f64))
}

fn print_table(args: &DeviceArgs, block_size: u64, target: &Target, runs: &[Measurement]) {
    println!(
        "icelab bench device: {}, {:?}, {} KiB blocks, depth {} per queue, ICE {}, {} s each",
        target.name(),
        args.pattern,
        block_size / 1024,
        args.depth,
        if target.ice() { "on" } else { "off" },
        args.seconds
    );
    println!(
        "{:>6} {:>10} {:>10} {:>9} {:>9} {:>9} {:>12} {:>12} {:>8}",
        "queues",
        "IOPS",
        "MB/s",
        "p50 us",
        "p99 us",
        "p99.9 us",
        "dev CPU s/GB",
        "gen CPU s/GB",
        "ratio"
    );
    let base = runs.first().map(Measurement::mb_per_s).unwrap_or(1.0);
    for run in runs {
        let us = |q: f64| run.latency_us(q);
        println!(
            "{:>6} {:>10.0} {:>10.1} {:>9.0} {:>9.0} {:>9.0} {:>12} {:>12} {:>7.2}x",
            run.queues,
            run.iops(),
            run.mb_per_s(),
            us(0.5),
            us(0.99),
            us(0.999),
            run.cpu_s_per_gb()
                .map_or("-".to_owned(), |v| format!("{v:.3}")),
            run.generator_cpu_s_per_gb()
                .map_or("-".to_owned(), |v| format!("{v:.3}")),
            run.mb_per_s() / base
        );
    }
}
