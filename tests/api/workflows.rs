//! The workflows toolset over MCP: definitions checked at save time, and the condition and
//! substitution testers.

use serde_json::{Value, json};

use crate::helpers::*;

fn three_steps() -> Value {
    json!([
        { "id": "find", "tool": "list_customers", "arguments": { "tag": "{{vars.tag}}", "limit": 5 } },
        { "id": "note", "tool": "log_interaction",
          "condition": { "field": "steps.find.output.total", "operator": "gt", "value": 0 },
          "arguments": { "customer_id": "{{steps.find.output.customers.0.id}}", "type": "note",
                         "notes": "Follow up with {{input.owner}}" },
          "on_error": { "retries": 2, "backoff_ms": 100, "then": "continue" } },
        { "id": "tag", "tool": "bulk_update_customers",
          "arguments": { "customer_ids": ["{{steps.find.output.customers.0.id}}"],
                         "set": { "add_tags": ["followed-up"] } } },
    ])
}

#[tokio::test]
async fn workflows_are_checked_when_saved_and_errors_name_the_step_and_field() {
    let db = TestDb::new().await;
    let admin = stdio_client(db.command(&["stdio"]), Generation::Stateless).await;
    let created = call_ok(
        &admin,
        "create_workflow",
        json!({ "name": "Follow up VIPs", "variables": { "tag": "vip" }, "steps": three_steps() }),
    )
    .await;
    let workflow = &created["workflow"];
    assert_eq!(workflow["status"], "draft");
    assert_eq!(workflow["version"], 1);
    assert_eq!(workflow["trigger_type"], "manual");
    assert_eq!(workflow["steps"][1]["on_error"]["then"], "continue");
    let id = workflow["id"].as_str().unwrap().to_owned();

    let mut bad_steps: Vec<(Value, &str)> = Vec::new();
    let mut steps = three_steps();
    steps[2]["tool"] = json!("update_customr");
    bad_steps.push((
        steps,
        "steps[2] (tag).tool: there is no tool `update_customr`",
    ));
    let mut steps = three_steps();
    steps[0]["arguments"]["tag"] = json!("{{steps.tag.output.x}}");
    bad_steps.push((steps, "steps[0] (find).arguments.tag"));
    let mut steps = three_steps();
    steps[1]["arguments"]["colour"] = json!("red");
    bad_steps.push((
        steps,
        "steps[1] (note).arguments: `log_interaction` takes no argument `colour`",
    ));
    let mut steps = three_steps();
    steps[2]["arguments"] = json!({ "customer_ids": [] });
    bad_steps.push((
        steps,
        "steps[2] (tag).arguments: `bulk_update_customers` needs `set`",
    ));
    let mut steps = three_steps();
    steps[0]["arguments"]["limit"] = json!("five");
    bad_steps.push((steps, "steps[0] (find).arguments"));
    let mut steps = three_steps();
    steps[1]["id"] = json!("find");
    bad_steps.push((steps, "steps[1] (find).id: another step has this id"));
    let mut steps = three_steps();
    steps[1]["condition"] = json!({ "field": "vars.nope", "operator": "eq", "value": 1 });
    bad_steps.push((steps, "steps[1] (note).condition"));
    let mut steps = three_steps();
    steps[2] = json!({ "id": "hook", "tool": "create_webhook",
                       "arguments": { "url": "https://example.com", "events": ["*"] } });
    bad_steps.push((
        steps,
        "steps[2] (hook).tool: `create_webhook` takes or answers with a secret",
    ));
    let mut steps = three_steps();
    steps[1]["on_error"] = json!({ "retries": 50 });
    bad_steps.push((steps, "steps[1] (note).on_error"));
    for (steps, expected) in bad_steps {
        let refused = call(
            &admin,
            "create_workflow",
            json!({ "name": "Bad", "variables": { "tag": "vip" }, "steps": steps }),
        )
        .await;
        assert_eq!(error_code(&refused), "invalid_request");
        let message = refused.structured_content.as_ref().unwrap()["error_description"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(
            message.contains(expected),
            "{message} should name {expected}"
        );
    }
    for (trigger, config) in [
        ("event", json!({ "event": "customer.exploded" })),
        ("schedule", json!({ "interval_seconds": 5 })),
        ("schedule", json!({})),
    ] {
        let refused = call(
            &admin,
            "create_workflow",
            json!({ "name": "T", "trigger_type": trigger, "trigger_config": config,
                    "variables": { "tag": "vip" }, "steps": three_steps() }),
        )
        .await;
        assert_eq!(
            error_code(&refused),
            "invalid_request",
            "{trigger} {config}"
        );
    }
    let duplicate = call(
        &admin,
        "create_workflow",
        json!({ "name": "Follow up VIPs", "variables": { "tag": "vip" }, "steps": three_steps() }),
    )
    .await;
    assert_eq!(error_code(&duplicate), "conflict");

    let updated = call_ok(
        &admin,
        "update_workflow",
        json!({ "workflow_id": id, "version": 1, "status": "active",
                "trigger_type": "event", "trigger_config": { "event": "customer.created" } }),
    )
    .await;
    assert_eq!(updated["workflow"]["status"], "active");
    assert_eq!(updated["workflow"]["version"], 2);
    let renamed = call_ok(
        &admin,
        "update_workflow",
        json!({ "workflow_id": id, "name": "VIP follow-up" }),
    )
    .await;
    assert_eq!(
        renamed["workflow"]["version"], 2,
        "a new name changes no behaviour"
    );
    let stale = call(
        &admin,
        "update_workflow",
        json!({ "workflow_id": id, "version": 1, "status": "paused" }),
    )
    .await;
    assert_eq!(error_code(&stale), "conflict");
    let listed = call_ok(
        &admin,
        "list_workflows",
        json!({ "search": "vip", "status": "active" }),
    )
    .await;
    assert_eq!(listed["total"], 1);
    assert_eq!(
        call_ok(
            &admin,
            "list_workflows",
            json!({ "trigger_type": "manual" })
        )
        .await["total"],
        0
    );
    let deleted = call_ok(&admin, "delete_workflow", json!({ "workflow_id": id })).await;
    assert_eq!(deleted["deleted"], true);
    assert_eq!(
        error_code(&call(&admin, "get_workflow", json!({ "workflow_id": id })).await),
        "not_found"
    );
    admin.cancel().await.unwrap();
}

#[tokio::test]
async fn conditions_and_substitutions_are_tested_against_a_context() {
    let db = TestDb::new().await;
    let admin = stdio_client(db.command(&["stdio"]), Generation::Stateless).await;
    let context =
        json!({ "input": { "owner": "Amy" }, "steps": { "find": { "output": { "total": 3 } } } });
    let tested = call_ok(
        &admin,
        "test_condition",
        json!({ "condition": { "field": "steps.find.output.total", "operator": "gte", "value": 3 },
                "context": context }),
    )
    .await;
    assert_eq!(
        tested,
        json!({ "result": true, "evaluated_value": 3, "expected_value": 3, "operator": "gte" })
    );
    let composed = call_ok(
        &admin,
        "test_condition",
        json!({ "condition": { "not": { "field": "input.owner", "operator": "exists" } }, "context": context }),
    )
    .await;
    assert_eq!(composed["result"], false);
    assert_eq!(composed["operator"], "not");
    assert_eq!(
        error_code(
            &call(
                &admin,
                "test_condition",
                json!({ "condition": { "field": "x", "operator": "like", "value": 1 }, "context": {} }),
            )
            .await
        ),
        "invalid_request"
    );
    let substituted = call_ok(
        &admin,
        "test_substitution",
        json!({ "parameters": { "count": "{{steps.find.output.total}}", "notes": "for {{input.owner}}",
                                "gone": "{{input.missing}}" },
                "context": context }),
    )
    .await;
    assert_eq!(
        substituted["original_parameters"]["count"],
        "{{steps.find.output.total}}"
    );
    assert_eq!(substituted["substituted_parameters"]["count"], 3);
    assert_eq!(substituted["substituted_parameters"]["notes"], "for Amy");
    assert_eq!(
        substituted["substituted_parameters"]["gone"],
        "{{input.missing}}"
    );
    let made = substituted["substitutions_made"].as_array().unwrap();
    assert_eq!(made.len(), 3);
    assert!(made.contains(
        &json!({ "location": "gone", "reference": "input.missing", "value": null, "found": false })
    ));
    admin.cancel().await.unwrap();
}

pub(crate) async fn create_customer(client: &Client, fields: Value) -> String {
    call_ok(client, "create_customer", fields).await["customer"]["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

pub(crate) async fn workflow(client: &Client, name: &str, steps: Value, extra: Value) -> String {
    let mut args = json!({ "name": name, "steps": steps });
    if let (Value::Object(args), Value::Object(extra)) = (&mut args, extra) {
        args.extend(extra);
    }
    call_ok(client, "create_workflow", args).await["workflow"]["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

pub(crate) fn statuses(execution: &Value) -> Vec<(String, String)> {
    execution["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["step_id"].as_str().unwrap().to_owned(),
                s["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

pub(crate) async fn wait_for_end(client: &Client, execution_id: &str) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let seen = call_ok(
            client,
            "get_workflow_execution",
            json!({ "execution_id": execution_id }),
        )
        .await;
        let status = seen["execution"]["status"].as_str().unwrap().to_owned();
        if ["succeeded", "failed", "cancelled"].contains(&status.as_str())
            || std::time::Instant::now() > deadline
        {
            return seen;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_three_step_workflow_substitutes_skips_on_conditions_and_applies_error_policies() {
    let db = TestDb::new().await;
    let admin = stdio_client(db.command(&["stdio"]), Generation::Stateless).await;
    let ana = create_customer(&admin, json!({ "first_name": "Ana", "tags": ["vip"] })).await;
    let id = workflow(
        &admin,
        "Follow up",
        three_steps(),
        json!({ "variables": { "tag": "vip" } }),
    )
    .await;
    let run = call_ok(
        &admin,
        "execute_workflow",
        json!({ "workflow_id": id, "input_data": { "owner": "Amy" } }),
    )
    .await;
    assert_eq!(run["execution"]["status"], "succeeded", "{run}");
    assert_eq!(
        statuses(&run),
        [
            ("find", "succeeded"),
            ("note", "succeeded"),
            ("tag", "succeeded")
        ]
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
    );
    assert_eq!(run["steps"][1]["arguments"]["customer_id"], ana.as_str());
    assert_eq!(run["execution"]["output"]["affected"], 1);
    let notes = call_ok(&admin, "list_interactions", json!({ "customer_id": ana })).await;
    assert_eq!(notes["interactions"][0]["notes"], "Follow up with Amy");
    let customer = call_ok(&admin, "get_customer", json!({ "customer_id": ana })).await;
    assert_eq!(customer["customer"]["tags"], json!(["followed-up", "vip"]));

    // Nobody matches: the conditioned step is skipped and the next one fails the run.
    call_ok(
        &admin,
        "update_workflow",
        json!({ "workflow_id": id, "variables": { "tag": "nobody" } }),
    )
    .await;
    let run = call_ok(&admin, "execute_workflow", json!({ "workflow_id": id })).await;
    assert_eq!(run["execution"]["status"], "failed", "{run}");
    assert_eq!(
        statuses(&run),
        [
            ("find", "succeeded"),
            ("note", "skipped"),
            ("tag", "failed")
        ]
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
    );
    assert!(
        run["execution"]["error"]
            .as_str()
            .unwrap()
            .starts_with("step tag (`bulk_update_customers`) failed"),
        "{run}"
    );

    // A failing step with `continue` lets the next one run.
    let missing = "00000000-0000-0000-0000-000000000001";
    let steps = json!([
        { "id": "lookup", "tool": "get_customer", "arguments": { "customer_id": missing },
          "on_error": { "then": "continue" } },
        { "id": "count", "tool": "list_customers", "arguments": { "limit": 1 } },
    ]);
    let go_on = workflow(&admin, "Go on", steps, json!({})).await;
    let run = call_ok(&admin, "execute_workflow", json!({ "workflow_id": go_on })).await;
    assert_eq!(run["execution"]["status"], "succeeded", "{run}");
    assert_eq!(
        statuses(&run),
        [("lookup", "failed"), ("count", "succeeded")].map(|(a, b)| (a.to_owned(), b.to_owned()))
    );
    assert!(run["steps"][0]["error"].as_str().unwrap().contains(missing));
    admin.cancel().await.unwrap();
}

#[tokio::test]
async fn a_step_is_retried_with_backoff_until_it_succeeds() {
    let db = TestDb::new().await;
    let admin = stdio_client(db.command(&["stdio"]), Generation::Stateless).await;
    let taken = create_customer(&admin, json!({ "first_name": "Old", "email": "x@y.test" })).await;
    let steps = json!([{ "id": "make", "tool": "create_customer",
        "arguments": { "first_name": "New", "email": "{{input.email}}" },
        "on_error": { "retries": 8, "backoff_ms": 200 } }]);
    let id = workflow(&admin, "Retry", steps, json!({})).await;
    let started = call_ok(
        &admin,
        "execute_workflow",
        json!({ "workflow_id": id, "input_data": { "email": "x@y.test" }, "wait_seconds": 0 }),
    )
    .await;
    let execution_id = started["execution"]["id"].as_str().unwrap().to_owned();
    // The email is taken: attempts fail until it is free.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    call_ok(&admin, "delete_customer", json!({ "customer_id": taken })).await;
    let run = wait_for_end(&admin, &execution_id).await;
    assert_eq!(run["execution"]["status"], "succeeded", "{run}");
    let attempts = statuses(&run);
    assert!(attempts.len() >= 2, "{attempts:?}");
    assert!(
        attempts[..attempts.len() - 1]
            .iter()
            .all(|(_, s)| s == "failed")
    );
    assert_eq!(attempts.last().unwrap().1, "succeeded");
    assert!(
        run["steps"][0]["error"]
            .as_str()
            .unwrap()
            .contains("x@y.test")
    );
    admin.cancel().await.unwrap();
}

#[tokio::test]
async fn a_run_has_the_starters_permissions_and_no_more() {
    let db = TestDb::new().await;
    let admin = stdio_client(db.command(&["stdio"]), Generation::Stateless).await;
    let ana = create_customer(&admin, json!({ "first_name": "Ana", "tags": ["vip"] })).await;
    let id = workflow(
        &admin,
        "Follow up",
        three_steps(),
        json!({ "variables": { "tag": "vip" } }),
    )
    .await;
    let agent = call_ok(
        &admin,
        "register_agent",
        json!({ "name": "runner", "scopes": ["workflows:read", "workflows:execute", "customers:read"] }),
    )
    .await;
    let bot = agent_client(&db, &agent).await;
    let run = call_ok(
        &bot,
        "execute_workflow",
        json!({ "workflow_id": id, "input_data": { "owner": "Amy" } }),
    )
    .await;
    assert_eq!(run["execution"]["status"], "failed", "{run}");
    assert_eq!(run["steps"][0]["status"], "succeeded", "reading is allowed");
    let refused = run["steps"][1]["error"].as_str().unwrap();
    assert!(refused.contains("interactions:write"), "{refused}");
    assert_eq!(
        call_ok(&admin, "list_interactions", json!({ "customer_id": ana })).await["total"],
        0,
        "nothing written with permissions the starter lacks"
    );
    let audit = call_ok(
        &admin,
        "list_audit_log",
        json!({ "action": "list_customers" }),
    )
    .await;
    assert!(
        audit["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["transport"] == "workflow" && e["principal_name"] == "runner"),
        "steps are audited as the starter's calls: {audit}"
    );
    bot.cancel().await.unwrap();
    admin.cancel().await.unwrap();
}

#[tokio::test]
async fn an_event_starts_an_active_workflow_whose_condition_matches() {
    let db = TestDb::new().await;
    let admin = stdio_client(db.command(&["stdio"]), Generation::Stateless).await;
    let steps = json!([{ "id": "welcome", "tool": "log_interaction",
        "arguments": { "customer_id": "{{event.payload.customer.id}}", "type": "note",
                       "notes": "Welcome {{event.payload.customer.first_name}}" } }]);
    let id = workflow(
        &admin,
        "Welcome hot leads",
        steps,
        json!({ "status": "active", "trigger_type": "event",
                "trigger_config": { "event": "customer.created",
                    "condition": { "field": "event.payload.customer.status", "operator": "eq", "value": "hot_lead" } } }),
    )
    .await;
    let cold = create_customer(&admin, json!({ "first_name": "Cold", "status": "lead" })).await;
    let hot = create_customer(&admin, json!({ "first_name": "Hot", "status": "hot_lead" })).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let executions = loop {
        let listed = call_ok(
            &admin,
            "list_workflow_executions",
            json!({ "workflow_id": id, "status": "succeeded" }),
        )
        .await;
        if listed["total"] == 1 || std::time::Instant::now() > deadline {
            break listed;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert_eq!(executions["total"], 1, "{executions}");
    assert_eq!(executions["executions"][0]["source"], "event");
    let notes = call_ok(&admin, "list_interactions", json!({ "customer_id": hot })).await;
    assert_eq!(notes["interactions"][0]["notes"], "Welcome Hot");
    assert_eq!(
        call_ok(&admin, "list_interactions", json!({ "customer_id": cold })).await["total"],
        0
    );
    admin.cancel().await.unwrap();
}

#[tokio::test]
async fn an_execution_left_by_a_dead_process_is_resumed_once_by_another() {
    let db = TestDb::new().await;
    let admin = stdio_client(db.command(&["stdio"]), Generation::Stateless).await;
    create_customer(&admin, json!({ "first_name": "Ana", "tags": ["vip"] })).await;
    let steps = json!([
        { "id": "first", "tool": "list_customers", "arguments": { "limit": 1 } },
        { "id": "again", "tool": "list_customers", "arguments": { "tag": "vip" } },
        { "id": "note", "tool": "log_interaction",
          "arguments": { "customer_id": "{{steps.again.output.customers.0.id}}", "type": "note", "notes": "n" } },
    ]);
    let safe = workflow(&admin, "Safe", steps.clone(), json!({})).await;
    let mut unsafe_steps = steps.clone();
    unsafe_steps.as_array_mut().unwrap().swap(1, 2);
    // A tool neither idempotent nor sealed (a step of a sealed one that did not commit
    // is run again: see durability.rs).
    unsafe_steps[1] = json!({ "id": "ask", "tool": "request_handoff",
                              "arguments": { "reason": "{{steps.first.output.customers.0.id}}" } });
    unsafe_steps[2]["arguments"] = json!({ "tag": "vip" });
    let risky = workflow(&admin, "Risky", unsafe_steps, json!({})).await;
    // Two executions as a process that died in their second step left them: step 0 done,
    // step 1 running, the lease expired.
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    let mut ids = Vec::new();
    for workflow_id in [&safe, &risky] {
        let id: uuid::Uuid = sqlx::query_scalar(
            "INSERT INTO workflow_executions (tenant_id, workflow_id, workflow_name, workflow_version,
                 definition, status, source, started_by_kind, started_by_id, started_by_name, scopes,
                 next_step, results, lease_owner, lease_until, started_at, chain)
             SELECT w.tenant_id, w.id, w.name, w.version,
                    jsonb_build_object('steps', w.steps, 'variables', w.variables),
                    'running', 'manual', 'user', u.id, u.name,
                    ARRAY['customers:read', 'interactions:write', 'handoff'],
                    1, jsonb_build_object('first', jsonb_build_object('status', 'succeeded',
                        'output', jsonb_build_object('customers', jsonb_build_array(jsonb_build_object('id', c.id))))),
                    gen_random_uuid(), now() - interval '1 minute', now(),
                    jsonb_build_array(jsonb_build_object('kind', 'user', 'id', u.id, 'name', u.name,
                                                         'person', u.id))
             FROM workflows w JOIN users u ON u.tenant_id = w.tenant_id
                  JOIN customers c ON c.tenant_id = w.tenant_id
             WHERE w.id = $1::uuid LIMIT 1
             RETURNING id",
        )
        .bind(workflow_id)
        .fetch_one(&pool)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO workflow_step_runs (execution_id, step_index, step_id, tool, attempt, status)
             SELECT $1, 1, s ->> 'id', s ->> 'tool', 1, 'running'
             FROM workflow_executions e, jsonb_array_elements(e.definition -> 'steps') WITH ORDINALITY AS x(s, n)
             WHERE e.id = $1 AND n = 2",
        )
        .bind(id)
        .execute(&pool)
        .await
        .unwrap();
        ids.push(id.to_string());
    }
    // Two more processes compete for them.
    let second = stdio_client(db.command(&["stdio"]), Generation::Stateless).await;
    let third = stdio_client(db.command(&["stdio"]), Generation::Stateless).await;
    let resumed = wait_for_end(&admin, &ids[0]).await;
    assert_eq!(resumed["execution"]["status"], "succeeded", "{resumed}");
    assert_eq!(
        statuses(&resumed),
        [
            ("again", "interrupted"),
            ("again", "succeeded"),
            ("note", "succeeded")
        ]
        .map(|(a, b)| (a.to_owned(), b.to_owned())),
        "the idempotent step is repeated once, the rest run once"
    );
    let failed = wait_for_end(&admin, &ids[1]).await;
    assert_eq!(failed["execution"]["status"], "failed", "{failed}");
    assert!(
        failed["execution"]["error"]
            .as_str()
            .unwrap()
            .contains("not safe to repeat"),
        "{failed}"
    );
    let notes: i64 = sqlx::query_scalar("SELECT count(*) FROM interactions")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(notes, 1, "the safe run's note, once");
    let handoffs: i64 = sqlx::query_scalar("SELECT count(*) FROM handoffs")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        handoffs, 0,
        "the interrupted request_handoff was not repeated"
    );
    second.cancel().await.unwrap();
    third.cancel().await.unwrap();
    admin.cancel().await.unwrap();
}

#[tokio::test]
async fn a_held_step_pauses_the_run_until_a_person_decides() {
    let db = TestDb::new().await;
    let admin = stdio_client(db.command(&["stdio"]), Generation::Stateless).await;
    let ana = create_customer(&admin, json!({ "first_name": "Ana" })).await;
    let steps = json!([
        { "id": "remove", "tool": "delete_customer", "arguments": { "customer_id": "{{input.customer}}" } },
        { "id": "count", "tool": "list_customers", "arguments": { "limit": 1 } },
    ]);
    let id = workflow(&admin, "Remove", steps, json!({})).await;
    let agent = call_ok(
        &admin,
        "register_agent",
        json!({ "name": "cleaner", "scopes": ["workflows:execute", "workflows:read", "customers:read", "customers:delete", "handoff"] }),
    )
    .await;
    call_ok(
        &admin,
        "update_agent_permissions",
        json!({ "agent_id": agent["agent"]["id"], "grants": [{ "scope": "customers:delete" }] }),
    )
    .await;
    let bot = agent_client(&db, &agent).await;
    let run = call_ok(
        &bot,
        "execute_workflow",
        json!({ "workflow_id": id, "input_data": { "customer": ana } }),
    )
    .await;
    assert_eq!(run["execution"]["status"], "waiting_approval", "{run}");
    let action = run["execution"]["waiting_action_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let execution_id = run["execution"]["id"].as_str().unwrap().to_owned();
    call_ok(
        &admin,
        "decide_pending_action",
        json!({ "action_id": action, "decision": "approve" }),
    )
    .await;
    let done = wait_for_end(&bot, &execution_id).await;
    assert_eq!(done["execution"]["status"], "succeeded", "{done}");
    assert_eq!(
        statuses(&done),
        [("remove", "succeeded"), ("count", "succeeded")]
            .map(|(a, b)| (a.to_owned(), b.to_owned()))
    );
    assert_eq!(done["steps"][0]["output"]["deleted"], true);
    assert_eq!(
        error_code(&call(&admin, "get_customer", json!({ "customer_id": ana })).await),
        "not_found"
    );
    bot.cancel().await.unwrap();
    admin.cancel().await.unwrap();
}

#[tokio::test]
async fn a_template_becomes_a_draft_and_once_active_runs_on_its_event() {
    let db = TestDb::new().await;
    let admin = stdio_client(db.command(&["stdio"]), Generation::Stateless).await;
    let listed = call_ok(&admin, "list_workflow_templates", json!({})).await;
    assert!(listed["total"].as_u64().unwrap() >= 8, "{listed}");
    let support = call_ok(
        &admin,
        "list_workflow_templates",
        json!({ "category": "support", "difficulty": "beginner", "search": "unhappy" }),
    )
    .await;
    assert_eq!(support["templates"][0]["id"], "escalate-unhappy-customer");
    assert_eq!(
        call_ok(
            &admin,
            "list_workflow_templates",
            json!({ "connection": "llm" })
        )
        .await["total"],
        0
    );
    let categories = call_ok(&admin, "list_template_categories", json!({})).await;
    assert!(categories["categories"].as_array().unwrap().len() >= 4);
    assert_eq!(
        error_code(
            &call(
                &admin,
                "get_workflow_template",
                json!({ "template_id": "nope" })
            )
            .await
        ),
        "not_found"
    );
    let used = call_ok(
        &admin,
        "use_workflow_template",
        json!({ "template_id": "escalate-unhappy-customer", "name": "Unhappy → person" }),
    )
    .await;
    assert_eq!(used["workflow"]["status"], "draft");
    assert_eq!(
        used["workflow"]["workflow_metadata"]["template"],
        "escalate-unhappy-customer"
    );
    let id = used["workflow"]["id"].as_str().unwrap().to_owned();
    call_ok(
        &admin,
        "update_workflow",
        json!({ "workflow_id": id, "status": "active" }),
    )
    .await;
    let ana = create_customer(&admin, json!({ "first_name": "Ana" })).await;
    call_ok(
        &admin,
        "log_interaction",
        json!({ "customer_id": ana, "type": "call", "notes": "Very upset about the delay",
                "metadata": { "sentiment": "negative" } }),
    )
    .await;
    call_ok(
        &admin,
        "log_interaction",
        json!({ "customer_id": ana, "type": "call", "notes": "All good", "metadata": { "sentiment": "positive" } }),
    )
    .await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let tickets = loop {
        let tickets = call_ok(&admin, "list_handoffs", json!({ "customer_id": ana })).await;
        if tickets["total"] != 0 || std::time::Instant::now() > deadline {
            break tickets;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert_eq!(tickets["total"], 1, "{tickets}");
    assert_eq!(tickets["handoffs"][0]["priority"], "urgent");
    assert_eq!(
        tickets["handoffs"][0]["context"],
        "Very upset about the delay"
    );
    assert_eq!(
        tickets["handoffs"][0]["reason"],
        "Negative sentiment on a call"
    );
    admin.cancel().await.unwrap();
}

#[tokio::test]
async fn a_sessions_calls_become_a_workflow_that_runs_again_with_new_input() {
    let db = TestDb::new().await;
    let admin = stdio_client(db.command(&["stdio"]), Generation::Stateless).await;
    create_customer(
        &admin,
        json!({ "first_name": "Ana", "email": "ana@x.test", "status": "hot_lead" }),
    )
    .await;
    call_ok(&admin, "list_customers", json!({ "status": "hot_lead" })).await;
    // A refused call is not material for a workflow.
    call(
        &admin,
        "get_customer",
        json!({ "customer_id": "00000000-0000-0000-0000-000000000001" }),
    )
    .await;
    let session = call_ok(&admin, "list_session_tool_calls", json!({})).await;
    let tools: Vec<&str> = session["calls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["tool"].as_str().unwrap())
        .collect();
    assert_eq!(tools, ["create_customer", "list_customers"], "{session}");
    let chosen: Vec<Value> = session["calls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].clone())
        .collect();
    let extracted = call_ok(
        &admin,
        "extract_workflow",
        json!({ "workflow_name": "Add a hot lead", "selected_step_ids": chosen,
                "parameterize_fields": ["s1.first_name", "s1.email"] }),
    )
    .await;
    assert_eq!(
        extracted["inputs"],
        json!({ "first_name": "Ana", "email": "ana@x.test" })
    );
    let steps = &extracted["workflow"]["steps"];
    assert_eq!(steps[0]["arguments"]["email"], "{{input.email}}");
    assert_eq!(
        steps[0]["arguments"]["status"], "hot_lead",
        "other fields stay literal"
    );
    assert_eq!(steps[1]["tool"], "list_customers");
    for bad in [
        json!({ "workflow_name": "X", "parameterize_fields": ["s9.email"] }),
        json!({ "workflow_name": "X", "parameterize_fields": ["s1.nope"] }),
        json!({ "workflow_name": "X", "selected_step_ids": ["999999"] }),
    ] {
        let code = error_code(&call(&admin, "extract_workflow", bad.clone()).await);
        assert!(
            code == "invalid_request" || code == "not_found",
            "{bad}: {code}"
        );
    }
    let run = call_ok(
        &admin,
        "execute_workflow",
        json!({ "workflow_id": extracted["workflow"]["id"],
                "input_data": { "first_name": "Bruno", "email": "bruno@x.test" } }),
    )
    .await;
    assert_eq!(run["execution"]["status"], "succeeded", "{run}");
    assert_eq!(run["execution"]["output"]["total"], 2, "{run}");
    let other = stdio_client(db.command(&["stdio"]), Generation::Stateless).await;
    let elsewhere = call_ok(&other, "list_session_tool_calls", json!({})).await;
    assert_eq!(
        elsewhere["calls"],
        json!([]),
        "another process is another session"
    );
    other.cancel().await.unwrap();
    admin.cancel().await.unwrap();
}

/// A client whose "model" answers sampling with a canned workflow.
#[derive(Clone)]
struct Model {
    answer: String,
}

#[allow(deprecated)]
impl rmcp::ClientHandler for Model {
    fn get_info(&self) -> rmcp::model::ClientConfig {
        let mut config = client_config();
        config.capabilities = rmcp::model::ClientCapabilities::builder()
            .enable_sampling()
            .build();
        config
    }

    async fn create_message(
        &self,
        params: rmcp::model::CreateMessageRequestParams,
        _context: rmcp::service::RequestContext<rmcp::service::RoleClient>,
    ) -> Result<rmcp::model::CreateMessageResult, rmcp::ErrorData> {
        let asked = serde_json::to_string(&params.messages).unwrap();
        assert!(
            asked.contains("log_interaction") && asked.contains("hot lead"),
            "{asked}"
        );
        Ok(rmcp::model::CreateMessageResult::new(
            rmcp::model::SamplingMessage::assistant_text(self.answer.clone()),
            "test-model".into(),
        ))
    }
}

#[tokio::test]
async fn a_workflow_is_drafted_by_the_clients_model_and_checked_before_it_is_saved() {
    let db = TestDb::new().await;
    let admin = stdio_client(db.command(&["stdio"]), Generation::Stateless).await;
    let refused = call(
        &admin,
        "draft_workflow",
        json!({ "description": "When a hot lead is created, log a note" }),
    )
    .await;
    assert_eq!(error_code(&refused), "invalid_request");
    assert!(
        refused.structured_content.as_ref().unwrap()["error_description"]
            .as_str()
            .unwrap()
            .contains("no LLM connection"),
        "{refused:?}"
    );
    let good = r#"Here it is:
```json
{"name": "Welcome hot leads", "trigger_type": "event",
 "trigger_config": {"event": "customer.created",
   "condition": {"field": "event.payload.customer.status", "operator": "eq", "value": "hot_lead"}},
 "steps": [{"id": "note", "tool": "log_interaction",
   "arguments": {"customer_id": "{{event.payload.customer.id}}", "type": "note", "notes": "Call today"}}]}
```"#;
    for generation in [Generation::Sessions, Generation::Stateless] {
        let client = stdio_client_with(
            Model {
                answer: good.into(),
            },
            db.command(&["stdio"]),
            generation,
        )
        .await;
        let drafted = call_ok(
            &client,
            "draft_workflow",
            json!({ "description": "When a hot lead is created, log a note to call them",
                    "name": format!("Welcome {generation:?}") }),
        )
        .await;
        let workflow = &drafted["workflow"];
        assert_eq!(workflow["status"], "draft", "{generation:?}");
        assert_eq!(workflow["trigger_type"], "event");
        assert_eq!(workflow["steps"][0]["tool"], "log_interaction");
        client.cancel().await.unwrap();
    }
    let bad = r#"{"name": "Broken", "steps": [{"id": "x", "tool": "send_fax", "arguments": {}}]}"#;
    let client = stdio_client_with(
        Model { answer: bad.into() },
        db.command(&["stdio"]),
        Generation::Sessions,
    )
    .await;
    let refused = call(
        &client,
        "draft_workflow",
        json!({ "description": "When a hot lead is created, fax them" }),
    )
    .await;
    assert_eq!(error_code(&refused), "invalid_request");
    let why = refused.structured_content.as_ref().unwrap()["error_description"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        why.contains("nothing was saved") && why.contains("send_fax"),
        "{why}"
    );
    assert_eq!(
        call_ok(&admin, "list_workflows", json!({})).await["total"],
        2,
        "only the two valid drafts were saved"
    );
    client.cancel().await.unwrap();
    admin.cancel().await.unwrap();
}

#[tokio::test]
async fn a_run_killed_mid_step_is_resumed_by_another_process() {
    let db = TestDb::new().await;
    let start = || {
        let mut command = db.server(&["http"]);
        command.env("AGENTCRM_WORKFLOW_LEASE_SECS", "2");
        HttpServer::start(command)
    };
    let mut first = start();
    let second = start();
    let on_first = http_client(&first.mcp_url(), &db.admin_key, Generation::Stateless).await;
    let on_second = http_client(&second.mcp_url(), &db.admin_key, Generation::Stateless).await;
    let taken = create_customer(
        &on_first,
        json!({ "first_name": "Old", "email": "x@y.test" }),
    )
    .await;
    let steps = json!([
        { "id": "count", "tool": "list_customers", "arguments": { "limit": 1 } },
        { "id": "make", "tool": "create_customer",
          "arguments": { "first_name": "New", "email": "x@y.test" },
          "on_error": { "retries": 10, "backoff_ms": 3000 } },
    ]);
    let id = workflow(&on_first, "Make", steps, json!({})).await;
    let started = call_ok(
        &on_first,
        "execute_workflow",
        json!({ "workflow_id": id, "wait_seconds": 1 }),
    )
    .await;
    let execution_id = started["execution"]["id"].as_str().unwrap().to_owned();
    assert_eq!(started["execution"]["status"], "running", "{started}");
    // The first process dies in the middle of the `make` step (between its attempts).
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    call_ok(
        &on_second,
        "delete_customer",
        json!({ "customer_id": taken }),
    )
    .await;
    let done = wait_for_end(&on_second, &execution_id).await;
    assert_eq!(done["execution"]["status"], "succeeded", "{done}");
    let count_runs = statuses(&done)
        .iter()
        .filter(|(step, _)| step == "count")
        .count();
    assert_eq!(count_runs, 1, "a finished step is not run again: {done}");
    assert_eq!(
        statuses(&done).last().unwrap(),
        &("make".to_owned(), "succeeded".to_owned())
    );
    let customers = call_ok(&on_second, "list_customers", json!({})).await;
    assert_eq!(customers["total"], 1, "{customers}");
    on_second.cancel().await.unwrap();
}

#[tokio::test]
async fn a_schedule_fires_once_per_due_time_across_processes() {
    let db = TestDb::new().await;
    let admin = stdio_client(db.command(&["stdio"]), Generation::Stateless).await;
    let other = stdio_client(db.command(&["stdio"]), Generation::Stateless).await;
    let refused = call(
        &admin,
        "create_workflow",
        json!({ "name": "Bad", "status": "active", "trigger_type": "schedule",
                "trigger_config": { "cron": "0 25 * * *" },
                "steps": [{ "id": "r", "tool": "generate_report", "arguments": { "report": "pipeline" } }] }),
    )
    .await;
    assert_eq!(error_code(&refused), "invalid_request");
    let id = workflow(
        &admin,
        "Hourly pipeline",
        json!([{ "id": "pipeline", "tool": "generate_report", "arguments": { "report": "pipeline" } }]),
        json!({ "status": "active", "trigger_type": "schedule", "trigger_config": { "interval_seconds": 3600 } }),
    )
    .await;
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    let next = || async {
        sqlx::query_scalar::<_, Option<chrono::DateTime<chrono::Utc>>>(
            "SELECT next_run_at FROM workflows WHERE id = $1::uuid",
        )
        .bind(&id)
        .fetch_one(&pool)
        .await
        .unwrap()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while next().await.is_none() && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let planned = next().await.expect("a next run once active");
    assert!(
        planned > chrono::Utc::now() + chrono::Duration::minutes(55),
        "{planned}"
    );
    assert_eq!(
        call_ok(
            &admin,
            "list_workflow_executions",
            json!({ "workflow_id": id })
        )
        .await["total"],
        0,
        "becoming active does not run it at once"
    );
    // The due time arrives.
    sqlx::query(
        "UPDATE workflows SET next_run_at = now() - interval '1 second' WHERE id = $1::uuid",
    )
    .bind(&id)
    .execute(&pool)
    .await
    .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let runs = loop {
        let runs = call_ok(
            &admin,
            "list_workflow_executions",
            json!({ "workflow_id": id, "status": "succeeded" }),
        )
        .await;
        if runs["total"] != 0 || std::time::Instant::now() > deadline {
            break runs;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert_eq!(runs["total"], 1, "{runs}");
    assert_eq!(runs["executions"][0]["source"], "schedule");
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert_eq!(
        call_ok(
            &admin,
            "list_workflow_executions",
            json!({ "workflow_id": id })
        )
        .await["total"],
        1,
        "two processes, one run per due time"
    );
    assert!(next().await.unwrap() > chrono::Utc::now() + chrono::Duration::minutes(55));
    other.cancel().await.unwrap();
    admin.cancel().await.unwrap();
}

#[tokio::test]
async fn runs_report_progress_per_step_and_can_be_cancelled() {
    let db = TestDb::new().await;
    let admin = stdio_client(db.command(&["stdio"]), Generation::Stateless).await;
    let steps = json!([
        { "id": "one", "tool": "list_customers", "arguments": { "limit": 1 } },
        { "id": "two", "tool": "generate_report", "arguments": { "report": "pipeline" } },
    ]);
    let id = workflow(&admin, "Two steps", steps, json!({})).await;
    let mut raw = crate::stdio::RawStdio::start(&db, &[]);
    let (reply, notifications) = raw.request_with_notifications(
        3,
        "tools/call",
        json!({ "name": "execute_workflow", "_meta": { "progressToken": "wf-1" },
                "arguments": { "workflow_id": id } }),
    );
    assert_eq!(
        reply["result"]["structuredContent"]["execution"]["status"], "succeeded",
        "{reply}"
    );
    let progress: Vec<(f64, String)> = notifications
        .iter()
        .filter(|n| {
            n["method"] == "notifications/progress" && n["params"]["progressToken"] == "wf-1"
        })
        .map(|n| {
            (
                n["params"]["progress"].as_f64().unwrap(),
                n["params"]["message"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    assert_eq!(
        progress,
        [
            (0.0, "step one (list_customers)".to_owned()),
            (1.0, "step two (generate_report)".to_owned()),
            (2.0, "done".to_owned())
        ]
    );

    // A run waiting between attempts is cancelled before its next step.
    call_ok(
        &admin,
        "create_customer",
        json!({ "first_name": "Old", "email": "x@y.test" }),
    )
    .await;
    let steps = json!([
        { "id": "make", "tool": "create_customer", "arguments": { "first_name": "New", "email": "x@y.test" },
          "on_error": { "retries": 3, "backoff_ms": 1000, "then": "continue" } },
        { "id": "after", "tool": "list_customers", "arguments": {} },
    ]);
    let stuck = workflow(&admin, "Stuck", steps, json!({})).await;
    let started = call_ok(
        &admin,
        "execute_workflow",
        json!({ "workflow_id": stuck, "wait_seconds": 0 }),
    )
    .await;
    let execution_id = started["execution"]["id"].as_str().unwrap().to_owned();
    let cancelled = call_ok(
        &admin,
        "cancel_workflow_execution",
        json!({ "execution_id": execution_id }),
    )
    .await;
    assert_eq!(cancelled["execution"]["id"], execution_id.as_str());
    let done = wait_for_end(&admin, &execution_id).await;
    assert_eq!(done["execution"]["status"], "cancelled", "{done}");
    assert!(
        !statuses(&done).iter().any(|(step, _)| step == "after"),
        "no step after the cancellation: {done}"
    );
    assert_eq!(
        error_code(
            &call(
                &admin,
                "cancel_workflow_execution",
                json!({ "execution_id": "00000000-0000-0000-0000-000000000009" })
            )
            .await
        ),
        "not_found"
    );
    admin.cancel().await.unwrap();
}
