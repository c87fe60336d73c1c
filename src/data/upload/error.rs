//! Why an upload was refused.
//!
//! One variant per failure kind, so the HTTP layer can choose a status from the variant
//! alone ([`UploadError::kind`] is the stable slug it also shows to clients), and each
//! carries the place it happened (`at`: a member path inside the archive, a multipart
//! part name such as `train_images`, or `train, line 12, column 3`), so the message
//! tells the user which of their thousands of files to fix. Messages are written for the
//! person who made the upload: they say what is wrong and, where there is one, the fix.

use std::io;

use crate::data::idx::IdxError;
use crate::data::image::ImageError;

use super::human_bytes;

#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// The upload's bytes are none of the archive formats taken.
    #[error("the upload is not a zip, tar or tar.gz archive: {detail}")]
    NotAnArchive { detail: String },
    /// The archive (or a member, or an IDX file) ends before its content does.
    #[error("{at}: the upload is cut off: {detail}")]
    Truncated { at: String, detail: String },
    /// The archive's structure is damaged (bad checksum, bad header).
    #[error("{at}: the archive is damaged: {detail}")]
    CorruptArchive { at: String, detail: String },
    /// A member would inflate past a limit: declared or actual size of one member over
    /// `max_entry_bytes`, or all members together over `max_unpacked_bytes`.
    #[error("{detail}")]
    ZipBomb { at: String, detail: String },
    /// More archive members than `max_entries`.
    #[error("the archive has {count} members; at most {limit} are accepted")]
    TooManyEntries { count: String, limit: usize },
    /// A member path with `..` components.
    #[error("{at}: a path that leaves the archive")]
    PathTraversal { at: String },
    /// A member path from the file system's root (`/x`, `\x`, `C:\x`).
    #[error("{at}: an absolute path; archive members must have relative paths")]
    AbsolutePath { at: String },
    /// A symbolic or hard link.
    #[error("{at}: a {what}; links are not accepted in uploads, archive the files themselves")]
    Link { at: String, what: &'static str },
    /// A device file, fifo or other member that is neither a file nor a folder.
    #[error("{at}: a {what}; only files and folders are accepted")]
    SpecialFile { at: String, what: &'static str },
    /// Two members with one name (after removing `.` and empty components).
    #[error("{at}: two members have this name; which one is meant is ambiguous")]
    DuplicateName { at: String },
    /// An archive inside the archive.
    #[error(
        "{at}: an archive inside the archive ({what}); unpack it and put its class folders \
         in the uploaded archive"
    )]
    NestedArchive { at: String, what: String },
    /// An encrypted zip member.
    #[error("{at}: the member is encrypted; upload an archive without a password")]
    Encrypted { at: String },
    /// A zip compression method this server does not read.
    #[error("{at}: {detail}; compress with deflate (the default of every zip tool) or store")]
    UnsupportedCompression { at: String, detail: String },
    /// A class folder (or, for IDX/CSV, a label below the largest) without samples.
    #[error("{at}: {detail}")]
    EmptyClass {
        at: String,
        class: String,
        detail: String,
    },
    /// Fewer than two classes.
    #[error(
        "the upload has {} class(es) ({}); a classifier needs at least 2",
        .classes.len(),
        .classes.join(", ")
    )]
    SingleClass { classes: Vec<String> },
    /// A label with no class name.
    #[error(
        "{at}: sample {sample} has label {label}, but there are only {classes} classes \
         (labels 0 to {})",
        .classes.saturating_sub(1)
    )]
    LabelOutOfRange {
        at: String,
        sample: usize,
        label: u8,
        classes: usize,
    },
    /// An images part and its labels part disagree on the number of samples.
    #[error("{at} holds {images} images but {labels_at} holds {labels} labels; they must match")]
    CountMismatch {
        at: String,
        images: usize,
        labels_at: String,
        labels: usize,
    },
    /// An image that cannot be decoded (or is not an image at all).
    #[error("{at}: {source}")]
    CorruptImage {
        at: String,
        #[source]
        source: ImageError,
    },
    /// Something over a size limit: an image too large to decode, a tar member, the
    /// decoded dataset, a CSV line.
    #[error("{at}: {detail}")]
    TooLarge { at: String, detail: String },
    /// The decoded dataset over `max_decoded_bytes`.
    #[error(
        "the decoded images come to {}; at most {} are stored (use fewer or smaller images, \
         or the size option to shrink them)",
        .bytes.map_or("more than 2^64 bytes".to_string(), human_bytes),
        human_bytes(*.limit as u64)
    )]
    DatasetTooLarge { bytes: Option<u64>, limit: usize },
    /// More samples than `max_samples`.
    #[error("the upload has {count} samples; at most {limit} are accepted")]
    TooManySamples { count: String, limit: usize },
    /// More classes than `max_classes`.
    #[error("the upload has {count} classes; at most {limit} are accepted")]
    TooManyClasses { count: usize, limit: usize },
    /// Images of different sizes without the `size` option.
    #[error(
        "{first_at} is {}x{} (height x width) but {at} is {}x{}; pass the size option \
         to resize every image to one size",
        .first.0, .first.1, .second.0, .second.1
    )]
    MixedSizes {
        first_at: String,
        first: (usize, usize),
        at: String,
        second: (usize, usize),
    },
    /// Images larger than `max_side`, or CSV rows whose pixel count is not a square,
    /// without the `size` option.
    #[error("{at}: {detail}")]
    SizeRequired { at: String, detail: String },
    /// The archive's folders are not class folders.
    #[error("{at}: {detail}")]
    BadLayout { at: String, detail: String },
    /// A CSV value or row that cannot be read.
    #[error("{at}: {detail}")]
    BadCsv { at: String, detail: String },
    /// An IDX part that is not an IDX file of the expected shape.
    #[error("{at}: {detail}")]
    BadIdx { at: String, detail: String },
    /// One of a pair of parts without the other.
    #[error("{at}: {detail}")]
    MissingPart { at: String, detail: String },
    /// An option out of range.
    #[error("option {option}: {detail}")]
    BadOption {
        option: &'static str,
        detail: String,
    },
    /// The spooled file could not be read: the server's fault, not the upload's.
    #[error("{at}: reading the uploaded file failed: {source}")]
    Io {
        at: String,
        #[source]
        source: io::Error,
    },
}

impl UploadError {
    /// Where it went wrong: the member path, the part name, the CSV line and column, the
    /// option; `None` for the upload as a whole.
    pub fn at(&self) -> Option<&str> {
        use UploadError::*;
        match self {
            Truncated { at, .. }
            | CorruptArchive { at, .. }
            | ZipBomb { at, .. }
            | PathTraversal { at }
            | AbsolutePath { at }
            | Link { at, .. }
            | SpecialFile { at, .. }
            | DuplicateName { at }
            | NestedArchive { at, .. }
            | Encrypted { at }
            | UnsupportedCompression { at, .. }
            | EmptyClass { at, .. }
            | LabelOutOfRange { at, .. }
            | CountMismatch { at, .. }
            | CorruptImage { at, .. }
            | TooLarge { at, .. }
            | MixedSizes { at, .. }
            | SizeRequired { at, .. }
            | BadLayout { at, .. }
            | BadCsv { at, .. }
            | BadIdx { at, .. }
            | MissingPart { at, .. }
            | Io { at, .. } => Some(at).filter(|a| !a.is_empty()).map(String::as_str),
            BadOption { option, .. } => Some(option),
            NotAnArchive { .. }
            | TooManyEntries { .. }
            | SingleClass { .. }
            | DatasetTooLarge { .. }
            | TooManySamples { .. }
            | TooManyClasses { .. } => None,
        }
    }

    /// A short stable slug naming the kind of failure, for clients and logs.
    pub fn kind(&self) -> &'static str {
        use UploadError::*;
        match self {
            NotAnArchive { .. } => "not-an-archive",
            Truncated { .. } => "truncated",
            CorruptArchive { .. } => "corrupt-archive",
            ZipBomb { .. } => "zip-bomb",
            TooManyEntries { .. } => "too-many-entries",
            PathTraversal { .. } => "path-traversal",
            AbsolutePath { .. } => "absolute-path",
            Link { .. } => "link",
            SpecialFile { .. } => "special-file",
            DuplicateName { .. } => "duplicate-name",
            NestedArchive { .. } => "nested-archive",
            Encrypted { .. } => "encrypted",
            UnsupportedCompression { .. } => "unsupported-compression",
            EmptyClass { .. } => "empty-class",
            SingleClass { .. } => "single-class",
            LabelOutOfRange { .. } => "label-out-of-range",
            CountMismatch { .. } => "count-mismatch",
            CorruptImage { .. } => "corrupt-image",
            TooLarge { .. } | DatasetTooLarge { .. } => "too-large",
            TooManySamples { .. } => "too-many-samples",
            TooManyClasses { .. } => "too-many-classes",
            MixedSizes { .. } => "mixed-sizes",
            SizeRequired { .. } => "size-required",
            BadLayout { .. } => "bad-layout",
            BadCsv { .. } => "bad-csv",
            BadIdx { .. } => "bad-idx",
            MissingPart { .. } => "missing-part",
            BadOption { .. } => "bad-option",
            Io { .. } => "io",
        }
    }

    /// Whether the failure is a size limit (HTTP 413) rather than bad content (422) or
    /// a bad request (400); `Io` is neither (the server's fault, 500).
    pub fn is_limit(&self) -> bool {
        use UploadError::*;
        matches!(
            self,
            ZipBomb { .. }
                | TooManyEntries { .. }
                | TooLarge { .. }
                | DatasetTooLarge { .. }
                | TooManySamples { .. }
                | TooManyClasses { .. }
        )
    }

    /// A decoder error for an image member: a limit becomes [`UploadError::TooLarge`],
    /// anything else [`UploadError::CorruptImage`].
    pub(crate) fn image(at: &str, e: ImageError) -> Self {
        match e {
            ImageError::TooLarge(_) => UploadError::TooLarge {
                at: at.to_string(),
                detail: e.to_string(),
            },
            source => UploadError::CorruptImage {
                at: at.to_string(),
                source,
            },
        }
    }

    /// An IDX parse error for a part: a short read is [`UploadError::Truncated`], a size
    /// over the limit [`UploadError::TooLarge`], anything else [`UploadError::BadIdx`].
    pub(crate) fn idx(at: &str, e: IdxError) -> Self {
        let at = at.to_string();
        match e {
            IdxError::Io { source, .. } => UploadError::Io { at, source },
            IdxError::Truncated { .. } => UploadError::Truncated {
                at,
                detail: e.to_string(),
            },
            IdxError::TooLarge { .. } | IdxError::OverLimit { .. } => UploadError::TooLarge {
                at,
                detail: e.to_string(),
            },
            other => UploadError::BadIdx {
                at,
                detail: other.to_string(),
            },
        }
    }

    /// One member over `limit` bytes (declared or actually inflated).
    pub(crate) fn member_bomb(at: &str, size: Option<u64>, declared: bool, limit: usize) -> Self {
        let size = match size {
            Some(n) => human_bytes(n),
            None => format!("more than {}", human_bytes(limit as u64)),
        };
        let verb = if declared { "declares" } else { "inflates to" };
        UploadError::ZipBomb {
            at: at.to_string(),
            detail: format!(
                "member {at} {verb} {size} uncompressed; one member may hold at most {}",
                human_bytes(limit as u64)
            ),
        }
    }
}
