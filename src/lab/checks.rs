//! The host's own checks of a boot: the device exited cleanly, and its
//! counters show the traffic the boot's plan demands.

use super::boot::{BootPaths, DeviceRestart, RESTART_SIGNAL, tail};
use super::plan::{BootPlan, Traffic};
use super::report::TestResult;
use serde_json::{Value, json};
use std::process::ExitStatus;
use std::time::Duration;

/// `device-exit`: `icelab serve` exits with status 0 once the guest has
/// powered off and QEMU disconnected.
pub fn device_exit(boot: &str, status: Option<ExitStatus>, paths: &BootPaths) -> TestResult {
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

/// `device-stats`: the emulator's counters against [`BootPlan::traffic`];
/// no request is ever rejected; every keyslot program and evict arrived on
/// the control queue; a boot with fewer keyslots than keys (pressure) must
/// have programmed more keys than it has slots.
pub fn device_stats(boot: &BootPlan, stats: &Value) -> TestResult {
    let get = |path: &str| {
        path.split('.')
            .try_fold(stats, |node, key| node.get(key))
            .and_then(Value::as_u64)
    };
    let programmed = get("stats.keyslots.programmed");
    let evicted = get("stats.keyslots.evicted");
    let crypto_out = get("stats.crypto_out.requests");
    let crypto_in = get("stats.crypto_in.requests");
    let rejected = get("stats.rejected.total");
    // A restarted engine fails the crypto requests that reach it before
    // the driver has programmed its keyslots again (the driver resends
    // them): in a restart boot, those refusals are expected.
    let slot_empty = get("stats.rejected.by_kind.slot-empty").unwrap_or(0);
    let rejected = rejected.map(|r| {
        if boot.restart_device {
            r - slot_empty.min(r)
        } else {
            r
        }
    });
    let control_keyslot_commands = get("stats.control_queue.keyslot_commands");
    let facts = json!({
        "keyslots_programmed": programmed,
        "keyslots_evicted": evicted,
        "keyslot_commands_on_the_control_queue": control_keyslot_commands,
        "crypto_out_requests": crypto_out,
        "crypto_in_requests": crypto_in,
        "rejected_requests": rejected,
        "slot_empty_refusals": slot_empty,
    });
    let problem = match (programmed, crypto_out, crypto_in, rejected) {
        (Some(p), Some(o), Some(i), Some(r)) => traffic_problem(boot, p, o, i, r).or_else(|| {
            let keyslot_commands = p + evicted.unwrap_or(0);
            (control_keyslot_commands != Some(keyslot_commands)).then(|| {
                format!(
                    "{keyslot_commands} keyslot programs and evictions, but {} arrived on the \
                     control queue",
                    control_keyslot_commands.map_or("none".to_owned(), |n| n.to_string())
                )
            })
        }),
        _ => Some("the device wrote no stats file (see device.log)".to_owned()),
    };
    TestResult::host(
        boot.name,
        "device-stats",
        problem.is_none(),
        problem.unwrap_or_default(),
        facts,
    )
}

/// Why counters `p` (keyslots programmed), `o` (CRYPTO_OUT), `i`
/// (CRYPTO_IN), `r` (rejected) do not fit `boot`, if they do not.
/// The `device-restart` check of a restart boot: the guest signalled, the
/// device was killed, started again, and QEMU reconnected to it.
pub fn device_restart(boot: &str, restart: Option<&DeviceRestart>) -> TestResult {
    let secs = |d: Option<Duration>| d.map(|d| d.as_secs_f64());
    let (problem, facts) = match restart {
        None => (
            Some(format!(
                "the guest never signalled {RESTART_SIGNAL:?}: the device was not restarted"
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
    use crate::lab::plan::{PlanInput, Suite, plan};

    fn stats(p: u64, o: u64, i: u64, r: u64) -> Value {
        json!({"stats": {
            "keyslots": {"programmed": p, "evicted": 0},
            "control_queue": {"keyslot_commands": p},
            "crypto_out": {"requests": o},
            "crypto_in": {"requests": i},
            "rejected": {"total": r},
        }})
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
        assert_eq!(fail.outcome, crate::lab::report::Outcome::Fail);
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
        assert!(!device_stats(ufs, &Value::Null).message.is_empty());
        // A program that did not come through the control queue.
        let mut misrouted = stats(3, 10, 10, 0);
        misrouted["stats"]["control_queue"]["keyslot_commands"] = json!(2);
        let fail = device_stats(ufs, &misrouted);
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
        let mut refused = stats(3, 10, 10, 4);
        refused["stats"]["rejected"]["by_kind"] = json!({"slot-empty": 4});
        assert!(device_stats(restart, &refused).message.is_empty());
        assert!(!device_stats(ufs, &refused).message.is_empty());
        refused["stats"]["rejected"]["by_kind"] = json!({"slot-empty": 3, "dun-overflow": 1});
        assert!(!device_stats(restart, &refused).message.is_empty());
    }

    #[test]
    fn device_restart_needs_the_signal_and_a_reconnection() {
        assert_eq!(
            device_restart("restart", None).outcome,
            crate::lab::report::Outcome::Fail
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
        assert_eq!(result.outcome, crate::lab::report::Outcome::Pass);
        assert_eq!(result.facts["reconnected_after_kill_s"], json!(0.9));
    }
}
