//! Compact discovery mode: `tools/list` offers only find_tools, describe_tools and
//! run_tool (by configuration, or narrowed to it by a request header), and run_tool calls
//! pass exactly the checks of a direct call. Also the size of `tools/list` for a full-scope
//! caller, a read-only agent and compact mode.

use serde_json::{Value, json};
use sqlx::Connection;

use crate::helpers::*;

const DISCOVERY: [&str; 3] = ["find_tools", "describe_tools", "run_tool"];

async fn listed(client: &Client) -> Vec<String> {
    client
        .list_all_tools()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name.to_string())
        .collect()
}

/// The bytes of a `tools/list` result as a client receives it (compact JSON).
async fn list_bytes(client: &Client) -> usize {
    let tools = client.list_all_tools().await.unwrap();
    serde_json::to_vec(&json!({ "tools": tools }))
        .unwrap()
        .len()
}

#[tokio::test]
async fn compact_mode_finds_describes_and_runs_tools_with_the_checks_of_a_direct_call() {
    let db = TestDb::new().await;
    let mut command = db.command(&["stdio", "--tool-mode", "compact"]);
    command.env("RUST_LOG", "warn");
    let client = stdio_client(command, Generation::Sessions).await;
    assert_eq!(listed(&client).await, DISCOVERY);

    let found = call_ok(&client, "find_tools", json!({"query": "invoices"})).await;
    let names: Vec<&str> = found["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"create_invoice") && names.contains(&"list_invoices"),
        "{found}"
    );
    assert!(!names.contains(&"find_tools"));
    let crm = call_ok(
        &client,
        "find_tools",
        json!({"query": "", "toolset": "agents", "limit": 50}),
    )
    .await;
    assert!(
        crm["tools"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["toolset"] == "agents")
    );
    let bad = call(&client, "find_tools", json!({"toolset": "nope"})).await;
    assert_eq!(error_code(&bad), "invalid_request");

    let described = call_ok(
        &client,
        "describe_tools",
        json!({"names": ["create_customer", "no_such_tool"]}),
    )
    .await;
    assert_eq!(described["tools"][0]["name"], "create_customer");
    assert!(described["tools"][0]["inputSchema"]["properties"]["email"].is_object());
    assert!(described["tools"][0]["annotations"]["readOnlyHint"].is_boolean());
    assert_eq!(described["unknown"], json!(["no_such_tool"]));

    // run_tool is the named call: its result, its audit record.
    let created = call_ok(
        &client,
        "run_tool",
        json!({"name": "create_customer",
               "arguments": {"first_name": "Rui", "last_name": "Tool", "email": "rui@example.com"}}),
    )
    .await;
    assert_eq!(created["customer"]["first_name"], "Rui");
    let invalid = call(
        &client,
        "run_tool",
        json!({"name": "create_customer", "arguments": {"first_name": 7}}),
    )
    .await;
    assert_eq!(error_code(&invalid), "invalid_request");
    let nested = call(
        &client,
        "run_tool",
        json!({"name": "run_tool", "arguments": {"name": "whoami"}}),
    )
    .await;
    assert_eq!(error_code(&nested), "invalid_request");
    let unknown = client
        .call_tool(
            rmcp::model::CallToolRequestParams::new("run_tool")
                .with_arguments(json!({"name": "no_such_tool"}).as_object().unwrap().clone()),
        )
        .await;
    assert!(
        unknown.is_err(),
        "an unknown tool is refused like a direct call"
    );
    client.cancel().await.unwrap();

    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let audited: Vec<String> =
        sqlx::query_scalar("SELECT action FROM audit_events WHERE kind = 'tool' ORDER BY id")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    assert!(
        audited.contains(&"create_customer".to_owned()),
        "{audited:?}"
    );
    // Unwrapped calls are audited under their own names; only the refused nested one is not.
    assert_eq!(
        audited.iter().filter(|a| *a == "run_tool").count(),
        1,
        "{audited:?}"
    );

    // An agent in compact mode finds only what it may use, and run_tool refuses the rest.
    let agent = db.admin(&[
        "create-agent",
        "--tenant",
        "acme",
        "--name",
        "reader",
        "--scopes",
        "customers:read",
    ]);
    let mut command = db.server(&["stdio", "--tool-mode", "compact"]);
    command
        .env("AGENTCRM_CLIENT_ID", agent["client_id"].as_str().unwrap())
        .env(
            "AGENTCRM_CLIENT_SECRET",
            agent["client_secret"].as_str().unwrap(),
        );
    let as_agent = stdio_client(command, Generation::Stateless).await;
    let found = call_ok(
        &as_agent,
        "find_tools",
        json!({"query": "customer", "limit": 50}),
    )
    .await;
    let names: Vec<&str> = found["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"get_customer"));
    assert!(
        !names.contains(&"delete_customer") && !names.contains(&"create_customer"),
        "{names:?}"
    );
    let refused = call(
        &as_agent,
        "run_tool",
        json!({"name": "create_customer", "arguments": {"first_name": "No"}}),
    )
    .await;
    assert_eq!(error_code(&refused), "forbidden");
    let listed_customers = call_ok(&as_agent, "run_tool", json!({"name": "list_customers"})).await;
    assert_eq!(listed_customers["total"], 1);
    as_agent.cancel().await.unwrap();
}

#[tokio::test]
async fn a_header_narrows_http_callers_to_compact_but_never_back() {
    let db = TestDb::new().await;
    let full = HttpServer::start(db.command(&["http"]));
    let compact = HttpServer::start(db.command(&["http", "--tool-mode", "compact"]));
    let agent = db.admin(&[
        "create-agent", "--tenant", "acme", "--name", "reader",
        "--scopes", "customers:read,interactions:read,search,reports,invoices:read,workflows:read,agents:read,connections:read",
    ]);

    let admin = http_client(&full.mcp_url(), &db.admin_key, Generation::Sessions).await;
    let full_names = listed(&admin).await;
    assert_eq!(full_names, all_tool_names());
    let full_bytes = list_bytes(&admin).await;
    admin.cancel().await.unwrap();

    // A narrowing header: compact for this caller only.
    let narrowed = http_client_with_headers(
        &full.mcp_url(),
        &db.admin_key,
        &[("x-mcp-tool-mode", "compact")],
    )
    .await;
    assert_eq!(listed(&narrowed).await, DISCOVERY);
    let compact_bytes = list_bytes(&narrowed).await;
    narrowed.cancel().await.unwrap();

    // On a compact server, `full` in the header does not widen.
    let widened = http_client_with_headers(
        &compact.mcp_url(),
        &db.admin_key,
        &[("x-mcp-tool-mode", "full")],
    )
    .await;
    assert_eq!(listed(&widened).await, DISCOVERY);
    widened.cancel().await.unwrap();

    let token = reqwest::Client::new()
        .post(format!("{}/oauth/token", full.base))
        .json(
            &json!({"grant_type": "client_credentials", "client_id": agent["client_id"],
                      "client_secret": agent["client_secret"]}),
        )
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    let reader = http_client(
        &full.mcp_url(),
        token["access_token"].as_str().unwrap(),
        Generation::Sessions,
    )
    .await;
    let reader_bytes = list_bytes(&reader).await;
    reader.cancel().await.unwrap();

    eprintln!(
        "tools/list bytes: full-scope caller {full_bytes}, read-only agent {reader_bytes}, compact {compact_bytes}"
    );
    assert!(
        compact_bytes <= 4 * 1024,
        "compact tools/list is {compact_bytes} bytes"
    );
    // The catalog grows with the product, so the budget is per tool: on average a tool's
    // listing (name, title, summary, lean input schema, hints) stays within 640 bytes. A
    // deployment that lists fewer tools (--toolsets, compact mode) pays for fewer.
    let tools = all_tool_names().len();
    assert!(
        full_bytes <= 640 * tools,
        "tools/list for every tool is {full_bytes} bytes for {tools} tools: more than 640 a tool"
    );
    assert!(reader_bytes < full_bytes);
}
