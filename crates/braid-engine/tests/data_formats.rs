//! braid's data formats end to end: a config names a CSV table, CIFAR-format binary files or
//! NumPy arrays in its `[data]` table, and FedAvg trains on them (generated here, small).

use std::fmt::Write as _;
use std::path::Path;

use braid_engine::algorithms::fedavg::FedAvg;
use braid_engine::config::ExperimentConfig;
use braid_engine::experiment;
use rand::{Rng, SeedableRng};

/// The final test accuracy of FedAvg run from `toml`.
fn accuracy(toml: &str) -> f64 {
    let c = ExperimentConfig::parse(toml, "test", &[]).unwrap_or_else(|e| panic!("{e}"));
    let prepared = experiment::prepare(&c).unwrap_or_else(|e| panic!("{e}"));
    let out = experiment::run::<FedAvg>(&prepared, &mut |_| {}).unwrap();
    out.rows.last().and_then(|(m, _)| m.accuracy).unwrap()
}

/// Three classes of points around three centres in the plane, with a writer column.
fn blobs(n: usize, seed: u64) -> String {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut s = String::from("x,y,label,writer\n");
    for i in 0..n {
        let l = i % 3;
        let (cx, cy) = [(0.0, 3.0), (3.0, -2.0), (-3.0, -2.0)][l];
        let (dx, dy): (f64, f64) = (rng.random_range(-1.0..1.0), rng.random_range(-1.0..1.0));
        writeln!(s, "{},{},{l},{}", cx + dx, cy + dy, i % 6).unwrap();
    }
    s
}

#[test]
fn fedavg_trains_on_csv_tables_partitioned_by_their_group_column() {
    let dir = tempfile::tempdir().unwrap();
    let (train, test) = (dir.path().join("train.csv"), dir.path().join("test.csv"));
    std::fs::write(&train, blobs(300, 1)).unwrap();
    std::fs::write(&test, blobs(90, 2)).unwrap();
    let acc = accuracy(&format!(
        r#"
[data]
dataset = "csv"
train = {train:?}
test = {test:?}
group = "writer"
[partition]
clients = 6
kind = "natural"
[model]
name = "mlp"
[train]
batch_size = 10
optimizer = {{ name = "sgd", lr = 0.1 }}
[algorithm]
name = "fedavg"
rounds = 5
"#
    ));
    assert!(acc > 0.9, "accuracy {acc}");
}

/// `n` CIFAR records of four classes: a bright red, green or blue image, or a dark one.
fn cifar_records(n: usize, seed: u64) -> Vec<u8> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut out = Vec::new();
    for i in 0..n {
        let l = (i % 4) as u8;
        out.push(l);
        for plane in 0..3u8 {
            for _ in 0..1024 {
                let base = if plane == l { 150 } else { 30 };
                out.push(base + rng.random_range(0..60));
            }
        }
    }
    out
}

fn write_cifar10(dir: &Path) {
    for (k, name) in [
        "data_batch_1",
        "data_batch_2",
        "data_batch_3",
        "data_batch_4",
        "data_batch_5",
    ]
    .iter()
    .enumerate()
    {
        std::fs::write(dir.join(format!("{name}.bin")), cifar_records(40, k as u64)).unwrap();
    }
    std::fs::write(dir.join("test_batch.bin"), cifar_records(50, 9)).unwrap();
}

#[test]
fn fedavg_trains_a_cnn_on_cifar_format_files() {
    let dir = tempfile::tempdir().unwrap();
    write_cifar10(dir.path());
    let acc = accuracy(&format!(
        r#"
[data]
dataset = "cifar"
set = "cifar-10"
dir = {:?}
test_limit = 40
[partition]
clients = 2
[model]
name = "cnn-small"
[train]
batch_size = 20
local_epochs = 2
optimizer = {{ name = "sgd", lr = 0.1 }}
[algorithm]
name = "fedavg"
rounds = 10
"#,
        dir.path()
    ));
    assert!(acc > 0.6, "accuracy {acc} (chance is 0.25)");
}

#[test]
fn a_data_table_of_the_wrong_format_is_one_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("train.bin"), b"short").unwrap();
    let toml = format!(
        "[data]\ndataset = \"cifar\"\nset = \"cifar-100\"\ndir = {:?}\n[model]\nname = \"cnn\"\n[algorithm]\nname = \"fedavg\"\nrounds = 1\n",
        dir.path()
    );
    let c = ExperimentConfig::parse(&toml, "test", &[]).unwrap();
    let e = experiment::prepare(&c).err().unwrap().to_string();
    assert!(e.contains("train.bin: not a valid CIFAR-100 file"), "{e}");
    let e = ExperimentConfig::parse(
        "[data]\ndataset = \"csv\"\ntrain = \"a.csv\"\n[model]\nname = \"mlp\"\n[algorithm]\nname = \"fedavg\"\nrounds = 1\n",
        "test",
        &[],
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("test"), "{e}");
    let e = ExperimentConfig::parse(
        "[data]\ndataset = \"npz\"\npath = \"a\"\nextra = 1\n[model]\nname = \"mlp\"\n[algorithm]\nname = \"fedavg\"\nrounds = 1\n",
        "test",
        &[],
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("extra"), "{e}");
}

/// `n` CIFAR records of four classes told apart by where they are bright: the quadrant with
/// the class's number (a normalising network sees shapes, not overall brightness).
fn cifar_quadrants(n: usize, seed: u64) -> Vec<u8> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut out = Vec::new();
    for i in 0..n {
        let l = i % 4;
        out.push(l as u8);
        for _plane in 0..3 {
            for p in 0..1024 {
                let quadrant = (p / 32 >= 16) as usize * 2 + (p % 32 >= 16) as usize;
                let base = if quadrant == l { 150 } else { 30 };
                out.push(base + rng.random_range(0..60));
            }
        }
    }
    out
}

#[test]
fn fedavg_trains_the_resnet_on_cifar_format_files() {
    let dir = tempfile::tempdir().unwrap();
    for k in 1..=5 {
        let records = cifar_quadrants(16, k);
        std::fs::write(dir.path().join(format!("data_batch_{k}.bin")), records).unwrap();
    }
    std::fs::write(dir.path().join("test_batch.bin"), cifar_quadrants(40, 9)).unwrap();
    let acc = accuracy(&format!(
        r#"
[data]
dataset = "cifar"
set = "cifar-10"
dir = {:?}
[partition]
clients = 2
[model]
name = "resnet20"
[train]
batch_size = 10
local_epochs = 2
optimizer = {{ name = "sgd", lr = 0.05, momentum = 0.9 }}
[algorithm]
name = "fedavg"
rounds = 6
"#,
        dir.path()
    ));
    assert!(acc > 0.6, "accuracy {acc} (chance is 0.25)");
}

#[test]
fn fedavg_trains_the_transformer_on_a_text_corpus_and_classifiers_refuse_it() {
    let dir = tempfile::tempdir().unwrap();
    let sentence = "the quick brown fox jumps over the lazy dog. ";
    std::fs::write(dir.path().join("corpus.txt"), sentence.repeat(100)).unwrap();
    let toml = format!(
        r#"
[data]
dataset = "text"
path = {:?}
window = 16
[partition]
clients = 2
[model]
name = "transformer"
[train]
batch_size = 16
optimizer = {{ name = "adamw", lr = 0.003, weight_decay = 0.0 }}
[algorithm]
name = "fedavg"
rounds = 3
"#,
        dir.path().join("corpus.txt")
    );
    let c = ExperimentConfig::parse(&toml, "test", &[]).unwrap_or_else(|e| panic!("{e}"));
    let prepared = experiment::prepare(&c).unwrap_or_else(|e| panic!("{e}"));
    let out = experiment::run::<FedAvg>(&prepared, &mut |_| {}).unwrap();
    let losses: Vec<f64> = out.rows.iter().filter_map(|(m, _)| m.loss).collect();
    let first = *losses.first().unwrap();
    let last = *losses.last().unwrap();
    // Cross-entropy per byte: ln 256 = 5.5 untrained; the sentence is learnt quickly.
    assert!(last < 2.0 && last < first, "test loss per byte {losses:?}");
    let acc = out.rows.last().and_then(|(m, _)| m.accuracy).unwrap();
    assert!(acc > 0.5, "next-byte accuracy {acc}");
    // A classifier on text, or split learning on it: one clear line each.
    let e = ExperimentConfig::parse(&toml, "test", &["model.name=\"mlp\"".into()])
        .map_err(|e| e.to_string())
        .and_then(|c| {
            experiment::prepare(&c)
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
        .unwrap_err();
    assert!(e.contains("model mlp classifies"), "{e}");
}

/// `y = 2 a - b + 0.5` plus noise of spread 0.1, from uniform `a`, `b` in [-1, 1].
fn linear(n: usize, seed: u64) -> String {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut s = String::from("a,b,y\n");
    for _ in 0..n {
        let (a, b): (f64, f64) = (rng.random_range(-1.0..1.0), rng.random_range(-1.0..1.0));
        let noise: f64 = rng.random_range(-0.1..0.1);
        writeln!(s, "{a},{b},{}", 2.0 * a - b + 0.5 + noise).unwrap();
    }
    s
}

#[test]
fn fedavg_and_dsgd_regress_on_a_csv_target_column_with_mse() {
    let dir = tempfile::tempdir().unwrap();
    let (train, test) = (dir.path().join("train.csv"), dir.path().join("test.csv"));
    std::fs::write(&train, linear(400, 1)).unwrap();
    std::fs::write(&test, linear(100, 2)).unwrap();
    let base = format!(
        r#"
[data]
dataset = "csv"
train = {train:?}
test = {test:?}
label = "y"
regression = true
[partition]
clients = 4
[model]
name = "mlp"
[train]
batch_size = 16
optimizer = {{ name = "adamw", lr = 0.01, weight_decay = 0.0 }}
"#
    );
    // The run prepared from `base` with `algorithm`'s table and `set`, or its one-line error.
    let prepared = |algorithm: &str, set: &[&str]| {
        let set: Vec<String> = set.iter().map(|s| s.to_string()).collect();
        let c = ExperimentConfig::parse(&format!("{base}[algorithm]\n{algorithm}\n"), "test", &set)
            .map_err(|e| e.to_string())?;
        experiment::prepare(&c).map_err(|e| e.to_string())
    };
    let p = prepared("name = \"fedavg\"\nrounds = 8", &[]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(p.data.train.task(), braid_data::Task::Regress);
    let out = experiment::run::<FedAvg>(&p, &mut |_| {}).unwrap();
    let last = &out.rows[out.rows.len() - 1].0;
    // The accuracy column holds R^2, the loss column the test MSE (the targets' variance is
    // about 5/3, the noise's 1/300).
    let (r2, mse) = (last.accuracy.unwrap(), last.loss.unwrap());
    assert!(r2 > 0.95 && mse < 0.1, "R^2 {r2}, MSE {mse}");
    // dsgd and its merge train the same task.
    let pd = prepared("name = \"dsgd\"\nsteps = 150", &[]).unwrap_or_else(|e| panic!("{e}"));
    let out = experiment::run::<braid_engine::algorithms::dsgd::Dsgd>(&pd, &mut |_| {}).unwrap();
    let merged = out.rows.last().map(|(m, _)| m.merged_accuracy).unwrap();
    assert!(merged > 0.9, "merged R^2 {merged}");
    // Partitions by class label refuse data without classes.
    for (set, says) in [
        (
            &["partition.kind=\"dirichlet\"", "partition.alpha=0.5"][..],
            "splits by class label, and this data is for Regress",
        ),
        (
            &["partition.kind=\"shards\"", "partition.shards_per_client=2"][..],
            "splits by class label",
        ),
    ] {
        let e = prepared("name = \"fedavg\"\nrounds = 1", set)
            .err()
            .unwrap_or_default();
        assert!(e.contains(says), "{set:?}: {e}");
    }
}
