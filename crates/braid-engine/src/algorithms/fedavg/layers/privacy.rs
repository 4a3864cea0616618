//! `[privacy]`, DP-FedAvg (McMahan et al. 2018): updates are clipped to an L2 bound and
//! Gaussian noise is added, by the server to the sum of the round's clipped updates
//! (`mode = "central"`) or by every client to its own (`"local"`, a client [`LocalDp`]
//! layer); the server then averages with equal weights over the clients it asked (a fixed
//! denominator, so one client's influence is bounded) and keeps a Renyi-DP accountant,
//! reporting epsilon after every round and stopping before a round would pass a target.
//! With `"dp-sgd"` the clients' trainers add the noise per step and the server only accounts.
//!
//! Composes with compression, attacks and (mode = "local") secure aggregation; refuses a
//! robust `algorithm.aggregator` in modes "central" and "local" ([`super::robust::check`]).

use std::collections::BTreeMap;

use braid_core::privacy::{self, RdpAccountant};
use braid_core::seed;

use super::{Reply, RoundNote, ServerLayer, UpdateLayer};
use crate::algorithms::fedavg::SERVER;
use crate::config::{DpMode, OnTarget, PrivacyConfig};
use crate::error::Invalid;
use crate::node::{EngineError, EngineResult};
use crate::wire::NodeId;

fn failed(e: privacy::PrivacyError) -> EngineError {
    EngineError::Failed(format!("privacy: {e}"))
}

/// A saved accountant that cannot be restored.
fn unusable(e: privacy::PrivacyError) -> EngineError {
    EngineError::Checkpoint(format!("checkpoint: {e}"))
}

/// The server's side of DP-FedAvg.
pub struct DpServer {
    config: PrivacyConfig,
    /// Clients asked per round: the fixed denominator.
    per_round: usize,
    /// The experiment seed (the central noise).
    seed: u64,
    /// Sampling rate of a client in a round: clients per round / clients.
    q: f64,
    /// Central DP: the RDP of the rounds so far.
    accountant: RdpAccountant,
    /// Local DP: rounds each client has sent a (noised) update in.
    participations: BTreeMap<NodeId, u64>,
    /// DP-SGD: the local batch size (a client's sampling rate is it over its sample count).
    batch_size: usize,
    /// DP-SGD: each client's own accountant, and its last round's sampling rate and steps.
    clients: BTreeMap<NodeId, ClientBudget>,
    warned: bool,
}

/// A DP-SGD client's spending as the server accounts it from its replies.
#[derive(Debug, Clone)]
struct ClientBudget {
    accountant: RdpAccountant,
    q: f64,
    steps: u64,
}

impl DpServer {
    /// DP-FedAvg with `config` for a server asking `per_round` of `total_clients` clients per
    /// round (experiment seed `seed`); under DP-SGD, accounting each client's steps at
    /// sampling rate `batch_size` over its sample count.
    pub fn new(
        config: PrivacyConfig, per_round: usize, total_clients: usize, batch_size: usize, seed: u64,
    ) -> Self {
        Self {
            config,
            per_round,
            seed,
            q: per_round as f64 / total_clients.max(1) as f64,
            accountant: RdpAccountant::default(),
            participations: BTreeMap::new(),
            batch_size,
            clients: BTreeMap::new(),
            warned: false,
        }
    }

    /// Epsilon after the rounds so far plus `extra` more (each client in every extra round,
    /// for local DP).
    fn epsilon_after(&self, extra: u64) -> EngineResult<f64> {
        let c = &self.config;
        match c.mode {
            DpMode::Central => {
                let mut a = self.accountant.clone();
                if extra > 0 {
                    a.step(self.q, c.noise_multiplier, extra).map_err(failed)?;
                }
                Ok(a.epsilon(c.delta).map_err(failed)?.0)
            }
            DpMode::Local => {
                // Each client's own noised updates, seen one by one by the server: the Gaussian
                // mechanism without amplification by sampling, for the client sent most often.
                let most = self.participations.values().copied().max().unwrap_or(0) + extra;
                if most == 0 {
                    return Ok(0.0);
                }
                let mut a = RdpAccountant::default();
                a.step(1.0, c.noise_multiplier, most).map_err(failed)?;
                Ok(a.epsilon(c.delta).map_err(failed)?.0)
            }
            DpMode::DpSgd => {
                // Sample-level DP of each client's data: the worst client heard from so far,
                // each extra round repeating its last one.
                let mut worst = 0f64;
                for b in self.clients.values() {
                    let mut a = b.accountant.clone();
                    if extra > 0 {
                        a.step(b.q, c.noise_multiplier, extra * b.steps)
                            .map_err(failed)?;
                    }
                    worst = worst.max(a.epsilon(c.delta).map_err(failed)?.0);
                }
                Ok(worst)
            }
        }
    }
}

impl ServerLayer for DpServer {
    /// Central DP: each client joins the round on its own with probability `q` (Poisson
    /// sampling, as DP-FedAvg's accountant assumes: its amplification bound does not hold for
    /// a sample of fixed size). Local DP and DP-SGD do not count on the clients' sampling.
    fn choose_clients(&self, clients: &[NodeId], rng: &mut seed::Rng) -> Option<Vec<NodeId>> {
        use rand::Rng as _;
        if self.config.mode != DpMode::Central {
            return None;
        }
        Some(
            clients
                .iter()
                .copied()
                .filter(|_| rng.random::<f64>() < self.q)
                .collect(),
        )
    }

    fn before_start(&self, completed: u32) -> EngineResult {
        if let Some(target) = self.config.target_epsilon {
            let first = self.epsilon_after(1)?;
            // (DP-SGD: unknown until clients report their sample counts.)
            if completed == 0 && first > target {
                return Err(Invalid::range("privacy.target_epsilon", format!(
                    "privacy.target_epsilon = {target} is spent by a single round (epsilon {first:.3}); raise privacy.noise_multiplier"
                )).into());
            }
        }
        Ok(())
    }

    /// DP-SGD: client `from`, holding `samples` samples, took `steps` noised steps.
    fn accepted(&mut self, from: NodeId, samples: u64, steps: u32) -> EngineResult {
        if self.config.mode != DpMode::DpSgd || steps == 0 {
            return Ok(());
        }
        let q = braid_core::privacy::poisson_rate(self.batch_size, samples);
        let b = self.clients.entry(from).or_insert_with(|| ClientBudget {
            accountant: RdpAccountant::default(),
            q,
            steps: 0,
        });
        b.q = q;
        b.steps = u64::from(steps);
        b.accountant
            .step(q, self.config.noise_multiplier, u64::from(steps))
            .map_err(failed)
    }

    /// DP-FedAvg's average: the clipped (central: and noised) updates summed, divided by the
    /// clients asked per round, added to the global model. DP-SGD leaves combining to the
    /// next layer.
    fn combine(
        &mut self, round: u32, global: &[f32], replies: &[(NodeId, &Reply)],
    ) -> Option<EngineResult<Vec<f32>>> {
        if self.config.mode == DpMode::DpSgd {
            return None;
        }
        Some(self.private_mean(round, global, replies))
    }

    fn sum_denominator(&mut self, contributors: &[NodeId]) -> Option<f64> {
        if self.config.mode != DpMode::Local {
            return None;
        }
        for id in contributors {
            *self.participations.entry(*id).or_default() += 1;
        }
        Some(self.per_round.max(1) as f64)
    }

    fn after_round(&mut self, round: u32, rounds: u32) -> EngineResult<RoundNote> {
        let epsilon = Some(self.epsilon_after(0)?);
        // Would one more round pass the privacy target?
        let mut stop = false;
        if let Some(target) = self.config.target_epsilon {
            let next = self.epsilon_after(1)?;
            if next > target && round < rounds {
                match self.config.on_target {
                    OnTarget::Stop => {
                        tracing::warn!(
                            "privacy: round {} would take epsilon to {next:.3}, past the target {target}; stopping after round {round}",
                            round + 1,
                        );
                        stop = true;
                    }
                    OnTarget::Warn if !self.warned => {
                        tracing::warn!(
                            "privacy: round {} takes epsilon to {next:.3}, past the target {target}; going on (on_target = \"warn\")",
                            round + 1
                        );
                        self.warned = true;
                    }
                    OnTarget::Warn => {}
                }
            }
        }
        Ok(RoundNote { epsilon, stop })
    }

    fn save(&self) -> Option<(&'static str, serde_json::Value)> {
        Some((
            "privacy",
            serde_json::json!({
                "rdp": self.accountant.rdp(),
                "participations": self.participations.iter().map(|(k, v)| (k.to_string(), *v)).collect::<BTreeMap<String, u64>>(),
                "clients": self.clients.iter().map(|(k, b)| (k.to_string(), serde_json::json!({
                    "rdp": b.accountant.rdp(), "q": b.q, "steps": b.steps,
                }))).collect::<BTreeMap<String, serde_json::Value>>(),
            }),
        ))
    }

    fn load(&mut self, meta: &serde_json::Value) -> EngineResult {
        let bad = || EngineError::Checkpoint("checkpoint: malformed privacy accountant".into());
        let p = meta.get("privacy").ok_or_else(bad)?;
        let rdp: Vec<f64> = p
            .get("rdp")
            .and_then(|v| serde_json::from_value(v.clone()).ok())
            .ok_or_else(bad)?;
        self.accountant.restore(rdp).map_err(unusable)?;
        self.participations = super::node_map(p.get("participations")).ok_or_else(bad)?;
        #[derive(serde::Deserialize)]
        struct Saved {
            rdp: Vec<f64>,
            q: f64,
            steps: u64,
        }
        let clients: BTreeMap<NodeId, Saved> = match p.get("clients") {
            Some(v) => super::node_map(Some(v)).ok_or_else(bad)?,
            None => BTreeMap::new(), // written before DP-SGD existed
        };
        self.clients = clients
            .into_iter()
            .map(|(id, v)| {
                if !(v.q > 0.0 && v.q <= 1.0) {
                    return Err(bad());
                }
                let mut accountant = RdpAccountant::default();
                accountant.restore(v.rdp).map_err(unusable)?;
                Ok((
                    id,
                    ClientBudget {
                        accountant,
                        q: v.q,
                        steps: v.steps,
                    },
                ))
            })
            .collect::<EngineResult<_>>()?;
        Ok(())
    }
}

impl DpServer {
    fn private_mean(
        &mut self, round: u32, global: &[f32], replies: &[(NodeId, &Reply)],
    ) -> EngineResult<Vec<f32>> {
        let mut sum = vec![0f32; global.len()];
        for (id, r) in replies {
            let mut delta = braid_core::params::sub(&r.params, global)?;
            if self.config.mode == DpMode::Central {
                privacy::clip_to_norm(&mut delta, self.config.clip);
            } else {
                *self.participations.entry(*id).or_default() += 1;
            }
            braid_core::params::axpy(&mut sum, 1.0, &delta)?;
        }
        if self.config.mode == DpMode::Central {
            let mut rng = seed::rng(
                self.seed,
                &[seed::stream::PRIVACY, u64::from(SERVER), u64::from(round)],
            );
            let std = self.config.noise_multiplier * self.config.clip;
            privacy::add_gaussian_noise(&mut sum, std, &mut rng);
            self.accountant
                .step(self.q, self.config.noise_multiplier, 1)
                .map_err(failed)?;
        }
        let m = self.per_round.max(1) as f32;
        Ok(global.iter().zip(&sum).map(|(p, s)| p + s / m).collect())
    }
}

/// Local DP on a client: clips its update to `clip` and adds Gaussian noise of standard
/// deviation `noise_multiplier * clip` before it is sent.
#[derive(Debug, Clone, Copy)]
pub struct LocalDp {
    clip: f64,
    std: f64,
}

impl LocalDp {
    /// The client layer of `[privacy]`, for `mode = "local"` (none otherwise).
    pub fn of(config: Option<PrivacyConfig>) -> Option<Self> {
        config.filter(|c| c.mode == DpMode::Local).map(|c| Self {
            clip: c.clip,
            std: c.noise_multiplier * c.clip,
        })
    }
}

impl UpdateLayer for LocalDp {
    fn rewrite(&self, update: &mut [f32], seed: u64, client: NodeId, round: u32) {
        let mut rng = seed::rng(
            seed,
            &[seed::stream::PRIVACY, u64::from(client), u64::from(round)],
        );
        privacy::clip_to_norm(update, self.clip);
        privacy::add_gaussian_noise(update, self.std, &mut rng);
    }
}
