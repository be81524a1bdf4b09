//! Shared fixtures: a real vhost-user-blk peer, qemu-storage-daemon's
//! export, on a temporary image.
//!
//! A missing qemu-storage-daemon fails the test with the package to
//! install; it is never skipped.

#![allow(dead_code)]

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use icelab_frontend::{Frontend, FrontendOptions};

/// What a test waits for any single request at most.
pub const TIMEOUT: Duration = Duration::from_secs(10);

const PACKAGE_HINT: &str = "install it: Debian package `qemu-utils` from bookworm-backports or \
     trixie (QEMU 10.0 ships it there), or `qemu-system-common` on stock bookworm (QEMU 7.2); \
     scripts/install-deps does this";

/// A running qemu-storage-daemon exporting a fresh image over vhost-user.
pub struct StorageDaemon {
    child: Child,
    dir: tempfile::TempDir,
    /// The raw image file.
    pub image: PathBuf,
    /// The vhost-user socket.
    pub socket: PathBuf,
    /// Image size in bytes.
    pub size: u64,
}

impl StorageDaemon {
    /// Starts qemu-storage-daemon on a zeroed image of `size` bytes with
    /// `queues` request queues, and waits until its socket exists.
    pub fn start(size: u64, queues: u16) -> Self {
        let binary = which("qemu-storage-daemon")
            .unwrap_or_else(|| panic!("qemu-storage-daemon is not on PATH; {PACKAGE_HINT}"));
        let dir = tempfile::tempdir().expect("temporary directory");
        let image = dir.path().join("disk.img");
        let socket = dir.path().join("vhost-user-blk.sock");
        File::create(&image)
            .and_then(|f| f.set_len(size))
            .expect("create the image");
        let child = Command::new(&binary)
            .arg("--blockdev")
            .arg(format!("driver=file,node-name=file0,filename={}", image.display()))
            .arg("--export")
            .arg(format!(
                "type=vhost-user-blk,id=exp0,node-name=file0,addr.type=unix,addr.path={},writable=on,num-queues={queues}",
                socket.display()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}; {PACKAGE_HINT}", binary.display()));
        let mut daemon = Self {
            child,
            dir,
            image,
            socket,
            size,
        };
        daemon.wait_for_socket();
        daemon
    }

    fn wait_for_socket(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.socket.exists() {
            if let Ok(Some(status)) = self.child.try_wait() {
                let mut stderr = String::new();
                if let Some(mut pipe) = self.child.stderr.take() {
                    let _ = pipe.read_to_string(&mut stderr);
                }
                panic!("qemu-storage-daemon exited ({status}) before listening: {stderr}");
            }
            assert!(
                Instant::now() < deadline,
                "qemu-storage-daemon did not create its socket"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Connects a frontend with `options`.
    pub fn connect(&self, options: &FrontendOptions) -> Frontend {
        Frontend::connect(&self.socket, options)
            .expect("vhost-user handshake with qemu-storage-daemon")
    }

    /// Reads `len` bytes of the image file at `offset`, bypassing the
    /// daemon.
    pub fn read_image(&self, offset: u64, len: usize) -> Vec<u8> {
        let file = File::open(&self.image).expect("open the image");
        let mut out = vec![0u8; len];
        file.read_exact_at(&mut out, offset)
            .expect("read the image");
        out
    }

    /// Writes the image file directly.
    pub fn write_image(&self, offset: u64, data: &[u8]) {
        let file = File::options()
            .write(true)
            .open(&self.image)
            .expect("open the image");
        file.write_all_at(data, offset).expect("write the image");
    }

    /// Kills the daemon (to test a backend that goes away).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The temporary directory holding image and socket.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for StorageDaemon {
    fn drop(&mut self) {
        self.kill();
    }
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// Deterministic test data: every byte depends on `seed` and position.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}
