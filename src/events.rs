//! Change events (SPEC §3), appended to the outbox inside the transaction of the change,
//! so an event exists exactly when its change committed. An event carries its cause (the
//! work done on someone's behalf that wrote it), so triggered work never loops.

use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use crate::access::Principal;
use crate::store::StoreError;

pub async fn emit(
    tx: &mut sqlx::PgConnection,
    principal: &Principal,
    event_type: &'static str,
    subject_id: Uuid,
    payload: Value,
) -> Result<(), StoreError> {
    let cause = principal
        .delegation
        .as_ref()
        .map(|d| d.cause.json())
        .unwrap_or_else(|| Value::Object(Default::default()));
    sqlx::query(
        "INSERT INTO events (tenant_id, type, subject_id, payload, principal_kind, principal_id,
             cause, traceparent)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(principal.tenant_id)
    .bind(event_type)
    .bind(subject_id)
    .bind(payload)
    .bind(principal.kind.as_str())
    .bind(principal.id)
    .bind(cause)
    .bind(crate::telemetry::traceparent())
    .execute(tx)
    .await?;
    Ok(())
}

/// Every event type (SPEC §3). Webhooks subscribe to these, or to `*`.
pub const EVENT_TYPES: [&str; 10] = [
    "customer.created",
    "customer.updated",
    "customer.deleted",
    "interaction.created",
    "handoff.created",
    "handoff.decided",
    "invoice.created",
    "invoice.updated",
    "workflow.execution.completed",
    "agent.run.completed",
];

/// The scope whose holder may read what an event of `event_type` carries.
pub fn read_scope(event_type: &str) -> Option<&'static str> {
    Some(match event_type.split('.').next()? {
        "customer" => "customers:read",
        "interaction" => "interactions:read",
        "handoff" => "handoff",
        "invoice" => "invoices:read",
        "workflow" => "workflows:read",
        "agent" => "agents:read",
        _ => return None,
    })
}

/// Why `principal` may not read what events of `event_type` carry (it lacks the scope), if
/// it may not.
pub fn read_refusal(principal: &Principal, event_type: &str) -> Option<String> {
    let scope = read_scope(event_type)?;
    let needed = crate::access::Scopes::parse(&[scope]).unwrap_or(crate::access::Scopes::EVERY);
    (!principal.scopes.contains(needed)).then(|| {
        format!(
            "`{event_type}` events carry records that need `{scope}`, which {} does not hold",
            principal.name
        )
    })
}

/// Why events of `event_type` may not reach work done for `reader` (a webhook's maker, a
/// triggered workflow's chain), if they may not: it lacks the event's read scope, or field
/// rules, row conditions or object grants apply to it (events carry whole records). The
/// same for every event of the type; see [`subject_refusal`] for one event's own.
pub async fn reader_refusal(
    pool: &PgPool,
    reader: &Principal,
    event_type: &str,
) -> Result<Option<String>, StoreError> {
    if let Some(refusal) = read_refusal(reader, event_type) {
        return Ok(Some(refusal));
    }
    let policy = crate::access::policy::Policy::load(pool, reader).await?;
    Ok(policy.is_restricted().then(|| {
        format!(
            "field rules, row conditions or object grants apply to {}, and events carry whole \
             records",
            reader.name
        )
    }))
}

/// Why one event may not reach work done for `reader`, if it may not: an agent run's
/// completion carries its output, read (as with list_agent_runs) by those it was done for
/// and admins.
pub async fn subject_refusal(
    pool: &PgPool,
    reader: &Principal,
    event_type: &str,
    subject_id: Option<Uuid>,
) -> Result<Option<String>, StoreError> {
    if event_type != "agent.run.completed" {
        return Ok(None);
    }
    let chain: Option<Value> =
        sqlx::query_scalar("SELECT chain FROM agent_runs WHERE tenant_id = $1 AND id = $2")
            .bind(reader.tenant_id)
            .bind(subject_id)
            .fetch_optional(pool)
            .await?;
    let chain = chain
        .as_ref()
        .map(crate::access::delegation::read_chain)
        .unwrap_or_default();
    Ok((!crate::access::delegation::may_read(reader, &chain))
        .then(|| "the run was done for others than whom the event would reach".to_owned()))
}
