//! What `tools/list` gives a model by default. A tool list goes into the model's context on
//! every turn, so the listing keeps what a model needs to choose a tool and fill in its
//! arguments, and leaves the rest to `describe_tools` (which gives the full definition, as do
//! `schemas/` and `tools/`):
//!
//! - descriptions (the tool's and each property's) are their first paragraph, the summary;
//!   what follows a blank line is detail;
//! - no output schema (structured results also come as text);
//! - in the input schema: no `$schema`, no `additionalProperties` that says nothing (`false`:
//!   unknown fields are refused with a clear error anyway; `{}`), no empty defaults, no
//!   integer formats, no string lengths (the server checks them and says so), no `null` in
//!   optional fields' types, one-of-constants as one `enum`
//!   (the constants' own descriptions are detail), and `$defs` used once written in place;
//! - annotations without the copy of the title, without `destructiveHint` and
//!   `idempotentHint` on read-only tools, where MCP gives them no meaning, and without hints
//!   that have MCP's default value (not read-only, destructive, not idempotent, open world).

use std::collections::HashMap;
use std::sync::Arc;

use rmcp::model::{JsonObject, Tool};
use serde_json::Value;

pub fn lean(tool: &Tool) -> Tool {
    let mut listed = tool.clone();
    listed.output_schema = None;
    listed.description = tool.description.as_deref().map(|d| summary(d).into());
    let mut input = schema_object(&tool.input_schema);
    inline_single_use(&mut input);
    listed.input_schema = Arc::new(input);
    if let Some(annotations) = &mut listed.annotations {
        annotations.title = None;
        if annotations.read_only_hint == Some(true) {
            annotations.destructive_hint = None;
            annotations.idempotent_hint = None;
        }
        // A hint with MCP's default value says nothing a client does not assume.
        if annotations.read_only_hint == Some(false) {
            annotations.read_only_hint = None;
        }
        if annotations.destructive_hint == Some(true) {
            annotations.destructive_hint = None;
        }
        if annotations.idempotent_hint == Some(false) {
            annotations.idempotent_hint = None;
        }
        if annotations.open_world_hint == Some(true) {
            annotations.open_world_hint = None;
        }
    }
    listed
}

/// The first paragraph of `text`, its line breaks as spaces.
pub fn summary(text: &str) -> String {
    let first = text.trim().split("\n\n").next().unwrap_or_default();
    first
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

const NUMERIC_FORMATS: [&str; 12] = [
    "uint", "uint8", "uint16", "uint32", "uint64", "int", "int8", "int16", "int32", "int64",
    "double", "float",
];

/// Keywords whose value maps names to schemas (the names are not keywords).
const SCHEMA_MAPS: [&str; 4] = ["properties", "$defs", "definitions", "patternProperties"];

fn schema(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(schema_object(map)),
        Value::Array(items) => Value::Array(items.iter().map(schema).collect()),
        other => other.clone(),
    }
}

fn schema_object(map: &JsonObject) -> JsonObject {
    let numeric = map
        .get("format")
        .and_then(Value::as_str)
        .is_some_and(|f| NUMERIC_FORMATS.contains(&f));
    let mut out = JsonObject::with_capacity(map.len());
    for (key, v) in map {
        match key.as_str() {
            "$schema" => continue,
            "additionalProperties" if *v == Value::Bool(false) || *v == Value::Bool(true) => {
                continue;
            }
            "additionalProperties" if v.as_object().is_some_and(|o| o.is_empty()) => continue,
            "default" if is_empty(v) => continue,
            "format" if numeric => continue,
            "minimum" if numeric && v.as_f64() == Some(0.0) => continue,
            // Lengths are checked by the server, whose error names the field and the limit.
            "maxLength" | "minLength" => continue,
            "description" if v.is_string() => {
                out.insert(
                    key.clone(),
                    Value::from(summary(v.as_str().unwrap_or_default())),
                );
                continue;
            }
            "type" => {
                if let Value::Array(types) = v
                    && types.len() == 2
                    && types.contains(&Value::from("null"))
                    && let Some(other) = types.iter().find(|t| *t != "null")
                {
                    out.insert(key.clone(), other.clone());
                    continue;
                }
            }
            k if SCHEMA_MAPS.contains(&k) => {
                if let Value::Object(members) = v {
                    let members = members
                        .iter()
                        .map(|(name, s)| (name.clone(), schema(s)))
                        .collect();
                    out.insert(key.clone(), Value::Object(members));
                    continue;
                }
            }
            _ => {}
        }
        out.insert(key.clone(), schema(v));
    }
    // `anyOf: [X, {type: null}]` (an optional field) is X.
    let null = serde_json::json!({ "type": "null" });
    if let Some(Value::Array(variants)) = out.get("anyOf")
        && variants.len() == 2
        && let Some(at) = variants.iter().position(|v| *v == null)
        && let Value::Object(other) = variants[1 - at].clone()
    {
        out.remove("anyOf");
        for (k, v) in other {
            out.entry(k).or_insert(v);
        }
    }
    // `oneOf` of constants and enums (schemars writes documented enum variants so) is
    // one `enum`.
    let constants = out
        .get("oneOf")
        .and_then(Value::as_array)
        .and_then(|items| {
            items.iter().try_fold(Vec::new(), |mut all, item| {
                match (
                    item.get("const"),
                    item.get("enum").and_then(Value::as_array),
                ) {
                    (Some(c), None) => all.push(c.clone()),
                    (None, Some(values)) => all.extend(values.iter().cloned()),
                    _ => return None,
                }
                Some(all)
            })
        });
    if let Some(constants) = constants {
        out.remove("oneOf");
        if constants.iter().all(Value::is_string) {
            out.insert("type".into(), Value::from("string"));
        }
        out.insert("enum".into(), Value::Array(constants));
    }
    out
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    }
}

/// Writes each `$defs` entry that is referenced once and refers to nothing itself in place
/// of its reference, until none is left; the rest stay shared.
fn inline_single_use(root: &mut JsonObject) {
    loop {
        let Some(Value::Object(defs)) = root.get("$defs") else {
            return;
        };
        let mut uses: HashMap<String, usize> = HashMap::new();
        root.values().for_each(|v| count_refs(v, &mut uses));
        let inlinable: HashMap<String, JsonObject> = defs
            .iter()
            .filter(|(name, def)| uses.get(&format!("#/$defs/{name}")) == Some(&1) && !has_ref(def))
            .filter_map(|(name, def)| Some((format!("#/$defs/{name}"), def.as_object()?.clone())))
            .collect();
        if inlinable.is_empty() {
            return;
        }
        let mut value = Value::Object(std::mem::take(root));
        replace_refs(&mut value, &inlinable);
        let Value::Object(map) = value else {
            return;
        };
        *root = map;
        if let Some(Value::Object(defs)) = root.get_mut("$defs") {
            defs.retain(|name, _| !inlinable.contains_key(&format!("#/$defs/{name}")));
            if defs.is_empty() {
                root.remove("$defs");
            }
        }
    }
}

fn count_refs(value: &Value, uses: &mut HashMap<String, usize>) {
    match value {
        Value::Object(map) => {
            if let Some(Value::String(target)) = map.get("$ref") {
                *uses.entry(target.clone()).or_default() += 1;
            }
            map.values().for_each(|v| count_refs(v, uses));
        }
        Value::Array(items) => items.iter().for_each(|v| count_refs(v, uses)),
        _ => {}
    }
}

fn has_ref(value: &Value) -> bool {
    let mut uses = HashMap::new();
    count_refs(value, &mut uses);
    !uses.is_empty()
}

fn replace_refs(value: &mut Value, defs: &HashMap<String, JsonObject>) {
    match value {
        Value::Object(map) => {
            let target = map.get("$ref").and_then(Value::as_str).map(str::to_owned);
            if let Some(def) = target.and_then(|t| defs.get(&t)) {
                map.remove("$ref");
                // The referring site's own keywords (its description) win over the def's.
                for (k, v) in def {
                    map.entry(k.clone()).or_insert_with(|| v.clone());
                }
            }
            map.values_mut().for_each(|v| replace_refs(v, defs));
        }
        Value::Array(items) => items.iter_mut().for_each(|v| replace_refs(v, defs)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn lean_input(input: Value) -> Value {
        let Value::Object(input) = input else {
            panic!("an object")
        };
        let tool = Tool::new_with_raw(
            "t",
            Some("Does a thing.\n\nIn detail.".into()),
            Arc::new(input),
        );
        let listed = lean(&tool);
        assert_eq!(listed.description.as_deref(), Some("Does a thing."));
        Value::Object((*listed.input_schema).clone())
    }

    #[test]
    fn summaries_are_first_paragraphs_with_line_breaks_as_spaces() {
        assert_eq!(
            summary("One line\nwrapped.\n\nDetail."),
            "One line wrapped."
        );
        assert_eq!(summary("Only one."), "Only one.");
        assert_eq!(summary("\n\nLeading break.\n\nDetail"), "Leading break.");
    }

    #[test]
    fn single_use_defs_are_inlined_and_shared_or_recursive_ones_kept() {
        let listed = lean_input(json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "additionalProperties": false,
            "properties": {
                "order": { "$ref": "#/$defs/Order", "description": "How to sort.\n\nMore." },
                "a": { "$ref": "#/$defs/Shared" },
                "b": { "$ref": "#/$defs/Shared" },
                "tree": { "$ref": "#/$defs/Tree" },
                "description": { "type": ["string", "null"], "default": null },
                "default": {},
                "count": { "type": "integer", "format": "uint32", "minimum": 0 }
            },
            "$defs": {
                "Order": { "oneOf": [
                    { "enum": ["asc", "desc"], "type": "string" },
                    { "const": "newest", "description": "Newest first." }
                ], "description": "An order." },
                "Shared": { "type": "string", "format": "uuid" },
                "Tree": { "type": "object", "properties": { "kids": {
                    "type": "array", "items": { "$ref": "#/$defs/Tree" } } } }
            }
        }));
        assert_eq!(
            listed,
            json!({
                "type": "object",
                "properties": {
                    "order": { "description": "How to sort.", "type": "string",
                               "enum": ["asc", "desc", "newest"] },
                    "a": { "$ref": "#/$defs/Shared" },
                    "b": { "$ref": "#/$defs/Shared" },
                    "tree": { "$ref": "#/$defs/Tree" },
                    "description": { "type": "string" },
                    "default": {},
                    "count": { "type": "integer" }
                },
                "$defs": {
                    "Shared": { "type": "string", "format": "uuid" },
                    "Tree": { "type": "object", "properties": { "kids": {
                        "type": "array", "items": { "$ref": "#/$defs/Tree" } } } }
                }
            })
        );
    }

    #[test]
    fn nested_single_use_defs_are_inlined_inside_out() {
        let listed = lean_input(json!({
            "type": "object",
            "properties": { "step": { "$ref": "#/$defs/Step" } },
            "$defs": {
                "Step": { "type": "object", "properties": { "on_error": { "$ref": "#/$defs/OnError" } } },
                "OnError": { "type": "object", "properties": { "retries": { "type": "integer" } } }
            }
        }));
        assert_eq!(
            listed,
            json!({
                "type": "object",
                "properties": { "step": { "type": "object", "properties": { "on_error": {
                    "type": "object", "properties": { "retries": { "type": "integer" } } } } } }
            })
        );
    }
}
