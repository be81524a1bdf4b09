//! The kernel log lines about fscrypt's choice of blk-crypto
//! implementation (native or fallback) and the other fscrypt/blk-crypto
//! lines reported as facts.

use crate::cmdline::Expect;
use crate::kmsg;

/// The message fscrypt logs, once per boot and mode, when it starts using
/// blk-crypto for a mode (fs/crypto/inline_crypt.c,
/// fscrypt_log_blk_crypto_impl(): `"fscrypt: %s using blk-crypto
/// (native)\n"` or `"fscrypt: %s using blk-crypto-fallback\n"` with the
/// mode's friendly name).
pub fn impl_message(mode: &str, expect: Expect) -> String {
    match expect {
        Expect::Native => format!("fscrypt: {mode} using blk-crypto (native)"),
        Expect::Fallback => format!("fscrypt: {mode} using blk-crypto-fallback"),
    }
}

/// What the kernel log says about fscrypt's implementation choice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImplLines<'a> {
    /// The record with the expected message, if any.
    pub expected: Option<&'a kmsg::Record>,
    /// The record with the other implementation's message, if any.
    pub other: Option<&'a kmsg::Record>,
}

/// Finds fscrypt's "using blk-crypto" records for `mode` in `records`.
pub fn find_impl_lines<'a>(
    records: &'a [kmsg::Record],
    mode: &str,
    expect: Expect,
) -> ImplLines<'a> {
    let other_expect = match expect {
        Expect::Native => Expect::Fallback,
        Expect::Fallback => Expect::Native,
    };
    let want = impl_message(mode, expect);
    let other = impl_message(mode, other_expect);
    ImplLines {
        expected: records.iter().find(|r| r.text.contains(&want)),
        other: records.iter().find(|r| r.text.contains(&other)),
    }
}

/// The records that mention fscrypt or blk-crypto (for the facts).
pub fn crypto_log_lines(records: &[kmsg::Record], max: usize) -> Vec<String> {
    records
        .iter()
        .filter(|r| r.text.contains("fscrypt") || r.text.contains("blk-crypto"))
        .take(max)
        .map(|r| r.text.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::suites::steps::AES_256_XTS;

    fn rec(seq: u64, text: &str) -> kmsg::Record {
        kmsg::Record {
            prio: 6,
            seq,
            ts_usec: seq * 1000,
            text: text.into(),
        }
    }

    #[test]
    fn impl_lines_are_found_both_ways() {
        assert_eq!(
            impl_message("AES-256-XTS", Expect::Native),
            "fscrypt: AES-256-XTS using blk-crypto (native)"
        );
        let records = vec![
            rec(1, "icelab_vblk: virtio2: inline encryption: 32 keyslots"),
            rec(2, "fscrypt: AES-256-XTS using blk-crypto (native)"),
            rec(3, "EXT4-fs (vda): mounted filesystem"),
        ];
        let native = find_impl_lines(&records, AES_256_XTS, Expect::Native);
        assert_eq!(native.expected.map(|r| r.seq), Some(2));
        assert_eq!(native.other, None);
        let fallback = find_impl_lines(&records, AES_256_XTS, Expect::Fallback);
        assert_eq!(fallback.expected, None);
        assert_eq!(fallback.other.map(|r| r.seq), Some(2));
        assert_eq!(
            crypto_log_lines(&records, 10),
            vec!["fscrypt: AES-256-XTS using blk-crypto (native)"]
        );
    }
}
