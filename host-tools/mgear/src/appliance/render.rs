//! How `mgear appliance` shows what the appliance says: custody-log events
//! one line each, attestations as labelled lines, the erase certificate;
//! ISO-8601 UTC times and hex everywhere, never Debug text or byte lists.
//!
//! `--json` keeps the machine form (the protocol's field and variant names:
//! `"state": "Sealed"`, `{"Erase": {"reason": "PinLockout", ...}}`) in the
//! shared envelope (`output.rs`), with every key, digest, id and signature
//! as a hex string ([`BYTE_FIELDS`]).

use mgear_appliance_api::attest::{fingerprint, full_fingerprint, Attestation};
use mgear_appliance_api::custody::{Event, LogEntry};
use serde::Serialize;

use crate::output::{hex, iso_time};

/// The protocol's byte-string fields (`serde_bytes` in the firmware core):
/// shown as hex in `--json`.
pub const BYTE_FIELDS: &[&str] = &[
    "identity",
    "identity_pubkey",
    "medium_id",
    "prev",
    "attestation",
    "seal_digest",
    "challenge",
    "log_head",
    "signature",
    "sha256",
    "regions",
    "body",
];

/// Print `value` in the `--json` envelope with byte fields as hex.
pub fn emit<T: Serialize>(ok: bool, value: &T) -> crate::Result<()> {
    let mut v = serde_json::to_value(value)?;
    crate::output::hex_fields(&mut v, BYTE_FIELDS);
    crate::output::emit_ok(ok, &v)
}

/// `12.3 s`, `4 min 5 s`, `2 h 3 min` since power-up.
fn uptime(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..=59 => format!("{}.{} s", s, (ms % 1000) / 100),
        60..=3599 => format!("{} min {} s", s / 60, s % 60),
        _ => format!("{} h {} min", s / 3600, (s % 3600) / 60),
    }
}

/// The appliance's wall time, or `-` when it had none.
fn when(unix: Option<u64>) -> String {
    unix.map_or_else(|| "-".to_string(), iso_time)
}

/// What happened, in words.
pub fn event_text(e: &Event) -> String {
    // The words are the appliance's own (its console prints the same).
    e.to_string()
}

/// One custody-log line: index, wall time, uptime, event.
pub fn log_line(e: &LogEntry) -> String {
    format!(
        "{:>5}  {:<20}  up {:<12}  {}",
        e.index,
        when(e.unix_time),
        uptime(e.uptime_ms),
        event_text(&e.event)
    )
}

/// An attestation as labelled lines (`name` is "seal" or "arrival").
pub fn attestation_lines(name: &str, a: &Attestation) -> Vec<String> {
    let b = &a.body;
    let mut out = vec![
        format!("{name} attestation {}", hex(&a.digest())),
        format!(
            "  signed by      appliance {} ({})",
            full_fingerprint(&b.identity),
            fingerprint(&b.identity)
        ),
        format!(
            "  time           {} (up {}), counter {}",
            when(b.unix_time),
            uptime(b.uptime_ms),
            b.counter
        ),
        format!(
            "  medium         {} ({} bytes)",
            hex(&b.medium_id),
            b.medium_bytes
        ),
        format!(
            "  checked        {} capture(s), {} record(s), {} file(s), {} region(s) of {} bytes",
            b.captures,
            b.records,
            b.files.len(),
            b.regions.len(),
            b.region_size
        ),
        format!(
            "  custody log    {} record(s), head {}",
            b.log_records,
            hex(&b.log_head)
        ),
    ];
    if let Some(s) = &b.seal_digest {
        out.push(format!("  seal           {}", hex(s)));
    }
    if let Some(c) = &b.challenge {
        out.push(format!("  challenge      {}", hex(c)));
    }
    out.push(format!("  signature      {}", hex(&a.signature)));
    out
}

/// The human twin of an erase certificate (`appliance erase --certificate`).
pub fn certificate_text(c: &serde_json::Value) -> String {
    let s = |p: &str| match c.pointer(p) {
        Some(serde_json::Value::String(x)) => x.clone(),
        Some(serde_json::Value::Null) | None => "-".to_string(),
        Some(x) => x.to_string(),
    };
    [
        format!("MotionGear erase certificate ({})", s("/certificate")),
        format!("  issued         {} on host {}", s("/issued"), s("/host")),
        format!(
            "  appliance      {} (firmware {}, now {})",
            s("/appliance/fingerprint"),
            s("/appliance/firmware_version"),
            s("/appliance/state")
        ),
        format!("  public key     {}", s("/appliance/identity_pubkey")),
        format!(
            "  medium         {} ({} bytes)",
            s("/medium/id"),
            s("/medium/bytes")
        ),
        format!("  erased         {}", s("/erase_record/event")),
        if c.pointer("/medium/key_slots_left") == Some(&serde_json::Value::Bool(true)) {
            "  NOT DESTROYED  the sealed medium's key slots: the capture still decrypts with \
             target.key (a lockout once sealed leaves the shipment as sealed)"
                .to_string()
        } else if c
            .pointer("/medium/span/media")
            .and_then(serde_json::Value::as_u64)
            > Some(1)
        {
            format!(
                "  key slots      destroyed on this medium, #{} of a span of {} media: the \
                 slots are mirrored on each, and the capture no longer decrypts only once every \
                 medium of the span is erased",
                s("/medium/span/ordinal"),
                s("/medium/span/media")
            )
        } else {
            "  key slots      destroyed: the capture no longer decrypts".to_string()
        },
        format!(
            "  at             {} (custody record {})",
            s("/erase_record/time"),
            s("/erase_record/index")
        ),
        format!("  record sha256  {}", s("/erase_record/body_sha256")),
        format!("  signature      {}", s("/erase_record/signature")),
        format!("  verdict        {}", s("/verdict")),
    ]
    .join("\n")
        + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_lines_are_iso_and_hex_without_debug_text() {
        let e = LogEntry {
            index: 7,
            prev: [0; 32],
            uptime_ms: 2_535,
            unix_time: Some(1_796_196_193),
            event: Event::Provisioned {
                identity: [0xab; 32],
            },
        };
        let line = log_line(&e);
        assert!(line.contains("2026-12-02T07:23:13Z"), "{line}");
        assert!(line.contains("up 2.5 s"), "{line}");
        assert!(line.contains(&full_fingerprint(&[0xab; 32])), "{line}");
        assert!(!line.contains('[') && !line.contains('{'), "{line}");
        let erase = event_text(&Event::Erase {
            reason: mgear_appliance_api::custody::EraseReason::PinLockout,
            key_slots: 2,
            overwrite_medium: false,
        });
        assert_eq!(
            erase,
            "crypto-erased (too many wrong PINs): identity secret destroyed, 2 key slot file(s) destroyed, medium kept"
        );
        assert!(log_line(&LogEntry {
            unix_time: None,
            event: Event::Lock,
            ..e
        })
        .contains(" -  "));
    }

    #[test]
    fn json_byte_fields_are_hex() {
        let e = LogEntry {
            index: 0,
            prev: [1; 32],
            uptime_ms: 0,
            unix_time: None,
            event: Event::Seal {
                counter: 1,
                attestation: [0xcd; 32],
            },
        };
        let mut v = serde_json::to_value(&e).unwrap();
        crate::output::hex_fields(&mut v, BYTE_FIELDS);
        assert_eq!(v["prev"], "01".repeat(32));
        assert_eq!(v["event"]["Seal"]["attestation"], "cd".repeat(32));
        assert_eq!(v["event"]["Seal"]["counter"], 1);
    }
}
