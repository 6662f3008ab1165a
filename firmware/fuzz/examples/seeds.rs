//! Seed corpus for the firmware fuzz targets, taken from a real session:
//! an appliance on the fake platform is provisioned and driven through its
//! console (frames and typed lines) up to seal and arrival, and what it
//! stores and says becomes the seeds.
//!
//! `cargo run --example seeds -- CORPUS_DIR` writes
//! `CORPUS_DIR/<target>/seed-*` for frame_decoder, console, custody_log
//! and attestation (`scripts/fuzz.sh` runs it before fuzzing).

use std::path::Path;
use std::{env, fs};

use mgear_firmware::protocol::{encode_frame, Pin, Request, Response};
use mgear_firmware::testing::FakePlatform;
use mgear_firmware::{Appliance, Config};

/// The console target's appliance: same config and PIN, so seeded sessions
/// reach the same states when fuzzed.
fn appliance() -> Appliance<FakePlatform> {
    let cfg = Config {
        pin_iterations: 1,
        region_size: 64 * 1024,
        ..Config::default()
    };
    let mut a = Appliance::new(FakePlatform::new(128 * 1024, 1), cfg).expect("fake appliance");
    let r = a.handle(Request::Provision {
        pin: Pin::new("314159"),
    });
    assert!(matches!(r, Response::Provisioned { .. }), "{r:?}");
    a
}

fn write(dir: &Path, target: &str, name: &str, data: &[u8]) {
    let d = dir.join(target);
    fs::create_dir_all(&d).expect("create corpus dir");
    fs::write(d.join(format!("seed-{name}")), data).expect("write seed");
}

fn main() {
    let dir = env::args_os()
        .nth(1)
        .expect("usage: seeds CORPUS_DIR (e.g. firmware/fuzz/corpus)");
    let dir = Path::new(&dir);

    let requests = [
        Request::Ping,
        Request::Info,
        Request::Unlock {
            pin: Pin::new("314159"),
        },
        Request::CaptureBegin {
            name: "web01".into(),
        },
        Request::CaptureCommit {
            name: "web01".into(),
            generation: 1,
        },
        Request::Verify,
        Request::Seal,
        Request::Arrival {
            challenge: [0x5a; 32],
        },
        Request::Log { from: 0 },
        Request::GetAttestations,
        Request::Lock,
        Request::Unlock {
            pin: Pin::new("000000"),
        },
        Request::Erase {
            overwrite: false,
            pin: None,
        },
        Request::Erase {
            overwrite: false,
            pin: Some(Pin::new("000000")),
        },
        Request::Provision {
            pin: Pin::new("271828"),
        },
    ];
    let lines: &[&[u8]] = &[
        b"help\r\n",
        b"info\r\n",
        b"unlock 314159\r\n",
        b"verify\r\n",
        b"seal\r\n",
        b"arrival\r\n",
        b"log 1\r\n",
        b"lock\n",
        b"unlock 12\x0834\n",
    ];

    // One seed per request and per line, then whole sessions.
    let mut frames_session = Vec::new();
    for (i, r) in requests.iter().enumerate() {
        let f = encode_frame(i as u32 + 1, r);
        write(dir, "frame_decoder", &format!("request-{i:02}"), &f);
        write(dir, "console", &format!("request-{i:02}"), &f);
        frames_session.extend_from_slice(&f);
    }
    let mut lines_session = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        write(dir, "console", &format!("line-{i:02}"), l);
        lines_session.extend_from_slice(l);
    }
    write(dir, "frame_decoder", "session", &frames_session);
    write(dir, "console", "frames-session", &frames_session);
    write(dir, "console", "lines-session", &lines_session);

    // Run the frame session (without the erase) on a real appliance: its
    // replies seed the frame decoder, its custody log and attestations the
    // other targets.
    let mut a = appliance();
    let keep = requests.len() - 2;
    for (i, r) in requests[..keep].iter().enumerate() {
        a.platform_mut()
            .console
            .send(&encode_frame(i as u32 + 1, r));
        a.poll_console().expect("console");
    }
    let replies = a.platform_mut().console.take_output();
    write(dir, "frame_decoder", "replies", &replies);
    let log = a.platform_mut().log.data.clone();
    assert!(!log.is_empty(), "the session left no custody log");
    write(dir, "custody_log", "session", &log);
    // A torn last record, as after a power cut.
    write(dir, "custody_log", "torn", &log[..log.len() - 7]);

    let Response::Attestations {
        seal: Some(seal),
        arrival: Some(arrival),
    } = a.handle(Request::GetAttestations)
    else {
        panic!("the session did not seal and check arrival");
    };
    // The target decodes the first half as the seal and the second as the
    // arrival (postcard ignores trailing bytes): pad the shorter one.
    let s = postcard::to_allocvec(&seal).expect("encode seal");
    let r = postcard::to_allocvec(&arrival).expect("encode arrival");
    let half = s.len().max(r.len());
    let mut pair = s.clone();
    pair.resize(half, 0);
    pair.extend_from_slice(&r);
    pair.resize(2 * half, 0);
    write(dir, "attestation", "seal-arrival", &pair);
    let mut same = s.clone();
    same.extend_from_slice(&s);
    write(dir, "attestation", "seal-seal", &same);
    println!("firmware seeds written to {}", dir.display());
}
