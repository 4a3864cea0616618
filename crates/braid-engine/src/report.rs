//! What a run leaves in its output directory: `config.toml`, `traffic.csv`, `accounting.csv`,
//! `accounting-rounds.csv` and `final.safetensors` for every algorithm, and the algorithm's
//! own `metrics.csv`, `metrics.jsonl` and plots ([`Rows`], implemented by each algorithm's
//! metrics row in its folder).

use std::io::Write;
use std::path::{Path, PathBuf};

use plotters::prelude::*;

use crate::config::ExperimentConfig;
use crate::prepared::Prepared;
use crate::sim::SimOutcome;

pub use plotters::style::{BLACK, BLUE, RED};

/// The rows of an algorithm's `metrics.csv`, with the files and the table that go with them.
pub trait Rows: Sized {
    /// Writes `metrics.csv`, `metrics.jsonl` and the plots of `rows` (each with its wall-clock
    /// seconds) into `dir`; returns the paths written.
    fn write(
        dir: &Path, config: &ExperimentConfig, rows: &[(Self, f64)],
    ) -> Result<Vec<PathBuf>, String>;
    /// The table printed after a run.
    fn table(config: &ExperimentConfig, rows: &[(Self, f64)]) -> String;
}

fn io(path: &Path, e: impl std::fmt::Display) -> String {
    format!("cannot write {}: {e}", path.display())
}

/// Writes `contents` to `path` atomically and durably (temp file, sync, rename, sync of the
/// directory), so a crash leaves either the old file or the new one, never a torn one.
pub fn write_atomic(path: &Path, contents: &[u8]) -> Result<(), String> {
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let mut f = std::fs::File::create(&tmp).map_err(|e| io(&tmp, e))?;
    f.write_all(contents)
        .and_then(|_| f.sync_all())
        .map_err(|e| io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| io(path, e))?;
    // Make the rename itself durable (best effort: not every platform can sync a directory).
    if let Some(d) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        if let Ok(dir) = std::fs::File::open(d) {
            let _ = dir.sync_all();
        }
    }
    Ok(())
}

/// An optional value as a CSV field (empty when absent).
pub fn opt(v: Option<f64>) -> String {
    v.map(|x| format!("{x:.6}")).unwrap_or_default()
}

/// Writes every output file of a run whose rows are `R` and whose node `i` of `n` has the
/// role `role(i, n)`; returns the paths written.
pub fn write_all<R: Rows>(
    dir: &Path, prepared: &Prepared, role: &dyn Fn(usize, usize) -> &'static str,
    outcome: &SimOutcome<R>,
) -> Result<Vec<PathBuf>, String> {
    let config = &prepared.config;
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let mut written = Vec::new();

    let p = dir.join("config.toml");
    write_atomic(&p, config.to_toml().as_bytes())?;
    written.push(p);

    written.extend(R::write(dir, config, &outcome.rows)?);

    let mut traffic =
        String::from("node,role,bytes_sent,bytes_received,messages_sent,messages_received\n");
    let n = outcome.traffic.len();
    for (i, t) in outcome.traffic.iter().enumerate() {
        traffic.push_str(&format!(
            "{i},{},{},{},{},{}\n",
            role(i, n),
            t.bytes_sent,
            t.bytes_received,
            t.messages_sent,
            t.messages_received
        ));
    }
    let p = dir.join("traffic.csv");
    write_atomic(&p, traffic.as_bytes())?;
    written.push(p);

    if !outcome.compute.is_empty() {
        let p = dir.join("accounting.csv");
        write_atomic(&p, accounting_csv(&role, outcome).as_bytes())?;
        written.push(p);
        let n = outcome.compute.len();
        let mut rounds =
            String::from("node,role,round,train_samples,eval_samples,flops,compute_s\n");
        for ((node, round), c) in &outcome.compute_by_round {
            rounds.push_str(&format!(
                "{node},{},{},{},{},{},{:.3}\n",
                role(*node as usize, n),
                round.map_or(String::new(), |r| r.to_string()),
                c.train_samples,
                c.eval_samples,
                c.flops,
                c.seconds
            ));
        }
        let p = dir.join("accounting-rounds.csv");
        write_atomic(&p, rounds.as_bytes())?;
        written.push(p);
    }

    if let Some(params) = &outcome.final_params {
        let p = dir.join("final.safetensors");
        prepared.model.save(params, &p).map_err(|e| e.to_string())?;
        written.push(p);
    }
    Ok(written)
}

/// `accounting.csv` header: compute and traffic per participant, then the run's total.
pub const ACCOUNTING_CSV_HEADER: &str = "node,role,train_samples,eval_samples,flops,compute_s,bytes_sent,bytes_received,messages_sent,messages_received";

fn accounting_csv<R>(
    role: &dyn Fn(usize, usize) -> &'static str, outcome: &SimOutcome<R>,
) -> String {
    let mut out = format!("{ACCOUNTING_CSV_HEADER}\n");
    let n = outcome.compute.len();
    let mut total = crate::accounting::Compute::default();
    let mut t_total = crate::transport::NodeTraffic::default();
    for (i, c) in outcome.compute.iter().enumerate() {
        let t = outcome.traffic.get(i).copied().unwrap_or_default();
        out.push_str(&format!(
            "{i},{},{},{},{},{:.3},{},{},{},{}\n",
            role(i, n),
            c.train_samples,
            c.eval_samples,
            c.flops,
            c.seconds,
            t.bytes_sent,
            t.bytes_received,
            t.messages_sent,
            t.messages_received
        ));
        total.add(c);
        t_total.bytes_sent += t.bytes_sent;
        t_total.bytes_received += t.bytes_received;
        t_total.messages_sent += t.messages_sent;
        t_total.messages_received += t.messages_received;
    }
    out.push_str(&format!(
        "all,all,{},{},{},{:.3},{},{},{},{}\n",
        total.train_samples,
        total.eval_samples,
        total.flops,
        total.seconds,
        t_total.bytes_sent,
        t_total.bytes_received,
        t_total.messages_sent,
        t_total.messages_received
    ));
    out
}

static FONT: &[u8] = include_bytes!("../../../assets/fonts/DejaVuSans.ttf");

fn ensure_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // The bundled font is valid; a failure would only leave the plot without text.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

/// Plot colours (plotters' RGB type), for callers of [`plot_lines`].
pub use plotters::style::RGBColor;

/// One curve of a plot: label, colour, `(x, accuracy)` points.
pub type Line<'a> = (&'a str, RGBColor, Vec<(f64, f64)>);

/// Draws test-accuracy curves against `xlabel` into a PNG, with a legend if more than one.
pub fn plot_lines(
    path: &Path, title: &str, xlabel: &str, lines: &[Line<'_>],
) -> Result<(), String> {
    let ymin = lines
        .iter()
        .flat_map(|l| l.2.iter().map(|p| p.1))
        .fold(1.0f64, f64::min);
    let ylo = (ymin - 0.05).clamp(0.0, 1.0);
    plot_xy(
        path,
        &format!("{title}: test accuracy"),
        (xlabel, "test accuracy"),
        (ylo, 1.0),
        lines,
    )
}

/// Draws curves of any quantity (y from 0 to 10% above the largest value) into a PNG.
pub fn plot_values(
    path: &Path, title: &str, labels: (&str, &str), lines: &[Line<'_>],
) -> Result<(), String> {
    let ymax = lines
        .iter()
        .flat_map(|l| l.2.iter().map(|p| p.1))
        .fold(0.0f64, f64::max);
    let ymax = if ymax.is_finite() && ymax > 0.0 {
        ymax * 1.1
    } else {
        1.0
    };
    plot_xy(path, title, labels, (0.0, ymax), lines)
}

fn plot_xy(
    path: &Path, caption: &str, (xlabel, ylabel): (&str, &str), (ylo, yhi): (f64, f64),
    lines: &[Line<'_>],
) -> Result<(), String> {
    ensure_font();
    let err = |e: &dyn std::fmt::Display| format!("cannot draw {}: {e}", path.display());
    let root = BitMapBackend::new(path, (800, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let all = || lines.iter().flat_map(|l| l.2.iter().copied());
    let xmax = all().map(|p| p.0).fold(f64::NEG_INFINITY, f64::max);
    let xmin = all().map(|p| p.0).fold(f64::INFINITY, f64::min);
    let (xmin, xmax) = if xmax.is_finite() && xmin < xmax {
        (xmin, xmax)
    } else {
        (0.0, xmax.max(0.0) + 1.0)
    };
    let mut chart = ChartBuilder::on(&root)
        .caption(caption, ("sans-serif", 24))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(xmin..xmax, ylo..yhi)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc(xlabel)
        .y_desc(ylabel)
        .label_style(("sans-serif", 15))
        .draw()
        .map_err(|e| err(&e))?;
    for (name, color, points) in lines {
        let color = *color;
        chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                color.stroke_width(2),
            ))
            .map_err(|e| err(&e))?
            .label(*name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart
            .draw_series(
                points
                    .iter()
                    .map(|&(x, y)| Circle::new((x, y), 3, color.filled())),
            )
            .map_err(|e| err(&e))?;
    }
    if lines.len() > 1 {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font(("sans-serif", 15))
            .position(SeriesLabelPosition::LowerRight)
            .draw()
            .map_err(|e| err(&e))?;
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}
