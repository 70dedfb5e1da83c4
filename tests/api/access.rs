//! The permission layer seen through MCP: the admin toolset, scope filtering of every
//! registered tool, tenant isolation, and the audit trail.

use agentcrm::toolkit::catalog::Toolset;
use serde_json::{Value, json};

use crate::helpers::*;

/// Starts `agentcrm stdio` as an agent with client credentials.
async fn as_agent(db: &TestDb, client_id: &str, secret: &str) -> Client {
    agent_client(
        db,
        &json!({ "client_id": client_id, "client_secret": secret }),
    )
    .await
}

#[tokio::test]
async fn admins_manage_agents_and_api_keys_through_tools() {
    let db = TestDb::new().await;
    let admin = stdio_client(db.command(&["stdio"]), Generation::Sessions).await;

    let created = call_ok(
        &admin,
        "register_agent",
        json!({ "name": "triage", "scopes": ["customers:read", "search"] }),
    )
    .await;
    let agent_id = created["agent"]["id"].as_str().unwrap().to_owned();
    let client_id = created["client_id"].as_str().unwrap().to_owned();
    let secret = created["client_secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("acs_"));
    assert_eq!(
        created["agent"]["scopes"],
        json!(["customers:read", "search"])
    );
    assert!(
        !created["agent"].to_string().contains(&secret),
        "the agent record carries no secret"
    );

    let duplicate = call(
        &admin,
        "register_agent",
        json!({ "name": "triage", "scopes": [] }),
    )
    .await;
    assert_eq!(error_code(&duplicate), "conflict");
    let bad_scope = call(
        &admin,
        "register_agent",
        json!({ "name": "x", "scopes": ["customers:rule"] }),
    )
    .await;
    assert_eq!(error_code(&bad_scope), "invalid_request");

    let listed = call_ok(&admin, "list_agents", json!({ "limit": 10 })).await;
    assert_eq!(listed["total"], 1);
    assert_eq!(listed["has_more"], false);
    let got = call_ok(&admin, "get_agent", json!({ "agent_id": agent_id })).await;
    assert_eq!(got["agent"]["client_id"], client_id.as_str());
    let missing = call(
        &admin,
        "get_agent",
        json!({ "agent_id": uuid::Uuid::new_v4() }),
    )
    .await;
    assert_eq!(error_code(&missing), "not_found");
    let malformed = call(&admin, "get_agent", json!({ "agent_id": "1 OR 1=1" })).await;
    assert_eq!(error_code(&malformed), "invalid_request");

    // The agent works with its secret, sees its scopes, and changes reach it.
    let agent = as_agent(&db, &client_id, &secret).await;
    assert_eq!(
        call_ok(&agent, "whoami", json!({})).await["scopes"],
        json!(["customers:read", "search"])
    );
    agent.cancel().await.unwrap();
    call_ok(
        &admin,
        "update_agent_permissions",
        json!({ "agent_id": agent_id, "scopes": ["search"] }),
    )
    .await;
    let agent = as_agent(&db, &client_id, &secret).await;
    assert_eq!(
        call_ok(&agent, "whoami", json!({})).await["scopes"],
        json!(["search"])
    );
    agent.cancel().await.unwrap();

    // Rotation: the old secret stops working.
    let rotated = call_ok(
        &admin,
        "rotate_agent_secret",
        json!({ "agent_id": agent_id }),
    )
    .await;
    let new_secret = rotated["client_secret"].as_str().unwrap().to_owned();
    let stdio_as = |secret: &str| {
        let mut command = agentcrm(&["stdio"]);
        command
            .env("DATABASE_URL", &db.url)
            .env("AGENTCRM_CLIENT_ID", &client_id)
            .env("AGENTCRM_CLIENT_SECRET", secret);
        command
    };
    let stderr = start_failure(&mut stdio_as(&secret));
    assert!(stderr.contains("invalid, revoked or disabled"), "{stderr}");
    let agent = as_agent(&db, &client_id, &new_secret).await;
    agent.cancel().await.unwrap();

    // Disabled agents cannot start; enabled again, they can.
    call_ok(&admin, "disable_agent", json!({ "agent_id": agent_id })).await;
    start_failure(&mut stdio_as(&new_secret));
    let enabled = call_ok(&admin, "enable_agent", json!({ "agent_id": agent_id })).await;
    assert_eq!(enabled["agent"]["enabled"], true);
    as_agent(&db, &client_id, &new_secret)
        .await
        .cancel()
        .await
        .unwrap();

    // API keys: a subset of the owner's scopes, usable at once, revocable.
    let key = call_ok(
        &admin,
        "create_api_key",
        json!({ "name": "reporting", "scopes": ["reports"] }),
    )
    .await;
    let key_id = key["api_key"]["id"].as_str().unwrap().to_owned();
    let plain = key["key"].as_str().unwrap().to_owned();
    let mut with_key = agentcrm(&["stdio"]);
    with_key
        .env("DATABASE_URL", &db.url)
        .env("AGENTCRM_API_KEY", &plain);
    let reporter = stdio_client(with_key, Generation::Stateless).await;
    let me = call_ok(&reporter, "whoami", json!({})).await;
    assert_eq!(me["principal"]["kind"], "api_key");
    assert_eq!(me["scopes"], json!(["reports"]));
    let tools: Vec<String> = reporter
        .list_all_tools()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name.to_string())
        .collect();
    assert!(
        !tools.contains(&"list_agents".to_owned()),
        "a key without `admin` sees no admin tools: {tools:?}"
    );
    reporter.cancel().await.unwrap();
    let keys = call_ok(&admin, "list_api_keys", json!({})).await;
    assert_eq!(keys["total"], 2);
    assert!(
        !keys.to_string().contains(&plain),
        "keys are never shown again"
    );
    call_ok(&admin, "revoke_api_key", json!({ "api_key_id": key_id })).await;
    let mut with_key = agentcrm(&["stdio"]);
    with_key
        .env("DATABASE_URL", &db.url)
        .env("AGENTCRM_API_KEY", &plain);
    start_failure(&mut with_key);

    // The audit trail has every call, filterable, and no secret.
    let log = call_ok(
        &admin,
        "list_audit_log",
        json!({ "action": "register_agent" }),
    )
    .await;
    assert_eq!(log["total"], 3, "{log}");
    assert_eq!(log["events"][0]["transport"], "stdio");
    let all = call_ok(&admin, "list_audit_log", json!({ "limit": 100 })).await;
    for secret in [&secret, &new_secret, &plain, &db.admin_key] {
        assert!(
            !all.to_string().contains(secret.as_str()),
            "no secret in the audit log"
        );
    }
    let refused = call_ok(&admin, "list_audit_log", json!({ "outcome": "refused" })).await;
    assert!(
        refused["total"].as_i64().unwrap() >= 3,
        "refusals are audited too: {refused}"
    );
    admin.cancel().await.unwrap();
}

#[tokio::test]
async fn every_tool_is_hidden_from_and_refused_to_callers_without_its_scopes() {
    let db = TestDb::new().await;
    let admin = stdio_client(db.command(&["stdio"]), Generation::Stateless).await;
    let every_scope: Vec<&str> = agentcrm::access::scopes::ALL.to_vec();
    let mighty = call_ok(
        &admin,
        "register_agent",
        json!({ "name": "mighty", "scopes": every_scope }),
    )
    .await;
    let bare = call_ok(
        &admin,
        "register_agent",
        json!({ "name": "bare", "scopes": [] }),
    )
    .await;
    admin.cancel().await.unwrap();

    for (agent, holds_everything) in [(&mighty, true), (&bare, false)] {
        let client = as_agent(
            &db,
            agent["client_id"].as_str().unwrap(),
            agent["client_secret"].as_str().unwrap(),
        )
        .await;
        let listed: Vec<String> = client
            .list_all_tools()
            .await
            .unwrap()
            .into_iter()
            .map(|t| t.name.to_string())
            .collect();
        for tool in agentcrm::catalog::builtin().iter() {
            let name = tool.def.name;
            let for_humans = tool.def.toolset == Toolset::Admin
                || tool.def.scopes.contains(&"admin")
                || tool.def.scopes.contains(&"handoff:decide")
                || tool.def.scopes.contains(&"agents:write");
            let expected = !for_humans && (holds_everything || tool.def.scopes.is_empty());
            assert_eq!(
                listed.contains(&name.to_owned()),
                expected,
                "{name} listed for {}",
                agent["agent"]["name"]
            );
            if !expected {
                let result = call(&client, name, json!({})).await;
                assert_eq!(error_code(&result), "forbidden", "{name}");
                let text = result.structured_content.unwrap()["error_description"].to_string();
                assert!(text.contains(name), "the refusal names the tool: {text}");
            }
        }
        client.cancel().await.unwrap();
    }
}

#[tokio::test]
async fn tenants_cannot_reach_each_other() {
    let db = TestDb::new().await;
    db.admin(&["create-tenant", "--slug", "globex", "--name", "Globex"]);
    db.admin(&[
        "create-user",
        "--tenant",
        "globex",
        "--email",
        "boss@globex.test",
        "--name",
        "Boss",
        "--role",
        "admin",
    ]);
    let key = db.admin(&[
        "create-api-key",
        "--tenant",
        "globex",
        "--user",
        "boss@globex.test",
        "--name",
        "k",
    ]);
    let theirs = db.admin(&["create-agent", "--tenant", "globex", "--name", "their-bot"]);
    let their_agent = theirs["agent"]["id"].as_str().unwrap();

    let acme = stdio_client(db.command(&["stdio"]), Generation::Stateless).await;
    for (tool, args) in [
        ("get_agent", json!({ "agent_id": their_agent })),
        ("disable_agent", json!({ "agent_id": their_agent })),
        ("rotate_agent_secret", json!({ "agent_id": their_agent })),
        (
            "update_agent_permissions",
            json!({ "agent_id": their_agent, "scopes": ["admin"] }),
        ),
    ] {
        assert_eq!(
            error_code(&call(&acme, tool, args).await),
            "not_found",
            "{tool}"
        );
    }
    assert_eq!(call_ok(&acme, "list_agents", json!({})).await["total"], 0);
    acme.cancel().await.unwrap();

    let mut command = agentcrm(&["stdio"]);
    command
        .env("DATABASE_URL", &db.url)
        .env("AGENTCRM_API_KEY", key["key"].as_str().unwrap());
    let globex = stdio_client(command, Generation::Stateless).await;
    let agents = call_ok(&globex, "list_agents", json!({})).await;
    assert_eq!(agents["total"], 1);
    assert_eq!(
        agents["agents"][0]["enabled"], true,
        "acme's calls changed nothing here"
    );
    let log: Value = call_ok(&globex, "list_audit_log", json!({})).await;
    assert!(
        log["events"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["principal_name"] != "tests"),
        "no acme events: {log}"
    );
    globex.cancel().await.unwrap();
}

#[tokio::test]
async fn permissions_can_be_listed_and_checked() {
    let db = TestDb::new().await;
    let agent = db.admin(&[
        "create-agent",
        "--tenant",
        "acme",
        "--name",
        "reader",
        "--scopes",
        "customers:read",
    ]);
    let client = as_agent(
        &db,
        agent["client_id"].as_str().unwrap(),
        agent["client_secret"].as_str().unwrap(),
    )
    .await;
    let mine = call_ok(&client, "list_my_permissions", json!({})).await;
    assert_eq!(mine["kind"], "agent");
    assert_eq!(mine["scopes"], json!(["customers:read"]));
    let unavailable = mine["unavailable"].as_array().unwrap();
    let reason = |tool: &str| {
        unavailable
            .iter()
            .find(|u| u["name"] == tool)
            .map(|u| u["reason"].clone())
    };
    assert_eq!(
        reason("list_agents"),
        Some(json!("reserved for human administrators"))
    );

    let yes = call_ok(
        &client,
        "check_permission",
        json!({ "scope": "customers:read" }),
    )
    .await;
    assert_eq!(yes, json!({ "allowed": true, "reason": null }));
    let no = call_ok(
        &client,
        "check_permission",
        json!({ "tool": "register_agent" }),
    )
    .await;
    assert_eq!(no["allowed"], false);
    let unknown = call(&client, "check_permission", json!({ "tool": "fly" })).await;
    assert_eq!(error_code(&unknown), "not_found");
    let both = call(
        &client,
        "check_permission",
        json!({ "tool": "whoami", "scope": "search" }),
    )
    .await;
    assert_eq!(error_code(&both), "invalid_request");
    client.cancel().await.unwrap();
}

/// One raw stateless `tools/call` over HTTP: (status, WWW-Authenticate, body).
async fn http_call(url: &str, key: &str, tool: &str) -> (u16, Option<String>, Value) {
    let response = reqwest::Client::new()
        .post(url)
        .header("X-Api-Key", key)
        .header("Accept", "application/json, text/event-stream")
        .header("MCP-Protocol-Version", "2026-07-28")
        .header("Mcp-Method", "tools/call")
        .header("Mcp-Name", tool)
        .json(
            &json!({ "jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
            "name": tool, "arguments": {},
            "_meta": {
                "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                "io.modelcontextprotocol/clientInfo": { "name": "t", "version": "1" },
                "io.modelcontextprotocol/clientCapabilities": {}
            }
        } }),
        )
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let challenge = response
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned());
    let streamed = response
        .headers()
        .get("content-type")
        .is_some_and(|v| v.to_str().unwrap().starts_with("text/event-stream"));
    let body = if streamed {
        crate::http::read_message(response).await
    } else {
        response.json().await.unwrap_or(Value::Null)
    };
    (status, challenge, body)
}

#[tokio::test]
/// A key (or an agent) cannot step up to more scope: a tool it may not use is refused as
/// the tool's result, readable text naming the missing scope, which every client passes to
/// the model; an HTTP 403 would reach it as a bare transport error. (A person's token from
/// the authorization code grant gets the 403 step-up challenge: tests/api/signin.rs.)
async fn refusals_of_callers_that_cannot_step_up_reach_the_model_as_text() {
    let db = TestDb::new().await;
    db.admin(&[
        "create-user",
        "--tenant",
        "acme",
        "--email",
        "rep@acme.test",
        "--name",
        "Rep",
        "--scopes",
        "customers:read",
    ]);
    let member = db.admin(&[
        "create-api-key",
        "--tenant",
        "acme",
        "--user",
        "rep@acme.test",
        "--name",
        "rep-key",
    ]);
    let member_key = member["key"].as_str().unwrap();
    let server = HttpServer::start(db.command(&["http"]));
    let url = server.mcp_url();

    let (status, challenge, body) = http_call(&url, member_key, "list_agents").await;
    assert_eq!(status, 200, "{body}");
    assert!(challenge.is_none(), "{challenge:?}");
    let result = &body["result"];
    assert_eq!(result["isError"], true, "{body}");
    let text = result["content"][0]["text"].as_str().unwrap();
    assert!(text.contains("admin"), "the missing scope is named: {text}");

    // Tools the key may use, and unknown tools, keep their MCP answers.
    let (status, _, body) = http_call(&url, member_key, "whoami").await;
    assert_eq!(status, 200, "{body}");
    let (status, _, _) = http_call(&url, member_key, "no_such_tool").await;
    assert_eq!(
        status, 200,
        "an unknown tool is a JSON-RPC error, not an HTTP one"
    );
    let (status, _, _) = http_call(&url, &db.admin_key, "list_agents").await;
    assert_eq!(status, 200);

    let admin = stdio_client(db.command(&["stdio"]), Generation::Stateless).await;
    let log = call_ok(
        &admin,
        "list_audit_log",
        json!({ "action": "list_agents", "outcome": "refused" }),
    )
    .await;
    assert_eq!(log["total"], 1, "the 403 is audited: {log}");
    admin.cancel().await.unwrap();
}
