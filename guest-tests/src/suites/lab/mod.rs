//! The lab suite (issue 4): every way blk-crypto uses the engine, each
//! test leaving the facts the host's verifier needs.
//!
//! Tables:
//! - [`TESTS`] (`icelab.suite=lab`): the first boot;
//! - [`REBOOT_TESTS`] (`lab-reboot`): the second boot on the same image;
//! - [`PRESSURE_TESTS`] (`lab-pressure`): a device with 2 keyslots;
//! - [`RESTART_TESTS`] (`lab-restart`): writes while the host kills and
//!   restarts the device;
//! - [`MATRIX_TESTS`] (`matrix`): the policy matrix alone.
//!
//! Modules: [`plan`] (the matrix as data), [`files`] (writing and reading
//! its files, manifest entries), [`matrix`] (the matrix tests and the
//! suite's `unmount`), [`reboot`] (the second boot).

pub mod files;
pub mod fscrypt_tool;
pub mod keys;
pub mod matrix;
pub mod path;
pub mod plan;
pub mod pressure;
pub mod provisioning;
pub mod reboot;
pub mod restart;

use crate::runner::TestDef;

/// `icelab.suite=lab`: the matrix, then the key tests, then `unmount`
/// (last: it removes every key the suite added).
pub const TESTS: &[TestDef] = &[
    matrix::DRIVER_LOAD,
    matrix::CRYPTO_SYSFS,
    matrix::MKFS_MOUNT,
    matrix::POLICY_TESTS[0],
    matrix::POLICY_TESTS[1],
    matrix::POLICY_TESTS[2],
    matrix::POLICY_TESTS[3],
    matrix::POLICY_TESTS[4],
    matrix::POLICY_TESTS[5],
    matrix::POLICY_TESTS[6],
    path::PATH_SELECTION,
    keys::KEY_REMOVAL,
    provisioning::KEYRING_PROVISIONING,
    fscrypt_tool::FSCRYPT_TOOL,
    matrix::UNMOUNT,
];

/// `icelab.suite=lab-reboot`: reads what `lab` wrote, after a reboot.
pub const REBOOT_TESTS: &[TestDef] = &[
    matrix::DRIVER_LOAD,
    matrix::CRYPTO_SYSFS,
    reboot::MOUNT_EXISTING,
    reboot::REREAD_TESTS[0],
    reboot::REREAD_TESTS[1],
    reboot::REREAD_TESTS[2],
    reboot::REREAD_TESTS[3],
    reboot::REREAD_TESTS[4],
    matrix::UNMOUNT,
];

/// `icelab.suite=lab-pressure`.
pub const PRESSURE_TESTS: &[TestDef] = &[
    matrix::DRIVER_LOAD,
    matrix::CRYPTO_SYSFS,
    matrix::MKFS_MOUNT,
    pressure::KEYSLOT_PRESSURE,
    matrix::UNMOUNT,
];

/// `icelab.suite=lab-restart`.
pub const RESTART_TESTS: &[TestDef] = &[
    matrix::DRIVER_LOAD,
    matrix::CRYPTO_SYSFS,
    matrix::MKFS_MOUNT,
    restart::WRITE_THROUGH_RESTART,
    matrix::UNMOUNT,
];

/// `icelab.suite=matrix`: the policy matrix alone (the fault runs).
pub const MATRIX_TESTS: &[TestDef] = &[
    matrix::DRIVER_LOAD,
    matrix::CRYPTO_SYSFS,
    matrix::MKFS_MOUNT,
    matrix::POLICY_TESTS[0],
    matrix::POLICY_TESTS[1],
    matrix::POLICY_TESTS[2],
    matrix::POLICY_TESTS[3],
    matrix::POLICY_TESTS[4],
    matrix::POLICY_TESTS[5],
    matrix::POLICY_TESTS[6],
    matrix::UNMOUNT,
];

#[cfg(test)]
mod tests {
    use super::*;

    fn check_table(tests: &[TestDef]) {
        let names: Vec<&str> = tests.iter().map(|t| t.name).collect();
        for (i, t) in tests.iter().enumerate() {
            assert!(!names[..i].contains(&t.name), "{} twice", t.name);
            for need in t.needs {
                assert!(names[..i].contains(need), "{} needs unknown {need}", t.name);
            }
        }
    }

    #[test]
    fn tables_are_ordered_and_end_with_unmount() {
        for table in [TESTS, REBOOT_TESTS, MATRIX_TESTS, RESTART_TESTS] {
            check_table(table);
            assert_eq!(table[0].name, "driver-load");
            assert_eq!(table.last().map(|t| t.name), Some("unmount"));
        }
        check_table(PRESSURE_TESTS);
        // The lab suite starts with the whole matrix.
        assert_eq!(
            TESTS[..MATRIX_TESTS.len() - 1]
                .iter()
                .map(|t| t.name)
                .collect::<Vec<_>>(),
            MATRIX_TESTS[..MATRIX_TESTS.len() - 1]
                .iter()
                .map(|t| t.name)
                .collect::<Vec<_>>()
        );
    }
}
