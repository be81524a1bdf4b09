//! The second boot (`lab-reboot`): the image the matrix wrote, mounted
//! without mkfs; every matrix key added again (derived from the same
//! `icelab.seed`), every file read back and compared. Reads only: the
//! host verifies the same image before and after.
//!
//! | test | checks |
//! |---|---|
//! | `driver-load`, `crypto-sysfs` | as in the smoke suite |
//! | `mount-existing` | the filesystem is there (ext4 magic, `encrypt` and `stable_inodes`), mounted with `inlinecrypt` |
//! | `reread/<case>` | before the key: the plaintext names do not resolve; the derived key's identifier is the one in the directory's policy; every file has the policy, its size, and its contents |
//! | `unmount` | every key removed, unmounted |

use std::fs::{self, File};
use std::io;
use std::time::Duration;

use super::files;
use super::matrix::{self, add_seeded_key, check_policy};
use super::plan::{self, Case};
use crate::data;
use crate::report::Facts;
use crate::runner::{Ctx, Failure, State, TestDef, TestFn, fail};
use crate::suites::steps;
use icelab_contract::record::FACT_MANIFEST;

/// `mount-existing`: mounts what the first boot left, no mkfs.
pub const MOUNT_EXISTING: TestDef = TestDef {
    name: "mount-existing",
    timeout: Duration::from_secs(60),
    needs: &[],
    fatal: false,
    run: mount_existing,
};

const fn reread_def(name: &'static str, run: TestFn) -> TestDef {
    TestDef {
        name,
        timeout: Duration::from_secs(180),
        needs: &["mount-existing"],
        fatal: false,
        run,
    }
}

/// How many [`plan::CASES`] the kernel accepts (`!rejected`): the ones
/// the first boot wrote files for.
pub const ACCEPTED_CASES: usize = {
    let mut n = 0;
    let mut i = 0;
    while i < plan::CASES.len() {
        if !plan::CASES[i].rejected {
            n += 1;
        }
        i += 1;
    }
    n
};

/// One test per positive [`plan::CASES`] entry (the rejected ones
/// wrote nothing), in order. The length is the plan's count: an accepted
/// case added there without its test here does not compile. The
/// `lab-reboot` table includes the whole array.
pub const REREAD_TESTS: [TestDef; ACCEPTED_CASES] = [
    reread_def("reread/policy/default-dus4096", reread::<0>),
    reread_def("reread/policy/default-dus1024", reread::<1>),
    reread_def("reread/policy/default-dus512", reread::<2>),
    reread_def("reread/policy/lblk64-dus4096", reread::<3>),
    reread_def("reread/policy/lblk32-dus4096", reread::<4>),
];

fn mount_existing(ctx: &Ctx, state: &mut State, facts: &mut Facts) -> Result<String, Failure> {
    matrix::mount_checked(ctx, state, facts)
}

fn reread<const I: usize>(
    ctx: &Ctx,
    state: &mut State,
    facts: &mut Facts,
) -> Result<String, Failure> {
    reread_case(ctx, state, facts, &plan::CASES[I])
}

fn reread_case(
    ctx: &Ctx,
    state: &mut State,
    facts: &mut Facts,
    case: &Case,
) -> Result<String, Failure> {
    if !state.mounted {
        return fail("not run: nothing is mounted (mount-existing failed)");
    }
    let dir = ctx.config.mountpoint.join(case.name);
    let shown = dir.display().to_string();
    let dir_file = File::open(&dir).map_err(|e| {
        Failure(format!(
            "cannot open {shown}: {e} (did the first boot's matrix run on this image?)"
        ))
    })?;
    let specs = case.files();
    // Without the key, names are ciphertext: the plaintext name of a
    // file the first boot created must not resolve.
    if let Some(spec) = specs.first() {
        match fs::symlink_metadata(dir.join(spec.leaf)) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Ok(_) => {
                return fail(format!(
                    "{shown}/{} resolves before the key was added: names are not encrypted",
                    spec.leaf
                ));
            }
            Err(e) => return fail(format!("looking up {shown}/{}: {e}", spec.leaf)),
        }
    }
    ctx.step("FS_IOC_ADD_ENCRYPTION_KEY");
    let (id, key_seed) = add_seeded_key(state, &dir_file, &shown, case.name, facts)?;
    let policy = case.policy(&id);
    // The identifier in the on-disk policy is the one the first boot's
    // key had: the same seed gave the same key.
    check_policy(&dir_file, &shown, &policy)?;
    let path = matrix::expected_path(ctx, case, facts);

    let uuid = steps::read_ext4_uuid(&ctx.config.disk)?;
    let dus = case.data_unit_size();
    let mut entries = Vec::new();
    for spec in &specs {
        let file_path = dir.join(spec.leaf);
        let file_shown = file_path.display().to_string();
        ctx.step(format!("reading {file_shown}"));
        let file = File::open(&file_path)
            .map_err(|e| Failure(format!("cannot open {file_shown}: {e}")))?;
        check_policy(&file, &file_shown, &policy)?;
        let meta = file
            .metadata()
            .map_err(|e| Failure(format!("fstat {file_shown}: {e}")))?;
        if meta.len() != spec.size {
            return fail(format!(
                "{file_shown} is {} bytes, expected {}",
                meta.len(),
                spec.size
            ));
        }
        let seed = data::content_seed(state.seed, &case.file_name(spec));
        files::read_back(&file_path, spec, seed, dus)?;
        entries.push(files::manifest_entry(case, spec, key_seed, seed, &meta));
    }
    facts.set(FACT_MANIFEST, files::manifest_fact(&uuid, &entries));
    let units = case.data_units();
    facts.set("data_units", units);
    Ok(format!(
        "{} files, {units} data units of {dus} B identical after reboot ({path})",
        specs.len()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reread_tests_cover_every_case_that_wrote_files() {
        let positive: Vec<&Case> = plan::CASES.iter().filter(|c| !c.rejected).collect();
        assert_eq!(REREAD_TESTS.len(), positive.len());
        for (t, c) in REREAD_TESTS.iter().zip(positive) {
            assert_eq!(t.name, format!("reread/{}", c.name));
        }
        // reread::<I> reads plan::CASES[I]: the positive cases come first.
        assert!(
            plan::CASES[..REREAD_TESTS.len()]
                .iter()
                .all(|c| !c.rejected)
        );
    }
}
