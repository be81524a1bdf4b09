//! `icelab run`: make the suite's boots ([`plan`]) against fresh (or, for a
//! second boot, reused) `icelab serve` devices, stream the in-guest
//! runner's results, check the device on the host, run the verifier on
//! each image, report (human summary, `--json`, `--junit`).

use super::artifacts::{self, Artifacts, Overrides};
use super::boot::{self, BootSpec};
use super::checks;
use super::junit;
use super::key_usage;
use super::marks;
use super::plan::{self, BootPlan, Image, PlanInput, Suite};
use super::qemu::{self, Accel};
use super::report::{self, BootRecord, Source, TestResult};
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
    /// Your own kernel image (bzImage); needs --modules-dir.
    #[arg(long, requires = "modules_dir")]
    pub kernel: Option<PathBuf>,
    /// Directory holding icelab_vblk.ko built for --kernel.
    #[arg(long, requires = "kernel")]
    pub modules_dir: Option<PathBuf>,
    /// Your own QEMU binary (must carry icelab's patch for native inline encryption).
    #[arg(long)]
    pub qemu: Option<PathBuf>,
    /// Accelerator: auto probes KVM and falls back to TCG.
    #[arg(long, value_enum, default_value = "auto")]
    pub accel: Accel,
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
}

/// The checked options.
struct RunConfig {
    suite: Suite,
    profile: Option<ProfileName>,
    seed: u64,
    fault: Option<Fault>,
    boots: Vec<BootPlan>,
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
        Ok(Self {
            suite,
            profile,
            seed,
            fault,
            boots,
        })
    }
}

/// Runs the suite; `Ok(false)` when a test failed.
pub fn run(args: RunArgs) -> anyhow::Result<bool> {
    let config = RunConfig::try_from(&args)?;
    let started = Instant::now();
    let artifacts = artifacts::build(&Overrides {
        kernel: args.kernel.clone(),
        modules_dir: args.modules_dir.clone(),
        qemu: args.qemu.clone(),
    })?;
    if !artifacts.qemu_patched {
        bail!(
            "{} does not forward inline encryption to the guest (its vhost-user-blk-pci has no \
             `inline-encryption` property); run without --qemu to use icelab's patched build, \
             or apply images/qemu/0001-vhost-user-blk-inline-encryption.patch to yours",
            artifacts.qemu.display()
        );
    }
    let accel = qemu::choose(args.accel, &artifacts);
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
    println!("{passed} passed, {failed} failed");
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
        device_args: device.arg_strings(),
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
            let result = TestResult::host(boot.name, "boot", false, message, Value::Null);
            println!("{}", result.line());
            return BootDone {
                record,
                results: vec![result],
                manifest: MergedManifest::default(),
                totals: Totals::default(),
            };
        }
        device.default_key = Some(path);
        record.device_args = device.arg_strings();
    }
    let spec = BootSpec {
        name: boot.name,
        dir: &dir,
        image: &image,
        fresh_image,
        device: &device,
        cmdline: &cmdline,
        inline_encryption: boot.profile.is_some(),
        timeout: Duration::from_secs(args.timeout),
        restart_device: boot.restart_device,
    };
    let outcome = match boot::run_boot(artifacts, accel, &spec) {
        Ok(outcome) => outcome,
        Err(error) => {
            let result =
                TestResult::host(boot.name, "boot", false, format!("{error:#}"), Value::Null);
            println!("{}", result.line());
            return BootDone {
                record,
                results: vec![result],
                manifest: MergedManifest::default(),
                totals: Totals::default(),
            };
        }
    };
    let mut results = outcome.results;
    let host_start = results.len();
    results.push(checks::device_exit(
        boot.name,
        outcome.device_exit,
        &outcome.paths,
    ));
    results.push(checks::device_stats(boot, &outcome.stats));
    if boot.restart_device {
        results.push(checks::device_restart(boot.name, outcome.restart.as_ref()));
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
    // reported run.
    if let (Some(profile), Some(caps)) = (boot.profile, &caps) {
        let guest_facts: Vec<&Value> = results
            .iter()
            .filter(|r| r.source == Source::Guest)
            .map(|r| &r.facts)
            .collect();
        let trace_results = marks::check(&marks::TraceCheck {
            boot: boot.name,
            profile,
            slots: caps.slots,
            guest_facts,
            trace: &outcome.paths.trace,
            stats: &outcome.stats,
        });
        results.extend(trace_results);
    }
    if boot.default_key || boot.key_usage_limit.is_some() {
        let guest_facts: Vec<&Value> = results
            .iter()
            .filter(|r| r.source == Source::Guest)
            .map(|r| &r.facts)
            .collect();
        let usage = key_usage::check(&key_usage::KeyUsageCheck {
            boot: boot.name,
            limit: boot.key_usage_limit,
            guest_facts: &guest_facts,
            trace: &outcome.paths.trace,
            stats: &outcome.stats,
            manifest: &manifest,
        });
        results.push(usage);
    }

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
        assert_eq!(c.boots.len(), 6);
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
}
