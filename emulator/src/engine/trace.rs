//! `--trace FILE`: one JSON line per keyslot event and per rejected
//! request. Lines carry fingerprints, never key material.
//!
//! The guest decides how many events there are (a refused request or a
//! keyslot change each writes one), so the file has a size cap
//! (`--trace-max-bytes`): past it, one `trace-truncated` event is written
//! and later events are only counted. The device's stats keep counting
//! everything.

use serde_json::{Value, json};
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

    /// Appends one event: `fields` (a JSON object) plus `t` (seconds since
    /// start) and `event`. Events are rare (keyslot changes, rejections), so
    /// each line is flushed at once; a write error is logged, not fatal.
    pub fn event(&self, event: &str, fields: Value) {
        let t = self.start.elapsed().as_secs_f64();
        let mut line = json!({ "t": t, "event": event });
        if let (Some(line), Value::Object(fields)) = (line.as_object_mut(), fields) {
            line.extend(fields);
        }
        let mut out = self
            .out
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if out.dropped > 0 {
            out.dropped += 1;
            return;
        }
        let mut bytes = match serde_json::to_vec(&line) {
            Ok(bytes) => bytes,
            Err(error) => {
                tracing::error!("cannot encode a trace event: {error}");
                return;
            }
        };
        bytes.push(b'\n');
        if out.written + bytes.len() as u64 > self.max_bytes {
            out.dropped = 1;
            tracing::warn!(
                max_bytes = self.max_bytes,
                "the trace reached its size cap (--trace-max-bytes); later events are counted, not written"
            );
            bytes = json!({
                "t": t,
                "event": "trace-truncated",
                "max_bytes": self.max_bytes,
                "message": "the trace reached --trace-max-bytes; later events were dropped (the stats count them)",
            })
            .to_string()
            .into_bytes();
            bytes.push(b'\n');
        }
        out.written += bytes.len() as u64;
        let written = out.file.write_all(&bytes).and_then(|()| out.file.flush());
        if let Err(error) = written {
            tracing::error!("cannot write the trace file: {error}");
        }
    }
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
            trace.event("evict", json!({ "slot": slot }));
        }
        let text = std::fs::read_to_string(&path).expect("read");
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("JSON"))
            .collect();
        assert!(text.len() < 1200, "{} bytes", text.len());
        assert_eq!(
            lines.last().and_then(|l| l["event"].as_str()),
            Some("trace-truncated")
        );
        let written = lines.len() as u64 - 1;
        assert_eq!(trace.dropped(), 100 - written);
        assert!(written > 5);
    }
}
