//! The disk the driver exposes: waiting for its block device node and
//! reading its size.

use std::fs;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use crate::runner::{Failure, fail};

/// Waits until `disk` exists as a block device, polling every 50 ms, for
/// at most `timeout`. Returns how long it took.
pub fn wait_for_block_device(disk: &Path, timeout: Duration) -> Result<Duration, Failure> {
    let start = Instant::now();
    loop {
        match fs::metadata(disk) {
            Ok(m) if m.file_type().is_block_device() => return Ok(start.elapsed()),
            Ok(_) => {
                return fail(format!(
                    "{} exists but is not a block device",
                    disk.display()
                ));
            }
            Err(_) if start.elapsed() < timeout => thread::sleep(Duration::from_millis(50)),
            Err(e) => {
                return fail(format!(
                    "{} did not appear within {timeout:?} ({e}); the driver bound no disk",
                    disk.display()
                ));
            }
        }
    }
}

/// The disk's size in bytes, from /sys/block/NAME/size (512-byte sectors).
pub fn disk_size(name: &str) -> Option<u64> {
    let text = fs::read_to_string(format!("/sys/block/{name}/size")).ok()?;
    text.trim().parse::<u64>().ok()?.checked_mul(512)
}
