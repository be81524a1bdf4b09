//! The baseline check of `icelab bench all` and `icelab bench guest`: a
//! run's ratios against a stored run's.

use anyhow::Context;
use serde::Deserialize;
use serde_json::Value;

/// The part of a bench run's JSON the check reads.
#[derive(Debug, Deserialize)]
struct Ratios {
    ratios: Vec<Ratio>,
}

/// One named ratio.
#[derive(Debug, Deserialize)]
struct Ratio {
    name: String,
    value: Option<f64>,
}

impl Ratios {
    fn of(doc: &Value, what: &str) -> anyhow::Result<Self> {
        Self::deserialize(doc).with_context(|| {
            format!("the {what} has no \"ratios\" array of {{name, value}}: is it `icelab bench all --json` output?")
        })
    }
}

/// Every tracked ratio of `run` more than `threshold` percent below the
/// same ratio in `baseline`, described.
pub fn regressions(run: &Value, baseline: &Value, threshold: f64) -> anyhow::Result<Vec<String>> {
    let base = Ratios::of(baseline, "baseline")?;
    let current = Ratios::of(run, "run").map(|r| r.ratios).unwrap_or_default();
    let mut out = Vec::new();
    // Every ratio of the baseline is checked: one missing from the run (a
    // renamed or lost measurement) is a regression too, not a silent skip.
    for old in base.ratios {
        let (name, Some(old)) = (old.name, old.value) else {
            continue;
        };
        let Some(new) = current
            .iter()
            .find(|c| c.name == name)
            .and_then(|c| c.value)
        else {
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
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc(values: &[(&str, f64)]) -> Value {
        json!({ "ratios": values.iter().map(|(n, v)| json!({"name": n, "value": v})).collect::<Vec<_>>() })
    }

    #[test]
    fn a_fall_past_the_threshold_is_named() {
        let base = doc(&[("a", 1.0), ("b", 2.0)]);
        let run = doc(&[("a", 0.95), ("b", 1.7)]);
        let found = regressions(&run, &base, 10.0).unwrap();
        assert_eq!(found.len(), 1);
        assert!(found[0].starts_with("b:"), "{found:?}");
    }

    #[test]
    fn a_ratio_missing_from_the_run_is_a_regression() {
        let base = doc(&[("a", 1.0), ("b", 2.0)]);
        let run = doc(&[("a", 1.0), ("b renamed", 2.0)]);
        let found = regressions(&run, &base, 10.0).unwrap();
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].starts_with("b:") && found[0].contains("missing"));
    }

    #[test]
    fn a_baseline_without_ratios_is_refused() {
        assert!(regressions(&doc(&[]), &json!({}), 10.0).is_err());
    }
}
