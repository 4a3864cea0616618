//! What a node can ask of its trainer, as separate capabilities.
//!
//! A driver lends every node a trainer (one per worker thread: nodes hold no model between
//! calls). What a trainer can do is split into small traits, so a trainer implements only
//! what it can do and an algorithm states, in its types, what it needs:
//!
//! | capability | what it does | needed by |
//! |---|---|---|
//! | [`Trainer`] | FLOPs per sample, stopping on a halt (every trainer) | every algorithm |
//! | [`Train`] | trains from given parameters on a shard (a fresh optimizer) | FedAvg family |
//! | [`TrainSteps`] | one step per batch, continuing an optimizer state | dsgd peers |
//! | [`Evaluate`] | evaluates on the test set or a fixed sample of it | all but mutual |
//! | [`SplitSteps`] | the client and server halves of split learning | `split` |
//! | [`MutualSteps`] | trains a list of models together, evaluates each | mutual learning |
//! | [`FlipLabels`] | trains on flipped labels (a simulated attacker) | optional |
//!
//! An algorithm's nodes receive a trait object of a *bundle* of capabilities (declared with
//! [`crate::trainer_bundle!`], e.g. `FedTrainer: Train + Evaluate`), named as the algorithm's
//! [`crate::node::Protocol::Trainer`]. A trainer that lacks a capability the algorithm
//! needs does not compile into it. Optional capabilities that depend on the configuration
//! rather than on the algorithm (label flipping, asked for only by `[attack] kind =
//! "label-flip"`) are asked for at run time through [`Trainer::label_flipper`].
//!
//! A trainer with the capabilities FedAvg needs is lent to its nodes:
//!
//! ```
//! use braid_engine::algorithms::fedavg::FedTrainer;
//! use braid_engine::node::EngineResult;
//! use braid_engine::trainer::{Evaluate, Train, Trainer};
//! use braid_nn::{EvalOutcome, TrainOutcome};
//!
//! struct Mine;
//! impl Trainer for Mine {}
//! impl Train for Mine {
//!     fn train(&mut self, p: &[f32], s: &[usize], _: u64, _: f64) -> EngineResult<TrainOutcome> {
//!         Ok(TrainOutcome { params: p.to_vec(), samples: s.len(), steps: 1, mean_loss: 0.0 })
//!     }
//! }
//! impl Evaluate for Mine {
//!     fn evaluate(&mut self, _: &[f32]) -> EngineResult<EvalOutcome> {
//!         Ok(EvalOutcome { accuracy: 1.0, loss: 0.0, samples: 1 })
//!     }
//!     fn evaluate_sample(&mut self, p: &[f32], _: usize) -> EngineResult<EvalOutcome> {
//!         self.evaluate(p)
//!     }
//! }
//! let lent: Box<dyn FedTrainer> = Box::new(Mine);
//! ```
//!
//! and one without evaluation is refused when it compiles, not when the server first
//! evaluates:
//!
//! ```compile_fail
//! use braid_engine::algorithms::fedavg::FedTrainer;
//! use braid_engine::node::EngineResult;
//! use braid_engine::trainer::{Train, Trainer};
//! use braid_nn::TrainOutcome;
//!
//! struct TrainsOnly;
//! impl Trainer for TrainsOnly {}
//! impl Train for TrainsOnly {
//!     fn train(&mut self, p: &[f32], s: &[usize], _: u64, _: f64) -> EngineResult<TrainOutcome> {
//!         Ok(TrainOutcome { params: p.to_vec(), samples: s.len(), steps: 1, mean_loss: 0.0 })
//!     }
//! }
//! let lent: Box<dyn FedTrainer> = Box::new(TrainsOnly); // error: `TrainsOnly: Evaluate` not satisfied
//! ```

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use braid_nn::{EvalOutcome, Member, MutualOutcome, OptimizerState, ServerStep, TrainOutcome};

use crate::accounting::{FlopsPerSample, Meter, Metered};
use crate::node::{EngineError, EngineResult};

/// What every trainer offers.
pub trait Trainer: Send {
    /// FLOPs of training and of evaluating one sample of its model, for compute accounting
    /// (zero if the trainer does not know its model).
    fn flops_per_sample(&self) -> FlopsPerSample {
        FlopsPerSample::default()
    }
    /// Asks the trainer to stop after the step in progress once `flag` is set (a halt).
    /// Default: ignored (the call finishes).
    fn set_stop_flag(&mut self, _flag: Arc<AtomicBool>) {}
    /// The trainer as a label-flipping attacker, if it can be one. Default: it cannot.
    fn label_flipper(&mut self) -> Option<&mut dyn FlipLabels> {
        None
    }
}

/// Training from given parameters with a fresh optimizer (FedAvg-family clients).
pub trait Train: Trainer {
    /// Trains from `params` on the training samples `shard`; batch order from `seed`; the
    /// configured learning rate is multiplied by `lr_scale`.
    fn train(
        &mut self, params: &[f32], shard: &[usize], seed: u64, lr_scale: f64,
    ) -> EngineResult<TrainOutcome>;
}

/// Training that keeps its optimizer state between calls (decentralized peers).
pub trait TrainSteps: Trainer {
    /// One optimizer step per batch (training-sample indices), continuing from `state`'s
    /// optimizer state and updating it. The learning rate is multiplied by `lr_scale`.
    fn train_batches(
        &mut self, params: &[f32], batches: &[Vec<usize>], state: &mut OptimizerState,
        lr_scale: f64,
    ) -> EngineResult<TrainOutcome>;
}

/// Evaluation on the test set.
pub trait Evaluate: Trainer {
    /// Evaluates `params` on the test set.
    fn evaluate(&mut self, params: &[f32]) -> EngineResult<EvalOutcome>;
    /// Evaluates `params` on a fixed, seeded sample of at most `max_samples` test samples
    /// (the same sample for every call of a run), for cheap per-participant metrics.
    fn evaluate_sample(&mut self, params: &[f32], max_samples: usize) -> EngineResult<EvalOutcome>;
}

/// The refusal of a trainer asked to flip labels that cannot ([`Trainer::label_flipper`] is
/// `None`).
pub fn no_label_flipping() -> EngineError {
    EngineError::Unsupported(
        "this trainer cannot train on flipped labels (attack kind \"label-flip\")".into(),
    )
}

/// Training on flipped labels: a simulated label-flipping attacker.
pub trait FlipLabels: Send {
    /// [`Train::train`] on the same samples with every label `l` replaced by
    /// `classes - 1 - l`.
    fn train_label_flipped(
        &mut self, params: &[f32], shard: &[usize], seed: u64, lr_scale: f64,
    ) -> EngineResult<TrainOutcome>;
}

/// The two halves of split learning.
pub trait SplitSteps: Trainer {
    /// Client side: the client part's activations at the cut for training samples
    /// `samples` (row by row), and their labels.
    fn split_forward(
        &mut self, params: &[f32], samples: &[usize],
    ) -> EngineResult<(Vec<f32>, Vec<u32>)>;
    /// Client side: the gradient of the client part's parameters given the loss's gradient
    /// `grad` with respect to the activations of `samples`.
    fn split_backward(
        &mut self, params: &[f32], samples: &[usize], grad: &[f32],
    ) -> EngineResult<Vec<f32>>;
    /// Server side: one optimizer step of the server part on a global batch of
    /// activations; returns the new parameters and the activations' gradient.
    fn split_server_step(
        &mut self, params: &[f32], acts: &[f32], labels: &[u32], state: &mut OptimizerState,
        lr_scale: f64,
    ) -> EngineResult<ServerStep>;
    /// One optimizer step of the client part with an aggregated gradient.
    fn split_client_update(
        &mut self, params: &[f32], grad: &[f32], state: &mut OptimizerState, lr_scale: f64,
    ) -> EngineResult<Vec<f32>>;
    /// Forward FLOPs per sample of the client part and of the server part (zero if
    /// unknown).
    fn split_flops(&self) -> (u64, u64) {
        (0, 0)
    }
}

/// Mutual learning over the run's list of models.
pub trait MutualSteps: Trainer {
    /// Trains `members` (models of the run's list of architectures) together on `batches`
    /// of training samples with distillation weight `alpha` (see [`braid_nn::mutual`]); the
    /// learning rate is multiplied by `lr_scale`.
    fn mutual_train(
        &mut self, members: &[Member<'_>], batches: &[Vec<usize>], alpha: f64, lr_scale: f64,
    ) -> EngineResult<MutualOutcome>;
    /// Evaluates `params`, a model of architecture `arch` of the run's list, on a fixed,
    /// seeded sample of at most `max_samples` test samples.
    fn evaluate_arch(
        &mut self, arch: usize, params: &[f32], max_samples: usize,
    ) -> EngineResult<EvalOutcome>;
    /// FLOPs per sample of architecture `arch` of the run's list (zero if unknown).
    fn arch_flops(&self, _arch: usize) -> FlopsPerSample {
        FlopsPerSample::default()
    }
}

/// A trainer with every capability (braid's own trainer on burn models): it can be lent as
/// any bundle.
pub trait FullTrainer: Train + TrainSteps + Evaluate + SplitSteps + MutualSteps + 'static {}
impl<T: Train + TrainSteps + Evaluate + SplitSteps + MutualSteps + 'static> FullTrainer for T {}

/// A bundle's trait object (`dyn FedTrainer`): what drivers need to build, meter and lend
/// it. Implemented by [`crate::trainer_bundle!`].
pub trait TrainerObject: Trainer + 'static {
    /// A full trainer lent as this bundle.
    fn from_full<X: FullTrainer>(trainer: X) -> Box<Self>;
    /// `inner`, with every call's compute counted on `meter`.
    fn metered(inner: Box<Self>, meter: Meter) -> Box<Self>;
}

/// Declares a bundle of trainer capabilities: a trait with the capabilities as supertraits,
/// implemented for every trainer that has them, and its trait object usable by drivers
/// ([`TrainerObject`]).
///
/// ```
/// braid_engine::trainer_bundle!(
///     /// What my algorithm's nodes use.
///     pub MyTrainer: Train + TrainSteps + Evaluate
/// );
/// // Any trainer with the three capabilities is one (braid's own has them all).
/// fn lend(t: braid_engine::prepared::BurnTrainer) -> Box<dyn MyTrainer> {
///     Box::new(t)
/// }
/// ```
#[macro_export]
macro_rules! trainer_bundle {
    ($(#[$doc:meta])* $vis:vis $name:ident: $first:ident $(+ $rest:ident)*) => {
        $(#[$doc])*
        $vis trait $name: $crate::trainer::$first $(+ $crate::trainer::$rest)* {}
        impl<T: $crate::trainer::$first $(+ $crate::trainer::$rest)* + ?Sized> $name for T {}
        impl $crate::trainer::TrainerObject for dyn $name {
            fn from_full<X: $crate::trainer::FullTrainer>(trainer: X) -> Box<Self> {
                Box::new(trainer)
            }
            fn metered(inner: Box<Self>, meter: $crate::accounting::Meter) -> Box<Self> {
                Box::new($crate::accounting::Metered::new(inner, meter))
            }
        }
    };
}

/// A bundle's trait object, metered: the trainer a driver lends, and the meter it reads.
pub fn metered<T: TrainerObject + ?Sized>(trainer: Box<T>) -> (Box<T>, Meter) {
    let meter = Meter::new(trainer.flops_per_sample());
    (T::metered(trainer, meter.clone()), meter)
}

// Metered trainers have every capability their inner trainer has.
impl<T: Trainer + ?Sized> Trainer for Metered<T> {
    fn flops_per_sample(&self) -> FlopsPerSample {
        self.inner().flops_per_sample()
    }
    fn set_stop_flag(&mut self, flag: Arc<AtomicBool>) {
        self.inner_mut().set_stop_flag(flag);
    }
    fn label_flipper(&mut self) -> Option<&mut dyn FlipLabels> {
        if self.inner_mut().label_flipper().is_some() {
            Some(self)
        } else {
            None
        }
    }
}

impl<T: Trainer + ?Sized> FlipLabels for Metered<T> {
    fn train_label_flipped(
        &mut self, params: &[f32], shard: &[usize], seed: u64, lr_scale: f64,
    ) -> EngineResult<TrainOutcome> {
        self.training(params, |t| match t.label_flipper() {
            Some(f) => f.train_label_flipped(params, shard, seed, lr_scale),
            None => Err(no_label_flipping()),
        })
    }
}

impl<T: Train + ?Sized> Train for Metered<T> {
    fn train(
        &mut self, params: &[f32], shard: &[usize], seed: u64, lr_scale: f64,
    ) -> EngineResult<TrainOutcome> {
        self.training(params, |t| t.train(params, shard, seed, lr_scale))
    }
}

impl<T: TrainSteps + ?Sized> TrainSteps for Metered<T> {
    fn train_batches(
        &mut self, params: &[f32], batches: &[Vec<usize>], state: &mut OptimizerState,
        lr_scale: f64,
    ) -> EngineResult<TrainOutcome> {
        self.training(params, |t| {
            t.train_batches(params, batches, state, lr_scale)
        })
    }
}

impl<T: Evaluate + ?Sized> Evaluate for Metered<T> {
    fn evaluate(&mut self, params: &[f32]) -> EngineResult<EvalOutcome> {
        self.evaluating(None, |t| t.evaluate(params))
    }
    fn evaluate_sample(&mut self, params: &[f32], max_samples: usize) -> EngineResult<EvalOutcome> {
        self.evaluating(None, |t| t.evaluate_sample(params, max_samples))
    }
}

impl<T: SplitSteps + ?Sized> SplitSteps for Metered<T> {
    fn split_forward(
        &mut self, params: &[f32], samples: &[usize],
    ) -> EngineResult<(Vec<f32>, Vec<u32>)> {
        // The forward half of training: samples are counted once, at the backward pass.
        let n = samples.len() as u64;
        let per = self.inner().split_flops().0;
        self.spending(
            |t| t.split_forward(params, samples),
            |_| (0, n.saturating_mul(per)),
        )
    }
    fn split_backward(
        &mut self, params: &[f32], samples: &[usize], grad: &[f32],
    ) -> EngineResult<Vec<f32>> {
        // The forward pass again (it is recomputed), then the backward pass (2x forward).
        let n = samples.len() as u64;
        let per = self.inner().split_flops().0;
        self.spending(
            |t| t.split_backward(params, samples, grad),
            |_| (n, n.saturating_mul(3).saturating_mul(per)),
        )
    }
    fn split_server_step(
        &mut self, params: &[f32], acts: &[f32], labels: &[u32], state: &mut OptimizerState,
        lr_scale: f64,
    ) -> EngineResult<ServerStep> {
        let n = labels.len() as u64;
        let per = self.inner().split_flops().1;
        let out = self.spending(
            |t| t.split_server_step(params, acts, labels, state, lr_scale),
            |_| (n, n.saturating_mul(3).saturating_mul(per)),
        )?;
        self.hashed(params, &out.params);
        Ok(out)
    }
    fn split_client_update(
        &mut self, params: &[f32], grad: &[f32], state: &mut OptimizerState, lr_scale: f64,
    ) -> EngineResult<Vec<f32>> {
        self.spending(
            |t| t.split_client_update(params, grad, state, lr_scale),
            |_| (0, 0),
        )
    }
    fn split_flops(&self) -> (u64, u64) {
        self.inner().split_flops()
    }
}

impl<T: MutualSteps + ?Sized> MutualSteps for Metered<T> {
    fn mutual_train(
        &mut self, members: &[Member<'_>], batches: &[Vec<usize>], alpha: f64, lr_scale: f64,
    ) -> EngineResult<MutualOutcome> {
        // Every member trains on every sample: samples and FLOPs count once per member.
        let per: Vec<u64> = members
            .iter()
            .map(|m| self.inner().arch_flops(m.arch).train)
            .collect();
        self.spending(
            |t| t.mutual_train(members, batches, alpha, lr_scale),
            |out| {
                let n = out.samples as u64;
                let flops = per
                    .iter()
                    .fold(0u64, |acc, p| acc.saturating_add(n.saturating_mul(*p)));
                (n * members.len() as u64, flops)
            },
        )
    }
    fn evaluate_arch(
        &mut self, arch: usize, params: &[f32], max_samples: usize,
    ) -> EngineResult<EvalOutcome> {
        let per = self.inner().arch_flops(arch).forward;
        self.evaluating(Some(per), |t| t.evaluate_arch(arch, params, max_samples))
    }
    fn arch_flops(&self, arch: usize) -> FlopsPerSample {
        self.inner().arch_flops(arch)
    }
}
