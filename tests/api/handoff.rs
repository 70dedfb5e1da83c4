//! The handoff toolset over MCP: agents' calls held by the approval policy and decided by
//! people, handoff tickets, resource updates and in-client confirmation.

use std::time::Duration;

use rmcp::model::{
    ClientCapabilities, ClientConfig, ElicitRequestParams, ElicitResult, ElicitationAction,
    ElicitationCapability, FormElicitationCapability, ResourceUpdatedNotificationParam,
    SubscribeRequestParams,
};
use rmcp::service::{NotificationContext, RequestContext, RoleClient};
use rmcp::{ClientHandler, ErrorData};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::helpers::*;

async fn create(client: &Client, fields: Value) -> String {
    call_ok(client, "create_customer", fields).await["customer"]["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// An agent with `scopes`, allowed to delete customers (an explicit grant).
async fn deleting_agent(admin: &Client, name: &str, scopes: &[&str]) -> Value {
    let agent = call_ok(
        admin,
        "register_agent",
        json!({ "name": name, "scopes": scopes }),
    )
    .await;
    call_ok(
        admin,
        "update_agent_permissions",
        json!({ "agent_id": agent["agent"]["id"], "grants": [{ "scope": "customers:delete" }] }),
    )
    .await;
    agent
}

const AGENT_SCOPES: &[&str] = &[
    "customers:read",
    "customers:write",
    "customers:delete",
    "bulk",
    "handoff",
];

fn held_action(result: &rmcp::model::CallToolResult) -> String {
    assert_eq!(error_code(result), "pending_approval", "{result:?}");
    let body = result.structured_content.as_ref().unwrap();
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("Nothing has changed"),
        "{body}"
    );
    body["action_id"].as_str().unwrap().to_owned()
}

async fn exists(client: &Client, id: &str) -> bool {
    let result = call(client, "get_customer", json!({ "customer_id": id })).await;
    match result.is_error {
        Some(true) => {
            assert_eq!(error_code(&result), "not_found");
            false
        }
        _ => true,
    }
}

#[tokio::test]
async fn a_held_delete_waits_for_a_person_and_runs_once_approved() {
    let db = TestDb::new().await;
    let admin = stdio_client(db.command(&["stdio"]), Generation::Stateless).await;
    let ana = create(&admin, json!({ "first_name": "Ana", "last_name": "Lima" })).await;
    let bruno = create(
        &admin,
        json!({ "first_name": "Bruno", "last_name": "Souza" }),
    )
    .await;
    let agent = deleting_agent(&admin, "closer", AGENT_SCOPES).await;
    let bot = agent_client(&db, &agent).await;

    let held = call(&bot, "delete_customer", json!({ "customer_id": ana })).await;
    let action_id = held_action(&held);
    assert!(exists(&admin, &ana).await, "nothing changed while held");

    // No argument of the agent's call gets past the hold.
    for forged in [
        json!({ "customer_id": ana, "approved": true }),
        json!({ "customer_id": ana, "confirm": true, "action_id": action_id }),
    ] {
        assert_eq!(
            error_code(&call(&bot, "delete_customer", forged.clone()).await),
            "invalid_request",
            "{forged}"
        );
    }
    // ... and an agent never decides, not even its own action.
    let tools: Vec<String> = bot
        .list_all_tools()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name.to_string())
        .collect();
    assert!(tools.contains(&"get_pending_action".to_owned()));
    assert!(!tools.contains(&"decide_pending_action".to_owned()));
    assert_eq!(
        error_code(
            &call(
                &bot,
                "decide_pending_action",
                json!({ "action_id": action_id, "decision": "approve" }),
            )
            .await
        ),
        "forbidden"
    );
    assert!(exists(&admin, &ana).await);

    let queue = call_ok(&admin, "list_pending_actions", json!({})).await;
    assert_eq!(queue["total"], 1, "{queue}");
    let listed = &queue["pending_actions"][0];
    assert_eq!(listed["id"], action_id.as_str());
    assert_eq!(listed["action_type"], "delete_customer");
    assert_eq!(listed["customer_name"], "Ana Lima");
    assert_eq!(listed["agent_name"], "closer");
    assert_eq!(listed["state"], "pending");
    assert!(listed["summary"].as_str().unwrap().contains("Ana Lima"));

    let approved = call_ok(
        &admin,
        "decide_pending_action",
        json!({ "action_id": action_id, "decision": "approve", "note": "confirmed by phone" }),
    )
    .await;
    let action = &approved["pending_action"];
    assert_eq!(action["state"], "executed", "{approved}");
    assert_eq!(action["result"]["deleted"], true);
    assert_eq!(action["decision_note"], "confirmed by phone");
    assert!(!exists(&admin, &ana).await, "approval ran the delete");
    let seen = call_ok(
        &bot,
        "get_pending_action",
        json!({ "action_id": action_id }),
    )
    .await;
    assert_eq!(seen["pending_action"]["state"], "executed");
    let steps: Vec<&str> = seen["pending_action"]["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(steps, ["held", "approved", "executed"]);
    let again = call(
        &admin,
        "decide_pending_action",
        json!({ "action_id": action_id, "decision": "reject" }),
    )
    .await;
    assert_eq!(error_code(&again), "conflict");

    // Rejected: nothing runs.
    let second = held_action(&call(&bot, "delete_customer", json!({ "customer_id": bruno })).await);
    let rejected = call_ok(
        &admin,
        "decide_pending_action",
        json!({ "action_id": second, "decision": "reject", "note": "keep this one" }),
    )
    .await;
    assert_eq!(rejected["pending_action"]["state"], "rejected");
    assert!(
        exists(&admin, &bruno).await,
        "a rejected action changes nothing"
    );
    let seen = call_ok(&bot, "get_pending_action", json!({ "action_id": second })).await;
    assert_eq!(seen["pending_action"]["decision_note"], "keep this one");
    assert_eq!(
        call_ok(&admin, "list_pending_actions", json!({})).await["total"],
        0,
        "nothing open"
    );

    // The trail: held calls, the approved run as the agent, and the events.
    let audit = call_ok(
        &admin,
        "list_audit_log",
        json!({ "action": "delete_customer" }),
    )
    .await;
    let outcomes: Vec<(String, String)> = audit["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["outcome"].as_str().unwrap().to_owned(),
                e["transport"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    assert_eq!(
        outcomes.iter().filter(|(o, _)| o == "held").count(),
        2,
        "{outcomes:?}"
    );
    assert!(
        outcomes.contains(&("ok".to_owned(), "approval".to_owned())),
        "{outcomes:?}"
    );
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    let events: Vec<(String,)> = sqlx::query_as(
        "SELECT type FROM events WHERE type LIKE 'handoff.%' OR type = 'customer.deleted' ORDER BY id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let events: Vec<&str> = events.iter().map(|(t,)| t.as_str()).collect();
    assert_eq!(
        events,
        [
            "handoff.created",
            "customer.deleted",
            "handoff.decided",
            "handoff.created",
            "handoff.decided"
        ]
    );
    bot.cancel().await.unwrap();
    admin.cancel().await.unwrap();
}

#[tokio::test]
async fn approval_rechecks_the_agents_permissions_and_runs_once_under_concurrent_approvals() {
    let db = TestDb::new().await;
    let admin = stdio_client(db.command(&["stdio"]), Generation::Stateless).await;
    let other_admin = stdio_client(db.command(&["stdio"]), Generation::Sessions).await;
    let ana = create(&admin, json!({ "first_name": "Ana" })).await;
    let bruno = create(&admin, json!({ "first_name": "Bruno" })).await;
    let agent = deleting_agent(&admin, "closer", AGENT_SCOPES).await;
    let bot = agent_client(&db, &agent).await;

    // The agent loses the scope before anyone approves: the action fails, saying why.
    let first = held_action(&call(&bot, "delete_customer", json!({ "customer_id": ana })).await);
    call_ok(
        &admin,
        "update_agent_permissions",
        json!({ "agent_id": agent["agent"]["id"], "scopes": ["customers:read", "handoff"] }),
    )
    .await;
    let failed = call_ok(
        &admin,
        "decide_pending_action",
        json!({ "action_id": first, "decision": "approve" }),
    )
    .await;
    assert_eq!(failed["pending_action"]["state"], "failed", "{failed}");
    assert!(
        failed["pending_action"]["error"]
            .as_str()
            .unwrap()
            .contains("customers:delete"),
        "{failed}"
    );
    assert!(exists(&admin, &ana).await);

    // Two people approve at the same moment: the delete runs once.
    call_ok(
        &admin,
        "update_agent_permissions",
        json!({ "agent_id": agent["agent"]["id"], "scopes": AGENT_SCOPES }),
    )
    .await;
    let second = held_action(&call(&bot, "delete_customer", json!({ "customer_id": bruno })).await);
    let decide = json!({ "action_id": second, "decision": "approve" });
    let (a, b) = tokio::join!(
        call(&admin, "decide_pending_action", decide.clone()),
        call(&other_admin, "decide_pending_action", decide.clone()),
    );
    let outcomes = [&a, &b].map(|r| match r.is_error {
        Some(true) => error_code(r),
        _ => r.structured_content.as_ref().unwrap()["pending_action"]["state"]
            .as_str()
            .unwrap()
            .to_owned(),
    });
    let mut sorted = outcomes.to_vec();
    sorted.sort();
    assert_eq!(sorted, ["conflict", "executed"], "{a:?} {b:?}");
    assert!(!exists(&admin, &bruno).await);
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    let deletes: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE type = 'customer.deleted'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(deletes, 1);
    bot.cancel().await.unwrap();
    other_admin.cancel().await.unwrap();
    admin.cancel().await.unwrap();
}

#[tokio::test]
async fn a_held_bulk_change_acts_on_the_records_shown_when_it_was_held() {
    let db = TestDb::new().await;
    let admin = stdio_client(db.command(&["stdio"]), Generation::Stateless).await;
    let policy = call_ok(
        &admin,
        "set_approval_policy",
        json!({ "bulk_records_over": 3, "held_tools": ["log_interaction"] }),
    )
    .await;
    assert_eq!(policy["approval_policy"]["bulk_records_over"], 3);
    assert_eq!(policy["approval_policy"]["hold_customer_deletes"], true);
    for bad in [
        json!({ "held_tools": ["no_such_tool"] }),
        json!({ "held_tools": ["list_customers"] }),
        json!({ "held_tools": ["decide_pending_action"] }),
        json!({ "held_tools": ["create_webhook"] }),
        json!({ "bulk_records_over": -1 }),
        json!({ "discount_percent_over": 150 }),
        json!({ "surprise": true }),
    ] {
        assert_eq!(
            error_code(&call(&admin, "set_approval_policy", bad.clone()).await),
            "invalid_request",
            "{bad}"
        );
    }
    let mut vips = Vec::new();
    for i in 0..5 {
        vips.push(
            create(
                &admin,
                json!({ "first_name": format!("Vip{i}"), "tags": ["vip"] }),
            )
            .await,
        );
    }
    let agent = deleting_agent(
        &admin,
        "bulker",
        &[
            "customers:read",
            "customers:write",
            "interactions:write",
            "bulk",
            "handoff",
        ],
    )
    .await;
    let bot = agent_client(&db, &agent).await;
    // Small enough: runs.
    let small = call_ok(
        &bot,
        "bulk_update_customers",
        json!({ "customer_ids": [vips[0], vips[1]], "set": { "assigned_to": "amy" } }),
    )
    .await;
    assert_eq!(small["affected"], 2, "{small}");
    let held = held_action(
        &call(
            &bot,
            "bulk_update_customers",
            json!({ "filter": { "tag": "vip" }, "set": { "status": "customer" } }),
        )
        .await,
    );
    let seen = call_ok(&bot, "get_pending_action", json!({ "action_id": held })).await;
    assert!(
        seen["pending_action"]["hold_reason"]
            .as_str()
            .unwrap()
            .contains("more than 3"),
        "{seen}"
    );
    // Two more match by the time a person approves: approval acts on the five it was held
    // for (shown to the person), never on the filter resolved again.
    for i in 5..7 {
        create(
            &admin,
            json!({ "first_name": format!("Vip{i}"), "tags": ["vip"] }),
        )
        .await;
    }
    let approved = call_ok(
        &admin,
        "decide_pending_action",
        json!({ "action_id": held, "decision": "approve" }),
    )
    .await;
    assert_eq!(
        approved["pending_action"]["state"], "executed",
        "{approved}"
    );
    assert_eq!(approved["pending_action"]["result"]["affected"], 5);
    let customers = call_ok(&admin, "list_customers", json!({ "status": "customer" })).await;
    assert_eq!(customers["total"], 5);
    let mut changed: Vec<String> = customers["customers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_owned())
        .collect();
    changed.sort();
    vips.sort();
    assert_eq!(changed, vips, "exactly the records it was held for");

    // A tool the policy lists is held whatever its arguments; bad arguments are refused first.
    let customer =
        call_ok(&admin, "list_customers", json!({ "limit": 1 })).await["customers"][0]["id"]
            .clone();
    assert_eq!(
        error_code(&call(&bot, "log_interaction", json!({ "customer_id": customer })).await),
        "invalid_request"
    );
    let logged = held_action(
        &call(
            &bot,
            "log_interaction",
            json!({ "customer_id": customer, "type": "call", "notes": "asked for a refund" }),
        )
        .await,
    );
    let listed = call_ok(
        &admin,
        "list_pending_actions",
        json!({ "action_type": "log_interaction" }),
    )
    .await;
    assert_eq!(listed["pending_actions"][0]["id"], logged.as_str());
    bot.cancel().await.unwrap();
    admin.cancel().await.unwrap();
}

#[tokio::test]
async fn handoff_tickets_are_requested_by_agents_and_worked_by_people() {
    let db = TestDb::new().await;
    let admin = stdio_client(db.command(&["stdio"]), Generation::Stateless).await;
    let ana = create(&admin, json!({ "first_name": "Ana", "last_name": "Lima" })).await;
    let agent = deleting_agent(&admin, "support", &["customers:read", "handoff"]).await;
    let other = deleting_agent(&admin, "other", &["customers:read", "handoff"]).await;
    let bot = agent_client(&db, &agent).await;
    let nosy = agent_client(&db, &other).await;

    let ticket = call_ok(
        &bot,
        "request_handoff",
        json!({ "customer_id": ana, "reason": "Wants to negotiate the contract", "priority": "high",
                "context": "Asked twice for a manager" }),
    )
    .await;
    let id = ticket["handoff"]["id"].as_str().unwrap().to_owned();
    assert_eq!(ticket["handoff"]["state"], "pending");
    assert_eq!(ticket["handoff"]["customer_name"], "Ana Lima");
    assert_eq!(ticket["handoff"]["requested_by_name"], "support");
    for bad in [
        json!({ "reason": "" }),
        json!({ "reason": "x", "priority": "asap" }),
        json!({ "reason": "x", "customer_id": "00000000-0000-0000-0000-000000000000" }),
    ] {
        let code = error_code(&call(&bot, "request_handoff", bad.clone()).await);
        assert!(
            code == "invalid_request" || code == "not_found",
            "{bad}: {code}"
        );
    }
    assert_eq!(
        error_code(&call(&nosy, "get_handoff", json!({ "handoff_id": id })).await),
        "not_found",
        "agents see only their own tickets"
    );
    assert_eq!(call_ok(&nosy, "list_handoffs", json!({})).await["total"], 0);
    assert_eq!(
        error_code(
            &call(
                &bot,
                "update_handoff",
                json!({ "handoff_id": id, "state": "approved" })
            )
            .await
        ),
        "forbidden"
    );

    let users = call_ok(&admin, "whoami", json!({})).await;
    // The admin calls with an API key, acting for its owner.
    let me = users["principal"]["on_behalf_of"].clone();
    let worked = call_ok(
        &admin,
        "update_handoff",
        json!({ "handoff_id": id, "assignee_id": me, "note": "calling them now" }),
    )
    .await;
    assert_eq!(worked["handoff"]["assignee_id"], me);
    let decided = call_ok(
        &admin,
        "update_handoff",
        json!({ "handoff_id": id, "state": "approved", "note": "10 % agreed" }),
    )
    .await;
    assert_eq!(decided["handoff"]["state"], "approved");
    let seen = call_ok(&bot, "get_handoff", json!({ "handoff_id": id })).await;
    let steps: Vec<&str> = seen["handoff"]["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(steps, ["requested", "assigned", "note", "approved", "note"]);
    let high = call_ok(&admin, "list_handoffs", json!({ "priority": "high" })).await;
    assert_eq!(high["total"], 1);
    bot.cancel().await.unwrap();
    nosy.cancel().await.unwrap();
    admin.cancel().await.unwrap();
}

/// A client that records resource updates and answers confirmations with `answer`.
#[derive(Clone)]
struct Person {
    answer: Option<bool>,
    updates: mpsc::UnboundedSender<String>,
}

impl ClientHandler for Person {
    fn get_info(&self) -> ClientConfig {
        let mut config = client_config();
        if self.answer.is_some() {
            config.capabilities = ClientCapabilities::builder()
                .enable_elicitation_with(
                    ElicitationCapability::new().with_form(FormElicitationCapability::new()),
                )
                .build();
        }
        config
    }

    async fn create_elicitation(
        &self,
        request: ElicitRequestParams,
        _context: RequestContext<RoleClient>,
    ) -> Result<ElicitResult, ErrorData> {
        let ElicitRequestParams::FormElicitationParams { message, .. } = request else {
            return Ok(ElicitResult::new(ElicitationAction::Decline));
        };
        assert!(message.contains("delete_customer"), "{message}");
        Ok(match self.answer {
            Some(answer) => ElicitResult::new(ElicitationAction::Accept)
                .with_content(json!({ "confirm": answer })),
            None => ElicitResult::new(ElicitationAction::Decline),
        })
    }

    async fn on_resource_updated(
        &self,
        params: ResourceUpdatedNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        let _ = self.updates.send(params.uri);
    }
}

#[tokio::test]
async fn a_subscribed_agent_learns_the_decision_from_another_process() {
    let db = TestDb::new().await;
    let admin = stdio_client(db.command(&["stdio"]), Generation::Stateless).await;
    let ana = create(&admin, json!({ "first_name": "Ana" })).await;
    let agent = deleting_agent(&admin, "closer", AGENT_SCOPES).await;
    let (updates, mut received) = mpsc::unbounded_channel();
    let mut command = db.server(&["stdio"]);
    command
        .env("AGENTCRM_CLIENT_ID", agent["client_id"].as_str().unwrap())
        .env(
            "AGENTCRM_CLIENT_SECRET",
            agent["client_secret"].as_str().unwrap(),
        );
    let bot = stdio_client_with(
        Person {
            answer: None,
            updates,
        },
        command,
        Generation::Sessions,
    )
    .await;
    let action = held_action(&call(&bot, "delete_customer", json!({ "customer_id": ana })).await);
    let uri = format!("agentcrm://pending-actions/{action}");
    let listed = bot.list_all_resources().await.unwrap();
    assert!(listed.iter().any(|r| r.uri == uri), "{listed:?}");
    #[allow(deprecated)]
    bot.subscribe(SubscribeRequestParams::new(uri.clone()))
        .await
        .unwrap();
    #[allow(deprecated)]
    let refused = bot
        .subscribe(SubscribeRequestParams::new(
            "agentcrm://pending-actions/00000000-0000-0000-0000-000000000000",
        ))
        .await;
    assert!(refused.is_err(), "no subscription to what one cannot read");
    // The same agent on protocol 2026-07-28, in a process of its own: subscriptions/listen.
    let listener = agent_client(&db, &agent).await;
    let mut subscription = listener
        .listen(
            rmcp::model::SubscriptionFilter::builder()
                .resource_subscription(uri.clone())
                .build(),
        )
        .await
        .unwrap();
    assert_eq!(
        subscription.acknowledged().resource_subscriptions,
        Some(vec![uri.clone()])
    );

    call_ok(
        &admin,
        "decide_pending_action",
        json!({ "action_id": action, "decision": "approve" }),
    )
    .await;
    let notified = tokio::time::timeout(Duration::from_secs(10), received.recv())
        .await
        .expect("a resources/updated notification");
    assert_eq!(notified.as_deref(), Some(uri.as_str()));
    let pushed = tokio::time::timeout(Duration::from_secs(10), subscription.next())
        .await
        .expect("an update on the listen subscription")
        .unwrap();
    match pushed {
        Some(rmcp::model::ServerNotification::ResourceUpdatedNotification(update)) => {
            assert_eq!(update.params.uri, uri)
        }
        other => panic!("{other:?}"),
    }
    subscription.cancel().await.unwrap();
    listener.cancel().await.unwrap();
    let read = bot
        .read_resource(rmcp::model::ReadResourceRequestParams::new(uri.clone()))
        .await
        .unwrap();
    let rmcp::model::ResourceContents::TextResourceContents { text, .. } = &read.contents[0] else {
        panic!("{read:?}")
    };
    let action: Value = serde_json::from_str(text).unwrap();
    assert_eq!(action["state"], "executed");
    bot.cancel().await.unwrap();
    admin.cancel().await.unwrap();
}

#[tokio::test]
async fn destructive_tools_ask_people_to_confirm_when_the_tenant_wants_it() {
    let db = TestDb::new().await;
    let admin = stdio_client(db.command(&["stdio"]), Generation::Stateless).await;
    call_ok(
        &admin,
        "set_approval_policy",
        json!({ "confirm_destructive": true }),
    )
    .await;
    let ids = [
        create(&admin, json!({ "first_name": "A" })).await,
        create(&admin, json!({ "first_name": "B" })).await,
        create(&admin, json!({ "first_name": "C" })).await,
        create(&admin, json!({ "first_name": "D" })).await,
    ];
    // A client that cannot ask: refused, nothing done.
    let refused = call(&admin, "delete_customer", json!({ "customer_id": ids[0] })).await;
    assert_eq!(error_code(&refused), "forbidden");
    assert!(
        refused.structured_content.as_ref().unwrap()["error_description"]
            .as_str()
            .unwrap()
            .contains("cannot ask"),
        "{refused:?}"
    );
    assert!(exists(&admin, &ids[0]).await);

    // Clients that can: on sessions (elicitation/create) and on 2026-07-28 (input required).
    for (generation, confirm, id) in [
        (Generation::Sessions, true, &ids[0]),
        (Generation::Sessions, false, &ids[1]),
        (Generation::Stateless, true, &ids[2]),
        (Generation::Stateless, false, &ids[3]),
    ] {
        let (updates, _received) = mpsc::unbounded_channel();
        let person = stdio_client_with(
            Person {
                answer: Some(confirm),
                updates,
            },
            db.command(&["stdio"]),
            generation,
        )
        .await;
        let result = call(&person, "delete_customer", json!({ "customer_id": id })).await;
        if confirm {
            assert_ne!(result.is_error, Some(true), "{generation:?}: {result:?}");
            assert!(!exists(&admin, id).await, "{generation:?}");
        } else {
            assert_eq!(error_code(&result), "forbidden", "{generation:?}");
            assert!(
                exists(&admin, id).await,
                "{generation:?}: declined, nothing done"
            );
        }
        person.cancel().await.unwrap();
    }
    admin.cancel().await.unwrap();
}

#[tokio::test]
async fn large_invoices_and_discounts_by_agents_are_held() {
    let db = TestDb::new().await;
    let admin = stdio_client(db.command(&["stdio"]), Generation::Stateless).await;
    let ana = create(&admin, json!({ "first_name": "Ana", "last_name": "Lima" })).await;
    let agent = call_ok(
        &admin,
        "register_agent",
        json!({ "name": "billing", "scopes": ["customers:read", "invoices:read", "invoices:write", "handoff"] }),
    )
    .await;
    let bot = agent_client(&db, &agent).await;
    let invoice = |unit_price: i64, discount: f64| {
        json!({ "customer_id": ana, "currency": "EUR", "discount_percent": discount,
                "lines": [{ "description": "Consulting", "unit_price": unit_price }] })
    };
    let small = call_ok(&bot, "create_invoice", invoice(500_000, 10.0)).await;
    assert_eq!(small["invoice"]["total"], 450_000);
    let large = held_action(&call(&bot, "create_invoice", invoice(2_000_000, 0.0)).await);
    let discounted = held_action(&call(&bot, "create_invoice", invoice(1_000, 25.0)).await);
    let queue = call_ok(&admin, "list_pending_actions", json!({})).await;
    let reasons: Vec<(String, String)> = queue["pending_actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["id"].as_str().unwrap().to_owned(),
                a["hold_reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert!(
        reasons.contains(&(
            large.clone(),
            "invoices over 10000.00 EUR are held (20000.00 EUR here)".to_owned()
        )),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|(id, reason)| *id == discounted && reason.contains("discounts over 20 %")),
        "{reasons:?}"
    );
    assert_eq!(
        call_ok(&admin, "list_invoices", json!({})).await["total"],
        1,
        "held invoices were not created"
    );
    let approved = call_ok(
        &admin,
        "decide_pending_action",
        json!({ "action_id": large, "decision": "approve" }),
    )
    .await;
    assert_eq!(
        approved["pending_action"]["state"], "executed",
        "{approved}"
    );
    assert_eq!(
        approved["pending_action"]["result"]["invoice"]["total"],
        2_000_000
    );
    // People are not held.
    call_ok(&admin, "create_invoice", invoice(5_000_000, 50.0)).await;
    assert_eq!(
        call_ok(&admin, "list_invoices", json!({})).await["total"],
        3
    );
    bot.cancel().await.unwrap();
    admin.cancel().await.unwrap();
}

#[tokio::test]
async fn an_approved_action_whose_server_died_ends_failed_not_forever_approved() {
    let db = TestDb::new().await;
    let admin = stdio_client(db.command(&["stdio"]), Generation::Stateless).await;
    let ana = create(&admin, json!({ "first_name": "Ana" })).await;
    let agent = deleting_agent(&admin, "closer", AGENT_SCOPES).await;
    let bot = agent_client(&db, &agent).await;
    let action = held_action(&call(&bot, "delete_customer", json!({ "customer_id": ana })).await);
    // As if a process approved it an hour ago and died before running it.
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    sqlx::query(
        "UPDATE pending_actions SET state = 'approved', decided_at = now() - interval '1 hour'
         WHERE id = $1::uuid",
    )
    .bind(&action)
    .execute(&pool)
    .await
    .unwrap();
    // Any serving process ends it (each sweeps at start, then every minute).
    let restarted = stdio_client(db.command(&["stdio"]), Generation::Stateless).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let seen = loop {
        let seen = call_ok(&bot, "get_pending_action", json!({ "action_id": action })).await;
        if seen["pending_action"]["state"] != "approved" || std::time::Instant::now() > deadline {
            break seen;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(seen["pending_action"]["state"], "failed", "{seen}");
    assert!(
        seen["pending_action"]["error"]
            .as_str()
            .unwrap()
            .contains("check whether it took effect")
    );
    let decided: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE type = 'handoff.decided' AND subject_id = $1::uuid",
    )
    .bind(&action)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(decided, 1);
    restarted.cancel().await.unwrap();
    bot.cancel().await.unwrap();
    admin.cancel().await.unwrap();
}

/// The agent whose call was held follows it up, as the held answer tells it to, without the
/// `handoff` scope (the tool and its resource needed it); anyone else still needs it.
#[tokio::test]
async fn an_agent_reads_its_own_held_action_without_the_handoff_scope() {
    let db = TestDb::new().await;
    let admin = stdio_client(db.command(&["stdio"]), Generation::Stateless).await;
    let ana = create(&admin, json!({ "first_name": "Ana" })).await;
    let agent = deleting_agent(&admin, "narrow", &["customers:read", "customers:delete"]).await;
    let bot = agent_client(&db, &agent).await;
    let held = held_action(&call(&bot, "delete_customer", json!({ "customer_id": ana })).await);
    let seen = call_ok(&bot, "get_pending_action", json!({ "action_id": held })).await;
    assert_eq!(seen["pending_action"]["state"], "pending", "{seen}");
    let read = bot
        .read_resource(rmcp::model::ReadResourceRequestParams::new(format!(
            "agentcrm://pending-actions/{held}"
        )))
        .await
        .unwrap();
    let text = serde_json::to_string(&read.contents).unwrap();
    assert!(text.contains("pending"), "{text}");
    // A person's key without `handoff` does not read the queue through it.
    let narrow = db.api_key("owner@acme.test", &["customers:read"]);
    let mut command = db.server(&["stdio"]);
    command.env("AGENTCRM_API_KEY", &narrow);
    let person = stdio_client(command, Generation::Stateless).await;
    let refused = call(&person, "get_pending_action", json!({ "action_id": held })).await;
    assert_eq!(error_code(&refused), "forbidden");
}
