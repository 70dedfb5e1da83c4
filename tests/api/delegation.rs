//! Work done on someone's behalf never exceeds what they may do: each test is an attack
//! of the red-team pass (issue 16) that worked before the chain of principals existed.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::fake_llm::{FakeLlm, Flavor, Reply};
use crate::helpers::*;

/// A member of tenant `acme` with `scopes`, and a stdio client acting through an API key
/// of theirs (narrowed to `key_scopes` when given).
async fn member(db: &TestDb, email: &str, scopes: &[&str], key_scopes: &[&str]) -> Client {
    create_member(db, email, scopes);
    key_client(db, email, key_scopes).await
}

async fn register(admin: &Client, name: &str, scopes: &[&str]) -> Value {
    call_ok(
        admin,
        "register_agent",
        json!({ "name": name, "scopes": scopes }),
    )
    .await
}

fn id(value: &Value) -> String {
    value.as_str().expect("an id").to_owned()
}

async fn customer(client: &Client, first_name: &str, status: &str) -> String {
    id(&call_ok(
        client,
        "create_customer",
        json!({ "first_name": first_name, "email": format!("{}@example.com", first_name.to_lowercase()),
                "status": status }),
    )
    .await["customer"]["id"])
}

async fn workflow(client: &Client, args: Value) -> String {
    id(&call_ok(client, "create_workflow", args).await["workflow"]["id"])
}

fn refused(result: &rmcp::model::CallToolResult, code: &str, words: &str) {
    assert_eq!(error_code(result), code, "{result:?}");
    let text = result.structured_content.as_ref().unwrap()["error_description"]
        .as_str()
        .unwrap();
    assert!(text.contains(words), "`{words}` not in: {text}");
}

/// Executions of `workflow_id` as the admin sees them, once `done` says so (or 20 s pass).
async fn executions_until(
    admin: &Client,
    workflow_id: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let listed = call_ok(
            admin,
            "list_workflow_executions",
            json!({ "workflow_id": workflow_id }),
        )
        .await;
        if done(&listed) || Instant::now() > deadline {
            return listed;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn all_ended(listed: &Value, count: u64) -> bool {
    listed["total"].as_u64() == Some(count)
        && listed["executions"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| ["succeeded", "failed", "cancelled"].contains(&e["status"].as_str().unwrap()))
}

async fn execution(client: &Client, execution_id: &Value) -> Value {
    call_ok(
        client,
        "get_workflow_execution",
        json!({ "execution_id": execution_id }),
    )
    .await
}

/// 1. Rewriting someone else's workflow (to run as them) is refused, for agents and for
/// members, and a row-limited agent cannot make event triggers of its own.
#[tokio::test]
async fn only_owners_and_admins_change_a_workflow_and_agents_never_a_persons() {
    let db = TestDb::new().await;
    let admin = stdio_client(db.command(&["stdio"]), Generation::Stateless).await;
    let steps = json!([{ "id": "list", "tool": "list_customers", "arguments": {} }]);
    let owned = workflow(&admin, json!({ "name": "Admin's", "steps": steps })).await;
    let agent = register(
        &admin,
        "limited",
        &[
            "customers:read",
            "interactions:read",
            "interactions:write",
            "workflows:read",
            "workflows:write",
        ],
    )
    .await;
    call_ok(
        &admin,
        "update_agent_permissions",
        json!({ "agent_id": agent["agent"]["id"],
                "conditions": { "customers": [{ "field": "status", "op": "eq", "value": "hot_lead" }] } }),
    )
    .await;
    let bot = agent_client(&db, &agent).await;
    let takeover = json!({
        "workflow_id": owned, "status": "active", "trigger_type": "event",
        "trigger_config": { "event": "interaction.created" },
        "steps": [{ "id": "widen", "tool": "update_agent_permissions",
                    "arguments": { "agent_id": agent["agent"]["id"], "conditions": {},
                                   "scopes": ["customers:read", "customers:delete"] } }],
    });
    refused(
        &call(&bot, "update_workflow", takeover.clone()).await,
        "forbidden",
        "only its owner or an admin",
    );
    refused(
        &call(&bot, "delete_workflow", json!({ "workflow_id": owned })).await,
        "forbidden",
        "agents never change what a person owns",
    );
    let member = member(
        &db,
        "mo@acme.test",
        &["workflows:read", "workflows:write", "customers:read"],
        &[],
    )
    .await;
    let audit_reader = json!({ "workflow_id": owned,
        "steps": [{ "id": "audit", "tool": "list_audit_log", "arguments": {} }] });
    refused(
        &call(&member, "update_workflow", audit_reader).await,
        "forbidden",
        "belongs to Owner",
    );
    refused(
        &call(
            &member,
            "update_workflow",
            json!({ "workflow_id": owned, "status": "paused" }),
        )
        .await,
        "forbidden",
        "only its owner or an admin",
    );
    // Its own event-triggered workflow: events carry whole records, past its conditions.
    let mut own = takeover.clone();
    own.as_object_mut().unwrap().remove("workflow_id");
    own["name"] = json!("Mine");
    refused(
        &call(&bot, "create_workflow", own).await,
        "forbidden",
        "cannot create event triggers",
    );
    let unchanged = call_ok(&admin, "get_workflow", json!({ "workflow_id": owned })).await;
    assert_eq!(unchanged["workflow"]["version"], 1, "{unchanged}");
    assert_eq!(unchanged["workflow"]["status"], "draft");
    assert_eq!(unchanged["workflow"]["owner"]["name"], "Owner");
    let me = call_ok(&bot, "whoami", json!({})).await;
    assert!(
        !me.to_string().contains("customers:delete"),
        "nothing widened: {me}"
    );
    // The owner changes it, and an admin may.
    let own_steps = json!([{ "id": "n", "tool": "list_customers", "arguments": {} }]);
    let members = workflow(&member, json!({ "name": "Mo's", "steps": own_steps })).await;
    call_ok(
        &member,
        "update_workflow",
        json!({ "workflow_id": members, "description": "mine" }),
    )
    .await;
    call_ok(
        &admin,
        "update_workflow",
        json!({ "workflow_id": members, "status": "paused" }),
    )
    .await;
    bot.cancel().await.unwrap();
    member.cancel().await.unwrap();
    admin.cancel().await.unwrap();
}

/// 2. No workflow decides a held action, whoever owns it: its own delete is not approved
/// "by" the admin.
#[tokio::test]
async fn no_workflow_step_decides_a_held_action() {
    let db = TestDb::new().await;
    let admin = stdio_client(db.command(&["stdio"]), Generation::Stateless).await;
    let target = customer(&admin, "Target", "lead").await;
    let agent = register(
        &admin,
        "deleter",
        &[
            "customers:read",
            "customers:delete",
            "handoff",
            "workflows:read",
            "workflows:write",
        ],
    )
    .await;
    call_ok(
        &admin,
        "update_agent_permissions",
        json!({ "agent_id": agent["agent"]["id"], "grants": [{ "scope": "customers:delete" }] }),
    )
    .await;
    let bot = agent_client(&db, &agent).await;
    let held = call(&bot, "delete_customer", json!({ "customer_id": target })).await;
    assert_eq!(error_code(&held), "pending_approval");
    let action = held.structured_content.unwrap()["action_id"].clone();
    let forge = |name: &str| {
        json!({ "name": name, "status": "active", "trigger_type": "event",
            "trigger_config": { "event": "handoff.created" },
            "steps": [{ "id": "approve", "tool": "decide_pending_action",
                        "arguments": { "action_id": "{{event.payload.pending_action.id}}",
                                       "decision": "approve" } }] })
    };
    refused(
        &call(&bot, "create_workflow", forge("forged")).await,
        "invalid_request",
        "decided by a person",
    );
    refused(
        &call(&admin, "create_workflow", forge("admin's")).await,
        "invalid_request",
        "decided by a person",
    );
    // A step stored before this rule (written straight into the database) is refused when
    // it runs, for the admin who owns it too.
    let manual = workflow(
        &admin,
        json!({ "name": "approve later", "steps": [{ "id": "s", "tool": "get_pending_action",
                 "arguments": { "action_id": action } }] }),
    )
    .await;
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&db.url)
        .await
        .unwrap();
    sqlx::query(
        "UPDATE workflows SET steps = jsonb_build_array(jsonb_build_object('id', 's',
             'tool', 'decide_pending_action',
             'arguments', jsonb_build_object('action_id', $2::text, 'decision', 'approve')))
         WHERE id = $1::uuid",
    )
    .bind(&manual)
    .bind(action.as_str().unwrap())
    .execute(&mut conn)
    .await
    .unwrap();
    let run = call_ok(
        &admin,
        "execute_workflow",
        json!({ "workflow_id": manual, "wait_seconds": 20 }),
    )
    .await;
    assert_eq!(run["execution"]["status"], "failed", "{run}");
    assert!(
        run["steps"][0]["error"]
            .as_str()
            .unwrap()
            .contains("decided by a person"),
        "{run}"
    );
    let still = call_ok(&admin, "get_pending_action", json!({ "action_id": action })).await;
    assert_eq!(still["pending_action"]["state"], "pending", "{still}");
    assert!(
        call(&admin, "get_customer", json!({ "customer_id": target }))
            .await
            .is_error
            != Some(true)
    );
    bot.cancel().await.unwrap();
    admin.cancel().await.unwrap();
}

/// A member's workflow whose step made another workflow, run by an admin, made one that
/// ran later as the admin alone (found by a review: it listed API keys). Work done on
/// someone's behalf makes no standing work: not as a step (nor as an agent's tool: see
/// `agents.rs`), and a step stored before the rule is refused when it runs.
#[tokio::test]
async fn no_work_done_on_someones_behalf_makes_standing_work() {
    let db = TestDb::new().await;
    let admin = stdio_client(db.command(&["stdio"]), Generation::Stateless).await;
    let m = member(
        &db,
        "m@acme.test",
        &[
            "customers:read",
            "workflows:read",
            "workflows:write",
            "workflows:execute",
            "agents:read",
            "agents:write",
        ],
        &[],
    )
    .await;
    let inner = json!({ "name": "escalated", "status": "active", "trigger_type": "schedule",
        "trigger_config": { "interval_seconds": 60 },
        "steps": [{ "id": "keys", "tool": "list_api_keys", "arguments": {} }] });
    for tool in [
        "create_workflow",
        "use_workflow_template",
        "set_agent_config",
    ] {
        let maker = json!({ "name": format!("maker {tool}"),
            "steps": [{ "id": "s1", "tool": tool, "arguments": inner.clone() }] });
        refused(
            &call(&m, "create_workflow", maker).await,
            "invalid_request",
            "runs later for its owner",
        );
    }
    // Stored before the rule (written into the database), run by the admin: refused.
    let maker = workflow(
        &m,
        json!({ "name": "maker", "steps": [{ "id": "s1", "tool": "list_workflows",
                 "arguments": {} }] }),
    )
    .await;
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&db.url)
        .await
        .unwrap();
    sqlx::query(
        "UPDATE workflows SET steps = jsonb_build_array(jsonb_build_object('id', 's1',
             'tool', 'create_workflow', 'arguments', $2::jsonb))
         WHERE id = $1::uuid",
    )
    .bind(&maker)
    .bind(&inner)
    .execute(&mut conn)
    .await
    .unwrap();
    let run = call_ok(
        &admin,
        "execute_workflow",
        json!({ "workflow_id": maker, "wait_seconds": 20 }),
    )
    .await;
    assert_eq!(run["execution"]["status"], "failed", "{run}");
    assert!(
        run["steps"][0]["error"]
            .as_str()
            .unwrap()
            .contains("runs later for its owner"),
        "{run}"
    );
    let made: i64 = sqlx::query_scalar("SELECT count(*) FROM workflows WHERE name = 'escalated'")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(made, 0);
    m.cancel().await.unwrap();
    admin.cancel().await.unwrap();
}

/// Work done for a chain reads what every member of it may read (found by a review): a
/// member's step, run by an admin, listed the admin's private executions with their input;
/// an agent's step, run by an admin, listed every handoff ticket in the tenant.
#[tokio::test]
async fn a_chain_reads_only_what_each_of_its_members_may_read() {
    let db = TestDb::new().await;
    let admin = stdio_client(db.command(&["stdio"]), Generation::Stateless).await;
    let m = member(
        &db,
        "m@acme.test",
        &[
            "customers:read",
            "workflows:read",
            "workflows:write",
            "workflows:execute",
            "customers:export",
        ],
        &[],
    )
    .await;
    let private = workflow(
        &admin,
        json!({ "name": "private", "steps": [{ "id": "s", "tool": "list_customers",
                 "arguments": {} }] }),
    )
    .await;
    call_ok(
        &admin,
        "execute_workflow",
        json!({ "workflow_id": private, "input_data": { "note": "ADMIN-ONLY-SECRET" },
                "wait_seconds": 20 }),
    )
    .await;
    call_ok(
        &admin,
        "request_handoff",
        json!({ "reason": "ADMIN-TICKET: a refund" }),
    )
    .await;

    let lister = workflow(
        &m,
        json!({ "name": "lister", "steps": [{ "id": "s", "tool": "list_workflow_executions",
                 "arguments": {} }] }),
    )
    .await;
    let run = call_ok(
        &admin,
        "execute_workflow",
        json!({ "workflow_id": lister, "wait_seconds": 20 }),
    )
    .await;
    assert_eq!(run["execution"]["status"], "succeeded", "{run}");
    let seen = call_ok(
        &m,
        "get_workflow_execution",
        json!({ "execution_id": run["execution"]["id"] }),
    )
    .await;
    assert!(
        !seen.to_string().contains("ADMIN-ONLY-SECRET")
            && !run.to_string().contains("ADMIN-ONLY-SECRET"),
        "{seen}"
    );

    // The admin's export, whose id reached the member's workflow as input: not the chain's.
    let export = call_ok(&admin, "export_customers", json!({ "wait_seconds": 20 })).await;
    let fetch = workflow(
        &m,
        json!({ "name": "fetch", "steps": [{ "id": "s", "tool": "get_export",
                 "arguments": { "export_id": "{{input.id}}" } }] }),
    )
    .await;
    let run = call_ok(
        &admin,
        "execute_workflow",
        json!({ "workflow_id": fetch, "input_data": { "id": export["export"]["export_id"] },
                "wait_seconds": 20 }),
    )
    .await;
    assert_eq!(run["execution"]["status"], "failed", "{run}");
    assert!(
        run["steps"][0]["error"]
            .as_str()
            .unwrap_or_default()
            .contains("no export"),
        "{run}"
    );

    let agent = register(
        &admin,
        "writer",
        &[
            "handoff",
            "workflows:read",
            "workflows:write",
            "workflows:execute",
        ],
    )
    .await;
    let bot = agent_client(&db, &agent).await;
    let tickets = workflow(
        &bot,
        json!({ "name": "tickets", "steps": [{ "id": "s", "tool": "list_handoffs",
                 "arguments": {} }] }),
    )
    .await;
    let run = call_ok(
        &admin,
        "execute_workflow",
        json!({ "workflow_id": tickets, "wait_seconds": 20 }),
    )
    .await;
    assert_eq!(run["execution"]["status"], "succeeded", "{run}");
    assert!(!run.to_string().contains("ADMIN-TICKET"), "{run}");
    // The admin, at their own client, still sees it.
    let all = call_ok(&admin, "list_handoffs", json!({})).await;
    assert!(all.to_string().contains("ADMIN-TICKET"), "{all}");
    bot.cancel().await.unwrap();
    m.cancel().await.unwrap();
    admin.cancel().await.unwrap();
}

/// A run chained after another agent's run hears what it said only if the chain's
/// schedule was made by someone that run was done for (found by a review: a member's
/// chained agent read an admin's private run through `input.previous.output`).
#[tokio::test]
async fn a_chained_run_hears_only_the_runs_its_schedules_maker_was_part_of() {
    let db = TestDb::new().await;
    let admin = stdio_client(db.command(&["stdio"]), Generation::Stateless).await;
    let scopes = [
        "workflows:read",
        "workflows:write",
        "workflows:execute",
        "agents:read",
        "agents:write",
        "agents:execute",
    ];
    let p = member(&db, "p@acme.test", &scopes, &[]).await;
    // agx echoes its input; agy, the member's, does nothing much.
    let echo = workflow(
        &admin,
        json!({ "name": "echo", "steps": [{ "id": "s", "tool": "test_substitution",
                 "arguments": { "parameters": { "said": "{{input.note}}" },
                                "context": { "input": {} } } }] }),
    )
    .await;
    call_ok(
        &admin,
        "create_agent",
        json!({ "name": "agx", "scopes": ["workflows:read", "workflows:execute"], "kind": "workflow",
                "config": { "workflow_id": echo } }),
    )
    .await;
    let idle = workflow(
        &p,
        json!({ "name": "idle", "steps": [{ "id": "s", "tool": "list_workflows",
                 "arguments": { "limit": 1 } }] }),
    )
    .await;
    call_ok(
        &p,
        "create_agent",
        json!({ "name": "agy", "scopes": ["workflows:read", "workflows:execute"], "kind": "workflow",
                "config": { "workflow_id": idle } }),
    )
    .await;
    call_ok(
        &p,
        "schedule_agent",
        json!({ "agent": "agy", "after_agent": "agx", "after_status": "any",
                "prompt": "P-PRIVATE-PROMPT" }),
    )
    .await;
    // A schedule's prompt and callback are its maker's (and admins'): another member with
    // agents:read does not list it.
    let q = member(&db, "q@acme.test", &scopes, &[]).await;
    for (who, client, count) in [("maker", &p, 1), ("admin", &admin, 1), ("other", &q, 0)] {
        let listed = call_ok(client, "list_schedules", json!({})).await;
        assert_eq!(listed["total"], count, "{who}: {listed}");
        assert_eq!(
            listed.to_string().contains("P-PRIVATE-PROMPT"),
            count == 1,
            "{who}: {listed}"
        );
    }
    q.cancel().await.unwrap();

    let chained = |nth: usize| {
        let p = &p;
        async move {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let runs = call_ok(p, "list_agent_runs", json!({ "agent": "agy" })).await;
                let list = runs["runs"].as_array().cloned().unwrap_or_default();
                if list.len() >= nth
                    && list
                        .iter()
                        .all(|r| !matches!(r["status"].as_str(), Some("queued" | "running")))
                {
                    return runs;
                }
                assert!(Instant::now() < deadline, "no chained run: {runs}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    // The member's own run of agx: its chained run hears what agx said.
    call_ok(
        &p,
        "run_agent",
        json!({ "agent": "agx", "input": { "note": "MINE-1" }, "wait_seconds": 30 }),
    )
    .await;
    let runs = chained(1).await;
    assert!(runs.to_string().contains("MINE-1"), "{runs}");
    // The admin's private run of agx: the chained run starts, without what agx said.
    let private = call_ok(
        &admin,
        "run_agent",
        json!({ "agent": "agx", "input": { "note": "MERGER-40M" }, "wait_seconds": 30 }),
    )
    .await;
    assert!(private.to_string().contains("MERGER-40M"), "{private}");
    let runs = chained(2).await;
    assert!(!runs.to_string().contains("MERGER-40M"), "{runs}");
    assert!(runs.to_string().contains("done for others"), "{runs}");
    p.cancel().await.unwrap();
    admin.cancel().await.unwrap();
}

/// 3. A narrowed API key's triggered workflow acts with the key's own scopes, not its
/// owner's: it widens nobody and turns off no hold.
#[tokio::test]
async fn a_narrowed_keys_triggered_workflow_acts_with_the_keys_own_scopes() {
    let db = TestDb::new().await;
    let admin = stdio_client(db.command(&["stdio"]), Generation::Stateless).await;
    let victim = register(&admin, "victim", &["customers:read"]).await;
    let key = key_client(
        &db,
        "owner@acme.test",
        &["workflows:read", "workflows:write", "customers:read"],
    )
    .await;
    let id = workflow(
        &key,
        json!({ "name": "widen", "status": "active", "trigger_type": "event",
            "trigger_config": { "event": "customer.created" },
            "steps": [
                { "id": "widen", "tool": "update_agent_permissions",
                  "arguments": { "agent_id": victim["agent"]["id"],
                                 "scopes": ["customers:read", "customers:delete"] },
                  "on_error": { "then": "continue" } },
                { "id": "policy", "tool": "set_approval_policy",
                  "arguments": { "hold_customer_deletes": false } }
            ] }),
    )
    .await;
    customer(&admin, "Trigger", "lead").await;
    let listed = executions_until(&admin, &id, |l| all_ended(l, 1)).await;
    assert_eq!(listed["total"], 1, "{listed}");
    let run = execution(&admin, &listed["executions"][0]["id"]).await;
    assert_eq!(run["execution"]["status"], "failed", "{run}");
    for step in run["steps"].as_array().unwrap() {
        assert_eq!(step["status"], "failed", "{run}");
        assert!(step["error"].as_str().unwrap().contains("admin"), "{step}");
    }
    let victim_now = call_ok(
        &admin,
        "get_agent",
        json!({ "agent_id": victim["agent"]["id"] }),
    )
    .await;
    assert_eq!(victim_now["agent"]["scopes"], json!(["customers:read"]));
    let policy = call_ok(
        &admin,
        "list_audit_log",
        json!({ "action": "set_approval_policy" }),
    )
    .await;
    let event = &policy["events"][0];
    assert_eq!(event["outcome"], "refused", "{policy}");
    assert_eq!(event["transport"], "workflow");
    assert_eq!(
        event["chain"][0]["name"], "Owner",
        "the chain is audited: {event}"
    );
    assert_eq!(event["chain"][1]["kind"], "api_key", "{event}");
    key.cancel().await.unwrap();
    admin.cancel().await.unwrap();
}

/// 4. Nobody borrows an agent's identity: attaching or running one needs its scopes (or
/// an admin), and a member does not delete an agent an admin registered.
#[tokio::test]
async fn an_agents_identity_is_not_borrowed() {
    let db = TestDb::new().await;
    let admin = stdio_client(db.command(&["stdio"]), Generation::Stateless).await;
    let finance = register(
        &admin,
        "finance",
        &["invoices:read", "reports", "workflows:execute"],
    )
    .await;
    let member = member(
        &db,
        "mia@acme.test",
        &[
            "agents:read",
            "agents:write",
            "agents:execute",
            "workflows:read",
            "workflows:write",
            "workflows:execute",
            "customers:read",
        ],
        &[],
    )
    .await;
    let steps = json!([{ "id": "money", "tool": "list_invoices", "arguments": {} }]);
    let hers = workflow(&member, json!({ "name": "peek", "steps": steps })).await;
    refused(
        &call(
            &member,
            "create_agent",
            json!({ "agent": "finance", "kind": "workflow", "config": { "workflow_id": hers } }),
        )
        .await,
        "forbidden",
        "holds scopes you do not (reports, invoices:read)",
    );
    refused(
        &call(&member, "delete_agent", json!({ "agent": "finance" })).await,
        "forbidden",
        "only an admin deletes it",
    );
    assert_eq!(
        call_ok(
            &admin,
            "get_agent",
            json!({ "agent_id": finance["agent"]["id"] })
        )
        .await["agent"]["enabled"],
        true
    );
    // An admin makes it a workflow agent of the member's workflow: its run acts for the
    // workflow's owner too, who may not read invoices.
    call_ok(
        &admin,
        "create_agent",
        json!({ "agent": "finance", "kind": "workflow", "config": { "workflow_id": hers } }),
    )
    .await;
    refused(
        &call(&member, "run_agent", json!({ "agent": "finance" })).await,
        "forbidden",
        "holds scopes you do not",
    );
    let run = call_ok(
        &admin,
        "run_agent",
        json!({ "agent": "finance", "wait_seconds": 30 }),
    )
    .await;
    assert_eq!(run["status"], "error", "{run}");
    let listed = call_ok(
        &admin,
        "list_workflow_executions",
        json!({ "workflow_id": hers }),
    )
    .await;
    let executed = execution(&admin, &listed["executions"][0]["id"]).await;
    assert!(
        executed["steps"][0]["error"]
            .as_str()
            .unwrap()
            .contains("invoices:read"),
        "the member owns the workflow: {executed}"
    );
    // A member deletes an agent it made itself.
    call_ok(
        &member,
        "create_agent",
        json!({ "name": "mine", "scopes": ["customers:read"], "kind": "workflow",
                "config": { "workflow_id": hers } }),
    )
    .await;
    // Chaining its agent after the finance agent would hand it the finance run's output.
    refused(
        &call(
            &member,
            "schedule_agent",
            json!({ "agent": "mine", "after_agent": "finance" }),
        )
        .await,
        "forbidden",
        "agent `finance` holds scopes you do not",
    );
    call_ok(&member, "delete_agent", json!({ "agent": "mine" })).await;
    member.cancel().await.unwrap();
    admin.cancel().await.unwrap();
}

/// 5. Logs are read through the reader's policy: another principal's executions and runs
/// are unknown to a field-ruled agent and to a member, and a reader who lost a scope sees
/// the step's data redacted.
#[tokio::test]
async fn logs_of_work_are_read_through_the_readers_policy() {
    let db = TestDb::new().await;
    let admin = stdio_client(db.command(&["stdio"]), Generation::Stateless).await;
    let secret = customer(&admin, "Hidden", "lead").await;
    let steps =
        json!([{ "id": "read", "tool": "get_customer", "arguments": { "customer_id": secret } }]);
    let admins = workflow(&admin, json!({ "name": "read", "steps": steps })).await;
    let run = call_ok(&admin, "execute_workflow", json!({ "workflow_id": admins })).await;
    assert_eq!(run["execution"]["status"], "succeeded", "{run}");
    let execution_id = run["execution"]["id"].clone();
    let agent = register(
        &admin,
        "nosy",
        &["workflows:read", "customers:read", "audit:read"],
    )
    .await;
    call_ok(
        &admin,
        "update_agent_permissions",
        json!({ "agent_id": agent["agent"]["id"], "field_rules": { "customers": ["first_name"] } }),
    )
    .await;
    let bot = agent_client(&db, &agent).await;
    assert_eq!(
        error_code(
            &call(
                &bot,
                "get_workflow_execution",
                json!({ "execution_id": execution_id })
            )
            .await
        ),
        "not_found"
    );
    assert_eq!(
        call_ok(&bot, "list_workflow_executions", json!({})).await["total"],
        0
    );
    let read = bot
        .read_resource(rmcp::model::ReadResourceRequestParams::new(format!(
            "agentcrm://workflow-executions/{}",
            execution_id.as_str().unwrap()
        )))
        .await;
    assert!(read.is_err(), "not readable as a resource either: {read:?}");
    // Other sessions' calls are not the agent's to read, audit:read or not.
    let sessions = call_ok(
        &admin,
        "list_audit_log",
        json!({ "action": "execute_workflow" }),
    )
    .await;
    let session = sessions["events"][0]["session_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let calls = call_ok(
        &bot,
        "list_session_tool_calls",
        json!({ "session_id": session }),
    )
    .await;
    assert_eq!(calls["calls"], json!([]), "{calls}");

    // A member's own execution, read after the member lost the scope it used.
    let member = member(
        &db,
        "max@acme.test",
        &[
            "workflows:read",
            "workflows:write",
            "workflows:execute",
            "customers:read",
        ],
        &[],
    )
    .await;
    let theirs = workflow(&member, json!({ "name": "mine", "steps": steps })).await;
    let mine = call_ok(
        &member,
        "execute_workflow",
        json!({ "workflow_id": theirs }),
    )
    .await;
    assert_eq!(mine["execution"]["status"], "succeeded", "{mine}");
    assert_eq!(
        mine["steps"][0]["output"]["customer"]["email"],
        "hidden@example.com"
    );
    assert_eq!(
        error_code(
            &call(
                &member,
                "get_workflow_execution",
                json!({ "execution_id": execution_id })
            )
            .await
        ),
        "not_found",
        "the admin's execution is not the member's"
    );
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&db.url)
        .await
        .unwrap();
    sqlx::query("UPDATE users SET scopes = '{workflows:read}' WHERE email = 'max@acme.test'")
        .execute(&mut conn)
        .await
        .unwrap();
    // A stdio process resolves its credential once: a new one sees the narrowed scopes.
    let narrowed = key_client(&db, "max@acme.test", &[]).await;
    let later = execution(&narrowed, &mine["execution"]["id"]).await;
    assert_eq!(later["steps"][0]["output"]["redacted"], true, "{later}");
    assert!(!later.to_string().contains("hidden@example.com"), "{later}");
    assert_eq!(later["execution"]["output"]["redacted"], true, "{later}");
    bot.cancel().await.unwrap();
    narrowed.cancel().await.unwrap();
    member.cancel().await.unwrap();
    admin.cancel().await.unwrap();
}

/// 5 (runs). A member without invoices:read does not read an agent run that read invoices.
#[tokio::test]
async fn agent_runs_are_read_by_who_they_act_for_and_admins() {
    let db = TestDb::new().await;
    let admin = stdio_client(db.command(&["stdio"]), Generation::Sessions).await;
    let llm = FakeLlm::start(
        Flavor::OpenAi,
        vec![
            Reply::tool("list_invoices", json!({})),
            Reply::text("Revenue is 123,456.00 EUR."),
        ],
    )
    .await;
    call_ok(
        &admin,
        "create_connection",
        json!({"platform": "openai", "name": "llm",
               "config": {"base_url": llm.base_url, "default_model": "fake-model"},
               "credentials": {"api_key": "sk-fake"}}),
    )
    .await;
    call_ok(
        &admin,
        "create_agent",
        json!({"name": "cfo", "scopes": ["invoices:read"], "kind": "prompt",
               "config": {"connection": "llm", "selected_tools": ["list_invoices"]}}),
    )
    .await;
    let run = call_ok(
        &admin,
        "run_agent",
        json!({"agent": "cfo", "wait_seconds": 30}),
    )
    .await;
    assert_eq!(run["status"], "success", "{run}");
    let member = member(&db, "meg@acme.test", &["agents:read"], &[]).await;
    assert_eq!(
        error_code(&call(&member, "get_agent_run", json!({ "run_id": run["id"] })).await),
        "not_found"
    );
    let listed = call_ok(&member, "list_agent_runs", json!({})).await;
    assert_eq!(listed["total"], 0, "{listed}");
    assert!(!listed.to_string().contains("123,456"));
    // The audit trail names the chain the run acted for.
    let audit = call_ok(
        &admin,
        "list_audit_log",
        json!({ "action": "list_invoices" }),
    )
    .await;
    let chain = &audit["events"][0]["chain"];
    assert_eq!(chain[0]["name"], "cfo", "{audit}");
    assert_eq!(chain[1]["kind"], "api_key", "who started it: {audit}");
    member.cancel().await.unwrap();
    admin.cancel().await.unwrap();
}

/// 6. A field-ruled agent's event trigger would copy whole records past its rules: it
/// cannot make one; nor can anyone for events they may not read.
#[tokio::test]
async fn event_triggers_need_the_events_scope_and_no_field_rules_or_conditions() {
    let db = TestDb::new().await;
    let admin = stdio_client(db.command(&["stdio"]), Generation::Stateless).await;
    let agent = register(
        &admin,
        "ruled",
        &["customers:read", "workflows:write", "workflows:read"],
    )
    .await;
    call_ok(
        &admin,
        "update_agent_permissions",
        json!({ "agent_id": agent["agent"]["id"], "field_rules": { "customers": ["first_name"] } }),
    )
    .await;
    let bot = agent_client(&db, &agent).await;
    let copy = json!({ "name": "copy", "status": "active", "trigger_type": "event",
        "trigger_config": { "event": "customer.created" },
        "steps": [{ "id": "s", "tool": "add_annotation",
                    "arguments": { "customer_id": "{{event.payload.customer.id}}",
                                   "text": "{{event.payload.customer.email}}" } }] });
    refused(
        &call(&bot, "create_workflow", copy.clone()).await,
        "forbidden",
        "cannot create event triggers",
    );
    let member = member(
        &db,
        "mel@acme.test",
        &["workflows:write", "workflows:read"],
        &[],
    )
    .await;
    refused(
        &call(&member, "create_workflow", copy).await,
        "forbidden",
        "need `customers:read`",
    );
    bot.cancel().await.unwrap();
    member.cancel().await.unwrap();
    admin.cancel().await.unwrap();
}

/// 7. A workflow whose step causes its own trigger event runs once per outside event, and
/// two workflows feeding each other stop when the chain comes back round.
#[tokio::test]
async fn triggered_work_never_retriggers_its_own_cause_chain() {
    let db = TestDb::new().await;
    let admin = stdio_client(db.command(&["stdio"]), Generation::Stateless).await;
    let ana = customer(&admin, "Ana", "lead").await;
    let echo = |name: &str| {
        json!({ "name": name, "status": "active", "trigger_type": "event",
            "trigger_config": { "event": "interaction.created" },
            "steps": [{ "id": "log", "tool": "log_interaction",
                        "arguments": { "customer_id": "{{event.payload.interaction.customer_id}}",
                                       "type": "note", "notes": name } }] })
    };
    let ping = workflow(&admin, echo("ping")).await;
    call_ok(
        &admin,
        "log_interaction",
        json!({ "customer_id": ana, "type": "call", "notes": "outside" }),
    )
    .await;
    let once = executions_until(&admin, &ping, |l| all_ended(l, 1)).await;
    assert_eq!(once["executions"][0]["status"], "succeeded", "{once}");
    // Its own interaction settles and is read by the trigger: nothing more starts.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = call_ok(
        &admin,
        "list_workflow_executions",
        json!({ "workflow_id": ping }),
    )
    .await;
    assert_eq!(after["total"], 1, "{after}");

    let pong = workflow(&admin, echo("pong")).await;
    call_ok(
        &admin,
        "log_interaction",
        json!({ "customer_id": ana, "type": "call", "notes": "outside again" }),
    )
    .await;
    // Outside event: ping and pong (1 each); ping's note starts pong, pong's starts ping
    // (2 each); then each chain holds both: the end.
    let pings = executions_until(&admin, &ping, |l| all_ended(l, 3)).await;
    let pongs = executions_until(&admin, &pong, |l| all_ended(l, 2)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        call_ok(
            &admin,
            "list_workflow_executions",
            json!({ "workflow_id": ping })
        )
        .await["total"],
        3,
        "{pings}"
    );
    assert_eq!(
        call_ok(
            &admin,
            "list_workflow_executions",
            json!({ "workflow_id": pong })
        )
        .await["total"],
        2,
        "{pongs}"
    );
    admin.cancel().await.unwrap();
}

/// 7 (depth). A chain of distinct workflows, each triggered by the previous one's event,
/// stops at depth 5, and the stop is audited.
#[tokio::test]
async fn chains_of_triggered_work_stop_at_depth_five() {
    let db = TestDb::new().await;
    let admin = stdio_client(db.command(&["stdio"]), Generation::Stateless).await;
    let ana = customer(&admin, "Ana", "lead").await;
    let mut ids = Vec::new();
    for i in 1..=7 {
        ids.push(
            workflow(
                &admin,
                json!({ "name": format!("link {i}"), "status": "active", "trigger_type": "event",
                    "trigger_config": { "event": "interaction.created",
                        "condition": { "field": "event.payload.interaction.subject",
                                       "operator": "eq", "value": format!("step {i}") } },
                    "steps": [{ "id": "next", "tool": "log_interaction",
                        "arguments": { "customer_id": "{{event.payload.interaction.customer_id}}",
                                       "type": "note", "subject": format!("step {}", i + 1) } }] }),
            )
            .await,
        );
    }
    call_ok(
        &admin,
        "log_interaction",
        json!({ "customer_id": ana, "type": "note", "subject": "step 1" }),
    )
    .await;
    executions_until(&admin, &ids[4], |l| all_ended(l, 1)).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let stopped = loop {
        let audit = call_ok(
            &admin,
            "list_audit_log",
            json!({ "action": "workflow.trigger" }),
        )
        .await;
        // The page is read before the total: wait for the event to be on the page too.
        if audit["events"].as_array().is_some_and(|e| e.len() == 1) || Instant::now() > deadline {
            break audit;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(stopped["total"], 1, "{stopped}");
    assert_eq!(stopped["events"][0]["error_code"], "loop_stopped");
    assert_eq!(stopped["events"][0]["arguments"]["workflow"], "link 6");
    for (i, id) in ids.iter().enumerate() {
        let total = call_ok(
            &admin,
            "list_workflow_executions",
            json!({ "workflow_id": id }),
        )
        .await["total"]
            .as_u64()
            .unwrap();
        assert_eq!(total, u64::from(i < 5), "link {}", i + 1);
    }
    admin.cancel().await.unwrap();
}

/// Executions act for their starter, the workflow's owner and its last editor: an admin
/// running a member's workflow gets no more than the member may do.
#[tokio::test]
async fn a_run_acts_for_the_workflows_owner_and_last_editor_too() {
    let db = TestDb::new().await;
    let admin = stdio_client(db.command(&["stdio"]), Generation::Stateless).await;
    let member = member(
        &db,
        "moe@acme.test",
        &[
            "workflows:read",
            "workflows:write",
            "workflows:execute",
            "customers:read",
        ],
        &[],
    )
    .await;
    let steps = json!([{ "id": "money", "tool": "list_invoices", "arguments": {} }]);
    let theirs = workflow(&member, json!({ "name": "money", "steps": steps })).await;
    let run = call_ok(
        &admin,
        "execute_workflow",
        json!({ "workflow_id": theirs, "wait_seconds": 20 }),
    )
    .await;
    assert_eq!(run["execution"]["status"], "failed", "{run}");
    assert!(
        run["steps"][0]["error"]
            .as_str()
            .unwrap()
            .contains("invoices:read"),
        "{run}"
    );
    // The admin edits its steps: the member's limits still hold (the owner stays in the
    // chain), and the admin is its last editor.
    let edited = call_ok(
        &admin,
        "update_workflow",
        json!({ "workflow_id": theirs,
                "steps": [{ "id": "read", "tool": "list_customers", "arguments": {} }] }),
    )
    .await;
    assert_eq!(
        edited["workflow"]["behaviour_by"]["name"], "tests",
        "{edited}"
    );
    // Run by an admin, a member's workflow has no admin authority over others' workflows.
    let admins = workflow(
        &admin,
        json!({ "name": "admin's own",
                "steps": [{ "id": "r", "tool": "list_customers", "arguments": {} }] }),
    )
    .await;
    // (No step rewrites a workflow: see no_work_done_on_someones_behalf_makes_standing_work.)
    refused(
        &call(
            &member,
            "create_workflow",
            json!({ "name": "rewrite", "steps": [{ "id": "w", "tool": "update_workflow",
                     "arguments": { "workflow_id": admins, "description": "rewritten" } }] }),
        )
        .await,
        "invalid_request",
        "runs later for its owner",
    );
    let rewrite = workflow(
        &member,
        json!({ "name": "remove", "steps": [{ "id": "w", "tool": "delete_workflow",
                 "arguments": { "workflow_id": admins } }] }),
    )
    .await;
    let run = call_ok(
        &admin,
        "execute_workflow",
        json!({ "workflow_id": rewrite, "wait_seconds": 20 }),
    )
    .await;
    assert_eq!(run["execution"]["status"], "failed", "{run}");
    assert!(
        run["steps"][0]["error"]
            .as_str()
            .unwrap()
            .contains("belongs to"),
        "{run}"
    );
    let untouched = call_ok(&admin, "get_workflow", json!({ "workflow_id": admins })).await;
    assert_eq!(untouched["workflow"]["description"], "");
    let again = call_ok(
        &member,
        "execute_workflow",
        json!({ "workflow_id": theirs }),
    )
    .await;
    assert_eq!(again["execution"]["status"], "succeeded", "{again}");
    member.cancel().await.unwrap();
    admin.cancel().await.unwrap();
}
