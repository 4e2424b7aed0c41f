//! The log subscriber: `[log] format = "text" | "json"` and `level`, terminal colours only when the log
//! stream is a terminal, and every line passed through a [`Scrubber`] before it is written, so that no
//! configured secret and no URL password reaches the log whatever a message carries.

use std::io::{IsTerminal, Write};
use std::sync::Arc;

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};
use crate::redact::Scrubber;

/// Where log lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogStream {
    /// Standard output (`serve`: what container platforms and supervisors collect).
    Stdout,
    /// Standard error (the other subcommands, whose standard output is their result).
    Stderr,
}

impl LogStream {
    fn is_terminal(self) -> bool {
        match self {
            LogStream::Stdout => std::io::stdout().is_terminal(),
            LogStream::Stderr => std::io::stderr().is_terminal(),
        }
    }
}

/// Makes one [`ScrubbingWriter`] per log event.
#[derive(Clone)]
pub(crate) struct ScrubbingMakeWriter {
    stream: LogStream,
    scrubber: Arc<Scrubber>,
}

/// Collects one event's formatted text and writes it, scrubbed, in one piece when dropped.
pub(crate) struct ScrubbingWriter {
    stream: LogStream,
    scrubber: Arc<Scrubber>,
    buffer: Vec<u8>,
}

impl Write for ScrubbingWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.buffer.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for ScrubbingWriter {
    fn drop(&mut self) {
        if self.buffer.is_empty() {
            return;
        }
        let text = String::from_utf8_lossy(&self.buffer);
        let clean = self.scrubber.scrub(&text);
        // A log line that cannot be written has nowhere else to go.
        let _ = match self.stream {
            LogStream::Stdout => std::io::stdout().lock().write_all(clean.as_bytes()),
            LogStream::Stderr => std::io::stderr().lock().write_all(clean.as_bytes()),
        };
    }
}

impl<'a> MakeWriter<'a> for ScrubbingMakeWriter {
    type Writer = ScrubbingWriter;

    fn make_writer(&'a self) -> Self::Writer {
        ScrubbingWriter {
            stream: self.stream,
            scrubber: self.scrubber.clone(),
            buffer: Vec::with_capacity(256),
        }
    }
}

/// Installs the process's log subscriber. `config.level` is a `tracing` filter (`info`,
/// `info,sqlx=warn`); `config check` has validated it, a bad one here falls back to `info`.
pub fn init(config: &LogConfig, stream: LogStream, scrubber: Scrubber) -> anyhow::Result<()> {
    let filter = EnvFilter::try_new(&config.level).unwrap_or_else(|_| EnvFilter::new("info"));
    let writer = ScrubbingMakeWriter {
        stream,
        scrubber: Arc::new(scrubber),
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer);
    let result = match config.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        LogFormat::Text => builder.with_ansi(stream.is_terminal()).try_init(),
    };
    result.map_err(|e| anyhow::anyhow!("installing the log subscriber: {e}"))
}
