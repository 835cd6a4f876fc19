//! `x-request-id`: kept when the client sent a sane one, else made from a per-process prefix
//! and a counter; set on the request (for the app) and on the response.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use bytes::{Bytes, BytesMut};
use http::{HeaderName, HeaderValue, Request};

/// The request id header.
pub(crate) static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Keeps a well-formed `incoming` id (visible ASCII, at most 128 bytes; the request's first
/// `x-request-id`); otherwise makes one (`true`: made, hex digits and a dash).
pub(crate) fn ensure<B>(req: &mut Request<B>, incoming: Option<HeaderValue>) -> (HeaderValue, bool) {
    if let Some(v) = incoming {
        if !v.is_empty() && v.len() <= 128 && v.as_bytes().iter().all(|b| b.is_ascii_graphic()) {
            return (v, false);
        }
    }
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let hex = |d: u64| b"0123456789abcdef"[(d & 0xf) as usize];
    // `{prefix:08x}-`, written once per process.
    static PREFIX: OnceLock<[u8; 9]> = OnceLock::new();
    let prefix = PREFIX.get_or_init(|| {
        let t = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
        let p = (t.subsec_nanos() ^ std::process::id().rotate_left(16)) | 1;
        let mut b = [b'-'; 9];
        for (i, b) in b[..8].iter_mut().enumerate() {
            *b = hex(u64::from(p) >> (28 - 4 * i));
        }
        b
    });
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    // `{prefix}{n:x}`, without the formatting machinery (it is on every request).
    let mut buf = [0u8; 8 + 1 + 16];
    buf[..9].copy_from_slice(prefix);
    let digits = (64 - n.leading_zeros()).div_ceil(4).max(1) as usize;
    for i in 0..digits {
        buf[9 + i] = hex(n >> (4 * (digits - 1 - i)));
    }
    let v = HeaderValue::from_maybe_shared(carve(&buf[..9 + digits])).expect("hex is a valid header value");
    req.headers_mut().insert(X_REQUEST_ID.clone(), v.clone());
    (v, true)
}

thread_local! {
    /// Where this thread's ids are written: a block shared by the ids cut from it.
    static BLOCK: std::cell::RefCell<BytesMut> = std::cell::RefCell::new(BytesMut::new());
}

/// How many bytes of ids a block holds: under glibc's 1 KiB, above which an allocation
/// first consolidates every small free chunk (measured with callgrind: tens of thousands of
/// instructions per block while many requests are in flight).
const BLOCK_BYTES: usize = 960;

/// `id` as reference-counted bytes cut from a block: an id costs no allocation of its own,
/// and its copies (the request's header, the response's, the access log's) only a count
/// (bytes made from a slice would allocate twice: once for the copy, once more when first
/// shared).
fn carve(id: &[u8]) -> Bytes {
    BLOCK.with(|block| {
        let mut block = block.borrow_mut();
        if block.capacity() < id.len() {
            *block = BytesMut::with_capacity(BLOCK_BYTES);
        }
        block.extend_from_slice(id);
        block.split().freeze()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids() {
        let mut req = Request::new(());
        let (a, made) = ensure(&mut req, None);
        assert!(made);
        assert_eq!(req.headers()[&X_REQUEST_ID], a);
        let mut req2 = Request::new(());
        assert_ne!(ensure(&mut req2, None).0, a);
        let mut given = Request::builder().header("x-request-id", "abc-123").body(()).unwrap();
        let incoming = given.headers().get("x-request-id").cloned();
        assert_eq!(ensure(&mut given, incoming), (HeaderValue::from_static("abc-123"), false));
        let mut bad = Request::builder().header("x-request-id", "has space").body(()).unwrap();
        let incoming = bad.headers().get("x-request-id").cloned();
        let (id, made) = ensure(&mut bad, incoming);
        assert!(made);
        assert_ne!(id, "has space");
        assert_eq!(bad.headers()[&X_REQUEST_ID], id, "a bad id is replaced on the request");
        // Ids carved from one block stay intact as the block fills and is replaced.
        let ids: Vec<HeaderValue> = (0..1000).map(|_| ensure(&mut Request::new(()), None).0).collect();
        let distinct: std::collections::HashSet<&[u8]> = ids.iter().map(HeaderValue::as_bytes).collect();
        assert_eq!(distinct.len(), 1000);
        // The shape `{prefix:08x}-{n:x}`: nothing the access log would escape.
        let (id, _) = ensure(&mut Request::new(()), None);
        let (prefix, n) = id.to_str().unwrap().split_once('-').unwrap();
        assert_eq!(prefix.len(), 8);
        assert!(u32::from_str_radix(prefix, 16).is_ok() && u64::from_str_radix(n, 16).is_ok(), "{id:?}");
        assert!(!n.starts_with('0') || n == "0", "{id:?}");
    }
}
