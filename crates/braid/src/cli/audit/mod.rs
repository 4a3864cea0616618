//! `braid audit verify|report|replay DIR`: check a deployed run's signed logs, account for it,
//! and re-execute its training claims.
//!
//! A run directory holds one `runlog.jsonl` per node (`DIR/node-<id>/runlog.jsonl`, the layout
//! `braid launch` and `braid node --out` write). `verify` checks every log (signatures, chain,
//! sequence, keys against the run's allow-list), that all nodes ran the same configuration,
//! and that what each node says it sent the receiver says it received. `report` adds up
//! compute, traffic and participation per node from the verified entries and writes
//! `audit-report.json` and `audit-report.md`. `replay` re-executes a sample of the logged
//! local trainings ([`replay`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use braid_engine::algorithm::Registry;
use braid_engine::config::ExperimentConfig;
use braid_engine::report;
use braid_engine::wire::NodeId;
use braid_net::roster::Roster;
use braid_net::runlog::{self, Entry, LogCheck, LogEvent};
use braid_net::PeerId;
use clap::Subcommand;
use serde::Serialize;

mod replay;

/// `braid audit`.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check every node's run log and cross-check them; exits non-zero on any problem.
    Verify {
        /// The run directory (with `node-<id>/runlog.jsonl`).
        dir: PathBuf,
        /// The experiment file whose `[network]` participants are the allow-list (default:
        /// `DIR/launch.toml` if it exists).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Verify, then total compute, traffic and participation per node; writes
    /// `DIR/audit-report.json` and `DIR/audit-report.md`.
    Report {
        /// The run directory.
        dir: PathBuf,
        /// The experiment file with the allow-list (default: `DIR/launch.toml`).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Verify, then re-execute a seeded sample of the logged local trainings from the run's
    /// configuration, the shards and the inputs their senders kept; each claim is confirmed
    /// or refuted (model hash after training, samples, FLOPs). Exits non-zero unless every
    /// sampled claim is confirmed.
    Replay {
        /// The run directory.
        dir: PathBuf,
        /// The run's experiment file (default: `DIR/launch.toml`).
        #[arg(long)]
        config: Option<PathBuf>,
        /// The fraction of the claims to replay (above 0, at most 1).
        #[arg(long, default_value_t = 1.0)]
        sample: f64,
        /// The seed that picks the sample.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
}

/// Runs an audit command.
pub fn run(cmd: AuditCommand, registry: &Registry) -> Result<()> {
    match cmd {
        AuditCommand::Verify { dir, config } => {
            let audit = check(&dir, config.as_deref(), registry)?;
            audit.print_problems();
            if audit.problems() > 0 {
                bail!("{} problem(s) found in {}", audit.problems(), dir.display());
            }
            println!(
                "all {} logs verify: {} entries, {} messages matched between sender and receiver",
                audit.logs.len(),
                audit
                    .logs
                    .iter()
                    .map(|l| l.check.entries.len())
                    .sum::<usize>(),
                audit.matched_messages
            );
            Ok(())
        }
        AuditCommand::Replay {
            dir,
            config,
            sample,
            seed,
        } => replay::replay(&dir, config.as_deref(), sample, seed, registry),
        AuditCommand::Report { dir, config } => {
            let audit = check(&dir, config.as_deref(), registry)?;
            audit.print_problems();
            let r = totals(&audit);
            let json = serde_json::to_string_pretty(&r).context("cannot encode the report")?;
            report::write_atomic(&dir.join("audit-report.json"), json.as_bytes())
                .map_err(anyhow::Error::msg)?;
            let md = markdown(&r);
            report::write_atomic(&dir.join("audit-report.md"), md.as_bytes())
                .map_err(anyhow::Error::msg)?;
            print!("{md}");
            println!(
                "\nwritten: {} and {}",
                dir.join("audit-report.json").display(),
                dir.join("audit-report.md").display()
            );
            if audit.problems() > 0 {
                bail!(
                    "{} problem(s) found: the totals above cover only the entries that verified",
                    audit.problems()
                );
            }
            Ok(())
        }
    }
}

struct NodeLog {
    path: PathBuf,
    check: LogCheck,
}

struct Audit {
    logs: Vec<NodeLog>,
    /// Problems across logs (configuration hashes, cross-checks).
    run_problems: Vec<String>,
    matched_messages: u64,
    allow_list: bool,
}

impl Audit {
    fn problems(&self) -> usize {
        self.run_problems.len()
            + self
                .logs
                .iter()
                .map(|l| l.check.problems.len())
                .sum::<usize>()
    }

    fn print_problems(&self) {
        if !self.allow_list {
            println!("note: no allow-list given (--config, or DIR/launch.toml): signatures are checked against the keys the logs name, not against the run's participants");
        }
        for l in &self.logs {
            let name = l.path.display();
            for p in &l.check.problems {
                println!("{name}: {p}");
            }
            if l.check.torn_tail {
                println!(
                    "{name}: the last entry is cut short (the node crashed while writing it); the {} entries before it verify",
                    l.check.entries.len()
                );
            }
        }
        for p in &self.run_problems {
            println!("{p}");
        }
    }
}

/// Every `runlog.jsonl` directly in `dir` or one level below.
fn find_logs(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    if dir.join("runlog.jsonl").is_file() {
        out.push(dir.join("runlog.jsonl"));
    }
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))?;
    for e in entries {
        let e = e.with_context(|| format!("cannot read {}", dir.display()))?;
        let p = e.path().join("runlog.jsonl");
        if p.is_file() {
            out.push(p);
        }
    }
    out.sort();
    if out.is_empty() {
        bail!(
            "no run logs (runlog.jsonl) in {} or its subdirectories",
            dir.display()
        );
    }
    Ok(out)
}

fn check(dir: &Path, config: Option<&Path>, registry: &Registry) -> Result<Audit> {
    let config = config
        .map(Path::to_owned)
        .or_else(|| Some(dir.join("launch.toml")).filter(|p| p.is_file()));
    let roster = match &config {
        Some(c) => {
            let cfg = ExperimentConfig::load_with(c, &[], registry)?;
            let net = cfg
                .network
                .with_context(|| format!("{} has no [network] table", c.display()))?;
            Some(Roster::from_config(&net)?)
        }
        None => None,
    };
    let lookup = |n: NodeId| -> Option<PeerId> { roster.as_ref().and_then(|r| r.peer_of(n)) };
    let mut logs = Vec::new();
    for path in find_logs(dir)? {
        let bytes =
            std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let check = if roster.is_some() {
            runlog::verify(&bytes, Some(&lookup))
        } else {
            runlog::verify(&bytes, None)
        };
        logs.push(NodeLog { path, check });
    }
    let mut run_problems = Vec::new();
    // One log per node.
    let mut seen: BTreeMap<NodeId, &Path> = BTreeMap::new();
    for l in &logs {
        if let Some(n) = l.check.node {
            if let Some(other) = seen.insert(n, &l.path) {
                run_problems.push(format!(
                    "node {n} has two logs: {} and {}",
                    other.display(),
                    l.path.display()
                ));
            }
        }
    }
    // The same configuration everywhere.
    let mut runs: BTreeMap<String, Vec<NodeId>> = BTreeMap::new();
    for l in &logs {
        for e in &l.check.entries {
            if let LogEvent::Join { run, .. } = &e.event {
                runs.entry(run.clone()).or_default().push(e.node);
            }
        }
    }
    if runs.len() > 1 {
        let parts: Vec<String> = runs
            .iter()
            .map(|(h, n)| format!("{}... by nodes {n:?}", h.get(..12).unwrap_or(h)))
            .collect();
        run_problems.push(format!(
            "the nodes ran different configurations: {}",
            parts.join("; ")
        ));
    }
    let by_node: Vec<(NodeId, &[Entry])> = logs
        .iter()
        .filter_map(|l| l.check.node.map(|n| (n, l.check.entries.as_slice())))
        .collect();
    run_problems.extend(runlog::cross_check(&by_node));
    run_problems.extend(check_results(dir, &logs));
    let matched_messages = by_node
        .iter()
        .flat_map(|(_, es)| es.iter())
        .filter(|e| matches!(e.event, LogEvent::Received { .. }))
        .count() as u64;
    Ok(Audit {
        logs,
        run_problems,
        matched_messages,
        allow_list: roster.is_some(),
    })
}

/// The result files against the logs: a node that logged `results` must have beside its log
/// the manifest of that hash, and every file the manifest lists as listed; a node that logged
/// a final model must have logged its results; a manifest in `dir` itself (collected by
/// `braid launch`) must be the evaluating node's.
fn check_results(dir: &Path, logs: &[NodeLog]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut bound = Vec::new();
    for l in logs {
        let node = l
            .check
            .node
            .map_or_else(|| "?".to_string(), |n| n.to_string());
        let results = l.check.entries.iter().rev().find_map(|e| match &e.event {
            LogEvent::Results { manifest } => Some(manifest.clone()),
            _ => None,
        });
        let finished = l
            .check
            .entries
            .iter()
            .any(|e| matches!(e.event, LogEvent::Final { .. }));
        let here = l.path.parent().unwrap_or(Path::new("."));
        match results {
            Some(hash) => {
                let manifest = here.join(report::MANIFEST);
                match std::fs::read(&manifest) {
                    Ok(bytes) if runlog::sha256_hex(&bytes) == hash => {
                        if let Err(e) = report::check_manifest(here) {
                            problems.push(format!("node {node}: {e}"));
                        }
                        bound.push(hash);
                    }
                    Ok(_) => problems.push(format!(
                        "node {node}: {} is not the manifest its log names: the result files were replaced",
                        manifest.display()
                    )),
                    Err(e) => problems.push(format!(
                        "node {node}: its log names results, but {} cannot be read ({e})",
                        manifest.display()
                    )),
                }
            }
            None if finished => problems.push(format!(
                "node {node}: its log has a final model but no results entry: its result files are not bound to the log"
            )),
            None => {}
        }
    }
    let top = dir.join(report::MANIFEST);
    if let Ok(bytes) = std::fs::read(&top) {
        if !bound.contains(&runlog::sha256_hex(&bytes)) {
            problems.push(format!(
                "{} is not the manifest of any node's logged results: the collected files were replaced",
                top.display()
            ));
        } else if let Err(e) = report::check_manifest(dir) {
            problems.push(e);
        }
    }
    problems
}

/// One node's totals.
#[derive(Debug, Default, Serialize)]
struct NodeTotals {
    node: NodeId,
    peer_id: String,
    train_samples: u64,
    eval_samples: u64,
    flops: u64,
    compute_s: f64,
    bytes_sent: u64,
    bytes_received: u64,
    messages_sent: u64,
    messages_received: u64,
    refused: u64,
    /// (Unix seconds, "join" / "rejoin" / "leave: reason" / "halted by ...").
    participation: Vec<(f64, String)>,
}

#[derive(Debug, Serialize)]
struct RunTotals {
    run: Option<String>,
    nodes: Vec<NodeTotals>,
    total_flops: u64,
    total_train_samples: u64,
    total_compute_s: f64,
    total_bytes_sent: u64,
    final_models: Vec<(NodeId, String)>,
    problems: usize,
}

fn totals(audit: &Audit) -> RunTotals {
    let mut nodes = Vec::new();
    let mut final_models = Vec::new();
    let mut run = None;
    for l in &audit.logs {
        let Some(node) = l.check.node else { continue };
        let mut t = NodeTotals {
            node,
            ..NodeTotals::default()
        };
        for e in &l.check.entries {
            match &e.event {
                LogEvent::Join {
                    run: r,
                    peer_id,
                    resumed,
                    ..
                } => {
                    run.get_or_insert_with(|| r.clone());
                    t.peer_id.clone_from(peer_id);
                    let what = if *resumed { "rejoin" } else { "join" };
                    t.participation.push((e.t, what.into()));
                }
                LogEvent::Compute {
                    train_samples,
                    eval_samples,
                    flops,
                    seconds,
                    ..
                } => {
                    t.train_samples = t.train_samples.saturating_add(*train_samples);
                    t.eval_samples = t.eval_samples.saturating_add(*eval_samples);
                    t.flops = t.flops.saturating_add(*flops);
                    t.compute_s += seconds;
                }
                LogEvent::Sent { bytes, .. } => {
                    t.bytes_sent = t.bytes_sent.saturating_add(*bytes);
                    t.messages_sent += 1;
                }
                LogEvent::Received { bytes, .. } => {
                    t.bytes_received = t.bytes_received.saturating_add(*bytes);
                    t.messages_received += 1;
                }
                LogEvent::Refused { .. } => t.refused += 1,
                LogEvent::Final { model_hash } => final_models.push((node, model_hash.clone())),
                LogEvent::Halted { by } => t.participation.push((e.t, format!("halted by {by}"))),
                LogEvent::Leave { reason } => {
                    t.participation.push((e.t, format!("leave: {reason}")))
                }
                LogEvent::Progress { .. }
                | LogEvent::Delivered { .. }
                | LogEvent::Results { .. } => {}
            }
        }
        nodes.push(t);
    }
    nodes.sort_by_key(|n| n.node);
    RunTotals {
        run,
        total_flops: nodes
            .iter()
            .map(|n| n.flops)
            .fold(0u64, u64::saturating_add),
        total_train_samples: nodes
            .iter()
            .map(|n| n.train_samples)
            .fold(0u64, u64::saturating_add),
        total_compute_s: nodes.iter().map(|n| n.compute_s).sum(),
        total_bytes_sent: nodes
            .iter()
            .map(|n| n.bytes_sent)
            .fold(0u64, u64::saturating_add),
        nodes,
        final_models,
        problems: audit.problems(),
    }
}

fn markdown(r: &RunTotals) -> String {
    let mut s = String::from("# Run audit\n\n");
    s.push_str(&format!(
        "Run configuration hash: `{}`\n\n",
        r.run.as_deref().unwrap_or("-")
    ));
    s.push_str("| node | peer id | train samples | eval samples | FLOPs | compute s | MB sent | MB received | messages sent | messages received | refused |\n|---|---|---|---|---|---|---|---|---|---|---|\n");
    for n in &r.nodes {
        s.push_str(&format!(
            "| {} | `{}` | {} | {} | {:.3e} | {:.2} | {:.2} | {:.2} | {} | {} | {} |\n",
            n.node,
            n.peer_id,
            n.train_samples,
            n.eval_samples,
            n.flops as f64,
            n.compute_s,
            n.bytes_sent as f64 / 1e6,
            n.bytes_received as f64 / 1e6,
            n.messages_sent,
            n.messages_received,
            n.refused
        ));
    }
    s.push_str(&format!(
        "| all | | {} | | {:.3e} | {:.2} | {:.2} | | | | |\n\n",
        r.total_train_samples,
        r.total_flops as f64,
        r.total_compute_s,
        r.total_bytes_sent as f64 / 1e6
    ));
    s.push_str("Final model (SHA-256 of its f32 parameters):\n\n");
    if r.final_models.is_empty() {
        s.push_str("- none recorded\n");
    }
    for (n, h) in &r.final_models {
        s.push_str(&format!("- node {n}: `{h}`\n"));
    }
    s.push_str("\nParticipation (Unix time):\n\n");
    for n in &r.nodes {
        let events: Vec<String> = n
            .participation
            .iter()
            .map(|(t, w)| format!("{t:.3} {w}"))
            .collect();
        s.push_str(&format!("- node {}: {}\n", n.node, events.join(", ")));
    }
    s.push_str(&format!(
        "\n{} problem(s) found by verification.\n",
        r.problems
    ));
    s
}
