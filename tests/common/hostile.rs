//! Hostile but well-formed JSON for property tests: extreme numbers (past `f64`, past
//! `i64`, subnormal, `-0`, ±3.4e38), long strings, huge lists, deep nesting and long keys,
//! as raw JSON text (a number like `1e400` has no `serde_json::Value`), and a way to put one
//! anywhere in a request: [`splice`] replaces the value at a path picked by indices.

use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::Value;

/// Number literals at and past the edges of what JSON decoders hold.
const EXTREME_NUMBERS: &[&str] = &[
    "1e308",
    "-1e308",
    "1.7976931348623157e308",
    "1e400",
    "-1e400",
    "5e-324",
    "1e-400",
    "-0",
    "-0.0",
    "0e0",
    "3.4e38",
    "-3.4e38",
    "3.5e38",
    "9223372036854775807",
    "-9223372036854775808",
    "18446744073709551615",
    "18446744073709551616",
    "-9223372036854775809",
    "123456789012345678901234567890",
    "0.000000000000000000000000000000000000000000001",
    "4294967296",
    "256",
    "-1",
];

/// One hostile JSON value, as text.
pub fn hostile_value() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(EXTREME_NUMBERS).prop_map(str::to_string),
        // A long string, of one repeated character (a megabyte at most).
        1 => (size(), prop::sample::select(&["a", "\u{e9}", "\\u0000", "\\\"", "\u{1f600}"][..]))
            .prop_map(|(count, piece)| format!("\"{}\"", piece.repeat(count.min(1_000_000 / piece.len())))),
        // A huge list of numbers, strings or objects.
        1 => (size(), prop::sample::select(&["0", "1e308", "\"show_1\"", "{}", "null", "[]"][..]))
            .prop_map(|(count, item)| format!("[{}]", vec![item; count].join(","))),
        // Deep nesting, of arrays or of objects, past serde_json's recursion limit too.
        1 => (1_usize..3_000, any::<bool>()).prop_map(|(depth, arrays)| if arrays {
            format!("{}{}", "[".repeat(depth), "]".repeat(depth))
        } else {
            format!("{}1{}", "{\"a\":".repeat(depth), "}".repeat(depth))
        }),
        // An object with one long key.
        1 => size().prop_map(|length| format!("{{\"{}\":1}}", "k".repeat(length))),
        1 => prop::sample::select(&["null", "true", "{}", "[]", "\"\""][..]).prop_map(str::to_string),
    ]
}

/// A count from 1 to 900,000, spread over its orders of magnitude so that small and huge
/// values are drawn alike.
fn size() -> impl Strategy<Value = usize> {
    (0_u32..6, 1_usize..10).prop_map(|(exponent, digit)| digit * 10_usize.pow(exponent))
}

/// Where a splice goes: one index per level, each choosing a key (objects, keys in order)
/// or an element (arrays); the walk stops at a scalar or when the indices run out.
pub fn path() -> impl Strategy<Value = Vec<Index>> {
    prop::collection::vec(any::<Index>(), 0..6)
}

/// A placeholder no request contains: [`splice`] puts it in the tree, serializes the
/// tree, and replaces it with the raw text.
const SENTINEL: &str = "\u{1}hostile-value\u{1}";

/// `body` with the value at `path` replaced by the raw JSON text `raw`.
pub fn splice(body: &Value, path: &[Index], raw: &str) -> Vec<u8> {
    let mut tree = body.clone();
    *walk(&mut tree, path) = Value::String(SENTINEL.into());
    let text = tree.to_string();
    let quoted = serde_json::to_string(SENTINEL).expect("strings serialize");
    text.replacen(&quoted, raw, 1).into_bytes()
}

/// The node `path` leads to within `tree`.
pub fn walk<'a>(tree: &'a mut Value, path: &[Index]) -> &'a mut Value {
    enum Step {
        Key(String),
        At(usize),
    }
    let Some((first, rest)) = path.split_first() else {
        return tree;
    };
    let step = match &*tree {
        Value::Object(map) if !map.is_empty() => map
            .keys()
            .nth(first.index(map.len()))
            .cloned()
            .map(Step::Key),
        Value::Array(items) if !items.is_empty() => Some(Step::At(first.index(items.len()))),
        _ => None,
    };
    match (step, tree) {
        (Some(Step::Key(key)), Value::Object(map)) => {
            walk(map.get_mut(&key).expect("a key of the map"), rest)
        }
        (Some(Step::At(at)), Value::Array(items)) => walk(&mut items[at], rest),
        (_, tree) => tree,
    }
}
