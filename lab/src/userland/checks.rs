//! The host's checks of a userland boot: each device exited cleanly and
//! refused nothing, and the path fscrypt took (native inline encryption
//! or blk-crypto-fallback) agrees between the guest kernel's log and the
//! devices' counters.

use super::{BOOT, DeviceRun};
use crate::checks::{device_exit, parse_stats};
use crate::report::{Outcome, TestResult};
use serde_json::{Value, json};

/// `DEV/device-exit` and `DEV/device-stats` of every device.
pub fn devices(devices: &[DeviceRun]) -> Vec<TestResult> {
    let mut results = Vec::new();
    for device in devices {
        let mut exit = device_exit(BOOT, device.exit, false, false, &device.paths);
        exit.name = format!("{}/device-exit", device.name);
        results.push(exit);
        results.push(device_stats(device));
    }
    results
}

/// `DEV/device-stats`: the device refused no request, and every keyslot
/// program and evict came on the control queue. The facts are the traffic.
fn device_stats(device: &DeviceRun) -> TestResult {
    let name = format!("{}/device-stats", device.name);
    let file = match parse_stats(&device.stats) {
        Ok(file) => file,
        Err(problem) => return TestResult::host(BOOT, &name, false, problem, Value::Null),
    };
    let c = &file.stats;
    let facts = json!({
        "crypto_out_requests": c.crypto_out.requests,
        "crypto_in_requests": c.crypto_in.requests,
        "crypto_out_bytes": c.crypto_out.bytes,
        "crypto_in_bytes": c.crypto_in.bytes,
        "plain_out_requests": c.plain_out.requests,
        "plain_in_requests": c.plain_in.requests,
        "keyslots_programmed": c.keyslots.programmed,
        "keyslots_evicted": c.keyslots.evicted,
        "rejected": c.rejected.total,
        "rejected_by_kind": c.rejected.by_kind,
    });
    let keyslot_commands = c.keyslots.programmed + c.keyslots.evicted;
    let problem = if c.rejected.total > 0 {
        Some(format!(
            "the device refused {} request(s) ({:?}); see {}",
            c.rejected.total,
            c.rejected.by_kind,
            device.paths.device_log.display()
        ))
    } else if c.control_queue.keyslot_commands != keyslot_commands {
        Some(format!(
            "{keyslot_commands} keyslot programs and evictions, but {} arrived on the control \
             queue",
            c.control_queue.keyslot_commands
        ))
    } else {
        None
    };
    let message = problem.clone().unwrap_or_else(|| {
        format!(
            "{} CRYPTO_OUT, {} CRYPTO_IN, {} plain writes, {} plain reads; {} keyslot programs; \
             nothing refused",
            c.crypto_out.requests,
            c.crypto_in.requests,
            c.plain_out.requests,
            c.plain_in.requests,
            c.keyslots.programmed
        )
    });
    TestResult::host(BOOT, &name, problem.is_none(), message, facts)
}

/// Which blk-crypto implementation a boot used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CryptoPath {
    /// The devices' engines ("blk-crypto (native)", CRYPTO_IN/OUT).
    Native,
    /// The kernel's software fallback.
    Fallback,
}

impl CryptoPath {
    /// `native` or `fallback`.
    pub fn name(self) -> &'static str {
        match self {
            CryptoPath::Native => "native",
            CryptoPath::Fallback => "fallback",
        }
    }
}

/// `blk-crypto-path`: what the guest kernel logged (the `kernel-log`
/// test's facts) and what the devices counted must tell the same story:
/// native in the log means crypto requests reached a device, fallback
/// means none did, and devices without an engine (`inline_encryption`
/// false) must never see the native path. Skipped when fscrypt did not use
/// blk-crypto at all (a command without inline encryption).
pub fn crypto_path(
    guest: &[TestResult],
    devices: &[DeviceRun],
    inline_encryption: bool,
) -> TestResult {
    const NAME: &str = "blk-crypto-path";
    let Some(log) = guest.iter().find(|r| r.name == "kernel-log") else {
        return TestResult::host(
            BOOT,
            NAME,
            false,
            "the guest reported no kernel-log test".to_owned(),
            Value::Null,
        );
    };
    let lines = |key: &str| -> Vec<String> {
        log.facts
            .get(key)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    };
    let native_lines = lines("blk_crypto_native");
    let fallback_lines = lines("blk_crypto_fallback");
    let (mut crypto_out, mut crypto_in) = (0u64, 0u64);
    for device in devices {
        if let Ok(file) = parse_stats(&device.stats) {
            crypto_out += file.stats.crypto_out.requests;
            crypto_in += file.stats.crypto_in.requests;
        }
    }
    let path = match (native_lines.is_empty(), fallback_lines.is_empty()) {
        (false, true) => Some(CryptoPath::Native),
        (true, false) => Some(CryptoPath::Fallback),
        _ => None,
    };
    let facts = json!({
        "path": path.map(CryptoPath::name),
        "kernel_log_native": native_lines,
        "kernel_log_fallback": fallback_lines,
        "crypto_out_requests": crypto_out,
        "crypto_in_requests": crypto_in,
        "devices_have_engines": inline_encryption,
    });
    let traffic = format!("devices: {crypto_out} CRYPTO_OUT, {crypto_in} CRYPTO_IN");
    let (outcome, message) = match path {
        None if native_lines.is_empty() => (
            Outcome::Skip,
            format!("fscrypt did not use blk-crypto (no inlinecrypt mount?); {traffic}"),
        ),
        None => (
            Outcome::Fail,
            format!(
                "the kernel log names both paths: {native_lines:?} and {fallback_lines:?}; {traffic}"
            ),
        ),
        Some(CryptoPath::Native) if !inline_encryption => (
            Outcome::Fail,
            format!(
                "the kernel used native inline encryption on devices without an engine: \
                 {native_lines:?}; {traffic}"
            ),
        ),
        Some(CryptoPath::Native) if crypto_out == 0 || crypto_in == 0 => (
            Outcome::Fail,
            format!(
                "the kernel log says native ({}) but the {traffic}: the encrypted I/O did not \
                 reach the engines",
                native_lines.join("; ")
            ),
        ),
        Some(CryptoPath::Fallback) if crypto_out + crypto_in > 0 => (
            Outcome::Fail,
            format!(
                "the kernel log says blk-crypto-fallback ({}) but the {traffic}",
                fallback_lines.join("; ")
            ),
        ),
        Some(path) => (
            Outcome::Pass,
            format!(
                "{}: kernel log {:?}; {traffic}",
                path.name(),
                native_lines
                    .first()
                    .or(fallback_lines.first())
                    .map_or("", String::as_str)
            ),
        ),
    };
    TestResult {
        outcome,
        ..TestResult::host(BOOT, NAME, true, message, facts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::BootPaths;
    use icelab_contract::device::StatsFile;

    fn device(out: u64, input: u64, rejected: u64) -> DeviceRun {
        let mut file = StatsFile::default();
        file.stats.crypto_out.requests = out;
        file.stats.crypto_in.requests = input;
        file.stats.rejected.total = rejected;
        DeviceRun {
            name: "vda".into(),
            paths: BootPaths::in_dir(std::path::Path::new("/nonexistent")),
            exit: None,
            stats: serde_json::to_value(&file).expect("json"),
        }
    }

    fn kernel_log(native: &[&str], fallback: &[&str]) -> Vec<TestResult> {
        vec![TestResult::host(
            BOOT,
            "kernel-log",
            true,
            String::new(),
            json!({"blk_crypto_native": native, "blk_crypto_fallback": fallback}),
        )]
    }

    const NATIVE: &str = "fscrypt: AES-256-XTS using blk-crypto (native)";
    const FALLBACK: &str = "fscrypt: AES-256-XTS using blk-crypto-fallback";

    #[test]
    fn the_path_must_agree_with_the_devices() {
        let check = |native: &[&str], fallback: &[&str], dev: DeviceRun, engines: bool| {
            crypto_path(&kernel_log(native, fallback), &[dev], engines).outcome
        };
        assert_eq!(check(&[NATIVE], &[], device(5, 3, 0), true), Outcome::Pass);
        assert_eq!(check(&[NATIVE], &[], device(0, 0, 0), true), Outcome::Fail);
        assert_eq!(check(&[NATIVE], &[], device(5, 3, 0), false), Outcome::Fail);
        assert_eq!(
            check(&[], &[FALLBACK], device(0, 0, 0), false),
            Outcome::Pass
        );
        assert_eq!(
            check(&[], &[FALLBACK], device(2, 0, 0), true),
            Outcome::Fail
        );
        assert_eq!(check(&[], &[], device(0, 0, 0), true), Outcome::Skip);
        assert_eq!(
            check(&[NATIVE], &[FALLBACK], device(1, 1, 0), true),
            Outcome::Fail
        );
        let result = crypto_path(&kernel_log(&[NATIVE], &[]), &[device(5, 3, 0)], true);
        assert_eq!(result.facts["path"], "native");
        assert_eq!(result.facts["crypto_out_requests"], 5);
        assert!(crypto_path(&[], &[], true).outcome == Outcome::Fail);
    }

    #[test]
    fn a_refusing_device_fails_its_stats_check() {
        let results = devices(&[device(1, 1, 0), device(1, 1, 2)]);
        let stats: Vec<&TestResult> = results
            .iter()
            .filter(|r| r.name.ends_with("device-stats"))
            .collect();
        assert_eq!(stats[0].outcome, Outcome::Pass);
        assert_eq!(stats[1].outcome, Outcome::Fail);
        assert!(
            stats[1].message.contains("refused 2"),
            "{}",
            stats[1].message
        );
        assert!(results.iter().any(|r| r.name == "vda/device-exit"));
    }
}
