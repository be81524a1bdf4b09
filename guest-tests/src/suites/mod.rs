//! The suites: each a list of named tests for the runner.
//!
//! A new suite is a new module with its `TESTS` table and a
//! [`SuiteName`] variant; steps that suites share (loading the driver,
//! formatting and mounting, adding keys) live in [`steps`].

pub mod bench;
pub mod lab;
pub mod smoke;
pub mod steps;
pub mod userland;

use crate::cmdline::SuiteName;
use crate::runner::TestDef;

/// The tests of `suite`, in the order they run.
pub fn tests(suite: SuiteName) -> &'static [TestDef] {
    match suite {
        SuiteName::Smoke => smoke::TESTS,
        SuiteName::Lab => lab::TESTS,
        SuiteName::LabReboot => lab::REBOOT_TESTS,
        SuiteName::LabPressure => lab::PRESSURE_TESTS,
        SuiteName::LabRestart => lab::RESTART_TESTS,
        SuiteName::LabDefaultKey => lab::DEFAULT_KEY_TESTS,
        SuiteName::LabKeyLimit => lab::KEY_LIMIT_TESTS,
        SuiteName::LabWrapped => lab::WRAPPED_TESTS,
        SuiteName::LabWrappedReboot => lab::WRAPPED_REBOOT_TESTS,
        SuiteName::LabWrappedForeign => lab::WRAPPED_FOREIGN_TESTS,
        SuiteName::Matrix => lab::MATRIX_TESTS,
        SuiteName::Bench => bench::TESTS,
        SuiteName::Userland => userland::TESTS,
    }
}
