//! Unit tests of config loading and checking.

use super::*;
use braid_core::partition::PartitionScheme;

const BASE: &str = r#"
name = "t"
[model]
name = "cnn"
[algorithm]
name = "fedavg"
rounds = 2
"#;

#[test]
fn minimal_config_gets_defaults() {
    let c = ExperimentConfig::parse(BASE, "t.toml", &[]).unwrap();
    assert_eq!(c.partition.clients, 10);
    assert_eq!(c.train.batch_size, 32);
    assert_eq!(c.clients_per_round(), 10);
    assert_eq!(c.output_dir(), PathBuf::from("runs/t"));
    // Serialized config parses back to the same thing.
    assert_eq!(ExperimentConfig::parse(&c.to_toml(), "x", &[]).unwrap(), c);
}

#[test]
fn the_run_id_follows_what_the_run_computes_not_where_or_on_what_it_runs() {
    let id = |overrides: &[&str]| {
        let o: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
        ExperimentConfig::parse(BASE, "t.toml", &o)
            .unwrap()
            .run_id()
    };
    let base = id(&[]);
    assert_eq!(base.len(), 64);
    // A node's own output directory, device and worker threads: the same run.
    assert_eq!(id(&["output_dir=\"elsewhere\"", "runtime.workers=3"]), base);
    assert_eq!(id(&["runtime.device=\"gpu:1\""]), base);
    // What changes the computation: another run.
    for o in [
        "seed=8",
        "train.optimizer={ name = \"sgd\", lr = 0.5 }",
        "train.batch_size=16",
        "partition.clients=9",
    ] {
        assert_ne!(id(&[o]), base, "{o}");
    }
}

#[test]
fn errors_name_the_field_on_one_line() {
    let cases = [
        (BASE.replace("\"cnn\"", "\"resnet\""), "cnn-small"),
        (
            BASE.replace("rounds = 2", "rounds = 2\nroundz = 3"),
            "roundz",
        ),
        (
            format!("{BASE}[partition]\nkind = \"dirichlet\"\n"),
            "partition.alpha",
        ),
        (
            format!("{BASE}[partition]\nkind = \"dirichlet\"\nalpha = 0.0\n"),
            "alpha",
        ),
        (
            format!("{BASE}[partition]\nkind = \"iid\"\nalpha = 0.5\n"),
            "does not apply",
        ),
        (BASE.replace("\"fedavg\"", "\"fedprox\""), "algorithm.mu"),
        (BASE.replace("rounds = 2", "rounds = 0"), "algorithm.rounds must be at least 1"),
        (
            format!("{BASE}[network]\nrequest_timeout_s = 9223372036854775807\n"),
            "network.request_timeout_s",
        ),
        (
            format!("{BASE}[network]\nretry_s = 9223372036854775807\n"),
            "network.retry_s",
        ),
        (format!("{BASE}[runtime]\ndevice = \"tpu\"\n"), "gpu:software"),
        (
            format!("{BASE}[train.optimizer]\nname = \"sgd\"\nlr = -1.0\n"),
            "lr",
        ),
        ("name = ".to_string(), "line 1"),
        // Features an algorithm refuses, said by the registry; an algorithm can say what
        // it offers instead.
        (
            format!("{}[latency]\nslow_fraction = 0.5\n", BASE.replace("\"fedavg\"", "\"split\"")),
            "[latency] applies to \"fedavg\", \"fedprox\" and \"fedbuff\" (split learning has [split.latency])",
        ),
        (
            format!("{}[privacy]\nmode = \"central\"\nclip = 1.0\nnoise_multiplier = 1.0\n", BASE.replace("\"fedavg\"", "\"dsgd\"")),
            "[privacy] applies to \"fedavg\" and \"fedprox\"",
        ),
        (
            format!("{BASE}[split]\ncut = \"blocks.0\"\n"),
            "[split] only applies to algorithm.name = \"split\"",
        ),
    ];
    for (src, needle) in cases {
        let e = ExperimentConfig::parse(&src, "f.toml", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains(needle), "{needle:?} not in {e:?}");
        assert!(!e.contains('\n'), "multi-line error: {e:?}");
    }
}

#[test]
fn overrides_apply() {
    let c = ExperimentConfig::parse(
        BASE,
        "t.toml",
        &[
            "algorithm.rounds=7".into(),
            "partition.kind=dirichlet".into(),
            "partition.alpha=0.1".into(),
        ],
    )
    .unwrap();
    assert_eq!(c.algorithm.rounds(), 7);
    assert_eq!(
        c.partition.scheme().unwrap(),
        PartitionScheme::Dirichlet {
            alpha: 0.1,
            min_size: 1
        }
    );
    assert!(ExperimentConfig::parse(BASE, "t.toml", &["nonsense".into()]).is_err());
}

/// Every bounded setting is refused just outside its range (docs/config.md), when the file
/// is read, in one line naming the field: none of these reaches the data, a node or a thread.
#[test]
fn every_bounded_setting_is_refused_just_outside_its_range_at_load_time() {
    let dsgd = "name = \"t\"\n[model]\nname = \"mlp\"\n[algorithm]\nname = \"dsgd\"\nsteps = 12\n";
    let fedbuff = BASE.replace("\"fedavg\"", "\"fedbuff\"");
    let dfml = BASE.replace("name = \"fedavg\"", "name = \"dfml\"");
    let fedprox = format!("{}mu = 0.1\n", BASE.replace("\"fedavg\"", "\"fedprox\""));
    let cases: &[(&str, &[&str], &str)] = &[
        (BASE, &["partition.clients=1000001"], "partition.clients"),
        (
            BASE,
            &["partition.kind=\"dirichlet\"", "partition.alpha=0.0"],
            "partition.alpha",
        ),
        (
            BASE,
            &["partition.kind=\"dirichlet\"", "partition.alpha=nan"],
            "partition.alpha",
        ),
        (
            BASE,
            &[
                "partition.kind=\"shards\"",
                "partition.shards_per_client=99999999",
            ],
            "partition.shards_per_client",
        ),
        (BASE, &["train.batch_size=1048577"], "train.batch_size"),
        (BASE, &["train.local_epochs=1001"], "train.local_epochs"),
        (BASE, &["train.local_steps=1000001"], "train.local_steps"),
        (
            BASE,
            &["train.local_steps=100000", "train.batch_size=100000"],
            "2^30",
        ),
        (
            BASE,
            &["train.optimizer={ name = \"sgd\", lr = 1001.0 }"],
            "lr",
        ),
        (
            BASE,
            &["train.optimizer={ name = \"sgd\", lr = 0.1, weight_decay = inf }"],
            "weight_decay",
        ),
        (
            BASE,
            &["train.optimizer={ name = \"adamw\", lr = 0.001, eps = 2.0 }"],
            "eps",
        ),
        (BASE, &["algorithm.rounds=10000001"], "algorithm.rounds"),
        (
            BASE,
            &["algorithm.server_optimizer={ kind = \"plain\", lr = 2000.0 }"],
            "server_optimizer.lr",
        ),
        (
            BASE,
            &["algorithm.aggregator={ kind = \"krum\", f = 9223372036854775807 }"],
            "aggregator.f",
        ),
        (
            BASE,
            &["algorithm.aggregator={ kind = \"norm-clip\", clip = 1e7 }"],
            "aggregator.clip",
        ),
        (BASE, &["runtime.workers=1025"], "runtime.workers"),
        (
            BASE,
            &["algorithm.clients_per_round=3", "algorithm.min_replies=4"],
            "algorithm.min_replies",
        ),
        (BASE, &["latency.client_gflops=0.0001"], "client_gflops"),
        (BASE, &["latency.latency_ms=1e7"], "latency_ms"),
        (BASE, &["latency.slowdown=1e5"], "slowdown"),
        (
            BASE,
            &[
                "privacy.mode=\"central\"",
                "privacy.clip=1e7",
                "privacy.noise_multiplier=1.0",
            ],
            "privacy.clip",
        ),
        (
            BASE,
            &[
                "privacy.mode=\"central\"",
                "privacy.clip=1.0",
                "privacy.noise_multiplier=1e7",
            ],
            "privacy.noise_multiplier",
        ),
        (
            BASE,
            &[
                "attack.fraction=0.1",
                "attack.kind={ kind = \"scale\", scale = 1e7 }",
            ],
            "attack",
        ),
        (&fedprox, &["algorithm.mu=1e5"], "algorithm.mu"),
        (dsgd, &["algorithm.steps=0"], "algorithm.steps"),
        (dsgd, &["algorithm.steps=1000000001"], "algorithm.steps"),
        (dsgd, &["decentralized.every=13"], "decentralized.every"),
        (
            dsgd,
            &["decentralized.topology={ kind = \"erdos-renyi\", p = 0.0 }"],
            "topology.p",
        ),
        (
            dsgd,
            &[
                "decentralized.topology={ kind = \"torus\" }",
                "partition.clients=7",
            ],
            "torus",
        ),
        (
            dsgd,
            &["decentralized.budget={ kind = \"fixed\", r = 1e7 }"],
            "budget.r",
        ),
        (
            dsgd,
            &["decentralized.eval_samples=16777217"],
            "decentralized.eval_samples",
        ),
        (
            dsgd,
            &["algorithm.round_timeout_s=1"],
            "does not apply to \"dsgd\"",
        ),
        (
            dsgd,
            &[
                "decentralized.topology={ kind = \"exponential\" }",
                "decentralized.mixing=\"metropolis-hastings\"",
            ],
            "needs an undirected topology",
        ),
        (
            dsgd,
            &["algorithm.min_replies=1"],
            "does not apply to \"dsgd\"",
        ),
        (&fedbuff, &["fedbuff.buffer=10001"], "fedbuff.buffer"),
        (
            &fedbuff,
            &["fedbuff.staleness={ kind = \"poly\", a = 1e4 }"],
            "fedbuff.staleness.a",
        ),
        (&dfml, &["mutual.temperature=0.0001"], "mutual.temperature"),
        (
            &dfml,
            &["mutual.eval_samples=16777217"],
            "mutual.eval_samples",
        ),
        (
            BASE,
            &["governance.report_flops=0.5"],
            "governance.report_flops",
        ),
        (
            BASE,
            &["governance.report_bytes=1e19"],
            "governance.report_bytes",
        ),
        (
            BASE,
            &["governance.report_participants=0"],
            "governance.report_participants",
        ),
        (
            BASE,
            &["governance.report_run_flops=1e31"],
            "governance.report_run_flops",
        ),
        (
            BASE,
            &["governance.report_run_bytes=0"],
            "governance.report_run_bytes",
        ),
        (BASE, &["governance.pause=true"], "names no threshold"),
    ];
    for (src, overrides, needle) in cases {
        let o: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
        let e = match ExperimentConfig::parse(src, "f.toml", &o) {
            Ok(_) => panic!("{overrides:?} was accepted"),
            Err(e) => e.to_string(),
        };
        assert!(e.contains(needle), "{overrides:?}: {needle:?} not in {e:?}");
        assert!(!e.contains('\n'), "multi-line error: {e:?}");
    }
    // The bounds themselves are accepted.
    for (src, overrides) in [
        (
            BASE,
            vec!["partition.clients=1000000", "train.local_epochs=1000"],
        ),
        (
            BASE,
            vec!["train.local_steps=1000000", "train.batch_size=1024"],
        ),
        (dsgd, vec!["decentralized.every=12"]),
        (
            BASE,
            vec![
                "governance.report_flops=1e30",
                "governance.report_bytes=1",
                "governance.report_participants=1",
            ],
        ),
    ] {
        let o: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
        if let Err(e) = ExperimentConfig::parse(src, "f.toml", &o) {
            panic!("{overrides:?} refused: {e}");
        }
    }
}
