//! FedAvg, FedProx and the centralized baseline as [`Algorithm`]s: their settings, checks,
//! nodes and summary.

use std::sync::Arc;

use super::FedProtocol;
use super::{FedAvgClient, FedAvgServer, RoundMetrics, SecureSettings, ServerConfig, SERVER};
use crate::algorithm::{Algorithm, Feature, Summary};
use crate::algorithms::common;
use crate::config::{DpMode, ExperimentConfig};
use crate::error::Invalid;
use crate::node::{BoxNode, EngineResult};
use crate::prepared::{matrix_blocks, Prepared};
use crate::sim::Timing;
use crate::wire::NodeId;

/// Which member of the family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// FedAvg.
    FedAvg,
    /// FedProx (the proximal term is a training option).
    FedProx,
    /// One client holding all data.
    Centralized,
}

/// The settings of a FedAvg-family run.
#[derive(Debug, Clone, PartialEq)]
pub struct FedAvgSettings {
    /// Which member.
    pub variant: Variant,
    /// Rounds.
    pub rounds: u32,
}

/// FedAvg (McMahan et al. 2017) with server optimizers, partial participation, compression,
/// differential privacy, secure aggregation, robust rules and simulated attacks.
pub struct FedAvg;
/// FedProx (Li et al. 2020): FedAvg plus a proximal term `mu/2 ||w - w_global||^2` in local
/// training.
pub struct FedProx;
/// One client holding all training data: the reference every federated run is compared with.
pub struct Centralized;

/// The features the FedAvg family accepts: all of them.
const FEDAVG_FEATURES: &[Feature] = &Feature::ALL;

/// Checks the settings of FedAvg, FedProx and the centralized baseline.
fn settings(c: &ExperimentConfig, variant: Variant) -> Result<FedAvgSettings, Invalid> {
    let name = match variant {
        Variant::FedAvg => "fedavg",
        Variant::FedProx => "fedprox",
        Variant::Centralized => "centralized",
    };
    if variant == Variant::Centralized && c.compression.is_some() {
        return Err(Invalid::not_applicable(
            "compression",
            "[compression] does not apply to \"centralized\" (nothing is sent)",
        ));
    }
    common::check_compression(c, common::CompressionUse::Server)?;
    let rounds = common::rounds(c, name)?;
    if variant != Variant::Centralized {
        super::layers::robust::check(c)?;
    }
    super::layers::secure::check(c)?;
    common::check_mu(c, variant == Variant::FedProx)?;
    if variant == Variant::Centralized {
        if c.algorithm.clients_per_round.is_some() {
            return Err(Invalid::not_applicable("algorithm.clients_per_round", "algorithm.clients_per_round does not apply to \"centralized\" (one client holds all data)"));
        }
    } else {
        common::check_clients_per_round(c)?;
    }
    if let Some(m) = c.algorithm.min_replies {
        let per_round = if variant == Variant::Centralized {
            1
        } else {
            c.clients_per_round()
        };
        crate::config::check_in("algorithm.min_replies", m, 1, per_round)?;
    }
    Ok(FedAvgSettings { variant, rounds })
}

/// The nodes of a FedAvg-family run: the server `server` (built from the run's
/// [`ServerConfig`], clients and initial model), then one client per shard.
pub(crate) fn build_family(
    p: &Prepared,
    server: impl FnOnce(ServerConfig, Vec<NodeId>, Vec<f32>) -> EngineResult<BoxNode<FedProtocol>>,
) -> EngineResult<Vec<BoxNode<FedProtocol>>> {
    let c = &p.config;
    let clients: Vec<NodeId> = (1..=p.parts.len() as NodeId).collect();
    let secure = c.secure_aggregation.map(|sa| SecureSettings {
        threshold: sa.threshold_for(clients_per_round(p)),
        scale_bits: sa.scale_bits,
    });
    let delta = c.compression.is_some_and(|k| k.downlink_delta);
    let blocks = matrix_blocks(p.model.param_shapes());
    let initial = p.initial_params()?;
    let server_config = ServerConfig {
        rounds: c.algorithm.rounds.unwrap_or(0),
        clients_per_round: clients_per_round(p),
        eval_every: c.algorithm.eval_every,
        server_optimizer: c.algorithm.server_optimizer.clone(),
        seed: c.seed,
        round_deadline: c.algorithm.round_deadline(),
        min_replies: c.algorithm.min_replies.unwrap_or(1),
        aggregator: c.algorithm.aggregator,
    };
    let mut nodes = vec![server(server_config, clients.clone(), initial.clone())?];
    let bad = c.attack.map_or_else(Vec::new, |a| {
        super::layers::attack::attackers(clients.len(), a.fraction, c.seed)
    });
    for (k, (id, part)) in clients.iter().zip(&p.parts).enumerate() {
        let attack = c
            .attack
            .filter(|_| bad.binary_search(&k).is_ok())
            .map(|a| a.kind);
        nodes.push(Box::new(
            FedAvgClient::new(*id, Arc::new(part.clone()), c.seed)
                .with_lr_schedule(c.train.lr_schedule.clone(), c.algorithm.rounds.unwrap_or(0))
                .with_compression(&c.compression.unwrap_or_default(), p.model.num_params())
                .with_matrix_blocks(blocks.clone())
                .with_privacy(c.privacy)
                .with_attack(attack)
                .with_secure_aggregation(secure)
                .with_model_copy(delta.then(|| initial.clone())),
        ));
    }
    debug_assert_eq!(nodes[0].id(), SERVER);
    Ok(nodes)
}

/// Clients per round of a prepared run (all its shards by default).
fn clients_per_round(p: &Prepared) -> usize {
    p.config
        .algorithm
        .clients_per_round
        .unwrap_or(p.parts.len())
}

fn build_fedavg(p: &Prepared) -> EngineResult<Vec<BoxNode<FedProtocol>>> {
    let c = &p.config;
    let delta = c.compression.is_some_and(|k| k.downlink_delta);
    let downlink = c.compression.and_then(|k| k.downlink);
    build_family(p, |config, clients, initial| {
        Ok(Box::new(
            FedAvgServer::new(config, clients, initial)?
                .with_downlink(downlink.filter(|_| !delta))
                .with_downlink_delta(downlink.filter(|_| delta))
                .with_privacy(c.privacy, p.parts.len(), c.train.batch_size)
                .with_secure_aggregation(c.secure_aggregation.map(|sa| SecureSettings {
                    threshold: sa.threshold_for(clients_per_round(p)),
                    scale_bits: sa.scale_bits,
                })),
        ))
    })
}

/// The simulated-time model of a run with `[latency]`: the server (node 0) at the server's
/// speed, clients with stragglers drawn from the seed.
pub(crate) fn timing(p: &Prepared) -> Option<Timing> {
    let c = &p.config;
    c.latency.map(|l| {
        Timing::new(
            &l,
            p.parts.len() + 1,
            &[SERVER],
            &mut braid_core::seed::rng(c.seed, &[braid_core::seed::stream::LATENCY]),
        )
    })
}

/// Who takes part, for the run's first line.
pub(crate) fn describe(p: &Prepared) -> String {
    format!(
        "{} clients ({} per round)",
        p.parts.len(),
        clients_per_round(p)
    )
}

/// The summary of a FedAvg-family run (and FedBuff's).
pub fn summary(p: &Prepared, rows: &[(RoundMetrics, f64)]) -> Summary {
    let rows = super::report::rows(rows);
    let accuracy = rows.iter().rev().find_map(|r| r.metrics.accuracy);
    let total_bytes = rows.last().map_or(0, |r| r.cum_bytes);
    let privacy = match (
        &p.config.privacy,
        rows.last().and_then(|r| r.metrics.epsilon),
    ) {
        (Some(dp), Some(e)) => {
            let mode = match dp.mode {
                DpMode::Central => "central",
                DpMode::Local => "local",
                DpMode::DpSgd => "dp-sgd, per sample, worst client",
            };
            format!(" | ({e:.3}, {:e})-DP, {mode}", dp.delta).to_lowercase()
        }
        _ => String::new(),
    };
    let simulated = rows
        .last()
        .and_then(|r| r.metrics.sim_time_s)
        .map_or(String::new(), |t| format!(" | {t:.1} s simulated"));
    // Regression reports R^2 in the accuracy column, and its MSE beside it.
    let measure = match p.data.test.task() {
        braid_data::Task::Regress => {
            let mse = rows.iter().rev().find_map(|r| r.metrics.loss);
            format!(
                "final test R^2 {} (MSE {})",
                accuracy.map_or("-".into(), |a| format!("{a:.4}")),
                mse.map_or("-".into(), |m| format!("{m:.4}"))
            )
        }
        _ => format!(
            "final test accuracy {}",
            accuracy.map_or("-".into(), |a| format!("{a:.4}"))
        ),
    };
    Summary {
        accuracy,
        line: format!(
            "{measure} after {} rounds{privacy} | {:.1} MB communicated{simulated}",
            rows.len(),
            total_bytes as f64 / 1e6,
        ),
    }
}

macro_rules! fedavg_family {
    ($ty:ty, $name:literal, $variant:expr, $features:expr) => {
        impl Algorithm for $ty {
            const NAME: &'static str = $name;
            type Config = FedAvgSettings;
            type Protocol = FedProtocol;
            const FEATURES: &'static [Feature] = $features;

            fn config(c: &ExperimentConfig) -> Result<FedAvgSettings, Invalid> {
                settings(c, $variant)
            }

            fn shards(c: &ExperimentConfig) -> usize {
                if $variant == Variant::Centralized {
                    1
                } else {
                    c.partition.clients
                }
            }

            fn build(
                p: &Prepared, _settings: &FedAvgSettings,
            ) -> EngineResult<Vec<BoxNode<FedProtocol>>> {
                build_fedavg(p)
            }

            fn timing(p: &Prepared, _settings: &FedAvgSettings) -> Option<Timing> {
                timing(p)
            }

            fn describe(p: &Prepared, _settings: &FedAvgSettings) -> String {
                describe(p)
            }

            fn progress(_c: &ExperimentConfig, settings: &FedAvgSettings) -> (&'static str, u64) {
                ("round", u64::from(settings.rounds))
            }

            fn summary(
                p: &Prepared, _settings: &FedAvgSettings, rows: &[(RoundMetrics, f64)],
            ) -> Summary {
                summary(p, rows)
            }

            fn baseline(c: &ExperimentConfig) -> Option<crate::algorithm::Baseline> {
                ($variant != Variant::Centralized).then(|| crate::algorithm::Baseline {
                    config: crate::config::centralized(c),
                    subject: format!("{} final accuracy", $name),
                    what: "centralized baseline",
                })
            }
        }
    };
}

fedavg_family!(FedAvg, "fedavg", Variant::FedAvg, FEDAVG_FEATURES);
fedavg_family!(FedProx, "fedprox", Variant::FedProx, FEDAVG_FEATURES);
fedavg_family!(Centralized, "centralized", Variant::Centralized, &[]);
