//! What a run leaves in its output directory: `config.toml`, `metrics.csv`, `metrics.jsonl`,
//! `traffic.csv`, `final.safetensors`, and plots: `accuracy_vs_round.png` and
//! `accuracy_vs_bytes.png` for server-based runs; `accuracy_vs_epoch.png` and
//! `accuracy_vs_sim_time.png` for split-learning runs; `accuracy_vs_progress.png` (local mean,
//! min, max and merged model) and `accuracy_vs_bytes.png` for decentralized runs.

use std::io::Write;
use std::path::{Path, PathBuf};

use braid_nn::Arch;
use plotters::prelude::*;
use serde::Serialize;

use crate::algorithms::mutual::MutualMetrics;
use crate::algorithms::split::SplitMetrics;
use crate::config::{AlgorithmName, ExperimentConfig};
use crate::node::{GossipMetrics, RoundMetrics};
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

    if !outcome.gossip.is_empty() {
        written.extend(write_gossip(dir, config, &outcome.gossip)?);
    } else if !outcome.split.is_empty() {
        written.extend(write_split(dir, config, &outcome.split)?);
    } else if !outcome.mutual.is_empty() {
        written.extend(write_mutual(dir, config, &outcome.mutual)?);
    } else {
        written.extend(write_rounds(dir, config, &rows)?);
    }

    let mut traffic =
        String::from("node,role,bytes_sent,bytes_received,messages_sent,messages_received\n");
    let n = outcome.traffic.len();
    for (i, t) in outcome.traffic.iter().enumerate() {
        traffic.push_str(&format!(
            "{i},{},{},{},{},{}\n",
            role(config, i, n),
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
        write_atomic(&p, accounting_csv(config, outcome).as_bytes())?;
        written.push(p);
        let n = outcome.compute.len();
        let mut rounds =
            String::from("node,role,round,train_samples,eval_samples,flops,compute_s\n");
        for ((node, round), c) in &outcome.compute_by_round {
            rounds.push_str(&format!(
                "{node},{},{},{},{},{},{:.3}\n",
                role(config, *node as usize, n),
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
        braid_nn::store::save(arch, params, &p).map_err(|e| e.to_string())?;
        written.push(p);
    }
    Ok(written)
}

/// `accounting.csv` header: compute and traffic per participant, then the run's total.
pub const ACCOUNTING_CSV_HEADER: &str = "node,role,train_samples,eval_samples,flops,compute_s,bytes_sent,bytes_received,messages_sent,messages_received";

/// The role of node `i` of `n` nodes in a run of `config`.
pub fn role(config: &ExperimentConfig, i: usize, n: usize) -> &'static str {
    let dsgd = config.algorithm.name == AlgorithmName::Dsgd;
    if config.algorithm.name.is_mutual() {
        return match (config.algorithm.name, i) {
            (AlgorithmName::Fml, 0) => "server",
            (_, 0) => "monitor",
            _ => "client",
        };
    }
    match (dsgd, i) {
        (true, i) if i + 1 == n => "monitor",
        (true, _) => "peer",
        (false, 0) => "server",
        (false, _) => "client",
    }
}

fn accounting_csv(config: &ExperimentConfig, outcome: &SimOutcome) -> String {
    let mut out = format!("{ACCOUNTING_CSV_HEADER}\n");
    let n = outcome.compute.len();
    let mut total = crate::accounting::Compute::default();
    let mut t_total = crate::transport::NodeTraffic::default();
    for (i, c) in outcome.compute.iter().enumerate() {
        let t = outcome.traffic.get(i).copied().unwrap_or_default();
        out.push_str(&format!(
            "{i},{},{},{},{},{:.3},{},{},{},{}\n",
            role(config, i, n),
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
    dir: &Path,
    config: &ExperimentConfig,
    points: &[(GossipMetrics, f64)],
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

fn write_split(
    dir: &Path,
    config: &ExperimentConfig,
    epochs: &[(SplitMetrics, f64)],
) -> Result<Vec<PathBuf>, String> {
    let mut written = Vec::new();
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
        jsonl.push_str(&serde_json::to_string(&row).map_err(|e| e.to_string())?);
        jsonl.push('\n');
        if let Some(a) = m.accuracy {
            by_epoch.push((f64::from(m.epoch), a));
            by_time.push((cum_time, a));
        }
    }
    for (name, body) in [("metrics.csv", csv), ("metrics.jsonl", jsonl)] {
        let p = dir.join(name);
        write_atomic(&p, body.as_bytes())?;
        written.push(p);
    }
    if !by_epoch.is_empty() {
        for (name, xlabel, series) in [
            ("accuracy_vs_epoch.png", "epoch", by_epoch),
            (
                "accuracy_vs_sim_time.png",
                "simulated seconds (straggler and link model)",
                by_time,
            ),
        ] {
            let p = dir.join(name);
            plot_lines(&p, &config.name, xlabel, &[("test accuracy", BLUE, series)])?;
            written.push(p);
        }
    }
    Ok(written)
}

/// `metrics.csv` columns of a mutual-learning run before the per-model ones
/// (`acc_<model>` for each model of the list, then `peak_<model>`).
pub const MUTUAL_CSV_HEADER: &str = "round,alpha,accuracy,loss,min_accuracy,max_accuracy,peak_accuracy,global_model_accuracy,train_loss,bytes_per_round,cum_bytes,wall_s";

/// A plot line with an owned name.
type OwnedLine = (String, RGBColor, Vec<(f64, f64)>);

fn write_mutual(
    dir: &Path,
    config: &ExperimentConfig,
    points: &[(MutualMetrics, f64)],
) -> Result<Vec<PathBuf>, String> {
    let names = config
        .mutual
        .clone()
        .unwrap_or_default()
        .model_list(config.model.name);
    let mut csv = String::from(MUTUAL_CSV_HEADER);
    for prefix in ["acc", "peak"] {
        for n in &names {
            csv.push_str(&format!(",{prefix}_{}", n.as_str()));
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
                lines.push((n.as_str().to_string(), palette[a % palette.len()], series));
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

fn write_rounds(
    dir: &Path,
    config: &ExperimentConfig,
    rows: &[MetricsRow],
) -> Result<Vec<PathBuf>, String> {
    let mut written = Vec::new();
    let mut csv = String::from(
        "round,accuracy,loss,train_loss,clients,stragglers,samples,local_steps,bytes_up,bytes_down,cum_bytes,epsilon,sim_time_s,staleness_mean,staleness_max,wall_s\n",
    );
    let mut jsonl = String::new();
    for row in rows {
        let r = &row.metrics;
        csv.push_str(&format!(
            "{},{},{},{:.6},{},{},{},{},{},{},{},{},{},{},{},{:.3}\n",
            r.round,
            opt(r.accuracy),
            opt(r.loss),
            r.train_loss,
            r.clients,
            r.stragglers,
            r.samples,
            r.local_steps,
            r.bytes_up,
            r.bytes_down,
            row.cum_bytes,
            opt(r.epsilon),
            opt(r.sim_time_s),
            opt(r.staleness.map(|s| s.0)),
            r.staleness.map_or(String::new(), |s| s.1.to_string()),
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
            plot_lines(&p, &config.name, xlabel, &[("test accuracy", BLUE, series)])?;
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

/// Plot colours (plotters' RGB type), for callers of [`plot_lines`].
pub use plotters::style::RGBColor;

/// One curve of a plot: label, colour, `(x, accuracy)` points.
pub type Line<'a> = (&'a str, RGBColor, Vec<(f64, f64)>);

/// Draws test-accuracy curves against `xlabel` into a PNG, with a legend if more than one.
pub fn plot_lines(
    path: &Path,
    title: &str,
    xlabel: &str,
    lines: &[Line<'_>],
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
    path: &Path,
    title: &str,
    labels: (&str, &str),
    lines: &[Line<'_>],
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
    path: &Path,
    caption: &str,
    (xlabel, ylabel): (&str, &str),
    (ylo, yhi): (f64, f64),
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
