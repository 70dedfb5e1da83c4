//! A small load generator for agentcrm's streamable HTTP endpoint: many concurrent
//! stateless (2026-07-28) `tools/call` requests, reporting throughput and latency.
//!
//! cargo run --release --example loadgen -- --url http://127.0.0.1:8848/mcp \
//!     --header "X-Api-Key: acrm_..." --tool server_info --concurrency 16 --seconds 10
//!
//! Arguments can vary per call: in `--args`, `{{n}}` becomes a number unique to the call
//! (e.g. fresh emails for `create_customer`) and `{{pick}}` a random line of `--pick FILE`
//! (e.g. existing customer ids for `get_customer`, or search terms).
//!
//! By default each connection sends its next call as soon as the last one is answered (a
//! closed loop: it finds the throughput, and its latency is mostly queueing once the machine
//! is saturated). `--rate N` sends N calls/s in all, spread over the connections on a fixed
//! schedule (an open loop), and measures each call from the time it was due, so a stalled
//! server shows in the tail instead of slowing the load down.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

struct Options {
    url: String,
    headers: Vec<(String, String)>,
    tool: String,
    /// `--args` as JSON text, with its placeholders.
    args: String,
    picks: Vec<String>,
    concurrency: usize,
    seconds: u64,
    warmup: u64,
    /// Calls per second in all (open loop); `None`: closed loop.
    rate: Option<f64>,
}

fn options() -> Result<Options, String> {
    let mut o = Options {
        url: "http://127.0.0.1:8848/mcp".into(),
        headers: Vec::new(),
        tool: "server_info".into(),
        args: "{}".into(),
        picks: Vec::new(),
        concurrency: 16,
        seconds: 10,
        warmup: 2,
        rate: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--url" => o.url = value()?,
            "--header" => {
                let v = value()?;
                let (name, val) = v.split_once(':').ok_or("--header takes Name: Value")?;
                o.headers.push((name.trim().into(), val.trim().into()));
            }
            "--tool" => o.tool = value()?,
            "--args" => o.args = value()?,
            "--pick" => {
                let path = value()?;
                let text = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
                o.picks = text
                    .lines()
                    .filter(|l| !l.trim().is_empty())
                    .map(String::from)
                    .collect();
            }
            "--concurrency" => o.concurrency = value()?.parse().map_err(|_| "bad --concurrency")?,
            "--seconds" => o.seconds = value()?.parse().map_err(|_| "bad --seconds")?,
            "--warmup" => o.warmup = value()?.parse().map_err(|_| "bad --warmup")?,
            "--rate" => {
                let rate: f64 = value()?.parse().map_err(|_| "bad --rate")?;
                if !(rate > 0.0 && rate.is_finite()) {
                    return Err("--rate takes calls per second, above 0".into());
                }
                o.rate = Some(rate);
            }
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if o.args.contains("{{pick}}") && o.picks.is_empty() {
        return Err("--args uses {{pick}}: give --pick FILE with one value per line".into());
    }
    o.args_for(0)?;
    Ok(o)
}

impl Options {
    /// The arguments of call `n`, placeholders filled (JSON-escaped).
    fn args_for(&self, n: u64) -> Result<Value, String> {
        let mut text = self.args.replace("{{n}}", &n.to_string());
        if !self.picks.is_empty() {
            let mut random = [0u8; 8];
            getrandom::fill(&mut random).map_err(|e| e.to_string())?;
            let line = &self.picks[(u64::from_le_bytes(random) % self.picks.len() as u64) as usize];
            let escaped = serde_json::to_string(line).map_err(|e| e.to_string())?;
            text = text.replace("{{pick}}", &escaped[1..escaped.len() - 1]);
        }
        serde_json::from_str(&text).map_err(|e| format!("--args is not JSON: {e}"))
    }
}

async fn call(client: &reqwest::Client, o: &Options, id: u64) -> Result<(), String> {
    let body = json!({ "jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {
        "name": o.tool, "arguments": o.args_for(id)?,
        "_meta": {
            "io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientInfo": { "name": "loadgen", "version": "1" },
            "io.modelcontextprotocol/clientCapabilities": {}
        }
    } });
    let mut request = client
        .post(&o.url)
        .header("Accept", "application/json, text/event-stream")
        .header("MCP-Protocol-Version", "2026-07-28")
        .header("Mcp-Method", "tools/call")
        .header("Mcp-Name", &o.tool)
        .json(&body);
    for (name, value) in &o.headers {
        request = request.header(name, value);
    }
    let response = request.send().await.map_err(|e| e.to_string())?;
    let status = response.status();
    let text = response.text().await.map_err(|e| e.to_string())?;
    if !status.is_success() || text.contains("\"isError\":true") || !text.contains("\"result\"") {
        return Err(format!(
            "{status}: {}",
            text.chars().take(200).collect::<String>()
        ));
    }
    Ok(())
}

#[tokio::main]
async fn main() {
    let o = match options() {
        Ok(o) => std::sync::Arc::new(o),
        Err(e) => {
            eprintln!("loadgen: {e}");
            std::process::exit(2);
        }
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::new();
    if let Err(e) = call(&client, &o, 0).await {
        eprintln!("loadgen: the first call failed: {e}");
        std::process::exit(1);
    }
    let start = Instant::now();
    let warm_until = start + Duration::from_secs(o.warmup);
    let stop_at = warm_until + Duration::from_secs(o.seconds);
    let mut workers = Vec::new();
    for worker in 0..o.concurrency {
        let (client, o) = (client.clone(), o.clone());
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0u64;
            let mut id = (worker as u64) << 32;
            // Open loop: this connection's calls are due every `every`, offset so that the
            // connections take turns.
            let every = o
                .rate
                .map(|r| Duration::from_secs_f64(o.concurrency as f64 / r));
            let mut due = every.map(|e| start + e.mul_f64(worker as f64 / o.concurrency as f64));
            loop {
                let began = match (due, every) {
                    (Some(at), Some(e)) => {
                        tokio::time::sleep_until(at.into()).await;
                        due = Some(at + e);
                        at
                    }
                    _ => Instant::now(),
                };
                if began >= stop_at {
                    break;
                }
                id += 1;
                let outcome = call(&client, &o, id).await;
                if began >= warm_until {
                    match outcome {
                        Ok(()) => latencies.push(began.elapsed()),
                        Err(e) => {
                            if errors == 0 {
                                eprintln!("loadgen: {e}");
                            }
                            errors += 1;
                        }
                    }
                }
            }
            (latencies, errors)
        }));
    }
    let mut latencies = Vec::new();
    let mut errors = 0;
    for worker in workers {
        if let Ok((l, e)) = worker.await {
            latencies.extend(l);
            errors += e;
        }
    }
    latencies.sort();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    let report = json!({
        "tool": o.tool,
        "concurrency": o.concurrency,
        "rate": o.rate,
        "seconds": o.seconds,
        "requests": latencies.len(),
        "errors": errors,
        "rps": (latencies.len() as f64 / o.seconds as f64).round(),
        "p50_ms": (pct(0.50) * 1000.0).round() / 1000.0,
        "p95_ms": (pct(0.95) * 1000.0).round() / 1000.0,
        "p99_ms": (pct(0.99) * 1000.0).round() / 1000.0,
    });
    println!("{report}");
}
