//! Mutual learning's `metrics.csv`, `metrics.jsonl`, plots and console table.

use std::path::{Path, PathBuf};

use super::MutualMetrics;
use crate::config::ExperimentConfig;
use crate::report::{opt, plot_lines, write_atomic, Line, RGBColor, Rows, BLACK, BLUE, RED};

impl Rows for MutualMetrics {
    fn write(
        dir: &Path, config: &ExperimentConfig, rows: &[(Self, f64)],
    ) -> Result<Vec<PathBuf>, String> {
        write_mutual(dir, config, rows)
    }

    fn table(config: &ExperimentConfig, rows: &[(Self, f64)]) -> String {
        let f = |v: Option<f64>| v.map_or("-".to_string(), |x| format!("{x:.4}"));
        let names = super::model_names(config);
        let mut head = format!(
            "{:>5}  {:>5}  {:>8}  {:>8}  {:>8}  {:>8}",
            "round", "alpha", "global", "peak", "min", "max"
        );
        for n in &names {
            head.push_str(&format!("  {n:>9}"));
        }
        head.push_str(&format!("  {:>9}  {:>8}\n", "MB/round", "wall_s"));
        let mut out = head;
        for (m, wall) in rows {
            let mut line = format!(
                "{:>5}  {:>5.2}  {:>8.4}  {:>8}  {:>8.4}  {:>8.4}",
                m.round,
                m.alpha,
                m.accuracy,
                f(m.peak_accuracy),
                m.min_accuracy,
                m.max_accuracy
            );
            for v in &m.per_arch {
                line.push_str(&format!("  {:>9}", f(*v)));
            }
            line.push_str(&format!(
                "  {:>9.2}  {:>8.1}\n",
                m.bytes_per_round / 1e6,
                wall
            ));
            out.push_str(&line);
        }
        out
    }
}

/// `metrics.csv` columns of a mutual-learning run before the per-model ones
/// (`acc_<model>` for each model of the list, then `peak_<model>`).
pub const MUTUAL_CSV_HEADER: &str = "round,alpha,accuracy,loss,min_accuracy,max_accuracy,peak_accuracy,global_model_accuracy,train_loss,bytes_per_round,cum_bytes,wall_s";

/// A plot line with an owned name.
type OwnedLine = (String, RGBColor, Vec<(f64, f64)>);

fn write_mutual(
    dir: &Path, config: &ExperimentConfig, points: &[(MutualMetrics, f64)],
) -> Result<Vec<PathBuf>, String> {
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
        jsonl.push_str(&serde_json::to_string(&(m, wall)).map_err(|e| e.to_string())?);
        jsonl.push('\n');
    }
    let mut written = Vec::new();
    for (name, body) in [("metrics.csv", csv), ("metrics.jsonl", jsonl)] {
        let p = dir.join(name);
        write_atomic(&p, body.as_bytes())?;
        written.push(p);
    }
    let x = |m: &MutualMetrics| f64::from(m.round);
    let mut lines: Vec<OwnedLine> = vec![(
        "global accuracy (mean over clients)".into(),
        BLUE,
        points.iter().map(|(m, _)| (x(m), m.accuracy)).collect(),
    )];
    let peak: Vec<(f64, f64)> = points
        .iter()
        .filter_map(|(m, _)| m.peak_accuracy.map(|a| (x(m), a)))
        .collect();
    if !peak.is_empty() {
        lines.push(("peak models".into(), RED, peak));
    }
    let global: Vec<(f64, f64)> = points
        .iter()
        .filter_map(|(m, _)| m.global_model_accuracy.map(|a| (x(m), a)))
        .collect();
    if !global.is_empty() {
        lines.push(("FML global model".into(), BLACK, global));
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
    let p = dir.join("accuracy_vs_round.png");
    plot_lines(&p, &config.name, "round", &refs)?;
    written.push(p);
    Ok(written)
}
