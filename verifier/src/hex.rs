//! Hex encoding for keys, identifiers and digests in manifests and reports.

/// Lower-case hex of `bytes`.
pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parse hex (either case, even length, no separators): the manifest's.
pub use icelab_contract::manifest::from_hex;
