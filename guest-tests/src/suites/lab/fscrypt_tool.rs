//! `fscrypt-tool`: Google's `fscrypt` (a real client) on the inlinecrypt
//! mount: `fscrypt setup`, a raw_key protector (a 32-byte wrapping key in
//! /tmp, a tmpfs, never on the image), `fscrypt encrypt`, files written,
//! `fscrypt lock` (names encrypted, files cannot be opened), `fscrypt
//! unlock`, files read back identical. fscrypt derives the master key
//! itself, so its files are not in the manifest; the host checks the
//! device trace between the marks `fscrypt-tool/start..end` for programmed
//! keys (native path), the test the kernel log's native line.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::Duration;

use serde_json::json;
use zeroize::Zeroizing;

use crate::cmdline::Expect;
use crate::command;
use crate::data;
use crate::kmsg;
use crate::marks;
use crate::report::Facts;
use crate::runner::{Ctx, Failure, State, TestDef, fail};
use crate::suites::steps;
use crate::sys::{self, Errno};

/// `fscrypt-tool`.
pub const FSCRYPT_TOOL: TestDef = TestDef {
    name: "fscrypt-tool",
    timeout: Duration::from_secs(400),
    needs: &["mkfs-mount"],
    fatal: false,
    run: fscrypt_tool,
};

/// The raw_key protector's wrapping key (tmpfs).
const KEY_FILE: &str = "/tmp/icelab-fscrypt-raw.key";
/// The directory under the mount point.
const DIR: &str = "fscrypt-tool";
/// Files and sizes.
const FILES: [(&str, usize); 2] = [("notes", 10_000), ("blob", 300_000)];
/// One fscrypt command's deadline (before `icelab.timeout_factor`).
const STEP: Duration = Duration::from_secs(120);

fn run(ctx: &Ctx, facts: &mut Facts, args: &[&str]) -> Result<String, Failure> {
    let line = format!("fscrypt {}", args.join(" "));
    ctx.step(line.clone());
    let out = command::run("fscrypt", args, ctx.scaled(STEP))?;
    let mut log = match facts.get("commands") {
        Some(serde_json::Value::Array(a)) => a.clone(),
        _ => Vec::new(),
    };
    log.push(json!({"command": line, "stdout": out.stdout.trim()}));
    facts.set("commands", log);
    Ok(out.stdout)
}

fn contents(state: &State, name: &str, size: usize) -> Vec<u8> {
    data::bytes_at(
        data::content_seed(state.seed, &format!("{DIR}/{name}")),
        0,
        size,
    )
}

fn read_all(dir: &Path, state: &State) -> Result<(), Failure> {
    for (name, size) in FILES {
        let path = dir.join(name);
        let mut back = Vec::new();
        File::open(&path)
            .and_then(|mut f| f.read_to_end(&mut back))
            .map_err(|e| Failure(format!("reading {}: {e}", path.display())))?;
        if let Some(at) = data::first_difference(&back, &contents(state, name, size)) {
            return fail(format!(
                "{}: read {} bytes, differs from what was written at byte {at}",
                path.display(),
                back.len()
            ));
        }
    }
    Ok(())
}

fn fscrypt_tool(ctx: &Ctx, state: &mut State, facts: &mut Facts) -> Result<String, Failure> {
    if !state.mounted {
        return fail("not run: nothing is mounted (mkfs-mount failed)");
    }
    if command::which("fscrypt").is_none() {
        return fail("fscrypt is not in PATH: the initramfs needs /bin/fscrypt");
    }
    let mnt = ctx.config.mountpoint.clone();
    let mnt_s = mnt.display().to_string();
    let dir = mnt.join(DIR);
    let dir_s = dir.display().to_string();
    steps::sync_and_drop_caches()?;
    marks::mark(ctx, facts, marks::FSCRYPT_TOOL_START)?;

    let version = run(ctx, facts, &["--version"])?;
    facts.set("version", version.trim());
    run(ctx, facts, &["setup", "--quiet", "--force"])?;
    run(ctx, facts, &["setup", &mnt_s, "--quiet"])?;

    ctx.step(format!("writing {KEY_FILE}"));
    {
        let mut key = Zeroizing::new([0u8; 32]);
        sys::getrandom(key.as_mut())?;
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(KEY_FILE)
            .map_err(|e| Failure(format!("cannot create {KEY_FILE}: {e}")))?;
        f.write_all(key.as_ref())
            .map_err(|e| Failure(format!("writing {KEY_FILE}: {e}")))?;
    }
    let key_arg = format!("--key={KEY_FILE}");
    let result = (|| {
        fs::create_dir(&dir).map_err(|e| Failure(format!("cannot create {dir_s}: {e}")))?;
        run(
            ctx,
            facts,
            &[
                "encrypt",
                &dir_s,
                "--source=raw_key",
                "--name=icelab-raw",
                &key_arg,
                "--quiet",
            ],
        )?;
        for (name, size) in FILES {
            let path = dir.join(name);
            ctx.step(format!("writing {}", path.display()));
            let mut f = File::create(&path)
                .map_err(|e| Failure(format!("cannot create {}: {e}", path.display())))?;
            f.write_all(&contents(state, name, size))
                .and_then(|()| f.sync_all())
                .map_err(|e| Failure(format!("writing {}: {e}", path.display())))?;
        }
        steps::sync_and_drop_caches()?;
        read_all(&dir, state)?;
        let status = run(ctx, facts, &["status", &dir_s])?;
        facts.set("status", status.trim());

        run(ctx, facts, &["lock", &dir_s, "--quiet"])?;
        let listed: Vec<String> = fs::read_dir(&dir)
            .map_err(|e| Failure(format!("cannot list locked {dir_s}: {e}")))?
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        facts.set("locked_names", listed.clone());
        if listed.len() != FILES.len() || FILES.iter().any(|(n, _)| listed.iter().any(|l| l == n)) {
            return fail(format!(
                "locked {dir_s} lists {listed:?}: expected {} encrypted names, none plaintext",
                FILES.len()
            ));
        }
        let opened = File::open(dir.join(&listed[0]));
        let errno = opened.as_ref().err().and_then(|e| e.raw_os_error());
        facts.set("locked_open_errno", errno.map(|e| Errno(e).name()));
        if errno != Some(libc::ENOKEY) {
            return fail(format!(
                "opening {dir_s}/{} while locked: {:?}, expected ENOKEY",
                listed[0],
                opened.map(|_| "opened").map_err(|e| e.to_string())
            ));
        }

        run(ctx, facts, &["unlock", &dir_s, &key_arg, "--quiet"])?;
        read_all(&dir, state)
    })();
    // The wrapping key leaves the box either way.
    let _ = fs::write(KEY_FILE, [0u8; 32]);
    let _ = fs::remove_file(KEY_FILE);
    result?;
    marks::mark(ctx, facts, marks::FSCRYPT_TOOL_END)?;

    let records = kmsg::read_all(Path::new("/dev/kmsg"))
        .map_err(|e| Failure(format!("cannot read /dev/kmsg: {e}")))?;
    let found = steps::find_impl_lines(&records, steps::AES_256_XTS, Expect::Native);
    if found.expected.is_none() {
        return fail("no \"fscrypt: AES-256-XTS using blk-crypto (native)\" in the kernel log");
    }
    Ok(format!(
        "fscrypt {}: raw_key protector, encrypt, lock (ENOKEY, encrypted names), unlock: {} \
         files read back identical",
        facts.get("version").and_then(|v| v.as_str()).unwrap_or("?"),
        FILES.len()
    ))
}
