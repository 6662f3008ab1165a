//! Capture-site signing keys: `mgear keygen --signing`, and reading them.
//!
//! Encryption to `target.pub` says nothing about who wrote a capture: every
//! capture site (and every courier who has seen one) holds `target.pub`. So
//! the target pins the Ed25519 public keys of the capture sites it works with
//! (`--trust site.pub`), and a site signs what it captured and what it syncs
//! with its secret `site.key`.
//!
//! Files are the standard encodings, so `openssl` reads them too:
//! - `site.key`: PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`), mode 0600;
//!   `openssl pkey -in site.key -pubout` prints the public half.
//! - `site.pub`: SubjectPublicKeyInfo PEM (`-----BEGIN PUBLIC KEY-----`).
//!
//! A key's fingerprint is the SHA-256 of its 32 raw public key bytes, in hex
//! ([`fingerprint`]), the same form that names an appliance identity.

use std::path::Path;

use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::exit::usage;
use crate::keyfile::{misplaced, KeyKind};

/// Create `out` (secret, 0600) and `out.pub`; refuses to overwrite unless `force`.
pub fn generate(out: &Path, force: bool) -> crate::Result<VerifyingKey> {
    let key = SigningKey::generate(&mut rand::rngs::OsRng);
    // PKCS#8 v1 (no embedded public key): OpenSSL 3.0 refuses the v2 form
    // ed25519-dalek writes by default.
    let secret = ed25519_dalek::pkcs8::KeypairBytes {
        secret_key: key.to_bytes(),
        public_key: None,
    }
    .to_pkcs8_pem(Default::default())
    .map_err(|e| crate::err!("encoding the signing key: {e}"))?;
    let public = key
        .verifying_key()
        .to_public_key_pem(Default::default())
        .map_err(|e| crate::err!("encoding the public key: {e}"))?;
    crate::keyfile::write_pair(out, secret.as_bytes(), public.as_bytes(), force, true)?;
    Ok(key.verifying_key())
}

/// The one PEM block of a key file as the strict decoder takes it: blank lines, whitespace
/// around lines, a UTF-8 BOM and text outside the block dropped (a key pasted from mail, or
/// an editor's extra newline, was refused as "PEM preamble contains invalid data"). `Err`
/// says why a file holding several keys, or a block without its end, is none.
fn one_pem_block(text: &str) -> Result<String, String> {
    let lines: Vec<&str> = text
        .lines()
        .map(|l| l.trim().trim_start_matches('\u{feff}').trim())
        .filter(|l| !l.is_empty())
        .collect();
    let begins = lines
        .iter()
        .filter(|l| l.starts_with("-----BEGIN "))
        .count();
    if begins > 1 {
        return Err(format!(
            "it holds {begins} keys: one key per file (repeat the flag for several keys)"
        ));
    }
    // NUL bytes (a copy padded or damaged on the way) are no text a key file holds: they
    // were passed over outside the key's lines, and the key accepted.
    if text.chars().any(|c| c.is_control() && !c.is_whitespace()) {
        return Err(
            "it holds NUL or other control bytes, which no key file does: it was damaged on \
             the way; copy it again from where it was made"
                .into(),
        );
    }
    let start = lines.iter().position(|l| l.starts_with("-----BEGIN "));
    let end = lines.iter().position(|l| l.starts_with("-----END "));
    match (start, end) {
        (Some(s), Some(e)) if s < e => Ok(lines[s..=e].join("\n") + "\n"),
        (Some(_), _) => Err(
            "its -----BEGIN line has no -----END line after it: the file was \
                             cut short"
                .into(),
        ),
        _ => Ok(text.to_string()),
    }
}

/// Read a capture site's secret signing key (`site.key`).
pub fn read_signing_key(path: &Path) -> crate::Result<SigningKey> {
    let text = Zeroizing::new(crate::keyfile::read_to_string(path).map_err(|e| {
        crate::exit::coded_hint(
            crate::exit::USAGE,
            format!(
                "cannot read signing key {}: {e}",
                crate::keyfile::named(path, false)
            ),
            "give --sign this capture site's secret signing key: the file `mgear keygen \
                     --signing --out site.key` wrote (a PEM text file, 0600), not its .pub",
        )
    })?);
    if text.trim().is_empty() {
        return Err(usage(format!(
            "{} is empty: give the .key file written by `mgear keygen --signing`",
            path.display()
        )));
    }
    let shown = path.display().to_string();
    if let Some(e) = misplaced(&shown, &text, "--sign", KeyKind::SiteSecret) {
        return Err(e);
    }
    // Without a PEM block the decoder's complaint ("preamble contains invalid
    // data (NUL byte)") describes its own state, not the file.
    if !text.contains("-----BEGIN") {
        return Err(usage(format!(
            "{shown} is not a signing key: it has no -----BEGIN PRIVATE KEY----- block; give \
             the .key file written by `mgear keygen --signing`"
        )));
    }
    let block = Zeroizing::new(one_pem_block(&text).map_err(|why| {
        usage(format!(
            "{shown} is not a signing key file ({why}): give the .key file written by `mgear \
             keygen --signing`"
        ))
    })?);
    let key = SigningKey::from_pkcs8_pem(&block).map_err(|e| {
        usage(format!(
            "{shown} is not an Ed25519 signing key ({}): give the .key file written by \
             `mgear keygen --signing`",
            why_not_ed25519(&e)
        ))
    })?;
    crate::keyfile::warn_if_exposed(path);
    Ok(key)
}

/// The decoder's reason, except for a key of another algorithm: its message ("unknown/
/// unsupported algorithm OID: 1.3.101.112") names the OID it expected, Ed25519's, which reads
/// as if the file held that one.
fn why_not_ed25519(e: &dyn std::fmt::Display) -> String {
    let why = e.to_string();
    if why.contains("algorithm OID") {
        "it holds a key of another algorithm, RSA or ECDSA say: capture sites sign with Ed25519"
            .into()
    } else {
        why
    }
}

/// Read a capture site's public key (`site.pub`).
pub fn read_public_key(path: &Path) -> crate::Result<VerifyingKey> {
    let text = crate::keyfile::read_to_string(path).map_err(|e| {
        crate::exit::coded_hint(
            crate::exit::USAGE,
            format!(
                "cannot read public key {}: {e}",
                crate::keyfile::named(path, false)
            ),
            "give --trust the capture site's public signing key: the .pub file `mgear \
                 keygen --signing` wrote at the capture site (a PEM text file)",
        )
    })?;
    if text.trim().is_empty() {
        return Err(usage(format!(
            "{} is empty: give the .pub file written by `mgear keygen --signing` (a copy cut \
             short on the way holds nothing)",
            path.display()
        )));
    }
    if text.trim_start().starts_with("age1") {
        return Err(usage(format!(
            "{} is the target's encryption key (an age recipient, from `mgear keygen`), not a \
             capture site's signing key: --trust takes the site.pub written by `mgear keygen \
             --signing` at the capture site",
            path.display()
        )));
    }
    if let Some(e) = misplaced(
        &path.display().to_string(),
        &text,
        "--trust",
        KeyKind::SitePublic,
    ) {
        return Err(e);
    }
    let text = one_pem_block(&text).map_err(|why| {
        usage(format!(
            "{} is not a public key file ({why}): give the .pub file written by `mgear keygen \
             --signing`",
            path.display()
        ))
    })?;
    VerifyingKey::from_public_key_pem(&text).map_err(|e| {
        let why = if text.contains("-----BEGIN") {
            why_not_ed25519(&e)
        } else {
            "no PEM block: no -----BEGIN PUBLIC KEY----- line".into()
        };
        usage(format!(
            "{} is not an Ed25519 public key ({why}): give the .pub file written by \
             `mgear keygen --signing`",
            path.display()
        ))
    })
}

/// Full fingerprint of an Ed25519 public key: SHA-256 of its 32 bytes, hex
/// (the same form that names an appliance identity).
pub fn fingerprint(public: &[u8; 32]) -> String {
    mgear_appliance_api::attest::full_fingerprint(public)
}

/// Parse a fingerprint given on the command line (hex; `:` and spaces
/// ignored). Only the full 64-digit form is accepted: a short one could be
/// matched by a key made for the purpose.
pub fn parse_fingerprint(text: &str) -> crate::Result<[u8; 32]> {
    let hex: String = text
        .chars()
        .filter(|c| *c != ':' && !c.is_whitespace())
        .collect();
    let bad = || {
        usage(format!(
            "{text:?} is not a full fingerprint: give the 64 hex digits that \
             `mgear appliance info` prints (its `identity:` line; `fingerprint` in its --json)"
        ))
    };
    if hex.len() != 64 {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(out)
}

/// Does `public` have the fingerprint `pinned`?
pub fn matches(public: &[u8; 32], pinned: &[u8; 32]) -> bool {
    Sha256::digest(public).as_slice() == pinned
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    /// A directory given for a signing key is said to be one.
    /// NUL bytes padding a key file (a copy damaged on the way) are named, not passed over.
    #[test]
    fn nul_bytes_after_the_key_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("site.key");
        generate(&key, false).unwrap();
        let public = dir.path().join("site.pub");
        let mut text = fs::read(&public).unwrap();
        assert!(read_public_key(&public).is_ok());
        text.extend_from_slice(&[0u8; 4096]);
        fs::write(&public, &text).unwrap();
        let e = read_public_key(&public).unwrap_err().to_string();
        assert!(e.contains("NUL or other control bytes"), "{e}");
    }

    #[test]
    fn a_directory_given_for_a_signing_key_is_named_as_one() {
        let dir = tempfile::tempdir().unwrap();
        let sign = read_signing_key(dir.path()).err().unwrap().to_string();
        assert!(sign.contains("it is a directory, not a file"), "{sign}");
    }

    #[test]
    fn generated_pair_reads_back_and_signs() {
        use ed25519_dalek::{Signer, Verifier};
        let dir = tempfile::tempdir().unwrap();
        let key_path = dir.path().join("site.key");
        let public = generate(&key_path, false).unwrap();
        let mode = fs::metadata(&key_path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let secret = read_signing_key(&key_path).unwrap();
        let read_pub = read_public_key(&dir.path().join("site.pub")).unwrap();
        assert_eq!(read_pub, public);
        let sig = secret.sign(b"generation 2");
        assert!(read_pub.verify(b"generation 2", &sig).is_ok());
        assert!(read_pub.verify(b"generation 3", &sig).is_err());
        // The files are the standard encodings: openssl derives the same public key.
        if let Ok(out) = std::process::Command::new("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(&key_path)
            .output()
        {
            assert!(out.status.success(), "openssl refused site.key");
            let pem = fs::read_to_string(dir.path().join("site.pub")).unwrap();
            assert_eq!(String::from_utf8_lossy(&out.stdout), pem);
        }
        // No silent overwrite of a signing key.
        let err = generate(&key_path, false).unwrap_err();
        assert_eq!(crate::exit::code_of(&err), crate::exit::USAGE);
    }

    /// Whitespace a paste or an editor adds (a blank line, spaces, indentation, CRLF, a BOM)
    /// is no reason to refuse a key ("PEM preamble contains invalid data"); two keys in one
    /// file are named as such.
    #[test]
    fn keys_with_whitespace_around_them_read_and_two_keys_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let key_path = dir.path().join("site.key");
        let public = generate(&key_path, false).unwrap();
        let pem = fs::read_to_string(dir.path().join("site.pub")).unwrap();
        let secret = fs::read_to_string(&key_path).unwrap();
        let variants = [
            format!("{pem}\n"),
            format!("\n\n{pem}"),
            pem.lines()
                .map(|l| format!("  {l} "))
                .collect::<Vec<_>>()
                .join("\n"),
            pem.replace('\n', "\r\n"),
            format!("\u{feff}{pem}"),
        ];
        for (n, v) in variants.iter().enumerate() {
            let p = dir.path().join(format!("v{n}.pub"));
            fs::write(&p, v).unwrap();
            assert_eq!(read_public_key(&p).unwrap(), public, "variant {n}: {v:?}");
        }
        let spaced = dir.path().join("spaced.key");
        fs::write(
            &spaced,
            secret
                .lines()
                .map(|l| format!("{l} \n"))
                .collect::<String>(),
        )
        .unwrap();
        fs::set_permissions(&spaced, fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_signing_key(&spaced).unwrap().verifying_key(), public);
        let two = dir.path().join("two.pub");
        fs::write(&two, format!("{pem}{pem}")).unwrap();
        let e = read_public_key(&two).unwrap_err().to_string();
        assert!(e.contains("it holds 2 keys: one key per file"), "{e}");
    }

    #[test]
    fn a_key_of_another_algorithm_is_named_as_such() {
        // A P-256 key pair (`openssl genpkey -algorithm EC`), as a site's own PKI has them.
        const EC_KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgXuge5KXhx0/CffiR
pSLaD1zha5It0EcdGrIRv2Xr6gKhRANCAAQKVr4ac0/IJekEOog3ui5Z4LQz5iZf
gU+avkUVbYSlXZap88rsCMGsTlcEqRr1LRT//fmLwR/Of9mTLLwAZJWY
-----END PRIVATE KEY-----
";
        const EC_PUB: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAECla+GnNPyCXpBDqIN7ouWeC0M+Ym
X4FPmr5FFW2EpV2WqfPK7AjBrE5XBKka9S0U//35i8Efzn/Zkyy8AGSVmA==
-----END PUBLIC KEY-----
";
        let dir = tempfile::tempdir().unwrap();
        let (k, p) = (dir.path().join("ec.key"), dir.path().join("ec.pub"));
        fs::write(&k, EC_KEY).unwrap();
        fs::write(&p, EC_PUB).unwrap();
        for e in [
            read_signing_key(&k).unwrap_err(),
            read_public_key(&p).unwrap_err(),
        ] {
            assert_eq!(crate::exit::code_of(&e), crate::exit::USAGE);
            let m = e.to_string();
            assert!(m.contains("a key of another algorithm"), "{m}");
            assert!(!m.contains("1.3.101.112"), "{m}");
        }
    }

    #[test]
    fn empty_key_files_are_called_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("site.pub");
        fs::write(&path, "\n").unwrap();
        let e = read_public_key(&path).unwrap_err();
        assert_eq!(crate::exit::code_of(&e), crate::exit::USAGE);
        assert!(e.to_string().contains("site.pub is empty"), "{e}");
        let e = read_signing_key(&path).unwrap_err();
        assert!(e.to_string().contains("site.pub is empty"), "{e}");
        // The target's age key where the site's signing key belongs is named as such.
        fs::write(
            &path,
            "age1f7ndpj5fxef4l677rtjt324ahk0ajgqxtxh6lcpcg7l3ql7zhsuqwn22wy\n",
        )
        .unwrap();
        let e = read_public_key(&path).unwrap_err();
        assert!(
            e.to_string().contains("encryption key (an age recipient"),
            "{e}"
        );
        fs::write(&path, "hello\n").unwrap();
        let e = read_public_key(&path).unwrap_err();
        assert!(e.to_string().contains("no PEM block"), "{e}");
    }

    #[test]
    fn fingerprints_round_trip_and_short_ones_are_refused() {
        let key = SigningKey::from_bytes(&[7u8; 32]);
        let public = key.verifying_key().to_bytes();
        let fp = fingerprint(&public);
        assert_eq!(fp.len(), 64);
        let grouped: String = fp
            .as_bytes()
            .chunks(4)
            .map(|c| std::str::from_utf8(c).unwrap().to_uppercase())
            .collect::<Vec<_>>()
            .join(":");
        let parsed = parse_fingerprint(&grouped).unwrap();
        assert!(matches(&public, &parsed));
        assert!(!matches(&[8u8; 32], &parsed));
        let short = parse_fingerprint(&fp[..16]).unwrap_err();
        assert_eq!(crate::exit::code_of(&short), crate::exit::USAGE);
        assert!(parse_fingerprint(&"zz".repeat(32)).is_err());
    }

    #[test]
    fn other_keys_given_as_the_signing_key_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target.key");
        // The target's pair as `mgear keygen` writes it (not called: keys
        // sits above this module).
        let id = age::x25519::Identity::generate();
        fs::write(
            &target,
            format!(
                "# public key: {}\n{}\n",
                id.to_public(),
                age::secrecy::ExposeSecret::expose_secret(&id.to_string())
            ),
        )
        .unwrap();
        fs::write(
            dir.path().join("target.pub"),
            format!("{}\n", id.to_public()),
        )
        .unwrap();
        let site = dir.path().join("site.key");
        generate(&site, false).unwrap();
        let garbage = dir.path().join("garbage");
        fs::write(&garbage, "garbage\n").unwrap();
        let cases = [
            (
                dir.path().join("target.pub"),
                "target's public encryption key",
            ),
            (target.clone(), "target's SECRET identity"),
            (dir.path().join("site.pub"), "--sign takes the secret half"),
            (garbage, "no -----BEGIN PRIVATE KEY----- block"),
        ];
        for (path, says) in cases {
            let e = read_signing_key(&path).unwrap_err();
            assert_eq!(crate::exit::code_of(&e), crate::exit::USAGE);
            let m = e.to_string();
            assert!(m.contains(says), "{m}");
            assert!(!m.contains("NUL byte"), "{m}");
        }
        // And the site's secret key given to --trust.
        let m = read_public_key(&site).unwrap_err().to_string();
        assert!(m.contains("stays at the capture site"), "{m}");
        assert!(m.contains("site.pub"), "{m}");
    }

    #[test]
    fn junk_key_files_are_usage_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("junk");
        fs::write(
            &p,
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        assert_eq!(
            crate::exit::code_of(&read_signing_key(&p).unwrap_err()),
            crate::exit::USAGE
        );
        assert_eq!(
            crate::exit::code_of(&read_public_key(&p).unwrap_err()),
            crate::exit::USAGE
        );
    }
}
