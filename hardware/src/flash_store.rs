//! The firmware's persistent state in on-chip NOR flash: the secret store
//! ([`FlashSecrets`]) and the custody log storage ([`FlashLog`]).
//!
//! Written against `embedded_storage::nor_flash::NorFlash`, so the same code
//! runs on the board (embassy-stm32's `Flash`, see `board/`) and in the host
//! tests below, which use a RAM flash that behaves like NOR (erase to 0xFF,
//! program only erased words) and can cut power in the middle of a program.
//!
//! Both stores work within a [`Region`] of the flash (offsets as the flash
//! driver counts them). On the reference board: secrets at 0x38_0000
//! (128 KiB), log at 0x3A_0000 (384 KiB), see `memory.x`.
//!
//! # Secret store layout
//!
//! Slot `i` (the index of the slot in [`SecretSlot::ALL`]) owns erase pages
//! `2i` and `2i+1` of the region. Each page holds at most one record:
//!
//! ```text
//! offset  size  field
//! 0       4     magic "MGS1"
//! 4       4     sequence number, u32 LE (the valid record with the higher one wins)
//! 8       4     value length, u32 LE
//! 12      4     CRC-32/ISO-HDLC over bytes 0..12 and the value
//! 16      len   value, padded with 0xFF to the flash write size
//! ```
//!
//! A write erases the page *not* holding the newest record, programs the
//! value, and programs the header last: until the header is complete the new
//! page is invalid and the old record stands, so a write is atomic across a
//! power cut (the core's PIN-failure counter depends on it). Erasing a slot
//! erases the older page first and the newest last, so an interrupted erase
//! never brings back an older value.
//!
//! # Log layout
//!
//! A sequence of entries from the start of the region, each starting on a
//! 16-byte boundary:
//!
//! ```text
//! offset  size  field
//! 0       4     magic: "MGLA" (append) or "MGLT" (truncate)
//! 4       8     MGLA: payload length u32 LE + 4 bytes 0xFF; MGLT: new log length u64 LE
//! 12      4     CRC-32/ISO-HDLC over bytes 0..12 and the payload
//! 16      len   MGLA only: payload, padded with 0xFF to 16 bytes
//! ```
//!
//! The log's bytes are the payloads of valid appends in order, cut by
//! truncate markers. An append programs its header first (one 16-byte write),
//! then the payload: a power cut leaves either no header (nothing happened)
//! or a header whose CRC fails (the append is skipped by its length and
//! never counted). A header that is neither erased nor valid makes the rest
//! of its page unusable; scanning continues at the next page. Flash is never
//! erased by the log: it is append-only until full ([`HwError::Full`]).

use alloc::format;
use alloc::vec;
use alloc::vec::Vec;

use crc::{Crc, CRC_32_ISO_HDLC};
use embedded_storage::nor_flash::{NorFlash, NorFlashError};
use mgear_firmware::hal::{HwError, LogStorage, SecretSlot, SecretStore};

const CRC32: Crc<u32> = Crc::<u32>::new(&CRC_32_ISO_HDLC);
const HEADER: usize = 16;
const SECRET_MAGIC: &[u8; 4] = b"MGS1";
const APPEND_MAGIC: &[u8; 4] = b"MGLA";
const TRUNCATE_MAGIC: &[u8; 4] = b"MGLT";

/// A part of the flash, in the flash driver's offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    pub start: u32,
    pub len: u32,
}

impl Region {
    fn end(&self) -> u32 {
        self.start + self.len
    }
}

fn flash_err<E: NorFlashError>(what: &str, e: E) -> HwError {
    HwError::Io(format!("flash {what} failed: {:?}", e.kind()))
}

fn round_up(n: usize, to: usize) -> usize {
    n.div_ceil(to) * to
}

/// Check that `region` is page-aligned and large enough for `pages` pages.
fn check_region<F: NorFlash>(flash: &F, region: Region, pages: u32) -> Result<(), HwError> {
    let page = F::ERASE_SIZE as u32;
    let aligned = region.start.is_multiple_of(page) && region.len.is_multiple_of(page);
    let inside = (region.end() as usize) <= flash.capacity();
    if !aligned || !inside || region.len / page < pages || F::WRITE_SIZE > HEADER {
        return Err(HwError::Io(format!(
            "flash region {:#x}+{:#x} unusable: needs {pages} pages of {page} bytes inside the flash",
            region.start, region.len
        )));
    }
    Ok(())
}

/// The secret store in flash; see the module doc for the layout.
pub struct FlashSecrets<F> {
    flash: F,
    region: Region,
}

/// A valid record found in a page.
struct Record {
    seq: u32,
    page: u32,
    value: Vec<u8>,
}

impl<F: NorFlash> FlashSecrets<F> {
    /// Use `region` of `flash` (at least `2 × SecretSlot::ALL.len()` pages).
    pub fn new(flash: F, region: Region) -> Result<Self, HwError> {
        check_region(&flash, region, 2 * SecretSlot::ALL.len() as u32)?;
        Ok(FlashSecrets { flash, region })
    }

    /// Give the flash back (e.g. to share it with [`FlashLog`] in a test).
    pub fn into_inner(self) -> F {
        self.flash
    }

    fn page_addr(&self, slot: SecretSlot, which: u32) -> u32 {
        let index = SecretSlot::ALL.iter().position(|s| *s == slot).unwrap_or(0) as u32;
        self.region.start + (2 * index + which) * F::ERASE_SIZE as u32
    }

    fn read_record(&mut self, page: u32) -> Result<Option<Record>, HwError> {
        let mut header = [0u8; HEADER];
        self.flash
            .read(page, &mut header)
            .map_err(|e| flash_err("read", e))?;
        if &header[0..4] != SECRET_MAGIC {
            return Ok(None);
        }
        let seq = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        let len = u32::from_le_bytes([header[8], header[9], header[10], header[11]]) as usize;
        if len > F::ERASE_SIZE - HEADER {
            return Ok(None);
        }
        let mut value = vec![0u8; len];
        self.flash
            .read(page + HEADER as u32, &mut value)
            .map_err(|e| flash_err("read", e))?;
        let mut digest = CRC32.digest();
        digest.update(&header[0..12]);
        digest.update(&value);
        let crc = u32::from_le_bytes([header[12], header[13], header[14], header[15]]);
        if digest.finalize() != crc {
            return Ok(None);
        }
        Ok(Some(Record { seq, page, value }))
    }

    /// Both pages' valid records, newest first.
    fn records(&mut self, slot: SecretSlot) -> Result<(Option<Record>, Option<Record>), HwError> {
        let a = self.read_record(self.page_addr(slot, 0))?;
        let b = self.read_record(self.page_addr(slot, 1))?;
        Ok(match (a, b) {
            (Some(a), Some(b)) if b.seq > a.seq => (Some(b), Some(a)),
            (Some(a), b) => (Some(a), b),
            (None, b) => (b, None),
        })
    }

    fn erase_page(&mut self, page: u32) -> Result<(), HwError> {
        self.flash
            .erase(page, page + F::ERASE_SIZE as u32)
            .map_err(|e| flash_err("erase", e))
    }
}

impl<F: NorFlash> SecretStore for FlashSecrets<F> {
    fn read(&mut self, slot: SecretSlot) -> Result<Option<Vec<u8>>, HwError> {
        Ok(self.records(slot)?.0.map(|r| r.value))
    }

    fn write(&mut self, slot: SecretSlot, value: &[u8]) -> Result<(), HwError> {
        if value.len() > F::ERASE_SIZE - HEADER {
            return Err(HwError::Full);
        }
        let (newest, _) = self.records(slot)?;
        let (target, seq) = match &newest {
            Some(r) if r.page == self.page_addr(slot, 0) => {
                (self.page_addr(slot, 1), r.seq.wrapping_add(1))
            }
            Some(r) => (self.page_addr(slot, 0), r.seq.wrapping_add(1)),
            None => (self.page_addr(slot, 0), 1),
        };
        self.erase_page(target)?;

        let mut header = [0xFFu8; HEADER];
        header[0..4].copy_from_slice(SECRET_MAGIC);
        header[4..8].copy_from_slice(&seq.to_le_bytes());
        header[8..12].copy_from_slice(&(value.len() as u32).to_le_bytes());
        let mut digest = CRC32.digest();
        digest.update(&header[0..12]);
        digest.update(value);
        header[12..16].copy_from_slice(&digest.finalize().to_le_bytes());

        if !value.is_empty() {
            let mut body = value.to_vec();
            body.resize(round_up(value.len(), F::WRITE_SIZE), 0xFF);
            self.flash
                .write(target + HEADER as u32, &body)
                .map_err(|e| flash_err("program", e))?;
        }
        // The header last: it is what makes the new record count.
        self.flash
            .write(target, &header)
            .map_err(|e| flash_err("program", e))
    }

    fn erase(&mut self, slot: SecretSlot) -> Result<(), HwError> {
        let (newest, _) = self.records(slot)?;
        let (a, b) = (self.page_addr(slot, 0), self.page_addr(slot, 1));
        let (first, last) = match newest {
            Some(r) if r.page == a => (b, a),
            _ => (a, b),
        };
        self.erase_page(first)?;
        self.erase_page(last)
    }
}

/// One valid append's payload in flash.
#[derive(Debug, Clone, Copy)]
struct Piece {
    addr: u32,
    len: u32,
}

/// The custody log's byte storage in flash; see the module doc for the layout.
pub struct FlashLog<F> {
    flash: F,
    region: Region,
    /// The log's bytes, in order.
    pieces: Vec<Piece>,
    /// Where the next entry goes.
    next: u32,
}

impl<F: NorFlash> FlashLog<F> {
    /// Open the log in `region`, scanning what is there. An erased region
    /// is an empty log.
    pub fn open(flash: F, region: Region) -> Result<Self, HwError> {
        check_region(&flash, region, 1)?;
        let mut log = FlashLog {
            flash,
            region,
            pieces: Vec::new(),
            next: region.start,
        };
        log.scan()?;
        Ok(log)
    }

    /// Give the flash back.
    pub fn into_inner(self) -> F {
        self.flash
    }

    fn logical_len(&self) -> u64 {
        self.pieces.iter().map(|p| u64::from(p.len)).sum()
    }

    fn next_page(&self, addr: u32) -> u32 {
        let page = F::ERASE_SIZE as u32;
        self.region.start + ((addr - self.region.start) / page + 1) * page
    }

    fn is_erased(&mut self, addr: u32, len: usize) -> Result<bool, HwError> {
        let mut buf = [0u8; 64];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(buf.len());
            self.flash
                .read(addr + done as u32, &mut buf[..n])
                .map_err(|e| flash_err("read", e))?;
            if buf[..n].iter().any(|b| *b != 0xFF) {
                return Ok(false);
            }
            done += n;
        }
        Ok(true)
    }

    fn scan(&mut self) -> Result<(), HwError> {
        let end = self.region.end();
        let mut addr = self.region.start;
        while addr + HEADER as u32 <= end {
            let mut header = [0u8; HEADER];
            self.flash
                .read(addr, &mut header)
                .map_err(|e| flash_err("read", e))?;
            if header.iter().all(|b| *b == 0xFF) {
                break;
            }
            let magic = &header[0..4];
            let crc = u32::from_le_bytes([header[12], header[13], header[14], header[15]]);
            if magic == APPEND_MAGIC {
                let len = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
                let body = addr + HEADER as u32;
                // In u64: a garbled length near u32::MAX must not wrap.
                let span = round_up(len as usize, HEADER) as u64;
                if u64::from(end - body) < span {
                    // A length pointing past the region: a garbled header.
                    addr = self.next_page(addr);
                    continue;
                }
                let span = span as u32;
                let mut digest = CRC32.digest();
                digest.update(&header[0..12]);
                let mut buf = [0u8; 64];
                let mut done = 0u32;
                while done < len {
                    let n = (len - done).min(buf.len() as u32) as usize;
                    self.flash
                        .read(body + done, &mut buf[..n])
                        .map_err(|e| flash_err("read", e))?;
                    digest.update(&buf[..n]);
                    done += n as u32;
                }
                if digest.finalize() == crc && len > 0 {
                    self.pieces.push(Piece { addr: body, len });
                }
                // Valid or torn, the entry's extent is known: skip it.
                addr = body + span;
            } else if magic == TRUNCATE_MAGIC && CRC32.checksum(&header[0..12]) == crc {
                let mut b = [0u8; 8];
                b.copy_from_slice(&header[4..12]);
                self.cut(u64::from_le_bytes(b));
                addr += HEADER as u32;
            } else {
                addr = self.next_page(addr);
            }
        }
        self.next = addr.min(end);
        Ok(())
    }

    /// Drop bytes of the in-memory view past `len`.
    fn cut(&mut self, len: u64) {
        let mut total = 0u64;
        let mut keep = 0;
        for p in self.pieces.iter_mut() {
            if total >= len {
                break;
            }
            let room = len - total;
            if u64::from(p.len) > room {
                p.len = room as u32;
            }
            total += u64::from(p.len);
            keep += 1;
        }
        self.pieces.truncate(keep);
    }

    /// Find room for an entry of `size` bytes that starts on erased flash,
    /// skipping pages left dirty by torn writes.
    fn reserve(&mut self, size: u32) -> Result<u32, HwError> {
        loop {
            if self.region.end() - self.next < size {
                return Err(HwError::Full);
            }
            if self.is_erased(self.next, size as usize)? {
                return Ok(self.next);
            }
            self.next = self.next_page(self.next).min(self.region.end());
        }
    }
}

impl<F: NorFlash> LogStorage for FlashLog<F> {
    fn len(&mut self) -> Result<u64, HwError> {
        Ok(self.logical_len())
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<usize, HwError> {
        let mut start = 0u64;
        let mut done = 0usize;
        for p in self.pieces.clone() {
            let end = start + u64::from(p.len);
            let pos = offset + done as u64;
            if done < buf.len() && pos >= start && pos < end {
                let within = (pos - start) as u32;
                let n = ((p.len - within) as usize).min(buf.len() - done);
                self.flash
                    .read(p.addr + within, &mut buf[done..done + n])
                    .map_err(|e| flash_err("read", e))?;
                done += n;
            }
            start = end;
        }
        Ok(done)
    }

    fn append(&mut self, data: &[u8]) -> Result<(), HwError> {
        if data.is_empty() {
            return Ok(());
        }
        let len = u32::try_from(data.len()).map_err(|_| HwError::Full)?;
        let span = round_up(data.len(), HEADER) as u32;
        let at = self.reserve(HEADER as u32 + span)?;

        let mut header = [0xFFu8; HEADER];
        header[0..4].copy_from_slice(APPEND_MAGIC);
        header[4..8].copy_from_slice(&len.to_le_bytes());
        let mut digest = CRC32.digest();
        digest.update(&header[0..12]);
        digest.update(data);
        header[12..16].copy_from_slice(&digest.finalize().to_le_bytes());

        // Whatever happens next, this space is used.
        self.next = at + HEADER as u32 + span;
        self.flash
            .write(at, &header)
            .map_err(|e| flash_err("program", e))?;
        let mut body = data.to_vec();
        body.resize(span as usize, 0xFF);
        self.flash
            .write(at + HEADER as u32, &body)
            .map_err(|e| flash_err("program", e))?;
        self.pieces.push(Piece {
            addr: at + HEADER as u32,
            len,
        });
        Ok(())
    }

    fn truncate(&mut self, len: u64) -> Result<(), HwError> {
        let current = self.logical_len();
        if len == current {
            return Ok(());
        }
        if len > current {
            return Err(HwError::OutOfRange);
        }
        let at = self.reserve(HEADER as u32)?;
        let mut header = [0xFFu8; HEADER];
        header[0..4].copy_from_slice(TRUNCATE_MAGIC);
        header[4..12].copy_from_slice(&len.to_le_bytes());
        let crc = CRC32.checksum(&header[0..12]);
        header[12..16].copy_from_slice(&crc.to_le_bytes());
        self.next = at + HEADER as u32;
        self.flash
            .write(at, &header)
            .map_err(|e| flash_err("program", e))?;
        self.cut(len);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use embedded_storage::nor_flash::{ErrorType, NorFlashErrorKind, ReadNorFlash};

    const PAGE: usize = 512;

    /// RAM flash with NOR rules (program only erased bytes) and a power cut
    /// after `cut_after` more programmed bytes: the cut write programs what
    /// fits and fails, and every later operation fails until `power_on`.
    struct RamFlash {
        mem: Vec<u8>,
        cut_after: Option<usize>,
        /// Page erases allowed before the power cut.
        erases_left: Option<usize>,
        dead: bool,
    }

    #[derive(Debug)]
    struct Cut;
    impl NorFlashError for Cut {
        fn kind(&self) -> NorFlashErrorKind {
            NorFlashErrorKind::Other
        }
    }

    impl RamFlash {
        fn new(pages: usize) -> Self {
            RamFlash {
                mem: vec![0xFF; pages * PAGE],
                cut_after: None,
                erases_left: None,
                dead: false,
            }
        }
        fn power_on(&mut self) {
            self.dead = false;
            self.cut_after = None;
            self.erases_left = None;
        }
    }

    impl ErrorType for RamFlash {
        type Error = Cut;
    }

    impl ReadNorFlash for RamFlash {
        const READ_SIZE: usize = 1;
        fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), Cut> {
            if self.dead {
                return Err(Cut);
            }
            let o = offset as usize;
            bytes.copy_from_slice(&self.mem[o..o + bytes.len()]);
            Ok(())
        }
        fn capacity(&self) -> usize {
            self.mem.len()
        }
    }

    impl NorFlash for RamFlash {
        const WRITE_SIZE: usize = 16;
        const ERASE_SIZE: usize = PAGE;
        fn erase(&mut self, from: u32, to: u32) -> Result<(), Cut> {
            if self.dead {
                return Err(Cut);
            }
            assert_eq!(from as usize % PAGE, 0);
            assert_eq!(to as usize % PAGE, 0);
            match self.erases_left {
                Some(0) => {
                    self.dead = true;
                    return Err(Cut);
                }
                Some(n) => self.erases_left = Some(n - 1),
                None => {}
            }
            self.mem[from as usize..to as usize].fill(0xFF);
            Ok(())
        }
        fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), Cut> {
            if self.dead {
                return Err(Cut);
            }
            assert_eq!(offset as usize % 16, 0, "unaligned program");
            assert_eq!(bytes.len() % 16, 0, "partial program word");
            let o = offset as usize;
            assert!(
                self.mem[o..o + bytes.len()].iter().all(|b| *b == 0xFF),
                "program of non-erased flash at {o:#x}"
            );
            let n = match self.cut_after {
                Some(left) if left < bytes.len() => {
                    self.dead = true;
                    left
                }
                Some(left) => {
                    self.cut_after = Some(left - bytes.len());
                    bytes.len()
                }
                None => bytes.len(),
            };
            self.mem[o..o + n].copy_from_slice(&bytes[..n]);
            if self.dead {
                Err(Cut)
            } else {
                Ok(())
            }
        }
    }

    fn secrets(flash: RamFlash) -> FlashSecrets<RamFlash> {
        FlashSecrets::new(
            flash,
            Region {
                start: PAGE as u32,
                len: 12 * PAGE as u32,
            },
        )
        .unwrap()
    }

    #[test]
    fn secrets_round_trip_and_erase() {
        let mut s = secrets(RamFlash::new(16));
        assert_eq!(s.read(SecretSlot::PinHash).unwrap(), None);
        s.write(SecretSlot::PinHash, b"salt+hash").unwrap();
        s.write(SecretSlot::State, b"").unwrap();
        for i in 0..5u8 {
            s.write(SecretSlot::Identity, &[i; 40]).unwrap();
        }
        assert_eq!(s.read(SecretSlot::Identity).unwrap(), Some(vec![4u8; 40]));
        assert_eq!(
            s.read(SecretSlot::PinHash).unwrap(),
            Some(b"salt+hash".to_vec())
        );
        assert_eq!(s.read(SecretSlot::State).unwrap(), Some(Vec::new()));
        s.erase(SecretSlot::Identity).unwrap();
        assert_eq!(s.read(SecretSlot::Identity).unwrap(), None);
        // Erase leaves no trace of any old value in the slot's pages.
        let flash = s.into_inner();
        let slot_pages = &flash.mem[PAGE..3 * PAGE];
        assert!(slot_pages.iter().all(|b| *b == 0xFF));
        // Other slots are untouched.
        let mut s = secrets(flash);
        assert_eq!(
            s.read(SecretSlot::PinHash).unwrap(),
            Some(b"salt+hash".to_vec())
        );
    }

    #[test]
    fn secret_too_large_for_a_page_is_refused() {
        let mut s = secrets(RamFlash::new(16));
        assert_eq!(s.write(SecretSlot::State, &[0u8; PAGE]), Err(HwError::Full));
    }

    #[test]
    fn region_too_small_is_refused() {
        let r = FlashSecrets::new(
            RamFlash::new(16),
            Region {
                start: 0,
                len: 4 * PAGE as u32,
            },
        );
        assert!(r.is_err());
        let r = FlashLog::open(
            RamFlash::new(4),
            Region {
                start: 100,
                len: PAGE as u32,
            },
        );
        assert!(r.is_err());
    }

    /// A power cut at every byte of a write leaves the old or the new value,
    /// never anything else.
    #[test]
    fn secret_write_is_atomic_across_power_cuts() {
        let old = [0x11u8; 70];
        let new = [0x22u8; 70];
        let mut cut = 0;
        loop {
            let mut s = secrets(RamFlash::new(16));
            s.write(SecretSlot::State, &old).unwrap();
            let mut flash = s.into_inner();
            flash.cut_after = Some(cut);
            let mut s = secrets(flash);
            let finished = s.write(SecretSlot::State, &new).is_ok();
            let mut flash = s.into_inner();
            flash.power_on();
            let mut s = secrets(flash);
            let seen = s
                .read(SecretSlot::State)
                .unwrap()
                .expect("a value survives");
            if finished {
                assert_eq!(seen, new.to_vec());
                break;
            }
            assert!(
                seen == old.to_vec() || seen == new.to_vec(),
                "cut at {cut}: {seen:?}"
            );
            // The store keeps working after the cut.
            s.write(SecretSlot::State, b"after").unwrap();
            assert_eq!(s.read(SecretSlot::State).unwrap(), Some(b"after".to_vec()));
            cut += 1;
        }
        assert!(cut > 70, "the cut loop never reached the header");
    }

    fn log(flash: RamFlash) -> FlashLog<RamFlash> {
        FlashLog::open(
            flash,
            Region {
                start: 0,
                len: 4 * PAGE as u32,
            },
        )
        .unwrap()
    }

    fn contents(l: &mut FlashLog<RamFlash>) -> Vec<u8> {
        let mut buf = vec![0u8; l.len().unwrap() as usize];
        assert_eq!(l.read_at(0, &mut buf).unwrap(), buf.len());
        buf
    }

    #[test]
    fn log_appends_reads_and_survives_reopen() {
        let mut l = log(RamFlash::new(4));
        assert_eq!(l.len().unwrap(), 0);
        l.append(b"hello ").unwrap();
        l.append(b"custody").unwrap();
        l.append(&[7u8; 40]).unwrap();
        let mut expect = b"hello custody".to_vec();
        expect.extend_from_slice(&[7u8; 40]);
        assert_eq!(contents(&mut l), expect);
        // Reads spanning pieces, and reads past the end.
        let mut buf = [0u8; 5];
        assert_eq!(l.read_at(4, &mut buf).unwrap(), 5);
        assert_eq!(&buf, b"o cus");
        assert_eq!(l.read_at(expect.len() as u64 - 2, &mut buf).unwrap(), 2);
        assert_eq!(l.read_at(1000, &mut buf).unwrap(), 0);

        let mut l = log(l.into_inner());
        assert_eq!(contents(&mut l), expect);
    }

    #[test]
    fn log_truncate_survives_reopen_and_appends_continue() {
        let mut l = log(RamFlash::new(4));
        l.append(b"first|").unwrap();
        l.append(b"torn-record").unwrap();
        l.truncate(9).unwrap();
        assert_eq!(contents(&mut l), b"first|tor");
        assert_eq!(l.truncate(100), Err(HwError::OutOfRange));
        l.append(b"+next").unwrap();
        let mut l = log(l.into_inner());
        assert_eq!(contents(&mut l), b"first|tor+next");
        l.truncate(6).unwrap();
        l.append(b"x").unwrap();
        let mut l = log(l.into_inner());
        assert_eq!(contents(&mut l), b"first|x");
    }

    /// A power cut at every byte of an append leaves the log as it was before
    /// the append or with the whole append, and the log stays appendable.
    #[test]
    fn log_append_is_all_or_nothing_across_power_cuts() {
        let mut cut = 0;
        loop {
            let mut l = log(RamFlash::new(4));
            l.append(b"before").unwrap();
            let mut flash = l.into_inner();
            flash.cut_after = Some(cut);
            let mut l = log(flash);
            let finished = l.append(&[0xAB; 50]).is_ok();
            let mut flash = l.into_inner();
            flash.power_on();
            let mut l = log(flash);
            let seen = contents(&mut l);
            let mut whole = b"before".to_vec();
            whole.extend_from_slice(&[0xAB; 50]);
            if finished {
                assert_eq!(seen, whole);
                break;
            }
            assert!(seen == b"before" || seen == whole, "cut at {cut}: {seen:?}");
            l.append(b"!").unwrap();
            let mut l = log(l.into_inner());
            assert!(contents(&mut l).ends_with(b"!"), "cut at {cut}");
            cut += 1;
        }
    }

    /// A power cut while writing a truncate marker leaves the old or the new
    /// length; an interrupted secret erase never resurrects an older value.
    #[test]
    fn truncate_and_erase_across_power_cuts() {
        for cut in 0..16 {
            let mut l = log(RamFlash::new(4));
            l.append(b"keep|drop").unwrap();
            let mut flash = l.into_inner();
            flash.cut_after = Some(cut);
            let mut l = log(flash);
            assert!(l.truncate(5).is_err());
            let mut flash = l.into_inner();
            flash.power_on();
            let mut l = log(flash);
            let seen = contents(&mut l);
            assert!(
                seen == b"keep|drop" || seen == b"keep|",
                "cut at {cut}: {seen:?}"
            );
            l.truncate(5).unwrap();
            let mut l = log(l.into_inner());
            assert_eq!(contents(&mut l), b"keep|");
        }

        // Erase with power cut after the first page erase: the newest value
        // (never an older one) is what remains, whichever page holds it.
        for writes in [2usize, 3] {
            let mut s = secrets(RamFlash::new(16));
            for i in 0..writes {
                s.write(SecretSlot::Identity, &[i as u8; 8]).unwrap();
            }
            let mut flash = s.into_inner();
            flash.erases_left = Some(1);
            let mut s = secrets(flash);
            assert!(s.erase(SecretSlot::Identity).is_err());
            let mut flash = s.into_inner();
            flash.power_on();
            let mut s = secrets(flash);
            assert_eq!(
                s.read(SecretSlot::Identity).unwrap(),
                Some(vec![writes as u8 - 1; 8])
            );
            s.erase(SecretSlot::Identity).unwrap();
            assert_eq!(s.read(SecretSlot::Identity).unwrap(), None);
        }
    }

    #[test]
    fn log_full_is_reported() {
        let mut l = log(RamFlash::new(4));
        let mut appended = 0;
        loop {
            match l.append(&[1u8; 100]) {
                Ok(()) => appended += 1,
                Err(e) => {
                    assert_eq!(e, HwError::Full);
                    break;
                }
            }
        }
        // 4 pages of 512 bytes hold exactly 16 entries of 16 + 112 bytes.
        assert_eq!(appended, 4 * PAGE / 128);
        let mut l = log(l.into_inner());
        assert_eq!(l.len().unwrap(), appended as u64 * 100);
    }

    #[test]
    fn garbage_header_skips_to_the_next_page() {
        let mut flash = RamFlash::new(4);
        flash.mem[0..16].copy_from_slice(b"NOT A LOG HEADER");
        let mut l = log(flash);
        assert_eq!(l.len().unwrap(), 0);
        l.append(b"ok").unwrap();
        let flash = l.into_inner();
        assert_eq!(&flash.mem[PAGE..PAGE + 4], APPEND_MAGIC);
        let mut l = log(flash);
        assert_eq!(contents(&mut l), b"ok");
    }
}
