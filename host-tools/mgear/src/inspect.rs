//! `mgear inspect`: what is on a medium, without any key.
//!
//! ```text
//! mgear inspect --medium fat:/dev/sdb [--name web01] [--json]
//! mgear inspect --medium fat:A.img --medium fat:B.img --json   # a shipment of several media
//! ```
//!
//! Lists captures, their key slots and generations (state, parent, sizes,
//! chunk counts, source, appliance) from the cleartext parts of the format,
//! and machine sets (`crate::machine`): each generation's disks in order
//! (size, sector size, partition table, which one boots, OS) and whether
//! every disk is there and matches the set manifest. Over several media
//! `--json` prints each medium and a shipment listing: every machine (a set,
//! or a single-disk capture), its disks, its generations on each medium and
//! whether its newest generation is complete. `--name` shows one capture or
//! machine (names are compared without case). A generation captured with
//! `--dedup-across-machines` lists the other machines' generations it
//! borrows records from (`borrows_from`).

use serde::Serialize;

use crate::units::human_bytes;

/// Arguments of `mgear inspect`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Medium: fat:IMAGE-OR-DEVICE or dir:MOUNTPOINT; repeat it to list a shipment of several media.
    #[arg(long, required_unless_present = "appliance")]
    pub medium: Vec<String>,
    /// Reach the medium through the appliance on this console port.
    #[arg(long, conflicts_with = "medium")]
    pub appliance: Option<std::path::PathBuf>,
    /// Only this capture or machine set (compared without case, as FAT does).
    #[arg(long)]
    pub name: Option<String>,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// One generation in `inspect --json`.
#[derive(Debug, Clone, Serialize)]
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
    /// Other machines' generations whose records this one points at (dedup
    /// across machines, pinned by manifest root): `web01 G0001`.
    pub borrows_from: Vec<String>,
}

/// One capture in `inspect --json`.
#[derive(Debug, Clone, Serialize)]
pub struct CaptureJson {
    pub name: String,
    pub recipient_slot: bool,
    pub passphrase_slot: bool,
    pub generations: Vec<GenJson>,
}

/// What `inspect --json` prints for one medium.
#[derive(Debug, Serialize)]
pub struct Report {
    pub command: &'static str,
    pub free_bytes: Option<u64>,
    /// The span this medium belongs to, if any.
    pub span: Option<SpanJson>,
    /// Captures (the disk streams of a set, `NAME.dK`, included).
    pub captures: Vec<CaptureJson>,
    /// Machine sets.
    pub sets: Vec<crate::machine::SetJson>,
    /// The machines on this medium.
    pub shipment: crate::machine::Shipment,
}

/// What `inspect --json` prints for several media.
#[derive(Debug, Serialize)]
pub struct ShipmentReport {
    pub command: &'static str,
    pub media: Vec<MediumJson>,
    pub shipment: crate::machine::Shipment,
}

/// A medium's span: which span, which medium of it, and where every segment is.
#[derive(Debug, Serialize)]
pub struct SpanJson {
    pub id: String,
    /// This medium's ordinal in the span.
    pub this: Vec<u16>,
    pub media: Vec<SpanMemberJson>,
}

/// One medium of a span, as the span's map knows it.
#[derive(Debug, Serialize)]
pub struct SpanMemberJson {
    pub ordinal: u16,
    /// How the medium was named when it joined.
    pub label: String,
    pub lost: bool,
    /// Segment files it holds.
    pub segments: usize,
}

/// One medium of a shipment.
#[derive(Debug, Serialize)]
pub struct MediumJson {
    pub medium: String,
    pub free_bytes: Option<u64>,
    /// The span this medium belongs to (a capture continued over several media), if any.
    pub span: Option<SpanJson>,
    pub captures: Vec<CaptureJson>,
    pub sets: Vec<crate::machine::SetJson>,
}

/// Run `mgear inspect`.
pub fn run(args: Args) -> anyhow::Result<i32> {
    let wheres: Vec<crate::medium::Where> = match &args.appliance {
        Some(port) => vec![crate::medium::Where::appliance_at(port.clone())],
        None => args
            .medium
            .iter()
            .map(|m| crate::medium::Where::one(m.clone()))
            .collect(),
    };
    let mut media = Vec::new();
    for w in &wheres {
        media.push(medium_json(w, args.name.as_deref())?);
    }
    let ship = crate::machine::shipment(
        &media
            .iter()
            .map(|m| (m.medium.clone(), m.captures.clone(), m.sets.clone()))
            .collect::<Vec<_>>(),
        args.name.is_none(),
    );
    if media.len() > 1 {
        if args.json || crate::output::json() {
            crate::progress::print_json(&ShipmentReport {
                command: "inspect",
                media,
                shipment: ship,
            })?;
        } else {
            for m in &media {
                print_medium(m);
            }
            print_shipment(&ship);
        }
        return Ok(crate::exit::OK);
    }
    let m = media.remove(0);
    let report = Report {
        command: "inspect",
        free_bytes: m.free_bytes,
        span: m.span,
        captures: m.captures,
        sets: m.sets,
        shipment: ship,
    };
    if args.json || crate::output::json() {
        crate::progress::print_json(&report)?;
        return Ok(crate::exit::OK);
    }
    print_medium(&MediumJson {
        medium: wheres[0].describe(),
        free_bytes: report.free_bytes,
        span: report.span,
        captures: report.captures,
        sets: report.sets,
    });
    Ok(crate::exit::OK)
}

/// One medium's captures and sets, keyless.
/// With `name`, only that capture or set (and a set's disk streams).
fn medium_json(w: &crate::medium::Where, name: Option<&str>) -> anyhow::Result<MediumJson> {
    let mut medium = w.open_read_only()?;
    let store = medium.store();
    let free = store.free_space().ok().flatten();
    let listed = image_format::list_captures(store).map_err(anyhow::Error::from);
    let sets = crate::machine::sets_of(store);
    let stored = name.map(|n| image_format::stored_name(store, n));
    let span = medium.span().map(|sp| SpanJson {
        id: crate::output::hex(&sp.id()),
        this: sp.attached(),
        media: sp
            .map()
            .members
            .iter()
            .map(|m| SpanMemberJson {
                ordinal: m.ordinal,
                label: m.label.clone(),
                lost: m.lost,
                segments: sp
                    .map()
                    .placed
                    .values()
                    .filter(|o| **o == m.ordinal)
                    .count(),
            })
            .collect(),
    });
    medium.close()?;
    let mut caps = listed?;
    let mut sets = sets?;
    if let (Some(asked), Some(stored)) = (name, stored) {
        let stored = stored?;
        let disk_prefix = format!("{}.d", stored.to_ascii_lowercase());
        let wanted = |c: &str| c == stored || c.to_ascii_lowercase().starts_with(&disk_prefix);
        let have: Vec<String> = caps.iter().map(|c| c.name.clone()).collect();
        caps.retain(|c| wanted(&c.name));
        sets.retain(|s| s.name.eq_ignore_ascii_case(&stored));
        if caps.is_empty() && sets.is_empty() {
            return Err(crate::exit::usage(format!(
                "there is no capture {asked} on {} (captures: {})",
                w.describe(),
                if have.is_empty() {
                    "none".to_string()
                } else {
                    have.join(", ")
                }
            )));
        }
    }
    let hex = crate::output::hex;
    Ok(MediumJson {
        medium: w.describe(),
        free_bytes: free,
        span,
        sets,
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
                            borrows_from: g
                                .peers
                                .iter()
                                .map(|p| format!("{} G{:04}", p.name, p.generation))
                                .collect(),
                        }
                    })
                    .collect(),
            })
            .collect(),
    })
}

fn print_medium(report: &MediumJson) {
    println!(
        "medium {}: {} capture(s){}{}",
        report.medium,
        report.captures.len(),
        if report.sets.is_empty() {
            String::new()
        } else {
            format!(", {} machine set(s)", report.sets.len())
        },
        report
            .free_bytes
            .map_or(String::new(), |f| format!(", {} free", human_bytes(f)))
    );
    if let Some(sp) = &report.span {
        let this: Vec<String> = sp.this.iter().map(|o| format!("#{o}")).collect();
        println!(
            "span {}: this is medium {} of {}; the captures continue over these media:",
            sp.id,
            this.join(", "),
            sp.media.len()
        );
        for m in &sp.media {
            println!(
                "  #{} {}: {} segment(s){}",
                m.ordinal,
                m.label,
                m.segments,
                if m.lost { " (declared lost)" } else { "" }
            );
        }
    }
    for s in &report.sets {
        println!("set {} (a machine: one capture per disk, NAME.dK)", s.name);
        for g in &s.generations {
            println!(
                "  G{:04} {}{}: created {}, {} disk(s)",
                g.generation,
                if g.complete { "complete" } else { "INCOMPLETE" },
                g.parent
                    .map(|p| format!(" delta on G{p:04}"))
                    .unwrap_or_default(),
                g.created,
                g.disks.len()
            );
            for d in &g.disks {
                println!(
                    "    disk {} {:<12} {:>10}  sector {}, table {}{}{}, source {}",
                    d.disk,
                    d.stream,
                    human_bytes(d.size),
                    d.sector_size,
                    d.table,
                    if d.boot { ", boots" } else { "" },
                    if d.os.is_empty() {
                        String::new()
                    } else {
                        format!(", {}", d.os)
                    },
                    d.source
                );
            }
            for p in &g.problems {
                println!("    PROBLEM: {p}");
            }
        }
        for (g, why) in &s.damaged {
            println!("  G{g:04} DAMAGED: {why}");
        }
    }
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
            if !g.borrows_from.is_empty() {
                println!(
                    "    borrows records from {} (dedup across machines: one data key)",
                    g.borrows_from.join(", ")
                );
            }
        }
    }
}

fn print_shipment(s: &crate::machine::Shipment) {
    println!(
        "shipment of {} media: {} machine(s), {}",
        s.media,
        s.machines.len(),
        if s.complete {
            "every machine complete"
        } else {
            "NOT every machine complete"
        }
    );
    for m in &s.machines {
        println!(
            "  {} ({}, {} disk(s)): {}",
            m.name,
            m.kind,
            m.disks,
            if m.complete {
                "newest generation complete"
            } else {
                "newest generation NOT complete"
            }
        );
        for g in &m.generations {
            println!("    G{:04} {} on {}", g.generation, g.state, g.medium);
        }
    }
}
