//! `icelab verify`: checks an image against a manifest with the
//! independent verifier (`verifier/`): every data unit of every listed file
//! must be exactly the ciphertext its fscrypt policy demands, and no
//! plaintext data unit may appear anywhere on the image. With
//! `--default-key`, the image was written through a device with that
//! default key (everything without a crypto context encrypted under it):
//! the file system is read from the decrypted view and the raw image must
//! hold none of it in the clear (verifier/README.md, "Default key").

use anyhow::Context;
use icelab_verifier::Manifest;
use std::path::PathBuf;

/// Options of `icelab verify`.
#[derive(clap::Args, Debug)]
pub struct VerifyArgs {
    /// The disk image (an ext4 file system written by the guest).
    #[arg(long)]
    pub image: PathBuf,
    /// The manifest: per file the inode, master key, policy and plaintext generator
    /// (schema in verifier/README.md).
    #[arg(long)]
    pub manifest: PathBuf,
    /// The device's default key (64 raw bytes, as given to `icelab serve
    /// --default-key`): check a default-key image.
    #[arg(long, value_name = "FILE")]
    pub default_key: Option<PathBuf>,
    /// Write the report as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

/// Runs the check; `Ok(false)` when the image does not hold what the
/// manifest's policies demand.
pub fn run(args: VerifyArgs) -> anyhow::Result<bool> {
    let text = std::fs::read(&args.manifest)
        .with_context(|| format!("cannot read the manifest {}", args.manifest.display()))?;
    let manifest: Manifest = serde_json::from_slice(&text).with_context(|| {
        format!(
            "the manifest {} is not valid (schema: verifier/README.md)",
            args.manifest.display()
        )
    })?;
    let report = match &args.default_key {
        Some(path) => {
            let key =
                icelab_verifier::default_key::read_key_file(path).map_err(anyhow::Error::msg)?;
            icelab_verifier::verify_with_default_key(&args.image, &manifest, &key)
        }
        None => icelab_verifier::verify(&args.image, &manifest),
    }
    .with_context(|| format!("cannot verify {}", args.image.display()))?;
    print!("{report}");
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(report.passed())
}
