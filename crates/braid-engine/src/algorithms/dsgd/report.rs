//! Decentralized SGD's `metrics.csv`, `metrics.jsonl`, plots and console table.

use serde::Serialize;

use super::GossipMetrics;
use crate::config::ExperimentConfig;
use crate::report::{json_line, Outputs, RGBColor, Rows, BLUE, RED};

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
        let mut out = format!(
            "{:>7} {:>8} {:>6} {:>9} {:>9} {:>9} {:>8} {:>8} {:>10} {:>9} {:>8}\n",
            "step",
            "progress",
            "r",
            "local",
            "min",
            "max",
            "merged",
            "gap",
            "consensus",
            "MB/peer",
            "wall_s"
        );
        for (m, wall) in rows {
            out.push_str(&format!(
                "{:>7} {:>8.3} {:>6.2} {:>9.4} {:>9.4} {:>9.4} {:>8.4} {:>+8.4} {:>10.4} {:>9.2} {:>8.1}\n",
                m.step,
                m.progress,
                m.budget,
                m.local_mean,
                m.local_min,
                m.local_max,
                m.merged_accuracy,
                m.gap,
                m.consensus,
                m.bytes_per_peer / 1e6,
                wall
            ));
        }
        out
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
