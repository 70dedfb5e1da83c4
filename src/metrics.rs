//! Prometheus metrics (issue 21), in the text format at `/metrics`: on `--metrics-listen`
//! (an address of its own, for the operator's network) or on the main listener with the
//! operator's `--metrics-token`. They are the whole server's, across tenants, so a tenant's
//! credential never reads them.
//!
//! Counters and histograms are recorded where things happen (the call path, the audit
//! writer, HTTP sessions); queue depths, pending approvals and the pool are sampled from the
//! database when scraped. Labels are bounded: a tool that is not in the catalog is `unknown`
//! (its name comes from the caller), a remote server's tool is `remote`.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::error::ErrorCode;
use crate::store::Store;

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

const SECONDS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
const SIZES: [f64; 9] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

/// Installs the process's recorder (once); `None` if another was installed first.
pub fn handle() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &SECONDS)
                .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_size".into()), &SIZES));
            match builder.map(|b| b.install_recorder()) {
                Ok(Ok(handle)) => {
                    // Histogram samples wait in buffers until upkeep folds them into their
                    // buckets; unscraped, they grew by every call (the soak's RSS went from
                    // 37 to 46 MB in 10 minutes). The exporter leaves upkeep to its caller.
                    let upkeep = handle.clone();
                    tokio::spawn(async move {
                        let mut every = tokio::time::interval(std::time::Duration::from_secs(5));
                        loop {
                            every.tick().await;
                            upkeep.run_upkeep();
                        }
                    });
                    Some(handle)
                }
                Ok(Err(error)) => {
                    tracing::warn!(%error, "metrics: could not install the recorder");
                    None
                }
                Err(error) => {
                    tracing::warn!(%error, "metrics: bad histogram buckets");
                    None
                }
            }
        })
        .as_ref()
}

/// One tool call's outcome (`ok`, `input_required`, `held`, `refused`, `error`) and time.
pub fn tool_call(
    tool: &'static str,
    outcome: &'static str,
    principal_kind: &'static str,
    seconds: f64,
) {
    let key = (tool, outcome, principal_kind);
    let record = |(calls, duration): &CallHandles| {
        calls.increment(1);
        duration.record(seconds);
    };
    if let Some(handles) = CALLS.read().ok().as_ref().and_then(|m| m.get(&key)) {
        return record(handles);
    }
    let handles = (
        metrics::counter!("agentcrm_tool_calls_total", "tool" => tool, "outcome" => outcome,
            "principal_kind" => principal_kind),
        metrics::histogram!("agentcrm_tool_call_duration_seconds", "tool" => tool),
    );
    record(&handles);
    if let Ok(mut calls) = CALLS.write() {
        calls.insert(key, handles);
    }
}

/// The handles of every call's counter and histogram, by tool, outcome and principal kind:
/// found through the recorder, a metric costs a hash of its labels, a lock and a copy of
/// its key on every call. Bounded by the labels (tools × outcomes × kinds). Taken after the
/// recorder is installed (first thing, for `agentcrm http`).
type CallHandles = (metrics::Counter, metrics::Histogram);
type CallLabels = (&'static str, &'static str, &'static str);
static CALLS: std::sync::LazyLock<
    std::sync::RwLock<std::collections::HashMap<CallLabels, CallHandles>>,
> = std::sync::LazyLock::new(Default::default);

/// A refused call, by why: `forbidden` (scopes or policy; scope denials are also counted in
/// `agentcrm_scope_denials_total`), `rate_limited`, `approval_held`, `invalid_request`,
/// `not_found`, `conflict`, `unknown_tool`, `unavailable`.
pub fn refusal(reason: &'static str) {
    metrics::counter!("agentcrm_refusals_total", "reason" => reason).increment(1);
}

pub fn scope_denial() {
    metrics::counter!("agentcrm_scope_denials_total").increment(1);
}

/// How an error is counted: as a refusal (with its reason), or as an error (`None`).
pub fn refusal_reason(code: ErrorCode) -> Option<&'static str> {
    Some(match code {
        ErrorCode::Forbidden => "forbidden",
        ErrorCode::RateLimited => "rate_limited",
        ErrorCode::PendingApproval => "approval_held",
        ErrorCode::InvalidRequest => "invalid_request",
        ErrorCode::NotFound => "not_found",
        ErrorCode::Conflict => "conflict",
        ErrorCode::Unauthorized => "unauthorized",
        _ => return None,
    })
}

pub fn audit_batch(events: usize, seconds: f64) {
    metrics::histogram!("agentcrm_audit_batch_size").record(events as f64);
    metrics::histogram!("agentcrm_audit_write_seconds").record(seconds);
}

/// Audit records waiting for the writer.
pub fn audit_queue(waiting: usize) {
    metrics::gauge!("agentcrm_audit_queue").set(waiting as f64);
}

pub fn http_sessions(open: usize) {
    metrics::gauge!("agentcrm_http_sessions").set(open as f64);
}

pub fn http_streams(change: f64) {
    metrics::gauge!("agentcrm_http_streams").increment(change);
}

/// The metrics text, with the database's queues and the pool sampled now.
pub async fn render(store: &Store) -> Option<String> {
    let handle = handle()?;
    let pool = store.pool();
    let size = pool.size() as f64;
    let idle = pool.num_idle() as f64;
    metrics::gauge!("agentcrm_db_pool_connections", "state" => "in_use").set(size - idle);
    metrics::gauge!("agentcrm_db_pool_connections", "state" => "idle").set(idle);
    metrics::gauge!("agentcrm_db_pool_max").set(f64::from(pool.options().get_max_connections()));
    let queues: Result<Vec<(String, i64, f64)>, sqlx::Error> = sqlx::query_as(
        "SELECT 'workflow_executions', count(*),
                coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8
         FROM workflow_executions WHERE status IN ('queued', 'running')
         UNION ALL
         SELECT 'agent_runs', count(*), coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8
         FROM agent_runs WHERE status IN ('queued', 'running')
         UNION ALL
         SELECT 'tasks', count(*), coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8
         FROM tasks WHERE status = 'running'
         UNION ALL
         SELECT 'webhook_deliveries', count(*),
                coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8
         FROM webhook_deliveries WHERE status IN ('pending', 'delivering')
         UNION ALL
         SELECT 'agent_callbacks', count(*),
                coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8
         FROM agent_callbacks WHERE status IN ('pending', 'delivering')
         UNION ALL
         SELECT 'pending_actions', count(*),
                coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8
         FROM pending_actions WHERE state = 'pending'",
    )
    .fetch_all(pool)
    .await;
    match queues {
        Ok(queues) => {
            for (queue, depth, oldest) in queues {
                if queue == "pending_actions" {
                    metrics::gauge!("agentcrm_pending_approvals").set(depth as f64);
                    metrics::gauge!("agentcrm_pending_approvals_oldest_seconds").set(oldest);
                    continue;
                }
                metrics::gauge!("agentcrm_queue_depth", "queue" => queue.clone()).set(depth as f64);
                metrics::gauge!("agentcrm_queue_oldest_seconds", "queue" => queue).set(oldest);
            }
            metrics::gauge!("agentcrm_database_up").set(1.0);
        }
        Err(error) => {
            store.observe(&error);
            metrics::gauge!("agentcrm_database_up").set(0.0);
        }
    }
    Some(handle.render())
}
