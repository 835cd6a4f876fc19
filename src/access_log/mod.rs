//! The access log: one line per request, written when the response body ends (or is
//! dropped), in the combined format (Apache/nginx plus duration and request id) or as JSON.
//! Lines are formatted into a per-thread buffer and handed to [`writer`] in batches.

mod writer;

use std::net::IpAddr;
use std::time::Duration;

use http::uri::PathAndQuery;
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

/// A request's target as the log and the error lines write it: its path and query for an
/// origin-form target (`GET /x?y HTTP/1.1`) and for every HTTP/2 request (whose URI hyper
/// builds from the pseudo-headers; nginx logs these so too), and the whole target as sent for
/// HTTP/1's absolute form (`GET http://host/x`, as sent to a proxy) and authority form
/// (`CONNECT host:443`), since their path alone would name a request other than the one sent
/// (these are mostly probes for an open proxy).
#[derive(Debug, Clone)]
pub(crate) struct Target {
    path: Option<PathAndQuery>,
    /// The whole target of an absolute- or authority-form request: boxed, as it is rare and
    /// the common case then costs one word.
    whole: Option<Box<Uri>>,
}

impl Target {
    #[inline(always)]
    pub(crate) fn of(uri: &Uri, version: Version) -> Target {
        let whole =
            if uri.authority().is_some() && matches!(version, Version::HTTP_09 | Version::HTTP_10 | Version::HTTP_11) {
                Some(Box::new(uri.clone()))
            } else {
                None
            };
        Target { path: uri.path_and_query().cloned(), whole }
    }

    /// Writes the target into a log line, escaped for `json` or the combined format.
    #[inline(always)]
    fn escape_into(&self, out: &mut Vec<u8>, json: bool) {
        match &self.whole {
            None => escape_into(out, self.path.as_ref().map_or("/", PathAndQuery::as_str).as_bytes(), b'"', json),
            Some(uri) => Self::escape_whole_into(uri, out, json),
        }
    }

    #[cold]
    #[inline(never)]
    fn escape_whole_into(uri: &Uri, out: &mut Vec<u8>, json: bool) {
        escape_into(out, uri.to_string().as_bytes(), b'"', json);
    }

    /// Without the query, which may hold what an error line should not (tokens, personal data).
    pub(crate) fn without_query(&self) -> String {
        let path = self.path.as_ref().map_or("", PathAndQuery::path);
        match self.whole.as_deref() {
            None => path.to_owned(),
            Some(uri) => match (uri.scheme(), uri.authority()) {
                (Some(scheme), Some(authority)) => format!("{scheme}://{authority}{path}"),
                (_, authority) => authority.map_or(path, |a| a.as_str()).to_owned(),
            },
        }
    }
}

/// One access log entry, filled in as the request goes.
#[derive(Debug)]
pub(crate) struct Record {
    format: Format,
    method: Method,
    target: Target,
    version: Version,
    user_agent: Option<HeaderValue>,
    referer: Option<HeaderValue>,
    rid: Option<HeaderValue>,
    /// The request id is one baton made (hex digits and a dash): written without the escape scan.
    rid_made: bool,
    /// When the request began, on the worker's request clock (`Shared::elapsed`).
    start: Duration,
    pub(crate) status: StatusCode,
    pub(crate) bytes: u64,
    /// The client a trusted proxy named (`--trusted-proxy`), written instead of the peer.
    pub(crate) client: Option<IpAddr>,
}

thread_local! {
    static LINE: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(Vec::with_capacity(256));
}

/// A client's address as the log writes it, formatted once per connection (`unix` for a unix
/// socket): at most 45 bytes (an IPv6 address with an embedded IPv4 one).
#[derive(Clone, Copy)]
pub(crate) struct Remote {
    buf: [u8; 46],
    len: u8,
}

impl Remote {
    /// `peer`: the client's address (`None`: a unix socket's).
    pub(crate) fn new(peer: Option<IpAddr>) -> Remote {
        use std::io::Write as _;
        let mut buf = [0u8; 46];
        let len = {
            let mut w = &mut buf[..];
            let _ = match peer {
                // Without the formatting machinery (hundreds of instructions; with a new
                // connection per request, this is per request).
                Some(IpAddr::V4(ip)) => ip.octets().iter().enumerate().try_for_each(|(i, o)| {
                    if i > 0 {
                        w.write_all(b".")?;
                    }
                    w.write_all(itoa::Buffer::new().format(*o).as_bytes())
                }),
                Some(ip) => write!(w, "{ip}"),
                None => w.write_all(b"unix"),
            };
            46 - w.len()
        };
        Remote { buf, len: len as u8 }
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.buf[..usize::from(self.len)]
    }
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&String::from_utf8_lossy(self.as_bytes()))
    }
}

impl Record {
    /// What the log needs of the request, taken before the app consumes it (the caller found
    /// the headers).
    pub(crate) fn new<B>(
        format: Format,
        req: &Request<B>,
        user_agent: Option<HeaderValue>,
        referer: Option<HeaderValue>,
        rid: Option<HeaderValue>,
        rid_made: bool,
        start: Duration,
    ) -> Record {
        Record {
            format,
            method: req.method().clone(),
            target: Target::of(req.uri(), req.version()),
            version: req.version(),
            user_agent,
            referer,
            rid,
            rid_made,
            start,
            status: StatusCode::OK,
            bytes: 0,
            client: None,
        }
    }

    /// Formats the line (the request from `remote` ended at `end` on the request clock,
    /// wall-clock `wall`, as the time since the Unix epoch) and queues it.
    pub(crate) fn write(&self, remote: &Remote, end: Duration, wall: Duration) {
        let client = self.client.map(|ip| Remote::new(Some(ip)));
        let remote = client.as_ref().unwrap_or(remote);
        LINE.with(|line| {
            let mut line = line.borrow_mut();
            line.clear();
            let took = end.saturating_sub(self.start);
            match self.format {
                Format::Combined => self.combined(&mut line, remote, took, wall),
                Format::Json => self.json(&mut line, remote, took, wall),
                Format::Off => return,
            }
            writer::push_line(&line);
        });
    }

    pub(crate) fn method(&self) -> &Method {
        &self.method
    }

    pub(crate) fn target(&self) -> &Target {
        &self.target
    }

    fn combined(&self, out: &mut Vec<u8>, remote: &Remote, took: Duration, wall: Duration) {
        out.extend_from_slice(remote.as_bytes());
        out.extend_from_slice(b" - - [");
        cached_time(out, wall, false);
        out.extend_from_slice(b"] \"");
        out.extend_from_slice(self.method.as_str().as_bytes());
        out.push(b' ');
        self.target.escape_into(out, false);
        out.push(b' ');
        out.extend_from_slice(version(self.version));
        out.extend_from_slice(b"\" ");
        out.extend_from_slice(self.status.as_str().as_bytes());
        out.push(b' ');
        push_u64(out, self.bytes);
        out.extend_from_slice(b" \"");
        push_or_dash(out, self.referer.as_ref(), b'"');
        out.extend_from_slice(b"\" \"");
        push_or_dash(out, self.user_agent.as_ref(), b'"');
        out.extend_from_slice(b"\" ");
        push_fixed::<6>(out, took.as_micros() as u64);
        out.push(b' ');
        match &self.rid {
            Some(id) if self.rid_made => out.extend_from_slice(id.as_bytes()),
            id => push_or_dash(out, id.as_ref(), b' '),
        }
        out.push(b'\n');
    }

    fn json(&self, out: &mut Vec<u8>, remote: &Remote, took: Duration, wall: Duration) {
        out.extend_from_slice(b"{\"time\":\"");
        cached_time(out, wall, true);
        out.extend_from_slice(b"\",\"remote\":\"");
        out.extend_from_slice(remote.as_bytes());
        out.extend_from_slice(b"\",\"method\":\"");
        out.extend_from_slice(self.method.as_str().as_bytes());
        out.extend_from_slice(b"\",\"uri\":\"");
        self.target.escape_into(out, true);
        out.extend_from_slice(b"\",\"version\":\"");
        out.extend_from_slice(version(self.version));
        out.extend_from_slice(b"\",\"status\":");
        out.extend_from_slice(self.status.as_str().as_bytes());
        out.extend_from_slice(b",\"bytes\":");
        push_u64(out, self.bytes);
        out.extend_from_slice(b",\"duration_ms\":");
        push_fixed::<3>(out, took.as_micros() as u64);
        // (key, value, written as it is).
        let fields = [
            ("request_id", &self.rid, self.rid_made),
            ("user_agent", &self.user_agent, false),
            ("referer", &self.referer, false),
        ];
        for (key, v, plain) in fields {
            if let Some(v) = v {
                out.extend_from_slice(b",\"");
                out.extend_from_slice(key.as_bytes());
                out.extend_from_slice(b"\":\"");
                if plain {
                    out.extend_from_slice(v.as_bytes());
                } else {
                    escape_into(out, v.as_bytes(), b'"', true);
                }
                out.push(b'"');
            }
        }
        out.extend_from_slice(b"}\n");
    }
}

/// The line of a request answered without a parsed request line ([`crate::service::Rejected`]:
/// a head hyper could not parse, plain HTTP on a TLS port). The combined format writes `"-"`
/// for the request line; JSON leaves out `method`, `uri` and `version` and says why in `error`.
pub(crate) fn write_rejected(format: Format, remote: &Remote, answer: &crate::service::Rejected<'_>, wall: Duration) {
    LINE.with(|line| {
        let mut out = line.borrow_mut();
        out.clear();
        rejected_line(&mut out, format, remote, answer, wall);
        if !out.is_empty() {
            writer::push_line(&out);
        }
    });
}

fn rejected_line(
    out: &mut Vec<u8>,
    format: Format,
    remote: &Remote,
    answer: &crate::service::Rejected<'_>,
    wall: Duration,
) {
    let crate::service::Rejected { status, reason, bytes, took, .. } = *answer;
    match format {
        Format::Combined => {
            out.extend_from_slice(remote.as_bytes());
            out.extend_from_slice(b" - - [");
            cached_time(out, wall, false);
            out.extend_from_slice(b"] \"-\" ");
            out.extend_from_slice(status.as_str().as_bytes());
            out.push(b' ');
            push_u64(out, bytes);
            out.extend_from_slice(b" \"-\" \"-\" ");
            push_fixed::<6>(out, took.as_micros() as u64);
            out.extend_from_slice(b" -\n");
        }
        Format::Json => {
            out.extend_from_slice(b"{\"time\":\"");
            cached_time(out, wall, true);
            out.extend_from_slice(b"\",\"remote\":\"");
            out.extend_from_slice(remote.as_bytes());
            out.extend_from_slice(b"\",\"status\":");
            out.extend_from_slice(status.as_str().as_bytes());
            out.extend_from_slice(b",\"bytes\":");
            push_u64(out, bytes);
            out.extend_from_slice(b",\"duration_ms\":");
            push_fixed::<3>(out, took.as_micros() as u64);
            out.extend_from_slice(b",\"error\":\"");
            escape_into(out, reason.as_bytes(), b'"', true);
            out.extend_from_slice(b"\"}\n");
        }
        Format::Off => {}
    }
}

/// A header of the combined format: escaped, or `-` if absent (written as it is).
fn push_or_dash(out: &mut Vec<u8>, v: Option<&HeaderValue>, quote: u8) {
    match v {
        Some(v) => escape_into(out, v.as_bytes(), quote, false),
        None => out.push(b'-'),
    }
}

fn version(v: Version) -> &'static [u8] {
    match v {
        Version::HTTP_09 => b"HTTP/0.9",
        Version::HTTP_10 => b"HTTP/1.0",
        Version::HTTP_11 => b"HTTP/1.1",
        Version::HTTP_2 => b"HTTP/2.0",
        Version::HTTP_3 => b"HTTP/3.0",
        _ => b"HTTP/?",
    }
}

fn push_u64(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// `micros` as a decimal number of seconds (`FRAC` = 6) or milliseconds (`FRAC` = 3): written
/// right to left into one buffer, two digits at a time from a table, and appended at once
/// (the divisions by constants compile to multiplications; two `itoa` calls and three appends
/// cost more than twice as much, and a digit at a time 32 instructions more: callgrind).
fn push_fixed<const FRAC: usize>(out: &mut Vec<u8>, micros: u64) {
    const PAIRS: &[u8; 200] = b"0001020304050607080910111213141516171819\
        2021222324252627282930313233343536373839\
        4041424344454647484950515253545556575859\
        6061626364656667686970717273747576777879\
        8081828384858687888990919293949596979899";
    // u64::MAX has 20 digits; plus the point.
    let mut buf = [0u8; 21];
    let mut at = buf.len();
    let mut n = micros;
    // The last two digits of `n` before `at`.
    let pair = |buf: &mut [u8; 21], n: &mut u64, at: &mut usize| {
        let d = (*n % 100) as usize * 2;
        *n /= 100;
        *at -= 2;
        buf[*at..*at + 2].copy_from_slice(&PAIRS[d..d + 2]);
    };
    for _ in 0..FRAC / 2 {
        pair(&mut buf, &mut n, &mut at);
    }
    if FRAC % 2 == 1 {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
    }
    at -= 1;
    buf[at] = b'.';
    while n >= 10 {
        pair(&mut buf, &mut n, &mut at);
    }
    if n > 0 || buf[at] == b'.' {
        at -= 1;
        buf[at] = b'0' + n as u8;
    }
    out.extend_from_slice(&buf[at..]);
}

thread_local! {
    /// The formatted time of the last second logged (`[combined, json]`), as nginx caches it:
    /// formatting a date is done once a second, not once a request.
    static TIME: std::cell::RefCell<(u64, String, String)> = const { std::cell::RefCell::new((u64::MAX, String::new(), String::new())) };
}

/// The combined log's time (`25/Nov/2026:09:40:00 +0000`) or JSON's (`2026-11-25T09:40:00.123Z`)
/// of `d` since the Unix epoch.
fn cached_time(out: &mut Vec<u8>, d: Duration, json: bool) {
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
            out.extend_from_slice(&t.2.as_bytes()[..t.2.len() - 4]);
            let ms = d.subsec_millis();
            out.extend_from_slice(&[
                b'0' + (ms / 100) as u8,
                b'0' + (ms / 10 % 10) as u8,
                b'0' + (ms % 10) as u8,
                b'Z',
            ]);
        } else {
            out.extend_from_slice(t.1.as_bytes());
        }
    });
}

/// Visible ASCII and space, but not `\`: the bytes that may stand as they are (`quote` aside).
const PLAIN: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0x20;
    while b <= 0x7e {
        t[b] = b != b'\\' as usize;
        b += 1;
    }
    t
};

/// How many leading bytes of `bytes` need no escaping: eight at a time while none of the eight
/// does (a user agent or a referer is mostly such bytes), the last few as one more eight that
/// overlaps the ones before, then byte by byte from the first eight that has one (and all of
/// a slice shorter than eight: [`escape_into`] writes short fields without this scan, so that
/// is only the rest of a field after an escaped byte). Each test is exact as to whether some
/// lane matches: a borrow or carry between lanes only ever starts at a lane that matches
/// itself.
fn plain_prefix(bytes: &[u8], quote: u8) -> usize {
    let mut i = 0;
    for chunk in bytes.chunks_exact(8) {
        if !plain8(u64::from_le_bytes(chunk.try_into().expect("eight bytes")), quote) {
            return i + plain_bytes(&bytes[i..], quote);
        }
        i += 8;
    }
    if i == bytes.len() {
        return i;
    }
    if bytes.len() < 8 {
        return plain_bytes(bytes, quote);
    }
    let tail = u64::from_le_bytes(bytes[bytes.len() - 8..].try_into().expect("eight bytes"));
    if plain8(tail, quote) { bytes.len() } else { i + plain_bytes(&bytes[i..], quote) }
}

/// Whether none of the eight bytes of `x` needs escaping.
fn plain8(x: u64, quote: u8) -> bool {
    const ONES: u64 = u64::from_le_bytes([1; 8]);
    const HIGH: u64 = ONES * 0x80;
    let has_zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGH;
    let below_space = x.wrapping_sub(ONES * 0x20) & !x & HIGH;
    let above_tilde = (x.wrapping_add(ONES) | x) & HIGH;
    let special = has_zero(x ^ (ONES * u64::from(b'\\'))) | has_zero(x ^ (ONES * u64::from(quote)));
    below_space | above_tilde | special == 0
}

/// How many leading bytes of `bytes` need no escaping, one at a time.
fn plain_bytes(bytes: &[u8], quote: u8) -> usize {
    bytes.iter().position(|&b| !is_plain(b, quote)).unwrap_or(bytes.len())
}

/// Whether `b` is written as it is (looked up in a table, not compared three times).
#[inline]
fn is_plain(b: u8, quote: u8) -> bool {
    PLAIN[usize::from(b)] && b != quote
}

/// Writes bytes so that a log line stays one line and one field: `\` and `quote` are escaped,
/// control and non-ASCII bytes become `\xHH` (as nginx writes them). In JSON, which is UTF-8,
/// a valid UTF-8 character is written as it is (a user agent's `é` reads as `é`, not as two
/// Latin-1 characters), but for those some tools take as line ends (U+0080 to U+009F, U+2028,
/// U+2029), written `\uXXXX`; a control byte becomes `\u00HH`, and so does a byte that is not
/// part of valid UTF-8. Runs of plain bytes are copied whole; a byte is looked up in a table,
/// not compared three times.
fn escape_into(out: &mut Vec<u8>, mut bytes: &[u8], quote: u8, json: bool) {
    // A short field (a path such as `/`) byte by byte: cheaper than the scan's two copies
    // (`memcpy` calls: about 100 instructions for `/`, callgrind).
    if bytes.len() < 8 {
        while let Some((&b, rest)) = bytes.split_first() {
            if is_plain(b, quote) {
                out.push(b);
                bytes = rest;
            } else {
                bytes = &bytes[escape_first(out, bytes, quote, json)..];
            }
        }
        return;
    }
    while !bytes.is_empty() {
        let i = plain_prefix(bytes, quote);
        if i == bytes.len() {
            out.extend_from_slice(bytes);
            return;
        }
        out.extend_from_slice(&bytes[..i]);
        bytes = &bytes[i..];
        bytes = &bytes[escape_first(out, bytes, quote, json)..];
    }
}

/// Writes `bytes[0]`, a byte not written as it is (in JSON, with the rest of the UTF-8
/// character it begins, if it begins one); returns how many bytes it wrote.
fn escape_first(out: &mut Vec<u8>, bytes: &[u8], quote: u8, json: bool) -> usize {
    let b = bytes[0];
    if json && b >= 0x80 {
        // std's decoder: the valid UTF-8 at the start of at most one character's bytes.
        let c = bytes[..bytes.len().min(4)].utf8_chunks().next().and_then(|c| c.valid().chars().next());
        if let Some(c) = c {
            let len = c.len_utf8();
            if matches!(c, '\u{80}'..='\u{9f}' | '\u{2028}' | '\u{2029}') {
                write_u(out, c as u32);
            } else {
                out.extend_from_slice(&bytes[..len]);
            }
            return len;
        }
    }
    escape_byte(out, b, quote, json);
    1
}

/// `\uXXXX` for `c` (at most U+FFFF).
fn write_u(out: &mut Vec<u8>, c: u32) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let hex = |shift: u32| HEX[((c >> shift) & 0xf) as usize];
    out.extend_from_slice(&[b'\\', b'u', hex(12), hex(8), hex(4), hex(0)]);
}

/// One byte that is not written as it is.
fn escape_byte(out: &mut Vec<u8>, b: u8, quote: u8, json: bool) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    match b {
        b'\\' => out.extend_from_slice(b"\\\\"),
        _ if b == quote => out.extend_from_slice(&[b'\\', b]),
        _ if json => write_u(out, u32::from(b)),
        _ => out.extend_from_slice(&[b'\\', b'x', HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xf)]]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::USER_AGENT;

    #[test]
    fn targets_are_written_as_sent_and_error_lines_drop_the_query() {
        let cases = [
            // (target, version, as logged, for an error line)
            ("/a/b?x=1", Version::HTTP_11, "/a/b?x=1", "/a/b"),
            ("*", Version::HTTP_11, "*", "*"),
            (
                "http://example.com/{\"p\"}?q=1",
                Version::HTTP_11,
                "http://example.com/{\\\"p\\\"}?q=1",
                "http://example.com/{\"p\"}",
            ),
            ("http://example.com", Version::HTTP_10, "http://example.com/", "http://example.com/"),
            ("example.com:443", Version::HTTP_11, "example.com:443", "example.com:443"),
            ("[::1]:8443", Version::HTTP_10, "[::1]:8443", "[::1]:8443"),
            // HTTP/2: hyper's URI always has the `:scheme` and `:authority`; the path is logged.
            ("https://example.com/h2?x", Version::HTTP_2, "/h2?x", "/h2"),
        ];
        for (sent, version, logged, error) in cases {
            let target = Target::of(&sent.parse::<Uri>().unwrap(), version);
            let mut out = Vec::new();
            target.escape_into(&mut out, false);
            assert_eq!(
                (String::from_utf8(out).unwrap().as_str(), target.without_query().as_str()),
                (logged, error),
                "{sent}"
            );
        }
    }

    #[test]
    fn escapes_log_fields() {
        let mut s = Vec::new();
        escape_into(&mut s, b"a\"b\\c\nd\xff", b'"', true);
        assert_eq!(s, b"a\\\"b\\\\c\\u000ad\\u00ff");
        s.clear();
        escape_into(&mut s, b"x y", b' ', false);
        assert_eq!(s, b"x\\ y");
        s.clear();
        escape_into(&mut s, b"plain\x01\x7f/end", b'"', false);
        assert_eq!(s, b"plain\\x01\\x7f/end");
        // Short fields (byte by byte) and long ones (eight at a time) alike, against the
        // rules written out one byte at a time: every length up to three chunks, with a byte
        // of each kind at each place.
        let reference = |bytes: &[u8], quote: u8, json: bool| {
            let mut out = Vec::new();
            for &b in bytes {
                match b {
                    b'\\' => out.extend_from_slice(b"\\\\"),
                    _ if b == quote => out.extend_from_slice(&[b'\\', b]),
                    0x20..=0x7e => out.push(b),
                    _ if json => out.extend_from_slice(format!("\\u{b:04x}").as_bytes()),
                    _ => out.extend_from_slice(format!("\\x{b:02x}").as_bytes()),
                }
            }
            out
        };
        for len in 0..=24 {
            for at in 0..len.max(1) {
                for special in [b'a', b'"', b' ', b'\\', b'\n', 0x7f, 0xc3] {
                    for (quote, json) in [(b'"', true), (b'"', false), (b' ', false)] {
                        let mut field = vec![b'a'; len];
                        if let Some(c) = field.get_mut(at) {
                            *c = special;
                        }
                        let mut out = Vec::new();
                        escape_into(&mut out, &field, quote, json);
                        assert_eq!(out, reference(&field, quote, json), "{field:?} quote {quote} json {json}");
                    }
                }
            }
        }
    }

    #[test]
    fn json_keeps_utf8_and_escapes_what_is_not() {
        let json = |bytes: &[u8]| {
            let mut out = Vec::new();
            escape_into(&mut out, bytes, b'"', true);
            String::from_utf8(out).expect("JSON text is UTF-8")
        };
        // Before the fix, every byte from 0x80 up was written `\u00HH`: `é` read as `Ã©`.
        assert_eq!(json("é".as_bytes()), "é");
        assert_eq!(json("Mozilla/5.0 (Linux; café €) 🦀".as_bytes()), "Mozilla/5.0 (Linux; café €) 🦀");
        // What line-oriented tools may take as a line end, as escapes of the same character.
        assert_eq!(json("a\u{85}b\u{2028}c\u{2029}".as_bytes()), "a\\u0085b\\u2028c\\u2029");
        // Bytes that are not UTF-8: an overlong `/`, a surrogate, a truncated `€`, a lone
        // continuation byte, 0xff.
        assert_eq!(json(b"\xc0\xaf"), "\\u00c0\\u00af");
        assert_eq!(json(b"\xed\xa0\x80"), "\\u00ed\\u00a0\\u0080");
        assert_eq!(json(b"x\xe2\x82"), "x\\u00e2\\u0082");
        assert_eq!(json(b"\x80\xff"), "\\u0080\\u00ff");
        // The combined format writes every non-ASCII byte as `\xHH`, as nginx does.
        let mut out = Vec::new();
        escape_into(&mut out, "é".as_bytes(), b'"', false);
        assert_eq!(out, b"\\xc3\\xa9");
        // Short fields and long ones, every place: a JSON reader gets the text back exactly
        // when it is valid UTF-8, and the line has no raw control byte or line separator.
        for ch in ["é", "€", "🦀", "\u{85}", "\u{2028}", "\"", "\\", "\n"] {
            for len in 0..=20 {
                for at in 0..=len {
                    let text = format!("{}{ch}{}", "a".repeat(at), "b".repeat(len - at));
                    let out = json(text.as_bytes());
                    assert!(!out.chars().any(|c| c.is_control() || c == '\u{2028}' || c == '\u{2029}'), "{out:?}");
                    let back: String = serde_json::from_str(&format!("\"{out}\"")).expect("valid JSON");
                    assert_eq!(back, text);
                }
            }
        }
    }

    #[test]
    fn formats_combined_and_json_lines() {
        let req = Request::builder().uri("/a?b=c").header(USER_AGENT, "say \"hi\"").body(()).unwrap();
        let remote = Remote::new(Some("127.0.0.1".parse().unwrap()));
        let ua = req.headers().get(USER_AGENT).cloned();
        let mut r = Record::new(
            Format::Combined,
            &req,
            ua,
            None,
            Some(HeaderValue::from_static("id-1")),
            false,
            Duration::ZERO,
        );
        r.status = StatusCode::NOT_FOUND;
        r.bytes = 12;
        let mut buf = Vec::new();
        let wall = Duration::from_millis(1_795_599_600_123); // 2026-11-25T09:40:00.123Z
        let took = Duration::from_micros(1_500);
        r.combined(&mut buf, &remote, took, wall);
        let line = String::from_utf8(buf.clone()).unwrap();
        assert!(line.starts_with("127.0.0.1 - - [25/Nov/2026:09:40:00 +0000] "), "{line}");
        assert!(line.contains("\" 0.001500 id-1\n"), "{line}");
        assert!(line.starts_with("127.0.0.1 - - ["), "{line}");
        assert!(line.contains("] \"GET /a?b=c HTTP/1.1\" 404 12 \"-\" \"say \\\"hi\\\"\" "), "{line}");
        assert!(line.ends_with(" id-1\n"), "{line}");
        buf.clear();
        r.json(&mut buf, &remote, took, wall);
        let line = String::from_utf8(buf).unwrap();
        assert!(line.starts_with("{\"time\":\"2026-11-25T09:40:00.123Z\","), "{line}");
        assert!(line.contains("\"duration_ms\":1.500,"), "{line}");
        assert!(line.contains("\"remote\":\"127.0.0.1\",\"method\":\"GET\",\"uri\":\"/a?b=c\""), "{line}");
        assert!(line.contains("\"status\":404,\"bytes\":12,"), "{line}");
        assert!(line.ends_with("\"request_id\":\"id-1\",\"user_agent\":\"say \\\"hi\\\"\"}\n"), "{line}");
        // No referer, user agent or request id: a `-` for each in the combined format, none
        // of them in JSON.
        let bare = Record::new(Format::Combined, &Request::new(()), None, None, None, false, Duration::ZERO);
        let mut buf = Vec::new();
        bare.combined(&mut buf, &remote, took, wall);
        let line = String::from_utf8(buf.clone()).unwrap();
        assert!(line.ends_with("] \"GET / HTTP/1.1\" 200 0 \"-\" \"-\" 0.001500 -\n"), "{line}");
        buf.clear();
        bare.json(&mut buf, &remote, took, wall);
        let line = String::from_utf8(buf).unwrap();
        assert!(line.ends_with("\"bytes\":0,\"duration_ms\":1.500}\n"), "{line}");
        // An id baton made is written as it is, one from the client escaped.
        for (id, made, combined, json) in [
            ("0123abcd-1f", true, " 0123abcd-1f\n", "\"request_id\":\"0123abcd-1f\"}\n"),
            ("a\\b", false, " a\\\\b\n", "\"request_id\":\"a\\\\b\"}\n"),
        ] {
            let rid = Some(HeaderValue::from_static(id));
            let r = Record::new(Format::Combined, &Request::new(()), None, None, rid, made, Duration::ZERO);
            let mut buf = Vec::new();
            r.combined(&mut buf, &remote, took, wall);
            assert!(buf.ends_with(combined.as_bytes()), "{}", String::from_utf8_lossy(&buf));
            buf.clear();
            r.json(&mut buf, &remote, took, wall);
            assert!(buf.ends_with(json.as_bytes()), "{}", String::from_utf8_lossy(&buf));
        }
    }

    #[test]
    fn formats_the_lines_of_requests_hyper_rejected() {
        let remote = Remote::new(Some("::1".parse().unwrap()));
        let wall = Duration::from_millis(1_795_599_600_123); // 2026-11-25T09:40:00.123Z
        let took = Duration::from_millis(2);
        let answer = crate::service::Rejected {
            status: StatusCode::BAD_REQUEST,
            reason: "invalid \"x\"",
            bytes: 35,
            took,
            end: Duration::ZERO,
        };
        let line = |format| {
            let mut out = Vec::new();
            rejected_line(&mut out, format, &remote, &answer, wall);
            String::from_utf8(out).unwrap()
        };
        assert_eq!(
            line(Format::Combined),
            "::1 - - [25/Nov/2026:09:40:00 +0000] \"-\" 400 35 \"-\" \"-\" 0.002000 -\n"
        );
        assert_eq!(
            line(Format::Json),
            "{\"time\":\"2026-11-25T09:40:00.123Z\",\"remote\":\"::1\",\"status\":400,\"bytes\":35,\
             \"duration_ms\":2.000,\"error\":\"invalid \\\"x\\\"\"}\n"
        );
        assert_eq!(line(Format::Off), "");
    }

    #[test]
    fn plain_prefix_finds_the_first_byte_to_escape() {
        let naive =
            |b: &[u8], quote: u8| b.iter().position(|&c| !PLAIN[usize::from(c)] || c == quote).unwrap_or(b.len());
        // Every byte value at every position of plain strings of every length up to three
        // chunks, after a plain or a high first byte (the carries between lanes).
        for quote in [b'"', b' '] {
            for len in 1..=24 {
                for at in 0..len {
                    for v in 0..=255u8 {
                        for lead in [b'a', 0xff, 0x00, 0x7f] {
                            let mut s = vec![b'a'; len];
                            s[0] = lead;
                            s[at] = v;
                            assert_eq!(plain_prefix(&s, quote), naive(&s, quote), "{s:?} quote {quote}");
                        }
                    }
                }
            }
        }
        assert_eq!(plain_prefix(b"", b'"'), 0);
    }

    #[test]
    fn formats_numbers_and_addresses() {
        let fixed = |micros, frac| {
            let mut v = b"x".to_vec();
            match frac {
                6 => push_fixed::<6>(&mut v, micros),
                _ => push_fixed::<3>(&mut v, micros),
            }
            String::from_utf8(v).unwrap()
        };
        assert_eq!(fixed(0, 6), "x0.000000");
        assert_eq!(fixed(12_345_678, 6), "x12.345678");
        assert_eq!(fixed(1_000_001, 6), "x1.000001");
        assert_eq!(fixed(1_500, 3), "x1.500");
        assert_eq!(fixed(999, 3), "x0.999");
        assert_eq!(fixed(1_000, 3), "x1.000");
        assert_eq!(fixed(u64::MAX, 6), "x18446744073709.551615");
        assert_eq!(fixed(u64::MAX, 3), "x18446744073709551.615");
        let values = (0..200_000u64).chain((0..64).map(|b| 1u64 << b)).chain((1..20).map(|e| 10u64.pow(e)));
        for m in values.flat_map(|m| [m, m.saturating_sub(1), m.saturating_add(1)]) {
            assert_eq!(fixed(m, 6), format!("x{}.{:06}", m / 1_000_000, m % 1_000_000));
            assert_eq!(fixed(m, 3), format!("x{}.{:03}", m / 1_000, m % 1_000));
        }
        let remote = |peer: Option<&str>| {
            String::from_utf8(
                Remote::new(peer.map(|p| p.parse::<std::net::SocketAddr>().unwrap().ip())).as_bytes().to_vec(),
            )
        };
        assert_eq!(remote(Some("10.0.0.255:1")).unwrap(), "10.0.0.255");
        assert_eq!(remote(Some("[::1]:80")).unwrap(), "::1");
        assert_eq!(remote(Some("[0:0:0:0:0:ffff:255.255.255.255]:1")).unwrap(), "::ffff:255.255.255.255");
        assert_eq!(
            remote(Some("[1111:2222:3333:4444:5555:6666:7777:8888]:1")).unwrap(),
            "1111:2222:3333:4444:5555:6666:7777:8888"
        );
        assert_eq!(remote(None).unwrap(), "unix");
    }
}
