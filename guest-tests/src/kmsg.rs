//! The kernel log, read from /dev/kmsg (Documentation/ABI/testing/dev-kmsg).
//!
//! Each read(2) returns one record: `PRIO,SEQ,TS_USEC,FLAGS[,...];TEXT\n`
//! followed by optional continuation lines (` KEY=VALUE`). Opened
//! non-blocking, the device starts at the oldest record still in the
//! buffer and returns EAGAIN at the end; EPIPE means records were
//! overwritten while reading, and the next read continues after them.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// One kernel log record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Syslog priority and facility (`prio & 7` is the level).
    pub prio: u32,
    /// Sequence number.
    pub seq: u64,
    /// Microseconds since boot.
    pub ts_usec: u64,
    /// The message text (first line, escapes left as the kernel wrote them).
    pub text: String,
}

impl Record {
    /// Parses one record as read from /dev/kmsg; `None` if the header is
    /// malformed.
    pub fn parse(raw: &str) -> Option<Record> {
        let first = raw.lines().next()?;
        let (header, text) = first.split_once(';')?;
        let mut fields = header.split(',');
        let prio = fields.next()?.parse().ok()?;
        let seq = fields.next()?.parse().ok()?;
        let ts_usec = fields.next()?.parse().ok()?;
        Some(Record {
            prio,
            seq,
            ts_usec,
            text: text.to_owned(),
        })
    }
}

/// Reads every record currently in the kernel's buffer, oldest first.
pub fn read_all(path: &Path) -> io::Result<Vec<Record>> {
    let mut file: File = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)?;
    let mut records = Vec::new();
    // A record is at most about 8 KiB (the kernel's CONSOLE_EXT_LOG_MAX).
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if let Some(r) = Record::parse(&String::from_utf8_lossy(&buf[..n])) {
                    records.push(r);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_records_with_and_without_extras() {
        let r = Record::parse("6,1234,5678901,-;fscrypt: AES-256-XTS using blk-crypto (native)\n")
            .expect("valid");
        assert_eq!(r.prio, 6);
        assert_eq!(r.seq, 1234);
        assert_eq!(r.ts_usec, 5_678_901);
        assert_eq!(r.text, "fscrypt: AES-256-XTS using blk-crypto (native)");
        let r = Record::parse(
            "4,7,8,c,caller=T12;text; with semicolon\n SUBSYSTEM=block\n DEVICE=b254:0\n",
        )
        .expect("valid");
        assert_eq!(r.text, "text; with semicolon");
        assert_eq!(Record::parse("garbage"), None);
        assert_eq!(Record::parse("x,1,2,-;t"), None);
    }
}
