//! MCP over stdio: stdout carries only protocol messages (logs go to stderr).
//!
//! Lines from stdin pass through a gate before rmcp reads them: a line that is not a
//! JSON-RPC message gets its error here (`-32700` for bad JSON, `-32600` with the request's
//! id when one can be read), since rmcp answers those without any id and the client would
//! wait forever. One writer task owns stdout, so replies never interleave.

use std::sync::Arc;

use rmcp::ServiceExt;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::server::AgentCrm;
use crate::access::Principal;
use crate::app::App;

/// How long calls in flight may still run after the client closed stdin.
const IN_FLIGHT_GRACE: std::time::Duration = std::time::Duration::from_secs(60);

/// The longest line read from stdin; a longer one is refused without being held in memory.
const MAX_LINE: usize = 16 * 1024 * 1024;

/// Serves one client until it closes stdin or `shutdown` is cancelled.
pub async fn serve(
    app: Arc<App>,
    principal: Principal,
    shutdown: CancellationToken,
) -> Result<(), rmcp::service::ServerInitializeError> {
    let server = AgentCrm::stdio(app.clone(), principal);
    let (transport, written) = gated(tokio::io::stdin(), tokio::io::stdout());
    let running = tokio::select! {
        running = server.serve(transport) => running?,
        _ = shutdown.cancelled() => return Ok(()),
    };
    let cancel = running.cancellation_token();
    tokio::select! {
        outcome = running.waiting() => {
            if let Err(error) = outcome {
                tracing::warn!(%error, "stdio session ended with an error");
            }
        }
        _ = shutdown.cancelled() => {
            // New calls are refused meanwhile; those running finish first.
            let grace = crate::jobs::drain_grace();
            if !app.inflight.drained(grace).await {
                tracing::warn!("calls still running {grace:?} after the shutdown signal; ending them");
            }
            cancel.cancel()
        }
    }
    // A client that hung up mid-call: its calls finish, with their audit records, before the
    // process exits (rmcp waits only a few seconds for them).
    if !app.inflight.drained(IN_FLIGHT_GRACE).await {
        tracing::warn!("calls still running {IN_FLIGHT_GRACE:?} after the client left; exiting");
    }
    // The last replies reach stdout before the process exits.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), written).await;
    Ok(())
}

/// The (reader, writer) pair rmcp serves on, between the gate and the stdout writer, and the
/// writer task, which ends once everything written has reached `output`.
pub fn gated<R, W>(
    input: R,
    output: W,
) -> (
    (tokio::io::DuplexStream, tokio::io::DuplexStream),
    tokio::task::JoinHandle<()>,
)
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (to_rmcp, rmcp_reads) = tokio::io::duplex(1 << 16);
    let (rmcp_writes, from_rmcp) = tokio::io::duplex(1 << 16);
    let (lines, mut outgoing) = mpsc::channel::<Vec<u8>>(64);

    // The one writer of stdout.
    let written = tokio::spawn(async move {
        let mut output = output;
        while let Some(line) = outgoing.recv().await {
            if output.write_all(&line).await.is_err() || output.flush().await.is_err() {
                break;
            }
        }
    });
    // rmcp's replies, line by line.
    let replies = lines.clone();
    let outstanding = Arc::new(Outstanding::default());
    let answered = outstanding.clone();
    tokio::spawn(async move {
        let mut from_rmcp = BufReader::new(from_rmcp);
        let mut line = Vec::new();
        loop {
            line.clear();
            match from_rmcp.read_until(b'\n', &mut line).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if let Some(id) = answered_id(&line) {
                        answered.finish(&id);
                    }
                    if replies.send(line.clone()).await.is_err() {
                        break;
                    }
                }
            }
        }
    });
    // The gate.
    tokio::spawn(async move {
        let mut input = BufReader::new(input);
        let mut to_rmcp = to_rmcp;
        loop {
            let line = match read_line(&mut input).await {
                Ok(Some(line)) => line,
                Ok(None) | Err(_) => break,
            };
            let line = match line {
                Line::TooLong(head) => {
                    let error = refusal(
                        leading_id(&head),
                        -32600,
                        format!("Invalid Request: a message is limited to {MAX_LINE} bytes"),
                    );
                    if lines.send(error).await.is_err() {
                        break;
                    }
                    continue;
                }
                Line::Text(line) => line,
            };
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            match check(&line) {
                Ok(kind) => {
                    // At most MAX_OUTSTANDING requests at once: reading waits while they run,
                    // so a client piping thousands at once cannot grow memory without bound.
                    // Answers and notifications (a cancellation frees its request) pass.
                    match kind {
                        Kind::Request(id) => outstanding.start(id).await,
                        Kind::Cancelled(id) => outstanding.finish(&id),
                        Kind::Other => {}
                    }
                    if to_rmcp.write_all(&line).await.is_err()
                        || to_rmcp.write_all(b"\n").await.is_err()
                    {
                        break;
                    }
                }
                Err(error) => {
                    if lines.send(error).await.is_err() {
                        break;
                    }
                }
            }
        }
        // Dropping `to_rmcp` closes rmcp's input: the session ends as when stdin closes.
    });
    ((rmcp_reads, rmcp_writes), written)
}

/// Requests the client sent that are not answered yet (by their id's JSON text).
const MAX_OUTSTANDING: usize = 64;

#[derive(Default)]
struct Outstanding {
    ids: std::sync::Mutex<std::collections::HashSet<String>>,
    freed: tokio::sync::Notify,
}

impl Outstanding {
    /// Waits for room, then counts the request `id` as outstanding.
    async fn start(&self, id: String) {
        loop {
            let freed = self.freed.notified();
            if let Ok(mut ids) = self.ids.lock()
                && ids.len() < MAX_OUTSTANDING
            {
                ids.insert(id);
                return;
            }
            freed.await;
        }
    }

    fn finish(&self, id: &str) {
        if let Ok(mut ids) = self.ids.lock()
            && ids.remove(id)
        {
            self.freed.notify_waiters();
        }
    }
}

enum Kind {
    Request(String),
    Cancelled(String),
    Other,
}

/// The id of an answer rmcp sends (a result or an error), not of a request of its own.
fn answered_id(line: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Probe {
        method: Option<serde::de::IgnoredAny>,
        id: Option<Value>,
    }
    let probe: Probe = serde_json::from_slice(line).ok()?;
    match (probe.method, probe.id) {
        (None, Some(id)) if !id.is_null() => Some(id.to_string()),
        _ => None,
    }
}

enum Line {
    Text(Vec<u8>),
    /// Over [`MAX_LINE`]: only its head is kept, to find the request's id.
    TooLong(Vec<u8>),
}

/// How much of an over-long line is kept to find its id.
const HEAD: usize = 64 * 1024;

/// The top-level `"id"` of a message read only in part: a number or a string at depth 1.
fn leading_id(head: &[u8]) -> Value {
    let mut depth = 0usize;
    let mut i = 0;
    while i < head.len() {
        match head[i] {
            b'{' | b'[' => depth += 1,
            b'}' | b']' => depth = depth.saturating_sub(1),
            b'"' => {
                let start = i + 1;
                let mut end = start;
                while end < head.len() && head[end] != b'"' {
                    end += if head[end] == b'\\' { 2 } else { 1 };
                }
                if depth == 1 && &head[start..end.min(head.len())] == b"id" {
                    let rest = &head[(end + 1).min(head.len())..];
                    let rest = rest.trim_ascii_start();
                    if let Some(value) = rest.strip_prefix(b":") {
                        let mut reader =
                            serde_json::Deserializer::from_slice(value.trim_ascii_start())
                                .into_iter::<Value>();
                        if let Some(Ok(id)) = reader.next()
                            && (id.is_string() || id.is_u64() || id.is_i64())
                        {
                            return id;
                        }
                    }
                }
                i = end;
            }
            _ => {}
        }
        i += 1;
    }
    Value::Null
}

/// The next line without its newline; `None` at the end of input.
async fn read_line<R: AsyncRead + Unpin>(
    input: &mut BufReader<R>,
) -> std::io::Result<Option<Line>> {
    let mut line = Vec::new();
    let mut too_long = false;
    loop {
        let available = input.fill_buf().await?;
        if available.is_empty() {
            return Ok(if too_long {
                Some(Line::TooLong(line))
            } else {
                (!line.is_empty()).then_some(Line::Text(line))
            });
        }
        let (chunk, done) = match available.iter().position(|b| *b == b'\n') {
            Some(end) => (&available[..end], Some(end + 1)),
            None => (available, None),
        };
        if !too_long {
            if line.len() + chunk.len() > MAX_LINE {
                too_long = true;
                line.truncate(HEAD);
            } else {
                line.extend_from_slice(chunk);
            }
        }
        let consumed = done.unwrap_or(available.len());
        input.consume(consumed);
        if done.is_some() {
            return Ok(Some(if too_long {
                Line::TooLong(line)
            } else {
                Line::Text(line)
            }));
        }
    }
}

/// What `line` is (a request, a cancellation, or else), if rmcp can read it; the error line
/// to answer if not.
fn check(line: &[u8]) -> Result<Kind, Vec<u8>> {
    use rmcp::model::{ClientJsonRpcMessage, ClientNotification, JsonRpcMessage};
    let key = |id: &rmcp::model::RequestId| serde_json::to_string(id).unwrap_or_default();
    if let Ok(message) = serde_json::from_slice::<ClientJsonRpcMessage>(line) {
        return Ok(match message {
            JsonRpcMessage::Request(request) => Kind::Request(key(&request.id)),
            JsonRpcMessage::Notification(n) => match &n.notification {
                ClientNotification::CancelledNotification(c) => c
                    .params
                    .request_id
                    .as_ref()
                    .map_or(Kind::Other, |id| Kind::Cancelled(key(id))),
                _ => Kind::Other,
            },
            _ => Kind::Other,
        });
    }
    match serde_json::from_slice::<Value>(line) {
        Err(error) => Err(refusal(
            Value::Null,
            -32700,
            format!("Parse error: {error}"),
        )),
        Ok(value) => {
            let id = value
                .get("id")
                .filter(|id| id.is_string() || id.is_i64() || id.is_u64())
                .cloned()
                .unwrap_or(Value::Null);
            let why = serde_json::from_slice::<rmcp::model::ClientJsonRpcMessage>(line)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            Err(refusal(id, -32600, format!("Invalid Request: {why}")))
        }
    }
}

fn refusal(id: Value, code: i32, message: String) -> Vec<u8> {
    let mut line =
        json!({ "jsonrpc": "2.0", "id": id, "error": { "code": code, "message": message } })
            .to_string()
            .into_bytes();
    line.push(b'\n');
    line
}
