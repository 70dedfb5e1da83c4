//! Shared helpers: a database per test, the server binary over stdio and HTTP, and MCP
//! clients for both protocol generations.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rmcp::ClientHandler;
use rmcp::model::{CallToolRequestParams, CallToolResult, ClientConfig, ProtocolVersion};
use rmcp::service::{ClientLifecycleMode, ClientServiceExt, RoleClient, RunningService};
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::{StreamableHttpClientTransport, TokioChildProcess};
use serde_json::{Value, json};
use sqlx::{Connection, Executor};

pub const BIN: &str = env!("CARGO_BIN_EXE_agentcrm");
/// The token signing secret every test server gets.
pub const JWT_SECRET: &str = "test-signing-secret-0123456789-abcdefghijklmnop";
/// The key every test server encrypts webhook secrets with.
pub const ENCRYPTION_KEY: &str = "test-encryption-key-0123456789-abcdefghijklmnop";

/// The admin connection used to create per-test databases: the machine's server.
fn admin_url() -> String {
    std::env::var("DATABASE_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A fresh database on the shared server, dropped when the test ends, provisioned through
/// `agentcrm admin` with tenant `acme`, an admin user and an API key for that user.
pub struct TestDb {
    pub url: String,
    name: String,
    /// An API key of `owner@acme.test`, an admin of tenant `acme`.
    pub admin_key: String,
}

impl TestDb {
    pub async fn new() -> TestDb {
        let admin = admin_url();
        let name = format!("agentcrm_test_{}", uuid::Uuid::new_v4().simple());
        let mut conn = sqlx::PgConnection::connect(&admin)
            .await
            .unwrap_or_else(|e| panic!("tests need PostgreSQL at {admin} (set DATABASE_URL): {e}"));
        conn.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .await
            .expect("create test database");
        let _ = conn.close().await;
        let base = admin.split('?').next().unwrap_or(&admin);
        let (server, _) = base
            .rsplit_once('/')
            .expect("DATABASE_URL names a database");
        TestDb::provision(format!("{server}/{name}"), name)
    }

    /// The same on a database of a server the test started itself (not dropped after).
    pub fn at(url: String) -> TestDb {
        TestDb::provision(url, String::new())
    }

    fn provision(url: String, name: String) -> TestDb {
        let mut db = TestDb {
            url,
            name,
            admin_key: String::new(),
        };
        db.admin(&["create-tenant", "--slug", "acme", "--name", "Acme Ltd"]);
        db.admin(&[
            "create-user",
            "--tenant",
            "acme",
            "--email",
            "owner@acme.test",
            "--name",
            "Owner",
            "--role",
            "admin",
        ]);
        let key = db.admin(&[
            "create-api-key",
            "--tenant",
            "acme",
            "--user",
            "owner@acme.test",
            "--name",
            "tests",
        ]);
        db.admin_key = key["key"]
            .as_str()
            .expect("the key is printed once")
            .to_owned();
        db
    }

    /// Runs `agentcrm admin ... --json` against this database.
    pub fn admin(&self, args: &[&str]) -> Value {
        let mut all = vec!["admin"];
        all.extend_from_slice(args);
        all.push("--json");
        let stdout = run_ok(agentcrm(&all).env("DATABASE_URL", &self.url));
        serde_json::from_str(stdout.trim())
            .unwrap_or_else(|_| panic!("admin printed JSON: {stdout}"))
    }

    /// Another tenant `slug` with an admin `admin@<slug>.test`, and an API key of that admin.
    pub fn other_tenant_key(&self, slug: &str) -> String {
        let email = format!("admin@{slug}.test");
        self.admin(&["create-tenant", "--slug", slug, "--name", slug]);
        self.admin(&[
            "create-user",
            "--tenant",
            slug,
            "--email",
            &email,
            "--name",
            "Admin",
            "--role",
            "admin",
        ]);
        self.admin(&[
            "create-api-key",
            "--tenant",
            slug,
            "--user",
            &email,
            "--name",
            "key",
        ])["key"]
            .as_str()
            .expect("the key is printed once")
            .to_owned()
    }

    /// A new API key of `email` (a user of tenant `acme`), narrowed to `scopes` when given.
    pub fn api_key(&self, email: &str, scopes: &[&str]) -> String {
        let joined = scopes.join(",");
        let mut args = vec![
            "create-api-key",
            "--tenant",
            "acme",
            "--user",
            email,
            "--name",
            "key",
        ];
        if !scopes.is_empty() {
            args.extend(["--scopes", &joined]);
        }
        self.admin(&args)["key"]
            .as_str()
            .expect("the key is printed once")
            .to_owned()
    }

    /// `agentcrm <args>` on this database, as the tenant admin (by API key), with the
    /// server keys set and outgoing calls allowed to reach the tests' local receivers.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = self.server(args);
        command.env("AGENTCRM_API_KEY", &self.admin_key);
        command
    }

    /// `agentcrm <args>` on this database with the server keys set, but no credential.
    pub fn server(&self, args: &[&str]) -> Command {
        let mut command = agentcrm(args);
        command
            .env("DATABASE_URL", &self.url)
            .env("AGENTCRM_JWT_SECRET", JWT_SECRET)
            .env("AGENTCRM_ENCRYPTION_KEY", ENCRYPTION_KEY)
            .env("AGENTCRM_OUTBOUND_ALLOW_PRIVATE", "true")
            .env("AGENTCRM_DRAIN_SECS", "10");
        command
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        if name.is_empty() {
            return;
        }
        // Drop runs inside the test's runtime: use a runtime of its own on another thread.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async {
                let mut conn = sqlx::PgConnection::connect(&admin_url()).await.ok()?;
                conn.execute(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                )))
                .await
                .ok()
            })
        })
        .join();
    }
}

/// A command for the server binary with a clean agentcrm environment.
pub fn agentcrm(args: &[&str]) -> Command {
    let mut command = Command::new(BIN);
    command.args(args);
    for (key, _) in std::env::vars() {
        if key.starts_with("AGENTCRM_") || key.starts_with("OTEL_") || key == "DATABASE_URL" {
            command.env_remove(key);
        }
    }
    command.env("RUST_LOG", "info");
    command
}

pub type Client = RunningService<RoleClient, ClientConfig>;

/// The protocol generations rmcp negotiates.
#[derive(Debug, Clone, Copy)]
pub enum Generation {
    /// `initialize` handshake, 2025-11-25 (sessions on HTTP).
    Sessions,
    /// `server/discover` and per-request metadata, 2026-07-28 (stateless).
    Stateless,
}

pub fn client_config() -> ClientConfig {
    let mut config = ClientConfig::default();
    config.protocol_version = ProtocolVersion::V_2025_11_25;
    config
}

pub fn lifecycle(generation: Generation) -> ClientLifecycleMode {
    match generation {
        Generation::Sessions => ClientLifecycleMode::Initialize,
        Generation::Stateless => ClientLifecycleMode::Discover {
            preferred_versions: vec![ProtocolVersion::V_2026_07_28],
        },
    }
}

/// An rmcp client that starts `agentcrm stdio` with `command`'s environment.
pub async fn stdio_client(command: Command, generation: Generation) -> Client {
    stdio_client_with(client_config(), command, generation).await
}

/// The same with a client handler of the test's own (elicitation, notifications).
pub async fn stdio_client_with<H: ClientHandler>(
    handler: H,
    command: Command,
    generation: Generation,
) -> RunningService<RoleClient, H> {
    let (transport, _stderr) = TokioChildProcess::builder(tokio::process::Command::from(command))
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start agentcrm stdio");
    handler
        .serve_with_lifecycle(transport, lifecycle(generation))
        .await
        .expect("MCP handshake over stdio")
}

/// reqwest (the tests' HTTP clients, unified with the server's features) uses rustls
/// without a built-in crypto provider: install ring, as the server does.
pub fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// An rmcp client for a running HTTP server, sending `key` as a bearer credential.
pub async fn http_client(url: &str, key: &str, generation: Generation) -> Client {
    install_tls_provider();
    let transport = StreamableHttpClientTransport::from_config(
        StreamableHttpClientTransportConfig::with_uri(url.to_owned()).auth_header(key.to_owned()),
    );
    client_config()
        .serve_with_lifecycle(transport, lifecycle(generation))
        .await
        .expect("MCP handshake over HTTP")
}

/// The same, with extra request headers (e.g. the narrowing `X-MCP-…` headers).
pub async fn http_client_with_headers(
    url: &str,
    key: &str,
    headers: &[(&'static str, &'static str)],
) -> Client {
    install_tls_provider();
    let headers = headers
        .iter()
        .map(|(name, value)| {
            (
                http::HeaderName::from_static(name),
                http::HeaderValue::from_static(value),
            )
        })
        .collect();
    let transport = StreamableHttpClientTransport::from_config(
        StreamableHttpClientTransportConfig::with_uri(url.to_owned())
            .auth_header(key.to_owned())
            .custom_headers(headers),
    );
    client_config()
        .serve_with_lifecycle(transport, lifecycle(Generation::Sessions))
        .await
        .expect("MCP handshake over HTTP")
}

pub async fn call<H: ClientHandler>(
    client: &RunningService<RoleClient, H>,
    name: &str,
    args: Value,
) -> CallToolResult {
    let Value::Object(args) = args else {
        panic!("arguments must be an object")
    };
    client
        .call_tool(CallToolRequestParams::new(name.to_owned()).with_arguments(args))
        .await
        .unwrap_or_else(|e| panic!("tools/call {name}: {e}"))
}

/// The structured content of a successful call.
pub async fn call_ok<H: ClientHandler>(
    client: &RunningService<RoleClient, H>,
    name: &str,
    args: Value,
) -> Value {
    let result = call(client, name, args).await;
    assert_ne!(result.is_error, Some(true), "{name} failed: {result:?}");
    result.structured_content.expect("structured content")
}

/// The error code of a failed call (`isError: true` with the SPEC §1 error object).
pub fn error_code(result: &CallToolResult) -> String {
    assert_eq!(result.is_error, Some(true), "{result:?}");
    result.structured_content.as_ref().unwrap()["error"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// A running `agentcrm http` process, stopped (SIGTERM) on drop.
pub struct HttpServer {
    pub child: Child,
    pub base: String,
    pub log: Arc<Mutex<Vec<String>>>,
}

impl HttpServer {
    pub fn start(mut command: Command) -> HttpServer {
        install_tls_provider();
        command
            .args(["--listen", "127.0.0.1:0"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("start agentcrm http");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let lines = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                // The same line as text or as JSON (`--log-format json`).
                if let Some(rest) = line.split("listening on http://").nth(1)
                    && let Some(address) = rest.split("/mcp").next()
                {
                    let _ = tx.send(address.to_owned());
                }
                lines.lock().unwrap().push(line);
            }
        });
        let address = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("server did not start: {:?}", log.lock().unwrap()));
        HttpServer {
            child,
            base: format!("http://{address}"),
            log,
        }
    }

    pub fn mcp_url(&self) -> String {
        format!("{}/mcp", self.base)
    }

    /// The first word after `marker` in the server's log (e.g. `"metrics on "`), waiting up
    /// to 10 s for it to appear.
    pub async fn logged(&self, marker: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let found = self.log.lock().unwrap().iter().find_map(|l| {
                l.split(marker)
                    .nth(1)
                    .and_then(|rest| rest.split_whitespace().next())
                    .map(|word| word.trim_end_matches('"').to_owned())
            });
            if let Some(word) = found {
                return word;
            }
            assert!(Instant::now() < deadline, "{marker:?} never logged");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        terminate(&mut self.child)
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            terminate(&mut self.child);
        }
    }
}

pub fn terminate(child: &mut Child) -> std::process::ExitStatus {
    // SAFETY: signalling a child we have not reaped.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    wait_timeout(child, Duration::from_secs(30)).expect("server exits after SIGTERM")
}

pub fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// An `initialize` request of protocol 2025-11-25, for raw exchanges.
pub fn initialize_request(id: u64) -> Value {
    json!({
        "jsonrpc": "2.0", "id": id, "method": "initialize",
        "params": {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": { "name": "raw-test", "version": "1" }
        }
    })
}

/// Runs a server command that must refuse to start: nothing on stdout (it belongs to the
/// protocol), the reason on stderr, which is returned.
pub fn start_failure(command: &mut Command) -> String {
    let out = command.stdin(Stdio::null()).output().expect("run agentcrm");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "expected a refusal: {stderr}");
    assert!(
        out.stdout.is_empty(),
        "stdout stays clean: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    stderr
}

/// Runs a command that must succeed; returns its stdout.
pub fn run_ok(command: &mut Command) -> String {
    let out = command.output().expect("run agentcrm");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every tool of the catalog, in order: what a caller holding every scope is offered.
pub fn all_tool_names() -> Vec<String> {
    agentcrm::catalog::builtin()
        .iter()
        .map(|t| t.def.name.to_owned())
        .collect()
}

/// An rmcp client over stdio acting as the agent whose credentials `agent` holds (the
/// JSON of `admin create-agent` or of the `register_agent` tool).
pub async fn agent_client(db: &TestDb, agent: &Value) -> Client {
    let mut command = db.server(&["stdio"]);
    command
        .env(
            "AGENTCRM_CLIENT_ID",
            agent["client_id"].as_str().expect("client_id"),
        )
        .env(
            "AGENTCRM_CLIENT_SECRET",
            agent["client_secret"].as_str().expect("client_secret"),
        );
    stdio_client(command, Generation::Stateless).await
}

/// The tools of one toolset, in catalog order.
pub fn toolset_tool_names(toolset: agentcrm::toolkit::catalog::Toolset) -> Vec<String> {
    agentcrm::catalog::builtin()
        .iter()
        .filter(|t| t.def.toolset == toolset)
        .map(|t| t.def.name.to_owned())
        .collect()
}

/// A raw MCP-over-HTTP exchange: POST `body` with `key` (an API key or an access token) as
/// the bearer, in `session` if given.
pub async fn raw_post(
    http: &reqwest::Client,
    url: &str,
    key: &str,
    session: Option<&str>,
    body: Value,
) -> reqwest::Response {
    let mut request = http
        .post(url)
        .bearer_auth(key)
        .header("Accept", "application/json, text/event-stream")
        .header("MCP-Protocol-Version", "2025-11-25")
        .json(&body);
    if let Some(session) = session {
        request = request.header("Mcp-Session-Id", session);
    }
    request.send().await.unwrap()
}

/// A new initialized session of `key`.
pub async fn raw_session(http: &reqwest::Client, url: &str, key: &str) -> String {
    let init = raw_post(http, url, key, None, initialize_request(1)).await;
    assert_eq!(init.status().as_u16(), 200);
    let session = init.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let _ = crate::http::read_message(init).await;
    let done = json!({ "jsonrpc": "2.0", "method": "notifications/initialized" });
    raw_post(http, url, key, Some(&session), done).await;
    session
}

/// An access token of `agent` (as `admin create-agent --json` printed it) from the
/// client-credentials grant of the server at `base`.
pub async fn agent_token(base: &str, agent: &Value) -> String {
    let token: Value = reqwest::Client::new()
        .post(format!("{base}/oauth/token"))
        .json(
            &json!({ "grant_type": "client_credentials", "client_id": agent["client_id"],
                       "client_secret": agent["client_secret"] }),
        )
        .send()
        .await
        .expect("POST /oauth/token")
        .json()
        .await
        .expect("a token response");
    token["access_token"]
        .as_str()
        .unwrap_or_else(|| panic!("an access token: {token}"))
        .to_owned()
}

/// Adds a member `email` to tenant `acme` with `scopes`.
pub fn create_member(db: &TestDb, email: &str, scopes: &[&str]) {
    db.admin(&[
        "create-user",
        "--tenant",
        "acme",
        "--email",
        email,
        "--name",
        email.split('@').next().unwrap_or(email),
        "--role",
        "member",
        "--scopes",
        &scopes.join(","),
    ]);
}

/// A stdio client through a new API key of `email`, narrowed to `scopes` when given.
pub async fn key_client(db: &TestDb, email: &str, scopes: &[&str]) -> Client {
    let mut command = db.server(&["stdio"]);
    command.env("AGENTCRM_API_KEY", db.api_key(email, scopes));
    stdio_client(command, Generation::Stateless).await
}

/// A new member `email` of tenant `acme` with `scopes`, at a stdio client through a new API
/// key of theirs.
pub async fn member_client(db: &TestDb, email: &str, scopes: &[&str]) -> Client {
    create_member(db, email, scopes);
    key_client(db, email, &[]).await
}
