//! `icelab bench`: performance measurements.

pub mod crypto;

use clap::Subcommand;

/// The parts of `icelab bench`.
#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// The engine's AES-256-XTS against `openssl speed -evp aes-256-xts`, same run.
    Crypto(crypto::CryptoArgs),
}

/// Runs one bench part.
pub fn run(command: BenchCommand) -> anyhow::Result<()> {
    match command {
        BenchCommand::Crypto(args) => crypto::run(args),
    }
}
