//! Decentralized SGD's `metrics.csv`, `metrics.jsonl`, plots and console table.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::GossipMetrics;
use crate::config::ExperimentConfig;
use crate::report::{plot_lines, write_atomic, RGBColor, Rows, BLUE, RED};

impl Rows for GossipMetrics {
    fn write(
        dir: &Path, config: &ExperimentConfig, rows: &[(Self, f64)],
    ) -> Result<Vec<PathBuf>, String> {
        write_gossip(dir, config, rows)
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

fn write_gossip(
    dir: &Path, config: &ExperimentConfig, points: &[(GossipMetrics, f64)],
) -> Result<Vec<PathBuf>, String> {
    let mut written = Vec::new();
    let mut csv = format!("{GOSSIP_CSV_HEADER}\n");
    let mut jsonl = String::new();
    for (m, wall) in points {
        csv.push_str(&format!(
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
        ));
        let row = GossipRow {
            metrics: m,
            wall_s: *wall,
        };
        jsonl.push_str(&serde_json::to_string(&row).map_err(|e| e.to_string())?);
        jsonl.push('\n');
    }
    for (name, body) in [("metrics.csv", csv), ("metrics.jsonl", jsonl)] {
        let p = dir.join(name);
        write_atomic(&p, body.as_bytes())?;
        written.push(p);
    }
    let series = |f: fn(&GossipMetrics) -> f64, x: fn(&GossipMetrics) -> f64| -> Vec<(f64, f64)> {
        points.iter().map(|(m, _)| (x(m), f(m))).collect()
    };
    let progress = |m: &GossipMetrics| m.progress;
    let mb = |m: &GossipMetrics| m.bytes_per_peer / 1e6;
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
        let p = dir.join(name);
        plot_lines(
            &p,
            &config.name,
            xlabel,
            &[
                ("merged model", BLUE, series(|m| m.merged_accuracy, x)),
                ("local mean", RED, series(|m| m.local_mean, x)),
                (
                    "local min",
                    RGBColor(240, 160, 160),
                    series(|m| m.local_min, x),
                ),
                (
                    "local max",
                    RGBColor(240, 160, 160),
                    series(|m| m.local_max, x),
                ),
            ],
        )?;
        written.push(p);
    }
    Ok(written)
}
