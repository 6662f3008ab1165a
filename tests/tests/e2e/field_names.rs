//! Capture names are compared without case everywhere (#13): a capture
//! stored as `web01` answers to `--name WEB01` in verify (keyless and
//! keyed), ingest, serve/sync, keys and medium rm, on a case-sensitive
//! `dir:` medium and on FAT, and nothing reports tampering because of the
//! case (the manifest binds the stored spelling). Two capture directories
//! differing only by case (made by hand on a `dir:` medium) are refused
//! with an error naming both.

use std::process::Output;

use mgear_tests::{output_text, same_file, Background, Env};
use rand::{RngCore, SeedableRng};
use serde_json::Value;

fn random_disk(e: &Env, name: &str, mib: usize, seed: u64) {
    let mut d = vec![0u8; mib << 20];
    rand::rngs::SmallRng::seed_from_u64(seed).fill_bytes(&mut d[..(mib << 20) / 2]);
    std::fs::write(e.p(name), d).unwrap();
}

fn code(o: &Output) -> Option<i32> {
    o.status.code()
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Keys, a medium of `kind` (`dir` or `fat`) holding `disk.raw` as `web01`
/// (signed by `site.key`); returns the medium spec.
fn captured(e: &Env, kind: &str) -> String {
    e.keygen();
    e.ok(&["keygen", "--signing", "--out", "site.key"]);
    random_disk(e, "disk.raw", 4, 7);
    let m = match kind {
        "dir" => {
            std::fs::create_dir_all(e.p("mnt")).unwrap();
            "dir:mnt".to_string()
        }
        _ => e.fat("medium.img", "64MiB"),
    };
    e.capture(&m, "web01")
        .source("disk.raw")
        .sign("site.key")
        .ok();
    m
}

/// `mgear serve --once` of `vol.raw` for `name`; returns it and its address.
fn serve(e: &Env, m: &str, name: &str) -> (Background, String) {
    e.serve(m, name).trust("site.pub").arg("--once").listen()
}

/// Every command that takes `--name` finds `web01` as `WEB01` on `kind`.
fn any_case_finds_the_capture(kind: &str) {
    let e = Env::new();
    let m = captured(&e, kind);

    let i = e.json(&["inspect", "--medium", &m, "--name", "WEB01"]);
    assert_eq!(i["captures"][0]["name"], "web01", "{kind}: {i}");
    let o = e.run(&["inspect", "--medium", &m, "--name", "web02"]);
    assert_eq!(code(&o), Some(2), "{}", output_text(&o));
    assert!(err(&o).contains("captures: web01"), "{}", output_text(&o));

    let v = e.json(&["verify", "--medium", &m, "--name", "WEB01"]);
    assert_eq!(v["ok"], true, "{kind}: {v}");
    assert_eq!(v["problems"], serde_json::json!([]), "{kind}: {v}");
    let v = e.json(&[
        "verify",
        "--medium",
        &m,
        "--name",
        "WEB01",
        "--identity",
        "target.key",
        "--trust",
        "site.pub",
    ]);
    assert_eq!(v["ok"], true, "{kind}: {v}");
    assert_eq!(v["trust"][0]["capture"], "web01", "{kind}: {v}");
    assert_eq!(v["trust"][0]["trusted"], true, "{kind}: {v}");

    let i = e
        .ingest(&m, "WEB01")
        .trust("site.pub")
        .args(&["--expect-generation", "1"])
        .target("file:vol.raw")
        .json();
    assert_eq!(i["name"], "web01", "{kind}: {i}");
    assert_eq!(i["verified"], true, "{kind}: {i}");
    same_file(&e.p("disk.raw"), &e.p("vol.raw"));

    // The source changes; serve and sync both spelled WEB01 catch it up.
    let mut d = std::fs::read(e.p("disk.raw")).unwrap();
    d[3 << 20] ^= 0x5a;
    std::fs::write(e.p("disk.raw"), d).unwrap();
    let (mut server, addr) = serve(&e, &m, "WEB01");
    let s = e.json(&[
        "sync", "--source", "disk.raw", "--to", &addr, "--name", "Web01", "--sign", "site.key",
    ]);
    assert_eq!(
        (s["verified"].clone(), s["chunks_sent"].clone()),
        (true.into(), 1.into()),
        "{kind}: {s}"
    );
    assert!(server.0.wait().unwrap().success(), "{kind}: serve --once");
    same_file(&e.p("disk.raw"), &e.p("vol.raw"));

    // keys: the cached key of web01 is found (and forgotten) as WEB01.
    let k = e.json(&["keys", "list"]);
    assert_eq!(k["keys"][0]["name"], "web01", "{kind}: {k}");
    e.ok(&["keys", "forget", "--name", "WEB01"]);
    let k = e.json(&["keys", "list"]);
    assert_eq!(k["keys"], serde_json::json!([]), "{kind}: {k}");

    // medium rm finds it too, and says what it removed by its stored name.
    let r = e.json(&["medium", "rm", "--medium", &m, "--name", "WEB01", "--force"]);
    assert_eq!(r["name"], "web01", "{kind}: {r}");
    assert_eq!(r["capture_removed"], true, "{kind}: {r}");
    let i = e.json(&["inspect", "--medium", &m]);
    assert_eq!(i["captures"], serde_json::json!([]), "{kind}: {i}");
}

#[test]
fn names_ignore_case_on_a_dir_medium() {
    any_case_finds_the_capture("dir");
}

#[test]
fn names_ignore_case_on_a_fat_medium() {
    any_case_finds_the_capture("fat");
}

/// A machine set answers to any case too (a delta of `DB01` is told to say `db01`, as one
/// disk is), ingest of
/// `DB01` writes both disks (on FAT it once cried "moved or replayed file"), and a
/// generation the set lacks is a usage error even without a key.
fn a_set_answers_to_any_case(kind: &str) {
    let e = Env::new();
    let m = captured(&e, kind);
    random_disk(&e, "d1.raw", 2, 8);
    let set = |name: &str, extra: &[&str]| {
        e.capture(&m, name)
            .sources(&["disk.raw", "d1.raw"])
            .sign("site.key")
            .args(extra)
            .json()
    };
    set("db01", &[]);
    random_disk(&e, "d1.raw", 2, 9);
    // A capture writes the name it is given: the other spelling is refused with the one to use.
    let o = e
        .capture(&m, "DB01")
        .sources(&["disk.raw", "d1.raw"])
        .arg("--delta")
        .run();
    assert_eq!(code(&o), Some(2), "{kind}: {}", output_text(&o));
    assert!(
        err(&o).contains("Use --name db01 (with --delta"),
        "{kind}: {}",
        output_text(&o)
    );
    let c = set("db01", &["--delta"]);
    assert_eq!(
        (c["name"].clone(), c["generation"].clone()),
        ("db01".into(), 2.into()),
        "{kind}: {c}"
    );
    let i = e
        .ingest(&m, "DB01")
        .trust("site.pub")
        .target("file:out-{disk}.raw")
        .json();
    assert_eq!(i["name"], "db01", "{kind}: {i}");
    same_file(&e.p("out-1.raw"), &e.p("d1.raw"));
    same_file(&e.p("out-0.raw"), &e.p("disk.raw"));
    for args in [
        &["--name", "DB01", "--generation", "9"][..],
        &["--generation", "9"],
    ] {
        let o = e.run(&[&["verify", "--medium", &m][..], args].concat());
        assert_eq!(code(&o), Some(2), "{kind} {args:?}: {}", output_text(&o));
        assert!(
            err(&o).contains("generation 9"),
            "{kind}: {}",
            output_text(&o)
        );
    }
}

#[test]
fn sets_ignore_case_on_a_dir_medium() {
    a_set_answers_to_any_case("dir");
}

#[test]
fn sets_ignore_case_on_a_fat_medium() {
    a_set_answers_to_any_case("fat");
}

#[test]
fn two_directories_differing_only_by_case_are_named() {
    let e = Env::new();
    let m = captured(&e, "dir");
    // Only by hand: a copy of the capture under another case.
    let o = std::process::Command::new("cp")
        .args(["-a", "mnt/MGEAR/web01", "mnt/MGEAR/WEB01"])
        .current_dir(e.p(""))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", output_text(&o));
    let both = "MGEAR/WEB01 and MGEAR/web01";
    for args in [
        vec!["verify", "--medium", &m, "--name", "web01"],
        vec![
            "verify",
            "--medium",
            &m,
            "--name",
            "Web01",
            "--identity",
            "target.key",
        ],
        vec![
            "ingest",
            "--medium",
            &m,
            "--name",
            "WEB01",
            "--identity",
            "target.key",
            "--trust",
            "site.pub",
            "--target",
            "file:vol.raw",
        ],
        vec!["medium", "rm", "--medium", &m, "--name", "web01", "--force"],
        vec!["inspect", "--medium", &m, "--name", "WEB01"],
    ] {
        let o = e.run(&args);
        assert_eq!(code(&o), Some(1), "{args:?}: {}", output_text(&o));
        assert!(
            err(&o).contains(both) && err(&o).contains("differ only by case"),
            "{args:?}: {}",
            output_text(&o)
        );
        // The way on, not "do not use it" (nothing says the data is damaged).
        assert!(
            err(&o).contains("move or rename all but one of those directories")
                && !err(&o).contains("do not use it"),
            "{args:?}: {}",
            output_text(&o)
        );
    }
    assert!(!e.p("vol.raw").exists());
    // Nothing was removed; the whole-medium check names the clash once.
    let o = e.run(&["verify", "--medium", &m, "--json"]);
    assert_eq!(code(&o), Some(1), "{}", output_text(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let clashes: Vec<&Value> = v["problems"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p.to_string().contains(both))
        .collect();
    assert_eq!(clashes.len(), 1, "{v}");
    assert!(e.p("mnt/MGEAR/web01/G0001/MANIFEST").exists());
}

/// A name that is not on the medium: verify lists what is there, as ingest does (it said
/// only "not found"); and `dir:M/MGEAR`, one level too deep, names the directory to give.
#[test]
fn a_missing_name_or_a_medium_given_one_level_too_deep_says_what_to_give() {
    let e = Env::new();
    let m = captured(&e, "dir");
    let o = e.run(&["verify", "--medium", &m, "--name", "nosuch"]);
    assert_eq!(code(&o), Some(2), "{}", output_text(&o));
    assert!(
        err(&o).contains("there is no capture \"nosuch\" on dir:mnt (captures: web01)"),
        "{}",
        output_text(&o)
    );
    // Refused as the medium's MGEAR/ by every command (a capture there wrote into the
    // medium's captures), naming the medium's own directory.
    let o = e.run(&["verify", "--medium", "dir:mnt/MGEAR"]);
    assert_eq!(code(&o), Some(2), "{}", output_text(&o));
    assert!(
        err(&o).contains("it is a medium's MGEAR/ directory, not a medium")
            && err(&o).contains("Give the medium's own directory: --medium dir:mnt"),
        "{}",
        output_text(&o)
    );
}
