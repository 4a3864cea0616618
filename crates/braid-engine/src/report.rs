//! What a run leaves in its output directory: `config.toml`, `traffic.csv`, `accounting.csv`,
//! `accounting-rounds.csv` and `final.safetensors` for every algorithm, and the algorithm's
//! own `metrics.csv`, `metrics.jsonl` and plots ([`Rows`], implemented by each algorithm's
//! metrics row in its folder).
//!
//! The files are one unit: each is written atomically, and `manifest.json` (every file's name,
//! size and SHA-256, and the run id) is removed before the first and written after the last,
//! so a directory without a manifest, or whose files do not match it, holds no complete
//! result ([`check_manifest`]). Files of an earlier run that this one does not write are
//! removed. [`DirLock`] keeps a second process out of an output directory while a run uses it.

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
    /// seconds) to `out`.
    fn write(
        out: &mut Outputs<'_>, config: &ExperimentConfig, rows: &[(Self, f64)],
    ) -> Result<(), String>;
    /// The table printed after a run.
    fn table(config: &ExperimentConfig, rows: &[(Self, f64)]) -> String;
}

/// The files of one run's results, written one by one into its directory, with their paths
/// kept for the manifest.
#[derive(Debug)]
pub struct Outputs<'a> {
    dir: &'a Path,
    title: &'a str,
    written: Vec<PathBuf>,
}

impl<'a> Outputs<'a> {
    /// Files in `dir`; plots carry `title` (the run's name).
    pub fn new(dir: &'a Path, title: &'a str) -> Self {
        Self {
            dir,
            title,
            written: Vec::new(),
        }
    }

    /// Writes the file `name` atomically.
    pub fn file(&mut self, name: &str, body: &[u8]) -> Result<(), String> {
        let p = self.dir.join(name);
        write_atomic(&p, body)?;
        self.written.push(p);
        Ok(())
    }

    /// Writes `metrics.csv` and `metrics.jsonl`.
    pub fn metrics(&mut self, csv: &str, jsonl: &str) -> Result<(), String> {
        self.file("metrics.csv", csv.as_bytes())?;
        self.file("metrics.jsonl", jsonl.as_bytes())
    }

    /// Draws `lines` against `xlabel` into the PNG `name` ([`plot_lines`]).
    pub fn plot(&mut self, name: &str, xlabel: &str, lines: &[Line<'_>]) -> Result<(), String> {
        let p = self.dir.join(name);
        plot_lines(&p, self.title, xlabel, lines)?;
        self.written.push(p);
        Ok(())
    }

    /// Records a file written another way.
    pub fn wrote(&mut self, path: PathBuf) {
        self.written.push(path);
    }
}

/// Appends `value` to `jsonl` as one JSON line.
pub fn json_line(jsonl: &mut String, value: &impl serde::Serialize) -> Result<(), String> {
    jsonl.push_str(&serde_json::to_string(value).map_err(|e| e.to_string())?);
    jsonl.push('\n');
    Ok(())
}

/// A plot of test accuracy: its file name, x-axis label and points.
pub type AccuracyPlot<'a> = (&'a str, &'a str, Vec<(f64, f64)>);

/// Plots test accuracy against each x axis given, where there are points.
pub fn accuracy_plots<const N: usize>(
    out: &mut Outputs<'_>, plots: [AccuracyPlot<'_>; N],
) -> Result<(), String> {
    for (name, xlabel, series) in plots {
        if !series.is_empty() {
            out.plot(name, xlabel, &[("test accuracy", BLUE, series)])?;
        }
    }
    Ok(())
}

/// The list of a complete set of results, written last.
pub const MANIFEST: &str = "manifest.json";
/// The lock file of an output directory in use.
pub const LOCK: &str = ".braid-lock";

/// An output directory held by one process (the lock file [`LOCK`] names it), released when
/// dropped. A lock whose process is gone is taken over.
#[derive(Debug)]
pub struct DirLock {
    path: PathBuf,
}

/// This process's identity for a lock: its pid and its start time (so a reused pid is not
/// taken for the holder).
fn process_tag(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 22 (start time), counted after the parenthesised command name.
    let after = stat.rsplit_once(')')?.1;
    after
        .split_whitespace()
        .nth(19)
        .map(|t| format!("{pid} {t}"))
}

impl DirLock {
    /// Takes `dir` (created if missing) for this process, or says who holds it.
    pub fn acquire(dir: &Path) -> Result<Self, String> {
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        let path = dir.join(LOCK);
        let pid = std::process::id();
        let tag = process_tag(pid).unwrap_or_else(|| format!("{pid} ?"));
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        for _ in 0..3 {
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(mut f) => {
                    f.write_all(format!("{tag}\nsince {since} (unix time)\n").as_bytes())
                        .and_then(|_| f.sync_all())
                        .map_err(|e| io(&path, e))?;
                    return Ok(Self { path });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let held = std::fs::read_to_string(&path).unwrap_or_default();
                    let holder = held.lines().next().unwrap_or_default().to_string();
                    let holder_pid = holder
                        .split_whitespace()
                        .next()
                        .and_then(|p| p.parse::<u32>().ok());
                    // Alive: the same pid with the same start time (where /proc tells).
                    let alive = match holder_pid.map(|p| (p, process_tag(p))) {
                        Some((_, Some(now))) => now == holder || holder.ends_with(" ?"),
                        Some((_, None)) => false,
                        None => false,
                    };
                    if alive {
                        return Err(format!(
                            "{} is in use by another braid process (pid {}, {}): wait for it to end, or write to another directory",
                            dir.display(),
                            holder_pid.unwrap_or_default(),
                            held.lines().nth(1).unwrap_or("since an unknown time")
                        ));
                    }
                    // Its holder is gone (killed): take it over.
                    let _ = std::fs::remove_file(&path);
                }
                Err(e) => return Err(io(&path, e)),
            }
        }
        Err(format!("cannot take the lock {}", path.display()))
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// One file of a [`MANIFEST`].
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ManifestEntry {
    /// File name, in the output directory.
    pub name: String,
    /// Its size in bytes.
    pub bytes: u64,
    /// Its SHA-256, hex.
    pub sha256: String,
}

/// A complete set of results: the run and its files.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Manifest {
    /// The run's configuration hash (as in the run log).
    pub run: String,
    /// The files, in the order written.
    pub files: Vec<ManifestEntry>,
}

fn sha256_file(path: &Path) -> Result<(u64, String), String> {
    use sha2::Digest;
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let hash = sha2::Sha256::digest(&bytes);
    let hex = hash.iter().map(|b| format!("{b:02x}")).collect();
    Ok((bytes.len() as u64, hex))
}

/// Starts writing a set of results into `dir`: removes its manifest (the set is incomplete
/// from now until [`seal_results`]); returns the files the old manifest listed.
pub fn begin_results(dir: &Path) -> Result<Vec<String>, String> {
    let path = dir.join(MANIFEST);
    let old = std::fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice::<Manifest>(&b).ok())
        .map(|m| m.files.into_iter().map(|f| f.name).collect())
        .unwrap_or_default();
    match std::fs::remove_file(&path) {
        Ok(()) => {
            if let Ok(d) = std::fs::File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(&path, e)),
    }
    Ok(old)
}

/// Ends a set of results: removes the files of `old` (an earlier run's) that `written` does
/// not hold, then writes the manifest of `written` for run `run`.
pub fn seal_results(
    dir: &Path, written: &[PathBuf], old: &[String], run: &str,
) -> Result<PathBuf, String> {
    let mut files = Vec::with_capacity(written.len());
    for p in written {
        let name = p
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| format!("{} has no usable file name", p.display()))?
            .to_string();
        let (bytes, sha256) = sha256_file(p)?;
        files.push(ManifestEntry {
            name,
            bytes,
            sha256,
        });
    }
    for stale in old.iter().filter(|o| !files.iter().any(|f| &f.name == *o)) {
        // Only plain names: a manifest is not trusted to point outside its directory.
        if !stale.contains(['/', '\\']) && stale != ".." && stale != MANIFEST {
            let _ = std::fs::remove_file(dir.join(stale));
        }
    }
    let manifest = Manifest {
        run: run.to_string(),
        files,
    };
    let text = serde_json::to_vec_pretty(&manifest).map_err(|e| e.to_string())?;
    let path = dir.join(MANIFEST);
    write_atomic(&path, &text)?;
    Ok(path)
}

/// Checks that `dir` holds a complete set of results: its manifest is there and every file it
/// lists has the listed size and hash. Returns the manifest.
pub fn check_manifest(dir: &Path) -> Result<Manifest, String> {
    let path = dir.join(MANIFEST);
    let bytes = std::fs::read(&path).map_err(|e| {
        format!(
            "{}: no {MANIFEST} ({e}): the results are incomplete (a run still writing, or killed while writing)",
            dir.display()
        )
    })?;
    let m: Manifest = serde_json::from_slice(&bytes)
        .map_err(|e| format!("{}: unreadable {MANIFEST}: {e}", dir.display()))?;
    for f in &m.files {
        if f.name.contains(['/', '\\']) || f.name == ".." {
            return Err(format!("{}: {MANIFEST} names {:?}", dir.display(), f.name));
        }
        let (bytes, sha) = sha256_file(&dir.join(&f.name))
            .map_err(|e| format!("{e}: the results are incomplete"))?;
        if (bytes, sha.as_str()) != (f.bytes, f.sha256.as_str()) {
            return Err(format!(
                "{}: {} is not the file the run wrote (its size or SHA-256 differs from {MANIFEST}): the results are mixed or altered",
                dir.display(),
                f.name
            ));
        }
    }
    Ok(m)
}

fn io(path: &Path, e: impl std::fmt::Display) -> String {
    format!("cannot write {}: {e}", path.display())
}

/// Writes `contents` to `path` atomically and durably (temp file, sync, rename, sync of the
/// directory), so a crash leaves either the old file or the new one, never a torn one; a
/// failed write (a full disk) leaves no temp file behind.
pub fn write_atomic(path: &Path, contents: &[u8]) -> Result<(), String> {
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let written = std::fs::File::create(&tmp).and_then(|mut f| {
        f.write_all(contents)?;
        f.sync_all()
    });
    if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, path)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(io(path, e));
    }
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

/// An optional value as a table cell: four decimals, or `-` when absent.
pub fn cell(v: Option<f64>) -> String {
    v.map_or("-".to_string(), |x| format!("{x:.4}"))
}

/// A console table of rows `T`: a header line, then a line a row, each cell right-aligned
/// to its column's width and the columns `gap` apart. Each column is declared once, with its
/// header, width and how it shows a row.
pub struct Table<'a, T> {
    rows: &'a [T],
    gap: &'static str,
    columns: Vec<(String, usize, Cell<'a, T>)>,
}

/// How a [`Table`] column shows a row.
type Cell<'a, T> = Box<dyn Fn(&T) -> String + 'a>;

impl<'a, T> Table<'a, T> {
    /// A table of `rows` with no columns yet.
    pub fn new(rows: &'a [T], gap: &'static str) -> Self {
        Self {
            rows,
            gap,
            columns: Vec::new(),
        }
    }

    /// Adds a column headed `head`, `width` characters wide, whose cells are `show(row)`.
    pub fn column(
        mut self, head: impl Into<String>, width: usize, show: impl Fn(&T) -> String + 'a,
    ) -> Self {
        self.columns.push((head.into(), width, Box::new(show)));
        self
    }

    /// The table as text.
    pub fn render(&self) -> String {
        let line = |cells: Vec<String>| {
            let padded: Vec<String> = cells
                .iter()
                .zip(&self.columns)
                .map(|(c, (_, width, _))| format!("{c:>width$}"))
                .collect();
            padded.join(self.gap) + "\n"
        };
        let mut out = line(self.columns.iter().map(|c| c.0.clone()).collect());
        for row in self.rows {
            out.push_str(&line(self.columns.iter().map(|c| (c.2)(row)).collect()));
        }
        out
    }
}

/// Writes every output file of a run whose rows are `R` and whose node `i` of `n` has the
/// role `role(i, n)`; returns the paths written.
pub fn write_all<R: Rows>(
    dir: &Path, prepared: &Prepared, role: &dyn Fn(usize, usize) -> &'static str,
    outcome: &SimOutcome<R>,
) -> Result<Vec<PathBuf>, String> {
    let config = &prepared.config;
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let old = begin_results(dir)?;
    let mut out = Outputs::new(dir, &config.name);
    out.file("config.toml", config.to_toml().as_bytes())?;
    R::write(&mut out, config, &outcome.rows)?;

    let n = outcome.traffic.len();
    let mut traffic =
        String::from("node,role,bytes_sent,bytes_received,messages_sent,messages_received\n");
    for (i, t) in outcome.traffic.iter().enumerate() {
        let (sent, received) = (t.bytes_sent, t.bytes_received);
        let (messages_out, messages_in) = (t.messages_sent, t.messages_received);
        let role = role(i, n);
        traffic.push_str(&format!(
            "{i},{role},{sent},{received},{messages_out},{messages_in}\n"
        ));
    }
    out.file("traffic.csv", traffic.as_bytes())?;

    if !outcome.compute.is_empty() {
        out.file("accounting.csv", accounting_csv(&role, outcome).as_bytes())?;
        let n = outcome.compute.len();
        let mut rounds =
            String::from("node,role,round,train_samples,eval_samples,flops,compute_s\n");
        for ((node, round), c) in &outcome.compute_by_round {
            let round = round.map_or(String::new(), |r| r.to_string());
            let role = role(*node as usize, n);
            let (train, eval, flops, secs) = (c.train_samples, c.eval_samples, c.flops, c.seconds);
            rounds.push_str(&format!(
                "{node},{role},{round},{train},{eval},{flops},{secs:.3}\n"
            ));
        }
        out.file("accounting-rounds.csv", rounds.as_bytes())?;
    }

    if let Some(params) = &outcome.final_params {
        let p = dir.join("final.safetensors");
        prepared.model.save(params, &p).map_err(|e| e.to_string())?;
        out.wrote(p);
    }
    let mut written = out.written;
    written.push(seal_results(dir, &written, &old, &config.run_id())?);
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

/// Plot size in pixels.
const PLOT: (u32, u32) = (800, 500);

/// Draws into memory, encodes the PNG and writes it atomically: a failed write (a full disk)
/// leaves neither a torn PNG nor a temp file, and its error names the file.
fn plot_xy(
    path: &Path, caption: &str, labels: (&str, &str), ys: (f64, f64), lines: &[Line<'_>],
) -> Result<(), String> {
    let mut rgb = vec![0u8; PLOT.0 as usize * PLOT.1 as usize * 3];
    draw(&mut rgb, path, caption, labels, ys, lines)?;
    let image = image::RgbImage::from_raw(PLOT.0, PLOT.1, rgb)
        .ok_or_else(|| format!("cannot draw {}: a buffer of the wrong size", path.display()))?;
    let mut png = std::io::Cursor::new(Vec::new());
    image
        .write_to(&mut png, image::ImageFormat::Png)
        .map_err(|e| format!("cannot encode {}: {e}", path.display()))?;
    write_atomic(path, png.get_ref())
}

fn draw(
    rgb: &mut [u8], path: &Path, caption: &str, (xlabel, ylabel): (&str, &str),
    (ylo, yhi): (f64, f64), lines: &[Line<'_>],
) -> Result<(), String> {
    ensure_font();
    let err = |e: &dyn std::fmt::Display| format!("cannot draw {}: {e}", path.display());
    let root = BitMapBackend::with_buffer(rgb, PLOT).into_drawing_area();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_right_aligns_each_cell_to_its_columns_width() {
        let rows = [(1u32, Some(0.5f64)), (12, None)];
        let t = Table::new(&rows, "  ")
            .column("round", 5, |(r, _)| r.to_string())
            .column("acc", 8, |(_, a)| cell(*a))
            .render();
        let want = format!(
            "{:>5}  {:>8}\n{:>5}  {:>8.4}\n{:>5}  {:>8}\n",
            "round", "acc", 1, 0.5, 12, "-"
        );
        assert_eq!(t, want);
        // A cell wider than its column is not cut.
        let t = Table::new(&rows[..1], " ")
            .column("r", 1, |_| "wide".into())
            .render();
        assert_eq!(t, "r\nwide\n");
    }

    fn write(dir: &Path, name: &str, body: &str) -> PathBuf {
        let p = dir.join(name);
        write_atomic(&p, body.as_bytes()).unwrap();
        p
    }

    #[test]
    fn results_are_one_unit_complete_or_visibly_not() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        // A first run writes three files.
        let old = begin_results(d).unwrap();
        assert!(old.is_empty());
        let first: Vec<PathBuf> = ["a.csv", "b.csv", "plot.png"]
            .iter()
            .map(|n| write(d, n, n))
            .collect();
        seal_results(d, &first, &old, "run-1").unwrap();
        let m = check_manifest(d).unwrap();
        assert_eq!((m.run.as_str(), m.files.len()), ("run-1", 3));
        // A second run starts: until it seals, the directory is visibly incomplete.
        let old = begin_results(d).unwrap();
        assert_eq!(old, ["a.csv", "b.csv", "plot.png"]);
        let a = write(d, "a.csv", "second");
        let e = check_manifest(d).unwrap_err();
        assert!(e.contains("incomplete"), "{e}");
        // It writes fewer files: the first run's leftovers go, nothing of it remains.
        seal_results(d, std::slice::from_ref(&a), &old, "run-2").unwrap();
        assert!(!d.join("b.csv").exists() && !d.join("plot.png").exists());
        assert_eq!(check_manifest(d).unwrap().run, "run-2");
        // A file replaced afterwards (another run's) is found.
        write(d, "a.csv", "third");
        let e = check_manifest(d).unwrap_err();
        assert!(e.contains("a.csv is not the file the run wrote"), "{e}");
        // A manifest is not trusted to name files outside its directory.
        std::fs::write(
            d.join(MANIFEST),
            r#"{"run":"x","files":[{"name":"../etc","bytes":0,"sha256":""}]}"#,
        )
        .unwrap();
        assert!(check_manifest(d).unwrap_err().contains("names \"../etc\""));
    }

    #[test]
    fn an_output_directory_has_one_holder_and_a_dead_holders_lock_is_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let held = DirLock::acquire(d).unwrap();
        assert!(d.join(LOCK).exists());
        // This process holds it: another acquisition (as by another process) is refused.
        let e = DirLock::acquire(d).unwrap_err();
        assert!(
            e.contains("in use by another braid process")
                && e.contains(&format!("pid {}", std::process::id())),
            "{e}"
        );
        drop(held);
        assert!(!d.join(LOCK).exists());
        // A lock left by a process that is gone (killed) is taken over.
        std::fs::write(d.join(LOCK), "4000000000 1\nsince 0 (unix time)\n").unwrap();
        let again = DirLock::acquire(d).unwrap();
        drop(again);
    }
}
