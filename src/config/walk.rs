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
    /// Reports every key that is not in `allowed`, with the close one it
    /// was probably meant to be, or else the whole list.
    pub(crate) fn check_keys(&self, errors: &mut Errors, allowed: &[&str]) {
        for key in self.inner.keys() {
            let key_text: &str = key.get_ref().as_ref();
            if allowed.contains(&key_text) {
                continue;
            }
            let message = match did_you_mean(key_text, allowed.iter().copied()) {
                Some(close) => {
                    format!(
                        "unknown key `{key_text}` in {}; did you mean `{close}`?",
                        self.name
                    )
                }
                None => format!(
                    "unknown key `{key_text}` in {}; expected one of: {}",
                    self.name,
                    allowed.join(", ")
                ),
            };
            errors.push(key.span(), message);
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
/// The candidate `word` was most likely meant to be: within two edits
/// (insert, delete, substitute, swap two neighbours) and fewer than half
/// of its letters, the closest one.
pub(crate) fn did_you_mean<'c>(
    word: &str,
    candidates: impl Iterator<Item = &'c str>,
) -> Option<&'c str> {
    let limit = 2.min(word.chars().count().saturating_sub(1) / 2).max(1);
    candidates
        .map(|c| {
            (
                edits(&word.to_ascii_lowercase(), &c.to_ascii_lowercase()),
                c,
            )
        })
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Edit distance with transpositions (optimal string alignment).
fn edits(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

/// A hint for a TOML syntax error at `offset`: when the error sits on an
/// unquoted token that is no number, boolean or date (`127.0.0.1:8080`),
/// it was most likely meant as a string.
pub(crate) fn quote_hint(text: &str, offset: usize) -> Option<String> {
    let offset = offset.min(text.len());
    let line_start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[offset..].find('\n').map_or(text.len(), |i| offset + i);
    let line = &text[line_start..line_end];
    let (_, value) = line.split_once('=')?;
    let at = offset - line_start;
    let value_start = line.len() - value.len();
    if at < value_start {
        return None;
    }
    let is_token = |c: char| !(c.is_whitespace() || ",[]{}#\"'".contains(c));
    let rel = at - value_start;
    let before = value[..rel.min(value.len())]
        .rfind(|c: char| !is_token(c))
        .map_or(0, |i| i + 1);
    let after = value[before..]
        .find(|c: char| !is_token(c))
        .map_or(value.len(), |i| before + i);
    let token = &value[before..after];
    let looks_like_value = token.is_empty()
        || token.parse::<f64>().is_ok()
        || token.parse::<i64>().is_ok()
        || token == "true"
        || token == "false";
    (!looks_like_value).then(|| format!("strings need quotes: write \"{token}\""))
}

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
