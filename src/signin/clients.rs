//! The clients people connect: registered through Dynamic Client Registration (RFC 7591),
//! or named by an HTTPS URL whose Client ID Metadata Document the server fetches through its
//! SSRF-guarded client and caches for a day. Both are public clients: PKCE proves them.

use std::net::IpAddr;

use reqwest::Url;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::app::App;
use crate::jobs::outbound::{self, OutboundOptions};
use crate::store::StoreError;

/// Registrations per source address per hour.
const REGISTRATIONS_PER_HOUR: i64 = 20;
/// Redirect URIs one client may register.
const MAX_REDIRECT_URIS: usize = 10;
/// A metadata document larger than this is refused.
const MAX_DOCUMENT_BYTES: usize = 16 * 1024;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Client {
    pub client_id: String,
    pub client_name: String,
    pub redirect_uris: Vec<String>,
}

/// A refusal in RFC 7591's terms (`invalid_redirect_uri`, `invalid_client_metadata`).
#[derive(Debug)]
pub struct Refusal {
    pub error: &'static str,
    pub description: String,
}

fn refuse(error: &'static str, description: impl Into<String>) -> Refusal {
    Refusal {
        error,
        description: description.into(),
    }
}

/// Is `uri` a loopback `http` URI (RFC 8252 §7.3: the port is the native client's choice)?
pub(crate) fn loopback_http(uri: &Url) -> bool {
    let host = uri
        .host_str()
        .unwrap_or_default()
        .trim_start_matches('[')
        .trim_end_matches(']');
    uri.scheme() == "http"
        && (host.eq_ignore_ascii_case("localhost")
            || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback()))
}

/// A redirect URI a client may register: HTTPS, loopback HTTP, or a private-use scheme of
/// a native app (`com.example.app:/callback`); never a fragment or credentials.
fn check_redirect(uri: &str) -> Result<Url, Refusal> {
    let parsed = Url::parse(uri)
        .map_err(|e| refuse("invalid_redirect_uri", format!("`{uri}` is not a URI: {e}")))?;
    if parsed.fragment().is_some() || !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(refuse(
            "invalid_redirect_uri",
            format!("`{uri}` must not carry a fragment or credentials"),
        ));
    }
    let private_use = parsed.scheme().contains('.');
    if parsed.scheme() == "https" || loopback_http(&parsed) || private_use {
        Ok(parsed)
    } else {
        Err(refuse(
            "invalid_redirect_uri",
            format!(
                "`{uri}`: redirect URIs must be https, http on loopback (127.0.0.1, [::1] or \
                 localhost), or a reverse-domain app scheme"
            ),
        ))
    }
}

/// May `client` be sent back to `uri`? An exact match, or for a registered loopback URI the
/// same URI on any port.
pub fn redirect_allowed(client: &Client, uri: &str) -> bool {
    let Ok(asked) = Url::parse(uri) else {
        return false;
    };
    client.redirect_uris.iter().any(|registered| {
        if registered == uri {
            return true;
        }
        match Url::parse(registered) {
            Ok(mut registered) if loopback_http(&registered) && loopback_http(&asked) => {
                let _ = registered.set_port(asked.port());
                registered == asked
            }
            _ => false,
        }
    })
}

#[derive(Debug, Deserialize)]
pub struct Registration {
    #[serde(default)]
    pub redirect_uris: Vec<String>,
    pub client_name: Option<String>,
    pub client_uri: Option<String>,
    pub token_endpoint_auth_method: Option<String>,
    pub grant_types: Option<Vec<String>>,
    pub response_types: Option<Vec<String>>,
    pub scope: Option<String>,
}

/// RFC 7591: registers a public client; the answer is the client's metadata with its id.
pub async fn register(
    app: &App,
    source: Option<IpAddr>,
    request: Registration,
) -> Result<Result<Value, Refusal>, StoreError> {
    if let Some(refusal) = check_registration(&request) {
        return Ok(Err(refusal));
    }
    let pool = app.store.pool();
    // Unused registrations go after 30 days; each address registers a few an hour.
    sqlx::query(
        "DELETE FROM oauth_clients WHERE kind = 'registered' AND last_used_at < now() - interval '30 days'",
    )
    .execute(pool)
    .await?;
    if let Some(address) = source {
        let recent: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM oauth_clients
             WHERE registered_from = $1::inet AND created_at > now() - interval '1 hour'",
        )
        .bind(address.to_string())
        .fetch_one(pool)
        .await?;
        if recent >= REGISTRATIONS_PER_HOUR {
            return Ok(Err(refuse(
                "slow_down",
                format!("at most {REGISTRATIONS_PER_HOUR} registrations per hour from one address"),
            )));
        }
    }
    let client_id = format!(
        "dyn_{}",
        hex::encode(crate::access::secrets::random_bytes::<16>())
    );
    let name = request
        .client_name
        .as_deref()
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .unwrap_or("Unnamed client")
        .chars()
        .take(200)
        .collect::<String>();
    sqlx::query(
        "INSERT INTO oauth_clients (client_id, kind, client_name, client_uri, redirect_uris, registered_from)
         VALUES ($1, 'registered', $2, $3, $4, $5::inet)",
    )
    .bind(&client_id)
    .bind(&name)
    .bind(&request.client_uri)
    .bind(&request.redirect_uris)
    .bind(source.map(|a| a.to_string()))
    .execute(pool)
    .await?;
    Ok(Ok(json!({
        "client_id": client_id,
        "client_id_issued_at": chrono::Utc::now().timestamp(),
        "client_name": name,
        "redirect_uris": request.redirect_uris,
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
        "token_endpoint_auth_method": "none",
    })))
}

fn check_registration(request: &Registration) -> Option<Refusal> {
    if request.redirect_uris.is_empty() || request.redirect_uris.len() > MAX_REDIRECT_URIS {
        return Some(refuse(
            "invalid_redirect_uri",
            format!("give 1 to {MAX_REDIRECT_URIS} redirect_uris"),
        ));
    }
    for uri in &request.redirect_uris {
        if uri.len() > 2000 {
            return Some(refuse("invalid_redirect_uri", "a redirect URI is too long"));
        }
        if let Err(refusal) = check_redirect(uri) {
            return Some(refusal);
        }
    }
    if let Some(method) = request.token_endpoint_auth_method.as_deref()
        && method != "none"
    {
        return Some(refuse(
            "invalid_client_metadata",
            format!(
                "token_endpoint_auth_method `{method}` is not offered: clients people use are \
                 public (`none`) and prove themselves with PKCE"
            ),
        ));
    }
    if let Some(grant) = request
        .grant_types
        .iter()
        .flatten()
        .find(|g| !["authorization_code", "refresh_token"].contains(&g.as_str()))
    {
        return Some(refuse(
            "invalid_client_metadata",
            format!("grant type `{grant}` is not offered to registered clients"),
        ));
    }
    if let Some(kind) = request
        .response_types
        .iter()
        .flatten()
        .find(|r| r.as_str() != "code")
    {
        return Some(refuse(
            "invalid_client_metadata",
            format!("response type `{kind}` is not offered; use `code`"),
        ));
    }
    let _ = &request.scope;
    None
}

/// Is `client_id` a Client ID Metadata Document URL (rather than a registered id)?
pub fn is_metadata_url(client_id: &str) -> bool {
    client_id.starts_with("https://") || client_id.starts_with("http://")
}

/// The client `client_id` names: a registration, or a metadata document (fetched, checked
/// and cached). `Ok(Err(_))` says why it cannot be used.
pub async fn find(app: &App, client_id: &str) -> Result<Result<Client, Refusal>, StoreError> {
    let pool = app.store.pool();
    let cached: Option<Client> = sqlx::query_as(
        "SELECT client_id, client_name, redirect_uris FROM oauth_clients
         WHERE client_id = $1 AND (kind = 'registered' OR fetched_at > now() - interval '1 day')",
    )
    .bind(client_id)
    .fetch_optional(pool)
    .await?;
    if let Some(client) = cached {
        return Ok(Ok(client));
    }
    if !is_metadata_url(client_id) {
        return Ok(Err(refuse(
            "invalid_client",
            "this client is not registered here (or its registration expired); register it again",
        )));
    }
    let client = match fetch_document(app, client_id).await {
        Ok(client) => client,
        Err(refusal) => return Ok(Err(refusal)),
    };
    sqlx::query(
        "INSERT INTO oauth_clients (client_id, kind, client_name, redirect_uris, fetched_at)
         VALUES ($1, 'metadata_document', $2, $3, now())
         ON CONFLICT (client_id) DO UPDATE
         SET client_name = EXCLUDED.client_name, redirect_uris = EXCLUDED.redirect_uris, fetched_at = now()",
    )
    .bind(&client.client_id)
    .bind(&client.client_name)
    .bind(&client.redirect_uris)
    .execute(pool)
    .await?;
    Ok(Ok(client))
}

/// Fetches and checks a Client ID Metadata Document: an HTTPS URL with a path, on a public
/// address (whatever the server's outbound setting: a sign-in page must not be a way to
/// reach the server's own network), answering JSON whose `client_id` is the URL itself.
async fn fetch_document(app: &App, url: &str) -> Result<Client, Refusal> {
    let invalid = |why: String| refuse("invalid_client", why);
    let public = OutboundOptions {
        allow_private: false,
        ..app.outbound
    };
    let parsed = outbound::check_url(url, public).map_err(invalid)?;
    if parsed.scheme() != "https" || parsed.path() == "/" || parsed.fragment().is_some() {
        return Err(invalid(format!(
            "`{url}` is not a client metadata document URL: it must be https with a path"
        )));
    }
    let http =
        outbound::client(public).map_err(|e| invalid(format!("no outgoing HTTP client: {e}")))?;
    let response = http
        .get(parsed.clone())
        .header("Accept", "application/json")
        .send()
        .await
        .map_err(|e| {
            invalid(format!(
                "the client's metadata document could not be fetched: {e}"
            ))
        })?;
    if !response.status().is_success() {
        return Err(invalid(format!(
            "the client's metadata document answered {}",
            response.status()
        )));
    }
    // Read at most the cap: a document URL is anyone's to name, and its server may not stop.
    let mut response = response;
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| invalid(format!("reading the metadata document failed: {e}")))?
    {
        body.extend_from_slice(&chunk);
        if body.len() > MAX_DOCUMENT_BYTES {
            return Err(invalid(
                "the client's metadata document is too large".into(),
            ));
        }
    }
    #[derive(Deserialize)]
    struct Document {
        client_id: String,
        client_name: Option<String>,
        #[serde(default)]
        redirect_uris: Vec<String>,
        token_endpoint_auth_method: Option<String>,
    }
    let document: Document = serde_json::from_slice(&body)
        .map_err(|e| invalid(format!("the client's metadata document is not valid: {e}")))?;
    if document.client_id != url {
        return Err(invalid(
            "the metadata document's client_id is not the URL it was fetched from".into(),
        ));
    }
    let registration = Registration {
        redirect_uris: document.redirect_uris.clone(),
        client_name: document.client_name.clone(),
        client_uri: None,
        token_endpoint_auth_method: document.token_endpoint_auth_method,
        grant_types: None,
        response_types: None,
        scope: None,
    };
    if let Some(refusal) = check_registration(&registration) {
        return Err(invalid(refusal.description));
    }
    Ok(Client {
        client_id: url.to_owned(),
        client_name: document
            .client_name
            .unwrap_or_else(|| parsed.host_str().unwrap_or("client").to_owned())
            .chars()
            .take(200)
            .collect(),
        redirect_uris: document.redirect_uris,
    })
}
