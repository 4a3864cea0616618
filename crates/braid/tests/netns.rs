//! A deployed run across Linux network namespaces: every node in its own namespace (its own
//! network stack and address), linked by veth pairs to a bridge, links shaped with `tc`
//! (netem delay and loss where the kernel has netem, a token-bucket rate limit where it has
//! not), and one client cut off by a partition that heals. Needs root (or CAP_NET_ADMIN) and
//! `ip`; where namespaces cannot be made the test says so and is skipped.

mod common;
use common::*;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Runs `ip args`; the error names the command and what it printed.
fn ip(args: &[&str]) -> Result<(), String> {
    run("ip", args)
}

fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("`{program} {}`: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`{program} {}`: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Namespaces `<prefix>n<i>` for the nodes and `<prefix>sw` holding the bridge; node `i` has
/// address 10.213.0.(i+1) on its end of the veth pair `c<i>`/`h<i>`. Removed when dropped.
struct Namespaces {
    prefix: String,
    made: Vec<String>,
    /// How the links are shaped (for the test's output).
    shaping: String,
}

impl Namespaces {
    fn new(nodes: usize) -> Result<Self, String> {
        let mut net = Self {
            prefix: format!("braid{}", std::process::id()),
            made: Vec::new(),
            shaping: String::new(),
        };
        let sw = net.switch();
        ip(&["netns", "add", &sw])?;
        net.made.push(sw.clone());
        ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &sw, "link", "set", "br0", "up"])?;
        for i in 0..nodes {
            let ns = net.ns(i);
            ip(&["netns", "add", &ns])?;
            net.made.push(ns.clone());
            let (h, c) = (format!("h{i}"), format!("c{i}"));
            ip(&[
                "-n", &sw, "link", "add", &h, "type", "veth", "peer", "name", &c, "netns", &ns,
            ])?;
            ip(&["-n", &sw, "link", "set", &h, "master", "br0", "up"])?;
            let addr = format!("{}/24", Self::addr(i));
            ip(&["-n", &ns, "addr", "add", &addr, "dev", &c])?;
            ip(&["-n", &ns, "link", "set", &c, "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        // Shape every node's outgoing link: netem's delay and loss where the kernel has it, a
        // 50 Mbit/s token bucket (queueing delay under load) where it has not.
        let netem = ["netem", "delay", "20ms", "10ms", "loss", "1%"];
        let tbf = ["tbf", "rate", "50mbit", "burst", "64kb", "latency", "400ms"];
        for i in 0..nodes {
            let (ns, c) = (net.ns(i), format!("c{i}"));
            let tc = |q: &[&str]| {
                let mut a = vec![
                    "netns", "exec", &ns, "tc", "qdisc", "add", "dev", &c, "root",
                ];
                a.extend_from_slice(q);
                ip(&a)
            };
            net.shaping = match tc(&netem) {
                Ok(()) => "netem: 20 ms +- 10 ms delay, 1% loss".into(),
                Err(why) => match tc(&tbf) {
                    Ok(()) => format!("no netem here ({why}); tbf: 50 Mbit/s"),
                    Err(why2) => format!("no shaping: {why}; {why2}"),
                },
            };
        }
        Ok(net)
    }

    fn switch(&self) -> String {
        format!("{}sw", self.prefix)
    }

    fn ns(&self, i: usize) -> String {
        format!("{}n{i}", self.prefix)
    }

    fn addr(i: usize) -> String {
        format!("10.213.0.{}", i + 1)
    }

    /// Cuts node `i` off the bridge (`up = false`) or links it again.
    fn link(&self, i: usize, up: bool) {
        let state = if up { "up" } else { "down" };
        ip(&["-n", &self.switch(), "link", "set", &format!("h{i}"), state]).unwrap();
    }

    /// Starts `braid node` for participant `i` inside its namespace.
    fn spawn(&self, d: &Path, i: usize) -> Child {
        Command::new("ip")
            .current_dir(d)
            .args([
                "netns",
                "exec",
                &self.ns(i),
                env!("CARGO_BIN_EXE_braid"),
                "node",
            ])
            .args(["exp.toml", "--key", &format!("k{i}.key")])
            .args(["--out", &format!("out{i}")])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in self.made.iter().rev() {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

/// FedAvg: 3 clients, MLP, `rounds` rounds, every node listening on port 4100 of its own
/// address. No deadlines: a cut-off client is waited for, so the run must equal the simulator's.
fn write_config(d: &Path, clients: usize, rounds: u32) {
    let mut parts = String::new();
    for i in 0..=clients {
        let p = keygen(d, &format!("k{i}"));
        parts.push_str(&format!(
            "  {{ node = {i}, peer_id = \"{p}\", addr = \"/ip4/{}/tcp/4100\" }},\n",
            Namespaces::addr(i)
        ));
    }
    let config = fedavg_toml("netns", 5, clients, rounds, "", &parts)
        .replace("retry_s = 60", "retry_s = 120");
    std::fs::write(d.join("exp.toml"), config).unwrap();
}

#[test]
fn a_run_across_network_namespaces_survives_shaped_links_and_a_healed_partition() {
    let net = match Namespaces::new(4) {
        Ok(n) => n,
        Err(why) => {
            eprintln!("skipped: cannot make network namespaces here ({why}); run as root on Linux with iproute2");
            return;
        }
    };
    eprintln!("links: {}", net.shaping);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let rounds = 6;
    write_config(d, 3, rounds);
    let nodes: Vec<Child> = (0..4).map(|i| net.spawn(d, i)).collect();
    // Once round 1 is checkpointed, client 2 is cut off for 5 s. Without its update (or
    // without the model reaching it) the server completes at most one more round meanwhile.
    let ckpt = d.join("out0/checkpoint.ckpt");
    let before = wait_for_checkpoint(&ckpt, "completed_rounds", 1);
    net.link(2, false);
    let cut = Instant::now();
    std::thread::sleep(Duration::from_secs(5));
    let during = wait_for_checkpoint(&ckpt, "completed_rounds", before);
    net.link(2, true);
    eprintln!(
        "partition of {:?}: rounds {before} before, {during} at the heal",
        cut.elapsed()
    );
    assert!(
        during <= before + 1,
        "the partition cut nothing off ({before} -> {during} rounds)"
    );
    assert!(during < u64::from(rounds), "the run ended before the heal");
    let limit = Duration::from_secs(240);
    for (i, n) in nodes.into_iter().enumerate() {
        ok(&finish(n, limit, "braid node"), &format!("node {i}"));
    }
    // Healed, the run finished with every round, bit for bit the simulator's.
    simulate(d);
    let net_rows = metrics(&d.join("out0/metrics.csv"));
    assert_eq!(net_rows.len(), rounds as usize + 1, "{net_rows:?}");
    assert_eq!(net_rows, metrics(&d.join("sim/metrics.csv")));
}
