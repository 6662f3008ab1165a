//! The crate's one error type, and [`Location`]: where on the medium (and on
//! the source disk) a problem sits, so every message can name capture,
//! generation, segment, record and byte ranges.

use alloc::boxed::Box;
use alloc::string::String;
use core::fmt;
use core::ops::Range;

use crate::store::StoreError;

/// Where something is: every field that is known is filled in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Location {
    /// Capture name (`web01`).
    pub capture: String,
    /// Generation number (1-based, `G0001`).
    pub generation: Option<u32>,
    /// Segment number within the generation (`SEG-00003`).
    pub segment: Option<u32>,
    /// Record number within the segment.
    pub record: Option<u32>,
    /// Path of the file on the medium.
    pub file: Option<String>,
    /// Byte range within that file.
    pub file_range: Option<Range<u64>>,
    /// Byte range of the source disk the problem affects.
    pub disk_range: Option<Range<u64>>,
}

impl Location {
    /// A location naming only a capture.
    pub fn capture(name: &str) -> Self {
        Location {
            capture: name.into(),
            ..Default::default()
        }
    }

    /// The same location in generation `g`.
    pub fn generation(mut self, g: u32) -> Self {
        self.generation = Some(g);
        self
    }

    /// The same location in file `path`.
    pub fn file(mut self, path: &str) -> Self {
        self.file = Some(path.into());
        self
    }

    /// The same location narrowed to bytes `range` of its file.
    pub fn bytes(mut self, range: Range<u64>) -> Self {
        self.file_range = Some(range);
        self
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A file of the medium itself (the span's map and label) belongs to no capture: it
        // read "capture  (MGEAR/SPANMAP)".
        if self.capture.is_empty() {
            f.write_str("medium")?;
        } else {
            write!(f, "capture {}", self.capture)?;
        }
        if let Some(g) = self.generation {
            write!(f, " generation {g}")?;
        }
        if let Some(s) = self.segment {
            write!(f, " segment {s}")?;
        }
        if let Some(r) = self.record {
            write!(f, " record {r}")?;
        }
        if let Some(p) = &self.file {
            write!(f, " ({p}")?;
            if let Some(r) = &self.file_range {
                write!(f, " bytes {}..{}", r.start, r.end)?;
            }
            f.write_str(")")?;
        }
        if let Some(r) = &self.disk_range {
            write!(f, " [disk bytes {}..{}]", r.start, r.end)?;
        }
        Ok(())
    }
}

/// Everything that can go wrong reading or writing the image format.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A capture name the format does not accept.
    #[error("invalid capture name {name:?}: {why}; use 1 to 32 ASCII letters, digits, '-' or '_'")]
    InvalidName { name: String, why: &'static str },
    /// Data that is on none of the media given (a span whose map does not
    /// place it): not bad data, a medium to give.
    #[error("{0}")]
    NotOnMediaGiven(String),
    /// Caller-supplied parameters that cannot work.
    #[error("invalid capture parameters: {0}")]
    InvalidParams(String),
    /// The medium failed an operation on `path`.
    #[error("{}", store_message(.path, .error))]
    Store { path: String, error: StoreError },
    /// Bytes on the medium are not what the format says they must be.
    #[error("{at}: {what}")]
    Corrupt { at: Box<Location>, what: String },
    /// The key, identity or passphrase does not belong to this capture.
    #[error("this key does not open capture {name}")]
    WrongKey { name: String },
    /// A key is needed but none was given or none could be unwrapped.
    #[error("capture {name}: {why}")]
    NeedKey { name: String, why: String },
    /// No capture of that name on the medium.
    #[error("capture {name} not found on the medium")]
    NoCapture { name: String },
    /// No finished generation matching the request.
    #[error("capture {name}: {why}")]
    NoGeneration { name: String, why: String },
    /// An unfinished generation exists and cannot be resumed with these parameters.
    #[error("capture {name} generation {generation} is unfinished and was started with different parameters; rerun with the same parameters to resume it, or remove it with `mgear capture --abort --medium MEDIUM --name {owner}` (or `mgear medium rm --medium MEDIUM --name {owner} --generation {generation}`)", owner = crate::set::owner(name))]
    ResumeMismatch { name: String, generation: u32 },
    /// The caller used the API out of order (e.g. appended chunk 7 before chunk 6).
    #[error("{0}")]
    Usage(String),
    /// A limit of the format or of FAT32 was reached.
    #[error("{0}")]
    Limit(String),
    /// A crypto or compression backend failed where it cannot fail on good input.
    #[error("{0}")]
    Backend(String),
    /// Local file I/O (key cache files).
    #[cfg(feature = "std")]
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

impl Error {
    /// Whether this is damage found on the medium (bytes not as the format
    /// says, or the file system broken where the path lies): a finding about
    /// what is there, not a medium that failed to answer. A listing reports
    /// it for the capture it is in and goes on with the others.
    pub fn is_damage(&self) -> bool {
        matches!(
            self,
            Error::Corrupt { .. }
                | Error::Store {
                    error: crate::store::StoreError::Damaged(_),
                    ..
                }
        )
    }

    /// A [`Error::Corrupt`] at `at`.
    pub fn corrupt(at: Location, what: impl Into<String>) -> Self {
        Error::Corrupt {
            at: Box::new(at),
            what: what.into(),
        }
    }
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = core::result::Result<T, E>;

/// Adds the path to a store error.
pub(crate) trait StoreCtx<T> {
    fn at(self, path: &str) -> Result<T>;
}

impl<T> StoreCtx<T> for core::result::Result<T, StoreError> {
    fn at(self, path: &str) -> Result<T> {
        self.map_err(|error| Error::Store {
            path: path.into(),
            error,
        })
    }
}

/// "medium error on PATH: ERROR", the path once where the error already starts with it (a
/// damaged file system names where: "on MGEAR/x/G0001: MGEAR/x/G0001: ...").
fn store_message(path: &str, error: &StoreError) -> alloc::string::String {
    let said = alloc::format!("{error}");
    match said.starts_with(path) && !path.is_empty() {
        true => alloc::format!("medium error on {said}"),
        false => alloc::format!("medium error on {path}: {said}"),
    }
}
