//! Decentralized SGD's `metrics.csv`, `metrics.jsonl`, plots and console table.

use serde::Serialize;

use crate::config::ExperimentConfig;
use crate::node::Metrics;
use crate::report::{json_line, Outputs, RGBColor, Rows, Table, BLUE, RED};

/// Metrics of a decentralized run at one evaluation point, as the monitor sees them.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GossipMetrics {
    /// Local steps every peer has taken.
    pub step: u64,
    /// Training progress, `step / total steps`.
    pub progress: f64,
    /// Communication rounds so far (`step / every`, counting rounds with no edges).
    pub comm_rounds: u64,
    /// The budget r(p) at this point.
    pub budget: f64,
    /// Mean test accuracy of the local models (on the evaluation sample).
    pub local_mean: f64,
    /// Worst local model.
    pub local_min: f64,
    /// Best local model.
    pub local_max: f64,
    /// Test accuracy of the global merge (exact average of all local models), full test set.
    pub merged_accuracy: f64,
    /// Test loss of the global merge.
    pub merged_loss: f64,
    /// Mergeability gap: the merge's accuracy minus the mean local accuracy, both on the
    /// local models' evaluation sample (so the two are measured on the same samples).
    pub gap: f64,
    /// Consensus distance: mean squared L2 distance of the local models to their average.
    pub consensus: f64,
    /// Mean training loss of the peers since the previous evaluation point.
    pub train_loss: f64,
    /// Gossip bytes sent per peer so far, mean over peers.
    pub bytes_per_peer: f64,
    /// Gossip bytes sent so far by the busiest peer.
    pub bytes_max_peer: u64,
}

impl Metrics for GossipMetrics {
    fn progress(&self) -> (u64, Option<f64>) {
        (self.step, Some(self.merged_accuracy))
    }

    fn line(&self) -> String {
        format!(
            "step {:>6} | merged {:.4} | local mean {:.4}",
            self.step, self.merged_accuracy, self.local_mean
        )
    }
}

impl Rows for GossipMetrics {
    fn write(
        out: &mut Outputs<'_>, _config: &ExperimentConfig, points: &[(Self, f64)],
    ) -> Result<(), String> {
        let mut csv = format!("{GOSSIP_CSV_HEADER}\n");
        let mut jsonl = String::new();
        for (m, wall) in points {
            csv.push_str(&csv_line(m, *wall));
            json_line(
                &mut jsonl,
                &GossipRow {
                    metrics: m,
                    wall_s: *wall,
                },
            )?;
        }
        out.metrics(&csv, &jsonl)?;
        let series = |f: fn(&GossipMetrics) -> f64, x: fn(&GossipMetrics) -> f64| {
            points.iter().map(|(m, _)| (x(m), f(m))).collect::<Vec<_>>()
        };
        let progress = |m: &GossipMetrics| m.progress;
        let mb = |m: &GossipMetrics| m.bytes_per_peer / 1e6;
        let pink = RGBColor(240, 160, 160);
        for (name, xlabel, x) in [
            (
                "accuracy_vs_progress.png",
                "training progress (local steps / total)",
                progress as fn(&GossipMetrics) -> f64,
            ),
            (
                "accuracy_vs_bytes.png",
                "MB of gossip sent per peer",
                mb as fn(&GossipMetrics) -> f64,
            ),
        ] {
            let lines = [
                ("merged model", BLUE, series(|m| m.merged_accuracy, x)),
                ("local mean", RED, series(|m| m.local_mean, x)),
                ("local min", pink, series(|m| m.local_min, x)),
                ("local max", pink, series(|m| m.local_max, x)),
            ];
            out.plot(name, xlabel, &lines)?;
        }
        Ok(())
    }

    fn table(_config: &ExperimentConfig, rows: &[(Self, f64)]) -> String {
        Table::new(rows, " ")
            .column("step", 7, |(m, _)| m.step.to_string())
            .column("progress", 8, |(m, _)| format!("{:.3}", m.progress))
            .column("r", 6, |(m, _)| format!("{:.2}", m.budget))
            .column("local", 9, |(m, _)| format!("{:.4}", m.local_mean))
            .column("min", 9, |(m, _)| format!("{:.4}", m.local_min))
            .column("max", 9, |(m, _)| format!("{:.4}", m.local_max))
            .column("merged", 8, |(m, _)| format!("{:.4}", m.merged_accuracy))
            .column("gap", 8, |(m, _)| format!("{:+.4}", m.gap))
            .column("consensus", 10, |(m, _)| format!("{:.4}", m.consensus))
            .column("MB/peer", 9, |(m, _)| {
                format!("{:.2}", m.bytes_per_peer / 1e6)
            })
            .column("wall_s", 8, |(_, wall)| format!("{wall:.1}"))
            .render()
    }
}

/// `metrics.csv` header of a decentralized run.
pub const GOSSIP_CSV_HEADER: &str = "step,progress,comm_rounds,budget,local_mean,local_min,local_max,merged_accuracy,merged_loss,gap,consensus,train_loss,bytes_per_peer,bytes_max_peer,wall_s";

/// One line of a decentralized run's `metrics.jsonl`.
#[derive(Serialize)]
struct GossipRow<'a> {
    #[serde(flatten)]
    metrics: &'a GossipMetrics,
    wall_s: f64,
}

/// One `metrics.csv` line.
fn csv_line(m: &GossipMetrics, wall: f64) -> String {
    format!(
        "{},{:.6},{},{:.4},{:.6},{:.6},{:.6},{:.6},{:.6},{:.6},{:.6},{:.6},{:.1},{},{:.3}\n",
        m.step,
        m.progress,
        m.comm_rounds,
        m.budget,
        m.local_mean,
        m.local_min,
        m.local_max,
        m.merged_accuracy,
        m.merged_loss,
        m.gap,
        m.consensus,
        m.train_loss,
        m.bytes_per_peer,
        m.bytes_max_peer,
        wall
    )
}
