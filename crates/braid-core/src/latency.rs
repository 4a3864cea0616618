//! A straggler and latency model: simulated wall time of a synchronous step, from each
//! client's compute speed and link, so simulated runs can report how long they would take
//! on slow, unequal clients (the simulator's own wall time measures only this machine).
//!
//! A *leg* is one client's share of a phase: receive `bytes_down`, compute `flops`, send
//! `bytes_up`; it takes two one-way latencies plus the bytes over the client's link plus the
//! FLOPs at the client's speed. A synchronous phase lasts as long as its slowest leg.

use rand::seq::index::sample;
use serde::{Deserialize, Serialize};

/// `[split.latency]`: the clients' and server's speeds and the links between them.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LatencyConfig {
    /// Sustained compute of a client, GFLOP/s (default 10: a phone or a small CPU).
    #[serde(default = "client_gflops")]
    pub client_gflops: f64,
    /// Sustained compute of the server, GFLOP/s (default 1000: one accelerator).
    #[serde(default = "server_gflops")]
    pub server_gflops: f64,
    /// Each client's link, Mbit/s in each direction (default 100).
    #[serde(default = "link_mbps")]
    pub link_mbps: f64,
    /// One-way latency between a client and the server, ms (default 10).
    #[serde(default = "latency_ms")]
    pub latency_ms: f64,
    /// Fraction of clients that are stragglers, chosen with the run's seed (default 0).
    #[serde(default)]
    pub slow_fraction: f64,
    /// How many times slower a straggler's compute and link are (default 4).
    #[serde(default = "slowdown")]
    pub slowdown: f64,
}

fn client_gflops() -> f64 {
    10.0
}
fn server_gflops() -> f64 {
    1000.0
}
fn link_mbps() -> f64 {
    100.0
}
fn latency_ms() -> f64 {
    10.0
}
fn slowdown() -> f64 {
    4.0
}

impl Default for LatencyConfig {
    fn default() -> Self {
        Self {
            client_gflops: client_gflops(),
            server_gflops: server_gflops(),
            link_mbps: link_mbps(),
            latency_ms: latency_ms(),
            slow_fraction: 0.0,
            slowdown: slowdown(),
        }
    }
}

impl LatencyConfig {
    /// Checks every value; the error names the field.
    pub fn validate(&self) -> Result<(), String> {
        for (f, v) in [
            ("client_gflops", self.client_gflops),
            ("server_gflops", self.server_gflops),
            ("link_mbps", self.link_mbps),
        ] {
            // Simulated time is kept in nanoseconds: bounded speeds keep it far from overflow.
            if !(1e-3..=1e9).contains(&v) {
                return Err(format!("{f} = {v} must be in [1e-3, 1e9]"));
            }
        }
        if !(0.0..=3.6e6).contains(&self.latency_ms) {
            return Err(format!(
                "latency_ms = {} must be in [0, 3.6e6] (an hour)",
                self.latency_ms
            ));
        }
        if !(0.0..=1.0).contains(&self.slow_fraction) {
            return Err(format!(
                "slow_fraction = {} must be in [0, 1]",
                self.slow_fraction
            ));
        }
        if !(1.0..=1e4).contains(&self.slowdown) {
            return Err(format!("slowdown = {} must be in [1, 1e4]", self.slowdown));
        }
        Ok(())
    }
}

/// One client's share of a phase.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Leg {
    /// The client.
    pub client: usize,
    /// Bytes it receives before computing.
    pub bytes_down: u64,
    /// FLOPs it computes.
    pub flops: f64,
    /// Bytes it sends after computing.
    pub bytes_up: u64,
}

/// Per-client speeds drawn from a [`LatencyConfig`].
#[derive(Debug, Clone, PartialEq)]
pub struct LatencyModel {
    flops: Vec<f64>,
    bytes_per_s: Vec<f64>,
    latency_s: f64,
    server_flops: f64,
    slow: Vec<bool>,
}

impl LatencyModel {
    /// Speeds for `clients` clients; stragglers are drawn from `rng`.
    pub fn new(config: &LatencyConfig, clients: usize, rng: &mut impl rand::Rng) -> Self {
        let n_slow = ((config.slow_fraction * clients as f64).round() as usize).min(clients);
        let mut slow = vec![false; clients];
        for i in sample(rng, clients, n_slow) {
            slow[i] = true;
        }
        let factor = |s: bool| if s { config.slowdown } else { 1.0 };
        Self {
            flops: slow
                .iter()
                .map(|&s| config.client_gflops * 1e9 / factor(s))
                .collect(),
            bytes_per_s: slow
                .iter()
                .map(|&s| config.link_mbps * 1e6 / 8.0 / factor(s))
                .collect(),
            latency_s: config.latency_ms / 1e3,
            server_flops: config.server_gflops * 1e9,
            slow,
        }
    }

    /// Which clients are stragglers.
    pub fn stragglers(&self) -> &[bool] {
        &self.slow
    }

    /// Seconds one leg takes (unknown clients take no time).
    pub fn leg(&self, leg: &Leg) -> f64 {
        let (Some(f), Some(b)) = (self.flops.get(leg.client), self.bytes_per_s.get(leg.client))
        else {
            return 0.0;
        };
        2.0 * self.latency_s + (leg.bytes_down + leg.bytes_up) as f64 / b + leg.flops / f
    }

    /// Seconds a synchronous phase takes: its slowest leg (0 without legs).
    pub fn phase(&self, legs: &[Leg]) -> f64 {
        legs.iter().map(|l| self.leg(l)).fold(0.0, f64::max)
    }

    /// Seconds the server takes for `flops`.
    pub fn server(&self, flops: f64) -> f64 {
        flops / self.server_flops
    }

    /// Seconds client `client` takes for `flops` (unknown clients take no time).
    pub fn client_compute_s(&self, client: usize, flops: f64) -> f64 {
        self.flops.get(client).map_or(0.0, |f| flops / f)
    }

    /// Seconds `bytes` take over client `client`'s link, without the latency (unknown
    /// clients take no time).
    pub fn client_transfer_s(&self, client: usize, bytes: u64) -> f64 {
        self.bytes_per_s
            .get(client)
            .map_or(0.0, |b| bytes as f64 / b)
    }

    /// One-way latency of every link, in seconds.
    pub fn latency_s(&self) -> f64 {
        self.latency_s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seed;

    #[test]
    fn the_slowest_leg_sets_the_pace() {
        let c = LatencyConfig {
            client_gflops: 1.0,
            server_gflops: 100.0,
            link_mbps: 8.0, // 1 MB/s
            latency_ms: 5.0,
            slow_fraction: 0.5,
            slowdown: 10.0,
        };
        c.validate().unwrap();
        let m = LatencyModel::new(&c, 4, &mut seed::rng(1, &[]));
        assert_eq!(m.stragglers().iter().filter(|&&s| s).count(), 2);
        let leg = |client| Leg {
            client,
            bytes_down: 500_000,
            flops: 1e9,
            bytes_up: 500_000,
        };
        let fast = m.stragglers().iter().position(|&s| !s).unwrap();
        let slow = m.stragglers().iter().position(|&s| s).unwrap();
        // 10 ms latency + 1 s of bytes + 1 s of compute; a straggler is 10x slower.
        assert!((m.leg(&leg(fast)) - 2.01).abs() < 1e-9);
        assert!((m.leg(&leg(slow)) - 20.01).abs() < 1e-9);
        assert_eq!(m.phase(&[leg(fast), leg(slow)]), m.leg(&leg(slow)));
        assert_eq!(m.phase(&[]), 0.0);
        assert!((m.server(1e11) - 1.0).abs() < 1e-12);
        for bad in [
            LatencyConfig { slowdown: 0.5, ..c },
            LatencyConfig {
                link_mbps: 0.0,
                ..c
            },
            LatencyConfig {
                slow_fraction: 2.0,
                ..c
            },
            LatencyConfig {
                latency_ms: f64::NAN,
                ..c
            },
        ] {
            assert!(bad.validate().is_err());
        }
    }
}
