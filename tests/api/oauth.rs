//! OAuth2 over real HTTP: client credentials, refresh rotation, revocation (on every
//! process), introspection, and every way a token can be wrong.

use agentcrm::access::tokens::Claims;
use serde_json::{Value, json};

use crate::helpers::*;

struct Agent {
    client_id: String,
    secret: String,
    id: String,
}

fn register(db: &TestDb, tenant: &str, name: &str, scopes: &str) -> Agent {
    let out = db.admin(&[
        "create-agent",
        "--tenant",
        tenant,
        "--name",
        name,
        "--scopes",
        scopes,
    ]);
    Agent {
        client_id: out["client_id"].as_str().unwrap().to_owned(),
        secret: out["client_secret"].as_str().unwrap().to_owned(),
        id: out["agent"]["id"].as_str().unwrap().to_owned(),
    }
}

async fn post_json(url: &str, body: Value) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(url)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn token(base: &str, agent: &Agent) -> (u16, Value) {
    post_json(
        &format!("{base}/oauth/token"),
        json!({ "grant_type": "client_credentials", "client_id": agent.client_id, "client_secret": agent.secret }),
    )
    .await
}

/// Status of `tools/list` with `token` as bearer, in the stateless generation.
pub(crate) async fn mcp_status(base: &str, token: &str) -> u16 {
    reqwest::Client::new()
        .post(format!("{base}/mcp"))
        .bearer_auth(token)
        .header("Accept", "application/json, text/event-stream")
        .header("MCP-Protocol-Version", "2026-07-28")
        .header("Mcp-Method", "tools/list")
        .json(
            &json!({ "jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": { "_meta": {
            "io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientInfo": { "name": "t", "version": "1" },
            "io.modelcontextprotocol/clientCapabilities": {}
        } } }),
        )
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

fn forge(claims: &Claims) -> String {
    agentcrm::access::tokens::install_jwt_provider();
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .unwrap()
}

#[tokio::test]
async fn agents_get_tokens_use_them_refresh_and_revoke_them() {
    let db = TestDb::new().await;
    let agent = register(&db, "acme", "support-bot", "customers:read,search");
    let server = HttpServer::start(db.command(&["http"]));
    let base = server.base.clone();

    let (status, issued) = token(&base, &agent).await;
    assert_eq!(status, 200, "{issued}");
    assert_eq!(issued["token_type"], "Bearer");
    assert_eq!(issued["expires_in"], 3600);
    assert_eq!(issued["scope"], "customers:read search");
    let access = issued["access_token"].as_str().unwrap().to_owned();
    let refresh = issued["refresh_token"].as_str().unwrap().to_owned();

    // The agent connects with its token and is itself, with its own scopes.
    let client = http_client(&format!("{base}/mcp"), &access, Generation::Sessions).await;
    let me = call_ok(&client, "whoami", json!({})).await;
    assert_eq!(me["principal"]["kind"], "agent");
    assert_eq!(me["principal"]["id"], agent.id.as_str());
    assert_eq!(me["scopes"], json!(["customers:read", "search"]));
    client.cancel().await.unwrap();

    // Form body with HTTP Basic client authentication works too, and can narrow scopes.
    let form = reqwest::Client::new()
        .post(format!("{base}/oauth/token"))
        .basic_auth(&agent.client_id, Some(&agent.secret))
        .form(&[("grant_type", "client_credentials"), ("scope", "search")])
        .send()
        .await
        .unwrap();
    assert_eq!(form.status().as_u16(), 200);
    assert_eq!(form.json::<Value>().await.unwrap()["scope"], "search");

    // Refresh rotates: the new pair works, the old refresh token is dead.
    let refresh_url = format!("{base}/oauth/token");
    let (status, rotated) = post_json(
        &refresh_url,
        json!({ "grant_type": "refresh_token", "refresh_token": refresh }),
    )
    .await;
    assert_eq!(status, 200, "{rotated}");
    assert_ne!(rotated["refresh_token"], refresh.as_str());
    let (status, reused) = post_json(
        &refresh_url,
        json!({ "grant_type": "refresh_token", "refresh_token": refresh }),
    )
    .await;
    assert_eq!(
        (status, reused["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    let new_access = rotated["access_token"].as_str().unwrap().to_owned();
    assert_eq!(mcp_status(&base, &new_access).await, 200);

    // Introspection, by an agent of the same tenant.
    let introspect = |token: String| {
        let (base, id, secret) = (base.clone(), agent.client_id.clone(), agent.secret.clone());
        async move {
            reqwest::Client::new()
                .post(format!("{base}/oauth/introspect"))
                .basic_auth(id, Some(secret))
                .form(&[("token", token)])
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    let info = introspect(access.clone()).await;
    assert_eq!(info["active"], true, "{info}");
    assert_eq!(info["scope"], "customers:read search");
    assert_eq!(info["client_id"], agent.client_id.as_str());

    // Revocation is immediate.
    let revoked = reqwest::Client::new()
        .post(format!("{base}/oauth/revoke"))
        .form(&[("token", &access)])
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status().as_u16(), 200);
    assert_eq!(mcp_status(&base, &access).await, 401);
    assert_eq!(introspect(access.clone()).await["active"], false);
    assert_eq!(
        mcp_status(&base, &new_access).await,
        200,
        "other tokens are unaffected"
    );

    // No secret of this test reaches the audit trail.
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    let audit: Vec<String> = sqlx::query_scalar("SELECT row_to_json(a)::text FROM audit_events a")
        .fetch_all(&pool)
        .await
        .unwrap();
    let actions: Vec<String> = sqlx::query_scalar("SELECT action FROM audit_events ORDER BY id")
        .fetch_all(&pool)
        .await
        .unwrap();
    for wanted in ["token.issued", "token.refreshed", "token.revoked", "whoami"] {
        assert!(
            actions.iter().any(|a| a == wanted),
            "{wanted} audited: {actions:?}"
        );
    }
    let secrets = [&agent.secret, &access, &refresh, &new_access, &db.admin_key];
    for row in &audit {
        for secret in secrets {
            assert!(
                !row.contains(secret.as_str()),
                "a secret leaked into the audit trail: {row}"
            );
        }
    }
    for line in server.log.lock().unwrap().iter() {
        for secret in secrets {
            assert!(
                !line.contains(secret.as_str()),
                "a secret leaked into the log: {line}"
            );
        }
    }
}

#[tokio::test]
async fn bad_credentials_and_bad_tokens_are_refused() {
    let db = TestDb::new().await;
    let agent = register(&db, "acme", "bot", "customers:read");
    db.admin(&["create-tenant", "--slug", "globex", "--name", "Globex"]);
    let other = register(&db, "globex", "their-bot", "customers:read");
    let server = HttpServer::start(db.command(&["http"]));
    let base = server.base.clone();
    let token_url = format!("{base}/oauth/token");

    let wrong = Agent {
        secret: "acs_wrong".into(),
        client_id: agent.client_id.clone(),
        id: agent.id.clone(),
    };
    let (status, body) = token(&base, &wrong).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_client")),
        "{body}"
    );
    let (status, body) = post_json(
        &token_url,
        json!({ "grant_type": "password", "username": "x" }),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("unsupported_grant_type"))
    );
    let (status, body) = post_json(
        &token_url,
        json!({ "grant_type": "client_credentials", "client_id": agent.client_id, "client_secret": agent.secret, "scope": "customers:delete" }),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_scope"))
    );
    let (status, _) = post_json(&token_url, json!("not an object")).await;
    assert_eq!(status, 400);

    let (_, issued) = token(&base, &agent).await;
    let access = issued["access_token"].as_str().unwrap().to_owned();
    agentcrm::access::tokens::install_jwt_provider();
    let claims: Claims = {
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
        validation.validate_aud = false;
        jsonwebtoken::decode(
            &access,
            &jsonwebtoken::DecodingKey::from_secret(JWT_SECRET.as_bytes()),
            &validation,
        )
        .unwrap()
        .claims
    };
    assert_eq!(
        mcp_status(&base, &forge(&claims)).await,
        200,
        "a faithful re-signing is accepted"
    );

    let mut expired = claims.clone();
    expired.exp = chrono::Utc::now().timestamp() - 120;
    assert_eq!(mcp_status(&base, &forge(&expired)).await, 401, "expired");
    let mut audience = claims.clone();
    audience.aud = "https://elsewhere.example/mcp".into();
    assert_eq!(
        mcp_status(&base, &forge(&audience)).await,
        401,
        "wrong audience"
    );
    let mut issuer = claims.clone();
    issuer.iss = "https://evil.example".into();
    assert_eq!(
        mcp_status(&base, &forge(&issuer)).await,
        401,
        "wrong issuer"
    );
    let mut tenant = claims.clone();
    tenant.tid = other_tenant(&db).await;
    assert_eq!(
        mcp_status(&base, &forge(&tenant)).await,
        401,
        "token for another tenant"
    );
    let mut widened = claims.clone();
    widened.scope = "customers:read customers:delete admin".into();
    let widened_token = forge(&widened);
    let client = http_client(
        &format!("{base}/mcp"),
        &widened_token,
        Generation::Stateless,
    )
    .await;
    let me = call_ok(&client, "whoami", json!({})).await;
    assert_eq!(
        me["scopes"],
        json!(["customers:read"]),
        "scopes never exceed the agent's"
    );
    let bad_signature = format!("{}x", &access[..access.len() - 1]);
    assert_eq!(mcp_status(&base, &bad_signature).await, 401);

    // Another tenant's agent cannot introspect this tenant's tokens.
    let info = reqwest::Client::new()
        .post(format!("{base}/oauth/introspect"))
        .basic_auth(&other.client_id, Some(&other.secret))
        .form(&[("token", &access)])
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(info, json!({ "active": false }));

    // A disabled agent gets no token and its tokens stop working.
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    sqlx::query("UPDATE agents SET enabled = false WHERE client_id = $1")
        .bind(&agent.client_id)
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(token(&base, &agent).await.0, 401);
    assert_eq!(mcp_status(&base, &access).await, 401);
}

async fn other_tenant(db: &TestDb) -> uuid::Uuid {
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    sqlx::query_scalar("SELECT id FROM tenants WHERE slug = 'globex'")
        .fetch_one(&pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn revocation_and_the_token_limit_hold_across_processes() {
    let db = TestDb::new().await;
    let agent = register(&db, "acme", "busy-bot", "search");
    let a = HttpServer::start(db.command(&["http"]));
    let b = HttpServer::start(db.command(&["http", "--public-url", &a.base]));

    let (_, issued) = token(&a.base, &agent).await;
    let access = issued["access_token"].as_str().unwrap().to_owned();
    assert_eq!(
        mcp_status(&b.base, &access).await,
        200,
        "B accepts A's token (same issuer)"
    );
    let revoked = reqwest::Client::new()
        .post(format!("{}/oauth/revoke", a.base))
        .form(&[("token", &access)])
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status().as_u16(), 200);
    assert_eq!(
        mcp_status(&b.base, &access).await,
        401,
        "revoked on A, refused by B at once"
    );

    // Ten issues per hour per agent, counted across both processes.
    for i in 1..10 {
        let server = if i % 2 == 0 { &a } else { &b };
        let (status, body) = token(&server.base, &agent).await;
        assert_eq!(status, 200, "issue {i}: {body}");
    }
    let (status, body) = token(&b.base, &agent).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"], "rate_limited");
    assert!(
        body["retry_after"]
            .as_u64()
            .is_some_and(|s| s > 0 && s <= 3600),
        "{body}"
    );
}

#[tokio::test]
async fn metadata_documents_describe_the_server() {
    let db = TestDb::new().await;
    let server =
        HttpServer::start(db.command(&["http", "--public-url", "https://crm.example.com"]));
    let get = |path: &str| {
        let url = format!("{}{path}", server.base);
        async move {
            reqwest::get(url)
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    let authorization = get("/.well-known/oauth-authorization-server").await;
    assert_eq!(authorization["issuer"], "https://crm.example.com");
    assert_eq!(
        authorization["token_endpoint"],
        "https://crm.example.com/oauth/token"
    );
    assert_eq!(
        authorization["grant_types_supported"],
        json!(["authorization_code", "refresh_token", "client_credentials"])
    );
    assert_eq!(
        authorization["authorization_endpoint"],
        "https://crm.example.com/oauth/authorize"
    );
    for path in [
        "/.well-known/oauth-protected-resource",
        "/.well-known/oauth-protected-resource/mcp",
    ] {
        let resource = get(path).await;
        assert_eq!(resource["resource"], "https://crm.example.com/mcp");
        assert_eq!(
            resource["authorization_servers"],
            json!(["https://crm.example.com"])
        );
    }
    // Tokens carry that audience.
    let agent = register(&db, "acme", "meta-bot", "search");
    let (_, issued) = token(&server.base, &agent).await;
    agentcrm::access::tokens::install_jwt_provider();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    validation.set_audience(&["https://crm.example.com/mcp"]);
    validation.set_issuer(&["https://crm.example.com"]);
    let claims = jsonwebtoken::decode::<Claims>(
        issued["access_token"].as_str().unwrap(),
        &jsonwebtoken::DecodingKey::from_secret(JWT_SECRET.as_bytes()),
        &validation,
    );
    assert!(claims.is_ok(), "{claims:?}");
}
