//! Making later reads come from the disk: sync(2), then dropping the
//! kernel's page, dentry and inode caches.

use std::fs;

use crate::runner::Failure;
use crate::sys;

/// Writes back every dirty page (sync(2)) and drops the page, dentry and
/// inode caches, so later reads come from the disk.
pub fn sync_and_drop_caches() -> Result<(), Failure> {
    sys::sync();
    fs::write("/proc/sys/vm/drop_caches", "3")
        .map_err(|e| Failure(format!("cannot write 3 to /proc/sys/vm/drop_caches: {e}")))
}
