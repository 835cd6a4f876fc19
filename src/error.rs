//! The one error type of the library.

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
    /// The TLS certificate or key cannot be used.
    Tls,
    /// Something did not happen within its time limit.
    Timeout,
    /// Any other operating-system error (files, sockets, processes).
    Io,
}

/// An error from baton: its `Display` names what failed and the path, address or pid involved,
/// followed by the operating system's reason where there is one.
#[derive(Debug)]
pub struct Error {
    kind: ErrorKind,
    context: String,
    source: Option<io::Error>,
}

impl Error {
    pub(crate) fn new(kind: ErrorKind, context: impl Into<String>) -> Self {
        Error { kind, context: context.into(), source: None }
    }

    pub(crate) fn io(kind: ErrorKind, context: impl Into<String>, source: io::Error) -> Self {
        Error { kind, context: context.into(), source: Some(source) }
    }

    pub(crate) fn usage(context: impl Into<String>) -> Self {
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
        if let Some(e) = &self.source {
            write!(f, ": {}", describe_io(e))?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_ref().map(|e| e as _)
    }
}

/// `io::Error`'s Display appends "(os error 98)"; operators want the plain reason.
pub(crate) fn describe_io(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(code) => nix::errno::Errno::from_raw(code).desc().to_lowercase(),
        None => e.to_string(),
    }
}

/// The library's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
