//! The FedAvg family's `metrics.csv`, `metrics.jsonl`, plots and console table.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::RoundMetrics;
use crate::config::ExperimentConfig;
use crate::report::{opt, plot_lines, write_atomic, Rows, BLUE};

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
        dir: &Path, config: &ExperimentConfig, rounds: &[(Self, f64)],
    ) -> Result<Vec<PathBuf>, String> {
        write_rounds(dir, config, &rows(rounds))
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

fn write_rounds(
    dir: &Path, config: &ExperimentConfig, rows: &[MetricsRow],
) -> Result<Vec<PathBuf>, String> {
    let mut written = Vec::new();
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
        jsonl.push_str(&serde_json::to_string(row).map_err(|e| e.to_string())?);
        jsonl.push('\n');
    }
    for (name, body) in [("metrics.csv", csv), ("metrics.jsonl", jsonl)] {
        let p = dir.join(name);
        write_atomic(&p, body.as_bytes())?;
        written.push(p);
    }

    let points: Vec<(f64, f64, f64)> = rows
        .iter()
        .filter_map(|r| {
            r.metrics
                .accuracy
                .map(|a| (f64::from(r.metrics.round), r.cum_bytes as f64 / 1e6, a))
        })
        .collect();
    if !points.is_empty() {
        let by_round: Vec<(f64, f64)> = points.iter().map(|p| (p.0, p.2)).collect();
        let by_bytes: Vec<(f64, f64)> = points.iter().map(|p| (p.1, p.2)).collect();
        for (name, xlabel, series) in [
            ("accuracy_vs_round.png", "round", by_round),
            (
                "accuracy_vs_bytes.png",
                "MB communicated (up + down)",
                by_bytes,
            ),
        ] {
            let p = dir.join(name);
            plot_lines(&p, &config.name, xlabel, &[("test accuracy", BLUE, series)])?;
            written.push(p);
        }
    }
    Ok(written)
}
