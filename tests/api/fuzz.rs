//! Fuzzing (SPEC §1 "Errors"): random and malformed tool arguments at every tool of the
//! catalog over HTTP and stdio, and malformed JSON-RPC over both transports. Whatever comes
//! in: no panic, no 5xx, no `internal` error on bad input, every tool error in the SPEC
//! shape, every protocol refusal a JSON-RPC error (or a 4xx that says what is wrong), and
//! the server still serves a normal call afterwards.
//!
//! Inputs come from a small seeded PRNG, so a failure is reproducible: every test prints
//! its seed. Environment:
//! - `AGENTCRM_FUZZ_SEED`: the seed (decimal or `0x…` hex; default: from the clock);
//! - `AGENTCRM_FUZZ_CASES`: argument sets per tool over HTTP (default 12; stdio gets a
//!   third of it, at least 1);
//! - `AGENTCRM_FUZZ_TOOLS`: only these tools (comma-separated), to replay one failure;
//! - `AGENTCRM_FUZZ_VERBOSE=1`: print every call, its outcome and the server's errors.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};

use crate::helpers::*;

/// Findings this suite reports that are tolerated until fixed, each with the report that
/// describes it. A listed case that no longer reproduces fails the test (remove it here).
/// Ids: `http:<case>` for a malformed HTTP request case, `stdio:<case>` for a stdio line,
/// `tool:<tool>:<what>` for a tool's answer to fuzzed arguments (`internal`, `shape`,
/// `transport`, `audit`); `nul-character:<what>` for any of those when the arguments held
/// a NUL character (U+0000) (`nul-character:audit-of-others`: a call whose audit record
/// was lost beside a concurrent one with a NUL), `huge-number:<what>` when they held a
/// number near f64::MAX; `http-415-for-json` and `stdio-error-without-id` /
/// `stdio-error-loses-id` for those transport-level answers, whatever the case.
const KNOWN_BUGS: &[(&str, &str)] = &[];

const ERROR_CODES: [&str; 8] = [
    "invalid_request",
    "unauthorized",
    "forbidden",
    "not_found",
    "conflict",
    "rate_limited",
    "pending_approval",
    "internal",
];
const ERROR_KEYS: [&str; 5] = [
    "error",
    "error_description",
    "request_id",
    "retry_after",
    "action_id",
];
/// How long one call may take before it counts as a hang.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
const STATELESS_VERSION: &str = "2026-07-28";
const SESSION_VERSION: &str = "2025-11-25";

// ---------------------------------------------------------------------------------------
// Seeds and the PRNG (splitmix64).

#[derive(Clone)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// 0..n (n > 0).
    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next_u64() % 100 < percent
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    /// lo..=hi.
    fn range(&mut self, lo: i128, hi: i128) -> i128 {
        if hi <= lo {
            return lo;
        }
        let span = (hi - lo + 1) as u128;
        lo + ((u128::from(self.next_u64()) << 64 | u128::from(self.next_u64())) % span) as i128
    }

    fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i + 1);
            items.swap(i, j);
        }
    }

    fn uuid(&mut self) -> String {
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&self.next_u64().to_le_bytes());
        bytes[8..].copy_from_slice(&self.next_u64().to_le_bytes());
        uuid::Builder::from_random_bytes(bytes)
            .into_uuid()
            .to_string()
    }
}

fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// An RNG for one purpose (`label`, `n`) under `seed`: a case replays alone.
fn rng_for(seed: u64, label: &str, n: u64) -> Rng {
    let mut mix = Rng::new(seed ^ fnv1a(label) ^ n.wrapping_mul(0xa076_1d64_78bd_642f));
    Rng::new(mix.next_u64())
}

/// The run's seed, printed so that a failure can be replayed.
fn seed(test: &str) -> u64 {
    let seed = match std::env::var("AGENTCRM_FUZZ_SEED") {
        Ok(text) if !text.trim().is_empty() => {
            let text = text.trim();
            let parsed = match text.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => text.parse(),
            };
            parsed.unwrap_or_else(|_| panic!("AGENTCRM_FUZZ_SEED={text} is not a u64"))
        }
        _ => {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or_default();
            Rng::new(nanos ^ u64::from(std::process::id())).next_u64()
        }
    };
    eprintln!("{test}: seed {seed} (replay with AGENTCRM_FUZZ_SEED={seed})");
    seed
}

fn cases_per_tool() -> usize {
    std::env::var("AGENTCRM_FUZZ_CASES")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(12)
}

/// The catalog's tools, or those named in `AGENTCRM_FUZZ_TOOLS`.
fn fuzzed_tools() -> Vec<String> {
    let only: Option<BTreeSet<String>> = std::env::var("AGENTCRM_FUZZ_TOOLS")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .map(|v| v.split(',').map(|s| s.trim().to_owned()).collect());
    let tools: Vec<String> = all_tool_names()
        .into_iter()
        .filter(|name| only.as_ref().is_none_or(|only| only.contains(name)))
        .collect();
    assert!(!tools.is_empty(), "no tool to fuzz");
    tools
}

/// `AGENTCRM_FUZZ_VERBOSE=1`: print every call and its outcome.
fn verbose() -> bool {
    std::env::var("AGENTCRM_FUZZ_VERBOSE").is_ok_and(|v| v == "1")
}

fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let head: String = text.chars().take(max).collect();
    format!("{head}… ({} chars)", text.chars().count())
}

fn known_bug(id: &str) -> Option<&'static str> {
    KNOWN_BUGS
        .iter()
        .find(|(known, _)| *known == id)
        .map(|(_, why)| *why)
}

/// What a run found: defects fail the test unless listed in [`KNOWN_BUGS`].
#[derive(Default)]
struct Findings {
    seed: u64,
    defects: Vec<String>,
    tolerated: BTreeMap<String, usize>,
}

impl Findings {
    fn new(seed: u64) -> Findings {
        Findings {
            seed,
            ..Findings::default()
        }
    }

    /// Adds the server's own log line for each defect's request id (the database error
    /// behind an `internal`, say), which the caller never sees.
    fn explain(&mut self, log: &[String]) {
        for defect in &mut self.defects {
            let Some(id) = defect
                .split("report request id ")
                .nth(1)
                .and_then(|rest| rest.get(..36))
            else {
                continue;
            };
            let needle = format!("request_id={id}");
            if let Some(line) = log
                .iter()
                .find(|l| l.contains(&needle) && l.contains(" ERROR "))
            {
                let error = line.split(" error=").nth(1).unwrap_or(line);
                defect.push_str(&format!("\n    server log: {}", truncate(error, 300)));
            }
        }
    }

    /// Records a defect with the id [`KNOWN_BUGS`] would list it under.
    fn defect(&mut self, id: &str, detail: String) {
        if known_bug(id).is_some() {
            *self.tolerated.entry(id.to_owned()).or_default() += 1;
            return;
        }
        self.defects.push(format!("[{id}] {detail}"));
    }

    /// Fails on defects, and on known bugs with `prefix` (the deterministic cases this test
    /// runs) that no longer reproduce. Random runs pass `None`: a case may not come up.
    fn finish(self, test: &str, prefix: Option<&str>) {
        for (id, count) in &self.tolerated {
            eprintln!(
                "{test}: known bug {id} seen {count} time(s): {}",
                known_bug(id).unwrap_or_default()
            );
        }
        let mut problems = self.defects;
        for (id, _) in KNOWN_BUGS {
            if prefix.is_some_and(|p| id.starts_with(p)) && !self.tolerated.contains_key(*id) {
                problems.push(format!(
                    "[{id}] is listed in KNOWN_BUGS but did not reproduce: remove it"
                ));
            }
        }
        if problems.is_empty() {
            return;
        }
        // By class first (what to list in KNOWN_BUGS), then each case (at most 60).
        let mut classes: BTreeMap<&str, usize> = BTreeMap::new();
        for problem in &problems {
            let class = problem
                .strip_prefix('[')
                .and_then(|p| p.split_once(']'))
                .map_or("?", |(class, _)| class);
            *classes.entry(class).or_default() += 1;
        }
        let classes: Vec<String> = classes.iter().map(|(c, n)| format!("{c} ×{n}")).collect();
        let shown = problems.len().min(60);
        panic!(
            "{test} (AGENTCRM_FUZZ_SEED={}): {} finding(s) in {} class(es): {}\n{}{}",
            self.seed,
            problems.len(),
            classes.len(),
            classes.join(", "),
            problems[..shown].join("\n"),
            if shown < problems.len() {
                format!("\n… and {} more", problems.len() - shown)
            } else {
                String::new()
            }
        );
    }
}

// ---------------------------------------------------------------------------------------
// Values harvested from answers, to reach past "not found".

/// The kind of record a field or key names: `customer_id`, `customers` and `customer`
/// are all `customer`; `api_key_id` is `key`, `workflow_execution` is `execution`.
fn kind_of(name: &str) -> String {
    let name = name
        .trim_end_matches("_ids")
        .trim_end_matches("_id")
        .trim_end_matches('s');
    let last = name.rsplit('_').next().unwrap_or(name);
    match last {
        "assignee" | "behalf" | "owner" => "user".into(),
        "after" => "agent".into(),
        "deliverie" => "delivery".into(),
        other => other.to_owned(),
    }
}

/// The kind of record a tool's answer is about: `create_customer` → `customer`.
fn tool_kind(tool: &str) -> String {
    kind_of(tool.split_once('_').map_or(tool, |(_, rest)| rest))
}

#[derive(Default)]
struct Pool {
    all: Vec<String>,
    by_kind: BTreeMap<String, Vec<String>>,
}

const POOL_CAP: usize = 200;

impl Pool {
    fn push(list: &mut Vec<String>, value: &str) {
        if list.iter().any(|v| v == value) {
            return;
        }
        if list.len() >= POOL_CAP {
            list.remove(0);
        }
        list.push(value.to_owned());
    }

    fn add(&mut self, kind: &str, value: &str) {
        Pool::push(&mut self.all, value);
        Pool::push(self.by_kind.entry(kind.to_owned()).or_default(), value);
    }

    /// A value of this kind if there is one (mostly), else of any kind (sometimes).
    fn pick(&self, rng: &mut Rng, kind: &str) -> Option<String> {
        if let Some(list) = self.by_kind.get(kind).filter(|l| !l.is_empty())
            && rng.chance(85)
        {
            return Some(rng.pick(list).clone());
        }
        (!self.all.is_empty() && rng.chance(35)).then(|| rng.pick(&self.all).clone())
    }
}

/// Values harvested from answers, to reach past "not found".
#[derive(Default)]
struct Pools {
    uuids: Pool,
    /// Names and other ids that are not uuids (templates, …), by kind.
    names: Pool,
    cursors: Vec<String>,
    scopes: Vec<String>,
    tools: Vec<String>,
    /// Never used as an argument: the test's own API key and user (revoking the key would
    /// end the run).
    forbidden: BTreeSet<String>,
}

impl Pools {
    /// Takes ids, names and cursors from a successful answer of `tool`.
    fn harvest(&mut self, tool: &str, value: &Value) {
        self.walk(&tool_kind(tool), None, value, 0);
    }

    fn walk(&mut self, kind: &str, key: Option<&str>, value: &Value, depth: usize) {
        if depth > 12 {
            return;
        }
        match value {
            Value::String(s) => {
                let Some(key) = key else { return };
                if s.is_empty() || s.len() > 200 || self.forbidden.contains(s) {
                    return;
                }
                let is_uuid = uuid::Uuid::parse_str(s).is_ok();
                let named = if key == "id" || key == "name" || key == "slug" {
                    kind.to_owned()
                } else if key.ends_with("_id") || key.ends_with("_ids") {
                    kind_of(key)
                } else if key.contains("cursor") {
                    Pool::push(&mut self.cursors, s);
                    return;
                } else if is_uuid {
                    kind_of(key)
                } else {
                    return;
                };
                if is_uuid {
                    self.uuids.add(&named, s);
                } else {
                    self.names.add(&named, s);
                }
            }
            Value::Array(items) => {
                for item in items.iter().take(50) {
                    self.walk(kind, key, item, depth + 1);
                }
            }
            Value::Object(map) => {
                // Inside `"customer": {…}` or `"customers": [{…}]`, ids are customers'.
                let inner = key.map_or_else(|| kind.to_owned(), kind_of);
                for (k, v) in map {
                    self.walk(&inner, Some(k), v, depth + 1);
                }
            }
            _ => {}
        }
    }
}

// ---------------------------------------------------------------------------------------
// Arguments from a tool's input schema: valid-looking, then mutated.

const WORDS: [&str; 16] = [
    "acme",
    "alpha",
    "beta",
    "lead",
    "vip",
    "renewal",
    "north",
    "q3",
    "follow-up",
    "priority",
    "test",
    "demo",
    "invoice",
    "churn",
    "gold",
    "trial",
];
const EVENTS: [&str; 8] = [
    "*",
    "customer.created",
    "customer.updated",
    "customer.deleted",
    "interaction.created",
    "invoice.created",
    "invoice.updated",
    "handoff.created",
];
const MAP_KEYS: [&str; 8] = [
    "customers",
    "interactions",
    "status",
    "email",
    "first_name",
    "tier",
    "x",
    "notes",
];

fn nasty_strings() -> Vec<String> {
    vec![
        String::new(),
        " ".into(),
        "' OR 1=1 --".into(),
        "'; DROP TABLE customers; --".into(),
        "\" OR \"\"=\"".into(),
        "%".into(),
        "_%_".into(),
        "\\".into(),
        "\\'\\\"".into(),
        "$1".into(),
        "{{input.x}}".into(),
        "{{steps.a.output.total}}".into(),
        "{{".into(),
        "../../etc/passwd".into(),
        "<script>alert(1)</script>".into(),
        "\u{0}".into(),
        "a\u{0}b".into(),
        "\u{202e}lanigiro".into(),
        "\u{200b}\u{feff}".into(),
        "😀🎉👩‍👩‍👧".into(),
        "Z\u{0324}\u{0354}\u{0367}\u{0311}a\u{0308}\u{0356}".into(),
        "日本語テキスト".into(),
        "\u{ffff}\u{10ffff}".into(),
        "null".into(),
        "true".into(),
        "0".into(),
        "-1".into(),
        "NaN".into(),
        "1e309".into(),
        "not-a-uuid".into(),
        "00000000-0000-0000-0000-000000000000".into(),
        "2024-02-30T25:61:00Z".into(),
        "0000-00-00".into(),
        "9999-12-31T23:59:59Z".into(),
        "*".into(),
        "\n\r\t".into(),
        "%00%27".into(),
        "customers:*".into(),
        "admin".into(),
        "http://169.254.169.254/latest/meta-data/".into(),
        "file:///etc/passwd".into(),
        "javascript:alert(1)".into(),
        "* * * * * * *".into(),
        "Mars/Olympus_Mons".into(),
        "x".repeat(300),
        "🙂".repeat(700),
    ]
}

fn nasty_numbers() -> Vec<Value> {
    vec![
        json!(-1),
        json!(0),
        json!(i64::MIN),
        json!(i64::MAX),
        json!(u64::MAX),
        json!(i64::from(i32::MAX) + 1),
        json!(u64::from(u32::MAX) + 1),
        json!(9_007_199_254_740_993u64),
        json!(1.5),
        json!(-0.0),
        json!(1e308),
        json!(-1e308),
        json!(1e-300),
        json!(f64::MAX),
    ]
}

/// Words in backticks in a schema's description, when they look like values.
fn backticked(schema: &Value) -> Vec<String> {
    let Some(text) = schema.get("description").and_then(Value::as_str) else {
        return Vec::new();
    };
    text.split('`')
        .skip(1)
        .step_by(2)
        .filter(|w| {
            !w.is_empty()
                && w.len() <= 40
                && w.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_-.:*/ ".contains(c))
        })
        .map(str::to_owned)
        .collect()
}

struct Gen<'a> {
    rng: &'a mut Rng,
    root: &'a Value,
    pools: &'a Pools,
    /// `name` fields name tools (run_tool, describe_tools, get_tool_catalog_entry, …).
    tool_names: bool,
    /// `$defs` being expanded: deep down, branches that recurse into them are avoided.
    stack: Vec<String>,
}

const DEEP: usize = 4;

impl<'a> Gen<'a> {
    fn valid(&mut self, schema: &'a Value, field: &str, depth: usize) -> Value {
        if let Some(reference) = schema.get("$ref").and_then(Value::as_str) {
            let name = reference.trim_start_matches("#/$defs/").to_owned();
            let root: &'a Value = self.root;
            let target = &root["$defs"][name.as_str()];
            if target.is_null() {
                return Value::Null;
            }
            self.stack.push(name);
            let value = self.valid(target, field, depth);
            self.stack.pop();
            return value;
        }
        if let Some(value) = schema.get("const") {
            return value.clone();
        }
        if let Some(values) = schema.get("enum").and_then(Value::as_array)
            && !values.is_empty()
        {
            return self.rng.pick(values).clone();
        }
        for key in ["anyOf", "oneOf"] {
            if let Some(branches) = schema.get(key).and_then(Value::as_array)
                && !branches.is_empty()
            {
                let mut choices: Vec<&'a Value> = branches.iter().collect();
                if depth > DEEP {
                    let shallow: Vec<&'a Value> = choices
                        .iter()
                        .copied()
                        .filter(|b| !self.recurses(b))
                        .collect();
                    if !shallow.is_empty() {
                        choices = shallow;
                    }
                }
                let branch = *self.rng.pick(&choices);
                return self.valid(branch, field, depth + 1);
            }
        }
        let types: Vec<&str> = match schema.get("type") {
            Some(Value::String(t)) => vec![t.as_str()],
            Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        if types.is_empty() {
            return self.free_value(depth);
        }
        let non_null: Vec<&str> = types.iter().copied().filter(|t| *t != "null").collect();
        if non_null.is_empty() || (types.contains(&"null") && self.rng.chance(12)) {
            return Value::Null;
        }
        match *self.rng.pick(&non_null) {
            "boolean" => Value::Bool(self.rng.chance(50)),
            "integer" => self.integer(schema, field),
            "number" => self.number(field),
            "string" => Value::String(self.string(schema, field)),
            "array" => self.array(schema, field, depth),
            "object" => self.object(schema, field, depth),
            _ => Value::Null,
        }
    }

    fn recurses(&self, branch: &Value) -> bool {
        let text = branch.to_string();
        self.stack
            .iter()
            .any(|name| text.contains(&format!("\"#/$defs/{name}\"")))
    }

    fn free_value(&mut self, depth: usize) -> Value {
        match self.rng.below(if depth > DEEP { 5 } else { 6 }) {
            0 => json!(self.rng.pick(&WORDS)),
            1 => json!(self.rng.range(-5, 1000) as i64),
            2 => json!(self.rng.chance(50)),
            3 => Value::Null,
            4 => json!(self.rng.range(0, 10_000) as f64 / 100.0),
            _ => json!([self.rng.pick(&WORDS), self.rng.pick(&WORDS)]),
        }
    }

    fn integer(&mut self, schema: &Value, field: &str) -> Value {
        let (mut lo, mut hi): (i128, i128) = match schema.get("format").and_then(Value::as_str) {
            Some("uint32") => (0, u32::MAX.into()),
            Some("int32") => (i32::MIN.into(), i32::MAX.into()),
            Some("uint64") | Some("uint") => (0, u64::MAX.into()),
            Some("uint8") => (0, 255),
            Some("uint16") => (0, 65_535),
            _ => (i64::MIN.into(), i64::MAX.into()),
        };
        if let Some(min) = schema.get("minimum").and_then(Value::as_f64) {
            lo = lo.max(min.ceil() as i128);
        }
        if let Some(max) = schema.get("maximum").and_then(Value::as_f64) {
            hi = hi.min(max.floor() as i128);
        }
        let (plo, phi): (i128, i128) = match field {
            "limit" => (1, 50),
            "wait_seconds" => (0, 1),
            "timeout_seconds" => (1, 5),
            "interval_seconds" => (60, 7200),
            "days" => (1, 30),
            "version" => (1, 3),
            "quantity" => (1, 5),
            "unit_price" => (0, 100_000),
            "retries" => (0, 2),
            "backoff_ms" => (10, 100),
            "window_seconds" => (60, 3600),
            "max" => (1, 1000),
            _ => (0, 100),
        };
        let (plo, phi) = (plo.max(lo), phi.min(hi));
        let value = if plo <= phi && self.rng.chance(90) {
            self.rng.range(plo, phi)
        } else {
            self.rng.range(lo, hi.min(lo.saturating_add(1000)))
        };
        json!(value as i64)
    }

    fn number(&mut self, field: &str) -> Value {
        if field.contains("percent") {
            return json!(self.rng.range(0, 10_000) as f64 / 100.0);
        }
        json!(self.rng.range(0, 100_000) as f64 / 100.0)
    }

    fn pick_from(&mut self, pool: &[String]) -> Option<String> {
        (!pool.is_empty()).then(|| self.rng.pick(pool).clone())
    }

    fn uuid(&mut self, field: &str) -> String {
        let pools = self.pools;
        if self.rng.chance(80)
            && let Some(known) = pools.uuids.pick(self.rng, &kind_of(field))
        {
            return known;
        }
        self.rng.uuid()
    }

    /// A name or id of a record of `kind` (either form), or `fallback`.
    fn reference(&mut self, kind: &str, fallback: String) -> String {
        let pools = self.pools;
        let pool = if self.rng.chance(50) {
            &pools.names
        } else {
            &pools.uuids
        };
        pool.pick(self.rng, kind)
            .or_else(|| pools.names.pick(self.rng, kind))
            .unwrap_or(fallback)
    }

    fn date(&mut self) -> String {
        format!(
            "{:04}-{:02}-{:02}",
            self.rng.range(2020, 2030),
            self.rng.range(1, 12),
            self.rng.range(1, 28)
        )
    }

    fn date_time(&mut self) -> String {
        format!(
            "{}T{:02}:{:02}:{:02}Z",
            self.date(),
            self.rng.range(0, 23),
            self.rng.range(0, 59),
            self.rng.range(0, 59)
        )
    }

    fn string(&mut self, schema: &Value, field: &str) -> String {
        match schema.get("format").and_then(Value::as_str) {
            Some("uuid") => return self.uuid(field),
            Some("date-time") => return self.date_time(),
            Some("date") => return self.date(),
            _ => {}
        }
        let pools = self.pools;
        let word = (*self.rng.pick(&WORDS)).to_owned();
        let n = self.rng.range(1, 99_999);
        match field {
            "email" => format!("{word}{n}@example.test"),
            "phone" => format!("+1 555 {:04}", n % 10_000),
            "currency" => (*self.rng.pick(&["EUR", "USD", "GBP"])).to_owned(),
            "cron" => (*self.rng.pick(&["*/5 * * * *", "0 9 * * 1-5", "30 2 1 * *"])).to_owned(),
            "timezone" => {
                (*self.rng.pick(&["UTC", "Europe/Berlin", "America/New_York"])).to_owned()
            }
            "platform" => (*self.rng.pick(&["openai", "anthropic", "mcp", "http"])).to_owned(),
            "after_status" => (*self.rng.pick(&["success", "error", "timeout", "any"])).to_owned(),
            "scope" => self
                .pick_from(&pools.scopes)
                .unwrap_or_else(|| "customers:read".into()),
            "tool" | "held_tools" => self
                .pick_from(&pools.tools)
                .unwrap_or_else(|| "whoami".into()),
            "cursor" => self
                .pick_from(&pools.cursors)
                .unwrap_or_else(|| format!("{word}{n}")),
            "template_id" | "template" | "agent" | "after_agent" | "connection" => {
                self.reference(&kind_of(field), format!("{word}-{n}"))
            }
            f if f.contains("url") => format!("http://127.0.0.1:9/{word}/{n}"),
            "name" | "title" if self.tool_names => self
                .pick_from(&pools.tools)
                .unwrap_or_else(|| "whoami".into()),
            "name" | "title" => format!("{word}-{n}"),
            "id" => format!("step_{word}_{n}").replace('-', "_"),
            "field" => {
                (*self
                    .rng
                    .pick(&["status", "input.email", "steps.a.output.total", "vars.x"]))
                .to_owned()
            }
            _ => {
                // Descriptions name the accepted values of free strings in backticks.
                let named = backticked(schema);
                if !named.is_empty() && self.rng.chance(60) {
                    self.rng.pick(&named).clone()
                } else if self.rng.chance(30) {
                    format!("{word} {} {n}", self.rng.pick(&WORDS))
                } else {
                    word
                }
            }
        }
    }

    fn array(&mut self, schema: &'a Value, field: &str, depth: usize) -> Value {
        let pools = self.pools;
        let (lo, hi) = match field {
            "lines" | "steps" | "events" | "scopes" => (1, 3),
            _ if depth > DEEP => (0, 0),
            _ => (0, 3),
        };
        let count = self.rng.range(lo, hi) as usize;
        let Some(items) = schema.get("items") else {
            return Value::Array((0..count).map(|_| self.free_value(depth + 1)).collect());
        };
        let mut values = Vec::with_capacity(count);
        for _ in 0..count {
            let value = match field {
                "events" => json!(self.rng.pick(&EVENTS)),
                "scopes" | "tool_scopes" if items.get("type") == Some(&json!("string")) => json!(
                    self.pick_from(&pools.scopes)
                        .unwrap_or_else(|| "customers:read".into())
                ),
                "names" if self.tool_names => json!(
                    self.pick_from(&pools.tools)
                        .unwrap_or_else(|| "whoami".into())
                ),
                "held_tools" => json!(
                    self.pick_from(&pools.tools)
                        .unwrap_or_else(|| "delete_customer".into())
                ),
                _ => self.valid(items, field, depth + 1),
            };
            values.push(value);
        }
        Value::Array(values)
    }

    fn object(&mut self, schema: &'a Value, field: &str, depth: usize) -> Value {
        let mut map = Map::new();
        let required: BTreeSet<&str> = schema
            .get("required")
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let properties = schema.get("properties").and_then(Value::as_object);
        if let Some(properties) = properties {
            for (name, property) in properties {
                let optional_rate = match name.as_str() {
                    // A made-up cursor is refused: send one only when a real one is known.
                    "cursor" if self.pools.cursors.is_empty() => 0,
                    "cursor" => 30,
                    _ => 40,
                };
                if required.contains(name.as_str())
                    || (depth <= DEEP && self.rng.chance(optional_rate))
                {
                    let value = self.valid(property, name, depth + 1);
                    map.insert(name.clone(), value);
                }
            }
        }
        let extra: Option<&'a Value> = match schema.get("additionalProperties") {
            Some(Value::Object(s)) if !s.is_empty() => schema.get("additionalProperties"),
            Some(Value::Bool(true)) | None if properties.is_none_or(|p| p.is_empty()) => {
                Some(&Value::Null)
            }
            _ => None,
        };
        if let Some(extra) = extra
            && depth <= DEEP + 2
        {
            let count = self.rng.range(0, if field == "arguments" { 1 } else { 3 });
            for _ in 0..count {
                let key = (*self.rng.pick(&MAP_KEYS)).to_owned();
                let value = if extra.is_null() {
                    self.free_value(depth + 1)
                } else {
                    self.valid(extra, &key, depth + 1)
                };
                map.insert(key, value);
            }
        }
        Value::Object(map)
    }
}

#[derive(Clone, Debug)]
enum Seg {
    Key(String),
    Index(usize),
}

fn node_paths(value: &Value, prefix: &mut Vec<Seg>, out: &mut Vec<Vec<Seg>>, depth: usize) {
    if depth > 8 || out.len() > 400 {
        return;
    }
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                prefix.push(Seg::Key(k.clone()));
                out.push(prefix.clone());
                node_paths(v, prefix, out, depth + 1);
                prefix.pop();
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate().take(20) {
                prefix.push(Seg::Index(i));
                out.push(prefix.clone());
                node_paths(v, prefix, out, depth + 1);
                prefix.pop();
            }
        }
        _ => {}
    }
}

fn node_mut<'v>(value: &'v mut Value, path: &[Seg]) -> Option<&'v mut Value> {
    let mut node = value;
    for seg in path {
        node = match (seg, node) {
            (Seg::Key(k), Value::Object(map)) => map.get_mut(k)?,
            (Seg::Index(i), Value::Array(items)) => items.get_mut(*i)?,
            _ => return None,
        };
    }
    Some(node)
}

fn deep_value(rng: &mut Rng, depth: usize) -> Value {
    let mut value = json!(rng.pick(&WORDS));
    for _ in 0..depth {
        value = if rng.chance(50) {
            json!([value])
        } else {
            json!({ "a": value })
        };
    }
    value
}

/// A value of another JSON type than `current`.
fn wrong_type(rng: &mut Rng, current: &Value) -> Value {
    loop {
        let candidate = match rng.below(7) {
            0 => Value::Null,
            1 => json!(rng.chance(50)),
            2 => rng.pick(&nasty_numbers()).clone(),
            3 => json!(rng.pick(&nasty_strings())),
            4 => json!([rng.pick(&WORDS), 1, null]),
            5 => json!({ "nested": { "x": [1, "two"] } }),
            _ => json!([]),
        };
        let same = std::mem::discriminant(&candidate) == std::mem::discriminant(current);
        if !same {
            return candidate;
        }
    }
}

fn node_ref<'v>(value: &'v Value, path: &[Seg]) -> Option<&'v Value> {
    let mut node = value;
    for seg in path {
        node = match (seg, node) {
            (Seg::Key(k), Value::Object(map)) => map.get(k)?,
            (Seg::Index(i), Value::Array(items)) => items.get(*i)?,
            _ => return None,
        };
    }
    Some(node)
}

/// Replaces the node at a random path among those `accept`ing it; `false` if none does.
fn replace_some(
    rng: &mut Rng,
    args: &mut Value,
    paths: &[Vec<Seg>],
    accept: impl Fn(&Value) -> bool,
    value: impl FnOnce(&mut Rng, &Value) -> Value,
) -> bool {
    let candidates: Vec<&Vec<Seg>> = paths
        .iter()
        .filter(|p| node_ref(args, p).is_some_and(&accept))
        .collect();
    if candidates.is_empty() {
        return false;
    }
    let path = (*rng.pick(&candidates)).clone();
    if let Some(node) = node_mut(args, &path) {
        *node = value(rng, node);
    }
    true
}

/// Breaks one thing in `args` (an object); says what.
fn mutate(rng: &mut Rng, args: &mut Value, schema: &Value) -> &'static str {
    let strings = |schema: &Value, key: &str| -> Vec<String> {
        match schema.get(key) {
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
            Some(Value::Object(map)) => map.keys().cloned().collect(),
            _ => Vec::new(),
        }
    };
    let required = strings(schema, "required");
    let properties = strings(schema, "properties");
    if !args.is_object() {
        return "none";
    }
    let mut paths = Vec::new();
    node_paths(args, &mut Vec::new(), &mut paths, 0);
    let any = |_: &Value| true;
    match rng.below(12) {
        0 if !required.is_empty() => {
            let key = rng.pick(&required).clone();
            args.as_object_mut().map(|m| m.remove(&key));
            "missing required"
        }
        1 => {
            let key = format!("unexpected_{}", rng.pick(&WORDS));
            args[key] = wrong_type(rng, &Value::Null);
            "unknown field"
        }
        2 | 3 if replace_some(rng, args, &paths, any, wrong_type) => "wrong type",
        4 | 5 => {
            let nasty = |rng: &mut Rng, _: &Value| json!(rng.pick(&nasty_strings()));
            if !replace_some(rng, args, &paths, Value::is_string, nasty) && !properties.is_empty() {
                let key = rng.pick(&properties).clone();
                args[key] = json!(rng.pick(&nasty_strings()));
            }
            "nasty string"
        }
        6 => {
            let number = |rng: &mut Rng, _: &Value| rng.pick(&nasty_numbers()).clone();
            if !replace_some(rng, args, &paths, Value::is_number, number) && !properties.is_empty()
            {
                let key = rng.pick(&properties).clone();
                args[key] = rng.pick(&nasty_numbers()).clone();
            }
            "boundary number"
        }
        7 if replace_some(rng, args, &paths, any, |_, _| Value::Null) => "null",
        8 => {
            // About 100 KB in one string, or a large array.
            let big = if rng.chance(70) {
                let unit = *rng.pick(&["x", "é", "😀", "' OR 1=1 -- "]);
                json!(unit.repeat(100_000 / unit.len()))
            } else {
                Value::Array((0..5_000).map(|i| json!(format!("item {i}"))).collect())
            };
            let key = if properties.is_empty() || rng.chance(20) {
                "padding".to_owned()
            } else {
                rng.pick(&properties).clone()
            };
            args[key] = big;
            "huge value"
        }
        9 => {
            let depth = rng.range(20, 100) as usize;
            let deep = |rng: &mut Rng, _: &Value| deep_value(rng, depth);
            if !replace_some(rng, args, &paths, any, deep) {
                args["deep"] = deep_value(rng, depth);
            }
            "deep nesting"
        }
        10 => {
            for key in &properties {
                if !required.contains(key) {
                    args[key.as_str()] = Value::Null;
                }
            }
            "optional nulls"
        }
        _ => {
            // Unknown ids wherever a uuid is.
            let is_uuid = |v: &Value| v.as_str().is_some_and(|s| uuid::Uuid::parse_str(s).is_ok());
            for path in paths
                .iter()
                .filter(|p| node_ref(args, p).is_some_and(is_uuid))
                .cloned()
                .collect::<Vec<_>>()
            {
                let fresh = rng.uuid();
                if let Some(node) = node_mut(args, &path) {
                    *node = json!(fresh);
                }
            }
            "unknown ids"
        }
    }
}

/// One argument set for `tool`: valid-looking from its schema, or mutated; what it is.
fn arguments(
    rng: &mut Rng,
    tool: &str,
    schema: &Value,
    pools: &Pools,
    case: usize,
) -> (Value, String) {
    let tool_names = tool.contains("tool")
        && schema["properties"]
            .as_object()
            .is_some_and(|p| p.contains_key("name") || p.contains_key("names"));
    let mut args = Gen {
        rng,
        root: schema,
        pools,
        tool_names,
        stack: Vec::new(),
    }
    .valid(schema, "", 0);
    let mut kinds = Vec::new();
    // The first case of each tool is valid-looking; then ~30% are.
    if case > 0 && rng.chance(70) {
        if rng.chance(6) {
            args = match rng.below(6) {
                0 => json!([args]),
                1 => json!("arguments"),
                2 => json!(42),
                3 => Value::Null,
                4 => json!(true),
                _ => json!({}),
            };
            kinds.push("not an object / empty");
        } else {
            for _ in 0..rng.range(1, 3) {
                kinds.push(mutate(rng, &mut args, schema));
            }
        }
    } else {
        kinds.push("valid-looking");
    }
    tame(rng, tool, &mut args);
    (args, kinds.join(" + "))
}

/// Keeps valid calls from slow side effects: short waits, no confirmation policy that
/// would refuse every destructive call for the rest of the run.
fn tame(rng: &mut Rng, tool: &str, args: &mut Value) {
    let Some(map) = args.as_object_mut() else {
        return;
    };
    if matches!(tool, "execute_workflow" | "run_agent") {
        let slow = match map.get("wait_seconds") {
            None => true,
            Some(v) => v.as_u64().is_some_and(|w| (2..=600).contains(&w)),
        };
        if slow {
            map.insert("wait_seconds".into(), json!(rng.below(2)));
        }
    }
    if tool == "set_approval_policy" && map.get("confirm_destructive") == Some(&json!(true)) {
        map.insert("confirm_destructive".into(), json!(false));
    }
}

// ---------------------------------------------------------------------------------------
// Judging answers.

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Outcome {
    Ok,
    InputRequired,
    Tool(String),
    Rpc(i64),
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Ok => write!(f, "ok"),
            Outcome::InputRequired => write!(f, "input_required"),
            Outcome::Tool(code) => write!(f, "{code}"),
            Outcome::Rpc(code) => write!(f, "rpc{code}"),
        }
    }
}

/// Checks a `tools/call` answer: a JSON-RPC response that is a success, a tool error in the
/// SPEC shape, or a JSON-RPC error. `Err` describes what is wrong with it.
fn judge_tool_answer(message: &Value) -> Result<Outcome, String> {
    if message["jsonrpc"] != "2.0" {
        return Err(format!(
            "not JSON-RPC 2.0: {}",
            truncate(&message.to_string(), 400)
        ));
    }
    if let Some(error) = message.get("error") {
        let code = error["code"]
            .as_i64()
            .ok_or_else(|| format!("JSON-RPC error without an integer code: {error}"))?;
        let text = error["message"].as_str().unwrap_or_default();
        if text.trim().is_empty() {
            return Err(format!("JSON-RPC error without a message: {error}"));
        }
        if code == -32603 {
            return Err(format!("JSON-RPC internal error: {error}"));
        }
        return Ok(Outcome::Rpc(code));
    }
    let Some(result) = message.get("result") else {
        return Err(format!(
            "neither result nor error: {}",
            truncate(&message.to_string(), 400)
        ));
    };
    if result["resultType"] == "input_required" {
        return Ok(Outcome::InputRequired);
    }
    if !result["content"].is_array() {
        return Err(format!(
            "a tool result without `content`: {}",
            truncate(&result.to_string(), 400)
        ));
    }
    if result["isError"] != true {
        if !result["structuredContent"].is_object() {
            return Err(format!(
                "a successful result without structured content: {}",
                truncate(&result.to_string(), 400)
            ));
        }
        return Ok(Outcome::Ok);
    }
    let body = &result["structuredContent"];
    let Some(fields) = body.as_object() else {
        return Err(format!(
            "isError without an error object as structured content: {}",
            truncate(&result.to_string(), 400)
        ));
    };
    let shape = |why: &str| {
        format!(
            "error not in the SPEC shape ({why}): {}",
            truncate(&body.to_string(), 400)
        )
    };
    if let Some(extra) = fields.keys().find(|k| !ERROR_KEYS.contains(&k.as_str())) {
        return Err(shape(&format!("unexpected key `{extra}`")));
    }
    let code = body["error"]
        .as_str()
        .ok_or_else(|| shape("no `error` string"))?;
    if !ERROR_CODES.contains(&code) {
        return Err(shape("unknown error code"));
    }
    if body["error_description"]
        .as_str()
        .is_none_or(|d| d.trim().is_empty())
    {
        return Err(shape("no `error_description`"));
    }
    if body["request_id"].as_str().is_none_or(|r| r.is_empty()) {
        return Err(shape("no `request_id`"));
    }
    if let Some(retry) = fields.get("retry_after")
        && !retry.is_u64()
    {
        return Err(shape("`retry_after` is not a number of seconds"));
    }
    if code == "rate_limited" && !fields.contains_key("retry_after") {
        return Err(shape("`rate_limited` without `retry_after`"));
    }
    if let Some(action) = fields.get("action_id")
        && action
            .as_str()
            .is_none_or(|a| uuid::Uuid::parse_str(a).is_err())
    {
        return Err(shape("`action_id` is not a uuid"));
    }
    Ok(Outcome::Tool(code.to_owned()))
}

/// Per-tool tallies of outcomes, printed at the end of a run.
#[derive(Default)]
struct Tally {
    by_tool: BTreeMap<String, BTreeMap<Outcome, usize>>,
    calls: usize,
}

impl Tally {
    fn add(&mut self, tool: &str, outcome: Outcome) {
        self.calls += 1;
        *self
            .by_tool
            .entry(tool.to_owned())
            .or_default()
            .entry(outcome)
            .or_default() += 1;
    }

    fn report(&self, test: &str, elapsed: Duration) {
        let mut totals: BTreeMap<&Outcome, usize> = BTreeMap::new();
        let mut never_ok = Vec::new();
        for (tool, outcomes) in &self.by_tool {
            for (outcome, n) in outcomes {
                *totals.entry(outcome).or_default() += n;
            }
            if !outcomes.contains_key(&Outcome::Ok) {
                never_ok.push(tool.as_str());
            }
        }
        let totals: Vec<String> = totals.iter().map(|(o, n)| format!("{o}={n}")).collect();
        eprintln!(
            "{test}: {} calls over {} tools in {:.1} s: {}",
            self.calls,
            self.by_tool.len(),
            elapsed.as_secs_f64(),
            totals.join(" ")
        );
        for (tool, outcomes) in &self.by_tool {
            let line: Vec<String> = outcomes.iter().map(|(o, n)| format!("{o}={n}")).collect();
            eprintln!("  {tool}: {}", line.join(" "));
        }
        eprintln!(
            "{test}: {} tool(s) never succeeded in this run: {}",
            never_ok.len(),
            never_ok.join(", ")
        );
    }
}

/// Scans a server's stderr for panics.
fn panics(log: &[String]) -> Vec<String> {
    log.iter()
        .filter(|l| l.contains("panicked at") || l.contains("RUST_BACKTRACE"))
        .map(|l| truncate(l, 600))
        .collect()
}

// ---------------------------------------------------------------------------------------
// Raw MCP over HTTP.

fn stateless_meta() -> Value {
    json!({
        "io.modelcontextprotocol/protocolVersion": STATELESS_VERSION,
        "io.modelcontextprotocol/clientInfo": { "name": "fuzz", "version": "1" },
        "io.modelcontextprotocol/clientCapabilities": {}
    })
}

/// An HTTP answer: status, content type, raw text and the JSON-RPC messages in it (one
/// JSON body, or the `data:` events of an SSE stream).
struct HttpAnswer {
    status: u16,
    content_type: String,
    text: String,
    messages: Vec<Value>,
}

impl HttpAnswer {
    async fn read(response: reqwest::Response) -> HttpAnswer {
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let text = response.text().await.unwrap_or_default();
        let messages = if content_type.starts_with("text/event-stream") {
            text.lines()
                .filter_map(|line| line.strip_prefix("data:"))
                .filter_map(|data| serde_json::from_str::<Value>(data.trim()).ok())
                .collect()
        } else {
            serde_json::from_str::<Value>(&text)
                .map(|v| vec![v])
                .unwrap_or_default()
        };
        HttpAnswer {
            status,
            content_type,
            text,
            messages,
        }
    }

    fn reply_to(&self, id: &Value) -> Option<&Value> {
        self.messages.iter().find(|m| &m["id"] == id)
    }

    fn describe(&self) -> String {
        format!(
            "HTTP {} ({}): {}",
            self.status,
            if self.content_type.is_empty() {
                "no content type"
            } else {
                &self.content_type
            },
            truncate(&self.text, 400)
        )
    }
}

struct McpHttp {
    http: reqwest::Client,
    url: String,
    key: String,
    /// An `initialize`d session (2025-11-25) beside the stateless requests.
    session: Option<String>,
}

impl McpHttp {
    async fn new(url: &str, key: &str) -> McpHttp {
        install_tls_provider();
        let http = reqwest::Client::builder()
            .timeout(CALL_TIMEOUT)
            .build()
            .expect("reqwest client");
        let mut client = McpHttp {
            http,
            url: url.to_owned(),
            key: key.to_owned(),
            session: None,
        };
        client.session = Some(client.open_session().await);
        client
    }

    fn post(&self) -> reqwest::RequestBuilder {
        self.http
            .post(&self.url)
            .header("Content-Type", "application/json")
            .header("Accept", "application/json, text/event-stream")
            .header("X-Api-Key", &self.key)
    }

    async fn open_session(&self) -> String {
        let response = self
            .post()
            .json(&initialize_request(0))
            .send()
            .await
            .expect("POST initialize");
        assert_eq!(response.status().as_u16(), 200, "initialize");
        let session = response
            .headers()
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok())
            .expect("a session id")
            .to_owned();
        let _ = HttpAnswer::read(response).await;
        let initialized = self
            .post()
            .header("Mcp-Session-Id", &session)
            .header("MCP-Protocol-Version", SESSION_VERSION)
            .json(&json!({ "jsonrpc": "2.0", "method": "notifications/initialized" }))
            .send()
            .await
            .expect("POST notifications/initialized");
        assert!(
            initialized.status().is_success(),
            "notifications/initialized"
        );
        session
    }

    /// A request as either generation; `Err` on a transport failure (no answer).
    async fn request(
        &self,
        id: u64,
        method: &str,
        mut params: Value,
        stateless: bool,
    ) -> Result<HttpAnswer, String> {
        let mut request = self.post();
        if stateless {
            if let Some(object) = params.as_object_mut() {
                object.insert("_meta".into(), stateless_meta());
            }
            request = request
                .header("MCP-Protocol-Version", STATELESS_VERSION)
                .header("Mcp-Method", method);
            if let Some(name) = params.get("name").and_then(Value::as_str)
                && let Ok(value) = reqwest::header::HeaderValue::from_str(name)
            {
                request = request.header("Mcp-Name", value);
            }
        } else {
            request = request
                .header(
                    "Mcp-Session-Id",
                    self.session.as_deref().unwrap_or_default(),
                )
                .header("MCP-Protocol-Version", SESSION_VERSION);
        }
        let body = json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params });
        let started = Instant::now();
        match request.json(&body).send().await {
            Ok(response) => Ok(HttpAnswer::read(response).await),
            Err(error) => Err(format!(
                "no answer after {:.1} s: {error}",
                started.elapsed().as_secs_f64()
            )),
        }
    }

    async fn call_tool(
        &self,
        id: u64,
        tool: &str,
        args: &Value,
        stateless: bool,
    ) -> Result<Value, String> {
        let answer = self
            .request(
                id,
                "tools/call",
                json!({ "name": tool, "arguments": args }),
                stateless,
            )
            .await?;
        if answer.status != 200 {
            return Err(format!("tools/call answered {}", answer.describe()));
        }
        answer
            .reply_to(&json!(id))
            .cloned()
            .ok_or_else(|| format!("no JSON-RPC reply with id {id}: {}", answer.describe()))
    }

    async fn whoami(&self, id: u64, stateless: bool) -> Value {
        let message = self
            .call_tool(id, "whoami", &json!({}), stateless)
            .await
            .unwrap_or_else(|e| panic!("whoami: {e}"));
        let me = message["result"]["structuredContent"].clone();
        assert_eq!(me["tenant"]["slug"], "acme", "whoami answers: {message}");
        me
    }
}

fn raise_rate_limits(db: &TestDb) {
    for class in ["calls", "search", "bulk"] {
        db.admin(&[
            "set-rate-limit",
            "--tenant",
            "acme",
            "--class",
            class,
            "--max",
            "1000000",
        ]);
    }
}

/// The first uuid under an `id` key in `value` (a created record's id).
fn record_id(value: &Value) -> Option<String> {
    match value {
        Value::Object(map) => map
            .get("id")
            .and_then(Value::as_str)
            .filter(|s| uuid::Uuid::parse_str(s).is_ok())
            .map(str::to_owned)
            .or_else(|| map.values().find_map(record_id)),
        _ => None,
    }
}

/// Valid calls that give the pools real records, to reach past `not_found`. `$x` stands
/// for the id of the record `x` created (or listed) before.
fn seed_calls() -> Vec<(&'static str, &'static str, Value)> {
    vec![
        (
            "create_customer",
            "$customer",
            json!({ "first_name": "Fuzz", "last_name": "Target", "email": "fuzz@example.test" }),
        ),
        (
            "create_product",
            "$product",
            json!({ "name": "Widget", "unit_price": 1250, "currency": "EUR" }),
        ),
        (
            "log_interaction",
            "",
            json!({ "customer_id": "$customer", "type": "note", "notes": "seed" }),
        ),
        (
            "add_annotation",
            "",
            json!({ "customer_id": "$customer", "text": "seed", "tags": ["seed"] }),
        ),
        (
            "create_invoice",
            "",
            json!({ "customer_id": "$customer", "currency": "EUR",
                    "lines": [{ "product_id": "$product", "quantity": 2 }] }),
        ),
        (
            "create_quote",
            "",
            json!({ "customer_id": "$customer", "currency": "EUR",
                    "lines": [{ "description": "work", "unit_price": 500 }] }),
        ),
        (
            "create_workflow",
            "$workflow",
            json!({ "name": "fuzz flow", "status": "active",
                    "steps": [{ "id": "a", "tool": "whoami", "arguments": {} }] }),
        ),
        (
            "execute_workflow",
            "",
            json!({ "workflow_id": "$workflow", "wait_seconds": 1 }),
        ),
        (
            "request_handoff",
            "",
            json!({ "reason": "fuzzing needs a person", "customer_id": "$customer" }),
        ),
        (
            "register_agent",
            "",
            json!({ "name": "fuzz-bot", "scopes": ["customers:read"] }),
        ),
        (
            "create_api_key",
            "",
            json!({ "name": "fuzz-spare", "scopes": ["customers:read"] }),
        ),
        (
            "create_webhook",
            "",
            json!({ "url": "http://127.0.0.1:9/hook", "events": ["*"] }),
        ),
        (
            "create_connection",
            "$connection",
            json!({ "platform": "openai", "name": "fuzz-llm",
                    "config": { "base_url": "http://127.0.0.1:9/v1" },
                    "credentials": { "api_key": "sk-fuzz" } }),
        ),
        ("list_agent_templates", "$agent_template", json!({})),
        (
            "create_agent",
            "$agent",
            json!({ "name": "fuzz-runner", "template": "$agent_template",
                    "config": { "connection": "fuzz-llm" } }),
        ),
        (
            "schedule_agent",
            "",
            json!({ "agent": "$agent", "cron": "0 9 * * 1-5" }),
        ),
        ("list_workflow_templates", "$workflow_template", json!({})),
        (
            "use_workflow_template",
            "",
            json!({ "template_id": "$workflow_template" }),
        ),
        (
            "bulk_update_customers",
            "",
            json!({ "customer_ids": ["$customer"], "set": { "add_tags": ["bulk"] } }),
        ),
        ("list_customers", "", json!({ "limit": 1 })),
    ]
}

/// The id of a created record, or of the first listed one.
fn created_id(content: &Value) -> Option<String> {
    let uuid_at = |key: &str| {
        content[key]
            .as_str()
            .filter(|s| uuid::Uuid::parse_str(s).is_ok())
            .map(str::to_owned)
    };
    if let Some(id) = uuid_at("id").or_else(|| {
        let map = content.as_object()?;
        map.keys()
            .filter(|k| k.ends_with("_id"))
            .find_map(|k| uuid_at(k))
    }) {
        return Some(id);
    }
    if let Some(id) = record_id(content) {
        return Some(id);
    }
    content.as_object()?.values().find_map(|v| {
        v.as_array()?
            .first()?
            .get("id")?
            .as_str()
            .map(str::to_owned)
    })
}

fn substitute(value: &Value, names: &BTreeMap<&str, String>) -> Value {
    match value {
        Value::String(s) => names
            .get(s.as_str())
            .map_or_else(|| value.clone(), |v| json!(v)),
        Value::Array(items) => Value::Array(items.iter().map(|v| substitute(v, names)).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), substitute(v, names)))
                .collect(),
        ),
        other => other.clone(),
    }
}

// ---------------------------------------------------------------------------------------
// 1. Random tool arguments at every tool.

/// Runs the argument fuzz through `call` (one transport), returning the findings.
async fn fuzz_tools<F, Fut>(
    test: &str,
    transport: &str,
    seed: u64,
    rounds: usize,
    first_id: u64,
    mut call: F,
) -> (Findings, Tally, Vec<Answered>)
where
    F: FnMut(u64, String, Value, bool) -> Fut,
    Fut: std::future::Future<Output = Result<Value, String>>,
{
    let catalog = agentcrm::catalog::builtin();
    let mut state = FuzzState {
        findings: Findings::new(seed),
        tally: Tally::default(),
        pools: Pools::default(),
        answered: Vec::new(),
        verbose: verbose(),
    };
    let mut id = first_id;
    let mut next_id = || {
        id += 1;
        id
    };

    // Who we are: our own key and user are never arguments; our scopes seed the pools.
    let me = call(next_id(), "whoami".into(), json!({}), true)
        .await
        .unwrap_or_else(|e| panic!("whoami: {e}"));
    let me = &me["result"]["structuredContent"];
    for key in ["id", "on_behalf_of"] {
        if let Some(id) = me["principal"][key].as_str() {
            state.pools.forbidden.insert(id.to_owned());
        }
    }
    state.pools.scopes = me["scopes"]
        .as_array()
        .map(|s| {
            s.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    state.pools.tools = all_tool_names();
    let mut created: BTreeMap<&str, String> = BTreeMap::new();
    for (tool, placeholder, args) in seed_calls() {
        let args = substitute(&args, &created);
        let message = call(next_id(), tool.into(), args, true).await;
        match &message {
            Ok(message) if judge_tool_answer(message) == Ok(Outcome::Ok) => {
                let content = &message["result"]["structuredContent"];
                state.pools.harvest(tool, content);
                if verbose() {
                    eprintln!(
                        "{test}: seed call {tool}: {}",
                        truncate(&content.to_string(), 400)
                    );
                }
                if let Some(id) = created_id(content).filter(|_| !placeholder.is_empty()) {
                    created.insert(placeholder, id);
                }
            }
            _ => eprintln!(
                "{test}: seed call {tool} did not succeed: {}",
                truncate(&format!("{message:?}"), 600)
            ),
        }
    }

    let tools = fuzzed_tools();
    for round in 0..rounds {
        let mut order = tools.clone();
        rng_for(seed, "order", round as u64).shuffle(&mut order);
        for tool in order {
            let registered = catalog.get(&tool).expect("a catalog tool");
            let schema = Value::Object(registered.input_schema().clone());
            let mut rng = rng_for(seed, &tool, round as u64);
            let (args, kind) = arguments(&mut rng, &tool, &schema, &state.pools, round);
            let stateless = rng.chance(60);
            let shown = truncate(&args.to_string(), 500);
            let context = format!(
                "{tool} (round {round}, {kind}, {}) with {shown}",
                match (transport, stateless) {
                    ("http", true) => "http stateless",
                    ("http", false) => "http session",
                    _ => transport,
                }
            );
            let result = call(next_id(), tool.clone(), args.clone(), stateless).await;
            record(&mut state, &tool, &args, &context, result);
        }
    }

    // Calls at once: the server (and its audit writer, which batches concurrent records)
    // under concurrent bad input.
    let bursts = rounds.div_ceil(4).max(1);
    for burst in 0..bursts {
        let mut rng = rng_for(seed, "burst", burst as u64);
        let mut planned = Vec::new();
        for n in 0..24 {
            let tool = rng.pick(&tools).clone();
            let schema = Value::Object(catalog.get(&tool).expect("a tool").input_schema().clone());
            let (mut args, mut kind) = arguments(&mut rng, &tool, &schema, &state.pools, 1);
            // Among them, always a NUL character (whose audit record cannot be written).
            if n == 0
                && let Some(map) = args.as_object_mut()
            {
                map.insert("note".into(), json!("\u{0}"));
                kind.push_str(" + NUL");
            }
            let context = format!(
                "{tool} (burst {burst}, {kind}, {transport} concurrent) with {}",
                truncate(&args.to_string(), 500)
            );
            planned.push((tool, args, context));
        }
        let calls: Vec<_> = planned
            .iter()
            .map(|(tool, args, _)| call(next_id(), tool.clone(), args.clone(), true))
            .collect();
        let results = futures::future::join_all(calls).await;
        let first = state.answered.len();
        for ((tool, args, context), result) in planned.iter().zip(results) {
            record(&mut state, tool, args, context, result);
        }
        // A record lost because another call of the same batch could not be written.
        if planned.iter().any(|(_, args, _)| has_nul(args)) {
            for answer in &mut state.answered[first..] {
                if !answer.class.starts_with("nul-character") {
                    answer.class = "nul-character:audit-of-others".into();
                }
            }
        }
    }
    let FuzzState {
        findings,
        tally,
        answered,
        ..
    } = state;
    (findings, tally, answered)
}

/// What a fuzz run has learned and found so far.
struct FuzzState {
    findings: Findings,
    tally: Tally,
    pools: Pools,
    /// Request ids of answered calls, each with what was called: the audit trail must hold
    /// every one.
    answered: Vec<Answered>,
    verbose: bool,
}

/// Judges one call's answer and learns from it.
fn record(
    state: &mut FuzzState,
    tool: &str,
    args: &Value,
    context: &str,
    result: Result<Value, String>,
) {
    let message = match result {
        Err(transport) => {
            let class = tool_defect(tool, "transport", args);
            state
                .findings
                .defect(&class, format!("{context}: {transport}"));
            return;
        }
        Ok(message) => message,
    };
    let outcome = match judge_tool_answer(&message) {
        Err(why) => {
            let class = tool_defect(tool, "shape", args);
            state.findings.defect(&class, format!("{context}: {why}"));
            return;
        }
        Ok(outcome) => outcome,
    };
    if state.verbose {
        let detail = message["result"]["structuredContent"]["error_description"]
            .as_str()
            .or(message["error"]["message"].as_str())
            .unwrap_or_default();
        eprintln!("{context} -> {outcome}: {}", truncate(detail, 300));
    }
    if outcome == Outcome::Tool("internal".into()) {
        state.findings.defect(
            &tool_defect(tool, "internal", args),
            format!(
                "{context}: `internal` error: {}",
                message["result"]["structuredContent"]
            ),
        );
    }
    if outcome == Outcome::Ok {
        state
            .pools
            .harvest(tool, &message["result"]["structuredContent"]);
    }
    if let Some(request_id) = message["result"]["_meta"]["agentcrm/request_id"].as_str() {
        state.answered.push(Answered {
            request_id: request_id.to_owned(),
            context: context.to_owned(),
            class: tool_defect(tool, "audit", args),
        });
    }
    state.tally.add(tool, outcome);
}

fn has_nul(args: &Value) -> bool {
    args.to_string().contains("\\u0000")
}

/// An answered tool call: its request id, what it was, and the id a missing audit record
/// is filed under.
struct Answered {
    request_id: String,
    context: String,
    class: String,
}

/// The id a tool defect is filed under: by its cause where one is known (a NUL character
/// in the arguments), else by tool and kind of failure.
fn tool_defect(tool: &str, what: &str, args: &Value) -> String {
    if has_nul(args) {
        return format!("nul-character:{what}");
    }
    if has_huge_number(args) {
        return format!("huge-number:{what}");
    }
    format!("tool:{tool}:{what}")
}

/// Does `value` hold a number near the limit of f64 (which PostgreSQL's jsonb keeps, as
/// 300-digit numerics, and serde_json cannot read back)?
fn has_huge_number(value: &Value) -> bool {
    match value {
        Value::Number(n) => n.as_f64().is_some_and(|f| f.abs() >= 1e300),
        Value::Array(items) => items.iter().any(has_huge_number),
        Value::Object(map) => map.values().any(has_huge_number),
        _ => false,
    }
}

/// Every answered call must have its audit record (SPEC: every tool call is recorded, and a
/// call answers only after its record is committed).
async fn check_audit(db: &TestDb, answered: &[Answered], findings: &mut Findings) {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(&db.url)
        .await
        .expect("connect to the test database");
    let ids: Vec<String> = answered.iter().map(|a| a.request_id.clone()).collect();
    let recorded: BTreeSet<String> = sqlx::query_scalar::<_, String>(
        "SELECT request_id FROM audit_events WHERE request_id = ANY($1)",
    )
    .bind(&ids)
    .fetch_all(&mut conn)
    .await
    .expect("read audit_events")
    .into_iter()
    .collect();
    for answer in answered {
        if !recorded.contains(&answer.request_id) {
            findings.defect(
                &answer.class,
                format!(
                    "{}: answered (request id {}) but not in the audit trail",
                    answer.context, answer.request_id
                ),
            );
        }
    }
    let _ = conn.close().await;
}

#[tokio::test]
async fn fuzz_random_tool_arguments_over_http() {
    let test = "fuzz_random_tool_arguments_over_http";
    let seed = seed(test);
    let started = Instant::now();
    let db = TestDb::new().await;
    raise_rate_limits(&db);
    let mut command = db.command(&["http", "--toolsets", "all"]);
    command.env("AGENTCRM_OUTBOUND_TIMEOUT_SECS", "3");
    let mut server = HttpServer::start(command);
    let client = McpHttp::new(&server.mcp_url(), &db.admin_key).await;

    // Every catalog tool should be reachable, or it is not fuzzed.
    let listed = client
        .request(1, "tools/list", json!({}), true)
        .await
        .expect("tools/list");
    let listed: BTreeSet<String> = listed
        .reply_to(&json!(1))
        .and_then(|m| m["result"]["tools"].as_array())
        .map(|tools| {
            tools
                .iter()
                .filter_map(|t| t["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let unlisted: Vec<String> = fuzzed_tools()
        .into_iter()
        .filter(|t| !listed.contains(t))
        .collect();
    if !unlisted.is_empty() {
        eprintln!("{test}: catalog tools the server does not list: {unlisted:?}");
    }

    let rounds = cases_per_tool();
    let client_ref = &client;
    let (mut findings, tally, answered) = fuzz_tools(
        test,
        "http",
        seed,
        rounds,
        100,
        move |id, tool, args, stateless| async move {
            client_ref.call_tool(id, &tool, &args, stateless).await
        },
    )
    .await;
    tally.report(test, started.elapsed());

    // Still alive, still serving both generations.
    assert!(
        matches!(server.child.try_wait(), Ok(None)),
        "the server exited during the fuzz (seed {seed}): {:?}",
        server.child.try_wait()
    );
    client.whoami(1_000_000, true).await;
    client.whoami(1_000_001, false).await;
    let log = server.log.lock().unwrap().clone();
    findings.explain(&log);
    for line in panics(&log) {
        findings.defect("tool:panic", format!("server log: {line}"));
    }
    if verbose() {
        for line in log.iter().filter(|l| l.contains(" ERROR ")) {
            eprintln!("server: {}", truncate(line, 600));
        }
    }
    let status = server.stop();
    assert!(
        status.success(),
        "SIGTERM exits cleanly after the fuzz: {status:?}"
    );
    check_audit(&db, &answered, &mut findings).await;
    findings.finish(test, None);
}

// ---------------------------------------------------------------------------------------
// Raw MCP over stdio.

/// `agentcrm stdio` spoken to line by line; every stdout line is checked to be JSON-RPC.
struct RawStdio {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl RawStdio {
    fn start(db: &TestDb) -> RawStdio {
        let mut command = db.command(&["stdio", "--toolsets", "all"]);
        command
            .env("AGENTCRM_OUTBOUND_TIMEOUT_SECS", "3")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("start agentcrm stdio");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("stdout");
        let stderr_pipe = child.stderr.take().expect("stderr");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            // Bytes, not `lines()`: a non-UTF-8 line must be seen, not end the reader.
            let mut reader = BufReader::new(stdout);
            let mut line = Vec::new();
            while reader.read_until(b'\n', &mut line).unwrap_or(0) > 0 {
                let text = String::from_utf8_lossy(&line)
                    .trim_end_matches(['\n', '\r'])
                    .to_owned();
                if tx.send(text).is_err() {
                    break;
                }
                line.clear();
            }
        });
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let sink = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr_pipe).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        RawStdio {
            child,
            stdin,
            lines,
            stderr,
        }
    }

    fn send_bytes(&mut self, bytes: &[u8]) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin.write_all(bytes).expect("write to the server");
        stdin.write_all(b"\n").expect("write to the server");
        stdin.flush().expect("flush");
    }

    fn send(&mut self, message: &Value) {
        self.send_bytes(message.to_string().as_bytes());
    }

    /// The next stdout line as a JSON-RPC message; `Err` if it is not one or none came.
    fn next_message(&self, timeout: Duration) -> Result<Option<Value>, String> {
        let line = match self.lines.recv_timeout(timeout) {
            Ok(line) => line,
            Err(mpsc::RecvTimeoutError::Timeout) => return Ok(None),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err("stdout closed: the server exited".into());
            }
        };
        let value: Value = serde_json::from_str(&line)
            .map_err(|_| format!("stdout carried a non-JSON line: {}", truncate(&line, 300)))?;
        let valid = value["jsonrpc"] == "2.0"
            && (value.get("method").is_some_and(Value::is_string)
                || value.get("result").is_some()
                || value["error"]["code"].is_i64());
        if !valid {
            return Err(format!(
                "stdout carried a non-JSON-RPC message: {}",
                truncate(&line, 300)
            ));
        }
        Ok(Some(value))
    }

    /// Reads until the reply to `id`, returning it and the messages seen before it.
    fn reply(&self, id: &Value) -> Result<(Value, Vec<Value>), String> {
        let deadline = Instant::now() + CALL_TIMEOUT;
        let mut before = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_message(left)? {
                None => {
                    return Err(format!(
                        "no reply to id {id} within {} s",
                        CALL_TIMEOUT.as_secs()
                    ));
                }
                Some(message) if message.get("method").is_none() && &message["id"] == id => {
                    return Ok((message, before));
                }
                Some(message) => before.push(message),
            }
        }
    }

    fn initialize(&mut self) {
        self.send(&initialize_request(0));
        let (init, _) = self.reply(&json!(0)).expect("initialize");
        assert_eq!(init["result"]["protocolVersion"], SESSION_VERSION, "{init}");
        self.send(&json!({ "jsonrpc": "2.0", "method": "notifications/initialized" }));
    }

    fn call_tool(&mut self, id: u64, tool: &str, args: &Value) -> Result<Value, String> {
        self.send(&json!({
            "jsonrpc": "2.0", "id": id, "method": "tools/call",
            "params": { "name": tool, "arguments": args }
        }));
        let (reply, others) = self.reply(&json!(id))?;
        if let Some(other) = others.iter().find(|m| m.get("method").is_none()) {
            return Err(format!("an unrequested reply before id {id}: {other}"));
        }
        Ok(reply)
    }

    fn stderr_lines(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }

    /// Closes stdin: the server must exit cleanly.
    fn close(&mut self) -> Option<std::process::ExitStatus> {
        drop(self.stdin.take());
        wait_timeout(&mut self.child, Duration::from_secs(20))
    }
}

impl Drop for RawStdio {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[tokio::test]
async fn fuzz_random_tool_arguments_over_stdio() {
    let test = "fuzz_random_tool_arguments_over_stdio";
    let seed = seed(test);
    let started = Instant::now();
    let db = TestDb::new().await;
    raise_rate_limits(&db);
    let raw = Arc::new(Mutex::new(RawStdio::start(&db)));
    raw.lock().unwrap().initialize();

    let rounds = cases_per_tool().div_ceil(3).max(1);
    let shared = raw.clone();
    let (mut findings, tally, answered) = fuzz_tools(
        test,
        "stdio",
        seed,
        rounds,
        100,
        move |id, tool, args, _| {
            let result = shared.lock().unwrap().call_tool(id, &tool, &args);
            async move { result }
        },
    )
    .await;
    tally.report(test, started.elapsed());

    let status = {
        let mut raw = raw.lock().unwrap();
        let me = raw
            .call_tool(1_000_000, "whoami", &json!({}))
            .unwrap_or_else(|e| panic!("whoami after the fuzz (seed {seed}): {e}"));
        assert_eq!(
            me["result"]["structuredContent"]["tenant"]["slug"], "acme",
            "{me}"
        );
        let log = raw.stderr_lines();
        findings.explain(&log);
        for line in panics(&log) {
            findings.defect("tool:panic", format!("server stderr: {line}"));
        }
        raw.close()
    };
    assert!(
        status.is_some_and(|s| s.success()),
        "stdio exits cleanly when stdin closes: {status:?}"
    );
    check_audit(&db, &answered, &mut findings).await;
    findings.finish(test, None);
}

// ---------------------------------------------------------------------------------------
// 2. Malformed JSON-RPC over HTTP.

/// What a malformed request must get, beyond "no 5xx, a JSON-RPC error or a 4xx that says
/// what is wrong".
#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    /// 400 with JSON-RPC -32700.
    ParseError,
    /// 413.
    TooLarge,
    /// A JSON-RPC error (any code but -32603).
    RpcError,
    /// A JSON-RPC error -32601.
    MethodNotFound,
    /// A JSON-RPC error -32602 (the method exists; its params are wrong).
    InvalidParams,
    /// A JSON-RPC error, or a reply to the request's id: the server may be lenient.
    Answered,
    /// 2xx with nothing to answer (a notification or a response), or a JSON-RPC error.
    Accepted,
    /// A refusal of the HTTP transport itself (method, headers, session): any 4xx that
    /// says why, plain text allowed.
    Refusal,
    /// Anything but a server error (a lenient server may serve it).
    NoServerError,
    /// Whatever a well-formed exchange allows (a refusal is still a JSON-RPC error).
    Any,
}

struct RawCase {
    name: String,
    body: Vec<u8>,
    expect: Expect,
}

fn raw_case(name: &str, body: impl Into<Vec<u8>>, expect: Expect) -> RawCase {
    RawCase {
        name: name.to_owned(),
        body: body.into(),
        expect,
    }
}

fn rpc(id: Value, method: &str, params: Value) -> Vec<u8> {
    json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params })
        .to_string()
        .into_bytes()
}

/// Malformed bodies for POST /mcp (each sent stateless and on a session).
fn malformed_bodies(rng: &mut Rng, max_body: usize) -> Vec<RawCase> {
    use Expect::*;
    let call = |params: Value| rpc(json!(1), "tools/call", params);
    let mut deep_params = json!({ "name": "whoami", "arguments": {} });
    for _ in 0..200 {
        deep_params = json!({ "a": deep_params });
    }
    let mut cases = vec![
        raw_case(
            "truncated",
            &b"{\"jsonrpc\": \"2.0\", \"id\": 1, \"method\": "[..],
            ParseError,
        ),
        raw_case(
            "truncated-in-string",
            &b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/li"[..],
            ParseError,
        ),
        raw_case("empty", Vec::new(), ParseError),
        raw_case("whitespace", &b"  \n\t "[..], ParseError),
        raw_case("non-utf8", &b"\xff\xfe\xfd\x00"[..], ParseError),
        raw_case("nul-bytes", &b"\x00\x00\x00"[..], ParseError),
        raw_case(
            "trailing-garbage",
            [
                rpc(json!(1), "tools/list", json!({})),
                b" }{ garbage".to_vec(),
            ]
            .concat(),
            ParseError,
        ),
        raw_case(
            "single-quotes",
            &b"{'jsonrpc':'2.0','id':1,'method':'tools/list'}"[..],
            ParseError,
        ),
        raw_case(
            "non-utf8-in-string",
            &b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"\xff\xfe\"}"[..],
            RpcError,
        ),
        raw_case(
            "lone-surrogate",
            &br#"{"jsonrpc":"2.0","id":"\ud800","method":"tools/list"}"#[..],
            RpcError,
        ),
        raw_case(
            "utf8-bom",
            [
                b"\xef\xbb\xbf".to_vec(),
                rpc(json!(1), "tools/list", json!({})),
            ]
            .concat(),
            Answered,
        ),
        raw_case("json-null", &b"null"[..], RpcError),
        raw_case("json-number", &b"42"[..], RpcError),
        raw_case("json-string", &b"\"tools/list\""[..], RpcError),
        raw_case("json-true", &b"true"[..], RpcError),
        raw_case("empty-object", &b"{}"[..], RpcError),
        raw_case("empty-batch", &b"[]"[..], RpcError),
        raw_case(
            "batch",
            format!(
                "[{},{}]",
                String::from_utf8(rpc(json!(1), "tools/list", json!({}))).unwrap(),
                String::from_utf8(call(json!({ "name": "whoami", "arguments": {} }))).unwrap()
            ),
            RpcError,
        ),
        raw_case(
            "missing-jsonrpc",
            json!({ "id": 1, "method": "tools/list" }).to_string(),
            RpcError,
        ),
        raw_case(
            "jsonrpc-1.0",
            json!({ "jsonrpc": "1.0", "id": 1, "method": "tools/list" }).to_string(),
            RpcError,
        ),
        raw_case(
            "jsonrpc-number",
            json!({ "jsonrpc": 2.0, "id": 1, "method": "tools/list" }).to_string(),
            RpcError,
        ),
        raw_case(
            "missing-method",
            json!({ "jsonrpc": "2.0", "id": 1 }).to_string(),
            RpcError,
        ),
        raw_case(
            "method-number",
            json!({ "jsonrpc": "2.0", "id": 1, "method": 42 }).to_string(),
            RpcError,
        ),
        raw_case(
            "method-null",
            json!({ "jsonrpc": "2.0", "id": 1, "method": null }).to_string(),
            RpcError,
        ),
        raw_case(
            "unknown-method",
            rpc(json!(1), "customers/drop_all", json!({})),
            MethodNotFound,
        ),
        raw_case("empty-method", rpc(json!(1), "", json!({})), MethodNotFound),
        raw_case(
            "nul-in-method",
            rpc(json!(1), "tools/\u{0}list", json!({})),
            RpcError,
        ),
        raw_case(
            "tools-call-params-array",
            rpc(json!(1), "tools/call", json!(["whoami", {}])),
            RpcError,
        ),
        raw_case(
            "tools-call-params-string",
            rpc(json!(1), "tools/call", json!("whoami")),
            RpcError,
        ),
        raw_case(
            "tools-call-params-number",
            rpc(json!(1), "tools/call", json!(7)),
            RpcError,
        ),
        raw_case(
            "tools-call-params-null",
            rpc(json!(1), "tools/call", Value::Null),
            InvalidParams,
        ),
        raw_case(
            "tools-call-no-params",
            json!({ "jsonrpc": "2.0", "id": 1, "method": "tools/call" }).to_string(),
            InvalidParams,
        ),
        raw_case(
            "tools-call-no-name",
            call(json!({ "arguments": {} })),
            InvalidParams,
        ),
        raw_case(
            "tools-call-name-number",
            call(json!({ "name": 42, "arguments": {} })),
            InvalidParams,
        ),
        raw_case(
            "tools-call-name-null",
            call(json!({ "name": null })),
            InvalidParams,
        ),
        raw_case(
            "tools-call-name-object",
            call(json!({ "name": { "a": 1 } })),
            InvalidParams,
        ),
        raw_case(
            "tools-call-unknown-tool",
            call(json!({ "name": "drop_all_tables", "arguments": {} })),
            InvalidParams,
        ),
        raw_case(
            "tools-call-empty-name",
            call(json!({ "name": "", "arguments": {} })),
            RpcError,
        ),
        raw_case(
            "tools-call-huge-name",
            call(json!({ "name": "w".repeat(20_000), "arguments": {} })),
            RpcError,
        ),
        raw_case(
            "tools-call-arguments-array",
            call(json!({ "name": "whoami", "arguments": [1, 2] })),
            InvalidParams,
        ),
        raw_case(
            "tools-call-arguments-string",
            call(json!({ "name": "whoami", "arguments": "{}" })),
            InvalidParams,
        ),
        raw_case(
            "tools-call-arguments-number",
            call(json!({ "name": "whoami", "arguments": 1 })),
            InvalidParams,
        ),
        raw_case(
            "tools-call-arguments-null",
            call(json!({ "name": "whoami", "arguments": null })),
            Answered,
        ),
        raw_case(
            "tools-call-meta-number",
            call(json!({ "name": "whoami", "arguments": {}, "_meta": 5 })),
            RpcError,
        ),
        raw_case("tools-call-deep-params", call(deep_params), Answered),
        raw_case(
            "tools-list-params-array",
            rpc(json!(1), "tools/list", json!([1])),
            RpcError,
        ),
        raw_case(
            "tools-list-params-string",
            rpc(json!(1), "tools/list", json!("all")),
            RpcError,
        ),
        raw_case(
            "tools-list-cursor-number",
            rpc(json!(1), "tools/list", json!({ "cursor": 5 })),
            Answered,
        ),
        raw_case(
            "tools-list-cursor-junk",
            rpc(json!(1), "tools/list", json!({ "cursor": "\u{0}' OR 1=1" })),
            Answered,
        ),
        raw_case(
            "resources-read-uri-number",
            rpc(json!(1), "resources/read", json!({ "uri": 5 })),
            InvalidParams,
        ),
        raw_case(
            "resources-read-traversal",
            rpc(
                json!(1),
                "resources/read",
                json!({ "uri": "agentcrm://../../etc/passwd" }),
            ),
            RpcError,
        ),
        raw_case(
            "id-huge-integer",
            &br#"{"jsonrpc":"2.0","id":18446744073709551616,"method":"tools/list"}"#[..],
            Answered,
        ),
        raw_case(
            "id-1e400",
            &br#"{"jsonrpc":"2.0","id":1e400,"method":"tools/list"}"#[..],
            RpcError,
        ),
        raw_case(
            "id-float",
            &br#"{"jsonrpc":"2.0","id":1.5,"method":"tools/list"}"#[..],
            Answered,
        ),
        raw_case(
            "id-negative",
            rpc(json!(-9_007_199_254_740_993i64), "tools/list", json!({})),
            Answered,
        ),
        raw_case(
            "id-object",
            rpc(json!({ "a": 1 }), "tools/list", json!({})),
            RpcError,
        ),
        raw_case(
            "id-array",
            rpc(json!([1]), "tools/list", json!({})),
            RpcError,
        ),
        raw_case(
            "id-bool",
            rpc(json!(true), "tools/list", json!({})),
            RpcError,
        ),
        raw_case(
            "id-null",
            rpc(Value::Null, "tools/list", json!({})),
            Answered,
        ),
        raw_case(
            "id-long-string",
            rpc(json!("i".repeat(10_000)), "tools/list", json!({})),
            Answered,
        ),
        raw_case(
            "id-unicode",
            rpc(json!("\u{202e}😀\u{0}"), "tools/list", json!({})),
            Answered,
        ),
        raw_case(
            "duplicate-keys",
            &br#"{"jsonrpc":"2.0","id":1,"id":2,"method":"tools/list","method":"ping"}"#[..],
            Answered,
        ),
        raw_case(
            "deep-nesting",
            [b"[".repeat(5_000), b"]".repeat(5_000)].concat(),
            RpcError,
        ),
        raw_case(
            "deep-nesting-unclosed",
            b"{\"a\":".repeat(10_000),
            ParseError,
        ),
        raw_case(
            "response-from-client",
            json!({ "jsonrpc": "2.0", "id": 5, "result": {} }).to_string(),
            Accepted,
        ),
        raw_case(
            "error-from-client",
            json!({ "jsonrpc": "2.0", "id": 5, "error": { "code": 1, "message": "x" } })
                .to_string(),
            Accepted,
        ),
        raw_case(
            "unknown-notification",
            json!({ "jsonrpc": "2.0", "method": "notifications/whatever" }).to_string(),
            Accepted,
        ),
        raw_case(
            "over-size-limit",
            call(json!({ "name": "whoami", "arguments": { "pad": "x".repeat(max_body + 1) } })),
            TooLarge,
        ),
    ];
    // A few random byte mutations of a valid request.
    let valid = call(json!({ "name": "whoami", "arguments": {} }));
    for i in 0..8 {
        let mut body = valid.clone();
        for _ in 0..rng.range(1, 4) {
            let at = rng.below(body.len());
            match rng.below(3) {
                0 => body[at] = (rng.next_u64() & 0xff) as u8,
                1 => {
                    body.remove(at);
                }
                _ => body.insert(at, *rng.pick(b"{}[]\",:\\\x00\xff")),
            }
        }
        cases.push(raw_case(&format!("byte-mutation-{i}"), body, Any));
    }
    cases
}

/// The id an HTTP defect is filed under: one class for rmcp's 415 answer to JSON bodies
/// that are not JSON-RPC messages, else the case.
fn http_defect(case: &str, why: &str) -> String {
    if why.contains("(415 Unsupported Media Type") {
        return "http-415-for-json".into();
    }
    format!("http:{case}")
}

/// Judges a raw answer; `Err` says what is wrong with it.
fn judge_raw(answer: &HttpAnswer, expect: Expect, id: Option<&Value>) -> Result<(), String> {
    let status = answer.status;
    if status >= 500 {
        return Err(format!("a server error: {}", answer.describe()));
    }
    let body: Option<Value> = serde_json::from_str(&answer.text).ok();
    let messages = &answer.messages;
    let rpc_error = messages
        .iter()
        .find_map(|m| m.get("error").filter(|e| e.is_object()).map(|e| (m, e)));
    if let Some((_, error)) = rpc_error {
        if !error["code"].is_i64()
            || error["message"]
                .as_str()
                .is_none_or(|m| m.trim().is_empty())
        {
            return Err(format!(
                "a JSON-RPC error without code or message: {}",
                answer.describe()
            ));
        }
        if error["code"] == -32603 {
            return Err(format!("a JSON-RPC internal error: {}", answer.describe()));
        }
    }
    let reply = id.and_then(|id| answer.reply_to(id));
    // 4xx: a JSON-RPC error (or the SPEC error shape), or for transport refusals a message.
    if status >= 400 {
        if answer.text.trim().is_empty() {
            return Err(format!("a {status} without a message"));
        }
        let spec_shape = body.as_ref().is_some_and(|b| {
            b["error"].is_string()
                && b["error_description"].is_string()
                && b["request_id"].is_string()
        });
        if rpc_error.is_none()
            && !spec_shape
            && !matches!(expect, Expect::Refusal | Expect::NoServerError)
        {
            return Err(format!(
                "a refusal that is not a JSON-RPC error{}: {}",
                if status == 415 {
                    " (415 Unsupported Media Type, though the body was sent as application/json)"
                } else {
                    ""
                },
                answer.describe()
            ));
        }
    } else if !(200..300).contains(&status) {
        return Err(format!("unexpected status: {}", answer.describe()));
    }
    let code = rpc_error.and_then(|(_, e)| e["code"].as_i64());
    let ok = match expect {
        Expect::ParseError => status == 400 && code == Some(-32700),
        Expect::TooLarge => status == 413,
        Expect::RpcError => code.is_some(),
        Expect::MethodNotFound => code == Some(-32601),
        Expect::InvalidParams => code == Some(-32602),
        Expect::Answered => code.is_some() || reply.is_some_and(|r| r.get("result").is_some()),
        Expect::Accepted => (200..300).contains(&status) || code.is_some(),
        Expect::Refusal => status >= 400,
        Expect::NoServerError | Expect::Any => true,
    };
    if !ok {
        return Err(format!("expected {expect:?}: {}", answer.describe()));
    }
    Ok(())
}

impl McpHttp {
    /// POSTs raw bytes as a stateless request or on the session, with the headers a client
    /// would derive from the body (Mcp-Method and Mcp-Name, when it has them).
    async fn raw(&self, body: &[u8], stateless: bool) -> Result<HttpAnswer, String> {
        let mut request = self.post();
        if stateless {
            request = request.header("MCP-Protocol-Version", STATELESS_VERSION);
            let parsed: Option<Value> = serde_json::from_slice(body).ok();
            if let Some(method) = parsed.as_ref().and_then(|b| b["method"].as_str())
                && let Ok(value) = reqwest::header::HeaderValue::from_str(method)
            {
                request = request.header("Mcp-Method", value);
            }
            if let Some(name) = parsed.as_ref().and_then(|b| b["params"]["name"].as_str())
                && let Ok(value) = reqwest::header::HeaderValue::from_str(name)
            {
                request = request.header("Mcp-Name", value);
            }
        } else {
            request = request
                .header(
                    "Mcp-Session-Id",
                    self.session.as_deref().unwrap_or_default(),
                )
                .header("MCP-Protocol-Version", SESSION_VERSION);
        }
        match request.body(body.to_vec()).send().await {
            Ok(response) => Ok(HttpAnswer::read(response).await),
            Err(error) => Err(format!("no answer: {error}")),
        }
    }
}

/// Adds the stateless `_meta` to a JSON-RPC body's object params, so that a stateless
/// request fails for what the case breaks, not for a missing `_meta`.
fn with_meta(body: &[u8]) -> Vec<u8> {
    let Ok(mut value) = serde_json::from_slice::<Value>(body) else {
        return body.to_vec();
    };
    let Some(object) = value.as_object_mut() else {
        return body.to_vec();
    };
    if object.get("method").is_some_and(Value::is_string) && !object.contains_key("result") {
        let params = object.entry("params").or_insert_with(|| json!({}));
        if let Some(params) = params.as_object_mut()
            && !params.contains_key("_meta")
        {
            params.insert("_meta".into(), stateless_meta());
        }
    }
    value.to_string().into_bytes()
}

#[tokio::test]
async fn fuzz_malformed_json_rpc_over_http() {
    let test = "fuzz_malformed_json_rpc_over_http";
    let seed = seed(test);
    let db = TestDb::new().await;
    let max_body = 65_536;
    let max_body_text = max_body.to_string();
    let mut server = HttpServer::start(db.command(&["http", "--max-body-bytes", &max_body_text]));
    let client = McpHttp::new(&server.mcp_url(), &db.admin_key).await;
    let mut findings = Findings::new(seed);
    let mut rng = rng_for(seed, test, 0);

    let cases = malformed_bodies(&mut rng, max_body);
    let mut seen = 0;
    for case in &cases {
        let id: Option<Value> = serde_json::from_slice::<Value>(&case.body)
            .ok()
            .and_then(|b| b.get("id").cloned());
        // The untouched body stateless and on the session; with `_meta` added, stateless
        // again (what a stateless client sends).
        let variants: [(&str, Vec<u8>, bool); 3] = [
            ("stateless", case.body.clone(), true),
            ("stateless+meta", with_meta(&case.body), true),
            ("session", case.body.clone(), false),
        ];
        for (variant, body, stateless) in variants {
            if variant == "stateless+meta" && body == case.body {
                continue;
            }
            seen += 1;
            let outcome = match client.raw(&body, stateless).await {
                Err(e) => Err(e),
                Ok(answer) => {
                    if verbose() {
                        eprintln!("{} [{variant}] -> {}", case.name, answer.describe());
                    }
                    // Without `_meta` a stateless request is refused for that first.
                    let expect = match (variant, case.expect) {
                        ("stateless", Expect::MethodNotFound) => Expect::RpcError,
                        ("stateless", Expect::InvalidParams) => Expect::RpcError,
                        (_, expect) => expect,
                    };
                    judge_raw(&answer, expect, id.as_ref())
                }
            };
            if let Err(why) = outcome {
                findings.defect(
                    &http_defect(&case.name, &why),
                    format!(
                        "{} [{variant}] body {}: {why}",
                        case.name,
                        truncate(&String::from_utf8_lossy(&body), 200)
                    ),
                );
            }
        }
    }

    // Requests the HTTP transport itself refuses: plain-text reasons are fine, 5xx never.
    let whoami = rpc(
        json!(1),
        "tools/call",
        json!({ "name": "whoami", "arguments": {}, "_meta": stateless_meta() }),
    );
    let standard: Vec<(&str, String)> = vec![
        ("X-Api-Key", client.key.clone()),
        ("Accept", "application/json, text/event-stream".into()),
        ("Content-Type", "application/json".into()),
        ("MCP-Protocol-Version", STATELESS_VERSION.into()),
        ("Mcp-Method", "tools/call".into()),
        ("Mcp-Name", "whoami".into()),
    ];
    // The standard headers with some replaced (or removed, with an empty value).
    let with = |changes: &[(&str, String)]| {
        let mut request = client.http.post(&client.url);
        for (name, value) in &standard {
            if !changes.iter().any(|(n, _)| n.eq_ignore_ascii_case(name)) {
                request = request.header(*name, value);
            }
        }
        for (name, value) in changes {
            if !value.is_empty() {
                request = request.header(*name, value);
            }
        }
        request
    };
    let transport_cases: Vec<(&str, reqwest::RequestBuilder, Expect)> = vec![
        (
            "content-type-text",
            with(&[("Content-Type", "text/plain".into())]),
            Expect::Refusal,
        ),
        (
            "content-type-missing",
            with(&[("Content-Type", String::new())]),
            Expect::Refusal,
        ),
        (
            "accept-html",
            with(&[("Accept", "text/html".into())]),
            Expect::Refusal,
        ),
        (
            "mcp-method-mismatch",
            with(&[("Mcp-Method", "tools/list".into())]),
            Expect::Refusal,
        ),
        (
            "mcp-name-mismatch",
            with(&[("Mcp-Name", "server_info".into())]),
            Expect::Refusal,
        ),
        (
            "mcp-method-missing",
            with(&[("Mcp-Method", String::new())]),
            Expect::Refusal,
        ),
        (
            "protocol-version-unknown",
            with(&[("MCP-Protocol-Version", "1999-01-01".into())]),
            Expect::Refusal,
        ),
        (
            "unknown-session",
            with(&[
                ("Mcp-Session-Id", "no-such-session".into()),
                ("MCP-Protocol-Version", SESSION_VERSION.into()),
                ("Mcp-Method", String::new()),
                ("Mcp-Name", String::new()),
            ]),
            Expect::Refusal,
        ),
        (
            "bad-api-key",
            with(&[("X-Api-Key", "acrm_not-a-key".into())]),
            Expect::Refusal,
        ),
        (
            "bearer-garbage",
            with(&[
                ("X-Api-Key", String::new()),
                ("Authorization", "Bearer not.a.jwt".into()),
            ]),
            Expect::Refusal,
        ),
        (
            "huge-header",
            with(&[("X-Padding", "p".repeat(60_000))]),
            Expect::NoServerError,
        ),
        (
            "huge-api-key",
            with(&[("X-Api-Key", "k".repeat(50_000))]),
            Expect::Refusal,
        ),
    ];
    for (name, request, expect) in transport_cases {
        seen += 1;
        let outcome = match request.body(whoami.clone()).send().await {
            Err(e) => Err(format!("no answer: {e}")),
            Ok(response) => {
                let answer = HttpAnswer::read(response).await;
                if verbose() {
                    eprintln!("{name} -> {}", answer.describe());
                }
                judge_raw(&answer, expect, Some(&json!(1)))
            }
        };
        if let Err(why) = outcome {
            findings.defect(&http_defect(name, &why), format!("{name}: {why}"));
        }
    }
    for (name, method) in [
        ("get-without-session", reqwest::Method::GET),
        ("delete-without-session", reqwest::Method::DELETE),
        ("put", reqwest::Method::PUT),
    ] {
        seen += 1;
        let answer = client
            .http
            .request(method, &client.url)
            .header("X-Api-Key", &client.key)
            .header("Accept", "application/json, text/event-stream")
            .send()
            .await
            .map_err(|e| e.to_string());
        let outcome = match answer {
            Err(e) => Err(format!("no answer: {e}")),
            Ok(response) => judge_raw(&HttpAnswer::read(response).await, Expect::Refusal, None),
        };
        if let Err(why) = outcome {
            findings.defect(&http_defect(name, &why), format!("{name}: {why}"));
        }
    }
    eprintln!(
        "{test}: {} malformed requests ({} cases)",
        seen,
        cases.len()
    );

    // Nothing of this hurt the server: it answers both generations as before.
    assert!(
        matches!(server.child.try_wait(), Ok(None)),
        "the server exited (seed {seed})"
    );
    client.whoami(1_000_000, true).await;
    client.whoami(1_000_001, false).await;
    for line in panics(&server.log.lock().unwrap()) {
        findings.defect("http:panic", format!("server log: {line}"));
    }
    let status = server.stop();
    assert!(status.success(), "SIGTERM exits cleanly: {status:?}");
    findings.finish(test, Some("http"));
}

// ---------------------------------------------------------------------------------------
// 3. Malformed lines over stdio.

/// What a garbage line on stdin must get.
#[derive(Debug, Clone, Copy, PartialEq)]
enum LineExpect {
    /// Nothing (rmcp ignores what it cannot parse), or a JSON-RPC error.
    IgnoredOrError,
    /// A JSON-RPC error.
    Error,
    /// A reply to the line's id (result or error).
    Reply,
    /// A JSON-RPC error -32601 for the line's id.
    MethodNotFound,
    /// A JSON-RPC error -32602 for the line's id (the method exists; its params are wrong).
    InvalidParams,
    /// Nothing at all: a notification or a response is never answered.
    Silent,
    /// Whatever a well-formed exchange allows: nothing, an error, or a reply to its id.
    Any,
}

fn stdio_lines(rng: &mut Rng) -> Vec<(String, Vec<u8>, LineExpect)> {
    use LineExpect::*;
    let line =
        |name: &str, bytes: &[u8], expect: LineExpect| (name.to_owned(), bytes.to_vec(), expect);
    let request = |id: Value, method: &str, params: Value| rpc(id, method, params);
    let mut lines = vec![
        line("empty-line", b"", IgnoredOrError),
        line("whitespace", b"  \t  ", IgnoredOrError),
        line("truncated", b"{\"jsonrpc\":\"2.0\",\"id\":201,\"method\":", IgnoredOrError),
        line("not-json", b"hello, server", IgnoredOrError),
        line("non-utf8", b"\xff\xfe\xfd", IgnoredOrError),
        line("nul-bytes", b"\x00\x00\x00", IgnoredOrError),
        line("non-utf8-in-string", b"{\"jsonrpc\":\"2.0\",\"id\":202,\"method\":\"\xff\"}", IgnoredOrError),
        line("lone-surrogate", br#"{"jsonrpc":"2.0","id":"\ud800","method":"ping"}"#, IgnoredOrError),
        line(
            "trailing-garbage",
            &[request(json!(203), "ping", json!({})), b" garbage".to_vec()].concat(),
            IgnoredOrError,
        ),
        line("id-1e400", br#"{"jsonrpc":"2.0","id":1e400,"method":"ping"}"#, IgnoredOrError),
        line("deep-nesting", &[b"[".repeat(5_000), b"]".repeat(5_000)].concat(), IgnoredOrError),
        line("json-null", b"null", Error),
        line("json-number", b"42", Error),
        line("json-string", b"\"ping\"", Error),
        line("empty-object", b"{}", Error),
        line("empty-batch", b"[]", Error),
        line(
            "batch",
            format!(
                "[{},{}]",
                String::from_utf8(request(json!(204), "ping", json!({}))).unwrap(),
                String::from_utf8(request(json!(205), "tools/list", json!({}))).unwrap()
            )
            .as_bytes(),
            Error,
        ),
        line("missing-jsonrpc", json!({ "id": 206, "method": "ping" }).to_string().as_bytes(), Error),
        line("jsonrpc-1.0", json!({ "jsonrpc": "1.0", "id": 207, "method": "ping" }).to_string().as_bytes(), Error),
        line("missing-method", json!({ "jsonrpc": "2.0", "id": 208 }).to_string().as_bytes(), Error),
        line("method-number", json!({ "jsonrpc": "2.0", "id": 209, "method": 7 }).to_string().as_bytes(), Error),
        line("id-object", &request(json!({ "a": 1 }), "ping", json!({})), Error),
        line("id-bool", &request(json!(true), "ping", json!({})), Error),
        line("id-huge-integer", br#"{"jsonrpc":"2.0","id":18446744073709551616,"method":"ping"}"#, Error),
        line("unknown-method", &request(json!(210), "customers/drop_all", json!({})), MethodNotFound),
        line("tools-call-params-array", &request(json!(211), "tools/call", json!(["whoami"])), Error),
        line("tools-call-params-string", &request(json!(212), "tools/call", json!("whoami")), Error),
        line("tools-call-params-null", &request(json!(213), "tools/call", Value::Null), InvalidParams),
        line("tools-call-name-number", &request(json!(214), "tools/call", json!({ "name": 1 })), InvalidParams),
        line(
            "tools-call-arguments-array",
            &request(json!(215), "tools/call", json!({ "name": "whoami", "arguments": [] })),
            InvalidParams,
        ),
        line(
            "tools-call-unknown-tool",
            &request(json!(216), "tools/call", json!({ "name": "drop_all_tables", "arguments": {} })),
            InvalidParams,
        ),
        line("tools-list-params-array", &request(json!(217), "tools/list", json!([1])), Error),
        line("resources-read-uri-number", &request(json!(218), "resources/read", json!({ "uri": 5 })), InvalidParams),
        line("id-negative", &request(json!(-219), "ping", json!({})), Reply),
        line("id-string", &request(json!("req-220"), "ping", json!({})), Reply),
        line("id-long-string", &request(json!("i".repeat(10_000)), "ping", json!({})), Reply),
        line(
            "long-line",
            &request(json!(221), "ping", json!({ "padding": "p".repeat(2_000_000) })),
            Reply,
        ),
        line(
            "over-line-limit",
            &request(json!(226), "ping", json!({ "padding": "p".repeat(17 * 1024 * 1024) })),
            IgnoredOrError,
        ),
        line("cr-terminated", &[request(json!(222), "ping", json!({})), b"\r".to_vec()].concat(), Reply),
        line(
            "tools-call-nul-argument",
            &request(json!(223), "tools/call", json!({ "name": "whoami", "arguments": { "x\u{0}": "\u{0}" } })),
            Reply,
        ),
        line("response-from-client", json!({ "jsonrpc": "2.0", "id": 224, "result": {} }).to_string().as_bytes(), Silent),
        line(
            "error-from-client",
            json!({ "jsonrpc": "2.0", "id": 225, "error": { "code": 1, "message": "x" } }).to_string().as_bytes(),
            Silent,
        ),
        line("unknown-notification", json!({ "jsonrpc": "2.0", "method": "notifications/whatever" }).to_string().as_bytes(), Silent),
        line(
            "cancel-unknown-request",
            json!({ "jsonrpc": "2.0", "method": "notifications/cancelled", "params": { "requestId": 99_999 } })
                .to_string()
                .as_bytes(),
            Silent,
        ),
    ];
    let valid = request(
        json!(230),
        "tools/call",
        json!({ "name": "whoami", "arguments": {} }),
    );
    for i in 0..8 {
        let mut body = valid.clone();
        for _ in 0..rng.range(1, 4) {
            let at = rng.below(body.len());
            match rng.below(3) {
                0 => body[at] = (rng.next_u64() & 0xff) as u8,
                1 => {
                    body.remove(at);
                }
                _ => body.insert(at, *rng.pick(b"{}[]\",:\\\x00\xff")),
            }
        }
        // A newline inside would split the line: keep one line.
        body.retain(|b| *b != b'\n');
        lines.push((format!("byte-mutation-{i}"), body, Any));
    }
    lines
}

/// A usable JSON-RPC id: a string or an integer.
fn usable_id(id: Option<&Value>) -> Option<&Value> {
    id.filter(|id| id.is_string() || id.is_i64() || id.is_u64())
}

/// Judges what one garbage line got; each problem with the id it is filed under.
fn judge_line(
    name: &str,
    line: &[u8],
    expect: LineExpect,
    replies: &[Value],
) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    let parsed: Option<Value> = serde_json::from_slice(line).ok();
    let id = usable_id(parsed.as_ref().and_then(|v| v.get("id")));
    let shown = replies
        .iter()
        .map(|r| truncate(&r.to_string(), 200))
        .collect::<Vec<_>>()
        .join(" | ");
    let mut problem = |class: String, why: String| {
        problems.push((
            class,
            format!(
                "{name}: line {} got [{shown}]: {why}",
                truncate(&String::from_utf8_lossy(line), 120)
            ),
        ))
    };
    let errors: Vec<&Value> = replies
        .iter()
        .filter(|r| r.get("error").is_some())
        .collect();
    if replies.len() > 1 {
        problem(
            format!("stdio:{name}"),
            "more than one reply to one line".into(),
        );
    }
    for error in &errors {
        if error["error"]["code"] == -32603 {
            problem(format!("stdio:{name}"), "a JSON-RPC internal error".into());
        }
        if error["error"]["message"]
            .as_str()
            .is_none_or(|m| m.trim().is_empty())
        {
            problem(
                format!("stdio:{name}"),
                "a JSON-RPC error without a message".into(),
            );
        }
        // JSON-RPC 2.0 §5: `id` is required in a response, null when it cannot be known.
        if error.get("id").is_none() {
            problem(
                "stdio-error-without-id".into(),
                "a JSON-RPC error without `id` (JSON-RPC 2.0 requires it, null when unknown)"
                    .into(),
            );
        }
        if let Some(id) = id
            && &error["id"] != id
        {
            problem(
                "stdio-error-loses-id".into(),
                format!("the request's id {id} is not in its error: the client cannot match it"),
            );
        }
    }
    for reply in replies.iter().filter(|r| r.get("result").is_some()) {
        if id.is_none_or(|id| &reply["id"] != id) {
            problem(
                format!("stdio:{name}"),
                "a result for no request of this line".into(),
            );
        }
    }
    let code = errors.first().and_then(|e| e["error"]["code"].as_i64());
    let replied = id.is_some_and(|id| replies.iter().any(|r| &r["id"] == id));
    let ok = match expect {
        LineExpect::IgnoredOrError => replies.len() == errors.len(),
        LineExpect::Error => !errors.is_empty(),
        LineExpect::Reply => replied,
        LineExpect::MethodNotFound => code == Some(-32601),
        LineExpect::InvalidParams => code == Some(-32602),
        LineExpect::Silent => replies.is_empty(),
        LineExpect::Any => true,
    };
    if !ok {
        problem(format!("stdio:{name}"), format!("expected {expect:?}"));
    }
    problems
}

impl RawStdio {
    /// Sends a garbage line, then a ping, and returns what the line got: the messages
    /// before the ping's reply, and (requests run concurrently) the line's own reply if it
    /// comes later.
    fn garbage(&mut self, line: &[u8], sentinel: u64) -> Result<Vec<Value>, String> {
        self.send_bytes(line);
        let id = json!(format!("sentinel-{sentinel}"));
        self.send(&json!({ "jsonrpc": "2.0", "id": id, "method": "ping" }));
        let (_, mut got) = self.reply(&id)?;
        let parsed: Option<Value> = serde_json::from_slice(line).ok();
        let own = usable_id(parsed.as_ref().and_then(|v| v.get("id"))).cloned();
        let answered = |got: &[Value]| {
            got.iter()
                .any(|m| m.get("id").is_none() || own.as_ref().is_some_and(|id| &m["id"] == id))
        };
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut wait = own.is_some()
            && parsed.as_ref().is_some_and(|v| v.get("method").is_some())
            && !answered(&got);
        loop {
            let left = if wait {
                deadline.saturating_duration_since(Instant::now())
            } else {
                Duration::from_millis(30)
            };
            match self.next_message(left)? {
                Some(message) => {
                    got.push(message);
                    wait = wait && !answered(&got);
                }
                None if wait && Instant::now() < deadline => {}
                None => return Ok(got),
            }
            if !wait && Instant::now() >= deadline {
                return Ok(got);
            }
        }
    }
}

#[tokio::test]
async fn fuzz_malformed_lines_over_stdio() {
    let test = "fuzz_malformed_lines_over_stdio";
    let seed = seed(test);
    let db = TestDb::new().await;
    let mut findings = Findings::new(seed);
    let mut rng = rng_for(seed, test, 0);
    let lines = stdio_lines(&mut rng);
    let mut raw = RawStdio::start(&db);
    let mut sentinel = 0;

    // Before `initialize` (a few kinds), then after it (every kind).
    let before_init = [
        "not-json",
        "truncated",
        "json-null",
        "unknown-method",
        "tools-call-params-array",
    ];
    let mut send_all = |raw: &mut RawStdio, phase: &str, only: Option<&[&str]>| {
        for (name, line, expect) in &lines {
            if only.is_some_and(|only| !only.contains(&name.as_str())) {
                continue;
            }
            sentinel += 1;
            match raw.garbage(line, sentinel) {
                Err(why) => {
                    findings.defect(&format!("stdio:{name}"), format!("{name} ({phase}): {why}"))
                }
                Ok(replies) => {
                    if verbose() {
                        let shown: Vec<String> = replies
                            .iter()
                            .map(|r| truncate(&r.to_string(), 200))
                            .collect();
                        eprintln!("{name} ({phase}) -> {shown:?}");
                    }
                    let expect = match (phase, expect) {
                        // Before initialize a request may be refused for that first.
                        (
                            "before initialize",
                            LineExpect::Reply
                            | LineExpect::MethodNotFound
                            | LineExpect::InvalidParams,
                        ) => LineExpect::Error,
                        (_, expect) => *expect,
                    };
                    for (class, why) in judge_line(name, line, expect, &replies) {
                        findings.defect(&class, format!("({phase}) {why}"));
                    }
                }
            }
        }
    };
    send_all(&mut raw, "before initialize", Some(&before_init));
    raw.initialize();
    send_all(&mut raw, "after initialize", None);
    eprintln!("{test}: {} garbage lines sent", sentinel);

    // The session still works, and ends cleanly when stdin closes.
    let me = raw
        .call_tool(9_000, "whoami", &json!({}))
        .unwrap_or_else(|e| panic!("whoami after the garbage (seed {seed}): {e}"));
    assert_eq!(
        me["result"]["structuredContent"]["tenant"]["slug"], "acme",
        "{me}"
    );
    for line in panics(&raw.stderr_lines()) {
        findings.defect("stdio:panic", format!("server stderr: {line}"));
    }
    let status = raw.close();
    assert!(
        status.is_some_and(|s| s.success()),
        "stdio exits cleanly when stdin closes: {status:?}"
    );
    findings.finish(test, Some("stdio"));
}
