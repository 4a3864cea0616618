//! The FedAvg family's `metrics.csv`, `metrics.jsonl`, plots and console table.

use serde::Serialize;

use crate::config::ExperimentConfig;
use crate::node::Metrics;
use crate::report::{accuracy_plots, cell, json_line, opt, Outputs, Rows, Table};

/// Metrics of one completed round, as the server sees them (FedAvg, FedProx, FedBuff and the
/// centralized baseline).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RoundMetrics {
    /// Round number, from 1.
    pub round: u32,
    /// Test accuracy of the global model (None if not evaluated this round).
    pub accuracy: Option<f64>,
    /// Test loss of the global model (None if not evaluated this round).
    pub loss: Option<f64>,
    /// Sample-weighted mean of the clients' training losses.
    pub train_loss: f64,
    /// Clients whose updates were aggregated.
    pub clients: usize,
    /// Clients asked to train that had not replied by the round's deadline (skipped).
    pub stragglers: usize,
    /// Training samples they hold (the FedAvg weights).
    pub samples: u64,
    /// Local optimizer steps they took this round, summed over clients.
    pub local_steps: u64,
    /// Encoded bytes clients sent to the server this round.
    pub bytes_up: u64,
    /// Encoded bytes the server sent to clients this round.
    pub bytes_down: u64,
    /// Differential privacy spent so far: epsilon at the configured delta (`[privacy]` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epsilon: Option<f64>,
    /// Simulated seconds from the start to the end of the round (set by the simulator when
    /// it runs with a `[latency]` model; nodes leave it `None`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sim_time_s: Option<f64>,
    /// How many server updates old the models were that this round's updates were trained
    /// from: mean and largest (asynchronous servers only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub staleness: Option<(f64, u32)>,
}

impl Metrics for RoundMetrics {
    fn progress(&self) -> (u64, Option<f64>) {
        (u64::from(self.round), self.accuracy)
    }

    fn line(&self) -> String {
        format!(
            "round {:>4} | accuracy {} | clients {} (stragglers {})",
            self.round,
            self.accuracy.map_or("-".into(), |a| format!("{a:.4}")),
            self.clients,
            self.stragglers
        )
    }

    fn set_sim_time(&mut self, seconds: f64) {
        self.sim_time_s = Some(seconds);
    }
}

/// One line of `metrics.csv` / `metrics.jsonl`: the server's round metrics plus run totals.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MetricsRow {
    /// The round's metrics.
    #[serde(flatten)]
    pub metrics: RoundMetrics,
    /// Bytes up + down since the start.
    pub cum_bytes: u64,
    /// Seconds since the start of the run.
    pub wall_s: f64,
}

/// Metrics rows with their running byte totals.
pub fn rows(rounds: &[(RoundMetrics, f64)]) -> Vec<MetricsRow> {
    let mut cum = 0;
    rounds
        .iter()
        .map(|(m, wall)| {
            cum += m.bytes_up + m.bytes_down;
            MetricsRow {
                metrics: m.clone(),
                cum_bytes: cum,
                wall_s: *wall,
            }
        })
        .collect()
}

impl Rows for RoundMetrics {
    fn write(
        out: &mut Outputs<'_>, _config: &ExperimentConfig, rounds: &[(Self, f64)],
    ) -> Result<(), String> {
        write_rounds(out, &rows(rounds))
    }

    fn table(_config: &ExperimentConfig, rounds: &[(Self, f64)]) -> String {
        Table::new(&rows(rounds), "  ")
            .column("round", 5, |r| r.metrics.round.to_string())
            .column("accuracy", 8, |r| cell(r.metrics.accuracy))
            .column("loss", 8, |r| cell(r.metrics.loss))
            .column("train_loss", 10, |r| format!("{:.4}", r.metrics.train_loss))
            .column("MB up", 9, |r| {
                format!("{:.2}", r.metrics.bytes_up as f64 / 1e6)
            })
            .column("MB down", 9, |r| {
                format!("{:.2}", r.metrics.bytes_down as f64 / 1e6)
            })
            .column("wall_s", 8, |r| format!("{:.1}", r.wall_s))
            .render()
    }
}

fn write_rounds(out: &mut Outputs<'_>, rows: &[MetricsRow]) -> Result<(), String> {
    let mut csv = String::from(
        "round,accuracy,loss,train_loss,clients,stragglers,samples,local_steps,bytes_up,bytes_down,cum_bytes,epsilon,sim_time_s,staleness_mean,staleness_max,wall_s\n",
    );
    let mut jsonl = String::new();
    for row in rows {
        let r = &row.metrics;
        csv.push_str(&format!(
            "{},{},{},{:.6},{},{},{},{},{},{},{},{},{},{},{},{:.3}\n",
            r.round,
            opt(r.accuracy),
            opt(r.loss),
            r.train_loss,
            r.clients,
            r.stragglers,
            r.samples,
            r.local_steps,
            r.bytes_up,
            r.bytes_down,
            row.cum_bytes,
            opt(r.epsilon),
            opt(r.sim_time_s),
            opt(r.staleness.map(|s| s.0)),
            r.staleness.map_or(String::new(), |s| s.1.to_string()),
            row.wall_s
        ));
        json_line(&mut jsonl, row)?;
    }
    out.metrics(&csv, &jsonl)?;
    let (mut by_round, mut by_bytes) = (Vec::new(), Vec::new());
    for r in rows {
        if let Some(a) = r.metrics.accuracy {
            by_round.push((f64::from(r.metrics.round), a));
            by_bytes.push((r.cum_bytes as f64 / 1e6, a));
        }
    }
    accuracy_plots(
        out,
        [
            ("accuracy_vs_round.png", "round", by_round),
            (
                "accuracy_vs_bytes.png",
                "MB communicated (up + down)",
                by_bytes,
            ),
        ],
    )
}
