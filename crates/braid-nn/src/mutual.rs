//! Mutual learning: several models, possibly of different architectures, trained together on
//! the same mini-batches, each learning from the labels and from the others' predictions
//! (deep mutual learning; used by DFML, FML and Def-KT).
//!
//! For models `1..n` on a batch, model `i`'s loss is
//! `(1 - alpha) * S_i + alpha * T^2 * mean_{j != i} KL(p_j^T || p_i^T)`, where `S_i` is the
//! supervised loss (cross-entropy, or the re-weighted softmax cross-entropy [`SupervisedLoss::Wsm`])
//! and `p^T = softmax(logits / T)`. Peers' predictions are constants in model `i`'s loss
//! (detached), so every model is updated from the same forward pass, all at once; the `T^2`
//! factor keeps the distillation gradient's size independent of the temperature (Hinton et
//! al.). A model trained alone has no peers and learns from the labels only (`S_i`, without
//! the `1 - alpha` factor). Every model gets a fresh optimizer per call.

use braid_data::Dataset;
use burn::nn::loss::{CrossEntropyLoss, CrossEntropyLossConfig};
use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::device::DeviceKind;
use crate::dyn_net::DynNet;
use crate::model::BoundModel;
use crate::train::OptimizerConfig;
use crate::NnError;

/// The supervised part of a model's loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SupervisedLoss {
    /// Plain softmax cross-entropy.
    #[default]
    Ce,
    /// Re-weighted softmax cross-entropy (Legate et al., 2023): each class's term in the
    /// softmax's denominator is weighted by its share of the training data, so classes absent
    /// from the data (weight 0) are masked out and the model is not pushed away from them.
    Wsm,
}

/// What one mutual-learning call does.
#[derive(Debug, Clone, PartialEq)]
pub struct MutualSpec {
    /// Every model's optimizer (a fresh one per model and call).
    pub optimizer: OptimizerConfig,
    /// Weight of the distillation term, in `[0, 1]`.
    pub alpha: f64,
    /// Softmax temperature of the distillation term (> 0).
    pub temperature: f64,
    /// The supervised loss.
    pub supervised: SupervisedLoss,
    /// Multiplies the learning rate.
    pub lr_scale: f64,
}

impl MutualSpec {
    /// Checks the hyper-parameters.
    pub fn validate(&self) -> Result<(), NnError> {
        self.optimizer.validate()?;
        if !(0.0..=1.0).contains(&self.alpha) {
            return Err(NnError::Config(format!(
                "mutual-learning alpha {} must be in [0, 1]",
                self.alpha
            )));
        }
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            return Err(NnError::Config(format!(
                "distillation temperature {} must be > 0",
                self.temperature
            )));
        }
        crate::train::check_lr_scale(self.lr_scale)
    }
}

/// One model taking part: its model (an index into the trainer's list) and parameters.
#[derive(Debug, Clone, Copy)]
pub struct Member<'a> {
    /// Index into [`MutualTrainer::models`].
    pub arch: usize,
    /// Its flat parameters.
    pub params: &'a [f32],
}

/// The result of a mutual-learning call, per model in the order given.
#[derive(Debug, Clone, PartialEq)]
pub struct MutualOutcome {
    /// Parameters after training.
    pub params: Vec<Vec<f32>>,
    /// Mean supervised loss per model over the steps.
    pub supervised: Vec<f64>,
    /// Mean distillation loss (mean KL to the peers, without `T^2`) per model; 0 alone.
    pub distill: Vec<f64>,
    /// Optimizer steps taken (the same for every model).
    pub steps: usize,
    /// Samples processed per model (counting repeats).
    pub samples: usize,
}

/// Trains groups of models of a fixed list together: built-ins and models of one's own,
/// of any mix of types.
pub struct MutualTrainer {
    models: Vec<BoundModel>,
    device: Device,
    /// Spare modules per model, reused across calls.
    pool: Vec<Vec<Box<dyn DynNet>>>,
    loss: CrossEntropyLoss,
    stop: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
}

/// The log-weight that masks a class out of a softmax (its `exp` underflows to 0 in f32).
const MASKED: f32 = -1.0e4;

impl MutualTrainer {
    /// A trainer for models of the list `models` on `device`.
    pub fn new(models: Vec<BoundModel>, device: &DeviceKind) -> Result<Self, NnError> {
        let device = device.device()?.autodiff();
        let loss = CrossEntropyLossConfig::new().init(&device);
        Ok(Self {
            pool: models.iter().map(|_| Vec::new()).collect(),
            models,
            device,
            loss,
            stop: None,
        })
    }

    /// The models, in index order.
    pub fn models(&self) -> &[BoundModel] {
        &self.models
    }

    /// Training stops after the step in progress once `flag` is set, with [`NnError::Halted`].
    pub fn set_stop_flag(&mut self, flag: std::sync::Arc<std::sync::atomic::AtomicBool>) {
        self.stop = Some(flag);
    }

    fn check(&self, members: &[Member<'_>], data: &Dataset) -> Result<(), NnError> {
        for m in members {
            let model = self.models.get(m.arch).ok_or_else(|| {
                NnError::Config(format!(
                    "model index {} is outside the {} configured models",
                    m.arch,
                    self.models.len()
                ))
            })?;
            if m.params.len() != model.num_params() {
                return Err(NnError::ParamCount {
                    model: model.name().into(),
                    expected: model.num_params(),
                    got: m.params.len(),
                });
            }
            if data.sample_shape() != model.data().sample.as_slice() {
                return Err(NnError::Shape(format!(
                    "model {} expects samples of shape {:?}, data has {:?}",
                    model.name(),
                    model.data().sample,
                    data.sample_shape()
                )));
            }
        }
        Ok(())
    }

    /// Log-weights of the classes for [`SupervisedLoss::Wsm`]: the log of each class's share
    /// among the samples of `batches` (each sample counted once), [`MASKED`] for absent ones.
    fn wsm_log_weights(data: &Dataset, batches: &[&Vec<usize>]) -> Vec<f32> {
        let mut seen = std::collections::BTreeSet::new();
        let mut counts = vec![0usize; data.num_classes()];
        for &i in batches.iter().copied().flatten() {
            if seen.insert(i) {
                if let Some(c) = counts.get_mut(data.labels()[i] as usize) {
                    *c += 1;
                }
            }
        }
        let total = seen.len().max(1) as f32;
        counts
            .iter()
            .map(|&c| {
                if c == 0 {
                    MASKED
                } else {
                    (c as f32 / total).ln()
                }
            })
            .collect()
    }

    /// Trains `members` together: one optimizer step per model and entry of `batches`
    /// (training-sample indices into `data`). With one member this is plain supervised training.
    pub fn train(
        &mut self, members: &[Member<'_>], data: &Dataset, batches: &[Vec<usize>],
        spec: &MutualSpec,
    ) -> Result<MutualOutcome, NnError> {
        self.check(members, data)?;
        spec.validate()?;
        crate::train::check_indices("batch sample", batches.iter().flatten(), data)?;
        let n = members.len();
        let batches: Vec<&Vec<usize>> = batches.iter().filter(|b| !b.is_empty()).collect();
        if n == 0 || batches.is_empty() {
            return Ok(MutualOutcome {
                params: members.iter().map(|m| m.params.to_vec()).collect(),
                supervised: vec![0.0; n],
                distill: vec![0.0; n],
                steps: 0,
                samples: 0,
            });
        }
        let mut models: Vec<Box<dyn DynNet>> = Vec::with_capacity(n);
        for m in members {
            let mut module = match self.pool[m.arch].pop() {
                Some(module) => module,
                None => self.models[m.arch].member(&self.device)?,
            };
            module.load(m.params);
            models.push(module);
        }
        let mut optims: Vec<_> = members.iter().map(|_| spec.optimizer.build()).collect();
        let lr = spec.optimizer.lr() * spec.lr_scale;
        let wsm = (spec.supervised == SupervisedLoss::Wsm).then(|| {
            let w = Self::wsm_log_weights(data, &batches);
            let c = w.len();
            Tensor::<2>::from_data(TensorData::new(w, [1, c]), &self.device)
        });
        let t = spec.temperature;
        let (alpha, t2) = if n > 1 {
            (spec.alpha, t * t)
        } else {
            (0.0, 0.0)
        };
        let mut sup_sum: Vec<Option<Tensor<1>>> = vec![None; n];
        let mut kl_sum: Vec<Option<Tensor<1>>> = vec![None; n];
        let (mut steps, mut samples) = (0usize, 0usize);
        let mut failure = None;
        for chunk in &batches {
            if self
                .stop
                .as_ref()
                .is_some_and(|f| f.load(std::sync::atomic::Ordering::Relaxed))
            {
                failure = Some(NnError::Halted);
                break;
            }
            let (mut xv, mut yv) = (Vec::new(), Vec::new());
            data.gather(chunk, &mut xv, &mut yv);
            let x = Tensor::<2>::from_data(
                TensorData::new(xv, [chunk.len(), data.sample_len()]),
                &self.device,
            );
            let y = Tensor::<1, Int>::from_data(TensorData::new(yv, [chunk.len()]), &self.device);
            let logits: Vec<Tensor<2>> = models.iter().map(|m| m.forward(x.clone())).collect();
            // log p_i^T (in the graph) and the peers' p_j^T and sum_c p_j log p_j (constants).
            let logp: Vec<Tensor<2>> = logits
                .iter()
                .map(|z| log_softmax(z.clone().div_scalar(t), 1))
                .collect();
            let (probs, neg_entropy): (Vec<Tensor<2>>, Vec<Tensor<1>>) = logp
                .iter()
                .map(|l| {
                    let l = l.clone().detach();
                    let p = l.clone().exp();
                    let ne = (p.clone() * l).sum_dim(1).mean();
                    (p, ne)
                })
                .unzip();
            let all_probs = probs.iter().cloned().reduce(|a, b| a + b);
            let all_ne = neg_entropy.iter().cloned().reduce(|a, b| a + b);
            let mut total: Option<Tensor<1>> = None;
            for i in 0..n {
                let z = match &wsm {
                    Some(w) => logits[i].clone() + w.clone(),
                    None => logits[i].clone(),
                };
                let sup = self.loss.forward(z, y.clone());
                let mut loss = sup.clone().mul_scalar(1.0 - alpha);
                if let (true, Some(all_p), Some(all_ne)) = (n > 1, &all_probs, &all_ne) {
                    // mean_j KL(p_j || p_i) = mean_j sum_c p_j log p_j - sum_c (mean_j p_j) log p_i
                    let peers = (n - 1) as f64;
                    let peer_p = (all_p.clone() - probs[i].clone()).div_scalar(peers);
                    let peer_ne = (all_ne.clone() - neg_entropy[i].clone()).div_scalar(peers);
                    let kl = peer_ne - (peer_p * logp[i].clone()).sum_dim(1).mean();
                    loss = loss + kl.clone().mul_scalar(alpha * t2);
                    kl_sum[i] = Some(add(kl_sum[i].take(), kl.detach()));
                }
                sup_sum[i] = Some(add(sup_sum[i].take(), sup.detach()));
                total = Some(add(total, loss));
            }
            let Some(total) = total else { break };
            let mut grads = total.backward();
            for (model, optim) in models.iter_mut().zip(optims.iter_mut()) {
                let gp = model.take_grads(&mut grads);
                model.step(optim, lr, gp);
            }
            steps += 1;
            samples += chunk.len();
        }
        let params: Vec<Vec<f32>> = models.iter().map(|m| m.params()).collect();
        for (model, m) in models.into_iter().zip(members) {
            self.pool[m.arch].push(model);
        }
        if let Some(e) = failure {
            return Err(e);
        }
        let mean = |s: Vec<Option<Tensor<1>>>| -> Vec<f64> {
            s.into_iter()
                .map(|t| {
                    t.map_or(0.0, |t| {
                        f64::from(t.into_scalar::<f32>()) / steps.max(1) as f64
                    })
                })
                .collect()
        };
        let supervised = mean(sup_sum);
        let distill = mean(kl_sum);
        if supervised.iter().chain(&distill).any(|v| !v.is_finite())
            || params.iter().any(|p| !braid_core::params::all_finite(p))
        {
            return Err(NnError::Diverged);
        }
        Ok(MutualOutcome {
            params,
            supervised,
            distill,
            steps,
            samples,
        })
    }
}

fn add(acc: Option<Tensor<1>>, v: Tensor<1>) -> Tensor<1> {
    match acc {
        Some(a) => a + v,
        None => v,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::{Arch, ModelName};
    use crate::train::{OptimizerState, TrainSpec, Trainer};

    /// `n` random images; labels cycle through `classes`.
    fn data(n: usize, classes: &[u32]) -> Dataset {
        let mut rng = braid_core::seed::rng(7, &[]);
        use rand::Rng as _;
        let x: Vec<f32> = (0..n * 784).map(|_| rng.random_range(0.0..1.0)).collect();
        let y: Vec<u32> = (0..n).map(|i| classes[i % classes.len()]).collect();
        Dataset::new(
            braid_data::dataset::Features::F32(x),
            y,
            vec![1, 28, 28],
            10,
        )
        .unwrap()
    }

    fn arch(name: ModelName) -> Arch {
        Arch::new(name, &[1, 28, 28], 10).unwrap()
    }

    fn spec(alpha: f64) -> MutualSpec {
        MutualSpec {
            optimizer: OptimizerConfig::Sgd {
                lr: 0.05,
                momentum: 0.0,
                weight_decay: 0.0,
                nesterov: false,
            },
            alpha,
            temperature: 2.0,
            supervised: SupervisedLoss::Ce,
            lr_scale: 1.0,
        }
    }

    fn trainer() -> MutualTrainer {
        MutualTrainer::new(
            vec![
                BoundModel::builtin(&arch(ModelName::CnnSmall)),
                BoundModel::builtin(&arch(ModelName::Mlp)),
            ],
            &DeviceKind::Cpu,
        )
        .unwrap()
    }

    fn batches(n: usize, b: usize) -> Vec<Vec<usize>> {
        (0..n)
            .collect::<Vec<_>>()
            .chunks(b)
            .map(<[usize]>::to_vec)
            .collect()
    }

    #[test]
    fn kl_is_zero_for_identical_models_and_positive_otherwise() {
        let mut t = trainer();
        let d = data(32, &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
        let p = t.models()[0].init_params(1).unwrap();
        let same = [
            Member {
                arch: 0,
                params: &p,
            },
            Member {
                arch: 0,
                params: &p,
            },
        ];
        let out = t.train(&same, &d, &batches(32, 16), &spec(0.5)).unwrap();
        // Identical models get identical updates, so they stay identical and the KL stays 0.
        assert!(
            out.distill.iter().all(|k| k.abs() < 1e-6),
            "{:?}",
            out.distill
        );
        assert_eq!(out.params[0], out.params[1]);

        let q = t.models()[0].init_params(2).unwrap();
        let m = t.models()[1].init_params(3).unwrap();
        let differ = [
            Member {
                arch: 0,
                params: &p,
            },
            Member {
                arch: 0,
                params: &q,
            },
            Member {
                arch: 1,
                params: &m,
            },
        ];
        let out = t.train(&differ, &d, &batches(32, 16), &spec(0.5)).unwrap();
        assert!(out.distill.iter().all(|&k| k > 1e-6), "{:?}", out.distill);
        assert_eq!(out.steps, 2);
        assert_eq!(out.params[2].len(), t.models()[1].num_params());
    }

    #[test]
    fn alone_or_with_alpha_zero_it_is_plain_supervised_training() {
        let d = data(48, &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
        let a = arch(ModelName::CnnSmall);
        let p = a.init_params(4);
        let q = arch(ModelName::Mlp).init_params(5);
        let b = batches(48, 16);
        let s = spec(0.7);
        let mut reference = Trainer::new(a.clone(), &DeviceKind::Cpu).unwrap();
        let train_spec = TrainSpec {
            optimizer: s.optimizer.clone(),
            batch_size: 16,
            epochs: 1,
            max_steps: None,
            prox_mu: 0.0,
            lr_scale: 1.0,
            dp_sgd: None,
        };
        let want = reference
            .train_batches(&p, &d, &b, &train_spec, &mut OptimizerState::default())
            .unwrap();
        let mut t = trainer();
        let alone = t
            .train(
                &[Member {
                    arch: 0,
                    params: &p,
                }],
                &d,
                &b,
                &s,
            )
            .unwrap();
        let close = |x: &[f32], y: &[f32]| x.iter().zip(y).all(|(u, v)| (u - v).abs() < 1e-5);
        assert!(close(&alone.params[0], &want.params));
        assert!((alone.supervised[0] - want.mean_loss).abs() < 1e-5);
        assert_eq!(alone.distill, vec![0.0]);
        // alpha = 0 with peers: each model trains as if alone.
        let both = t
            .train(
                &[
                    Member {
                        arch: 0,
                        params: &p,
                    },
                    Member {
                        arch: 1,
                        params: &q,
                    },
                ],
                &d,
                &b,
                &spec(0.0),
            )
            .unwrap();
        assert!(close(&both.params[0], &want.params));
    }

    #[test]
    fn distillation_pulls_the_models_predictions_together() {
        let mut t = trainer();
        let d = data(64, &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
        let (p, q) = (
            t.models()[0].init_params(8).unwrap(),
            t.models()[1].init_params(9).unwrap(),
        );
        let mut s = spec(1.0);
        s.temperature = 1.0;
        let b: Vec<Vec<usize>> = (0..6).flat_map(|_| batches(64, 32)).collect();
        let out = t
            .train(
                &[
                    Member {
                        arch: 0,
                        params: &p,
                    },
                    Member {
                        arch: 1,
                        params: &q,
                    },
                ],
                &d,
                &b,
                &s,
            )
            .unwrap();
        // KL after training, measured by a zero-step-size pass (lr is irrelevant at 1 step).
        let before = t
            .train(
                &[
                    Member {
                        arch: 0,
                        params: &p,
                    },
                    Member {
                        arch: 1,
                        params: &q,
                    },
                ],
                &d,
                &batches(64, 64),
                &s,
            )
            .unwrap();
        let after = t
            .train(
                &[
                    Member {
                        arch: 0,
                        params: &out.params[0],
                    },
                    Member {
                        arch: 1,
                        params: &out.params[1],
                    },
                ],
                &d,
                &batches(64, 64),
                &s,
            )
            .unwrap();
        assert!(
            after.distill[0] < 0.5 * before.distill[0],
            "{:?} -> {:?}",
            before.distill,
            after.distill
        );
    }

    #[test]
    fn wsm_leaves_absent_classes_alone() {
        let d = data(32, &[2, 5]);
        let a = arch(ModelName::Mlp);
        let p = a.init_params(11);
        let bias_of_last = |params: &[f32]| params[params.len() - 10..].to_vec();
        let mut t = MutualTrainer::new(vec![BoundModel::builtin(&a)], &DeviceKind::Cpu).unwrap();
        let mut s = spec(0.0);
        s.supervised = SupervisedLoss::Wsm;
        let out = t
            .train(
                &[Member {
                    arch: 0,
                    params: &p,
                }],
                &d,
                &batches(32, 8),
                &s,
            )
            .unwrap();
        let (before, after) = (bias_of_last(&p), bias_of_last(&out.params[0]));
        for c in 0..10 {
            let moved = (before[c] - after[c]).abs() > 1e-7;
            assert_eq!(
                moved,
                c == 2 || c == 5,
                "class {c}: {} -> {}",
                before[c],
                after[c]
            );
        }
        s.supervised = SupervisedLoss::Ce;
        let out = t
            .train(
                &[Member {
                    arch: 0,
                    params: &p,
                }],
                &d,
                &batches(32, 8),
                &s,
            )
            .unwrap();
        let after = bias_of_last(&out.params[0]);
        assert!((0..10).all(|c| (before[c] - after[c]).abs() > 1e-7));
    }

    #[test]
    fn bad_inputs_are_errors() {
        let mut t = trainer();
        let d = data(8, &[0, 1]);
        let p = t.models()[0].init_params(1).unwrap();
        let e = t
            .train(
                &[Member {
                    arch: 0,
                    params: &p[1..],
                }],
                &d,
                &batches(8, 4),
                &spec(0.5),
            )
            .unwrap_err();
        assert!(matches!(e, NnError::ParamCount { .. }), "{e}");
        let e = t
            .train(
                &[Member {
                    arch: 5,
                    params: &p,
                }],
                &d,
                &batches(8, 4),
                &spec(0.5),
            )
            .unwrap_err();
        assert!(e.to_string().contains("outside"), "{e}");
        let e = t
            .train(
                &[Member {
                    arch: 0,
                    params: &p,
                }],
                &d,
                &[vec![99]],
                &spec(0.5),
            )
            .unwrap_err();
        assert!(e.to_string().contains("99"), "{e}");
        let e = t
            .train(
                &[Member {
                    arch: 0,
                    params: &p,
                }],
                &d,
                &batches(8, 4),
                &spec(1.5),
            )
            .unwrap_err();
        assert!(e.to_string().contains("alpha"), "{e}");
    }
}
