//! Braid's data sets.
//!
//! - [`idx`]: a strict reader for IDX files (the MNIST family's format), gzipped or not;
//! - [`dataset`]: an in-memory labelled data set that hands out batches as `f32`;
//! - [`cifar`]: CIFAR-10 and CIFAR-100 binary batches;
//! - [`npy`]: NumPy's `.npy` arrays and `.npz` archives; [`arrays`]: data sets made of them;
//! - [`csv_table`]: numeric CSV tables with a label column and an optional group column;
//! - [`text`]: a text corpus as byte tokens in next-token windows;
//! - [`image_folder`]: PNG and JPEG images in one folder per class;
//! - [`registered`]: data sets a program defines and registers by name;
//! - [`source`]: where data comes from: the bundled Fashion-MNIST subset, Debian's full
//!   `dataset-fashion-mnist`, any IDX directory, the formats above, or FedProx's
//!   Synthetic(alpha, beta) generator.
//!
//! Every reader checks a file's size against [`max_file_bytes`] before reading it, and what a
//! header declares against what the file holds before allocating for it.

pub mod arrays;
pub mod cifar;
pub mod csv_table;
pub mod dataset;
pub mod idx;
pub mod image_folder;
pub mod npy;
pub mod registered;
pub mod source;
pub mod synthetic;
pub mod text;

pub use dataset::{DataSplit, Dataset, Label, Task, MAX_CLASSES};
pub use source::{load, load_train_dir, DataConfig, FashionSource};

use std::path::PathBuf;
use thiserror::Error;

/// Errors while reading or building a data set. Each names the file and what is wrong.
#[derive(Debug, Error)]
pub enum DataError {
    /// The file could not be opened or read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file is not a valid IDX file.
    #[error("{path}: not a valid IDX file: {why}")]
    BadIdx {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// The file is not a valid file of its format.
    #[error("{path}: not a valid {format} file: {why}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// The format expected.
        format: &'static str,
        /// What is wrong.
        why: String,
    },
    /// The file is larger than a reader takes.
    #[error("{path}: {size} bytes, more than the {max} a data file may have (see braid_data::max_file_bytes)")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// The limit.
        max: u64,
    },
    /// Images and labels do not fit together.
    #[error("{0}")]
    Mismatch(String),
    /// A data source is not available here.
    #[error("{0}")]
    NotFound(String),
    /// A configuration value is invalid.
    #[error("data.{field}: {why}")]
    BadConfig {
        /// The field.
        field: &'static str,
        /// The rule it breaks.
        why: String,
    },
}

/// The most bytes one data file may hold, or unpack to: half the memory available now (from
/// `/proc/meminfo`), 16 GiB where that cannot be read.
pub fn max_file_bytes() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            let line = m.lines().find(|l| l.starts_with("MemAvailable:"))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib.saturating_mul(1024) / 2)
        })
        .unwrap_or(16 << 30)
}

/// Reads a whole file of at most `max` bytes, checking its size before reading it.
pub fn read_bounded(path: &std::path::Path, max: u64) -> Result<Vec<u8>, DataError> {
    use std::io::Read;
    let io = |source| DataError::Io {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let size = file.metadata().map_err(io)?.len();
    if size > max {
        return Err(DataError::TooLarge {
            path: path.to_owned(),
            size,
            max,
        });
    }
    let mut raw = Vec::with_capacity(size as usize);
    file.take(max + 1).read_to_end(&mut raw).map_err(io)?;
    if raw.len() as u64 > max {
        return Err(DataError::TooLarge {
            path: path.to_owned(),
            size: raw.len() as u64,
            max,
        });
    }
    Ok(raw)
}
