//! `braid bench`: FedAvg throughput and framework overhead.
//!
//! Runs the same FedAvg job (reference CNN, plain SGD lr 0.05, batch 32, one local epoch,
//! IID clients) through braid's simulator with each requested worker count, then runs the same
//! SGD steps in a bare burn training loop (no messages, no flat parameter copies, no
//! aggregation: each selected client's shard trained from a clone of one model, on the same
//! thread layout), and prints wall times and their ratio. Both evaluate once at the end.
//! Runs alternate in one sitting; compare ratios, not absolute times, on a noisy machine.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::Result;
use braid_core::seed;
use braid_engine::algorithm::Algorithm;
use braid_engine::algorithms::fedavg::FedAvg;
use braid_engine::config::ExperimentConfig;
use braid_engine::experiment::{self, Prepared};
use braid_nn::net::Net;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{GradientsParams, SgdConfig};
use burn::tensor::{Device, Int, Tensor, TensorData};
use clap::Args;
use rand::seq::SliceRandom;

/// Options of `braid bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Number of clients.
    #[arg(long, default_value_t = 10)]
    clients: usize,
    /// Clients per round (default: all).
    #[arg(long)]
    per_round: Option<usize>,
    /// Rounds.
    #[arg(long, default_value_t = 2)]
    rounds: u32,
    /// Fashion-MNIST source: "system" (full 60k, the setting), "bundled" or "auto".
    #[arg(long, default_value = "auto")]
    source: String,
    /// Worker counts to measure braid with, comma separated.
    #[arg(long, default_value = "1,2", value_delimiter = ',')]
    workers: Vec<usize>,
    /// Skip the bare-loop reference.
    #[arg(long)]
    no_bare: bool,
}

/// The reference job, which the benchmark runs at its own size and data source.
const REFERENCE: &str = include_str!("../../../../configs/reference-fedavg.toml");

fn config(args: &BenchArgs, workers: usize) -> Result<ExperimentConfig> {
    let per_round = args.per_round.unwrap_or(args.clients);
    let rounds = args.rounds;
    let overrides = [
        "name=bench".to_string(),
        format!("data.source={:?}", args.source),
        format!("partition.clients={}", args.clients),
        format!("algorithm.rounds={rounds}"),
        format!("algorithm.clients_per_round={per_round}"),
        format!("algorithm.eval_every={rounds}"),
        format!("runtime.workers={workers}"),
    ];
    Ok(ExperimentConfig::parse(REFERENCE, "bench", &overrides)?)
}

/// Runs the benchmark and prints its table.
pub fn run(args: BenchArgs) -> Result<()> {
    let per_round = args.per_round.unwrap_or(args.clients);
    let first = experiment::prepare(&config(&args, 1)?)?;
    let steps_per_round: usize = first
        .parts
        .iter()
        .take(per_round)
        .map(|p| p.len().div_ceil(32))
        .sum();
    println!(
        "FedAvg bench: {} | {} clients, {} per round, {} rounds | CNN, SGD lr 0.05, batch 32, 1 local epoch | ~{} SGD steps per round",
        first.data_description, args.clients, per_round, args.rounds, steps_per_round
    );
    println!(
        "{:<28} {:>8} {:>10} {:>16} {:>12} {:>9}",
        "setup", "wall_s", "s/round", "client upd/s", "samples/s", "accuracy"
    );
    let mut best: Option<(usize, f64)> = None;
    for &w in &args.workers {
        let config = config(&args, w)?;
        let prepared = experiment::prepare(&config)?;
        let settings = FedAvg::config(&config).map_err(anyhow::Error::msg)?;
        let t0 = Instant::now();
        let out = experiment::simulate::<FedAvg>(&prepared, &settings, &mut |_| {})?;
        let wall = t0.elapsed().as_secs_f64();
        let samples: u64 = out.rows.iter().map(|(m, _)| m.samples).sum();
        let acc = out
            .rows
            .last()
            .and_then(|(m, _)| m.accuracy)
            .unwrap_or(f64::NAN);
        println!(
            "{:<28} {:>8.2} {:>10.2} {:>16.2} {:>12.0} {:>9.4}",
            format!("braid, {} worker(s)", prepared.workers()),
            wall,
            wall / f64::from(args.rounds),
            (per_round as f64 * f64::from(args.rounds)) / wall,
            samples as f64 / wall,
            acc
        );
        if best.is_none_or(|(_, b)| wall < b) {
            best = Some((prepared.workers(), wall));
        }
    }
    if !args.no_bare {
        if let Some((w, braid_wall)) = best {
            let (wall, acc) = bare_loop(&first, per_round, args.rounds, w)?;
            println!(
                "{:<28} {:>8.2} {:>10.2} {:>16.2} {:>12} {:>9.4}",
                format!("bare burn loop, {w} thread(s)"),
                wall,
                wall / f64::from(args.rounds),
                (per_round as f64 * f64::from(args.rounds)) / wall,
                "",
                acc
            );
            println!(
                "framework overhead (braid wall / bare wall, {w} thread(s)): {:.3}",
                braid_wall / wall
            );
        }
    }
    Ok(())
}

/// The same SGD steps without the framework; returns (wall seconds, accuracy of the last model).
fn bare_loop(p: &Prepared, per_round: usize, rounds: u32, threads: usize) -> Result<(f64, f64)> {
    let arch = p.model.arch().ok_or_else(|| {
        anyhow::anyhow!(
            "the bare loop runs the built-in models; {} is not one",
            p.model.name()
        )
    })?;
    let device = Device::flex().autodiff();
    let init = braid_nn::flat::load_flat(Net::new(arch, &device), &arch.init_params(p.config.seed));
    let pools: Vec<rayon::ThreadPool> = (0..threads)
        .map(|_| rayon::ThreadPoolBuilder::new().num_threads(1).build())
        .collect::<Result<_, _>>()?;
    let data = &p.data;
    let t0 = Instant::now();
    let mut last: Option<Net> = None;
    for r in 0..rounds {
        let next = AtomicUsize::new(0);
        let results: Vec<std::sync::Mutex<Option<Net>>> = (0..per_round)
            .map(|_| std::sync::Mutex::new(None))
            .collect();
        std::thread::scope(|s| {
            for pool in &pools {
                let (next, results, init, device) = (&next, &results, &init, &device);
                s.spawn(move || {
                    pool.install(|| loop {
                        let c = next.fetch_add(1, Ordering::Relaxed);
                        if c >= per_round {
                            break;
                        }
                        let mut model = init.clone();
                        let mut optim = SgdConfig::new().init();
                        let loss_fn = CrossEntropyLossConfig::new().init(device);
                        let mut order = p.parts[c].clone();
                        order.shuffle(&mut seed::rng(u64::from(r), &[c as u64]));
                        for chunk in order.chunks(32) {
                            let (mut x, mut y) = (Vec::new(), Vec::new());
                            data.train.gather(chunk, &mut x, &mut y);
                            let x = Tensor::<2>::from_data(
                                TensorData::new(x, [chunk.len(), data.train.sample_len()]),
                                device,
                            );
                            let y = Tensor::<1, Int>::from_data(
                                TensorData::new(y, [chunk.len()]),
                                device,
                            );
                            let loss = loss_fn.forward(model.forward(x), y);
                            let grads = GradientsParams::from_grads(loss.backward(), &model);
                            model = optim.step(0.05, model, grads);
                        }
                        if let Ok(mut slot) = results[c].lock() {
                            *slot = Some(model);
                        }
                    });
                });
            }
        });
        last = results
            .into_iter()
            .last()
            .and_then(|m| m.into_inner().ok().flatten());
    }
    // One evaluation of a trained model on the test set, as braid does after its last round
    // (through braid's evaluator: evaluation is not the part this loop measures).
    let model = last.ok_or_else(|| anyhow::anyhow!("bare loop trained no model"))?;
    let mut evaluator = braid_nn::Trainer::new(arch.clone(), &p.config.runtime.device)?;
    let eval = evaluator.evaluate(&braid_nn::flat::flatten(&model), &data.test, None)?;
    Ok((t0.elapsed().as_secs_f64(), eval.accuracy))
}
