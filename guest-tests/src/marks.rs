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
//!
//! The labels, and the [`Mark`] a test's facts carry, are the contract's
//! (`icelab_contract::marks`, re-exported here): the host looks for the
//! same constants.

use std::fs::File;
use std::io::{self, Read};
use std::sync::Mutex;

pub use icelab_contract::marks::*;
use serde::Deserialize;

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

/// Records the mark `label` (one of the contract's labels) in the test's
/// facts (appending to [`MARKS_FACT`]): reads the serial and stores a
/// [`Mark`]. Returns the ordinal.
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

/// Appends one mark to the facts' [`MARKS_FACT`].
pub fn push_mark(facts: &mut Facts, label: &str, ordinal: u64) {
    let mut marks = facts
        .get(MARKS_FACT)
        .and_then(|list| Vec::<Mark>::deserialize(list).ok())
        .unwrap_or_default();
    marks.push(Mark {
        label: label.to_owned(),
        serial_reads: ordinal,
    });
    facts.set(MARKS_FACT, serde_json::to_value(&marks).unwrap_or_default());
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn marks_append_in_order() {
        let mut facts = Facts::new();
        push_mark(&mut facts, PRESSURE_START, 3);
        push_mark(&mut facts, PRESSURE_END, 4);
        assert_eq!(
            facts.get("marks"),
            Some(&json!([
                {"label": "pressure/start", "serial_reads": 3},
                {"label": "pressure/end", "serial_reads": 4}
            ]))
        );
        // What the host reads back.
        let read =
            MarksFact::deserialize(&json!({MARKS_FACT: facts.get(MARKS_FACT)})).expect("parses");
        assert_eq!(read.marks[1].label, PRESSURE_END);
        assert_eq!(read.marks[1].serial_reads, 4);
    }

    #[test]
    fn a_failed_read_is_not_counted() {
        let before = serial_reads();
        assert!(read_serial("icelab-no-such-disk").is_err());
        assert_eq!(serial_reads(), before);
    }
}
