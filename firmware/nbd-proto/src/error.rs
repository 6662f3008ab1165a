//! The crate's error type: one enum for client, server and URL parsing, with
//! messages that say what went wrong and what to do about it.

use std::io;

/// Everything that can go wrong talking NBD.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The URL does not follow `nbd://HOST[:PORT]/EXPORT` or `nbd+unix:///EXPORT?socket=PATH`.
    #[error("invalid NBD URL '{url}': {reason}")]
    InvalidUrl { url: String, reason: String },

    /// The TCP or Unix socket connection could not be opened.
    // A `qemu-nbd` without `-t` (`--persistent`) serves one client and exits: a `--dry-run`
    // or an earlier run was that client, and "is the server running?" did not say why not.
    #[error(
        "cannot connect to NBD server at {server}: {source} (is the server running? a qemu-nbd          started without -t exits when its first client disconnects: start it with -t)"
    )]
    Connect { server: String, source: io::Error },

    /// The connection failed while talking to a peer.
    #[error("I/O error talking to NBD peer {peer}: {source}{}", gone(source))]
    Io { peer: String, source: io::Error },

    /// The server does not offer the export that was asked for.
    #[error("NBD server at {server} has no export '{export}'{available}")]
    NoSuchExport {
        server: String,
        export: String,
        /// Either empty or a ` (it offers: ...)` hint.
        available: String,
    },

    /// The peer sent something the protocol does not allow; the connection is unusable.
    #[error("NBD protocol violation by {peer}: {detail}")]
    Protocol { peer: String, detail: String },

    /// The server refused a handshake option with an error reply.
    #[error("NBD server at {server} refused {option}: {message}")]
    OptionRefused {
        server: String,
        option: &'static str,
        message: String,
    },

    /// A metadata context was asked for that the server does not provide.
    #[error("server {server} does not support meta context {context} — {hint}")]
    MetaContextUnsupported {
        server: String,
        context: String,
        hint: String,
    },

    /// The server answered a command with an NBD error number.
    #[error(
        "NBD server at {server} failed {command} at offset {offset} length {len}: {name}{message}"
    )]
    Command {
        server: String,
        command: &'static str,
        offset: u64,
        len: u64,
        code: u32,
        name: &'static str,
        /// Either empty or `: <server message>`.
        message: String,
    },

    /// A request reaches beyond the end of the export.
    #[error("request at offset {offset} length {len} is beyond the end of the {size}-byte NBD export {server}")]
    OutOfRange {
        server: String,
        offset: u64,
        len: u64,
        size: u64,
    },

    /// A write was attempted on a read-only connection.
    #[error("NBD export {server} is read-only (the server said so, or it was opened read-only); writes are refused")]
    ReadOnly { server: String },

    /// The server lacks a feature this operation needs.
    #[error("NBD server at {server} does not support {what}")]
    Unsupported { server: String, what: String },

    /// An earlier error left the connection out of step; reconnect.
    #[error("NBD connection to {server} is unusable after an earlier error; reconnect")]
    Poisoned { server: String },

    /// The server could not listen on the requested address.
    #[error("cannot serve NBD on {addr}: {source}")]
    Bind { addr: String, source: io::Error },
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What a connection that broke off means for the user: the other end went away, it did not
/// answer wrong ("Broken pipe" alone says neither).
fn gone(e: &io::Error) -> &'static str {
    match e.kind() {
        io::ErrorKind::BrokenPipe
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::UnexpectedEof => {
            " (the server closed the connection: the NBD server stopped, or the appliance or \
             disk it serves was unplugged or lost power)"
        }
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_the_server_closed_says_so() {
        let io = |kind| Error::Io {
            peer: "nbd+unix:///?socket=a.sock".into(),
            source: io::Error::from(kind),
        };
        for kind in [io::ErrorKind::BrokenPipe, io::ErrorKind::UnexpectedEof] {
            let text = io(kind).to_string();
            assert!(text.contains("the server closed the connection"), "{text}");
        }
        let text = io(io::ErrorKind::PermissionDenied).to_string();
        assert!(!text.contains("closed"), "{text}");
    }
}
