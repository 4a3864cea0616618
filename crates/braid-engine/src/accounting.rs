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

use crate::node::{EngineError, LocalTrainer};
use braid_nn::{EvalOutcome, OptimizerState, TrainOutcome};

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

/// A trainer that counts the compute going through it.
pub struct Metered<'a> {
    inner: &'a mut dyn LocalTrainer,
    per_sample: FlopsPerSample,
    /// Forward FLOPs per sample of a split model's client and server parts.
    split_per_sample: (u64, u64),
    /// What has gone through so far.
    pub compute: Compute,
    hash_models: bool,
    /// With [`Metered::hashing_models`]: [`model_hash`] of the parameters the first training
    /// call started from and of those the last one returned.
    pub models: Option<(String, String)>,
}

impl<'a> Metered<'a> {
    /// Meters `inner`.
    pub fn new(inner: &'a mut dyn LocalTrainer) -> Self {
        let per_sample = inner.flops_per_sample();
        let split_per_sample = inner.split_flops();
        Self {
            inner,
            per_sample,
            split_per_sample,
            compute: Compute::default(),
            hash_models: false,
            models: None,
        }
    }

    /// Also records the model hash before and after training (for run logs).
    pub fn hashing_models(mut self) -> Self {
        self.hash_models = true;
        self
    }

    fn hash(&mut self, before: &[f32], after: &[f32]) {
        if self.hash_models {
            let after = model_hash(after);
            match &mut self.models {
                Some((_, a)) => *a = after,
                None => self.models = Some((model_hash(before), after)),
            }
        }
    }

    fn trained(&mut self, out: &TrainOutcome, t0: Instant) {
        let n = out.samples as u64;
        self.spent(n, n.saturating_mul(self.per_sample.train), t0);
    }

    fn spent(&mut self, train_samples: u64, flops: u64, t0: Instant) {
        self.compute.train_samples += train_samples;
        self.compute.flops = self.compute.flops.saturating_add(flops);
        self.compute.seconds += t0.elapsed().as_secs_f64();
    }

    fn evaluated(&mut self, out: &EvalOutcome, t0: Instant) {
        let n = out.samples as u64;
        self.compute.eval_samples += n;
        self.compute.flops = self
            .compute
            .flops
            .saturating_add(n.saturating_mul(self.per_sample.forward));
        self.compute.seconds += t0.elapsed().as_secs_f64();
    }
}

impl LocalTrainer for Metered<'_> {
    fn train(
        &mut self,
        params: &[f32],
        shard: &[usize],
        seed: u64,
        lr_scale: f64,
    ) -> Result<TrainOutcome, EngineError> {
        let t0 = Instant::now();
        let out = self.inner.train(params, shard, seed, lr_scale)?;
        self.trained(&out, t0);
        self.hash(params, &out.params);
        Ok(out)
    }

    fn train_label_flipped(
        &mut self,
        params: &[f32],
        shard: &[usize],
        seed: u64,
        lr_scale: f64,
    ) -> Result<TrainOutcome, EngineError> {
        let t0 = Instant::now();
        let out = self
            .inner
            .train_label_flipped(params, shard, seed, lr_scale)?;
        self.trained(&out, t0);
        self.hash(params, &out.params);
        Ok(out)
    }

    fn train_batches(
        &mut self,
        params: &[f32],
        batches: &[Vec<usize>],
        state: &mut OptimizerState,
        lr_scale: f64,
    ) -> Result<TrainOutcome, EngineError> {
        let t0 = Instant::now();
        let out = self.inner.train_batches(params, batches, state, lr_scale)?;
        self.trained(&out, t0);
        self.hash(params, &out.params);
        Ok(out)
    }

    fn evaluate(&mut self, params: &[f32]) -> Result<EvalOutcome, EngineError> {
        let t0 = Instant::now();
        let out = self.inner.evaluate(params)?;
        self.evaluated(&out, t0);
        Ok(out)
    }

    fn evaluate_sample(
        &mut self,
        params: &[f32],
        max_samples: usize,
    ) -> Result<EvalOutcome, EngineError> {
        let t0 = Instant::now();
        let out = self.inner.evaluate_sample(params, max_samples)?;
        self.evaluated(&out, t0);
        Ok(out)
    }

    fn flops_per_sample(&self) -> FlopsPerSample {
        self.per_sample
    }

    fn split_forward(
        &mut self,
        params: &[f32],
        samples: &[usize],
    ) -> Result<(Vec<f32>, Vec<u8>), EngineError> {
        let t0 = Instant::now();
        let out = self.inner.split_forward(params, samples)?;
        // The forward half of training: samples are counted once, at the backward pass.
        self.spent(0, samples.len() as u64 * self.split_per_sample.0, t0);
        Ok(out)
    }

    fn split_backward(
        &mut self,
        params: &[f32],
        samples: &[usize],
        grad: &[f32],
    ) -> Result<Vec<f32>, EngineError> {
        let t0 = Instant::now();
        let out = self.inner.split_backward(params, samples, grad)?;
        // The forward pass again (it is recomputed), then the backward pass (2x forward).
        let n = samples.len() as u64;
        self.spent(n, 3 * n * self.split_per_sample.0, t0);
        Ok(out)
    }

    fn split_server_step(
        &mut self,
        params: &[f32],
        acts: &[f32],
        labels: &[u8],
        state: &mut OptimizerState,
        lr_scale: f64,
    ) -> Result<braid_nn::ServerStep, EngineError> {
        let t0 = Instant::now();
        let out = self
            .inner
            .split_server_step(params, acts, labels, state, lr_scale)?;
        let n = labels.len() as u64;
        self.spent(n, 3 * n * self.split_per_sample.1, t0);
        self.hash(params, &out.params);
        Ok(out)
    }

    fn split_client_update(
        &mut self,
        params: &[f32],
        grad: &[f32],
        state: &mut OptimizerState,
        lr_scale: f64,
    ) -> Result<Vec<f32>, EngineError> {
        let t0 = Instant::now();
        let out = self
            .inner
            .split_client_update(params, grad, state, lr_scale)?;
        self.spent(0, 0, t0);
        Ok(out)
    }

    fn split_flops(&self) -> (u64, u64) {
        self.split_per_sample
    }

    fn mutual_train(
        &mut self,
        members: &[braid_nn::Member<'_>],
        batches: &[Vec<usize>],
        alpha: f64,
        lr_scale: f64,
    ) -> Result<braid_nn::MutualOutcome, EngineError> {
        let t0 = Instant::now();
        let out = self.inner.mutual_train(members, batches, alpha, lr_scale)?;
        // Every member trains on every sample: samples and FLOPs count once per member.
        let n = out.samples as u64;
        let flops = members.iter().fold(0u64, |acc, m| {
            acc.saturating_add(n.saturating_mul(self.inner.arch_flops(m.arch).train))
        });
        self.spent(n * members.len() as u64, flops, t0);
        Ok(out)
    }

    fn evaluate_arch(
        &mut self,
        arch: usize,
        params: &[f32],
        max_samples: usize,
    ) -> Result<EvalOutcome, EngineError> {
        let t0 = Instant::now();
        let out = self.inner.evaluate_arch(arch, params, max_samples)?;
        let n = out.samples as u64;
        self.compute.eval_samples += n;
        self.compute.flops = self
            .compute
            .flops
            .saturating_add(n.saturating_mul(self.inner.arch_flops(arch).forward));
        self.compute.seconds += t0.elapsed().as_secs_f64();
        Ok(out)
    }

    fn arch_flops(&self, arch: usize) -> FlopsPerSample {
        self.inner.arch_flops(arch)
    }

    fn set_stop_flag(&mut self, flag: std::sync::Arc<std::sync::atomic::AtomicBool>) {
        self.inner.set_stop_flag(flag);
    }
}
