//! Data sets from NumPy arrays: four `.npy` files, or four members of one `.npz` archive
//! (named as Keras names them: `x_train`, `y_train`, `x_test`, `y_test`).
//!
//! Features are `[samples, ...]`: `[n, features]` for tables, `[n, channels, height, width]`
//! for images (`[n, height, width]` reads as one channel). `u1` features are kept as bytes and
//! scaled by 1/255 when batched, as images are; every other type becomes `f32` and must be
//! finite. Labels are one whole number per sample, below 2^24 (any number of classes up to that).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::dataset::{DataSplit, Dataset, Features};
use crate::npy::{read_npy, read_npz, NpyArray};
use crate::DataError;

/// `[data] dataset = "npy"`: four `.npy` files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NpyConfig {
    /// Training features.
    pub train_features: PathBuf,
    /// Training labels.
    pub train_labels: PathBuf,
    /// Test features.
    pub test_features: PathBuf,
    /// Test labels.
    pub test_labels: PathBuf,
    /// One whole number per training sample, for `partition.scheme = "natural"`.
    #[serde(default)]
    pub train_groups: Option<PathBuf>,
    /// The number of classes (default: the largest label, plus one).
    #[serde(default)]
    pub classes: Option<usize>,
}

/// `[data] dataset = "npz"`: one archive.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NpzConfig {
    /// The archive.
    pub path: PathBuf,
    /// The members' names: training features, training labels, test features, test labels.
    #[serde(default = "keras_names")]
    pub arrays: [String; 4],
    /// A member with one whole number per training sample, for `partition.scheme =
    /// "natural"`.
    #[serde(default)]
    pub train_groups: Option<String>,
    /// The number of classes (default: the largest label, plus one).
    #[serde(default)]
    pub classes: Option<usize>,
}

fn keras_names() -> [String; 4] {
    ["x_train", "y_train", "x_test", "y_test"].map(String::from)
}

impl NpyConfig {
    /// Reads the four arrays (and the groups); at most `max_bytes` of each file.
    pub fn load(&self, max_bytes: u64) -> Result<DataSplit, DataError> {
        let read = |p: &Path| -> Result<_, DataError> {
            Ok((p.display().to_string(), read_npy(p, max_bytes)?))
        };
        let groups = self.train_groups.as_deref().map(read).transpose()?;
        build(
            [
                read(&self.train_features)?,
                read(&self.train_labels)?,
                read(&self.test_features)?,
                read(&self.test_labels)?,
            ],
            groups,
            self.classes,
        )
    }
}

impl NpzConfig {
    /// Reads the four members (and the groups); at most `max_bytes` of each, unpacked.
    pub fn load(&self, max_bytes: u64) -> Result<DataSplit, DataError> {
        let read = |name: &str| -> Result<_, DataError> {
            let what = format!("{}:{name}", self.path.display());
            Ok((what, read_npz(&self.path, name, max_bytes)?))
        };
        let [a, b, c, d] = &self.arrays;
        let groups = self.train_groups.as_deref().map(read).transpose()?;
        build(
            [read(a)?, read(b)?, read(c)?, read(d)?],
            groups,
            self.classes,
        )
    }
}

/// Builds a split from named arrays: training features and labels, test features and labels.
fn build(
    arrays: [(String, NpyArray); 4], groups: Option<(String, NpyArray)>, classes: Option<usize>,
) -> Result<DataSplit, DataError> {
    let [(xn, x), (yn, y), (xtn, xt), (ytn, yt)] = arrays;
    let (train_labels, test_labels) = (labels(&yn, &y)?, labels(&ytn, &yt)?);
    let classes = classes.unwrap_or_else(|| {
        let largest = train_labels.iter().chain(&test_labels).max();
        largest.map_or(1, |l| *l as usize + 1)
    });
    let train = dataset(&xn, x, train_labels, classes)?;
    let test = dataset(&xtn, xt, test_labels, classes)?;
    if train.sample_shape() != test.sample_shape() {
        return Err(DataError::Mismatch(format!(
            "{xn} has samples of shape {:?}, {xtn} of shape {:?}",
            train.sample_shape(),
            test.sample_shape()
        )));
    }
    let train = match groups {
        Some((gn, g)) => {
            if g.dtype.is_float() || g.shape.len() != 1 {
                return Err(DataError::Mismatch(format!(
                    "{gn}: groups must be a one-dimensional array of whole numbers"
                )));
            }
            let ids = g
                .to_f64()
                .into_iter()
                .map(|v| u32::try_from(v as i64).map_err(|_| v))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|v| DataError::Mismatch(format!("{gn}: group {v} is not below 2^32")))?;
            train.with_groups(ids)?
        }
        None => train,
    };
    Ok(DataSplit { train, test })
}

fn labels(name: &str, a: &NpyArray) -> Result<Vec<crate::Label>, DataError> {
    let bad = |why: String| DataError::Mismatch(format!("{name}: {why}"));
    if a.shape.len() != 1 && !(a.shape.len() == 2 && a.shape[1] == 1) {
        return Err(bad(format!(
            "labels must be one per sample, shape [n] or [n, 1], not {:?}",
            a.shape
        )));
    }
    if a.dtype.is_float() {
        return Err(bad(
            "labels are floats; save them as integers (`y.astype(np.int64)`)".into(),
        ));
    }
    a.to_f64()
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            if (0.0..crate::MAX_CLASSES as f64).contains(&v) {
                Ok(v as crate::Label)
            } else {
                Err(bad(format!(
                    "label {v} at sample {i} is not between 0 and braid's {} classes at most",
                    crate::MAX_CLASSES
                )))
            }
        })
        .collect()
}

fn dataset(
    name: &str, x: NpyArray, labels: Vec<crate::Label>, classes: usize,
) -> Result<Dataset, DataError> {
    let bad = |why: String| DataError::Mismatch(format!("{name}: {why}"));
    let Some((&n, rest)) = x.shape.split_first() else {
        return Err(bad(
            "features must have a samples dimension, not be a scalar".into(),
        ));
    };
    if n != labels.len() {
        return Err(bad(format!("{n} samples but {} labels", labels.len())));
    }
    let shape = match rest {
        [] => vec![1],
        [h, w] => vec![1, *h, *w],
        s => s.to_vec(),
    };
    let features = match x.into_bytes() {
        Ok(data) => Features::U8 {
            data,
            scale: 1.0 / 255.0,
        },
        Err(x) => {
            // Checked after the conversion: an f8 value beyond f32's range is refused too.
            let values = x.to_f32();
            if let Some(i) = values.iter().position(|v| !v.is_finite()) {
                let v = x.to_f64()[i];
                return Err(bad(format!(
                    "value {v:e} at position {i} is not finite in f32"
                )));
            }
            Features::F32(values)
        }
    };
    Dataset::new(features, labels, shape, classes).map_err(|e| bad(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::npy::tests::npy;

    fn f32s(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    fn f64s(v: &[f64]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    fn i64s(v: &[i64]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    fn write_four(dir: &Path, files: [Vec<u8>; 4]) -> NpyConfig {
        let names = ["xtr.npy", "ytr.npy", "xte.npy", "yte.npy"];
        for (n, f) in names.iter().zip(files) {
            std::fs::write(dir.join(n), f).unwrap();
        }
        NpyConfig {
            train_features: dir.join(names[0]),
            train_labels: dir.join(names[1]),
            test_features: dir.join(names[2]),
            test_labels: dir.join(names[3]),
            train_groups: None,
            classes: None,
        }
    }

    #[test]
    fn npy_files_make_a_split_of_tables_or_images() {
        let dir = tempfile::tempdir().unwrap();
        let c = write_four(
            dir.path(),
            [
                npy("<f4", &[3, 2], &f32s(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0])),
                npy("<i8", &[3], &i64s(&[0, 2, 1])),
                npy("<f4", &[1, 2], &f32s(&[7.0, 8.0])),
                npy("<i8", &[1, 1], &i64s(&[4])),
            ],
        );
        let s = c.load(1 << 20).unwrap();
        assert_eq!(
            (s.train.len(), s.test.len(), s.train.num_classes()),
            (3, 1, 5)
        );
        assert_eq!(s.train.sample_shape(), &[2]);
        let (mut x, mut y) = (Vec::new(), Vec::new());
        s.train.gather(&[2], &mut x, &mut y);
        assert_eq!((x, y), (vec![5.0, 6.0], vec![1]));
        // [n, h, w] bytes are one-channel images scaled by 1/255.
        let img = write_four(
            dir.path(),
            [
                npy("|u1", &[2, 2, 2], &[0, 255, 0, 0, 51, 0, 0, 0]),
                npy("|u1", &[2], &[1, 0]),
                npy("|u1", &[1, 2, 2], &[0; 4]),
                npy("<i4", &[1], &[1, 0, 0, 0]),
            ],
        );
        let s = img.load(1 << 20).unwrap();
        assert_eq!(s.train.sample_shape(), &[1, 2, 2]);
        let (mut x, mut y) = (Vec::new(), Vec::new());
        s.train.gather(&[1], &mut x, &mut y);
        assert_eq!(x, vec![51.0 * (1.0f32 / 255.0), 0.0, 0.0, 0.0]);
    }

    #[test]
    fn labels_beyond_255_make_as_many_classes() {
        let dir = tempfile::tempdir().unwrap();
        let x = || npy("<f4", &[2, 1], &f32s(&[1.0, 2.0]));
        let s = write_four(
            dir.path(),
            [
                x(),
                npy("<i8", &[2], &i64s(&[0, 999])),
                x(),
                npy("<i8", &[2], &i64s(&[5, 1])),
            ],
        )
        .load(1 << 20)
        .unwrap();
        assert_eq!(s.train.labels(), &[0, 999]);
        assert_eq!(s.train.num_classes(), 1000);
        assert_eq!(s.test.class_counts()[5], 1);
    }

    #[test]
    fn mismatched_or_hostile_arrays_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let x = || npy("<f4", &[2, 1], &f32s(&[1.0, 2.0]));
        let y = || npy("<i8", &[2], &i64s(&[0, 1]));
        for (files, want) in [
            (
                [x(), npy("<i8", &[3], &i64s(&[0, 1, 1])), x(), y()],
                "2 samples but 3 labels",
            ),
            (
                [x(), npy("<f4", &[2], &f32s(&[0.0, 1.0])), x(), y()],
                "labels are floats",
            ),
            (
                [x(), npy("<i8", &[2], &i64s(&[0, 1 << 24])), x(), y()],
                "label 16777216 at sample 1",
            ),
            (
                [x(), npy("<i8", &[2], &i64s(&[0, -1])), x(), y()],
                "label -1",
            ),
            (
                [x(), npy("<i8", &[2, 2], &i64s(&[0, 1, 0, 1])), x(), y()],
                "one per sample",
            ),
            (
                [npy("<f4", &[2, 1], &f32s(&[1.0, f32::NAN])), y(), x(), y()],
                "not finite",
            ),
            (
                [npy("<f8", &[2, 1], &f64s(&[1.0, 1e300])), y(), x(), y()],
                "value 1e300 at position 1 is not finite in f32",
            ),
            (
                [x(), y(), npy("<f4", &[2, 2], &f32s(&[0.0; 4])), y()],
                "shape [2]",
            ),
            ([npy("<f4", &[], &f32s(&[1.0])), y(), x(), y()], "scalar"),
        ] {
            let e = write_four(dir.path(), files)
                .load(1 << 20)
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{want}: {e}");
        }
        let mut c = write_four(dir.path(), [x(), y(), x(), y()]);
        std::fs::write(
            dir.path().join("g.npy"),
            npy("<f4", &[2], &f32s(&[0.0, 1.0])),
        )
        .unwrap();
        c.train_groups = Some(dir.path().join("g.npy"));
        assert!(c
            .load(1 << 20)
            .unwrap_err()
            .to_string()
            .contains("whole numbers"));
        std::fs::write(dir.path().join("g.npy"), npy("<i8", &[2], &i64s(&[4, 9]))).unwrap();
        assert_eq!(c.load(1 << 20).unwrap().train.groups(), Some(&[4, 9][..]));
        std::fs::write(dir.path().join("xtr.npy"), b"\x93NUMPY\x01\x00").unwrap();
        let e = c.load(1 << 20).unwrap_err().to_string();
        assert!(e.contains("xtr.npy") && e.contains("npy"), "{e}");
    }

    #[test]
    fn an_npz_archive_reads_by_keras_names() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.npz");
        let mut z = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
        let opts = zip::write::SimpleFileOptions::default();
        for (name, data) in [
            ("x_train", npy("<f8", &[2, 1], &[0; 16])),
            ("y_train", npy("|u1", &[2], &[0, 3])),
            ("x_test", npy("<f8", &[1, 1], &[0; 8])),
            ("y_test", npy("|u1", &[1], &[2])),
        ] {
            z.start_file(format!("{name}.npy"), opts).unwrap();
            z.write_all(&data).unwrap();
        }
        z.finish().unwrap();
        let c: NpzConfig = toml::from_str(&format!("path = {:?}", path)).unwrap();
        let s = c.load(1 << 20).unwrap();
        assert_eq!(
            (s.train.len(), s.test.len(), s.train.num_classes()),
            (2, 1, 4)
        );
        let other = NpzConfig {
            arrays: ["x_train", "labels", "x_test", "y_test"].map(String::from),
            ..c
        };
        let e = other.load(1 << 20).unwrap_err().to_string();
        assert!(e.contains("no array \"labels\""), "{e}");
    }
}
