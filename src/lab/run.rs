//! `icelab run`: boot the lab guest against a fresh `icelab serve`, stream
//! the in-guest runner's results, check the device's stats on the host,
//! report.

use super::artifacts::{self, Artifacts, Overrides};
use super::qemu::{self, Accel, VmSpec};
use super::report::{self, BootRecord, TestResult};
use anyhow::{Context, bail};
use icelab_emulator::engine::ProfileName;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Seek};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Options of `icelab run`.
#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Test suite to run in the guest.
    #[arg(long, default_value = "smoke")]
    pub suite: String,
    /// Engine profile of the device (ufs or emmc).
    #[arg(long, default_value = "ufs")]
    pub profile: String,
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
    /// Longest a boot may take, in seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
    /// Write the JSON report to FILE.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Keep each boot's image, logs, stats and trace under DIR.
    #[arg(long, value_name = "DIR")]
    pub keep: Option<PathBuf>,
}

/// One guest boot of a suite.
struct Boot {
    name: &'static str,
    /// True when the device offers inline encryption.
    native: bool,
}

/// Runs the suite; `Ok(false)` when a test failed.
pub fn run(args: RunArgs) -> anyhow::Result<bool> {
    let profile = ProfileName::from_name(&args.profile)
        .with_context(|| format!("unknown --profile {:?}; choose ufs or emmc", args.profile))?;
    const SUITES: &[&str] = &[
        "smoke",
        "lab",
        "lab-reboot",
        "lab-pressure",
        "matrix",
        "bench",
    ];
    if !SUITES.contains(&args.suite.as_str()) {
        bail!(
            "unknown --suite {:?}; the suites are: {}",
            args.suite,
            SUITES.join(", ")
        );
    }
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
    println!(
        "icelab run: suite {}, profile {profile}, {} under {}",
        args.suite,
        artifacts.kernel_version,
        accel.name().to_uppercase()
    );
    if accel == Accel::Tcg {
        println!("icelab run: TCG is software emulation; timings are not hardware timings");
    }
    let mut boots = vec![Boot {
        name: "native",
        native: true,
    }];
    if !args.no_control && args.suite == "smoke" {
        boots.push(Boot {
            name: "control",
            native: false,
        });
    }
    let mut results = Vec::new();
    let mut records = Vec::new();
    for boot in &boots {
        let (record, boot_results) = run_boot(&args, &artifacts, accel, profile, boot)?;
        results.extend(boot_results);
        records.push(record);
    }
    let (passed, failed) = report::counts(&results);
    let header = json!({
        "suite": args.suite,
        "profile": profile.name(),
        "kernel": {
            "package": artifacts.kernel_package,
            "version": artifacts.kernel_version,
            "image": artifacts.kernel,
        },
        "qemu": { "version": artifacts.qemu_version, "patched": artifacts.qemu_patched },
        "accel": accel.name(),
        "duration_ms": started.elapsed().as_millis() as u64,
    });
    let document = report::to_json(header, &records, &results);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&document)?)
            .with_context(|| format!("cannot write the JSON report {}", path.display()))?;
    }
    println!();
    for result in results
        .iter()
        .filter(|r| r.outcome == report::Outcome::Fail)
    {
        println!("{}", result.line());
    }
    println!("{passed} passed, {failed} failed");
    Ok(failed == 0 && passed > 0)
}

/// Boots once: device, QEMU, results, host checks.
fn run_boot(
    args: &RunArgs,
    artifacts: &Artifacts,
    accel: Accel,
    profile: ProfileName,
    boot: &Boot,
) -> anyhow::Result<(BootRecord, Vec<TestResult>)> {
    let started = Instant::now();
    let temporary;
    let dir = match &args.keep {
        Some(keep) => {
            let dir = keep.join(boot.name);
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            dir
        }
        None => {
            temporary = tempfile::Builder::new().prefix("icelab-run-").tempdir()?;
            temporary.path().to_owned()
        }
    };
    let paths = BootPaths::new(&dir);
    for stale in [
        &paths.image,
        &paths.results,
        &paths.console,
        &paths.stats,
        &paths.trace,
    ] {
        let _ = std::fs::remove_file(stale);
    }
    let caps = profile.capabilities();
    let mut device_args: Vec<String> = vec![
        "--size".into(),
        "512M".into(),
        "--queues".into(),
        "2".into(),
    ];
    let expect = if boot.native {
        device_args.extend(["--profile".into(), profile.name().into()]);
        format!(
            "icelab.expect=native icelab.slots={} icelab.max_dun_bits={} icelab.modes={:#x}",
            caps.slots,
            u32::from(caps.max_dun_bytes) * 8,
            caps.data_unit_sizes.0
        )
    } else {
        device_args.push("--no-inline-encryption".into());
        "icelab.expect=fallback".to_owned()
    };
    let mut device = spawn_device(&paths, &device_args)?;
    let spec = VmSpec {
        artifacts,
        socket: &paths.socket,
        append: format!(
            "icelab.suite={} icelab.profile={} {expect}",
            args.suite,
            profile.name()
        ),
        console_log: paths.console.clone(),
        results_log: paths.results.clone(),
        queues: 2,
        inline_encryption: boot.native,
        accel,
    };
    println!(
        "--- boot {} ({})",
        boot.name,
        if boot.native {
            "device with inline encryption"
        } else {
            "device without inline encryption"
        }
    );
    let qemu_log = std::fs::File::create(dir.join("qemu.log"))?;
    let mut vm = qemu::command(&spec)
        .stdout(qemu_log.try_clone()?)
        .stderr(qemu_log)
        .spawn()
        .with_context(|| format!("cannot start {}", artifacts.qemu.display()))?;
    let guest = stream_results(
        &mut vm,
        &paths.results,
        boot.name,
        Duration::from_secs(args.timeout),
    );
    let _ = vm.kill();
    let _ = vm.wait();
    let device_exit = wait_child(&mut device, Duration::from_secs(20));
    let mut results = guest.results;
    if let Some(problem) = guest.problem {
        results.push(TestResult::host(
            boot.name,
            "guest-completes",
            false,
            format!("{problem}\n--- console tail:\n{}", tail(&paths.console, 30)),
            Value::Null,
        ));
    }
    let stats = std::fs::read(&paths.stats)
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .unwrap_or(Value::Null);
    results.push(device_exit_result(boot.name, device_exit, &paths));
    results.push(device_stats_result(boot, &stats));
    for result in results
        .iter()
        .filter(|r| r.name == "device-stats" || r.name == "device-exit")
    {
        println!("{}", result.line());
    }
    Ok((
        BootRecord {
            name: boot.name.to_owned(),
            device_args,
            hello: guest.hello,
            stats,
            duration: started.elapsed(),
        },
        results,
    ))
}

struct BootPaths {
    image: PathBuf,
    socket: PathBuf,
    stats: PathBuf,
    trace: PathBuf,
    console: PathBuf,
    results: PathBuf,
    device_log: PathBuf,
}

impl BootPaths {
    fn new(dir: &Path) -> Self {
        Self {
            image: dir.join("disk.img"),
            socket: dir.join("icelab.sock"),
            stats: dir.join("stats.json"),
            trace: dir.join("trace.jsonl"),
            console: dir.join("console.log"),
            results: dir.join("results.jsonl"),
            device_log: dir.join("device.log"),
        }
    }
}

/// Starts `icelab serve` (this very binary) and waits for its socket.
fn spawn_device(paths: &BootPaths, extra: &[String]) -> anyhow::Result<Child> {
    let exe = crate::self_exe();
    let log = std::fs::File::create(&paths.device_log)?;
    let mut child = Command::new(exe)
        .arg("serve")
        .arg("--image")
        .arg(&paths.image)
        .arg("--socket")
        .arg(&paths.socket)
        .arg("--stats")
        .arg(&paths.stats)
        .arg("--trace")
        .arg(&paths.trace)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("cannot start icelab serve")?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !paths.socket.exists() {
        if let Ok(Some(status)) = child.try_wait() {
            bail!(
                "icelab serve exited ({status}) before listening:\n{}",
                tail(&paths.device_log, 20)
            );
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!(
                "icelab serve did not create its socket within 20 s:\n{}",
                tail(&paths.device_log, 20)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(child)
}

/// What the guest reported.
struct GuestOutcome {
    hello: Value,
    results: Vec<TestResult>,
    /// Why the guest did not finish cleanly, if it did not.
    problem: Option<String>,
}

/// Follows the results file until the runner's `done` line, QEMU's exit or
/// the timeout, printing each test as it arrives.
fn stream_results(vm: &mut Child, path: &Path, boot: &str, timeout: Duration) -> GuestOutcome {
    let deadline = Instant::now() + timeout;
    let mut outcome = GuestOutcome {
        hello: Value::Null,
        results: Vec::new(),
        problem: None,
    };
    let mut offset = 0u64;
    let mut pending = String::new();
    let mut done = false;
    loop {
        let exited = matches!(vm.try_wait(), Ok(Some(_)));
        if let Ok(mut file) = std::fs::File::open(path)
            && file.seek(std::io::SeekFrom::Start(offset)).is_ok()
        {
            let mut reader = BufReader::new(file);
            let mut chunk = String::new();
            while let Ok(read) = reader.read_line(&mut chunk) {
                if read == 0 {
                    break;
                }
                offset += read as u64;
            }
            pending.push_str(&chunk);
        }
        while let Some(end) = pending.find('\n') {
            let line: String = pending.drain(..=end).collect();
            let Ok(value) = serde_json::from_str::<Value>(line.trim().trim_start_matches('\0'))
            else {
                continue;
            };
            match value["type"].as_str() {
                Some("hello") => outcome.hello = value,
                Some("test") => {
                    let result = TestResult::from_guest(boot, &value);
                    println!("{}", result.line());
                    outcome.results.push(result);
                }
                Some("done") => done = true,
                _ => {}
            }
        }
        if done || exited {
            break;
        }
        if Instant::now() > deadline {
            outcome.problem = Some(format!(
                "the guest did not finish within {} s (hung?)",
                timeout.as_secs()
            ));
            return outcome;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if !done {
        outcome.problem =
            Some("the guest stopped before reporting `done` (crashed or panicked?)".to_owned());
    } else if outcome.results.is_empty() {
        outcome.problem = Some("the guest reported no tests".to_owned());
    }
    // Give QEMU a moment to power off by itself.
    let _ = wait_child(vm, Duration::from_secs(10));
    outcome
}

fn wait_child(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn device_exit_result(
    boot: &str,
    status: Option<std::process::ExitStatus>,
    paths: &BootPaths,
) -> TestResult {
    let (passed, message) = match status {
        Some(status) if status.success() => (true, String::new()),
        Some(status) => (
            false,
            format!(
                "icelab serve exited with {status}:\n{}",
                tail(&paths.device_log, 20)
            ),
        ),
        None => (
            false,
            format!(
                "icelab serve did not exit after the guest powered off:\n{}",
                tail(&paths.device_log, 20)
            ),
        ),
    };
    TestResult::host(boot, "device-exit", passed, message, Value::Null)
}

/// The host's own check of the emulator's counters.
fn device_stats_result(boot: &Boot, stats: &Value) -> TestResult {
    let get = |path: &str| {
        path.split('.')
            .try_fold(stats, |node, key| node.get(key))
            .and_then(Value::as_u64)
    };
    let programmed = get("stats.keyslots.programmed");
    let crypto_out = get("stats.crypto_out.requests");
    let crypto_in = get("stats.crypto_in.requests");
    let rejected = get("stats.rejected.total");
    let facts = json!({
        "keyslots_programmed": programmed,
        "crypto_out_requests": crypto_out,
        "crypto_in_requests": crypto_in,
        "rejected_requests": rejected,
    });
    let problem = match (programmed, crypto_out, crypto_in, rejected) {
        (None, ..) | (_, None, ..) | (_, _, None, _) | (.., None) => {
            Some("the device wrote no stats file".to_owned())
        }
        (_, _, _, Some(r)) if r > 0 => Some(format!(
            "the device rejected {r} requests (see trace.jsonl)"
        )),
        (Some(p), Some(o), Some(i), _) if boot.native && (p == 0 || o == 0 || i == 0) => {
            Some(format!(
                "expected keyslots programmed >= 1 and CRYPTO_OUT, CRYPTO_IN > 0; got {p}, {o}, {i}"
            ))
        }
        (Some(p), Some(o), Some(i), _) if !boot.native && (p + o + i) > 0 => Some(format!(
            "a device without inline encryption saw {p} programs, {o} CRYPTO_OUT, {i} CRYPTO_IN"
        )),
        _ => None,
    };
    TestResult::host(
        boot.name,
        "device-stats",
        problem.is_none(),
        problem.unwrap_or_default(),
        facts,
    )
}

/// The last `lines` lines of a log file.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
