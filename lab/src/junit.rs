//! The JUnit XML report (`icelab run --junit FILE`), as CI systems read it
//! (the Ant/Jenkins schema that GitLab, GitHub actions and Jenkins share):
//! one `<testsuite>` per boot, one `<testcase>` per test with the boot as
//! `classname`, `<failure message=...>` holding the failure's message,
//! times in seconds.

use super::report::{BootRecord, Outcome, TestResult};
use std::fmt::Write;

/// The whole document. `title` names the run (`icelab run --suite lab`).
pub fn to_xml(title: &str, boots: &[BootRecord], results: &[TestResult]) -> String {
    // Boots in plan order, then any boot only the results name.
    let mut names: Vec<&str> = boots.iter().map(|b| b.name.as_str()).collect();
    for result in results {
        if !names.contains(&result.boot.as_str()) {
            names.push(&result.boot);
        }
    }
    let failures = results
        .iter()
        .filter(|r| r.outcome == Outcome::Fail)
        .count();
    let total_time: f64 = boots.iter().map(|b| b.duration.as_secs_f64()).sum();
    let mut xml = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        xml,
        "<testsuites name=\"{}\" tests=\"{}\" failures=\"{failures}\" errors=\"0\" time=\"{total_time:.3}\">",
        escape(title),
        results.len(),
    );
    for name in names {
        let boot = boots.iter().find(|b| b.name == name);
        let cases: Vec<&TestResult> = results.iter().filter(|r| r.boot == name).collect();
        write_suite(&mut xml, name, boot, &cases);
    }
    xml.push_str("</testsuites>\n");
    xml
}

fn write_suite(xml: &mut String, name: &str, boot: Option<&BootRecord>, cases: &[&TestResult]) {
    let failures = cases.iter().filter(|r| r.outcome == Outcome::Fail).count();
    let skipped = cases.iter().filter(|r| r.outcome == Outcome::Skip).count();
    let time = boot.map_or(0.0, |b| b.duration.as_secs_f64());
    let _ = writeln!(
        xml,
        "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{failures}\" errors=\"0\" skipped=\"{skipped}\" time=\"{time:.3}\">",
        escape(name),
        cases.len(),
    );
    if let Some(boot) = boot {
        xml.push_str("    <properties>\n");
        let mut properties = vec![
            ("guest_suite", boot.guest_suite.clone()),
            (
                "profile",
                boot.profile.clone().unwrap_or_else(|| "none".into()),
            ),
            ("seed", format!("{:016x}", boot.seed)),
            ("device_args", boot.device_args.join(" ")),
            ("cmdline", boot.cmdline.clone()),
        ];
        if let Some(command) = &boot.device_command {
            properties.push(("device_command", command.clone()));
        }
        for (key, value) in properties {
            let _ = writeln!(
                xml,
                "      <property name=\"{key}\" value=\"{}\"/>",
                escape(&value)
            );
        }
        xml.push_str("    </properties>\n");
    }
    for case in cases {
        let _ = write!(
            xml,
            "    <testcase classname=\"{}\" name=\"{}\" time=\"{:.3}\"",
            escape(name),
            escape(&case.name),
            case.duration.as_secs_f64()
        );
        match case.outcome {
            Outcome::Pass => xml.push_str("/>\n"),
            Outcome::Skip => {
                let _ = writeln!(
                    xml,
                    ">\n      <skipped message=\"{}\"/>\n    </testcase>",
                    escape(&case.message)
                );
            }
            Outcome::Fail => {
                let first = case.message.lines().next().unwrap_or("failed");
                let _ = writeln!(
                    xml,
                    ">\n      <failure message=\"{}\">{}</failure>\n    </testcase>",
                    escape(first),
                    escape(&case.message)
                );
            }
        }
    }
    xml.push_str("  </testsuite>\n");
}

/// Escapes `text` for XML 1.0 text and attribute values (both quote
/// characters included). Characters XML 1.0 forbids even as references
/// (C0 controls other than tab, newline, carriage return, and U+FFFE,
/// U+FFFF) become U+FFFD; newlines and tabs become character references so
/// attribute values keep them.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\n' => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            '\t' => out.push_str("&#9;"),
            c if (c as u32) < 0x20 || c == '\u{fffe}' || c == '\u{ffff}' => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};
    use std::time::Duration;

    fn boot(name: &str, secs: u64) -> BootRecord {
        BootRecord {
            name: name.into(),
            guest_suite: "lab".into(),
            profile: Some("ufs".into()),
            seed: 0xab,
            device_args: vec!["--profile".into(), "ufs".into()],
            device_command: None,
            cmdline: "icelab.suite=lab icelab.seed=00000000000000ab".into(),
            hello: Value::Null,
            stats: Value::Null,
            verifier: Value::Null,
            manifest_files: 0,
            duration: Duration::from_secs(secs),
        }
    }

    /// Checks that `xml` is well formed as far as this writer can go
    /// wrong: every `<`, `>` and `&` is markup or a known reference, tags
    /// nest, attribute values are quoted and hold no raw `<` or `"`.
    fn assert_well_formed(xml: &str) {
        let body = xml
            .strip_prefix("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n")
            .expect("declaration");
        let mut stack: Vec<String> = Vec::new();
        let mut rest = body;
        while let Some(open) = rest.find('<') {
            let text = &rest[..open];
            assert!(!text.contains('>'), "raw > in text {text:?}");
            assert_references(text);
            let close = rest[open..].find('>').expect("tag ends") + open;
            let tag = &rest[open + 1..close];
            assert!(!tag.contains('<'), "raw < inside tag {tag:?}");
            // Attribute values: split on quotes, every odd part is a value.
            let parts: Vec<&str> = tag.split('"').collect();
            assert_eq!(parts.len() % 2, 1, "unbalanced quotes in {tag:?}");
            for value in parts.iter().skip(1).step_by(2) {
                assert_references(value);
                assert!(!value.contains('\n'), "raw newline in attribute");
            }
            let name: String = tag
                .trim_start_matches('/')
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric())
                .collect();
            if tag.starts_with('/') {
                assert_eq!(stack.pop().as_deref(), Some(name.as_str()), "nesting");
            } else if !tag.ends_with('/') {
                stack.push(name);
            }
            rest = &rest[close + 1..];
        }
        assert!(rest.trim().is_empty());
        assert!(stack.is_empty(), "unclosed {stack:?}");
    }

    fn assert_references(text: &str) {
        for (i, _) in text.match_indices('&') {
            let tail = &text[i..];
            assert!(
                [
                    "&amp;", "&lt;", "&gt;", "&quot;", "&apos;", "&#10;", "&#13;", "&#9;"
                ]
                .iter()
                .any(|r| tail.starts_with(r)),
                "bare & in {text:?}"
            );
        }
    }

    #[test]
    fn escapes_markup_quotes_and_controls() {
        assert_eq!(
            escape("a<b>&\"c'\n\u{1}\u{fffe}ü"),
            "a&lt;b&gt;&amp;&quot;c&apos;&#10;\u{fffd}\u{fffd}ü"
        );
        assert_eq!(escape("plain"), "plain");
    }

    #[test]
    fn one_suite_per_boot_one_case_per_test() {
        let pass = TestResult::from_guest(
            "ufs",
            serde_json::from_value(json!({"name": "policy/<lblk64>", "status": "pass",
                "duration_ms": 2500, "message": ""}))
            .expect("a test record"),
        );
        let fail = TestResult::host(
            "emmc",
            "verify",
            false,
            "mismatch: inode 12 data unit 3 at image offset 4096: expected \"aa\" & <bb>\nverifier: 1 files".into(),
            Value::Null,
        );
        let stray = TestResult::host("other", "x", true, String::new(), Value::Null);
        let xml = to_xml(
            "icelab run --suite lab",
            &[boot("ufs", 10), boot("emmc", 20)],
            &[pass, fail, stray],
        );
        assert_well_formed(&xml);
        assert!(xml.contains(
            "<testsuites name=\"icelab run --suite lab\" tests=\"3\" failures=\"1\" errors=\"0\" time=\"30.000\">"
        ));
        assert!(xml.contains("<testsuite name=\"ufs\" tests=\"1\" failures=\"0\""));
        assert!(xml.contains("<testsuite name=\"emmc\" tests=\"1\" failures=\"1\""));
        assert!(xml.contains("<testsuite name=\"other\" tests=\"1\""));
        assert!(xml.contains(
            "<testcase classname=\"ufs\" name=\"policy/&lt;lblk64&gt;\" time=\"2.500\"/>"
        ));
        assert!(xml.contains(
            "<failure message=\"mismatch: inode 12 data unit 3 at image offset 4096: expected &quot;aa&quot; &amp; &lt;bb&gt;\">"
        ));
        assert!(xml.contains("&#10;verifier: 1 files</failure>"));
        assert!(xml.contains("<property name=\"seed\" value=\"00000000000000ab\"/>"));
        // Boots in plan order.
        assert!(xml.find("name=\"ufs\"") < xml.find("name=\"emmc\""));
    }

    #[test]
    fn a_skip_is_a_skipped_case() {
        let skip = TestResult::skipped("ufs", "device-stats", "reads --stats <file>".into());
        let mut record = boot("ufs", 1);
        record.device_command = Some("mydev --socket 's s'".into());
        let xml = to_xml("t", &[record], &[skip]);
        assert_well_formed(&xml);
        assert!(xml.contains("failures=\"0\" errors=\"0\" skipped=\"1\""));
        assert!(xml.contains("<skipped message=\"reads --stats &lt;file&gt;\"/>"));
        assert!(xml.contains(
            "<property name=\"device_command\" value=\"mydev --socket &apos;s s&apos;\"/>"
        ));
    }
}
