//! `mgear inspect`: what is on a medium, without any key.
//!
//! ```text
//! mgear inspect --medium fat:/dev/sdb [--name web01] [--json]
//! ```
//!
//! Lists captures, their key slots and generations (state, parent, sizes,
//! chunk counts, source, appliance) from the cleartext parts of the format.
//! `--name` shows one capture (names are compared without case).

use serde::Serialize;

use crate::units::human_bytes;

/// Arguments of `mgear inspect`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub medium: crate::medium::Where,
    /// Only this capture (compared without case, as FAT does).
    #[arg(long)]
    pub name: Option<String>,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// One generation in `inspect --json`.
#[derive(Debug, Serialize)]
pub struct GenJson {
    pub generation: u32,
    /// "complete", "unfinished" or "damaged".
    pub state: &'static str,
    /// For unfinished generations: chunks durable so far.
    pub next_chunk: Option<u64>,
    /// For damaged generations: why.
    pub damage: Option<String>,
    pub parent: Option<u32>,
    pub chunk_size: u32,
    pub disk_size: u64,
    pub chunk_count: u64,
    pub stored_chunks: u64,
    pub zero_chunks: u64,
    pub dedup_chunks: u64,
    pub stored_bytes: u64,
    pub segments: u32,
    pub created_unix: u64,
    /// `created_unix` as ISO-8601 UTC.
    pub created: String,
    pub source: String,
    pub appliance_id: Option<String>,
    pub manifest_root: Option<String>,
}

/// One capture in `inspect --json`.
#[derive(Debug, Serialize)]
pub struct CaptureJson {
    pub name: String,
    pub recipient_slot: bool,
    pub passphrase_slot: bool,
    pub generations: Vec<GenJson>,
}

/// What `inspect --json` prints.
#[derive(Debug, Serialize)]
pub struct Report {
    pub command: &'static str,
    pub free_bytes: Option<u64>,
    pub captures: Vec<CaptureJson>,
}

/// Run `mgear inspect`.
pub fn run(args: Args) -> anyhow::Result<i32> {
    let mut medium = args.medium.open_read_only()?;
    let store = medium.store();
    let free = store.free_space().ok().flatten();
    let mut caps = image_format::list_captures(store)?;
    if let Some(asked) = &args.name {
        let name = image_format::stored_name(store, asked)?;
        if !caps.iter().any(|c| c.name == name) {
            let have: Vec<&str> = caps.iter().map(|c| c.name.as_str()).collect();
            let _ = medium.close();
            return Err(crate::exit::usage(format!(
                "there is no capture {asked} on {} (captures: {})",
                args.medium.describe(),
                if have.is_empty() {
                    "none".to_string()
                } else {
                    have.join(", ")
                }
            )));
        }
        caps.retain(|c| c.name == name);
    }
    medium.close()?;
    let hex = crate::capture::hex;
    let report = Report {
        command: "inspect",
        free_bytes: free,
        captures: caps
            .into_iter()
            .map(|c| CaptureJson {
                name: c.name,
                recipient_slot: c.recipient_slot,
                passphrase_slot: c.passphrase_slot,
                generations: c
                    .generations
                    .into_iter()
                    .map(|g| {
                        let (state, next_chunk, damage) = match g.state {
                            image_format::GenerationState::Complete => ("complete", None, None),
                            image_format::GenerationState::Unfinished { next_chunk } => {
                                ("unfinished", Some(next_chunk), None)
                            }
                            image_format::GenerationState::Damaged(why) => {
                                ("damaged", None, Some(why))
                            }
                        };
                        GenJson {
                            generation: g.generation,
                            state,
                            next_chunk,
                            damage,
                            parent: g.parent,
                            chunk_size: g.chunk_size,
                            disk_size: g.disk_size,
                            chunk_count: g.chunk_count,
                            stored_chunks: g.stored_chunks,
                            zero_chunks: g.zero_chunks,
                            dedup_chunks: g.dedup_chunks,
                            stored_bytes: g.stored_bytes,
                            segments: g.segments,
                            created_unix: g.created_unix,
                            created: crate::output::iso_time(g.created_unix),
                            source: g.source_desc,
                            appliance_id: g.appliance_id.map(|a| hex(&a)),
                            manifest_root: g.manifest_root.map(|r| hex(&r)),
                        }
                    })
                    .collect(),
            })
            .collect(),
    };
    if args.json || crate::output::json() {
        crate::progress::print_json(&report)?;
        return Ok(crate::exit::OK);
    }
    println!(
        "medium {}: {} capture(s){}",
        args.medium.describe(),
        report.captures.len(),
        free.map_or(String::new(), |f| format!(", {} free", human_bytes(f)))
    );
    for c in &report.captures {
        let slots: Vec<&str> = [
            c.recipient_slot.then_some("recipient"),
            c.passphrase_slot.then_some("passphrase"),
        ]
        .into_iter()
        .flatten()
        .collect();
        println!("capture {} (key slots: {})", c.name, slots.join(", "));
        for g in &c.generations {
            let state = match (g.state, g.next_chunk, &g.damage) {
                ("unfinished", Some(n), _) => format!("unfinished at chunk {n}/{}", g.chunk_count),
                ("damaged", _, Some(w)) => format!("DAMAGED: {w}"),
                (s, _, _) => s.to_owned(),
            };
            println!(
                "  G{:04} {state}{}: created {}, disk {}, {} chunks ({} stored, {} zero, {} dedup), {} stored in {} segment(s), source {}",
                g.generation,
                g.parent.map(|p| format!(" delta on G{p:04}")).unwrap_or_default(),
                g.created,
                human_bytes(g.disk_size),
                g.chunk_count,
                g.stored_chunks,
                g.zero_chunks,
                g.dedup_chunks,
                human_bytes(g.stored_bytes),
                g.segments,
                if g.source.is_empty() { "?" } else { &g.source }
            );
        }
    }
    Ok(crate::exit::OK)
}
