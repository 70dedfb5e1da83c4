//! What a workflow step's arguments and conditions refer to: `{{input.x}}`, `{{vars.y}}`
//! and `{{steps.<id>.output.<path>}}` over a context `{input, vars, steps}`, and conditions
//! (`eq ne gt gte lt lte contains exists in`, composed with `and or not`).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Comparison or `and`/`or`/`not`.
///
/// A condition: a comparison, or `and` / `or` / `not` of conditions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged, deny_unknown_fields)]
pub enum Condition {
    All {
        and: Vec<Condition>,
    },
    Any {
        or: Vec<Condition>,
    },
    Not {
        not: Box<Condition>,
    },
    Compare {
        /// Path, e.g. `input.email`.
        ///
        /// Into the context, e.g. `steps.find.output.total`; `{{…}}` around it is accepted.
        field: String,
        operator: Operator,
        /// What to compare with.
        ///
        /// A list for `in`; unused by `exists`. May itself be a `{{…}}` reference.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        value: Option<Value>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Operator {
    Eq,
    Ne,
    Gt,
    Gte,
    Lt,
    Lte,
    /// Text containing text, or a list containing a value.
    Contains,
    /// The field is present and not null (`value: false`: absent or null).
    Exists,
    /// The field's value is one of `value` (a list).
    In,
}

impl Operator {
    pub fn as_str(self) -> &'static str {
        match self {
            Operator::Eq => "eq",
            Operator::Ne => "ne",
            Operator::Gt => "gt",
            Operator::Gte => "gte",
            Operator::Lt => "lt",
            Operator::Lte => "lte",
            Operator::Contains => "contains",
            Operator::Exists => "exists",
            Operator::In => "in",
        }
    }
}

/// How a condition came out, as `test_condition` reports it.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Evaluation {
    pub result: bool,
    /// The field's value (for `and`/`or`/`not`: the parts' results).
    pub evaluated_value: Option<Value>,
    /// What it was compared with.
    pub expected_value: Option<Value>,
    pub operator: String,
}

impl Condition {
    pub fn evaluate(&self, context: &Value) -> Evaluation {
        match self {
            Condition::All { and } => {
                let parts: Vec<bool> = and.iter().map(|c| c.evaluate(context).result).collect();
                composite("and", parts.iter().all(|r| *r), parts)
            }
            Condition::Any { or } => {
                let parts: Vec<bool> = or.iter().map(|c| c.evaluate(context).result).collect();
                composite("or", parts.iter().any(|r| *r), parts)
            }
            Condition::Not { not } => {
                let inner = not.evaluate(context).result;
                composite("not", !inner, vec![inner])
            }
            Condition::Compare {
                field,
                operator,
                value,
            } => {
                let actual = lookup(context, strip_braces(field)).cloned();
                let expected = value.as_ref().map(|v| substitute_value(v, context).0);
                let result = compare(*operator, actual.as_ref(), expected.as_ref());
                Evaluation {
                    result,
                    evaluated_value: actual,
                    expected_value: expected,
                    operator: operator.as_str().into(),
                }
            }
        }
    }

    /// Every path the condition reads, for validation.
    pub fn fields(&self) -> Vec<&str> {
        match self {
            Condition::All { and: list } | Condition::Any { or: list } => {
                list.iter().flat_map(Condition::fields).collect()
            }
            Condition::Not { not } => not.fields(),
            Condition::Compare { field, .. } => vec![strip_braces(field)],
        }
    }
}

fn composite(operator: &str, result: bool, parts: Vec<bool>) -> Evaluation {
    Evaluation {
        result,
        evaluated_value: Some(Value::from(parts)),
        expected_value: None,
        operator: operator.into(),
    }
}

fn strip_braces(path: &str) -> &str {
    let path = path.trim();
    path.strip_prefix("{{")
        .and_then(|p| p.strip_suffix("}}"))
        .map_or(path, str::trim)
}

fn compare(operator: Operator, actual: Option<&Value>, expected: Option<&Value>) -> bool {
    let present = actual.is_some_and(|v| !v.is_null());
    match operator {
        Operator::Exists => present == expected.and_then(Value::as_bool).unwrap_or(true),
        Operator::Eq => equal(actual, expected),
        Operator::Ne => !equal(actual, expected),
        Operator::Gt | Operator::Gte | Operator::Lt | Operator::Lte => {
            let ordering = match (actual, expected) {
                (Some(a), Some(b)) => order(a, b),
                _ => None,
            };
            ordering.is_some_and(|o| match operator {
                Operator::Gt => o.is_gt(),
                Operator::Gte => o.is_ge(),
                Operator::Lt => o.is_lt(),
                _ => o.is_le(),
            })
        }
        Operator::Contains => match (actual, expected) {
            (Some(Value::String(text)), Some(Value::String(part))) => text.contains(part.as_str()),
            (Some(Value::Array(items)), Some(item)) => {
                items.iter().any(|i| equal(Some(i), Some(item)))
            }
            _ => false,
        },
        Operator::In => match expected {
            Some(Value::Array(items)) => items.iter().any(|i| equal(actual, Some(i))),
            _ => false,
        },
    }
}

/// Equal values; numbers compare by value (1 == 1.0).
fn equal(a: Option<&Value>, b: Option<&Value>) -> bool {
    match (a, b) {
        (Some(Value::Number(x)), Some(Value::Number(y))) => x.as_f64() == y.as_f64(),
        (Some(x), Some(y)) => x == y,
        (None, None) => true,
        (None, Some(Value::Null)) | (Some(Value::Null), None) => true,
        _ => false,
    }
}

/// Numbers by value, text by text, RFC 3339 times as text (which orders them).
fn order(a: &Value, b: &Value) -> Option<std::cmp::Ordering> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64()?.partial_cmp(&y.as_f64()?),
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        (Value::Number(x), Value::String(y)) => x.as_f64()?.partial_cmp(&y.parse::<f64>().ok()?),
        (Value::String(x), Value::Number(y)) => x.parse::<f64>().ok()?.partial_cmp(&y.as_f64()?),
        _ => None,
    }
}

/// The value at a dotted path (`steps.find.output.items.0.id`); list items by index.
pub fn lookup<'a>(context: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.')
        .filter(|s| !s.is_empty())
        .try_fold(context, |value, segment| match value {
            Value::Object(map) => map.get(segment),
            Value::Array(items) => items.get(segment.parse::<usize>().ok()?),
            _ => None,
        })
}

/// One `{{…}}` replaced, as `test_substitution` reports it.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Substitution {
    /// Where in the parameters, e.g. `customer_id` or `set.tags.0`.
    pub location: String,
    /// The reference, e.g. `steps.find.output.id`.
    pub reference: String,
    /// What it was replaced with; absent when the reference leads nowhere.
    pub value: Option<Value>,
    pub found: bool,
}

/// Replaces every `{{path}}` in `value`. A string that is exactly one reference takes the
/// referenced value with its type (a number stays a number); references inside text are
/// replaced by their text. References leading nowhere are left as they are and reported.
pub fn substitute_value(value: &Value, context: &Value) -> (Value, Vec<Substitution>) {
    let mut made = Vec::new();
    let out = walk(value, context, String::new(), &mut made);
    (out, made)
}

pub fn substitute(
    parameters: &Map<String, Value>,
    context: &Value,
) -> (Map<String, Value>, Vec<Substitution>) {
    let mut made = Vec::new();
    let out = parameters
        .iter()
        .map(|(k, v)| (k.clone(), walk(v, context, k.clone(), &mut made)))
        .collect();
    (out, made)
}

fn walk(value: &Value, context: &Value, location: String, made: &mut Vec<Substitution>) -> Value {
    let at = |suffix: &str| {
        if location.is_empty() {
            suffix.to_owned()
        } else {
            format!("{location}.{suffix}")
        }
    };
    match value {
        Value::String(text) => replace_text(text, context, &location, made),
        Value::Array(items) => Value::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, v)| walk(v, context, at(&i.to_string()), made))
                .collect(),
        ),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), walk(v, context, at(k), made)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// The `{{…}}` references in a text, with their byte ranges.
pub fn references(text: &str) -> Vec<(std::ops::Range<usize>, &str)> {
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(start) = text[from..].find("{{").map(|i| i + from) {
        let Some(end) = text[start + 2..].find("}}").map(|i| i + start + 2) else {
            break;
        };
        found.push((start..end + 2, text[start + 2..end].trim()));
        from = end + 2;
    }
    found
}

fn replace_text(
    text: &str,
    context: &Value,
    location: &str,
    made: &mut Vec<Substitution>,
) -> Value {
    let refs = references(text);
    if refs.is_empty() {
        return Value::String(text.to_owned());
    }
    let whole = refs.len() == 1 && refs[0].0 == (0..text.len());
    let mut out = String::new();
    let mut last = 0;
    for (range, reference) in &refs {
        let found = lookup(context, reference).cloned();
        made.push(Substitution {
            location: location.to_owned(),
            reference: (*reference).to_owned(),
            value: found.clone(),
            found: found.is_some(),
        });
        if whole {
            return found.unwrap_or_else(|| Value::String(text.to_owned()));
        }
        out.push_str(&text[last..range.start]);
        match found {
            Some(Value::String(s)) => out.push_str(&s),
            Some(Value::Null) => {}
            Some(other) => out.push_str(&other.to_string()),
            None => out.push_str(&text[range.clone()]),
        }
        last = range.end;
    }
    out.push_str(&text[last..]);
    Value::String(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn context() -> Value {
        json!({
            "input": { "email": "ana@x.test", "min": 2 },
            "vars": { "tag": "vip" },
            "steps": { "find": { "output": { "total": 3, "customers": [{ "id": "c1", "tags": ["vip"] }] } } },
        })
    }

    #[test]
    fn references_keep_their_type_when_whole_and_become_text_inside_text() {
        let params = json!({
            "customer_id": "{{steps.find.output.customers.0.id}}",
            "count": "{{ steps.find.output.total }}",
            "note": "Found {{steps.find.output.total}} for {{input.email}}",
            "set": { "add_tags": ["{{vars.tag}}", "fixed"] },
            "missing": "{{input.nope}}",
        });
        let Value::Object(params) = params else {
            unreachable!()
        };
        let (out, made) = substitute(&params, &context());
        assert_eq!(out["customer_id"], "c1");
        assert_eq!(out["count"], 3);
        assert_eq!(out["note"], "Found 3 for ana@x.test");
        assert_eq!(out["set"]["add_tags"], json!(["vip", "fixed"]));
        assert_eq!(out["missing"], "{{input.nope}}");
        assert_eq!(made.len(), 6);
        let missing = made.iter().find(|m| m.reference == "input.nope").unwrap();
        assert!(!missing.found && missing.location == "missing");
        assert!(
            made.iter()
                .any(|m| m.location == "set.add_tags.0" && m.found)
        );
    }

    #[test]
    fn conditions_compare_and_compose() {
        let ctx = context();
        let cond = |v: Value| {
            serde_json::from_value::<Condition>(v)
                .unwrap()
                .evaluate(&ctx)
        };
        let gt = cond(
            json!({ "field": "steps.find.output.total", "operator": "gt", "value": "{{input.min}}" }),
        );
        assert!(gt.result);
        assert_eq!(gt.evaluated_value, Some(json!(3)));
        assert_eq!(gt.expected_value, Some(json!(2)));
        assert_eq!(gt.operator, "gt");
        assert!(
            cond(json!({ "field": "{{input.email}}", "operator": "contains", "value": "@x." }))
                .result
        );
        assert!(cond(json!({ "field": "steps.find.output.customers.0.tags", "operator": "contains", "value": "vip" })).result);
        assert!(
            cond(json!({ "field": "vars.tag", "operator": "in", "value": ["vip", "gold"] })).result
        );
        assert!(
            cond(json!({ "field": "input.nope", "operator": "exists", "value": false })).result
        );
        assert!(!cond(json!({ "field": "input.nope", "operator": "exists" })).result);
        assert!(
            cond(json!({ "field": "steps.find.output.total", "operator": "eq", "value": 3.0 }))
                .result
        );
        assert!(!cond(json!({ "field": "input.nope", "operator": "gt", "value": 1 })).result);
        let composed = cond(json!({ "and": [
            { "field": "input.min", "operator": "lte", "value": 2 },
            { "not": { "or": [
                { "field": "vars.tag", "operator": "eq", "value": "gold" },
                { "field": "vars.tag", "operator": "ne", "value": "vip" },
            ] } },
        ] }));
        assert!(composed.result);
        assert_eq!(composed.operator, "and");
        assert_eq!(composed.evaluated_value, Some(json!([true, true])));
        assert!(
            serde_json::from_value::<Condition>(json!({ "field": "x", "operator": "like" }))
                .is_err()
        );
    }
}
