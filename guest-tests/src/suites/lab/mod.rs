//! The lab suite (issue 4): every way blk-crypto uses the engine, each
//! test leaving the facts the host's verifier needs.
//!
//! Tables:
//! - [`TESTS`] (`icelab.suite=lab`): the first boot;
//! - [`REBOOT_TESTS`] (`lab-reboot`): the second boot on the same image;
//! - [`PRESSURE_TESTS`] (`lab-pressure`): a device with 2 keyslots;
//! - [`RESTART_TESTS`] (`lab-restart`): writes while the host kills and
//!   restarts the device;
//! - [`DEFAULT_KEY_TESTS`] (`lab-default-key`): the matrix, path
//!   selection and unencrypted files on a device with a default key;
//! - [`KEY_LIMIT_TESTS`] (`lab-key-limit`): a key past the device's
//!   usage limit (refuse);
//! - [`WRAPPED_TESTS`] (`lab-wrapped`), [`WRAPPED_REBOOT_TESTS`]
//!   (`lab-wrapped-reboot`), [`WRAPPED_FOREIGN_TESTS`]
//!   (`lab-wrapped-foreign`): hardware-wrapped keys, then the same image
//!   on the same device secret and on another ([`wrapped`]);
//! - [`MATRIX_TESTS`] (`matrix`): the policy matrix alone.
//!
//! Modules: [`plan`] (the matrix as data), [`files`] (writing and reading
//! its files, manifest entries), [`matrix`] (the matrix tests and the
//! suite's `unmount`), [`reboot`] (the second boot).

pub mod files;
pub mod fscrypt_tool;
pub mod key_limit;
pub mod keys;
pub mod matrix;
pub mod memory_scan;
pub mod path;
pub mod plain;
pub mod plan;
pub mod pressure;
pub mod provisioning;
pub mod reboot;
pub mod restart;
pub mod wrapped;

use crate::runner::TestDef;

/// How many tests `parts` hold together.
const fn total_len(parts: &[&[TestDef]]) -> usize {
    let mut n = 0;
    let mut i = 0;
    while i < parts.len() {
        n += parts[i].len();
        i += 1;
    }
    n
}

/// `parts` one after the other, every element of each (`N` is
/// [`total_len`]`(parts)`; anything else fails the build).
const fn concat<const N: usize>(parts: &[&[TestDef]]) -> [TestDef; N] {
    // A placeholder in every slot; the loop overwrites all of them (the
    // assert checks that it did).
    let mut out = [matrix::UNMOUNT; N];
    let mut n = 0;
    let mut i = 0;
    while i < parts.len() {
        let mut j = 0;
        while j < parts[i].len() {
            out[n] = parts[i][j];
            n += 1;
            j += 1;
        }
        i += 1;
    }
    assert!(n == N, "concat: N is not the parts' total length");
    out
}

/// A `&'static [TestDef]` of slices and whole arrays, concatenated at
/// compile time, so that a table takes every element of an array such as
/// [`matrix::POLICY_TESTS`] (no list of indices to keep up to date).
macro_rules! table {
    ($($part:expr),+ $(,)?) => {{
        const PARTS: &[&[TestDef]] = &[$($part),+];
        const ALL: [TestDef; total_len(PARTS)] = concat(PARTS);
        &ALL
    }};
}

/// What the matrix runs on before its policy tests.
const MATRIX_SETUP: &[TestDef] = &[
    matrix::DRIVER_LOAD,
    matrix::CRYPTO_SYSFS,
    matrix::MKFS_MOUNT,
];

/// `icelab.suite=lab`: the matrix, then the key tests, then `unmount`
/// (last: it removes every key the suite added).
pub const TESTS: &[TestDef] = table![
    MATRIX_SETUP,
    &matrix::POLICY_TESTS,
    &[
        memory_scan::GUEST_MEMORY_SCAN_RAW,
        path::PATH_SELECTION,
        plain::PLAIN_FILES,
        keys::KEY_REMOVAL,
        provisioning::KEYRING_PROVISIONING,
        fscrypt_tool::FSCRYPT_TOOL,
        matrix::UNMOUNT,
    ],
];

/// `icelab.suite=lab-reboot`: reads what `lab` wrote, after a reboot.
pub const REBOOT_TESTS: &[TestDef] = table![
    &[
        matrix::DRIVER_LOAD,
        matrix::CRYPTO_SYSFS,
        reboot::MOUNT_EXISTING,
    ],
    &reboot::REREAD_TESTS,
    &[matrix::UNMOUNT],
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

/// `icelab.suite=lab-default-key`: on a device with a default key, what
/// the host's verifier and key usage check read: the matrix, the policy
/// windows of path selection, unencrypted files.
pub const DEFAULT_KEY_TESTS: &[TestDef] = table![
    MATRIX_SETUP,
    &matrix::POLICY_TESTS,
    &[path::PATH_SELECTION, plain::PLAIN_FILES, matrix::UNMOUNT],
];

/// `icelab.suite=lab-key-limit`: a key past the device's usage limit
/// (refuse action).
pub const KEY_LIMIT_TESTS: &[TestDef] = &[
    matrix::DRIVER_LOAD,
    matrix::CRYPTO_SYSFS,
    matrix::MKFS_MOUNT,
    key_limit::KEY_LIMIT_REFUSE,
    matrix::UNMOUNT,
];

/// `icelab.suite=lab-wrapped`: hardware-wrapped keys on a fresh image.
pub const WRAPPED_TESTS: &[TestDef] = table![
    &[
        matrix::DRIVER_LOAD,
        matrix::CRYPTO_SYSFS,
        wrapped::WRAPPED_SYSFS,
        wrapped::WRAPPED_IOCTLS,
        matrix::MKFS_MOUNT,
    ],
    &wrapped::WRAPPED_FSCRYPT,
    &[
        memory_scan::GUEST_MEMORY_SCAN,
        wrapped::WRAPPED_NEEDS_LBLK,
        wrapped::WRAPPED_REMOVAL,
        matrix::UNMOUNT,
        wrapped::KERNEL_CLEAN,
    ],
];

/// `icelab.suite=lab-wrapped-reboot`: the same image and device secret.
pub const WRAPPED_REBOOT_TESTS: &[TestDef] = table![
    &[
        matrix::DRIVER_LOAD,
        matrix::CRYPTO_SYSFS,
        reboot::MOUNT_EXISTING,
        wrapped::WRAPPED_STALE,
    ],
    &wrapped::WRAPPED_REREAD,
    &[matrix::UNMOUNT, wrapped::KERNEL_CLEAN],
];

/// `icelab.suite=lab-wrapped-foreign`: the same image, another device
/// secret.
pub const WRAPPED_FOREIGN_TESTS: &[TestDef] = table![
    &[
        matrix::DRIVER_LOAD,
        matrix::CRYPTO_SYSFS,
        reboot::MOUNT_EXISTING,
        wrapped::WRAPPED_FOREIGN,
    ],
    &wrapped::WRAPPED_REIMPORT,
    &[matrix::UNMOUNT, wrapped::KERNEL_CLEAN],
];

/// `icelab.suite=matrix`: the policy matrix alone (the fault runs).
pub const MATRIX_TESTS: &[TestDef] =
    table![MATRIX_SETUP, &matrix::POLICY_TESTS, &[matrix::UNMOUNT]];

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

    fn names(tests: &[TestDef]) -> Vec<&'static str> {
        tests.iter().map(|t| t.name).collect()
    }

    /// Every test of `part` is in `table`, all of them in a row and in
    /// order.
    fn assert_includes(table: &[TestDef], table_name: &str, part: &[TestDef]) {
        let have = names(table);
        for t in part {
            assert!(have.contains(&t.name), "{} is not in {table_name}", t.name);
        }
        let want = names(part);
        assert!(
            have.windows(want.len()).any(|w| w == want.as_slice()),
            "{table_name} does not run {want:?} in a row, in that order"
        );
    }

    #[test]
    fn tables_include_every_policy_and_reread_test() {
        assert_includes(TESTS, "TESTS", &matrix::POLICY_TESTS);
        assert_includes(MATRIX_TESTS, "MATRIX_TESTS", &matrix::POLICY_TESTS);
        assert_includes(REBOOT_TESTS, "REBOOT_TESTS", &reboot::REREAD_TESTS);
        // One policy test per case of the plan, accepted or rejected; one
        // reread per accepted case (the rejected ones wrote nothing).
        let accepted = plan::CASES.iter().filter(|c| !c.rejected).count();
        let rejected = plan::CASES.iter().filter(|c| c.rejected).count();
        assert!(accepted > 0 && rejected > 0);
        assert_eq!(matrix::POLICY_TESTS.len(), accepted + rejected);
        assert_eq!(reboot::REREAD_TESTS.len(), accepted);
        assert_eq!(reboot::ACCEPTED_CASES, accepted);
        // The tables hold nothing else that looks like one of them.
        let policy = |t: &&TestDef| t.name.starts_with("policy/");
        assert_eq!(TESTS.iter().filter(policy).count(), accepted + rejected);
        assert_eq!(
            MATRIX_TESTS.iter().filter(policy).count(),
            accepted + rejected
        );
        let reread = |t: &&TestDef| t.name.starts_with("reread/");
        assert_eq!(REBOOT_TESTS.iter().filter(reread).count(), accepted);
    }

    #[test]
    fn tables_are_ordered_and_end_with_unmount() {
        for table in [
            TESTS,
            REBOOT_TESTS,
            MATRIX_TESTS,
            RESTART_TESTS,
            DEFAULT_KEY_TESTS,
            KEY_LIMIT_TESTS,
        ] {
            check_table(table);
            assert_eq!(table[0].name, "driver-load");
            assert_eq!(table.last().map(|t| t.name), Some("unmount"));
        }
        check_table(PRESSURE_TESTS);
        // The wrapped-key tables end with unmount, then kernel-clean.
        for table in [WRAPPED_TESTS, WRAPPED_REBOOT_TESTS, WRAPPED_FOREIGN_TESTS] {
            check_table(table);
            assert_eq!(table[0].name, "driver-load");
            let names = names(table);
            assert_eq!(names[names.len() - 2..], ["unmount", "kernel-clean"]);
        }
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
