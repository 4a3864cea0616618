//! `braid bench-step`: the cost of one training step of a model on the CPU (burn's flex backend
//! with braid's kernels) or a GPU (`--device gpu`).
//!
//! Times forward, backward and the plain SGD update of one model (any registered one, the
//! program's own included) on batches of real Fashion-MNIST images, or of the training set of
//! an experiment file (`--config`), inside a rayon pool of the requested size (the pool burn's
//! kernels run in), after warm-up steps. Prints the median, mean and spread over the timed steps, and
//! the split between forward, backward and update. `scripts/bench/torch_step.py` measures the
//! same step in PyTorch; `scripts/bench-step.sh` runs both alternately in one sitting.

use anyhow::{anyhow, Result};
use braid_data::source::FashionSource;
use braid_data::{DataConfig, Dataset};
use braid_engine::algorithm::Registry;
use braid_engine::config::{ConfigRules, ExperimentConfig, ModelChoice};
use braid_nn::stacked::{ConvForm, StackedJob, StackedTrainer};
use braid_nn::{BoundModel, DataShape, DeviceKind, StepTime, TrainSpec};
use clap::Args;

/// Options of `braid bench-step`.
#[derive(Args, Debug)]
pub struct BenchStepArgs {
    /// Model: any registered name (built-in or the program's own; default `cnn`, or the
    /// config's).
    #[arg(long)]
    model: Option<String>,
    /// Take the model and the data (its training set) from this experiment file instead of
    /// Fashion-MNIST.
    #[arg(long)]
    config: Option<std::path::PathBuf>,
    /// Override a value of `--config` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE", requires = "config")]
    set: Vec<String>,
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
    /// Device: "cpu" or a GPU ("gpu", "gpu:N", "gpu:software"; see `[runtime] device`). On a
    /// GPU, work is queued: the forward time includes the previous step's queued work, the
    /// total is exact.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Train this many models at once as one stacked computation (what
    /// `runtime.batch_clients` does; built-in models only), each on its own batches: the
    /// times are per step of all of them, measured over calls of 10 steps (no split into
    /// forward, backward and update).
    #[arg(long, default_value_t = 1)]
    stack: usize,
    /// How a stack computes its convolutions: "grouped" (one grouped convolution), "unfolded"
    /// (unfolded windows and one batched product), or "auto" (what `runtime.batch_clients`
    /// uses on the device: grouped on the CPU, unfolded on a GPU).
    #[arg(long, default_value = "auto")]
    stack_conv: String,
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
    args: &BenchStepArgs, model: &BoundModel, data: &Dataset, batches: &[Vec<usize>],
    threads: usize, device: &DeviceKind,
) -> Result<Timing> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()?;
    pool.install(|| {
        let mut trainer = model.trainer(device)?;
        let plan: Vec<Vec<usize>> = (0..args.warmup + args.steps)
            .map(|i| batches[i % batches.len()].clone())
            .collect();
        let times = trainer.time_steps(&model.init_params(0)?, data, &plan, 0.05)?;
        let timed = &times[args.warmup.min(times.len())..];
        let ms = |f: fn(&StepTime) -> f64| timed.iter().map(f).sum::<f64>() * 1e3;
        let n = timed.len().max(1) as f64;
        let mut total: Vec<f64> = timed.iter().map(|t| t.total() * 1e3).collect();
        total.sort_by(f64::total_cmp);
        if total.is_empty() {
            return Err(anyhow!("no step was timed"));
        }
        Ok(Timing {
            threads,
            median: percentile(&total, 0.5),
            mean: ms(StepTime::total) / n,
            p10: percentile(&total, 0.1),
            p90: percentile(&total, 0.9),
            forward: ms(|t| t.forward) / n,
            backward: ms(|t| t.backward) / n,
            update: ms(|t| t.update) / n,
        })
    })
}

/// Steps of `args.stack` models of `model` stacked ([`StackedTrainer`]), timed per call of
/// [`STACK_CALL`] steps; model `k` takes the batches from position `k` on.
fn measure_stacked(
    args: &BenchStepArgs, model: &BoundModel, data: &Dataset, batches: &[Vec<usize>],
    threads: usize, device: &DeviceKind,
) -> Result<Timing> {
    let arch = model.arch().ok_or_else(|| {
        anyhow!(
            "--stack: stacked training covers the built-in models, and {} is not one",
            model.name()
        )
    })?;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()?;
    pool.install(|| {
        let mut stacked =
            StackedTrainer::new(arch, device)?.with_conv_form(conv_form(args, device)?);
        let spec = TrainSpec {
            optimizer: braid_nn::OptimizerConfig::Sgd {
                lr: 0.05,
                momentum: 0.0,
                weight_decay: 0.0,
                nesterov: false,
            },
            batch_size: args.batch,
            epochs: 1,
            max_steps: None,
            prox_mu: 0.0,
            lr_scale: 1.0,
            dp_sgd: None,
        };
        let mut params: Vec<Vec<f32>> = (0..args.stack)
            .map(|k| model.init_params(k as u64))
            .collect::<Result<_, _>>()?;
        let calls = args.warmup.div_ceil(STACK_CALL) + args.steps.div_ceil(STACK_CALL);
        let mut per_step = Vec::new();
        for call in 0..calls {
            let jobs: Vec<StackedJob> = params
                .iter()
                .enumerate()
                .map(|(k, p)| StackedJob {
                    params: p.clone(),
                    batches: (0..STACK_CALL)
                        .map(|i| batches[(call * STACK_CALL + i + k) % batches.len()].clone())
                        .collect(),
                    spec: spec.clone(),
                })
                .collect();
            let t0 = std::time::Instant::now();
            let out = stacked.train(&jobs, data);
            let ms = t0.elapsed().as_secs_f64() * 1e3 / STACK_CALL as f64;
            params = out
                .into_iter()
                .map(|r| r.map(|o| o.params))
                .collect::<Result<_, _>>()?;
            if call >= args.warmup.div_ceil(STACK_CALL) {
                per_step.push(ms);
            }
        }
        per_step.sort_by(f64::total_cmp);
        let mean = per_step.iter().sum::<f64>() / per_step.len().max(1) as f64;
        Ok(Timing {
            threads,
            median: percentile(&per_step, 0.5),
            mean,
            p10: percentile(&per_step, 0.1),
            p90: percentile(&per_step, 0.9),
            forward: f64::NAN,
            backward: f64::NAN,
            update: f64::NAN,
        })
    })
}

/// `--stack-conv`.
fn conv_form(args: &BenchStepArgs, device: &DeviceKind) -> Result<ConvForm> {
    match args.stack_conv.as_str() {
        "auto" => Ok(ConvForm::for_device(device)),
        "grouped" => Ok(ConvForm::Grouped),
        "unfolded" => Ok(ConvForm::Unfolded),
        other => Err(anyhow!(
            "--stack-conv {other:?}: allowed are \"auto\", \"grouped\" and \"unfolded\""
        )),
    }
}

/// The name of `form` as `--stack-conv` spells it.
fn form_name(form: ConvForm) -> &'static str {
    match form {
        ConvForm::Grouped => "grouped",
        ConvForm::Unfolded => "unfolded",
    }
}

/// A time in milliseconds as JSON (`null` where it was not measured).
fn json_ms(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.4}")
    } else {
        "null".into()
    }
}

/// Steps per timed call of stacked training.
const STACK_CALL: usize = 10;

/// Runs the benchmark and prints its table.
pub fn run(args: BenchStepArgs, registry: &Registry) -> Result<()> {
    if args.batch == 0 || args.steps == 0 {
        return Err(anyhow!("--batch and --steps must be at least 1"));
    }
    if args.stack == 0 || args.stack > 1024 {
        return Err(anyhow!("--stack must be in 1..=1024"));
    }

    if args.threads.contains(&0) {
        return Err(anyhow!("--threads must be at least 1"));
    }
    let device = DeviceKind::try_from(args.device.clone()).map_err(|e| anyhow!("--device: {e}"))?;
    // Fails here, in one line, where the GPU is not there.
    device.device()?;
    let form = form_name(conv_form(&args, &device)?);
    // The model and the data: a config's, or the model named on Fashion-MNIST.
    let (config, described) = match &args.config {
        Some(path) => {
            let mut set = args.set.clone();
            if let Some(m) = &args.model {
                set.push(format!("model.name={m:?}"));
            }
            let c = ExperimentConfig::load_with(path, &set, registry)?;
            let d = c.data.describe();
            (c, d)
        }
        None => {
            let name = args.model.clone().unwrap_or_else(|| "cnn".into());
            let source = FashionSource::resolve(&args.source)?;
            let mut c = ExperimentConfig::new(&name, "fedavg")?;
            c.model.kind = ModelChoice(Some(registry.model(&name)?));
            c.data = DataConfig::FashionMnist {
                source: args.source.clone(),
                train_limit: None,
                test_limit: None,
            };
            (c, source.describe())
        }
    };
    let data = braid_data::load(&config.data, config.seed)?;
    let model = config.model.bind(&DataShape::of(&data.train))?;
    // Consecutive batches of the training set, in file order.
    let n_batches = (data.train.len() / args.batch).clamp(1, 64);
    let batches: Vec<Vec<usize>> = (0..n_batches)
        .map(|b| {
            (b * args.batch..(b + 1) * args.batch)
                .map(|i| i % data.train.len())
                .collect()
        })
        .collect();
    println!(
        "train step: {}{} ({} parameters, {:.2} MFLOP per training sample), batch {}, SGD lr 0.05, {} | {} warm-up + {} timed steps | {}",
        model.name(),
        if args.stack > 1 {
            format!(" x {} stacked ({form} convolutions)", args.stack)
        } else {
            String::new()
        },
        model.num_params(),
        model.train_flops() as f64 / 1e6,
        args.batch,
        if device.is_accelerator() { format!("device {}", args.device) } else { "burn flex".into() },
        args.warmup,
        args.steps,
        described
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
        let m = if args.stack > 1 {
            measure_stacked(&args, &model, &data.train, &batches, t, &device)?
        } else {
            measure(&args, &model, &data.train, &batches, t, &device)?
        };
        // Parts not measured (stacked steps) print as "-".
        let part = |v: f64| {
            if v.is_finite() {
                format!("{v:.2}")
            } else {
                "-".into()
            }
        };
        println!(
            "{:>8} {:>10.2} {:>9.2} {:>9.2} {:>9.2} {:>10} {:>11} {:>10}",
            m.threads,
            m.median,
            m.mean,
            m.p10,
            m.p90,
            part(m.forward),
            part(m.backward),
            part(m.update)
        );
        json.push_str(&format!(
            "{{\"impl\": \"braid\", \"device\": \"{}\", \"model\": \"{}\", \"batch\": {}, \"stack\": {}, \"stack_conv\": \"{}\", \"threads\": {}, \"median_ms\": {:.4}, \"mean_ms\": {:.4}, \"forward_ms\": {}, \"backward_ms\": {}, \"update_ms\": {}}}\n",
            args.device, model.name(), args.batch, args.stack, form, m.threads, m.median, m.mean,
            json_ms(m.forward), json_ms(m.backward), json_ms(m.update)
        ));
    }
    if let Some(path) = &args.json {
        std::fs::write(path, json)?;
    }
    Ok(())
}
