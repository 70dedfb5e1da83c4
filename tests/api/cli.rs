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
