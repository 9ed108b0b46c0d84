//! A tracing layer that writes the access log (target `steer::access`) as
//! JSON lines with a hand-rolled, allocation-free formatter into a reused
//! buffer. The general JSON formatter of tracing-subscriber serializes each
//! of the ~14 fields through serde and was about 6 µs of every request's
//! CPU (BENCHMARKS.md); the lines keep the same shape: `timestamp`,
//! `level`, `target`, `message` and the event's fields, flattened.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::io::Write as _;

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

pub const TARGET: &str = "steer::access";

/// Writes `steer::access` events to stderr as JSON lines.
#[derive(Debug, Default)]
pub struct AccessJson;

thread_local! {
    static LINE: RefCell<String> = RefCell::new(String::with_capacity(512));
}

impl<S: Subscriber> Layer<S> for AccessJson {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        if event.metadata().target() != TARGET {
            return;
        }
        LINE.with(|line| {
            let Ok(mut line) = line.try_borrow_mut() else {
                return;
            };
            line.clear();
            let now = humantime::format_rfc3339_micros(std::time::SystemTime::now());
            let _ = write!(
                line,
                "{{\"timestamp\":\"{now}\",\"level\":\"{}\"",
                event.metadata().level()
            );
            event.record(&mut Fields { line: &mut line });
            let _ = writeln!(line, ",\"target\":\"{TARGET}\"}}");
            let _ = std::io::stderr().lock().write_all(line.as_bytes());
        });
    }
}

struct Fields<'a> {
    line: &'a mut String,
}

impl Fields<'_> {
    fn key(&mut self, field: &Field) {
        self.line.push_str(",\"");
        self.line.push_str(field.name());
        self.line.push_str("\":");
    }
}

/// Appends `s` as the inside of a JSON string.
fn escape(out: &mut String, s: &str) {
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
}

/// Escapes what a `Display`/`Debug` writes, without an intermediate string.
struct Escaping<'a>(&'a mut String);

impl std::fmt::Write for Escaping<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        escape(self.0, s);
        Ok(())
    }
}

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.key(field);
        self.line.push('"');
        escape(self.line, value);
        self.line.push('"');
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.key(field);
        self.line.push('"');
        let _ = write!(Escaping(self.line), "{value:?}");
        self.line.push('"');
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.key(field);
        let _ = write!(self.line, "{value}");
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.key(field);
        let _ = write!(self.line, "{value}");
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.key(field);
        if value.is_finite() {
            let _ = write!(self.line, "{value}");
        } else {
            self.line.push_str("null");
        }
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.key(field);
        self.line.push_str(if value { "true" } else { "false" });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_produces_valid_json_strings() {
        let mut out = String::from("\"");
        escape(&mut out, "a\"b\\c\nd\u{1}é");
        out.push('"');
        let back: String = serde_json::from_str(&out).unwrap();
        assert_eq!(back, "a\"b\\c\nd\u{1}é");
    }
}
