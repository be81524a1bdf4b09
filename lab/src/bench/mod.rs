//! `icelab bench`: performance measurements.

pub mod all;
pub mod baseline;
pub mod crypto;
pub mod device;
pub mod fair;
pub mod guest;
pub mod peers;
mod plot;

use clap::Subcommand;

/// The parts of `icelab bench`.
#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// The engine's AES-256-XTS against `openssl speed -evp aes-256-xts`, same run.
    Crypto(crypto::CryptoArgs),
    /// The device through the native vhost-user frontend: IOPS, MB/s, latency, CPU per GB.
    Device(device::DeviceArgs),
    /// fio inside the lab guest on an inlinecrypt ext4 file: native ICE, blk-crypto-fallback, no encryption (ratios; TCG is not hardware).
    Guest(guest::GuestArgs),
    /// Every part in one run: icelab ICE on/off and qemu-storage-daemon raw/LUKS under the same loads, the engine; JSON, markdown, SVG plot, baseline check.
    All(all::AllArgs),
}

/// Runs one bench part.
pub fn run(command: BenchCommand) -> anyhow::Result<()> {
    match command {
        BenchCommand::Crypto(args) => crypto::run(args),
        BenchCommand::Device(args) => device::run(args),
        BenchCommand::Guest(args) => guest::run(args),
        BenchCommand::All(args) => all::run(args),
    }
}

/// The CPU model, from /proc/cpuinfo.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines().find_map(|line| {
                line.strip_prefix("model name")
                    .and_then(|rest| rest.split_once(':'))
                    .map(|(_, v)| v.trim().to_owned())
            })
        })
        .unwrap_or_else(|| "unknown".to_owned())
}
