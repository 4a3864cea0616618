//! Server-side optimizers applied to the averaged client update.
//!
//! Following Reddi et al., "Adaptive Federated Optimization" (2021): the server treats
//! `delta = mean_i(x_i) - x` as a step direction and feeds it to an optimizer. With the default
//! `Plain { lr: 1.0 }` this is exactly FedAvg (`x <- mean_i(x_i)`).
//! DiLoCo's outer step (Douillard et al. 2023) is SGD with Nesterov momentum on the
//! pseudo-gradient `g = -delta`.

use serde::{Deserialize, Serialize};

use crate::params::ParamsError;

/// Which server optimizer to use, with its hyper-parameters (config: `[algorithm.server_optimizer]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum ServerOptimizerConfig {
    /// `x <- x + lr * delta`; `lr = 1` is FedAvg.
    Plain {
        /// Server learning rate.
        #[serde(default = "one")]
        lr: f32,
    },
    /// FedAvgM: `m <- beta m + delta; x <- x + lr m`.
    Momentum {
        /// Server learning rate.
        #[serde(default = "one")]
        lr: f32,
        /// Momentum factor.
        #[serde(default = "default_momentum")]
        momentum: f32,
    },
    /// FedAdam: Adam moments of `delta`, `x <- x + lr m / (sqrt(v) + tau)`.
    Adam(Adaptive),
    /// FedYogi: like FedAdam with Yogi's additive second-moment update.
    Yogi(Adaptive),
    /// DiLoCo's outer optimizer: SGD with Nesterov momentum on `g = -delta`.
    Nesterov {
        /// Outer learning rate (DiLoCo: 0.7).
        #[serde(default = "default_nesterov_lr")]
        lr: f32,
        /// Momentum (DiLoCo: 0.9).
        #[serde(default = "default_momentum")]
        momentum: f32,
    },
}

/// The hyper-parameters of FedAdam and FedYogi.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Adaptive {
    /// Server learning rate.
    #[serde(default = "default_adaptive_lr")]
    pub lr: f32,
    /// First-moment decay.
    #[serde(default = "default_beta1")]
    pub beta1: f32,
    /// Second-moment decay.
    #[serde(default = "default_beta2")]
    pub beta2: f32,
    /// Adaptivity (the epsilon of Adam).
    #[serde(default = "default_tau")]
    pub tau: f32,
}

fn one() -> f32 {
    1.0
}
fn default_momentum() -> f32 {
    0.9
}
fn default_adaptive_lr() -> f32 {
    0.01
}
fn default_beta1() -> f32 {
    0.9
}
fn default_beta2() -> f32 {
    0.99
}
fn default_tau() -> f32 {
    1e-3
}
fn default_nesterov_lr() -> f32 {
    0.7
}

impl Default for ServerOptimizerConfig {
    fn default() -> Self {
        Self::Plain { lr: 1.0 }
    }
}

impl ServerOptimizerConfig {
    /// Checks the hyper-parameters; the error names the offending one.
    pub fn validate(&self) -> Result<(), String> {
        let pos = |name: &str, v: f32| {
            if v > 0.0 && v <= 1000.0 {
                Ok(())
            } else {
                Err(format!(
                    "server_optimizer.{name} must be in (0, 1000] (got {v})"
                ))
            }
        };
        let unit = |name: &str, v: f32| {
            if (0.0..1.0).contains(&v) {
                Ok(())
            } else {
                Err(format!(
                    "server_optimizer.{name} must be in [0, 1) (got {v})"
                ))
            }
        };
        match *self {
            Self::Plain { lr } => pos("lr", lr),
            Self::Momentum { lr, momentum } | Self::Nesterov { lr, momentum } => {
                pos("lr", lr)?;
                unit("momentum", momentum)
            }
            Self::Adam(a) | Self::Yogi(a) => {
                pos("lr", a.lr)?;
                unit("beta1", a.beta1)?;
                unit("beta2", a.beta2)?;
                pos("tau", a.tau)
            }
        }
    }
}

/// A server optimizer with its state (moment buffers), created lazily on the first step.
#[derive(Debug, Clone)]
pub struct ServerOptimizer {
    config: ServerOptimizerConfig,
    m: Vec<f32>,
    v: Vec<f32>,
}

impl ServerOptimizer {
    /// A fresh optimizer with empty state.
    pub fn new(config: ServerOptimizerConfig) -> Self {
        Self {
            config,
            m: Vec::new(),
            v: Vec::new(),
        }
    }

    /// The moment buffers (empty before the first step), for checkpoints.
    pub fn buffers(&self) -> (&[f32], &[f32]) {
        (&self.m, &self.v)
    }

    /// Restores buffers saved with [`ServerOptimizer::buffers`]: both empty, or both of the
    /// model's length `n`.
    pub fn restore(&mut self, m: Vec<f32>, v: Vec<f32>, n: usize) -> Result<(), ParamsError> {
        for b in [&m, &v] {
            if !b.is_empty() && b.len() != n {
                return Err(ParamsError::LengthMismatch {
                    expected: n,
                    got: b.len(),
                });
            }
        }
        if m.len() != v.len() {
            return Err(ParamsError::LengthMismatch {
                expected: m.len(),
                got: v.len(),
            });
        }
        self.m = m;
        self.v = v;
        Ok(())
    }

    /// Applies one server step to `x` given the averaged client model `mean`.
    pub fn step(&mut self, x: &mut [f32], mean: &[f32]) -> Result<(), ParamsError> {
        if x.len() != mean.len() {
            return Err(ParamsError::LengthMismatch {
                expected: x.len(),
                got: mean.len(),
            });
        }
        let n = x.len();
        if self.m.len() != n {
            self.m = vec![0.0; n];
            self.v = vec![0.0; n];
        }
        match self.config {
            ServerOptimizerConfig::Plain { lr } => {
                for (xi, mi) in x.iter_mut().zip(mean) {
                    *xi += lr * (mi - *xi);
                }
            }
            ServerOptimizerConfig::Momentum { lr, momentum } => {
                for ((xi, mi), buf) in x.iter_mut().zip(mean).zip(self.m.iter_mut()) {
                    *buf = momentum * *buf + (mi - *xi);
                    *xi += lr * *buf;
                }
            }
            ServerOptimizerConfig::Adam(a) | ServerOptimizerConfig::Yogi(a) => {
                let Adaptive {
                    lr,
                    beta1,
                    beta2,
                    tau,
                } = a;
                let yogi = matches!(self.config, ServerOptimizerConfig::Yogi(_));
                for i in 0..n {
                    let d = mean[i] - x[i];
                    self.m[i] = beta1 * self.m[i] + (1.0 - beta1) * d;
                    let d2 = d * d;
                    self.v[i] = if yogi {
                        self.v[i] - (1.0 - beta2) * d2 * (self.v[i] - d2).signum()
                    } else {
                        beta2 * self.v[i] + (1.0 - beta2) * d2
                    };
                    x[i] += lr * self.m[i] / (self.v[i].max(0.0).sqrt() + tau);
                }
            }
            ServerOptimizerConfig::Nesterov { lr, momentum } => {
                for ((xi, mi), buf) in x.iter_mut().zip(mean).zip(self.m.iter_mut()) {
                    let g = *xi - mi;
                    *buf = momentum * *buf + g;
                    *xi -= lr * (g + momentum * *buf);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_lr_one_is_fedavg() {
        let mut x = vec![1.0, 2.0];
        ServerOptimizer::new(ServerOptimizerConfig::default())
            .step(&mut x, &[3.0, -1.0])
            .unwrap();
        assert_eq!(x, vec![3.0, -1.0]);
    }

    #[test]
    fn momentum_accumulates() {
        let mut opt = ServerOptimizer::new(ServerOptimizerConfig::Momentum {
            lr: 1.0,
            momentum: 0.5,
        });
        let mut x = vec![0.0];
        opt.step(&mut x, &[1.0]).unwrap(); // m = 1, x = 1
        assert_eq!(x, vec![1.0]);
        opt.step(&mut x, &[2.0]).unwrap(); // m = 0.5 + 1 = 1.5, x = 2.5
        assert_eq!(x, vec![2.5]);
    }

    #[test]
    fn nesterov_matches_hand_computation() {
        let mut opt = ServerOptimizer::new(ServerOptimizerConfig::Nesterov {
            lr: 0.5,
            momentum: 0.9,
        });
        let mut x = vec![1.0];
        opt.step(&mut x, &[0.0]).unwrap(); // g = 1, m = 1, x = 1 - 0.5 * (1 + 0.9) = 0.05
        assert!((x[0] - 0.05).abs() < 1e-6);
    }

    #[test]
    fn adam_moves_toward_mean_by_about_lr() {
        let mut opt = ServerOptimizer::new(ServerOptimizerConfig::Adam(Adaptive {
            lr: 0.1,
            beta1: 0.9,
            beta2: 0.99,
            tau: 1e-3,
        }));
        let mut x = vec![0.0, 0.0];
        opt.step(&mut x, &[1.0, -1.0]).unwrap();
        // m = 0.1 d, v = 0.01 d^2 -> step = lr * 0.1 / (0.1 + tau) ~ lr
        assert!(x[0] > 0.09 && x[0] < 0.1);
        assert!(x[1] < -0.09 && x[1] > -0.1);
    }

    #[test]
    fn yogi_moves_toward_mean() {
        let mut opt = ServerOptimizer::new(ServerOptimizerConfig::Yogi(Adaptive {
            lr: 0.1,
            beta1: 0.9,
            beta2: 0.99,
            tau: 1e-3,
        }));
        let mut x = vec![0.0];
        opt.step(&mut x, &[2.0]).unwrap();
        assert!(x[0] > 0.0);
    }

    #[test]
    fn adaptive_optimizers_read_their_table_with_defaults_and_refuse_other_fields() {
        let read = |s: &str| toml::from_str::<ServerOptimizerConfig>(s);
        let want = Adaptive {
            lr: 0.5,
            beta1: 0.9,
            beta2: 0.99,
            tau: 1e-3,
        };
        let yogi = read("kind = \"yogi\"\nlr = 0.5").unwrap();
        assert_eq!(yogi, ServerOptimizerConfig::Yogi(want));
        let written = toml::to_string(&yogi).unwrap();
        assert!(written.contains("kind = \"yogi\""), "{written}");
        assert!(written.contains("beta2 = "), "{written}");
        let e = read("kind = \"adam\"\nmomentum = 0.5").unwrap_err();
        assert!(e.to_string().contains("unknown field `momentum`"), "{e}");
    }

    #[test]
    fn validation_names_the_field() {
        let e = ServerOptimizerConfig::Momentum {
            lr: 1.0,
            momentum: 1.5,
        }
        .validate()
        .unwrap_err();
        assert!(e.contains("momentum"));
        assert!(ServerOptimizerConfig::Plain { lr: -1.0 }
            .validate()
            .unwrap_err()
            .contains("lr"));
    }

    #[test]
    fn length_mismatch_is_an_error() {
        let mut x = vec![0.0];
        assert!(ServerOptimizer::new(ServerOptimizerConfig::default())
            .step(&mut x, &[1.0, 2.0])
            .is_err());
    }
}
