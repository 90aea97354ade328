//! Helpers shared by the benchmarks.

/// The `p` quantile (0..=1) of `v` (sorts it).
pub fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// A small xorshift for shuffling the order of contenders within a round (no
/// dependency needed).
#[derive(Debug)]
pub struct Rng(pub u64);

impl Rng {
    /// Seeded from `seed` and the process id, so runs differ.
    pub fn seeded(seed: u64) -> Rng {
        Rng((seed ^ u64::from(std::process::id())) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Shuffles `v` in place (Fisher-Yates).
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            v.swap(i, (self.next_u64() % (i as u64 + 1)) as usize);
        }
    }
}

/// The first three fields of /proc/loadavg (1, 5 and 15 minutes), to print and
/// store beside figures taken on a machine that may be busy.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// Running `runbox serve` and talking to it, for the server benchmarks
/// (`api`, `coordinator`).
pub mod serve {
    use std::io::{BufRead, BufReader};
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Stdio};
    use std::time::Instant;

    use anyhow::{bail, ensure, Context, Result};
    use serde_json::Value;

    /// Runs a command; its stdout, or an error with its stderr.
    pub fn sh(cmd: &mut Command) -> Result<String> {
        let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
        if !out.status.success() {
            bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The last `n` lines of a log file, for error messages.
    pub fn tail(path: &Path, n: usize) -> String {
        let log = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Reads a child's first stdout line, then drains the rest in a thread (so
    /// more output cannot fill the pipe and stall it).
    pub fn first_line(child: &mut Child) -> Result<String> {
        let mut out = BufReader::new(child.stdout.take().context("stdout not piped")?);
        let mut line = String::new();
        out.read_line(&mut line)?;
        std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
        Ok(line.trim().to_owned())
    }

    /// A `runbox serve --no-build --rate-limit 0 ARGS` child on a free loopback
    /// port; killed when dropped.
    #[derive(Debug)]
    pub struct Server {
        child: Child,
        pub url: String,
        pub log: PathBuf,
    }

    impl Server {
        pub fn start(runbox: &Path, data: &Path, args: &[&str], log: PathBuf) -> Result<Server> {
            let mut child = Command::new(runbox)
                .args([
                    "serve",
                    "--listen",
                    "127.0.0.1:0",
                    "--no-build",
                    "--no-warm",
                ])
                .args(["--rate-limit", "0"])
                .args(args)
                .env("RUNBOX_DATA_DIR", data)
                .env_remove("RUNBOX_LOG")
                .env_remove("RUNBOX_CATALOG")
                .env_remove("RUNBOX_DATABASE")
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(std::fs::File::create(&log)?)
                .spawn()
                .context("starting runbox serve")?;
            let line = first_line(&mut child)?;
            let Some(url) = line.strip_prefix("runbox serve: listening on ") else {
                let _ = child.kill();
                let _ = child.wait();
                bail!("runbox serve did not start: {line:?}\n{}", tail(&log, 20));
            };
            Ok(Server {
                url: url.to_owned(),
                child,
                log,
            })
        }

        /// An error with the end of this server's log.
        pub fn explain(&self, e: anyhow::Error) -> anyhow::Error {
            e.context(format!(
                "the server's log ({}) ends with:\n{}",
                self.log.display(),
                tail(&self.log, 20)
            ))
        }
    }

    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// `POST url` with a RunRequest body, checked: status 200, `cached` as
    /// expected, the job exited 0. The latency (send to whole body, ms) and the
    /// answer, or an error quoting it.
    pub async fn checked_run(
        client: &reqwest::Client,
        url: &str,
        body: &[u8],
        cached: bool,
    ) -> Result<(f64, Value)> {
        let t = Instant::now();
        let resp = client
            .post(url)
            .header("content-type", "application/json")
            .body(body.to_vec())
            .send()
            .await?;
        let status = resp.status();
        let bytes = resp.bytes().await?;
        let ms = t.elapsed().as_secs_f64() * 1e3;
        let text = || String::from_utf8_lossy(&bytes).into_owned();
        ensure!(status == 200, "POST /api/run: status {status}: {}", text());
        let v: Value = serde_json::from_slice(&bytes)
            .with_context(|| format!("POST /api/run: not JSON: {}", text()))?;
        ensure!(
            v["cached"] == cached,
            "POST /api/run: expected cached: {cached}: {}",
            text()
        );
        let r = &v["result"];
        ensure!(
            r["status"] == "ok" && r["exit_code"] == 0,
            "POST /api/run: the job did not exit 0: {}",
            text()
        );
        Ok((ms, v))
    }

    /// The sum of the /metrics samples whose name and labels start with `prefix`.
    pub fn metric(text: &str, prefix: &str) -> f64 {
        text.lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}
