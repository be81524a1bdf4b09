//! `--trace FILE`: one JSON line per keyslot event and per rejected
//! request. Lines carry fingerprints, never key material.

use serde_json::{Value, json};
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

/// A JSON-lines event log.
pub struct Trace {
    out: Mutex<BufWriter<File>>,
    start: Instant,
}

impl Trace {
    /// Creates (truncates) the trace file.
    pub fn create(path: &Path) -> io::Result<Self> {
        Ok(Self {
            out: Mutex::new(BufWriter::new(File::create(path)?)),
            start: Instant::now(),
        })
    }

    /// Appends one event: `fields` (a JSON object) plus `t` (seconds since
    /// start) and `event`. Events are rare (keyslot changes, rejections), so
    /// each line is flushed at once; a write error is logged, not fatal.
    pub fn event(&self, event: &str, fields: Value) {
        let mut line = json!({
            "t": self.start.elapsed().as_secs_f64(),
            "event": event,
        });
        if let (Some(line), Value::Object(fields)) = (line.as_object_mut(), fields) {
            line.extend(fields);
        }
        let mut out = self
            .out
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let written = serde_json::to_writer(&mut *out, &line)
            .map_err(io::Error::from)
            .and_then(|()| out.write_all(b"\n"))
            .and_then(|()| out.flush());
        if let Err(error) = written {
            tracing::error!("cannot write the trace file: {error}");
        }
    }
}
