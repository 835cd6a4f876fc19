//! The control socket next to the pid file: the wire format, the master's server and the
//! command-line client.

pub mod client;
pub mod protocol;
pub(crate) mod server;
