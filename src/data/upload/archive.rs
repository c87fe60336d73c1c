//! Walking a zip, tar or tar.gz without trusting it.
//!
//! The walker owns every check that is about the archive rather than the dataset: the
//! kind sniffed from magic bytes (an upload's file name is the client's claim), member
//! names (no `..`, no absolute paths, no duplicates after normalisation), member types
//! (no links, devices or fifos), and sizes (declared and actual, per member and in
//! total). It hands the layout code ([`super::folders`]) normalised paths and, for the
//! members it asks for, their bytes, read straight from the archive into a buffer
//! through `take(limit + 1)`, never extracted to disk.
//!
//! Tar is read in the `tar` crate's raw mode, with GNU long names and PAX headers
//! handled here: in its normal mode the crate reads those extension members into memory
//! whatever size their header declares, which would let a crafted header allocate
//! gigabytes. Here they are bounded like any other member.
//!
//! A zip is checked as a whole from its central directory first (member count, declared
//! sizes, total), so a bomb is refused before a byte is inflated; a tar (which has no
//! directory) is checked member by member as it streams, and a tar.gz's gzip stream is
//! cut off at `max_unpacked_bytes`.

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use flate2::bufread::MultiGzDecoder;

use super::{Limits, UploadError, human_bytes};

/// A member, its path normalised: components joined by `/`, without empty or `.`
/// components, backslashes read as separators (old Windows tools wrote them).
pub(crate) struct Member {
    pub path: String,
    pub dir: bool,
}

impl Member {
    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.path.split('/')
    }
}

/// What the layout code does with the members the walker finds.
pub(crate) trait Visitor {
    /// Called for every file and folder, in archive order. For a file, returning true
    /// asks for its bytes, passed to [`Visitor::file`].
    fn member(&mut self, member: &Member) -> Result<bool, UploadError>;
    /// A file's content, at most `max_entry_bytes`.
    fn file(&mut self, member: &Member, bytes: Vec<u8>) -> Result<(), UploadError>;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Zip,
    Tar,
    TarGz,
}

const ZIP_MAGIC: &[u8] = b"PK\x03\x04";
const ZIP_EMPTY_MAGIC: &[u8] = b"PK\x05\x06";
const GZIP_MAGIC: &[u8] = &[0x1f, 0x8b];

/// Whether `bytes` (a member's start) is itself an archive or compressed stream, and
/// which kind, for [`UploadError::NestedArchive`].
pub(crate) fn archive_magic(bytes: &[u8]) -> Option<&'static str> {
    const MAGICS: [(&[u8], &str); 7] = [
        (ZIP_MAGIC, "zip"),
        (ZIP_EMPTY_MAGIC, "zip"),
        (GZIP_MAGIC, "gzip"),
        (b"BZh", "bzip2"),
        (&[0xfd, b'7', b'z', b'X', b'Z', 0], "xz"),
        (&[b'7', b'z', 0xbc, 0xaf, 0x27, 0x1c], "7z"),
        (b"Rar!\x1a\x07", "rar"),
    ];
    if let Some((_, name)) = MAGICS.iter().find(|(m, _)| bytes.starts_with(m)) {
        return Some(name);
    }
    is_tar_header(bytes).then_some("tar")
}

/// A tar header block: "ustar" at 257 (POSIX and GNU), or an old v7 header whose
/// checksum adds up.
fn is_tar_header(block: &[u8]) -> bool {
    let Some(block) = block.get(..512) else {
        return false;
    };
    if &block[257..262] == b"ustar" {
        return true;
    }
    let field = &block[148..156];
    let digits: String = field
        .iter()
        .map(|&b| b as char)
        .filter(|c| c.is_digit(8))
        .collect();
    let Ok(declared) = u32::from_str_radix(&digits, 8) else {
        return false;
    };
    let sum: u32 = block
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                32
            } else {
                u32::from(b)
            }
        })
        .sum();
    block[0] != 0 && sum == declared
}

fn io_err(at: &str) -> impl Fn(io::Error) -> UploadError + '_ {
    move |source| UploadError::Io {
        at: at.to_string(),
        source,
    }
}

/// Walks the archive at `path`, calling `visitor` for every member that passes the checks.
pub(crate) fn walk(
    path: &Path,
    limits: &Limits,
    visitor: &mut dyn Visitor,
) -> Result<(), UploadError> {
    let mut file = File::open(path).map_err(io_err("archive"))?;
    let mut head = Vec::with_capacity(512);
    (&mut file)
        .take(512)
        .read_to_end(&mut head)
        .map_err(io_err("archive"))?;
    file.seek(SeekFrom::Start(0)).map_err(io_err("archive"))?;
    let kind = if head.starts_with(ZIP_MAGIC) || head.starts_with(ZIP_EMPTY_MAGIC) {
        Kind::Zip
    } else if head.starts_with(GZIP_MAGIC) {
        Kind::TarGz
    } else if is_tar_header(&head) {
        Kind::Tar
    } else {
        let shown: Vec<String> = head.iter().take(8).map(|b| format!("{b:02x}")).collect();
        return Err(UploadError::NotAnArchive {
            detail: if head.is_empty() {
                "it is empty".into()
            } else {
                format!("it starts with the bytes {}", shown.join(" "))
            },
        });
    };
    let mut names = Names::new(limits);
    match kind {
        Kind::Zip => walk_zip(path, file, limits, &mut names, visitor),
        Kind::Tar => walk_tar(BufReader::new(file), limits, &mut names, visitor, false),
        Kind::TarGz => {
            let gz = MultiGzDecoder::new(BufReader::new(file));
            walk_tar(BufReader::new(gz), limits, &mut names, visitor, true)
        }
    }
}

/// Member name checks shared by zip and tar.
struct Names {
    seen: HashSet<String>,
    count: usize,
    max_entries: usize,
}

impl Names {
    fn new(limits: &Limits) -> Self {
        Names {
            seen: HashSet::new(),
            count: 0,
            max_entries: limits.max_entries,
        }
    }

    /// Counts a member against `max_entries`.
    fn count(&mut self) -> Result<(), UploadError> {
        self.count += 1;
        if self.count > self.max_entries {
            return Err(UploadError::TooManyEntries {
                count: format!("more than {}", self.max_entries),
                limit: self.max_entries,
            });
        }
        Ok(())
    }

    /// Normalises `raw` and checks it is new (files only: a folder may be listed twice).
    fn check(&mut self, raw: &str, dir: bool) -> Result<Member, UploadError> {
        let path = normalise(raw)?;
        if !dir && !path.is_empty() && !self.seen.insert(path.clone()) {
            return Err(UploadError::DuplicateName { at: path });
        }
        Ok(Member { path, dir })
    }
}

/// Normalises a member name (see [`Member`]); refuses `..` and absolute paths.
pub(crate) fn normalise(raw: &str) -> Result<String, UploadError> {
    let at = || raw.to_string();
    let unified = raw.replace('\\', "/");
    if unified.starts_with('/') {
        return Err(UploadError::AbsolutePath { at: at() });
    }
    let mut parts = Vec::new();
    for (i, part) in unified.split('/').enumerate() {
        match part {
            "" | "." => {}
            ".." => return Err(UploadError::PathTraversal { at: at() }),
            p if i == 0 && p.len() == 2 && p.ends_with(':') => {
                // A Windows drive, "C:".
                return Err(UploadError::AbsolutePath { at: at() });
            }
            p if p.contains('\0') => {
                return Err(UploadError::BadLayout {
                    at: at(),
                    detail: "a member name with a NUL byte".into(),
                });
            }
            p => parts.push(p),
        }
    }
    Ok(parts.join("/"))
}

/// The outcome of reading one member.
enum Outcome {
    Bytes(Vec<u8>),
    /// More than the limit.
    Over,
    /// A read error after `.1` bytes.
    Failed(io::Error, u64),
}

/// Reads all of `reader` into a buffer of at most `limit` bytes (reading one byte more
/// tells "over" from "exactly at"); `capacity` is the declared size, a hint only.
fn read_bounded(reader: &mut dyn Read, capacity: u64, limit: usize) -> Outcome {
    let mut buf = Vec::with_capacity(capacity.min(limit as u64) as usize);
    let mut bounded = reader.take(limit as u64 + 1);
    let mut chunk = [0u8; 1 << 14];
    loop {
        match bounded.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Outcome::Failed(e, buf.len() as u64),
        }
    }
    if buf.len() > limit {
        Outcome::Over
    } else {
        Outcome::Bytes(buf)
    }
}

fn walk_zip(
    path: &Path,
    file: File,
    limits: &Limits,
    names: &mut Names,
    visitor: &mut dyn Visitor,
) -> Result<(), UploadError> {
    use zip::result::ZipError;
    let mut zip = zip::ZipArchive::new(BufReader::new(file)).map_err(|e| match e {
        ZipError::Io(source) if source.kind() != io::ErrorKind::UnexpectedEof => UploadError::Io {
            at: "archive".into(),
            source,
        },
        other => UploadError::Truncated {
            at: "archive".into(),
            detail: format!(
                "the zip's central directory is missing or damaged ({other}); was the upload \
                 interrupted?"
            ),
        },
    })?;
    if zip.len() > limits.max_entries {
        return Err(UploadError::TooManyEntries {
            count: zip.len().to_string(),
            limit: limits.max_entries,
        });
    }
    if zip.has_duplicate_names() {
        // The zip crate keeps one member per name; find the name from the raw directory.
        let at =
            duplicate_in_central_directory(path, zip.central_directory_start()).unwrap_or_default();
        return Err(UploadError::DuplicateName { at });
    }
    // The whole directory first: names, types, declared sizes, total. Nothing inflated yet.
    let mut total: u64 = 0;
    let mut members = Vec::with_capacity(zip.len());
    for i in 0..zip.len() {
        names.count()?;
        let entry = zip
            .by_index_data(i)
            .map_err(|e| UploadError::CorruptArchive {
                at: "archive".into(),
                detail: e.to_string(),
            })?;
        let raw = String::from_utf8_lossy(entry.name_raw()).into_owned();
        let member = names.check(&raw, entry.is_dir())?;
        if entry.is_symlink() {
            return Err(UploadError::Link {
                at: member.path,
                what: "symbolic link",
            });
        }
        if let Some(mode) = entry.unix_mode() {
            let kind = mode & 0o170000;
            if kind != 0 && kind != 0o100000 && kind != 0o040000 {
                return Err(UploadError::SpecialFile {
                    at: member.path,
                    what: "device file or fifo",
                });
            }
        }
        if entry.encrypted() {
            return Err(UploadError::Encrypted { at: member.path });
        }
        let size = entry.size();
        if !member.dir && size > limits.max_entry_bytes as u64 {
            return Err(UploadError::member_bomb(
                &member.path,
                Some(size),
                true,
                limits.max_entry_bytes,
            ));
        }
        total = total.saturating_add(size);
        if total > limits.max_unpacked_bytes {
            return Err(total_bomb(&member.path, Some(total), limits));
        }
        members.push((member, size));
    }
    let mut unpacked: u64 = 0;
    for (i, (member, size)) in members.into_iter().enumerate() {
        if member.path.is_empty() || !visitor.member(&member)? || member.dir {
            continue;
        }
        let mut entry = zip.by_index(i).map_err(|e| match e {
            ZipError::CompressionMethodNotSupported(_) | ZipError::UnsupportedArchive(_) => {
                UploadError::UnsupportedCompression {
                    at: member.path.clone(),
                    detail: e.to_string(),
                }
            }
            other => zip_member_error(&member.path, other),
        })?;
        let bytes = match read_bounded(&mut entry, size, limits.max_entry_bytes) {
            Outcome::Bytes(b) => b,
            Outcome::Over => {
                return Err(UploadError::member_bomb(
                    &member.path,
                    None,
                    false,
                    limits.max_entry_bytes,
                ));
            }
            // The zip crate refuses to inflate past the declared size: a member that
            // lies about its size to slip past the directory check.
            Outcome::Failed(_, read) if read >= size => {
                return Err(UploadError::ZipBomb {
                    at: member.path.clone(),
                    detail: format!(
                        "member {} declares {} uncompressed but inflates to more",
                        member.path,
                        human_bytes(size)
                    ),
                });
            }
            Outcome::Failed(e, _) => return Err(zip_member_error(&member.path, ZipError::Io(e))),
        };
        unpacked += bytes.len() as u64;
        if unpacked > limits.max_unpacked_bytes {
            return Err(total_bomb(&member.path, None, limits));
        }
        drop(entry);
        visitor.file(&member, bytes)?;
    }
    Ok(())
}

fn zip_member_error(at: &str, e: zip::result::ZipError) -> UploadError {
    match e {
        zip::result::ZipError::Io(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
            UploadError::Truncated {
                at: at.to_string(),
                detail: "the member's data ends early".into(),
            }
        }
        other => UploadError::CorruptArchive {
            at: at.to_string(),
            detail: other.to_string(),
        },
    }
}

fn total_bomb(at: &str, total: Option<u64>, limits: &Limits) -> UploadError {
    let total = match total {
        Some(n) => human_bytes(n),
        None => format!("more than {}", human_bytes(limits.max_unpacked_bytes)),
    };
    UploadError::ZipBomb {
        at: at.to_string(),
        detail: format!(
            "the archive's members come to {total} uncompressed (reached at {at}); an upload \
             may unpack to at most {}",
            human_bytes(limits.max_unpacked_bytes)
        ),
    }
}

/// The first name listed twice in a zip's central directory, read from the raw records
/// (46-byte fixed part: signature `PK\1\2`, name length at 28, extra at 30, comment at
/// 32). `None` if the records cannot be read (the error then names no member).
fn duplicate_in_central_directory(path: &Path, start: u64) -> Option<String> {
    let mut reader = BufReader::new(File::open(path).ok()?);
    reader.seek(SeekFrom::Start(start)).ok()?;
    let mut seen = HashSet::new();
    let mut fixed = [0u8; 46];
    loop {
        reader.read_exact(&mut fixed).ok()?;
        if fixed[..4] != *b"PK\x01\x02" {
            return None;
        }
        let le = |at: usize| u16::from_le_bytes([fixed[at], fixed[at + 1]]);
        let mut name = vec![0u8; le(28) as usize];
        reader.read_exact(&mut name).ok()?;
        reader
            .seek_relative(i64::from(le(30)) + i64::from(le(32)))
            .ok()?;
        let name = String::from_utf8_lossy(&name).into_owned();
        if !seen.insert(name.clone()) {
            return Some(name);
        }
    }
}

/// A reader that counts the bytes it passes, so the tar walk can tell an archive that
/// ends with its end-of-archive block from one cut off at a member boundary.
struct Counted<R> {
    inner: R,
    count: u64,
}

impl<R> Counted<R> {
    fn new(inner: R) -> Self {
        Counted { inner, count: 0 }
    }
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        Ok(n)
    }
}

/// Most bytes of a GNU long name or PAX extension member (real ones are a few hundred).
const MAX_EXTENSION_BYTES: u64 = 64 << 10;

fn tar_error(at: &str, e: io::Error) -> UploadError {
    let at = at.to_string();
    let text = e.to_string();
    if e.kind() == io::ErrorKind::UnexpectedEof
        || text.contains("failed to read entire block")
        || text.contains("unexpected EOF")
    {
        return UploadError::Truncated {
            at,
            detail: format!("the archive ends in the middle of a member ({text})"),
        };
    }
    UploadError::CorruptArchive { at, detail: text }
}

/// Where the tar walk got to: the next header's offset if the archive ends properly
/// (after the last member's padded data), and the last member's name.
struct TarProgress {
    end_of_members: u64,
    last: String,
}

fn walk_tar<R: BufRead>(
    reader: R,
    limits: &Limits,
    names: &mut Names,
    visitor: &mut dyn Visitor,
    gz: bool,
) -> Result<(), UploadError> {
    // One byte past the limit, so that "exactly at the limit" is told from "over".
    let bounded = reader.take(limits.max_unpacked_bytes.saturating_add(1));
    let mut archive = tar::Archive::new(Counted::new(bounded));
    let mut progress = TarProgress {
        end_of_members: 0,
        last: "archive".into(),
    };
    let walked = tar_members(&mut archive, limits, names, visitor, &mut progress);
    let read = archive.into_inner().count;
    // Past the limit, whatever error the cut-off stream caused is a symptom of this.
    if read > limits.max_unpacked_bytes {
        return Err(if gz {
            total_bomb(&progress.last, None, limits)
        } else {
            UploadError::TooLarge {
                at: progress.last,
                detail: format!(
                    "the archive is over {}; an upload may hold at most that",
                    human_bytes(limits.max_unpacked_bytes)
                ),
            }
        });
    }
    walked?;
    if read < progress.end_of_members.saturating_add(512) {
        return Err(UploadError::Truncated {
            at: progress.last,
            detail: "the archive ends without its end-of-archive block; was the upload \
                     interrupted?"
                .into(),
        });
    }
    Ok(())
}

fn tar_members<R: Read>(
    archive: &mut tar::Archive<R>,
    limits: &Limits,
    names: &mut Names,
    visitor: &mut dyn Visitor,
    progress: &mut TarProgress,
) -> Result<(), UploadError> {
    let mut long_name: Option<String> = None;
    let mut pax_path: Option<String> = None;
    let entries = archive.entries().map_err(io_err("archive"))?.raw(true);
    for entry in entries {
        let mut entry = entry.map_err(|e| tar_error(&progress.last, e))?;
        names.count()?;
        let size = entry.size();
        progress.end_of_members = entry
            .raw_file_position()
            .saturating_add(size.div_ceil(512).saturating_mul(512));
        let kind = entry.header().entry_type();
        if kind.is_gnu_longname()
            || kind.is_gnu_longlink()
            || kind.is_pax_local_extensions()
            || kind.is_pax_global_extensions()
        {
            let data = extension_data(&mut entry, size, &progress.last)?;
            if kind.is_gnu_longname() {
                let name = data.split(|&b| b == 0).next().unwrap_or_default();
                long_name = Some(String::from_utf8_lossy(name).into_owned());
            } else if kind.is_pax_local_extensions() {
                for ext in tar::PaxExtensions::new(&data).flatten() {
                    match ext.key() {
                        Ok("path") => {
                            pax_path = Some(String::from_utf8_lossy(ext.value_bytes()).into());
                        }
                        // Only needed past the 8 GiB of the header's octal size field.
                        Ok("size") if ext.value_bytes() != size_field(&entry) => {
                            return Err(UploadError::TooLarge {
                                at: pax_path.clone().unwrap_or_else(|| progress.last.clone()),
                                detail: format!(
                                    "a PAX header declares a size of {} bytes; one member may \
                                     hold at most {}",
                                    String::from_utf8_lossy(ext.value_bytes()),
                                    human_bytes(limits.max_entry_bytes as u64)
                                ),
                            });
                        }
                        _ => {}
                    }
                }
            }
            continue;
        }
        let raw = long_name
            .take()
            .or(pax_path.take())
            .unwrap_or_else(|| String::from_utf8_lossy(&entry.path_bytes()).into_owned());
        progress.last = raw.clone();
        let dir = kind.is_dir();
        let member = names.check(&raw, dir)?;
        if let Some(refusal) = refuse_tar_type(kind, &member.path) {
            return Err(refusal);
        }
        if !(dir || kind.is_file() || kind.is_contiguous()) {
            continue; // a GNU volume label: names the tape, not a file
        }
        if !dir && size > limits.max_entry_bytes as u64 {
            return Err(UploadError::TooLarge {
                at: member.path,
                detail: format!(
                    "the member is {}; one member may hold at most {}",
                    human_bytes(size),
                    human_bytes(limits.max_entry_bytes as u64)
                ),
            });
        }
        if member.path.is_empty() || !visitor.member(&member)? || dir {
            continue;
        }
        let bytes = match read_bounded(&mut entry, size, limits.max_entry_bytes) {
            Outcome::Bytes(b) if b.len() as u64 == size => b,
            Outcome::Bytes(b) => {
                return Err(UploadError::Truncated {
                    at: member.path,
                    detail: format!(
                        "the archive ends inside this member: {} of its {size} bytes are present",
                        b.len()
                    ),
                });
            }
            // Cannot happen: the header size was checked and the entry reads no further.
            Outcome::Over => {
                return Err(UploadError::member_bomb(
                    &member.path,
                    None,
                    false,
                    limits.max_entry_bytes,
                ));
            }
            Outcome::Failed(e, _) => return Err(tar_error(&member.path, e)),
        };
        visitor.file(&member, bytes)?;
    }
    Ok(())
}

/// The decimal text of a tar entry's header size, to compare with a PAX `size`.
fn size_field<R: Read>(entry: &tar::Entry<'_, R>) -> Vec<u8> {
    entry.size().to_string().into_bytes()
}

/// Reads a GNU long name or PAX extension member, bounded: real ones are a few hundred
/// bytes, and the `tar` crate itself would read any size.
fn extension_data<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    size: u64,
    last: &str,
) -> Result<Vec<u8>, UploadError> {
    if size > MAX_EXTENSION_BYTES {
        return Err(UploadError::TooLarge {
            at: last.to_string(),
            detail: format!(
                "an extended tar header after this member declares {}; at most {} are accepted",
                human_bytes(size),
                human_bytes(MAX_EXTENSION_BYTES)
            ),
        });
    }
    let mut data = Vec::with_capacity(size as usize);
    entry
        .by_ref()
        .take(size)
        .read_to_end(&mut data)
        .map_err(|e| tar_error(last, e))?;
    if (data.len() as u64) < size {
        return Err(UploadError::Truncated {
            at: last.to_string(),
            detail: "the archive ends inside an extended tar header".into(),
        });
    }
    Ok(data)
}

/// The refusal for a tar member type that is neither a file nor a folder.
fn refuse_tar_type(kind: tar::EntryType, at: &str) -> Option<UploadError> {
    let link = |what| UploadError::Link {
        at: at.to_string(),
        what,
    };
    let special = |what| UploadError::SpecialFile {
        at: at.to_string(),
        what,
    };
    Some(if kind.is_symlink() {
        link("symbolic link")
    } else if kind.is_hard_link() {
        link("hard link")
    } else if kind.is_character_special() || kind.is_block_special() {
        special("device file")
    } else if kind.is_fifo() {
        special("fifo (named pipe)")
    } else if kind.is_gnu_sparse() {
        special("sparse file")
    } else if kind.is_dir() || kind.is_file() || kind.is_contiguous() || kind.as_byte() == b'V' {
        return None;
    } else if kind.as_byte() == b'M' {
        special("multi-volume continuation")
    } else {
        special("member of an unknown type")
    })
}
