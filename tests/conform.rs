//! `icelab conform` (the conformance checker for device vendors) run as a
//! process against real devices: `icelab serve --persist` in both
//! profiles (everything passes), with deliberate engine faults (the
//! ciphertext checks fail, naming the request), without inline encryption
//! and qemu-storage-daemon's vhost-user-blk export (only the plain checks
//! run; every inline-encryption check skips, saying why). Assertions read
//! the JSON report.

mod support;

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};
use support::{Device, Process, create_image, icelab_bin, require_tool, temp_dir};

/// Far above a normal run (under a few seconds), for a loaded machine.
const CONFORM_TIMEOUT: Duration = Duration::from_secs(300);

const IMAGE_SIZE: u64 = 64 << 20;

const NO_INLINE_ENCRYPTION: &str =
    "the device does not offer VIRTIO_BLK_F_INLINE_ENCRYPTION (bit 23)";

/// What one `icelab conform` run left behind.
struct Run {
    status: ExitStatus,
    stdout: String,
    stderr: String,
    report: Value,
    junit: String,
}

impl Run {
    fn checks(&self) -> &Vec<Value> {
        self.report["checks"].as_array().expect("checks array")
    }

    fn check(&self, id: &str) -> &Value {
        self.checks()
            .iter()
            .find(|c| c["id"] == id)
            .unwrap_or_else(|| panic!("no check {id} in the report\n{}", self.stdout))
    }

    fn outcome(&self, id: &str) -> &str {
        self.check(id)["outcome"].as_str().expect("outcome")
    }

    fn ids_with(&self, outcome: &str) -> Vec<&str> {
        self.checks()
            .iter()
            .filter(|c| c["outcome"] == outcome)
            .filter_map(|c| c["id"].as_str())
            .collect()
    }

    fn count(&self, field: &str) -> u64 {
        self.report[field].as_u64().expect("a count")
    }
}

/// Runs `icelab conform --socket SOCKET --json --junit` in `dir`.
fn conform(dir: &Path, socket: &Path, extra: &[&str]) -> Run {
    let json = dir.join("conform.json");
    let junit = dir.join("conform.xml");
    let mut command = Command::new(icelab_bin());
    command
        .arg("conform")
        .arg("--socket")
        .arg(socket)
        .arg("--json")
        .arg(&json)
        .arg("--junit")
        .arg(&junit)
        .args(extra);
    let mut process = Process::spawn("conform", command, dir);
    let status = process.wait_or_kill(CONFORM_TIMEOUT, "");
    let stdout = std::fs::read_to_string(process.stdout_log()).expect("conform stdout");
    let stderr = std::fs::read_to_string(process.stderr_log()).expect("conform stderr");
    let text = std::fs::read_to_string(&json)
        .unwrap_or_else(|e| panic!("no JSON report ({e}); stdout:\n{stdout}\nstderr:\n{stderr}"));
    let report: Value = serde_json::from_str(&text).expect("the report is JSON");
    let junit = std::fs::read_to_string(&junit).expect("the JUnit report");
    Run {
        status,
        stdout,
        stderr,
        report,
        junit,
    }
}

/// `icelab serve --persist ARGS` on a fresh image in `dir`.
fn serve(dir: &Path, args: &[&str]) -> (Device, PathBuf) {
    let image = dir.join("disk.img");
    let socket = dir.join("icelab.sock");
    create_image(&image, IMAGE_SIZE);
    let device = Device::builder(&image, &socket)
        .arg("--persist")
        .args(args)
        .spawn();
    (device, socket)
}

/// Every report is consistent: counts add up, every check has an id, a
/// section, MUST or CHOICE; failures carry a request; no key bytes (a hex
/// run long enough to be a key) anywhere.
fn assert_well_formed(run: &Run) {
    let checks = run.checks();
    assert_eq!(
        run.count("passed") + run.count("failed") + run.count("skipped"),
        checks.len() as u64
    );
    for check in checks {
        assert!(check["id"].as_str().is_some_and(|id| id.contains('/')));
        assert!(check["section"].as_str().is_some_and(|s| !s.is_empty()));
        assert!(matches!(
            check["requirement"].as_str(),
            Some("MUST" | "CHOICE")
        ));
        assert!(check["duration"].as_f64().is_some());
        match check["outcome"].as_str() {
            Some("pass") => assert!(check["message"].is_null()),
            Some("skip") => assert!(check["message"].as_str().is_some()),
            Some("fail") => assert!(check["message"].as_str().is_some(), "{check}"),
            other => panic!("outcome {other:?}"),
        }
    }
    let text = run.report.to_string() + &run.stdout;
    let longest_hex_run = text
        .split(|c: char| !c.is_ascii_hexdigit())
        .map(str::len)
        .max()
        .unwrap_or(0);
    assert!(
        longest_hex_run < 64,
        "a {longest_hex_run}-digit hex run in the output looks like key bytes"
    );
    let summary = format!(
        "{} passed, {} failed, {} skipped",
        run.count("passed"),
        run.count("failed"),
        run.count("skipped")
    );
    assert!(
        run.stdout.lines().any(|line| line == summary),
        "summary line {summary:?} missing:\n{}",
        run.stdout
    );
    assert!(run.junit.contains(&format!(
        "tests=\"{}\" failures=\"{}\" errors=\"0\" skipped=\"{}\"",
        checks.len(),
        run.count("failed"),
        run.count("skipped")
    )));
    assert_eq!(
        run.junit.matches("<skipped ").count() as u64,
        run.count("skipped")
    );
}

/// The profile's device passes everything; nothing but the wrapped-key
/// checks skips, and only where the profile does not advertise them
/// (emmc: raw keys only).
fn assert_profile_conforms(profile: &str, max_dun_bytes: u64, skipped: &[&str]) {
    let dir = temp_dir("conform");
    let (_device, socket) = serve(dir.path(), &["--profile", profile]);
    let run = conform(dir.path(), &socket, &[]);
    assert_well_formed(&run);
    assert!(
        run.status.success(),
        "{profile}: icelab conform failed\n{}{}",
        run.stdout,
        run.stderr
    );
    assert_eq!(run.count("failed"), 0, "{}", run.stdout);
    assert_eq!(
        run.ids_with("skip"),
        skipped,
        "only wrapped keys skip, where {profile} does not advertise them"
    );
    let device = &run.report["device"];
    assert_eq!(device["inline_encryption"], true);
    assert_eq!(device["config"]["max_dun_bytes"], max_dun_bytes);
    assert_eq!(device["config"]["max_slots"], 32);
    assert_eq!(
        device["data_unit_sizes"],
        serde_json::json!([512, 1024, 2048, 4096])
    );
    for check in [
        "crypto/out-matches-reference",
        "crypto/in-decrypts-reference",
        "crypto/highest-dun",
        "crypto/dun-overflow-refused",
    ] {
        for size in [512, 1024, 2048, 4096] {
            assert_eq!(run.outcome(&format!("{check}/du-{size}")), "pass");
        }
    }
    for id in [
        "features/ctrl-vq-with-inline-encryption",
        "features/crypto-refused-without-ctrl-vq",
        "config/crypto-fields",
        "config/crypto-modes",
        "keyslots/replace-key",
        "keyslots/slot-out-of-range",
        "refusals/key-desc-156-bytes",
        "refusals/key-command-on-request-queue",
        "reset/new-connection-evicts-keys",
        "reset/set-features-evicts-keys",
        "plain/get-id",
    ] {
        assert_eq!(run.outcome(id), "pass", "{id}");
    }
    assert_eq!(
        run.check("refusals/key-command-on-request-queue")["requirement"],
        "CHOICE"
    );
    if skipped.is_empty() {
        for id in WRAPPED_CHECKS {
            assert_eq!(run.outcome(id), "pass", "{id}");
        }
        assert_eq!(run.check("wrapped/kinds-enforced")["requirement"], "CHOICE");
    }
    assert!(
        run.stdout
            .contains("PASS crypto/highest-dun/du-4096 (Device rules, MUST)")
    );
}

/// The checks of hardware-wrapped keys (they skip without them).
const WRAPPED_CHECKS: &[&str] = &[
    "wrapped/unknown-blob-refused",
    "wrapped/import-prepare-program",
    "wrapped/sw-secret-follows-the-key",
    "wrapped/altered-blob-refused",
    "wrapped/kinds-enforced",
    "wrapped/reset-makes-ephemeral-keys-stale",
];

#[test]
fn icelab_serve_with_the_ufs_profile_conforms() {
    assert_profile_conforms("ufs", 8, &[]);
}

#[test]
fn icelab_serve_with_the_emmc_profile_conforms() {
    assert_profile_conforms("emmc", 4, WRAPPED_CHECKS);
}

/// Checks that compare ciphertext with the reference (and so must catch a
/// wrong engine).
const CIPHERTEXT_CHECKS: [&str; 8] = [
    "crypto/out-matches-reference/",
    "crypto/in-decrypts-reference/",
    "crypto/highest-dun/",
    "crypto/data-across-descriptors",
    "keyslots/program-then-crypto",
    "keyslots/replace-key",
    "keyslots/last-slot",
    "keyslots/slots-independent",
];

fn assert_fault_caught(fault: &str, diagnosis: &str) {
    let dir = temp_dir("conform-fault");
    let (_device, socket) = serve(dir.path(), &["--fault", fault]);
    let run = conform(dir.path(), &socket, &[]);
    assert_well_formed(&run);
    assert!(
        !run.status.success(),
        "{fault}: conform must fail\n{}",
        run.stdout
    );
    let failed = run.ids_with("fail");
    for id in &failed {
        assert!(
            CIPHERTEXT_CHECKS
                .iter()
                .any(|prefix| id.starts_with(prefix)),
            "{fault}: {id} failed but does not check ciphertext\n{}",
            run.stdout
        );
    }
    for size in [512, 1024, 2048, 4096] {
        let id = format!("crypto/out-matches-reference/du-{size}");
        let check = run.check(&id);
        assert_eq!(check["outcome"], "fail", "{fault}: {id}");
        let message = check["message"].as_str().expect("message");
        assert!(
            message.contains("differs from the AES-256-XTS reference")
                && message.contains(diagnosis),
            "{fault}: {message}"
        );
        let request = check["request"].as_str().expect("the request is named");
        assert!(
            request.starts_with(
                "CRYPTO_OUT (27) on request queue 0: sector 128, crypto_msg {slot 0, dun 0x3e8}"
            ) && request.contains(&format!("of {size})")),
            "{fault}: {request}"
        );
        let response = check["response"].as_str().expect("the response is shown");
        assert!(
            response.starts_with("status OK (0), used length "),
            "{response}"
        );
        assert!(
            run.stdout.contains(&format!("FAIL {id}: "))
                && run.stdout.contains(&format!("  request: {request}"))
        );
        assert_eq!(
            run.outcome(&format!("crypto/in-decrypts-reference/du-{size}")),
            "fail"
        );
    }
    // The fault is in the cipher only: refusals, keyslot bookkeeping and
    // resets still conform.
    for id in [
        "refusals/crypto-misaligned-start",
        "crypto/dun-overflow-refused/du-4096",
        "keyslots/evict-then-crypto-refused",
        "reset/new-connection-evicts-keys",
        "plain/write-read-round-trip",
    ] {
        assert_eq!(run.outcome(id), "pass", "{fault}: {id}");
    }
    assert!(
        run.junit
            .contains("<failure message=\"the ciphertext CRYPTO_OUT wrote differs")
    );
}

#[test]
fn a_dun_off_by_one_engine_fails_the_ciphertext_checks() {
    assert_fault_caught("dun-off-by-one", "for the DUN + 1 (off by one)");
}

#[test]
fn a_swapped_key_halves_engine_fails_the_ciphertext_checks() {
    assert_fault_caught("swap-key-halves", "the key's two halves swapped");
}

/// A plain virtio-blk device: plain checks pass, every other check skips
/// with the reason.
fn assert_plain_device(run: &Run, what: &str) {
    assert_well_formed(run);
    assert!(
        run.status.success(),
        "{what}: conform failed\n{}{}",
        run.stdout,
        run.stderr
    );
    assert_eq!(run.count("failed"), 0, "{what}\n{}", run.stdout);
    assert_eq!(run.report["device"]["inline_encryption"], false);
    for check in run.checks() {
        let id = check["id"].as_str().expect("id");
        if id.starts_with("plain/") {
            assert_eq!(check["outcome"], "pass", "{what}: {id}\n{}", run.stdout);
        } else {
            assert_eq!(check["outcome"], "skip", "{what}: {id}");
            assert_eq!(check["message"], NO_INLINE_ENCRYPTION, "{what}: {id}");
        }
    }
    assert_eq!(run.count("passed"), 4, "{what}: the four plain checks");
    assert!(run.stdout.contains(&format!(
        "SKIP crypto/out-matches-reference: {NO_INLINE_ENCRYPTION}"
    )));
}

#[test]
fn a_device_without_inline_encryption_skips_those_checks() {
    let dir = temp_dir("conform-plain");
    let (_device, socket) = serve(dir.path(), &["--no-inline-encryption"]);
    let run = conform(dir.path(), &socket, &[]);
    assert_plain_device(&run, "icelab serve --no-inline-encryption");
}

/// qemu-storage-daemon's vhost-user-blk export of a fresh image in `dir`:
/// the process, its socket and the image.
fn qemu_storage_daemon(dir: &Path) -> (Process, PathBuf, PathBuf) {
    let binary = require_tool("qemu-storage-daemon");
    let image = dir.join("disk.img");
    let socket = dir.join("qsd.sock");
    create_image(&image, IMAGE_SIZE);
    // As frontend/tests/support/mod.rs starts it.
    let mut command = Command::new(binary);
    command
        .arg("--blockdev")
        .arg(format!(
            "driver=file,node-name=file0,filename={}",
            image.display()
        ))
        .arg("--export")
        .arg(format!(
            "type=vhost-user-blk,id=exp0,node-name=file0,addr.type=unix,addr.path={},\
             writable=on,num-queues=1",
            socket.display()
        ));
    let mut daemon = Process::spawn("qemu-storage-daemon", command, dir);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !socket.exists() {
        assert!(
            daemon.try_wait().is_none(),
            "qemu-storage-daemon exited\n{}",
            daemon.logs()
        );
        assert!(
            Instant::now() < deadline,
            "no socket from qemu-storage-daemon\n{}",
            daemon.logs()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    (daemon, socket, image)
}

#[test]
fn qemu_storage_daemon_is_a_conforming_plain_device() {
    let dir = temp_dir("conform-qsd");
    let (_daemon, socket, _image) = qemu_storage_daemon(dir.path());
    let run = conform(dir.path(), &socket, &[]);
    assert_plain_device(&run, "qemu-storage-daemon");
}

#[test]
fn an_unreachable_device_is_an_error_saying_what_to_check() {
    let dir = temp_dir("conform-none");
    let output = Command::new(icelab_bin())
        .arg("conform")
        .arg("--socket")
        .arg(dir.path().join("absent.sock"))
        .arg("--timeout")
        .arg("0.2")
        .output()
        .expect("run icelab conform");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("absent.sock") && stderr.contains("--persist"),
        "{stderr}"
    );
}

/// What one `icelab conform --against-reference` run left behind.
struct DiffRun {
    status: ExitStatus,
    stdout: String,
    report: Value,
}

/// Runs `icelab conform --against-reference` against the device on
/// `socket` with image `image`.
fn differential(dir: &Path, socket: &Path, image: &Path, seed: &str, requests: u64) -> DiffRun {
    let json = dir.join(format!("differential-{seed}-{requests}.json"));
    let mut command = Command::new(icelab_bin());
    command
        .arg("conform")
        .arg("--socket")
        .arg(socket)
        .arg("--against-reference")
        .args(["--seed", seed, "--requests", &requests.to_string()])
        .arg("--image")
        .arg(image)
        .arg("--json")
        .arg(&json);
    let mut process = Process::spawn("differential", command, dir);
    let status = process.wait_or_kill(CONFORM_TIMEOUT, "");
    let stdout = std::fs::read_to_string(process.stdout_log()).expect("stdout");
    let text = std::fs::read_to_string(&json).unwrap_or_else(|e| {
        panic!(
            "no JSON report ({e}); stdout:\n{stdout}\n{}",
            process.logs()
        )
    });
    DiffRun {
        status,
        stdout,
        report: serde_json::from_str(&text).expect("the report is JSON"),
    }
}

#[test]
fn the_differential_run_matches_the_reference_on_both_profiles() {
    for profile in ["ufs", "emmc"] {
        let dir = temp_dir("conform-diff");
        let (_device, socket) = serve(dir.path(), &["--profile", profile]);
        let run = differential(
            dir.path(),
            &socket,
            &dir.path().join("disk.img"),
            "5eed",
            4000,
        );
        assert!(run.status.success(), "{profile}: {}", run.stdout);
        assert_eq!(run.report["divergence"], Value::Null, "{profile}");
        assert_eq!(run.report["requests"], 4000, "{profile}");
        assert_eq!(run.report["images_compared"], true, "{profile}");
        assert!(
            run.stdout
                .contains("no divergence; the images' regions are equal")
        );
    }
}

#[test]
fn the_differential_run_names_the_first_divergence_of_a_faulty_engine_and_replays_it() {
    for fault in ["dun-off-by-one", "swap-key-halves"] {
        let dir = temp_dir("conform-diff-fault");
        let (_device, socket) = serve(dir.path(), &["--fault", fault]);
        let image = dir.path().join("disk.img");
        let run = differential(dir.path(), &socket, &image, "5eed", 4000);
        assert!(!run.status.success(), "{fault}: {}", run.stdout);
        let divergence = &run.report["divergence"];
        let index = divergence["request"]
            .as_u64()
            .unwrap_or_else(|| panic!("{fault}: a request diverges: {}", run.stdout));
        assert!(
            divergence["what"]
                .as_str()
                .is_some_and(|w| w.contains("CRYPTO")),
            "{fault}: {divergence}"
        );
        let replay = format!("--seed 0000000000005eed --requests {}", index + 1);
        assert!(run.stdout.contains(&replay), "{fault}: {}", run.stdout);
        // The replay stops at the same request, with the same finding.
        let again = differential(dir.path(), &socket, &image, "5eed", index + 1);
        assert!(!again.status.success());
        assert_eq!(again.report["divergence"]["request"], index, "{fault}");
        assert_eq!(
            again.report["divergence"]["what"], divergence["what"],
            "{fault}"
        );
    }
}

#[test]
fn the_differential_run_on_a_plain_device_sends_plain_requests_only() {
    let dir = temp_dir("conform-diff-plain");
    let (_device, socket) = serve(dir.path(), &["--no-inline-encryption"]);
    let run = differential(dir.path(), &socket, &dir.path().join("disk.img"), "7", 2000);
    assert!(run.status.success(), "{}", run.stdout);
    assert_eq!(run.report["divergence"], Value::Null);
    assert_eq!(run.report["images_compared"], true);
}

#[test]
fn the_differential_run_matches_qemu_storage_daemon_as_a_plain_device() {
    let dir = temp_dir("conform-diff-qsd");
    let (_daemon, socket, image) = qemu_storage_daemon(dir.path());
    let run = differential(dir.path(), &socket, &image, "3", 2000);
    assert!(run.status.success(), "{}", run.stdout);
    assert_eq!(run.report["divergence"], Value::Null);
    assert_eq!(run.report["images_compared"], true);
}
