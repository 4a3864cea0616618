//! The regression suite: every config in `configs/` and `examples/`, and the feature layers on
//! top of them, run at small settings by the `braid` binary, must write exactly what the
//! committed expected outputs say (`tests/regression/`: `cases.toml` lists the runs,
//! `expected/<case>.txt` holds each run's digest).
//!
//! A digest holds `metrics.csv` without `wall_s`, `traffic.csv`, `accounting.csv` and
//! `accounting-rounds.csv` without `compute_s`, and a SHA-256 of the tensors in
//! `final.safetensors` (bit-identical final weights), for the run and for its `--baseline`
//! reference when the case asks for one. (`config.toml` is left out: it is the config as
//! braid serializes it, whose layout may change while it means the same run.)
//!
//! `BRAID_REGRESSION_UPDATE=1` rewrites the expected digests (`scripts/regression.sh --update`);
//! `BRAID_REGRESSION_ONLY=a,b` runs only the named cases.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Cases {
    small: BTreeMap<String, Vec<String>>,
    case: Vec<Case>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    config: String,
    #[serde(default)]
    small: Option<String>,
    #[serde(default)]
    set: Vec<String>,
    #[serde(default)]
    baseline: bool,
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `csv` without the columns named in `drop`.
fn without_columns(csv: &str, drop: &[&str]) -> String {
    let mut lines = csv.lines();
    let Some(header) = lines.next() else {
        return String::new();
    };
    let keep: Vec<bool> = header.split(',').map(|c| !drop.contains(&c)).collect();
    let pick = |line: &str| {
        line.split(',')
            .zip(&keep)
            .filter(|(_, k)| **k)
            .map(|(v, _)| v)
            .collect::<Vec<_>>()
            .join(",")
    };
    let mut out = pick(header);
    out.push('\n');
    for l in lines {
        out.push_str(&pick(l));
        out.push('\n');
    }
    out
}

/// The digest of the outputs in `dir`.
fn digest(dir: &Path) -> String {
    let mut out = String::new();
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).ok();
    for (file, drop) in [
        ("metrics.csv", &["wall_s"][..]),
        ("traffic.csv", &[][..]),
        ("accounting.csv", &["compute_s"][..]),
        ("accounting-rounds.csv", &["compute_s"][..]),
    ] {
        if let Some(text) = read(file) {
            out.push_str(&format!("== {file}\n"));
            out.push_str(&if drop.is_empty() {
                text
            } else {
                without_columns(&text, drop)
            });
        }
    }
    if let Ok(bytes) = std::fs::read(dir.join("final.safetensors")) {
        out.push_str(&format!(
            "== final.safetensors tensors sha256\n{}\n",
            tensors_hash(&bytes)
        ));
    }
    out
}

/// SHA-256 over a safetensors file's tensors in name order (name, dtype, shape, data): the
/// weights bit for bit, whatever order the writer put its metadata in (a hash map's).
fn tensors_hash(bytes: &[u8]) -> String {
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("header length")) as usize;
    let header: BTreeMap<String, serde_json::Value> =
        serde_json::from_slice(&bytes[8..8 + n]).expect("safetensors header");
    let data = &bytes[8 + n..];
    let mut h = Sha256::new();
    for (name, t) in header.iter().filter(|(k, _)| *k != "__metadata__") {
        let offsets = &t["data_offsets"];
        let (start, end) = (
            offsets[0].as_u64().expect("offset") as usize,
            offsets[1].as_u64().expect("offset") as usize,
        );
        h.update(name.as_bytes());
        h.update(t["dtype"].to_string().as_bytes());
        h.update(t["shape"].to_string().as_bytes());
        h.update(&data[start..end]);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs `case` into `out` and returns its digest, or why it failed.
fn run(case: &Case, small: &BTreeMap<String, Vec<String>>, out: &Path) -> Result<String, String> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_braid"));
    cmd.current_dir(repo())
        .args(["run", &case.config, "--quiet", "--out"])
        .arg(out);
    let shared = match &case.small {
        Some(name) => small
            .get(name)
            .ok_or_else(|| format!("no [small] list {name:?}"))?
            .as_slice(),
        None => &[],
    };
    for s in shared.iter().chain(&case.set) {
        cmd.args(["--set", s]);
    }
    if case.baseline {
        cmd.arg("--baseline");
    }
    let o = cmd
        .output()
        .map_err(|e| format!("cannot start braid: {e}"))?;
    if !o.status.success() {
        return Err(format!(
            "braid failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ));
    }
    let mut d = digest(out);
    if case.baseline {
        d.push_str("==== baseline\n");
        d.push_str(&digest(&out.join("baseline")));
    }
    Ok(d)
}

/// The first line where `got` differs from `want`, with its neighbours, for the failure report.
fn first_difference(want: &str, got: &str) -> String {
    let (w, g): (Vec<&str>, Vec<&str>) = (want.lines().collect(), got.lines().collect());
    let i = w
        .iter()
        .zip(&g)
        .position(|(a, b)| a != b)
        .unwrap_or(w.len().min(g.len()));
    let section = w[..i.min(w.len())]
        .iter()
        .rev()
        .find(|l| l.starts_with("=="))
        .copied()
        .unwrap_or("");
    format!(
        "in {section} line {}:\n  expected: {}\n  got:      {}",
        i + 1,
        w.get(i).copied().unwrap_or("<end>"),
        g.get(i).copied().unwrap_or("<end>")
    )
}

#[test]
fn every_config_reproduces_its_expected_outputs() {
    let root = repo().join("tests/regression");
    let text = std::fs::read_to_string(root.join("cases.toml")).expect("cases.toml");
    let cases: Cases = toml::from_str(&text).expect("cases.toml parses");
    let update = std::env::var_os("BRAID_REGRESSION_UPDATE").is_some();
    let only: Option<Vec<String>> = std::env::var("BRAID_REGRESSION_ONLY")
        .ok()
        .map(|s| s.split(',').map(str::to_owned).collect());
    let tmp = tempfile::tempdir().expect("temp dir");
    let mut failures = Vec::new();
    let mut names = std::collections::BTreeSet::new();
    for case in &cases.case {
        assert!(names.insert(&case.name), "case {} listed twice", case.name);
        if only.as_ref().is_some_and(|o| !o.contains(&case.name)) {
            continue;
        }
        let expected = root.join("expected").join(format!("{}.txt", case.name));
        let t0 = std::time::Instant::now();
        let got = match run(case, &cases.small, &tmp.path().join(&case.name)) {
            Ok(d) => d,
            Err(e) => {
                failures.push(format!("{}: {e}", case.name));
                continue;
            }
        };
        eprintln!("{}: {:.1} s", case.name, t0.elapsed().as_secs_f64());
        if update {
            std::fs::create_dir_all(expected.parent().expect("parent")).expect("mkdir");
            std::fs::write(&expected, &got).expect("write expected");
            continue;
        }
        match std::fs::read_to_string(&expected) {
            Ok(want) if want == got => {}
            Ok(want) => failures.push(format!(
                "{}: outputs differ from {} {}",
                case.name,
                expected.display(),
                first_difference(&want, &got)
            )),
            Err(e) => failures.push(format!(
                "{}: no expected outputs ({e}); make them with scripts/regression.sh --update",
                case.name
            )),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.case.len(),
        failures.join("\n")
    );
}
