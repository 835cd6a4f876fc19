//! The access log: one line per request, written when the response body ends (or is
//! dropped), in the combined format (Apache/nginx plus duration and request id) or as JSON.
//! Lines are formatted into a per-thread buffer and handed to [`writer`] in batches.

mod writer;

use std::net::SocketAddr;
use std::time::{Instant, SystemTime};

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

    /// Formats the line and queues it for the writer.
    pub(crate) fn write(&self) {
        LINE.with(|line| {
            let mut line = line.borrow_mut();
            line.clear();
            match self.format {
                Format::Combined => self.combined(&mut line),
                Format::Json => self.json(&mut line),
                Format::Off => return,
            }
            writer::push_line(line.as_bytes());
        });
    }

    fn combined(&self, out: &mut String) {
        use std::fmt::Write as _;
        match self.peer {
            Some(p) => {
                let _ = write!(out, "{}", p.ip());
            }
            None => out.push_str("unix"),
        }
        out.push_str(" - - [");
        clf_time(out, SystemTime::now());
        let _ = write!(out, "] \"{} ", self.method);
        escape_into(out, self.uri.path_and_query().map_or("/", |p| p.as_str()).as_bytes(), b'"', false);
        let _ = write!(out, " {:?}\" {} {} \"", self.version, self.status.as_u16(), self.bytes);
        escape_into(out, self.referer.as_ref().map_or(b"-", |v| v.as_bytes()), b'"', false);
        out.push_str("\" \"");
        escape_into(out, self.user_agent.as_ref().map_or(b"-", |v| v.as_bytes()), b'"', false);
        let _ = write!(out, "\" {:.6} ", self.start.elapsed().as_secs_f64());
        escape_into(out, self.rid.as_ref().map_or(b"-", |v| v.as_bytes()), b' ', false);
        out.push('\n');
    }

    fn json(&self, out: &mut String) {
        use std::fmt::Write as _;
        out.push_str("{\"time\":\"");
        rfc3339(out, SystemTime::now());
        out.push_str("\",\"remote\":\"");
        match self.peer {
            Some(p) => {
                let _ = write!(out, "{}", p.ip());
            }
            None => out.push_str("unix"),
        }
        let _ = write!(out, "\",\"method\":\"{}\",\"uri\":\"", self.method);
        escape_into(out, self.uri.path_and_query().map_or("/", |p| p.as_str()).as_bytes(), b'"', true);
        let _ = write!(
            out,
            "\",\"version\":\"{:?}\",\"status\":{},\"bytes\":{},\"duration_ms\":{:.3}",
            self.version,
            self.status.as_u16(),
            self.bytes,
            self.start.elapsed().as_secs_f64() * 1000.0
        );
        for (key, v) in [("request_id", &self.rid), ("user_agent", &self.user_agent), ("referer", &self.referer)] {
            if let Some(v) = v {
                let _ = write!(out, ",\"{key}\":\"");
                escape_into(out, v.as_bytes(), b'"', true);
                out.push('"');
            }
        }
        out.push_str("}\n");
    }
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
        r.combined(&mut line);
        assert!(line.starts_with("127.0.0.1 - - ["), "{line}");
        assert!(line.contains("] \"GET /a?b=c HTTP/1.1\" 404 12 \"-\" \"say \\\"hi\\\"\" "), "{line}");
        assert!(line.ends_with(" id-1\n"), "{line}");
        line.clear();
        r.json(&mut line);
        assert!(line.contains("\"remote\":\"127.0.0.1\",\"method\":\"GET\",\"uri\":\"/a?b=c\""), "{line}");
        assert!(line.contains("\"status\":404,\"bytes\":12,"), "{line}");
        assert!(line.ends_with("\"request_id\":\"id-1\",\"user_agent\":\"say \\\"hi\\\"\"}\n"), "{line}");
    }
}
