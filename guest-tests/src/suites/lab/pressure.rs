//! `keyslot-pressure` (the `lab-pressure` boot, a device with 2 keyslots):
//! [`KEYS`] files, each under its own master key, read and written with
//! O_DIRECT (every I/O needs its key in a keyslot) by [`WORKERS`]
//! processes at once for [`ROUNDS`] rounds; then sync, drop_caches and
//! every file read back. blk-crypto must keep replacing keys in the two
//! slots (the host checks replacements and reprogramming in the trace,
//! `trace/keyslot-pressure`), and nothing may come back wrong.
//!
//! Workers are real processes: this binary re-executed as
//! `icelab-guest --worker pressure ...` ([`worker_main`]). They rewrite
//! ranges with the offset generator's own bytes, so every file's final
//! contents are the generator's whatever the interleaving.

use std::fs::OpenOptions;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use serde_json::{Value, json};

use super::path::{self, case, whole};
use super::plan::{Case, FileSpec, Scheme};
use crate::command;
use crate::data;
use crate::marks;
use crate::report::Facts;
use crate::runner::{Ctx, Failure, State, TestDef, fail};
use crate::suites::steps;

/// `keyslot-pressure`.
pub const KEYSLOT_PRESSURE: TestDef = TestDef {
    name: "keyslot-pressure",
    timeout: Duration::from_secs(480),
    needs: &["mkfs-mount"],
    fatal: false,
    run: keyslot_pressure,
};

/// Distinct master keys (one file each).
pub const KEYS: usize = 16;
/// Worker processes.
pub const WORKERS: usize = 4;
/// Rounds each worker makes over its files.
pub const ROUNDS: u32 = 3;
/// Each file's size: 64 blocks.
const FILE_SIZE: u64 = 64 * 4096;
/// O_DIRECT transfer size.
const CHUNK: u64 = 16 * 4096;

const NAMES: [&str; KEYS] = [
    "pressure/00",
    "pressure/01",
    "pressure/02",
    "pressure/03",
    "pressure/04",
    "pressure/05",
    "pressure/06",
    "pressure/07",
    "pressure/08",
    "pressure/09",
    "pressure/10",
    "pressure/11",
    "pressure/12",
    "pressure/13",
    "pressure/14",
    "pressure/15",
];
const FILES: [FileSpec; 1] = [whole("data", FILE_SIZE)];

fn case_of(i: usize) -> Case {
    case(NAMES[i], Scheme::PerFile)
}

/// A 4096-aligned buffer (O_DIRECT), without unsafe code.
struct Aligned {
    raw: Vec<u8>,
    start: usize,
    len: usize,
}

impl Aligned {
    fn new(len: usize) -> Aligned {
        let raw = vec![0u8; len + 4096];
        let start = raw.as_ptr().align_offset(4096);
        Aligned { raw, start, len }
    }
    fn buf(&mut self) -> &mut [u8] {
        &mut self.raw[self.start..self.start + self.len]
    }
}

/// `--worker pressure ROUNDS SEED_HEX PATH:CONTENT_SEED_HEX...`: for each
/// round, for each chunk index, for each file: O_DIRECT write of the
/// generator's bytes for that chunk (every other round) and O_DIRECT read
/// of it, compared. Prints one JSON line; the exit status is 0 only if
/// every byte matched.
pub fn worker_main(args: &[String]) -> i32 {
    match worker(args) {
        Ok(summary) => {
            println!("{summary}");
            0
        }
        Err(message) => {
            eprintln!("icelab-guest worker: {message}");
            1
        }
    }
}

fn worker(args: &[String]) -> Result<Value, String> {
    let usage = "usage: --worker pressure ROUNDS PATH:SEED_HEX...";
    let (kind, rest) = args.split_first().ok_or(usage)?;
    if kind != "pressure" {
        return Err(format!("unknown worker {kind:?}; {usage}"));
    }
    let (rounds, files) = rest.split_first().ok_or(usage)?;
    let rounds: u32 = rounds
        .parse()
        .map_err(|_| format!("bad ROUNDS {rounds:?}"))?;
    let mut open = Vec::new();
    for spec in files {
        let (path, seed) = spec.rsplit_once(':').ok_or(usage)?;
        let seed = u64::from_str_radix(seed, 16).map_err(|_| format!("bad seed in {spec:?}"))?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)
            .map_err(|e| format!("cannot open {path} with O_DIRECT: {e}"))?;
        open.push((path.to_owned(), seed, file));
    }
    let mut buf = Aligned::new(CHUNK as usize);
    let (mut reads, mut writes) = (0u64, 0u64);
    for round in 0..rounds {
        let mut at = 0;
        while at < FILE_SIZE {
            for (path, seed, file) in &open {
                if round % 2 == 0 {
                    data::fill_at(*seed, at, buf.buf());
                    file.write_all_at(buf.buf(), at)
                        .map_err(|e| format!("O_DIRECT write at {at} of {path}: {e}"))?;
                    writes += 1;
                }
                buf.buf().fill(0);
                file.read_exact_at(buf.buf(), at)
                    .map_err(|e| format!("O_DIRECT read at {at} of {path}: {e}"))?;
                reads += 1;
                let want = data::bytes_at(*seed, at, CHUNK as usize);
                if let Some(i) = data::first_difference(buf.buf(), &want) {
                    return Err(format!(
                        "{path}: byte {} differs after an O_DIRECT read (round {round})",
                        at + i as u64
                    ));
                }
            }
            at += CHUNK;
        }
    }
    Ok(json!({"files": open.len(), "reads": reads, "writes": writes}))
}

fn keyslot_pressure(ctx: &Ctx, state: &mut State, facts: &mut Facts) -> Result<String, Failure> {
    let mut manifest = Vec::new();
    let mut paths: Vec<(PathBuf, u64)> = Vec::new();
    ctx.step("adding keys and writing files");
    for i in 0..KEYS {
        let case = case_of(i);
        let dir = path::policy_dir(ctx, state, facts, &case)?;
        path::write_files(ctx, state, &case, &dir, &FILES, &mut manifest)?;
        let seed = data::content_seed(state.seed, &case.file_name(&FILES[0]));
        paths.push((dir.path.join(FILES[0].leaf), seed));
    }
    path::set_manifest(ctx, facts, &manifest)?;
    steps::sync_and_drop_caches()?;
    marks::mark(ctx, facts, marks::PRESSURE_START)?;

    // Worker w takes files w, w + WORKERS, ...: every worker switches keys
    // at every chunk, and they all run at once.
    let exe = std::fs::read_link("/proc/self/exe")
        .map_err(|e| Failure(format!("cannot read /proc/self/exe: {e}")))?;
    let exe = exe.display().to_string();
    let (tx, rx) = mpsc::channel();
    for w in 0..WORKERS {
        let mut args = vec![
            "--worker".to_owned(),
            "pressure".to_owned(),
            ROUNDS.to_string(),
        ];
        args.extend(
            paths
                .iter()
                .skip(w)
                .step_by(WORKERS)
                .map(|(p, s)| format!("{}:{s:x}", p.display())),
        );
        let tx = tx.clone();
        let exe = exe.clone();
        let timeout = ctx.scaled(Duration::from_secs(400));
        thread::spawn(move || {
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            let result = command::run(&exe, &refs, timeout).map_err(|e| e.to_string());
            let _ = tx.send((w, result));
        });
    }
    drop(tx);
    ctx.step(format!("{WORKERS} worker processes, {ROUNDS} rounds"));
    let mut workers = vec![Value::Null; WORKERS];
    let mut errors = Vec::new();
    for (w, result) in rx {
        match result {
            Ok(out) => {
                workers[w] = serde_json::from_str(out.stdout.trim()).unwrap_or(Value::Null);
            }
            Err(e) => {
                workers[w] = json!({"error": e.clone()});
                errors.push(format!("worker {w}: {e}"));
            }
        }
    }
    facts.set("workers", workers.clone());
    marks::mark(ctx, facts, marks::PRESSURE_END)?;
    if !errors.is_empty() {
        return fail(errors.join("; "));
    }

    ctx.step("sync, drop_caches, reading every file");
    steps::sync_and_drop_caches()?;
    for (i, (p, _)) in paths.iter().enumerate() {
        let case = case_of(i);
        path::read_files(
            ctx,
            state,
            &case,
            p.parent().unwrap_or(Path::new("/")),
            &FILES,
        )?;
    }
    let reads: u64 = workers.iter().filter_map(|w| w["reads"].as_u64()).sum();
    let writes: u64 = workers.iter().filter_map(|w| w["writes"].as_u64()).sum();
    facts
        .set("direct_reads", reads)
        .set("direct_writes", writes);
    Ok(format!(
        "{KEYS} files under {KEYS} keys, {WORKERS} processes x {ROUNDS} rounds: {reads} O_DIRECT \
         reads and {writes} writes correct; all files read back after drop_caches"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_checks_its_files_on_a_host_filesystem() {
        // tmpfs refuses O_DIRECT; a worker must report that, not pass.
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("f");
        std::fs::write(&p, vec![0u8; FILE_SIZE as usize]).expect("write");
        let args: Vec<String> = ["pressure", "1", &format!("{}:ab", p.display())]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        match worker(&args) {
            Ok(v) => assert_eq!(v["reads"], FILE_SIZE / CHUNK),
            Err(e) => assert!(e.contains("O_DIRECT"), "{e}"),
        }
        assert!(worker(&["other".to_owned()]).is_err());
        assert!(worker(&["pressure".to_owned(), "x".to_owned()]).is_err());
    }

    #[test]
    fn sixteen_distinct_keys() {
        let mut names = NAMES.to_vec();
        names.dedup();
        assert_eq!(names.len(), KEYS);
        const { assert!(KEYS >= 16 && WORKERS >= 2) };
    }
}
