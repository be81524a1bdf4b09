//! Starting the lab guest: the QEMU command line, and the choice between
//! KVM and TCG.
//!
//! KVM is used only when it can actually run the guest kernel: some hosts
//! have a /dev/kvm that cannot (a paravirtual one fails in the kernel's
//! decompressor), so the probe boots the real kernel under KVM and looks
//! for the kernel starting init. The verdict is cached per kernel and QEMU.

use super::artifacts::{Artifacts, cache_dir};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The accelerator a run uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Accel {
    /// Probe KVM, fall back to TCG.
    Auto,
    /// Hardware virtualisation.
    Kvm,
    /// Software emulation.
    Tcg,
}

impl Accel {
    /// QEMU's name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Kvm => "kvm",
            Self::Tcg => "tcg",
        }
    }
}

/// One guest boot.
pub struct VmSpec<'a> {
    /// Built artifacts.
    pub artifacts: &'a Artifacts,
    /// The device's vhost-user socket.
    pub socket: &'a Path,
    /// Kernel command line additions.
    pub append: String,
    /// ttyS0: kernel console.
    pub console_log: PathBuf,
    /// ttyS1: the runner's results.
    pub results_log: PathBuf,
    /// Request queues of the disk.
    pub queues: u16,
    /// Ask the patched QEMU to forward inline encryption.
    pub inline_encryption: bool,
    /// KVM or TCG.
    pub accel: Accel,
    /// Reconnect to the socket (every second) when the device goes away.
    pub reconnect: bool,
    /// Further vhost-user devices (same queues and inline encryption),
    /// after the first: the guest's `/dev/vdb`, ...
    pub more_sockets: &'a [PathBuf],
    /// QEMU's own virtio disks, after the vhost-user ones.
    pub disks: &'a [PlainDisk],
    /// ttyS0 on QEMU's standard input and output (an interactive console)
    /// instead of `console_log`.
    pub console_on_stdio: bool,
    /// ttyS2: the userland command's output.
    pub output_log: Option<PathBuf>,
    /// Guest memory (shared with the devices), in QEMU's notation.
    pub memory: &'a str,
}

/// A disk image QEMU serves itself as a virtio-blk-pci device (the
/// userland's root and share disks); icelab_vblk drives it like any
/// virtio disk, without inline encryption.
#[derive(Clone, Debug)]
pub struct PlainDisk {
    /// The image (raw).
    pub image: PathBuf,
    /// Its serial number (GET_ID), by which the guest finds it.
    pub serial: &'static str,
    /// Writes go to a temporary overlay; the image never changes.
    pub snapshot: bool,
}

/// Guest memory of the lab's boots; shared with the device.
pub const MEMORY: &str = "1G";

/// The QEMU command for `spec`.
pub fn command(spec: &VmSpec<'_>) -> Command {
    let memory = spec.memory;
    let mut command = Command::new(&spec.artifacts.qemu);
    command
        .args(["-machine", "q35"])
        .args(["-accel", accel_option(spec.accel)])
        .args([
            "-cpu",
            if spec.accel == Accel::Kvm {
                "host"
            } else {
                "max"
            },
        ])
        .args(["-smp", "2", "-m", memory])
        .args([
            "-nodefaults",
            "-no-reboot",
            "-display",
            "none",
            "-no-user-config",
        ])
        .args([
            "-object",
            &format!("memory-backend-memfd,id=mem,size={memory},share=on"),
        ])
        .args(["-numa", "node,memdev=mem"]);
    for (index, socket) in std::iter::once(spec.socket)
        .chain(spec.more_sockets.iter().map(PathBuf::as_path))
        .enumerate()
    {
        let id = if index == 0 {
            "ice".to_owned()
        } else {
            format!("ice{index}")
        };
        let mut device = format!("vhost-user-blk-pci,chardev={id},num-queues={}", spec.queues);
        if spec.artifacts.qemu_patched {
            device.push_str(if spec.inline_encryption {
                ",inline-encryption=on"
            } else {
                ",inline-encryption=off"
            });
        }
        command
            .arg("-chardev")
            .arg(format!(
                "socket,id={id},path={}{}",
                socket.display(),
                if spec.reconnect { ",reconnect=1" } else { "" }
            ))
            .args(["-device", &device]);
    }
    for (index, disk) in spec.disks.iter().enumerate() {
        command
            .arg("-drive")
            .arg(format!(
                "file={},format=raw,if=none,id=disk{index},cache=unsafe{}",
                disk.image.display(),
                if disk.snapshot { ",snapshot=on" } else { "" }
            ))
            .arg("-device")
            .arg(format!(
                "virtio-blk-pci,drive=disk{index},serial={}",
                disk.serial
            ));
    }
    command
        .arg("-kernel")
        .arg(&spec.artifacts.kernel)
        .arg("-initrd")
        .arg(&spec.artifacts.initramfs)
        .args([
            "-append",
            &format!("console=ttyS0 panic=-1 quiet loglevel=4 {}", spec.append),
        ]);
    if spec.console_on_stdio {
        // Ctrl-C goes to the guest; QEMU puts the terminal in raw mode.
        command
            .args(["-chardev", "stdio,id=console,signal=off,mux=off"])
            .args(["-serial", "chardev:console"]);
    } else {
        command
            .arg("-serial")
            .arg(format!("file:{}", spec.console_log.display()))
            .stdin(Stdio::null());
    }
    command
        .arg("-serial")
        .arg(format!("file:{}", spec.results_log.display()));
    if let Some(output) = &spec.output_log {
        command
            .arg("-serial")
            .arg(format!("file:{}", output.display()));
    }
    command
}

/// The `-accel` value for `accel`.
///
/// TCG runs both vCPUs in one thread (`thread=single`). With one host
/// thread per vCPU (MTTCG), a vCPU can execute a stale translation of code
/// another vCPU is live-patching: the kernel's text_poke_bp puts an int3 at
/// a static-key or alternatives site, and the other vCPU trips over it after
/// the patch is done. The guest dies with "Oops: int3" in an arbitrary
/// function a few seconds into boot, in a few percent of boots.
fn accel_option(accel: Accel) -> &'static str {
    match accel {
        Accel::Kvm => "kvm",
        Accel::Tcg | Accel::Auto => "tcg,thread=single",
    }
}

/// Resolves `Auto` to KVM or TCG.
pub fn choose(requested: Accel, artifacts: &Artifacts) -> Accel {
    match requested {
        Accel::Auto if kvm_runs_guest(artifacts) => Accel::Kvm,
        Accel::Auto => Accel::Tcg,
        other => other,
    }
}

/// True when /dev/kvm opens and boots the guest kernel to init.
fn kvm_runs_guest(artifacts: &Artifacts) -> bool {
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        eprintln!("icelab: no usable /dev/kvm; running under TCG");
        return false;
    }
    let verdict_file = cache_dir()
        .ok()
        .map(|dir| dir.join(format!("kvm-probe-{:016x}", identity(artifacts))));
    if let Some(verdict) = verdict_file
        .as_ref()
        .and_then(|f| std::fs::read_to_string(f).ok())
    {
        return verdict.trim() == "kvm";
    }
    let works = probe(artifacts);
    eprintln!(
        "icelab: KVM {} the guest kernel; running under {}",
        if works { "boots" } else { "cannot boot" },
        if works { "KVM" } else { "TCG" }
    );
    if let Some(file) = verdict_file {
        let _ = std::fs::create_dir_all(file.parent().unwrap_or(Path::new(".")));
        let _ = std::fs::write(file, if works { "kvm" } else { "tcg" });
    }
    works
}

/// Boots the kernel under KVM with an init that does not exist: the kernel
/// reaching "Run /..." proves it ran; panic=-1 and -no-reboot end QEMU.
fn probe(artifacts: &Artifacts) -> bool {
    let Ok(dir) = tempfile::tempdir() else {
        return false;
    };
    let console = dir.path().join("console.log");
    let child = Command::new(&artifacts.qemu)
        .args([
            "-machine",
            "q35,accel=kvm",
            "-cpu",
            "host",
            "-m",
            "512M",
            "-nodefaults",
            "-no-reboot",
            "-display",
            "none",
        ])
        .arg("-kernel")
        .arg(&artifacts.kernel)
        .args(["-append", "console=ttyS0 panic=-1 rdinit=/icelab-kvm-probe"])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let Ok(mut child) = child else { return false };
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut booted = false;
    while Instant::now() < deadline {
        let log = std::fs::read_to_string(&console).unwrap_or_default();
        if log.contains("Run /icelab-kvm-probe") || log.contains("Kernel panic") {
            booted = true;
            break;
        }
        if matches!(child.try_wait(), Ok(Some(_))) {
            booted = std::fs::read_to_string(&console)
                .unwrap_or_default()
                .contains("Run /");
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    booted
}

/// A stable identity of the kernel and QEMU binaries (size and mtime).
fn identity(artifacts: &Artifacts) -> u64 {
    let mut key = super::cache_key::CacheKey::default();
    for path in [&artifacts.kernel, &artifacts.qemu] {
        key.path(path);
        if let Ok(meta) = std::fs::metadata(path) {
            key.number(meta.len());
            let modified = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos() as u64);
            key.number(modified);
        }
    }
    key.finish()
}
