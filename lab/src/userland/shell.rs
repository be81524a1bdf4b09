//! `icelab shell`: the userland guest with a login shell on the terminal
//! (like virtme-ng), or one command (`--cmd`) whose exit status becomes
//! icelab's. After the guest powers off it prints each device's stats.

use super::run::{prepare, profile};
use super::{BOOT, DeviceRun, Machine, share};
use crate::artifacts::GuestArgs;
use crate::checks::parse_stats;
use crate::report::Outcome;
use crate::size::{format_size, parse_size};
use anyhow::Context;
use icelab_contract::cmdline::{SHARE_MOUNT, UserlandIo};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

/// Options of `icelab shell`.
#[derive(clap::Args, Debug)]
pub struct ShellArgs {
    /// Run this command (bash -c) instead of an interactive shell; its output is
    /// printed and its exit status is icelab's.
    #[arg(long, value_name = "CMD")]
    pub cmd: Option<String>,
    /// Make DIR available read-write at /share (copied back when the guest powers off).
    #[arg(long, value_name = "DIR")]
    pub share: Option<PathBuf>,
    /// How many icelab devices (/dev/vda, /dev/vdb, ...).
    #[arg(long, value_name = "N", default_value_t = 2)]
    pub disks: u32,
    /// The size of each device's fresh (sparse) image.
    #[arg(long, value_name = "SIZE", default_value = "4G")]
    pub disk_size: String,
    /// The devices' engine profile (ufs or emmc).
    #[arg(long)]
    pub profile: Option<String>,
    /// Devices without inline encryption (fscrypt takes blk-crypto-fallback).
    #[arg(long)]
    pub no_inline_encryption: bool,
    /// Kernel, QEMU and accelerator.
    #[command(flatten)]
    pub guest: GuestArgs,
    /// Longest --cmd may take, in seconds (the interactive shell has no limit).
    #[arg(long, default_value_t = 3600)]
    pub timeout: u64,
    /// Keep the device images, stats, traces and logs under DIR.
    #[arg(long, value_name = "DIR")]
    pub keep: Option<PathBuf>,
}

/// Runs the shell or command; returns the exit status icelab should have.
pub fn shell(args: ShellArgs) -> anyhow::Result<u8> {
    super::validate(args.disks, args.cmd.as_deref())?;
    let profile = profile(args.profile.as_deref(), args.no_inline_encryption)?;
    let disk_size = parse_size(&args.disk_size).context("--disk-size")?;
    let interactive = args.cmd.is_none();
    if interactive && !std::io::stdin().is_terminal() {
        anyhow::bail!(
            "icelab shell needs a terminal on standard input; to run one command without one, \
             use icelab shell --cmd CMD"
        );
    }
    let (artifacts, accel, root_image) = prepare(&args.guest)?;
    let temporary;
    let dir = match &args.keep {
        Some(keep) => keep.join(BOOT),
        None => {
            temporary = tempfile::Builder::new().prefix("icelab-shell-").tempdir()?;
            temporary.path().to_owned()
        }
    };
    eprintln!(
        "icelab shell: {} icelab device(s) of {} ({}), {} under {}{}",
        args.disks,
        format_size(disk_size),
        profile.map_or("without inline encryption".to_owned(), |p| format!(
            "profile {}",
            p.name()
        )),
        artifacts.kernel_version,
        accel.name().to_uppercase(),
        args.share
            .as_ref()
            .map(|d| format!("; {} is {SHARE_MOUNT}", d.display()))
            .unwrap_or_default()
    );
    if interactive {
        eprintln!("icelab shell: `exit` (or Ctrl-D) powers the guest off");
    }
    let machine = Machine {
        artifacts: &artifacts,
        accel,
        root_image: &root_image,
        dir: &dir,
        devices: args.disks,
        disk_size,
        profile,
        share: args.share.as_deref(),
        command: args.cmd.as_deref(),
        io: if interactive {
            UserlandIo::Console
        } else {
            UserlandIo::Capture
        },
        timeout: (!interactive).then(|| Duration::from_secs(args.timeout)),
        print_tests: false,
    };
    let saved = TerminalState::save();
    let outcome = super::boot(&machine);
    drop(saved);
    let outcome = outcome?;
    if let (Some(share_dir), Some(image)) = (&args.share, &outcome.share_image) {
        match share::unpack(image, share_dir, &dir) {
            Ok(back) => eprintln!(
                "icelab shell: {} file(s) of {SHARE_MOUNT} copied back into {}",
                back.files,
                share_dir.display()
            ),
            Err(error) => eprintln!("icelab shell: error: {error:#}"),
        }
    }
    for device in &outcome.devices {
        eprintln!("icelab shell: {}", stats_line(device));
    }
    for result in outcome
        .results
        .iter()
        .filter(|r| r.outcome == Outcome::Fail && r.name != "command")
    {
        eprintln!("icelab shell: {}", result.line());
    }
    let command = outcome.results.iter().find(|r| r.name == "command");
    let status = command
        .and_then(|r| r.facts.get("exit_code"))
        .and_then(serde_json::Value::as_i64);
    Ok(match (command, status) {
        (Some(_), Some(code)) => u8::try_from(code).unwrap_or(1),
        // Killed by a signal, or never ran.
        _ => 1,
    })
}

/// One line of a device's counters.
fn stats_line(device: &DeviceRun) -> String {
    match parse_stats(&device.stats) {
        Ok(file) => {
            let c = &file.stats;
            format!(
                "{}: {} CRYPTO_OUT ({}), {} CRYPTO_IN ({}), {} plain writes, {} plain reads, \
                 {} keyslot programs, {} evictions, {} refused",
                device.name,
                c.crypto_out.requests,
                human_bytes(c.crypto_out.bytes),
                c.crypto_in.requests,
                human_bytes(c.crypto_in.bytes),
                c.plain_out.requests,
                c.plain_in.requests,
                c.keyslots.programmed,
                c.keyslots.evicted,
                c.rejected.total
            )
        }
        Err(problem) => format!("{}: {problem}", device.name),
    }
}

fn human_bytes(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / f64::from(1u32 << 30)),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / f64::from(1u32 << 20)),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}

/// The terminal's settings, restored when dropped: QEMU puts it in raw
/// mode and restores it when it exits normally, but not when it is killed.
struct TerminalState(Option<libc::termios>);

impl TerminalState {
    fn save() -> Self {
        if !std::io::stdin().is_terminal() {
            return Self(None);
        }
        // SAFETY: termios is plain old data; tcgetattr fills it.
        let mut termios: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: a valid termios and an open descriptor.
        let ok = unsafe { libc::tcgetattr(libc::STDIN_FILENO, &mut termios) } == 0;
        Self(ok.then_some(termios))
    }
}

impl Drop for TerminalState {
    fn drop(&mut self) {
        if let Some(termios) = &self.0 {
            // SAFETY: restoring settings read from the same descriptor.
            unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, termios) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_counts_read_as_people_write_them() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(48 << 10), "48.0 KiB");
        assert_eq!(human_bytes(3 << 29), "1.5 GiB");
    }
}
