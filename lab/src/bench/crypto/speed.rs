//! The `openssl` binaries `icelab bench crypto` can compare against: the
//! host's (on PATH) and the build root's (`icelab build` caches Debian
//! trixie's under `~/.cache/icelab/root-*/rootfs`, run with the root's own
//! loader and libraries, so no chroot and no root needed), and
//! `openssl speed -evp aes-256-xts` on the newest of them.

use anyhow::{Context, bail};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

/// One runnable `openssl` binary.
#[derive(Clone, Debug)]
pub struct OpenSslBinary {
    /// What runs: the binary, or the build root's dynamic loader.
    program: PathBuf,
    /// Arguments before openssl's own (the loader's library path and the
    /// binary).
    prefix: Vec<OsString>,
    /// Where it is, for the table.
    pub origin: String,
    /// `openssl version`'s line.
    pub version: String,
}

impl OpenSslBinary {
    fn command(&self) -> Command {
        let mut command = Command::new(&self.program);
        command.args(&self.prefix);
        command
    }

    /// `openssl speed -evp aes-256-xts` for `data_unit_size`-byte calls on
    /// `threads` processes: bytes per second as openssl reports it (summed
    /// over processes with `-multi`). openssl sets the IV once and then
    /// encrypts every call under it.
    pub fn speed(
        &self,
        data_unit_size: usize,
        threads: usize,
        seconds: u32,
    ) -> anyhow::Result<f64> {
        let mut command = self.command();
        command.args(["speed", "-evp", "aes-256-xts", "-bytes"]);
        command.arg(data_unit_size.to_string());
        command.arg("-seconds").arg(seconds.to_string());
        if threads > 1 {
            command.arg("-multi").arg(threads.to_string());
        }
        let output = run(&mut command)?;
        parse_speed(&output)
            .with_context(|| format!("reading the output of {command:?}:\n{output}"))
    }
}

/// Every `openssl` found: the host's, then each cached build root's.
/// Fails only when there is none at all.
pub fn find(cache: Option<&Path>) -> anyhow::Result<Vec<OpenSslBinary>> {
    let mut found = Vec::new();
    let mut errors = Vec::new();
    match probe(PathBuf::from("openssl"), Vec::new(), "host PATH".to_owned()) {
        Ok(binary) => found.push(binary),
        Err(error) => errors.push(format!("{error:#}")),
    }
    for rootfs in cache.map(build_roots).unwrap_or_default() {
        let binary = rootfs.join("usr/bin/openssl");
        let loader = rootfs.join("lib64/ld-linux-x86-64.so.2");
        if !(binary.is_file() && loader.is_file()) {
            continue;
        }
        let prefix = vec![
            OsString::from("--library-path"),
            rootfs.join("usr/lib/x86_64-linux-gnu").into_os_string(),
            binary.into_os_string(),
        ];
        match probe(loader, prefix, format!("build root {}", rootfs.display())) {
            Ok(binary) => found.push(binary),
            Err(error) => errors.push(format!("{error:#}")),
        }
    }
    if found.is_empty() {
        bail!("no openssl to compare with: {}", errors.join("; "));
    }
    Ok(found)
}

/// The binary with the highest version number (the first on a tie).
pub fn newest(binaries: &[OpenSslBinary]) -> Option<&OpenSslBinary> {
    binaries
        .iter()
        .rev()
        .max_by_key(|binary| version_number(&binary.version))
}

/// `(major, minor, patch)` of a line like `OpenSSL 3.5.9 29 Sep 2026 ...`;
/// zeros when it has none.
pub fn version_number(line: &str) -> (u32, u32, u32) {
    let number = line
        .split_whitespace()
        .find(|word| word.starts_with(|c: char| c.is_ascii_digit()))
        .unwrap_or_default();
    let mut parts = number
        .split(|c: char| !c.is_ascii_digit())
        .map(|part| part.parse().unwrap_or(0));
    (
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    )
}

/// The `rootfs` of every cached build root, sorted.
fn build_roots(cache: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(cache) else {
        return Vec::new();
    };
    let mut roots: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|entry| entry.file_name().to_string_lossy().starts_with("root-"))
        .map(|entry| entry.path().join("rootfs"))
        .filter(|rootfs| rootfs.is_dir())
        .collect();
    roots.sort();
    roots
}

fn probe(program: PathBuf, prefix: Vec<OsString>, origin: String) -> anyhow::Result<OpenSslBinary> {
    let mut binary = OpenSslBinary {
        program,
        prefix,
        origin,
        version: String::new(),
    };
    binary.version = run(binary.command().arg("version"))?.trim().to_owned();
    Ok(binary)
}

/// Runs an openssl command and returns its standard output.
fn run(command: &mut Command) -> anyhow::Result<String> {
    let output = match command.output() {
        Ok(output) => output,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            bail!(
                "{:?} not found: run scripts/install-deps (as root) to install openssl",
                command.get_program()
            )
        }
        Err(error) => return Err(error).with_context(|| format!("running {command:?}")),
    };
    if !output.status.success() {
        bail!(
            "{command:?} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    String::from_utf8(output.stdout)
        .with_context(|| format!("{command:?} printed non-UTF-8 output"))
}

/// The rate in `openssl speed`'s last `AES-256-XTS` line, e.g.
/// `AES-256-XTS    3747901.44k`: thousands of bytes per second.
fn parse_speed(output: &str) -> anyhow::Result<f64> {
    let line = output
        .lines()
        .rev()
        .find(|line| line.trim_start().starts_with("AES-256-XTS"))
        .context("no AES-256-XTS line")?;
    let field = line
        .split_whitespace()
        .last()
        .context("empty AES-256-XTS line")?;
    let kilobytes: f64 = field
        .strip_suffix('k')
        .with_context(|| format!("rate {field:?} does not end in k (1000s of bytes per second)"))?
        .parse()
        .with_context(|| format!("rate {field:?} is not a number"))?;
    if !(kilobytes.is_finite() && kilobytes > 0.0) {
        bail!("rate {field:?} is not a positive number");
    }
    Ok(kilobytes * 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_single_and_multi_process_output() {
        let single = "version: 3.0.19\nThe 'numbers' are in 1000s of bytes per second processed.\n\
                      type           4096 bytes\nAES-256-XTS    3747901.44k\n";
        assert_eq!(parse_speed(single).unwrap(), 3_747_901_440.0);
        let multi = "Forked child 0\nForked child 1\nversion: 3.0.22\nAES-256-XTS    1043697.71k\n";
        assert_eq!(parse_speed(multi).unwrap(), 1_043_697_710.0);
    }

    #[test]
    fn rejects_output_without_a_rate() {
        for output in [
            "",
            "version: 3.0.19\n",
            "AES-256-XTS\n",
            "AES-256-XTS    3747901.44\n",
            "AES-256-XTS    fast\n",
            "AES-256-XTS    0.00k\n",
        ] {
            assert!(parse_speed(output).is_err(), "{output:?}");
        }
    }

    #[test]
    fn missing_openssl_names_the_fix() {
        let error = run(&mut Command::new("/nonexistent/openssl"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("scripts/install-deps"), "{error}");
    }

    #[test]
    fn versions_compare_by_number() {
        assert_eq!(
            version_number("OpenSSL 3.5.9 29 Sep 2026 (Library: OpenSSL 3.5.9)"),
            (3, 5, 9)
        );
        assert_eq!(version_number("OpenSSL 3.0.19 27 Jan 2026"), (3, 0, 19));
        assert_eq!(version_number("OpenSSL 3.6.0-alpha1 1 Jan 2026"), (3, 6, 0));
        assert_eq!(version_number("LibreSSL"), (0, 0, 0));
        let binary = |version: &str| OpenSslBinary {
            program: PathBuf::from("openssl"),
            prefix: Vec::new(),
            origin: version.to_owned(),
            version: version.to_owned(),
        };
        let found = [
            binary("OpenSSL 3.0.19"),
            binary("OpenSSL 3.5.9"),
            binary("OpenSSL 3.10.1"),
        ];
        assert_eq!(newest(&found).unwrap().version, "OpenSSL 3.10.1");
    }

    #[test]
    fn finds_the_host_openssl_and_no_root_in_an_empty_cache() {
        let empty = tempfile::tempdir().unwrap();
        if let Ok(found) = find(Some(empty.path())) {
            assert!(found.iter().all(|binary| binary.origin == "host PATH"));
        }
    }
}
