//! Federation: a tenant's people sign in through its OpenID Connect provider (authorization
//! code flow with PKCE, state and nonce; the client secret sealed at rest). The provider's ID
//! token is verified here: signature against its JWKS (RS256, or ES256), issuer, audience,
//! expiry and nonce; the person is matched to a user by a verified email, or created as a
//! member on first sign-in when the tenant allows it.
//!
//! Why not the `openidconnect` crate: it brings `rsa` 0.9 (RUSTSEC-2023-0071, banned in
//! `deny.toml`), a second generation of the digest crates, `oauth2` with reqwest 0.12 beside
//! our 0.13, and more elliptic curves. Verifying an ID token needs discovery, a JWKS and one
//! signature check, which `ring` (already in the tree through rustls) does.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use uuid::Uuid;

use super::principal::Role;
use super::scopes::Scopes;
use super::secrets::{self, random_bytes};
use super::vault::Vault;
use crate::store::StoreError;

/// A sign-in at the provider may take this long.
const LOGIN_MINUTES: i32 = 10;

/// A tenant's provider, as admins see it (never the secret).
#[derive(Debug, Clone, Serialize, schemars::JsonSchema, sqlx::FromRow)]
pub struct IdentityProvider {
    pub issuer: String,
    pub client_id: String,
    pub display_name: String,
    /// People the provider vouches for become members on first sign-in.
    pub create_members: bool,
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

/// Why federation failed, in words a person can act on (shown on the error page).
#[derive(Debug, thiserror::Error)]
pub enum FederationError {
    #[error("{0}")]
    Provider(String),
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn provider_error(what: &str, error: impl std::fmt::Display) -> FederationError {
    FederationError::Provider(format!("{what}: {error}"))
}

/// The provider's discovery document (the parts used here).
#[derive(Debug, Clone, Deserialize)]
pub struct Discovery {
    pub issuer: String,
    pub authorization_endpoint: String,
    pub token_endpoint: String,
    pub jwks_uri: String,
    pub userinfo_endpoint: Option<String>,
}

/// Fetches and checks `<issuer>/.well-known/openid-configuration`.
pub async fn discover(http: &reqwest::Client, issuer: &str) -> Result<Discovery, FederationError> {
    let issuer = issuer.trim_end_matches('/');
    let url = format!("{issuer}/.well-known/openid-configuration");
    let document: Discovery = http
        .get(&url)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(|e| provider_error("the provider's discovery document could not be fetched", e))?
        .json()
        .await
        .map_err(|e| provider_error("the provider's discovery document is not valid", e))?;
    if document.issuer.trim_end_matches('/') != issuer {
        return Err(FederationError::Provider(format!(
            "the provider says its issuer is `{}`, not `{issuer}`",
            document.issuer
        )));
    }
    Ok(document)
}

/// Sets (or replaces) a tenant's provider; the secret is sealed, bound to the tenant.
#[allow(clippy::too_many_arguments)]
pub async fn set_provider(
    pool: &PgPool,
    vault: &Vault,
    tenant_id: Uuid,
    issuer: &str,
    client_id: &str,
    client_secret: &str,
    display_name: &str,
    create_members: bool,
) -> Result<IdentityProvider, StoreError> {
    let sealed = vault.seal(client_secret.as_bytes(), tenant_id.as_bytes());
    Ok(sqlx::query_as(
        "INSERT INTO identity_providers (tenant_id, issuer, client_id, client_secret, display_name, create_members)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (tenant_id) DO UPDATE SET issuer = EXCLUDED.issuer, client_id = EXCLUDED.client_id,
             client_secret = EXCLUDED.client_secret, display_name = EXCLUDED.display_name,
             create_members = EXCLUDED.create_members, updated_at = now()
         RETURNING issuer, client_id, display_name, create_members, updated_at",
    )
    .bind(tenant_id)
    .bind(issuer.trim_end_matches('/'))
    .bind(client_id)
    .bind(sealed)
    .bind(display_name)
    .bind(create_members)
    .fetch_one(pool)
    .await?)
}

pub async fn get_provider(
    pool: &PgPool,
    tenant_id: Uuid,
) -> Result<Option<IdentityProvider>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT issuer, client_id, display_name, create_members, updated_at
         FROM identity_providers WHERE tenant_id = $1",
    )
    .bind(tenant_id)
    .fetch_optional(pool)
    .await?)
}

pub async fn remove_provider(pool: &PgPool, tenant_id: Uuid) -> Result<bool, StoreError> {
    let removed = sqlx::query("DELETE FROM identity_providers WHERE tenant_id = $1")
        .bind(tenant_id)
        .execute(pool)
        .await?;
    Ok(removed.rows_affected() > 0)
}

/// The provider of the tenant whose slug is `organization`, with its tenant id and name.
pub async fn provider_of(
    pool: &PgPool,
    organization: &str,
) -> Result<Option<(Uuid, IdentityProvider)>, StoreError> {
    let row: Option<(
        Uuid,
        String,
        String,
        String,
        bool,
        chrono::DateTime<chrono::Utc>,
    )> = sqlx::query_as(
        "SELECT p.tenant_id, p.issuer, p.client_id, p.display_name, p.create_members, p.updated_at
             FROM identity_providers p JOIN tenants t ON t.id = p.tenant_id WHERE t.slug = $1",
    )
    .bind(organization.trim().to_ascii_lowercase())
    .fetch_optional(pool)
    .await?;
    Ok(row.map(
        |(tenant, issuer, client_id, display_name, create_members, updated_at)| {
            (
                tenant,
                IdentityProvider {
                    issuer,
                    client_id,
                    display_name,
                    create_members,
                    updated_at,
                },
            )
        },
    ))
}

/// Starts a sign-in at the provider: the URL to send the browser to. `resume` is the
/// authorization request to go back to afterwards.
pub async fn begin(
    pool: &PgPool,
    http: &reqwest::Client,
    tenant_id: Uuid,
    provider: &IdentityProvider,
    redirect_uri: &str,
    resume: &str,
) -> Result<String, FederationError> {
    let discovery = discover(http, &provider.issuer).await?;
    let state = URL_SAFE_NO_PAD.encode(random_bytes::<32>());
    let nonce = URL_SAFE_NO_PAD.encode(random_bytes::<32>());
    let verifier = URL_SAFE_NO_PAD.encode(random_bytes::<32>());
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    sqlx::query(
        "INSERT INTO federated_logins (state_hash, tenant_id, nonce, verifier, resume, expires_at)
         VALUES ($1, $2, $3, $4, $5, now() + make_interval(mins => $6))",
    )
    .bind(secrets::digest(&state))
    .bind(tenant_id)
    .bind(&nonce)
    .bind(&verifier)
    .bind(resume)
    .bind(LOGIN_MINUTES)
    .execute(pool)
    .await
    .map_err(StoreError::from)?;
    let mut url = reqwest::Url::parse(&discovery.authorization_endpoint)
        .map_err(|e| provider_error("the provider's authorization endpoint is not a URL", e))?;
    url.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", &provider.client_id)
        .append_pair("redirect_uri", redirect_uri)
        .append_pair("scope", "openid email")
        .append_pair("state", &state)
        .append_pair("nonce", &nonce)
        .append_pair("code_challenge", &challenge)
        .append_pair("code_challenge_method", "S256");
    Ok(url.into())
}

/// Who the provider vouched for.
#[derive(Debug, Clone)]
pub struct Vouched {
    pub tenant_id: Uuid,
    pub email: String,
    /// The authorization request to resume.
    pub resume: String,
}

/// Finishes a sign-in the provider sent back: the state must be one this server issued (once,
/// within ten minutes), the code is exchanged with the client secret and PKCE verifier, and
/// the ID token must be the provider's, for this client, fresh, with this sign-in's nonce and
/// a verified email.
pub async fn finish(
    pool: &PgPool,
    vault: &Vault,
    http: &reqwest::Client,
    state: &str,
    code: &str,
    redirect_uri: &str,
) -> Result<Vouched, FederationError> {
    let login: Option<(Uuid, String, String, String)> = sqlx::query_as(
        "DELETE FROM federated_logins WHERE state_hash = $1 AND expires_at > now()
         RETURNING tenant_id, nonce, verifier, resume",
    )
    .bind(secrets::digest(state))
    .fetch_optional(pool)
    .await
    .map_err(StoreError::from)?;
    let Some((tenant_id, nonce, verifier, resume)) = login else {
        return Err(FederationError::Refused(
            "This sign-in is unknown, already used or expired; start again.".into(),
        ));
    };
    let row: Option<(String, String, Vec<u8>)> = sqlx::query_as(
        "SELECT issuer, client_id, client_secret FROM identity_providers WHERE tenant_id = $1",
    )
    .bind(tenant_id)
    .fetch_optional(pool)
    .await
    .map_err(StoreError::from)?;
    let Some((issuer, client_id, sealed)) = row else {
        return Err(FederationError::Refused(
            "This organization no longer signs in through a provider.".into(),
        ));
    };
    let secret = vault
        .open(&sealed, tenant_id.as_bytes())
        .ok()
        .and_then(|s| String::from_utf8(s).ok())
        .ok_or_else(|| {
            FederationError::Provider(
                "the provider's client secret cannot be read with this server's key".into(),
            )
        })?;
    let discovery = discover(http, &issuer).await?;
    let answer: Value = http
        .post(&discovery.token_endpoint)
        .basic_auth(&client_id, Some(&secret))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(
            serde_urlencoded::to_string([
                ("grant_type", "authorization_code"),
                ("code", code),
                ("redirect_uri", redirect_uri),
                ("code_verifier", &verifier),
            ])
            .map_err(|e| provider_error("the token request could not be written", e))?,
        )
        .send()
        .await
        .map_err(|e| provider_error("the provider's token endpoint could not be reached", e))?
        .json()
        .await
        .map_err(|e| provider_error("the provider's token answer is not JSON", e))?;
    let Some(id_token) = answer.get("id_token").and_then(Value::as_str) else {
        return Err(FederationError::Refused(format!(
            "The provider gave no ID token ({}).",
            answer
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or("no error given")
        )));
    };
    let jwks: Value = http
        .get(&discovery.jwks_uri)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(|e| provider_error("the provider's keys could not be fetched", e))?
        .json()
        .await
        .map_err(|e| provider_error("the provider's keys are not JSON", e))?;
    let claims = verify_id_token(id_token, &jwks, &issuer, &client_id, &nonce)
        .map_err(FederationError::Refused)?;
    // Providers may keep the email out of the ID token (OpenID Core 5.4): then it comes from
    // the userinfo endpoint, for the same subject (5.3.2).
    let mut identity = claims.clone();
    if identity.get("email").is_none()
        && let (Some(endpoint), Some(access)) = (
            discovery.userinfo_endpoint.as_deref(),
            answer.get("access_token").and_then(Value::as_str),
        )
    {
        let info: Value = http
            .get(endpoint)
            .bearer_auth(access)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| provider_error("the provider's userinfo could not be fetched", e))?
            .json()
            .await
            .map_err(|e| provider_error("the provider's userinfo is not JSON", e))?;
        if info.get("sub") != claims.get("sub") {
            return Err(FederationError::Refused(
                "The provider's userinfo is about someone else.".into(),
            ));
        }
        identity = info;
    }
    let email = identity
        .get("email")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| {
            FederationError::Refused("The provider did not say who you are (no email).".into())
        })?;
    // What a user's email may be (users.email): said plainly rather than failed on.
    if !(3..=320).contains(&email.chars().count()) || !email.contains('@') {
        return Err(FederationError::Refused(
            "The provider's email address for you cannot be used here: an address has an @ \
             and at most 320 characters."
                .into(),
        ));
    }
    if identity.get("email_verified").and_then(Value::as_bool) != Some(true) {
        return Err(FederationError::Refused(
            "The provider has not verified this email address, so it cannot sign you in here."
                .into(),
        ));
    }
    Ok(Vouched {
        tenant_id,
        email,
        resume,
    })
}

/// Checks a compact JWS ID token: signature by a key of `jwks` (RS256 or ES256), `iss`,
/// `aud` (or `azp`), `exp` (and `iat` not in the future), and `nonce`. Returns its claims.
pub fn verify_id_token(
    token: &str,
    jwks: &Value,
    issuer: &str,
    client_id: &str,
    nonce: &str,
) -> Result<Value, String> {
    let invalid = |why: &str| format!("The provider's ID token is not valid: {why}.");
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(invalid("not a signed JWT"));
    };
    let decode = |part: &str| {
        URL_SAFE_NO_PAD
            .decode(part)
            .map_err(|_| invalid("bad base64"))
    };
    let header: Value =
        serde_json::from_slice(&decode(header)?).map_err(|_| invalid("bad header"))?;
    let claims: Value =
        serde_json::from_slice(&decode(payload)?).map_err(|_| invalid("bad claims"))?;
    let signature = decode(signature)?;
    let message = &token[..token.rfind('.').unwrap_or(0)];
    let alg = header
        .get("alg")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let kid = header.get("kid").and_then(Value::as_str);
    let keys = jwks
        .get("keys")
        .and_then(Value::as_array)
        .ok_or_else(|| invalid("the provider published no keys"))?;
    let verified = keys
        .iter()
        .filter(|k| kid.is_none() || k.get("kid").and_then(Value::as_str) == kid)
        .any(|key| verify_with(alg, key, message.as_bytes(), &signature));
    if !verified {
        return Err(invalid("its signature does not match the provider's keys"));
    }
    if claims
        .get("iss")
        .and_then(Value::as_str)
        .map(|i| i.trim_end_matches('/'))
        != Some(issuer.trim_end_matches('/'))
    {
        return Err(invalid("it was issued by another provider"));
    }
    let audience_ok = match claims.get("aud") {
        Some(Value::String(aud)) => aud == client_id,
        Some(Value::Array(auds)) => {
            auds.iter().any(|a| a.as_str() == Some(client_id))
                && (auds.len() == 1 || claims.get("azp").and_then(Value::as_str) == Some(client_id))
        }
        _ => false,
    };
    if !audience_ok {
        return Err(invalid("it is meant for another client"));
    }
    let now = chrono::Utc::now().timestamp();
    let leeway = 60;
    if claims
        .get("exp")
        .and_then(Value::as_i64)
        .is_none_or(|exp| exp + leeway < now)
    {
        return Err(invalid("it has expired"));
    }
    if claims
        .get("iat")
        .and_then(Value::as_i64)
        .is_some_and(|iat| iat - leeway > now)
    {
        return Err(invalid("it was issued in the future"));
    }
    if claims.get("nonce").and_then(Value::as_str) != Some(nonce) {
        return Err(invalid("it belongs to another sign-in"));
    }
    Ok(claims)
}

fn verify_with(alg: &str, key: &Value, message: &[u8], signature: &[u8]) -> bool {
    use ring::signature;
    let field = |name: &str| {
        key.get(name)
            .and_then(Value::as_str)
            .and_then(|v| URL_SAFE_NO_PAD.decode(v).ok())
    };
    let kty = key.get("kty").and_then(Value::as_str);
    match (alg, kty) {
        ("RS256", Some("RSA")) => match (field("n"), field("e")) {
            (Some(n), Some(e)) => signature::RsaPublicKeyComponents { n: &n, e: &e }
                .verify(&signature::RSA_PKCS1_2048_8192_SHA256, message, signature)
                .is_ok(),
            _ => false,
        },
        ("ES256", Some("EC")) if key.get("crv").and_then(Value::as_str) == Some("P-256") => {
            match (field("x"), field("y")) {
                (Some(x), Some(y)) if x.len() == 32 && y.len() == 32 => {
                    let mut point = vec![0x04];
                    point.extend_from_slice(&x);
                    point.extend_from_slice(&y);
                    signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
                        .verify(message, signature)
                        .is_ok()
                }
                _ => false,
            }
        }
        _ => false,
    }
}

/// The user the provider vouched for: an existing one with that email, or a new member
/// (no scopes until an admin grants some) when the tenant allows it.
pub async fn person_for(
    pool: &PgPool,
    vouched: &Vouched,
) -> Result<Option<(Uuid, bool)>, StoreError> {
    let existing: Option<Uuid> = sqlx::query_scalar(
        "SELECT id FROM users WHERE tenant_id = $1 AND lower(email) = lower($2)",
    )
    .bind(vouched.tenant_id)
    .bind(&vouched.email)
    .fetch_optional(pool)
    .await?;
    if let Some(id) = existing {
        return Ok(Some((id, false)));
    }
    let allowed: Option<bool> =
        sqlx::query_scalar("SELECT create_members FROM identity_providers WHERE tenant_id = $1")
            .bind(vouched.tenant_id)
            .fetch_optional(pool)
            .await?;
    if allowed != Some(true) {
        return Ok(None);
    }
    // A name is at most 200 characters; an identity provider may vouch for a longer local part.
    let name: String = vouched
        .email
        .split('@')
        .next()
        .filter(|local| !local.is_empty())
        .unwrap_or("member")
        .chars()
        .take(200)
        .collect();
    let user = super::store::create_user(
        pool,
        vouched.tenant_id,
        &vouched.email,
        &name,
        Role::Member,
        Scopes::NONE,
    )
    .await?;
    Ok(Some((user.id, true)))
}

#[cfg(test)]
mod tests {
    use ring::rand::SystemRandom;
    use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
    use serde_json::json;

    use super::*;

    struct Signer {
        key: EcdsaKeyPair,
        jwks: Value,
    }

    fn signer(kid: &str) -> Signer {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        let point = key.public_key().as_ref();
        let jwks = json!({ "keys": [{ "kty": "EC", "crv": "P-256", "kid": kid,
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]), "y": URL_SAFE_NO_PAD.encode(&point[33..]) }] });
        Signer { key, jwks }
    }

    fn sign(signer: &Signer, header: Value, claims: Value) -> String {
        let message = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = signer
            .key
            .sign(&SystemRandom::new(), message.as_bytes())
            .unwrap();
        format!("{message}.{}", URL_SAFE_NO_PAD.encode(signature.as_ref()))
    }

    #[test]
    fn id_tokens_are_checked_for_signature_issuer_audience_expiry_and_nonce() {
        let provider = signer("k1");
        let now = chrono::Utc::now().timestamp();
        let good = json!({ "iss": "https://idp.example", "aud": "agentcrm", "sub": "u1",
                           "exp": now + 300, "iat": now, "nonce": "n-1", "email": "a@b.c" });
        let header = json!({ "alg": "ES256", "kid": "k1" });
        let check = |token: &str| {
            verify_id_token(
                token,
                &provider.jwks,
                "https://idp.example",
                "agentcrm",
                "n-1",
            )
        };
        assert_eq!(
            check(&sign(&provider, header.clone(), good.clone())).unwrap()["sub"],
            "u1"
        );

        let with = |field: &str, value: Value| {
            let mut claims = good.clone();
            claims[field] = value;
            sign(&provider, header.clone(), claims)
        };
        for (why, token) in [
            ("another issuer", with("iss", json!("https://evil.example"))),
            ("another audience", with("aud", json!("someone-else"))),
            (
                "several audiences, none authorized",
                with("aud", json!(["agentcrm", "x"])),
            ),
            ("expired", with("exp", json!(now - 3600))),
            ("issued in the future", with("iat", json!(now + 3600))),
            ("another sign-in's nonce", with("nonce", json!("n-2"))),
        ] {
            assert!(check(&token).is_err(), "{why} was accepted");
        }
        // Signed by another key, unsigned, or tampered with.
        let other = signer("k1");
        assert!(check(&sign(&other, header.clone(), good.clone())).is_err());
        let unsigned = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(json!({ "alg": "none" }).to_string()),
            URL_SAFE_NO_PAD.encode(good.to_string())
        );
        assert!(check(&unsigned).is_err());
        let token = sign(&provider, header, good.clone());
        let mut parts: Vec<&str> = token.split('.').collect();
        let forged = URL_SAFE_NO_PAD.encode(
            json!({ "iss": "https://idp.example", "aud": "agentcrm", "sub": "admin",
                    "exp": now + 300, "nonce": "n-1" })
            .to_string(),
        );
        parts[1] = &forged;
        assert!(check(&parts.join(".")).is_err(), "a changed payload");
    }
}
