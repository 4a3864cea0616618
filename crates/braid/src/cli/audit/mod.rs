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
use braid_engine::prepared::Prepared;
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
        /// The seed that picks the sample (default: a random one, printed, so that no
        /// participant can know in advance which claims are checked).
        #[arg(long)]
        seed: Option<u64>,
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
    /// The run's configuration (`--config`, or `DIR/launch.toml`), if there is one.
    config: Option<ExperimentConfig>,
    /// The run prepared from it (data, shards, model), if a check needed it.
    prepared: Option<Prepared>,
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
    let cfg = match &config {
        Some(c) => Some(ExperimentConfig::load_with(c, &[], registry)?),
        None => None,
    };
    let roster = match (&config, &cfg) {
        (Some(c), Some(cfg)) => {
            let net = cfg
                .network
                .as_ref()
                .with_context(|| format!("{} has no [network] table", c.display()))?;
            Some(Roster::from_config(net)?)
        }
        _ => None,
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
    let checks: Vec<(NodeId, &LogCheck)> = logs
        .iter()
        .filter_map(|l| l.check.node.map(|n| (n, &l.check)))
        .collect();
    run_problems.extend(runlog::check_witnessed(&checks));
    run_problems.extend(logs.iter().filter_map(unfinished));
    run_problems.extend(logs.iter().flat_map(check_reports));
    run_problems.extend(logs.iter().flat_map(check_metrics));
    run_problems.extend(check_results(dir, &logs));
    let mut prepared = None;
    if let Some(cfg) = &cfg {
        let (problems, p) = check_final_models(&logs, cfg, registry);
        run_problems.extend(problems);
        prepared = p;
    }
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
        config: cfg,
        prepared,
    })
}

/// A log that does not end with the node leaving (only its results may follow): its last
/// entries were removed, or the node was killed and never resumed. Whoever holds the node's
/// key can still sign a new ending; entries another node witnessed are protected by the
/// cross-check.
fn unfinished(l: &NodeLog) -> Option<String> {
    if !l.check.problems.is_empty() || l.check.entries.is_empty() {
        return None; // already reported where it broke
    }
    let last_leave = l
        .check
        .entries
        .iter()
        .rposition(|e| matches!(e.event, LogEvent::Leave { .. }));
    let ends_well = last_leave.is_some_and(|i| {
        l.check.entries[i + 1..]
            .iter()
            .all(|e| matches!(e.event, LogEvent::Results { .. }))
    });
    (!ends_well).then(|| {
        format!(
            "{}: the log ends at entry {} without the node leaving: its last entries were removed, or the node was killed and not resumed",
            l.path.display(),
            l.check.entries.len() - 1
        )
    })
}

/// The evaluating node's `metrics.csv` against the metrics its log reported (`progress`
/// entries: round or step, accuracy): every logged round has its row, agreeing with the
/// logged accuracy to the precision a field of the row prints, and every row a logged round.
fn check_metrics(l: &NodeLog) -> Vec<String> {
    let bound = l
        .check
        .entries
        .iter()
        .any(|e| matches!(e.event, LogEvent::Results { .. }));
    let path = l.path.with_file_name("metrics.csv");
    if !bound || !path.is_file() {
        return Vec::new();
    }
    let text = match std::fs::metadata(&path) {
        Ok(m) if m.len() <= 1 << 30 => std::fs::read_to_string(&path),
        Ok(_) => return vec![format!("{}: larger than 1 GiB", path.display())],
        Err(e) => Err(e),
    };
    let text = match text {
        Ok(t) => t,
        Err(e) => return vec![format!("{}: cannot be read ({e})", path.display())],
    };
    let rows: BTreeMap<u64, Vec<&str>> = text
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(',').collect();
            Some((fields.first()?.parse().ok()?, fields))
        })
        .collect();
    // A field printed with d >= 2 decimals agrees with `x` if it is `x` rounded to d decimals
    // (accuracies are printed so; integer fields are counts, not accuracies).
    let agrees = |field: &str, x: f64| {
        let decimals = field.split_once('.').map_or(0, |(_, d)| d.len());
        decimals >= 2
            && field.parse::<f64>().is_ok_and(|v| {
                (v - x).abs() <= 0.5 * 10f64.powi(-(decimals.min(15) as i32)) + 1e-12
            })
    };
    let mut problems = Vec::new();
    let mut logged = std::collections::BTreeSet::new();
    for e in &l.check.entries {
        let LogEvent::Progress { round, accuracy } = &e.event else {
            continue;
        };
        logged.insert(*round);
        match (rows.get(round), accuracy) {
            (None, _) => problems.push(format!(
                "{}: no row for round {round}, which the log reports (entry {})",
                path.display(),
                e.seq
            )),
            (Some(fields), Some(a)) if !fields[1..].iter().any(|f| agrees(f, *a)) => {
                problems.push(format!(
                    "{}: the row of round {round} does not hold the accuracy {a} the log reports (entry {})",
                    path.display(),
                    e.seq
                ))
            }
            _ => {}
        }
    }
    for r in rows.keys().filter(|r| !logged.contains(r)) {
        problems.push(format!(
            "{}: a row for round {r}, which the log does not report",
            path.display()
        ));
    }
    problems
}

/// Every threshold report a log names: the file (where the node wrote it, else beside the
/// log) must hash as logged, its signature verify, and its key, node and run be the log's.
fn check_reports(l: &NodeLog) -> Vec<String> {
    let mut problems = Vec::new();
    let (mut run, mut key) = (None, None);
    for e in &l.check.entries {
        match &e.event {
            LogEvent::Join {
                run: r, public_key, ..
            } => {
                run = Some(r.clone());
                key = Some(public_key.clone());
            }
            LogEvent::Threshold {
                measure,
                file,
                report,
                ..
            } => {
                let at = format!(
                    "{}: entry {}: the {measure} report",
                    l.path.display(),
                    e.seq
                );
                let run_id = run.as_deref().unwrap_or_default();
                let found = braid_net::threshold::find_report(
                    &l.path, file, e.node, measure, run_id, report,
                );
                let why = match found {
                    Err(err) => Some(format!("is not the file the log names: {err}")),
                    Ok((_, b)) => match braid_net::threshold::read(&b) {
                        Err(err) => Some(err),
                        Ok((r, _)) if Some(&r.public_key) != key.as_ref() => {
                            Some("is signed by another key than the log".into())
                        }
                        Ok((r, _)) if r.node != e.node || Some(&r.run) != run.as_ref() => {
                            Some("names another node or run".into())
                        }
                        Ok(_) => None,
                    },
                };
                if let Some(why) = why {
                    problems.push(format!("{at} {why}"));
                }
            }
            _ => {}
        }
    }
    problems
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

/// Each node's `final.safetensors` against the final-model hash in its log: a node that wrote
/// other weights than it logged is found even when its manifest matches them. Needs the run's
/// model, so the configuration (without one, or without the data to build the model, it is
/// said and skipped); a file that cannot be read as that model is a problem.
fn check_final_models(
    logs: &[NodeLog], cfg: &ExperimentConfig, registry: &Registry,
) -> (Vec<String>, Option<Prepared>) {
    let logged: Vec<(&NodeLog, &String)> = logs
        .iter()
        .filter_map(|l| {
            let hash = l.check.entries.iter().rev().find_map(|e| match &e.event {
                LogEvent::Final { model_hash } => Some(model_hash),
                _ => None,
            })?;
            Some((l, hash))
        })
        .collect();
    if logged.is_empty() {
        return (Vec::new(), None);
    }
    let prepared = match registry
        .of(cfg)
        .map_err(|e| e.to_string())
        .and_then(|a| a.prepare(cfg).map_err(|e| e.to_string()))
    {
        Ok(p) => p,
        Err(e) => {
            println!("note: final models not compared with their logged hashes: {e}");
            return (Vec::new(), None);
        }
    };
    let mut problems = Vec::new();
    for (l, hash) in logged {
        let node = l.check.node.map_or_else(|| "?".into(), |n| n.to_string());
        let path = l.path.with_file_name("final.safetensors");
        if !path.is_file() {
            continue;
        }
        match prepared.model.load(&path) {
            Ok(params) if runlog::model_hash(&params) == *hash => {}
            Ok(params) => problems.push(format!(
                "node {node}: {} holds other weights than the final model its log names ({}.., the file's {}..)",
                path.display(),
                hash.get(..12).unwrap_or(hash),
                runlog::model_hash(&params).get(..12).unwrap_or_default()
            )),
            // braid writes it as the run's model: another layout is a changed file.
            Err(e) => problems.push(format!(
                "node {node}: {} cannot be read as the run's model, so not as the final model its log names: {e}",
                path.display()
            )),
        }
    }
    (problems, Some(prepared))
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
                LogEvent::Threshold {
                    measure,
                    threshold,
                    value,
                    ..
                } => t.participation.push((
                    e.t,
                    format!("reported: {measure} {value} crossed {threshold}"),
                )),
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
