//! A text corpus as byte-level tokens in next-token windows.
//!
//! The file's bytes are the tokens (a vocabulary of 256, no tokenizer). The last
//! `test_fraction` of the file is the test set, the rest the training set; each is cut into
//! windows of `window + 1` bytes that start every `window` bytes (neighbours share one byte, so
//! every byte after the first is a prediction target exactly once). A sample is one window
//! ([`Task::NextToken`]): the model reads its first `window` bytes and predicts each next one.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::dataset::{DataSplit, Dataset, Features, Task};
use crate::DataError;

/// `[data] dataset = "text"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextConfig {
    /// The corpus (any bytes; UTF-8 text in practice): a file, or a folder whose regular files
    /// (not links, not subfolders) are read in name order and joined.
    pub path: PathBuf,
    /// Tokens a model reads per sample (its context length).
    #[serde(default = "default_window")]
    pub window: usize,
    /// The share of the file, at its end, held out for testing.
    #[serde(default = "default_test_fraction")]
    pub test_fraction: f64,
}

fn default_window() -> usize {
    64
}

fn default_test_fraction() -> f64 {
    0.1
}

/// The largest window: a context longer than this is a mistake, not a model.
pub const MAX_WINDOW: usize = 1 << 16;

impl TextConfig {
    /// Reads the corpus (at most `max_bytes`) and cuts it into windows.
    pub fn load(&self, max_bytes: u64) -> Result<DataSplit, DataError> {
        let bad = |field: &'static str, why: String| DataError::BadConfig { field, why };
        if self.window == 0 || self.window > MAX_WINDOW {
            return Err(bad(
                "window",
                format!("{} is not between 1 and {MAX_WINDOW}", self.window),
            ));
        }
        if !(self.test_fraction > 0.0 && self.test_fraction < 1.0) {
            return Err(bad(
                "test_fraction",
                format!(
                    "{} is not between 0 and 1 (both excluded)",
                    self.test_fraction
                ),
            ));
        }
        let bytes = self.read(max_bytes)?;
        let test_len = (bytes.len() as f64 * self.test_fraction).round() as usize;
        let (train, test) = bytes.split_at(bytes.len() - test_len);
        let need = self.window + 1;
        if train.len() < need || test.len() < need {
            return Err(DataError::Malformed {
                path: self.path.clone(),
                format: "text",
                why: format!(
                    "{} bytes make a training part of {} and a test part of {}; each needs at least one window of {need} bytes (window {} + 1)",
                    bytes.len(),
                    train.len(),
                    test.len(),
                    self.window
                ),
            });
        }
        Ok(DataSplit {
            train: windows(train, self.window)?,
            test: windows(test, self.window)?,
        })
    }
}

impl TextConfig {
    /// The corpus's bytes: the file, or the folder's files joined in name order; at most
    /// `max_bytes` in all.
    fn read(&self, max_bytes: u64) -> Result<Vec<u8>, DataError> {
        let io = |source| DataError::Io {
            path: self.path.clone(),
            source,
        };
        if !std::fs::metadata(&self.path).map_err(io)?.is_dir() {
            return crate::read_bounded(&self.path, max_bytes);
        }
        let mut files = Vec::new();
        for entry in std::fs::read_dir(&self.path).map_err(io)? {
            let entry = entry.map_err(io)?;
            if entry.file_type().map_err(io)?.is_file() {
                files.push(entry.path());
            }
        }
        files.sort();
        let mut out = Vec::new();
        for f in files {
            let left = max_bytes.saturating_sub(out.len() as u64);
            out.extend(crate::read_bounded(&f, left)?);
        }
        Ok(out)
    }
}

/// `part` cut into windows of `window + 1` bytes starting every `window` bytes.
fn windows(part: &[u8], window: usize) -> Result<Dataset, DataError> {
    let n = (part.len() - 1) / window;
    let mut data = Vec::with_capacity(n * (window + 1));
    for k in 0..n {
        data.extend_from_slice(&part[k * window..k * window + window + 1]);
    }
    Ok(Dataset::new(
        Features::U8 { data, scale: 1.0 },
        vec![0; n],
        vec![window + 1],
        256,
    )?
    .with_task(Task::NextToken))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &std::path::Path, text: &[u8], window: usize) -> TextConfig {
        let path = dir.join("corpus.txt");
        std::fs::write(&path, text).unwrap();
        TextConfig {
            path,
            window,
            test_fraction: 0.25,
        }
    }

    #[test]
    fn every_byte_after_the_first_is_a_target_once() {
        let dir = tempfile::tempdir().unwrap();
        let text: Vec<u8> = (0..=200u8).collect();
        let split = config(dir.path(), &text, 8).load(1 << 20).unwrap();
        // 201 bytes: the last 50 are the test part.
        assert_eq!(split.train.task(), Task::NextToken);
        assert_eq!(split.train.sample_shape(), &[9]);
        assert_eq!(split.train.num_classes(), 256);
        assert_eq!(split.train.len(), (151 - 1) / 8);
        assert_eq!(split.test.len(), (50 - 1) / 8);
        let (mut x, mut y) = (Vec::new(), Vec::new());
        split.train.gather(&[0, 1], &mut x, &mut y);
        assert_eq!(&x[..9], &[0., 1., 2., 3., 4., 5., 6., 7., 8.]);
        assert_eq!(&x[9..], &[8., 9., 10., 11., 12., 13., 14., 15., 16.]);
        split.test.gather(&[0], &mut x, &mut y);
        assert_eq!(x[18], 151.0);
    }

    #[test]
    fn a_folder_is_its_files_in_name_order_without_links() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("b.txt"), b"world").unwrap();
        std::fs::write(dir.path().join("a.txt"), b"hello ").unwrap();
        std::os::unix::fs::symlink(dir.path().join("a.txt"), dir.path().join("c.txt")).unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let c = TextConfig {
            path: dir.path().to_owned(),
            window: 2,
            test_fraction: 0.5,
        };
        assert_eq!(c.read(1 << 20).unwrap(), b"hello world");
        assert!(c.read(8).is_err(), "the limit holds over all files");
    }

    #[test]
    fn too_short_and_bad_settings_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let e = config(dir.path(), b"short text", 8)
            .load(1 << 20)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("corpus.txt") && e.contains("window of 9 bytes"),
            "{e}"
        );
        let mut c = config(dir.path(), &[b'a'; 1000], 0);
        assert!(c.load(1 << 20).unwrap_err().to_string().contains("window"));
        c.window = 4;
        c.test_fraction = 1.0;
        assert!(c
            .load(1 << 20)
            .unwrap_err()
            .to_string()
            .contains("test_fraction"));
        c.test_fraction = 0.5;
        let e = c.load(100).unwrap_err().to_string();
        assert!(e.contains("1000") || e.contains("100"), "{e}");
        c.path = dir.path().join("missing.txt");
        assert!(c
            .load(1 << 20)
            .unwrap_err()
            .to_string()
            .contains("missing.txt"));
    }
}
