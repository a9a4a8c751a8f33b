//! The web dashboard in a real headless Chromium, driven over the WebDriver protocol (chromedriver) against
//! a real coordinator with tokens and a worker: the page asks for a token, shows the cluster, a submitted
//! task appears and progresses to `succeeded`, and the task page lists its subtasks. Screenshots are saved
//! as test artifacts in `<target>/tmp/`.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs them); without them the test is
//! skipped with a message, except under `CI`, where it fails.

use crate::{Cluster, poll_until};
use hivemind_client::{Blob, SubmitTask};
use serde_json::{Value, json};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const CLIENT: &str = "dashboard-client-token-01";
const WORKER: &str = "dashboard-worker-token-02";
/// The element key of WebDriver's JSON wire format.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A chromedriver process with one headless Chromium session.
struct Browser {
    driver: Child,
    base: String,
}

impl Browser {
    fn start() -> Option<Browser> {
        let chromedriver = std::env::var("HIVEMIND_CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".into());
        let chromium = std::env::var("HIVEMIND_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
        if Command::new(&chromedriver).arg("--version").output().is_err() {
            assert!(
                std::env::var_os("CI").is_none(),
                "`{chromedriver}` is missing: apt-get install chromium chromium-driver"
            );
            eprintln!("skipped: `{chromedriver}` is missing (apt-get install chromium chromium-driver)");
            return None;
        }
        let port =
            std::net::TcpListener::bind("127.0.0.1:0").expect("free port").local_addr().expect("addr").port();
        let driver = Command::new(&chromedriver)
            .args([format!("--port={port}"), "--allowed-ips=127.0.0.1".into()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let mut browser = Browser { driver, base: format!("http://127.0.0.1:{port}") };
        poll_until(Duration::from_secs(20), || {
            crate::reqwest::status_of(&format!("{}/status", browser.base)) == Some(200)
        });
        let session = browser.call(
            "POST",
            "/session",
            Some(json!({"capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {
                    "binary": chromium,
                    "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                             "--window-size=1400,1000"],
                },
            }}})),
        );
        let id = session["sessionId"].as_str().expect("a session id").to_owned();
        browser.base = format!("{}/session/{id}", browser.base);
        Some(browser)
    }

    /// One WebDriver command; returns its `value`.
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}{path}", self.base);
        let body = body.map(|b| (serde_json::to_vec(&b).expect("json"), "application/json"));
        let (status, mut reply) = crate::reqwest::send(method, &url, body);
        assert_eq!(status, 200, "WebDriver {method} {path}: {reply}");
        reply["value"].take()
    }

    fn goto(&self, url: &str) {
        self.call("POST", "/url", Some(json!({ "url": url })));
    }

    /// Runs `script` in the page with `args`; returns its result. Reading the page in one script avoids
    /// racing the dashboard's re-rendering (a found element may be replaced before the next command).
    fn js(&self, script: &str, args: Value) -> Value {
        self.call("POST", "/execute/sync", Some(json!({ "script": script, "args": args })))
    }

    fn count(&self, css: &str) -> u64 {
        self.js("return document.querySelectorAll(arguments[0]).length", json!([css])).as_u64().unwrap_or(0)
    }

    fn text(&self, css: &str) -> String {
        let script = "const e = document.querySelector(arguments[0]); return e ? e.innerText : ''";
        self.js(script, json!([css])).as_str().unwrap_or_default().to_owned()
    }

    fn attribute(&self, css: &str, name: &str) -> Option<String> {
        let script =
            "const e = document.querySelector(arguments[0]); return e ? e.getAttribute(arguments[1]) : null";
        self.js(script, json!([css, name])).as_str().map(str::to_owned)
    }

    fn visible(&self, css: &str) -> bool {
        let script =
            "const e = document.querySelector(arguments[0]); return !!e && e.getClientRects().length > 0";
        self.js(script, json!([css])) == json!(true)
    }

    /// Clicks the element like a user (WebDriver's element click), finding it again if the page replaced
    /// it in between.
    fn click(&self, css: &str) {
        for _ in 0..10 {
            let found = self.js("return document.querySelector(arguments[0])", json!([css]));
            let Some(element) = found[ELEMENT].as_str() else { panic!("no element matches `{css}`") };
            let url = format!("{}/element/{element}/click", self.base);
            let (status, _) = crate::reqwest::send("POST", &url, Some((b"{}".to_vec(), "application/json")));
            if status == 200 {
                return;
            }
        }
        panic!("could not click `{css}`");
    }

    fn type_into(&self, css: &str, text: &str) {
        let found = self.js("return document.querySelector(arguments[0])", json!([css]));
        let element = found[ELEMENT].as_str().unwrap_or_else(|| panic!("no element matches `{css}`"));
        self.call("POST", &format!("/element/{element}/value"), Some(json!({ "text": text })));
    }

    /// Saves a PNG of the window as `<target>/tmp/NAME.png` and returns its path.
    fn screenshot(&self, name: &str) -> std::path::PathBuf {
        use base64::Engine;
        let png = self.call("GET", "/screenshot", None);
        let bytes =
            base64::engine::general_purpose::STANDARD.decode(png.as_str().expect("base64")).expect("png");
        let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}.png"));
        std::fs::write(&path, bytes).expect("write screenshot");
        eprintln!("screenshot: {}", path.display());
        path
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = crate::reqwest::send("DELETE", &self.base, None);
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

#[test]
fn dashboard_shows_a_task_progress_to_succeeded_in_chromium() {
    let Some(browser) = Browser::start() else { return };
    let mut cluster = Cluster::coordinator_with(&["--client-token", CLIENT, "--worker-token", WORKER]);
    cluster.add_worker(2, &["--token", WORKER, "--name", "dash-worker"]);
    let client =
        hivemind_client::blocking::Client::with_token(&cluster.url, Some(CLIENT.into())).expect("client");
    poll_until(Duration::from_secs(20), || client.list_workers().is_ok_and(|w| w.workers.len() == 1));

    // Without a token the page asks for one; with it, it shows the cluster.
    browser.goto(&format!("{}/", cluster.url));
    poll_until(Duration::from_secs(10), || browser.visible("#token-form"));
    browser.type_into("#token-input", CLIENT);
    browser.click("#token-form button[type=submit]");
    poll_until(Duration::from_secs(10), || browser.text("#c-workers") == "1 / 1");
    assert!(!browser.visible("#token-form"), "the token form closes once the token works");
    assert_eq!(browser.text("#c-slots").split(" / ").nth(1), Some("2"));
    poll_until(Duration::from_secs(10), || browser.text("#workers tbody").contains("dash-worker"));

    // A task of 300 prime counts appears, progresses and succeeds.
    let module =
        client.upload_module(hivemind_guest_programs::read(hivemind_guest_programs::PRIMES)).expect("upload");
    let inputs: Vec<Blob> = (0..300u64).map(|i| Blob::from(format!("1 {}", 200_000 + i).as_str())).collect();
    let task = client
        .submit_task(&SubmitTask { module_id: module.module_id, inputs, ..SubmitTask::default() })
        .expect("submit");
    let row = format!("#tasks tr[data-task='{}']", task.task_id);
    poll_until(Duration::from_secs(10), || browser.count(&row) == 1);
    let mut states = Vec::new();
    poll_until(Duration::from_secs(60), || {
        let state = browser.attribute(&row, "data-state").unwrap_or_default();
        if states.last() != Some(&state) {
            states.push(state.clone());
        }
        state == "succeeded"
    });
    assert!(browser.text(&row).contains("300 / 300"), "{}", browser.text(&row));
    poll_until(Duration::from_secs(5), || browser.text("#c-done").starts_with("300"));
    // The chart has drawn the throughput history.
    assert!(browser.count("#chart polyline") == 2);
    browser.screenshot("dashboard-overview");
    eprintln!("task states seen on the page: {states:?}");

    // The task page lists its subtasks with their usage; the result can be downloaded.
    browser.click(&format!("{row} a"));
    poll_until(Duration::from_secs(10), || browser.text("#t-state") == "succeeded");
    assert_eq!(browser.text("#t-id"), task.task_id);
    poll_until(Duration::from_secs(10), || browser.count("#subtasks tbody tr") == 100);
    assert!(browser.text("#subtasks tbody").contains("succeeded"));
    assert_eq!(browser.attribute("#t-download", "disabled"), None, "the result can be downloaded");
    browser.click("#s-next");
    poll_until(Duration::from_secs(10), || browser.text("#s-range") == "(101–200)");
    browser.screenshot("dashboard-task");

    // A wrong token is refused and the page says so.
    browser.click("#token-button");
    browser.type_into("#token-input", "not-the-right-token-0000");
    browser.click("#token-form button[type=submit]");
    poll_until(Duration::from_secs(10), || {
        browser.visible("#error") && browser.text("#error").contains("unknown token")
    });
    assert!(browser.visible("#token-form"), "the page asks for a token again");
}
