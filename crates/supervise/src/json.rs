//! The few lines of JSON writing `status --json` needs.

use std::fmt::Write as _;

/// `s` as a JSON string literal.
pub(crate) fn string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// An object written field by field.
#[derive(Debug, Default)]
pub(crate) struct Object(String);

impl Object {
    fn key(&mut self, k: &str) {
        self.0.push(if self.0.is_empty() { '{' } else { ',' });
        self.0.push_str(&string(k));
        self.0.push(':');
    }

    /// A field whose value is already JSON.
    pub(crate) fn raw(mut self, k: &str, v: &str) -> Self {
        self.key(k);
        self.0.push_str(v);
        self
    }

    pub(crate) fn str(self, k: &str, v: &str) -> Self {
        let v = string(v);
        self.raw(k, &v)
    }

    pub(crate) fn num(self, k: &str, v: impl std::fmt::Display) -> Self {
        self.raw(k, &v.to_string())
    }

    pub(crate) fn opt_str(self, k: &str, v: Option<&str>) -> Self {
        match v {
            Some(v) => self.str(k, v),
            None => self.raw(k, "null"),
        }
    }

    pub(crate) fn bool(self, k: &str, v: bool) -> Self {
        self.raw(k, if v { "true" } else { "false" })
    }

    pub(crate) fn end(mut self) -> String {
        if self.0.is_empty() {
            self.0.push('{');
        }
        self.0.push('}');
        self.0
    }
}

/// An array of JSON values.
pub(crate) fn array(items: impl IntoIterator<Item = String>) -> String {
    let items: Vec<String> = items.into_iter().collect();
    format!("[{}]", items.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_escapes_and_nests() {
        assert_eq!(string("a\"b\\c\nd\u{1}"), r#""a\"b\\c\nd\u0001""#);
        let o = Object::default().num("n", 3).str("s", "x").bool("b", true).opt_str("o", None);
        let o = o.raw("a", &array(["1".to_owned(), "2".to_owned()])).end();
        assert_eq!(o, r#"{"n":3,"s":"x","b":true,"o":null,"a":[1,2]}"#);
        assert_eq!(Object::default().end(), "{}");
    }
}
