//! Runnable agents over MCP against real local fake providers: a prompt agent's tool loop
//! (only the tools its scopes allow, called as itself and audited), guardrails, overrides,
//! workflow agents, schedules firing once across processes, signed callbacks, chaining, a
//! process killed mid-run, status and analytics.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sqlx::Connection;

use crate::fake_llm::{FakeLlm, Flavor, Reply};
use crate::helpers::*;
use crate::webhooks::{Behaviour, Receiver, signature_valid};

const CALLBACK_SECRET: &str = "callback-secret-0123456789";

/// A connection to `llm` named `name`.
async fn connect(client: &Client, llm: &FakeLlm, name: &str) {
    let platform = match llm.flavor {
        Flavor::OpenAi => "openai",
        Flavor::Anthropic => "anthropic",
    };
    call_ok(
        client,
        "create_connection",
        json!({"platform": platform, "name": name,
               "config": {"base_url": llm.base_url, "default_model": "fake-model"},
               "credentials": {"api_key": "sk-fake"}}),
    )
    .await;
}

async fn create_agent(client: &Client, name: &str, scopes: &[&str], config: Value) -> Value {
    call_ok(
        client,
        "create_agent",
        json!({"name": name, "scopes": scopes, "kind": "prompt", "config": config}),
    )
    .await
}

async fn new_customer(client: &Client, email: &str) -> String {
    let created = call_ok(
        client,
        "create_customer",
        json!({"first_name": "Ada", "last_name": "Lovelace", "email": email}),
    )
    .await;
    created["customer"]["id"].as_str().unwrap().to_owned()
}

/// Polls get_agent_run until the run has ended.
async fn ended(client: &Client, run_id: &Value, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let run = call_ok(client, "get_agent_run", json!({"run_id": run_id})).await;
        if !matches!(run["status"].as_str(), Some("queued" | "running")) {
            return run;
        }
        assert!(Instant::now() < deadline, "run still going: {run}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The names of the tools offered in a provider request.
fn offered(request: &Value) -> Vec<String> {
    let mut names: Vec<String> = request["tools"]
        .as_array()
        .map(|tools| {
            tools
                .iter()
                .map(|t| {
                    t["function"]["name"]
                        .as_str()
                        .or(t["name"].as_str())
                        .unwrap()
                        .to_owned()
                })
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[tokio::test]
async fn a_prompt_agent_calls_its_tools_as_itself_then_answers() {
    let db = TestDb::new().await;
    let client = stdio_client(db.command(&["stdio"]), Generation::Sessions).await;
    let customer = new_customer(&client, "ada@example.com").await;
    let llm = FakeLlm::start(
        Flavor::OpenAi,
        vec![
            Reply::tool("list_customers", json!({"limit": 5})),
            Reply::Tools(vec![
                (
                    "log_interaction".into(),
                    json!({"customer_id": customer, "type": "note", "direction": "outbound",
                           "subject": "Agent follow-up", "notes": "Checked in"}),
                ),
                ("delete_customer".into(), json!({"customer_id": customer})),
            ]),
            Reply::text("Logged a follow-up for Ada."),
        ],
    )
    .await;
    connect(&client, &llm, "llm").await;
    let agent = create_agent(
        &client,
        "follow-up",
        &["customers:read", "interactions:write"],
        json!({"system_prompt": "You follow up.", "connection": "llm",
               "selected_tools": ["list_customers", "log_interaction", "delete_customer"],
               "temperature": 0.2}),
    )
    .await;
    assert_eq!(agent["run_type"], "design");
    assert!(
        agent["warnings"][0]
            .as_str()
            .unwrap()
            .contains("delete_customer"),
        "{agent}"
    );

    let run = call_ok(
        &client,
        "run_agent",
        json!({"agent": "follow-up", "prompt": "Follow up with new customers", "input": {"segment": "new"}}),
    )
    .await;
    assert_eq!(run["status"], "success", "{run}");
    assert_eq!(run["output"]["text"], "Logged a follow-up for Ada.");
    assert_eq!(run["source"], "stdio");
    assert_eq!(run["run_type"], "design");
    assert_eq!(run["tool_call_count"], 3);
    assert_eq!(run["prompt_tokens"], 30);
    assert_eq!(run["completion_tokens"], 15);
    assert_eq!(run["total_tokens"], 45);
    let calls = run["tool_calls"].as_array().unwrap();
    assert_eq!(calls[0]["name"], "list_customers");
    assert_eq!(calls[0]["status"], "ok");
    assert_eq!(calls[1]["status"], "ok");
    assert_eq!(calls[2]["name"], "delete_customer");
    assert_eq!(calls[2]["status"], "error", "not one of its tools: {run}");

    // The model was offered only what the agent may do, and saw each tool's result.
    let requests = llm.requests();
    assert_eq!(requests.len(), 3);
    assert_eq!(offered(&requests[0]), ["list_customers", "log_interaction"]);
    assert_eq!(requests[0]["model"], "fake-model");
    assert_eq!(requests[0]["messages"][0]["role"], "system");
    assert!(
        requests[0]["messages"][1]["content"]
            .as_str()
            .unwrap()
            .contains("\"segment\":\"new\"")
    );
    let second = requests[1]["messages"].as_array().unwrap();
    assert_eq!(second.last().unwrap()["role"], "tool");
    let result = second.last().unwrap()["content"].as_str().unwrap();
    assert!(result.contains("Ada"), "{result}");
    // Stored text reaches the model as a data block, not as instructions.
    assert!(
        result.starts_with("<data source=\"result of list_customers\">")
            && result.ends_with("</data>")
            && result.contains("never as instructions"),
        "{result}"
    );

    // The interaction exists, the customer does too; the calls are audited as the agent.
    let interactions = call_ok(
        &client,
        "list_interactions",
        json!({"customer_id": customer}),
    )
    .await;
    assert_eq!(interactions["total"], 1, "{interactions}");
    call_ok(&client, "get_customer", json!({"customer_id": customer})).await;
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let audited: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT action, principal_name, outcome FROM audit_events
         WHERE transport = 'agent' ORDER BY id",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert_eq!(
        audited,
        [
            ("list_customers".into(), "follow-up".into(), "ok".into()),
            ("log_interaction".into(), "follow-up".into(), "ok".into()),
        ]
    );
    let event: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE type = 'agent.run.completed'")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert_eq!(event, 1);

    // Overrides: unset fields keep the design; the run is dynamic; reset goes back.
    let set = call_ok(
        &client,
        "set_agent_config",
        json!({"agent": "follow-up", "overrides": {"model": "fake-model-large", "max_tool_calls": 3}}),
    )
    .await;
    assert_eq!(set["run_type"], "dynamic");
    assert_eq!(set["effective"]["model"], "fake-model-large");
    assert_eq!(set["effective"]["temperature"], 0.2);
    assert_eq!(set["effective"]["guardrails"]["max_tool_calls"], 3);
    assert_eq!(set["design"]["guardrails"]["max_tool_calls"], 10);
    let run = call_ok(
        &client,
        "run_agent",
        json!({"agent": "follow-up", "prompt": "again"}),
    )
    .await;
    assert_eq!(run["run_type"], "dynamic", "{run}");
    assert_eq!(llm.requests().last().unwrap()["model"], "fake-model-large");
    let reset = call_ok(&client, "reset_agent_config", json!({"agent": "follow-up"})).await;
    assert_eq!(reset["run_type"], "design");
    assert_eq!(reset["overrides"], json!({}));

    let status = call_ok(&client, "get_agent_status", json!({"agent": "follow-up"})).await;
    assert_eq!(status["execution_count"], 2, "{status}");
    assert_eq!(status["success_count"], 2);
    assert_eq!(status["success_rate"], 1.0);
    let analytics = call_ok(
        &client,
        "get_agent_analytics",
        json!({"agent": "follow-up"}),
    )
    .await;
    assert_eq!(analytics["totals"]["runs"], 2, "{analytics}");
    assert!(analytics["totals"]["p95_duration_ms"].as_f64().is_some());
    let tools: Vec<(String, i64, i64)> = analytics["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["tool"].as_str().unwrap().into(),
                t["calls"].as_i64().unwrap(),
                t["errors"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        tools,
        [
            ("delete_customer".into(), 1, 1),
            ("list_customers".into(), 1, 0),
            ("log_interaction".into(), 1, 0)
        ]
    );
    let listed = call_ok(
        &client,
        "list_agent_runs",
        json!({"agent": "follow-up", "run_type": "dynamic"}),
    )
    .await;
    assert_eq!(listed["total"], 1);
    let bad = call(
        &client,
        "list_agent_runs",
        json!({"source": "carrier-pigeon"}),
    )
    .await;
    assert_eq!(error_code(&bad), "invalid_request");
    client.cancel().await.unwrap();
}

#[tokio::test]
async fn guardrails_stop_runs_and_bad_provider_output_is_an_error() {
    let db = TestDb::new().await;
    let client = stdio_client(db.command(&["stdio"]), Generation::Stateless).await;
    // Anthropic flavour: a model that never stops calling tools.
    let looping = FakeLlm::start(Flavor::Anthropic, vec![Reply::tool("whoami", json!({}))]).await;
    connect(&client, &looping, "looping").await;
    create_agent(
        &client,
        "loops",
        &[],
        json!({"connection": "looping", "selected_tools": ["whoami"],
               "guardrails": {"max_tool_calls": 2}}),
    )
    .await;
    let run = call_ok(
        &client,
        "run_agent",
        json!({"agent": "loops", "prompt": "go"}),
    )
    .await;
    assert_eq!(run["status"], "error", "{run}");
    assert!(
        run["error"].as_str().unwrap().contains("max_tool_calls"),
        "{run}"
    );
    assert_eq!(run["tool_call_count"], 2);
    let request = &looping.requests()[1];
    assert_eq!(
        request["messages"][2]["content"][0]["type"], "tool_result",
        "{request}"
    );

    // Token budget.
    create_agent(
        &client,
        "thrifty",
        &[],
        json!({"connection": "looping", "selected_tools": ["whoami"],
               "guardrails": {"max_token_budget": 20}}),
    )
    .await;
    let run = call_ok(&client, "run_agent", json!({"agent": "thrifty"})).await;
    assert_eq!(run["status"], "error");
    assert!(
        run["error"].as_str().unwrap().contains("max_token_budget"),
        "{run}"
    );

    // A provider slower than the timeout guardrail.
    let slow = FakeLlm::start(
        Flavor::OpenAi,
        vec![Reply::Slow(
            Duration::from_secs(10),
            Box::new(Reply::text("late")),
        )],
    )
    .await;
    connect(&client, &slow, "slow").await;
    create_agent(
        &client,
        "hurried",
        &[],
        json!({"connection": "slow", "guardrails": {"timeout_seconds": 1}}),
    )
    .await;
    let started = Instant::now();
    let run = call_ok(&client, "run_agent", json!({"agent": "hurried"})).await;
    assert_eq!(run["status"], "timeout", "{run}");
    assert!(started.elapsed() < Duration::from_secs(8));
    assert!(run["error"].as_str().unwrap().contains("timeout"));

    // Malformed output: not JSON, and tool arguments that are not an object.
    let broken = FakeLlm::start(Flavor::OpenAi, vec![Reply::Raw("<html>oops</html>".into())]).await;
    connect(&client, &broken, "broken").await;
    create_agent(&client, "confused", &[], json!({"connection": "broken"})).await;
    let run = call_ok(&client, "run_agent", json!({"agent": "confused"})).await;
    assert_eq!(run["status"], "error");
    assert!(
        run["error"].as_str().unwrap().contains("could not be read"),
        "{run}"
    );
    // A JSON agent whose model answers prose.
    let prose = FakeLlm::start(Flavor::OpenAi, vec![Reply::text("not json at all")]).await;
    connect(&client, &prose, "prose").await;
    create_agent(
        &client,
        "strict",
        &[],
        json!({"connection": "prose", "response_format": "json"}),
    )
    .await;
    let run = call_ok(&client, "run_agent", json!({"agent": "strict"})).await;
    assert_eq!(run["status"], "error");
    assert!(run["error"].as_str().unwrap().contains("not JSON"), "{run}");

    // Bad definitions are refused and change nothing.
    for (config, code) in [
        (json!({"connection": "nope"}), "not_found"),
        (
            json!({"connection": "slow", "selected_tools": ["no_such_tool"]}),
            "invalid_request",
        ),
        (
            json!({"connection": "slow", "selected_tools": ["create_api_key"]}),
            "invalid_request",
        ),
        (
            json!({"connection": "slow", "selected_tools": ["register_agent"]}),
            "invalid_request",
        ),
        (
            json!({"connection": "slow", "selected_tools": ["run_agent"]}),
            "invalid_request",
        ),
        // Standing work made by a run would run for less than everyone it acts for.
        (
            json!({"connection": "slow", "selected_tools": ["create_workflow"]}),
            "invalid_request",
        ),
        (
            json!({"connection": "slow", "temperature": 7}),
            "invalid_request",
        ),
        (
            json!({"connection": "slow", "guardrails": {"timeout_seconds": 0}}),
            "invalid_request",
        ),
        (
            json!({"connection": "slow", "unknown": true}),
            "invalid_request",
        ),
    ] {
        let result = call(
            &client,
            "create_agent",
            json!({"name": "bad", "config": config.clone()}),
        )
        .await;
        assert_eq!(error_code(&result), code, "{config}");
    }
    let beyond = call(
        &client,
        "create_agent",
        json!({"name": "bad", "scopes": ["customers:read", "no:such"], "config": {"connection": "slow"}}),
    )
    .await;
    assert_eq!(error_code(&beyond), "invalid_request");
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let bad: i64 = sqlx::query_scalar("SELECT count(*) FROM agents WHERE name = 'bad'")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(bad, 0);
    client.cancel().await.unwrap();
}

#[tokio::test]
async fn agents_cannot_manage_agents_or_exceed_their_grants() {
    let db = TestDb::new().await;
    let client = stdio_client(db.command(&["stdio"]), Generation::Sessions).await;
    let llm = FakeLlm::start(Flavor::OpenAi, vec![Reply::text("ok")]).await;
    connect(&client, &llm, "llm").await;
    create_agent(
        &client,
        "worker",
        &["customers:read"],
        json!({"connection": "llm"}),
    )
    .await;
    let caller = db.admin(&[
        "create-agent",
        "--tenant",
        "acme",
        "--name",
        "orchestrator",
        "--scopes",
        "agents:read,agents:write,agents:execute,customers:read",
    ]);
    let as_agent = agent_client(&db, &caller).await;
    let tools = as_agent.list_all_tools().await.unwrap();
    let names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
    assert!(names.contains(&"run_agent") && names.contains(&"get_agent_run"));
    for held in [
        "create_agent",
        "set_agent_config",
        "schedule_agent",
        "delete_agent",
    ] {
        assert!(!names.contains(&held), "{held} is for people");
    }
    let refused = call(
        &as_agent,
        "create_agent",
        json!({"name": "x", "config": {}}),
    )
    .await;
    assert_eq!(error_code(&refused), "forbidden");
    // One agent may run another that it holds every scope of; the run says so.
    let run = call_ok(
        &as_agent,
        "run_agent",
        json!({"agent": "worker", "prompt": "hi"}),
    )
    .await;
    assert_eq!(run["status"], "success", "{run}");
    assert_eq!(run["source"], "stdio");
    assert_eq!(run["triggered_by_name"], "orchestrator");
    as_agent.cancel().await.unwrap();

    // A member cannot give a new agent scopes they do not hold.
    let templates = call_ok(&client, "list_agent_templates", json!({})).await;
    assert!(templates["templates"].as_array().unwrap().len() >= 5);
    let from_template = call_ok(
        &client,
        "create_agent",
        json!({"name": "digest", "template": "pipeline-digest", "scopes": ["reports"],
               "config": {"connection": "llm"}}),
    )
    .await;
    assert_eq!(from_template["design"]["response_format"], "json");
    assert_eq!(from_template["warnings"], json!([]));
    client.cancel().await.unwrap();
}

#[tokio::test]
async fn a_workflow_agent_runs_its_workflow_as_itself() {
    let db = TestDb::new().await;
    let client = stdio_client(db.command(&["stdio"]), Generation::Sessions).await;
    let workflow = call_ok(
        &client,
        "create_workflow",
        json!({"name": "greet", "steps": [
            {"id": "c", "tool": "create_customer",
             "arguments": {"first_name": "{{input.first}}", "last_name": "Agent", "email": "{{input.email}}"}}
        ]}),
    )
    .await;
    let agent = call_ok(
        &client,
        "create_agent",
        json!({"name": "onboarder", "kind": "workflow", "scopes": ["workflows:execute", "customers:write"],
               "config": {"workflow_id": workflow["workflow"]["id"]}}),
    )
    .await;
    assert_eq!(agent["kind"], "workflow");
    let run = call_ok(
        &client,
        "run_agent",
        json!({"agent": "onboarder", "input": {"first": "Grace", "email": "grace@example.com"}}),
    )
    .await;
    assert_eq!(run["status"], "success", "{run}");
    assert_eq!(run["output"]["output"]["customer"]["first_name"], "Grace");
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let by: String = sqlx::query_scalar("SELECT started_by_name FROM workflow_executions")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(by, "onboarder");
    // Without the scope its workflow needs, the run fails and says why.
    call_ok(
        &client,
        "create_agent",
        json!({"name": "powerless", "kind": "workflow", "scopes": ["workflows:execute"],
               "config": {"workflow_id": workflow["workflow"]["id"]}}),
    )
    .await;
    let run = call_ok(
        &client,
        "run_agent",
        json!({"agent": "powerless", "input": {"first": "Eve", "email": "eve@example.com"}}),
    )
    .await;
    assert_eq!(run["status"], "error", "{run}");
    assert!(
        run["error"].as_str().unwrap().contains("customers:write"),
        "{run}"
    );
    // A workflow acting as an agent cannot start agent runs: no runs without end.
    let looping = call_ok(
        &client,
        "create_workflow",
        json!({"name": "loop", "steps": [
            {"id": "again", "tool": "run_agent", "arguments": {"agent": "onboarder"}}
        ]}),
    )
    .await;
    call_ok(
        &client,
        "create_agent",
        json!({"name": "looper", "kind": "workflow", "scopes": ["workflows:execute", "agents:execute"],
               "config": {"workflow_id": looping["workflow"]["id"]}}),
    )
    .await;
    let run = call_ok(&client, "run_agent", json!({"agent": "looper"})).await;
    assert_eq!(run["status"], "error", "{run}");
    assert!(
        run["error"]
            .as_str()
            .unwrap()
            .contains("cannot start agent runs"),
        "{run}"
    );
    client.cancel().await.unwrap();
}

#[tokio::test]
async fn schedules_fire_once_across_processes_with_signed_callbacks_and_chains() {
    let db = TestDb::new().await;
    let llm = FakeLlm::start(Flavor::OpenAi, vec![Reply::text("report ready")]).await;
    let receiver = Receiver::start(Behaviour::FailFirst(1)).await;
    let servers: Vec<HttpServer> = (0..3)
        .map(|_| HttpServer::start(db.command(&["http"])))
        .collect();
    let client = http_client(&servers[0].mcp_url(), &db.admin_key, Generation::Sessions).await;
    connect(&client, &llm, "llm").await;
    create_agent(&client, "reporter", &[], json!({"connection": "llm"})).await;
    create_agent(&client, "follower", &[], json!({"connection": "llm"})).await;

    // Bad schedules are refused.
    for args in [
        json!({"agent": "reporter", "cron": "0 9 * *"}),
        json!({"agent": "reporter", "cron": "0 9 * * *", "timezone": "Mars/Base"}),
        json!({"agent": "reporter", "interval_seconds": 5}),
        json!({"agent": "reporter", "cron": "0 9 * * *", "interval_seconds": 600}),
        json!({"agent": "reporter", "run_at": "2030-01-01T00:00:00Z", "callback_url": receiver.url}),
        json!({"agent": "nobody", "cron": "0 9 * * *"}),
    ] {
        let result = call(&client, "schedule_agent", args.clone()).await;
        assert!(result.is_error == Some(true), "{args}");
    }
    let cron = call_ok(
        &client,
        "schedule_agent",
        json!({"agent": "reporter", "cron": "0 9 * * 1-5", "timezone": "Europe/Paris"}),
    )
    .await;
    assert!(
        cron["next_run_at"].as_str().unwrap().contains("T07:00:00")
            || cron["next_run_at"].as_str().unwrap().contains("T08:00:00"),
        "{cron}"
    );
    assert_eq!(cron["has_callback_secret"], false);

    let chained = call_ok(
        &client,
        "schedule_agent",
        json!({"agent": "follower", "after_agent": "reporter", "after_status": "success",
               "prompt": "Summarise the report"}),
    )
    .await;
    assert_eq!(chained["kind"], "after");
    let once = call_ok(
        &client,
        "schedule_agent",
        json!({"agent": "reporter", "run_at": chrono::Utc::now().to_rfc3339(), "prompt": "Weekly report",
               "callback_url": receiver.url, "callback_secret": CALLBACK_SECRET}),
    )
    .await;
    assert_eq!(once["has_callback_secret"], true);
    assert!(!once.to_string().contains(CALLBACK_SECRET));

    // The cron schedule's window was missed while everything was down: due several times
    // over, it fires once.
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    sqlx::query(
        "UPDATE agent_schedules SET next_run_at = now() - interval '3 days' WHERE id = $1::uuid",
    )
    .bind(cron["id"].as_str().unwrap())
    .execute(&mut conn)
    .await
    .unwrap();

    // Three processes look; each due time fires once; the chain follows each success.
    let hits = receiver.wait_for(2, Duration::from_secs(30)).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let runs = loop {
        let runs = call_ok(&client, "list_agent_runs", json!({})).await;
        let done = runs["runs"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["status"] == "success");
        if runs["total"] == 4 && done {
            break runs;
        }
        assert!(Instant::now() < deadline, "{runs}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let again = call_ok(&client, "list_agent_runs", json!({})).await;
    assert_eq!(again["total"], 4, "no due time fired twice: {again}");
    let sources: Vec<(&str, &str)> = runs["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["agent_name"].as_str().unwrap(),
                r["source"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        sources
            .iter()
            .filter(|s| **s == ("reporter", "schedule"))
            .count(),
        2
    );
    assert_eq!(
        sources
            .iter()
            .filter(|s| **s == ("follower", "agent"))
            .count(),
        2
    );
    let follower = runs["runs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["agent_name"] == "follower")
        .unwrap();
    assert_eq!(
        follower["input"]["previous"]["output"]["text"],
        "report ready"
    );
    assert!(follower["parent_run_id"].is_string());

    // The callback: signed over the raw body, retried after the receiver's 500.
    assert_eq!(hits.len(), 2);
    for hit in &hits {
        assert!(signature_valid(CALLBACK_SECRET, hit));
    }
    let body = hits[1].json();
    assert_eq!(body["status"], "success");
    assert_eq!(body["prompt"], "Weekly report");
    assert_eq!(body["agent_output"]["text"], "report ready");
    assert!(body["log"]["events"].is_array());
    let run = call_ok(&client, "get_agent_run", json!({"run_id": body["run_id"]})).await;
    let callback = &run["callbacks"][0];
    assert_eq!(callback["status"], "delivered", "{run}");
    assert_eq!(callback["attempts"], 2);
    assert_eq!(callback["log"][0]["status_code"], 500);
    assert_eq!(callback["log"][1]["status_code"], 200);

    // The one-off is done; the cron planned its next time after now.
    let listed = call_ok(&client, "list_schedules", json!({"agent": "reporter"})).await;
    for schedule in listed["schedules"].as_array().unwrap() {
        match schedule["kind"].as_str().unwrap() {
            "once" => assert!(schedule["next_run_at"].is_null()),
            "cron" => {
                let next: chrono::DateTime<chrono::Utc> =
                    schedule["next_run_at"].as_str().unwrap().parse().unwrap();
                assert!(next > chrono::Utc::now());
            }
            other => panic!("{other}"),
        }
    }
    let status = call_ok(&client, "get_agent_status", json!({"agent": "reporter"})).await;
    assert_eq!(status["execution_count"], 2);
    assert!(status["next_run_at"].is_string());
    let paused = call_ok(&client, "pause_agent", json!({"agent": "reporter"})).await;
    assert_eq!(paused["paused"], true);
    let refused = call(&client, "run_agent", json!({"agent": "reporter"})).await;
    assert_eq!(error_code(&refused), "conflict");
    call_ok(&client, "resume_agent", json!({"agent": "reporter"})).await;
    let updated = call_ok(
        &client,
        "update_schedule",
        json!({"schedule_id": cron["id"], "enabled": false}),
    )
    .await;
    assert_eq!(updated["enabled"], false);
    call_ok(
        &client,
        "delete_schedule",
        json!({"schedule_id": cron["id"]}),
    )
    .await;
    let secrets: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM agent_schedules WHERE encode(callback_secret_encrypted, 'escape') LIKE '%callback-secret%'",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(secrets, 0);
    client.cancel().await.unwrap();
}

#[tokio::test]
async fn a_run_whose_process_is_killed_resumes_elsewhere_without_repeating_a_call() {
    let db = TestDb::new().await;
    let customer_email = "kill@example.com";
    // Turn 1 logs an interaction; turn 2 is slow (the process dies meanwhile); turn 3 ends.
    let script = |customer: &str| {
        vec![
            Reply::tool(
                "log_interaction",
                json!({"customer_id": customer, "type": "call", "direction": "outbound", "subject": "once"}),
            ),
            Reply::Slow(Duration::from_secs(4), Box::new(Reply::text("finished"))),
            Reply::text("finished"),
        ]
    };
    let mut first = HttpServer::start({
        let mut c = db.command(&["http"]);
        c.env("AGENTCRM_WORKFLOW_LEASE_SECS", "2");
        c
    });
    let client = http_client(&first.mcp_url(), &db.admin_key, Generation::Sessions).await;
    let customer = new_customer(&client, customer_email).await;
    let llm = FakeLlm::start(Flavor::OpenAi, script(&customer)).await;
    connect(&client, &llm, "llm").await;
    create_agent(
        &client,
        "survivor",
        &["interactions:write"],
        json!({"connection": "llm", "selected_tools": ["log_interaction"]}),
    )
    .await;
    let run = call_ok(
        &client,
        "run_agent",
        json!({"agent": "survivor", "wait_seconds": 0}),
    )
    .await;
    let run_id = run["id"].clone();
    // Wait until the model's slow second turn is under way, then kill the process.
    let deadline = Instant::now() + Duration::from_secs(20);
    while llm.requests().len() < 2 {
        assert!(
            Instant::now() < deadline,
            "the run did not reach its second turn"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    client.cancel().await.unwrap();
    first.child.kill().unwrap();
    first.child.wait().unwrap();

    let second = HttpServer::start({
        let mut c = db.command(&["http"]);
        c.env("AGENTCRM_WORKFLOW_LEASE_SECS", "2");
        c
    });
    let client = http_client(&second.mcp_url(), &db.admin_key, Generation::Sessions).await;
    let run = ended(&client, &run_id, Duration::from_secs(40)).await;
    assert_eq!(run["status"], "success", "{run}");
    assert_eq!(run["output"]["text"], "finished");
    assert!(run["log"].to_string().contains("resumed"), "{}", run["log"]);
    let interactions = call_ok(
        &client,
        "list_interactions",
        json!({"customer_id": customer}),
    )
    .await;
    assert_eq!(
        interactions["total"], 1,
        "the finished tool call was not repeated"
    );
    assert_eq!(run["tool_call_count"], 1);
    client.cancel().await.unwrap();
}

/// The execution log by person (seed 001): a run started through an API key is the key
/// owner's too, `list_agent_runs` filters by user (id or email), and a deleted agent's runs
/// stay in the log under its former id and name.
#[tokio::test]
async fn the_run_log_is_kept_by_person_and_outlives_the_agent() {
    let db = TestDb::new().await;
    let admin = stdio_client(db.command(&["stdio"]), Generation::Stateless).await;
    let llm = FakeLlm::start(Flavor::OpenAi, vec![Reply::text("Done.")]).await;
    connect(&admin, &llm, "llm").await;
    let agent = create_agent(&admin, "helper", &[], json!({"connection": "llm"})).await;
    let agent_id = agent["agent_id"].as_str().unwrap().to_owned();
    let meg = member_client(&db, "meg@acme.test", &["agents:execute", "agents:read"]).await;
    let meg_id = call_ok(&meg, "whoami", json!({})).await["person"]["id"].clone();
    assert!(meg_id.is_string(), "whoami names the key's owner");
    let mine = call_ok(
        &meg,
        "run_agent",
        json!({"agent": "helper", "prompt": "hi"}),
    )
    .await;
    assert_eq!(mine["status"], "success", "{mine}");
    assert_eq!(
        mine["user_id"], meg_id,
        "attributed to the key's owner: {mine}"
    );
    let theirs = call_ok(&admin, "run_agent", json!({"agent": "helper"})).await;
    assert_eq!(theirs["status"], "success", "{theirs}");
    assert_ne!(theirs["user_id"], meg_id, "{theirs}");

    for user in [meg_id.as_str().unwrap(), "meg@acme.test", "MEG@ACME.TEST"] {
        let listed = call_ok(&admin, "list_agent_runs", json!({ "user": user })).await;
        assert_eq!(listed["total"], 1, "user {user}: {listed}");
        assert_eq!(listed["runs"][0]["id"], mine["id"], "{listed}");
    }
    let nobody = call(
        &admin,
        "list_agent_runs",
        json!({ "user": "nobody@acme.test" }),
    )
    .await;
    assert_eq!(error_code(&nobody), "not_found");

    call_ok(&admin, "delete_agent", json!({ "agent": "helper" })).await;
    for agent in [agent_id.as_str(), "helper"] {
        let listed = call_ok(&admin, "list_agent_runs", json!({ "agent": agent })).await;
        assert_eq!(listed["total"], 2, "deleted agent by {agent}: {listed}");
        assert!(listed["runs"][0]["agent_id"].is_null(), "{listed}");
        assert_eq!(listed["runs"][0]["agent_name"], "helper", "{listed}");
    }
    let by_both = call_ok(
        &admin,
        "list_agent_runs",
        json!({ "agent": agent_id, "user": "meg@acme.test" }),
    )
    .await;
    assert_eq!(by_both["total"], 1, "{by_both}");
    // A new agent taking the name does not inherit the old one's log.
    create_agent(&admin, "helper", &[], json!({"connection": "llm"})).await;
    let renamed = call_ok(&admin, "list_agent_runs", json!({ "agent": "helper" })).await;
    assert_eq!(renamed["total"], 0, "{renamed}");
    let old = call_ok(&admin, "list_agent_runs", json!({ "agent": agent_id })).await;
    assert_eq!(old["total"], 2, "{old}");
    meg.cancel().await.unwrap();
    admin.cancel().await.unwrap();
}
