//! `scripts/install-deps` is the one file that installs host packages.
//!
//! Two recipes run side by side during `icelab build`; when each ran
//! apt-get on the host, the second one died on apt's lock on a fresh
//! machine. This test reads every tracked file and fails when any other
//! file runs apt (apt-get, apt) against the host's package state. apt in
//! the build root's chroot (`in_root apt-get ...`) or with a private state
//! directory (`apt_private`, built on `${apt_opts[@]}`) is allowed: neither
//! takes the host's locks.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The only file allowed to run apt on the host.
const INSTALLER: &str = "scripts/install-deps";

/// Markers of apt runs that do not touch the host's apt state.
const PRIVATE_APT: &[&str] = &["in_root ", "chroot ", "${apt_opts[@]}", "apt_private "];

/// apt subcommands that neither change nor lock the host's package state.
/// Any other run (including a wrapper passing "$@") counts as a host run.
const READ_ONLY: &[&str] = &[
    "source",
    "download",
    "changelog",
    "policy",
    "show",
    "search",
];

/// apt options that take the next word as their argument.
const OPTIONS_WITH_ARGUMENT: &[&str] = &["-o", "-t", "-c", "--option", "--target-release"];

/// Removes quoted strings ('...' and "...") so that a message that names
/// apt-get is not taken for a run of it.
fn strip_quotes(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut quote = None;
    for c in line.chars() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '"' || c == '\'' || c == '`' => quote = Some(c),
            None => out.push(c),
        }
    }
    out
}

/// True when a shell line runs apt-get or apt on the host state with a
/// subcommand that is not known to be read-only.
fn runs_host_apt(line: &str) -> bool {
    let trimmed = line.trim_start();
    if trimmed.starts_with('#') || PRIVATE_APT.iter().any(|m| line.contains(m)) {
        return false;
    }
    let code = strip_quotes(trimmed);
    let code = code.split(" #").next().unwrap_or_default();
    let words: Vec<&str> = code
        .split(|c: char| c.is_whitespace() || ";&|(){}".contains(c))
        .filter(|w| !w.is_empty())
        .collect();
    words.iter().enumerate().any(|(i, word)| {
        (*word == "apt-get" || *word == "apt") && !READ_ONLY.contains(&subcommand(&words[i + 1..]))
    })
}

/// The first word after apt's options ("" when there is none).
fn subcommand<'a>(words: &[&'a str]) -> &'a str {
    let mut rest = words.iter();
    while let Some(word) = rest.next() {
        if OPTIONS_WITH_ARGUMENT.contains(word) {
            rest.next();
        } else if !word.starts_with('-') {
            return word;
        }
    }
    ""
}

/// True when Rust source starts apt as a process.
fn rust_runs_apt(line: &str) -> bool {
    line.contains("Command::new(\"apt-get\")") || line.contains("Command::new(\"apt\")")
}

fn is_shell(path: &Path, text: &str) -> bool {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    name.ends_with(".sh")
        || name == "Makefile"
        || text.starts_with("#!/bin/sh")
        || text.starts_with("#!/usr/bin/env bash")
        || text.starts_with("#!/bin/bash")
        || text.starts_with("#!/usr/bin/env sh")
}

fn tracked_files(repo: &Path) -> Vec<PathBuf> {
    let output = Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(["ls-files", "-z"])
        .output()
        .expect("git ls-files runs (the test needs a git checkout)");
    assert!(output.status.success(), "git ls-files failed");
    output
        .stdout
        .split(|b| *b == 0)
        .filter(|p| !p.is_empty())
        .map(|p| PathBuf::from(String::from_utf8_lossy(p).into_owned()))
        .collect()
}

#[test]
fn detector_finds_host_apt_and_passes_private_apt() {
    for line in [
        "apt-get install debootstrap",
        "    apt-get -y -q -o Dpkg::Use-Pty=0 update >&2",
        "apt-get -y install --no-install-recommends \"${missing[@]}\" >&2",
        "sudo apt install foo",
        "x=1; apt-get purge qemu",
        "( apt-get -y remove foo )",
        "apt_get() { apt-get -y -q -o Dpkg::Use-Pty=0 \"$@\"; }",
    ] {
        assert!(runs_host_apt(line), "not caught: {line}");
    }
    for line in [
        "# apt-get install debootstrap",
        "log \"installing with apt-get install\"",
        "in_root apt-get -y -q \"$@\"",
        "apt_private() { apt-get -q -o Dpkg::Use-Pty=0 \"${apt_opts[@]}\" \"$@\"; }",
        "apt_private update >log 2>&1",
        "apt-get source --download-only qemu",
        "apt-cache policy qemu-system-x86",
        "[[ -x $root/usr/bin/apt-get ]]",
    ] {
        assert!(!runs_host_apt(line), "wrongly caught: {line}");
    }
    assert!(rust_runs_apt("Command::new(\"apt-get\").arg(\"install\")"));
    assert!(!rust_runs_apt("\"run scripts/install-deps\""));
}

#[test]
fn only_install_deps_runs_apt_on_the_host() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let files = tracked_files(repo);
    assert!(
        files.iter().any(|f| f == Path::new(INSTALLER)),
        "{INSTALLER} is not tracked"
    );
    // The installer itself runs apt on the host: the detector must see it.
    let installer = std::fs::read_to_string(repo.join(INSTALLER)).expect("read install-deps");
    assert!(
        installer.lines().any(runs_host_apt),
        "the detector does not see {INSTALLER}'s own apt-get: it would miss a copy elsewhere"
    );
    let mut offenders = Vec::new();
    let mut shell_files = 0;
    for file in &files {
        if file == Path::new(INSTALLER) || file == Path::new("tests/host_packages.rs") {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(repo.join(file)) else {
            continue;
        };
        let shell = is_shell(file, &text);
        let rust = file.extension().is_some_and(|e| e == "rs");
        shell_files += usize::from(shell);
        for (number, line) in text.lines().enumerate() {
            if (shell && runs_host_apt(line)) || (rust && rust_runs_apt(line)) {
                offenders.push(format!(
                    "{}:{}: {}",
                    file.display(),
                    number + 1,
                    line.trim()
                ));
            }
        }
    }
    assert!(
        shell_files >= 4,
        "found only {shell_files} shell files: is this the icelab tree?"
    );
    assert!(
        offenders.is_empty(),
        "only {INSTALLER} may run apt on the host (recipes check and name it instead):\n{}",
        offenders.join("\n")
    );
}
