//! Policy by construction (issue 17, findings 1, 2 and 7): object grants hold on every path
//! that touches a customer, a restriction the server would not enforce is refused, and a
//! duplicate email tells a limited agent nothing about a customer it cannot see.

use rmcp::model::{ArgumentInfo, CompleteRequestParams, ReadResourceRequestParams, Reference};
use serde_json::{Value, json};

use crate::helpers::*;

/// An agent over stdio with the sessions generation (resources and completion).
async fn agent_session(db: &TestDb, agent: &Value) -> Client {
    let mut command = db.server(&["stdio"]);
    command
        .env("AGENTCRM_CLIENT_ID", agent["client_id"].as_str().unwrap())
        .env(
            "AGENTCRM_CLIENT_SECRET",
            agent["client_secret"].as_str().unwrap(),
        );
    stdio_client(command, Generation::Sessions).await
}

fn ids_of(list: &Value, key: &str) -> Vec<String> {
    list[key]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| {
            item["customer_id"]
                .as_str()
                .or(item["id"].as_str())
                .unwrap()
                .to_owned()
        })
        .collect()
}

/// 1. A `customers:read` grant excluding Eve hides Eve on every path: gets, lists, search,
/// reports, her interactions and annotations, resources and completion; writes to her too.
/// A grant limited to Alice lists Alice alone; a write grant limits writes.
#[tokio::test]
async fn object_grants_hold_on_every_path_that_touches_the_customer() {
    let db = TestDb::new().await;
    let admin = stdio_client(db.command(&["stdio"]), Generation::Stateless).await;
    let mut ids = std::collections::HashMap::new();
    for (first, last) in [("Alice", "Zephyr"), ("Eve", "Zephyr"), ("Bob", "Zephyr")] {
        let made = call_ok(
            &admin,
            "create_customer",
            json!({ "first_name": first, "last_name": last, "status": "lead" }),
        )
        .await;
        let id = made["customer"]["id"].as_str().unwrap().to_owned();
        call_ok(
            &admin,
            "log_interaction",
            json!({ "customer_id": id, "type": "call", "subject": format!("quokka call with {first}") }),
        )
        .await;
        call_ok(
            &admin,
            "add_annotation",
            json!({ "customer_id": id, "text": format!("note on {first}") }),
        )
        .await;
        ids.insert(first, id);
    }
    let (alice, eve, bob) = (ids["Alice"].clone(), ids["Eve"].clone(), ids["Bob"].clone());
    let agent = db.admin(&[
        "create-agent",
        "--tenant",
        "acme",
        "--name",
        "granted",
        "--scopes",
        "customers:read,customers:write,interactions:read,interactions:write,search,reports,bulk",
    ]);
    let agent_id = agent["agent"]["id"].as_str().unwrap();
    call_ok(
        &admin,
        "update_agent_permissions",
        json!({ "agent_id": agent_id, "grants": [{ "scope": "customers:read", "except_ids": [eve] }] }),
    )
    .await;
    let client = agent_session(&db, &agent).await;

    let got = call(&client, "get_customer", json!({ "customer_id": eve })).await;
    assert_eq!(error_code(&got), "not_found", "{got:?}");
    let listed = call_ok(&client, "list_customers", json!({})).await;
    assert_eq!(listed["total"], 2, "{listed}");
    assert!(!ids_of(&listed, "customers").contains(&eve));
    let found = call_ok(&client, "search", json!({ "query": "Zephyr" })).await;
    let hits = ids_of(&found, "results");
    assert_eq!(hits.len(), 2, "{found}");
    assert!(!hits.contains(&eve));
    let found = call_ok(
        &client,
        "search",
        json!({ "query": "quokka", "types": ["interaction"] }),
    )
    .await;
    let hits = ids_of(&found, "results");
    assert_eq!(hits.len(), 2, "{found}");
    assert!(!hits.contains(&eve), "{found}");
    let interactions = call_ok(&client, "list_interactions", json!({})).await;
    assert_eq!(interactions["total"], 2, "{interactions}");
    assert!(!ids_of(&interactions, "interactions").contains(&eve));
    for (tool, args) in [
        ("list_interactions", json!({ "customer_id": eve })),
        ("list_annotations", json!({ "customer_id": eve })),
        (
            "update_customer",
            json!({ "customer_id": eve, "version": 1, "company": "Pwned" }),
        ),
        (
            "log_interaction",
            json!({ "customer_id": eve, "type": "note", "subject": "x" }),
        ),
        ("add_annotation", json!({ "customer_id": eve, "text": "x" })),
    ] {
        let refused = call(&client, tool, args).await;
        assert_eq!(refused.is_error, Some(true), "{tool}: {refused:?}");
        let code = error_code(&refused);
        assert!(
            code == "not_found" || code == "forbidden",
            "{tool}: {code} {refused:?}"
        );
    }
    let pipeline = call_ok(&client, "generate_report", json!({ "report": "pipeline" })).await;
    assert_eq!(pipeline["totals"]["customers"], 2, "{pipeline}");
    let report = call_ok(
        &client,
        "generate_report",
        json!({ "report": "interactions" }),
    )
    .await;
    assert_eq!(report["totals"]["interactions"], 2, "{report}");
    let read = client
        .read_resource(ReadResourceRequestParams::new(format!(
            "agentcrm://customers/{eve}"
        )))
        .await;
    assert!(read.is_err(), "{read:?}");
    client
        .read_resource(ReadResourceRequestParams::new(format!(
            "agentcrm://customers/{alice}"
        )))
        .await
        .expect("Alice is readable");
    let completion = client
        .complete(CompleteRequestParams::new(
            Reference::for_prompt("triage_customer"),
            ArgumentInfo::new("customer", "Eve"),
        ))
        .await
        .unwrap();
    assert!(
        !completion
            .completion
            .values
            .iter()
            .any(|v| v.contains(&eve)),
        "{:?}",
        completion.completion.values
    );
    // Nothing of Eve's changed.
    let untouched = call_ok(&admin, "get_customer", json!({ "customer_id": eve })).await;
    assert_eq!(untouched["customer"]["version"], 1);
    let notes = call_ok(&admin, "list_annotations", json!({ "customer_id": eve })).await;
    assert_eq!(notes["total"], 1);

    // Only Alice, for reading; and writes only to Bob (so: to no one this agent sees but
    // Bob, whom it cannot see: nothing).
    call_ok(
        &admin,
        "update_agent_permissions",
        json!({ "agent_id": agent_id, "grants": [
            { "scope": "customers:read", "only_ids": [alice, bob] },
            { "scope": "customers:write", "only_ids": [bob] },
        ] }),
    )
    .await;
    let listed = call_ok(&client, "list_customers", json!({})).await;
    assert_eq!(listed["total"], 2, "{listed}");
    let alice_update = call(
        &client,
        "update_customer",
        json!({ "customer_id": alice, "version": 1, "company": "Nope" }),
    )
    .await;
    assert_eq!(alice_update.is_error, Some(true), "{alice_update:?}");
    call_ok(
        &client,
        "update_customer",
        json!({ "customer_id": bob, "version": 1, "company": "Granted" }),
    )
    .await;
    let bulk = call(
        &client,
        "bulk_update_customers",
        json!({ "filter": { "status": "lead" }, "set": { "assigned_to": "mallory" } }),
    )
    .await;
    assert_eq!(bulk.is_error, Some(false), "{bulk:?}");
    let alice_now = call_ok(&admin, "get_customer", json!({ "customer_id": alice })).await;
    assert!(
        alice_now["customer"].get("assigned_to").is_none(),
        "{alice_now}"
    );
    call_ok(
        &admin,
        "update_agent_permissions",
        json!({ "agent_id": agent_id, "grants": [{ "scope": "customers:read", "only_ids": [alice] }] }),
    )
    .await;
    let listed = call_ok(&client, "list_customers", json!({})).await;
    assert_eq!(listed["total"], 1, "{listed}");
    assert_eq!(ids_of(&listed, "customers"), [alice]);
    client.cancel().await.unwrap();
    admin.cancel().await.unwrap();
}

/// 2. Field rules, conditions or grants the server would not enforce are refused, naming
/// what it enforces; nothing is stored.
#[tokio::test]
async fn restrictions_that_would_not_be_enforced_are_refused() {
    let db = TestDb::new().await;
    let admin = stdio_client(db.command(&["stdio"]), Generation::Stateless).await;
    let agent = db.admin(&[
        "create-agent",
        "--tenant",
        "acme",
        "--name",
        "limited",
        "--scopes",
        "customers:read,interactions:read",
    ]);
    let agent_id = agent["agent"]["id"].as_str().unwrap();
    for (change, named) in [
        (
            json!({ "conditions": { "interactions": [{ "field": "type", "op": "eq", "value": "call" }] } }),
            "enforced on: customers",
        ),
        (
            json!({ "field_rules": { "interactions": ["subject"] } }),
            "enforced on: customers",
        ),
        (
            json!({ "field_rules": { "customers": ["first_name", "ssn"] } }),
            "`ssn`",
        ),
        (
            json!({ "conditions": { "customers": [{ "field": "tags", "op": "eq", "value": "vip" }] } }),
            "only on: first_name",
        ),
        (
            json!({ "grants": [{ "scope": "interactions:read", "except_ids": [agent_id] }] }),
            "customers:read, customers:write, customers:delete, customers:export",
        ),
    ] {
        let mut args = change.clone();
        args["agent_id"] = json!(agent_id);
        let refused = call(&admin, "update_agent_permissions", args).await;
        assert_eq!(
            error_code(&refused),
            "invalid_request",
            "{change}: {refused:?}"
        );
        let text = refused.structured_content.unwrap()["error_description"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(text.contains(named), "{change}: {text}");
    }
    let client = agent_client(&db, &agent).await;
    let me = call_ok(&client, "whoami", json!({})).await;
    assert_eq!(me["field_rules"], json!({}), "{me}");
    assert_eq!(me["conditions"], json!({}), "{me}");
    let mine = call_ok(&client, "list_my_permissions", json!({})).await;
    assert_eq!(mine["grants"], json!([]), "{mine}");
    client.cancel().await.unwrap();
    admin.cancel().await.unwrap();
}

/// 7. An agent limited to hot leads, creating a hot lead with the email of a customer it
/// cannot see, is refused without learning that such a customer exists; a duplicate it
/// can see is a plain conflict.
#[tokio::test]
async fn a_duplicate_email_reveals_nothing_about_a_customer_out_of_sight() {
    let db = TestDb::new().await;
    let admin = stdio_client(db.command(&["stdio"]), Generation::Stateless).await;
    call_ok(
        &admin,
        "create_customer",
        json!({ "first_name": "Hidden", "email": "hidden@rival.test", "status": "lead" }),
    )
    .await;
    call_ok(
        &admin,
        "create_customer",
        json!({ "first_name": "Seen", "email": "seen@acme.test", "status": "hot_lead" }),
    )
    .await;
    let agent = db.admin(&[
        "create-agent",
        "--tenant",
        "acme",
        "--name",
        "hot-only",
        "--scopes",
        "customers:read,customers:write",
    ]);
    call_ok(
        &admin,
        "update_agent_permissions",
        json!({
            "agent_id": agent["agent"]["id"],
            "conditions": { "customers": [{ "field": "status", "op": "eq", "value": "hot_lead" }] },
        }),
    )
    .await;
    let client = agent_client(&db, &agent).await;
    let probe = call(
        &client,
        "create_customer",
        json!({ "first_name": "Probe", "email": "HIDDEN@rival.test", "status": "hot_lead" }),
    )
    .await;
    assert_eq!(probe.is_error, Some(true), "{probe:?}");
    assert_ne!(error_code(&probe), "conflict", "{probe:?}");
    let text = serde_json::to_string(&probe).unwrap().to_lowercase();
    assert!(!text.contains("exist"), "{text}");
    assert!(!text.contains("hidden@rival.test"), "{text}");
    let visible = call(
        &client,
        "create_customer",
        json!({ "first_name": "Twin", "email": "seen@acme.test", "status": "hot_lead" }),
    )
    .await;
    assert_eq!(error_code(&visible), "conflict", "{visible:?}");
    let listed = call_ok(&admin, "list_customers", json!({})).await;
    assert_eq!(listed["total"], 2, "nothing was created");
    client.cancel().await.unwrap();
    admin.cancel().await.unwrap();
}

/// Whatever reads, changes or deletes customers goes through `Policy::rows`, which cannot be
/// had without the caller's policy: outside the policy module, SQL names the table only to
/// insert (which reads nothing, and is checked against the conditions first) and to seed the
/// demo. A new handler that queried the table itself would fail here.
#[test]
fn only_the_policy_builder_queries_the_customers_table() {
    fn files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                files(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut sources = Vec::new();
    files(&root.join("src"), &mut sources);
    let mut found = Vec::new();
    for path in sources {
        let name = path
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        if name == "src/access/policy.rs" {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap().to_lowercase();
        let words: Vec<&str> = text
            .split(|c: char| !(c.is_alphanumeric() || c == '_'))
            .filter(|w| !w.is_empty())
            .collect();
        for pair in words.windows(3) {
            let inserts = pair[0] == "insert" && pair[1] == "into" && pair[2] == "customers";
            let uses = ["from", "join", "update"].contains(&pair[1]) && pair[2] == "customers";
            let seeding = name == "src/cli/demo.rs" || name == "src/crm/customers.rs";
            if uses || (pair[1] == "into" && pair[2] == "customers" && !(inserts && seeding)) {
                found.push(format!("{name}: {} {} {}", pair[0], pair[1], pair[2]));
            }
        }
    }
    assert!(
        found.is_empty(),
        "SQL on customers outside Policy::rows: {found:#?}"
    );
}
