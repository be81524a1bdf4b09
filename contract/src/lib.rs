//! The contract between icelab's parts, typed once and used on both sides
//! of each boundary, so that a rename breaks the build or a fast unit test,
//! not a two-minute lab boot:
//!
//! - host → guest: [`suite`] (suite and expectation names) and
//!   [`cmdline`] (the `icelab.*` kernel parameters the host writes and the
//!   guest runner reads);
//! - guest → host: [`record`] (the result lines on the guest's second
//!   serial port), [`marks`] (the labels the guest leaves in the device's
//!   trace), [`manifest`] (the files the verifier checks), [`memory_scan`]
//!   (the keys the host looks for in guest memory);
//! - device → host: [`device`] (the stats file and the trace events).
//!
//! Serde only: it builds for the static guest runner as for the host.

pub mod bench;
pub mod cmdline;
pub mod device;
pub mod manifest;
pub mod marks;
pub mod memory_scan;
pub mod record;
pub mod suite;
