//! Learning-rate schedules over training progress.
//!
//! A schedule maps progress `p` in `[0, 1]` (the fraction of training done: `step / steps` for
//! decentralized peers, `(round - 1) / rounds` for federated clients) to a factor that
//! multiplies the optimizer's configured learning rate. Every participant computes the factor
//! from its own progress, so no learning rate travels over the network.

use serde::{Deserialize, Serialize};

/// A learning-rate schedule (config: `[train.lr_schedule]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum LrSchedule {
    /// The configured learning rate throughout.
    #[default]
    Constant,
    /// Linear warm-up from 0 over the first `warmup` of training, then a cosine decay to
    /// `final_factor` times the configured rate at the end.
    Cosine {
        /// Fraction of training spent warming up, in [0, 1).
        #[serde(default)]
        warmup: f64,
        /// Factor reached at the end, in [0, 1].
        #[serde(default)]
        final_factor: f64,
    },
    /// Linear warm-up over the first `warmup`, then a linear decay to `final_factor`.
    Linear {
        /// Fraction of training spent warming up, in [0, 1).
        #[serde(default)]
        warmup: f64,
        /// Factor reached at the end, in [0, 1].
        #[serde(default)]
        final_factor: f64,
    },
    /// Multiplies the rate by `gamma` at each progress point in `milestones`.
    Step {
        /// Progress points in (0, 1), increasing.
        milestones: Vec<f64>,
        /// Factor applied at each milestone, in (0, 1].
        gamma: f64,
    },
}

impl LrSchedule {
    /// Checks the parameters; the error names the field relative to the schedule's table.
    pub fn validate(&self) -> Result<(), String> {
        let unit = |name: &str, v: f64, lo_open: bool, hi_open: bool| {
            let ok = v.is_finite()
                && if lo_open { v > 0.0 } else { v >= 0.0 }
                && if hi_open { v < 1.0 } else { v <= 1.0 };
            if ok {
                Ok(())
            } else {
                let (l, h) = (
                    if lo_open { "(" } else { "[" },
                    if hi_open { ")" } else { "]" },
                );
                Err(format!("{name} = {v} must be in {l}0, 1{h}"))
            }
        };
        match self {
            Self::Constant => Ok(()),
            Self::Cosine {
                warmup,
                final_factor,
            }
            | Self::Linear {
                warmup,
                final_factor,
            } => {
                unit("warmup", *warmup, false, true)?;
                unit("final_factor", *final_factor, false, false)
            }
            Self::Step { milestones, gamma } => {
                unit("gamma", *gamma, true, false)?;
                for m in milestones {
                    unit("milestones[..]", *m, true, true)?;
                }
                if milestones.windows(2).any(|w| w[0] >= w[1]) {
                    return Err(format!("milestones = {milestones:?} must be increasing"));
                }
                Ok(())
            }
        }
    }

    /// The factor at progress `p` (clamped to [0, 1]).
    pub fn factor(&self, p: f64) -> f64 {
        let p = if p.is_nan() { 0.0 } else { p.clamp(0.0, 1.0) };
        let warm = |warmup: f64| -> Option<f64> {
            // During warm-up the rate grows linearly; the first step gets a small, non-zero
            // rate because callers evaluate at the step's start.
            (p < warmup).then(|| (p / warmup).max(1e-3))
        };
        match self {
            Self::Constant => 1.0,
            Self::Cosine {
                warmup,
                final_factor,
            } => warm(*warmup).unwrap_or_else(|| {
                let q = (p - warmup) / (1.0 - warmup);
                final_factor + (1.0 - final_factor) * 0.5 * (1.0 + (std::f64::consts::PI * q).cos())
            }),
            Self::Linear {
                warmup,
                final_factor,
            } => warm(*warmup).unwrap_or_else(|| {
                let q = (p - warmup) / (1.0 - warmup);
                1.0 - (1.0 - final_factor) * q
            }),
            Self::Step { milestones, gamma } => {
                let passed = milestones.iter().filter(|&&m| p >= m).count();
                gamma.powi(passed as i32)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn shapes() {
        assert_eq!(LrSchedule::Constant.factor(0.7), 1.0);
        let c = LrSchedule::Cosine {
            warmup: 0.0,
            final_factor: 0.1,
        };
        assert!((c.factor(0.0) - 1.0).abs() < 1e-12);
        assert!((c.factor(0.5) - 0.55).abs() < 1e-12);
        assert!((c.factor(1.0) - 0.1).abs() < 1e-12);
        let w = LrSchedule::Cosine {
            warmup: 0.1,
            final_factor: 0.0,
        };
        assert!((w.factor(0.05) - 0.5).abs() < 1e-12);
        assert!((w.factor(0.1) - 1.0).abs() < 1e-12);
        assert!(w.factor(0.0) > 0.0, "the first step must move");
        let l = LrSchedule::Linear {
            warmup: 0.0,
            final_factor: 0.0,
        };
        assert!((l.factor(0.25) - 0.75).abs() < 1e-12);
        let s = LrSchedule::Step {
            milestones: vec![0.5, 0.75],
            gamma: 0.1,
        };
        assert_eq!(s.factor(0.49), 1.0);
        assert!((s.factor(0.5) - 0.1).abs() < 1e-12);
        assert!((s.factor(0.9) - 0.01).abs() < 1e-12);
    }

    #[test]
    fn validation_names_the_field() {
        let bad = LrSchedule::Cosine {
            warmup: 1.0,
            final_factor: 0.0,
        };
        assert!(bad.validate().unwrap_err().starts_with("warmup"));
        let bad = LrSchedule::Step {
            milestones: vec![0.6, 0.3],
            gamma: 0.5,
        };
        assert!(bad.validate().unwrap_err().contains("increasing"));
        let bad = LrSchedule::Step {
            milestones: vec![],
            gamma: 0.0,
        };
        assert!(bad.validate().unwrap_err().starts_with("gamma"));
        assert!(LrSchedule::Linear {
            warmup: 0.0,
            final_factor: f64::NAN
        }
        .validate()
        .is_err());
    }

    #[test]
    fn parses_from_toml() {
        let s: LrSchedule =
            toml::from_str("kind = \"cosine\"\nwarmup = 0.05\nfinal_factor = 0.01").unwrap();
        assert_eq!(
            s,
            LrSchedule::Cosine {
                warmup: 0.05,
                final_factor: 0.01
            }
        );
        assert!(toml::from_str::<LrSchedule>("kind = \"cosine\"\nwarmpu = 0.1").is_err());
    }

    proptest! {
        #[test]
        fn decaying_schedules_stay_in_range_and_never_rise_after_warmup(
            warmup in 0.0f64..0.5, fin in 0.0f64..=1.0, a in 0.0f64..=1.0, b in 0.0f64..=1.0,
        ) {
            let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
            for s in [
                LrSchedule::Cosine { warmup, final_factor: fin },
                LrSchedule::Linear { warmup, final_factor: fin },
            ] {
                prop_assert!(s.validate().is_ok());
                let (f_lo, f_hi) = (s.factor(lo), s.factor(hi));
                prop_assert!((0.0..=1.0 + 1e-12).contains(&f_lo));
                prop_assert!((0.0..=1.0 + 1e-12).contains(&f_hi));
                if lo >= warmup {
                    prop_assert!(f_hi <= f_lo + 1e-12);
                    prop_assert!(f_hi >= fin - 1e-12);
                }
            }
        }
    }
}
