//! A strict IDX reader (the format of MNIST and Fashion-MNIST), gzipped or not.
//!
//! Layout: two zero bytes, a type byte (0x08 = unsigned byte, the only type braid reads), the
//! number of dimensions, one big-endian `u32` per dimension, then the values. Anything that
//! does not match exactly (bad magic, truncated or trailing data, absurd sizes) is an error.

use std::io::Read;
use std::path::Path;

use flate2::read::GzDecoder;

use crate::DataError;

/// An IDX array of unsigned bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct IdxArray {
    /// Dimensions, outermost first.
    pub dims: Vec<usize>,
    /// Values in row-major order.
    pub data: Vec<u8>,
}

/// Files larger than this once decompressed are refused (a guard against decompression bombs).
pub const MAX_IDX_BYTES: usize = 1 << 31;

/// Reads an IDX file; gzip is detected from the content, not the name.
pub fn read_idx(path: &Path) -> Result<IdxArray, DataError> {
    let raw = std::fs::read(path).map_err(|source| DataError::Io {
        path: path.to_owned(),
        source,
    })?;
    parse_idx(&raw).map_err(|why| DataError::BadIdx {
        path: path.to_owned(),
        why,
    })
}

/// Parses IDX bytes (gzipped or not).
pub fn parse_idx(raw: &[u8]) -> Result<IdxArray, String> {
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        GzDecoder::new(raw)
            .take(MAX_IDX_BYTES as u64 + 1)
            .read_to_end(&mut out)
            .map_err(|e| format!("corrupt gzip stream ({e})"))?;
        if out.len() > MAX_IDX_BYTES {
            return Err(format!("decompresses to more than {MAX_IDX_BYTES} bytes"));
        }
        return parse_plain(&out);
    }
    parse_plain(raw)
}

fn parse_plain(raw: &[u8]) -> Result<IdxArray, String> {
    let header = raw.get(..4).ok_or_else(|| {
        format!(
            "file has {} bytes, too short for the 4-byte header",
            raw.len()
        )
    })?;
    if header[0] != 0 || header[1] != 0 {
        return Err(format!(
            "bad magic bytes {:02x} {:02x} (expected 00 00)",
            header[0], header[1]
        ));
    }
    if header[2] != 0x08 {
        return Err(format!(
            "element type 0x{:02x} is not supported (only 0x08, unsigned byte)",
            header[2]
        ));
    }
    let ndim = usize::from(header[3]);
    if ndim == 0 || ndim > 4 {
        return Err(format!("{ndim} dimensions (expected 1 to 4)"));
    }
    let dims_end = 4 + 4 * ndim;
    let dim_bytes = raw
        .get(4..dims_end)
        .ok_or("truncated in the dimension header")?;
    let dims: Vec<usize> = dim_bytes
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize)
        .collect();
    let count = dims
        .iter()
        .try_fold(1usize, |acc, &d| {
            acc.checked_mul(d).filter(|&v| v <= MAX_IDX_BYTES)
        })
        .ok_or_else(|| format!("dimensions {dims:?} are too large"))?;
    let body = &raw[dims_end..];
    if body.len() < count {
        return Err(format!(
            "truncated: header {dims:?} promises {count} values, file holds {}",
            body.len()
        ));
    }
    if body.len() > count {
        return Err(format!(
            "{} unexpected bytes after the {count} values that header {dims:?} promises",
            body.len() - count
        ));
    }
    Ok(IdxArray {
        dims,
        data: body.to_vec(),
    })
}

/// The IDX encoding of unsigned-byte data with dimensions `dims` (what [`parse_idx`] reads).
pub fn encode_idx(dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, 0x08, dims.len() as u8];
    for d in dims {
        out.extend_from_slice(&d.to_be_bytes());
    }
    out.extend_from_slice(data);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::{write::GzEncoder, Compression};
    use std::io::Write;

    #[test]
    fn round_trips_plain_and_gzip() {
        let raw = encode_idx(&[2, 3], &[1, 2, 3, 4, 5, 6]);
        let a = parse_idx(&raw).unwrap();
        assert_eq!(a.dims, vec![2, 3]);
        assert_eq!(a.data, vec![1, 2, 3, 4, 5, 6]);
        let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
        gz.write_all(&raw).unwrap();
        assert_eq!(parse_idx(&gz.finish().unwrap()).unwrap(), a);
    }

    #[test]
    fn rejects_malformed() {
        let good = encode_idx(&[2, 3], &[1, 2, 3, 4, 5, 6]);
        assert!(parse_idx(&good[..good.len() - 1])
            .unwrap_err()
            .contains("truncated"));
        let mut long = good.clone();
        long.push(0);
        assert!(parse_idx(&long).unwrap_err().contains("unexpected bytes"));
        assert!(parse_idx(&[1, 0, 8, 1]).unwrap_err().contains("magic"));
        assert!(parse_idx(&[0, 0, 0x0d, 1])
            .unwrap_err()
            .contains("not supported"));
        assert!(parse_idx(&[0, 0]).unwrap_err().contains("too short"));
        assert!(parse_idx(&[0, 0, 8, 2, 0, 0])
            .unwrap_err()
            .contains("dimension header"));
        assert!(parse_idx(&encode_idx(&[u32::MAX, u32::MAX], &[]))
            .unwrap_err()
            .contains("too large"));
        assert!(parse_idx(&[0x1f, 0x8b, 0, 1, 2])
            .unwrap_err()
            .contains("gzip"));
    }

    #[test]
    fn names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bad.idx");
        std::fs::write(&p, [9u8, 9, 9, 9]).unwrap();
        let e = read_idx(&p).unwrap_err().to_string();
        assert!(e.contains("bad.idx") && e.contains("magic"), "{e}");
        let missing = read_idx(&dir.path().join("nope")).unwrap_err().to_string();
        assert!(missing.contains("nope"), "{missing}");
    }
}
