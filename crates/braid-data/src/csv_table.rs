//! Numeric tables in CSV files: a header row, a label column, an optional group column (a
//! natural partition, such as a writer or a hospital), and every other column a feature.
//!
//! Strict: every row has the header's fields; every feature is a finite number; a label is a
//! whole number below 2^24 (the most classes braid takes); a group is a whole number. An error
//! names the file, the line and the column.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::dataset::{DataSplit, Dataset, Features};
use crate::DataError;

/// `[data] dataset = "csv"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CsvConfig {
    /// The training table.
    pub train: PathBuf,
    /// The test table (the same columns).
    pub test: PathBuf,
    /// The label column's name.
    #[serde(default = "default_label")]
    pub label: String,
    /// The group column's name, for `partition.scheme = "natural"` (none by default).
    #[serde(default)]
    pub group: Option<String>,
    /// The number of classes (default: the largest label of both tables, plus one).
    #[serde(default)]
    pub classes: Option<usize>,
    /// The label column is a real-valued target to regress on (mean squared error), not a
    /// class.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub regression: bool,
}

fn default_label() -> String {
    "label".into()
}

/// One table, read.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    /// The feature columns' names.
    pub features: Vec<String>,
    /// Row-major feature values.
    pub values: Vec<f32>,
    /// One label per row.
    pub labels: Vec<crate::Label>,
    /// One group per row, if a group column was named.
    pub groups: Option<Vec<u32>>,
    /// One real-valued target per row, when the label column was read as one (then `labels`
    /// are all 0).
    pub targets: Vec<f32>,
}

/// Parses a CSV table (`raw`, UTF-8) with label column `label` and optional group column.
pub fn parse_table(raw: &[u8], label: &str, group: Option<&str>) -> Result<Table, String> {
    parse_table_as(raw, label, group, false)
}

/// [`parse_table`], reading the label column as real-valued targets when `regression`.
pub fn parse_table_as(
    raw: &[u8], label: &str, group: Option<&str>, regression: bool,
) -> Result<Table, String> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .trim(csv::Trim::All)
        .from_reader(raw);
    let header = reader
        .headers()
        .map_err(|e| format!("the header row: {e}"))?
        .clone();
    let find = |name: &str, what: &str| {
        let mut at = header.iter().enumerate().filter(|(_, h)| *h == name);
        match (at.next(), at.next()) {
            (Some((i, _)), None) => Ok(i),
            (None, _) => Err(format!(
                "no {what} column {name:?} (the columns: {})",
                header.iter().collect::<Vec<_>>().join(", ")
            )),
            (Some(_), Some(_)) => Err(format!("two columns are named {name:?}")),
        }
    };
    let label_at = find(label, "label")?;
    let group_at = group.map(|g| find(g, "group")).transpose()?;
    if group_at == Some(label_at) {
        return Err("the label and group columns are the same".into());
    }
    let feature_at: Vec<usize> = (0..header.len())
        .filter(|i| *i != label_at && Some(*i) != group_at)
        .collect();
    if feature_at.is_empty() {
        return Err("no feature columns".into());
    }
    let mut t = Table {
        features: feature_at.iter().map(|&i| header[i].to_string()).collect(),
        values: Vec::new(),
        labels: Vec::new(),
        groups: group_at.map(|_| Vec::new()),
        targets: Vec::new(),
    };
    for row in reader.records() {
        let row = row.map_err(|e| match e.position() {
            Some(p) => format!("line {}: {}", p.line(), e),
            None => e.to_string(),
        })?;
        let line = row.position().map_or(0, |p| p.line());
        let at = |i: usize| format!("line {line}, column {:?}", &header[i]);
        for &i in &feature_at {
            let v: f32 = row[i]
                .parse()
                .map_err(|_| format!("{}: {:?} is not a number", at(i), &row[i]))?;
            if !v.is_finite() {
                return Err(format!("{}: {} is not a finite number", at(i), &row[i]));
            }
            t.values.push(v);
        }
        if regression {
            let v: f32 = row[label_at].parse().map_err(|_| {
                format!(
                    "{}: target {:?} is not a number",
                    at(label_at),
                    &row[label_at]
                )
            })?;
            if !v.is_finite() {
                return Err(format!(
                    "{}: target {} is not a finite number",
                    at(label_at),
                    &row[label_at]
                ));
            }
            t.targets.push(v);
            t.labels.push(0);
            if let (Some(g), Some(groups)) = (group_at, t.groups.as_mut()) {
                let v: u32 = row[g]
                    .parse()
                    .map_err(|_| format!("{}: group {:?} is not a whole number", at(g), &row[g]))?;
                groups.push(v);
            }
            continue;
        }
        let l: u64 = row[label_at].parse().map_err(|_| {
            format!(
                "{}: label {:?} is not a whole number",
                at(label_at),
                &row[label_at]
            )
        })?;
        let l = crate::Label::try_from(l)
            .ok()
            .filter(|&l| (l as usize) < crate::MAX_CLASSES)
            .ok_or_else(|| {
                format!(
                    "{}: label {l} is not below braid's {} classes at most",
                    at(label_at),
                    crate::MAX_CLASSES
                )
            })?;
        t.labels.push(l);
        if let (Some(g), Some(groups)) = (group_at, t.groups.as_mut()) {
            let v: u32 = row[g]
                .parse()
                .map_err(|_| format!("{}: group {:?} is not a whole number", at(g), &row[g]))?;
            groups.push(v);
        }
    }
    if t.labels.is_empty() {
        return Err("no rows".into());
    }
    Ok(t)
}

impl CsvConfig {
    /// Reads both tables; at most `max_bytes` of each file.
    pub fn load(&self, max_bytes: u64) -> Result<DataSplit, DataError> {
        let read = |path: &Path| -> Result<Table, DataError> {
            let raw = crate::read_bounded(path, max_bytes)?;
            parse_table_as(&raw, &self.label, self.group.as_deref(), self.regression).map_err(
                |why| DataError::Malformed {
                    path: path.to_owned(),
                    format: "CSV",
                    why,
                },
            )
        };
        let (train, test) = (read(&self.train)?, read(&self.test)?);
        if train.features != test.features {
            return Err(DataError::Mismatch(format!(
                "{} and {} have other feature columns ({:?} against {:?})",
                self.train.display(),
                self.test.display(),
                train.features,
                test.features
            )));
        }
        let largest = train.labels.iter().chain(&test.labels).max().copied();
        let classes = match self.classes {
            Some(c) => c,
            None => largest.map_or(1, |l| l as usize + 1),
        };
        if self.regression && self.classes.is_some() {
            return Err(DataError::BadConfig {
                field: "classes",
                why: "a regression table has no classes (data.regression = true)".into(),
            });
        }
        let build = |t: Table| -> Result<Dataset, DataError> {
            let n = t.features.len();
            let d = if self.regression {
                Dataset::regression(Features::F32(t.values), t.targets, vec![n], 1)?
            } else {
                Dataset::new(Features::F32(t.values), t.labels, vec![n], classes)?
            };
            match t.groups {
                Some(g) => d.with_groups(g),
                None => Ok(d),
            }
        };
        Ok(DataSplit {
            train: build(train)?,
            test: build(test)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_reads_with_its_label_and_group_columns_anywhere() {
        let t = parse_table(
            b"a,label, b ,writer\n1,2,3.5,7\n-1e3, 0 ,0,8\n",
            "label",
            Some("writer"),
        )
        .unwrap();
        assert_eq!(t.features, vec!["a", "b"]);
        assert_eq!(t.values, vec![1.0, 3.5, -1000.0, 0.0]);
        assert_eq!(t.labels, vec![2, 0]);
        assert_eq!(t.groups, Some(vec![7, 8]));
        let quoted = parse_table(b"\"x\",\"label\"\n\"1.5\",\"1\"\n", "label", None).unwrap();
        assert_eq!(quoted.values, vec![1.5]);
    }

    #[test]
    fn hostile_tables_are_refused_with_line_and_column() {
        for (raw, want) in [
            (&b"a,label\n1,2\n3\n"[..], "line 3"),
            (
                b"a,label\nx,1\n",
                "line 2, column \"a\": \"x\" is not a number",
            ),
            (b"a,label\nNaN,1\n", "not a finite number"),
            (b"a,label\ninf,1\n", "not a finite number"),
            (
                b"a,label\n1,16777216\n",
                "is not below braid's 16777216 classes",
            ),
            (b"a,label\n1,-1\n", "not a whole number"),
            (b"a,label\n1,1.5\n", "not a whole number"),
            (
                b"a,b\n1,1\n",
                "no label column \"label\" (the columns: a, b)",
            ),
            (b"label\n1\n", "no feature columns"),
            (b"a,label\n", "no rows"),
            (b"", "no label column"),
            (b"a,label,label\n1,2,3\n", "two columns"),
            (b"a,label\n\xff\xfe,1\n", "utf-8"),
        ] {
            let e = parse_table(raw, "label", None).unwrap_err();
            assert!(
                e.to_lowercase().contains(&want.to_lowercase()),
                "{:?}: {e}",
                String::from_utf8_lossy(raw)
            );
        }
        let e = parse_table(b"a,label,g\n1,1,x\n", "label", Some("g")).unwrap_err();
        assert!(e.contains("group \"x\""), "{e}");
    }

    #[test]
    fn train_and_test_files_make_a_split() {
        let dir = tempfile::tempdir().unwrap();
        let (train, test) = (dir.path().join("train.csv"), dir.path().join("test.csv"));
        std::fs::write(&train, "f1,f2,label,site\n0,1,0,3\n1,0,4,3\n1,1,2,5\n").unwrap();
        std::fs::write(&test, "f1,f2,label,site\n0,0,1,1\n").unwrap();
        let c = CsvConfig {
            train: train.clone(),
            test: test.clone(),
            label: "label".into(),
            group: Some("site".into()),
            classes: None,
            regression: false,
        };
        let s = c.load(1 << 20).unwrap();
        assert_eq!((s.train.len(), s.test.len()), (3, 1));
        assert_eq!(s.train.num_classes(), 5);
        assert_eq!(s.train.sample_shape(), &[2]);
        assert_eq!(s.train.groups(), Some(&[3, 3, 5][..]));
        let few = CsvConfig {
            classes: Some(3),
            ..c.clone()
        };
        assert!(few
            .load(1 << 20)
            .unwrap_err()
            .to_string()
            .contains("label 4"));
        std::fs::write(&test, "f1,f3,label,site\n0,0,1,1\n").unwrap();
        let e = c.load(1 << 20).unwrap_err().to_string();
        assert!(e.contains("other feature columns"), "{e}");
        let e = c.load(10).unwrap_err().to_string();
        assert!(e.contains("train.csv") && e.contains("10"), "{e}");
    }

    #[test]
    fn a_label_column_read_as_targets_makes_a_regression_set() {
        let dir = tempfile::tempdir().unwrap();
        let (train, test) = (dir.path().join("train.csv"), dir.path().join("test.csv"));
        std::fs::write(&train, "x,y\n0,0.5\n1,-2.25\n").unwrap();
        std::fs::write(&test, "x,y\n2,1e3\n").unwrap();
        let c = CsvConfig {
            train: train.clone(),
            test,
            label: "y".into(),
            group: None,
            classes: None,
            regression: true,
        };
        let s = c.load(1 << 20).unwrap();
        assert_eq!(s.train.task(), crate::Task::Regress);
        assert_eq!(s.train.targets(), &[0.5, -2.25]);
        assert_eq!(s.test.targets(), &[1000.0]);
        assert_eq!(s.train.select(&[1]).targets(), &[-2.25]);
        std::fs::write(&train, "x,y\n0,NaN\n").unwrap();
        let e = c.load(1 << 20).unwrap_err().to_string();
        assert!(e.contains("not a finite number"), "{e}");
        std::fs::write(&train, "x,y\n0,seven\n").unwrap();
        let e = c.load(1 << 20).unwrap_err().to_string();
        assert!(e.contains("target \"seven\" is not a number"), "{e}");
        let with_classes = CsvConfig {
            classes: Some(2),
            ..c
        };
        assert!(with_classes.load(1 << 20).is_err());
    }
}
