//! IDX files: the format of MNIST and Fashion-MNIST.
//!
//! An IDX file is a 4-byte magic number `00 00 <dtype> <ndim>`, then `ndim` dimensions as
//! big-endian `u32`, then the data, row-major, with nothing after it. Only unsigned bytes
//! (`dtype` 0x08) are supported, which is all that MNIST-style datasets use.
//!
//! The files are usually shipped gzipped; the readers here take either the raw file or its
//! `.gz` and tell the two apart by their first bytes (gzip starts `1f 8b`, IDX starts
//! `00 00`), not by the file name.
//!
//! A corrupt header must not make us allocate what it declares: the declared size is
//! checked against a limit ([`MAX_BYTES`] unless the caller gives a tighter one) before
//! any data is read, and buffers grow with the data actually read, never to the declared
//! size up front, so a lying header costs at most what the file really holds.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use flate2::bufread::MultiGzDecoder;

/// The IDX data type code for unsigned bytes, the only one supported.
const DTYPE_U8: u8 = 0x08;

/// Default limit on the size of an IDX file's content (uncompressed, header included).
/// MNIST's largest file is 47,040,016 bytes.
const MAX_BYTES: usize = 256 << 20;

/// Most dimensions an IDX header may declare; real files have 1 (labels) or 3 (images).
const MAX_NDIM: usize = 16;

/// What can go wrong reading or parsing an IDX file.
///
/// Format errors do not name the file (parsing works on bytes); the path-based readers
/// name it in [`IdxError::Io`], and callers such as [`crate::data::mnist`] add the path
/// to the others.
#[derive(Debug, thiserror::Error)]
pub enum IdxError {
    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "not an IDX file: bad magic number {found:02x?} (expected 00 00 <dtype> <ndim>, \
         e.g. 00 00 08 03 for u8 images)"
    )]
    BadMagic { found: [u8; 4] },
    #[error(
        "IDX data type 0x{dtype:02x} ({}) is not supported: only unsigned bytes (0x08) are",
        dtype_name(*.dtype)
    )]
    NotU8 { dtype: u8 },
    #[error("IDX header declares {ndim} dimensions; at most {MAX_NDIM} are supported")]
    TooManyDims { ndim: usize },
    #[error("truncated IDX {what}: needs {expected} bytes, only {actual} present")]
    Truncated {
        what: &'static str,
        expected: u64,
        actual: u64,
    },
    #[error(
        "IDX size mismatch: dims {dims:?} declare {expected} data bytes, but {} follow \
         the header",
        describe_actual(*.actual)
    )]
    SizeMismatch {
        dims: Vec<usize>,
        expected: u64,
        /// `None` when the data was not read to its end (a stream longer than declared).
        actual: Option<u64>,
    },
    #[error(
        "IDX dims {dims:?} declare {} bytes, over the limit of {limit} bytes \
         (corrupt header?)",
        describe_declared(*.declared)
    )]
    TooLarge {
        dims: Vec<usize>,
        /// `None` when the product of the dims overflows 64 bits.
        declared: Option<u64>,
        limit: usize,
    },
    #[error("content is over the limit of {limit} bytes (uncompressed)")]
    OverLimit { limit: usize },
}

fn dtype_name(dtype: u8) -> &'static str {
    match dtype {
        0x08 => "u8",
        0x09 => "i8",
        0x0b => "i16",
        0x0c => "i32",
        0x0d => "f32",
        0x0e => "f64",
        _ => "unknown",
    }
}

fn describe_actual(actual: Option<u64>) -> String {
    match actual {
        Some(n) => n.to_string(),
        None => "more than that".to_string(),
    }
}

fn describe_declared(declared: Option<u64>) -> String {
    match declared {
        Some(n) => n.to_string(),
        None => "more than 2^64".to_string(),
    }
}

/// A parsed IDX file of unsigned bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct IdxArray {
    /// The dimensions, outermost first (e.g. `[60000, 28, 28]`).
    pub dims: Vec<usize>,
    /// The data, row-major; its length is the product of `dims`.
    pub data: Vec<u8>,
}

impl std::fmt::Debug for IdxArray {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdxArray")
            .field("dims", &self.dims)
            .field("data_len", &self.data.len())
            .finish()
    }
}

/// A validated header: its length in bytes, the dims and the data length they declare.
struct Header {
    len: usize,
    dims: Vec<usize>,
    data_len: u64,
}

/// Checks the magic number; returns the number of dimensions.
fn check_magic(magic: [u8; 4]) -> Result<usize, IdxError> {
    if magic[0] != 0 || magic[1] != 0 || dtype_name(magic[2]) == "unknown" {
        return Err(IdxError::BadMagic { found: magic });
    }
    if magic[2] != DTYPE_U8 {
        return Err(IdxError::NotU8 { dtype: magic[2] });
    }
    let ndim = magic[3] as usize;
    if ndim > MAX_NDIM {
        return Err(IdxError::TooManyDims { ndim });
    }
    Ok(ndim)
}

/// Parses the dims (big-endian u32 each) and checks their product against `limit`
/// (a limit on the whole content, header included).
fn check_dims(dim_bytes: &[u8], limit: usize) -> Result<Header, IdxError> {
    let dims: Vec<usize> = dim_bytes
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize)
        .collect();
    let header_len = 4 + dim_bytes.len();
    let declared = dims
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64));
    match declared {
        Some(n) if n.saturating_add(header_len as u64) <= limit as u64 => Ok(Header {
            len: header_len,
            dims,
            data_len: n,
        }),
        _ => Err(IdxError::TooLarge {
            dims,
            declared,
            limit,
        }),
    }
}

fn parse_header(bytes: &[u8], limit: usize) -> Result<Header, IdxError> {
    let Some(magic) = bytes.first_chunk::<4>() else {
        return Err(IdxError::Truncated {
            what: "header",
            expected: 4,
            actual: bytes.len() as u64,
        });
    };
    let ndim = check_magic(*magic)?;
    let header_len = 4 + 4 * ndim;
    if bytes.len() < header_len {
        return Err(IdxError::Truncated {
            what: "header",
            expected: header_len as u64,
            actual: bytes.len() as u64,
        });
    }
    check_dims(&bytes[4..header_len], limit)
}

/// Checks that exactly `header.data_len` bytes follow the header.
fn check_data_len(header: &Header, total: usize) -> Result<(), IdxError> {
    let actual = (total - header.len) as u64;
    if actual < header.data_len {
        return Err(IdxError::Truncated {
            what: "data",
            expected: header.data_len,
            actual,
        });
    }
    if actual > header.data_len {
        return Err(IdxError::SizeMismatch {
            dims: header.dims.clone(),
            expected: header.data_len,
            actual: Some(actual),
        });
    }
    Ok(())
}

/// Parses an IDX file's (uncompressed) bytes, copying the data.
pub fn parse(bytes: &[u8]) -> Result<IdxArray, IdxError> {
    let header = parse_header(bytes, usize::MAX)?;
    check_data_len(&header, bytes.len())?;
    Ok(IdxArray {
        data: bytes[header.len..].to_vec(),
        dims: header.dims,
    })
}

/// Parses an IDX file's (uncompressed) bytes in place: the buffer becomes the data.
pub fn parse_vec(mut bytes: Vec<u8>) -> Result<IdxArray, IdxError> {
    let header = parse_header(&bytes, usize::MAX)?;
    check_data_len(&header, bytes.len())?;
    bytes.drain(..header.len);
    Ok(IdxArray {
        data: bytes,
        dims: header.dims,
    })
}

/// Wraps a buffered reader so that it yields the uncompressed content: gunzipped when it
/// starts with the gzip magic `1f 8b`, as is otherwise.
fn maybe_gunzip<'a, R: BufRead + 'a>(mut reader: R) -> io::Result<Box<dyn Read + 'a>> {
    let head = reader.fill_buf()?;
    if head.starts_with(&[0x1f, 0x8b]) {
        Ok(Box::new(MultiGzDecoder::new(reader)))
    } else {
        Ok(Box::new(reader))
    }
}

/// Reads all of `reader` (gzipped or raw, see [`maybe_gunzip`]) into memory, failing with
/// [`IdxError::OverLimit`] once the uncompressed content passes `limit` bytes. Does not
/// parse: use it to checksum the content before trusting it, then [`parse_vec`].
pub fn decompressed_bytes<R: BufRead>(reader: R, limit: usize) -> io::Result<Vec<u8>> {
    let reader = maybe_gunzip(reader)?;
    let mut bytes = Vec::new();
    reader.take(limit as u64 + 1).read_to_end(&mut bytes)?;
    if bytes.len() > limit {
        return Err(io::Error::other(IdxError::OverLimit { limit }));
    }
    Ok(bytes)
}

/// [`decompressed_bytes`] for a file: the raw IDX file or its gzip, whatever its name.
pub fn read_bytes(path: &Path, limit: usize) -> Result<Vec<u8>, IdxError> {
    let io_err = |source| IdxError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(io_err)?;
    match decompressed_bytes(BufReader::with_capacity(1 << 16, file), limit) {
        Ok(bytes) => Ok(bytes),
        Err(e) => match e.downcast::<IdxError>() {
            Ok(idx) => Err(idx),
            Err(e) => Err(io_err(e)),
        },
    }
}

/// Reads and parses an IDX stream (gzipped or raw), checking the header before reading
/// the data: a header that declares more than `limit` bytes (header included) is rejected
/// without reading on, and the data buffer only grows as data actually arrives.
fn read_from<R: BufRead>(reader: R, limit: usize) -> Result<IdxArray, IdxError> {
    let mut reader = maybe_gunzip(reader).map_err(stream_err)?;
    let mut magic = [0u8; 4];
    read_exact_or_truncated(&mut reader, &mut magic, "header")?;
    let ndim = check_magic(magic)?;
    let mut dim_bytes = vec![0u8; 4 * ndim];
    read_exact_or_truncated(&mut reader, &mut dim_bytes, "header")?;
    let header = check_dims(&dim_bytes, limit)?;

    // Start small: the declared length is only a claim until the bytes arrive.
    let mut data = Vec::with_capacity((header.data_len as usize).min(1 << 20));
    reader
        .by_ref()
        .take(header.data_len)
        .read_to_end(&mut data)
        .map_err(stream_err)?;
    if (data.len() as u64) < header.data_len {
        return Err(IdxError::Truncated {
            what: "data",
            expected: header.data_len,
            actual: data.len() as u64,
        });
    }
    let mut extra = [0u8; 1];
    if reader.read(&mut extra).map_err(stream_err)? > 0 {
        return Err(IdxError::SizeMismatch {
            dims: header.dims,
            expected: header.data_len,
            actual: None,
        });
    }
    Ok(IdxArray {
        dims: header.dims,
        data,
    })
}

/// Reads and parses an IDX file, raw or gzipped, with the default limit [`MAX_BYTES`].
pub fn read(path: &Path) -> Result<IdxArray, IdxError> {
    read_with_limit(path, MAX_BYTES)
}

/// [`read`] with a caller-chosen limit on the uncompressed size.
fn read_with_limit(path: &Path, limit: usize) -> Result<IdxArray, IdxError> {
    let file = File::open(path).map_err(|source| IdxError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    read_from(BufReader::with_capacity(1 << 16, file), limit).map_err(|e| match e {
        IdxError::Io { source, .. } => IdxError::Io {
            path: path.to_path_buf(),
            source,
        },
        other => other,
    })
}

/// An I/O error from a stream with no path (the path-based readers fill it in).
fn stream_err(source: io::Error) -> IdxError {
    IdxError::Io {
        path: PathBuf::from("<stream>"),
        source,
    }
}

fn read_exact_or_truncated(
    reader: &mut impl Read,
    buf: &mut [u8],
    what: &'static str,
) -> Result<(), IdxError> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => {
                return Err(IdxError::Truncated {
                    what,
                    expected: buf.len() as u64,
                    actual: filled as u64,
                });
            }
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(stream_err(e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::{Compression, write::GzEncoder};
    use std::io::Write;

    fn idx(dims: &[u32], data: &[u8]) -> Vec<u8> {
        let mut out = vec![0, 0, DTYPE_U8, dims.len() as u8];
        for d in dims {
            out.extend_from_slice(&d.to_be_bytes());
        }
        out.extend_from_slice(data);
        out
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut enc = GzEncoder::new(Vec::new(), Compression::fast());
        enc.write_all(bytes).unwrap();
        enc.finish().unwrap()
    }

    #[test]
    fn parses_a_small_u8_array() {
        let bytes = idx(&[2, 3], &[1, 2, 3, 4, 5, 6]);
        let a = parse(&bytes).unwrap();
        assert_eq!(a.dims, vec![2, 3]);
        assert_eq!(a.data, vec![1, 2, 3, 4, 5, 6]);
        assert_eq!(parse_vec(bytes.clone()).unwrap(), a);
        assert_eq!(read_from(&bytes[..], 1000).unwrap(), a);
        assert_eq!(read_from(&gzip(&bytes)[..], 1000).unwrap(), a);
    }

    #[test]
    fn rejects_bad_magic() {
        let mut bytes = idx(&[1], &[0]);
        bytes[0] = 0x42;
        let e = parse(&bytes).unwrap_err();
        assert!(matches!(e, IdxError::BadMagic { .. }), "{e}");
        assert!(e.to_string().contains("bad magic"), "{e}");
    }

    #[test]
    fn rejects_non_u8_data() {
        let mut bytes = idx(&[1], &[0, 0, 0, 0]);
        bytes[2] = 0x0d;
        let e = parse(&bytes).unwrap_err();
        assert!(matches!(e, IdxError::NotU8 { dtype: 0x0d }), "{e}");
        assert!(e.to_string().contains("f32"), "{e}");
    }

    #[test]
    fn rejects_truncated_header_and_data() {
        let bytes = idx(&[2, 3], &[1, 2, 3]);
        let e = parse(&bytes).unwrap_err();
        assert!(
            matches!(
                e,
                IdxError::Truncated {
                    what: "data",
                    expected: 6,
                    actual: 3
                }
            ),
            "{e}"
        );
        assert!(matches!(
            read_from(&bytes[..], 1000).unwrap_err(),
            IdxError::Truncated { what: "data", .. }
        ));
        assert!(matches!(
            parse(&bytes[..6]).unwrap_err(),
            IdxError::Truncated { what: "header", .. }
        ));
        assert!(matches!(
            read_from(&bytes[..2], 1000).unwrap_err(),
            IdxError::Truncated { what: "header", .. }
        ));
    }

    #[test]
    fn rejects_trailing_data() {
        let bytes = idx(&[2], &[1, 2, 3]);
        let e = parse(&bytes).unwrap_err();
        assert!(
            matches!(
                e,
                IdxError::SizeMismatch {
                    expected: 2,
                    actual: Some(3),
                    ..
                }
            ),
            "{e}"
        );
        assert!(matches!(
            read_from(&bytes[..], 1000).unwrap_err(),
            IdxError::SizeMismatch { actual: None, .. }
        ));
    }

    #[test]
    fn huge_declared_size_is_rejected_before_reading() {
        // 4e9 x 4e9 x 4e9 bytes overflows u64; 65535^2 is 4 GiB, over the limit.
        let overflow = idx(&[u32::MAX, u32::MAX, u32::MAX], &[0; 8]);
        let e = read_from(&overflow[..], MAX_BYTES).unwrap_err();
        assert!(
            matches!(e, IdxError::TooLarge { declared: None, .. }),
            "{e}"
        );
        let big = idx(&[65535, 65535], &[0; 8]);
        let e = read_from(&gzip(&big)[..], MAX_BYTES).unwrap_err();
        assert!(matches!(e, IdxError::TooLarge { .. }), "{e}");
        assert!(e.to_string().contains("over the limit"), "{e}");
        // Parsing bytes never allocates more than it was given: a big claim is truncation.
        assert!(matches!(
            parse(&big).unwrap_err(),
            IdxError::Truncated { what: "data", .. }
        ));
    }

    #[test]
    fn decompressed_bytes_stops_at_the_limit() {
        let bytes = idx(&[100], &[7; 100]);
        let e = decompressed_bytes(&gzip(&bytes)[..], 50).unwrap_err();
        assert!(e.to_string().contains("over the limit of 50"), "{e}");
        assert_eq!(decompressed_bytes(&gzip(&bytes)[..], 108).unwrap(), bytes);
    }

    #[test]
    fn reads_raw_and_gzipped_files_by_content() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = idx(&[3, 2], &[9, 8, 7, 6, 5, 4]);
        let raw = dir.path().join("a-idx2-ubyte");
        let gz = dir.path().join("a-idx2-ubyte.gz");
        std::fs::write(&raw, &bytes).unwrap();
        std::fs::write(&gz, gzip(&bytes)).unwrap();
        let a = read(&raw).unwrap();
        assert_eq!(a.dims, vec![3, 2]);
        assert_eq!(read(&gz).unwrap(), a);
        assert_eq!(read_bytes(&gz, 1000).unwrap(), bytes);
        let e = read(&dir.path().join("missing")).unwrap_err();
        assert!(e.to_string().contains("missing"), "{e}");
    }
}
