//! [`Browser`]: a headless Chromium driven through `chromedriver` (WebDriver, with
//! `fantoccini`), for scenarios that look at the gateway's pages as a person would.
//!
//! chromedriver runs on a free loopback port in its own process group, its output appended to
//! a log file (put it in the cluster's `logs/` and it is printed with the others when a test
//! fails); dropping the [`Browser`] SIGKILLs the group, Chromium included. The browser keeps
//! every console message, which [`Browser::console_log`] reads back.
//!
//! Programs: `$RINGSTORE_CHROMEDRIVER` and `$RINGSTORE_CHROMIUM`, else Debian's
//! `chromium-driver` and `chromium` (`/usr/bin/chromedriver`, `/usr/bin/chromium`). Without
//! them [`BrowserBins::or_skip`] skips the scenario, or fails it when
//! `RINGSTORE_REQUIRE_BROWSER=1` (CI).

use std::fs::OpenOptions;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{json, Value};
use tempfile::TempDir;
use tokio::time::Instant;

/// How long chromedriver may take to answer `GET /status` with `ready`, and Chromium to open.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The programs a browser scenario needs.
#[derive(Debug, Clone)]
pub struct BrowserBins {
    /// The WebDriver server.
    pub chromedriver: PathBuf,
    /// The browser it starts.
    pub chromium: PathBuf,
}

impl BrowserBins {
    /// The programs, or why they cannot be used.
    pub fn locate() -> Result<BrowserBins, String> {
        let path = |var: &str, default: &str| {
            std::env::var_os(var).map_or_else(|| PathBuf::from(default), PathBuf::from)
        };
        let bins = BrowserBins {
            chromedriver: path("RINGSTORE_CHROMEDRIVER", "/usr/bin/chromedriver"),
            chromium: path("RINGSTORE_CHROMIUM", "/usr/bin/chromium"),
        };
        for bin in [&bins.chromedriver, &bins.chromium] {
            if !bin.is_file() {
                return Err(format!("{} not found", bin.display()));
            }
        }
        Ok(bins)
    }

    /// The programs; without them `None` after a loud skip message naming `scenario`, or a
    /// panic when `RINGSTORE_REQUIRE_BROWSER=1`.
    pub fn or_skip(scenario: &str) -> Option<BrowserBins> {
        match BrowserBins::locate() {
            Ok(bins) => Some(bins),
            Err(why) if std::env::var("RINGSTORE_REQUIRE_BROWSER").as_deref() == Ok("1") => {
                panic!("RINGSTORE_REQUIRE_BROWSER=1 but {why}; apt-get install chromium chromium-driver")
            }
            Err(why) => {
                eprintln!(
                    "\n!!!!! skipped: no browser ({why}); apt-get install chromium \
                     chromium-driver to run {scenario} !!!!!\n"
                );
                None
            }
        }
    }
}

/// One message of the browser's console (or of Chromium about the page: failed loads, CSP).
#[derive(Debug, Clone, PartialEq)]
pub struct ConsoleEntry {
    /// `SEVERE` (errors), `WARNING`, `INFO`, `DEBUG`.
    pub level: String,
    /// The text, prefixed by its source location.
    pub message: String,
}

/// chromedriver in its own process group, SIGKILLed (Chromium included) on drop.
#[derive(Debug)]
struct Driver {
    child: Child,
    url: String,
    log: PathBuf,
    /// Chromium's profile, deleted after it.
    profile: TempDir,
}

impl Driver {
    fn spawn(bins: &BrowserBins, log: &Path) -> Driver {
        if let Some(dir) = log.parent() {
            std::fs::create_dir_all(dir)
                .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        }
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", log.display()));
        let err = out.try_clone().expect("log file handle clones");
        let port = crate::free_port();
        let child = Command::new(&bins.chromedriver)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bins.chromedriver.display()));
        Driver {
            child,
            url: format!("http://127.0.0.1:{port}"),
            log: log.to_owned(),
            profile: tempfile::tempdir().expect("a browser profile dir"),
        }
    }

    /// Waits until `GET /status` says `ready`.
    async fn wait_ready(&mut self) {
        let http = crate::client(None);
        let url = format!("{}/status", self.url);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.fail(&format!("chromedriver exited: {status}"));
            }
            let reply = http.get(&url).timeout(Duration::from_secs(2)).send().await;
            if let Ok(reply) = reply {
                if let Ok(body) = reply.json::<Value>().await {
                    if body["value"]["ready"] == json!(true) {
                        return;
                    }
                }
            }
            if Instant::now() >= deadline {
                self.fail("chromedriver not ready within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn fail(&self, what: &str) -> ! {
        let log = crate::process::tail(&self.log, 40);
        panic!("{what}; last lines of {}:\n{log}", self.log.display())
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill")
            .args(["-s", "KILL", "--", &group])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.wait();
    }
}

/// A headless Chromium under chromedriver. Call [`Browser::close`] at the end; dropping it
/// without kills both.
#[derive(Debug)]
pub struct Browser {
    client: Client,
    driver: Driver,
}

impl Browser {
    /// Starts chromedriver (output appended to `log`) and a headless Chromium with a fresh
    /// profile and a `width`×`height` window. Panics, with the log, if either does not start.
    pub async fn start(bins: &BrowserBins, log: &Path, (width, height): (u32, u32)) -> Browser {
        let mut driver = Driver::spawn(bins, log);
        driver.wait_ready().await;
        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": bins.chromium,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    format!("--window-size={width},{height}"),
                    format!("--user-data-dir={}", driver.profile.path().display()),
                    "--lang=en-US",
                ],
            },
            "goog:loggingPrefs": { "browser": "ALL" },
        });
        let Value::Object(capabilities) = capabilities else {
            unreachable!("a JSON object")
        };
        let mut builder = ClientBuilder::new(HttpConnector::new());
        let connect = builder.capabilities(capabilities).connect(&driver.url);
        let client = match tokio::time::timeout(START_TIMEOUT, connect).await {
            Ok(Ok(client)) => client,
            Ok(Err(e)) => driver.fail(&format!("no browser session: {e}")),
            Err(_) => driver.fail("no browser session within 30 s"),
        };
        Browser { client, driver }
    }

    /// The WebDriver client, for what the helpers do not cover.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Opens `url` and waits for its load event.
    pub async fn goto(&self, url: &str) {
        if let Err(e) = self.client.goto(url).await {
            panic!("cannot open {url}: {e}");
        }
    }

    /// Runs `script` (a function body; `arguments[0]`.. are `args`) in the page, returning
    /// what it returns.
    pub async fn run(&self, script: &str, args: Vec<Value>) -> Value {
        self.client
            .execute(script, args)
            .await
            .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    /// How many elements match the CSS selector `css`.
    pub async fn count(&self, css: &str) -> usize {
        let script = "return document.querySelectorAll(arguments[0]).length;";
        let n = self.run(script, vec![json!(css)]).await;
        n.as_u64().unwrap_or_default() as usize
    }

    /// The attribute `name` of the first element matching `css`, if both exist.
    pub async fn attribute(&self, css: &str, name: &str) -> Option<String> {
        let script = "const e = document.querySelector(arguments[0]); \
                      return e ? e.getAttribute(arguments[1]) : null;";
        let value = self.run(script, vec![json!(css), json!(name)]).await;
        value.as_str().map(str::to_owned)
    }

    /// Saves a PNG of the window to `path` (creating its directory).
    pub async fn screenshot(&self, path: &Path) {
        let png = self
            .client
            .screenshot()
            .await
            .unwrap_or_else(|e| panic!("no screenshot: {e}"));
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        }
        std::fs::write(path, png)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    }

    /// The console messages since the previous call, through chromedriver's
    /// `POST /session/{id}/se/log` (which fantoccini does not wrap).
    pub async fn console_log(&self) -> Vec<ConsoleEntry> {
        let session = self.client.session_id().await.ok().flatten();
        let session = session.expect("a WebDriver session");
        let url = format!("{}/session/{session}/se/log", self.driver.url);
        let reply = crate::client(None)
            .post(&url)
            .json(&json!({ "type": "browser" }))
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {url}: {e}"));
        let status = reply.status();
        let body: Value = reply
            .json()
            .await
            .unwrap_or_else(|e| panic!("POST {url} → {status}: not JSON: {e}"));
        assert!(status.is_success(), "POST {url} → {status}: {body}");
        let entries = body["value"].as_array().cloned().unwrap_or_default();
        entries
            .iter()
            .map(|entry| ConsoleEntry {
                level: entry["level"].as_str().unwrap_or_default().to_owned(),
                message: entry["message"].as_str().unwrap_or_default().to_owned(),
            })
            .collect()
    }

    /// Ends the session (Chromium exits); chromedriver is killed when `self` drops.
    pub async fn close(self) {
        let Browser { client, driver } = self;
        if let Ok(Err(e)) = tokio::time::timeout(Duration::from_secs(10), client.close()).await {
            eprintln!("closing the browser session: {e}");
        }
        drop(driver);
    }
}

/// Where scenarios leave files for people (screenshots): `$RINGSTORE_ARTIFACTS`, else
/// `artifacts/` at the workspace root. Created if missing.
pub fn artifacts_dir() -> PathBuf {
    let dir = match std::env::var_os("RINGSTORE_ARTIFACTS") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("the workspace root")
            .join("artifacts"),
    };
    std::fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    dir
}
