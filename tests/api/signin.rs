//! People sign in from remote clients (issue 18): Dynamic Client Registration, the
//! authorization code grant with PKCE through the server's own sign-in and consent pages,
//! refresh with rotation, step-up on a missing scope; and every bad input refused with the
//! RFC's error, nothing issued.

use std::collections::HashMap;
use std::io::Write;
use std::process::Stdio;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::helpers::*;

pub(crate) const PASSWORD: &str = "correct horse battery staple";
pub(crate) const REDIRECT: &str = "http://127.0.0.1:45678/callback";

pub(crate) fn set_password(db: &TestDb, email: &str, password: &str) -> std::process::Output {
    let mut child = agentcrm(&[
        "admin",
        "set-password",
        "--tenant",
        "acme",
        "--email",
        email,
    ])
    .env("DATABASE_URL", &db.url)
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
    child.wait_with_output().unwrap()
}

/// A browser, by hand: cookies kept per name, redirects not followed.
struct Browser {
    http: reqwest::Client,
    cookies: HashMap<String, String>,
}

struct Page {
    status: u16,
    location: Option<String>,
    body: String,
}

impl Browser {
    fn new() -> Browser {
        Browser {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            cookies: HashMap::new(),
        }
    }

    fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    async fn take(&mut self, response: reqwest::Response) -> Page {
        for value in response.headers().get_all("set-cookie") {
            let text = value.to_str().unwrap();
            assert!(
                text.contains("HttpOnly") && text.contains("SameSite=Lax"),
                "{text}"
            );
            let (name, value) = text.split(';').next().unwrap().split_once('=').unwrap();
            self.cookies.insert(name.to_owned(), value.to_owned());
        }
        Page {
            status: response.status().as_u16(),
            location: response
                .headers()
                .get("location")
                .map(|v| v.to_str().unwrap().to_owned()),
            body: response.text().await.unwrap(),
        }
    }

    async fn get(&mut self, url: &str) -> Page {
        let response = self
            .http
            .get(url)
            .header("cookie", self.cookie_header())
            .send()
            .await
            .unwrap();
        self.take(response).await
    }

    async fn post(&mut self, url: &str, form: &[(String, String)]) -> Page {
        let response = self
            .http
            .post(url)
            .header("cookie", self.cookie_header())
            .form(form)
            .send()
            .await
            .unwrap();
        self.take(response).await
    }
}

/// The hidden fields of the page's form, as a browser would send them.
fn hidden_fields(body: &str) -> Vec<(String, String)> {
    body.split("<input type=\"hidden\" ")
        .skip(1)
        .map(|rest| {
            let attr = |name: &str| {
                let start = rest.find(&format!("{name}=\"")).unwrap() + name.len() + 2;
                let end = start + rest[start..].find('"').unwrap();
                rest[start..end]
                    .replace("&quot;", "\"")
                    .replace("&#39;", "'")
                    .replace("&lt;", "<")
                    .replace("&gt;", ">")
                    .replace("&amp;", "&")
            };
            (attr("name"), attr("value"))
        })
        .collect()
}

pub(crate) fn query_of(location: &str) -> HashMap<String, String> {
    let url = reqwest::Url::parse(location).unwrap();
    url.query_pairs().into_owned().collect()
}

pub(crate) fn pkce() -> (String, String) {
    let verifier = URL_SAFE_NO_PAD.encode(uuid::Uuid::new_v4().as_bytes().repeat(2));
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    (verifier, challenge)
}

pub(crate) async fn register(base: &str, redirect_uris: Value) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(format!("{base}/oauth/register"))
        .json(&json!({ "client_name": "Test <Client>", "redirect_uris": redirect_uris }))
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

pub(crate) fn authorize_url(base: &str, client_id: &str, challenge: &str, scope: &str) -> String {
    let query = serde_urlencoded::to_string([
        ("response_type", "code"),
        ("client_id", client_id),
        ("redirect_uri", REDIRECT),
        ("scope", scope),
        ("state", "st-123"),
        ("code_challenge", challenge),
        ("code_challenge_method", "S256"),
        ("resource", &format!("{base}/mcp")),
    ])
    .unwrap();
    format!("{base}/oauth/authorize?{query}")
}

/// Signs in and consents (ticking `grant`), returning the redirect's query.
async fn sign_in_and_consent(
    browser: &mut Browser,
    base: &str,
    url: &str,
    grant: &[&str],
) -> HashMap<String, String> {
    let page = browser.get(url).await;
    assert_eq!(page.status, 200, "{}", page.body);
    let mut form = hidden_fields(&page.body);
    if page.body.contains("name=\"password\"") {
        form.push(("action".into(), "signin".into()));
        form.push(("email".into(), "owner@acme.test".into()));
        form.push(("password".into(), PASSWORD.into()));
        let signed = browser
            .post(&format!("{base}/oauth/authorize"), &form)
            .await;
        assert_eq!(signed.status, 303, "{}", signed.body);
        let next = format!("{base}{}", signed.location.unwrap());
        let page = browser.get(&next).await;
        assert_eq!(page.status, 200, "{}", page.body);
        form = hidden_fields(&page.body);
    }
    form.push(("action".into(), "consent".into()));
    for scope in grant {
        form.push(("grant".into(), (*scope).into()));
    }
    let done = browser
        .post(&format!("{base}/oauth/authorize"), &form)
        .await;
    assert_eq!(done.status, 303, "{}", done.body);
    let location = done.location.unwrap();
    assert!(location.starts_with(REDIRECT), "{location}");
    query_of(&location)
}

pub(crate) async fn token(base: &str, form: &[(&str, &str)]) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(format!("{base}/oauth/token"))
        .form(form)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

#[tokio::test]
async fn a_person_signs_in_through_a_registered_client_with_pkce() {
    let db = TestDb::new().await;
    let short = set_password(&db, "owner@acme.test", "short");
    assert!(!short.status.success(), "a short password is refused");
    assert!(
        set_password(&db, "owner@acme.test", PASSWORD)
            .status
            .success()
    );
    let server = HttpServer::start(db.server(&["http"]));
    let base = server.base.clone();

    let metadata: Value = reqwest::get(format!("{base}/.well-known/oauth-authorization-server"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        metadata["authorization_endpoint"],
        format!("{base}/oauth/authorize")
    );
    assert_eq!(
        metadata["registration_endpoint"],
        format!("{base}/oauth/register")
    );
    assert_eq!(
        metadata["code_challenge_methods_supported"],
        json!(["S256"])
    );
    assert_eq!(metadata["response_types_supported"], json!(["code"]));
    assert_eq!(
        metadata["authorization_response_iss_parameter_supported"],
        true
    );
    let openid: Value = reqwest::get(format!("{base}/.well-known/openid-configuration"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        openid["authorization_endpoint"],
        metadata["authorization_endpoint"]
    );

    // Registration: a loopback redirect (any port later), public client.
    let (status, client) = register(&base, json!(["http://127.0.0.1/callback"])).await;
    assert_eq!(status, 201, "{client}");
    assert_eq!(client["token_endpoint_auth_method"], "none");
    let client_id = client["client_id"].as_str().unwrap().to_owned();

    let (verifier, challenge) = pkce();
    let mut browser = Browser::new();
    let url = authorize_url(
        &base,
        &client_id,
        &challenge,
        "customers:read search offline_access",
    );
    // A wrong password first: refused on the page, nothing issued.
    let page = browser.get(&url).await;
    assert!(
        page.body.contains("Test &lt;Client&gt;"),
        "the client's name, escaped"
    );
    let mut form = hidden_fields(&page.body);
    form.push(("action".into(), "signin".into()));
    form.push(("email".into(), "owner@acme.test".into()));
    form.push(("password".into(), "not the password".into()));
    let wrong = browser
        .post(&format!("{base}/oauth/authorize"), &form)
        .await;
    assert_eq!(wrong.status, 401);
    assert!(wrong.body.contains("The email or password is wrong."));
    // A form without the CSRF token is refused.
    let forged: Vec<(String, String)> = form.iter().filter(|(k, _)| k != "csrf").cloned().collect();
    let forged = browser
        .post(&format!("{base}/oauth/authorize"), &forged)
        .await;
    assert_eq!(forged.status, 403, "{}", forged.body);

    // Sign in, untick `search` on the consent page.
    let answer = sign_in_and_consent(&mut browser, &base, &url, &["customers:read"]).await;
    assert_eq!(answer["state"], "st-123");
    assert_eq!(answer["iss"], base);
    let code = answer["code"].clone();

    let exchange = |code: String, verifier: String| {
        let (base, client_id) = (base.clone(), client_id.clone());
        async move {
            token(
                &base,
                &[
                    ("grant_type", "authorization_code"),
                    ("code", &code),
                    ("redirect_uri", REDIRECT),
                    ("client_id", &client_id),
                    ("code_verifier", &verifier),
                    ("resource", &format!("{base}/mcp")),
                ],
            )
            .await
        }
    };
    let (status, wrong_verifier) = exchange(code.clone(), pkce().0).await;
    assert_eq!(
        (status, wrong_verifier["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    // The failed attempt used the code up: the right verifier no longer gets it either.
    let (status, _) = exchange(code.clone(), verifier.clone()).await;
    assert_eq!(status, 400);

    // Again (signed in already: straight to consent), and this time exchange it right.
    let (verifier, challenge) = pkce();
    let url = authorize_url(&base, &client_id, &challenge, "customers:read search");
    let answer = sign_in_and_consent(&mut browser, &base, &url, &["customers:read"]).await;
    let code = answer["code"].clone();
    let (status, issued) = exchange(code.clone(), verifier.clone()).await;
    assert_eq!(status, 200, "{issued}");
    assert_eq!(issued["scope"], "customers:read");
    let (status, reused) = exchange(code, verifier).await;
    assert_eq!(
        (status, reused["error"].as_str()),
        (400, Some("invalid_grant"))
    );

    // A code is for the client and redirect URI it was issued to.
    let (_, other) = register(&base, json!([REDIRECT])).await;
    let other_id = other["client_id"].as_str().unwrap().to_owned();
    for (client, redirect) in [
        (other_id.as_str(), REDIRECT),
        (client_id.as_str(), "http://127.0.0.1:45679/callback"),
    ] {
        let (verifier, challenge) = pkce();
        let url = authorize_url(&base, &client_id, &challenge, "customers:read");
        let answer = sign_in_and_consent(&mut browser, &base, &url, &["customers:read"]).await;
        let (status, refused) = token(
            &base,
            &[
                ("grant_type", "authorization_code"),
                ("code", &answer["code"]),
                ("redirect_uri", redirect),
                ("client_id", client),
                ("code_verifier", &verifier),
            ],
        )
        .await;
        assert_eq!(
            (status, refused["error"].as_str()),
            (400, Some("invalid_grant")),
            "{client} {redirect}"
        );
    }

    // The token is the person's, with what they ticked.
    let access = issued["access_token"].as_str().unwrap().to_owned();
    let mcp = http_client(&server.mcp_url(), &access, Generation::Stateless).await;
    let me = call_ok(&mcp, "whoami", json!({})).await;
    assert_eq!(me["principal"]["kind"], "user", "{me}");
    assert_eq!(me["principal"]["name"], "Owner");
    assert_eq!(me["scopes"], json!(["customers:read"]));
    call_ok(&mcp, "list_customers", json!({})).await;
    mcp.cancel().await.unwrap();
    // A tool needing an unticked scope: 403 with a step-up challenge naming it.
    let stepped = reqwest::Client::new()
        .post(server.mcp_url())
        .bearer_auth(&access)
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2025-11-25")
        .json(&json!({ "jsonrpc": "2.0", "id": 1, "method": "tools/call",
                       "params": { "name": "search", "arguments": { "query": "x" } } }))
        .send()
        .await
        .unwrap();
    assert_eq!(stepped.status().as_u16(), 403);
    let challenge = stepped.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        challenge.contains("error=\"insufficient_scope\"")
            && challenge.contains("scope=\"search\""),
        "{challenge}"
    );

    // Refresh rotates: the new one works, the old one is dead.
    let refresh = issued["refresh_token"].as_str().unwrap().to_owned();
    let (status, refreshed) = token(
        &base,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", &refresh),
            ("client_id", &client_id),
        ],
    )
    .await;
    assert_eq!(status, 200, "{refreshed}");
    assert_eq!(refreshed["scope"], "customers:read");
    let (status, _) = token(
        &base,
        &[("grant_type", "refresh_token"), ("refresh_token", &refresh)],
    )
    .await;
    assert_eq!(status, 400, "a used refresh token");
    let (status, other_client) = token(
        &base,
        &[
            ("grant_type", "refresh_token"),
            (
                "refresh_token",
                refreshed["refresh_token"].as_str().unwrap(),
            ),
            ("client_id", "dyn_someone_else"),
        ],
    )
    .await;
    assert_eq!(
        (status, other_client["error"].as_str()),
        (400, Some("invalid_grant"))
    );

    // Admins see the connection, and disconnecting it ends its tokens at once.
    let admin = stdio_client(db.command(&["stdio"]), Generation::Stateless).await;
    let listed = call_ok(&admin, "list_connected_clients", json!({})).await;
    let clients = listed["clients"].as_array().unwrap();
    assert_eq!(clients.len(), 1, "{listed}");
    assert_eq!(clients[0]["client_id"], client_id.as_str());
    assert_eq!(clients[0]["client_name"], "Test <Client>");
    assert_eq!(clients[0]["scopes"], json!(["customers:read"]));
    let cli = db.admin(&[
        "list-connected-clients",
        "--tenant",
        "acme",
        "--email",
        "owner@acme.test",
    ]);
    assert_eq!(cli["clients"][0]["client_id"], client_id.as_str());
    let fresh = refreshed["access_token"].as_str().unwrap().to_owned();
    let before = http_client(&server.mcp_url(), &fresh, Generation::Stateless).await;
    call_ok(&before, "whoami", json!({})).await;
    before.cancel().await.unwrap();
    call_ok(
        &admin,
        "disconnect_client",
        json!({ "user_id": clients[0]["user_id"], "client_id": client_id }),
    )
    .await;
    let after = reqwest::Client::new()
        .post(server.mcp_url())
        .bearer_auth(&fresh)
        .header("accept", "application/json, text/event-stream")
        .json(&json!({ "jsonrpc": "2.0", "id": 1, "method": "tools/list" }))
        .send()
        .await
        .unwrap();
    assert_eq!(
        after.status().as_u16(),
        401,
        "a disconnected client's token"
    );

    // Sign-in and consent are audited.
    let trail = call_ok(&admin, "list_audit_log", json!({ "limit": 100 })).await;
    let actions: Vec<&str> = trail["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for action in [
        "signin.succeeded",
        "consent.granted",
        "token.issued",
        "token.refreshed",
    ] {
        assert!(actions.contains(&action), "{action} in {actions:?}");
    }
    admin.cancel().await.unwrap();
    // A failed sign-in names no person, so it is in the trail without a tenant.
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    let failed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_events WHERE action = 'signin.failed' AND outcome = 'refused'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(failed, 1);
}

#[tokio::test]
async fn bad_authorization_requests_are_refused_and_nothing_is_issued() {
    let db = TestDb::new().await;
    let server = HttpServer::start(db.server(&["http"]));
    let base = server.base.clone();
    let (_, client) = register(&base, json!([REDIRECT])).await;
    let client_id = client["client_id"].as_str().unwrap().to_owned();
    let (_, challenge) = pkce();
    let mut browser = Browser::new();

    // An unregistered redirect URI (an open redirect attempt): a page, never a redirect.
    let evil = authorize_url(&base, &client_id, &challenge, "customers:read")
        .replace(&urlencode(REDIRECT), &urlencode("https://evil.example/cb"));
    let page = browser.get(&evil).await;
    assert_eq!((page.status, page.location), (400, None));
    // An unknown client: a page too.
    let page = browser
        .get(&authorize_url(
            &base,
            "dyn_nobody",
            &challenge,
            "customers:read",
        ))
        .await;
    assert_eq!((page.status, page.location), (400, None));
    // Client metadata document URLs that are not https, or point at loopback: refused.
    for id in [
        "http://127.0.0.1:9/client.json",
        "https://127.0.0.1/client.json",
        "https://10.0.0.8/c.json",
    ] {
        let page = browser
            .get(&authorize_url(&base, id, &challenge, "customers:read"))
            .await;
        assert_eq!(
            (page.status, page.location.clone()),
            (400, None),
            "{id}: {}",
            page.body
        );
    }
    // After the redirect URI is trusted, errors go back to the client with the RFC's codes.
    let refused = |url: String| {
        let mut browser = Browser::new();
        async move {
            let page = browser.get(&url).await;
            assert_eq!(page.status, 303, "{}", page.body);
            let location = page.location.unwrap();
            assert!(location.starts_with(REDIRECT));
            let query = query_of(&location);
            assert!(!query.contains_key("code"));
            assert_eq!(query["state"], "st-123");
            query["error"].clone()
        }
    };
    let plain = authorize_url(&base, &client_id, &challenge, "customers:read")
        .replace("code_challenge_method=S256", "code_challenge_method=plain");
    assert_eq!(refused(plain).await, "invalid_request");
    let missing = authorize_url(&base, &client_id, &challenge, "customers:read")
        .replace(&format!("code_challenge={challenge}&"), "");
    assert_eq!(refused(missing).await, "invalid_request");
    let token_type = authorize_url(&base, &client_id, &challenge, "customers:read")
        .replace("response_type=code", "response_type=token");
    assert_eq!(refused(token_type).await, "unsupported_response_type");
    let scope = authorize_url(&base, &client_id, &challenge, "customers:obliterate");
    assert_eq!(refused(scope).await, "invalid_scope");
    let target = authorize_url(&base, &client_id, &challenge, "customers:read").replace(
        &urlencode(&format!("{base}/mcp")),
        &urlencode("https://other.example/mcp"),
    );
    assert_eq!(refused(target).await, "invalid_target");

    // Registration refuses what would let a code leak, and says why.
    for (uris, why) in [
        (json!(["http://evil.example/cb"]), "invalid_redirect_uri"),
        (
            json!(["https://app.example/cb#frag"]),
            "invalid_redirect_uri",
        ),
        (json!([]), "invalid_redirect_uri"),
    ] {
        let (status, body) = register(&base, uris.clone()).await;
        assert_eq!((status, body["error"].as_str()), (400, Some(why)), "{uris}");
    }
    let response = reqwest::Client::new()
        .post(format!("{base}/oauth/register"))
        .json(&json!({ "redirect_uris": [REDIRECT], "token_endpoint_auth_method": "client_secret_basic" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);

    // A made-up code, and a grant without PKCE: invalid_grant / invalid_request.
    let (status, body) = token(
        &base,
        &[
            ("grant_type", "authorization_code"),
            ("code", "made-up"),
            ("client_id", &client_id),
            ("code_verifier", &"a".repeat(43)),
        ],
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    let (status, body) = token(
        &base,
        &[
            ("grant_type", "authorization_code"),
            ("code", "made-up"),
            ("client_id", &client_id),
        ],
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_request"))
    );
    // Nothing was issued, to anyone.
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    let codes: i64 = sqlx::query_scalar("SELECT count(*) FROM authorization_codes")
        .fetch_one(&pool)
        .await
        .unwrap();
    let refresh: i64 = sqlx::query_scalar("SELECT count(*) FROM refresh_tokens")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!((codes, refresh), (0, 0));
}

fn urlencode(text: &str) -> String {
    serde_urlencoded::to_string([("x", text)]).unwrap()[2..].to_owned()
}

#[tokio::test]
async fn an_invited_person_sets_a_password_once_and_signs_in() {
    let db = TestDb::new().await;
    let server = HttpServer::start(db.command(&["http"]));
    let base = server.base.clone();
    let admin = http_client(&server.mcp_url(), &db.admin_key, Generation::Stateless).await;
    let invite = call_ok(
        &admin,
        "invite_user",
        json!({ "email": "nina@acme.test", "name": "Nina", "scopes": ["customers:read"] }),
    )
    .await;
    assert_eq!(invite["created"], true, "{invite}");
    // What no user may have is refused as such, and invites no one: an address of two
    // characters (three bytes), a name over 200 characters, or a local part over 200
    // characters when no name is given.
    let long_local = format!("{}@acme.test", "l".repeat(201));
    for bad in [
        json!({ "email": "é@" }),
        json!({ "email": "long@acme.test", "name": "n".repeat(201) }),
        json!({ "email": long_local }),
    ] {
        let refused = call(&admin, "invite_user", bad.clone()).await;
        assert_eq!(
            error_code(&refused),
            "invalid_request",
            "{bad}: {refused:?}"
        );
    }
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    let invited: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM users WHERE email IN ('é@', 'long@acme.test', $1)",
    )
    .bind(&long_local)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(invited, 0);
    let link = invite["invite_url"].as_str().unwrap().to_owned();
    assert!(link.starts_with(&format!("{base}/invite/")), "{link}");
    admin.cancel().await.unwrap();

    let mut browser = Browser::new();
    let page = browser.get(&link).await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("nina@acme.test"));
    let csrf = hidden_fields(&page.body);
    let form = |password: &str, confirm: &str, with_csrf: bool| {
        let mut form: Vec<(String, String)> = vec![
            ("password".into(), password.into()),
            ("confirm".into(), confirm.into()),
        ];
        if with_csrf {
            form.extend(csrf.iter().cloned());
        }
        form
    };
    let forged = browser.post(&link, &form(PASSWORD, PASSWORD, false)).await;
    assert_eq!(forged.status, 403);
    let differ = browser
        .post(&link, &form(PASSWORD, "something else entirely", true))
        .await;
    assert_eq!(differ.status, 400);
    assert!(differ.body.contains("differ"));
    let short = browser.post(&link, &form("short", "short", true)).await;
    assert_eq!(short.status, 400);
    let done = browser.post(&link, &form(PASSWORD, PASSWORD, true)).await;
    assert_eq!(done.status, 200, "{}", done.body);
    assert!(done.body.contains("Your password is set"));
    let again = browser.get(&link).await;
    assert_eq!(again.status, 404, "an invitation works once");

    // Nina signs in from a client with it.
    let (_, client) = register(&base, json!([REDIRECT])).await;
    let (_, challenge) = pkce();
    let url = authorize_url(
        &base,
        client["client_id"].as_str().unwrap(),
        &challenge,
        "customers:read",
    );
    let page = browser.get(&url).await;
    let mut form = hidden_fields(&page.body);
    form.push(("action".into(), "signin".into()));
    form.push(("email".into(), "nina@acme.test".into()));
    form.push(("password".into(), PASSWORD.into()));
    let signed = browser
        .post(&format!("{base}/oauth/authorize"), &form)
        .await;
    assert_eq!(signed.status, 303, "{}", signed.body);
}
