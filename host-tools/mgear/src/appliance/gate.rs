//! The ingest gate: where seal and arrival attestations come from, and the
//! call into the pinned-trust check ([`crate::trust`]) that decides.
//!
//! # Where attestations live
//!
//! The appliance keeps its latest seal and arrival attestations in its
//! secret store and returns them over the console (`GetAttestations`); with
//! `--appliance PORT`, ingest asks it. A datacenter that reads the medium
//! without the appliance uses copies saved as files: `mgear appliance
//! attestations --out DIR` writes `DIR/SEAL` and `DIR/ARRIVAL` (postcard
//! encoding of `mgear_appliance_api::attest::Attestation`, the same bytes the
//! console carries), given to ingest as `--attestations DIR`. Otherwise the
//! gate looks for them on the medium itself at `MGEAR/ATTEST/SEAL` and
//! `MGEAR/ATTEST/ARRIVAL` (same encoding).
//!
//! Trust never comes from where the files were found, nor from the identity
//! the medium names: an attestation counts only under an appliance key the
//! target pinned (`--trust-appliance`), see [`crate::trust`]. Every file is
//! size-capped before it is read.

use std::path::Path;

use std::io::Read;

use crate::{bail, err};
use image_format::Store;
use mgear_appliance_api::attest::Attestation;
use mgear_appliance_api::protocol::{DeviceState, Request, Response};

use super::client::Client;
use crate::exit::{coded, FOUND};
use crate::trust::{self, read_capped, Attestations, Policy, Verdict, MAX_ATTESTATION_LEN};

/// Directory on the medium where attestation copies may be stored
/// (`MGEAR/` and the reserved name `image_format::layout::ATTEST_NAME`).
pub const ATTEST_DIR: &str = "MGEAR/ATTEST";
/// File name of the seal attestation (on the medium or in an export directory).
pub const SEAL_FILE: &str = "SEAL";
/// File name of the arrival attestation.
pub const ARRIVAL_FILE: &str = "ARRIVAL";

/// Decode an attestation file (postcard, as on the console).
pub fn decode_attestation(bytes: &[u8], what: &str) -> crate::Result<Attestation> {
    match postcard::from_bytes::<Attestation>(bytes) {
        Ok(a) => Ok(a),
        // postcard's own words ("Serde Deserialization Error") tell the operator nothing.
        Err(_) => Err(crate::exit::coded_hint(
            FOUND,
            format!(
                "{what} is not an attestation (its {} bytes do not decode as one): damaged, or \
                 not a file `mgear appliance attestations` wrote",
                bytes.len()
            ),
            ATTESTATIONS_HINT,
        )),
    }
}

/// What to do about an attestation export that is missing or does not read.
const ATTESTATIONS_HINT: &str = "give --attestations the directory `mgear appliance \
     attestations --out DIR` wrote at the appliance (it holds SEAL and ARRIVAL), exported again \
     if this copy is damaged; or ingest through the appliance itself (--appliance PORT). \
     Nothing was written";

/// Encode an attestation for a file.
pub fn encode_attestation(att: &Attestation) -> Vec<u8> {
    postcard::to_allocvec(att).unwrap_or_default()
}

/// Whether the appliance says it is erased (it then signs no arrival); a failed
/// question counts as not erased (the usual advice, run arrival, then stands).
fn appliance_erased(c: &mut Client) -> bool {
    matches!(c.call(&Request::Info), Ok(Response::Info(i)) if i.state == DeviceState::Erased)
}

/// The first problem of the appliance's last arrival check, if that check failed (its
/// custody log's last arrival record); `None` when it passed, never ran, or the log cannot
/// be read.
fn failed_arrival(c: &mut Client) -> Option<String> {
    let log = crate::appliance::fetch_log(c).ok()?;
    log.iter()
        .rev()
        .find_map(|r| match r.decode().ok()?.entry.event {
            mgear_appliance_api::custody::Event::Arrival {
                attestation: None,
                problems,
                first,
            } => Some(format!(
                "{problems} problem(s){}",
                first
                    .map(|f| format!(", the first: {f}"))
                    .unwrap_or_default()
            )),
            mgear_appliance_api::custody::Event::Arrival { .. } => Some(String::new()),
            _ => None,
        })
        .filter(|f| !f.is_empty())
}

/// Attestation `file` of an export directory (`mgear appliance attestations --out DIR`).
fn read_export(dir: &Path, file: &str) -> crate::Result<Attestation> {
    let path = dir.join(file);
    let f = std::fs::File::open(&path).map_err(|e| {
        crate::exit::coded_hint(
            crate::exit::USAGE,
            format!("--attestations: cannot open {}: {e}", path.display()),
            ATTESTATIONS_HINT,
        )
    })?;
    let len = f
        .metadata()
        .map_err(|e| err!("{}: {e}", path.display()))?
        .len();
    if len > MAX_ATTESTATION_LEN {
        bail!(
            "{} is {len} bytes, more than any attestation ({MAX_ATTESTATION_LEN}): refusing to \
             read it",
            path.display()
        );
    }
    let mut bytes = Vec::with_capacity(len as usize);
    f.take(MAX_ATTESTATION_LEN)
        .read_to_end(&mut bytes)
        .map_err(|e| err!("{}: {e}", path.display()))?;
    decode_attestation(&bytes, &path.display().to_string())
}

/// The seal of an appliance that signed no arrival (erased or locked out before its arrival
/// check), from the appliance (`port`) or an export directory (`dir`): given as this
/// shipment's, so what it lists is checked ([`trust::check_lone_seal`]) where there is no
/// seal + arrival pair to check.
pub fn lone_seal(port: Option<&Path>, dir: Option<&Path>) -> crate::Result<Option<Attestation>> {
    if let Some(port) = port {
        return Ok(match Client::open(port)?.call(&Request::GetAttestations)? {
            Response::Attestations {
                seal: Some(seal),
                arrival: None,
            } => Some(seal),
            _ => None,
        });
    }
    match dir {
        Some(d) if !d.join(ARRIVAL_FILE).exists() && d.join(SEAL_FILE).exists() => {
            Ok(Some(read_export(d, SEAL_FILE)?))
        }
        _ => Ok(None),
    }
}

/// Seal and arrival attestations: from the appliance (`port`), else from
/// an export directory (`dir`), else from the medium. `Ok(Err(why))` when
/// there are none, saying what to do (which step was missed, where to get
/// them); which key signed them is checked by [`trust::check_generation`].
pub fn find_attestations(
    port: Option<&Path>,
    dir: Option<&Path>,
    medium: &mut dyn Store,
) -> crate::Result<Result<Attestations, String>> {
    if let (Some(port), Some(dir)) = (port, dir) {
        // Read from the appliance, the directory's were ignored without a word.
        return Err(crate::exit::coded_hint(
            crate::exit::USAGE,
            format!(
                "--attestations {} and --appliance {}: the appliance's seal and arrival are read \
                 from the appliance itself",
                dir.display(),
                port.display()
            ),
            "give --attestations DIR only when reading the medium without its appliance (--medium)",
        ));
    }
    if let Some(port) = port {
        let mut c = Client::open(port)?;
        let at = port.display();
        return match c.call(&Request::GetAttestations)? {
            Response::Attestations {
                seal: Some(seal),
                arrival: Some(arrival),
            } => Ok(Ok(Attestations {
                seal,
                arrival,
                from: format!("from the appliance at {at}"),
                given: true,
            })),
            // A failed arrival check first, erased since or not: "erased before its arrival
            // check" sent an appliance whose check found the medium changed to
            // --allow-unsealed. The custody log is read once (a long one over a serial line).
            Response::Attestations {
                seal: Some(_),
                arrival: None,
            } => {
                let why = match (failed_arrival(&mut c), appliance_erased(&mut c)) {
                    // Running it again finds the same: the medium is not what was sealed.
                    (Some(first), erased) => format!(
                        "the appliance at {at} {} ({first}){}: it changed since the seal, so there \
                         is no arrival pass to ingest on. Do not ingest from it; its custody log \
                         (`mgear appliance --port {at} log --verify`) says what happened to it; ask \
                         the capture site for another copy of the shipment",
                        crate::trust::ARRIVAL_FAILED,
                        if erased { " (and it was erased since)" } else { "" }
                    ),
                    (None, true) => format!(
                        "the appliance at {at} sealed the medium but {} (locked out, or erase \
                         requested), and an erased appliance signs no arrival: check its custody \
                         log (`mgear appliance --port {at} log --verify`), then ingest without the \
                         attestations (--allow-unsealed: the capture is then trusted by what vouches \
                         for its COMMIT, the pinned --trust site key or this appliance's witness)",
                        crate::trust::ERASED_BEFORE_ARRIVAL
                    ),
                    (None, false) => format!(
                        "the appliance at {at} sealed the medium but has not checked it on arrival: \
                         run `mgear appliance --port {at} arrival` first"
                    ),
                };
                Ok(Err(why))
            }
            Response::Attestations { .. } => Ok(Err(format!(
                "the appliance at {at} holds no seal attestation: it was never sealed (`mgear \
                 appliance seal` at the capture site), or it lost its secrets (erased, locked \
                 out) before its arrival check"
            ))),
            other => bail!("unexpected reply to GetAttestations: {other:?}"),
        };
    }
    if let Some(dir) = dir {
        // What an appliance erased before its arrival check exports: a seal alone. Not a
        // refusal of the operator's input: the seal's file list is still checked
        // ([`lone_seal`]), the rest needs --allow-unsealed.
        if !dir.join(ARRIVAL_FILE).exists() && dir.join(SEAL_FILE).exists() {
            return Ok(Err(format!(
                "the attestations in {} {}: exported before the appliance's arrival check \
                 (run `mgear appliance --port PORT arrival`, then export again), or of an \
                 appliance erased or locked out before its arrival check, which signs none \
                 (then only --allow-unsealed goes on, trusting what vouches for the capture's \
                 COMMIT: the pinned --trust site key or the appliance's witness; ingest still \
                 checks that everything the seal lists is on the medium)",
                dir.display(),
                crate::trust::SEAL_WITHOUT_ARRIVAL
            )));
        }
        return Ok(Ok(Attestations {
            seal: read_export(dir, SEAL_FILE)?,
            arrival: read_export(dir, ARRIVAL_FILE)?,
            from: format!("exported in {}", dir.display()),
            given: true,
        }));
    }
    let seal_path = format!("{ATTEST_DIR}/{SEAL_FILE}");
    let arrival_path = format!("{ATTEST_DIR}/{ARRIVAL_FILE}");
    // Copies on the medium are hints anyone holding it can plant or delete:
    // ones that do not read as attestations (junk, a directory where a file
    // should be, MGEAR/ATTEST a file) count as none (what the capture needs
    // is then decided as without them), not as a refusal.
    let copies = (|| -> crate::Result<Option<(Attestation, Attestation)>> {
        let present = |medium: &mut dyn Store, p: &str| -> crate::Result<bool> {
            Ok(medium.len(p).map_err(|e| err!("{p}: {e}"))?.is_some())
        };
        if !present(medium, &seal_path)? && !present(medium, &arrival_path)? {
            return Ok(None);
        }
        let seal = read_capped(medium, &seal_path, MAX_ATTESTATION_LEN)?;
        let arrival = read_capped(medium, &arrival_path, MAX_ATTESTATION_LEN)?;
        Ok(Some((
            decode_attestation(&seal, &seal_path)?,
            decode_attestation(&arrival, &arrival_path)?,
        )))
    })();
    let none = format!(
        "{}: read the medium through its appliance (--appliance PORT, after `mgear appliance \
         arrival`) or give the files of `mgear appliance attestations --out DIR` \
         (--attestations DIR)",
        crate::trust::NO_ATTESTATIONS_GIVEN
    );
    match copies {
        Ok(None) => Ok(Err(none)),
        Ok(Some((seal, arrival))) => Ok(Ok(Attestations {
            seal,
            arrival,
            from: format!("copies on the medium in {ATTEST_DIR}"),
            given: false,
        })),
        Err(e) => {
            eprintln!(
                "mgear: WARNING: the attestation copies on the medium are ignored: {e:#} (the \
                 seal and arrival then come only from the appliance or --attestations DIR)"
            );
            Ok(Err(none))
        }
    }
}

/// Of the appliances a span is read through, the one whose seal and arrival the gate reads:
/// the first whose identity is pinned (`--trust-appliance`), else the first given. Media are
/// given in any order; with an unpinned appliance first, its seal was read, not the pinned
/// one's, and the shipment refused.
/// Checked on arrival first, then sealed, in either case: with one appliance of the span
/// left unsealed or not yet checked, the answer turned on the order given (that one given
/// first was read, and the shipment refused as "its seal does not check" or "not checked
/// on arrival"; pinning it too did the same).
pub fn gate_port<'a>(ports: &'a [std::path::PathBuf], policy: &Policy) -> Option<&'a Path> {
    if ports.len() > 1 {
        // (pinned, 2 arrived / 1 sealed / 0 neither) of each, read once; the first of the
        // best wins, so the order given decides only between equals.
        let facts: Vec<(bool, u8)> = ports
            .iter()
            .map(|p| {
                let Ok(mut c) = Client::open(p) else {
                    return (false, 0);
                };
                let Ok(i) = crate::appliance::info(&mut c) else {
                    return (false, 0);
                };
                let pinned = i.identity_pubkey.is_some_and(|pk| {
                    let fp = mgear_appliance_api::attest::full_fingerprint(&pk);
                    policy
                        .appliances
                        .iter()
                        .any(|a| crate::output::hex(a) == fp)
                });
                let checked = match i.state {
                    DeviceState::Arrived => 2,
                    DeviceState::Sealed => 1,
                    _ => 0,
                };
                (pinned, checked)
            })
            .collect();
        let best = facts.iter().copied().max();
        if let Some(k) = best.and_then(|b| facts.iter().position(|f| *f == b)) {
            return Some(ports[k].as_path());
        }
    }
    ports.first().map(|p| p.as_path())
}

/// The gate as `ingest` uses it: find the attestations, check the
/// generation against the pinned `policy`, print the loud warnings of any
/// override taken. A refusal is exit 1.
pub fn ingest_gate(
    port: Option<&Path>,
    attestations_dir: Option<&Path>,
    medium: &mut dyn Store,
    name: &str,
    generation: Option<u32>,
    policy: &Policy,
) -> crate::Result<Verdict> {
    // A missing or unreadable --attestations file is the operator's to fix
    // (exit 2); an attestation that does not check out is a finding (1).
    let atts =
        find_attestations(port, attestations_dir, medium).map_err(
            |e| match crate::exit::classified(&e) {
                // Classified already, with its own hint kept.
                Some(_) => e,
                None => coded(FOUND, format!("{e:#}")),
            },
        )?;
    let mut verdict = trust::check_generation(
        medium,
        name,
        generation,
        policy,
        atts.as_ref().map_err(String::as_str),
    )?;
    // After the gate's own refusals (a failed arrival says so in its words), before its
    // overrides count: a lone seal's list holds whatever vouches and --allow-unsealed.
    if atts.is_err() {
        if let Some(seal) = lone_seal(port, attestations_dir)? {
            trust::check_lone_seal(medium, name, verdict.generation, &seal, policy)?;
        }
    }
    // An arrival check that failed before the one that passed: the medium's bytes were not
    // what was sealed then (put back since?). The pass and the signatures vouch for what is
    // read now, but the ticket must say so (the report said nothing of it).
    if let (Some(port), Ok(_)) = (port, &atts) {
        if let Ok(mut c) = Client::open(port) {
            verdict.warnings.extend(failed_before_pass(&mut c, port));
        }
    }
    for w in &verdict.warnings {
        warn_once(w);
    }
    Ok(verdict)
}

/// What the custody log says against the shipment: a log that fails verification (records
/// cut, signatures broken; the ingest said nothing of it, though arrival had failed on it),
/// and the arrival checks it records as failed before its last passing one.
fn failed_before_pass(c: &mut Client, port: &Path) -> Vec<String> {
    let Ok(log) = crate::appliance::fetch_log(c) else {
        return Vec::new();
    };
    let mut said = Vec::new();
    if let Ok(Err(why)) = crate::appliance::verify_custody(c, &log, None) {
        said.push(format!(
            "the custody log of the appliance at {} FAILED verification ({why}): the seal and \
             arrival vouch for the medium as read, but what happened to the appliance in \
             transit cannot be told from its log; keep `mgear appliance --port {} log` with \
             the shipment's records and ask the capture site",
            port.display(),
            port.display()
        ));
    }
    let mut failed = Vec::new();
    let mut before_pass = 0;
    for r in &log {
        let Ok(d) = r.decode() else { continue };
        if let mgear_appliance_api::custody::Event::Arrival {
            attestation,
            problems,
            first,
        } = d.entry.event
        {
            match attestation {
                None => failed.push(format!(
                    "record {}: {problems} problem(s){}",
                    d.entry.index,
                    first
                        .map(|f| format!(", the first: {f}"))
                        .unwrap_or_default()
                )),
                Some(_) => before_pass = failed.len(),
            }
        }
    }
    failed.truncate(before_pass);
    if failed.is_empty() {
        return said;
    }
    said.push(format!(
        "the custody log of the appliance at {} records {} arrival check(s) that FAILED before \
         the one that passed ({}): its medium was not what was sealed then, and is now; the \
         passing check and the signatures vouch for what was read. Find out what happened to \
         it in transit (`mgear appliance --port {} log --verify`)",
        port.display(),
        failed.len(),
        failed.join("; "),
        port.display()
    ));
    said
}

/// Print a trust warning unless this run printed the same one already: a machine set is
/// checked as a set and again disk by disk, and its warnings came twice.
fn warn_once(w: &str) {
    static SAID: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let mut said = SAID
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if !said.iter().any(|s| s == w) {
        eprintln!("mgear: WARNING: {w}");
        said.push(w.to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A SEAL file holding junk said "(Serde Deserialization Error)", the decoder's words.
    #[test]
    fn an_attestation_that_does_not_decode_is_named_in_the_operators_words() {
        let e = decode_attestation(b"junk\n", "att/SEAL").unwrap_err();
        let text = format!("{e:#}");
        assert!(text.contains("att/SEAL is not an attestation"), "{text}");
        assert!(text.contains("5 bytes"), "{text}");
        assert!(!text.contains("Serde"), "{text}");
        assert_eq!(crate::exit::code_of(&e), FOUND);
    }
}
