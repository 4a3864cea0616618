//! From a config to a finished run, for any registered algorithm: prepare, simulate, and the
//! outcome's reports; what a [`crate::algorithm::Registry`] entry does for the CLI and the
//! network runtime.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::algorithm::{
    Algorithm, Baseline, Entry, Feature, Finished, MetricsOf, MsgOf, Registered, ReplayInput,
    Replayed, Summary, TrainerOf,
};
use crate::batched::ClientBatcher;
use crate::config::ExperimentConfig;
use crate::error::Invalid;
use crate::node::{EngineError, EngineResult, Event, Metrics};
use crate::report::Rows;
use crate::sim::{SimOutcome, Simulator, Waves, Worker};
use crate::trainer::TrainerObject;
use crate::wire::{Message, NodeId};
use crate::wire_node::{Decoded, WireInput, WireNode};

pub use crate::prepared::{matrix_blocks, prepare_data, BurnTrainer, Prepared};

/// Loads, partitions and prepares `config` for its algorithm in braid's built-in registry.
pub fn prepare(config: &ExperimentConfig) -> EngineResult<Prepared> {
    crate::algorithm::Registry::builtin()
        .of(config)?
        .prepare(config)
}

/// Runs a prepared experiment of algorithm `A` in the simulator, reporting events to
/// `observer`.
pub fn simulate<A: Algorithm>(
    prepared: &Prepared, settings: &A::Config, observer: &mut dyn FnMut(&Event<MetricsOf<A>>),
) -> EngineResult<SimOutcome<MetricsOf<A>>> {
    let nodes = A::build(prepared, settings)?;
    let batcher = if prepared.config.runtime.batch_clients {
        Some(Arc::new(ClientBatcher::new(prepared)?))
    } else {
        None
    };
    let workers = (0..prepared.workers())
        .map(|slot| {
            let mut trainer = BurnTrainer::new(prepared)?;
            if let Some(b) = &batcher {
                trainer = trainer.with_batcher(Arc::clone(b), slot);
            }
            Worker::new(<TrainerOf<A>>::from_full(trainer))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let outcome = Simulator::new(nodes, workers)?
        .with_timing(A::timing(prepared, settings))
        .with_waves(batcher.clone().map(|b| b as Arc<dyn Waves>))
        .run(observer)?;
    if batcher.is_some_and(|b| b.stacks() == 0) {
        tracing::warn!(
            "runtime.batch_clients = true did nothing: algorithm {:?} trains no client through Train::train (batching covers the FedAvg family)",
            prepared.config.algorithm.name
        );
    }
    Ok(outcome)
}

/// Runs `prepared`, whose config names algorithm `A`, in the simulator: [`simulate`] with the
/// settings `A` reads from the config.
pub fn run<A: Algorithm>(
    prepared: &Prepared, observer: &mut dyn FnMut(&Event<MetricsOf<A>>),
) -> EngineResult<SimOutcome<MetricsOf<A>>> {
    let settings = A::config(&prepared.config)?;
    simulate::<A>(prepared, &settings, observer)
}

/// A finished run of algorithm `A`: what [`Finished`] prints and writes.
pub struct Outcome<A: Algorithm> {
    /// The run.
    pub prepared: Prepared,
    /// Its algorithm's settings.
    pub settings: A::Config,
    /// What it produced.
    pub outcome: SimOutcome<MetricsOf<A>>,
}

impl<A: Algorithm> Finished for Outcome<A> {
    fn table(&self) -> String {
        <MetricsOf<A> as Rows>::table(&self.prepared.config, &self.outcome.rows)
    }

    fn write(&self, dir: &Path) -> Result<Vec<PathBuf>, String> {
        let role = |i: usize, n: usize| A::role(&self.settings, i, n);
        crate::report::write_all(dir, &self.prepared, &role, &self.outcome)
    }

    fn summary(&self) -> Summary {
        A::summary(&self.prepared, &self.settings, &self.outcome.rows)
    }
}

impl<A: Algorithm> Entry<A> {
    fn settings(config: &ExperimentConfig) -> EngineResult<A::Config> {
        A::config(config).map_err(EngineError::from)
    }
}

impl<A: Algorithm> Registered for Entry<A> {
    fn name(&self) -> &'static str {
        A::NAME
    }

    fn arrival_order_matters(&self) -> bool {
        A::ARRIVAL_ORDER_MATTERS
    }

    fn protocol(&self) -> (&'static str, u8) {
        (<MsgOf<A> as Message>::PROTOCOL, <MsgOf<A> as Message>::TAG)
    }

    fn tables(&self) -> &'static [&'static str] {
        A::TABLES
    }

    fn features(&self) -> &'static [Feature] {
        A::FEATURES
    }

    fn instead(&self, feature: Feature) -> Option<&'static str> {
        A::instead(feature)
    }

    fn check(&self, config: &ExperimentConfig) -> Result<(), Invalid> {
        A::config(config).map(|_| ())
    }

    fn shards(&self, config: &ExperimentConfig) -> usize {
        A::shards(config)
    }

    fn prepare(&self, config: &ExperimentConfig) -> EngineResult<Prepared> {
        let settings = Self::settings(config)?;
        let mut prepared = prepare_data(config, A::shards(config))?;
        A::prepare(&mut prepared, &settings)?;
        Ok(prepared)
    }

    fn node_of_shard(&self, k: usize) -> NodeId {
        A::node_of_shard(k)
    }

    fn shard_of_node(&self, id: NodeId, shards: usize) -> Option<usize> {
        A::shard_of_node(id, shards)
    }

    fn role(&self, config: &ExperimentConfig, node: usize, nodes: usize) -> &'static str {
        match A::config(config) {
            Ok(s) => A::role(&s, node, nodes),
            Err(_) => "node",
        }
    }

    fn max_message_values(&self, prepared: &Prepared) -> EngineResult<usize> {
        Ok(A::max_message_values(
            prepared,
            &Self::settings(&prepared.config)?,
        ))
    }

    fn describe(&self, prepared: &Prepared) -> EngineResult<String> {
        Ok(A::describe(prepared, &Self::settings(&prepared.config)?))
    }

    fn progress(&self, config: &ExperimentConfig) -> EngineResult<(&'static str, u64)> {
        Ok(A::progress(config, &Self::settings(config)?))
    }

    fn baseline(&self, config: &ExperimentConfig) -> Option<Baseline> {
        A::baseline(config)
    }

    fn explore_faults(
        &self, prepared: &Prepared, plan: &crate::sim::faults::FaultPlan,
        seeds: std::ops::Range<u64>, replay_every: u64, progress: &mut dyn FnMut(u64, bool),
    ) -> EngineResult<Vec<crate::sim::faults::Broken>> {
        let settings = Self::settings(&prepared.config)?;
        crate::sim::faults::explore::<A>(prepared, &settings, plan, seeds, replay_every, progress)
    }

    fn simulate(
        &self, prepared: &Prepared, on_progress: &mut dyn FnMut(u64, Option<f64>),
    ) -> EngineResult<Box<dyn Finished>> {
        let settings = Self::settings(&prepared.config)?;
        let outcome = simulate::<A>(prepared, &settings, &mut |e| {
            if let crate::node::Event::Metrics(m) = e {
                let (at, acc) = m.progress();
                on_progress(at, acc);
            }
        })?;
        Ok(Box::new(Outcome::<A> {
            prepared: prepared.clone(),
            settings,
            outcome,
        }))
    }

    fn deploy(&self, prepared: &Prepared, id: NodeId) -> EngineResult<Box<dyn WireNode>> {
        let settings = Self::settings(&prepared.config)?;
        let limits = crate::wire::Limits::new(A::max_message_values(prepared, &settings));
        let nodes = A::build(prepared, &settings)?;
        let n = nodes.len();
        let node = nodes
            .into_iter()
            .find(|node| node.id() == id)
            .ok_or_else(|| {
                EngineError::Driver(format!(
                    "node {id} is not part of this run (it has nodes 0..{n})"
                ))
            })?;
        let trainer = <TrainerOf<A>>::from_full(BurnTrainer::new(prepared)?);
        Ok(Box::new(crate::wire_node::Wired::new(
            node, trainer, limits,
        )))
    }

    fn replay_inputs(&self) -> &'static [&'static str] {
        <MsgOf<A> as Message>::REPLAYED
    }

    fn not_replayed(&self, id: NodeId) -> Option<&'static str> {
        A::not_replayed(id)
    }

    fn replay(
        &self, prepared: &Prepared, id: NodeId, state: Option<&[u8]>, inputs: &[ReplayInput<'_>],
    ) -> EngineResult<Vec<Replayed>> {
        let mut node = self.deploy(prepared, id)?;
        node.keep_checkpoints();
        node.hash_models();
        if let Some(bytes) = state {
            let path = std::path::Path::new("the kept state");
            node.load_state(crate::checkpoint::decode_state(bytes, path)?)?;
        }
        let state_hash = |node: &dyn WireNode| -> EngineResult<Option<String>> {
            node.save_state()
                .map(|s| {
                    crate::checkpoint::encode_state(s).map(|b| crate::accounting::sha256_hex(&b))
                })
                .transpose()
        };
        let mut before = state_hash(node.as_ref())?;
        let mut out = Vec::with_capacity(inputs.len());
        for input in inputs {
            let input = match *input {
                ReplayInput::Start => WireInput::Start,
                ReplayInput::Message { from, bytes } => {
                    WireInput::Message(from, replayed_body::<A>(node.as_ref(), bytes)?)
                }
            };
            let round = node.round_of(&input);
            let (handled, result) = node.handle(input);
            match result {
                Ok(()) | Err(EngineError::Rejected { .. }) => {}
                Err(e) => return Err(e),
            }
            let after = state_hash(node.as_ref())?;
            let sent = handled
                .outbox
                .iter()
                .map(|(to, m)| (*to, crate::accounting::sha256_hex(&m.bytes)))
                .collect();
            out.push(Replayed {
                compute: handled.compute,
                models: handled.models,
                round,
                states: before.clone().zip(after.clone()),
                sent,
            });
            before = after;
        }
        Ok(out)
    }

    fn finished_from_rows(
        &self, prepared: &Prepared, rows: Vec<(serde_json::Value, f64)>,
        final_params: Option<Vec<f32>>,
    ) -> EngineResult<Box<dyn Finished>> {
        let settings = Self::settings(&prepared.config)?;
        let rows = rows
            .into_iter()
            .map(|(v, w)| {
                serde_json::from_value::<MetricsOf<A>>(v)
                    .map(|m| (m, w))
                    .map_err(|e| EngineError::Driver(format!("a reported row: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Box::new(Outcome::<A> {
            prepared: prepared.clone(),
            settings,
            outcome: crate::sim::SimOutcome {
                rows,
                final_params,
                ..Default::default()
            },
        }))
    }
}

/// A kept message's body, decoded by `node`'s protocol; only kinds `A` replays.
fn replayed_body<A: Algorithm>(
    node: &dyn WireNode, bytes: &[u8],
) -> EngineResult<Box<dyn std::any::Any + Send>> {
    match (node.decoder())(bytes) {
        Ok(Decoded::Input { kind, body }) if <MsgOf<A> as Message>::REPLAYED.contains(&kind) => {
            Ok(body)
        }
        Ok(Decoded::Input { kind, .. }) => Err(EngineError::Unsupported(format!(
            "a {kind} message of {} is not replayed (replayed: {})",
            A::NAME,
            if <MsgOf<A> as Message>::REPLAYED.is_empty() {
                "none".to_string()
            } else {
                <MsgOf<A> as Message>::REPLAYED.join(", ")
            }
        ))),
        Ok(Decoded::Halt(_)) => Err(EngineError::Unsupported("a halt is not replayed".into())),
        Err(e) => Err(EngineError::Driver(format!("the kept input: {e}"))),
    }
}
