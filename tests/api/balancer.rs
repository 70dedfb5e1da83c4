//! Three replicas on one database behind a real HAProxy (Debian's package), started with
//! `docs/haproxy.cfg` exactly as documented: round-robin, with affinity on `Mcp-Session-Id`
//! learnt from the response that opened the session. The official Python and TypeScript SDKs
//! work through it in both protocol generations; rate limits, revocation and resource
//! notifications hold whichever replica a request lands on.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rmcp::model::SubscribeRequestParams;
use rmcp::service::ClientServiceExt;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use serde_json::json;
use tokio::sync::mpsc;

use crate::clients::{assert_report, assert_ts_report, python, run, script, ts_client};
use crate::helpers::*;
use crate::oauth::mcp_status;
use crate::operations::sample;
use crate::resources::Watcher;

/// HAProxy in the foreground, in front of `replicas`; killed on drop.
struct Balancer {
    child: Child,
    base: String,
}

impl Balancer {
    fn url(&self) -> String {
        format!("{}/mcp", self.base)
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Starts HAProxy on `port` with the documented configuration, and waits until it serves.
async fn balancer(port: u16, replicas: &[HttpServer]) -> Balancer {
    let haproxy = ["/usr/sbin/haproxy", "/usr/local/sbin/haproxy"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("haproxy is missing: `scripts/test` installs Debian's package");
    let config = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/haproxy.cfg");
    let mut command = Command::new(haproxy);
    command
        .args(["-db", "-f"])
        .arg(config)
        .env("LISTEN", format!("127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    for (i, replica) in replicas.iter().enumerate() {
        let address = replica.base.trim_start_matches("http://");
        command.env(format!("REPLICA_{}", i + 1), address);
    }
    let child = command.spawn().expect("start haproxy");
    let balancer = Balancer {
        child,
        base: format!("http://127.0.0.1:{port}"),
    };
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let up = http
            .get(format!("{}/healthz", balancer.base))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if up {
            return balancer;
        }
        assert!(Instant::now() < deadline, "haproxy did not start serving");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Three replicas on `db` whose public URL is the balancer's, each with its own metrics
/// listener, and HAProxy in front of them.
async fn cluster(db: &TestDb) -> (Vec<HttpServer>, Balancer) {
    let port = free_port();
    let public = format!("http://127.0.0.1:{port}");
    let replicas: Vec<HttpServer> = (0..3)
        .map(|_| {
            HttpServer::start(db.command(&[
                "http",
                "--public-url",
                &public,
                "--metrics-listen",
                "127.0.0.1:0",
            ]))
        })
        .collect();
    let lb = balancer(port, &replicas).await;
    (replicas, lb)
}

/// Each replica's count of `tool` calls, from its own /metrics.
async fn calls_per_replica(replicas: &[HttpServer], tool: &str) -> Vec<f64> {
    let http = reqwest::Client::new();
    let mut counts = Vec::new();
    for replica in replicas {
        let url = replica.logged("metrics on ").await;
        let text = http.get(url).send().await.unwrap().text().await.unwrap();
        counts.push(sample(
            &text,
            "agentcrm_tool_calls_total",
            &[("tool", tool)],
        ));
    }
    counts
}

fn minus(after: &[f64], before: &[f64]) -> Vec<f64> {
    after.iter().zip(before).map(|(a, b)| a - b).collect()
}

#[tokio::test]
async fn both_generations_and_both_sdks_work_through_a_round_robin_balancer() {
    let db = TestDb::new().await;
    let (replicas, lb) = cluster(&db).await;
    let header = format!("X-Api-Key: {}", db.admin_key);

    // The Python SDK: stateless 2026-07-28 (`auto`) and a 2025-11-25 session (`legacy`).
    for (mode, version) in [("auto", "2026-07-28"), ("legacy", "2025-11-25")] {
        let report = run(Command::new(python()).arg(script()).args([
            "--mode",
            mode,
            "http",
            &lb.url(),
            "--header",
            &header,
        ]));
        assert_report(&report, "http", version);
    }
    // The TypeScript SDK: a session with its GET stream, ended by DELETE.
    let report = run(ts_client().args(["http", &lb.url(), "--header", &header]));
    assert_ts_report(&report);
    assert!(report["session_id"].is_string(), "{report}");
    assert_eq!(report["whoami"]["session_id"], report["session_id"]);
    assert_eq!(report["session_terminated"], true, "{report}");

    // Stateless calls are spread over every replica.
    let before = calls_per_replica(&replicas, "whoami").await;
    let stateless = http_client(&lb.url(), &db.admin_key, Generation::Stateless).await;
    for _ in 0..9 {
        call_ok(&stateless, "whoami", json!({})).await;
    }
    let spread = minus(&calls_per_replica(&replicas, "whoami").await, &before);
    assert_eq!(spread.iter().sum::<f64>(), 9.0, "{spread:?}");
    assert!(
        spread.iter().all(|n| *n >= 1.0),
        "round-robin reaches every replica: {spread:?}"
    );

    // A session's requests all reach the replica that holds it (elsewhere they would be 404).
    let before = calls_per_replica(&replicas, "whoami").await;
    let session = http_client(&lb.url(), &db.admin_key, Generation::Sessions).await;
    let mut ids = Vec::new();
    for _ in 0..6 {
        ids.push(call_ok(&session, "whoami", json!({})).await["session_id"].clone());
    }
    assert!(
        ids[0].is_string() && ids.iter().all(|id| *id == ids[0]),
        "{ids:?}"
    );
    let mut held = minus(&calls_per_replica(&replicas, "whoami").await, &before);
    held.sort_by(f64::total_cmp);
    assert_eq!(held, [0.0, 0.0, 6.0], "one replica serves the session");
    session.cancel().await.unwrap();
    stateless.cancel().await.unwrap();
}

#[tokio::test]
async fn limits_revocation_and_notifications_hold_across_replicas() {
    let db = TestDb::new().await;
    let (replicas, lb) = cluster(&db).await;

    // A limit of 6 calls, counted together by the replicas the calls land on.
    let agent = db.admin(&["create-agent", "--tenant", "acme", "--name", "chatty"]);
    db.admin(&[
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
    let token = agent_token(&lb.base, &agent).await;
    let bot = http_client(&lb.url(), &token, Generation::Stateless).await;
    for i in 0..6 {
        let answer = call(&bot, "check_permission", json!({ "scope": "search" })).await;
        assert_ne!(answer.is_error, Some(true), "call {i}: {answer:?}");
    }
    let refused = call(&bot, "check_permission", json!({ "scope": "search" })).await;
    assert_eq!(error_code(&refused), "rate_limited", "{refused:?}");
    bot.cancel().await.unwrap();

    // Revocation, of an API key and of an access token, holds on every replica at once.
    let admin = http_client(&lb.url(), &db.admin_key, Generation::Stateless).await;
    let key = call_ok(
        &admin,
        "create_api_key",
        json!({ "name": "short-lived", "scopes": ["customers:read"] }),
    )
    .await;
    let plain = key["key"].as_str().unwrap().to_owned();
    for _ in 0..3 {
        assert_eq!(mcp_status(&lb.base, &plain).await, 200, "cached everywhere");
        assert_eq!(mcp_status(&lb.base, &token).await, 200);
    }
    call_ok(
        &admin,
        "revoke_api_key",
        json!({ "api_key_id": key["api_key"]["id"] }),
    )
    .await;
    let revoked = reqwest::Client::new()
        .post(format!("{}/oauth/revoke", lb.base))
        .form(&[("token", &token)])
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status().as_u16(), 200);
    for i in 0..6 {
        assert_eq!(mcp_status(&lb.base, &plain).await, 401, "key, request {i}");
        assert_eq!(
            mcp_status(&lb.base, &token).await,
            401,
            "token, request {i}"
        );
    }

    // A session (behind the balancer, on one replica) and a 2026-07-28 listen stream hear of
    // a change made on each replica in turn.
    let customer = call_ok(&admin, "create_customer", json!({ "first_name": "Ada" })).await;
    let id = customer["customer"]["id"].as_str().unwrap().to_owned();
    let mut version = customer["customer"]["version"].clone();
    let uri = format!("agentcrm://customers/{id}");
    let (updates, mut received) = mpsc::unbounded_channel();
    let transport = StreamableHttpClientTransport::from_config(
        StreamableHttpClientTransportConfig::with_uri(lb.url()).auth_header(db.admin_key.clone()),
    );
    let watcher = Watcher { updates }
        .serve_with_lifecycle(transport, lifecycle(Generation::Sessions))
        .await
        .expect("a session through the balancer");
    #[allow(deprecated)]
    watcher
        .subscribe(SubscribeRequestParams::new(uri.clone()))
        .await
        .unwrap();
    let listener = http_client(&lb.url(), &db.admin_key, Generation::Stateless).await;
    let mut subscription = listener
        .listen(
            rmcp::model::SubscriptionFilter::builder()
                .resource_subscription(uri.clone())
                .build(),
        )
        .await
        .unwrap();
    for (i, replica) in replicas.iter().enumerate() {
        let direct = http_client(&replica.mcp_url(), &db.admin_key, Generation::Stateless).await;
        let updated = call_ok(
            &direct,
            "update_customer",
            json!({ "customer_id": id, "version": version, "last_name": format!("L{i}") }),
        )
        .await;
        version = updated["customer"]["version"].clone();
        direct.cancel().await.unwrap();
        let heard = tokio::time::timeout(Duration::from_secs(10), received.recv())
            .await
            .unwrap_or_else(|_| panic!("the session heard nothing of replica {i}'s change"));
        assert_eq!(heard.as_deref(), Some(uri.as_str()));
        let pushed = tokio::time::timeout(Duration::from_secs(10), subscription.next())
            .await
            .unwrap_or_else(|_| panic!("the listen stream heard nothing of replica {i}'s change"))
            .unwrap();
        match pushed {
            Some(rmcp::model::ServerNotification::ResourceUpdatedNotification(update)) => {
                assert_eq!(update.params.uri, uri)
            }
            other => panic!("{other:?}"),
        }
    }
    watcher.cancel().await.unwrap();
    admin.cancel().await.unwrap();
}
