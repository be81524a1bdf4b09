//! icelab-verifier: an independent on-disk oracle for fscrypt v2 contents
//! encryption on ext4.
//!
//! Purpose: prove that the bytes on a disk image are exactly the
//! ciphertext the files' fscrypt policies demand, and that the plaintext
//! appears nowhere on the image. It follows the published definitions
//! (RFC 5869, IEEE 1619, the kernel's fscrypt documentation and sources)
//! and shares no code with icelab's engine; speed is a non-goal.
//!
//! Limits: v2 policies with AES-256-XTS contents and raw master keys only
//! (per-file keys, IV_INO_LBLK_64, IV_INO_LBLK_32, any
//! `log2_data_unit_size`); no v1 policies, DIRECT_KEY/Adiantum,
//! hardware-wrapped keys, filenames, inline data or block-mapped
//! (non-extent) inodes. The image must be the bare filesystem (no
//! partition table). Whole data units only.
//!
//! Images written through a device with a default key (every request
//! without a crypto context encrypted under it) are checked by
//! [`verify_with_default_key`] ([`default_key`]).

pub mod check;
pub mod default_key;
pub mod dun;
pub mod ext4;
pub mod hex;
pub mod hw_kdf;
pub mod kdf;
pub mod manifest;
pub mod xts;

pub use check::{Mismatch, PlaintextHit, Problem, Report, verify};
pub use default_key::{DefaultKeyReport, verify_with_default_key};
pub use manifest::{FileEntry, Manifest, PlainFile, Plaintext, PolicySpec};

/// Errors that stop verification (as opposed to findings in a [`Report`]).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot run {tool} (is e2fsprogs installed?)")]
    Tool {
        tool: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{tool} failed: {stderr}")]
    ToolFailed { tool: String, stderr: String },
    #[error("cannot parse e2fsprogs output: {0}")]
    Parse(String),
    #[error("bad manifest: {0}")]
    Manifest(String),
    #[error("reading image {path}")]
    Image {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("writing the decrypted view {path}")]
    View {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T> = std::result::Result<T, Error>;
