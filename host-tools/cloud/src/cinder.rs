//! Cinder (block storage v3): the volumes MotionGear ingests into.
//!
//! A volume is created with its size in GiB (Cinder has no finer unit: a disk is rounded up),
//! an optional volume type, and metadata naming what it holds (capture id, generation,
//! manifest root), which is how a re-run finds the same volume again. Cinder creates the
//! backing storage asynchronously: wait for `available` before writing. Nova boots only from a
//! volume marked bootable (`os-set_bootable`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::{json, Value};

use crate::auth::{Service, Session};
use crate::{CloudError, Result};

const POLL: Duration = Duration::from_millis(500);
const GIB: u64 = 1 << 30;

/// Cinder sizes volumes in whole GiB: the smallest volume that holds `bytes` (at least 1 GiB).
pub fn gib_for(bytes: u64) -> u64 {
    bytes.div_ceil(GIB).max(1)
}

/// Metadata keys MotionGear puts on the volumes it ingests into. The first four say what the
/// volume holds and are how a re-run finds it again; [`meta::STATE`] says whether the ingest
/// finished.
pub mod meta {
    /// The machine name given on the command line (`cinder:NAME`).
    pub const NAME: &str = "mgear.name";
    /// Capture id (hex).
    pub const CAPTURE: &str = "mgear.capture";
    /// Generation number of the capture written.
    pub const GENERATION: &str = "mgear.generation";
    /// Manifest root (hex) of that generation.
    pub const MANIFEST_ROOT: &str = "mgear.manifest_root";
    /// `writing` while chunks go in, `complete` once written and read back.
    pub const STATE: &str = "mgear.state";
    /// [`STATE`] value while writing.
    pub const WRITING: &str = "writing";
    /// [`STATE`] value once the volume holds the capture, verified.
    pub const COMPLETE: &str = "complete";
}

/// The volume an ingest wants: what it holds (the identity a re-run finds it by) and its shape.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VolumeFor {
    /// Machine (and volume) name.
    pub name: String,
    /// Disk size in bytes; the volume is rounded up to whole GiB ([`gib_for`]).
    pub size_bytes: u64,
    /// Volume type; the cloud's default when `None`.
    pub volume_type: Option<String>,
    /// Availability zone; the cloud's default when `None`.
    pub availability_zone: Option<String>,
    /// Capture id.
    pub capture_id: String,
    /// Generation.
    pub generation: u64,
    /// Manifest root of that generation.
    pub manifest_root: String,
}

impl VolumeFor {
    /// The metadata that names what the volume holds; a re-run looks its volume up by it.
    pub fn identity(&self) -> BTreeMap<String, String> {
        [
            (meta::NAME, self.name.clone()),
            (meta::CAPTURE, self.capture_id.clone()),
            (meta::GENERATION, self.generation.to_string()),
            (meta::MANIFEST_ROOT, self.manifest_root.clone()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
}

/// What [`Cinder::ensure_volume`] found or made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ensured {
    /// The volume, `available`.
    pub volume: Volume,
    /// True when it was created by this call, false when a previous run's was found.
    pub created: bool,
}

/// Where a volume's bytes live in Ceph, from Cinder's connection info (or the RBD driver's
/// `volume-<id>` naming).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RbdImage {
    /// Pool (`volumes` in the lab).
    pub pool: String,
    /// Image name (`volume-<id>`).
    pub image: String,
    /// Ceph user Cinder hands to compute hosts (`cinder`), when it said.
    pub user: Option<String>,
    /// Monitor addresses `host:port` from the connection info (empty when unknown: the local
    /// ceph.conf then names them).
    pub monitors: Vec<String>,
    /// How it was learned: `connection-info` or `naming-convention`.
    pub source: &'static str,
}

impl RbdImage {
    /// `POOL/IMAGE`.
    pub fn spec(&self) -> String {
        format!("{}/{}", self.pool, self.image)
    }
}

/// What to create.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewVolume {
    /// Volume name.
    pub name: String,
    /// Size in GiB (at least 1).
    pub size_gib: u64,
    /// Volume type; the cloud's default when `None`.
    pub volume_type: Option<String>,
    /// Metadata (string keys and values, at most 255 characters each).
    pub metadata: BTreeMap<String, String>,
    /// Availability zone; the cloud's default when `None`.
    pub availability_zone: Option<String>,
}

/// A volume as Cinder reports it (the fields MotionGear uses).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Volume {
    /// Volume id (a UUID); its RBD image is `volume-<id>` on Ceph backends.
    pub id: String,
    /// Name (may be empty).
    #[serde(default, deserialize_with = "null_as_empty")]
    pub name: String,
    /// `creating`, `available`, `in-use`, `error`, `deleting`, ...
    pub status: String,
    /// Size in GiB.
    pub size: u64,
    /// `"true"` or `"false"` (Cinder answers a string).
    #[serde(default, deserialize_with = "null_as_empty")]
    pub bootable: String,
    /// Volume type name.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub volume_type: String,
    /// Metadata.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// `host@backend#pool` of the volume service holding it (admins only; empty otherwise).
    #[serde(
        default,
        rename = "os-vol-host-attr:host",
        deserialize_with = "null_as_empty"
    )]
    pub host: String,
    /// When Cinder created it (ISO 8601, as Cinder writes it: orders as text).
    #[serde(default, deserialize_with = "null_as_empty")]
    pub created_at: String,
}

impl Volume {
    /// Whether Nova may boot from it.
    pub fn is_bootable(&self) -> bool {
        self.bootable.eq_ignore_ascii_case("true")
    }

    /// Whether every pair of `wanted` is in its metadata.
    pub fn has_metadata(&self, wanted: &BTreeMap<String, String>) -> bool {
        wanted.iter().all(|(k, v)| self.metadata.get(k) == Some(v))
    }
}

fn null_as_empty<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<String, D::Error> {
    Ok(Option::<String>::deserialize(d)?.unwrap_or_default())
}

/// Cinder v3 client over a [`Session`].
#[derive(Debug)]
pub struct Cinder<'a> {
    session: &'a Session,
}

/// Statuses from which a volume does not recover by waiting.
const FAILED: &[&str] = &[
    "error",
    "error_deleting",
    "error_extending",
    "error_restoring",
    "error_managing",
];

impl<'a> Cinder<'a> {
    /// A client using `session`'s block-storage endpoint.
    pub fn new(session: &'a Session) -> Cinder<'a> {
        Cinder { session }
    }

    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value> {
        // 3.0 is enough for everything here and every Cinder since Mitaka speaks it.
        Ok(self
            .session
            .call(Service::Volume, method, path, Some("3.0"), body)?
            .body)
    }

    fn volume_from(&self, what: &str, body: &Value) -> Result<Volume> {
        let v = body
            .get("volume")
            .cloned()
            .ok_or_else(|| CloudError::BadResponse {
                what: what.to_string(),
                detail: "no \"volume\" in the answer".into(),
            })?;
        serde_json::from_value(v).map_err(|e| CloudError::BadResponse {
            what: what.to_string(),
            detail: format!("volume: {e}"),
        })
    }

    /// Create a volume; it starts in `creating` (see [`Cinder::wait_status`]).
    pub fn create(&self, spec: &NewVolume) -> Result<Volume> {
        if spec.size_gib == 0 {
            return Err(CloudError::Config(
                "a Cinder volume is at least 1 GiB".into(),
            ));
        }
        for (k, v) in &spec.metadata {
            if k.is_empty() || k.chars().count() > 255 || v.chars().count() > 255 {
                return Err(CloudError::Config(format!(
                    "volume metadata {k:?}: keys must be 1-255 characters and values at most 255"
                )));
            }
        }
        let mut v = json!({
            "name": spec.name,
            "size": spec.size_gib,
            "metadata": spec.metadata,
        });
        if let Some(t) = &spec.volume_type {
            v["volume_type"] = json!(t);
        }
        if let Some(z) = &spec.availability_zone {
            v["availability_zone"] = json!(z);
        }
        let body = self.call("POST", "/volumes", Some(&json!({ "volume": v })))?;
        self.volume_from("POST /volumes", &body)
    }

    /// One volume by id.
    pub fn get(&self, id: &str) -> Result<Volume> {
        let path = format!("/volumes/{id}");
        let body = self.call("GET", &path, None)?;
        self.volume_from(&format!("GET {path}"), &body)
    }

    /// Poll until the volume has status `wanted` (`available`, `in-use`, ...), at most `deadline`.
    /// An error status ends the wait at once.
    pub fn wait_status(&self, id: &str, wanted: &str, deadline: Duration) -> Result<Volume> {
        let start = Instant::now();
        loop {
            let v = self.get(id)?;
            if v.status == wanted {
                return Ok(v);
            }
            if FAILED.contains(&v.status.as_str()) {
                return Err(CloudError::VolumeFailed {
                    id: id.to_string(),
                    status: v.status,
                });
            }
            if start.elapsed() >= deadline {
                return Err(CloudError::Timeout {
                    what: format!("volume {id}"),
                    wanted: format!("become {wanted}"),
                    after: deadline,
                    last: format!("status {}", v.status),
                });
            }
            std::thread::sleep(POLL);
        }
    }

    /// Every volume of the project whose metadata holds all of `wanted`.
    ///
    /// The filter is sent to Cinder and checked again here: an older Cinder that ignores an
    /// unknown filter must not hand back someone else's volume.
    pub fn find_by_metadata(&self, wanted: &BTreeMap<String, String>) -> Result<Vec<Volume>> {
        let filter = serde_json::to_string(wanted).unwrap_or_default();
        self.volumes_where(&format!("metadata={}", percent_encode(&filter)), |v| {
            v.has_metadata(wanted)
        })
    }

    /// Every volume of this project named exactly `name` (Cinder's `name` filter, checked
    /// again here; names are not unique in Cinder).
    pub fn named(&self, name: &str) -> Result<Vec<Volume>> {
        self.volumes_where(&format!("name={}", percent_encode(name)), |v| {
            v.name == name
        })
    }

    /// The volumes `GET /volumes/detail?QUERY` lists, every page (`volumes_links`: Cinder
    /// pages at osapi_max_limit, 1000 by default), those `keep` keeps.
    fn volumes_where(&self, query: &str, keep: impl Fn(&Volume) -> bool) -> Result<Vec<Volume>> {
        let mut path = format!("/volumes/detail?{query}");
        let mut found = Vec::new();
        for _page in 0..1000 {
            let body = self.call("GET", &path, None)?;
            let vols: Vec<Volume> = body
                .get("volumes")
                .cloned()
                .map(serde_json::from_value)
                .transpose()
                .map_err(|e| CloudError::BadResponse {
                    what: format!("GET {path}"),
                    detail: format!("volumes: {e}"),
                })?
                .ok_or_else(|| CloudError::BadResponse {
                    what: format!("GET {path}"),
                    detail: "no \"volumes\" in the answer".into(),
                })?;
            found.extend(vols.into_iter().filter(|v| keep(v)));
            match next_link(&body) {
                Some(next) => path = next,
                None => return Ok(found),
            }
        }
        Err(CloudError::BadResponse {
            what: "GET /volumes/detail".into(),
            detail: "more than 1000 pages of volumes".into(),
        })
    }

    /// Mark a volume bootable (Nova refuses to boot from one that is not) or not.
    pub fn set_bootable(&self, id: &str, bootable: bool) -> Result<()> {
        self.call(
            "POST",
            &format!("/volumes/{id}/action"),
            Some(&json!({ "os-set_bootable": { "bootable": bootable } })),
        )?;
        Ok(())
    }

    /// Replace metadata keys of a volume (others are kept).
    pub fn set_metadata(&self, id: &str, metadata: &BTreeMap<String, String>) -> Result<()> {
        self.call(
            "POST",
            &format!("/volumes/{id}/metadata"),
            Some(&json!({ "metadata": metadata })),
        )?;
        Ok(())
    }

    /// The `available` volume holding `want`: the one a previous run created (found by
    /// [`VolumeFor::identity`]), or a new one of [`gib_for`] its size, its metadata set to the
    /// identity and [`meta::STATE`] `writing`. Waits for `available` at most `deadline`.
    ///
    /// Refused, with what to do: two volumes carrying the identity, a found volume that is
    /// smaller than the disk, or one attached to a server (`in-use`: a booted machine is not
    /// written under its feet).
    pub fn ensure_volume(&self, want: &VolumeFor, deadline: Duration) -> Result<Ensured> {
        let identity = want.identity();
        let size_gib = gib_for(want.size_bytes);
        let found = self.find_by_metadata(&identity)?;
        if found.len() > 1 {
            let ids: Vec<&str> = found.iter().map(|v| v.id.as_str()).collect();
            return Err(CloudError::Config(format!(
                "{} volumes carry the metadata of {:?} (capture {}, generation {}): {}; \
                 delete the ones not wanted",
                found.len(),
                want.name,
                want.capture_id,
                want.generation,
                ids.join(", ")
            )));
        }
        if let Some(v) = found.into_iter().next() {
            if v.size < size_gib {
                return Err(CloudError::Config(format!(
                    "volume {} ({:?}) holding this capture is {} GiB, the disk needs {size_gib} GiB: \
                     extend it (cinder extend) or delete it",
                    v.id, v.name, v.size
                )));
            }
            if v.status == "in-use" {
                return Err(CloudError::Config(format!(
                    "volume {} ({:?}) is attached to a server (in-use): delete or shelve the server \
                     before writing the volume again",
                    v.id, v.name
                )));
            }
            let volume = self.wait_status(&v.id, "available", deadline)?;
            return Ok(Ensured {
                volume,
                created: false,
            });
        }
        let mut metadata = identity.clone();
        metadata.insert(meta::STATE.into(), meta::WRITING.into());
        let created = self.create(&NewVolume {
            name: want.name.clone(),
            size_gib,
            volume_type: want.volume_type.clone(),
            metadata,
            availability_zone: want.availability_zone.clone(),
        })?;
        let volume = self.wait_status(&created.id, "available", deadline)?;
        // Two ingests of one capture generation started together (two hosts, two state
        // dirs) each found none and made one: the first made stays, the other goes again
        // (both were written and marked complete, and every later run was refused).
        let mut twins = self.find_by_metadata(&identity)?;
        twins.sort_by(|a, b| (&a.created_at, &a.id).cmp(&(&b.created_at, &b.id)));
        if let Some(first) = twins.first().filter(|f| f.id != volume.id) {
            let first = first.id.clone();
            let gone = self.delete(&volume.id);
            return Err(CloudError::Config(format!(
                "another ingest made volume {first} for {:?} (capture {}, generation {}) just \
                 before this one made {}: two ingests of one capture run at once (another \
                 host, or another --state-dir); {}. Let that ingest finish, then run this \
                 again: it finds that volume and keeps (or resumes) it",
                want.name,
                want.capture_id,
                want.generation,
                volume.id,
                match gone {
                    Ok(()) => "this run's volume was deleted again".to_string(),
                    Err(e) => format!(
                        "this run's volume could not be deleted ({e}): delete it by hand \
                         (openstack volume delete {})",
                        volume.id
                    ),
                }
            )));
        }
        Ok(Ensured {
            volume,
            created: true,
        })
    }

    /// Where the volume lives in Ceph. Asks Cinder for its connection info the way a compute
    /// host does (`os-initialize_connection` with this host as connector, then
    /// `os-terminate_connection`); an RBD backend answers `driver_volume_type: rbd` with
    /// `data.name = POOL/IMAGE`. When that call is refused (a policy that keeps it for admins),
    /// the RBD driver's naming is used: `volume-<id>` in `fallback_pool`, if given.
    ///
    /// Other backends answer `iscsi`, `nvmeof`, `fibre_channel`...: writing those needs the
    /// volume attached to this host (an initiator/NQN connector, `os-reserve`,
    /// `os-initialize_connection`, the session logged in with iscsiadm or nvme-cli,
    /// `os-attach`), after which the block device is a `dev:` target. That is reported as
    /// [`CloudError::Unsupported`].
    pub fn rbd_image(&self, volume: &Volume, fallback_pool: Option<&str>) -> Result<RbdImage> {
        let path = format!("/volumes/{}/action", volume.id);
        let connector = json!({"connector": {
            "host": hostname(),
            "ip": "127.0.0.1",
            "platform": "x86_64",
            "os_type": "linux",
            "multipath": false,
        }});
        let asked = self.call(
            "POST",
            &path,
            Some(&json!({ "os-initialize_connection": connector })),
        );
        match asked {
            Ok(body) => {
                // Nothing is held by RBD connections; terminating keeps the books tidy.
                let _ = self.call(
                    "POST",
                    &path,
                    Some(&json!({ "os-terminate_connection": connector })),
                );
                rbd_from_connection_info(&volume.id, &body)
            }
            Err(e @ CloudError::Http { status, .. }) if status == 403 || status == 404 => {
                match fallback_pool {
                    Some(pool) => Ok(RbdImage {
                        pool: pool.to_string(),
                        image: format!("volume-{}", volume.id),
                        user: None,
                        monitors: vec![],
                        source: "naming-convention",
                    }),
                    None => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// Delete a volume (asynchronous: see [`Cinder::wait_deleted`]).
    pub fn delete(&self, id: &str) -> Result<()> {
        self.call("DELETE", &format!("/volumes/{id}"), None)?;
        Ok(())
    }

    /// Poll until the volume is gone (404), at most `deadline`.
    pub fn wait_deleted(&self, id: &str, deadline: Duration) -> Result<()> {
        let start = Instant::now();
        loop {
            let last = match self.get(id) {
                Err(CloudError::Http { status: 404, .. }) => return Ok(()),
                Err(e) => return Err(e),
                Ok(v) if v.status == "error_deleting" => {
                    return Err(CloudError::VolumeFailed {
                        id: id.to_string(),
                        status: v.status,
                    })
                }
                Ok(v) => v.status,
            };
            if start.elapsed() >= deadline {
                return Err(CloudError::Timeout {
                    what: format!("volume {id}"),
                    wanted: "disappear".into(),
                    after: deadline,
                    last: format!("status {last}"),
                });
            }
            std::thread::sleep(POLL);
        }
    }
}

/// The RBD location in an `os-initialize_connection` answer
/// (`{"connection_info": {"driver_volume_type": "rbd", "data": {"name": "POOL/IMAGE",
/// "hosts": [..], "ports": [..], "auth_username": ..}}}`).
fn rbd_from_connection_info(id: &str, body: &Value) -> Result<RbdImage> {
    let what = format!("os-initialize_connection of volume {id}");
    let info = body
        .get("connection_info")
        .ok_or_else(|| CloudError::BadResponse {
            what: what.clone(),
            detail: "no \"connection_info\" in the answer".into(),
        })?;
    let kind = info
        .get("driver_volume_type")
        .and_then(Value::as_str)
        .unwrap_or("(none)");
    if kind != "rbd" {
        return Err(CloudError::Unsupported(format!(
            "volume {id} is served over {kind:?}, not Ceph RBD: attach it to this host \
             (os-brick/iscsiadm/nvme-cli) and ingest into dev:/dev/... instead"
        )));
    }
    let data = info.get("data").unwrap_or(&Value::Null);
    let name = data
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| CloudError::BadResponse {
            what: what.clone(),
            detail: "rbd connection info without data.name".into(),
        })?;
    let (pool, image) = name
        .split_once('/')
        .filter(|(p, i)| !p.is_empty() && !i.is_empty() && !i.contains('/'))
        .ok_or_else(|| CloudError::BadResponse {
            what,
            detail: format!("rbd data.name {name:?} is not POOL/IMAGE"),
        })?;
    let strings = |k: &str| -> Vec<String> {
        data.get(k)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .map(|v| match v {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let hosts = strings("hosts");
    let ports = strings("ports");
    let monitors = hosts
        .iter()
        .zip(ports.iter().map(Some).chain(std::iter::repeat(None)))
        .map(|(h, p)| match p {
            Some(p) if h.contains(':') => format!("[{h}]:{p}"),
            Some(p) => format!("{h}:{p}"),
            None => h.clone(),
        })
        .collect();
    Ok(RbdImage {
        pool: pool.to_string(),
        image: image.to_string(),
        user: data
            .get("auth_username")
            .and_then(Value::as_str)
            .filter(|u| !u.is_empty())
            .map(str::to_string),
        monitors,
        source: "connection-info",
    })
}

/// This host's name for the connector (what Cinder logs the connection under).
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "mgear-ingest".into())
}

/// The path and query of a `volumes_links` `next` entry (the host part is the endpoint's).
fn next_link(body: &Value) -> Option<String> {
    let href = body
        .get("volumes_links")?
        .as_array()?
        .iter()
        .find(|l| l.get("rel").and_then(Value::as_str) == Some("next"))?
        .get("href")?
        .as_str()?;
    let i = href.find("/volumes")?;
    Some(href[i..].to_string())
}

/// Percent-encode a query value (RFC 3986 unreserved characters stay).
pub(crate) fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testserver::{Canned, TestServer};
    use crate::{Auth, Endpoints, NoAuth};

    fn session(url: &str) -> Session {
        Session::connect(
            Auth::NoAuth(NoAuth {
                user: "admin".into(),
                project: "abc123".into(),
                endpoints: Endpoints {
                    volume: Some(format!("{url}/v3/abc123")),
                    compute: None,
                },
            }),
            Duration::from_secs(5),
        )
        .unwrap()
    }

    fn vol(id: &str, status: &str, meta: Value) -> Value {
        json!({"id": id, "name": "web01", "status": status, "size": 2, "bootable": "false",
               "volume_type": "__DEFAULT__", "metadata": meta})
    }

    #[test]
    fn create_sends_size_type_metadata_with_noauth_token() {
        let srv = TestServer::start(vec![Canned::json(
            202,
            json!({"volume": vol("v1", "creating", json!({"mgear.capture": "c1"}))}),
        )]);
        let s = session(&srv.url());
        let spec = NewVolume {
            name: "web01".into(),
            size_gib: 2,
            volume_type: Some("ceph".into()),
            metadata: [("mgear.capture".to_string(), "c1".to_string())].into(),
            availability_zone: None,
        };
        let v = Cinder::new(&s).create(&spec).unwrap();
        assert_eq!(v.id, "v1");
        assert_eq!(v.status, "creating");
        let reqs = srv.requests();
        assert_eq!(reqs.len(), 1);
        let r = &reqs[0];
        assert_eq!(r.method, "POST");
        assert_eq!(r.path, "/v3/abc123/volumes");
        assert_eq!(r.header("x-auth-token"), Some("admin:abc123"));
        assert_eq!(r.header("openstack-api-version"), Some("volume 3.0"));
        assert_eq!(
            r.json(),
            json!({"volume": {"name": "web01", "size": 2, "volume_type": "ceph",
                              "metadata": {"mgear.capture": "c1"}}})
        );
    }

    #[test]
    fn create_refuses_zero_size_without_a_request() {
        let srv = TestServer::start(vec![]);
        let s = session(&srv.url());
        let e = Cinder::new(&s).create(&NewVolume::default()).unwrap_err();
        assert!(e.to_string().contains("at least 1 GiB"), "{e}");
        assert!(srv.requests().is_empty());
    }

    #[test]
    fn wait_status_polls_until_available_and_stops_on_error() {
        let srv = TestServer::start(vec![
            Canned::json(200, json!({"volume": vol("v1", "creating", json!({}))})),
            Canned::json(200, json!({"volume": vol("v1", "available", json!({}))})),
            Canned::json(200, json!({"volume": vol("v2", "error", json!({}))})),
        ]);
        let s = session(&srv.url());
        let c = Cinder::new(&s);
        let v = c
            .wait_status("v1", "available", Duration::from_secs(10))
            .unwrap();
        assert_eq!(v.status, "available");
        let e = c
            .wait_status("v2", "available", Duration::from_secs(10))
            .unwrap_err();
        assert!(
            matches!(e, CloudError::VolumeFailed { ref status, .. } if status == "error"),
            "{e}"
        );
        let paths: Vec<String> = srv.requests().iter().map(|r| r.path.clone()).collect();
        assert_eq!(
            paths,
            [
                "/v3/abc123/volumes/v1",
                "/v3/abc123/volumes/v1",
                "/v3/abc123/volumes/v2"
            ]
        );
    }

    #[test]
    fn find_by_metadata_filters_server_side_and_again_locally_across_pages() {
        let srv = TestServer::start(vec![
            Canned::json(
                200,
                json!({"volumes": [vol("a", "available", json!({"mgear.capture": "c1", "x": "y"})),
                                   vol("b", "available", json!({"mgear.capture": "other"}))],
                       "volumes_links": [{"rel": "next",
                           "href": "http://h/v3/abc123/volumes/detail?marker=b&metadata=%7B%7D"}]}),
            ),
            Canned::json(
                200,
                json!({"volumes": [vol("c", "in-use", json!({"mgear.capture": "c1"}))]}),
            ),
        ]);
        let s = session(&srv.url());
        let want = [("mgear.capture".to_string(), "c1".to_string())].into();
        let found = Cinder::new(&s).find_by_metadata(&want).unwrap();
        let ids: Vec<&str> = found.iter().map(|v| v.id.as_str()).collect();
        assert_eq!(ids, ["a", "c"]);
        let reqs = srv.requests();
        assert_eq!(
            reqs[0].path,
            "/v3/abc123/volumes/detail?metadata=%7B%22mgear.capture%22%3A%22c1%22%7D"
        );
        assert_eq!(
            reqs[1].path,
            "/v3/abc123/volumes/detail?marker=b&metadata=%7B%7D"
        );
    }

    #[test]
    fn bootable_delete_and_errors_carry_the_service_message() {
        let srv = TestServer::start(vec![
            Canned::json(200, Value::Null),
            Canned::json(202, Value::Null),
            Canned::json(
                404,
                json!({"itemNotFound": {"code": 404, "message": "Volume v9 could not be found."}}),
            ),
            Canned::json(
                404,
                json!({"itemNotFound": {"code": 404, "message": "Volume v1 could not be found."}}),
            ),
        ]);
        let s = session(&srv.url());
        let c = Cinder::new(&s);
        c.set_bootable("v1", true).unwrap();
        c.delete("v1").unwrap();
        let e = c.get("v9").unwrap_err();
        assert!(matches!(e, CloudError::Http { status: 404, .. }));
        assert!(
            e.to_string().contains("Volume v9 could not be found"),
            "{e}"
        );
        c.wait_deleted("v1", Duration::from_secs(5)).unwrap();
        let reqs = srv.requests();
        assert_eq!(reqs[0].method, "POST");
        assert_eq!(reqs[0].path, "/v3/abc123/volumes/v1/action");
        assert_eq!(
            reqs[0].json(),
            json!({"os-set_bootable": {"bootable": true}})
        );
        assert_eq!(reqs[1].method, "DELETE");
        assert_eq!(reqs[1].path, "/v3/abc123/volumes/v1");
    }

    #[test]
    fn sizes_round_up_to_whole_gib() {
        assert_eq!(gib_for(0), 1);
        assert_eq!(gib_for(1), 1);
        assert_eq!(gib_for(1 << 30), 1);
        assert_eq!(gib_for((1 << 30) + 1), 2);
        assert_eq!(gib_for(10 * (1 << 30) - 512), 10);
    }

    fn want() -> VolumeFor {
        VolumeFor {
            name: "web01".into(),
            size_bytes: (2 << 30) + 4096,
            volume_type: None,
            availability_zone: None,
            capture_id: "c1".into(),
            generation: 3,
            manifest_root: "ab".into(),
        }
    }

    #[test]
    fn named_asks_for_the_name_and_keeps_exact_matches() {
        let mut other = vol("v2", "available", json!({}));
        other["name"] = json!("web01-old");
        let srv = TestServer::start(vec![Canned::json(
            200,
            json!({"volumes": [vol("v1", "available", json!({})), other]}),
        )]);
        let s = session(&srv.url());
        let got = Cinder::new(&s).named("web01").unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].id, "v1");
        assert_eq!(
            srv.requests()[0].path,
            "/v3/abc123/volumes/detail?name=web01"
        );
    }

    #[test]
    fn ensure_volume_creates_with_identity_and_writing_state_then_waits() {
        let srv = TestServer::start(vec![
            Canned::json(200, json!({"volumes": []})),
            Canned::json(202, json!({"volume": vol("n1", "creating", json!({}))})),
            Canned::json(200, json!({"volume": vol("n1", "creating", json!({}))})),
            Canned::json(200, json!({"volume": vol("n1", "available", json!({}))})),
            // No other ingest made one meanwhile.
            Canned::json(200, json!({"volumes": [vol("n1", "available", ident())]})),
        ]);
        let s = session(&srv.url());
        let got = Cinder::new(&s)
            .ensure_volume(&want(), Duration::from_secs(10))
            .unwrap();
        assert!(got.created);
        assert_eq!(got.volume.status, "available");
        let reqs = srv.requests();
        assert!(reqs[0]
            .path
            .starts_with("/v3/abc123/volumes/detail?metadata="));
        assert!(
            reqs[0].path.contains("mgear.generation%22%3A%223%22"),
            "{}",
            reqs[0].path
        );
        assert_eq!(
            reqs[1].json(),
            json!({"volume": {"name": "web01", "size": 3, "metadata": {
                "mgear.name": "web01", "mgear.capture": "c1", "mgear.generation": "3",
                "mgear.manifest_root": "ab", "mgear.state": "writing"}}})
        );
        assert_eq!(reqs.len(), 5);
    }

    /// The capture metadata of [`want`].
    fn ident() -> Value {
        json!({"mgear.name": "web01", "mgear.capture": "c1", "mgear.generation": "3",
               "mgear.manifest_root": "ab", "mgear.state": "writing"})
    }

    /// Two ingests of one generation started at once each made a volume: the later one's goes
    /// again and it says which volume the other made (both were written, then every later
    /// run was refused: "2 volumes carry the metadata").
    #[test]
    fn ensure_volume_made_twice_at_once_keeps_the_first() {
        let mut first = vol("a0", "available", ident());
        first["created_at"] = json!("2026-12-05T20:00:00.000000");
        let mut ours = vol("n1", "available", ident());
        ours["created_at"] = json!("2026-12-05T20:00:01.000000");
        let srv = TestServer::start(vec![
            Canned::json(200, json!({"volumes": []})),
            Canned::json(202, json!({"volume": vol("n1", "creating", json!({}))})),
            Canned::json(200, json!({"volume": ours.clone()})),
            Canned::json(200, json!({"volumes": [ours, first]})),
            Canned::json(202, json!({})),
        ]);
        let s = session(&srv.url());
        let e = match Cinder::new(&s).ensure_volume(&want(), Duration::from_secs(10)) {
            Err(e) => e.to_string(),
            Ok(v) => panic!("made {} beside a0", v.volume.id),
        };
        assert!(
            e.contains("another ingest made volume a0") && e.contains("deleted again"),
            "{e}"
        );
        let reqs = srv.requests();
        assert_eq!(reqs[4].method, "DELETE");
        assert!(reqs[4].path.ends_with("/volumes/n1"), "{}", reqs[4].path);
    }

    #[test]
    fn ensure_volume_finds_a_previous_runs_volume_and_refuses_what_it_must_not_write() {
        let m = json!({"mgear.name": "web01", "mgear.capture": "c1", "mgear.generation": "3",
                       "mgear.manifest_root": "ab"});
        let mut big = vol("old", "available", m.clone());
        big["size"] = json!(3);
        let mut in_use = big.clone();
        in_use["status"] = json!("in-use");
        let small = vol("tiny", "available", m.clone());
        let srv = TestServer::start(vec![
            Canned::json(200, json!({"volumes": [big.clone()]})),
            Canned::json(200, json!({"volume": big.clone()})),
            Canned::json(200, json!({"volumes": [small]})),
            Canned::json(200, json!({"volumes": [in_use]})),
            Canned::json(
                200,
                json!({"volumes": [big.clone(), vol("x", "available", m)]}),
            ),
        ]);
        let s = session(&srv.url());
        let c = Cinder::new(&s);
        let got = c.ensure_volume(&want(), Duration::from_secs(10)).unwrap();
        assert!(!got.created);
        assert_eq!(got.volume.id, "old");
        let e = c
            .ensure_volume(&want(), Duration::from_secs(10))
            .unwrap_err();
        assert!(
            e.to_string().contains("is 2 GiB, the disk needs 3 GiB"),
            "{e}"
        );
        let e = c
            .ensure_volume(&want(), Duration::from_secs(10))
            .unwrap_err();
        assert!(e.to_string().contains("in-use"), "{e}");
        let e = c
            .ensure_volume(&want(), Duration::from_secs(10))
            .unwrap_err();
        assert!(e.to_string().contains("old, x"), "{e}");
        // No volume was created along the way.
        assert!(srv.requests().iter().all(|r| r.method == "GET"));
    }

    #[test]
    fn rbd_image_from_connection_info_or_naming_convention() {
        let v: Volume = serde_json::from_value(vol("v1", "available", json!({}))).unwrap();
        let srv = TestServer::start(vec![
            Canned::json(
                200,
                json!({"connection_info": {"driver_volume_type": "rbd", "data": {
                    "name": "volumes/volume-v1", "hosts": ["127.0.0.1", "::1"],
                    "ports": ["6789", "6789"], "auth_username": "cinder",
                    "secret_uuid": "u", "cluster_name": "ceph"}}}),
            ),
            Canned::json(202, Value::Null),
            Canned::json(
                403,
                json!({"forbidden": {"message": "Policy doesn't allow it"}}),
            ),
            Canned::json(
                200,
                json!({"connection_info": {"driver_volume_type": "iscsi", "data": {}}}),
            ),
            Canned::json(202, Value::Null),
        ]);
        let s = session(&srv.url());
        let c = Cinder::new(&s);
        let img = c.rbd_image(&v, None).unwrap();
        assert_eq!(img.spec(), "volumes/volume-v1");
        assert_eq!(img.user.as_deref(), Some("cinder"));
        assert_eq!(img.monitors, ["127.0.0.1:6789", "[::1]:6789"]);
        assert_eq!(img.source, "connection-info");
        let img = c.rbd_image(&v, Some("vols")).unwrap();
        assert_eq!(img.spec(), "vols/volume-v1");
        assert_eq!(img.source, "naming-convention");
        let e = c.rbd_image(&v, Some("vols")).unwrap_err();
        assert!(matches!(e, CloudError::Unsupported(_)), "{e}");
        assert!(e.to_string().contains("\"iscsi\""), "{e}");
        let reqs = srv.requests();
        assert_eq!(reqs[0].path, "/v3/abc123/volumes/v1/action");
        assert_eq!(
            reqs[0].json()["os-initialize_connection"]["connector"]["os_type"],
            "linux"
        );
        assert!(reqs[1].json().get("os-terminate_connection").is_some());
    }

    #[test]
    fn volume_tolerates_nulls_and_reads_bootable() {
        let v: Volume =
            serde_json::from_value(json!({"id": "x", "name": null, "status": "available",
            "size": 1, "bootable": "true", "volume_type": null}))
            .unwrap();
        assert!(v.is_bootable());
        assert_eq!(v.name, "");
        assert!(v.has_metadata(&BTreeMap::new()));
    }
}
