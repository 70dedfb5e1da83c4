//! Rate limits: per principal and class, shared by processes on one database, refusing
//! with `rate_limited` and a `retry_after`.

use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn a_rate_limit_is_shared_by_processes_and_says_when_to_retry() {
    let db = TestDb::new().await;
    let agent = db.admin(&["create-agent", "--tenant", "acme", "--name", "chatty"]);
    let set = db.admin(&[
        "set-rate-limit",
        "--tenant",
        "acme",
        "--agent",
        "chatty",
        "--class",
        "calls",
        "--max",
        "6",
    ]);
    assert_eq!(set["limit"], json!({ "max": 6, "window_seconds": 3600 }));

    let a = agent_client(&db, &agent).await;
    let b = agent_client(&db, &agent).await;
    for _ in 0..3 {
        call_ok(&a, "check_permission", json!({ "scope": "search" })).await;
    }
    // Near the limit each call is counted in the database before it is decided on, so
    // B knows of A's calls at once.
    for _ in 0..3 {
        call_ok(&b, "check_permission", json!({ "scope": "search" })).await;
    }
    let refused = call(&b, "check_permission", json!({ "scope": "search" })).await;
    assert_eq!(refused.is_error, Some(true));
    let body = refused.structured_content.unwrap();
    assert_eq!(body["error"], "rate_limited", "{body}");
    let retry = body["retry_after"].as_u64().expect("retry_after");
    // The oldest call leaves the window with its bucket (1/60 of the window): up to an hour
    // and a minute from now, never before it has left.
    assert!(retry > 3500 && retry <= 3660, "{body}");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("at most 6 calls"),
        "{body}"
    );
    let also_a = call(&a, "whoami", json!({})).await;
    assert_eq!(
        also_a.is_error,
        Some(true),
        "A is over the shared limit too"
    );
    a.cancel().await.unwrap();
    b.cancel().await.unwrap();

    // The tenant admin is not limited by the agent's override, and sees where it stands.
    let admin = stdio_client(db.command(&["stdio"]), Generation::Stateless).await;
    let me = call_ok(&admin, "whoami", json!({})).await;
    let calls = me["rate_limits"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["class"] == "calls")
        .unwrap()
        .clone();
    assert_eq!(
        calls["limit"],
        json!({ "max": 1000, "window_seconds": 3600 })
    );
    assert!(calls["used"].as_i64().unwrap() >= 1, "{calls}");
    let log = call_ok(
        &admin,
        "list_audit_log",
        json!({ "outcome": "refused", "principal_id": agent["agent"]["id"] }),
    )
    .await;
    assert!(
        log["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["error_code"] == "rate_limited"),
        "{log}"
    );

    // An admin can lift the limit through the admin tool.
    let agent_id = agent["agent"]["id"].as_str().unwrap();
    let updated = call(
        &admin,
        "update_agent_permissions",
        json!({ "agent_id": agent_id, "rate_limits": [{ "class": "calls", "max": null }] }),
    )
    .await;
    assert_ne!(updated.is_error, Some(true), "{updated:?}");
    let bad = call(
        &admin,
        "update_agent_permissions",
        json!({ "agent_id": agent_id, "rate_limits": [{ "class": "calls", "max": -1 }] }),
    )
    .await;
    assert_eq!(bad.is_error, Some(true));
    admin.cancel().await.unwrap();
    let again = agent_client(&db, &agent).await;
    call_ok(&again, "whoami", json!({})).await;
    again.cancel().await.unwrap();
}

/// The `X-RateLimit-*` headers (seeds 000, 003) of a raw HTTP client, in both protocol
/// generations: each call's response says where it left its caller in the class it
/// counted against (a search, the search class), a refused one adds `Retry-After`, and
/// requests that count nothing report the calls class without counting.
#[tokio::test]
async fn http_responses_carry_the_quota_of_the_class_they_counted_against() {
    let db = TestDb::new().await;
    let agent = db.admin(&[
        "create-agent",
        "--tenant",
        "acme",
        "--name",
        "metered",
        "--scopes",
        "customers:read,search",
    ]);
    for (class, max) in [("calls", "6"), ("search", "2")] {
        db.admin(&[
            "set-rate-limit",
            "--tenant",
            "acme",
            "--agent",
            "metered",
            "--class",
            class,
            "--max",
            max,
            "--per",
            "600",
        ]);
    }
    let server = HttpServer::start(db.command(&["http"]));
    let url = server.mcp_url();
    let http = reqwest::Client::new();
    let key = agent_token(&server.base, &agent).await;
    let session = raw_session(&http, &url, &key).await;
    let quota = |response: &reqwest::Response| {
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .map(|v| v.to_str().unwrap().to_owned())
        };
        (
            header("x-ratelimit-class"),
            header("x-ratelimit-limit"),
            header("x-ratelimit-remaining"),
            header("x-ratelimit-reset"),
            header("retry-after"),
        )
    };
    let tool = |id: u64, name: &str, arguments: serde_json::Value| {
        json!({ "jsonrpc": "2.0", "id": id, "method": "tools/call",
                "params": { "name": name, "arguments": arguments } })
    };
    let now = chrono::Utc::now().timestamp();
    let first = raw_post(
        &http,
        &url,
        &key,
        Some(&session),
        tool(2, "whoami", json!({})),
    )
    .await;
    let (class, limit, remaining, reset, retry) = quota(&first);
    assert_eq!(
        (
            class.as_deref(),
            limit.as_deref(),
            remaining.as_deref(),
            retry
        ),
        (Some("calls"), Some("6"), Some("5"), None),
        "{:?}",
        first.headers()
    );
    let reset: i64 = reset.unwrap().parse().unwrap();
    assert!(
        reset > now && reset <= now + 700,
        "reset {reset} is when a call frees, not {now}"
    );
    let _ = crate::http::read_message(first).await;

    let search = tool(3, "search", json!({ "query": "ada" }));
    for left in ["1", "0"] {
        let answer = raw_post(&http, &url, &key, Some(&session), search.clone()).await;
        let (class, limit, remaining, _, retry) = quota(&answer);
        assert_eq!(
            (
                class.as_deref(),
                limit.as_deref(),
                remaining.as_deref(),
                retry
            ),
            (Some("search"), Some("2"), Some(left), None)
        );
        let message = crate::http::read_message(answer).await;
        assert_ne!(message["result"]["isError"], true, "{message}");
    }
    let refused = raw_post(&http, &url, &key, Some(&session), search.clone()).await;
    assert_eq!(
        refused.status().as_u16(),
        200,
        "the refusal is the tool's result"
    );
    let (class, _, remaining, _, retry) = quota(&refused);
    assert_eq!(
        (class.as_deref(), remaining.as_deref()),
        (Some("search"), Some("0"))
    );
    let retry: u64 = retry
        .expect("Retry-After on a refused call")
        .parse()
        .unwrap();
    assert!((1..=610).contains(&retry), "{retry}");
    let message = crate::http::read_message(refused).await;
    assert_eq!(
        message["result"]["structuredContent"]["retry_after"], retry,
        "the header and the body agree: {message}"
    );

    // Listing tools counts nothing, and says where the calls class stands: 3 counted.
    for id in [5, 6] {
        let listed = raw_post(
            &http,
            &url,
            &key,
            Some(&session),
            json!({ "jsonrpc": "2.0", "id": id, "method": "tools/list" }),
        )
        .await;
        let (class, _, remaining, _, _) = quota(&listed);
        assert_eq!(
            (class.as_deref(), remaining.as_deref()),
            (Some("calls"), Some("3"))
        );
    }

    // The stateless generation: the same headers on its JSON answers.
    let stateless = |id: u64, name: &str| {
        let mut body = tool(id, name, json!({}));
        body["params"]["_meta"] = json!({
            "io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientInfo": { "name": "raw-test", "version": "1" },
            "io.modelcontextprotocol/clientCapabilities": {}
        });
        http.post(&url)
            .bearer_auth(&key)
            .header("Accept", "application/json, text/event-stream")
            .header("MCP-Protocol-Version", "2026-07-28")
            .header("Mcp-Method", "tools/call")
            .header("Mcp-Name", name)
            .json(&body)
            .send()
    };
    for left in ["2", "1", "0"] {
        let answer = stateless(7, "whoami").await.unwrap();
        let (class, _, remaining, _, retry) = quota(&answer);
        assert_eq!(
            (class.as_deref(), remaining.as_deref(), retry),
            (Some("calls"), Some(left), None)
        );
    }
    let refused = stateless(8, "whoami").await.unwrap();
    let (_, _, remaining, _, retry) = quota(&refused);
    assert_eq!(remaining.as_deref(), Some("0"));
    assert!(retry.is_some(), "{:?}", refused.headers());
}

/// Agents that fire their calls all at once, at two processes, get their limit and not one
/// call more: every call is counted in the database before it is made, by a take that sees
/// every earlier one from any process. A busy agent's calls are taken in leases; what a
/// lease leaves unused goes back, so the limit is reached but never passed.
#[tokio::test]
async fn a_burst_of_concurrent_calls_across_processes_gets_exactly_the_limit() {
    let db = TestDb::new().await;
    let mut agents = Vec::new();
    for (name, max) in [("burst", "6"), ("busy", "100"), ("steady", "100")] {
        agents.push(db.admin(&["create-agent", "--tenant", "acme", "--name", name]));
        db.admin(&[
            "set-rate-limit",
            "--tenant",
            "acme",
            "--agent",
            name,
            "--class",
            "calls",
            "--max",
            max,
        ]);
    }
    let servers = [
        HttpServer::start(db.command(&["http"])),
        HttpServer::start(db.command(&["http"])),
    ];
    let mut all = Vec::new();
    for agent in &agents {
        let mut clients = Vec::new();
        for server in &servers {
            let token = agent_token(&server.base, agent).await;
            clients.push(http_client(&server.mcp_url(), &token, Generation::Stateless).await);
        }
        all.push(clients);
    }

    // 40 calls against a limit of 6: each is its own take, so exactly 6 are made.
    assert_eq!(wave(&all[0], 40).await, 6, "of 40 calls at once");
    assert_eq!(wave(&all[0], 40).await, 0, "the limit was spent");

    // A limit of 100. One process makes 30 calls in a row, fast enough for its leases to
    // grow past what it uses; then 200 calls at once at the other never get more than the
    // rest, and once the first one's unused leases have gone back, exactly the rest.
    let mut made = 0;
    for i in 0..30 {
        let answer = call(&all[1][0], "check_permission", json!({ "scope": "search" })).await;
        assert_ne!(answer.is_error, Some(true), "call {i}: {answer:?}");
        made += 1;
    }
    made += wave(&all[1][1..], 200).await;
    assert!(
        (31..=100).contains(&made),
        "{made} calls made against a limit of 100"
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while made < 100 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        made += wave(&all[1][1..], 20).await;
        assert!(made <= 100, "{made} calls made against a limit of 100");
    }
    assert_eq!(made, 100, "unused leases went back and were used");
    assert_eq!(wave(&all[1], 40).await, 0, "the limit was spent");

    // 24 calls at once at one process take several leases in one bucket; what they leave
    // unused goes back, so what is counted stays what was made, before and after.
    assert_eq!(wave(&all[2][..1], 24).await, 24);
    let mut calls = 24;
    let until = std::time::Instant::now() + std::time::Duration::from_millis(2500);
    while std::time::Instant::now() < until {
        let me = call_ok(&all[2][0], "whoami", json!({})).await;
        calls += 1;
        let used = me["rate_limits"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["class"] == "calls")
            .map(|s| s["used"].clone());
        assert_eq!(used, Some(json!(calls)), "{me}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// Makes `calls` calls at once, alternating between `clients`: how many were made (the rest
/// must be refused for the rate limit).
async fn wave(clients: &[Client], calls: usize) -> usize {
    let answers = futures::future::join_all((0..calls).map(|i| {
        call(
            &clients[i % clients.len()],
            "check_permission",
            json!({ "scope": "search" }),
        )
    }))
    .await;
    for refused in answers.iter().filter(|a| a.is_error == Some(true)) {
        assert_eq!(error_code(refused), "rate_limited", "{refused:?}");
    }
    answers.iter().filter(|a| a.is_error != Some(true)).count()
}
