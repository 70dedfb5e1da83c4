//! OpenTelemetry traces, exported over OTLP/HTTP to a small receiver the test runs: one span
//! per request and tool call (tool, principal kind, outcome, never arguments), continuing
//! the client's `traceparent` (HTTP header or `_meta`); webhook deliveries, workflow
//! executions and steps, agent runs and LLM calls join the trace that caused them, and the
//! outgoing requests carry it on.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value;
use prost::Message;
use serde_json::{Value, json};

use crate::fake_llm::{FakeLlm, Flavor, Reply};
use crate::helpers::*;
use crate::webhooks::{Behaviour, Receiver};

#[derive(Debug, Clone)]
struct Span {
    trace_id: String,
    span_id: String,
    parent: String,
    name: String,
    service: String,
    attributes: HashMap<String, String>,
}

/// An OTLP/HTTP receiver on a random local port, keeping every span it is sent.
struct Collector {
    endpoint: String,
    spans: Arc<Mutex<Vec<Span>>>,
}

impl Collector {
    async fn start() -> Collector {
        let spans: Arc<Mutex<Vec<Span>>> = Arc::default();
        let kept = spans.clone();
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |body: axum::body::Bytes| {
                let kept = kept.clone();
                async move {
                    let request = ExportTraceServiceRequest::decode(body)
                        .expect("the exporter sends OTLP protobuf");
                    let mut kept = kept.lock().unwrap();
                    for resource in request.resource_spans {
                        let service = resource
                            .resource
                            .iter()
                            .flat_map(|r| r.attributes.iter())
                            .find(|a| a.key == "service.name")
                            .map(|a| text(a.value.as_ref()))
                            .unwrap_or_default();
                        for span in resource.scope_spans.into_iter().flat_map(|s| s.spans) {
                            kept.push(Span {
                                trace_id: hex::encode(&span.trace_id),
                                span_id: hex::encode(&span.span_id),
                                parent: hex::encode(&span.parent_span_id),
                                name: span.name,
                                service: service.clone(),
                                attributes: span
                                    .attributes
                                    .iter()
                                    .map(|a| (a.key.clone(), text(a.value.as_ref())))
                                    .collect(),
                            });
                        }
                    }
                    (
                        [("content-type", "application/x-protobuf")],
                        Vec::<u8>::new(),
                    )
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Collector { endpoint, spans }
    }

    /// The spans of `trace_id`, once `wanted` (span names) have all arrived.
    async fn trace(&self, trace_id: &str, wanted: &[&str]) -> Vec<Span> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let spans: Vec<Span> = self
                .spans
                .lock()
                .unwrap()
                .iter()
                .filter(|s| s.trace_id == trace_id)
                .cloned()
                .collect();
            if wanted.iter().all(|w| spans.iter().any(|s| s.name == *w)) {
                return spans;
            }
            assert!(
                Instant::now() < deadline,
                "trace {trace_id} lacks some of {wanted:?}: {:#?}",
                spans.iter().map(|s| &s.name).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn text(value: Option<&opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match value.and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

fn named<'a>(spans: &'a [Span], name: &str) -> &'a Span {
    spans
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no span {name}"))
}

fn random_hex(bytes: usize) -> String {
    let mut buffer = vec![0u8; bytes];
    getrandom::fill(&mut buffer).unwrap();
    hex::encode(buffer)
}

/// A stateless (2026-07-28) `tools/call`, with a `traceparent` header and/or one in `_meta`.
async fn traced_call(
    server: &HttpServer,
    key: &str,
    tool: &str,
    arguments: Value,
    header: Option<&str>,
    meta: Option<&str>,
) -> Value {
    let mut params_meta = json!({
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientInfo": { "name": "traces-test", "version": "1" },
        "io.modelcontextprotocol/clientCapabilities": {}
    });
    if let Some(meta) = meta {
        params_meta["traceparent"] = json!(meta);
    }
    let mut request = reqwest::Client::new()
        .post(server.mcp_url())
        .bearer_auth(key)
        .header("Accept", "application/json, text/event-stream")
        .header("MCP-Protocol-Version", "2026-07-28")
        .header("Mcp-Method", "tools/call")
        .header("Mcp-Name", tool)
        .json(
            &json!({ "jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
            "name": tool, "arguments": arguments, "_meta": params_meta } }),
        );
    if let Some(header) = header {
        request = request.header("traceparent", header);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let message = crate::http::read_message(response).await;
    let result = &message["result"];
    assert_ne!(result["isError"], true, "{tool}: {message}");
    result["structuredContent"].clone()
}

#[tokio::test]
async fn a_calls_spans_continue_the_clients_trace_and_its_work_joins_it() {
    let db = TestDb::new().await;
    let collector = Collector::start().await;
    let receiver = Receiver::start(Behaviour::Accept).await;
    let llm = FakeLlm::start(
        Flavor::OpenAi,
        vec![Reply::tool("whoami", json!({})), Reply::text("done")],
    )
    .await;
    let mut command = db.command(&["http"]);
    command
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &collector.endpoint)
        .env("OTEL_BSP_SCHEDULE_DELAY", "100");
    let server = HttpServer::start(command);
    let admin = http_client(&server.mcp_url(), &db.admin_key, Generation::Stateless).await;
    call_ok(
        &admin,
        "create_webhook",
        json!({ "url": receiver.url, "events": ["customer.created"] }),
    )
    .await;

    // A call with the client's traceparent header: request span, tool span, delivery span.
    let trace = random_hex(16);
    let client_span = random_hex(8);
    let traceparent = format!("00-{trace}-{client_span}-01");
    let secret_email = "Secret-Argument@example.test";
    traced_call(
        &server,
        &db.admin_key,
        "create_customer",
        json!({ "first_name": "Ada", "email": secret_email }),
        Some(&traceparent),
        None,
    )
    .await;
    let hit = &receiver.wait_for(1, Duration::from_secs(20)).await[0];
    let sent = hit.header("traceparent");
    assert!(
        sent.starts_with(&format!("00-{trace}-")),
        "the delivery carries the caller's trace: {sent}"
    );
    let spans = collector
        .trace(
            &trace,
            &[
                "POST /mcp",
                "tools/call create_customer",
                "webhook.delivery",
            ],
        )
        .await;
    let request = named(&spans, "POST /mcp");
    let tool = named(&spans, "tools/call create_customer");
    let delivery = named(&spans, "webhook.delivery");
    assert_eq!(
        request.parent, client_span,
        "the request continues the client's span"
    );
    assert_eq!(
        tool.parent, request.span_id,
        "the tool call is the request's child"
    );
    assert_eq!(
        delivery.parent, tool.span_id,
        "the delivery joins the call's trace"
    );
    assert_eq!(sent, format!("00-{trace}-{}-01", delivery.span_id));
    assert_eq!(request.service, "agentcrm");
    assert_eq!(tool.attributes["tool"], "create_customer");
    assert_eq!(tool.attributes["principal_kind"], "api_key");
    assert_eq!(tool.attributes["outcome"], "ok");
    assert_eq!(request.attributes["principal_kind"], "api_key");
    assert_eq!(request.attributes["http.response.status_code"], "200");
    let everything = format!("{:?}", collector.spans.lock().unwrap());
    assert!(
        !everything.contains(secret_email) && !everything.contains("Ada"),
        "arguments never reach a span"
    );

    // `_meta.traceparent` without the header; a refusal is a span with its outcome.
    let meta_trace = random_hex(16);
    let meta_parent = random_hex(8);
    traced_call(
        &server,
        &db.admin_key,
        "check_permission",
        json!({ "scope": "admin" }),
        None,
        Some(&format!("00-{meta_trace}-{meta_parent}-01")),
    )
    .await;
    let spans = collector
        .trace(&meta_trace, &["tools/call check_permission"])
        .await;
    assert_eq!(
        named(&spans, "tools/call check_permission").parent,
        meta_parent
    );

    // A workflow: its execution, its step and the step's tool call join the caller's trace.
    let workflow = call_ok(
        &admin,
        "create_workflow",
        json!({ "name": "traced",
                "steps": [{ "id": "who", "tool": "whoami", "arguments": {} }] }),
    )
    .await;
    let flow_trace = random_hex(16);
    traced_call(
        &server,
        &db.admin_key,
        "execute_workflow",
        json!({ "workflow_id": workflow["workflow"]["id"], "wait_seconds": 10 }),
        Some(&format!("00-{flow_trace}-{}-01", random_hex(8))),
        None,
    )
    .await;
    let spans = collector
        .trace(
            &flow_trace,
            &[
                "tools/call execute_workflow",
                "workflow.execution",
                "workflow.step whoami",
                "tools/call whoami",
            ],
        )
        .await;
    let started = named(&spans, "tools/call execute_workflow");
    let execution = named(&spans, "workflow.execution");
    let step = named(&spans, "workflow.step whoami");
    assert_eq!(execution.parent, started.span_id);
    assert_eq!(step.parent, execution.span_id);
    assert_eq!(named(&spans, "tools/call whoami").parent, step.span_id);

    // An agent run: the run, its LLM call (which carries the trace to the provider) and the
    // tool the model asked for.
    call_ok(
        &admin,
        "create_connection",
        json!({"platform": "openai", "name": "llm",
               "config": {"base_url": llm.base_url, "default_model": "fake-model"},
               "credentials": {"api_key": "sk-fake"}}),
    )
    .await;
    call_ok(
        &admin,
        "create_agent",
        json!({"name": "tracer", "scopes": ["customers:read"], "kind": "prompt",
               "config": {"system_prompt": "Say who you are.", "connection": "llm",
                          "selected_tools": ["whoami"]}}),
    )
    .await;
    let run_trace = random_hex(16);
    let run = traced_call(
        &server,
        &db.admin_key,
        "run_agent",
        json!({ "agent": "tracer", "prompt": "Who are you?" }),
        Some(&format!("00-{run_trace}-{}-01", random_hex(8))),
        None,
    )
    .await;
    assert_eq!(run["status"], "success", "{run}");
    let spans = collector
        .trace(
            &run_trace,
            &[
                "tools/call run_agent",
                "agent.run",
                "chat fake-model",
                "tools/call whoami",
            ],
        )
        .await;
    let run_span = named(&spans, "agent.run");
    assert_eq!(
        run_span.parent,
        named(&spans, "tools/call run_agent").span_id
    );
    let chats: Vec<&Span> = spans
        .iter()
        .filter(|s| s.name == "chat fake-model")
        .collect();
    assert_eq!(chats.len(), 2, "two turns of the model");
    assert!(chats.iter().all(|c| c.parent == run_span.span_id));
    assert_eq!(chats[0].attributes["gen_ai.request.model"], "fake-model");
    let provider_saw = llm.traceparents();
    assert_eq!(provider_saw.len(), 2, "{provider_saw:?}");
    for (seen, chat) in provider_saw.iter().zip(&chats) {
        assert!(seen.starts_with(&format!("00-{run_trace}-")), "{seen}");
        assert!(
            chats.iter().any(|c| seen.contains(&c.span_id)),
            "the provider is told the LLM call's span: {seen} vs {}",
            chat.span_id
        );
    }
    admin.cancel().await.unwrap();
}

/// Without `OTEL_EXPORTER_OTLP_ENDPOINT` nothing is exported and nothing is sent on.
#[tokio::test]
async fn traces_are_off_unless_an_endpoint_is_set() {
    let db = TestDb::new().await;
    let receiver = Receiver::start(Behaviour::Accept).await;
    let server = HttpServer::start(db.command(&["http"]));
    let admin = http_client(&server.mcp_url(), &db.admin_key, Generation::Stateless).await;
    call_ok(
        &admin,
        "create_webhook",
        json!({ "url": receiver.url, "events": ["customer.created"] }),
    )
    .await;
    let traceparent = format!("00-{}-{}-01", random_hex(16), random_hex(8));
    traced_call(
        &server,
        &db.admin_key,
        "create_customer",
        json!({ "first_name": "Ada" }),
        Some(&traceparent),
        None,
    )
    .await;
    let hit = &receiver.wait_for(1, Duration::from_secs(20)).await[0];
    assert!(
        !hit.headers.contains_key("traceparent"),
        "no trace context is made up: {:?}",
        hit.headers
    );
    admin.cancel().await.unwrap();
}
