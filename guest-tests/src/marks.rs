//! Marks: points in time the host can find in the device's trace.
//!
//! Reading `/sys/block/<disk>/serial` makes icelab_vblk send one GET_ID
//! request, and the device writes one `get_id` trace event for each
//! (before the read returns). The runner counts every successful serial
//! read it makes in [`SERIAL_READS`]; a mark records that count, so the
//! host can replay the trace up to the n-th `get_id` event and know which
//! keyslot events happened before the guest passed that point.
//!
//! Only the runner process reads the serial (worker processes never do),
//! and only through [`read_serial`], or the count would drift from the
//! device's.

use std::fs::File;
use std::io::{self, Read};
use std::sync::Mutex;

use serde_json::{Value, json};

use crate::report::Facts;
use crate::runner::{Ctx, Failure};

/// Successful serial reads (= GET_ID requests) so far. A mutex rather than
/// an atomic: the read and the increment must not interleave with another
/// thread's (a timed-out test's thread may still run).
static SERIAL_READS: Mutex<u64> = Mutex::new(0);

/// The serial reads so far.
pub fn serial_reads() -> u64 {
    *SERIAL_READS.lock().unwrap_or_else(|p| p.into_inner())
}

/// Reads the disk's serial (one GET_ID) with a single read(2), counts it,
/// and returns the serial and its ordinal (1-based). A failed read is not
/// counted: the device refused the GET_ID and traced no `get_id`.
pub fn read_serial(disk_name: &str) -> io::Result<(String, u64)> {
    let path = format!("/sys/block/{disk_name}/serial");
    let mut count = SERIAL_READS.lock().unwrap_or_else(|p| p.into_inner());
    let mut file = File::open(&path)?;
    // sysfs calls the show function once per open file; one read of a
    // buffer larger than the 20-byte id plus newline gets all of it.
    let mut buf = [0u8; 128];
    let n = file.read(&mut buf)?;
    *count += 1;
    let serial = String::from_utf8_lossy(&buf[..n]).trim().to_owned();
    Ok((serial, *count))
}

/// Records the mark `label` in `facts["marks"]` (appending): reads the
/// serial and stores `{"label", "serial_reads"}`. Returns the ordinal.
pub fn mark(ctx: &Ctx, facts: &mut Facts, label: &str) -> Result<u64, Failure> {
    let disk = ctx.config.disk_name();
    ctx.step(format!("mark {label}"));
    let (_, ordinal) = read_serial(&disk).map_err(|e| {
        Failure(format!(
            "mark {label}: cannot read /sys/block/{disk}/serial (the GET_ID the host orders \
             the device trace by): {e}"
        ))
    })?;
    push_mark(facts, label, ordinal);
    Ok(ordinal)
}

/// Appends one mark to `facts["marks"]`.
pub fn push_mark(facts: &mut Facts, label: &str, ordinal: u64) {
    let entry = json!({ "label": label, "serial_reads": ordinal });
    let mut marks = match facts.get("marks") {
        Some(Value::Array(list)) => list.clone(),
        _ => Vec::new(),
    };
    marks.push(entry);
    facts.set("marks", marks);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_append_in_order() {
        let mut facts = Facts::new();
        push_mark(&mut facts, "a/start", 3);
        push_mark(&mut facts, "a/end", 4);
        assert_eq!(
            facts.get("marks"),
            Some(&json!([
                {"label": "a/start", "serial_reads": 3},
                {"label": "a/end", "serial_reads": 4}
            ]))
        );
    }

    #[test]
    fn a_failed_read_is_not_counted() {
        let before = serial_reads();
        assert!(read_serial("icelab-no-such-disk").is_err());
        assert_eq!(serial_reads(), before);
    }
}
