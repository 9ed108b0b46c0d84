//! The JSON access log's writer (target `steer::access`).
//!
//! The request path formats its line straight into a shared buffer (no
//! tracing event, no `core::fmt`, no allocation); the buffer is written to
//! stderr when it holds 64 KiB and at least every 100 ms, like nginx's
//! `access_log ... buffer=64k flush=...`, so a busy proxy makes one write
//! syscall per ~200 lines instead of one per line. Lines keep the shape of
//! the other JSON lines: `timestamp`, `level`, `message`, the fields
//! flattened, `target`.
//!
//! Whether a line is written still follows the tracing filter
//! (`RUST_LOG=info,steer::access=off` drops it); in the pretty format the
//! access log is an ordinary tracing event (see `proxy::access`). No
//! tracing layer is involved in JSON mode, so the subscriber has no
//! per-layer filter and every callsite's interest stays static (a
//! per-layer filter made hyper's and h2's callsites ask at runtime).

use std::io::Write as _;
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub const TARGET: &str = "steer::access";

/// Bytes buffered before the writer that appends a line writes them out.
const FLUSH_AT: usize = 64 * 1024;
/// The longest a line waits in the buffer.
const FLUSH_EVERY: Duration = Duration::from_millis(100);

static SINK: OnceLock<Sink> = OnceLock::new();

/// The buffered JSON access-log writer, once `install`ed.
#[derive(Debug)]
pub struct Sink {
    state: Mutex<State>,
    /// Held while a full buffer goes to stderr, so that batches keep their
    /// order while new lines go into the next buffer.
    out: Mutex<()>,
}

#[derive(Debug)]
struct State {
    buf: Vec<u8>,
    /// `YYYY-MM-DDTHH:MM:SS.` of `second`: formatted once per second.
    prefix: [u8; 20],
    second: u64,
    /// The buffer of the last batch written, reused for the next one.
    spare: Vec<u8>,
}

/// Switches the access log to the buffered JSON writer and starts the
/// thread that writes out what waits longer than 100 ms. Call once, when
/// the log format is JSON; `flush` before the process exits.
pub fn install() {
    if SINK
        .set(Sink {
            state: Mutex::new(State {
                buf: Vec::with_capacity(FLUSH_AT + 4096),
                prefix: [0; 20],
                second: u64::MAX,
                spare: Vec::new(),
            }),
            out: Mutex::new(()),
        })
        .is_ok()
    {
        let _ = std::thread::Builder::new()
            .name("steer-accesslog".into())
            .spawn(|| {
                loop {
                    std::thread::sleep(FLUSH_EVERY);
                    flush();
                }
            });
    }
}

/// The JSON writer, when the log format is JSON.
pub fn sink() -> Option<&'static Sink> {
    SINK.get()
}

/// Writes out whatever is buffered.
pub fn flush() {
    if let Some(sink) = SINK.get() {
        let state = sink.state.lock().unwrap_or_else(PoisonError::into_inner);
        sink.write_out(state);
    }
}

impl Sink {
    /// Appends one INFO line with message `message`: the timestamp, then
    /// what `fields` adds, then the target.
    pub fn line(&self, message: &str, fields: impl FnOnce(&mut Line<'_>)) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.second != now.as_secs() {
            state.second = now.as_secs();
            // `2026-11-28T01:20:19Z`: keep all but the `Z`, add the dot.
            let whole = humantime::format_rfc3339_seconds(UNIX_EPOCH + now).to_string();
            if let Some(head) = whole.as_bytes().get(..19) {
                state.prefix[..19].copy_from_slice(head);
                state.prefix[19] = b'.';
            }
        }
        let State { buf, prefix, .. } = &mut *state;
        buf.extend_from_slice(b"{\"timestamp\":\"");
        buf.extend_from_slice(prefix);
        push_padded(buf, now.subsec_micros(), 6);
        buf.extend_from_slice(b"Z\",\"level\":\"INFO\"");
        let mut line = Line { buf };
        line.str("message", message);
        fields(&mut line);
        buf.extend_from_slice(b",\"target\":\"steer::access\"}\n");
        if buf.len() >= FLUSH_AT {
            self.write_out(state);
        }
    }

    /// Takes the buffer (a fresh one takes its place, so requests go on
    /// logging) and writes it to stderr outside the buffer's lock, in
    /// pieces of at most 4 KiB that end at a line end: a pipe takes such a
    /// write whole, so lines of two steer processes sharing stderr (during
    /// an upgrade) do not interleave.
    fn write_out(&self, mut state: std::sync::MutexGuard<'_, State>) {
        if state.buf.is_empty() {
            return;
        }
        let spare = std::mem::take(&mut state.spare);
        let mut full = std::mem::replace(&mut state.buf, spare);
        let out = self.out.lock().unwrap_or_else(PoisonError::into_inner);
        drop(state);
        let mut stderr = std::io::stderr().lock();
        let mut rest = &full[..];
        while !rest.is_empty() {
            let piece = piece_len(rest, PIPE_ATOMIC);
            if stderr.write_all(&rest[..piece]).is_err() {
                break;
            }
            rest = &rest[piece..];
        }
        drop(out);
        // The written buffer becomes the next spare: no allocation per batch.
        full.clear();
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.spare.capacity() < full.capacity() {
            state.spare = full;
        }
    }
}

/// What POSIX guarantees a pipe writes whole (`PIPE_BUF` on Linux).
const PIPE_ATOMIC: usize = 4096;

/// The length of the first piece of `buf` to write: whole lines up to
/// `max` bytes (a single longer line goes alone).
fn piece_len(buf: &[u8], max: usize) -> usize {
    if buf.len() <= max {
        return buf.len();
    }
    match buf[..max].iter().rposition(|&b| b == b'\n') {
        Some(end) => end + 1,
        None => buf[max..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(buf.len(), |end| max + end + 1),
    }
}

/// The fields of one line being written.
pub struct Line<'a> {
    buf: &'a mut Vec<u8>,
}

// Inlined into each line's closure: a field's name is then a constant,
// and its bytes are stored as such, not copied by a call to memcpy.
impl Line<'_> {
    #[inline(always)]
    fn key(&mut self, name: &str) {
        self.buf.extend_from_slice(b",\"");
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.extend_from_slice(b"\":");
    }

    /// A string field.
    #[inline(always)]
    pub fn str(&mut self, name: &str, value: &str) {
        self.text(name, value.as_bytes());
    }

    /// A string field from bytes that may not be UTF-8 (replaced lossily).
    #[inline(always)]
    pub fn bytes(&mut self, name: &str, value: &[u8]) {
        // ASCII (a host, a request id) is text as it is: checked a word at
        // a time, where UTF-8 validation and from_utf8_lossy's chunked
        // decoding cost ~100 instructions and more per value.
        if value.is_ascii() {
            return self.text(name, value);
        }
        match std::str::from_utf8(value) {
            Ok(s) => self.str(name, s),
            Err(_) => self.str(name, &String::from_utf8_lossy(value)),
        }
    }

    /// `value`: valid UTF-8.
    #[inline(always)]
    fn text(&mut self, name: &str, value: &[u8]) {
        self.key(name);
        self.buf.push(b'"');
        escape(self.buf, value);
        self.buf.push(b'"');
    }

    /// An unsigned number field.
    #[inline(always)]
    pub fn u64(&mut self, name: &str, value: u64) {
        self.key(name);
        self.buf
            .extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
    }

    /// A duration as milliseconds with microsecond precision (`1.234`).
    pub fn millis(&mut self, name: &str, value: Duration) {
        self.key(name);
        let micros = value.as_micros();
        self.buf
            .extend_from_slice(itoa::Buffer::new().format(micros / 1000).as_bytes());
        self.buf.push(b'.');
        push_padded(self.buf, (micros % 1000) as u32, 3);
    }
}

/// `value` in decimal, zero-padded to `width` digits.
fn push_padded(buf: &mut Vec<u8>, value: u32, width: usize) {
    let mut digits = [b'0'; 10];
    let mut v = value;
    for d in digits[..width].iter_mut().rev() {
        *d = b'0' + (v % 10) as u8;
        v /= 10;
    }
    buf.extend_from_slice(&digits[..width]);
}

/// Whether `bytes` holds a byte JSON needs escaped (`"`, `\\`, controls),
/// eight bytes at a time: access-log values almost never do.
fn needs_escape(bytes: &[u8]) -> bool {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    // Any byte of `x` below `n` (n <= 128), or equal to zero.
    let below = |x: u64, n: u8| x.wrapping_sub(LO * u64::from(n)) & !x & HI;
    let special = |word: [u8; 8]| {
        let x = u64::from_le_bytes(word);
        let quote = x ^ (LO * u64::from(b'"'));
        let backslash = x ^ (LO * u64::from(b'\\'));
        below(x, 0x20) | below(quote, 1) | below(backslash, 1) != 0
    };
    let mut chunks = bytes.chunks_exact(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        if special(word) {
            return true;
        }
    }
    // The last bytes as a word too, padded with a byte that needs nothing.
    let rest = chunks.remainder();
    let mut word = [b'a'; 8];
    word[..rest.len()].copy_from_slice(rest);
    special(word)
}

/// Appends `bytes` (valid UTF-8) as the inside of a JSON string: only
/// ASCII bytes are escaped, so the rest stays valid.
fn escape(out: &mut Vec<u8>, bytes: &[u8]) {
    if !needs_escape(bytes) {
        out.extend_from_slice(bytes);
        return;
    }
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let short: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        if short.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0xf)]);
        } else {
            out.extend_from_slice(short);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_produces_valid_json_strings() {
        let mut out = b"\"".to_vec();
        escape(&mut out, "a\"b\\c\nd\u{1}é\u{1f}\t".as_bytes());
        out.push(b'"');
        let back: String = serde_json::from_slice(&out).unwrap();
        assert_eq!(back, "a\"b\\c\nd\u{1}é\u{1f}\t");
    }

    #[test]
    fn pieces_end_at_line_ends_and_stay_within_the_limit() {
        let lines: Vec<u8> = (0..50)
            .flat_map(|i| {
                let mut l = vec![b'x'; 30 + i * 7];
                l.push(b'\n');
                l
            })
            .collect();
        let mut rest = &lines[..];
        let mut pieces = 0;
        while !rest.is_empty() {
            let n = piece_len(rest, 1000);
            assert!(n <= 1000, "{n}");
            assert_eq!(rest[n - 1], b'\n');
            rest = &rest[n..];
            pieces += 1;
        }
        assert!(pieces > 1);
        // One line longer than the limit goes alone, whole.
        let long = [vec![b'y'; 2500], b"\nz\n".to_vec()].concat();
        assert_eq!(piece_len(&long, 1000), 2501);
        assert_eq!(piece_len(b"short", 1000), 5);
    }

    #[test]
    fn needs_escape_finds_every_special_byte_at_every_position() {
        assert!(!needs_escape(
            b"GET /oauth/v2/authorize?client_id=abc 127.0.0.1"
        ));
        for len in 0..20 {
            let clean = vec![b'a'; len];
            assert!(!needs_escape(&clean));
            for pos in 0..len {
                for special in [b'"', b'\\', b'\n', 0u8, 0x1f] {
                    let mut v = clean.clone();
                    v[pos] = special;
                    assert!(needs_escape(&v), "{special:#x} at {pos} of {len}");
                }
                // Neighbours of the special bytes are clean.
                for fine in [b' ', b'!', b'#', b'[', b']', 0x7f, 0x80, 0xff] {
                    let mut v = clean.clone();
                    v[pos] = fine;
                    assert!(!needs_escape(&v), "{fine:#x} at {pos} of {len}");
                }
            }
        }
    }

    #[test]
    fn a_line_is_one_json_object_with_typed_fields() {
        let sink = Sink {
            state: Mutex::new(State {
                buf: Vec::new(),
                prefix: [0; 20],
                second: u64::MAX,
                spare: Vec::new(),
            }),
            out: Mutex::new(()),
        };
        sink.line("request", |l| {
            l.str("path", "/a?b=\"c\"");
            l.bytes("request_id", b"id-\xff");
            l.bytes("host", b"auth.example.com:8443");
            l.bytes("ascii", b"a\"b\\c\x01");
            l.u64("status", 200);
            l.millis("duration_ms", Duration::from_micros(12_045));
            l.millis("fast", Duration::from_micros(7));
        });
        let buf = sink.state.lock().unwrap().buf.clone();
        assert_eq!(buf.last(), Some(&b'\n'));
        let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!(v["message"], "request");
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["target"], TARGET);
        assert_eq!(v["path"], "/a?b=\"c\"");
        assert_eq!(v["request_id"], "id-\u{fffd}");
        assert_eq!(v["host"], "auth.example.com:8443");
        assert_eq!(v["ascii"], "a\"b\\c\u{1}");
        assert_eq!(v["status"], 200);
        assert_eq!(v["duration_ms"], 12.045);
        assert_eq!(v["fast"], 0.007);
        let ts = v["timestamp"].as_str().unwrap();
        assert!(humantime::parse_rfc3339(ts).is_ok(), "{ts}");
        assert_eq!(ts.len(), "2026-11-28T01:20:19.123456Z".len(), "{ts}");
    }
}
