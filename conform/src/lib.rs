//! Conformance checks of a vhost-user-blk device against icelab's
//! inline-encryption protocol (`docs/PROTOCOL.md`), for SoC and firmware
//! vendors validating their own device: `icelab conform --socket PATH`.
//!
//! The device is driven only through the native frontend
//! (`icelab-frontend`) and judged against the protocol crate's layouts and
//! an independent AES-256-XTS reference (`xts-mode`); nothing of icelab's
//! emulator is used. The device under test is untrusted: a malformed
//! answer, a hang (bounded by timeouts) or a hang-up is a failed check,
//! never a panic.
//!
//! - [`check`]: [`Check`] (id, section, MUST or CHOICE, body), outcomes,
//!   and [`check::all`], the table;
//! - the checks by subject: `plain`, `features`, `config`, `keyslots`,
//!   `crypto`, `refusals`, `reset`, `wrapped`;
//! - [`session`]: a check's context, one vhost-user session, requests that
//!   describe themselves (never showing key bytes: keys are "key #n");
//! - [`device`]: what the device advertises (probed once);
//! - [`oracle`]: the AES-256-XTS reference;
//! - [`runner`]: probe, then every check on fresh connections;
//! - [`report`]: the JSON document.
//!
//! Every check opens its own connection(s), so checks do not depend on
//! each other's state, and a device must accept a new vhost-user
//! connection after each disconnect (`icelab serve --persist`). Checks
//! write only inside the first MiB of the device.

pub mod check;
mod config;
mod crypto;
pub mod device;
mod features;
mod keyslots;
pub mod oracle;
mod plain;
mod refusals;
pub mod report;
mod reset;
pub mod runner;
pub mod session;
mod wrapped;

pub use check::{Check, Failure, Outcome, Requirement};
pub use report::Report;
pub use runner::{CheckRecord, ConformError, probe, run, select};
pub use session::Settings;
