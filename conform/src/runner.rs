//! Runs checks: probes the device once, then runs each check on fresh
//! connections, one check at a time, each instance of a per-data-unit-size
//! check separately.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

use crate::check::{Check, Failure, Outcome, Param, Requirement};
use crate::device::DeviceInfo;
use crate::session::{Ctx, Session, Settings, error_chain};

/// After this many checks in a row that could not connect, the device is
/// taken for gone and the remaining checks fail without trying.
const MAX_CONNECT_FAILURES_IN_A_ROW: u32 = 3;

/// Failures before any check could run.
#[derive(Debug, thiserror::Error)]
pub enum ConformError {
    /// The probe could not open a vhost-user session.
    #[error(
        "cannot open a vhost-user session with the device at {socket}: {detail}. Check that the \
         device is running and listening on this socket, that no other frontend (a VM, another \
         run) is connected, and that it accepts a new connection after each disconnect (with \
         icelab serve: --persist)"
    )]
    Connect {
        /// The socket.
        socket: String,
        /// The frontend's error and its causes.
        detail: String,
    },
}

/// One check instance's result.
#[derive(Clone, Debug)]
pub struct CheckRecord {
    /// The id (`ID/du-SIZE` for per-size instances).
    pub id: String,
    /// The docs/PROTOCOL.md section.
    pub section: &'static str,
    /// MUST or CHOICE.
    pub requirement: Requirement,
    /// Pass, fail or skip.
    pub outcome: Outcome,
    /// How long it took.
    pub duration: Duration,
}

/// Connects once and reads what the device advertises.
pub fn probe(settings: &Settings) -> Result<DeviceInfo, ConformError> {
    let mut session = Session::open(
        &settings.socket,
        &settings.frontend_options(),
        settings.timeout,
    )
    .map_err(|error| ConformError::Connect {
        socket: settings.socket.display().to_string(),
        detail: error_chain(&error),
    })?;
    Ok(DeviceInfo::probe(&settings.socket, &mut session))
}

/// The checks whose id starts with one of `prefixes` (all when empty).
pub fn select(checks: Vec<Check>, prefixes: &[String]) -> Vec<Check> {
    if prefixes.is_empty() {
        return checks;
    }
    checks
        .into_iter()
        .filter(|check| {
            prefixes
                .iter()
                .any(|prefix| check.id.starts_with(prefix.as_str()))
        })
        .collect()
}

/// Runs `checks` against the probed `device`, calling `on_record` as each
/// finishes.
pub fn run(
    settings: &Settings,
    device: &DeviceInfo,
    checks: &[Check],
    mut on_record: impl FnMut(&CheckRecord),
) -> Vec<CheckRecord> {
    let mut records = Vec::new();
    let mut unreachable_in_a_row = 0;
    for check in checks {
        let instances: Vec<(String, Option<u32>)> = match (check.param, device.crypto()) {
            (Param::PerDataUnitSize, Ok(crypto)) => crypto
                .data_unit_sizes
                .iter()
                .map(|size| (format!("{}/du-{size}", check.id), Some(*size)))
                .collect(),
            _ => vec![(check.id.to_owned(), None)],
        };
        for (id, data_unit_size) in instances {
            let started = Instant::now();
            let outcome = if unreachable_in_a_row >= MAX_CONNECT_FAILURES_IN_A_ROW {
                Outcome::Fail(Failure::new(format!(
                    "not run: the last {MAX_CONNECT_FAILURES_IN_A_ROW} checks could not connect \
                     to the device (did it stop, or does it refuse new connections?)"
                )))
            } else {
                let mut ctx = Ctx::new(device, settings, data_unit_size);
                let result = catch_unwind(AssertUnwindSafe(|| (check.run)(&mut ctx)));
                let outcome = match result {
                    Ok(result) => Outcome::from(result),
                    Err(panic) => {
                        let what = panic
                            .downcast_ref::<&str>()
                            .map(|s| (*s).to_owned())
                            .or_else(|| panic.downcast_ref::<String>().cloned())
                            .unwrap_or_default();
                        Outcome::Fail(Failure::new(format!(
                            "internal error: the check panicked ({what}); please report it"
                        )))
                    }
                };
                if ctx.connect_failures > 0 && matches!(outcome, Outcome::Fail(_)) {
                    unreachable_in_a_row += 1;
                } else {
                    unreachable_in_a_row = 0;
                }
                outcome
            };
            let record = CheckRecord {
                id,
                section: check.section,
                requirement: check.requirement,
                outcome,
                duration: started.elapsed(),
            };
            on_record(&record);
            records.push(record);
        }
    }
    records
}
