//! NBD exports as capture sources (`nbd://HOST[:PORT]/EXPORT`,
//! `nbd+unix:///EXPORT?socket=PATH`), e.g. `qemu-nbd -r -t -k /tmp/s disk.qcow2`
//! or an nbdkit plugin in front of VMware or a cloud snapshot.
//!
//! When the server offers `base:allocation`, ranges it reports as reading
//! zero are not transferred at all: thin disks capture at the speed of their
//! data, not of their size. The map is fetched a window at a time so a
//! huge disk does not need one huge reply.
//!
//! [`dirty_chunks`] reads a `qemu:dirty-bitmap:NAME` context (changed-block
//! tracking) as chunk indexes, for `capture --dirty-bitmap` and `sync`.

use crate::error::Context;
use mgear_nbd::{Client, ConnectOptions, NbdUrl, BASE_ALLOCATION};

use super::Source;
use crate::exit::usage;

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
}

/// Open an NBD URL (parsed by `crate::spec`) as a source.
pub fn open(url: &NbdUrl) -> crate::Result<Box<dyn Source>> {
    let spec = url.to_string();
    let with_map = ConnectOptions {
        meta_contexts: vec![BASE_ALLOCATION.to_owned()],
        read_only: true,
    };
    let (client, allocation) = match Client::connect(url, &with_map) {
        Ok(c) => (c, true),
        Err(_) => {
            let plain = ConnectOptions {
                meta_contexts: Vec::new(),
                read_only: true,
            };
            let c = Client::connect(url, &plain)
                .with_context(|| format!("connecting to NBD source {spec}"))?;
            (c, false)
        }
    };
    let size = client.size();
    Ok(Box::new(NbdSource {
        url: spec,
        client,
        size,
        allocation,
        zeros: Vec::new(),
        win_start: 0,
        win_end: 0,
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
}

/// Chunk indexes touched by the ranges `qemu:dirty-bitmap:<bitmap>` marks
/// dirty (sorted, each once). The client must have negotiated that context.
pub fn dirty_chunks(
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
