//! `icelab conform`: runs the conformance checks of `icelab-conform`
//! against any vhost-user-blk device, prints one line per check, writes
//! the JSON and JUnit reports; fails when any check failed.

use anyhow::Context;
use icelab_conform::check::{self, Outcome};
use icelab_conform::{CheckRecord, Report, Settings};
use icelab_lab::junit::escape;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Options of `icelab conform`.
#[derive(clap::Args, Debug, Clone)]
pub struct ConformArgs {
    /// vhost-user socket of the device under test. The device must accept
    /// a new connection for each check (icelab serve: --persist).
    #[arg(long, required_unless_present = "list")]
    pub socket: Option<PathBuf>,
    /// Write the JSON report to FILE.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Write a JUnit XML report to FILE (skipped checks as <skipped/>).
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,
    /// Longest wait for one request or vhost-user message, in seconds; a
    /// device that does not answer in time fails the check.
    #[arg(long, value_name = "SECONDS", default_value_t = 5.0)]
    pub timeout: f64,
    /// Run only the checks whose id starts with PREFIX (repeatable).
    #[arg(long, value_name = "PREFIX")]
    pub only: Vec<String>,
    /// List the checks and exit.
    #[arg(long)]
    pub list: bool,
    /// Instead of the checks: send one seeded random stream of valid and
    /// invalid requests to the device and to icelab's reference device
    /// (in this process, with the device's capabilities); statuses,
    /// returned data and (with --image) the image bytes must match.
    #[arg(long)]
    pub against_reference: bool,
    /// The stream's seed (hex; default random, printed).
    #[arg(long, value_name = "HEX", requires = "against_reference")]
    pub seed: Option<String>,
    /// Requests in the stream.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 5000,
        requires = "against_reference"
    )]
    pub requests: u64,
    /// The device's image file: compared with the reference's at the end.
    #[arg(long, value_name = "FILE", requires = "against_reference")]
    pub image: Option<PathBuf>,
}

/// `--against-reference`: the differential run; `Ok(false)` on a
/// divergence.
fn run_differential(args: &ConformArgs, socket: PathBuf) -> anyhow::Result<bool> {
    let seed = match &args.seed {
        Some(hex) => {
            let digits = hex.strip_prefix("0x").unwrap_or(hex);
            u64::from_str_radix(digits, 16)
                .ok()
                .filter(|_| !digits.is_empty() && digits.len() <= 16)
                .with_context(|| format!("--seed {hex:?} is not 1 to 16 hex digits"))?
        }
        None => rand::random(),
    };
    let options = crate::differential::Options {
        socket: socket.clone(),
        image: args.image.clone(),
        seed,
        requests: args.requests,
    };
    println!(
        "differential: {} requests of seed {seed:016x} to {} and to the reference",
        args.requests,
        socket.display()
    );
    let started = Instant::now();
    let outcome = crate::differential::run(&options)?;
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&outcome)?;
        std::fs::write(path, text + "\n")
            .with_context(|| format!("cannot write the JSON report {}", path.display()))?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    match &outcome.divergence {
        None => {
            println!(
                "differential: {} requests, no divergence{} ({elapsed:.1} s)",
                outcome.requests,
                if outcome.images_compared {
                    "; the images' regions are equal"
                } else {
                    " (images not compared: give --image)"
                }
            );
            Ok(true)
        }
        Some(divergence) => {
            let at = divergence
                .request
                .map_or("after the stream".to_owned(), |n| format!("request #{n}"));
            println!(
                "DIVERGED at {at}: {}\n  {}",
                divergence.what, divergence.difference
            );
            let replay = divergence.request.map_or(outcome.requests, |n| n + 1);
            println!(
                "  replay: icelab conform --socket {} --against-reference --seed {seed:016x} \
                 --requests {replay}{}",
                socket.display(),
                args.image
                    .as_ref()
                    .map_or(String::new(), |i| format!(" --image {}", i.display()))
            );
            Ok(false)
        }
    }
}

/// Runs `icelab conform`; `Ok(false)` when a check failed.
pub fn run(args: ConformArgs) -> anyhow::Result<bool> {
    let checks = icelab_conform::select(check::all(), &args.only);
    if args.list {
        for check in &checks {
            println!(
                "{} ({}, {}): {}",
                check.id, check.section, check.requirement, check.summary
            );
        }
        return Ok(true);
    }
    if checks.is_empty() {
        anyhow::bail!("no check id starts with {:?} (see --list)", args.only);
    }
    let Some(socket) = args.socket.clone() else {
        anyhow::bail!("--socket is required");
    };
    if args.against_reference {
        return run_differential(&args, socket);
    }
    if !(args.timeout.is_finite() && args.timeout > 0.0 && args.timeout <= 3600.0) {
        anyhow::bail!(
            "--timeout {} is not a number of seconds from 0 to 3600",
            args.timeout
        );
    }
    let settings = Settings {
        socket,
        timeout: Duration::from_secs_f64(args.timeout),
    };
    let started = Instant::now();
    let device = icelab_conform::probe(&settings)?;
    println!("{}", describe_device(&device));
    let records = icelab_conform::run(&settings, &device, &checks, print_record);
    let report = Report::new(&device, &records, started.elapsed());
    if let Some(path) = &args.json {
        std::fs::write(path, report.to_json() + "\n")
            .with_context(|| format!("cannot write the JSON report {}", path.display()))?;
    }
    if let Some(path) = &args.junit {
        std::fs::write(path, junit(&report))
            .with_context(|| format!("cannot write the JUnit report {}", path.display()))?;
    }
    println!(
        "{} passed, {} failed, {} skipped",
        report.passed, report.failed, report.skipped
    );
    Ok(report.failed == 0)
}

/// One line: the device and what it advertises.
fn describe_device(device: &icelab_conform::device::DeviceInfo) -> String {
    let mut line = format!(
        "device {}: features {:#x}",
        device.socket.display(),
        device.offered_features
    );
    match device.crypto() {
        Ok(crypto) => {
            let sizes: Vec<String> = crypto.data_unit_sizes.iter().map(u32::to_string).collect();
            let _ = write!(
                line,
                ", inline encryption: {} keyslots, max_dun_bytes {}, key_types {:#x}, data units {}",
                crypto.max_slots,
                crypto.max_dun_bytes,
                crypto.key_types,
                sizes.join(",")
            );
        }
        Err(icelab_conform::check::Stop::Skip(reason)) => {
            let _ = write!(line, "; {reason}");
        }
        Err(icelab_conform::check::Stop::Fail(failure)) => {
            let _ = write!(line, "; inline encryption unusable: {}", failure.message);
        }
    }
    line
}

fn print_record(record: &CheckRecord) {
    match &record.outcome {
        Outcome::Pass => println!(
            "PASS {} ({}, {})",
            record.id, record.section, record.requirement
        ),
        Outcome::Fail(failure) => {
            println!("FAIL {}: {}", record.id, failure.message);
            if let Some(request) = &failure.request {
                println!("  request: {request}");
            }
            if let Some(response) = &failure.response {
                println!("  response: {response}");
            }
        }
        Outcome::Skip { reason } => println!("SKIP {}: {reason}", record.id),
    }
}

/// The JUnit XML document: one suite, one case per check instance,
/// classname `conform.SUBJECT`, failures with request and response,
/// skipped checks as `<skipped/>`.
pub fn junit(report: &Report) -> String {
    let mut xml = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let title = format!("icelab conform {}", report.device.socket);
    let counts = format!(
        "tests=\"{}\" failures=\"{}\" errors=\"0\" skipped=\"{}\" time=\"{:.3}\"",
        report.checks.len(),
        report.failed,
        report.skipped,
        report.duration
    );
    let _ = writeln!(xml, "<testsuites name=\"{}\" {counts}>", escape(&title));
    let _ = writeln!(xml, "  <testsuite name=\"{}\" {counts}>", escape(&title));
    xml.push_str("    <properties>\n");
    for (name, value) in [
        ("socket", report.device.socket.clone()),
        ("offered_features", report.device.offered_features.clone()),
        (
            "inline_encryption",
            report.device.inline_encryption.to_string(),
        ),
    ] {
        let _ = writeln!(
            xml,
            "      <property name=\"{name}\" value=\"{}\"/>",
            escape(&value)
        );
    }
    xml.push_str("    </properties>\n");
    for case in &report.checks {
        let subject = case.id.split('/').next().unwrap_or("conform");
        let _ = write!(
            xml,
            "    <testcase classname=\"conform.{}\" name=\"{}\" time=\"{:.3}\"",
            escape(subject),
            escape(&case.id),
            case.duration
        );
        let message = case.message.clone().unwrap_or_default();
        match case.outcome {
            "fail" => {
                let mut body = format!(
                    "{message}\nsection: {} ({})",
                    case.section, case.requirement
                );
                if let Some(request) = &case.request {
                    let _ = write!(body, "\nrequest: {request}");
                }
                if let Some(response) = &case.response {
                    let _ = write!(body, "\nresponse: {response}");
                }
                let _ = writeln!(
                    xml,
                    ">\n      <failure message=\"{}\">{}</failure>\n    </testcase>",
                    escape(&message),
                    escape(&body)
                );
            }
            "skip" => {
                let _ = writeln!(
                    xml,
                    ">\n      <skipped message=\"{}\"/>\n    </testcase>",
                    escape(&message)
                );
            }
            _ => xml.push_str("/>\n"),
        }
    }
    xml.push_str("  </testsuite>\n</testsuites>\n");
    xml
}

#[cfg(test)]
mod tests {
    use super::*;
    use icelab_conform::check::{Failure, Requirement};
    use icelab_conform::device::DeviceInfo;

    #[test]
    fn junit_has_failures_with_request_and_skips() {
        let device = DeviceInfo {
            socket: PathBuf::from("/tmp/dev<1>.sock"),
            offered_features: 1 << 32,
            acked_features: 1 << 32,
            num_queues: 1,
            backend_queue_num: Some(1),
            config: Err("none".into()),
            config_bytes: Vec::new(),
            crypto_modes: None,
        };
        let record = |id: &str, outcome| CheckRecord {
            id: id.into(),
            section: "Device rules",
            requirement: Requirement::Must,
            outcome,
            duration: Duration::from_millis(1500),
        };
        let records = [
            record("plain/flush", Outcome::Pass),
            record(
                "crypto/x",
                Outcome::Fail(
                    Failure::new("expected \"IOERR\" & got OK")
                        .request("CRYPTO_OUT (27) <slot 0>")
                        .response("status OK (0)"),
                ),
            ),
            record(
                "wrapped/y",
                Outcome::Skip {
                    reason: "no bit 23".into(),
                },
            ),
        ];
        let report = Report::new(&device, &records, Duration::from_secs(2));
        let xml = junit(&report);
        assert!(xml.contains(
            "<testsuites name=\"icelab conform /tmp/dev&lt;1&gt;.sock\" tests=\"3\" failures=\"1\" errors=\"0\" skipped=\"1\" time=\"2.000\">"
        ));
        assert!(xml.contains(
            "<testcase classname=\"conform.plain\" name=\"plain/flush\" time=\"1.500\"/>"
        ));
        assert!(xml.contains(
            "<failure message=\"expected &quot;IOERR&quot; &amp; got OK\">expected &quot;IOERR&quot; &amp; got OK&#10;section: Device rules (MUST)&#10;request: CRYPTO_OUT (27) &lt;slot 0&gt;&#10;response: status OK (0)</failure>"
        ));
        assert!(xml.contains("<skipped message=\"no bit 23\"/>"));
        assert_eq!(xml.matches("<testcase ").count(), 3);
        assert_eq!(xml.matches("</testcase>").count(), 2);
        let json: serde_json::Value = serde_json::from_str(&report.to_json()).expect("JSON");
        assert_eq!(json["checks"][1]["request"], "CRYPTO_OUT (27) <slot 0>");
        assert_eq!(json["checks"][2]["message"], "no bit 23");
        assert_eq!(json["checks"][0]["message"], serde_json::Value::Null);
        assert_eq!(
            (
                json["passed"].as_u64(),
                json["failed"].as_u64(),
                json["skipped"].as_u64()
            ),
            (Some(1), Some(1), Some(1))
        );
    }
}
