//! Split learning as an `Algorithm`: its table `[split]`, checks, nodes and summary.

use super::*;

/// `[split]`: parallel split learning (algorithm `split`). The global batch B is
/// `train.batch_size` and the epochs are `algorithm.rounds`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitConfig {
    /// `global` (GPSL), `fixed-local` (FLS) or `fixed-proportional` (FPLS).
    #[serde(default = "default_sampler")]
    pub sampler: braid_core::split_batches::Sampler,
    /// The layer the model is cut after, e.g. `blocks.0` (default: the first one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cut: Option<String>,
    /// How the clients' gradients of the client part are combined: `sum` (default; the
    /// gradient of the global batch's loss, as the authors' code does) or `mean`.
    #[serde(default)]
    pub client_gradients: ClientGradients,
    /// The straggler and link model for the simulated time.
    #[serde(default)]
    pub latency: braid_core::latency::LatencyConfig,
    /// Seconds each phase of a step (activations in, client-part gradients in) waits for its
    /// clients; then the step goes on with the answers in and the late clients are not waited
    /// for until they answer in time again. Unset: every step waits for all its clients.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_timeout_s: Option<f64>,
}

fn default_sampler() -> braid_core::split_batches::Sampler {
    braid_core::split_batches::Sampler::Global
}

impl Default for SplitConfig {
    fn default() -> Self {
        Self {
            sampler: default_sampler(),
            cut: None,
            client_gradients: ClientGradients::default(),
            latency: braid_core::latency::LatencyConfig::default(),
            step_timeout_s: None,
        }
    }
}

/// How client-part gradients are combined in split learning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClientGradients {
    /// Summed over the step's clients.
    #[default]
    Sum,
    /// Averaged over the step's clients.
    Mean,
}

/// Parallel split learning as an [`Algorithm`]: the server is node 0, clients are nodes 1...
pub struct Split;

impl Algorithm for Split {
    const NAME: &'static str = "split";
    type Config = SplitConfig;
    type Protocol = SplitProtocol;
    const TABLES: &'static [&'static str] = &["split"];
    const FEATURES: &'static [Feature] = &[Feature::Compression];

    fn not_replayed(id: NodeId) -> Option<&'static str> {
        (id == SERVER).then_some(
            "the split server checkpoints once per epoch, so the state a step starts from is not kept",
        )
    }

    fn instead(feature: Feature) -> Option<&'static str> {
        (feature == Feature::Latency).then_some("split learning has [split.latency]")
    }

    fn config(c: &ExperimentConfig) -> Result<SplitConfig, Invalid> {
        common::check_compression(c, common::CompressionUse::Split)?;
        common::rounds(c, "split")?;
        if c.algorithm.clients_per_round.is_some() {
            return Err(Invalid::not_applicable("algorithm.clients_per_round", "algorithm.clients_per_round does not apply to \"split\" (the sampler decides who takes part in each step)"));
        }
        if c.algorithm.server_optimizer != Default::default() {
            return Err(Invalid::not_applicable("algorithm.server_optimizer", "algorithm.server_optimizer does not apply to \"split\" (the server part uses train.optimizer)"));
        }
        if c.algorithm.round_timeout_s.is_some() || c.algorithm.min_replies.is_some() {
            let field = if c.algorithm.round_timeout_s.is_some() {
                "algorithm.round_timeout_s"
            } else {
                "algorithm.min_replies"
            };
            return Err(Invalid::not_applicable(field, "algorithm.round_timeout_s and min_replies do not apply to \"split\" (a step's deadline is split.step_timeout_s)"));
        }
        if c.train.local_steps.is_some() || c.train.local_epochs != 1 {
            let field = if c.train.local_steps.is_some() {
                "train.local_steps"
            } else {
                "train.local_epochs"
            };
            return Err(Invalid::not_applicable(field, "train.local_epochs and local_steps do not apply to \"split\" (algorithm.rounds are epochs)"));
        }
        let sc: SplitConfig = c.table("split")?.unwrap_or_default();
        sc.latency
            .validate()
            .map_err(|e| Invalid::within("split.latency", e))?;
        crate::config::check_seconds("split.step_timeout_s", sc.step_timeout_s)?;
        common::check_mu(c, false)?;
        Ok(sc)
    }

    fn prepare(p: &mut Prepared, sc: &SplitConfig) -> EngineResult {
        crate::prepared::classification_only(p, "split learning")?;
        p.split = Some(p.model.split(sc.cut.as_deref())?);
        Ok(())
    }

    fn build(p: &Prepared, sc: &SplitConfig) -> EngineResult<Vec<BoxNode<SplitProtocol>>> {
        let c = &p.config;
        let settings = Arc::new(split_settings(p, sc)?);
        let mut nodes: Vec<BoxNode<SplitProtocol>> = vec![Box::new(SplitServer::new(
            Arc::clone(&settings),
            p.initial_params()?,
        )?)];
        for (k, part) in p.parts.iter().enumerate() {
            nodes.push(Box::new(
                SplitClient::new(k as NodeId + 1, Arc::new(part.clone()), c.seed)
                    .with_settings(&settings),
            ));
        }
        Ok(nodes)
    }

    fn max_message_values(p: &Prepared, _sc: &SplitConfig) -> usize {
        let activations = p.split.as_ref().map_or(0, |s| {
            s.cut_features.saturating_mul(p.config.train.batch_size)
        });
        p.model.num_params().max(activations)
    }

    fn describe(p: &Prepared, sc: &SplitConfig) -> String {
        match &p.split {
            Some(split) => format!(
                "{} clients, sampler {}, global batch {}, cut after {} ({} client-part parameters, {} values per sample at the cut)",
                p.parts.len(),
                sc.sampler.as_str(),
                p.config.train.batch_size,
                split.cut, split.client_params, split.cut_features
            ),
            None => format!("{} clients", p.parts.len()),
        }
    }

    fn progress(c: &ExperimentConfig, _sc: &SplitConfig) -> (&'static str, u64) {
        ("round", u64::from(c.algorithm.rounds.unwrap_or(0)))
    }

    fn summary(_p: &Prepared, _sc: &SplitConfig, rows: &[(SplitMetrics, f64)]) -> Summary {
        let accuracy = rows.iter().rev().find_map(|(m, _)| m.accuracy);
        let bytes: u64 = rows.iter().map(|(m, _)| m.bytes_up + m.bytes_down).sum();
        let sim: f64 = rows.iter().map(|(m, _)| m.sim_time_s).sum();
        Summary {
            accuracy,
            line: format!(
                "final test accuracy {} after {} epochs | {:.1} MB communicated | {:.0} s simulated",
                accuracy.map_or("-".to_string(), |x| format!("{x:.4}")),
                rows.len(),
                bytes as f64 / 1e6,
                sim,
            ),
        }
    }
}

/// The settings of a split-learning run.
pub fn split_settings(p: &Prepared, sc: &SplitConfig) -> EngineResult<SplitSettings> {
    let c = &p.config;
    let split = p
        .split
        .as_ref()
        .ok_or_else(|| EngineError::Driver("not a split-learning run".into()))?;
    let mut rng = seed::rng(c.seed, &[seed::stream::LATENCY]);
    Ok(SplitSettings {
        sampler: sc.sampler,
        batch: c.train.batch_size,
        epochs: c.algorithm.rounds.unwrap_or(0),
        eval_every: c.algorithm.eval_every,
        client_gradients: sc.client_gradients,
        counts: p.parts.iter().map(Vec::len).collect(),
        client_params: split.client_params,
        num_params: p.model.num_params(),
        cut_features: split.cut_features,
        flops: (split.client_flops, split.server_flops),
        latency: braid_core::latency::LatencyModel::new(&sc.latency, p.parts.len(), &mut rng),
        lr_schedule: c.train.lr_schedule.clone(),
        seed: c.seed,
        compression: c.compression.and_then(|k| k.split),
        step_deadline: crate::config::seconds(sc.step_timeout_s),
    })
}
