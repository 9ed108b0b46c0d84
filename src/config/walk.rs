//! A small reader over toml's spanned document tree that collects every error
//! with its byte span instead of stopping at the first one. Only `config/`
//! uses it; nothing here knows what the keys mean.

use std::ops::Range;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

pub(crate) type Span = Range<usize>;
pub(crate) type Value<'i> = Spanned<DeValue<'i>>;

/// Errors found so far, each with the span it points at.
#[derive(Default)]
pub(crate) struct Errors {
    pub(crate) list: Vec<(Span, String)>,
}

impl Errors {
    pub(crate) fn push(&mut self, span: Span, message: impl Into<String>) {
        self.list.push((span, message.into()));
    }
}

/// One table of the document, with the span of the header or inline table
/// that defines it (used for "missing key" errors).
#[derive(Clone)]
pub(crate) struct Table<'a, 'i> {
    pub(crate) inner: &'a DeTable<'i>,
    pub(crate) span: Span,
    /// How the table is named in messages, e.g. `[upstreams.eu-blue]`.
    pub(crate) name: &'a str,
}

impl<'a, 'i> Table<'a, 'i> {
    /// Reports every key that is not in `allowed`.
    pub(crate) fn check_keys(&self, errors: &mut Errors, allowed: &[&str]) {
        for key in self.inner.keys() {
            if !allowed.contains(&key.get_ref().as_ref()) {
                errors.push(
                    key.span(),
                    format!(
                        "unknown key `{}` in {}; expected one of: {}",
                        key.get_ref(),
                        self.name,
                        allowed.join(", ")
                    ),
                );
            }
        }
    }

    pub(crate) fn get(&self, key: &str) -> Option<&'a Value<'i>> {
        self.inner.get(key)
    }

    pub(crate) fn str(&self, errors: &mut Errors, key: &str) -> Option<(&'a str, Span)> {
        let value = self.get(key)?;
        as_str(errors, value, key)
    }

    pub(crate) fn required_str(&self, errors: &mut Errors, key: &str) -> Option<(&'a str, Span)> {
        if self.get(key).is_none() {
            errors.push(self.span.clone(), format!("{} needs `{key}`", self.name));
            return None;
        }
        self.str(errors, key)
    }

    pub(crate) fn integer(&self, errors: &mut Errors, key: &str) -> Option<(i64, Span)> {
        let value = self.get(key)?;
        as_integer(errors, value, key)
    }

    pub(crate) fn bool(&self, errors: &mut Errors, key: &str) -> Option<bool> {
        let value = self.get(key)?;
        match value.get_ref() {
            DeValue::Boolean(b) => Some(*b),
            other => {
                type_error(errors, value.span(), key, "a boolean", other);
                None
            }
        }
    }

    pub(crate) fn table(
        &self,
        errors: &mut Errors,
        key: &str,
        name: &'a str,
    ) -> Option<Table<'a, 'i>> {
        let value = self.get(key)?;
        as_table(errors, value, name)
    }

    /// An array of strings (or a single string, taken as a one-element array).
    pub(crate) fn str_list(&self, errors: &mut Errors, key: &str) -> Vec<(&'a str, Span)> {
        let Some(value) = self.get(key) else {
            return Vec::new();
        };
        match value.get_ref() {
            DeValue::Array(items) => items
                .iter()
                .filter_map(|item| as_str(errors, item, key))
                .collect(),
            DeValue::String(s) => vec![(s.as_ref(), value.span())],
            other => {
                type_error(errors, value.span(), key, "an array of strings", other);
                Vec::new()
            }
        }
    }

    /// An inline table of string values: `{ "name" = "value" }`. Yields
    /// (key, key span, value, value span).
    pub(crate) fn str_map(
        &self,
        errors: &mut Errors,
        key: &str,
    ) -> Vec<(&'a str, Span, &'a str, Span)> {
        let Some(value) = self.get(key) else {
            return Vec::new();
        };
        let Some(table) = as_table(errors, value, self.name) else {
            return Vec::new();
        };
        table
            .inner
            .iter()
            .filter_map(|(k, v)| {
                let (s, span) = as_str(errors, v, k.get_ref())?;
                Some((k.get_ref().as_ref(), k.span(), s, span))
            })
            .collect()
    }
}

pub(crate) fn as_str<'a>(
    errors: &mut Errors,
    value: &'a Value<'_>,
    key: &str,
) -> Option<(&'a str, Span)> {
    match value.get_ref() {
        DeValue::String(s) => Some((s.as_ref(), value.span())),
        other => {
            type_error(errors, value.span(), key, "a string", other);
            None
        }
    }
}

pub(crate) fn as_integer(errors: &mut Errors, value: &Value<'_>, key: &str) -> Option<(i64, Span)> {
    match value.get_ref() {
        DeValue::Integer(i) => match i64::from_str_radix(i.as_str(), i.radix()) {
            Ok(n) => Some((n, value.span())),
            Err(_) => {
                errors.push(value.span(), format!("`{key}` is out of range"));
                None
            }
        },
        other => {
            type_error(errors, value.span(), key, "an integer", other);
            None
        }
    }
}

pub(crate) fn as_table<'a, 'i>(
    errors: &mut Errors,
    value: &'a Value<'i>,
    name: &'a str,
) -> Option<Table<'a, 'i>> {
    match value.get_ref() {
        DeValue::Table(t) => Some(Table {
            inner: t,
            span: value.span(),
            name,
        }),
        other => {
            type_error(errors, value.span(), name, "a table", other);
            None
        }
    }
}

pub(crate) fn type_error(
    errors: &mut Errors,
    span: Span,
    key: &str,
    expected: &str,
    found: &DeValue<'_>,
) {
    errors.push(
        span,
        format!("`{key}` must be {expected}, found {}", found.type_str()),
    );
}

/// Converts a byte offset into 1-based line and column (in characters).
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = before
        .get(line_start..)
        .map_or(1, |s| s.chars().count() + 1);
    (line, col)
}
