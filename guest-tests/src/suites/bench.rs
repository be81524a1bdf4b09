//! The guest benchmark (issue 5, part 4): fio on an inlinecrypt ext4 file.

use crate::runner::TestDef;

/// `icelab.suite=bench`.
pub const TESTS: &[TestDef] = &[];
