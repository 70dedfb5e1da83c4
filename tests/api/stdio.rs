//! MCP over stdio, against a database of its own on the machine's PostgreSQL.

use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::*;

#[tokio::test]
async fn stdio_lists_and_calls_tools_in_both_protocol_generations() {
    let db = TestDb::new().await;
    for generation in [Generation::Sessions, Generation::Stateless] {
        let client = stdio_client(db.command(&["stdio"]), generation).await;

        let info = client.peer_info().expect("server info");
        let expected = match generation {
            Generation::Sessions => "2025-11-25",
            Generation::Stateless => "2026-07-28",
        };
        assert_eq!(info.protocol_version.as_str(), expected);

        let tools = client.list_all_tools().await.expect("tools/list");
        let names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
        assert_eq!(names, all_tool_names());

        let me = call_ok(&client, "whoami", json!({})).await;
        assert_eq!(me["principal"]["kind"], "api_key", "{me}");
        assert_eq!(me["principal"]["role"], "admin");
        assert_eq!(me["tenant"]["slug"], "acme");
        assert_eq!(me["transport"], "stdio");
        assert_eq!(
            me["scopes"].as_array().unwrap().len(),
            24,
            "an admin's key inherits every scope"
        );

        let server = call_ok(&client, "server_info", json!({})).await;
        assert_eq!(server["database"], "external");
        assert_eq!(
            server["migration_version"],
            json!(agentcrm::store::latest_migration())
        );
        assert_eq!(
            server["toolsets"],
            json!([
                "account",
                "admin",
                "crm",
                "handoff",
                "workflows",
                "agents",
                "connections",
                "discovery"
            ])
        );
        assert!(
            server["protocol_versions"]
                .as_array()
                .unwrap()
                .contains(&json!(expected))
        );
        client.cancel().await.expect("close client");
    }
}

/// A raw JSON-RPC conversation over the server's stdin/stdout.
pub struct RawStdio {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    lines: std::sync::mpsc::Receiver<String>,
}

impl RawStdio {
    pub fn start(db: &TestDb, extra: &[&str]) -> RawStdio {
        let mut args = vec!["stdio"];
        args.extend_from_slice(extra);
        let mut child = db
            .command(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start agentcrm stdio");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut raw = RawStdio {
            child,
            stdin,
            lines,
        };
        raw.send_line(&initialize_request(0).to_string());
        let init = raw.recv();
        assert_eq!(init["result"]["protocolVersion"], "2025-11-25");
        raw.send_line(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#);
        raw
    }

    fn send_line(&mut self, line: &str) {
        writeln!(self.stdin, "{line}").expect("write to server");
        self.stdin.flush().unwrap();
    }

    /// The next stdout line; every one of them must be a JSON-RPC message.
    fn recv(&self) -> Value {
        let line = self
            .lines
            .recv_timeout(Duration::from_secs(30))
            .expect("a reply on stdout");
        let value: Value = serde_json::from_str(&line)
            .unwrap_or_else(|_| panic!("stdout carried a non-JSON line: {line}"));
        assert_eq!(value["jsonrpc"], "2.0", "{line}");
        value
    }

    /// Sends a request and reads until its reply, returning the notifications seen before it.
    pub fn request_with_notifications(
        &mut self,
        id: u64,
        method: &str,
        params: Value,
    ) -> (Value, Vec<Value>) {
        self.send_line(
            &json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params }).to_string(),
        );
        let mut notifications = Vec::new();
        loop {
            let message = self.recv();
            if message["id"] == id {
                return (message, notifications);
            }
            notifications.push(message);
        }
    }

    fn request(&mut self, id: u64, method: &str, params: Value) -> Value {
        self.send_line(
            &json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params }).to_string(),
        );
        let reply = self.recv();
        assert_eq!(reply["id"], id);
        reply
    }
}

impl Drop for RawStdio {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn stdio_answers_bad_input_with_clear_errors() {
    let db = TestDb::new().await;
    let mut raw = RawStdio::start(&db, &[]);

    let unknown = raw.request(
        1,
        "tools/call",
        json!({ "name": "drop_all_tables", "arguments": {} }),
    );
    assert_eq!(unknown["error"]["code"], -32602);
    assert_eq!(unknown["error"]["message"], "Unknown tool: drop_all_tables");

    // A wrong argument is a tool error the model can read, in the error shape of SPEC §1.
    let wrong = raw.request(
        2,
        "tools/call",
        json!({ "name": "whoami", "arguments": { "tenant": "'; DROP TABLE tenants; --" } }),
    );
    let body = &wrong["result"]["structuredContent"];
    assert_eq!(wrong["result"]["isError"], true);
    assert_eq!(body["error"], "invalid_request");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("unknown field `tenant`"),
        "{body}"
    );
    assert!(!body["request_id"].as_str().unwrap().is_empty());

    // Params of the wrong JSON type are a protocol error that says what is wrong.
    let bad_type = raw.request(3, "tools/call", json!({ "name": 42 }));
    assert_eq!(bad_type["error"]["code"], -32602);
    assert!(
        bad_type["error"]["message"]
            .as_str()
            .unwrap()
            .contains("expected a string"),
        "{bad_type}"
    );
    let bad_args = raw.request(
        4,
        "tools/call",
        json!({ "name": "whoami", "arguments": [1, 2] }),
    );
    assert_eq!(bad_args["error"]["code"], -32602);

    // Unparsable input gets a JSON-RPC parse error (id null, as JSON-RPC 2.0 says); a
    // message that is not a request keeps its id; the session carries on and the tenants
    // table is untouched.
    raw.send_line("{this is not json");
    let parse_error = raw.recv();
    assert_eq!(parse_error["error"]["code"], -32700, "{parse_error}");
    assert_eq!(parse_error["id"], Value::Null);
    raw.send_line(r#"{"jsonrpc":"2.0","id":44,"method":"ping","params":["not","an","object"]}"#);
    let invalid = raw.recv();
    assert_eq!(invalid["error"]["code"], -32600, "{invalid}");
    assert_eq!(invalid["id"], 44);
    let after = raw.request(
        5,
        "tools/call",
        json!({ "name": "whoami", "arguments": {} }),
    );
    assert_eq!(
        after["result"]["structuredContent"]["tenant"]["slug"],
        "acme"
    );

    let unknown_method = raw.request(6, "customers/drop", json!({}));
    assert_eq!(unknown_method["error"]["code"], -32601);
}

fn listed(raw: &mut RawStdio) -> Vec<String> {
    let list = raw.request(1, "tools/list", json!({}));
    list["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn stdio_filters_tools_by_configuration() {
    let db = TestDb::new().await;
    let mut raw = RawStdio::start(
        &db,
        &["--toolsets", "account", "--exclude-tools", "server_info"],
    );
    assert_eq!(
        listed(&mut raw),
        ["whoami", "list_my_permissions", "check_permission"]
    );
    // A tool the configuration hides gets exactly the answer of a tool that does not exist.
    let hidden = raw.request(
        2,
        "tools/call",
        json!({ "name": "server_info", "arguments": {} }),
    );
    assert_eq!(
        hidden["error"],
        json!({ "code": -32602, "message": "Unknown tool: server_info" })
    );
    let hidden = raw.request(
        3,
        "tools/call",
        json!({ "name": "register_agent", "arguments": {} }),
    );
    assert_eq!(hidden["error"]["message"], "Unknown tool: register_agent");

    let mut only = RawStdio::start(&db, &["--tools", "whoami,list_agents"]);
    assert_eq!(listed(&mut only), ["whoami", "list_agents"]);

    let mut read_only = RawStdio::start(&db, &["--read-only"]);
    let names = listed(&mut read_only);
    for name in all_tool_names() {
        let tool = agentcrm::catalog::builtin().get(&name).unwrap();
        assert_eq!(
            names.contains(&name),
            tool.def.hints.read_only,
            "{name} under --read-only"
        );
    }

    let mut only_crm = RawStdio::start(&db, &["--toolsets", "crm"]);
    assert_eq!(
        listed(&mut only_crm),
        toolset_tool_names(agentcrm::toolkit::catalog::Toolset::Crm)
    );
}

#[test]
fn stdio_refuses_unknown_configuration_names() {
    let stderr = start_failure(&mut agentcrm(&["stdio", "--toolsets", "acount"]));
    assert!(
        stderr.contains("unknown toolset `acount`") && stderr.contains("account"),
        "{stderr}"
    );
    let stderr = start_failure(&mut agentcrm(&["stdio", "--tools", "whoamii"]));
    assert!(stderr.contains("unknown tool `whoamii`"), "{stderr}");
}

#[test]
fn stdio_reports_an_unreachable_database() {
    let stderr = start_failure(
        agentcrm(&["stdio"]).env("DATABASE_URL", "postgres://postgres@127.0.0.1:1/nothing"),
    );
    assert!(stderr.contains("error: database error"), "{stderr}");
}

#[tokio::test]
async fn stdio_on_a_shared_database_needs_a_credential() {
    let db = TestDb::new().await;
    let stderr = start_failure(agentcrm(&["stdio"]).env("DATABASE_URL", &db.url));
    assert!(
        stderr.contains("stdio needs a credential") && stderr.contains("AGENTCRM_API_KEY"),
        "{stderr}"
    );

    let stderr = start_failure(
        agentcrm(&["stdio"])
            .env("DATABASE_URL", &db.url)
            .env("AGENTCRM_API_KEY", "acrm_not-a-real-key"),
    );
    assert!(
        stderr.contains("AGENTCRM_API_KEY is invalid, revoked or disabled"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("acrm_not-a-real-key"),
        "the secret is not echoed: {stderr}"
    );

    let stderr = start_failure(
        agentcrm(&["stdio"])
            .env("DATABASE_URL", &db.url)
            .env("AGENTCRM_CLIENT_ID", "agt_123"),
    );
    assert!(
        stderr.contains("set both AGENTCRM_CLIENT_ID and AGENTCRM_CLIENT_SECRET"),
        "{stderr}"
    );
}
