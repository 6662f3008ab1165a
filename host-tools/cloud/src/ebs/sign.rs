//! SigV4 for the EBS and EC2 calls, and its check on the double's side, both through the
//! `aws-sigv4` crate: the double recomputes the `Authorization` header from the request it
//! received with the same canonicalisation and the secret it knows, so a request the double
//! accepts is one AWS would accept as signed.
//!
//! Payloads: JSON/form bodies are hashed into the signature; `PutSnapshotBlock`'s 512 KiB body is
//! sent as `UNSIGNED-PAYLOAD` (as AWS's SDKs do for this call) and is protected instead by its
//! signed `x-amz-Checksum` header, which EBS compares with the data it receives.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sigv4::http_request::{
    sign, PayloadChecksumKind, SignableBody, SignableRequest, SigningSettings,
};
use aws_sigv4::sign::v4;

use super::config::Credentials;
use crate::{CloudError, Result};

/// What the signature covers of the body.
#[derive(Debug, Clone, Copy)]
pub enum Payload<'a> {
    /// The body's SHA-256 is part of the signature.
    Signed(&'a [u8]),
    /// `x-amz-content-sha256: UNSIGNED-PAYLOAD` (the body is vouched for by another signed header).
    Unsigned,
}

/// A request about to be sent.
#[derive(Debug, Clone, Copy)]
pub struct Outgoing<'a> {
    /// Method.
    pub method: &'a str,
    /// Full URL (already percent-encoded).
    pub url: &'a str,
    /// The request's own headers, all of which are signed.
    pub headers: &'a [(&'a str, &'a str)],
    /// What the signature covers of the body.
    pub payload: Payload<'a>,
}

/// The headers to add to `req` so it carries a SigV4 signature for `service` in `region`
/// (`authorization`, `x-amz-date`, and `x-amz-security-token`/`x-amz-content-sha256` when they
/// apply), made at `time`.
pub fn sign_headers(
    creds: &Credentials,
    region: &str,
    service: &str,
    req: Outgoing<'_>,
    time: SystemTime,
) -> Result<Vec<(String, String)>> {
    let Outgoing {
        method,
        url,
        headers,
        payload,
    } = req;
    let identity = aws_credential_types::Credentials::new(
        creds.access_key_id.clone(),
        creds.secret_access_key.clone(),
        creds.session_token.clone(),
        None,
        "mgear",
    )
    .into();
    let mut settings = SigningSettings::default();
    let body = match payload {
        Payload::Signed(b) => {
            settings.payload_checksum_kind = PayloadChecksumKind::NoHeader;
            SignableBody::Bytes(b)
        }
        Payload::Unsigned => {
            settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
            SignableBody::UnsignedPayload
        }
    };
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(service)
        .time(time)
        .settings(settings)
        .build()
        .map_err(|e| CloudError::Config(format!("SigV4 parameters: {e}")))?
        .into();
    let req = SignableRequest::new(method, url, headers.iter().copied(), body)
        .map_err(|e| CloudError::Config(format!("cannot sign {method} {url}: {e}")))?;
    let (instructions, _sig) = sign(req, &params)
        .map_err(|e| CloudError::Config(format!("cannot sign {method} {url}: {e}")))?
        .into_parts();
    Ok(instructions
        .headers()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect())
}

/// A request as a server received it, for [`verify`].
#[derive(Debug)]
pub struct Received<'a> {
    /// Method.
    pub method: &'a str,
    /// Path and query exactly as on the request line.
    pub target: &'a str,
    /// All headers in arrival order (names in any case).
    pub headers: &'a [(String, String)],
    /// The body.
    pub body: &'a [u8],
}

impl Received<'_> {
    /// A header by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// How far a request's `x-amz-date` may be from the server's clock (AWS: 15 minutes).
pub const MAX_SKEW: Duration = Duration::from_secs(15 * 60);

/// Check a received request's SigV4 signature the way AWS does: the credential names a known
/// key, the scope is today's date in `region` for `service`, the clock skew is under 15 minutes,
/// every `x-amz-*` header and `host` are signed, and the `Authorization` header equals the one
/// recomputed with `creds`' secret. `Err` is the message AWS's error would carry.
pub fn verify(
    req: &Received<'_>,
    creds: &Credentials,
    region: &str,
    service: &str,
    now: SystemTime,
) -> std::result::Result<(), String> {
    let auth = req
        .header("authorization")
        .ok_or("Missing Authentication Token (no Authorization header)")?;
    let rest = auth
        .strip_prefix("AWS4-HMAC-SHA256 ")
        .ok_or("Authorization header is not AWS4-HMAC-SHA256")?;
    let mut credential = None;
    let mut signed = None;
    for part in rest.split(',') {
        let part = part.trim();
        if let Some(v) = part.strip_prefix("Credential=") {
            credential = Some(v);
        } else if let Some(v) = part.strip_prefix("SignedHeaders=") {
            signed = Some(v);
        }
    }
    let credential = credential.ok_or("Authorization header has no Credential")?;
    let signed: Vec<&str> = signed
        .ok_or("Authorization header has no SignedHeaders")?
        .split(';')
        .collect();
    let scope: Vec<&str> = credential.split('/').collect();
    let [key_id, date, scope_region, scope_service, "aws4_request"] = scope[..] else {
        return Err(format!("malformed credential scope {credential:?}"));
    };
    if key_id != creds.access_key_id {
        return Err(format!(
            "The security token included in the request is invalid (unknown access key {key_id})"
        ));
    }
    if scope_region != region || scope_service != service {
        return Err(format!(
            "Credential should be scoped to a valid region and service: got {scope_region}/{scope_service}, \
             expected {region}/{service}"
        ));
    }
    let amz_date = req
        .header("x-amz-date")
        .ok_or("missing x-amz-date header")?;
    let time = parse_amz_date(amz_date).ok_or_else(|| format!("bad x-amz-date {amz_date:?}"))?;
    if !amz_date.starts_with(date) {
        return Err(format!(
            "Credential should be scoped to the request date {}, not {date}",
            &amz_date[..8.min(amz_date.len())]
        ));
    }
    let skew = now
        .duration_since(time)
        .or_else(|_| time.duration_since(now))
        .unwrap_or_default();
    if skew > MAX_SKEW {
        return Err(format!(
            "Signature expired: {amz_date} is more than 15 minutes from the server's time"
        ));
    }
    for must in ["host", "x-amz-date"] {
        if !signed.contains(&must) {
            return Err(format!("SignedHeaders must include {must}"));
        }
    }
    for (k, _) in req.headers {
        let k = k.to_ascii_lowercase();
        if k.starts_with("x-amz-") && !signed.contains(&k.as_str()) {
            return Err(format!("header {k} is present but not signed"));
        }
    }
    if req.header("x-amz-security-token") != creds.session_token.as_deref() {
        return Err("The security token included in the request is invalid".into());
    }
    let mut headers = Vec::new();
    for name in &signed {
        let v = req
            .header(name)
            .ok_or_else(|| format!("signed header {name} is missing from the request"))?;
        headers.push((*name, v));
    }
    let content_sha = req.header("x-amz-content-sha256");
    let payload = match content_sha {
        Some("UNSIGNED-PAYLOAD") => Payload::Unsigned,
        _ => Payload::Signed(req.body),
    };
    let host = req.header("host").ok_or("missing Host header")?;
    let url = format!("http://{host}{}", req.target);
    // Recompute with the same crate, then put back the content-sha header setting the client used.
    let identity = aws_credential_types::Credentials::new(
        creds.access_key_id.clone(),
        creds.secret_access_key.clone(),
        creds.session_token.clone(),
        None,
        "mgear-double",
    )
    .into();
    let mut settings = SigningSettings::default();
    settings.payload_checksum_kind = if content_sha.is_some() {
        PayloadChecksumKind::XAmzSha256
    } else {
        PayloadChecksumKind::NoHeader
    };
    let body = match payload {
        Payload::Signed(b) => SignableBody::Bytes(b),
        Payload::Unsigned => SignableBody::UnsignedPayload,
    };
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(service)
        .time(time)
        .settings(settings)
        .build()
        .map_err(|e| e.to_string())?
        .into();
    let signable = SignableRequest::new(req.method, url, headers.into_iter(), body)
        .map_err(|e| format!("request cannot be canonicalised: {e}"))?;
    let (instructions, _) = sign(signable, &params)
        .map_err(|e| format!("request cannot be canonicalised: {e}"))?
        .into_parts();
    let want = instructions
        .headers()
        .find(|(k, _)| k.eq_ignore_ascii_case("authorization"))
        .map(|(_, v)| v.to_string())
        .unwrap_or_default();
    if want != auth {
        return Err(
            "The request signature we calculated does not match the signature you provided. \
             Check your AWS Secret Access Key and signing method."
                .into(),
        );
    }
    Ok(())
}

/// `YYYYMMDDTHHMMSSZ` as a time.
pub fn parse_amz_date(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = s.get(r)?;
        t.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| t.parse().ok())?
    };
    let (y, mo, d) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (h, mi, se) = (num(9..11)?, num(11..13)?, num(13..15)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let y2 = if mo <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    let secs = days * 86400 + h * 3600 + mi * 60 + se;
    u64::try_from(secs)
        .ok()
        .map(|s| UNIX_EPOCH + Duration::from_secs(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds() -> Credentials {
        Credentials {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
            session_token: None,
        }
    }

    fn received(
        method: &str,
        target: &str,
        mut own: Vec<(String, String)>,
        signed: Vec<(String, String)>,
    ) -> Vec<(String, String)> {
        own.push(("Host".into(), "127.0.0.1:8080".into()));
        own.extend(signed);
        let _ = (method, target);
        own
    }

    #[test]
    fn amz_date_parses_to_unix_time() {
        let t = parse_amz_date("20150830T123600Z").unwrap();
        assert_eq!(t.duration_since(UNIX_EPOCH).unwrap().as_secs(), 1440938160);
        assert_eq!(parse_amz_date("2015-08-30T12:36:00Z"), None);
        assert_eq!(parse_amz_date("20151330T123600Z"), None);
    }

    #[test]
    fn a_signed_request_verifies_and_any_change_breaks_it() {
        let c = creds();
        let now = SystemTime::now();
        let url = "http://127.0.0.1:8080/snapshots/snap-1/blocks/3";
        let own = [
            ("content-type", "application/octet-stream"),
            ("x-amz-Checksum", "abc="),
            ("x-amz-Checksum-Algorithm", "SHA256"),
            ("x-amz-Data-Length", "524288"),
        ];
        let sig = sign_headers(
            &c,
            "eu-west-1",
            "ebs",
            Outgoing {
                method: "PUT",
                url,
                headers: &own,
                payload: Payload::Unsigned,
            },
            now,
        )
        .unwrap();
        assert!(sig
            .iter()
            .any(|(k, v)| k == "x-amz-content-sha256" && v == "UNSIGNED-PAYLOAD"));
        let own: Vec<(String, String)> = own
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let headers = received(
            "PUT",
            "/snapshots/snap-1/blocks/3",
            own.clone(),
            sig.clone(),
        );
        let req = Received {
            method: "PUT",
            target: "/snapshots/snap-1/blocks/3",
            headers: &headers,
            body: b"whatever: unsigned",
        };
        verify(&req, &c, "eu-west-1", "ebs", now).unwrap();

        // Another block index, another region, a wrong secret, a changed signed header.
        let moved = Received {
            target: "/snapshots/snap-1/blocks/4",
            ..req
        };
        assert!(verify(&moved, &c, "eu-west-1", "ebs", now)
            .unwrap_err()
            .contains("does not match"));
        assert!(verify(&req, &c, "us-east-1", "ebs", now)
            .unwrap_err()
            .contains("scoped"));
        let wrong = Credentials {
            secret_access_key: "other".into(),
            ..c.clone()
        };
        assert!(verify(&req, &wrong, "eu-west-1", "ebs", now).is_err());
        let mut tampered = headers.clone();
        for (k, v) in tampered.iter_mut() {
            if k == "x-amz-Checksum" {
                *v = "abd=".into();
            }
        }
        let t = Received {
            headers: &tampered,
            ..req
        };
        assert!(verify(&t, &c, "eu-west-1", "ebs", now).is_err());
        // An unsigned x-amz header, an old request.
        let mut extra = headers.clone();
        extra.push(("x-amz-Progress".into(), "5".into()));
        let t = Received {
            headers: &extra,
            ..req
        };
        assert!(verify(&t, &c, "eu-west-1", "ebs", now)
            .unwrap_err()
            .contains("not signed"));
        let later = now + Duration::from_secs(16 * 60);
        assert!(verify(&req, &c, "eu-west-1", "ebs", later)
            .unwrap_err()
            .contains("expired"));
        // No signature at all.
        let t = Received {
            headers: &own,
            ..req
        };
        assert!(verify(&t, &c, "eu-west-1", "ebs", now).is_err());
    }

    #[test]
    fn a_signed_body_is_covered_and_session_tokens_are_checked() {
        let c = Credentials {
            session_token: Some("TOKEN".into()),
            ..creds()
        };
        let now = SystemTime::now();
        let body = br#"{"VolumeSize":1}"#;
        let own = [("content-type", "application/json")];
        let sig = sign_headers(
            &c,
            "eu-west-1",
            "ebs",
            Outgoing {
                method: "POST",
                url: "http://127.0.0.1:8080/snapshots",
                headers: &own,
                payload: Payload::Signed(body),
            },
            now,
        )
        .unwrap();
        let own: Vec<(String, String)> = own
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let headers = received("POST", "/snapshots", own, sig);
        let req = Received {
            method: "POST",
            target: "/snapshots",
            headers: &headers,
            body,
        };
        verify(&req, &c, "eu-west-1", "ebs", now).unwrap();
        let changed = Received {
            body: br#"{"VolumeSize":2}"#,
            ..req
        };
        assert!(verify(&changed, &c, "eu-west-1", "ebs", now).is_err());
        let no_token = Credentials {
            session_token: None,
            ..c.clone()
        };
        assert!(verify(&req, &no_token, "eu-west-1", "ebs", now)
            .unwrap_err()
            .contains("token"));
    }
}
