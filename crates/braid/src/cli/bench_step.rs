//! `braid bench-step`: the cost of one training step of a model on the default CPU backend.
//!
//! Times forward, backward and the plain SGD update of one model on one batch of real
//! Fashion-MNIST images, inside a rayon pool of the requested size (the pool burn's kernels
//! run in), after warm-up steps. Prints the median, mean and spread over the timed steps, and
//! the split between forward, backward and update. `scripts/bench/torch_step.py` measures the
//! same step in PyTorch; `scripts/bench-step.sh` runs both alternately in one sitting.

use std::time::Instant;

use anyhow::{anyhow, Result};
use braid_data::source::FashionSource;
use braid_nn::arch::{Arch, ModelName};
use braid_nn::net::Net;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{GradientsParams, SgdConfig};
use burn::tensor::{Device, Int, Tensor, TensorData};
use clap::Args;

/// Options of `braid bench-step`.
#[derive(Args, Debug)]
pub struct BenchStepArgs {
    /// Model (a registered architecture name).
    #[arg(long, default_value = "cnn")]
    model: String,
    /// Batch size.
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Thread counts to measure with, comma separated (the size of the rayon pool).
    #[arg(long, default_value = "1,2", value_delimiter = ',')]
    threads: Vec<usize>,
    /// Timed steps per thread count.
    #[arg(long, default_value_t = 200)]
    steps: usize,
    /// Untimed warm-up steps before them.
    #[arg(long, default_value_t = 20)]
    warmup: usize,
    /// Fashion-MNIST source: "system", "bundled" or "auto".
    #[arg(long, default_value = "auto")]
    source: String,
    /// Also write the figures as one JSON object per thread count to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

/// Timings of one thread count, in milliseconds per step.
struct Timing {
    threads: usize,
    median: f64,
    mean: f64,
    p10: f64,
    p90: f64,
    forward: f64,
    backward: f64,
    update: f64,
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn measure(
    args: &BenchStepArgs, arch: &Arch, batches: &[(Vec<f32>, Vec<i64>)], threads: usize,
) -> Result<Timing> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()?;
    pool.install(|| {
        let device = Device::flex().autodiff();
        let mut model = braid_nn::flat::load_flat(Net::new(arch, &device), &arch.init_params(0));
        let mut optim = SgdConfig::new().init();
        let loss_fn = CrossEntropyLossConfig::new().init(&device);
        let (mut total, mut fwd, mut bwd, mut upd) = (Vec::new(), 0.0, 0.0, 0.0);
        for i in 0..args.warmup + args.steps {
            let (x, y) = &batches[i % batches.len()];
            let t0 = Instant::now();
            let x = Tensor::<2>::from_data(
                TensorData::new(x.clone(), [args.batch, arch.input.iter().product()]),
                &device,
            );
            let y = Tensor::<1, Int>::from_data(TensorData::new(y.clone(), [args.batch]), &device);
            let loss = loss_fn.forward(model.forward(arch, x), y);
            // burn is lazy only where a backend fuses; flex computes eagerly, so the loss is
            // ready here. Reading one scalar keeps the split honest either way.
            let _: f32 = loss.clone().into_scalar();
            let t1 = Instant::now();
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            let t2 = Instant::now();
            model = optim.step(0.05, model, grads);
            let t3 = Instant::now();
            if i >= args.warmup {
                total.push((t3 - t0).as_secs_f64() * 1e3);
                fwd += (t1 - t0).as_secs_f64() * 1e3;
                bwd += (t2 - t1).as_secs_f64() * 1e3;
                upd += (t3 - t2).as_secs_f64() * 1e3;
            }
        }
        let n = total.len() as f64;
        let mean = total.iter().sum::<f64>() / n;
        total.sort_by(f64::total_cmp);
        Ok(Timing {
            threads,
            median: percentile(&total, 0.5),
            mean,
            p10: percentile(&total, 0.1),
            p90: percentile(&total, 0.9),
            forward: fwd / n,
            backward: bwd / n,
            update: upd / n,
        })
    })
}

/// Runs the benchmark and prints its table.
pub fn run(args: BenchStepArgs) -> Result<()> {
    if args.batch == 0 || args.steps == 0 {
        return Err(anyhow!("--batch and --steps must be at least 1"));
    }
    if args.threads.contains(&0) {
        return Err(anyhow!("--threads must be at least 1"));
    }
    let model = ModelName::ALL
        .into_iter()
        .find(|m| m.as_str() == args.model)
        .ok_or_else(|| {
            anyhow!(
                "--model {:?} is not one of {:?}",
                args.model,
                ModelName::ALL.map(ModelName::as_str)
            )
        })?;
    let source = FashionSource::resolve(&args.source)?;
    let data = braid_data::source::load_fashion(&source)?;
    let arch = Arch::new(model, data.train.sample_shape(), data.train.num_classes())?;
    // Consecutive batches of the training set, in file order.
    let n_batches = (data.train.len() / args.batch).clamp(1, 64);
    let batches: Vec<(Vec<f32>, Vec<i64>)> = (0..n_batches)
        .map(|b| {
            let idx: Vec<usize> = (b * args.batch..(b + 1) * args.batch)
                .map(|i| i % data.train.len())
                .collect();
            let (mut x, mut y) = (Vec::new(), Vec::new());
            data.train.gather(&idx, &mut x, &mut y);
            (x, y)
        })
        .collect();
    println!(
        "train step: {} ({} parameters, {:.2} MFLOP per training sample), batch {}, SGD lr 0.05, burn flex | {} warm-up + {} timed steps | {}",
        model.as_str(),
        arch.num_params(),
        arch.train_flops() as f64 / 1e6,
        args.batch,
        args.warmup,
        args.steps,
        source.describe()
    );
    println!(
        "{:>8} {:>10} {:>9} {:>9} {:>9} {:>10} {:>11} {:>10}",
        "threads",
        "median_ms",
        "mean_ms",
        "p10_ms",
        "p90_ms",
        "forward_ms",
        "backward_ms",
        "update_ms"
    );
    let mut json = String::new();
    for &t in &args.threads {
        let m = measure(&args, &arch, &batches, t)?;
        println!(
            "{:>8} {:>10.2} {:>9.2} {:>9.2} {:>9.2} {:>10.2} {:>11.2} {:>10.2}",
            m.threads, m.median, m.mean, m.p10, m.p90, m.forward, m.backward, m.update
        );
        json.push_str(&format!(
            "{{\"impl\": \"braid\", \"model\": \"{}\", \"batch\": {}, \"threads\": {}, \"median_ms\": {:.4}, \"mean_ms\": {:.4}, \"forward_ms\": {:.4}, \"backward_ms\": {:.4}, \"update_ms\": {:.4}}}\n",
            model.as_str(), args.batch, m.threads, m.median, m.mean, m.forward, m.backward, m.update
        ));
    }
    if let Some(path) = &args.json {
        std::fs::write(path, json)?;
    }
    Ok(())
}
