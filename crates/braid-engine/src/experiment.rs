//! From a config to a finished run: load data, partition, build nodes and workers, simulate.

use std::sync::Arc;

use braid_core::partition::{self, label_histogram};
use braid_core::seed;
use braid_core::topology::Topology;
use braid_data::DataSplit;
use braid_nn::{
    Arch, EvalOutcome, Member, MutualOutcome, MutualSpec, MutualTrainer, OptimizerState,
    ServerStep, SplitArch, SplitTrainer, SupervisedLoss, TrainOutcome, TrainSpec, Trainer,
};
use rand::seq::SliceRandom;

use crate::algorithms::dsgd::{DsgdMonitor, DsgdPeer, DsgdSettings};
use crate::algorithms::fedavg::{FedAvgClient, FedAvgServer, SecureSettings, ServerConfig, SERVER};
use crate::algorithms::fedbuff::{FedBuffServer, FedBuffSettings};
use crate::algorithms::mutual::{MutualClient, MutualHub, MutualSettings, Variant};
use crate::algorithms::split::{SplitClient, SplitServer, SplitSettings};
use crate::config::{AlgorithmName, ExperimentConfig};
use crate::node::{EngineError, Event, LocalTrainer, Node};
use crate::sim::{SimOutcome, Simulator, Timing, Worker};
use crate::wire::NodeId;

/// A config with its data loaded and partitioned, ready to run.
pub struct Prepared {
    /// The config.
    pub config: ExperimentConfig,
    /// Train and test data.
    pub data: Arc<DataSplit>,
    /// Training-sample indices of each client.
    pub parts: Vec<Vec<usize>>,
    /// The model architecture bound to the data.
    pub arch: Arch,
    /// Human-readable data source.
    pub data_description: String,
    /// The model cut in two (algorithm `split`).
    pub split: Option<SplitArch>,
    /// The run's list of models bound to the data (`[mutual] models`; `[arch]` otherwise).
    pub models: Vec<Arch>,
    /// Each client's model, an index into `models` (all 0 outside mutual learning).
    pub client_models: Vec<usize>,
}

/// Loads the data, partitions it and binds the model; errors name what is wrong.
pub fn prepare(config: &ExperimentConfig) -> Result<Prepared, EngineError> {
    let data = braid_data::load(&config.data, config.seed)
        .map_err(|e| EngineError::Setup(e.to_string()))?;
    let data_description = match &config.data {
        braid_data::DataConfig::FashionMnist { source, .. } => {
            braid_data::FashionSource::resolve(source)
                .map(|s| s.describe())
                .unwrap_or_else(|_| source.clone())
        }
        braid_data::DataConfig::Synthetic(c) => format!(
            "Synthetic({}, {}) with {} groups",
            c.alpha, c.beta, c.groups
        ),
    };
    let arch = Arch::new(
        config.model.name,
        data.train.sample_shape(),
        data.train.num_classes(),
    )?;
    let scheme = config.partition.scheme().map_err(EngineError::Setup)?;
    let clients = config.num_clients();
    let parts = if clients == 1 {
        vec![(0..data.train.len()).collect()]
    } else {
        let mut rng = seed::rng(config.seed, &[seed::stream::PARTITION]);
        partition::partition(
            &scheme,
            data.train.labels(),
            data.train.groups(),
            data.train.num_classes(),
            clients,
            &mut rng,
        )
        .map_err(|e| EngineError::Setup(e.to_string()))?
    };
    let split = match config.algorithm.name {
        AlgorithmName::Split => {
            let cut = config
                .split
                .as_ref()
                .and_then(|s| s.cut.clone())
                .or_else(|| arch.cut_points().into_iter().next())
                .ok_or_else(|| {
                    EngineError::Setup(format!(
                        "model {} has no layer to cut after",
                        arch.name.as_str()
                    ))
                })?;
            Some(arch.split(&cut)?)
        }
        _ => None,
    };
    let (models, client_models) = if config.algorithm.name.is_mutual() {
        let m = config.mutual.clone().unwrap_or_default();
        let models = m
            .model_list(config.model.name)
            .into_iter()
            .map(|name| Arch::new(name, data.train.sample_shape(), data.train.num_classes()))
            .collect::<Result<Vec<_>, _>>()?;
        let assigned = m
            .assign
            .assign(parts.len(), models.len(), config.seed)
            .map_err(|e| EngineError::Setup(format!("mutual.{e}")))?;
        (models, assigned)
    } else {
        (vec![arch.clone()], vec![0; parts.len()])
    };
    Ok(Prepared {
        config: config.clone(),
        data: Arc::new(data),
        parts,
        arch,
        data_description,
        split,
        models,
        client_models,
    })
}

/// The node id of the participant holding shard `k` (FedAvg family: clients are nodes 1..;
/// dsgd: peers are nodes 0..).
pub fn node_of_shard(config: &ExperimentConfig, k: usize) -> NodeId {
    let k = k as NodeId;
    if config.algorithm.name == AlgorithmName::Dsgd {
        k
    } else {
        k + 1
    }
}

/// The shard index of node `id`, if it holds one (not the server or the dsgd monitor).
pub fn shard_of_node(config: &ExperimentConfig, id: NodeId, shards: usize) -> Option<usize> {
    let k = if config.algorithm.name == AlgorithmName::Dsgd {
        id as usize
    } else {
        (id as usize).checked_sub(1)?
    };
    (k < shards).then_some(k)
}

impl Prepared {
    /// Replaces shard `k` by `own`, a participant's own training data (`braid node --data`):
    /// the participant trains on all of it; the test set and the model stay as configured.
    /// For one node's process only: the other shards' indices no longer mean anything.
    pub fn use_own_data(&mut self, k: usize, own: braid_data::Dataset) -> Result<(), EngineError> {
        let train = &self.data.train;
        if own.sample_shape() != train.sample_shape() || own.num_classes() != train.num_classes() {
            return Err(EngineError::Setup(format!(
                "own data has samples of shape {:?} with {} classes; the experiment's have {:?} with {}",
                own.sample_shape(),
                own.num_classes(),
                train.sample_shape(),
                train.num_classes()
            )));
        }
        if own.is_empty() {
            return Err(EngineError::Setup("own data holds no samples".into()));
        }
        let part = self
            .parts
            .get_mut(k)
            .ok_or_else(|| EngineError::Setup(format!("there is no shard {k}")))?;
        *part = (0..own.len()).collect();
        self.data = Arc::new(DataSplit {
            train: own,
            test: self.data.test.clone(),
        });
        Ok(())
    }

    /// Per-client label counts.
    pub fn histogram(&self) -> Vec<Vec<usize>> {
        label_histogram(
            self.data.train.labels(),
            &self.parts,
            self.data.train.num_classes(),
        )
    }

    /// Number of worker threads this run uses.
    pub fn workers(&self) -> usize {
        let auto = if self.config.runtime.device.is_accelerator() {
            1
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        };
        self.config
            .runtime
            .workers
            .unwrap_or(auto)
            .min(self.config.clients_per_round())
            .max(1)
    }

    /// The most values one message of this run may carry (the decoder's limit): a model, or in
    /// split learning also one client's activations or their gradient, at most a global batch.
    pub fn max_message_values(&self) -> usize {
        let activations = self.split.as_ref().map_or(0, |s| {
            s.cut_features()
                .saturating_mul(self.config.train.batch_size)
        });
        let largest = self.models.iter().map(Arch::num_params).max().unwrap_or(0);
        self.arch.num_params().max(activations).max(largest)
    }

    /// The settings of a mutual-learning run (algorithms `dfml`, `local`, `fml`, `def-kt`).
    pub fn mutual_settings(&self) -> Result<MutualSettings, EngineError> {
        let c = &self.config;
        let variant = match c.algorithm.name {
            AlgorithmName::Dfml => Variant::Dfml,
            AlgorithmName::Local => Variant::Local,
            AlgorithmName::Fml => Variant::Fml,
            AlgorithmName::DefKt => Variant::DefKt,
            _ => return Err(EngineError::Setup("not a mutual-learning run".into())),
        };
        let m = c.mutual.clone().unwrap_or_default();
        let n = self.parts.len();
        let names = m.model_list(c.model.name);
        let global_model = m
            .global_model
            .and_then(|g| names.iter().position(|&x| x == g))
            .unwrap_or(0);
        let senders = m.senders.unwrap_or(match variant {
            Variant::DefKt => (n / 5).clamp(1, (n / 2).max(1)),
            _ => (n / 5).clamp(1, n.saturating_sub(1).max(1)),
        });
        let settings = MutualSettings {
            variant,
            rounds: c.algorithm.rounds(),
            eval_every: c.algorithm.eval_every,
            eval_samples: m.eval_samples,
            model_names: names.iter().map(|n| n.as_str().to_string()).collect(),
            model_params: self.models.iter().map(Arch::num_params).collect(),
            archs: self.client_models.clone(),
            counts: self.parts.iter().map(Vec::len).collect(),
            senders,
            clients_per_round: c.clients_per_round(),
            alpha: m.alpha,
            batch_size: c.train.batch_size,
            local_epochs: c.train.local_epochs,
            global_model,
            lr_schedule: c.train.lr_schedule.clone(),
            seed: c.seed,
            model_compression: c.compression.and_then(|k| k.models),
        };
        settings.validate()?;
        Ok(settings)
    }

    /// The settings of a split-learning run (algorithm `split`).
    pub fn split_settings(&self) -> Result<SplitSettings, EngineError> {
        let c = &self.config;
        let split = self
            .split
            .as_ref()
            .ok_or_else(|| EngineError::Setup("not a split-learning run".into()))?;
        let sc = c.split.clone().unwrap_or_default();
        let mut rng = seed::rng(c.seed, &[seed::stream::LATENCY]);
        Ok(SplitSettings {
            sampler: sc.sampler,
            batch: c.train.batch_size,
            epochs: c.algorithm.rounds(),
            eval_every: c.algorithm.eval_every,
            client_gradients: sc.client_gradients,
            counts: self.parts.iter().map(Vec::len).collect(),
            client_params: split.client_params(),
            num_params: self.arch.num_params(),
            cut_features: split.cut_features(),
            flops: (split.client.forward_flops(), split.server.forward_flops()),
            latency: braid_core::latency::LatencyModel::new(
                &sc.latency,
                self.parts.len(),
                &mut rng,
            ),
            lr_schedule: c.train.lr_schedule.clone(),
            seed: c.seed,
            compression: c.compression.and_then(|k| k.split),
        })
    }
}

/// A [`LocalTrainer`] on burn: trains on the shared training set, evaluates on the test set.
pub struct BurnTrainer {
    trainer: Trainer,
    /// Mutual learning over the run's list of models, and one evaluator per model (made on
    /// first use).
    mutual: Option<(MutualTrainer, Vec<Option<Trainer>>)>,
    mutual_spec: (f64, SupervisedLoss),
    device: braid_nn::DeviceKind,
    /// The split model's two parts (algorithm `split`).
    split: Option<SplitTrainer>,
    data: Arc<DataSplit>,
    /// The training set with flipped labels, made on first use by a label-flipping attacker.
    flipped: Option<braid_data::Dataset>,
    spec: TrainSpec,
    /// The test set in a seeded order; `evaluate_sample(n)` uses its first `n` entries.
    eval_order: Vec<usize>,
}

impl BurnTrainer {
    /// A trainer for `prepared`'s model and data.
    pub fn new(prepared: &Prepared) -> Result<Self, EngineError> {
        let device = &prepared.config.runtime.device;
        Ok(Self {
            trainer: Trainer::new(prepared.arch.clone(), device)?,
            mutual: if prepared.config.algorithm.name.is_mutual() {
                Some((
                    MutualTrainer::new(prepared.models.clone(), device)?,
                    prepared.models.iter().map(|_| None).collect(),
                ))
            } else {
                None
            },
            mutual_spec: prepared
                .config
                .mutual
                .as_ref()
                .map_or((1.0, SupervisedLoss::Ce), |m| (m.temperature, m.supervised)),
            split: prepared
                .split
                .clone()
                .map(|s| SplitTrainer::new(s, device))
                .transpose()?,
            data: Arc::clone(&prepared.data),
            flipped: None,
            spec: prepared.config.train_spec(),
            device: device.clone(),
            eval_order: {
                let mut order: Vec<usize> = (0..prepared.data.test.len()).collect();
                order.shuffle(&mut seed::rng(prepared.config.seed, &[seed::stream::EVAL]));
                order
            },
        })
    }
}

fn no_models() -> EngineError {
    EngineError::Setup(
        "this run has no list of models (a mutual-learning algorithm sets one up)".into(),
    )
}

impl BurnTrainer {
    fn split_part(&mut self) -> Result<&mut SplitTrainer, EngineError> {
        self.split.as_mut().ok_or_else(|| {
            EngineError::Setup("this run has no split model (algorithm.name = \"split\")".into())
        })
    }
}

impl LocalTrainer for BurnTrainer {
    fn mutual_train(
        &mut self,
        members: &[Member<'_>],
        batches: &[Vec<usize>],
        alpha: f64,
        lr_scale: f64,
    ) -> Result<MutualOutcome, EngineError> {
        let spec = MutualSpec {
            optimizer: self.spec.optimizer.clone(),
            alpha,
            temperature: self.mutual_spec.0,
            supervised: self.mutual_spec.1,
            lr_scale,
        };
        let data = Arc::clone(&self.data);
        let (trainer, _) = self.mutual.as_mut().ok_or_else(no_models)?;
        Ok(trainer.train(members, &data.train, batches, &spec)?)
    }

    fn evaluate_arch(
        &mut self,
        arch: usize,
        params: &[f32],
        max_samples: usize,
    ) -> Result<EvalOutcome, EngineError> {
        let device = self.device.clone();
        let (trainer, evaluators) = self.mutual.as_mut().ok_or_else(no_models)?;
        let model = trainer.archs().get(arch).cloned().ok_or_else(|| {
            EngineError::Setup(format!("model index {arch} is outside the list of models"))
        })?;
        let slot = evaluators
            .get_mut(arch)
            .ok_or_else(|| EngineError::Setup(format!("no evaluator for model {arch}")))?;
        if slot.is_none() {
            *slot = Some(Trainer::new(model, &device)?);
        }
        let Some(evaluator) = slot.as_mut() else {
            return Err(no_models());
        };
        let idx = &self.eval_order[..max_samples.min(self.eval_order.len())];
        Ok(evaluator.evaluate(params, &self.data.test, Some(idx))?)
    }

    fn arch_flops(&self, arch: usize) -> crate::accounting::FlopsPerSample {
        self.mutual
            .as_ref()
            .and_then(|(t, _)| t.archs().get(arch))
            .map_or_else(Default::default, |a| crate::accounting::FlopsPerSample {
                train: a.train_flops(),
                forward: a.forward_flops(),
            })
    }

    fn split_forward(
        &mut self,
        params: &[f32],
        samples: &[usize],
    ) -> Result<(Vec<f32>, Vec<u8>), EngineError> {
        let data = Arc::clone(&self.data);
        Ok(self
            .split_part()?
            .client_forward(params, &data.train, samples)?)
    }

    fn split_backward(
        &mut self,
        params: &[f32],
        samples: &[usize],
        grad: &[f32],
    ) -> Result<Vec<f32>, EngineError> {
        let data = Arc::clone(&self.data);
        Ok(self
            .split_part()?
            .client_backward(params, &data.train, samples, grad)?)
    }

    fn split_server_step(
        &mut self,
        params: &[f32],
        acts: &[f32],
        labels: &[u8],
        state: &mut OptimizerState,
        lr_scale: f64,
    ) -> Result<ServerStep, EngineError> {
        let opt = self.spec.optimizer.clone();
        Ok(self
            .split_part()?
            .server_step(params, acts, labels, &opt, state, lr_scale)?)
    }

    fn split_client_update(
        &mut self,
        params: &[f32],
        grad: &[f32],
        state: &mut OptimizerState,
        lr_scale: f64,
    ) -> Result<Vec<f32>, EngineError> {
        let opt = self.spec.optimizer.clone();
        Ok(self
            .split_part()?
            .client_update(params, grad, &opt, state, lr_scale)?)
    }

    fn split_flops(&self) -> (u64, u64) {
        self.split.as_ref().map_or((0, 0), |s| {
            (
                s.split().client.forward_flops(),
                s.split().server.forward_flops(),
            )
        })
    }

    fn set_stop_flag(&mut self, flag: Arc<std::sync::atomic::AtomicBool>) {
        self.trainer.set_stop_flag(flag);
    }

    fn flops_per_sample(&self) -> crate::accounting::FlopsPerSample {
        let arch = self.trainer.arch();
        crate::accounting::FlopsPerSample {
            train: arch.train_flops(),
            forward: arch.forward_flops(),
        }
    }

    fn train(
        &mut self,
        params: &[f32],
        shard: &[usize],
        seed: u64,
        lr_scale: f64,
    ) -> Result<TrainOutcome, EngineError> {
        self.spec.lr_scale = lr_scale;
        Ok(self
            .trainer
            .train(params, &self.data.train, shard, &self.spec, seed)?)
    }

    fn train_label_flipped(
        &mut self,
        params: &[f32],
        shard: &[usize],
        seed: u64,
        lr_scale: f64,
    ) -> Result<TrainOutcome, EngineError> {
        self.spec.lr_scale = lr_scale;
        let data = &self.data;
        let flipped = self
            .flipped
            .get_or_insert_with(|| data.train.with_labels_flipped());
        Ok(self
            .trainer
            .train(params, flipped, shard, &self.spec, seed)?)
    }

    fn train_batches(
        &mut self,
        params: &[f32],
        batches: &[Vec<usize>],
        state: &mut OptimizerState,
        lr_scale: f64,
    ) -> Result<TrainOutcome, EngineError> {
        self.spec.lr_scale = lr_scale;
        Ok(self
            .trainer
            .train_batches(params, &self.data.train, batches, &self.spec, state)?)
    }

    fn evaluate(&mut self, params: &[f32]) -> Result<EvalOutcome, EngineError> {
        Ok(self.trainer.evaluate(params, &self.data.test, None)?)
    }

    fn evaluate_sample(
        &mut self,
        params: &[f32],
        max_samples: usize,
    ) -> Result<EvalOutcome, EngineError> {
        if max_samples >= self.eval_order.len() {
            return self.evaluate(params);
        }
        let idx = &self.eval_order[..max_samples];
        Ok(self.trainer.evaluate(params, &self.data.test, Some(idx))?)
    }
}

/// The settings of a decentralized run (algorithm `dsgd`).
pub fn dsgd_settings(prepared: &Prepared) -> Result<DsgdSettings, EngineError> {
    let c = &prepared.config;
    let d = c.decentralized.clone().unwrap_or_default();
    let mut rng = seed::rng(c.seed, &[seed::stream::TOPOLOGY]);
    let topology = Topology::new(d.topology.clone(), prepared.parts.len(), &mut rng)
        .map_err(|e| EngineError::Setup(format!("decentralized.{e}")))?;
    let settings = DsgdSettings {
        mixing: d.mixing.unwrap_or_else(|| topology.default_mixing()),
        topology,
        schedule: d.schedule(),
        total_steps: c.algorithm.steps.unwrap_or(0),
        eval_every: u64::from(c.algorithm.eval_every),
        eval_samples: d.eval_samples,
        batch_size: c.train.batch_size,
        num_params: prepared.arch.num_params(),
        lr_schedule: c.train.lr_schedule.clone(),
        gossip_deadline: d
            .gossip_timeout_s
            .and_then(|s| std::time::Duration::try_from_secs_f64(s).ok()),
        seed: c.seed,
        gossip_compression: c.compression.and_then(|k| k.gossip),
    };
    settings.validate()?;
    Ok(settings)
}

/// Builds a run's nodes: for the FedAvg family the server first, then the clients; for
/// `dsgd` the peers, then the monitor.
pub fn build_nodes(prepared: &Prepared) -> Result<Vec<Box<dyn Node>>, EngineError> {
    let c = &prepared.config;
    if c.algorithm.name.is_mutual() {
        let settings = Arc::new(prepared.mutual_settings()?);
        let global = if settings.variant == Variant::Fml {
            prepared.models[settings.global_model].init_params(c.seed)
        } else {
            Vec::new()
        };
        let mut nodes: Vec<Box<dyn Node>> =
            vec![Box::new(MutualHub::new(Arc::clone(&settings), global))];
        for (k, part) in prepared.parts.iter().enumerate() {
            // Clients with the same model start from the same seeded init, as FedAvg's do.
            let init = prepared.models[prepared.client_models[k]].init_params(c.seed);
            nodes.push(Box::new(MutualClient::new(
                k,
                Arc::clone(&settings),
                Arc::new(part.clone()),
                init,
            )));
        }
        return Ok(nodes);
    }
    if c.algorithm.name == AlgorithmName::Split {
        let settings = Arc::new(prepared.split_settings()?);
        let mut nodes: Vec<Box<dyn Node>> = vec![Box::new(SplitServer::new(
            Arc::clone(&settings),
            prepared.arch.init_params(c.seed),
        )?)];
        for (k, part) in prepared.parts.iter().enumerate() {
            nodes.push(Box::new(
                SplitClient::new(k as NodeId + 1, Arc::new(part.clone()), c.seed)
                    .with_compression(&settings),
            ));
        }
        return Ok(nodes);
    }
    if c.algorithm.name == AlgorithmName::Dsgd {
        let settings = Arc::new(dsgd_settings(prepared)?);
        let init = prepared.arch.init_params(c.seed);
        let mut nodes: Vec<Box<dyn Node>> = Vec::with_capacity(prepared.parts.len() + 1);
        for (id, part) in prepared.parts.iter().enumerate() {
            nodes.push(Box::new(DsgdPeer::new(
                id as NodeId,
                Arc::clone(&settings),
                part.clone(),
                init.clone(),
            )));
        }
        nodes.push(Box::new(DsgdMonitor::new(settings)));
        return Ok(nodes);
    }
    let clients: Vec<NodeId> = (1..=prepared.parts.len() as NodeId).collect();
    let secure = c.secure_aggregation.map(|sa| SecureSettings {
        threshold: sa.threshold_for(c.clients_per_round()),
        scale_bits: sa.scale_bits,
    });
    let delta = c.compression.is_some_and(|k| k.downlink_delta);
    let blocks = matrix_blocks(&prepared.arch);
    let initial = prepared.arch.init_params(c.seed);
    let server_config = ServerConfig {
        rounds: c.algorithm.rounds(),
        clients_per_round: c.clients_per_round(),
        eval_every: c.algorithm.eval_every,
        server_optimizer: c.algorithm.server_optimizer.clone(),
        seed: c.seed,
        round_deadline: c.algorithm.round_deadline(),
        min_replies: c.algorithm.min_replies.unwrap_or(1),
        aggregator: c.algorithm.aggregator,
    };
    let downlink = c.compression.and_then(|k| k.downlink);
    let server: Box<dyn Node> = if c.algorithm.name == AlgorithmName::Fedbuff {
        let f = c.fedbuff.unwrap_or_default();
        let per_round = c.clients_per_round();
        Box::new(
            FedBuffServer::new(
                server_config,
                FedBuffSettings {
                    concurrency: f.concurrency_for(per_round),
                    buffer: f.buffer_for(per_round),
                    staleness: f.staleness,
                    max_staleness: f.max_staleness,
                },
                clients.clone(),
                initial.clone(),
            )?
            .with_downlink(downlink),
        )
    } else {
        Box::new(
            FedAvgServer::new(server_config, clients.clone(), initial.clone())?
                .with_downlink(downlink.filter(|_| !delta))
                .with_downlink_delta(downlink.filter(|_| delta))
                .with_privacy(c.privacy, prepared.parts.len(), c.train.batch_size)
                .with_secure_aggregation(secure),
        )
    };
    let mut nodes: Vec<Box<dyn Node>> = vec![server];
    let bad = c.attack.map_or_else(Vec::new, |a| {
        braid_core::robust::bad_clients(clients.len(), a.fraction, c.seed)
    });
    for (k, (id, part)) in clients.iter().zip(&prepared.parts).enumerate() {
        let attack = c
            .attack
            .filter(|_| bad.binary_search(&k).is_ok())
            .map(|a| a.kind);
        nodes.push(Box::new(
            FedAvgClient::new(*id, Arc::new(part.clone()), c.seed)
                .with_lr_schedule(c.train.lr_schedule.clone(), c.algorithm.rounds())
                .with_compression(
                    &c.compression.unwrap_or_default(),
                    prepared.arch.num_params(),
                )
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

/// The model's matrix-shaped tensors in its flat parameter vector (a convolution's
/// `[out, in, kh, kw]` as `out` rows), for PowerSGD.
pub fn matrix_blocks(arch: &braid_nn::Arch) -> Vec<braid_core::lowrank::Block> {
    let mut offset = 0;
    let mut blocks = Vec::new();
    for shape in arch.param_shapes() {
        let len: usize = shape.dims.iter().product();
        if shape.dims.len() >= 2 {
            blocks.push(braid_core::lowrank::Block {
                offset,
                rows: shape.dims[0],
                cols: len / shape.dims[0].max(1),
            });
        }
        offset += len;
    }
    blocks
}

/// The simulated-time model of a run with `[latency]`: the server (node 0) at the server's
/// speed, clients with stragglers drawn from the seed.
pub fn timing(prepared: &Prepared) -> Option<Timing> {
    let c = &prepared.config;
    c.latency.map(|l| {
        Timing::new(
            &l,
            prepared.parts.len() + 1,
            &[SERVER],
            &mut braid_core::seed::rng(c.seed, &[braid_core::seed::stream::LATENCY]),
        )
    })
}

/// Runs a prepared experiment in the simulator, reporting events to `observer`.
pub fn run(
    prepared: &Prepared,
    observer: &mut dyn FnMut(&Event),
) -> Result<SimOutcome, EngineError> {
    let nodes = build_nodes(prepared)?;
    let workers = (0..prepared.workers())
        .map(|_| Worker::new(Box::new(BurnTrainer::new(prepared)?)))
        .collect::<Result<Vec<_>, _>>()?;
    Simulator::new(nodes, workers)?
        .with_timing(timing(prepared))
        .run(observer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use braid_nn::{Arch, ModelName};

    #[test]
    fn matrix_blocks_cover_every_weight_of_each_model_in_order() {
        for name in [
            ModelName::Mlp,
            ModelName::Cnn,
            ModelName::CnnSmall,
            ModelName::CnnDeep,
        ] {
            let arch = Arch::new(name, &[1, 28, 28], 10).unwrap();
            let blocks = matrix_blocks(&arch);
            let weights: Vec<_> = arch
                .param_shapes()
                .into_iter()
                .filter(|s| s.dims.len() >= 2)
                .collect();
            assert_eq!(blocks.len(), weights.len());
            for (b, w) in blocks.iter().zip(&weights) {
                assert_eq!(b.rows * b.cols, w.dims.iter().product::<usize>());
            }
            // In order, inside the vector; biases lie between them.
            assert!(blocks
                .windows(2)
                .all(|p| p[0].offset + p[0].rows * p[0].cols < p[1].offset));
            let last = blocks.last().unwrap();
            assert!(last.offset + last.rows * last.cols < arch.num_params());
        }
    }
}
