//! `braid keygen` and `braid node`: one participant of a deployed run per process.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use braid_data::Dataset;
use braid_engine::algorithm::Registry;
use braid_engine::config::ExperimentConfig;
use braid_engine::report;
use braid_engine::wire::NodeId;
use braid_engine::wire_node::WireEvent;
use braid_net::roster::Roster;
use braid_net::runtime::{self, RuntimeOptions};
use clap::Args;

/// `braid keygen`.
#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// Where to write the key (never overwritten).
    #[arg(long)]
    pub out: PathBuf,
}

/// `braid node`.
#[derive(Debug, Args)]
pub struct NodeArgs {
    /// The experiment file (with a `[network]` table naming every participant).
    pub file: PathBuf,
    /// This participant's key file (from `braid keygen`); its peer id picks the node id.
    #[arg(long)]
    pub key: PathBuf,
    /// Address to listen on (repeatable), e.g. `/ip4/0.0.0.0/tcp/4100`. Default: the address
    /// given for this node in `[network]`, else a random local port.
    #[arg(long)]
    pub listen: Vec<String>,
    /// Override a config value (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Write this node's results and checkpoint here (default: the config's output dir +
    /// `/node-<id>`).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Train on this participant's own data instead of its share of the experiment's
    /// partition: a directory of IDX training files (e.g. a shard from `braid partition
    /// --write`), or a TOML file with a `[data]` table in any format the experiment's
    /// `[data]` takes (CSV, NumPy, image folders, a program's own data set; its training part
    /// is used). The experiment's data source still gives the test set and the model shape.
    #[arg(long, value_name = "DIR|FILE.toml")]
    pub data: Option<PathBuf>,
    /// Continue from the checkpoint in the output directory (after a crash or kill -9): the
    /// server resumes after its last completed round; clients simply rejoin.
    #[arg(long)]
    pub resume: bool,
    /// Train dishonestly while logging honest-looking entries (`skip`, `lr=FACTOR`,
    /// `shard=K`): the adversary `braid audit replay` is tested against. Hidden: not for
    /// real runs.
    #[arg(long, hide = true, value_name = "KIND")]
    pub dishonest: Option<braid_engine::dishonest::Dishonesty>,
}

/// Writes a fresh key and prints its peer id.
pub fn keygen(args: KeygenArgs) -> Result<()> {
    let key = braid_net::identity::generate();
    braid_net::identity::save(&key, &args.out)?;
    say!("{}", braid_net::identity::peer_id(&key));
    Ok(())
}

/// Runs one node of a deployed experiment until its part of the run is over.
/// A participant's own training data: IDX files in a directory, or the `[data]` table of a
/// TOML file, read as the experiment's config would read it (so a program's registered data
/// sets work too).
fn own_data(config: &ExperimentConfig, path: &Path, registry: &Registry) -> Result<Dataset> {
    if path.is_dir() {
        return Ok(braid_data::load_train_dir(path)?);
    }
    let src = std::fs::read_to_string(path)
        .context("cannot read it (a directory of IDX files or a TOML file with a [data] table)")?;
    let file: toml::Table = toml::from_str(&src)
        .map_err(|e| anyhow::anyhow!("not TOML: {}", e.message().trim().replace('\n', " ")))?;
    let Some(data) = file.get("data").filter(|d| d.is_table()) else {
        bail!("no [data] table (a directory of IDX files, or a TOML file whose [data] table says where the data is)");
    };
    if let Some(k) = file.keys().find(|k| k.as_str() != "data") {
        bail!("unknown table `{k}`: the file holds the participant's [data] table only");
    }
    // The experiment's config with this [data] table: read and checked as a config would be.
    let mut whole: toml::Table = toml::from_str(&config.to_toml())?;
    whole.insert("data".into(), data.clone());
    let text = toml::to_string(&whole)?;
    let own = ExperimentConfig::parse_with(&text, &path.display().to_string(), &[], registry)?;
    Ok(braid_data::load(&own.data, own.seed)?.train)
}

pub fn node(args: NodeArgs, registry: &Registry) -> Result<()> {
    let t0 = Instant::now();
    let config = ExperimentConfig::load_with(&args.file, &args.set, registry)?;
    let Some(net) = config.network.clone() else {
        bail!(
            "{} has no [network] table: braid node needs the participants (node, peer_id, addr)",
            args.file.display()
        );
    };
    if net.participants.is_empty() {
        bail!(
            "{}: network.participants is empty: braid node needs every participant's node, peer_id and addr (braid launch fills them in on one machine)",
            args.file.display()
        );
    }
    let roster = Roster::from_config(&net)?;
    let key = braid_net::identity::load(&args.key)?;
    let me = braid_net::identity::peer_id(&key);
    let id = roster
        .node_of(&me)
        .with_context(|| format!("this key's peer id {me} is not in network.participants"))?;
    let algorithm = registry.of(&config).map_err(anyhow::Error::msg)?;
    let mut prepared = algorithm.prepare(&config)?;
    if let Some(dir) = &args.data {
        let k = algorithm.shard_of_node(id, prepared.parts.len()).with_context(|| {
            format!("--data: node {id} holds no training data in this run (it is the server or the monitor)")
        })?;
        let own = own_data(&config, dir, registry)
            .with_context(|| format!("--data {}", dir.display()))?;
        let n = own.len();
        prepared
            .use_own_data(k, own)
            .with_context(|| format!("--data {}", dir.display()))?;
        prepared.data_description = format!("own data {} ({n} train samples)", dir.display());
    }
    prepared.dishonesty = args.dishonest.clone();
    let node = algorithm.deploy(&prepared, id)?;
    check_reachable(&roster, id, node.listens_to())?;
    // Nodes are the participants holding data plus the server (FedAvg) or monitor (dsgd).
    let role = algorithm.role(&config, id as usize, prepared.parts.len() + 1);
    let listen = if args.listen.is_empty() {
        let own = roster
            .iter()
            .find(|(n, _, _)| *n == id)
            .and_then(|(_, _, a)| a.cloned());
        vec![own.unwrap_or_else(|| "/ip4/127.0.0.1/tcp/0".parse().expect("a valid multiaddr"))]
    } else {
        args.listen
            .iter()
            .map(|a| {
                a.parse()
                    .with_context(|| format!("--listen {a:?} is not a multiaddress"))
            })
            .collect::<Result<_>>()?
    };
    let dir = args
        .out
        .clone()
        .unwrap_or_else(|| config.output_dir().join(format!("node-{id}")));
    let run_id = braid_net::halt::run_id_of(&config);
    // One node per output directory (its checkpoint, log and results).
    let _lock = braid_engine::report::DirLock::acquire(&dir).map_err(anyhow::Error::msg)?;
    // A node paused at a [governance] threshold of this run continues only once approved
    // (whether or not it is started with --resume).
    let missing =
        braid_net::threshold::unapproved(&dir.join("runlog.jsonl"), &run_id, roster.halters());
    if !missing.is_empty() {
        bail!("node {id} {}", missing.join("; "));
    }
    let options = RuntimeOptions {
        listen,
        max_message_bytes: net.max_message_mib << 20,
        request_timeout: Duration::from_secs(net.request_timeout_s),
        retry_for: Duration::from_secs(net.retry_s),
        checkpoint: Some(dir.join("checkpoint.ckpt")),
        resume: args.resume,
        run_log: Some(dir.join("runlog.jsonl")),
        run_id: Some(run_id.clone()),
        idle_timeout: (net.idle_timeout_s > 0).then(|| Duration::from_secs(net.idle_timeout_s)),
        // The inputs `braid audit replay` re-executes training from.
        keep_sent: Some(braid_net::runtime::KeepSent {
            dir: dir.join(braid_net::runlog::KEPT_DIR),
            kinds: algorithm.replay_inputs(),
        }),
        // And, for nodes that carry state between inputs, their states around each training.
        keep_states: (!algorithm.replay_inputs().is_empty())
            .then(|| dir.join(braid_net::runlog::STATES_DIR)),
        governance: config.governance.clone().map(|g| {
            let to = g.report_dir.clone().unwrap_or_else(|| dir.clone());
            (g, to)
        }),
    };
    say!(
        "braid node {id} ({role}) | peer id {me} | {} | model {} ({} parameters) | {} participants | run {run_id}",
        prepared.data_description,
        config.model.name.as_str(),
        prepared.model.num_params(),
        roster.len()
    );
    let observer = Box::new(move |e: &WireEvent| match e {
        WireEvent::Metrics { line, .. } => {
            say!("{line} | {:.1} s", t0.elapsed().as_secs_f64())
        }
        WireEvent::Finished { .. } => say!("finished"),
    });
    let on_listen = Box::new(move |a: &braid_net::Multiaddr| {
        say!("listening on {a}/p2p/{me}");
    });
    let log_path = options.run_log.clone();
    let mut report = runtime::run(node, key.clone(), roster, options, observer, on_listen)
        .context("node failed")?;
    let mut rows = Vec::new();
    let mut final_params = None;
    for (e, wall) in std::mem::take(&mut report.events) {
        match e {
            WireEvent::Metrics { row, .. } => rows.push((row, wall)),
            WireEvent::Finished { params } => final_params = Some(params),
        }
    }
    if !rows.is_empty() {
        algorithm
            .finished_from_rows(&prepared, rows, final_params)?
            .write(&dir)
            .map_err(anyhow::Error::msg)?;
        // The files, bound to the signed log by their manifest's hash.
        if let Some(path) = log_path {
            let manifest = dir.join(braid_engine::report::MANIFEST);
            let bytes = std::fs::read(&manifest)
                .with_context(|| format!("cannot read {}", manifest.display()))?;
            let mut log = braid_net::runlog::RunLog::open(&path, key, id)?;
            log.append(braid_net::runlog::LogEvent::Results {
                manifest: braid_net::runlog::sha256_hex(&bytes),
            })?;
            log.sync()?;
        }
    }
    write_node_summary(&dir, id, role, &report)?;
    if let Some(why) = &report.paused {
        say!("node {id} {why}; then resume it with --resume");
    }
    say!(
        "node {id} done | sent {:.1} MB in {} messages, received {:.1} MB in {} | refused {} connections, {} messages | {:.1} s | results in {}",
        report.traffic.bytes_sent as f64 / 1e6,
        report.traffic.messages_sent,
        report.traffic.bytes_received as f64 / 1e6,
        report.traffic.messages_received,
        report.refused_connections,
        report.refused_messages,
        t0.elapsed().as_secs_f64(),
        dir.display()
    );
    Ok(())
}

/// `node.csv`: this node's traffic, refusals and compute (one row; `braid launch` joins them).
fn write_node_summary(
    dir: &Path, id: u32, role: &str, r: &braid_net::runtime::RunReport,
) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let (t, c) = (&r.traffic, &r.compute);
    let body = format!(
        "node,role,bytes_sent,bytes_received,messages_sent,messages_received,refused_connections,refused_messages,train_samples,eval_samples,flops,compute_s\n{id},{role},{},{},{},{},{},{},{},{},{},{:.3}\n",
        t.bytes_sent,
        t.bytes_received,
        t.messages_sent,
        t.messages_received,
        r.refused_connections,
        r.refused_messages,
        c.train_samples,
        c.eval_samples,
        c.flops,
        c.seconds
    );
    report::write_atomic(&dir.join("node.csv"), body.as_bytes()).map_err(anyhow::Error::msg)
}

/// `braid approve`.
#[derive(Debug, Args)]
pub struct ApproveArgs {
    /// The threshold reports paused nodes wrote (`threshold-<measure>-node-<id>.report`, in
    /// their output directories or `governance.report_dir`).
    #[arg(required = true)]
    pub reports: Vec<PathBuf>,
    /// A key named in the run's `network.halt_keys`.
    #[arg(long)]
    pub key: PathBuf,
}

/// Signs the approval of each threshold report beside it (`<report>.approval`): the node that
/// paused at it may then resume.
pub fn approve(args: ApproveArgs) -> Result<()> {
    let key = braid_net::identity::load(&args.key)?;
    for report in &args.reports {
        let bytes =
            std::fs::read(report).with_context(|| format!("cannot read {}", report.display()))?;
        let signed = braid_net::threshold::approve(&bytes, &key)
            .with_context(|| report.display().to_string())?;
        let out = braid_net::threshold::approval_path(report);
        braid_engine::report::write_atomic(&out, &signed).map_err(anyhow::Error::msg)?;
        say!("approved {}", report.display());
    }
    say!(
        "signed by {}: the nodes may resume (braid node --resume, braid launch --resume)",
        braid_net::identity::peer_id(&key)
    );
    Ok(())
}

/// `braid halt`.
#[derive(Debug, Args)]
pub struct HaltArgs {
    /// The run's experiment file (its `[network]` gives the participants' addresses; for a
    /// launched run, `<out>/launch.toml`).
    pub file: PathBuf,
    /// A key named in `network.halt_keys`.
    #[arg(long)]
    pub key: PathBuf,
    /// The run id the nodes printed (default: computed from FILE, as the nodes do).
    #[arg(long)]
    pub run: Option<String>,
    /// The same overrides the nodes were started with (they change the run id).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Seconds to wait for each participant's answer (1 to 3600).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub timeout_s: u64,
}

/// Sends a signed halt to every participant with an address; nodes forward it to the rest.
pub fn halt(args: HaltArgs, registry: &Registry) -> Result<()> {
    let config = ExperimentConfig::load_with(&args.file, &args.set, registry)?;
    let net = config
        .network
        .clone()
        .with_context(|| format!("{} has no [network] table", args.file.display()))?;
    let roster = Roster::from_config(&net)?;
    let key = braid_net::identity::load(&args.key)?;
    let me = braid_net::identity::peer_id(&key);
    if !roster.may_halt(&me) {
        bail!("this key ({me}) is not in network.halt_keys: the nodes would refuse its halt");
    }
    let run_hex = args
        .run
        .clone()
        .unwrap_or_else(|| braid_net::halt::run_id_of(&config));
    let run = braid_net::halt::run_id(&run_hex)?;
    let issued_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let payload = braid_net::halt::sign(&key, run, issued_at)?;
    let targets: Vec<_> = roster
        .iter()
        .filter_map(|(n, p, a)| a.map(|a| (n, p, a.clone())))
        .collect();
    if targets.is_empty() {
        bail!("no participant in network.participants has an addr to send the halt to");
    }
    let t0 = Instant::now();
    let mut accepted = 0;
    for (node, outcome) in braid_net::halt::send(
        &key,
        &targets,
        &payload,
        Duration::from_secs(args.timeout_s),
    ) {
        match outcome {
            Ok(braid_net::probe::Outcome::Answered(
                braid_net::codec::Ack::Accepted | braid_net::codec::Ack::Witnessed { .. },
            )) => {
                accepted += 1;
                say!("node {node}: halt accepted");
            }
            Ok(braid_net::probe::Outcome::Answered(braid_net::codec::Ack::Refused(why))) => {
                say!("node {node}: refused the halt: {why}")
            }
            Ok(braid_net::probe::Outcome::Answered(braid_net::codec::Ack::OtherRun(theirs))) => {
                say!(
                    "node {node}: refused the halt: it runs another configuration (run {})",
                    braid_net::identity::hex(&theirs)
                )
            }
            Ok(braid_net::probe::Outcome::NoAnswer(why)) => {
                say!("node {node}: no answer ({why}; a node that has halted stops listening)")
            }
            Err(e) => {
                say!("node {node}: not reached ({e}; a node that has halted stops listening)")
            }
        }
    }
    say!(
        "halt for run {run_hex} signed by {me}: accepted by {accepted} of {} nodes reached directly in {:.2} s; nodes forward it to the others",
        targets.len(),
        t0.elapsed().as_secs_f64()
    );
    if accepted == 0 {
        bail!("no node accepted the halt");
    }
    Ok(())
}

/// Refuses a run in which node `id` could never hear from a node that sends to it: a node
/// without an address in `network.participants` is reached only over connections it dials
/// itself, and it can dial only nodes that have one, so two nodes without one never meet
/// (before, such a run waited for ever, or went on only through its deadlines).
fn check_reachable(roster: &Roster, id: NodeId, senders: Option<Vec<NodeId>>) -> Result<()> {
    let addressed = |n: NodeId| roster.iter().any(|(m, _, a)| m == n && a.is_some());
    if addressed(id) {
        return Ok(());
    }
    let unmet = roster
        .iter()
        .map(|(n, _, _)| n)
        .find(|&n| n != id && !addressed(n) && senders.as_ref().is_none_or(|s| s.contains(&n)));
    match unmet {
        Some(n) => bail!(
            "node {id} and node {n} have no addr in network.participants, and node {n} sends to node {id}: they could never connect (give one of them an addr; in dsgd, DFML and Def-KT give every node one)"
        ),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digits(file: &str) -> String {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/own_model/data");
        root.join(file).display().to_string()
    }

    /// `[data]` of the digits tables, as the experiment and as a participant's own file.
    fn data_table(train: &str) -> String {
        format!(
            "[data]\ndataset = \"csv\"\ntrain = {:?}\ntest = {:?}\n",
            digits(train),
            digits("digits-test.csv")
        )
    }

    #[test]
    fn own_data_reads_a_data_table_in_any_format_and_refuses_misfits_in_one_line() {
        let registry = Registry::builtin();
        let src = format!(
            "{}[partition]\nclients = 4\n[model]\nname = \"mlp\"\n[algorithm]\nname = \"fedavg\"\nrounds = 1\n",
            data_table("digits-train.csv")
        );
        let config = ExperimentConfig::parse_with(&src, "exp.toml", &[], &registry).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let own = dir.path().join("mine.toml");
        // The participant's table: here the test table as its training data.
        std::fs::write(&own, data_table("digits-test.csv")).unwrap();
        let data = own_data(&config, &own, &registry).unwrap();
        assert_eq!((data.len(), data.sample_shape()), (360, &[64][..]));
        let err = |text: &str| {
            std::fs::write(&own, text).unwrap();
            format!("{:#}", own_data(&config, &own, &registry).unwrap_err())
        };
        for (text, says) in [
            ("name = \"x\"\n", "no [data] table"),
            ("[data\n", "not TOML"),
            (
                &format!("{}[model]\nname = \"cnn\"\n", data_table("digits-test.csv")),
                "unknown table `model`",
            ),
            (
                "[data]\ndataset = \"csv\"\ntrain = \"none.csv\"\ntest = \"none.csv\"\n",
                "none.csv",
            ),
            ("[data]\ndataset = \"cvs\"\n", "cvs"),
        ] {
            let e = err(text);
            assert!(e.contains(says) && !e.contains('\n'), "{text}: {e}");
        }
        let missing = format!(
            "{:#}",
            own_data(&config, &dir.path().join("nothing.toml"), &registry).unwrap_err()
        );
        assert!(missing.contains("cannot read it"), "{missing}");
    }
}
