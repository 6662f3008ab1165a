//! NBD exports as capture sources (`nbd://HOST[:PORT]/EXPORT`,
//! `nbd+unix:///EXPORT?socket=PATH`), e.g. `qemu-nbd -r -t -k /tmp/s disk.qcow2`
//! or an nbdkit plugin in front of VMware or a cloud snapshot.
//!
//! When the server offers `base:allocation`, ranges it reports as reading
//! zero are not transferred at all: thin disks capture at the speed of their
//! data, not of their size. The map is fetched a window at a time so a
//! huge disk does not need one huge reply.
//!
//! Opened with a bitmap, the one connection also negotiates its
//! `qemu:dirty-bitmap:NAME` context (changed-block tracking; `qemu-nbd` serves
//! one client at a time, so it cannot be a second connection), and
//! [`Source::dirty_chunks`] reads it as chunk indexes ([`dirty_chunks`]), for
//! `capture --dirty-bitmap` and `sync`.

use crate::error::Context;
use mgear_nbd::{Client, ConnectOptions, NbdUrl, BASE_ALLOCATION};

use super::Source;
use crate::exit::{coded_next, usage, USAGE};

/// Allocation map fetched per request.
const WINDOW: u64 = 256 << 20;

/// An NBD export.
pub struct NbdSource {
    url: String,
    client: Client,
    size: u64,
    allocation: bool,
    /// Zero runs `(offset, len)` known for `[win_start, win_end)`.
    zeros: Vec<(u64, u64)>,
    win_start: u64,
    win_end: u64,
    /// The dirty bitmap negotiated with the export, if one was asked for.
    bitmap: Option<String>,
}

/// Open an NBD URL (parsed by `crate::spec`) as a source, with the dirty bitmap `bitmap`
/// negotiated when one is given (refused, with what to do, when the export lacks it).
pub fn open(url: &NbdUrl, bitmap: Option<&str>) -> crate::Result<Box<dyn Source>> {
    let spec = url.to_string();
    // A server that takes the connection and never answers the handshake: said after a
    // minute, and left 30 s after a Ctrl-C (the watchdog of every wait).
    let _waiting = crate::progress::Progress::waiting(&format!("connecting to NBD source {spec}"));
    let tracked: Vec<String> = bitmap
        .map(|b| format!("qemu:dirty-bitmap:{b}"))
        .into_iter()
        .collect();
    let connect = |with_map: bool| {
        let mut meta_contexts = tracked.clone();
        if with_map {
            meta_contexts.push(BASE_ALLOCATION.to_owned());
        }
        Client::connect(
            url,
            &ConnectOptions {
                meta_contexts,
                read_only: true,
            },
        )
    };
    // The allocation map is a bonus: an export without it is read whole.
    let client = match connect(true) {
        Ok(c) => c,
        // An export that answers, only not with that map, is asked again without it; one that
        // does not answer at all is not (a silent handshake then waited the NBD timeout twice,
        // ten minutes, and its first Ctrl-C was not heard).
        Err(e @ (mgear_nbd::Error::Connect { .. } | mgear_nbd::Error::Io { .. })) => {
            return Err(crate::Error::from(e).context(format!("connecting to NBD source {spec}")))
        }
        // The NBD error carries a hint of its own that says what ours says:
        // only its facts go into the message, and the next step once.
        Err(_) => connect(false).map_err(|e| match (e, bitmap) {
            (
                mgear_nbd::Error::MetaContextUnsupported {
                    server, context, ..
                },
                Some(b),
            ) => coded_next(
                USAGE,
                format!(
                    "{spec} does not export dirty bitmap {b} (the server {server} offers no \
                         meta context {context})"
                ),
                format!(
                    "export it with `qemu-nbd -B {b}`; the bitmap must be in the image, made \
                         with `qemu-img bitmap --add --enable DISK {b}` no later than the capture \
                         whose changes it tracks"
                ),
            ),
            (other, _) => {
                crate::Error::from(other).context(format!("connecting to NBD source {spec}"))
            }
        })?,
    };
    let allocation = client.meta_contexts().iter().any(|c| c == BASE_ALLOCATION);
    let size = client.size();
    Ok(Box::new(NbdSource {
        url: spec,
        client,
        size,
        allocation,
        zeros: Vec::new(),
        win_start: 0,
        win_end: 0,
        bitmap: bitmap.map(str::to_owned),
    }))
}

impl Source for NbdSource {
    fn len(&self) -> u64 {
        self.size
    }

    fn read_exact_at(&mut self, offset: u64, buf: &mut [u8]) -> crate::Result<()> {
        if offset + buf.len() as u64 > self.size {
            crate::bail!("read past the end of NBD source {}", self.url);
        }
        self.client
            .read_at(offset, buf)
            .with_context(|| format!("reading NBD source {} at byte {offset}", self.url))
    }

    fn is_hole(&mut self, offset: u64, len: u64) -> crate::Result<bool> {
        if !self.allocation {
            return Ok(false);
        }
        let end = offset + len;
        if offset < self.win_start || end > self.win_end {
            let want = WINDOW.max(len);
            let ranges = self
                .client
                .allocated_ranges(offset, want)
                .with_context(|| format!("block status of NBD source {}", self.url))?;
            self.zeros = ranges
                .into_iter()
                .filter(|r| r.3)
                .map(|r| (r.0, r.1))
                .collect();
            self.win_start = offset;
            self.win_end = (offset + want).min(self.size);
        }
        Ok(self.zeros.iter().any(|&(o, l)| o <= offset && end <= o + l))
    }

    fn describe(&self) -> String {
        self.url.clone()
    }

    /// The bytes in `[from, to)` the export does not report as reading zeros
    /// (`base:allocation`): the plan keeps no margin for the rest (a sparse export was planned
    /// with 4 % of its holes added, and refused a medium it fitted).
    fn data_bytes(&mut self, from: u64, to: u64) -> Option<u64> {
        let to = to.min(self.size);
        if !self.allocation || from >= to {
            return None;
        }
        let ranges = self.client.allocated_ranges(from, to - from).ok()?;
        Some(ranges.iter().filter(|r| !r.3).map(|r| r.1).sum())
    }

    fn dirty_chunks(&mut self, chunk_size: u32) -> crate::Result<Option<Vec<u64>>> {
        match self.bitmap.clone() {
            Some(b) => dirty_chunks(&mut self.client, &b, chunk_size).map(Some),
            None => Ok(None),
        }
    }
}

/// Chunk indexes touched by the ranges `qemu:dirty-bitmap:<bitmap>` marks
/// dirty (sorted, each once). The client must have negotiated that context.
fn dirty_chunks(
    client: &mut mgear_nbd::Client,
    bitmap: &str,
    chunk_size: u32,
) -> crate::Result<Vec<u64>> {
    if chunk_size == 0 {
        return Err(usage("chunk size must not be 0"));
    }
    let cs = chunk_size as u64;
    let ranges = client
        .dirty_ranges(bitmap, 0, client.size())
        .with_context(|| format!("reading dirty bitmap {bitmap}"))?;
    let mut out: Vec<u64> = Vec::new();
    for (off, len) in ranges {
        if len == 0 {
            continue;
        }
        let first = off / cs;
        let last = (off + len - 1) / cs;
        for c in first..=last {
            match out.last() {
                Some(&l) if c <= l => {}
                _ => out.push(c),
            }
        }
    }
    Ok(out)
}
