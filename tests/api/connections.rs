//! Connections over MCP against real local services: credentials sealed and never shown,
//! tested before and after saving, status from what the service answered; a remote MCP
//! server (an rmcp server in the test) whose tools join the catalog and run in workflows
//! under this server's scopes and audit, its token never reaching a caller.

use serde_json::json;
use sqlx::{Connection, Row};

use crate::fake_llm::{FakeLlm, Flavor, Reply};
use crate::fake_mcp::FakeMcp;
use crate::helpers::*;

const LLM_KEY: &str = "sk-test-0123456789abcdefSECRET";
const MCP_TOKEN: &str = "remote-token-abcdef0123456789";

/// Everything stored or shown anywhere a secret could leak to.
async fn leaks(db: &TestDb, secret: &str) -> Vec<String> {
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let mut found = Vec::new();
    for (what, sql) in [
        (
            "connections",
            "SELECT count(*) FROM connections WHERE config::text LIKE $1 OR encode(secret_encrypted, 'escape') LIKE $1",
        ),
        (
            "audit",
            "SELECT count(*) FROM audit_events WHERE coalesce(arguments::text, '') LIKE $1",
        ),
        (
            "catalog",
            "SELECT count(*) FROM tool_catalog WHERE input_schema::text LIKE $1 OR description LIKE $1",
        ),
        (
            "workflow steps",
            "SELECT count(*) FROM workflow_step_runs WHERE coalesce(arguments::text, '') || coalesce(output::text, '') LIKE $1",
        ),
    ] {
        let n: i64 = sqlx::query_scalar(sql)
            .bind(format!("%{secret}%"))
            .fetch_one(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        if n > 0 {
            found.push(what.to_owned());
        }
    }
    found
}

#[tokio::test]
async fn credentials_are_sealed_tested_and_never_shown() {
    let db = TestDb::new().await;
    let llm = FakeLlm::start_with_key(Flavor::OpenAi, vec![Reply::text("hi")], LLM_KEY).await;
    let client = stdio_client(db.command(&["stdio"]), Generation::Sessions).await;

    let platforms = call_ok(&client, "list_platforms", json!({})).await;
    let names: Vec<&str> = platforms["platforms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["platform"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["openai", "anthropic", "mcp", "http"]);
    assert!(
        platforms["platforms"][2]["config_schema"]["properties"]["url"].is_object(),
        "{platforms}"
    );
    assert!(platforms["platforms"][0]["credentials_schema"]["properties"]["api_key"].is_object());

    // Tested before saving: a wrong key is refused by the provider, nothing is saved.
    let wrong = call_ok(
        &client,
        "test_new_connection",
        json!({"platform": "openai", "config": {"base_url": llm.base_url},
               "credentials": {"api_key": "sk-wrong"}}),
    )
    .await;
    assert_eq!(wrong["ok"], false, "{wrong}");
    assert_eq!(wrong["status"], "expired");
    let right = call_ok(
        &client,
        "test_new_connection",
        json!({"platform": "openai", "config": {"base_url": llm.base_url},
               "credentials": {"api_key": LLM_KEY}}),
    )
    .await;
    assert_eq!(right["ok"], true, "{right}");
    let listed = call_ok(&client, "list_connections", json!({})).await;
    assert_eq!(listed["total"], 0);

    let created = call_ok(
        &client,
        "create_connection",
        json!({"platform": "openai", "name": "local-llm", "description": "fake provider",
               "config": {"base_url": llm.base_url, "default_model": "fake-1"},
               "credentials": {"api_key": LLM_KEY}}),
    )
    .await;
    let connection = &created["connection"];
    assert_eq!(connection["status"], "active");
    assert_eq!(connection["has_credentials"], true);
    assert!(!created.to_string().contains(LLM_KEY));
    let tested = call_ok(
        &client,
        "test_connection",
        json!({"connection": "local-llm"}),
    )
    .await;
    assert_eq!(tested["ok"], true, "{tested}");
    assert!(
        llm.credentials().iter().any(|c| c.contains(LLM_KEY)),
        "the stored key reached the provider"
    );

    // The key rotates away: the next test says the credentials were refused.
    call_ok(
        &client,
        "update_connection",
        json!({"connection": "local-llm", "credentials": {"api_key": "sk-revoked"}}),
    )
    .await;
    let tested = call_ok(
        &client,
        "test_connection",
        json!({"connection": "local-llm"}),
    )
    .await;
    assert_eq!(tested["ok"], false);
    let listed = call_ok(&client, "list_connections", json!({"status": "expired"})).await;
    assert_eq!(listed["total"], 1, "{listed}");
    assert!(
        listed["connections"][0]["status_error"]
            .as_str()
            .unwrap()
            .contains("401")
    );
    // Config changes keep the credentials; the name is unique.
    call_ok(
        &client,
        "update_connection",
        json!({"connection": "local-llm", "credentials": {"api_key": LLM_KEY},
               "config": {"default_model": "fake-2"}}),
    )
    .await;
    let listed = call_ok(&client, "list_connections", json!({})).await;
    let only = &listed["connections"][0];
    assert_eq!(only["config"]["default_model"], "fake-2");
    assert_eq!(only["config"]["base_url"], llm.base_url.as_str());
    assert_eq!(only["status"], "active");

    // Bad input: a clear error, nothing created.
    for (args, code) in [
        (
            json!({"platform": "smtp", "name": "x", "config": {}}),
            "invalid_request",
        ),
        (
            json!({"platform": "openai", "name": "Bad Name'; DROP TABLE connections;--", "config": {}}),
            "invalid_request",
        ),
        (
            json!({"platform": "openai", "name": "x", "config": {"base_url": "ftp://nope"}}),
            "invalid_request",
        ),
        (
            json!({"platform": "openai", "name": "x", "config": {"unknown": 1}}),
            "invalid_request",
        ),
        (
            json!({"platform": "anthropic", "name": "x", "config": {}}),
            "invalid_request",
        ),
        (
            json!({"platform": "openai", "name": "local-llm", "config": {"base_url": llm.base_url}}),
            "conflict",
        ),
    ] {
        let result = call(&client, "create_connection", args.clone()).await;
        assert_eq!(error_code(&result), code, "{args}");
    }
    let listed = call_ok(&client, "list_connections", json!({})).await;
    assert_eq!(listed["total"], 1);
    let unknown = call(&client, "test_connection", json!({"connection": "nope"})).await;
    assert_eq!(error_code(&unknown), "not_found");

    assert!(
        leaks(&db, LLM_KEY).await.is_empty(),
        "{:?}",
        leaks(&db, LLM_KEY).await
    );
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let sealed: Vec<u8> = sqlx::query("SELECT secret_encrypted FROM connections")
        .fetch_one(&mut conn)
        .await
        .unwrap()
        .get(0);
    assert!(
        !sealed
            .windows(LLM_KEY.len())
            .any(|w| w == LLM_KEY.as_bytes())
    );

    let deleted = call_ok(
        &client,
        "delete_connection",
        json!({"connection": "local-llm"}),
    )
    .await;
    assert!(deleted["deleted"].is_string());
    let listed = call_ok(&client, "list_connections", json!({})).await;
    assert_eq!(listed["total"], 0);
    client.cancel().await.unwrap();
}

#[tokio::test]
async fn remote_mcp_tools_join_the_catalog_and_run_in_workflows() {
    let db = TestDb::new().await;
    let remote = FakeMcp::start(Some(MCP_TOKEN)).await;
    let server = HttpServer::start(db.command(&["http"]));
    let client = http_client(&server.mcp_url(), &db.admin_key, Generation::Sessions).await;

    let created = call_ok(
        &client,
        "create_connection",
        json!({"platform": "mcp", "name": "weather", "config": {"url": remote.url},
               "credentials": {"bearer_token": MCP_TOKEN}}),
    )
    .await;
    assert_eq!(created["tools_imported"], 3, "{created}");
    assert!(
        remote
            .authorizations()
            .iter()
            .all(|a| a == &format!("Bearer {MCP_TOKEN}")),
        "the remote server got the token"
    );

    let catalog = call_ok(&client, "list_tool_catalog", json!({"service": "weather"})).await;
    let names: Vec<&str> = catalog["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "weather__always_fails",
            "weather__create_ticket",
            "weather__lookup_weather"
        ]
    );
    let own = call_ok(
        &client,
        "list_tool_catalog",
        json!({"service": "agentcrm", "search": "customer", "limit": 5}),
    )
    .await;
    assert!(own["total"].as_i64().unwrap() > 5, "{own}");
    let entry = call_ok(
        &client,
        "get_tool_catalog_entry",
        json!({"name": "weather__lookup_weather"}),
    )
    .await;
    assert_eq!(entry["service"], "weather");
    assert_eq!(entry["read_only"], true);
    assert!(
        entry["input_schema"]["properties"]["city"].is_object(),
        "{entry}"
    );
    assert_eq!(entry["scopes"], json!(["connections:write"]));

    // A workflow chains a remote tool into one of ours and another remote one.
    let workflow = call_ok(
        &client,
        "create_workflow",
        json!({
            "name": "weather ticket",
            "steps": [
                {"id": "w", "tool": "weather__lookup_weather", "arguments": {"city": "{{input.city}}"}},
                {"id": "c", "tool": "create_customer", "arguments": {"first_name": "Wendy", "last_name": "Weather", "email": "wendy@example.com"}},
                {"id": "t", "tool": "weather__create_ticket",
                 "arguments": {"title": "Forecast {{steps.w.output.forecast}} for {{steps.c.output.customer.first_name}}"}}
            ]
        }),
    )
    .await;
    let run = call_ok(
        &client,
        "execute_workflow",
        json!({"workflow_id": workflow["workflow"]["id"], "input_data": {"city": "Lyon"}}),
    )
    .await;
    assert_eq!(run["execution"]["status"], "succeeded", "{run}");
    assert_eq!(
        run["execution"]["output"]["title"],
        "Forecast sunny for Wendy"
    );
    let calls = remote.calls();
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert_eq!(calls[0], ("lookup_weather".into(), json!({"city": "Lyon"})));
    assert_eq!(calls[1].0, "create_ticket");

    // A remote tool's failure is the step's failure, with the remote's words.
    let failing = call_ok(
        &client,
        "create_workflow",
        json!({"name": "fails", "steps": [{"id": "f", "tool": "weather__always_fails", "arguments": {}}]}),
    )
    .await;
    let run = call_ok(
        &client,
        "execute_workflow",
        json!({"workflow_id": failing["workflow"]["id"]}),
    )
    .await;
    assert_eq!(run["execution"]["status"], "failed");
    assert!(
        run["execution"]["error"]
            .as_str()
            .unwrap()
            .contains("remote failure"),
        "{run}"
    );
    let unknown = call(
        &client,
        "create_workflow",
        json!({"name": "unknown", "steps": [{"id": "u", "tool": "weather__nope", "arguments": {}}]}),
    )
    .await;
    assert_eq!(error_code(&unknown), "invalid_request");

    // An agent without the connection's scope sees no remote tools and cannot call them.
    let agent = db.admin(&[
        "create-agent",
        "--tenant",
        "acme",
        "--name",
        "reader",
        "--scopes",
        "connections:read,workflows:read,workflows:write,workflows:execute",
    ]);
    let as_agent = agent_client(&db, &agent).await;
    let seen = call_ok(
        &as_agent,
        "list_tool_catalog",
        json!({"service": "weather"}),
    )
    .await;
    assert_eq!(seen["total"], 0, "{seen}");
    let sneaky = call_ok(
        &as_agent,
        "create_workflow",
        json!({"name": "sneaky", "steps": [{"id": "w", "tool": "weather__lookup_weather", "arguments": {"city": "Paris"}}]}),
    )
    .await;
    let run = call_ok(
        &as_agent,
        "execute_workflow",
        json!({"workflow_id": sneaky["workflow"]["id"]}),
    )
    .await;
    assert_eq!(run["execution"]["status"], "failed");
    assert!(
        run["steps"][0]["error"]
            .as_str()
            .unwrap()
            .contains("connections:write"),
        "{run}"
    );
    assert_eq!(
        remote.calls().len(),
        3,
        "the refused call never left the server"
    );
    as_agent.cancel().await.unwrap();

    // Audited as ours, with transport workflow; the token appears nowhere.
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let audited: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_events WHERE action = 'weather__lookup_weather' AND transport = 'workflow'",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(audited, 2);
    assert!(leaks(&db, MCP_TOKEN).await.is_empty());

    // Refresh re-imports; a wrong token marks the connection expired with the reason.
    let refreshed = call_ok(&client, "refresh_tool_catalog", json!({})).await;
    assert_eq!(refreshed["refreshed"][0]["tools"], 3, "{refreshed}");
    call_ok(
        &client,
        "update_connection",
        json!({"connection": "weather", "credentials": {"bearer_token": "wrong"}}),
    )
    .await;
    let listed = call_ok(&client, "list_connections", json!({})).await;
    assert_eq!(listed["connections"][0]["status"], "expired", "{listed}");
    let run = call_ok(
        &client,
        "execute_workflow",
        json!({"workflow_id": workflow["workflow"]["id"], "input_data": {"city": "Nice"}}),
    )
    .await;
    assert_eq!(run["execution"]["status"], "failed");
    assert!(!run.to_string().contains("wrong"));
    client.cancel().await.unwrap();
}

#[tokio::test]
async fn a_prompt_agent_calls_remote_tools_without_seeing_their_token() {
    let db = TestDb::new().await;
    let remote = FakeMcp::start(Some(MCP_TOKEN)).await;
    let llm = FakeLlm::start(
        Flavor::Anthropic,
        vec![
            Reply::tool("weather__lookup_weather", json!({"city": "Oslo"})),
            Reply::text("It is sunny in Oslo."),
        ],
    )
    .await;
    let client = stdio_client(db.command(&["stdio"]), Generation::Sessions).await;
    call_ok(
        &client,
        "create_connection",
        json!({"platform": "mcp", "name": "weather", "config": {"url": remote.url},
               "credentials": {"bearer_token": MCP_TOKEN}}),
    )
    .await;
    call_ok(
        &client,
        "create_connection",
        json!({"platform": "anthropic", "name": "claude",
               "config": {"base_url": llm.base_url, "default_model": "fake-claude"},
               "credentials": {"api_key": LLM_KEY}}),
    )
    .await;
    call_ok(
        &client,
        "create_agent",
        json!({"name": "forecaster", "scopes": ["connections:write"],
               "config": {"connection": "claude",
                          "selected_tools": ["weather__lookup_weather", "weather__create_ticket"]}}),
    )
    .await;
    let run = call_ok(
        &client,
        "run_agent",
        json!({"agent": "forecaster", "prompt": "Weather in Oslo?"}),
    )
    .await;
    assert_eq!(run["status"], "success", "{run}");
    assert_eq!(run["tool_calls"][0]["output"]["forecast"], "sunny");
    assert_eq!(
        remote.calls(),
        [("lookup_weather".to_owned(), json!({"city": "Oslo"}))]
    );
    let requests = llm.requests();
    let offered: Vec<&str> = requests[0]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        offered,
        ["weather__lookup_weather", "weather__create_ticket"]
    );
    for request in &requests {
        assert!(
            !request.to_string().contains(MCP_TOKEN),
            "the model never sees the token"
        );
    }
    assert!(!run.to_string().contains(MCP_TOKEN));
    assert!(leaks(&db, MCP_TOKEN).await.is_empty());
    assert!(leaks(&db, LLM_KEY).await.is_empty());
    client.cancel().await.unwrap();
}

#[tokio::test]
async fn draft_workflow_works_through_an_llm_connection() {
    let db = TestDb::new().await;
    let draft = json!({
        "name": "Welcome new customers",
        "trigger_type": "event",
        "trigger_config": {"event": "customer.created"},
        "steps": [{"id": "note", "tool": "log_interaction",
                   "arguments": {"customer_id": "{{event.payload.id}}", "type": "note",
                                 "direction": "outbound", "subject": "Welcome"}}]
    });
    let llm = FakeLlm::start(
        Flavor::OpenAi,
        vec![
            Reply::Text(format!("Here it is:\n```json\n{draft}\n```")),
            Reply::text(
                "{\"name\": \"bad\", \"steps\": [{\"id\": \"x\", \"tool\": \"no_such_tool\"}]}",
            ),
        ],
    )
    .await;
    let client = stdio_client(db.command(&["stdio"]), Generation::Stateless).await;
    call_ok(
        &client,
        "create_connection",
        json!({"platform": "openai", "name": "drafter",
               "config": {"base_url": llm.base_url, "default_model": "fake-drafter"}}),
    )
    .await;
    let saved = call_ok(
        &client,
        "draft_workflow",
        json!({"description": "Log a welcome note for every new customer"}),
    )
    .await;
    assert_eq!(saved["workflow"]["status"], "draft", "{saved}");
    assert_eq!(saved["workflow"]["name"], "Welcome new customers");
    assert_eq!(saved["workflow"]["steps"][0]["tool"], "log_interaction");
    let asked = &llm.requests()[0];
    assert_eq!(asked["model"], "fake-drafter");
    assert!(
        asked["messages"][0]["content"]
            .as_str()
            .unwrap()
            .contains("Log a welcome note")
    );
    let refused = call(
        &client,
        "draft_workflow",
        json!({"description": "Something impossible", "connection": "drafter"}),
    )
    .await;
    assert_eq!(error_code(&refused), "invalid_request");
    assert!(
        refused.structured_content.unwrap()["error_description"]
            .as_str()
            .unwrap()
            .contains("no_such_tool")
    );
    let listed = call_ok(&client, "list_workflows", json!({})).await;
    assert_eq!(listed["total"], 1);
    client.cancel().await.unwrap();
}
