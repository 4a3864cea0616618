//! A strict reader for NumPy's `.npy` arrays (format versions 1 to 3) and `.npz` archives of
//! them (`numpy.savez` and `numpy.savez_compressed`).
//!
//! A `.npy` file is a magic string, a version, a header length, a header (a Python dict
//! literal: `{'descr': '<f4', 'fortran_order': False, 'shape': (60000, 28, 28), }`) and the
//! values, row-major. The reader takes little-endian (or byte-sized) integers, booleans and
//! floats in C order; it checks that the values the header declares are exactly the bytes that
//! follow before it allocates anything for them.

use std::io::Read;
use std::path::Path;

use crate::DataError;

/// The element types the reader takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    /// `|u1` (or `|b1`, booleans, read as 0 and 1).
    U8,
    /// `|i1`.
    I8,
    /// `<u2`.
    U16,
    /// `<i2`.
    I16,
    /// `<u4`.
    U32,
    /// `<i4`.
    I32,
    /// `<u8`.
    U64,
    /// `<i8`.
    I64,
    /// `<f4`.
    F32,
    /// `<f8`.
    F64,
}

impl Dtype {
    fn parse(descr: &str) -> Result<Self, String> {
        let (order, code) = descr.split_at(descr.len().min(1));
        let t = match code {
            "u1" | "b1" => Self::U8,
            "i1" => Self::I8,
            "u2" => Self::U16,
            "i2" => Self::I16,
            "u4" => Self::U32,
            "i4" => Self::I32,
            "u8" => Self::U64,
            "i8" => Self::I64,
            "f4" => Self::F32,
            "f8" => Self::F64,
            _ => {
                return Err(format!(
                    "dtype {descr:?} is not one of the numeric types braid reads (u1, b1, i1, u2, i2, u4, i4, u8, i8, f4, f8)"
                ))
            }
        };
        match order {
            "<" | "|" | "=" => Ok(t),
            _ if t.size() == 1 => Ok(t),
            _ => Err(format!(
                "dtype {descr:?} is big-endian; save the array little-endian (`a.astype(a.dtype.newbyteorder('<'))`)"
            )),
        }
    }

    /// Bytes per value.
    pub fn size(self) -> usize {
        match self {
            Self::U8 | Self::I8 => 1,
            Self::U16 | Self::I16 => 2,
            Self::U32 | Self::I32 | Self::F32 => 4,
            Self::U64 | Self::I64 | Self::F64 => 8,
        }
    }

    /// True for the float types.
    pub fn is_float(self) -> bool {
        matches!(self, Self::F32 | Self::F64)
    }
}

/// An array read from a `.npy` file: its element type, shape and raw little-endian values.
#[derive(Debug, Clone, PartialEq)]
pub struct NpyArray {
    /// The element type.
    pub dtype: Dtype,
    /// The shape (empty for a scalar).
    pub shape: Vec<usize>,
    data: Vec<u8>,
}

impl NpyArray {
    /// The number of values.
    pub fn len(&self) -> usize {
        self.data.len() / self.dtype.size()
    }

    /// True when the array holds no values.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The raw bytes of a `u1` array; the array itself if it has another type.
    pub fn into_bytes(self) -> Result<Vec<u8>, Self> {
        if self.dtype == Dtype::U8 {
            Ok(self.data)
        } else {
            Err(self)
        }
    }

    /// Every value as `f64`, in order (exact for every type but 64-bit integers beyond 2^53).
    pub fn to_f64(&self) -> Vec<f64> {
        self.values().collect()
    }

    /// Every value as `f32`, in order, without an `f64` copy of the array (values beyond
    /// `f32`'s range become infinite).
    pub fn to_f32(&self) -> Vec<f32> {
        self.values().map(|v| v as f32).collect()
    }

    fn values(&self) -> impl Iterator<Item = f64> + '_ {
        let s = self.dtype.size();
        self.data.chunks_exact(s).map(move |b| {
            let mut w = [0u8; 8];
            w[..s].copy_from_slice(b);
            match self.dtype {
                Dtype::U8 => f64::from(b[0]),
                Dtype::I8 => f64::from(b[0] as i8),
                Dtype::U16 => f64::from(u16::from_le_bytes([w[0], w[1]])),
                Dtype::I16 => f64::from(i16::from_le_bytes([w[0], w[1]])),
                Dtype::U32 => f64::from(u32::from_le_bytes([w[0], w[1], w[2], w[3]])),
                Dtype::I32 => f64::from(i32::from_le_bytes([w[0], w[1], w[2], w[3]])),
                Dtype::F32 => f64::from(f32::from_le_bytes([w[0], w[1], w[2], w[3]])),
                Dtype::U64 => u64::from_le_bytes(w) as f64,
                Dtype::I64 => i64::from_le_bytes(w) as f64,
                Dtype::F64 => f64::from_le_bytes(w),
            }
        })
    }
}

const MAGIC: &[u8; 6] = b"\x93NUMPY";
/// The longest header braid reads (NumPy writes a few hundred bytes).
const MAX_HEADER: usize = 1 << 16;

/// Parses a whole `.npy` file.
pub fn parse_npy(raw: &[u8]) -> Result<NpyArray, String> {
    if raw.len() < 10 || &raw[..6] != MAGIC {
        return Err("no NumPy magic string at the start".into());
    }
    let (header_len, start) = match raw[6] {
        1 => (usize::from(u16::from_le_bytes([raw[8], raw[9]])), 10),
        2 | 3 => {
            let b = raw.get(8..12).ok_or("truncated in the header length")?;
            let n = u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize;
            (n, 12)
        }
        v => return Err(format!("format version {v} (braid reads 1, 2 and 3)")),
    };
    if header_len > MAX_HEADER {
        return Err(format!(
            "a header of {header_len} bytes (at most {MAX_HEADER})"
        ));
    }
    let header = raw
        .get(start..start + header_len)
        .ok_or_else(|| format!("truncated: a header of {header_len} bytes is announced"))?;
    let header = std::str::from_utf8(header).map_err(|_| "the header is not text")?;
    let (dtype, fortran, shape) = parse_header(header)?;
    if fortran {
        return Err(
            "the array is in Fortran order; save it in C order (`np.ascontiguousarray`)".into(),
        );
    }
    let body = &raw[start + header_len..];
    let count = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or("the shape's size overflows")?;
    let bytes = count
        .checked_mul(dtype.size())
        .ok_or("the shape's size overflows")?;
    if body.len() != bytes {
        return Err(format!(
            "shape {shape:?} of {} declares {bytes} bytes of values, the file holds {}",
            dtype_name(dtype),
            body.len()
        ));
    }
    Ok(NpyArray {
        dtype,
        shape,
        data: body.to_vec(),
    })
}

fn dtype_name(d: Dtype) -> &'static str {
    match d {
        Dtype::U8 => "u1",
        Dtype::I8 => "i1",
        Dtype::U16 => "u2",
        Dtype::I16 => "i2",
        Dtype::U32 => "u4",
        Dtype::I32 => "i4",
        Dtype::U64 => "u8",
        Dtype::I64 => "i8",
        Dtype::F32 => "f4",
        Dtype::F64 => "f8",
    }
}

/// Reads the header dict: its `descr`, `fortran_order` and `shape`, each exactly once.
fn parse_header(h: &str) -> Result<(Dtype, bool, Vec<usize>), String> {
    let body = h
        .trim_end_matches(['\n', ' '])
        .strip_prefix('{')
        .and_then(|s| s.trim_end().strip_suffix('}'))
        .ok_or("the header is not a dict")?;
    let (mut descr, mut fortran, mut shape) = (None, None, None);
    let mut rest = body.trim();
    while !rest.is_empty() {
        let (key, after) = quoted(rest).ok_or("a header key is not a quoted string")?;
        let after = after
            .trim_start()
            .strip_prefix(':')
            .ok_or("a header key has no value")?
            .trim_start();
        let after = match key {
            "descr" => {
                let (v, a) = quoted(after).ok_or("descr is not a quoted string")?;
                set(&mut descr, Dtype::parse(v)?, key)?;
                a
            }
            "fortran_order" => {
                let (v, a) = if let Some(a) = after.strip_prefix("False") {
                    (false, a)
                } else if let Some(a) = after.strip_prefix("True") {
                    (true, a)
                } else {
                    return Err("fortran_order is not True or False".into());
                };
                set(&mut fortran, v, key)?;
                a
            }
            "shape" => {
                let inner = after.strip_prefix('(').ok_or("shape is not a tuple")?;
                let end = inner.find(')').ok_or("shape is not a tuple")?;
                let dims = inner[..end]
                    .split(',')
                    .map(str::trim)
                    .filter(|d| !d.is_empty())
                    .map(|d| {
                        d.trim_end_matches('L')
                            .parse::<usize>()
                            .map_err(|_| format!("shape entry {d:?} is not a size"))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                set(&mut shape, dims, key)?;
                &inner[end + 1..]
            }
            k => return Err(format!("unknown header key {k:?}")),
        };
        rest = after.trim_start();
        rest = rest.strip_prefix(',').unwrap_or(rest).trim_start();
        if !rest.is_empty() && !rest.starts_with(['\'', '"']) {
            return Err("the header dict is malformed".into());
        }
    }
    Ok((
        descr.ok_or("the header has no descr")?,
        fortran.ok_or("the header has no fortran_order")?,
        shape.ok_or("the header has no shape")?,
    ))
}

fn set<T>(slot: &mut Option<T>, v: T, key: &str) -> Result<(), String> {
    if slot.replace(v).is_some() {
        return Err(format!("the header has {key} twice"));
    }
    Ok(())
}

/// A string in single or double quotes at the start of `s`, and what follows it.
fn quoted(s: &str) -> Option<(&str, &str)> {
    let q = s.chars().next().filter(|c| *c == '\'' || *c == '"')?;
    let end = s[1..].find(q)?;
    Some((&s[1..1 + end], &s[2 + end..]))
}

/// Reads a `.npy` file; at most `max_bytes` of it.
pub fn read_npy(path: &Path, max_bytes: u64) -> Result<NpyArray, DataError> {
    let raw = crate::read_bounded(path, max_bytes)?;
    parse_npy(&raw).map_err(|why| DataError::Malformed {
        path: path.to_owned(),
        format: "npy",
        why,
    })
}

/// Reads member `name` (`name.npy` in the archive) of a `.npz` file, decompressing at most
/// `max_bytes`.
pub fn read_npz(path: &Path, name: &str, max_bytes: u64) -> Result<NpyArray, DataError> {
    let bad = |why: String| DataError::Malformed {
        path: path.to_owned(),
        format: "npz",
        why,
    };
    let file = std::fs::File::open(path).map_err(|source| DataError::Io {
        path: path.to_owned(),
        source,
    })?;
    let mut zip = zip::ZipArchive::new(file).map_err(|e| bad(format!("not a zip archive: {e}")))?;
    let member = format!("{name}.npy");
    if zip.index_for_name(&member).is_none() {
        let names: Vec<_> = zip
            .file_names()
            .map(|n| n.trim_end_matches(".npy"))
            .collect();
        return Err(bad(format!("no array {name:?} (it holds {names:?})")));
    }
    let mut entry = zip
        .by_name(&member)
        .map_err(|e| bad(format!("{member}: {e}")))?;
    if entry.size() > max_bytes {
        return Err(bad(format!(
            "{member} declares {} bytes, more than the {max_bytes} allowed",
            entry.size()
        )));
    }
    // The declared size is only a hint: read at most one byte past the limit.
    let mut raw = Vec::with_capacity(entry.size().min(1 << 20) as usize);
    (&mut entry)
        .take(max_bytes + 1)
        .read_to_end(&mut raw)
        .map_err(|e| bad(format!("{member}: {e}")))?;
    if raw.len() as u64 > max_bytes {
        return Err(bad(format!(
            "{member} unpacks to more than the {max_bytes} bytes allowed"
        )));
    }
    parse_npy(&raw).map_err(|why| bad(format!("{member}: {why}")))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A `.npy` file as NumPy writes it (version 1).
    pub(crate) fn npy(descr: &str, shape: &[usize], data: &[u8]) -> Vec<u8> {
        let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
        let shape = match dims.len() {
            1 => format!("({},)", dims[0]),
            _ => format!("({})", dims.join(", ")),
        };
        let mut h = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
        while (10 + h.len() + 1) % 64 != 0 {
            h.push(' ');
        }
        h.push('\n');
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&[1, 0]);
        out.extend_from_slice(&(h.len() as u16).to_le_bytes());
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(data);
        out
    }

    #[test]
    fn arrays_of_every_type_read_back() {
        let f: Vec<u8> = [1.5f32, -2.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let a = parse_npy(&npy("<f4", &[2], &f)).unwrap();
        assert_eq!((a.dtype, a.shape.clone()), (Dtype::F32, vec![2]));
        assert_eq!(a.to_f64(), vec![1.5, -2.0]);
        let i: Vec<u8> = [-3i64, 7].iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(
            parse_npy(&npy("<i8", &[2, 1], &i)).unwrap().to_f64(),
            vec![-3.0, 7.0]
        );
        let b = parse_npy(&npy("|u1", &[1, 2, 2], &[0, 1, 2, 255])).unwrap();
        assert_eq!(b.shape, vec![1, 2, 2]);
        assert_eq!(b.into_bytes().ok(), Some(vec![0, 1, 2, 255]));
        let s = parse_npy(&npy("<u2", &[], &[1, 1])).unwrap();
        assert_eq!(s.to_f64(), vec![257.0]);
    }

    #[test]
    fn hostile_files_are_refused_without_allocating_what_they_declare() {
        let ok = npy("<f4", &[2], &[0; 8]);
        for cut in 0..ok.len() {
            assert!(parse_npy(&ok[..cut]).is_err(), "cut at {cut}");
        }
        let mut long = ok.clone();
        long.push(0);
        assert!(parse_npy(&long).unwrap_err().contains("declares 8 bytes"));
        // A shape of 2^60 values over 8 bytes: refused by comparing, not by allocating.
        let e = parse_npy(&npy("<f4", &[1 << 30, 1 << 30], &[0; 8])).unwrap_err();
        assert!(e.contains("declares"), "{e}");
        let e = parse_npy(&npy("<f4", &[usize::MAX, 2], &[0; 8])).unwrap_err();
        assert!(e.contains("overflows"), "{e}");
        for (descr, want) in [
            (">f4", "big-endian"),
            ("<c8", "not one of"),
            ("|O", "not one of"),
            ("<U3", "not one of"),
        ] {
            let e = parse_npy(&npy(descr, &[2], &[0; 8])).unwrap_err();
            assert!(e.contains(want), "{descr}: {e}");
        }
        let at = ok.windows(5).position(|w| w == b"False").unwrap();
        let mut fortran = ok.clone();
        fortran[at..at + 5].copy_from_slice(b"True ");
        assert!(parse_npy(&fortran).unwrap_err().contains("Fortran"));
        let mut not_text = ok.clone();
        not_text[12] = 0xff;
        assert!(parse_npy(&not_text).is_err());
        let mut bad_version = ok.clone();
        bad_version[6] = 9;
        assert!(parse_npy(&bad_version).unwrap_err().contains("version 9"));
        let mut huge_header = ok;
        huge_header[6] = 2;
        huge_header.splice(8..10, u32::MAX.to_le_bytes());
        assert!(parse_npy(&huge_header).unwrap_err().contains("header of"));
        assert!(parse_npy(b"PK\x03\x04 not npy").is_err());
    }

    #[test]
    fn npz_members_read_and_hostile_archives_are_refused() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.npz");
        let mut z = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        z.start_file("x_train.npy", opts).unwrap();
        z.write_all(&npy("|u1", &[3], &[1, 2, 3])).unwrap();
        z.start_file("big.npy", opts).unwrap();
        z.write_all(&npy("|u1", &[5000], &[0; 5000])).unwrap();
        z.finish().unwrap();
        let a = read_npz(&path, "x_train", 1 << 20).unwrap();
        assert_eq!(a.into_bytes().ok(), Some(vec![1, 2, 3]));
        let e = read_npz(&path, "y_train", 1 << 20).unwrap_err().to_string();
        assert!(
            e.contains("no array \"y_train\"") && e.contains("x_train"),
            "{e}"
        );
        // Decompressing stops at the limit: 5 KB of zeros deflate to a few bytes.
        let e = read_npz(&path, "big", 1000).unwrap_err().to_string();
        assert!(e.contains("1000"), "{e}");
        let junk = dir.path().join("junk.npz");
        std::fs::write(&junk, b"not a zip").unwrap();
        let e = read_npz(&junk, "x", 100).unwrap_err().to_string();
        assert!(e.contains("junk.npz") && e.contains("not a zip"), "{e}");
    }
}
