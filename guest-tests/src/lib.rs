//! icelab's in-guest test runner, as a library: the `icelab-guest` binary
//! is its `main`. Kept a library so that its pieces (parameters, result
//! records, fscrypt UAPI) are unit-tested on the host and reusable.
//!
//! - [`cmdline`]: `icelab.*` parameters into a checked [`cmdline::Config`];
//! - [`report`]: the JSON-lines results stream;
//! - [`runner`]: tests with deadlines and dependencies;
//! - [`suites`]: the suites (smoke) and the steps they share;
//! - [`fscrypt`], [`blk_crypto`], [`kmsg`], [`sys`], [`command`]: the
//!   system interfaces;
//! - [`init`]: PID 1 duties; [`data`]: reproducible file contents.

#![warn(missing_docs)]

pub mod blk_crypto;
pub mod cmdline;
pub mod command;
pub mod data;
pub mod fscrypt;
pub mod init;
pub mod kmsg;
pub mod marks;
pub mod report;
pub mod runner;
pub mod suites;
pub mod sys;
