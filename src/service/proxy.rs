//! `--trusted-proxy`: behind a load balancer or a reverse proxy, the access log names the
//! client the proxies name in `X-Forwarded-For`, not the proxy. The address is found as
//! nginx's realip module finds it (`real_ip_recursive on`): when the connection comes from a
//! trusted proxy, the header's addresses are read from the right, each trusted one skipped;
//! the first that is not trusted is the client. Anyone can send the header, so only trusted
//! proxies are believed, and only as far as the chain stays trusted.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

use http::{HeaderName, HeaderValue};

/// The header proxies name the client in.
pub(crate) static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// One `--trusted-proxy`: a network (an address is a network of one), or the unix sockets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Proxy {
    Net { addr: IpAddr, prefix: u8 },
    Unix,
}

impl FromStr for Proxy {
    type Err = String;

    fn from_str(s: &str) -> Result<Proxy, String> {
        let s = s.trim();
        if s == "unix" {
            return Ok(Proxy::Unix);
        }
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| {
            if addr.chars().any(|c| c.is_ascii_alphabetic() && !c.is_ascii_hexdigit()) {
                "host names are not resolved: write an IP address or a network".to_owned()
            } else {
                "expected an IP address, a network (10.0.0.0/8, fd00::/8) or `unix`".to_owned()
            }
        })?;
        let addr = addr.to_canonical();
        let bits = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => bits,
            Some(p) => match p.parse::<u8>() {
                Ok(p) if p <= bits => p,
                _ => return Err(format!("the prefix must be a number from 0 to {bits}")),
            },
        };
        let net = Proxy::Net { addr, prefix };
        if masked(addr, prefix) != addr {
            return Err(format!("bits are set past the /{prefix} prefix: write {}/{prefix}", masked(addr, prefix)));
        }
        Ok(net)
    }
}

impl std::fmt::Display for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Proxy::Net { addr, prefix } => write!(f, "{addr}/{prefix}"),
            Proxy::Unix => f.write_str("unix"),
        }
    }
}

/// `addr` with the bits past `prefix` cleared.
fn masked(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4((u32::from(a) & mask).into())
        }
        IpAddr::V6(a) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6((u128::from(a) & mask).into())
        }
    }
}

impl Proxy {
    fn contains(&self, ip: IpAddr) -> bool {
        match *self {
            Proxy::Net { addr, prefix } => addr.is_ipv4() == ip.is_ipv4() && masked(ip, prefix) == addr,
            Proxy::Unix => false,
        }
    }
}

/// The trusted proxies (empty: `X-Forwarded-For` is not read).
#[derive(Clone, Debug, Default)]
pub(crate) struct Trusted(pub(crate) Vec<Proxy>);

impl Trusted {
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `peer`: the connection's (`None`: a unix socket).
    fn trusts(&self, peer: Option<IpAddr>) -> bool {
        match peer {
            Some(ip) => self.0.iter().any(|p| p.contains(ip.to_canonical())),
            None => self.0.contains(&Proxy::Unix),
        }
    }

    /// The client the proxies name, when `peer` is a trusted proxy and `forwarded` (the
    /// request's `X-Forwarded-For` fields, in order) names one; otherwise `None`: the peer
    /// is the client. A chain of trusted proxies all the way gives its leftmost address; an
    /// entry that is not an address (`unknown`, garbage) ends the walk at the last one trusted.
    pub(crate) fn client<'a, I>(&self, peer: Option<IpAddr>, forwarded: I) -> Option<IpAddr>
    where
        I: DoubleEndedIterator<Item = &'a HeaderValue>,
    {
        if !self.trusts(peer) {
            return None;
        }
        let mut last = None;
        for value in forwarded.rev() {
            let Ok(text) = value.to_str() else { return last };
            for entry in text.rsplit(',').map(str::trim).filter(|e| !e.is_empty()) {
                let Some(ip) = entry_ip(entry) else { return last };
                if !self.trusts(Some(ip)) {
                    return Some(ip);
                }
                last = Some(ip);
            }
        }
        last
    }
}

/// An `X-Forwarded-For` entry: an address, with a port as some proxies add it
/// (`192.0.2.1:4711`, `[2001:db8::1]:4711`), or an IPv6 one in brackets.
fn entry_ip(entry: &str) -> Option<IpAddr> {
    let ip = entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<SocketAddr>().ok().map(|s| s.ip()))
        .or_else(|| entry.strip_prefix('[')?.strip_suffix(']')?.parse::<Ipv6Addr>().ok().map(IpAddr::V6))?;
    Some(ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trusted(list: &[&str]) -> Trusted {
        Trusted(list.iter().map(|s| s.parse().unwrap()).collect())
    }

    fn client(t: &Trusted, peer: &str, fields: &[&str]) -> Option<String> {
        let peer = (peer != "unix").then(|| peer.parse().unwrap());
        let values: Vec<HeaderValue> = fields.iter().map(|f| HeaderValue::from_str(f).unwrap()).collect();
        t.client(peer, values.iter()).map(|ip| ip.to_string())
    }

    #[test]
    fn parses_networks_and_explains_mistakes() {
        assert_eq!("10.0.0.0/8".parse(), Ok(Proxy::Net { addr: "10.0.0.0".parse().unwrap(), prefix: 8 }));
        assert_eq!(" 127.0.0.1 ".parse(), Ok(Proxy::Net { addr: "127.0.0.1".parse().unwrap(), prefix: 32 }));
        assert_eq!("fd00::/8".parse::<Proxy>().unwrap().to_string(), "fd00::/8");
        assert_eq!("::1".parse::<Proxy>().unwrap().to_string(), "::1/128");
        assert_eq!("0.0.0.0/0".parse::<Proxy>().unwrap().to_string(), "0.0.0.0/0");
        assert_eq!("unix".parse(), Ok(Proxy::Unix));
        let err = |s: &str| s.parse::<Proxy>().unwrap_err();
        assert_eq!(err("10.0.0.1/8"), "bits are set past the /8 prefix: write 10.0.0.0/8");
        assert_eq!(err("10.0.0.0/33"), "the prefix must be a number from 0 to 32");
        assert_eq!(err("::/129"), "the prefix must be a number from 0 to 128");
        assert_eq!(err("10.0.0.0/x"), "the prefix must be a number from 0 to 32");
        assert_eq!(err("lb.internal"), "host names are not resolved: write an IP address or a network");
        assert_eq!(err(""), "expected an IP address, a network (10.0.0.0/8, fd00::/8) or `unix`");
        assert_eq!(err("10.0.0.300"), "expected an IP address, a network (10.0.0.0/8, fd00::/8) or `unix`");
    }

    #[test]
    fn the_client_is_the_rightmost_untrusted_address() {
        let t = trusted(&["10.0.0.0/8", "fd00::/8"]);
        // Not from a trusted proxy: the header is anyone's, and ignored.
        assert_eq!(client(&t, "192.0.2.9", &["203.0.113.7"]), None);
        // From one: its address for the client.
        assert_eq!(client(&t, "10.1.2.3", &["203.0.113.7"]).as_deref(), Some("203.0.113.7"));
        // A client's own claim on the left is passed over for what the proxies saw.
        assert_eq!(client(&t, "10.1.2.3", &["1.1.1.1, 203.0.113.7, 10.9.9.9"]).as_deref(), Some("203.0.113.7"));
        // Several fields read as one list, in order.
        assert_eq!(client(&t, "10.1.2.3", &["1.1.1.1, 203.0.113.7", "10.9.9.9"]).as_deref(), Some("203.0.113.7"));
        // Ports, brackets, IPv6, IPv4 mapped into IPv6.
        assert_eq!(client(&t, "10.1.2.3", &["203.0.113.7:4711"]).as_deref(), Some("203.0.113.7"));
        assert_eq!(client(&t, "10.1.2.3", &["[2001:db8::1]:4711"]).as_deref(), Some("2001:db8::1"));
        assert_eq!(client(&t, "fd00::5", &["[2001:db8::1]"]).as_deref(), Some("2001:db8::1"));
        assert_eq!(client(&t, "::ffff:10.1.2.3", &["::ffff:203.0.113.7"]).as_deref(), Some("203.0.113.7"));
        // All trusted: the leftmost. Garbage ends the walk at the last trusted one.
        assert_eq!(client(&t, "10.1.2.3", &["10.5.5.5, 10.9.9.9"]).as_deref(), Some("10.5.5.5"));
        assert_eq!(client(&t, "10.1.2.3", &["203.0.113.7, unknown, 10.9.9.9"]).as_deref(), Some("10.9.9.9"));
        assert_eq!(client(&t, "10.1.2.3", &["unknown"]), None);
        assert_eq!(client(&t, "10.1.2.3", &[" , "]), None);
        assert_eq!(client(&t, "10.1.2.3", &[]), None);
        // Unix sockets only when trusted as such.
        assert_eq!(client(&t, "unix", &["203.0.113.7"]), None);
        let u = trusted(&["unix"]);
        assert_eq!(client(&u, "unix", &["203.0.113.7"]).as_deref(), Some("203.0.113.7"));
        assert_eq!(client(&u, "127.0.0.1", &["203.0.113.7"]), None);
    }
}
