//! Test support: a real `agentd serve` process on 127.0.0.1:0 against the fake
//! upstream, and small HTTP / SSE helpers.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use eventsource_stream::Eventsource;
use fake_upstream::FakeUpstream;
use futures::StreamExt;
use reqwest::header::HeaderMap;
use serde_json::Value;

pub const TOKEN: &str = "test-admin-token-0123456789abcdef";

/// The PostgreSQL server tests use when `AGENTD_TEST_STORE=postgres` (and the
/// multi-node tests always): `AGENTD_TEST_DATABASE_URL`, else the local
/// server `.ci/run` keeps up.
pub fn postgres_url() -> String {
    std::env::var("AGENTD_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://root@127.0.0.1:5432/test".to_owned())
}

/// Whether this run of the suite puts its daemons on PostgreSQL
/// (`AGENTD_TEST_STORE=postgres`) instead of each one's own SQLite file.
pub fn on_postgres() -> bool {
    std::env::var("AGENTD_TEST_STORE").is_ok_and(|v| v == "postgres")
}

/// A schema of its own on the test server, so tests sharing one database
/// stay apart (and parallel); dropped with its last user.
pub struct PgSchema {
    base: String,
    pub name: String,
}

impl PgSchema {
    pub fn new() -> std::sync::Arc<PgSchema> {
        Self::on(&postgres_url())
    }

    /// A schema on another server (a test's own throwaway PostgreSQL).
    pub fn on(base: &str) -> std::sync::Arc<PgSchema> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        std::sync::Arc::new(PgSchema {
            base: base.to_owned(),
            name: format!("t_{}_{n}_{nanos}", std::process::id()),
        })
    }

    /// The URL a daemon is given: agentd creates the schema on first use.
    pub fn url(&self) -> String {
        let sep = if self.base.contains('?') { '&' } else { '?' };
        format!("{}{sep}schema={}", self.base, self.name)
    }

    /// Runs one statement with `psql` (the server's own client).
    pub fn psql(&self, sql: &str) -> std::process::Output {
        Command::new("psql")
            .args(["-q", "-X", "-A", "-t", "-d", &self.base, "-c", sql])
            .output()
            .expect("run psql")
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        let _ = self.psql(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name));
    }
}

/// A daemon process and the directory it owns.
pub struct Daemon {
    pub url: String,
    pub dir: tempfile::TempDir,
    child: Option<Child>,
    http: reqwest::Client,
    /// Extra environment for the process.
    env: Vec<(String, String)>,
    /// On PostgreSQL: the schema it keeps its state in (shared by the nodes
    /// of a multi-node test), kept across restarts.
    pub schema: Option<std::sync::Arc<PgSchema>>,
    /// README's first command: no config file, no admin token, the data dir
    /// defaulted inside `dir` (the working directory).
    bare: bool,
}

/// The config every test daemon gets: the fake upstream, quick retries, and
/// short leases so recovery tests do not wait long.
pub fn config_for(fake: &FakeUpstream) -> String {
    format!(
        r#"
[models.default]
provider = "openai"
base_url = "{}"
model = "fake"
max_retries = 2
retry_backoff_ms = 20

[worker]
lease_ms = 2000
heartbeat_ms = 200
poll_ms = 100
"#,
        fake.base_url()
    )
}

impl Daemon {
    pub async fn start(fake: &FakeUpstream) -> Daemon {
        Self::start_with_config(&config_for(fake)).await
    }

    pub async fn start_with_config(config: &str) -> Daemon {
        Self::start_with(config, &[]).await
    }

    pub async fn start_with(config: &str, env: &[(&str, &str)]) -> Daemon {
        let schema = on_postgres().then(PgSchema::new);
        Self::start_on(config, env, schema).await
    }

    /// A daemon on this schema (`None`: its own SQLite file). Several daemons
    /// on one schema are the nodes of one deployment.
    pub async fn start_on(
        config: &str,
        env: &[(&str, &str)],
        schema: Option<std::sync::Arc<PgSchema>>,
    ) -> Daemon {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("agentd.toml"), config).expect("write config");
        let mut d = Daemon {
            url: String::new(),
            dir,
            child: None,
            http: reqwest::Client::new(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            schema,
            bare: false,
        };
        d.spawn().await;
        d
    }

    /// `agentd serve` in an empty directory, as README's first command runs
    /// it (only the port is ephemeral); the admin token is the generated one.
    pub async fn start_unconfigured(env: &[(&str, &str)]) -> Daemon {
        let mut d = Daemon {
            url: String::new(),
            dir: tempfile::tempdir().expect("temp dir"),
            child: None,
            http: reqwest::Client::new(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            // README's first command runs on the embedded store, whatever
            // store the rest of the suite is on.
            schema: None,
            bare: true,
        };
        d.spawn().await;
        d
    }

    /// The admin token of an unconfigured daemon, as it printed where.
    pub fn generated_token(&self) -> String {
        std::fs::read_to_string(self.dir.path().join(".agentd/admin-token"))
            .expect("the generated admin token")
    }

    fn command(&self) -> Command {
        if self.bare {
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_agentd"));
            cmd.arg("serve")
                .arg("--addr")
                .arg("127.0.0.1:0")
                .current_dir(self.dir.path())
                .env_remove("AGENTD_ADMIN_TOKEN")
                .env("RUST_LOG", "warn")
                .envs(self.env.iter().map(|(k, v)| (k, v)))
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit());
            return cmd;
        }
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_agentd"));
        cmd.arg("serve")
            .arg("--addr")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(self.data_dir())
            .arg("--config")
            .arg(self.dir.path().join("agentd.toml"))
            .env("AGENTD_ADMIN_TOKEN", TOKEN)
            .env("RUST_LOG", "warn")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(schema) = &self.schema {
            cmd.arg("--database-url").arg(schema.url());
        }
        cmd
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    async fn spawn(&mut self) {
        let mut child = self.command().spawn().expect("spawn agentd");
        let stdout = child.stdout.take().expect("piped stdout");
        let line = tokio::task::spawn_blocking(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            reader.read_line(&mut line).map(|_| line)
        });
        let line = tokio::time::timeout(Duration::from_secs(20), line)
            .await
            .expect("agentd printed its address in time")
            .expect("reader thread")
            .expect("read stdout");
        let url = line
            .trim()
            .strip_prefix("agentd listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
        self.url = url.to_owned();
        self.child = Some(child);
    }

    /// SIGKILL: no shutdown code runs.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().expect("kill -9");
            c.wait().expect("reap");
        }
    }

    /// SIGTERM, then wait for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status()
            .expect("kill -TERM");
        c.wait().expect("reap")
    }

    /// Starts again on the same data dir and config.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "stop it first");
        self.spawn().await;
    }

    pub fn api(&self) -> Api {
        Api {
            base: self.url.clone(),
            http: self.http.clone(),
            token: Some(TOKEN.to_owned()),
            headers: Vec::new(),
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A response, read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Reply {
    /// Asserts the DESIGN §3 error envelope and returns its reason code.
    pub fn reason(&self) -> &str {
        assert!(
            self.body["error"].is_string(),
            "no error message in {:?}",
            self.body
        );
        let rid = self.body["request_id"]
            .as_str()
            .expect("request_id in envelope");
        assert_eq!(
            Some(rid),
            self.headers
                .get("x-request-id")
                .and_then(|v| v.to_str().ok()),
            "envelope request_id equals x-request-id"
        );
        self.body["reason_code"].as_str().expect("reason_code")
    }
}

#[derive(Clone)]
pub struct Api {
    pub base: String,
    pub http: reqwest::Client,
    pub token: Option<String>,
    /// Sent with every request (`x-agentd-tenant`, `x-forwarded-for`, …).
    pub headers: Vec<(String, String)>,
}

impl Api {
    pub fn without_token(mut self) -> Api {
        self.token = None;
        self
    }

    pub fn with_token(mut self, t: &str) -> Api {
        self.token = Some(t.to_owned());
        self
    }

    /// The admin token acting on `tenant`.
    pub fn on_tenant(self, tenant: &str) -> Api {
        self.with_header("x-agentd-tenant", tenant)
    }

    pub fn with_header(mut self, name: &str, value: &str) -> Api {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    pub fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut r = self.http.request(method, format!("{}{}", self.base, path));
        for (k, v) in &self.headers {
            r = r.header(k, v);
        }
        match &self.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    async fn read(r: reqwest::RequestBuilder) -> Reply {
        let resp = r.send().await.expect("request sent");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await.expect("body");
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
        };
        Reply {
            status,
            headers,
            body,
        }
    }

    pub async fn get(&self, path: &str) -> Reply {
        Self::read(self.req(reqwest::Method::GET, path)).await
    }

    pub async fn delete(&self, path: &str) -> Reply {
        Self::read(self.req(reqwest::Method::DELETE, path)).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Reply {
        Self::read(self.req(reqwest::Method::POST, path).json(body)).await
    }

    pub async fn post_raw(
        &self,
        path: &str,
        body: impl Into<reqwest::Body>,
        headers: &[(&str, &str)],
    ) -> Reply {
        let mut r = self.req(reqwest::Method::POST, path).body(body);
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        Self::read(r).await
    }

    pub async fn post_idem(&self, path: &str, key: &str, body: &Value) -> Reply {
        Self::read(
            self.req(reqwest::Method::POST, path)
                .header("idempotency-key", key)
                .json(body),
        )
        .await
    }

    /// Creates a run with seed 001's call and returns its id.
    pub async fn start_run(&self, query: &str) -> String {
        let key = agentd_key();
        let r = self
            .post_idem(
                "/v1/runs",
                &key,
                &serde_json::json!({"input": {"user_query": query}}),
            )
            .await;
        assert_eq!(r.status, 201, "{:?}", r.body);
        r.body["id"].as_str().expect("run id").to_owned()
    }

    /// Opens an SSE stream; `headers` are extra request headers.
    pub async fn sse(&self, path: &str, headers: &[(&str, &str)]) -> SseStream {
        let mut r = self.req(reqwest::Method::GET, path);
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        let resp = r.send().await.expect("stream request");
        assert_eq!(resp.status().as_u16(), 200, "stream status");
        assert!(
            resp.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/event-stream"),
            "content type"
        );
        SseStream {
            inner: Box::pin(resp.bytes_stream().eventsource()),
        }
    }

    /// Waits for the run to reach `status` and returns it.
    pub async fn wait_status(&self, run: &str, status: &str) -> Value {
        for _ in 0..400 {
            let r = self.get(&format!("/v1/runs/{run}")).await.body;
            if r["status"] == status {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("run {run} never reached {status}");
    }

    /// The run's events (up to 1000), oldest first.
    pub async fn events(&self, run: &str) -> Vec<Value> {
        let page = self.get(&format!("/v1/runs/{run}/events?limit=1000")).await;
        page.body["data"].as_array().expect("events").clone()
    }

    /// Waits until the run is terminal and returns it.
    pub async fn wait_terminal(&self, run_id: &str) -> Value {
        for _ in 0..400 {
            let r = self.get(&format!("/v1/runs/{run_id}")).await;
            let status = r.body["status"].as_str().unwrap_or_default().to_owned();
            if ["succeeded", "failed", "cancelled", "limit_exceeded"].contains(&status.as_str()) {
                return r.body;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("run {run_id} did not finish");
    }
}

pub fn agentd_key() -> String {
    format!("k-{}", rand_suffix())
}

fn rand_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

type EventStream = std::pin::Pin<
    Box<
        dyn futures::Stream<
                Item = Result<
                    eventsource_stream::Event,
                    eventsource_stream::EventStreamError<reqwest::Error>,
                >,
            > + Send,
    >,
>;

pub struct SseStream {
    inner: EventStream,
}

/// One SSE message: its `event:`, `id:` and parsed `data:`.
#[derive(Debug, Clone)]
pub struct Msg {
    pub event: String,
    pub id: String,
    pub data: Value,
}

impl SseStream {
    /// The next message, `None` when the server closed the stream.
    pub async fn next(&mut self) -> Option<Msg> {
        let item = tokio::time::timeout(Duration::from_secs(20), self.inner.next())
            .await
            .expect("stream produced something within 20 s")?;
        let e = item.expect("well-formed SSE");
        Some(Msg {
            event: e.event,
            id: e.id,
            data: serde_json::from_str(&e.data).unwrap_or(Value::String(e.data)),
        })
    }

    /// `run_event` messages until `done` holds for those read so far; the
    /// stream ending first is a failure.
    pub async fn until(&mut self, done: impl Fn(&[Msg]) -> bool) -> Vec<Msg> {
        let mut seen = Vec::new();
        while !done(&seen) {
            let m = self.next().await.expect("the stream ended too early");
            if m.event == "run_event" {
                seen.push(m);
            }
        }
        seen
    }

    /// Everything until the server closes the stream.
    pub async fn collect(mut self) -> Vec<Msg> {
        let mut out = Vec::new();
        while let Some(m) = self.next().await {
            out.push(m);
        }
        out
    }
}

/// For [`SseStream::until`]: the last message read has this `type`.
pub fn last_is(kind: &'static str) -> impl Fn(&[Msg]) -> bool {
    move |seen| seen.last().is_some_and(|m| m.data["type"] == kind)
}

/// The `type`s of `run_event` messages, in order.
pub fn types(msgs: &[Msg]) -> Vec<String> {
    msgs.iter()
        .map(|m| m.data["type"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// Asserts the messages carry seqs `from..` without gap or duplicate, with `id:` = seq.
pub fn assert_gapless(msgs: &[Msg], from: i64) {
    for (i, m) in msgs.iter().enumerate() {
        let seq = m.data["seq"].as_i64().expect("seq");
        assert_eq!(
            seq,
            from + i as i64,
            "seq {} at position {i}: {:?}",
            seq,
            types(msgs)
        );
        assert_eq!(m.id, seq.to_string(), "id: equals seq");
        assert_eq!(m.event, "run_event");
    }
}

/// The text a client reconstructs from deltas, dropping attempts that ended in `retry_step`.
pub fn reconstruct(msgs: &[Msg]) -> String {
    let mut text = String::new();
    let mut attempt_text = String::new();
    for m in msgs {
        let v = &m.data["payload"]["value"];
        match m.data["type"].as_str().unwrap_or_default() {
            "step.started" => attempt_text.clear(),
            "step.progress" if v["kind"] == "content_delta" => {
                attempt_text.push_str(v["content_delta"].as_str().unwrap_or_default())
            }
            "step.done" if v["outcome"] == "retry_step" => attempt_text.clear(),
            "step.done" => text.push_str(&std::mem::take(&mut attempt_text)),
            _ => {}
        }
    }
    text
}
