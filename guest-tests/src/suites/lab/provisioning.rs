//! `keyring-provisioning`: a master key handed to fscrypt through the
//! kernel keyring instead of the ioctl's argument.
//!
//! `keyctl padd fscrypt-provisioning <desc> @u` reads the payload
//! `struct fscrypt_provisioning_key_payload { __u32 type; __u32
//! __reserved; __u8 raw[]; }` (little-endian on x86) from its standard
//! input, so the key never appears on a command line or in a file; then
//! FS_IOC_ADD_ENCRYPTION_KEY with `key_id` set and `raw_size` 0 takes the
//! key from there (fs/crypto/keyring.c, get_keyring_key(): the payload's
//! type must be the key specifier's, IDENTIFIER for v2). Files written,
//! the filesystem unmounted (which wipes its keyring) and mounted again,
//! the key added again by the same `key_id`, files read back.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::time::Duration;

use zeroize::Zeroizing;

use super::path::{self, case, whole};
use super::plan::{Case, FileSpec, Scheme};
use crate::data;
use crate::fscrypt::{self, FscryptAddKeyArg, FscryptKeySpecifier, KeyIdentifier};
use crate::report::Facts;
use crate::runner::{Ctx, Failure, State, TestDef, fail};
use crate::suites::steps;
use crate::{command, sys};

/// `keyring-provisioning`.
pub const KEYRING_PROVISIONING: TestDef = TestDef {
    name: "keyring-provisioning",
    timeout: Duration::from_secs(180),
    needs: &["mkfs-mount"],
    fatal: false,
    run: keyring_provisioning,
};

const CASE: Case = case("provisioning", Scheme::PerFile);
const FILES: [FileSpec; 2] = [whole("one", 4096 + 1), whole("two", 64 * 1024)];

/// Possessor: all; owner (user): view, read, search.
const KEY_PERM: &str = "0x3f0b0000";

/// The keyring key's description.
const DESCRIPTION: &str = "icelab:provisioning";

/// The user keyring (`@u`): it outlives keyctl. `@s` would not: PID 1 has
/// no session keyring, so keyctl creates an anonymous one for itself, and
/// the key is gone with it when keyctl exits (ENOKEY at the next step).
const KEYRING: &str = "@u";

/// `struct fscrypt_provisioning_key_payload` for a v2 (IDENTIFIER) key.
pub fn payload(key: &[u8]) -> Zeroizing<Vec<u8>> {
    let mut p = Zeroizing::new(Vec::with_capacity(8 + key.len()));
    p.extend_from_slice(&fscrypt::FSCRYPT_KEY_SPEC_TYPE_IDENTIFIER.to_le_bytes());
    p.extend_from_slice(&0u32.to_le_bytes());
    p.extend_from_slice(key);
    p
}

/// `keyctl padd fscrypt-provisioning DESC @u` with the payload on
/// standard input; returns the new key's serial number.
fn keyctl_padd(payload: &[u8]) -> Result<i32, Failure> {
    let exe = command::which("keyctl").ok_or_else(|| {
        Failure("keyctl is not in PATH: the initramfs needs keyutils' /bin/keyctl".to_owned())
    })?;
    let mut child = Command::new(exe)
        .args(["padd", "fscrypt-provisioning", DESCRIPTION, KEYRING])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Failure(format!("cannot run keyctl: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(payload)
            .map_err(|e| Failure(format!("writing the payload to keyctl: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| Failure(format!("waiting for keyctl: {e}")))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return fail(format!(
            "keyctl padd fscrypt-provisioning {DESCRIPTION} {KEYRING}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    stdout.trim().parse().map_err(|_| {
        Failure(format!(
            "keyctl padd printed {:?}, expected the key's serial number",
            stdout.trim()
        ))
    })
}

/// FS_IOC_ADD_ENCRYPTION_KEY with `key_id` (raw_size 0).
fn add_key_by_id(file: &File, what: &str, key_id: i32) -> Result<KeyIdentifier, Failure> {
    let mut arg = FscryptAddKeyArg {
        key_spec: FscryptKeySpecifier {
            spec_type: fscrypt::FSCRYPT_KEY_SPEC_TYPE_IDENTIFIER,
            ..Default::default()
        },
        raw_size: 0,
        key_id: key_id as u32,
        ..Default::default()
    };
    // SAFETY: `arg` is a fscrypt_add_key_arg with no raw bytes after it
    // (raw_size 0).
    let rc = unsafe {
        libc::ioctl(
            file.as_raw_fd(),
            fscrypt::FS_IOC_ADD_ENCRYPTION_KEY,
            &mut arg,
        )
    };
    if rc < 0 {
        let e = io::Error::last_os_error();
        return fail(format!(
            "FS_IOC_ADD_ENCRYPTION_KEY with key_id {key_id} on {what}: {}",
            sys::Errno(e.raw_os_error().unwrap_or(0))
        ));
    }
    let mut id = [0u8; fscrypt::FSCRYPT_KEY_IDENTIFIER_SIZE];
    id.copy_from_slice(&arg.key_spec.u[..fscrypt::FSCRYPT_KEY_IDENTIFIER_SIZE]);
    Ok(KeyIdentifier(id))
}

fn keyring_provisioning(
    ctx: &Ctx,
    state: &mut State,
    facts: &mut Facts,
) -> Result<String, Failure> {
    if !state.mounted {
        return fail("not run: nothing is mounted (mkfs-mount failed)");
    }
    let mnt = ctx.config.mountpoint.clone();
    let shown = mnt.display().to_string();
    let key_seed = data::key_seed(state.seed, CASE.name);
    ctx.step("keyctl padd fscrypt-provisioning");
    let key_id = {
        let key = data::master_key_bytes(key_seed);
        keyctl_padd(&payload(key.as_ref()))?
    };
    facts.set("keyring_key_id", key_id);
    // A new key grants search only to possessors. The runner possesses it
    // through the user session keyring, which links the user keyring;
    // granting the owner view, read and search as well keeps
    // FS_IOC_ADD_ENCRYPTION_KEY's lookup (KEY_NEED_SEARCH) from depending
    // on that.
    command::run(
        "keyctl",
        &["setperm", &key_id.to_string(), KEY_PERM],
        ctx.scaled(Duration::from_secs(10)),
    )?;
    let dir_path = mnt.join(CASE.name);
    std::fs::create_dir(&dir_path)
        .map_err(|e| Failure(format!("cannot create {}: {e}", dir_path.display())))?;
    let dir_file = File::open(&dir_path)
        .map_err(|e| Failure(format!("cannot open {}: {e}", dir_path.display())))?;
    ctx.step("FS_IOC_ADD_ENCRYPTION_KEY by key_id");
    let id = add_key_by_id(&dir_file, &dir_path.display().to_string(), key_id)?;
    facts.set("key_identifier", id.to_hex());
    let policy = CASE.policy(&id);
    fscrypt::set_policy(&dir_file, &dir_path.display().to_string(), &policy)?;
    drop(dir_file);
    let dir = path::PolicyDir {
        path: dir_path.clone(),
        id,
        key_seed,
    };
    let mut manifest = Vec::new();
    path::write_files(ctx, state, &CASE, &dir, &FILES, &mut manifest)?;
    path::set_manifest(ctx, facts, &manifest)?;

    ctx.step(format!("umount {shown}"));
    sys::sync();
    sys::umount(&mnt)?;
    state.mounted = false;
    // The unmount wiped every key of the filesystem's keyring; `unmount`
    // finds the suite's other keys gone, which it accepts.
    steps::mount_ext4(ctx, &ctx.config.disk, &mnt, &ctx.config.mount_data)?;
    state.mounted = true;
    let root = File::open(&mnt).map_err(|e| Failure(format!("cannot open {shown}: {e}")))?;
    let (status, _, _) = fscrypt::key_status(&root, &shown, &id)?;
    facts.set("key_status_after_remount", status);
    if status != fscrypt::FSCRYPT_KEY_STATUS_ABSENT {
        return fail(format!(
            "key {} has status {status} after unmount and mount, expected 1 (absent)",
            id.to_hex()
        ));
    }
    ctx.step("FS_IOC_ADD_ENCRYPTION_KEY by key_id again");
    let again = add_key_by_id(&root, &shown, key_id)?;
    if again != id {
        return fail(format!(
            "the second add by key_id gave identifier {}, the first {}",
            again.to_hex(),
            id.to_hex()
        ));
    }
    state.keys.push(id);
    path::read_files(ctx, state, &CASE, &dir_path, &FILES)?;
    // The keyring key is no longer needed.
    let _ = command::run(
        "keyctl",
        &["revoke", &key_id.to_string()],
        Duration::from_secs(10),
    );
    Ok(format!(
        "key {} added from keyring key {key_id} (fscrypt-provisioning), {} files read back \
         after unmount, mount and a second add by key_id",
        id.to_hex(),
        FILES.len()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_is_type_reserved_key() {
        let p = payload(&[7u8; 64]);
        assert_eq!(p.len(), 72);
        assert_eq!(p[..4], [2, 0, 0, 0]);
        assert_eq!(p[4..8], [0; 4]);
        assert_eq!(p[8..], [7u8; 64]);
    }
}
