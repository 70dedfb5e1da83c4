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

/// 1. A step recorded as succeeded is not run again when its run resumes. A process killed
/// between writing a step's success and advancing its run left exactly this state (the two
/// were separate statements; they are one now): the resumed run logged the interaction twice.
#[tokio::test]
async fn a_resumed_workflow_does_not_repeat_a_step_that_succeeded() {
    use crate::workflows::{create_customer, statuses, wait_for_end, workflow};
    let db = TestDb::new().await;
    let admin = stdio_client(db.command(&["stdio"]), Generation::Stateless).await;
    let customer = create_customer(&admin, json!({ "first_name": "Ana" })).await;
    let steps = json!([
        { "id": "note", "tool": "log_interaction",
          "arguments": { "customer_id": customer, "type": "note", "notes": "once" } },
        { "id": "after", "tool": "list_interactions", "arguments": { "customer_id": customer } },
    ]);
    let id = workflow(&admin, "Once", steps, json!({})).await;
    let pool = PgPool::connect(&db.url).await.unwrap();
    // Step 0 ran and its interaction is in the database, its attempt says succeeded, but the
    // run still points at step 0 and its process is gone (the lease expired).
    let execution: uuid::Uuid = sqlx::query_scalar(
        "INSERT INTO workflow_executions (tenant_id, workflow_id, workflow_name, workflow_version,
             definition, status, source, started_by_kind, started_by_id, started_by_name, scopes,
             next_step, results, lease_owner, lease_until, started_at, chain)
         SELECT w.tenant_id, w.id, w.name, w.version,
                jsonb_build_object('steps', w.steps, 'variables', w.variables),
                'running', 'manual', 'user', u.id, u.name,
                ARRAY['interactions:read', 'interactions:write', 'customers:read'],
                0, '{}'::jsonb, gen_random_uuid(), now() - interval '1 minute', now(),
                jsonb_build_array(jsonb_build_object('kind', 'user', 'id', u.id, 'name', u.name,
                                                     'person', u.id))
         FROM workflows w JOIN users u ON u.tenant_id = w.tenant_id
         WHERE w.id = $1::uuid LIMIT 1 RETURNING id",
    )
    .bind(&id)
    .fetch_one(&pool)
    .await
    .unwrap();
    let logged = call_ok(
        &admin,
        "log_interaction",
        json!({ "customer_id": customer, "type": "note", "notes": "once" }),
    )
    .await;
    sqlx::query(
        "INSERT INTO workflow_step_runs (execution_id, step_index, step_id, tool, attempt, status,
             output, finished_at)
         VALUES ($1, 0, 'note', 'log_interaction', 1, 'succeeded', $2, now())",
    )
    .bind(execution)
    .bind(&logged)
    .execute(&pool)
    .await
    .unwrap();
    // Another process takes the run over.
    let other = stdio_client(db.command(&["stdio"]), Generation::Stateless).await;
    let done = wait_for_end(&admin, &execution.to_string()).await;
    assert_eq!(done["execution"]["status"], "succeeded", "{done}");
    let notes: i64 = sqlx::query_scalar("SELECT count(*) FROM interactions")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(notes, 1, "the interaction was logged once: {done}");
    assert_eq!(
        statuses(&done),
        [("note", "succeeded"), ("after", "succeeded")].map(|(a, b)| (a.to_owned(), b.to_owned())),
        "{done}"
    );
    other.cancel().await.unwrap();
    admin.cancel().await.unwrap();
}

/// 4. stdio: a call in flight when the client closes stdin finishes, with its audit record,
/// before the process exits (it exited with the call cut off and no record).
#[tokio::test]
async fn closing_stdin_mid_call_keeps_the_calls_audit_record() {
    use std::io::{Read, Write};
    let db = TestDb::new().await;
    // A receiver that takes four seconds to answer: the call is in flight when stdin closes.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/slow", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut stream = stream;
                let mut buffer = [0; 4096];
                let _ = stream.read(&mut buffer);
                std::thread::sleep(std::time::Duration::from_secs(8));
                let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
            });
        }
    });
    let mut child = db
        .command(&["stdio"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let messages = [
        initialize_request(1),
        json!({ "jsonrpc": "2.0", "method": "notifications/initialized" }),
        json!({ "jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {
            "name": "test_new_connection",
            "arguments": { "platform": "http", "config": { "url": url, "method": "POST" } } } }),
    ];
    for message in messages {
        writeln!(stdin, "{message}").unwrap();
    }
    stdin.flush().unwrap();
    // Let the call start, then hang up.
    std::thread::sleep(std::time::Duration::from_millis(500));
    drop(stdin);
    let status = wait_timeout(&mut child, std::time::Duration::from_secs(30))
        .expect("the process exits after its client hangs up");
    assert!(status.success(), "{status:?}");
    let pool = PgPool::connect(&db.url).await.unwrap();
    let recorded: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_events WHERE action = 'test_new_connection'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(recorded, 1, "the call in flight was recorded");
}

/// 3. A call whose audit record cannot be written does not answer success (it did, with an
/// injected failure on `audit_events`); other calls go on being recorded.
#[tokio::test]
async fn a_call_whose_audit_record_fails_does_not_report_success() {
    let db = TestDb::new().await;
    let pool = PgPool::connect(&db.url).await.unwrap();
    for statement in [
        "CREATE FUNCTION refuse_audit() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF NEW.action = 'list_customers' THEN RAISE EXCEPTION 'injected audit failure'; END IF;
             RETURN NEW;
         END $$",
        "CREATE TRIGGER refuse_audit BEFORE INSERT ON audit_events
         FOR EACH ROW EXECUTE FUNCTION refuse_audit()",
    ] {
        sqlx::query(statement).execute(&pool).await.unwrap();
    }
    let admin = stdio_client(db.command(&["stdio"]), Generation::Stateless).await;
    let listed = call(&admin, "list_customers", json!({})).await;
    assert_eq!(listed.is_error, Some(true), "{listed:?}");
    let text = serde_json::to_string(&listed.content).unwrap();
    assert!(text.contains("audit record could not be written"), "{text}");
    call_ok(&admin, "whoami", json!({})).await;
    admin.cancel().await.unwrap();
    let recorded: i64 =
        sqlx::query_scalar("SELECT count(*) FROM audit_events WHERE action = 'whoami'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(recorded, 1);
}

/// 8. stdio: 10,000 requests piped at once are answered with bounded memory: at most 64 run
/// at a time and reading waits for room (every request was taken at once: 360 MB here, 448 MB
/// in the report).
#[tokio::test]
async fn ten_thousand_piped_requests_are_answered_with_bounded_memory() {
    use std::io::{BufRead, Write};
    let db = TestDb::new().await;
    let mut child = db
        .command(&["stdio"])
        .env("RUST_LOG", "error")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let watching = {
        let peak = peak.clone();
        std::thread::spawn(move || {
            while let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
                let kb: u64 = status
                    .lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
                    .unwrap_or(0);
                peak.fetch_max(kb, std::sync::atomic::Ordering::SeqCst);
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        })
    };
    const N: usize = 10_000;
    let mut stdin = child.stdin.take().unwrap();
    let feeder = std::thread::spawn(move || {
        let mut text = String::new();
        text.push_str(&initialize_request(0).to_string());
        text.push('\n');
        text.push_str(
            &json!({ "jsonrpc": "2.0", "method": "notifications/initialized" }).to_string(),
        );
        text.push('\n');
        for i in 1..=N {
            text.push_str(
                &json!({ "jsonrpc": "2.0", "id": i, "method": "tools/call",
                "params": { "name": "whoami", "arguments": {} } })
                .to_string(),
            );
            text.push('\n');
        }
        stdin.write_all(text.as_bytes()).unwrap();
        stdin
    });
    let mut answers = 0;
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    while answers < N + 1 {
        let line = lines.next().expect("an answer").unwrap();
        let message: Value = serde_json::from_str(&line).unwrap();
        assert!(message.get("error").is_none(), "{message}");
        answers += 1;
    }
    drop(feeder.join().unwrap());
    let status = wait_timeout(&mut child, std::time::Duration::from_secs(60)).expect("exits");
    assert!(status.success());
    watching.join().unwrap();
    let peak_mb = peak.load(std::sync::atomic::Ordering::SeqCst) / 1024;
    eprintln!("10,000 piped requests: peak RSS {peak_mb} MB");
    assert!(peak_mb < 150, "peak RSS {peak_mb} MB");
}

/// Customers `c1` … `c<n>` of tenant acme, made in one statement.
async fn seed_customers(pool: &PgPool, n: i64) {
    sqlx::query(
        "INSERT INTO customers (tenant_id, first_name)
         SELECT t.id, 'c' || g FROM tenants t, generate_series(1, $1) g WHERE t.slug = 'acme'",
    )
    .bind(n)
    .execute(pool)
    .await
    .unwrap();
}

/// Locks the customers at `offsets` (in id order) until the transaction ends: a bulk batch
/// that reaches one waits there, so a test knows which batches are in flight.
async fn hold_rows(pool: &PgPool, offsets: &[i64]) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut tx = pool.begin().await.unwrap();
    for offset in offsets {
        // FOR UPDATE under OFFSET would lock every row skipped too.
        sqlx::query(
            "SELECT id FROM customers
             WHERE id = (SELECT id FROM customers ORDER BY id OFFSET $1 LIMIT 1) FOR UPDATE",
        )
        .bind(offset)
        .execute(&mut *tx)
        .await
        .unwrap();
    }
    tx
}

/// Polls `probe` every 100 ms until it holds; panics with `what` after `limit`.
async fn poll_until<F, Fut>(what: &str, limit: std::time::Duration, mut probe: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + limit;
    while !probe().await {
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not within {limit:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

async fn task_state(pool: &PgPool, id: uuid::Uuid) -> (String, i64) {
    sqlx::query_as("SELECT status, done FROM tasks WHERE id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Starts a bulk update of every customer on the server at `url` and returns its task, as
/// soon as it is stored (the call itself waits on, for its progress).
async fn start_bulk(pool: &PgPool, url: &str, key: &str) -> uuid::Uuid {
    let arguments = json!({ "filter": { "status": "lead" }, "set": { "add_tags": ["moved"] } });
    start_task(pool, url, key, "bulk_update_customers", arguments).await
}

/// Calls `tool` on the server at `url` and returns the task it stores, as soon as it is
/// stored (the answer does not matter: the server may be killed before it gives one).
async fn start_task(
    pool: &PgPool,
    url: &str,
    key: &str,
    tool: &'static str,
    arguments: Value,
) -> uuid::Uuid {
    let client = http_client(url, key, Generation::Stateless).await;
    tokio::spawn(async move {
        let Value::Object(arguments) = arguments else {
            return;
        };
        let _ = client
            .call_tool(rmcp::model::CallToolRequestParams::new(tool).with_arguments(arguments))
            .await;
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let found: Option<uuid::Uuid> = sqlx::query_scalar("SELECT id FROM tasks")
            .fetch_optional(pool)
            .await
            .unwrap();
        if let Some(task) = found {
            return task;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the task was not stored"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Every customer changed exactly once: tagged, one version up, one bulk event each.
async fn assert_each_changed_once(pool: &PgPool, n: i64) {
    let (tagged, twice): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE 'moved' = ANY(tags)), count(*) FILTER (WHERE version <> 2)
         FROM customers",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(
        (tagged, twice),
        (n, 0),
        "customers tagged, and changed other than once"
    );
    let (events, subjects): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT subject_id) FROM events
         WHERE type = 'customer.updated' AND payload->>'bulk' = 'true'",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!((events, subjects), (n, n), "one event per customer");
}

/// 2. A bulk task whose process is killed (kill -9) mid-run is finished by another replica
/// from its last committed batch: nothing lost, nothing applied twice. It stayed `running`
/// forever.
#[tokio::test]
async fn a_bulk_task_of_a_killed_process_is_finished_by_another_replica() {
    let db = TestDb::new().await;
    let pool = PgPool::connect(&db.url).await.unwrap();
    seed_customers(&pool, 5_000).await;
    let replica = || replica(&db);
    let mut first = replica();
    let _second = replica();
    // Batches 0 and 1 commit; 2 and 3 wait on these rows when the process dies.
    let held = hold_rows(&pool, &[2_500, 3_500]).await;
    let task = start_bulk(&pool, &first.mcp_url(), &db.admin_key).await;
    poll_until(
        "two batches committed",
        std::time::Duration::from_secs(30),
        || async { task_state(&pool, task).await.1 >= 2_000 },
    )
    .await;
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    let killed = std::time::Instant::now();
    held.rollback().await.unwrap();
    poll_until(
        "the task finished",
        std::time::Duration::from_secs(60),
        || async { task_state(&pool, task).await.0 != "running" },
    )
    .await;
    eprintln!(
        "bulk task finished {:?} after kill -9 (lease 2 s)",
        killed.elapsed()
    );
    assert_eq!(
        task_state(&pool, task).await,
        ("succeeded".to_owned(), 5_000)
    );
    let (result, resumed): (Value, i32) =
        sqlx::query_as("SELECT result, resumed FROM tasks WHERE id = $1")
            .bind(task)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(result, json!({ "updated": 5_000 }));
    assert_eq!(resumed, 1, "taken up once, by the other replica");
    assert_each_changed_once(&pool, 5_000).await;
}

/// A customer export whose process is killed (kill -9) mid-way is finished by another
/// replica after its last written chunk: every customer exactly once, in order.
#[tokio::test]
async fn an_export_of_a_killed_process_is_finished_by_another_replica() {
    let db = TestDb::new().await;
    let pool = PgPool::connect(&db.url).await.unwrap();
    seed_customers(&pool, 5_000).await;
    // Each chunk takes 100 ms to write: the export is still going when its process dies.
    sqlx::raw_sql(
        "CREATE FUNCTION slow_chunk() RETURNS trigger LANGUAGE plpgsql AS
             $$ BEGIN PERFORM pg_sleep(0.1); RETURN NEW; END $$;
         CREATE TRIGGER slow_chunk BEFORE INSERT ON export_chunks
             FOR EACH ROW EXECUTE FUNCTION slow_chunk();",
    )
    .execute(&pool)
    .await
    .unwrap();
    let replica = || replica(&db);
    let mut first = replica();
    let _second = replica();
    let task = start_task(
        &pool,
        &first.mcp_url(),
        &db.admin_key,
        "export_customers",
        json!({ "format": "jsonl", "wait_seconds": 0 }),
    )
    .await;
    poll_until(
        "three chunks written",
        std::time::Duration::from_secs(30),
        || async { task_state(&pool, task).await.1 >= 1_500 },
    )
    .await;
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    let killed = std::time::Instant::now();
    poll_until(
        "the export finished",
        std::time::Duration::from_secs(60),
        || async { task_state(&pool, task).await.0 != "running" },
    )
    .await;
    eprintln!(
        "export finished {:?} after kill -9 (lease 2 s)",
        killed.elapsed()
    );
    assert_eq!(
        task_state(&pool, task).await,
        ("succeeded".to_owned(), 5_000)
    );
    let resumed: i32 = sqlx::query_scalar("SELECT resumed FROM tasks WHERE id = $1")
        .bind(task)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(resumed, 1, "taken up once, by the other replica");
    let content: Vec<String> =
        sqlx::query_scalar("SELECT content FROM export_chunks WHERE task_id = $1 ORDER BY seq")
            .bind(task)
            .fetch_all(&pool)
            .await
            .unwrap();
    let ids: Vec<String> = content
        .concat()
        .lines()
        .map(|line| {
            serde_json::from_str::<Value>(line).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(ids.len(), 5_000, "every customer once");
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "in id order, none twice"
    );
}

/// An `agentcrm http` replica on `db` whose leases last 2 s (another takes its work up
/// soon after it dies).
fn replica(db: &TestDb) -> HttpServer {
    let mut command = db.server(&["http"]);
    command.env("AGENTCRM_WORKFLOW_LEASE_SECS", "2");
    HttpServer::start(command)
}

/// A receiver that answers after `delay`, and a channel that says when a request came in.
fn slow_receiver(delay: std::time::Duration) -> (String, std::sync::mpsc::Receiver<()>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/slow", listener.local_addr().unwrap());
    let (arrived, arrivals) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let arrived = arrived.clone();
            std::thread::spawn(move || {
                let mut stream = stream;
                let mut buffer = [0; 4096];
                let _ = stream.read(&mut buffer);
                let _ = arrived.send(());
                std::thread::sleep(delay);
                let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
            });
        }
    });
    (url, arrivals)
}

/// 9. SIGTERM drains: a call in flight finishes (with its audit record), a bulk batch in
/// flight commits and no further one starts, the task's lease is handed back (another
/// replica takes it up at once, not after the 30 s lease), and the pool is closed last.
#[tokio::test]
async fn sigterm_lets_work_in_flight_finish_and_hands_leases_back() {
    let db = TestDb::new().await;
    let pool = PgPool::connect(&db.url).await.unwrap();
    seed_customers(&pool, 4_000).await;
    let mut first = HttpServer::start(db.server(&["http"]));
    let held = hold_rows(&pool, &[1_500, 2_500]).await;
    let task = start_bulk(&pool, &first.mcp_url(), &db.admin_key).await;
    poll_until(
        "batch 0 committed",
        std::time::Duration::from_secs(30),
        || async { task_state(&pool, task).await.1 >= 1_000 },
    )
    .await;
    let (url, arrivals) = slow_receiver(std::time::Duration::from_secs(3));
    let client = http_client(&first.mcp_url(), &db.admin_key, Generation::Sessions).await;
    let slow = tokio::spawn(async move {
        let result = call(
            &client,
            "test_new_connection",
            json!({ "platform": "http", "config": { "url": url, "method": "POST" } }),
        )
        .await;
        let _ = client.cancel().await;
        result
    });
    tokio::task::spawn_blocking(move || arrivals.recv_timeout(std::time::Duration::from_secs(30)))
        .await
        .unwrap()
        .expect("the slow call reached its receiver");
    // SAFETY: signalling a child we have not reaped.
    unsafe { libc::kill(first.child.id() as libc::pid_t, libc::SIGTERM) };
    held.rollback().await.unwrap();
    let answered = tokio::time::timeout(std::time::Duration::from_secs(40), slow)
        .await
        .unwrap_or_else(|_| panic!("no answer: {}", first.log.lock().unwrap().join("\n")))
        .unwrap();
    assert_ne!(
        answered.is_error,
        Some(true),
        "the call in flight finished: {answered:?}"
    );
    let status = wait_timeout(&mut first.child, std::time::Duration::from_secs(40))
        .expect("the process exits after draining");
    assert!(status.success(), "{status:?}");
    let log = first.log.lock().unwrap().join("\n");
    assert!(!log.contains("closed pool"), "{log}");
    let (status, done, owner): (String, i64, Option<uuid::Uuid>) =
        sqlx::query_as("SELECT status, done, lease_owner FROM tasks WHERE id = $1")
            .bind(task)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(
        (status.as_str(), done, owner),
        ("running", 3_000, None),
        "batches in flight committed, none started after the signal, the lease handed back"
    );
    let recorded: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_events WHERE action = 'test_new_connection' AND outcome = 'ok'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(recorded, 1);
    let second = HttpServer::start(db.server(&["http"]));
    let taken = std::time::Instant::now();
    poll_until(
        "the other replica finished the task before the lease would expire",
        std::time::Duration::from_secs(15),
        || async { task_state(&pool, task).await.0 == "succeeded" },
    )
    .await;
    eprintln!(
        "handed-back task finished {:?} after the next replica started",
        taken.elapsed()
    );
    assert_each_changed_once(&pool, 4_000).await;
    drop(second);
}

/// 5. A process whose pool is starved by tool calls still renews its leases (on connections
/// of their own): its workflow execution is not taken by another replica and its step runs
/// once. A replica that could not renew lost the run, and the step ran twice.
#[tokio::test]
async fn a_starved_pool_keeps_its_leases() {
    use crate::workflows::{create_customer, workflow};
    let db = TestDb::new().await;
    let pool = PgPool::connect(&db.url).await.unwrap();
    let replica = || replica(&db);
    let first = replica();
    let _second = replica();
    let admin = http_client(&first.mcp_url(), &db.admin_key, Generation::Sessions).await;
    let customer = create_customer(&admin, json!({ "first_name": "Locked" })).await;
    let steps = json!([
        { "id": "note", "tool": "log_interaction",
          "arguments": { "customer_id": customer, "type": "note", "notes": "step" } },
    ]);
    let id = workflow(&admin, "Starved", steps, json!({})).await;
    // The customer is locked: the step and 24 client calls wait on it, holding every one of
    // the pool's connections for six leases (calls past them time out waiting for one).
    let mut held = pool.begin().await.unwrap();
    sqlx::query("SELECT id FROM customers WHERE id = $1::uuid FOR UPDATE")
        .bind(&customer)
        .execute(&mut *held)
        .await
        .unwrap();
    let started = call_ok(
        &admin,
        "execute_workflow",
        json!({ "workflow_id": id, "wait_seconds": 0 }),
    )
    .await;
    let execution = started["execution"]["id"].as_str().unwrap().to_owned();
    let mut callers = Vec::new();
    for n in 0..24 {
        let url = first.mcp_url();
        let key = db.admin_key.clone();
        let customer = customer.clone();
        callers.push(tokio::spawn(async move {
            let client = http_client(&url, &key, Generation::Stateless).await;
            let result = call(
                &client,
                "log_interaction",
                json!({ "customer_id": customer, "type": "note", "notes": format!("call {n}") }),
            )
            .await;
            let _ = client.cancel().await;
            result
        }));
    }
    poll_until(
        "the pool is starved",
        std::time::Duration::from_secs(30),
        || async {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()
             AND wait_event_type = 'Lock'",
            )
            .fetch_one(&pool)
            .await
            .unwrap();
            waiting >= 8
        },
    )
    .await;
    tokio::time::sleep(std::time::Duration::from_secs(12)).await;
    held.rollback().await.unwrap();
    let mut starved = 0;
    for caller in callers {
        let result = caller.await.unwrap();
        if result.is_error == Some(true) {
            assert_eq!(error_code(&result), "internal", "{result:?}");
            starved += 1;
        }
    }
    eprintln!("{starved} of 24 calls timed out waiting for a connection");
    assert!(starved > 0, "the pool was starved");
    let ended = crate::workflows::wait_for_end(&admin, &execution).await;
    assert_eq!(ended["execution"]["status"], "succeeded", "{ended}");
    let attempts: Vec<(String,)> = sqlx::query_as(
        "SELECT status FROM workflow_step_runs WHERE execution_id = $1::uuid ORDER BY id",
    )
    .bind(&execution)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        attempts,
        vec![("succeeded".to_owned(),)],
        "the step ran once, on its own replica"
    );
    let notes: Vec<(String, i64)> = sqlx::query_as(
        "SELECT notes, count(*) FROM interactions WHERE notes = 'step' GROUP BY notes",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(notes, vec![("step".to_owned(), 1)]);
}

/// 200 while the session lives, 404 once it is closed.
async fn ping(http: &reqwest::Client, url: &str, key: &str, session: &str) -> u16 {
    let ping = json!({ "jsonrpc": "2.0", "id": 9, "method": "ping" });
    raw_post(http, url, key, Some(session), ping)
        .await
        .status()
        .as_u16()
}

/// 7. A session whose client only listens on its SSE stream (waiting on a subscription)
/// outlives the idle timeout; one with neither stream nor requests does not; and a
/// principal's sessions are capped, its oldest idle one closed first (sessions expired
/// after 5 minutes without a POST, stream or not, and were not capped).
#[tokio::test]
async fn an_open_stream_keeps_its_session_and_sessions_are_capped() {
    let db = TestDb::new().await;
    let mut command = db.command(&["http"]);
    command
        .env("AGENTCRM_SESSION_IDLE_SECS", "2")
        .env("AGENTCRM_MAX_SESSIONS_PER_PRINCIPAL", "3");
    let server = HttpServer::start(command);
    let url = server.mcp_url();
    let key = db.admin_key.as_str();
    let http = reqwest::Client::new();
    let listening = raw_session(&http, &url, key).await;
    let stream = http
        .get(&url)
        .header("X-Api-Key", key)
        .header("Accept", "text/event-stream")
        .header("Mcp-Session-Id", &listening)
        .header("MCP-Protocol-Version", "2025-11-25")
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status().as_u16(), 200);
    let silent = raw_session(&http, &url, key).await;
    // Well past the idle timeout (2 s), with no request in either session (a request would
    // count as use, so this waits rather than polls).
    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    assert_eq!(
        ping(&http, &url, key, &silent).await,
        404,
        "the silent session is closed"
    );
    assert_eq!(
        ping(&http, &url, key, &listening).await,
        200,
        "the listening session lives"
    );
    // Three more: over the cap of 3, the oldest idle ones go, never the listening one.
    let mut opened = Vec::new();
    for _ in 0..4 {
        opened.push(raw_session(&http, &url, key).await);
    }
    let alive = [
        ping(&http, &url, key, &listening).await,
        ping(&http, &url, key, &opened[0]).await,
        ping(&http, &url, key, &opened[1]).await,
        ping(&http, &url, key, &opened[2]).await,
        ping(&http, &url, key, &opened[3]).await,
    ];
    assert_eq!(alive, [200, 404, 404, 200, 200]);
    // The stream ends: the session is idle from then on, and goes.
    drop(stream);
    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    assert_eq!(
        ping(&http, &url, key, &listening).await,
        404,
        "closed once its stream ended"
    );
}

/// 6. PostgreSQL stopped under calls: once the outage is seen, calls and authentication
/// are refused at once with `retry_after` and a text that says the database is unavailable
/// (each waited for the pool's 10 s, then said it "could not check credentials"); when the
/// server is back, calls succeed at once, and the process logs how many it refused.
#[tokio::test]
async fn a_database_outage_is_answered_at_once_and_recovered_from() {
    let dir = std::path::PathBuf::from(format!(
        "/tmp/acrm-outage-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    ));
    let start_pg = |dir: std::path::PathBuf| async move {
        tokio::task::spawn_blocking(move || agentcrm::store::EmbeddedPostgres::start(&dir))
            .await
            .unwrap()
            .expect("a private PostgreSQL")
    };
    let pg = start_pg(dir.clone()).await;
    let db = TestDb::at(format!(
        "postgres://agentcrm@localhost/agentcrm?host={}/run",
        dir.display()
    ));
    let server = HttpServer::start(db.command(&["http"]));
    let url = server.mcp_url();
    let http = reqwest::Client::new();
    let key = db.admin_key.as_str();
    let session = raw_session(&http, &url, key).await;
    let whoami = json!({ "jsonrpc": "2.0", "id": 3, "method": "tools/call",
                         "params": { "name": "whoami", "arguments": {} } });
    let answer = raw_post(&http, &url, key, Some(&session), whoami.clone()).await;
    assert_ne!(
        crate::http::read_message(answer).await["result"]["isError"],
        json!(true)
    );

    tokio::task::spawn_blocking(move || drop(pg)).await.unwrap();
    let stopped = std::time::Instant::now();
    poll_until(
        "the outage is seen",
        std::time::Duration::from_secs(15),
        || async {
            raw_post(&http, &url, key, Some(&session), whoami.clone())
                .await
                .status()
                == 503
        },
    )
    .await;
    eprintln!(
        "outage seen {:?} after PostgreSQL stopped",
        stopped.elapsed()
    );
    for _ in 0..20 {
        let asked = std::time::Instant::now();
        let refused = raw_post(&http, &url, key, Some(&session), whoami.clone()).await;
        assert!(
            asked.elapsed() < std::time::Duration::from_secs(1),
            "{:?}",
            asked.elapsed()
        );
        assert_eq!(refused.status(), 503);
        assert_eq!(refused.headers()["retry-after"], "2");
        let body: Value = refused.json().await.unwrap();
        assert_eq!(body["retry_after"], 2, "{body}");
        assert!(
            body["error_description"]
                .as_str()
                .unwrap()
                .contains("database is unavailable"),
            "{body}"
        );
    }

    let pg = start_pg(dir.clone()).await;
    let back = std::time::Instant::now();
    poll_until(
        "calls succeed again",
        std::time::Duration::from_secs(10),
        || async {
            let answer = raw_post(&http, &url, key, Some(&session), whoami.clone()).await;
            answer.status() == 200
                && crate::http::read_message(answer).await["result"]["isError"] != json!(true)
        },
    )
    .await;
    eprintln!(
        "calls succeed {:?} after PostgreSQL is back",
        back.elapsed()
    );
    assert!(
        back.elapsed() < std::time::Duration::from_secs(3),
        "{:?}",
        back.elapsed()
    );
    let log = server.log.lock().unwrap().join("\n");
    assert!(log.contains("the database is reachable again"), "{log}");
    drop(server);
    tokio::task::spawn_blocking(move || drop(pg)).await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// 1. kill -9 mid-workflow with two replicas: 20 runs of 12 `log_interaction` steps, the
/// process running them killed while they run. The other replica resumes them: a step's
/// writes and its mark commit together, so a step that took effect is not repeated and one
/// that did not is run again. Every run succeeds with each interaction written once (31
/// duplicates inside runs reported `succeeded`; then runs failed at steps that had taken
/// effect).
#[tokio::test]
async fn workflows_of_a_killed_process_resume_without_repeating_a_step() {
    use crate::workflows::{create_customer, workflow};
    let db = TestDb::new().await;
    let pool = PgPool::connect(&db.url).await.unwrap();
    let replica = || replica(&db);
    let mut first = replica();
    let _second = replica();
    let admin = http_client(&first.mcp_url(), &db.admin_key, Generation::Sessions).await;
    let customer = create_customer(&admin, json!({ "first_name": "Many" })).await;
    let steps: Vec<Value> = (0..12)
        .map(|n| {
            json!({ "id": format!("s{n}"), "tool": "log_interaction",
                    "arguments": { "customer_id": customer, "type": "note",
                                   "notes": format!("{{{{input.run}}}}-{n}") } })
        })
        .collect();
    let id = workflow(&admin, "Twelve", json!(steps), json!({})).await;
    // A slow audit write widens what happens between a step's tool committing and the step
    // being recorded, where a kill repeated the step; with both in one transaction, it
    // only slows the step down.
    for statement in [
        "CREATE FUNCTION slow_audit() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF NEW.action = 'log_interaction' THEN PERFORM pg_sleep(0.03); END IF;
             RETURN NEW;
         END $$",
        "CREATE TRIGGER slow_audit BEFORE INSERT ON audit_events
         FOR EACH ROW EXECUTE FUNCTION slow_audit()",
    ] {
        sqlx::query(statement).execute(&pool).await.unwrap();
    }
    let mut executions = Vec::new();
    for run in 0..20 {
        let started = call_ok(
            &admin,
            "execute_workflow",
            json!({ "workflow_id": id, "wait_seconds": 0, "input_data": { "run": run } }),
        )
        .await;
        executions.push(started["execution"]["id"].as_str().unwrap().to_owned());
    }
    poll_until(
        "runs are under way",
        std::time::Duration::from_secs(30),
        || async {
            let logged: i64 = sqlx::query_scalar("SELECT count(*) FROM interactions")
                .fetch_one(&pool)
                .await
                .unwrap();
            logged >= 60
        },
    )
    .await;
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    let killed = std::time::Instant::now();
    poll_until(
        "every run ended",
        std::time::Duration::from_secs(90),
        || async {
            let running: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM workflow_executions WHERE status IN ('queued', 'running')",
            )
            .fetch_one(&pool)
            .await
            .unwrap();
            running == 0
        },
    )
    .await;
    let duplicated: Vec<(String, i64)> = sqlx::query_as(
        "SELECT notes, count(*) FROM interactions WHERE notes LIKE '%-%'
         GROUP BY notes HAVING count(*) > 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        duplicated,
        vec![],
        "no step's interaction was written twice"
    );
    let ended: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT e.status, count(*) OVER (PARTITION BY e.status),
                (SELECT count(*) FROM interactions i
                 WHERE i.notes LIKE (e.input->>'run') || '-%')
         FROM workflow_executions e",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    // A step whose writes committed is not run again; one whose writes did not is run
    // again, since `log_interaction` commits only with its mark: every run succeeds.
    let failed: Vec<(String, Option<String>)> = sqlx::query_as(
        "SELECT input->>'run', error FROM workflow_executions WHERE status <> 'succeeded'",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(failed, vec![], "every run resumed to success");
    let succeeded = ended.iter().filter(|(s, _, _)| s == "succeeded").count();
    for (status, _, logged) in &ended {
        if status == "succeeded" {
            assert_eq!(*logged, 12, "a succeeded run logged each step once");
        }
    }
    assert_eq!(succeeded, 20);
    let (interrupted, committed): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE status = 'interrupted'),
                count(*) FILTER (WHERE status = 'succeeded' AND error IS NOT NULL)
         FROM workflow_step_runs",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    eprintln!(
        "20 of 20 runs resumed to success {:?} after kill -9: {interrupted} steps ran again \
         (their writes had not committed), {committed} were found done (they had)",
        killed.elapsed()
    );
}

/// 3. A call's writes and its audit record commit together: when the record is refused,
/// the call's writes are rolled back and it answers an error; when it is written, it is
/// written once. (The interaction was kept with no record, or reported done.)
#[tokio::test]
async fn a_write_and_its_audit_record_commit_together() {
    use crate::workflows::create_customer;
    let db = TestDb::new().await;
    let pool = PgPool::connect(&db.url).await.unwrap();
    let admin = stdio_client(db.command(&["stdio"]), Generation::Stateless).await;
    let customer = create_customer(&admin, json!({ "first_name": "Ana" })).await;
    let note = |notes: &str| json!({ "customer_id": customer, "type": "note", "notes": notes });
    call_ok(&admin, "log_interaction", note("kept")).await;
    for statement in [
        "CREATE FUNCTION refuse_audit() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF NEW.action IN ('log_interaction', 'create_product') THEN
                 RAISE EXCEPTION 'injected audit failure';
             END IF;
             RETURN NEW;
         END $$",
        "CREATE TRIGGER refuse_audit BEFORE INSERT ON audit_events
         FOR EACH ROW EXECUTE FUNCTION refuse_audit()",
    ] {
        sqlx::query(statement).execute(&pool).await.unwrap();
    }
    let refused = call(&admin, "log_interaction", note("lost")).await;
    assert_eq!(error_code(&refused), "internal", "{refused:?}");
    // A tool that writes one statement commits it with its record too.
    let product = json!({ "name": "Widget", "unit_price": 100, "currency": "EUR" });
    let refused = call(&admin, "create_product", product).await;
    assert_eq!(error_code(&refused), "internal", "{refused:?}");
    admin.cancel().await.unwrap();
    let products: i64 = sqlx::query_scalar("SELECT count(*) FROM products")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(products, 0, "the refused product was not created");
    let notes: Vec<(String,)> =
        sqlx::query_as("SELECT notes FROM interactions ORDER BY occurred_at")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        notes,
        vec![("kept".to_owned(),)],
        "the refused call changed nothing"
    );
    let recorded: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_events WHERE action = 'log_interaction' AND outcome = 'ok'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(recorded, 1, "the kept call has one record");
}
