//! What makes `icelab bench all` fair: the order of targets rotated every
//! round, medians of the rounds with their spread, CPU pinning of the
//! device and the load generator to different cores, and CPU time of both
//! sides of a measurement.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The order of `n` targets in `round` for the load at `load_index`:
/// rotated by one every round (and offset by the load), so over `n`
/// consecutive rounds each target goes first, and follows each other
/// target, once.
pub fn rotation(n: usize, round: usize, load_index: usize) -> Vec<usize> {
    if n == 0 {
        return Vec::new();
    }
    let shift = (round + load_index) % n;
    (0..n).map(|i| (i + shift) % n).collect()
}

/// The median of some values with their range: what a point reports for
/// each figure over its rounds.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Spread {
    /// The median (of an even count, the mean of the middle two).
    pub median: f64,
    /// The smallest value.
    pub min: f64,
    /// The largest value.
    pub max: f64,
    /// (max − min) / median, in percent: the spread of the rounds.
    pub spread_pct: f64,
    /// How many values (rounds).
    pub n: usize,
}

impl Spread {
    /// The median and range of the finite values among `values` (none:
    /// no finite value).
    pub fn of(values: impl IntoIterator<Item = f64>) -> Option<Self> {
        let mut v: Vec<f64> = values.into_iter().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        let (min, max) = (v[0], v[n - 1]);
        let spread_pct = if median.abs() > 0.0 {
            (max - min) / median.abs() * 100.0
        } else {
            0.0
        };
        Some(Self {
            median,
            min,
            max,
            spread_pct,
            n,
        })
    }
}

/// How much a ratio may fall below its baseline before the check calls
/// it a regression, in percent: `k_spread` times the larger of the two
/// runs' spreads (range of the per-round values over their median), but
/// never less than `floor`. A ratio measured once (no spread) gets the
/// floor.
pub fn tolerance_pct(floor: f64, k_spread: f64, run: Option<f64>, base: Option<f64>) -> f64 {
    let spread = run.into_iter().chain(base).fold(0.0_f64, f64::max);
    floor.max(k_spread * spread)
}

/// Which CPUs the device and the load generator run on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pinning {
    /// CPUs of the device process (icelab serve, or qemu-storage-daemon).
    pub device_cpus: Vec<usize>,
    /// CPUs of the load generator's threads.
    pub generator_cpus: Vec<usize>,
}

impl Pinning {
    /// Splits the CPUs this process may run on: the first half (rounded
    /// up) for the device, the rest for the load generator; none with
    /// fewer than 2 CPUs.
    pub fn split(allowed: &[usize]) -> Option<Self> {
        if allowed.len() < 2 {
            return None;
        }
        let half = allowed.len().div_ceil(2);
        Some(Self {
            device_cpus: allowed[..half].to_vec(),
            generator_cpus: allowed[half..].to_vec(),
        })
    }

    /// The plan for this machine: [`Pinning::split`] of the CPUs this
    /// process is allowed on.
    pub fn for_this_machine() -> Option<Self> {
        Self::split(&allowed_cpus())
    }

    /// In words, for the output.
    pub fn describe(pinning: Option<&Self>) -> String {
        match pinning {
            Some(p) => format!(
                "device (icelab serve or qemu-storage-daemon, every thread) on CPU {}, load generator threads on CPU {}",
                cpu_list(&p.device_cpus),
                cpu_list(&p.generator_cpus)
            ),
            None => format!(
                "unpinned: {} CPU available, the device and the load generator share it",
                allowed_cpus().len()
            ),
        }
    }
}

fn cpu_list(cpus: &[usize]) -> String {
    cpus.iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// The CPUs this process may run on (sched_getaffinity).
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; sched_getaffinity
    // writes at most size_of::<cpu_set_t>() bytes into it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&cpu| libc::CPU_ISSET(cpu, &set))
            .collect()
    }
}

/// Pins the thread `tid` (0: the calling thread) to `cpus`.
pub fn pin_thread(tid: libc::pid_t, cpus: &[usize]) -> std::io::Result<()> {
    // SAFETY: as in allowed_cpus; CPU_SET only touches bits below
    // CPU_SETSIZE, which the filter ensures.
    let result = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &cpu in cpus.iter().filter(|&&c| c < libc::CPU_SETSIZE as usize) {
            libc::CPU_SET(cpu, &mut set);
        }
        libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if result == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Pins every thread of process `pid` (each task in /proc/PID/task) to
/// `cpus`; threads it starts later inherit the mask of their creator.
pub fn pin_process(pid: u32, cpus: &[usize]) -> std::io::Result<()> {
    for entry in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let Some(tid) = entry?
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<libc::pid_t>().ok())
        else {
            continue;
        };
        match pin_thread(tid, cpus) {
            // A thread that ended between the listing and the call.
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
            other => other?,
        }
    }
    Ok(())
}

/// CPU time (user + system) the calling thread has used.
pub fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into `ts`.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_puts_each_target_first_once_per_cycle() {
        for load in 0..3 {
            let firsts: Vec<usize> = (0..4).map(|r| rotation(4, r, load)[0]).collect();
            let mut sorted = firsts.clone();
            sorted.sort();
            assert_eq!(sorted, [0, 1, 2, 3], "load {load}: {firsts:?}");
            for round in 0..4 {
                let mut order = rotation(4, round, load);
                order.sort();
                assert_eq!(order, [0, 1, 2, 3]);
            }
        }
        assert_eq!(rotation(4, 0, 0), [0, 1, 2, 3]);
        assert_eq!(rotation(4, 1, 0), [1, 2, 3, 0]);
        // The next load starts one further on.
        assert_eq!(rotation(4, 0, 1), [1, 2, 3, 0]);
        assert_eq!(rotation(2, 3, 0), [1, 0]);
        assert!(rotation(0, 1, 2).is_empty());
    }

    #[test]
    fn spread_is_the_median_and_range() {
        let s = Spread::of([3.0, 1.0, 2.0, 5.0, 4.0]).unwrap();
        assert_eq!((s.median, s.min, s.max, s.n), (3.0, 1.0, 5.0, 5));
        assert!((s.spread_pct - 400.0 / 3.0).abs() < 1e-9);
        let even = Spread::of([1.0, 2.0, 4.0, 10.0]).unwrap();
        assert_eq!(even.median, 3.0);
        // Non-finite values (no time measured) are left out.
        let s = Spread::of([f64::NAN, 2.0, f64::INFINITY]).unwrap();
        assert_eq!((s.median, s.spread_pct, s.n), (2.0, 0.0, 1));
        assert!(Spread::of([]).is_none());
        assert!(Spread::of([f64::NAN]).is_none());
    }

    #[test]
    fn tolerance_is_the_larger_spread_or_the_floor() {
        assert_eq!(tolerance_pct(5.0, 1.0, None, None), 5.0);
        assert_eq!(tolerance_pct(5.0, 1.0, Some(3.0), None), 5.0);
        assert_eq!(tolerance_pct(5.0, 1.0, Some(12.0), Some(20.0)), 20.0);
        assert_eq!(tolerance_pct(5.0, 0.5, Some(12.0), Some(20.0)), 10.0);
    }

    #[test]
    fn pinning_splits_the_cpus_or_leaves_one_unpinned() {
        assert_eq!(Pinning::split(&[0]), None);
        assert_eq!(Pinning::split(&[]), None);
        let two = Pinning::split(&[0, 1]).unwrap();
        assert_eq!((two.device_cpus, two.generator_cpus), (vec![0], vec![1]));
        let three = Pinning::split(&[2, 5, 7]).unwrap();
        assert_eq!(
            (three.device_cpus, three.generator_cpus),
            (vec![2, 5], vec![7])
        );
    }

    #[test]
    fn this_thread_can_be_pinned_and_counts_its_cpu() {
        let allowed = allowed_cpus();
        assert!(!allowed.is_empty());
        let first = allowed[0];
        std::thread::spawn(move || {
            pin_thread(0, &[first]).unwrap();
            let before = thread_cpu();
            let mut x = 0u64;
            for i in 0..5_000_000u64 {
                x = x.wrapping_mul(31).wrapping_add(i);
            }
            std::hint::black_box(x);
            assert!(thread_cpu() > before);
        })
        .join()
        .unwrap();
    }
}
