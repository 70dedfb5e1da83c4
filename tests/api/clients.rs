//! Independent MCP clients: the official Python SDK, over stdio and streamable HTTP.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

use crate::helpers::*;

/// The interpreter with the pinned `mcp` package (`scripts/test` installs it in `.venv`).
fn python() -> PathBuf {
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

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/clients/python_client.py")
}

fn run(command: &mut Command) -> Value {
    let out = command.output().expect("run the Python client");
    assert!(
        out.status.success(),
        "python client failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the client prints one JSON object")
}

/// `auto` negotiates the stateless 2026-07-28; `legacy` the `initialize` handshake of 2025-11-25.
const MODES: [(&str, &str); 2] = [("auto", "2026-07-28"), ("legacy", "2025-11-25")];

fn assert_report(report: &Value, transport: &str, version: &str) {
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
