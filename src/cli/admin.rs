//! `agentcrm admin`: bootstrap tenants, users, agents and API keys without any tool.
//! Secrets are printed once, here, and never again.

use clap::{Args, Subcommand, ValueEnum};
use serde_json::json;

use super::{CliError, DbArgs, open_store};
use crate::access::ratelimit::{self, Class, Limit};
use crate::access::store as access;
use crate::access::{Role, Scopes};
use crate::store::tenants::{self, LOCAL_TENANT_SLUG};
use crate::store::{DatabaseKind, Store, Tenant};

#[derive(Debug, Args)]
pub struct AdminArgs {
    #[command(flatten)]
    db: DbArgs,
    /// Print JSON instead of text (for scripts)
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: AdminCommand,
}

#[derive(Debug, Subcommand)]
enum AdminCommand {
    /// Create a tenant (a business; every row belongs to one)
    CreateTenant {
        /// Short name: lowercase letters, digits and dashes
        #[arg(long)]
        slug: String,
        #[arg(long)]
        name: String,
    },
    /// Create a human user
    CreateUser {
        #[command(flatten)]
        tenant: TenantArg,
        #[arg(long)]
        email: String,
        #[arg(long)]
        name: String,
        #[arg(long, value_enum, default_value = "member")]
        role: RoleArg,
        /// Scopes of a member (comma-separated); admins hold every scope
        #[arg(long, value_delimiter = ',')]
        scopes: Vec<String>,
    },
    /// Set a person's password for signing in from remote clients, read from standard input
    /// (its first line; at least 12 characters)
    SetPassword {
        #[command(flatten)]
        tenant: TenantArg,
        #[arg(long)]
        email: String,
    },
    /// Give a person (who must exist) a one-time link to set their password; prints it once
    InviteUser {
        #[command(flatten)]
        tenant: TenantArg,
        #[arg(long)]
        email: String,
        /// The server's public URL, to print the whole link
        #[arg(long, env = "AGENTCRM_PUBLIC_URL")]
        public_url: Option<String>,
    },
    /// List the applications people connected through sign-in (one person's with --email)
    ListConnectedClients {
        #[command(flatten)]
        tenant: TenantArg,
        #[arg(long)]
        email: Option<String>,
    },
    /// Withdraw a person's consent to an application: its tokens stop working at once
    DisconnectClient {
        #[command(flatten)]
        tenant: TenantArg,
        #[arg(long)]
        email: String,
        /// As list-connected-clients shows it
        #[arg(long)]
        client_id: String,
    },
    /// Register an agent; prints its client id and secret once
    CreateAgent {
        #[command(flatten)]
        tenant: TenantArg,
        #[arg(long)]
        name: String,
        #[arg(long, default_value = "")]
        description: String,
        /// An agent run by this organisation (default: external)
        #[arg(long)]
        internal: bool,
        /// Scopes granted (comma-separated), e.g. customers:read,search
        #[arg(long, value_delimiter = ',')]
        scopes: Vec<String>,
    },
    /// Create an API key for a user; prints the key once
    CreateApiKey {
        #[command(flatten)]
        tenant: TenantArg,
        /// Email of the user the key acts for
        #[arg(long)]
        user: String,
        #[arg(long)]
        name: String,
        /// A subset of the user's scopes (comma-separated); empty inherits the user's
        #[arg(long, value_delimiter = ',')]
        scopes: Vec<String>,
    },
    /// Override a rate limit for a tenant, or for one of its agents
    SetRateLimit {
        #[command(flatten)]
        tenant: TenantArg,
        /// Name of the agent (default: the whole tenant)
        #[arg(long)]
        agent: Option<String>,
        #[arg(long, value_enum)]
        class: ClassArg,
        /// Calls allowed per window
        #[arg(long, required_unless_present = "clear")]
        max: Option<i64>,
        /// The window in seconds (`--per`); default: the class's own (calls and bulk 3600,
        /// search 60)
        #[arg(long, visible_alias = "per")]
        window_seconds: Option<i64>,
        /// Remove the override (back to the tenant's limit or the default)
        #[arg(long)]
        clear: bool,
    },
    /// List tenants, or a tenant's users, agents or API keys
    List {
        what: Listing,
        #[command(flatten)]
        tenant: TenantArg,
    },
}

#[derive(Debug, Args)]
struct TenantArg {
    /// Tenant slug [default: local, the embedded default's tenant]
    #[arg(long, default_value = LOCAL_TENANT_SLUG)]
    tenant: String,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum RoleArg {
    Admin,
    Member,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ClassArg {
    Calls,
    Search,
    Bulk,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Listing {
    Tenants,
    Users,
    Agents,
    ApiKeys,
}

pub async fn run(args: AdminArgs) -> Result<(), CliError> {
    let store = open_store(&args.db).await?;
    let outcome = execute(&store, args.command, args.json).await;
    store.close().await;
    outcome
}

fn scopes(names: &[String]) -> Result<Scopes, CliError> {
    Scopes::parse(names).map_err(|e| CliError::Usage(e.to_string()))
}

async fn tenant(store: &Store, slug: &str) -> Result<Tenant, CliError> {
    if store.kind() == DatabaseKind::Embedded && slug == LOCAL_TENANT_SLUG {
        return Ok(tenants::ensure(store.pool(), LOCAL_TENANT_SLUG, "Local").await?);
    }
    tenants::find_by_slug(store.pool(), slug)
        .await?
        .ok_or_else(|| {
            CliError::Usage(format!(
                "no tenant `{slug}`; create it with `agentcrm admin create-tenant`"
            ))
        })
}

/// The id of the person with `email` in the tenant.
async fn person(
    pool: &sqlx::PgPool,
    tenant_id: uuid::Uuid,
    email: &str,
) -> Result<uuid::Uuid, CliError> {
    access::find_user_by_email(pool, tenant_id, email)
        .await?
        .map(|user| user.id)
        .ok_or_else(|| CliError::Usage(format!("no user {email} in this tenant")))
}

/// A unique-constraint violation, said in words.
fn conflict(error: crate::store::StoreError, what: &str) -> CliError {
    if let crate::store::StoreError::Database(sqlx::Error::Database(db)) = &error {
        if db.is_unique_violation() {
            return CliError::Usage(format!("{what} already exists"));
        }
        if db.is_check_violation() {
            return CliError::Usage(format!(
                "{what}: a value is out of range (check lengths and the slug pattern)"
            ));
        }
    }
    error.into()
}

fn row_text(row: &serde_json::Value) -> String {
    let Some(fields) = row.as_object() else {
        return row.to_string();
    };
    fields
        .iter()
        .filter_map(|(key, value)| {
            let shown = match value {
                serde_json::Value::Null => return None,
                serde_json::Value::String(text) => text.clone(),
                serde_json::Value::Array(items) if items.is_empty() => return None,
                serde_json::Value::Array(items) => items
                    .iter()
                    .map(|i| {
                        i.as_str()
                            .map(str::to_owned)
                            .unwrap_or_else(|| i.to_string())
                    })
                    .collect::<Vec<_>>()
                    .join(","),
                other => other.to_string(),
            };
            Some(format!("{key}: {shown}"))
        })
        .collect::<Vec<_>>()
        .join("  ")
}

fn print(json: bool, value: serde_json::Value, text: String) {
    if json {
        println!("{value}");
    } else {
        println!("{text}");
    }
}

async fn execute(store: &Store, command: AdminCommand, json: bool) -> Result<(), CliError> {
    let pool = store.pool();
    match command {
        AdminCommand::CreateTenant { slug, name } => {
            let tenant = tenants::create(pool, &slug, &name)
                .await
                .map_err(|e| conflict(e, "that tenant"))?
                .ok_or_else(|| CliError::Usage(format!("tenant `{slug}` already exists")))?;
            print(
                json,
                json!(tenant),
                format!("created tenant {} ({})", tenant.slug, tenant.id),
            );
        }
        AdminCommand::CreateUser {
            tenant: t,
            email,
            name,
            role,
            scopes: names,
        } => {
            let tenant = tenant(store, &t.tenant).await?;
            let role = match role {
                RoleArg::Admin => Role::Admin,
                RoleArg::Member => Role::Member,
            };
            let user = access::create_user(pool, tenant.id, &email, &name, role, scopes(&names)?)
                .await
                .map_err(|e| conflict(e, &format!("a user with email {email}")))?;
            print(
                json,
                json!(user),
                format!("created {} user {} ({})", user.role, user.email, user.id),
            );
        }
        AdminCommand::InviteUser {
            tenant: t,
            email,
            public_url,
        } => {
            let tenant = tenant(store, &t.tenant).await?;
            let user = person(pool, tenant.id, &email).await?;
            let (token, expires_at) =
                crate::access::signin::create_invite(pool, tenant.id, user, None).await?;
            let path = format!("/invite/{token}");
            let link = public_url.map_or_else(
                || path.clone(),
                |url| format!("{}{path}", url.trim_end_matches('/')),
            );
            print(
                json,
                json!({ "email": email, "invite": link, "expires_at": expires_at }),
                format!("{link}\n(one use, until {expires_at}; shown only now)"),
            );
        }
        AdminCommand::ListConnectedClients { tenant: t, email } => {
            let tenant = tenant(store, &t.tenant).await?;
            let user = match email {
                Some(email) => Some(person(pool, tenant.id, &email).await?),
                None => None,
            };
            let clients = crate::access::signin::connected_clients(pool, tenant.id, user).await?;
            let text = clients
                .iter()
                .map(|c| {
                    format!(
                        "{}  {} ({})  {}  last used {}",
                        c.email,
                        c.client_name,
                        c.client_id,
                        c.scopes.join(","),
                        c.last_used_at
                    )
                })
                .collect::<Vec<_>>()
                .join("\n");
            print(json, json!({ "clients": clients }), text);
        }
        AdminCommand::DisconnectClient {
            tenant: t,
            email,
            client_id,
        } => {
            let tenant = tenant(store, &t.tenant).await?;
            let user = person(pool, tenant.id, &email).await?;
            if !crate::access::signin::revoke_client(pool, tenant.id, user, &client_id).await? {
                return Err(CliError::Usage(format!(
                    "{email} has not connected a client `{client_id}`"
                )));
            }
            print(
                json,
                json!({ "email": email, "client_id": client_id, "disconnected": true }),
                format!("disconnected {client_id} from {email}"),
            );
        }
        AdminCommand::SetPassword { tenant: t, email } => {
            let tenant = tenant(store, &t.tenant).await?;
            let mut line = String::new();
            std::io::stdin().read_line(&mut line).map_err(|e| {
                CliError::Usage(format!(
                    "could not read the password from standard input: {e}"
                ))
            })?;
            let password = line.trim_end_matches(['\r', '\n']);
            if password.chars().count() < crate::access::signin::MIN_PASSWORD_LEN {
                return Err(CliError::Usage(format!(
                    "the password must be at least {} characters (give it on standard input)",
                    crate::access::signin::MIN_PASSWORD_LEN
                )));
            }
            if !crate::access::signin::set_password(pool, tenant.id, &email, password).await? {
                return Err(CliError::Usage(format!(
                    "no user {email} in {}; create it with `agentcrm admin create-user`",
                    tenant.slug
                )));
            }
            print(
                json,
                json!({ "email": email, "tenant": tenant.slug, "password_set": true }),
                format!("password set for {email} in {}", tenant.slug),
            );
        }
        AdminCommand::CreateAgent {
            tenant: t,
            name,
            description,
            internal,
            scopes: names,
        } => {
            let tenant = tenant(store, &t.tenant).await?;
            let (agent, secret) = access::create_agent(
                pool,
                tenant.id,
                &name,
                &description,
                internal,
                scopes(&names)?,
                None,
            )
            .await
            .map_err(|e| conflict(e, &format!("an agent named {name}")))?;
            print(
                json,
                json!({ "agent": agent, "client_id": agent.client_id, "client_secret": secret }),
                format!(
                    "registered agent {} ({})\nclient_id:     {}\nclient_secret: {secret}\n\
                     The secret is shown this once; store it now.",
                    agent.name, agent.id, agent.client_id
                ),
            );
        }
        AdminCommand::CreateApiKey {
            tenant: t,
            user,
            name,
            scopes: names,
        } => {
            let tenant = tenant(store, &t.tenant).await?;
            let owner = access::find_user_by_email(pool, tenant.id, &user)
                .await?
                .ok_or_else(|| {
                    CliError::Usage(format!("no user {user} in tenant {}", tenant.slug))
                })?;
            let requested = scopes(&names)?;
            let role = Role::parse(&owner.role).unwrap_or(Role::Member);
            let owned = crate::access::Principal::human_scopes(
                role,
                Scopes::parse(&owner.scopes).unwrap_or_default(),
            );
            if !owned.contains(requested) {
                return Err(CliError::Usage(format!(
                    "an API key's scopes must be a subset of its owner's; {user} lacks {:?}",
                    requested
                        .names()
                        .into_iter()
                        .filter(|s| !owned.contains(Scopes::parse(&[*s]).unwrap_or_default()))
                        .collect::<Vec<_>>()
                )));
            }
            let (api_key, key) =
                access::create_api_key(pool, tenant.id, owner.id, &name, requested).await?;
            print(
                json,
                json!({ "api_key": api_key, "key": key }),
                format!(
                    "created API key {} ({}) for {user}\nkey: {key}\nThe key is shown this once; store it now.",
                    api_key.name, api_key.prefix
                ),
            );
        }
        AdminCommand::SetRateLimit {
            tenant: t,
            agent,
            class,
            max,
            window_seconds,
            clear,
        } => {
            let tenant = tenant(store, &t.tenant).await?;
            let agent_id = match &agent {
                None => None,
                Some(name) => Some(
                    access::list_agents(pool, tenant.id)
                        .await?
                        .into_iter()
                        .find(|a| &a.name == name)
                        .ok_or_else(|| {
                            CliError::Usage(format!("no agent `{name}` in tenant {}", tenant.slug))
                        })?
                        .id,
                ),
            };
            let class = match class {
                ClassArg::Calls => Class::Calls,
                ClassArg::Search => Class::Search,
                ClassArg::Bulk => Class::Bulk,
            };
            let window_seconds = window_seconds.unwrap_or(class.default_limit().window_seconds);
            let limit = match (clear, max) {
                (true, _) => None,
                (false, Some(max)) if max >= 0 && (1..=86_400).contains(&window_seconds) => {
                    Some(Limit {
                        max,
                        window_seconds,
                    })
                }
                _ => {
                    return Err(CliError::Usage(
                        "--max must be >= 0 and --window-seconds 1 to 86400".into(),
                    ));
                }
            };
            ratelimit::set_limit(pool, tenant.id, agent_id, class, limit).await?;
            let target = agent.unwrap_or_else(|| format!("tenant {}", tenant.slug));
            print(
                json,
                json!({ "tenant": tenant.slug, "agent_id": agent_id, "class": class, "limit": limit }),
                match limit {
                    Some(l) => format!(
                        "{target}: at most {} calls per {} s in class `{}`",
                        l.max,
                        l.window_seconds,
                        class.name()
                    ),
                    None => format!("{target}: {} limit back to the default", class.name()),
                },
            );
        }
        AdminCommand::List { what, tenant: t } => {
            let value = match what {
                Listing::Tenants => json!(tenants::list(pool).await?),
                Listing::Users => {
                    json!(access::list_users(pool, tenant(store, &t.tenant).await?.id).await?)
                }
                Listing::Agents => {
                    json!(access::list_agents(pool, tenant(store, &t.tenant).await?.id).await?)
                }
                Listing::ApiKeys => {
                    json!(access::list_api_keys(pool, tenant(store, &t.tenant).await?.id).await?)
                }
            };
            // One line per row, `key: value` for what is set (JSON with --json).
            let text = value
                .as_array()
                .map(|rows| {
                    if rows.is_empty() {
                        return "none".to_owned();
                    }
                    rows.iter().map(row_text).collect::<Vec<_>>().join("\n")
                })
                .unwrap_or_default();
            print(json, value, text);
        }
    }
    Ok(())
}
