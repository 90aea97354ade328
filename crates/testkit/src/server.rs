//! A real `runbox serve` for tests, and a client that checks every response it
//! sees against the server's own OpenAPI document (`/api/openapi.json`): the
//! status must be one the operation documents, and a JSON body must match the
//! documented schema. A test that talks to the API through [`TestServer`] thus
//! also tests the API description.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use serde_json::Value;

/// A response, as the tests look at it.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {}: body is not JSON ({e}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    }
    /// The error code of an error answer.
    pub fn code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or_else(|| panic!("not an error body: {}", self.text()))
            .to_owned()
    }
}

/// A `runbox serve` child process on a free loopback port.
#[derive(Debug)]
pub struct TestServer {
    child: Child,
    pub url: String,
    pub data_dir: PathBuf,
    pub admin_token: String,
    client: reqwest::blocking::Client,
    doc: Value,
    /// (method, path, status) seen, for coverage reports.
    pub seen: Mutex<Vec<(String, String, u16)>>,
    stderr_log: PathBuf,
}

impl TestServer {
    /// Starts `bin serve --listen 127.0.0.1:0 ARGS` with `data_dir`, waits for its
    /// "listening on" line, and loads its OpenAPI document.
    pub fn start(bin: &Path, data_dir: &Path, args: &[&str]) -> TestServer {
        std::fs::create_dir_all(data_dir).unwrap();
        let stderr_log = data_dir.join(format!("serve-{}.log", std::process::id()));
        let child = Command::new(bin)
            .arg("serve")
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .env("RUNBOX_DATA_DIR", data_dir)
            .env("RUNBOX_LOG", "info")
            .env_remove("RUNBOX_CATALOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr_log).unwrap())
            .spawn()
            .expect("starting runbox serve");
        // Killed if anything below panics, so a failed start leaves no server.
        let mut guard = KillOnDrop(Some(child));
        let child = guard.0.as_mut().unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line
            .trim()
            .strip_prefix("runbox serve: listening on ")
            .unwrap_or_else(|| {
                panic!(
                    "runbox serve did not start: {line:?}; log: {}",
                    std::fs::read_to_string(&stderr_log).unwrap_or_default()
                )
            })
            .to_owned();
        let token_file = data_dir.join("admin-token");
        let admin_token = std::fs::read_to_string(&token_file)
            .unwrap_or_default()
            .trim()
            .to_owned();
        // reqwest is built without a default TLS provider (runbox-image picks
        // ring); the client speaks plain HTTP, but building one needs a provider.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()
            .unwrap();
        let doc: Value = client
            .get(format!("{url}/api/openapi.json"))
            .send()
            .unwrap()
            .json()
            .unwrap();
        TestServer {
            child: guard.0.take().unwrap(),
            url,
            data_dir: data_dir.to_owned(),
            admin_token,
            client,
            doc,
            seen: Mutex::new(Vec::new()),
            stderr_log,
        }
    }

    /// The server process's id (to read its /proc entries: memory, sockets).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr_log).unwrap_or_default()
    }

    pub fn client(&self) -> &reqwest::blocking::Client {
        &self.client
    }

    pub fn get(&self, path: &str) -> Resp {
        self.send("GET", path, self.client.get(format!("{}{path}", self.url)))
    }

    pub fn post_json(&self, path: &str, body: &Value) -> Resp {
        self.send(
            "POST",
            path,
            self.client.post(format!("{}{path}", self.url)).json(body),
        )
    }

    /// POST a multipart form.
    pub fn post_multipart(&self, path: &str, form: reqwest::blocking::multipart::Form) -> Resp {
        self.send(
            "POST",
            path,
            self.client
                .post(format!("{}{path}", self.url))
                .multipart(form),
        )
    }

    /// POST with the admin token.
    pub fn post_admin(&self, path: &str, body: &Value) -> Resp {
        self.send(
            "POST",
            path,
            self.client
                .post(format!("{}{path}", self.url))
                .bearer_auth(&self.admin_token)
                .json(body),
        )
    }

    /// Any request built on [`TestServer::client`]; `method` and `path` name the
    /// operation whose description the response is checked against.
    pub fn send(&self, method: &str, path: &str, req: reqwest::blocking::RequestBuilder) -> Resp {
        let r = req.send().expect("request failed");
        let resp = Resp {
            status: r.status().as_u16(),
            headers: r.headers().clone(),
            body: r.bytes().expect("reading the body").to_vec(),
        };
        self.check(method, path, &resp);
        resp
    }

    /// Fails the test when `resp` does not match the OpenAPI document.
    pub fn check(&self, method: &str, path: &str, resp: &Resp) {
        self.seen
            .lock()
            .unwrap()
            .push((method.to_owned(), path.to_owned(), resp.status));
        if let Err(why) = conforms(&self.doc, method, path, resp) {
            panic!(
                "{method} {path} -> {}: does not match /api/openapi.json: {why}\nbody: {}",
                resp.status,
                resp.text()
            );
        }
    }

    /// Runs a job through `POST /api/run` and returns the RunResponse.
    pub fn run(&self, request: &Value) -> Value {
        let r = self.post_json("/api/run", request);
        assert_eq!(r.status, 200, "run failed: {}", r.text());
        r.json()
    }

    /// The value of a metric line `name{labels} value` (0 when absent).
    pub fn metric(&self, name_and_labels: &str) -> f64 {
        let text = self.get("/metrics").text();
        text.lines()
            .find_map(|l| {
                l.strip_prefix(name_and_labels)
                    .and_then(|rest| rest.strip_prefix(' '))
                    .and_then(|v| v.trim().parse().ok())
            })
            .unwrap_or(0.0)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        // SIGTERM: the server stops the way an operator stops it.
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

struct KillOnDrop(Option<Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Matches a concrete path against the document's path templates.
fn operation<'a>(doc: &'a Value, method: &str, path: &str) -> Option<&'a Value> {
    let path = path.split('?').next().unwrap_or(path);
    let paths = doc["paths"].as_object()?;
    let want: Vec<&str> = path.split('/').collect();
    for (template, item) in paths {
        let parts: Vec<&str> = template.split('/').collect();
        if parts.len() == want.len()
            && parts
                .iter()
                .zip(&want)
                .all(|(t, w)| (t.starts_with('{') && t.ends_with('}')) || t == w)
        {
            return item.get(method.to_ascii_lowercase());
        }
    }
    None
}

/// Whether a response matches its operation's documented responses.
pub fn conforms(doc: &Value, method: &str, path: &str, resp: &Resp) -> Result<(), String> {
    let Some(op) = operation(doc, method, path) else {
        // Pages of the playground and unknown endpoints are not API operations;
        // unknown API paths must still answer with the error body.
        if path.starts_with("/api/") && resp.status == 404 {
            return error_body(doc, resp);
        }
        return Ok(());
    };
    let status = resp.status.to_string();
    let Some(documented) = op["responses"]
        .get(&status)
        .or_else(|| op["responses"].get("default"))
    else {
        // Statuses any endpoint can give, whatever its own list says.
        return match resp.status {
            405 | 408 | 413 | 429 | 500 | 503 => error_body(doc, resp),
            _ => Err(format!(
                "status {status} is not documented for {method} {path}"
            )),
        };
    };
    let ctype = resp
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let Some(content) = documented["content"].as_object() else {
        return if resp.body.is_empty() {
            Ok(())
        } else {
            Err("a body where the document says none".into())
        };
    };
    let essence = ctype.split(';').next().unwrap_or("").trim();
    let Some(media) = content.get(essence) else {
        return Err(format!(
            "content type {ctype:?} is not documented (documented: {:?})",
            content.keys().collect::<Vec<_>>()
        ));
    };
    if essence != "application/json" {
        return Ok(());
    }
    let body: Value = serde_json::from_slice(&resp.body).map_err(|e| format!("not JSON: {e}"))?;
    validate(doc, &media["schema"], &body)
}

fn error_body(doc: &Value, resp: &Resp) -> Result<(), String> {
    let body: Value = serde_json::from_slice(&resp.body)
        .map_err(|e| format!("an error answer that is not JSON: {e}"))?;
    validate(
        doc,
        &serde_json::json!({"$ref": "#/components/schemas/ErrorResponse"}),
        &body,
    )
}

fn validate(doc: &Value, schema: &Value, body: &Value) -> Result<(), String> {
    let mut root = schema.clone();
    if let Some(obj) = root.as_object_mut() {
        obj.insert("components".into(), doc["components"].clone());
    }
    let validator = jsonschema::validator_for(&root).map_err(|e| format!("bad schema: {e}"))?;
    let errors: Vec<String> = validator
        .iter_errors(body)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}
