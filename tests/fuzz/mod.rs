//! The fuzz harness behind `tests/fuzz.rs`:
//!
//! - [`rng`]: the seeded generator;
//! - [`wire`]: requests as descriptors over guest memory, and the walk a
//!   device makes over a chain;
//! - [`model`]: what the device must answer, and the checks;
//! - [`generate`]: what to send and how to lay it out;
//! - [`run`]: sessions of `icelab serve`, batches, liveness.

pub mod generate;
pub mod model;
pub mod rng;
pub mod run;
pub mod wire;
