//! `icelab bench device`: a load generator on the native vhost-user
//! frontend. It drives `icelab serve` (started here on a fresh image, or
//! any vhost-user-blk backend given with --socket) without a VM and
//! reports IOPS, MB/s, latency percentiles and the backend's CPU seconds
//! per GB. Several queue counts in one invocation give ratios measured in
//! the same run.

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use icelab_emulator::protocol::{CryptoMsg, Dun, KeyDesc, SECTOR_SIZE, Status};
use icelab_frontend::blk::{BlkQueue, Completion, Request, Tag};
use icelab_frontend::{Frontend, FrontendOptions};
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Access pattern.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Pattern {
    /// Sequential reads.
    Read,
    /// Sequential writes.
    Write,
    /// Random reads.
    Randread,
    /// Random writes.
    Randwrite,
    /// Random, half reads half writes.
    Randrw,
}

/// Options of `icelab bench device`.
#[derive(clap::Args, Debug)]
pub struct DeviceArgs {
    /// Queue counts to measure, one run each, e.g. 1,2 (each queue gets its own submitting thread).
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    pub queues: Vec<u16>,
    /// Block size, e.g. 4K or 128K.
    #[arg(long, default_value = "64K")]
    pub block_size: String,
    /// Requests in flight per queue.
    #[arg(long, default_value_t = 32)]
    pub depth: usize,
    /// Access pattern.
    #[arg(long, value_enum, default_value = "write")]
    pub pattern: Pattern,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
    /// Inline encryption: on (programmed keyslot, CRYPTO_IN/OUT) or off (plain IN/OUT).
    #[arg(long, default_value = "on")]
    pub ice: String,
    /// Image size (the region the load covers).
    #[arg(long, default_value = "1G")]
    pub size: String,
    /// Write the figures as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

/// Figures of one measurement.
#[derive(Debug)]
struct Measurement {
    queues: u16,
    requests: u64,
    bytes: u64,
    elapsed: Duration,
    latency: Histogram<u64>,
    device_cpu: Option<Duration>,
}

impl Measurement {
    fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / self.elapsed.as_secs_f64() / 1e6
    }

    fn iops(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    fn cpu_s_per_gb(&self) -> Option<f64> {
        self.device_cpu
            .map(|cpu| cpu.as_secs_f64() / (self.bytes as f64 / 1e9))
    }

    fn to_json(&self) -> Value {
        let us = |q: f64| self.latency.value_at_quantile(q) as f64 / 1000.0;
        json!({
            "queues": self.queues,
            "requests": self.requests,
            "bytes": self.bytes,
            "seconds": self.elapsed.as_secs_f64(),
            "iops": self.iops(),
            "mb_per_s": self.mb_per_s(),
            "latency_us": { "p50": us(0.5), "p99": us(0.99), "p99.9": us(0.999) },
            "device_cpu_s_per_gb": self.cpu_s_per_gb(),
        })
    }
}

/// Runs the measurements and prints a table with ratios to the first.
pub fn run(args: DeviceArgs) -> anyhow::Result<()> {
    let block_size = crate::serve::parse_size(&args.block_size)?;
    let size = crate::serve::parse_size(&args.size)?;
    let ice = match args.ice.as_str() {
        "on" => true,
        "off" => false,
        other => bail!("--ice {other:?}: use on or off"),
    };
    if block_size % 4096 != 0 || block_size > 8 << 20 {
        bail!("--block-size must be a multiple of 4K up to 8M (the device's seg_max x size_max)");
    }
    if args.depth == 0 || args.queues.is_empty() || args.queues.contains(&0) {
        bail!("--depth and every --queues count must be at least 1");
    }
    let mut measurements = Vec::new();
    for &queues in &args.queues {
        let dir = tempfile::Builder::new().prefix("icelab-bench-").tempdir()?;
        let mut device = spawn_device(dir.path(), size, queues)?;
        let result = measure(&args, dir.path(), queues, block_size, size, ice, &device);
        let _ = device.kill();
        let _ = device.wait();
        measurements.push(result?);
    }
    print_table(&args, block_size, ice, &measurements);
    if let Some(path) = &args.json {
        let document = json!({
            "cpu": crate::bench::cpu_model(),
            "pattern": format!("{:?}", args.pattern).to_lowercase(),
            "block_size": block_size,
            "depth": args.depth,
            "ice": ice,
            "runs": measurements.iter().map(Measurement::to_json).collect::<Vec<_>>(),
        });
        std::fs::write(path, serde_json::to_vec_pretty(&document)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

fn spawn_device(dir: &Path, size: u64, queues: u16) -> anyhow::Result<Child> {
    let exe = crate::self_exe();
    let socket = dir.join("icelab.sock");
    let log = std::fs::File::create(dir.join("device.log"))?;
    let child = Command::new(exe)
        .arg("serve")
        .arg("--image")
        .arg(dir.join("disk.img"))
        .args(["--size", &size.to_string(), "--queues", &queues.to_string()])
        .arg("--socket")
        .arg(&socket)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .context("cannot start icelab serve")?;
    Ok(child)
}

fn measure(
    args: &DeviceArgs,
    dir: &Path,
    queues: u16,
    block_size: u64,
    size: u64,
    ice: bool,
    device: &Child,
) -> anyhow::Result<Measurement> {
    let options = FrontendOptions {
        memory_size: (u64::from(queues) * args.depth as u64 * block_size * 2 + (16 << 20))
            .next_multiple_of(4096),
        queue_size: 256,
        num_queues: Some(queues),
        ..FrontendOptions::default()
    };
    let mut frontend = Frontend::connect(dir.join("icelab.sock"), &options).with_context(|| {
        format!(
            "cannot connect to the device; its log:\n{}",
            crate::lab::run::tail(&dir.join("device.log"), 20)
        )
    })?;
    let mut handles: Vec<BlkQueue> = frontend
        .take_queues()
        .into_iter()
        .map(BlkQueue::new)
        .collect::<Result<_, _>>()?;
    if ice {
        let mut key = zeroize::Zeroizing::new([0u8; 64]);
        rand::fill(&mut key[..]);
        let desc = KeyDesc::raw_aes_256_xts(0, &key, 4096, 8);
        let done = handles[0]
            .submit_and_wait(&Request::keyslot_program(&desc), Duration::from_secs(10))?;
        if done.status() != Some(Status::Ok) {
            bail!(
                "the device refused to program a keyslot (status {})",
                done.status
            );
        }
    }
    let cpu_before = process_cpu(device.id());
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(args.seconds);
    let region = size / u64::from(queues);
    let results: Vec<anyhow::Result<(u64, u64, Histogram<u64>)>> = std::thread::scope(|scope| {
        let workers: Vec<_> = handles
            .iter_mut()
            .enumerate()
            .map(|(index, queue)| {
                let start = index as u64 * region;
                scope.spawn(move || drive(queue, args, start, region, block_size, ice, deadline))
            })
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a load thread panicked")))
            })
            .collect()
    });
    let elapsed = started.elapsed();
    let cpu_after = process_cpu(device.id());
    let mut latency = Histogram::<u64>::new(3)?;
    let (mut requests, mut bytes) = (0, 0);
    for result in results {
        let (r, b, h) = result?;
        requests += r;
        bytes += b;
        latency.add(h)?;
    }
    let device_cpu = cpu_before
        .zip(cpu_after)
        .map(|(before, after)| after.saturating_sub(before));
    Ok(Measurement {
        queues,
        requests,
        bytes,
        elapsed,
        latency,
        device_cpu,
    })
}

/// One queue's load loop: keeps `depth` requests in flight until the
/// deadline, then drains.
fn drive(
    queue: &mut BlkQueue,
    args: &DeviceArgs,
    start: u64,
    region: u64,
    block_size: u64,
    ice: bool,
    deadline: Instant,
) -> anyhow::Result<(u64, u64, Histogram<u64>)> {
    let mut histogram = Histogram::<u64>::new(3)?;
    let data = {
        let mut data = vec![0u8; block_size as usize];
        rand::fill(&mut data[..]);
        data
    };
    let blocks = (region / block_size).max(1);
    let mut next_block = 0u64;
    let mut in_flight: VecDeque<Tag> = VecDeque::new();
    let (mut requests, mut bytes) = (0u64, 0u64);
    let mut n = 0u64;
    loop {
        let open = Instant::now() < deadline;
        while open && in_flight.len() < args.depth {
            let block = match args.pattern {
                Pattern::Read | Pattern::Write => {
                    next_block = (next_block + 1) % blocks;
                    next_block
                }
                _ => rand::random_range(0..blocks),
            };
            let offset = start + block * block_size;
            let sector = offset / SECTOR_SIZE;
            let write = match args.pattern {
                Pattern::Write | Pattern::Randwrite => true,
                Pattern::Read | Pattern::Randread => false,
                Pattern::Randrw => n.is_multiple_of(2),
            };
            n += 1;
            let msg = CryptoMsg {
                slot: 0,
                reserved: 0,
                dun: Dun::from_u64(offset / 4096),
            };
            let request = match (ice, write) {
                (true, true) => Request::crypto_write(sector, &msg, data.clone()),
                (true, false) => Request::crypto_read(sector, &msg, block_size as u32),
                (false, true) => Request::write(sector, data.clone()),
                (false, false) => Request::read(sector, block_size as u32),
            };
            in_flight.push_back(queue.submit(&request)?);
        }
        let Some(tag) = in_flight.pop_front() else {
            break;
        };
        let completion: Completion = queue.wait_for(tag, Duration::from_secs(30))?;
        if completion.status() != Some(Status::Ok) {
            bail!(
                "the device answered {:?} with status {}",
                completion.request_type,
                completion.status
            );
        }
        histogram.record(completion.latency.as_nanos() as u64)?;
        requests += 1;
        bytes += block_size;
    }
    Ok((requests, bytes, histogram))
}

/// CPU time (user + system) of a process, from /proc/PID/stat.
fn process_cpu(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Fields 14 and 15 of stat(5), counted from the state field (3).
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (hz > 0).then(|| Duration::from_secs_f64(ticks as f64 / hz as f64))
}

fn print_table(args: &DeviceArgs, block_size: u64, ice: bool, runs: &[Measurement]) {
    println!(
        "icelab bench device: {:?}, {} KiB blocks, depth {} per queue, ICE {}, {} s each",
        args.pattern,
        block_size / 1024,
        args.depth,
        if ice { "on" } else { "off" },
        args.seconds
    );
    println!(
        "{:>6} {:>10} {:>10} {:>9} {:>9} {:>9} {:>12} {:>8}",
        "queues", "IOPS", "MB/s", "p50 us", "p99 us", "p99.9 us", "dev CPU s/GB", "ratio"
    );
    let base = runs.first().map(Measurement::mb_per_s).unwrap_or(1.0);
    for run in runs {
        let us = |q: f64| run.latency.value_at_quantile(q) as f64 / 1000.0;
        println!(
            "{:>6} {:>10.0} {:>10.1} {:>9.0} {:>9.0} {:>9.0} {:>12} {:>7.2}x",
            run.queues,
            run.iops(),
            run.mb_per_s(),
            us(0.5),
            us(0.99),
            us(0.999),
            run.cpu_s_per_gb()
                .map_or("-".to_owned(), |v| format!("{v:.3}")),
            run.mb_per_s() / base
        );
    }
}
