//! The `braid` binary as a user runs it: the demo, the partition report, and malformed inputs,
//! each of which must exit non-zero with one clear line and never panic.

use std::path::Path;
use std::process::{Command, Output};

fn braid(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_braid"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("braid runs")
}

const GOOD: &str = r#"
name = "cli"
[data]
dataset = "fashion-mnist"
source = "bundled"
train_limit = 400
test_limit = 200
[partition]
clients = 4
kind = "iid"
[model]
name = "cnn-small"
[train]
local_steps = 2
[algorithm]
name = "fedavg"
rounds = 1
"#;

/// Column `col` of every row of `dir/metrics.csv`, as numbers.
fn metrics_column(dir: &Path, col: usize) -> Vec<f64> {
    let csv = std::fs::read_to_string(dir.join("metrics.csv")).unwrap();
    csv.lines()
        .skip(1)
        .map(|l| l.split(',').nth(col).unwrap().parse().unwrap())
        .collect()
}

/// Runs each `(config, out)` in `dir` (quietly, into `dir/out`) and checks it succeeded.
fn run_all(dir: &Path, runs: &[(&str, &str)]) {
    for (toml, out) in runs {
        std::fs::write(dir.join("run.toml"), toml).unwrap();
        let o = braid(&["run", "run.toml", "-q", "--out", out], dir);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
}

/// Writes `config` into `dir`, runs `braid run` on it, and checks for one clean error line.
fn expect_error(config: &str, needle: &str) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("exp.toml"), config).unwrap();
    let out = braid(&["run", "exp.toml", "-q"], dir.path());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "accepted: {config}");
    assert!(!err.contains("panicked"), "panic: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line, got: {err}");
    assert!(
        lines[0].starts_with("error: ") && lines[0].contains(needle),
        "{needle:?} not in {err:?}"
    );
}

#[test]
fn malformed_inputs_get_one_clear_line() {
    expect_error("name = \n", "line 1");
    expect_error(
        &GOOD.replace("\"cnn-small\"", "\"resnet50\""),
        "model.name: unknown model `resnet50`, expected one of `mlp`, `cnn`",
    );
    expect_error(
        &GOOD.replace("kind = \"iid\"", "kind = \"dirichlet\"\nalpha = 0.0"),
        "partition.alpha = 0 must be in",
    );
    expect_error(
        &GOOD.replace("kind = \"iid\"", "kind = \"dirichlet\"\nalpha = -2.0"),
        "partition.alpha = -2 must be in",
    );
    expect_error(
        &GOOD.replace("clients = 4", "clients = 500"),
        "partition.clients = 500 but the training set has only 400 samples",
    );
    expect_error(
        &GOOD.replace("rounds = 1", "rounds = 1\nclients_per_round = 9"),
        "clients_per_round",
    );
    expect_error(
        &GOOD.replace("source = \"bundled\"", "source = \"/nonexistent/idx\""),
        "/nonexistent/idx",
    );
    expect_error(
        &format!("{GOOD}[runtime]\ndevice = \"tpu\"\n"),
        "unknown device",
    );
    expect_error(
        &GOOD.replace("[train]", "[train]\nbatch_size = 0"),
        "train.batch_size",
    );
    expect_error(
        &format!("{GOOD}[compression]\nuplink = {{ sparsify = {{ kind = \"top-k\", fraction = 1.5 }} }}\n"),
        "compression.uplink: compression: sparsify.fraction = 1.5",
    );
    expect_error(
        &format!("{GOOD}[compression]\ndownlink = {{ sparsify = {{ kind = \"top-k\", fraction = 0.1 }} }}\n"),
        "compression.downlink: only quantizers",
    );
    expect_error(
        &format!("{GOOD}[compression]\nuplink = {{ quantize = {{ kind = \"int3\" }} }}\n"),
        "unknown variant `int3`",
    );
    expect_error(
        &format!("{GOOD}[compression]\ndownlink_delta = true\n"),
        "compression.downlink_delta needs compression.downlink",
    );
}

#[test]
fn values_that_would_overflow_or_do_nothing_are_refused_at_load_time() {
    expect_error(
        &GOOD.replace("rounds = 1", "rounds = 0"),
        "algorithm.rounds must be at least 1",
    );
    for key in ["request_timeout_s", "retry_s", "idle_timeout_s"] {
        expect_error(
            &format!("{GOOD}[network]\n{key} = 9223372036854775807\n"),
            &format!("network.{key} = 9223372036854775807 must be between"),
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("exp.toml"), GOOD).unwrap();
    // Flags: out of range is clap's one line, never a panic or minutes of work.
    for args in [
        vec![
            "halt",
            "exp.toml",
            "--key",
            "k.key",
            "--timeout-s",
            "99999999999999",
        ],
        vec!["launch", "exp.toml", "--grace-s", "99999999999999"],
        vec!["launch", "exp.toml", "--nodes", "100000", "--out", "big"],
        vec!["launch", "exp.toml", "--nodes", "1000", "--out", "many"],
    ] {
        let t0 = std::time::Instant::now();
        let out = braid(&args, d);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} accepted");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(30),
            "{args:?} took {:?}",
            t0.elapsed()
        );
        assert!(
            err.contains("--timeout-s")
                || err.contains("--grace-s")
                || err.contains("--nodes 100000")
                || err.contains("partition.clients = 1000 but the training set has only 400"),
            "{args:?}: {err}"
        );
    }
    // Nothing was written for the refused launches (no keys for 100000 nodes).
    assert!(!d.join("big").exists() && !d.join("many").exists());
}

#[cfg(feature = "gpu")]
#[test]
fn a_gpu_that_is_not_there_is_one_clear_line() {
    expect_error(
        &format!("{GOOD}[runtime]\ndevice = \"gpu:virtual:97\"\n"),
        "runtime.device = \"gpu:virtual:97\": no such GPU through Vulkan",
    );
    expect_error(
        &format!("{GOOD}[runtime]\ndevice = \"cuda:0\"\n"),
        "no CUDA backend",
    );
}

#[test]
fn corrupt_idx_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let idx = dir.path().join("idx");
    std::fs::create_dir(&idx).unwrap();
    // A truncated image file: header promises 2 x 28 x 28 bytes, holds 10.
    let mut img = vec![0u8, 0, 8, 3];
    for d in [2u32, 28, 28] {
        img.extend_from_slice(&d.to_be_bytes());
    }
    img.extend_from_slice(&[0; 10]);
    std::fs::write(idx.join("train-images-idx3-ubyte"), &img).unwrap();
    std::fs::write(
        idx.join("train-labels-idx1-ubyte"),
        [0u8, 0, 8, 1, 0, 0, 0, 2, 1, 2],
    )
    .unwrap();
    let cfg = GOOD.replace(
        "source = \"bundled\"",
        &format!("source = {:?}", idx.display().to_string()),
    );
    expect_error(
        &cfg,
        "train-images-idx3-ubyte: not a valid IDX file: truncated",
    );
    // Garbage instead of gzip.
    std::fs::remove_file(idx.join("train-images-idx3-ubyte")).unwrap();
    std::fs::write(
        idx.join("train-images-idx3-ubyte.gz"),
        [0x1f, 0x8b, 1, 2, 3],
    )
    .unwrap();
    expect_error(&cfg, "corrupt gzip");
}

#[test]
fn missing_config_file_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = braid(&["run", "nope.toml"], dir.path());
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("error: nope.toml: cannot read") && !err.contains("panicked"),
        "{err}"
    );
}

#[test]
fn demo_runs_and_writes_every_output() {
    let dir = tempfile::tempdir().unwrap();
    let out = braid(
        &[
            "demo",
            "-q",
            "--set",
            "algorithm.rounds=2",
            "--set",
            "data.train_limit=600",
            "--set",
            "data.test_limit=300",
            "--set",
            "train.local_steps=3",
            "--out",
            "res",
        ],
        dir.path(),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("final test accuracy 0."), "{stdout}");
    let res = dir.path().join("res");
    for f in [
        "config.toml",
        "metrics.csv",
        "metrics.jsonl",
        "traffic.csv",
        "final.safetensors",
        "accuracy_vs_round.png",
        "accuracy_vs_bytes.png",
    ] {
        assert!(res.join(f).is_file(), "{f} missing");
    }
    let csv = std::fs::read_to_string(res.join("metrics.csv")).unwrap();
    assert_eq!(csv.lines().count(), 3, "{csv}");
    assert!(csv.starts_with(
        "round,accuracy,loss,train_loss,clients,stragglers,samples,local_steps,bytes_up,bytes_down,cum_bytes,epsilon,sim_time_s,staleness_mean,staleness_max,wall_s"
    ));
    let jsonl = std::fs::read_to_string(res.join("metrics.jsonl")).unwrap();
    let first = jsonl.lines().next().unwrap();
    for key in [
        "\"round\":1",
        "\"accuracy\":0.",
        "\"bytes_up\":",
        "\"cum_bytes\":",
        "\"wall_s\":",
    ] {
        assert!(first.contains(key), "{key} not in {first}");
    }
    // The written config reproduces the run.
    let rerun = braid(
        &["run", "res/config.toml", "-q", "--out", "res2"],
        dir.path(),
    );
    assert!(rerun.status.success());
    let strip = |s: String| {
        s.lines()
            .map(|l| {
                l.rsplit_once(',')
                    .map_or(l.to_string(), |(a, _)| a.to_string())
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(
        strip(csv),
        strip(std::fs::read_to_string(dir.path().join("res2/metrics.csv")).unwrap()),
        "same config, different metrics"
    );
}

#[test]
fn partition_prints_label_histograms() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("exp.toml"),
        GOOD.replace("kind = \"iid\"", "kind = \"shards\"\nshards_per_client = 2"),
    )
    .unwrap();
    let out = braid(&["partition", "exp.toml"], dir.path());
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{s}");
    let rows: Vec<&str> = s.lines().collect();
    assert_eq!(rows.len(), 1 + 1 + 4 + 1, "{s}");
    assert!(
        rows.last().unwrap().trim_start().starts_with("all    400"),
        "{s}"
    );
    // Shards of 50 label-sorted samples (classes hold ~40 here): each shard spans at most two
    // classes, so a client with two shards sees at most four of the ten.
    for r in &rows[2..6] {
        let nonzero = r
            .split('|')
            .nth(1)
            .unwrap()
            .split_whitespace()
            .filter(|v| *v != "0")
            .count();
        assert!(nonzero <= 4, "{r}");
    }
}

#[test]
fn baseline_flag_runs_the_centralized_reference_too() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("exp.toml"), GOOD).unwrap();
    let out = braid(
        &["run", "exp.toml", "-q", "--baseline", "--out", "res"],
        dir.path(),
    );
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{s}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        s.contains("braid: centralized") && s.contains("vs centralized baseline"),
        "{s}"
    );
    let central = std::fs::read_to_string(dir.path().join("res/baseline/config.toml")).unwrap();
    assert!(central.contains("name = \"centralized\""), "{central}");
    let csv = std::fs::read_to_string(dir.path().join("res/baseline/metrics.csv")).unwrap();
    // One client holding all 400 training samples.
    // local_steps = 2 per round for the one client.
    assert!(csv.lines().nth(1).unwrap().contains(",1,0,400,2,"), "{csv}");
}

#[test]
fn topology_report_lists_every_topology() {
    let dir = tempfile::tempdir().unwrap();
    let out = braid(&["topology", "--nodes", "16", "--samples", "8"], dir.path());
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{s}");
    for name in [
        "ring",
        "torus",
        "exponential",
        "one-peer-exponential",
        "complete",
        "erdos-renyi",
        "random",
        "base-random",
    ] {
        assert!(
            s.lines().any(|l| l.starts_with(name)),
            "{name} missing in {s}"
        );
    }
    let complete = s.lines().find(|l| l.starts_with("complete")).unwrap();
    assert!(
        complete.contains("1.000000") && complete.contains("240.0"),
        "{complete}"
    );
    // 7 nodes: no torus, said in its row, the rest still reported.
    let out = braid(&["topology", "--nodes", "7", "--samples", "4"], dir.path());
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && s.contains("torus needs a node count"),
        "{s}"
    );
    let bad = braid(&["topology", "--r=-1"], dir.path());
    assert!(
        !bad.status.success()
            && String::from_utf8_lossy(&bad.stderr).starts_with("error: --r must be >= 0")
    );
}

#[test]
fn dsgd_runs_with_its_parallel_sgd_reference() {
    let dir = tempfile::tempdir().unwrap();
    let config = GOOD
        .replace("local_steps = 2\n", "")
        .replace(
            "name = \"fedavg\"\nrounds = 1\n",
            "name = \"dsgd\"\nsteps = 4\neval_every = 2\n[decentralized]\nbudget = { kind = \"window\", r_start = 0.2, r_end = 3, point1 = 0.5, width = 0.5 }\neval_samples = 50\n",
        );
    std::fs::write(dir.path().join("exp.toml"), config).unwrap();
    let out = braid(
        &["run", "exp.toml", "-q", "--baseline", "--out", "o"],
        dir.path(),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("vs parallel SGD reference"), "{text}");
    for sub in ["o", "o/baseline"] {
        let csv = std::fs::read_to_string(dir.path().join(sub).join("metrics.csv")).unwrap();
        assert!(
            csv.starts_with("step,progress,comm_rounds,budget,local_mean"),
            "{csv}"
        );
        assert_eq!(csv.lines().count(), 4, "steps 0, 2 and 4: {csv}");
        for f in [
            "accuracy_vs_progress.png",
            "accuracy_vs_bytes.png",
            "final.safetensors",
        ] {
            assert!(dir.path().join(sub).join(f).exists(), "{sub}/{f}");
        }
        let traffic = std::fs::read_to_string(dir.path().join(sub).join("traffic.csv")).unwrap();
        assert!(
            traffic.contains(",peer,") && traffic.contains(",monitor,"),
            "{traffic}"
        );
    }
    // Gossip quantized to int8: about a quarter of the bytes per peer.
    let int8 = std::fs::read_to_string(dir.path().join("exp.toml")).unwrap()
        + "[compression]\ngossip = { quantize = { kind = \"int8\", block = 256 } }\n";
    std::fs::write(dir.path().join("q.toml"), &int8).unwrap();
    let out = braid(&["run", "q.toml", "-q", "--out", "q"], dir.path());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bytes = |sub: &str| -> f64 {
        let csv = std::fs::read_to_string(dir.path().join(sub).join("metrics.csv")).unwrap();
        let header: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
        let col = header.iter().position(|h| *h == "bytes_per_peer").unwrap();
        csv.lines()
            .last()
            .unwrap()
            .split(',')
            .nth(col)
            .unwrap()
            .parse()
            .unwrap()
    };
    let (f32_bytes, int8_bytes) = (bytes("o"), bytes("q"));
    assert!(
        int8_bytes * 3.5 < f32_bytes && int8_bytes > 0.0,
        "{int8_bytes} vs {f32_bytes}"
    );
    expect_error(
        &int8.replace(
            "kind = \"int8\", block = 256 }",
            "kind = \"int8\", block = 256 }, sparsify = { kind = \"top-k\", fraction = 0.1 }",
        ),
        "compression.gossip: only quantizers",
    );
    expect_error(
        &format!("{GOOD}[compression]\ngossip = {{ quantize = {{ kind = \"fp16\" }} }}\n"),
        "compression.gossip applies to",
    );
    expect_error(
        &(std::fs::read_to_string(dir.path().join("exp.toml")).unwrap()
            + "[compression]\nuplink = { quantize = { kind = \"fp16\" } }\n"),
        "takes only gossip",
    );
    // The reference is an exact average every step: all local models agree at the end.
    let base = std::fs::read_to_string(dir.path().join("o/baseline/metrics.csv")).unwrap();
    let last: Vec<&str> = base.lines().last().unwrap().split(',').collect();
    assert_eq!(
        last[5], last[6],
        "local min = local max in parallel SGD: {base}"
    );
}

#[test]
fn accounting_adds_up_to_an_independent_count() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("exp.toml"),
        r#"name = "acc"
seed = 5
[data]
dataset = "fashion-mnist"
source = "bundled"
[partition]
clients = 3
kind = "iid"
[model]
name = "mlp"
[train]
batch_size = 32
local_steps = 5
[algorithm]
name = "fedavg"
rounds = 2
"#,
    )
    .unwrap();
    let out = braid(&["run", "exp.toml", "-q", "--out", "o"], d);
    assert!(out.status.success(), "{out:?}");
    let csv = std::fs::read_to_string(d.join("o/accounting.csv")).unwrap();
    let rows: Vec<Vec<String>> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').map(String::from).collect())
        .collect();
    let num = |r: &[String], i: usize| -> u64 { r[i].parse().unwrap() };
    // Independent count: the MLP 784-200-200-10 forward pass, by hand (2 FLOPs per
    // multiply-add, 1 per bias and per ReLU); training = 3 forward passes.
    let forward: u64 =
        (2 * 784 * 200 + 200 + 200) + (2 * 200 * 200 + 200 + 200) + (2 * 200 * 10 + 10);
    // Each client: 2 rounds x 5 steps x 32 samples; the server evaluates the 2,000 bundled
    // test images after each round.
    assert_eq!(rows.len(), 5, "{csv}");
    for client in &rows[1..4] {
        assert_eq!(num(client, 2), 2 * 5 * 32, "{csv}");
        assert_eq!(num(client, 4), 2 * 5 * 32 * 3 * forward, "{csv}");
    }
    assert_eq!((num(&rows[0], 2), num(&rows[0], 3)), (0, 2 * 2000), "{csv}");
    assert_eq!(num(&rows[0], 4), 2 * 2000 * forward, "{csv}");
    // The total row is the sum, and matches the steps metrics.csv reports.
    let total = &rows[4];
    assert_eq!(total[0], "all");
    for col in 2..5 {
        assert_eq!(
            num(total, col),
            rows[..4].iter().map(|r| num(r, col)).sum::<u64>(),
            "column {col}"
        );
    }
    let metrics = std::fs::read_to_string(d.join("o/metrics.csv")).unwrap();
    let steps: u64 = metrics
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(7).unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(num(total, 2), steps * 32);
    // Per round: each client trained 5 x 32 samples in each of rounds 1 and 2, and the
    // server evaluated 2,000 samples after each.
    let by_round = std::fs::read_to_string(d.join("o/accounting-rounds.csv")).unwrap();
    let rows: Vec<Vec<&str>> = by_round
        .lines()
        .skip(1)
        .map(|l| l.split(',').collect())
        .collect();
    for node in 0..4 {
        for round in ["1", "2"] {
            let r = rows
                .iter()
                .find(|r| r[0] == node.to_string() && r[2] == round)
                .unwrap_or_else(|| panic!("no row for node {node} round {round}: {by_round}"));
            let (train, eval) = if node == 0 {
                ("0", "2000")
            } else {
                ("160", "0")
            };
            assert_eq!((r[3], r[4]), (train, eval), "{by_round}");
        }
    }
}

const SPLIT: &str = r#"
name = "split"
[data]
dataset = "fashion-mnist"
source = "bundled"
train_limit = 600
test_limit = 200
[partition]
clients = 8
kind = "extended-dirichlet"
classes_per_client = 2
alpha = 3.0
[model]
name = "cnn-small"
[train]
batch_size = 32
optimizer = { name = "sgd", lr = 0.05 }
[algorithm]
name = "split"
rounds = 2
[split]
sampler = "global"
cut = "blocks.1"
"#;

#[test]
fn split_learning_runs_reproducibly_and_reports_epochs() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("s.toml"), SPLIT).unwrap();
    let metrics = |out: &str| {
        let o = braid(&["run", "s.toml", "-q", "--out", out], dir.path());
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let csv = std::fs::read_to_string(dir.path().join(out).join("metrics.csv")).unwrap();
        // Everything but the wall-clock column.
        csv.lines()
            .map(|l| l.rsplit_once(',').map_or(l, |(a, _)| a).to_string())
            .collect::<Vec<_>>()
    };
    let a = metrics("a");
    assert_eq!(a[0], "epoch,accuracy,loss,train_loss,steps,samples,min_batch,max_batch,mean_clients,bytes_up,bytes_down,cum_bytes,sim_time_s,cum_sim_time_s");
    assert_eq!(a.len(), 3, "{a:?}");
    let cols: Vec<&str> = a[2].split(',').collect();
    // 600 samples in ceil(600 / 32) = 19 steps of 31 or 32.
    assert_eq!(&cols[4..8], ["19", "600", "31", "32"], "{a:?}");
    assert_eq!(a, metrics("b"), "same config and seed, same metrics");
    // Global sampling draws uniform global batches: the test loss tracks the centralized
    // reference's (same model, B, learning rate, epochs).
    let central = SPLIT
        .replace("\"split\"\nrounds", "\"centralized\"\nrounds")
        .replace("[split]\nsampler = \"global\"\ncut = \"blocks.1\"\n", "");
    std::fs::write(dir.path().join("c.toml"), central).unwrap();
    let o = braid(&["run", "c.toml", "-q", "--out", "c"], dir.path());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let c = std::fs::read_to_string(dir.path().join("c/metrics.csv")).unwrap();
    let loss = |line: &str| line.split(',').nth(2).unwrap().parse::<f64>().unwrap();
    let (split_loss, central_loss) = (loss(&a[2]), loss(c.lines().nth(2).unwrap()));
    assert!(split_loss < loss(&a[1]), "the loss falls: {a:?}");
    assert!(
        (split_loss - central_loss).abs() < 0.02,
        "{split_loss} vs {central_loss}"
    );
    for f in [
        "accuracy_vs_epoch.png",
        "accuracy_vs_sim_time.png",
        "accounting.csv",
        "final.safetensors",
    ] {
        assert!(dir.path().join("a").join(f).exists(), "{f}");
    }
    // The clients' compute is counted: 2 epochs x 600 samples trained by the server and by
    // the clients together.
    let acc_csv = std::fs::read_to_string(dir.path().join("a/accounting.csv")).unwrap();
    let server: Vec<&str> = acc_csv.lines().nth(1).unwrap().split(',').collect();
    assert_eq!(server[1..3], ["server", "1200"], "{acc_csv}");
    let clients: u64 = acc_csv
        .lines()
        .skip(2)
        .filter(|l| l.contains(",client,"))
        .map(|l| l.split(',').nth(2).unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(clients, 1200, "{acc_csv}");
}

#[test]
fn split_learning_with_quantized_messages_runs_from_toml() {
    let dir = tempfile::tempdir().unwrap();
    let q = format!(
        "{SPLIT}[compression]\nsplit = {{ quantize = {{ kind = \"int8\", block = 256 }} }}\n"
    );
    run_all(dir.path(), &[(SPLIT, "plain"), (&q, "int8")]);
    let (plain, int8) = (dir.path().join("plain"), dir.path().join("int8"));
    // cum_bytes: one byte per value and a scale per 256 instead of four bytes.
    let (a, b) = (metrics_column(&plain, 11)[1], metrics_column(&int8, 11)[1]);
    assert!(b * 3.5 < a && b > 0.0, "{b} vs {a}");
    // The test loss after two epochs barely moves.
    let (la, lb) = (metrics_column(&plain, 2)[1], metrics_column(&int8, 2)[1]);
    assert!((la - lb).abs() < 0.02, "{lb} vs {la}");
    expect_error(
        &format!("{SPLIT}[compression]\nsplit = {{ sparsify = {{ kind = \"top-k\", fraction = 0.1 }} }}\n"),
        "compression.split: only quantizers",
    );
    expect_error(
        &format!("{SPLIT}[compression]\nuplink = {{ quantize = {{ kind = \"fp16\" }} }}\n"),
        "takes only split",
    );
    expect_error(
        &format!("{GOOD}[compression]\nsplit = {{ quantize = {{ kind = \"fp16\" }} }}\n"),
        "compression.split applies to",
    );
}

#[test]
fn split_config_errors_are_clear() {
    expect_error(
        &SPLIT.replace("\"blocks.1\"", "\"conv1\""),
        "use one of blocks.0, blocks.1, fc.0",
    );
    expect_error(
        &SPLIT
            .replace("\"global\"", "\"fixed-local\"")
            .replace("batch_size = 32", "batch_size = 4"),
        "B = 4 must be at least the 8 clients",
    );
    expect_error(
        &SPLIT.replace("\"split\"\nrounds", "\"fedavg\"\nrounds"),
        "[split] only applies",
    );
    expect_error(
        &SPLIT.replace("cut = \"blocks.1\"", "latency = { slowdown = 0.5 }"),
        "split.latency.slowdown",
    );
}

const DFML: &str = r#"
name = "dfml"
[data]
dataset = "fashion-mnist"
source = "bundled"
train_limit = 600
test_limit = 200
[partition]
clients = 6
kind = "iid"
[model]
name = "cnn-small"
[train]
batch_size = 16
local_epochs = 5
optimizer = { name = "sgd", lr = 0.05, momentum = 0.9 }
[algorithm]
name = "dfml"
rounds = 4
eval_every = 2
[mutual]
models = ["cnn-small", "mlp"]
senders = 5
alpha = { shape = "cosine", period = 2, min = 0.0, max = 0.8 }
supervised = "wsm"
eval_samples = 100
"#;

#[test]
fn dfml_runs_heterogeneous_models_reproducibly() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("d.toml"), DFML).unwrap();
    let metrics = |out: &str| {
        let o = braid(&["run", "d.toml", "-q", "--out", out], dir.path());
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let stdout = String::from_utf8_lossy(&o.stdout).to_string();
        assert!(
            stdout.contains("3 x cnn-small") && stdout.contains("3 x mlp"),
            "{stdout}"
        );
        let csv = std::fs::read_to_string(dir.path().join(out).join("metrics.csv")).unwrap();
        // Everything but the wall-clock column (the 12th).
        csv.lines()
            .map(|l| {
                let mut c: Vec<&str> = l.split(',').collect();
                c.remove(11);
                c.join(",")
            })
            .collect::<Vec<_>>()
    };
    let a = metrics("a");
    assert_eq!(a[0], "round,alpha,accuracy,loss,min_accuracy,max_accuracy,peak_accuracy,global_model_accuracy,train_loss,bytes_per_round,cum_bytes,acc_cnn-small,acc_mlp,peak_cnn-small,peak_mlp");
    assert_eq!(a.len(), 3, "{a:?}");
    assert_eq!(a, metrics("b"), "same config and seed, same metrics");
    let last: Vec<&str> = a[2].split(',').collect();
    // Round 4 is a peak (period 2): the peak models are the current ones.
    assert_eq!(last[0], "4");
    assert_eq!(last[2], last[6]);
    // Every model is trained every round here (5 senders of 6 clients), so all of them learn.
    let acc: f64 = last[2].parse().unwrap();
    assert!(acc > 0.3, "learns: {a:?}");
    for f in ["accuracy_vs_round.png", "accounting.csv", "traffic.csv"] {
        assert!(dir.path().join("a").join(f).exists(), "{f}");
    }
    // Each baseline runs from the same file with its own name.
    for (name, extra) in [
        ("local", "clients_per_round = 2\n"),
        ("fml", "clients_per_round = 2\n"),
        ("def-kt", ""),
    ] {
        let mut c = DFML.replace(
            "name = \"dfml\"\nrounds",
            &format!("name = \"{name}\"\nrounds"),
        );
        c = c.replace("eval_every = 2\n", &format!("eval_every = 2\n{extra}"));
        if name != "def-kt" {
            c = c.replace("senders = 5\n", "");
        } else {
            c = c.replace("senders = 5\n", "senders = 2\n");
        }
        std::fs::write(dir.path().join(format!("{name}.toml")), c).unwrap();
        let o = braid(
            &["run", &format!("{name}.toml"), "-q", "--out", name],
            dir.path(),
        );
        assert!(
            o.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let csv = std::fs::read_to_string(dir.path().join(name).join("metrics.csv")).unwrap();
        assert_eq!(csv.lines().count(), 3, "{name}: {csv}");
    }
}

#[test]
fn dfml_with_quantized_models_runs_from_toml() {
    let dir = tempfile::tempdir().unwrap();
    let q = format!(
        "{DFML}[compression]\nmodels = {{ quantize = {{ kind = \"int8\", block = 256 }} }}\n"
    );
    run_all(dir.path(), &[(DFML, "plain"), (&q, "int8")]);
    let bytes = |out: &str| -> f64 {
        let csv = std::fs::read_to_string(dir.path().join(out).join("metrics.csv")).unwrap();
        let header: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
        let col = header.iter().position(|h| *h == "cum_bytes").unwrap();
        csv.lines()
            .last()
            .unwrap()
            .split(',')
            .nth(col)
            .unwrap()
            .parse()
            .unwrap()
    };
    // One byte per value and a scale per 256 instead of four bytes.
    let (a, b) = (bytes("plain"), bytes("int8"));
    assert!(b * 3.5 < a && b > 0.0, "{b} vs {a}");
}

#[test]
fn dfml_config_errors_are_clear() {
    expect_error(
        &format!("{DFML}[compression]\nuplink = {{ quantize = {{ kind = \"fp16\" }} }}\n"),
        "takes only models",
    );
    expect_error(
        &format!("{DFML}[compression]\nmodels = {{ sparsify = {{ kind = \"top-k\", fraction = 0.1 }} }}\n"),
        "compression.models: only quantizers",
    );
    expect_error(
        &format!("{GOOD}[compression]\nmodels = {{ quantize = {{ kind = \"fp16\" }} }}\n"),
        "compression.models applies to",
    );
    expect_error(
        &DFML.replace("senders = 5", "senders = 6"),
        "mutual.senders = 6",
    );
    expect_error(
        &DFML.replace(
            "models = [\"cnn-small\", \"mlp\"]",
            "models = [\"cnn-small\", \"resnet\"]",
        ),
        "resnet",
    );
    expect_error(
        &DFML.replace("min = 0.0, max = 0.8", "min = 0.9, max = 0.8"),
        "mutual.alpha.min",
    );
    expect_error(
        &DFML.replace("\"dfml\"\nrounds", "\"fedavg\"\nrounds"),
        "[mutual] only applies",
    );
    expect_error(
        &DFML.replace("senders = 5", "senders = 5\nglobal_model = \"cnn-small\""),
        "global_model only applies",
    );
    expect_error(
        &DFML.replace(
            "[\"cnn-small\", \"mlp\"]",
            "[\"mlp\", \"cnn-small\", \"mlp\"]",
        ),
        "lists \"mlp\" twice",
    );
    expect_error(
        &DFML.replace("supervised = \"wsm\"", "supervised = \"focal\""),
        "focal",
    );
}

const DP: &str = r#"
name = "dp"
[data]
dataset = "fashion-mnist"
source = "bundled"
train_limit = 400
test_limit = 100
[partition]
clients = 8
kind = "iid"
[model]
name = "cnn-small"
[train]
batch_size = 32
optimizer = { name = "sgd", lr = 0.05 }
[algorithm]
name = "fedavg"
rounds = 6
clients_per_round = 4
[privacy]
mode = "central"
clip = 1.0
noise_multiplier = 1.0
target_epsilon = 5.0
"#;

#[test]
fn dp_fedavg_reports_epsilon_and_stops_at_the_target() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("dp.toml"), DP).unwrap();
    let o = braid(&["run", "dp.toml", "--out", "a"], dir.path());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("-dp, central"), "{stdout}");
    let csv = std::fs::read_to_string(dir.path().join("a/metrics.csv")).unwrap();
    let eps: Vec<f64> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(11).unwrap().parse().unwrap())
        .collect();
    // q = 4/8, sigma = 1: epsilon grows every round and the run ends before it passes 5.
    assert!(eps.windows(2).all(|w| w[0] < w[1]), "{eps:?}");
    assert!(eps.len() < 6 && *eps.last().unwrap() <= 5.0, "{eps:?}");
    expect_error(&DP.replace("clip = 1.0", "clip = 0.0"), "privacy.clip");
    expect_error(
        &DP.replace("\"fedavg\"\nrounds", "\"centralized\"\nrounds"),
        "[privacy] applies",
    );
    expect_error(
        &DP.replace("target_epsilon = 5.0", "target_epsilon = 0.01"),
        "spent by a single round",
    );
}

#[test]
fn dp_sgd_runs_from_toml_and_reports_the_worst_clients_epsilon() {
    // 8 clients of 50 samples, batches of 10: each client's steps sample at rate 0.2, five
    // steps per round it takes part in.
    let toml = DP
        .replace("batch_size = 32", "batch_size = 10")
        .replace("mode = \"central\"", "mode = \"dp-sgd\"")
        .replace("target_epsilon = 5.0\n", "");
    let dir = tempfile::tempdir().unwrap();
    run_all(dir.path(), &[(&toml, "a"), (&toml, "b")]);
    let eps = metrics_column(&dir.path().join("a"), 11);
    assert_eq!(eps.len(), 6);
    assert!(
        eps[0] > 0.0 && eps.windows(2).all(|w| w[0] <= w[1]),
        "{eps:?}"
    );
    // The last value is the accountant's for a client that took part in k of the 6 rounds.
    let want: Vec<f64> = (1..=6)
        .map(|k| {
            let mut a = braid_core::privacy::RdpAccountant::default();
            a.step(0.2, 1.0, 5 * k).unwrap();
            a.epsilon(1e-5).unwrap().0
        })
        .collect();
    let last = *eps.last().unwrap();
    assert!(
        want.iter().any(|w| (w - last).abs() < 1e-6 * w),
        "{last} not among {want:?}"
    );
    // Deterministic by seed, noise included.
    assert_eq!(
        metrics_column(&dir.path().join("b"), 1),
        metrics_column(&dir.path().join("a"), 1)
    );
    // Robust rules may post-process DP-SGD's updates; secure aggregation hides the counts
    // the accountant needs.
    let robust = toml.replace(
        "clients_per_round = 4\n",
        "clients_per_round = 4\naggregator = { kind = \"median\" }\n",
    );
    run_all(dir.path(), &[(&robust, "robust")]);
    expect_error(
        &format!("{toml}[secure_aggregation]\nthreshold = 3\n"),
        "DP-SGD accountant",
    );
    expect_error(
        &DP.replace("mode = \"central\"", "mode = \"local\"")
            .replace(
                "clients_per_round = 4\n",
                "clients_per_round = 4\naggregator = { kind = \"median\" }\n",
            ),
        "cannot be combined",
    );
}

#[test]
fn robust_aggregation_and_attacks_run_from_toml() {
    let base = DP.replace(
        "[privacy]\nmode = \"central\"\nclip = 1.0\nnoise_multiplier = 1.0\ntarget_epsilon = 5.0\n",
        "[attack]\nfraction = 0.25\nkind = { kind = \"scale\", scale = 50.0 }\n",
    );
    let robust = base.replace(
        "clients_per_round = 4\n",
        "clients_per_round = 8\naggregator = { kind = \"median\" }\n",
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("r.toml"), &robust).unwrap();
    let o = braid(&["run", "r.toml", "-q", "--out", "r"], dir.path());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let csv = std::fs::read_to_string(dir.path().join("r/metrics.csv")).unwrap();
    assert_eq!(csv.lines().count(), 7, "{csv}");
    expect_error(
        &robust.replace("{ kind = \"median\" }", "{ kind = \"krum\", f = 3 }"),
        "needs at least 9 clients per round",
    );
    expect_error(
        &base.replace("fraction = 0.25", "fraction = 1.5"),
        "attack.fraction",
    );
    // Label flipping: every client trains on labels l -> 9 - l, so the model learns the
    // mirrored classes and scores far below the same run without attackers.
    let accuracy = |toml: &str, out: &str| -> f64 {
        std::fs::write(dir.path().join("l.toml"), toml).unwrap();
        let o = braid(&["run", "l.toml", "-q", "--out", out], dir.path());
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let csv = std::fs::read_to_string(dir.path().join(out).join("metrics.csv")).unwrap();
        csv.lines()
            .last()
            .unwrap()
            .split(',')
            .nth(1)
            .unwrap()
            .parse()
            .unwrap()
    };
    let learns = base
        .replace("train_limit = 400", "train_limit = 2000")
        .replace("name = \"cnn-small\"", "name = \"mlp\"")
        .replace("batch_size = 32", "batch_size = 32\nlocal_epochs = 5")
        .replace("rounds = 6", "rounds = 10")
        .replace("clients_per_round = 4", "clients_per_round = 8");
    let clean = accuracy(
        &learns.replace("fraction = 0.25", "fraction = 0.0"),
        "clean",
    );
    let flipped = accuracy(
        &learns.replace("fraction = 0.25", "fraction = 1.0").replace(
            "{ kind = \"scale\", scale = 50.0 }",
            "{ kind = \"label-flip\" }",
        ),
        "flipped",
    );
    assert!(
        flipped < clean - 0.2,
        "clean {clean}, all flipping {flipped}"
    );
    expect_error(
        &robust.replace(
            "{ kind = \"median\" }",
            "{ kind = \"trimmed-mean\", trim = 0.7 }",
        ),
        "aggregator.trim",
    );
}

#[test]
fn secure_aggregation_runs_from_toml_and_matches_plain_fedavg() {
    let plain = DP.replace(
        "[privacy]\nmode = \"central\"\nclip = 1.0\nnoise_multiplier = 1.0\ntarget_epsilon = 5.0\n",
        "",
    );
    let secure = format!("{plain}[secure_aggregation]\nthreshold = 3\n");
    let dir = tempfile::tempdir().unwrap();
    let column = |out: &str, col: usize| metrics_column(&dir.path().join(out), col);
    run_all(dir.path(), &[(&plain, "plain"), (&secure, "secure")]);
    // The unmasked sum is FedAvg's weighted sum up to the 2^-24 fixed-point step, so the
    // accuracy per round agrees; the protocol's messages cost bytes.
    let (a, b) = (column("plain", 1), column("secure", 1));
    assert_eq!(a.len(), 6);
    for (x, y) in a.iter().zip(&b) {
        assert!((x - y).abs() <= 0.02, "plain {a:?} vs secure {b:?}");
    }
    let (up_a, up_b) = (column("plain", 8), column("secure", 8));
    assert!(
        up_a.iter().zip(&up_b).all(|(x, y)| y > x),
        "{up_a:?} {up_b:?}"
    );
    // Same seed, same metrics: fresh random keys every round do not change the sum.
    std::fs::write(dir.path().join("s.toml"), &secure).unwrap();
    let o = braid(&["run", "s.toml", "-q", "--out", "again"], dir.path());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(column("secure", 1), column("again", 1));
    expect_error(
        &secure.replace("threshold = 3", "threshold = 5"),
        "secure_aggregation.threshold = 5",
    );
    expect_error(
        &secure.replace("threshold = 3", "threshold = 3\nscale_bits = 60"),
        "secure_aggregation.scale_bits",
    );
    expect_error(
        &secure.replace(
            "clients_per_round = 4\n",
            "clients_per_round = 4\naggregator = { kind = \"median\" }\n",
        ),
        "cannot be combined",
    );
    expect_error(
        &format!("{secure}[privacy]\nmode = \"central\"\nclip = 1.0\nnoise_multiplier = 1.0\n"),
        "central DP clips at the server",
    );
    expect_error(
        &format!("{secure}[compression]\nuplink = {{ quantize = {{ kind = \"fp16\" }} }}\n"),
        "compression.uplink",
    );
}

#[test]
fn the_downlink_as_a_compressed_change_runs_from_toml() {
    let plain = DP
        .replace(
            "[privacy]\nmode = \"central\"\nclip = 1.0\nnoise_multiplier = 1.0\ntarget_epsilon = 5.0\n",
            "",
        )
        .replace("clients_per_round = 4", "clients_per_round = 8")
        .replace("train_limit = 400", "train_limit = 2000")
        .replace("name = \"cnn-small\"", "name = \"mlp\"")
        .replace("batch_size = 32", "batch_size = 32\nlocal_epochs = 5");
    let delta = format!(
        "{plain}[compression]\nuplink = {{ sparsify = {{ kind = \"top-k\", fraction = 0.1 }}, quantize = {{ kind = \"int8\", block = 256 }} }}\nerror_feedback = true\ndownlink = {{ sparsify = {{ kind = \"top-k\", fraction = 0.1 }}, quantize = {{ kind = \"int8\", block = 256 }} }}\ndownlink_delta = true\n"
    );
    let dir = tempfile::tempdir().unwrap();
    let column = |out: &str, col: usize| metrics_column(&dir.path().join(out), col);
    run_all(dir.path(), &[(&plain, "plain"), (&delta, "delta")]);
    // Top-10% in int8 with a bitmap of positions: under a quarter of a byte per value each
    // way, against 4 for f32.
    let (down_a, down_b) = (column("plain", 9), column("delta", 9));
    let (up_a, up_b) = (column("plain", 8), column("delta", 8));
    for r in 0..6 {
        assert!(down_b[r] * 15.0 < down_a[r], "{down_a:?} {down_b:?}");
        assert!(up_b[r] * 15.0 < up_a[r], "{up_a:?} {up_b:?}");
    }
    // It learns nearly as well (here 0.68 against 0.71 after 6 rounds).
    let (a, b) = (column("plain", 1), column("delta", 1));
    assert!(
        b[5] > 0.5 && b[5] > a[5] - 0.1,
        "plain {a:?}, compressed {b:?}"
    );
}

#[test]
fn fedbuff_and_simulated_time_run_from_toml() {
    let base = DP
        .replace(
            "[privacy]\nmode = \"central\"\nclip = 1.0\nnoise_multiplier = 1.0\ntarget_epsilon = 5.0\n",
            "[latency]\nclient_gflops = 1.0\nslow_fraction = 0.25\nslowdown = 10.0\n",
        )
        .replace("clients_per_round = 4", "clients_per_round = 8");
    let fedbuff = base
        .replace("name = \"fedavg\"", "name = \"fedbuff\"")
        .replace("rounds = 6", "rounds = 12")
        + "[fedbuff]\nconcurrency = 8\nbuffer = 4\n";
    let dir = tempfile::tempdir().unwrap();
    let csv = |out: &str| -> Vec<Vec<String>> {
        std::fs::read_to_string(dir.path().join(out).join("metrics.csv"))
            .unwrap()
            .lines()
            .skip(1)
            .map(|l| l.split(',').map(str::to_string).collect())
            .collect()
    };
    for (toml, out) in [(&base, "sync"), (&fedbuff, "async"), (&fedbuff, "again")] {
        std::fs::write(dir.path().join("f.toml"), toml).unwrap();
        let o = braid(&["run", "f.toml", "-q", "--out", out], dir.path());
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert!(String::from_utf8_lossy(&o.stdout).contains("s simulated"));
    }
    let (sync, asyn) = (csv("sync"), csv("async"));
    // Columns: 12 sim_time_s, 13 staleness_mean, 14 staleness_max.
    let t = |rows: &[Vec<String>]| -> f64 { rows.last().unwrap()[12].parse().unwrap() };
    assert_eq!((sync.len(), asyn.len()), (6, 12));
    // Both used 48 client updates; the asynchronous server did not wait for the stragglers.
    assert!(
        t(&asyn) < t(&sync),
        "fedbuff {} s, fedavg {} s",
        t(&asyn),
        t(&sync)
    );
    assert!(sync.iter().all(|r| r[13].is_empty()));
    assert!(asyn.iter().all(|r| r[4] == "4" && !r[14].is_empty()));
    // Deterministic: the same metrics but wall time.
    let drop_wall = |rows: Vec<Vec<String>>| -> Vec<Vec<String>> {
        rows.into_iter()
            .map(|mut r| {
                r.pop();
                r
            })
            .collect()
    };
    assert_eq!(drop_wall(csv("async")), drop_wall(csv("again")));
    expect_error(
        &fedbuff.replace("concurrency = 8", "concurrency = 9"),
        "fedbuff.concurrency = 9",
    );
    expect_error(
        &format!("{base}[fedbuff]\nbuffer = 2\n"),
        "[fedbuff] only applies",
    );
    expect_error(
        &base.replace("slowdown = 10.0", "slowdown = 0.5"),
        "latency.slowdown",
    );
    expect_error(
        &fedbuff.replace(
            "buffer = 4",
            "buffer = 4\nstaleness = { kind = \"poly\", a = -1.0 }",
        ),
        "fedbuff.staleness.a",
    );
}

#[test]
fn power_sgd_runs_from_toml() {
    let plain = DP
        .replace(
            "[privacy]\nmode = \"central\"\nclip = 1.0\nnoise_multiplier = 1.0\ntarget_epsilon = 5.0\n",
            "",
        )
        .replace("clients_per_round = 4", "clients_per_round = 8")
        .replace("train_limit = 400", "train_limit = 2000")
        .replace("name = \"cnn-small\"", "name = \"mlp\"")
        .replace("batch_size = 32", "batch_size = 32\nlocal_epochs = 5");
    let low = format!(
        "{plain}[compression]\nuplink = {{ sparsify = {{ kind = \"power-sgd\", rank = 4 }} }}\nerror_feedback = true\n"
    );
    let dir = tempfile::tempdir().unwrap();
    let column = |out: &str, col: usize| metrics_column(&dir.path().join(out), col);
    run_all(dir.path(), &[(&plain, "plain"), (&low, "low")]);
    // The MLP's three weight matrices as rank-4 factors: about 30x fewer bytes up.
    let (up_a, up_b) = (column("plain", 8), column("low", 8));
    assert!(
        up_a.iter().zip(&up_b).all(|(a, b)| b * 20.0 < *a),
        "{up_a:?} {up_b:?}"
    );
    let (a, b) = (column("plain", 1), column("low", 1));
    assert!(b[5] > 0.5, "plain {a:?}, power-sgd {b:?}");
    expect_error(
        &format!("{plain}[compression]\ndownlink = {{ sparsify = {{ kind = \"power-sgd\", rank = 4 }} }}\n"),
        "power-sgd applies to the uplink only",
    );
    expect_error(
        &format!("{plain}[compression]\nuplink = {{ sparsify = {{ kind = \"power-sgd\", rank = 0 }} }}\n"),
        "sparsify.rank = 0",
    );
}

#[test]
fn privacy_and_attacks_combine_with_compression() {
    let learns = DP
        .replace("train_limit = 400", "train_limit = 2000")
        .replace("name = \"cnn-small\"", "name = \"mlp\"")
        .replace("batch_size = 32", "batch_size = 32\nlocal_epochs = 5")
        .replace("clients_per_round = 4", "clients_per_round = 8")
        .replace("target_epsilon = 5.0\n", "");
    let int8 = "[compression]\nuplink = { sparsify = { kind = \"top-k\", fraction = 0.2 }, quantize = { kind = \"int8\", block = 256 } }\nerror_feedback = true\n";
    // Local DP: each client clips and noises its update, then compresses it.
    let local = format!(
        "{}{int8}",
        learns
            .replace("mode = \"central\"", "mode = \"local\"")
            .replace("noise_multiplier = 1.0", "noise_multiplier = 0.01")
    );
    let central = format!("{learns}{int8}");
    // 2 of 8 clients send 50x their update; the median ignores them under compression too.
    let attacked = learns.replace(
        "[privacy]\nmode = \"central\"\nclip = 1.0\nnoise_multiplier = 1.0\n",
        "[attack]\nfraction = 0.25\nkind = { kind = \"scale\", scale = 50.0 }\n",
    ) + int8;
    let median = attacked.replace(
        "clients_per_round = 8\n",
        "clients_per_round = 8\naggregator = { kind = \"median\" }\n",
    );
    let dir = tempfile::tempdir().unwrap();
    run_all(
        dir.path(),
        &[
            (&local, "local"),
            (&central, "central"),
            (&attacked, "mean"),
            (&median, "median"),
        ],
    );
    let last = |out: &str, col: usize| *metrics_column(&dir.path().join(out), col).last().unwrap();
    for out in ["local", "central"] {
        assert!(last(out, 11) > 0.0, "{out}: epsilon reported");
        // Top-20% in int8: over 5x fewer bytes up than 8 clients' f32 updates.
        let f32_up = 8.0 * 4.0 * 199_210.0;
        assert!(last(out, 8) * 5.0 < f32_up, "{out}: {}", last(out, 8));
    }
    assert!(
        last("local", 1) > 0.5,
        "local DP at sigma 0.01 still learns"
    );
    assert!(
        last("median", 1) > last("mean", 1) + 0.2,
        "median {} vs mean {}",
        last("median", 1),
        last("mean", 1)
    );
}

#[test]
fn one_run_at_a_time_per_output_directory_and_its_results_are_one_unit() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("exp.toml"), GOOD).unwrap();
    let mut first = Command::new(env!("CARGO_BIN_EXE_braid"))
        .args(["run", "exp.toml", "-q", "--out", "same"])
        .args(["--set", "algorithm.rounds=40", "--set", "runtime.workers=1"])
        .current_dir(d)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    while !d.join("same/.braid-lock").exists() {
        assert!(
            t0.elapsed().as_secs() < 60,
            "the first run never took its directory"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let second = braid(&["run", "exp.toml", "-q", "--out", "same"], d);
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success());
    assert!(
        err.contains("is in use by another braid process")
            && err.contains(&format!("pid {}", first.id())),
        "{err}"
    );
    assert!(first.wait().unwrap().success());
    // The first run's set is complete and its own: every file as its manifest lists it.
    let m = braid_engine::report::check_manifest(&d.join("same")).unwrap();
    assert!(m.files.iter().any(|f| f.name == "metrics.csv"));
    assert!(!d.join("same/.braid-lock").exists());
    // A lock left by a killed run does not block the next one.
    std::fs::write(d.join("same/.braid-lock"), "4000000000 1\nsince 0\n").unwrap();
    let third = braid(&["run", "exp.toml", "-q", "--out", "same"], d);
    assert!(
        third.status.success(),
        "{}",
        String::from_utf8_lossy(&third.stderr)
    );
}

#[test]
fn a_full_disk_leaves_one_error_line_no_temp_file_and_a_visibly_incomplete_set() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("exp.toml"), GOOD).unwrap();
    let first = braid(&["run", "exp.toml", "-q", "--out", "out"], d);
    assert!(first.status.success());
    // The second run into the same directory may write no file above 16 KiB (the model is
    // larger): each write past that fails as on a full disk (EFBIG, with SIGXFSZ ignored).
    let full = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "ulimit -f 16; trap '' XFSZ; exec {} run exp.toml -q --out out --set seed=9",
            env!("CARGO_BIN_EXE_braid")
        ))
        .current_dir(d)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&full.stderr);
    assert!(!full.status.success(), "{err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "one line: {err}");
    assert!(
        lines[0].contains("cannot write") && lines[0].contains("out/"),
        "{err}"
    );
    assert!(!err.contains("Os {") && !err.contains("panicked"), "{err}");
    let names: Vec<String> = std::fs::read_dir(d.join("out"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().all(|n| !n.contains("tmp")),
        "temp files left: {names:?}"
    );
    // The set is visibly incomplete (no manifest), the directory free for the next run.
    assert!(braid_engine::report::check_manifest(&d.join("out")).is_err());
    assert!(!d.join("out/.braid-lock").exists(), "{names:?}");
    let again = braid(&["run", "exp.toml", "-q", "--out", "out"], d);
    assert!(again.status.success());
    assert!(braid_engine::report::check_manifest(&d.join("out")).is_ok());
}

#[test]
fn faults_runs_seeds_and_refuses_nonsense() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("exp.toml"),
        GOOD.replace("rounds = 1", "rounds = 2")
            .replace("\"cnn-small\"", "\"mlp\""),
    )
    .unwrap();
    let out = braid(&["faults", "exp.toml", "--seeds", "5", "--crash", "0.2"], d);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("5 seeds in") && stdout.contains("0 broke an invariant"),
        "{stdout}"
    );
    let bad = braid(&["faults", "exp.toml", "--drop", "1.5"], d);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--drop 1.5 must be a probability"));
}
