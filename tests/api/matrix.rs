//! The permission matrix, generated from the catalog: every tool, called by every kind of
//! principal (an admin, a member, a narrowed API key, agents with field rules, with row
//! conditions and with object grants), along every path work takes (a direct call,
//! `run_tool`, a workflow started by hand, by an event and by a schedule, an agent run, an
//! approved action), is
//! refused for lack of permission exactly when the intersection of the chain it acts for
//! lacks it — never wider. Calls carry arguments no tool accepts, so a permitted call stops
//! at validation and nothing is changed by the probing itself.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use agentcrm::access::Scopes;
use agentcrm::toolkit::catalog::{Catalog, RegisteredTool, handles_secrets, makes_standing_work};
use rmcp::model::CallToolRequestParams;
use serde_json::{Map, Value, json};

use crate::helpers::*;

/// Tools a workflow step never calls (they start workflows), refused when saved.
const NOT_IN_STEPS: [&str; 2] = ["execute_workflow", "run_tool"];
const CHUNK: usize = 45;

struct Principal {
    label: &'static str,
    client: Client,
    scopes: Scopes,
    agent: bool,
    /// Field rules, row conditions or object grants: no event triggers.
    restricted: bool,
}

fn scopes(names: &[&str]) -> Scopes {
    Scopes::parse(names).unwrap()
}

const WORKFLOWS: [&str; 3] = ["workflows:read", "workflows:write", "workflows:execute"];

fn with_workflows(names: &[&'static str]) -> Vec<&'static str> {
    let mut all = names.to_vec();
    all.extend(WORKFLOWS);
    all
}

/// Why a call was refused for lack of permission, if it was.
fn permission_refusal(description: &str) -> bool {
    description.contains("needs the scope(s)")
        || description.contains("reserved for human administrators")
        || description.contains("is decided by a person")
        || description.contains("runs later for its owner")
}

/// May a call of `tool` made for a chain with `scopes` (an agent in it or not) run?
fn expected(tool: &RegisteredTool, scopes: Scopes, agent: bool, direct: bool) -> bool {
    scopes.contains(tool.required)
        && !(tool.humans_only && agent)
        && (direct || !(tool.needs_person || makes_standing_work(tool.def.name)))
}

/// The arguments a step gets: every required one a reference to an input never given.
fn step_arguments(tool: &RegisteredTool) -> Value {
    let mut arguments = Map::new();
    for name in tool
        .input_schema()
        .get("required")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
    {
        arguments.insert(name.to_owned(), json!(format!("{{{{input.{name}}}}}")));
    }
    Value::Object(arguments)
}

fn step_tools(catalog: &Catalog) -> Vec<&RegisteredTool> {
    catalog
        .iter()
        .filter(|t| {
            !handles_secrets(t.def.name)
                && !NOT_IN_STEPS.contains(&t.def.name)
                && !t.needs_person
                && !makes_standing_work(t.def.name)
        })
        .collect()
}

/// Workflows of `client` calling every step tool, `CHUNK` steps each, with `extra` fields.
async fn probe_workflows(client: &Client, label: &str, extra: Value) -> Result<Vec<String>, Value> {
    let tools = step_tools(agentcrm::catalog::builtin());
    let mut ids = Vec::new();
    for (n, chunk) in tools.chunks(CHUNK).enumerate() {
        let steps: Vec<Value> = chunk
            .iter()
            .map(|t| {
                json!({ "id": t.def.name, "tool": t.def.name, "arguments": step_arguments(t),
                        "on_error": { "then": "continue" }, "timeout_seconds": 30 })
            })
            .collect();
        let mut args = json!({ "name": format!("{label} {n}"), "steps": steps });
        if let (Value::Object(args), Value::Object(extra)) = (&mut args, &extra) {
            args.extend(extra.clone());
        }
        let created = call(client, "create_workflow", args).await;
        if created.is_error == Some(true) {
            return Err(created.structured_content.unwrap_or_default());
        }
        ids.push(
            created.structured_content.unwrap()["workflow"]["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    Ok(ids)
}

/// Checks every step of an execution against the expected permissions of its chain.
fn check_steps(
    execution: &Value,
    scopes: Scopes,
    agent: bool,
    what: &str,
    mismatches: &mut Vec<String>,
    counts: &mut (usize, usize),
) {
    let catalog = agentcrm::catalog::builtin();
    let steps = execution["steps"].as_array().unwrap();
    assert!(!steps.is_empty(), "{what}: no steps ran: {execution}");
    for step in steps {
        let name = step["tool"].as_str().unwrap();
        let tool = catalog.get(name).unwrap();
        let error = step["error"].as_str().unwrap_or_default();
        let refused = step["status"] == "failed" && permission_refusal(error);
        let allowed = expected(tool, scopes, agent, false);
        tally(what, name, refused, allowed, error, mismatches, counts);
    }
}

/// Records one call's outcome in its cell, and a mismatch when refusal and expectation
/// disagree.
fn tally(
    what: &str,
    tool: &str,
    refused: bool,
    allowed: bool,
    detail: &str,
    mismatches: &mut Vec<String>,
    counts: &mut (usize, usize),
) {
    if refused == allowed {
        mismatches.push(format!(
            "{what}: `{tool}` {} (expected {}): {detail}",
            if refused { "refused" } else { "permitted" },
            if allowed { "permitted" } else { "refused" },
        ));
    }
    if refused {
        counts.1 += 1;
    } else {
        counts.0 += 1;
    }
}

async fn executions_of(admin: &Client, workflow: &str, count: u64) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let listed = call_ok(
            admin,
            "list_workflow_executions",
            json!({ "workflow_id": workflow }),
        )
        .await;
        let ended =
            listed["executions"].as_array().unwrap().iter().all(|e| {
                ["succeeded", "failed", "cancelled"].contains(&e["status"].as_str().unwrap())
            });
        if listed["total"].as_u64() >= Some(count) && ended {
            let mut out = Vec::new();
            for e in listed["executions"].as_array().unwrap() {
                out.push(
                    call_ok(
                        admin,
                        "get_workflow_execution",
                        json!({ "execution_id": e["id"] }),
                    )
                    .await,
                );
            }
            return out;
        }
        assert!(
            Instant::now() < deadline,
            "executions of {workflow} did not end: {listed}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test]
async fn every_tool_by_every_principal_along_every_path_is_bounded_by_its_chain() {
    let db = TestDb::new().await;
    // One server process for everyone (each process opens up to ~20 connections, and the
    // machine's PostgreSQL takes 100), reached over HTTP with each principal's credential.
    let server = HttpServer::start(db.command(&["http"]));
    let url = server.mcp_url();
    let admin = http_client(&url, &db.admin_key, Generation::Stateless).await;
    let catalog = agentcrm::catalog::builtin();
    let mut principals = Vec::new();
    let member_scopes = with_workflows(&[
        "customers:read",
        "customers:write",
        "interactions:read",
        "interactions:write",
        "search",
        "reports",
        "handoff",
        "agents:read",
        "agents:execute",
        "invoices:read",
    ]);
    db.admin(&[
        "create-user",
        "--tenant",
        "acme",
        "--email",
        "member@acme.test",
        "--name",
        "Member",
        "--role",
        "member",
        "--scopes",
        &member_scopes.join(","),
    ]);
    let key_of = |email: &str, scopes: &[&str]| db.api_key(email, scopes);
    // The admin probes through a key of its own: the tests' admin key polls, and each key
    // has its own rate limits.
    principals.push(Principal {
        label: "admin",
        client: http_client(&url, &key_of("owner@acme.test", &[]), Generation::Stateless).await,
        scopes: Scopes::EVERY,
        agent: false,
        restricted: false,
    });
    principals.push(Principal {
        label: "member",
        client: http_client(
            &url,
            &key_of("member@acme.test", &[]),
            Generation::Stateless,
        )
        .await,
        scopes: scopes(&member_scopes),
        agent: false,
        restricted: false,
    });
    let narrowed = with_workflows(&[
        "customers:read",
        "customers:delete",
        "invoices:read",
        "invoices:write",
        "handoff",
        "handoff:decide",
        "audit:read",
        "admin",
    ]);
    principals.push(Principal {
        label: "narrowed key",
        client: http_client(
            &url,
            &key_of("owner@acme.test", &narrowed),
            Generation::Stateless,
        )
        .await,
        scopes: scopes(&narrowed),
        agent: false,
        restricted: false,
    });
    let customer =
        call_ok(&admin, "create_customer", json!({ "first_name": "Seed" })).await["customer"]["id"]
            .clone();
    let agents: [(&'static str, Vec<&'static str>, Value); 3] = [
        (
            "field-ruled agent",
            with_workflows(&[
                "customers:read",
                "customers:write",
                "interactions:read",
                "search",
                "agents:read",
            ]),
            json!({ "field_rules": { "customers": ["first_name", "email"] } }),
        ),
        (
            "conditioned agent",
            with_workflows(&[
                "customers:read",
                "invoices:read",
                "invoices:write",
                "reports",
                "connections:read",
            ]),
            json!({ "conditions": { "customers": [{ "field": "status", "op": "eq", "value": "lead" }] } }),
        ),
        (
            "granted agent",
            with_workflows(&[
                "customers:read",
                "customers:write",
                "customers:delete",
                "bulk",
                "webhooks:manage",
            ]),
            json!({ "grants": [{ "scope": "customers:delete", "except_ids": [customer] }] }),
        ),
    ];
    for (label, names, policy) in agents {
        let agent = call_ok(
            &admin,
            "register_agent",
            json!({ "name": label.replace(' ', "-"), "scopes": names }),
        )
        .await;
        let mut update = policy.clone();
        update["agent_id"] = agent["agent"]["id"].clone();
        call_ok(&admin, "update_agent_permissions", update).await;
        let token: Value = reqwest::Client::new()
            .post(format!("{}/oauth/token", server.base))
            .json(&json!({ "grant_type": "client_credentials",
                           "client_id": agent["client_id"], "client_secret": agent["client_secret"] }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        principals.push(Principal {
            label,
            client: http_client(
                &url,
                token["access_token"].as_str().expect("a token"),
                Generation::Stateless,
            )
            .await,
            scopes: scopes(&names),
            agent: true,
            restricted: true,
        });
    }
    let mut mismatches = Vec::new();
    let mut totals: BTreeMap<String, (usize, usize)> = BTreeMap::new();

    // Direct calls and run_tool.
    for p in &principals {
        for (path, via_run_tool) in [("direct", false), ("run_tool", true)] {
            let counts = totals.entry(format!("{} / {path}", p.label)).or_default();
            for tool in catalog.iter() {
                let probe = json!({ "__matrix_probe": true });
                let (name, arguments) = if via_run_tool {
                    (
                        "run_tool",
                        json!({ "name": tool.def.name, "arguments": probe }),
                    )
                } else {
                    (tool.def.name, probe)
                };
                let Value::Object(arguments) = arguments else {
                    unreachable!()
                };
                let answer = p
                    .client
                    .call_tool(CallToolRequestParams::new(name).with_arguments(arguments))
                    .await;
                // Over HTTP a call of a tool the caller lacks the scopes of is answered 403
                // (`insufficient_scope`, MCP's step-up), which the client reports as an error.
                let (refused, description) = match answer {
                    Ok(result) => {
                        let description = result
                            .structured_content
                            .as_ref()
                            .and_then(|c| c["error_description"].as_str())
                            .unwrap_or_default()
                            .to_owned();
                        (
                            result.is_error == Some(true) && permission_refusal(&description),
                            description,
                        )
                    }
                    Err(error) => {
                        let text = error.to_string();
                        assert!(
                            text.to_lowercase().contains("insufficient scope")
                                || text.contains("403"),
                            "{} / {path}: `{}`: {text}",
                            p.label,
                            tool.def.name
                        );
                        (true, text)
                    }
                };
                let allowed = expected(tool, p.scopes, p.agent, true);
                tally(
                    &format!("{} / {path}", p.label),
                    tool.def.name,
                    refused,
                    allowed,
                    &description,
                    &mut mismatches,
                    counts,
                );
            }
        }
    }

    // Workflows started by hand: each principal runs the member's workflows (acting for
    // itself and the member, their owner and last editor).
    let member = &principals[1];
    let members_workflows = probe_workflows(&member.client, "member's", json!({}))
        .await
        .unwrap();
    for p in &principals {
        let chain = p.scopes.intersect(member.scopes);
        for id in &members_workflows {
            let run = call(
                &p.client,
                "execute_workflow",
                json!({ "workflow_id": id, "wait_seconds": 120 }),
            )
            .await;
            assert_ne!(run.is_error, Some(true), "{}: {run:?}", p.label);
            let run = run.structured_content.unwrap();
            let counts = totals.entry(format!("{} / manual", p.label)).or_default();
            check_steps(
                &run,
                chain,
                p.agent,
                &format!("{} / manual", p.label),
                &mut mismatches,
                counts,
            );
        }
    }

    // Workflows of each principal's own, started by an event, by a schedule, and by the run
    // of a workflow agent (acting for the agent, who started it and the owner too).
    let runner_scopes = [
        "customers:read",
        "customers:write",
        "interactions:read",
        "interactions:write",
        "invoices:read",
        "reports",
        "handoff",
        "search",
        "agents:read",
        "workflows:read",
        "workflows:execute",
    ];
    let event = json!({ "status": "active", "trigger_type": "event",
        "trigger_config": { "event": "customer.created",
            "condition": { "field": "event.payload.customer.first_name", "operator": "eq",
                           "value": "Matrix trigger" } } });
    let schedule = json!({ "status": "active", "trigger_type": "schedule",
        "trigger_config": { "interval_seconds": 3600 } });
    let mut evented = Vec::new();
    let mut scheduled = Vec::new();
    let mut manual = Vec::new();
    for (i, p) in principals.iter().enumerate() {
        match probe_workflows(&p.client, &format!("{} event", p.label), event.clone()).await {
            Ok(ids) => {
                assert!(!p.restricted, "{}: an event trigger was accepted", p.label);
                evented.extend(ids.into_iter().map(|id| (i, id)));
            }
            Err(refusal) => {
                assert!(p.restricted, "{}: {refusal}", p.label);
                assert!(
                    refusal.to_string().contains("cannot create event triggers"),
                    "{refusal}"
                );
            }
        }
        let ids = probe_workflows(
            &p.client,
            &format!("{} schedule", p.label),
            schedule.clone(),
        )
        .await
        .unwrap();
        scheduled.extend(ids.into_iter().map(|id| (i, id)));
        let ids = probe_workflows(&p.client, &format!("{} agent", p.label), json!({}))
            .await
            .unwrap();
        manual.extend(ids.into_iter().map(|id| (i, id)));
    }
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&db.url)
        .await
        .unwrap();
    sqlx::query("UPDATE workflows SET next_run_at = now() WHERE trigger_type = 'schedule'")
        .execute(&mut conn)
        .await
        .unwrap();
    call_ok(
        &admin,
        "create_customer",
        json!({ "first_name": "Matrix trigger" }),
    )
    .await;
    for (path, list) in [("event", &evented), ("schedule", &scheduled)] {
        for (i, id) in list {
            let p = &principals[*i];
            for run in executions_of(&admin, id, 1).await {
                let counts = totals.entry(format!("{} / {path}", p.label)).or_default();
                check_steps(
                    &run,
                    p.scopes,
                    p.agent,
                    &format!("{} / {path}", p.label),
                    &mut mismatches,
                    counts,
                );
            }
        }
    }
    let runner = scopes(&runner_scopes);
    for (n, (i, id)) in manual.iter().enumerate() {
        let p = &principals[*i];
        let name = format!("runner-{n}");
        call_ok(
            &admin,
            "create_agent",
            json!({ "name": name, "scopes": runner_scopes, "kind": "workflow",
                    "config": { "workflow_id": id } }),
        )
        .await;
        let run = call_ok(
            &admin,
            "run_agent",
            json!({ "agent": name, "wait_seconds": 120 }),
        )
        .await;
        assert_ne!(run["status"], "running", "{run}");
        for execution in executions_of(&admin, id, 1).await {
            let counts = totals
                .entry(format!("{} / agent run", p.label))
                .or_default();
            check_steps(
                &execution,
                runner.intersect(p.scopes),
                true,
                &format!("{} / agent run", p.label),
                &mut mismatches,
                counts,
            );
        }
    }

    // Approved actions: a held call of every tool (stored as the approval hook stores one,
    // for the chain it acted for), approved by a person and run for that chain. A person's
    // own calls are never held: theirs are held when an agent is in the chain too.
    let deciding = http_client(
        &url,
        &db.api_key("owner@acme.test", &[]),
        Generation::Stateless,
    )
    .await;
    let mut members = Vec::new();
    for p in &principals {
        let me = call_ok(&p.client, "whoami", json!({})).await["principal"].clone();
        let person = me["on_behalf_of"]
            .as_str()
            .or(if p.agent { None } else { me["id"].as_str() });
        members.push(
            json!({ "kind": me["kind"], "id": me["id"], "name": me["name"], "person": person }),
        );
    }
    let tenant: uuid::Uuid = sqlx::query_scalar("SELECT id FROM tenants WHERE slug = 'acme'")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    let field_ruled = principals
        .iter()
        .position(|p| p.label == "field-ruled agent")
        .unwrap();
    for (i, p) in principals.iter().enumerate() {
        let (chain, chain_scopes, agent) = if p.agent {
            (json!([members[i]]), p.scopes, &members[i])
        } else {
            (
                json!([members[i], members[field_ruled]]),
                p.scopes.intersect(principals[field_ruled].scopes),
                &members[field_ruled],
            )
        };
        let what = format!("{} / approved action", p.label);
        let counts = totals.entry(what.clone()).or_default();
        for tool in catalog.iter() {
            let action: uuid::Uuid = sqlx::query_scalar(
                "INSERT INTO pending_actions (tenant_id, tool, arguments, summary, hold_reason,
                     agent_id, agent_name, scopes, chain)
                 VALUES ($1, $2, '{\"__matrix_probe\": true}', 'matrix', 'matrix', $3::uuid, $4,
                         $5, $6)
                 RETURNING id",
            )
            .bind(tenant)
            .bind(tool.def.name)
            .bind(agent["id"].as_str().unwrap())
            .bind(agent["name"].as_str().unwrap())
            .bind(Scopes::EVERY.to_strings())
            .bind(&chain)
            .fetch_one(&mut conn)
            .await
            .unwrap();
            let decided = call_ok(
                &deciding,
                "decide_pending_action",
                json!({ "action_id": action, "decision": "approve" }),
            )
            .await["pending_action"]
                .clone();
            let error = decided["error"].as_str().unwrap_or_default();
            if handles_secrets(tool.def.name) {
                assert_eq!(decided["state"], "failed", "{what}: {decided}");
                assert!(
                    error.contains("never run from a held call"),
                    "{what}: {error}"
                );
                continue;
            }
            let refused = decided["state"] == "failed" && permission_refusal(error);
            let allowed = expected(tool, chain_scopes, true, false);
            tally(
                &what,
                tool.def.name,
                refused,
                allowed,
                error,
                &mut mismatches,
                counts,
            );
        }
    }
    deciding.cancel().await.unwrap();

    eprintln!("matrix cells: {totals:?}");
    // Every cell saw both outcomes where its scopes leave room for both: a matrix of only
    // refusals (or only successes) would prove nothing.
    for (cell, (permitted, refused)) in &totals {
        assert!(*permitted > 0, "{cell}: nothing was permitted");
        if !cell.starts_with("admin /") || cell.ends_with("agent run") {
            assert!(*refused > 0, "{cell}: nothing was refused");
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} mismatches:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
    for p in principals {
        p.client.cancel().await.unwrap();
    }
    admin.cancel().await.unwrap();
    drop(server);
}
