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

/// `println!` for the human listing: what it prints comes from the medium,
/// so control characters are escaped ([`crate::output::printable`]).
macro_rules! say {
    ($($t:tt)*) => {
        println!("{}", crate::output::printable(&format!($($t)*)))
    };
}

use image_format::set::{self, SetDisk};
use serde::Serialize;

use crate::output::hex;
use crate::units::human_bytes;

/// `mgear inspect`, typed (the binary's `cli::inspect` fills it in from the flags).
#[derive(Debug)]
pub struct Request {
    /// Medium: fat:IMAGE-OR-DEVICE or dir:MOUNTPOINT; repeat it to list a shipment of several media.
    pub medium: Vec<String>,
    /// Reach the medium through the appliance on this console port; repeat it (beside
    /// --medium too) to list a shipment of several appliances.
    pub appliance: Vec<std::path::PathBuf>,
    /// Only this capture or machine set (compared without case, as FAT does).
    pub name: Option<String>,
    /// Print one JSON object.
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
    /// For damaged generations: why; for an unfinished one cut off at its start, that.
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
    /// When it finished (its manifest's time); `None` (null) for an
    /// unfinished or damaged generation, which has no manifest to say.
    pub created_unix: Option<u64>,
    /// `created_unix` as ISO-8601 UTC; `None` (null) likewise.
    pub created: Option<String>,
    /// What was captured, as the manifest records it; `None` (null) likewise.
    pub source: Option<String>,
    pub appliance_id: Option<String>,
    pub manifest_root: Option<String>,
    /// Other machines' generations whose records this one points at (dedup
    /// across machines, pinned by manifest root): `web01 G0001`.
    pub borrows_from: Vec<String>,
    /// A medium declared lost (`capture --replace-medium`) held part of it
    /// ("medium #1 (fat:b.img, declared lost)"), and it is not among the media
    /// listed: it cannot be ingested without it.
    pub lost_medium: Option<String>,
    /// That medium's ordinal in its span.
    #[serde(skip)]
    pub lost_ordinal: Option<u16>,
    /// An unfinished generation: bytes its files take on the medium now (what `capture
    /// --abort` frees, or a resume goes on after); absent for the others.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_medium_bytes: Option<u64>,
    /// A generation of a span: its segments on the span's other media (an unfinished one's
    /// `stored_bytes` counts this medium's only; a complete one's is the whole generation's);
    /// absent when 0.
    #[serde(skip_serializing_if = "is_zero")]
    pub segments_elsewhere: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// One capture in `inspect --json`.
#[derive(Debug, Clone, Serialize)]
pub struct CaptureJson {
    pub name: String,
    pub recipient_slot: bool,
    pub passphrase_slot: bool,
    pub generations: Vec<GenJson>,
    /// Why the capture's files cannot be listed (its directories damaged in
    /// the file system; `generations` is then empty), else null.
    pub damage: Option<String>,
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
    pub sets: Vec<SetJson>,
    /// The machines on this medium.
    pub shipment: Shipment,
    /// See [`MediumJson::note`].
    pub note: Option<String>,
    /// See [`MediumJson::unexpected`].
    pub unexpected: Vec<String>,
}

/// What `inspect --json` prints for several media.
#[derive(Debug, Serialize)]
pub struct ShipmentReport {
    pub command: &'static str,
    pub media: Vec<MediumJson>,
    pub shipment: Shipment,
}

/// A medium's span: which span, which medium of it, and where every segment is.
#[derive(Debug, Serialize)]
pub struct SpanJson {
    pub id: String,
    /// This medium's ordinal in the span.
    pub this: Vec<u16>,
    pub media: Vec<SpanMemberJson>,
    /// Media given whose copy of the span map did not decode (ordinal, why):
    /// the map is mirrored on every medium, so another medium's copy lists
    /// the span; `media` is empty when no copy given decoded.
    pub damaged_maps: Vec<DamagedMapJson>,
    /// Media given whose span label (`MGEAR/SPAN`) is damaged (as named, why): such a
    /// medium cannot be placed in its span, and its span is not known from it (`id` is all
    /// zeros then).
    pub damaged_labels: Vec<DamagedLabelJson>,
}

/// A medium's span label that did not decode.
#[derive(Debug, Serialize)]
pub struct DamagedLabelJson {
    pub medium: String,
    pub why: String,
}

/// A medium's copy of the span map that did not decode.
#[derive(Debug, Serialize)]
pub struct DamagedMapJson {
    pub ordinal: u16,
    pub why: String,
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
    pub sets: Vec<SetJson>,
    /// Said where the medium lists no capture while much of its file system is in use: its
    /// directories are likely damaged (null otherwise).
    pub note: Option<String>,
    /// Directories where a capture or a generation would be whose names none has (a name
    /// overwritten in a damaged directory, or someone's own), and a capture's or a
    /// generation's directory whose entry was deleted since (`MGEAR/web01/? (a generation's
    /// directory whose entry was deleted or damaged: it holds MANIFEST, ...)`): what they hold
    /// is invisible to every reader, and `verify` fails the medium while they are there.
    pub unexpected: Vec<String>,
    /// A generation whose files read as damaged (its manifest, or a file's entry), not one
    /// only missing a segment that the media given do not place: inspect exits 1.
    #[serde(skip)]
    pub damaged_generation: bool,
}

/// Run `mgear inspect`.
pub fn run(args: Request) -> crate::Result<i32> {
    // A span over two appliances (or an appliance and a medium read as a
    // device) is one shipment too.
    let wheres: Vec<crate::medium::Where> = args
        .appliance
        .iter()
        .map(|p| crate::medium::Where::appliance_at(p.clone()))
        .chain(
            args.medium
                .iter()
                .map(|m| crate::medium::Where::one(m.clone())),
        )
        .collect();
    // Each medium is listed on its own, but one given twice would be listed
    // twice as a shipment of two.
    crate::medium::Where {
        medium: args.medium.clone(),
        appliance: args.appliance.clone(),
    }
    .refuse_duplicates()?;
    let several = wheres.len() > 1;
    // A disk stream asked for (`web01.d0`) is listed alone, but the shipment
    // judges its machine with every disk (with the one stream only, the set
    // was called unfinished).
    let stream = args
        .name
        .as_deref()
        .filter(|n| image_format::set::parse_disk_stream_name(n).is_some());
    let mut media = Vec::new();
    for w in &wheres {
        let m = medium_json(
            w,
            args.name.as_deref().map(image_format::set::owner),
            several,
        );
        media.push(match (m, stream) {
            // The set is not there: the message names the stream asked for.
            (Err(_), Some(s)) if !several => {
                return Err(crate::exit::usage(format!(
                    "there is no capture {s} on {}",
                    w.describe()
                )))
            }
            (m, _) => m?,
        });
    }
    // Over several media a name need only be on one of them.
    if let (Some(asked), true) = (&args.name, several) {
        if media
            .iter()
            .all(|m| m.captures.is_empty() && m.sets.is_empty())
        {
            return Err(crate::exit::usage(format!(
                "there is no capture {asked} on any of the {} media given",
                media.len()
            )));
        }
    }
    // A medium declared lost and found again, given here: what it holds is here after all
    // (ingest takes it), so its generations are not called lost.
    let given: std::collections::HashSet<(String, u16)> = media
        .iter()
        .filter_map(|m| m.span.as_ref())
        .flat_map(|sp| sp.this.iter().map(move |o| (sp.id.clone(), *o)))
        .collect();
    for m in &mut media {
        let Some(id) = m.span.as_ref().map(|sp| sp.id.clone()) else {
            continue;
        };
        for g in m.captures.iter_mut().flat_map(|c| &mut c.generations) {
            if g.lost_ordinal
                .is_some_and(|o| given.contains(&(id.clone(), o)))
            {
                (g.lost_medium, g.lost_ordinal) = (None, None);
            }
        }
    }
    let mut ship = shipment(
        &media
            .iter()
            .map(|m| (m.medium.clone(), m.captures.clone(), m.sets.clone()))
            .collect::<Vec<_>>(),
        args.name.is_none(),
    );
    // Each medium's own listing after the shipment's (which says "lost-medium" of these).
    for m in &mut media {
        // A set generation is only as ingestible as its disk streams: "complete" above a
        // stream that says NOT ingestible read as two answers to one question.
        let lost: Vec<(String, u32, String)> = m
            .captures
            .iter()
            .flat_map(|c| {
                c.generations
                    .iter()
                    .filter_map(|g| Some((c.name.clone(), g.generation, g.lost_medium.clone()?)))
            })
            .collect();
        for g in m.sets.iter_mut().flat_map(|s| &mut s.generations) {
            // Every disk that had part of it there (the first alone was named).
            let on: Vec<(String, String)> = g
                .disks
                .iter()
                .filter_map(|d| {
                    lost.iter()
                        .find(|(n, gen, _)| {
                            *gen == g.generation && n.eq_ignore_ascii_case(&d.stream)
                        })
                        .map(|(n, _, on)| (n.clone(), on.clone()))
                })
                .collect();
            if !on.is_empty() && g.complete {
                g.complete = false;
                for (stream, on) in on {
                    g.problems.push(format!(
                        "{stream}: part of it was on {on}, so the set cannot be ingested; \
                         the newer generation the replacement capture wrote holds its data again"
                    ));
                }
            }
        }
    }
    if let Some(s) = stream {
        for m in &mut media {
            m.captures.retain(|c| c.name.eq_ignore_ascii_case(s));
            m.sets.clear();
        }
        if media.iter().all(|m| m.captures.is_empty()) {
            return Err(crate::exit::usage(format!(
                "there is no capture {s} on {}",
                if several {
                    format!("any of the {} media given", media.len())
                } else {
                    wheres[0].describe()
                }
            )));
        }
    }
    // One member of a span given twice (a byte copy beside its original): verify and ingest
    // refuse it, and the shipment was "complete" here.
    let mut seen: std::collections::HashMap<(&str, u16), &str> = Default::default();
    for m in &media {
        let Some(span) = &m.span else { continue };
        for &o in &span.this {
            if let Some(first) = seen.insert((span.id.as_str(), o), m.medium.as_str()) {
                return Err(crate::exit::usage(format!(
                    "medium #{o} of span {} is given twice ({first} and {}): give each medium \
                     once (of a copy and its original, the one that left the capture site)",
                    span.id, m.medium
                )));
            }
        }
    }
    // A span's machines may have records on a medium not given: the
    // shipment is not complete without it, whatever the manifests say.
    ship.missing_media = missing_span_media(&media);
    if !ship.missing_media.is_empty() {
        ship.complete = false;
        let on_span: std::collections::HashSet<&str> = media
            .iter()
            .filter(|m| m.span.is_some())
            .map(|m| m.medium.as_str())
            .collect();
        for machine in &mut ship.machines {
            if machine
                .generations
                .iter()
                .any(|g| on_span.contains(g.medium.as_str()))
            {
                machine.complete = false;
            }
        }
    }
    // A capture whose directories cannot be listed, a generation listed as damaged, or a
    // medium that lists nothing while much of it is in use: a failure found, exit 1, as `ls`
    // of a damaged directory fails (it exited 0 beside "DAMAGED", and a script saw a good
    // listing).
    // A span label or a copy of the span map that does not decode is damage on the medium
    // too (exit 0 beside "DAMAGED" and a span id of zeros).
    // Spans of which a copy of the map given reads: a damaged copy beside one is listed from it.
    let readable: std::collections::HashSet<&str> = media
        .iter()
        .filter_map(|m| m.span.as_ref())
        .filter(|sp| !sp.media.is_empty())
        .map(|sp| sp.id.as_str())
        .collect();
    let damaged = media.iter().any(|m| {
        m.note.is_some()
            || !m.unexpected.is_empty()
            || m.damaged_generation
            || m.captures.iter().any(|c| c.damage.is_some())
            || m.span.as_ref().is_some_and(|sp| {
                !sp.damaged_labels.is_empty()
                    || (!sp.damaged_maps.is_empty() && !readable.contains(sp.id.as_str()))
            })
    });
    let code = match damaged {
        true => crate::exit::FOUND,
        false => crate::exit::OK,
    };
    let json = args.json || crate::output::json();
    // The file system, or only what is stored on it (a MANIFEST missing from a finished
    // generation reads clean to fsck.fat: "file system" sent the operator after the FAT).
    let fs_damage = media.iter().any(|m| {
        m.note.is_some()
            || !m.unexpected.is_empty()
            || m.captures.iter().any(|c| c.damage.is_some())
    });
    let say_damaged = || {
        if damaged && !json {
            eprintln!(
                "mgear: {} is damaged where said above: `mgear verify` of it says which \
                 captures are whole, `mgear medium fsck` what is damaged",
                match fs_damage {
                    true => "the medium's file system",
                    false => "what a capture on the medium holds",
                }
            );
        }
    };
    if media.len() > 1 {
        if json {
            crate::output::emit_ok(
                !damaged,
                &ShipmentReport {
                    command: "inspect",
                    media,
                    shipment: ship,
                },
            )?;
        } else {
            for m in &media {
                print_medium(m);
            }
            print_shipment(&ship);
        }
        say_damaged();
        return Ok(code);
    }
    let m = media.remove(0);
    let report = Report {
        command: "inspect",
        free_bytes: m.free_bytes,
        span: m.span,
        captures: m.captures,
        sets: m.sets,
        shipment: ship,
        note: m.note,
        unexpected: m.unexpected,
    };
    if json {
        crate::output::emit_ok(!damaged, &report)?;
        return Ok(code);
    }
    print_medium(&MediumJson {
        medium: wheres[0].describe(),
        free_bytes: report.free_bytes,
        span: report.span,
        captures: report.captures,
        sets: report.sets,
        note: report.note,
        unexpected: report.unexpected,
        damaged_generation: m.damaged_generation,
    });
    for m in &report.shipment.missing_media {
        say!("shipment NOT complete without {m}: a machine of this span may have records on it");
    }
    say_damaged();
    Ok(code)
}

/// One medium's captures and sets, keyless.
/// With `name`, only that capture or set (and a set's disk streams).
/// `several`: one medium of several (a name missing here is not an error).
fn medium_json(
    w: &crate::medium::Where,
    name: Option<&str>,
    several: bool,
) -> crate::Result<MediumJson> {
    let mut medium = w.open_read_only()?;
    let store = medium.store();
    // A removal cut off leaves a generation it had begun to delete reading as one cut off
    // at its start ("the same capture command starts it over"), with no word of the cut run.
    if store.left_mid_write() && !crate::output::json() {
        eprintln!(
            "mgear: note: {} was left mid-write by a run that was cut off (a capture, or a \
             `medium rm` or `medium fsck --repair`, which leaves a generation it had begun to \
             remove reading as cut off at its start): a removal cut off is finished by running \
             it again, and `mgear medium fsck --repair` puts the medium right",
            w.describe()
        );
    }
    let free = store.free_space().ok().flatten();
    let listed = image_format::list_captures(store).map_err(crate::Error::from);
    let sets = sets_of(store);
    let unexpected = unexpected_dirs(store);
    let stored = name.map(|n| image_format::stored_name(store, n));
    // Generations with a segment on a medium declared lost, by (name in lower case,
    // generation): complete by their manifests, gone in part for good.
    // Nothing listed while much is in use: said beside "no capture" (below).
    let hidden = match &listed {
        Ok(c) if c.is_empty() => crate::verify::hidden_by_damage(store),
        _ => String::new(),
    };
    let lost: std::collections::HashMap<(String, u32), (u16, String)> = medium
        .span()
        .map(|sp| {
            let map = sp.map();
            map.placed
                .iter()
                .filter(|(_, o)| map.member(**o).is_some_and(|m| m.lost))
                .filter_map(|(path, o)| {
                    let mut parts = path.split('/').skip(1);
                    let name = parts.next()?.to_ascii_lowercase();
                    let g = parts.next()?.strip_prefix('G')?.parse().ok()?;
                    Some(((name, g), (*o, map.describe(*o))))
                })
                .collect()
        })
        .unwrap_or_default();
    let span = medium.span().map(|sp| SpanJson {
        id: hex(&sp.id()),
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
        damaged_maps: sp
            .damaged_maps()
            .into_iter()
            .map(|(ordinal, why)| DamagedMapJson { ordinal, why })
            .collect(),
        damaged_labels: sp
            .damaged_labels()
            .into_iter()
            .map(|(medium, why)| DamagedLabelJson { medium, why })
            .collect(),
    });
    // A complete generation's segments that none of the media given holds and the span's map
    // places on no other medium: it is not complete here (a map stripped of a member listed a
    // half shipment as complete, nothing missing).
    let far: std::collections::HashSet<String> = medium
        .span()
        .map(|sp| sp.unreachable().into_iter().map(|(p, _)| p).collect())
        .unwrap_or_default();
    let mut unplaced: std::collections::HashMap<(String, u32), String> = Default::default();
    // Unlike a segment the media given do not place (a shipment's question), damage read in
    // a generation's own files fails the listing.
    let mut damaged_generation = false;
    // File-system damage a listing does not show otherwise (said as the medium's note).
    let mut fs_note: Option<String> = None;
    // A complete generation's segments the span places on its other media: its stored size
    // is the whole generation's, and this medium holds the rest.
    let mut elsewhere: std::collections::HashMap<(String, u32), u32> = Default::default();
    // What an unfinished generation's files hold on the medium: after "medium full" its
    // journal keeps nothing ("0 B kept") while its segment holds what was written past the
    // last checkpoint, space that showed nowhere.
    let mut held: std::collections::HashMap<(String, u32), u64> = Default::default();
    if let Ok(caps) = &listed {
        let spanned = medium.span().is_some();
        let store = medium.store();
        for c in caps {
            for g in &c.generations {
                if let image_format::GenerationState::Damaged(why) = &g.state {
                    damaged_generation |= why != image_format::CUT_OFF_AT_START;
                }
                // Cut off at its start, it may still hold files (a `medium rm` cut off after
                // the journal went): "0 B kept" alone hid them.
                let cut_off = matches!(&g.state, image_format::GenerationState::Damaged(why)
                    if why == image_format::CUT_OFF_AT_START);
                if cut_off || matches!(g.state, image_format::GenerationState::Unfinished { .. }) {
                    let dir = image_format::layout::generation_dir(&c.name, g.generation);
                    let bytes = store
                        .list(&dir)
                        .unwrap_or_default()
                        .iter()
                        .filter(|e| e.kind == image_format::store::EntryKind::File)
                        .filter_map(|e| store.len(&format!("{dir}/{}", e.name)).ok().flatten())
                        .sum();
                    held.insert((c.name.clone(), g.generation), bytes);
                }
                if g.state != image_format::GenerationState::Complete {
                    continue;
                }
                // A file its readers do not need (a journal slot) marked a directory: the
                // generation reads whole, but the file system is damaged (every reader of
                // the medium fails it, inspect too).
                // Only a name the format gives a file: a directory of another name is someone's
                // own (`mmd`), which `medium fsck` notes and leaves, not damage (inspect alone
                // called the medium damaged, exit 1).
                let dir = image_format::layout::generation_dir(&c.name, g.generation);
                let marked = store.list(&dir).ok().and_then(|entries| {
                    entries.into_iter().find(|e| {
                        use image_format::layout as l;
                        let n = e.name.to_ascii_uppercase();
                        e.kind == image_format::store::EntryKind::Dir
                            && ([
                                l::MANIFEST_FILE,
                                l::INDEX_FILE,
                                l::IPART_FILE,
                                l::JOURNAL_A,
                                l::JOURNAL_B,
                                image_format::commit::COMMIT_FILE,
                            ]
                            .contains(&n.as_str())
                                || l::parse_segment_name(&n).is_some())
                    })
                });
                if let Some(e) = marked {
                    damaged_generation = true;
                    fs_note.get_or_insert(format!(
                        "{dir}/{}: its entry marks it a directory (its attribute byte is \
                         damaged): {} generation {} reads whole without it, but the file \
                         system is damaged: do not write to the medium",
                        e.name, c.name, g.generation
                    ));
                }
                // The lengths its manifest signs: a segment cut short or grown was listed
                // "complete", exit 0, while verify and ingest failed it (a size is cheap to
                // compare; the bytes are verify's).
                let lens = &g.segment_lens;
                for k in 0..g.segments {
                    let p = image_format::layout::segment_path(&c.name, g.generation, k);
                    if far.contains(&p) {
                        *elsewhere.entry((c.name.clone(), g.generation)).or_default() += 1;
                        continue;
                    }
                    let why = match store.len(&p) {
                        Ok(Some(len)) => match lens.get(k as usize) {
                            Some(want) if *want != len => {
                                damaged_generation = true;
                                format!(
                                    "{p} is {len} bytes, but its manifest says {want}: it was \
                                     cut short or grown since it was written (`mgear verify` \
                                     names the records it holds)"
                                )
                            }
                            _ => continue,
                        },
                        // A medium of no span holds every segment: one its manifest lists
                        // and no entry shows is damage (its entry deleted, or marked a volume
                        // label), not a shipment's question (it listed the capture, exit 0).
                        Ok(None) if !spanned => {
                            damaged_generation = true;
                            format!(
                                "{p}, which its manifest lists, is not on the medium: its \
                                 directory entry was deleted or damaged"
                            )
                        }
                        Ok(None) => format!(
                            "{p}, which its manifest lists, is on none of the media given \
                             and the span's map places it on no other medium"
                        ),
                        // A segment's entry damaged (marked a directory): it was said
                        // "on none of the media given", and the medium passed.
                        Err(e) => {
                            damaged_generation = true;
                            e.to_string()
                        }
                    };
                    unplaced.insert((c.name.clone(), g.generation), why);
                    break;
                }
            }
        }
    }
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
        if caps.is_empty() && sets.is_empty() && !several {
            return Err(crate::exit::usage(format!(
                "there is no capture {asked} on {} (captures: {}){hidden}",
                w.describe(),
                if have.is_empty() {
                    "none".to_string()
                } else {
                    have.join(", ")
                }
            )));
        }
    }
    Ok(MediumJson {
        unexpected,
        damaged_generation,
        note: hidden
            .strip_prefix("; yet ")
            .map(|n| format!("nothing is listed, yet {n}"))
            .or_else(|| {
                // A root directory with a damaged name (`crate::verify::hidden_by_damage`).
                hidden
                    .strip_prefix("; the medium's root")
                    .map(|n| format!("nothing is listed: the medium's root{n}"))
            })
            .or(fs_note),
        medium: w.describe(),
        free_bytes: free,
        span,
        sets,
        captures: caps
            .into_iter()
            .map(|c| CaptureJson {
                name: c.name.clone(),
                recipient_slot: c.recipient_slot,
                passphrase_slot: c.passphrase_slot,
                damage: c.damage.clone(),
                generations: c
                    .generations
                    .into_iter()
                    .map(|g| {
                        let missing = unplaced.get(&(c.name.clone(), g.generation)).cloned();
                        // Its manifest's date and source, segments missing or not.
                        let complete = matches!(g.state, image_format::GenerationState::Complete);
                        let (state, next_chunk, damage) = match g.state {
                            image_format::GenerationState::Complete if missing.is_some() => {
                                ("damaged", None, missing)
                            }
                            image_format::GenerationState::Complete => ("complete", None, None),
                            image_format::GenerationState::Unfinished { next_chunk } => {
                                ("unfinished", Some(next_chunk), None)
                            }
                            // Nothing in it, not damaged data: what verify and fsck call it.
                            image_format::GenerationState::Damaged(why)
                                if why == image_format::CUT_OFF_AT_START =>
                            {
                                ("unfinished", Some(0), Some(why))
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
                            segments_elsewhere: g.segments_elsewhere.max(
                                elsewhere
                                    .get(&(c.name.clone(), g.generation))
                                    .copied()
                                    .unwrap_or(0),
                            ),
                            // An unfinished generation has no manifest: its
                            // time is not 0 (1970), it is not known yet.
                            created_unix: complete.then_some(g.created_unix),
                            created: complete.then(|| crate::output::iso_time(g.created_unix)),
                            source: complete.then_some(g.source_desc),
                            appliance_id: g.appliance_id.map(|a| hex(&a)),
                            manifest_root: g.manifest_root.map(|r| hex(&r)),
                            borrows_from: g
                                .peers
                                .iter()
                                .map(|p| format!("{} G{:04}", p.name, p.generation))
                                .collect(),
                            lost_medium: lost
                                .get(&(c.name.to_ascii_lowercase(), g.generation))
                                .map(|(_, d)| d.clone()),
                            lost_ordinal: lost
                                .get(&(c.name.to_ascii_lowercase(), g.generation))
                                .map(|(o, _)| *o),
                            on_medium_bytes: held.get(&(c.name.clone(), g.generation)).copied(),
                        }
                    })
                    .collect(),
            })
            .collect(),
    })
}

/// Directories under `MGEAR/` that are no capture (nor `ATTEST`), and directories in a
/// capture that are no generation, as `verify` names them ("unexpected directory").
fn unexpected_dirs(store: &mut dyn image_format::Store) -> Vec<String> {
    use image_format::layout;
    use image_format::store::EntryKind;
    let mut out = Vec::new();
    let root = store.list(layout::ROOT_DIR).unwrap_or_default();
    out.extend(unmarked_entries(
        store,
        layout::ROOT_DIR,
        image_format::LostDir::Capture,
    ));
    for e in root.iter().filter(|e| e.kind == EntryKind::Dir) {
        let path = format!("{}/{}", layout::ROOT_DIR, e.name);
        if e.name.eq_ignore_ascii_case(layout::ATTEST_NAME) {
            continue;
        }
        if layout::validate_name(&e.name).is_err() {
            out.push(path);
            continue;
        }
        for stray in image_format::stray_generation_dirs(store, &e.name).unwrap_or_default() {
            out.push(format!("{path}/{stray}"));
        }
        out.extend(unmarked_entries(
            store,
            &path,
            image_format::LostDir::Generation,
        ));
        out.extend(deleted_entries(
            store,
            &path,
            image_format::LostDir::Generation,
        ));
    }
    out.extend(deleted_entries(
        store,
        layout::ROOT_DIR,
        image_format::LostDir::Capture,
    ));
    out
}

/// Directories of `kind` in `dir` whose entry was deleted or damaged since, as `DIR/? (KIND
/// directory whose entry was deleted or damaged: it holds ...)`.
fn deleted_entries(
    store: &mut dyn image_format::Store,
    dir: &str,
    kind: image_format::LostDir,
) -> Vec<String> {
    image_format::lost_dirs_of(store, dir, kind)
        .iter()
        .map(|names| {
            format!(
                "{dir}/? ({} directory {DELETED}: it holds {})",
                kind.what(),
                crate::output::printable_names(names, 4)
            )
        })
        .collect()
}

/// Directories of `kind` in `dir` whose entry lost its directory mark (they read as empty
/// files), as `DIR/NAME (KIND directory whose entry lost its directory mark)`.
fn unmarked_entries(
    store: &mut dyn image_format::Store,
    dir: &str,
    kind: image_format::LostDir,
) -> Vec<String> {
    image_format::unmarked_dirs_of(store, dir, kind)
        .into_iter()
        .map(|n| format!("{dir}/{n} ({} directory {UNMARKED})", kind.what()))
        .collect()
}

/// How [`deleted_entries`] names what it found.
const DELETED: &str = "whose entry was deleted or damaged";
/// How [`unexpected_dirs`] names a directory whose entry reads as a file.
const UNMARKED: &str = "whose entry lost its directory mark";

fn print_medium(report: &MediumJson) {
    say!(
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
    if let Some(n) = &report.note {
        say!("  NOTE: {n}");
    }
    for u in &report.unexpected {
        if u.contains(DELETED) || u.contains(UNMARKED) {
            say!(
                "  {u}: invisible to every reader; `mgear verify` fails the medium while it is \
                 there"
            );
            continue;
        }
        say!(
            "  {}: a directory where a capture or a generation would be, under a name none \
             has (a name damaged in its directory, or someone's own): what it holds is \
             invisible to every reader; `mgear verify` fails the medium while it is there",
            crate::output::printable(u)
        );
    }
    if let Some(sp) = &report.span {
        let this: Vec<String> = sp.this.iter().map(|o| format!("#{o}")).collect();
        for d in &sp.damaged_labels {
            say!(
                "span label of {} (MGEAR/SPAN) is DAMAGED ({}): which span and which medium of it \
                 this is cannot be read from it; its captures are listed as this medium holds \
                 them (`mgear verify` names what else is damaged; ingest takes the other \
                 media of the span without it, and names what is missing)",
                d.medium,
                d.why
            );
        }
        for d in &sp.damaged_maps {
            say!(
                "span {}: medium #{}'s copy of the span map is DAMAGED ({}); every medium holds \
                 a copy: give another medium of the span beside it to list them all \
                 (`mgear verify` names what else is damaged)",
                sp.id,
                d.ordinal,
                d.why
            );
        }
        if sp.media.is_empty() {
            say!(
                "span {}: this is medium {}; no copy of the span map given could be read, so the \
                 other media of the span are not known from here",
                sp.id,
                this.join(", ")
            );
        } else {
            say!(
                "span {}: this is medium {} of {}; the captures continue over these media:",
                sp.id,
                this.join(", "),
                sp.media.len()
            );
        }
        for m in &sp.media {
            say!(
                "  #{} {}: {} segment(s){}",
                m.ordinal,
                m.label,
                m.segments,
                if m.lost { " (declared lost)" } else { "" }
            );
        }
    }
    for s in &report.sets {
        say!("set {} (a machine: one capture per disk, NAME.dK)", s.name);
        for g in &s.generations {
            say!(
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
                say!(
                    "    disk {} {:<12} {:>10}  sector {}, table {}{}{}, source {}",
                    d.disk,
                    d.stream,
                    human_bytes(d.size),
                    // 0: not known at capture (an NBD export is not inspected).
                    match d.sector_size {
                        0 => "unknown".to_string(),
                        n => n.to_string(),
                    },
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
                say!("    PROBLEM: {p}");
            }
        }
        for (g, why) in &s.damaged {
            say!("  G{g:04} DAMAGED: {why}");
        }
    }
    for c in &report.captures {
        if let Some(why) = &c.damage {
            say!(
                "capture {}: DAMAGED, its files cannot be listed: {why}",
                c.name
            );
            continue;
        }
        let slots: Vec<&str> = [
            c.recipient_slot.then_some("recipient"),
            c.passphrase_slot.then_some("passphrase"),
        ]
        .into_iter()
        .flatten()
        .collect();
        say!(
            "capture {} (key slots: {})",
            c.name,
            if slots.is_empty() {
                "none: nothing can decrypt it".to_string()
            } else {
                slots.join(", ")
            }
        );
        for g in &c.generations {
            say!("{}", generation_line(g));
            if !g.borrows_from.is_empty() {
                say!(
                    "    borrows records from {} (dedup across machines: one data key)",
                    g.borrows_from.join(", ")
                );
            }
        }
    }
}

/// One generation of `inspect`'s human output. An unfinished generation
/// says so where a finished one gives its date and source: it has neither
/// until its manifest is written.
fn generation_line(g: &GenJson) -> String {
    let state = match (g.state, g.next_chunk, &g.damage) {
        ("unfinished", _, Some(w)) => format!("unfinished, {w}"),
        ("unfinished", Some(n), _) => format!("unfinished at chunk {n}/{}", g.chunk_count),
        ("damaged", _, Some(w)) => format!("DAMAGED: {w}"),
        (s, _, _) => s.to_owned(),
    };
    let state = match &g.lost_medium {
        Some(m) => format!("{state} but NOT ingestible (part of it was on {m})"),
        None => state,
    };
    let created = match (&g.created, g.state) {
        (Some(c), _) => format!("created {c}"),
        (None, "unfinished") => {
            "not finished (date and source are recorded when it finishes)".to_string()
        }
        (None, _) => "no manifest (no date or source)".to_string(),
    };
    let source = match g.source.as_deref() {
        Some("") => ", source ?".to_string(),
        Some(src) => format!(", source {src}"),
        None => String::new(),
    };
    // An unfinished generation's counts are written when it finishes: what it has is its
    // last checkpoint ("0 stored, 0 zero, 0 dedup" beside 64 MiB stored read as nonsense).
    let chunks = match (g.state, g.next_chunk) {
        ("unfinished", Some(n)) if g.stored_chunks + g.zero_chunks + g.dedup_chunks == 0 => {
            // A span's medium alone counts its own segments: said, with what is elsewhere.
            let mut notes = Vec::new();
            if g.segments_elsewhere > 0 {
                notes.push(format!(
                    "{} of its segments on other media of the span",
                    g.segments_elsewhere
                ));
            }
            if let Some(b) = g.on_medium_bytes.filter(|&b| b > g.stored_bytes) {
                notes.push(format!("{} on the medium", human_bytes(b)));
            }
            format!(
                "{} ({n} done at its last checkpoint), {} kept{}{}",
                crate::units::count(g.chunk_count, "chunk"),
                human_bytes(g.stored_bytes),
                match g.segments_elsewhere {
                    0 => "",
                    _ => " on this medium",
                },
                match notes.is_empty() {
                    true => String::new(),
                    false => format!(" ({})", notes.join("; ")),
                }
            )
        }
        _ => format!(
            "{} ({} stored, {} zero, {} dedup), {} stored",
            crate::units::count(g.chunk_count, "chunk"),
            g.stored_chunks,
            g.zero_chunks,
            g.dedup_chunks,
            human_bytes(g.stored_bytes)
        ),
    };
    // A complete generation of a span: its size is the whole generation's (an unfinished
    // one's line said so above).
    let spread = match (g.state, g.segments_elsewhere) {
        ("complete", n) if n > 0 => format!(" ({n} on other media of the span)"),
        _ => String::new(),
    };
    format!(
        "  G{:04} {state}{}: {created}, disk {}, {chunks} in {} segment(s){spread}{source}",
        g.generation,
        g.parent
            .map(|p| format!(" delta on G{p:04}"))
            .unwrap_or_default(),
        human_bytes(g.disk_size),
        g.segments,
    )
}

fn print_shipment(s: &Shipment) {
    say!(
        "shipment of {} media: {} machine(s), {}",
        s.media,
        s.machines.len(),
        if s.complete {
            "every machine complete"
        } else {
            "NOT every machine complete"
        }
    );
    for m in &s.missing_media {
        if m.contains(" was given but holds no span label") {
            say!("  missing: {m}");
        } else {
            say!("  missing: {m} (not given: a machine of this span may have records on it)");
        }
    }
    for m in &s.machines {
        // A set no generation of which has its set manifest yet: only the disks begun are
        // known (3 disks, one not started, read "2 disk(s)").
        let begun = m.kind == "set"
            && !m.generations.is_empty()
            && m.generations.iter().all(|g| g.state == "unfinished");
        say!(
            "  {} ({}, {}): {}",
            m.name,
            m.kind,
            if begun {
                format!(
                    "{} disk(s) begun so far: the set manifest that names every disk is \
                     written last",
                    m.disks
                )
            } else {
                format!("{} disk(s)", m.disks)
            },
            if m.complete {
                "newest generation complete"
            } else {
                "newest generation NOT complete"
            }
        );
        for g in &m.generations {
            say!("    G{:04} {} on {}", g.generation, g.state, g.medium);
        }
    }
}

/// One disk in a set report.
#[derive(Debug, Clone, Serialize)]
pub struct DiskJson {
    pub disk: usize,
    /// The disk stream holding it (`db01.d1`).
    pub stream: String,
    pub size: u64,
    pub sector_size: u32,
    /// `unknown`, `none`, `mbr` or `gpt`.
    pub table: &'static str,
    /// The disk the machine boots from.
    pub boot: bool,
    pub bios_boot: bool,
    pub efi_boot: bool,
    /// Operating system found on it (empty if not told).
    pub os: String,
    pub source: String,
    pub manifest_root: String,
}

impl DiskJson {
    /// Disk `k` of set `name`.
    pub fn of(name: &str, k: usize, d: &SetDisk) -> Self {
        DiskJson {
            disk: k,
            stream: set::disk_stream_name(name, k),
            size: d.size,
            sector_size: d.sector_size,
            table: d.table.as_str(),
            boot: d.boot,
            bios_boot: d.bios_boot,
            efi_boot: d.efi_boot,
            os: d.os.clone(),
            source: d.source_desc.clone(),
            manifest_root: hex(&d.manifest_root),
        }
    }
}

/// One set generation in `inspect --json`.
#[derive(Debug, Clone, Serialize)]
pub struct SetGenJson {
    pub generation: u32,
    pub parent: Option<u32>,
    pub created: String,
    pub capture_id: String,
    pub set_root: String,
    /// Every disk stream holds this generation, finished, and matches the set manifest.
    pub complete: bool,
    /// What is wrong when it is not complete.
    pub problems: Vec<String>,
    pub disks: Vec<DiskJson>,
}

/// One set in `inspect --json`.
#[derive(Debug, Clone, Serialize)]
pub struct SetJson {
    pub name: String,
    pub generations: Vec<SetGenJson>,
    /// Generations whose set manifest is damaged or missing, with why.
    pub damaged: Vec<(u32, String)>,
}

/// The sets on a medium (keyless), and the disk streams not yet bound by a
/// set manifest (a set capture under way) as unfinished generations.
pub fn sets_of(store: &mut dyn image_format::Store) -> crate::Result<Vec<SetJson>> {
    let mut out = Vec::new();
    for s in set::list_sets(store)? {
        let mut gens = Vec::new();
        for f in &s.generations {
            let problems = set::check_set(store, f)?
                .into_iter()
                .map(|(at, what)| format!("{at}: {what}"))
                .collect::<Vec<_>>();
            gens.push(SetGenJson {
                generation: f.set.generation,
                parent: (f.set.parent != 0).then_some(f.set.parent),
                created: crate::output::iso_time(f.set.created_unix),
                capture_id: hex(&f.set.capture_id),
                set_root: hex(&f.root),
                complete: problems.is_empty(),
                problems,
                disks: f
                    .set
                    .disks
                    .iter()
                    .enumerate()
                    .map(|(k, d)| DiskJson::of(&s.name, k, d))
                    .collect(),
            });
        }
        out.push(SetJson {
            name: s.name,
            generations: gens,
            damaged: s.damaged,
        });
    }
    Ok(out)
}

/// A disk of a machine in the shipment listing.
#[derive(Debug, Serialize)]
pub struct ShipDisk {
    pub disk: usize,
    pub stream: String,
    pub size: u64,
    /// Whether the machine boots from this disk, and its OS, as a set's
    /// manifest records them; `None` (null) where nothing in the clear says
    /// (a single-disk capture, whose disk facts are inside its encrypted
    /// data; a set generation whose set manifest is not written yet).
    pub boot: Option<bool>,
    pub os: Option<String>,
}

/// One generation of a machine on one medium.
#[derive(Debug, Serialize)]
pub struct ShipGeneration {
    pub generation: u32,
    pub medium: String,
    /// `complete`, `unfinished`, `damaged`, `lender-missing` (it borrows
    /// records from another machine's generation, dedup across machines,
    /// that is complete on none of the media listed), `lost-medium` (part
    /// of it was on a medium declared lost: the generation its replacement
    /// wrote is the one to ingest), or `no-key-slots` (complete, but its key
    /// slots are gone, e.g. the appliance was erased: nothing can decrypt it).
    pub state: &'static str,
    pub problems: Vec<String>,
    pub disks: Vec<ShipDisk>,
}

/// A machine in the shipment listing: a set, or a single-disk capture.
#[derive(Debug, Serialize)]
pub struct ShipMachine {
    pub name: String,
    /// `set` or `disk` (a single-disk capture).
    pub kind: &'static str,
    pub disks: usize,
    pub generations: Vec<ShipGeneration>,
    /// The newest generation is complete on some medium.
    pub complete: bool,
}

/// What `inspect --json` over several media adds: every machine of the shipment.
#[derive(Debug, Serialize)]
pub struct Shipment {
    pub media: usize,
    pub machines: Vec<ShipMachine>,
    /// Every machine's newest generation is complete, and no medium of a
    /// span the media given belong to is missing.
    pub complete: bool,
    /// Media of those spans that were not given (each: ordinal, label).
    pub missing_media: Vec<String>,
}

/// The shipment listing of several media's captures and sets. `whole`:
/// the captures are all those of the media (no name filter), so a lender
/// (dedup across machines) missing from them is missing from the media.
pub fn shipment(media: &[(String, Vec<CaptureJson>, Vec<SetJson>)], whole: bool) -> Shipment {
    fn entry(
        machines: &mut Vec<ShipMachine>,
        name: &str,
        kind: &'static str,
        disks: usize,
    ) -> usize {
        if let Some(i) = machines.iter().position(|m| m.name == name) {
            machines[i].disks = machines[i].disks.max(disks);
            return i;
        }
        machines.push(ShipMachine {
            name: name.into(),
            kind,
            disks,
            generations: Vec::new(),
            complete: false,
        });
        machines.len() - 1
    }
    let mut machines: Vec<ShipMachine> = Vec::new();
    for (medium, caps, sets) in media {
        for s in sets {
            for g in &s.generations {
                let i = entry(&mut machines, &s.name, "set", g.disks.len());
                machines[i].generations.push(ShipGeneration {
                    generation: g.generation,
                    medium: medium.clone(),
                    state: if g.complete { "complete" } else { "damaged" },
                    problems: g.problems.clone(),
                    disks: g
                        .disks
                        .iter()
                        .map(|d| ShipDisk {
                            disk: d.disk,
                            stream: d.stream.clone(),
                            size: d.size,
                            boot: Some(d.boot),
                            os: Some(d.os.clone()),
                        })
                        .collect(),
                });
            }
            for (g, why) in &s.damaged {
                let i = entry(&mut machines, &s.name, "set", 0);
                machines[i].generations.push(ShipGeneration {
                    generation: *g,
                    medium: medium.clone(),
                    state: "damaged",
                    problems: vec![why.clone()],
                    disks: Vec::new(),
                });
            }
        }
        for c in caps {
            // A disk stream belongs to its set; one whose set generation has
            // no set manifest yet is an unfinished generation of the set.
            if let Some((set_name, k)) = set::parse_disk_stream_name(&c.name) {
                for g in &c.generations {
                    let bound = sets.iter().any(|s| {
                        s.name == set_name
                            && s.generations.iter().any(|sg| sg.generation == g.generation)
                    });
                    if bound {
                        continue;
                    }
                    let i = entry(&mut machines, set_name, "set", 0);
                    let m = &mut machines[i];
                    let at = match m
                        .generations
                        .iter()
                        .position(|x| x.generation == g.generation && x.medium == *medium)
                    {
                        Some(p) => p,
                        None => {
                            m.generations.push(ShipGeneration {
                                generation: g.generation,
                                medium: medium.clone(),
                                state: "unfinished",
                                problems: vec!["no set manifest yet: the set capture did not \
                                                finish"
                                    .into()],
                                disks: Vec::new(),
                            });
                            m.generations.len() - 1
                        }
                    };
                    m.generations[at].disks.push(ShipDisk {
                        disk: k,
                        stream: c.name.clone(),
                        size: g.disk_size,
                        boot: None,
                        os: None,
                    });
                    m.disks = m.disks.max(k + 1);
                }
                continue;
            }
            let i = entry(&mut machines, &c.name, "disk", 1);
            if let Some(why) = &c.damage {
                // Nothing of it can be listed: no generation of it is known complete.
                machines[i].generations.push(ShipGeneration {
                    generation: 0,
                    medium: medium.clone(),
                    state: "damaged",
                    problems: vec![why.clone()],
                    disks: Vec::new(),
                });
            }
            for g in &c.generations {
                machines[i].generations.push(ShipGeneration {
                    generation: g.generation,
                    medium: medium.clone(),
                    state: g.state,
                    problems: g.damage.clone().into_iter().collect(),
                    disks: vec![ShipDisk {
                        disk: 0,
                        stream: c.name.clone(),
                        size: g.disk_size,
                        boot: None,
                        os: None,
                    }],
                });
            }
        }
    }
    // Part of a generation on a medium declared lost: complete by its manifests, not
    // ingestible (it was listed as complete).
    let lost: std::collections::HashMap<(String, u32), &str> = media
        .iter()
        .flat_map(|(_, caps, _)| caps)
        .flat_map(|c| {
            c.generations.iter().filter_map(|g| {
                Some((
                    (c.name.to_ascii_lowercase(), g.generation),
                    g.lost_medium.as_deref()?,
                ))
            })
        })
        .collect();
    for g in machines.iter_mut().flat_map(|m| &mut m.generations) {
        let on = g
            .disks
            .iter()
            .find_map(|d| lost.get(&(d.stream.to_ascii_lowercase(), g.generation)));
        if let (Some(on), "complete") = (on, g.state) {
            g.state = "lost-medium";
            g.problems.push(format!(
                "part of it was on {on}: it cannot be ingested; the newer generation the \
                 replacement capture wrote holds its data again"
            ));
        }
    }
    // Captures whose key slots are gone (an erased appliance's): complete by their
    // manifests, and nothing can decrypt them (the shipment was listed as complete, and a
    // script took it for ready to ingest).
    let keyless: std::collections::HashSet<String> = media
        .iter()
        .flat_map(|(_, caps, _)| caps)
        .filter(|c| c.damage.is_none() && !c.recipient_slot && !c.passphrase_slot)
        .map(|c| c.name.to_ascii_lowercase())
        .collect();
    for g in machines.iter_mut().flat_map(|m| &mut m.generations) {
        let gone = g
            .disks
            .iter()
            .any(|d| keyless.contains(&d.stream.to_ascii_lowercase()));
        if gone && g.state == "complete" {
            g.state = "no-key-slots";
            g.problems.push(
                "its key slots are gone (the appliance was erased, or MGEAR/NAME/KEYS and \
                 KEYPASS removed): nothing can decrypt it"
                    .into(),
            );
        }
    }
    // Dedup across machines: a generation is usable only with the
    // generations it borrows records from.
    let here: std::collections::HashSet<(&str, u32)> = media
        .iter()
        .flat_map(|(_, caps, _)| caps)
        .flat_map(|c| {
            c.generations
                .iter()
                .filter(|g| g.state == "complete")
                .map(|g| (c.name.as_str(), g.generation))
        })
        .collect();
    let borrows: std::collections::HashMap<(&str, u32), &[String]> = media
        .iter()
        .flat_map(|(_, caps, _)| caps)
        .flat_map(|c| {
            c.generations
                .iter()
                .map(|g| ((c.name.as_str(), g.generation), g.borrows_from.as_slice()))
        })
        .collect();
    for g in machines
        .iter_mut()
        .flat_map(|m| &mut m.generations)
        .filter(|_| whole)
    {
        let mut missing: Vec<String> = Vec::new();
        for d in &g.disks {
            for lender in borrows
                .get(&(d.stream.as_str(), g.generation))
                .into_iter()
                .copied()
                .flatten()
            {
                let found = lender
                    .rsplit_once(" G")
                    .and_then(|(n, k)| Some((n, k.parse::<u32>().ok()?)))
                    .is_some_and(|key| here.contains(&key));
                if !found && !missing.contains(lender) {
                    missing.push(lender.clone());
                }
            }
        }
        if !missing.is_empty() && g.state == "complete" {
            g.state = "lender-missing";
        }
        for lender in missing {
            g.problems.push(format!(
                "borrows records from {lender} (dedup across machines), which is complete on \
                 none of the media listed"
            ));
        }
    }
    // One generation of one name with two manifest roots on two media: two
    // different captures that happen to share a name (media of two
    // shipments given together), not one machine; which one a reader gets
    // would depend on the order of the media.
    let roots: std::collections::HashMap<(&str, &str, u32), Option<&str>> = media
        .iter()
        .flat_map(|(medium, caps, _)| {
            caps.iter().flat_map(move |c| {
                c.generations.iter().map(move |g| {
                    (
                        (medium.as_str(), c.name.as_str(), g.generation),
                        g.manifest_root.as_deref(),
                    )
                })
            })
        })
        .collect();
    for m in &mut machines {
        let clash: Vec<u32> = m
            .generations
            .iter()
            .flat_map(|a| m.generations.iter().map(move |b| (a, b)))
            .filter(|(a, b)| a.generation == b.generation && a.medium != b.medium)
            .filter(|(a, b)| {
                a.disks.iter().zip(&b.disks).any(|(da, db)| {
                    let ra = roots.get(&(a.medium.as_str(), da.stream.as_str(), a.generation));
                    let rb = roots.get(&(b.medium.as_str(), db.stream.as_str(), b.generation));
                    matches!((ra, rb), (Some(Some(x)), Some(Some(y))) if x != y)
                })
            })
            .map(|(a, _)| a.generation)
            .collect();
        for g in m
            .generations
            .iter_mut()
            .filter(|g| clash.contains(&g.generation))
        {
            g.state = "ambiguous";
            g.problems.push(format!(
                "another medium holds a different generation {} of {} (another manifest root): \
                 two captures share the name; give the media of one shipment",
                g.generation, m.name
            ));
        }
    }
    for m in &mut machines {
        m.generations
            .sort_by(|a, b| (a.generation, &a.medium).cmp(&(b.generation, &b.medium)));
        let newest = m.generations.iter().map(|g| g.generation).max();
        m.complete = m
            .generations
            .iter()
            .any(|g| Some(g.generation) == newest && g.state == "complete");
    }
    machines.sort_by(|a, b| a.name.cmp(&b.name));
    Shipment {
        media: media.len(),
        // Media with no machine on them are no complete shipment (a script shipping on
        // `complete` shipped empty media).
        complete: !machines.is_empty() && machines.iter().all(|m| m.complete),
        machines,
        missing_media: Vec::new(),
    }
}

/// Media of the spans `media` belong to that are not among them (lost
/// ones, recaptured elsewhere, excepted): what a shipment still needs.
fn missing_span_media(media: &[MediumJson]) -> Vec<String> {
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for m in media {
        let Some(first) = &m.span else { continue };
        if !seen.insert(first.id.clone()) {
            continue;
        }
        // Each medium is read on its own: the member list is that medium's copy of the map,
        // empty where the copy is damaged. The map is append-only, so a medium that missed
        // later runs (one declared lost and found again) holds an older copy, which lacks
        // the media that joined since and the losses declared: every copy given is merged
        // (a member any copy knows, lost if any copy says so), or the answer depended on
        // which medium was given first.
        let copies: Vec<&SpanJson> = media
            .iter()
            .filter_map(|x| x.span.as_ref())
            .filter(|x| x.id == first.id)
            .collect();
        let mut members: std::collections::BTreeMap<u16, SpanMemberJson> = Default::default();
        for m in copies.iter().flat_map(|c| &c.media) {
            let e = members.entry(m.ordinal).or_insert_with(|| SpanMemberJson {
                ordinal: m.ordinal,
                label: m.label.clone(),
                lost: false,
                segments: 0,
            });
            e.lost |= m.lost;
            e.segments = e.segments.max(m.segments);
        }
        if members.is_empty() {
            out.push(format!(
                "the other media of span {} (no copy of its map given could be read: give \
                 every medium of the span)",
                first.id
            ));
            continue;
        }
        let given: std::collections::HashSet<u16> =
            copies.iter().flat_map(|x| x.this.iter().copied()).collect();
        // A medium whose own copy of the map places fewer segments on it than the other
        // copies do is an older copy of that member (made before the span's later runs): the
        // shipment was "complete", and verify and ingest then found its segments missing.
        for x in media
            .iter()
            .filter(|x| x.span.as_ref().is_some_and(|s| s.id == first.id))
        {
            let Some(span) = &x.span else { continue };
            for &o in &span.this {
                let own = span
                    .media
                    .iter()
                    .find(|m| m.ordinal == o)
                    .map(|m| m.segments);
                let newest = members.get(&o).map(|m| m.segments);
                if let (Some(own), Some(newest)) = (own, newest) {
                    if own < newest {
                        out.push(format!(
                            "medium #{o} of span {} as it is now: {} is an older copy of it (its \
                             map places {own} segment(s) on it, the other media's {newest}): \
                             give that medium as it left the capture site",
                            first.id, x.medium
                        ));
                    }
                }
            }
        }
        for member in members.values().filter(|x| !x.lost) {
            if !given.contains(&member.ordinal) {
                // Given under the name it joined with, and holding no span now: formatted
                // since (it was said "not given" of a medium on the command line).
                let blank = media
                    .iter()
                    .any(|x| x.span.is_none() && x.medium == member.label);
                out.push(format!(
                    "medium #{} of span {} ({}, {} segment(s)){}",
                    member.ordinal,
                    first.id,
                    member.label,
                    member.segments,
                    if blank {
                        format!(
                            ": {} was given but holds no span label: formatted (or its MGEAR/ \
                             removed) since it joined, its share gone from it; if so, a capture \
                             with `--replace-medium '#{}'` stores that share again",
                            member.label, member.ordinal
                        )
                    } else {
                        String::new()
                    }
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generation(state: &'static str, created: Option<&str>, source: Option<&str>) -> GenJson {
        GenJson {
            generation: 1,
            state,
            next_chunk: (state == "unfinished").then_some(3),
            damage: None,
            parent: None,
            chunk_size: 1 << 20,
            disk_size: 30 << 20,
            chunk_count: 30,
            stored_chunks: 3,
            zero_chunks: 0,
            dedup_chunks: 0,
            stored_bytes: 3 << 20,
            segments: 1,
            created_unix: created.map(|_| 1_796_196_193),
            created: created.map(String::from),
            source: source.map(String::from),
            appliance_id: None,
            manifest_root: None,
            borrows_from: Vec::new(),
            lost_medium: None,
            lost_ordinal: None,
            on_medium_bytes: None,
            segments_elsewhere: 0,
        }
    }

    /// A single-disk capture records no boot facts in the clear: the listing says
    /// nothing of them (it said `boot: false` of a bootable disk).
    #[test]
    fn a_single_capture_in_the_shipment_listing_has_no_boot_facts() {
        let cap = CaptureJson {
            name: "web01".into(),
            recipient_slot: true,
            passphrase_slot: false,
            generations: vec![generation("complete", Some("2026-12-02T07:23:13Z"), None)],
            damage: None,
        };
        let s = shipment(&[("fat:a.img".into(), vec![cap], Vec::new())], true);
        let v = serde_json::to_value(&s).unwrap();
        let disk = &v["machines"][0]["generations"][0]["disks"][0];
        assert_eq!(disk["stream"], "web01", "{v}");
        assert!(disk["boot"].is_null() && disk["os"].is_null(), "{v}");
        assert_eq!(v["complete"], true, "{v}");
        // Media with no machine on them are no complete shipment.
        let none = shipment(&[("fat:a.img".into(), Vec::new(), Vec::new())], true);
        assert!(!none.complete);
    }

    #[test]
    fn an_unfinished_generation_shows_no_epoch_date_and_no_unknown_source() {
        let line = generation_line(&generation("unfinished", None, None));
        assert_eq!(
            line,
            "  G0001 unfinished at chunk 3/30: not finished (date and source are recorded when \
             it finishes), disk 30.00 MiB, 30 chunks (3 stored, 0 zero, 0 dedup), 3.00 MiB \
             stored in 1 segment(s)"
        );
        // Counts not written yet (they are when it finishes): its checkpoint is what it has.
        let mut g = generation("unfinished", None, None);
        g.stored_chunks = 0;
        assert!(
            generation_line(&g).contains(
                "30 chunks (3 done at its last checkpoint), 3.00 MiB kept in 1 segment(s)"
            ),
            "{}",
            generation_line(&g)
        );
        // What its files hold beyond it (a medium-full stop): said, it showed nowhere.
        g.on_medium_bytes = Some(57 << 20);
        assert!(
            generation_line(&g).contains("3.00 MiB kept (57.00 MiB on the medium) in 1 segment(s)"),
            "{}",
            generation_line(&g)
        );
        let line = generation_line(&generation(
            "complete",
            Some("2026-12-02T07:23:13Z"),
            Some("d.raw"),
        ));
        assert!(
            line.starts_with("  G0001 complete: created 2026-12-02T07:23:13Z, disk 30.00 MiB"),
            "{line}"
        );
        assert!(line.ends_with(", source d.raw"), "{line}");
    }
}
