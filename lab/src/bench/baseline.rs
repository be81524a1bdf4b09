//! The ratios `icelab bench all` and `icelab bench guest` write, and the
//! baseline check: a run's ratios against a stored run's.

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// One named ratio of a run (same run), as both documents write it:
/// `bench guest`'s MB/s over MB/s of one measurement each; `bench all`'s
/// the median over the rounds of the per-round ratio of device CPU per
/// GB, with its spread and the MB/s ratio beside it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
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
    /// What `value` divides, in words (absent: MB/s over MB/s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<String>,
    /// The spread of the per-round ratios, (max − min) / median in
    /// percent (absent: measured once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spread_pct: Option<f64>,
    /// The MB/s ratio of the same targets (median of the per-round ratios).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mb_per_s_ratio: Option<f64>,
    /// The spread of the per-round MB/s ratios, in percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mb_per_s_spread_pct: Option<f64>,
    /// How many rounds' own ratio reached the goal, and of how many: a
    /// miss in every round or a median on the edge (absent: no goal, or
    /// a run from before it was counted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rounds_meeting_goal: Option<[usize; 2]>,
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

/// How many times the measured spread a ratio may fall (see
/// [`tolerance`]).
pub const SPREAD_FACTOR: f64 = 1.0;

/// How far (percent) `new` may fall below `old` before it is a
/// regression: the measured spread of the rounds (the larger of the two
/// runs', times [`SPREAD_FACTOR`]), but at least `floor`.
///
/// Why: two medians of 5 rounds of the same noisy figure differ by less
/// than the range of 5 rounds almost always (for normal noise the range
/// of 5 is about 2.3 σ, the difference of two medians of 5 has σ ≈ 0.76 σ:
/// a fall past the range is a 3-σ event), so a fall within the spread is
/// noise; the floor covers drift between runs that no single run's spread
/// shows, and ratios measured once (the guest's), which have no spread.
pub fn tolerance(new: &Ratio, old: &Ratio, floor: f64) -> f64 {
    super::fair::tolerance_pct(floor, SPREAD_FACTOR, new.spread_pct, old.spread_pct)
}

/// Every ratio of `baseline` that fell below the same ratio in `run` by
/// more than its [`tolerance`] (`floor` percent at least), described; a
/// ratio of the baseline missing from the run is one too.
pub fn regressions(run: &[Ratio], baseline: &[Ratio], floor: f64) -> Vec<String> {
    let mut out = Vec::new();
    // Every ratio of the baseline is checked: one missing from the run (a
    // renamed or lost measurement) is a regression too, not a silent skip.
    for old in baseline {
        let name = &old.name;
        let Some(new) = run.iter().find(|c| c.name == *name) else {
            out.push(format!(
                "{name}: in the baseline ({:.3}) but missing from this run (renamed, or not \
                 measured with these options?)",
                old.value
            ));
            continue;
        };
        let allowed = tolerance(new, old, floor);
        if new.value < old.value * (1.0 - allowed / 100.0) {
            out.push(format!(
                "{name}: {:.3} against {:.3} ({:+.1}%, tolerance {allowed:.1}%)",
                new.value,
                old.value,
                (new.value / old.value - 1.0) * 100.0
            ));
        }
    }
    out
}

/// Checks `run` against the stored run at `path`: prints that nothing
/// fell, or fails naming every regression.
pub fn check(run: &[Ratio], path: &Path, floor: f64) -> anyhow::Result<()> {
    let baseline = Baseline::read(path)?;
    let fallen = regressions(run, &baseline.ratios, floor);
    if !fallen.is_empty() {
        bail!(
            "regressed past the tolerance (the larger measured spread, at least {floor}%) against {}:\n  {}",
            path.display(),
            fallen.join("\n  ")
        );
    }
    println!(
        "no ratio fell below the baseline {} by more than its tolerance (the larger measured spread of the two runs, at least {floor}%)",
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
                ..Ratio::default()
            })
            .collect()
    }

    fn with_spread(mut r: Vec<Ratio>, spread: f64) -> Vec<Ratio> {
        for x in &mut r {
            x.spread_pct = Some(spread);
        }
        r
    }

    #[test]
    fn a_fall_within_the_measured_spread_passes() {
        // 14.9% below, as in issue 13's failed run: the rounds spread 20%.
        let base = with_spread(ratios(&[("a", 1.0)]), 20.0);
        let run = with_spread(ratios(&[("a", 0.851)]), 18.0);
        assert!(regressions(&run, &base, 10.0).is_empty());
        // Either run's spread counts.
        let quiet = with_spread(ratios(&[("a", 0.851)]), 2.0);
        assert!(regressions(&quiet, &base, 10.0).is_empty());
    }

    #[test]
    fn a_fall_beyond_the_measured_spread_fails() {
        let base = with_spread(ratios(&[("a", 1.0), ("b", 1.0)]), 12.0);
        let run = with_spread(ratios(&[("a", 0.80), ("b", 0.90)]), 8.0);
        let found = regressions(&run, &base, 10.0);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].starts_with("a:") && found[0].contains("tolerance 12.0%"));
    }

    #[test]
    fn a_small_spread_still_gets_the_floor() {
        let base = with_spread(ratios(&[("a", 1.0)]), 1.0);
        let run = with_spread(ratios(&[("a", 0.93)]), 1.0);
        assert!(regressions(&run, &base, 10.0).is_empty());
        let run = with_spread(ratios(&[("a", 0.89)]), 1.0);
        assert_eq!(regressions(&run, &base, 10.0).len(), 1);
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
