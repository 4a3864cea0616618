//! Decentralized SGD as an `Algorithm`: its table `[decentralized]`, checks, nodes and summary.

use super::*;

/// `[decentralized]`: who talks to whom, when, and how much (algorithm `dsgd`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecentralizedConfig {
    /// The peer graph, e.g. `{ kind = "random" }` or `{ kind = "ring" }` (default: random).
    #[serde(default = "default_topology")]
    pub topology: TopologyConfig,
    /// `metropolis-hastings` or `uniform` (default: Metropolis-Hastings on undirected
    /// topologies, uniform on directed ones).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mixing: Option<MixingRule>,
    /// Local steps between communication rounds.
    #[serde(default = "default_every")]
    pub every: u64,
    /// The budget r(p), e.g. `{ kind = "fixed", r = 1 }` (default: fixed r = 1).
    #[serde(default = "default_budget")]
    pub budget: Budget,
    /// Test samples each local model is evaluated on at an evaluation point (the merged model
    /// always uses the whole test set).
    #[serde(default = "default_eval_samples")]
    pub eval_samples: usize,
    /// Seconds a peer waits for its in-neighbours in a round before mixing with those that
    /// sent (default: wait for all). For deployments where peers can fail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gossip_timeout_s: Option<f64>,
}

fn default_topology() -> TopologyConfig {
    TopologyConfig::Random
}
fn default_every() -> u64 {
    1
}
fn default_budget() -> Budget {
    Budget::Fixed { r: 1.0 }
}
fn default_eval_samples() -> usize {
    2000
}

impl Default for DecentralizedConfig {
    fn default() -> Self {
        Self {
            topology: default_topology(),
            mixing: None,
            every: default_every(),
            budget: default_budget(),
            eval_samples: default_eval_samples(),
            gossip_timeout_s: None,
        }
    }
}

impl DecentralizedConfig {
    /// The communication schedule.
    pub fn schedule(&self) -> CommSchedule {
        CommSchedule {
            every: self.every,
            budget: self.budget.clone(),
        }
    }
}

/// Decentralized SGD as an [`Algorithm`]: peers `0..n` and the monitor `n`.
pub struct Dsgd;

impl Algorithm for Dsgd {
    const NAME: &'static str = "dsgd";
    type Config = DecentralizedConfig;
    type Protocol = DsgdProtocol;
    const TABLES: &'static [&'static str] = &["decentralized"];
    const FEATURES: &'static [Feature] = &[Feature::Compression];

    fn config(c: &ExperimentConfig) -> Result<DecentralizedConfig, Invalid> {
        common::check_compression(c, common::CompressionUse::Gossip)?;
        match (c.algorithm.rounds, c.algorithm.steps) {
            (Some(_), _) => {
                return Err(Invalid::not_applicable("algorithm.rounds", "algorithm.rounds does not apply to \"dsgd\"; set algorithm.steps (local steps per peer)"))
            }
            (_, None) => {
                return Err(Invalid::missing("algorithm.steps", "algorithm.name = \"dsgd\" needs algorithm.steps (local steps per peer)"))
            }
            _ => {}
        }
        if c.partition.clients < 2 {
            return Err(Invalid::range(
                "partition.clients",
                "\"dsgd\" needs partition.clients >= 2 peers",
            ));
        }
        if c.algorithm.clients_per_round.is_some() {
            return Err(Invalid::not_applicable(
                "algorithm.clients_per_round",
                "algorithm.clients_per_round does not apply to \"dsgd\" (every peer trains)",
            ));
        }
        if c.algorithm.server_optimizer != Default::default() {
            return Err(Invalid::not_applicable(
                "algorithm.server_optimizer",
                "algorithm.server_optimizer does not apply to \"dsgd\" (there is no server)",
            ));
        }
        for (field, set) in [
            (
                "algorithm.round_timeout_s",
                c.algorithm.round_timeout_s.is_some(),
            ),
            ("algorithm.min_replies", c.algorithm.min_replies.is_some()),
        ] {
            if set {
                return Err(Invalid::not_applicable(field, format!("{field} does not apply to \"dsgd\" (peers wait for their neighbours: see decentralized.gossip_timeout_s)")));
            }
        }
        let steps = c.algorithm.steps.unwrap_or(0);
        crate::config::check_in("algorithm.steps", steps, 1, 1_000_000_000)?;
        let d: DecentralizedConfig = c.table("decentralized")?.unwrap_or_default();
        d.schedule()
            .validate()
            .map_err(|e| Invalid::within("decentralized", e))?;
        if d.budget != Budget::LocalOnly {
            crate::config::check_in("decentralized.every", d.every, 1, steps)?;
        }
        d.topology
            .check(c.partition.clients)
            .map_err(|e| Invalid::within("decentralized", e))?;
        if let Some(m) = d.mixing {
            super::check_mixing(m, d.topology.default_mixing())?;
        }
        crate::config::check_in("decentralized.eval_samples", d.eval_samples, 1, 1 << 24)?;
        crate::config::check_seconds("decentralized.gossip_timeout_s", d.gossip_timeout_s)?;
        common::check_mu(c, false)?;
        Ok(d)
    }

    fn build(p: &Prepared, d: &DecentralizedConfig) -> EngineResult<Vec<BoxNode<DsgdProtocol>>> {
        let settings = Arc::new(dsgd_settings(p, d)?);
        let init = p.initial_params()?;
        let mut nodes: Vec<BoxNode<DsgdProtocol>> = Vec::with_capacity(p.parts.len() + 1);
        for (id, part) in p.parts.iter().enumerate() {
            nodes.push(Box::new(DsgdPeer::new(
                id as NodeId,
                Arc::clone(&settings),
                part.clone(),
                init.clone(),
            )));
        }
        nodes.push(Box::new(DsgdMonitor::new(settings)));
        Ok(nodes)
    }

    fn node_of_shard(k: usize) -> NodeId {
        k as NodeId
    }

    fn shard_of_node(id: NodeId, shards: usize) -> Option<usize> {
        let k = id as usize;
        (k < shards).then_some(k)
    }

    fn role(_d: &DecentralizedConfig, node: usize, nodes: usize) -> &'static str {
        if node + 1 == nodes {
            "monitor"
        } else {
            "peer"
        }
    }

    fn describe(p: &Prepared, d: &DecentralizedConfig) -> String {
        format!(
            "{} peers, topology {:?}, every {} step(s), budget {:?}",
            p.parts.len(),
            d.topology,
            d.every,
            d.budget
        )
    }

    fn progress(c: &ExperimentConfig, _d: &DecentralizedConfig) -> (&'static str, u64) {
        ("step", c.algorithm.steps.unwrap_or(0))
    }

    fn summary(_p: &Prepared, _d: &DecentralizedConfig, rows: &[(GossipMetrics, f64)]) -> Summary {
        let last = rows.last().map(|(m, _)| m);
        Summary {
            accuracy: last.map(|m| m.merged_accuracy),
            line: format!(
                "final: merged model {} | local mean {} | {:.1} MB gossip per peer",
                last.map_or("-".into(), |m| format!("{:.4}", m.merged_accuracy)),
                last.map_or("-".into(), |m| format!("{:.4}", m.local_mean)),
                last.map_or(0.0, |m| m.bytes_per_peer / 1e6),
            ),
        }
    }

    /// Parallel SGD on the same peers, data and steps: an exact global average after every
    /// local step (every peer talks to every other; no quantized gossip).
    fn baseline(c: &ExperimentConfig) -> Option<Baseline> {
        let mut reference = c.clone();
        reference.name = format!("{}-parallel-sgd", c.name);
        let mut d: DecentralizedConfig = c.table("decentralized").ok()?.unwrap_or_default();
        d.every = 1;
        d.budget = Budget::Fixed {
            r: c.partition.clients.saturating_sub(1) as f64,
        };
        reference
            .tables
            .insert("decentralized".into(), toml::Value::try_from(&d).ok()?);
        reference.compression = None;
        Some(Baseline {
            config: reference,
            subject: "dsgd merged-model accuracy".into(),
            what: "parallel SGD reference",
        })
    }
}

/// The settings of a decentralized run.
pub fn dsgd_settings(p: &Prepared, d: &DecentralizedConfig) -> EngineResult<DsgdSettings> {
    let c = &p.config;
    let mut rng = seed::rng(c.seed, &[seed::stream::TOPOLOGY]);
    let topology = Topology::new(d.topology.clone(), p.parts.len(), &mut rng)
        .map_err(|e| Invalid::within("decentralized", e))?;
    let settings = DsgdSettings {
        mixing: d.mixing.unwrap_or_else(|| topology.default_mixing()),
        topology,
        schedule: d.schedule(),
        total_steps: c.algorithm.steps.unwrap_or(0),
        eval_every: u64::from(c.algorithm.eval_every),
        eval_samples: d.eval_samples,
        batch_size: c.train.batch_size,
        num_params: p.model.num_params(),
        lr_schedule: c.train.lr_schedule.clone(),
        gossip_deadline: crate::config::seconds(d.gossip_timeout_s),
        seed: c.seed,
        gossip_compression: c.compression.and_then(|k| k.gossip),
    };
    settings.validate()?;
    Ok(settings)
}
