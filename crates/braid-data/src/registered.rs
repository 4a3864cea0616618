//! Data sets a program registers by name: `[data] dataset = "<name>"` with the data set's own
//! keys beside it, read into the data set's own options type.
//!
//! ```
//! use braid_data::registered::DatasetKind;
//! use braid_data::dataset::{Dataset, Features};
//! use braid_data::{DataError, DataSplit};
//!
//! /// `[data] dataset = "ramp"`, `samples = 40`: a toy two-class set made in code.
//! struct Ramp;
//!
//! #[derive(serde::Deserialize)]
//! #[serde(deny_unknown_fields)]
//! struct RampOptions {
//!     samples: usize,
//! }
//!
//! impl DatasetKind for Ramp {
//!     type Options = RampOptions;
//!     fn load(&self, o: &RampOptions, _seed: u64) -> Result<DataSplit, DataError> {
//!         let set = |n: usize| {
//!             let x: Vec<f32> = (0..n).map(|i| i as f32 / n as f32).collect();
//!             let y = (0..n).map(|i| u32::from(2 * i >= n)).collect();
//!             Dataset::new(Features::F32(x), y, vec![1], 2)
//!         };
//!         Ok(DataSplit { train: set(o.samples)?, test: set(o.samples / 4 + 1)? })
//!     }
//! }
//! # let options: toml::Table = toml::from_str("samples = 40").unwrap();
//! # use braid_data::registered::AnyDatasetKind;
//! # assert_eq!(Ramp.load_table(&options, 0).unwrap().train.len(), 40);
//! ```

use std::sync::Arc;

use serde::de::DeserializeOwned;

use crate::{DataError, DataSplit};

/// A data set a program defines: its options (the `[data]` table's keys other than `dataset`)
/// and how to load it.
pub trait DatasetKind: Send + Sync + 'static {
    /// The options, read from the `[data]` table (use `#[serde(deny_unknown_fields)]` so a
    /// misspelt key is refused).
    type Options: DeserializeOwned;

    /// Loads the training and test sets. `seed` is the run's seed, for data made at random.
    fn load(&self, options: &Self::Options, seed: u64) -> Result<DataSplit, DataError>;

    /// A short description for logs and reports (default: the data set's name).
    fn describe(&self, name: &str, _options: &Self::Options) -> String {
        name.to_string()
    }
}

/// A [`DatasetKind`] behind a trait object, its options still a TOML table (what a registry
/// holds).
pub trait AnyDatasetKind: Send + Sync {
    /// Reads the options, or says in one line what is wrong with them.
    fn check(&self, options: &toml::Table) -> Result<(), DataError>;
    /// Reads the options and loads the data.
    fn load_table(&self, options: &toml::Table, seed: u64) -> Result<DataSplit, DataError>;
    /// A short description for logs and reports.
    fn describe_table(&self, name: &str, options: &toml::Table) -> String;
}

fn options<O: DeserializeOwned>(options: &toml::Table) -> Result<O, DataError> {
    O::deserialize(options.clone()).map_err(|e| DataError::BadConfig {
        field: "dataset",
        why: e.message().trim().replace('\n', " "),
    })
}

impl<K: DatasetKind> AnyDatasetKind for K {
    fn check(&self, table: &toml::Table) -> Result<(), DataError> {
        options::<K::Options>(table).map(|_| ())
    }

    fn load_table(&self, table: &toml::Table, seed: u64) -> Result<DataSplit, DataError> {
        self.load(&options(table)?, seed)
    }

    fn describe_table(&self, name: &str, table: &toml::Table) -> String {
        match options(table) {
            Ok(o) => self.describe(name, &o),
            Err(_) => name.to_string(),
        }
    }
}

/// `[data]` naming a registered data set: its name, its other keys as written, and the kind
/// the name resolved to.
#[derive(Clone)]
pub struct RegisteredData {
    /// The registered name (`dataset = "..."`).
    pub name: String,
    /// The table's other keys.
    pub options: toml::Table,
    /// What the name resolved to.
    pub kind: Arc<dyn AnyDatasetKind>,
}

impl RegisteredData {
    /// The `[data]` table as written: `dataset = name` and the options.
    pub fn to_table(&self) -> toml::Table {
        let mut t = self.options.clone();
        t.insert("dataset".into(), toml::Value::String(self.name.clone()));
        t
    }
}

impl std::fmt::Debug for RegisteredData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegisteredData")
            .field("name", &self.name)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// Two configs are equal when they name the same data set with the same options.
impl PartialEq for RegisteredData {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && self.options == other.options
    }
}
