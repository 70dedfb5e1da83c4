//! Webhooks over MCP, delivered to real local HTTP receivers: signatures a receiver can
//! verify, retries after failures, a process killed mid-delivery, and several processes
//! sharing the queue without sending an attempt twice.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use sqlx::Connection;

use crate::helpers::*;

/// What a receiver does with the requests it gets, by arrival order.
#[derive(Clone, Copy)]
pub(crate) enum Behaviour {
    Accept,
    /// Answers 500 to the first n requests.
    FailFirst(usize),
    /// Never answers the first n requests.
    HangFirst(usize),
    /// Takes this long over each request.
    Slow(Duration),
}

#[derive(Debug, Clone)]
pub(crate) struct Hit {
    pub(crate) headers: http::HeaderMap,
    body: Vec<u8>,
}

impl Hit {
    pub(crate) fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }

    pub(crate) fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_else(|| panic!("header {name} in {:?}", self.headers))
    }
}

/// A real HTTP server on a random local port that records every request.
pub(crate) struct Receiver {
    pub(crate) url: String,
    hits: Arc<Mutex<Vec<Hit>>>,
}

impl Receiver {
    pub(crate) async fn start(behaviour: Behaviour) -> Receiver {
        let hits: Arc<Mutex<Vec<Hit>>> = Arc::default();
        let recorded = hits.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: http::HeaderMap, body: axum::body::Bytes| {
                let recorded = recorded.clone();
                async move {
                    let seen = {
                        let mut hits = recorded.lock().unwrap();
                        hits.push(Hit {
                            headers,
                            body: body.to_vec(),
                        });
                        hits.len()
                    };
                    match behaviour {
                        Behaviour::FailFirst(n) if seen <= n => {
                            http::StatusCode::INTERNAL_SERVER_ERROR
                        }
                        Behaviour::HangFirst(n) if seen <= n => {
                            std::future::pending::<()>().await;
                            unreachable!()
                        }
                        Behaviour::Slow(pause) => {
                            tokio::time::sleep(pause).await;
                            http::StatusCode::OK
                        }
                        _ => http::StatusCode::OK,
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Receiver { url, hits }
    }

    pub(crate) fn hits(&self) -> Vec<Hit> {
        self.hits.lock().unwrap().clone()
    }

    /// Waits until at least `n` requests arrived.
    pub(crate) async fn wait_for(&self, n: usize, within: Duration) -> Vec<Hit> {
        let deadline = Instant::now() + within;
        loop {
            let hits = self.hits();
            if hits.len() >= n {
                return hits;
            }
            assert!(
                Instant::now() < deadline,
                "expected {n} requests within {within:?}, got {}",
                hits.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// What a receiver does to trust a request: recompute the HMAC of the raw body.
pub(crate) fn signature_valid(secret: &str, hit: &Hit) -> bool {
    let Some(hex_mac) = hit.header("x-hub-signature-256").strip_prefix("sha256=") else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(&hit.body);
    hex::decode(hex_mac).is_ok_and(|given| mac.verify_slice(&given).is_ok())
}

async fn deliveries(client: &Client, webhook_id: &Value) -> Vec<Value> {
    call_ok(
        client,
        "list_webhook_deliveries",
        json!({ "webhook_id": webhook_id }),
    )
    .await["deliveries"]
        .as_array()
        .unwrap()
        .clone()
}

/// Polls until the webhook's deliveries all reached a final state.
async fn settled(client: &Client, webhook_id: &Value, within: Duration) -> Vec<Value> {
    let deadline = Instant::now() + within;
    loop {
        let list = deliveries(client, webhook_id).await;
        if !list.is_empty()
            && list
                .iter()
                .all(|d| d["status"] == "delivered" || d["status"] == "failed")
        {
            return list;
        }
        assert!(
            Instant::now() < deadline,
            "deliveries did not settle: {list:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn webhooks_are_signed_retried_logged_and_scoped_to_their_tenant() {
    let db = TestDb::new().await;
    let server = HttpServer::start(db.command(&["http"]));
    let admin = http_client(&server.mcp_url(), &db.admin_key, Generation::Stateless).await;
    let steady = Receiver::start(Behaviour::Accept).await;
    let flaky = Receiver::start(Behaviour::FailFirst(2)).await;

    // Bad subscriptions are refused and leave nothing behind.
    for (args, why) in [
        (
            json!({ "url": steady.url, "events": ["customer.exploded"] }),
            "unknown event type",
        ),
        (json!({ "url": steady.url, "events": [] }), "no events"),
        (
            json!({ "url": "ftp://example.com/x", "events": ["*"] }),
            "not http(s)",
        ),
        (
            json!({ "url": "https://user:pw@example.com/x", "events": ["*"] }),
            "credentials in the URL",
        ),
        (
            json!({ "url": "' OR 1=1 --", "events": ["*"] }),
            "not a URL",
        ),
    ] {
        let refused = call(&admin, "create_webhook", args).await;
        assert_eq!(error_code(&refused), "invalid_request", "{why}");
    }
    assert_eq!(
        call_ok(&admin, "list_webhooks", json!({})).await["total"],
        0
    );

    let created = call_ok(
        &admin,
        "create_webhook",
        json!({ "url": steady.url, "events": ["customer.created"], "description": "CRM sync" }),
    )
    .await;
    let steady_secret = created["secret"].as_str().unwrap().to_owned();
    assert!(steady_secret.starts_with("whsec_"));
    let steady_id = created["webhook"]["id"].clone();
    let created = call_ok(
        &admin,
        "create_webhook",
        json!({ "url": flaky.url, "events": ["*"] }),
    )
    .await;
    let flaky_secret = created["secret"].as_str().unwrap().to_owned();
    let flaky_id = created["webhook"]["id"].clone();
    let listed = call_ok(&admin, "list_webhooks", json!({})).await;
    assert_eq!(listed["total"], 2);
    let text = listed.to_string();
    assert!(
        !text.contains(&steady_secret) && !text.contains(&flaky_secret) && !text.contains("whsec_"),
        "secrets are shown once only: {text}"
    );

    let ana = call_ok(
        &admin,
        "create_customer",
        json!({ "first_name": "Ana", "email": "ana@x.test" }),
    )
    .await["customer"]
        .clone();

    // The steady receiver gets one request it can verify.
    let hit = steady.wait_for(1, Duration::from_secs(20)).await[0].clone();
    assert!(signature_valid(&steady_secret, &hit), "signature verifies");
    assert!(
        !signature_valid(&flaky_secret, &hit),
        "and only with its own secret"
    );
    let body = hit.json();
    assert_eq!(body["type"], "customer.created");
    assert_eq!(hit.header("x-agentcrm-event"), "customer.created");
    assert_eq!(body["data"]["customer"]["email"], "ana@x.test");
    assert_eq!(body["subject_id"], ana["id"]);
    assert_eq!(body["attempt"], 1);
    let stamp = hit.header("x-agentcrm-timestamp").parse::<i64>().unwrap();
    assert_eq!(body["timestamp"], stamp, "the signed body carries the time");
    assert!((chrono::Utc::now().timestamp() - stamp).abs() < 60);
    let mut forged = hit.clone();
    forged.body = String::from_utf8(hit.body.clone())
        .unwrap()
        .replace("ana@x.test", "eve@x.test")
        .into_bytes();
    assert!(
        !signature_valid(&steady_secret, &forged),
        "a changed body fails"
    );

    // The flaky receiver fails twice; the third attempt of the same delivery succeeds.
    let hits = flaky.wait_for(3, Duration::from_secs(30)).await;
    let ids: Vec<&str> = hits
        .iter()
        .map(|h| h.header("x-agentcrm-delivery"))
        .collect();
    assert!(
        ids.iter().all(|id| *id == ids[0]),
        "one delivery retried: {ids:?}"
    );
    let attempts: Vec<Value> = hits.iter().map(|h| h.json()["attempt"].clone()).collect();
    assert_eq!(attempts, [json!(1), json!(2), json!(3)]);
    assert!(hits.iter().all(|h| signature_valid(&flaky_secret, h)));
    let log = settled(&admin, &flaky_id, Duration::from_secs(20)).await;
    assert_eq!(log.len(), 1);
    assert_eq!(log[0]["status"], "delivered");
    assert_eq!(log[0]["attempts"], 3);
    let codes: Vec<Value> = log[0]["attempt_log"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["status_code"].clone())
        .collect();
    assert_eq!(codes, [json!(500), json!(500), json!(200)], "{log:#?}");
    assert!(
        log[0]["attempt_log"][0]["error"]
            .as_str()
            .unwrap()
            .contains("500")
    );

    // Subscriptions filter by type: an update reaches `*` only.
    call_ok(
        &admin,
        "update_customer",
        json!({ "customer_id": ana["id"], "version": ana["version"], "status": "customer" }),
    )
    .await;
    let hits = flaky.wait_for(4, Duration::from_secs(20)).await;
    assert_eq!(hits[3].json()["type"], "customer.updated");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        steady.hits().len(),
        1,
        "customer.updated was not subscribed"
    );

    let filtered = call_ok(
        &admin,
        "list_webhook_deliveries",
        json!({ "status": "delivered", "limit": 100 }),
    )
    .await;
    assert_eq!(filtered["total"], 3);
    let too_many = call(&admin, "list_webhook_deliveries", json!({ "limit": 101 })).await;
    assert_eq!(error_code(&too_many), "invalid_request");

    // Another tenant sees none of this and cannot touch it.
    db.admin(&["create-tenant", "--slug", "other", "--name", "Other"]);
    db.admin(&[
        "create-user",
        "--tenant",
        "other",
        "--email",
        "o@o.test",
        "--name",
        "O",
        "--role",
        "admin",
    ]);
    let other_key = db.admin(&[
        "create-api-key",
        "--tenant",
        "other",
        "--user",
        "o@o.test",
        "--name",
        "k",
    ])["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let other = http_client(&server.mcp_url(), &other_key, Generation::Stateless).await;
    assert_eq!(
        call_ok(&other, "list_webhooks", json!({})).await["total"],
        0
    );
    assert_eq!(
        call_ok(
            &other,
            "list_webhook_deliveries",
            json!({ "webhook_id": flaky_id })
        )
        .await["total"],
        0
    );
    assert_eq!(
        error_code(&call(&other, "delete_webhook", json!({ "webhook_id": flaky_id })).await),
        "not_found"
    );
    call_ok(&other, "create_customer", json!({ "first_name": "Zed" })).await;

    // Deleting stops deliveries.
    let deleted = call_ok(&admin, "delete_webhook", json!({ "webhook_id": flaky_id })).await;
    assert_eq!(deleted["deleted"], flaky_id);
    assert_eq!(
        error_code(&call(&admin, "delete_webhook", json!({ "webhook_id": flaky_id })).await),
        "not_found"
    );
    call_ok(
        &admin,
        "create_customer",
        json!({ "first_name": "Bo", "email": "bo@x.test" }),
    )
    .await;
    steady.wait_for(2, Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(
        flaky.hits().len(),
        4,
        "nothing after delete, nothing from the other tenant"
    );
    assert_eq!(steady.hits().len(), 2, "nothing from the other tenant");

    // Secrets are encrypted at rest and never audited.
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let leaks: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM audit_events WHERE arguments::text LIKE '%whsec_%')
              + (SELECT count(*) FROM webhooks WHERE position(convert_to('whsec_', 'UTF8') IN secret_encrypted) > 0)",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(leaks, 0);
    assert_eq!(
        call_ok(
            &admin,
            "list_webhook_deliveries",
            json!({ "webhook_id": steady_id })
        )
        .await["total"],
        2,
        "one delivery per subscribed event"
    );
}

/// A webhook reads events for whoever made it. `webhooks:manage` alone reads nothing: the
/// maker needs each event's read scope and no field rules, row conditions or object grants,
/// when it subscribes and again for every delivery, as it stands then. A maker later
/// restricted, disabled or revoked receives nothing more (the delivery fails, saying why).
#[tokio::test]
async fn a_webhook_delivers_only_what_its_maker_may_read_when_it_is_sent() {
    let db = TestDb::new().await;
    let server = HttpServer::start(db.command(&["http"]));
    let admin = http_client(&server.mcp_url(), &db.admin_key, Generation::Stateless).await;
    let receiver = Receiver::start(Behaviour::Accept).await;
    let plain = call_ok(
        &admin,
        "register_agent",
        json!({ "name": "reader", "scopes": ["customers:read"] }),
    )
    .await;
    let bot = agent_client(&db, &plain).await;
    let tools = bot.list_all_tools().await.unwrap();
    assert!(
        tools.iter().all(|t| !t.name.contains("webhook")),
        "not listed without webhooks:manage"
    );
    assert_eq!(
        error_code(
            &call(
                &bot,
                "create_webhook",
                json!({ "url": receiver.url, "events": ["*"] })
            )
            .await
        ),
        "forbidden"
    );

    // webhooks:manage without customers:read: no customer events, and no `*`.
    let blind = call_ok(
        &admin,
        "register_agent",
        json!({ "name": "integrator", "scopes": ["webhooks:manage", "interactions:read"] }),
    )
    .await;
    let bot = agent_client(&db, &blind).await;
    for events in [json!(["customer.created"]), json!(["*"])] {
        let refused = call(
            &bot,
            "create_webhook",
            json!({ "url": receiver.url, "events": events }),
        )
        .await;
        assert_eq!(error_code(&refused), "forbidden", "{events}");
        assert!(
            format!("{refused:?}").contains("customers:read"),
            "{refused:?}"
        );
    }
    call_ok(
        &bot,
        "create_webhook",
        json!({ "url": receiver.url, "events": ["interaction.created"] }),
    )
    .await;

    // Field rules: refused when subscribing.
    let limited = call_ok(
        &admin,
        "register_agent",
        json!({ "name": "hooker", "scopes": ["customers:read", "webhooks:manage"] }),
    )
    .await;
    call_ok(
        &admin,
        "update_agent_permissions",
        json!({
            "agent_id": limited["agent"]["id"],
            "field_rules": { "customers": ["first_name"] },
        }),
    )
    .await;
    let bot = agent_client(&db, &limited).await;
    let refused = call(
        &bot,
        "create_webhook",
        json!({ "url": receiver.url, "events": ["customer.created"] }),
    )
    .await;
    assert_eq!(error_code(&refused), "forbidden");
    assert!(format!("{refused:?}").contains("field rules"));

    // Two makers who may read customers: both webhooks deliver.
    let mut hooks = Vec::new();
    for name in ["syncer", "mirror"] {
        let agent = call_ok(
            &admin,
            "register_agent",
            json!({ "name": name, "scopes": ["customers:read", "webhooks:manage"] }),
        )
        .await;
        let bot = agent_client(&db, &agent).await;
        let hook = call_ok(
            &bot,
            "create_webhook",
            json!({ "url": receiver.url, "events": ["customer.created"] }),
        )
        .await;
        hooks.push((agent, hook["webhook"]["id"].clone()));
    }
    call_ok(&admin, "create_customer", json!({ "first_name": "Ada" })).await;
    for (_, hook) in &hooks {
        let first = settled(&admin, hook, Duration::from_secs(20)).await;
        assert_eq!(first.len(), 1);
        assert_eq!(first[0]["status"], "delivered", "{first:?}");
    }
    assert_eq!(receiver.wait_for(2, Duration::from_secs(5)).await.len(), 2);

    // Then one is given a row condition and the other is disabled: neither receives the
    // next customer, nor anything about it.
    call_ok(
        &admin,
        "update_agent_permissions",
        json!({
            "agent_id": hooks[0].0["agent"]["id"],
            "conditions": { "customers": [{ "field": "status", "op": "ne", "value": "churned" }] },
        }),
    )
    .await;
    call_ok(
        &admin,
        "disable_agent",
        json!({ "agent_id": hooks[1].0["agent"]["id"] }),
    )
    .await;
    call_ok(
        &admin,
        "create_customer",
        json!({ "first_name": "Secret", "phone": "+1 555 0100" }),
    )
    .await;
    for ((_, hook), why) in hooks.iter().zip(["row conditions", "disabled"]) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let withheld = loop {
            let list = deliveries(&admin, hook).await;
            if let Some(second) = list.iter().find(|d| d["status"] == "failed") {
                break second.clone();
            }
            assert!(Instant::now() < deadline, "not settled: {list:#?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let error = withheld["last_error"].as_str().unwrap_or_default();
        assert!(
            error.starts_with("not delivered") && error.contains(why),
            "{withheld}"
        );
    }
    let hits = receiver.hits();
    assert_eq!(hits.len(), 2, "nothing more was sent");
    assert!(
        hits.iter()
            .all(|h| !h.json().to_string().contains("Secret"))
    );
    admin.cancel().await.unwrap();
}

#[tokio::test]
async fn a_delivery_in_flight_when_the_process_dies_is_retried() {
    let db = TestDb::new().await;
    let receiver = Receiver::start(Behaviour::HangFirst(1)).await;
    // Short calls, so the dead process's lease (timeout + 5 s) runs out soon.
    let mut first = HttpServer::start(db.command(&["http", "--outbound-timeout-secs", "2"]));
    let admin = http_client(&first.mcp_url(), &db.admin_key, Generation::Stateless).await;
    let webhook = call_ok(
        &admin,
        "create_webhook",
        json!({ "url": receiver.url, "events": ["*"] }),
    )
    .await;
    let secret = webhook["secret"].as_str().unwrap().to_owned();
    call_ok(&admin, "create_customer", json!({ "first_name": "Ana" })).await;
    receiver.wait_for(1, Duration::from_secs(20)).await;
    first.child.kill().expect("SIGKILL the server mid-delivery");
    first.child.wait().unwrap();
    drop(admin);

    let second = HttpServer::start(db.command(&["http", "--outbound-timeout-secs", "2"]));
    let hits = receiver.wait_for(2, Duration::from_secs(30)).await;
    assert_eq!(
        hits[0].header("x-agentcrm-delivery"),
        hits[1].header("x-agentcrm-delivery")
    );
    assert_eq!(hits[1].json()["attempt"], 2);
    assert!(signature_valid(&secret, &hits[1]));
    let admin = http_client(&second.mcp_url(), &db.admin_key, Generation::Stateless).await;
    let log = settled(&admin, &webhook["webhook"]["id"], Duration::from_secs(20)).await;
    assert_eq!(log[0]["status"], "delivered");
    let attempts = log[0]["attempt_log"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{log:#?}");
    assert!(attempts[0]["error"].as_str().unwrap().contains("stopped"));
    assert_eq!(attempts[1]["status_code"], 200);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(
        receiver.hits().len(),
        2,
        "delivered once it succeeded, not again"
    );
}

#[tokio::test]
async fn several_processes_share_deliveries_without_sending_an_attempt_twice() {
    let db = TestDb::new().await;
    let receiver = Receiver::start(Behaviour::Slow(Duration::from_millis(20))).await;
    let one = HttpServer::start(db.command(&["http"]));
    let two = HttpServer::start(db.command(&["http"]));
    let admin = http_client(&one.mcp_url(), &db.admin_key, Generation::Stateless).await;
    let webhook = call_ok(
        &admin,
        "create_webhook",
        json!({ "url": receiver.url, "events": ["customer.updated"] }),
    )
    .await;
    let mut ids = Vec::new();
    for i in 0..120 {
        let created = call_ok(
            &admin,
            "create_customer",
            json!({ "first_name": format!("C{i}") }),
        )
        .await;
        ids.push(created["customer"]["id"].clone());
    }
    // One statement queues 120 deliveries at once; both processes are woken for them.
    let bulk = call_ok(
        &admin,
        "bulk_update_customers",
        json!({ "customer_ids": ids, "set": { "status": "customer" } }),
    )
    .await;
    assert_eq!(bulk["affected"], 120);
    receiver.wait_for(120, Duration::from_secs(60)).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while call_ok(
        &admin,
        "list_webhook_deliveries",
        json!({ "status": "delivered" }),
    )
    .await["total"]
        != 120
    {
        assert!(Instant::now() < deadline, "all 120 recorded as delivered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let mut per_delivery: HashMap<String, usize> = HashMap::new();
    for hit in &receiver.hits() {
        *per_delivery
            .entry(hit.header("x-agentcrm-delivery").to_owned())
            .or_default() += 1;
    }
    assert_eq!(per_delivery.len(), 120, "every delivery arrived");
    assert!(
        per_delivery.values().all(|n| *n == 1),
        "none twice: {per_delivery:?}"
    );
    let log = call_ok(
        &admin,
        "list_webhook_deliveries",
        json!({ "webhook_id": webhook["webhook"]["id"], "limit": 100 }),
    )
    .await;
    let deliveries = log["deliveries"].as_array().unwrap();
    assert!(
        deliveries
            .iter()
            .all(|d| d["attempts"] == 1 && d["attempt_log"].as_array().unwrap().len() == 1),
        "{log:#?}"
    );
    drop(two);
}

/// An agent run's record reaches a webhook only if its maker may read that run: someone it
/// was done for, or an admin (found by a review: `agents:read` received every run's output).
#[tokio::test]
async fn a_runs_completion_reaches_only_webhooks_whose_maker_may_read_the_run() {
    let db = TestDb::new().await;
    let server = HttpServer::start(db.command(&["http"]));
    let admin = http_client(&server.mcp_url(), &db.admin_key, Generation::Stateless).await;
    let receiver = Receiver::start(Behaviour::Accept).await;
    let scopes = [
        "agents:read",
        "agents:write",
        "agents:execute",
        "workflows:read",
        "workflows:write",
        "workflows:execute",
        "webhooks:manage",
    ];
    create_member(&db, "m@acme.test", &scopes);
    let m = key_client(&db, "m@acme.test", &[]).await;
    let hook = call_ok(
        &m,
        "create_webhook",
        json!({ "url": receiver.url, "events": ["agent.run.completed"] }),
    )
    .await["webhook"]["id"]
        .clone();
    let echo = call_ok(
        &admin,
        "create_workflow",
        json!({ "name": "echo", "steps": [{ "id": "s", "tool": "test_substitution",
                 "arguments": { "parameters": { "said": "{{input.note}}" },
                                "context": { "input": {} } } }] }),
    )
    .await["workflow"]["id"]
        .clone();
    call_ok(
        &admin,
        "create_agent",
        json!({ "name": "echoer", "scopes": ["workflows:read", "workflows:execute"],
                "kind": "workflow", "config": { "workflow_id": echo } }),
    )
    .await;
    // The admin's run: not the member's to read, so not sent.
    call_ok(
        &admin,
        "run_agent",
        json!({ "agent": "echoer", "input": { "note": "ADMIN-ONLY" }, "wait_seconds": 30 }),
    )
    .await;
    let first = settled(&admin, &hook, Duration::from_secs(20)).await;
    assert_eq!(first.len(), 1, "{first:?}");
    assert_eq!(first[0]["status"], "failed", "{first:?}");
    assert!(
        first[0]["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("done for others"),
        "{first:?}"
    );
    // The member's own run: sent.
    call_ok(
        &m,
        "run_agent",
        json!({ "agent": "echoer", "input": { "note": "MINE" }, "wait_seconds": 30 }),
    )
    .await;
    let hits = receiver.wait_for(1, Duration::from_secs(20)).await;
    assert_eq!(hits.len(), 1);
    let body = hits[0].json().to_string();
    assert!(
        body.contains("MINE") && !body.contains("ADMIN-ONLY"),
        "{body}"
    );

    // A workflow the member triggers on runs' completing is held to the same rule (one
    // check serves webhooks and triggers): the admin's run does not start it, its own does.
    let watcher = call_ok(
        &m,
        "create_workflow",
        json!({ "name": "watcher", "status": "active", "trigger_type": "event",
                "trigger_config": { "event": "agent.run.completed" },
                "steps": [{ "id": "s", "tool": "list_workflows", "arguments": { "limit": 1 } }] }),
    )
    .await["workflow"]["id"]
        .clone();
    for (client, note) in [(&admin, "ADMIN-AGAIN"), (&m, "MINE-AGAIN")] {
        call_ok(
            client,
            "run_agent",
            json!({ "agent": "echoer", "input": { "note": note }, "wait_seconds": 30 }),
        )
        .await;
    }
    // Events are taken in order: once the member's last run started it, the admin's runs
    // were decided.
    let deadline = Instant::now() + Duration::from_secs(20);
    let started = loop {
        let listed = call_ok(
            &admin,
            "list_workflow_executions",
            json!({ "workflow_id": watcher }),
        )
        .await;
        if listed.to_string().contains("MINE-AGAIN") || Instant::now() > deadline {
            break listed.to_string();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(started.contains("MINE-AGAIN"), "{started}");
    assert!(!started.contains("ADMIN"), "{started}");
    let refused = call_ok(
        &admin,
        "list_audit_log",
        json!({ "outcome": "refused", "action": "workflow.trigger" }),
    )
    .await;
    assert!(refused.to_string().contains("done for others"), "{refused}");
    admin.cancel().await.unwrap();
}
