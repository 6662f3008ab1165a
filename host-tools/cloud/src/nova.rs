//! Nova (compute v2.1): boot a server from a Cinder volume, the way a cloud runs a migrated
//! machine, and read its console to prove the boot.
//!
//! The server is created at microversion 2.37 with `"networks": "none"` (a migrated machine
//! gets its networks from the operator afterwards, and clouds without Neutron accept nothing
//! else) and one `block_device_mapping_v2` entry: the volume at boot index 0, not deleted with
//! the server.
//!
//! Without Neutron, `GET /servers/{id}` answers 500 (Nova asks Neutron for the security groups
//! of the view). [`Nova::server_state`] then reads the instance actions instead: the `create`
//! action's `compute__do_build_and_run_instance` event finishes when the build did, and a failed
//! event carries the error.

use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::{json, Value};

use crate::auth::{Service, Session};
use crate::{CloudError, Result};

const POLL: Duration = Duration::from_millis(1000);
/// Networks "none" and block_device_mapping_v2 without an image need 2.37.
const MICROVERSION: &str = "2.37";
/// The compute event that ends when the guest was built and started.
const BUILD_EVENT: &str = "compute__do_build_and_run_instance";

/// A flavor (the fields used here).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Flavor {
    /// Flavor id.
    pub id: String,
    /// Name.
    pub name: String,
    /// RAM in MiB.
    pub ram: u64,
    /// Virtual CPUs.
    pub vcpus: u64,
    /// Root disk in GiB (0 for boot-from-volume flavors).
    pub disk: u64,
}

/// One entry of `os-instance-actions`, with its events when asked for one action.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct InstanceAction {
    /// `create`, `delete`, `stop`, ...
    pub action: String,
    /// The request id (to fetch its events).
    pub request_id: String,
    /// Set (to "Error") when an event of the action failed.
    #[serde(default)]
    pub message: Option<String>,
    /// Events, only in the single-action answer.
    #[serde(default)]
    pub events: Vec<ActionEvent>,
}

/// One event of an instance action.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ActionEvent {
    /// E.g. `compute__do_build_and_run_instance`.
    pub event: String,
    /// `Success`, `Error`, or null while running.
    #[serde(default)]
    pub result: Option<String>,
    /// Traceback of a failed event (admins only).
    #[serde(default)]
    pub traceback: Option<String>,
}

/// Where a server is, as far as it can be told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerState {
    /// Still being built (status, or the pending event).
    Building(String),
    /// Built and running.
    Active,
    /// Failed, with the fault or failed event.
    Failed(String),
    /// Another status (SHUTOFF, ...).
    Other(String),
}

/// Nova v2.1 client over a [`Session`].
#[derive(Debug)]
pub struct Nova<'a> {
    session: &'a Session,
}

impl<'a> Nova<'a> {
    /// A client using `session`'s compute endpoint.
    pub fn new(session: &'a Session) -> Nova<'a> {
        Nova { session }
    }

    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value> {
        Ok(self
            .session
            .call(Service::Compute, method, path, Some(MICROVERSION), body)?
            .body)
    }

    fn field<T: serde::de::DeserializeOwned>(what: &str, body: &Value, key: &str) -> Result<T> {
        let v = body
            .get(key)
            .cloned()
            .ok_or_else(|| CloudError::BadResponse {
                what: what.to_string(),
                detail: format!("no {key:?} in the answer"),
            })?;
        serde_json::from_value(v).map_err(|e| CloudError::BadResponse {
            what: what.to_string(),
            detail: format!("{key}: {e}"),
        })
    }

    /// The flavor whose id or name is `name_or_id`, if the cloud has one.
    pub fn find_flavor(&self, name_or_id: &str) -> Result<Option<Flavor>> {
        let what = "GET /flavors/detail";
        let body = self.call("GET", "/flavors/detail?is_public=None", None)?;
        let flavors: Vec<Flavor> = Self::field(what, &body, "flavors")?;
        Ok(flavors
            .iter()
            .find(|f| f.id == name_or_id)
            .or_else(|| flavors.iter().find(|f| f.name == name_or_id))
            .cloned())
    }

    /// The flavor named `name`, created with `ram_mib`, `vcpus` and `disk_gib` if missing.
    /// An existing flavor of that name is used as it is (creating needs admin rights).
    pub fn ensure_flavor(
        &self,
        name: &str,
        ram_mib: u64,
        vcpus: u64,
        disk_gib: u64,
    ) -> Result<Flavor> {
        let what = "GET /flavors/detail";
        let body = self.call("GET", "/flavors/detail?is_public=None", None)?;
        let flavors: Vec<Flavor> = Self::field(what, &body, "flavors")?;
        if let Some(f) = flavors.into_iter().find(|f| f.name == name) {
            return Ok(f);
        }
        let body = self.call(
            "POST",
            "/flavors",
            Some(&json!({"flavor": {"name": name, "ram": ram_mib, "vcpus": vcpus, "disk": disk_gib}})),
        )?;
        Self::field("POST /flavors", &body, "flavor")
    }

    /// Create server `name` of `flavor_id` booting from `volume_id`, with `data_volumes`
    /// attached after it in order (a machine of several disks), and no networks.
    /// Returns the server id; the build goes on asynchronously ([`Nova::wait_active`]).
    pub fn create_server_from_volume(
        &self,
        name: &str,
        flavor_id: &str,
        volume_id: &str,
        data_volumes: &[String],
    ) -> Result<String> {
        let mut bdm = vec![json!({
            "boot_index": 0,
            "uuid": volume_id,
            "source_type": "volume",
            "destination_type": "volume",
            "delete_on_termination": false,
        })];
        // Not bootable (no boot_index); Nova attaches them in the order given.
        bdm.extend(data_volumes.iter().map(|v| {
            json!({
                "uuid": v,
                "source_type": "volume",
                "destination_type": "volume",
                "delete_on_termination": false,
            })
        }));
        let body = json!({"server": {
            "name": name,
            "flavorRef": flavor_id,
            "networks": "none",
            "block_device_mapping_v2": bdm,
        }});
        let reply = self.call("POST", "/servers", Some(&body))?;
        reply
            .get("server")
            .and_then(|s| s.get("id"))
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| CloudError::BadResponse {
                what: "POST /servers".into(),
                detail: "no server id in the answer".into(),
            })
    }

    /// The actions recorded for a server, newest first.
    pub fn instance_actions(&self, server_id: &str) -> Result<Vec<InstanceAction>> {
        let path = format!("/servers/{server_id}/os-instance-actions");
        let body = self.call("GET", &path, None)?;
        Self::field(&format!("GET {path}"), &body, "instanceActions")
    }

    /// One action with its events.
    pub fn instance_action(&self, server_id: &str, request_id: &str) -> Result<InstanceAction> {
        let path = format!("/servers/{server_id}/os-instance-actions/{request_id}");
        let body = self.call("GET", &path, None)?;
        Self::field(&format!("GET {path}"), &body, "instanceAction")
    }

    /// The server's state: from `GET /servers/{id}` where it answers, else (HTTP 5xx: no
    /// Neutron) from the `create` action's events.
    pub fn server_state(&self, server_id: &str) -> Result<ServerState> {
        match self.call("GET", &format!("/servers/{server_id}"), None) {
            Ok(body) => {
                let server = body.get("server").unwrap_or(&Value::Null);
                let status = server
                    .get("status")
                    .and_then(Value::as_str)
                    .unwrap_or("UNKNOWN");
                Ok(match status {
                    "ACTIVE" => ServerState::Active,
                    "BUILD" => ServerState::Building(status.to_string()),
                    "ERROR" => ServerState::Failed(
                        server
                            .get("fault")
                            .and_then(|f| f.get("message"))
                            .and_then(Value::as_str)
                            .unwrap_or("status ERROR, no fault recorded")
                            .to_string(),
                    ),
                    other => ServerState::Other(other.to_string()),
                })
            }
            Err(CloudError::Http { status, .. }) if status >= 500 => {
                self.state_from_actions(server_id)
            }
            Err(e) => Err(e),
        }
    }

    fn state_from_actions(&self, server_id: &str) -> Result<ServerState> {
        let actions = self.instance_actions(server_id)?;
        let Some(create) = actions.iter().find(|a| a.action == "create") else {
            return Ok(ServerState::Building("no create action yet".into()));
        };
        let create = self.instance_action(server_id, &create.request_id)?;
        if let Some(failed) = create
            .events
            .iter()
            .find(|e| e.result.as_deref() == Some("Error"))
        {
            let detail = failed
                .traceback
                .as_deref()
                .and_then(|t| t.lines().rev().find(|l| !l.trim().is_empty()))
                .unwrap_or("no traceback visible");
            return Ok(ServerState::Failed(format!(
                "event {} failed: {}",
                failed.event,
                detail.trim()
            )));
        }
        Ok(
            match create
                .events
                .iter()
                .find(|e| e.event == BUILD_EVENT)
                .and_then(|e| e.result.as_deref())
            {
                Some("Success") => ServerState::Active,
                _ => ServerState::Building(format!(
                    "events so far: {}",
                    create
                        .events
                        .iter()
                        .map(|e| e.event.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
            },
        )
    }

    /// Poll until the server is ACTIVE, at most `deadline`; a failed build ends the wait at once.
    pub fn wait_active(&self, server_id: &str, deadline: Duration) -> Result<()> {
        self.wait_active_or_stop(server_id, deadline, None)
    }

    /// [`Nova::wait_active`] that also ends, with [`CloudError::Stopped`], when `stop` says so.
    pub fn wait_active_or_stop(
        &self,
        server_id: &str,
        deadline: Duration,
        stop: Option<fn() -> bool>,
    ) -> Result<()> {
        let start = Instant::now();
        loop {
            if stop.is_some_and(|s| s()) {
                return Err(CloudError::Stopped {
                    id: server_id.to_string(),
                });
            }
            let last = match self.server_state(server_id)? {
                ServerState::Active => return Ok(()),
                ServerState::Failed(message) => {
                    return Err(CloudError::ServerFailed {
                        id: server_id.to_string(),
                        message,
                    })
                }
                ServerState::Building(s) | ServerState::Other(s) => s,
            };
            if start.elapsed() >= deadline {
                return Err(CloudError::Timeout {
                    what: format!("server {server_id}"),
                    wanted: "become ACTIVE".into(),
                    after: deadline,
                    last,
                });
            }
            std::thread::sleep(POLL);
        }
    }

    /// The last `lines` lines of the server's console log (all when `None`). libvirt-based
    /// Nova answers 404 "Guest does not have a console available" once the guest is shut off:
    /// read `instances/<id>/console.log` on the compute host for a guest that powered off.
    pub fn console_output(&self, server_id: &str, lines: Option<u32>) -> Result<String> {
        let arg = match lines {
            Some(n) => json!({"os-getConsoleOutput": {"length": n}}),
            None => json!({"os-getConsoleOutput": {}}),
        };
        let path = format!("/servers/{server_id}/action");
        let body = self.call("POST", &path, Some(&arg))?;
        Self::field(&format!("POST {path}"), &body, "output")
    }

    /// Delete a server (asynchronous: see [`Nova::wait_server_gone`]). Its volume stays.
    pub fn delete_server(&self, server_id: &str) -> Result<()> {
        self.call("DELETE", &format!("/servers/{server_id}"), None)?;
        Ok(())
    }

    /// Whether the server still exists. `GET /servers/{id}` says 404 when it does not; when it
    /// answers 5xx (no Neutron) the plain server list, which asks Neutron nothing, decides.
    pub fn server_exists(&self, server_id: &str) -> Result<bool> {
        match self.call("GET", &format!("/servers/{server_id}"), None) {
            Ok(_) => Ok(true),
            Err(CloudError::Http { status: 404, .. }) => Ok(false),
            Err(CloudError::Http { status, .. }) if status >= 500 => {
                let body = self.call("GET", "/servers?limit=1000", None)?;
                let list: Vec<Value> = Self::field("GET /servers", &body, "servers")?;
                Ok(list
                    .iter()
                    .any(|s| s.get("id").and_then(Value::as_str) == Some(server_id)))
            }
            Err(e) => Err(e),
        }
    }

    /// Poll until the server is gone, at most `deadline`.
    pub fn wait_server_gone(&self, server_id: &str, deadline: Duration) -> Result<()> {
        let start = Instant::now();
        while self.server_exists(server_id)? {
            if start.elapsed() >= deadline {
                return Err(CloudError::Timeout {
                    what: format!("server {server_id}"),
                    wanted: "disappear after delete".into(),
                    after: deadline,
                    last: "still listed".into(),
                });
            }
            std::thread::sleep(POLL);
        }
        Ok(())
    }
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
                    volume: None,
                    compute: Some(format!("{url}/v2.1")),
                },
            }),
            Duration::from_secs(5),
        )
        .unwrap()
    }

    #[test]
    fn create_server_sends_networks_none_and_boot_volume_at_2_37() {
        let srv = TestServer::start(vec![Canned::json(202, json!({"server": {"id": "s1"}}))]);
        let s = session(&srv.url());
        let id = Nova::new(&s)
            .create_server_from_volume("web01", "f1", "v1", &["v2".into()])
            .unwrap();
        assert_eq!(id, "s1");
        let r = &srv.requests()[0];
        assert_eq!(
            (r.method.as_str(), r.path.as_str()),
            ("POST", "/v2.1/servers")
        );
        assert_eq!(r.header("openstack-api-version"), Some("compute 2.37"));
        assert_eq!(r.header("x-openstack-nova-api-version"), Some("2.37"));
        assert_eq!(r.header("x-auth-token"), Some("admin:abc123"));
        assert_eq!(
            r.json(),
            json!({"server": {"name": "web01", "flavorRef": "f1", "networks": "none",
                "block_device_mapping_v2": [{"boot_index": 0, "uuid": "v1", "source_type": "volume",
                    "destination_type": "volume", "delete_on_termination": false},
                    {"uuid": "v2", "source_type": "volume", "destination_type": "volume",
                    "delete_on_termination": false}]}})
        );
    }

    #[test]
    fn ensure_flavor_reuses_by_name_or_creates() {
        let f = |id: &str, name: &str| json!({"id": id, "name": name, "ram": 512, "vcpus": 1, "disk": 0});
        let srv = TestServer::start(vec![
            Canned::json(
                200,
                json!({"flavors": [f("1", "m1.tiny"), f("7", "mgear.small")]}),
            ),
            Canned::json(200, json!({"flavors": [f("1", "m1.tiny")]})),
            Canned::json(200, json!({"flavor": f("9", "mgear.small")})),
        ]);
        let s = session(&srv.url());
        let n = Nova::new(&s);
        assert_eq!(n.ensure_flavor("mgear.small", 512, 1, 0).unwrap().id, "7");
        assert_eq!(n.ensure_flavor("mgear.small", 512, 1, 0).unwrap().id, "9");
        let reqs = srv.requests();
        assert_eq!(reqs.len(), 3);
        assert_eq!(reqs[2].path, "/v2.1/flavors");
        assert_eq!(
            reqs[2].json(),
            json!({"flavor": {"name": "mgear.small", "ram": 512, "vcpus": 1, "disk": 0}})
        );
    }

    #[test]
    fn without_neutron_state_comes_from_instance_actions() {
        let srv = TestServer::start(vec![
            // 1st poll: show fails, build event still running.
            Canned::json(
                500,
                json!({"computeFault": {"code": 500, "message": "Unexpected API Error."}}),
            ),
            Canned::json(
                200,
                json!({"instanceActions": [{"action": "create", "request_id": "req-1"}]}),
            ),
            Canned::json(
                200,
                json!({"instanceAction": {"action": "create", "request_id": "req-1",
                "events": [{"event": "compute__do_build_and_run_instance", "result": null}]}}),
            ),
            // 2nd poll: done.
            Canned::json(
                500,
                json!({"computeFault": {"code": 500, "message": "Unexpected API Error."}}),
            ),
            Canned::json(
                200,
                json!({"instanceActions": [{"action": "create", "request_id": "req-1"}]}),
            ),
            Canned::json(
                200,
                json!({"instanceAction": {"action": "create", "request_id": "req-1",
                "events": [{"event": "conductor_schedule_and_build_instances", "result": "Success"},
                           {"event": "compute__do_build_and_run_instance", "result": "Success"}]}}),
            ),
        ]);
        let s = session(&srv.url());
        Nova::new(&s)
            .wait_active("s1", Duration::from_secs(30))
            .unwrap();
        let paths: Vec<String> = srv.requests().iter().map(|r| r.path.clone()).collect();
        assert_eq!(paths[0], "/v2.1/servers/s1");
        assert_eq!(paths[1], "/v2.1/servers/s1/os-instance-actions");
        assert_eq!(paths[2], "/v2.1/servers/s1/os-instance-actions/req-1");
        assert_eq!(paths.len(), 6);
    }

    #[test]
    fn failed_build_event_or_error_status_fails_the_wait() {
        let srv = TestServer::start(vec![
            Canned::json(500, Value::Null),
            Canned::json(
                200,
                json!({"instanceActions": [{"action": "create", "request_id": "r"}]}),
            ),
            Canned::json(
                200,
                json!({"instanceAction": {"action": "create", "request_id": "r", "message": "Error",
                "events": [{"event": "compute__do_build_and_run_instance", "result": "Error",
                            "traceback": "Traceback...\nnova.exception.VolumeNotFound: gone\n"}]}}),
            ),
            Canned::json(
                200,
                json!({"server": {"id": "s2", "status": "ERROR",
                "fault": {"message": "No valid host was found."}}}),
            ),
        ]);
        let s = session(&srv.url());
        let n = Nova::new(&s);
        let e = n
            .wait_active("s1", Duration::from_secs(30))
            .unwrap_err()
            .to_string();
        assert!(e.contains("VolumeNotFound: gone"), "{e}");
        let e = n
            .wait_active("s2", Duration::from_secs(30))
            .unwrap_err()
            .to_string();
        assert!(e.contains("No valid host was found."), "{e}");
    }

    #[test]
    fn console_output_and_delete_with_list_fallback() {
        let srv = TestServer::start(vec![
            Canned::json(200, json!({"output": "MGEAR-BOOT-OK x\n"})),
            Canned::json(204, Value::Null),
            Canned::json(500, Value::Null),
            Canned::json(200, json!({"servers": [{"id": "s1"}]})),
            Canned::json(
                404,
                json!({"itemNotFound": {"message": "Instance s1 could not be found."}}),
            ),
        ]);
        let s = session(&srv.url());
        let n = Nova::new(&s);
        assert_eq!(
            n.console_output("s1", Some(50)).unwrap(),
            "MGEAR-BOOT-OK x\n"
        );
        n.delete_server("s1").unwrap();
        n.wait_server_gone("s1", Duration::from_secs(30)).unwrap();
        let reqs = srv.requests();
        assert_eq!(
            reqs[0].json(),
            json!({"os-getConsoleOutput": {"length": 50}})
        );
        assert_eq!(reqs[1].method, "DELETE");
        assert_eq!(reqs[3].path, "/v2.1/servers?limit=1000");
        assert_eq!(reqs.len(), 5);
    }
}
