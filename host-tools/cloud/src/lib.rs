//! OpenStack calls MotionGear needs to put a machine into a private cloud: a Cinder volume to
//! ingest into and a Nova server that boots from it.
//!
//! - [`auth`]: where the endpoints and the token come from: Keystone v3 password auth from the
//!   standard `OS_*` variables or `clouds.yaml`, or the no-auth modes of a lab
//!   (`X-Auth-Token: admin:<project>`, see `scripts/cloud-lab.sh`).
//! - [`cinder`]: create a volume (size, type, metadata, bootable), wait for a status with a
//!   deadline, find one by metadata (how a re-run finds its volume: [`Cinder::ensure_volume`]),
//!   tell its RBD image ([`Cinder::rbd_image`]), delete.
//! - [`boot`]: boot from a volume through Nova and prove it from the console, returning the
//!   same `BootReport` as `mgear boot`'s local drivers.
//! - [`nova`]: flavors, a server booted from a volume with networks "none" (microversion 2.37),
//!   waiting for ACTIVE through the instance actions when `GET /servers/{id}` fails for lack of
//!   Neutron, console output, delete.
//!
//! Blocking HTTP (ureq): every call has a timeout, every wait a caller-given deadline, and an
//! error says which service, which URL and what the cloud answered.

pub mod auth;
pub mod boot;
pub mod cinder;
pub mod ebs;
mod http;
pub mod nova;
#[cfg(test)]
mod testserver;

pub use auth::{Auth, Endpoints, Keystone, NoAuth, Session};
pub use boot::{boot_from_volume, NovaBoot, NovaBootSpec};
pub use cinder::{gib_for, Cinder, Ensured, NewVolume, RbdImage, Volume, VolumeFor};
pub use nova::{Flavor, InstanceAction, Nova, ServerState};

use std::time::Duration;

/// Everything that can go wrong talking to a cloud.
#[derive(Debug, thiserror::Error)]
pub enum CloudError {
    /// The settings (environment, clouds.yaml, arguments) are incomplete or contradictory.
    #[error("cloud configuration: {0}")]
    Config(String),
    /// Reading clouds.yaml or another local file failed.
    #[error("reading {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The service answered with an HTTP error status.
    #[error("{method} {url}: HTTP {status}: {message}")]
    Http {
        /// Request method.
        method: String,
        /// Request URL.
        url: String,
        /// HTTP status code.
        status: u16,
        /// The service's error message (OpenStack's `{"<kind>": {"message": ...}}`) or the body.
        message: String,
    },
    /// The service could not be reached (connection refused, DNS, TLS, timeout).
    #[error("{method} {url}: cannot reach the service: {message}")]
    Transport {
        /// Request method.
        method: String,
        /// Request URL.
        url: String,
        /// What failed.
        message: String,
    },
    /// The service answered something this client does not understand.
    #[error("unexpected answer from {what}: {detail}")]
    BadResponse {
        /// Which call.
        what: String,
        /// What was wrong with it.
        detail: String,
    },
    /// A wait ran out of time.
    #[error("{what} did not {wanted} within {} s (last seen: {last})", .after.as_secs())]
    Timeout {
        /// The object waited for.
        what: String,
        /// What it should have done.
        wanted: String,
        /// The deadline.
        after: Duration,
        /// Its last observed state.
        last: String,
    },
    /// A volume went into an error status.
    #[error(
        "volume {id} went to status {status:?}; read cinder-volume's and cinder-scheduler's logs"
    )]
    VolumeFailed {
        /// Volume id.
        id: String,
        /// Its status.
        status: String,
    },
    /// The cloud serves what was asked in a way this client cannot write (e.g. an iSCSI volume).
    #[error("{0}")]
    Unsupported(String),
    /// The caller asked the wait for a server to stop ([`boot::NovaBootSpec::stop`]): the
    /// server is left as it is.
    #[error("stopped while waiting for server {id} to prove its boot; the server is left running")]
    Stopped {
        /// Server id.
        id: String,
    },
    /// A server failed to build or went to ERROR.
    #[error("server {id} failed: {message}")]
    ServerFailed {
        /// Server id.
        id: String,
        /// The fault or failed event Nova reported.
        message: String,
    },
}

/// Result with [`CloudError`].
pub type Result<T> = std::result::Result<T, CloudError>;
