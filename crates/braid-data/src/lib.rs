//! Braid's data sets.
//!
//! - [`idx`]: a strict reader for IDX files (the MNIST family's format), gzipped or not;
//! - [`dataset`]: an in-memory labelled data set that hands out batches as `f32`;
//! - [`source`]: where data comes from: the bundled Fashion-MNIST subset, Debian's full
//!   `dataset-fashion-mnist`, any IDX directory, or FedProx's Synthetic(alpha, beta) generator.

pub mod dataset;
pub mod idx;
pub mod source;
pub mod synthetic;

pub use dataset::{DataSplit, Dataset};
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
