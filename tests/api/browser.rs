//! A real browser for the console tests: Debian's headless Chromium driven over WebDriver by its
//! chromedriver, both started here (fresh profile, no network of its own), spoken to with plain HTTP.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine;
use serde_json::{json, Value};
use tempfile::TempDir;

/// How often, and how many times, a wait looks again (a generous bound: waits end as soon as the page is there).
const POLL: Duration = Duration::from_millis(50);
const PATIENCE: u32 = 1200;

/// The W3C key of an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A running Chromium with its WebDriver session.
pub struct Browser {
    driver: Child,
    client: reqwest::Client,
    session: String,
    endpoint: String,
    _profile: TempDir,
}

fn which(candidates: &[&str]) -> Option<String> {
    candidates
        .iter()
        .find(|p| std::path::Path::new(p).exists())
        .map(|p| p.to_string())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl Browser {
    /// Starts chromedriver and a headless Chromium with a fresh profile (`apt-get install chromium chromium-driver`).
    pub async fn start() -> Browser {
        let driver_bin = std::env::var("CHROMEDRIVER")
            .ok()
            .or_else(|| which(&["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]))
            .expect("chromedriver is not installed (apt-get install chromium-driver)");
        let chromium = std::env::var("CHROMIUM")
            .ok()
            .or_else(|| which(&["/usr/bin/chromium", "/usr/lib/chromium/chromium"]))
            .expect("chromium is not installed (apt-get install chromium)");
        let port = free_port();
        let driver = Command::new(driver_bin)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let endpoint = format!("http://127.0.0.1:{port}");
        let client = reqwest::Client::new();
        let mut ready = false;
        for _ in 0..150 {
            if let Ok(res) = client.get(format!("{endpoint}/status")).send().await {
                if res.status().is_success() {
                    ready = true;
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(ready, "chromedriver did not answer on {endpoint}");
        let profile = tempfile::tempdir().expect("profile dir");
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                    "--no-first-run", "--hide-scrollbars", "--force-device-scale-factor=1",
                    "--window-size=1366,1000",
                    format!("--user-data-dir={}", profile.path().display()),
                ]
            }
        }}});
        let res: Value = client
            .post(format!("{endpoint}/session"))
            .json(&capabilities)
            .send()
            .await
            .expect("new session")
            .json()
            .await
            .expect("session answer");
        let session = res["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {res}"))
            .to_string();
        Browser {
            driver,
            client,
            session,
            endpoint,
            _profile: profile,
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}/session/{}{}", self.endpoint, self.session, path);
        let mut req = self.client.request(method, &url);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let res: Value = req
            .send()
            .await
            .expect("WebDriver call")
            .json()
            .await
            .expect("WebDriver answer");
        if let Some(error) = res["value"]["error"].as_str() {
            panic!("WebDriver {path}: {error}: {}", res["value"]["message"]);
        }
        res["value"].clone()
    }

    /// Opens a URL and waits for the page to load.
    pub async fn goto(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", Some(json!({ "url": url })))
            .await;
    }

    /// The address shown in the location bar.
    pub async fn url(&self) -> String {
        self.call(reqwest::Method::GET, "/url", None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// The page's title.
    pub async fn title(&self) -> String {
        self.call(reqwest::Method::GET, "/title", None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Every element matching a CSS selector.
    pub async fn find_all(&self, css: &str) -> Vec<String> {
        let found = self
            .call(
                reqwest::Method::POST,
                "/elements",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        found
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|e| e[ELEMENT].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The first element matching a CSS selector, waiting for a page still loading (panics when none comes).
    pub async fn find(&self, css: &str) -> String {
        for _ in 0..PATIENCE {
            if let Some(e) = self.find_all(css).await.into_iter().next() {
                return e;
            }
            tokio::time::sleep(POLL).await;
        }
        panic!("no element matches `{css}` on {}", self.url().await)
    }

    /// Waits until the address contains `needle` (a click's navigation may still be under way); returns it.
    pub async fn wait_for_url(&self, needle: &str) -> String {
        for _ in 0..PATIENCE {
            let url = self.url().await;
            if url.contains(needle) {
                return url;
            }
            tokio::time::sleep(POLL).await;
        }
        panic!("the address never contained `{needle}`: {}", self.url().await)
    }

    /// Waits until the first element matching `css` shows a text that satisfies `want`; returns the text.
    pub async fn wait_for_text(&self, css: &str, want: impl Fn(&str) -> bool) -> String {
        let mut last = String::new();
        for _ in 0..PATIENCE {
            if let Some(e) = self.find_all(css).await.into_iter().next() {
                // The element may belong to a page being replaced: read it, and try again if it went stale.
                let url = format!("{}/session/{}/element/{e}/text", self.endpoint, self.session);
                if let Ok(res) = self.client.get(&url).send().await {
                    if let Ok(v) = res.json::<Value>().await {
                        last = v["value"].as_str().unwrap_or_default().to_string();
                        if want(&last) {
                            return last;
                        }
                    }
                }
            }
            tokio::time::sleep(POLL).await;
        }
        panic!("`{css}` never showed the text wanted; last: {last:?}")
    }

    /// The text a person sees in an element (rendered, hidden parts left out).
    pub async fn text(&self, element: &str) -> String {
        self.call(reqwest::Method::GET, &format!("/element/{element}/text"), None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// The visible text of the first element matching a selector.
    pub async fn text_of(&self, css: &str) -> String {
        let element = self.find(css).await;
        self.text(&element).await
    }

    /// A computed style property of an element (e.g. `border-left-color`).
    pub async fn css(&self, element: &str, property: &str) -> String {
        self.call(
            reqwest::Method::GET,
            &format!("/element/{element}/css/{property}"),
            None,
        )
        .await
        .as_str()
        .unwrap_or_default()
        .to_string()
    }

    /// Clicks an element (and waits for a navigation it starts).
    pub async fn click(&self, element: &str) {
        self.call(
            reqwest::Method::POST,
            &format!("/element/{element}/click"),
            Some(json!({})),
        )
        .await;
    }

    /// Types into an input.
    pub async fn type_into(&self, element: &str, text: &str) {
        self.call(
            reqwest::Method::POST,
            &format!("/element/{element}/value"),
            Some(json!({ "text": text })),
        )
        .await;
    }

    /// Chooses an option of a `<select>` by its value.
    pub async fn select(&self, select_css: &str, value: &str) {
        let option = self.find(&format!("{select_css} option[value=\"{value}\"]")).await;
        self.click(&option).await;
    }

    /// The browser's cookies for the current page.
    pub async fn cookies(&self) -> Vec<Value> {
        self.call(reqwest::Method::GET, "/cookie", None)
            .await
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Runs a script in the page and returns its value (used to read what scripts could see).
    pub async fn script(&self, script: &str) -> Value {
        self.call(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
        .await
    }

    /// A PNG of the window.
    pub async fn screenshot(&self) -> Vec<u8> {
        let b64 = self.call(reqwest::Method::GET, "/screenshot", None).await;
        base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().unwrap_or_default())
            .expect("base64 PNG")
    }

    /// Saves a screenshot under `docs/screenshots/` when `UPDATE_SCREENSHOTS` is set (they are committed).
    pub async fn save_screenshot(&self, name: &str) {
        let png = self.screenshot().await;
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        if std::env::var("UPDATE_SCREENSHOTS").is_ok() {
            let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/screenshots");
            std::fs::create_dir_all(&dir).expect("docs/screenshots");
            std::fs::write(dir.join(name), png).expect("write screenshot");
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // End the session (closes Chromium), then the driver.
        let url = format!("{}/session/{}", self.endpoint, self.session);
        let _ = std::thread::spawn(move || {
            reqwest::blocking::Client::new()
                .delete(url)
                .timeout(Duration::from_secs(10))
                .send()
        })
        .join();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
