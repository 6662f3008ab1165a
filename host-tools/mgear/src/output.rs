//! One output style for every `mgear` command.
//!
//! Human output is a few lines on stdout (progress and warnings go to
//! stderr). With `--json` (accepted by every command) stdout carries exactly
//! one JSON object per result, in one schema style:
//!
//! - a top-level object that starts with `"ok"` (true when the command exits
//!   0) and `"command"` (`"capture"`, `"appliance seal"`, ...);
//! - snake_case keys; sizes in bytes (`*_bytes`, `disk_size`); durations in
//!   seconds (`seconds`, `*_seconds`); times as ISO-8601 UTC strings
//!   (`2026-12-02T07:13:08Z`); digests, keys and ids as lowercase hex;
//! - on failure, `{"ok":false,"command":...,"error":{"code":N,"kind":
//!   "failure|usage|io","message":...,"hint":...}}` with the same exit code
//!   `N` the process exits with (see `exit.rs`).
//!
//! `main.rs` calls [`init`] once the command line is parsed; commands call
//! [`emit`] (or [`crate::progress::print_json`], which forwards here).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use serde::Serialize;
use serde_json::{Map, Value};

static JSON: AtomicBool = AtomicBool::new(false);
static COMMAND: OnceLock<String> = OnceLock::new();

/// `s` as a shell reads it back (quoted only when it has to be): a path with a space in a
/// command a hint prints made the wrong directories when pasted.
pub fn sh(s: impl AsRef<str>) -> String {
    let s = s.as_ref();
    shlex::try_quote(s).map_or_else(|_| s.to_string(), |q| q.into_owned())
}

/// Refuse (exit 2) a file `path` to be made in a directory that does not exist, naming the
/// directory and the `mkdir` that makes it (`also`: said after that command); `flag` is the
/// option as given (`--out x/k.key`). The creation's own error named the file, with the
/// generic advice to reconnect something.
pub fn refuse_missing_parent(flag: &str, path: &std::path::Path, also: &str) -> crate::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    };
    if dir.is_dir() {
        return Ok(());
    }
    Err(crate::exit::usage(format!(
        "{flag}: the directory {} does not exist: create it (`mkdir -p -- {}`{also}) or give a \
         path in an existing directory; nothing was written",
        dir.display(),
        sh(dir.to_string_lossy())
    )))
}

/// Record the command's name (`"appliance log"`) and whether `--json` was given.
pub fn init(command: &str, json: bool) {
    let _ = COMMAND.set(command.to_string());
    JSON.store(json, Ordering::Relaxed);
}

/// Turn JSON output off (`false`) or back on while a command runs others' steps: the demo's
/// steps printed their own JSON objects, labelled `demo`, beside its one.
pub fn set_json(json: bool) {
    JSON.store(json, Ordering::Relaxed);
}

/// Was `--json` given?
pub fn json() -> bool {
    JSON.load(Ordering::Relaxed)
}

/// The running command's name (`"mgear"` before [`init`]).
pub fn command() -> &'static str {
    COMMAND.get().map_or("mgear", String::as_str)
}

/// The envelope: `ok` and `command` first, then the command's own fields.
#[derive(Serialize)]
struct Envelope<'a> {
    ok: bool,
    command: &'a str,
    /// A stream's event (`serve`: `listening`, `stopped`) third, before the fields it has.
    #[serde(skip_serializing_if = "Option::is_none")]
    event: Option<Value>,
    #[serde(flatten)]
    rest: Map<String, Value>,
}

impl Envelope<'_> {
    fn new(ok: bool, mut rest: Map<String, Value>) -> Self {
        Envelope {
            ok,
            command: command(),
            event: rest.remove("event"),
            rest,
        }
    }
}

/// `value` split into the envelope's verdict and the remaining fields. A
/// value that is not an object goes under `"result"`; an `ok` or `command`
/// field of its own is replaced (a false `ok` of the value wins: verify
/// reports its own verdict).
fn parts<T: Serialize>(ok: bool, value: &T) -> crate::Result<(bool, Map<String, Value>)> {
    let mut rest = match serde_json::to_value(value)? {
        Value::Object(m) => m,
        other => {
            let mut m = Map::new();
            m.insert("result".into(), other);
            m
        }
    };
    let ok = match rest.remove("ok") {
        Some(Value::Bool(b)) => b && ok,
        _ => ok,
    };
    rest.remove("command");
    Ok((ok, rest))
}

/// `value` in the envelope, as one line of JSON with `ok` and `command` first.
pub fn envelope_line<T: Serialize>(ok: bool, value: &T) -> crate::Result<String> {
    let (ok, rest) = parts(ok, value)?;
    Ok(serde_json::to_string(&Envelope::new(ok, rest))?)
}

/// Print `value` in the envelope as one JSON line on stdout (`ok` from the
/// value, else true): for a command that then exits 0. One that may exit
/// non-zero calls [`emit_ok`] with its verdict.
pub fn emit<T: Serialize>(value: &T) -> crate::Result<()> {
    emit_ok(true, value)
}

/// [`emit_ok`] of a command about to exit `code`: not 0, the object carries the envelope's
/// `error` (code, kind, `message`, the class's hint) as every failure's does (a verify that
/// found problems, a plan that does not fit, a boot not proven printed `"ok":false` and
/// nothing a script reading `error` could find).
pub fn emit_verdict<T: Serialize>(code: i32, message: &str, value: &T) -> crate::Result<()> {
    emit_verdict_hint(
        code,
        message,
        &crate::exit::class_hint(code, command()),
        value,
    )
}

/// [`emit_verdict`] with the next step `hint` (the class's hint said "reconnect it" of a
/// plan that did not fit).
pub fn emit_verdict_hint<T: Serialize>(
    code: i32,
    message: &str,
    hint: &str,
    value: &T,
) -> crate::Result<()> {
    if code == crate::exit::OK {
        return emit_ok(true, value);
    }
    let mut v = serde_json::to_value(value)?;
    if let Value::Object(m) = &mut v {
        if !m.contains_key("error") {
            m.insert("error".into(), error_value(code, message, hint));
        }
    }
    emit_ok(false, &v)
}

/// [`emit`] with an explicit verdict (false for a command that exits non-zero).
pub fn emit_ok<T: Serialize>(ok: bool, value: &T) -> crate::Result<()> {
    let (ok, mut rest) = parts(ok, value)?;
    // A verdict of "not ok" without its `error` (the commands that say what they found in
    // their own fields: a failed check, a custody log that does not verify): the envelope's
    // error all the same, a found failure (exit 1) as these are.
    if !ok && !rest.contains_key("error") {
        let hint = crate::exit::class_hint(crate::exit::FOUND, command());
        rest.insert(
            "error".into(),
            error_value(
                crate::exit::FOUND,
                &format!(
                    "{}: a check failed: the fields of this object say which",
                    command()
                ),
                &hint,
            ),
        );
    }
    if ok {
        EMITTED_OK.store(true, Ordering::Relaxed);
    }
    let carries_error = !ok && rest.contains_key("error");
    let line = serde_json::to_string(&Envelope::new(ok, rest))?;
    if ok {
        println!("{line}");
    } else {
        // A failure's report where stdout cannot take it: the failure is still said on
        // stderr with its own code (the panic of `println!` called it "what the command did
        // stands", exit 3).
        use std::io::Write as _;
        if writeln!(std::io::stdout(), "{line}").is_err() {
            return Ok(());
        }
    }
    if carries_error {
        EMITTED_ERROR.store(true, Ordering::Relaxed);
    }
    Ok(())
}

/// Set once an envelope with `"ok":false` and its `error` was printed: the command's report
/// carried its failure, and `main.rs` prints no second object when the command then fails.
static EMITTED_ERROR: AtomicBool = AtomicBool::new(false);

/// Was a failed envelope with its `error` printed? (`--json` prints exactly one object.)
pub fn emitted_error() -> bool {
    EMITTED_ERROR.load(Ordering::Relaxed)
}

/// Set once an envelope with `"ok":true` was printed.
static EMITTED_OK: AtomicBool = AtomicBool::new(false);

/// Was an envelope with `"ok":true` printed? `main.rs` checks that a
/// command exiting non-zero printed none (README: `ok` is true only on exit 0).
pub fn emitted_ok() -> bool {
    EMITTED_OK.load(Ordering::Relaxed)
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    code: i32,
    kind: &'a str,
    message: &'a str,
    hint: &'a str,
}

/// The `error` object of a failed command, for a report that carries it itself.
pub fn error_value(code: i32, message: &str, hint: &str) -> Value {
    serde_json::to_value(ErrorBody {
        code,
        kind: crate::exit::kind(code),
        message: &redact_secrets(message),
        hint: &redact_secrets(hint),
    })
    .unwrap_or(Value::Null)
}

/// Warnings a command gave before it failed ([`warn_before_failing`]).
static WARNINGS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Keep `warning` for the `--json` error object, should the command fail: a warning it gave
/// before (a cutover of one disk of a set) was on stderr only when the cutover then failed.
pub fn warn_before_failing(warning: &str) {
    if let Ok(mut w) = WARNINGS.lock() {
        w.push(warning.to_string());
    }
}

/// Warnings said on stderr by the code a command shares with others (a secret key file
/// others can read), for its `warnings` list: they were on stderr only, where `--json` and
/// the report promise "each warning the run also printed on stderr".
static SIDE: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Keep `warning` (already printed) for the command's `warnings`, and for its `--json`
/// error object should it fail.
pub fn side_warning(warning: &str) {
    if let Ok(mut w) = SIDE.lock() {
        w.push(warning.to_string());
    }
    warn_before_failing(warning);
}

/// What [`side_warning`] kept.
pub fn side_warnings() -> Vec<String> {
    SIDE.lock().map(|w| w.clone()).unwrap_or_default()
}

/// What a secret key given where a path or an option belongs leaves of itself in a message:
/// nothing. A PEM private key with its base64 (`--sign "$(cat site.key)"`, which the argument
/// parser took for an option and quoted whole) and an age secret key are replaced by a
/// placeholder; a message that only names the kind (`-----BEGIN PRIVATE KEY-----`) is kept.
pub fn redact_secrets(s: &str) -> std::borrow::Cow<'_, str> {
    const SAID: &str = "[a secret key: not repeated here; treat it as exposed]";
    if !s.contains("PRIVATE KEY") && !s.contains("AGE-SECRET-KEY-1") {
        return std::borrow::Cow::Borrowed(s);
    }
    // The byte range of the first secret in `t`, if any.
    let next = |t: &str| -> Option<(usize, usize)> {
        let mut found: Option<(usize, usize)> = None;
        let mut from = 0;
        while let Some(b) = t[from..].find("-----BEGIN ").map(|b| b + from) {
            let after_marker = t[b + 11..].find("-----").map(|m| b + 11 + m + 5);
            let (Some(body), true) = (after_marker, t[b..].starts_with("-----BEGIN ")) else {
                break;
            };
            let is_private = t[b..body].contains("PRIVATE KEY");
            let end = t[body..].find("-----END ").map(|e| body + e);
            if let (true, Some(e)) = (is_private, end) {
                let key_chars = t[body..e]
                    .chars()
                    .filter(|c| c.is_ascii_alphanumeric() || *c == '+' || *c == '/')
                    .count();
                if key_chars >= 16 {
                    let close = t[e + 9..].find("-----").map_or(t.len(), |k| e + 9 + k + 5);
                    found = Some((b, close));
                    break;
                }
            }
            from = body;
        }
        // A key is 58 Bech32 characters after its prefix ("AGE-SECRET-KEY-1..." in a hint is
        // no key).
        let age = t.match_indices("AGE-SECRET-KEY-1").find_map(|(a, _)| {
            let len = t[a..]
                .find(|c: char| !c.is_ascii_alphanumeric() && c != '-')
                .unwrap_or(t.len() - a);
            (len >= 16 + 40).then_some((a, a + len))
        });
        match (found, age) {
            (Some(p), Some(a)) => Some(if p.0 < a.0 { p } else { a }),
            (p, a) => p.or(a),
        }
    };
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some((a, b)) = next(rest) {
        out.push_str(&rest[..a]);
        out.push_str(SAID);
        rest = &rest[b..];
    }
    if out.is_empty() {
        return std::borrow::Cow::Borrowed(s);
    }
    out.push_str(rest);
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod redact_tests {
    use super::redact_secrets;

    /// A secret key in a message is replaced, PEM (on lines or joined by spaces) and age; a
    /// message naming the kind of a key file only is kept.
    #[test]
    fn secret_keys_are_not_repeated() {
        let pem = "unexpected argument '-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIK+oSq75\n-----END PRIVATE KEY-----' found";
        let r = redact_secrets(pem);
        assert!(
            !r.contains("MC4C") && r.starts_with("unexpected argument '[a secret key"),
            "{r}"
        );
        assert!(r.ends_with("' found"), "{r}");
        let joined = "'-----BEGIN PRIVATE KEY----- MC4CAQAwBQYDK2Vw -----END PRIVATE KEY-----'";
        assert!(!redact_secrets(joined).contains("MC4C"));
        let age = "cannot read AGE-SECRET-KEY-1Q5K72K8A9J6ESCFNHEJED8J6YDJQ794XWHEGSUJYCG4LCE245N2SQFGAEF: no such file";
        let r = redact_secrets(age);
        assert!(!r.contains("Q5K72") && r.ends_with(": no such file"), "{r}");
        for kept in [
            "-----BEGIN PUBLIC KEY----- is a public key",
            "site.key is a SECRET signing key (-----BEGIN PRIVATE KEY-----, the .key written)",
            "a key file (-----BEGIN PRIVATE KEY----- ... -----END PRIVATE KEY-----)",
            "the .key file (AGE-SECRET-KEY-1...)",
        ] {
            let r = redact_secrets(kept);
            assert!(!r.contains("[a secret key"), "{r}");
        }
    }
}

/// The `--json` form of a failed command (one line); `warnings` when it gave any before.
pub fn error_line(code: i32, message: &str, hint: &str) -> String {
    let (message, hint) = (&*redact_secrets(message), &*redact_secrets(hint));
    #[derive(Serialize)]
    struct Failed<'a> {
        ok: bool,
        command: &'a str,
        error: ErrorBody<'a>,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        warnings: Vec<String>,
    }
    serde_json::to_string(&Failed {
        ok: false,
        command: command(),
        error: ErrorBody {
            code,
            kind: crate::exit::kind(code),
            message,
            hint,
        },
        warnings: WARNINGS.lock().map(|w| w.clone()).unwrap_or_default(),
    })
    .unwrap_or_else(|_| format!("{{\"ok\":false,\"error\":{{\"code\":{code}}}}}"))
}

/// The name serde gives `v` (`"timed-out"`, `"bios"`): the word `--json`
/// uses, for human output too (never Debug text such as `TimedOut`).
pub fn serde_name<T: Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(Value::String(s)) => s,
        Ok(other) => other.to_string(),
        Err(_) => "?".to_string(),
    }
}

/// Seconds since the Unix epoch as ISO-8601 UTC (`2026-12-02T07:13:08Z`).
pub fn iso_time(unix_secs: u64) -> String {
    i64::try_from(unix_secs)
        .ok()
        .and_then(|s| chrono::DateTime::from_timestamp(s, 0))
        .map_or_else(
            || format!("@{unix_secs}"),
            |t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        )
}

/// A wall-clock instant as ISO-8601 UTC.
pub fn iso(t: std::time::SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Now, as ISO-8601 UTC.
pub fn now_iso() -> String {
    iso(std::time::SystemTime::now())
}

/// The first `max` of `names`, each [`printable`], joined by ", " (what a directory found
/// hidden on a medium held).
pub fn printable_names(names: &[String], max: usize) -> String {
    names
        .iter()
        .take(max)
        .map(|n| printable(n))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `s` with its control characters (escape sequences, carriage returns,
/// newlines) written as `\u{1b}`: text read from a medium (a source
/// description, the OS string found inside the disk) is anyone's who had the
/// medium, and printed raw it could rewrite what the terminal shows.
pub fn printable(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(s);
    }
    s.chars()
        .map(|c| match c.is_control() {
            true => c.escape_unicode().to_string(),
            false => c.to_string(),
        })
        .collect::<String>()
        .into()
}

/// [`printable`] line by line: a message of several lines keeps its line breaks, and every
/// other control character off a medium or a peer is escaped.
pub fn printable_lines(s: &str) -> String {
    s.split('\n')
        .map(|l| printable(l).into_owned())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Rewrite the byte-string fields named `keys` (serialised by serde as
/// arrays of numbers, e.g. the firmware's `#[serde(with = "serde_bytes")]`
/// keys and digests) as hex strings, anywhere in `v`; a list of byte strings
/// (attestation regions) becomes a list of hex strings. Only the named keys
/// change, so a list of counters never turns into hex by accident.
pub fn hex_fields(v: &mut Value, keys: &[&str]) {
    fn bytes(v: &Value) -> Option<Vec<u8>> {
        v.as_array()?
            .iter()
            .map(|x| x.as_u64().and_then(|n| u8::try_from(n).ok()))
            .collect()
    }
    match v {
        Value::Object(m) => {
            for (k, x) in m.iter_mut() {
                if keys.contains(&k.as_str()) {
                    if let Some(b) = bytes(x).filter(|b| !b.is_empty()) {
                        *x = Value::String(hex(&b));
                        continue;
                    }
                    if let Value::Array(items) = x {
                        if !items.is_empty() && items.iter().all(|i| bytes(i).is_some()) {
                            for i in items.iter_mut() {
                                *i = Value::String(hex(&bytes(i).unwrap_or_default()));
                            }
                            continue;
                        }
                    }
                }
                hex_fields(x, keys);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|x| hex_fields(x, keys)),
        _ => {}
    }
}

/// Say on stderr what opening medium `label` put right below its files, when a run that was
/// cut off (killed, unplugged) had left it mid-write: an operator sees the medium was touched
/// and why (damage it leaves alone is said where a write is refused).
pub fn say_put_right<D: image_format::store::FatDevice>(
    label: &str,
    store: &image_format::store::FatStore<D>,
) {
    let Some(Ok(r)) = store.after_cut() else {
        return;
    };
    let counted = [
        (
            r.clusters_freed,
            "cluster",
            "clusters",
            "no file held, freed",
        ),
        (
            r.chains_cut,
            "chain",
            "chains",
            "cut back to its file's size",
        ),
        (r.dirs_fixed, "directory", "directories", "put right"),
        (
            r.copy_entries_fixed,
            "FAT entry",
            "FAT entries",
            "made the same in both copies",
        ),
    ];
    let named = |paths: &[String], done: &str| {
        let shown: Vec<&str> = paths.iter().take(3).map(String::as_str).collect();
        let more = match paths.len() {
            n if n > 3 => format!(" and {} more", n - 3),
            _ => String::new(),
        };
        format!("{}{more} {done}", shown.join(", "))
    };
    let mut parts: Vec<String> = counted
        .iter()
        .filter(|(n, ..)| *n > 0)
        .map(|(n, one, many, done)| format!("{n} {} {done}", if *n == 1 { one } else { many }))
        .collect();
    if !r.dirs_removed.is_empty() {
        parts.push(named(
            &r.dirs_removed,
            "(empty, freed by a removal that was cut off) dropped",
        ));
    }
    if !r.shortened.is_empty() {
        parts.push(named(
            &r.shortened,
            "cut back to the clusters its chain still held (a truncation or removal was cut \
             off mid-way: what a capture's resume cuts back anyway; `mgear verify` says whether \
             a finished capture lost anything)",
        ));
    }
    // Nothing below the files to mend: the mark (and the free count) set right is said too,
    // as the README promises of every writer (the medium changed without a word).
    if parts.is_empty() {
        parts.push(
            "its mid-write mark cleared and its free space counted again (nothing else needed \
             mending)"
                .to_string(),
        );
    }
    eprintln!(
        "mgear: {label} was left mid-write by a run that was cut off (killed, unplugged, or its \
         appliance locked or powered off under it); its file system is put right as `fsck.fat \
         -a` would: {}",
        parts.join(", ")
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sh_quotes_only_what_a_shell_would_split() {
        assert_eq!(sh("fat:/media/m.img"), "fat:/media/m.img");
        assert_eq!(sh("fat:my medium.img"), "'fat:my medium.img'");
        assert_eq!(sh("it's"), "\"it's\"");
    }

    #[test]
    fn printable_escapes_control_characters_and_keeps_the_rest() {
        assert!(matches!(
            printable("web01 /srv/ä.raw"),
            std::borrow::Cow::Borrowed(_)
        ));
        let shown = printable("x\u{1b}[2K\r\nTRUSTED");
        assert_eq!(shown, "x\\u{1b}[2K\\u{d}\\u{a}TRUSTED");
        assert!(!shown.chars().any(char::is_control));
    }

    #[test]
    fn envelope_puts_ok_and_command_first_and_keeps_fields() {
        #[derive(Serialize)]
        struct R {
            disk_size: u64,
            command: &'static str,
            ok: bool,
        }
        let r = R {
            disk_size: 5,
            command: "x",
            ok: false,
        };
        // The value's own false verdict wins; its `command` is replaced.
        assert_eq!(
            envelope_line(true, &r).unwrap(),
            r#"{"ok":false,"command":"mgear","disk_size":5}"#
        );
        assert_eq!(
            envelope_line(true, &3).unwrap(),
            r#"{"ok":true,"command":"mgear","result":3}"#
        );
        let e: Value = serde_json::from_str(&error_line(2, "bad", "do x")).unwrap();
        assert_eq!(e["ok"], false);
        assert_eq!(e["error"]["code"], 2);
        assert_eq!(e["error"]["kind"], "usage");
        assert_eq!(e["error"]["hint"], "do x");
        assert!(error_line(3, "m", "h").starts_with(r#"{"ok":false,"command":"#));
        // A stream's event comes third, before its fields (`address` sorted before it).
        assert_eq!(
            envelope_line(
                true,
                &serde_json::json!({"event": "listening", "address": "127.0.0.1:1"})
            )
            .unwrap(),
            r#"{"ok":true,"command":"mgear","event":"listening","address":"127.0.0.1:1"}"#
        );
    }

    #[test]
    fn times_are_iso_utc() {
        assert_eq!(iso_time(0), "1970-01-01T00:00:00Z");
        assert_eq!(iso_time(1_796_196_193), "2026-12-02T07:23:13Z");
        assert_eq!(iso_time(u64::MAX), format!("@{}", u64::MAX));
    }

    #[test]
    fn named_byte_fields_become_hex() {
        let mut v = serde_json::json!({
            "identity": [1, 2, 255],
            "regions": [[0, 16], [171, 205]],
            "counters": [1, 2, 3],
            "event": {"Seal": {"attestation": [222, 173], "counter": 1}},
            "challenge": null,
        });
        hex_fields(&mut v, &["identity", "regions", "attestation", "challenge"]);
        assert_eq!(v["identity"], "0102ff");
        assert_eq!(v["regions"], serde_json::json!(["0010", "abcd"]));
        assert_eq!(v["counters"], serde_json::json!([1, 2, 3]));
        assert_eq!(v["event"]["Seal"]["attestation"], "dead");
        assert_eq!(v["event"]["Seal"]["counter"], 1);
        assert!(v["challenge"].is_null());
    }
}
