//! Boot a machine from its Cinder volume through Nova, the way the cloud runs it, and prove it
//! came up: the same proof as `mgear boot` ([`mgear_boot::prove_boot`]: a regex on the console
//! within a deadline) over a Nova server as its [`Guest`], returned as the same
//! [`mgear_boot::BootReport`].
//!
//! The server gets the flavor asked for, networks `"none"` and the volume at boot index 0
//! ([`Nova::create_server_from_volume`]); ACTIVE is awaited (through the instance actions when
//! Nova cannot show the server without Neutron) in [`Guest::start`], so the regex's deadline
//! counts from ACTIVE. The console comes from `os-getConsoleOutput`, polled every 2 s as the
//! whole text; libvirt-based Nova stops serving it once the guest powers off, so a guest that
//! prints its marker and powers off at once (the sample disk) is only seen reliably on the
//! compute host's `instances/<server id>/console.log`: give [`NovaBootSpec::console_dir`] when
//! this host is the compute host (the cloud lab's `MGEAR_CLOUD_NOVA_INSTANCES`).
//!
//! The server is left running when the proof succeeds (it is the migrated machine); the caller
//! deletes it when it only wanted the proof.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use mgear_boot::boot::clean_console;
use mgear_boot::{
    prove_boot, BootError, BootReport, Bus, ConsoleRead, Expectation, Firmware, Guest, GuestState,
    Outcome, Setup, Start,
};

use crate::nova::{Flavor, Nova, ServerState};
use crate::{CloudError, Result, Session};

const POLL: Duration = Duration::from_secs(2);

/// What to boot and how to decide it came up.
#[derive(Debug, Clone)]
pub struct NovaBootSpec {
    /// Server name.
    pub server_name: String,
    /// The bootable volume.
    pub volume_id: String,
    /// The machine's other disks, attached after it in order.
    pub data_volumes: Vec<String>,
    /// Flavor name or id. It must exist unless [`NovaBootSpec::create_flavor`] is set.
    pub flavor: String,
    /// Create the flavor with this RAM (MiB) and vCPUs, disk 0, when it does not exist.
    pub create_flavor: Option<(u64, u64)>,
    /// Regex that proves the boot when it appears on the console.
    pub wait_for: String,
    /// Deadline for ACTIVE.
    pub active_timeout: Duration,
    /// Deadline for the regex, counted from ACTIVE.
    pub timeout: Duration,
    /// The compute host's instances directory, when it is readable here.
    pub console_dir: Option<PathBuf>,
    /// Asked between polls: `true` ends the wait for ACTIVE or for the regex with
    /// [`CloudError::Stopped`] (Ctrl-C: a guest that keeps running held it until the timeout).
    pub stop: Option<fn() -> bool>,
}

/// A server booted from a volume, with its proof.
#[derive(Debug, Clone)]
pub struct NovaBoot {
    /// Server id (left running when booted).
    pub server_id: String,
    /// Flavor id used.
    pub flavor_id: String,
    /// Seconds from `POST /servers` to ACTIVE, when it got there.
    pub active_after_secs: Option<f64>,
    /// The proof, in the shape every boot driver reports.
    pub report: BootReport,
}

/// Create a server from `spec.volume_id` and watch its console for `spec.wait_for`.
///
/// `Err` means the attempt could not be made (bad regex, no such flavor, the API refused the
/// server); a server that failed to build or a guest that did not print the regex is `Ok` with
/// an outcome other than [`Outcome::Booted`] and the server id (for the caller to delete).
pub fn boot_from_volume(session: &Session, spec: &NovaBootSpec) -> Result<NovaBoot> {
    let expect = Expectation::new(&spec.wait_for, spec.timeout)
        .map_err(|e| CloudError::Config(e.to_string()))?;
    let nova = Nova::new(session);
    let flavor = match (nova.find_flavor(&spec.flavor)?, spec.create_flavor) {
        (Some(f), _) => f,
        (None, Some((ram, vcpus))) => nova.ensure_flavor(&spec.flavor, ram, vcpus, 0)?,
        (None, None) => {
            return Err(CloudError::Config(format!(
                "no flavor {:?} in this cloud: name an existing one (openstack flavor list)",
                spec.flavor
            )))
        }
    };
    let mut guest = NovaGuest {
        nova,
        spec,
        flavor,
        server_id: None,
        active_after: None,
        polled: false,
        unavailable: 0,
        shut_off: false,
        error: None,
    };
    let proved = prove_boot(&mut guest, &expect);
    if let Some(e) = guest.error.take() {
        return Err(e);
    }
    let report = proved.map_err(|e| CloudError::Config(e.to_string()))?;
    Ok(NovaBoot {
        server_id: guest.server_id.unwrap_or_default(),
        flavor_id: guest.flavor.id,
        active_after_secs: guest.active_after,
        report,
    })
}

/// A Nova server booting from its volume, as a [`Guest`] of the boot proof.
struct NovaGuest<'a> {
    nova: Nova<'a>,
    spec: &'a NovaBootSpec,
    flavor: Flavor,
    server_id: Option<String>,
    active_after: Option<f64>,
    /// The console was read at least once (later reads wait a poll interval first).
    polled: bool,
    /// Console requests in a row that found no console (404/409).
    unavailable: u32,
    shut_off: bool,
    /// The API error that ended the attempt, returned as it is.
    error: Option<CloudError>,
}

impl NovaGuest<'_> {
    /// Keep `e` for the caller; the proof gets a description of it.
    fn fail(&mut self, e: CloudError) -> BootError {
        let b = BootError::ToolFailed {
            tool: "OpenStack Nova".into(),
            detail: e.to_string(),
        };
        self.error = Some(e);
        b
    }

    fn id(&self) -> &str {
        self.server_id.as_deref().unwrap_or("(not created)")
    }
}

impl Guest for NovaGuest<'_> {
    fn start(&mut self) -> mgear_boot::Result<Start> {
        let t0 = Instant::now();
        let id = self
            .nova
            .create_server_from_volume(
                &self.spec.server_name,
                &self.flavor.id,
                &self.spec.volume_id,
                &self.spec.data_volumes,
            )
            .map_err(|e| self.fail(e))?;
        self.server_id = Some(id.clone());
        match self
            .nova
            .wait_active_or_stop(&id, self.spec.active_timeout, self.spec.stop)
        {
            Ok(()) => {
                self.active_after = Some(t0.elapsed().as_secs_f64());
                Ok(Start::Running)
            }
            Err(CloudError::ServerFailed { message, .. }) => Ok(Start::NotRunning {
                outcome: Outcome::QemuFailed,
                detail: format!("server {id} failed to build: {message}"),
            }),
            Err(CloudError::Timeout { last, .. }) => Ok(Start::NotRunning {
                outcome: Outcome::TimedOut,
                detail: format!(
                    "server {id} not ACTIVE within {} s ({last})",
                    self.spec.active_timeout.as_secs()
                ),
            }),
            Err(e) => Err(self.fail(e)),
        }
    }

    fn console(&mut self, wait: Duration) -> mgear_boot::Result<ConsoleRead> {
        if self.shut_off {
            return Ok(ConsoleRead::Nothing);
        }
        let id = self.id().to_string();
        let stopped = |s: &Self| s.spec.stop.is_some_and(|stop| stop());
        if self.polled {
            // In short steps: a stop is heard within half a second.
            let until = Instant::now() + wait.min(POLL);
            while Instant::now() < until && !stopped(self) {
                std::thread::sleep(Duration::from_millis(200).min(wait.min(POLL)));
            }
        }
        if stopped(self) {
            return Err(self.fail(CloudError::Stopped { id }));
        }
        self.polled = true;
        let from_api = match self.nova.console_output(&id, None) {
            Ok(text) => {
                self.unavailable = 0;
                Some(text)
            }
            // 404 "Guest does not have a console available" / 409 "not running":
            // the guest stopped, or its console is not there yet.
            Err(CloudError::Http { status, .. }) if status == 404 || status == 409 => {
                self.unavailable += 1;
                None
            }
            Err(e) => return Err(self.fail(e)),
        };
        let from_file = self
            .spec
            .console_dir
            .as_ref()
            .and_then(|d| std::fs::read(d.join(&id).join("console.log")).ok())
            .map(|b| String::from_utf8_lossy(&b).into_owned());
        // The longer view is the fuller one (the API may cut to the last lines).
        let latest = [from_api, from_file]
            .into_iter()
            .flatten()
            .max_by_key(|t| clean_console(t.as_bytes()).len());
        Ok(match latest {
            Some(t) => ConsoleRead::Whole(t.into_bytes()),
            None => ConsoleRead::Nothing,
        })
    }

    fn state(&mut self) -> mgear_boot::Result<GuestState> {
        if self.unavailable >= 2 {
            let id = self.id().to_string();
            match self.nova.server_state(&id) {
                Ok(ServerState::Other(status)) if status == "SHUTOFF" => {
                    self.shut_off = true;
                    return Ok(GuestState::Stopped {
                        how: format!("server {id} shut off"),
                    });
                }
                Ok(_) => {}
                Err(e) => return Err(self.fail(e)),
            }
        }
        Ok(GuestState::Running)
    }

    /// The server stays: when it booted it is the migrated machine, and
    /// when it did not, the caller deletes it by its id.
    fn stop(&mut self) {}

    fn setup(&self) -> Setup {
        let id = self.id();
        Setup {
            driver: "openstack-nova".into(),
            target: format!("cinder:{} (server {id})", self.spec.volume_id),
            firmware: Firmware::Bios,
            firmware_reason: "Nova's default (the volume sets no hw_firmware_type)".into(),
            bus: Bus::Virtio,
            bus_reason: "Nova's libvirt driver attaches volumes on virtio (no hw_disk_bus)".into(),
            command: [
                "POST /servers".to_string(),
                format!("name={}", self.spec.server_name),
                format!("flavorRef={} ({})", self.flavor.id, self.flavor.name),
                "networks=none".to_string(),
                format!(
                    "block_device_mapping_v2[0]=volume {} boot_index 0",
                    self.spec.volume_id
                ),
            ]
            .into_iter()
            .chain(
                self.spec
                    .data_volumes
                    .iter()
                    .enumerate()
                    .map(|(i, v)| format!("block_device_mapping_v2[{}]=volume {v}", i + 1)),
            )
            .collect(),
            subject: format!("server {id}"),
            console: format!("the console of server {id}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testserver::{Canned, TestServer};
    use crate::{Auth, Endpoints, NoAuth};
    use serde_json::json;

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

    fn spec(dir: Option<PathBuf>) -> NovaBootSpec {
        NovaBootSpec {
            server_name: "web01".into(),
            volume_id: "v1".into(),
            data_volumes: Vec::new(),
            flavor: "mgear.small".into(),
            create_flavor: None,
            wait_for: "MGEAR-BOOT-OK [a-z0-9]+".into(),
            active_timeout: Duration::from_secs(30),
            timeout: Duration::from_secs(30),
            console_dir: dir,
            stop: None,
        }
    }

    fn flavors() -> Canned {
        Canned::json(
            200,
            json!({"flavors": [{"id": "7", "name": "mgear.small", "ram": 512, "vcpus": 1, "disk": 0}]}),
        )
    }

    #[test]
    fn marker_on_the_api_console_proves_the_boot() {
        let srv = TestServer::start(vec![
            flavors(),
            Canned::json(202, json!({"server": {"id": "s1"}})),
            Canned::json(200, json!({"server": {"id": "s1", "status": "ACTIVE"}})),
            Canned::json(200, json!({"output": "SeaBIOS\r\n\x1b[2Jbooting\r\n"})),
            Canned::json(
                200,
                json!({"output": "SeaBIOS\r\nbooting\r\nMGEAR-BOOT-OK web01\r\n"}),
            ),
        ]);
        let s = session(&srv.url());
        let b = boot_from_volume(&s, &spec(None)).unwrap();
        assert_eq!(b.server_id, "s1");
        assert_eq!(b.flavor_id, "7");
        assert!(b.report.booted(), "{}", b.report.detail);
        assert_eq!(b.report.matched.as_deref(), Some("MGEAR-BOOT-OK web01"));
        assert!(!b.report.console_log.contains('\r'));
        let reqs = srv.requests();
        assert_eq!(reqs[1].json()["server"]["flavorRef"], "7");
        assert_eq!(
            reqs[3].json(),
            json!({"os-getConsoleOutput": {}}),
            "whole console asked for"
        );
        assert_eq!(reqs.len(), 5);
    }

    /// A stop asked for (Ctrl-C) ends the wait for the regex at the next poll, with the
    /// server left as it is: a guest that kept running held the wait until the timeout.
    #[test]
    fn a_stop_ends_the_wait_for_the_console() {
        static STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        fn stop() -> bool {
            STOP.load(std::sync::atomic::Ordering::SeqCst)
        }
        let srv = TestServer::start(vec![
            flavors(),
            Canned::json(202, json!({"server": {"id": "s9"}})),
            Canned::json(200, json!({"server": {"id": "s9", "status": "ACTIVE"}})),
            Canned::json(200, json!({"output": "SeaBIOS\r\nbooting\r\n"})),
            Canned::json(200, json!({"output": "SeaBIOS\r\nbooting\r\n"})),
        ]);
        let s = session(&srv.url());
        let spec = NovaBootSpec {
            stop: Some(stop),
            timeout: Duration::from_secs(600),
            ..spec(None)
        };
        let asked = std::thread::spawn(|| {
            std::thread::sleep(Duration::from_millis(300));
            STOP.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        let started = std::time::Instant::now();
        let e = boot_from_volume(&s, &spec).unwrap_err();
        asked.join().unwrap();
        assert!(
            matches!(&e, CloudError::Stopped { id } if id == "s9"),
            "{e}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn a_guest_that_powered_off_is_read_from_the_compute_hosts_log_or_reported_stopped() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("s1")).unwrap();
        std::fs::write(
            dir.path().join("s1/console.log"),
            "Linux\nMGEAR-BOOT-OK web01\nreboot: Power down\n",
        )
        .unwrap();
        let gone = || {
            Canned::json(
                404,
                json!({"itemNotFound": {"message": "Guest does not have a console available."}}),
            )
        };
        let srv = TestServer::start(vec![
            flavors(),
            Canned::json(202, json!({"server": {"id": "s1"}})),
            Canned::json(200, json!({"server": {"id": "s1", "status": "ACTIVE"}})),
            gone(),
            // Second server: no compute-host log, the guest is off without the marker.
            flavors(),
            Canned::json(202, json!({"server": {"id": "s2"}})),
            Canned::json(200, json!({"server": {"id": "s2", "status": "ACTIVE"}})),
            Canned::json(200, json!({"output": "kernel panic\n"})),
            gone(),
            gone(),
            Canned::json(200, json!({"server": {"id": "s2", "status": "SHUTOFF"}})),
        ]);
        let s = session(&srv.url());
        let b = boot_from_volume(&s, &spec(Some(dir.path().to_path_buf()))).unwrap();
        assert!(b.report.booted(), "{}", b.report.detail);
        let b = boot_from_volume(&s, &spec(None)).unwrap();
        assert_eq!(b.report.outcome, Outcome::GuestStopped);
        assert!(b.report.detail.contains("shut off"), "{}", b.report.detail);
        assert!(b.report.console_log.contains("kernel panic"));
    }

    #[test]
    fn a_failed_build_is_reported_and_a_missing_flavor_refused_before_any_server() {
        let srv = TestServer::start(vec![
            Canned::json(200, json!({"flavors": []})),
            flavors(),
            Canned::json(202, json!({"server": {"id": "s3"}})),
            Canned::json(
                200,
                json!({"server": {"id": "s3", "status": "ERROR",
                    "fault": {"message": "No valid host was found."}}}),
            ),
        ]);
        let s = session(&srv.url());
        let e = boot_from_volume(&s, &spec(None)).unwrap_err();
        assert!(e.to_string().contains("no flavor \"mgear.small\""), "{e}");
        let b = boot_from_volume(&s, &spec(None)).unwrap();
        assert_eq!(b.report.outcome, Outcome::QemuFailed);
        assert!(
            b.report.detail.contains("No valid host"),
            "{}",
            b.report.detail
        );
        assert!(b.report.require_booted().is_err());
        assert_eq!(b.server_id, "s3");
        let bad = NovaBootSpec {
            wait_for: "(".into(),
            ..spec(None)
        };
        assert!(boot_from_volume(&s, &bad).is_err());
    }
}
