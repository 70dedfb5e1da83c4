//! Independent MCP clients, each over stdio and streamable HTTP: the official Python SDK, the
//! official TypeScript SDK, LangChain's MCP adapters; and the Claude Desktop config of the
//! README, started exactly as written.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sqlx::Connection;

use crate::helpers::*;

/// The interpreter with the pinned `mcp` package (`scripts/test` installs it in `.venv`).
pub(crate) fn python() -> PathBuf {
    let python = std::env::var_os("AGENTCRM_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python"));
    assert!(
        python.exists(),
        "{} is missing: run `scripts/test` (it installs tests/clients/requirements.txt) or set AGENTCRM_TEST_PYTHON",
        python.display()
    );
    python
}

pub(crate) fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/clients/python_client.py")
}

pub(crate) fn run(command: &mut Command) -> Value {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("run {:?}: {e}", command.get_program()));
    assert!(
        out.status.success(),
        "{:?} failed:\n{}\n{}",
        command.get_program(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "the client prints one JSON object ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// `auto` negotiates the stateless 2026-07-28; `legacy` the `initialize` handshake of 2025-11-25.
const MODES: [(&str, &str); 2] = [("auto", "2026-07-28"), ("legacy", "2025-11-25")];

pub(crate) fn assert_report(report: &Value, transport: &str, version: &str) {
    assert_eq!(report["protocol_version"], version, "{report}");
    let tools: Vec<&str> = report["tools"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(tools, all_tool_names(), "{report}");
    assert_eq!(report["whoami"]["transport"], transport);
    assert_eq!(report["whoami"]["principal"]["kind"], "api_key");
    assert_eq!(report["server_info"]["database"], "external");
    assert!(
        report["unknown_tool_error"]
            .as_str()
            .is_some_and(|e| e.contains("no_such_tool")),
        "{report}"
    );
}

#[tokio::test]
async fn python_sdk_client_over_stdio() {
    let db = TestDb::new().await;
    for (mode, version) in MODES {
        let report = run(Command::new(python())
            .arg(script())
            .args(["--mode", mode, "stdio", "--", BIN, "stdio"])
            .env("DATABASE_URL", &db.url)
            .env("AGENTCRM_API_KEY", &db.admin_key)
            .env("RUST_LOG", "warn"));
        assert_report(&report, "stdio", version);
    }
}

#[tokio::test]
async fn python_sdk_client_over_http() {
    let db = TestDb::new().await;
    let server = HttpServer::start(db.command(&["http"]));
    for (mode, version) in MODES {
        let header = format!("X-Api-Key: {}", db.admin_key);
        let report = run(Command::new(python()).arg(script()).args([
            "--mode",
            mode,
            "http",
            &server.mcp_url(),
            "--header",
            &header,
        ]));
        assert_report(&report, "http", version);
        let session = &report["whoami"]["session_id"];
        assert_eq!(
            session.is_string(),
            mode == "legacy",
            "sessions only in 2025-11-25: {report}"
        );
    }
}

/// The inherited environment less any agentcrm setting: the test names every one it means.
fn clean(mut command: Command) -> Command {
    for (key, _) in std::env::vars() {
        if key.starts_with("AGENTCRM_") || key == "DATABASE_URL" {
            command.env_remove(key);
        }
    }
    command
}

/// `node` running the TypeScript SDK client (`scripts/test` runs `npm ci` in its folder).
pub(crate) fn ts_client() -> Command {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/clients/ts");
    assert!(
        dir.join("node_modules/@modelcontextprotocol/sdk").exists(),
        "{} has no node_modules: run `scripts/test` (it runs `npm ci` there)",
        dir.display()
    );
    let node = std::env::var_os("AGENTCRM_TEST_NODE").unwrap_or_else(|| "node".into());
    let mut command = clean(Command::new(node));
    command.arg(dir.join("client.mjs"));
    command
}

/// The langchain-mcp-adapters client, in the interpreter of its own venv (it needs `mcp<2`).
fn langchain_client() -> Command {
    let python = std::env::var_os("AGENTCRM_TEST_LANGCHAIN_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv-langchain/bin/python")
        });
    assert!(
        python.exists(),
        "{} is missing: run `scripts/test` (it installs tests/clients/langchain-requirements.txt) or set AGENTCRM_TEST_LANGCHAIN_PYTHON",
        python.display()
    );
    let mut command = clean(Command::new(python));
    command
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/clients/langchain_client.py"));
    command
}

fn tool_names(report: &Value) -> Vec<&str> {
    report["tools"]
        .as_array()
        .unwrap_or_else(|| panic!("no tool list: {report}"))
        .iter()
        .filter_map(Value::as_str)
        .collect()
}

/// What a user of any client sees alike: every tool (the admin key holds every scope), the
/// caller as the server knows it, a customer written and read back (and really stored, and
/// audited as this caller over this transport), and an unknown tool named in its error.
async fn assert_used(db: &TestDb, report: &Value, transport: &str) {
    assert_eq!(tool_names(report), all_tool_names(), "{report}");
    let whoami = &report["whoami"];
    assert_eq!(whoami["transport"], transport, "{report}");
    assert_eq!(whoami["principal"]["kind"], "api_key", "{report}");
    assert_eq!(whoami["principal"]["name"], "tests");
    assert_eq!(whoami["principal"]["role"], "admin");
    assert_eq!(whoami["tenant"]["slug"], "acme");
    assert!(
        whoami["scopes"]
            .as_array()
            .unwrap()
            .contains(&json!("customers:write"))
    );

    let email = report["email"]
        .as_str()
        .expect("the email the client wrote");
    let created = &report["created"];
    assert_eq!(created["email"], email, "{report}");
    assert_eq!(created["first_name"], "Ada");
    assert_eq!(created["status"], "lead");
    assert_eq!(created["version"], 1);
    assert_eq!(
        report["fetched"], *created,
        "get_customer answers what create_customer wrote"
    );

    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let stored: (Option<String>, String, String) = sqlx::query_as(
        "SELECT c.email, c.first_name, t.slug FROM customers c JOIN tenants t ON t.id = c.tenant_id
         WHERE c.id = $1::uuid",
    )
    .bind(created["id"].as_str().unwrap())
    .fetch_one(&mut conn)
    .await
    .expect("the customer is in the database");
    assert_eq!(
        stored,
        (Some(email.to_owned()), "Ada".into(), "acme".into())
    );
    type Audited = (String, Option<String>, Option<String>, Option<String>);
    let audited: Vec<Audited> = sqlx::query_as(
        "SELECT outcome, principal_kind, principal_name, transport FROM audit_events
         WHERE action = 'create_customer' AND arguments->>'email' = $1",
    )
    .bind(email)
    .fetch_all(&mut conn)
    .await
    .unwrap();
    let expected = (
        "ok".into(),
        Some("api_key".into()),
        Some("tests".into()),
        Some(transport.into()),
    );
    assert_eq!(audited, [expected]);

    let unknown = report["unknown_tool_error"].as_str().unwrap_or_default();
    assert!(
        unknown.contains("-32602") && unknown.contains("Unknown tool: no_such_tool"),
        "{report}"
    );
}

/// The TypeScript SDK (1.32.2) speaks up to 2025-11-25 through `initialize`.
pub(crate) fn assert_ts_report(report: &Value) {
    assert_eq!(report["protocol_version"], "2025-11-25", "{report}");
    assert_eq!(report["server_name"], "agentcrm");
    assert_eq!(
        report["transport_errors"],
        json!([]),
        "nothing the SDK could not parse or accept"
    );
}

#[tokio::test]
async fn typescript_sdk_client_over_stdio() {
    let db = TestDb::new().await;
    let report = run(ts_client()
        .args(["stdio", "--", BIN, "stdio"])
        .env("DATABASE_URL", &db.url)
        .env("AGENTCRM_API_KEY", &db.admin_key)
        .env("RUST_LOG", "warn"));
    assert_ts_report(&report);
    assert_eq!(report["session_id"], Value::Null, "{report}");
    assert_used(&db, &report, "stdio").await;
}

#[tokio::test]
async fn typescript_sdk_client_over_http() {
    let db = TestDb::new().await;
    let server = HttpServer::start(db.command(&["http"]));
    let header = format!("X-Api-Key: {}", db.admin_key);
    let report = run(ts_client().args(["http", &server.mcp_url(), "--header", &header]));
    assert_ts_report(&report);
    // An `initialize` session: the id the transport holds is the one the server reports.
    assert!(report["session_id"].is_string(), "{report}");
    assert_eq!(report["whoami"]["session_id"], report["session_id"]);
    assert_eq!(
        report["session_terminated"], true,
        "DELETE ends the session"
    );
    assert_used(&db, &report, "http").await;
}

/// With output schemas listed (`--list-output-schemas`), the SDK also checks every structured
/// result against its tool's output schema. Its `Tool` type wants every `properties` entry to
/// be an object: a boolean schema (`true`, how schemars spells a `serde_json::Value` field)
/// makes it refuse the whole `tools/list`.
#[tokio::test]
async fn typescript_sdk_client_with_output_schemas_listed() {
    let db = TestDb::new().await;
    let report = run(ts_client()
        .args(["stdio", "--", BIN, "stdio"])
        .env("DATABASE_URL", &db.url)
        .env("AGENTCRM_API_KEY", &db.admin_key)
        .env("AGENTCRM_LIST_OUTPUT_SCHEMAS", "true")
        .env("RUST_LOG", "warn"));
    assert_ts_report(&report);
    assert_used(&db, &report, "stdio").await;
}

/// langchain-mcp-adapters (over mcp 1.x): LangChain `StructuredTool`s whose answers are
/// `ToolMessage`s; a tool error reaches the model as text with status `error`.
async fn assert_langchain_report(db: &TestDb, report: &Value, transport: &str) {
    assert_eq!(report["protocol_version"], "2025-11-25", "{report}");
    assert_eq!(report["server_name"], "agentcrm");
    assert_eq!(report["tool_types"], json!(["StructuredTool"]));
    assert_eq!(report["whoami_status"], "success");
    let text: Value = serde_json::from_str(report["whoami_text"].as_str().unwrap())
        .expect("the model is shown whoami as JSON text");
    assert_eq!(
        text, report["whoami"],
        "the text matches the structured content"
    );
    assert_eq!(report["missing_status"], "error", "{report}");
    let missing: Value = serde_json::from_str(report["missing_text"].as_str().unwrap())
        .expect("the model is shown the error object");
    assert_eq!(missing["error"], "not_found", "{report}");

    // The adapter opens a session (over stdio, a server process) for every tool call.
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let (calls, sessions): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT session_id) FROM audit_events
         WHERE kind = 'tool' AND transport = $1",
    )
    .bind(transport)
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert!(
        calls >= 4 && sessions == calls,
        "{calls} calls in {sessions} sessions"
    );
    assert!(report["whoami"]["session_id"].is_string(), "{report}");
}

#[tokio::test]
async fn langchain_adapters_over_stdio() {
    let db = TestDb::new().await;
    let report = run(langchain_client()
        .args(["stdio", "--", BIN, "stdio"])
        .env("DATABASE_URL", &db.url)
        .env("AGENTCRM_API_KEY", &db.admin_key)
        .env("RUST_LOG", "warn"));
    assert_langchain_report(&db, &report, "stdio").await;
    assert_used(&db, &report, "stdio").await;
}

#[tokio::test]
async fn langchain_adapters_over_http() {
    let db = TestDb::new().await;
    let server = HttpServer::start(db.command(&["http"]));
    let header = format!("X-Api-Key: {}", db.admin_key);
    let report = run(langchain_client().args(["http", &server.mcp_url(), "--header", &header]));
    assert_langchain_report(&db, &report, "http").await;
    assert_used(&db, &report, "http").await;
}

/// What Claude Desktop passes to a server besides its entry's `env`: a few variables of its
/// own environment (those of the TypeScript SDK's `getDefaultEnvironment` on Linux and macOS).
const DESKTOP_INHERITED: [&str; 6] = ["HOME", "LOGNAME", "PATH", "SHELL", "TERM", "USER"];

/// The `agentcrm` entry of `claude_desktop_config.example.json`, started as Claude Desktop
/// starts it: the command (the placeholder replaced by the built binary), its args, its env,
/// plus what the README has a user add for a shared database. Returns the env it set.
fn claude_desktop_command(db: &TestDb) -> (Command, Vec<(String, String)>) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("claude_desktop_config.example.json");
    let config: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
        .expect("the example config is JSON");
    let entry = &config["mcpServers"]["agentcrm"];
    let program = entry["command"].as_str().expect("the entry has a command");
    assert!(
        program.contains("/ABSOLUTE/PATH/TO/agentcrm"),
        "the README tells users to replace /ABSOLUTE/PATH/TO/agentcrm: {entry}"
    );
    let mut command = Command::new(program.replace("/ABSOLUTE/PATH/TO/agentcrm", BIN));
    command.args(
        entry["args"]
            .as_array()
            .expect("args")
            .iter()
            .map(|a| a.as_str().expect("args are strings")),
    );
    command.env_clear();
    for key in DESKTOP_INHERITED {
        if let Some(value) = std::env::var_os(key) {
            command.env(key, value);
        }
    }
    let mut env: Vec<(String, String)> = entry["env"]
        .as_object()
        .map(|env| {
            env.iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        v.as_str().expect("env values are strings").to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    env.push(("DATABASE_URL".into(), db.url.clone()));
    env.push(("AGENTCRM_API_KEY".into(), db.admin_key.clone()));
    command.envs(env.iter().map(|(k, v)| (k, v)));
    (command, env)
}

#[tokio::test]
async fn claude_desktop_config_entry_serves_mcp() {
    let db = TestDb::new().await;

    // Spoken to as Claude Desktop does: the `initialize` handshake over the child's stdio.
    let (command, env) = claude_desktop_command(&db);
    let client = stdio_client(command, Generation::Sessions).await;
    let info = client.peer_info().expect("server info");
    assert_eq!(
        info.server_info.as_ref().map(|s| s.name.as_str()),
        Some("agentcrm")
    );
    assert_eq!(info.protocol_version.as_str(), "2025-11-25");
    let tools = client.list_all_tools().await.expect("tools/list");
    let names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
    assert_eq!(names, all_tool_names());
    let me = call_ok(&client, "whoami", json!({})).await;
    assert_eq!(me["transport"], "stdio", "{me}");
    assert_eq!(me["principal"]["kind"], "api_key");
    assert_eq!(me["principal"]["role"], "admin");
    assert_eq!(me["tenant"]["slug"], "acme");
    client.cancel().await.expect("close client");

    // The same command, byte for byte: from the first byte to the exit at end of input,
    // stdout carries JSON-RPC messages only, one a line.
    let (mut command, _) = claude_desktop_command(&db);
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the configured command");
    let mut stdin = child.stdin.take().unwrap();
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let errors = std::thread::spawn(move || {
        BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<_>>()
    });
    let mut seen = Vec::new();
    let mut answer = |id: u64| -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let line = lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .unwrap_or_else(|_| panic!("no answer to request {id}; stdout so far: {seen:?}"));
            let message: Value = serde_json::from_str(&line)
                .unwrap_or_else(|_| panic!("stdout carries only MCP, got: {line:?}"));
            assert_eq!(message["jsonrpc"], "2.0", "{line}");
            seen.push(line);
            if message["id"] == id {
                return message;
            }
        }
    };
    let mut send = |message: Value| {
        writeln!(stdin, "{message}").expect("write to the server");
        stdin.flush().unwrap();
    };
    send(initialize_request(1));
    assert_eq!(answer(1)["result"]["serverInfo"]["name"], "agentcrm");
    send(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
    send(json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                "params": {"name": "whoami", "arguments": {}}}));
    let whoami = answer(2);
    assert_eq!(
        whoami["result"]["structuredContent"]["principal"]["kind"], "api_key",
        "{whoami}"
    );
    // Claude Desktop closes stdin to stop a server: it exits, adding nothing to stdout.
    drop(stdin);
    let status = wait_timeout(&mut child, Duration::from_secs(30)).expect("exits at end of input");
    assert!(status.success(), "{status}");
    let rest: Vec<String> = lines.iter().collect();
    for line in &rest {
        let message: Value = serde_json::from_str(line)
            .unwrap_or_else(|_| panic!("stdout carries only MCP, got at exit: {line:?}"));
        assert_eq!(message["jsonrpc"], "2.0", "{line}");
    }
    // The entry's env reached the server: with RUST_LOG=warn, logs are warnings at most.
    let log = errors.join().unwrap();
    if env.iter().any(|(k, v)| k == "RUST_LOG" && v == "warn") {
        assert!(
            log.iter()
                .all(|l| !l.contains(" INFO ") && !l.contains(" DEBUG ")),
            "RUST_LOG=warn keeps stderr short: {log:?}"
        );
    }
}

/// A key cannot step up to more scope (only a person's token from the authorization code
/// grant can): a tool it lacks is refused as the tool's own result, naming the scope, and
/// both SDKs hand that text on, rather than a transport error the model never sees.
#[tokio::test]
async fn refusals_reach_python_and_typescript_clients_as_readable_results() {
    let db = TestDb::new().await;
    let narrow = db.api_key("owner@acme.test", &["customers:read", "customers:write"]);
    let server = HttpServer::start(db.command(&["http"]));
    let header = format!("X-Api-Key: {narrow}");
    let python = run(Command::new(python()).arg(script()).args([
        "http",
        &server.mcp_url(),
        "--header",
        &header,
    ]));
    let ts = run(ts_client().args(["http", &server.mcp_url(), "--header", &header]));
    for (who, report) in [("python", &python), ("typescript", &ts)] {
        let refused = report["refused_tool"]
            .as_str()
            .unwrap_or_else(|| panic!("{who} was not refused: {report}"));
        assert!(
            refused.starts_with("isError result") && refused.contains("admin"),
            "{who}: {refused}"
        );
    }
}
