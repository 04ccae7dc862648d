//! The status page (`GET /status`) in a real headless Chromium, against real processes: it
//! shows every node ready, a killed node down within 5 s and ready again after its restart,
//! a write among its recent changes and in its partition's log, in a desktop and a
//! phone-sized window, with nothing in the browser console at level SEVERE. Then the edges:
//! a restarted gateway (the page says so, keeps polling, and its change feed resumes), and a
//! tab without a key (the page asks for one).
//!
//! Screenshots go to `$RINGSTORE_ARTIFACTS` (default `artifacts/` at the workspace root).
//! Without chromedriver and Chromium the scenario prints `skipped: no browser` and passes,
//! unless `RINGSTORE_REQUIRE_BROWSER=1` (CI), which makes that a failure.

use std::time::Duration;

use fantoccini::Locator;
use integration_tests::{
    artifacts_dir, eventually, expect, Browser, BrowserBins, Cluster, ConsoleEntry,
};
use protocol::partition::partition_of;
use serde_json::{json, Value};
use tokio::time::Instant;

/// The desktop window; the phone-sized one is `PHONE`.
const DESKTOP: (u32, u32) = (1280, 1600);
const PHONE: (u32, u32) = (400, 900);
/// What the page promises: a node silent for 3 s is down, and it polls every second.
const DOWN_WITHIN: Duration = Duration::from_secs(5);
/// How long the page may take for anything else (a loaded 2-core machine).
const PATIENCE: Duration = Duration::from_secs(30);
const ALL_READY: &str = "[data-node][data-state=\"ready\"]";

/// The state the page shows for `node` (`data-state` of its `[data-node]` element).
async fn state(browser: &Browser, node: &str) -> Option<String> {
    let css = format!("[data-node=\"{node}\"]");
    browser.attribute(&css, "data-state").await
}

/// Waits until the page shows `node` in `wanted` state; returns how long that took.
async fn wait_state(browser: &Browser, node: &str, wanted: &str, deadline: Duration) -> Duration {
    let start = Instant::now();
    eventually(deadline, || async {
        (state(browser, node).await.as_deref() == Some(wanted)).then_some(())
    })
    .await;
    start.elapsed()
}

/// Waits until the first element matching `css` has `attribute="wanted"`.
async fn wait_attribute(browser: &Browser, css: &str, attribute: &str, wanted: &str) {
    eventually(PATIENCE, || async {
        let value = browser.attribute(css, attribute).await;
        (value.as_deref() == Some(wanted)).then_some(())
    })
    .await;
}

/// Waits until `count` elements match `css`.
async fn wait_count(browser: &Browser, css: &str, count: usize) {
    eventually(PATIENCE, || async {
        (browser.count(css).await == count).then_some(())
    })
    .await;
}

/// Creates record `id` through the REST API and waits until the page lists the change;
/// returns the text of its entry.
async fn write_and_see(cluster: &Cluster, browser: &Browser, id: &str, name: &str) -> String {
    let user = json!({ "id": id, "name": name, "email": "ada@example.com", "group": 7 });
    expect(cluster.create(&user).await, 201).await;
    let script = "const item = [...document.querySelectorAll('#changes [data-change-id]')] \
                      .find((e) => e.getAttribute('data-change-id') === arguments[0]); \
                  return item ? item.textContent : null;";
    eventually(PATIENCE, || async {
        let text = browser.run(script, vec![json!(id)]).await;
        text.as_str().map(str::to_owned)
    })
    .await
}

/// Prints the console messages since the last call and returns those of level SEVERE
/// whose text contains none of `expected`.
async fn console_errors(browser: &Browser, expected: &[&str]) -> Vec<ConsoleEntry> {
    let console = browser.console_log().await;
    for entry in &console {
        eprintln!("console {}: {}", entry.level, entry.message);
    }
    console
        .into_iter()
        .filter(|e| e.level == "SEVERE" && !expected.iter().any(|x| e.message.contains(x)))
        .collect()
}

#[tokio::test]
async fn the_status_page_shows_nodes_fail_and_recover_and_changes_arrive() {
    let Some(bins) = BrowserBins::or_skip("status_page") else {
        return;
    };
    let dir = artifacts_dir();
    let mut cluster = Cluster::start(3).await;
    let log = cluster.logs_dir().join("chromedriver.log");
    let browser = Browser::start(&bins, &log, DESKTOP).await;
    let key = cluster.api_key().key.clone();

    eprintln!("== phase: open /status with the API key in the fragment; every node ready");
    browser
        .goto(&format!("{}/status#key={key}", cluster.base_url()))
        .await;
    eventually(Duration::from_secs(15), || async {
        (browser.count(ALL_READY).await == 3).then_some(())
    })
    .await;
    for node in ["db-0", "db-1", "db-2"] {
        assert_eq!(state(&browser, node).await.as_deref(), Some("ready"));
    }
    let address = browser.client().current_url().await.expect("the URL");
    assert!(!address.as_str().contains(&key), "key in the address bar");
    assert_eq!(
        browser.count("#auth:not([hidden])").await,
        0,
        "a key prompt"
    );

    eprintln!("== phase: kill -9 db-1; the page shows it down within {DOWN_WITHIN:?}");
    cluster.node(1).kill9();
    let took = wait_state(&browser, "db-1", "down", PATIENCE).await;
    eprintln!("db-1 shown down {took:?} after the kill");
    assert!(
        took <= DOWN_WITHIN,
        "db-1 shown down {took:?} after the kill"
    );
    for node in ["db-0", "db-2"] {
        wait_state(&browser, node, "ready", Duration::from_secs(10)).await;
    }
    let down = dir.join("status-page-node-down.png");
    browser.screenshot(&down).await;
    println!("screenshot: {}", down.display());

    eprintln!("== phase: restart db-1; the page shows it ready again");
    cluster.node(1).start();
    let took = wait_state(&browser, "db-1", "ready", PATIENCE).await;
    eprintln!("db-1 shown ready {took:?} after its restart");

    eprintln!("== phase: a write shows up in the recent changes, as text, and in its log");
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let id = format!("status <img src=x alt=page> {}", &suffix[..8]);
    let name = "Ada <i>Lovelace</i>";
    let text = write_and_see(&cluster, &browser, &id, name).await;
    assert!(
        text.contains(&id) && text.contains(name),
        "the entry: {text:?}"
    );
    let markup = browser.count("#changes img, #changes i").await;
    assert_eq!(markup, 0, "record fields became markup");
    assert_eq!(
        browser.attribute("#feed", "data-state").await.as_deref(),
        Some("ok")
    );
    let row = format!("[data-partition=\"{}\"]", partition_of(&id, 3));
    wait_attribute(&browser, &row, "data-log-end", "1").await;

    eprintln!("== phase: screenshots, desktop and phone-sized (one column)");
    let desktop = dir.join("status-page.png");
    browser.screenshot(&desktop).await;
    println!("screenshot: {}", desktop.display());
    let client = browser.client();
    client
        .set_window_size(PHONE.0, PHONE.1)
        .await
        .expect("resize");
    let layout = "const left = (id) => document.getElementById(id).closest('.card') \
                      .getBoundingClientRect().left; \
                  return { width: window.innerWidth, traffic: left('traffic'), \
                      nats: left('nats'), \
                      overflow: document.documentElement.scrollWidth > window.innerWidth };";
    let layout = browser.run(layout, vec![]).await;
    let phone = dir.join("status-page-phone.png");
    browser.screenshot(&phone).await;
    println!("screenshot: {}", phone.display());
    assert!(
        layout["width"].as_f64().unwrap_or(f64::MAX) < 700.0,
        "{layout}"
    );
    assert_eq!(layout["traffic"], layout["nats"], "one column: {layout}");
    assert_eq!(
        layout["overflow"],
        Value::Bool(false),
        "sideways scroll: {layout}"
    );
    client
        .set_window_size(DESKTOP.0, DESKTOP.1)
        .await
        .expect("resize");

    eprintln!("== phase: nothing in the browser console");
    let errors = console_errors(&browser, &[]).await;
    assert!(errors.is_empty(), "console errors: {errors:#?}");

    eprintln!("== phase: the gateway restarts; the page says so, then polls and follows again");
    assert!(cluster.gateway().terminate().await.success());
    wait_attribute(&browser, "#gateway", "data-state", "bad").await;
    cluster.gateway().start();
    cluster.wait_ready().await;
    wait_attribute(&browser, "#gateway", "data-state", "ok").await;
    wait_attribute(&browser, "#feed", "data-state", "ok").await;
    let again = format!("status again {}", &suffix[..8]);
    write_and_see(&cluster, &browser, &again, "Grace Hopper").await;
    // Chromium itself logs the requests refused while the gateway was down.
    let errors = console_errors(&browser, &["ERR_CONNECTION_REFUSED"]).await;
    assert!(errors.is_empty(), "console errors: {errors:#?}");

    eprintln!("== phase: a tab without the key asks for one, then shows the cluster");
    browser.run("sessionStorage.clear();", vec![]).await;
    browser
        .goto(&format!("{}/status", cluster.base_url()))
        .await;
    wait_count(&browser, "#auth:not([hidden])", 1).await;
    let prompt = dir.join("status-page-key.png");
    browser.screenshot(&prompt).await;
    println!("screenshot: {}", prompt.display());
    assert_eq!(browser.count("[data-node]").await, 0, "data without a key");
    let field = client.find(Locator::Css("#auth-key")).await.expect("field");
    field.send_keys(&key).await.expect("typing the key");
    let submit = client
        .find(Locator::Css("#auth button"))
        .await
        .expect("button");
    submit.click().await.expect("submitting the key");
    wait_count(&browser, ALL_READY, 3).await;
    wait_attribute(&browser, "#feed", "data-state", "ok").await;
    assert_eq!(
        browser.count("#auth:not([hidden])").await,
        0,
        "the prompt stays"
    );
    // Chromium itself logs the refused requests (401) that made the page ask.
    let errors = console_errors(&browser, &["status of 401"]).await;
    assert!(errors.is_empty(), "console errors: {errors:#?}");
    browser.close().await;
}
