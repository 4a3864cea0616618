//! Mutual learning's `metrics.csv`, `metrics.jsonl`, plots and console table.

use super::MutualMetrics;
use crate::config::ExperimentConfig;
use crate::report::{json_line, opt, Line, Outputs, RGBColor, Rows, BLACK, BLUE, RED};

impl Rows for MutualMetrics {
    fn write(
        out: &mut Outputs<'_>, config: &ExperimentConfig, rows: &[(Self, f64)],
    ) -> Result<(), String> {
        write_mutual(out, config, rows)
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
