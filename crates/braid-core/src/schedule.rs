//! Communication schedules for decentralized training: when peers talk, and how much.
//!
//! A schedule has two parts (Zhu et al., "A Single Merging Suffices", arXiv 2507.06542):
//! - `every`: a communication round happens after every `every` local steps;
//! - a budget `r(p)` over training progress `p = step / total_steps` in `[0, 1]`: the number of
//!   extra peers each node averages with in that round. The integer part of `r` is a count;
//!   the fractional part is the probability of one more (r = 0.2: one peer with probability 0.2).
//!
//! How `r` applies to a topology is described in [`crate::topology`]; `r >= n - 1` is always an
//! exact global average, and `r = 0` is no communication.

use serde::{Deserialize, Serialize};

/// The budget `r(p)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Budget {
    /// No communication at all.
    LocalOnly,
    /// `r(p) = r`.
    Fixed {
        /// Peers per round.
        r: f64,
    },
    /// `r_start` until `point1`, then `r_end` (the paper's headline: a dense phase at the end).
    Truncate {
        /// Budget before `point1`.
        r_start: f64,
        /// Budget from `point1` on.
        r_end: f64,
        /// Progress at which it switches, in [0, 1].
        point1: f64,
    },
    /// `r_end` only inside `[point1, point1 + width)`, `r_start` elsewhere.
    Window {
        /// Budget outside the window.
        r_start: f64,
        /// Budget inside the window.
        r_end: f64,
        /// Start of the window, in [0, 1].
        point1: f64,
        /// Width of the window, in (0, 1].
        width: f64,
    },
    /// Linear ramp from `r_start` at p = 0 to `r_end` at p = 1.
    Linear {
        /// Budget at the start.
        r_start: f64,
        /// Budget at the end.
        r_end: f64,
    },
    /// Cosine ramp from `r_start` at p = 0 to `r_end` at p = 1.
    Cosine {
        /// Budget at the start.
        r_start: f64,
        /// Budget at the end.
        r_end: f64,
    },
}

/// A complete schedule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommSchedule {
    /// Local steps between communication rounds.
    pub every: u64,
    /// The budget over progress.
    pub budget: Budget,
}

impl Budget {
    /// The budget at progress `p` (clamped to [0, 1]).
    pub fn r_at(&self, p: f64) -> f64 {
        let p = p.clamp(0.0, 1.0);
        match *self {
            Self::LocalOnly => 0.0,
            Self::Fixed { r } => r,
            Self::Truncate {
                r_start,
                r_end,
                point1,
            } => {
                if p < point1 {
                    r_start
                } else {
                    r_end
                }
            }
            Self::Window {
                r_start,
                r_end,
                point1,
                width,
            } => {
                if p >= point1 && p < point1 + width {
                    r_end
                } else {
                    r_start
                }
            }
            Self::Linear { r_start, r_end } => r_start + (r_end - r_start) * p,
            Self::Cosine { r_start, r_end } => {
                r_end + (r_start - r_end) * 0.5 * (1.0 + (std::f64::consts::PI * p).cos())
            }
        }
    }

    /// Checks the parameters; the message names the field relative to the table that holds
    /// the schedule (callers prefix it, e.g. `decentralized.`).
    pub fn validate(&self) -> Result<(), String> {
        let r_ok = |name: &str, r: f64| {
            // r above the peer count means every neighbour every round; bounded anyway.
            if (0.0..=1e6).contains(&r) {
                Ok(())
            } else {
                Err(format!("budget.{name} must be in [0, 1e6] (got {r})"))
            }
        };
        let p_ok = |name: &str, p: f64| {
            if (0.0..=1.0).contains(&p) {
                Ok(())
            } else {
                Err(format!("budget.{name} must be in [0, 1] (got {p})"))
            }
        };
        match *self {
            Self::LocalOnly => Ok(()),
            Self::Fixed { r } => r_ok("r", r),
            Self::Truncate {
                r_start,
                r_end,
                point1,
            }
            | Self::Window {
                r_start,
                r_end,
                point1,
                ..
            } => {
                r_ok("r_start", r_start)?;
                r_ok("r_end", r_end)?;
                p_ok("point1", point1)?;
                match *self {
                    Self::Window { width, .. } if !(width > 0.0 && width <= 1.0) => {
                        Err(format!("budget.width must be in (0, 1] (got {width})"))
                    }
                    _ => Ok(()),
                }
            }
            Self::Linear { r_start, r_end } | Self::Cosine { r_start, r_end } => {
                r_ok("r_start", r_start)?;
                r_ok("r_end", r_end)
            }
        }
    }
}

impl CommSchedule {
    /// True if a communication round follows local step `step` (counted from 1).
    pub fn communicates_after(&self, step: u64) -> bool {
        self.every > 0
            && step > 0
            && step.is_multiple_of(self.every)
            && !matches!(self.budget, Budget::LocalOnly)
    }

    /// Checks the schedule.
    pub fn validate(&self) -> Result<(), String> {
        if self.every == 0 {
            return Err("every must be at least 1".into());
        }
        self.budget.validate()
    }

    /// Mean budget over the communication rounds of a run of `total_steps` steps: the average
    /// number of extra peers per node per round, for comparing schedules at equal budget.
    pub fn mean_budget(&self, total_steps: u64) -> f64 {
        let rounds: Vec<u64> = (1..=total_steps)
            .filter(|&s| self.communicates_after(s))
            .collect();
        if rounds.is_empty() {
            return 0.0;
        }
        rounds
            .iter()
            .map(|&s| self.budget.r_at(s as f64 / total_steps as f64))
            .sum::<f64>()
            / rounds.len() as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn shapes_of_the_budgets() {
        let t = Budget::Truncate {
            r_start: 0.2,
            r_end: 31.0,
            point1: 0.997,
        };
        assert_eq!((t.r_at(0.5), t.r_at(0.997), t.r_at(1.0)), (0.2, 31.0, 31.0));
        let w = Budget::Window {
            r_start: 0.0,
            r_end: 7.0,
            point1: 0.5,
            width: 0.05,
        };
        assert_eq!(
            (w.r_at(0.49), w.r_at(0.5), w.r_at(0.549), w.r_at(0.55)),
            (0.0, 7.0, 7.0, 0.0)
        );
        let l = Budget::Linear {
            r_start: 0.0,
            r_end: 2.0,
        };
        assert!((l.r_at(0.25) - 0.5).abs() < 1e-12);
        let c = Budget::Cosine {
            r_start: 0.0,
            r_end: 2.0,
        };
        assert!(
            c.r_at(0.0).abs() < 1e-12
                && (c.r_at(0.5) - 1.0).abs() < 1e-12
                && (c.r_at(1.0) - 2.0).abs() < 1e-12
        );
        assert_eq!(Budget::LocalOnly.r_at(0.3), 0.0);
    }

    #[test]
    fn every_k_steps() {
        let s = CommSchedule {
            every: 100,
            budget: Budget::Fixed { r: 1.0 },
        };
        assert!(
            !s.communicates_after(0)
                && !s.communicates_after(99)
                && s.communicates_after(100)
                && s.communicates_after(300)
        );
        let local = CommSchedule {
            every: 1,
            budget: Budget::LocalOnly,
        };
        assert!(!local.communicates_after(5));
        assert_eq!(local.mean_budget(100), 0.0);
        assert!((s.mean_budget(1000) - 1.0).abs() < 1e-12);
    }

    #[test]
    fn validation_names_fields() {
        assert!(Budget::Fixed { r: -1.0 }
            .validate()
            .unwrap_err()
            .contains("budget.r "));
        assert!(Budget::Window {
            r_start: 0.0,
            r_end: 1.0,
            point1: 0.5,
            width: 0.0
        }
        .validate()
        .unwrap_err()
        .contains("width"));
        assert!(Budget::Truncate {
            r_start: 0.0,
            r_end: 1.0,
            point1: 1.5
        }
        .validate()
        .unwrap_err()
        .contains("point1"));
        assert!(CommSchedule {
            every: 0,
            budget: Budget::LocalOnly
        }
        .validate()
        .unwrap_err()
        .contains("every"));
    }

    proptest! {
        /// Ramps stay between their endpoints.
        #[test]
        fn ramps_stay_in_range(a in 0.0f64..40.0, b in 0.0f64..40.0, p in 0.0f64..=1.0) {
            for budget in [Budget::Linear { r_start: a, r_end: b }, Budget::Cosine { r_start: a, r_end: b }] {
                let r = budget.r_at(p);
                prop_assert!(r >= a.min(b) - 1e-9 && r <= a.max(b) + 1e-9);
            }
        }
    }
}
