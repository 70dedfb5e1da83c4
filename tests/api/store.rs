//! Store queries against a real database of their own.

use agentcrm::store::tenants;
use sqlx::postgres::PgPoolOptions;

use crate::helpers::{TestDb, agentcrm, run_ok};

async fn migrated_pool(db: &TestDb) -> sqlx::PgPool {
    run_ok(agentcrm(&["migrate"]).env("DATABASE_URL", &db.url));
    PgPoolOptions::new()
        .max_connections(2)
        .connect(&db.url)
        .await
        .unwrap()
}

#[tokio::test]
async fn tenants_are_created_once_and_found_by_id() {
    let db = TestDb::new().await;
    let pool = migrated_pool(&db).await;

    let first = tenants::ensure(&pool, "acme", "Acme Ltd").await.unwrap();
    let again = tenants::ensure(&pool, "acme", "Another name")
        .await
        .unwrap();
    assert_eq!(first.id, again.id);
    assert_eq!(
        again.name, "Acme Ltd",
        "ensure never renames an existing tenant"
    );

    let found = tenants::get(&pool, first.id).await.unwrap().expect("found");
    assert_eq!(found.slug, "acme");
    assert!(
        tenants::get(&pool, uuid::Uuid::new_v4())
            .await
            .unwrap()
            .is_none()
    );

    // SQL-looking input is data, and the schema refuses slugs outside its pattern.
    let refused = tenants::ensure(&pool, "x'; DROP TABLE tenants; --", "Evil").await;
    assert!(refused.is_err());
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM tenants")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(count, 1);
}
