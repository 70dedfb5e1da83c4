//! Resources (customers, workflow executions, agent runs, held actions, handoffs) read with
//! the caller's permissions and subscribed to for changes; prompts for common jobs with
//! completion of customer names.

use std::time::Duration;

use rmcp::ClientHandler;
use rmcp::model::{
    ArgumentInfo, ClientConfig, CompleteRequestParams, GetPromptRequestParams,
    ReadResourceRequestParams, Reference, ResourceContents, ResourceUpdatedNotificationParam,
    SubscribeRequestParams,
};
use rmcp::service::{NotificationContext, RoleClient};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::helpers::*;

#[derive(Clone)]
pub(crate) struct Watcher {
    pub(crate) updates: mpsc::UnboundedSender<String>,
}

impl ClientHandler for Watcher {
    fn get_info(&self) -> ClientConfig {
        client_config()
    }

    async fn on_resource_updated(
        &self,
        params: ResourceUpdatedNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        let _ = self.updates.send(params.uri);
    }
}

async fn read<H: ClientHandler>(
    client: &rmcp::service::RunningService<RoleClient, H>,
    uri: &str,
) -> Result<Value, rmcp::ServiceError> {
    let read = client
        .read_resource(ReadResourceRequestParams::new(uri.to_owned()))
        .await?;
    let ResourceContents::TextResourceContents { text, .. } = &read.contents[0] else {
        panic!("{read:?}")
    };
    Ok(serde_json::from_str(text).unwrap())
}

#[tokio::test]
async fn resources_are_read_with_the_callers_permissions_and_notify_changes() {
    let db = TestDb::new().await;
    let (updates, mut received) = mpsc::unbounded_channel();
    let admin = stdio_client_with(
        Watcher { updates },
        db.command(&["stdio"]),
        Generation::Sessions,
    )
    .await;
    let templates = admin.list_all_resource_templates().await.unwrap();
    let uris: Vec<&str> = templates.iter().map(|t| t.uri_template.as_str()).collect();
    assert_eq!(
        uris,
        [
            "agentcrm://customers/{customer_id}",
            "agentcrm://workflow-executions/{execution_id}",
            "agentcrm://agent-runs/{run_id}",
            "agentcrm://pending-actions/{action_id}",
            "agentcrm://handoffs/{handoff_id}",
            "agentcrm://exports/{export_id}",
        ]
    );
    let created = call_ok(
        &admin,
        "create_customer",
        json!({"first_name": "Ada", "last_name": "Lovelace", "email": "ada@example.com", "phone": "+44 20 0000"}),
    )
    .await;
    let id = created["customer"]["id"].as_str().unwrap().to_owned();
    let uri = format!("agentcrm://customers/{id}");
    let customer = read(&admin, &uri).await.unwrap();
    assert_eq!(customer["first_name"], "Ada");
    assert_eq!(customer["phone"], "+44 20 0000");
    #[allow(deprecated)]
    admin
        .subscribe(SubscribeRequestParams::new(uri.clone()))
        .await
        .unwrap();
    call_ok(
        &admin,
        "update_customer",
        json!({"customer_id": id, "version": customer["version"], "status": "customer"}),
    )
    .await;
    let pushed = tokio::time::timeout(Duration::from_secs(10), received.recv())
        .await
        .expect("a resource update")
        .unwrap();
    assert_eq!(pushed, uri);
    assert_eq!(read(&admin, &uri).await.unwrap()["status"], "customer");

    // A workflow execution, subscribed to before it ends.
    let workflow = call_ok(
        &admin,
        "create_workflow",
        json!({"name": "tag", "steps": [{"id": "get", "tool": "get_customer", "arguments": {"customer_id": id}}]}),
    )
    .await;
    let run = call_ok(
        &admin,
        "execute_workflow",
        json!({"workflow_id": workflow["workflow"]["id"]}),
    )
    .await;
    let execution = format!(
        "agentcrm://workflow-executions/{}",
        run["execution"]["id"].as_str().unwrap()
    );
    let read_back = read(&admin, &execution).await.unwrap();
    assert_eq!(read_back["execution"]["status"], "succeeded");
    assert_eq!(read_back["steps"][0]["tool"], "get_customer");
    let missing = read(
        &admin,
        "agentcrm://agent-runs/00000000-0000-0000-0000-000000000000",
    )
    .await;
    assert!(missing.is_err());
    let unknown = read(&admin, "agentcrm://nothing/1").await;
    assert!(unknown.is_err());

    // An agent limited to names sees only those fields, and no resource it lacks scopes for.
    let agent = db.admin(&[
        "create-agent",
        "--tenant",
        "acme",
        "--name",
        "namer",
        "--scopes",
        "customers:read",
    ]);
    call_ok(
        &admin,
        "update_agent_permissions",
        json!({"agent_id": agent["agent"]["id"], "field_rules": {"customers": ["first_name", "last_name"]}}),
    )
    .await;
    let as_agent = agent_client(&db, &agent).await;
    // (Its own held actions it reads whatever its scopes.)
    let templates = as_agent.list_all_resource_templates().await.unwrap();
    let names: Vec<&str> = templates.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["customer", "pending-action"], "{templates:?}");
    let seen = read(&as_agent, &uri).await.unwrap();
    assert_eq!(seen["first_name"], "Ada");
    assert!(seen.get("phone").is_none(), "{seen}");
    assert!(read(&as_agent, &execution).await.is_err());
    as_agent.cancel().await.unwrap();
    admin.cancel().await.unwrap();
}

#[tokio::test]
async fn prompts_for_common_jobs_complete_customer_names() {
    let db = TestDb::new().await;
    let client = stdio_client(db.command(&["stdio"]), Generation::Sessions).await;
    for (first, email) in [
        ("Gabriela", "gabi@example.com"),
        ("Gabriel", "gab@example.com"),
        ("Zoe", "zoe@example.com"),
    ] {
        call_ok(
            &client,
            "create_customer",
            json!({"first_name": first, "last_name": "Silva", "email": email}),
        )
        .await;
    }
    let prompts = client.list_all_prompts().await.unwrap();
    let names: Vec<&str> = prompts.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "triage_customer",
            "weekly_pipeline_review",
            "draft_follow_up"
        ]
    );

    let completion = client
        .complete(CompleteRequestParams::new(
            Reference::for_prompt("triage_customer"),
            ArgumentInfo::new("customer", "gab"),
        ))
        .await
        .unwrap();
    let mut values = completion.completion.values.clone();
    values.sort();
    assert_eq!(values, ["Gabriel Silva", "Gabriela Silva"]);
    let tones = client
        .complete(CompleteRequestParams::new(
            Reference::for_prompt("draft_follow_up"),
            ArgumentInfo::new("tone", "f"),
        ))
        .await
        .unwrap();
    assert_eq!(tones.completion.values, ["friendly", "formal"]);

    let prompt = client
        .get_prompt(
            GetPromptRequestParams::new("triage_customer").with_arguments(
                json!({"customer": "Zoe Silva"})
                    .as_object()
                    .unwrap()
                    .clone(),
            ),
        )
        .await
        .unwrap();
    let text = serde_json::to_string(&prompt.messages).unwrap();
    assert!(
        text.contains("Zoe Silva") && text.contains("agentcrm://customers/"),
        "{text}"
    );
    let missing = client
        .get_prompt(
            GetPromptRequestParams::new("triage_customer").with_arguments(
                json!({"customer": "Nobody Atall"})
                    .as_object()
                    .unwrap()
                    .clone(),
            ),
        )
        .await;
    assert!(missing.is_err());
    let weekly = client
        .get_prompt(GetPromptRequestParams::new("weekly_pipeline_review"))
        .await
        .unwrap();
    assert!(
        serde_json::to_string(&weekly.messages)
            .unwrap()
            .contains("generate_report")
    );
    client.cancel().await.unwrap();
}
