//! Tenants: every row of every table belongs to exactly one.

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use super::StoreError;

#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow)]
pub struct Tenant {
    pub id: Uuid,
    pub slug: String,
    pub name: String,
    pub created_at: DateTime<Utc>,
}

/// The tenant of the embedded local default: one person's own database.
pub const LOCAL_TENANT_SLUG: &str = "local";

/// Returns the tenant with `slug`, creating it with `name` when it does not exist yet.
pub async fn ensure(pool: &PgPool, slug: &str, name: &str) -> Result<Tenant, StoreError> {
    // The no-op update makes RETURNING yield the existing row on conflict.
    let tenant = sqlx::query_as::<_, Tenant>(
        "INSERT INTO tenants (slug, name) VALUES ($1, $2)
         ON CONFLICT (slug) DO UPDATE SET slug = EXCLUDED.slug
         RETURNING id, slug, name, created_at",
    )
    .bind(slug)
    .bind(name)
    .fetch_one(pool)
    .await?;
    Ok(tenant)
}

pub async fn get(pool: &PgPool, id: Uuid) -> Result<Option<Tenant>, StoreError> {
    let tenant =
        sqlx::query_as::<_, Tenant>("SELECT id, slug, name, created_at FROM tenants WHERE id = $1")
            .bind(id)
            .fetch_optional(pool)
            .await?;
    Ok(tenant)
}

pub async fn find_by_slug(pool: &PgPool, slug: &str) -> Result<Option<Tenant>, StoreError> {
    let tenant = sqlx::query_as::<_, Tenant>(
        "SELECT id, slug, name, created_at FROM tenants WHERE slug = $1",
    )
    .bind(slug)
    .fetch_optional(pool)
    .await?;
    Ok(tenant)
}

pub async fn list(pool: &PgPool) -> Result<Vec<Tenant>, StoreError> {
    let tenants = sqlx::query_as::<_, Tenant>(
        "SELECT id, slug, name, created_at FROM tenants ORDER BY created_at, id",
    )
    .fetch_all(pool)
    .await?;
    Ok(tenants)
}

/// Creates a tenant; `None` when the slug is taken.
pub async fn create(pool: &PgPool, slug: &str, name: &str) -> Result<Option<Tenant>, StoreError> {
    let tenant = sqlx::query_as::<_, Tenant>(
        "INSERT INTO tenants (slug, name) VALUES ($1, $2) ON CONFLICT (slug) DO NOTHING
         RETURNING id, slug, name, created_at",
    )
    .bind(slug)
    .bind(name)
    .fetch_optional(pool)
    .await?;
    Ok(tenant)
}
