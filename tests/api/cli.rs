//! The command line itself: help everywhere, and start-up failures a person can act on.

use crate::helpers::*;

#[test]
fn every_command_has_help() {
    for command in [&[][..], &["stdio"], &["http"], &["migrate"], &["catalog"]] {
        let mut args = command.to_vec();
        args.push("--help");
        let out = agentcrm(&args).output().unwrap();
        assert!(out.status.success(), "{args:?}");
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(help.contains("Usage: agentcrm"), "{help}");
    }
    let http = agentcrm(&["http", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&http.stdout);
    for flag in [
        "--listen",
        "--allowed-hosts",
        "--database-url",
        "AGENTCRM_DATA_DIR",
        "--read-only",
    ] {
        assert!(help.contains(flag), "http --help mentions {flag}");
    }
}

#[test]
fn without_postgresql_the_server_says_how_to_get_one() {
    let tmp = tempfile::tempdir().unwrap();
    let stderr = start_failure(
        agentcrm(&["stdio"])
            .env("AGENTCRM_DATA_DIR", tmp.path().join("data"))
            .env("AGENTCRM_PG_BIN", tmp.path().join("no-postgres-here")),
    );
    assert!(
        stderr.contains("Install PostgreSQL") && stderr.contains("DATABASE_URL"),
        "{stderr}"
    );
}

#[tokio::test]
async fn migrate_applies_the_schema_and_reports_its_version() {
    let db = TestDb::new().await;
    for _ in 0..2 {
        let stdout = run_ok(agentcrm(&["migrate"]).env("DATABASE_URL", &db.url));
        let latest = agentcrm::store::latest_migration().expect("migrations are embedded");
        assert_eq!(
            stdout.trim(),
            format!("database schema at migration {latest}")
        );
    }
}

#[tokio::test]
async fn demo_creates_a_tenant_to_connect_to() {
    use serde_json::json;
    let db = TestDb::new().await;
    let out =
        run_ok(agentcrm(&["demo", "--customers", "120", "--json"]).env("DATABASE_URL", &db.url));
    let demo: serde_json::Value = serde_json::from_str(out.trim()).expect("JSON");
    assert_eq!(
        (demo["tenant"].as_str(), demo["customers"].as_i64()),
        (Some("demo"), Some(120))
    );

    let mut command = agentcrm(&["stdio"]);
    command
        .env("DATABASE_URL", &db.url)
        .env("AGENTCRM_API_KEY", demo["api_key"].as_str().unwrap());
    let admin = stdio_client(command, Generation::Stateless).await;
    assert_eq!(
        call_ok(&admin, "list_customers", json!({ "limit": 1 })).await["total"],
        120
    );
    let revenue = call_ok(&admin, "generate_report", json!({ "report": "revenue" })).await;
    assert!(
        revenue["totals"]["invoiced"].as_i64().unwrap() > 0,
        "{revenue}"
    );
    let found = call_ok(&admin, "search", json!({ "query": "pricing" })).await;
    assert!(!found["results"].as_array().unwrap().is_empty());
    admin.cancel().await.unwrap();
    let agent = agent_client(&db, &demo["agent"]).await;
    assert_eq!(
        call_ok(&agent, "whoami", json!({})).await["principal"]["kind"],
        "agent"
    );
    agent.cancel().await.unwrap();

    let again = start_failure(agentcrm(&["demo"]).env("DATABASE_URL", &db.url));
    assert!(again.contains("already has the demo data"), "{again}");
}
