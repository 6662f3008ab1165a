//! Shared harness of the `appliance_*` scenarios: a running
//! `mgear-appliance-sim` (real pty, real NBD socket) in a scratch
//! directory, and the `mgear` binary driven against it.
// Each scenario module uses a different subset of these helpers.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use mgear_tests::{Line, Runner};
use rand::{RngCore, SeedableRng};

pub const PIN: &str = "4711-2468";

/// A scratch directory with a medium, a state directory and (while
/// running) a simulator.
pub struct Lab {
    pub dir: tempfile::TempDir,
    sim: Option<Child>,
}

impl Runner for Lab {
    fn mgear(&self, args: &[&str]) -> Command {
        Lab::mgear(self, args)
    }

    fn failure_context(&self) -> String {
        format!("simulator:\n{}", self.sim_log())
    }
}

impl Lab {
    /// A lab with a fresh FAT32 medium of `mib` MiB (>= 34).
    pub fn new(mib: u64) -> Lab {
        let dir = tempfile::tempdir().expect("tempdir");
        let lab = Lab { dir, sim: None };
        let st = Command::new("mkfs.fat")
            .args(["-F", "32", "-C"])
            .arg(lab.p("medium.img"))
            .arg((mib * 1024).to_string())
            .stdout(Stdio::null())
            .status()
            .expect("mkfs.fat (Debian dosfstools) must be installed");
        assert!(st.success(), "mkfs.fat failed");
        fs::write(lab.p("pin"), format!("{PIN}\n")).unwrap();
        fs::write(lab.p("wrong-pin"), "0000-0000\n").unwrap();
        fs::write(lab.p("pass"), "correct horse battery staple\n").unwrap();
        lab
    }

    pub fn p(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn s(&self, name: &str) -> String {
        self.p(name).display().to_string()
    }

    pub fn tty(&self) -> String {
        self.s("appliance.tty")
    }

    pub fn sock(&self) -> String {
        self.s("appliance.sock")
    }

    pub fn nbd_url(&self) -> String {
        format!("nbd+unix:///?socket={}", self.sock())
    }

    /// Start the simulator and wait until its console link appears.
    pub fn start(&mut self) {
        assert!(self.sim.is_none(), "simulator already running");
        let _ = fs::remove_file(self.p("appliance.tty"));
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.p("sim.log"))
            .unwrap();
        let child = Command::new(mgear_tests::bin("mgear-appliance-sim"))
            .arg("--medium")
            .arg(self.p("medium.img"))
            .arg("--state")
            .arg(self.p("state"))
            .arg("--console-link")
            .arg(self.p("appliance.tty"))
            .arg("--nbd")
            .arg(self.p("appliance.sock"))
            .arg("--test-timing")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start mgear-appliance-sim");
        self.sim = Some(child);
        let t0 = Instant::now();
        while fs::symlink_metadata(self.p("appliance.tty")).is_err() {
            if let Some(st) = self.sim.as_mut().unwrap().try_wait().unwrap() {
                panic!("simulator exited at start ({st}):\n{}", self.sim_log());
            }
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "simulator did not come up:\n{}",
                self.sim_log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn sim_log(&self) -> String {
        fs::read_to_string(self.p("sim.log")).unwrap_or_default()
    }

    pub fn sim_pid(&self) -> u32 {
        self.sim.as_ref().expect("simulator running").id()
    }

    /// Whether the simulator is still running.
    pub fn sim_alive(&mut self) -> bool {
        match self.sim.as_mut() {
            Some(c) => c.try_wait().unwrap().is_none(),
            None => false,
        }
    }

    /// SIGTERM and wait: must stop cleanly and remove link and socket.
    pub fn stop(&mut self) {
        let mut child = self.sim.take().expect("simulator running");
        let st = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(st.success());
        let t0 = Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "simulator ignored SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(
            status.success(),
            "simulator exit on SIGTERM: {status}\n{}",
            self.sim_log()
        );
        assert!(
            fs::symlink_metadata(self.p("appliance.tty")).is_err(),
            "console link left behind"
        );
        assert!(!self.p("appliance.sock").exists(), "NBD socket left behind");
    }

    /// SIGKILL: the simulated power cut.
    pub fn kill(&mut self) {
        let mut child = self.sim.take().expect("simulator running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    pub fn mgear(&self, args: &[&str]) -> Command {
        let mut c = Command::new(mgear_tests::bin("mgear"));
        c.args(args)
            .current_dir(self.dir.path())
            .env("XDG_STATE_HOME", self.p("xdg"))
            .env_remove("MGEAR_APPLIANCE")
            .stdin(Stdio::null());
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        Line::new(self, args).run()
    }

    /// Run and require exit 0 (a failure shows the simulator's log).
    pub fn ok(&self, args: &[&str]) -> Output {
        Line::new(self, args).ok()
    }

    /// `mgear appliance --port TTY ARGS...`
    pub fn appliance(&self, args: &[&str]) -> Output {
        let tty = self.tty();
        let mut all = vec!["appliance", "--port", tty.as_str()];
        all.extend_from_slice(args);
        self.run(&all)
    }

    pub fn appliance_ok(&self, args: &[&str]) -> Output {
        let tty = self.tty();
        let mut all = vec!["appliance", "--port", tty.as_str()];
        all.extend_from_slice(args);
        self.ok(&all)
    }

    /// `mgear appliance ... --json ARGS`, parsed.
    pub fn appliance_json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.appliance_ok(&all);
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", text(&out.stdout)))
    }

    pub fn state(&self) -> String {
        self.appliance_json(&["info"])["state"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// Provision and unlock with the test PIN.
    pub fn provision_and_unlock(&self) {
        self.appliance_ok(&["provision", "--pin-file", "pin"]);
        assert_eq!(self.state(), "Locked");
        self.appliance_ok(&["unlock", "--pin-file", "pin"]);
        assert_eq!(self.state(), "Unlocked");
    }

    /// A target key pair (target.key / target.pub).
    pub fn keygen(&self) {
        self.ok(&["keygen", "--out", "target.key"]);
    }

    /// Capture `disk.raw` as `web01` through the appliance, `--json`.
    pub fn capture_line(&self) -> Line<'_> {
        Line::capture(self, "web01")
            .source("disk.raw")
            .appliance(&self.tty())
            .arg("--json")
    }

    pub fn capture(&self) -> serde_json::Value {
        let out = self.capture_line().ok();
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("capture JSON ({e}): {}", text(&out.stdout)))
    }

    /// The appliance's full fingerprint (what the target pins).
    pub fn fingerprint(&self) -> String {
        self.appliance_json(&["info"])["fingerprint"]
            .as_str()
            .expect("appliance info --json has fingerprint_full")
            .to_string()
    }

    /// Ingest `web01` through the appliance into `vol.raw`, trusting this
    /// appliance (pinned by its full fingerprint).
    pub fn ingest(&self, extra: &[&str]) -> Output {
        Line::ingest(self, "web01")
            .args(&["--trust-appliance", &self.fingerprint()])
            .appliance(&self.tty())
            .target("file:vol.raw")
            .arg("--force")
            .args(extra)
            .run()
    }

    /// A test disk of `mib` MiB: random data with some zero and repeated
    /// chunks, deterministic per `seed`.
    pub fn make_disk(&self, mib: usize, seed: u64) {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
        let mut d = vec![0u8; mib << 20];
        for (i, c) in d.chunks_mut(1 << 20).enumerate() {
            match i % 4 {
                1 => {}                                         // zeros
                3 => c.copy_from_slice(&vec![0xA5u8; 1 << 20]), // repeated
                _ => rng.fill_bytes(c),
            }
        }
        fs::write(self.p("disk.raw"), d).unwrap();
    }

    /// Byte offset of `path` inside the raw medium image (found by its
    /// first 4 KiB, which are unique: headers carry random ids).
    pub fn offset_in_medium(&self, path: &str) -> u64 {
        let img = fs::read(self.p("medium.img")).unwrap();
        let head = {
            let f = fs::File::open(self.p("medium.img")).unwrap();
            let fs = fatfs::FileSystem::new(f, fatfs::FsOptions::new()).unwrap();
            let mut file = fs
                .root_dir()
                .open_file(path)
                .unwrap_or_else(|e| panic!("{path}: {e}"));
            let mut h = vec![0u8; 4096];
            file.read_exact(&mut h).unwrap();
            h
        };
        let pos = img
            .windows(head.len())
            .position(|w| w == head.as_slice())
            .unwrap_or_else(|| panic!("{path} not found in the raw medium"));
        pos as u64
    }

    /// Flip one byte of the raw medium file.
    pub fn flip_medium_byte(&self, offset: u64) {
        use std::os::unix::fs::FileExt;
        let f = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(self.p("medium.img"))
            .unwrap();
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, offset).unwrap();
        b[0] ^= 0x5a;
        f.write_all_at(&b, offset).unwrap();
        f.sync_all().unwrap();
    }

    /// Remove directory `path` and the files in it from the (stopped) medium image, as a
    /// courier with the image would (`MGEAR/web01/G0002`: a generation deleted).
    pub fn remove_medium_dir(&self, path: &str) {
        let f = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(self.p("medium.img"))
            .unwrap();
        let fs = fatfs::FileSystem::new(f, fatfs::FsOptions::new()).unwrap();
        let dir = fs.root_dir().open_dir(path).unwrap();
        let names: Vec<String> = dir
            .iter()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name())
            .filter(|n| n != "." && n != "..")
            .collect();
        for n in names {
            dir.remove(&n).unwrap();
        }
        drop(dir);
        fs.root_dir().remove(path).unwrap();
        fs.unmount().unwrap();
    }

    /// Names of the segment files of `web01` generation 1 on the (stopped) medium.
    pub fn medium_files(&self, dir: &str) -> Vec<String> {
        let f = fs::File::open(self.p("medium.img")).unwrap();
        let fs = fatfs::FileSystem::new(f, fatfs::FsOptions::new()).unwrap();
        let d = fs
            .root_dir()
            .open_dir(dir)
            .unwrap_or_else(|e| panic!("{dir}: {e}"));
        let mut names: Vec<String> = d
            .iter()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name())
            .collect();
        names.retain(|n| n != "." && n != "..");
        names.sort();
        names
    }

    /// Content of a file on the (stopped) medium.
    pub fn medium_read(&self, path: &str) -> Vec<u8> {
        let f = fs::File::open(self.p("medium.img")).unwrap();
        let fs = fatfs::FileSystem::new(f, fatfs::FsOptions::new()).unwrap();
        let mut file = fs
            .root_dir()
            .open_file(path)
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        let mut v = Vec::new();
        file.read_to_end(&mut v).unwrap();
        v
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(mut c) = self.sim.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Assert two files are byte-identical.
pub fn same_file(a: &Path, b: &Path) {
    let (x, y) = (fs::read(a).unwrap(), fs::read(b).unwrap());
    assert_eq!(
        x.len(),
        y.len(),
        "{} and {} differ in length",
        a.display(),
        b.display()
    );
    if let Some(i) = x.iter().zip(&y).position(|(p, q)| p != q) {
        panic!("{} and {} differ at byte {i}", a.display(), b.display());
    }
}

/// A raw console connection (for malformed-input scenarios).
pub struct Console {
    port: Box<dyn serialport::SerialPort>,
}

impl Console {
    pub fn open(tty: &str) -> Console {
        let port = serialport::new(tty, 115_200)
            .timeout(Duration::from_millis(100))
            .open()
            .expect("open the console pty");
        Console { port }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.port.write_all(bytes).unwrap();
        self.port.flush().unwrap();
    }

    /// Read until `done(received)` says so, or fail after 20 s.
    pub fn read_until(&mut self, mut done: impl FnMut(&[u8]) -> bool) -> Vec<u8> {
        let mut got = Vec::new();
        let t0 = Instant::now();
        let mut buf = [0u8; 4096];
        while !done(&got) {
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "no reply; got so far: {:?}",
                text(&got)
            );
            match self.port.read(&mut buf) {
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(e) => panic!("console read: {e}"),
            }
        }
        got
    }
}

impl Lab {
    /// Everything up to a sealed medium holding capture `web01` of a
    /// `mib`-MiB disk; returns the capture summary.
    pub fn sealed(&mut self, mib: usize) -> serde_json::Value {
        self.keygen();
        self.make_disk(mib, 7);
        self.start();
        self.provision_and_unlock();
        let c = self.capture();
        let s = self.appliance_json(&["seal"]);
        assert!(
            s["report"]["problems"].as_array().unwrap().is_empty(),
            "{s}"
        );
        assert_eq!(self.state(), "Sealed");
        c
    }
}
