//! Batched clients (`[runtime] batch_clients = true`): the training calls of the clients the
//! simulator handles at once become one stacked computation ([`braid_nn::stacked`]).
//!
//! Nodes do not change: each client still calls [`crate::trainer::Train::train`] from its
//! worker thread. Every worker's trainer hands the call to one shared [`ClientBatcher`],
//! which waits until every task of the simulator's current wave has either called it or
//! finished, then trains the gathered calls as one stack on one thread and hands each caller
//! its own result. The simulator runs waves of fixed composition ([`crate::sim::Waves`]), so
//! who trains with whom, and in which position of the stack, is the same in every run of a
//! config: batched runs are deterministic by seed. They equal runs without batching within
//! float tolerance (the stack sums in another order), not bit for bit.
//!
//! Only the simulator batches: a launched node trains its one client alone.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use braid_data::DataSplit;
use braid_nn::stacked::{StackedJob, StackedTrainer};
use braid_nn::{NnError, TrainOutcome};

use crate::node::{EngineError, EngineResult};
use crate::prepared::Prepared;

/// What the batcher has gathered.
#[derive(Default)]
struct Gather {
    /// Tasks of the current wave that have not finished.
    active: usize,
    /// A stack is being trained.
    running: bool,
    /// Calls waiting, by the caller's worker slot.
    pending: BTreeMap<usize, StackedJob>,
    /// Results not yet collected, by slot.
    results: BTreeMap<usize, Result<TrainOutcome, NnError>>,
}

/// Gathers the training calls of one wave of clients and trains them as one stack.
pub struct ClientBatcher {
    gather: Mutex<Gather>,
    wake: Condvar,
    stacked: Mutex<StackedTrainer>,
    data: Arc<DataSplit>,
    /// Stacks trained so far.
    stacks: std::sync::atomic::AtomicUsize,
    /// One thread: burn's CPU operations split their sums by the threads they run on, and a
    /// stack must give the same bits whichever worker (or the caller's many-threaded pool)
    /// trains it.
    pool: rayon::ThreadPool,
}

impl ClientBatcher {
    /// A batcher for `prepared`'s model and training set, or why its clients cannot be
    /// batched.
    pub fn new(prepared: &Prepared) -> EngineResult<Self> {
        let refuse = |why: String| {
            EngineError::from(crate::error::Invalid::not_applicable(
                "runtime.batch_clients",
                format!("runtime.batch_clients = true: {why}; set it to false"),
            ))
        };
        let arch = prepared.model.arch().ok_or_else(|| {
            refuse(format!(
                "stacked training covers the built-in models, and model {:?} is not one",
                prepared.model.name()
            ))
        })?;
        if prepared.data.train.task() != braid_data::Task::Classify {
            return Err(refuse(format!(
                "stacked training covers classification, and this data is for {:?}",
                prepared.data.train.task()
            )));
        }
        if prepared.config.train_spec().dp_sgd.is_some() {
            return Err(refuse(
                "DP-SGD clips each sample's gradient, so its clients train one at a time".into(),
            ));
        }
        let device = &prepared.config.runtime.device;
        Ok(Self {
            gather: Mutex::new(Gather::default()),
            wake: Condvar::new(),
            stacked: Mutex::new(StackedTrainer::new(arch, device)?),
            data: Arc::clone(&prepared.data),
            stacks: Default::default(),
            pool: rayon::ThreadPoolBuilder::new()
                .num_threads(1)
                .build()
                .map_err(|e| {
                    EngineError::Driver(format!("cannot start the batcher's thread pool: {e}"))
                })?,
        })
    }

    fn lock(&self) -> EngineResult<MutexGuard<'_, Gather>> {
        self.gather
            .lock()
            .map_err(|_| EngineError::Driver("the client batcher's lock is poisoned".into()))
    }

    /// Stops stacked training after the step in progress once `flag` is set (a halt).
    pub fn set_stop_flag(&self, flag: Arc<AtomicBool>) {
        if let Ok(mut t) = self.stacked.lock() {
            t.set_stop_flag(flag);
        }
    }

    /// Trains `job` for the worker in `slot` together with the other calls of its wave;
    /// blocks until its result is ready.
    pub fn train(&self, slot: usize, job: StackedJob) -> EngineResult<TrainOutcome> {
        let mut g = self.lock()?;
        if g.pending.insert(slot, job).is_some() {
            return Err(EngineError::Driver(format!(
                "two training calls from worker {slot} at once"
            )));
        }
        loop {
            if let Some(result) = g.results.remove(&slot) {
                return Ok(result?);
            }
            if !g.running && !g.pending.is_empty() && g.pending.len() >= g.active {
                // Every task of the wave is waiting here or has finished: train the stack.
                let (slots, jobs): (Vec<usize>, Vec<StackedJob>) =
                    std::mem::take(&mut g.pending).into_iter().unzip();
                g.running = true;
                drop(g);
                let results = self.run(&jobs);
                g = self.lock()?;
                g.running = false;
                g.results.extend(slots.into_iter().zip(results));
                self.wake.notify_all();
                continue;
            }
            g = self
                .wake
                .wait(g)
                .map_err(|_| EngineError::Driver("the client batcher's lock is poisoned".into()))?;
        }
    }

    /// How many stacks it has trained (0 after a run: the algorithm's nodes never called
    /// [`crate::trainer::Train::train`], so batching did nothing).
    pub fn stacks(&self) -> usize {
        self.stacks.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Trains `jobs` as one stack; a panic in the backend becomes every job's error, so no
    /// caller waits for ever.
    fn run(&self, jobs: &[StackedJob]) -> Vec<Result<TrainOutcome, NnError>> {
        let failed = |why: &str| -> Vec<Result<TrainOutcome, NnError>> {
            jobs.iter()
                .map(|_| Err(NnError::Config(why.to_string())))
                .collect()
        };
        self.stacks
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let Ok(mut stacked) = self.stacked.lock() else {
            return failed("the stacked trainer's lock is poisoned");
        };
        let data = &self.data.train;
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let stacked: &mut StackedTrainer = &mut stacked;
            self.pool.install(|| stacked.train(jobs, data))
        })) {
            Ok(results) => results,
            Err(_) => failed("stacked training panicked in the tensor backend"),
        }
    }
}

impl crate::sim::Waves for ClientBatcher {
    fn begin(&self, tasks: usize) {
        if let Ok(mut g) = self.lock() {
            g.active = tasks;
        }
    }

    fn done(&self) {
        if let Ok(mut g) = self.lock() {
            g.active = g.active.saturating_sub(1);
        }
        // A waiting call may now be the last of its wave.
        self.wake.notify_all();
    }
}
