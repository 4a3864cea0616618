//! `braid`: a thin command line over braid's engine.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result};
use braid_engine::config::{AlgorithmName, ExperimentConfig};
use braid_engine::experiment::{self, Prepared};
use braid_engine::node::Event;
use braid_engine::report;
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

mod audit;
mod bench;
mod bench_net;
mod bench_step;
mod compare;
mod launch;
mod node;

/// The bundled quick-start experiment, compiled in so `braid demo` works from any directory.
const QUICKSTART: &str = include_str!("../../../configs/quickstart.toml");

#[derive(Parser)]
#[command(
    name = "braid",
    version,
    about = "Federated, decentralized and split training, simulated or deployed"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the experiment described by a TOML file.
    Run {
        /// The experiment file.
        file: PathBuf,
        /// Override a config value, e.g. `--set algorithm.rounds=3` (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// Write results here instead of the config's output_dir.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Also run the reference and compare: for server-based runs the centralized baseline
        /// (one client, all data); for `dsgd` parallel SGD (an exact global average after every
        /// local step) on the same peers, data and number of steps.
        #[arg(long)]
        baseline: bool,
        /// No progress bar.
        #[arg(long, short)]
        quiet: bool,
    },
    /// Run the bundled quick-start (FedAvg, 10 clients, bundled Fashion-MNIST, CNN).
    Demo {
        /// Override a config value (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// Write results here (default: runs/quickstart).
        #[arg(long)]
        out: Option<PathBuf>,
        /// No progress bar.
        #[arg(long, short)]
        quiet: bool,
    },
    /// Show how an experiment splits its training data: per-client label histograms.
    Partition {
        /// The experiment file.
        file: PathBuf,
        /// Override a config value (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// Also write every participant's shard as IDX files to `DIR/node-<id>/` (node ids
        /// as in a deployed run), for `braid node --data`.
        #[arg(long, value_name = "DIR")]
        write: Option<PathBuf>,
    },
    /// Print the quick-start config, a starting point for your own experiments.
    Init,
    /// Spectral gap and messages per round of every topology, for a number of nodes and a budget r.
    Topology {
        /// Number of nodes.
        #[arg(long, default_value_t = 16)]
        nodes: usize,
        /// Budget: extra peers per node per round (fractional part: probability of one more).
        #[arg(long, default_value_t = 1.0)]
        r: f64,
        /// Rounds sampled for random and time-varying topologies.
        #[arg(long, default_value_t = 50)]
        samples: u64,
        /// Seed for random topologies.
        #[arg(long, default_value_t = 42)]
        seed: u64,
    },
    /// Measure throughput and framework overhead (see the README's benchmark section).
    Bench(bench::BenchArgs),
    /// Measure braid's network stack (FedAvg rounds over libp2p on loopback) against a raw
    /// TCP copy of the same bytes.
    BenchNet(bench_net::BenchNetArgs),
    /// Time one training step (forward, backward, SGD update) of a model at a batch size.
    BenchStep(bench_step::BenchStepArgs),
    /// Write a new ed25519 identity to a key file and print its peer id.
    Keygen(node::KeygenArgs),
    /// Run one participant of a deployed experiment (server, client or peer) in this process.
    Node(node::NodeArgs),
    /// Run a deployed experiment on this machine: one `braid node` process per participant on
    /// loopback ports, with generated keys; results collected into one output directory.
    Launch(launch::LaunchArgs),
    /// Halt a deployed run: a halt signed with a key from `network.halt_keys`, sent to every
    /// participant with an address and forwarded by the nodes to the rest.
    Halt(node::HaltArgs),
    /// Plot the test accuracy of several finished runs on one chart (from their metrics.csv).
    Compare(compare::CompareArgs),
    /// Check a deployed run's signed logs (`verify`) or account for its compute and traffic
    /// (`report`).
    #[command(subcommand)]
    Audit(audit::AuditCommand),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match dispatch(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let chain: Vec<String> = e.chain().map(|c| c.to_string()).collect();
            eprintln!("error: {}", chain.join(": "));
            ExitCode::FAILURE
        }
    }
}

fn dispatch(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Run {
            file,
            set,
            out,
            baseline,
            quiet,
        } => {
            let config = ExperimentConfig::load(&file, &set)?;
            run_and_report(config, out, baseline, quiet)
        }
        Command::Demo { set, out, quiet } => {
            let config = ExperimentConfig::parse(QUICKSTART, "quickstart.toml", &set)?;
            run_and_report(config, out, false, quiet)
        }
        Command::Partition { file, set, write } => {
            let config = ExperimentConfig::load(&file, &set)?;
            let prepared = experiment::prepare(&config)?;
            print_histogram(&prepared);
            if let Some(dir) = write {
                write_shards(&prepared, &dir)?;
            }
            Ok(())
        }
        Command::Init => {
            print!("{QUICKSTART}");
            Ok(())
        }
        Command::Bench(args) => bench::run(args),
        Command::BenchNet(args) => bench_net::run(args),
        Command::BenchStep(args) => bench_step::run(args),
        Command::Keygen(args) => node::keygen(args),
        Command::Node(args) => node::node(args),
        Command::Launch(args) => launch::launch(args),
        Command::Audit(cmd) => audit::run(cmd),
        Command::Compare(args) => compare::run(args),
        Command::Halt(args) => node::halt(args),
        Command::Topology {
            nodes,
            r,
            samples,
            seed,
        } => print_topologies(nodes, r, samples, seed),
    }
}

fn run_and_report(
    config: ExperimentConfig,
    out: Option<PathBuf>,
    baseline: bool,
    quiet: bool,
) -> Result<()> {
    let dir = out.unwrap_or_else(|| config.output_dir());
    let main_acc = run_one(&config, &dir, quiet)?;
    if baseline && config.algorithm.name == AlgorithmName::Dsgd {
        let mut reference = config.clone();
        reference.name = format!("{}-parallel-sgd", config.name);
        let mut d = config.decentralized.clone().unwrap_or_default();
        d.every = 1;
        d.budget = braid_core::schedule::Budget::Fixed {
            r: config.partition.clients.saturating_sub(1) as f64,
        };
        reference.decentralized = Some(d);
        // The reference averages exactly: no quantized gossip.
        reference.compression = None;
        println!();
        let base_acc = run_one(&reference, &dir.join("baseline"), quiet)?;
        if let (Some(a), Some(b)) = (main_acc, base_acc) {
            println!(
                "\ndsgd merged-model accuracy {a:.4} vs parallel SGD reference {b:.4} (gap {:+.4})",
                a - b
            );
        }
    } else if baseline && config.algorithm.name != AlgorithmName::Centralized {
        let mut central = config.clone();
        central.name = format!("{}-centralized", config.name);
        central.algorithm.name = AlgorithmName::Centralized;
        central.algorithm.clients_per_round = None;
        central.decentralized = None;
        central.algorithm.mu = None;
        central.algorithm.server_optimizer = Default::default();
        central.compression = None;
        central.split = None;
        central.mutual = None;
        central.privacy = None;
        central.attack = None;
        central.secure_aggregation = None;
        println!();
        let base_acc = run_one(&central, &dir.join("baseline"), quiet)?;
        if let (Some(a), Some(b)) = (main_acc, base_acc) {
            println!(
                "\n{} final accuracy {:.4} vs centralized baseline {:.4} (gap {:+.4})",
                algorithm_label(&config),
                a,
                b,
                a - b
            );
        }
    }
    Ok(())
}

fn algorithm_label(config: &ExperimentConfig) -> String {
    format!("{:?}", config.algorithm.name).to_lowercase()
}

/// Peak resident memory of this process in MiB (Linux `VmHWM`), if known.
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Runs one experiment, writes its outputs, prints a summary; returns the final accuracy.
fn run_one(config: &ExperimentConfig, dir: &Path, quiet: bool) -> Result<Option<f64>> {
    let t0 = Instant::now();
    let prepared = experiment::prepare(config)?;
    let who = if config.algorithm.name == AlgorithmName::Dsgd {
        let d = config.decentralized.clone().unwrap_or_default();
        format!(
            "{} peers, topology {:?}, every {} step(s), budget {:?}",
            prepared.parts.len(),
            d.topology,
            d.every,
            d.budget
        )
    } else if config.algorithm.name.is_mutual() {
        let counts: Vec<String> = prepared
            .models
            .iter()
            .enumerate()
            .map(|(i, a)| {
                let n = prepared.client_models.iter().filter(|&&m| m == i).count();
                format!("{n} x {} ({} parameters)", a.name.as_str(), a.num_params())
            })
            .collect();
        format!("{} clients: {}", prepared.parts.len(), counts.join(", "))
    } else if let Some(split) = &prepared.split {
        let sc = config.split.clone().unwrap_or_default();
        format!(
            "{} clients, sampler {}, global batch {}, cut after {} ({} client-part parameters, {} values per sample at the cut)",
            prepared.parts.len(),
            sc.sampler.as_str(),
            config.train.batch_size,
            split.cut,
            split.client_params(),
            split.cut_features()
        )
    } else {
        format!(
            "{} clients ({} per round)",
            prepared.parts.len(),
            config.clients_per_round()
        )
    };
    println!(
        "braid: {} | {} | {} | model {} ({} parameters) | {} worker thread(s) | seed {}",
        algorithm_label(config),
        prepared.data_description,
        who,
        config.model.name.as_str(),
        prepared.arch.num_params(),
        prepared.workers(),
        config.seed
    );
    let dsgd = config.algorithm.name == AlgorithmName::Dsgd;
    let bar = if quiet {
        ProgressBar::hidden()
    } else {
        let (len, unit) = if dsgd {
            (config.algorithm.steps.unwrap_or(0), "step")
        } else {
            (u64::from(config.algorithm.rounds()), "round")
        };
        let b = ProgressBar::new(len);
        b.set_style(
            ProgressStyle::with_template(&format!(
                "{{spinner}} {unit} {{pos}}/{{len}} [{{bar:30}}] {{elapsed_precise}} eta {{eta}} {{msg}}"
            ))
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        b.enable_steady_tick(std::time::Duration::from_millis(200));
        b
    };
    let mut on_event = |e: &Event| match e {
        Event::Round(m) => {
            bar.set_position(u64::from(m.round));
            if let Some(a) = m.accuracy {
                bar.set_message(format!("accuracy {a:.4}"));
            }
        }
        Event::Gossip(m) => {
            bar.set_position(m.step);
            bar.set_message(format!(
                "merged {:.4} local mean {:.4}",
                m.merged_accuracy, m.local_mean
            ));
        }
        Event::Split(m) => {
            bar.set_position(u64::from(m.epoch));
            if let Some(a) = m.accuracy {
                bar.set_message(format!("accuracy {a:.4}"));
            }
        }
        Event::Mutual(m) => {
            bar.set_position(u64::from(m.round));
            bar.set_message(format!("global accuracy {:.4}", m.accuracy));
        }
        Event::Finished { .. } => {}
    };
    let outcome = experiment::run(&prepared, &mut on_event).context("run failed")?;
    bar.finish_and_clear();
    if dsgd {
        return report_gossip(config, &prepared, &outcome, dir, t0);
    }
    if prepared.split.is_some() {
        return report_split(config, &prepared, &outcome, dir, t0);
    }
    if config.algorithm.name.is_mutual() {
        return report_mutual(config, &prepared, &outcome, dir, t0);
    }
    let rows = report::rows(&outcome);
    println!(
        "{:>5}  {:>8}  {:>8}  {:>10}  {:>9}  {:>9}  {:>8}",
        "round", "accuracy", "loss", "train_loss", "MB up", "MB down", "wall_s"
    );
    for row in &rows {
        let r = &row.metrics;
        let f = |v: Option<f64>| v.map_or("-".to_string(), |x| format!("{x:.4}"));
        println!(
            "{:>5}  {:>8}  {:>8}  {:>10.4}  {:>9.2}  {:>9.2}  {:>8.1}",
            r.round,
            f(r.accuracy),
            f(r.loss),
            r.train_loss,
            r.bytes_up as f64 / 1e6,
            r.bytes_down as f64 / 1e6,
            row.wall_s
        );
    }
    let written =
        report::write_all(dir, config, &prepared.arch, &outcome).map_err(anyhow::Error::msg)?;
    let final_acc = rows.iter().rev().find_map(|r| r.metrics.accuracy);
    let total_bytes = rows.last().map_or(0, |r| r.cum_bytes);
    let privacy = match (&config.privacy, rows.last().and_then(|r| r.metrics.epsilon)) {
        (Some(p), Some(e)) => {
            let mode = match p.mode {
                braid_engine::config::DpMode::Central => "central",
                braid_engine::config::DpMode::Local => "local",
                braid_engine::config::DpMode::DpSgd => "dp-sgd, per sample, worst client",
            };
            format!(" | ({e:.3}, {:e})-DP, {mode}", p.delta).to_lowercase()
        }
        _ => String::new(),
    };
    let simulated = rows
        .last()
        .and_then(|r| r.metrics.sim_time_s)
        .map_or(String::new(), |t| format!(" | {t:.1} s simulated"));
    println!(
        "final test accuracy {} after {} rounds{privacy} | {:.1} MB communicated{simulated} | {:.1} s | peak memory {} | results in {} ({} files)",
        final_acc.map_or("-".into(), |a| format!("{a:.4}")),
        rows.len(),
        total_bytes as f64 / 1e6,
        t0.elapsed().as_secs_f64(),
        peak_rss_mib().map_or("-".into(), |m| format!("{m:.0} MiB")),
        dir.display(),
        written.len()
    );
    Ok(final_acc)
}

/// Summary of a decentralized run; returns the merged model's final accuracy.
fn report_gossip(
    config: &ExperimentConfig,
    prepared: &Prepared,
    outcome: &braid_engine::sim::SimOutcome,
    dir: &Path,
    t0: Instant,
) -> Result<Option<f64>> {
    println!(
        "{:>7} {:>8} {:>6} {:>9} {:>9} {:>9} {:>8} {:>8} {:>10} {:>9} {:>8}",
        "step",
        "progress",
        "r",
        "local",
        "min",
        "max",
        "merged",
        "gap",
        "consensus",
        "MB/peer",
        "wall_s"
    );
    for (m, wall) in &outcome.gossip {
        println!(
            "{:>7} {:>8.3} {:>6.2} {:>9.4} {:>9.4} {:>9.4} {:>8.4} {:>+8.4} {:>10.4} {:>9.2} {:>8.1}",
            m.step,
            m.progress,
            m.budget,
            m.local_mean,
            m.local_min,
            m.local_max,
            m.merged_accuracy,
            m.gap,
            m.consensus,
            m.bytes_per_peer / 1e6,
            wall
        );
    }
    let written =
        report::write_all(dir, config, &prepared.arch, outcome).map_err(anyhow::Error::msg)?;
    let last = outcome.gossip.last().map(|(m, _)| m);
    println!(
        "final: merged model {} | local mean {} | {:.1} MB gossip per peer | {:.1} s | peak memory {} | results in {} ({} files)",
        last.map_or("-".into(), |m| format!("{:.4}", m.merged_accuracy)),
        last.map_or("-".into(), |m| format!("{:.4}", m.local_mean)),
        last.map_or(0.0, |m| m.bytes_per_peer / 1e6),
        t0.elapsed().as_secs_f64(),
        peak_rss_mib().map_or("-".into(), |m| format!("{m:.0} MiB")),
        dir.display(),
        written.len()
    );
    Ok(last.map(|m| m.merged_accuracy))
}

/// Summary of a mutual-learning run; returns the final global accuracy (the peak models'
/// where there are any).
fn report_mutual(
    config: &ExperimentConfig,
    prepared: &Prepared,
    outcome: &braid_engine::sim::SimOutcome,
    dir: &Path,
    t0: Instant,
) -> Result<Option<f64>> {
    let f = |v: Option<f64>| v.map_or("-".to_string(), |x| format!("{x:.4}"));
    let names: Vec<&str> = prepared.models.iter().map(|a| a.name.as_str()).collect();
    let mut head = format!(
        "{:>5}  {:>5}  {:>8}  {:>8}  {:>8}  {:>8}",
        "round", "alpha", "global", "peak", "min", "max"
    );
    for n in &names {
        head.push_str(&format!("  {n:>9}"));
    }
    head.push_str(&format!("  {:>9}  {:>8}", "MB/round", "wall_s"));
    println!("{head}");
    for (m, wall) in &outcome.mutual {
        let mut line = format!(
            "{:>5}  {:>5.2}  {:>8.4}  {:>8}  {:>8.4}  {:>8.4}",
            m.round,
            m.alpha,
            m.accuracy,
            f(m.peak_accuracy),
            m.min_accuracy,
            m.max_accuracy
        );
        for v in &m.per_arch {
            line.push_str(&format!("  {:>9}", f(*v)));
        }
        line.push_str(&format!(
            "  {:>9.2}  {:>8.1}",
            m.bytes_per_round / 1e6,
            wall
        ));
        println!("{line}");
    }
    let written =
        report::write_all(dir, config, &prepared.arch, outcome).map_err(anyhow::Error::msg)?;
    let last = outcome.mutual.last().map(|(m, _)| m);
    println!(
        "final global accuracy {} (peak models {}) after {} rounds | {:.1} MB of models sent | {:.1} s | peak memory {} | results in {} ({} files)",
        f(last.map(|m| m.accuracy)),
        f(last.and_then(|m| m.peak_accuracy)),
        last.map_or(0, |m| m.round),
        last.map_or(0.0, |m| m.cum_bytes as f64 / 1e6),
        t0.elapsed().as_secs_f64(),
        peak_rss_mib().map_or("-".into(), |m| format!("{m:.0} MiB")),
        dir.display(),
        written.len()
    );
    Ok(last.map(|m| m.peak_accuracy.unwrap_or(m.accuracy)))
}

/// Summary of a split-learning run; returns the final accuracy.
fn report_split(
    config: &ExperimentConfig,
    prepared: &Prepared,
    outcome: &braid_engine::sim::SimOutcome,
    dir: &Path,
    t0: Instant,
) -> Result<Option<f64>> {
    println!(
        "{:>5}  {:>8}  {:>8}  {:>10}  {:>6}  {:>9}  {:>8}  {:>9}  {:>9}  {:>8}",
        "epoch",
        "accuracy",
        "loss",
        "train_loss",
        "steps",
        "batch",
        "clients",
        "MB total",
        "sim_s",
        "wall_s"
    );
    let f = |v: Option<f64>| v.map_or("-".to_string(), |x| format!("{x:.4}"));
    for (m, wall) in &outcome.split {
        println!(
            "{:>5}  {:>8}  {:>8}  {:>10.4}  {:>6}  {:>9}  {:>8.1}  {:>9.1}  {:>9.1}  {:>8.1}",
            m.epoch,
            f(m.accuracy),
            f(m.loss),
            m.train_loss,
            m.steps,
            format!("{}-{}", m.min_batch, m.max_batch),
            m.mean_clients,
            (m.bytes_up + m.bytes_down) as f64 / 1e6,
            m.sim_time_s,
            wall
        );
    }
    let written =
        report::write_all(dir, config, &prepared.arch, outcome).map_err(anyhow::Error::msg)?;
    let final_acc = outcome.split.iter().rev().find_map(|(m, _)| m.accuracy);
    let bytes: u64 = outcome
        .split
        .iter()
        .map(|(m, _)| m.bytes_up + m.bytes_down)
        .sum();
    let sim: f64 = outcome.split.iter().map(|(m, _)| m.sim_time_s).sum();
    println!(
        "final test accuracy {} after {} epochs | {:.1} MB communicated | {:.0} s simulated | {:.1} s | peak memory {} | results in {} ({} files)",
        f(final_acc),
        outcome.split.len(),
        bytes as f64 / 1e6,
        sim,
        t0.elapsed().as_secs_f64(),
        peak_rss_mib().map_or("-".into(), |m| format!("{m:.0} MiB")),
        dir.display(),
        written.len()
    );
    Ok(final_acc)
}

/// Writes each participant's training shard as IDX files under `dir/node-<id>/`.
fn write_shards(p: &Prepared, dir: &Path) -> Result<()> {
    for (k, part) in p.parts.iter().enumerate() {
        let id = experiment::node_of_shard(&p.config, k);
        let d = dir.join(format!("node-{id}"));
        std::fs::create_dir_all(&d).with_context(|| format!("cannot create {}", d.display()))?;
        let (images, labels) = p.data.train.select(part).to_idx()?;
        for (name, bytes) in [
            ("train-images-idx3-ubyte", images),
            ("train-labels-idx1-ubyte", labels),
        ] {
            report::write_atomic(&d.join(name), &bytes).map_err(anyhow::Error::msg)?;
        }
    }
    println!(
        "wrote {} shards to {}/node-<id>/ (for braid node --data)",
        p.parts.len(),
        dir.display()
    );
    Ok(())
}

fn print_histogram(p: &Prepared) {
    let hist = p.histogram();
    let classes = p.data.train.num_classes();
    println!(
        "{} | {} clients | partition {:?}",
        p.data_description,
        p.parts.len(),
        p.config
            .partition
            .scheme()
            .map(|s| format!("{s:?}"))
            .unwrap_or_default()
    );
    print!("{:>7} {:>6} |", "client", "total");
    for c in 0..classes {
        print!(" {c:>5}");
    }
    println!();
    for (i, h) in hist.iter().enumerate() {
        print!("{:>7} {:>6} |", i + 1, h.iter().sum::<usize>());
        for v in h {
            print!(" {v:>5}");
        }
        println!();
    }
    let totals: Vec<usize> = (0..classes)
        .map(|c| hist.iter().map(|h| h[c]).sum())
        .collect();
    print!("{:>7} {:>6} |", "all", totals.iter().sum::<usize>());
    for v in totals {
        print!(" {v:>5}");
    }
    println!();
}

fn print_topologies(nodes: usize, r: f64, samples: u64, seed_value: u64) -> Result<()> {
    use braid_core::topology::{expected_spectral_gap, Topology, TopologyConfig};
    if !(r.is_finite() && r >= 0.0) {
        anyhow::bail!("--r must be >= 0 (got {r})");
    }
    println!("{nodes} nodes, budget r = {r}: spectral gap 1 - |lambda_2| of the expected mixing matrix E[W] ({samples} sampled rounds where the graph changes)");
    println!(
        "{:<22} {:<20} {:>12} {:>16}",
        "topology", "mixing", "gap", "messages/round"
    );
    let configs = [
        ("ring", TopologyConfig::Ring),
        ("torus", TopologyConfig::Torus),
        ("exponential", TopologyConfig::Exponential),
        ("one-peer-exponential", TopologyConfig::OnePeerExponential),
        ("complete", TopologyConfig::Complete),
        ("erdos-renyi p=0.2", TopologyConfig::ErdosRenyi { p: 0.2 }),
        ("random", TopologyConfig::Random),
        (
            "base-random (ring)",
            TopologyConfig::BaseRandom {
                base: Box::new(TopologyConfig::Ring),
            },
        ),
    ];
    for (name, config) in configs {
        let mut rng = braid_core::seed::rng(seed_value, &[]);
        match Topology::new(config, nodes, &mut rng) {
            Ok(t) => {
                let rule = t.default_mixing();
                let gap = expected_spectral_gap(&t, rule, r, samples, &mut rng)
                    .map_err(anyhow::Error::msg)?;
                let msgs: usize = (0..samples.max(1))
                    .map(|s| t.round_graph(s, r, &mut rng).edges())
                    .sum();
                println!(
                    "{:<22} {:<20} {:>12.6} {:>16.1}",
                    name,
                    format!("{rule:?}"),
                    gap,
                    msgs as f64 / samples.max(1) as f64
                );
            }
            Err(e) => println!("{name:<22} {e}"),
        }
    }
    Ok(())
}
