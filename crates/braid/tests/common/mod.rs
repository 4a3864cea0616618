//! Helpers shared by the process tests: the `braid` binary, keys, waiting for a process or a
//! checkpoint, metrics without the wall-clock column.
#![allow(dead_code)] // each test crate uses its own subset

use std::path::Path;
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

pub fn braid() -> Command {
    Command::new(env!("CARGO_BIN_EXE_braid"))
}

pub fn keygen(dir: &Path, name: &str) -> String {
    let out = braid()
        .args(["keygen", "--out"])
        .arg(dir.join(format!("{name}.key")))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls the checkpoint at `path` until its metadata number `key` is at least `at_least`
/// (failing the test after 120 s); returns the value seen.
pub fn wait_for_checkpoint(path: &Path, key: &str, at_least: u64) -> u64 {
    let t0 = Instant::now();
    loop {
        let seen = braid_engine::checkpoint::Checkpoint::<serde_json::Value>::load(path)
            .ok()
            .and_then(|c| c.state.meta_u64(key).ok());
        if let Some(v) = seen.filter(|&v| v >= at_least) {
            return v;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "{} never reached {key} = {at_least}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits for `child` at most `limit`; kills it and fails the test on timeout.
pub fn finish(mut child: Child, limit: Duration, what: &str) -> Output {
    let t0 = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "{what} did not finish in {limit:?}\nstdout:\n{}\nstderr:\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed\nstdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// metrics.csv without the wall-clock column.
pub fn metrics(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| l.rsplit_once(',').unwrap().0.to_string())
        .collect()
}

/// Runs `d/exp.toml` in the simulator into `d/sim`.
pub fn simulate(d: &Path) {
    let sim = braid()
        .current_dir(d)
        .args(["run", "exp.toml", "-q", "--out", "sim"])
        .output()
        .unwrap();
    ok(&sim, "braid run");
}

/// A FedAvg experiment on the bundled data (Dirichlet 0.5, MLP, batch 32, 5 local steps)
/// with `clients` clients and `rounds` rounds; `extra` goes at the end of `[algorithm]`,
/// `parts` is the body of `network.participants`.
pub fn fedavg_toml(
    name: &str, seed: u64, clients: usize, rounds: u32, extra: &str, parts: &str,
) -> String {
    format!(
        r#"name = "{name}"
seed = {seed}
[data]
dataset = "fashion-mnist"
source = "bundled"
[partition]
clients = {clients}
kind = "dirichlet"
alpha = 0.5
[model]
name = "mlp"
[train]
batch_size = 32
local_steps = 5
[algorithm]
name = "fedavg"
rounds = {rounds}
{extra}
[network]
retry_s = 60
participants = [
{parts}]
"#
    )
}
