//! Rate limiting of the log lines for refused requests.
//!
//! The guest decides how many requests are refused; at tens of thousands
//! per second one warning each would fill the disk. Per kind of refusal,
//! the first [`FIRST_LOGGED`] are logged one by one; after that a summary
//! line every [`SUMMARY_INTERVAL`] says how many more there were. The
//! stats count every refusal whatever the log shows.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Refusals of one kind logged one by one.
pub const FIRST_LOGGED: u64 = 10;
/// How often a summary of the refusals not logged one by one is written.
pub const SUMMARY_INTERVAL: Duration = Duration::from_secs(5);

/// What to do with one refusal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Log it.
    Log,
    /// Log it as the last one of its kind logged one by one.
    LogLast,
    /// Do not log it.
    Quiet,
    /// Do not log it, but log that `count` refusals of its kind (this one
    /// included) went unlogged over the last `over`.
    Summary {
        /// Refusals not logged one by one since the last summary.
        count: u64,
        /// Time since the last summary.
        over: Duration,
    },
}

#[derive(Debug)]
struct KindState {
    seen: u64,
    unlogged: u64,
    since: Instant,
}

/// Per-kind counters deciding which refusals are logged.
#[derive(Debug, Default)]
pub struct RefusalLog {
    kinds: Mutex<BTreeMap<&'static str, KindState>>,
}

impl RefusalLog {
    /// Decides about one refusal of `kind` at `now`.
    pub fn admit(&self, kind: &'static str, now: Instant) -> Admission {
        let mut kinds = self
            .kinds
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let state = kinds.entry(kind).or_insert(KindState {
            seen: 0,
            unlogged: 0,
            since: now,
        });
        state.seen += 1;
        if state.seen < FIRST_LOGGED {
            return Admission::Log;
        }
        if state.seen == FIRST_LOGGED {
            state.since = now;
            return Admission::LogLast;
        }
        state.unlogged += 1;
        let over = now.saturating_duration_since(state.since);
        if over < SUMMARY_INTERVAL {
            return Admission::Quiet;
        }
        let count = std::mem::take(&mut state.unlogged);
        state.since = now;
        Admission::Summary { count, over }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_ones_logged_then_quiet_then_summaries() {
        let log = RefusalLog::default();
        let start = Instant::now();
        let admissions: Vec<Admission> = (0..1000).map(|_| log.admit("a", start)).collect();
        let logged = admissions
            .iter()
            .filter(|a| matches!(a, Admission::Log | Admission::LogLast))
            .count() as u64;
        assert_eq!(logged, FIRST_LOGGED);
        assert_eq!(admissions[FIRST_LOGGED as usize - 1], Admission::LogLast);
        assert!(
            admissions[FIRST_LOGGED as usize..]
                .iter()
                .all(|a| *a == Admission::Quiet)
        );
        // Another kind has its own budget.
        assert_eq!(log.admit("b", start), Admission::Log);
        // After the interval, one summary counts everything not logged.
        let later = start + SUMMARY_INTERVAL;
        assert_eq!(
            log.admit("a", later),
            Admission::Summary {
                count: 1000 - FIRST_LOGGED + 1,
                over: SUMMARY_INTERVAL
            }
        );
        assert_eq!(log.admit("a", later), Admission::Quiet);
    }
}
