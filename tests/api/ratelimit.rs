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
    // Another process's counts arrive within the sync interval.
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    for _ in 0..3 {
        call_ok(&b, "check_permission", json!({ "scope": "search" })).await;
    }
    let refused = call(&b, "check_permission", json!({ "scope": "search" })).await;
    assert_eq!(refused.is_error, Some(true));
    let body = refused.structured_content.unwrap();
    assert_eq!(body["error"], "rate_limited", "{body}");
    let retry = body["retry_after"].as_u64().expect("retry_after");
    assert!(retry > 0 && retry <= 3600, "{body}");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("at most 6 calls"),
        "{body}"
    );
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
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
