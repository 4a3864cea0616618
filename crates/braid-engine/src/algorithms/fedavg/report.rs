//! The FedAvg family's `metrics.csv`, `metrics.jsonl`, plots and console table.

use serde::Serialize;

use super::RoundMetrics;
use crate::config::ExperimentConfig;
use crate::report::{accuracy_plots, json_line, opt, Outputs, Rows};

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
        let mut out = format!(
            "{:>5}  {:>8}  {:>8}  {:>10}  {:>9}  {:>9}  {:>8}\n",
            "round", "accuracy", "loss", "train_loss", "MB up", "MB down", "wall_s"
        );
        for row in &rows(rounds) {
            let r = &row.metrics;
            let f = |v: Option<f64>| v.map_or("-".to_string(), |x| format!("{x:.4}"));
            out.push_str(&format!(
                "{:>5}  {:>8}  {:>8}  {:>10.4}  {:>9.2}  {:>9.2}  {:>8.1}\n",
                r.round,
                f(r.accuracy),
                f(r.loss),
                r.train_loss,
                r.bytes_up as f64 / 1e6,
                r.bytes_down as f64 / 1e6,
                row.wall_s
            ));
        }
        out
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
