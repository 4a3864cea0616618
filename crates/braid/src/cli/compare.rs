//! `braid compare`: one plot of the test accuracy of several finished runs, read from their
//! `metrics.csv` (any algorithm), against a column they share.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use braid_engine::report::{plot_lines, plot_values, Line, RGBColor};
use clap::Args;

/// Arguments of `braid compare`.
#[derive(Debug, Args)]
pub struct CompareArgs {
    /// Output directories of finished runs (each holds a metrics.csv).
    #[arg(required = true)]
    runs: Vec<PathBuf>,
    /// The PNG to write.
    #[arg(long)]
    out: PathBuf,
    /// The x axis: a metrics.csv column, e.g. `epoch`, `round`, `cum_sim_time_s`,
    /// `cum_bytes`; `index` (default) is the first column, whatever its name.
    #[arg(long, default_value = "index")]
    x: String,
    /// The y axis column (default `accuracy`; dsgd runs: `merged_accuracy`).
    #[arg(long, default_value = "accuracy")]
    y: String,
    /// Plot title.
    #[arg(long, default_value = "comparison")]
    title: String,
    /// Plot log10 of the x column (for client counts and model sizes spanning decades).
    #[arg(long)]
    log_x: bool,
}

const COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(0, 0, 0),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(127, 127, 127),
];

/// Reads `(x, y)` points of one run; rows with an empty value are skipped.
fn points(run: &Path, x: &str, y: &str) -> Result<Vec<(f64, f64)>> {
    let path = run.join("metrics.csv");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split(',').collect();
    let col = |name: &str| {
        if name == "index" {
            return Ok(0);
        }
        header.iter().position(|h| *h == name).with_context(|| {
            format!(
                "{} has no column {name:?} (it has: {})",
                path.display(),
                header.join(", ")
            )
        })
    };
    let (xi, yi) = (col(x)?, col(y)?);
    let mut out = Vec::new();
    for (n, line) in lines.enumerate() {
        let cells: Vec<&str> = line.split(',').collect();
        let get = |i: usize| cells.get(i).copied().unwrap_or("");
        if get(xi).is_empty() || get(yi).is_empty() {
            continue;
        }
        let parse = |v: &str| {
            v.parse::<f64>().with_context(|| {
                format!("{} line {}: {v:?} is not a number", path.display(), n + 2)
            })
        };
        out.push((parse(get(xi))?, parse(get(yi))?));
    }
    Ok(out)
}

/// Draws the plot.
pub fn run(args: CompareArgs) -> Result<()> {
    if args.runs.len() > COLORS.len() {
        bail!("at most {} runs per plot", COLORS.len());
    }
    let mut series = Vec::new();
    for (i, run) in args.runs.iter().enumerate() {
        let label = run.file_name().map_or_else(
            || run.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        let mut pts = points(run, &args.x, &args.y)?;
        if args.log_x {
            if let Some(bad) = pts.iter().find(|p| p.0 <= 0.0) {
                bail!("--log-x: {} has x = {} (must be > 0)", run.display(), bad.0);
            }
            pts.iter_mut().for_each(|p| p.0 = p.0.log10());
        }
        series.push((label, COLORS[i], pts));
    }
    let lines: Vec<Line<'_>> = series
        .iter()
        .map(|(l, c, p)| (l.as_str(), *c, p.clone()))
        .collect();
    let xlabel = match (args.x.as_str(), args.log_x) {
        ("index", false) => "round / epoch / step".to_string(),
        (x, false) => x.to_string(),
        (x, true) => format!("log10 {x}"),
    };
    if args.y.contains("accuracy") {
        plot_lines(&args.out, &args.title, &xlabel, &lines)
    } else {
        plot_values(&args.out, &args.title, (&xlabel, &args.y), &lines)
    }
    .map_err(anyhow::Error::msg)?;
    println!("wrote {}", args.out.display());
    Ok(())
}
