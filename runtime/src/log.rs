//! Logging: `RUST_LOG` filtering (our crates at
//! `info` by default), `LOG_FORMAT` (`pretty` or `json`) and `LOG_DIR` (also write
//! daily-rolled files there).

use std::path::PathBuf;

use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::{fmt, prelude::*, EnvFilter};

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable, coloured on a terminal.
    Pretty,
    /// One JSON object per line, for production log pipelines.
    Json,
}

/// The logging flags every ringstore binary takes.
#[derive(Debug, Clone, clap::Args)]
pub struct LogConfig {
    /// Also write daily-rolled log files into this directory.
    #[arg(long, env = "LOG_DIR")]
    pub log_dir: Option<PathBuf>,
    /// `pretty` or `json`.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "pretty")]
    pub log_format: LogFormat,
}

impl LogConfig {
    /// Installs the global subscriber. Keep the returned guard alive until exit so that the
    /// file writer flushes.
    pub fn init(&self, file_prefix: &str) -> Option<WorkerGuard> {
        let filter = EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| EnvFilter::new("info,async_nats=warn"));
        let (file, guard) = match &self.log_dir {
            Some(dir) => {
                let appender = tracing_appender::rolling::daily(dir, format!("{file_prefix}.log"));
                let (writer, guard) = tracing_appender::non_blocking(appender);
                (Some(writer), Some(guard))
            }
            None => (None, None),
        };
        let registry = tracing_subscriber::registry().with(filter);
        match self.log_format {
            LogFormat::Pretty => registry
                .with(fmt::layer())
                .with(file.map(|w| fmt::layer().with_ansi(false).with_writer(w)))
                .init(),
            LogFormat::Json => registry
                .with(fmt::layer().json())
                .with(file.map(|w| fmt::layer().json().with_writer(w)))
                .init(),
        }
        guard
    }
}
