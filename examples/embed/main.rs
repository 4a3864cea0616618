//! Running experiments from Rust code instead of TOML: a config built and changed in code,
//! a sweep over data heterogeneity, typed metrics rows, and braid's usual output files.
//!
//! ```text
//! cargo run --release --example embed            # writes runs/embed/alpha-*/
//! ```

use braid::braid_data::DataConfig;
use braid::braid_engine::algorithms::fedavg::{FedAvg, RoundMetrics};
use braid::braid_engine::config::PartitionKind;
use braid::prelude::*;

/// FedAvg on `clients` clients of the bundled Fashion-MNIST subset, label skew `alpha`
/// (Dirichlet; `None`: IID), built field by field.
fn config(alpha: Option<f64>, rounds: u32, train_limit: usize) -> anyhow::Result<ExperimentConfig> {
    let mut c = ExperimentConfig::new("mlp", "fedavg")?;
    c.name = "embed".into();
    c.seed = 3;
    c.data = DataConfig::FashionMnist {
        source: "bundled".into(),
        train_limit: Some(train_limit),
        test_limit: Some(train_limit / 4),
    };
    c.partition.clients = 6;
    if let Some(a) = alpha {
        c.partition.kind = PartitionKind::Dirichlet;
        c.partition.alpha = Some(a);
    }
    c.train.local_steps = Some(10);
    c.algorithm.rounds = Some(rounds);
    c.validate_with(&Registry::builtin())
        .map_err(anyhow::Error::msg)?;
    Ok(c)
}

/// A finished run: its metrics rows (with wall seconds) and its final weights.
type Run = (Vec<(RoundMetrics, f64)>, Vec<f32>);

/// Runs `c` with FedAvg in the simulator.
fn run(c: &ExperimentConfig) -> anyhow::Result<Run> {
    let prepared = experiment::prepare(c)?;
    let out = experiment::run::<FedAvg>(&prepared, &mut |e| {
        if let Event::Metrics(m) = e {
            eprintln!("  {}", m.line());
        }
    })?;
    let params = out.final_params.clone().unwrap_or_default();
    Ok((out.rows, params))
}

fn main() -> anyhow::Result<()> {
    let registry = Registry::builtin();
    for alpha in [None, Some(1.0), Some(0.1)] {
        let c = config(alpha, 5, 4000)?;
        let label = alpha.map_or("iid".to_string(), |a| format!("alpha-{a}"));
        println!("FedAvg, 6 clients, {label}:");
        let (rows, _) = run(&c)?;
        let last = rows.last().and_then(|(m, _)| m.accuracy).unwrap_or(0.0);
        println!("  final accuracy {last:.4}");
        // The same run through the registry writes braid's usual files.
        let algorithm = registry.of(&c).map_err(anyhow::Error::msg)?;
        let finished = algorithm.simulate(&algorithm.prepare(&c)?, &mut |_, _| {})?;
        let dir = std::path::Path::new("runs/embed").join(&label);
        let written = finished.write(&dir).map_err(anyhow::Error::msg)?;
        println!(
            "  {} | {} files in {}",
            finished.summary().line,
            written.len(),
            dir.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_built_in_code_trains_and_reproduces() {
        let c = config(Some(0.5), 3, 1200).expect("a valid config");
        let (a, wa) = run(&c).expect("the run");
        let (b, wb) = run(&c).expect("the run again");
        let rows = |r: &[(RoundMetrics, f64)]| r.iter().map(|(m, _)| m.clone()).collect::<Vec<_>>();
        assert_eq!(rows(&a), rows(&b), "same config and seed, same metrics");
        assert!(wa == wb, "same final weights");
        assert_eq!(a.len(), 3);
        let last = a.last().and_then(|(m, _)| m.accuracy).unwrap_or(0.0);
        assert!(last > 0.3, "accuracy {last} (chance is 0.1)");
        // What the code sets is checked as a file would be, and the refusal can be matched.
        let mut bad = c.clone();
        bad.partition.alpha = None;
        let e = bad.validate_with(&Registry::builtin()).unwrap_err();
        assert_eq!(
            (e.field.as_str(), e.rule),
            ("partition.alpha", Rule::Missing)
        );
        assert!(e.to_string().contains("needs partition.alpha"), "{e}");
        // The TOML it stands for parses back to the same config.
        let again = ExperimentConfig::parse(&c.to_toml(), "embed.toml", &[]).expect("parses");
        assert_eq!(again, c);
    }
}
