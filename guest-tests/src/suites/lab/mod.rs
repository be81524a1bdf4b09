//! The lab suite (issue 4): every way blk-crypto uses the engine, each
//! test leaving the facts the host's verifier needs.
//!
//! Tables:
//! - [`TESTS`] (`icelab.suite=lab`): the first boot;
//! - [`REBOOT_TESTS`] (`lab-reboot`): the second boot on the same image;
//! - [`PRESSURE_TESTS`] (`lab-pressure`): a device with 2 keyslots;
//! - [`MATRIX_TESTS`] (`matrix`): the policy matrix alone.

use crate::runner::TestDef;

/// `icelab.suite=lab`.
pub const TESTS: &[TestDef] = &[];

/// `icelab.suite=lab-reboot`.
pub const REBOOT_TESTS: &[TestDef] = &[];

/// `icelab.suite=lab-pressure`.
pub const PRESSURE_TESTS: &[TestDef] = &[];

/// `icelab.suite=matrix`.
pub const MATRIX_TESTS: &[TestDef] = &[];
