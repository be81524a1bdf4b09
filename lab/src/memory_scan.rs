//! The guest-RAM scan: proof that a hardware-wrapped key never enters the
//! guest (issue 12).
//!
//! The guest, with its keys loaded, signals
//! [`SIGNAL_SCAN_GUEST_MEMORY`] with a [`ScanRequest`] and holds still. The
//! host stops QEMU (SIGSTOP: no vCPU runs, nothing changes guest memory),
//! checks that the guest was still holding (the signal is the last line of
//! its results), reads the guest's whole RAM from QEMU's memory backend
//! (the lab's guests run on a `memory-backend-memfd`, which QEMU keeps
//! open: the host reads it through `/proc/<qemu>/fd`), counts every
//! occurrence of each key's bytes and lets QEMU go on (SIGCONT).
//!
//! What is looked for, derived here from the seeds the guest names (never
//! sent by the guest):
//! - each hardware-wrapped key's raw key (32 bytes) and the inline
//!   encryption key the engine derives from it (64 bytes, and each 32-byte
//!   half, in case something held the AES-256 keys apart): no hit allowed;
//! - the negative control, each raw master key's IV_INO_LBLK_64 inline
//!   encryption key (fscrypt's per-mode key, which blk-crypto holds as the
//!   key it programs): at least one hit, or the scan shows nothing.

use crate::report::TestResult;
use icelab_contract::manifest::{self, hw_key_from_seed, master_key_from_seed};
use icelab_contract::memory_scan::{FACT_MEMORY_SCAN, SIGNAL_SCAN_GUEST_MEMORY, ScanRequest};
use icelab_contract::record::{Facts, Record};
use icelab_verifier::hw_kdf;
use icelab_verifier::kdf::{HKDF_CONTEXT_IV_INO_LBLK_64_KEY, MasterKeyHkdf};
use serde_json::{Value, json};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};
use zeroize::Zeroizing;

/// fscrypt's mode number of AES-256-XTS (`FSCRYPT_MODE_AES_256_XTS`).
const MODE_AES_256_XTS: u8 = 1;

/// The link target prefix of QEMU's `memory-backend-memfd` file (QEMU names
/// the memfd after the backend type).
const MEMFD_NAME: &str = "/memfd:memory-backend-memfd";

/// Guest memory is read in pieces of this size.
const CHUNK: usize = 16 << 20;

/// Longest wait for QEMU to stop after SIGSTOP.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// What a pattern must show.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// Nowhere in guest memory (a hardware-wrapped key's secrets).
    Absent,
    /// Somewhere in guest memory (the negative control).
    Present,
}

/// One key's bytes in one form, and how often they were found.
#[derive(Debug)]
pub struct KeyCount {
    /// The guest's name for the key.
    pub key: String,
    /// Which bytes: "raw key", "inline encryption key", ...
    pub form: &'static str,
    /// What the count must show.
    pub expect: Expect,
    /// Occurrences in guest memory.
    pub hits: u64,
}

/// What the scan saw.
#[derive(Debug)]
pub struct Snapshot {
    /// Bytes of guest memory read.
    pub bytes: u64,
    /// From the signal line to QEMU stopped.
    pub stopped_after: Duration,
    /// Reading and searching.
    pub took: Duration,
    /// The signal was still the guest's last line when QEMU stopped: the
    /// keys were loaded.
    pub guest_held: bool,
    /// Per key and form.
    pub counts: Vec<KeyCount>,
}

/// The scan of one boot: what was seen, or why nothing was.
#[derive(Debug)]
pub struct MemoryScan {
    /// The snapshot, or why there is none.
    pub snapshot: Result<Snapshot, String>,
}

impl Snapshot {
    /// All hits of the patterns that expect `expect`.
    fn hits(&self, expect: Expect) -> u64 {
        self.counts
            .iter()
            .filter(|c| c.expect == expect)
            .map(|c| c.hits)
            .sum()
    }
}

impl MemoryScan {
    /// One line for the run's output (counts, never bytes).
    pub fn line(&self) -> String {
        match &self.snapshot {
            Err(problem) => format!("guest memory scan failed: {problem}"),
            Ok(s) => {
                let (absent, present) = (s.hits(Expect::Absent), s.hits(Expect::Present));
                format!(
                    "guest memory scanned: {} MiB in {:.1} s; hardware-wrapped keys: {absent} \
                     hits; raw-key control: {present} hits",
                    s.bytes >> 20,
                    s.took.as_secs_f64()
                )
            }
        }
    }
}

/// A key's bytes to look for.
struct Pattern {
    key: String,
    form: &'static str,
    expect: Expect,
    bytes: Zeroizing<Vec<u8>>,
}

/// Stops QEMU (`qemu_pid`), scans its guest memory for the keys the
/// signal's `facts` name, and lets it go on. `results` is the guest's
/// results file, whose last line must still be the signal. Call it as
/// soon as the signal line is read: the snapshot's `stopped_after` counts
/// from the call.
pub fn scan_guest(qemu_pid: u32, results: &Path, facts: &Facts) -> MemoryScan {
    let signalled = Instant::now();
    let request = match facts.get(FACT_MEMORY_SCAN) {
        Some(value) => serde_json::from_value::<ScanRequest>(value.clone())
            .map_err(|e| format!("the guest's {FACT_MEMORY_SCAN} fact is malformed: {e}")),
        None => Err(format!(
            "the guest's {SIGNAL_SCAN_GUEST_MEMORY:?} signal has no {FACT_MEMORY_SCAN} fact"
        )),
    };
    let request = match request {
        Ok(request) => request,
        Err(problem) => {
            return MemoryScan {
                snapshot: Err(problem),
            };
        }
    };
    let snapshot = patterns(&request).and_then(|patterns| {
        let memory = guest_memory(qemu_pid)?;
        let stopped = Stopped::stop(qemu_pid)?;
        let stopped_after = signalled.elapsed();
        let guest_held = last_record_is_scan_signal(results);
        let started = Instant::now();
        let (bytes, hits) = count_occurrences(&memory, &patterns)
            .map_err(|e| format!("cannot read guest memory: {e}"))?;
        let took = started.elapsed();
        drop(stopped);
        Ok(Snapshot {
            bytes,
            stopped_after,
            took,
            guest_held,
            counts: patterns
                .iter()
                .zip(hits)
                .map(|(p, hits)| KeyCount {
                    key: p.key.clone(),
                    form: p.form,
                    expect: p.expect,
                    hits,
                })
                .collect(),
        })
    });
    MemoryScan { snapshot }
}

/// The byte patterns of `request`'s keys.
fn patterns(request: &ScanRequest) -> Result<Vec<Pattern>, String> {
    let mut patterns = Vec::new();
    for key in &request.wrapped {
        let seed = manifest::parse_seed("hw_wrapped_key_seed", &key.hw_wrapped_key_seed)?;
        let raw = Zeroizing::new(hw_key_from_seed(seed));
        let inline = Zeroizing::new(hw_kdf::inline_encryption_key(&raw));
        let (first, second) = inline.split_at(32);
        for (form, bytes) in [
            ("raw key", &raw[..]),
            ("inline encryption key", &inline[..]),
            ("inline encryption key, first half", first),
            ("inline encryption key, second half", second),
        ] {
            patterns.push(Pattern {
                key: key.name.clone(),
                form,
                expect: Expect::Absent,
                bytes: Zeroizing::new(bytes.to_vec()),
            });
        }
    }
    for key in &request.raw_controls {
        let seed = manifest::parse_seed("master_key_seed", &key.master_key_seed)?;
        let uuid = manifest::from_hex(&key.fs_uuid.replace('-', ""))
            .and_then(|bytes| <[u8; 16]>::try_from(bytes).ok())
            .ok_or_else(|| format!("fs_uuid {:?} is not a UUID", key.fs_uuid))?;
        let master = Zeroizing::new(master_key_from_seed(seed));
        let inline = Zeroizing::new(MasterKeyHkdf::new(&master[..]).per_mode_key(
            HKDF_CONTEXT_IV_INO_LBLK_64_KEY,
            MODE_AES_256_XTS,
            &uuid,
        ));
        patterns.push(Pattern {
            key: key.name.clone(),
            form: "inline encryption key (IV_INO_LBLK_64)",
            expect: Expect::Present,
            bytes: Zeroizing::new(inline.to_vec()),
        });
    }
    if patterns.is_empty() {
        return Err("the scan request names no keys".to_owned());
    }
    Ok(patterns)
}

/// QEMU's guest memory file.
fn guest_memory(qemu_pid: u32) -> Result<File, String> {
    let dir = format!("/proc/{qemu_pid}/fd");
    let entries = std::fs::read_dir(&dir).map_err(|e| format!("cannot list {dir}: {e}"))?;
    for entry in entries.flatten() {
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue;
        };
        if target.to_string_lossy().starts_with(MEMFD_NAME) {
            return File::open(entry.path())
                .map_err(|e| format!("cannot open {}: {e}", entry.path().display()));
        }
    }
    Err(format!(
        "QEMU (pid {qemu_pid}) has no {MEMFD_NAME} open: is guest memory a \
         memory-backend-memfd (lab/src/qemu.rs)?"
    ))
}

/// QEMU stopped by SIGSTOP; SIGCONT when dropped, whatever happened.
struct Stopped(libc::pid_t);

impl Stopped {
    fn stop(pid: u32) -> Result<Self, String> {
        let pid = libc::pid_t::try_from(pid).map_err(|_| format!("pid {pid} out of range"))?;
        // SAFETY: kill has no memory effects; pid is QEMU, our child.
        if unsafe { libc::kill(pid, libc::SIGSTOP) } != 0 {
            return Err(format!(
                "cannot stop QEMU: {}",
                std::io::Error::last_os_error()
            ));
        }
        let stopped = Self(pid);
        let deadline = Instant::now() + STOP_TIMEOUT;
        while !all_threads_stopped(pid) {
            if Instant::now() > deadline {
                return Err(format!(
                    "QEMU did not stop within {} s of SIGSTOP",
                    STOP_TIMEOUT.as_secs()
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(stopped)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        // SAFETY: as in `stop`.
        unsafe { libc::kill(self.0, libc::SIGCONT) };
    }
}

/// Every thread of `pid` is in state T (stopped).
fn all_threads_stopped(pid: libc::pid_t) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().all(|task| {
        std::fs::read_to_string(task.path().join("stat"))
            .ok()
            .and_then(|stat| {
                // The state follows the command name's closing parenthesis.
                let rest = &stat[stat.rfind(')')? + 1..];
                rest.split_whitespace().next().map(|s| s == "T" || s == "t")
            })
            .unwrap_or(false)
    })
}

/// The guest's last results line is the scan signal: it was still holding
/// its keys when QEMU stopped.
fn last_record_is_scan_signal(results: &Path) -> bool {
    let Ok(text) = std::fs::read(results) else {
        return false;
    };
    String::from_utf8_lossy(&text)
        .lines()
        .rev()
        .find_map(Record::from_line)
        .is_some_and(
            |r| matches!(r, Record::Signal { name, .. } if name == SIGNAL_SCAN_GUEST_MEMORY),
        )
}

/// Reads all of `memory` and counts each pattern's occurrences. Holes
/// (guest memory never touched reads as zeros) are skipped with
/// SEEK_DATA/SEEK_HOLE, which shmem supports; a key, not being zeros, cannot
/// lie across one. Within a data extent, a match is counted in the piece
/// where it starts; pieces overlap by the longest pattern less one byte,
/// so no match across a piece boundary is missed. Returns the bytes read
/// (data only) and the counts.
fn count_occurrences(memory: &File, patterns: &[Pattern]) -> std::io::Result<(u64, Vec<u64>)> {
    let longest = patterns.iter().map(|p| p.bytes.len()).max().unwrap_or(1);
    let finders: Vec<_> = patterns
        .iter()
        .map(|p| memchr::memmem::Finder::new(&p.bytes[..]))
        .collect();
    let mut hits = vec![0u64; patterns.len()];
    // The buffer holds guest memory, which may hold keys: wiped on drop.
    let mut buffer = Zeroizing::new(vec![0u8; CHUNK + longest - 1]);
    let mut read = 0u64;
    for (start, end) in data_extents(memory)? {
        let mut offset = start;
        while offset < end {
            let want = usize::try_from(end - offset).map_or(buffer.len(), |n| n.min(buffer.len()));
            let filled = read_full_at(memory, &mut buffer[..want], offset)?;
            if filled == 0 {
                break;
            }
            let piece = &buffer[..filled];
            for (finder, count) in finders.iter().zip(hits.iter_mut()) {
                *count += finder.find_iter(piece).filter(|&at| at < CHUNK).count() as u64;
            }
            let advance = filled.min(CHUNK);
            read += advance as u64;
            offset += advance as u64;
            if filled < want {
                break;
            }
        }
    }
    Ok((read, hits))
}

/// The `[start, end)` ranges of `file` that hold data (not holes).
fn data_extents(file: &File) -> std::io::Result<Vec<(u64, u64)>> {
    use std::os::fd::AsRawFd;
    let size = file.metadata()?.len();
    let fd = file.as_raw_fd();
    let seek = |offset: u64, whence| -> std::io::Result<Option<u64>> {
        let offset = libc::off_t::try_from(offset).map_err(std::io::Error::other)?;
        // SAFETY: lseek on a file we own; no memory is touched.
        let at = unsafe { libc::lseek(fd, offset, whence) };
        if at >= 0 {
            return Ok(Some(at as u64));
        }
        let error = std::io::Error::last_os_error();
        // ENXIO: no data at or after `offset`.
        if error.raw_os_error() == Some(libc::ENXIO) {
            Ok(None)
        } else {
            Err(error)
        }
    };
    let mut extents = Vec::new();
    let mut offset = 0;
    while offset < size {
        let Some(start) = seek(offset, libc::SEEK_DATA)? else {
            break;
        };
        let end = seek(start, libc::SEEK_HOLE)?.unwrap_or(size).min(size);
        if end <= start {
            break;
        }
        extents.push((start, end));
        offset = end;
    }
    Ok(extents)
}

/// Reads from `offset` until `buf` is full or the end: the bytes read.
fn read_full_at(file: &impl FileExt, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read_at(&mut buf[filled..], offset + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// The host tests of a boot that scans guest memory:
/// `memory-scan/snapshot`, `memory-scan/wrapped-keys-absent` (when the
/// boot uses hardware-wrapped keys, `wrapped`) and
/// `memory-scan/raw-key-found`.
pub fn results(boot: &str, scan: Option<&MemoryScan>, wrapped: bool) -> Vec<TestResult> {
    let mut results = all_results(boot, scan);
    if !wrapped {
        results.retain(|r| r.name != ABSENT_TEST);
    }
    results
}

/// The name of the test that no hardware-wrapped key is in guest memory.
const ABSENT_TEST: &str = "memory-scan/wrapped-keys-absent";

fn all_results(boot: &str, scan: Option<&MemoryScan>) -> Vec<TestResult> {
    let names = [
        "memory-scan/snapshot",
        ABSENT_TEST,
        "memory-scan/raw-key-found",
    ];
    let snapshot = match scan.map(|s| &s.snapshot) {
        None => Err(format!(
            "the guest never signalled {SIGNAL_SCAN_GUEST_MEMORY:?}: guest memory was not scanned"
        )),
        Some(Err(problem)) => Err(problem.clone()),
        Some(Ok(snapshot)) => Ok(snapshot),
    };
    let snapshot = match snapshot {
        Ok(snapshot) => snapshot,
        Err(problem) => {
            return names
                .iter()
                .map(|name| TestResult::host(boot, name, false, problem.clone(), Value::Null))
                .collect();
        }
    };
    let mib = snapshot.bytes >> 20;
    let counts: Vec<Value> = snapshot
        .counts
        .iter()
        .map(|c| json!({"key": c.key, "form": c.form, "hits": c.hits}))
        .collect();
    let snapshot_facts = json!({
        "bytes": snapshot.bytes,
        "stopped_after_signal_ms": snapshot.stopped_after.as_millis() as u64,
        "scan_s": snapshot.took.as_secs_f64(),
        "counts": counts,
    });
    let snapshot_test = TestResult::host(
        boot,
        names[0],
        snapshot.guest_held && snapshot.bytes > 0,
        if !snapshot.guest_held {
            "QEMU stopped after the guest had gone on past its signal: its keys may no longer \
             have been loaded (the host was too slow; raise the guest's hold)"
                .to_owned()
        } else if snapshot.bytes == 0 {
            "guest memory read as empty".to_owned()
        } else {
            format!(
                "QEMU stopped {} ms after the signal, the guest holding its keys; {mib} MiB of \
                 guest memory read in {:.1} s",
                snapshot.stopped_after.as_millis(),
                snapshot.took.as_secs_f64()
            )
        },
        snapshot_facts.clone(),
    );
    let found = |expect: Expect| snapshot.counts.iter().filter(move |c| c.expect == expect);
    let leaked: Vec<String> = found(Expect::Absent)
        .filter(|c| c.hits > 0)
        .map(|c| format!("{} of {} ({} hits)", c.form, c.key, c.hits))
        .collect();
    let wrapped_keys = snapshot
        .counts
        .iter()
        .filter(|c| c.expect == Expect::Absent)
        .map(|c| c.key.as_str())
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    let absent_test = TestResult::host(
        boot,
        names[1],
        leaked.is_empty() && wrapped_keys > 0,
        if wrapped_keys == 0 {
            "the guest named no hardware-wrapped keys".to_owned()
        } else if leaked.is_empty() {
            format!(
                "0 hits in {mib} MiB for the raw key and the inline encryption key (whole and \
                 halves) of {wrapped_keys} hardware-wrapped keys"
            )
        } else {
            format!("in guest memory: {}", leaked.join("; "))
        },
        snapshot_facts.clone(),
    );
    let missing: Vec<String> = found(Expect::Present)
        .filter(|c| c.hits == 0)
        .map(|c| format!("{} of {}", c.form, c.key))
        .collect();
    let controls: Vec<String> = found(Expect::Present)
        .map(|c| format!("{} of {}: {} hits", c.form, c.key, c.hits))
        .collect();
    let control_test = TestResult::host(
        boot,
        names[2],
        missing.is_empty() && !controls.is_empty(),
        if controls.is_empty() {
            "the guest named no raw key: the scan has no negative control".to_owned()
        } else if missing.is_empty() {
            format!("the negative control: {}", controls.join("; "))
        } else {
            format!(
                "not found, so the scan shows nothing: {} (was the key loaded?)",
                missing.join("; ")
            )
        },
        snapshot_facts,
    );
    vec![snapshot_test, absent_test, control_test]
}

#[cfg(test)]
mod tests {
    use super::*;
    use icelab_contract::memory_scan::{RawKeyRef, WrappedKeyRef};

    fn pattern(bytes: &[u8]) -> Pattern {
        Pattern {
            key: "k".into(),
            form: "raw key",
            expect: Expect::Absent,
            bytes: Zeroizing::new(bytes.to_vec()),
        }
    }

    #[test]
    fn counts_every_occurrence_once_even_across_piece_boundaries() {
        let needle = b"0123456789abcdef0123456789ABCDEF";
        let mut memory = vec![0u8; CHUNK * 2 + 100];
        // Inside the first piece, across the boundary, at the very end.
        for at in [10, CHUNK - 7, memory.len() - needle.len()] {
            memory[at..at + needle.len()].copy_from_slice(needle);
        }
        let file = tempfile::tempfile().unwrap();
        file.write_all_at(&memory, 0).unwrap();
        let (bytes, hits) =
            count_occurrences(&file, &[pattern(needle), pattern(b"absent!")]).unwrap();
        assert_eq!(bytes, memory.len() as u64);
        assert_eq!(hits, [3, 0]);
    }

    #[test]
    fn skips_holes_but_finds_keys_in_data_after_them() {
        let needle = b"fedcba9876543210FEDCBA9876543210";
        let file = tempfile::tempfile().unwrap();
        // A sparse file: a hole, data holding the key, a hole to the end.
        let at = 64 << 20;
        file.write_all_at(needle, at).unwrap();
        file.set_len(256 << 20).unwrap();
        let (bytes, hits) = count_occurrences(&file, &[pattern(needle)]).unwrap();
        assert_eq!(hits, [1]);
        assert!(
            bytes < 64 << 20,
            "read {bytes} bytes: the holes were not skipped"
        );
    }

    #[test]
    fn patterns_derive_the_keys_from_the_seeds() {
        let request = ScanRequest {
            wrapped: vec![WrappedKeyRef {
                name: "w".into(),
                hw_wrapped_key_seed: "00000000000000ab".into(),
            }],
            raw_controls: vec![RawKeyRef {
                name: "r".into(),
                master_key_seed: "00000000000000cd".into(),
                fs_uuid: "00112233-4455-6677-8899-aabbccddeeff".into(),
            }],
            hold_ms: 1,
        };
        let p = patterns(&request).unwrap();
        assert_eq!(p.len(), 5);
        assert_eq!(&p[0].bytes[..], &hw_key_from_seed(0xab)[..]);
        let inline = hw_kdf::inline_encryption_key(&hw_key_from_seed(0xab));
        assert_eq!(&p[1].bytes[..], &inline[..]);
        assert_eq!(&p[2].bytes[..], &inline[..32]);
        assert_eq!(&p[3].bytes[..], &inline[32..]);
        assert_eq!(p[4].expect, Expect::Present);
        assert_eq!(p[4].bytes.len(), 64);
        let bad = ScanRequest {
            raw_controls: vec![RawKeyRef {
                fs_uuid: "not-a-uuid".into(),
                ..request.raw_controls[0].clone()
            }],
            ..request
        };
        assert!(patterns(&bad).is_err_and(|e| e.contains("not a UUID")));
        assert!(patterns(&ScanRequest::default()).is_err());
    }

    fn scan(counts: Vec<(Expect, u64)>, guest_held: bool) -> MemoryScan {
        MemoryScan {
            snapshot: Ok(Snapshot {
                bytes: 1 << 30,
                stopped_after: Duration::from_millis(120),
                took: Duration::from_secs(1),
                guest_held,
                counts: counts
                    .into_iter()
                    .map(|(expect, hits)| KeyCount {
                        key: "k".into(),
                        form: "raw key",
                        expect,
                        hits,
                    })
                    .collect(),
            }),
        }
    }

    fn verdicts(scan: Option<&MemoryScan>) -> Vec<bool> {
        results("wrapped", scan, true)
            .iter()
            .map(|r| r.outcome == crate::report::Outcome::Pass)
            .collect()
    }

    #[test]
    fn a_hit_of_a_wrapped_key_fails_and_a_missing_control_fails() {
        let clean = scan(vec![(Expect::Absent, 0), (Expect::Present, 2)], true);
        assert_eq!(verdicts(Some(&clean)), [true, true, true]);
        let leak = scan(vec![(Expect::Absent, 1), (Expect::Present, 2)], true);
        assert_eq!(verdicts(Some(&leak)), [true, false, true]);
        let blind = scan(vec![(Expect::Absent, 0), (Expect::Present, 0)], true);
        assert_eq!(verdicts(Some(&blind)), [true, true, false]);
        let late = scan(vec![(Expect::Absent, 0), (Expect::Present, 1)], false);
        assert_eq!(verdicts(Some(&late)), [false, true, true]);
        assert_eq!(verdicts(None), [false, false, false]);
        let raw_only = results("ufs", Some(&clean), false);
        assert_eq!(
            raw_only.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
            ["memory-scan/snapshot", "memory-scan/raw-key-found"]
        );
    }

    #[test]
    fn only_a_trailing_scan_signal_counts_as_holding() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("results.jsonl");
        let signal = Record::Signal {
            name: SIGNAL_SCAN_GUEST_MEMORY.into(),
            facts: Facts::new(),
        }
        .to_line();
        std::fs::write(&path, format!("{signal}\n")).unwrap();
        assert!(last_record_is_scan_signal(&path));
        let done = Record::Done {
            passed: 1,
            failed: 0,
        }
        .to_line();
        std::fs::write(&path, format!("{signal}\n{done}\n")).unwrap();
        assert!(!last_record_is_scan_signal(&path));
    }
}
