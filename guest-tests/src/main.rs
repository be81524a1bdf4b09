//! `icelab-guest`: icelab's in-guest test runner.
//!
//! As PID 1 of the lab's initramfs it mounts the pseudo filesystems, reads
//! its `icelab.*` parameters from /proc/cmdline, loads the driver module,
//! runs a suite, writes JSON lines to the results device and powers the
//! guest off. With `--no-init` it is an ordinary process (for debugging on
//! a host: `icelab.disk=/dev/loopN`, results on standard output).
//!
//! See guest-tests/README.md for the interface.

use std::sync::Arc;

use icelab_guest::cmdline::{self, Config, Params};
use icelab_guest::report::{self, Console, Facts, Reporter, Status};
use icelab_guest::runner::{self, Ctx, State};
use icelab_guest::{data, init, suites, sys};

const USAGE: &str = "\
usage: icelab-guest [--no-init] [icelab.KEY=VALUE ...]

Runs an icelab guest test suite. As PID 1 (the initramfs's /init) it sets
up the system, loads the driver, runs the suite and powers off. With
--no-init it runs as an ordinary process and exits 0 if every test passed.

Parameters come from /proc/cmdline; icelab.KEY=VALUE arguments override
them. Keys: suite, expect, slots, max_dun_bits, modes, results, seed,
module, disk, mountpoint, mount_data, preload, timeout_factor, fault
(see guest-tests/README.md).";

/// What the command line asked for.
#[derive(Debug, Default, PartialEq, Eq)]
struct Args {
    no_init: bool,
    help: bool,
    params: Params,
    unknown: Vec<String>,
}

fn parse_args(args: impl IntoIterator<Item = String>) -> Args {
    let mut parsed = Args::default();
    for arg in args {
        match arg.as_str() {
            "--no-init" => parsed.no_init = true,
            "-h" | "--help" => parsed.help = true,
            a if a.starts_with(cmdline::PREFIX) => parsed.params.add_word(a),
            _ => parsed.unknown.push(arg),
        }
    }
    parsed
}

fn main() {
    // Hidden: a worker process of a suite (keyslot-pressure).
    let raw: Vec<String> = std::env::args().skip(1).collect();
    if raw.first().map(String::as_str) == Some("--worker") {
        std::process::exit(icelab_guest::suites::lab::pressure::worker_main(&raw[1..]));
    }
    let args = parse_args(raw);
    if args.help {
        println!("{USAGE}");
        return;
    }
    let init = !args.no_init;
    if !args.unknown.is_empty() && !init {
        eprintln!(
            "icelab-guest: unknown arguments {:?}\n{USAGE}",
            args.unknown
        );
        std::process::exit(2);
    }
    if init && std::process::id() != 1 {
        eprintln!(
            "icelab-guest: not PID 1 (pid {}): refusing to mount, load modules and power off; \
             use --no-init to run as an ordinary process",
            std::process::id()
        );
        std::process::exit(2);
    }
    install_panic_hook(init);
    let all_passed = run(init, args);
    finish(init, all_passed);
}

/// Everything between start and power-off; returns whether all passed.
fn run(init: bool, args: Args) -> bool {
    let console = if init {
        Console::Stdout
    } else {
        Console::Stderr
    };
    if init {
        for warning in init::setup() {
            report::say(console, &format!("warning: {warning}"));
        }
    }

    // Parameters: /proc/cmdline, then the command line's overrides.
    let mut params_error = None;
    let mut params = match std::fs::read_to_string("/proc/cmdline") {
        Ok(text) => Params::parse(&text).unwrap_or_else(|e| {
            params_error = Some(format!("/proc/cmdline: {e}"));
            Params::default()
        }),
        Err(e) => {
            params_error = Some(format!("cannot read /proc/cmdline: {e}"));
            Params::default()
        }
    };
    params.merge(args.params);
    let config = Config::from_params(&params, init);

    let uname = sys::uname().unwrap_or_else(|e| {
        report::say(console, &format!("warning: {e}"));
        sys::Uname {
            release: "unknown".into(),
            version: "unknown".into(),
        }
    });

    // The results device: the configured one, else the console.
    let results = config
        .as_ref()
        .map(|c| c.results.clone())
        .unwrap_or_else(|_| Config::defaults(init).results);
    let reporter = Reporter::open(&results).unwrap_or_else(|e| {
        report::say(
            console,
            &format!("warning: {e}; writing results to standard output instead"),
        );
        Reporter::stdout()
    });
    report::install(reporter);

    let suite = config.as_ref().map_or_else(
        |_| params.get("suite").unwrap_or("smoke"),
        |c| c.suite.name(),
    );
    let expect = config.as_ref().map_or_else(
        |_| params.get("expect").unwrap_or("native"),
        |c| c.expect.name(),
    );
    report::with(|r| r.hello(&uname.release, &uname.version, suite, expect));

    let config = match (config, params_error) {
        (Ok(c), None) => c,
        (Err(e), _) => return config_failure(&e.to_string()),
        (_, Some(e)) => return config_failure(&e),
    };
    for key in params.unknown_keys() {
        report::say(
            console,
            &format!("warning: unknown parameter {key} ignored"),
        );
    }

    let seed = config.seed.unwrap_or_else(|| random_seed(console));
    let ctx = Arc::new(Ctx::new(config, uname, init));
    let tests = suites::tests(ctx.config.suite);
    report::say(
        console,
        &format!(
            "suite {} ({} tests), expect {}, disk {}, seed {}",
            ctx.config.suite.name(),
            tests.len(),
            ctx.config.expect.name(),
            ctx.config.disk.display(),
            data::seed_hex(seed)
        ),
    );
    let state = State {
        seed,
        ..State::default()
    };
    let all_passed = runner::run_and_report(&ctx, tests, state);
    report::with(|r| r.done());
    all_passed
}

/// Reports bad parameters as a failed test `cmdline` (no suite can run).
fn config_failure(message: &str) -> bool {
    report::with(|r| {
        r.test("cmdline", Status::Fail, 0, message, &Facts::new());
        r.done();
    });
    false
}

/// A seed for the file contents when `icelab.seed` is absent. The seed is
/// not secret (it is reported), so early-boot randomness is good enough.
fn random_seed(console: Console) -> u64 {
    let mut bytes = [0u8; 8];
    if let Err(e) = sys::getrandom_nonblocking(&mut bytes) {
        report::say(console, &format!("warning: {e}; using the clock as seed"));
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        return nanos as u64;
    }
    u64::from_le_bytes(bytes)
}

/// On panic: report the running test as failed with the panic message,
/// close the results, and (as PID 1) power off.
fn install_panic_hook(init: bool) {
    std::panic::set_hook(Box::new(move |info| {
        let console = if init {
            Console::Stdout
        } else {
            Console::Stderr
        };
        // One line: the hook's text has the location, a newline, the payload.
        let message = format!("panic: {}", info.to_string().replace('\n', " "));
        report::say(console, &message);
        let name = runner::current_test().unwrap_or("runner");
        // The reporter may be busy writing a line on another thread: retry
        // for a moment, but never wait on a lock this thread might hold.
        for _ in 0..100 {
            let reported = report::try_with(|r| {
                r.test(name, Status::Fail, 0, &message, &Facts::new());
                r.done();
            });
            if reported.is_some() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        if init {
            init::power_off(console);
        }
        std::process::exit(101);
    }));
}

/// Ends the run: power-off as PID 1, exit status otherwise.
fn finish(init: bool, all_passed: bool) -> ! {
    if init {
        init::power_off(Console::Stdout);
    }
    std::process::exit(if all_passed { 0 } else { 1 });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Args {
        parse_args(list.iter().map(|s| (*s).to_owned()))
    }

    #[test]
    fn arguments_select_mode_and_override_parameters() {
        let a = args(&[
            "--no-init",
            "icelab.disk=/dev/loop0",
            "icelab.expect=fallback",
        ]);
        assert!(a.no_init);
        assert_eq!(a.params.get("disk"), Some("/dev/loop0"));
        assert_eq!(a.params.get("expect"), Some("fallback"));
        assert!(a.unknown.is_empty());
        let a = args(&["--verbose"]);
        assert!(!a.no_init);
        assert_eq!(a.unknown, vec!["--verbose"]);
        assert!(args(&["-h"]).help);
    }
}
