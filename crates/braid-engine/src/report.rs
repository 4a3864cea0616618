//! What a run leaves in its output directory: `config.toml`, `metrics.csv`, `metrics.jsonl`,
//! `traffic.csv`, `final.safetensors`, `accuracy_vs_round.png` and `accuracy_vs_bytes.png`.

use std::io::Write;
use std::path::{Path, PathBuf};

use braid_nn::Arch;
use plotters::prelude::*;
use serde::Serialize;

use crate::config::ExperimentConfig;
use crate::node::RoundMetrics;
use crate::sim::SimOutcome;

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

/// Metrics rows of a finished run.
pub fn rows(outcome: &SimOutcome) -> Vec<MetricsRow> {
    let mut cum = 0;
    outcome
        .rounds
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

fn io(path: &Path, e: impl std::fmt::Display) -> String {
    format!("cannot write {}: {e}", path.display())
}

/// Writes `contents` to `path` atomically (temp file, sync, rename).
pub fn write_atomic(path: &Path, contents: &[u8]) -> Result<(), String> {
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let mut f = std::fs::File::create(&tmp).map_err(|e| io(&tmp, e))?;
    f.write_all(contents)
        .and_then(|_| f.sync_all())
        .map_err(|e| io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| io(path, e))
}

fn opt(v: Option<f64>) -> String {
    v.map(|x| format!("{x:.6}")).unwrap_or_default()
}

/// Writes every output file; returns the paths written.
pub fn write_all(
    dir: &Path,
    config: &ExperimentConfig,
    arch: &Arch,
    outcome: &SimOutcome,
) -> Result<Vec<PathBuf>, String> {
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let mut written = Vec::new();
    let rows = rows(outcome);

    let p = dir.join("config.toml");
    write_atomic(&p, config.to_toml().as_bytes())?;
    written.push(p);

    let mut csv = String::from(
        "round,accuracy,loss,train_loss,clients,samples,local_steps,bytes_up,bytes_down,cum_bytes,wall_s\n",
    );
    let mut jsonl = String::new();
    for row in &rows {
        let r = &row.metrics;
        csv.push_str(&format!(
            "{},{},{},{:.6},{},{},{},{},{},{},{:.3}\n",
            r.round,
            opt(r.accuracy),
            opt(r.loss),
            r.train_loss,
            r.clients,
            r.samples,
            r.local_steps,
            r.bytes_up,
            r.bytes_down,
            row.cum_bytes,
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

    let mut traffic =
        String::from("node,role,bytes_sent,bytes_received,messages_sent,messages_received\n");
    for (i, t) in outcome.traffic.iter().enumerate() {
        let role = if i == 0 { "server" } else { "client" };
        traffic.push_str(&format!(
            "{i},{role},{},{},{},{}\n",
            t.bytes_sent, t.bytes_received, t.messages_sent, t.messages_received
        ));
    }
    let p = dir.join("traffic.csv");
    write_atomic(&p, traffic.as_bytes())?;
    written.push(p);

    if let Some(params) = &outcome.final_params {
        let p = dir.join("final.safetensors");
        braid_nn::store::save(arch, params, &p).map_err(|e| e.to_string())?;
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
            plot(&p, &config.name, xlabel, &series)?;
            written.push(p);
        }
    }
    Ok(written)
}

static FONT: &[u8] = include_bytes!("../../../assets/fonts/DejaVuSans.ttf");

fn ensure_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // The bundled font is valid; a failure would only leave the plot without text.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

/// Draws test accuracy against `xlabel` into a PNG.
pub fn plot(path: &Path, title: &str, xlabel: &str, points: &[(f64, f64)]) -> Result<(), String> {
    ensure_font();
    let err = |e: &dyn std::fmt::Display| format!("cannot draw {}: {e}", path.display());
    let root = BitMapBackend::new(path, (800, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let xmax = points.iter().map(|p| p.0).fold(0.0f64, f64::max).max(1.0);
    let xmin = points
        .iter()
        .map(|p| p.0)
        .fold(f64::INFINITY, f64::min)
        .min(xmax);
    let ymin = points.iter().map(|p| p.1).fold(1.0f64, f64::min);
    let ylo = (ymin - 0.05).clamp(0.0, 1.0);
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("{title}: test accuracy"), ("sans-serif", 24))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(xmin..xmax, ylo..1.0)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc(xlabel)
        .y_desc("test accuracy")
        .label_style(("sans-serif", 15))
        .draw()
        .map_err(|e| err(&e))?;
    chart
        .draw_series(LineSeries::new(
            points.iter().copied(),
            BLUE.stroke_width(2),
        ))
        .map_err(|e| err(&e))?;
    chart
        .draw_series(
            points
                .iter()
                .map(|&(x, y)| Circle::new((x, y), 3, BLUE.filled())),
        )
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}
