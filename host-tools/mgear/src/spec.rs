//! One parser for every disk spec on the command line: `--target` (ingest,
//! boot, serve), `--source` (capture, sync) and the `nbd://` test that
//! decides whether a string names an export. Commands get typed specs and
//! never look at prefixes themselves.
//!
//! # `--target`
//!
//! | spec | what |
//! |---|---|
//! | `file:PATH` (alias `raw:PATH`) | a raw image file (ingest creates it sparse, as `PATH.partial` until verified) |
//! | `qcow2:PATH` | a qcow2 image (ingest writes it through `qemu-nbd`) |
//! | `dev:/dev/DEVICE` | a block device |
//! | `libvirt:POOL/NAME` | a volume of a libvirt storage pool on `qemu:///system` |
//! | `nbd://HOST[:PORT]/EXPORT`, `nbd+unix:///EXPORT?socket=PATH` | any NBD export |
//! | `ebs-snapshot:NAME[?register-image=1&arch=..&boot-mode=..&root-device=..]` | a new AWS EBS snapshot, through the EBS direct APIs (ingest only) |
//! | `rbd:POOL/IMAGE[?conf=PATH&id=USER]` | a Ceph RBD image (created at the disk's size unless it exists; written through qemu's rbd driver; conf and user default to `CEPH_CONF`/`CEPH_ARGS`) |
//! | `cinder:NAME` | an OpenStack Cinder volume found by its capture metadata or created (`OS_*`/`clouds.yaml`), written through its RBD image (`crate::cloud_target`) |
//!
//! A bare `PATH` (no kind) means the file or device that is already there,
//! where a command only reads it or writes it in place (`boot`, `serve`):
//! a block device is `dev:`, anything else `file:`. `ingest` creates its
//! target, so it wants the kind spelled out and refuses a bare path.
//!
//! # `--source`
//!
//! An NBD URL is an export; anything else (with or without `file:`/`raw:`/
//! `dev:`) is a local file or block device.
//!
//! # `--medium`
//!
//! `fat:IMAGE-OR-DEVICE`, `dir:MOUNTPOINT` or an NBD URL of a FAT volume:
//! [`Medium`] (`crate::medium` opens it and owns the medium flags).
//!
//! This module only parses: it sits at the bottom of the library (it needs
//! nothing but `crate::exit`), so every command can use it. Opening a parsed
//! target as a volume is `crate::target`.

use std::path::{Path, PathBuf};

use mgear_boot::LibvirtTarget;
use mgear_nbd::NbdUrl;
use mgear_volume::{EbsOptions, RbdSpec};

use crate::exit::usage;

const TARGET_KINDS: &str =
    "file:PATH (raw image), qcow2:PATH, dev:/dev/DEVICE, libvirt:POOL/NAME, nbd://HOST:PORT/EXPORT, \
     rbd:POOL/IMAGE, cinder:NAME or ebs-snapshot:NAME";

/// True if `s` is an NBD URL (the one place that knows the schemes).
pub fn is_nbd(s: &str) -> bool {
    s.starts_with("nbd://") || s.starts_with("nbd+unix://")
}

/// Parse an NBD URL with a message naming the flag.
pub fn nbd_url(flag: &str, s: &str) -> crate::Result<NbdUrl> {
    s.parse().map_err(|e| {
        usage(format!(
            "{flag} {s:?}: {e} (nbd://HOST:PORT/EXPORT or nbd+unix:///EXPORT?socket=PATH)"
        ))
    })
}

/// Whether a bare path (no `kind:`) is accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bare {
    /// The path names an existing file or device (boot, serve).
    Existing,
    /// The command creates its target: the kind must be spelled out.
    Refuse,
}

/// A parsed `--target`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    File(PathBuf),
    Qcow2(PathBuf),
    Dev(PathBuf),
    Libvirt(LibvirtTarget),
    /// Any NBD export: qemu-nbd or nbdkit serving rbd, vmdk, a cloud volume, ...
    Nbd(NbdUrl),
    /// A new AWS EBS snapshot named NAME (EBS direct APIs).
    EbsSnapshot {
        name: String,
        opts: EbsOptions,
    },
    /// A Ceph RBD image.
    Rbd(RbdSpec),
    /// An OpenStack Cinder volume, by machine name.
    Cinder(String),
}

fn nonempty(flag: &str, spec: &str, p: &str) -> crate::Result<PathBuf> {
    if p.is_empty() {
        return Err(usage(format!(
            "{flag} {spec} has no path: use {TARGET_KINDS}"
        )));
    }
    Ok(PathBuf::from(p))
}

/// A Cinder volume name: 1-255 characters, no control characters.
fn check_cinder_name(flag: &str, name: &str) -> crate::Result<()> {
    if name.is_empty() || name.chars().count() > 255 || name.chars().any(char::is_control) {
        return Err(usage(format!(
            "{flag} cinder:{name:?}: give a volume name of 1-255 printable characters"
        )));
    }
    Ok(())
}

impl Target {
    /// Parse a `--target` spec; see the module doc.
    pub fn parse(s: &str, bare: Bare) -> crate::Result<Self> {
        Self::parse_flag("--target", s, bare)
    }

    /// Parse a target spec given as `flag` (`--boot-target`, ...): messages
    /// name the flag the user typed.
    pub fn parse_flag(flag: &str, s: &str, bare: Bare) -> crate::Result<Self> {
        if is_nbd(s) {
            return nbd_url(flag, s).map(Target::Nbd);
        }
        if s.starts_with("rbd:") {
            return Ok(RbdSpec::parse(s).map(Target::Rbd)?);
        }
        if let Some(name) = s.strip_prefix("cinder:") {
            return check_cinder_name(flag, name).map(|()| Target::Cinder(name.into()));
        }
        if let Some(rest) = s.strip_prefix("ebs-snapshot:") {
            let (name, query) = rest.split_once('?').unwrap_or((rest, ""));
            if name.is_empty() {
                return Err(usage(format!(
                    "{flag} {s} has no name: use ebs-snapshot:NAME"
                )));
            }
            let opts =
                EbsOptions::parse_query(query).map_err(|e| usage(format!("{flag} {s}: {e}")))?;
            return Ok(Target::EbsSnapshot {
                name: name.to_string(),
                opts,
            });
        }
        if let Some(t) = LibvirtTarget::parse_prefixed(s) {
            return Ok(Target::Libvirt(t?));
        }
        if let Some(p) = s.strip_prefix("file:").or_else(|| s.strip_prefix("raw:")) {
            return Ok(Target::File(nonempty(flag, s, p)?));
        }
        if let Some(p) = s.strip_prefix("qcow2:") {
            return Ok(Target::Qcow2(nonempty(flag, s, p)?));
        }
        if let Some(p) = s.strip_prefix("dev:") {
            return Ok(Target::Dev(nonempty(flag, s, p)?));
        }
        let looks_like_kind = s
            .split_once(':')
            .is_some_and(|(k, _)| !k.is_empty() && !k.contains('/'));
        if bare == Bare::Refuse || looks_like_kind || s.is_empty() {
            return Err(usage(format!("{flag} {s}: say which kind: {TARGET_KINDS}")));
        }
        use std::os::unix::fs::FileTypeExt;
        let p = PathBuf::from(s);
        let device = std::fs::metadata(&p).is_ok_and(|m| m.file_type().is_block_device());
        Ok(if device {
            Target::Dev(p)
        } else {
            Target::File(p)
        })
    }

    /// The target as boot sees it (`None` for `libvirt:`, which boot looks up
    /// on the daemon).
    pub fn boot_target(&self) -> Option<mgear_boot::Target> {
        Some(match self {
            Target::File(p) => mgear_boot::Target::File(p.clone()),
            Target::Qcow2(p) => mgear_boot::Target::Qcow2(p.clone()),
            Target::Dev(p) => mgear_boot::Target::Dev(p.clone()),
            Target::Nbd(u) => mgear_boot::Target::Nbd(u.to_string()),
            Target::Rbd(r) => mgear_boot::Target::Rbd(r.qemu_filename()),
            Target::Libvirt(_) | Target::Cinder(_) | Target::EbsSnapshot { .. } => return None,
        })
    }

    /// Whether the ingested volume is a local file or device afterwards
    /// (what `--adapt` needs).
    pub fn is_local(&self) -> bool {
        !matches!(
            self,
            Target::Nbd(_) | Target::Rbd(_) | Target::Cinder(_) | Target::EbsSnapshot { .. }
        )
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::File(p) => write!(f, "file:{}", p.display()),
            Target::Qcow2(p) => write!(f, "qcow2:{}", p.display()),
            Target::Dev(p) => write!(f, "dev:{}", p.display()),
            Target::Libvirt(t) => write!(f, "{t}"),
            Target::Nbd(u) => write!(f, "{u}"),
            Target::EbsSnapshot { name, .. } => write!(f, "ebs-snapshot:{name}"),
            Target::Rbd(r) => write!(f, "{r}"),
            Target::Cinder(n) => write!(f, "cinder:{n}"),
        }
    }
}

/// A parsed `--source`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A raw image file or block device.
    Path(PathBuf),
    /// An NBD export.
    Nbd(NbdUrl),
}

impl Source {
    /// Parse a `--source` spec; see the module doc.
    pub fn parse(s: &str) -> crate::Result<Self> {
        if is_nbd(s) {
            return nbd_url("--source", s).map(Source::Nbd);
        }
        let p = ["file:", "raw:", "dev:"]
            .iter()
            .find_map(|k| s.strip_prefix(k))
            .unwrap_or(s);
        if p.is_empty() {
            return Err(usage(format!(
                "--source {s:?} has no path: give a file, a block device or an NBD URL"
            )));
        }
        // A medium's or a target's kind given to --source (`fat:disk.raw`): it was taken as
        // part of the path and refused as "No such file or directory", exit 3.
        if let Some(kind) = ["fat:", "dir:", "qcow2:", "rbd:", "cinder:", "ebs-snapshot:"]
            .into_iter()
            .find(|k| p.starts_with(k))
            .filter(|_| !Path::new(p).exists())
        {
            return Err(usage(format!(
                "--source {s}: {kind} names a medium or a target, not a source disk; --source \
                 takes the disk's raw image file or block device (bare, or as file:, raw: or \
                 dev:), or an NBD URL (a qcow2, vmdk or vhdx image through `qemu-nbd`, as \
                 README says)"
            )));
        }
        Ok(Source::Path(Path::new(p).to_owned()))
    }
}

/// A parsed `--medium`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Medium {
    /// A FAT image file or device.
    Fat(PathBuf),
    /// A mounted directory.
    Dir(PathBuf),
    /// A FAT volume exported over NBD (e.g. the appliance simulator's medium).
    Nbd(String),
}

impl Medium {
    /// Parse `fat:PATH`, `dir:PATH` or an NBD URL.
    pub fn parse(text: &str) -> crate::Result<Self> {
        if let Some(p) = text.strip_prefix("fat:") {
            medium_path(
                text,
                p,
                "fat:IMAGE-OR-DEVICE (e.g. fat:medium.img or fat:/dev/sdb)",
            )?;
            Ok(Medium::Fat(PathBuf::from(p)))
        } else if let Some(p) = text.strip_prefix("dir:") {
            medium_path(text, p, "dir:MOUNTPOINT (e.g. dir:/mnt/appliance)")?;
            Ok(Medium::Dir(PathBuf::from(p)))
        } else if is_nbd(text) {
            Ok(Medium::Nbd(text.to_owned()))
        } else {
            Err(usage(format!(
                "--medium {text}: say which kind of medium: fat:IMAGE-OR-DEVICE (e.g. fat:/dev/sdb), \
                 dir:MOUNTPOINT (e.g. dir:/mnt/appliance) or an NBD export of a FAT volume (nbd://HOST:PORT/EXPORT)"
            )))
        }
    }
}

/// A medium's path is there to be given, and is not a FIFO, socket or character device: a
/// FIFO blocked in open(2) until a writer came, forever, and a SIGTERM did not end it.
fn medium_path(text: &str, path: &str, form: &str) -> crate::Result<()> {
    use std::os::unix::fs::FileTypeExt as _;
    if path.is_empty() {
        return Err(usage(format!("--medium {text:?} has no path: give {form}")));
    }
    let Ok(m) = std::fs::metadata(path) else {
        // `fat://x` reads as a URL, and was offered `mgear medium format fat://x`: an image at
        // /x, in the root directory.
        if let Some(rest) = path.strip_prefix("//") {
            let kind = &text[..text.len() - path.len()];
            return Err(usage(format!(
                "--medium {text}: {kind} takes a path, not a URL, and {path} does not exist: \
                 give {kind}/{rest} for /{rest}, or {kind}{rest} for {rest} in this directory"
            )));
        }
        return Ok(());
    };
    let t = m.file_type();
    let what = if t.is_fifo() {
        "a FIFO (a named pipe)"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_char_device() {
        "a character device"
    } else {
        return Ok(());
    };
    Err(usage(format!(
        "--medium {text}: {path} is {what}, not a medium: give {form}"
    )))
}

/// What volume a target names, comparable across spellings: an existing
/// local file or device by its device and inode, a new one by its absolute
/// path, any other kind by its canonical text.
pub fn volume_key(t: &str) -> String {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    match Target::parse(t, Bare::Refuse) {
        Ok(Target::File(p) | Target::Qcow2(p) | Target::Dev(p)) => match std::fs::metadata(&p) {
            Ok(m) if m.file_type().is_block_device() => {
                loop_backing(m.rdev()).unwrap_or_else(|| format!("block {}", m.rdev()))
            }
            Ok(m) => format!("inode {} {}", m.dev(), m.ino()),
            Err(_) => format!("path {}", crate::guard::resolved(&p).unwrap_or(p).display()),
        },
        // The same export through another spelling of its socket's path (`./s`, a link):
        // two disks went into one export, both "verified".
        Ok(Target::Nbd(NbdUrl::Unix { socket, export })) => format!(
            "nbd unix {} {export}",
            std::fs::canonicalize(&socket).unwrap_or(socket).display()
        ),
        // The same export through another spelling of its host (`localhost`, `127.0.0.1`):
        // two ingests wrote one export at once, and the loser's read-back blamed the storage.
        Ok(Target::Nbd(NbdUrl::Tcp { host, port, export })) => {
            use std::net::ToSocketAddrs;
            let mut addrs: Vec<std::net::IpAddr> = (host.as_str(), port)
                .to_socket_addrs()
                .map(|a| a.map(|a| a.ip()).collect())
                .unwrap_or_default();
            addrs.sort();
            let at = if !addrs.is_empty() && addrs.iter().all(|a| a.is_loopback()) {
                "loopback".to_string()
            } else {
                addrs
                    .first()
                    .map_or(host.to_ascii_lowercase(), |a| a.to_string())
            };
            format!("nbd tcp {at} {port} {export}")
        }
        Ok(other) => other.to_string(),
        Err(_) => t.to_string(),
    }
}

/// A loop device's backing file, as the key of the file itself: two loop devices over one
/// file (or a loop device and its file) are one volume. `None` for any other device.
fn loop_backing(rdev: u64) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let (major, minor) = (nix::sys::stat::major(rdev), nix::sys::stat::minor(rdev));
    let backing =
        std::fs::read_to_string(format!("/sys/dev/block/{major}:{minor}/loop/backing_file"))
            .ok()?;
    let m = std::fs::metadata(backing.trim_end_matches('\n')).ok()?;
    Some(format!("inode {} {}", m.dev(), m.ino()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit::code_of;

    /// One export, however its host is spelled, is one volume (two ingests wrote it at once
    /// through `localhost` and `127.0.0.1`); another port or export is another.
    #[test]
    fn an_nbd_export_is_one_volume_whatever_its_host_is_called() {
        let key = volume_key("nbd://127.0.0.1:20813/a");
        assert_eq!(volume_key("nbd://localhost:20813/a"), key);
        assert_eq!(volume_key("nbd://LOCALHOST:20813/a"), key);
        assert_ne!(volume_key("nbd://127.0.0.1:20814/a"), key);
        assert_ne!(volume_key("nbd://127.0.0.1:20813/b"), key);
    }

    /// A FIFO given as the medium blocked in open(2) forever (inspect, capture, format);
    /// refused by name before anything opens it, exit 2, as a FIFO source is.
    #[test]
    fn a_fifo_or_an_empty_path_is_no_medium() {
        let t = tempfile::tempdir().unwrap();
        let fifo = t.path().join("pipe");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        for kind in ["fat:", "dir:"] {
            let e = Medium::parse(&format!("{kind}{}", fifo.display())).unwrap_err();
            assert_eq!(code_of(&e), 2);
            assert!(
                e.to_string()
                    .contains("is a FIFO (a named pipe), not a medium"),
                "{e}"
            );
            let e = Medium::parse(kind).unwrap_err();
            assert!(e.to_string().contains("has no path"), "{e}");
        }
        assert!(Medium::parse("fat:/dev/null").is_err());
        assert!(Medium::parse(&format!("dir:{}", t.path().display())).is_ok());
    }

    /// `fat://x` reads as a URL and was offered a format of /x; a `//` path that exists is
    /// still that path.
    #[test]
    fn a_medium_written_as_a_url_is_refused_with_the_paths_it_may_mean() {
        let e = Medium::parse("fat://no-such-medium.img").unwrap_err();
        assert_eq!(code_of(&e), 2);
        let m = e.to_string();
        assert!(m.contains("fat: takes a path, not a URL"), "{m}");
        assert!(
            m.contains("fat:/no-such-medium.img for /no-such-medium.img"),
            "{m}"
        );
        assert!(
            m.contains("fat:no-such-medium.img for no-such-medium.img in this"),
            "{m}"
        );
        let t = tempfile::tempdir().unwrap();
        let there = format!("dir:/{}", t.path().display());
        assert_eq!(
            Medium::parse(&there).unwrap(),
            Medium::Dir(format!("/{}", t.path().display()).into())
        );
    }

    #[test]
    fn targets_parse_into_kinds() {
        let r = Bare::Refuse;
        assert_eq!(
            Target::parse("file:a.raw", r).unwrap(),
            Target::File("a.raw".into())
        );
        assert_eq!(
            Target::parse("raw:a.raw", r).unwrap(),
            Target::File("a.raw".into())
        );
        assert_eq!(
            Target::parse("qcow2:x.q", r).unwrap(),
            Target::Qcow2("x.q".into())
        );
        assert_eq!(
            Target::parse("dev:/dev/vdb", r).unwrap(),
            Target::Dev("/dev/vdb".into())
        );
        assert!(matches!(
            Target::parse("nbd+unix:///e?socket=/s", r).unwrap(),
            Target::Nbd(_)
        ));
        let Target::Libvirt(t) = Target::parse("libvirt:mgear/web01", r).unwrap() else {
            panic!("not libvirt");
        };
        assert_eq!((t.pool.as_str(), t.name.as_str()), ("mgear", "web01"));
        for bad in [
            "a.raw",
            "file:",
            "libvirt:nopool",
            "vmdk:x",
            "s3://b/x",
            "nbd://",
        ] {
            let e = Target::parse(bad, r).unwrap_err();
            assert_eq!(code_of(&e), 2, "{bad}: {e}");
        }
        let Target::Rbd(t) = Target::parse("rbd:pool/img?conf=/etc/ceph.conf&id=admin", r).unwrap()
        else {
            panic!("not rbd");
        };
        assert_eq!(
            t.qemu_filename(),
            "rbd:pool/img:conf=/etc/ceph.conf:id=admin"
        );
        assert_eq!(
            Target::parse("cinder:web01", r).unwrap(),
            Target::Cinder("web01".into())
        );
        for bad in ["rbd:pool", "rbd:p/i?x=1", "cinder:", "cinder:a\nb"] {
            let e = Target::parse(bad, r).unwrap_err();
            assert_eq!(code_of(&e), 2, "{bad}: {e}");
        }
    }

    #[test]
    fn ebs_snapshot_targets_parse_with_options() {
        let r = Bare::Refuse;
        let Target::EbsSnapshot { name, opts } =
            Target::parse("ebs-snapshot:web01?register-image=1&boot-mode=uefi", r).unwrap()
        else {
            panic!("not an EBS snapshot");
        };
        assert_eq!(name, "web01");
        assert!(opts.register_image);
        assert_eq!(opts.boot_mode.as_deref(), Some("uefi"));
        let t = Target::parse("ebs-snapshot:db", r).unwrap();
        assert!(!t.is_local() && t.boot_target().is_none());
        assert_eq!(t.to_string(), "ebs-snapshot:db");
        for bad in [
            "ebs-snapshot:",
            "ebs-snapshot:x?colour=1",
            "ebs-snapshot:x?arch=mips",
        ] {
            let e = Target::parse(bad, r).unwrap_err();
            assert_eq!(code_of(&e), 2, "{bad}: {e}");
        }
    }

    #[test]
    fn messages_name_the_flag_the_target_was_given_as() {
        for bad in ["bogus:xyz", "file:", "nbd://", "cinder:", "ebs-snapshot:"] {
            let e = Target::parse_flag("--boot-target", bad, Bare::Existing).unwrap_err();
            let m = e.to_string();
            assert!(m.starts_with("--boot-target "), "{bad}: {m}");
            assert!(!m.contains("--target "), "{bad}: {m}");
            assert_eq!(code_of(&e), 2, "{bad}: {m}");
        }
        let e = Target::parse("bogus:xyz", Bare::Existing).unwrap_err();
        assert!(e.to_string().starts_with("--target bogus:xyz: "), "{e}");
    }

    #[test]
    fn bare_paths_name_what_is_there() {
        let e = Bare::Existing;
        assert_eq!(
            Target::parse("vol.raw", e).unwrap(),
            Target::File("vol.raw".into())
        );
        // A bare path that looks like a kind is a typo, not a file name.
        assert!(Target::parse("vmdk:x", e).is_err());
        if Path::new("/dev/loop0").exists() {
            assert_eq!(
                Target::parse("/dev/loop0", e).unwrap(),
                Target::Dev("/dev/loop0".into())
            );
        }
    }

    #[test]
    fn sources() {
        assert_eq!(
            Source::parse("d.raw").unwrap(),
            Source::Path("d.raw".into())
        );
        assert_eq!(
            Source::parse("raw:d.raw").unwrap(),
            Source::Path("d.raw".into())
        );
        assert!(matches!(
            Source::parse("nbd://127.0.0.1:10809/x").unwrap(),
            Source::Nbd(_)
        ));
        assert_eq!(code_of(&Source::parse("nbd://").unwrap_err()), 2);
        assert!(Source::parse("file:").is_err());
        // A medium's kind on a source: usage, naming what --source takes.
        let e = Source::parse("fat:/no/such/disk.raw").unwrap_err();
        assert_eq!(code_of(&e), 2);
        assert!(
            e.to_string().contains("fat: names a medium or a target"),
            "{e}"
        );
    }

    #[test]
    fn media() {
        assert_eq!(
            Medium::parse("fat:/dev/sdb").unwrap(),
            Medium::Fat("/dev/sdb".into())
        );
        assert_eq!(
            Medium::parse("dir:/mnt/a").unwrap(),
            Medium::Dir("/mnt/a".into())
        );
        assert!(matches!(
            Medium::parse("nbd+unix:///m?socket=/s").unwrap(),
            Medium::Nbd(_)
        ));
        assert_eq!(code_of(&Medium::parse("/mnt/a").unwrap_err()), 2);
    }

    #[test]
    fn cinder_names() {
        assert!(check_cinder_name("--target", "web01").is_ok());
        assert!(check_cinder_name("--target", &"x".repeat(255)).is_ok());
        for bad in ["", "a\tb", &"x".repeat(256)] {
            assert_eq!(
                code_of(&check_cinder_name("--target", bad).unwrap_err()),
                2,
                "{bad:?}"
            );
        }
    }
}
