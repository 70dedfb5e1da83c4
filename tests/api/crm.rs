//! The crm toolset over MCP: customers with tenancy, versions, filters, and an agent's
//! field rules, row conditions and grants.

use serde_json::{Value, json};

use crate::helpers::*;

async fn create(client: &Client, fields: Value) -> Value {
    call_ok(client, "create_customer", fields).await["customer"].clone()
}

#[tokio::test]
async fn customers_are_created_read_updated_and_deleted() {
    let db = TestDb::new().await;
    let admin = stdio_client(db.command(&["stdio"]), Generation::Stateless).await;

    let ana = create(&admin, json!({ "first_name": "Ana", "last_name": "Lima", "email": "ana@lima.test", "company": "Lima SA", "status": "hot_lead", "tags": ["vip"], "custom_fields": { "tier": 2 } })).await;
    assert_eq!(ana["version"], 1);
    assert_eq!(ana["status"], "hot_lead");
    assert_eq!(ana["custom_fields"], json!({ "tier": 2 }));
    let id = ana["id"].as_str().unwrap().to_owned();
    create(
        &admin,
        json!({ "first_name": "Bo", "last_name": "Berg", "company": "lima sa" }),
    )
    .await;
    create(&admin, json!({ "first_name": "Cy", "last_name": "Cole", "status": "customer", "tags": ["vip", "eu"] })).await;

    let duplicate = call(
        &admin,
        "create_customer",
        json!({ "first_name": "X", "email": "ANA@lima.test" }),
    )
    .await;
    assert_eq!(
        error_code(&duplicate),
        "conflict",
        "emails are unique per tenant, whatever the case"
    );
    let bad_status = call(
        &admin,
        "create_customer",
        json!({ "first_name": "X", "status": "vip" }),
    )
    .await;
    assert_eq!(error_code(&bad_status), "invalid_request");
    let too_long = call(
        &admin,
        "create_customer",
        json!({ "first_name": "x".repeat(500) }),
    )
    .await;
    assert_eq!(error_code(&too_long), "invalid_request");

    let got = call_ok(
        &admin,
        "get_customer",
        json!({ "customer_id": id, "fields": ["email"] }),
    )
    .await;
    assert_eq!(
        got["customer"],
        json!({ "id": id, "email": "ana@lima.test" })
    );
    let unknown_field = call(
        &admin,
        "get_customer",
        json!({ "customer_id": id, "fields": ["password"] }),
    )
    .await;
    assert_eq!(error_code(&unknown_field), "invalid_request");
    let missing = call(
        &admin,
        "get_customer",
        json!({ "customer_id": uuid::Uuid::new_v4() }),
    )
    .await;
    assert_eq!(error_code(&missing), "not_found");

    let all = call_ok(&admin, "list_customers", json!({})).await;
    assert_eq!(all["total"], 3);
    assert_eq!(all["customers"][0]["first_name"], "Cy", "newest first");
    let lima = call_ok(
        &admin,
        "list_customers",
        json!({ "company": "LIMA SA", "order_by": "last_name_asc" }),
    )
    .await;
    let names: Vec<&str> = lima["customers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["last_name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["Berg", "Lima"]);
    let vip = call_ok(
        &admin,
        "list_customers",
        json!({ "tag": "vip", "status": "customer" }),
    )
    .await;
    assert_eq!(vip["total"], 1);
    let paged = call_ok(&admin, "list_customers", json!({ "limit": 2 })).await;
    assert_eq!(
        (
            paged["has_more"].as_bool(),
            paged["customers"].as_array().unwrap().len()
        ),
        (Some(true), 2)
    );
    let rest = call_ok(
        &admin,
        "list_customers",
        json!({ "limit": 2, "cursor": paged["next_cursor"] }),
    )
    .await;
    assert_eq!(
        (
            rest["has_more"].as_bool(),
            rest["customers"].as_array().unwrap().len()
        ),
        (Some(false), 1)
    );
    for bad in [
        json!({ "limit": 101 }),
        json!({ "order_by": "email; DROP TABLE customers" }),
        json!({ "status": "nope" }),
        json!({ "cursor": "bad" }),
    ] {
        let refused = call(&admin, "list_customers", bad.clone()).await;
        assert_eq!(error_code(&refused), "invalid_request", "{bad}");
    }

    let updated = call_ok(
        &admin,
        "update_customer",
        json!({ "customer_id": id, "version": 1, "status": "customer", "phone": "+351 1" }),
    )
    .await;
    assert_eq!(updated["customer"]["version"], 2);
    assert_eq!(updated["customer"]["phone"], "+351 1");
    let stale = call(
        &admin,
        "update_customer",
        json!({ "customer_id": id, "version": 1, "status": "churned" }),
    )
    .await;
    assert_eq!(error_code(&stale), "conflict");
    assert!(
        stale.structured_content.unwrap()["error_description"]
            .as_str()
            .unwrap()
            .contains("now version 2")
    );
    let typo = call(
        &admin,
        "update_customer",
        json!({ "customer_id": id, "version": 2, "stauts": "churned" }),
    )
    .await;
    assert_eq!(
        error_code(&typo),
        "invalid_request",
        "unknown fields are refused"
    );
    let nothing = call(
        &admin,
        "update_customer",
        json!({ "customer_id": id, "version": 2 }),
    )
    .await;
    assert_eq!(error_code(&nothing), "invalid_request");
    let after = call_ok(&admin, "get_customer", json!({ "customer_id": id })).await;
    assert_eq!(
        after["customer"]["status"], "customer",
        "refused updates changed nothing"
    );

    let deleted = call_ok(&admin, "delete_customer", json!({ "customer_id": id })).await;
    assert_eq!(deleted["deleted"], true);
    let again = call(&admin, "delete_customer", json!({ "customer_id": id })).await;
    assert_eq!(error_code(&again), "not_found");
    admin.cancel().await.unwrap();
}

#[tokio::test]
async fn other_tenants_customers_do_not_exist() {
    let db = TestDb::new().await;
    let key = db.other_tenant_key("globex");
    let mut command = agentcrm(&["stdio"]);
    command
        .env("DATABASE_URL", &db.url)
        .env("AGENTCRM_API_KEY", &key);
    let globex = stdio_client(command, Generation::Stateless).await;
    let theirs = create(
        &globex,
        json!({ "first_name": "Their", "email": "same@mail.test" }),
    )
    .await;
    let their_id = theirs["id"].as_str().unwrap();

    let acme = stdio_client(db.command(&["stdio"]), Generation::Stateless).await;
    create(
        &acme,
        json!({ "first_name": "Ours", "email": "same@mail.test" }),
    )
    .await;
    for (tool, args) in [
        ("get_customer", json!({ "customer_id": their_id })),
        (
            "update_customer",
            json!({ "customer_id": their_id, "version": 1, "first_name": "Mine" }),
        ),
        ("delete_customer", json!({ "customer_id": their_id })),
    ] {
        assert_eq!(
            error_code(&call(&acme, tool, args).await),
            "not_found",
            "{tool}"
        );
    }
    assert_eq!(
        call_ok(&acme, "list_customers", json!({})).await["total"],
        1
    );
    let still = call_ok(&globex, "get_customer", json!({ "customer_id": their_id })).await;
    assert_eq!(
        (
            still["customer"]["first_name"].as_str(),
            still["customer"]["version"].as_i64()
        ),
        (Some("Their"), Some(1))
    );
    acme.cancel().await.unwrap();
    globex.cancel().await.unwrap();
}

#[tokio::test]
async fn an_agents_policy_shapes_every_customer_tool() {
    let db = TestDb::new().await;
    let admin = stdio_client(db.command(&["stdio"]), Generation::Stateless).await;
    let hot = create(&admin, json!({ "first_name": "Hot", "email": "hot@x.test", "phone": "1", "status": "hot_lead", "assigned_to": "sales_team", "custom_fields": { "vip": true } })).await;
    let cold = create(
        &admin,
        json!({ "first_name": "Cold", "status": "lead", "assigned_to": "sales_team" }),
    )
    .await;
    let agent = call_ok(&admin, "register_agent", json!({ "name": "sales-bot", "scopes": ["customers:read", "customers:write", "customers:delete"] })).await;
    call_ok(&admin, "update_agent_permissions", json!({
        "agent_id": agent["agent"]["id"],
        "field_rules": { "customers": ["first_name", "email", "phone", "status", "assigned_to"] },
        "conditions": { "customers": [{ "field": "status", "op": "eq", "value": "hot_lead" }] },
    }))
    .await;
    let bot = agent_client(&db, &agent).await;

    let listed = call_ok(&bot, "list_customers", json!({})).await;
    assert_eq!(
        listed["total"], 1,
        "only rows matching the conditions: {listed}"
    );
    let seen = &listed["customers"][0];
    assert_eq!(seen["first_name"], "Hot");
    assert!(
        seen.get("custom_fields").is_none() && seen.get("tags").is_none(),
        "restricted fields never appear: {seen}"
    );
    let cold_id = cold["id"].as_str().unwrap();
    assert_eq!(
        error_code(&call(&bot, "get_customer", json!({ "customer_id": cold_id })).await),
        "not_found"
    );
    let by_tag = call(&bot, "list_customers", json!({ "tag": "vip" })).await;
    assert_eq!(
        error_code(&by_tag),
        "forbidden",
        "filtering on a hidden field would reveal it"
    );

    let hot_id = hot["id"].as_str().unwrap();
    let restricted = call(
        &bot,
        "update_customer",
        json!({ "customer_id": hot_id, "version": 1, "custom_fields": { "vip": false } }),
    )
    .await;
    assert_eq!(error_code(&restricted), "forbidden");
    let escape = call(
        &bot,
        "update_customer",
        json!({ "customer_id": hot_id, "version": 1, "status": "churned" }),
    )
    .await;
    assert_eq!(
        error_code(&escape),
        "forbidden",
        "a write cannot move a row outside the conditions"
    );
    let ok = call_ok(
        &bot,
        "update_customer",
        json!({ "customer_id": hot_id, "version": 1, "phone": "2" }),
    )
    .await;
    assert_eq!(ok["customer"]["phone"], "2");
    let outside = call(
        &bot,
        "create_customer",
        json!({ "first_name": "New", "status": "lead", "assigned_to": "x" }),
    )
    .await;
    assert_eq!(error_code(&outside), "forbidden");
    create(&bot, json!({ "first_name": "New", "status": "hot_lead" })).await;

    // Deleting needs an explicit grant, whose exceptions hold.
    assert_eq!(
        error_code(&call(&bot, "delete_customer", json!({ "customer_id": hot_id })).await),
        "forbidden"
    );
    call_ok(
        &admin,
        "update_agent_permissions",
        json!({
            "agent_id": agent["agent"]["id"],
            "grants": [{ "scope": "customers:delete", "except_ids": [hot_id] }],
        }),
    )
    .await;
    assert_eq!(
        error_code(&call(&bot, "delete_customer", json!({ "customer_id": hot_id })).await),
        "forbidden"
    );
    let newest = call_ok(
        &bot,
        "list_customers",
        json!({ "order_by": "created_desc", "limit": 1 }),
    )
    .await;
    let new_id = newest["customers"][0]["id"].as_str().unwrap().to_owned();
    // The default approval policy holds agents' deletions; this tenant lets them through.
    call_ok(
        &admin,
        "set_approval_policy",
        json!({ "hold_customer_deletes": false }),
    )
    .await;
    assert_eq!(
        call_ok(&bot, "delete_customer", json!({ "customer_id": new_id })).await["deleted"],
        true
    );

    let admin_view = call_ok(&admin, "get_customer", json!({ "customer_id": hot_id })).await;
    assert_eq!(
        admin_view["customer"]["custom_fields"],
        json!({ "vip": true }),
        "the refused write changed nothing"
    );
    bot.cancel().await.unwrap();
    admin.cancel().await.unwrap();
}

#[tokio::test]
async fn interactions_and_annotations_follow_their_customer() {
    let db = TestDb::new().await;
    let admin = stdio_client(db.command(&["stdio"]), Generation::Stateless).await;
    let hot = create(&admin, json!({ "first_name": "Hot", "status": "hot_lead" })).await;
    let cold = create(&admin, json!({ "first_name": "Cold", "status": "lead" })).await;
    let (hot_id, cold_id) = (hot["id"].as_str().unwrap(), cold["id"].as_str().unwrap());

    let logged = call_ok(&admin, "log_interaction", json!({
        "customer_id": hot_id, "type": "call", "direction": "inbound", "subject": "Pricing",
        "notes": "Asked for a quote", "metadata": { "sentiment": "positive", "duration_seconds": 300 },
    }))
    .await;
    assert_eq!(logged["interaction"]["type"], "call");
    assert_eq!(logged["interaction"]["metadata"]["sentiment"], "positive");
    call_ok(&admin, "log_interaction", json!({ "customer_id": hot_id, "type": "email", "direction": "outbound", "occurred_at": "2026-01-01T10:00:00Z" })).await;
    call_ok(
        &admin,
        "log_interaction",
        json!({ "customer_id": cold_id, "type": "note", "notes": "cold" }),
    )
    .await;
    let bad = call(
        &admin,
        "log_interaction",
        json!({ "customer_id": hot_id, "type": "fax" }),
    )
    .await;
    assert_eq!(error_code(&bad), "invalid_request");
    let nobody = call(
        &admin,
        "log_interaction",
        json!({ "customer_id": uuid::Uuid::new_v4(), "type": "note" }),
    )
    .await;
    assert_eq!(error_code(&nobody), "not_found");

    let hot_calls = call_ok(
        &admin,
        "list_interactions",
        json!({ "customer_id": hot_id }),
    )
    .await;
    assert_eq!(hot_calls["total"], 2);
    assert_eq!(
        hot_calls["interactions"][0]["type"], "call",
        "most recent first"
    );
    let emails = call_ok(&admin, "list_interactions", json!({ "type": "email", "since": "2025-12-31T00:00:00Z", "until": "2026-01-02T00:00:00Z" })).await;
    assert_eq!(emails["total"], 1);
    assert_eq!(
        call_ok(&admin, "list_interactions", json!({})).await["total"],
        3
    );

    let note = call_ok(
        &admin,
        "add_annotation",
        json!({ "customer_id": hot_id, "text": "Prefers calls", "tags": ["channel"] }),
    )
    .await;
    assert_eq!(note["annotation"]["created_by_name"], "tests");
    assert_eq!(
        error_code(
            &call(
                &admin,
                "add_annotation",
                json!({ "customer_id": hot_id, "text": "  " })
            )
            .await
        ),
        "invalid_request"
    );
    let notes = call_ok(&admin, "list_annotations", json!({ "customer_id": hot_id })).await;
    assert_eq!(notes["total"], 1);

    // An agent limited to hot leads sees their interactions only.
    let agent = call_ok(
        &admin,
        "register_agent",
        json!({ "name": "hot-only", "scopes": ["interactions:read", "interactions:write"] }),
    )
    .await;
    call_ok(
        &admin,
        "update_agent_permissions",
        json!({
            "agent_id": agent["agent"]["id"],
            "conditions": { "customers": [{ "field": "status", "op": "eq", "value": "hot_lead" }] },
        }),
    )
    .await;
    let bot = agent_client(&db, &agent).await;
    assert_eq!(
        call_ok(&bot, "list_interactions", json!({})).await["total"],
        2
    );
    assert_eq!(
        error_code(&call(&bot, "list_interactions", json!({ "customer_id": cold_id })).await),
        "not_found"
    );
    assert_eq!(
        error_code(
            &call(
                &bot,
                "log_interaction",
                json!({ "customer_id": cold_id, "type": "note" })
            )
            .await
        ),
        "not_found"
    );
    assert_eq!(
        error_code(&call(&bot, "list_annotations", json!({ "customer_id": cold_id })).await),
        "not_found"
    );
    bot.cancel().await.unwrap();

    // Every change left its event in the outbox, in order.
    call_ok(
        &admin,
        "update_customer",
        json!({ "customer_id": cold_id, "version": 1, "status": "prospect" }),
    )
    .await;
    call_ok(&admin, "delete_customer", json!({ "customer_id": cold_id })).await;
    admin.cancel().await.unwrap();
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    let events: Vec<(String, Value)> =
        sqlx::query_as("SELECT type, payload FROM events ORDER BY id")
            .fetch_all(&pool)
            .await
            .unwrap();
    let types: Vec<&str> = events.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(
        types,
        [
            "customer.created",
            "customer.created",
            "interaction.created",
            "interaction.created",
            "interaction.created",
            "customer.updated",
            "customer.deleted"
        ]
    );
    assert_eq!(events[5].1["changed"], json!(["status"]));
    assert_eq!(events[5].1["customer"]["status"], "prospect");
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM interactions")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(left, 2, "a deleted customer's interactions go with it");
}

#[tokio::test]
async fn search_ranks_highlights_tolerates_typos_and_respects_field_rules() {
    let db = TestDb::new().await;
    let admin = stdio_client(db.command(&["stdio"]), Generation::Stateless).await;
    let ana = create(&admin, json!({ "first_name": "Ana", "last_name": "Lima", "email": "zeta@hidden.example", "company": "Lima SA", "status": "hot_lead" })).await;
    create(&admin, json!({ "first_name": "Bruno", "last_name": "Souza", "email": "bruno@souza.test", "status": "hot_lead" })).await;
    create(
        &admin,
        json!({ "first_name": "Carla", "last_name": "Mendes", "company": "Lima Partners" }),
    )
    .await;
    call_ok(&admin, "log_interaction", json!({ "customer_id": ana["id"], "type": "meeting", "subject": "Quarterly pricing review", "notes": "They want volume pricing for 2027" })).await;
    call_ok(
        &admin,
        "log_interaction",
        json!({ "customer_id": ana["id"], "type": "note", "notes": "Birthday in May" }),
    )
    .await;

    let results = |v: &Value| v["results"].as_array().unwrap().clone();
    let lima = call_ok(
        &admin,
        "search",
        json!({ "query": "lima", "types": ["customer"] }),
    )
    .await;
    let hits = results(&lima);
    assert_eq!(hits.len(), 2, "{lima}");
    assert_eq!(
        hits[0]["customer"]["first_name"], "Ana",
        "the name match ranks first: {lima}"
    );
    assert!(hits[0]["score"].as_f64().unwrap() >= hits[1]["score"].as_f64().unwrap());
    assert!(
        hits[0]["highlight"].as_str().unwrap().contains("<<Lima>>"),
        "{lima}"
    );

    for (query, name) in [
        ("Brunno", "Bruno"),
        ("brun", "Bruno"),
        ("SOUZ", "Bruno"),
        // One letter: too short for trigrams, a prefix still.
        ("c", "Carla"),
        ("bruno  so", "Bruno"),
        ("bruno@souza", "Bruno"),
    ] {
        let found = call_ok(
            &admin,
            "search",
            json!({ "query": query, "types": ["customer"] }),
        )
        .await;
        assert_eq!(
            results(&found)
                .first()
                .map(|h| h["customer"]["first_name"].clone()),
            Some(json!(name)),
            "{query}: {found}"
        );
    }

    let pricing = call_ok(&admin, "search", json!({ "query": "pricing" })).await;
    let hits = results(&pricing);
    assert_eq!(hits.len(), 1, "{pricing}");
    assert_eq!(hits[0]["type"], "interaction");
    assert_eq!(hits[0]["customer_id"], ana["id"]);
    assert!(
        hits[0]["highlight"]
            .as_str()
            .unwrap()
            .contains("<<pricing>>"),
        "{pricing}"
    );
    let excluded = call_ok(&admin, "search", json!({ "query": "pricing -volume" })).await;
    assert!(
        results(&excluded).is_empty(),
        "web-search syntax: {excluded}"
    );

    for bad in [
        json!({ "query": "  " }),
        json!({ "query": "x", "limit": 51 }),
        json!({ "query": "x", "types": ["invoice"] }),
    ] {
        assert_eq!(
            error_code(&call(&admin, "search", bad.clone()).await),
            "invalid_request",
            "{bad}"
        );
    }
    let odd = call_ok(
        &admin,
        "search",
        json!({ "query": "'; DROP TABLE customers; --" }),
    )
    .await;
    assert!(results(&odd).is_empty());
    assert_eq!(
        call_ok(&admin, "list_customers", json!({})).await["total"],
        3
    );

    // An agent that may not see emails cannot find customers by them, nor see them highlighted.
    let agent = call_ok(
        &admin,
        "register_agent",
        json!({ "name": "searcher", "scopes": ["search", "customers:read"] }),
    )
    .await;
    call_ok(
        &admin,
        "update_agent_permissions",
        json!({
            "agent_id": agent["agent"]["id"],
            "field_rules": { "customers": ["first_name", "last_name", "status"] },
            "conditions": { "customers": [{ "field": "status", "op": "eq", "value": "hot_lead" }] },
        }),
    )
    .await;
    let bot = agent_client(&db, &agent).await;
    let admin_by_email = call_ok(&admin, "search", json!({ "query": "zeta@hidden.example" })).await;
    assert_eq!(results(&admin_by_email).len(), 1, "{admin_by_email}");
    let by_email = call_ok(&bot, "search", json!({ "query": "zeta@hidden.example" })).await;
    assert!(
        results(&by_email).is_empty(),
        "no match on a restricted field: {by_email}"
    );
    let by_name = call_ok(&bot, "search", json!({ "query": "Ana" })).await;
    let hits = results(&by_name);
    assert_eq!(hits.len(), 1, "{by_name}");
    assert!(
        !by_name.to_string().contains("hidden.example"),
        "no restricted field in results or highlights: {by_name}"
    );
    for query in ["Carla", "carl", "Mend"] {
        let carla = call_ok(&bot, "search", json!({ "query": query })).await;
        assert!(
            results(&carla).is_empty(),
            "row conditions apply to every kind of match ({query}): {carla}"
        );
    }
    let by_prefix = call_ok(&bot, "search", json!({ "query": "ana li" })).await;
    assert_eq!(results(&by_prefix).len(), 1, "{by_prefix}");
    let notes = call_ok(&bot, "search", json!({ "query": "pricing" })).await;
    assert!(
        results(&notes).is_empty(),
        "no interactions without interactions:read"
    );
    bot.cancel().await.unwrap();
    admin.cancel().await.unwrap();
}

#[tokio::test]
async fn invoices_compute_totals_and_follow_their_status_flow() {
    let db = TestDb::new().await;
    let admin = stdio_client(db.command(&["stdio"]), Generation::Stateless).await;
    let customer = create(
        &admin,
        json!({ "first_name": "Ines", "status": "customer" }),
    )
    .await;
    let product = call_ok(
        &admin,
        "create_product",
        json!({ "name": "Seat licence", "sku": "SEAT", "unit_price": 1999, "currency": "eur" }),
    )
    .await;
    assert_eq!(product["product"]["currency"], "EUR");
    let duplicate = call(
        &admin,
        "create_product",
        json!({ "name": "Other", "sku": "SEAT", "unit_price": 1, "currency": "EUR" }),
    )
    .await;
    assert_eq!(error_code(&duplicate), "conflict");
    assert_eq!(
        error_code(
            &call(
                &admin,
                "create_product",
                json!({ "name": "X", "unit_price": 1, "currency": "EURO" })
            )
            .await
        ),
        "invalid_request"
    );

    let invoice = call_ok(&admin, "create_invoice", json!({
        "customer_id": customer["id"], "currency": "EUR", "discount_percent": 12.5, "due_date": "2026-12-31",
        "lines": [
            { "product_id": product["product"]["id"], "quantity": 3 },
            { "description": "Onboarding", "unit_price": 10000 },
        ],
    }))
    .await["invoice"]
        .clone();
    assert_eq!(invoice["status"], "draft");
    assert_eq!(invoice["subtotal"], 3 * 1999 + 10000);
    assert_eq!(
        invoice["discount"], 2000,
        "12.5 % of 15997 = 1999.625, rounded"
    );
    assert_eq!(invoice["total"], 15997 - 2000);
    assert_eq!(invoice["lines"][0]["description"], "Seat licence");
    assert_eq!(invoice["lines"][0]["amount"], 5997);
    let id = invoice["id"].as_str().unwrap().to_owned();

    for bad in [
        json!({ "customer_id": customer["id"], "currency": "EUR", "lines": [] }),
        json!({ "customer_id": customer["id"], "currency": "EUR", "lines": [{ "description": "x" }] }),
        json!({ "customer_id": customer["id"], "currency": "EUR", "lines": [{ "description": "x", "unit_price": 1, "quantity": 0 }] }),
        json!({ "customer_id": customer["id"], "currency": "EUR", "discount_percent": 101, "lines": [{ "description": "x", "unit_price": 1 }] }),
        json!({ "customer_id": customer["id"], "currency": "USD", "lines": [{ "product_id": product["product"]["id"] }] }),
        json!({ "customer_id": customer["id"], "currency": "EUR", "lines": [{ "description": "x", "unit_price": 1 }], "total": 1 }),
    ] {
        assert_eq!(
            error_code(&call(&admin, "create_invoice", bad.clone()).await),
            "invalid_request",
            "{bad}"
        );
    }
    let nobody = call(&admin, "create_invoice", json!({ "customer_id": uuid::Uuid::new_v4(), "currency": "EUR", "lines": [{ "description": "x", "unit_price": 1 }] })).await;
    assert_eq!(error_code(&nobody), "not_found");
    assert_eq!(
        call_ok(&admin, "list_invoices", json!({})).await["total"],
        1,
        "refused invoices left nothing behind"
    );

    let paid_early = call(
        &admin,
        "update_invoice_status",
        json!({ "invoice_id": id, "status": "paid" }),
    )
    .await;
    assert_eq!(
        error_code(&paid_early),
        "conflict",
        "draft cannot jump to paid"
    );
    let sent = call_ok(
        &admin,
        "update_invoice_status",
        json!({ "invoice_id": id, "status": "sent" }),
    )
    .await;
    assert!(sent["invoice"]["sent_at"].is_string());
    let paid = call_ok(
        &admin,
        "update_invoice_status",
        json!({ "invoice_id": id, "status": "paid" }),
    )
    .await;
    assert_eq!(paid["invoice"]["status"], "paid");
    for status in ["draft", "void", "sent"] {
        let refused = call(
            &admin,
            "update_invoice_status",
            json!({ "invoice_id": id, "status": status }),
        )
        .await;
        assert_eq!(error_code(&refused), "conflict", "paid → {status}");
    }
    assert_eq!(
        call_ok(&admin, "list_invoices", json!({ "status": "paid" })).await["total"],
        1
    );
    let got = call_ok(&admin, "get_invoice", json!({ "invoice_id": id })).await;
    assert_eq!(got["invoice"]["lines"].as_array().unwrap().len(), 2);

    let keep = call(
        &admin,
        "delete_customer",
        json!({ "customer_id": customer["id"] }),
    )
    .await;
    assert_eq!(
        error_code(&keep),
        "conflict",
        "a customer with invoices is kept"
    );
    let updated = call_ok(
        &admin,
        "update_product",
        json!({ "product_id": product["product"]["id"], "unit_price": 2499, "active": false }),
    )
    .await;
    assert_eq!(
        (
            updated["product"]["unit_price"].as_i64(),
            updated["product"]["active"].as_bool()
        ),
        (Some(2499), Some(false))
    );
    admin.cancel().await.unwrap();

    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    let events: Vec<String> =
        sqlx::query_scalar("SELECT type FROM events WHERE type LIKE 'invoice.%' ORDER BY id")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        events,
        ["invoice.created", "invoice.updated", "invoice.updated"]
    );
}

#[tokio::test]
async fn quotes_are_edited_as_drafts_and_convert_once() {
    let db = TestDb::new().await;
    let admin = stdio_client(db.command(&["stdio"]), Generation::Stateless).await;
    let customer = create(&admin, json!({ "first_name": "Quinn" })).await;
    let quote = call_ok(
        &admin,
        "create_quote",
        json!({
            "customer_id": customer["id"], "currency": "EUR", "valid_until": "2027-01-31",
            "lines": [{ "description": "Consulting day", "unit_price": 80000, "quantity": 2 }],
        }),
    )
    .await["quote"]
        .clone();
    let id = quote["id"].as_str().unwrap().to_owned();
    assert_eq!(
        (quote["status"].as_str(), quote["total"].as_i64()),
        (Some("draft"), Some(160000))
    );

    let repriced = call_ok(
        &admin,
        "update_quote",
        json!({ "quote_id": id, "discount_percent": 10, "lines": [
        { "description": "Consulting day", "unit_price": 80000, "quantity": 3 },
    ] }),
    )
    .await;
    assert_eq!(repriced["quote"]["total"], 240000 - 24000);
    assert_eq!(repriced["quote"]["lines"].as_array().unwrap().len(), 1);

    let early = call(
        &admin,
        "convert_quote_to_invoice",
        json!({ "quote_id": id }),
    )
    .await;
    assert_eq!(
        error_code(&early),
        "conflict",
        "only accepted quotes convert"
    );
    let skip = call(
        &admin,
        "update_quote",
        json!({ "quote_id": id, "status": "accepted" }),
    )
    .await;
    assert_eq!(
        error_code(&skip),
        "conflict",
        "draft cannot jump to accepted"
    );
    call_ok(
        &admin,
        "update_quote",
        json!({ "quote_id": id, "status": "sent" }),
    )
    .await;
    let frozen = call(
        &admin,
        "update_quote",
        json!({ "quote_id": id, "discount_percent": 50 }),
    )
    .await;
    assert_eq!(
        error_code(&frozen),
        "conflict",
        "a sent quote's price is fixed"
    );
    call_ok(
        &admin,
        "update_quote",
        json!({ "quote_id": id, "status": "accepted" }),
    )
    .await;

    let invoice = call_ok(
        &admin,
        "convert_quote_to_invoice",
        json!({ "quote_id": id, "due_date": "2027-02-28" }),
    )
    .await;
    assert_eq!(invoice["invoice"]["total"], 216000);
    assert_eq!(invoice["invoice"]["discount_bps"], 1000);
    assert_eq!(invoice["invoice"]["status"], "draft");
    let again = call(
        &admin,
        "convert_quote_to_invoice",
        json!({ "quote_id": id }),
    )
    .await;
    assert_eq!(error_code(&again), "conflict");
    let text = again.structured_content.unwrap()["error_description"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        text.contains(invoice["invoice"]["id"].as_str().unwrap()),
        "names the invoice: {text}"
    );
    let converted = call_ok(&admin, "get_quote", json!({ "quote_id": id })).await;
    assert_eq!(converted["quote"]["status"], "converted");
    assert_eq!(converted["quote"]["invoice_id"], invoice["invoice"]["id"]);
    assert_eq!(
        call_ok(&admin, "list_quotes", json!({ "status": "converted" })).await["total"],
        1
    );
    assert_eq!(
        error_code(&call(&admin, "list_quotes", json!({ "status": "won" })).await),
        "invalid_request"
    );
    assert_eq!(
        call_ok(
            &admin,
            "list_invoices",
            json!({ "customer_id": customer["id"] })
        )
        .await["total"],
        1
    );
    admin.cancel().await.unwrap();
}

#[tokio::test]
async fn reports_aggregate_what_the_caller_may_see() {
    let db = TestDb::new().await;
    let admin = stdio_client(db.command(&["stdio"]), Generation::Stateless).await;
    let a = create(&admin, json!({ "first_name": "A", "status": "hot_lead" })).await;
    create(&admin, json!({ "first_name": "B", "status": "hot_lead" })).await;
    let c = create(&admin, json!({ "first_name": "C", "status": "customer" })).await;
    for (customer, kind, direction, sentiment) in [
        (&a, "call", "inbound", "positive"),
        (&a, "call", "inbound", "negative"),
        (&c, "email", "outbound", "positive"),
    ] {
        call_ok(&admin, "log_interaction", json!({ "customer_id": customer["id"], "type": kind, "direction": direction, "metadata": { "sentiment": sentiment } })).await;
    }
    for (customer, amount, status) in [
        (&a, 1000, Some("sent")),
        (&c, 5000, None),
        (&c, 700, Some("void")),
    ] {
        let invoice = call_ok(&admin, "create_invoice", json!({ "customer_id": customer["id"], "currency": "EUR", "lines": [{ "description": "x", "unit_price": amount }] })).await;
        if let Some(status) = status {
            call_ok(
                &admin,
                "update_invoice_status",
                json!({ "invoice_id": invoice["invoice"]["id"], "status": status }),
            )
            .await;
        }
    }

    let pipeline = call_ok(&admin, "generate_report", json!({ "report": "pipeline" })).await;
    assert_eq!(
        pipeline["rows"][0],
        json!({ "labels": { "status": "hot_lead" }, "metrics": { "customers": 2 } })
    );
    assert_eq!(pipeline["totals"]["customers"], 3);
    let interactions = call_ok(
        &admin,
        "generate_report",
        json!({ "report": "interactions" }),
    )
    .await;
    assert_eq!(interactions["totals"]["interactions"], 3);
    assert_eq!(
        interactions["rows"].as_array().unwrap().len(),
        3,
        "{interactions}"
    );
    let revenue = call_ok(&admin, "generate_report", json!({ "report": "revenue" })).await;
    assert_eq!(
        revenue["totals"],
        json!({ "invoiced": 6000, "paid": 0, "outstanding": 1000 }),
        "{revenue}"
    );
    assert_eq!(revenue["rows"][0]["labels"]["currency"], "EUR");
    let bad = call(&admin, "generate_report", json!({ "report": "pipeline", "since": "2026-01-02T00:00:00Z", "until": "2026-01-01T00:00:00Z" })).await;
    assert_eq!(error_code(&bad), "invalid_request");

    // An agent limited to hot leads counts hot leads; without audit:read it gets no activity report.
    let agent = call_ok(
        &admin,
        "register_agent",
        json!({ "name": "analyst", "scopes": ["reports", "customers:read", "interactions:read"] }),
    )
    .await;
    call_ok(
        &admin,
        "update_agent_permissions",
        json!({
            "agent_id": agent["agent"]["id"],
            "conditions": { "customers": [{ "field": "status", "op": "eq", "value": "hot_lead" }] },
        }),
    )
    .await;
    let bot = agent_client(&db, &agent).await;
    let theirs = call_ok(&bot, "generate_report", json!({ "report": "pipeline" })).await;
    assert_eq!(theirs["totals"]["customers"], 2);
    let their_interactions =
        call_ok(&bot, "generate_report", json!({ "report": "interactions" })).await;
    assert_eq!(their_interactions["totals"]["interactions"], 2);
    assert_eq!(
        error_code(
            &call(
                &bot,
                "generate_report",
                json!({ "report": "agent_activity" })
            )
            .await
        ),
        "forbidden"
    );
    assert_eq!(
        error_code(&call(&bot, "generate_report", json!({ "report": "revenue" })).await),
        "forbidden"
    );
    bot.cancel().await.unwrap();

    let activity = call_ok(
        &admin,
        "generate_report",
        json!({ "report": "agent_activity" }),
    )
    .await;
    let analyst = activity["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["labels"]["agent"] == "analyst")
        .cloned()
        .expect("the agent's row");
    assert_eq!(analyst["metrics"]["calls"], 4, "{activity}");
    assert_eq!(analyst["metrics"]["refused"], 2);
    admin.cancel().await.unwrap();
}

#[tokio::test]
async fn bulk_updates_run_in_batches_with_progress_and_respect_policy() {
    let db = TestDb::new().await;
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    let acme: uuid::Uuid = sqlx::query_scalar("SELECT id FROM tenants WHERE slug = 'acme'")
        .fetch_one(&pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO customers (tenant_id, first_name, last_name, status)
         SELECT $1, 'Lead', 'No ' || n, CASE WHEN n % 10 = 0 THEN 'customer' ELSE 'lead' END FROM generate_series(1, 11000) AS n",
    )
    .bind(acme)
    .execute(&pool)
    .await
    .unwrap();

    // 9,900 leads: a background task; the call waits for it and reports progress per batch.
    let mut raw = crate::stdio::RawStdio::start(&db, &[]);
    let (reply, notifications) = raw.request_with_notifications(
        7,
        "tools/call",
        json!({ "name": "bulk_update_customers", "_meta": { "progressToken": "bulk-1" }, "arguments": {
            "filter": { "status": "lead" }, "set": { "status": "prospect", "add_tags": ["campaign"] },
        } }),
    );
    let out = &reply["result"]["structuredContent"];
    assert_eq!(out["affected"], 9900, "{reply}");
    assert_eq!(out["task"]["status"], "succeeded", "{reply}");
    assert_eq!(out["task"]["done"], 9900);
    let progress: Vec<&Value> = notifications
        .iter()
        .filter(|n| n["method"] == "notifications/progress")
        .collect();
    assert_eq!(progress.len(), 10, "one notification per batch of 1,000");
    assert_eq!(progress.last().unwrap()["params"]["progress"], 9900.0);
    assert_eq!(progress[0]["params"]["progressToken"], "bulk-1");

    let counts: Vec<(String, i64)> =
        sqlx::query_as("SELECT status, count(*) FROM customers GROUP BY 1 ORDER BY 1")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        counts,
        [("customer".to_owned(), 1100), ("prospect".to_owned(), 9900)]
    );
    let tagged: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM customers WHERE 'campaign' = ANY(tags) AND version = 2",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(tagged, 9900);
    let events: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE type = 'customer.updated'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(events, 9900, "an event per changed customer");

    let admin = stdio_client(db.command(&["stdio"]), Generation::Stateless).await;
    let task = call_ok(&admin, "get_task", json!({ "task_id": out["task"]["id"] })).await;
    assert_eq!(task["task"]["result"], json!({ "updated": 9900 }));
    assert_eq!(
        error_code(
            &call(
                &admin,
                "get_task",
                json!({ "task_id": uuid::Uuid::new_v4() })
            )
            .await
        ),
        "not_found"
    );

    // A few by id run inline.
    let some: Vec<uuid::Uuid> =
        sqlx::query_scalar("SELECT id FROM customers WHERE status = 'customer' LIMIT 3")
            .fetch_all(&pool)
            .await
            .unwrap();
    let small = call_ok(
        &admin,
        "bulk_update_customers",
        json!({ "customer_ids": some, "set": { "assigned_to": "team-b", "remove_tags": ["x"] } }),
    )
    .await;
    assert_eq!(
        (small["affected"].as_i64(), small["task"]["status"].as_str()),
        (Some(3), Some("succeeded"))
    );
    for bad in [
        json!({ "set": { "status": "lead" } }),
        json!({ "customer_ids": [], "set": { "status": "lead" } }),
        json!({ "filter": {}, "customer_ids": some, "set": { "status": "lead" } }),
        json!({ "filter": { "status": "lead" }, "set": {} }),
    ] {
        assert_eq!(
            error_code(&call(&admin, "bulk_update_customers", bad.clone()).await),
            "invalid_request",
            "{bad}"
        );
    }

    // An agent whose field rules hide tags cannot bulk-tag; its conditions bound what it changes.
    let agent = call_ok(
        &admin,
        "register_agent",
        json!({ "name": "bulk-bot", "scopes": ["customers:write", "bulk"] }),
    )
    .await;
    call_ok(&admin, "update_agent_permissions", json!({
        "agent_id": agent["agent"]["id"],
        "field_rules": { "customers": ["status", "assigned_to"] },
        "conditions": { "customers": [{ "field": "assigned_to", "op": "eq", "value": "team-b" }] },
    }))
    .await;
    let bot = agent_client(&db, &agent).await;
    let tags = call(
        &bot,
        "bulk_update_customers",
        json!({ "filter": {}, "set": { "add_tags": ["x"] } }),
    )
    .await;
    assert_eq!(error_code(&tags), "forbidden");
    let escape = call(
        &bot,
        "bulk_update_customers",
        json!({ "filter": {}, "set": { "assigned_to": "team-c" } }),
    )
    .await;
    assert_eq!(
        error_code(&escape),
        "forbidden",
        "cannot move rows outside its conditions"
    );
    let mine = call_ok(
        &bot,
        "bulk_update_customers",
        json!({ "filter": {}, "set": { "status": "churned" } }),
    )
    .await;
    assert_eq!(mine["affected"], 3, "only the rows its conditions allow");
    bot.cancel().await.unwrap();
    admin.cancel().await.unwrap();
}

/// Every page of `list_customers` in `order_by`, following `next_cursor`; the ids in order.
async fn walk(client: &Client, order_by: &str, limit: u32) -> Vec<String> {
    let mut ids = Vec::new();
    let mut cursor = Value::Null;
    loop {
        let mut args = json!({ "order_by": order_by, "limit": limit, "fields": ["id"] });
        if !cursor.is_null() {
            args["cursor"] = cursor.clone();
        }
        let page = call_ok(client, "list_customers", args).await;
        for customer in page["customers"].as_array().unwrap() {
            ids.push(customer["id"].as_str().unwrap().to_owned());
        }
        cursor = page["next_cursor"].clone();
        assert_eq!(page["has_more"], !cursor.is_null(), "{page}");
        if cursor.is_null() {
            return ids;
        }
    }
}

/// Keyset cursors: every order walks every customer once, ties (one timestamp, names
/// equal but for case, no company) included, and a customer added mid-walk neither shifts
/// nor repeats the pages. The `total` read from the per-status counts matches a count of
/// the rows through creates, status changes, bulk updates and deletes, for an admin and for
/// an agent whose condition and grant narrow what it sees.
#[tokio::test]
async fn list_customers_pages_by_keyset_and_its_total_matches_a_count() {
    let db = TestDb::new().await;
    let admin = stdio_client(db.command(&["stdio"]), Generation::Stateless).await;
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    sqlx::query(
        "INSERT INTO customers (tenant_id, first_name, last_name, company, status, created_at,
             updated_at)
         SELECT t.id, 'n' || i, (ARRAY['ada', 'Ada', 'Zoë', 'åsa', ''])[1 + i % 5],
                CASE WHEN i % 3 = 0 THEN NULL ELSE (ARRAY['Acme', 'acme', 'Beta'])[1 + i % 3] END,
                (ARRAY['lead', 'customer', 'churned', 'hot_lead'])[1 + i % 4],
                timestamptz '2026-01-01' + (i / 4) * interval '1 second',
                timestamptz '2026-02-01' + (i / 3) * interval '1 second'
         FROM tenants t, generate_series(1, 37) i WHERE t.slug = 'acme'",
    )
    .execute(&pool)
    .await
    .unwrap();
    let orders = [
        ("created_desc", "c.created_at DESC, c.id DESC"),
        ("created_asc", "c.created_at, c.id"),
        ("updated_desc", "c.updated_at DESC, c.id DESC"),
        ("last_name_asc", "lower(c.last_name), c.id"),
        ("company_asc", "lower(c.company) NULLS LAST, c.id"),
    ];
    for (order_by, sql) in orders {
        let expected: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT c.id::text FROM customers c ORDER BY {sql}"
        )))
        .fetch_all(&pool)
        .await
        .unwrap();
        assert_eq!(walk(&admin, order_by, 7).await, expected, "{order_by}");
    }

    // A customer added after page one: offsets would show one customer twice.
    let first = call_ok(&admin, "list_customers", json!({ "limit": 10 })).await;
    create(&admin, json!({ "first_name": "Newest" })).await;
    let second = call_ok(
        &admin,
        "list_customers",
        json!({ "limit": 10, "cursor": first["next_cursor"] }),
    )
    .await;
    let ids = |page: &Value| -> Vec<String> {
        page["customers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert!(
        ids(&second).iter().all(|id| !ids(&first).contains(id)),
        "no customer repeated"
    );
    assert_eq!(second["total"], 38);
    // A cursor of another order, or forged, is refused; one issued before keysets still works.
    let other = call(
        &admin,
        "list_customers",
        json!({ "order_by": "last_name_asc", "cursor": first["next_cursor"] }),
    )
    .await;
    assert_eq!(error_code(&other), "invalid_request");
    use base64::Engine;
    let forged = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("k|cd|' OR 1=1 --|0|n");
    let forged = call(&admin, "list_customers", json!({ "cursor": forged })).await;
    assert_eq!(error_code(&forged), "invalid_request");
    let offset = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("o:35");
    let tail = call_ok(&admin, "list_customers", json!({ "cursor": offset })).await;
    assert_eq!(tail["customers"].as_array().unwrap().len(), 3);

    // Totals against counts of the rows, as things change.
    let all_ids: Vec<String> = walk(&admin, "created_asc", 100).await;
    let agent = call_ok(
        &admin,
        "register_agent",
        json!({ "name": "counter", "scopes": ["customers:read"] }),
    )
    .await;
    call_ok(&admin, "update_agent_permissions", json!({
        "agent_id": agent["agent"]["id"],
        "conditions": { "customers": [{ "field": "status", "op": "ne", "value": "churned" }] },
        "grants": [{ "scope": "customers:read", "except_ids": [all_ids[0], all_ids[1], all_ids[2]] }],
    }))
    .await;
    let bot = agent_client(&db, &agent).await;
    let check = |stage: &'static str| {
        let (admin, bot, pool, excluded) = (&admin, &bot, &pool, all_ids[..3].to_vec());
        async move {
            for status in [None, Some("lead"), Some("churned"), Some("customer")] {
                let args = match status {
                    Some(status) => json!({ "status": status, "limit": 1 }),
                    None => json!({ "limit": 1 }),
                };
                let counted: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM customers WHERE ($1::text IS NULL OR status = $1)",
                )
                .bind(status)
                .fetch_one(pool)
                .await
                .unwrap();
                let listed = call_ok(admin, "list_customers", args.clone()).await;
                assert_eq!(listed["total"], counted, "{stage}, admin, {status:?}");
                let visible: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM customers WHERE status <> 'churned'
                       AND NOT (id::text = ANY($2)) AND ($1::text IS NULL OR status = $1)",
                )
                .bind(status)
                .bind(&excluded)
                .fetch_one(pool)
                .await
                .unwrap();
                let listed = call_ok(bot, "list_customers", args).await;
                assert_eq!(listed["total"], visible, "{stage}, agent, {status:?}");
            }
        }
    };
    check("seeded").await;
    let one = call_ok(&admin, "get_customer", json!({ "customer_id": all_ids[5] })).await;
    call_ok(
        &admin,
        "update_customer",
        json!({ "customer_id": all_ids[5], "version": one["customer"]["version"], "status": "churned" }),
    )
    .await;
    call_ok(
        &admin,
        "bulk_update_customers",
        json!({ "customer_ids": all_ids[6..20], "set": { "status": "customer" } }),
    )
    .await;
    call_ok(
        &admin,
        "delete_customer",
        json!({ "customer_id": all_ids[1] }),
    )
    .await;
    call_ok(
        &admin,
        "delete_customer",
        json!({ "customer_id": all_ids[30] }),
    )
    .await;
    check("after updates and deletes").await;
    let drift: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (
             SELECT tenant_id, status, count(*) AS n FROM customers GROUP BY 1, 2) real
         FULL JOIN (
             SELECT tenant_id, status, sum(n) AS n FROM customer_counts GROUP BY 1, 2
             HAVING sum(n) <> 0) kept USING (tenant_id, status)
         WHERE real.n IS DISTINCT FROM kept.n",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(drift, 0, "the counts are the rows' counts");
    bot.cancel().await.unwrap();
    admin.cancel().await.unwrap();
}
