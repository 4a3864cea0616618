//! Split learning's `metrics.csv`, `metrics.jsonl`, plots and console table.

use serde::Serialize;

use crate::config::ExperimentConfig;
use crate::node::Metrics;
use crate::report::{accuracy_plots, cell, json_line, opt, Outputs, Rows, Table};

/// What one epoch did, as the server reports it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SplitMetrics {
    /// Epoch, from 1.
    pub epoch: u32,
    /// Test accuracy of the whole model (None if not evaluated this epoch).
    pub accuracy: Option<f64>,
    /// Test loss of the whole model.
    pub loss: Option<f64>,
    /// Mean training loss over the epoch's samples.
    pub train_loss: f64,
    /// Steps (server updates) in the epoch.
    pub steps: u64,
    /// Training samples used.
    pub samples: u64,
    /// Smallest and largest global batch of the epoch.
    pub min_batch: u64,
    /// Largest global batch.
    pub max_batch: u64,
    /// Mean number of clients taking part in a step.
    pub mean_clients: f64,
    /// Encoded bytes clients sent to the server this epoch.
    pub bytes_up: u64,
    /// Encoded bytes the server sent to clients this epoch.
    pub bytes_down: u64,
    /// Simulated seconds of the epoch under the straggler and link model.
    pub sim_time_s: f64,
}

impl Metrics for SplitMetrics {
    fn progress(&self) -> (u64, Option<f64>) {
        (u64::from(self.epoch), self.accuracy)
    }

    fn line(&self) -> String {
        format!(
            "epoch {:>4} | accuracy {} | {} steps",
            self.epoch,
            self.accuracy.map_or("-".into(), |a| format!("{a:.4}")),
            self.steps
        )
    }
}

impl Rows for SplitMetrics {
    fn write(
        out: &mut Outputs<'_>, _config: &ExperimentConfig, rows: &[(Self, f64)],
    ) -> Result<(), String> {
        write_split(out, rows)
    }

    fn table(_config: &ExperimentConfig, rows: &[(Self, f64)]) -> String {
        Table::new(rows, "  ")
            .column("epoch", 5, |(m, _)| m.epoch.to_string())
            .column("accuracy", 8, |(m, _)| cell(m.accuracy))
            .column("loss", 8, |(m, _)| cell(m.loss))
            .column("train_loss", 10, |(m, _)| format!("{:.4}", m.train_loss))
            .column("steps", 6, |(m, _)| m.steps.to_string())
            .column("batch", 9, |(m, _)| {
                format!("{}-{}", m.min_batch, m.max_batch)
            })
            .column("clients", 8, |(m, _)| format!("{:.1}", m.mean_clients))
            .column("MB total", 9, |(m, _)| {
                format!("{:.1}", (m.bytes_up + m.bytes_down) as f64 / 1e6)
            })
            .column("sim_s", 9, |(m, _)| format!("{:.1}", m.sim_time_s))
            .column("wall_s", 8, |(_, wall)| format!("{wall:.1}"))
            .render()
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
