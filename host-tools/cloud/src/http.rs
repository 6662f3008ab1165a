//! One JSON request over blocking HTTP, with OpenStack's error bodies turned into
//! [`CloudError::Http`] messages a person can act on.

use std::time::Duration;

use serde_json::Value;

use crate::{CloudError, Result};

/// Largest response body read (a volume list of thousands of entries stays far below).
const MAX_BODY: u64 = 16 << 20;

/// What came back from a successful request.
#[derive(Debug)]
pub(crate) struct Reply {
    /// The `X-Subject-Token` header (Keystone returns the token there, not in the body).
    pub subject_token: Option<String>,
    /// The body as JSON, `Value::Null` when empty (202/204 answers).
    pub body: Value,
}

#[derive(Debug, Clone)]
pub(crate) struct Http {
    agent: ureq::Agent,
}

impl Http {
    pub fn new(timeout: Duration) -> Http {
        Http {
            agent: ureq::AgentBuilder::new()
                .timeout_connect(Duration::from_secs(10))
                .timeout(timeout)
                .build(),
        }
    }

    /// Send `body` (if any) as JSON with `headers`; 2xx gives the reply, anything else an error
    /// carrying the service's own message.
    pub fn send(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Result<Reply> {
        let mut req = self
            .agent
            .request(method, url)
            .set("Accept", "application/json");
        for (k, v) in headers {
            req = req.set(k, v);
        }
        let res = match body {
            Some(b) => req.send_json(b),
            None => req.call(),
        };
        match res {
            Ok(resp) => {
                let subject_token = resp.header("X-Subject-Token").map(str::to_string);
                let text = read_body(resp, method, url)?;
                let body = if text.trim().is_empty() {
                    Value::Null
                } else {
                    serde_json::from_str(&text).map_err(|e| CloudError::BadResponse {
                        what: format!("{method} {url}"),
                        detail: format!("body is not JSON ({e}): {}", snippet(&text)),
                    })?
                };
                Ok(Reply {
                    subject_token,
                    body,
                })
            }
            Err(ureq::Error::Status(status, resp)) => {
                let text = read_body(resp, method, url).unwrap_or_default();
                Err(CloudError::Http {
                    method: method.to_string(),
                    url: url.to_string(),
                    status,
                    message: error_message(&text),
                })
            }
            Err(ureq::Error::Transport(t)) => Err(CloudError::Transport {
                method: method.to_string(),
                url: url.to_string(),
                message: t.to_string(),
            }),
        }
    }
}

fn read_body(resp: ureq::Response, method: &str, url: &str) -> Result<String> {
    use std::io::Read;
    let mut text = String::new();
    resp.into_reader()
        .take(MAX_BODY)
        .read_to_string(&mut text)
        .map_err(|e| CloudError::Transport {
            method: method.to_string(),
            url: url.to_string(),
            message: format!("reading the answer: {e}"),
        })?;
    Ok(text)
}

/// OpenStack services wrap errors as `{"itemNotFound": {"code": 404, "message": "..."}}`
/// (Nova, Cinder) or `{"error": {"message": ...}}` (Keystone); placement as `{"errors": [..]}`.
pub(crate) fn error_message(text: &str) -> String {
    if let Ok(Value::Object(map)) = serde_json::from_str::<Value>(text) {
        for (kind, inner) in &map {
            if let Some(m) = inner.get("message").and_then(Value::as_str) {
                return format!("{kind}: {m}");
            }
            if let Some(m) = inner
                .as_array()
                .and_then(|a| a.first())
                .and_then(|e| e.get("detail"))
                .and_then(Value::as_str)
            {
                return m.to_string();
            }
        }
    }
    if text.trim().is_empty() {
        "(empty body)".to_string()
    } else {
        snippet(text)
    }
}

fn snippet(text: &str) -> String {
    let t = text.trim();
    match t.char_indices().nth(300) {
        Some((i, _)) => format!("{}...", &t[..i]),
        None => t.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_message_reads_openstack_error_shapes() {
        assert_eq!(
            error_message(
                r#"{"itemNotFound": {"code": 404, "message": "Volume x could not be found."}}"#
            ),
            "itemNotFound: Volume x could not be found."
        );
        assert_eq!(
            error_message(r#"{"errors": [{"status": 400, "detail": "bad inventory"}]}"#),
            "bad inventory"
        );
        assert_eq!(error_message("  "), "(empty body)");
        assert_eq!(error_message("<html>500</html>"), "<html>500</html>");
        let long = "x".repeat(1000);
        assert_eq!(error_message(&long).len(), 303);
    }
}
