//! `export_customers` (seed 000): CSV or JSON Lines of what the caller may export (field
//! rules, row conditions, the explicit grant agents need), written in the background and
//! read in pages or whole as a resource; spreadsheet formulas a record carries are
//! neutralized; only whoever made an export (and admins) reads it.

use std::time::{Duration, Instant};

use rmcp::model::{ReadResourceRequestParams, ResourceContents};
use serde_json::{Value, json};
use sqlx::Connection;

use crate::helpers::*;

/// Splits CSV text (RFC 4180, CRLF) into records of cells.
fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let mut records = Vec::new();
    let mut record = Vec::new();
    let mut cell = String::new();
    let mut quoted = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                cell.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => cell.push(c),
            (false, '"') => quoted = true,
            (false, ',') => record.push(std::mem::take(&mut cell)),
            (false, '\r') => {}
            (false, '\n') => {
                record.push(std::mem::take(&mut cell));
                records.push(std::mem::take(&mut record));
            }
            (false, c) => cell.push(c),
        }
    }
    records
}

async fn read_text(client: &Client, uri: &str) -> (String, String) {
    let read = client
        .read_resource(ReadResourceRequestParams::new(uri.to_owned()))
        .await
        .expect("resources/read");
    let ResourceContents::TextResourceContents {
        text, mime_type, ..
    } = &read.contents[0]
    else {
        panic!("{read:?}")
    };
    (text.clone(), mime_type.clone().unwrap_or_default())
}

#[tokio::test]
async fn an_export_holds_what_its_caller_may_see_and_neutralizes_formulas() {
    let db = TestDb::new().await;
    let admin = stdio_client(db.command(&["stdio"]), Generation::Sessions).await;
    let mut ids = Vec::new();
    for (first, company, phone, status) in [
        (
            "=HYPERLINK(\"http://evil.test\",\"x\")",
            "Acme, \"Inc.\"",
            "+1 (555) 0100",
            "customer",
        ),
        (
            "Ada",
            "-2+3+cmd|' /C calc'!A0",
            "+44 20 7946 0958",
            "customer",
        ),
        ("Bob", "Initech", "@SUM(1+1)", "lead"),
    ] {
        let created = call_ok(
            &admin,
            "create_customer",
            json!({ "first_name": first, "company": company, "phone": phone, "status": status,
                    "email": format!("{}@example.com", ids.len()), "tags": ["a", "b"] }),
        )
        .await;
        ids.push(created["customer"]["id"].as_str().unwrap().to_owned());
    }

    let export = call_ok(&admin, "export_customers", json!({})).await;
    assert_eq!(export["export"]["status"], "succeeded", "{export}");
    assert_eq!(export["export"]["total"], 3);
    assert_eq!(export["export"]["mime_type"], "text/csv");
    let records = parse_csv(export["content"].as_str().expect("small: inline"));
    let header = &records[0];
    assert_eq!(header[0], "id");
    assert!(header.contains(&"email".to_owned()) && header.contains(&"tags".to_owned()));
    let column = |name: &str| header.iter().position(|h| h == name).unwrap();
    assert_eq!(records.len(), 4, "{records:?}");
    let row = |id: &str| records.iter().find(|r| r[0] == id).unwrap().clone();
    let evil = row(&ids[0]);
    assert_eq!(
        evil[column("first_name")],
        "'=HYPERLINK(\"http://evil.test\",\"x\")"
    );
    assert_eq!(evil[column("company")], "Acme, \"Inc.\"", "quoted, not cut");
    assert_eq!(
        evil[column("phone")],
        "+1 (555) 0100",
        "a phone number is left alone"
    );
    assert_eq!(evil[column("tags")], "a;b");
    assert_eq!(row(&ids[1])[column("company")], "'-2+3+cmd|' /C calc'!A0");
    assert_eq!(row(&ids[2])[column("phone")], "'@SUM(1+1)");

    // An agent with the scope but no explicit grant is refused, saying why.
    let agent = db.admin(&[
        "create-agent",
        "--tenant",
        "acme",
        "--name",
        "exporter",
        "--scopes",
        "customers:read,customers:export",
    ]);
    let bot = agent_client(&db, &agent).await;
    let refused = call(&bot, "export_customers", json!({})).await;
    assert_eq!(error_code(&refused), "forbidden");
    assert!(format!("{refused:?}").contains("explicit customers:export grant"));
    // With the grant, its field rules and row conditions shape the export.
    call_ok(
        &admin,
        "update_agent_permissions",
        json!({ "agent_id": agent["agent"]["id"],
                "grants": [{ "scope": "customers:export", "except_ids": [ids[1]] }],
                "field_rules": { "customers": ["first_name", "company", "status"] },
                "conditions": { "customers": [{ "field": "status", "op": "eq", "value": "customer" }] } }),
    )
    .await;
    let hidden = call(&bot, "export_customers", json!({ "fields": ["email"] })).await;
    assert_eq!(error_code(&hidden), "forbidden", "{hidden:?}");
    let theirs = call_ok(&bot, "export_customers", json!({ "format": "jsonl" })).await;
    assert_eq!(theirs["export"]["status"], "succeeded", "{theirs}");
    assert_eq!(theirs["export"]["mime_type"], "application/x-ndjson");
    let lines: Vec<Value> = theirs["content"]
        .as_str()
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "a customer, not a lead, and not the excepted one: {lines:?}"
    );
    assert_eq!(lines[0]["id"], ids[0].as_str());
    assert!(lines[0].get("email").is_none() && lines[0].get("phone").is_none());
    assert_eq!(lines[0]["company"], "Acme, \"Inc.\"");

    // Only its maker and admins read an export: not another member, by tool or resource.
    let export_id = theirs["export"]["export_id"].as_str().unwrap();
    let meg = member_client(
        &db,
        "meg@acme.test",
        &["customers:read", "customers:export"],
    )
    .await;
    let snooped = call(&meg, "get_export", json!({ "export_id": export_id })).await;
    assert_eq!(error_code(&snooped), "not_found");
    // Nor its task's counts (how many customers matched someone else's export).
    let counted = call(&meg, "get_task", json!({ "task_id": export_id })).await;
    assert_eq!(error_code(&counted), "not_found");
    let theirs_task = call_ok(&bot, "get_task", json!({ "task_id": export_id })).await;
    assert_eq!(theirs_task["task"]["done"], 1);
    let uri = format!("agentcrm://exports/{export_id}");
    assert!(
        meg.read_resource(ReadResourceRequestParams::new(uri.clone()))
            .await
            .is_err()
    );
    let other = db.other_tenant_key("globex");
    let mut command = db.server(&["stdio"]);
    command.env("AGENTCRM_API_KEY", other);
    let stranger = stdio_client(command, Generation::Stateless).await;
    let across = call(&stranger, "get_export", json!({ "export_id": export_id })).await;
    assert_eq!(error_code(&across), "not_found");
    let (text, mime) = read_text(&admin, &uri).await;
    assert_eq!(mime, "application/x-ndjson");
    assert_eq!(text, theirs["content"].as_str().unwrap());
    // Nothing of the export is in the audit trail's arguments or results.
    let audit = call_ok(
        &admin,
        "list_audit_log",
        json!({ "action": "export_customers" }),
    )
    .await;
    assert!(audit["total"].as_i64().unwrap() >= 3, "{audit}");
    assert!(!audit.to_string().contains("HYPERLINK"), "{audit}");
    for client in [meg, stranger, bot, admin] {
        client.cancel().await.unwrap();
    }
}

#[tokio::test]
async fn a_large_export_runs_in_the_background_and_is_read_in_pages_or_whole() {
    let db = TestDb::new().await;
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    sqlx::query(
        "INSERT INTO customers (tenant_id, first_name, email, status)
         SELECT t.id, 'c' || g, 'c' || g || '@example.com', 'lead'
         FROM tenants t, generate_series(1, 2345) g WHERE t.slug = 'acme'",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    let admin = stdio_client(db.command(&["stdio"]), Generation::Sessions).await;
    let started = call_ok(
        &admin,
        "export_customers",
        json!({ "fields": ["email"], "wait_seconds": 0 }),
    )
    .await;
    assert_eq!(started["export"]["total"], 2345, "{started}");
    assert!(started.get("content").is_none(), "never one giant result");
    let export_id = started["export"]["export_id"].clone();
    let deadline = Instant::now() + Duration::from_secs(60);
    let done = loop {
        let page = call_ok(&admin, "get_export", json!({ "export_id": export_id })).await;
        if page["export"]["status"] == "succeeded" {
            break page;
        }
        assert_eq!(page["export"]["status"], "running", "{page}");
        assert!(Instant::now() < deadline, "{page}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(done["export"]["done"], 2345);
    assert_eq!(done["export"]["fields"], json!(["id", "email"]));
    // Pages in order: the header once, every customer once.
    let mut text = String::new();
    let mut page = done;
    let mut pages = 1;
    loop {
        text.push_str(page["content"].as_str().unwrap());
        let Some(cursor) = page["next_cursor"].as_str() else {
            break;
        };
        page = call_ok(
            &admin,
            "get_export",
            json!({ "export_id": export_id, "cursor": cursor }),
        )
        .await;
        pages += 1;
    }
    assert_eq!(pages, 5, "500 customers a page");
    let records = parse_csv(&text);
    assert_eq!(records[0], vec!["id", "email"]);
    assert_eq!(records.len(), 2346);
    let mut ids: Vec<&str> = records[1..].iter().map(|r| r[0].as_str()).collect();
    let in_order = ids.windows(2).all(|w| w[0] < w[1]);
    ids.dedup();
    assert!(
        in_order && ids.len() == 2345,
        "each customer once, in id order"
    );
    let (whole, mime) = read_text(
        &admin,
        &format!("agentcrm://exports/{}", export_id.as_str().unwrap()),
    )
    .await;
    assert_eq!(mime, "text/csv");
    assert_eq!(whole, text, "the resource is the pages together");
    let bad = call(
        &admin,
        "get_export",
        json!({ "export_id": export_id, "cursor": "'; DROP TABLE tasks; --" }),
    )
    .await;
    assert_eq!(error_code(&bad), "invalid_request");
    // Exports expire after 7 days.
    sqlx::query("UPDATE tasks SET created_at = now() - interval '8 days' WHERE id = $1")
        .bind(uuid::Uuid::parse_str(export_id.as_str().unwrap()).unwrap())
        .execute(&mut conn)
        .await
        .unwrap();
    admin.cancel().await.unwrap();
    let again = stdio_client(db.command(&["stdio"]), Generation::Stateless).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let gone = call(&again, "get_export", json!({ "export_id": export_id })).await;
        if gone.is_error == Some(true) && error_code(&gone) == "not_found" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the expired export is still there"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let chunks: i64 = sqlx::query_scalar("SELECT count(*) FROM export_chunks")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(chunks, 0);
    again.cancel().await.unwrap();
}
