//! USB mass storage (Bulk-Only Transport + a SCSI block-command subset) over
//! the firmware core's block service (`mgear_firmware::block::BlockService`): how the board exposes the medium to
//! the host, with every READ and WRITE going through
//! `Appliance::block_read` / `block_write`, so writes are refused (SCSI
//! DATA PROTECT) while the appliance is locked or sealed, and MODE SENSE
//! reports the write-protect bit so hosts mount the medium read-only.
//!
//! Sans-IO over two byte streams (`embedded_io`): the bulk-OUT bytes from the
//! host and the bulk-IN bytes to it. The board's USB task moves packets
//! between the endpoints and those streams; the host tests below drive it
//! with byte vectors and with the real `Appliance` on the core's fake
//! platform.
//!
//! # Wire layout (USB MSC Bulk-Only Transport 1.0, little-endian)
//!
//! ```text
//! CBW, 31 bytes, host -> device
//!   0  4  signature 0x43425355 ("USBC")
//!   4  4  tag (echoed in the CSW)
//!   8  4  data transfer length the host expects
//!  12  1  flags: bit 7 = data-in (device -> host)
//!  13  1  LUN (only 0 exists)
//!  14  1  command block length (1..=16)
//!  15 16  SCSI command block (big-endian fields)
//! CSW, 13 bytes, device -> host
//!   0  4  signature 0x53425355 ("USBS")
//!   4  4  tag
//!   8  4  residue: expected length minus bytes really transferred
//!  12  1  status: 0 passed, 1 failed (see REQUEST SENSE), 2 phase error
//! ```
//!
//! Without endpoint stalls on this byte-stream interface, a data phase the
//! device cannot fill is padded with zeros and reported through the residue,
//! and host data the device does not want is read and discarded; hosts
//! (Linux usb-storage, Windows, macOS) accept both. A CBW with a bad
//! signature or length is dropped (the spec asks for a stall and reset
//! recovery; the next valid CBW resynchronises).

use alloc::vec;
use alloc::vec::Vec;

use embedded_io::{Read, ReadReady, Write};
use mgear_firmware::block::{BlockError, BlockService};

const CBW_SIGNATURE: u32 = 0x4342_5355;
const CSW_SIGNATURE: u32 = 0x5342_5355;
const CBW_LEN: usize = 31;
/// SCSI logical block size presented to the host.
pub const BLOCK: usize = 512;
/// Bytes moved per block-service call during READ/WRITE.
const CHUNK: usize = 16 * 1024;

/// SCSI sense data: key, additional sense code and qualifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sense {
    pub key: u8,
    pub asc: u8,
    pub ascq: u8,
}

impl Sense {
    pub const NONE: Sense = Sense {
        key: 0,
        asc: 0,
        ascq: 0,
    };
    pub const INVALID_OPCODE: Sense = Sense {
        key: 0x05,
        asc: 0x20,
        ascq: 0,
    };
    pub const INVALID_FIELD: Sense = Sense {
        key: 0x05,
        asc: 0x24,
        ascq: 0,
    };
    pub const LBA_OUT_OF_RANGE: Sense = Sense {
        key: 0x05,
        asc: 0x21,
        ascq: 0,
    };
    pub const WRITE_PROTECTED: Sense = Sense {
        key: 0x07,
        asc: 0x27,
        ascq: 0,
    };
    pub const READ_ERROR: Sense = Sense {
        key: 0x03,
        asc: 0x11,
        ascq: 0,
    };
    pub const WRITE_ERROR: Sense = Sense {
        key: 0x03,
        asc: 0x0C,
        ascq: 0,
    };
}

/// The transport failed (the USB link, not the command).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkError(pub embedded_io::ErrorKind);

fn link<E: embedded_io::Error>(e: E) -> LinkError {
    LinkError(e.kind())
}

/// One parsed CBW.
struct Cbw {
    tag: u32,
    expected: u32,
    data_in: bool,
    cb: [u8; 16],
}

fn parse_cbw(b: &[u8; CBW_LEN]) -> Option<Cbw> {
    let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    let cb_len = b[14];
    if u32_at(0) != CBW_SIGNATURE || b[13] != 0 || !(1..=16).contains(&cb_len) {
        return None;
    }
    let mut cb = [0u8; 16];
    cb.copy_from_slice(&b[15..31]);
    Some(Cbw {
        tag: u32_at(4),
        expected: u32_at(8),
        data_in: b[12] & 0x80 != 0,
        cb,
    })
}

fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// Outcome of one command: CSW status and bytes really transferred.
struct Done {
    status: u8,
    moved: u32,
}

const PASSED: u8 = 0;
const FAILED: u8 = 1;
const PHASE_ERROR: u8 = 2;

/// The mass-storage target: one LUN backed by a [`BlockService`].
pub struct MscTarget {
    sense: Sense,
    /// Bytes of a CBW received so far (a CBW may arrive in pieces).
    cbw: [u8; CBW_LEN],
    have: usize,
    buf: Vec<u8>,
}

impl Default for MscTarget {
    fn default() -> Self {
        Self::new()
    }
}

impl MscTarget {
    pub fn new() -> Self {
        MscTarget {
            sense: Sense::NONE,
            cbw: [0; CBW_LEN],
            have: 0,
            buf: vec![0; CHUNK],
        }
    }

    /// Sense data of the last failed command (what REQUEST SENSE returns).
    pub fn sense(&self) -> Sense {
        self.sense
    }

    /// Handle at most one command if its CBW is available; never blocks
    /// waiting for a CBW (it does block during a command's data phase).
    /// Returns whether a command was completed.
    pub fn poll<S, IO>(&mut self, svc: &mut S, io: &mut IO) -> Result<bool, LinkError>
    where
        S: BlockService + ?Sized,
        IO: Read + Write + ReadReady,
    {
        while self.have < CBW_LEN {
            if !io.read_ready().map_err(link)? {
                return Ok(false);
            }
            let n = io.read(&mut self.cbw[self.have..]).map_err(link)?;
            if n == 0 {
                return Ok(false);
            }
            self.have += n;
        }
        self.have = 0;
        let Some(cbw) = parse_cbw(&self.cbw) else {
            return Ok(false);
        };
        let done = self.execute(svc, io, &cbw)?;
        let mut csw = [0u8; 13];
        csw[0..4].copy_from_slice(&CSW_SIGNATURE.to_le_bytes());
        csw[4..8].copy_from_slice(&cbw.tag.to_le_bytes());
        csw[8..12].copy_from_slice(&cbw.expected.saturating_sub(done.moved).to_le_bytes());
        csw[12] = done.status;
        io.write_all(&csw).map_err(link)?;
        io.flush().map_err(link)?;
        Ok(true)
    }

    fn fail(&mut self, sense: Sense) -> u8 {
        self.sense = sense;
        FAILED
    }

    fn execute<S, IO>(&mut self, svc: &mut S, io: &mut IO, cbw: &Cbw) -> Result<Done, LinkError>
    where
        S: BlockService + ?Sized,
        IO: Read + Write,
    {
        let cb = &cbw.cb;
        let blocks = svc.capacity() / BLOCK as u64;
        // Commands with a small data-in reply.
        let reply: Option<Vec<u8>> = match cb[0] {
            // TEST UNIT READY, PREVENT ALLOW MEDIUM REMOVAL, START STOP UNIT, VERIFY(10)
            0x00 | 0x1E | 0x1B | 0x2F => None,
            // REQUEST SENSE: fixed format, then the sense is consumed.
            0x03 => {
                let s = core::mem::replace(&mut self.sense, Sense::NONE);
                let mut r = vec![0u8; 18];
                r[0] = 0x70;
                r[2] = s.key;
                r[7] = 10;
                r[12] = s.asc;
                r[13] = s.ascq;
                Some(truncate(r, usize::from(cb[4])))
            }
            // INQUIRY (standard data only).
            0x12 => {
                if cb[1] & 0x01 != 0 {
                    let status = self.fail(Sense::INVALID_FIELD);
                    return finish_without_data(io, cbw, status);
                }
                let mut r = vec![0u8; 36];
                r[1] = 0x80; // removable
                r[2] = 0x04; // SPC-2
                r[3] = 0x02; // response data format
                r[4] = 31;
                r[8..16].copy_from_slice(b"MGEAR   ");
                r[16..32].copy_from_slice(b"Appliance medium");
                r[32..36].copy_from_slice(b"0001");
                Some(truncate(r, usize::from(be16(&cb[3..5]))))
            }
            // MODE SENSE(6) / (10): header only, with the write-protect bit.
            0x1A => {
                let wp = if svc.writable() { 0 } else { 0x80 };
                Some(truncate(vec![3, 0, wp, 0], usize::from(cb[4])))
            }
            0x5A => {
                let wp = if svc.writable() { 0 } else { 0x80 };
                Some(truncate(
                    vec![0, 6, 0, wp, 0, 0, 0, 0],
                    usize::from(be16(&cb[7..9])),
                ))
            }
            // READ CAPACITY(10): last LBA and block length.
            0x25 => {
                let last = u32::try_from(blocks.saturating_sub(1)).unwrap_or(u32::MAX);
                let mut r = last.to_be_bytes().to_vec();
                r.extend_from_slice(&(BLOCK as u32).to_be_bytes());
                Some(r)
            }
            // READ FORMAT CAPACITIES (Windows asks): one formatted-media descriptor.
            0x23 => {
                let count = u32::try_from(blocks).unwrap_or(u32::MAX);
                let mut r = vec![0, 0, 0, 8];
                r.extend_from_slice(&count.to_be_bytes());
                r.push(0x02);
                r.extend_from_slice(&(BLOCK as u32).to_be_bytes()[1..]);
                Some(truncate(r, usize::from(be16(&cb[7..9]))))
            }
            // SYNCHRONIZE CACHE(10)
            0x35 => {
                let status = match svc.flush() {
                    Ok(()) => PASSED,
                    Err(_) => self.fail(Sense::WRITE_ERROR),
                };
                return finish_without_data(io, cbw, status);
            }
            0x28 => return self.read10(svc, io, cbw, blocks),
            0x2A => return self.write10(svc, io, cbw, blocks),
            _ => {
                let status = self.fail(Sense::INVALID_OPCODE);
                return finish_without_data(io, cbw, status);
            }
        };
        match reply {
            None => finish_without_data(io, cbw, PASSED),
            Some(data) => {
                if !cbw.data_in && cbw.expected > 0 {
                    return finish_without_data(io, cbw, PHASE_ERROR);
                }
                let n = data.len().min(cbw.expected as usize);
                io.write_all(&data[..n]).map_err(link)?;
                pad(io, cbw.expected as usize - n)?;
                Ok(Done {
                    status: PASSED,
                    moved: n as u32,
                })
            }
        }
    }

    fn read10<S, IO>(
        &mut self,
        svc: &mut S,
        io: &mut IO,
        cbw: &Cbw,
        blocks: u64,
    ) -> Result<Done, LinkError>
    where
        S: BlockService + ?Sized,
        IO: Read + Write,
    {
        let lba = u64::from(be32(&cbw.cb[2..6]));
        let count = u64::from(be16(&cbw.cb[7..9]));
        let bytes = count * BLOCK as u64;
        if !cbw.data_in || bytes != u64::from(cbw.expected) {
            return finish_without_data(io, cbw, PHASE_ERROR);
        }
        if lba + count > blocks {
            let status = self.fail(Sense::LBA_OUT_OF_RANGE);
            return finish_without_data(io, cbw, status);
        }
        let mut moved = 0usize;
        while (moved as u64) < bytes {
            let n = (bytes as usize - moved).min(CHUNK);
            if svc
                .read(lba * BLOCK as u64 + moved as u64, &mut self.buf[..n])
                .is_err()
            {
                pad(io, bytes as usize - moved)?;
                let status = self.fail(Sense::READ_ERROR);
                return Ok(Done {
                    status,
                    moved: moved as u32,
                });
            }
            io.write_all(&self.buf[..n]).map_err(link)?;
            moved += n;
        }
        io.flush().map_err(link)?;
        Ok(Done {
            status: PASSED,
            moved: moved as u32,
        })
    }

    fn write10<S, IO>(
        &mut self,
        svc: &mut S,
        io: &mut IO,
        cbw: &Cbw,
        blocks: u64,
    ) -> Result<Done, LinkError>
    where
        S: BlockService + ?Sized,
        IO: Read + Write,
    {
        let lba = u64::from(be32(&cbw.cb[2..6]));
        let count = u64::from(be16(&cbw.cb[7..9]));
        let bytes = count * BLOCK as u64;
        if cbw.data_in || bytes != u64::from(cbw.expected) {
            return finish_without_data(io, cbw, PHASE_ERROR);
        }
        let refused = if !svc.writable() {
            // Refused here, before the block service sees it: counted there all the same.
            svc.count_refused_write();
            Some(Sense::WRITE_PROTECTED)
        } else if lba + count > blocks {
            Some(Sense::LBA_OUT_OF_RANGE)
        } else {
            None
        };
        if let Some(sense) = refused {
            let status = self.fail(sense);
            return finish_without_data(io, cbw, status);
        }
        let mut moved = 0usize;
        let mut status = PASSED;
        while (moved as u64) < bytes {
            let n = (bytes as usize - moved).min(CHUNK);
            io.read_exact(&mut self.buf[..n]).map_err(|e| match e {
                embedded_io::ReadExactError::UnexpectedEof => {
                    LinkError(embedded_io::ErrorKind::BrokenPipe)
                }
                embedded_io::ReadExactError::Other(e) => link(e),
            })?;
            if status == PASSED {
                let at = lba * BLOCK as u64 + moved as u64;
                status = match svc.write(at, &self.buf[..n]) {
                    Ok(()) => PASSED,
                    Err(BlockError::WriteProtected(_)) => self.fail(Sense::WRITE_PROTECTED),
                    Err(BlockError::OutOfRange) => self.fail(Sense::LBA_OUT_OF_RANGE),
                    Err(BlockError::Hw(_)) => self.fail(Sense::WRITE_ERROR),
                };
            }
            moved += n;
        }
        Ok(Done {
            status,
            moved: moved as u32,
        })
    }
}

fn truncate(mut v: Vec<u8>, len: usize) -> Vec<u8> {
    v.truncate(len);
    v
}

fn pad<IO: Write>(io: &mut IO, mut n: usize) -> Result<(), LinkError> {
    let zeros = [0u8; 64];
    while n > 0 {
        let k = n.min(zeros.len());
        io.write_all(&zeros[..k]).map_err(link)?;
        n -= k;
    }
    Ok(())
}

/// End a command that moves no data: satisfy whatever data phase the host
/// announced (zeros in, discarded bytes out), with nothing counted as moved.
fn finish_without_data<IO: Read + Write>(
    io: &mut IO,
    cbw: &Cbw,
    status: u8,
) -> Result<Done, LinkError> {
    let mut left = cbw.expected as usize;
    if cbw.data_in {
        pad(io, left)?;
        io.flush().map_err(link)?;
    } else {
        let mut sink = [0u8; 64];
        while left > 0 {
            let k = left.min(sink.len());
            let n = io.read(&mut sink[..k]).map_err(link)?;
            if n == 0 {
                return Err(LinkError(embedded_io::ErrorKind::BrokenPipe));
            }
            left -= n;
        }
    }
    // A command the host sent with a data phase it should not have is a
    // phase error even if it would otherwise pass.
    let status = if status == PASSED && cbw.expected > 0 {
        PHASE_ERROR
    } else {
        status
    };
    Ok(Done { status, moved: 0 })
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::convert::Infallible;
    use mgear_firmware::Appliance;

    /// Host side of the link in memory: `input` is what the host sent.
    struct Link {
        input: Vec<u8>,
        pos: usize,
        output: Vec<u8>,
    }

    impl Link {
        fn new(input: Vec<u8>) -> Self {
            Link {
                input,
                pos: 0,
                output: Vec::new(),
            }
        }
    }

    impl embedded_io::ErrorType for Link {
        type Error = Infallible;
    }
    impl Read for Link {
        fn read(&mut self, buf: &mut [u8]) -> Result<usize, Infallible> {
            let n = buf.len().min(self.input.len() - self.pos);
            buf[..n].copy_from_slice(&self.input[self.pos..self.pos + n]);
            self.pos += n;
            Ok(n)
        }
    }
    impl ReadReady for Link {
        fn read_ready(&mut self) -> Result<bool, Infallible> {
            Ok(self.pos < self.input.len())
        }
    }
    impl Write for Link {
        fn write(&mut self, buf: &[u8]) -> Result<usize, Infallible> {
            self.output.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> Result<(), Infallible> {
            Ok(())
        }
    }

    struct MemService {
        disk: Vec<u8>,
        writable: bool,
        flushed: usize,
    }

    impl BlockService for MemService {
        fn capacity(&mut self) -> u64 {
            self.disk.len() as u64
        }
        fn writable(&self) -> bool {
            self.writable
        }
        fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), BlockError> {
            let o = offset as usize;
            buf.copy_from_slice(
                self.disk
                    .get(o..o + buf.len())
                    .ok_or(BlockError::OutOfRange)?,
            );
            Ok(())
        }
        fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), BlockError> {
            let o = offset as usize;
            self.disk
                .get_mut(o..o + data.len())
                .ok_or(BlockError::OutOfRange)?
                .copy_from_slice(data);
            Ok(())
        }
        fn flush(&mut self) -> Result<(), BlockError> {
            self.flushed += 1;
            Ok(())
        }
    }

    fn cbw(tag: u32, expected: u32, data_in: bool, cb: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&CBW_SIGNATURE.to_le_bytes());
        v.extend_from_slice(&tag.to_le_bytes());
        v.extend_from_slice(&expected.to_le_bytes());
        v.push(if data_in { 0x80 } else { 0 });
        v.push(0);
        v.push(cb.len() as u8);
        let mut block = [0u8; 16];
        block[..cb.len()].copy_from_slice(cb);
        v.extend_from_slice(&block);
        v
    }

    fn rw10(op: u8, lba: u32, blocks: u16) -> Vec<u8> {
        let mut cb = vec![op, 0];
        cb.extend_from_slice(&lba.to_be_bytes());
        cb.push(0);
        cb.extend_from_slice(&blocks.to_be_bytes());
        cb.push(0);
        cb
    }

    /// Run every command in `input`; returns the output split as
    /// (data, csw) per command, given each command's data-in length.
    fn run<S: BlockService>(svc: &mut S, input: Vec<u8>) -> (MscTarget, Vec<u8>) {
        let mut t = MscTarget::new();
        let mut link = Link::new(input);
        while link.pos < link.input.len() {
            t.poll(svc, &mut link).unwrap();
        }
        (t, link.output)
    }

    fn csw_of(out: &[u8]) -> (u32, u32, u8) {
        let c = &out[out.len() - 13..];
        assert_eq!(&c[0..4], &CSW_SIGNATURE.to_le_bytes());
        let tag = u32::from_le_bytes(c[4..8].try_into().unwrap());
        let residue = u32::from_le_bytes(c[8..12].try_into().unwrap());
        (tag, residue, c[12])
    }

    fn mem(blocks: usize, writable: bool) -> MemService {
        let disk = (0..blocks * BLOCK)
            .map(|i| (i / BLOCK) as u8 ^ (i as u8))
            .collect();
        MemService {
            disk,
            writable,
            flushed: 0,
        }
    }

    #[test]
    fn inquiry_capacity_and_mode_sense() {
        let mut svc = mem(64, false);
        let (_, out) = run(&mut svc, cbw(7, 36, true, &[0x12, 0, 0, 0, 36, 0]));
        assert_eq!(out.len(), 36 + 13);
        assert_eq!(&out[8..16], b"MGEAR   ");
        assert_eq!(csw_of(&out), (7, 0, PASSED));

        let (_, out) = run(
            &mut svc,
            cbw(8, 8, true, &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
        );
        assert_eq!(&out[..8], &[0, 0, 0, 63, 0, 0, 2, 0]);
        assert_eq!(csw_of(&out), (8, 0, PASSED));

        // Read-only medium: the write-protect bit is set; writable: clear.
        let (_, out) = run(&mut svc, cbw(9, 4, true, &[0x1A, 0, 0x3F, 0, 4, 0]));
        assert_eq!(out[2], 0x80);
        svc.writable = true;
        let (_, out) = run(&mut svc, cbw(9, 192, true, &[0x1A, 0, 0x3F, 0, 192, 0]));
        assert_eq!(out[2], 0);
        // The host asked for 192 bytes: 4 real, 188 padding reported as residue.
        assert_eq!(out.len(), 192 + 13);
        assert_eq!(csw_of(&out), (9, 188, PASSED));
    }

    #[test]
    fn read_returns_the_medium_bytes() {
        let mut svc = mem(128, false);
        let want = svc.disk[5 * BLOCK..45 * BLOCK].to_vec();
        let (_, out) = run(&mut svc, cbw(1, 40 * 512, true, &rw10(0x28, 5, 40)));
        assert_eq!(&out[..40 * BLOCK], &want[..]);
        assert_eq!(csw_of(&out), (1, 0, PASSED));
    }

    #[test]
    fn write_lands_when_writable_and_is_refused_when_protected() {
        let mut svc = mem(64, true);
        let mut input = cbw(2, 2 * 512, false, &rw10(0x2A, 10, 2));
        input.extend(core::iter::repeat_n(0xEE, 1024));
        input.extend(cbw(3, 0, false, &[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0]));
        let (_, out) = run(&mut svc, input);
        assert!(svc.disk[10 * BLOCK..12 * BLOCK].iter().all(|b| *b == 0xEE));
        assert_eq!(svc.flushed, 1);
        assert_eq!(out.len(), 26);
        assert_eq!(csw_of(&out[..13]), (2, 0, PASSED));

        // Sealed: the data is read from the host and thrown away, the
        // medium is untouched, and REQUEST SENSE says DATA PROTECT.
        svc.writable = false;
        let before = svc.disk.clone();
        let mut input = cbw(4, 512, false, &rw10(0x2A, 0, 1));
        input.extend(core::iter::repeat_n(0x55, 512));
        input.extend(cbw(5, 18, true, &[0x03, 0, 0, 0, 18, 0]));
        let (t, out) = run(&mut svc, input);
        assert_eq!(svc.disk, before);
        assert_eq!(csw_of(&out[..13]), (4, 512, FAILED));
        let sense = &out[13..31];
        assert_eq!((sense[2], sense[12], sense[13]), (0x07, 0x27, 0x00));
        assert_eq!(csw_of(&out[31..]), (5, 0, PASSED));
        assert_eq!(t.sense(), Sense::NONE, "REQUEST SENSE consumes the sense");
    }

    #[test]
    fn out_of_range_unknown_and_mismatched_commands_fail_cleanly() {
        let mut svc = mem(16, true);
        // Past the end.
        let (t, out) = run(&mut svc, cbw(1, 2 * 512, true, &rw10(0x28, 15, 2)));
        assert_eq!(out.len(), 1024 + 13, "the data phase is still satisfied");
        assert_eq!(csw_of(&out), (1, 1024, FAILED));
        assert_eq!(t.sense(), Sense::LBA_OUT_OF_RANGE);
        // Unknown opcode.
        let (t, out) = run(&mut svc, cbw(2, 0, false, &[0xC7, 0, 0, 0, 0, 0]));
        assert_eq!(csw_of(&out), (2, 0, FAILED));
        assert_eq!(t.sense(), Sense::INVALID_OPCODE);
        // READ(10) whose length disagrees with the CBW: phase error.
        let (_, out) = run(&mut svc, cbw(3, 100, true, &rw10(0x28, 0, 1)));
        assert_eq!(out.len(), 100 + 13);
        assert_eq!(csw_of(&out), (3, 100, PHASE_ERROR));
        // A garbage CBW is dropped; the next good one is answered.
        let mut input = vec![0xAB; CBW_LEN];
        input.extend(cbw(4, 0, false, &[0x00, 0, 0, 0, 0, 0]));
        let (_, out) = run(&mut svc, input);
        assert_eq!(out.len(), 13);
        assert_eq!(csw_of(&out), (4, 0, PASSED));
    }

    #[test]
    fn cbw_split_across_reads_waits_for_the_rest() {
        let mut svc = mem(16, true);
        let whole = cbw(6, 0, false, &[0x00, 0, 0, 0, 0, 0]);
        let mut t = MscTarget::new();
        let mut link = Link::new(whole[..10].to_vec());
        assert!(!t.poll(&mut svc, &mut link).unwrap());
        assert!(link.output.is_empty());
        link.input.extend_from_slice(&whole[10..]);
        assert!(t.poll(&mut svc, &mut link).unwrap());
        assert_eq!(csw_of(&link.output), (6, 0, PASSED));
    }

    /// Against the real firmware core: a factory-fresh appliance exposes
    /// its medium read-only over mass storage and refuses a write.
    #[test]
    fn appliance_refuses_writes_while_not_unlocked() {
        let platform = mgear_firmware::testing::FakePlatform::new(64 * BLOCK, 1);
        let mut app = Appliance::new(platform, mgear_firmware::Config::default()).unwrap();
        let mut input = cbw(1, 4, true, &[0x1A, 0, 0x3F, 0, 4, 0]);
        input.extend(cbw(2, 512, false, &rw10(0x2A, 3, 1)));
        input.extend(core::iter::repeat_n(0x77, 512));
        input.extend(cbw(3, 512, true, &rw10(0x28, 3, 1)));
        let (t, out) = run(&mut app, input);
        assert_eq!(out[2], 0x80, "write-protect bit");
        assert_eq!(csw_of(&out[4..17]), (1, 0, PASSED));
        assert_eq!(csw_of(&out[17..30]), (2, 512, FAILED));
        assert_eq!(t.sense(), Sense::WRITE_PROTECTED);
        assert_eq!(out.len(), 30 + 512 + 13);
        assert!(
            out[30..30 + 512].iter().all(|b| *b != 0x77),
            "the write reached the medium"
        );
        assert_eq!(csw_of(&out[30 + 512..]), (3, 0, PASSED));
    }

    /// Unlocked, a WRITE(10) through mass storage lands on the medium;
    /// locked again, the next one is refused and the medium keeps the data.
    #[test]
    fn appliance_accepts_writes_only_while_unlocked() {
        use mgear_firmware::protocol::{Pin, Request};
        let platform = mgear_firmware::testing::FakePlatform::new(64 * BLOCK, 2);
        let cfg = mgear_firmware::Config {
            pin_iterations: 1_000,
            ..Default::default()
        };
        let mut app = Appliance::new(platform, cfg).unwrap();
        app.handle(Request::Provision {
            pin: Pin::new("246810"),
        });
        app.handle(Request::Unlock {
            pin: Pin::new("246810"),
        });
        assert!(app.medium_writable(), "unlock did not take");

        let mut input = cbw(1, 1024, false, &rw10(0x2A, 8, 2));
        input.extend(core::iter::repeat_n(0x5A, 1024));
        let (_, out) = run(&mut app, input);
        assert_eq!(csw_of(&out), (1, 0, PASSED));

        app.handle(Request::Lock);
        let mut input = cbw(2, 512, false, &rw10(0x2A, 8, 1));
        input.extend(core::iter::repeat_n(0x11, 512));
        input.extend(cbw(3, 1024, true, &rw10(0x28, 8, 2)));
        let (t, out) = run(&mut app, input);
        assert_eq!(csw_of(&out[..13]), (2, 512, FAILED));
        assert_eq!(t.sense(), Sense::WRITE_PROTECTED);
        assert_eq!(
            app.info().counters.refused_writes,
            1,
            "a write refused by mass storage is counted"
        );
        assert!(out[13..13 + 1024].iter().all(|b| *b == 0x5A));
        assert_eq!(csw_of(&out[13 + 1024..]), (3, 0, PASSED));
    }
}
