//! Conversations (seed 002) against a real local fake LLM provider: the model's tool calls
//! act as the sender (never more), the history is stored and read back, replies report
//! progress, and a conversation is read only by its participants and tenant admins.

use serde_json::{Value, json};

use crate::fake_llm::{FakeLlm, Flavor, Reply};
use crate::helpers::*;

async fn connect(client: &Client, llm: &FakeLlm, name: &str) {
    call_ok(
        client,
        "create_connection",
        json!({"platform": "openai", "name": name,
               "config": {"base_url": llm.base_url, "default_model": "fake-model"},
               "credentials": {"api_key": "sk-fake"}}),
    )
    .await;
}

/// The tool names offered in a provider request.
fn offered(request: &Value) -> Vec<String> {
    request["tools"]
        .as_array()
        .map(|tools| {
            tools
                .iter()
                .map(|t| t["function"]["name"].as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversation_calls_tools_as_its_sender_and_keeps_its_history() {
    let db = TestDb::new().await;
    let admin = stdio_client(db.command(&["stdio"]), Generation::Sessions).await;
    call_ok(
        &admin,
        "create_customer",
        json!({ "first_name": "Ada", "last_name": "Lovelace", "email": "ada@example.com",
                "phone": "+44 20 7946 0000" }),
    )
    .await;
    let llm = FakeLlm::start(
        Flavor::OpenAi,
        vec![
            Reply::tool("search", json!({ "query": "Ada" })),
            Reply::text("Ada Lovelace is your customer."),
            Reply::tool("list_customers", json!({})),
            Reply::text("I could not read customers."),
        ],
    )
    .await;
    connect(&admin, &llm, "llm").await;

    // A member who may talk to the model and search, not read whole customer records.
    let meg = member_client(&db, "meg@acme.test", &["agents:execute", "search"]).await;
    let created = call_ok(&meg, "create_conversation", json!({})).await;
    let id = created["conversation"]["id"].clone();
    assert_eq!(created["conversation"]["owner_kind"], "api_key");
    let meg_id = call_ok(&meg, "whoami", json!({})).await["person"]["id"].clone();
    assert_eq!(created["conversation"]["person_id"], meg_id);

    let first = call_ok(
        &meg,
        "send_message",
        json!({ "conversation_id": id, "content": "Who is Ada?\nPlease check." }),
    )
    .await;
    assert_eq!(
        first["reply"]["content"], "Ada Lovelace is your customer.",
        "{first}"
    );
    assert_eq!(
        first["tools_called"],
        json!([{ "name": "search", "is_error": false }])
    );
    assert!(first["tokens"]["total"].as_i64().unwrap() > 0, "{first}");

    let requests = llm.requests();
    let tools = offered(&requests[0]);
    assert!(tools.contains(&"search".to_owned()), "{tools:?}");
    for never in [
        "list_customers", // not the sender's scope
        "create_api_key", // handles secrets
        "approve_action", // decided by a person
        "run_agent",      // starts work of its own
        "send_message",   // no recursion
    ] {
        assert!(
            !tools.contains(&never.to_owned()),
            "{never} offered: {tools:?}"
        );
    }
    // The search ran as Meg, and its result reached the model as data.
    let tool_turn = &requests[1]["messages"];
    let result = tool_turn
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["role"] == "tool")
        .expect("the tool result went back to the model");
    assert!(
        result["content"].as_str().unwrap().contains("<data"),
        "{result}"
    );
    let audit = call_ok(&admin, "list_audit_log", json!({ "action": "search" })).await;
    assert_eq!(audit["events"][0]["principal_kind"], "api_key", "{audit}");
    assert_eq!(audit["events"][0]["on_behalf_of"], meg_id, "{audit}");
    assert_eq!(audit["events"][0]["transport"], "conversation", "{audit}");

    // The model asking for a tool the sender may not use gets a refusal, never the data.
    let second = call_ok(
        &meg,
        "send_message",
        json!({ "conversation_id": id, "content": "List all customers." }),
    )
    .await;
    assert_eq!(
        second["tools_called"],
        json!([{ "name": "list_customers", "is_error": true }])
    );
    let leaked = llm.requests()[3].to_string();
    assert!(!leaked.contains("+44 20 7946 0000"), "{leaked}");
    assert!(leaked.contains("not one of the tools offered"), "{leaked}");

    // The history, in order, with tokens; the title from the first message's first line.
    let read = call_ok(&meg, "get_conversation", json!({ "conversation_id": id })).await;
    let roles: Vec<&str> = read["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(
        roles,
        [
            "user",
            "assistant",
            "tool",
            "assistant",
            "user",
            "assistant",
            "tool",
            "assistant"
        ]
    );
    assert_eq!(read["conversation"]["title"], "Who is Ada?");
    assert_eq!(read["conversation"]["message_count"], 8);
    assert_eq!(
        read["conversation"]["total_tokens"],
        first["tokens"]["total"].as_i64().unwrap() + second["tokens"]["total"].as_i64().unwrap()
    );
    assert_eq!(read["messages"][1]["tool_calls"][0]["name"], "search");
    // The provider saw the whole history on the second message.
    let history = &llm.requests()[2]["messages"];
    assert!(history.to_string().contains("Who is Ada?"), "{history}");

    // Only participants and admins: another member, another tenant, and writing in
    // someone else's name are refused.
    let bob = member_client(&db, "bob@acme.test", &["agents:execute", "search"]).await;
    for (tool, args) in [
        ("get_conversation", json!({ "conversation_id": id })),
        (
            "send_message",
            json!({ "conversation_id": id, "content": "hi" }),
        ),
        ("delete_conversation", json!({ "conversation_id": id })),
    ] {
        assert_eq!(
            error_code(&call(&bob, tool, args).await),
            "not_found",
            "{tool}"
        );
    }
    let bobs = call_ok(&bob, "list_conversations", json!({})).await;
    assert_eq!(bobs["total"], 0);
    let refused = call(&bob, "list_conversations", json!({ "everyone": true })).await;
    assert_eq!(error_code(&refused), "forbidden");
    let mut command = db.server(&["stdio"]);
    command.env("AGENTCRM_API_KEY", db.other_tenant_key("globex"));
    let stranger = stdio_client(command, Generation::Stateless).await;
    let across = call(
        &stranger,
        "get_conversation",
        json!({ "conversation_id": id }),
    )
    .await;
    assert_eq!(error_code(&across), "not_found");
    // Meg through another key of hers is the same participant.
    let mut command = db.server(&["stdio"]);
    command.env("AGENTCRM_API_KEY", db.api_key("meg@acme.test", &[]));
    let meg_again = stdio_client(command, Generation::Stateless).await;
    let mine = call_ok(&meg_again, "list_conversations", json!({})).await;
    assert_eq!(mine["total"], 1, "{mine}");
    // Through a key narrowed to talking only, she reads what the tools gave as that key
    // may: not the search's results (found by a review).
    let mut command = db.server(&["stdio"]);
    command.env(
        "AGENTCRM_API_KEY",
        db.api_key("meg@acme.test", &["agents:execute"]),
    );
    let meg_narrow = stdio_client(command, Generation::Stateless).await;
    let narrow = call_ok(
        &meg_narrow,
        "get_conversation",
        json!({ "conversation_id": id }),
    )
    .await;
    let searched = narrow["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["tool_name"] == "search")
        .expect("the search's message")
        .clone();
    let content = searched["content"].as_str().unwrap();
    assert!(
        content.contains("redacted") && !content.contains("Lovelace"),
        "{searched}"
    );
    let full = call_ok(&meg, "get_conversation", json!({ "conversation_id": id })).await;
    assert!(full.to_string().contains("Lovelace"), "{full}");
    meg_narrow.cancel().await.unwrap();
    // The admin reads it, lists everyone's, but does not write in Meg's name.
    let everyone = call_ok(&admin, "list_conversations", json!({ "everyone": true })).await;
    assert_eq!(everyone["total"], 1);
    call_ok(&admin, "get_conversation", json!({ "conversation_id": id })).await;
    let impersonate = call(
        &admin,
        "send_message",
        json!({ "conversation_id": id, "content": "hi" }),
    )
    .await;
    assert_eq!(error_code(&impersonate), "not_found");

    let deleted = call_ok(
        &meg,
        "delete_conversation",
        json!({ "conversation_id": id }),
    )
    .await;
    assert_eq!(deleted["messages"], 8);
    let gone = call(&meg, "get_conversation", json!({ "conversation_id": id })).await;
    assert_eq!(error_code(&gone), "not_found");
    for client in [meg, meg_again, bob, stranger, admin] {
        client.cancel().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_report_progress_and_bad_setups_are_explained() {
    let db = TestDb::new().await;
    let admin = stdio_client(db.command(&["stdio"]), Generation::Stateless).await;
    // No LLM connection yet: said plainly.
    let created = call_ok(
        &admin,
        "create_conversation",
        json!({ "title": "Pipeline" }),
    )
    .await;
    let id = created["conversation"]["id"].as_str().unwrap().to_owned();
    let none = call(
        &admin,
        "send_message",
        json!({ "conversation_id": id, "content": "hello" }),
    )
    .await;
    assert_eq!(error_code(&none), "conflict");
    assert!(format!("{none:?}").contains("create_connection"));
    let bad_tool = call(
        &admin,
        "create_conversation",
        json!({ "tools": ["create_api_key"] }),
    )
    .await;
    assert_eq!(error_code(&bad_tool), "invalid_request");
    let unknown = call(
        &admin,
        "create_conversation",
        json!({ "tools": ["drop_tables"] }),
    )
    .await;
    assert_eq!(error_code(&unknown), "invalid_request");

    let llm = FakeLlm::start(
        Flavor::OpenAi,
        vec![
            Reply::tool("list_products", json!({})),
            Reply::text("You have no products yet."),
        ],
    )
    .await;
    connect(&admin, &llm, "llm").await;
    let narrowed = call_ok(
        &admin,
        "create_conversation",
        json!({ "tools": ["list_products", "search"], "system_prompt": "Be brief." }),
    )
    .await;
    let narrowed_id = narrowed["conversation"]["id"].as_str().unwrap().to_owned();
    let mut raw = crate::stdio::RawStdio::start(&db, &[]);
    let (reply, notifications) = tokio::task::spawn_blocking(move || {
        let out = raw.request_with_notifications(
            5,
            "tools/call",
            json!({ "name": "send_message", "_meta": { "progressToken": "talk-1" },
                    "arguments": { "conversation_id": narrowed_id, "content": "How many?" } }),
        );
        drop(raw);
        out
    })
    .await
    .unwrap();
    let out = &reply["result"]["structuredContent"];
    assert_eq!(
        out["reply"]["content"], "You have no products yet.",
        "{reply}"
    );
    let progress: Vec<String> = notifications
        .iter()
        .filter(|n| n["method"] == "notifications/progress")
        .map(|n| {
            n["params"]["message"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    assert_eq!(
        progress,
        [
            "asking fake-model",
            "calling list_products",
            "asking fake-model",
            "replied"
        ]
    );
    // A provider that fails: the reply is a failed one that says why, stored, not a fault
    // of the server's; the next message does not show the model the failure.
    let broken = FakeLlm::start(Flavor::OpenAi, vec![Reply::Error(500, "overloaded".into())]).await;
    connect(&admin, &broken, "broken").await;
    let failed = call_ok(
        &admin,
        "send_message",
        json!({ "conversation_id": id, "content": "Still there?", "connection": "broken" }),
    )
    .await;
    assert_eq!(failed["reply"]["status"], "error", "{failed}");
    assert!(
        failed["reply"]["error"]
            .as_str()
            .unwrap()
            .contains("connection `broken`"),
        "{failed}"
    );
    let history = call_ok(&admin, "get_conversation", json!({ "conversation_id": id })).await;
    assert_eq!(history["messages"][1]["status"], "error", "{history}");

    // Work done on someone's behalf has no conversations: a workflow step that would talk
    // to the model in the admin's conversation fails, and nothing is sent.
    let created = call_ok(
        &admin,
        "create_workflow",
        json!({ "name": "chatty", "steps": [{ "id": "s", "tool": "send_message",
                "arguments": { "conversation_id": id, "content": "from a workflow" } }] }),
    )
    .await;
    let run = call_ok(
        &admin,
        "execute_workflow",
        json!({ "workflow_id": created["workflow"]["id"], "wait_seconds": 20 }),
    )
    .await;
    assert_eq!(run["execution"]["status"], "failed", "{run}");
    assert!(
        run["steps"][0]["error"]
            .as_str()
            .unwrap()
            .contains("not by work done on someone's behalf"),
        "{run}"
    );
    let after = call_ok(&admin, "get_conversation", json!({ "conversation_id": id })).await;
    assert_eq!(after["conversation"]["message_count"], 2, "{after}");

    let request = &llm.requests()[0];
    let mut tools = offered(request);
    tools.sort();
    assert_eq!(tools, ["list_products", "search"]);
    assert!(
        request.to_string().contains("Be brief."),
        "the system prompt is sent"
    );
    admin.cancel().await.unwrap();
}
