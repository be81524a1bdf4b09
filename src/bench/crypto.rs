//! `icelab bench crypto` (in progress).

/// Options of `icelab bench crypto`.
#[derive(clap::Args, Debug)]
pub struct CryptoArgs {}

/// Runs the engine bench.
pub fn run(_args: CryptoArgs) -> anyhow::Result<()> {
    anyhow::bail!("icelab bench crypto is not built yet")
}
