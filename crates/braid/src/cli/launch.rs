//! `braid launch`: a deployed run on one machine, for trying deployment out and for tests.
//!
//! It writes one key per participant, picks free loopback ports, writes the experiment with a
//! `[network]` table naming every participant (`launch.toml`), starts one `braid node` process
//! per participant, relays their output with a role prefix, and collects the results of the
//! node that evaluates (the FedAvg server or the dsgd monitor) and every node's traffic into
//! the output directory.
//!
//! SIGINT and SIGTERM stop the run: the launcher sends SIGTERM to every node (each finishes or
//! abandons its step, checkpoints and leaves), waits for them, kills what is left after 30 s,
//! and exits with an error; `--resume` continues the run. The nodes run in their own process
//! group (a terminal's Ctrl-C reaches only the launcher, which stops them once) and are sent
//! SIGTERM by the kernel if the launcher dies without stopping them.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use braid_engine::algorithm::Registry;
use braid_engine::config::{ExperimentConfig, Participant};
use braid_engine::report;
use clap::Args;

/// `braid launch`.
#[derive(Debug, Args)]
pub struct LaunchArgs {
    /// The experiment file (a `[network]` table is optional: its limits are kept, its
    /// participants replaced by the launched ones).
    pub file: PathBuf,
    /// Participants holding data: clients (FedAvg family) or peers (dsgd); sets
    /// `partition.clients`. One more process runs the server or the dsgd monitor.
    /// Default: the config's `partition.clients`.
    #[arg(long)]
    pub nodes: Option<usize>,
    /// Override a config value (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Output directory (default: the config's output dir). Holds `launch.toml`, `keys/`,
    /// one `node-<id>/` per process (with its `log.txt`), the evaluating node's results and
    /// `nodes.csv` (traffic and refusals of every node).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Pass `--resume` to every node and reuse the keys in `<out>/keys` (after a crash).
    #[arg(long)]
    pub resume: bool,
    /// After the evaluating node has finished, seconds to wait for the others before they are
    /// stopped (0 to 86400).
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(0..=86_400))]
    pub grace_s: u64,
    /// `NODE=KIND`: node NODE trains dishonestly (see `braid node --dishonest`). Hidden: a
    /// test aid for `braid audit replay`.
    #[arg(long, hide = true, value_name = "NODE=KIND")]
    pub dishonest: Vec<String>,
}

/// Most data-holding processes one `braid launch` starts on its machine.
const MAX_PROCESSES: usize = 1024;

/// One launched process.
struct Launched {
    id: u32,
    label: String,
    child: Child,
    status: Option<ExitStatus>,
}

/// Runs every participant of the experiment as its own process on loopback.
pub fn launch(args: LaunchArgs, registry: &Registry) -> Result<()> {
    let t0 = Instant::now();
    let mut config = ExperimentConfig::load_with(&args.file, &args.set, registry)?;
    if let Some(n) = args.nodes {
        if !(1..=MAX_PROCESSES).contains(&n) {
            bail!(
                "--nodes {n}: braid launch runs every node as a process on this machine, from 1 to {MAX_PROCESSES}; simulate more with braid run, or deploy them across machines with braid node"
            );
        }
        config.partition.clients = n;
        // The new count is checked (against the data and the algorithm) before any key is
        // written.
        config.validate_with(registry).map_err(anyhow::Error::msg)?;
    }
    let participants = config.partition.clients;
    if participants > MAX_PROCESSES {
        bail!(
            "partition.clients = {participants}: braid launch runs every node as a process on this machine, at most {MAX_PROCESSES}; simulate more with braid run, or deploy them across machines with braid node"
        );
    }
    let algorithm = registry.of(&config).map_err(anyhow::Error::msg)?;
    // The data and the partition, checked against the node count before any key is written
    // (each node does the same again when it starts).
    algorithm.prepare(&config).map_err(anyhow::Error::msg)?;
    if algorithm.shards(&config) < 2 {
        bail!(
            "algorithm.name = \"{}\" has nothing to deploy: use braid run",
            algorithm.name()
        );
    }
    // Total processes: the participants holding data and one more (a server or a monitor);
    // the one holding no data evaluates and reports.
    let total = participants + 1;
    let evaluator = (0..total as u32)
        .find(|&id| algorithm.shard_of_node(id, participants).is_none())
        .unwrap_or(0);
    let labels: Vec<String> = (0..total as u32)
        .map(|id| {
            let role = algorithm.role(&config, id as usize, total);
            match algorithm.shard_of_node(id, participants) {
                Some(_) => format!("{role} {id}"),
                None => role.to_string(),
            }
        })
        .collect();
    let label = |id: u32| labels[id as usize].clone();
    let data_role = algorithm.role(&config, algorithm.node_of_shard(0) as usize, total);
    let evaluator_role = algorithm.role(&config, evaluator as usize, total);
    let dir = args.out.clone().unwrap_or_else(|| config.output_dir());
    let _lock = report::DirLock::acquire(&dir).map_err(anyhow::Error::msg)?;
    std::fs::create_dir_all(dir.join("keys"))
        .with_context(|| format!("cannot create {}", dir.join("keys").display()))?;

    let mut peers = Vec::with_capacity(total);
    for i in 0..total {
        let path = key_path(&dir, i);
        let key = if path.exists() {
            if !args.resume {
                bail!(
                    "{} exists: launch into a fresh --out, or pass --resume to continue that run",
                    path.display()
                );
            }
            braid_net::identity::load(&path)?
        } else {
            let key = braid_net::identity::generate();
            braid_net::identity::save(&key, &path)?;
            key
        };
        peers.push(braid_net::identity::peer_id(&key).to_string());
    }
    let ports = free_ports(total)?;
    let mut network = config.network.clone().unwrap_or_default();
    network.participants = (0..total)
        .map(|i| Participant {
            node: i as u32,
            peer_id: peers[i].clone(),
            addr: Some(format!("/ip4/127.0.0.1/tcp/{}", ports[i])),
        })
        .collect();
    config.network = Some(network);
    config.validate_with(registry).map_err(anyhow::Error::msg)?;
    let launch_file = dir.join("launch.toml");
    report::write_atomic(&launch_file, config.to_toml().as_bytes()).map_err(anyhow::Error::msg)?;

    say!(
        "braid launch: {} | {} {data_role}s + {} | {total} processes on 127.0.0.1 | config {}",
        config.name,
        participants,
        evaluator_role,
        launch_file.display()
    );
    let exe = std::env::current_exe().context("cannot find the braid executable")?;
    let stop = lifecycle::on_signal()?;
    let stdout = Arc::new(Mutex::new(std::io::stdout()));
    let mut launched = Vec::with_capacity(total);
    let mut relays = Vec::new();
    for i in 0..total {
        let id = i as u32;
        let label = label(id);
        let node_dir = dir.join(format!("node-{id}"));
        std::fs::create_dir_all(&node_dir)
            .with_context(|| format!("cannot create {}", node_dir.display()))?;
        let mut cmd = Command::new(&exe);
        cmd.arg("node")
            .arg(&launch_file)
            .arg("--key")
            .arg(key_path(&dir, i))
            .arg("--out")
            .arg(&node_dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        lifecycle::detach(&mut cmd);
        if args.resume {
            cmd.arg("--resume");
        }
        for d in &args.dishonest {
            match d.split_once('=') {
                Some((n, kind)) if n.parse() == Ok(id) => {
                    cmd.arg("--dishonest").arg(kind);
                }
                Some((n, _)) if n.parse::<u32>().is_ok() => {}
                _ => bail!("--dishonest {d:?}: expected NODE=KIND"),
            }
        }
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                kill_all(&mut launched);
                return Err(e).with_context(|| format!("cannot start {label}"));
            }
        };
        let log = Arc::new(Mutex::new(
            std::fs::File::create(node_dir.join("log.txt"))
                .with_context(|| format!("cannot create {}/log.txt", node_dir.display()))?,
        ));
        if let Some(out) = child.stdout.take() {
            relays.push(relay(out, label.clone(), log.clone(), stdout.clone()));
        }
        if let Some(err) = child.stderr.take() {
            relays.push(relay(err, label.clone(), log, stdout.clone()));
        }
        launched.push(Launched {
            id,
            label,
            child,
            status: None,
        });
    }

    let outcome = supervise(
        &mut launched,
        evaluator,
        Duration::from_secs(args.grace_s),
        &stop,
        &dir,
    );
    for r in relays {
        let _ = r.join();
    }
    outcome?;
    let paused: Vec<String> = (0..total as u32)
        .filter(|&i| paused(&dir, i))
        .map(label)
        .collect();
    if !paused.is_empty() {
        // What the evaluator wrote before it paused, if it wrote anything.
        let _ = collect(&dir, evaluator, total);
        bail!(
            "{} paused at a [governance] threshold: a key in network.halt_keys approves the reports (braid approve {}/node-*/threshold-*.report --key KEY), then braid launch --resume continues the run",
            paused.join(", "),
            dir.display()
        );
    }
    let collected = collect(&dir, evaluator, total)?;
    let failed: Vec<String> = launched
        .iter()
        .filter(|l| !l.status.is_some_and(|s| s.success()))
        .map(|l| format!("{} ({})", l.label, describe(l.status)))
        .collect();
    say!(
        "braid launch: done in {:.1} s | results of {} and nodes.csv in {} ({} files){}",
        t0.elapsed().as_secs_f64(),
        label(evaluator),
        dir.display(),
        collected,
        if failed.is_empty() {
            String::new()
        } else {
            format!(" | did not finish cleanly: {}", failed.join(", "))
        }
    );
    Ok(())
}

fn key_path(dir: &Path, i: usize) -> PathBuf {
    dir.join("keys").join(format!("node-{i}.key"))
}

fn describe(status: Option<ExitStatus>) -> String {
    match status {
        Some(s) => s.to_string(),
        None => "stopped by the launcher".into(),
    }
}

/// `n` distinct free loopback ports (all held open while picking, so they differ).
pub(crate) fn free_ports(n: usize) -> Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()
        .context("cannot find free loopback ports")?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect::<std::io::Result<Vec<_>>>()
        .context("cannot read a loopback port")
}

/// Copies each line of a child's output to its log file and, prefixed, to our stdout.
fn relay(
    from: impl std::io::Read + Send + 'static, label: String, log: Arc<Mutex<std::fs::File>>,
    stdout: Arc<Mutex<std::io::Stdout>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(from).lines() {
            let Ok(line) = line else { break };
            if let Ok(mut f) = log.lock() {
                let _ = writeln!(f, "{line}");
            }
            if let Ok(mut out) = stdout.lock() {
                let _ = writeln!(out, "[{label}] {line}");
            }
        }
    })
}

/// Waits for the processes. A failing evaluator stops the run (an error); other failures are
/// reported and the run goes on (fault tolerance is the nodes' job). Once the evaluator is
/// done, the others get `grace` to finish before they are killed.
fn supervise(
    launched: &mut [Launched], evaluator: u32, grace: Duration, stop: &lifecycle::Stop, dir: &Path,
) -> Result<()> {
    let mut evaluator_done: Option<Instant> = None;
    loop {
        if let Some(sig) = stop.signalled() {
            eprintln!("braid launch: {sig}: stopping every node (they checkpoint and leave)");
            stop_all(launched, Duration::from_secs(30));
            bail!("stopped by {sig}; continue the run with braid launch --resume");
        }
        let mut running = 0;
        let mut evaluator_failed = None;
        for l in launched.iter_mut() {
            if l.status.is_some() {
                continue;
            }
            match l.child.try_wait() {
                Ok(Some(s)) => {
                    l.status = Some(s);
                    if l.id == evaluator {
                        if !s.success() {
                            evaluator_failed = Some(format!("the {} failed ({s})", l.label));
                        }
                        evaluator_done = Some(Instant::now());
                    } else if !s.success() {
                        eprintln!(
                            "braid launch: {} exited ({s}); the run goes on without it",
                            l.label
                        );
                    }
                }
                Ok(None) => running += 1,
                Err(e) => bail!("cannot wait for {}: {e}", l.label),
            }
        }
        // An evaluator paused at a threshold: the others would only wait for it.
        if evaluator_done.is_some() && running > 0 && paused(dir, evaluator) {
            eprintln!(
                "braid launch: node {evaluator} paused at a [governance] threshold; stopping the other nodes (they checkpoint and leave)"
            );
            stop_all(launched, Duration::from_secs(30));
            return Ok(());
        }
        if let Some(why) = evaluator_failed {
            kill_all(launched);
            bail!("{why}; stopped every node (see the node-*/log.txt files)");
        }
        if running == 0 {
            return Ok(());
        }
        if evaluator_done.is_some_and(|t| t.elapsed() > grace) {
            eprintln!(
                "braid launch: {running} node(s) still running {} s after the evaluator finished; stopping them",
                grace.as_secs()
            );
            // SIGTERM first: a node stopped so logs its leaving (its log then verifies).
            stop_all(launched, Duration::from_secs(10));
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// True when node `id`'s log in `dir` ends with it pausing at a `[governance]` threshold.
fn paused(dir: &Path, id: u32) -> bool {
    braid_net::runlog::read_entries(&dir.join(format!("node-{id}/runlog.jsonl")))
        .into_iter()
        .rev()
        .find_map(|e| match e.event {
            braid_net::runlog::LogEvent::Leave { reason } => Some(reason.starts_with("paused")),
            _ => None,
        })
        .unwrap_or(false)
}

/// Sends SIGTERM to every running node, waits up to `patience` for them to exit, then kills
/// the rest.
fn stop_all(launched: &mut [Launched], patience: Duration) {
    for l in launched.iter().filter(|l| l.status.is_none()) {
        lifecycle::terminate(&l.child);
    }
    let t0 = Instant::now();
    while t0.elapsed() < patience {
        let mut running = 0;
        for l in launched.iter_mut().filter(|l| l.status.is_none()) {
            match l.child.try_wait() {
                Ok(Some(s)) => l.status = Some(s),
                Ok(None) => running += 1,
                Err(_) => {}
            }
        }
        if running == 0 {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    kill_all(launched);
}

fn kill_all(launched: &mut [Launched]) {
    for l in launched.iter_mut().filter(|l| l.status.is_none()) {
        let _ = l.child.kill();
        let _ = l.child.wait();
    }
}

/// Copies the evaluator's result files into `dir` and joins every `node.csv` into
/// `nodes.csv`; returns how many files were written.
fn collect(dir: &Path, evaluator: u32, total: usize) -> Result<usize> {
    let from = dir.join(format!("node-{evaluator}"));
    // The evaluator's results as a unit: checked against its manifest, copied with the
    // manifest removed first and written last.
    let manifest = report::check_manifest(&from).map_err(anyhow::Error::msg)?;
    report::begin_results(dir).map_err(anyhow::Error::msg)?;
    let mut written = 0;
    for f in &manifest.files {
        let bytes = std::fs::read(from.join(&f.name))
            .with_context(|| format!("cannot read {}", from.join(&f.name).display()))?;
        report::write_atomic(&dir.join(&f.name), &bytes).map_err(anyhow::Error::msg)?;
        written += 1;
    }
    let bytes = std::fs::read(from.join(report::MANIFEST))
        .with_context(|| format!("cannot read {}", from.join(report::MANIFEST).display()))?;
    report::write_atomic(&dir.join(report::MANIFEST), &bytes).map_err(anyhow::Error::msg)?;
    written += 1;
    let mut nodes = String::new();
    for i in 0..total {
        let path = dir.join(format!("node-{i}")).join("node.csv");
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue; // a node that died never wrote its summary
        };
        let mut lines = text.lines();
        let header = lines.next().unwrap_or_default();
        if nodes.is_empty() {
            nodes.push_str(header);
            nodes.push('\n');
        }
        for l in lines {
            nodes.push_str(l);
            nodes.push('\n');
        }
    }
    report::write_atomic(&dir.join("nodes.csv"), nodes.as_bytes()).map_err(anyhow::Error::msg)?;
    Ok(written + 1)
}

/// Signals: the launcher's own, the nodes' process group, sending SIGTERM.
mod lifecycle {
    use std::process::{Child, Command};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use anyhow::{Context, Result};

    /// The last signal received (0: none).
    pub struct Stop(Arc<AtomicUsize>);

    impl Stop {
        /// The name of the signal that asked the launcher to stop, if one did.
        pub fn signalled(&self) -> Option<&'static str> {
            match self.0.load(Ordering::Relaxed) {
                0 => None,
                2 => Some("SIGINT"),
                _ => Some("SIGTERM"),
            }
        }
    }

    /// Catches SIGINT and SIGTERM from now on.
    #[cfg(unix)]
    pub fn on_signal() -> Result<Stop> {
        let last = Arc::new(AtomicUsize::new(0));
        for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            signal_hook::flag::register_usize(sig, Arc::clone(&last), sig as usize)
                .context("cannot handle SIGINT/SIGTERM")?;
        }
        Ok(Stop(last))
    }

    #[cfg(not(unix))]
    pub fn on_signal() -> Result<Stop> {
        Ok(Stop(Arc::new(AtomicUsize::new(0))))
    }

    /// Starts the node in its own process group, and has the kernel send it SIGTERM when the
    /// launcher dies (Linux).
    #[cfg(unix)]
    pub fn detach(cmd: &mut Command) {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
        #[cfg(target_os = "linux")]
        // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and touches no memory of the
        // parent; it runs in the child between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }

    #[cfg(not(unix))]
    pub fn detach(_cmd: &mut Command) {}

    /// Sends SIGTERM to `child` (where there are signals; elsewhere it is killed).
    pub fn terminate(child: &Child) {
        #[cfg(unix)]
        if let Ok(pid) = libc::pid_t::try_from(child.id()) {
            // SAFETY: kill(2) with a pid of our own child that has not been waited for.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
        #[cfg(not(unix))]
        let _ = child;
    }
}
