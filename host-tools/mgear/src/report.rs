//! Ticket-grade reports: `capture --report FILE` and `ingest --report FILE` (an ingest that
//! stops writes one too, its `result.error` saying why: [`ingest_failed`]).
//!
//! The file a datacenter attaches to its migration ticket. `FILE` gets one
//! JSON object (the `--json` schema of `output.rs`: ISO-8601 UTC times,
//! sizes in bytes, hex digests) and `FILE` with the extension `.txt` a short
//! human summary of the same facts. The JSON holds:
//!
//! | key | what |
//! |---|---|
//! | `ok`, `command` | as every `--json` output |
//! | `report` | `"mgear-capture-report/1"` or `"mgear-ingest-report/1"` |
//! | `mgear_version`, `host` | who wrote it, where |
//! | `started`, `finished`, `duration_seconds` | ISO-8601 UTC and seconds |
//! | `source`, `medium`, `target` | what was read and written (as given; for a machine set `source` (capture) and `target` (ingest) list its disks in order) |
//! | `throughput_mb_per_s` | 10^6 bytes per second, as `dd` prints |
//! | `digests` | `capture_id`, `manifest_root` (what COMMIT signs), `commit_digest` (capture), `disk_digest` (ingest: the manifest's keyed whole-disk digest the volume was checked against), `volume_sha256` (ingest, hex: see below) |
//! | `digests.set_root`, `digests.disks` | a machine set: the root its COMMIT signs, and each disk's digests as above with its `disk` number |
//! | `signatures` | each signature checked or made: `role`, `fingerprint`, `via`, `verdict` |
//! | `warnings` | overrides taken (`--allow-untrusted`, ...) |
//! | `result` | the command's own `--json` report's fields (keys sorted; its `ok` and `command` are the report's `ok` and `report`) |
//!
//! `volume_sha256` (with `ingest --volume-sha256`; `null` without) is the
//! SHA-256 of the whole volume as ingest read it back after writing (its `disk_size` bytes in order, holes as zeros): what
//! `sha256sum` of the written disk prints (of a `qcow2:` target, of the raw
//! disk it holds, whose virtual size qcow2 rounds up to whole sectors), so the datacenter can check the volume later with
//! common tools. Ingest reads back every byte of every target that can be
//! read (`file:`, `qcow2:` as its raw disk, `dev:`, `libvirt:`, `nbd:`, `rbd:`,
//! `cinder:`), including on a resumed run. With the flag it is `null` only for
//! `ebs-snapshot:` (the EBS direct APIs give no read-back here; each block's
//! SHA-256 was checked by AWS on upload instead). It is taken before
//! `--adapt` changes the volume. A capture report carries no such field: a
//! resumed, delta or dirty-bitmap capture does not read the whole disk.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use crate::error::Context;
use serde_json::{json, Value};

use crate::output::iso;
use crate::units::human_bytes;

/// What the trust gate accepted during this run (ingest records it, the
/// report reads it): who vouched, and the warnings of overrides taken.
static TRUST: Mutex<Option<(Vec<String>, Vec<String>)>> = Mutex::new(None);

/// What ingest read from the authenticated manifest: capture id, manifest
/// root (blake3 of the signed manifest bytes, what COMMIT signs) and the
/// whole-disk digest, all hex; and its generation.
static MANIFEST: Mutex<Option<([String; 3], u32)>> = Mutex::new(None);

/// The generation the trust gate chose to check (ingest), for the report of
/// a refusal that comes before its manifest is read.
static GENERATION: Mutex<Option<u32>> = Mutex::new(None);

/// Record the generation this run's trust gate checks, for the report.
pub fn note_generation(g: u32) {
    if let Ok(mut slot) = GENERATION.lock() {
        *slot = Some(g);
    }
}

/// Signatures the trust gate found valid under keys this target did not pin (`role`,
/// fingerprint): a refused ingest's report said "signatures none" beside a message naming them.
static UNPINNED: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());

/// Record a signature the trust gate found by a key not pinned, for the report.
pub fn note_unpinned(role: &str, fingerprint: &str) {
    if let Ok(mut u) = UNPINNED.lock() {
        if !u.iter().any(|(r, f)| r == role && f == fingerprint) {
            u.push((role.to_string(), fingerprint.to_string()));
        }
    }
}

/// Record the generation the trust gate checks by its commit (capture id, manifest root),
/// unless its manifest was noted already: a refusal before the manifest is read had its
/// digests all null.
pub fn note_commit(c: &image_format::commit::Commit) {
    if let Ok(mut slot) = MANIFEST.lock() {
        if slot.is_none() {
            *slot = Some((
                [
                    crate::output::hex(&c.capture_id),
                    crate::output::hex(&c.manifest_root),
                    String::new(),
                ],
                c.generation,
            ));
        }
    }
}

/// The disk size of the manifest this run ingests (a stopped run's report lacked it).
static DISK_SIZE: Mutex<Option<u64>> = Mutex::new(None);

/// Record the manifest this run ingests, for the report.
pub fn note_manifest(m: &image_format::layout::Manifest) {
    let root = blake3::hash(&m.signed_bytes());
    if let Ok(mut slot) = DISK_SIZE.lock() {
        *slot = Some(m.disk_size);
    }
    if let Ok(mut slot) = MANIFEST.lock() {
        *slot = Some((
            [
                crate::output::hex(&m.capture_id),
                crate::output::hex(root.as_bytes()),
                crate::output::hex(&m.disk_digest),
            ],
            m.generation,
        ));
    }
}

/// Record the trust verdict of this run for the report.
pub fn note_trust(trusted_by: &[String], warnings: &[String]) {
    if let Ok(mut t) = TRUST.lock() {
        *t = Some((trusted_by.to_vec(), warnings.to_vec()));
    }
}

fn noted_trust() -> (Vec<String>, Vec<String>) {
    TRUST
        .lock()
        .ok()
        .and_then(|t| t.clone())
        .unwrap_or_default()
}

/// `site 5ce7… (COMMIT)` → `{role, fingerprint, via, verdict}`.
fn signature(text: &str, verdict: &str) -> Value {
    let (head, via) = match text.split_once(" (") {
        Some((h, v)) => (h, v.trim_end_matches(')')),
        None => (text, ""),
    };
    let (role, fp) = head.split_once(' ').unwrap_or((head, ""));
    json!({"role": role, "fingerprint": fp, "via": via, "verdict": verdict})
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

/// The report path's human twin: `r.json` → `r.txt` (`r` → `r.txt`; `r.txt` → `r.txt.txt`:
/// the summary replaced the JSON report it was given as).
pub fn text_path(path: &Path) -> PathBuf {
    if path.extension().is_some_and(|e| e == "txt") {
        let mut s = path.as_os_str().to_owned();
        s.push(".txt");
        return PathBuf::from(s);
    }
    path.with_extension("txt")
}

/// Whether the file at `p` is a report an earlier run wrote (JSON or summary), which a new
/// report may replace. Anything else there is never replaced: `--report` named the medium,
/// a key or the volume just ingested, and each was overwritten with the report.
fn earlier_report(p: &Path, kind: &str) -> bool {
    let mut head = [0u8; 1024];
    let n = crate::keyfile::open_read(p)
        .and_then(|mut f| std::io::Read::read(&mut f, &mut head))
        .unwrap_or(0);
    let head = String::from_utf8_lossy(&head[..n]);
    // Of its own kind only: an erase certificate written over an ingest report destroyed
    // the ticket's evidence, and an ingest report over the capture's receipt the commit
    // digest the target pins (`--expect-commit`).
    if kind == "erase-certificate" {
        (head.starts_with("{\"ok\":")
            && head.contains("\"certificate\":\"mgear-erase-certificate/"))
            || head.starts_with("MotionGear erase certificate (")
    } else {
        (head.starts_with("{\"ok\":")
            && head.contains(&format!("\"report\":\"mgear-{kind}-report/")))
            || head.starts_with(&format!("MotionGear {kind} report ("))
    }
}

/// Whether `path` holds the report of a finished capture of `name` (`ok` true): a re-run
/// refused before it began anything (the capture is complete) wrote its refusal over it, and
/// the commit digest the target pins was gone from the ticket.
pub fn holds_finished_capture(path: &Path, name: &str) -> bool {
    finished_report(path, "mgear-capture-report/1", Some(name)).is_some()
}

/// The manifest root (hex) in `path` when it holds the report of a finished ingest into
/// `target`, of whichever capture: a re-run refused (a mistyped flag, another capture's name)
/// wrote its refusal over the report of the ingest that wrote the volume.
pub fn finished_ingest(path: &Path, target: &str) -> Option<String> {
    let v = finished_report(path, "mgear-ingest-report/1", None)?;
    same_target(v["target"].as_str()?, target)
        .then(|| v["digests"]["manifest_root"].as_str().map(str::to_string))
        .flatten()
}

/// Whether two `--target` specs name the same volume: spelled alike, or `file:`/`qcow2:`
/// paths of one file (`file:v.raw`, `file:./v.raw`, an absolute path: a refused run under
/// another spelling wrote over the report the volume's ingest had left).
fn same_target(a: &str, b: &str) -> bool {
    if a == b {
        return true;
    }
    let path = |t: &str| {
        t.strip_prefix("file:")
            .map(|p| ("file", p))
            .or_else(|| t.strip_prefix("qcow2:").map(|p| ("qcow2", p)))
            .and_then(|(k, p)| Some((k, std::fs::canonicalize(p).ok()?)))
    };
    matches!((path(a), path(b)), (Some(x), Some(y)) if x == y)
}

/// The report at `path` (its first line, as written) when it is a successful `kind` report
/// (about `name`, when given).
fn finished_report(path: &Path, kind: &str, name: Option<&str>) -> Option<Value> {
    let mut text = String::new();
    crate::keyfile::open_read(path)
        .and_then(|f| {
            std::io::Read::read_to_string(&mut std::io::Read::take(f, 1 << 20), &mut text)
        })
        .ok()?;
    let v = serde_json::from_str::<Value>(text.lines().next()?).ok()?;
    (v["ok"] == true
        && v["report"] == kind
        && v["result"]["name"]
            .as_str()
            .is_some_and(|n| name.is_none_or(|name| n.eq_ignore_ascii_case(name))))
    .then_some(v)
}

/// What both reports share, around the command's own report `result`.
fn frame(kind: &str, result: &Value, seconds: f64) -> Value {
    let finished = SystemTime::now();
    let started = finished
        .checked_sub(Duration::from_secs_f64(seconds.max(0.0)))
        .unwrap_or(finished);
    json!({
        "report": format!("mgear-{kind}-report/1"),
        "mgear_version": env!("CARGO_PKG_VERSION"),
        "host": hostname(),
        "started": iso(started),
        "finished": iso(finished),
        "duration_seconds": seconds,
        "throughput_mb_per_s": result.get("mb_per_s").cloned().unwrap_or(Value::Null),
        "result": result,
    })
}

fn get<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter()
        .try_fold(v, |v, k| v.get(k))
        .filter(|v| !v.is_null())
}

fn s(v: &Value, path: &[&str]) -> String {
    match get(v, path) {
        Some(Value::String(x)) => x.clone(),
        Some(x) => x.to_string(),
        None => "-".into(),
    }
}

fn size(v: &Value, path: &[&str]) -> String {
    bytes(get(v, path).and_then(Value::as_u64))
}

/// A byte count for a ticket, `-` when unknown.
fn bytes(b: Option<u64>) -> String {
    b.map_or("-".into(), |b| format!("{} ({b} bytes)", human_bytes(b)))
}

/// The capture report for `result` (capture's `--json` report).
pub fn capture(result: &impl serde::Serialize, source: &str, medium: &str) -> crate::Result<Value> {
    let result = serde_json::to_value(result)?;
    let seconds = get(&result, &["seconds"])
        .and_then(Value::as_f64)
        .unwrap_or(0.0);
    let mut v = frame("capture", &result, seconds);
    v["source"] = json!(source);
    v["medium"] = json!(medium);
    v["digests"] = json!({
        "manifest_root": get(&result, &["manifest_root"]),
        "commit_digest": get(&result, &["receipt", "commit_digest"]),
        "capture_id": get(&result, &["receipt", "capture_id"]),
    });
    v["signatures"] = commit_signatures(&result);
    v["warnings"] = json!([]);
    Ok(v)
}

/// The capture report of a machine set: `result` is the set capture's `--json` report,
/// `sources` its disks in order, `seconds` the whole run. `digests` holds the set's
/// (`set_root`, what its COMMIT signs) and each disk's `manifest_root` under `disks`.
pub fn capture_set(
    result: &impl serde::Serialize,
    sources: &[String],
    medium: &str,
    seconds: f64,
) -> crate::Result<Value> {
    let result = serde_json::to_value(result)?;
    let mut v = set_frame("capture", &result, seconds, "captured", "bytes_read");
    v["source"] = json!(sources);
    v["medium"] = json!(medium);
    v["digests"] = json!({
        "set_root": get(&result, &["set_root"]),
        "commit_digest": get(&result, &["receipt", "commit_digest"]),
        "capture_id": get(&result, &["receipt", "capture_id"]),
        "disks": each(&result, "disks")
            .map(|d| json!({"disk": d["disk"], "manifest_root": d["manifest_root"]}))
            .collect::<Vec<_>>(),
    });
    v["signatures"] = commit_signatures(&result);
    v["warnings"] = json!([]);
    Ok(v)
}

/// [`frame`] for a machine set, whose throughput is the sum of `bytes` over the disks
/// listed in `result[list]` over the whole run's `seconds`.
fn set_frame(kind: &str, result: &Value, seconds: f64, list: &str, bytes: &str) -> Value {
    let mut v = frame(kind, result, seconds);
    let total: u64 = each(result, list)
        .filter_map(|d| get(d, &[bytes]).and_then(Value::as_u64))
        .sum();
    v["throughput_mb_per_s"] = json!(mb_per_s(total, seconds));
    v
}

/// The items of the array `result[key]` (none if it is not one).
fn each<'a>(result: &'a Value, key: &str) -> impl Iterator<Item = &'a Value> {
    result[key].as_array().into_iter().flatten()
}

fn mb_per_s(bytes: u64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        bytes as f64 / seconds / 1e6
    } else {
        0.0
    }
}

/// The signatures a capture's COMMIT carries (its receipt's `signers`).
fn commit_signatures(result: &Value) -> Value {
    let signers: Vec<Value> = get(result, &["receipt", "signers"])
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(|t| {
                    let mut sig = signature(t, "signed");
                    sig["via"] = json!("COMMIT");
                    sig
                })
                .collect()
        })
        .unwrap_or_default();
    json!(signers)
}

/// The ingest report for `result` (ingest's `--json` report).
pub fn ingest(result: &impl serde::Serialize, medium: &str) -> crate::Result<Value> {
    let result = serde_json::to_value(result)?;
    let seconds = get(&result, &["seconds"])
        .and_then(Value::as_f64)
        .unwrap_or(0.0);
    let mut v = frame("ingest", &result, seconds);
    v["medium"] = json!(medium);
    v["target"] = get(&result, &["target"]).cloned().unwrap_or(Value::Null);
    let mut digests = manifest_digests(noted_manifest());
    digests["volume_sha256"] = json!(get(&result, &["volume_sha256"]));
    v["digests"] = digests;
    trust_fields(&mut v);
    Ok(v)
}

/// The report of an ingest that stopped with `err` (refused, or failed) after `seconds`: what
/// was asked, what was checked before it stopped (signatures, as far as they were), and the
/// error with its exit code and next step, so a refusal too leaves something for the ticket.
pub fn ingest_failed(
    name: &str,
    medium: &str,
    target: &str,
    seconds: f64,
    err: &crate::Error,
) -> Value {
    let code = crate::exit::code_of(err);
    let noted = MANIFEST.lock().ok().and_then(|mut m| m.take());
    // The generation it was writing when it stopped (the report had its manifest root only),
    // or the one the trust gate refused (the report said `generation -`).
    let checked = GENERATION.lock().ok().and_then(|mut g| g.take());
    let generation = noted.as_ref().map(|(_, g)| *g).or(checked);
    let disk_size = DISK_SIZE.lock().ok().and_then(|mut d| d.take());
    let result = json!({
        "command": "ingest",
        "name": name,
        "generation": generation,
        "target": target,
        "disk_size": disk_size,
        "verified": false,
        "error": {
            "code": code,
            "kind": crate::exit::kind(code),
            "message": format!("{err:#}"),
            "hint": crate::exit::hint(err, "ingest"),
        },
    });
    let mut v = frame("ingest", &result, seconds);
    v["medium"] = json!(medium);
    v["target"] = json!(target);
    v["digests"] = manifest_digests(noted.map(|(d, _)| d));
    // The keys a finished run's report has (it lacked this one).
    v["digests"]["volume_sha256"] = Value::Null;
    trust_fields(&mut v);
    v
}

/// The report of a capture that stopped or failed (`--report`, as ingest writes one): what
/// was asked, and the error with its exit code and next step (a ticket got nothing).
pub fn capture_failed(
    name: &str,
    source: &str,
    medium: &str,
    seconds: f64,
    err: &crate::Error,
) -> Value {
    let code = crate::exit::code_of(err);
    let result = json!({
        "command": "capture",
        "name": name,
        "generation": Value::Null,
        "error": {
            "code": code,
            "kind": crate::exit::kind(code),
            "message": format!("{err:#}"),
            "hint": crate::exit::hint(err, "capture"),
        },
    });
    let mut v = frame("capture", &result, seconds);
    v["source"] = json!(source);
    v["medium"] = json!(medium);
    // The keys a successful report has, so a ticket's reader finds them in both: nothing
    // was committed, so nothing is digested or signed.
    v["digests"] = json!({"manifest_root": null, "commit_digest": null, "capture_id": null});
    v["signatures"] = json!([]);
    v["warnings"] = json!([]);
    v
}

/// The ingest report of a machine set: `result` is the set ingest's `--json` report,
/// `manifests` what [`noted_manifest`] gave after each of its disks (in `result`'s order),
/// `seconds` the whole run. `target` lists the volumes in disk order and `digests.disks`
/// each disk's digests, as [`ingest`] gives them for one.
pub fn ingest_set(
    result: &impl serde::Serialize,
    manifests: &[Option<[String; 3]>],
    medium: &str,
    seconds: f64,
) -> crate::Result<Value> {
    let result = serde_json::to_value(result)?;
    let mut v = set_frame("ingest", &result, seconds, "disks", "bytes_written");
    v["medium"] = json!(medium);
    v["target"] = json!(each(&result, "disks")
        .map(|d| d["target"].clone())
        .collect::<Vec<_>>());
    let disks: Vec<Value> = each(&result, "disks")
        .enumerate()
        .map(|(i, d)| {
            let mut digests = manifest_digests(manifests.get(i).cloned().flatten());
            digests["disk"] = d["disk"].clone();
            digests["volume_sha256"] = json!(get(d, &["volume_sha256"]));
            digests
        })
        .collect();
    v["digests"] = json!({ "set_root": get(&result, &["set_root"]), "disks": disks });
    trust_fields(&mut v);
    Ok(v)
}

/// The manifest digests [`note_manifest`] recorded last, taken (each disk of a set notes its own).
pub fn noted_manifest() -> Option<[String; 3]> {
    MANIFEST
        .lock()
        .ok()
        .and_then(|mut m| m.take())
        .map(|(d, _)| d)
}

fn manifest_digests(noted: Option<[String; 3]>) -> Value {
    // An empty one is not known (a generation checked by its commit only).
    let [capture_id, manifest_root, disk_digest] = noted
        .map(|m| {
            m.map(|d| {
                if d.is_empty() {
                    Value::Null
                } else {
                    Value::String(d)
                }
            })
        })
        .unwrap_or([Value::Null, Value::Null, Value::Null]);
    json!({
        "capture_id": capture_id,
        "manifest_root": manifest_root,
        "disk_digest": disk_digest,
    })
}

/// Who vouched for what was ingested (`signatures`) and the overrides taken (`warnings`).
fn trust_fields(v: &mut Value) {
    let (trusted_by, warnings) = noted_trust();
    let unpinned = UNPINNED.lock().map(|u| u.clone()).unwrap_or_default();
    v["signatures"] = json!(trusted_by
        .iter()
        .map(|t| signature(t, "pinned, signature valid"))
        .chain(unpinned.iter().map(|(role, fp)| {
            json!({"role": role, "fingerprint": fp, "via": "COMMIT",
                   "verdict": "signature valid, key NOT pinned"})
        }))
        .collect::<Vec<_>>());
    v["warnings"] = json!(warnings);
}

/// The short human summary of a report made by [`capture`] or [`ingest`].
pub fn summary(v: &Value) -> String {
    let r = &v["result"];
    let kind = if s(v, &["report"]).contains("capture") {
        "capture"
    } else {
        "ingest"
    };
    let mut out = vec![format!("MotionGear {kind} report ({})", s(v, &["report"]))];
    let mut line = |k: &str, val: String| out.push(format!("  {k:<15} {val}"));
    let disks: Vec<&Value> = each(r, "disks").collect();
    let set = !disks.is_empty();
    line(
        "capture",
        format!(
            "{}{}{}",
            s(r, &["name"]),
            match get(r, &["generation"]) {
                Some(Value::Null) | None => ", no generation chosen".to_string(),
                Some(_) => format!(" generation {}", s(r, &["generation"])),
            },
            if set {
                let whole = r["machine_disks"].as_u64().unwrap_or(disks.len() as u64);
                match whole == disks.len() as u64 {
                    true => format!(" (a machine of {whole} disks)"),
                    false => format!(
                        " (a machine of {whole} disks, {} of them ingested here)",
                        disks.len()
                    ),
                }
            } else {
                String::new()
            }
        ),
    );
    if kind == "capture" && !set {
        line("source", s(v, &["source"]));
    }
    line("medium", s(v, &["medium"]));
    if kind == "ingest" && !set {
        line("target", s(v, &["target"]));
    }
    line(
        "host",
        format!("{} (mgear {})", s(v, &["host"]), s(v, &["mgear_version"])),
    );
    line("started", s(v, &["started"]));
    line(
        "finished",
        format!(
            "{} ({:.1} s)",
            s(v, &["finished"]),
            v["duration_seconds"].as_f64().unwrap_or(0.0)
        ),
    );
    if let Some(e) = r.get("error") {
        // A step after the verified write failed (`--adapt`): the write stands.
        let what = match r["verified"] == true {
            true => "FAILED after the volume was written and verified",
            false => "STOPPED, nothing verified",
        };
        line(
            "result",
            format!(
                "{what} (exit {}, {}): {}",
                e["code"],
                s(e, &["kind"]),
                s(e, &["message"])
            ),
        );
        line("what to do", s(e, &["hint"]));
    }
    // An EBS snapshot is not read back: what vouches for it is the SHA-256 EBS computed of
    // every block on receipt (the ticket said "bit for bit" of snapshots).
    let verified = |d: &Value| match (d["verified"] == true, d["target"].as_str()) {
        (true, Some(t)) if t.starts_with("ebs-snapshot:") => {
            "yes, every block's SHA-256 as EBS computed it on receipt (not read back)"
        }
        (true, _) => "yes, bit for bit against what was authenticated",
        (false, _) => "NO",
    };
    if !set {
        line("disk size", size(r, &["disk_size"]));
        if kind == "capture" {
            // As capture's summary says it: `bytes_read` counts the holes the source reported,
            // which were not read (the ticket said "read 200 MiB" of a capture that read 53).
            let holes = r["holes_skipped"].as_u64().unwrap_or(0);
            let read = r["bytes_read"].as_u64().map(|b| b.saturating_sub(holes));
            // A resumed run: what it read is this run's, what is stored the generation's
            // (the ticket read "read 18 MiB, stored 43 MiB" with no word of the resume).
            if let Some(k) = r["resumed_from_chunk"].as_u64().filter(|k| *k > 0) {
                line(
                    "resumed",
                    format!(
                        "at chunk {k}: `read` counts this run's reads, `stored` the whole \
                         generation"
                    ),
                );
            } else if r["resumed"].as_bool() == Some(true) {
                line(
                    "resumed",
                    "at chunk 0: the run cut off had reached no checkpoint".to_string(),
                );
            }
            line("read", bytes(read));
            if holes > 0 {
                line("holes skipped", size(r, &["holes_skipped"]));
            }
            line("stored", size(r, &["stored_bytes"]));
            // The counts the JSON has (the summary left them out).
            if let (Some(st), Some(z), Some(d)) = (
                r["stored_chunks"].as_u64(),
                r["zero_chunks"].as_u64(),
                r["dedup_chunks"].as_u64(),
            ) {
                line("chunks", format!("{st} stored, {z} zero, {d} deduplicated"));
            }
            // What the wrong-key advice at the target sends the operator to (only the JSON
            // had it).
            for k in each(r, "recipients") {
                line("encrypted to", k.as_str().unwrap_or_default().to_string());
            }
        } else {
            // A re-run that found the volume finished: nothing written or read back now.
            if r["kept"] == true {
                line(
                    "kept",
                    "yes: an earlier run finished this volume, and this one wrote nothing".into(),
                );
            }
            line("written", size(r, &["bytes_written"]));
            line("verified", verified(r).into());
            match r.get("booted").and_then(Value::as_bool) {
                Some(true) => line("booted", "yes: the marker was seen".into()),
                Some(false) => line(
                    "booted",
                    format!("NO: see the boot report {}", s(r, &["boot_report"])),
                ),
                None => {}
            }
        }
    }
    for (i, d) in disks.iter().enumerate() {
        let label = format!("disk {}", s(d, &["disk"]));
        if kind == "capture" {
            let done = match r["captured"].get(i).filter(|c| !c.is_null()) {
                // What was read, as for one disk: the holes the source reported were not.
                Some(c) => {
                    let holes = c["holes_skipped"].as_u64().unwrap_or(0);
                    format!(
                        "read {}{}, stored {}",
                        bytes(c["bytes_read"].as_u64().map(|b| b.saturating_sub(holes))),
                        match holes {
                            0 => String::new(),
                            _ => format!(", holes skipped {}", bytes(Some(holes))),
                        },
                        size(c, &["stored_bytes"])
                    )
                }
                None => "captured by an earlier run of this generation".into(),
            };
            line(
                &label,
                format!("{} ({}): {done}", s(d, &["source"]), size(d, &["size"])),
            );
        } else {
            line(
                &label,
                format!(
                    "{} into {}: written {}, verified {}",
                    size(d, &["disk_size"]),
                    s(d, &["target"]),
                    size(d, &["bytes_written"]),
                    verified(d)
                ),
            );
        }
    }
    line(
        "throughput",
        format!(
            "{:.1} MB/s",
            v["throughput_mb_per_s"].as_f64().unwrap_or(0.0)
        ),
    );
    let digest_lines = |digests: &Value, prefix: &str, line: &mut dyn FnMut(&str, String)| {
        for (k, label) in [
            ("set_root", "set root"),
            ("capture_id", "capture id"),
            ("manifest_root", "manifest root"),
            ("commit_digest", "commit digest"),
            ("disk_digest", "disk digest"),
            ("volume_sha256", "volume sha256"),
        ] {
            if let Some(d) = get(digests, &[k]) {
                line(&format!("{prefix}{label}"), s(d, &[]));
            }
        }
    };
    digest_lines(&v["digests"], "", &mut line);
    for d in each(&v["digests"], "disks") {
        digest_lines(d, &format!("disk {} ", s(d, &["disk"])), &mut line);
    }
    let sigs = v["signatures"].as_array().cloned().unwrap_or_default();
    if sigs.is_empty() {
        line("signatures", "none".into());
    }
    for sig in sigs {
        line(
            "signature",
            format!(
                "{} {} via {}: {}",
                s(&sig, &["role"]),
                s(&sig, &["fingerprint"]),
                s(&sig, &["via"]),
                s(&sig, &["verdict"])
            ),
        );
    }
    for w in v["warnings"].as_array().cloned().unwrap_or_default() {
        line("WARNING", s(&w, &[]));
    }
    out.join("\n") + "\n"
}

/// Write `v` (in the `--json` envelope) to `path` and its summary to
/// [`text_path`]`(path)`.
pub fn write(path: &Path, v: &Value) -> crate::Result<()> {
    write_json_and_text(path, v, &summary(v))
}

/// `r.json` → `r.json.partial`: where a report is written before it is
/// renamed into place, so a reader never sees half a report.
fn partial_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".partial");
    PathBuf::from(s)
}

/// Check, before the command does any work, that the report `path` and its
/// [`text_path`] twin can be written: found only at the end, a capture was
/// already recorded on the medium (a re-run is refused as already captured)
/// and an ingest already written. Creates each file's `.partial` (what
/// [`write_json_and_text`] writes and renames) and removes it again.
/// `kind`: `capture`, `ingest` (a report) or `erase-certificate`: only an earlier file of that
/// kind is replaced.
pub fn check_writable(path: &Path, flag: &str, kind: &str) -> crate::Result<()> {
    for p in [path.to_path_buf(), text_path(path)] {
        let hint = format!(
            "give {flag} a file in an existing directory you can write to (nothing was done yet)"
        );
        if p.is_dir() {
            return Err(crate::exit::coded_hint(
                crate::exit::USAGE,
                format!("{flag} {}: {} is a directory", path.display(), p.display()),
                hint,
            ));
        }
        if std::fs::symlink_metadata(&p).is_ok() && !earlier_report(&p, kind) {
            let what = match kind {
                "erase-certificate" => "an erase certificate".to_string(),
                k => format!("a MotionGear {k} report"),
            };
            return Err(crate::exit::coded_hint(
                crate::exit::USAGE,
                format!(
                    "{flag} {}: {} exists and is not {what} (another kind of report, the \
                     capture's receipt, a medium, a key, a volume?): it is never overwritten; \
                     give {flag} a new file name (an earlier file of this kind is replaced)",
                    path.display(),
                    p.display()
                ),
                format!("give {flag} a new file name (nothing was done yet)"),
            ));
        }
        let partial = partial_path(&p);
        match std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&partial)
        {
            Ok(f) => {
                drop(f);
                let _ = std::fs::remove_file(&partial);
            }
            // A name too long (with the suffix a report is written under first): not a
            // directory matter, as the hint said.
            Err(e) if e.raw_os_error() == Some(36) => {
                return Err(crate::exit::usage(format!(
                    "{flag} {}: the file name is too long for the file system once `.partial` \
                     (the name it is written under first) is added: give a shorter name",
                    path.display()
                )))
            }
            Err(e) => {
                return Err(crate::exit::coded_hint(
                    crate::exit::IO,
                    format!(
                        "{flag} {}: cannot create {}: {e}",
                        path.display(),
                        partial.display()
                    ),
                    hint,
                ))
            }
        }
    }
    Ok(())
}

/// Write `contents` to `path` atomically: into its `.partial`, then renamed.
fn write_atomic(path: &Path, contents: &[u8], what: &str) -> crate::Result<()> {
    let partial = partial_path(path);
    std::fs::write(&partial, contents)
        .and_then(|()| std::fs::rename(&partial, path))
        .map_err(|e| {
            let _ = std::fs::remove_file(&partial);
            crate::Error::from(e)
        })
        .with_context(|| format!("writing {what} {}", path.display()))
}

/// Write `v` (in the `--json` envelope, `ok` from `v["verified"]` if it has
/// one) to `path` and `text` to [`text_path`]`(path)`, each atomically.
pub fn write_json_and_text(path: &Path, v: &Value, text: &str) -> crate::Result<()> {
    // An ingest with --boot whose boot did not prove itself is no success either (exit 1;
    // the report said ok).
    // An erase certificate whose key slots were left (a lockout once sealed: exit 1).
    let ok = v["verified"] != false
        && v["medium"]["key_slots_left"] != true
        && v["result"]["verified"] != false
        && v["result"]["booted"] != false
        && v["result"]["error"].is_null();
    let line = crate::output::envelope_line(ok, v)?;
    write_atomic(path, (line + "\n").as_bytes(), "report")?;
    write_atomic(&text_path(path), text.as_bytes(), "report summary")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capture_report_has_digests_signatures_and_times() {
        let result = json!({
            "command": "capture", "name": "web01", "generation": 2, "disk_size": 1048576,
            "bytes_read": 1048576, "stored_bytes": 4096, "seconds": 2.0, "mb_per_s": 0.5,
            "manifest_root": "ab".repeat(32),
            "receipt": {"capture_id": "cd".repeat(16), "commit_digest": "ef".repeat(32),
                        "signers": ["site 0123 (COMMIT)"]},
        });
        let v = capture(&result, "disk.raw", "fat:m.img").unwrap();
        assert_eq!(v["report"], "mgear-capture-report/1");
        assert_eq!(v["digests"]["manifest_root"], "ab".repeat(32));
        assert_eq!(v["digests"]["commit_digest"], "ef".repeat(32));
        assert_eq!(v["signatures"][0]["role"], "site");
        assert_eq!(v["signatures"][0]["fingerprint"], "0123");
        assert_eq!(v["signatures"][0]["via"], "COMMIT");
        let started = v["started"].as_str().unwrap();
        assert!(started.ends_with('Z') && started.contains('T'), "{started}");
        assert_eq!(v["throughput_mb_per_s"], 0.5);
        let text = summary(&v);
        assert!(text.contains("web01 generation 2"), "{text}");
        assert!(text.contains("1.00 MiB (1048576 bytes)"), "{text}");
        assert!(
            text.contains(&format!("manifest root   {}", "ab".repeat(32))),
            "{text}"
        );
        assert!(text.contains("site 0123 via COMMIT: signed"), "{text}");
        // A sparse disk: the holes were not read, as capture's own summary says.
        let mut sparse = result.clone();
        sparse["bytes_read"] = json!(209_715_200u64);
        sparse["holes_skipped"] = json!(154_140_672u64);
        let text = summary(&capture(&sparse, "disk.raw", "fat:m.img").unwrap());
        assert!(
            text.contains("read            53.00 MiB (55574528 bytes)")
                && text.contains("holes skipped   147.00 MiB (154140672 bytes)"),
            "{text}"
        );
    }

    #[test]
    fn ingest_report_names_who_vouched_and_the_overrides() {
        note_trust(
            &["appliance 99ff (seal + arrival)".to_string()],
            &["accepted without a seal".to_string()],
        );
        let result = json!({"name": "web01", "generation": 1, "target": "file:o.raw",
                            "bytes_written": 10, "verified": true, "seconds": 1.0, "mb_per_s": 1.0});
        let v = ingest(&result, "fat:m.img").unwrap();
        assert_eq!(v["signatures"][0]["role"], "appliance");
        assert_eq!(v["signatures"][0]["via"], "seal + arrival");
        assert_eq!(v["warnings"][0], "accepted without a seal");
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ingest.json");
        write(&p, &v).unwrap();
        let back: Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        assert_eq!(back["ok"], true);
        assert_eq!(back["target"], "file:o.raw");
        let text = std::fs::read_to_string(dir.path().join("ingest.txt")).unwrap();
        assert!(text.contains("WARNING"), "{text}");
        assert!(text.contains("verified        yes, bit for bit"), "{text}");
        // A snapshot is not read back: its ticket does not say "bit for bit".
        let snap = json!({"name": "web01", "generation": 1, "target": "ebs-snapshot:web01",
                          "bytes_written": 10, "verified": true, "seconds": 1.0, "mb_per_s": 1.0});
        let text = summary(&ingest(&snap, "fat:m.img").unwrap());
        assert!(
            text.contains("verified        yes, every block's SHA-256 as EBS computed it")
                && !text.contains("bit for bit"),
            "{text}"
        );
    }

    #[test]
    fn set_reports_list_every_disk_with_its_digests() {
        let result = json!({
            "command": "capture", "name": "db01", "generation": 1, "set_root": "11".repeat(32),
            "disks": [
                {"disk": 0, "source": "a.raw", "size": 1048576, "manifest_root": "aa".repeat(32)},
                {"disk": 1, "source": "b.raw", "size": 2097152, "manifest_root": "bb".repeat(32)},
            ],
            "captured": [{"bytes_read": 1048576, "stored_bytes": 4096}, null],
            "receipt": {"capture_id": "cd".repeat(16), "commit_digest": "ef".repeat(32),
                        "signers": ["site 0123 (COMMIT)"]},
        });
        let sources = ["a.raw".to_string(), "b.raw".to_string()];
        let v = capture_set(&result, &sources, "dir:m", 2.0).unwrap();
        assert_eq!(v["source"], json!(["a.raw", "b.raw"]));
        assert_eq!(v["digests"]["set_root"], "11".repeat(32));
        assert_eq!(v["digests"]["disks"][1]["manifest_root"], "bb".repeat(32));
        assert_eq!(v["signatures"][0]["via"], "COMMIT");
        assert_eq!(v["throughput_mb_per_s"], 1048576.0 / 2.0 / 1e6);
        let text = summary(&v);
        assert!(
            text.contains("db01 generation 1 (a machine of 2 disks)"),
            "{text}"
        );
        assert!(
            text.contains("disk 0          a.raw (1.00 MiB (1048576 bytes)): read"),
            "{text}"
        );
        assert!(
            text.contains(
                "disk 1          b.raw (2.00 MiB (2097152 bytes)): captured by an earlier run"
            ),
            "{text}"
        );
        assert!(
            text.contains(&format!("disk 1 manifest root {}", "bb".repeat(32))),
            "{text}"
        );

        let result = json!({
            "command": "ingest", "name": "db01", "generation": 1,
            "disks": [
                {"disk": 0, "target": "file:a", "disk_size": 10, "bytes_written": 10, "verified": true},
                {"disk": 1, "target": "file:b", "disk_size": 20, "bytes_written": 20, "verified": true,
                 "volume_sha256": "ff".repeat(32)},
            ],
        });
        let manifests = [Some(["c0".into(), "r0".into(), "d0".into()]), None];
        let mut result = result;
        result["set_root"] = json!("22".repeat(32));
        let v = ingest_set(&result, &manifests, "dir:m", 1.0).unwrap();
        assert_eq!(v["target"], json!(["file:a", "file:b"]));
        assert_eq!(v["digests"]["set_root"], "22".repeat(32));
        assert!(summary(&v).contains(&"22".repeat(32)), "{}", summary(&v));
        assert_eq!(v["digests"]["disks"][0]["manifest_root"], "r0");
        assert_eq!(v["digests"]["disks"][1]["manifest_root"], Value::Null);
        assert_eq!(v["digests"]["disks"][1]["volume_sha256"], "ff".repeat(32));
        let text = summary(&v);
        assert!(text.contains("disk 1          20 B (20 bytes) into file:b: written 20 B (20 bytes), verified yes"), "{text}");
    }

    #[test]
    fn an_unwritable_report_path_is_refused_before_any_work() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope/r.json");
        let e = check_writable(&missing, "--report", "ingest").unwrap_err();
        assert_eq!(crate::exit::code_of(&e), crate::exit::IO, "{e}");
        assert!(
            e.to_string()
                .starts_with(&format!("--report {}: cannot create", missing.display())),
            "{e}"
        );
        assert!(crate::exit::hint(&e, "capture").contains("nothing was done yet"));
        let e = check_writable(dir.path(), "--report", "ingest").unwrap_err();
        assert!(e.to_string().contains("is a directory"), "{e}");
        let ok = dir.path().join("r.json");
        check_writable(&ok, "--report", "ingest").unwrap();
        // The probe leaves nothing behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        write_json_and_text(&ok, &json!({"a": 1}), "text").unwrap();
        let mut names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["r.json", "r.txt"]);
    }

    /// `--report` naming the medium, the target key or the volume just ingested overwrote it
    /// with the report (exit 0); `--report r.txt` replaced its JSON with the summary.
    #[test]
    fn a_report_never_replaces_anything_but_an_earlier_report() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("target.key");
        std::fs::write(&key, "# created: ...\nAGE-SECRET-KEY-1QQQ\n").unwrap();
        let e = check_writable(&key, "--report", "ingest").unwrap_err();
        assert_eq!(crate::exit::code_of(&e), crate::exit::USAGE, "{e}");
        assert!(
            e.to_string().contains("is not a MotionGear ingest report"),
            "{e}"
        );
        assert!(std::fs::read_to_string(&key)
            .unwrap()
            .contains("AGE-SECRET-KEY"));
        // The twin counts too: r.json is new, but r.txt is someone's notes.
        std::fs::write(dir.path().join("r.txt"), "notes").unwrap();
        let r = dir.path().join("r.json");
        assert!(check_writable(&r, "--report", "ingest").is_err());
        std::fs::remove_file(dir.path().join("r.txt")).unwrap();
        // An earlier report is replaced.
        let v = frame("ingest", &json!({"name": "web01"}), 1.0);
        write_json_and_text(&r, &v, &summary(&v)).unwrap();
        check_writable(&r, "--report", "ingest").unwrap();
        // A report named .txt keeps its JSON: the summary goes beside it.
        let t = dir.path().join("ticket.txt");
        assert_eq!(text_path(&t), dir.path().join("ticket.txt.txt"));
        write_json_and_text(&t, &v, &summary(&v)).unwrap();
        assert!(std::fs::read_to_string(&t).unwrap().starts_with("{\"ok\":"));
        check_writable(&t, "--report", "ingest").unwrap();
        // An earlier erase certificate is replaced too (it was "not a MotionGear report").
        let c = dir.path().join("erase.json");
        let cert = json!({"certificate": "mgear-erase-certificate/1", "verified": true});
        write_json_and_text(
            &c,
            &cert,
            "MotionGear erase certificate (mgear-erase-certificate/1)\n",
        )
        .unwrap();
        check_writable(&c, "--certificate", "erase-certificate").unwrap();
        // Each replaces only its own kind: a certificate never goes over a report, nor a
        // report over a certificate.
        assert!(check_writable(&r, "--certificate", "erase-certificate").is_err());
        assert!(check_writable(&c, "--report", "ingest").is_err());
        // Nor an ingest report over a capture's (the receipt the target pins its commit by).
        assert!(check_writable(&r, "--report", "capture").is_err());
    }
}
