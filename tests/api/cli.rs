//! The command line itself: help everywhere, and start-up failures a person can act on.

use std::process::Stdio;

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
    let out = agentcrm(&["stdio"])
        .env("AGENTCRM_DATA_DIR", tmp.path().join("data"))
        .env("AGENTCRM_PG_BIN", tmp.path().join("no-postgres-here"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("Install PostgreSQL") && stderr.contains("DATABASE_URL"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
}

#[tokio::test]
async fn migrate_applies_the_schema_and_reports_its_version() {
    let db = TestDb::new().await;
    for _ in 0..2 {
        let out = agentcrm(&["migrate"])
            .env("DATABASE_URL", &db.url)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "database schema at migration 1"
        );
    }
}
