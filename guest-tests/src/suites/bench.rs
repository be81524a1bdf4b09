//! The guest benchmark (issue 5, part 4): fio on an inlinecrypt ext4
//! filesystem, in an unencrypted directory and in an fscrypt v2
//! (AES-256-XTS) directory, side by side in the same boot.
//!
//! The host boots this suite twice: against a device with inline
//! encryption (`icelab.expect=native`: fscrypt's I/O is encrypted by the
//! emulated engine) and against one without (`icelab.expect=fallback`: the
//! guest kernel encrypts in software with blk-crypto-fallback). The
//! unencrypted directory is the baseline of each boot. Under TCG the
//! figures are software emulation, not hardware: only the ratios mean
//! something, and the host says so.
//!
//! | test | does |
//! |---|---|
//! | `driver-load` | loads the driver, waits for the disk |
//! | `mkfs-mount` | mkfs.ext4 -O encrypt, mount -o inlinecrypt |
//! | `fscrypt-setup` | `plain/` without a policy; `enc/` with a random v2 key and an AES-256-XTS policy |
//! | `fio-seqwrite-128k`, `fio-seqread-128k`, `fio-randread-4k` | each load on `plain/` then on `enc/` (O_DIRECT, libaio); facts: MB/s, IOPS, latency percentiles |
//! | `blk-crypto-path` | the kernel log names the blk-crypto implementation the host expects, so no ratio is ever attributed to the wrong path |
//! | `unmount` | removes the key, unmounts |

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::time::Duration;

use icelab_contract::bench::{FACT_FIO_ENCRYPTED, FACT_FIO_PLAIN, FioFigures, Percentiles};
use serde_json::Value;

use super::steps::{self, AES_256_XTS};
use crate::command;
use crate::fscrypt::{self, MasterKey};
use crate::kmsg;
use crate::report::Facts;
use crate::runner::{Ctx, Failure, State, TestDef, fail};

/// `icelab.suite=bench`.
pub const TESTS: &[TestDef] = &[
    TestDef {
        name: "driver-load",
        timeout: Duration::from_secs(90),
        needs: &[],
        fatal: true,
        run: driver_load,
    },
    TestDef {
        name: "mkfs-mount",
        timeout: Duration::from_secs(120),
        needs: &[],
        fatal: true,
        run: mkfs_mount,
    },
    TestDef {
        name: "fscrypt-setup",
        timeout: Duration::from_secs(30),
        needs: &[],
        fatal: true,
        run: fscrypt_setup,
    },
    TestDef {
        name: "fio-seqwrite-128k",
        timeout: FIO_TIMEOUT,
        needs: &[],
        fatal: false,
        run: |ctx, _, facts| run_load(ctx, &LOADS[0], facts),
    },
    TestDef {
        name: "fio-seqread-128k",
        timeout: FIO_TIMEOUT,
        needs: &[],
        fatal: false,
        run: |ctx, _, facts| run_load(ctx, &LOADS[1], facts),
    },
    TestDef {
        name: "fio-randread-4k",
        timeout: FIO_TIMEOUT,
        needs: &[],
        fatal: false,
        run: |ctx, _, facts| run_load(ctx, &LOADS[2], facts),
    },
    TestDef {
        name: "blk-crypto-path",
        timeout: Duration::from_secs(10),
        needs: &[],
        fatal: false,
        run: blk_crypto_path,
    },
    TestDef {
        name: "unmount",
        timeout: Duration::from_secs(60),
        needs: &[],
        fatal: false,
        run: unmount,
    },
];

/// Deadline of one fio test (two runs of at most `icelab.fio_seconds`
/// each, 3600 s at most, plus fio's start and the file's layout); a host
/// that asks for long runs raises `icelab.timeout_factor`.
const FIO_TIMEOUT: Duration = Duration::from_secs(600);

/// One fio load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Load {
    /// Its name in the results (`seqwrite-128k`).
    pub name: &'static str,
    /// fio's `rw=`.
    pub rw: &'static str,
    /// Block size in bytes.
    pub block_size: u64,
}

/// The loads, in the order they run: the write lays the file out for the
/// reads (a read run alone has fio lay it out first). The same loads as
/// `icelab bench all` runs against the device.
pub const LOADS: [Load; 3] = [
    Load {
        name: "seqwrite-128k",
        rw: "write",
        block_size: 128 << 10,
    },
    Load {
        name: "seqread-128k",
        rw: "read",
        block_size: 128 << 10,
    },
    Load {
        name: "randread-4k",
        rw: "randread",
        block_size: 4 << 10,
    },
];

/// Seconds each fio run spends before it starts measuring.
const RAMP_SECONDS: u32 = 1;

/// Requests in flight (libaio).
const IODEPTH: u32 = 16;

/// The two directories every load runs in: (facts key, directory name).
/// `plain` has no policy (the baseline), `enc` the fscrypt v2 policy.
pub const DIRS: [(&str, &str); 2] = [(FACT_FIO_PLAIN, "plain"), (FACT_FIO_ENCRYPTED, "enc")];

/// The fio file in a directory.
const FIO_FILE: &str = "fio.dat";

/// `driver-load`: the driver module, then the disk.
fn driver_load(ctx: &Ctx, _state: &mut State, facts: &mut Facts) -> Result<String, Failure> {
    let loaded = steps::load_driver(ctx, facts)?;
    let disk = &ctx.config.disk;
    ctx.step(format!("waiting for {}", disk.display()));
    let waited = steps::wait_for_block_device(disk, ctx.scaled(Duration::from_secs(20)))?;
    facts.set(
        "disk_wait_ms",
        u64::try_from(waited.as_millis()).unwrap_or(u64::MAX),
    );
    facts.set("disk_size_bytes", steps::disk_size(&ctx.config.disk_name()));
    Ok(format!("{loaded}; {} present", disk.display()))
}

/// `mkfs-mount`: ext4 with the encrypt feature, mounted with
/// `icelab.mount_data` (default `inlinecrypt`), checked in /proc/mounts.
fn mkfs_mount(ctx: &Ctx, state: &mut State, facts: &mut Facts) -> Result<String, Failure> {
    let config = &ctx.config;
    steps::mkfs_ext4(ctx, &config.disk, facts)?;
    let options = steps::mount_configured(ctx, state, facts)?;
    if !steps::has_option(&options, "inlinecrypt") {
        return fail(format!(
            "mounted with {options:?}, without inlinecrypt: fscrypt would encrypt in the \
             filesystem layer and the bench would not measure blk-crypto"
        ));
    }
    Ok(format!("mounted with {options}"))
}

/// `fscrypt-setup`: the two directories; a random v2 master key (never
/// reported: only its identifier) and the smoke suite's AES-256-XTS policy
/// on `enc/`.
fn fscrypt_setup(ctx: &Ctx, state: &mut State, facts: &mut Facts) -> Result<String, Failure> {
    let mnt = &ctx.config.mountpoint;
    for (_, name) in DIRS {
        let dir = mnt.join(name);
        fs::create_dir(&dir)
            .map_err(|e| Failure(format!("cannot create {}: {e}", dir.display())))?;
    }
    let enc = mnt.join(DIRS[1].1);
    let shown = enc.display().to_string();
    let dir = File::open(&enc).map_err(|e| Failure(format!("cannot open {shown}: {e}")))?;
    ctx.step("FS_IOC_ADD_ENCRYPTION_KEY");
    let key = MasterKey::random()?;
    let id = fscrypt::add_key(&dir, &shown, &key)?;
    drop(key);
    state.key = Some(id);
    ctx.step("FS_IOC_SET_ENCRYPTION_POLICY");
    let policy = super::smoke::smoke_policy(&id);
    fscrypt::set_policy(&dir, &shown, &policy)?;
    facts.set("policy", super::smoke::policy_facts(&policy));
    Ok(format!(
        "{shown}: v2 policy {AES_256_XTS}, key {}",
        id.to_hex()
    ))
}

/// The fio arguments of `load` on `file`.
pub fn fio_args(load: &Load, file: &Path, size: u64, seconds: u32) -> Vec<String> {
    vec![
        format!("--name={}", load.name),
        format!("--filename={}", file.display()),
        format!("--size={size}"),
        format!("--rw={}", load.rw),
        format!("--bs={}", load.block_size),
        "--ioengine=libaio".to_owned(),
        format!("--iodepth={IODEPTH}"),
        // The page cache would hide the device (and the encryption) from
        // the reads; fscrypt with inlinecrypt supports O_DIRECT.
        "--direct=1".to_owned(),
        "--time_based".to_owned(),
        // One second unmeasured first: under TCG the first pass through
        // new code is translated, and would make whichever directory
        // runs first look slow.
        format!("--ramp_time={RAMP_SECONDS}"),
        format!("--runtime={seconds}"),
        // Threads, not processes: the initramfs has no /dev/shm.
        "--thread".to_owned(),
        "--output-format=json".to_owned(),
        "--percentile_list=50:99:99.9".to_owned(),
    ]
}

/// Parses fio's `--output-format=json` of a one-job run; `direction` is
/// `read` or `write`. fio may print notes before the JSON: they are
/// skipped.
pub fn parse_fio(output: &str, direction: &str) -> Result<FioFigures, String> {
    let start = output
        .find('{')
        .ok_or_else(|| format!("no JSON in fio's output: {:?}", head(output)))?;
    let doc: Value = serde_json::from_str(&output[start..])
        .map_err(|e| format!("fio's JSON does not parse ({e}): {:?}", head(output)))?;
    let job = doc["jobs"]
        .get(0)
        .ok_or("fio's JSON has no jobs[0]".to_owned())?;
    if let Some(error) = job["error"].as_i64().filter(|&e| e != 0) {
        return Err(format!("fio's job reports error {error}"));
    }
    let side = &job[direction];
    let number = |v: &Value, what: &str| {
        v.as_f64()
            .ok_or_else(|| format!("fio's JSON has no number at jobs[0].{direction}.{what}"))
    };
    let bw_bytes = number(&side["bw_bytes"], "bw_bytes")?;
    let io_bytes = number(&side["io_bytes"], "io_bytes")?;
    if io_bytes <= 0.0 {
        return Err(format!(
            "fio moved no bytes in the {direction} direction (wrong rw= for it?)"
        ));
    }
    let percentiles = &side["clat_ns"]["percentile"];
    let percentile = |key: &str| {
        number(&percentiles[key], &format!("clat_ns.percentile.{key}")).map(|ns| ns / 1000.0)
    };
    Ok(FioFigures {
        mb_per_s: bw_bytes / 1e6,
        iops: number(&side["iops"], "iops")?,
        clat_us: Percentiles {
            p50: percentile("50.000000")?,
            p99: percentile("99.000000")?,
            p99_9: percentile("99.900000")?,
        },
        io_bytes: io_bytes as u64,
        runtime_ms: number(&side["runtime"], "runtime")? as u64,
    })
}

fn head(text: &str) -> String {
    text.chars().take(200).collect()
}

/// fio's direction of `rw=`.
fn direction(load: &Load) -> &'static str {
    if load.rw.contains("write") {
        "write"
    } else {
        "read"
    }
}

/// Runs `load` in `plain/` and then in `enc/` (caches dropped before
/// each), and reports both as facts keyed by [`DIRS`].
fn run_load(ctx: &Ctx, load: &Load, facts: &mut Facts) -> Result<String, Failure> {
    let config = &ctx.config;
    if let Some(unknown) = config
        .fio_loads
        .iter()
        .find(|l| !LOADS.iter().any(|k| k.name == l.as_str()))
    {
        return fail(format!(
            "icelab.fio_loads names {unknown:?}; the loads are {}",
            LOADS.map(|l| l.name).join(", ")
        ));
    }
    let selected = config.fio_loads.is_empty() || config.fio_loads.iter().any(|l| l == load.name);
    facts.set("selected", selected);
    if !selected {
        return Ok(format!(
            "not run: not in icelab.fio_loads={}",
            config.fio_loads.join(",")
        ));
    }
    facts
        .set("load", load.name)
        .set("rw", load.rw)
        .set("block_size", load.block_size)
        .set("iodepth", IODEPTH)
        .set("direct", true)
        .set("size", config.fio_size)
        .set("seconds", config.fio_seconds);
    let mut summary = Vec::new();
    for (key, name) in DIRS {
        let file: PathBuf = config.mountpoint.join(name).join(FIO_FILE);
        let args = fio_args(load, &file, config.fio_size, config.fio_seconds);
        if key == DIRS[0].0 {
            facts.set("fio_command", format!("fio {}", args.join(" ")));
        }
        ctx.step(format!(
            "sync and drop_caches before {} in {name}/",
            load.name
        ));
        steps::sync_and_drop_caches()?;
        ctx.step(format!("fio {} in {name}/", load.name));
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        // fio's own runtime plus a generous margin for its start (many
        // shared libraries under TCG) and the file's first layout.
        let deadline = ctx.scaled(Duration::from_secs(
            u64::from(config.fio_seconds + RAMP_SECONDS) * 2 + 120,
        ));
        let output = command::run("fio", &argv, deadline)?;
        let result = parse_fio(&output.stdout, direction(load))
            .map_err(|e| Failure(format!("{} in {name}/: {e}", load.name)))?;
        summary.push(format!(
            "{key} {:.1} MB/s {:.0} IOPS",
            result.mb_per_s, result.iops
        ));
        let figures = serde_json::to_value(&result).map_err(|e| {
            Failure(format!(
                "{} in {name}/: cannot encode the figures: {e}",
                load.name
            ))
        })?;
        facts.set(key, figures);
    }
    Ok(summary.join(", "))
}

/// `blk-crypto-path`: the kernel log line of fscrypt's choice for
/// AES-256-XTS must be the one `icelab.expect` names, and the other must
/// be absent: the host attributes the encrypted figures by it.
fn blk_crypto_path(ctx: &Ctx, _state: &mut State, facts: &mut Facts) -> Result<String, Failure> {
    let expect = ctx.config.expect;
    let want = steps::impl_message(AES_256_XTS, expect);
    facts.set("expected_line", want.clone());
    facts.set("expect", expect.name());
    let records = kmsg::read_all(Path::new("/dev/kmsg"))
        .map_err(|e| Failure(format!("cannot read /dev/kmsg: {e}")))?;
    let found = steps::find_impl_lines(&records, AES_256_XTS, expect);
    match (found.expected, found.other) {
        (Some(line), None) => {
            facts.set("matched_line", line.text.clone());
            Ok(format!("kernel log: {:?}", line.text))
        }
        (_, Some(other)) => {
            facts.set("unexpected_line", other.text.clone());
            fail(format!(
                "fscrypt used {:?}, not {want:?} (icelab.expect={}): the encrypted figures are \
                 not the path the host asked for",
                other.text,
                expect.name()
            ))
        }
        (None, None) => fail(format!(
            "no {want:?} in the kernel log ({} records): the encrypted directory's I/O did not \
             go through blk-crypto",
            records.len()
        )),
    }
}

/// `unmount`: removes the key and unmounts.
fn unmount(ctx: &Ctx, state: &mut State, facts: &mut Facts) -> Result<String, Failure> {
    let mnt = &ctx.config.mountpoint;
    let shown = mnt.display().to_string();
    if !state.mounted {
        return fail(format!("nothing is mounted at {shown} (mkfs-mount failed)"));
    }
    if let Some(id) = state.key.take() {
        ctx.step("FS_IOC_REMOVE_ENCRYPTION_KEY");
        let root = File::open(mnt).map_err(|e| Failure(format!("cannot open {shown}: {e}")))?;
        let status = fscrypt::remove_key(&root, &shown, &id)?;
        facts.set("removal_status_flags", status);
    }
    ctx.step(format!("umount {shown}"));
    crate::sys::umount(mnt)?;
    state.mounted = false;
    Ok(format!("key removed, {shown} unmounted"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const RANDREAD: &str = include_str!("../../testdata/fio-randread-4k.json");
    const SEQWRITE: &str = include_str!("../../testdata/fio-seqwrite-128k.json");

    #[test]
    fn parses_a_captured_randread() {
        let r = parse_fio(RANDREAD, "read").expect("parses");
        assert!((r.mb_per_s - 600.557074).abs() < 1e-6, "{r:?}");
        assert!((r.iops - 146_620.379_62).abs() < 1e-3);
        assert_eq!(
            r.clat_us,
            Percentiles {
                p50: 83.456,
                p99: 240.64,
                p99_9: 4046.848
            }
        );
        assert_eq!(r.io_bytes, 601_157_632);
        assert_eq!(r.runtime_ms, 1001);
        // The write side of a read job moved nothing: refused, not zero.
        let e = parse_fio(RANDREAD, "write").expect_err("no writes");
        assert!(e.contains("moved no bytes"), "{e}");
    }

    #[test]
    fn parses_a_captured_seqwrite_after_a_note() {
        let noisy = format!("fio: note: something\n{SEQWRITE}");
        let r = parse_fio(&noisy, "write").expect("parses");
        assert!((r.mb_per_s - 3641.208967).abs() < 1e-6, "{r:?}");
        assert_eq!(
            r.clat_us,
            Percentiles {
                p50: 536.576,
                p99: 1028.096,
                p99_9: 1761.28
            }
        );
        let j = serde_json::to_value(&r).unwrap();
        assert_eq!(j["clat_us"]["p99.9"], 1761.28);
    }

    #[test]
    fn broken_output_is_named() {
        assert!(parse_fio("", "read").unwrap_err().contains("no JSON"));
        assert!(
            parse_fio("{\"jobs\": [", "read")
                .unwrap_err()
                .contains("does not parse")
        );
        assert!(
            parse_fio("{\"jobs\": []}", "read")
                .unwrap_err()
                .contains("jobs[0]")
        );
        let failed = r#"{"jobs":[{"error":5,"read":{}}]}"#;
        assert!(parse_fio(failed, "read").unwrap_err().contains("error 5"));
        let partial = r#"{"jobs":[{"error":0,"read":{"bw_bytes":1,"io_bytes":4096}}]}"#;
        assert!(
            parse_fio(partial, "read")
                .unwrap_err()
                .contains("jobs[0].read.iops")
        );
    }

    #[test]
    fn fio_args_are_direct_time_based_json() {
        let args = fio_args(&LOADS[2], Path::new("/mnt/enc/fio.dat"), 16 << 20, 3);
        for want in [
            "--rw=randread",
            "--bs=4096",
            "--direct=1",
            "--runtime=3",
            "--ramp_time=1",
            "--size=16777216",
            "--filename=/mnt/enc/fio.dat",
            "--output-format=json",
        ] {
            assert!(args.iter().any(|a| a == want), "{want} in {args:?}");
        }
        assert_eq!(direction(&LOADS[0]), "write");
        assert_eq!(direction(&LOADS[1]), "read");
    }

    #[test]
    fn test_names_match_the_loads() {
        for load in LOADS {
            assert!(
                TESTS.iter().any(|t| t.name == format!("fio-{}", load.name)),
                "{}",
                load.name
            );
        }
        for (i, t) in TESTS.iter().enumerate() {
            for need in t.needs {
                assert!(TESTS[..i].iter().any(|e| e.name == *need), "{need}");
            }
        }
    }
}
