//! `runbox serve` against hostile and careless clients (SECURITY-CHECKLIST.md
//! items 26-30): body limits, memory under concurrent uploads, slow heads and
//! bodies, per-client rate limits and forwarded addresses, a full queue, admin
//! endpoints, and malformed requests. Each test starts the real binary on a
//! loopback port over a fresh data directory holding `busybox`; raw sockets do
//! what a well-behaved client library would not (send a head and no body, stall
//! half-way through a head, trickle a body).
//!
//! Nothing here waits by sleeping: tests wait on server answers, socket reads,
//! SSE events, or poll a condition with a deadline. (Trickling clients sleep
//! between bytes: that is the behaviour under test, not synchronisation.)

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use common::Runbox;
use runbox_testkit::server::{Resp, TestServer};
use serde_json::{json, Value};

fn server(args: &[&str]) -> (Runbox, TestServer) {
    Runbox::busybox_server(args)
}

fn host_port(ts: &TestServer) -> &str {
    ts.url.strip_prefix("http://").expect("an http:// URL")
}

fn port(ts: &TestServer) -> u16 {
    host_port(ts).rsplit(':').next().unwrap().parse().unwrap()
}

/// A raw connection to the server; reads give up after 60 s so that a server that
/// never answers fails the test instead of hanging it.
fn connect(ts: &TestServer) -> TcpStream {
    let s = TcpStream::connect(host_port(ts)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// A raw connection to the server from the local address `ip`.
fn connect_from(ts: &TestServer, ip: [u8; 4]) -> TcpStream {
    use rustix::net::{AddressFamily, SocketType};
    let fd = rustix::net::socket(AddressFamily::INET, SocketType::STREAM, None).unwrap();
    rustix::net::bind(&fd, &std::net::SocketAddr::from((ip, 0))).unwrap();
    let server: std::net::SocketAddr = host_port(ts).parse().unwrap();
    rustix::net::connect(&fd, &server).unwrap();
    let s = TcpStream::from(fd);
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s
}

/// Reads one HTTP/1.1 response (Content-Length, chunked, or until EOF). `None`
/// when the server closed the connection without answering.
fn read_response(s: &mut TcpStream) -> std::io::Result<Option<Resp>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i;
        }
        let n = match s.read(&mut chunk) {
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::ConnectionReset && buf.is_empty() => return Ok(None),
            Err(e) => return Err(e),
        };
        if n == 0 {
            if buf.is_empty() {
                return Ok(None);
            }
            return Err(std::io::Error::new(
                ErrorKind::UnexpectedEof,
                format!(
                    "EOF inside a response head: {:?}",
                    String::from_utf8_lossy(&buf)
                ),
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut rest = buf[head_end + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not a status line: {status_line:?}"));
    let mut headers = HashMap::new();
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
        }
    }
    let mut fill = |rest: &mut Vec<u8>, want: usize| -> std::io::Result<()> {
        while rest.len() < want {
            let n = s.read(&mut chunk)?;
            if n == 0 {
                return Err(ErrorKind::UnexpectedEof.into());
            }
            rest.extend_from_slice(&chunk[..n]);
        }
        Ok(())
    };
    let body = if let Some(len) = headers.get("content-length") {
        let len: usize = len.parse().unwrap();
        fill(&mut rest, len)?;
        rest.truncate(len);
        rest
    } else if headers
        .get("transfer-encoding")
        .is_some_and(|v| v.contains("chunked"))
    {
        let mut body = Vec::new();
        let mut at = 0;
        loop {
            let line_end = loop {
                if let Some(i) = find(&rest[at..], b"\r\n") {
                    break at + i;
                }
                let want = rest.len() + 1;
                fill(&mut rest, want)?;
            };
            let size_text = String::from_utf8_lossy(&rest[at..line_end]).into_owned();
            let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16)
                .unwrap_or_else(|_| panic!("bad chunk size {size_text:?}"));
            let start = line_end + 2;
            fill(&mut rest, start + size + 2)?;
            if size == 0 {
                break;
            }
            body.extend_from_slice(&rest[start..start + size]);
            at = start + size + 2;
        }
        body
    } else {
        let mut all = rest;
        s.read_to_end(&mut all)?;
        all
    };
    let headers = (&headers)
        .try_into()
        .expect("response headers the http crate accepts");
    Ok(Some(Resp {
        status,
        headers,
        body,
    }))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A request head for a JSON submission.
fn json_head(method: &str, path: &str, extra: &str) -> String {
    format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n{extra}\r\n"
    )
}

/// One line of /proc/PID/status, in KiB (VmRSS, VmHWM).
fn status_kib(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// Bytes received but not yet read by the application, for each established
/// connection whose local port is `port`, keyed by the remote port (/proc/net/tcp).
fn unread_by_peer_port(port: u16) -> HashMap<u16, u64> {
    let text = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let mut out = HashMap::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 5 || f[3] != "01" {
            continue;
        }
        let port_of = |a: &str| u16::from_str_radix(a.rsplit(':').next().unwrap(), 16).unwrap();
        if port_of(f[1]) != port {
            continue;
        }
        let rx = u64::from_str_radix(f[4].split(':').nth(1).unwrap(), 16).unwrap();
        out.insert(port_of(f[2]), rx);
    }
    out
}

/// Polls `f` until it returns `Some`, for at most `limit`.
fn wait_for<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < end,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// How a connection the client stopped feeding ended.
#[derive(Debug)]
enum Cut {
    /// Closed (EOF or reset) with nothing sent, after this long.
    Closed(Duration),
    /// Answered (then, maybe, closed).
    Answered(Duration, Box<Resp>),
}

/// Waits (up to `limit`) for the server to answer or close `s`; times are from `t0`.
fn wait_cut(what: &str, s: &mut TcpStream, t0: Instant, limit: Duration) -> Cut {
    s.set_read_timeout(Some(limit)).unwrap();
    match read_response(s) {
        Ok(None) => Cut::Closed(t0.elapsed()),
        Ok(Some(r)) => Cut::Answered(t0.elapsed(), Box::new(r)),
        Err(e) if e.kind() == ErrorKind::ConnectionReset => Cut::Closed(t0.elapsed()),
        Err(e) => panic!(
            "{what}: the server neither answered nor closed the connection in {:?}: {e}",
            t0.elapsed()
        ),
    }
}

/// Whether the server still holds `s` open (nothing to read, no EOF).
fn still_open(s: &TcpStream) -> bool {
    s.set_nonblocking(true).unwrap();
    let r = s.peek(&mut [0u8; 1]);
    s.set_nonblocking(false).unwrap();
    matches!(r, Err(e) if e.kind() == ErrorKind::WouldBlock)
}

fn error_message(r: &Resp) -> String {
    r.json()["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn assert_healthy(ts: &TestServer) {
    let h = ts.get("/healthz");
    assert_eq!(h.status, 200, "{}", h.text());
    assert_eq!(h.json()["status"], "ok");
    let out = ts.run(&json!({"image": "busybox", "argv": ["echo", "still here"], "cache": false}));
    assert_eq!(out["result"]["stdout"], "still here\n", "{out}");
}

// 26. Body over the limit gets 413 without being buffered whole.

#[test]
fn declared_body_over_the_limit_gets_413_before_any_of_it_is_sent() {
    let (_rb, ts) = server(&["--body-limit", "1m", "--rate-limit", "0"]);
    for (path, length) in [
        ("/api/run", 1u64 << 40),
        ("/api/jobs", 1 << 40),
        ("/api/run", (1 << 20) + 1),
    ] {
        let mut s = connect(&ts);
        let head = json_head("POST", path, &format!("Content-Length: {length}\r\n"));
        s.write_all(head.as_bytes()).unwrap();
        // Not one byte of the body is sent: the answer has to come anyway.
        let r = read_response(&mut s)
            .unwrap()
            .expect("an answer, not a closed connection");
        ts.check("POST", path, &r);
        assert_eq!(r.status, 413, "{path} {length}: {}", r.text());
        assert_eq!(r.code(), "payload_too_large");
        let m = error_message(&r);
        assert!(
            m.contains(&length.to_string()) && m.contains("1048576"),
            "the message names the size and the limit: {m}"
        );
    }

    // A client that asks before sending (Expect: 100-continue) is refused without
    // being invited to send.
    let mut s = connect(&ts);
    let head = json_head(
        "POST",
        "/api/run",
        "Content-Length: 1099511627776\r\nExpect: 100-continue\r\n",
    );
    s.write_all(head.as_bytes()).unwrap();
    let r = read_response(&mut s).unwrap().expect("an answer");
    assert_eq!(r.status, 413, "no 100 Continue first: {}", r.text());

    // Exactly at the limit is read (and refused for what it is, not its size).
    let mut s = connect(&ts);
    let head = json_head("POST", "/api/run", "Content-Length: 1048576\r\n");
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(&vec![b'x'; 1 << 20]).unwrap();
    let r = read_response(&mut s).unwrap().expect("an answer");
    ts.check("POST", "/api/run", &r);
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.code(), "invalid_argument");
    assert!(error_message(&r).contains("not valid JSON"), "{}", r.text());
    assert_healthy(&ts);
}

#[test]
fn chunked_body_growing_over_the_limit_gets_413_and_the_server_stays_healthy() {
    let (_rb, ts) = server(&["--body-limit", "256k", "--rate-limit", "0"]);
    let mut s = connect(&ts);
    let head = json_head("POST", "/api/run", "Transfer-Encoding: chunked\r\n");
    s.write_all(head.as_bytes()).unwrap();
    // 64 MiB of whitespace in 16 KiB chunks, for as long as the server takes it.
    let mut w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let chunk = [b' '; 16 << 10];
        for _ in 0..4096 {
            let ok = w
                .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                .and_then(|()| w.write_all(&chunk))
                .and_then(|()| w.write_all(b"\r\n"));
            if ok.is_err() {
                break;
            }
        }
    });
    let r = read_response(&mut s)
        .unwrap()
        .expect("an answer, not a closed connection");
    ts.check("POST", "/api/run", &r);
    assert_eq!(r.status, 413, "{}", r.text());
    assert_eq!(r.code(), "payload_too_large");
    assert!(error_message(&r).contains("262144"), "{}", r.text());
    // Unblock the writer if the server kept the connection open.
    let _ = s.shutdown(Shutdown::Both);
    writer.join().unwrap();

    // A chunked body under the limit is fine, and the server still runs jobs.
    let mut s = connect(&ts);
    s.write_all(head.as_bytes()).unwrap();
    let body = json!({"image": "busybox", "argv": ["echo", "chunked"], "cache": false}).to_string();
    let (a, b) = body.split_at(body.len() / 2);
    for part in [a, b] {
        write!(s, "{:x}\r\n{part}\r\n", part.len()).unwrap();
    }
    s.write_all(b"0\r\n\r\n").unwrap();
    let r = read_response(&mut s).unwrap().expect("an answer");
    ts.check("POST", "/api/run", &r);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["result"]["stdout"], "chunked\n");
    assert_healthy(&ts);
}

/// 16 clients upload 8 MiB bodies (the limit) at once and hold back their last
/// byte. The server buffers bodies within a budget of 8 × the body limit (8
/// bodies of 8 MiB, `BodyBudget` in crates/server/src/guard.rs): 8 uploads are
/// read whole while the other 8 wait, unread, in the kernel's socket buffers
/// (seen in /proc/net/tcp). 8 MiB bodies make the budget's 64 MiB stand far above
/// the server's baseline and allocator noise, and the unbounded case (16 × 8 MiB
/// = 128 MiB) far above the bound asserted (96 MiB).
#[test]
fn concurrent_large_uploads_keep_server_memory_bounded() {
    const LIMIT: usize = 8 << 20;
    const CLIENTS: usize = 16;
    const BUDGET_BODIES: usize = 8;
    let (_rb, ts) = server(&[
        "--body-limit",
        "8m",
        "--body-timeout",
        "120s",
        "--rate-limit",
        "0",
    ]);
    let pid = ts.pid();
    let base_rss = status_kib(pid, "VmRSS");
    let body = Arc::new(vec![b'x'; LIMIT]);
    let mut ports = Vec::new();
    let mut go = Vec::new();
    let mut clients = Vec::new();
    let written: Arc<Vec<AtomicBool>> =
        Arc::new((0..CLIENTS).map(|_| AtomicBool::new(false)).collect());
    for i in 0..CLIENTS {
        let (go_tx, go_rx) = mpsc::channel::<()>();
        go.push(go_tx);
        let mut s = connect(&ts);
        s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(120))).unwrap();
        ports.push(s.local_addr().unwrap().port());
        let body = body.clone();
        let written = written.clone();
        clients.push(std::thread::spawn(move || {
            let head = json_head("POST", "/api/run", &format!("Content-Length: {LIMIT}\r\n"));
            s.write_all(head.as_bytes()).unwrap();
            // Blocks while the server does not read this upload.
            s.write_all(&body[..LIMIT - 1]).unwrap();
            written[i].store(true, Ordering::SeqCst);
            // The test gave up (and says why) when this fails.
            go_rx.recv().ok()?;
            s.write_all(&body[LIMIT - 1..]).unwrap();
            Some(read_response(&mut s).unwrap().expect("an answer"))
        }));
    }

    // Wait until as many uploads as the budget holds are read whole and all the
    // others have data waiting unread.
    let server_port = port(&ts);
    let (drained, waiting) = wait_for(Duration::from_secs(90), "uploads to settle", || {
        let unread = unread_by_peer_port(server_port);
        let drained = (0..CLIENTS)
            .filter(|&i| written[i].load(Ordering::SeqCst) && unread.get(&ports[i]) == Some(&0))
            .count();
        let waiting = (0..CLIENTS)
            .filter(|&i| unread.get(&ports[i]).is_some_and(|&n| n > 0))
            .count();
        (drained >= BUDGET_BODIES && drained + waiting == CLIENTS).then_some((drained, waiting))
    });
    let hwm_full = status_kib(pid, "VmHWM");
    assert_eq!(
        (drained, waiting),
        (BUDGET_BODIES, CLIENTS - BUDGET_BODIES),
        "uploads read whole vs left in the kernel: the budget holds {BUDGET_BODIES} bodies"
    );

    for g in &go {
        g.send(()).unwrap();
    }
    for c in clients {
        let r = c.join().unwrap().unwrap();
        ts.check("POST", "/api/run", &r);
        // Every upload was read in the end (none waited past the body timeout),
        // and refused for what it is.
        assert_eq!(r.status, 400, "{}", r.text());
        assert_eq!(r.code(), "invalid_argument");
    }
    let hwm = status_kib(pid, "VmHWM");
    let growth_mib = hwm.saturating_sub(base_rss) / 1024;
    eprintln!(
        "server RSS: {} MiB before, peak {} MiB with {BUDGET_BODIES} uploads buffered, peak {} MiB overall (+{growth_mib} MiB)",
        base_rss / 1024,
        hwm_full / 1024,
        hwm / 1024
    );
    let unbounded_mib = (CLIENTS * LIMIT) >> 20;
    assert!(
        growth_mib < 96,
        "server peak memory grew by {growth_mib} MiB; the budget allows {} MiB of bodies, unbounded would be {unbounded_mib} MiB",
        (BUDGET_BODIES * LIMIT) >> 20
    );
    assert_healthy(&ts);
}

// 27. Slowloris (trickled headers/body) is cut by timeouts.

#[test]
fn slowloris_connections_are_cut_after_the_header_timeout_while_others_are_served() {
    let timeout = Duration::from_secs(3);
    let (_rb, ts) = server(&["--header-timeout", "3s", "--rate-limit", "0"]);
    let t0 = Instant::now();
    let mut slow = Vec::new();
    for start in [
        // Half a request head, never finished.
        &b"POST /api/run HTTP/1.1\r\nHost: test\r\nContent-Ty"[..],
        // A connection that never says anything.
        b"",
        // Half an HTTP/2 preface.
        b"PRI * HTTP/2.0\r\n",
    ] {
        for _ in 0..4 {
            let mut s = connect(&ts);
            s.write_all(start).unwrap();
            slow.push((String::from_utf8_lossy(start).into_owned(), s));
        }
    }
    // A whole HTTP/2 preface and no request: the server answers with its
    // SETTINGS frame, then has to give up on the connection too.
    let mut h2 = Vec::new();
    for _ in 0..2 {
        let mut s = connect(&ts);
        s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").unwrap();
        h2.push(s);
    }

    // Meanwhile, other clients are served.
    assert_healthy(&ts);
    if t0.elapsed() < timeout / 2 {
        for (what, s) in &slow {
            assert!(still_open(s), "{what:?} was closed before its time");
        }
    }

    for mut s in h2 {
        s.set_read_timeout(Some(timeout + Duration::from_secs(10)))
            .unwrap();
        let mut frames = Vec::new();
        match s.read_to_end(&mut frames) {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
            Err(e) => panic!(
                "an HTTP/2 connection without a request was not closed in {:?}: {e}",
                t0.elapsed()
            ),
        }
        let after = t0.elapsed();
        assert!(
            after >= timeout / 2 && after < timeout + Duration::from_secs(10),
            "an HTTP/2 connection without a request closed after {after:?}"
        );
    }
    for (what, mut s) in slow {
        match wait_cut(&what, &mut s, t0, timeout + Duration::from_secs(10)) {
            Cut::Closed(after) => {
                assert!(
                    after >= timeout / 2 && after < timeout + Duration::from_secs(10),
                    "{what:?} closed after {after:?}, the header timeout is {timeout:?}"
                );
            }
            Cut::Answered(after, r) => {
                assert_eq!(r.status, 408, "{what:?}: {}", r.text());
                assert!(after >= timeout / 2, "{what:?} cut after {after:?}");
            }
        }
    }
    assert_healthy(&ts);
}

#[test]
fn trickled_request_head_is_cut_at_the_header_deadline() {
    let timeout = Duration::from_secs(2);
    let (_rb, ts) = server(&["--header-timeout", "2s", "--rate-limit", "0"]);
    let mut s = connect(&ts);
    let t0 = Instant::now();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: test\r\nX-Slow: ")
        .unwrap();
    // A byte every 100 ms: never idle for long, never done.
    let mut w = s.try_clone().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let writer = std::thread::spawn(move || {
        while !stop2.load(Ordering::SeqCst) && w.write_all(b"a").is_ok() {
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    let cut = wait_cut("a trickled head", &mut s, t0, Duration::from_secs(30));
    stop.store(true, Ordering::SeqCst);
    let _ = s.shutdown(Shutdown::Both);
    writer.join().unwrap();
    match cut {
        Cut::Closed(after) => assert!(
            after >= timeout / 2 && after < timeout + Duration::from_secs(10),
            "closed after {after:?}, the header timeout is {timeout:?}"
        ),
        Cut::Answered(after, r) => {
            assert_eq!(r.status, 408, "{}", r.text());
            assert!(after >= timeout / 2, "cut after {after:?}");
        }
    }
    assert_healthy(&ts);
}

#[test]
fn trickled_body_gets_408_after_the_body_timeout() {
    let timeout = Duration::from_secs(2);
    let (_rb, ts) = server(&["--body-timeout", "2s", "--rate-limit", "0"]);
    let mut s = connect(&ts);
    let head = json_head("POST", "/api/run", "Content-Length: 4096\r\n");
    s.write_all(head.as_bytes()).unwrap();
    let t0 = Instant::now();
    s.write_all(br#"{"image": "busybox", "argv": ["true"], "env": {"#)
        .unwrap();
    // A byte every 100 ms: 4096 bytes would take 7 minutes.
    let mut w = s.try_clone().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let writer = std::thread::spawn(move || {
        while !stop2.load(Ordering::SeqCst) && w.write_all(b" ").is_ok() {
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    let cut = wait_cut("a trickled body", &mut s, t0, Duration::from_secs(30));
    stop.store(true, Ordering::SeqCst);
    let _ = s.shutdown(Shutdown::Both);
    writer.join().unwrap();
    let Cut::Answered(after, r) = cut else {
        panic!("closed without an answer: {cut:?}")
    };
    ts.check("POST", "/api/run", &r);
    assert_eq!(r.status, 408, "{}", r.text());
    assert_eq!(r.code(), "request_timeout");
    assert!(
        error_message(&r).contains("within 2 s"),
        "the message names the timeout: {}",
        r.text()
    );
    assert!(
        after >= timeout / 2 && after < timeout + Duration::from_secs(10),
        "answered after {after:?}, the body timeout is {timeout:?}"
    );
    assert_eq!(ts.metric("runbox_jobs_queued"), 0.0);
    assert_healthy(&ts);
}

// 28. Per-IP rate limits key on the peer; X-Forwarded-For only from trusted proxies.

/// A submission from `xff` (None: no header) that the server refuses cheaply
/// (unknown image) unless the rate limit refuses it first.
fn submit_from(ts: &TestServer, xff: Option<&str>) -> Resp {
    let mut req = ts
        .client()
        .post(format!("{}/api/jobs", ts.url))
        .json(&json!({"image": "no-such-image:1", "argv": ["true"]}));
    if let Some(x) = xff {
        req = req.header("X-Forwarded-For", x);
    }
    ts.send("POST", "/api/jobs", req)
}

fn assert_rate_limited(r: &Resp, client: &str) {
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.code(), "rate_limited");
    let secs: u64 = r
        .header("retry-after")
        .expect("a Retry-After header")
        .parse()
        .unwrap();
    assert!((1..=61).contains(&secs), "Retry-After: {secs}");
    let m = error_message(r);
    assert!(m.contains(client), "the message names {client}: {m}");
}

/// `--rate-limit 1 --rate-burst 3`: three submissions at once, then one a
/// minute. (One a minute rather than one a second keeps "the 4th quick
/// submission" exact on a loaded machine.)
#[test]
fn rate_limit_counts_submissions_per_peer_and_ignores_forged_forwarded_for() {
    let (_rb, ts) = server(&["--rate-limit", "1", "--rate-burst", "3"]);
    // Submissions count whether they are accepted or refused: a flood of bad
    // requests is throttled before its bodies are read.
    let bad = ts.send(
        "POST",
        "/api/run",
        ts.client()
            .post(format!("{}/api/run", ts.url))
            .header("Content-Type", "application/json")
            .body("{not json"),
    );
    assert_eq!(bad.status, 400, "{}", bad.text());
    assert_eq!(submit_from(&ts, None).code(), "image_not_found");
    let ok = ts.post_json(
        "/api/run",
        &json!({"image": "busybox", "argv": ["true"], "cache": false}),
    );
    assert_eq!(ok.status, 200, "{}", ok.text());

    let fourth = submit_from(&ts, None);
    assert_rate_limited(&fourth, "127.0.0.1");
    // Claiming to be someone else does not help a direct client.
    for xff in ["198.51.100.7", "198.51.100.8, 203.0.113.1"] {
        let r = submit_from(&ts, Some(xff));
        assert_rate_limited(&r, "127.0.0.1");
    }
    // Both endpoints share the limit.
    let r = ts.post_json("/api/run", &json!({"image": "busybox", "argv": ["true"]}));
    assert_rate_limited(&r, "127.0.0.1");
    assert_eq!(ts.metric("runbox_rate_limited_total"), 4.0);

    // Another peer address (the loopback network is 127/8) has its own budget.
    let mut other = connect_from(&ts, [127, 0, 0, 2]);
    let body = json!({"image": "no-such-image:1", "argv": ["true"]}).to_string();
    let head = json_head(
        "POST",
        "/api/jobs",
        &format!("Content-Length: {}\r\nConnection: close\r\n", body.len()),
    );
    other.write_all(head.as_bytes()).unwrap();
    other.write_all(body.as_bytes()).unwrap();
    let r = read_response(&mut other).unwrap().expect("an answer");
    ts.check("POST", "/api/jobs", &r);
    assert_eq!(r.code(), "image_not_found", "{}", r.text());
    // Reading is not limited.
    assert_eq!(ts.get("/api/programs").status, 200);
    assert_eq!(ts.get("/healthz").status, 200);
}

#[test]
fn behind_a_trusted_proxy_forwarded_clients_have_their_own_limits() {
    let (_rb, ts) = server(&[
        "--rate-limit",
        "1",
        "--rate-burst",
        "3",
        "--trusted-proxy",
        "127.0.0.1",
    ]);
    let a = "198.51.100.7";
    for _ in 0..3 {
        assert_eq!(submit_from(&ts, Some(a)).code(), "image_not_found");
    }
    assert_rate_limited(&submit_from(&ts, Some(a)), a);
    // A client of the proxy that prepends an address of its choosing is still
    // counted as the address the proxy saw (the rightmost untrusted entry).
    assert_rate_limited(&submit_from(&ts, Some(&format!("203.0.113.50, {a}"))), a);
    // Another client behind the same proxy has its own budget, and so has the
    // proxy's own address.
    for xff in [Some("198.51.100.8"), Some("2001:db8::1"), None] {
        for _ in 0..3 {
            let r = submit_from(&ts, xff);
            assert_eq!(r.code(), "image_not_found", "{xff:?}: {}", r.text());
        }
        let client = xff.unwrap_or("127.0.0.1");
        assert_rate_limited(&submit_from(&ts, xff), client);
    }
}

// The queue: bounded, and full means 503 at once.

/// Reads a job's Server-Sent Events until an event named `name`.
fn wait_event(ts: &TestServer, id: &str, name: &str) {
    let mut s = connect(ts);
    write!(
        s,
        "GET /api/jobs/{id}/events HTTP/1.1\r\nHost: test\r\nAccept: text/event-stream\r\n\r\n"
    )
    .unwrap();
    let mut lines = BufReader::new(s);
    let mut seen = Vec::new();
    loop {
        let mut l = String::new();
        let n = lines.read_line(&mut l).unwrap();
        assert!(n > 0, "the event stream ended before {name:?}: {seen:?}");
        let l = l.trim_end().to_owned();
        if l == format!("event: {name}") {
            return;
        }
        if l.starts_with("event: ") {
            seen.push(l);
        }
    }
}

fn processes_with(marker: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            if String::from_utf8_lossy(&cmd).contains(marker) {
                out.push(pid);
            }
        }
    }
    out
}

#[test]
fn full_queue_refuses_with_503_and_retry_after() {
    let (_rb, ts) = server(&["--workers", "1", "--queue", "1", "--rate-limit", "0"]);
    let marker = format!("queue-test-{}", std::process::id());
    let job = |n: &str| {
        json!({
            "image": "busybox",
            "argv": ["sh", "-c", format!("sleep 20; echo {marker}-{n}")],
            "limits": {"wall_time_ms": 30000},
        })
    };
    let a = ts.post_json("/api/jobs", &job("a"));
    assert_eq!(a.status, 202, "{}", a.text());
    let a_id = a.json()["id"].as_str().unwrap().to_owned();
    wait_event(&ts, &a_id, "running");

    let b = ts.post_json("/api/jobs", &job("b"));
    assert_eq!(b.status, 202, "{}", b.text());
    assert_eq!(b.json()["status"], "queued");

    let c = ts.post_json("/api/jobs", &job("c"));
    assert_eq!(c.status, 503, "{}", c.text());
    assert_eq!(c.code(), "queue_full");
    let secs: u64 = c
        .header("retry-after")
        .expect("a Retry-After header")
        .parse()
        .unwrap();
    assert!(secs >= 1, "Retry-After: {secs}");
    // The same through the synchronous endpoint.
    let d = ts.post_json("/api/run", &job("d"));
    assert_eq!(d.status, 503, "{}", d.text());
    assert_eq!(d.code(), "queue_full");
    assert!(d.header("retry-after").is_some());

    let h = ts.get("/healthz").json();
    assert_eq!(
        (h["running"].as_u64(), h["queued"].as_u64()),
        (Some(1), Some(1)),
        "{h}"
    );
    assert_eq!(ts.metric("runbox_jobs_running"), 1.0);
    assert_eq!(ts.metric("runbox_jobs_queued"), 1.0);
    assert_eq!(
        ts.metric(r#"runbox_http_requests_total{route="/api/jobs",method="POST",status="503"}"#),
        1.0
    );
    assert_eq!(
        ts.metric(r#"runbox_http_requests_total{route="/api/run",method="POST",status="503"}"#),
        1.0
    );
    let b_id = b.json()["id"].as_str().unwrap().to_owned();
    assert_eq!(
        ts.get(&format!("/api/jobs/{b_id}")).json()["status"],
        "queued"
    );
    assert_eq!(
        ts.get(&format!("/api/jobs/{a_id}")).json()["status"],
        "running"
    );
    assert!(!processes_with(&marker).is_empty());

    // Stopping the server does not wait for the running job, and takes its
    // sandbox with it.
    let t = Instant::now();
    drop(ts);
    let took = t.elapsed();
    assert!(took < Duration::from_secs(10), "stopping took {took:?}");
    wait_for(
        Duration::from_secs(10),
        "the job's processes to end",
        || processes_with(&marker).is_empty().then_some(()),
    );
}

// 30. Admin operations need a token.

#[test]
fn admin_endpoints_need_the_token() {
    let catalog = tempfile::tempdir().unwrap();
    std::fs::create_dir(catalog.path().join("programs")).unwrap();
    let catalog_dir = catalog.path().to_str().unwrap().to_owned();
    let (rb, ts) = server(&["--rate-limit", "0", "--catalog", &catalog_dir]);

    let token_file = rb.data().join("admin-token");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&token_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "admin-token mode {:o}", mode & 0o777);
    let token = std::fs::read_to_string(&token_file)
        .unwrap()
        .trim()
        .to_owned();
    assert!(token.len() >= 32, "a long random token: {token:?}");

    let out = ts.run(&json!({"image": "busybox", "argv": ["echo", "keep me"]}));
    let key = out["key"].as_str().unwrap().to_owned();
    let result_path = format!("/api/results/{key}");

    let endpoints = [
        ("POST", "/api/admin/gc".to_owned()),
        ("POST", "/api/admin/catalog/build".to_owned()),
        ("DELETE", result_path.clone()),
    ];
    let request = |method: &str, path: &str, auth: Option<String>| {
        let url = format!("{}{path}", ts.url);
        let mut req = match method {
            "POST" => ts.client().post(url).json(&json!({})),
            _ => ts.client().delete(url),
        };
        if let Some(a) = auth {
            req = req.header("Authorization", a);
        }
        ts.send(method, path, req)
    };
    for (method, path) in &endpoints {
        for auth in [
            None,
            Some("Bearer wrong".to_owned()),
            Some(format!("Bearer {}", &token[..token.len() - 1])),
            Some(format!("Basic {token}")),
            Some(token.clone()),
        ] {
            let r = request(method, path, auth.clone());
            assert_eq!(r.status, 401, "{method} {path} with {auth:?}: {}", r.text());
            assert_eq!(r.code(), "unauthorized");
        }
    }
    // Nothing happened.
    assert_eq!(
        ts.get(&result_path).status,
        200,
        "the result is still there"
    );

    let bearer = Some(format!("Bearer {token}"));
    let gc = request("POST", "/api/admin/gc", bearer.clone());
    assert_eq!(gc.status, 200, "{}", gc.text());
    assert!(gc.json()["bytes_freed"].is_u64());
    let build = request("POST", "/api/admin/catalog/build", bearer.clone());
    assert_eq!(build.status, 202, "{}", build.text());
    assert_eq!(build.json()["images"], json!([]));
    let del = request("DELETE", &result_path, bearer.clone());
    assert_eq!(del.status, 204, "{}", del.text());
    let gone = ts.get(&result_path);
    assert_eq!(gone.status, 404, "{}", gone.text());
    assert_eq!(gone.code(), "not_found");
    // The image gc kept is still usable.
    assert_healthy(&ts);
}

// 29. Malformed JSON, unknown fields, absurd limits, unknown images: specific
// 4xx errors, nothing queued.

/// The job metrics that move when anything is queued, run or looked up in the cache.
fn job_metrics(ts: &TestServer) -> Vec<String> {
    let text = ts.get("/metrics").text();
    let mut lines: Vec<String> = text
        .lines()
        .filter(|l| {
            !l.starts_with('#')
                && (l.starts_with("runbox_jobs") || l.starts_with("runbox_cache_lookups"))
        })
        .map(str::to_owned)
        .collect();
    lines.sort();
    lines
}

/// What is sent (what, path, content type, body) and the answer expected
/// (status, code, words the message must hold).
type BadRequest<'a> = (
    &'a str,
    &'a str,
    &'a str,
    String,
    u16,
    &'a str,
    Vec<&'a str>,
);

#[test]
fn malformed_and_absurd_requests_get_specific_errors_and_queue_nothing() {
    let (_rb, ts) = server(&["--rate-limit", "0"]);
    let before = job_metrics(&ts);
    let busybox = |extra: Value| {
        let mut v = json!({"image": "busybox", "argv": ["true"], "cache": false});
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        v.to_string()
    };
    let cases: Vec<BadRequest<'_>> = vec![
        (
            "invalid JSON",
            "/api/run",
            "application/json",
            r#"{"image": "busybox", "argv": ["true"]"#.into(),
            400,
            "invalid_argument",
            vec!["not valid JSON", "line 1"],
        ),
        (
            "empty body",
            "/api/jobs",
            "application/json",
            String::new(),
            400,
            "invalid_argument",
            vec!["not valid JSON"],
        ),
        (
            "not an object",
            "/api/run",
            "application/json",
            "[1, 2]".into(),
            400,
            "invalid_argument",
            vec!["JSON object"],
        ),
        (
            "unknown field",
            "/api/run",
            "application/json",
            busybox(json!({"privileged": true})),
            400,
            "invalid_argument",
            vec!["privileged"],
        ),
        (
            "unknown limit",
            "/api/jobs",
            "application/json",
            busybox(json!({"limits": {"wall_time": 5}})),
            400,
            "invalid_argument",
            vec!["limits", "wall_time"],
        ),
        (
            "unknown input field",
            "/api/run",
            "application/json",
            busybox(json!({"inputs": [{"path": "a", "content": "x", "mode": 511}]})),
            400,
            "invalid_argument",
            vec!["inputs[0]", "mode"],
        ),
        (
            "argv of the wrong type",
            "/api/run",
            "application/json",
            busybox(json!({"argv": "echo hi"})),
            400,
            "invalid_argument",
            vec!["argv"],
        ),
        (
            "a limit of the wrong type",
            "/api/jobs",
            "application/json",
            busybox(json!({"limits": {"memory_bytes": "1g"}})),
            400,
            "invalid_argument",
            vec!["limits.memory_bytes"],
        ),
        (
            "a negative limit",
            "/api/run",
            "application/json",
            busybox(json!({"limits": {"wall_time_ms": -1}})),
            400,
            "invalid_argument",
            vec!["limits.wall_time_ms"],
        ),
        (
            "a limit past 64 bits",
            "/api/run",
            "application/json",
            busybox(json!({"limits": {"memory_bytes": 1e30}})),
            400,
            "invalid_argument",
            vec!["limits.memory_bytes"],
        ),
        (
            "cache of the wrong type",
            "/api/run",
            "application/json",
            busybox(json!({"cache": "yes"})),
            400,
            "invalid_argument",
            vec!["cache"],
        ),
        (
            "1 PB of memory",
            "/api/run",
            "application/json",
            busybox(json!({"limits": {"memory_bytes": 1_000_000_000_000_000u64}})),
            400,
            "invalid_limit",
            vec!["memory_bytes", "1000000000000000"],
        ),
        (
            "ten years of wall time",
            "/api/jobs",
            "application/json",
            busybox(json!({"limits": {"wall_time_ms": 315_360_000_000u64}})),
            400,
            "invalid_limit",
            vec!["wall_time_ms", "315360000000"],
        ),
        (
            "a million CPUs",
            "/api/run",
            "application/json",
            busybox(json!({"limits": {"cpu_millis": 1_000_000_000u32}})),
            400,
            "invalid_limit",
            vec!["cpu_millis"],
        ),
        (
            "no processes at all",
            "/api/run",
            "application/json",
            busybox(json!({"limits": {"pids": 0}})),
            400,
            "invalid_limit",
            vec!["pids"],
        ),
        (
            "inputs over the input limit",
            "/api/run",
            "application/json",
            busybox(json!({"limits": {"input_bytes": 4}, "stdin": "12345"})),
            400,
            "invalid_limit",
            vec!["input limit"],
        ),
        (
            "unknown image",
            "/api/run",
            "application/json",
            json!({"image": "no-such-image:1", "argv": ["true"]}).to_string(),
            404,
            "image_not_found",
            vec!["no-such-image"],
        ),
        (
            "unknown program",
            "/api/jobs",
            "application/json",
            json!({"program": "no-such-program"}).to_string(),
            404,
            "program_not_found",
            vec!["no-such-program"],
        ),
        (
            "an input path climbing out",
            "/api/run",
            "application/json",
            busybox(json!({"inputs": [{"path": "../x", "content": "x"}]})),
            400,
            "invalid_path",
            vec!["input path", "../x", ".."],
        ),
        (
            "an absolute input path climbing out",
            "/api/run",
            "application/json",
            busybox(json!({"inputs": [{"path": "/../../etc/passwd", "content": "x"}]})),
            400,
            "invalid_path",
            vec!["input path", "/../../etc/passwd"],
        ),
        (
            "an input path into /proc",
            "/api/jobs",
            "application/json",
            busybox(json!({"inputs": [{"path": "/proc/sys/kernel/core_pattern", "content": "|x"}]})),
            400,
            "invalid_path",
            vec!["input path", "/proc/sys/kernel/core_pattern"],
        ),
        (
            "an output path climbing out",
            "/api/run",
            "application/json",
            busybox(json!({"outputs": ["../../etc/shadow"]})),
            400,
            "invalid_path",
            vec!["../../etc/shadow"],
        ),
        (
            "the same input twice",
            "/api/run",
            "application/json",
            busybox(json!({"inputs": [{"path": "a", "content": "1"}, {"path": "./a", "content": "2"}]})),
            400,
            "invalid_path",
            vec!["given twice"],
        ),
        (
            "a bad environment name",
            "/api/run",
            "application/json",
            busybox(json!({"env": {"A=B": "c"}})),
            400,
            "invalid_argument",
            vec!["A=B"],
        ),
        (
            "text/plain",
            "/api/run",
            "text/plain",
            busybox(json!({})),
            415,
            "unsupported_media_type",
            vec!["text/plain"],
        ),
        (
            "form-urlencoded",
            "/api/jobs",
            "application/x-www-form-urlencoded",
            "image=busybox".into(),
            415,
            "unsupported_media_type",
            vec!["application/x-www-form-urlencoded"],
        ),
        (
            "a multipart file part climbing out",
            "/api/run",
            "multipart/form-data; boundary=XyZ",
            format!(
                "--XyZ\r\nContent-Disposition: form-data; name=\"spec\"\r\n\r\n{}\r\n\
                 --XyZ\r\nContent-Disposition: form-data; name=\"../../x\"\r\n\r\nhi\r\n--XyZ--\r\n",
                busybox(json!({}))
            ),
            400,
            "invalid_path",
            vec!["../../x"],
        ),
        (
            "multipart without a spec",
            "/api/run",
            "multipart/form-data; boundary=XyZ",
            "--XyZ\r\nContent-Disposition: form-data; name=\"main.c\"\r\n\r\nx\r\n--XyZ--\r\n"
                .into(),
            400,
            "invalid_argument",
            vec!["spec", "main.c"],
        ),
    ];
    for (what, path, ctype, body, status, code, words) in &cases {
        let r = ts.send(
            "POST",
            path,
            ts.client()
                .post(format!("{}{path}", ts.url))
                .header("Content-Type", *ctype)
                .body(body.clone()),
        );
        assert_eq!(r.status, *status, "{what}: {}", r.text());
        assert_eq!(r.code(), *code, "{what}: {}", r.text());
        let m = error_message(&r);
        for w in words {
            assert!(m.contains(w), "{what}: the message should name {w:?}: {m}");
        }
    }

    // No Content-Type at all.
    let r = ts.send(
        "POST",
        "/api/run",
        ts.client()
            .post(format!("{}/api/run", ts.url))
            .body(busybox(json!({}))),
    );
    assert_eq!(r.status, 415, "{}", r.text());
    assert_eq!(r.code(), "unsupported_media_type");

    // Unknown API paths answer JSON 404s; known ones with the wrong method, 405.
    for (method, path) in [("GET", "/api/nope"), ("POST", "/api/jobs/x/y/z")] {
        let url = format!("{}{path}", ts.url);
        let req = match method {
            "GET" => ts.client().get(url),
            _ => ts.client().post(url).json(&json!({})),
        };
        let r = ts.send(method, path, req);
        assert_eq!(r.status, 404, "{method} {path}: {}", r.text());
        assert_eq!(r.code(), "not_found");
        assert!(error_message(&r).contains(path), "{}", r.text());
    }
    for (method, path) in [
        ("GET", "/api/run"),
        ("DELETE", "/api/jobs"),
        ("POST", "/api/programs"),
        ("PUT", "/api/admin/gc"),
    ] {
        let url = format!("{}{path}", ts.url);
        let req = match method {
            "GET" => ts.client().get(url),
            "DELETE" => ts.client().delete(url),
            "POST" => ts.client().post(url).json(&json!({})),
            _ => ts.client().put(url).json(&json!({})),
        };
        let r = ts.send(method, path, req);
        assert_eq!(r.status, 405, "{method} {path}: {}", r.text());
        assert_eq!(r.code(), "method_not_allowed");
        let m = error_message(&r);
        assert!(m.contains(method) && m.contains(path), "{m}");
    }

    // Nothing was queued, run or even looked up in the cache.
    assert_eq!(job_metrics(&ts), before, "the job metrics moved");
    let h = ts.get("/healthz").json();
    assert_eq!(
        (h["queued"].as_u64(), h["running"].as_u64()),
        (Some(0), Some(0))
    );
    // The same metrics do move for a job that is accepted.
    ts.run(&json!({"image": "busybox", "argv": ["true"], "cache": false}));
    assert_ne!(
        job_metrics(&ts),
        before,
        "the job metrics see an accepted job"
    );
}
