//! `icelab serve` (in progress).

/// Options of `icelab serve`.
#[derive(clap::Args, Debug)]
pub struct ServeArgs {}

/// Runs the device.
pub fn run(_args: ServeArgs) -> anyhow::Result<()> {
    anyhow::bail!("icelab serve is not built yet")
}
