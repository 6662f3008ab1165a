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
        let mut path = format!("/volumes/detail?metadata={}", percent_encode(&filter));
        let mut found = Vec::new();
        // Follow `volumes_links` (Cinder pages at osapi_max_limit, 1000 by default).
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
            found.extend(vols.into_iter().filter(|v| v.has_metadata(wanted)));
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
