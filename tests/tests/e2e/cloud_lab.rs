//! Against the real cloud lab (`scripts/cloud-lab.sh start`: Ceph, Cinder, Nova on this
//! machine; `./test.sh` starts it): a volume is created through Cinder with the metadata a
//! re-run finds it by, Cinder names its RBD image, it is written through qemu's rbd driver,
//! read back bit for bit, marked bootable, and a Nova server boots from it and prints the
//! sample disk's marker on its console.
//!
//! Skipped, with the reason printed, unless `MGEAR_CLOUD_LAB` names the lab's work dir (the
//! lab's `env` prints it). The endpoints and project come from the `OS_*` variables, or from
//! `$MGEAR_CLOUD_LAB/env` when they are not exported.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mgear_cloud::cinder::meta;
use mgear_cloud::{
    boot_from_volume, Auth, Cinder, CloudError, Nova, NovaBootSpec, Session, VolumeFor,
};

struct Lab {
    dir: PathBuf,
    vars: HashMap<String, String>,
}

impl Lab {
    fn from_env() -> Option<Lab> {
        let Some(dir) = std::env::var_os("MGEAR_CLOUD_LAB") else {
            eprintln!(
                "SKIPPED: MGEAR_CLOUD_LAB is not set; run `eval \"$(scripts/cloud-lab.sh start)\"` \
                 (as root) to test against the real Ceph + Cinder + Nova lab"
            );
            return None;
        };
        let dir = PathBuf::from(dir);
        // The lab's env file first, the process environment over it.
        let mut vars = HashMap::new();
        let env_file = dir.join("env");
        let text = std::fs::read_to_string(&env_file).unwrap_or_else(|e| {
            panic!(
                "MGEAR_CLOUD_LAB={} but {}: {e}",
                dir.display(),
                env_file.display()
            )
        });
        for line in text.lines() {
            if let Some((k, v)) = line
                .trim()
                .strip_prefix("export ")
                .and_then(|l| l.split_once('='))
            {
                vars.insert(k.to_string(), v.to_string());
            }
        }
        for (k, v) in std::env::vars() {
            if k.starts_with("OS_") || k.starts_with("MGEAR_CLOUD") || k == "CEPH_CONF" {
                vars.insert(k, v);
            }
        }
        Some(Lab { dir, vars })
    }

    fn var(&self, k: &str) -> String {
        self.vars
            .get(k)
            .cloned()
            .unwrap_or_else(|| panic!("{k} is not in the lab's env ({})", self.dir.display()))
    }

    fn session(&self) -> Session {
        let auth = Auth::from_vars(|k| self.vars.get(k).cloned()).expect("lab auth settings");
        Session::connect(auth, Duration::from_secs(120)).expect("lab session")
    }

    fn rbd_spec(&self, volume_id: &str) -> String {
        format!(
            "rbd:{}/volume-{volume_id}:conf={}:id={}",
            self.var("MGEAR_CLOUD_RBD_POOL"),
            self.var("CEPH_CONF"),
            self.var("MGEAR_CLOUD_RBD_USER")
        )
    }

    fn rbd_info(&self, volume_id: &str) -> std::process::Output {
        Command::new("rbd")
            .args([
                "-c",
                &self.var("CEPH_CONF"),
                "--id",
                &self.var("MGEAR_CLOUD_RBD_USER"),
            ])
            .args([
                "info",
                &format!("{}/volume-{volume_id}", self.var("MGEAR_CLOUD_RBD_POOL")),
            ])
            .output()
            .expect("run rbd")
    }
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn unique() -> String {
    let t = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    format!("{}-{}", t.as_secs(), std::process::id())
}

/// Deletes what a failed test left behind (server first: the volume is attached to it).
struct Cleanup<'a> {
    session: &'a Session,
    server: Option<String>,
    volume: Option<String>,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            let nova = Nova::new(self.session);
            let _ = nova.delete_server(&s);
            let _ = nova.wait_server_gone(&s, Duration::from_secs(120));
        }
        if let Some(v) = self.volume.take() {
            let cinder = Cinder::new(self.session);
            let _ = cinder.wait_status(&v, "available", Duration::from_secs(60));
            let _ = cinder.delete(&v);
        }
    }
}

#[test]
fn volume_written_through_rbd_boots_through_nova() {
    let Some(lab) = Lab::from_env() else { return };
    let session = lab.session();
    let cinder = Cinder::new(&session);
    let nova = Nova::new(&session);
    let id = unique();
    let mut cleanup = Cleanup {
        session: &session,
        server: None,
        volume: None,
    };

    // The volume an ingest of 1 GiB + 1 byte wants: 2 GiB, found again by its metadata.
    let want = VolumeFor {
        name: format!("mgear-lab-{id}"),
        size_bytes: (1 << 30) + 1,
        capture_id: format!("capture-{id}"),
        generation: 2,
        manifest_root: "ab".repeat(32),
        ..VolumeFor::default()
    };
    let ensured = cinder
        .ensure_volume(&want, Duration::from_secs(120))
        .unwrap();
    cleanup.volume = Some(ensured.volume.id.clone());
    assert!(ensured.created);
    let vol = ensured.volume;
    assert_eq!(vol.status, "available");
    assert_eq!(vol.size, 2);
    assert!(!vol.is_bootable());
    assert_eq!(
        vol.metadata.get(meta::STATE).map(String::as_str),
        Some(meta::WRITING)
    );
    assert_eq!(
        vol.metadata.get(meta::GENERATION).map(String::as_str),
        Some("2")
    );
    let again = cinder
        .ensure_volume(&want, Duration::from_secs(120))
        .unwrap();
    assert!(!again.created, "a re-run must find its volume");
    assert_eq!(again.volume.id, vol.id);
    let other = VolumeFor {
        generation: 3,
        ..want.clone()
    };
    assert!(cinder
        .find_by_metadata(&other.identity())
        .unwrap()
        .is_empty());

    // Cinder tells where its RBD backend keeps the volume, as it tells a compute host.
    let img = cinder.rbd_image(&vol, None).unwrap();
    assert_eq!(img.source, "connection-info");
    assert_eq!(img.pool, lab.var("MGEAR_CLOUD_RBD_POOL"));
    assert_eq!(img.image, format!("volume-{}", vol.id));
    assert_eq!(
        img.user.as_deref(),
        Some(lab.var("MGEAR_CLOUD_RBD_USER").as_str())
    );
    assert_eq!(img.monitors, ["127.0.0.1:6789"]);
    let info = lab.rbd_info(&vol.id);
    assert!(
        info.status.success(),
        "rbd info volume-{}: {}",
        vol.id,
        String::from_utf8_lossy(&info.stderr)
    );
    assert!(String::from_utf8_lossy(&info.stdout).contains("size 2 GiB"));

    // Write a bootable disk into it the way a storage-side helper does, and read it back.
    let tmp = tempfile::tempdir().unwrap();
    let disk = tmp.path().join("sample.raw");
    let marker = format!("lab-{id}");
    let sample = mgear_boot::build_sample_disk(
        &disk,
        &mgear_boot::SampleDiskOptions {
            marker_id: Some(marker.clone()),
            ..Default::default()
        },
    )
    .unwrap();
    let rbd = lab.rbd_spec(&vol.id);
    run(Command::new("qemu-img")
        .args(["convert", "-n", "-W", "-m", "16", "-f", "raw", "-O", "raw"])
        .arg(&disk)
        .arg(&rbd));
    // compare: the sample's bytes equal, the rest of the volume zero.
    run(Command::new("qemu-img")
        .args(["compare", "-f", "raw", "-F", "raw"])
        .arg(&disk)
        .arg(&rbd));

    cinder.set_bootable(&vol.id, true).unwrap();
    assert!(cinder.get(&vol.id).unwrap().is_bootable());

    // Boot it as the cloud does, and prove it from the console.
    let booted = {
        let _one_guest_at_a_time = crate::LIBVIRT.lock().unwrap_or_else(|e| e.into_inner());
        boot_from_volume(
            &session,
            &NovaBootSpec {
                server_name: format!("mgear-lab-{id}"),
                volume_id: vol.id.clone(),
                flavor: "mgear.lab".into(),
                create_flavor: Some((512, 1)),
                // The marker line is letters, digits, '-' and '.': a regex matching itself.
                wait_for: sample.marker_line.clone(),
                active_timeout: Duration::from_secs(300),
                timeout: Duration::from_secs(300),
                console_dir: Some(PathBuf::from(lab.var("MGEAR_CLOUD_NOVA_INSTANCES"))),
            },
        )
        .unwrap()
    };
    cleanup.server = Some(booted.server_id.clone());
    assert!(
        booted.report.booted(),
        "{}\n{}",
        booted.report.detail,
        booted.report.console_tail(30)
    );
    assert_eq!(booted.report.driver, "openstack-nova");
    assert!(booted.active_after_secs.is_some());
    assert!(!booted
        .report
        .console_log
        .contains(mgear_boot::sample::FAIL_PREFIX));
    // The flavor made for the first boot is found by name the next time.
    assert_eq!(
        nova.find_flavor("mgear.lab").unwrap().map(|f| f.id),
        Some(booted.flavor_id.clone())
    );

    // Tear down through the APIs: the volume survives its server and is deleted with its image.
    let server = booted.server_id;
    nova.delete_server(&server).unwrap();
    nova.wait_server_gone(&server, Duration::from_secs(180))
        .unwrap();
    cleanup.server = None;
    cinder
        .wait_status(&vol.id, "available", Duration::from_secs(120))
        .unwrap();
    cinder.delete(&vol.id).unwrap();
    cinder
        .wait_deleted(&vol.id, Duration::from_secs(120))
        .unwrap();
    cleanup.volume = None;
    assert!(
        !lab.rbd_info(&vol.id).status.success(),
        "volume-{} survived its volume",
        vol.id
    );
}

#[test]
fn lab_errors_name_the_call_and_the_clouds_message() {
    let Some(lab) = Lab::from_env() else { return };
    let session = lab.session();
    let e = Cinder::new(&session)
        .get("00000000-0000-0000-0000-000000000000")
        .unwrap_err();
    assert!(matches!(e, CloudError::Http { status: 404, .. }), "{e}");
    assert!(e.to_string().contains("could not be found"), "{e}");
    let e = Cinder::new(&session)
        .wait_status(
            "00000000-0000-0000-0000-000000000000",
            "available",
            Duration::from_secs(5),
        )
        .unwrap_err();
    assert!(e.to_string().contains("GET "), "{e}");
}
