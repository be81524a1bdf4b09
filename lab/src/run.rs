//! `icelab run`: make the suite's boots ([`plan`]) against fresh (or, for a
//! second boot, reused) `icelab serve` devices (or the user's device,
//! `--device-cmd`), stream the in-guest runner's results, check the device
//! on the host, run the verifier on each image, report (human summary,
//! `--json`, `--junit`).

use super::artifacts::{self, Artifacts, GuestArgs};
use super::boot::{self, BootSpec};
use super::checks;
use super::junit;
use super::kcidb;
use super::key_usage;
use super::marks;
use super::memory_scan;
use super::plan::{self, BootPlan, Device, Image, LeftOut, PlanInput, Suite};
use super::qemu::{self, Accel};
use super::report::{self, BootRecord, Source, TestResult};
use super::serve_process::CommandTemplate;
use super::verify::{self as lab_verify, MergeError, MergedManifest, Totals};
use anyhow::{Context, bail};
use icelab_emulator::engine::{Fault, ProfileName};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use super::boot::tail;

/// Options of `icelab run`.
#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Test suite: smoke (native + control boot), lab (boots ufs, ufs-reboot, emmc,
    /// pressure, restart), lab-reboot (ufs, ufs-reboot), lab-pressure, lab-restart, matrix (one ufs boot
    /// of the policy matrix), bench.
    #[arg(long, default_value = "smoke")]
    pub suite: String,
    /// Only the boots of this engine profile (ufs or emmc); default: every boot of
    /// the suite (lab has both), ufs for the single-boot suites.
    #[arg(long)]
    pub profile: Option<String>,
    /// Seed of the guest's keys and contents, 1 to 16 hex digits (each run prints
    /// its seed); default: random.
    #[arg(long, value_name = "HEX")]
    pub seed: Option<String>,
    /// Make the engine deliberately wrong in every boot (dun-off-by-one,
    /// swap-key-halves, plaintext): the guest cannot notice, the verifier must.
    #[arg(long, value_name = "FAULT")]
    pub fault: Option<String>,
    /// Skip the negative control boot (device without inline encryption).
    #[arg(long)]
    pub no_control: bool,
    /// Kernel, QEMU and accelerator.
    #[command(flatten)]
    pub guest: GuestArgs,
    /// Longest one boot may take, in seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
    /// Write the JSON report to FILE.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Write a JUnit XML report to FILE (one testsuite per boot).
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,
    /// Keep each boot's image, logs, stats, trace and merged manifest under DIR/BOOT.
    #[arg(long, value_name = "DIR")]
    pub keep: Option<PathBuf>,
    /// Test your own vhost-user-blk device instead of icelab serve: a shell command
    /// (run with sh -c) in which {socket} and {image} become each boot's paths,
    /// shell-quoted. It must offer what the boot's profile offers (ufs: 32 keyslots,
    /// 8 DUN bytes, data units 512-4096) and 2 queues; boots that need icelab serve
    /// options (control, pressure, restart, default-key, other profile) are left out.
    #[arg(long, value_name = "CMD")]
    pub device_cmd: Option<String>,
    /// Write the run in the KCIDB I/O schema (KernelCI's results database) to FILE.
    #[arg(long, value_name = "FILE")]
    pub kcidb: Option<PathBuf>,
    /// Instead of a suite: boot the real userland with --disks icelab devices and run
    /// CMD with bash -c (exported: ICELAB_TEST_DEV, ICELAB_SCRATCH_DEV, ICELAB_DEVS,
    /// ICELAB_SHARE); its exit status is the verdict, its output is printed and reported.
    #[arg(long, value_name = "CMD", conflicts_with_all = ["suite", "fault", "device_cmd", "no_control", "seed"])]
    pub guest_cmd: Option<String>,
    /// With --guest-cmd: make DIR available read-write in the guest at /share (packed
    /// into a disk image, copied back after the run; the command starts in it).
    #[arg(long, value_name = "DIR", requires = "guest_cmd")]
    pub share: Option<PathBuf>,
    /// With --guest-cmd: how many icelab devices (/dev/vda, /dev/vdb, ...).
    #[arg(long, value_name = "N", default_value_t = 2, requires = "guest_cmd")]
    pub disks: u32,
    /// With --guest-cmd: the size of each device's fresh (sparse) image.
    #[arg(
        long,
        value_name = "SIZE",
        default_value = "4G",
        requires = "guest_cmd"
    )]
    pub disk_size: String,
    /// With --guest-cmd: a JUnit file the command wrote, relative to --share DIR (or
    /// its guest path under /share); one icelab test per test case.
    #[arg(long, value_name = "PATH", requires = "share")]
    pub guest_junit: Option<PathBuf>,
    /// With --guest-cmd: devices without inline encryption (fscrypt takes
    /// blk-crypto-fallback).
    #[arg(long, requires = "guest_cmd")]
    pub no_inline_encryption: bool,
}

/// The checked options.
struct RunConfig {
    suite: Suite,
    profile: Option<ProfileName>,
    seed: u64,
    fault: Option<Fault>,
    boots: Vec<BootPlan>,
    /// The device under test.
    device: Device,
    /// The suite's boots this device cannot run, and why.
    left_out: Vec<LeftOut>,
}

impl TryFrom<&RunArgs> for RunConfig {
    type Error = anyhow::Error;

    fn try_from(args: &RunArgs) -> anyhow::Result<Self> {
        let suite = Suite::from_name(&args.suite).with_context(|| {
            let names: Vec<_> = Suite::ALL.iter().map(|s| s.name()).collect();
            format!(
                "unknown --suite {:?}; the suites are: {}",
                args.suite,
                names.join(", ")
            )
        })?;
        let profile = args
            .profile
            .as_deref()
            .map(|name| {
                ProfileName::from_name(name)
                    .with_context(|| format!("unknown --profile {name:?}; choose ufs or emmc"))
            })
            .transpose()?;
        let fault = args.fault.as_deref().map(str::parse::<Fault>).transpose()?;
        let seed = match &args.seed {
            Some(text) => plan::parse_seed(text).map_err(anyhow::Error::msg)?,
            None => plan::random_seed(),
        };
        let boots = plan::plan(&PlanInput {
            suite,
            profile,
            no_control: args.no_control,
            seed,
        });
        if boots.is_empty() {
            bail!(
                "--suite {} has no boot with --profile {}; drop --profile",
                suite.name(),
                args.profile.as_deref().unwrap_or_default()
            );
        }
        let (device, boots, left_out) = match &args.device_cmd {
            None => (Device::IcelabServe, boots, Vec::new()),
            Some(command) => {
                let template = CommandTemplate::new(command)?;
                if let Some(fault) = fault {
                    bail!(
                        "--fault {} is an icelab serve option; with --device-cmd your command \
                         decides what the device does: drop --fault",
                        fault.name()
                    );
                }
                let (kept, left_out) =
                    plan::for_device_command(boots, profile.unwrap_or(ProfileName::Ufs));
                if kept.is_empty() {
                    let why: Vec<String> = left_out
                        .iter()
                        .map(|l| format!("{}: {}", l.boot, l.reason))
                        .collect();
                    bail!(
                        "no boot of --suite {} can run with --device-cmd (it passes your device \
                         only a socket and an image):\n  {}",
                        suite.name(),
                        why.join("\n  ")
                    );
                }
                (Device::Command(template), kept, left_out)
            }
        };
        Ok(Self {
            suite,
            profile,
            seed,
            fault,
            boots,
            device,
            left_out,
        })
    }
}

/// Runs the suite; `Ok(false)` when a test failed.
pub fn run(args: RunArgs) -> anyhow::Result<bool> {
    if args.guest_cmd.is_some() {
        return super::userland::run::guest_command(&args);
    }
    let config = RunConfig::try_from(&args)?;
    let started_at = std::time::SystemTime::now();
    let started = Instant::now();
    let artifacts = artifacts::build(&args.guest.overrides())?;
    if !artifacts.qemu_patched {
        bail!(
            "{} does not forward inline encryption to the guest (its vhost-user-blk-pci has no \
             `inline-encryption` property); run without --qemu to use icelab's patched build, \
             or apply images/qemu/0001-vhost-user-blk-inline-encryption.patch to yours",
            artifacts.qemu.display()
        );
    }
    let accel = qemu::choose(args.guest.accel, &artifacts);
    let profiles = profiles(&config.boots);
    println!(
        "icelab run: suite {}, profile {}, {} under {}",
        config.suite.name(),
        profiles.join(" and "),
        artifacts.kernel_version,
        accel.name().to_uppercase()
    );
    println!(
        "icelab run: seed {:016x} (repeat the run with --seed {:016x})",
        config.seed, config.seed
    );
    println!("icelab run: device: {}", config.device.describe());
    for left_out in &config.left_out {
        println!(
            "icelab run: boot {} left out: {}",
            left_out.boot, left_out.reason
        );
    }
    if config.device.command().is_some() {
        println!(
            "icelab run: device-stats, trace/* and key-usage are skipped: they read icelab \
             serve's --stats and --trace files"
        );
    }
    if let Some(fault) = config.fault {
        println!(
            "icelab run: fault {} in every device: guest tests should pass, the verifier must fail",
            fault.name()
        );
    }
    if accel == Accel::Tcg {
        println!("icelab run: TCG is software emulation; timings are not hardware timings");
    }
    let temporary;
    let base = match &args.keep {
        Some(keep) => keep.clone(),
        None => {
            temporary = tempfile::Builder::new().prefix("icelab-run-").tempdir()?;
            temporary.path().to_owned()
        }
    };
    let mut results = Vec::new();
    let mut records = Vec::new();
    let mut totals = Totals::default();
    let mut manifests: HashMap<&str, MergedManifest> = HashMap::new();
    for boot in &config.boots {
        let done = run_one(&args, &config, &artifacts, accel, &base, boot, &manifests);
        totals.add(done.totals);
        manifests.insert(boot.name, done.manifest);
        results.extend(done.results);
        records.push(done.record);
    }
    let (passed, failed) = report::counts(&results);
    let header = json!({
        "device": {
            "kind": if config.device.command().is_some() { "command" } else { "icelab serve" },
            "command": config.device.command().map(CommandTemplate::as_str),
        },
        "left_out": config.left_out.iter()
            .map(|l| json!({"boot": l.boot, "reason": l.reason}))
            .collect::<Vec<_>>(),
        "suite": config.suite.name(),
        "profile": config.profile.map(|p| p.name()),
        "profiles": profiles,
        "kernel": {
            "package": artifacts.kernel_package,
            "version": artifacts.kernel_version,
            "image": artifacts.kernel,
        },
        "qemu": { "version": artifacts.qemu_version, "patched": artifacts.qemu_patched },
        "accel": accel.name(),
        "seed": format!("{:016x}", config.seed),
        "fault": config.fault.map(|f| f.name()),
        "verifier": if config.suite.verifies() { totals.to_json() } else { Value::Null },
        "duration_ms": started.elapsed().as_millis() as u64,
    });
    if let Some(path) = &args.json {
        let document = report::to_json(header, &records, &results);
        std::fs::write(path, serde_json::to_vec_pretty(&document)?)
            .with_context(|| format!("cannot write the JSON report {}", path.display()))?;
    }
    if let Some(path) = &args.junit {
        let title = format!("icelab run --suite {}", config.suite.name());
        std::fs::write(path, junit::to_xml(&title, &records, &results))
            .with_context(|| format!("cannot write the JUnit report {}", path.display()))?;
    }
    if let Some(path) = &args.kcidb {
        let document = kcidb::document(&kcidb::KcidbRun {
            suite: config.suite.name(),
            seed: config.seed,
            kernel_package: &artifacts.kernel_package,
            kernel_version: &artifacts.kernel_version,
            compiler: None,
            accel,
            started: started_at,
            boots: &records,
            results: &results,
        });
        kcidb::write(path, &document)?;
    }
    println!();
    for result in results
        .iter()
        .filter(|r| r.outcome == report::Outcome::Fail)
    {
        println!("{}", result.line());
    }
    if config.suite.verifies() {
        println!("{}", totals.line());
    }
    println!(
        "icelab run: {:.0} s, seed {:016x}",
        started.elapsed().as_secs_f64(),
        config.seed
    );
    println!("{}", report::summary_line(&results));
    Ok(failed == 0 && passed > 0)
}

/// The engine profiles of a plan's boots, in order, each once (a control
/// boot without inline encryption has none).
fn profiles(boots: &[BootPlan]) -> Vec<&'static str> {
    let mut names = Vec::new();
    for name in boots.iter().filter_map(|b| b.profile.map(|p| p.name())) {
        if !names.contains(&name) {
            names.push(name);
        }
    }
    names
}

/// What one boot left.
struct BootDone {
    record: BootRecord,
    results: Vec<TestResult>,
    /// The image's merged manifest (for a later boot of the same image).
    manifest: MergedManifest,
    totals: Totals,
}

impl BootDone {
    /// A boot that could not start: one failing `boot` result, printed.
    fn failed(boot: &BootPlan, record: BootRecord, message: String) -> Self {
        let result = TestResult::host(boot.name, "boot", false, message, Value::Null);
        println!("{}", result.line());
        Self {
            record,
            results: vec![result],
            manifest: MergedManifest::default(),
            totals: Totals::default(),
        }
    }
}

/// One boot of the plan: device and guest, host checks, verifier, trace
/// checks. A boot that cannot even start becomes a failing `boot` result;
/// the run goes on with the next boot.
fn run_one(
    args: &RunArgs,
    config: &RunConfig,
    artifacts: &Artifacts,
    accel: Accel,
    base: &Path,
    boot: &BootPlan,
    manifests: &HashMap<&str, MergedManifest>,
) -> BootDone {
    let dir = base.join(boot.name);
    let (image, fresh_image) = match boot.image {
        Image::Fresh(_) => (dir.join("disk.img"), true),
        Image::SameAs(earlier) => (base.join(earlier).join("disk.img"), false),
    };
    let mut device = plan::device_options(boot, config.fault);
    let device_cmd = config.device.command();
    let cmdline = plan::guest_cmdline(boot);
    let caps = plan::capabilities(boot);
    println!(
        "--- boot {} ({}; seed {:016x}{})",
        boot.name,
        match (&boot.profile, &caps) {
            (Some(p), Some(c)) => format!(
                "profile {p}, {} keyslots, {} DUN bytes",
                c.slots, c.max_dun_bytes
            ),
            _ => "device without inline encryption".to_owned(),
        },
        boot.seed,
        match boot.image {
            Image::SameAs(earlier) => format!("; the image of boot {earlier}"),
            Image::Fresh(_) => String::new(),
        }
    );
    let mut record = BootRecord {
        name: boot.name.to_owned(),
        guest_suite: boot.guest_suite.name().to_owned(),
        profile: boot.profile.map(|p| p.name().to_owned()),
        seed: boot.seed,
        device_args: if device_cmd.is_some() {
            Vec::new()
        } else {
            device.arg_strings()
        },
        device_command: device_cmd.map(|c| {
            c.render(&image, &dir.join(boot::SOCKET_NAME))
                .to_string_lossy()
                .into_owned()
        }),
        cmdline: cmdline.clone(),
        hello: Value::Null,
        stats: Value::Null,
        verifier: Value::Null,
        manifest_files: 0,
        duration: Duration::ZERO,
    };
    // A default-key boot's key, in a file next to the image (0600) for
    // `icelab serve --default-key` and, after the boot, the verifier.
    let default_key = boot.default_key.then(|| plan::default_key(boot));
    if let Some(key) = &default_key {
        let path = dir.join("default.key");
        if let Err(error) = write_key_file(&path, key) {
            let message = format!("cannot write the default key {}: {error}", path.display());
            return BootDone::failed(boot, record, message);
        }
        device.default_key = Some(path);
        record.device_args = device.arg_strings();
    }
    // Hardware-wrapped keys: the key manager's device secret, in the
    // directory of the boot that owns it. Its owner starts from a new
    // secret (a kept directory may hold an earlier run's).
    if let Some(state) = plan::key_manager_state_path(boot, base) {
        if boot.key_manager_state == Some(boot.name) {
            let _ = std::fs::remove_file(&state);
        }
        device.key_manager_state = Some(state);
        record.device_args = device.arg_strings();
    }
    let spec = BootSpec {
        name: boot.name,
        dir: &dir,
        image: &image,
        fresh_image,
        device: &device,
        device_cmd,
        cmdline: &cmdline,
        inline_encryption: boot.profile.is_some(),
        timeout: Duration::from_secs(args.timeout),
        restart_device: boot.restart_device,
        scan_memory: plan::scans_memory(boot),
    };
    let outcome = match boot::run_boot(artifacts, accel, &spec) {
        Ok(outcome) => outcome,
        Err(error) => return BootDone::failed(boot, record, format!("{error:#}")),
    };
    let mut results = outcome.results;
    let host_start = results.len();
    results.push(checks::device_exit(
        boot.name,
        outcome.device_exit,
        outcome.device_terminated,
        device_cmd.is_some(),
        &outcome.paths,
    ));
    if device_cmd.is_none() {
        results.push(checks::device_stats(boot, &outcome.stats));
    }
    if boot.restart_device {
        results.push(checks::device_restart(boot.name, outcome.restart.as_ref()));
    }
    if plan::scans_memory(boot) {
        results.extend(memory_scan::results(
            boot.name,
            outcome.memory_scan.as_ref(),
            boot.key_manager_state.is_some(),
        ));
    }

    // The verifier, on the image the device has let go of.
    let mut manifest = match boot.image {
        Image::SameAs(earlier) => manifests.get(earlier).cloned().unwrap_or_default(),
        Image::Fresh(_) => MergedManifest::default(),
    };
    let mut totals = Totals::default();
    if boot.verify {
        let mut merge_errors: Vec<MergeError> = Vec::new();
        for result in results.iter().filter(|r| r.source == Source::Guest) {
            if let Some(fact) = result.facts.get(icelab_contract::record::FACT_MANIFEST)
                && let Err(error) = manifest.add_fact(&result.name, fact)
            {
                merge_errors.push(error);
            }
        }
        record.manifest_files = manifest.len();
        let manifest_path = dir.join("manifest.json");
        if let Ok(text) = serde_json::to_vec_pretty(&manifest.to_manifest()) {
            let _ = std::fs::write(&manifest_path, text);
        }
        println!(
            "verifying {} files of boot {} on {}",
            manifest.len(),
            boot.name,
            image.display()
        );
        let verify_started = Instant::now();
        let mut verification = lab_verify::verify(
            boot.name,
            &image,
            &manifest,
            &merge_errors,
            outcome.guest_completed,
            default_key.as_deref(),
        );
        if let Some(report) = &verification.report {
            totals = Totals::of(report);
            record.verifier = serde_json::to_value(report).unwrap_or(Value::Null);
        }
        verification.result.duration = verify_started.elapsed();
        results.push(verification.result);
    }

    // The device trace against the guest's marks (path selection, key
    // removal, keyslot pressure): only the checks whose marks the guest
    // reported run; key usage. A device command writes no stats or trace:
    // these checks and device-stats are skipped.
    let guest_facts: Vec<&Value> = results
        .iter()
        .filter(|r| r.source == Source::Guest)
        .map(|r| &r.facts)
        .collect();
    let mut device_results = Vec::new();
    if device_cmd.is_some() {
        device_results = skips_for_command(boot, &guest_facts);
    } else {
        if let (Some(profile), Some(caps)) = (boot.profile, &caps) {
            device_results.extend(marks::check(&marks::TraceCheck {
                boot: boot.name,
                profile,
                slots: caps.slots,
                guest_facts: guest_facts.clone(),
                trace: &outcome.paths.trace,
                stats: &outcome.stats,
            }));
        }
        if boot.default_key || boot.key_usage_limit.is_some() {
            device_results.push(key_usage::check(&key_usage::KeyUsageCheck {
                boot: boot.name,
                limit: boot.key_usage_limit,
                guest_facts: &guest_facts,
                trace: &outcome.paths.trace,
                stats: &outcome.stats,
                manifest: &manifest,
            }));
        }
    }
    results.extend(device_results);

    for result in &results[host_start..] {
        println!("{}", result.line());
    }
    record.hello = outcome.hello;
    record.stats = outcome.stats;
    record.duration = outcome.duration;
    BootDone {
        record,
        results,
        manifest,
        totals,
    }
}

/// The host checks that read `icelab serve`'s `--stats` and `--trace`
/// files, skipped for a device started by `--device-cmd`: `device-stats`,
/// the `trace/...` checks the guest's marks (`guest_facts`) ask for, and
/// `key-usage`.
fn skips_for_command(boot: &BootPlan, guest_facts: &[&Value]) -> Vec<TestResult> {
    let skip = |check: &str, files: &str| {
        TestResult::skipped(
            boot.name,
            check,
            format!(
                "reads icelab serve's {files}; icelab gives a device command only a socket \
                 and an image"
            ),
        )
    };
    let mut skips = vec![skip("device-stats", "--stats file")];
    if boot.profile.is_some() {
        skips.extend(
            marks::wanted(guest_facts)
                .into_iter()
                .map(|kind| skip(kind.name(), "--trace file")),
        );
    }
    if boot.default_key || boot.key_usage_limit.is_some() {
        skips.push(skip("key-usage", "--stats and --trace files"));
    }
    skips
}

/// Writes `key` to a new file at `path` readable by the owner only.
fn write_key_file(path: &Path, key: &[u8; 64]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let _ = std::fs::remove_file(path);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?
        .write_all(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: RunArgs,
    }

    fn config(words: &[&str]) -> anyhow::Result<RunConfig> {
        let cli = Cli::try_parse_from(std::iter::once("run").chain(words.iter().copied()))?;
        RunConfig::try_from(&cli.args)
    }

    fn error(words: &[&str]) -> String {
        match config(words) {
            Ok(_) => panic!("{words:?} should be refused"),
            Err(error) => format!("{error:#}"),
        }
    }

    #[test]
    fn options_become_a_plan() {
        let c =
            config(&["--suite", "lab", "--seed", "c0ffee", "--fault", "plaintext"]).expect("valid");
        assert_eq!(c.suite, Suite::Lab);
        assert_eq!(c.seed, 0xc0ffee);
        assert_eq!(c.fault, Some(Fault::Plaintext));
        assert_eq!(c.boots.len(), 7);
        assert_eq!(c.boots[0].seed, plan::boot_seed(0xc0ffee, 1));
        assert_eq!(profiles(&c.boots), ["ufs", "emmc"]);
        let smoke = config(&[]).expect("defaults are valid");
        assert_eq!(smoke.suite, Suite::Smoke);
        assert_eq!(profiles(&smoke.boots), ["ufs"]);
        assert_eq!(smoke.fault, None);
    }

    #[test]
    fn errors_name_the_fix() {
        assert!(error(&["--suite", "nope"]).contains("the suites are: smoke, lab"));
        assert!(error(&["--profile", "nvme"]).contains("choose ufs or emmc"));
        assert!(error(&["--fault", "nope"]).contains("dun-off-by-one"));
        assert!(error(&["--seed", "zz"]).contains("1 to 16 hex digits"));
        assert!(
            error(&["--suite", "lab-pressure", "--profile", "emmc"]).contains("drop --profile")
        );
    }

    #[test]
    fn a_device_command_refuses_what_it_cannot_be_told() {
        let cmd = "mydev --socket {socket} --image {image}";
        let lab = config(&["--suite", "lab", "--device-cmd", cmd]).expect("valid");
        assert_eq!(
            lab.device,
            Device::Command(CommandTemplate::new(cmd).expect("valid"))
        );
        assert_eq!(lab.device.describe(), format!("command {cmd:?}"));
        let run: Vec<_> = lab.boots.iter().map(|b| b.name).collect();
        assert_eq!(run, ["ufs", "ufs-reboot"]);
        let left: Vec<_> = lab.left_out.iter().map(|l| l.boot).collect();
        assert_eq!(
            left,
            ["emmc", "pressure", "restart", "default-key", "key-limit"]
        );
        assert_eq!(config(&[]).expect("valid").device, Device::IcelabServe);

        for (suite, boot, option) in [
            ("lab-pressure", "pressure", "--slots 2"),
            ("lab-restart", "restart", "restarts icelab serve"),
            ("lab-default-key", "default-key", "--default-key"),
            ("lab-wrapped", "wrapped", "--key-manager-state"),
        ] {
            let message = error(&["--suite", suite, "--device-cmd", cmd]);
            assert!(message.contains("no boot of --suite"), "{message}");
            assert!(message.contains(&format!("{boot}: ")), "{message}");
            assert!(message.contains(option), "{message}");
        }
        let message = error(&[
            "--suite",
            "matrix",
            "--fault",
            "plaintext",
            "--device-cmd",
            cmd,
        ]);
        assert!(message.contains("drop --fault"), "{message}");
        let message = error(&["--device-cmd", "mydev --image {image}"]);
        assert!(message.contains("has no {socket}"), "{message}");
    }

    #[test]
    fn a_device_command_skips_the_checks_of_icelab_serves_files() {
        let boots = plan::plan(&PlanInput {
            suite: Suite::Lab,
            profile: None,
            no_control: false,
            seed: 1,
        });
        let path_marks = json!({"marks": [
            {"label": "path/default/start", "serial_reads": 1},
            {"label": "path/default/end", "serial_reads": 2},
        ]});
        let facts = [&path_marks];
        let skips = skips_for_command(&boots[0], &facts);
        let names: Vec<&str> = skips.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["device-stats", "trace/path-selection"]);
        assert!(skips.iter().all(|r| r.outcome == report::Outcome::Skip));
        assert!(skips[0].message.contains("--stats"), "{}", skips[0].message);
        assert!(skips[1].message.contains("--trace"), "{}", skips[1].message);
        let default_key = boots.iter().find(|b| b.default_key).expect("in the plan");
        let names: Vec<String> = skips_for_command(default_key, &[])
            .into_iter()
            .map(|r| r.name)
            .collect();
        assert_eq!(names, ["device-stats", "key-usage"]);
        assert_eq!(report::counts(&skips), (0, 0));
    }
}
