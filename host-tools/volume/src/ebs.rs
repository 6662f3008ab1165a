//! `ebs-snapshot:NAME`: an AWS EBS snapshot written straight through the EBS direct APIs
//! (`mgear_cloud::ebs`), no EC2 instance, no attached volume, no staging copy.
//!
//! Writes go into 512 KiB blocks; all-zero blocks are never sent; several puts are in flight.
//! [`Volume::flush`] waits for them and records in the state dir what a resume needs (the
//! pending snapshot's id, each acknowledged block's SHA-256, the few partly written blocks), so
//! a killed ingest goes on in the same snapshot. [`Volume::finish`] sends CompleteSnapshot with
//! the block count and the LINEAR aggregated checksum, and, when asked, waits for `completed`
//! and registers an AMI from it.
//!
//! Read-back: the direct APIs read only completed snapshots, and completing is final, so this
//! volume cannot be read back before [`Volume::finish`] (`can_read_back` is false). Instead every
//! PutSnapshotBlock carries the block's SHA-256, EBS recomputes it from the bytes it received and
//! answers it, and we compare; CompleteSnapshot's aggregate then binds the set of blocks. What
//! was sent is what was authenticated, chunk by chunk, and each block's bytes are what EBS holds.

use mgear_cloud::ebs::ec2::NewImage;
use mgear_cloud::ebs::{self, AwsConfig, EbsClient, SnapshotWriter, WriterOptions};
use mgear_cloud::CloudError;

use crate::{key_of, Error, Finished, Found, Geometry, Prepare, Result, Volume};

/// What `ebs-snapshot:NAME?...` asks for beyond the snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EbsOptions {
    /// Register an AMI from the completed snapshot.
    pub register_image: bool,
    /// `x86_64` (default) or `arm64`.
    pub architecture: Option<String>,
    /// `legacy-bios` (default), `uefi` or `uefi-preferred`.
    pub boot_mode: Option<String>,
    /// Root device name (default `/dev/xvda`).
    pub root_device: Option<String>,
    /// `register-image=` as written in the spec, if it was: `=0` with `--register-image` is a
    /// contradiction, not a choice ([`EbsOptions::with_register_flag`]).
    pub register_image_given: Option<bool>,
}

impl EbsOptions {
    /// Parse the query of `ebs-snapshot:NAME?register-image=1&arch=..&boot-mode=..&root-device=..`.
    pub fn parse_query(q: &str) -> std::result::Result<EbsOptions, String> {
        let mut o = EbsOptions::default();
        let mut seen = std::collections::BTreeSet::new();
        for kv in q.split('&').filter(|s| !s.is_empty()) {
            let (k, v) = kv.split_once('=').unwrap_or((kv, "1"));
            // Given twice, one was silently dropped (`register-image=1&register-image=0`
            // registered nothing).
            if !seen.insert(k) {
                return Err(format!("{kv}: {k} is given twice: give it once"));
            }
            match k {
                "register-image" => {
                    o.register_image = match v.to_ascii_lowercase().as_str() {
                        "1" | "true" | "yes" => true,
                        "0" | "false" | "no" => false,
                        other => {
                            return Err(format!(
                                "register-image={other}: use 1 (register an image from the \
                                 snapshot) or 0"
                            ))
                        }
                    };
                    o.register_image_given = Some(o.register_image);
                }
                "arch" => o.architecture = Some(v.to_string()),
                "boot-mode" => o.boot_mode = Some(v.to_string()),
                "root-device" => o.root_device = Some(v.to_string()),
                other => {
                    return Err(format!(
                        "unknown option {other:?} (register-image, arch, boot-mode, root-device)"
                    ))
                }
            }
        }
        if let Some(a) = &o.architecture {
            if !["x86_64", "arm64"].contains(&a.as_str()) {
                return Err(format!("arch={a}: use x86_64 or arm64"));
            }
        }
        if let Some(d) = &o.root_device {
            let name = d.strip_prefix("/dev/").unwrap_or_default();
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric()) {
                return Err(format!(
                    "root-device={d}: give the device name the image boots from, as AWS names \
                     it: /dev/xvda or /dev/sda1"
                ));
            }
        }
        if let Some(b) = &o.boot_mode {
            if !["legacy-bios", "uefi", "uefi-preferred"].contains(&b.as_str()) {
                return Err(format!(
                    "boot-mode={b}: use legacy-bios, uefi or uefi-preferred"
                ));
            }
        }
        Ok(o)
    }

    /// Adds `ingest --register-image` to what the spec said, and refuses what would be silently
    /// ignored: the flag against an explicit `register-image=0`, and `arch`, `boot-mode` or
    /// `root-device` (they describe the image) when no image is registered.
    pub fn with_register_flag(&mut self, flag: bool) -> std::result::Result<(), String> {
        if flag {
            if self.register_image_given == Some(false) {
                return Err(
                    "--register-image contradicts register-image=0 in the target: \
                     give one of them"
                        .into(),
                );
            }
            self.register_image = true;
        }
        if !self.register_image {
            let unused: Vec<&str> = [
                ("arch", self.architecture.is_some()),
                ("boot-mode", self.boot_mode.is_some()),
                ("root-device", self.root_device.is_some()),
            ]
            .into_iter()
            .filter_map(|(k, given)| given.then_some(k))
            .collect();
            if !unused.is_empty() {
                return Err(format!(
                    "{} describe{} the image registered from the snapshot, and none is: add \
                     register-image=1 to the target (or --register-image), or leave {} out",
                    unused.join(", "),
                    if unused.len() == 1 { "s" } else { "" },
                    if unused.len() == 1 { "it" } else { "them" },
                ));
            }
        }
        Ok(())
    }
}

/// A pending EBS snapshot as a [`Volume`].
pub struct EbsSnapshotVolume {
    /// The ingest's state dir and what it writes (for the done record).
    state_dir: std::path::PathBuf,
    what: String,
    name: String,
    client: EbsClient,
    writer: SnapshotWriter,
    opts: EbsOptions,
    found: Found,
    key: String,
    disk_size: u64,
    threads: usize,
}

fn cloud(e: CloudError) -> Error {
    match e {
        CloudError::Config(m) => Error::Usage(m),
        // Credentials the operator fixes (exit 2), not a target that failed.
        CloudError::Http {
            status: 401 | 403, ..
        } => Error::Usage(format!(
            "{e}: AWS refused the credentials: check AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY \
             (and AWS_SESSION_TOKEN for temporary ones), AWS_REGION, and that the key may call \
             the EBS direct APIs (ebs:StartSnapshot, ebs:PutSnapshotBlock, \
             ebs:CompleteSnapshot)"
        )),
        other => Error::Tool(other.to_string()),
    }
}

impl EbsSnapshotVolume {
    /// Start (or go on with) the snapshot `name`, credentials and region from the AWS environment.
    pub fn open(name: &str, opts: EbsOptions, prep: &Prepare) -> Result<EbsSnapshotVolume> {
        let cfg = AwsConfig::from_env().map_err(cloud)?;
        EbsSnapshotVolume::open_with(name, opts, prep, EbsClient::new(cfg))
    }

    /// [`completed_before`], credentials and region from the AWS environment.
    pub fn completed_before(
        name: &str,
        opts: &EbsOptions,
        prep: &Prepare,
    ) -> Result<Option<String>> {
        let cfg = AwsConfig::from_env().map_err(cloud)?;
        completed_before(name, opts, prep, &EbsClient::new(cfg))
    }

    /// [`EbsSnapshotVolume::open`] with a given client (tests).
    pub fn open_with(
        name: &str,
        opts: EbsOptions,
        prep: &Prepare,
        client: EbsClient,
    ) -> Result<EbsSnapshotVolume> {
        if name.is_empty() || name.len() > 120 || name.chars().any(|c| c.is_control()) {
            return Err(Error::Usage(format!(
                "ebs-snapshot:{name}: the name must be 1 to 120 printable characters"
            )));
        }
        check_image_name(name, &opts)?;
        if prep.disk_size > ebs::MAX_VOLUME_GIB << 30 {
            return Err(Error::Usage(format!(
                "the disk is {} bytes: an EBS snapshot holds at most 64 TiB",
                prep.disk_size
            )));
        }
        let key = state_key(name);
        // A snapshot an earlier run completed for this very generation: a second one would only
        // cost (every re-run made one), so it takes --force, as a finished file target does.
        let done = prep.state_dir.join(format!("{key}.done"));
        if let Ok(text) = std::fs::read_to_string(&done) {
            let same = done_pairs(&text).find(|(_, w)| *w == prep.what);
            if let (Some((volume, what)), false) = (same, prep.force) {
                return Err(Error::Usage(format!(
                    "ebs-snapshot:{name} was completed by an earlier run of this ingest ({what}): \
                     {volume}; it is not made again. --force makes another snapshot"
                )));
            }
            // Another capture (or generation) made into this name before: a second snapshot
            // under one name, said as Cinder says a second volume under one name.
            let before: Vec<String> = done_pairs(&text)
                .map(|(volume, what)| format!("{volume} ({what})"))
                .collect();
            if !before.is_empty() {
                eprintln!(
                    "mgear: note: ebs-snapshot:{name} already names {}; this run makes another \
                     snapshot under the same name (tell them apart by id, or give each \
                     capture a name of its own)",
                    before.join(", ")
                );
            }
        }
        // An unfinished ingest of another capture (or generation) into this name: refused
        // without --force, as into a file (it was dropped, its pending snapshot left unsaid,
        // exit 0, and its own re-run then started over from nothing).
        let description = description_of(name, prep);
        if let (false, Some((other, snap))) =
            (prep.force, SnapshotWriter::recorded(&prep.state_dir, &key))
        {
            if other != description {
                let snap = snap.as_deref().unwrap_or("not started yet");
                return Err(Error::Usage(format!(
                    "ebs-snapshot:{name} records an unfinished ingest of another capture or \
                     generation ({other}; pending snapshot {snap}): finish it with the command \
                     it was started with, or run this command with --force (that snapshot is \
                     then left pending until AWS cancels it, a day after its last write); \
                     nothing was written"
                )));
            }
        }
        let found = if prep.state_dir.join(format!("{key}.ebs")).exists() {
            // Going on in the pending snapshot is safe even without the pipeline's state: the
            // pipeline then rewrites every block, and the writer puts zeros over whatever an
            // earlier run wrote where the disk is zero.
            Found::Unfinished {
                adopt_without_state: true,
            }
        } else {
            Found::New
        };
        let threads = 8;
        let writer = SnapshotWriter::open(
            client.clone(),
            WriterOptions {
                disk_size: prep.disk_size,
                description,
                tags: vec![
                    ("Name".into(), name.to_string()),
                    ("mgear:what".into(), prep.what.chars().take(255).collect()),
                ],
                state_dir: prep.state_dir.clone(),
                state_key: key.clone(),
                threads,
                // A killed ingest may resume within a day; AWS cancels a pending snapshot
                // that long without a write.
                timeout_minutes: 1440,
            },
            found != Found::New,
        )
        .map_err(cloud)?;
        // The pending snapshot recorded is gone (see `SnapshotWriter::open`): a new one, and
        // nothing an earlier run wrote is there to resume.
        let found = match writer.resumed() {
            true => found,
            false => Found::New,
        };
        Ok(EbsSnapshotVolume {
            state_dir: prep.state_dir.clone(),
            what: prep.what.clone(),
            name: name.to_string(),
            client,
            writer,
            opts,
            found,
            key,
            disk_size: prep.disk_size,
            threads,
        })
    }

    /// The pending snapshot's id.
    pub fn snapshot_id(&self) -> &str {
        self.writer.snapshot_id()
    }
}

impl Volume for EbsSnapshotVolume {
    fn size(&self) -> u64 {
        ebs::volume_gib(self.disk_size) << 30
    }

    fn describe(&self) -> String {
        format!("ebs-snapshot:{} ({})", self.name, self.writer.snapshot_id())
    }

    fn state_key(&self) -> String {
        self.key.clone()
    }

    fn found(&self) -> Found {
        self.found
    }

    fn geometry(&self) -> Geometry {
        Geometry {
            block: ebs::BLOCK_SIZE as u32,
            max_in_flight: self.threads,
            // Zero blocks are left out already; a block is one request.
            thin_granule: None,
        }
    }

    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        self.writer.write_at(offset, data).map_err(cloud)
    }

    fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<()> {
        self.writer.write_zeroes(offset, len).map_err(cloud)
    }

    fn flush(&mut self) -> Result<()> {
        self.writer.flush().map_err(cloud)
    }

    fn can_read_back(&self) -> bool {
        false
    }

    fn read_at(&mut self, _offset: u64, _buf: &mut [u8]) -> Result<()> {
        Err(Error::Usage(format!(
            "{} cannot be read back before it is completed",
            self.describe()
        )))
    }

    fn finish(self: Box<Self>) -> Result<Finished> {
        let this = *self;
        let sent = this.writer.blocks_sent();
        let done = this.writer.finish().map_err(cloud)?;
        // A machine set's disks are written first and completed after the last one, each
        // through a writer opened again: that one puts nothing, and "0 put by this run" was
        // said of every disk of a fresh set ingest.
        let put = match (sent, done.changed_blocks) {
            (0, n) if n > 0 => format!(
                "all {n} in the snapshot put before it was completed: a set's disks are written \
                 before any is completed, or an earlier run put them"
            ),
            (sent, n) => format!("{sent} put by this run, {n} in the snapshot"),
        };
        eprintln!(
            "mgear: EBS acknowledged every block with the SHA-256 we computed ({put}) and accepted \
             the aggregated checksum {}: snapshot {} is {}",
            done.checksum, done.snapshot_id, done.status
        );
        let mut volume = done.snapshot_id.clone();
        if this.opts.register_image {
            // The completed snapshot recorded first: an image that fails to register (the
            // EC2 endpoint down, a name refused) is registered from it by the re-run, which
            // made a whole new snapshot and left this one behind, billed.
            record_done(&this.state_dir, &this.key, &this.what, Some(&volume));
            let ami =
                register(&this.client, &this.name, &this.opts, &done.snapshot_id).map_err(|e| {
                    let say = |m: String| {
                        format!(
                            "snapshot {} is complete and holds the disk, but registering an \
                             image from it failed: {m}; run the same ingest again to register \
                             the image from this snapshot (nothing is uploaded again)",
                            done.snapshot_id
                        )
                    };
                    match e {
                        Error::Usage(m) => Error::Usage(say(m)),
                        other => Error::Tool(say(other.to_string())),
                    }
                })?;
            volume = format!("{} {ami}", done.snapshot_id);
        }
        // What a re-run of the same ingest is told (see `completed_before`); losing it loses
        // nothing. One record per generation made into this name: a later generation's
        // snapshot must not make a re-run of an earlier one take another snapshot.
        record_done(&this.state_dir, &this.key, &this.what, Some(&volume));
        Ok(Finished {
            path: None,
            format: "raw",
            volume: Some(volume),
        })
    }
}

/// Registers an AMI from the completed `snapshot` as `opts` say; its id.
/// What the image name adds to the snapshot's NAME: `-snap-` and 17 hex digits.
const IMAGE_NAME_SUFFIX: usize = "-snap-".len() + 17;

/// The image is named NAME-snap-<17 hex>, which AWS takes up to 128 characters: a longer
/// one was refused after the whole upload, and at every re-run.
fn check_image_name(name: &str, opts: &EbsOptions) -> Result<()> {
    if opts.register_image && name.len() + IMAGE_NAME_SUFFIX > 128 {
        return Err(Error::Usage(format!(
            "ebs-snapshot:{name}: with register-image the image is named NAME-snap-ID ({} \
             characters more), and AWS takes image names of at most 128 characters: give a name \
             of at most {} characters",
            IMAGE_NAME_SUFFIX,
            128 - IMAGE_NAME_SUFFIX
        )));
    }
    Ok(())
}

fn register(client: &EbsClient, name: &str, opts: &EbsOptions, snapshot: &str) -> Result<String> {
    client
        .wait_completed(snapshot, std::time::Duration::from_secs(3600))
        .map_err(cloud)?;
    let ami = client
        .register_image(
            snapshot,
            &NewImage {
                name: format!("{name}-{snapshot}"),
                description: format!("mgear ebs-snapshot:{name}"),
                architecture: opts.architecture.clone().unwrap_or_else(|| "x86_64".into()),
                root_device: opts
                    .root_device
                    .clone()
                    .unwrap_or_else(|| "/dev/xvda".into()),
                boot_mode: opts
                    .boot_mode
                    .clone()
                    .unwrap_or_else(|| "legacy-bios".into()),
                ena_support: true,
                volume_type: "gp3".into(),
            },
        )
        .map_err(cloud)?;
    eprintln!("mgear: registered image {ami} from snapshot {snapshot}");
    Ok(ami)
}

/// Replaces the record of `what` in the `.done` file of `key` with `volume` (`snap-X` or
/// `snap-X ami-Y`), or drops it (`None`).
/// The key of `ebs-snapshot:NAME`'s resume state and record of completion in the state
/// directory (`KEY.ingest`, `KEY.done`).
pub fn state_key(name: &str) -> String {
    format!("ebs-snapshot_{}", key_of(name))
}

fn record_done(state_dir: &std::path::Path, key: &str, what: &str, volume: Option<&str>) {
    let path = state_dir.join(format!("{key}.done"));
    let old = std::fs::read_to_string(&path).unwrap_or_default();
    let mut text: String = done_pairs(&old)
        .filter(|(_, w)| *w != what)
        .map(|(v, w)| format!("{v}\n{w}\n"))
        .collect();
    if let Some(volume) = volume {
        text.push_str(&format!("snapshot {volume}\n{what}\n"));
    }
    let _ = image_format::private::replace(&path, text.as_bytes());
}

/// The snapshot an earlier run of this very ingest (`prep.what`: the capture, its generation
/// and manifest root) completed under `name`, when AWS still has it completed: `snap-X` or
/// `snap-X ami-Y`, an image registered now when `opts` asks for one and none was. A re-run
/// of a finished ingest keeps it, as it keeps a finished file (it was refused, exit 2, and
/// the only way to an image was `--force`: a whole new snapshot). A recorded snapshot that
/// is gone (deleted since) is forgotten: `None`, and the ingest makes a new one.
pub fn completed_before(
    name: &str,
    opts: &EbsOptions,
    prep: &Prepare,
    client: &EbsClient,
) -> Result<Option<String>> {
    check_image_name(name, opts)?;
    let key = state_key(name);
    let Ok(text) = std::fs::read_to_string(prep.state_dir.join(format!("{key}.done"))) else {
        return Ok(None);
    };
    let Some((line, _)) = done_pairs(&text).find(|(_, w)| *w == prep.what) else {
        return Ok(None);
    };
    let mut ids = line.strip_prefix("snapshot ").unwrap_or(line).split(' ');
    let (Some(snapshot), ami) = (ids.next(), ids.next()) else {
        return Ok(None);
    };
    match client.describe_snapshot(snapshot) {
        // Its description is what this ingest wrote: the id alone, recorded on this host, named
        // another disk's snapshot where the endpoint, account or region is another now (or a
        // test double started again), and that was "kept", exit 0.
        // Refused as a target holding another disk is (exit 2): nothing is unreachable.
        Ok((s, said)) if s == "completed" && said != description_of(name, prep) => {
            return Err(Error::Usage(format!(
                "snapshot {snapshot}, completed by an earlier run of this ingest on this host, \
                 now describes itself as {said:?}, not as this ingest's snapshot ({:?}): the \
                 endpoint, account or region is not the one that run wrote to, or the snapshot \
                 was replaced. Check AWS_ENDPOINT_URL, AWS_REGION and the credentials; --force \
                 makes a new snapshot here",
                description_of(name, prep)
            )))
        }
        Ok((s, _)) if s == "completed" => {}
        Ok((s, _)) => {
            return Err(Error::Usage(format!(
                "snapshot {snapshot}, completed by an earlier run of this ingest, is {s} now: \
                 --force makes another snapshot"
            )))
        }
        Err(CloudError::Http { message, .. }) if message.contains("NotFound") => {
            eprintln!(
                "mgear: note: snapshot {snapshot}, completed by an earlier run of this ingest, \
                 is gone (deleted since): making a new one"
            );
            record_done(&prep.state_dir, &key, &prep.what, None);
            return Ok(None);
        }
        Err(e) => return Err(cloud(e)),
    }
    let volume = match (ami, opts.register_image) {
        (None, true) => {
            let ami = register(client, name, opts, snapshot)?;
            let volume = format!("{snapshot} {ami}");
            record_done(&prep.state_dir, &key, &prep.what, Some(&volume));
            volume
        }
        (Some(ami), _) => {
            // An image's architecture, boot mode and root device are fixed when it is
            // registered: options given now were silently not applied to the kept one.
            if opts.architecture.is_some() || opts.boot_mode.is_some() || opts.root_device.is_some()
            {
                eprintln!(
                    "mgear: note: image {ami} was registered from {snapshot} by an earlier run, \
                     with the options of that run; arch, boot-mode and root-device given now are \
                     not applied to it (AWS cannot change them): --force makes a new snapshot \
                     and registers its image with them"
                );
            }
            format!("{snapshot} {ami}")
        }
        (None, false) => snapshot.to_string(),
    };
    Ok(Some(volume))
}

/// The `Description` a snapshot of this ingest is made with (AWS keeps at most 255 bytes).
fn description_of(name: &str, prep: &Prepare) -> String {
    let mut description = format!("{} into ebs-snapshot:{name}", prep.what);
    let mut end = description.len().min(255);
    while !description.is_char_boundary(end) {
        end -= 1;
    }
    description.truncate(end);
    description
}

/// The `(snapshot line, ingest)` records of a `.done` file: two lines each.
/// The snapshots earlier runs on this host completed under `ebs-snapshot:NAME`, each with
/// what made it (`snap-X` or `snap-X ami-Y`, and the ingest's description: capture,
/// generation, manifest root): a set re-run with its targets in another order is told by them.
pub fn recorded_snapshots(state_dir: &std::path::Path, name: &str) -> Vec<(String, String)> {
    let path = state_dir.join(format!("{}.done", state_key(name)));
    let text = std::fs::read_to_string(path).unwrap_or_default();
    done_pairs(&text)
        .map(|(v, w)| {
            (
                v.strip_prefix("snapshot ").unwrap_or(v).to_string(),
                w.to_string(),
            )
        })
        .collect()
}

fn done_pairs(text: &str) -> impl Iterator<Item = (&str, &str)> {
    let lines: Vec<&str> = text.lines().collect();
    (0..lines.len() / 2).map(move |i| (lines[2 * i], lines[2 * i + 1]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use mgear_cloud::ebs::double::{Double, DoubleConfig};

    fn prep(dir: &std::path::Path, size: u64) -> Prepare {
        Prepare {
            disk_size: size,
            head_len: 1 << 20,
            state_dir: dir.to_path_buf(),
            force: false,
            what: "mgear ingest of capture t generation 1".into(),
        }
    }

    #[test]
    fn options_parse_and_refuse_unknowns() {
        let o = EbsOptions::parse_query("register-image=1&arch=arm64&boot-mode=uefi").unwrap();
        assert!(o.register_image);
        assert_eq!(o.architecture.as_deref(), Some("arm64"));
        assert!(EbsOptions::parse_query("arch=mips").is_err());
        assert!(EbsOptions::parse_query("colour=blue").is_err());
        // A value that is no yes or no registered nothing and said nothing (exit 0).
        for bad in [
            "register-image=2",
            "register-image=on",
            "root-device=xvda",
            "root-device=/dev/../etc",
        ] {
            let e = EbsOptions::parse_query(bad).unwrap_err();
            assert!(e.starts_with(bad), "{e}");
        }
        let twice = EbsOptions::parse_query("register-image=1&register-image=0").unwrap_err();
        assert!(twice.contains("given twice"), "{twice}");
        assert!(
            !EbsOptions::parse_query("register-image=0")
                .unwrap()
                .register_image
        );
        assert!(
            EbsOptions::parse_query("register-image=TRUE")
                .unwrap()
                .register_image
        );
        assert!(
            EbsOptions::parse_query("register-image")
                .unwrap()
                .register_image
        );
        assert_eq!(
            EbsOptions::parse_query("root-device=/dev/sda1")
                .unwrap()
                .root_device
                .as_deref(),
            Some("/dev/sda1")
        );
        assert_eq!(EbsOptions::parse_query("").unwrap(), EbsOptions::default());
    }

    #[test]
    fn the_register_flag_and_image_options_are_never_silently_ignored() {
        let with = |q: &str, flag: bool| {
            let mut o = EbsOptions::parse_query(q).unwrap();
            o.with_register_flag(flag).map(|()| o.register_image)
        };
        // `register-image=0` with `--register-image` registered an image.
        let e = with("register-image=0", true).unwrap_err();
        assert!(e.contains("contradicts register-image=0"), "{e}");
        // arch/boot-mode/root-device without an image to describe were accepted and unused.
        let e = with("arch=arm64&root-device=/dev/sda1", false).unwrap_err();
        assert!(e.starts_with("arch, root-device describe"), "{e}");
        assert!(e.contains("register-image=1"), "{e}");
        assert!(with("register-image=0&boot-mode=uefi", false).is_err());
        assert_eq!(with("arch=arm64", true), Ok(true));
        assert_eq!(with("register-image=1&boot-mode=uefi", false), Ok(true));
        assert_eq!(with("register-image=1", true), Ok(true));
        assert_eq!(with("register-image=0", false), Ok(false));
        assert_eq!(with("", false), Ok(false));
        assert_eq!(with("", true), Ok(true));
    }

    #[test]
    fn a_volume_writes_completes_and_registers() {
        let d = Double::start(DoubleConfig::default());
        let dir = tempfile::tempdir().unwrap();
        let size = 3 * ebs::BLOCK_SIZE as u64;
        let client = EbsClient::new(d.aws_config());
        let opts = EbsOptions {
            register_image: true,
            ..EbsOptions::default()
        };
        let mut v: Box<dyn Volume> = Box::new(
            EbsSnapshotVolume::open_with(
                "web01",
                opts.clone(),
                &prep(dir.path(), size),
                client.clone(),
            )
            .unwrap(),
        );
        assert_eq!(v.found(), Found::New);
        assert!(!v.can_read_back());
        assert_eq!(v.size(), 1 << 30);
        v.write_at(4096, &[7u8; 8192]).unwrap();
        v.write_zeroes(0, 4096).unwrap();
        v.flush().unwrap();
        // A second open finds the pending snapshot.
        let again =
            EbsSnapshotVolume::open_with("web01", opts, &prep(dir.path(), size), client).unwrap();
        assert_eq!(
            again.found(),
            Found::Unfinished {
                adopt_without_state: true
            }
        );
        drop(again);
        v.write_zeroes(12288, size - 12288).unwrap();
        let f = v.finish().unwrap();
        let vol = f.volume.unwrap();
        let ids = d.snapshot_ids();
        assert_eq!(ids.len(), 1);
        assert!(vol.starts_with(&ids[0]), "{vol}");
        let snap = d.snapshot(&ids[0]).unwrap();
        assert_eq!(snap.blocks.len(), 1);
        assert_eq!(&snap.blocks[&0][4096..12288], &[7u8; 8192][..]);
        let images = d.images();
        assert_eq!(images.len(), 1);
        assert!(vol.ends_with(images.keys().next().unwrap().as_str()));
        assert!(d.rejections().is_empty(), "{:?}", d.rejections());
    }

    /// Each generation made into one name keeps its record: a re-run of the first, after the
    /// second was made, is refused rather than making a third snapshot.
    #[test]
    fn a_rerun_of_an_earlier_generation_is_refused_after_a_later_one() {
        let d = Double::start(DoubleConfig::default());
        let dir = tempfile::tempdir().unwrap();
        let size = ebs::BLOCK_SIZE as u64;
        let client = EbsClient::new(d.aws_config());
        let gen = |g: u32| Prepare {
            what: format!("mgear ingest of capture t generation {g}"),
            ..prep(dir.path(), size)
        };
        for g in [1, 2] {
            let mut v: Box<dyn Volume> = Box::new(
                EbsSnapshotVolume::open_with(
                    "web01",
                    EbsOptions::default(),
                    &gen(g),
                    client.clone(),
                )
                .unwrap(),
            );
            v.write_at(0, &[g as u8; 4096]).unwrap();
            v.write_zeroes(4096, size - 4096).unwrap();
            v.finish().unwrap();
        }
        for g in [1, 2] {
            let e = EbsSnapshotVolume::open_with(
                "web01",
                EbsOptions::default(),
                &gen(g),
                client.clone(),
            )
            .err()
            .expect("refused");
            assert!(
                e.to_string()
                    .contains(&format!("completed by an earlier run of this ingest (mgear ingest of capture t generation {g})")),
                "{e}"
            );
        }
        assert_eq!(d.snapshot_ids().len(), 2);
    }
}
