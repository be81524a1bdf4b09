//! The host's own checks of a boot: the device exited cleanly, and its
//! counters (the contract's [`StatsFile`]) show the traffic the boot's
//! plan demands.

use super::boot::{BootPaths, DEVICE_EXIT_TIMEOUT, DeviceRestart, tail};
use super::plan::{BootPlan, Traffic};
use super::report::TestResult;
use icelab_contract::device::{LimitAction, StatsFile, reject_kind};
use icelab_contract::record::SIGNAL_RESTART_DEVICE;
use serde::Deserialize;
use serde_json::{Value, json};
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::time::Duration;

/// `device-exit`: `icelab serve` exits with status 0 once the guest has
/// powered off and QEMU disconnected. A device started by `--device-cmd`
/// (`command`) may instead have been sent SIGTERM (`terminated`): then
/// exit status 0 or 143, or death by SIGTERM, pass too.
pub fn device_exit(
    boot: &str,
    status: Option<ExitStatus>,
    terminated: bool,
    command: bool,
    paths: &BootPaths,
) -> TestResult {
    let device = if command {
        "the device command"
    } else {
        "icelab serve"
    };
    let log = || tail(&paths.device_log, 20);
    let by_sigterm = |s: ExitStatus| {
        s.success() || s.code() == Some(128 + libc::SIGTERM) || s.signal() == Some(libc::SIGTERM)
    };
    let (passed, message) = match status {
        Some(status) if terminated && by_sigterm(status) => (
            true,
            format!(
                "{device} did not exit when QEMU did; after SIGTERM it exited with {status} \
                 (accepted: 0, 143 or SIGTERM)"
            ),
        ),
        Some(status) if terminated => (
            false,
            format!(
                "after SIGTERM {device} exited with {status} (expected 0, 143 or SIGTERM):\n{}",
                log()
            ),
        ),
        Some(status) if status.success() => (true, String::new()),
        Some(status) => (false, format!("{device} exited with {status}:\n{}", log())),
        None if terminated => (
            false,
            format!(
                "{device} did not exit within {} s of SIGTERM; killed it (SIGKILL):\n{}",
                DEVICE_EXIT_TIMEOUT.as_secs(),
                log()
            ),
        ),
        None => (
            false,
            format!(
                "{device} did not exit after the guest powered off:\n{}",
                log()
            ),
        ),
    };
    TestResult::host(boot, "device-exit", passed, message, Value::Null)
}

/// The device's stats file, read as JSON by the boot (`Null` when the
/// device wrote none), as the contract's [`StatsFile`]; `Err` says why
/// there are none.
pub fn parse_stats(stats: &Value) -> Result<StatsFile, String> {
    if stats.is_null() {
        return Err("the device wrote no stats file (see device.log)".to_owned());
    }
    StatsFile::deserialize(stats).map_err(|error| format!("the device's stats file: {error}"))
}

/// `device-stats`: the emulator's counters against [`BootPlan::traffic`];
/// no request is ever rejected; every keyslot program and evict arrived on
/// the control queue; a boot with fewer keyslots than keys (pressure) must
/// have programmed more keys than it has slots. A boot with
/// hardware-wrapped keys ([`BootPlan::key_manager_state`]) must have
/// programmed keyslots with them, and may see the key manager's refusals
/// (its guest provokes them: tampered, wrong-kind, stale and foreign keys,
/// a short raw key), but no other.
pub fn device_stats(boot: &BootPlan, stats: &Value) -> TestResult {
    let file = parse_stats(stats);
    let counters = file.as_ref().ok().map(|f| &f.stats);
    // A restarted engine fails the crypto requests that reach it before
    // the driver has programmed its keyslots again (the driver resends
    // them): in a restart boot, those refusals are expected.
    let slot_empty = counters.map_or(0, |c| c.rejected.of_kind(reject_kind::SLOT_EMPTY));
    // A boot with a refusing key usage limit expects its refusals (the
    // key-usage check counts them).
    let limit_refusals = counters.map_or(0, |c| c.rejected.of_kind(reject_kind::KEY_USAGE_LIMIT));
    let refusing = boot
        .key_usage_limit
        .is_some_and(|l| l.action == LimitAction::Refuse);
    let wrapped = boot.key_manager_state.is_some();
    let key_manager_refusals = counters.map_or(0, |c| {
        KEY_MANAGER_REFUSALS
            .iter()
            .map(|kind| c.rejected.of_kind(kind))
            .sum::<u64>()
    });
    let rejected = |total: u64| {
        let mut unexpected = total;
        if boot.restart_device {
            unexpected -= slot_empty.min(unexpected);
        }
        if refusing {
            unexpected -= limit_refusals.min(unexpected);
        }
        if wrapped {
            unexpected -= key_manager_refusals.min(unexpected);
        }
        unexpected
    };
    let facts = json!({
        "keyslots_programmed": counters.map(|c| c.keyslots.programmed),
        "keyslots_evicted": counters.map(|c| c.keyslots.evicted),
        "keyslot_commands_on_the_control_queue":
            counters.map(|c| c.control_queue.keyslot_commands),
        "crypto_out_requests": counters.map(|c| c.crypto_out.requests),
        "crypto_in_requests": counters.map(|c| c.crypto_in.requests),
        "rejected_requests": counters.map(|c| rejected(c.rejected.total)),
        "slot_empty_refusals": slot_empty,
        "key_manager": counters.map(|c| json!(c.key_manager)),
        "key_manager_refusals": counters.map(|c| {
            KEY_MANAGER_REFUSALS
                .iter()
                .filter(|kind| c.rejected.of_kind(kind) > 0)
                .map(|kind| (kind.to_string(), json!(c.rejected.of_kind(kind))))
                .collect::<serde_json::Map<_, _>>()
        }),
    });
    let problem = match &file {
        Err(problem) => Some(problem.clone()),
        Ok(StatsFile { stats: c, .. }) => {
            let p = c.keyslots.programmed;
            let (o, i) = (c.crypto_out.requests, c.crypto_in.requests);
            traffic_problem(boot, p, o, i, rejected(c.rejected.total))
                .or_else(|| {
                    let keyslot_commands = p + c.keyslots.evicted;
                    let on_control_queue = c.control_queue.keyslot_commands;
                    (on_control_queue != keyslot_commands).then(|| {
                        format!(
                            "{keyslot_commands} keyslot programs and evictions, but \
                             {on_control_queue} arrived on the control queue"
                        )
                    })
                })
                .or_else(|| {
                    let km = &c.key_manager;
                    (wrapped && boot.traffic != Traffic::None && km.programmed == 0).then(|| {
                        format!(
                            "no keyslot was programmed with a hardware-wrapped key (key \
                             manager: {} imported, {} prepared, {} derived)",
                            km.imported, km.prepared, km.derived
                        )
                    })
                })
        }
    };
    TestResult::host(
        boot.name,
        "device-stats",
        problem.is_none(),
        problem.unwrap_or_default(),
        facts,
    )
}

/// The key manager's refusal kinds: what a boot with hardware-wrapped
/// keys provokes on purpose.
const KEY_MANAGER_REFUSALS: [&str; 6] = [
    reject_kind::WRONG_RAW_KEY_SIZE,
    reject_kind::WRAPPED_KEY_MALFORMED,
    reject_kind::WRAPPED_KEY_WRONG_KIND,
    reject_kind::WRAPPED_KEY_FOREIGN,
    reject_kind::WRAPPED_KEY_STALE,
    reject_kind::WRAPPED_KEY_UNAUTHENTIC,
];

/// Why counters `p` (keyslots programmed), `o` (CRYPTO_OUT), `i`
/// (CRYPTO_IN), `r` (rejected) do not fit `boot`, if they do not.
/// The `device-restart` check of a restart boot: the guest signalled, the
/// device was killed, started again, and QEMU reconnected to it.
pub fn device_restart(boot: &str, restart: Option<&DeviceRestart>) -> TestResult {
    let secs = |d: Option<Duration>| d.map(|d| d.as_secs_f64());
    let (problem, facts) = match restart {
        None => (
            Some(format!(
                "the guest never signalled {SIGNAL_RESTART_DEVICE:?}: the device was not restarted"
            )),
            Value::Null,
        ),
        Some(r) => (
            r.problem.clone(),
            json!({
                "listening_after_kill_s": secs(r.listening_after),
                "reconnected_after_kill_s": secs(r.reconnected_after),
            }),
        ),
    };
    TestResult::host(
        boot,
        "device-restart",
        problem.is_none(),
        problem.unwrap_or_default(),
        facts,
    )
}

fn traffic_problem(boot: &BootPlan, p: u64, o: u64, i: u64, r: u64) -> Option<String> {
    if r > 0 {
        return Some(format!(
            "the device rejected {r} requests (see trace.jsonl)"
        ));
    }
    match boot.traffic {
        Traffic::ReadWrite if p == 0 || o == 0 || i == 0 => Some(format!(
            "expected keyslots programmed >= 1 and CRYPTO_OUT, CRYPTO_IN > 0; got {p}, {o}, {i}"
        )),
        Traffic::Read if p == 0 || i == 0 => Some(format!(
            "expected keyslots programmed >= 1 and CRYPTO_IN > 0 (the second boot reads the \
             first one's files); got {p}, {i}"
        )),
        Traffic::None if p + o + i > 0 => Some(format!(
            "a device without inline encryption saw {p} programs, {o} CRYPTO_OUT, {i} CRYPTO_IN"
        )),
        _ => match boot.slots {
            Some(slots) if p <= u64::from(slots) => Some(format!(
                "the device has {slots} keyslots and the suite uses more keys, yet only {p} \
                 programs: keys were not reprogrammed under pressure"
            )),
            _ => None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{PlanInput, Suite, plan};

    fn file(p: u64, o: u64, i: u64, r: u64) -> StatsFile {
        let mut file = StatsFile::default();
        file.stats.keyslots.programmed = p;
        file.stats.control_queue.keyslot_commands = p;
        file.stats.crypto_out.requests = o;
        file.stats.crypto_in.requests = i;
        file.stats.rejected.total = r;
        file
    }

    fn stats(p: u64, o: u64, i: u64, r: u64) -> Value {
        value_of(file(p, o, i, r))
    }

    fn value_of(file: StatsFile) -> Value {
        serde_json::to_value(file).expect("serializes")
    }

    #[test]
    fn traffic_per_boot() {
        let boots = plan(&PlanInput {
            suite: Suite::Lab,
            profile: None,
            no_control: false,
            seed: 1,
        });
        let (ufs, reboot, pressure) = (&boots[0], &boots[1], &boots[3]);
        assert!(device_stats(ufs, &stats(3, 10, 10, 0)).message.is_empty());
        let fail = device_stats(ufs, &stats(3, 0, 10, 0));
        assert_eq!(fail.outcome, crate::report::Outcome::Fail);
        // The second boot need not write.
        assert!(device_stats(reboot, &stats(1, 0, 5, 0)).message.is_empty());
        assert!(!device_stats(reboot, &stats(1, 0, 0, 0)).message.is_empty());
        assert!(!device_stats(ufs, &stats(3, 10, 10, 1)).message.is_empty());
        assert!(
            !device_stats(pressure, &stats(2, 10, 10, 0))
                .message
                .is_empty()
        );
        assert!(
            device_stats(pressure, &stats(17, 10, 10, 0))
                .message
                .is_empty()
        );
        let none = device_stats(ufs, &Value::Null);
        assert!(none.message.contains("no stats file"), "{}", none.message);
        let partial = device_stats(ufs, &json!({"stats": {"keyslots": {"programmed": 3}}}));
        assert!(
            partial.message.contains("the device's stats file"),
            "{}",
            partial.message
        );
        // A program that did not come through the control queue.
        let mut misrouted = file(3, 10, 10, 0);
        misrouted.stats.control_queue.keyslot_commands = 2;
        let fail = device_stats(ufs, &value_of(misrouted));
        assert!(fail.message.contains("control queue"), "{}", fail.message);

        let smoke = plan(&PlanInput {
            suite: Suite::Smoke,
            profile: None,
            no_control: false,
            seed: 1,
        });
        assert!(
            device_stats(&smoke[1], &stats(0, 0, 0, 0))
                .message
                .is_empty()
        );
        assert!(
            !device_stats(&smoke[1], &stats(0, 1, 0, 0))
                .message
                .is_empty()
        );
    }

    #[test]
    fn a_restart_boot_tolerates_only_slot_empty_refusals() {
        let boots = plan(&PlanInput {
            suite: Suite::Lab,
            profile: None,
            no_control: false,
            seed: 1,
        });
        let (ufs, restart) = (&boots[0], &boots[4]);
        assert!(restart.restart_device);
        let mut refused = file(3, 10, 10, 4);
        let by_kind = &mut refused.stats.rejected.by_kind;
        by_kind.insert(reject_kind::SLOT_EMPTY.to_owned(), 4);
        assert!(
            device_stats(restart, &value_of(refused.clone()))
                .message
                .is_empty()
        );
        assert!(
            !device_stats(ufs, &value_of(refused.clone()))
                .message
                .is_empty()
        );
        let by_kind = &mut refused.stats.rejected.by_kind;
        by_kind.insert(reject_kind::SLOT_EMPTY.to_owned(), 3);
        by_kind.insert("dun-overflow".to_owned(), 1);
        assert!(!device_stats(restart, &value_of(refused)).message.is_empty());
    }

    #[test]
    fn a_wrapped_boot_needs_wrapped_programs_and_tolerates_only_key_manager_refusals() {
        let boots = plan(&PlanInput {
            suite: Suite::LabWrapped,
            profile: None,
            no_control: false,
            seed: 1,
        });
        let (wrapped, foreign) = (&boots[0], &boots[2]);
        let mut refused = file(3, 10, 10, 3);
        refused.stats.key_manager.programmed = 2;
        let by_kind = &mut refused.stats.rejected.by_kind;
        by_kind.insert(reject_kind::WRAPPED_KEY_UNAUTHENTIC.to_owned(), 1);
        by_kind.insert(reject_kind::WRAPPED_KEY_WRONG_KIND.to_owned(), 1);
        by_kind.insert(reject_kind::WRONG_RAW_KEY_SIZE.to_owned(), 1);
        let result = device_stats(wrapped, &value_of(refused.clone()));
        assert!(result.message.is_empty(), "{}", result.message);
        assert_eq!(
            result.facts["key_manager_refusals"]["wrapped-key-wrong-kind"],
            json!(1)
        );
        assert!(
            device_stats(foreign, &value_of(refused.clone()))
                .message
                .is_empty()
        );
        // Not in a boot without hardware-wrapped keys.
        let lab = plan(&PlanInput {
            suite: Suite::Lab,
            profile: None,
            no_control: false,
            seed: 1,
        });
        assert!(
            !device_stats(&lab[0], &value_of(refused.clone()))
                .message
                .is_empty()
        );
        // Another kind of refusal is still one too many.
        refused.stats.rejected.total = 4;
        refused
            .stats
            .rejected
            .by_kind
            .insert("dun-overflow".to_owned(), 1);
        assert!(
            !device_stats(wrapped, &value_of(refused.clone()))
                .message
                .is_empty()
        );
        // Keyslots programmed, but none with a hardware-wrapped key.
        let mut raw_only = file(3, 10, 10, 0);
        raw_only.stats.key_manager.imported = 1;
        let result = device_stats(wrapped, &value_of(raw_only));
        assert!(
            result.message.contains("hardware-wrapped"),
            "{}",
            result.message
        );
    }

    #[test]
    fn device_restart_needs_the_signal_and_a_reconnection() {
        assert_eq!(
            device_restart("restart", None).outcome,
            crate::report::Outcome::Fail
        );
        let failed = DeviceRestart {
            problem: Some("QEMU did not reconnect".to_owned()),
            ..DeviceRestart::default()
        };
        assert!(!device_restart("restart", Some(&failed)).message.is_empty());
        let done = DeviceRestart {
            problem: None,
            listening_after: Some(Duration::from_millis(30)),
            reconnected_after: Some(Duration::from_millis(900)),
        };
        let result = device_restart("restart", Some(&done));
        assert_eq!(result.outcome, crate::report::Outcome::Pass);
        assert_eq!(result.facts["reconnected_after_kill_s"], json!(0.9));
    }

    #[test]
    fn a_device_command_may_exit_by_sigterm() {
        use std::os::unix::process::ExitStatusExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let paths = crate::boot::BootPaths::in_dir(dir.path());
        let code = |c: i32| Some(ExitStatus::from_raw(c << 8));
        let signal = |s: i32| Some(ExitStatus::from_raw(s));
        let exit = |status, terminated, command| {
            device_exit("b", status, terminated, command, &paths).outcome
        };
        use crate::report::Outcome::{Fail, Pass};
        // icelab serve must exit 0 by itself.
        assert_eq!(exit(code(0), false, false), Pass);
        assert_eq!(exit(code(1), false, false), Fail);
        assert_eq!(exit(None, false, false), Fail);
        // A command: by itself with 0, or after SIGTERM with 0, 143 or by
        // the signal.
        assert_eq!(exit(code(0), false, true), Pass);
        assert_eq!(exit(code(143), false, true), Fail);
        for status in [code(0), code(143), signal(libc::SIGTERM)] {
            assert_eq!(exit(status, true, true), Pass);
        }
        let accepted = device_exit("b", code(143), true, true, &paths);
        assert!(
            accepted.message.contains("accepted"),
            "{}",
            accepted.message
        );
        assert_eq!(exit(code(1), true, true), Fail);
        assert_eq!(exit(signal(libc::SIGSEGV), true, true), Fail);
        let killed = device_exit("b", None, true, true, &paths);
        assert!(killed.message.contains("SIGKILL"), "{}", killed.message);
    }
}
