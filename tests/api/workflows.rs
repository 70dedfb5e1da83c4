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
