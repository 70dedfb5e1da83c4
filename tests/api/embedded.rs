//! The embedded default, end to end: no DATABASE_URL, a private PostgreSQL under the data
//! directory, created on first start, reused after, stopped on exit, and locked.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::*;

/// PIDs of postgres processes serving a cluster under `dir`.
fn postgres_serving(dir: &Path) -> Vec<String> {
    let needle = dir.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|entry| {
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).into_owned();
            let program = cmdline.split('\0').next().unwrap_or_default();
            (program.ends_with("postgres") && cmdline.contains(&needle))
                .then(|| entry.file_name().to_string_lossy().into_owned())
        })
        .collect()
}

/// Starts `agentcrm stdio` on the embedded default, calls whoami, closes stdin, and
/// returns (whoami result, exit success, stderr).
fn one_session(data_dir: &Path) -> (Value, bool, String) {
    let mut child = agentcrm(&["stdio"])
        .env("AGENTCRM_DATA_DIR", data_dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start agentcrm stdio");
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut stderr = child.stderr.take().unwrap();
    let stderr_text = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
        text
    });
    let send = |stdin: &mut std::process::ChildStdin, v: Value| writeln!(stdin, "{v}").unwrap();
    send(&mut stdin, initialize_request(1));
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert!(
        line.contains("\"protocolVersion\""),
        "initialize answered: {line}"
    );
    send(
        &mut stdin,
        json!({ "jsonrpc": "2.0", "method": "notifications/initialized" }),
    );
    send(
        &mut stdin,
        json!({ "jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": { "name": "whoami", "arguments": {} } }),
    );
    line.clear();
    stdout.read_line(&mut line).unwrap();
    let reply: Value = serde_json::from_str(&line).expect("a JSON-RPC reply");
    drop(stdin); // the client goes away: the server must stop, and its PostgreSQL with it
    let status =
        wait_timeout(&mut child, Duration::from_secs(60)).expect("server exits when stdin closes");
    (
        reply["result"]["structuredContent"].clone(),
        status.success(),
        stderr_text.join().unwrap(),
    )
}

fn data_dir() -> (tempfile::TempDir, std::path::PathBuf) {
    // Traversable, so the unprivileged PostgreSQL user can reach it when tests run as root.
    let tmp = tempfile::Builder::new()
        .prefix("agentcrm-embedded-")
        .permissions(std::fs::Permissions::from_mode(0o755))
        .tempdir()
        .unwrap();
    let dir = tmp.path().join("data");
    (tmp, dir)
}

#[test]
fn embedded_default_creates_reuses_and_stops_its_cluster() {
    let (_tmp, dir) = data_dir();

    let (first, ok, log) = one_session(&dir);
    assert!(ok, "first run exits cleanly: {log}");
    assert_eq!(first["principal"]["kind"], "local_owner", "{log}");
    assert!(
        dir.join("pgdata/PG_VERSION").exists(),
        "the cluster lives in the data directory"
    );
    assert!(log.contains("created embedded PostgreSQL cluster"), "{log}");
    assert!(
        postgres_serving(&dir).is_empty(),
        "no PostgreSQL left running after exit"
    );

    let (second, ok, log) = one_session(&dir);
    assert!(ok, "second run exits cleanly: {log}");
    assert!(
        !log.contains("created embedded PostgreSQL cluster"),
        "the cluster is reused: {log}"
    );
    assert_eq!(
        second["tenant"]["id"], first["tenant"]["id"],
        "same data as before"
    );
    assert!(postgres_serving(&dir).is_empty());
}

#[test]
fn a_second_server_on_the_same_data_directory_is_refused() {
    let (_tmp, dir) = data_dir();
    let mut first = agentcrm(&["http"]);
    first.env("AGENTCRM_DATA_DIR", &dir);
    let mut first = HttpServer::start(first);

    let stderr = start_failure(agentcrm(&["stdio"]).env("AGENTCRM_DATA_DIR", &dir));
    assert!(
        stderr.contains("is in use by another agentcrm server"),
        "{stderr}"
    );

    // The first server is unharmed, and stops its PostgreSQL on SIGTERM.
    let health = reqwest::blocking_get(&format!("{}/healthz", first.base));
    assert_eq!(health, 200);
    assert!(first.stop().success());
    assert!(
        postgres_serving(&dir).is_empty(),
        "no PostgreSQL left running after SIGTERM"
    );
}

mod reqwest {
    /// A plain GET from a synchronous test, without pulling in reqwest's blocking client.
    pub fn blocking_get(url: &str) -> u16 {
        let url = url.to_owned();
        std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(async {
                    ::reqwest::get(&url)
                        .await
                        .map(|r| r.status().as_u16())
                        .unwrap_or(0)
                })
        })
        .join()
        .unwrap()
    }
}

#[test]
fn killing_agentcrm_stops_its_postgres() {
    let (_tmp, dir) = data_dir();
    let mut command = agentcrm(&["http"]);
    command.env("AGENTCRM_DATA_DIR", &dir);
    let mut server = HttpServer::start(command);
    assert!(
        !postgres_serving(&dir).is_empty(),
        "the embedded server is running"
    );

    server.child.kill().expect("SIGKILL agentcrm"); // no chance to clean up
    let _ = server.child.wait();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !postgres_serving(&dir).is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        postgres_serving(&dir).is_empty(),
        "PostgreSQL follows its parent down"
    );

    // The next start finds the data intact.
    let (me, ok, log) = one_session(&dir);
    assert!(ok, "{log}");
    assert_eq!(me["tenant"]["slug"], "local");
}

#[test]
fn the_embedded_default_issues_tokens_with_a_key_of_its_own() {
    use std::os::unix::fs::PermissionsExt;
    let (_tmp, dir) = data_dir();
    let out = run_ok(
        agentcrm(&[
            "admin",
            "create-agent",
            "--name",
            "local-bot",
            "--scopes",
            "search",
            "--json",
        ])
        .env("AGENTCRM_DATA_DIR", &dir),
    );
    let agent: Value = serde_json::from_str(out.trim()).unwrap();
    let mut command = agentcrm(&["http"]);
    command.env("AGENTCRM_DATA_DIR", &dir);
    let mut server = HttpServer::start(command);
    let issued: Value = std::thread::spawn({
        let url = format!("{}/oauth/token", server.base);
        move || {
            tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async move {
                ::reqwest::Client::new()
                    .post(url)
                    .json(&json!({ "grant_type": "client_credentials", "client_id": agent["client_id"], "client_secret": agent["client_secret"] }))
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap()
            })
        }
    })
    .join()
    .unwrap();
    assert!(issued["access_token"].as_str().is_some(), "{issued}");
    let key = dir.join("jwt-secret");
    let mode = std::fs::metadata(&key)
        .expect("a key in the data directory")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the signing key is private");
    assert!(server.stop().success());
}

/// `agentcrm demo` on the embedded default fills the tenant its local owner sees (it made a
/// tenant `demo` the owner could not see), and refuses to fill it twice.
#[tokio::test]
async fn demo_data_lands_where_the_local_owner_looks() {
    let (_tmp, dir) = data_dir();
    let report =
        run_ok(agentcrm(&["demo", "--customers", "20", "--json"]).env("AGENTCRM_DATA_DIR", &dir));
    let report: Value = serde_json::from_str(report.trim()).unwrap();
    assert_eq!(report["tenant"], "local", "{report}");
    let mut command = agentcrm(&["stdio"]);
    command.env("AGENTCRM_DATA_DIR", &dir);
    let owner = stdio_client(command, Generation::Stateless).await;
    let listed = call_ok(&owner, "list_customers", json!({ "limit": 1 })).await;
    assert_eq!(listed["total"], 20, "{listed}");
    owner.cancel().await.unwrap();
    let again = start_failure(agentcrm(&["demo"]).env("AGENTCRM_DATA_DIR", &dir));
    assert!(again.contains("already has the demo data"), "{again}");
}

/// The embedded PostgreSQL is restarted when it dies (kill -9) while agentcrm runs: calls
/// work again within seconds, and the log says so (the server answered 503 until restarted).
#[tokio::test]
async fn a_killed_embedded_postgres_is_restarted() {
    let (_tmp, dir) = data_dir();
    let mut command = agentcrm(&["http"]);
    command.env("AGENTCRM_DATA_DIR", &dir).env(
        "AGENTCRM_JWT_SECRET",
        "a-test-secret-that-is-long-enough-0123456789",
    );
    let server = HttpServer::start(command);
    let client = http_client(&server.mcp_url(), "", Generation::Stateless).await;
    call_ok(&client, "whoami", json!({})).await;
    let pid: i32 = std::fs::read_to_string(dir.join("pgdata/postmaster.pid"))
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // SAFETY: killing the test's own server's PostgreSQL.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let killed = std::time::Instant::now();
    let deadline = killed + Duration::from_secs(60);
    loop {
        let answer = client
            .call_tool(rmcp::model::CallToolRequestParams::new("whoami"))
            .await;
        if matches!(&answer, Ok(result) if result.is_error != Some(true)) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "not back: {answer:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "calls work again {:?} after kill -9 of the embedded PostgreSQL",
        killed.elapsed()
    );
    let log = server.log.lock().unwrap().join("\n");
    assert!(log.contains("embedded PostgreSQL restarted"), "{log}");
    client.cancel().await.unwrap();
}
