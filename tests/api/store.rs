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

/// The audit trail's group commit: many concurrent records all land, each caller learns
/// its own fate, and callers cancelled while writing or waiting (a dropped call) neither
/// lose the others' records nor leave the next caller waiting forever.
#[tokio::test]
async fn audit_records_commit_together_and_survive_cancelled_callers() {
    use agentcrm::access::audit::{AuditEvent, AuditLog};
    use std::time::Duration;
    let db = TestDb::new().await;
    let pool = migrated_pool(&db).await;
    let log = AuditLog::start(pool.clone());
    let event = |n: usize| {
        let mut event = AuditEvent::anonymous("auth", format!("group-{n}"), "refused");
        event.request_id = Some(format!("r{n}"));
        event
    };
    // 300 at once: every record is confirmed, and is there.
    let calls: Vec<_> = (0..300)
        .map(|n| {
            let log = log.clone();
            let event = event(n);
            tokio::spawn(async move { log.record(event).await })
        })
        .collect();
    for call in calls {
        assert!(
            call.await.unwrap(),
            "each caller learns its record is durable"
        );
    }
    let stored: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT action) FROM audit_events WHERE action LIKE 'group-%'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(stored, 300);

    // Callers cancelled at every point: whoever was cut off, later records still go through.
    for round in 0..20 {
        let calls: Vec<_> = (0..40)
            .map(|n| {
                let log = log.clone();
                let event = event(1000 + round * 40 + n);
                tokio::spawn(async move {
                    let cut = Duration::from_micros((n as u64 * 37) % 400);
                    tokio::time::timeout(cut, log.record(event)).await
                })
            })
            .collect();
        for call in calls {
            let _ = call.await.unwrap();
        }
        let after = tokio::time::timeout(Duration::from_secs(5), log.record(event(9000 + round)))
            .await
            .expect("a record after cancelled ones is not stuck behind them");
        assert!(after);
    }
}

/// The audit writer keeps its connection between batches. When that connection dies (a
/// killed backend, a restarted server), records still commit: the next write finds out,
/// whether it uses the connection at once or checks it first after a pause, and takes a
/// fresh one.
#[tokio::test]
async fn records_commit_after_the_audit_writers_connection_dies() {
    use agentcrm::access::audit::{AuditEvent, AuditLog};
    use sqlx::postgres::PgConnectOptions;
    use std::str::FromStr;
    use std::time::{Duration, Instant};
    let db = TestDb::new().await;
    let pool = migrated_pool(&db).await;
    let options = PgConnectOptions::from_str(&db.url)
        .unwrap()
        .application_name("audit-under-test");
    let log = AuditLog::start(
        PgPoolOptions::new()
            .max_connections(2)
            .connect_with(options)
            .await
            .unwrap(),
    );
    async fn backends(pool: &sqlx::PgPool) -> Vec<i32> {
        sqlx::query_scalar(
            "SELECT pid FROM pg_stat_activity WHERE application_name = 'audit-under-test'",
        )
        .fetch_all(pool)
        .await
        .unwrap()
    }
    async fn kill(pool: &sqlx::PgPool) {
        let pids = backends(pool).await;
        for pid in &pids {
            sqlx::query("SELECT pg_terminate_backend($1)")
                .bind(pid)
                .execute(pool)
                .await
                .unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while backends(pool).await.iter().any(|p| pids.contains(p)) {
            assert!(Instant::now() < deadline, "the backends did not end");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let event = |n: u32| AuditEvent::anonymous("auth", format!("kept-{n}"), "refused");

    assert!(log.record(event(1)).await);
    assert!(log.record(event(2)).await);
    assert_eq!(
        backends(&pool).await.len(),
        1,
        "one connection, kept between writes"
    );

    // Killed, and used again at once: the write fails, and is made again on a fresh one.
    kill(&pool).await;
    assert!(log.record(event(3)).await);
    // Killed, and used after a pause: checked first, and replaced.
    kill(&pool).await;
    tokio::time::sleep(agentcrm::store::CHECK_IDLE_AFTER + Duration::from_millis(200)).await;
    assert!(log.record(event(4)).await);

    let stored: Vec<String> = sqlx::query_scalar(
        "SELECT action FROM audit_events WHERE action LIKE 'kept-%' ORDER BY id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(stored, ["kept-1", "kept-2", "kept-3", "kept-4"]);
    assert_eq!(backends(&pool).await.len(), 1);
}
