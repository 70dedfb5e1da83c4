//! The tool catalog: every tool fully declared, and the committed `schemas/` and `tools/`
//! generated from the declarations.

use std::path::Path;

use agentcrm::toolkit::catalog::{RETURNS_SECRETS, TAKES_SECRETS};

#[test]
fn every_tool_is_fully_declared() {
    let catalog = agentcrm::catalog::builtin();
    assert!(catalog.iter().count() > 0);
    for name in RETURNS_SECRETS.iter().chain(&TAKES_SECRETS) {
        assert!(catalog.get(name).is_some(), "{name} is a tool");
    }
    for tool in catalog.iter() {
        let t = &tool.tool;
        let name = t.name.as_ref();
        assert!(
            name.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
            "{name} is snake_case"
        );
        assert!(
            t.title.as_deref().is_some_and(|s| !s.is_empty()),
            "{name} has a title"
        );
        assert!(
            t.description.as_deref().is_some_and(|d| d.len() >= 40),
            "{name} has a real description"
        );
        assert_eq!(
            t.input_schema.get("type").and_then(|v| v.as_str()),
            Some("object"),
            "{name} input is an object"
        );
        let output = t
            .output_schema
            .as_ref()
            .unwrap_or_else(|| panic!("{name} has an output schema"));
        assert_eq!(
            output.get("type").and_then(|v| v.as_str()),
            Some("object"),
            "{name} output is an object"
        );
        let a = t
            .annotations
            .as_ref()
            .unwrap_or_else(|| panic!("{name} has annotations"));
        for (hint, value) in [
            ("readOnlyHint", a.read_only_hint),
            ("destructiveHint", a.destructive_hint),
            ("idempotentHint", a.idempotent_hint),
            ("openWorldHint", a.open_world_hint),
        ] {
            assert!(value.is_some(), "{name} sets {hint} explicitly");
        }
        if a.read_only_hint == Some(true) {
            assert_eq!(
                a.destructive_hint,
                Some(false),
                "{name}: a read-only tool destroys nothing"
            );
        }

        // What `tools/list` gives: the summary, and every hint MCP gives a meaning to.
        let listed = &tool.listing;
        let summary = listed.description.as_deref().unwrap_or_default();
        assert!(
            (20..=160).contains(&summary.chars().count()) && !summary.contains('\n'),
            "{name}: the summary (first paragraph) is one line of 20 to 160 characters: {summary:?}"
        );
        assert!(
            t.description
                .as_deref()
                .unwrap_or_default()
                .starts_with(summary.split(' ').next().unwrap_or_default()),
            "{name}: the summary comes from the description"
        );
        assert!(
            listed.output_schema.is_none(),
            "{name}: no output schema listed"
        );
        // A hint left out of the listing means MCP's default: the same meaning.
        let l = listed.annotations.as_ref().expect("listed annotations");
        assert_eq!(
            l.read_only_hint.unwrap_or(false),
            a.read_only_hint.unwrap(),
            "{name}"
        );
        assert_eq!(
            l.open_world_hint.unwrap_or(true),
            a.open_world_hint.unwrap(),
            "{name}"
        );
        if a.read_only_hint == Some(false) {
            assert_eq!(
                l.destructive_hint.unwrap_or(true),
                a.destructive_hint.unwrap(),
                "{name}"
            );
            assert_eq!(
                l.idempotent_hint.unwrap_or(false),
                a.idempotent_hint.unwrap(),
                "{name}"
            );
        }
    }
}

fn catalog_check(dir: &Path) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_agentcrm"))
        .args(["catalog", "--check", "--out"])
        .arg(dir)
        .output()
        .expect("run agentcrm catalog")
}

#[test]
fn committed_catalog_matches_the_declarations() {
    let out = catalog_check(Path::new(env!("CARGO_MANIFEST_DIR")));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn catalog_check_catches_drift() {
    let dir = tempfile::tempdir().unwrap();
    let write = std::process::Command::new(env!("CARGO_BIN_EXE_agentcrm"))
        .args(["catalog", "--out"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(write.status.success());
    assert!(catalog_check(dir.path()).status.success());

    std::fs::write(dir.path().join("schemas/whoami.json"), "{}").unwrap();
    std::fs::write(dir.path().join("schemas/retired_tool.json"), "{}").unwrap();
    let out = catalog_check(dir.path());
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("schemas/whoami.json is out of date"),
        "{stderr}"
    );
    assert!(
        stderr.contains("schemas/retired_tool.json is no longer generated"),
        "{stderr}"
    );
}
