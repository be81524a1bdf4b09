//! `icelab`: emulator and test lab for hardware inline encryption.

mod conform;
mod differential;
mod serve;
mod verify;

use clap::{Parser, Subcommand};
use icelab_lab::{self as lab, bench};

/// icelab: an inline crypto engine (ICE) emulator and test lab.
#[derive(Parser, Debug)]
#[command(name = "icelab", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve a disk image as a vhost-user-blk device with an inline crypto engine.
    Serve(serve::ServeArgs),
    /// Build (or find in the cache) the guest side: build root, kernel, patched QEMU, driver, initramfs.
    Build(lab::BuildArgs),
    /// Boot a guest against a fresh emulator, run a suite, report; exit 0 only if all passed.
    Run(lab::run::RunArgs),
    /// Boot the real userland with icelab devices and get a shell (or run --cmd).
    Shell(lab::userland::shell::ShellArgs),
    /// Check an image against a manifest with the independent ciphertext verifier.
    Verify(verify::VerifyArgs),
    /// Check any vhost-user-blk device against docs/PROTOCOL.md (it must accept a new connection per check).
    Conform(conform::ConformArgs),
    /// Measure icelab's performance.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // conform's reference device refuses the stream's invalid requests
    // as any device would: its log lines are not the user's news.
    init_logging(if matches!(cli.command, Command::Conform(_)) {
        "error"
    } else {
        "info"
    });
    let result = match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Build(args) => lab::build(args),
        Command::Run(args) => match lab::run::run(args) {
            Ok(true) => Ok(()),
            Ok(false) => return std::process::ExitCode::FAILURE,
            Err(error) => Err(error),
        },
        Command::Shell(args) => match lab::userland::shell::shell(args) {
            Ok(0) => Ok(()),
            Ok(code) => return std::process::ExitCode::from(code),
            Err(error) => Err(error),
        },
        Command::Verify(args) => match verify::run(args) {
            Ok(true) => Ok(()),
            Ok(false) => return std::process::ExitCode::FAILURE,
            Err(error) => Err(error),
        },
        Command::Conform(args) => match conform::run(args) {
            Ok(true) => Ok(()),
            Ok(false) => return std::process::ExitCode::FAILURE,
            Err(error) => Err(error),
        },
        Command::Bench(command) => bench::run(command),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("icelab: error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Logs to stderr; `RUST_LOG` selects the level (default: `default`).
fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}
