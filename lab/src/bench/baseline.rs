//! The ratios `icelab bench all` and `icelab bench guest` write, and the
//! baseline check: a run's ratios against a stored run's.

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// One named ratio of a run (MB/s over MB/s, same run), as both
/// documents write it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Ratio {
    /// Unique name, the key of the baseline check (`<load> <ratio>`).
    pub name: String,
    /// The load measured.
    pub load: String,
    /// Which figures are divided (`ice-on/ice-off`).
    pub ratio: String,
    /// The quotient.
    pub value: f64,
    /// The goal the value should reach (written as null: none).
    pub goal: Option<f64>,
    /// Whether it does (written as null when there is no goal).
    pub met: Option<bool>,
}

/// The part of a stored run the check reads: the ratios of a
/// `bench all` or `bench guest` document.
#[derive(Debug, Deserialize)]
pub struct Baseline {
    /// Its ratios.
    pub ratios: Vec<Ratio>,
}

impl Baseline {
    /// Parses a stored run's JSON.
    pub fn parse(text: &[u8]) -> anyhow::Result<Self> {
        serde_json::from_slice(text).context(
            "no \"ratios\" array of {name, load, ratio, value, goal, met}: is it \
             `icelab bench all --json` or `icelab bench guest --json` output?",
        )
    }

    /// Reads and parses the stored run at `path`.
    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read(path)
            .with_context(|| format!("cannot read the baseline {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("the baseline {}", path.display()))
    }
}

/// Every ratio of `baseline` more than `threshold` percent below the same
/// ratio in `run`, described; a ratio of the baseline missing from the run
/// is one too.
pub fn regressions(run: &[Ratio], baseline: &[Ratio], threshold: f64) -> Vec<String> {
    let mut out = Vec::new();
    // Every ratio of the baseline is checked: one missing from the run (a
    // renamed or lost measurement) is a regression too, not a silent skip.
    for old in baseline {
        let (name, old) = (&old.name, old.value);
        let Some(new) = run.iter().find(|c| c.name == *name).map(|c| c.value) else {
            out.push(format!(
                "{name}: in the baseline ({old:.3}) but missing from this run (renamed, or not \
                 measured with these options?)"
            ));
            continue;
        };
        if new < old * (1.0 - threshold / 100.0) {
            out.push(format!(
                "{name}: {new:.3} against {old:.3} ({:+.1}%)",
                (new / old - 1.0) * 100.0
            ));
        }
    }
    out
}

/// Checks `run` against the stored run at `path`: prints that nothing
/// fell, or fails naming every regression.
pub fn check(run: &[Ratio], path: &Path, threshold: f64) -> anyhow::Result<()> {
    let baseline = Baseline::read(path)?;
    let fallen = regressions(run, &baseline.ratios, threshold);
    if !fallen.is_empty() {
        bail!(
            "regressed past {threshold}% against {}:\n  {}",
            path.display(),
            fallen.join("\n  ")
        );
    }
    println!(
        "no ratio fell more than {threshold}% below the baseline {}",
        path.display()
    );
    Ok(())
}

/// A bench document as pretty JSON with its keys sorted at every level
/// (the order the stored runs have).
pub fn encode<T: Serialize>(document: &T) -> serde_json::Result<Vec<u8>> {
    serde_json::to_vec_pretty(&serde_json::to_value(document)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ratios(values: &[(&str, f64)]) -> Vec<Ratio> {
        values
            .iter()
            .map(|&(name, value)| Ratio {
                name: name.to_owned(),
                load: "seqread-128k".to_owned(),
                ratio: "a/b".to_owned(),
                value,
                goal: None,
                met: None,
            })
            .collect()
    }

    #[test]
    fn a_fall_past_the_threshold_is_named() {
        let base = ratios(&[("a", 1.0), ("b", 2.0)]);
        let run = ratios(&[("a", 0.95), ("b", 1.7)]);
        let found = regressions(&run, &base, 10.0);
        assert_eq!(found.len(), 1);
        assert!(found[0].starts_with("b:"), "{found:?}");
    }

    #[test]
    fn a_ratio_missing_from_the_run_is_a_regression() {
        let base = ratios(&[("a", 1.0), ("b", 2.0)]);
        let run = ratios(&[("a", 1.0), ("b renamed", 2.0)]);
        let found = regressions(&run, &base, 10.0);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].starts_with("b:") && found[0].contains("missing"));
    }

    #[test]
    fn a_baseline_without_ratios_is_refused() {
        assert!(Baseline::parse(b"{}").is_err());
        assert!(Baseline::parse(b"not json").is_err());
        assert!(Baseline::parse(br#"{"ratios": [{"name": "a", "value": 1.0}]}"#).is_err());
        let ok = Baseline::parse(
            br#"{"ratios": [{"name": "a", "load": "l", "ratio": "x/y", "value": 1.0,
                             "goal": null, "met": null}], "other": 1}"#,
        )
        .unwrap();
        assert_eq!(ok.ratios[0].goal, None);
    }

    #[test]
    fn ratios_write_goal_and_met_as_null() {
        let text = String::from_utf8(encode(&ratios(&[("a", 1.5)])).unwrap()).unwrap();
        assert!(text.contains("\"goal\": null"), "{text}");
        assert!(text.contains("\"met\": null"), "{text}");
        // Sorted keys, as the stored runs have them.
        let keys: Vec<usize> = ["goal", "load", "met", "name", "ratio", "value"]
            .iter()
            .map(|k| text.find(&format!("\"{k}\"")).unwrap())
            .collect();
        assert!(keys.is_sorted(), "{text}");
    }
}
