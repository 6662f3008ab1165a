//! The `mgear` library's one error type, [`Error`], and the few helpers that build it.
//!
//! Every pipeline returns [`Result`]. An error is one of: a message its raiser classified with an
//! exit code (and maybe the next step for the user) ([`Error::Coded`]); a message without a class
//! ([`Error::Msg`], exit 3 unless a cause in its chain says otherwise); what was being done when a
//! deeper error happened ([`Error::Context`]); or the typed error of a crate below (the on-medium
//! format, a volume, the boot drivers, the appliance API, the cloud clients, I/O, ...). `exit`
//! maps an error to its exit code by walking [`Error::chain`] and matching these types, never by
//! reading the text.
//!
//! `Display` prints the whole chain the way the CLI shows it, outermost first and joined by
//! `": "` (`capturing web01: reading /dev/sdb: Input/output error`), so `{}` and `{:#}` read the
//! same; this is the workspace's convention (the other crates' errors print their cause too).
//! [`Context`] adds a step to the chain, like `anyhow::Context` does in the binary; [`err!`] and
//! [`bail!`] build an unclassified message.
//!
//! [`err!`]: crate::err
//! [`bail!`]: crate::bail

use std::error::Error as StdError;

/// The `mgear` library's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the `mgear` library (see the module doc).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An error whose raiser knew its exit code (`exit::USAGE`, ...) and maybe the next step.
    #[error("{message}")]
    Coded {
        /// The process exit code this error calls for.
        code: i32,
        /// What went wrong, for the user.
        message: String,
        /// What to do next; `None` falls back to the class's generic hint (`exit::hint`).
        hint: Option<String>,
    },
    /// A message with no class of its own.
    #[error("{0}")]
    Msg(String),
    /// What was being done when `cause` happened.
    #[error("{context}: {cause}")]
    Context {
        /// The step, e.g. "opening the medium fat:/dev/sdc".
        context: String,
        /// What went wrong in it.
        #[source]
        cause: Box<Error>,
    },
    /// A typed outcome a caller matches on rather than a failure to report (e.g. ingest's
    /// `Held`: a disk written but left unfinished on purpose); find it with [`Error::take`].
    #[error("{0}")]
    Other(Box<dyn StdError + Send + Sync + 'static>),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Format(#[from] image_format::Error),
    #[error("{0}")]
    Store(#[from] image_format::StoreError),
    #[error("{0}")]
    Volume(#[from] mgear_volume::Error),
    #[error("{0}")]
    Boot(#[from] mgear_boot::BootError),
    #[error("{0}")]
    Cloud(#[from] mgear_cloud::CloudError),
    #[error("{0}")]
    Json(#[from] serde_json::Error),
    #[error("{0}")]
    Errno(#[from] nix::errno::Errno),
    #[error("{0}")]
    Nbd(#[from] mgear_nbd::Error),
    #[error("{0}")]
    Frame(#[from] mgear_appliance_api::protocol::FrameError),
    #[error("{0}")]
    Serial(#[from] serialport::Error),
    #[error("{0}")]
    Random(#[from] getrandom::Error),
}

impl Error {
    /// An unclassified message (exit 3 unless its causes say otherwise).
    pub fn msg(message: impl Into<String>) -> Error {
        Error::Msg(message.into())
    }

    /// A typed outcome (see [`Error::Other`]).
    pub fn other(e: impl StdError + Send + Sync + 'static) -> Error {
        Error::Other(Box::new(e))
    }

    /// `self` with `context` added in front of it.
    pub fn context(self, context: impl std::fmt::Display) -> Error {
        Error::Context {
            context: context.to_string(),
            cause: Box::new(self),
        }
    }

    /// This error and its causes, outermost first: for each of our own links the link itself
    /// (as [`Error`]) and, for a typed variant, the value it holds and that value's causes.
    pub fn chain(&self) -> impl Iterator<Item = &(dyn StdError + 'static)> {
        std::iter::successors(Some(self as &(dyn StdError + 'static)), |&e| next_link(e)).flat_map(
            |e| {
                let held = match e.downcast_ref::<Error>() {
                    Some(Error::Other(b)) => Some(&**b as &(dyn StdError + 'static)),
                    _ => None,
                };
                std::iter::once(e).chain(held)
            },
        )
    }

    /// The first error of type `T` in the chain.
    pub fn find<T: StdError + 'static>(&self) -> Option<&T> {
        self.chain().find_map(|e| e.downcast_ref::<T>())
    }

    /// The typed outcome `T` this error is (at its top, not under a context), or the error back.
    pub fn take<T: StdError + 'static>(self) -> std::result::Result<Box<T>, Error> {
        match self {
            Error::Other(b) if b.is::<T>() => Ok(b.downcast::<T>().expect("checked by `is`")),
            e => Err(e),
        }
    }
}

/// The link after `e`. A Context's cause is a `Box<Error>`, an error type of its own whose
/// `source` skips the boxed link: step into the box instead, so no link of ours is left out.
fn next_link<'a>(e: &'a (dyn StdError + 'static)) -> Option<&'a (dyn StdError + 'static)> {
    match e.downcast_ref::<Box<Error>>() {
        Some(inner) => Some(&**inner as &(dyn StdError + 'static)),
        None => e.source(),
    }
}

/// Adds a step to an error's chain: `file.read(..).context("reading the key")?`.
pub trait Context<T> {
    /// On error, put `context` in front of it.
    fn context<C: std::fmt::Display>(self, context: C) -> Result<T>;
    /// On error, put `f()` in front of it (built only on error).
    fn with_context<C: std::fmt::Display, F: FnOnce() -> C>(self, f: F) -> Result<T>;
}

impl<T, E: Into<Error>> Context<T> for std::result::Result<T, E> {
    fn context<C: std::fmt::Display>(self, context: C) -> Result<T> {
        self.map_err(|e| e.into().context(context))
    }

    fn with_context<C: std::fmt::Display, F: FnOnce() -> C>(self, f: F) -> Result<T> {
        self.map_err(|e| e.into().context(f()))
    }
}

impl<T> Context<T> for Option<T> {
    fn context<C: std::fmt::Display>(self, context: C) -> Result<T> {
        self.ok_or_else(|| Error::msg(context.to_string()))
    }

    fn with_context<C: std::fmt::Display, F: FnOnce() -> C>(self, f: F) -> Result<T> {
        self.ok_or_else(|| Error::msg(f().to_string()))
    }
}

/// An unclassified [`Error`] from a format string: `err!("no disk {n}")`.
#[macro_export]
macro_rules! err {
    ($($arg:tt)*) => {
        $crate::error::Error::Msg(format!($($arg)*))
    };
}

/// Return early with [`err!`]'s error.
#[macro_export]
macro_rules! bail {
    ($($arg:tt)*) => {
        return Err($crate::err!($($arg)*))
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("held")]
    struct Held(u32);

    #[test]
    fn display_is_the_whole_chain_and_chain_finds_every_link() {
        let io = std::io::Error::other("disk gone");
        let e: std::result::Result<(), std::io::Error> = Err(io);
        let e = e
            .context("reading SEG-00001")
            .context("opening web01")
            .unwrap_err();
        assert_eq!(e.to_string(), "opening web01: reading SEG-00001: disk gone");
        assert_eq!(format!("{e:#}"), e.to_string());
        assert!(e.find::<std::io::Error>().is_some());
        let coded = Error::Coded {
            code: 2,
            message: "bad key".into(),
            hint: None,
        }
        .context("ingest");
        assert!(coded.chain().any(|l| matches!(
            l.downcast_ref::<Error>(),
            Some(Error::Coded { code: 2, .. })
        )));
        let none: Option<u8> = None;
        assert_eq!(
            none.context("no disk 3").unwrap_err().to_string(),
            "no disk 3"
        );
    }

    #[test]
    fn a_typed_outcome_is_taken_back_only_at_the_top() {
        let e = Error::other(Held(7));
        assert_eq!(e.find::<Held>().map(|h| h.0), Some(7));
        assert_eq!(e.take::<Held>().map(|h| h.0).ok(), Some(7));
        let wrapped = Error::other(Held(7)).context("disk 1");
        assert!(wrapped.find::<Held>().is_some());
        assert!(wrapped.take::<Held>().is_err());
        let plain = err!("disk {}", 2);
        assert_eq!(plain.to_string(), "disk 2");
        let bailed = || -> Result<()> { bail!("stop at {}", 3) };
        assert_eq!(bailed().unwrap_err().to_string(), "stop at 3");
    }
}
