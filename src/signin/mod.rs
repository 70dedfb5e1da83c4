//! People connect from remote MCP clients (OAuth 2.1 authorization code grant with PKCE):
//! `/oauth/authorize` shows the sign-in and consent pages and sends the browser back to the
//! client with a code, which the client exchanges at `/oauth/token`; `/oauth/register` is
//! Dynamic Client Registration. The store side is `access::signin`.
//!
//! Forms carry a CSRF token that must match a cookie (double submit); the sign-in session
//! cookie is `HttpOnly`, `SameSite=Lax`, and `Secure` except on loopback.

pub mod clients;
pub mod pages;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use reqwest::Url;
use serde_json::json;

use crate::access::audit::AuditEvent;
use crate::access::federation;
use crate::access::oauth::base_url;
use crate::access::scopes::Scopes;
use crate::access::secrets::random_bytes;
use crate::access::signin::{self, Grant, Person, SigninRefusal};
use crate::access::throttle::Throttle;
use crate::app::App;
use clients::Client;

const SESSION_COOKIE: &str = "agentcrm_session";
const CSRF_COOKIE: &str = "agentcrm_csrf";
/// Scopes clients ask for that are not permissions here: refresh tokens come anyway.
const IGNORED_SCOPES: [&str; 4] = ["offline_access", "openid", "profile", "email"];

pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/oauth/authorize", get(authorize).post(submit))
        .route("/oauth/register", post(register))
        .route("/oauth/federated/callback", get(federated_callback))
        .route("/invite/{token}", get(invite_page).post(invite_submitted))
}

/// The parameters of an authorization request, from the query or the forms that carry it.
#[derive(Debug, Clone, Default)]
struct AuthRequest {
    response_type: String,
    client_id: String,
    redirect_uri: String,
    scope: String,
    state: String,
    code_challenge: String,
    code_challenge_method: String,
    resource: String,
}

/// The first value of the form or query field `name`, or "".
fn field_of<'a>(pairs: &'a [(String, String)], name: &str) -> &'a str {
    pairs
        .iter()
        .find(|(k, _)| k == name)
        .map_or("", |(_, v)| v.as_str())
}

impl AuthRequest {
    fn from_pairs(pairs: &[(String, String)]) -> AuthRequest {
        let get = |name: &str| field_of(pairs, name).to_owned();
        AuthRequest {
            response_type: get("response_type"),
            client_id: get("client_id"),
            redirect_uri: get("redirect_uri"),
            scope: get("scope"),
            state: get("state"),
            code_challenge: get("code_challenge"),
            code_challenge_method: get("code_challenge_method"),
            resource: get("resource"),
        }
    }

    fn fields(&self) -> Vec<(&'static str, &str)> {
        [
            ("response_type", self.response_type.as_str()),
            ("client_id", &self.client_id),
            ("redirect_uri", &self.redirect_uri),
            ("scope", &self.scope),
            ("state", &self.state),
            ("code_challenge", &self.code_challenge),
            ("code_challenge_method", &self.code_challenge_method),
            ("resource", &self.resource),
        ]
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .collect()
    }

    fn query(&self) -> String {
        serde_urlencoded::to_string(self.fields()).unwrap_or_default()
    }
}

/// A request checked: who is asking, where to send the answer, what for.
struct Valid {
    client: Client,
    redirect_uri: String,
    challenge: String,
    /// `None`: nothing asked for; the consent page offers what the person may do.
    requested: Option<Scopes>,
    resource: String,
    issuer: String,
}

/// Why a request cannot go on: shown on a page when the client or its redirect URI cannot
/// be trusted (RFC 6749 §4.1.2.1: never redirect then), sent back to the client otherwise.
enum Refused {
    Page(StatusCode, &'static str, String),
    Redirect(Response),
}

fn html(status: StatusCode, body: String) -> Response {
    page_with_policy(
        status,
        body,
        "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'".into(),
    )
}

fn page_with_policy(status: StatusCode, body: String, policy: String) -> Response {
    let mut response = (status, Html(body)).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert("x-frame-options", HeaderValue::from_static("DENY"));
    if let Ok(value) = HeaderValue::from_str(&policy) {
        headers.insert("content-security-policy", value);
    }
    response
}

/// A page whose form may end at the client's redirect URI (browsers hold a form's redirects
/// to `form-action` too).
fn html_to(status: StatusCode, body: String, redirect_uri: Option<&str>) -> Response {
    let target = redirect_uri
        .and_then(|uri| Url::parse(uri).ok())
        .map(|url| match url.scheme() {
            "http" | "https" => url.origin().ascii_serialization(),
            scheme => format!("{scheme}:"),
        })
        .map_or_else(String::new, |source| format!(" {source}"));
    page_with_policy(
        status,
        body,
        format!(
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'{target}; frame-ancestors 'none'"
        ),
    )
}

/// The server could not finish (the database, most likely): nothing was done.
fn unavailable(message: &str) -> Response {
    error_page(StatusCode::SERVICE_UNAVAILABLE, "Try again later", message)
}

fn error_page(status: StatusCode, title: &str, message: &str) -> Response {
    html(status, pages::error(title, message))
}

/// 303 to `uri` with `params` added to its query (and `iss`, RFC 9207).
fn redirect_to(uri: &str, issuer: &str, params: &[(&str, &str)]) -> Response {
    let Ok(mut url) = Url::parse(uri) else {
        return error_page(
            StatusCode::BAD_REQUEST,
            "Invalid redirect",
            "The redirect URI is not valid.",
        );
    };
    {
        let mut query = url.query_pairs_mut();
        for (name, value) in params.iter().filter(|(_, v)| !v.is_empty()) {
            query.append_pair(name, value);
        }
        query.append_pair("iss", issuer);
    }
    see_other(url.as_str())
}

fn see_other(location: &str) -> Response {
    let mut response = StatusCode::SEE_OTHER.into_response();
    if let Ok(value) = HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn refuse_to_client(v: &AuthRequest, issuer: &str, error: &str, description: &str) -> Refused {
    Refused::Redirect(redirect_to(
        &v.redirect_uri,
        issuer,
        &[
            ("error", error),
            ("error_description", description),
            ("state", &v.state),
        ],
    ))
}

async fn validate(app: &App, headers: &HeaderMap, request: &AuthRequest) -> Result<Valid, Refused> {
    let Some(keys) = app.tokens.as_ref() else {
        return Err(Refused::Page(
            StatusCode::SERVICE_UNAVAILABLE,
            "Sign-in is not available",
            "This server does not issue tokens: its operator must set AGENTCRM_JWT_SECRET.".into(),
        ));
    };
    let issuer = base_url(app, headers);
    if request.client_id.is_empty() {
        return Err(Refused::Page(
            StatusCode::BAD_REQUEST,
            "Unknown application",
            "The request names no client_id.".into(),
        ));
    }
    let client = match clients::find(app, &request.client_id).await {
        Ok(Ok(client)) => client,
        Ok(Err(refusal)) => {
            return Err(Refused::Page(
                StatusCode::BAD_REQUEST,
                "Unknown application",
                refusal.description,
            ));
        }
        Err(error) => {
            tracing::error!(%error, "looking up a client failed");
            return Err(Refused::Page(
                StatusCode::SERVICE_UNAVAILABLE,
                "Try again later",
                "The server could not check this application.".into(),
            ));
        }
    };
    let redirect_uri = match (
        request.redirect_uri.as_str(),
        client.redirect_uris.as_slice(),
    ) {
        ("", [only]) => only.clone(),
        ("", _) => {
            return Err(Refused::Page(
                StatusCode::BAD_REQUEST,
                "Invalid request",
                "The request names no redirect_uri.".into(),
            ));
        }
        (uri, _) if clients::redirect_allowed(&client, uri) => uri.to_owned(),
        (uri, _) => {
            return Err(Refused::Page(
                StatusCode::BAD_REQUEST,
                "Invalid redirect",
                format!("`{uri}` is not a redirect URI registered for this application."),
            ));
        }
    };
    let answer = AuthRequest {
        redirect_uri: redirect_uri.clone(),
        ..request.clone()
    };
    if request.response_type != "code" {
        return Err(refuse_to_client(
            &answer,
            &issuer,
            "unsupported_response_type",
            "Only response_type=code is supported.",
        ));
    }
    if request.code_challenge.is_empty() {
        return Err(refuse_to_client(
            &answer,
            &issuer,
            "invalid_request",
            "PKCE is required: send code_challenge with code_challenge_method=S256.",
        ));
    }
    if request.code_challenge_method != "S256" {
        return Err(refuse_to_client(
            &answer,
            &issuer,
            "invalid_request",
            "Only code_challenge_method=S256 is supported (plain is refused).",
        ));
    }
    if request.code_challenge.len() != 43
        || !request
            .code_challenge
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(refuse_to_client(
            &answer,
            &issuer,
            "invalid_request",
            "code_challenge must be the base64url SHA-256 of the verifier (43 characters).",
        ));
    }
    if !request.resource.is_empty() && request.resource.trim_end_matches('/') != keys.audience {
        return Err(refuse_to_client(
            &answer,
            &issuer,
            "invalid_target",
            &format!("This server issues tokens only for {}.", keys.audience),
        ));
    }
    let names: Vec<&str> = request
        .scope
        .split_whitespace()
        .filter(|s| !IGNORED_SCOPES.contains(s))
        .collect();
    let requested = if names.is_empty() {
        None
    } else {
        match Scopes::parse(&names) {
            Ok(scopes) => Some(scopes),
            Err(error) => {
                return Err(refuse_to_client(
                    &answer,
                    &issuer,
                    "invalid_scope",
                    &error.to_string(),
                ));
            }
        }
    };
    Ok(Valid {
        client,
        redirect_uri,
        challenge: request.code_challenge.clone(),
        requested,
        resource: keys.audience.clone(),
        issuer,
    })
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
        .filter(|v| !v.is_empty())
}

/// `Secure` unless the server is reached over plain HTTP on loopback (the embedded default).
fn secure(issuer: &str) -> bool {
    Url::parse(issuer).map_or(true, |url| !clients::loopback_http(&url))
}

/// A cookie for the pages under `path`: `HttpOnly; SameSite=Lax`, `Secure` when `secure`.
fn set_cookie(
    response: &mut Response,
    path: &str,
    (name, value): (&str, &str),
    max_age: i64,
    secure: bool,
) {
    let value = format!(
        "{name}={value}; Path={path}; Max-Age={max_age}; HttpOnly; SameSite=Lax{}",
        if secure { "; Secure" } else { "" }
    );
    if let Ok(value) = HeaderValue::from_str(&value) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
}

/// The signed-in browser's cookie.
fn set_session(response: &mut Response, session: &str, issuer: &str) {
    let max_age = i64::from(signin::SESSION_HOURS) * 3600;
    set_cookie(
        response,
        "/oauth",
        (SESSION_COOKIE, session),
        max_age,
        secure(issuer),
    );
}

/// The CSRF token of this browser: its cookie's, or a new one (set on the response).
fn csrf_token(headers: &HeaderMap) -> (String, bool) {
    match cookie(headers, CSRF_COOKIE) {
        Some(token) if token.len() >= 32 => (token, false),
        _ => (URL_SAFE_NO_PAD.encode(random_bytes::<32>()), true),
    }
}

async fn signed_in(app: &App, headers: &HeaderMap) -> Option<Person> {
    let value = cookie(headers, SESSION_COOKIE)?;
    match signin::session_person(app.store.pool(), &value).await {
        Ok(person) => person,
        Err(error) => {
            tracing::error!(%error, "reading a sign-in session failed");
            None
        }
    }
}

/// What the person may grant this client: what it asked for, within their role.
/// What the person may grant this client: what it asks for now and what they allowed it
/// before (asking for one more scope keeps the others: incremental consent), within their role.
async fn offered(app: &App, valid: &Valid, person: &Person) -> Scopes {
    let before = signin::consented_scopes(app.store.pool(), person, &valid.client.client_id)
        .await
        .unwrap_or_else(|error| {
            tracing::error!(%error, "reading a consent failed");
            Scopes::NONE
        });
    valid
        .requested
        .unwrap_or(person.allowed)
        .union(before)
        .intersect(person.allowed)
}

fn hidden_fields(request: &AuthRequest, csrf: &str) -> String {
    let mut fields = request.fields();
    fields.push(("csrf", csrf));
    pages::hidden(&fields)
}

fn consent_page(
    valid: &Valid,
    request: &AuthRequest,
    person: &Person,
    offered: Scopes,
    csrf: &str,
    error: Option<&str>,
) -> String {
    let host = Url::parse(&valid.redirect_uri)
        .ok()
        .and_then(|u| u.host_str().map(str::to_owned))
        .unwrap_or_else(|| valid.redirect_uri.clone());
    let names = offered.names();
    pages::consent(&pages::ConsentPage {
        client_name: &valid.client.client_name,
        redirect_host: &host,
        person: &person.email,
        organization: &person.tenant_slug,
        scopes: names.iter().map(|s| (*s, pages::describe(s))).collect(),
        hidden: hidden_fields(request, csrf),
        error,
    })
}

fn signin_page(
    valid: &Valid,
    request: &AuthRequest,
    csrf: &str,
    error: Option<&str>,
    email: &str,
    organization: &str,
    ask_organization: bool,
) -> String {
    pages::signin(&pages::SigninPage {
        client_name: &valid.client.client_name,
        hidden: hidden_fields(request, csrf),
        error,
        email,
        organization,
        ask_organization,
    })
}

fn with_csrf(mut response: Response, token: &str, new: bool, issuer: &str) -> Response {
    if new {
        set_cookie(
            &mut response,
            "/oauth",
            (CSRF_COOKIE, token),
            3600,
            secure(issuer),
        );
    }
    response
}

/// GET /oauth/authorize: the sign-in page, or the consent page for a signed-in person.
async fn authorize(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(query.as_deref().unwrap_or_default()).unwrap_or_default();
    let request = AuthRequest::from_pairs(&pairs);
    let valid = match validate(&app, &headers, &request).await {
        Ok(valid) => valid,
        Err(Refused::Page(status, title, message)) => return error_page(status, title, &message),
        Err(Refused::Redirect(response)) => return response,
    };
    let (csrf, new) = csrf_token(&headers);
    let page = match signed_in(&app, &headers).await {
        Some(person) => {
            let offered = offered(&app, &valid, &person).await;
            if offered.is_empty() {
                return redirect_to(
                    &valid.redirect_uri,
                    &valid.issuer,
                    &[
                        ("error", "invalid_scope"),
                        (
                            "error_description",
                            "Your role allows none of the permissions asked for.",
                        ),
                        ("state", &request.state),
                    ],
                );
            }
            let body = consent_page(&valid, &request, &person, offered, &csrf, None);
            html_to(StatusCode::OK, body, Some(&valid.redirect_uri))
        }
        // The sign-in forms may end at the organization's provider: no form-action there.
        None => html(
            StatusCode::OK,
            signin_page(&valid, &request, &csrf, None, "", "", false),
        ),
    };
    with_csrf(page, &csrf, new, &valid.issuer)
}

/// POST /oauth/authorize: the sign-in form, or the consent form (allow or deny).
async fn submit(
    State(app): State<Arc<App>>,
    source: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let source = source.map(|Extension(ConnectInfo(address))| address.ip());
    let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(&body).unwrap_or_default();
    let field = |name: &str| field_of(&pairs, name);
    let request = AuthRequest::from_pairs(&pairs);
    let valid = match validate(&app, &headers, &request).await {
        Ok(valid) => valid,
        Err(Refused::Page(status, title, message)) => return error_page(status, title, &message),
        Err(Refused::Redirect(response)) => return response,
    };
    // Double-submit CSRF: the form's token must be this browser's cookie.
    let (csrf, _) = csrf_token(&headers);
    let sent = field("csrf");
    if cookie(&headers, CSRF_COOKIE).is_none() || sent.is_empty() || sent != csrf {
        return error_page(
            StatusCode::FORBIDDEN,
            "The form has expired",
            "This form was not sent by this page (or it expired). Nothing was changed.",
        );
    }
    match field("action") {
        "signin" => {
            signin_submitted(
                &app,
                source,
                &valid,
                &request,
                &csrf,
                field("organization"),
                field("email"),
                field("password"),
            )
            .await
        }
        "federate" => federate(&app, &valid, &request, &csrf, field("organization")).await,
        "consent" | "deny" => {
            let Some(person) = signed_in(&app, &headers).await else {
                let body = signin_page(
                    &valid,
                    &request,
                    &csrf,
                    Some("Sign in first."),
                    "",
                    "",
                    false,
                );
                return html(StatusCode::UNAUTHORIZED, body);
            };
            if field("action") == "deny" {
                audit(&app, Some(&person), "consent.denied", "refused", &valid).await;
                return redirect_to(
                    &valid.redirect_uri,
                    &valid.issuer,
                    &[
                        ("error", "access_denied"),
                        ("error_description", "The person denied access."),
                        ("state", &request.state),
                    ],
                );
            }
            let ticked: Vec<&str> = pairs
                .iter()
                .filter(|(k, _)| k == "grant")
                .map(|(_, v)| v.as_str())
                .collect();
            // Names this build does not know grant nothing; the rest within what was offered.
            let ticked = ticked
                .iter()
                .filter_map(|s| Scopes::parse(&[*s]).ok())
                .fold(Scopes::NONE, Scopes::union);
            let offered = offered(&app, &valid, &person).await;
            let granted = ticked.intersect(offered);
            if granted.is_empty() {
                let body = consent_page(
                    &valid,
                    &request,
                    &person,
                    offered,
                    &csrf,
                    Some("Tick at least one permission, or deny."),
                );
                return html_to(StatusCode::BAD_REQUEST, body, Some(&valid.redirect_uri));
            }
            let grant = Grant {
                client_id: valid.client.client_id.clone(),
                redirect_uri: valid.redirect_uri.clone(),
                code_challenge: valid.challenge.clone(),
                scopes: granted,
                resource: valid.resource.clone(),
            };
            match signin::issue_code(app.store.pool(), &person, &grant).await {
                Ok(code) => {
                    audit(&app, Some(&person), "consent.granted", "ok", &valid).await;
                    redirect_to(
                        &valid.redirect_uri,
                        &valid.issuer,
                        &[("code", &code), ("state", &request.state)],
                    )
                }
                Err(error) => {
                    tracing::error!(%error, "issuing an authorization code failed");
                    unavailable("The server could not complete the sign-in.")
                }
            }
        }
        _ => error_page(
            StatusCode::BAD_REQUEST,
            "Invalid request",
            "Unknown form action.",
        ),
    }
}

/// The organization signs in through its OpenID provider: off to it, to come back to
/// `/oauth/federated/callback` and then to this authorization request.
async fn federate(
    app: &App,
    valid: &Valid,
    request: &AuthRequest,
    csrf: &str,
    organization: &str,
) -> Response {
    let pool = app.store.pool();
    let provider = match federation::provider_of(pool, organization).await {
        Ok(Some(provider)) => provider,
        Ok(None) => {
            let body = signin_page(
                valid,
                request,
                csrf,
                Some(
                    "That organization does not sign in through a provider here: use your email and password.",
                ),
                "",
                organization,
                false,
            );
            return html(StatusCode::OK, body);
        }
        Err(error) => {
            tracing::error!(%error, "reading an identity provider failed");
            return unavailable("The server could not start the sign-in.");
        }
    };
    let (tenant_id, provider) = provider;
    let Ok(http) = app.http() else {
        return unavailable("The server cannot reach outside services.");
    };
    let callback = format!("{}/oauth/federated/callback", valid.issuer);
    match federation::begin(
        pool,
        &http,
        tenant_id,
        &provider,
        &callback,
        &request.query(),
    )
    .await
    {
        Ok(url) => see_other(&url),
        Err(error) => {
            tracing::warn!(%error, "starting a federated sign-in failed");
            error_page(
                StatusCode::BAD_GATEWAY,
                "Your organization's sign-in is unavailable",
                &error.to_string(),
            )
        }
    }
}

/// GET /oauth/federated/callback: the organization's provider sends the browser back.
async fn federated_callback(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(query.as_deref().unwrap_or_default()).unwrap_or_default();
    let get = |name: &str| field_of(&pairs, name);
    let refused = |message: &str| error_page(StatusCode::BAD_REQUEST, "Sign-in failed", message);
    if !get("error").is_empty() {
        return refused(&format!(
            "Your organization's sign-in answered: {} {}",
            get("error"),
            get("error_description")
        ));
    }
    let (Some(vault), Ok(http)) = (app.vault.as_ref(), app.http()) else {
        return error_page(
            StatusCode::SERVICE_UNAVAILABLE,
            "Sign-in is not available",
            "This server has no encryption key, or cannot reach outside services.",
        );
    };
    let issuer = base_url(&app, &headers);
    let callback = format!("{issuer}/oauth/federated/callback");
    let pool = app.store.pool();
    let vouched = match federation::finish(pool, vault, &http, get("state"), get("code"), &callback)
        .await
    {
        Ok(vouched) => vouched,
        Err(error) => {
            let mut event = AuditEvent::anonymous("auth", "signin.failed", "refused");
            event.transport = Some("http");
            event.arguments = Some(json!({ "method": "federated", "reason": error.to_string() }));
            app.audit.record(event).await;
            return refused(&error.to_string());
        }
    };
    let person = match federation::person_for(pool, &vouched).await {
        Ok(Some((user_id, _created))) => {
            signin::person_by_id(pool, vouched.tenant_id, user_id).await
        }
        Ok(None) => {
            return refused(&format!(
                "{} has no account in this organization; ask an admin to add you.",
                vouched.email
            ));
        }
        Err(error) => Err(error),
    };
    let person = match person {
        Ok(Some(person)) => person,
        Ok(None) => return refused("Your account is gone."),
        Err(error) => {
            tracing::error!(%error, "finding a federated person failed");
            return unavailable("The server could not complete the sign-in.");
        }
    };
    let mut event = AuditEvent::by(
        &person.principal(Scopes::NONE),
        "auth",
        "signin.succeeded",
        "ok",
    );
    event.transport = Some("http");
    event.arguments = Some(json!({ "method": "federated", "email": person.email }));
    app.audit.record(event).await;
    let session = match signin::open_session(pool, &person).await {
        Ok(session) => session,
        Err(error) => {
            tracing::error!(%error, "opening a sign-in session failed");
            return unavailable("The server could not complete the sign-in.");
        }
    };
    let mut response = see_other(&format!("/oauth/authorize?{}", vouched.resume));
    set_session(&mut response, &session, &issuer);
    response
}

#[allow(clippy::too_many_arguments)]
async fn signin_submitted(
    app: &App,
    source: Option<IpAddr>,
    valid: &Valid,
    request: &AuthRequest,
    csrf: &str,
    organization: &str,
    email: &str,
    password: &str,
) -> Response {
    let throttle = Throttle::global();
    let mut keys = vec![format!("signin:{}", email.trim().to_lowercase())];
    if let Some(address) = source {
        keys.push(format!("address:{address}"));
    }
    if let Err(seconds) = throttle.check(&keys) {
        let message = format!("Too many failed sign-ins; try again in {seconds} s.");
        let body = signin_page(
            valid,
            request,
            csrf,
            Some(&message),
            email,
            organization,
            !organization.is_empty(),
        );
        let mut response = html(StatusCode::TOO_MANY_REQUESTS, body);
        if let Ok(value) = seconds.to_string().parse() {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        return response;
    }
    let organization = organization.trim();
    let checked = signin::check_password(
        app.store.pool(),
        Some(organization).filter(|o| !o.is_empty()),
        email,
        password,
    )
    .await;
    match checked {
        Ok(Ok(person)) => {
            throttle.succeeded(&keys[0]);
            audit(app, Some(&person), "signin.succeeded", "ok", valid).await;
            let session = match signin::open_session(app.store.pool(), &person).await {
                Ok(session) => session,
                Err(error) => {
                    tracing::error!(%error, "opening a sign-in session failed");
                    return unavailable("The server could not complete the sign-in.");
                }
            };
            let mut response = see_other(&format!("/oauth/authorize?{}", request.query()));
            set_session(&mut response, &session, &valid.issuer);
            response
        }
        Ok(Err(SigninRefusal::WhichOrganization)) => {
            let body = signin_page(
                valid,
                request,
                csrf,
                Some("This email is used in several organizations: name yours."),
                email,
                organization,
                true,
            );
            html(StatusCode::OK, body)
        }
        Ok(Err(SigninRefusal::Wrong)) => {
            throttle.failed(&keys);
            audit(app, None, "signin.failed", "refused", valid).await;
            let body = signin_page(
                valid,
                request,
                csrf,
                Some("The email or password is wrong."),
                email,
                organization,
                !organization.is_empty(),
            );
            html(StatusCode::UNAUTHORIZED, body)
        }
        Err(error) => {
            tracing::error!(%error, "checking a password failed");
            unavailable("The server could not check your password.")
        }
    }
}

async fn audit(
    app: &App,
    person: Option<&Person>,
    action: &str,
    outcome: &'static str,
    valid: &Valid,
) {
    let mut event = match person {
        Some(person) => AuditEvent::by(&person.principal(Scopes::NONE), "auth", action, outcome),
        None => AuditEvent::anonymous("auth", action, outcome),
    };
    event.transport = Some("http");
    event.arguments = Some(json!({
        "client_id": valid.client.client_id,
        "client_name": valid.client.client_name,
        "redirect_uri": valid.redirect_uri,
    }));
    app.audit.record(event).await;
}

/// GET /invite/{token}: the page where an invited person sets their password.
async fn invite_page(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    axum::extract::Path(token): axum::extract::Path<String>,
) -> Response {
    let issuer = base_url(&app, &headers);
    match signin::invite_person(app.store.pool(), &token).await {
        Ok(Some(person)) => {
            let (csrf, new) = csrf_token(&headers);
            let page = pages::invite(&person.email, &person.tenant_slug, &csrf, None);
            let mut response = html(StatusCode::OK, page);
            if new {
                set_cookie(
                    &mut response,
                    "/invite",
                    (CSRF_COOKIE, &csrf),
                    3600,
                    secure(&issuer),
                );
            }
            response
        }
        Ok(None) => error_page(
            StatusCode::NOT_FOUND,
            "This invitation does not work",
            "It is unknown, already used or expired: ask an admin for a new one.",
        ),
        Err(error) => {
            tracing::error!(%error, "reading an invitation failed");
            unavailable("The server could not read the invitation.")
        }
    }
}

/// POST /invite/{token}: sets the password, once.
async fn invite_submitted(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    axum::extract::Path(token): axum::extract::Path<String>,
    body: Bytes,
) -> Response {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(&body).unwrap_or_default();
    let field = |name: &str| field_of(&pairs, name);
    let sent = field("csrf");
    if sent.is_empty() || cookie(&headers, CSRF_COOKIE).as_deref() != Some(sent) {
        return error_page(
            StatusCode::FORBIDDEN,
            "The form has expired",
            "This form was not sent by this page (or it expired). Nothing was changed.",
        );
    }
    let pool = app.store.pool();
    let person = match signin::invite_person(pool, &token).await {
        Ok(Some(person)) => person,
        Ok(None) => {
            return error_page(
                StatusCode::NOT_FOUND,
                "This invitation does not work",
                "It is unknown, already used or expired: ask an admin for a new one.",
            );
        }
        Err(error) => {
            tracing::error!(%error, "reading an invitation failed");
            return unavailable("The server could not read the invitation.");
        }
    };
    let (password, confirm) = (field("password"), field("confirm"));
    let problem = if password.chars().count() < signin::MIN_PASSWORD_LEN {
        Some("The password needs at least 12 characters.")
    } else if password != confirm {
        Some("The two passwords differ.")
    } else {
        None
    };
    if let Some(problem) = problem {
        let page = pages::invite(&person.email, &person.tenant_slug, sent, Some(problem));
        return html(StatusCode::BAD_REQUEST, page);
    }
    match signin::accept_invite(pool, &token, password).await {
        Ok(Some(person)) => {
            let mut event = AuditEvent::by(
                &person.principal(Scopes::NONE),
                "auth",
                "password.set",
                "ok",
            );
            event.transport = Some("http");
            event.arguments = Some(json!({ "method": "invite" }));
            app.audit.record(event).await;
            html(
                StatusCode::OK,
                pages::message(
                    "Your password is set",
                    "Go back to your application and sign in with your email and this password.",
                ),
            )
        }
        Ok(None) => error_page(
            StatusCode::NOT_FOUND,
            "This invitation does not work",
            "It was used a moment ago, or expired.",
        ),
        Err(error) => {
            tracing::error!(%error, "setting a password failed");
            unavailable("The server could not set the password.")
        }
    }
}

/// POST /oauth/register: RFC 7591 Dynamic Client Registration (public clients).
async fn register(
    State(app): State<Arc<App>>,
    source: Option<Extension<ConnectInfo<SocketAddr>>>,
    body: Bytes,
) -> Response {
    let source = source.map(|Extension(ConnectInfo(address))| address.ip());
    let refusal = |status: StatusCode, error: &str, description: &str| {
        let mut response = (
            status,
            Json(json!({ "error": error, "error_description": description })),
        )
            .into_response();
        response
            .headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        response
    };
    let request: clients::Registration = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(error) => {
            return refusal(
                StatusCode::BAD_REQUEST,
                "invalid_client_metadata",
                &format!("The registration is not valid JSON client metadata: {error}"),
            );
        }
    };
    match clients::register(&app, source, request).await {
        Ok(Ok(client)) => {
            let mut response = (StatusCode::CREATED, Json(client)).into_response();
            response
                .headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            response
        }
        Ok(Err(refused)) if refused.error == "slow_down" => refusal(
            StatusCode::TOO_MANY_REQUESTS,
            refused.error,
            &refused.description,
        ),
        Ok(Err(refused)) => refusal(StatusCode::BAD_REQUEST, refused.error, &refused.description),
        Err(error) => {
            tracing::error!(%error, "registering a client failed");
            refusal(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                "Retry later.",
            )
        }
    }
}
