//! `agentcrm demo`: a demo tenant with sample data, an admin, an agent and an API key,
//! and how to connect. Seed data is inserted directly (it is not a change: no events).

use clap::Args;
use serde_json::json;
use sqlx::{Postgres, QueryBuilder};
use uuid::Uuid;

use super::{CliError, DbArgs, open_store};
use crate::access::store as access;
use crate::access::{Role, Scopes};
use crate::store::DatabaseKind;
use crate::store::tenants::{self, LOCAL_TENANT_SLUG};

#[derive(Debug, Args)]
pub struct DemoArgs {
    #[command(flatten)]
    db: DbArgs,
    /// Tenant to fill [default: on the embedded default, `local` (where its local owner
    /// looks); on a shared database, a new tenant `demo`]
    #[arg(long)]
    tenant: Option<String>,
    /// How many customers to create
    #[arg(long, default_value_t = 300)]
    customers: usize,
    /// Print JSON instead of text (for scripts)
    #[arg(long)]
    json: bool,
}

const FIRST: [&str; 12] = [
    "Ana", "Bruno", "Carla", "Diego", "Elena", "Farid", "Greta", "Hugo", "Ines", "Jonas", "Keiko",
    "Luis",
];
const LAST: [&str; 10] = [
    "Lima", "Souza", "Mendes", "Berg", "Novak", "Okafor", "Rossi", "Tanaka", "Weber", "Costa",
];
const COMPANIES: [&str; 6] = [
    "Lima SA",
    "Northwind",
    "Acme Ltd",
    "Globex",
    "Initech",
    "Umbrella",
];
const STATUSES: [&str; 6] = [
    "lead", "prospect", "hot_lead", "customer", "inactive", "churned",
];
const TYPES: [&str; 5] = ["email", "call", "meeting", "chat", "note"];
const SENTIMENTS: [&str; 3] = ["positive", "neutral", "negative"];

pub async fn run(args: DemoArgs) -> Result<(), CliError> {
    if !(1..=100_000).contains(&args.customers) {
        return Err(CliError::Usage("--customers must be 1 to 100000".into()));
    }
    let store = open_store(&args.db).await?;
    let outcome = seed(&store, &args).await;
    store.close().await;
    let report = outcome?;
    if args.json {
        println!("{report}");
    } else {
        println!(
            "demo tenant `{}` with {} customers, interactions, products and invoices\n\
             admin:   {} (API key below)\n\
             API key: {}\n\
             agent:   {} client_id {} client_secret {}\n\
             Shown once. Connect over stdio:  AGENTCRM_API_KEY=<key> agentcrm stdio\n\
             or over HTTP:  agentcrm http, then send `X-Api-Key: <key>` to http://127.0.0.1:8848/mcp",
            report["tenant"].as_str().unwrap_or_default(),
            report["customers"],
            report["admin_email"].as_str().unwrap_or_default(),
            report["api_key"].as_str().unwrap_or_default(),
            report["agent"]["name"].as_str().unwrap_or_default(),
            report["agent"]["client_id"].as_str().unwrap_or_default(),
            report["agent"]["client_secret"]
                .as_str()
                .unwrap_or_default(),
        );
    }
    Ok(())
}

async fn seed(store: &crate::store::Store, args: &DemoArgs) -> Result<serde_json::Value, CliError> {
    let pool = store.pool();
    let slug = match &args.tenant {
        Some(slug) => slug.trim().to_owned(),
        None if store.kind() == DatabaseKind::Embedded => LOCAL_TENANT_SLUG.to_owned(),
        None => "demo".to_owned(),
    };
    // The local tenant (and any existing one named) gets the demo data added; a tenant
    // that already has it is refused rather than filled twice.
    let tenant = if slug == LOCAL_TENANT_SLUG {
        tenants::ensure(pool, &slug, "Local").await?
    } else {
        match tenants::create(pool, &slug, "Demo company").await? {
            Some(tenant) => tenant,
            None => tenants::find_by_slug(pool, &slug)
                .await?
                .ok_or_else(|| CliError::Usage(format!("tenant `{slug}` could not be created")))?,
        }
    };
    let email = format!("admin@{slug}.example");
    let filled: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM users WHERE tenant_id = $1 AND email = $2)",
    )
    .bind(tenant.id)
    .bind(&email)
    .fetch_one(pool)
    .await
    .map_err(crate::store::StoreError::from)?;
    if filled {
        return Err(CliError::Usage(format!(
            "tenant `{slug}` already has the demo data ({email} exists); pick another with --tenant"
        )));
    }
    let admin = access::create_user(
        pool,
        tenant.id,
        &email,
        "Demo admin",
        Role::Admin,
        Scopes::NONE,
    )
    .await?;
    let (_, key) = access::create_api_key(pool, tenant.id, admin.id, "demo", Scopes::NONE).await?;
    let agent_scopes = Scopes::parse(&[
        "customers:read",
        "customers:write",
        "interactions:read",
        "interactions:write",
        "search",
        "reports",
        "handoff",
        "invoices:read",
    ])
    .unwrap_or_default();
    let (agent, secret) = access::create_agent(
        pool,
        tenant.id,
        "demo-assistant",
        "An example agent",
        true,
        agent_scopes,
        Some(admin.id),
    )
    .await?;

    let mut tx = pool.begin().await.map_err(crate::store::StoreError::from)?;
    let mut customer_ids = Vec::with_capacity(args.customers);
    for chunk in (0..args.customers).collect::<Vec<_>>().chunks(1000) {
        let mut insert: QueryBuilder<Postgres> = QueryBuilder::new(
            "INSERT INTO customers (tenant_id, first_name, last_name, email, phone, company, status, assigned_to, tags) ",
        );
        insert.push_values(chunk, |mut row, n| {
            let first = FIRST[n % FIRST.len()];
            let last = LAST[(n / FIRST.len()) % LAST.len()];
            row.push_bind(tenant.id)
                .push_bind(first)
                .push_bind(last)
                .push_bind(format!(
                    "{}.{}{}@example.com",
                    first.to_lowercase(),
                    last.to_lowercase(),
                    n
                ))
                .push_bind(format!("+1 555 {:04}", n % 10_000))
                .push_bind(COMPANIES[n % COMPANIES.len()])
                .push_bind(STATUSES[(n * 7) % STATUSES.len()])
                .push_bind(if n % 2 == 0 {
                    "sales_team"
                } else {
                    "support_team"
                })
                .push_bind(if n % 5 == 0 {
                    vec!["vip".to_owned()]
                } else {
                    Vec::<String>::new()
                });
        });
        insert.push(" RETURNING id");
        let ids: Vec<Uuid> = insert
            .build_query_scalar()
            .fetch_all(&mut *tx)
            .await
            .map_err(crate::store::StoreError::from)?;
        customer_ids.extend(ids);
    }
    let interactions: Vec<(Uuid, usize)> = customer_ids
        .iter()
        .take(200)
        .enumerate()
        .flat_map(|(n, id)| [(*id, n), (*id, n + 1)])
        .collect();
    for chunk in interactions.chunks(1000) {
        let mut insert: QueryBuilder<Postgres> = QueryBuilder::new(
            "INSERT INTO interactions (tenant_id, customer_id, type, direction, subject, notes, occurred_at, metadata) ",
        );
        insert.push_values(chunk, |mut row, (id, n)| {
            row.push_bind(tenant.id)
                .push_bind(*id)
                .push_bind(TYPES[n % TYPES.len()])
                .push_bind(if n % 2 == 0 { "inbound" } else { "outbound" })
                .push_bind(
                    [
                        "Pricing question",
                        "Renewal",
                        "Onboarding",
                        "Support ticket",
                    ][n % 4],
                )
                .push_bind(
                    [
                        "Asked about volume pricing",
                        "Wants to renew next quarter",
                        "Needs a training session",
                        "Login problem solved",
                    ][n % 4],
                )
                .push_bind(chrono::Utc::now() - chrono::Duration::days((n % 60) as i64))
                .push_bind(
                    json!({ "sentiment": SENTIMENTS[n % 3], "duration_seconds": 60 * (n % 30) }),
                );
        });
        insert
            .build()
            .execute(&mut *tx)
            .await
            .map_err(crate::store::StoreError::from)?;
    }
    sqlx::query(
        "INSERT INTO products (tenant_id, name, sku, unit_price, currency) VALUES
         ($1, 'Starter plan', 'PLAN-S', 2900, 'USD'), ($1, 'Team plan', 'PLAN-T', 9900, 'USD'),
         ($1, 'Onboarding day', 'SERV-ON', 80000, 'USD')",
    )
    .bind(tenant.id)
    .execute(&mut *tx)
    .await
    .map_err(crate::store::StoreError::from)?;
    let invoice_statuses = ["draft", "sent", "paid", "paid", "void"];
    for (n, id) in customer_ids.iter().take(50).enumerate() {
        let quantity = (n % 5 + 1) as i64;
        let total = 9900 * quantity;
        let invoice: Uuid = sqlx::query_scalar(
            "INSERT INTO invoices (tenant_id, customer_id, status, currency, subtotal, discount, total, created_at)
             VALUES ($1, $2, $3, 'USD', $4, 0, $4, now() - make_interval(days => $5)) RETURNING id",
        )
        .bind(tenant.id)
        .bind(id)
        .bind(invoice_statuses[n % invoice_statuses.len()])
        .bind(total)
        .bind((n * 7 % 180) as i32)
        .fetch_one(&mut *tx)
        .await
        .map_err(crate::store::StoreError::from)?;
        sqlx::query(
            "INSERT INTO invoice_lines (tenant_id, invoice_id, position, description, quantity, unit_price, amount)
             VALUES ($1, $2, 1, 'Team plan', $3, 9900, $4)",
        )
        .bind(tenant.id)
        .bind(invoice)
        .bind(quantity as i32)
        .bind(total)
        .execute(&mut *tx)
        .await
        .map_err(crate::store::StoreError::from)?;
    }
    tx.commit().await.map_err(crate::store::StoreError::from)?;
    Ok(json!({
        "tenant": tenant.slug,
        "customers": customer_ids.len(),
        "admin_email": email,
        "api_key": key,
        "agent": { "name": agent.name, "client_id": agent.client_id, "client_secret": secret },
    }))
}
