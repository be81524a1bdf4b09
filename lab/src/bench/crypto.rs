//! `icelab bench crypto`: the engine's AES-256-XTS against OpenSSL's,
//! measured in the same run, so only the ratios matter.
//!
//! Six sides, one data unit per call, 512 and 4096 bytes, on one thread
//! and on every CPU (N threads, each with its own buffer):
//!
//! - the engine ([`XtsKey::new`]'s backend: the VAES code where the CPU
//!   has VAES, else OpenSSL);
//! - the engine's OpenSSL backend (EVP, the DUN as IV per unit);
//! - the `aes` crate backend (the engine's loop before OpenSSL);
//! - OpenSSL in process: the vendored library the engine links (`evp`),
//!   as `openssl speed` drives it (IV set once), and with the IV set per
//!   data unit as the engine must;
//! - `openssl speed -evp aes-256-xts` of the newest `openssl` binary found
//!   (the host's, the build root's: `speed`), with `-multi N` for N.
//!
//! The engine's ratio is to the faster OpenSSL figure. Time is counted the
//! way `openssl speed` does: on one thread, bytes per second of CPU time
//! (openssl divides by its user CPU time), which keeps other load on a
//! shared machine out of the figure; on N threads, bytes per second of
//! wall-clock time summed over the threads. The sides alternate,
//! `--repeats` times each, and the best of each side counts, so drift hits
//! all alike.

mod evp;
mod speed;
mod stream;

pub use stream::StreamRow;

use anyhow::{Context, bail};
use icelab_emulator::engine::xts::{Backend, Direction, XtsKey};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Barrier;
use std::time::{Duration, Instant};

/// Data unit sizes measured.
const DATA_UNIT_SIZES: [usize; 2] = [512, 4096];

/// The key every side uses.
const KEY: [u8; 64] = {
    let mut key = [0u8; 64];
    let mut i = 0;
    while i < 64 {
        key[i] = (i as u8).wrapping_mul(0x9d) ^ 0x5c;
        i += 1;
    }
    key
};
/// Options of `icelab bench crypto`.
#[derive(clap::Args, Debug)]
pub struct CryptoArgs {
    /// Seconds per measurement (each side, each run).
    #[arg(long, default_value_t = 2)]
    pub seconds: u32,
    /// Measurements per side and configuration; the sides alternate, the best of each counts.
    #[arg(long, default_value_t = 3)]
    pub repeats: u32,
    /// Write the figures as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

/// A checked [`CryptoArgs`].
#[derive(Debug, PartialEq, Eq)]
struct Config {
    seconds: u32,
    repeats: u32,
    /// Thread counts: 1, and every CPU when there is more than one.
    threads: Vec<usize>,
    json: Option<PathBuf>,
}

impl Config {
    fn new(args: CryptoArgs, cpus: usize) -> anyhow::Result<Self> {
        if !(1..=3600).contains(&args.seconds) {
            bail!("--seconds {}: use 1 to 3600", args.seconds);
        }
        if !(1..=100).contains(&args.repeats) {
            bail!("--repeats {}: use 1 to 100", args.repeats);
        }
        let mut threads = vec![1];
        if cpus > 1 {
            threads.push(cpus);
        }
        Ok(Self {
            seconds: args.seconds,
            repeats: args.repeats,
            threads,
            json: args.json,
        })
    }
}

impl TryFrom<CryptoArgs> for Config {
    type Error = anyhow::Error;

    fn try_from(args: CryptoArgs) -> anyhow::Result<Self> {
        let cpus = std::thread::available_parallelism().map_or(1, usize::from);
        Self::new(args, cpus)
    }
}

/// The figures of one configuration, in bytes per second.
#[derive(Debug, Default)]
struct Row {
    data_unit_size: usize,
    threads: usize,
    engine: f64,
    engine_openssl: f64,
    aes_crate: f64,
    evp: f64,
    evp_per_unit: f64,
    speed: f64,
}

impl Row {
    /// The faster OpenSSL figure.
    fn openssl(&self) -> f64 {
        self.evp.max(self.speed)
    }

    fn ratio(&self) -> f64 {
        self.engine / self.openssl()
    }
}

/// The JSON document of `icelab bench crypto` (and the `engine` part of
/// `icelab bench all`'s).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CryptoDocument {
    /// The CPU model.
    pub cpu: String,
    /// The OpenSSL versions compared with: in process, and the binary.
    pub openssl: String,
    /// Seconds per measurement.
    pub seconds: u32,
    /// Measurements per side and configuration.
    pub repeats: u32,
    /// What the figures count.
    pub unit: String,
    /// One row per data unit size and thread count.
    pub rows: Vec<EngineRow>,
    /// The engine streaming 128 KiB requests from memory against `memcpy`
    /// (absent from runs made before it was measured).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<StreamRow>,
}

/// The figures of one configuration, in GB/s.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EngineRow {
    /// Bytes per data unit.
    pub data_unit_size: usize,
    /// Threads on each side.
    pub threads: usize,
    /// The engine, GB/s.
    pub engine_gb_per_s: f64,
    /// The faster of the OpenSSL figures, GB/s.
    pub openssl_gb_per_s: f64,
    /// engine / openssl.
    pub ratio: f64,
    /// The engine's OpenSSL backend (when the engine itself uses another
    /// one), GB/s.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub engine_openssl_gb_per_s: f64,
    /// The `aes` crate backend, GB/s.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub aes_crate_gb_per_s: f64,
    /// OpenSSL in process (the vendored library), GB/s.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub openssl_in_process_gb_per_s: f64,
    /// OpenSSL in process with the IV set per data unit, as the engine
    /// does, GB/s.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub openssl_iv_per_unit_gb_per_s: f64,
    /// `openssl speed` of the newest binary found, GB/s.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub openssl_speed_gb_per_s: f64,
}

/// A figure a stored run from before it was measured lacks (written back
/// as it was read).
fn is_zero(value: &f64) -> bool {
    *value == 0.0
}

impl From<&Row> for EngineRow {
    fn from(row: &Row) -> Self {
        Self {
            data_unit_size: row.data_unit_size,
            threads: row.threads,
            engine_gb_per_s: row.engine / 1e9,
            openssl_gb_per_s: row.openssl() / 1e9,
            ratio: row.ratio(),
            engine_openssl_gb_per_s: row.engine_openssl / 1e9,
            aes_crate_gb_per_s: row.aes_crate / 1e9,
            openssl_in_process_gb_per_s: row.evp / 1e9,
            openssl_iv_per_unit_gb_per_s: row.evp_per_unit / 1e9,
            openssl_speed_gb_per_s: row.speed / 1e9,
        }
    }
}

/// Runs the measurements, prints the table and writes the JSON file.
pub fn run(args: CryptoArgs) -> anyhow::Result<()> {
    let config = Config::try_from(args)?;
    let cache = crate::artifacts::cache_dir().ok();
    let binaries = speed::find(cache.as_deref())?;
    let binary = speed::newest(&binaries).context("no openssl binary")?;
    let versions = format!(
        "in process: {} (vendored, the engine's); openssl speed: {} ({})",
        evp::version(),
        binary.version,
        binary.origin
    );
    let cpu = super::cpu_model();
    let backend = XtsKey::new(&KEY).backend();
    let duration = Duration::from_secs(config.seconds.into());
    let mut rows = Vec::new();
    for &data_unit_size in &DATA_UNIT_SIZES {
        for &threads in &config.threads {
            let mut row = Row {
                data_unit_size,
                threads,
                ..Row::default()
            };
            for _ in 0..config.repeats {
                let engine = engine_rate(backend, data_unit_size, threads, duration);
                let engine_openssl = match backend {
                    Backend::OpenSsl => engine,
                    _ => engine_rate(Backend::OpenSsl, data_unit_size, threads, duration),
                };
                let aes_crate = engine_rate(Backend::AesCrate, data_unit_size, threads, duration);
                let evp = evp_rate(false, data_unit_size, threads, duration)?;
                let evp_per_unit = evp_rate(true, data_unit_size, threads, duration)?;
                let speed = binary.speed(data_unit_size, threads, config.seconds)?;
                tracing::info!(
                    "{data_unit_size}-byte units, {threads} thread(s): engine ({backend:?}) {:.2}, engine OpenSSL {:.2}, aes crate {:.2}, OpenSSL in process {:.2} (IV per unit {:.2}), openssl speed {:.2} GB/s",
                    engine / 1e9,
                    engine_openssl / 1e9,
                    aes_crate / 1e9,
                    evp / 1e9,
                    evp_per_unit / 1e9,
                    speed / 1e9
                );
                row.engine = row.engine.max(engine);
                row.engine_openssl = row.engine_openssl.max(engine_openssl);
                row.aes_crate = row.aes_crate.max(aes_crate);
                row.evp = row.evp.max(evp);
                row.evp_per_unit = row.evp_per_unit.max(evp_per_unit);
                row.speed = row.speed.max(speed);
            }
            rows.push(row);
        }
    }
    let stream = stream::measure(config.repeats, duration)?;
    print_table(&rows, &config, &cpu, &versions, backend);
    print_stream(&stream, &config);
    if let Some(path) = &config.json {
        let document = CryptoDocument {
            cpu,
            openssl: versions,
            seconds: config.seconds,
            repeats: config.repeats,
            unit: "GB/s (1e9 bytes), one data unit per call, best of the repeats; 1 thread: per CPU-second, several: per wall-clock second, as openssl speed counts; openssl_gb_per_s is the faster OpenSSL figure".to_owned(),
            rows: rows.iter().map(EngineRow::from).collect(),
            stream: Some(stream),
        };
        let text = super::baseline::encode(&document).context("encoding the figures as JSON")?;
        std::fs::write(path, text).with_context(|| {
            format!(
                "writing {}: check the directory exists and is writable",
                path.display()
            )
        })?;
    }
    Ok(())
}

fn print_table(rows: &[Row], config: &Config, cpu: &str, versions: &str, backend: Backend) {
    println!(
        "AES-256-XTS, one data unit per call, GB/s (1 thread: per CPU-second; several: per wall-clock second, as openssl speed counts)"
    );
    println!(
        "best of {} x {} s per side, alternating; CPU: {cpu}",
        config.repeats, config.seconds
    );
    println!("OpenSSL {versions}");
    println!(
        "engine: the {backend:?} backend (what the engine uses on this CPU); engine OpenSSL: the engine's OpenSSL backend, the same OpenSSL code as \"in process\" with the DUN set as IV per unit. OpenSSL's own figures set the IV once (\"IV per unit\" is OpenSSL doing what the engine's OpenSSL backend does). engine/OpenSSL is to the faster OpenSSL figure."
    );
    println!(
        "data unit  threads  engine  engine OpenSSL  aes crate  OpenSSL in process  IV per unit  openssl speed  engine/OpenSSL  engine/IV per unit"
    );
    for row in rows {
        println!(
            "{:>9}  {:>7}  {:>6.2}  {:>14.2}  {:>9.2}  {:>18.2}  {:>11.2}  {:>13.2}  {:>14.2}  {:>18.2}",
            row.data_unit_size,
            row.threads,
            row.engine / 1e9,
            row.engine_openssl / 1e9,
            row.aes_crate / 1e9,
            row.evp / 1e9,
            row.evp_per_unit / 1e9,
            row.speed / 1e9,
            row.ratio(),
            row.engine / row.evp_per_unit
        );
    }
}

fn print_stream(row: &StreamRow, config: &Config) {
    println!(
        "\nStreaming from memory: {} KiB requests of {}-byte units, front to back through a shared mapping of a {} MiB file (page cache, as the device maps its image), into {} request buffers; 1 thread, GB/s per CPU-second, best of {} x {} s per side, alternating",
        row.request_bytes >> 10,
        row.data_unit_size,
        row.source_bytes >> 20,
        stream::RING_SLOTS,
        config.repeats,
        config.seconds
    );
    println!("memcpy (ICE off's pass)  engine decrypt (ICE on's)  engine/memcpy");
    println!(
        "{:>23.2}  {:>25.2}  {:>13.2}",
        row.memcpy_gb_per_s, row.engine_gb_per_s, row.ratio
    );
}

/// The engine with `backend` on `threads` threads: one data unit per
/// [`XtsKey::crypt_serial`] call, the next DUN each time.
fn engine_rate(backend: Backend, data_unit_size: usize, threads: usize, duration: Duration) -> f64 {
    let xts = XtsKey::with_backend(&KEY, backend);
    let rates = on_threads(
        threads,
        |index| {
            let xts = &xts;
            let mut dun = (index as u128) << 64;
            move |buffer: &mut [u8]| {
                xts.crypt_serial(Direction::Encrypt, buffer, data_unit_size, dun);
                dun += 1;
            }
        },
        data_unit_size,
        duration,
    );
    rates.iter().sum()
}

/// OpenSSL in process on `threads` threads, a context each; with
/// `iv_per_unit`, the IV set to the next DUN for every data unit.
fn evp_rate(
    iv_per_unit: bool,
    data_unit_size: usize,
    threads: usize,
    duration: Duration,
) -> anyhow::Result<f64> {
    let mut contexts = (0..threads)
        .map(|_| evp::Evp::new(&KEY))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let failed = std::sync::atomic::AtomicBool::new(false);
    let contexts = std::sync::Mutex::new(contexts.iter_mut().collect::<Vec<_>>());
    let rates = on_threads(
        threads,
        |_| {
            let mut evp = contexts
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .pop();
            let failed = &failed;
            let mut dun = 0u128;
            move |buffer: &mut [u8]| {
                let done = evp.as_mut().is_some_and(|evp| match iv_per_unit {
                    true => evp.update_at(buffer, dun).is_ok(),
                    false => evp.update(buffer).is_ok(),
                });
                dun += 1;
                if !done {
                    failed.store(true, std::sync::atomic::Ordering::Relaxed);
                }
            }
        },
        data_unit_size,
        duration,
    );
    if failed.into_inner() {
        bail!("OpenSSL failed an AES-256-XTS update in process");
    }
    Ok(rates.iter().sum())
}

/// Runs `work` (one call per data unit, made per thread by `make` from the
/// thread's index) on `threads` threads for `duration` (wall clock, like
/// openssl's alarm), each on its own buffer. Bytes per second per thread,
/// counted like `openssl speed` (see the module documentation).
fn on_threads<W: FnMut(&mut [u8]) + Send>(
    threads: usize,
    make: impl Fn(usize) -> W + Sync,
    data_unit_size: usize,
    duration: Duration,
) -> Vec<f64> {
    let start = Barrier::new(threads);
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|index| {
                let (start, make) = (&start, &make);
                scope.spawn(move || {
                    let mut work = make(index);
                    let mut storage = vec![index as u8; data_unit_size + BUFFER_ALIGN];
                    let buffer = aligned(&mut storage, data_unit_size);
                    start.wait();
                    let (wall, cpu) = (Instant::now(), thread_cpu_time());
                    let mut units = 0u64;
                    while wall.elapsed() < duration {
                        for _ in 0..64 {
                            work(buffer);
                        }
                        units += 64;
                    }
                    let (wall, cpu) = (wall.elapsed(), thread_cpu_time() - cpu);
                    std::hint::black_box(&*buffer);
                    let bytes = units as f64 * data_unit_size as f64;
                    let time = if threads == 1 { cpu } else { wall };
                    bytes / time.as_secs_f64()
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|worker| {
                worker
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    })
}

/// Where every side's buffer starts: on a cache line, as the device's
/// I/O buffers (guest pages) do. Left where the allocator put it, a
/// buffer 16 bytes past a line split the engine's vector loads and
/// stores across lines: 6.1-6.9 GB/s at 512 bytes against 7.2 aligned
/// (the 256-bit loop, Zen 4, a scratch loop alternating the two).
const BUFFER_ALIGN: usize = 64;

/// The `len` bytes of `storage` (at least `len + BUFFER_ALIGN` long) that
/// start at its first [`BUFFER_ALIGN`]-aligned address.
fn aligned(storage: &mut [u8], len: usize) -> &mut [u8] {
    let skip = storage.as_ptr().align_offset(BUFFER_ALIGN);
    &mut storage[skip..skip + len]
}

/// CPU time used by the calling thread.
fn thread_cpu_time() -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid, writable timespec; CLOCK_THREAD_CPUTIME_ID
    // exists on every Linux the lab runs on, and on failure `now` stays 0.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(seconds: u32, repeats: u32) -> CryptoArgs {
        CryptoArgs {
            seconds,
            repeats,
            json: None,
        }
    }

    #[test]
    fn config_measures_one_thread_and_every_cpu() {
        let config = Config::new(args(2, 3), 8).unwrap();
        assert_eq!(config.threads, vec![1, 8]);
        assert_eq!((config.seconds, config.repeats), (2, 3));
        assert_eq!(Config::new(args(2, 3), 1).unwrap().threads, vec![1]);
    }

    #[test]
    fn config_rejects_zero_seconds_and_repeats() {
        let error = Config::new(args(0, 3), 2).unwrap_err().to_string();
        assert!(error.contains("--seconds 0"), "{error}");
        let error = Config::new(args(2, 0), 2).unwrap_err().to_string();
        assert!(error.contains("--repeats 0"), "{error}");
    }

    #[test]
    fn every_in_process_side_is_positive() {
        let available = Backend::ALL
            .into_iter()
            .filter(|backend| backend.is_available());
        for backend in available {
            assert!(engine_rate(backend, 512, 1, Duration::from_millis(20)) > 0.0);
            assert!(engine_rate(backend, 4096, 2, Duration::from_millis(20)) > 0.0);
        }
        for iv_per_unit in [false, true] {
            assert!(evp_rate(iv_per_unit, 512, 1, Duration::from_millis(20)).unwrap() > 0.0);
            assert!(evp_rate(iv_per_unit, 4096, 2, Duration::from_millis(20)).unwrap() > 0.0);
        }
    }
}
