//! `icelab bench crypto`: the engine's AES-256-XTS against
//! `openssl speed -evp aes-256-xts`, measured in the same run, so only the ratio matters.
//!
//! Both sides process one data unit per call, 512 and 4096 bytes, on one
//! thread and on every CPU (N threads, each with its own buffer, against
//! `openssl speed -multi N`). Both sides count time the way `openssl speed`
//! does: on one thread, bytes per second of CPU time (openssl divides by
//! its user CPU time), which keeps other load on a shared machine out of
//! the figure; on N threads, bytes per second of wall-clock time summed
//! over the threads (openssl's `-multi` children count elapsed time).
//! Engine and openssl measurements alternate, `--repeats` times each, and
//! the best of each side counts, so drift hits both alike.

use anyhow::{Context, bail};
use icelab_emulator::engine::xts::{Direction, XtsKey};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Barrier;
use std::time::{Duration, Instant};

/// Data unit sizes measured.
const DATA_UNIT_SIZES: [usize; 2] = [512, 4096];

/// Options of `icelab bench crypto`.
#[derive(clap::Args, Debug)]
pub struct CryptoArgs {
    /// Seconds per measurement (each engine and each openssl run).
    #[arg(long, default_value_t = 2)]
    pub seconds: u32,
    /// Measurements per side and configuration; engine and openssl alternate, the best of each counts.
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
#[derive(Debug)]
struct Row {
    data_unit_size: usize,
    threads: usize,
    engine: f64,
    openssl: f64,
}

impl Row {
    fn ratio(&self) -> f64 {
        self.engine / self.openssl
    }
}

/// The JSON document of `icelab bench crypto` (and the `engine` part of
/// `icelab bench all`'s).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CryptoDocument {
    /// The CPU model.
    pub cpu: String,
    /// `openssl version`.
    pub openssl: String,
    /// Seconds per measurement.
    pub seconds: u32,
    /// Measurements per side and configuration.
    pub repeats: u32,
    /// What the figures count.
    pub unit: String,
    /// One row per data unit size and thread count.
    pub rows: Vec<EngineRow>,
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
    /// `openssl speed`, GB/s.
    pub openssl_gb_per_s: f64,
    /// engine / openssl.
    pub ratio: f64,
}

impl From<&Row> for EngineRow {
    fn from(row: &Row) -> Self {
        Self {
            data_unit_size: row.data_unit_size,
            threads: row.threads,
            engine_gb_per_s: row.engine / 1e9,
            openssl_gb_per_s: row.openssl / 1e9,
            ratio: row.ratio(),
        }
    }
}

/// Runs the measurements, prints the table and writes the JSON file.
pub fn run(args: CryptoArgs) -> anyhow::Result<()> {
    let config = Config::try_from(args)?;
    let openssl_version = openssl_version()?;
    let cpu = super::cpu_model();
    let mut rows = Vec::new();
    for &data_unit_size in &DATA_UNIT_SIZES {
        for &threads in &config.threads {
            let mut row = Row {
                data_unit_size,
                threads,
                engine: 0.0,
                openssl: 0.0,
            };
            for _ in 0..config.repeats {
                let engine = engine_rate(
                    data_unit_size,
                    threads,
                    Duration::from_secs(config.seconds.into()),
                );
                let openssl = openssl_rate(data_unit_size, threads, config.seconds)?;
                tracing::info!(
                    "{data_unit_size}-byte units, {threads} thread(s): engine {:.2} GB/s, openssl {:.2} GB/s",
                    engine / 1e9,
                    openssl / 1e9
                );
                row.engine = row.engine.max(engine);
                row.openssl = row.openssl.max(openssl);
            }
            rows.push(row);
        }
    }
    print_table(&rows, &config, &cpu, &openssl_version);
    if let Some(path) = &config.json {
        let document = CryptoDocument {
            cpu,
            openssl: openssl_version,
            seconds: config.seconds,
            repeats: config.repeats,
            unit: "GB/s (1e9 bytes), one data unit per call, best of the repeats; 1 thread: per CPU-second, several: per wall-clock second, as openssl speed counts".to_owned(),
            rows: rows.iter().map(EngineRow::from).collect(),
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

fn print_table(rows: &[Row], config: &Config, cpu: &str, openssl_version: &str) {
    println!(
        "AES-256-XTS, one data unit per call, GB/s (1 thread: per CPU-second; several: per wall-clock second, as openssl speed counts)"
    );
    println!(
        "best of {} x {} s per side, alternating; CPU: {cpu}; {openssl_version}",
        config.repeats, config.seconds
    );
    println!("data unit  threads  engine GB/s  openssl GB/s  engine/openssl");
    for row in rows {
        println!(
            "{:>9}  {:>7}  {:>11.2}  {:>12.2}  {:>14.2}",
            row.data_unit_size,
            row.threads,
            row.engine / 1e9,
            row.openssl / 1e9,
            row.ratio()
        );
    }
}

/// The engine on `threads` threads for `duration` (wall clock, like
/// openssl's alarm), each thread encrypting its own buffer of one data unit
/// per [`XtsKey::crypt_serial`] call with the next DUN. Bytes per second,
/// counted like `openssl speed` (see the module documentation): per CPU
/// second on one thread, per wall-clock second summed over several.
fn engine_rate(data_unit_size: usize, threads: usize, duration: Duration) -> f64 {
    let key: [u8; 64] = core::array::from_fn(|i| (i as u8).wrapping_mul(0x9d) ^ 0x5c);
    let xts = XtsKey::new(&key);
    let start = Barrier::new(threads);
    let rates = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|index| {
                let (xts, start) = (&xts, &start);
                scope.spawn(move || {
                    let mut buffer = vec![index as u8; data_unit_size];
                    let mut dun = (index as u128) << 64;
                    start.wait();
                    let (wall, cpu) = (Instant::now(), thread_cpu_time());
                    let mut units = 0u64;
                    while wall.elapsed() < duration {
                        for _ in 0..64 {
                            xts.crypt_serial(Direction::Encrypt, &mut buffer, data_unit_size, dun);
                            dun += 1;
                        }
                        units += 64;
                    }
                    let (wall, cpu) = (wall.elapsed(), thread_cpu_time() - cpu);
                    std::hint::black_box(&buffer);
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
            .collect::<Vec<f64>>()
    });
    rates.iter().sum()
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

/// `openssl speed -evp aes-256-xts` on `threads` processes: bytes per
/// second as openssl reports it (summed over processes with `-multi`).
fn openssl_rate(data_unit_size: usize, threads: usize, seconds: u32) -> anyhow::Result<f64> {
    let mut command = Command::new("openssl");
    command.args(["speed", "-evp", "aes-256-xts", "-bytes"]);
    command.arg(data_unit_size.to_string());
    command.arg("-seconds").arg(seconds.to_string());
    if threads > 1 {
        command.arg("-multi").arg(threads.to_string());
    }
    let output = run_openssl(&mut command)?;
    parse_speed(&output).with_context(|| format!("reading the output of {command:?}:\n{output}"))
}

/// `openssl version`, which also checks that openssl is there.
fn openssl_version() -> anyhow::Result<String> {
    let output = run_openssl(Command::new("openssl").arg("version"))?;
    Ok(output.trim().to_owned())
}

/// Runs an openssl command and returns its standard output.
fn run_openssl(command: &mut Command) -> anyhow::Result<String> {
    let output = match command.output() {
        Ok(output) => output,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            bail!(
                "openssl is not installed (not found in PATH): run scripts/install-deps (as root) to install it"
            )
        }
        Err(error) => return Err(error).with_context(|| format!("running {command:?}")),
    };
    if !output.status.success() {
        bail!(
            "{command:?} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    String::from_utf8(output.stdout)
        .with_context(|| format!("{command:?} printed non-UTF-8 output"))
}

/// The rate in `openssl speed`'s last `AES-256-XTS` line, e.g.
/// `AES-256-XTS    3747901.44k`: thousands of bytes per second.
fn parse_speed(output: &str) -> anyhow::Result<f64> {
    let line = output
        .lines()
        .rev()
        .find(|line| line.trim_start().starts_with("AES-256-XTS"))
        .context("no AES-256-XTS line")?;
    let field = line
        .split_whitespace()
        .last()
        .context("empty AES-256-XTS line")?;
    let kilobytes: f64 = field
        .strip_suffix('k')
        .with_context(|| format!("rate {field:?} does not end in k (1000s of bytes per second)"))?
        .parse()
        .with_context(|| format!("rate {field:?} is not a number"))?;
    if !(kilobytes.is_finite() && kilobytes > 0.0) {
        bail!("rate {field:?} is not a positive number");
    }
    Ok(kilobytes * 1000.0)
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
    fn parses_single_and_multi_process_output() {
        let single = "version: 3.0.19\nThe 'numbers' are in 1000s of bytes per second processed.\n\
                      type           4096 bytes\nAES-256-XTS    3747901.44k\n";
        assert_eq!(parse_speed(single).unwrap(), 3_747_901_440.0);
        let multi = "Forked child 0\nForked child 1\nversion: 3.0.22\nAES-256-XTS    1043697.71k\n";
        assert_eq!(parse_speed(multi).unwrap(), 1_043_697_710.0);
    }

    #[test]
    fn rejects_output_without_a_rate() {
        for output in [
            "",
            "version: 3.0.19\n",
            "AES-256-XTS\n",
            "AES-256-XTS    3747901.44\n",
            "AES-256-XTS    fast\n",
            "AES-256-XTS    0.00k\n",
        ] {
            assert!(parse_speed(output).is_err(), "{output:?}");
        }
    }

    #[test]
    fn missing_openssl_names_the_fix() {
        let error = run_openssl(&mut Command::new("/nonexistent/openssl"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("scripts/install-deps"), "{error}");
    }

    #[test]
    fn engine_rate_is_positive() {
        assert!(engine_rate(512, 1, Duration::from_millis(20)) > 0.0);
        assert!(engine_rate(4096, 2, Duration::from_millis(20)) > 0.0);
    }
}
