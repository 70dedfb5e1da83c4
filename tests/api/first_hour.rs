//! Issue 20: what a new user met in their first hour, and the small features they missed.

use serde_json::{Value, json};

use crate::helpers::*;

/// `whoami` says who the person is: email and display name, for a person's key; none for
/// an agent.
#[tokio::test]
async fn whoami_names_the_person_behind_the_caller() {
    let db = TestDb::new().await;
    let admin = stdio_client(db.command(&["stdio"]), Generation::Stateless).await;
    let me = call_ok(&admin, "whoami", json!({})).await;
    assert_eq!(me["person"]["email"], "owner@acme.test", "{me}");
    assert_eq!(me["person"]["name"], "Owner", "{me}");
    assert_eq!(me["principal"]["kind"], "api_key");
    let agent = db.admin(&["create-agent", "--tenant", "acme", "--name", "helper"]);
    let agent = agent_client(&db, &agent).await;
    let it = call_ok(&agent, "whoami", json!({})).await;
    assert_eq!(it["person"], Value::Null, "{it}");
}

/// A customer is someone (a name or an email), and an email has the shape of one; the
/// error names the field. (`{}` and `"not an email"` were stored.)
#[tokio::test]
async fn a_new_customer_needs_a_name_or_a_well_formed_email() {
    let db = TestDb::new().await;
    let admin = stdio_client(db.command(&["stdio"]), Generation::Stateless).await;
    for (fields, names) in [
        (json!({}), "first_name"),
        (json!({ "first_name": "  " }), "first_name"),
        (json!({ "email": "not an email" }), "email"),
        (json!({ "first_name": "Ana", "email": "ana@" }), "email"),
        (json!({ "first_name": "x".repeat(201) }), "first_name"),
    ] {
        let refused = call(&admin, "create_customer", fields.clone()).await;
        assert_eq!(error_code(&refused), "invalid_request", "{fields}");
        let text = refused.structured_content.unwrap()["error_description"].to_string();
        assert!(text.contains(names), "{fields}: {text}");
    }
    let listed = call_ok(&admin, "list_customers", json!({})).await;
    assert_eq!(listed["total"], 0, "nothing was stored");
    call_ok(
        &admin,
        "create_customer",
        json!({ "email": "ana@example.com" }),
    )
    .await;
    call_ok(
        &admin,
        "create_customer",
        json!({ "last_name": "Lovelace" }),
    )
    .await;
    // The lengths are in the schema a client reads.
    let schema: Value =
        serde_json::from_str(include_str!("../../schemas/create_customer.json")).unwrap();
    assert_eq!(
        schema["input"]["properties"]["email"]["maxLength"], 320,
        "{schema}"
    );
}

/// `set-rate-limit` takes the window as `--per` and defaults it to the class's own (a search
/// limit kept the 3,600 s window of calls), and says what it did in plain words.
#[tokio::test]
async fn set_rate_limit_defaults_the_window_to_the_class() {
    let db = TestDb::new().await;
    let set = db.admin(&[
        "set-rate-limit",
        "--tenant",
        "acme",
        "--class",
        "search",
        "--max",
        "50",
    ]);
    assert_eq!(set["limit"], json!({ "max": 50, "window_seconds": 60 }));
    let text = run_ok(
        agentcrm(&[
            "admin",
            "set-rate-limit",
            "--tenant",
            "acme",
            "--class",
            "calls",
            "--max",
            "500",
            "--per",
            "60",
        ])
        .env("DATABASE_URL", &db.url),
    );
    assert_eq!(
        text.trim(),
        "tenant acme: at most 500 calls per 60 s in class `calls`"
    );
}

/// Closing an HTTP session answers 204 (clients log a failure on rmcp's 202), and a
/// session's log is quiet by default (rmcp logged six INFO lines per session, and every
/// command a PostgreSQL notice about the migration table).
#[tokio::test]
async fn closing_a_session_answers_204_and_the_log_stays_quiet() {
    let db = TestDb::new().await;
    let mut command = db.command(&["http"]);
    command.env_remove("RUST_LOG"); // the default filter
    let server = HttpServer::start(command);
    let url = server.mcp_url();
    let http = reqwest::Client::new();
    let init = http
        .post(&url)
        .header("X-Api-Key", &db.admin_key)
        .header("Accept", "application/json, text/event-stream")
        .header("MCP-Protocol-Version", "2025-11-25")
        .json(&initialize_request(1))
        .send()
        .await
        .unwrap();
    let session = init.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let _ = crate::http::read_message(init).await;
    let closed = http
        .delete(&url)
        .header("X-Api-Key", &db.admin_key)
        .header("Mcp-Session-Id", &session)
        .header("MCP-Protocol-Version", "2025-11-25")
        .send()
        .await
        .unwrap();
    assert_eq!(closed.status().as_u16(), 204);
    let log = server.log.lock().unwrap().join("\n");
    assert!(!log.contains("rmcp"), "{log}");
    assert!(!log.contains("_sqlx_migrations"), "{log}");
}

/// `--listen` takes a port alone or a host name with its port (`localhost:PORT` and `PORT`
/// were refused as not socket addresses), and a bad one is answered with the forms it takes.
#[tokio::test]
async fn listen_takes_a_port_or_a_host_name() {
    let db = TestDb::new().await;
    for listen in ["localhost:0", "0"] {
        let (mut child, log) = started(db.command(&["http", "--listen", listen]));
        assert!(log.contains("listening on http://127.0.0.1:"), "{log}");
        terminate(&mut child);
    }
    let refused = start_failure(&mut db.command(&["http", "--listen", "nope"]));
    assert!(
        refused.contains("give PORT, HOST:PORT or NAME:PORT"),
        "{refused}"
    );
}

/// A wrong type names the argument and what it takes (a date was refused with only "input
/// contains invalid characters").
#[tokio::test]
async fn type_errors_name_the_argument() {
    let db = TestDb::new().await;
    let admin = stdio_client(db.command(&["stdio"]), Generation::Stateless).await;
    for (arguments, says) in [
        (
            json!({ "created_after": "yesterday" }),
            ["`created_after`", "RFC 3339"],
        ),
        (json!({ "limit": "ten" }), ["`limit`", "invalid type"]),
    ] {
        let refused = call(&admin, "list_customers", arguments.clone()).await;
        assert_eq!(error_code(&refused), "invalid_request");
        let text = refused.structured_content.unwrap()["error_description"].to_string();
        for said in says {
            assert!(text.contains(said), "{arguments}: {text}");
        }
    }
}

/// Starts `command` and returns it with its log up to the line that says where it listens.
fn started(mut command: std::process::Command) -> (std::process::Child, String) {
    use std::io::BufRead;
    let mut child = command
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut log = String::new();
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            log.push_str(&line);
            log.push('\n');
            if line.contains("listening on http://") {
                let _ = tx.send(std::mem::take(&mut log));
            }
        }
    });
    let log = rx
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("the server started");
    (child, log)
}

/// Serving beyond loopback: the host of `--public-url` is accepted (it was refused with a
/// bare 403), and listening on every interface without it warns and says what to set.
#[tokio::test]
async fn the_public_url_host_is_accepted_and_a_wildcard_listen_warns() {
    let db = TestDb::new().await;
    let (mut child, log) = started(db.command(&["http", "--listen", "0.0.0.0:0"]));
    assert!(log.contains("without --public-url"), "{log}");
    assert!(log.contains("AGENTCRM_PUBLIC_URL"), "{log}");
    terminate(&mut child);
    let mut command = db.command(&["http", "--public-url", "https://crm.example.test"]);
    command.env("AGENTCRM_ALLOWED_HOSTS", "");
    let server = HttpServer::start(command);
    let post = |host: &'static str| {
        reqwest::Client::new()
            .post(server.mcp_url())
            .header("Host", host)
            .header("X-Api-Key", &db.admin_key)
            .header("Accept", "application/json, text/event-stream")
            .header("MCP-Protocol-Version", "2025-11-25")
            .json(&initialize_request(1))
            .send()
    };
    assert_eq!(
        post("crm.example.test").await.unwrap().status().as_u16(),
        200
    );
    assert_eq!(post("elsewhere.test").await.unwrap().status().as_u16(), 403);
}

/// `search` trims customer hits to the `fields` asked for (SPEC §2), and refuses a field
/// that does not exist, naming the known ones.
#[tokio::test]
async fn search_returns_only_the_fields_asked_for() {
    let db = TestDb::new().await;
    let admin = stdio_client(db.command(&["stdio"]), Generation::Stateless).await;
    call_ok(
        &admin,
        "create_customer",
        json!({ "first_name": "Grace", "email": "grace@example.com", "company": "Navy" }),
    )
    .await;
    let found = call_ok(
        &admin,
        "search",
        json!({ "query": "grace", "types": ["customer"], "fields": ["email"] }),
    )
    .await;
    let customer = &found["results"][0]["customer"];
    let mut keys: Vec<&str> = customer
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort();
    assert_eq!(keys, ["email", "id"], "{found}");
    let refused = call(
        &admin,
        "search",
        json!({ "query": "grace", "fields": ["salary"] }),
    )
    .await;
    assert_eq!(error_code(&refused), "invalid_request");
}

/// A mistaken DATABASE_URL is answered with what is wrong and what to fix (it gave a
/// parser's words, or a line number of PostgreSQL's source).
#[tokio::test]
async fn database_url_mistakes_say_what_to_fix() {
    let db = TestDb::new().await;
    let server = db.url.rsplit_once('/').unwrap().0.to_owned();
    for (url, says) in [
        (
            "localhost/crm".to_owned(),
            "postgres://USER:PASSWORD@HOST:5432/DATABASE",
        ),
        (
            "postgres://postgres@127.0.0.1:1/crm".to_owned(),
            "nothing accepts connections at 127.0.0.1:1",
        ),
        (
            format!("{server}/no_such_database"),
            "createdb no_such_database",
        ),
    ] {
        let refused = start_failure(agentcrm(&["migrate"]).env("DATABASE_URL", &url));
        assert!(refused.contains(says), "{url}: {refused}");
        assert!(!refused.contains(" at line "), "{url}: {refused}");
    }
}

/// `agentcrm http` waits for a PostgreSQL that does not accept connections yet (containers
/// start out of order), saying so, instead of exiting at once.
#[tokio::test]
async fn http_waits_for_a_database_that_starts_later() {
    let dir = std::path::PathBuf::from(format!(
        "/tmp/acrm-late-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    ));
    let url = format!(
        "postgres://agentcrm@localhost/agentcrm?host={}/run",
        dir.display()
    );
    let mut command = agentcrm(&["http", "--listen", "127.0.0.1:0"]);
    command
        .env("DATABASE_URL", &url)
        .env(
            "AGENTCRM_JWT_SECRET",
            "a-test-secret-that-is-long-enough-0123456789",
        )
        .env("AGENTCRM_DB_WAIT_SECS", "60")
        .env_remove("RUST_LOG");
    let (tx, rx) = std::sync::mpsc::channel();
    let waiting = std::thread::spawn(move || {
        let started = started(command);
        let _ = tx.send(());
        started
    });
    // Started after the server began waiting for it.
    std::thread::sleep(std::time::Duration::from_secs(2));
    let starting = dir.clone();
    let pg =
        tokio::task::spawn_blocking(move || agentcrm::store::EmbeddedPostgres::start(&starting))
            .await
            .unwrap()
            .expect("a private PostgreSQL");
    tokio::task::spawn_blocking(move || rx.recv_timeout(std::time::Duration::from_secs(60)))
        .await
        .unwrap()
        .expect("the server came up once the database did");
    let (mut child, log) = waiting.join().unwrap();
    assert!(log.contains("does not accept connections yet"), "{log}");
    terminate(&mut child);
    tokio::task::spawn_blocking(move || drop(pg)).await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// The CLI as a newcomer types it: `--database-url` after the `admin` subcommand, `admin
/// list` as text (it printed JSON), `migrate --json`, and a mistyped tool name answered with
/// the names it could be.
#[tokio::test]
async fn the_cli_takes_what_a_newcomer_types() {
    let db = TestDb::new().await;
    let listed = run_ok(&mut agentcrm(&[
        "admin",
        "list",
        "users",
        "--tenant",
        "acme",
        "--database-url",
        &db.url,
    ]));
    assert!(listed.contains("email: owner@acme.test"), "{listed}");
    assert!(!listed.trim_start().starts_with('{'), "{listed}");
    let migrated = run_ok(&mut agentcrm(&[
        "migrate",
        "--json",
        "--database-url",
        &db.url,
    ]));
    let migrated: Value = serde_json::from_str(migrated.trim()).unwrap();
    assert_eq!(
        migrated["migration"],
        json!(agentcrm::store::latest_migration())
    );
    let refused = start_failure(&mut db.command(&["stdio", "--tools", "whoamii"]));
    assert!(refused.contains("known tools: whoami, "), "{refused}");
}
