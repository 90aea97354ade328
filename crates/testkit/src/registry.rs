//! A real OCI distribution registry for tests: Debian's `docker-registry` (the
//! distribution registry v2) on 127.0.0.1 with a random port and a temporary
//! filesystem store, anonymous, with htpasswd (basic) auth, or with token auth
//! backed by [`TokenServer`]. Images are pushed with `skopeo` (Debian package).
//!
//! ```no_run
//! let reg = runbox_testkit::registry::TestRegistry::start();
//! let dir = tempfile::tempdir().unwrap();
//! let layout = runbox_testkit::oci::busybox_image(dir.path());
//! let digest = reg.push(&layout, Some("latest"), "busybox:1");
//! println!("pull {}/busybox:1 ({digest})", reg.host());
//! ```

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use runbox_core::Digest;
use runbox_image::writer::{ImageSpec, LayerCompression, LayoutWriter, Tree, WrittenImage};
use serde_json::json;
use tempfile::TempDir;

/// How long a registry may take to start answering.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// How the registry authenticates clients.
#[derive(Debug, Clone)]
enum Auth {
    None,
    Htpasswd { username: String, password: String },
    Token { username: String, password: String },
}

/// A running `docker-registry serve`, killed on drop.
#[derive(Debug)]
pub struct TestRegistry {
    addr: SocketAddr,
    child: Child,
    dir: TempDir,
    auth: Auth,
    token_server: Option<TokenServer>,
}

impl TestRegistry {
    /// An anonymous registry.
    pub fn start() -> TestRegistry {
        Self::start_with(Auth::None)
    }

    /// A registry that wants HTTP basic auth (an htpasswd file with one user).
    pub fn start_with_htpasswd(username: &str, password: &str) -> TestRegistry {
        Self::start_with(Auth::Htpasswd {
            username: username.into(),
            password: password.into(),
        })
    }

    /// A registry that wants bearer tokens from a [`TokenServer`] on loopback,
    /// which issues them to one user (HTTP basic auth at the token endpoint).
    pub fn start_with_token_auth(username: &str, password: &str) -> TestRegistry {
        Self::start_with(Auth::Token {
            username: username.into(),
            password: password.into(),
        })
    }

    fn start_with(auth: Auth) -> TestRegistry {
        for bin in ["docker-registry", "skopeo"] {
            assert!(
                Command::new("sh")
                    .args(["-c", &format!("command -v {bin}")])
                    .stdout(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success()),
                "{bin} is not installed (scripts/test installs the Debian packages docker-registry and skopeo)"
            );
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = dir.path().join("storage");
        std::fs::create_dir(&storage).expect("mkdir storage");
        let (auth_yaml, token_server) = match &auth {
            Auth::None => (String::new(), None),
            Auth::Htpasswd { username, password } => {
                let hash = bcrypt::hash(password, 4).expect("bcrypt");
                let path = dir.path().join("htpasswd");
                std::fs::write(&path, format!("{username}:{hash}\n")).expect("htpasswd");
                (
                    format!(
                        "auth:\n  htpasswd:\n    realm: runbox-test\n    path: {}\n",
                        path.display()
                    ),
                    None,
                )
            }
            Auth::Token { username, password } => {
                let ts = TokenServer::start(username, password);
                let bundle = dir.path().join("token-ca.pem");
                std::fs::write(&bundle, &ts.cert_pem).expect("cert bundle");
                (
                    format!(
                        "auth:\n  token:\n    realm: {}\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
                        ts.realm(),
                        TokenServer::SERVICE,
                        TokenServer::ISSUER,
                        bundle.display()
                    ),
                    Some(ts),
                )
            }
        };
        // A free port can be taken between probing and the registry's bind:
        // then the registry exits, and another port is tried.
        for _ in 0..5 {
            let port = free_port();
            let addr: SocketAddr = ([127, 0, 0, 1], port).into();
            let config = dir.path().join("config.yml");
            std::fs::write(
                &config,
                format!(
                    "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n\
                     storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
                     http:\n  addr: {addr}\n  secret: runbox-test-secret\n{auth_yaml}",
                    storage.display()
                ),
            )
            .expect("config.yml");
            let log = std::fs::File::create(dir.path().join("registry.log")).expect("log");
            let mut child = Command::new("docker-registry")
                .arg("serve")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log"))
                .stderr(log)
                .spawn()
                .expect("starting docker-registry");
            if wait_ready(&mut child, addr) {
                return TestRegistry {
                    addr,
                    child,
                    dir,
                    auth,
                    token_server,
                };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!(
            "docker-registry did not start; its log: {}",
            std::fs::read_to_string(dir.path().join("registry.log")).unwrap_or_default()
        );
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// The registry's filesystem storage root.
    pub fn storage(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// The file holding a blob's bytes in the registry's storage.
    pub fn blob_data_path(&self, digest: &Digest) -> PathBuf {
        let hex = digest.hex();
        self.storage()
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// Flips one byte in the middle of a stored blob: the registry then serves
    /// content that does not match its digest.
    pub fn tamper_blob(&self, digest: &Digest) {
        let path = self.blob_data_path(digest);
        let mut bytes = std::fs::read(&path).expect("reading the blob in the registry");
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0xff;
        std::fs::write(&path, bytes).expect("writing the blob in the registry");
    }

    /// Pushes the image tagged `layout_tag` in an OCI layout (`None`: its only
    /// image) to `repo:tag` in this registry with skopeo (all platforms of an
    /// index), and returns the digest of the manifest (or index) pushed.
    pub fn push(&self, layout: &Path, layout_tag: Option<&str>, repo_tag: &str) -> Digest {
        let digest_file = self
            .dir
            .path()
            .join(format!("digest-{}", rand::random::<u64>()));
        let mut cmd = Command::new("skopeo");
        cmd.args(["copy", "--quiet", "--all", "--dest-tls-verify=false"])
            .arg("--digestfile")
            .arg(&digest_file);
        match &self.auth {
            Auth::None => {}
            Auth::Htpasswd { username, password } | Auth::Token { username, password } => {
                cmd.arg("--dest-creds")
                    .arg(format!("{username}:{password}"));
            }
        }
        let source = match layout_tag {
            Some(t) => format!("oci:{}:{t}", layout.display()),
            None => format!("oci:{}", layout.display()),
        };
        cmd.arg(source)
            .arg(format!("docker://{}/{repo_tag}", self.host()));
        let out = cmd.output().expect("running skopeo");
        assert!(
            out.status.success(),
            "skopeo copy to {repo_tag} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::read_to_string(&digest_file)
            .expect("skopeo --digestfile")
            .trim()
            .parse()
            .expect("a sha256 digest")
    }

    /// The token service, for a registry with token auth.
    pub fn token_server(&self) -> Option<&TokenServer> {
        self.token_server.as_ref()
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("probing for a free port")
        .port()
}

/// Polls `GET /v2/` until the registry answers with any HTTP status (bounded by
/// [`START_TIMEOUT`]); false when the process exits first.
fn wait_ready(child: &mut Child, addr: SocketAddr) -> bool {
    let deadline = Instant::now() + START_TIMEOUT;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        if let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let req = format!("GET /v2/ HTTP/1.0\r\nHost: {addr}\r\n\r\n");
            let mut head = [0u8; 12];
            if s.write_all(req.as_bytes()).is_ok()
                && s.read_exact(&mut head).is_ok()
                && head.starts_with(b"HTTP/1.")
            {
                return true;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// A minimal docker token service on loopback: `GET /token?service=..&scope=..`
/// with HTTP basic auth of its one user returns a JWT (ES256, signed by a
/// self-signed certificate the registry trusts as its `rootcertbundle`, sent in
/// the `x5c` header) granting the actions asked for. Wrong or missing
/// credentials get 401.
#[derive(Debug)]
pub struct TokenServer {
    addr: SocketAddr,
    cert_pem: String,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// Tokens issued so far (to prove a pull used the bearer flow).
    issued: Arc<std::sync::atomic::AtomicUsize>,
}

impl TokenServer {
    pub const SERVICE: &'static str = "runbox-test-registry";
    pub const ISSUER: &'static str = "runbox-test-token-issuer";

    fn start(username: &str, password: &str) -> TokenServer {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let params =
            rcgen::CertificateParams::new(vec!["runbox-token-issuer".into()]).expect("params");
        let cert = params.self_signed(&key).expect("certificate");
        let cert_der = cert.der().to_vec();
        let signer = ring::signature::EcdsaKeyPair::from_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &key.serialize_der(),
            &ring::rand::SystemRandom::new(),
        )
        .expect("signing key");
        let listener = TcpListener::bind("127.0.0.1:0").expect("token server bind");
        let addr = listener.local_addr().expect("addr");
        let stop = Arc::new(AtomicBool::new(false));
        let issued = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let expected = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"))
        );
        let user = username.to_owned();
        let thread = {
            let stop = stop.clone();
            let issued = issued.clone();
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let _ = serve_token(conn, &expected, &user, &signer, &cert_der, &issued);
                }
            })
        };
        TokenServer {
            addr,
            cert_pem: cert.pem(),
            stop,
            thread: Some(thread),
            issued,
        }
    }

    /// The realm URL the registry sends clients to.
    pub fn realm(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    /// How many tokens were issued.
    pub fn tokens_issued(&self) -> usize {
        self.issued.load(Ordering::SeqCst)
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn serve_token(
    conn: TcpStream,
    expected_auth: &str,
    user: &str,
    signer: &ring::signature::EcdsaKeyPair,
    cert_der: &[u8],
    issued: &std::sync::atomic::AtomicUsize,
) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut authorization = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" || line == "\n" {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("authorization") {
                authorization = Some(v.trim().to_owned());
            }
        }
    }
    let target = request_line.split_whitespace().nth(1).unwrap_or("");
    let query = target.split_once('?').map_or("", |(_, q)| q);
    let mut scopes = Vec::new();
    for pair in query.split('&') {
        if let Some(v) = pair.strip_prefix("scope=") {
            scopes.push(percent_decode(v));
        }
    }
    let mut out = conn;
    if authorization.as_deref() != Some(expected_auth) {
        let body = r#"{"details":"invalid username or password"}"#;
        return write!(
            out,
            "HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
    }
    let access: Vec<serde_json::Value> = scopes
        .iter()
        .filter_map(|s| {
            // repository:NAME:ACTIONS
            let mut parts = s.splitn(3, ':');
            let (ty, name, actions) = (parts.next()?, parts.next()?, parts.next()?);
            Some(json!({ "type": ty, "name": name, "actions": actions.split(',').collect::<Vec<_>>() }))
        })
        .collect();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let header = json!({
        "typ": "JWT",
        "alg": "ES256",
        "x5c": [base64::engine::general_purpose::STANDARD.encode(cert_der)],
    });
    let claims = json!({
        "iss": TokenServer::ISSUER,
        "sub": user,
        "aud": TokenServer::SERVICE,
        "exp": now + 300,
        "nbf": now - 10,
        "iat": now,
        "jti": format!("{:x}", rand::random::<u64>()),
        "access": access,
    });
    let signing_input = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let sig = signer
        .sign(&ring::rand::SystemRandom::new(), signing_input.as_bytes())
        .map_err(|_| std::io::Error::other("signing failed"))?;
    let token = format!("{signing_input}.{}", b64url(sig.as_ref()));
    issued.fetch_add(1, Ordering::SeqCst);
    let body = json!({ "token": token, "access_token": token, "expires_in": 300 }).to_string();
    write!(
        out,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => match u8::from_str_radix(&s[i + 1..i + 3], 16) {
                Ok(v) => {
                    out.push(v);
                    i += 3;
                    continue;
                }
                Err(_) => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One platform of a [`multi_platform_layout`].
#[derive(Debug, Clone)]
pub struct PlatformImage {
    /// OCI architecture name, e.g. `amd64`, `arm64`.
    pub architecture: String,
    /// The files of its one layer.
    pub tree: Tree,
}

/// Writes an OCI layout whose `index.json` names (ref `tag`) a nested image
/// index listing one image per platform (all `linux`), as `skopeo copy --all`
/// pushes a multi-platform image. Returns the written images in order.
pub fn multi_platform_layout(dir: &Path, tag: &str, images: &[PlatformImage]) -> Vec<WrittenImage> {
    let mut written = Vec::new();
    for img in images {
        let mut w = LayoutWriter::create(dir).expect("creating layout");
        w.add_layer_tree(&img.tree, LayerCompression::Gzip)
            .expect("writing layer");
        written.push(
            w.finish(&ImageSpec {
                architecture: Some(img.architecture.clone()),
                ..ImageSpec::default()
            })
            .expect("finishing image"),
        );
    }
    let index = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": written.iter().zip(images).map(|(w, img)| json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": w.manifest_digest.to_string(),
            "size": w.manifest_size,
            "platform": { "architecture": img.architecture, "os": "linux" },
        })).collect::<Vec<_>>(),
    });
    let w = LayoutWriter::create(dir).expect("layout");
    let bytes = serde_json::to_vec(&index).expect("json");
    let (digest, size) = w.add_blob(&bytes).expect("index blob");
    let top = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": digest.to_string(),
            "size": size,
            "annotations": { "org.opencontainers.image.ref.name": tag },
        }],
    });
    std::fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&top).expect("json"),
    )
    .expect("index.json");
    written
}
