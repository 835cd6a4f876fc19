//! The control protocol, both ends: one request line per connection (`stop`, `reload`,
//! `status`, `reopen-logs`); the master answers `ok` or `error` on the first line and the
//! details after, once the outcome is known, then closes.

use std::io;
use std::time::Duration;

/// A control command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Graceful shutdown; the client waits until the master exited.
    Stop,
    /// Zero-downtime reload; answered once the new generation serves (or failed).
    Reload,
    /// A reload answered only once the new generation passed its probation (or was rolled
    /// back).
    ReloadWaitProbation,
    /// Pid, uptime, generations, listeners, last reload, counters.
    Status,
    /// The same as one JSON object (`status --json`).
    StatusJson,
    /// Reopen the log file in every process.
    ReopenLogs,
}

impl Command {
    const ALL: [Command; 6] = [
        Command::Stop,
        Command::Reload,
        Command::ReloadWaitProbation,
        Command::Status,
        Command::StatusJson,
        Command::ReopenLogs,
    ];

    /// The request line's word.
    pub fn word(self) -> &'static str {
        match self {
            Command::Stop => "stop",
            Command::Reload => "reload",
            Command::ReloadWaitProbation => "reload-wait-probation",
            Command::Status => "status",
            Command::StatusJson => "status-json",
            Command::ReopenLogs => "reopen-logs",
        }
    }

    pub(crate) fn parse(line: &str) -> Option<Command> {
        Self::ALL.into_iter().find(|c| c.word() == line.trim())
    }

    pub(crate) fn request(self) -> String {
        format!("{}\n", self.word())
    }
}

/// The master's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// Done; the text says what happened.
    Ok(String),
    /// Failed; the text says why.
    Err(String),
}

impl Reply {
    pub(crate) fn encode(&self) -> String {
        match self {
            Reply::Ok(t) => format!("ok\n{t}\n"),
            Reply::Err(t) => format!("error\n{t}\n"),
        }
    }

    /// Parses an answer: its first line and everything after it.
    pub(crate) fn decode(first: &str, rest: String) -> io::Result<Reply> {
        match first.trim() {
            "ok" => Ok(Reply::Ok(rest.trim_end().to_owned())),
            "error" => Ok(Reply::Err(rest.trim().to_owned())),
            "" => Err(io::Error::new(io::ErrorKind::UnexpectedEof, "no answer")),
            other => Err(io::Error::other(format!("unexpected answer {other:?}"))),
        }
    }
}

/// `stop`'s answer: the master stops (`joined`: it was stopping already) and exits within
/// `within`, the deadline at which it kills what is left of its workers. The client waits
/// that long when no `--timeout` was given.
pub(crate) fn stopping(joined: bool, within: Duration) -> String {
    let already = if joined { "already " } else { "" };
    format!("{already}stopping: exits within {} ms", within.as_millis())
}

/// The deadline in [`stopping`]'s answer. `None` from a master that gave none (one started
/// from an older binary, still running).
pub(crate) fn stopping_within(text: &str) -> Option<Duration> {
    let ms = text.split_once("stopping: exits within ")?.1.strip_suffix(" ms")?;
    ms.parse().ok().map(Duration::from_millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_protocol_round_trip() {
        for c in Command::ALL {
            assert_eq!(Command::parse(&c.request()), Some(c));
        }
        assert_eq!(Command::parse("restart"), None);
        for r in [Reply::Ok("pid: 1\nuptime: 2s".into()), Reply::Err("shutting down".into())] {
            let wire = r.encode();
            let (first, rest) = wire.split_once('\n').unwrap();
            assert_eq!(Reply::decode(first, rest.to_owned()).unwrap(), r);
        }
        assert_eq!(Reply::decode("", String::new()).unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
        assert!(Reply::decode("maybe", String::new()).is_err());
    }

    #[test]
    fn stop_answers_carry_the_masters_deadline() {
        let d = Duration::from_millis(65_432);
        assert_eq!(stopping_within(&stopping(false, d)), Some(d));
        assert_eq!(stopping_within(&stopping(true, d)), Some(d));
        assert!(stopping(true, d).starts_with("already stopping"));
        // What a master from before the deadline was added answers.
        assert_eq!(stopping_within("stopping"), None);
        assert_eq!(stopping_within("already stopping"), None);
        assert_eq!(stopping_within("stopping: exits within soon ms"), None);
    }
}
