//! Compute accounting: what each participant spent on training and evaluation.
//!
//! Drivers hand nodes a [`Metered`] trainer, which passes every call through to the real one
//! and adds up samples, floating-point operations (from the model's per-sample counts, see
//! `braid_nn::Arch::train_flops`) and wall-clock seconds. The simulator attributes each
//! node's calls to that node, whichever worker thread ran them; the network runtime has one
//! node per process. Totals go to `accounting.csv` (simulation) and `node.csv` (deployment).

use std::time::Instant;

use serde::{Deserialize, Serialize};

use sha2::{Digest, Sha256};

use std::sync::{Arc, Mutex};

use crate::node::EngineResult;
use braid_nn::{EvalOutcome, TrainOutcome};

/// Compute spent by one participant (or one round, or a whole run).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Compute {
    /// Training samples processed (counting repeats over epochs).
    pub train_samples: u64,
    /// Samples evaluated (forward passes only).
    pub eval_samples: u64,
    /// Floating-point operations: training samples x train FLOPs per sample + evaluated
    /// samples x forward FLOPs per sample.
    pub flops: u64,
    /// Wall-clock seconds spent inside the trainer.
    pub seconds: f64,
}

impl Compute {
    /// Adds `other` to this total.
    pub fn add(&mut self, other: &Compute) {
        self.train_samples += other.train_samples;
        self.eval_samples += other.eval_samples;
        self.flops = self.flops.saturating_add(other.flops);
        self.seconds += other.seconds;
    }

    /// True if nothing was computed.
    pub fn is_zero(&self) -> bool {
        self.train_samples == 0 && self.eval_samples == 0 && self.flops == 0 && self.seconds == 0.0
    }
}

/// FLOPs of one sample, as a trainer reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlopsPerSample {
    /// Training one sample (forward and backward).
    pub train: u64,
    /// Evaluating one sample (forward only).
    pub forward: u64,
}

/// SHA-256 of a parameter vector's little-endian f32 bytes (hex): a model's identity in logs
/// and reports.
pub fn model_hash(params: &[f32]) -> String {
    let mut h = Sha256::new();
    for v in params {
        h.update(v.to_le_bytes());
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 of `bytes`, as lowercase hex: the name of a message, a kept state or a file in logs
/// and audits.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// What a [`Meter`] has counted since it was last read.
#[derive(Debug, Default)]
struct Metering {
    per_sample: FlopsPerSample,
    compute: Compute,
    hash_models: bool,
    models: Option<(String, String)>,
}

/// The counter a [`Metered`] trainer adds to; the driver that lent the trainer reads it after
/// each input it hands a node, so compute is attributed to that node and round.
#[derive(Debug, Clone, Default)]
pub struct Meter(Arc<Mutex<Metering>>);

impl Meter {
    /// A meter for a trainer whose model costs `per_sample`.
    pub fn new(per_sample: FlopsPerSample) -> Self {
        Self(Arc::new(Mutex::new(Metering {
            per_sample,
            ..Metering::default()
        })))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Metering> {
        // A panic while counting leaves plain numbers behind: still usable.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Also records the model hash before and after training (for run logs).
    pub fn hash_models(&self, on: bool) {
        self.lock().hash_models = on;
    }

    /// What was spent since the last call, and (with [`Meter::hash_models`]) the
    /// [`model_hash`] of the parameters the first training call started from and of those the
    /// last one returned; the counters start again from zero.
    pub fn take(&self) -> (Compute, Option<(String, String)>) {
        let mut m = self.lock();
        (std::mem::take(&mut m.compute), m.models.take())
    }
}

/// A trainer that counts the compute going through it on a [`Meter`]: every capability of
/// the inner trainer passes through (see [`crate::trainer`]).
pub struct Metered<T: ?Sized> {
    meter: Meter,
    inner: Box<T>,
}

impl<T: ?Sized> Metered<T> {
    /// Meters `inner` on `meter`.
    pub fn new(inner: Box<T>, meter: Meter) -> Self {
        Self { meter, inner }
    }

    pub(crate) fn inner(&self) -> &T {
        &self.inner
    }

    pub(crate) fn inner_mut(&mut self) -> &mut T {
        &mut self.inner
    }

    /// Runs a training call: samples and FLOPs from its outcome, model hashes around it.
    pub(crate) fn training(
        &mut self, params: &[f32], call: impl FnOnce(&mut T) -> EngineResult<TrainOutcome>,
    ) -> EngineResult<TrainOutcome> {
        let out = self.metered(call, |out, m| {
            let n = out.samples as u64;
            (n, n.saturating_mul(m.per_sample.train))
        })?;
        self.hashed(params, &out.params);
        Ok(out)
    }

    /// Runs an evaluation call; `forward` FLOPs per sample (default: the model's).
    pub(crate) fn evaluating(
        &mut self, forward: Option<u64>, call: impl FnOnce(&mut T) -> EngineResult<EvalOutcome>,
    ) -> EngineResult<EvalOutcome> {
        self.metered(call, |out, m| {
            let n = out.samples as u64;
            m.compute.eval_samples += n;
            (0, n.saturating_mul(forward.unwrap_or(m.per_sample.forward)))
        })
    }

    /// Runs any other call, which spent `train_samples` and `flops` (given its result).
    pub(crate) fn spending<O>(
        &mut self, call: impl FnOnce(&mut T) -> EngineResult<O>,
        cost: impl FnOnce(&O) -> (u64, u64),
    ) -> EngineResult<O> {
        self.metered(call, |out, _| cost(out))
    }

    /// Times `call` and adds what `cost` says it spent (training samples, FLOPs).
    fn metered<O>(
        &mut self, call: impl FnOnce(&mut T) -> EngineResult<O>,
        cost: impl FnOnce(&O, &mut Metering) -> (u64, u64),
    ) -> EngineResult<O> {
        let t0 = Instant::now();
        let out = call(&mut self.inner)?;
        let mut m = self.meter.lock();
        let (samples, flops) = cost(&out, &mut m);
        m.spent(samples, flops, t0);
        Ok(out)
    }

    /// Records the model hashes around a step whose result is `after`.
    pub(crate) fn hashed(&self, before: &[f32], after: &[f32]) {
        self.meter.lock().hash(before, after);
    }
}

impl Metering {
    fn hash(&mut self, before: &[f32], after: &[f32]) {
        if self.hash_models {
            let after = model_hash(after);
            match &mut self.models {
                Some((_, a)) => *a = after,
                None => self.models = Some((model_hash(before), after)),
            }
        }
    }

    fn spent(&mut self, train_samples: u64, flops: u64, t0: Instant) {
        self.compute.train_samples += train_samples;
        self.compute.flops = self.compute.flops.saturating_add(flops);
        self.compute.seconds += t0.elapsed().as_secs_f64();
    }
}
