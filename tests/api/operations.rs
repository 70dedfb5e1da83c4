//! Operating the server (issue 21): logs a log shipper can read.

use serde_json::{Value, json};

use crate::helpers::*;

/// `--log-format json`: every line on stderr is one JSON object with a time, a level, a
/// target and a message; a tool call's line names its tool, transport and request id (the
/// span it ran in), never its arguments.
#[tokio::test]
async fn json_logs_are_one_object_a_line() {
    let db = TestDb::new().await;
    let mut command = db.command(&["http", "--log-format", "json"]);
    command.env_remove("RUST_LOG");
    let server = HttpServer::start(command);
    let client = http_client(&server.mcp_url(), &db.admin_key, Generation::Stateless).await;
    call_ok(
        &client,
        "create_customer",
        json!({ "first_name": "Secret-Argument", "email": "s@example.com" }),
    )
    .await;
    client.cancel().await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let lines = loop {
        let lines = server.log.lock().unwrap().clone();
        if lines.iter().any(|l| l.contains("tool call succeeded")) {
            break lines;
        }
        assert!(std::time::Instant::now() < deadline, "{lines:#?}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    for line in &lines {
        let entry: Value =
            serde_json::from_str(line).unwrap_or_else(|_| panic!("not one JSON object: {line}"));
        for key in ["timestamp", "level", "target", "message"] {
            assert!(entry.get(key).is_some(), "no {key}: {line}");
        }
    }
    let call: Value = lines
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|e| e["message"] == "tool call succeeded")
        .unwrap();
    let span = call["spans"]
        .as_array()
        .and_then(|spans| spans.iter().find(|s| s["name"] == "tool"))
        .unwrap_or_else(|| panic!("the tool span: {call}"));
    assert_eq!(span["tool"], "create_customer", "{call}");
    assert_eq!(span["transport"], "http", "{call}");
    assert!(span["request_id"].is_string(), "{call}");
    assert!(call["elapsed_ms"].is_number(), "{call}");
    assert!(
        !lines.iter().any(|l| l.contains("Secret-Argument")),
        "arguments never reach the log"
    );
}
