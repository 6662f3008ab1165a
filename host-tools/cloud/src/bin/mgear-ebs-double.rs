//! `mgear-ebs-double`: the strict offline EBS double (`mgear_cloud::ebs::double`) as a program,
//! so an `ebs-snapshot:` ingest can be tried without AWS. It listens on 127.0.0.1 (`--port N`,
//! or a port the system picks), prints the
//! `export` lines `mgear` needs, and on each line read from stdin (press Enter) prints what it
//! holds: every snapshot with its status and blocks, every image, every request it refused. It
//! stops at the end of its input (Ctrl-D) or on Ctrl-C; what it held is gone then.
//!
//! Build: `cargo build -p mgear-cloud --features test-double --bin mgear-ebs-double`.

use std::io::BufRead;

use mgear_cloud::ebs::double::{Double, DoubleConfig};

/// Said for `--help` and for arguments it does not take.
const USAGE: &str = "usage: mgear-ebs-double [--port N]

The strict offline EBS double: listens on 127.0.0.1 (on port N, or one the system picks),
prints the export lines (endpoint, keys,
region) that `mgear ingest ... --target ebs-snapshot:NAME` needs, and on each Enter lists the
snapshots, images and refused requests it holds; Ctrl-D or Ctrl-C stops it (what it held is
gone then).";

/// The port asked for with `--port N` (0: any), or the exit code after saying why not.
fn port_asked() -> Result<u16, i32> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        [] => Ok(0),
        ["-h" | "--help"] => {
            println!("{USAGE}");
            Err(0)
        }
        ["--port", n] => n.parse::<u16>().map_err(|_| {
            eprintln!("mgear-ebs-double: --port takes a port number (0 to 65535), not {n:?}");
            2
        }),
        _ => {
            eprintln!("mgear-ebs-double: unexpected arguments {args:?}\n{USAGE}");
            Err(2)
        }
    }
}

fn main() {
    let port = port_asked().unwrap_or_else(|code| std::process::exit(code));
    let d = match Double::start_on(DoubleConfig::default(), port) {
        Ok(d) => d,
        Err(e) => {
            eprintln!(
                "mgear-ebs-double: cannot listen on 127.0.0.1:{port}: {e}; give another --port, \
                 or none to let the system pick one"
            );
            std::process::exit(3);
        }
    };
    for (k, v) in d.env() {
        println!("export {k}='{v}'");
    }
    eprintln!(
        "mgear-ebs-double: listening on {} (offline EBS direct APIs + RegisterImage, strict checks); \
         eval the export lines above in the shell that runs `mgear ingest ... --target \
         ebs-snapshot:NAME`; press Enter to list what it holds, Ctrl-D or Ctrl-C to stop",
        d.url()
    );
    for line in std::io::stdin().lock().lines() {
        if line.is_err() {
            break;
        }
        report(&d);
    }
    report(&d);
}

/// What the double holds and refused, for a person.
fn report(d: &Double) {
    let ids = d.snapshot_ids();
    println!("{} snapshot(s)", ids.len());
    for id in ids {
        if let Some(s) = d.snapshot(&id) {
            println!(
                "  {} {} {} GiB, {} block(s) of 512 KiB, {:?}",
                s.id,
                s.status,
                s.volume_gib,
                s.blocks.len(),
                s.description
            );
        }
    }
    for (ami, (name, snap)) in d.images() {
        println!("  image {ami} {name:?} from {snap}");
    }
    let refused = d.rejections();
    println!("{} request(s) refused", refused.len());
    for r in refused {
        println!("  {} {}: {}", r.op, r.status, r.message);
    }
}
