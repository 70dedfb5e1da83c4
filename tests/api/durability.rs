//! Issue 19: what survives faults and floods. Each test failed on the main before its fix.

use serde_json::{Value, json};
use sqlx::PgPool;

use crate::helpers::*;

/// 8 (part). A huge argument is kept in the audit trail as a marker with its size and keys,
/// not whole on every call (a 5 MB line was stored whole).
#[tokio::test]
async fn a_huge_argument_is_not_stored_whole_in_the_audit_trail() {
    let db = TestDb::new().await;
    let admin = stdio_client(db.command(&["stdio"]), Generation::Stateless).await;
    let huge = "x".repeat(5 * 1024 * 1024);
    let refused = call(&admin, "search", json!({ "query": huge, "limit": 5 })).await;
    assert_eq!(
        error_code(&refused),
        "invalid_request",
        "{:?}",
        refused.content
    );
    // A normal call keeps its arguments whole.
    call_ok(&admin, "search", json!({ "query": "ada" })).await;
    admin.cancel().await.unwrap();
    let pool = PgPool::connect(&db.url).await.unwrap();
    let rows: Vec<(Value, i32)> = sqlx::query_as(
        "SELECT arguments, pg_column_size(arguments) FROM audit_events
         WHERE action = 'search' ORDER BY at",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    let (marker, size) = &rows[0];
    assert!(*size < 70_000, "stored {size} bytes");
    assert_eq!(marker["truncated"], true, "{marker}");
    assert!(marker["bytes"].as_u64().unwrap() > 5_000_000, "{marker}");
    assert_eq!(marker["keys"], json!(["limit", "query"]));
    assert_eq!(rows[1].0, json!({ "query": "ada" }));
}
