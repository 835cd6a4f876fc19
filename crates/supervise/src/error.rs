//! The one error type of baton (the supervisor and the framework share it).

use std::fmt;
use std::io;

/// What went wrong, for callers that branch on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A bad command line or configuration value.
    Usage,
    /// A listener could not be bound or adopted.
    Listen,
    /// Another live instance holds the pid file.
    AlreadyRunning,
    /// No instance runs (for `stop`, `reload`, `status`, `reopen-logs`).
    NotRunning,
    /// A worker failed to start or to become ready.
    Worker,
    /// A file the configuration names (a TLS certificate, a key) cannot be used.
    Config,
    /// Something did not happen within its time limit.
    Timeout,
    /// Any other operating-system error (files, sockets, processes).
    Io,
}

/// An error: `{}` names what failed and the path, address or pid involved; the operating
/// system's reason is its [`source`](std::error::Error::source), and `{:#}` prints both
/// ("cannot bind 0.0.0.0:1234: address already in use"), as `anyhow` does for a chain.
#[derive(Debug)]
pub struct Error {
    kind: ErrorKind,
    context: String,
    source: Option<io::Error>,
}

impl Error {
    /// An error without an operating-system cause.
    pub fn new(kind: ErrorKind, context: impl Into<String>) -> Self {
        Error { kind, context: context.into(), source: None }
    }

    /// An error caused by `source`.
    pub fn io(kind: ErrorKind, context: impl Into<String>, source: io::Error) -> Self {
        Error { kind, context: context.into(), source: Some(source) }
    }

    /// A usage error (exit code 2).
    pub fn usage(context: impl Into<String>) -> Self {
        Error::new(ErrorKind::Usage, context)
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The exit code a command-line program should end with: 2 for usage errors, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        if self.kind == ErrorKind::Usage { 2 } else { 1 }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.context)?;
        match &self.source {
            Some(e) if f.alternate() => write!(f, ": {}", describe_io(e)),
            _ => Ok(()),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_ref().map(|e| e as _)
    }
}

/// `io::Error`'s Display appends "(os error 98)"; operators want the plain reason.
pub fn describe_io(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(code) => nix::errno::Errno::from_raw(code).desc().to_lowercase(),
        None => e.to_string(),
    }
}

/// The result type of baton's fallible functions.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_the_context_and_alternate_adds_the_reason_once() {
        let e = Error::io(ErrorKind::Listen, "cannot bind 0.0.0.0:1", io::Error::from_raw_os_error(libc::EADDRINUSE));
        assert_eq!(e.to_string(), "cannot bind 0.0.0.0:1");
        assert_eq!(format!("{e:#}"), "cannot bind 0.0.0.0:1: address already in use");
        let src = std::error::Error::source(&e).unwrap().to_string();
        assert!(!e.to_string().contains(&src));
        assert_eq!(format!("{:#}", Error::usage("bad")), "bad");
        assert_eq!(Error::usage("bad").exit_code(), 2);
        assert_eq!(e.exit_code(), 1);
    }
}
