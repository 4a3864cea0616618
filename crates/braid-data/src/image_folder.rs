//! Image folders: one subfolder per class of PNG or JPEG files (the layout torchvision's
//! `ImageFolder` reads), for a training set and a test set.
//!
//! Classes are the training folder's subfolders in name order (label 0 is the first); the test
//! folder must have the same subfolders. Files are read in name order. Every image is
//! converted to `channels` (1: grey, 3: RGB; an alpha channel is dropped) and, with `size`,
//! resized to `[height, width]` (bilinear); without `size` every image must have the first
//! one's size. Samples are bytes `[channels, height, width]`, scaled by 1/255 when batched.
//!
//! Strict: a file that is not PNG or JPEG by its extension, an image that does not decode, a
//! class folder with no images, anything but folders at the top and files inside them, are
//! each refused with one line naming the file. Sizes are bounded before decoding: each file by
//! [`crate::max_file_bytes`], each image's declared width and height by [`MAX_SIDE`], and all
//! samples together by `max_bytes`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::dataset::{DataSplit, Dataset, Features, Label};
use crate::DataError;

/// `[data] dataset = "image-folder"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageFolderConfig {
    /// The training images: a folder of class folders.
    pub train: PathBuf,
    /// The test images: a folder with the same class folders.
    pub test: PathBuf,
    /// Channels per sample: 1 (grey) or 3 (RGB).
    #[serde(default = "default_channels")]
    pub channels: usize,
    /// Resize every image to `[height, width]`; without it, all images must be one size.
    #[serde(default)]
    pub size: Option<[usize; 2]>,
}

fn default_channels() -> usize {
    3
}

/// The largest width or height an image may declare, or be resized to.
pub const MAX_SIDE: u32 = 8192;

/// The extensions read as images (compared without case).
const EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

impl ImageFolderConfig {
    /// Reads both folders; the samples of each take at most `max_bytes`.
    pub fn load(&self, max_bytes: u64) -> Result<DataSplit, DataError> {
        let bad = |field: &'static str, why: String| DataError::BadConfig { field, why };
        if self.channels != 1 && self.channels != 3 {
            return Err(bad(
                "channels",
                format!("{} is not 1 (grey) or 3 (RGB)", self.channels),
            ));
        }
        if let Some([h, w]) = self.size {
            if h == 0 || w == 0 || h > MAX_SIDE as usize || w > MAX_SIDE as usize {
                return Err(bad(
                    "size",
                    format!("[{h}, {w}] is not between [1, 1] and [{MAX_SIDE}, {MAX_SIDE}]"),
                ));
            }
        }
        let classes = class_folders(&self.train)?;
        let test_classes = class_folders(&self.test)?;
        let names = |c: &[(String, PathBuf)]| c.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
        if names(&classes) != names(&test_classes) {
            return Err(DataError::Mismatch(format!(
                "{} has class folders {:?} but {} has {:?}; both need the same",
                self.train.display(),
                names(&classes),
                self.test.display(),
                names(&test_classes)
            )));
        }
        let train = self.read_set(&classes, None, max_bytes)?;
        let shape = [train.sample_shape()[1], train.sample_shape()[2]];
        let test = self.read_set(&test_classes, Some(shape), max_bytes)?;
        Ok(DataSplit { train, test })
    }

    /// Reads one folder's images; `shape` is the size every image must have when not resized
    /// (the training set's, for the test set).
    fn read_set(
        &self, classes: &[(String, PathBuf)], shape: Option<[usize; 2]>, max_bytes: u64,
    ) -> Result<Dataset, DataError> {
        let mut shape = self.size.or(shape);
        let (mut data, mut labels) = (Vec::new(), Vec::new());
        for (label, (_, dir)) in classes.iter().enumerate() {
            let files = image_files(dir)?;
            for path in files {
                let [h, w] = self.read_image(&path, &mut shape, &mut data)?;
                debug_assert!(h > 0 && w > 0);
                if data.len() as u64 > max_bytes {
                    return Err(DataError::TooLarge {
                        path: dir.clone(),
                        size: data.len() as u64,
                        max: max_bytes,
                    });
                }
                labels.push(label as Label);
            }
        }
        let [h, w] = shape.unwrap_or([1, 1]);
        Dataset::new(
            Features::U8 {
                data,
                scale: 1.0 / 255.0,
            },
            labels,
            vec![self.channels, h, w],
            classes.len(),
        )
    }

    /// Decodes one image, converts and resizes it, and appends it channel by channel to
    /// `out`; fixes `shape` from the first image when no size was set.
    fn read_image(
        &self, path: &Path, shape: &mut Option<[usize; 2]>, out: &mut Vec<u8>,
    ) -> Result<[usize; 2], DataError> {
        let bad = |why: String| DataError::Malformed {
            path: path.to_owned(),
            format: "PNG or JPEG",
            why,
        };
        let raw = crate::read_bounded(path, crate::max_file_bytes())?;
        let mut reader = image::ImageReader::new(std::io::Cursor::new(raw))
            .with_guessed_format()
            .map_err(|e| bad(e.to_string()))?;
        let mut limits = image::Limits::default();
        limits.max_image_width = Some(MAX_SIDE);
        limits.max_image_height = Some(MAX_SIDE);
        reader.limits(limits);
        let img = reader.decode().map_err(|e| bad(e.to_string()))?;
        let (w0, h0) = (img.width() as usize, img.height() as usize);
        let [h, w] = *shape.get_or_insert([h0, w0]);
        let img = if (h0, w0) == (h, w) {
            img
        } else if self.size.is_some() {
            img.resize_exact(w as u32, h as u32, image::imageops::FilterType::Triangle)
        } else {
            return Err(bad(format!(
                "{w0}x{h0} pixels, but the first image is {w}x{h}; set data.size = [height, width] to resize them all"
            )));
        };
        let pixels = match self.channels {
            1 => img.into_luma8().into_raw(),
            _ => img.into_rgb8().into_raw(),
        };
        // Interleaved (h, w, c) to planes (c, h, w).
        let c = self.channels;
        out.reserve(pixels.len());
        for ch in 0..c {
            out.extend(pixels.iter().skip(ch).step_by(c));
        }
        Ok([h, w])
    }
}

/// A folder's entries in name order, each checked to be a regular folder or file by `want_dir`;
/// hidden entries (a leading '.') are skipped. None is an error that says `if_none`.
fn entries(dir: &Path, want_dir: bool, if_none: &str) -> Result<Vec<(String, PathBuf)>, DataError> {
    let io = |source| DataError::Io {
        path: dir.to_owned(),
        source,
    };
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).map_err(io)? {
        let e = e.map_err(io)?;
        let path = e.path();
        let Some(name) = e.file_name().to_str().map(str::to_owned) else {
            return Err(malformed(path, "the name is not UTF-8"));
        };
        if name.starts_with('.') {
            continue;
        }
        let kind = e.file_type().map_err(io)?;
        if want_dir != kind.is_dir() || kind.is_symlink() {
            return Err(malformed(
                path,
                if want_dir {
                    "not a class folder (the top level holds one folder per class)"
                } else {
                    "not an image file (a class folder holds PNG or JPEG files only)"
                },
            ));
        }
        out.push((name, path));
    }
    if out.is_empty() {
        return Err(malformed(dir.to_owned(), if_none));
    }
    out.sort();
    Ok(out)
}

/// The error for a malformed image folder at `path`.
fn malformed(path: PathBuf, why: impl Into<String>) -> DataError {
    DataError::Malformed {
        path,
        format: "image folder",
        why: why.into(),
    }
}

fn class_folders(dir: &Path) -> Result<Vec<(String, PathBuf)>, DataError> {
    entries(dir, true, "no class folders")
}

fn image_files(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    entries(dir, false, "a class folder with no images")?
        .into_iter()
        .map(|(name, path)| {
            let ext = name.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase());
            if ext.is_some_and(|e| EXTENSIONS.contains(&e.as_str())) {
                Ok(path)
            } else {
                Err(malformed(path, "not a .png, .jpg or .jpeg file"))
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(path: &Path, w: u32, h: u32, rgb: [u8; 3]) {
        image::RgbImage::from_pixel(w, h, image::Rgb(rgb))
            .save(path)
            .unwrap();
    }

    /// `root/{train,test}/{cat,dog}/` with two and one images each.
    fn folders(root: &Path, sizes: (u32, u32)) -> ImageFolderConfig {
        for (set, n) in [("train", 2), ("test", 1)] {
            for (class, colour) in [("cat", [255, 0, 0]), ("dog", [0, 0, 255])] {
                let d = root.join(set).join(class);
                std::fs::create_dir_all(&d).unwrap();
                for i in 0..n {
                    png(&d.join(format!("{i}.png")), sizes.0, sizes.1, colour);
                }
            }
        }
        ImageFolderConfig {
            train: root.join("train"),
            test: root.join("test"),
            channels: 3,
            size: None,
        }
    }

    #[test]
    fn reads_classes_in_name_order_as_channel_planes() {
        let dir = tempfile::tempdir().unwrap();
        let c = folders(dir.path(), (4, 3));
        let s = c.load(1 << 30).unwrap();
        assert_eq!(s.train.len(), 4);
        assert_eq!(s.test.len(), 2);
        assert_eq!(s.train.sample_shape(), &[3, 3, 4]);
        assert_eq!(s.train.labels(), &[0, 0, 1, 1]);
        let (mut x, mut y) = (Vec::new(), Vec::new());
        s.train.gather(&[0, 2], &mut x, &mut y);
        // a red cat: the red plane is 1, the others 0; a blue dog the other way
        assert!(x[..12].iter().all(|&v| v == 1.0) && x[12..36].iter().all(|&v| v == 0.0));
        assert!(x[36 + 24..].iter().all(|&v| v == 1.0));
        let grey = ImageFolderConfig {
            channels: 1,
            size: Some([2, 2]),
            ..c
        }
        .load(1 << 30)
        .unwrap();
        assert_eq!(grey.test.sample_shape(), &[1, 2, 2]);
    }

    #[test]
    fn hostile_folders_are_refused_with_the_file_named() {
        let dir = tempfile::tempdir().unwrap();
        let c = folders(dir.path(), (4, 3));
        let err = |c: &ImageFolderConfig| c.load(1 << 30).unwrap_err().to_string();
        // another size without data.size
        png(&dir.path().join("train/dog/9.png"), 5, 3, [0, 0, 0]);
        assert!(
            err(&c).contains("9.png") && err(&c).contains("data.size"),
            "{}",
            err(&c)
        );
        std::fs::remove_file(dir.path().join("train/dog/9.png")).unwrap();
        // a truncated PNG
        let raw = std::fs::read(dir.path().join("train/cat/0.png")).unwrap();
        std::fs::write(dir.path().join("train/cat/0.png"), &raw[..raw.len() / 2]).unwrap();
        assert!(err(&c).contains("0.png"), "{}", err(&c));
        std::fs::write(dir.path().join("train/cat/0.png"), &raw).unwrap();
        // not an image, a stray file at the top, other classes in test, an empty class
        std::fs::write(dir.path().join("train/cat/notes.txt"), b"x").unwrap();
        assert!(err(&c).contains("notes.txt"), "{}", err(&c));
        std::fs::remove_file(dir.path().join("train/cat/notes.txt")).unwrap();
        std::fs::write(dir.path().join("train/readme"), b"x").unwrap();
        assert!(err(&c).contains("readme"), "{}", err(&c));
        std::fs::remove_file(dir.path().join("train/readme")).unwrap();
        std::fs::create_dir(dir.path().join("test/emu")).unwrap();
        assert!(err(&c).contains("same"), "{}", err(&c));
        std::fs::create_dir(dir.path().join("train/emu")).unwrap();
        assert!(err(&c).contains("no images"), "{}", err(&c));
        // a PNG header declaring an image far larger than MAX_SIDE
        let mut huge = raw.clone();
        huge[16..20].copy_from_slice(&1_000_000u32.to_be_bytes());
        std::fs::write(dir.path().join("train/emu/big.png"), &huge).unwrap();
        std::fs::write(dir.path().join("test/emu/0.png"), &raw).unwrap();
        assert!(err(&c).contains("big.png"), "{}", err(&c));
        // bad options
        let c3 = ImageFolderConfig {
            channels: 2,
            ..c.clone()
        };
        assert!(err(&c3).contains("channels"));
        let c4 = ImageFolderConfig {
            size: Some([0, 4]),
            ..c
        };
        assert!(err(&c4).contains("size"));
    }
}
