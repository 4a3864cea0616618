//! `braid bench-step` as a user runs it: one model's step and a stack of models' step (both
//! convolution forms) are timed and written as JSON; bad options are one line, not a panic.

use std::process::{Command, Output};

fn bench_step(args: &[&str], json: &std::path::Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_braid"))
        .args(["bench-step", "--source", "bundled", "--model", "cnn-small"])
        .args([
            "--threads",
            "1",
            "--warmup",
            "0",
            "--steps",
            "10",
            "--batch",
            "8",
        ])
        .arg("--json")
        .arg(json)
        .args(args)
        .output()
        .expect("braid runs")
}

/// The JSON line `bench-step` wrote.
fn fields(json: &std::path::Path) -> String {
    std::fs::read_to_string(json).expect("the JSON file")
}

#[test]
fn a_stack_of_models_is_timed_in_either_convolution_form() {
    let dir = tempfile::tempdir().expect("tempdir");
    let json = dir.path().join("step.json");
    let out = bench_step(&[], &json);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let one = fields(&json);
    assert!(one.contains("\"stack\": 1"), "{one}");
    assert!(!one.contains("\"forward_ms\": null"), "{one}");
    for (form, named) in [
        ("auto", "grouped"),
        ("grouped", "grouped"),
        ("unfolded", "unfolded"),
    ] {
        let out = bench_step(&["--stack", "3", "--stack-conv", form], &json);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains("x 3 stacked"), "{stdout}");
        let line = fields(&json);
        assert!(line.contains("\"stack\": 3"), "{line}");
        assert!(
            line.contains(&format!("\"stack_conv\": \"{named}\"")),
            "{line}"
        );
        // A stacked step is not split into its parts.
        assert!(line.contains("\"forward_ms\": null"), "{line}");
        let median: f64 = line
            .split("\"median_ms\": ")
            .nth(1)
            .and_then(|rest| rest.split(',').next())
            .and_then(|v| v.parse().ok())
            .expect("a median");
        assert!(median > 0.0, "{line}");
    }
}

#[test]
fn bad_stack_options_are_one_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let json = dir.path().join("step.json");
    for (args, needle) in [
        (vec!["--stack", "0"], "--stack"),
        (
            vec!["--stack", "2", "--stack-conv", "sideways"],
            "--stack-conv",
        ),
    ] {
        let out = bench_step(&args, &json);
        assert!(!out.status.success(), "{args:?} succeeded");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}
