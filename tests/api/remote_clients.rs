//! Real MCP clients sign people in (issue 18): each opens the authorization URL it prints in
//! Debian's Chromium (tests/browser/signin.mjs, as a person would), then lists tools, calls
//! one, outlives its access token by refreshing, and steps up when a tool needs a scope the
//! person did not tick. `scripts/browser-setup` (run by `scripts/test`) installs Chromium,
//! playwright-core and mcp-remote.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rmcp::service::ClientServiceExt;
use rmcp::transport::TokioChildProcess;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::helpers::*;
use crate::signin::{PASSWORD, set_password};

fn browser_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    assert!(
        dir.join("node_modules/playwright-core").exists(),
        "{} has no node_modules: run scripts/browser-setup (scripts/test does)",
        dir.display()
    );
    dir
}

/// What the person did in the browser, round by round.
#[derive(Default)]
struct Rounds {
    done: Vec<Value>,
    log: Vec<String>,
}

/// Watches a client's output for authorization URLs of `base` and completes each in the
/// browser; the first time, leaving `untick` unticked.
fn sign_in_when_asked(
    output: impl tokio::io::AsyncRead + Unpin + Send + 'static,
    base: String,
    untick: Vec<&'static str>,
) -> Arc<Mutex<Rounds>> {
    let rounds = Arc::new(Mutex::new(Rounds::default()));
    let shared = rounds.clone();
    tokio::spawn(async move {
        let mut lines = BufReader::new(output).lines();
        let prefix = format!("{base}/oauth/authorize?");
        while let Ok(Some(line)) = lines.next_line().await {
            shared.lock().unwrap().log.push(line.clone());
            let Some(url) = line
                .split_whitespace()
                .find(|word| word.starts_with(&prefix))
                .map(str::to_owned)
            else {
                continue;
            };
            let first = shared.lock().unwrap().done.is_empty();
            let mut command = tokio::process::Command::new("node");
            command.arg(browser_dir().join("signin.mjs")).args([
                url.as_str(),
                "owner@acme.test",
                PASSWORD,
            ]);
            if first {
                command.args(&untick);
            }
            let out = command.output().await.expect("run signin.mjs");
            let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(
                |_| json!({ "failed": String::from_utf8_lossy(&out.stderr).to_string() }),
            );
            shared.lock().unwrap().done.push(report);
        }
    });
    rounds
}

/// Polls until a request with `token` is refused (it expired), within `deadline`.
async fn wait_until_refused(url: &str, token: &str, deadline: Duration) {
    let started = Instant::now();
    loop {
        let status = reqwest::Client::new()
            .post(url)
            .bearer_auth(token)
            .header("accept", "application/json, text/event-stream")
            .json(&json!({ "jsonrpc": "2.0", "id": 1, "method": "ping" }))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16();
        if status == 401 {
            return;
        }
        assert!(started.elapsed() < deadline, "the token did not expire");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The access token mcp-remote keeps in its config directory.
fn stored_token(dir: &std::path::Path) -> Option<String> {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        for entry in std::fs::read_dir(&path).ok()?.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.to_string_lossy().ends_with("_tokens.json") {
                let tokens: Value =
                    serde_json::from_str(&std::fs::read_to_string(&path).ok()?).ok()?;
                return tokens["access_token"].as_str().map(str::to_owned);
            }
        }
    }
    None
}

#[tokio::test]
async fn mcp_remote_signs_in_refreshes_and_steps_up() {
    let db = TestDb::new().await;
    assert!(
        set_password(&db, "owner@acme.test", PASSWORD)
            .status
            .success()
    );
    let mut server = db.server(&["http"]);
    server.env("AGENTCRM_ACCESS_TOKEN_TTL_SECS", "5");
    let server = HttpServer::start(server);
    let config = tempfile::tempdir().unwrap();
    let callback = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut command = tokio::process::Command::new("node");
    command
        .arg(browser_dir().join("node_modules/mcp-remote/dist/proxy.js"))
        .arg(server.mcp_url())
        .arg(callback.to_string())
        .arg("--allow-http")
        .env("MCP_REMOTE_CONFIG_DIR", config.path())
        .env("BROWSER", "true");
    let (transport, stderr) = TokioChildProcess::builder(command)
        .stderr(Stdio::piped())
        .spawn()
        .expect("start mcp-remote");
    let rounds = sign_in_when_asked(stderr.expect("stderr"), server.base.clone(), vec!["search"]);
    let started = Instant::now();
    let handshake = tokio::time::timeout(
        Duration::from_secs(60),
        client_config().serve_with_lifecycle(transport, lifecycle(Generation::Sessions)),
    )
    .await;
    let Ok(handshake) = handshake else {
        panic!("no handshake: {:?}", rounds.lock().unwrap().log)
    };
    let client = handshake.expect("MCP handshake through mcp-remote");
    let signed_in = started.elapsed();

    let tools = client.list_all_tools().await.unwrap();
    assert!(tools.iter().any(|t| t.name == "list_customers"));
    let me = call_ok(&client, "whoami", json!({})).await;
    assert_eq!(me["principal"]["kind"], "user", "{me}");
    let scopes: Vec<String> = serde_json::from_value(me["scopes"].clone()).unwrap();
    assert!(
        !scopes.contains(&"search".to_owned()),
        "search was unticked: {scopes:?}"
    );

    // The access token expires; the next call refreshes it.
    let token = stored_token(config.path()).expect("mcp-remote keeps its tokens");
    wait_until_refused(&server.mcp_url(), &token, Duration::from_secs(30)).await;
    call_ok(&client, "list_customers", json!({})).await;
    assert_ne!(
        stored_token(config.path()).unwrap(),
        token,
        "a refreshed token"
    );

    // A tool needing the unticked scope: 403 with a challenge, the client asks the person
    // again, and the call goes through with the wider token.
    let mut searched = call(&client, "search", json!({ "query": "ada" })).await;
    if searched.is_error == Some(true) {
        searched = call(&client, "search", json!({ "query": "ada" })).await;
    }
    assert_eq!(
        searched.is_error,
        Some(false),
        "{searched:?} {:?}",
        rounds.lock().unwrap().log
    );
    // The browser script may still be closing Chromium after the client got its code.
    let deadline = Instant::now() + Duration::from_secs(20);
    while rounds.lock().unwrap().done.len() < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let done = rounds.lock().unwrap().done.clone();
    assert_eq!(done.len(), 2, "signed in, then stepped up: {done:?}");
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    let issued: Vec<(String, i64)> = sqlx::query_as(
        "SELECT action, count(*) FROM audit_events WHERE action LIKE 'token.%' GROUP BY 1 ORDER BY 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let total: i64 = issued.iter().map(|(_, n)| n).sum();
    // With a 5 s token mcp-remote refreshes before most requests (it renews tokens close to
    // expiry); what matters is that nothing loops.
    assert!(total <= 30, "no refresh loop: {issued:?}");
    eprintln!(
        "mcp-remote: handshake with sign-in in {:.1} s; browser rounds {done:?}; tokens {issued:?}",
        signed_in.as_secs_f64()
    );
    client.cancel().await.unwrap();
}

/// Runs an OAuth client (`program script <mcp url> <callback port>`) against a server whose
/// access tokens last 5 s, completing each sign-in it asks for in the browser (unticking
/// `search` the first time); returns its report and everything it printed on stderr.
async fn run_oauth_client(program: std::ffi::OsString, script: &str) -> (Value, Vec<String>) {
    let db = TestDb::new().await;
    assert!(
        set_password(&db, "owner@acme.test", PASSWORD)
            .status
            .success()
    );
    let mut server = db.server(&["http"]);
    server.env("AGENTCRM_ACCESS_TOKEN_TTL_SECS", "5");
    let server = HttpServer::start(server);
    let callback = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = tokio::process::Command::new(program)
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(script))
        .arg(server.mcp_url())
        .arg(callback.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("start {script}: {e}"));
    let rounds = sign_in_when_asked(
        child.stderr.take().unwrap(),
        server.base.clone(),
        vec!["search"],
    );
    let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{script} did not finish"))
        .unwrap();
    let log = rounds.lock().unwrap().log.clone();
    assert!(out.status.success(), "{script}: {log:#?}");
    let report = serde_json::from_slice(&out.stdout).unwrap();
    (report, log)
}

/// The official Python SDK's OAuth client provider (tests/clients/python_oauth.py).
#[tokio::test]
async fn the_python_sdk_signs_in_refreshes_and_steps_up() {
    let python = std::env::var_os("AGENTCRM_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python"));
    let (report, log) = run_oauth_client(python.into(), "tests/clients/python_oauth.py").await;
    assert_eq!(report["whoami"]["principal"]["kind"], "user", "{report}");
    assert_eq!(report["refreshed"], true, "{report}");
    assert_eq!(
        report["search_is_error"], false,
        "stepped up: {report} {log:#?}"
    );
    assert_eq!(report["authorization_rounds"], 2, "{report}");
    assert!(
        report["scope_after"].as_str().unwrap().contains("search"),
        "{report}"
    );
    eprintln!("python sdk: {report}");
}

/// The official TypeScript SDK's OAuth support (tests/clients/ts/oauth.mjs).
#[tokio::test]
async fn the_typescript_sdk_signs_in_refreshes_and_steps_up() {
    let node = std::env::var_os("AGENTCRM_TEST_NODE").unwrap_or_else(|| "node".into());
    let (report, log) = run_oauth_client(node, "tests/clients/ts/oauth.mjs").await;
    assert_eq!(report["whoami"]["principal"]["kind"], "user", "{report}");
    assert_eq!(report["refreshed"], true, "{report}");
    assert_eq!(
        report["search_is_error"], false,
        "stepped up: {report} {log:#?}"
    );
    assert_eq!(
        report["still_lists_customers"], true,
        "consent is incremental: {report}"
    );
    assert_eq!(report["authorization_rounds"], 2, "{report}");
    eprintln!("typescript sdk: {report}");
}

/// mcp-remote with an API key (which cannot step up): a tool the key lacks is refused as the
/// tool's result, naming the scope, and mcp-remote hands that text on.
#[tokio::test]
async fn mcp_remote_passes_a_keys_refusal_on_as_text() {
    let db = TestDb::new().await;
    let narrow = db.api_key("owner@acme.test", &["customers:read"]);
    let server = HttpServer::start(db.server(&["http"]));
    let config = tempfile::tempdir().unwrap();
    let mut command = tokio::process::Command::new("node");
    command
        .arg(browser_dir().join("node_modules/mcp-remote/dist/proxy.js"))
        .arg(server.mcp_url())
        .arg("--allow-http")
        .arg("--header")
        .arg(format!("X-Api-Key:{narrow}"))
        .env("MCP_REMOTE_CONFIG_DIR", config.path())
        .env("BROWSER", "true");
    let (transport, _) = TokioChildProcess::builder(command)
        .stderr(Stdio::null())
        .spawn()
        .expect("start mcp-remote");
    let client = client_config()
        .serve_with_lifecycle(transport, lifecycle(Generation::Sessions))
        .await
        .expect("MCP handshake through mcp-remote");
    let refused = call(&client, "list_agents", json!({})).await;
    assert_eq!(refused.is_error, Some(true), "{refused:?}");
    let text = serde_json::to_string(&refused.content).unwrap();
    assert!(
        text.contains("admin"),
        "the missing scope reaches the model: {text}"
    );
    call_ok(&client, "list_customers", json!({})).await;
    client.cancel().await.unwrap();
}
