//! NBD protocol client and server.
