//! JSON output in the exact layout qemu-img prints (QEMU's
//! `qobject_to_json_pretty`): four spaces per level, keys in insertion
//! order, and empty arrays and objects opened and closed on two lines.

use std::fmt::Write as _;

/// A JSON value, objects keeping their keys in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Json {
    /// A non-negative integer.
    Uint(u64),
    /// `true` or `false`.
    Bool(bool),
    /// A string.
    Str(String),
    /// An array.
    Array(Vec<Json>),
    /// An object, in key order.
    Object(Vec<(String, Json)>),
}

impl Json {
    /// An empty object, to push keys into.
    pub fn object() -> Self {
        Json::Object(Vec::new())
    }

    /// Appends `key: value` to an object (no-op on other values).
    pub fn push(&mut self, key: &str, value: impl Into<Json>) {
        if let Json::Object(entries) = self {
            entries.push((key.to_string(), value.into()));
        }
    }

    /// The value in qemu-img's pretty layout, without a final newline.
    pub fn to_pretty(&self) -> String {
        let mut out = String::new();
        self.write(&mut out, 0);
        out
    }

    fn write(&self, out: &mut String, level: usize) {
        match self {
            Json::Uint(n) => {
                let _ = write!(out, "{n}");
            }
            Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Json::Str(s) => write_string(out, s),
            Json::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    out.push_str(if i == 0 { "\n" } else { ",\n" });
                    indent(out, level + 1);
                    item.write(out, level + 1);
                }
                out.push('\n');
                indent(out, level);
                out.push(']');
            }
            Json::Object(entries) => {
                out.push('{');
                for (i, (key, value)) in entries.iter().enumerate() {
                    out.push_str(if i == 0 { "\n" } else { ",\n" });
                    indent(out, level + 1);
                    write_string(out, key);
                    out.push_str(": ");
                    value.write(out, level + 1);
                }
                out.push('\n');
                indent(out, level);
                out.push('}');
            }
        }
    }
}

fn indent(out: &mut String, level: usize) {
    for _ in 0..level {
        out.push_str("    ");
    }
}

fn write_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

impl From<u64> for Json {
    fn from(n: u64) -> Self {
        Json::Uint(n)
    }
}

impl From<bool> for Json {
    fn from(b: bool) -> Self {
        Json::Bool(b)
    }
}

impl From<&str> for Json {
    fn from(s: &str) -> Self {
        Json::Str(s.to_string())
    }
}

impl From<String> for Json {
    fn from(s: String) -> Self {
        Json::Str(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_qemu() {
        let mut inner = Json::object();
        inner.push("type", "file");
        inner.push("data", Json::object());
        let mut top = Json::object();
        top.push("children", Json::Array(vec![]));
        top.push("virtual-size", 1048576u64);
        top.push("name", "a \"b\"\n");
        top.push("format-specific", inner);
        top.push("dirty-flag", false);
        assert_eq!(
            top.to_pretty(),
            "{\n    \"children\": [\n    ],\n    \"virtual-size\": 1048576,\n    \
             \"name\": \"a \\\"b\\\"\\n\",\n    \"format-specific\": {\n        \
             \"type\": \"file\",\n        \"data\": {\n        }\n    },\n    \
             \"dirty-flag\": false\n}"
        );
        assert_eq!(
            Json::Array(vec![Json::Uint(1), Json::Bool(true)]).to_pretty(),
            "[\n    1,\n    true\n]"
        );
    }
}
