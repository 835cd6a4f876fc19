//! The access log: one line per request, written when the response body ends (or is
//! dropped), in the combined format (Apache/nginx plus duration and request id) or as JSON.
//! Lines are formatted into a per-thread buffer and handed to [`writer`] in batches.

mod writer;

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use http::header::{REFERER, USER_AGENT};
use http::{HeaderValue, Method, Request, StatusCode, Uri, Version};

use baton_supervise::log::{clf_time, rfc3339};

pub(crate) use writer::flush;

/// The access log format. Default is `combined`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Format {
    /// Apache/nginx combined format plus the duration in seconds and the request id.
    Combined,
    /// One JSON object per line.
    Json,
    /// No access log.
    Off,
}

/// One access log entry, filled in as the request goes.
#[derive(Debug)]
pub(crate) struct Record {
    format: Format,
    peer: Option<SocketAddr>,
    method: Method,
    uri: Uri,
    version: Version,
    user_agent: Option<HeaderValue>,
    referer: Option<HeaderValue>,
    rid: Option<HeaderValue>,
    start: Instant,
    pub(crate) status: StatusCode,
    pub(crate) bytes: u64,
}

thread_local! {
    static LINE: std::cell::RefCell<String> = std::cell::RefCell::new(String::with_capacity(256));
}

impl Record {
    /// What the log needs of the request, taken before the app consumes it.
    pub(crate) fn new<B>(
        format: Format,
        req: &Request<B>,
        peer: Option<SocketAddr>,
        rid: Option<HeaderValue>,
        start: Instant,
    ) -> Record {
        Record {
            format,
            peer,
            method: req.method().clone(),
            uri: req.uri().clone(),
            version: req.version(),
            user_agent: req.headers().get(USER_AGENT).cloned(),
            referer: req.headers().get(REFERER).cloned(),
            rid,
            start,
            status: StatusCode::OK,
            bytes: 0,
        }
    }

    /// Formats the line (the request ended at `end`, wall-clock `wall`) and queues it.
    pub(crate) fn write(&self, end: Instant, wall: SystemTime) {
        LINE.with(|line| {
            let mut line = line.borrow_mut();
            line.clear();
            let took = end.saturating_duration_since(self.start);
            match self.format {
                Format::Combined => self.combined(&mut line, took, wall),
                Format::Json => self.json(&mut line, took, wall),
                Format::Off => return,
            }
            writer::push_line(line.as_bytes());
        });
    }

    fn remote(&self, out: &mut String) {
        use std::fmt::Write as _;
        match self.peer.map(|p| p.ip()) {
            // Without the formatting machinery: the common case, measured at a few hundred
            // instructions per line through `Display`.
            Some(std::net::IpAddr::V4(ip)) => {
                for (i, octet) in ip.octets().into_iter().enumerate() {
                    if i > 0 {
                        out.push('.');
                    }
                    push_u64(out, u64::from(octet));
                }
            }
            Some(ip) => {
                let _ = write!(out, "{ip}");
            }
            None => out.push_str("unix"),
        }
    }

    fn combined(&self, out: &mut String, took: Duration, wall: SystemTime) {
        self.remote(out);
        out.push_str(" - - [");
        cached_time(out, wall, false);
        out.push_str("] \"");
        out.push_str(self.method.as_str());
        out.push(' ');
        escape_into(out, self.uri.path_and_query().map_or("/", |p| p.as_str()).as_bytes(), b'"', false);
        out.push(' ');
        out.push_str(version(self.version));
        out.push_str("\" ");
        out.push_str(self.status.as_str());
        out.push(' ');
        push_u64(out, self.bytes);
        out.push_str(" \"");
        escape_into(out, self.referer.as_ref().map_or(b"-", |v| v.as_bytes()), b'"', false);
        out.push_str("\" \"");
        escape_into(out, self.user_agent.as_ref().map_or(b"-", |v| v.as_bytes()), b'"', false);
        out.push_str("\" ");
        push_fixed(out, took.as_micros() as u64, 6);
        out.push(' ');
        escape_into(out, self.rid.as_ref().map_or(b"-", |v| v.as_bytes()), b' ', false);
        out.push('\n');
    }

    fn json(&self, out: &mut String, took: Duration, wall: SystemTime) {
        out.push_str("{\"time\":\"");
        cached_time(out, wall, true);
        out.push_str("\",\"remote\":\"");
        self.remote(out);
        out.push_str("\",\"method\":\"");
        out.push_str(self.method.as_str());
        out.push_str("\",\"uri\":\"");
        escape_into(out, self.uri.path_and_query().map_or("/", |p| p.as_str()).as_bytes(), b'"', true);
        out.push_str("\",\"version\":\"");
        out.push_str(version(self.version));
        out.push_str("\",\"status\":");
        out.push_str(self.status.as_str());
        out.push_str(",\"bytes\":");
        push_u64(out, self.bytes);
        out.push_str(",\"duration_ms\":");
        push_fixed(out, took.as_micros() as u64, 3);
        for (key, v) in [("request_id", &self.rid), ("user_agent", &self.user_agent), ("referer", &self.referer)] {
            if let Some(v) = v {
                out.push_str(",\"");
                out.push_str(key);
                out.push_str("\":\"");
                escape_into(out, v.as_bytes(), b'"', true);
                out.push('"');
            }
        }
        out.push_str("}\n");
    }
}

fn version(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/?",
    }
}

fn push_u64(out: &mut String, mut n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.push_str(std::str::from_utf8(&buf[i..]).unwrap_or("?"));
}

/// `micros` as a decimal number of seconds (`frac` = 6) or milliseconds (`frac` = 3).
fn push_fixed(out: &mut String, micros: u64, frac: u32) {
    let (whole, part) =
        if frac == 6 { (micros / 1_000_000, micros % 1_000_000) } else { (micros / 1000, micros % 1000) };
    push_u64(out, whole);
    out.push('.');
    let mut buf = [b'0'; 6];
    let mut p = part;
    for d in buf[..frac as usize].iter_mut().rev() {
        *d = b'0' + (p % 10) as u8;
        p /= 10;
    }
    out.push_str(std::str::from_utf8(&buf[..frac as usize]).unwrap_or("?"));
}

thread_local! {
    /// The formatted time of the last second logged (`[combined, json]`), as nginx caches it:
    /// formatting a date is done once a second, not once a request.
    static TIME: std::cell::RefCell<(u64, String, String)> = const { std::cell::RefCell::new((u64::MAX, String::new(), String::new())) };
}

/// The combined log's time (`25/Nov/2026:09:40:00 +0000`) or JSON's (`2026-11-25T09:40:00.123Z`).
fn cached_time(out: &mut String, wall: SystemTime, json: bool) {
    let d = wall.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    TIME.with(|t| {
        let mut t = t.borrow_mut();
        if t.0 != d.as_secs() {
            let second = std::time::UNIX_EPOCH + Duration::from_secs(d.as_secs());
            t.1.clear();
            clf_time(&mut t.1, second);
            t.2.clear();
            rfc3339(&mut t.2, second);
            t.0 = d.as_secs();
        }
        if json {
            // "…:00.000Z": the seconds from the cache, the milliseconds of this moment.
            out.push_str(&t.2[..t.2.len() - 4]);
            let ms = d.subsec_millis();
            out.push(char::from(b'0' + (ms / 100) as u8));
            out.push(char::from(b'0' + (ms / 10 % 10) as u8));
            out.push(char::from(b'0' + (ms % 10) as u8));
            out.push('Z');
        } else {
            out.push_str(&t.1);
        }
    });
}

/// Writes bytes so that a log line stays one line and one field: `\` and `quote` are escaped,
/// control and non-ASCII bytes become `\xHH` (`\u00HH` in JSON).
fn escape_into(out: &mut String, bytes: &[u8], quote: u8, json: bool) {
    use std::fmt::Write as _;
    for &b in bytes {
        match b {
            b'\\' => out.push_str("\\\\"),
            _ if b == quote => {
                out.push('\\');
                out.push(b as char);
            }
            0x20..=0x7e => out.push(b as char),
            _ if json => {
                let _ = write!(out, "\\u{b:04x}");
            }
            _ => {
                let _ = write!(out, "\\x{b:02x}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_log_fields() {
        let mut s = String::new();
        escape_into(&mut s, b"a\"b\\c\nd\xff", b'"', true);
        assert_eq!(s, "a\\\"b\\\\c\\u000ad\\u00ff");
        s.clear();
        escape_into(&mut s, b"x y", b' ', false);
        assert_eq!(s, "x\\ y");
    }

    #[test]
    fn formats_combined_and_json_lines() {
        let req = Request::builder().uri("/a?b=c").header(USER_AGENT, "say \"hi\"").body(()).unwrap();
        let peer = Some("127.0.0.1:5000".parse().unwrap());
        let mut r = Record::new(Format::Combined, &req, peer, Some(HeaderValue::from_static("id-1")), Instant::now());
        r.status = StatusCode::NOT_FOUND;
        r.bytes = 12;
        let mut line = String::new();
        let wall = std::time::UNIX_EPOCH + Duration::from_millis(1_795_599_600_123); // 2026-11-25T09:40:00.123Z
        let took = Duration::from_micros(1_500);
        r.combined(&mut line, took, wall);
        assert!(line.starts_with("127.0.0.1 - - [25/Nov/2026:09:40:00 +0000] "), "{line}");
        assert!(line.contains("\" 0.001500 id-1\n"), "{line}");
        assert!(line.starts_with("127.0.0.1 - - ["), "{line}");
        assert!(line.contains("] \"GET /a?b=c HTTP/1.1\" 404 12 \"-\" \"say \\\"hi\\\"\" "), "{line}");
        assert!(line.ends_with(" id-1\n"), "{line}");
        line.clear();
        r.json(&mut line, took, wall);
        assert!(line.starts_with("{\"time\":\"2026-11-25T09:40:00.123Z\","), "{line}");
        assert!(line.contains("\"duration_ms\":1.500,"), "{line}");
        assert!(line.contains("\"remote\":\"127.0.0.1\",\"method\":\"GET\",\"uri\":\"/a?b=c\""), "{line}");
        assert!(line.contains("\"status\":404,\"bytes\":12,"), "{line}");
        assert!(line.ends_with("\"request_id\":\"id-1\",\"user_agent\":\"say \\\"hi\\\"\"}\n"), "{line}");
    }
}
