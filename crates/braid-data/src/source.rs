//! Where a run's data comes from (config: `[data]`).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::arrays::{NpyConfig, NpzConfig};
use crate::cifar::CifarConfig;
use crate::csv_table::CsvConfig;
use crate::dataset::{DataSplit, Dataset, Features};
use crate::idx::{parse_idx, read_idx, IdxArray};
use crate::image_folder::ImageFolderConfig;
use crate::registered::RegisteredData;
use crate::synthetic::{self, SyntheticConfig};
use crate::text::TextConfig;
use crate::DataError;

/// Where Debian's `dataset-fashion-mnist` package puts the full data set.
pub const SYSTEM_FASHION_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// Number of samples of the bundled subset used for training; the rest (2000) are its test set.
pub const BUNDLED_TRAIN: usize = 8000;

const BUNDLED_IMAGES: &[u8] =
    include_bytes!("../../../data/fashion-mnist-subset/t10k-images-idx3-ubyte.gz");
const BUNDLED_LABELS: &[u8] =
    include_bytes!("../../../data/fashion-mnist-subset/t10k-labels-idx1-ubyte.gz");

/// The data set of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "dataset", rename_all = "kebab-case", deny_unknown_fields)]
pub enum DataConfig {
    /// Fashion-MNIST (28x28 grey images, 10 classes).
    FashionMnist {
        /// `"bundled"` (10k real samples shipped in the binary: 8000 train / 2000 test),
        /// `"system"` (the full 60k/10k set from Debian's `dataset-fashion-mnist`),
        /// `"auto"` (system if installed, else bundled), or a directory holding the four IDX files.
        #[serde(default = "default_source")]
        source: String,
        /// Use only the first `train_limit` training samples.
        #[serde(default)]
        train_limit: Option<usize>,
        /// Use only the first `test_limit` test samples.
        #[serde(default)]
        test_limit: Option<usize>,
    },
    /// FedProx's Synthetic(alpha, beta): each group has its own softmax model and input distribution.
    Synthetic(SyntheticConfig),
    /// CIFAR-10 or CIFAR-100 binary files (32x32 colour images).
    Cifar(CifarConfig),
    /// A numeric CSV table for training and one for testing.
    Csv(CsvConfig),
    /// Four NumPy `.npy` arrays.
    Npy(NpyConfig),
    /// One NumPy `.npz` archive.
    Npz(NpzConfig),
    /// A text corpus as byte tokens in next-token windows.
    Text(TextConfig),
    /// Folders of PNG or JPEG images, one subfolder per class.
    ImageFolder(ImageFolderConfig),
    /// A data set a program registered under its own name (read through the program's
    /// registry, never by serde; [`DataConfig::to_table`] writes it back).
    #[serde(skip)]
    Registered(RegisteredData),
}

impl DataConfig {
    /// The names of braid's own data sets (`[data] dataset = "..."`); a program's registered
    /// data sets take other names.
    pub const BUILTIN: [&'static str; 8] = [
        "fashion-mnist",
        "synthetic",
        "cifar",
        "csv",
        "npy",
        "npz",
        "text",
        "image-folder",
    ];

    /// The `[data]` table as TOML would write it (a registered data set too).
    pub fn to_table(&self) -> Result<toml::Table, String> {
        match self {
            Self::Registered(r) => Ok(r.to_table()),
            other => toml::Table::try_from(other).map_err(|e| e.to_string()),
        }
    }
}

fn default_source() -> String {
    "bundled".into()
}

impl Default for DataConfig {
    fn default() -> Self {
        Self::FashionMnist {
            source: default_source(),
            train_limit: None,
            test_limit: None,
        }
    }
}

/// A parsed Fashion-MNIST source.
#[derive(Debug, Clone, PartialEq)]
pub enum FashionSource {
    /// The subset compiled into the binary.
    Bundled,
    /// A directory with `train-images-idx3-ubyte[.gz]` and friends.
    Dir(PathBuf),
}

impl FashionSource {
    /// Resolves a `data.source` string.
    pub fn resolve(source: &str) -> Result<Self, DataError> {
        let system = Path::new(SYSTEM_FASHION_DIR);
        match source {
            "bundled" => Ok(Self::Bundled),
            "system" if system.is_dir() => Ok(Self::Dir(system.to_owned())),
            "system" => Err(DataError::NotFound(format!(
                "data.source = \"system\" but {SYSTEM_FASHION_DIR} does not exist; install it with `apt-get install dataset-fashion-mnist` or use source = \"bundled\""
            ))),
            "auto" if system.is_dir() => Ok(Self::Dir(system.to_owned())),
            "auto" => Ok(Self::Bundled),
            dir => {
                let p = PathBuf::from(dir);
                if p.is_dir() {
                    Ok(Self::Dir(p))
                } else {
                    Err(DataError::NotFound(format!(
                        "data.source = {dir:?} is not a directory (allowed: \"bundled\", \"system\", \"auto\", or a directory of IDX files)"
                    )))
                }
            }
        }
    }

    /// A short description for logs and reports.
    pub fn describe(&self) -> String {
        match self {
            Self::Bundled => "bundled Fashion-MNIST subset (8000 train / 2000 test)".into(),
            Self::Dir(p) => format!("Fashion-MNIST IDX files in {}", p.display()),
        }
    }
}

impl DataConfig {
    /// A short description for logs and reports.
    pub fn describe(&self) -> String {
        match self {
            Self::FashionMnist { source, .. } => FashionSource::resolve(source)
                .map(|s| s.describe())
                .unwrap_or_else(|_| source.clone()),
            Self::Synthetic(c) => format!(
                "Synthetic({}, {}) with {} groups",
                c.alpha, c.beta, c.groups
            ),
            Self::Cifar(c) => format!("{} binary files in {}", c.set.name(), c.dir.display()),
            Self::Csv(c) => format!("CSV tables {} and {}", c.train.display(), c.test.display()),
            Self::Npy(c) => format!("NumPy arrays {} ...", c.train_features.display()),
            Self::Npz(c) => format!("NumPy archive {}", c.path.display()),
            Self::Text(c) => format!(
                "text corpus {} as bytes in windows of {}",
                c.path.display(),
                c.window
            ),
            Self::ImageFolder(c) => format!(
                "image folders {} and {}",
                c.train.display(),
                c.test.display()
            ),
            Self::Registered(r) => r.kind.describe_table(&r.name, &r.options),
        }
    }
}

/// Loads the data set named by `config`.
pub fn load(config: &DataConfig, seed: u64) -> Result<DataSplit, DataError> {
    let max = crate::max_file_bytes();
    match config {
        DataConfig::FashionMnist {
            source,
            train_limit,
            test_limit,
        } => limited(
            load_fashion(&FashionSource::resolve(source)?)?,
            *train_limit,
            *test_limit,
        ),
        DataConfig::Synthetic(c) => synthetic::generate(c, seed),
        DataConfig::Cifar(c) => limited(c.set.load(&c.dir, max)?, c.train_limit, c.test_limit),
        DataConfig::Csv(c) => c.load(max),
        DataConfig::Npy(c) => c.load(max),
        DataConfig::Npz(c) => c.load(max),
        DataConfig::Text(c) => c.load(max),
        DataConfig::ImageFolder(c) => c.load(max),
        DataConfig::Registered(r) => r.kind.load_table(&r.options, seed),
    }
}

/// Keeps the first `train_limit` training and `test_limit` test samples.
fn limited(
    mut split: DataSplit, train_limit: Option<usize>, test_limit: Option<usize>,
) -> Result<DataSplit, DataError> {
    for (limit, set, field) in [
        (train_limit, &mut split.train, "train_limit"),
        (test_limit, &mut split.test, "test_limit"),
    ] {
        if let Some(n) = limit {
            if n == 0 || n > set.len() {
                return Err(DataError::BadConfig {
                    field,
                    why: format!(
                        "{n} is not between 1 and the {} samples available",
                        set.len()
                    ),
                });
            }
            *set = set.select(&(0..n).collect::<Vec<_>>());
        }
    }
    Ok(split)
}

/// Loads Fashion-MNIST from a source.
pub fn load_fashion(source: &FashionSource) -> Result<DataSplit, DataError> {
    match source {
        FashionSource::Bundled => {
            let bad = |why| DataError::BadIdx {
                path: PathBuf::from("<bundled subset>"),
                why,
            };
            let all = images_with_labels(
                parse_idx(BUNDLED_IMAGES).map_err(bad)?,
                parse_idx(BUNDLED_LABELS).map_err(bad)?,
                "bundled subset",
            )?;
            let n = all.len();
            Ok(DataSplit {
                train: all.select(&(0..BUNDLED_TRAIN).collect::<Vec<_>>()),
                test: all.select(&(BUNDLED_TRAIN..n).collect::<Vec<_>>()),
            })
        }
        FashionSource::Dir(dir) => Ok(DataSplit {
            train: read_pair(dir, "train")?,
            test: read_pair(dir, "t10k")?,
        }),
    }
}

/// Reads a training set alone from `dir` (`train-images-idx3-ubyte[.gz]` and
/// `train-labels-idx1-ubyte[.gz]`): one participant's own data, e.g. a shard written by
/// `braid partition --write`.
pub fn load_train_dir(dir: &Path) -> Result<Dataset, DataError> {
    read_pair(dir, "train")
}

fn find(dir: &Path, stem: &str) -> Result<PathBuf, DataError> {
    [format!("{stem}.gz"), stem.to_owned()]
        .iter()
        .map(|name| dir.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| DataError::NotFound(format!("{}: no {stem} or {stem}.gz", dir.display())))
}

fn read_pair(dir: &Path, prefix: &str) -> Result<Dataset, DataError> {
    let images = read_idx(&find(dir, &format!("{prefix}-images-idx3-ubyte"))?)?;
    let labels = read_idx(&find(dir, &format!("{prefix}-labels-idx1-ubyte"))?)?;
    images_with_labels(images, labels, &format!("{} ({prefix})", dir.display()))
}

fn images_with_labels(
    images: IdxArray, labels: IdxArray, what: &str,
) -> Result<Dataset, DataError> {
    if images.dims.len() != 3 {
        return Err(DataError::Mismatch(format!(
            "{what}: images have dimensions {:?}, expected [count, rows, cols]",
            images.dims
        )));
    }
    if labels.dims.len() != 1 || labels.dims[0] != images.dims[0] {
        return Err(DataError::Mismatch(format!(
            "{what}: {} images but labels have dimensions {:?}",
            images.dims[0], labels.dims
        )));
    }
    Dataset::new(
        Features::U8 {
            data: images.data,
            scale: 1.0 / 255.0,
        },
        labels.data.into_iter().map(crate::Label::from).collect(),
        vec![1, images.dims[1], images.dims[2]],
        10,
    )
    .map_err(|e| DataError::Mismatch(format!("{what}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::idx::encode_idx;

    #[test]
    fn bundled_subset_loads() {
        let s = load_fashion(&FashionSource::Bundled).unwrap();
        assert_eq!(s.train.len(), 8000);
        assert_eq!(s.test.len(), 2000);
        assert_eq!(s.train.sample_shape(), &[1, 28, 28]);
        // Fashion-MNIST's test set is balanced: every class is present in the bundled train part.
        assert!(s.train.class_counts().iter().all(|&c| c > 700));
    }

    #[test]
    fn a_shard_written_as_idx_reads_back_equal() {
        let s = load_fashion(&FashionSource::Bundled).unwrap();
        let shard = s.train.select(&[5, 3, 7999, 0]);
        let (images, labels) = shard.to_idx().unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("train-images-idx3-ubyte"), images).unwrap();
        std::fs::write(dir.path().join("train-labels-idx1-ubyte"), labels).unwrap();
        assert_eq!(load_train_dir(dir.path()).unwrap(), shard);
        let empty = tempfile::tempdir().unwrap();
        assert!(matches!(
            load_train_dir(empty.path()),
            Err(DataError::NotFound(_))
        ));
    }

    #[test]
    fn limits_apply_and_are_checked() {
        let c = DataConfig::FashionMnist {
            source: "bundled".into(),
            train_limit: Some(100),
            test_limit: Some(50),
        };
        let s = load(&c, 0).unwrap();
        assert_eq!((s.train.len(), s.test.len()), (100, 50));
        let bad = DataConfig::FashionMnist {
            source: "bundled".into(),
            train_limit: Some(0),
            test_limit: None,
        };
        assert!(load(&bad, 0)
            .unwrap_err()
            .to_string()
            .contains("train_limit"));
    }

    #[test]
    fn unknown_source_is_a_clear_error() {
        let e = FashionSource::resolve("/no/such/dir")
            .unwrap_err()
            .to_string();
        assert!(e.contains("/no/such/dir") && e.contains("bundled"), "{e}");
    }

    #[test]
    fn directory_with_mismatched_counts_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        for p in ["train", "t10k"] {
            std::fs::write(
                dir.path().join(format!("{p}-images-idx3-ubyte")),
                encode_idx(&[2, 2, 2], &[0; 8]),
            )
            .unwrap();
            std::fs::write(
                dir.path().join(format!("{p}-labels-idx1-ubyte")),
                encode_idx(&[3], &[0, 1, 2]),
            )
            .unwrap();
        }
        let e = load_fashion(&FashionSource::Dir(dir.path().to_owned()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("2 images") && e.contains("[3]"), "{e}");
    }

    #[test]
    fn directory_with_truncated_file_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut img = encode_idx(&[2, 2, 2], &[0; 8]);
        img.truncate(img.len() - 3);
        std::fs::write(dir.path().join("train-images-idx3-ubyte"), img).unwrap();
        std::fs::write(
            dir.path().join("train-labels-idx1-ubyte"),
            encode_idx(&[2], &[0, 1]),
        )
        .unwrap();
        let e = load_fashion(&FashionSource::Dir(dir.path().to_owned()))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("train-images-idx3-ubyte") && e.contains("truncated"),
            "{e}"
        );
    }
}
