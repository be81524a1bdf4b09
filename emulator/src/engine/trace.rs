//! `--trace FILE`: one JSON line per keyslot event, per rejected request
//! and per GET_ID, each the contract's [`TraceLine`]
//! (`icelab_contract::device`, re-exported here). Lines carry
//! fingerprints, never key material.
//!
//! The guest decides how many events there are (a refused request or a
//! keyslot change each writes one), so the file has a size cap
//! (`--trace-max-bytes`): past it, one `trace-truncated` event is written
//! and later events are only counted. The device's stats keep counting
//! everything.

pub use icelab_contract::device::{
    EvictCause, EvictEvent, GetIdEvent, KeyMode, KeyUsageLimitEvent, ProgramEvent, RejectEvent,
    RejectStatus, TraceEvent, TraceLine, TruncatedEvent,
};
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

/// Default size cap of a trace file: enough for hundreds of thousands of
/// keyslot events, small enough for a CI artifact.
pub const DEFAULT_TRACE_MAX_BYTES: u64 = 64 << 20;

/// A JSON-lines event log.
pub struct Trace {
    out: Mutex<Output>,
    start: Instant,
    max_bytes: u64,
}

struct Output {
    file: BufWriter<File>,
    written: u64,
    dropped: u64,
}

impl Trace {
    /// Creates (truncates) the trace file, capped at
    /// [`DEFAULT_TRACE_MAX_BYTES`].
    pub fn create(path: &Path) -> io::Result<Self> {
        Self::with_limit(path, DEFAULT_TRACE_MAX_BYTES)
    }

    /// Creates (truncates) the trace file, writing at most about
    /// `max_bytes` bytes of events.
    pub fn with_limit(path: &Path, max_bytes: u64) -> io::Result<Self> {
        Ok(Self {
            out: Mutex::new(Output {
                file: BufWriter::new(File::create(path)?),
                written: 0,
                dropped: 0,
            }),
            start: Instant::now(),
            max_bytes,
        })
    }

    /// Events dropped because the file reached its cap.
    pub fn dropped(&self) -> u64 {
        self.out
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .dropped
    }

    /// Appends one event, timed (`t`: seconds since start). Events are
    /// rare (keyslot changes, rejections, GET_IDs), so each line is flushed
    /// at once; a write error is logged, not fatal.
    pub fn event(&self, event: TraceEvent) {
        let t = self.start.elapsed().as_secs_f64();
        let mut out = self
            .out
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if out.dropped > 0 {
            out.dropped += 1;
            return;
        }
        let mut bytes = match encode(TraceLine { t, event }) {
            Ok(bytes) => bytes,
            Err(error) => {
                tracing::error!("cannot encode a trace event: {error}");
                return;
            }
        };
        if out.written + bytes.len() as u64 > self.max_bytes {
            out.dropped = 1;
            tracing::warn!(
                max_bytes = self.max_bytes,
                "the trace reached its size cap (--trace-max-bytes); later events are counted, not written"
            );
            let truncated = TraceEvent::Truncated(TruncatedEvent::at(self.max_bytes));
            bytes = match encode(TraceLine {
                t,
                event: truncated,
            }) {
                Ok(bytes) => bytes,
                Err(error) => {
                    tracing::error!("cannot encode a trace event: {error}");
                    return;
                }
            };
        }
        out.written += bytes.len() as u64;
        let written = out.file.write_all(&bytes).and_then(|()| out.file.flush());
        if let Err(error) = written {
            tracing::error!("cannot write the trace file: {error}");
        }
    }
}

/// One line of the file, newline included.
fn encode(line: TraceLine) -> serde_json::Result<Vec<u8>> {
    let mut bytes = serde_json::to_vec(&line)?;
    bytes.push(b'\n');
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_trace_stops_at_its_cap_and_says_so() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("trace.jsonl");
        let trace = Trace::with_limit(&path, 1000).expect("trace");
        for slot in 0..100 {
            trace.event(TraceEvent::Evict(EvictEvent {
                slot,
                queue: None,
                cause: EvictCause::Reset,
                fingerprint: None,
            }));
        }
        let text = std::fs::read_to_string(&path).expect("read");
        let lines: Vec<TraceLine> = text
            .lines()
            .map(|l| TraceLine::from_json(l).expect(l))
            .collect();
        assert!(text.len() < 1200, "{} bytes", text.len());
        assert!(
            matches!(
                lines.last().map(|l| &l.event),
                Some(TraceEvent::Truncated(TruncatedEvent {
                    max_bytes: 1000,
                    ..
                }))
            ),
            "{text}"
        );
        let written = lines.len() as u64 - 1;
        assert_eq!(trace.dropped(), 100 - written);
        assert!(written > 5);
    }
}
