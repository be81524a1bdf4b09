//! The lab: build the guest side (`icelab build`) and run suites in a
//! guest against the emulator (`icelab run`).

pub mod artifacts;
pub mod boot;
pub mod cache_key;
pub mod checks;
pub mod cpio;
pub mod initramfs;
pub mod junit;
pub mod marks;
pub mod plan;
pub mod qemu;
pub mod report;
pub mod run;
pub mod verify;

/// Options of `icelab build`.
#[derive(clap::Args, Debug)]
pub struct BuildArgs {
    /// Your own QEMU binary instead of building the patched one.
    #[arg(long)]
    pub qemu: Option<std::path::PathBuf>,
}

/// `icelab build`: builds (or finds in the cache) everything a run needs
/// and prints where it is.
pub fn build(args: BuildArgs) -> anyhow::Result<()> {
    let artifacts = artifacts::build(&artifacts::Overrides {
        qemu: args.qemu,
        ..Default::default()
    })?;
    println!(
        "kernel     {} {} ({})",
        artifacts.kernel_package,
        artifacts.kernel_version,
        artifacts.kernel.display()
    );
    println!(
        "qemu       {} ({})",
        artifacts.qemu_version,
        artifacts.qemu.display()
    );
    println!("initramfs  {}", artifacts.initramfs.display());
    Ok(())
}
