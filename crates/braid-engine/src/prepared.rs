//! A run prepared from its config: data loaded and partitioned, the model and the seeds
//! ([`Prepared`]), and braid's trainer on burn models ([`BurnTrainer`]).

use std::sync::Arc;

use braid_core::partition::{self, label_histogram};
use braid_core::seed;
use braid_data::DataSplit;
use braid_nn::stacked::StackedJob;
use braid_nn::{
    BoundModel, DataShape, EvalOutcome, Member, ModelTrainer, MutualOutcome, MutualSpec,
    MutualTrainer, OptimizerState, ServerStep, SplitShape, SplitTrainer, SupervisedLoss,
    TrainOutcome, TrainSpec,
};
use rand::seq::SliceRandom;

use crate::batched::ClientBatcher;
use crate::config::ExperimentConfig;
use crate::dishonest::Dishonesty;
use crate::node::{EngineError, EngineResult};
use crate::trainer::{
    Evaluate, FlipLabels, MutualSteps, SplitSteps, Train, TrainSteps, Trainer as Capabilities,
};

/// A config with its data loaded and partitioned, ready to run.
#[derive(Clone)]
pub struct Prepared {
    /// The config.
    pub config: ExperimentConfig,
    /// Train and test data.
    pub data: Arc<DataSplit>,
    /// Training-sample indices of each client.
    pub parts: Vec<Vec<usize>>,
    /// The model bound to the data.
    pub model: BoundModel,
    /// Human-readable data source.
    pub data_description: String,
    /// Where and how the model is cut in two (split learning sets it).
    pub split: Option<SplitShape>,
    /// The run's list of models bound to the data (mutual learning sets it; empty
    /// otherwise).
    pub models: Vec<BoundModel>,
    /// Each client's model, an index into `models` (mutual learning; empty otherwise).
    pub client_models: Vec<usize>,
    /// Mutual learning's distillation temperature and supervised loss (mutual learning sets
    /// it).
    pub mutual_spec: Option<(f64, SupervisedLoss)>,
    /// This process trains dishonestly (`braid node --dishonest`; `None` in every honest run).
    pub dishonesty: Option<Dishonesty>,
}

/// Refuses a run of `what` (an algorithm family) on data that is not for classification.
pub(crate) fn classification_only(p: &Prepared, what: &str) -> EngineResult {
    match p.data.train.task() {
        braid_data::Task::Classify => Ok(()),
        other => Err(EngineError::Unsupported(format!(
            "{what} trains classifiers; this data is for {other:?} (the FedAvg family and dsgd train any task)"
        ))),
    }
}

/// Loads the data, partitions it into `shards` shards and binds the model; errors name what
/// is wrong. Algorithms add what they need with [`crate::algorithm::Algorithm::prepare`].
pub fn prepare_data(config: &ExperimentConfig, shards: usize) -> EngineResult<Prepared> {
    let data = braid_data::load(&config.data, config.seed)
        .map_err(|e| EngineError::Data(e.to_string()))?;
    let data_description = config.data.describe();
    let model = config.model.bind(&DataShape::of(&data.train))?;
    let scheme = config.partition.scheme()?;
    let by_label = !matches!(
        scheme,
        partition::PartitionScheme::Iid | partition::PartitionScheme::Natural
    );
    if by_label && shards > 1 && data.train.task() != braid_data::Task::Classify {
        return Err(EngineError::Data(format!(
            "partition.kind {:?} splits by class label, and this data is for {:?}, which has none; use \"iid\" or \"natural\"",
            config.partition.kind,
            data.train.task()
        )));
    }
    let parts = if shards == 1 {
        vec![(0..data.train.len()).collect()]
    } else {
        let mut rng = seed::rng(config.seed, &[seed::stream::PARTITION]);
        partition::partition(
            &scheme,
            data.train.labels(),
            data.train.groups(),
            data.train.num_classes(),
            shards,
            &mut rng,
        )
        .map_err(|e| EngineError::Data(e.to_string()))?
    };
    Ok(Prepared {
        config: config.clone(),
        data: Arc::new(data),
        parts,
        model,
        data_description,
        split: None,
        models: Vec::new(),
        client_models: Vec::new(),
        mutual_spec: None,
        dishonesty: None,
    })
}

impl Prepared {
    /// Replaces shard `k` by `own`, a participant's own training data (`braid node --data`):
    /// the participant trains on all of it; the test set and the model stay as configured.
    /// For one node's process only: the other shards' indices no longer mean anything.
    pub fn use_own_data(&mut self, k: usize, own: braid_data::Dataset) -> EngineResult {
        let train = &self.data.train;
        if own.sample_shape() != train.sample_shape() || own.num_classes() != train.num_classes() {
            return Err(EngineError::Data(format!(
                "own data has samples of shape {:?} with {} classes; the experiment's have {:?} with {}",
                own.sample_shape(),
                own.num_classes(),
                train.sample_shape(),
                train.num_classes()
            )));
        }
        if own.is_empty() {
            return Err(EngineError::Data("own data holds no samples".into()));
        }
        let part = self
            .parts
            .get_mut(k)
            .ok_or_else(|| EngineError::Data(format!("there is no shard {k}")))?;
        *part = (0..own.len()).collect();
        self.data = Arc::new(DataSplit {
            train: own,
            test: self.data.test.clone(),
        });
        Ok(())
    }

    /// The model a run starts from: the weights of `[model] init` if set, else the seeded
    /// init from the run's seed.
    pub fn initial_params(&self) -> EngineResult<Vec<f32>> {
        Ok(match &self.config.model.init {
            Some(path) => self.model.load(path)?,
            None => self.model.init_params(self.config.seed)?,
        })
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
        let auto = if self.config.runtime.batch_clients {
            self.config.clients_per_round()
        } else if self.config.runtime.device.is_accelerator() {
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
}

/// An evaluator of one model of mutual learning's list, made on first use.
type Evaluator = Box<dyn ModelTrainer>;

/// braid's trainer on burn: trains on the shared training set, evaluates on the test set. It
/// has every capability of [`crate::trainer`] (split and mutual learning when the run set up
/// a split model or a list of models).
pub struct BurnTrainer {
    trainer: Box<dyn ModelTrainer>,
    /// Compute per sample of the run's model.
    flops: crate::accounting::FlopsPerSample,
    /// Mutual learning over the run's list of models, and one evaluator per model (made on
    /// first use).
    mutual: Option<(MutualTrainer, Vec<Option<Evaluator>>)>,
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
    /// How this process lies about [`Train::train`], and the shard it trains on instead.
    dishonesty: Option<(Dishonesty, Vec<usize>)>,
    /// Batched clients: the batcher the workers share, and this worker's slot in it.
    batcher: Option<(Arc<ClientBatcher>, usize)>,
}

impl BurnTrainer {
    /// A trainer for `prepared`'s model and data.
    pub fn new(prepared: &Prepared) -> EngineResult<Self> {
        let device = &prepared.config.runtime.device;
        Ok(Self {
            trainer: prepared.model.trainer(device)?,
            flops: crate::accounting::FlopsPerSample {
                train: prepared.model.train_flops(),
                forward: prepared.model.forward_flops(),
            },
            mutual: if prepared.mutual_spec.is_some() {
                Some((
                    MutualTrainer::new(prepared.models.clone(), device)?,
                    prepared.models.iter().map(|_| None).collect(),
                ))
            } else {
                None
            },
            mutual_spec: prepared.mutual_spec.unwrap_or((1.0, SupervisedLoss::Ce)),
            split: prepared
                .split
                .as_ref()
                .map(|s| prepared.model.split_trainer(s, device))
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
            dishonesty: match &prepared.dishonesty {
                None => None,
                Some(d @ Dishonesty::Shard(k)) => {
                    let shard = prepared.parts.get(*k).ok_or_else(|| {
                        EngineError::Data(format!(
                            "--dishonest shard={k}: the run has {} shards",
                            prepared.parts.len()
                        ))
                    })?;
                    Some((d.clone(), shard.clone()))
                }
                Some(d) => Some((d.clone(), Vec::new())),
            },
            batcher: None,
        })
    }

    /// The trainer of worker `slot` of a simulator whose workers train their clients
    /// together through `batcher` (`runtime.batch_clients`).
    pub fn with_batcher(mut self, batcher: Arc<ClientBatcher>, slot: usize) -> Self {
        self.batcher = Some((batcher, slot));
        self
    }
}

fn no_models() -> EngineError {
    EngineError::Unsupported(
        "this run has no list of models (a mutual-learning algorithm sets one up)".into(),
    )
}

impl BurnTrainer {
    /// The learning-rate factor of a `--dishonest lr=F` participant (1 for everyone else):
    /// mutual and split learning's lie (their training takes no other).
    fn lr_factor(&self) -> f64 {
        match &self.dishonesty {
            Some((Dishonesty::LearningRate(f), _)) => *f,
            _ => 1.0,
        }
    }

    fn split_part(&mut self) -> EngineResult<&mut SplitTrainer> {
        self.split.as_mut().ok_or_else(|| {
            EngineError::Unsupported(
                "this run has no split model (algorithm.name = \"split\")".into(),
            )
        })
    }
}

impl MutualSteps for BurnTrainer {
    fn mutual_train(
        &mut self, members: &[Member<'_>], batches: &[Vec<usize>], alpha: f64, lr_scale: f64,
    ) -> EngineResult<MutualOutcome> {
        let spec = MutualSpec {
            optimizer: self.spec.optimizer.clone(),
            alpha,
            temperature: self.mutual_spec.0,
            supervised: self.mutual_spec.1,
            lr_scale: lr_scale * self.lr_factor(),
        };
        let data = Arc::clone(&self.data);
        let (trainer, _) = self.mutual.as_mut().ok_or_else(no_models)?;
        Ok(trainer.train(members, &data.train, batches, &spec)?)
    }
    fn evaluate_arch(
        &mut self, arch: usize, params: &[f32], max_samples: usize,
    ) -> EngineResult<EvalOutcome> {
        let device = self.device.clone();
        let (trainer, evaluators) = self.mutual.as_mut().ok_or_else(no_models)?;
        let model = trainer.models().get(arch).cloned().ok_or_else(|| {
            EngineError::Data(format!("model index {arch} is outside the list of models"))
        })?;
        let slot = evaluators
            .get_mut(arch)
            .ok_or_else(|| EngineError::Data(format!("no evaluator for model {arch}")))?;
        if slot.is_none() {
            *slot = Some(model.trainer(&device)?);
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
            .and_then(|(t, _)| t.models().get(arch))
            .map_or_else(Default::default, |a| crate::accounting::FlopsPerSample {
                train: a.train_flops(),
                forward: a.forward_flops(),
            })
    }
}

impl SplitSteps for BurnTrainer {
    fn split_forward(
        &mut self, params: &[f32], samples: &[usize],
    ) -> EngineResult<(Vec<f32>, Vec<u32>)> {
        let data = Arc::clone(&self.data);
        Ok(self
            .split_part()?
            .client_forward(params, &data.train, samples)?)
    }
    fn split_backward(
        &mut self, params: &[f32], samples: &[usize], grad: &[f32],
    ) -> EngineResult<Vec<f32>> {
        let data = Arc::clone(&self.data);
        Ok(self
            .split_part()?
            .client_backward(params, &data.train, samples, grad)?)
    }
    fn split_server_step(
        &mut self, params: &[f32], acts: &[f32], labels: &[u32], state: &mut OptimizerState,
        lr_scale: f64,
    ) -> EngineResult<ServerStep> {
        let opt = self.spec.optimizer.clone();
        let lr_scale = lr_scale * self.lr_factor();
        Ok(self
            .split_part()?
            .server_step(params, acts, labels, &opt, state, lr_scale)?)
    }
    fn split_client_update(
        &mut self, params: &[f32], grad: &[f32], state: &mut OptimizerState, lr_scale: f64,
    ) -> EngineResult<Vec<f32>> {
        let opt = self.spec.optimizer.clone();
        let lr_scale = lr_scale * self.lr_factor();
        Ok(self
            .split_part()?
            .client_update(params, grad, &opt, state, lr_scale)?)
    }
    fn split_flops(&self) -> (u64, u64) {
        self.split
            .as_ref()
            .map_or((0, 0), |s| (s.shape().client_flops, s.shape().server_flops))
    }
}

impl Capabilities for BurnTrainer {
    fn set_stop_flag(&mut self, flag: Arc<std::sync::atomic::AtomicBool>) {
        if let Some((batcher, _)) = &self.batcher {
            batcher.set_stop_flag(Arc::clone(&flag));
        }
        self.trainer.set_stop_flag(flag);
    }
    fn flops_per_sample(&self) -> crate::accounting::FlopsPerSample {
        self.flops
    }
    fn label_flipper(&mut self) -> Option<&mut dyn FlipLabels> {
        // Next-token windows have no labels to flip.
        (self.data.train.task() == braid_data::Task::Classify).then_some(self as _)
    }
}

impl Train for BurnTrainer {
    fn train(
        &mut self, params: &[f32], shard: &[usize], seed: u64, lr_scale: f64,
    ) -> EngineResult<TrainOutcome> {
        self.spec.lr_scale = lr_scale;
        let shard = match &self.dishonesty {
            None => {
                if let Some((batcher, slot)) = &self.batcher {
                    let job = StackedJob::new(params.to_vec(), shard, self.spec.clone(), seed);
                    return batcher.train(*slot, job);
                }
                shard
            }
            Some((Dishonesty::Skip, _)) => {
                return Ok(crate::dishonest::skipped(params, shard, &self.spec, seed))
            }
            Some((Dishonesty::LearningRate(f), _)) => {
                self.spec.lr_scale *= f;
                shard
            }
            Some((Dishonesty::Shard(_), other)) => other,
        };
        Ok(self
            .trainer
            .train(params, &self.data.train, shard, &self.spec, seed)?)
    }
}

impl FlipLabels for BurnTrainer {
    fn train_label_flipped(
        &mut self, params: &[f32], shard: &[usize], seed: u64, lr_scale: f64,
    ) -> EngineResult<TrainOutcome> {
        self.spec.lr_scale = lr_scale;
        let data = &self.data;
        let flipped = self
            .flipped
            .get_or_insert_with(|| data.train.with_labels_flipped());
        Ok(self
            .trainer
            .train(params, flipped, shard, &self.spec, seed)?)
    }
}

impl TrainSteps for BurnTrainer {
    fn train_batches(
        &mut self, params: &[f32], batches: &[Vec<usize>], state: &mut OptimizerState,
        lr_scale: f64,
    ) -> EngineResult<TrainOutcome> {
        self.spec.lr_scale = lr_scale;
        let other_data: Vec<Vec<usize>>;
        let batches = match &self.dishonesty {
            None => batches,
            Some((Dishonesty::Skip, _)) => {
                return Ok(TrainOutcome {
                    params: params.to_vec(),
                    samples: batches.iter().map(Vec::len).sum(),
                    steps: batches.len(),
                    mean_loss: 0.0,
                })
            }
            Some((Dishonesty::LearningRate(f), _)) => {
                self.spec.lr_scale *= f;
                batches
            }
            // The same batch sizes, drawn from the other shard.
            Some((Dishonesty::Shard(_), other)) if !other.is_empty() => {
                other_data = batches
                    .iter()
                    .map(|b| b.iter().map(|&i| other[i % other.len()]).collect())
                    .collect();
                &other_data
            }
            Some((Dishonesty::Shard(_), _)) => batches,
        };
        Ok(self
            .trainer
            .train_batches(params, &self.data.train, batches, &self.spec, state)?)
    }
}

impl Evaluate for BurnTrainer {
    fn evaluate(&mut self, params: &[f32]) -> EngineResult<EvalOutcome> {
        Ok(self.trainer.evaluate(params, &self.data.test, None)?)
    }
    fn evaluate_sample(&mut self, params: &[f32], max_samples: usize) -> EngineResult<EvalOutcome> {
        if max_samples >= self.eval_order.len() {
            return self.evaluate(params);
        }
        let idx = &self.eval_order[..max_samples];
        Ok(self.trainer.evaluate(params, &self.data.test, Some(idx))?)
    }
}

/// The model's matrix-shaped tensors in its flat parameter vector (a convolution's
/// `[out, in, kh, kw]` as `out` rows), for PowerSGD.
pub fn matrix_blocks(params: &[braid_nn::arch::ParamShape]) -> Vec<braid_core::lowrank::Block> {
    let mut offset = 0;
    let mut blocks = Vec::new();
    for shape in params {
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
            let blocks = matrix_blocks(&arch.param_shapes());
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
