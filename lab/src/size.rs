//! Sizes on command lines: `4096`, `64K`, `64M`, `1G`, `1T`.

use anyhow::{Context, bail};

/// Parses `4096`, `64K`, `64M`, `1G`, `1T` (binary multiples). Errors
/// name the text, not an option: callers add which option it was.
pub fn parse_size(text: &str) -> anyhow::Result<u64> {
    let text = text.trim();
    let (digits, shift) = match text.char_indices().last() {
        Some((at, 'k' | 'K')) => (&text[..at], 10),
        Some((at, 'm' | 'M')) => (&text[..at], 20),
        Some((at, 'g' | 'G')) => (&text[..at], 30),
        Some((at, 't' | 'T')) => (&text[..at], 40),
        _ => (text, 0),
    };
    let value: u64 = digits
        .parse()
        .with_context(|| format!("{text:?} is not a size; write e.g. 64M or 1G"))?;
    let bytes = value
        .checked_mul(1 << shift)
        .with_context(|| format!("{text:?} is too large"))?;
    if bytes < 512 {
        bail!("{text:?} is smaller than one 512-byte sector");
    }
    Ok(bytes)
}

/// `bytes` in the shortest form [`parse_size`] reads back exactly: `1G`,
/// `1536M`, `4K`, `4097`.
pub fn format_size(bytes: u64) -> String {
    for (suffix, shift) in [("T", 40), ("G", 30), ("M", 20), ("K", 10)] {
        if bytes != 0 && bytes.is_multiple_of(1 << shift) {
            return format!("{}{suffix}", bytes >> shift);
        }
    }
    bytes.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_suffixes() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("64K").unwrap(), 64 << 10);
        assert_eq!(parse_size("1g").unwrap(), 1 << 30);
        assert!(parse_size("99999999999T").is_err());
        let error = parse_size("12Q").unwrap_err().to_string();
        assert!(!error.contains("--size"), "{error}");
    }

    #[test]
    fn formatted_sizes_read_back() {
        for bytes in [512, 4096, 4097, 1 << 20, 1536 << 20, 1 << 30, 3 << 40] {
            assert_eq!(parse_size(&format_size(bytes)).unwrap(), bytes);
        }
        assert_eq!(format_size(1 << 30), "1G");
        assert_eq!(format_size(1536 << 20), "1536M");
    }
}
