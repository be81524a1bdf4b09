//! `icelab bench all`: every part in one run, so that ratios compare
//! figures measured side by side (ratios within one run). The same loads drive
//! icelab with ICE on and off and qemu-storage-daemon's raw and LUKS
//! exports, one fresh backend per measurement on an image written in full
//! beforehand, an untimed warm-up before each timed run, targets
//! interleaved within each load and their order rotated every round so
//! that drift and order hit them alike, the device and the load generator
//! pinned to different CPUs. Each point is the median of the rounds with
//! their spread; the ratios divide device CPU per GB (MB/s beside). Writes
//! JSON, a markdown table and an SVG plot; `--baseline` turns it into a
//! regression check that tolerates the measured spread.

use super::baseline::{self, Ratio};
use super::crypto::CryptoDocument;
use super::device::{self, Figures, Load, Measurement, Pattern, Target};
use super::fair::{self, Pinning, Spread};
use super::guest::GuestDocument;
use super::{crypto, guest, plot};
use anyhow::{Context, bail};
use icelab_contract::bench::Percentiles;
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::path::PathBuf;

/// Options of `icelab bench all`.
#[derive(clap::Args, Debug)]
pub struct AllArgs {
    /// Seconds per measurement (default 2, or 0.5 with --quick).
    #[arg(long)]
    pub seconds: Option<f64>,
    /// Rounds over every load and target, the order of the targets
    /// rotated every round; each point reports the median of the rounds
    /// and their spread (default 5, with --quick too).
    #[arg(long)]
    pub repeats: Option<u32>,
    /// Seconds of untimed load before each measurement (default 0.5, or
    /// 0.25 with --quick); every target's image is also written in full
    /// once before the first round.
    #[arg(long)]
    pub warmup: Option<f64>,
    /// A short run for CI: 0.5 s points, fewer block sizes in the plot, a
    /// 1-second engine bench.
    #[arg(long)]
    pub quick: bool,
    /// Queues per backend (one submitting thread each).
    #[arg(long, default_value_t = 1)]
    pub queues: u16,
    /// Requests in flight per queue.
    #[arg(long, default_value_t = 32)]
    pub depth: usize,
    /// Image size (the region the load covers; default 1G, or 256M with
    /// --quick).
    #[arg(long)]
    pub size: Option<String>,
    /// Leave the device and the load generator unpinned (by default, with
    /// 2 or more CPUs, the device and qemu-storage-daemon run on the first
    /// half of the CPUs and the load generator on the rest).
    #[arg(long)]
    pub no_pin: bool,
    /// Leave out the engine bench (`icelab bench crypto`).
    #[arg(long)]
    pub no_engine: bool,
    /// Leave out the guest bench (`icelab bench guest`: two TCG boots
    /// running fio; about 40 s with --quick, 2-3 minutes without).
    #[arg(long)]
    pub no_guest: bool,
    /// Write every figure as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Write the markdown table to FILE (it is printed in any case).
    #[arg(long, value_name = "FILE")]
    pub markdown: Option<PathBuf>,
    /// Write an SVG plot of throughput against block size to FILE.
    #[arg(long, value_name = "FILE")]
    pub plot: Option<PathBuf>,
    /// Compare the run's ratios with a stored run's JSON; exit non-zero
    /// when one fell by more than its tolerance: the larger spread of the
    /// rounds of the two runs, at least --threshold.
    #[arg(long, value_name = "FILE")]
    pub baseline: Option<PathBuf>,
    /// The least fall of a ratio below the baseline that counts as a
    /// regression, in percent (the measured spread, when larger, counts
    /// instead).
    #[arg(long, default_value_t = 10.0)]
    pub threshold: f64,
}

/// A checked [`AllArgs`].
#[derive(Debug)]
struct Config {
    seconds: f64,
    repeats: u32,
    warmup: f64,
    quick: bool,
    queues: u16,
    depth: usize,
    size: u64,
    /// Block sizes of the sequential-read sweep plotted.
    sweep: Vec<u64>,
    engine: bool,
    pinning: Option<Pinning>,
    /// The guest part, unless --no-guest.
    guest: Option<guest::Plan>,
    args: AllArgs,
}

impl TryFrom<AllArgs> for Config {
    type Error = anyhow::Error;

    fn try_from(args: AllArgs) -> anyhow::Result<Self> {
        let seconds = args.seconds.unwrap_or(if args.quick { 0.5 } else { 2.0 });
        let repeats = args.repeats.unwrap_or(5);
        let warmup = args.warmup.unwrap_or(if args.quick { 0.25 } else { 0.5 });
        if !(1..=100).contains(&repeats) {
            bail!("--repeats {repeats}: use 1 to 100");
        }
        if !(0.1..=3600.0).contains(&seconds) {
            bail!("--seconds {seconds}: use 0.1 to 3600");
        }
        if !(0.0..=600.0).contains(&warmup) {
            bail!("--warmup {warmup}: use 0 to 600");
        }
        if !(0.0..100.0).contains(&args.threshold) {
            bail!("--threshold {}: use 0 to 100 (percent)", args.threshold);
        }
        if !(1..=64).contains(&args.queues) {
            bail!("--queues {}: use 1 to 64", args.queues);
        }
        let size = crate::size::parse_size(args.size.as_deref().unwrap_or(if args.quick {
            "256M"
        } else {
            "1G"
        }))
        .map_err(|error| anyhow::anyhow!("--size: {error}"))?;
        let sweep = if args.quick {
            vec![4 << 10, 128 << 10, 1 << 20]
        } else {
            vec![4 << 10, 16 << 10, 64 << 10, 128 << 10, 512 << 10, 1 << 20]
        };
        let guest = if args.no_guest {
            None
        } else if args.quick {
            Some(guest::Plan::quick()?)
        } else {
            Some(guest::Plan::new(
                5,
                64 << 20,
                crate::qemu::Accel::Auto,
                600,
            )?)
        };
        let pinning = if args.no_pin {
            None
        } else {
            Pinning::for_this_machine()
        };
        Ok(Self {
            seconds,
            repeats,
            warmup,
            quick: args.quick,
            queues: args.queues,
            depth: args.depth,
            size,
            sweep,
            engine: !args.no_engine,
            pinning,
            guest,
            args,
        })
    }
}

/// The targets, in the order of every table.
fn targets() -> [Target; 4] {
    [
        Target::Icelab { ice: true },
        Target::Icelab { ice: false },
        Target::QsdRaw,
        Target::QsdLuks,
    ]
}

/// The loads the issue's targets are stated for: (name, pattern, block size).
const KEY_LOADS: [(&str, Pattern, u64); 3] = [
    ("seqread-128k", Pattern::Read, 128 << 10),
    ("seqwrite-128k", Pattern::Write, 128 << 10),
    ("randread-4k", Pattern::Randread, 4 << 10),
];

/// The load whose multi-queue scaling is measured (icelab, ICE on and off).
const SCALING_LOAD: &str = "randread-4k";

/// The ratios tracked: (name, numerator target, denominator target).
/// Each is the numerator's GB per device CPU second over the
/// denominator's (the denominator's device CPU s/GB over the
/// numerator's), the MB/s ratio beside it.
const RATIOS: [(&str, &str, &str); 3] = [
    ("ice-on/ice-off", "icelab-ice-on", "icelab-ice-off"),
    ("ice-off/qsd-raw", "icelab-ice-off", "qsd-raw"),
    ("ice-on/qsd-luks", "icelab-ice-on", "qsd-luks"),
];

/// The goal of a tracked ratio (issue 13): ICE on/off 0.75 at 128 KiB,
/// 0.85 at 4 KiB random read; ICE off ≥ qsd raw; ICE on ≥ 1.5× qsd LUKS.
fn goal(load: &str, ratio: &str) -> f64 {
    match (ratio, load) {
        ("ice-on/ice-off", "randread-4k") => 0.85,
        ("ice-on/ice-off", _) => 0.75,
        ("ice-off/qsd-raw", _) => 1.0,
        _ => 1.5,
    }
}

/// What a tracked ratio's value divides.
const RATIO_METRIC: &str = "device CPU s/GB, denominator target's over numerator target's \
    (throughput per device CPU second, numerator relative to denominator); median of the \
    per-round ratios";

/// How the device and the load generator use threads, for the output.
const THREAD_MODEL: &str = "icelab serve: one worker thread per virtqueue (vhost-user-backend, \
    queues_per_thread: one queue each), plus one for the control queue when ICE is offered; \
    qemu-storage-daemon: its export's event loop plus aio=threads worker threads; load \
    generator: one submitting thread per queue. With pinning, all device threads share the \
    device CPUs and all load threads the generator CPUs.";

/// The JSON document of `icelab bench all`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AllDocument {
    /// The CPU model.
    pub cpu: String,
    /// CPUs available.
    pub cpus: usize,
    /// Whether `--quick` was given.
    pub quick: bool,
    /// Seconds per measurement.
    pub seconds_per_point: f64,
    /// Seconds of untimed load before each measurement.
    pub warmup_seconds: f64,
    /// Rounds; each point reports the median and spread of them.
    pub repeats: u32,
    /// How the rounds are ordered and what is done before timing, in words.
    pub method: String,
    /// Which CPUs the device and the load generator ran on, in words.
    pub pinning: String,
    /// The same, as CPU lists (null: unpinned).
    pub pinned: Option<Pinning>,
    /// How the device and the load generator use threads.
    pub thread_model: String,
    /// Queues per backend.
    pub queues: u16,
    /// Requests in flight per queue.
    pub depth: usize,
    /// Image size in bytes.
    pub size: u64,
    /// Which LUKS image qsd-luks exported, and why (empty: not measured).
    pub qsd_luks_image: String,
    /// Wall time of the run.
    pub wall_seconds: f64,
    /// The engine part (null: `--no-engine`).
    pub engine: Option<CryptoDocument>,
    /// Every measured point.
    pub points: Vec<AllPoint>,
    /// The tracked ratios, the guest's included.
    pub ratios: Vec<Ratio>,
    /// Multi-queue scaling of icelab at one load.
    pub scaling: Vec<Scaling>,
    /// The guest part (null: `--no-guest`).
    pub guest: Option<GuestDocument>,
}

/// One point of [`AllDocument`]: a load on a target, over the rounds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AllPoint {
    /// The load's name (`seqread-128k`).
    pub load: String,
    /// The target's name.
    pub target: String,
    /// The access pattern's name.
    pub pattern: String,
    /// Bytes per request.
    pub block_size: u64,
    /// Queues (one submitting thread each).
    pub queues: u16,
    /// Megabytes (10^6) per second over the rounds.
    pub mb_per_s: Spread,
    /// Requests per second over the rounds.
    pub iops: Spread,
    /// The device's (or qemu-storage-daemon's) CPU seconds per GB.
    pub device_cpu_s_per_gb: Option<Spread>,
    /// The load generator's CPU seconds per GB.
    pub loadgen_cpu_s_per_gb: Option<Spread>,
    /// Latency percentiles, the median of each over the rounds.
    pub latency_us: Percentiles,
    /// Every round's figures, in round order.
    pub rounds: Vec<Figures>,
}

/// Multi-queue scaling of one target at one load.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Scaling {
    /// The load's name.
    pub load: String,
    /// The target's name.
    pub target: String,
    /// The queue counts compared: [base, other].
    pub queues: [u16; 2],
    /// Median MB/s at each.
    pub mb_per_s: [f64; 2],
    /// Median device CPU s/GB at each.
    pub device_cpu_s_per_gb: [Option<f64>; 2],
    /// MB/s at the second count over the first (median of per-round ratios).
    pub mb_per_s_ratio: f64,
}

/// One load of the run: what is driven, on which targets.
struct LoadSpec {
    name: String,
    pattern: Pattern,
    block_size: u64,
    queues: u16,
    targets: Vec<Target>,
}

/// One point's rounds.
struct Point {
    load: String,
    target: &'static str,
    pattern: Pattern,
    block_size: u64,
    queues: u16,
    /// One per round, in round order.
    rounds: Vec<Measurement>,
}

/// The loads of a run: the key loads, the sequential-read sweep, and
/// the key scaling load at the other queue count (icelab only).
fn loads(config: &Config) -> Vec<LoadSpec> {
    let all = targets().to_vec();
    let mut out: Vec<LoadSpec> = KEY_LOADS
        .iter()
        .map(|&(name, pattern, block_size)| LoadSpec {
            name: name.to_owned(),
            pattern,
            block_size,
            queues: config.queues,
            targets: all.clone(),
        })
        .collect();
    for &bs in &config.sweep {
        if bs != 128 << 10 {
            out.push(LoadSpec {
                name: format!("seqread-{}k", bs >> 10),
                pattern: Pattern::Read,
                block_size: bs,
                queues: config.queues,
                targets: all.clone(),
            });
        }
    }
    out.push(LoadSpec {
        name: SCALING_LOAD.to_owned(),
        pattern: Pattern::Randread,
        block_size: 4 << 10,
        queues: scaling_queues(config.queues),
        targets: vec![Target::Icelab { ice: true }, Target::Icelab { ice: false }],
    });
    out
}

/// The queue count the scaling point compares with `queues`.
fn scaling_queues(queues: u16) -> u16 {
    if queues == 1 { 2 } else { 1 }
}

/// Runs every part, writes the outputs, checks the baseline.
pub fn run(args: AllArgs) -> anyhow::Result<()> {
    let config = Config::try_from(args)?;
    let started = std::time::Instant::now();
    let pinning = Pinning::describe(config.pinning.as_ref());
    eprintln!("pinning: {pinning}");
    let engine = if config.engine {
        Some(engine_figures(config.quick)?)
    } else {
        None
    };
    // The guest part first: it fails early (a lab build, a boot) where
    // the device loads cannot.
    let guest = config.guest.as_ref().map(guest::measure).transpose()?;
    let loads = loads(&config);
    // One image per target, written in full once: no timed pass pays for
    // allocating a sparse file's blocks and page-cache pages.
    let mut images = Vec::new();
    for target in targets() {
        let began = std::time::Instant::now();
        let image = target.prepare(config.size, true)?;
        eprintln!(
            "{}: image written in full ({:.1} s)",
            target.name(),
            began.elapsed().as_secs_f64()
        );
        images.push((target, image));
    }
    let luks_note = images
        .iter()
        .find(|(t, _)| *t == Target::QsdLuks)
        .and_then(|(_, i)| i.as_ref())
        .map(|i| i.note.clone())
        .unwrap_or_default();
    let mut points: Vec<Point> = Vec::new();
    for round in 0..config.repeats as usize {
        for (index, spec) in loads.iter().enumerate() {
            let load = Load {
                pattern: spec.pattern,
                block_size: spec.block_size,
                depth: config.depth,
                queues: spec.queues,
                seconds: config.seconds,
                warmup_seconds: config.warmup,
                size: config.size,
            };
            load.check()?;
            for slot in fair::rotation(spec.targets.len(), round, index) {
                let target = &spec.targets[slot];
                let image = images
                    .iter()
                    .find(|(t, _)| t == target)
                    .and_then(|(_, i)| i.as_ref());
                let backend = target.start_on(image, spec.queues)?;
                let measurement =
                    device::measure(target, &backend, &load, config.pinning.as_ref())?;
                drop(backend);
                if spec.pattern.writes()
                    && let Some(image) = image
                {
                    image.write_back()?;
                }
                eprintln!(
                    "round {} {:>14} {}q {:>15}: {:>9.1} MB/s {:>9.0} IOPS, device {} CPU s/GB, load generator {} CPU s/GB",
                    round + 1,
                    spec.name,
                    spec.queues,
                    target.name(),
                    measurement.mb_per_s(),
                    measurement.iops(),
                    opt(measurement.cpu_s_per_gb(), 3),
                    opt(measurement.generator_cpu_s_per_gb(), 3),
                );
                match points.iter_mut().find(|p| {
                    p.load == spec.name && p.target == target.name() && p.queues == spec.queues
                }) {
                    Some(point) => point.rounds.push(measurement),
                    None => points.push(Point {
                        load: spec.name.clone(),
                        target: target.name(),
                        pattern: spec.pattern,
                        block_size: spec.block_size,
                        queues: spec.queues,
                        rounds: vec![measurement],
                    }),
                }
            }
        }
    }
    // Tables list the points by load, then target, whatever the order
    // they were measured in.
    points.sort_by_key(|p| {
        (
            loads
                .iter()
                .position(|l| l.name == p.load && l.queues == p.queues),
            targets().iter().position(|t| t.name() == p.target),
        )
    });
    let mut ratios = ratios(&points, config.queues);
    if let Some(part) = &guest {
        ratios.extend(part.ratios.iter().cloned());
    }
    let scaling = scaling(&points, config.queues);
    let document = AllDocument {
        cpu: super::cpu_model(),
        cpus: std::thread::available_parallelism().map_or(1, usize::from),
        quick: config.quick,
        seconds_per_point: config.seconds,
        warmup_seconds: config.warmup,
        repeats: config.repeats,
        method: format!(
            "every target's image written in full before the first round, and written back \
             (fdatasync) after every measurement that writes; a fresh backend per \
             measurement with {} s of untimed load before the timed {} s; the order of the \
             targets rotated by one every round (and by one more per load), so each goes first \
             equally often over {} rounds; medians of the rounds with their spread ((max − \
             min) / median)",
            config.warmup,
            config.seconds,
            targets().len()
        ),
        pinning,
        pinned: config.pinning.clone(),
        thread_model: THREAD_MODEL.to_owned(),
        queues: config.queues,
        depth: config.depth,
        size: config.size,
        qsd_luks_image: luks_note,
        wall_seconds: started.elapsed().as_secs_f64(),
        engine,
        points: points.iter().map(Point::document).collect(),
        ratios,
        scaling,
        guest,
    };
    let mut markdown = markdown(&document);
    if let Some(part) = &document.guest {
        markdown.push('\n');
        markdown.push_str(&guest::markdown(part));
    }
    println!("{markdown}");
    if let Some(path) = &config.args.markdown {
        std::fs::write(path, &markdown)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if let Some(path) = &config.args.json {
        std::fs::write(path, baseline::encode(&document)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if let Some(path) = &config.args.plot {
        let series: Vec<(String, Vec<(u64, f64)>)> = targets()
            .iter()
            .map(|t| {
                let mut xy: Vec<(u64, f64)> = document
                    .points
                    .iter()
                    .filter(|p| {
                        p.target == t.name() && p.pattern == "read" && p.queues == config.queues
                    })
                    .map(|p| (p.block_size, p.mb_per_s.median))
                    .collect();
                xy.sort_by_key(|&(x, _)| x);
                (t.name().to_owned(), xy)
            })
            .collect();
        let title = format!(
            "Sequential read, QD {} x {} queue(s): median MB/s against block size ({})",
            config.depth,
            config.queues,
            super::cpu_model()
        );
        std::fs::write(path, plot::svg(&title, &series))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if let Some(path) = &config.args.baseline {
        baseline::check(&document.ratios, path, config.args.threshold)?;
    }
    Ok(())
}

/// A figure with `d` decimals, "-" when there is none.
fn opt(v: Option<f64>, d: usize) -> String {
    v.filter(|x| x.is_finite())
        .map_or("-".to_owned(), |x| format!("{x:.d$}"))
}

impl Point {
    fn document(&self) -> AllPoint {
        let rounds: Vec<Figures> = self.rounds.iter().map(Measurement::figures).collect();
        let median = |f: fn(&Figures) -> f64| {
            Spread::of(rounds.iter().map(f)).map_or(f64::NAN, |s| s.median)
        };
        AllPoint {
            load: self.load.clone(),
            target: self.target.to_owned(),
            pattern: device::pattern_name(self.pattern).to_owned(),
            block_size: self.block_size,
            queues: self.queues,
            mb_per_s: Spread::of(rounds.iter().map(|f| f.mb_per_s)).unwrap_or(NO_SPREAD),
            iops: Spread::of(rounds.iter().map(|f| f.iops)).unwrap_or(NO_SPREAD),
            device_cpu_s_per_gb: Spread::of(rounds.iter().filter_map(|f| f.device_cpu_s_per_gb)),
            loadgen_cpu_s_per_gb: Spread::of(rounds.iter().filter_map(|f| f.loadgen_cpu_s_per_gb)),
            latency_us: Percentiles {
                p50: median(|f| f.latency_us.p50),
                p99: median(|f| f.latency_us.p99),
                p99_9: median(|f| f.latency_us.p99_9),
            },
            rounds,
        }
    }
}

/// A figure never measured (no round had a finite value).
const NO_SPREAD: Spread = Spread {
    median: 0.0,
    min: 0.0,
    max: 0.0,
    spread_pct: 0.0,
    n: 0,
};

/// The engine part through `icelab bench crypto`'s own JSON.
fn engine_figures(quick: bool) -> anyhow::Result<CryptoDocument> {
    let dir = tempfile::Builder::new().prefix("icelab-bench-").tempdir()?;
    let json = dir.path().join("crypto.json");
    crypto::run(crypto::CryptoArgs {
        seconds: if quick { 1 } else { 2 },
        repeats: if quick { 1 } else { 3 },
        json: Some(json.clone()),
    })?;
    let text = std::fs::read(&json)?;
    Ok(serde_json::from_slice(&text)?)
}

/// The per-round values of `f(numerator round, denominator round)` for
/// two points measured in the same rounds, the finite ones (empty: a point
/// is missing).
fn per_round(
    points: &[Point],
    load: &str,
    queues: (u16, u16),
    targets: (&str, &str),
    f: impl Fn(&Measurement, &Measurement) -> Option<f64>,
) -> Vec<f64> {
    let find = |target: &str, queues: u16| {
        points
            .iter()
            .find(|p| p.load == load && p.target == target && p.queues == queues)
    };
    let (Some(n), Some(d)) = (find(targets.0, queues.0), find(targets.1, queues.1)) else {
        return Vec::new();
    };
    n.rounds
        .iter()
        .zip(&d.rounds)
        .filter_map(|(n, d)| f(n, d))
        .filter(|x| x.is_finite())
        .collect()
}

/// `a / b` when both are there and `b` is not zero.
fn quotient(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    a.zip(b).filter(|&(_, b)| b > 0.0).map(|(a, b)| a / b)
}

/// The tracked ratios of every key load: device CPU per GB (the
/// denominator target's s/GB over the numerator's, round by round; the
/// median and spread of those), with the MB/s ratio beside it.
fn ratios(points: &[Point], queues: u16) -> Vec<Ratio> {
    let mut out = Vec::new();
    for (load, _, _) in KEY_LOADS {
        for (name, num, den) in RATIOS {
            let cpu_rounds = per_round(points, load, (queues, queues), (num, den), |n, d| {
                quotient(d.cpu_s_per_gb(), n.cpu_s_per_gb())
            });
            let mb = Spread::of(per_round(
                points,
                load,
                (queues, queues),
                (num, den),
                |n, d| quotient(Some(n.mb_per_s()), Some(d.mb_per_s())),
            ));
            let Some(cpu) = Spread::of(cpu_rounds.iter().copied()) else {
                continue;
            };
            let goal = goal(load, name);
            let meeting = cpu_rounds.iter().filter(|&&x| x >= goal).count();
            out.push(Ratio {
                name: format!("{load} {name}"),
                load: load.to_owned(),
                ratio: name.to_owned(),
                value: cpu.median,
                goal: Some(goal),
                met: Some(cpu.median >= goal),
                metric: Some(RATIO_METRIC.to_owned()),
                spread_pct: Some(cpu.spread_pct),
                mb_per_s_ratio: mb.map(|s| s.median),
                mb_per_s_spread_pct: mb.map(|s| s.spread_pct),
                rounds_meeting_goal: Some([meeting, cpu_rounds.len()]),
            });
        }
    }
    out
}

/// icelab's scaling at [`SCALING_LOAD`]: `queues` against the other count.
fn scaling(points: &[Point], queues: u16) -> Vec<Scaling> {
    let other = scaling_queues(queues);
    let mut out = Vec::new();
    for target in ["icelab-ice-on", "icelab-ice-off"] {
        let find = |q: u16| {
            points
                .iter()
                .find(|p| p.load == SCALING_LOAD && p.target == target && p.queues == q)
                .map(Point::document)
        };
        let (Some(a), Some(b)) = (find(queues), find(other)) else {
            continue;
        };
        let Some(ratio) = Spread::of(per_round(
            points,
            SCALING_LOAD,
            (other, queues),
            (target, target),
            |n, d| quotient(Some(n.mb_per_s()), Some(d.mb_per_s())),
        )) else {
            continue;
        };
        out.push(Scaling {
            load: SCALING_LOAD.to_owned(),
            target: target.to_owned(),
            queues: [queues, other],
            mb_per_s: [a.mb_per_s.median, b.mb_per_s.median],
            device_cpu_s_per_gb: [
                a.device_cpu_s_per_gb.map(|s| s.median),
                b.device_cpu_s_per_gb.map(|s| s.median),
            ],
            mb_per_s_ratio: ratio.median,
        });
    }
    out
}

/// The run as markdown: every point's medians and spreads, the tracked
/// ratios against their goals, the engine ratios, the scaling.
fn markdown(doc: &AllDocument) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "icelab bench all on {} ({} CPUs), QD {} x {} queue(s), median of {} rounds of {:?} s per point after {:?} s untimed warm-up, one run\n",
        doc.cpu,
        doc.cpus,
        doc.depth,
        doc.queues,
        doc.repeats,
        doc.seconds_per_point,
        doc.warmup_seconds
    );
    let _ = writeln!(s, "Method: {}.\n", doc.method);
    let _ = writeln!(s, "Pinning: {}.\n", doc.pinning);
    let _ = writeln!(
        s,
        "| load | queues | target | MB/s | ± % | IOPS | p50 µs | p99 µs | p99.9 µs | device CPU s/GB | ± % | load-gen CPU s/GB |"
    );
    let _ = writeln!(
        s,
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for p in &doc.points {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            p.load,
            p.queues,
            p.target,
            opt(Some(p.mb_per_s.median), 1),
            opt(Some(p.mb_per_s.spread_pct), 0),
            opt(Some(p.iops.median), 0),
            opt(Some(p.latency_us.p50), 0),
            opt(Some(p.latency_us.p99), 0),
            opt(Some(p.latency_us.p99_9), 0),
            opt(p.device_cpu_s_per_gb.map(|x| x.median), 3),
            opt(p.device_cpu_s_per_gb.map(|x| x.spread_pct), 0),
            opt(p.loadgen_cpu_s_per_gb.map(|x| x.median), 3),
        );
    }
    let _ = writeln!(
        s,
        "\n± %: spread of the rounds, (max − min) / median. Ratios: throughput per device CPU second (the denominator's device CPU s/GB over the numerator's; for qsd the qemu-storage-daemon process's CPU), median of the per-round ratios; the MB/s ratio beside it.\n"
    );
    let _ = writeln!(
        s,
        "| ratio (same run) | per device CPU | ± % | MB/s ratio | ± % | goal (per device CPU) | met | rounds at goal |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---|---:|");
    // The guest's ratios have no goal; its own table shows them.
    for r in &doc.ratios {
        let Some(goal) = r.goal else { continue };
        let _ = writeln!(
            s,
            "| {} | {:.2}× | {} | {} | {} | {goal:?}× | {} | {} |",
            r.name,
            r.value,
            opt(r.spread_pct, 0),
            r.mb_per_s_ratio
                .filter(|x| x.is_finite())
                .map_or("-".to_owned(), |x| format!("{x:.2}×")),
            opt(r.mb_per_s_spread_pct, 0),
            if r.met == Some(true) { "yes" } else { "**no**" },
            r.rounds_meeting_goal
                .map_or("-".to_owned(), |[met, of]| format!("{met} of {of}")),
        );
    }
    if let Some(engine) = &doc.engine {
        let _ = writeln!(s, "\n| engine ratio (same run) | measured | goal | met |");
        let _ = writeln!(s, "|---|---:|---:|---|");
        for row in &engine.rows {
            // The goal: at least OpenSSL's speed on one thread (issue 13),
            // the faster of OpenSSL in process and `openssl speed`.
            let goal = row.threads == 1;
            let _ = writeln!(
                s,
                "| engine / OpenSSL AES-256-XTS, {}-byte units, {} thread(s) | {:.2}× | {} | {} |",
                row.data_unit_size,
                row.threads,
                row.ratio,
                if goal { "1.0×" } else { "-" },
                match (goal, row.ratio >= 1.0) {
                    (false, _) => "-",
                    (true, true) => "yes",
                    (true, false) => "**no**",
                },
            );
        }
        if let Some(stream) = &engine.stream {
            // No goal: it bounds the 128 KiB read ratio (benches/README.md).
            let _ = writeln!(
                s,
                "| engine decrypt / memcpy, streaming {} KiB requests from a {} MiB file mapping, {}-byte units, 1 thread ({:.1} / {:.1} GB/s) | {:.2}× | - | - |",
                stream.request_bytes >> 10,
                stream.source_bytes >> 20,
                stream.data_unit_size,
                stream.engine_gb_per_s,
                stream.memcpy_gb_per_s,
                stream.ratio,
            );
        }
    }
    if !doc.scaling.is_empty() {
        let _ = writeln!(
            s,
            "\nMulti-queue scaling, QD {} per queue. Thread model: {}\n",
            doc.depth, doc.thread_model
        );
        let _ = writeln!(
            s,
            "| load | target | queues | MB/s | device CPU s/GB | MB/s ratio (median per round) |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---:|");
        for x in &doc.scaling {
            let _ = writeln!(
                s,
                "| {} | {} | {} → {} | {:.1} → {:.1} | {} → {} | {:.2}× |",
                x.load,
                x.target,
                x.queues[0],
                x.queues[1],
                x.mb_per_s[0],
                x.mb_per_s[1],
                opt(x.device_cpu_s_per_gb[0], 3),
                opt(x.device_cpu_s_per_gb[1], 3),
                x.mb_per_s_ratio
            );
        }
    }
    if !doc.qsd_luks_image.is_empty() {
        let _ = writeln!(s, "\nqsd-luks image: {}.", doc.qsd_luks_image);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;
    use std::time::Duration;

    /// Every JSON file under `benches/` (stored runs, the baseline).
    fn stored_runs() -> Vec<(std::path::PathBuf, String)> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../benches");
        let mut out: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|entry| entry.unwrap().path())
            .filter(|path| path.extension().is_some_and(|e| e == "json"))
            .map(|path| {
                let text = std::fs::read_to_string(&path).unwrap();
                (path, text)
            })
            .collect();
        out.sort();
        assert!(!out.is_empty(), "no JSON in {}", dir.display());
        out
    }

    /// Parses as the document type and writes back the same JSON: field
    /// names, nulls, integer or not, nothing lost or added. (Not byte for
    /// byte: serde_json's default float parsing may be one ulp off.)
    fn round_trip<T: Serialize + serde::de::DeserializeOwned>(
        text: &str,
    ) -> Result<T, serde_json::Error> {
        let doc: T = serde_json::from_str(text)?;
        let stored: Value = serde_json::from_str(text)?;
        assert_eq!(serde_json::to_value(&doc)?, stored);
        Ok(doc)
    }

    #[test]
    fn every_stored_run_parses_and_writes_back_the_same() {
        for (path, text) in stored_runs() {
            let shown = path.display();
            // A `bench all` run, or a `bench guest` one.
            if let Err(all) = round_trip::<AllDocument>(&text) {
                let guest = round_trip::<GuestDocument>(&text).err();
                assert!(
                    guest.is_none(),
                    "{shown}: not bench all ({all}) nor bench guest ({guest:?})"
                );
            }
            let baseline = baseline::Baseline::parse(text.as_bytes())
                .unwrap_or_else(|e| panic!("{shown}: {e:#}"));
            assert!(!baseline.ratios.is_empty(), "{shown}");
        }
    }

    #[test]
    fn the_stored_baseline_renders_as_the_readme_shows() {
        let text = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../benches/baseline.json"),
        )
        .unwrap();
        let doc: AllDocument = serde_json::from_str(&text).unwrap();
        let md = markdown(&doc);
        for want in [
            "median of 5 rounds of 2.0 s per point after 0.5 s untimed warm-up, one run",
            "Pinning: device (icelab serve or qemu-storage-daemon, every thread) on CPU 0, load generator threads on CPU 1.",
            "| ratio (same run) | per device CPU | ± % | MB/s ratio | ± % | goal (per device CPU) | met | rounds at goal |",
            "| seqread-128k ice-on/ice-off | ",
            "| randread-4k ice-on/qsd-luks | ",
            "| randread-4k | icelab-ice-on | 1 → 2 | ",
            "\nqsd-luks image: LUKS1 ",
        ] {
            assert!(md.contains(want), "{want:?} in\n{md}");
        }
        // Every tracked ratio says what it divides and how far its rounds spread.
        for r in doc.ratios.iter().filter(|r| r.goal.is_some()) {
            assert!(
                r.metric
                    .as_deref()
                    .is_some_and(|m| m.contains("device CPU"))
            );
            assert!(
                r.spread_pct.is_some() && r.mb_per_s_ratio.is_some(),
                "{r:?}"
            );
        }
        // Every point has its rounds.
        for p in &doc.points {
            assert_eq!(p.rounds.len(), doc.repeats as usize, "{}", p.load);
        }
    }

    /// A point with one measurement per round: (bytes moved in 1 s,
    /// device CPU ms).
    fn point(load: &str, target: &'static str, queues: u16, rounds: &[(u64, u64)]) -> Point {
        Point {
            load: load.to_owned(),
            target,
            pattern: Pattern::Read,
            block_size: 128 << 10,
            queues,
            rounds: rounds
                .iter()
                .map(|&(bytes, ms)| Measurement::for_test_cpu(bytes, Duration::from_millis(ms)))
                .collect(),
        }
    }

    #[test]
    fn ratios_are_per_device_cpu_with_the_mb_per_s_ratio_beside() {
        // ICE on: 1 GB/s at 0.4 s/GB; ICE off: 2 GB/s at 0.2 s/GB, then
        // a slower round (0.25 s/GB) for the spread.
        let points = [
            point(
                "seqread-128k",
                "icelab-ice-on",
                1,
                &[
                    (1_000_000_000, 400),
                    (1_000_000_000, 400),
                    (1_000_000_000, 400),
                ],
            ),
            point(
                "seqread-128k",
                "icelab-ice-off",
                1,
                &[
                    (2_000_000_000, 400),
                    (2_000_000_000, 400),
                    (2_000_000_000, 500),
                ],
            ),
            point("seqread-128k", "qsd-raw", 1, &[(0, 0), (0, 0), (0, 0)]),
        ];
        let found = ratios(&points, 1);
        assert_eq!(found.len(), 1, "{found:?}");
        let r = &found[0];
        assert_eq!(r.name, "seqread-128k ice-on/ice-off");
        // Median of 0.2/0.4, 0.2/0.4, 0.25/0.4.
        assert!((r.value - 0.5).abs() < 1e-12, "{r:?}");
        let spread = r.spread_pct.unwrap();
        assert!((spread - (0.625 - 0.5) / 0.5 * 100.0).abs() < 1e-9, "{r:?}");
        assert!((r.mb_per_s_ratio.unwrap() - 0.5).abs() < 1e-12);
        assert_eq!(r.mb_per_s_spread_pct, Some(0.0));
        assert_eq!((r.goal, r.met), (Some(0.75), Some(false)));
        assert!(r.metric.as_deref().unwrap().starts_with("device CPU s/GB"));
        assert_eq!(r.rounds_meeting_goal, Some([0, 3]));
    }

    #[test]
    fn the_rounds_that_reach_the_goal_are_counted_and_shown() {
        // ICE on 0.4 s/GB every round; ICE off 0.2, 0.32, 0.36: per-round
        // ratios 0.5, 0.8, 0.9 against the 0.75 goal.
        let on = [(1_000_000_000, 400); 3];
        let off = [
            (1_000_000_000, 200),
            (1_000_000_000, 320),
            (1_000_000_000, 360),
        ];
        let points = [
            point("seqread-128k", "icelab-ice-on", 1, &on),
            point("seqread-128k", "icelab-ice-off", 1, &off),
        ];
        let found = ratios(&points, 1);
        let r = &found[0];
        assert!((r.value - 0.8).abs() < 1e-12, "{r:?}");
        assert_eq!(r.rounds_meeting_goal, Some([2, 3]));
        let mut doc: AllDocument = serde_json::from_str(
            &std::fs::read_to_string(
                std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../benches/baseline.json"),
            )
            .unwrap(),
        )
        .unwrap();
        doc.ratios = found;
        let md = markdown(&doc);
        assert!(
            md.contains("| seqread-128k ice-on/ice-off | 0.80× | 50 | ")
                && md.contains("| 0.75× | yes | 2 of 3 |"),
            "{md}"
        );
    }

    #[test]
    fn goals_follow_the_issue() {
        assert_eq!(goal("seqread-128k", "ice-on/ice-off"), 0.75);
        assert_eq!(goal("seqwrite-128k", "ice-on/ice-off"), 0.75);
        assert_eq!(goal("randread-4k", "ice-on/ice-off"), 0.85);
        assert_eq!(goal("randread-4k", "ice-off/qsd-raw"), 1.0);
        assert_eq!(goal("seqread-128k", "ice-on/qsd-luks"), 1.5);
    }

    #[test]
    fn scaling_compares_the_two_queue_counts_round_by_round() {
        let points = [
            point(
                SCALING_LOAD,
                "icelab-ice-on",
                1,
                &[(100, 1), (200, 1), (100, 1)],
            ),
            point(
                SCALING_LOAD,
                "icelab-ice-on",
                2,
                &[(150, 1), (300, 1), (200, 1)],
            ),
        ];
        let found = scaling(&points, 1);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].queues, [1, 2]);
        // Per round 1.5, 1.5, 2.0.
        assert!((found[0].mb_per_s_ratio - 1.5).abs() < 1e-12);
        assert_eq!(scaling_queues(1), 2);
        assert_eq!(scaling_queues(4), 1);
    }
}
