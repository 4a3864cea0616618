//! Refused settings are typed: code matches the field and the rule, people read the same line.

use braid_engine::config::ExperimentConfig;
use braid_engine::error::Rule;

const BASE: &str = r#"
name = "t"
[model]
name = "cnn"
[algorithm]
name = "fedavg"
rounds = 2
"#;

/// Parses `src` with `overrides`; the refusal's field, rule and line.
fn refusal(src: &str, overrides: &[&str]) -> (String, Rule, String) {
    let overrides: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
    match ExperimentConfig::parse(src, "t.toml", &overrides) {
        Ok(_) => panic!("{overrides:?} was accepted"),
        Err(e) => (e.invalid.field.clone(), e.invalid.rule, e.to_string()),
    }
}

#[test]
fn each_refusal_names_its_field_and_rule() {
    let dsgd = BASE.replace(
        "name = \"fedavg\"\nrounds = 2",
        "name = \"dsgd\"\nsteps = 4",
    );
    let cases: Vec<(String, Vec<&str>, &str, Rule, &str)> = vec![
        (
            BASE.into(),
            vec!["train.batch_size=0"],
            "train.batch_size",
            Rule::Range,
            "t.toml: train.batch_size = 0 must be in [1, 1048576]",
        ),
        (
            BASE.into(),
            vec!["algorithm.name=\"fedprox\""],
            "algorithm.mu",
            Rule::Missing,
            "needs algorithm.mu",
        ),
        (
            BASE.into(),
            vec!["algorithm.name=\"nope\""],
            "algorithm.name",
            Rule::Unknown,
            "unknown algorithm `nope`",
        ),
        (
            BASE.into(),
            vec!["partition.kind=\"dirichlet\""],
            "partition.alpha",
            Rule::Missing,
            "needs partition.alpha",
        ),
        (
            dsgd.clone(),
            vec![
                "privacy.mode=\"central\"",
                "privacy.clip=1.0",
                "privacy.noise_multiplier=1.0",
            ],
            "privacy",
            Rule::NotApplicable,
            "[privacy] applies to",
        ),
        (
            BASE.into(),
            vec![
                "secure_aggregation.threshold=2",
                "algorithm.aggregator.kind=\"median\"",
            ],
            "secure_aggregation",
            Rule::Conflict,
            "cannot be combined",
        ),
        (
            BASE.into(),
            vec!["decentralized.eval_samples=3"],
            "decentralized",
            Rule::NotApplicable,
            "[decentralized] only applies to algorithm.name = \"dsgd\"",
        ),
        (
            BASE.replace("name = \"fedavg\"", "name = \"split\""),
            vec!["split.step_timeout_s=-1"],
            "split.step_timeout_s",
            Rule::Range,
            "split.step_timeout_s = -1 must be a positive number of seconds",
        ),
        (
            BASE.replace("name = \"fedavg\"", "name = \"split\""),
            vec!["algorithm.round_timeout_s=5"],
            "algorithm.round_timeout_s",
            Rule::NotApplicable,
            "a step's deadline is split.step_timeout_s",
        ),
        (
            BASE.replace("name = \"fedavg\"", "name = \"dfml\"")
                .replace("[algorithm]", "[partition]\nclients = 4\n[algorithm]"),
            vec!["mutual.round_timeout_s=0"],
            "mutual.round_timeout_s",
            Rule::Range,
            "mutual.round_timeout_s = 0 must be a positive number of seconds",
        ),
        (
            BASE.replace("rounds = 2", "rounds = 2\nroundz = 3"),
            vec![],
            "",
            Rule::Syntax,
            "roundz",
        ),
    ];
    for (src, overrides, field, rule, text) in cases {
        let (f, r, line) = refusal(&src, &overrides);
        assert_eq!((f.as_str(), r), (field, rule), "{overrides:?}: {line}");
        assert!(line.contains(text), "{overrides:?}: {line}");
        assert!(!line.contains('\n'), "one line: {line}");
    }
}
