//! `braid faults`: the fault-schedule simulator over many seeds (`braid_engine::sim::faults`).
//!
//! Runs the experiment's real nodes under seeded delays, duplicates, reorderings, losses and
//! crashes with restarts from checkpoints, checks each seed's run against the fault-free run,
//! and prints the schedule of every seed that broke an invariant (replay it with `--from SEED
//! --seeds 1`). Exits non-zero if any did.

use anyhow::{bail, Result};
use braid_engine::algorithm::Registry;
use braid_engine::config::ExperimentConfig;
use braid_engine::sim::faults::FaultPlan;
use clap::Args;

/// Options of `braid faults`.
#[derive(Args, Debug)]
pub struct FaultsArgs {
    /// The experiment file (keep it small: every seed is a whole run).
    file: std::path::PathBuf,
    /// Override a config value (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Seeds to run (1 to 10000000).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    seeds: u64,
    /// First seed.
    #[arg(long, default_value_t = 0)]
    from: u64,
    /// Chance that a node crashes when an input reaches it (it restarts from its checkpoint).
    #[arg(long, default_value_t = FaultPlan::default().crash)]
    crash: f64,
    /// Chance that an authorized halt stops every node when an input reaches one (all resume
    /// from their checkpoints).
    #[arg(long, default_value_t = FaultPlan::default().halt)]
    halt: f64,
    /// Chance that a message is delivered twice.
    #[arg(long, default_value_t = FaultPlan::default().duplicate)]
    duplicate: f64,
    /// Chance that a message is lost for good (survivable only with deadlines).
    #[arg(long, default_value_t = 0.0)]
    drop: f64,
    /// Largest delay of a message, in simulated milliseconds.
    #[arg(long, default_value_t = FaultPlan::default().max_delay_ms, value_parser = clap::value_parser!(u64).range(0..=86_400_000))]
    max_delay_ms: u64,
    /// Most crashes per run.
    #[arg(long, default_value_t = FaultPlan::default().max_crashes)]
    max_crashes: usize,
    /// Run every N-th seed twice and require the same outcome (0: never).
    #[arg(long, default_value_t = 10)]
    replay_every: u64,
}

/// Runs the seeds and prints what broke.
pub fn run(args: FaultsArgs, registry: &Registry) -> Result<()> {
    for (name, p) in [
        ("--crash", args.crash),
        ("--halt", args.halt),
        ("--duplicate", args.duplicate),
        ("--drop", args.drop),
    ] {
        if !(0.0..=1.0).contains(&p) {
            bail!("{name} {p} must be a probability between 0 and 1");
        }
    }
    let config = ExperimentConfig::load_with(&args.file, &args.set, registry)?;
    let algorithm = registry.of(&config).map_err(anyhow::Error::msg)?;
    let prepared = algorithm.prepare(&config)?;
    let plan = FaultPlan {
        max_delay_ms: args.max_delay_ms,
        duplicate: args.duplicate,
        drop: args.drop,
        crash: args.crash,
        halt: args.halt,
        max_crashes: args.max_crashes,
        ..FaultPlan::default()
    };
    let exact = braid_engine::sim::faults::exact_expected(&config, &plan)
        && !algorithm.arrival_order_matters();
    let end = args.from.saturating_add(args.seeds);
    println!(
        "braid faults: {} | seeds {}..{end} | {plan:?} | {}",
        algorithm.name(),
        args.from,
        if exact {
            "results must equal the fault-free run's"
        } else {
            "deadlines or losses: rounds and termination checked"
        }
    );
    let t0 = std::time::Instant::now();
    let mut done = 0u64;
    let failed = algorithm.explore_faults(
        &prepared,
        &plan,
        args.from..end,
        args.replay_every,
        &mut |seed, ok| {
            done += 1;
            if !ok {
                say!("seed {seed}: broke an invariant");
            } else if done.is_multiple_of(1000) {
                say!("{done} seeds, {:.0} s", t0.elapsed().as_secs_f64());
            }
        },
    )?;
    for b in &failed {
        println!("\nseed {} broke:", b.seed);
        for why in &b.broken {
            println!("  - {why}");
        }
        println!("  schedule:");
        for s in &b.schedule {
            println!("    {s}");
        }
    }
    println!(
        "{} seeds in {:.1} s: {} broke an invariant",
        args.seeds,
        t0.elapsed().as_secs_f64(),
        failed.len()
    );
    if !failed.is_empty() {
        bail!(
            "{} of {} seeds broke an invariant (replay one with --from SEED --seeds 1)",
            failed.len(),
            args.seeds
        );
    }
    Ok(())
}
