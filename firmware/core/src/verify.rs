//! Glue between the appliance and the format's keyless verifier
//! (`image_format::verify::verify_keyless`): throttled progress reporting
//! and the mapping of the format's problem locations to console [`Place`]s.
//! The verifier reads each segment once, front to back in large reads, and
//! hashes each stored byte once (image-format FORMAT.md §5, §11); seal and
//! arrival then add the attestation's file and region hashes.

use alloc::string::String;

use image_format::{layout, Error as FormatError, Location, Store, StoreError};
use image_format::{verify_keyless, Problem as FormatProblem, VerifyObserver};

use crate::protocol::{Place, Problem, VerifyReport};

/// Progress messages per verification, at most (each is a console frame).
const PROGRESS_STEPS: u64 = 50;

struct Observer<'a> {
    progress: &'a mut dyn FnMut(&str, u64, u64),
    next: u64,
}

impl VerifyObserver for Observer<'_> {
    fn progress(&mut self, done: u64, total: u64) {
        if done >= self.next || done == total {
            (self.progress)("verifying bytes", done, total);
            // At most PROGRESS_STEPS messages, but never more than
            // PROGRESS_BYTES apart: on a large medium 1/50 of it takes
            // longer than the host waits for a sign of life.
            let step = (total / PROGRESS_STEPS).clamp(1, crate::attest::PROGRESS_BYTES);
            self.next = done + step;
        }
    }
}

/// Where a format problem is, as the console names it.
pub fn place_of(at: &Location) -> Place {
    if let Some(seg) = at.segment {
        return Place::Segment {
            capture: at.capture.clone(),
            generation: at.generation.map(u64::from),
            segment: layout::segment_name(seg),
            record: at.record.map(u64::from),
        };
    }
    if let Some(path) = &at.file {
        return Place::File { path: path.clone() };
    }
    if !at.capture.is_empty() {
        return Place::Capture {
            capture: at.capture.clone(),
            generation: at.generation.map(u64::from),
        };
    }
    Place::Medium
}

fn problem_of(p: &FormatProblem) -> Problem {
    let mut message = String::from(p.what.as_str());
    if let (Some(path), Some(r)) = (&p.at.file, &p.at.file_range) {
        if p.at.segment.is_some() {
            message = alloc::format!("{message} ({path} bytes {}..{})", r.start, r.end);
        } else {
            message = alloc::format!("{message} (bytes {}..{})", r.start, r.end);
        }
    }
    Problem {
        place: place_of(&p.at),
        message,
    }
}

/// Verify every capture on the medium without any key. `progress(what,
/// done, total)` is called as the walk advances. Problems with the data go
/// into the report; `Err` only when the medium itself cannot be read.
pub fn verify_medium(
    store: &mut dyn Store,
    progress: &mut dyn FnMut(&str, u64, u64),
) -> Result<VerifyReport, StoreError> {
    let mut obs = Observer { progress, next: 0 };
    match verify_keyless(store, &mut obs) {
        Ok(r) => Ok(VerifyReport {
            captures: u64::from(r.captures),
            segments: u64::from(r.segments),
            records: r.records,
            bytes: r.bytes,
            problems: r.problems.iter().map(problem_of).collect(),
        }),
        Err(e @ FormatError::Store { .. }) => Err(StoreError::Io(alloc::format!("{e}"))),
        Err(e) => Ok(VerifyReport {
            problems: alloc::vec![Problem {
                place: Place::Medium,
                message: alloc::format!("{e}")
            }],
            ..VerifyReport::default()
        }),
    }
}
