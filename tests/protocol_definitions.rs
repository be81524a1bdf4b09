//! The wire format has three definitions: the `icelab-protocol` crate
//! (Rust: device, frontend, tests), `guest-driver/icevblk_proto.h` (C: the
//! guest driver) and the QEMU patch (`images/qemu/*.patch`: feature bits and
//! config layout). This test reads the two text definitions and checks every
//! shared constant and structure size against the crate, so that a change
//! in one place fails here, not in a two-minute lab boot.
//!
//! Struct sizes are checked twice: the `static_assert` the C compiler
//! enforces must state the crate's size, and the fields listed in the C
//! struct must add up to it.

use icelab_protocol::{
    CONFIG_SIZE, CryptoMode, CryptoMsg, KEY_BLOB_SIZE, KeyDesc, KeyType, MAX_KEY_BYTES,
    RequestType, SW_SECRET_SIZE, VIRTIO_BLK_F_CTRL_VQ, VIRTIO_BLK_F_INLINE_ENCRYPTION,
    config_offset,
};
use std::collections::BTreeMap;
use std::path::Path;

fn repo_file(path: &str) -> String {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("cannot read {}: {e}", full.display()))
}

/// Parses a C integer literal (decimal or 0x hex).
fn c_integer(text: &str) -> Option<u64> {
    let text = text.trim().trim_end_matches(['u', 'U', 'l', 'L']);
    match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

/// Every `#define NAME VALUE` with an integer value (a leading `+` of a
/// patch line is dropped; trailing comments are ignored).
fn defines(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|line| {
            let line = line.strip_prefix('+').unwrap_or(line).trim_start();
            let rest = line.strip_prefix("#define")?;
            let rest = rest.split("/*").next()?;
            let mut words = rest.split_whitespace();
            let name = words.next()?;
            let value = c_integer(words.next()?)?;
            words.next().is_none().then(|| (name.to_owned(), value))
        })
        .collect()
}

/// `static_assert(sizeof(struct NAME) == N)` lines: NAME -> N.
fn asserted_sizes(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|line| {
            let rest = line.trim().strip_prefix("static_assert(sizeof(struct ")?;
            let (name, rest) = rest.split_once(')')?;
            let value = rest.trim().strip_prefix("==")?.trim().strip_suffix(");")?;
            Some((name.trim().to_owned(), c_integer(value)?))
        })
        .collect()
}

/// The byte size of `struct NAME { ... }` in `text`, summed from its
/// fields (`__le16/32/64`, `u8`, with array lengths given as numbers or as
/// macros of `defines`). Panics on a field type it does not know, so a new
/// field cannot slip past.
fn summed_size(text: &str, name: &str, defines: &BTreeMap<String, u64>) -> u64 {
    let start = text
        .find(&format!("struct {name} {{"))
        .unwrap_or_else(|| panic!("no struct {name} in the header"));
    let body = &text[start..];
    let body = &body[body.find('{').expect("{") + 1..body.find('}').expect("}")];
    let mut size = 0;
    for field in body.split(';').map(str::trim).filter(|f| !f.is_empty()) {
        let mut words = field.split_whitespace();
        let ty = words.next().expect("field type");
        let declarator = words.collect::<String>();
        let width = match ty {
            "u8" | "__u8" => 1,
            "__le16" | "__virtio16" => 2,
            "__le32" | "__virtio32" => 4,
            "__le64" | "__virtio64" => 8,
            other => panic!("struct {name}: field type {other} unknown to this test"),
        };
        let count = match declarator.split_once('[') {
            Some((_, len)) => {
                let len = len.trim_end_matches(']');
                c_integer(len)
                    .or_else(|| defines.get(len).copied())
                    .unwrap_or_else(|| panic!("struct {name}: array length {len} unknown"))
            }
            None => 1,
        };
        size += width * count;
    }
    size
}

#[track_caller]
fn check(found: &BTreeMap<String, u64>, name: &str, want: u64, file: &str) {
    match found.get(name) {
        Some(&value) => assert_eq!(
            value, want,
            "{file}: {name} is {value}, but the icelab-protocol crate says {want}"
        ),
        None => panic!("{file}: no `#define {name}` (the crate's value is {want})"),
    }
}

const HEADER: &str = "guest-driver/icevblk_proto.h";
const PATCH: &str = "images/qemu/0001-vhost-user-blk-inline-encryption.patch";

#[test]
fn the_guest_driver_header_matches_the_crate() {
    let text = repo_file(HEADER);
    let found = defines(&text);
    let wire = |request: RequestType| u64::from(request.to_wire());
    let expected: Vec<(&str, u64)> = vec![
        ("ICEVBLK_F_CTRL_VQ", VIRTIO_BLK_F_CTRL_VQ.into()),
        (
            "ICEVBLK_F_INLINE_ENCRYPTION",
            VIRTIO_BLK_F_INLINE_ENCRYPTION.into(),
        ),
        ("ICEVBLK_CFG_MAX_SLOTS", config_offset::MAX_SLOTS as u64),
        (
            "ICEVBLK_CFG_MAX_DUN_BYTES",
            config_offset::MAX_DUN_BYTES as u64,
        ),
        ("ICEVBLK_CFG_KEY_TYPES", config_offset::KEY_TYPES as u64),
        ("ICEVBLK_KEY_TYPES_RAW", KeyType::Raw.config_bit().into()),
        (
            "ICEVBLK_KEY_TYPES_HW_WRAPPED",
            KeyType::HardwareWrapped.config_bit().into(),
        ),
        ("ICEVBLK_T_CRYPTO_OUT", wire(RequestType::CryptoOut)),
        ("ICEVBLK_T_CRYPTO_IN", wire(RequestType::CryptoIn)),
        (
            "ICEVBLK_T_GET_CRYPTO_MODES",
            wire(RequestType::GetCryptoModes),
        ),
        (
            "ICEVBLK_T_KEYSLOT_PROGRAM",
            wire(RequestType::KeyslotProgram),
        ),
        ("ICEVBLK_T_KEYSLOT_EVICT", wire(RequestType::KeyslotEvict)),
        (
            "ICEVBLK_T_DERIVE_SW_SECRET",
            wire(RequestType::DeriveSwSecret),
        ),
        ("ICEVBLK_T_GENERATE_KEY", wire(RequestType::GenerateKey)),
        ("ICEVBLK_T_IMPORT_KEY", wire(RequestType::ImportKey)),
        ("ICEVBLK_T_PREPARE_KEY", wire(RequestType::PrepareKey)),
        (
            "ICEVBLK_MODE_AES_256_XTS",
            CryptoMode::Aes256Xts.to_wire().into(),
        ),
        ("ICEVBLK_NR_MODES", CryptoMode::TABLE_LEN as u64),
        ("ICEVBLK_KEY_TYPE_RAW", KeyType::Raw.to_wire().into()),
        (
            "ICEVBLK_KEY_TYPE_HW_WRAPPED",
            KeyType::HardwareWrapped.to_wire().into(),
        ),
        ("ICEVBLK_MAX_KEY_BYTES", MAX_KEY_BYTES as u64),
        ("ICEVBLK_DUN_WORDS", 4),
        ("ICEVBLK_SW_SECRET_BYTES", SW_SECRET_SIZE as u64),
    ];
    for (name, want) in &expected {
        check(&found, name, *want, HEADER);
    }

    let asserted = asserted_sizes(&text);
    for (name, want) in [
        ("icevblk_crypto_msg", CryptoMsg::SIZE),
        ("icevblk_key_desc", KeyDesc::SIZE),
        ("icevblk_key_blob", KEY_BLOB_SIZE),
    ] {
        let want = want as u64;
        assert_eq!(
            asserted.get(name),
            Some(&want),
            "{HEADER}: static_assert(sizeof(struct {name}) == {want}) missing or different"
        );
        assert_eq!(
            summed_size(&text, name, &found),
            want,
            "{HEADER}: the fields of struct {name} do not add up to the crate's {want} bytes"
        );
    }
}

#[test]
fn the_qemu_patch_matches_the_crate() {
    let text = repo_file(PATCH);
    let found = defines(&text);
    check(
        &found,
        "VIRTIO_BLK_F_CTRL_VQ",
        VIRTIO_BLK_F_CTRL_VQ.into(),
        PATCH,
    );
    check(
        &found,
        "VIRTIO_BLK_F_INLINE_ENCRYPTION",
        VIRTIO_BLK_F_INLINE_ENCRYPTION.into(),
        PATCH,
    );
    let bug_on = |expression: &str| -> u64 {
        let line = text
            .lines()
            .find(|line| line.starts_with('+') && line.contains(expression))
            .unwrap_or_else(|| panic!("{PATCH}: no added line with `{expression}`"));
        let value = line
            .rsplit("!=")
            .next()
            .and_then(|rest| rest.trim().strip_suffix(");"))
            .unwrap_or_else(|| panic!("{PATCH}: cannot read the value of `{line}`"));
        c_integer(value).unwrap_or_else(|| panic!("{PATCH}: `{value}` is not a number"))
    };
    assert_eq!(
        bug_on("QEMU_BUILD_BUG_ON(offsetof(struct virtio_blk_config, max_slots)"),
        config_offset::MAX_SLOTS as u64,
        "{PATCH}: max_slots offset"
    );
    assert_eq!(
        bug_on("QEMU_BUILD_BUG_ON(sizeof(struct virtio_blk_config)"),
        CONFIG_SIZE as u64,
        "{PATCH}: config size"
    );
    // The crypto fields follow max_slots in the crate's order and widths.
    let fields: Vec<&str> = text
        .lines()
        .filter_map(|line| line.strip_prefix('+'))
        .map(str::trim)
        .filter(|line| {
            ["max_slots;", "max_dun_bytes;", "key_types;"]
                .iter()
                .any(|field| line.ends_with(field))
        })
        .collect();
    assert_eq!(
        fields,
        [
            "__virtio16 max_slots;",
            "uint8_t max_dun_bytes;",
            "uint8_t key_types;"
        ],
        "{PATCH}: the inline-encryption config fields"
    );
    assert_eq!(
        config_offset::MAX_DUN_BYTES,
        config_offset::MAX_SLOTS + 2,
        "crate: max_dun_bytes follows the le16 max_slots"
    );
    assert_eq!(config_offset::KEY_TYPES, config_offset::MAX_DUN_BYTES + 1);
}

#[test]
fn the_parsers_of_this_test_read_what_they_claim() {
    let text = "#define A\t22\t/* x */\n+#define B 0x10\n#define C(x) x\nstatic_assert(sizeof(struct s) == 12);\nstruct s {\n\t__le32 a;\n\tu8 b[N];\n} __packed;\n";
    let found = defines(text);
    assert_eq!(found.get("A"), Some(&22));
    assert_eq!(found.get("B"), Some(&16));
    assert!(!found.contains_key("C(x)"));
    assert_eq!(asserted_sizes(text).get("s"), Some(&12));
    let macros = BTreeMap::from([("N".to_owned(), 8)]);
    assert_eq!(summed_size(text, "s", &macros), 12);
}
