//! A strict IDX reader (the format of MNIST and Fashion-MNIST), gzipped or not.
//!
//! Layout: two zero bytes, a type byte (0x08 = unsigned byte, the only type braid reads), the
//! number of dimensions, one big-endian `u32` per dimension, then the values. Anything that
//! does not match exactly (bad magic, truncated or trailing data, absurd sizes) is an error.

use std::io::{BufRead, BufReader, Read};
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

/// DEFLATE expands at most about 1032 to 1: a gzip file whose header promises more values
/// than this many times its size is refused before decompressing anything.
const MAX_GZIP_RATIO: u64 = 1100;

/// Reads an IDX file; gzip is detected from the content, not the name. The header is read
/// and checked against the file's size before the values are: nothing is allocated for sizes
/// the file cannot hold, and a gzip stream is read no further than the header promises.
pub fn read_idx(path: &Path) -> Result<IdxArray, DataError> {
    let io = |source| DataError::Io {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    read_stream(BufReader::new(file), len).map_err(|why| DataError::BadIdx {
        path: path.to_owned(),
        why,
    })
}

/// Parses IDX bytes (gzipped or not).
pub fn parse_idx(raw: &[u8]) -> Result<IdxArray, String> {
    read_stream(raw, raw.len() as u64)
}

/// Reads an IDX array from `r`, which holds `len` bytes (gzipped or not).
fn read_stream<R: BufRead>(mut r: R, len: u64) -> Result<IdxArray, String> {
    let start = r.fill_buf().map_err(|e| format!("cannot read ({e})"))?;
    if start.starts_with(&[0x1f, 0x8b]) {
        read_values(GzDecoder::new(r), Source::Gzip(len))
            .map_err(|e| e.unwrap_or_else(|io| format!("corrupt gzip stream ({io})")))
    } else {
        read_values(r, Source::Plain(len))
            .map_err(|e| e.unwrap_or_else(|io| format!("cannot read ({io})")))
    }
}

/// Where the bytes come from, with the file's size.
#[derive(Clone, Copy)]
enum Source {
    Plain(u64),
    Gzip(u64),
}

/// Reads into `buf` until it is full or the stream ends; the bytes read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// The array, or what is wrong (`Ok`: a message; `Err`: an I/O error, worded by the caller).
fn read_values(
    mut r: impl Read, source: Source,
) -> Result<IdxArray, Result<String, std::io::Error>> {
    let bad = |why: String| Ok::<String, std::io::Error>(why);
    let mut header = [0u8; 4];
    let got = read_full(&mut r, &mut header).map_err(Err)?;
    if got < 4 {
        return Err(bad(format!(
            "file has {got} bytes, too short for the 4-byte header"
        )));
    }
    if header[0] != 0 || header[1] != 0 {
        return Err(bad(format!(
            "bad magic bytes {:02x} {:02x} (expected 00 00)",
            header[0], header[1]
        )));
    }
    if header[2] != 0x08 {
        return Err(bad(format!(
            "element type 0x{:02x} is not supported (only 0x08, unsigned byte)",
            header[2]
        )));
    }
    let ndim = usize::from(header[3]);
    if ndim == 0 || ndim > 4 {
        return Err(bad(format!("{ndim} dimensions (expected 1 to 4)")));
    }
    let mut dim_bytes = [0u8; 16];
    let dim_bytes = &mut dim_bytes[..4 * ndim];
    if read_full(&mut r, dim_bytes).map_err(Err)? < 4 * ndim {
        return Err(bad("truncated in the dimension header".into()));
    }
    let dims: Vec<usize> = dim_bytes
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize)
        .collect();
    let count = dims
        .iter()
        .try_fold(1usize, |acc, &d| {
            acc.checked_mul(d).filter(|&v| v <= MAX_IDX_BYTES)
        })
        .ok_or_else(|| bad(format!("dimensions {dims:?} are too large")))?;
    let header_len = 4 + 4 * ndim as u64;
    match source {
        Source::Plain(len) => {
            // The file's size says whether the values are all there, before any is read.
            let holds = len.saturating_sub(header_len);
            if holds < count as u64 {
                return Err(bad(format!(
                    "truncated: header {dims:?} promises {count} values, file holds {holds}"
                )));
            }
            if holds > count as u64 {
                return Err(bad(format!(
                    "{} unexpected bytes after the {count} values that header {dims:?} promises",
                    holds - count as u64
                )));
            }
            let mut data = vec![0u8; count];
            let got = read_full(&mut r, &mut data).map_err(Err)?;
            if got < count {
                return Err(bad(format!(
                    "truncated: header {dims:?} promises {count} values, file holds {got}"
                )));
            }
            Ok(IdxArray { dims, data })
        }
        Source::Gzip(len) => {
            if count as u64 > len.saturating_mul(MAX_GZIP_RATIO) {
                return Err(bad(format!(
                    "header {dims:?} promises {count} values, more than {len} gzipped bytes can hold"
                )));
            }
            // Memory grows with what actually decompresses, and stops one byte past the promise.
            let mut data = Vec::with_capacity(count.min(1 << 20));
            (&mut r)
                .take(count as u64 + 1)
                .read_to_end(&mut data)
                .map_err(Err)?;
            if data.len() < count {
                return Err(bad(format!(
                    "truncated: header {dims:?} promises {count} values, file holds {}",
                    data.len()
                )));
            }
            if data.len() > count {
                return Err(bad(format!(
                    "unexpected bytes after the {count} values that header {dims:?} promises"
                )));
            }
            Ok(IdxArray { dims, data })
        }
    }
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
    fn bombs_and_oversized_files_are_refused_before_their_size_is_read() {
        // A gzip stream that decompresses far past what its header promises: read no further
        // than one byte past the promise.
        let mut big = encode_idx(&[10], &[7; 10]);
        big.resize(20 << 20, 0);
        let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
        gz.write_all(&big).unwrap();
        let bomb = gz.finish().unwrap();
        assert!(bomb.len() < 100_000);
        assert!(parse_idx(&bomb).unwrap_err().contains("unexpected bytes"));
        // A header promising 2 GB in a few hundred gzipped bytes: refused before decompressing.
        let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
        gz.write_all(&encode_idx(&[1 << 15, 1 << 15], &[])).unwrap();
        let e = parse_idx(&gz.finish().unwrap()).unwrap_err();
        assert!(e.contains("gzipped bytes can hold"), "{e}");
        // A 2.3 GB file (sparse: nothing is on disk) whose header promises 10 values: its size
        // alone refuses it, nothing is read.
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("huge.idx");
        let f = std::fs::File::create(&p).unwrap();
        (&f).write_all(&encode_idx(&[10], &[0; 10])).unwrap();
        f.set_len(2_300_000_000).unwrap();
        let t0 = std::time::Instant::now();
        let e = read_idx(&p).unwrap_err().to_string();
        assert!(
            e.contains("unexpected bytes") && e.contains("huge.idx"),
            "{e}"
        );
        assert!(t0.elapsed() < std::time::Duration::from_secs(2));
        // A header promising more than the file holds, before allocating what it promises.
        std::fs::write(&p, encode_idx(&[60000, 28, 28], &[1, 2, 3])).unwrap();
        let e = read_idx(&p).unwrap_err().to_string();
        assert!(e.contains("promises 47040000 values, file holds 3"), "{e}");
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
