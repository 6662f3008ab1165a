//! The ingest gate: may this capture be ingested? Only if the appliance that
//! recorded it sealed the medium and checked it again on arrival, and the
//! medium still holds exactly what was attested.
//!
//! # Where attestations live
//!
//! The appliance keeps its latest seal and arrival attestations in its
//! secret store and returns them over the console (`GetAttestations`); with
//! `--appliance PORT`, ingest asks it. A datacenter that reads the medium
//! without the appliance uses copies saved as files: `mgear appliance
//! attestations --out DIR` writes `DIR/SEAL` and `DIR/ARRIVAL` (postcard
//! encoding of `mgear_firmware::attest::Attestation`, the same bytes the
//! console carries). The gate also looks for them on the medium itself at
//! `MGEAR/ATTEST/SEAL` and `MGEAR/ATTEST/ARRIVAL` (same encoding), where a
//! firmware that stores them on the medium puts them.
//!
//! Trust comes from the signatures, not from where the files were found:
//! both must verify against the identity recorded in the capture's manifest
//! (`appliance_id`, written at capture time from `appliance info`), the
//! arrival must refer to this very seal, nothing may differ between them,
//! and every attested file of the capture must still hash the same now.

use std::path::Path;

use anyhow::{anyhow, bail, Context};
use image_format::layout::{self, Manifest};
use image_format::Store;
use mgear_firmware::attest::{self, fingerprint, Attestation};
use mgear_firmware::protocol::{Request, Response};
use sha2::{Digest, Sha256};

use super::client::Client;

/// Directory on the medium where attestation copies may be stored.
pub const ATTEST_DIR: &str = "MGEAR/ATTEST";
/// File name of the seal attestation (on the medium or in an export directory).
pub const SEAL_FILE: &str = "SEAL";
/// File name of the arrival attestation.
pub const ARRIVAL_FILE: &str = "ARRIVAL";

/// Generation `generation` (or the newest) of capture `name`, and the
/// appliance identity its manifest records.
pub fn capture_identity(
    medium: &mut dyn Store,
    name: &str,
    generation: Option<u32>,
) -> anyhow::Result<(u32, Option<[u8; 32]>)> {
    layout::validate_name(name).map_err(|e| anyhow!("{e}"))?;
    let generation = match generation {
        Some(g) => g,
        None => {
            let dir = layout::capture_dir(name);
            let entries = medium
                .list(&dir)
                .map_err(|e| anyhow!("capture {name}: listing {dir}: {e}"))?;
            entries
                .iter()
                .filter_map(|e| layout::parse_generation_dir(&e.name))
                .max()
                .ok_or_else(|| anyhow!("capture {name} has no generation on this medium"))?
        }
    };
    let path = layout::generation_file(name, generation, layout::MANIFEST_FILE);
    let bytes = read_file(medium, &path)?;
    let mf = Manifest::decode(&bytes).map_err(|e| anyhow!("{path}: {e}"))?;
    Ok((generation, mf.manifest.appliance_id))
}

fn read_file(medium: &mut dyn Store, path: &str) -> anyhow::Result<Vec<u8>> {
    let len = medium
        .len(path)
        .map_err(|e| anyhow!("{path}: {e}"))?
        .ok_or_else(|| anyhow!("{path} is missing"))?;
    let len = usize::try_from(len).map_err(|_| anyhow!("{path} is too large"))?;
    let mut buf = vec![0u8; len];
    medium
        .read_exact_at(path, 0, &mut buf)
        .map_err(|e| anyhow!("{path}: {e}"))?;
    Ok(buf)
}

fn sha256_file(medium: &mut dyn Store, path: &str, len: u64) -> anyhow::Result<[u8; 32]> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1024 * 1024];
    let mut off = 0u64;
    while off < len {
        let n = (len - off).min(buf.len() as u64) as usize;
        medium
            .read_exact_at(path, off, &mut buf[..n])
            .map_err(|e| anyhow!("{path}: {e}"))?;
        h.update(&buf[..n]);
        off += n as u64;
    }
    Ok(h.finalize().into())
}

/// Decode an attestation file (postcard, as on the console).
pub fn decode_attestation(bytes: &[u8], what: &str) -> anyhow::Result<Attestation> {
    match postcard::from_bytes::<Attestation>(bytes) {
        Ok(a) => Ok(a),
        Err(e) => bail!("{what} is not an attestation: {e}"),
    }
}

/// Encode an attestation for a file.
pub fn encode_attestation(att: &Attestation) -> Vec<u8> {
    postcard::to_allocvec(att).unwrap_or_default()
}

/// Seal and arrival attestations: from the appliance, else from the medium.
fn find_attestations(
    port: Option<&Path>,
    medium: &mut dyn Store,
) -> anyhow::Result<(Attestation, Attestation)> {
    if let Some(port) = port {
        let mut c = Client::open(port)?;
        return match c.call(&Request::GetAttestations)? {
            Response::Attestations { seal: Some(s), arrival: Some(a) } => Ok((s, a)),
            Response::Attestations { seal: None, .. } => {
                bail!("the appliance has no seal attestation: the medium was never sealed (`mgear appliance seal`)")
            }
            Response::Attestations { arrival: None, .. } => bail!(
                "the appliance has no arrival attestation: run `mgear appliance arrival` at the target first"
            ),
            other => bail!("unexpected reply to GetAttestations: {other:?}"),
        };
    }
    let mut get = |file: &str| -> anyhow::Result<Attestation> {
        let path = format!("{ATTEST_DIR}/{file}");
        match medium.len(&path).map_err(|e| anyhow!("{path}: {e}"))? {
            Some(_) => decode_attestation(&read_file(medium, &path)?, &path),
            None => bail!(
                "no {file} attestation: without --appliance the medium must carry {path} \
                 (or ingest with --appliance PORT so the appliance provides it)"
            ),
        }
    };
    Ok((get(SEAL_FILE)?, get(ARRIVAL_FILE)?))
}

/// Check everything (see the module doc); `Ok` means ingest may go on.
pub fn check(
    port: Option<&Path>,
    medium: &mut dyn Store,
    name: &str,
    generation: Option<u32>,
) -> anyhow::Result<()> {
    let (generation, identity) = capture_identity(medium, name, generation)?;
    let identity = identity.ok_or_else(|| {
        anyhow!(
            "capture {name} generation {generation} was not made through an appliance \
             (its manifest records no appliance identity)"
        )
    })?;
    let (seal, arrival) = find_attestations(port, medium)?;
    attest::verify_seal_and_arrival(&seal, &arrival, &identity).map_err(|e| {
        anyhow!(
            "attestations do not allow ingest of {name} (capture made by appliance {}): {e}",
            fingerprint(&identity)
        )
    })?;
    // The attested files of this capture must be what the medium holds now.
    let prefix = format!("{}/", layout::capture_dir(name));
    let manifest = layout::generation_file(name, generation, layout::MANIFEST_FILE);
    let attested: Vec<_> = arrival
        .body
        .files
        .iter()
        .filter(|f| f.path.starts_with(&prefix))
        .collect();
    if !attested
        .iter()
        .any(|f| f.path.eq_ignore_ascii_case(&manifest))
    {
        bail!("the attestations do not cover {manifest}: capture {name} generation {generation} was written after the seal");
    }
    for f in &attested {
        let now = medium
            .len(&f.path)
            .map_err(|e| anyhow!("{}: {e}", f.path))?;
        match now {
            None => bail!(
                "{} ({}) was attested but is missing now",
                f.path,
                attest::place_of_path(&f.path)
            ),
            Some(len) if len != f.len => bail!(
                "{} ({}) changed since arrival: {} bytes attested, {len} now",
                f.path,
                attest::place_of_path(&f.path),
                f.len
            ),
            Some(len) => {
                if sha256_file(medium, &f.path, len)? != f.sha256 {
                    bail!(
                        "{} ({}) changed since arrival: its content differs",
                        f.path,
                        attest::place_of_path(&f.path)
                    );
                }
            }
        }
    }
    Ok(())
}

/// The gate as the CLI uses it: with `allow_unsealed`, a failed check is a
/// loud warning instead of an error.
pub fn ingest_gate(
    port: Option<&Path>,
    medium: &mut dyn Store,
    name: &str,
    generation: Option<u32>,
    allow_unsealed: bool,
) -> anyhow::Result<()> {
    // A capture written straight onto a medium (`fat:`/`dir:`, no appliance)
    // has no appliance identity in its manifest, so there is no seal that
    // could be checked; every chunk is still authenticated by the data key
    // during ingest. The manifest is MAC'd with that key, so nobody without
    // it can strip the identity of a capture made through an appliance.
    if port.is_none() {
        if let Ok((g, None)) = capture_identity(medium, name, generation) {
            eprintln!(
                "mgear: note: capture {name} generation {g} was written without an appliance: \
                 there is no seal to check; every chunk is authenticated by the key"
            );
            return Ok(());
        }
    }
    match check(port, medium, name, generation) {
        Ok(()) => Ok(()),
        Err(e) if allow_unsealed => {
            eprintln!("mgear: WARNING: --allow-unsealed: ingesting WITHOUT valid appliance attestations.");
            eprintln!("mgear: WARNING: nothing proves this medium is what the appliance sealed: {e:#}");
            Ok(())
        }
        Err(e) => Err(e).context(
            "refusing to ingest (seal and arrival attestations are required; --allow-unsealed overrides, loudly)",
        ),
    }
}
