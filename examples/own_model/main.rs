//! A program with its own model and data: braid's command line with `digits-net` ([`model`], a
//! burn module defined here, not in braid) registered beside the built-in models, and
//! `digits-images` ([`data_set`], the digits tables read as images) beside braid's data sets. Every command
//! works for it (`run`, `launch`, `node`, `audit`, `halt`), with every algorithm that takes a
//! registered model (the FedAvg family with its feature layers, dsgd with the merge, mutual
//! learning beside built-ins, split learning for `digits-split`, given in two parts):
//!
//! ```text
//! cargo run --release --example own_model -- run examples/own_model/fedavg.toml
//! cargo run --release --example own_model -- run examples/own_model/dsgd.toml
//! cargo run --release --example own_model -- launch examples/own_model/fedavg.toml
//! cargo run --release --example own_model -- run examples/own_model/images.toml
//! cargo run --release --example own_model -- run examples/own_model/dfml.toml
//! cargo run --release --example own_model -- run examples/own_model/split.toml
//! ```

mod data_set;
mod model;

use braid::Registry;

/// braid's algorithms and models, and this program's model.
fn registry() -> Result<Registry, braid::braid_engine::algorithm::RegistryError> {
    let mut registry = Registry::builtin();
    // The one line that adds the model.
    registry.add_model("digits-net", model::DigitsNetKind { hidden: 64 })?;
    // The built-in `mlp` written as a model of one's own, to compare their costs.
    registry.add_model(
        "user-mlp",
        model::UserMlpKind {
            braid_kernels: false,
        },
    )?;
    registry.add_model(
        "user-mlp-kernels",
        model::UserMlpKind {
            braid_kernels: true,
        },
    )?;
    // A model given as two parts: split learning cuts it between them.
    registry.add_model(
        "digits-split",
        braid::prelude::SplitModel {
            client: model::DigitsEncoderKind { hidden: 64 },
            server: model::DigitsHeadKind { hidden: 32 },
        },
    )?;
    // The one line that adds the data set.
    registry.add_dataset("digits-images", data_set::DigitsImages)?;
    Ok(registry)
}

fn main() -> std::process::ExitCode {
    braid::cli::main_from(registry())
}

#[cfg(test)]
mod tests {
    use super::*;
    use braid::braid_engine::algorithms::dsgd::Dsgd;
    use braid::braid_engine::algorithms::fedavg::FedAvg;
    use braid::prelude::*;

    /// The repository root: the configs name the data from there.
    fn root() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
    }

    fn config(file: &str, set: &[&str]) -> ExperimentConfig {
        let src = std::fs::read_to_string(root().join("examples/own_model").join(file))
            .expect("the example config");
        let src = src.replace("\"examples/", &format!("\"{}/examples/", root().display()));
        let set: Vec<String> = set.iter().map(|s| s.to_string()).collect();
        ExperimentConfig::parse_with(&src, file, &set, &registry().expect("registers"))
            .expect("a valid config")
    }

    fn prepare(c: &ExperimentConfig) -> Prepared {
        registry()
            .expect("registers")
            .of(c)
            .expect("registered")
            .prepare(c)
            .expect("prepared")
    }

    #[test]
    fn fedavg_trains_the_programs_own_model_on_csv_tables() {
        let c = config("fedavg.toml", &["algorithm.rounds=6"]);
        let p = prepare(&c);
        assert_eq!(p.model.name(), "digits-net");
        assert!(p.model.arch().is_none(), "not a built-in");
        let names: Vec<&str> = p
            .model
            .param_shapes()
            .iter()
            .map(|s| s.name.as_str())
            .collect();
        assert_eq!(
            names,
            [
                "hidden.weight",
                "hidden.bias",
                "norm.gamma",
                "norm.beta",
                "out.weight",
                "out.bias"
            ]
        );
        let out = experiment::run::<FedAvg>(&p, &mut |_| {}).expect("the run");
        let acc: Vec<f64> = out.rows.iter().filter_map(|(m, _)| m.accuracy).collect();
        let last = acc.last().copied().unwrap_or(0.0);
        assert!(last > 0.85, "accuracy after 6 rounds {last}: {acc:?}");
        // The same config and seed give the same run, whatever the worker count.
        let one = prepare(&config(
            "fedavg.toml",
            &["algorithm.rounds=6", "runtime.workers=1"],
        ));
        let again = experiment::run::<FedAvg>(&one, &mut |_| {}).expect("the run");
        assert_eq!(again.final_params, out.final_params);
        // The compute accounting uses the model's own count.
        assert_eq!(p.model.forward_flops(), 64 + 8256 + 64 * 16 + 1290);
    }

    #[test]
    fn dsgd_and_its_merge_train_the_programs_own_model() {
        let c = config("dsgd.toml", &["algorithm.steps=300"]);
        let p = prepare(&c);
        let out = experiment::run::<Dsgd>(&p, &mut |_| {}).expect("the run");
        let last = out.rows.last().map(|(m, _)| m.clone()).expect("rows");
        assert!(
            last.merged_accuracy > 0.8,
            "merged accuracy {}",
            last.merged_accuracy
        );
        assert!(last.local_mean > 0.5, "local accuracy {}", last.local_mean);
    }

    #[test]
    fn dfml_trains_the_programs_own_model_with_a_built_in() {
        use braid::braid_engine::algorithms::mutual::Dfml;
        let run = |workers: &str| {
            let c = config("dfml.toml", &["algorithm.rounds=10", workers]);
            let p = prepare(&c);
            let names: Vec<&str> = p.models.iter().map(|m| m.name()).collect();
            assert_eq!(names, ["digits-net", "mlp"]);
            assert!(p.models[0].arch().is_none() && p.models[1].arch().is_some());
            experiment::run::<Dfml>(&p, &mut |_| {}).expect("the run")
        };
        let out = run("runtime.workers=2");
        let last = out.rows.last().map(|(m, _)| m.clone()).expect("rows");
        assert!(
            last.accuracy > 0.6,
            "accuracy after 10 rounds {}",
            last.accuracy
        );
        // Both types learned: each one's mean accuracy is reported.
        assert_eq!(last.per_arch.len(), 2);
        assert!(
            last.per_arch.iter().all(|a| a.is_some_and(|a| a > 0.4)),
            "{:?}",
            last.per_arch
        );
        // The same seed gives the same run with one worker.
        let again = run("runtime.workers=1");
        let acc: Vec<f64> = out.rows.iter().map(|(m, _)| m.accuracy).collect();
        let acc_again: Vec<f64> = again.rows.iter().map(|(m, _)| m.accuracy).collect();
        assert_eq!(acc_again, acc);
        // A name nobody registered is refused, naming the field.
        let src =
            std::fs::read_to_string(root().join("examples/own_model/dfml.toml")).expect("config");
        let e = ExperimentConfig::parse_with(
            &src,
            "dfml.toml",
            &["mutual.models=[\"digits-net\", \"digit-net\"]".to_string()],
            &registry().expect("registers"),
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(
            e.contains("mutual.models: `digit-net` is not a built-in model"),
            "{e}"
        );
    }

    #[test]
    fn split_learning_cuts_the_programs_own_model_between_its_two_parts() {
        use braid::braid_engine::algorithms::split::Split;
        let p = prepare(&config("split.toml", &["algorithm.rounds=3"]));
        let cut = p.split.clone().expect("a split run");
        assert_eq!((cut.cut.as_str(), cut.cut_features), ("client", 64));
        assert_eq!(cut.client_params + cut.server_params, p.model.num_params());
        let out = experiment::run::<Split>(&p, &mut |_| {}).expect("the run");
        let acc = out.rows.last().and_then(|(m, _)| m.accuracy).unwrap_or(0.0);
        assert!(acc > 0.8, "accuracy after 3 epochs {acc}");
        // The same model trains whole with FedAvg: its parts are one model there.
        let whole = prepare(&config(
            "fedavg.toml",
            &["model.name=\"digits-split\"", "algorithm.rounds=3"],
        ));
        let fed = experiment::run::<FedAvg>(&whole, &mut |_| {}).expect("the run");
        assert!(fed.rows.last().and_then(|(m, _)| m.accuracy).unwrap_or(0.0) > 0.5);
        // A model in one piece cannot be split, and the error says how it could be.
        let one = registry()
            .expect("registers")
            .of(&config("split.toml", &["model.name=\"digits-net\""]))
            .expect("registered")
            .prepare(&config("split.toml", &["model.name=\"digits-net\""]))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(one.contains("register it as a SplitModel"), "{one}");
    }

    #[test]
    fn a_run_starts_from_weights_in_pytorchs_layout_and_misfits_are_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let p = prepare(&config("fedavg.toml", &[]));
        let start = p.model.init_params(99).expect("init");
        let file = dir.path().join("start.safetensors");
        p.model.save(&start, &file).expect("saved");
        let init = format!("model.init={:?}", file.display().to_string());
        let from_file = prepare(&config("fedavg.toml", &[&init]));
        assert_eq!(from_file.initial_params().expect("read"), start);
        assert_ne!(p.initial_params().expect("seeded"), start);
        // Weights of another model: every name that does not fit is listed.
        let mlp = prepare(&config("fedavg.toml", &["model.name=\"mlp\""]));
        let other = dir.path().join("mlp.safetensors");
        mlp.model
            .save(&mlp.initial_params().expect("init"), &other)
            .expect("saved");
        let init = format!("model.init={:?}", other.display().to_string());
        let e = prepare(&config("fedavg.toml", &[&init]))
            .initial_params()
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("does not fit model digits-net: missing hidden.bias, hidden.weight")
                && e.contains("not in the model: fc.0.bias, fc.0.weight"),
            "{e}"
        );
        // A file that is not safetensors, and one that is not there.
        let junk = dir.path().join("junk.safetensors");
        std::fs::write(&junk, b"\xff\xff\xff\xff\xff\xff\xff\x7fnot a header").expect("written");
        for (path, says) in [
            (junk, "weights file"),
            (dir.path().join("none"), "no such file"),
        ] {
            let init = format!("model.init={:?}", path.display().to_string());
            let e = prepare(&config("fedavg.toml", &[&init]))
                .initial_params()
                .unwrap_err()
                .to_string();
            assert!(e.contains(says) && !e.contains('\n'), "{e}");
        }
    }

    #[test]
    fn the_programs_own_data_set_trains_and_is_written_back_as_given() {
        let c = config("images.toml", &["algorithm.rounds=3"]);
        let p = prepare(&c);
        assert_eq!(p.data.train.sample_shape(), &[1, 8, 8]);
        assert!(p.data_description.contains("as 8x8 images"));
        let out = experiment::run::<FedAvg>(&p, &mut |_| {}).expect("the run");
        let acc = out.rows.last().and_then(|(m, _)| m.accuracy).unwrap_or(0.0);
        assert!(acc > 0.5, "accuracy after 3 rounds {acc}");
        // config.toml keeps the table; read back through the registry, it is the same config.
        let again = ExperimentConfig::parse_with(
            &c.to_toml(),
            "config.toml",
            &[],
            &registry().expect("registers"),
        )
        .expect("reads back");
        assert_eq!(again, c);
        assert!(c.to_toml().contains("dataset = \"digits-images\""));
        // Its own options are checked by its own type, its own bounds by its loader.
        let err = |set: &[&str]| {
            let src = std::fs::read_to_string(root().join("examples/own_model/images.toml"))
                .expect("config")
                .replace("\"examples/", &format!("\"{}/examples/", root().display()));
            let set: Vec<String> = set.iter().map(|s| s.to_string()).collect();
            match ExperimentConfig::parse_with(&src, "images.toml", &set, &registry().expect("r")) {
                Err(e) => e.to_string(),
                Ok(c) => prepare_err(&c),
            }
        };
        let typo = err(&["data.max_cnt=3"]);
        assert!(typo.contains("unknown field `max_cnt`"), "{typo}");
        let low = err(&["data.max_count=4"]);
        assert!(low.contains("not between 0 and 4"), "{low}");
        let name = err(&["data.dataset=\"digit-images\""]);
        assert!(
            name.contains("unknown data set `digit-images`") && name.contains("`digits-images`"),
            "{name}"
        );
        // braid's own names are not for taking.
        let mut r = registry().expect("registers");
        assert!(r.add_dataset("csv", data_set::DigitsImages).is_err());
    }

    fn prepare_err(c: &ExperimentConfig) -> String {
        let r = registry().expect("registers");
        match r.of(c).expect("registered").prepare(c) {
            Ok(_) => String::new(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn names_and_misfits_are_clear_errors() {
        let err = |set: &[&str], registry: &Registry| {
            let src = std::fs::read_to_string(root().join("examples/own_model/fedavg.toml"))
                .expect("config");
            let set: Vec<String> = set.iter().map(|s| s.to_string()).collect();
            ExperimentConfig::parse_with(&src, "fedavg.toml", &set, registry)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        let builtin = err(&[], &Registry::builtin());
        assert!(
            builtin.contains("unknown model `digits-net`, expected one of `mlp`"),
            "{builtin}"
        );
        let typo = err(&["model.name=digit-net"], &registry().expect("registers"));
        assert!(typo.contains("`digits-net`"), "{typo}");
        // The model refuses data it does not fit, naming itself.
        let mut c = config("fedavg.toml", &[]);
        c.data = braid::braid_data::DataConfig::Synthetic(Default::default());
        let e = registry()
            .expect("registers")
            .of(&c)
            .expect("registered")
            .prepare(&c)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("digits-net reads 64 pixel counts"), "{e}");
        // A built-in's name cannot be taken.
        let mut registry = registry().expect("registers");
        assert!(registry
            .add_model("mlp", model::DigitsNetKind { hidden: 8 })
            .is_err());
    }
}
