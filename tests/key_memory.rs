//! No copy of an evicted key stays in the device's memory: after
//! KEYSLOT_EVICT (and after a device reset) a scan of every readable
//! mapping of the running `icelab serve` (heap, every thread's stack,
//! cached stacks of exited threads, the key arena) finds neither the key,
//! nor either half, nor any AES round key of either half: round keys are
//! what a cipher backend leaves behind, and two consecutive ones give the
//! key back.
//!
//! The same holds for a hardware-wrapped key: once its slot is evicted,
//! neither the hardware key (the 32 bytes the blob wraps, the key of the
//! KDF's AES-256-CMAC) nor the inline encryption key derived from it is
//! anywhere; while it is programmed, only the inline key's schedule is, in
//! the key arena.
//!
//! The guest memory memfd is scanned too: the frontend says it wipes the
//! key descriptor from guest memory once the request completes, so a hit
//! there is a finding as well (reported separately, with the region).
//!
//! Runs as root (the scan reads /proc/PID/mem of a non-dumpable process,
//! which needs CAP_SYS_PTRACE); skipped with a note otherwise.

mod ice;
mod support;

use ice::{Session, msg, random_bytes, random_key};
use icelab_emulator::protocol::{KEY_BLOB_SIZE, KeyDesc, KeyType, Status};
use icelab_frontend::blk::{Request, key_blob};
use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::time::Duration;
use support::wait_until;

const MIB: u64 = 1 << 20;
const SLOT: u32 = 5;
const UNIT: u32 = 4096;

// --- AES-256 key expansion (FIPS-197 §5.2), independent of the engine ------

fn xtime(a: u8) -> u8 {
    (a << 1) ^ if a & 0x80 != 0 { 0x1b } else { 0 }
}

fn gmul(mut a: u8, mut b: u8) -> u8 {
    let mut product = 0;
    while b != 0 {
        if b & 1 != 0 {
            product ^= a;
        }
        a = xtime(a);
        b >>= 1;
    }
    product
}

fn sbox() -> [u8; 256] {
    let mut table = [0u8; 256];
    for (x, entry) in table.iter_mut().enumerate() {
        // x^254 is the inverse in GF(2^8) (0 maps to 0).
        let mut inverse = 1u8;
        for _ in 0..254 {
            inverse = gmul(inverse, x as u8);
        }
        let inverse = if x == 0 { 0 } else { inverse };
        *entry = inverse
            ^ inverse.rotate_left(1)
            ^ inverse.rotate_left(2)
            ^ inverse.rotate_left(3)
            ^ inverse.rotate_left(4)
            ^ 0x63;
    }
    table
}

/// The 15 encryption round keys of AES-256 under `key`.
fn round_keys(key: &[u8]) -> [[u8; 16]; 15] {
    let sbox = sbox();
    let mut words = [[0u8; 4]; 60];
    for (word, bytes) in words.iter_mut().zip(key.chunks_exact(4)) {
        word.copy_from_slice(bytes);
    }
    let mut rcon = 1u8;
    for i in 8..60 {
        let mut temp = words[i - 1];
        if i % 8 == 0 {
            temp.rotate_left(1);
            temp = temp.map(|b| sbox[b as usize]);
            temp[0] ^= rcon;
            rcon = xtime(rcon);
        } else if i % 8 == 4 {
            temp = temp.map(|b| sbox[b as usize]);
        }
        words[i] = core::array::from_fn(|j| words[i - 8][j] ^ temp[j]);
    }
    core::array::from_fn(|round| core::array::from_fn(|byte| words[round * 4 + byte / 4][byte % 4]))
}

/// InvMixColumns: what AES-NI's decryption schedule holds for the inner
/// round keys (`aesimc`).
fn inv_mix_columns(block: &[u8; 16]) -> [u8; 16] {
    let mut out = [0u8; 16];
    for (column, out) in block.chunks_exact(4).zip(out.chunks_exact_mut(4)) {
        for (row, out) in out.iter_mut().enumerate() {
            *out = gmul(column[row], 14)
                ^ gmul(column[(row + 1) % 4], 11)
                ^ gmul(column[(row + 2) % 4], 13)
                ^ gmul(column[(row + 3) % 4], 9);
        }
    }
    out
}

#[test]
fn key_expansion_matches_fips_197() {
    // FIPS-197 Appendix A.3.
    let key: Vec<u8> = (0..32)
        .map(|i| {
            u8::from_str_radix(
                &"603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4"
                    [2 * i..2 * i + 2],
                16,
            )
            .unwrap()
        })
        .collect();
    let rk = round_keys(&key);
    assert_eq!(rk[2][..4], [0x9b, 0xa3, 0x54, 0x11], "w[8]");
    assert_eq!(rk[14][12..], [0x70, 0x6c, 0x63, 0x1e], "w[59]");
    // FIPS-197 §5.3.3 example column: InvMixColumns(MixColumns(x)) = x.
    let mixed = [0x8e, 0x4d, 0xa1, 0xbc, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    assert_eq!(inv_mix_columns(&mixed)[..4], [0xdb, 0x13, 0x53, 0x45]);
}

// --- the scan -----------------------------------------------------------------

/// What the scan looks for: the key, its halves, every round key of both
/// halves, encryption and decryption schedules.
fn needles(key: &[u8; 64]) -> Vec<(String, Vec<u8>)> {
    let mut needles = vec![("key".to_owned(), key.to_vec())];
    for (half, name) in key.chunks_exact(32).zip(["K1", "K2"]) {
        needles.push((name.to_owned(), half.to_vec()));
        let rk = round_keys(half);
        for (round, block) in rk.iter().enumerate() {
            needles.push((format!("{name} rk[{round}]"), block.to_vec()));
        }
        for (round, block) in rk.iter().enumerate().take(14).skip(1) {
            needles.push((
                format!("{name} dec rk[{}]", 14 - round),
                inv_mix_columns(block).to_vec(),
            ));
        }
    }
    needles
}

#[derive(Debug)]
struct Hit {
    needle: String,
    region: String,
    address: u64,
}

/// Reads every readable mapping of process `pid` and returns every
/// occurrence of a needle. Skips only what cannot be read as memory:
/// [vvar]/[vvar_vclock] (kernel clock pages) and [vsyscall].
fn scan(pid: u32, needles: &[(String, Vec<u8>)]) -> Vec<Hit> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).expect("read maps");
    let mem = File::open(format!("/proc/{pid}/mem")).expect("open /proc/PID/mem");
    // Needles by their first 16 bytes (every needle is at least that long),
    // with a cheap first filter on the first two bytes.
    let mut by_prefix: HashMap<[u8; 16], Vec<usize>> = HashMap::new();
    let mut first_two = vec![false; 1 << 16];
    for (index, (_, bytes)) in needles.iter().enumerate() {
        let prefix: [u8; 16] = bytes[..16].try_into().expect("16 bytes");
        by_prefix.entry(prefix).or_default().push(index);
        first_two[usize::from(u16::from_le_bytes([bytes[0], bytes[1]]))] = true;
    }
    let longest = needles.iter().map(|(_, n)| n.len()).max().unwrap_or(16);
    let mut hits = Vec::new();
    let mut scanned = 0u64;
    for line in maps.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (range, perms) = (fields[0], fields[1]);
        let name = fields
            .get(5..)
            .map(|rest| rest.join(" "))
            .unwrap_or_default();
        if !perms.starts_with('r') || name.starts_with("[vvar") || name == "[vsyscall]" {
            continue;
        }
        let (start, end) = range.split_once('-').expect("range");
        let start = u64::from_str_radix(start, 16).expect("start");
        let end = u64::from_str_radix(end, 16).expect("end");
        const CHUNK: u64 = 4 * MIB;
        let mut at = start;
        while at < end {
            let len = (end - at).min(CHUNK + longest as u64);
            let mut buffer = vec![0u8; len as usize];
            if mem.read_exact_at(&mut buffer, at).is_ok() {
                scanned += len;
                for offset in 0..buffer.len().saturating_sub(15) {
                    let window = &buffer[offset..];
                    if !first_two[usize::from(u16::from_le_bytes([window[0], window[1]]))] {
                        continue;
                    }
                    let prefix: [u8; 16] = window[..16].try_into().expect("16 bytes");
                    for &index in by_prefix.get(&prefix).into_iter().flatten() {
                        let (needle, bytes) = &needles[index];
                        if window.starts_with(bytes) && (offset as u64) < CHUNK {
                            hits.push(Hit {
                                needle: needle.clone(),
                                region: format!("{range} {perms} {name}"),
                                address: at + offset as u64,
                            });
                        }
                    }
                }
            }
            at += CHUNK;
        }
    }
    assert!(scanned > MIB, "the scan read only {scanned} bytes");
    hits
}

fn summary(hits: &[Hit]) -> String {
    let mut regions: HashMap<&str, Vec<String>> = HashMap::new();
    for hit in hits {
        regions
            .entry(&hit.region)
            .or_default()
            .push(format!("{} @{:#x}", hit.needle, hit.address));
    }
    regions
        .iter()
        .map(|(region, found)| {
            let shown = found.iter().take(4).cloned().collect::<Vec<_>>().join(", ");
            format!("  {region}: {} hits ({shown}, ...)\n", found.len())
        })
        .collect()
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with("Uid:"))
                .map(|line| line.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

/// Programs `key`, runs CRYPTO_OUT and CRYPTO_IN on every request queue
/// (one of them 2 MiB, split across the device's thread pool), checks the
/// positive control: the scan must find the key schedule while the key is
/// programmed, and only in the locked, non-dumped key arena.
fn program_and_use(session: &mut Session, program: &Request, needles: &[(String, Vec<u8>)]) {
    let control = session.control();
    session.expect(control, program, Status::Ok);
    for queue in 0..control {
        for (round, len) in [4096usize, 64 * 1024, 2 * MIB as usize]
            .into_iter()
            .enumerate()
        {
            let sector = (queue as u64 * 8 + round as u64) * 1024;
            let dun = 100 + sector;
            let plain = random_bytes(len);
            session.expect(
                queue,
                &Request::crypto_write(sector, &msg(SLOT, dun.into()), plain.clone()),
                Status::Ok,
            );
            let back = session.expect(
                queue,
                &Request::crypto_read(sector, &msg(SLOT, dun.into()), len as u32),
                Status::Ok,
            );
            assert!(back.data == plain, "CRYPTO_IN returns the plaintext");
        }
    }
    let pid = session.device.process().id();
    let hits = scan(pid, needles);
    assert!(
        hits.iter().any(|hit| hit.needle.contains("rk[")),
        "positive control: with the key programmed the scan must find its schedule \
         (else it proves nothing); found {hits:?}"
    );
    eprintln!(
        "positive control: {} hits while programmed:\n{}",
        hits.len(),
        summary(&hits)
    );
    // While programmed, the key lives only in the key arena: locked ("lo")
    // and left out of core dumps ("dd") per /proc/PID/smaps.
    let flags = vm_flags(pid);
    for hit in &hits {
        let start = hit.region.split('-').next().unwrap_or_default();
        let region_flags = flags.get(start).map(String::as_str).unwrap_or("?");
        assert!(
            region_flags.split_whitespace().any(|f| f == "dd")
                && region_flags.split_whitespace().any(|f| f == "lo"),
            "{} at {:#x} is in {} with VmFlags [{region_flags}]: not the locked, \
             non-dumped key arena\n{}",
            hit.needle,
            hit.address,
            hit.region,
            summary(&hits)
        );
    }
}

/// VmFlags of every mapping of `pid`, by start address (hex, as in maps).
fn vm_flags(pid: u32) -> HashMap<String, String> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).expect("read smaps");
    let mut flags = HashMap::new();
    let mut start = String::new();
    for line in smaps.lines() {
        if let Some(rest) = line.strip_prefix("VmFlags:") {
            flags.insert(start.clone(), rest.trim().to_owned());
        } else if let Some((range, _)) = line.split_once(' ')
            && let Some((first, _)) = range.split_once('-')
            && u64::from_str_radix(first, 16).is_ok()
        {
            start = first.to_owned();
        }
    }
    flags
}

#[test]
fn an_evicted_key_leaves_no_copy_in_device_memory() {
    if !is_root() {
        eprintln!("skipped: reading another process's memory needs root");
        return;
    }
    let mut session = Session::start(64 * MIB, &["--queues", "2"]);
    let key = random_key();
    let needles = needles(&key);
    let program = Request::keyslot_program(&KeyDesc::raw_aes_256_xts(SLOT, &key, UNIT, 8));
    program_and_use(&mut session, &program, &needles);

    // Evict with the whole key in the descriptor (what a driver passing
    // its blk_crypto_key does): that copy must go too.
    let control = session.control();
    session.expect(
        control,
        &Request::keyslot_evict(&KeyDesc::raw_aes_256_xts(SLOT, &key, UNIT, 8)),
        Status::Ok,
    );
    session.expect(control, &Request::get_crypto_modes(), Status::Ok);
    for queue in 0..control {
        session.expect(queue, &Request::get_id(), Status::Ok);
        session.expect(queue, &Request::read(0, 4096), Status::Ok);
    }
    std::thread::sleep(Duration::from_millis(200));
    let hits = scan(session.device.process().id(), &needles);
    assert!(
        hits.is_empty(),
        "{} copies of the evicted key remain:\n{}",
        hits.len(),
        summary(&hits)
    );
    session.finish();
}

#[test]
fn a_reset_leaves_no_copy_in_device_memory() {
    if !is_root() {
        eprintln!("skipped: reading another process's memory needs root");
        return;
    }
    let mut session = Session::start(64 * MIB, &["--queues", "2", "--persist"]);
    let key = random_key();
    let needles = needles(&key);
    let program = Request::keyslot_program(&KeyDesc::raw_aes_256_xts(SLOT, &key, UNIT, 8));
    program_and_use(&mut session, &program, &needles);

    // Disconnect: the device resets (evicts every slot) and waits for the
    // next connection.
    let trace = session.trace.clone();
    drop(session.queues);
    drop(session.frontend);
    let reset = wait_until(Duration::from_secs(10), || {
        std::fs::read_to_string(&trace)
            .is_ok_and(|text| text.lines().any(|line| line.contains("\"reset\"")))
    });
    assert!(
        reset,
        "no reset evict in the trace\n{}",
        session.device.logs()
    );
    std::thread::sleep(Duration::from_millis(200));
    let hits = scan(session.device.process().id(), &needles);
    assert!(
        hits.is_empty(),
        "{} copies of the key remain after the reset:\n{}",
        hits.len(),
        summary(&hits)
    );
}

/// A hardware key unlikely to occur in memory by chance, and its inline
/// encryption key: the third known answer of
/// `emulator/tests/hw_kdf_vectors.py` (raw key byte i = 37 i + 11).
const HW_KEY_INLINE_KEY: &str = "eadf1e1a504a2616470b99e425358a3faf62d1ca2375e8ed0e2731774993a787\
                                 6a697cbe074cc6f068e119ae019db9c14603197fcc683ec05b52924d02a4b51d";

#[test]
fn an_evicted_wrapped_key_leaves_no_copy_in_device_memory() {
    if !is_root() {
        eprintln!("skipped: reading another process's memory needs root");
        return;
    }
    let hw_key: [u8; 32] = core::array::from_fn(|i| (37 * i as u8).wrapping_add(11));
    let inline: [u8; 64] = (0..HW_KEY_INLINE_KEY.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&HW_KEY_INLINE_KEY[i..i + 2], 16).expect("hex"))
        .collect::<Vec<u8>>()
        .try_into()
        .expect("64 bytes");
    let mut needles = needles(&inline);
    needles.push(("hardware key".to_owned(), hw_key.to_vec()));
    for (round, block) in round_keys(&hw_key).iter().enumerate() {
        needles.push((format!("hardware key rk[{round}]"), block.to_vec()));
    }
    let mut session = Session::start(64 * MIB, &["--queues", "2"]);
    let control = session.control();
    let blob_answer = |session: &mut Session, request: &Request| -> [u8; KEY_BLOB_SIZE] {
        let completion = session.expect(control, request, Status::Ok);
        completion.data[..KEY_BLOB_SIZE]
            .try_into()
            .expect("a key_blob")
    };
    let raw = key_blob(&hw_key).expect("fits");
    let long_term = blob_answer(&mut session, &Request::import_key(&raw));
    let ephemeral = blob_answer(&mut session, &Request::prepare_key(&long_term));
    session.expect(control, &Request::derive_sw_secret(&ephemeral), Status::Ok);
    let mut desc = KeyDesc::raw_aes_256_xts(SLOT, &[0; 64], UNIT, 8);
    desc.key_type = KeyType::HardwareWrapped.to_wire();
    desc.key_size = u32::from_le_bytes(ephemeral[..4].try_into().expect("4 bytes"));
    desc.bytes.copy_from_slice(&ephemeral[4..]);
    program_and_use(&mut session, &Request::keyslot_program(&desc), &needles);

    session.expect(control, &Request::keyslot_evict_slot(SLOT), Status::Ok);
    session.expect(control, &Request::get_crypto_modes(), Status::Ok);
    for queue in 0..control {
        session.expect(queue, &Request::get_id(), Status::Ok);
        session.expect(queue, &Request::read(0, 4096), Status::Ok);
    }
    std::thread::sleep(Duration::from_millis(200));
    let hits = scan(session.device.process().id(), &needles);
    assert!(
        hits.is_empty(),
        "{} copies of the hardware or inline key remain after the eviction:\n{}",
        hits.len(),
        summary(&hits)
    );
    session.finish();
}
