//! A data set of the program's own, registered by name (`[data] dataset = "digits-images"`):
//! the digits tables read as 8x8 one-channel images with pixel counts scaled to [0, 1], the
//! shape braid's convolutional models take. braid's CSV parser does the strict reading; this
//! file decides what the columns mean.

use std::path::{Path, PathBuf};

use braid::braid_data::csv_table::parse_table;
use braid::braid_data::dataset::{DataSplit, Dataset, Features};
use braid::braid_data::registered::DatasetKind;
use braid::braid_data::DataError;

/// The data set.
pub struct DigitsImages;

/// Its options: the `[data]` table's keys besides `dataset`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DigitsImagesOptions {
    /// The training table.
    train: PathBuf,
    /// The test table.
    test: PathBuf,
    /// The largest pixel count (the digits tables count 0 to 16).
    #[serde(default = "sixteen")]
    max_count: f32,
}

fn sixteen() -> f32 {
    16.0
}

impl DigitsImages {
    fn read(path: &Path, max_count: f32) -> Result<Dataset, DataError> {
        let raw = braid::braid_data::read_bounded(path, braid::braid_data::max_file_bytes())?;
        let malformed = |why: String| DataError::Malformed {
            path: path.to_path_buf(),
            format: "digits CSV",
            why,
        };
        let table = parse_table(&raw, "label", None).map_err(malformed)?;
        if table.features.len() != 64 {
            return Err(malformed(format!(
                "{} feature columns; an 8x8 image has 64",
                table.features.len()
            )));
        }
        if let Some(v) = table
            .values
            .iter()
            .find(|v| !(0.0..=max_count).contains(*v))
        {
            return Err(malformed(format!(
                "pixel count {v} is not between 0 and {max_count}"
            )));
        }
        let pixels = table.values.iter().map(|v| v / max_count).collect();
        Dataset::new(Features::F32(pixels), table.labels, vec![1, 8, 8], 10)
    }
}

impl DatasetKind for DigitsImages {
    type Options = DigitsImagesOptions;

    fn load(&self, o: &DigitsImagesOptions, _seed: u64) -> Result<DataSplit, DataError> {
        if !(o.max_count > 0.0 && o.max_count.is_finite()) {
            return Err(DataError::BadConfig {
                field: "max_count",
                why: format!("{} is not a positive number", o.max_count),
            });
        }
        Ok(DataSplit {
            train: Self::read(&o.train, o.max_count)?,
            test: Self::read(&o.test, o.max_count)?,
        })
    }

    fn describe(&self, name: &str, o: &DigitsImagesOptions) -> String {
        format!(
            "{name}: {} and {} as 8x8 images",
            o.train.display(),
            o.test.display()
        )
    }
}
