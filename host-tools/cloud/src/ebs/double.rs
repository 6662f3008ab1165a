//! A strict offline stand-in for the EBS direct APIs (and the two EC2 calls we use), on
//! 127.0.0.1, for tests. Every request first goes through the checker, which rejects what AWS
//! would reject, with AWS's status and error type:
//!
//! - SigV4: missing/malformed `Authorization`, unknown key, wrong region/service scope, clock skew
//!   over 15 minutes, unsigned `x-amz-*` headers, a signature that differs from the one recomputed
//!   with `aws-sigv4` (403 `InvalidSignatureException` / `UnrecognizedClientException`);
//!   `UNSIGNED-PAYLOAD` anywhere but PutSnapshotBlock.
//! - StartSnapshot: content type `application/json`, unknown fields, `VolumeSize` 1..=65536,
//!   `Timeout` 10..=4320, a reused `ClientToken` with other parameters.
//! - PutSnapshotBlock: content type `application/octet-stream`, body and `x-amz-Data-Length` exactly
//!   524288, `x-amz-Checksum-Algorithm: SHA256`, `x-amz-Checksum` = base64 SHA-256 of the body,
//!   block index inside the volume, `x-amz-Progress` 0..=100, snapshot still `pending`.
//! - CompleteSnapshot: `x-amz-ChangedBlocksCount` = the blocks written, `LINEAR` aggregation,
//!   aggregated checksum over the stored blocks. (Stricter than AWS, which takes the checksum as
//!   optional and checks it later: here it is required, since mgear always sends it.)
//! - ListSnapshotBlocks / GetSnapshotBlock: completed snapshots only, valid block tokens.
//! - RegisterImage: completed snapshot, root device mapped, `hvm`, a known boot mode.
//!
//! What it accepts it keeps: tests read the blocks back ([`Double::snapshot`]) and the log of
//! every request and rejection ([`Double::rejections`]). `throttle_every` answers every N-th
//! PutSnapshotBlock with `RequestThrottledException`, to exercise the client's retries.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde_json::{json, Value};

use super::config::Credentials;
use super::sign::{verify, Received};
use super::{aggregate_checksum, b64, block_digest, BLOCK_SIZE, MAX_VOLUME_GIB};

/// How the double behaves.
#[derive(Debug, Clone)]
pub struct DoubleConfig {
    /// The one key pair (and session token) it accepts.
    pub credentials: Credentials,
    /// Its region.
    pub region: String,
    /// Answer every N-th PutSnapshotBlock with a throttling error (0 = never).
    pub throttle_every: u64,
}

impl Default for DoubleConfig {
    fn default() -> Self {
        DoubleConfig {
            credentials: Credentials {
                access_key_id: "AKIDMGEARDOUBLE".into(),
                secret_access_key: "mgear/double/secret+key".into(),
                session_token: None,
            },
            region: "eu-west-1".into(),
            throttle_every: 0,
        }
    }
}

/// A snapshot as the double holds it.
#[derive(Debug, Clone)]
pub struct SnapshotView {
    /// `snap-...`.
    pub id: String,
    /// `pending`, `completed`.
    pub status: String,
    /// GiB.
    pub volume_gib: u64,
    /// Description given to StartSnapshot.
    pub description: String,
    /// Tags given to StartSnapshot.
    pub tags: Vec<(String, String)>,
    /// Written blocks by index.
    pub blocks: BTreeMap<u64, Vec<u8>>,
}

/// One request the checker refused.
#[derive(Debug, Clone)]
pub struct Rejection {
    /// Operation (or `?`).
    pub op: String,
    /// HTTP status answered.
    pub status: u16,
    /// Error type and message.
    pub message: String,
}

#[derive(Default)]
struct Snap {
    id: String,
    status: String,
    volume_gib: u64,
    description: String,
    tags: Vec<(String, String)>,
    token: String,
    timeout: u64,
    blocks: BTreeMap<u64, (Vec<u8>, [u8; 32])>,
}

#[derive(Default)]
struct World {
    snaps: BTreeMap<String, Snap>,
    tokens: HashMap<String, String>,
    images: BTreeMap<String, (String, String)>,
    rejections: Vec<Rejection>,
    ops: BTreeMap<String, u64>,
    puts_seen: u64,
    throttled: u64,
    next: u64,
}

/// The running double. Stops accepting when dropped (the listener thread ends with the process).
pub struct Double {
    addr: std::net::SocketAddr,
    cfg: DoubleConfig,
    world: Arc<Mutex<World>>,
}

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn json(status: u16, v: Value) -> Reply {
        Reply {
            status,
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: v.to_string().into_bytes(),
        }
    }

    fn xml(text: String) -> Reply {
        Reply {
            status: 200,
            headers: vec![("Content-Type".into(), "text/xml;charset=UTF-8".into())],
            body: text.into_bytes(),
        }
    }
}

/// A refusal: status, AWS error type, message (and EBS `Reason`).
struct Refuse {
    status: u16,
    kind: &'static str,
    message: String,
    reason: Option<&'static str>,
}

fn refuse(status: u16, kind: &'static str, message: impl Into<String>) -> Refuse {
    Refuse {
        status,
        kind,
        message: message.into(),
        reason: None,
    }
}

fn invalid(reason: &'static str, message: impl Into<String>) -> Refuse {
    Refuse {
        status: 400,
        kind: "ValidationException",
        message: message.into(),
        reason: Some(reason),
    }
}

type Checked<T> = std::result::Result<T, Refuse>;

impl Double {
    /// Start on 127.0.0.1 (a free port).
    pub fn start(cfg: DoubleConfig) -> Double {
        Self::start_on(cfg, 0).expect("bind 127.0.0.1")
    }

    /// [`start`](Self::start) on 127.0.0.1:`port` (0: a port the system picks).
    pub fn start_on(cfg: DoubleConfig, port: u16) -> std::io::Result<Double> {
        let listener = TcpListener::bind(("127.0.0.1", port))?;
        let addr = listener.local_addr()?;
        let world = Arc::new(Mutex::new(World::default()));
        let (w, c) = (world.clone(), cfg.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let (w, c) = (w.clone(), c.clone());
                std::thread::spawn(move || serve(stream, &c, &w));
            }
        });
        Ok(Double { addr, cfg, world })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The environment a client needs to reach this double (`AWS_ENDPOINT_URL`, keys, region).
    pub fn env(&self) -> Vec<(String, String)> {
        let mut v = vec![
            ("AWS_ENDPOINT_URL".to_string(), self.url()),
            (
                "AWS_ACCESS_KEY_ID".to_string(),
                self.cfg.credentials.access_key_id.clone(),
            ),
            (
                "AWS_SECRET_ACCESS_KEY".to_string(),
                self.cfg.credentials.secret_access_key.clone(),
            ),
            ("AWS_REGION".to_string(), self.cfg.region.clone()),
        ];
        if let Some(t) = &self.cfg.credentials.session_token {
            v.push(("AWS_SESSION_TOKEN".into(), t.clone()));
        }
        v
    }

    /// A client configuration pointing at this double.
    pub fn aws_config(&self) -> super::AwsConfig {
        super::AwsConfig {
            credentials: self.cfg.credentials.clone(),
            region: self.cfg.region.clone(),
            ebs_endpoint: self.url(),
            ec2_endpoint: self.url(),
        }
    }

    /// Every snapshot id, in creation order.
    pub fn snapshot_ids(&self) -> Vec<String> {
        let w = self.world.lock().unwrap();
        let mut v: Vec<_> = w.snaps.keys().cloned().collect();
        v.sort_by_key(|id| u64::from_str_radix(id.trim_start_matches("snap-"), 16).unwrap_or(0));
        v
    }

    /// A snapshot and its blocks.
    pub fn snapshot(&self, id: &str) -> Option<SnapshotView> {
        let w = self.world.lock().unwrap();
        w.snaps.get(id).map(|s| SnapshotView {
            id: s.id.clone(),
            status: s.status.clone(),
            volume_gib: s.volume_gib,
            description: s.description.clone(),
            tags: s.tags.clone(),
            blocks: s.blocks.iter().map(|(k, (d, _))| (*k, d.clone())).collect(),
        })
    }

    /// Deletes a snapshot, as `ec2 delete-snapshot` does, or as AWS cancels a pending one that
    /// nothing wrote to for its timeout: later calls naming it are answered "not found".
    pub fn delete_snapshot(&self, id: &str) -> bool {
        self.world.lock().unwrap().snaps.remove(id).is_some()
    }

    /// Images registered: AMI id -> (name, snapshot id).
    pub fn images(&self) -> BTreeMap<String, (String, String)> {
        self.world.lock().unwrap().images.clone()
    }

    /// Every request the checker refused (throttling the double chose to answer is not one).
    pub fn rejections(&self) -> Vec<Rejection> {
        self.world.lock().unwrap().rejections.clone()
    }

    /// Accepted requests per operation.
    pub fn accepted(&self) -> BTreeMap<String, u64> {
        self.world.lock().unwrap().ops.clone()
    }

    /// How many puts were answered with a throttling error.
    pub fn throttled(&self) -> u64 {
        self.world.lock().unwrap().throttled
    }
}

fn serve(stream: TcpStream, cfg: &DoubleConfig, world: &Mutex<World>) {
    let Ok(write_half) = stream.try_clone() else {
        return;
    };
    let mut out = write_half;
    let mut r = BufReader::new(stream);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
            return;
        };
        let (method, target) = (method.to_string(), target.to_string());
        let mut headers: Vec<(String, String)> = Vec::new();
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            if h.trim().is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.push((k.trim().to_string(), v.trim().to_string()));
            }
        }
        let hdr = |n: &str| {
            headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(n))
                .map(|(_, v)| v.clone())
        };
        let close = hdr("connection").is_some_and(|c| c.eq_ignore_ascii_case("close"));
        let reply = if hdr("transfer-encoding").is_some() {
            // Never sent by our client; without a length we cannot frame the body.
            let _ = write_reply(
                &mut out,
                &error_reply(&refuse(
                    411,
                    "LengthRequired",
                    "chunked bodies are not accepted",
                )),
                true,
            );
            return;
        } else {
            let len: usize = hdr("content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            if len > BLOCK_SIZE + (1 << 20) {
                let _ = write_reply(
                    &mut out,
                    &error_reply(&refuse(413, "RequestEntityTooLarge", "body too large")),
                    true,
                );
                return;
            }
            let mut body = vec![0u8; len];
            if r.read_exact(&mut body).is_err() {
                return;
            }
            let req = Received {
                method: &method,
                target: &target,
                headers: &headers,
                body: &body,
            };
            handle(&req, cfg, world)
        };
        if write_reply(&mut out, &reply, close).is_err() || close {
            return;
        }
    }
}

fn write_reply(out: &mut TcpStream, r: &Reply, close: bool) -> std::io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {} X\r\nContent-Length: {}\r\nx-amzn-RequestId: mgear-double\r\n",
        r.status,
        r.body.len()
    );
    for (k, v) in &r.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if close {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    out.write_all(head.as_bytes())?;
    out.write_all(&r.body)?;
    out.flush()
}

fn error_reply(e: &Refuse) -> Reply {
    let mut body = json!({ "Message": e.message });
    if let Some(r) = e.reason {
        body["Reason"] = json!(r);
    }
    let mut rep = Reply::json(e.status, body);
    rep.headers
        .push(("x-amzn-ErrorType".into(), format!("{}:", e.kind)));
    rep
}

fn ec2_error(e: &Refuse) -> Reply {
    Reply {
        status: e.status,
        headers: vec![("Content-Type".into(), "text/xml;charset=UTF-8".into())],
        body: format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>{}</Code><Message>{}</Message></Error></Errors><RequestID>mgear-double</RequestID></Response>",
            e.kind,
            xml_escape(&e.message)
        )
        .into_bytes(),
    }
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Which operation a request is, from its method and path.
fn operation(method: &str, path: &str) -> &'static str {
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (method, segs.as_slice()) {
        ("POST", ["snapshots"]) => "StartSnapshot",
        ("PUT", ["snapshots", _, "blocks", _]) => "PutSnapshotBlock",
        ("POST", ["snapshots", "completion", _]) => "CompleteSnapshot",
        ("GET", ["snapshots", _, "blocks"]) => "ListSnapshotBlocks",
        ("GET", ["snapshots", _, "blocks", _]) => "GetSnapshotBlock",
        ("POST", [""]) => "EC2",
        _ => "?",
    }
}

fn handle(req: &Received<'_>, cfg: &DoubleConfig, world: &Mutex<World>) -> Reply {
    let (path, query) = req.target.split_once('?').unwrap_or((req.target, ""));
    let op = operation(req.method, path);
    let is_ec2 = op == "EC2";
    let service = if is_ec2 { "ec2" } else { "ebs" };
    let result = (|| -> Checked<(String, Reply)> {
        if op == "?" {
            return Err(refuse(
                404,
                "UnknownOperationException",
                format!("no operation {} {path}", req.method),
            ));
        }
        verify(
            req,
            &cfg.credentials,
            &cfg.region,
            service,
            SystemTime::now(),
        )
        .map_err(|m| {
            let kind = if m.contains("security token") {
                "UnrecognizedClientException"
            } else {
                "InvalidSignatureException"
            };
            refuse(403, kind, m)
        })?;
        if req.header("x-amz-content-sha256") == Some("UNSIGNED-PAYLOAD")
            && op != "PutSnapshotBlock"
        {
            return Err(refuse(
                400,
                "InvalidSignatureException",
                format!("{op} requires a signed payload"),
            ));
        }
        let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let q = parse_form(query);
        let mut w = world.lock().unwrap();
        let reply = match op {
            "StartSnapshot" => start(req, &mut w)?,
            "PutSnapshotBlock" => {
                w.puts_seen += 1;
                if cfg.throttle_every > 0 && w.puts_seen.is_multiple_of(cfg.throttle_every) {
                    w.throttled += 1;
                    // A choice of the double, not a fault of the request.
                    return Ok((
                        String::new(),
                        error_reply(&refuse(
                            400,
                            "RequestThrottledException",
                            "Rate exceeded (the double throttles on purpose)",
                        )),
                    ));
                }
                drop(w);
                // Hash outside the lock: puts run in parallel.
                let digest = block_digest(req.body);
                let mut w = world.lock().unwrap();
                put(req, segs[1], segs[3], digest, &mut w)?
            }
            "CompleteSnapshot" => complete(req, segs[2], &mut w)?,
            "ListSnapshotBlocks" => list(segs[1], &q, &w)?,
            "GetSnapshotBlock" => get(segs[1], segs[3], &q, &w)?,
            _ => ec2(req, &mut w).map_err(|e| Refuse {
                reason: Some("EC2"),
                ..e
            })?,
        };
        Ok((op.to_string(), reply))
    })();
    let mut w = world.lock().unwrap();
    match result {
        Ok((op, reply)) => {
            if !op.is_empty() {
                *w.ops.entry(op).or_default() += 1;
            }
            reply
        }
        Err(e) => {
            w.rejections.push(Rejection {
                op: op.into(),
                status: e.status,
                message: format!("{}: {}", e.kind, e.message),
            });
            if is_ec2 {
                ec2_error(&Refuse { reason: None, ..e })
            } else {
                error_reply(&e)
            }
        }
    }
}

fn need_type(req: &Received<'_>, want: &str) -> Checked<()> {
    let got = req.header("content-type").unwrap_or("");
    if got.split(';').next().unwrap_or("").trim() != want {
        return Err(invalid(
            "INVALID_CONTENT_ENCODING",
            format!("Content-Type must be {want}, not {got:?}"),
        ));
    }
    Ok(())
}

fn start(req: &Received<'_>, w: &mut World) -> Checked<Reply> {
    need_type(req, "application/json")?;
    let v: Value = serde_json::from_slice(req.body).map_err(|e| {
        refuse(
            400,
            "SerializationException",
            format!("body is not JSON: {e}"),
        )
    })?;
    let obj = v
        .as_object()
        .ok_or_else(|| refuse(400, "SerializationException", "body is not an object"))?;
    const KNOWN: [&str; 8] = [
        "ClientToken",
        "Description",
        "Encrypted",
        "KmsKeyArn",
        "ParentSnapshotId",
        "Tags",
        "Timeout",
        "VolumeSize",
    ];
    if let Some(k) = obj.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return Err(refuse(
            400,
            "SerializationException",
            format!("unknown field {k}"),
        ));
    }
    let size = obj
        .get("VolumeSize")
        .and_then(Value::as_u64)
        .ok_or_else(|| {
            invalid(
                "INVALID_VOLUME_SIZE",
                "VolumeSize is required (integer GiB)",
            )
        })?;
    if !(1..=MAX_VOLUME_GIB).contains(&size) {
        return Err(invalid(
            "INVALID_VOLUME_SIZE",
            format!("VolumeSize {size} is outside 1..={MAX_VOLUME_GIB}"),
        ));
    }
    let timeout = match obj.get("Timeout") {
        None => 60,
        Some(t) => t
            .as_u64()
            .filter(|t| (10..=4320).contains(t))
            .ok_or_else(|| {
                invalid(
                    "INVALID_PARAMETER_VALUE",
                    format!("Timeout {t} is outside 10..=4320"),
                )
            })?,
    };
    let description = match obj.get("Description") {
        None => String::new(),
        Some(d) => d
            .as_str()
            .filter(|d| d.len() <= 255)
            .ok_or_else(|| {
                invalid(
                    "INVALID_PARAMETER_VALUE",
                    "Description must be a string of at most 255 characters",
                )
            })?
            .to_string(),
    };
    let mut tags = Vec::new();
    for t in obj
        .get("Tags")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        match (
            t.get("Key").and_then(Value::as_str),
            t.get("Value").and_then(Value::as_str),
        ) {
            (Some(k), Some(v)) if !k.is_empty() && k.len() <= 127 && v.len() <= 255 => {
                tags.push((k.to_string(), v.to_string()))
            }
            _ => return Err(invalid("INVALID_TAG", format!("bad tag {t}"))),
        }
    }
    let token = obj
        .get("ClientToken")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if token.len() > 255 {
        return Err(invalid(
            "INVALID_PARAMETER_VALUE",
            "ClientToken is longer than 255",
        ));
    }
    if !token.is_empty() {
        if let Some(id) = w.tokens.get(&token) {
            let s = &w.snaps[id];
            if s.volume_gib != size || s.description != description || s.tags != tags {
                return Err(refuse(
                    400,
                    "ConflictException",
                    "ClientToken was already used with other parameters",
                ));
            }
            return Ok(Reply::json(201, snap_json(s)));
        }
    }
    w.next += 1;
    let id = format!("snap-{:017x}", w.next);
    let s = Snap {
        id: id.clone(),
        status: "pending".into(),
        volume_gib: size,
        description,
        tags,
        token: token.clone(),
        timeout,
        blocks: BTreeMap::new(),
    };
    let reply = Reply::json(201, snap_json(&s));
    if !token.is_empty() {
        w.tokens.insert(token, id.clone());
    }
    w.snaps.insert(id, s);
    Ok(reply)
}

fn snap_json(s: &Snap) -> Value {
    let _ = (&s.token, s.timeout);
    json!({
        "BlockSize": BLOCK_SIZE,
        "Description": s.description,
        "OwnerId": "000000000000",
        "SnapshotId": s.id,
        "StartTime": 0,
        "Status": s.status,
        "Tags": s.tags.iter().map(|(k, v)| json!({"Key": k, "Value": v})).collect::<Vec<_>>(),
        "VolumeSize": s.volume_gib,
    })
}

fn snap<'a>(w: &'a mut World, id: &str) -> Checked<&'a mut Snap> {
    w.snaps.get_mut(id).ok_or_else(|| {
        refuse(
            404,
            "ResourceNotFoundException",
            format!("snapshot {id} does not exist"),
        )
    })
}

fn put(
    req: &Received<'_>,
    id: &str,
    index: &str,
    digest: [u8; 32],
    w: &mut World,
) -> Checked<Reply> {
    need_type(req, "application/octet-stream")?;
    let s = snap(w, id)?;
    if s.status != "pending" {
        return Err(invalid(
            "INVALID_SNAPSHOT_ID",
            format!(
                "snapshot {id} is {}: blocks can be written only while pending",
                s.status
            ),
        ));
    }
    let index: u64 = index.parse().map_err(|_| {
        invalid(
            "INVALID_BLOCK",
            format!("block index {index:?} is not a number"),
        )
    })?;
    let blocks = s.volume_gib * (1 << 30) / BLOCK_SIZE as u64;
    if index >= blocks {
        return Err(invalid(
            "INVALID_BLOCK",
            format!("block index {index} is outside the {blocks}-block volume"),
        ));
    }
    let len = req.header("x-amz-Data-Length").unwrap_or("");
    if len != BLOCK_SIZE.to_string() || req.body.len() != BLOCK_SIZE {
        return Err(invalid(
            "INVALID_PARAMETER_VALUE",
            format!(
                "DataLength must be {BLOCK_SIZE} and match the body (header {len:?}, body {} bytes)",
                req.body.len()
            ),
        ));
    }
    if req.header("x-amz-Checksum-Algorithm") != Some("SHA256") {
        return Err(invalid(
            "INVALID_PARAMETER_VALUE",
            "ChecksumAlgorithm must be SHA256",
        ));
    }
    let sum = req.header("x-amz-Checksum").unwrap_or("");
    if sum != b64(&digest) {
        return Err(invalid(
            "INVALID_CHECKSUM",
            format!("checksum {sum:?} does not match the data received"),
        ));
    }
    if let Some(p) = req.header("x-amz-Progress") {
        if !p.parse::<u8>().is_ok_and(|p| p <= 100) {
            return Err(invalid(
                "INVALID_PARAMETER_VALUE",
                format!("Progress {p:?} is not 0..=100"),
            ));
        }
    }
    s.blocks.insert(index, (req.body.to_vec(), digest));
    Ok(Reply {
        status: 201,
        headers: vec![
            ("x-amz-Checksum".into(), sum.to_string()),
            ("x-amz-Checksum-Algorithm".into(), "SHA256".into()),
        ],
        body: Vec::new(),
    })
}

fn complete(req: &Received<'_>, id: &str, w: &mut World) -> Checked<Reply> {
    let s = snap(w, id)?;
    if s.status != "pending" {
        return Err(invalid(
            "INVALID_SNAPSHOT_ID",
            format!("snapshot {id} is already {}", s.status),
        ));
    }
    let count = req.header("x-amz-ChangedBlocksCount").unwrap_or("");
    if count.parse::<u64>().ok() != Some(s.blocks.len() as u64) {
        return Err(invalid(
            "INVALID_PARAMETER_VALUE",
            format!(
                "ChangedBlocksCount {count:?} but {} blocks were written",
                s.blocks.len()
            ),
        ));
    }
    if req.header("x-amz-Checksum-Algorithm") != Some("SHA256")
        || req.header("x-amz-Checksum-Aggregation-Method") != Some("LINEAR")
    {
        return Err(invalid(
            "INVALID_PARAMETER_VALUE",
            "the aggregated checksum must be SHA256 with aggregation method LINEAR",
        ));
    }
    let want = aggregate_checksum(s.blocks.values().map(|(_, d)| d));
    let got = req.header("x-amz-Checksum").unwrap_or("");
    if got != want {
        return Err(invalid(
            "INVALID_CHECKSUM",
            format!("aggregated checksum {got:?} does not match the blocks written"),
        ));
    }
    s.status = "completed".into();
    Ok(Reply::json(202, json!({"Status": "completed"})))
}

fn completed<'a>(w: &'a World, id: &str) -> Checked<&'a Snap> {
    let s = w.snaps.get(id).ok_or_else(|| {
        refuse(
            404,
            "ResourceNotFoundException",
            format!("snapshot {id} does not exist"),
        )
    })?;
    if s.status != "completed" {
        return Err(invalid(
            "INVALID_SNAPSHOT_ID",
            format!(
                "snapshot {id} is {}: only completed snapshots can be read",
                s.status
            ),
        ));
    }
    Ok(s)
}

fn list(id: &str, q: &HashMap<String, String>, w: &World) -> Checked<Reply> {
    let s = completed(w, id)?;
    let max: usize = match q.get("maxResults") {
        None => 10000,
        Some(m) => m
            .parse()
            .ok()
            .filter(|m| (100..=10000).contains(m))
            .ok_or_else(|| invalid("INVALID_PARAMETER_VALUE", "maxResults must be 100..=10000"))?,
    };
    let from: u64 = match q.get("pageToken") {
        None => q
            .get("startingBlockIndex")
            .and_then(|s| s.parse().ok())
            .unwrap_or(0),
        Some(t) => t
            .strip_prefix("page-")
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| invalid("INVALID_PAGE_TOKEN", "bad pageToken"))?,
    };
    let page: Vec<u64> = s
        .blocks
        .range(from..)
        .map(|(k, _)| *k)
        .take(max + 1)
        .collect();
    let mut out = json!({
        "BlockSize": BLOCK_SIZE,
        "VolumeSize": s.volume_gib,
        "Blocks": page.iter().take(max).map(|i| json!({"BlockIndex": i, "BlockToken": format!("tok-{id}-{i}")})).collect::<Vec<_>>(),
    });
    if page.len() > max {
        out["NextToken"] = json!(format!("page-{}", page[max]));
    }
    Ok(Reply::json(200, out))
}

fn get(id: &str, index: &str, q: &HashMap<String, String>, w: &World) -> Checked<Reply> {
    let s = completed(w, id)?;
    let i: u64 = index
        .parse()
        .map_err(|_| invalid("INVALID_BLOCK", "block index is not a number"))?;
    if q.get("blockToken").map(String::as_str) != Some(format!("tok-{id}-{i}").as_str()) {
        return Err(invalid(
            "INVALID_BLOCK_TOKEN",
            "blockToken is missing or not for this block",
        ));
    }
    let (data, digest) = s
        .blocks
        .get(&i)
        .ok_or_else(|| invalid("INVALID_BLOCK", format!("block {i} was not written")))?;
    Ok(Reply {
        status: 200,
        headers: vec![
            ("Content-Type".into(), "application/octet-stream".into()),
            ("x-amz-Data-Length".into(), BLOCK_SIZE.to_string()),
            ("x-amz-Checksum".into(), b64(digest)),
            ("x-amz-Checksum-Algorithm".into(), "SHA256".into()),
        ],
        body: data.clone(),
    })
}

fn ec2(req: &Received<'_>, w: &mut World) -> Checked<Reply> {
    need_type(req, "application/x-www-form-urlencoded")?;
    let f = parse_form(&String::from_utf8_lossy(req.body));
    let p = |k: &str| f.get(k).map(String::as_str).unwrap_or("");
    if p("Version") != super::ec2::EC2_VERSION {
        return Err(refuse(400, "InvalidParameterValue", "unsupported Version"));
    }
    match p("Action") {
        "DescribeSnapshots" => {
            let id = p("SnapshotId.1");
            let s = w.snaps.get(id).ok_or_else(|| {
                refuse(
                    400,
                    "InvalidSnapshot.NotFound",
                    format!("The snapshot '{id}' does not exist."),
                )
            })?;
            // As AWS answers: the description XML-escaped (it is the caller's text).
            let description = s
                .description
                .replace('&', "&amp;")
                .replace('<', "&lt;")
                .replace('>', "&gt;");
            Ok(Reply::xml(format!(
                "<DescribeSnapshotsResponse><requestId>mgear-double</requestId><snapshotSet><item><snapshotId>{}</snapshotId><status>{}</status><volumeSize>{}</volumeSize><description>{description}</description></item></snapshotSet></DescribeSnapshotsResponse>",
                s.id, s.status, s.volume_gib
            )))
        }
        "RegisterImage" => {
            let id = p("BlockDeviceMapping.1.Ebs.SnapshotId");
            let s = w.snaps.get(id).ok_or_else(|| {
                refuse(
                    400,
                    "InvalidSnapshot.NotFound",
                    format!("The snapshot '{id}' does not exist."),
                )
            })?;
            if s.status != "completed" {
                return Err(refuse(
                    400,
                    "IncorrectState",
                    format!("Snapshot '{id}' is not 'completed'"),
                ));
            }
            let name = p("Name");
            if name.len() < 3 || name.len() > 128 {
                return Err(refuse(
                    400,
                    "InvalidAMIName.Malformed",
                    "Name must be 3..=128 characters",
                ));
            }
            if w.images.values().any(|(n, _)| n == name) {
                return Err(refuse(
                    400,
                    "InvalidAMIName.Duplicate",
                    format!("AMI name {name} is already in use"),
                ));
            }
            if p("RootDeviceName").is_empty()
                || p("RootDeviceName") != p("BlockDeviceMapping.1.DeviceName")
            {
                return Err(refuse(
                    400,
                    "InvalidBlockDeviceMapping",
                    "the root device must be mapped",
                ));
            }
            if p("VirtualizationType") != "hvm" {
                return Err(refuse(
                    400,
                    "InvalidParameterValue",
                    "VirtualizationType must be hvm",
                ));
            }
            if !["legacy-bios", "uefi", "uefi-preferred"].contains(&p("BootMode")) {
                return Err(refuse(400, "InvalidParameterValue", "unknown BootMode"));
            }
            if !["x86_64", "arm64", "i386"].contains(&p("Architecture")) {
                return Err(refuse(400, "InvalidParameterValue", "unknown Architecture"));
            }
            let ami = format!("ami-{:017x}", w.images.len() + 1);
            w.images
                .insert(ami.clone(), (name.to_string(), id.to_string()));
            Ok(Reply::xml(format!(
                "<RegisterImageResponse><requestId>mgear-double</requestId><imageId>{ami}</imageId></RegisterImageResponse>"
            )))
        }
        a => Err(refuse(
            400,
            "InvalidAction",
            format!("action {a:?} is not supported by the double"),
        )),
    }
}

/// `a=b&c=d` with percent-decoding (`+` is a space, as in forms).
fn parse_form(s: &str) -> HashMap<String, String> {
    fn dec(s: &str) -> String {
        let b = s.as_bytes();
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            match b[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < b.len() => {
                    let hex = |c: u8| (c as char).to_digit(16);
                    match (hex(b[i + 1]), hex(b[i + 2])) {
                        (Some(h), Some(l)) => {
                            out.push((h * 16 + l) as u8);
                            i += 2;
                        }
                        _ => out.push(b'%'),
                    }
                }
                c => out.push(c),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    s.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (dec(k), dec(v))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::client::{EbsClient, NewSnapshot, Retry};
    use super::super::sign::{sign_headers, Outgoing, Payload};
    use super::*;
    use crate::CloudError;
    use std::time::Duration;

    fn fast(c: EbsClient) -> EbsClient {
        c.with_retry(Retry {
            attempts: 4,
            base: Duration::from_millis(1),
            max: Duration::from_millis(5),
        })
    }

    fn new_snap(token: &str) -> NewSnapshot {
        NewSnapshot {
            volume_gib: 1,
            description: "test".into(),
            tags: vec![("mgear:name".into(), "web01".into())],
            client_token: token.into(),
            timeout_minutes: 60,
        }
    }

    fn status(e: CloudError) -> (u16, String) {
        match e {
            CloudError::Http {
                status, message, ..
            } => (status, message),
            other => panic!("not an HTTP error: {other}"),
        }
    }

    /// Send raw, hand-shaped requests, signed correctly unless the test breaks them.
    fn raw(
        d: &Double,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        unsigned: bool,
    ) -> (u16, String) {
        let cfg = d.aws_config();
        let url = format!("{}{path}", d.url());
        let payload = if unsigned {
            Payload::Unsigned
        } else {
            Payload::Signed(body)
        };
        let sig = sign_headers(
            &cfg.credentials,
            &cfg.region,
            "ebs",
            Outgoing {
                method,
                url: &url,
                headers,
                payload,
            },
            SystemTime::now(),
        )
        .unwrap();
        let mut req = ureq::request(method, &url);
        for (k, v) in headers {
            req = req.set(k, v);
        }
        for (k, v) in &sig {
            req = req.set(k, v);
        }
        match req.send_bytes(body) {
            Ok(r) => (r.status(), r.into_string().unwrap_or_default()),
            Err(ureq::Error::Status(s, r)) => (s, r.into_string().unwrap_or_default()),
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn a_well_formed_snapshot_goes_through_and_reads_back() {
        let d = Double::start(DoubleConfig {
            throttle_every: 3,
            ..DoubleConfig::default()
        });
        let c = fast(EbsClient::new(d.aws_config()));
        let s = c.start_snapshot(&new_snap("tok-1")).unwrap();
        assert_eq!(s.status, "pending");
        // The same ClientToken gives the same snapshot back.
        assert_eq!(c.start_snapshot(&new_snap("tok-1")).unwrap().id, s.id);
        let a = vec![7u8; BLOCK_SIZE];
        let b = vec![9u8; BLOCK_SIZE];
        let (da, db) = (block_digest(&a), block_digest(&b));
        for _ in 0..2 {
            // Re-putting a block is idempotent.
            c.put_block(&s.id, 5, &a, &da, Some(10)).unwrap();
        }
        c.put_block(&s.id, 2047, &b, &db, None).unwrap();
        assert!(d.throttled() >= 1, "the throttled put was retried");
        assert_eq!(
            c.complete(&s.id, 2, &aggregate_checksum([&da, &db]))
                .unwrap(),
            "completed"
        );
        let blocks = c.list_blocks(&s.id).unwrap();
        assert_eq!(
            blocks.iter().map(|b| b.index).collect::<Vec<_>>(),
            [5, 2047]
        );
        assert_eq!(c.get_block(&s.id, &blocks[1]).unwrap(), b);
        let view = d.snapshot(&s.id).unwrap();
        assert_eq!(view.blocks.len(), 2);
        assert_eq!(view.tags, [("mgear:name".to_string(), "web01".to_string())]);
        assert!(d.rejections().is_empty(), "{:?}", d.rejections());
    }

    #[test]
    fn the_checker_rejects_every_bad_shape() {
        let d = Double::start(DoubleConfig::default());
        let c = fast(EbsClient::new(d.aws_config()));
        let s = c.start_snapshot(&new_snap("t")).unwrap();
        let data = vec![1u8; BLOCK_SIZE];
        let good = b64(&block_digest(&data));
        let path = format!("/snapshots/{}/blocks/0", s.id);
        let put = |path: &str, headers: &[(&str, &str)], body: &[u8]| {
            raw(&d, "PUT", path, headers, body, true)
        };
        let h = |ct: &'static str, len: &'static str, sum: &str, alg: &'static str| {
            vec![
                ("content-type", ct),
                ("x-amz-Data-Length", len),
                ("x-amz-Checksum", sum),
                ("x-amz-Checksum-Algorithm", alg),
            ]
            .into_iter()
            .map(|(k, v)| (k, v.to_string()))
            .collect::<Vec<_>>()
        };
        let refs = |v: &Vec<(&'static str, String)>| -> Vec<(&'static str, String)> { v.clone() };
        let call = |v: Vec<(&'static str, String)>, path: &str, body: &[u8]| {
            let hs: Vec<(&str, &str)> = v.iter().map(|(k, v)| (*k, v.as_str())).collect();
            put(path, &hs, body)
        };
        let ok = h("application/octet-stream", "524288", &good, "SHA256");
        // Block size, content type, checksum, algorithm, index out of range.
        let small = vec![1u8; 4096];
        assert_eq!(
            call(
                h(
                    "application/octet-stream",
                    "4096",
                    &b64(&block_digest(&small)),
                    "SHA256"
                ),
                &path,
                &small
            )
            .0,
            400
        );
        assert_eq!(
            call(
                h("application/json", "524288", &good, "SHA256"),
                &path,
                &data
            )
            .0,
            400
        );
        let (st, msg) = call(
            h(
                "application/octet-stream",
                "524288",
                &b64(&[0u8; 32]),
                "SHA256",
            ),
            &path,
            &data,
        );
        assert_eq!(st, 400);
        assert!(msg.contains("INVALID_CHECKSUM"), "{msg}");
        assert_eq!(
            call(
                h("application/octet-stream", "524288", &good, "MD5"),
                &path,
                &data
            )
            .0,
            400
        );
        let far = format!("/snapshots/{}/blocks/2048", s.id);
        let (st, msg) = call(refs(&ok), &far, &data);
        assert_eq!(st, 400);
        assert!(msg.contains("INVALID_BLOCK"), "{msg}");
        // Unknown snapshot.
        assert_eq!(
            call(refs(&ok), "/snapshots/snap-404/blocks/0", &data).0,
            404
        );
        // A bad signature: signed for another secret.
        let other = EbsClient::new(super::super::AwsConfig {
            credentials: Credentials {
                secret_access_key: "wrong".into(),
                ..d.aws_config().credentials
            },
            ..d.aws_config()
        })
        .with_retry(Retry {
            attempts: 1,
            ..Retry::default()
        });
        let (st, msg) = status(
            other
                .put_block(&s.id, 0, &data, &block_digest(&data), None)
                .unwrap_err(),
        );
        assert_eq!(st, 403);
        assert!(msg.contains("InvalidSignatureException"), "{msg}");
        // No signature at all.
        let st = match ureq::put(&format!("{}{path}", d.url())).send_bytes(&data) {
            Err(ureq::Error::Status(s, _)) => s,
            other => panic!("{other:?}"),
        };
        assert_eq!(st, 403);
        // An unsigned payload where the body must be signed.
        assert_eq!(
            raw(
                &d,
                "POST",
                "/snapshots",
                &[("content-type", "application/json")],
                br#"{"VolumeSize":1}"#,
                true
            )
            .0,
            400
        );
        // StartSnapshot shapes.
        for body in [
            r#"{"VolumeSize":0}"#,
            r#"{"VolumeSize":65537}"#,
            r#"{"VolumeSize":1,"Timeout":5}"#,
            r#"{"VolumeSize":1,"Bogus":1}"#,
            r#"{"Description":"no size"}"#,
        ] {
            let (st, msg) = raw(
                &d,
                "POST",
                "/snapshots",
                &[("content-type", "application/json")],
                body.as_bytes(),
                false,
            );
            assert_eq!(st, 400, "{body}: {msg}");
        }
        assert_eq!(
            raw(
                &d,
                "POST",
                "/snapshots",
                &[("content-type", "text/plain")],
                br#"{"VolumeSize":1}"#,
                false
            )
            .0,
            400
        );
        let mut changed = new_snap("t");
        changed.volume_gib = 2;
        assert_eq!(status(c.start_snapshot(&changed).unwrap_err()).0, 400);

        // One good block, then a wrong count, a wrong aggregate, a missing method.
        c.put_block(&s.id, 0, &data, &block_digest(&data), Some(50))
            .unwrap();
        let agg = aggregate_checksum([&block_digest(&data)]);
        let (st, msg) = status(c.complete(&s.id, 2, &agg).unwrap_err());
        assert_eq!(st, 400);
        assert!(msg.contains("ChangedBlocksCount"), "{msg}");
        let (st, msg) = status(c.complete(&s.id, 1, &b64(&[0u8; 32])).unwrap_err());
        assert_eq!(st, 400);
        assert!(msg.contains("INVALID_CHECKSUM"), "{msg}");
        let cpath = format!("/snapshots/completion/{}", s.id);
        let (st, _) = raw(
            &d,
            "POST",
            &cpath,
            &[
                ("x-amz-ChangedBlocksCount", "1"),
                ("x-amz-Checksum", &agg),
                ("x-amz-Checksum-Algorithm", "SHA256"),
            ],
            b"",
            false,
        );
        assert_eq!(st, 400);
        // Reading a pending snapshot.
        assert_eq!(status(c.list_blocks(&s.id).unwrap_err()).0, 400);
        // Completed: now a put is refused, and a second complete too.
        c.complete(&s.id, 1, &agg).unwrap();
        let (st, msg) = status(
            c.put_block(&s.id, 1, &data, &block_digest(&data), None)
                .unwrap_err(),
        );
        assert_eq!(st, 400);
        assert!(msg.contains("pending"), "{msg}");
        assert_eq!(status(c.complete(&s.id, 1, &agg).unwrap_err()).0, 400);
        // A forged block token.
        let forged = super::super::BlockRef {
            index: 0,
            token: "tok-forged".into(),
        };
        assert_eq!(status(c.get_block(&s.id, &forged).unwrap_err()).0, 400);

        // Every refusal was logged; the well-formed calls were not.
        let rej = d.rejections();
        assert!(rej.len() >= 20, "{rej:#?}");
        assert_eq!(d.snapshot(&s.id).unwrap().blocks.len(), 1);
    }

    #[test]
    fn register_image_needs_a_completed_snapshot() {
        let d = Double::start(DoubleConfig::default());
        let c = fast(EbsClient::new(d.aws_config()));
        let s = c.start_snapshot(&new_snap("img")).unwrap();
        let img = super::super::ec2::NewImage {
            name: "web01-gen1".into(),
            description: "mgear".into(),
            architecture: "x86_64".into(),
            root_device: "/dev/xvda".into(),
            boot_mode: "legacy-bios".into(),
            ena_support: true,
            volume_type: "gp3".into(),
        };
        let (st, msg) = status(c.register_image(&s.id, &img).unwrap_err());
        assert_eq!(st, 400);
        assert!(msg.contains("IncorrectState"), "{msg}");
        assert_eq!(c.snapshot_status(&s.id).unwrap(), "pending");
        c.complete(&s.id, 0, &aggregate_checksum(std::iter::empty()))
            .unwrap();
        c.wait_completed(&s.id, Duration::from_secs(5)).unwrap();
        let ami = c.register_image(&s.id, &img).unwrap();
        assert_eq!(d.images()[&ami], ("web01-gen1".to_string(), s.id.clone()));
        // The name is now taken.
        assert_eq!(status(c.register_image(&s.id, &img).unwrap_err()).0, 400);
    }
}
