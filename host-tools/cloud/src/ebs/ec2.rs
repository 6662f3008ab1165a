//! The two EC2 Query API calls that turn a completed snapshot into a bootable image:
//! `DescribeSnapshots` (wait until the snapshot is `completed`: RegisterImage refuses a pending
//! one) and `RegisterImage` (one EBS block-device mapping as the root device, HVM, ENA, boot mode).
//!
//! Query API shape: `POST /` with a form body `Action=...&Version=2016-11-15&...`, signed for
//! service `ec2`; answers are XML (`<imageId>`, `<status>`), errors
//! `<Response><Errors><Error><Code>..</Code><Message>..</Message>`.

use std::time::{Duration, Instant};

use super::client::{query_enc, Call, EbsClient};
use crate::{CloudError, Result};

/// The EC2 API version these calls are written against.
pub const EC2_VERSION: &str = "2016-11-15";

/// What `RegisterImage` is asked for.
#[derive(Debug, Clone)]
pub struct NewImage {
    /// AMI name (unique in the account and region).
    pub name: String,
    /// Description.
    pub description: String,
    /// `x86_64` or `arm64`.
    pub architecture: String,
    /// Root device, e.g. `/dev/xvda` (`/dev/sda1` for some older images).
    pub root_device: String,
    /// `legacy-bios`, `uefi` or `uefi-preferred`.
    pub boot_mode: String,
    /// The guest has ENA drivers (required by current instance types).
    pub ena_support: bool,
    /// EBS volume type for the root volume (`gp3`).
    pub volume_type: String,
}

impl EbsClient {
    /// `DescribeSnapshots` of one snapshot: its status (`pending`, `completed`, `error`).
    pub fn snapshot_status(&self, snapshot: &str) -> Result<String> {
        self.describe_snapshot(snapshot).map(|(status, _)| status)
    }

    /// `DescribeSnapshots` of one snapshot: its status and its description (empty when it
    /// has none).
    pub fn describe_snapshot(&self, snapshot: &str) -> Result<(String, String)> {
        let body = form(&[
            ("Action", "DescribeSnapshots"),
            ("Version", EC2_VERSION),
            ("SnapshotId.1", snapshot),
        ]);
        let a = self.ec2("DescribeSnapshots", &body)?;
        let text = String::from_utf8_lossy(&a);
        let status = xml_text(&text, "status").ok_or_else(|| CloudError::BadResponse {
            what: "DescribeSnapshots".into(),
            detail: format!("no <status> for {snapshot}"),
        })?;
        Ok((status, xml_text(&text, "description").unwrap_or_default()))
    }

    /// Poll [`EbsClient::snapshot_status`] until `completed`; `error` or the deadline fail.
    pub fn wait_completed(&self, snapshot: &str, deadline: Duration) -> Result<()> {
        let start = Instant::now();
        let mut last = String::new();
        while start.elapsed() < deadline {
            last = self.snapshot_status(snapshot)?;
            match last.as_str() {
                "completed" => return Ok(()),
                "error" => {
                    return Err(CloudError::BadResponse {
                        what: format!("snapshot {snapshot}"),
                        detail: "went to status error while AWS sealed it; start the ingest again \
                                 (a new snapshot is made)"
                            .into(),
                    })
                }
                _ => std::thread::sleep(Duration::from_secs(2).min(deadline / 10)),
            }
        }
        Err(CloudError::Timeout {
            what: format!("snapshot {snapshot}"),
            wanted: "become completed".into(),
            after: deadline,
            last,
        })
    }

    /// `RegisterImage` from `snapshot` as the root volume; the new AMI id.
    pub fn register_image(&self, snapshot: &str, img: &NewImage) -> Result<String> {
        let ena = if img.ena_support { "true" } else { "false" };
        let body = form(&[
            ("Action", "RegisterImage"),
            ("Version", EC2_VERSION),
            ("Name", &img.name),
            ("Description", &img.description),
            ("Architecture", &img.architecture),
            ("RootDeviceName", &img.root_device),
            ("VirtualizationType", "hvm"),
            ("BootMode", &img.boot_mode),
            ("EnaSupport", ena),
            ("BlockDeviceMapping.1.DeviceName", &img.root_device),
            ("BlockDeviceMapping.1.Ebs.SnapshotId", snapshot),
            ("BlockDeviceMapping.1.Ebs.VolumeType", &img.volume_type),
            ("BlockDeviceMapping.1.Ebs.DeleteOnTermination", "true"),
        ]);
        let a = self.ec2("RegisterImage", &body)?;
        let text = String::from_utf8_lossy(&a);
        xml_text(&text, "imageId").ok_or_else(|| CloudError::BadResponse {
            what: "RegisterImage".into(),
            detail: format!("no <imageId> in the answer: {}", text.trim()),
        })
    }

    fn ec2(&self, name: &str, body: &str) -> Result<Vec<u8>> {
        Ok(self
            .send(Call {
                name,
                service: "ec2",
                method: "POST",
                url: format!("{}/", self.cfg.ec2_endpoint),
                headers: vec![(
                    "content-type",
                    "application/x-www-form-urlencoded; charset=utf-8".into(),
                )],
                body: body.as_bytes(),
                payload_signed: true,
            })?
            .body)
    }
}

/// A form body, every key and value percent-encoded.
pub(crate) fn form(kv: &[(&str, &str)]) -> String {
    kv.iter()
        .map(|(k, v)| format!("{}={}", query_enc(k), query_enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// The text of the first `<tag>...</tag>` (EC2's answers are flat enough for this).
pub(crate) fn xml_text(xml: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let start = xml.find(&open)? + open.len();
    let end = xml[start..].find(&close)? + start;
    Some(
        xml[start..end]
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&apos;", "'")
            .replace("&amp;", "&"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_and_xml_helpers() {
        assert_eq!(
            form(&[("Action", "RegisterImage"), ("Name", "web 01/a")]),
            "Action=RegisterImage&Name=web%2001%2Fa"
        );
        let x = "<RegisterImageResponse><requestId>r</requestId><imageId>ami-1&amp;</imageId></RegisterImageResponse>";
        assert_eq!(xml_text(x, "imageId").as_deref(), Some("ami-1&"));
        assert_eq!(xml_text(x, "status"), None);
    }
}
