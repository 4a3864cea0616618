//! An in-memory labelled data set.
//!
//! Images are kept as bytes (a quarter of the memory of `f32`) and scaled to `f32` only when a
//! batch is assembled; synthetic features are kept as `f32`.

use crate::DataError;

/// Feature storage.
#[derive(Debug, Clone, PartialEq)]
pub enum Features {
    /// Bytes, turned into `f32` as `byte * scale` when batched (images: scale = 1/255).
    U8 {
        /// Row-major values, `sample_len` per sample.
        data: Vec<u8>,
        /// Multiplier applied when converting to `f32`.
        scale: f32,
    },
    /// Plain `f32` values, `sample_len` per sample.
    F32(Vec<f32>),
}

/// What a data set's samples are for, which sets what a model is trained to output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Task {
    /// One label per sample, one of `num_classes`: cross-entropy, accuracy.
    #[default]
    Classify,
    /// A sample is `T + 1` tokens (byte values `0..num_classes`): the model reads the first
    /// `T` and predicts each next one (`[batch * T, num_classes]` logits, position by position);
    /// cross-entropy per token (perplexity is its exponential), next-token accuracy. The
    /// label is unused.
    NextToken,
    /// Each sample has `num_classes` real-valued targets ([`Dataset::targets`]): the model
    /// outputs `[batch, num_classes]` values; mean squared error. The label is unused.
    Regress,
}

/// Class labels are `u32`: any number of classes up to [`MAX_CLASSES`].
pub type Label = u32;

/// The most classes a data set may have (a limit on the per-class tables partitioners and
/// metrics allocate, not on the label type).
pub const MAX_CLASSES: usize = 1 << 24;

/// A labelled data set held in memory.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    features: Features,
    labels: Vec<Label>,
    sample_shape: Vec<usize>,
    num_classes: usize,
    groups: Option<Vec<u32>>,
    task: Task,
    /// `num_classes` values per sample for [`Task::Regress`], else empty.
    targets: Vec<f32>,
}

/// A training set and a test set of the same shape.
#[derive(Debug, Clone, PartialEq)]
pub struct DataSplit {
    /// Training samples, split over clients.
    pub train: Dataset,
    /// Held-out samples for evaluation.
    pub test: Dataset,
}

impl Dataset {
    /// Builds a data set, checking that features, labels and shape agree.
    pub fn new(
        features: Features, labels: Vec<Label>, sample_shape: Vec<usize>, num_classes: usize,
    ) -> Result<Self, DataError> {
        if num_classes == 0 || num_classes > MAX_CLASSES {
            return Err(DataError::Mismatch(format!(
                "{num_classes} classes is not between 1 and {MAX_CLASSES}"
            )));
        }
        let sample_len: usize = sample_shape.iter().product();
        let values = match &features {
            Features::U8 { data, .. } => data.len(),
            Features::F32(data) => data.len(),
        };
        if sample_len == 0 || values != sample_len * labels.len() {
            return Err(DataError::Mismatch(format!(
                "{} labels with samples of shape {sample_shape:?} need {} feature values, got {values}",
                labels.len(),
                sample_len * labels.len()
            )));
        }
        if let Some((i, l)) = labels
            .iter()
            .enumerate()
            .find(|(_, &l)| l as usize >= num_classes)
        {
            return Err(DataError::Mismatch(format!(
                "label {l} at sample {i} is not below the {num_classes} classes"
            )));
        }
        Ok(Self {
            features,
            labels,
            sample_shape,
            num_classes,
            groups: None,
            task: Task::Classify,
            targets: Vec::new(),
        })
    }

    /// A regression set: `outputs` finite targets per sample (`targets` row by row).
    pub fn regression(
        features: Features, targets: Vec<f32>, sample_shape: Vec<usize>, outputs: usize,
    ) -> Result<Self, DataError> {
        if outputs == 0 || outputs > MAX_CLASSES {
            return Err(DataError::Mismatch(format!(
                "{outputs} targets per sample is not between 1 and {MAX_CLASSES}"
            )));
        }
        if !targets.len().is_multiple_of(outputs) {
            return Err(DataError::Mismatch(format!(
                "{} target values are not a whole number of rows of {outputs}",
                targets.len()
            )));
        }
        if let Some(i) = targets.iter().position(|v| !v.is_finite()) {
            return Err(DataError::Mismatch(format!(
                "target {} of sample {} is not finite",
                i % outputs,
                i / outputs
            )));
        }
        let n = targets.len() / outputs;
        let mut set = Self::new(features, vec![0; n], sample_shape, outputs)?;
        set.task = Task::Regress;
        set.targets = targets;
        Ok(set)
    }

    /// The regression targets, `num_classes` per sample (empty for other tasks).
    pub fn targets(&self) -> &[f32] {
        &self.targets
    }

    /// Appends the regression targets of samples `idx` to `out`.
    pub fn gather_targets(&self, idx: &[usize], out: &mut Vec<f32>) {
        let k = self.num_classes;
        if self.targets.len() != k * self.len() {
            return;
        }
        out.reserve(idx.len() * k);
        for &i in idx {
            out.extend_from_slice(&self.targets[i * k..(i + 1) * k]);
        }
    }

    /// The same data for another task (not for [`Task::Regress`], which needs targets: see
    /// [`Dataset::regression`]; asked for it, a set without targets stays as it is).
    pub fn with_task(mut self, task: Task) -> Self {
        if task != Task::Regress || self.targets.len() == self.num_classes * self.len() {
            self.task = task;
        }
        self
    }

    /// What the samples are for.
    pub fn task(&self) -> Task {
        self.task
    }

    /// Attaches a natural grouping (e.g. the generating client of a synthetic sample).
    pub fn with_groups(mut self, groups: Vec<u32>) -> Result<Self, DataError> {
        if groups.len() != self.labels.len() {
            return Err(DataError::Mismatch(format!(
                "{} group ids for {} samples",
                groups.len(),
                self.labels.len()
            )));
        }
        self.groups = Some(groups);
        Ok(self)
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True when the set holds no samples.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Shape of one sample, e.g. `[1, 28, 28]`.
    pub fn sample_shape(&self) -> &[usize] {
        &self.sample_shape
    }

    /// Number of values in one sample.
    pub fn sample_len(&self) -> usize {
        self.sample_shape.iter().product()
    }

    /// Number of classes.
    pub fn num_classes(&self) -> usize {
        self.num_classes
    }

    /// All labels.
    pub fn labels(&self) -> &[Label] {
        &self.labels
    }

    /// The natural grouping, if the source has one.
    pub fn groups(&self) -> Option<&[u32]> {
        self.groups.as_deref()
    }

    /// Appends the features of samples `idx` (as `f32`) to `x` and their labels to `y`.
    /// Indices come from partitioners over this set; an out-of-range index is a bug, and panics.
    pub fn gather(&self, idx: &[usize], x: &mut Vec<f32>, y: &mut Vec<i64>) {
        let len = self.sample_len();
        x.reserve(idx.len() * len);
        for &i in idx {
            match &self.features {
                Features::U8 { data, scale } => x.extend(
                    data[i * len..(i + 1) * len]
                        .iter()
                        .map(|&b| f32::from(b) * scale),
                ),
                Features::F32(data) => x.extend_from_slice(&data[i * len..(i + 1) * len]),
            }
            y.push(i64::from(self.labels[i]));
        }
    }

    /// The same samples with every label `l` replaced by `classes - 1 - l`: the data a
    /// label-flipping attacker trains on.
    pub fn with_labels_flipped(&self) -> Self {
        let mut flipped = self.clone();
        let top = self.num_classes().saturating_sub(1);
        for l in &mut flipped.labels {
            *l = Label::try_from(top.saturating_sub(*l as usize)).unwrap_or(0);
        }
        flipped
    }

    /// A new data set holding samples `idx`, in that order.
    pub fn select(&self, idx: &[usize]) -> Self {
        let len = self.sample_len();
        let features = match &self.features {
            Features::U8 { data, scale } => Features::U8 {
                data: idx
                    .iter()
                    .flat_map(|&i| data[i * len..(i + 1) * len].iter().copied())
                    .collect(),
                scale: *scale,
            },
            Features::F32(data) => Features::F32(
                idx.iter()
                    .flat_map(|&i| data[i * len..(i + 1) * len].iter().copied())
                    .collect(),
            ),
        };
        Self {
            features,
            labels: idx.iter().map(|&i| self.labels[i]).collect(),
            sample_shape: self.sample_shape.clone(),
            num_classes: self.num_classes,
            groups: self
                .groups
                .as_ref()
                .map(|g| idx.iter().map(|&i| g[i]).collect()),
            task: self.task,
            targets: {
                let k = self.num_classes;
                if self.targets.len() == k * self.len() {
                    idx.iter()
                        .flat_map(|&i| self.targets[i * k..(i + 1) * k].iter().copied())
                        .collect()
                } else {
                    Vec::new()
                }
            },
        }
    }

    /// The data set as a pair of IDX files (images, labels), the layout Fashion-MNIST ships
    /// in; only for byte images of shape `[1, rows, cols]`.
    pub fn to_idx(&self) -> Result<(Vec<u8>, Vec<u8>), DataError> {
        let (Features::U8 { data, .. }, [1, rows, cols]) =
            (&self.features, self.sample_shape.as_slice())
        else {
            return Err(DataError::Mismatch(format!(
                "only byte images of shape [1, rows, cols] can be written as IDX files (this data has shape {:?})",
                self.sample_shape
            )));
        };
        let dim = |v: usize| {
            u32::try_from(v)
                .map_err(|_| DataError::Mismatch(format!("{v} does not fit an IDX dimension")))
        };
        let images = crate::idx::encode_idx(&[dim(self.len())?, dim(*rows)?, dim(*cols)?], data);
        let labels: Vec<u8> = self
            .labels
            .iter()
            .map(|&l| u8::try_from(l))
            .collect::<Result<_, _>>()
            .map_err(|_| {
                DataError::Mismatch(format!(
                    "IDX label files hold one byte per label; this data has {} classes",
                    self.num_classes
                ))
            })?;
        let labels = crate::idx::encode_idx(&[dim(self.len())?], &labels);
        Ok((images, labels))
    }

    /// Number of samples of each class.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut c = vec![0; self.num_classes];
        for &l in &self.labels {
            c[l as usize] += 1;
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> Dataset {
        Dataset::new(
            Features::U8 {
                data: vec![0, 255, 51, 102],
                scale: 1.0 / 255.0,
            },
            vec![1, 0],
            vec![2],
            2,
        )
        .unwrap()
    }

    #[test]
    fn flipping_labels_maps_l_to_classes_minus_one_minus_l() {
        let d = tiny();
        let f = d.with_labels_flipped();
        assert_eq!(f.labels(), &[0, 1]);
        assert_eq!(f.with_labels_flipped(), d);
        let (mut x, mut x2, mut y) = (Vec::new(), Vec::new(), Vec::new());
        d.gather(&[0, 1], &mut x, &mut y);
        f.gather(&[0, 1], &mut x2, &mut y);
        assert_eq!(x, x2, "features unchanged");
    }

    #[test]
    fn gathers_scaled_batches() {
        let d = tiny();
        let (mut x, mut y) = (Vec::new(), Vec::new());
        d.gather(&[1, 0], &mut x, &mut y);
        assert_eq!(y, vec![0, 1]);
        assert!(
            (x[0] - 0.2).abs() < 1e-6 && (x[1] - 0.4).abs() < 1e-6 && x[2] == 0.0 && x[3] == 1.0
        );
    }

    #[test]
    fn select_keeps_order() {
        let s = tiny().select(&[1]);
        assert_eq!(s.labels(), &[0]);
        assert_eq!(s.len(), 1);
        assert_eq!(s.class_counts(), vec![1, 0]);
    }

    #[test]
    fn rejects_mismatches() {
        assert!(Dataset::new(Features::F32(vec![0.0; 3]), vec![0, 1], vec![2], 2).is_err());
        assert!(Dataset::new(Features::F32(vec![0.0; 4]), vec![0, 2], vec![2], 2).is_err());
        assert!(tiny().with_groups(vec![0]).is_err());
    }
}
