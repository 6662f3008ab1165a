//! Malformed frames and commands on the real console get error replies and
//! never crash the appliance: hand-made bad frames, a seeded stream of
//! random bytes, unknown commands, and the human line mode.

use mgear_appliance_api::protocol::{decode_frame, encode_frame, ErrorCode, Request, Response};
use rand::{Rng, RngCore, SeedableRng};

use crate::appliance_util::*;

/// Read until a whole frame with `id` arrives and return its response.
fn reply(con: &mut Console, id: u32) -> Response {
    let mut found = None;
    con.read_until(|got| {
        for part in got.split(|&b| b == 0).filter(|p| !p.is_empty()) {
            let mut wire = vec![0u8];
            wire.extend_from_slice(part);
            wire.push(0);
            if let Ok((rid, r)) = decode_frame::<Response>(&wire) {
                if rid == id {
                    found = Some(r);
                    return true;
                }
            }
        }
        false
    });
    found.unwrap()
}

fn error_code(r: &Response) -> ErrorCode {
    match r {
        Response::Error { code, .. } => *code,
        other => panic!("expected an error reply, got {other:?}"),
    }
}

#[test]
fn appliance_console_malformed_input_gets_errors_never_a_crash() {
    let mut lab = Lab::new(40);
    lab.start();
    let mut con = Console::open(&lab.tty());

    // Bad CRC: the frame's last COBS byte changed.
    let mut bad = encode_frame(5, &Request::Ping);
    let n = bad.len();
    bad[n - 2] = if bad[n - 2] == 0x11 { 0x12 } else { 0x11 };
    con.send(&bad);
    assert_eq!(error_code(&reply(&mut con, 0)), ErrorCode::BadFrame);

    // A frame of another protocol version.
    let mut wire = encode_frame(6, &Request::Ping);
    // Re-encode the body with version 9 (and a valid CRC) by hand.
    let body = {
        let mut b = vec![9u8];
        b.extend_from_slice(&6u32.to_le_bytes());
        b.push(0); // postcard: Request::Ping
        let crc = crc32(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        b
    };
    wire.clear();
    wire.push(0);
    wire.extend(cobs_encode(&body));
    wire.push(0);
    con.send(&wire);
    assert_eq!(
        error_code(&reply(&mut con, 0)),
        ErrorCode::UnsupportedVersion
    );

    // A valid frame whose payload is no request.
    let body = {
        let mut b = vec![mgear_appliance_api::protocol::PROTOCOL_VERSION];
        b.extend_from_slice(&7u32.to_le_bytes());
        b.extend_from_slice(&[0xee, 0xff, 0x13]);
        let crc = crc32(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        b
    };
    let mut wire = vec![0u8];
    wire.extend(cobs_encode(&body));
    wire.push(0);
    con.send(&wire);
    assert_eq!(error_code(&reply(&mut con, 7)), ErrorCode::BadRequest);

    // A command that needs a state the appliance is not in.
    con.send(&encode_frame(8, &Request::Seal));
    assert_eq!(error_code(&reply(&mut con, 8)), ErrorCode::NotProvisioned);

    // Human line mode.
    con.send(b"help\r");
    let got = con.read_until(|g| text(g).contains("ping"));
    assert!(text(&got).contains("unlock <pin>"));
    con.send(b"frobnicate now\r");
    // Masked as typed and not repeated: a mistyped line may hold a PIN.
    let got = con.read_until(|g| text(g).contains("unknown command"));
    assert!(
        !text(&got).contains("frobnicate") && !text(&got).contains(" now"),
        "{}",
        text(&got)
    );
    con.send(&vec![b'x'; 5000]);
    con.send(b"\r");
    con.read_until(|g| text(g).contains("longer than"));

    // Seeded garbage: random bytes, random frames, truncated frames.
    let mut rng = rand::rngs::SmallRng::seed_from_u64(0x5eed_f00d);
    for i in 0..300u32 {
        let mut junk = vec![0u8; rng.gen_range(1..300)];
        rng.fill_bytes(&mut junk);
        if i % 3 == 0 {
            let mut f = encode_frame(i, &Request::Log { from: u64::from(i) });
            let cut = rng.gen_range(1..f.len());
            f.truncate(cut);
            junk.extend(f);
        }
        con.send(&junk);
    }
    // Resynchronise and check the appliance still answers.
    con.send(b"\r\n");
    con.send(&encode_frame(4242, &Request::Ping));
    assert_eq!(reply(&mut con, 4242), Response::Pong);
    assert!(lab.sim_alive(), "simulator died:\n{}", lab.sim_log());
    drop(con);
    assert_eq!(lab.state(), "Factory");
    lab.stop();
}

pub(crate) fn crc32(b: &[u8]) -> u32 {
    // CRC-32/ISO-HDLC (zlib's), as the protocol uses; bitwise so the test
    // checks the firmware against an independent implementation.
    let mut crc = 0xffff_ffffu32;
    for &x in b {
        crc ^= u32::from(x);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn cobs_encode(data: &[u8]) -> Vec<u8> {
    // Minimal COBS encoder (independent of the firmware's `cobs` crate).
    let mut out = vec![0u8];
    let mut code_at = 0;
    let mut code = 1u8;
    for &b in data {
        if b == 0 {
            out[code_at] = code;
            code_at = out.len();
            out.push(0);
            code = 1;
        } else {
            out.push(b);
            code += 1;
            if code == 0xff {
                out[code_at] = code;
                code_at = out.len();
                out.push(0);
                code = 1;
            }
        }
    }
    out[code_at] = code;
    out
}

/// Another program reading the console at the same moment (a `cat` of it) takes the
/// appliance's answer: `mgear appliance info` gives up after its first-contact wait, exit 3,
/// naming that program. Its blocking read waited for ever when the other took the bytes its
/// poll had seen (no timeout, no message; 10 minutes until killed).
#[test]
fn a_reader_beside_mgear_on_the_console_never_hangs_it() {
    let mut lab = Lab::new(40);
    lab.start();
    for _ in 0..2 {
        let cat = std::process::Command::new("cat")
            .arg(lab.tty())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut info = lab
            .mgear(&["appliance", "--port", &lab.tty(), "info"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let t0 = std::time::Instant::now();
        let status = loop {
            if let Some(s) = info.try_wait().unwrap() {
                break Some(s);
            }
            if t0.elapsed() > std::time::Duration::from_secs(60) {
                let _ = info.kill();
                break None;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        };
        let out = info.wait_with_output().unwrap();
        let mut cat = cat;
        let _ = cat.kill();
        let _ = cat.wait();
        let status = status.expect("mgear appliance info hung beside a reader of its console");
        // The answer may reach mgear first: then it is simply answered.
        if !status.success() {
            assert_eq!(status.code(), Some(3), "{}", text(&out.stderr));
            assert!(
                text(&out.stderr).contains("has that console open too"),
                "{}",
                text(&out.stderr)
            );
        }
    }
    lab.stop();
}

/// A console link older than the terminal it points at (left by a simulator that was killed,
/// its terminal number given to another since): refused, nothing sent. It reached the other
/// appliance, and an erase through it erased that one.
#[test]
fn a_stale_console_link_does_not_reach_another_appliance() {
    let mut lab = Lab::new(40);
    lab.start();
    let pty = std::fs::read_link(lab.p("appliance.tty")).unwrap();
    let old = lab.p("old.tty");
    std::os::unix::fs::symlink(&pty, &old).unwrap();
    // Made before the terminal was, as a killed simulator's link is.
    let st = std::process::Command::new("touch")
        .args(["-h", "-d", "2020-01-01"])
        .arg(&old)
        .status()
        .unwrap();
    assert!(st.success());
    let o = lab.run(&["appliance", "--port", &lab.s("old.tty"), "info"]);
    let t = mgear_tests::output_text(&o);
    assert_eq!(o.status.code(), Some(3), "{t}");
    assert!(t.contains("made before that terminal was"), "{t}");
    // The simulator's own link reaches it.
    lab.appliance_ok(&["info"]);
    lab.stop();
}
