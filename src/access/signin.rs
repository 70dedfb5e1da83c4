//! What people signing in from remote clients leave in the store: passwords (argon2id),
//! signed-in browsers, authorization codes (one use, ten minutes, PKCE S256) and their
//! consents to clients. The pages and the client registry are in `crate::signin`.

use argon2::{Argon2, PasswordHasher, PasswordVerifier};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use uuid::Uuid;

use super::principal::{Principal, PrincipalKind, Role};
use super::scopes::Scopes;
use super::secrets;
use crate::store::StoreError;

/// How long a signed-in browser stays signed in.
pub const SESSION_HOURS: i32 = 12;
/// How long an authorization code may wait for its exchange.
const CODE_MINUTES: i32 = 10;
/// Passwords shorter than this are refused when set.
pub const MIN_PASSWORD_LEN: usize = 12;

/// A person who signed in: the user row and what their role allows.
#[derive(Debug, Clone)]
pub struct Person {
    pub tenant_id: Uuid,
    pub tenant_slug: String,
    pub user_id: Uuid,
    pub name: String,
    pub email: String,
    pub role: Role,
    /// Everything the person's role and grants allow.
    pub allowed: Scopes,
}

impl Person {
    /// The person as a principal holding `scopes` (within what they are allowed).
    pub fn principal(&self, scopes: Scopes) -> Principal {
        Principal {
            tenant_id: self.tenant_id,
            kind: PrincipalKind::User,
            id: Some(self.user_id),
            name: self.name.clone(),
            role: Some(self.role),
            on_behalf_of: None,
            scopes: scopes.intersect(self.allowed),
            delegation: None,
        }
    }
}

#[derive(sqlx::FromRow)]
struct PersonRow {
    tenant_id: Uuid,
    tenant_slug: String,
    user_id: Uuid,
    name: String,
    email: String,
    role: String,
    scopes: Vec<String>,
    password_hash: Option<String>,
}

impl PersonRow {
    fn person(self) -> Person {
        let role = Role::parse(&self.role).unwrap_or(Role::Member);
        Person {
            tenant_id: self.tenant_id,
            tenant_slug: self.tenant_slug,
            user_id: self.user_id,
            name: self.name,
            email: self.email,
            role,
            allowed: Principal::human_scopes(
                role,
                Scopes::parse(&self.scopes).unwrap_or(Scopes::NONE),
            ),
        }
    }
}

const PERSON: &str = "SELECT u.tenant_id, t.slug AS tenant_slug, u.id AS user_id, u.name, u.email, \
     u.role, u.scopes, u.password_hash FROM users u JOIN tenants t ON t.id = u.tenant_id";

/// Sets (or replaces) a person's password. `Ok(false)`: no such person.
pub async fn set_password(
    pool: &PgPool,
    tenant_id: Uuid,
    email: &str,
    password: &str,
) -> Result<bool, StoreError> {
    let password = password.to_owned();
    let hash = tokio::task::spawn_blocking(move || {
        Argon2::default()
            .hash_password(password.as_bytes())
            .map(|h| h.to_string())
    })
    .await
    .map_err(|e| StoreError::Task(e.to_string()))?
    .map_err(|e| StoreError::Task(e.to_string()))?;
    let updated = sqlx::query(
        "UPDATE users SET password_hash = $3 WHERE tenant_id = $1 AND lower(email) = lower($2)",
    )
    .bind(tenant_id)
    .bind(email.trim())
    .bind(hash)
    .execute(pool)
    .await?;
    Ok(updated.rows_affected() == 1)
}

/// How long an invitation link works.
pub const INVITE_DAYS: i32 = 7;

/// A one-time link for `user_id` to set their password: the token (stored as a digest).
pub async fn create_invite(
    pool: &PgPool,
    tenant_id: Uuid,
    user_id: Uuid,
    created_by: Option<Uuid>,
) -> Result<(String, chrono::DateTime<chrono::Utc>), StoreError> {
    let token = URL_SAFE_NO_PAD.encode(secrets::random_bytes::<32>());
    let expires_at: chrono::DateTime<chrono::Utc> = sqlx::query_scalar(
        "INSERT INTO invites (token_hash, tenant_id, user_id, created_by, expires_at)
         VALUES ($1, $2, $3, $4, now() + make_interval(days => $5)) RETURNING expires_at",
    )
    .bind(secrets::digest(&token))
    .bind(tenant_id)
    .bind(user_id)
    .bind(created_by)
    .bind(INVITE_DAYS)
    .fetch_one(pool)
    .await?;
    Ok((token, expires_at))
}

/// Who a live invitation is for (email, organization), without using it up.
pub async fn invite_person(pool: &PgPool, token: &str) -> Result<Option<Person>, StoreError> {
    let row: Option<PersonRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{PERSON} JOIN invites i ON i.tenant_id = u.tenant_id AND i.user_id = u.id
         WHERE i.token_hash = $1 AND i.used_at IS NULL AND i.expires_at > now()"
    )))
    .bind(secrets::digest(token))
    .fetch_optional(pool)
    .await?;
    Ok(row.map(PersonRow::person))
}

/// Uses an invitation: sets the person's password, once. `Ok(None)`: unknown, used or expired.
pub async fn accept_invite(
    pool: &PgPool,
    token: &str,
    password: &str,
) -> Result<Option<Person>, StoreError> {
    let claimed: Option<(Uuid, Uuid)> = sqlx::query_as(
        "UPDATE invites SET used_at = now()
         WHERE token_hash = $1 AND used_at IS NULL AND expires_at > now()
         RETURNING tenant_id, user_id",
    )
    .bind(secrets::digest(token))
    .fetch_optional(pool)
    .await?;
    let Some((tenant_id, user_id)) = claimed else {
        return Ok(None);
    };
    let Some(person) = person_by_id(pool, tenant_id, user_id).await? else {
        return Ok(None);
    };
    set_password(pool, tenant_id, &person.email, password).await?;
    Ok(Some(person))
}

/// Why a sign-in was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum SigninRefusal {
    /// Unknown person, no password set, or the wrong one: never told apart.
    Wrong,
    /// The email belongs to people in several organizations: name the organization.
    WhichOrganization,
}

/// Checks an email and password, in `tenant` (a slug) when given. Argon2 runs whether or
/// not the person exists, so the answer's timing does not tell.
pub async fn check_password(
    pool: &PgPool,
    tenant: Option<&str>,
    email: &str,
    password: &str,
) -> Result<Result<Person, SigninRefusal>, StoreError> {
    let mut query = sqlx::QueryBuilder::new(PERSON);
    query
        .push(" WHERE lower(u.email) = lower(")
        .push_bind(email.trim().to_owned())
        .push(") AND u.password_hash IS NOT NULL");
    if let Some(slug) = tenant.map(str::trim).filter(|s| !s.is_empty()) {
        query
            .push(" AND t.slug = ")
            .push_bind(slug.to_ascii_lowercase());
    }
    query.push(" ORDER BY t.slug LIMIT 2");
    let mut rows: Vec<PersonRow> = query.build_query_as().fetch_all(pool).await?;
    if rows.len() > 1 {
        return Ok(Err(SigninRefusal::WhichOrganization));
    }
    let row = rows.pop();
    // A well-formed hash of nothing anyone knows, for the same work when nobody matched.
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let decoy = DECOY
        .get_or_init(|| {
            Argon2::default()
                .hash_password(&secrets::random_bytes::<16>())
                .map(|h| h.to_string())
                .unwrap_or_default()
        })
        .clone();
    let hash = row
        .as_ref()
        .and_then(|r| r.password_hash.clone())
        .unwrap_or(decoy);
    let password = password.to_owned();
    let _permit = super::throttle::VERIFICATIONS.acquire().await.ok();
    let matches = tokio::task::spawn_blocking(move || {
        Argon2::default()
            .verify_password(password.as_bytes(), hash.as_str())
            .is_ok()
    })
    .await
    .unwrap_or(false);
    match row {
        Some(row) if matches => Ok(Ok(row.person())),
        _ => Ok(Err(SigninRefusal::Wrong)),
    }
}

/// The person `user_id` of `tenant_id` (signed in some other way, e.g. through federation).
pub async fn person_by_id(
    pool: &PgPool,
    tenant_id: Uuid,
    user_id: Uuid,
) -> Result<Option<Person>, StoreError> {
    let row: Option<PersonRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{PERSON} WHERE u.tenant_id = $1 AND u.id = $2"
    )))
    .bind(tenant_id)
    .bind(user_id)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(PersonRow::person))
}

/// A new signed-in browser for `person`: the cookie's value (stored only as a digest).
pub async fn open_session(pool: &PgPool, person: &Person) -> Result<String, StoreError> {
    sweep(pool).await?;
    let value = URL_SAFE_NO_PAD.encode(secrets::random_bytes::<32>());
    sqlx::query(
        "INSERT INTO signin_sessions (id_hash, tenant_id, user_id, expires_at)
         VALUES ($1, $2, $3, now() + make_interval(hours => $4))",
    )
    .bind(secrets::digest(&value))
    .bind(person.tenant_id)
    .bind(person.user_id)
    .bind(SESSION_HOURS)
    .execute(pool)
    .await?;
    Ok(value)
}

/// Forgets what can no longer be used (a sign-in is a good moment: they are rare): expired
/// sessions, codes and federated sign-ins a day on, used or expired invitations after 30 days.
async fn sweep(pool: &PgPool) -> Result<(), StoreError> {
    sqlx::query(
        "WITH s AS (DELETE FROM signin_sessions WHERE expires_at < now() - interval '1 day'),
              c AS (DELETE FROM authorization_codes WHERE expires_at < now() - interval '1 day'),
              f AS (DELETE FROM federated_logins WHERE expires_at < now() - interval '1 day')
         DELETE FROM invites WHERE expires_at < now() - interval '30 days'
                               OR used_at < now() - interval '30 days'",
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// The person a session cookie stands for, if it is live.
pub async fn session_person(pool: &PgPool, cookie: &str) -> Result<Option<Person>, StoreError> {
    let row: Option<PersonRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{PERSON} JOIN signin_sessions s ON s.tenant_id = u.tenant_id AND s.user_id = u.id
         WHERE s.id_hash = $1 AND s.expires_at > now()"
    )))
    .bind(secrets::digest(cookie))
    .fetch_optional(pool)
    .await?;
    Ok(row.map(PersonRow::person))
}

/// What an authorization code was issued for.
#[derive(Debug, Clone)]
pub struct Grant {
    pub client_id: String,
    pub redirect_uri: String,
    pub code_challenge: String,
    pub scopes: Scopes,
    pub resource: String,
}

/// Issues a code for `person` and records (or widens) their consent to the client.
pub async fn issue_code(
    pool: &PgPool,
    person: &Person,
    grant: &Grant,
) -> Result<String, StoreError> {
    let code = URL_SAFE_NO_PAD.encode(secrets::random_bytes::<32>());
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO authorization_codes (code_hash, tenant_id, user_id, client_id, redirect_uri,
                                          code_challenge, scopes, resource, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, now() + make_interval(mins => $9))",
    )
    .bind(secrets::digest(&code))
    .bind(person.tenant_id)
    .bind(person.user_id)
    .bind(&grant.client_id)
    .bind(&grant.redirect_uri)
    .bind(&grant.code_challenge)
    .bind(grant.scopes.to_strings())
    .bind(&grant.resource)
    .bind(CODE_MINUTES)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO oauth_consents (tenant_id, user_id, client_id, scopes) VALUES ($1, $2, $3, $4)
         ON CONFLICT (tenant_id, user_id, client_id)
         DO UPDATE SET scopes = EXCLUDED.scopes, last_used_at = now()",
    )
    .bind(person.tenant_id)
    .bind(person.user_id)
    .bind(&grant.client_id)
    .bind(grant.scopes.to_strings())
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(code)
}

/// What the person already allowed `client_id` (nothing if they never connected it).
pub async fn consented_scopes(
    pool: &PgPool,
    person: &Person,
    client_id: &str,
) -> Result<Scopes, StoreError> {
    let scopes: Option<Vec<String>> = sqlx::query_scalar(
        "SELECT scopes FROM oauth_consents WHERE tenant_id = $1 AND user_id = $2 AND client_id = $3",
    )
    .bind(person.tenant_id)
    .bind(person.user_id)
    .bind(client_id)
    .fetch_optional(pool)
    .await?;
    Ok(scopes.map_or(Scopes::NONE, |s| Scopes::parse(&s).unwrap_or(Scopes::NONE)))
}

/// Why a code exchange was refused: always `invalid_grant` to the client.
#[derive(Debug, PartialEq, Eq)]
pub enum CodeRefusal {
    /// Unknown, used or expired.
    Unusable,
    OtherClient,
    OtherRedirect,
    WrongVerifier,
    OtherResource,
    /// The person is gone or withdrew consent since.
    NoConsent,
}

/// Exchanges a code: it works once (a second attempt finds it used), for the client and
/// redirect URI it was issued to, with the PKCE verifier of its challenge.
pub async fn redeem_code(
    pool: &PgPool,
    code: &str,
    client_id: &str,
    redirect_uri: Option<&str>,
    verifier: &str,
    resource: Option<&str>,
) -> Result<Result<(Principal, String), CodeRefusal>, StoreError> {
    type Row = (Uuid, Uuid, String, String, String, Vec<String>, String);
    let row: Option<Row> = sqlx::query_as(
        "UPDATE authorization_codes SET used_at = now()
         WHERE code_hash = $1 AND used_at IS NULL AND expires_at > now()
         RETURNING tenant_id, user_id, client_id, redirect_uri, code_challenge, scopes, resource",
    )
    .bind(secrets::digest(code))
    .fetch_optional(pool)
    .await?;
    let Some((tenant_id, user_id, issued_to, redirect, challenge, scopes, bound)) = row else {
        return Ok(Err(CodeRefusal::Unusable));
    };
    if issued_to != client_id {
        return Ok(Err(CodeRefusal::OtherClient));
    }
    if redirect_uri.is_some_and(|r| r != redirect) {
        return Ok(Err(CodeRefusal::OtherRedirect));
    }
    if !pkce_matches(verifier, &challenge) {
        return Ok(Err(CodeRefusal::WrongVerifier));
    }
    if resource.is_some_and(|r| r.trim_end_matches('/') != bound.trim_end_matches('/')) {
        return Ok(Err(CodeRefusal::OtherResource));
    }
    let person: Option<PersonRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{PERSON} JOIN oauth_consents c ON c.tenant_id = u.tenant_id AND c.user_id = u.id AND c.client_id = $3
         WHERE u.id = $1 AND u.tenant_id = $2"
    )))
    .bind(user_id)
    .bind(tenant_id)
    .bind(client_id)
    .fetch_optional(pool)
    .await?;
    let Some(person) = person.map(PersonRow::person) else {
        return Ok(Err(CodeRefusal::NoConsent));
    };
    sqlx::query("UPDATE oauth_clients SET last_used_at = now() WHERE client_id = $1")
        .bind(client_id)
        .execute(pool)
        .await?;
    let scopes = Scopes::parse(&scopes).unwrap_or(Scopes::NONE);
    Ok(Ok((person.principal(scopes), bound)))
}

/// RFC 7636 S256: BASE64URL(SHA256(verifier)) == challenge, with a verifier of 43 to 128
/// unreserved characters.
pub fn pkce_matches(verifier: &str, challenge: &str) -> bool {
    let well_formed = (43..=128).contains(&verifier.len())
        && verifier
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b));
    well_formed && URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes())) == challenge
}

/// A client a person connected, as admins list them.
#[derive(Debug, Clone, serde::Serialize, schemars::JsonSchema, sqlx::FromRow)]
pub struct ConnectedClient {
    pub client_id: String,
    pub client_name: String,
    pub user_id: Uuid,
    pub email: String,
    pub scopes: Vec<String>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub last_used_at: chrono::DateTime<chrono::Utc>,
}

/// The clients people of `tenant_id` connected (one person's when `user_id` is given).
pub async fn connected_clients(
    pool: &PgPool,
    tenant_id: Uuid,
    user_id: Option<Uuid>,
) -> Result<Vec<ConnectedClient>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT c.client_id, k.client_name, c.user_id, u.email, c.scopes, c.created_at, c.last_used_at
         FROM oauth_consents c
         JOIN oauth_clients k ON k.client_id = c.client_id
         JOIN users u ON u.tenant_id = c.tenant_id AND u.id = c.user_id
         WHERE c.tenant_id = $1 AND ($2::uuid IS NULL OR c.user_id = $2)
         ORDER BY c.last_used_at DESC, c.client_id",
    )
    .bind(tenant_id)
    .bind(user_id)
    .fetch_all(pool)
    .await?)
}

/// Withdraws a person's consent to a client: its refresh tokens die now and its access
/// tokens stop working at their next use. `Ok(false)`: there was none.
pub async fn revoke_client(
    pool: &PgPool,
    tenant_id: Uuid,
    user_id: Uuid,
    client_id: &str,
) -> Result<bool, StoreError> {
    let mut tx = pool.begin().await?;
    let removed = sqlx::query(
        "DELETE FROM oauth_consents WHERE tenant_id = $1 AND user_id = $2 AND client_id = $3",
    )
    .bind(tenant_id)
    .bind(user_id)
    .bind(client_id)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "UPDATE refresh_tokens SET revoked_at = now()
         WHERE tenant_id = $1 AND user_id = $2 AND client_id = $3 AND revoked_at IS NULL",
    )
    .bind(tenant_id)
    .bind(user_id)
    .bind(client_id)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(removed.rows_affected() > 0)
}
