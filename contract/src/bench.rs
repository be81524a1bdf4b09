//! The guest's `bench` suite → the host's `icelab bench guest`: the
//! figures of one fio run, as a `fio-<load>` test's facts carry them.
//!
//! ```text
//! {"plain": {"mb_per_s": 824.2, "iops": 6285.3, "clat_us": {"p50": 2244.6, "p99": 5275.6, "p99.9": 8454.1},
//!            "io_bytes": 4122083328, "runtime_ms": 5001},
//!  "encrypted": {...}, "load": "seqwrite-128k", ...}
//! ```

use serde::{Deserialize, Serialize};

/// The fact of a fio test holding the figures of the unencrypted directory.
pub const FACT_FIO_PLAIN: &str = "plain";
/// The fact of a fio test holding the figures of the fscrypt directory.
pub const FACT_FIO_ENCRYPTED: &str = "encrypted";

/// Latency percentiles, in µs.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    #[serde(rename = "p99.9")]
    pub p99_9: f64,
}

/// What one fio run measured.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FioFigures {
    /// Bytes per second (fio's `bw_bytes`) in MB/s (10^6).
    pub mb_per_s: f64,
    /// I/O operations per second.
    pub iops: f64,
    /// Completion latency percentiles.
    pub clat_us: Percentiles,
    /// Bytes moved.
    pub io_bytes: u64,
    /// fio's measured runtime in ms.
    pub runtime_ms: u64,
}

/// The part of a `fio-<load>` test's facts the host reads: the figures
/// per directory (absent when the run there did not finish).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FioFacts {
    /// [`FACT_FIO_PLAIN`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plain: Option<FioFigures>,
    /// [`FACT_FIO_ENCRYPTED`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encrypted: Option<FioFigures>,
}

impl FioFacts {
    /// The figures of the directory whose fact is `key`.
    pub fn get(&self, key: &str) -> Option<&FioFigures> {
        match key {
            FACT_FIO_PLAIN => self.plain.as_ref(),
            FACT_FIO_ENCRYPTED => self.encrypted.as_ref(),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn figures(mb: f64) -> FioFigures {
        FioFigures {
            mb_per_s: mb,
            iops: 10.0,
            clat_us: Percentiles {
                p50: 1.0,
                p99: 2.0,
                p99_9: 3.0,
            },
            io_bytes: 4096,
            runtime_ms: 1001,
        }
    }

    #[test]
    fn figures_keep_their_wire_names() {
        let v = serde_json::to_value(figures(5.0)).unwrap();
        assert_eq!(
            v,
            json!({"mb_per_s": 5.0, "iops": 10.0,
                   "clat_us": {"p50": 1.0, "p99": 2.0, "p99.9": 3.0},
                   "io_bytes": 4096, "runtime_ms": 1001})
        );
        assert_eq!(
            serde_json::from_value::<FioFigures>(v).unwrap(),
            figures(5.0)
        );
    }

    #[test]
    fn facts_are_read_by_the_contract_keys() {
        let mut facts = serde_json::Map::new();
        facts.insert(
            FACT_FIO_PLAIN.to_owned(),
            serde_json::to_value(figures(1.0)).unwrap(),
        );
        facts.insert(
            FACT_FIO_ENCRYPTED.to_owned(),
            serde_json::to_value(figures(2.0)).unwrap(),
        );
        facts.insert("load".to_owned(), json!("seqread-128k"));
        let read: FioFacts = serde_json::from_value(facts.into()).unwrap();
        assert_eq!(read.get(FACT_FIO_PLAIN), Some(&figures(1.0)));
        assert_eq!(read.get(FACT_FIO_ENCRYPTED), Some(&figures(2.0)));
        assert_eq!(read.get("other"), None);
        // A directory whose run did not finish is absent; a partial one is refused.
        let partial: FioFacts = serde_json::from_value(json!({"plain": figures(1.0)})).unwrap();
        assert!(partial.encrypted.is_none());
        assert!(serde_json::from_value::<FioFacts>(json!({"plain": {"mb_per_s": 1.0}})).is_err());
    }
}
