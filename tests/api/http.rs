//! Streamable HTTP at /mcp: both protocol generations, request-header narrowing, the
//! DNS-rebinding and body-size protections, health and graceful shutdown.

use serde_json::{Value, json};

use crate::helpers::*;

fn server(db: &TestDb, extra: &[&str]) -> HttpServer {
    let mut args = vec!["http"];
    args.extend_from_slice(extra);
    HttpServer::start(db.command(&args))
}

#[tokio::test]
async fn tools_are_listed_with_output_schemas_when_configured() {
    let db = TestDb::new().await;
    let server = server(&db, &["--list-output-schemas"]);
    let client = http_client(&server.mcp_url(), &db.admin_key, Generation::Sessions).await;
    let tools = client.list_all_tools().await.expect("tools/list");
    for tool in &tools {
        assert!(
            tool.output_schema.is_some(),
            "{} has an output schema",
            tool.name
        );
    }
    let described = call_ok(
        &client,
        "describe_tools",
        json!({"names": ["get_customer"]}),
    )
    .await;
    assert!(
        described["tools"][0]["outputSchema"].is_object(),
        "{described}"
    );
    client.cancel().await.unwrap();
}

#[tokio::test]
async fn http_serves_both_protocol_generations() {
    let db = TestDb::new().await;
    let server = server(&db, &[]);
    for generation in [Generation::Sessions, Generation::Stateless] {
        let client = http_client(&server.mcp_url(), &db.admin_key, generation).await;
        let tools = client.list_all_tools().await.expect("tools/list");
        assert_eq!(tools.len(), all_tool_names().len());
        // Lean by default: output schemas come with describe_tools (or --list-output-schemas).
        for tool in &tools {
            assert!(tool.output_schema.is_none(), "{} is listed lean", tool.name);
            assert!(!tool.input_schema.contains_key("$schema"));
        }
        let me = call_ok(&client, "whoami", json!({})).await;
        assert_eq!(me["transport"], "http");
        assert_eq!(me["principal"]["role"], "admin");
        match generation {
            // The 2025-11-25 generation keeps a session; its id reaches the tool.
            Generation::Sessions => assert!(
                me["session_id"].as_str().is_some_and(|s| !s.is_empty()),
                "{me}"
            ),
            Generation::Stateless => assert_eq!(me["session_id"], Value::Null),
        }
        let result = call(&client, "whoami", json!({ "extra": true })).await;
        assert_eq!(result.is_error, Some(true));
        assert_eq!(
            result.structured_content.unwrap()["error"],
            "invalid_request"
        );
        client.cancel().await.expect("close");
    }
}

/// One stateless (2026-07-28) JSON-RPC request, with extra headers; returns (status, body).
async fn stateless(
    url: &str,
    key: &str,
    method: &str,
    mut params: Value,
    headers: &[(&str, &str)],
) -> (u16, Value) {
    params["_meta"] = json!({
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientInfo": { "name": "raw-test", "version": "1" },
        "io.modelcontextprotocol/clientCapabilities": {}
    });
    let mut request = reqwest::Client::new()
        .post(url)
        .header("Content-Type", "application/json")
        .header("Accept", "application/json, text/event-stream")
        .header("MCP-Protocol-Version", "2026-07-28")
        .header("Mcp-Method", method);
    if !key.is_empty() {
        request = request.header("X-Api-Key", key.to_owned());
    }
    if let Some(name) = params.get("name").and_then(Value::as_str) {
        request = request.header("Mcp-Name", name.to_owned());
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let body = json!({ "jsonrpc": "2.0", "id": 7, "method": method, "params": params });
    let response = request.json(&body).send().await.expect("POST /mcp");
    let status = response.status().as_u16();
    (status, read_message(response).await)
}

/// The JSON-RPC message of a response, whether sent as JSON or as an SSE stream.
pub async fn read_message(response: reqwest::Response) -> Value {
    let is_sse = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    let text = response.text().await.unwrap_or_default();
    if !is_sse {
        return serde_json::from_str(&text).unwrap_or(Value::String(text));
    }
    text.lines()
        .filter_map(|line| line.strip_prefix("data:"))
        .filter_map(|data| serde_json::from_str::<Value>(data.trim()).ok())
        .find(|message| message.get("id").is_some())
        .unwrap_or(Value::Null)
}

fn tool_names(list: &Value) -> Vec<String> {
    list["result"]["tools"]
        .as_array()
        .map(|tools| {
            tools
                .iter()
                .map(|t| t["name"].as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn http_request_headers_narrow_but_never_widen() {
    let db = TestDb::new().await;
    let narrow = server(&db, &[]);
    let url = narrow.mcp_url();

    let (status, all) = stateless(&url, &db.admin_key, "tools/list", json!({}), &[]).await;
    assert_eq!(status, 200);
    assert_eq!(tool_names(&all), all_tool_names());

    let (_, only) = stateless(
        &url,
        &db.admin_key,
        "tools/list",
        json!({}),
        &[("X-MCP-Tools", "whoami")],
    )
    .await;
    assert_eq!(tool_names(&only), ["whoami"]);
    let (_, hidden) = stateless(
        &url,
        &db.admin_key,
        "tools/call",
        json!({ "name": "server_info", "arguments": {} }),
        &[("X-MCP-Tools", "whoami")],
    )
    .await;
    assert_eq!(
        hidden["error"]["message"], "Unknown tool: server_info",
        "{hidden}"
    );

    let (_, none) = stateless(
        &url,
        &db.admin_key,
        "tools/list",
        json!({}),
        &[("X-MCP-Toolsets", "crm")],
    )
    .await;
    let crm = toolset_tool_names(agentcrm::toolkit::catalog::Toolset::Crm);
    assert!(!crm.is_empty());
    assert_eq!(tool_names(&none), crm, "only the crm toolset");
    let (_, bad) = stateless(
        &url,
        &db.admin_key,
        "tools/list",
        json!({}),
        &[("X-MCP-Toolsets", "nonsense")],
    )
    .await;
    assert!(
        bad["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("unknown toolset `nonsense`"),
        "{bad}"
    );

    // The configuration hid server_info: no header brings it back.
    let configured = server(&db, &["--tools", "whoami"]);
    let (_, widened) = stateless(
        &configured.mcp_url(),
        &db.admin_key,
        "tools/list",
        json!({}),
        &[("X-MCP-Tools", "whoami,server_info")],
    )
    .await;
    assert_eq!(tool_names(&widened), ["whoami"]);

    // server_info reports what this request sees.
    let (_, info) = stateless(
        &url,
        &db.admin_key,
        "tools/call",
        json!({ "name": "server_info", "arguments": {} }),
        &[("X-MCP-Exclude-Tools", "whoami")],
    )
    .await;
    assert_eq!(
        info["result"]["structuredContent"]["tool_count"],
        all_tool_names().len() - 1,
        "{info}"
    );
}

#[tokio::test]
async fn http_refuses_rebinding_oversized_and_malformed_requests() {
    let db = TestDb::new().await;
    let server = server(&db, &["--max-body-bytes", "4096"]);
    let url = server.mcp_url();

    let (status, _) = stateless(
        &url,
        &db.admin_key,
        "tools/list",
        json!({}),
        &[("Host", "evil.example")],
    )
    .await;
    assert_eq!(status, 403, "a foreign Host header is refused");
    let (status, _) = stateless(
        &url,
        &db.admin_key,
        "tools/list",
        json!({}),
        &[("Origin", "https://evil.example")],
    )
    .await;
    assert_eq!(status, 403, "a foreign Origin is refused");
    let (status, ok) = stateless(
        &url,
        &db.admin_key,
        "tools/list",
        json!({}),
        &[("Origin", "http://localhost:6274")],
    )
    .await;
    assert_eq!(status, 200, "a loopback Origin is accepted: {ok}");

    let (status, _) = stateless(
        &url,
        &db.admin_key,
        "tools/call",
        json!({ "name": "whoami", "arguments": { "pad": "x".repeat(10_000) } }),
        &[],
    )
    .await;
    assert_eq!(status, 413, "bodies over --max-body-bytes are refused");

    let response = reqwest::Client::new()
        .post(&url)
        .header("X-Api-Key", &db.admin_key)
        .header("Content-Type", "application/json")
        .header("Accept", "application/json, text/event-stream")
        .body("{\"jsonrpc\": \"2.0\", \"id\": 1, \"method\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    let body = read_message(response).await;
    assert!(
        body.to_string().to_lowercase().contains("parse") || body.to_string().contains("-32700"),
        "{body}"
    );

    // Nothing of this reached the tenants table: the server still answers as before.
    let (_, me) = stateless(
        &url,
        &db.admin_key,
        "tools/call",
        json!({ "name": "whoami", "arguments": {} }),
        &[],
    )
    .await;
    assert_eq!(me["result"]["structuredContent"]["tenant"]["slug"], "acme");
}

#[tokio::test]
async fn http_allowed_hosts_are_configurable_for_proxies() {
    let db = TestDb::new().await;
    let server = server(
        &db,
        &[
            "--allowed-hosts",
            "crm.example.com",
            "--allowed-origins",
            "https://crm.example.com",
        ],
    );
    let url = server.mcp_url();
    let (status, _) = stateless(
        &url,
        &db.admin_key,
        "tools/list",
        json!({}),
        &[("Host", "crm.example.com")],
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = stateless(&url, &db.admin_key, "tools/list", json!({}), &[]).await;
    assert_eq!(status, 403, "127.0.0.1 is no longer an allowed host");
    let (status, _) = stateless(
        &url,
        &db.admin_key,
        "tools/list",
        json!({}),
        &[
            ("Host", "crm.example.com"),
            ("Origin", "https://crm.example.com"),
        ],
    )
    .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn http_sessions_end_with_delete_and_shutdown_is_graceful() {
    let db = TestDb::new().await;
    let mut server = server(&db, &[]);
    let url = server.mcp_url();
    let http = reqwest::Client::new();

    let health = http
        .get(format!("{}/healthz", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status().as_u16(), 200);

    let init = http
        .post(&url)
        .header("X-Api-Key", &db.admin_key)
        .header("Accept", "application/json, text/event-stream")
        .json(&initialize_request(1))
        .send()
        .await
        .unwrap();
    assert_eq!(init.status().as_u16(), 200);
    let session = init
        .headers()
        .get("mcp-session-id")
        .expect("a session id")
        .to_str()
        .unwrap()
        .to_owned();
    let _ = read_message(init).await;
    let deleted = http
        .delete(&url)
        .header("X-Api-Key", &db.admin_key)
        .header("Mcp-Session-Id", &session)
        .header("MCP-Protocol-Version", "2025-11-25")
        .send()
        .await
        .unwrap();
    assert!(
        deleted.status().is_success(),
        "DELETE ends the session: {}",
        deleted.status()
    );
    let after = http
        .post(&url)
        .header("X-Api-Key", &db.admin_key)
        .header("Accept", "application/json, text/event-stream")
        .header("Mcp-Session-Id", &session)
        .header("MCP-Protocol-Version", "2025-11-25")
        .json(&json!({ "jsonrpc": "2.0", "id": 2, "method": "tools/list" }))
        .send()
        .await
        .unwrap();
    assert_eq!(after.status().as_u16(), 404, "an ended session is gone");

    let status = server.stop();
    assert!(status.success(), "SIGTERM exits cleanly: {status:?}");
    assert!(
        server
            .log
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("SIGTERM received"))
    );
}

#[tokio::test]
async fn http_without_valid_credentials_gets_401_with_a_challenge() {
    let db = TestDb::new().await;
    let server = server(&db, &[]);
    let url = server.mcp_url();

    let (status, body) = stateless(&url, "", "tools/list", json!({}), &[]).await;
    assert_eq!(status, 401);
    assert_eq!(body["error"], "unauthorized");
    let response = reqwest::Client::new()
        .post(&url)
        .json(&initialize_request(1))
        .send()
        .await
        .unwrap();
    let challenge = response.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        challenge.starts_with("Bearer resource_metadata=\""),
        "{challenge}"
    );
    assert!(
        challenge.contains("/.well-known/oauth-protected-resource"),
        "{challenge}"
    );

    for bad in ["acrm_forged", "'; DROP TABLE api_keys; --", ""] {
        let (status, body) = stateless(
            &url,
            "",
            "tools/list",
            json!({}),
            &[("Authorization", &format!("Bearer {bad}"))],
        )
        .await;
        assert_eq!(status, 401, "{bad}: {body}");
    }
    let response = reqwest::Client::new()
        .post(&url)
        .header("X-Api-Key", "acrm_forged")
        .json(&initialize_request(1))
        .send()
        .await
        .unwrap();
    let challenge = response.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(challenge.contains("error=\"invalid_token\""), "{challenge}");

    // The valid key still works, over both the header and the bearer form.
    let (status, _) = stateless(&url, &db.admin_key, "tools/list", json!({}), &[]).await;
    assert_eq!(status, 200);
    let (status, _) = stateless(
        &url,
        "",
        "tools/list",
        json!({}),
        &[("Authorization", &format!("Bearer {}", db.admin_key))],
    )
    .await;
    assert_eq!(status, 200);
}
