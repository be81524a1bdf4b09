//! The engine streaming from memory, against a copy of the same bytes:
//! what ICE on costs where ICE off copies, at 128 KiB sequential read.
//!
//! The device serves a read with ICE off by copying from its mapping of
//! the image into guest memory, and with ICE on by decrypting from the
//! mapping into guest memory: the same bytes in and out, one pass each.
//! Both read a source that is not in the CPU's caches (page cache pages,
//! 4 KiB each) and write a ring of request buffers. This measures the two
//! passes alone, on one thread, in the same run: `memcpy` and the engine's
//! decrypt, from a shared mapping of a file far larger than the last-level
//! cache into a ring of [`RING_SLOTS`] request buffers, as a queue
//! [`RING_SLOTS`] deep fills.
//!
//! Their ratio is the part of the device's ICE on/ICE off ratio that the
//! cipher sets: the device adds the same request handling to both, which
//! moves its ratio from this one towards 1 (benches/README.md, *Where the
//! time goes*, works the 128 KiB read figure out from it).

use super::{KEY, thread_cpu_time};
use icelab_emulator::engine::xts::{Direction, XtsKey};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

/// Bytes of the source: many times any last-level cache, so that every
/// pass reads from memory.
pub const SOURCE_BYTES: usize = 512 << 20;
/// Bytes per request, as the 128 KiB sequential loads of `bench all`.
pub const REQUEST_BYTES: usize = 128 << 10;
/// Bytes per data unit (fscrypt's usual 4 KiB).
pub const DATA_UNIT_BYTES: usize = 4096;
/// Request buffers the destination cycles through (the loads' queue depth).
pub const RING_SLOTS: usize = 32;

/// The figures, GB/s (1e9 bytes) per CPU-second of the one thread.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StreamRow {
    /// Bytes per request.
    pub request_bytes: usize,
    /// Bytes per data unit.
    pub data_unit_size: usize,
    /// Bytes of the source.
    pub source_bytes: usize,
    /// `memcpy` (ICE off's pass), GB/s.
    pub memcpy_gb_per_s: f64,
    /// The engine's decrypt (ICE on's pass), GB/s.
    pub engine_gb_per_s: f64,
    /// engine / memcpy: the best ICE on/ICE off ratio of a device that did
    /// nothing else per request.
    pub ratio: f64,
}

/// A mapping of `len` bytes, unmapped on drop: of a file the bench wrote
/// (the source: page cache pages, as the device's image mapping), or
/// anonymous in 4 KiB pages (the request buffers, as guest memory).
struct Pages {
    start: *mut u8,
    len: usize,
    /// Mapped writable (the anonymous ring; the file's is read-only).
    writable: bool,
}

impl Pages {
    /// A temporary file of `len` bytes of `fill`, written, then mapped
    /// shared and read-only with every page in (the file is unlinked at
    /// once; the mapping keeps it).
    fn file(len: usize, fill: u8) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir();
        let fail = |what: &str, error: &dyn std::fmt::Display| {
            anyhow::anyhow!(
                "{what} a {} MiB file in {} for the streaming measurement: {error}; \
                 free space there or point TMPDIR elsewhere",
                len >> 20,
                dir.display()
            )
        };
        let mut file = tempfile::tempfile_in(&dir).map_err(|e| fail("cannot create", &e))?;
        let chunk = vec![fill; 1 << 20];
        for piece in (0..len).step_by(chunk.len()) {
            let n = chunk.len().min(len - piece);
            file.write_all(&chunk[..n])
                .map_err(|e| fail("cannot write", &e))?;
        }
        Self::map(
            len,
            libc::PROT_READ,
            libc::MAP_SHARED | libc::MAP_POPULATE,
            file.as_raw_fd(),
        )
        .map_err(|e| fail("cannot map", &e))
    }

    /// Anonymous memory of `len` bytes of `fill`, in 4 KiB pages (a huge
    /// page would spare page walks that guest memory pays; a hint).
    fn anonymous(len: usize, fill: u8) -> anyhow::Result<Self> {
        let pages = Self::map(
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
        )
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot map {} MiB of memory for the streaming measurement: {e}",
                len >> 20
            )
        })?;
        // SAFETY: the range is the mapping just made.
        unsafe { libc::madvise(pages.start.cast(), len, libc::MADV_NOHUGEPAGE) };
        // SAFETY: the mapping is readable and writable, `len` bytes, and
        // nothing else refers to it yet.
        unsafe { std::ptr::write_bytes(pages.start, fill, len) };
        Ok(pages)
    }

    fn map(len: usize, protection: i32, flags: i32, fd: i32) -> std::io::Result<Self> {
        // SAFETY: a fresh mapping at an address the kernel picks; `fd` is
        // open (or -1 for anonymous memory).
        let start = unsafe { libc::mmap(std::ptr::null_mut(), len, protection, flags, fd, 0) };
        if start == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Self {
            start: start.cast(),
            len,
            writable: protection & libc::PROT_WRITE != 0,
        })
    }

    fn as_slice(&self) -> &[u8] {
        // SAFETY: `len` mapped bytes, all initialised (written before the
        // mapping or in `anonymous`), alive as long as `self`.
        unsafe { std::slice::from_raw_parts(self.start, self.len) }
    }

    /// # Panics
    /// On the read-only file mapping, where a store would fault.
    fn as_mut_slice(&mut self) -> &mut [u8] {
        assert!(self.writable, "the streaming source is mapped read-only");
        // SAFETY: as in `as_slice`, mapped writable (checked), and borrowed
        // mutably through `self`.
        unsafe { std::slice::from_raw_parts_mut(self.start, self.len) }
    }
}

impl Drop for Pages {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, no longer borrowed.
        unsafe { libc::munmap(self.start.cast(), self.len) };
    }
}

/// One side of the measurement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Memcpy,
    Engine,
}

/// Measures the two sides `repeats` times each, alternating, for
/// `duration` each, and keeps the best of each.
pub fn measure(repeats: u32, duration: Duration) -> anyhow::Result<StreamRow> {
    measure_sized(SOURCE_BYTES, repeats, duration)
}

fn measure_sized(
    source_bytes: usize,
    repeats: u32,
    duration: Duration,
) -> anyhow::Result<StreamRow> {
    let source = Pages::file(source_bytes, 0x5a)?;
    let mut ring = Pages::anonymous(RING_SLOTS * REQUEST_BYTES, 0xa5)?;
    let xts = XtsKey::new(&KEY);
    let sides = [Side::Memcpy, Side::Engine];
    let mut best = [0f64; 2];
    for _ in 0..repeats {
        for (side, best) in sides.iter().zip(&mut best) {
            let rate = rate(
                *side,
                &xts,
                source.as_slice(),
                ring.as_mut_slice(),
                duration,
            );
            *best = best.max(rate);
        }
    }
    let [memcpy, engine] = best;
    Ok(StreamRow {
        request_bytes: REQUEST_BYTES,
        data_unit_size: DATA_UNIT_BYTES,
        source_bytes,
        memcpy_gb_per_s: memcpy / 1e9,
        engine_gb_per_s: engine / 1e9,
        ratio: engine / memcpy,
    })
}

/// Bytes per CPU-second of `side`, walking `source` front to back (and
/// round again) in requests, each into the next slot of `ring`.
fn rate(side: Side, xts: &XtsKey, source: &[u8], ring: &mut [u8], duration: Duration) -> f64 {
    let requests = source.chunks_exact(REQUEST_BYTES);
    let mut slots = ring.chunks_exact_mut(REQUEST_BYTES).collect::<Vec<_>>();
    let (wall, cpu) = (Instant::now(), thread_cpu_time());
    let mut bytes = 0u64;
    'timed: loop {
        for (index, request) in requests.clone().enumerate() {
            let slot = &mut slots[index % RING_SLOTS];
            match side {
                Side::Memcpy => slot.copy_from_slice(request),
                Side::Engine => xts.crypt_from(
                    Direction::Decrypt,
                    request,
                    slot,
                    DATA_UNIT_BYTES,
                    index as u128 * (REQUEST_BYTES / DATA_UNIT_BYTES) as u128,
                ),
            }
            bytes += REQUEST_BYTES as u64;
            if index % RING_SLOTS == RING_SLOTS - 1 && wall.elapsed() >= duration {
                break 'timed;
            }
        }
    }
    let cpu = thread_cpu_time() - cpu;
    std::hint::black_box(&slots);
    bytes as f64 / cpu.as_secs_f64().max(f64::MIN_POSITIVE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[should_panic(expected = "mapped read-only")]
    fn the_source_is_never_written() {
        let mut source = Pages::file(REQUEST_BYTES, 0x5a).unwrap();
        source.as_mut_slice();
    }

    #[test]
    fn every_side_moves_bytes_and_the_ratio_divides_them() {
        let row =
            measure_sized(8 * RING_SLOTS * REQUEST_BYTES, 1, Duration::from_millis(20)).unwrap();
        assert!(row.memcpy_gb_per_s > 0.0, "{row:?}");
        assert!(row.engine_gb_per_s > 0.0, "{row:?}");
        assert!((row.ratio - row.engine_gb_per_s / row.memcpy_gb_per_s).abs() < 1e-12);
        assert_eq!(row.source_bytes, 8 * RING_SLOTS * REQUEST_BYTES);
    }

    #[test]
    fn the_engine_side_decrypts_what_memcpy_copies() {
        // The ring holds what each side wrote last: each slot's request
        // decrypted under its own DUNs, not a copy of the source (the
        // source repeats one byte, so only the DUNs tell slots apart).
        let source = Pages::file(RING_SLOTS * REQUEST_BYTES, 0x5a).unwrap();
        let mut ring = Pages::anonymous(RING_SLOTS * REQUEST_BYTES, 0).unwrap();
        let xts = XtsKey::new(&KEY);
        rate(
            Side::Engine,
            &xts,
            source.as_slice(),
            ring.as_mut_slice(),
            Duration::ZERO,
        );
        let units_per_request = (REQUEST_BYTES / DATA_UNIT_BYTES) as u128;
        let slots = source.as_slice().chunks_exact(REQUEST_BYTES);
        let written = ring.as_slice().chunks_exact(REQUEST_BYTES);
        for (index, (request, slot)) in slots.zip(written).enumerate() {
            let mut expected = request.to_vec();
            let dun = index as u128 * units_per_request;
            xts.crypt_serial(Direction::Decrypt, &mut expected, DATA_UNIT_BYTES, dun);
            assert!(
                slot == &expected[..],
                "slot {index}: not request {index} decrypted"
            );
        }
        rate(
            Side::Memcpy,
            &xts,
            source.as_slice(),
            ring.as_mut_slice(),
            Duration::ZERO,
        );
        assert_eq!(ring.as_slice(), source.as_slice());
    }
}
