//! e2fsprogs helpers shared by the verifier's integration tests.

// Each integration test is its own crate and uses only part of this module.
#![allow(dead_code)]

use std::path::Path;
use std::process::Command;

/// The tests need e2fsprogs on the host; without it they fail (never
/// skip) and say how to install it.
pub fn require_e2fsprogs() {
    let tools = ["mkfs.ext4", "debugfs", "dumpe2fs", "e2fsck"];
    let ok = tools
        .iter()
        .all(|t| Command::new(t).arg("-V").output().is_ok());
    assert!(
        ok,
        "e2fsprogs ({}) is missing: run scripts/install-deps",
        tools.join(", ")
    );
}

/// Runs `cmd`, which must succeed; its standard output.
pub fn sh(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run e2fsprogs");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `debugfs -w -R REQ IMG`.
pub fn debugfs_w(img: &Path, req: &str) -> String {
    sh(Command::new("debugfs").args(["-w", "-R", req]).arg(img))
}
