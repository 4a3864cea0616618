//! CIFAR-10 and CIFAR-100 in their binary format (Krizhevsky 2009: "cifar-10-binary.tar.gz",
//! "cifar-100-binary.tar.gz", unpacked).
//!
//! Each file is a sequence of records: the label byte (CIFAR-100: the coarse label, then the
//! fine label) and a 32x32 colour image as 3072 bytes, the red plane, then green, then blue,
//! each row by row: a `[3, 32, 32]` sample as braid stores images. CIFAR-10's training set is
//! `data_batch_1.bin` to `data_batch_5.bin` and its test set `test_batch.bin`; CIFAR-100's are
//! `train.bin` and `test.bin`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::dataset::{DataSplit, Dataset, Features};
use crate::DataError;

/// `[data] dataset = "cifar"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CifarConfig {
    /// Which set: `"cifar-10"`, `"cifar-100"` (fine labels) or `"cifar-100-coarse"`.
    pub set: Cifar,
    /// The directory of the binary files (`cifar-10-batches-bin` or `cifar-100-binary`).
    pub dir: PathBuf,
    /// Use only the first `train_limit` training samples.
    #[serde(default)]
    pub train_limit: Option<usize>,
    /// Use only the first `test_limit` test samples.
    #[serde(default)]
    pub test_limit: Option<usize>,
}

/// Bytes of one image.
pub const IMAGE_BYTES: usize = 3 * 32 * 32;

/// Which CIFAR set, and for CIFAR-100 which labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Cifar {
    /// CIFAR-10: 10 classes.
    #[serde(rename = "cifar-10")]
    Cifar10,
    /// CIFAR-100 with its 100 fine labels.
    #[serde(rename = "cifar-100")]
    Cifar100,
    /// CIFAR-100 with its 20 coarse labels (superclasses).
    #[serde(rename = "cifar-100-coarse")]
    Cifar100Coarse,
}

impl Cifar {
    /// Label bytes before each image.
    fn label_bytes(self) -> usize {
        match self {
            Self::Cifar10 => 1,
            Self::Cifar100 | Self::Cifar100Coarse => 2,
        }
    }

    /// The number of classes.
    pub fn classes(self) -> usize {
        match self {
            Self::Cifar10 => 10,
            Self::Cifar100 => 100,
            Self::Cifar100Coarse => 20,
        }
    }

    /// The files of the training set and of the test set.
    pub fn files(self) -> (&'static [&'static str], &'static [&'static str]) {
        match self {
            Self::Cifar10 => (
                &[
                    "data_batch_1.bin",
                    "data_batch_2.bin",
                    "data_batch_3.bin",
                    "data_batch_4.bin",
                    "data_batch_5.bin",
                ],
                &["test_batch.bin"],
            ),
            Self::Cifar100 | Self::Cifar100Coarse => (&["train.bin"], &["test.bin"]),
        }
    }

    /// Parses one file's records into images (appended to `images`) and labels.
    pub fn parse(
        self, raw: &[u8], images: &mut Vec<u8>, labels: &mut Vec<crate::Label>,
    ) -> Result<(), String> {
        let lb = self.label_bytes();
        let record = lb + IMAGE_BYTES;
        if raw.is_empty() || !raw.len().is_multiple_of(record) {
            return Err(format!(
                "{} bytes is not a whole number of {record}-byte records",
                raw.len()
            ));
        }
        let classes = self.classes();
        for (i, r) in raw.chunks_exact(record).enumerate() {
            let label = match self {
                Self::Cifar10 | Self::Cifar100Coarse => r[0],
                Self::Cifar100 => r[1],
            };
            if usize::from(label) >= classes {
                return Err(format!(
                    "record {i} has label {label}, not below the {classes} classes"
                ));
            }
            labels.push(label.into());
            images.extend_from_slice(&r[lb..]);
        }
        Ok(())
    }

    /// Reads the set's training and test files from `dir`.
    pub fn load(self, dir: &Path, max_bytes: u64) -> Result<DataSplit, DataError> {
        let (train, test) = self.files();
        Ok(DataSplit {
            train: self.read(dir, train, max_bytes)?,
            test: self.read(dir, test, max_bytes)?,
        })
    }

    fn read(self, dir: &Path, files: &[&str], max_bytes: u64) -> Result<Dataset, DataError> {
        let (mut images, mut labels) = (Vec::new(), Vec::new());
        for name in files {
            let path = dir.join(name);
            if !path.is_file() {
                return Err(DataError::NotFound(format!(
                    "{}: no {name} (the {} binary files: {})",
                    dir.display(),
                    self.name(),
                    [self.files().0, self.files().1].concat().join(", ")
                )));
            }
            let raw = crate::read_bounded(&path, max_bytes)?;
            self.parse(&raw, &mut images, &mut labels)
                .map_err(|why| DataError::Malformed {
                    path,
                    format: self.name(),
                    why,
                })?;
        }
        let features = Features::U8 {
            data: images,
            scale: 1.0 / 255.0,
        };
        Dataset::new(features, labels, vec![3, 32, 32], self.classes())
    }

    /// The set's name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Cifar10 => "CIFAR-10",
            Self::Cifar100 | Self::Cifar100Coarse => "CIFAR-100",
        }
    }
}

/// Writes records in the binary format (the coarse label of a CIFAR-100 record is the fine
/// label modulo 20): for tests and for making small data sets in the format.
pub fn encode(set: Cifar, images: &[u8], labels: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(labels.len() * (set.label_bytes() + IMAGE_BYTES));
    for (l, img) in labels.iter().zip(images.chunks_exact(IMAGE_BYTES)) {
        match set {
            Cifar::Cifar10 => out.push(*l),
            Cifar::Cifar100 => out.extend_from_slice(&[l % 20, *l]),
            Cifar::Cifar100Coarse => out.extend_from_slice(&[*l, *l]),
        }
        out.extend_from_slice(img);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn images(n: usize) -> Vec<u8> {
        (0..n * IMAGE_BYTES).map(|i| (i * 7 % 251) as u8).collect()
    }

    #[test]
    fn cifar10_files_read_as_rgb_images() {
        let dir = tempfile::tempdir().unwrap();
        let (train, test) = Cifar::Cifar10.files();
        for (k, name) in train.iter().chain(test).enumerate() {
            let labels = [k as u8, 9];
            let bytes = encode(Cifar::Cifar10, &images(2), &labels);
            std::fs::write(dir.path().join(name), bytes).unwrap();
        }
        let s = Cifar::Cifar10.load(dir.path(), 1 << 20).unwrap();
        assert_eq!((s.train.len(), s.test.len()), (10, 2));
        assert_eq!(s.train.sample_shape(), &[3, 32, 32]);
        assert_eq!(s.train.labels()[..4], [0, 9, 1, 9]);
        assert_eq!(s.test.labels(), &[5, 9]);
        let (mut x, mut y) = (Vec::new(), Vec::new());
        s.train.gather(&[1], &mut x, &mut y);
        // The second image of the first file: its first red pixel is value 3072*7 % 251.
        assert_eq!(x[0], (IMAGE_BYTES * 7 % 251) as f32 / 255.0);
    }

    #[test]
    fn cifar100_reads_fine_or_coarse_labels() {
        let raw = encode(Cifar::Cifar100, &images(2), &[57, 3]);
        let (mut im, mut fine, mut coarse) = (Vec::new(), Vec::new(), Vec::new());
        Cifar::Cifar100.parse(&raw, &mut im, &mut fine).unwrap();
        Cifar::Cifar100Coarse
            .parse(&raw, &mut Vec::new(), &mut coarse)
            .unwrap();
        assert_eq!((fine, coarse), (vec![57, 3], vec![57 % 20, 3]));
        assert_eq!(im, images(2));
    }

    #[test]
    fn hostile_files_are_refused_by_name() {
        let good = encode(Cifar::Cifar10, &images(2), &[1, 2]);
        for cut in [0, 1, IMAGE_BYTES, good.len() - 1] {
            let e = Cifar::Cifar10
                .parse(&good[..cut], &mut Vec::new(), &mut Vec::new())
                .unwrap_err();
            assert!(e.contains("records"), "{e}");
        }
        let mut bad = good.clone();
        bad[IMAGE_BYTES + 1] = 10;
        let e = Cifar::Cifar10
            .parse(&bad, &mut Vec::new(), &mut Vec::new())
            .unwrap_err();
        assert!(e.contains("record 1 has label 10"), "{e}");
        // CIFAR-100 records read as CIFAR-10 are refused (3074 bytes do not divide).
        let c100 = encode(Cifar::Cifar100, &images(3), &[1, 2, 3]);
        assert!(Cifar::Cifar10
            .parse(&c100, &mut Vec::new(), &mut Vec::new())
            .is_err());
        let dir = tempfile::tempdir().unwrap();
        let e = Cifar::Cifar100
            .load(dir.path(), 1 << 20)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no train.bin"), "{e}");
        std::fs::write(dir.path().join("train.bin"), &c100[..100]).unwrap();
        let e = Cifar::Cifar100
            .load(dir.path(), 1 << 20)
            .unwrap_err()
            .to_string();
        assert!(e.contains("train.bin") && e.contains("CIFAR-100"), "{e}");
        std::fs::write(dir.path().join("train.bin"), &c100).unwrap();
        let e = Cifar::Cifar100
            .load(dir.path(), 1000)
            .unwrap_err()
            .to_string();
        assert!(e.contains("1000"), "{e}");
    }
}
