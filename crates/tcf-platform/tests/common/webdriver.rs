//! A small W3C WebDriver client over loopback HTTP for the dashboard's browser tests: it
//! starts Debian's chromedriver, which drives headless Chromium (`--no-sandbox` as root).

use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The element key of the W3C protocol.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

pub struct Driver {
    child: Child,
    port: u16,
}

impl Drop for Driver {
    fn drop(&mut self) {
        // chromedriver ends its browsers when it exits.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One request to chromedriver; the answer's `value`, or the WebDriver error as Err.
fn call(port: u16, method: &str, path: &str, body: Option<&Value>) -> Result<Value, String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(|e| e.to_string())?;
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .map_err(|e| e.to_string())?;
    // chromedriver keeps the connection open: read the head, then Content-Length bytes.
    let mut raw = Vec::new();
    let mut byte = [0u8; 1];
    while !raw.ends_with(b"\r\n\r\n") {
        let n = s.read(&mut byte).map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("chromedriver closed the connection".into());
        }
        raw.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&raw).to_string();
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .ok_or("no Content-Length in chromedriver's answer")?;
    let mut body = vec![0u8; length];
    s.read_exact(&mut body).map_err(|e| e.to_string())?;
    let body = String::from_utf8_lossy(&body).to_string();
    let v: Value = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    if status == 200 {
        Ok(v["value"].clone())
    } else {
        Err(format!("{method} {path}: {status} {}", v["value"]))
    }
}

impl Driver {
    /// Start chromedriver on a free port and wait until it answers.
    pub fn start(port: u16) -> Driver {
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (Debian package chromium-driver)");
        let d = Driver { child, port };
        let start = Instant::now();
        while call(port, "GET", "/status", None).map_or(true, |v| v["ready"] != true) {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "chromedriver did not answer on port {port}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        d
    }

    pub fn session(&self, profile: &Path) -> Session {
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,900",
                         format!("--user-data-dir={}", profile.display())]
            }
        }}});
        let v = call(self.port, "POST", "/session", Some(&caps)).expect("a browser session");
        Session {
            port: self.port,
            id: v["sessionId"].as_str().expect("a session id").to_string(),
        }
    }
}

pub struct Session {
    port: u16,
    id: String,
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = call(self.port, "DELETE", &format!("/session/{}", self.id), None);
    }
}

impl Session {
    fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        call(
            self.port,
            method,
            &format!("/session/{}{path}", self.id),
            body.as_ref(),
        )
    }

    pub fn go(&self, url: &str) {
        self.cmd("POST", "/url", Some(json!({ "url": url })))
            .unwrap_or_else(|e| panic!("open {url}: {e}"));
    }

    pub fn url(&self) -> String {
        self.cmd("GET", "/url", None)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default()
    }

    /// The first element matching a CSS selector.
    pub fn find(&self, css: &str) -> Option<String> {
        let v = self
            .cmd(
                "POST",
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .ok()?;
        v[ELEMENT].as_str().map(str::to_string)
    }

    pub fn count(&self, css: &str) -> usize {
        self.cmd(
            "POST",
            "/elements",
            Some(json!({"using": "css selector", "value": css})),
        )
        .ok()
        .and_then(|v| v.as_array().map(Vec::len))
        .unwrap_or(0)
    }

    /// The rendered text of the first match ("" when none).
    pub fn text(&self, css: &str) -> String {
        self.find(css)
            .and_then(|e| self.cmd("GET", &format!("/element/{e}/text"), None).ok())
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default()
    }

    pub fn click(&self, css: &str) {
        let e = self
            .find(css)
            .unwrap_or_else(|| panic!("nothing matches {css:?} on {}", self.url()));
        self.cmd("POST", &format!("/element/{e}/click"), Some(json!({})))
            .unwrap_or_else(|err| panic!("click {css}: {err}"));
    }

    pub fn script(&self, js: &str) -> Value {
        self.cmd(
            "POST",
            "/execute/sync",
            Some(json!({"script": js, "args": []})),
        )
        .unwrap_or_else(|e| panic!("script {js}: {e}"))
    }

    /// Press and release one key (a WebDriver key code such as `\u{E004}`, Tab).
    pub fn key(&self, key: &str) {
        let actions = json!({"actions": [{"type": "key", "id": "keyboard", "actions": [
            {"type": "keyDown", "value": key}, {"type": "keyUp", "value": key}
        ]}]});
        self.cmd("POST", "/actions", Some(actions))
            .unwrap_or_else(|e| panic!("key {key:?}: {e}"));
    }

    /// Emulate the browser's colour-scheme preference (Chrome DevTools through chromedriver).
    pub fn prefer_colour_scheme(&self, scheme: &str) {
        let cmd = json!({"cmd": "Emulation.setEmulatedMedia", "params": {
            "features": [{"name": "prefers-color-scheme", "value": scheme}]
        }});
        self.cmd("POST", "/goog/cdp/execute", Some(cmd))
            .unwrap_or_else(|e| panic!("colour scheme {scheme}: {e}"));
    }

    pub fn resize(&self, width: u32, height: u32) {
        self.cmd(
            "POST",
            "/window/rect",
            Some(json!({"width": width, "height": height})),
        )
        .unwrap_or_else(|e| panic!("resize: {e}"));
    }

    /// A PNG of the viewport, written to `path`.
    pub fn screenshot(&self, path: &Path) {
        let v = self.cmd("GET", "/screenshot", None).expect("a screenshot");
        let png = base64_decode(v.as_str().expect("base64 text"));
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        std::fs::write(path, png).unwrap();
    }

    /// Wait until `ok` holds on the page; panics with the page's URL and text otherwise.
    pub fn wait(&self, what: &str, timeout: Duration, ok: impl Fn(&Session) -> bool) {
        let start = Instant::now();
        while !ok(self) {
            if start.elapsed() > timeout {
                panic!(
                    "timed out waiting for {what} on {}; the page says:\n{}",
                    self.url(),
                    self.text("main")
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

pub fn base64_decode(s: &str) -> Vec<u8> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let digits: Vec<u32> = s.bytes().filter_map(value).collect();
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    for chunk in digits.chunks(4) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, d)| acc | d << (18 - 6 * i));
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..chunk.len().saturating_sub(1)]);
    }
    out
}
