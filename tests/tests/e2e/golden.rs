//! Golden-output tests (trycmd): every command's and subcommand's `--help`
//! (`tests/cmd/help/*.toml` with their `.stdout`), the human output of a
//! field journey and the exit codes of the errors users make
//! (`tests/cmd/*.trycmd`). After changing a help text or a message,
//! regenerate with
//! `TRYCMD=overwrite cargo test -p mgear-tests --test e2e golden::` and
//! review the diff (tests/README.md).

use std::path::Path;

#[test]
fn golden_cli_output() {
    let cmd = Path::new(env!("CARGO_MANIFEST_DIR")).join("cmd");
    let state = tempfile::tempdir().expect("tempdir");
    trycmd::TestCases::new()
        .register_bin("mgear", mgear_tests::bin("mgear"))
        // Capture keeps its key cache here, never in the user's home.
        .env("XDG_STATE_HOME", state.path().display().to_string())
        .case(cmd.join("help/*.toml"))
        .case(cmd.join("*.trycmd"))
        .run();
}

/// What the golden files cannot pin (random digests, times): the ticket
/// reports and `--json` errors, checked field by field.
mod fields {
    use mgear_tests::{output_text, Env};
    use serde_json::Value;

    use crate::appliance_util::Lab;

    /// `2026-12-02T07:13:08Z`
    fn is_iso_utc(v: &Value) -> bool {
        v.as_str().is_some_and(|s| {
            let b = s.as_bytes();
            s.len() == 20 && b[4] == b'-' && b[10] == b'T' && b[13] == b':' && s.ends_with('Z')
        })
    }

    fn is_hex(v: &Value, len: usize) -> bool {
        v.as_str()
            .is_some_and(|s| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit()))
    }

    fn read_json(env: &Env, name: &str) -> Value {
        serde_json::from_slice(&std::fs::read(env.p(name)).unwrap()).unwrap()
    }

    #[test]
    fn capture_and_ingest_reports_carry_digests_signatures_and_times() {
        let env = Env::new();
        env.keygen();
        let site = env.json(&["keygen", "--signing", "--out", "site.key"]);
        let site_fp = site["fingerprint"].as_str().unwrap().to_string();
        let m = env.fat("medium.img", "64MiB");
        let disk: Vec<u8> = (0..3u32 << 20)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        std::fs::write(env.p("disk.raw"), &disk).unwrap();
        let c = env
            .capture(&m, "web01")
            .source("disk.raw")
            .sign("site.key")
            .args(&["--report", "capture.json"])
            .json();
        assert_eq!(
            (c["ok"].clone(), c["command"].clone()),
            (true.into(), "capture".into())
        );
        env.ingest(&m, "web01")
            .trust("site.pub")
            .args(&["--expect-generation", "1"])
            .target("file:web01.raw")
            .args(&["--report", "ingest.json"])
            .ok();
        mgear_tests::same_file(&env.p("disk.raw"), &env.p("web01.raw"));
        let i = env.json(&["inspect", "--medium", &m]);
        let root = i["captures"][0]["generations"][0]["manifest_root"].clone();
        assert!(is_hex(&root, 64), "{i}");
        assert!(
            is_iso_utc(&i["captures"][0]["generations"][0]["created"]),
            "{i}"
        );

        let cap = read_json(&env, "capture.json");
        assert_eq!(cap["report"], "mgear-capture-report/1", "{cap}");
        assert_eq!(cap["digests"]["manifest_root"], root, "{cap}");
        assert_eq!(
            cap["digests"]["capture_id"], c["receipt"]["capture_id"],
            "{cap}"
        );
        assert!(is_hex(&cap["digests"]["commit_digest"], 64), "{cap}");
        assert_eq!(cap["signatures"][0]["role"], "site", "{cap}");
        assert_eq!(
            cap["signatures"][0]["fingerprint"],
            site_fp.as_str(),
            "{cap}"
        );
        assert!(
            is_iso_utc(&cap["started"]) && is_iso_utc(&cap["finished"]),
            "{cap}"
        );
        assert_eq!(cap["result"]["bytes_read"], 3 << 20, "{cap}");

        let ing = read_json(&env, "ingest.json");
        assert_eq!(
            (ing["ok"].clone(), ing["command"].clone()),
            (true.into(), "ingest".into())
        );
        assert_eq!(ing["digests"]["manifest_root"], root, "{ing}");
        assert_eq!(
            ing["digests"]["capture_id"], c["receipt"]["capture_id"],
            "{ing}"
        );
        assert!(is_hex(&ing["digests"]["disk_digest"], 64), "{ing}");
        assert_eq!(
            ing["signatures"][0]["fingerprint"],
            site_fp.as_str(),
            "{ing}"
        );
        assert_eq!(ing["signatures"][0]["via"], "COMMIT", "{ing}");
        assert_eq!(ing["result"]["verified"], true, "{ing}");
        assert_eq!(ing["result"]["bytes_written"], 3 << 20, "{ing}");

        let txt = std::fs::read_to_string(env.p("ingest.txt")).unwrap();
        assert!(txt.contains(root.as_str().unwrap()), "{txt}");
        assert!(txt.contains(&site_fp), "{txt}");
        assert!(txt.contains("verified        yes"), "{txt}");
        assert!(!txt.contains('[') && !txt.contains('{'), "{txt}");
        let txt = std::fs::read_to_string(env.p("capture.txt")).unwrap();
        assert!(txt.contains("3.00 MiB (3145728 bytes)"), "{txt}");
        // The recipients, which the wrong-key advice at the target sends one to: in the text
        // too, and in a delta's report (which names no --recipient) as the cache recorded them.
        let pubkey = std::fs::read_to_string(env.p("target.pub")).unwrap();
        let pubkey = pubkey
            .lines()
            .find(|l| l.starts_with("age1"))
            .expect("target.pub's key");
        assert!(txt.contains(&format!("encrypted to    {pubkey}")), "{txt}");
        let d = env
            .capture(&m, "web01")
            .source("disk.raw")
            .sign("site.key")
            .args(&["--delta", "--report", "delta.json"])
            .json();
        assert_eq!(d["recipients"][0], pubkey, "{d}");
        let txt = std::fs::read_to_string(env.p("delta.txt")).unwrap();
        assert!(txt.contains(&format!("encrypted to    {pubkey}")), "{txt}");
    }

    /// An ingest re-run refused (a mistyped `--generation`) kept the report of the ingest that
    /// wrote the volume only while the volume still holds what it says; once the volume has
    /// changed, the refusal is the report.
    #[test]
    fn a_refused_ingest_re_run_keeps_the_report_the_volume_still_matches() {
        let env = Env::new();
        env.keygen();
        let m = env.fat("medium.img", "64MiB");
        std::fs::write(env.p("disk.raw"), vec![7u8; 2 << 20]).unwrap();
        env.capture(&m, "web01").source("disk.raw").ok();
        let ingest = |more: &[&str]| {
            env.ingest(&m, "web01")
                .target("file:web01.raw")
                .args(&["--allow-untrusted", "--report", "ingest.json"])
                .args(more)
                .run()
        };
        let o = ingest(&[]);
        assert_eq!(o.status.code(), Some(0), "{}", output_text(&o));
        let before = std::fs::read(env.p("ingest.json")).unwrap();
        let o = ingest(&["--generation", "5"]);
        assert_eq!(o.status.code(), Some(2), "{}", output_text(&o));
        assert!(
            output_text(&o).contains("which still holds what it says: kept"),
            "{}",
            output_text(&o)
        );
        assert_eq!(std::fs::read(env.p("ingest.json")).unwrap(), before);
        // Another capture's ingest refused into the same volume and report: kept too (it was
        // replaced by the refusal of web02, the report of what web01.raw holds lost).
        std::fs::write(env.p("other.raw"), vec![9u8; 2 << 20]).unwrap();
        env.capture(&m, "web02").source("other.raw").ok();
        let o = env
            .ingest(&m, "web02")
            .target("file:./web01.raw")
            .args(&["--allow-untrusted", "--report", "ingest.json"])
            .run();
        assert_eq!(o.status.code(), Some(2), "{}", output_text(&o));
        assert!(
            output_text(&o).contains("which still holds what it says: kept"),
            "{}",
            output_text(&o)
        );
        assert_eq!(std::fs::read(env.p("ingest.json")).unwrap(), before);
        // The volume written since: the earlier report no longer describes it.
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(env.p("web01.raw"))
            .unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, b"changed", 4096).unwrap();
        drop(f);
        let o = ingest(&["--generation", "5"]);
        assert_eq!(o.status.code(), Some(2), "{}", output_text(&o));
        let r = read_json(&env, "ingest.json");
        assert_eq!(r["ok"], false, "{r}");
        assert!(
            r["result"]["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("no generation 5")),
            "{r}"
        );
    }

    /// `--help --json` is one JSON object like every other answer with `--json` (it printed
    /// the help as plain text).
    #[test]
    fn help_with_json_is_one_object() {
        let env = Env::new();
        for (args, command) in [
            (vec!["capture", "--help", "--json"], "capture"),
            (vec!["--json", "medium", "rm", "--help"], "medium rm"),
            // clap's `help` took command names only: `--json` was "an unrecognized subcommand".
            (vec!["help", "appliance", "log", "--json"], "appliance log"),
        ] {
            let o = env.run(&args);
            assert_eq!(o.status.code(), Some(0), "{args:?}");
            let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
                panic!("{args:?}: {e}: {}", String::from_utf8_lossy(&o.stdout))
            });
            assert_eq!(v["ok"], true, "{v}");
            assert_eq!(v["command"], command, "{v}");
            assert!(
                v["help"]
                    .as_str()
                    .unwrap()
                    .contains(&format!("Usage: mgear {command}")),
                "{v}"
            );
        }
    }

    #[test]
    fn json_errors_are_one_object_with_the_exit_code() {
        let env = Env::new();
        env.keygen();
        env.ok(&["keygen", "--signing", "--out", "site.key"]);
        let m = env.fat("medium.img", "64MiB");
        std::fs::write(env.p("disk.raw"), vec![7u8; 1 << 20]).unwrap();
        env.capture(&m, "web01")
            .source("disk.raw")
            .sign("site.key")
            .ok();
        let ingest = |name: &str, trust: bool| {
            let mut a = vec![
                "ingest",
                "--medium",
                &m,
                "--name",
                name,
                "--identity",
                "target.key",
                "--target",
                "file:v.raw",
                "--json",
            ];
            if trust {
                a.extend(["--trust", "site.pub"]);
            }
            a.into_iter().map(String::from).collect::<Vec<_>>()
        };
        let cases: Vec<(Vec<String>, i32, &str)> = vec![
            (ingest("web01", false), 1, "failure"),
            (ingest("web09", true), 2, "usage"),
            (
                vec![
                    "inspect".into(),
                    "--medium".into(),
                    "fat:none.img".into(),
                    "--json".into(),
                ],
                3,
                "io",
            ),
            (
                vec!["inspect".into(), "--bogus".into(), "--json".into()],
                2,
                "usage",
            ),
            // A value given to the flag: refused, in JSON all the same (it was plain text).
            (vec!["capture".into(), "--json=yes".into()], 2, "usage"),
            (
                vec![
                    "verify".into(),
                    "--medium".into(),
                    m.clone(),
                    "--identity".into(),
                    "site.key".into(),
                    "--json".into(),
                ],
                2,
                "usage",
            ),
        ];
        for (args, code, kind) in cases {
            let a: Vec<&str> = args.iter().map(String::as_str).collect();
            let out = env.run(&a);
            assert_eq!(
                out.status.code(),
                Some(code),
                "{a:?}: {}",
                output_text(&out)
            );
            let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
                panic!("{a:?}: not one JSON object ({e}): {}", output_text(&out))
            });
            assert_eq!(v["ok"], false, "{v}");
            assert_eq!(v["error"]["code"], code, "{v}");
            assert_eq!(v["error"]["kind"], kind, "{v}");
            assert!(!v["error"]["message"].as_str().unwrap().is_empty(), "{v}");
            assert!(!v["error"]["hint"].as_str().unwrap().is_empty(), "{v}");
        }
    }

    #[test]
    fn appliance_log_attestations_and_erase_certificate_are_readable() {
        let mut lab = Lab::new(40);
        lab.keygen();
        lab.make_disk(2, 3);
        lab.start();
        lab.provision_and_unlock();
        lab.capture();
        lab.appliance_ok(&["seal"]);
        let fp = lab.fingerprint();

        let log = text(&lab.appliance_ok(&["log"]).stdout);
        // Without --verify the listing says it is not verified, on a line of its own.
        assert!(
            log.lines().last().unwrap_or("").contains("NOT verified"),
            "{log}"
        );
        for line in log.lines().filter(|l| !l.starts_with('(')) {
            let when = line.split_whitespace().nth(1).unwrap_or("");
            assert!(is_iso_utc(&Value::from(when)), "{line}");
            assert!(!line.contains('[') && !line.contains('{'), "{line}");
        }
        assert!(
            log.contains(&format!("provisioned: identity {fp}")),
            "{log}"
        );
        assert!(log.contains("sealed: attestation "), "{log}");

        let att = text(&lab.appliance_ok(&["attestations"]).stdout);
        assert!(
            att.contains(&format!("signed by      appliance {fp}")),
            "{att}"
        );
        assert!(!att.contains('['), "{att}");

        let j = lab.appliance_json(&["log"]);
        assert_eq!(j["command"], "appliance log", "{j}");
        let id = &j["entries"][0]["event"]["Provisioned"]["identity"];
        assert!(is_hex(id, 64), "{j}");

        let erase = |certificate: &str, json: &[&str]| {
            let args = [
                json,
                &["erase", "--yes", "--pin-file", "pin", "--certificate"],
                &[certificate],
            ]
            .concat();
            let out = lab.appliance(&args);
            assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
            out
        };
        // With --json the result names the certificate and the erase record (it said only
        // what was erased).
        let said: Value = serde_json::from_slice(&erase("erase.json", &["--json"]).stdout).unwrap();
        assert_eq!(said["certificate"], "erase.json", "{said}");
        let cert: Value =
            serde_json::from_slice(&std::fs::read(lab.p("erase.json")).unwrap()).unwrap();
        assert_eq!(cert["verified"], true, "{cert}");
        assert_eq!(
            said["erase_record"], cert["erase_record"]["index"],
            "{said}"
        );
        assert_eq!(cert["appliance"]["fingerprint"], fp.as_str(), "{cert}");
        assert_eq!(cert["appliance"]["state"], "erased", "{cert}");
        assert!(is_hex(&cert["medium"]["id"], 32), "{cert}");
        assert!(is_hex(&cert["erase_record"]["signature"], 128), "{cert}");
        assert!(is_iso_utc(&cert["issued"]), "{cert}");
        assert!(
            cert["erase_record"]["event"]
                .as_str()
                .unwrap()
                .starts_with("crypto-erased (requested)"),
            "{cert}"
        );
        let txt = std::fs::read_to_string(lab.p("erase.txt")).unwrap();
        assert!(txt.contains("verdict        verified"), "{txt}");
        // Run again (an erase whose answer a pulled cable lost says to): the certificate of
        // the erase that happened, from its custody record; nothing erased again (it was
        // exit 2 "erased", no certificate ever).
        let out = erase("again.json", &[]);
        assert!(
            text(&out.stdout).contains("the appliance was erased already (custody record"),
            "{}",
            text(&out.stdout)
        );
        let again: Value =
            serde_json::from_slice(&std::fs::read(lab.p("again.json")).unwrap()).unwrap();
        assert_eq!(again["verified"], true, "{again}");
        assert_eq!(again["erase_record"], cert["erase_record"], "{again}");
        // And without --certificate, as the cut erase said to run it (it was exit 2).
        let out = lab.appliance(&["erase", "--yes", "--pin-file", "pin"]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        assert!(
            text(&out.stdout).contains("the appliance was erased already (custody record"),
            "{}",
            text(&out.stdout)
        );
        lab.stop();
    }

    fn text(b: &[u8]) -> String {
        String::from_utf8_lossy(b).into_owned()
    }
}
