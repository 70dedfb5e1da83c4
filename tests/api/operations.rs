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

/// The value of the sample `name{labels}` in Prometheus text (0 when absent).
pub(crate) fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(series, _)| {
            series.split('{').next() == Some(name)
                && labels
                    .iter()
                    .all(|(k, v)| series.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|(_, value)| value.parse::<f64>().ok())
        .sum()
}

/// Prometheus metrics: on `--metrics-listen` for the operator's network, and on the main
/// listener only with the operator's token (never a tenant's credential: the figures are
/// the whole server's). Calls, refusals and queues move the numbers; a tool name a caller
/// makes up does not become a label.
#[tokio::test]
async fn metrics_are_the_operators_and_move_with_the_calls() {
    let db = TestDb::new().await;
    let server = HttpServer::start(db.command(&[
        "http",
        "--metrics-listen",
        "127.0.0.1:0",
        "--metrics-token",
        "operator-token-0123456789",
    ]));
    let metrics_url = server.logged("metrics on ").await;
    let http = reqwest::Client::new();
    let scrape = || async {
        let response = http.get(&metrics_url).send().await.unwrap();
        assert_eq!(response.status().as_u16(), 200);
        assert!(
            response.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/plain")
        );
        response.text().await.unwrap()
    };
    let before = scrape().await;

    // On the main listener: a tenant admin's key is not the operator's token.
    let main = format!("{}/metrics", server.base);
    for (auth, status) in [
        (None, 401),
        (Some(db.admin_key.as_str()), 401),
        (Some("operator-token-0123456789"), 200),
    ] {
        let mut request = http.get(&main);
        if let Some(auth) = auth {
            request = request.bearer_auth(auth);
        }
        assert_eq!(
            request.send().await.unwrap().status().as_u16(),
            status,
            "{auth:?}"
        );
    }

    let agent = db.admin(&["create-agent", "--tenant", "acme", "--name", "metered"]);
    let client = http_client(&server.mcp_url(), &db.admin_key, Generation::Sessions).await;
    call_ok(&client, "whoami", json!({})).await;
    call_ok(&client, "whoami", json!({})).await;
    let bad = call(&client, "create_customer", json!({})).await;
    assert_eq!(error_code(&bad), "invalid_request");
    let made_up = client
        .call_tool(rmcp::model::CallToolRequestParams::new(
            "drop_all_tables_{now}",
        ))
        .await;
    assert!(made_up.is_err());
    let token = agent_token(&server.base, &agent).await;
    let bot = http_client(&server.mcp_url(), &token, Generation::Stateless).await;
    let denied = call(&bot, "list_customers", json!({})).await;
    assert_eq!(error_code(&denied), "forbidden");
    let after = scrape().await;

    let moved = |name: &str, labels: &[(&str, &str)]| {
        sample(&after, name, labels) - sample(&before, name, labels)
    };
    let whoami = [
        ("tool", "whoami"),
        ("outcome", "ok"),
        ("principal_kind", "api_key"),
    ];
    assert_eq!(moved("agentcrm_tool_calls_total", &whoami), 2.0, "{after}");
    assert_eq!(
        moved(
            "agentcrm_tool_call_duration_seconds_count",
            &[("tool", "whoami")]
        ),
        2.0
    );
    assert_eq!(
        moved("agentcrm_refusals_total", &[("reason", "invalid_request")]),
        1.0
    );
    assert_eq!(
        moved("agentcrm_refusals_total", &[("reason", "unknown_tool")]),
        1.0
    );
    assert!(
        !after.contains("drop_all_tables"),
        "a made-up name is no label"
    );
    // The agent lacks customers:read: a scope denial, counted as a refusal too.
    assert_eq!(moved("agentcrm_scope_denials_total", &[]), 1.0, "{after}");
    assert_eq!(
        moved("agentcrm_refusals_total", &[("reason", "forbidden")]),
        1.0
    );
    let refused = [
        ("tool", "list_customers"),
        ("outcome", "refused"),
        ("principal_kind", "agent"),
    ];
    assert_eq!(moved("agentcrm_tool_calls_total", &refused), 1.0);
    assert!(
        moved("agentcrm_audit_batch_size_count", &[]) >= 1.0,
        "{after}"
    );
    assert_eq!(
        sample(&after, "agentcrm_http_sessions", &[]),
        1.0,
        "{after}"
    );
    for queue in [
        "workflow_executions",
        "agent_runs",
        "tasks",
        "webhook_deliveries",
        "agent_callbacks",
    ] {
        assert!(
            after.contains(&format!("agentcrm_queue_depth{{queue=\"{queue}\"}}")),
            "{queue}: {after}"
        );
    }
    assert!(sample(&after, "agentcrm_db_pool_max", &[]) >= 1.0);
    assert_eq!(sample(&after, "agentcrm_database_up", &[]), 1.0);
    assert_eq!(sample(&after, "agentcrm_pending_approvals", &[]), 0.0);
    bot.cancel().await.unwrap();
    client.cancel().await.unwrap();
}

/// A pool whose connections are all in use (an update waiting on a locked row, with a pool
/// of one) turns a call away after its bounded wait with a
/// `retry_after` and a sentence that says what happened, and the call's audit record is
/// still written (the audit writer has connections of its own).
#[tokio::test]
async fn an_exhausted_pool_refuses_with_a_retry_after_and_keeps_the_record() {
    let db = TestDb::new().await;
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    let server = HttpServer::start(db.command(&[
        "http",
        "--db-max-connections",
        "1",
        "--db-acquire-timeout-secs",
        "2",
    ]));
    let client = http_client(&server.mcp_url(), &db.admin_key, Generation::Sessions).await;
    let created = call_ok(
        &client,
        "create_customer",
        json!({ "first_name": "Locked", "email": "locked@example.com" }),
    )
    .await;
    let id = created["customer"]["id"].as_str().unwrap().to_owned();
    // The test holds the row: an update waits on it, holding the pool's one connection.
    let mut held = pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM customers WHERE id = $1::uuid FOR UPDATE")
        .bind(&id)
        .execute(&mut *held)
        .await
        .unwrap();
    // An update waits on it, holding the pool's one connection.
    let updates: Vec<_> = ["Acme"]
        .into_iter()
        .map(|company| {
            let peer = client.peer().clone();
            let id = id.clone();
            tokio::spawn(async move {
                let Value::Object(arguments) =
                    json!({ "customer_id": id, "version": 1, "company": company })
                else {
                    unreachable!()
                };
                peer.call_tool(
                    rmcp::model::CallToolRequestParams::new("update_customer")
                        .with_arguments(arguments),
                )
                .await
            })
        })
        .collect();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'
               AND datname = current_database()",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        if waiting >= 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the update never waited"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let turned_away = call(&client, "list_customers", json!({})).await;
    let body = turned_away.structured_content.clone().unwrap();
    assert_eq!(body["retry_after"], 2, "{body}");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("database connections were all in use"),
        "{body}"
    );
    held.rollback().await.unwrap();
    for update in updates {
        let updated = update.await.unwrap().unwrap();
        assert_ne!(
            updated.is_error,
            Some(true),
            "it went on once the row was free: {updated:?}"
        );
    }
    let recorded: Vec<(String, Option<String>)> = sqlx::query_as(
        "SELECT outcome, error_code FROM audit_events WHERE action = 'list_customers'",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        recorded,
        [("error".to_owned(), Some("internal".to_owned()))]
    );
    client.cancel().await.unwrap();
}
