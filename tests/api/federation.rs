//! People sign in through their organization's OpenID provider (issue 18): a real provider
//! (oidc-provider from npm, tests/browser/idp.mjs) and a real browser. Matched by verified
//! email, created as members only when the tenant allows, refused when unverified.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::helpers::*;
use crate::signin::{REDIRECT, authorize_url, pkce, query_of, register, token};

fn browser_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

/// Starts the provider for `callback`; returns it and its issuer URL.
async fn start_provider(secret: &str, callback: &str) -> (tokio::process::Child, String) {
    let mut child = tokio::process::Command::new("node")
        .arg(browser_dir().join("idp.mjs"))
        .args(["agentcrm", secret, callback])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start the OpenID provider");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let issuer = tokio::time::timeout(Duration::from_secs(30), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(issuer) = line.strip_prefix("issuer ") {
                return issuer.to_owned();
            }
        }
        panic!("the provider printed no issuer")
    })
    .await
    .expect("the provider starts");
    // Keep reading: a closed pipe would end the provider at its next line of output.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, issuer)
}

/// Runs the browser through federated sign-in as `login`.
async fn federated(url: &str, organization: &str, login: &str) -> Value {
    let out = tokio::process::Command::new("node")
        .arg(browser_dir().join("federated.mjs"))
        .args([url, organization, login])
        .output()
        .await
        .expect("run federated.mjs");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "federated.mjs as {login}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[tokio::test]
async fn people_sign_in_through_their_organizations_provider() {
    let db = TestDb::new().await;
    let server = HttpServer::start(db.server(&["http"]));
    let base = server.base.clone();
    let secret = "idp-client-secret-0123456789";
    let (_provider, issuer) =
        start_provider(secret, &format!("{base}/oauth/federated/callback")).await;
    let admin = stdio_client(db.command(&["stdio"]), Generation::Stateless).await;

    // A provider that is not there is refused before anything is saved.
    let wrong = call(
        &admin,
        "set_identity_provider",
        json!({ "issuer": "http://127.0.0.1:9/", "client_id": "agentcrm", "client_secret": secret }),
    )
    .await;
    assert_eq!(error_code(&wrong), "invalid_request", "{wrong:?}");
    let set = call_ok(
        &admin,
        "set_identity_provider",
        json!({ "issuer": issuer, "client_id": "agentcrm", "client_secret": secret,
                "display_name": "Acme SSO" }),
    )
    .await;
    assert_eq!(set["identity_provider"]["issuer"], issuer.as_str());
    assert!(
        !set.to_string().contains(secret),
        "the secret is never shown: {set}"
    );
    let shown = call_ok(&admin, "get_identity_provider", json!({})).await;
    assert!(!shown.to_string().contains(secret), "{shown}");

    let (_, client) = register(&base, json!([REDIRECT])).await;
    let client_id = client["client_id"].as_str().unwrap().to_owned();
    let attempt = |login: String| {
        let (base, client_id) = (base.clone(), client_id.clone());
        async move {
            let (verifier, challenge) = pkce();
            let url = authorize_url(&base, &client_id, &challenge, "customers:read");
            (federated(&url, "acme", &login).await, verifier)
        }
    };

    // An existing person, vouched for by the provider: signed in, and the client gets a code.
    let (done, verifier) = attempt("owner@acme.test".into()).await;
    let location = done["redirected_to"]
        .as_str()
        .unwrap_or_else(|| panic!("{done}"));
    let code = query_of(location)["code"].clone();
    let (status, issued) = token(
        &base,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", REDIRECT),
            ("client_id", &client_id),
            ("code_verifier", &verifier),
        ],
    )
    .await;
    assert_eq!(status, 200, "{issued}");
    let mcp = http_client(
        &server.mcp_url(),
        issued["access_token"].as_str().unwrap(),
        Generation::Stateless,
    )
    .await;
    let me = call_ok(&mcp, "whoami", json!({})).await;
    assert_eq!(me["principal"]["kind"], "user");
    assert_eq!(me["principal"]["name"], "Owner");
    mcp.cancel().await.unwrap();

    // Someone without an account: refused while the tenant does not create members.
    let (done, _) = attempt("newcomer@acme.test".into()).await;
    assert!(
        done["error"]
            .as_str()
            .is_some_and(|e| e.contains("has no account")),
        "{done}"
    );
    // An address the provider has not verified: refused.
    let (done, _) = attempt("unverified@acme.test".into()).await;
    assert!(
        done["error"]
            .as_str()
            .is_some_and(|e| e.contains("not verified")),
        "{done}"
    );
    // With create_members, the newcomer becomes a member (no scopes yet: nothing to allow).
    call_ok(
        &admin,
        "set_identity_provider",
        json!({ "issuer": issuer, "client_id": "agentcrm", "client_secret": secret,
                "create_members": true }),
    )
    .await;
    let (done, _) = attempt("newcomer@acme.test".into()).await;
    let location = done["redirected_to"]
        .as_str()
        .unwrap_or_else(|| panic!("{done}"));
    assert_eq!(query_of(location)["error"], "invalid_scope", "{location}");
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    let role: String =
        sqlx::query_scalar("SELECT role FROM users WHERE email = 'newcomer@acme.test'")
            .fetch_one(&pool)
            .await
            .expect("created on first sign-in");
    assert_eq!(role, "member");
    // A provider may vouch for addresses a name cannot be made from as it is: a local part
    // longer than a name may be (cut to 200 characters) or none at all ("member").
    let long = format!("{}@acme.test", "l".repeat(230));
    for (login, expected) in [
        (long.clone(), "l".repeat(200)),
        ("@acme.test".into(), "member".into()),
    ] {
        let (done, _) = attempt(login.clone()).await;
        let location = done["redirected_to"]
            .as_str()
            .unwrap_or_else(|| panic!("{login}: {done}"));
        assert_eq!(query_of(location)["error"], "invalid_scope", "{location}");
        let name: String = sqlx::query_scalar("SELECT name FROM users WHERE email = $1")
            .bind(&login)
            .fetch_one(&pool)
            .await
            .expect("created on first sign-in");
        assert_eq!(name, expected);
    }
    // An address no user may have is refused, saying why, and creates no one.
    let too_long = format!("{}@acme.test", "x".repeat(320));
    let (done, _) = attempt(too_long.clone()).await;
    assert!(
        done["error"]
            .as_str()
            .is_some_and(|e| e.contains("cannot be used here")),
        "{done}"
    );
    let kept: i64 = sqlx::query_scalar("SELECT count(*) FROM users WHERE email = $1")
        .bind(&too_long)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(kept, 0);
    // An organization without a provider says so on the page.
    let (_, challenge) = pkce();
    let url = authorize_url(&base, &client_id, &challenge, "customers:read");
    let done = federated(&url, "nowhere", "owner@acme.test").await;
    assert!(
        done["error"]
            .as_str()
            .is_some_and(|e| e.contains("does not sign in through a provider")),
        "{done}"
    );
    // Removed, the provider is no longer offered: acme's people use their passwords.
    let removed = call_ok(&admin, "remove_identity_provider", json!({})).await;
    assert_eq!(removed["removed"], true);
    let shown = call_ok(&admin, "get_identity_provider", json!({})).await;
    assert_eq!(shown["identity_provider"], Value::Null);
    let done = federated(&url, "acme", "owner@acme.test").await;
    assert!(
        done["error"]
            .as_str()
            .is_some_and(|e| e.contains("does not sign in through a provider")),
        "{done}"
    );
    admin.cancel().await.unwrap();
}
