//! The EBS direct API calls (REST+JSON, service `ebs`), blocking, signed, retried.
//!
//! | call               | request                                                              |
//! |--------------------|----------------------------------------------------------------------|
//! | StartSnapshot      | `POST /snapshots`, JSON `VolumeSize` (GiB), `Description`, `Tags`, `ClientToken`, `Timeout` (minutes) |
//! | PutSnapshotBlock   | `PUT /snapshots/{id}/blocks/{index}`, body 524288 bytes, `x-amz-Data-Length`, `x-amz-Checksum` (base64 SHA-256), `x-amz-Checksum-Algorithm: SHA256`, `x-amz-Progress` |
//! | CompleteSnapshot   | `POST /snapshots/completion/{id}`, `x-amz-ChangedBlocksCount`, `x-amz-Checksum` (aggregate), `x-amz-Checksum-Algorithm: SHA256`, `x-amz-Checksum-Aggregation-Method: LINEAR` |
//! | ListSnapshotBlocks | `GET /snapshots/{id}/blocks?maxResults=&pageToken=`                   |
//! | GetSnapshotBlock   | `GET /snapshots/{id}/blocks/{index}?blockToken=`                      |
//!
//! Retries: AWS asks clients to retry 5xx answers and the throttling errors
//! (`ThrottlingException`, `RequestThrottledException`, HTTP 429); transport failures are retried
//! too. Each attempt is signed anew (the signature carries the time), with exponential backoff
//! and jitter between attempts.

use std::io::Read;
use std::time::{Duration, SystemTime};

use serde::Deserialize;
use serde_json::{json, Value};

use super::config::AwsConfig;
use super::sign::{sign_headers, Outgoing, Payload};
use super::{b64, BLOCK_SIZE};
use crate::{CloudError, Result};

/// How often and how patiently calls are retried.
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    /// Attempts in all (1 = no retry).
    pub attempts: u32,
    /// Wait before the first retry; doubled for each next one.
    pub base: Duration,
    /// Longest wait between two attempts.
    pub max: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            attempts: 8,
            base: Duration::from_millis(200),
            max: Duration::from_secs(20),
        }
    }
}

/// The longest one request may take, its 512 KiB block included (at 100 kB/s, 5 s).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

fn agent(timeout: Duration) -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(10))
        .timeout(timeout)
        .max_idle_connections_per_host(64)
        .build()
}

/// Requests in a row an endpoint may leave unanswered before the call fails.
const SILENCES: u32 = 2;

/// Whether a failed request is sent again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Again {
    No,
    Yes,
    /// It timed out: the endpoint took the connection and answered nothing.
    AfterSilence,
}

/// A client of the EBS direct APIs (and, in [`super::ec2`], of the EC2 calls that go with them).
/// Cheap to clone; one connection pool shared by all clones and threads.
#[derive(Debug, Clone)]
pub struct EbsClient {
    pub(crate) cfg: AwsConfig,
    agent: ureq::Agent,
    pub(crate) retry: Retry,
    /// The longest one request may take.
    timeout: Duration,
}

/// What `StartSnapshot` is asked for.
#[derive(Debug, Clone)]
pub struct NewSnapshot {
    /// Size in GiB (see [`super::volume_gib`]).
    pub volume_gib: u64,
    /// `Description`.
    pub description: String,
    /// `Tags`, key and value.
    pub tags: Vec<(String, String)>,
    /// `ClientToken`: the same token gives the same snapshot back (a re-run after a kill between
    /// StartSnapshot and recording its id does not start a second one).
    pub client_token: String,
    /// `Timeout` in minutes (10..=4320): a pending snapshot with no block written for this long
    /// goes to `error`.
    pub timeout_minutes: u32,
}

/// A snapshot as StartSnapshot describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// `snap-...`.
    pub id: String,
    /// `pending`, `completed` or `error`.
    pub status: String,
    /// Always 524288.
    pub block_size: u64,
    /// Size in GiB.
    pub volume_gib: u64,
}

/// One block of a snapshot as ListSnapshotBlocks names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockRef {
    /// Block index (offset / 524288).
    pub index: u64,
    /// The token GetSnapshotBlock needs.
    pub token: String,
}

/// A successful answer.
pub(crate) struct Answer {
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self, call: &str) -> Result<Value> {
        serde_json::from_slice(&self.body).map_err(|e| CloudError::BadResponse {
            what: call.into(),
            detail: format!("body is not JSON: {e}"),
        })
    }
}

/// One signed request, before it is sent.
pub(crate) struct Call<'a> {
    /// The AWS operation name, for messages.
    pub name: &'a str,
    /// `ebs` or `ec2`.
    pub service: &'a str,
    pub method: &'a str,
    pub url: String,
    pub headers: Vec<(&'a str, String)>,
    pub body: &'a [u8],
    pub payload_signed: bool,
}

impl EbsClient {
    /// A client for `cfg`, with the default retry policy.
    pub fn new(cfg: AwsConfig) -> EbsClient {
        EbsClient {
            cfg,
            agent: agent(REQUEST_TIMEOUT),
            retry: Retry::default(),
            timeout: REQUEST_TIMEOUT,
        }
    }

    /// Change the longest one request may take (tests of a silent endpoint).
    pub fn with_timeout(mut self, timeout: Duration) -> EbsClient {
        self.agent = agent(timeout);
        self.timeout = timeout;
        self
    }

    /// Change the retry policy.
    pub fn with_retry(mut self, retry: Retry) -> EbsClient {
        self.retry = retry;
        self
    }

    /// The configuration in use.
    pub fn config(&self) -> &AwsConfig {
        &self.cfg
    }

    /// `StartSnapshot`.
    pub fn start_snapshot(&self, s: &NewSnapshot) -> Result<Snapshot> {
        if s.volume_gib == 0 || s.volume_gib > super::MAX_VOLUME_GIB {
            return Err(CloudError::Config(format!(
                "an EBS snapshot is 1 to {} GiB, not {}",
                super::MAX_VOLUME_GIB,
                s.volume_gib
            )));
        }
        let mut body = json!({
            "VolumeSize": s.volume_gib,
            "Description": s.description,
            "ClientToken": s.client_token,
            "Timeout": s.timeout_minutes,
        });
        if !s.tags.is_empty() {
            body["Tags"] = Value::Array(
                s.tags
                    .iter()
                    .map(|(k, v)| json!({"Key": k, "Value": v}))
                    .collect(),
            );
        }
        let body = body.to_string();
        let a = self.send(Call {
            name: "StartSnapshot",
            service: "ebs",
            method: "POST",
            url: format!("{}/snapshots", self.cfg.ebs_endpoint),
            headers: vec![("content-type", "application/json".into())],
            body: body.as_bytes(),
            payload_signed: true,
        })?;
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Out {
            snapshot_id: String,
            status: String,
            block_size: u64,
            volume_size: u64,
        }
        let o: Out = serde_json::from_value(a.json("StartSnapshot")?).map_err(|e| {
            CloudError::BadResponse {
                what: "StartSnapshot".into(),
                detail: e.to_string(),
            }
        })?;
        if o.block_size != BLOCK_SIZE as u64 {
            return Err(CloudError::BadResponse {
                what: "StartSnapshot".into(),
                detail: format!(
                    "block size {} (this client writes {BLOCK_SIZE}-byte blocks)",
                    o.block_size
                ),
            });
        }
        Ok(Snapshot {
            id: o.snapshot_id,
            status: o.status,
            block_size: o.block_size,
            volume_gib: o.volume_size,
        })
    }

    /// `PutSnapshotBlock` of one full block whose SHA-256 is `digest`; `progress` is a percentage.
    /// The checksum EBS answers must be ours (it computed it from the bytes it received).
    pub fn put_block(
        &self,
        snapshot: &str,
        index: u64,
        data: &[u8],
        digest: &[u8; 32],
        progress: Option<u8>,
    ) -> Result<()> {
        if data.len() != BLOCK_SIZE {
            return Err(CloudError::Config(format!(
                "block {index} is {} bytes: EBS takes only {BLOCK_SIZE}-byte blocks",
                data.len()
            )));
        }
        let sum = b64(digest);
        let mut headers = vec![
            ("content-type", "application/octet-stream".to_string()),
            ("x-amz-Data-Length", BLOCK_SIZE.to_string()),
            ("x-amz-Checksum", sum.clone()),
            ("x-amz-Checksum-Algorithm", "SHA256".into()),
        ];
        if let Some(p) = progress {
            headers.push(("x-amz-Progress", p.min(100).to_string()));
        }
        let a = self.send(Call {
            name: "PutSnapshotBlock",
            service: "ebs",
            method: "PUT",
            url: format!(
                "{}/snapshots/{}/blocks/{index}",
                self.cfg.ebs_endpoint,
                path_seg(snapshot)
            ),
            headers,
            body: data,
            payload_signed: false,
        })?;
        match a.header("x-amz-Checksum") {
            Some(got) if got == sum => Ok(()),
            got => Err(CloudError::BadResponse {
                what: format!("PutSnapshotBlock {snapshot} block {index}"),
                detail: format!("EBS acknowledged checksum {got:?}, we sent {sum}"),
            }),
        }
    }

    /// `CompleteSnapshot`; the status it answers (`completed` or `pending` while AWS seals it).
    pub fn complete(&self, snapshot: &str, changed_blocks: u64, aggregate: &str) -> Result<String> {
        let a = self.send(Call {
            name: "CompleteSnapshot",
            service: "ebs",
            method: "POST",
            url: format!(
                "{}/snapshots/completion/{}",
                self.cfg.ebs_endpoint,
                path_seg(snapshot)
            ),
            headers: vec![
                ("x-amz-ChangedBlocksCount", changed_blocks.to_string()),
                ("x-amz-Checksum", aggregate.to_string()),
                ("x-amz-Checksum-Algorithm", "SHA256".into()),
                ("x-amz-Checksum-Aggregation-Method", "LINEAR".into()),
            ],
            body: b"",
            payload_signed: true,
        })?;
        let v = a.json("CompleteSnapshot")?;
        v.get("Status")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| CloudError::BadResponse {
                what: "CompleteSnapshot".into(),
                detail: format!("no Status in {v}"),
            })
    }

    /// `ListSnapshotBlocks`, every page: the snapshot's written blocks in index order.
    pub fn list_blocks(&self, snapshot: &str) -> Result<Vec<BlockRef>> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut url = format!(
                "{}/snapshots/{}/blocks?maxResults=10000",
                self.cfg.ebs_endpoint,
                path_seg(snapshot)
            );
            if let Some(t) = &token {
                url.push_str("&pageToken=");
                url.push_str(&query_enc(t));
            }
            let a = self.send(Call {
                name: "ListSnapshotBlocks",
                service: "ebs",
                method: "GET",
                url,
                headers: vec![],
                body: b"",
                payload_signed: true,
            })?;
            let v = a.json("ListSnapshotBlocks")?;
            for b in v
                .get("Blocks")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let (Some(index), Some(token)) = (
                    b.get("BlockIndex").and_then(Value::as_u64),
                    b.get("BlockToken").and_then(Value::as_str),
                ) else {
                    return Err(CloudError::BadResponse {
                        what: "ListSnapshotBlocks".into(),
                        detail: format!("block entry without BlockIndex/BlockToken: {b}"),
                    });
                };
                out.push(BlockRef {
                    index,
                    token: token.into(),
                });
            }
            match v.get("NextToken").and_then(Value::as_str) {
                Some(t) if !t.is_empty() => token = Some(t.into()),
                _ => return Ok(out),
            }
        }
    }

    /// `GetSnapshotBlock`: the block's bytes, checked against the checksum EBS sends with them.
    pub fn get_block(&self, snapshot: &str, block: &BlockRef) -> Result<Vec<u8>> {
        let a = self.send(Call {
            name: "GetSnapshotBlock",
            service: "ebs",
            method: "GET",
            url: format!(
                "{}/snapshots/{}/blocks/{}?blockToken={}",
                self.cfg.ebs_endpoint,
                path_seg(snapshot),
                block.index,
                query_enc(&block.token)
            ),
            headers: vec![],
            body: b"",
            payload_signed: true,
        })?;
        let want = a.header("x-amz-Checksum").map(str::to_string);
        let got = b64(&super::block_digest(&a.body));
        if a.body.len() != BLOCK_SIZE || want.as_deref() != Some(got.as_str()) {
            return Err(CloudError::BadResponse {
                what: format!("GetSnapshotBlock {snapshot} block {}", block.index),
                detail: format!(
                    "{} bytes with checksum {got}, EBS said {want:?}",
                    a.body.len()
                ),
            });
        }
        Ok(a.body)
    }

    /// Send `c`, signed, retrying what AWS says to retry. An endpoint that takes the
    /// connection and answers nothing is given [`SILENCES`] chances, not every attempt: eight
    /// of two minutes each held an unattended ingest for a quarter of an hour.
    pub(crate) fn send(&self, c: Call<'_>) -> Result<Answer> {
        let mut attempt = 0u32;
        let mut silences = 0u32;
        loop {
            attempt += 1;
            match self.send_once(&c) {
                Ok(a) => return Ok(a),
                Err((e, retryable)) => {
                    silences += u32::from(retryable == Again::AfterSilence);
                    if silences >= SILENCES {
                        return Err(match e {
                            CloudError::Transport {
                                method,
                                url,
                                message,
                            } => CloudError::Transport {
                                method,
                                url,
                                message: format!(
                                    "{message} ({SILENCES} times: the endpoint takes the \
                                     connection and answers nothing within {} s)",
                                    self.timeout.as_secs()
                                ),
                            },
                            e => e,
                        });
                    }
                    if retryable == Again::No || attempt >= self.retry.attempts.max(1) {
                        return Err(e);
                    }
                    std::thread::sleep(backoff(self.retry, attempt));
                }
            }
        }
    }

    fn send_once(&self, c: &Call<'_>) -> std::result::Result<Answer, (CloudError, Again)> {
        let own: Vec<(&str, &str)> = c.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let payload = if c.payload_signed {
            Payload::Signed(c.body)
        } else {
            Payload::Unsigned
        };
        let signed = sign_headers(
            &self.cfg.credentials,
            &self.cfg.region,
            c.service,
            Outgoing {
                method: c.method,
                url: &c.url,
                headers: &own,
                payload,
            },
            SystemTime::now(),
        )
        .map_err(|e| (e, Again::No))?;
        let mut req = self.agent.request(c.method, &c.url);
        for (k, v) in own {
            req = req.set(k, v);
        }
        for (k, v) in &signed {
            req = req.set(k, v);
        }
        let res = if c.body.is_empty() && c.method == "GET" {
            req.call()
        } else {
            req.send_bytes(c.body)
        };
        match res {
            Ok(resp) => {
                let headers = resp
                    .headers_names()
                    .into_iter()
                    .filter_map(|n| resp.header(&n).map(|v| (n.clone(), v.to_string())))
                    .collect();
                let mut body = Vec::new();
                resp.into_reader()
                    .take(BLOCK_SIZE as u64 + (1 << 20))
                    .read_to_end(&mut body)
                    .map_err(|e| {
                        (
                            CloudError::Transport {
                                method: c.method.into(),
                                url: c.url.clone(),
                                message: format!("{}: reading the answer: {e}", c.name),
                            },
                            Again::Yes,
                        )
                    })?;
                Ok(Answer { headers, body })
            }
            Err(ureq::Error::Status(status, resp)) => {
                let kind = resp
                    .header("x-amzn-ErrorType")
                    .map(|t| t.split(':').next().unwrap_or(t).to_string());
                let mut text = String::new();
                let _ = resp.into_reader().take(64 << 10).read_to_string(&mut text);
                let (kind, message) = aws_error(kind, &text);
                let retryable = status >= 500
                    || status == 429
                    || matches!(
                        kind.as_str(),
                        "ThrottlingException"
                            | "RequestThrottledException"
                            | "Throttling"
                            | "RequestLimitExceeded"
                    );
                Err((
                    CloudError::Http {
                        method: c.method.into(),
                        url: c.url.clone(),
                        status,
                        message: format!("{} failed: {kind}: {message}", c.name),
                    },
                    match retryable {
                        true => Again::Yes,
                        false => Again::No,
                    },
                ))
            }
            Err(ureq::Error::Transport(t)) => {
                let silent = std::error::Error::source(&t)
                    .and_then(|s| s.downcast_ref::<std::io::Error>())
                    .is_some_and(|e| {
                        matches!(
                            e.kind(),
                            std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
                        )
                    });
                Err((
                    CloudError::Transport {
                        method: c.method.into(),
                        url: c.url.clone(),
                        message: format!("{}: {t}", c.name),
                    },
                    match silent {
                        true => Again::AfterSilence,
                        false => Again::Yes,
                    },
                ))
            }
        }
    }
}

/// AWS's error kind and message from an error answer: EBS sends JSON `{"Message", "Reason"}`
/// with the kind in `x-amzn-ErrorType`; EC2 sends XML `<Code>`/`<Message>`.
fn aws_error(kind: Option<String>, text: &str) -> (String, String) {
    if let Ok(v) = serde_json::from_str::<Value>(text) {
        let msg = v
            .get("Message")
            .or_else(|| v.get("message"))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let msg = match v.get("Reason").and_then(Value::as_str) {
            Some(r) => format!("{msg} (reason {r})"),
            None => msg,
        };
        let kind = kind
            .or_else(|| {
                v.get("__type")
                    .and_then(Value::as_str)
                    .map(|t| t.rsplit('#').next().unwrap_or(t).to_string())
            })
            .unwrap_or_else(|| "error".into());
        return (kind, msg);
    }
    if let Some(code) = super::ec2::xml_text(text, "Code") {
        let msg = super::ec2::xml_text(text, "Message").unwrap_or_default();
        return (code, msg);
    }
    let t = text.trim();
    let snippet: String = t.chars().take(300).collect();
    (
        kind.unwrap_or_else(|| "error".into()),
        if snippet.is_empty() {
            "(empty body)".into()
        } else {
            snippet
        },
    )
}

/// Exponential backoff with full jitter, capped.
fn backoff(r: Retry, attempt: u32) -> Duration {
    let exp = r
        .base
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
        .min(r.max);
    // Jitter from the clock's low bits: spreads retries of many threads without a RNG crate.
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let frac = f64::from(nanos % 1000) / 1000.0;
    exp.mul_f64(0.5 + frac / 2.0)
}

/// A snapshot id as a path segment (ids are `snap-[0-9a-f]+`; anything else is escaped).
fn path_seg(s: &str) -> String {
    query_enc(s)
}

/// Percent-encode everything but RFC 3986 unreserved characters (SigV4's rule).
pub(crate) fn query_enc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            o.push(b as char);
        } else {
            o.push_str(&format!("%{b:02X}"));
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An endpoint that takes the connection and answers nothing: the call fails after two
    /// silences, saying so, not after every attempt's timeout (a quarter of an hour).
    #[test]
    fn a_silent_endpoint_fails_after_two_silences() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let held = std::thread::spawn(move || {
            let mut kept = Vec::new();
            for c in l.incoming().take(4) {
                kept.push(c);
            }
            std::thread::sleep(Duration::from_secs(10));
        });
        let base = format!("http://{addr}");
        let c = EbsClient::new(AwsConfig {
            credentials: super::super::config::Credentials {
                access_key_id: "AKIDEXAMPLE".into(),
                secret_access_key: "secret".into(),
                session_token: None,
            },
            region: "eu-west-1".into(),
            ebs_endpoint: base.clone(),
            ec2_endpoint: base,
        })
        .with_timeout(Duration::from_secs(1))
        .with_retry(Retry {
            attempts: 8,
            base: Duration::from_millis(10),
            max: Duration::from_millis(20),
        });
        let started = std::time::Instant::now();
        let e = c.list_blocks("snap-1").unwrap_err().to_string();
        assert!(
            started.elapsed() < Duration::from_secs(6),
            "{:?}",
            started.elapsed()
        );
        assert!(e.contains("answers nothing within 1 s"), "{e}");
        drop(held);
    }

    #[test]
    fn aws_errors_name_kind_message_and_reason() {
        assert_eq!(
            aws_error(
                Some("ValidationException".into()),
                r#"{"Message":"bad checksum","Reason":"INVALID_CHECKSUM"}"#
            ),
            (
                "ValidationException".into(),
                "bad checksum (reason INVALID_CHECKSUM)".into()
            )
        );
        assert_eq!(
            aws_error(
                None,
                "<Response><Errors><Error><Code>InvalidSnapshot.NotFound</Code><Message>no such</Message></Error></Errors></Response>"
            ),
            ("InvalidSnapshot.NotFound".into(), "no such".into())
        );
        assert_eq!(aws_error(None, ""), ("error".into(), "(empty body)".into()));
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let r = Retry {
            attempts: 10,
            base: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        assert!(backoff(r, 1) <= Duration::from_millis(100));
        assert!(backoff(r, 4) >= Duration::from_millis(400));
        assert!(backoff(r, 30) <= Duration::from_secs(1));
    }

    #[test]
    fn query_encoding_keeps_only_unreserved() {
        assert_eq!(query_enc("snap-0a1"), "snap-0a1");
        assert_eq!(query_enc("a b/c+=&"), "a%20b%2Fc%2B%3D%26");
    }
}
