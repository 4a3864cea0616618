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
    /// The label arrays hold real-valued targets (`[n]` or `[n, k]`, any numeric dtype) for
    /// regression with mean squared error instead of class labels.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub regression: bool,
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
    /// The label members hold real-valued targets for regression (see [`NpyConfig`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub regression: bool,
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
            answers(self.regression, self.classes)?,
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
            answers(self.regression, self.classes)?,
        )
    }
}

/// What the label arrays hold.
enum Answers {
    /// Class labels; the number of classes if given.
    Labels(Option<usize>),
    /// Real-valued regression targets.
    Targets,
}

fn answers(regression: bool, classes: Option<usize>) -> Result<Answers, DataError> {
    match (regression, classes) {
        (false, classes) => Ok(Answers::Labels(classes)),
        (true, None) => Ok(Answers::Targets),
        (true, Some(_)) => Err(DataError::Mismatch(
            "data.classes: a regression data set has no classes (data.regression = true)".into(),
        )),
    }
}

/// Real-valued targets of shape `[n]` or `[n, k]`: the values row by row and `k`.
fn targets(name: &str, a: &NpyArray) -> Result<(Vec<f32>, usize), DataError> {
    let k = match a.shape.as_slice() {
        [_] => 1,
        [_, k] if *k > 0 => *k,
        s => {
            return Err(DataError::Mismatch(format!(
                "{name}: regression targets must have shape [n] or [n, k], not {s:?}"
            )))
        }
    };
    let values = a.to_f32();
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(DataError::Mismatch(format!(
            "{name}: target {} of sample {} ({:e}) is not finite in f32",
            i % k,
            i / k,
            a.to_f64()[i]
        )));
    }
    Ok((values, k))
}

/// Builds a split from named arrays: training features and labels, test features and labels.
fn build(
    arrays: [(String, NpyArray); 4], groups: Option<(String, NpyArray)>, answers: Answers,
) -> Result<DataSplit, DataError> {
    let [(xn, x), (yn, y), (xtn, xt), (ytn, yt)] = arrays;
    let (train, test) = match answers {
        Answers::Labels(classes) => {
            let (train_labels, test_labels) = (labels(&yn, &y)?, labels(&ytn, &yt)?);
            let classes = classes.unwrap_or_else(|| {
                let largest = train_labels.iter().chain(&test_labels).max();
                largest.map_or(1, |l| *l as usize + 1)
            });
            (
                dataset(&xn, x, Rows::Labels(train_labels, classes))?,
                dataset(&xtn, xt, Rows::Labels(test_labels, classes))?,
            )
        }
        Answers::Targets => {
            let ((train_t, k), (test_t, kt)) = (targets(&yn, &y)?, targets(&ytn, &yt)?);
            if k != kt {
                return Err(DataError::Mismatch(format!(
                    "{yn} has {k} targets per sample, {ytn} {kt}"
                )));
            }
            (
                dataset(&xn, x, Rows::Targets(train_t, k))?,
                dataset(&xtn, xt, Rows::Targets(test_t, k))?,
            )
        }
    };
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

/// One answer per sample: labels (and the number of classes) or targets (and their count
/// per sample).
enum Rows {
    Labels(Vec<crate::Label>, usize),
    Targets(Vec<f32>, usize),
}

fn dataset(name: &str, x: NpyArray, rows: Rows) -> Result<Dataset, DataError> {
    let bad = |why: String| DataError::Mismatch(format!("{name}: {why}"));
    let Some((&n, rest)) = x.shape.split_first() else {
        return Err(bad(
            "features must have a samples dimension, not be a scalar".into(),
        ));
    };
    let (answers, what) = match &rows {
        Rows::Labels(l, _) => (l.len(), "labels"),
        Rows::Targets(t, k) => (t.len() / k, "rows of targets"),
    };
    if n != answers {
        return Err(bad(format!("{n} samples but {answers} {what}")));
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
    match rows {
        Rows::Labels(labels, classes) => Dataset::new(features, labels, shape, classes),
        Rows::Targets(targets, k) => Dataset::regression(features, targets, shape, k),
    }
    .map_err(|e| bad(e.to_string()))
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
            regression: false,
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

    #[test]
    fn regression_targets_come_from_the_label_arrays_in_any_numeric_dtype() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = write_four(
            dir.path(),
            [
                npy("<f4", &[3, 2], &f32s(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0])),
                npy("<f8", &[3], &f64s(&[0.5, -1.5, 2.25])),
                npy("<f4", &[1, 2], &f32s(&[7.0, 8.0])),
                npy("<i8", &[1], &i64s(&[4])),
            ],
        );
        c.regression = true;
        let s = c.load(1 << 20).unwrap();
        assert_eq!(s.train.task(), crate::Task::Regress);
        assert_eq!(
            (s.train.num_classes(), s.train.targets()),
            (1, &[0.5, -1.5, 2.25][..])
        );
        assert_eq!(s.test.targets(), &[4.0]);
        // Two targets per sample: [n, 2].
        let two = write_four(
            dir.path(),
            [
                npy("<f4", &[2, 1], &f32s(&[1.0, 2.0])),
                npy("<f4", &[2, 2], &f32s(&[1.0, 2.0, 3.0, 4.0])),
                npy("<f4", &[1, 1], &f32s(&[7.0])),
                npy("<f4", &[1, 2], &f32s(&[5.0, 6.0])),
            ],
        );
        let s = NpyConfig {
            regression: true,
            ..two
        }
        .load(1 << 20)
        .unwrap();
        assert_eq!((s.train.num_classes(), s.train.len()), (2, 2));
        // Hostile: NaN, too few rows, a third dimension, another width for the test set,
        // classes on a regression set; one line each, naming the file.
        for (labels, test_labels, classes, says) in [
            (
                npy("<f8", &[3], &f64s(&[0.5, f64::NAN, 1.0])),
                npy("<f4", &[1], &f32s(&[1.0])),
                None,
                "target 0 of sample 1",
            ),
            (
                npy("<f8", &[3], &f64s(&[0.5, 1e300, 1.0])),
                npy("<f4", &[1], &f32s(&[1.0])),
                None,
                "not finite in f32",
            ),
            (
                npy("<f4", &[2], &f32s(&[0.5, 1.0])),
                npy("<f4", &[1], &f32s(&[1.0])),
                None,
                "3 samples but 2 rows of targets",
            ),
            (
                npy("<f4", &[3, 1, 1], &f32s(&[0.5, 1.0, 2.0])),
                npy("<f4", &[1], &f32s(&[1.0])),
                None,
                "shape [n] or [n, k]",
            ),
            (
                npy("<f4", &[3], &f32s(&[0.5, 1.0, 2.0])),
                npy("<f4", &[1, 2], &f32s(&[1.0, 2.0])),
                None,
                "has 1 targets per sample",
            ),
            (
                npy("<f4", &[3], &f32s(&[0.5, 1.0, 2.0])),
                npy("<f4", &[1], &f32s(&[1.0])),
                Some(3),
                "has no classes",
            ),
        ] {
            let mut c = write_four(
                dir.path(),
                [
                    npy("<f4", &[3, 2], &f32s(&[1.0; 6])),
                    labels,
                    npy("<f4", &[1, 2], &f32s(&[7.0, 8.0])),
                    test_labels,
                ],
            );
            c.regression = true;
            c.classes = classes;
            let e = c.load(1 << 20).unwrap_err().to_string();
            assert!(e.contains(says) && !e.contains('\n'), "{says}: {e}");
        }
    }
}
