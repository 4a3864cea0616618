//! The mutual-learning algorithms as `Algorithm`s: their config table `[mutual]`, checks, nodes and summary.

use super::*;

/// `[mutual]`: mutual learning between clients with different models (DFML and its baselines).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MutualConfig {
    /// The models clients may have, e.g. `["cnn-small", "mlp", "cnn"]` (default: `[model.name]`):
    /// built-ins, or models a program registered.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<String>,
    /// How clients get their model: `{ kind = "cycle" }` (client k gets models[k mod m]),
    /// `{ kind = "ratio", weights = [2, 1, 1] }` or `{ kind = "random" }` (seeded).
    #[serde(default = "default_assign")]
    pub assign: braid_core::mutual::Assign,
    /// DFML: senders per round; Def-KT: (teacher, student) pairs per round (default:
    /// a fifth of the clients, at least 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub senders: Option<usize>,
    /// The distillation weight over rounds: `{ shape = "cosine" | "triangular" | "constant",
    /// period = 10, min = 0.0, max = 0.8 }`; peak models are taken at rounds `period, 2 period, ...`.
    #[serde(default)]
    pub alpha: braid_core::mutual::AlphaCycle,
    /// Softmax temperature of the distillation term (default 1).
    #[serde(default = "default_temperature")]
    pub temperature: f64,
    /// Supervised loss: `ce` (cross-entropy, default) or `wsm` (re-weighted softmax, for non-IID data).
    #[serde(default)]
    pub supervised: braid_nn::SupervisedLoss,
    /// Test samples each client's model is evaluated on at an evaluation point (default 2000;
    /// the last round uses the whole test set).
    #[serde(default = "default_eval_samples")]
    pub eval_samples: usize,
    /// FML: the global model's architecture (default: the first of `models`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub global_model: Option<String>,
    /// Seconds a node waits for a round's models (and the hub for an evaluation point's
    /// reports) once it is waiting; then it goes on without the missing ones. Unset: it waits
    /// for all of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub round_timeout_s: Option<f64>,
}

fn default_assign() -> braid_core::mutual::Assign {
    braid_core::mutual::Assign::Cycle
}
fn default_temperature() -> f64 {
    1.0
}

impl Default for MutualConfig {
    fn default() -> Self {
        Self {
            models: Vec::new(),
            assign: default_assign(),
            senders: None,
            alpha: braid_core::mutual::AlphaCycle::default(),
            temperature: default_temperature(),
            supervised: braid_nn::SupervisedLoss::default(),
            eval_samples: default_eval_samples(),
            global_model: None,
            round_timeout_s: None,
        }
    }
}

impl MutualConfig {
    /// The list of models: `models`, or `[model]` (`model`) when empty.
    pub fn model_list(&self, model: &str) -> Vec<String> {
        if self.models.is_empty() {
            vec![model.to_string()]
        } else {
            self.models.clone()
        }
    }
}

fn default_eval_samples() -> usize {
    2000
}

/// The list of models of a mutual-learning config by name (`[mutual] models`, or `[model]`
/// alone), for reports.
pub fn model_names(c: &ExperimentConfig) -> Vec<String> {
    let m: MutualConfig = c.table("mutual").ok().flatten().unwrap_or_default();
    m.model_list(&c.model.name)
}

/// The name a variant has in `algorithm.name`.
fn variant_name(v: Variant) -> &'static str {
    match v {
        Variant::Dfml => "dfml",
        Variant::Local => "local",
        Variant::Fml => "fml",
        Variant::DefKt => "def-kt",
    }
}

/// The settings of a mutual-learning run: the variant and `[mutual]`.
#[derive(Debug, Clone, PartialEq)]
pub struct MutualRun {
    /// Which algorithm of the family.
    pub variant: Variant,
    /// `[mutual]` as written (with defaults).
    pub mutual: MutualConfig,
    /// Rounds.
    pub rounds: u32,
}

/// Checks the settings of mutual-learning variant `v`.
fn mutual_run(c: &ExperimentConfig, v: Variant) -> Result<MutualRun, Invalid> {
    let name = variant_name(v);
    common::check_compression(c, common::CompressionUse::Models)?;
    let rounds = common::rounds(c, name)?;
    let m: MutualConfig = c.table("mutual")?.unwrap_or_default();
    common::no_server_fields(c, name)?;
    if c.train.local_steps.is_some() {
        return Err(Invalid::not_applicable(
            "train.local_steps",
            format!("train.local_steps does not apply to {name:?} (use train.local_epochs)"),
        ));
    }
    if c.partition.clients < 2 {
        return Err(Invalid::range(
            "partition.clients",
            format!("{name:?} needs partition.clients >= 2"),
        ));
    }
    m.alpha
        .validate()
        .map_err(|e| Invalid::within("mutual", e))?;
    crate::config::check_seconds("mutual.round_timeout_s", m.round_timeout_s)?;
    crate::config::check_in("mutual.temperature", m.temperature, 1e-3, 1e3)?;
    crate::config::check_in("mutual.eval_samples", m.eval_samples, 1, 1 << 24)?;
    if c.model.init.is_some() {
        return Err(Invalid::not_applicable(
            "model.init",
            "model.init does not apply to mutual learning (each client's model starts from the seeded init of its architecture)",
        ));
    }
    let models = m.model_list(&c.model.name);
    for (i, a) in models.iter().enumerate() {
        if models[..i].contains(a) {
            return Err(Invalid::range(
                "mutual.models",
                format!("mutual.models lists {a:?} twice"),
            ));
        }
        if c.model.resolve(a).is_none() {
            return Err(Invalid::new(
                "mutual.models",
                crate::error::Rule::Unknown,
                format!("mutual.models: `{a}` is not a built-in model; a program that registers it (Registry::add_model) must read the config"),
            ));
        }
    }
    m.assign
        .assign(c.partition.clients, models.len(), c.seed)
        .map_err(|e| Invalid::within("mutual", e))?;
    if let Some(g) = &m.global_model {
        if v != Variant::Fml {
            return Err(Invalid::not_applicable(
                "mutual.global_model",
                "mutual.global_model only applies to \"fml\"",
            ));
        }
        if !models.contains(g) {
            return Err(Invalid::range(
                "mutual.global_model",
                format!("mutual.global_model = {g:?} is not in mutual.models"),
            ));
        }
    }
    let n = c.partition.clients;
    match (v, m.senders) {
        (Variant::Dfml, Some(s)) if s == 0 || s >= n => {
            return Err(Invalid::range(
                "mutual.senders",
                format!(
                    "mutual.senders = {s} must be between 1 and partition.clients - 1 = {}",
                    n - 1
                ),
            ))
        }
        (Variant::DefKt, Some(s)) if s == 0 || 2 * s > n => {
            return Err(Invalid::range(
                "mutual.senders",
                format!(
            "mutual.senders = {s} (Def-KT pairs) must be between 1 and partition.clients / 2 = {}",
            n / 2
        ),
            ))
        }
        (Variant::Local | Variant::Fml, Some(_)) => {
            return Err(Invalid::not_applicable(
                "mutual.senders",
                format!(
                    "mutual.senders does not apply to {name:?} (use algorithm.clients_per_round)"
                ),
            ))
        }
        _ => {}
    }
    if matches!(v, Variant::Dfml | Variant::DefKt) && c.algorithm.clients_per_round.is_some() {
        return Err(Invalid::not_applicable("algorithm.clients_per_round", format!(
            "algorithm.clients_per_round does not apply to {name:?} (mutual.senders sets who takes part)"
        )));
    }
    common::check_mu(c, false)?;
    common::check_clients_per_round(c)?;
    Ok(MutualRun {
        variant: v,
        mutual: m,
        rounds,
    })
}

/// Binds the run's list of models to the data and assigns one to each client.
fn prepare_models(p: &mut Prepared, run: &MutualRun) -> EngineResult {
    crate::prepared::classification_only(p, "mutual learning")?;
    let c = &p.config;
    let m = &run.mutual;
    let shape = braid_nn::DataShape::of(&p.data.train);
    p.models = m
        .model_list(&c.model.name)
        .iter()
        .map(|name| c.model.bind_named("mutual.models", name, &shape))
        .collect::<Result<Vec<_>, _>>()?;
    p.client_models = m
        .assign
        .assign(p.parts.len(), p.models.len(), c.seed)
        .map_err(|e| Invalid::within("mutual", e))?;
    p.mutual_spec = Some((m.temperature, m.supervised));
    Ok(())
}

/// The settings shared by the nodes of a mutual-learning run.
pub fn mutual_settings(p: &Prepared, run: &MutualRun) -> EngineResult<MutualSettings> {
    let c = &p.config;
    let variant = run.variant;
    let m = &run.mutual;
    let n = p.parts.len();
    let names = m.model_list(&c.model.name);
    let global_model = m
        .global_model
        .as_ref()
        .and_then(|g| names.iter().position(|x| x == g))
        .unwrap_or(0);
    let senders = m.senders.unwrap_or(match variant {
        Variant::DefKt => (n / 5).clamp(1, (n / 2).max(1)),
        _ => (n / 5).clamp(1, n.saturating_sub(1).max(1)),
    });
    let settings = MutualSettings {
        variant,
        rounds: run.rounds,
        eval_every: c.algorithm.eval_every,
        eval_samples: m.eval_samples,
        model_names: names,
        model_params: p
            .models
            .iter()
            .map(braid_nn::BoundModel::num_params)
            .collect(),
        archs: p.client_models.clone(),
        counts: p.parts.iter().map(Vec::len).collect(),
        senders,
        clients_per_round: c.clients_per_round(),
        alpha: m.alpha,
        batch_size: c.train.batch_size,
        local_epochs: c.train.local_epochs,
        global_model,
        lr_schedule: c.train.lr_schedule.clone(),
        seed: c.seed,
        model_compression: c.compression.and_then(|k| k.models),
        round_deadline: crate::config::seconds(m.round_timeout_s),
    };
    settings.validate()?;
    Ok(settings)
}

fn build_mutual(p: &Prepared, run: &MutualRun) -> EngineResult<Vec<BoxNode<MutualProtocol>>> {
    let c = &p.config;
    let settings = Arc::new(mutual_settings(p, run)?);
    let global = if settings.variant == Variant::Fml {
        p.models[settings.global_model].init_params(c.seed)?
    } else {
        Vec::new()
    };
    let mut nodes: Vec<BoxNode<MutualProtocol>> =
        vec![Box::new(MutualHub::new(Arc::clone(&settings), global))];
    for (k, part) in p.parts.iter().enumerate() {
        // Clients with the same model start from the same seeded init, as FedAvg's do.
        let init = p.models[p.client_models[k]].init_params(c.seed)?;
        nodes.push(Box::new(MutualClient::new(
            k,
            Arc::clone(&settings),
            Arc::new(part.clone()),
            init,
        )));
    }
    Ok(nodes)
}

fn describe(p: &Prepared) -> String {
    let counts: Vec<String> = p
        .models
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let n = p.client_models.iter().filter(|&&m| m == i).count();
            format!("{n} x {} ({} parameters)", a.name(), a.num_params())
        })
        .collect();
    format!("{} clients: {}", p.parts.len(), counts.join(", "))
}

fn summary(rows: &[(MutualMetrics, f64)]) -> Summary {
    let f = |v: Option<f64>| v.map_or("-".to_string(), |x| format!("{x:.4}"));
    let last = rows.last().map(|(m, _)| m);
    Summary {
        accuracy: last.map(|m| m.peak_accuracy.unwrap_or(m.accuracy)),
        line: format!(
            "final global accuracy {} (peak models {}) after {} rounds | {:.1} MB of models sent",
            f(last.map(|m| m.accuracy)),
            f(last.and_then(|m| m.peak_accuracy)),
            last.map_or(0, |m| m.round),
            last.map_or(0.0, |m| m.cum_bytes as f64 / 1e6),
        ),
    }
}

macro_rules! mutual_algorithm {
    ($ty:ident, $name:literal, $variant:expr, $doc:literal) => {
        #[doc = $doc]
        pub struct $ty;

        impl Algorithm for $ty {
            const NAME: &'static str = $name;
            type Config = MutualRun;
            type Protocol = MutualProtocol;
            const TABLES: &'static [&'static str] = &["mutual"];
            const FEATURES: &'static [Feature] = &[Feature::Compression];

            fn config(c: &ExperimentConfig) -> Result<MutualRun, Invalid> {
                mutual_run(c, $variant)
            }

            fn prepare(p: &mut Prepared, run: &MutualRun) -> EngineResult {
                prepare_models(p, run)
            }

            fn build(p: &Prepared, run: &MutualRun) -> EngineResult<Vec<BoxNode<MutualProtocol>>> {
                build_mutual(p, run)
            }

            fn role(run: &MutualRun, node: usize, _nodes: usize) -> &'static str {
                match (run.variant, node) {
                    (Variant::Fml, 0) => "server",
                    (_, 0) => "monitor",
                    _ => "client",
                }
            }

            fn max_message_values(p: &Prepared, _run: &MutualRun) -> usize {
                let largest = p
                    .models
                    .iter()
                    .map(braid_nn::BoundModel::num_params)
                    .max()
                    .unwrap_or(0);
                p.model.num_params().max(largest)
            }

            fn describe(p: &Prepared, _run: &MutualRun) -> String {
                describe(p)
            }

            fn progress(_c: &ExperimentConfig, run: &MutualRun) -> (&'static str, u64) {
                ("round", u64::from(run.rounds))
            }

            fn summary(_p: &Prepared, _run: &MutualRun, rows: &[(MutualMetrics, f64)]) -> Summary {
                summary(rows)
            }
        }
    };
}

mutual_algorithm!(
    Dfml,
    "dfml",
    Variant::Dfml,
    "DFML: serverless mutual learning between heterogeneous models."
);
mutual_algorithm!(
    Local,
    "local",
    Variant::Local,
    "Isolated local training of each client's own model (a baseline)."
);
mutual_algorithm!(
    Fml,
    "fml",
    Variant::Fml,
    "Federated mutual learning: a server-held global model distilled with each client's model."
);
mutual_algorithm!(
    DefKt,
    "def-kt",
    Variant::DefKt,
    "Def-KT: decentralized mutual knowledge transfer between pairs of clients."
);
