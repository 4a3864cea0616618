//! The `braid` command line, as a library: [`main_with`] runs it with a registry of
//! algorithms, so a program that registers its own algorithms keeps every command (`run`,
//! `node`, `launch`, `audit`, `halt`, ...) for them.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result};
use braid_engine::algorithm::Registry;
use braid_engine::config::ExperimentConfig;
use braid_engine::experiment::Prepared;
use braid_engine::report;
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

/// `println!` that ignores a closed stdout (a launcher or a pager that went away): the
/// process goes on, its log and results are what count.
macro_rules! say {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($t)*);
    }};
}

mod audit;
mod bench;
mod bench_net;
mod bench_step;
mod compare;
mod faults;
mod launch;
mod node;

/// The bundled quick-start experiment, compiled in so `braid demo` works from any directory.
const QUICKSTART: &str = include_str!("../../../../configs/quickstart.toml");

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
    /// The fault-schedule simulator: the run's nodes under seeded delays, duplicates, losses
    /// and crashes with restarts, checked against the fault-free run, over many seeds.
    Faults(faults::FaultsArgs),
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
    /// Approve a `[governance]` threshold report, with a key from `network.halt_keys`: the node
    /// that paused at it may then resume.
    Approve(node::ApproveArgs),
    /// Plot the test accuracy of several finished runs on one chart (from their metrics.csv).
    Compare(compare::CompareArgs),
    /// Check a deployed run's signed logs (`verify`) or account for its compute and traffic
    /// (`report`).
    #[command(subcommand)]
    Audit(audit::AuditCommand),
}

/// [`main_with`] for a registry a program built, or the error building it returned (printed
/// as one line, exit code 1): `fn main() -> ExitCode { braid::cli::main_from(registry()) }`.
pub fn main_from<E: std::fmt::Display>(registry: Result<Registry, E>) -> ExitCode {
    match registry {
        Ok(registry) => main_with(registry),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the command line (arguments from the process) with the algorithms of `registry`; the
/// process's exit code. `braid`'s own `main` is `main_with(Registry::builtin())`.
///
/// Call it first thing in `main`: where no desktop session is running it turns off Mesa's
/// device-select Vulkan layer (`NODEVICE_SELECT=1`), which otherwise prints errors about a
/// missing Wayland display whenever a GPU is looked for; braid picks its GPU itself.
pub fn main_with(registry: Registry) -> ExitCode {
    if std::env::var_os("XDG_RUNTIME_DIR").is_none()
        && std::env::var_os("NODEVICE_SELECT").is_none()
    {
        // Still one thread: nothing reads the environment concurrently.
        std::env::set_var("NODEVICE_SELECT", "1");
    }
    // A program may have set up tracing itself; then its subscriber stays.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            // wgpu reports a missing Vulkan driver as errors of its own; braid says it in one line.
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,wgpu_hal=off,wgpu_core=off".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        // A closed stderr (a launcher that died) must not panic the process through the
        // subscriber's own `eprintln!` about the failed write.
        .log_internal_errors(false)
        .try_init();
    match dispatch(Cli::parse(), &registry) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            use std::io::Write as _;
            let chain: Vec<String> = e.chain().map(|c| c.to_string()).collect();
            let _ = writeln!(std::io::stderr(), "error: {}", chain.join(": "));
            ExitCode::FAILURE
        }
    }
}

fn dispatch(cli: Cli, registry: &Registry) -> Result<()> {
    match cli.command {
        Command::Run {
            file,
            set,
            out,
            baseline,
            quiet,
        } => {
            let config = ExperimentConfig::load_with(&file, &set, registry)?;
            if config.governance.is_some() {
                say!("note: [governance] thresholds are checked by deployed nodes (braid launch, braid node); the simulator reports none");
            }
            run_and_report(registry, config, out, baseline, quiet)
        }
        Command::Demo { set, out, quiet } => {
            let config =
                ExperimentConfig::parse_with(QUICKSTART, "quickstart.toml", &set, registry)?;
            run_and_report(registry, config, out, false, quiet)
        }
        Command::Partition { file, set, write } => {
            let config = ExperimentConfig::load_with(&file, &set, registry)?;
            let algorithm = registry.of(&config).map_err(anyhow::Error::msg)?;
            let prepared = algorithm.prepare(&config)?;
            print_histogram(&prepared);
            if let Some(dir) = write {
                write_shards(&prepared, |k| algorithm.node_of_shard(k), &dir)?;
            }
            Ok(())
        }
        Command::Init => {
            print!("{QUICKSTART}");
            Ok(())
        }
        Command::Bench(args) => bench::run(args),
        Command::BenchNet(args) => bench_net::run(args),
        Command::BenchStep(args) => bench_step::run(args, registry),
        Command::Keygen(args) => node::keygen(args),
        Command::Node(args) => node::node(args, registry),
        Command::Launch(args) => launch::launch(args, registry),
        Command::Audit(cmd) => audit::run(cmd, registry),
        Command::Compare(args) => compare::run(args),
        Command::Halt(args) => node::halt(args, registry),
        Command::Approve(args) => node::approve(args),
        Command::Faults(args) => faults::run(args, registry),
        Command::Topology {
            nodes,
            r,
            samples,
            seed,
        } => print_topologies(nodes, r, samples, seed),
    }
}

fn run_and_report(
    registry: &Registry, config: ExperimentConfig, out: Option<PathBuf>, baseline: bool,
    quiet: bool,
) -> Result<()> {
    let dir = out.unwrap_or_else(|| config.output_dir());
    // One run at a time per output directory (the baseline's is inside it).
    let _lock = report::DirLock::acquire(&dir).map_err(anyhow::Error::msg)?;
    let main_acc = run_one(registry, &config, &dir, quiet)?;
    let reference = if baseline {
        registry
            .of(&config)
            .map_err(anyhow::Error::msg)?
            .baseline(&config)
    } else {
        None
    };
    if let Some(b) = reference {
        println!();
        let base_acc = run_one(registry, &b.config, &dir.join("baseline"), quiet)?;
        if let (Some(a), Some(r)) = (main_acc, base_acc) {
            println!(
                "\n{} {a:.4} vs {} {r:.4} (gap {:+.4})",
                b.subject,
                b.what,
                a - r
            );
        }
    }
    Ok(())
}

/// Peak resident memory of this process in MiB (Linux `VmHWM`), if known.
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Runs one experiment, writes its outputs, prints a summary; returns the accuracy a baseline
/// is compared with.
fn run_one(
    registry: &Registry, config: &ExperimentConfig, dir: &Path, quiet: bool,
) -> Result<Option<f64>> {
    let t0 = Instant::now();
    let algorithm = registry.of(config).map_err(anyhow::Error::msg)?;
    let prepared = algorithm.prepare(config)?;
    println!(
        "braid: {} | {} | {} | model {} ({} parameters) | {} worker thread(s) | seed {}",
        algorithm.name(),
        prepared.data_description,
        algorithm.describe(&prepared)?,
        config.model.name.as_str(),
        prepared.model.num_params(),
        prepared.workers(),
        config.seed
    );
    let bar = if quiet {
        ProgressBar::hidden()
    } else {
        let (unit, len) = algorithm.progress(config)?;
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
    let finished = algorithm
        .simulate(&prepared, &mut |at, accuracy| {
            bar.set_position(at);
            if let Some(a) = accuracy {
                bar.set_message(format!("accuracy {a:.4}"));
            }
        })
        .context("run failed")?;
    bar.finish_and_clear();
    print!("{}", finished.table());
    let written = finished.write(dir).map_err(anyhow::Error::msg)?;
    let summary = finished.summary();
    println!(
        "{} | {:.1} s | peak memory {} | results in {} ({} files)",
        summary.line,
        t0.elapsed().as_secs_f64(),
        peak_rss_mib().map_or("-".into(), |m| format!("{m:.0} MiB")),
        dir.display(),
        written.len()
    );
    Ok(summary.accuracy)
}

/// Writes each participant's training shard as IDX files under `dir/node-<id>/`.
fn write_shards(p: &Prepared, node_of_shard: impl Fn(usize) -> u32, dir: &Path) -> Result<()> {
    for (k, part) in p.parts.iter().enumerate() {
        let id = node_of_shard(k);
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
