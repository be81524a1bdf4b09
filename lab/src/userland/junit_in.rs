//! Reading a JUnit XML file the user's command wrote (`--guest-junit`,
//! e.g. xfstests' `-R xunit` result) into icelab's test results: one result
//! per `<testcase>`, named `SUITE/NAME` after its `<testsuite>`.

use crate::report::{Outcome, Source, TestResult};
use anyhow::{Context, bail};
use serde_json::json;
use std::path::Path;
use std::time::Duration;

/// Longest message kept per test case (the failure's text and output).
const MESSAGE_LIMIT: usize = 4096;

/// The test cases of the JUnit file at `path`, as results of `boot`.
pub fn read(path: &Path, boot: &str) -> anyhow::Result<Vec<TestResult>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the guest's JUnit file {}", path.display()))?;
    parse(&text, boot).with_context(|| format!("{} is not JUnit XML", path.display()))
}

/// The test cases of a JUnit document.
pub fn parse(text: &str, boot: &str) -> anyhow::Result<Vec<TestResult>> {
    let document = roxmltree::Document::parse(text)?;
    let root = document.root_element();
    let suites: Vec<roxmltree::Node<'_, '_>> = match root.tag_name().name() {
        "testsuites" => root
            .children()
            .filter(|n| n.has_tag_name("testsuite"))
            .collect(),
        "testsuite" => vec![root],
        other => bail!("the root element is <{other}>, not <testsuites> or <testsuite>"),
    };
    let mut results = Vec::new();
    for suite in suites {
        let suite_name = suite.attribute("name").unwrap_or("junit");
        for case in suite.children().filter(|n| n.has_tag_name("testcase")) {
            results.push(test_case(boot, suite_name, &case));
        }
    }
    Ok(results)
}

fn test_case(boot: &str, suite: &str, case: &roxmltree::Node<'_, '_>) -> TestResult {
    let name = case.attribute("name").unwrap_or("unnamed");
    let child = |tag: &str| case.children().find(|n| n.has_tag_name(tag));
    let text_of = |node: roxmltree::Node<'_, '_>| {
        let attribute = node.attribute("message").unwrap_or_default().trim();
        let body = node.text().unwrap_or_default().trim();
        match (attribute.is_empty(), body.is_empty()) {
            (false, false) => format!("{attribute}\n{body}"),
            (false, true) => attribute.to_owned(),
            _ => body.to_owned(),
        }
    };
    let (outcome, mut message) = if let Some(node) = child("failure").or_else(|| child("error")) {
        (Outcome::Fail, text_of(node))
    } else if let Some(node) = child("skipped") {
        (Outcome::Skip, text_of(node))
    } else {
        (Outcome::Pass, String::new())
    };
    if outcome == Outcome::Fail {
        for tag in ["system-out", "system-err"] {
            if let Some(out) = child(tag).and_then(|n| n.text()).map(str::trim)
                && !out.is_empty()
            {
                message.push_str(&format!("\n--- {tag}:\n{out}"));
            }
        }
    }
    if message.len() > MESSAGE_LIMIT {
        let mut cut = MESSAGE_LIMIT;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
        message.push_str(" [...]");
    }
    let seconds = case
        .attribute("time")
        .and_then(|t| t.trim().parse::<f64>().ok())
        .filter(|t| t.is_finite() && *t >= 0.0)
        .unwrap_or(0.0);
    TestResult {
        boot: boot.to_owned(),
        source: Source::Guest,
        name: format!("{suite}/{name}"),
        outcome,
        duration: Duration::from_secs_f64(seconds),
        message,
        facts: json!({"junit_classname": case.attribute("classname")}),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape of an xfstests `-R xunit` result.
    const XFSTESTS: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<testsuite name="xfstests" failures="1" skipped="1" tests="3" time="44" hostname="icelab">
  <properties><property name="MOUNT_OPTIONS" value="-o inlinecrypt"/></properties>
  <testcase classname="xfstests.global" name="generic/397" time="12"></testcase>
  <testcase classname="xfstests.global" name="generic/368" time="0">
    <skipped message="doesn't support hardware-wrapped inline encryption keys"/>
  </testcase>
  <testcase classname="xfstests.global" name="generic/548" time="3.5">
    <failure message="- output mismatch (see 548.out.bad)" type="TestFail"/>
    <system-out>--- 548.out
+++ 548.out.bad
@@ -1 +1 @@
-Silence is golden
+ciphertext differs</system-out>
  </testcase>
</testsuite>"#;

    #[test]
    fn xfstests_xunit_becomes_one_result_per_case() {
        let results = parse(XFSTESTS, "userland").expect("parses");
        let names: Vec<&str> = results.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "xfstests/generic/397",
                "xfstests/generic/368",
                "xfstests/generic/548"
            ]
        );
        let outcomes: Vec<&Outcome> = results.iter().map(|r| &r.outcome).collect();
        assert_eq!(outcomes, [&Outcome::Pass, &Outcome::Skip, &Outcome::Fail]);
        assert!(results[1].message.contains("hardware-wrapped"));
        assert!(results[2].message.starts_with("- output mismatch"));
        assert!(results[2].message.contains("+ciphertext differs"));
        assert_eq!(results[2].duration, Duration::from_millis(3500));
        assert!(
            results
                .iter()
                .all(|r| r.source == Source::Guest && r.boot == "userland")
        );
    }

    #[test]
    fn several_suites_and_errors_count() {
        let text = r#"<testsuites>
  <testsuite name="mine"><testcase name="a"><error message="boom"/></testcase></testsuite>
  <testsuite name="other"><testcase name="b" time="x"/></testsuite>
</testsuites>"#;
        let results = parse(text, "b").expect("parses");
        assert_eq!(results[0].name, "mine/a");
        assert_eq!(results[0].outcome, Outcome::Fail);
        assert_eq!(results[0].message, "boom");
        assert_eq!(results[1].name, "other/b");
        assert_eq!(results[1].duration, Duration::ZERO);
    }

    #[test]
    fn what_is_not_junit_is_refused() {
        assert!(parse("<html/>", "b").is_err());
        assert!(parse("not xml", "b").is_err());
    }
}
