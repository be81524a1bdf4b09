//! `icelab bench guest`: fio inside the lab guest on an inlinecrypt ext4
//! filesystem (the guest runner's `bench` suite), in two boots: a device
//! with inline encryption (fscrypt's I/O is encrypted by the emulated
//! engine, "native ICE") and a device without (the guest kernel encrypts
//! with blk-crypto-fallback). Each boot also measures an unencrypted
//! directory ("none"), so every ratio compares figures from one boot,
//! except native/fallback, which spans the two (the two "none" figures
//! show how far the boots drifted apart).
//!
//! Under TCG the guest's CPU is emulated: absolute figures say nothing
//! about hardware, and the output says so. The encrypted figures are
//! attributed to a path only when the guest's kernel log named it
//! (`blk-crypto-path`) and the device's counters agree.

use super::baseline::{self, Ratio};
use crate::artifacts::{self, Artifacts, Overrides};
use crate::boot::{self as lab_boot, BootSpec};
use crate::plan as lab_plan;
use crate::qemu::{self, Accel};
use crate::report::{Outcome, Source, TestResult};
use anyhow::{Context, bail};
use icelab_contract::bench::{FACT_FIO_ENCRYPTED, FACT_FIO_PLAIN, FioFacts, FioFigures};
use icelab_contract::cmdline::{Fio, GuestPlan};
use icelab_contract::device::Counters;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Options of `icelab bench guest`.
#[derive(clap::Args, Debug)]
pub struct GuestArgs {
    /// Seconds per fio run (default 5, or 1 with --quick).
    #[arg(long)]
    pub seconds: Option<u32>,
    /// Size of each fio file (default 64M, or 16M with --quick).
    #[arg(long)]
    pub size: Option<String>,
    /// A short run for CI: 1-second points on a 16 MiB file, the
    /// sequential read only.
    #[arg(long)]
    pub quick: bool,
    /// Accelerator: auto probes KVM and falls back to TCG.
    #[arg(long, value_enum, default_value = "auto")]
    pub accel: Accel,
    /// Longest a boot may take, in seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
    /// Keep each boot's image, logs and stats under DIR.
    #[arg(long, value_name = "DIR")]
    pub keep: Option<PathBuf>,
    /// Write every figure as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Write the markdown table to FILE (it is printed in any case).
    #[arg(long, value_name = "FILE")]
    pub markdown: Option<PathBuf>,
    /// Compare the run's ratios with a stored run's JSON (`bench guest` or
    /// `bench all`); exit non-zero when one fell by more than --threshold.
    #[arg(long, value_name = "FILE")]
    pub baseline: Option<PathBuf>,
    /// Allowed fall of a ratio below the baseline, in percent.
    #[arg(long, default_value_t = 10.0)]
    pub threshold: f64,
}

/// The checked parameters of a guest measurement.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Seconds per fio run.
    pub seconds: u32,
    /// Bytes per fio file.
    pub size: u64,
    /// Accelerator asked for.
    pub accel: Accel,
    /// Longest a boot may take.
    pub timeout: Duration,
    /// Where to keep each boot's files.
    pub keep: Option<PathBuf>,
    /// The loads measured (a subset of [`LOADS`], in its order).
    pub loads: Vec<&'static str>,
}

impl Plan {
    /// The plan of `--quick`: one load (the sequential read: the
    /// decryption path), 1-second points, 16 MiB files; two boots of about
    /// 20 s each on an idle 2-core machine.
    pub fn quick() -> anyhow::Result<Self> {
        let mut plan = Self::new(1, 16 << 20, Accel::Auto, 600)?;
        plan.loads = vec!["seqread-128k"];
        Ok(plan)
    }

    /// Checks the values (the guest runner refuses the same ranges, but
    /// only after a boot).
    pub fn new(seconds: u32, size: u64, accel: Accel, timeout: u64) -> anyhow::Result<Self> {
        if !(1..=3600).contains(&seconds) {
            bail!("--seconds {seconds}: use 1 to 3600");
        }
        if !size.is_multiple_of(4096) || !(1 << 20..=16 << 30).contains(&size) {
            bail!("--size {size}: use a multiple of 4K from 1M to 16G");
        }
        if timeout < 30 {
            bail!("--timeout {timeout}: a boot needs at least 30 s");
        }
        Ok(Self {
            seconds,
            size,
            accel,
            timeout: Duration::from_secs(timeout),
            keep: None,
            loads: LOADS.to_vec(),
        })
    }
}

/// The loads, as the guest suite names them (test `fio-<load>`).
pub const LOADS: [&str; 3] = ["seqwrite-128k", "seqread-128k", "randread-4k"];

/// What the output says about the figures under TCG.
pub const TCG_NOTE: &str = "TCG: software emulation; ratios only, not hardware numbers";

/// One boot of the bench suite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Boot {
    /// Device with inline encryption; QEMU forwards it.
    Native,
    /// Device without; the guest kernel uses blk-crypto-fallback.
    Fallback,
}

impl Boot {
    /// The name in the output and as `icelab.expect`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Native => "native",
            Self::Fallback => "fallback",
        }
    }

    /// The configuration the encrypted directory measures in this boot.
    pub fn encrypted_label(self) -> &'static str {
        match self {
            Self::Native => "native ICE",
            Self::Fallback => "blk-crypto-fallback",
        }
    }
}

/// One guest test's verdict, from its `{"type":"test",...}` line (kept
/// apart from `icelab run`'s report types: the bench needs only these).
#[derive(Debug, Clone, PartialEq)]
pub struct GuestTest {
    /// Test name.
    pub name: String,
    /// Whether it passed.
    pub passed: bool,
    /// Its message.
    pub message: String,
    /// What it observed (read through a type where used: [`FioFacts`],
    /// [`PathFacts`]).
    pub facts: Value,
    /// Wall time in the guest.
    pub duration_ms: u64,
}

impl GuestTest {
    /// The bench's view of a guest test's result.
    pub fn from_result(result: &TestResult) -> Self {
        Self {
            name: result.name.clone(),
            passed: result.outcome == Outcome::Pass,
            message: result.message.clone(),
            facts: result.facts.clone(),
            duration_ms: u64::try_from(result.duration.as_millis()).unwrap_or(u64::MAX),
        }
    }
}

/// The facts of `blk-crypto-path` the bench keeps.
#[derive(Debug, Default, Deserialize)]
pub struct PathFacts {
    /// The kernel log line that named the boot's path.
    pub matched_line: Option<String>,
}

/// One figure: a load in a directory of a boot.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    /// The boot.
    pub boot: Boot,
    /// [`FACT_FIO_PLAIN`] (no encryption) or [`FACT_FIO_ENCRYPTED`].
    pub dir: &'static str,
    /// The load.
    pub load: String,
    /// The guest's figures for it.
    pub figures: FioFigures,
}

impl Point {
    fn mb_per_s(&self) -> f64 {
        self.figures.mb_per_s
    }

    fn label(&self) -> String {
        match self.dir {
            FACT_FIO_ENCRYPTED => self.boot.encrypted_label().to_owned(),
            _ => format!("none ({} boot)", self.boot.name()),
        }
    }
}

/// The JSON document of `icelab bench guest` (and the `guest` part of
/// `icelab bench all`'s).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GuestDocument {
    /// The host's CPU model.
    pub cpu: String,
    /// The host's CPUs.
    pub cpus: usize,
    /// The accelerator used (`tcg`, `kvm`).
    pub accel: String,
    /// What the figures mean under that accelerator.
    pub note: String,
    /// The guest kernel's version.
    pub kernel: String,
    /// QEMU's version.
    pub qemu: String,
    /// Seconds per fio run.
    pub seconds_per_point: u32,
    /// Bytes per fio file.
    pub size: u64,
    /// How fio ran.
    pub fio: String,
    /// The loads measured.
    pub loads: Vec<String>,
    /// Wall time of both boots.
    pub wall_seconds: f64,
    /// One per boot.
    pub boots: Vec<BootRecord>,
    /// Every figure.
    pub points: Vec<GuestPoint>,
    /// The tracked ratios.
    pub ratios: Vec<Ratio>,
    /// How far the two boots' unencrypted figures drifted apart.
    pub drift: Vec<Drift>,
}

/// One boot in [`GuestDocument`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BootRecord {
    /// [`Boot::name`].
    pub name: String,
    /// [`Boot::encrypted_label`].
    pub encrypted: String,
    /// Wall time of the boot.
    pub wall_seconds: f64,
    /// The kernel log line naming the blk-crypto path (null: none).
    pub kernel_log: Option<String>,
    /// The device's [`Counters`] (null: it wrote no stats), carried as
    /// written and never read back: stored runs predate counters added
    /// since (`control_queue`), which [`Counters`] requires.
    pub device_stats: Option<Value>,
}

/// One figure in [`GuestDocument`]: a [`Point`] with its labels.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GuestPoint {
    /// [`Boot::name`].
    pub boot: String,
    /// `plain` or `encrypted`.
    pub dir: String,
    /// The load.
    pub load: String,
    /// The configuration measured, for the table.
    pub configuration: String,
    /// The guest's figures.
    #[serde(flatten)]
    pub figures: FioFigures,
}

impl From<&Point> for GuestPoint {
    fn from(p: &Point) -> Self {
        Self {
            boot: p.boot.name().to_owned(),
            dir: p.dir.to_owned(),
            load: p.load.clone(),
            configuration: p.label(),
            figures: p.figures.clone(),
        }
    }
}

/// The two boots' unencrypted figures of one load divided (shown, not
/// tracked).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Drift {
    /// Its name in the table.
    pub name: String,
    /// The load.
    pub load: String,
    /// The quotient.
    pub value: f64,
}

/// Runs `icelab bench guest`.
pub fn run(args: GuestArgs) -> anyhow::Result<()> {
    let seconds = args.seconds.unwrap_or(if args.quick { 1 } else { 5 });
    let size = crate::size::parse_size(args.size.as_deref().unwrap_or(if args.quick {
        "16M"
    } else {
        "64M"
    }))
    .map_err(|error| anyhow::anyhow!("--size: {error}"))?;
    let mut plan = Plan::new(seconds, size, args.accel, args.timeout)?;
    if args.quick {
        plan.loads = Plan::quick()?.loads;
    }
    plan.keep.clone_from(&args.keep);
    let document = measure(&plan)?;
    let markdown = markdown(&document);
    println!("{markdown}");
    if let Some(path) = &args.markdown {
        std::fs::write(path, &markdown)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if let Some(path) = &args.json {
        std::fs::write(path, baseline::encode(&document)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if let Some(path) = &args.baseline {
        baseline::check(&document.ratios, path, args.threshold)?;
    }
    Ok(())
}

/// Builds (or finds) the lab, boots the suite natively and with the
/// fallback, and returns every figure and ratio. Fails, naming
/// the test, when a boot did not measure everything or the path the
/// encrypted figures took is not the one the boot was for.
pub fn measure(plan: &Plan) -> anyhow::Result<GuestDocument> {
    let started = Instant::now();
    let mut artifacts = artifacts::build(&Overrides::default())?;
    // Both boots use a private copy of the initramfs: the cache's archives
    // are shared with concurrent runs, which prune old ones.
    let private = tempfile::Builder::new()
        .prefix("icelab-bench-guest-")
        .tempdir()?;
    let initramfs = private.path().join("initramfs.cpio");
    std::fs::copy(&artifacts.initramfs, &initramfs).with_context(|| {
        format!(
            "cannot copy {} to {}",
            artifacts.initramfs.display(),
            initramfs.display()
        )
    })?;
    artifacts.initramfs = initramfs;
    if !artifacts.qemu_patched {
        bail!(
            "{} does not forward inline encryption (no `inline-encryption` property); \
             delete its cache directory so `icelab build` builds the patched QEMU",
            artifacts.qemu.display()
        );
    }
    let accel = qemu::choose(plan.accel, &artifacts);
    eprintln!(
        "icelab bench guest: {} under {}, {} s per fio run, {} MiB files",
        artifacts.kernel_version,
        accel.name().to_uppercase(),
        plan.seconds,
        plan.size >> 20
    );
    let mut points = Vec::new();
    let mut boots = Vec::new();
    for boot in [Boot::Native, Boot::Fallback] {
        let outcome = run_boot(plan, &artifacts, accel, boot)?;
        points.extend(points_of(boot, &plan.loads, &outcome.results)?);
        check_attribution(boot, &outcome)?;
        boots.push(BootRecord {
            name: boot.name().to_owned(),
            encrypted: boot.encrypted_label().to_owned(),
            wall_seconds: outcome.wall.as_secs_f64(),
            kernel_log: outcome.path_line,
            device_stats: outcome
                .stats
                .as_ref()
                .map(serde_json::to_value)
                .transpose()?,
        });
    }
    let (ratios, drift) = ratios(&points);
    Ok(GuestDocument {
        cpu: super::cpu_model(),
        cpus: std::thread::available_parallelism().map_or(1, usize::from),
        accel: accel.name().to_owned(),
        note: if accel == Accel::Tcg {
            TCG_NOTE.to_owned()
        } else {
            "KVM: the guest CPU is the host's; ratios still compare best".to_owned()
        },
        kernel: artifacts.kernel_version,
        qemu: artifacts.qemu_version,
        seconds_per_point: plan.seconds,
        size: plan.size,
        fio: "O_DIRECT, libaio, iodepth 16, one job, 1 s ramp, time based".to_owned(),
        loads: plan.loads.iter().map(|l| (*l).to_owned()).collect(),
        wall_seconds: started.elapsed().as_secs_f64(),
        boots,
        points: points.iter().map(GuestPoint::from).collect(),
        ratios,
        drift,
    })
}

/// The figures of a boot's fio tests; fails naming a test that did not
/// pass or reported no figure.
fn points_of(boot: Boot, loads: &[&str], results: &[GuestTest]) -> anyhow::Result<Vec<Point>> {
    let mut out = Vec::new();
    for &load in loads {
        let name = format!("fio-{load}");
        let Some(result) = results.iter().find(|r| r.name == name) else {
            bail!(
                "the {} boot reported no {name} (see the lines above)",
                boot.name()
            );
        };
        if !result.passed {
            bail!("{} boot: {name} failed: {}", boot.name(), result.message);
        }
        let facts = FioFacts::deserialize(&result.facts).map_err(|error| {
            anyhow::anyhow!(
                "{} boot: {name} reported malformed figures ({error}): {}",
                boot.name(),
                result.facts
            )
        })?;
        for dir in [FACT_FIO_PLAIN, FACT_FIO_ENCRYPTED] {
            let Some(figures) = facts.get(dir) else {
                bail!(
                    "{} boot: {name} reported no figures for {dir}: {}",
                    boot.name(),
                    result.facts
                );
            };
            out.push(Point {
                boot,
                dir,
                load: load.to_owned(),
                figures: figures.clone(),
            });
        }
    }
    Ok(out)
}

/// The guest's kernel log must name the boot's path, and the device's
/// counters must agree: crypto requests in the native boot, none in the
/// fallback boot.
fn check_attribution(boot: Boot, outcome: &BootOutcome) -> anyhow::Result<()> {
    let path = outcome
        .results
        .iter()
        .find(|r| r.name == "blk-crypto-path")
        .with_context(|| format!("the {} boot reported no blk-crypto-path", boot.name()))?;
    if !path.passed {
        bail!(
            "{} boot: blk-crypto-path failed, so its encrypted figures cannot be attributed: {}",
            boot.name(),
            path.message
        );
    }
    let stats = outcome.stats.as_ref();
    let counts = stats.map(|c| (c.crypto_out.requests, c.crypto_in.requests));
    match (boot, counts) {
        (_, None) => bail!(
            "the {} boot's device wrote no stats (see its device.log with --keep)",
            boot.name()
        ),
        (Boot::Native, Some((o, i))) if o == 0 || i == 0 => bail!(
            "native boot: the device saw {o} CRYPTO_OUT and {i} CRYPTO_IN requests; \
             the engine did not do the encryption"
        ),
        (Boot::Fallback, Some((o, i))) if o + i > 0 => bail!(
            "fallback boot: a device without inline encryption saw {o} CRYPTO_OUT and {i} \
             CRYPTO_IN requests"
        ),
        _ => Ok(()),
    }
}

/// The tracked ratios (MB/s over MB/s, per load: native/none,
/// fallback/none, native/fallback) in `bench all`'s format, and the boot
/// drift (none in the native boot over none in the fallback boot), which
/// is shown but not tracked.
pub fn ratios(points: &[Point]) -> (Vec<Ratio>, Vec<Drift>) {
    let figure = |boot: Boot, dir: &str, load: &str| {
        points
            .iter()
            .find(|p| p.boot == boot && p.dir == dir && p.load == load)
            .map(Point::mb_per_s)
    };
    let mut tracked = Vec::new();
    let mut drift = Vec::new();
    for load in LOADS {
        let native = figure(Boot::Native, FACT_FIO_ENCRYPTED, load);
        let native_none = figure(Boot::Native, FACT_FIO_PLAIN, load);
        let fallback = figure(Boot::Fallback, FACT_FIO_ENCRYPTED, load);
        let fallback_none = figure(Boot::Fallback, FACT_FIO_PLAIN, load);
        for (ratio, numerator, denominator) in [
            ("native/none", native, native_none),
            ("fallback/none", fallback, fallback_none),
            ("native/fallback", native, fallback),
        ] {
            if let (Some(n), Some(d)) = (numerator, denominator)
                && d > 0.0
            {
                tracked.push(Ratio {
                    name: format!("guest {load} {ratio}"),
                    load: load.to_owned(),
                    ratio: ratio.to_owned(),
                    value: n / d,
                    ..Ratio::default()
                });
            }
        }
        if let (Some(n), Some(d)) = (native_none, fallback_none)
            && d > 0.0
        {
            drift.push(Drift {
                name: format!("guest {load} none: native boot / fallback boot"),
                load: load.to_owned(),
                value: n / d,
            });
        }
    }
    (tracked, drift)
}

/// The guest part as markdown: the TCG note, the figures, the ratios.
pub fn markdown(doc: &GuestDocument) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "icelab bench guest: fio in the guest ({}, {}), {}, {} s per point, {} MiB file per directory, on {}\n",
        doc.kernel,
        doc.accel.to_uppercase(),
        doc.fio,
        doc.seconds_per_point,
        doc.size >> 20,
        doc.cpu,
    );
    let _ = writeln!(s, "**{}.**\n", doc.note);
    let _ = writeln!(
        s,
        "| load | configuration | MB/s | IOPS | p50 µs | p99 µs | p99.9 µs |"
    );
    let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|");
    // A figure that is not a number shows as "-".
    let f = |x: f64, d: usize| {
        if x.is_finite() {
            format!("{x:.d$}")
        } else {
            "-".to_owned()
        }
    };
    for load in LOADS {
        for p in doc.points.iter().filter(|p| p.load == load) {
            let fig = &p.figures;
            let _ = writeln!(
                s,
                "| {load} | {} | {} | {} | {} | {} | {} |",
                p.configuration,
                f(fig.mb_per_s, 1),
                f(fig.iops, 0),
                f(fig.clat_us.p50, 0),
                f(fig.clat_us.p99, 0),
                f(fig.clat_us.p99_9, 0),
            );
        }
    }
    let _ = writeln!(s, "\n| ratio (MB/s, same run) | measured |");
    let _ = writeln!(s, "|---|---:|");
    let rows = doc.ratios.iter().map(|r| (&r.name, r.value));
    for (name, value) in rows.chain(doc.drift.iter().map(|d| (&d.name, d.value))) {
        let _ = writeln!(s, "| {name} | {value:.2}× |");
    }
    s
}

/// What a boot produced.
struct BootOutcome {
    results: Vec<GuestTest>,
    /// The device's counters (`None`: it wrote no stats file).
    stats: Option<Counters>,
    /// The kernel log line `blk-crypto-path` matched.
    path_line: Option<String>,
    wall: Duration,
}

/// Boots the bench suite once (through `icelab run`'s boot code) and
/// keeps what the bench needs: the guest's tests, the device's stats.
fn run_boot(
    plan: &Plan,
    artifacts: &Artifacts,
    accel: Accel,
    boot: Boot,
) -> anyhow::Result<BootOutcome> {
    let started = Instant::now();
    let temporary;
    let dir = match &plan.keep {
        Some(keep) => keep.join(boot.name()),
        None => {
            temporary = tempfile::Builder::new()
                .prefix("icelab-bench-guest-")
                .tempdir()?;
            temporary.path().to_owned()
        }
    };
    // Two fio files, the filesystem's own blocks, room to spare.
    let disk = (2 * plan.size + (256 << 20)).max(512 << 20);
    let boot_plan = lab_plan::bench_boot(boot.name(), boot == Boot::Native, disk);
    let device = lab_plan::device_options(&boot_plan, None);
    // The guest's fio tests allow 600 s each before this factor.
    let factor = 1 + u64::from(plan.seconds) * 2 / 400;
    let cmdline = GuestPlan {
        timeout_factor: Some(u32::try_from(factor).unwrap_or(u32::MAX)),
        fio: Some(Fio {
            seconds: plan.seconds,
            size: plan.size,
            loads: plan.loads.iter().map(|l| (*l).to_owned()).collect(),
        }),
        ..lab_plan::guest_plan(&boot_plan)
    }
    .to_cmdline();
    eprintln!(
        "--- boot {} (encrypted directory: {})",
        boot.name(),
        boot.encrypted_label()
    );
    let image = dir.join("disk.img");
    let outcome = lab_boot::run_boot(
        artifacts,
        accel,
        &BootSpec {
            name: boot.name(),
            dir: &dir,
            image: &image,
            fresh_image: true,
            device: &device,
            device_cmd: None,
            cmdline: &cmdline,
            inline_encryption: boot == Boot::Native,
            timeout: plan.timeout,
            restart_device: false,
            scan_memory: false,
        },
    )?;
    if !outcome.guest_completed {
        let problem = outcome
            .results
            .iter()
            .filter(|r| r.source == Source::Host)
            .map(|r| r.message.as_str())
            .collect::<Vec<_>>()
            .join("\n");
        bail!("{} boot: {problem}", boot.name());
    }
    if !outcome.device_exit.is_some_and(|s| s.success()) {
        bail!(
            "{} boot: icelab serve did not exit cleanly ({:?}):\n{}",
            boot.name(),
            outcome.device_exit,
            lab_boot::tail(&outcome.paths.device_log, 20)
        );
    }
    let results: Vec<GuestTest> = outcome
        .results
        .iter()
        .filter(|r| r.source == Source::Guest)
        .map(GuestTest::from_result)
        .collect();
    let path_line = results
        .iter()
        .find(|r| r.name == "blk-crypto-path")
        .and_then(|r| PathFacts::deserialize(&r.facts).ok())
        .and_then(|facts| facts.matched_line);
    Ok(BootOutcome {
        results,
        stats: crate::checks::parse_stats(&outcome.stats)
            .ok()
            .map(|file| file.stats),
        path_line,
        wall: started.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use icelab_contract::bench::Percentiles;
    use icelab_contract::device::Traffic;
    use serde_json::json;

    fn figures(mb: f64) -> FioFigures {
        FioFigures {
            mb_per_s: mb,
            iops: mb * 10.0,
            clat_us: Percentiles {
                p50: 100.0,
                p99: 200.0,
                p99_9: 300.0,
            },
            io_bytes: 1 << 20,
            runtime_ms: 1000,
        }
    }

    fn point(boot: Boot, dir: &'static str, load: &str, mb: f64) -> Point {
        Point {
            boot,
            dir,
            load: load.to_owned(),
            figures: figures(mb),
        }
    }

    fn find<'a>(values: &'a [Ratio], name: &str) -> &'a Ratio {
        values
            .iter()
            .find(|v| v.name == name)
            .unwrap_or_else(|| panic!("no {name} in {values:?}"))
    }

    #[test]
    fn ratios_divide_the_right_figures() {
        let points = vec![
            point(Boot::Native, "plain", "seqread-128k", 200.0),
            point(Boot::Native, "encrypted", "seqread-128k", 180.0),
            point(Boot::Fallback, "plain", "seqread-128k", 250.0),
            point(Boot::Fallback, "encrypted", "seqread-128k", 50.0),
        ];
        let (tracked, drift) = ratios(&points);
        assert_eq!(tracked.len(), 3, "{tracked:?}");
        let v = |name| find(&tracked, name).value;
        assert!((v("guest seqread-128k native/none") - 0.9).abs() < 1e-12);
        assert!((v("guest seqread-128k fallback/none") - 0.2).abs() < 1e-12);
        assert!((v("guest seqread-128k native/fallback") - 3.6).abs() < 1e-12);
        assert_eq!(drift.len(), 1);
        assert!((drift[0].value - 0.8).abs() < 1e-12);
        let native = find(&tracked, "guest seqread-128k native/none");
        assert_eq!((native.goal, native.met), (None, None));
    }

    #[test]
    fn missing_or_zero_figures_give_no_ratio() {
        let points = vec![
            point(Boot::Native, "plain", "randread-4k", 0.0),
            point(Boot::Native, "encrypted", "randread-4k", 10.0),
            point(Boot::Fallback, "encrypted", "randread-4k", 5.0),
        ];
        let (tracked, drift) = ratios(&points);
        let names: Vec<&str> = tracked.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, ["guest randread-4k native/fallback"]);
        assert!(drift.is_empty());
    }

    #[test]
    fn the_baseline_check_covers_guest_ratios() {
        let points = vec![
            point(Boot::Native, "plain", "seqwrite-128k", 100.0),
            point(Boot::Native, "encrypted", "seqwrite-128k", 90.0),
            point(Boot::Fallback, "plain", "seqwrite-128k", 100.0),
            point(Boot::Fallback, "encrypted", "seqwrite-128k", 30.0),
        ];
        let base = ratios(&points).0;
        let mut slower = points.clone();
        slower[1] = point(Boot::Native, "encrypted", "seqwrite-128k", 60.0);
        let run = ratios(&slower).0;
        let fallen = baseline::regressions(&run, &base, 10.0);
        assert_eq!(fallen.len(), 2, "{fallen:?}");
        assert!(fallen[0].starts_with("guest seqwrite-128k native/none:"));
        assert!(fallen[1].starts_with("guest seqwrite-128k native/fallback:"));
    }

    fn result(name: &str, passed: bool, facts: Value) -> GuestTest {
        let line = json!({
            "name": name,
            "status": if passed { "pass" } else { "fail" },
            "message": "why",
            // The guest always writes an object; a test of "no facts" is an empty one.
            "facts": if facts.is_null() { json!({}) } else { facts },
            "duration_ms": 1500,
        });
        GuestTest::from_result(&TestResult::from_guest(
            "native",
            serde_json::from_value(line).expect("a test record"),
        ))
    }

    #[test]
    fn guest_results_convert() {
        let t = result("fio-randread-4k", true, json!({"plain": {}}));
        assert!(t.passed);
        assert_eq!(t.name, "fio-randread-4k");
        assert_eq!(t.duration_ms, 1500);
        assert_eq!(t.facts, json!({"plain": {}}));
        let f = result("x", false, Value::Null);
        assert!(!f.passed);
        assert_eq!(f.message, "why");
    }

    #[test]
    fn a_failed_or_empty_fio_test_is_refused() {
        let good = json!({"plain": figures(1.0), "encrypted": figures(2.0), "load": "x"});
        let mut results: Vec<GuestTest> = LOADS
            .iter()
            .map(|l| result(&format!("fio-{l}"), true, good.clone()))
            .collect();
        assert_eq!(points_of(Boot::Native, &LOADS, &results).unwrap().len(), 6);
        // A plan with fewer loads needs only those.
        let one = points_of(Boot::Native, &["randread-4k"], &results[2..]).unwrap();
        assert_eq!(one.len(), 2);
        assert!(one.iter().all(|p| p.load == "randread-4k"));
        results[1] = result("fio-seqread-128k", false, good.clone());
        let e = points_of(Boot::Native, &LOADS, &results)
            .unwrap_err()
            .to_string();
        assert!(e.contains("fio-seqread-128k failed: why"), "{e}");
        results[1] = result("fio-seqread-128k", true, json!({"plain": {}}));
        let e = points_of(Boot::Native, &LOADS, &results)
            .unwrap_err()
            .to_string();
        assert!(e.contains("malformed figures"), "{e}");
        results[1] = result("fio-seqread-128k", true, json!({"plain": figures(1.0)}));
        let e = points_of(Boot::Native, &LOADS, &results)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no figures for encrypted"), "{e}");
        results.remove(1);
        let e = points_of(Boot::Native, &LOADS, &results)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no fio-seqread-128k"), "{e}");
    }

    fn outcome(path_passed: bool, out: u64, r#in: u64) -> BootOutcome {
        BootOutcome {
            results: vec![result("blk-crypto-path", path_passed, Value::Null)],
            stats: Some(Counters {
                crypto_out: Traffic {
                    requests: out,
                    bytes: 0,
                },
                crypto_in: Traffic {
                    requests: r#in,
                    bytes: 0,
                },
                ..Counters::default()
            }),
            path_line: None,
            wall: Duration::ZERO,
        }
    }

    #[test]
    fn figures_are_attributed_only_to_the_checked_path() {
        assert!(check_attribution(Boot::Native, &outcome(true, 5, 7)).is_ok());
        assert!(check_attribution(Boot::Fallback, &outcome(true, 0, 0)).is_ok());
        assert!(check_attribution(Boot::Native, &outcome(false, 5, 7)).is_err());
        assert!(check_attribution(Boot::Native, &outcome(true, 0, 7)).is_err());
        assert!(check_attribution(Boot::Fallback, &outcome(true, 1, 0)).is_err());
        let mut no_stats = outcome(true, 1, 1);
        no_stats.stats = None;
        assert!(check_attribution(Boot::Native, &no_stats).is_err());
    }

    #[test]
    fn markdown_carries_the_tcg_note_and_every_row() {
        let points = vec![
            point(Boot::Native, "plain", "seqread-128k", 200.0),
            point(Boot::Native, "encrypted", "seqread-128k", 180.0),
        ];
        let (ratios, drift) = ratios(&points);
        let doc = GuestDocument {
            cpu: "cpu".to_owned(),
            cpus: 2,
            accel: "tcg".to_owned(),
            note: TCG_NOTE.to_owned(),
            kernel: "7.0".to_owned(),
            qemu: "QEMU".to_owned(),
            seconds_per_point: 1,
            size: 16 << 20,
            fio: "fio".to_owned(),
            loads: vec!["seqread-128k".to_owned()],
            wall_seconds: 1.0,
            boots: Vec::new(),
            points: points.iter().map(GuestPoint::from).collect(),
            ratios,
            drift,
        };
        let md = markdown(&doc);
        assert!(md.contains(TCG_NOTE), "{md}");
        assert!(
            md.contains("| seqread-128k | none (native boot) | 200.0 |"),
            "{md}"
        );
        assert!(md.contains("| seqread-128k | native ICE | 180.0 |"), "{md}");
        assert!(
            md.contains("| guest seqread-128k native/none | 0.90× |"),
            "{md}"
        );
        assert!(
            md.contains("(7.0, TCG), fio, 1 s per point, 16 MiB file"),
            "{md}"
        );
    }

    #[test]
    fn the_kernel_log_line_is_read_from_the_path_facts() {
        let t = result(
            "blk-crypto-path",
            true,
            json!({"matched_line": "fscrypt: AES-256-XTS using blk-crypto (native)", "expect": "native"}),
        );
        let facts = PathFacts::deserialize(&t.facts).unwrap();
        assert_eq!(
            facts.matched_line.as_deref(),
            Some("fscrypt: AES-256-XTS using blk-crypto (native)")
        );
        assert_eq!(
            PathFacts::deserialize(&json!({})).unwrap().matched_line,
            None
        );
    }

    #[test]
    fn plans_are_checked() {
        assert!(Plan::new(5, 64 << 20, Accel::Auto, 600).is_ok());
        assert!(Plan::new(0, 64 << 20, Accel::Auto, 600).is_err());
        assert!(Plan::new(5, 1000, Accel::Auto, 600).is_err());
        assert!(Plan::new(5, 64 << 20, Accel::Auto, 5).is_err());
        let quick = Plan::quick().unwrap();
        assert!(quick.loads.iter().all(|l| LOADS.contains(l)));
        assert_eq!((quick.seconds, quick.size), (1, 16 << 20));
    }
}
