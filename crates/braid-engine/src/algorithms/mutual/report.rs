//! Mutual learning's `metrics.csv`, `metrics.jsonl`, plots and console table.

use serde::{Deserialize, Serialize};

use crate::config::ExperimentConfig;
use crate::node::Metrics;
use crate::report::{cell, json_line, opt, Line, Outputs, RGBColor, Rows, Table, BLACK, BLUE, RED};

/// Metrics of a mutual-learning run at one evaluation point.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MutualMetrics {
    /// Round, from 1.
    pub round: u32,
    /// Alpha in this round.
    pub alpha: f64,
    /// Global accuracy: mean test accuracy of all clients' current models.
    pub accuracy: f64,
    /// Mean test loss of the current models.
    pub loss: f64,
    /// Worst current model.
    pub min_accuracy: f64,
    /// Best current model.
    pub max_accuracy: f64,
    /// Mean test accuracy of the peak models (DFML, once every client has one).
    pub peak_accuracy: Option<f64>,
    /// Mean current accuracy per architecture (in the order of the list of models; None for
    /// a model no client has).
    pub per_arch: Vec<Option<f64>>,
    /// Mean peak accuracy per architecture.
    pub per_arch_peak: Vec<Option<f64>>,
    /// FML: test accuracy of the global model.
    pub global_model_accuracy: Option<f64>,
    /// Mean training loss (supervised part) of the trainings since the previous point.
    pub train_loss: Option<f64>,
    /// Bytes of models sent by everyone since the previous evaluation point, per round.
    pub bytes_per_round: f64,
    /// Bytes of models sent by everyone so far.
    pub cum_bytes: u64,
}

impl Metrics for MutualMetrics {
    fn progress(&self) -> (u64, Option<f64>) {
        (u64::from(self.round), Some(self.accuracy))
    }

    fn line(&self) -> String {
        format!(
            "round {:>5} | global accuracy {:.4}",
            self.round, self.accuracy
        )
    }
}

impl Rows for MutualMetrics {
    fn write(
        out: &mut Outputs<'_>, config: &ExperimentConfig, rows: &[(Self, f64)],
    ) -> Result<(), String> {
        write_mutual(out, config, rows)
    }

    fn table(config: &ExperimentConfig, rows: &[(Self, f64)]) -> String {
        let mut table = Table::new(rows, "  ")
            .column("round", 5, |(m, _)| m.round.to_string())
            .column("alpha", 5, |(m, _)| format!("{:.2}", m.alpha))
            .column("global", 8, |(m, _)| format!("{:.4}", m.accuracy))
            .column("peak", 8, |(m, _)| cell(m.peak_accuracy))
            .column("min", 8, |(m, _)| format!("{:.4}", m.min_accuracy))
            .column("max", 8, |(m, _)| format!("{:.4}", m.max_accuracy));
        for (i, name) in super::model_names(config).into_iter().enumerate() {
            table = table.column(name, 9, move |(m, _)| {
                cell(m.per_arch.get(i).copied().flatten())
            });
        }
        table
            .column("MB/round", 9, |(m, _)| {
                format!("{:.2}", m.bytes_per_round / 1e6)
            })
            .column("wall_s", 8, |(_, wall)| format!("{wall:.1}"))
            .render()
    }
}

/// `metrics.csv` columns of a mutual-learning run before the per-model ones
/// (`acc_<model>` for each model of the list, then `peak_<model>`).
pub const MUTUAL_CSV_HEADER: &str = "round,alpha,accuracy,loss,min_accuracy,max_accuracy,peak_accuracy,global_model_accuracy,train_loss,bytes_per_round,cum_bytes,wall_s";

/// A plot line with an owned name.
type OwnedLine = (String, RGBColor, Vec<(f64, f64)>);

fn write_mutual(
    out: &mut Outputs<'_>, config: &ExperimentConfig, points: &[(MutualMetrics, f64)],
) -> Result<(), String> {
    let names = super::model_names(config);
    let mut csv = String::from(MUTUAL_CSV_HEADER);
    for prefix in ["acc", "peak"] {
        for n in &names {
            csv.push_str(&format!(",{prefix}_{n}"));
        }
    }
    csv.push('\n');
    let mut jsonl = String::new();
    for (m, wall) in points {
        csv.push_str(&format!(
            "{},{:.4},{:.6},{:.6},{:.6},{:.6},{},{},{},{:.1},{},{:.3}",
            m.round,
            m.alpha,
            m.accuracy,
            m.loss,
            m.min_accuracy,
            m.max_accuracy,
            opt(m.peak_accuracy),
            opt(m.global_model_accuracy),
            opt(m.train_loss),
            m.bytes_per_round,
            m.cum_bytes,
            wall
        ));
        for v in m.per_arch.iter().chain(&m.per_arch_peak) {
            csv.push_str(&format!(",{}", opt(*v)));
        }
        csv.push('\n');
        json_line(&mut jsonl, &(m, wall))?;
    }
    out.metrics(&csv, &jsonl)?;
    let x = |m: &MutualMetrics| f64::from(m.round);
    let mut lines: Vec<OwnedLine> = vec![(
        "global accuracy (mean over clients)".into(),
        BLUE,
        points.iter().map(|(m, _)| (x(m), m.accuracy)).collect(),
    )];
    type Value = fn(&MutualMetrics) -> Option<f64>;
    let optional: [(&str, RGBColor, Value); 2] = [
        ("peak models", RED, |m| m.peak_accuracy),
        ("FML global model", BLACK, |m| m.global_model_accuracy),
    ];
    for (name, colour, value) in optional {
        let series: Vec<(f64, f64)> = points
            .iter()
            .filter_map(|(m, _)| value(m).map(|a| (x(m), a)))
            .collect();
        if !series.is_empty() {
            lines.push((name.into(), colour, series));
        }
    }
    let palette = [
        RGBColor(90, 170, 90),
        RGBColor(220, 150, 40),
        RGBColor(150, 90, 190),
        RGBColor(90, 180, 200),
    ];
    if names.len() > 1 {
        for (a, n) in names.iter().enumerate() {
            let series: Vec<(f64, f64)> = points
                .iter()
                .filter_map(|(m, _)| m.per_arch.get(a).copied().flatten().map(|v| (x(m), v)))
                .collect();
            if !series.is_empty() {
                lines.push((n.clone(), palette[a % palette.len()], series));
            }
        }
    }
    let refs: Vec<Line<'_>> = lines
        .iter()
        .map(|(n, c, v)| (n.as_str(), *c, v.clone()))
        .collect();
    out.plot("accuracy_vs_round.png", "round", &refs)
}
