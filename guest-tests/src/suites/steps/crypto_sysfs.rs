//! The disk's inline encryption capabilities in sysfs
//! (/sys/block/NAME/queue/crypto/): reading them, checking them against
//! the expectations, and turning them into facts.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

/// What /sys/block/NAME/queue/crypto/ shows (Documentation/ABI/stable/
/// sysfs-block): `num_keyslots` and `max_dun_bits` in decimal, one file
/// per supported mode under `modes/` with the data unit size mask in hex
/// (`0x%x`), and, since Linux 6.15, `raw_keys` / `hw_wrapped_keys`, each
/// present only when that key type is supported and reading `supported`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CryptoSysfs {
    /// `num_keyslots`.
    pub num_keyslots: u32,
    /// `max_dun_bits`.
    pub max_dun_bits: u32,
    /// `modes/*`: mode name to mask.
    pub modes: BTreeMap<String, u32>,
    /// `raw_keys`, if present (trimmed).
    pub raw_keys: Option<String>,
    /// `hw_wrapped_keys`, if present (trimmed).
    pub hw_wrapped_keys: Option<String>,
}

/// Errors reading the crypto directory: which file and why.
#[derive(Debug, thiserror::Error)]
pub enum SysfsError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A file's contents are not in the documented format.
    #[error("{path} reads {text:?}, expected {expected}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What it holds.
        text: String,
        /// The documented format.
        expected: &'static str,
    },
}

fn read_trimmed(path: &Path) -> Result<String, SysfsError> {
    fs::read_to_string(path)
        .map(|t| t.trim().to_owned())
        .map_err(|source| SysfsError::Read {
            path: path.to_owned(),
            source,
        })
}

fn read_optional(path: &Path) -> Result<Option<String>, SysfsError> {
    match fs::read_to_string(path) {
        Ok(t) => Ok(Some(t.trim().to_owned())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(SysfsError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Parses a sysfs mode mask as the kernel prints it (`0x%x`).
pub fn parse_mask(text: &str) -> Option<u32> {
    let hex = text.trim().strip_prefix("0x")?;
    u32::from_str_radix(hex, 16).ok()
}

fn parse_decimal(path: &Path, text: &str) -> Result<u32, SysfsError> {
    text.parse().map_err(|_| SysfsError::Format {
        path: path.to_owned(),
        text: text.to_owned(),
        expected: "a decimal number",
    })
}

/// Reads a queue/crypto directory.
pub fn read_crypto_sysfs(dir: &Path) -> Result<CryptoSysfs, SysfsError> {
    let p = dir.join("num_keyslots");
    let num_keyslots = parse_decimal(&p, &read_trimmed(&p)?)?;
    let p = dir.join("max_dun_bits");
    let max_dun_bits = parse_decimal(&p, &read_trimmed(&p)?)?;
    let modes_dir = dir.join("modes");
    let mut modes = BTreeMap::new();
    let entries = fs::read_dir(&modes_dir).map_err(|source| SysfsError::Read {
        path: modes_dir.clone(),
        source,
    })?;
    for entry in entries {
        let entry = entry.map_err(|source| SysfsError::Read {
            path: modes_dir.clone(),
            source,
        })?;
        let path = entry.path();
        let text = read_trimmed(&path)?;
        let mask = parse_mask(&text).ok_or_else(|| SysfsError::Format {
            path: path.clone(),
            text: text.clone(),
            expected: "a hex mask like 0x1e00",
        })?;
        modes.insert(entry.file_name().to_string_lossy().into_owned(), mask);
    }
    Ok(CryptoSysfs {
        num_keyslots,
        max_dun_bits,
        modes,
        raw_keys: read_optional(&dir.join("raw_keys"))?,
        hw_wrapped_keys: read_optional(&dir.join("hw_wrapped_keys"))?,
    })
}

/// The sysfs name of AES-256-XTS (blk_crypto_modes[].name).
pub const AES_256_XTS: &str = "AES-256-XTS";

/// The expectations crypto-sysfs checks in native mode.
#[derive(Debug, Clone, Copy, Default)]
pub struct CryptoExpect {
    /// `icelab.slots`.
    pub slots: Option<u32>,
    /// `icelab.max_dun_bits`.
    pub max_dun_bits: Option<u32>,
    /// `icelab.modes`.
    pub modes: Option<u32>,
    /// The kernel's (major, minor): from 6.15 on `raw_keys` must exist.
    pub kernel: Option<(u32, u32)>,
}

/// Compares what sysfs shows with the expectations; returns one line per
/// mismatch (empty when all match).
pub fn check_crypto_sysfs(seen: &CryptoSysfs, want: &CryptoExpect) -> Vec<String> {
    let mut bad = Vec::new();
    match want.slots {
        Some(n) if seen.num_keyslots != n => {
            bad.push(format!(
                "num_keyslots is {}, expected {n}",
                seen.num_keyslots
            ));
        }
        None if seen.num_keyslots == 0 => bad.push("num_keyslots is 0".to_owned()),
        _ => {}
    }
    match want.max_dun_bits {
        Some(n) if seen.max_dun_bits != n => {
            bad.push(format!(
                "max_dun_bits is {}, expected {n}",
                seen.max_dun_bits
            ));
        }
        None if seen.max_dun_bits == 0 => bad.push("max_dun_bits is 0".to_owned()),
        _ => {}
    }
    match (seen.modes.get(AES_256_XTS), want.modes) {
        (None, _) => bad.push(format!("modes/{AES_256_XTS} is absent")),
        (Some(&m), Some(w)) if m != w => {
            bad.push(format!("modes/{AES_256_XTS} is {m:#x}, expected {w:#x}"));
        }
        _ => {}
    }
    match seen.raw_keys.as_deref() {
        Some("supported") => {}
        Some(other) => bad.push(format!("raw_keys reads {other:?}, expected \"supported\"")),
        None if want.kernel.is_some_and(|k| k >= (6, 15)) => {
            bad.push(
                "raw_keys is absent (Linux 6.15+ shows it when the device supports raw keys)"
                    .to_owned(),
            );
        }
        None => {}
    }
    bad
}

/// The facts of a crypto directory.
pub fn crypto_facts(seen: &CryptoSysfs) -> Value {
    let modes: serde_json::Map<String, Value> = seen
        .modes
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(format!("{v:#x}"))))
        .collect();
    json!({
        "num_keyslots": seen.num_keyslots,
        "max_dun_bits": seen.max_dun_bits,
        "modes": modes,
        "raw_keys": seen.raw_keys,
        "hw_wrapped_keys": seen.hw_wrapped_keys,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_parse_as_the_kernel_prints_them() {
        assert_eq!(parse_mask("0x1e00\n"), Some(0x1e00));
        assert_eq!(parse_mask("0x200"), Some(0x200));
        assert_eq!(parse_mask("7680"), None);
        assert_eq!(parse_mask("0xzz"), None);
    }

    fn ufs() -> CryptoSysfs {
        CryptoSysfs {
            num_keyslots: 32,
            max_dun_bits: 64,
            modes: [(AES_256_XTS.to_owned(), 0x1e00)].into_iter().collect(),
            raw_keys: Some("supported".into()),
            hw_wrapped_keys: None,
        }
    }

    #[test]
    fn crypto_sysfs_matches_and_mismatches() {
        let want = CryptoExpect {
            slots: Some(32),
            max_dun_bits: Some(64),
            modes: Some(0x1e00),
            kernel: Some((7, 3)),
        };
        assert!(check_crypto_sysfs(&ufs(), &want).is_empty());
        let mut seen = ufs();
        seen.num_keyslots = 2;
        seen.modes.insert(AES_256_XTS.into(), 0x200);
        seen.raw_keys = None;
        assert_eq!(
            check_crypto_sysfs(&seen, &want),
            vec![
                "num_keyslots is 2, expected 32",
                "modes/AES-256-XTS is 0x200, expected 0x1e00",
                "raw_keys is absent (Linux 6.15+ shows it when the device supports raw keys)",
            ]
        );
        // Older kernels have no raw_keys file; unchecked values only need
        // to be non-zero.
        let old = CryptoExpect {
            kernel: Some((6, 12)),
            ..CryptoExpect::default()
        };
        assert!(check_crypto_sysfs(&seen, &old).is_empty());
        seen.modes.clear();
        assert_eq!(
            check_crypto_sysfs(&seen, &old),
            vec!["modes/AES-256-XTS is absent"]
        );
    }

    #[test]
    fn crypto_facts_show_masks_in_hex() {
        let v = crypto_facts(&ufs());
        assert_eq!(v["modes"]["AES-256-XTS"], "0x1e00");
        assert_eq!(v["num_keyslots"], 32);
        assert_eq!(v["raw_keys"], "supported");
        assert_eq!(v["hw_wrapped_keys"], Value::Null);
    }

    #[test]
    fn reads_a_crypto_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        fs::write(d.join("num_keyslots"), "32\n").expect("write");
        fs::write(d.join("max_dun_bits"), "64\n").expect("write");
        fs::write(d.join("raw_keys"), "supported\n").expect("write");
        fs::create_dir(d.join("modes")).expect("mkdir");
        fs::write(d.join("modes/AES-256-XTS"), "0x1e00\n").expect("write");
        assert_eq!(read_crypto_sysfs(d).expect("reads"), ufs());
        fs::write(d.join("modes/AES-256-XTS"), "lots\n").expect("write");
        let e = read_crypto_sysfs(d).expect_err("bad mask");
        assert!(
            e.to_string()
                .ends_with("reads \"lots\", expected a hex mask like 0x1e00"),
            "{e}"
        );
        fs::remove_file(d.join("num_keyslots")).expect("rm");
        let e = read_crypto_sysfs(d).expect_err("missing");
        assert!(e.to_string().starts_with("cannot read "), "{e}");
    }
}
