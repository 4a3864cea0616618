//! A program with its own algorithm: braid's command line with q-weighted FedAvg
//! ([`qfedavg`]) registered beside the built-in algorithms. Every command works for it:
//!
//! ```text
//! cargo run --release --example own_algorithm -- run examples/own_algorithm/qfedavg.toml
//! cargo run --release --example own_algorithm -- launch examples/own_algorithm/qfedavg.toml
//! ```

mod qfedavg;

use braid::Registry;

/// braid's algorithms and this program's.
fn registry() -> Result<Registry, braid::braid_engine::algorithm::RegistryError> {
    let mut registry = Registry::builtin();
    // The one line that adds the algorithm.
    registry.add::<qfedavg::QFedAvg>()?;
    Ok(registry)
}

fn main() -> std::process::ExitCode {
    braid::cli::main_from(registry())
}

#[cfg(test)]
mod tests {
    use super::*;
    use braid::braid_engine::algorithms::fedavg::FedAvg;
    use braid::prelude::*;

    const SMALL: &str = r#"
name = "q"
seed = 5
[data]
dataset = "fashion-mnist"
source = "bundled"
train_limit = 1200
test_limit = 400
[partition]
clients = 4
kind = "dirichlet"
alpha = 0.3
[model]
name = "mlp"
[train]
batch_size = 32
local_steps = 10
[algorithm]
name = "qfedavg"
rounds = 3
[qfedavg]
q = 0.0
"#;

    fn config(src: &str, set: &[&str]) -> ExperimentConfig {
        let set: Vec<String> = set.iter().map(|s| s.to_string()).collect();
        ExperimentConfig::parse_with(src, "q.toml", &set, &registry().expect("registers"))
            .expect("a valid config")
    }

    use braid::braid_engine::algorithms::fedavg::RoundMetrics;

    fn rows_of<A: Algorithm<Protocol: Protocol<Metrics = RoundMetrics>>>(
        c: &ExperimentConfig,
    ) -> (Vec<RoundMetrics>, Vec<f32>) {
        let p = registry()
            .expect("registers")
            .of(c)
            .expect("registered")
            .prepare(c)
            .expect("prepared");
        let out = experiment::run::<A>(&p, &mut |_| {}).expect("the run");
        (
            out.rows.into_iter().map(|(m, _)| m).collect(),
            out.final_params.expect("final parameters"),
        )
    }

    #[test]
    fn at_q_zero_it_is_fedavg_to_the_bit_and_q_changes_the_model() {
        let q0 = rows_of::<qfedavg::QFedAvg>(&config(SMALL, &[]));
        let fedavg_src = SMALL
            .replace("\"qfedavg\"", "\"fedavg\"")
            .replace("[qfedavg]\nq = 0.0\n", "");
        let plain = rows_of::<FedAvg>(&config(&fedavg_src, &[]));
        // Same metrics (accuracy, losses, bytes each way) and the same final weights.
        assert_eq!(q0.0, plain.0);
        assert!(q0.1 == plain.1, "the final weights differ");
        assert_eq!(q0.0.len(), 3);
        let q2 = rows_of::<qfedavg::QFedAvg>(&config(SMALL, &["qfedavg.q=2"]));
        assert_ne!(q0.1, q2.1, "q did not change the model");
        let last = q2.0.last().and_then(|r| r.accuracy).unwrap_or(0.0);
        assert!(last > 0.3, "accuracy {last} (chance is 0.1)");
    }

    #[test]
    fn its_table_and_checks_are_its_own() {
        let e = |src: &str, set: &[&str]| {
            let set: Vec<String> = set.iter().map(|s| s.to_string()).collect();
            ExperimentConfig::parse_with(src, "q.toml", &set, &registry().expect("registers"))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        assert!(e(SMALL, &["qfedavg.q=-1"]).contains("qfedavg.q = -1 must be in [0, 10]"));
        assert!(e(SMALL, &["qfedavg.p=1"]).contains("unknown field `p`"));
        assert!(
            e(&SMALL.replace("[qfedavg]\nq = 0.0\n", ""), &[]).contains("needs a [qfedavg] table")
        );
        // Another algorithm does not take the table; without the registration the name is
        // unknown and the known ones are listed.
        assert!(e(SMALL, &["algorithm.name=fedavg"])
            .contains("[qfedavg] only applies to algorithm.name = \"qfedavg\""));
        let builtin = |src: &str| {
            ExperimentConfig::parse_with(src, "q.toml", &[], &Registry::builtin())
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        assert!(builtin(SMALL).contains("unknown field `qfedavg`"));
        assert!(builtin(&SMALL.replace("[qfedavg]\nq = 0.0\n", ""))
            .contains("unknown algorithm `qfedavg`, expected one of `fedavg`"));
        // Features it does not accept are refused by the registry.
        assert!(e(
            &format!(
                "{SMALL}[attack]\nfraction = 0.25\nkind = {{ kind = \"scale\", scale = 50.0 }}\n"
            ),
            &[]
        )
        .contains("[attack] applies to"));
    }

    #[test]
    fn its_messages_round_trip_and_hostile_bytes_are_refused() {
        use braid::braid_engine::wire::Body;
        let limits = Limits::new(4);
        let msg = qfedavg::QMsg::Update {
            round: 2,
            samples: 30,
            steps: 5,
            loss: 0.5,
            params: Tensor::exact(vec![1.0, 2.0, 3.0]),
        };
        let bytes = Body::Msg(msg.clone()).encode();
        assert_eq!(bytes.len(), Body::Msg(msg.clone()).encoded_len());
        assert_eq!(
            Body::<qfedavg::QMsg>::decode(&bytes, &limits),
            Ok(Body::Msg(msg))
        );
        for cut in 0..bytes.len() {
            assert!(Body::<qfedavg::QMsg>::decode(&bytes[..cut], &limits).is_err());
        }
        let too_big = Body::Msg(qfedavg::QMsg::Model {
            round: 1,
            model: Tensor::exact(vec![0.0; 5]),
        })
        .encode();
        assert!(Body::<qfedavg::QMsg>::decode(&too_big, &limits).is_err());
        // A FedAvg frame is another protocol: refused with both names.
        let mut other = bytes.clone();
        other[2] = 1;
        let e = Body::<qfedavg::QMsg>::decode(&other, &limits)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            e.contains("protocol 1 (fedavg)") && e.contains("speaks qfedavg"),
            "{e}"
        );
    }
}
