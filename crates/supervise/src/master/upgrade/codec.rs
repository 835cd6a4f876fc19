//! The text a master hands to the binary it executes in its place: one record per line, a
//! key and its fields separated by spaces. A field escapes `%`, spaces, control characters
//! and DEL as `%XX`; `-` is "none", `%E` the empty text. Times are nanoseconds from the
//! moment of writing (negative: past), as monotonic time runs on across `execve` but an
//! [`Instant`] has no number to pass.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use crate::exe::BinaryId;

/// Builds the text, record by record.
#[derive(Debug, Default)]
pub(crate) struct Writer {
    text: String,
    now: Option<Instant>,
}

impl Writer {
    pub(crate) fn new(now: Instant) -> Writer {
        Writer { text: String::new(), now: Some(now) }
    }

    /// Starts a record.
    pub(crate) fn line(&mut self, key: &str) -> &mut Self {
        if !self.text.is_empty() {
            self.text.push('\n');
        }
        self.text.push_str(key);
        self
    }

    pub(crate) fn s(&mut self, v: &str) -> &mut Self {
        self.text.push(' ');
        if v.is_empty() {
            self.text.push_str("%E");
        } else if v == "-" {
            self.text.push_str("%2D");
        } else {
            for c in v.chars() {
                if c == '%' || c.is_ascii_control() || c == ' ' {
                    let _ = write!(self.text, "%{:02X}", c as u32);
                } else {
                    self.text.push(c);
                }
            }
        }
        self
    }

    pub(crate) fn opt_s(&mut self, v: Option<&str>) -> &mut Self {
        match v {
            Some(v) => self.s(v),
            None => self.none(),
        }
    }

    fn none(&mut self) -> &mut Self {
        self.text.push_str(" -");
        self
    }

    pub(crate) fn n(&mut self, v: impl std::fmt::Display) -> &mut Self {
        let _ = write!(self.text, " {v}");
        self
    }

    pub(crate) fn opt_n(&mut self, v: Option<impl std::fmt::Display>) -> &mut Self {
        match v {
            Some(v) => self.n(v),
            None => self.none(),
        }
    }

    pub(crate) fn flag(&mut self, v: bool) -> &mut Self {
        self.n(u8::from(v))
    }

    pub(crate) fn t(&mut self, t: Instant) -> &mut Self {
        let now = self.now.unwrap_or(t);
        let ns = match t.checked_duration_since(now) {
            Some(d) => d.as_nanos() as i128,
            None => -(now.duration_since(t).as_nanos() as i128),
        };
        self.n(ns)
    }

    pub(crate) fn opt_t(&mut self, t: Option<Instant>) -> &mut Self {
        match t {
            Some(t) => self.t(t),
            None => self.none(),
        }
    }

    pub(crate) fn bin(&mut self, b: BinaryId) -> &mut Self {
        self.s(&b.encode())
    }

    pub(crate) fn opt_bin(&mut self, b: Option<BinaryId>) -> &mut Self {
        match b {
            Some(b) => self.bin(b),
            None => self.none(),
        }
    }

    pub(crate) fn finish(self) -> String {
        self.text
    }
}

/// One record read back.
#[derive(Debug)]
pub(crate) struct Record {
    pub(crate) key: String,
    fields: std::vec::IntoIter<Option<String>>,
    now: Instant,
}

/// Splits `text` into its records; `now` is the moment times are read against.
pub(crate) fn records(text: &str, now: Instant) -> Result<Vec<Record>, String> {
    text.split('\n')
        .filter(|l| !l.is_empty())
        .map(|line| {
            let mut parts = line.split(' ');
            let key = parts.next().unwrap_or_default().to_owned();
            let fields = parts.map(unescape).collect::<Result<Vec<_>, _>>()?;
            Ok(Record { key, fields: fields.into_iter(), now })
        })
        .collect()
}

fn unescape(f: &str) -> Result<Option<String>, String> {
    match f {
        "-" => return Ok(None),
        "%E" => return Ok(Some(String::new())),
        _ => {}
    }
    let mut out = Vec::with_capacity(f.len());
    let mut bytes = f.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hex = [bytes.next(), bytes.next()];
            let hex = match hex {
                [Some(h), Some(l)] => [h, l],
                _ => return Err(format!("a cut escape in {f:?}")),
            };
            let v = std::str::from_utf8(&hex).ok().and_then(|h| u8::from_str_radix(h, 16).ok());
            out.push(v.ok_or_else(|| format!("a bad escape in {f:?}"))?);
        } else {
            out.push(b);
        }
    }
    String::from_utf8(out).map(Some).map_err(|_| format!("not UTF-8: {f:?}"))
}

impl Record {
    /// Reads its times against a moment `gap` earlier than the one given to [`records`]: the
    /// moment the text was written, when it took `gap` to reach the reader.
    pub(crate) fn written_before(&mut self, gap: Duration) {
        self.now = self.now.checked_sub(gap).unwrap_or(self.now);
    }

    fn next(&mut self) -> Result<Option<String>, String> {
        self.fields.next().ok_or_else(|| format!("record {:?} has too few fields", self.key))
    }

    pub(crate) fn opt_s(&mut self) -> Result<Option<String>, String> {
        self.next()
    }

    pub(crate) fn s(&mut self) -> Result<String, String> {
        let key = self.key.clone();
        self.next()?.ok_or_else(|| format!("record {key:?}: a field is missing"))
    }

    pub(crate) fn opt_n<T: std::str::FromStr>(&mut self) -> Result<Option<T>, String> {
        let key = self.key.clone();
        self.next()?.map(|v| v.parse().map_err(|_| format!("record {key:?}: {v:?} is not a number"))).transpose()
    }

    pub(crate) fn n<T: std::str::FromStr>(&mut self) -> Result<T, String> {
        let key = self.key.clone();
        self.opt_n()?.ok_or_else(|| format!("record {key:?}: a number is missing"))
    }

    pub(crate) fn flag(&mut self) -> Result<bool, String> {
        Ok(self.n::<u8>()? != 0)
    }

    pub(crate) fn opt_t(&mut self) -> Result<Option<Instant>, String> {
        let now = self.now;
        Ok(self.opt_n::<i128>()?.map(|ns| {
            let d = Duration::from_nanos(ns.unsigned_abs().min(u128::from(u64::MAX)) as u64);
            // A time before the clock's origin cannot be: the origin then.
            if ns >= 0 { now + d } else { now.checked_sub(d).unwrap_or(now) }
        }))
    }

    pub(crate) fn t(&mut self) -> Result<Instant, String> {
        let key = self.key.clone();
        self.opt_t()?.ok_or_else(|| format!("record {key:?}: a time is missing"))
    }

    pub(crate) fn opt_bin(&mut self) -> Result<Option<BinaryId>, String> {
        self.opt_s()?
            .map(|s| BinaryId::decode(&s).ok_or_else(|| format!("{s:?} is not a binary's identity")))
            .transpose()
    }

    pub(crate) fn bin(&mut self) -> Result<BinaryId, String> {
        let key = self.key.clone();
        self.opt_bin()?.ok_or_else(|| format!("record {key:?}: a binary is missing"))
    }

    /// Every field was read: a record with more was written by a version that knows more.
    pub(crate) fn end(mut self) -> Result<(), String> {
        match self.fields.next() {
            None => Ok(()),
            Some(_) => Err(format!("record {:?} has more fields than this version reads", self.key)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_read_back_as_written() {
        let now = Instant::now();
        let mut w = Writer::new(now);
        let texts = ["", "-", "a b", "100%", "line\nbreak", "tab\there", "ünïcode ✓", "%E", "%2D"];
        w.line("texts");
        for t in texts {
            w.s(t);
        }
        w.opt_s(None).opt_s(Some("x"));
        let past = now - Duration::from_millis(1500);
        let future = now + Duration::from_secs(7);
        w.line("nums").n(42u64).n(-7i64).opt_n(None::<u8>).flag(true).flag(false);
        w.line("times").t(past).t(future).opt_t(None);
        let b = BinaryId::fake(9);
        w.line("bins").bin(b).opt_bin(None);
        let text = w.finish();
        assert_eq!(text.lines().count(), 4, "{text}");
        let later = now + Duration::from_secs(2);
        let mut rs = records(&text, later).unwrap().into_iter();
        let mut r = rs.next().unwrap();
        assert_eq!(r.key, "texts");
        for t in texts {
            assert_eq!(r.s().unwrap(), t);
        }
        assert_eq!(r.opt_s().unwrap(), None);
        assert_eq!(r.opt_s().unwrap().as_deref(), Some("x"));
        r.end().unwrap();
        let mut r = rs.next().unwrap();
        assert_eq!((r.n::<u64>().unwrap(), r.n::<i64>().unwrap()), (42, -7));
        assert_eq!(r.opt_n::<u8>().unwrap(), None);
        assert!(r.flag().unwrap() && !r.flag().unwrap());
        r.end().unwrap();
        // Read two seconds later: the same distances from the reading.
        let mut r = rs.next().unwrap();
        assert_eq!(r.t().unwrap(), later - Duration::from_millis(1500));
        assert_eq!(r.t().unwrap(), later + Duration::from_secs(7));
        assert_eq!(r.opt_t().unwrap(), None);
        let mut r = rs.next().unwrap();
        assert_eq!((r.bin().unwrap(), r.opt_bin().unwrap()), (b, None));
    }

    #[test]
    fn bad_text_is_an_error_not_a_guess() {
        let now = Instant::now();
        assert!(records("k %4", now).is_err());
        assert!(records("k %ZZ", now).is_err());
        assert!(records("k %FF", now).is_err(), "not UTF-8");
        let mut r = records("k 1", now).unwrap().pop().unwrap();
        assert_eq!(r.n::<u8>().unwrap(), 1);
        assert!(r.n::<u8>().unwrap_err().contains("too few fields"));
        let mut r = records("k x 2", now).unwrap().pop().unwrap();
        assert!(r.n::<u8>().unwrap_err().contains("not a number"));
        let r = records("k 1 2", now).unwrap().pop().unwrap();
        assert!(r.end().unwrap_err().contains("more fields"));
        let mut r = records("k -", now).unwrap().pop().unwrap();
        assert!(r.s().unwrap_err().contains("missing"));
    }
}
