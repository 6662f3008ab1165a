//! Against the real cloud lab (`scripts/cloud-lab.sh start`: Ceph, Cinder, Nova on this
//! machine): a volume is created through Cinder, lands as an RBD image, is written through
//! qemu's rbd driver, read back bit for bit, marked bootable, and a Nova server boots from it
//! and prints the sample disk's marker on its console.
//!
//! Skipped, with the reason printed, unless `MGEAR_CLOUD_LAB` names the lab's work dir (the
//! lab's `env` prints it). The endpoints and project come from the `OS_*` variables, or from
//! `$MGEAR_CLOUD_LAB/env` when they are not exported.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mgear_cloud::{Auth, Cinder, CloudError, NewVolume, Nova, Session};

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

fn wait_for_file_text(path: &Path, needle: &str, deadline: Duration) -> Result<String, String> {
    let start = Instant::now();
    loop {
        let text = std::fs::read(path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        if text.contains(needle) {
            return Ok(text);
        }
        if start.elapsed() >= deadline {
            let tail: String = text
                .chars()
                .rev()
                .take(2000)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            return Err(format!(
                "{needle:?} not in {} within {} s; its end:\n{tail}",
                path.display(),
                deadline.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_secs(1));
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

    // A 1 GiB volume carrying the metadata a re-run would look it up by.
    let meta: BTreeMap<String, String> = [
        ("mgear.test".to_string(), id.clone()),
        ("mgear.capture".to_string(), "lab-test".to_string()),
    ]
    .into();
    let created = cinder
        .create(&NewVolume {
            name: format!("mgear-lab-{id}"),
            size_gib: 1,
            metadata: meta.clone(),
            ..NewVolume::default()
        })
        .unwrap();
    cleanup.volume = Some(created.id.clone());
    let vol = cinder
        .wait_status(&created.id, "available", Duration::from_secs(120))
        .unwrap();
    assert_eq!(vol.size, 1);
    assert!(!vol.is_bootable());
    let found = cinder.find_by_metadata(&meta).unwrap();
    assert_eq!(
        found.iter().map(|v| v.id.as_str()).collect::<Vec<_>>(),
        [vol.id.as_str()]
    );
    let other: BTreeMap<String, String> = [("mgear.test".to_string(), format!("{id}-x"))].into();
    assert!(cinder.find_by_metadata(&other).unwrap().is_empty());

    // Cinder's RBD backend made the image the volume is.
    let info = lab.rbd_info(&vol.id);
    assert!(
        info.status.success(),
        "rbd info volume-{}: {}",
        vol.id,
        String::from_utf8_lossy(&info.stderr)
    );
    assert!(String::from_utf8_lossy(&info.stdout).contains("size 1 GiB"));

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
    // compare: the sample's bytes equal, the rest of the 1 GiB volume zero.
    run(Command::new("qemu-img")
        .args(["compare", "-f", "raw", "-F", "raw"])
        .arg(&disk)
        .arg(&rbd));

    cinder.set_bootable(&vol.id, true).unwrap();
    assert!(cinder.get(&vol.id).unwrap().is_bootable());

    // Boot it as the cloud does.
    let flavor = nova.ensure_flavor("mgear.lab", 512, 1, 0).unwrap();
    assert_eq!(
        nova.ensure_flavor("mgear.lab", 512, 1, 0).unwrap().id,
        flavor.id
    );
    let server = nova
        .create_server_from_volume(&format!("mgear-lab-{id}"), &flavor.id, &vol.id)
        .unwrap();
    cleanup.server = Some(server.clone());
    nova.wait_active(&server, Duration::from_secs(300)).unwrap();
    let console = Path::new(&lab.var("MGEAR_CLOUD_NOVA_INSTANCES"))
        .join(&server)
        .join("console.log");
    let text = wait_for_file_text(&console, &sample.marker_line, Duration::from_secs(300))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!text.contains(mgear_boot::sample::FAIL_PREFIX), "{text}");
    // (The sample guest powers off right after its marker, and Nova serves
    // os-getConsoleOutput only for a running guest: the log file is the proof here.)

    // Tear down through the APIs: the volume survives its server and is deleted with its image.
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
