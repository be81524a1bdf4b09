//! icelab's lab and benches, as a library the `icelab` binary (its CLI)
//! drives: build the guest side (`icelab build`), run suites in a guest
//! against the emulator (`icelab run`), measure (`icelab bench`), and start
//! `icelab serve` for all of them and for the tests ([`serve_process`]).
//!
//! Layers, each using only those above it: [`size`], [`serve_process`];
//! the guest side ([`artifacts`], [`cache_key`], [`cpio`], [`initramfs`],
//! [`qemu`]); a boot ([`plan`], [`boot`]); its checks ([`report`],
//! [`checks`], [`timeline`] and [`marks`] (the device's trace with the
//! guest's marks, and the checks against it), [`verify`], [`junit`]); a
//! run ([`run`]); and [`bench`], which boots through [`plan`] and
//! [`boot`] too.

pub mod artifacts;
pub mod boot;
pub mod cache_key;
pub mod checks;
pub mod cpio;
pub mod initramfs;
pub mod junit;
pub mod kcidb;
pub mod key_usage;
pub mod marks;
pub mod memory_scan;
pub mod plan;
pub mod qemu;
pub mod report;
pub mod run;
pub mod serve_process;
pub mod size;
pub mod timeline;
pub mod userland;
pub mod verify;

pub mod bench;

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
    let userland = artifacts::userland_image(&artifacts)?;
    println!("userland   {}", userland.display());
    Ok(())
}

/// The `icelab` binary running this code, for starting `icelab serve`
/// from `run` and `bench`. `/proc/self/exe` still works when the file was
/// replaced by a rebuild while we run; elsewhere the path we were started
/// from.
pub fn icelab_exe() -> std::path::PathBuf {
    let proc_exe = std::path::PathBuf::from("/proc/self/exe");
    if proc_exe.exists() {
        return proc_exe;
    }
    std::env::current_exe().unwrap_or_else(|_| std::path::PathBuf::from("icelab"))
}
