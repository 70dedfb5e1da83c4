//! Queries for users, agents and API keys. Every query is scoped by tenant except the two
//! credential lookups, which find the tenant from the credential itself.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use super::principal::{Principal, PrincipalKind, Role};
use super::scopes::Scopes;
use super::secrets;
use crate::store::StoreError;
use crate::store::page::Page;

#[derive(Debug, Clone, Serialize, JsonSchema, sqlx::FromRow)]
pub struct User {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub email: String,
    pub name: String,
    pub role: String,
    pub scopes: Vec<String>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, JsonSchema, sqlx::FromRow)]
pub struct Agent {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub name: String,
    pub description: String,
    pub client_id: String,
    pub kind: String,
    pub enabled: bool,
    pub scopes: Vec<String>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, JsonSchema, sqlx::FromRow)]
pub struct ApiKey {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub owner_user_id: Uuid,
    pub name: String,
    /// The key's first characters, to tell keys apart; the key itself is never stored.
    pub prefix: String,
    /// Empty: the owner's permissions.
    pub scopes: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

const USER_COLUMNS: &str = "id, tenant_id, email, name, role, scopes, created_at";
const AGENT_COLUMNS: &str =
    "id, tenant_id, name, description, client_id, kind, enabled, scopes, created_at";
const API_KEY_COLUMNS: &str =
    "id, tenant_id, owner_user_id, name, prefix, scopes, created_at, last_used_at, revoked_at";

pub async fn create_user(
    pool: &PgPool,
    tenant_id: Uuid,
    email: &str,
    name: &str,
    role: Role,
    scopes: Scopes,
) -> Result<User, StoreError> {
    let user = sqlx::query_as::<_, User>(sqlx::AssertSqlSafe(format!(
        "INSERT INTO users (tenant_id, email, name, role, scopes) VALUES ($1, $2, $3, $4, $5)
         RETURNING {USER_COLUMNS}"
    )))
    .bind(tenant_id)
    .bind(email)
    .bind(name)
    .bind(role.as_str())
    .bind(scopes.to_strings())
    .fetch_one(pool)
    .await?;
    Ok(user)
}

pub async fn list_users(pool: &PgPool, tenant_id: Uuid) -> Result<Vec<User>, StoreError> {
    let users = sqlx::query_as::<_, User>(sqlx::AssertSqlSafe(format!(
        "SELECT {USER_COLUMNS} FROM users WHERE tenant_id = $1 ORDER BY created_at, id"
    )))
    .bind(tenant_id)
    .fetch_all(pool)
    .await?;
    Ok(users)
}

pub async fn find_user_by_email(
    pool: &PgPool,
    tenant_id: Uuid,
    email: &str,
) -> Result<Option<User>, StoreError> {
    let user = sqlx::query_as::<_, User>(sqlx::AssertSqlSafe(format!(
        "SELECT {USER_COLUMNS} FROM users WHERE tenant_id = $1 AND email = $2"
    )))
    .bind(tenant_id)
    .bind(email)
    .fetch_optional(pool)
    .await?;
    Ok(user)
}

/// Registers an agent; returns it with its client secret, which is not stored.
pub async fn create_agent(
    pool: &PgPool,
    tenant_id: Uuid,
    name: &str,
    description: &str,
    internal: bool,
    scopes: Scopes,
    created_by: Option<Uuid>,
) -> Result<(Agent, String), StoreError> {
    let (secret, secret_hash) = secrets::new_client_secret();
    let agent = sqlx::query_as::<_, Agent>(sqlx::AssertSqlSafe(format!(
        "INSERT INTO agents (tenant_id, name, description, client_id, secret_hash, kind, scopes, created_by)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
         RETURNING {AGENT_COLUMNS}"
    )))
    .bind(tenant_id)
    .bind(name)
    .bind(description)
    .bind(secrets::new_client_id())
    .bind(secret_hash)
    .bind(if internal { "internal" } else { "external" })
    .bind(scopes.to_strings())
    .bind(created_by)
    .fetch_one(pool)
    .await?;
    Ok((agent, secret))
}

pub async fn list_agents(pool: &PgPool, tenant_id: Uuid) -> Result<Vec<Agent>, StoreError> {
    let agents = sqlx::query_as::<_, Agent>(sqlx::AssertSqlSafe(format!(
        "SELECT {AGENT_COLUMNS} FROM agents WHERE tenant_id = $1 ORDER BY created_at, id"
    )))
    .bind(tenant_id)
    .fetch_all(pool)
    .await?;
    Ok(agents)
}

/// Creates an API key for `owner`; returns it with the key, which is not stored.
pub async fn create_api_key(
    pool: &PgPool,
    tenant_id: Uuid,
    owner_user_id: Uuid,
    name: &str,
    scopes: Scopes,
) -> Result<(ApiKey, String), StoreError> {
    let (key, prefix, hash) = secrets::new_api_key();
    let api_key = sqlx::query_as::<_, ApiKey>(sqlx::AssertSqlSafe(format!(
        "INSERT INTO api_keys (tenant_id, owner_user_id, name, prefix, key_hash, scopes)
         VALUES ($1, $2, $3, $4, $5, $6)
         RETURNING {API_KEY_COLUMNS}"
    )))
    .bind(tenant_id)
    .bind(owner_user_id)
    .bind(name)
    .bind(prefix)
    .bind(hash)
    .bind(scopes.to_strings())
    .fetch_one(pool)
    .await?;
    Ok((api_key, key))
}

pub async fn list_api_keys(pool: &PgPool, tenant_id: Uuid) -> Result<Vec<ApiKey>, StoreError> {
    let keys = sqlx::query_as::<_, ApiKey>(sqlx::AssertSqlSafe(format!(
        "SELECT {API_KEY_COLUMNS} FROM api_keys WHERE tenant_id = $1 ORDER BY created_at, id"
    )))
    .bind(tenant_id)
    .fetch_all(pool)
    .await?;
    Ok(keys)
}

#[derive(sqlx::FromRow)]
struct ApiKeyOwner {
    id: Uuid,
    tenant_id: Uuid,
    name: String,
    scopes: Vec<String>,
    owner_id: Uuid,
    owner_role: String,
    owner_scopes: Vec<String>,
}

/// The principal an API key stands for, or `None` when no live key matches.
pub async fn principal_for_api_key(
    pool: &PgPool,
    key: &str,
) -> Result<Option<Principal>, StoreError> {
    let row = sqlx::query_as::<_, ApiKeyOwner>(
        "SELECT k.id, k.tenant_id, k.name, k.scopes, u.id AS owner_id, u.role AS owner_role,
                u.scopes AS owner_scopes
         FROM api_keys k JOIN users u ON u.tenant_id = k.tenant_id AND u.id = k.owner_user_id
         WHERE k.key_hash = $1 AND k.revoked_at IS NULL",
    )
    .bind(secrets::digest(key))
    .fetch_optional(pool)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let role = Role::parse(&row.owner_role).unwrap_or(Role::Member);
    let scopes = api_key_scopes(&row.scopes, role, &row.owner_scopes);
    Ok(Some(Principal {
        tenant_id: row.tenant_id,
        kind: PrincipalKind::ApiKey,
        id: Some(row.id),
        name: row.name,
        role: Some(role),
        on_behalf_of: Some(row.owner_id),
        scopes,
        delegation: None,
    }))
}

#[derive(sqlx::FromRow)]
struct AgentCredential {
    id: Uuid,
    tenant_id: Uuid,
    name: String,
    secret_hash: String,
    enabled: bool,
    scopes: Vec<String>,
}

/// Why client credentials were refused; the caller only ever learns "invalid client".
#[derive(Debug, PartialEq, Eq)]
pub enum ClientRefusal {
    UnknownClient,
    WrongSecret,
    Disabled,
}

/// What an API key may do: its own scopes within its owner's (an empty list: the owner's).
/// Stored scopes were validated on write; a name this build does not know grants nothing.
pub fn api_key_scopes(own: &[String], owner_role: Role, owner_granted: &[String]) -> Scopes {
    let known = |names: &[String]| Scopes::parse(names).unwrap_or(Scopes::NONE);
    let owner = Principal::human_scopes(owner_role, known(owner_granted));
    if own.is_empty() {
        owner
    } else {
        known(own).intersect(owner)
    }
}

/// Checks an agent's client credentials (argon2: deliberately slow) and returns its principal.
pub async fn principal_for_client(
    pool: &PgPool,
    client_id: &str,
    secret: &str,
) -> Result<Result<Principal, ClientRefusal>, StoreError> {
    let row = sqlx::query_as::<_, AgentCredential>(
        "SELECT id, tenant_id, name, secret_hash, enabled, scopes FROM agents WHERE client_id = $1",
    )
    .bind(client_id)
    .fetch_optional(pool)
    .await?;
    let Some(row) = row else {
        return Ok(Err(ClientRefusal::UnknownClient));
    };
    let (secret, hash) = (secret.to_owned(), row.secret_hash.clone());
    // At most a few argon2 runs at once: a flood of guesses waits instead of taking memory.
    // (The semaphore is never closed, so acquiring cannot fail.)
    let _permit = super::throttle::VERIFICATIONS.acquire().await.ok();
    let matches =
        tokio::task::spawn_blocking(move || secrets::verify_client_secret(&secret, &hash))
            .await
            .unwrap_or(false);
    if !matches {
        return Ok(Err(ClientRefusal::WrongSecret));
    }
    if !row.enabled {
        return Ok(Err(ClientRefusal::Disabled));
    }
    Ok(Ok(Principal {
        tenant_id: row.tenant_id,
        kind: PrincipalKind::Agent,
        id: Some(row.id),
        name: row.name,
        role: None,
        on_behalf_of: None,
        scopes: Scopes::parse(&row.scopes).unwrap_or(Scopes::NONE),
        delegation: None,
    }))
}

/// Returns the user with `email`, creating it when absent (the embedded default's owner).
pub async fn ensure_user(
    pool: &PgPool,
    tenant_id: Uuid,
    email: &str,
    name: &str,
    role: Role,
) -> Result<User, StoreError> {
    let user = sqlx::query_as::<_, User>(sqlx::AssertSqlSafe(format!(
        "INSERT INTO users (tenant_id, email, name, role) VALUES ($1, $2, $3, $4)
         ON CONFLICT (tenant_id, email) DO UPDATE SET email = EXCLUDED.email
         RETURNING {USER_COLUMNS}"
    )))
    .bind(tenant_id)
    .bind(email)
    .bind(name)
    .bind(role.as_str())
    .fetch_one(pool)
    .await?;
    Ok(user)
}

pub async fn get_user(
    pool: &PgPool,
    tenant_id: Uuid,
    id: Uuid,
) -> Result<Option<User>, StoreError> {
    let user = sqlx::query_as::<_, User>(sqlx::AssertSqlSafe(format!(
        "SELECT {USER_COLUMNS} FROM users WHERE tenant_id = $1 AND id = $2"
    )))
    .bind(tenant_id)
    .bind(id)
    .fetch_optional(pool)
    .await?;
    Ok(user)
}

pub async fn get_agent(
    pool: &PgPool,
    tenant_id: Uuid,
    id: Uuid,
) -> Result<Option<Agent>, StoreError> {
    let agent = sqlx::query_as::<_, Agent>(sqlx::AssertSqlSafe(format!(
        "SELECT {AGENT_COLUMNS} FROM agents WHERE tenant_id = $1 AND id = $2"
    )))
    .bind(tenant_id)
    .bind(id)
    .fetch_optional(pool)
    .await?;
    Ok(agent)
}

pub async fn page_agents(
    pool: &PgPool,
    tenant_id: Uuid,
    page: Page,
) -> Result<(Vec<Agent>, i64), StoreError> {
    let agents = sqlx::query_as::<_, Agent>(sqlx::AssertSqlSafe(format!(
        "SELECT {AGENT_COLUMNS} FROM agents WHERE tenant_id = $1 ORDER BY created_at, id LIMIT $2 OFFSET $3"
    )))
    .bind(tenant_id)
    .bind(page.limit)
    .bind(page.offset)
    .fetch_all(pool)
    .await?;
    let total = sqlx::query_scalar("SELECT count(*) FROM agents WHERE tenant_id = $1")
        .bind(tenant_id)
        .fetch_one(pool)
        .await?;
    Ok((agents, total))
}

pub async fn set_agent_scopes(
    pool: &PgPool,
    tenant_id: Uuid,
    id: Uuid,
    scopes: Scopes,
) -> Result<Option<Agent>, StoreError> {
    let mut tx = pool.begin().await?;
    let agent = sqlx::query_as::<_, Agent>(sqlx::AssertSqlSafe(format!(
        "UPDATE agents SET scopes = $3, updated_at = now() WHERE tenant_id = $1 AND id = $2
         RETURNING {AGENT_COLUMNS}"
    )))
    .bind(tenant_id)
    .bind(id)
    .bind(scopes.to_strings())
    .fetch_optional(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(agent)
}

/// Enables or disables an agent; disabling also ends its refresh tokens (access tokens
/// stop working at once because every request checks `enabled`).
pub async fn set_agent_enabled(
    pool: &PgPool,
    tenant_id: Uuid,
    id: Uuid,
    enabled: bool,
) -> Result<Option<Agent>, StoreError> {
    let mut tx = pool.begin().await?;
    let agent = sqlx::query_as::<_, Agent>(sqlx::AssertSqlSafe(format!(
        "UPDATE agents SET enabled = $3, updated_at = now() WHERE tenant_id = $1 AND id = $2
         RETURNING {AGENT_COLUMNS}"
    )))
    .bind(tenant_id)
    .bind(id)
    .bind(enabled)
    .fetch_optional(&mut *tx)
    .await?;
    if agent.is_some() && !enabled {
        revoke_refresh_tokens(&mut tx, id).await?;
    }
    tx.commit().await?;
    Ok(agent)
}

async fn revoke_refresh_tokens(
    tx: &mut sqlx::PgConnection,
    agent_id: Uuid,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE refresh_tokens SET revoked_at = now() WHERE agent_id = $1 AND revoked_at IS NULL",
    )
    .bind(agent_id)
    .execute(tx)
    .await?;
    Ok(())
}

/// A new client secret for the agent (the old one stops working; refresh tokens end).
pub async fn rotate_agent_secret(
    pool: &PgPool,
    tenant_id: Uuid,
    id: Uuid,
) -> Result<Option<(Agent, String)>, StoreError> {
    let (secret, hash) = secrets::new_client_secret();
    let mut tx = pool.begin().await?;
    let agent = sqlx::query_as::<_, Agent>(sqlx::AssertSqlSafe(format!(
        "UPDATE agents SET secret_hash = $3, updated_at = now() WHERE tenant_id = $1 AND id = $2
         RETURNING {AGENT_COLUMNS}"
    )))
    .bind(tenant_id)
    .bind(id)
    .bind(hash)
    .fetch_optional(&mut *tx)
    .await?;
    if agent.is_some() {
        revoke_refresh_tokens(&mut tx, id).await?;
    }
    tx.commit().await?;
    Ok(agent.map(|a| (a, secret)))
}

pub async fn page_api_keys(
    pool: &PgPool,
    tenant_id: Uuid,
    page: Page,
) -> Result<(Vec<ApiKey>, i64), StoreError> {
    let keys = sqlx::query_as::<_, ApiKey>(sqlx::AssertSqlSafe(format!(
        "SELECT {API_KEY_COLUMNS} FROM api_keys WHERE tenant_id = $1 ORDER BY created_at, id LIMIT $2 OFFSET $3"
    )))
    .bind(tenant_id)
    .bind(page.limit)
    .bind(page.offset)
    .fetch_all(pool)
    .await?;
    let total = sqlx::query_scalar("SELECT count(*) FROM api_keys WHERE tenant_id = $1")
        .bind(tenant_id)
        .fetch_one(pool)
        .await?;
    Ok((keys, total))
}

pub async fn revoke_api_key(
    pool: &PgPool,
    tenant_id: Uuid,
    id: Uuid,
) -> Result<Option<ApiKey>, StoreError> {
    let mut tx = pool.begin().await?;
    let key = sqlx::query_as::<_, ApiKey>(sqlx::AssertSqlSafe(format!(
        "UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE tenant_id = $1 AND id = $2
         RETURNING {API_KEY_COLUMNS}"
    )))
    .bind(tenant_id)
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(key)
}
