//! Split learning's `metrics.csv`, `metrics.jsonl`, plots and console table.

use serde::Serialize;

use super::SplitMetrics;
use crate::config::ExperimentConfig;
use crate::report::{accuracy_plots, json_line, opt, Outputs, Rows};

impl Rows for SplitMetrics {
    fn write(
        out: &mut Outputs<'_>, _config: &ExperimentConfig, rows: &[(Self, f64)],
    ) -> Result<(), String> {
        write_split(out, rows)
    }

    fn table(_config: &ExperimentConfig, rows: &[(Self, f64)]) -> String {
        let mut out = format!(
            "{:>5}  {:>8}  {:>8}  {:>10}  {:>6}  {:>9}  {:>8}  {:>9}  {:>9}  {:>8}\n",
            "epoch",
            "accuracy",
            "loss",
            "train_loss",
            "steps",
            "batch",
            "clients",
            "MB total",
            "sim_s",
            "wall_s"
        );
        let f = |v: Option<f64>| v.map_or("-".to_string(), |x| format!("{x:.4}"));
        for (m, wall) in rows {
            out.push_str(&format!(
                "{:>5}  {:>8}  {:>8}  {:>10.4}  {:>6}  {:>9}  {:>8.1}  {:>9.1}  {:>9.1}  {:>8.1}\n",
                m.epoch,
                f(m.accuracy),
                f(m.loss),
                m.train_loss,
                m.steps,
                format!("{}-{}", m.min_batch, m.max_batch),
                m.mean_clients,
                (m.bytes_up + m.bytes_down) as f64 / 1e6,
                m.sim_time_s,
                wall
            ));
        }
        out
    }
}

/// `metrics.csv` header of a split-learning run.
pub const SPLIT_CSV_HEADER: &str = "epoch,accuracy,loss,train_loss,steps,samples,min_batch,max_batch,mean_clients,bytes_up,bytes_down,cum_bytes,sim_time_s,cum_sim_time_s,wall_s";

/// One line of a split-learning run's `metrics.jsonl`.
#[derive(Serialize)]
struct SplitRow<'a> {
    #[serde(flatten)]
    metrics: &'a SplitMetrics,
    cum_bytes: u64,
    cum_sim_time_s: f64,
    wall_s: f64,
}

fn write_split(out: &mut Outputs<'_>, epochs: &[(SplitMetrics, f64)]) -> Result<(), String> {
    let mut csv = format!("{SPLIT_CSV_HEADER}\n");
    let mut jsonl = String::new();
    let (mut cum_bytes, mut cum_time) = (0u64, 0f64);
    let (mut by_epoch, mut by_time) = (Vec::new(), Vec::new());
    for (m, wall) in epochs {
        cum_bytes += m.bytes_up + m.bytes_down;
        cum_time += m.sim_time_s;
        csv.push_str(&format!(
            "{},{},{},{:.6},{},{},{},{},{:.3},{},{},{},{:.3},{:.3},{:.3}\n",
            m.epoch,
            opt(m.accuracy),
            opt(m.loss),
            m.train_loss,
            m.steps,
            m.samples,
            m.min_batch,
            m.max_batch,
            m.mean_clients,
            m.bytes_up,
            m.bytes_down,
            cum_bytes,
            m.sim_time_s,
            cum_time,
            wall
        ));
        let row = SplitRow {
            metrics: m,
            cum_bytes,
            cum_sim_time_s: cum_time,
            wall_s: *wall,
        };
        json_line(&mut jsonl, &row)?;
        if let Some(a) = m.accuracy {
            by_epoch.push((f64::from(m.epoch), a));
            by_time.push((cum_time, a));
        }
    }
    out.metrics(&csv, &jsonl)?;
    accuracy_plots(
        out,
        [
            ("accuracy_vs_epoch.png", "epoch", by_epoch),
            (
                "accuracy_vs_sim_time.png",
                "simulated seconds (straggler and link model)",
                by_time,
            ),
        ],
    )
}
