//! HID transport framing: the console byte stream (the very same COBS
//! frames and text lines as on the serial port) carried in 64-byte HID
//! reports, for hosts where a driverless HID device is easier than CDC-ACM.
//!
//! # Report layout (64 bytes, both directions)
//!
//! ```text
//! byte 0       n: number of stream bytes in this report, 1..=63
//! bytes 1..=n  the next n bytes of the console stream
//! bytes n+1..  zero padding (ignored)
//! ```
//!
//! The stream's own framing (0x00-delimited COBS frames with CRC) finds
//! frame boundaries, so reports need no sequence numbers: a lost report
//! shows up as a frame with a bad CRC, which the protocol already answers
//! with an error. A report whose length byte is 0 or above 63 is rejected.

/// Size of one HID report.
pub const REPORT_LEN: usize = 64;
/// Stream bytes per report.
pub const REPORT_PAYLOAD: usize = REPORT_LEN - 1;

/// Why a report is not acceptable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportError {
    /// The length byte is 0 or larger than [`REPORT_PAYLOAD`].
    BadLength(u8),
    /// The report is not [`REPORT_LEN`] bytes.
    BadSize(usize),
}

impl std::fmt::Display for ReportError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReportError::BadLength(n) => write!(
                f,
                "HID report length byte {n} is not in 1..={REPORT_PAYLOAD}"
            ),
            ReportError::BadSize(n) => write!(f, "HID report of {n} bytes (expected {REPORT_LEN})"),
        }
    }
}

impl std::error::Error for ReportError {}

/// Split a stream chunk into reports.
pub fn to_reports(stream: &[u8]) -> Vec<[u8; REPORT_LEN]> {
    stream
        .chunks(REPORT_PAYLOAD)
        .map(|c| {
            let mut r = [0u8; REPORT_LEN];
            r[0] = c.len() as u8;
            r[1..=c.len()].copy_from_slice(c);
            r
        })
        .collect()
}

/// The stream bytes one report carries.
pub fn from_report(report: &[u8]) -> Result<&[u8], ReportError> {
    if report.len() != REPORT_LEN {
        return Err(ReportError::BadSize(report.len()));
    }
    let n = report[0];
    if n == 0 || usize::from(n) > REPORT_PAYLOAD {
        return Err(ReportError::BadLength(n));
    }
    Ok(&report[1..=usize::from(n)])
}

#[cfg(test)]
mod tests {
    use super::*;
    use mgear_appliance_api::protocol::{encode_frame, ConsoleDecoder, Input, Pin, Request};

    fn decode_all(stream: &[u8]) -> Vec<Input> {
        let mut d = ConsoleDecoder::new();
        stream.iter().filter_map(|&b| d.push(b)).collect()
    }

    #[test]
    fn frames_survive_report_splitting_at_every_size() {
        let mut stream = b"help\r\n".to_vec();
        stream.extend(encode_frame(1, &Request::Info));
        stream.extend(encode_frame(
            2,
            &Request::Unlock {
                pin: Pin::new("4711-0815"),
            },
        ));
        stream.extend(encode_frame(
            3,
            &Request::CaptureBegin {
                name: "x".repeat(200),
            },
        ));
        let direct = decode_all(&stream);
        assert_eq!(direct.len(), 4);
        // Different chunkings of the stream give the same reports' content.
        for step in [1usize, 7, 63, 64, 200, stream.len()] {
            let mut via = Vec::new();
            for chunk in stream.chunks(step) {
                for r in to_reports(chunk) {
                    via.extend_from_slice(from_report(&r).unwrap());
                }
            }
            assert_eq!(via, stream);
            assert_eq!(decode_all(&via), direct);
        }
    }

    #[test]
    fn malformed_reports_are_rejected_and_a_lost_report_breaks_only_its_frame() {
        assert_eq!(from_report(&[0u8; 64]), Err(ReportError::BadLength(0)));
        let mut r = [0u8; 64];
        r[0] = 64;
        assert_eq!(from_report(&r), Err(ReportError::BadLength(64)));
        assert_eq!(from_report(&[1u8; 10]), Err(ReportError::BadSize(10)));

        let big = encode_frame(
            9,
            &Request::CaptureBegin {
                name: "y".repeat(250),
            },
        );
        let mut stream = big.clone();
        stream.extend(encode_frame(10, &Request::Ping));
        let reports = to_reports(&stream);
        assert!(reports.len() >= 4);
        // Drop the second report: the big frame fails its check, the next one decodes.
        let mut via = Vec::new();
        for (i, r) in reports.iter().enumerate() {
            if i != 1 {
                via.extend_from_slice(from_report(r).unwrap());
            }
        }
        let got = decode_all(&via);
        assert!(matches!(got.first(), Some(Input::Frame(Err(_)))));
        match got.last() {
            Some(Input::Frame(Ok(f))) => {
                assert_eq!(f.request_id, 10);
                assert_eq!(f.decode::<Request>().unwrap(), Request::Ping);
            }
            other => panic!("expected the Ping frame, got {other:?}"),
        }
    }
}
