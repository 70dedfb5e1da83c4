//! Command line: `stdio`, `http`, `migrate` and `catalog`. Every flag has an `AGENTCRM_*`
//! environment variable (and `DATABASE_URL`), so desktop clients can configure it either way.

mod admin;
mod demo;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::access::audit::{AuditEvent, AuditLog};
use crate::access::cache::AuthCache;
use crate::access::identity::{self, AuthError, Credential};
use crate::access::ratelimit::RateLimiter;
use crate::access::secrets::{ENCRYPTION_KEY, JWT_KEY};
use crate::access::tokens::TokenKeys;
use crate::access::vault::Vault;
use crate::access::{Principal, Role};
use crate::app::App;
use crate::jobs::outbound::OutboundOptions;
use crate::mcp::http::{DEFAULT_ALLOWED_HOSTS, DEFAULT_ALLOWED_ORIGINS, HttpOptions};
use crate::store::tenants::{self, LOCAL_TENANT_SLUG};
use crate::store::{DatabaseKind, Store, embedded};
use crate::toolkit::filter::ToolFilter;

#[derive(Debug, Parser)]
#[command(
    name = "agentcrm",
    version,
    about = "An MCP server for CRM, workflows, handoffs and agents, on PostgreSQL"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log lines as text, or as one JSON object each (for log shippers); always on stderr
    #[arg(
        long,
        global = true,
        env = "AGENTCRM_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve MCP over stdio (for desktop clients that start the server as a subprocess)
    Stdio(StdioArgs),
    /// Serve MCP over streamable HTTP at /mcp
    Http(HttpArgs),
    /// Apply database migrations and exit
    Migrate(MigrateArgs),
    /// Write the generated tool catalog (schemas/ and tools/), or check it is up to date
    Catalog(CatalogArgs),
    /// Bootstrap tenants, users, agents and API keys without any tool
    Admin(admin::AdminArgs),
    /// Create a demo tenant with sample data, an admin, an agent and an API key
    Demo(demo::DemoArgs),
}

#[derive(Debug, Args)]
pub(crate) struct DbArgs {
    /// PostgreSQL URL of a shared server; without it, a private embedded server is started
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, global = true)]
    database_url: Option<String>,
    /// Where the embedded server keeps its data [default: ~/.local/share/agentcrm, or /var/lib/agentcrm as root]
    #[arg(long, env = "AGENTCRM_DATA_DIR", global = true)]
    data_dir: Option<PathBuf>,
    /// Database connections this process's pool holds at most (it also holds 2 for the audit
    /// writer, 2 for lease renewals and one per LISTEN channel)
    #[arg(long, env = "AGENTCRM_DB_MAX_CONNECTIONS", default_value_t = 16, global = true,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    db_max_connections: u32,
    /// Seconds a call waits for a free connection before it is refused with a retry_after
    #[arg(long, env = "AGENTCRM_DB_ACQUIRE_TIMEOUT_SECS", default_value_t = 10, global = true,
          value_parser = clap::value_parser!(u64).range(1..=300))]
    db_acquire_timeout_secs: u64,
}

#[derive(Debug, Args)]
struct MigrateArgs {
    #[command(flatten)]
    db: DbArgs,
    /// Print JSON instead of text (for scripts)
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct ToolArgs {
    /// Enable only these toolsets (comma-separated; `all` for every toolset)
    #[arg(long, env = "AGENTCRM_TOOLSETS", value_delimiter = ',')]
    toolsets: Vec<String>,
    /// Offer only tools that change nothing
    #[arg(long, env = "AGENTCRM_READ_ONLY")]
    read_only: bool,
    /// Offer only these tools (comma-separated)
    #[arg(long, env = "AGENTCRM_TOOLS", value_delimiter = ',')]
    tools: Vec<String>,
    /// Never offer these tools (comma-separated)
    #[arg(long, env = "AGENTCRM_EXCLUDE_TOOLS", value_delimiter = ',')]
    exclude_tools: Vec<String>,
    /// `full`: tools/list offers every tool; `compact`: only find_tools, describe_tools and
    /// run_tool, through which the others are found and called
    #[arg(long, env = "AGENTCRM_TOOL_MODE", value_enum, default_value_t = ToolMode::Full)]
    tool_mode: ToolMode,
    /// List tools with their output schemas (by default tools/list leaves them out to keep
    /// the list small; describe_tools and schemas/ have them)
    #[arg(long, env = "AGENTCRM_LIST_OUTPUT_SCHEMAS")]
    list_output_schemas: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ToolMode {
    Full,
    Compact,
}

#[derive(Debug, Args)]
struct OutboundArgs {
    /// Let outgoing calls (webhook deliveries) reach loopback and private networks [default: true on the embedded default, false on a shared database]
    #[arg(long, env = "AGENTCRM_OUTBOUND_ALLOW_PRIVATE", value_parser = clap::builder::BoolishValueParser::new())]
    outbound_allow_private: Option<bool>,
    /// Seconds an outgoing call may take before it counts as failed
    #[arg(long, env = "AGENTCRM_OUTBOUND_TIMEOUT_SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=300))]
    outbound_timeout_secs: u64,
}

#[derive(Debug, Args)]
struct StdioArgs {
    #[command(flatten)]
    db: DbArgs,
    #[command(flatten)]
    tools: ToolArgs,
    #[command(flatten)]
    outbound: OutboundArgs,
}

#[derive(Debug, Args)]
struct HttpArgs {
    #[command(flatten)]
    db: DbArgs,
    #[command(flatten)]
    tools: ToolArgs,
    #[command(flatten)]
    outbound: OutboundArgs,
    /// Address to listen on (port 0 picks a free port; the log says which)
    /// (`PORT`, `HOST:PORT`, or a name such as `localhost:8848`)
    #[arg(long, env = "AGENTCRM_LISTEN", default_value = "127.0.0.1:8848", value_parser = parse_listen)]
    listen: SocketAddr,
    /// Accepted Host headers, comma-separated (`*` for any) [default: localhost,127.0.0.1,::1]
    #[arg(long, env = "AGENTCRM_ALLOWED_HOSTS", value_delimiter = ',')]
    allowed_hosts: Vec<String>,
    /// Accepted browser Origins, comma-separated, e.g. https://app.example.com:443 (`*` for any) [default: loopback origins]
    #[arg(long, env = "AGENTCRM_ALLOWED_ORIGINS", value_delimiter = ',')]
    allowed_origins: Vec<String>,
    /// Base URL clients reach this server at (token issuer; audience is <url>/mcp) [default: http://<listen address>]
    #[arg(long, env = "AGENTCRM_PUBLIC_URL")]
    public_url: Option<String>,
    /// Largest accepted request body in bytes
    #[arg(long, env = "AGENTCRM_MAX_BODY_BYTES", default_value_t = 4 * 1024 * 1024)]
    max_body_bytes: usize,
    /// Seconds a connection may take to send a request's headers, and may sit idle between
    /// requests, before it is closed
    #[arg(long, env = "AGENTCRM_HEADER_TIMEOUT_SECS", default_value_t = 15)]
    header_timeout_secs: u64,
    /// Open connections at most; more are answered 503 and closed
    #[arg(long, env = "AGENTCRM_MAX_CONNECTIONS", default_value_t = 1024)]
    max_connections: usize,
    /// Serve Prometheus metrics at http://<address>/metrics, without a credential (bind it
    /// to the operator's network) (`PORT` or `HOST:PORT`)
    #[arg(long, env = "AGENTCRM_METRICS_LISTEN", value_parser = parse_listen)]
    metrics_listen: Option<SocketAddr>,
    /// Serve /metrics on the main listener to requests with `Authorization: Bearer <token>`
    #[arg(long, env = "AGENTCRM_METRICS_TOKEN", hide_env_values = true)]
    metrics_token: Option<String>,
}

#[derive(Debug, Args)]
struct CatalogArgs {
    /// Directory that holds (or receives) schemas/ and tools/
    #[arg(long, default_value = ".")]
    out: PathBuf,
    /// Write nothing; exit non-zero when the files under --out differ from the catalog
    #[arg(long)]
    check: bool,
}

/// Startup failures, reported as one line on stderr.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CliError {
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Credentials(String),
    #[error(transparent)]
    Filter(#[from] crate::toolkit::filter::FilterError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("could not listen on {0}: {1}")]
    Listen(SocketAddr, std::io::Error),
    #[error("HTTP server failed: {0}")]
    Serve(std::io::Error),
    #[error("stdio session could not start: {0}")]
    Stdio(Box<rmcp::service::ServerInitializeError>),
    #[error("could not write the catalog: {0}")]
    Catalog(std::io::Error),
    #[error(
        "the generated catalog is out of date; run `agentcrm catalog` and commit the result:\n  {0}"
    )]
    CatalogDrift(String),
}

pub async fn main() -> ExitCode {
    let cli = Cli::parse();
    let traces = init_logging(cli.log_format);
    let outcome = match cli.command {
        Command::Stdio(args) => run_stdio(args).await,
        Command::Http(args) => run_http(args).await,
        Command::Migrate(args) => run_migrate(args).await,
        Command::Catalog(args) => run_catalog(args),
        Command::Admin(args) => admin::run(args).await,
        Command::Demo(args) => demo::run(args).await,
    };
    traces.shutdown().await;
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Logs to stderr, and traces to an OTLP endpoint when one is configured.
fn init_logging(format: LogFormat) -> crate::telemetry::Guard {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    use tracing_subscriber::prelude::*;
    // Quiet by default: rmcp logs several lines per HTTP session, and PostgreSQL's notices
    // (a migration table that already exists) come with every command.
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,rmcp=warn,sqlx::postgres::notice=warn"));
    // stdout belongs to the MCP protocol in stdio mode: every log line goes to stderr.
    let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let logs = match format {
        LogFormat::Text => logs
            .with_ansi(std::io::stderr().is_terminal())
            .with_filter(filter)
            .boxed(),
        // One object a line: time, level, target, the message and fields, and the spans
        // it happened in (the tool, request id, transport, principal).
        LogFormat::Json => logs
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(true)
            .with_filter(filter)
            .boxed(),
    };
    let (traces, guard) = crate::telemetry::layer();
    tracing_subscriber::registry()
        .with(logs)
        .with(traces)
        .init();
    guard
}

/// A listen address: a port alone (on loopback), an address with its port, or a host name
/// with its port (its first address).
fn parse_listen(value: &str) -> Result<SocketAddr, String> {
    let value = value.trim();
    if let Ok(port) = value.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    if let Ok(address) = value.parse::<SocketAddr>() {
        return Ok(address);
    }
    use std::net::ToSocketAddrs;
    match value.to_socket_addrs().map(|mut all| all.next()) {
        Ok(Some(address)) => Ok(address),
        _ => Err(format!(
            "`{value}` is not a listen address: give PORT, HOST:PORT or NAME:PORT \
             (e.g. 8848, 127.0.0.1:8848, localhost:8848, 0.0.0.0:8848)"
        )),
    }
}

/// Cancelled on SIGINT or SIGTERM.
fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut int), Ok(mut term)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) else {
            tracing::warn!("could not install signal handlers");
            return;
        };
        tokio::select! {
            _ = int.recv() => tracing::info!("SIGINT received, shutting down"),
            _ = term.recv() => tracing::info!("SIGTERM received, shutting down"),
        }
        cancel.cancel();
    });
    token
}

pub(crate) async fn open_store(db: &DbArgs) -> Result<Store, CliError> {
    open_store_waiting(db, std::time::Duration::ZERO).await
}

/// The same, waiting up to `wait` for a shared server that refuses connections.
async fn open_store_waiting(db: &DbArgs, wait: std::time::Duration) -> Result<Store, CliError> {
    let url = db.database_url.as_deref().filter(|u| !u.trim().is_empty());
    let data_dir = db
        .data_dir
        .clone()
        .unwrap_or_else(embedded::default_data_dir);
    let size = crate::store::PoolSize {
        max_connections: db.db_max_connections,
        acquire_timeout: std::time::Duration::from_secs(db.db_acquire_timeout_secs),
    };
    Ok(Store::open_waiting(url, &data_dir, wait, size).await?)
}

/// How long `agentcrm http` waits at start-up for a shared PostgreSQL that refuses
/// connections (`AGENTCRM_DB_WAIT_SECS`, 0 to 600; default 30): containers start out of
/// order. Other commands say at once what is wrong.
fn db_wait() -> std::time::Duration {
    let seconds = std::env::var("AGENTCRM_DB_WAIT_SECS")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|s| *s <= 600)
        .unwrap_or(30);
    std::time::Duration::from_secs(seconds)
}

/// Opens the store and builds the shared state; on error the store is closed again.
/// `local_owner_allowed`: callers without credentials may act as the local owner when the
/// database is the embedded default (stdio, or HTTP on a loopback address).
/// How long access tokens live: `AGENTCRM_ACCESS_TOKEN_TTL_SECS` (5 to 86400; default an hour).
fn token_ttl() -> Result<std::time::Duration, CliError> {
    match std::env::var("AGENTCRM_ACCESS_TOKEN_TTL_SECS") {
        Err(_) => Ok(crate::access::tokens::ACCESS_TOKEN_TTL),
        Ok(value) => match value.trim().parse::<u64>() {
            Ok(seconds) if (5..=86_400).contains(&seconds) => {
                Ok(std::time::Duration::from_secs(seconds))
            }
            _ => Err(CliError::Usage(format!(
                "AGENTCRM_ACCESS_TOKEN_TTL_SECS must be 5 to 86400 seconds, not `{value}`"
            ))),
        },
    }
}

/// `public_url`: for HTTP, the base URL tokens are issued for (issuer; audience `<url>/mcp`).
async fn start(
    db: &DbArgs,
    tools: &ToolArgs,
    outbound: &OutboundArgs,
    local_owner_allowed: bool,
    public_url: Option<&str>,
    stopping: &CancellationToken,
) -> Result<Arc<App>, CliError> {
    let catalog = crate::catalog::builtin();
    let mut filter = ToolFilter::from_lists(
        catalog,
        &tools.toolsets,
        tools.read_only,
        &tools.tools,
        &tools.exclude_tools,
    )?;
    filter.compact = tools.tool_mode == ToolMode::Compact;
    let ttl = token_ttl()?;
    // A serving process (HTTP) waits for its database; stdio and commands answer at once.
    let wait = match public_url {
        Some(_) => db_wait(),
        None => std::time::Duration::ZERO,
    };
    let store = open_store_waiting(db, wait).await?;
    let embedded_dir = (store.kind() == DatabaseKind::Embedded).then(|| {
        db.data_dir
            .clone()
            .unwrap_or_else(embedded::default_data_dir)
    });
    let tokens = match public_url.map(|url| (url, JWT_KEY.load(embedded_dir.as_deref()))) {
        Some((url, Ok(Some(secret)))) => Some(TokenKeys::new(&secret, url).with_ttl(ttl)),
        Some((_, Ok(None))) => {
            tracing::warn!("AGENTCRM_JWT_SECRET is not set: /oauth/token will not issue tokens");
            None
        }
        Some((_, Err(error))) => {
            store.close().await;
            return Err(CliError::Usage(error.to_string()));
        }
        None => None,
    };
    let vault = match ENCRYPTION_KEY.load(embedded_dir.as_deref()) {
        Ok(Some(key)) => Some(Vault::new(&key)),
        Ok(None) => {
            tracing::warn!(
                "AGENTCRM_ENCRYPTION_KEY is not set: this process neither creates nor delivers webhooks"
            );
            None
        }
        Err(error) => {
            store.close().await;
            return Err(CliError::Usage(error.to_string()));
        }
    };
    let outbound = OutboundOptions {
        allow_private: outbound
            .outbound_allow_private
            .unwrap_or(store.kind() == DatabaseKind::Embedded),
        timeout: std::time::Duration::from_secs(outbound.outbound_timeout_secs),
    };
    let local_owner = if store.kind() == DatabaseKind::Embedded {
        match local_owner(&store).await {
            Ok(owner) => local_owner_allowed.then_some(owner),
            Err(error) => {
                store.close().await;
                return Err(error.into());
            }
        }
    } else {
        None
    };
    tracing::info!(
        database = ?store.kind(),
        toolsets = %crate::mcp::server::describe_toolsets(&filter.enabled_toolsets(catalog)),
        "agentcrm ready"
    );
    let audit = AuditLog::start(store.audit_pool().clone());
    let limiter = RateLimiter::start(store.pool().clone());
    // Only HTTP resolves credentials per request; stdio resolves once.
    let auth_cache = match public_url {
        Some(_) => AuthCache::start(store.pool().clone()),
        None => AuthCache::default(),
    };
    Ok(Arc::new(App {
        store,
        catalog,
        filter: Arc::new(filter),
        list_output_schemas: tools.list_output_schemas,
        audit,
        limiter,
        auth_cache,
        local_owner,
        tokens,
        vault,
        outbound,
        clients: Default::default(),
        subscriptions: Default::default(),
        inflight: Default::default(),
        background: Default::default(),
        stopping: stopping.clone(),
    }))
}

/// Starts the background jobs of a serving process; they stop with `shutdown`.
fn start_jobs(app: &Arc<App>, shutdown: &CancellationToken) -> Vec<tokio::task::JoinHandle<()>> {
    let mut jobs = Vec::new();
    if let Some(vault) = &app.vault {
        match crate::jobs::webhooks::start(
            app.store.pool().clone(),
            vault.clone(),
            app.outbound,
            shutdown.clone(),
        ) {
            Ok(job) => jobs.push(job),
            Err(error) => tracing::error!(%error, "webhook deliveries cannot start"),
        }
    }
    jobs.push(
        app.subscriptions
            .start(app.store.pool().clone(), shutdown.clone()),
    );
    jobs.push(crate::workflows::engine::start(
        app.clone(),
        shutdown.clone(),
    ));
    jobs.push(crate::agents::runner::start(app.clone(), shutdown.clone()));
    jobs.push(crate::crm::bulk::start(app.clone(), shutdown.clone()));
    jobs.push(crate::agents::callbacks::start(
        app.clone(),
        shutdown.clone(),
    ));
    jobs.push(crate::connections::catalog::start(
        app.clone(),
        shutdown.clone(),
    ));
    jobs.push(crate::handoff::actions::start_sweeper(
        app.store.pool().clone(),
        shutdown.clone(),
    ));
    jobs
}

/// The local tenant and its owner, an admin user, created on first start.
async fn local_owner(store: &Store) -> Result<Principal, crate::store::StoreError> {
    let tenant = tenants::ensure(store.pool(), LOCAL_TENANT_SLUG, "Local").await?;
    let user = crate::access::store::ensure_user(
        store.pool(),
        tenant.id,
        LOCAL_OWNER_EMAIL,
        "Local owner",
        Role::Admin,
    )
    .await?;
    Ok(Principal::local_owner(tenant.id, user.id))
}

/// The email of the embedded default's owner (a user row, so API keys can act for it).
pub const LOCAL_OWNER_EMAIL: &str = "owner@localhost";

/// The stdio caller, from `AGENTCRM_API_KEY` or `AGENTCRM_CLIENT_ID` + `AGENTCRM_CLIENT_SECRET`
/// (read from the environment only: secrets on a command line show up in `ps`).
async fn stdio_principal(app: &App) -> Result<Principal, CliError> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    let credential = match (
        var("AGENTCRM_API_KEY"),
        var("AGENTCRM_CLIENT_ID"),
        var("AGENTCRM_CLIENT_SECRET"),
    ) {
        (Some(key), _, _) => Some(("AGENTCRM_API_KEY", StdioCredential::ApiKey(key))),
        (None, Some(id), Some(secret)) => Some((
            "AGENTCRM_CLIENT_ID/AGENTCRM_CLIENT_SECRET",
            StdioCredential::Client(id, secret),
        )),
        (None, Some(_), None) | (None, None, Some(_)) => {
            return Err(CliError::Credentials(
                "set both AGENTCRM_CLIENT_ID and AGENTCRM_CLIENT_SECRET (or AGENTCRM_API_KEY)"
                    .into(),
            ));
        }
        (None, None, None) => None,
    };
    let Some((source, credential)) = credential else {
        return app.local_owner.clone().ok_or_else(|| {
            CliError::Credentials(
                "with DATABASE_URL set, stdio needs a credential: set AGENTCRM_API_KEY (see \
                 `agentcrm admin create-api-key`) or AGENTCRM_CLIENT_ID and \
                 AGENTCRM_CLIENT_SECRET (see `agentcrm admin create-agent`)"
                    .into(),
            )
        });
    };
    let outcome = match &credential {
        StdioCredential::ApiKey(key) => {
            identity::authenticate(app.store.pool(), Credential::ApiKey(key)).await
        }
        StdioCredential::Client(id, secret) => {
            identity::authenticate(app.store.pool(), Credential::Client { id, secret }).await
        }
    };
    match outcome {
        Ok(principal) => {
            let mut event = AuditEvent::by(&principal, "auth", "auth.stdio", "ok");
            event.transport = Some("stdio");
            app.audit.record(event).await;
            Ok(principal)
        }
        Err(AuthError::Store(error)) => Err(error.into()),
        Err(_) => {
            let mut event = AuditEvent::anonymous("auth", "auth.refused", "refused");
            event.transport = Some("stdio");
            event.error_code = Some("invalid_credentials".into());
            app.audit.record(event).await;
            Err(CliError::Credentials(format!(
                "the credential in {source} is invalid, revoked or disabled"
            )))
        }
    }
}

enum StdioCredential {
    ApiKey(String),
    Client(String, String),
}

async fn run_stdio(args: StdioArgs) -> Result<(), CliError> {
    let shutdown = shutdown_on_signals();
    let app = start(&args.db, &args.tools, &args.outbound, true, None, &shutdown).await?;
    let principal = match stdio_principal(&app).await {
        Ok(principal) => principal,
        Err(error) => {
            app.store.close().await;
            return Err(error);
        }
    };
    let jobs = start_jobs(&app, &shutdown);
    app.subscriptions
        .ready(std::time::Duration::from_secs(5))
        .await;
    let outcome = crate::mcp::stdio::serve(app.clone(), principal, shutdown.clone()).await;
    shutdown.cancel();
    shut_down(&app, jobs).await;
    outcome.map_err(|e| CliError::Stdio(Box::new(e)))
}

async fn run_http(args: HttpArgs) -> Result<(), CliError> {
    let shutdown = shutdown_on_signals();
    // Recorded from the start, whether or not anyone scrapes.
    crate::metrics::handle();
    // Without lists of their own, the host and origin of --public-url are accepted too:
    // that is the address clients were told to use.
    let public = args
        .public_url
        .as_deref()
        .and_then(|url| reqwest::Url::parse(url).ok());
    let mut allowed_hosts = defaulted(args.allowed_hosts.clone(), &DEFAULT_ALLOWED_HOSTS);
    let mut allowed_origins = defaulted(args.allowed_origins.clone(), &DEFAULT_ALLOWED_ORIGINS);
    if let Some(public) = &public {
        if args.allowed_hosts.iter().all(|h| h.trim().is_empty())
            && let Some(host) = public.host_str()
        {
            allowed_hosts.push(host.trim_matches(['[', ']']).to_owned());
        }
        if args.allowed_origins.iter().all(|o| o.trim().is_empty()) {
            allowed_origins.push(public.origin().ascii_serialization());
        }
    }
    if args.listen.ip().is_unspecified() && args.public_url.is_none() {
        tracing::warn!(
            "listening on every interface without --public-url: tokens, metadata and sign-in \
             pages will name http://{}, and requests are accepted only with a loopback Host \
             header (others get 403). Set --public-url (AGENTCRM_PUBLIC_URL) to the address \
             clients use, e.g. https://crm.example.com; its host is then accepted",
            args.listen
        );
    }
    let options = HttpOptions {
        listen: args.listen,
        allowed_hosts,
        allowed_origins,
        max_body_bytes: args.max_body_bytes,
        header_timeout: std::time::Duration::from_secs(args.header_timeout_secs.clamp(1, 3600)),
        max_connections: args.max_connections.max(1),
        metrics_token: args.metrics_token.clone().filter(|t| !t.trim().is_empty()),
    };
    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .map_err(|error| CliError::Listen(options.listen, error))?;
    let address = listener.local_addr().unwrap_or(options.listen);
    let public_url = args
        .public_url
        .unwrap_or_else(|| format!("http://{address}"));
    // The credential-free local owner is for this machine only.
    let app = start(
        &args.db,
        &args.tools,
        &args.outbound,
        args.listen.ip().is_loopback(),
        Some(&public_url),
        &shutdown,
    )
    .await?;
    tracing::info!("listening on http://{address}/mcp");
    if let Some(metrics) = args.metrics_listen {
        serve_metrics(app.clone(), metrics, shutdown.clone()).await?;
    }
    let jobs = start_jobs(&app, &shutdown);
    app.subscriptions
        .ready(std::time::Duration::from_secs(5))
        .await;
    let outcome = crate::mcp::http::serve(app.clone(), listener, &options, shutdown.clone()).await;
    shutdown.cancel();
    shut_down(&app, jobs).await;
    outcome.map_err(CliError::Serve)
}

/// `/metrics` on an address of its own, until `shutdown`.
async fn serve_metrics(
    app: Arc<App>,
    address: SocketAddr,
    shutdown: CancellationToken,
) -> Result<(), CliError> {
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|error| CliError::Listen(address, error))?;
    let bound = listener.local_addr().unwrap_or(address);
    let router = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let app = app.clone();
            async move { crate::mcp::http::metrics_text(&app).await }
        }),
    );
    tracing::info!("metrics on http://{bound}/metrics");
    tokio::spawn(async move {
        let served = axum::serve(listener, router)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
        if let Err(error) = served {
            tracing::warn!(%error, "the metrics listener stopped");
        }
    });
    Ok(())
}

/// Lets background jobs finish what they hold (work on a lease stops at its next boundary
/// and hands the lease back), hands this process's rate-limit counts to the others, then
/// closes the store. Every call and step awaited its own audit record, so none is pending.
async fn shut_down(app: &App, jobs: Vec<tokio::task::JoinHandle<()>>) {
    for job in jobs {
        let _ = job.await;
    }
    let grace = crate::jobs::drain_grace();
    if app.background.drained(grace).await {
        tracing::info!("background work stopped; its leases are handed back");
    } else {
        tracing::warn!(
            "background work still running {grace:?} after the shutdown signal; its leases expire"
        );
    }
    if let Err(error) = app.limiter.flush().await {
        tracing::warn!(%error, "could not write the last rate-limit counts");
    }
    app.store.close().await;
}

fn defaulted(values: Vec<String>, default: &[&str]) -> Vec<String> {
    let values: Vec<String> = values
        .into_iter()
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
        .collect();
    if values.is_empty() {
        default.iter().map(|v| v.to_string()).collect()
    } else {
        values
    }
}

async fn run_migrate(args: MigrateArgs) -> Result<(), CliError> {
    let store = open_store(&args.db).await?;
    let version = store.migration_version().await;
    store.close().await;
    let version = version?;
    if args.json {
        println!("{}", serde_json::json!({ "migration": version }));
        return Ok(());
    }
    match version {
        Some(version) => println!("database schema at migration {version}"),
        None => println!("database schema has no migrations"),
    }
    Ok(())
}

fn run_catalog(args: CatalogArgs) -> Result<(), CliError> {
    let files = crate::mcp::docs::render(crate::catalog::builtin());
    if args.check {
        let problems = crate::mcp::docs::check(&args.out, &files);
        if !problems.is_empty() {
            return Err(CliError::CatalogDrift(problems.join("\n  ")));
        }
        println!("catalog up to date ({} files)", files.len());
        return Ok(());
    }
    crate::mcp::docs::write(&args.out, &files).map_err(CliError::Catalog)?;
    println!("wrote {} files under {}", files.len(), display(&args.out));
    Ok(())
}

fn display(path: &Path) -> String {
    path.display().to_string()
}
