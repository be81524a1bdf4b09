//! `icelab run --guest-cmd CMD` and `icelab shell`: one userland boot,
//! its host checks, and the reports (summary, JSON, JUnit, KCIDB).

use super::{BOOT, DeviceRun, Machine, checks, junit_in, share};
use crate::artifacts::{self, Artifacts, GuestArgs};
use crate::junit;
use crate::kcidb;
use crate::qemu::{self, Accel};
use crate::report::{self, BootRecord, Outcome, TestResult};
use crate::run::RunArgs;
use crate::size::parse_size;
use anyhow::{Context, bail};
use icelab_contract::cmdline::{SHARE_MOUNT, UserlandIo};
use icelab_emulator::engine::ProfileName;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

/// `icelab run --guest-cmd`: exit status true when every test passed.
pub fn guest_command(args: &RunArgs) -> anyhow::Result<bool> {
    let command = args.guest_cmd.as_deref().unwrap_or_default();
    super::validate(args.disks, Some(command))?;
    let profile = profile(args.profile.as_deref(), args.no_inline_encryption)?;
    let disk_size = parse_size(&args.disk_size).context("--disk-size")?;
    let junit_file = args
        .guest_junit
        .as_deref()
        .zip(args.share.as_deref())
        .map(|(path, dir)| junit_on_host(path, dir))
        .transpose()?;
    let started = Instant::now();
    let started_at = SystemTime::now();
    let (artifacts, accel, root_image) = prepare(&args.guest)?;
    println!(
        "icelab run: the userland with {} icelab device(s) ({}), {} under {}",
        args.disks,
        profile.map_or("without inline encryption".to_owned(), |p| format!(
            "profile {}",
            p.name()
        )),
        artifacts.kernel_version,
        accel.name().to_uppercase()
    );
    println!("icelab run: guest command: {command}");
    if let Some(dir) = &args.share {
        println!(
            "icelab run: {} is {SHARE_MOUNT} in the guest",
            dir.display()
        );
    }
    let temporary;
    let base = match &args.keep {
        Some(keep) => keep.clone(),
        None => {
            temporary = tempfile::Builder::new().prefix("icelab-run-").tempdir()?;
            temporary.path().to_owned()
        }
    };
    let dir = base.join(BOOT);
    let machine = Machine {
        artifacts: &artifacts,
        accel,
        root_image: &root_image,
        dir: &dir,
        devices: args.disks,
        disk_size,
        profile,
        share: args.share.as_deref(),
        command: Some(command),
        io: UserlandIo::Capture,
        timeout: Some(Duration::from_secs(args.timeout)),
        print_tests: true,
    };
    println!("--- boot {BOOT} (output of the command follows)");
    let outcome = super::boot(&machine)?;
    let mut results = outcome.results;
    let host_start = results.len();
    results.extend(checks::devices(&outcome.devices));
    results.push(checks::crypto_path(
        &results[..host_start],
        &outcome.devices,
        profile.is_some(),
    ));
    if let (Some(dir), Some(image)) = (&args.share, &outcome.share_image) {
        results.push(copy_back(image, dir, &base));
    }
    if let Some(file) = &junit_file {
        let mut imported = Vec::new();
        let summary = match junit_in::read(file, BOOT) {
            Ok(cases) => {
                let (passed, failed) = report::counts(&cases);
                let message = format!(
                    "{} test case(s) from {}: {passed} passed, {failed} failed, {} skipped",
                    cases.len(),
                    file.display(),
                    report::skipped(&cases)
                );
                let summary = TestResult::host(
                    BOOT,
                    "guest-junit",
                    !cases.is_empty(),
                    message,
                    json!({"file": file, "test_cases": cases.len()}),
                );
                imported = cases;
                summary
            }
            Err(error) => TestResult::host(
                BOOT,
                "guest-junit",
                false,
                format!("{error:#} (did the command write it?)"),
                Value::Null,
            ),
        };
        results.push(summary);
        results.extend(imported);
    }
    for result in &results[host_start..] {
        println!("{}", result.line());
    }
    let record = BootRecord {
        name: BOOT.to_owned(),
        guest_suite: "userland".to_owned(),
        profile: profile.map(|p| p.name().to_owned()),
        seed: 0,
        device_args: device_args(profile, disk_size),
        device_command: None,
        cmdline: outcome.cmdline.clone(),
        hello: outcome.hello.clone(),
        stats: devices_stats(&outcome.devices),
        verifier: Value::Null,
        manifest_files: 0,
        duration: outcome.duration,
    };
    let records = [record];
    let (passed, failed) = report::counts(&results);
    let header = json!({
        "suite": "userland",
        "guest_command": command,
        "share": args.share,
        "devices": args.disks,
        "disk_size": disk_size,
        "profile": profile.map(|p| p.name()),
        "inline_encryption": profile.is_some(),
        "kernel": {
            "package": artifacts.kernel_package,
            "version": artifacts.kernel_version,
            "image": artifacts.kernel,
        },
        "userland_image": root_image,
        "qemu": { "version": artifacts.qemu_version, "patched": artifacts.qemu_patched },
        "accel": accel.name(),
        "output_file": args.keep.as_ref().map(|_| outcome.output.clone()),
        "duration_ms": started.elapsed().as_millis() as u64,
    });
    write_reports(
        args, &header, &records, &results, &artifacts, accel, started_at,
    )?;
    println!();
    for result in results.iter().filter(|r| r.outcome == Outcome::Fail) {
        println!("{}", result.line());
    }
    println!("icelab run: {:.0} s", started.elapsed().as_secs_f64());
    println!("{}", report::summary_line(&results));
    Ok(failed == 0 && passed > 0)
}

/// Builds (or finds) the artifacts and the userland image; picks the
/// accelerator.
pub fn prepare(guest: &GuestArgs) -> anyhow::Result<(Artifacts, Accel, PathBuf)> {
    let artifacts = artifacts::build(&guest.overrides())?;
    if !artifacts.qemu_patched {
        bail!(
            "{} does not forward inline encryption to the guest; run without --qemu to use \
             icelab's patched build, or apply images/qemu/0001-vhost-user-blk-inline-encryption.patch",
            artifacts.qemu.display()
        );
    }
    let root_image = artifacts::userland_image(&artifacts)?;
    let accel = qemu::choose(guest.accel, &artifacts);
    Ok((artifacts, accel, root_image))
}

/// `--profile` and `--no-inline-encryption` as the devices' profile.
pub fn profile(
    name: Option<&str>,
    no_inline_encryption: bool,
) -> anyhow::Result<Option<ProfileName>> {
    if no_inline_encryption {
        if let Some(name) = name {
            bail!("--profile {name} and --no-inline-encryption contradict each other; drop one");
        }
        return Ok(None);
    }
    let name = name.unwrap_or("ufs");
    ProfileName::from_name(name)
        .map(Some)
        .with_context(|| format!("unknown --profile {name:?}; choose ufs or emmc"))
}

/// Where the host finds `--guest-junit PATH` after the copy-back: relative
/// to the share directory, or a guest path under /share.
fn junit_on_host(path: &Path, share_dir: &Path) -> anyhow::Result<PathBuf> {
    let relative = match path.strip_prefix(SHARE_MOUNT) {
        Ok(inside) => inside.to_owned(),
        Err(_) if path.is_relative() => path.to_owned(),
        Err(_) => bail!(
            "--guest-junit {}: give a path relative to --share DIR, or under {SHARE_MOUNT} as the \
             guest sees it",
            path.display()
        ),
    };
    Ok(share_dir.join(relative))
}

/// `share-copy-back`: the share image's contents back into the directory.
fn copy_back(image: &Path, dir: &Path, work: &Path) -> TestResult {
    match share::unpack(image, dir, work) {
        Ok(back) => TestResult::host(
            BOOT,
            "share-copy-back",
            true,
            format!(
                "{} file(s) copied back into {}{}",
                back.files,
                dir.display(),
                if back.repaired {
                    " (e2fsck replayed the journal: the guest did not unmount cleanly)"
                } else {
                    ""
                }
            ),
            json!({"files": back.files, "repaired": back.repaired}),
        ),
        Err(error) => TestResult::host(
            BOOT,
            "share-copy-back",
            false,
            format!("{error:#}"),
            Value::Null,
        ),
    }
}

/// The `icelab serve` options of every device, for the report.
fn device_args(profile: Option<ProfileName>, size: u64) -> Vec<String> {
    let mut args = vec!["--size".to_owned(), crate::size::format_size(size)];
    match profile {
        Some(p) => args.extend(["--profile".to_owned(), p.name().to_owned()]),
        None => args.push("--no-inline-encryption".to_owned()),
    }
    args
}

/// The devices' stats files by device name.
fn devices_stats(devices: &[DeviceRun]) -> Value {
    Value::Object(
        devices
            .iter()
            .map(|d| (d.name.clone(), d.stats.clone()))
            .collect(),
    )
}

/// `--json`, `--junit` and `--kcidb`.
fn write_reports(
    args: &RunArgs,
    header: &Value,
    records: &[BootRecord],
    results: &[TestResult],
    artifacts: &Artifacts,
    accel: Accel,
    started: SystemTime,
) -> anyhow::Result<()> {
    if let Some(path) = &args.json {
        let document = report::to_json(header.clone(), records, results);
        std::fs::write(path, serde_json::to_vec_pretty(&document)?)
            .with_context(|| format!("cannot write the JSON report {}", path.display()))?;
    }
    if let Some(path) = &args.junit {
        std::fs::write(
            path,
            junit::to_xml("icelab run --guest-cmd", records, results),
        )
        .with_context(|| format!("cannot write the JUnit report {}", path.display()))?;
    }
    if let Some(path) = &args.kcidb {
        let document = kcidb::document(&kcidb::KcidbRun {
            suite: "userland",
            seed: 0,
            kernel_package: &artifacts.kernel_package,
            kernel_version: &artifacts.kernel_version,
            compiler: None,
            accel,
            started,
            boots: records,
            results,
        });
        kcidb::write(path, &document)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_junit_path_is_found_in_the_share_directory() {
        let dir = Path::new("/host/ci");
        assert_eq!(
            junit_on_host(Path::new("results/result.xml"), dir).expect("relative"),
            PathBuf::from("/host/ci/results/result.xml")
        );
        assert_eq!(
            junit_on_host(Path::new("/share/results/result.xml"), dir).expect("guest path"),
            PathBuf::from("/host/ci/results/result.xml")
        );
        let error = junit_on_host(Path::new("/tmp/result.xml"), dir).unwrap_err();
        assert!(error.to_string().contains("relative to --share"), "{error}");
    }

    #[test]
    fn profiles_and_no_inline_encryption() {
        assert_eq!(
            profile(None, false).expect("default"),
            Some(ProfileName::Ufs)
        );
        assert_eq!(
            profile(Some("emmc"), false).expect("emmc"),
            Some(ProfileName::Emmc)
        );
        assert_eq!(profile(None, true).expect("none"), None);
        assert!(
            profile(Some("ufs"), true)
                .unwrap_err()
                .to_string()
                .contains("contradict")
        );
        assert!(
            profile(Some("nvme"), false)
                .unwrap_err()
                .to_string()
                .contains("ufs or emmc")
        );
    }
}
