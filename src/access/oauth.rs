//! The OAuth2 endpoints (RFC 6749 client credentials and refresh, RFC 7009 revocation,
//! RFC 7662 introspection) and the metadata documents of RFC 8414 and RFC 9728.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use base64::Engine;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use super::audit::AuditEvent;
use super::cache::CacheKey;
use super::identity::{self, AuthError, Credential};
use super::scopes::{self, Scopes};
use super::signin;
use super::tokens;
use super::{Principal, PrincipalKind};

use crate::app::App;

/// Token issues (and refreshes) per agent per hour (SPEC §1 default).
pub const TOKEN_ISSUES_PER_HOUR: i64 = 10;
/// Token issues (sign-ins and refreshes) per person per hour, over all their clients: a
/// client refreshes when its token expires, and steps up when a tool needs more.
pub const PERSON_TOKEN_ISSUES_PER_HOUR: i64 = 120;

struct OAuthError {
    status: StatusCode,
    error: &'static str,
    description: String,
    retry_after: Option<u64>,
}

impl OAuthError {
    fn new(status: StatusCode, error: &'static str, description: impl Into<String>) -> OAuthError {
        OAuthError {
            status,
            error,
            description: description.into(),
            retry_after: None,
        }
    }

    fn invalid_client() -> OAuthError {
        OAuthError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "Client authentication failed: unknown client, wrong secret, or a disabled agent.",
        )
    }

    fn internal() -> OAuthError {
        OAuthError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "internal",
            "The server could not complete this request; retry later.",
        )
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let request_id = uuid::Uuid::now_v7().to_string();
        let mut body = json!({
            "error": self.error,
            "error_description": self.description,
            "request_id": request_id,
        });
        if let Some(seconds) = self.retry_after {
            body["retry_after"] = json!(seconds);
        }
        let mut response = (self.status, Json(body)).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CACHE_CONTROL,
            header::HeaderValue::from_static("no-store"),
        );
        if let Some(seconds) = self.retry_after
            && let Ok(value) = seconds.to_string().parse()
        {
            headers.insert(header::RETRY_AFTER, value);
        }
        if self.error == "invalid_client" {
            headers.insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Basic realm=\"agentcrm\""),
            );
        }
        response
    }
}

/// JSON or form bodies, as clients choose.
fn parse_body<T: DeserializeOwned>(headers: &HeaderMap, body: &Bytes) -> Result<T, OAuthError> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let parsed = if is_json {
        serde_json::from_slice(body).map_err(|e| e.to_string())
    } else {
        serde_urlencoded::from_bytes(body).map_err(|e| e.to_string())
    };
    parsed.map_err(|e| {
        OAuthError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!("Malformed request body: {e}"),
        )
    })
}

/// Client credentials from HTTP Basic (client_secret_basic) or the body (client_secret_post).
fn client_credentials(
    headers: &HeaderMap,
    id: Option<String>,
    secret: Option<String>,
) -> Option<(String, String)> {
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| {
            base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .ok()
        })
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .and_then(|pair| {
            pair.split_once(':')
                .map(|(i, s)| (i.to_owned(), s.to_owned()))
        });
    basic.or(match (id, secret) {
        (Some(id), Some(secret)) => Some((id, secret)),
        _ => None,
    })
}

#[derive(Deserialize)]
struct TokenRequest {
    grant_type: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
    refresh_token: Option<String>,
    /// Space-separated; narrows the agent's scopes.
    scope: Option<String>,
    /// The authorization code grant (a person signing in through a client).
    code: Option<String>,
    redirect_uri: Option<String>,
    code_verifier: Option<String>,
    /// RFC 8707: the protected resource the token is for (this server's `/mcp`).
    resource: Option<String>,
}

pub async fn token(
    State(app): State<Arc<App>>,
    source: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let source = source.map(|Extension(ConnectInfo(address))| address.ip());
    match issue(&app, source, &headers, &body).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

/// A client authentication refused for too many failures: 429 with `retry_after`.
fn throttled(seconds: u64) -> OAuthError {
    let mut error = OAuthError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "slow_down",
        format!(
            "Too many failed client authentications for this client or address; retry in \
             {seconds} s."
        ),
    );
    error.retry_after = Some(seconds);
    error
}

async fn issue(
    app: &App,
    source: Option<IpAddr>,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Response, OAuthError> {
    let request: TokenRequest = parse_body(headers, body)?;
    let Some(keys) = app.tokens.as_ref() else {
        return Err(OAuthError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable",
            "Token issuing is not configured on this server: set AGENTCRM_JWT_SECRET (32+ characters).",
        ));
    };
    let pool = app.store.pool();
    let (agent, client_id, action, requested) = match request.grant_type.as_deref() {
        Some("client_credentials") => {
            let (id, secret) =
                client_credentials(headers, request.client_id, request.client_secret).ok_or_else(
                    || {
                        OAuthError::new(
                            StatusCode::BAD_REQUEST,
                            "invalid_request",
                            "client_id and client_secret are required.",
                        )
                    },
                )?;
            let agent = match identity::authenticate_from(
                pool,
                Credential::Client {
                    id: &id,
                    secret: &secret,
                },
                source,
            )
            .await
            {
                Ok(agent) => agent,
                Err(AuthError::Store(_)) => return Err(OAuthError::internal()),
                Err(AuthError::Throttled(seconds)) => {
                    refused(app, "token.issued").await;
                    return Err(throttled(seconds));
                }
                Err(_) => {
                    refused(app, "token.issued").await;
                    return Err(OAuthError::invalid_client());
                }
            };
            (agent, id, "token.issued", request.scope)
        }
        Some("authorization_code") => {
            let missing = |what: &str| {
                OAuthError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    format!("{what} is required for the authorization_code grant."),
                )
            };
            let client_id = request
                .client_id
                .clone()
                .ok_or_else(|| missing("client_id"))?;
            let code = request.code.as_deref().ok_or_else(|| missing("code"))?;
            let verifier = request
                .code_verifier
                .as_deref()
                .ok_or_else(|| missing("code_verifier (PKCE)"))?;
            if request
                .resource
                .as_deref()
                .is_some_and(|r| r.trim_end_matches('/') != keys.audience)
            {
                return Err(OAuthError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_target",
                    format!("This server issues tokens only for {}.", keys.audience),
                ));
            }
            match signin::redeem_code(
                pool,
                code,
                &client_id,
                request.redirect_uri.as_deref(),
                verifier,
                request.resource.as_deref(),
            )
            .await
            {
                Ok(Ok((person, _resource))) => (person, client_id, "token.issued", None::<String>),
                Ok(Err(refusal)) => {
                    tracing::info!(?refusal, "authorization code refused");
                    refused(app, "token.issued").await;
                    return Err(OAuthError::new(
                        StatusCode::BAD_REQUEST,
                        "invalid_grant",
                        "The authorization code is unknown, used, expired, issued to another \
                         client or redirect URI, or the code_verifier does not match.",
                    ));
                }
                Err(_) => return Err(OAuthError::internal()),
            }
        }
        Some("refresh_token") => {
            let token = request.refresh_token.ok_or_else(|| {
                OAuthError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "refresh_token is required.",
                )
            })?;
            match tokens::redeem_refresh_token(pool, &token).await {
                // A person's refresh token is bound to the client it was issued to.
                Ok(Some((holder, client_id)))
                    if holder.kind == PrincipalKind::User
                        && request.client_id.as_deref().is_some_and(|c| c != client_id) =>
                {
                    refused(app, "token.refreshed").await;
                    return Err(OAuthError::new(
                        StatusCode::BAD_REQUEST,
                        "invalid_grant",
                        "The refresh token was issued to another client.",
                    ));
                }
                Ok(Some((agent, client_id))) => {
                    (agent, client_id, "token.refreshed", request.scope)
                }
                Ok(None) => {
                    refused(app, "token.refreshed").await;
                    return Err(OAuthError::new(
                        StatusCode::BAD_REQUEST,
                        "invalid_grant",
                        "The refresh token is unknown, already used, revoked or expired, or its agent is disabled.",
                    ));
                }
                Err(_) => return Err(OAuthError::internal()),
            }
        }
        Some(other) => {
            return Err(OAuthError::new(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                format!(
                    "grant_type `{other}` is not supported; use authorization_code, client_credentials or refresh_token."
                ),
            ));
        }
        None => {
            return Err(OAuthError::new(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "grant_type is required.",
            ));
        }
    };
    let scopes = match requested {
        Some(scope) if !scope.trim().is_empty() => {
            let names: Vec<&str> = scope.split_whitespace().collect();
            let wanted = Scopes::parse(&names).map_err(|e| {
                OAuthError::new(StatusCode::BAD_REQUEST, "invalid_scope", e.to_string())
            })?;
            if !agent.scopes.contains(wanted) {
                return Err(OAuthError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_scope",
                    "The requested scope exceeds the agent's scopes.",
                ));
            }
            wanted
        }
        _ => agent.scopes,
    };
    let agent_id = agent.id.unwrap_or_default();
    let (issued, retry) = tokens::recent_issues(pool, agent_id)
        .await
        .map_err(|_| OAuthError::internal())?;
    let (limit, holder) = match agent.kind {
        PrincipalKind::User => (PERSON_TOKEN_ISSUES_PER_HOUR, "person"),
        _ => (TOKEN_ISSUES_PER_HOUR, "agent"),
    };
    if issued >= limit {
        let mut error = OAuthError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!("At most {limit} tokens per hour per {holder}; reuse the token you have."),
        );
        error.retry_after = Some(retry.unwrap_or(60.0).ceil().max(1.0) as u64);
        return Err(error);
    }
    let (access_token, claims) = keys
        .mint(&agent, &client_id, scopes)
        .map_err(|_| OAuthError::internal())?;
    let refresh_token = tokens::issue_refresh_token(pool, &agent, &client_id, scopes)
        .await
        .map_err(|_| OAuthError::internal())?;
    let mut event = AuditEvent::by(&agent, "auth", action, "ok");
    event.transport = Some("http");
    event.arguments =
        Some(json!({ "grant_type": request.grant_type, "scope": claims.scope, "jti": claims.jti }));
    app.audit.record(event).await;
    let body = json!({
        "access_token": access_token,
        "token_type": "Bearer",
        "expires_in": keys.ttl.as_secs(),
        "refresh_token": refresh_token,
        "scope": claims.scope,
    });
    let mut response = Json(body).into_response();
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    Ok(response)
}

async fn refused(app: &App, action: &str) {
    let mut event = AuditEvent::anonymous("auth", action, "refused");
    event.transport = Some("http");
    event.error_code = Some("invalid_client".into());
    app.audit.record(event).await;
}

#[derive(Deserialize)]
struct TokenOnly {
    token: Option<String>,
    #[allow(dead_code)]
    token_type_hint: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
}

/// RFC 7009: holding a token is enough to revoke it; the answer is 200 whether or not the
/// token was valid, so it reveals nothing.
pub async fn revoke(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Response {
    let request: TokenOnly = match parse_body(&headers, &body) {
        Ok(request) => request,
        Err(error) => return error.into_response(),
    };
    let Some(token) = request.token.filter(|t| !t.is_empty()) else {
        return OAuthError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "token is required.",
        )
        .into_response();
    };
    match tokens::revoke(app.store.pool(), app.tokens.as_ref(), &token).await {
        Ok(tenant) => {
            app.auth_cache.invalidate();
            if tenant.is_some() {
                let mut event = AuditEvent::anonymous("auth", "token.revoked", "ok");
                event.tenant_id = tenant;
                event.transport = Some("http");
                app.audit.record(event).await;
            }
            StatusCode::OK.into_response()
        }
        Err(_) => OAuthError::internal().into_response(),
    }
}

/// RFC 7662, for agents: the caller authenticates with its client credentials and learns
/// about tokens of its own tenant only.
pub async fn introspect(
    State(app): State<Arc<App>>,
    source: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let source = source.map(|Extension(ConnectInfo(address))| address.ip());
    let request: TokenOnly = match parse_body(&headers, &body) {
        Ok(request) => request,
        Err(error) => return error.into_response(),
    };
    let Some((id, secret)) = client_credentials(&headers, request.client_id, request.client_secret)
    else {
        return OAuthError::invalid_client().into_response();
    };
    let pool = app.store.pool();
    let caller = match identity::authenticate_from(
        pool,
        Credential::Client {
            id: &id,
            secret: &secret,
        },
        source,
    )
    .await
    {
        Ok(caller) => caller,
        Err(AuthError::Store(_)) => return OAuthError::internal().into_response(),
        Err(AuthError::Throttled(seconds)) => return throttled(seconds).into_response(),
        Err(_) => return OAuthError::invalid_client().into_response(),
    };
    let token = request.token.unwrap_or_default();
    let claims = app.tokens.as_ref().and_then(|keys| keys.verify(&token));
    let Some(claims) = claims.filter(|c| c.tid == caller.tenant_id) else {
        return Json(json!({ "active": false })).into_response();
    };
    match tokens::principal_for_token(pool, &claims).await {
        Ok(Some(agent)) => Json(json!({
            "active": true,
            "scope": agent.scopes.names().join(" "),
            "client_id": claims.client_id,
            "sub": claims.sub,
            "token_type": "Bearer",
            "exp": claims.exp,
            "iat": claims.iat,
            "iss": claims.iss,
            "aud": claims.aud,
            "jti": claims.jti,
            "tenant_id": claims.tid,
        }))
        .into_response(),
        Ok(None) => Json(json!({ "active": false })).into_response(),
        Err(_) => OAuthError::internal().into_response(),
    }
}

/// This server's base URL as configured, or as the caller addressed it.
pub fn base_url(app: &App, headers: &HeaderMap) -> String {
    if let Some(keys) = &app.tokens {
        return keys.issuer.clone();
    }
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("localhost");
    format!("http://{host}")
}

/// Every scope, and `offline_access` (refresh tokens for people's clients).
fn scopes_supported() -> Vec<&'static str> {
    let mut all = scopes::ALL.to_vec();
    all.push("offline_access");
    all
}

/// RFC 8414 (also served where OpenID-style clients look, `/.well-known/openid-configuration`).
pub async fn authorization_server_metadata(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
) -> Response {
    let base = base_url(&app, &headers);
    Json(json!({
        "issuer": base,
        "authorization_endpoint": format!("{base}/oauth/authorize"),
        "token_endpoint": format!("{base}/oauth/token"),
        "registration_endpoint": format!("{base}/oauth/register"),
        "revocation_endpoint": format!("{base}/oauth/revoke"),
        "introspection_endpoint": format!("{base}/oauth/introspect"),
        "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": ["none", "client_secret_basic", "client_secret_post"],
        "revocation_endpoint_auth_methods_supported": ["none"],
        "introspection_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "authorization_response_iss_parameter_supported": true,
        "client_id_metadata_document_supported": true,
        "scopes_supported": scopes_supported(),
    }))
    .into_response()
}

/// RFC 9728.
pub async fn protected_resource_metadata(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
) -> Response {
    let base = base_url(&app, &headers);
    Json(json!({
        "resource": format!("{base}/mcp"),
        "authorization_servers": [base],
        "bearer_methods_supported": ["header"],
        "scopes_supported": scopes_supported(),
        "resource_name": "agentcrm",
    }))
    .into_response()
}

/// The bearer path of the HTTP auth layer: a JWT access token of an agent.
pub async fn principal_for_jwt(app: &App, token: &str) -> Result<Principal, AuthError> {
    let claims = app
        .tokens
        .as_ref()
        .and_then(|keys| keys.verify(token))
        .ok_or(AuthError::Invalid)?;
    let cache_key = CacheKey::Token {
        jti: claims.jti,
        sub: claims.sub,
        tid: claims.tid,
        scope: claims.scope.clone(),
    };
    if let Some(principal) = app.auth_cache.get(&cache_key) {
        return Ok(principal);
    }
    let generation = app.auth_cache.generation();
    let principal = tokens::principal_for_token(app.store.pool(), &claims)
        .await?
        .ok_or(AuthError::Invalid)?;
    app.auth_cache
        .insert(cache_key, principal.clone(), generation);
    Ok(principal)
}
