//! [`Proc`]: one child process whose stdout and stderr are appended to a log file, started,
//! signalled and reaped by the harness, and SIGKILLed when dropped.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use tokio::time::Instant;

/// How many lines of each log [`dump_logs`] prints.
const DUMP_LINES: usize = 40;

/// How long a process stopped with SIGTERM may take to exit before it is killed.
pub const TERMINATE_TIMEOUT: Duration = Duration::from_secs(15);

/// How often the harness looks at a process it waits for.
const POLL: Duration = Duration::from_millis(20);

/// Env vars that must never leak from the test's environment into a child: each one would
/// change what the child does (extra log files, credentials the test server does not know).
const SCRUBBED_ENV: &[&str] = &["LOG_DIR", "NATS_USER", "NATS_PASSWORD"];

/// A restartable child process. The command line is fixed at construction, so `start` after
/// a kill runs exactly the same program with the same arguments and environment.
#[derive(Debug)]
pub(crate) struct Proc {
    name: String,
    program: PathBuf,
    args: Vec<OsString>,
    envs: Vec<(String, String)>,
    log: PathBuf,
    child: Option<Child>,
    stopped: bool,
}

impl Proc {
    /// A process description; nothing runs until [`Proc::start`].
    pub(crate) fn new(name: &str, program: impl Into<PathBuf>, log: &Path) -> Proc {
        Proc {
            name: name.to_owned(),
            program: program.into(),
            args: Vec::new(),
            envs: Vec::new(),
            log: log.to_owned(),
            child: None,
            stopped: false,
        }
    }

    /// Adds a command-line argument.
    pub(crate) fn arg(mut self, arg: impl Into<OsString>) -> Proc {
        self.args.push(arg.into());
        self
    }

    /// Sets an environment variable for the child.
    pub(crate) fn env(mut self, key: &str, value: impl ToString) -> Proc {
        self.envs.push((key.to_owned(), value.to_string()));
        self
    }

    /// The file the child's output is appended to.
    pub(crate) fn log_path(&self) -> &Path {
        &self.log
    }

    /// Starts the process. Panics if it is already running or cannot be spawned.
    pub(crate) fn start(&mut self) {
        assert!(!self.is_running(), "{} is already running", self.name);
        let mut log = open_log(&self.log);
        let _ = writeln!(log, "==== harness: starting {} ====", self.name);
        let stderr = log.try_clone().expect("log file handle clones");
        let mut command = Command::new(&self.program);
        for key in SCRUBBED_ENV {
            command.env_remove(key);
        }
        let child = command
            .args(&self.args)
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {} ({}): {e}",
                    self.name,
                    self.program.display()
                )
            });
        self.child = Some(child);
        self.stopped = false;
    }

    /// The OS process id while the process is running.
    pub(crate) fn pid(&mut self) -> Option<u32> {
        if self.is_running() {
            self.child.as_ref().map(Child::id)
        } else {
            None
        }
    }

    /// True while the process exists (a SIGSTOPped process is running).
    pub(crate) fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// SIGKILL, then reap. A no-op when the process is not running.
    pub(crate) fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.stopped = false;
    }

    /// Sends `signal` (a name as `kill -s` takes it: `TERM`, `STOP`, `CONT`). Panics if the
    /// process is not running.
    pub(crate) fn signal(&mut self, signal: &str) {
        let pid = self
            .pid()
            .unwrap_or_else(|| panic!("cannot send SIG{signal} to {}: not running", self.name));
        let status = Command::new("kill")
            .args(["-s", signal, &pid.to_string()])
            .status()
            .unwrap_or_else(|e| panic!("cannot run `kill -s {signal} {pid}`: {e}"));
        assert!(
            status.success(),
            "`kill -s {signal} {pid}` failed: {status}"
        );
        match signal {
            "STOP" => self.stopped = true,
            "CONT" => self.stopped = false,
            _ => {}
        }
    }

    /// True after SIGSTOP until SIGCONT (or a kill).
    pub(crate) fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// Waits up to `timeout` for the process to exit on its own; `None` if it is still running.
    pub(crate) async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let child = self.child.as_mut()?;
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                self.stopped = false;
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// SIGTERM (after SIGCONT if stopped), then waits up to `timeout` for the exit. Panics
    /// (after a SIGKILL) if the process ignores it: a graceful shutdown that hangs is a bug.
    pub(crate) async fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        if self.stopped {
            self.signal("CONT");
        }
        self.signal("TERM");
        match self.wait_exit(timeout).await {
            Some(status) => status,
            None => {
                self.kill9();
                panic!("{} did not exit within {timeout:?} of SIGTERM", self.name);
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn open_log(path: &Path) -> File {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .unwrap_or_else(|e| panic!("cannot create log dir {}: {e}", dir.display()));
    }
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("cannot open log {}: {e}", path.display()))
}

/// The last `n` lines of a log file (lossy UTF-8), or a note that it cannot be read.
pub(crate) fn tail(path: &Path, n: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// Prints the last 40 lines of every log file in `dir` to stderr.
pub fn dump_logs(dir: &Path) {
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries.filter_map(|e| e.ok().map(|e| e.path())).collect(),
        Err(e) => {
            eprintln!("(no logs in {}: {e})", dir.display());
            return;
        }
    };
    files.sort();
    for file in files {
        let name = file.file_name().unwrap_or_default().to_string_lossy();
        eprintln!("---------- last {DUMP_LINES} lines of {name} ----------");
        eprintln!("{}", tail(&file, DUMP_LINES));
    }
    eprintln!("---------- end of logs ({}) ----------", dir.display());
}
