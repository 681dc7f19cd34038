//! A PostgreSQL restart in the middle of a run. The machine's shared server
//! is left alone (other tests use it): this test runs its own throwaway
//! PostgreSQL (`initdb` + `postgres` from `/usr/lib/postgresql/*/bin`, as
//! the `postgres` user when run as root, which PostgreSQL refuses).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fake_upstream::FakeUpstream;

use crate::nodes::node_config;
use crate::support::*;

/// A private PostgreSQL server in a temp dir, stopped when dropped.
struct Throwaway {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
}

fn pg_bin() -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL server binaries under /usr/lib/postgresql")
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("postgres").exists())
        .collect();
    found.sort();
    found.pop().expect("a PostgreSQL version with bin/postgres")
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// `program args…`, as the `postgres` user when we are root.
fn as_server_user(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl Throwaway {
    fn init() -> Throwaway {
        let bin = pg_bin();
        let dir = tempfile::tempdir().expect("temp dir");
        if is_root() {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .expect("chown");
            assert!(status.success());
        }
        let out = as_server_user(&bin.join("initdb"))
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
            .arg(dir.path().join("data"))
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut pg = Throwaway {
            bin,
            dir,
            port: free_port(),
            child: None,
        };
        pg.start();
        pg
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn start(&mut self) {
        assert!(self.child.is_none());
        let child = as_server_user(&self.bin.join("postgres"))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args([
                "-p",
                &self.port.to_string(),
                "-c",
                "listen_addresses=127.0.0.1",
            ])
            .arg("-c")
            .arg(format!(
                "unix_socket_directories={}",
                self.dir.path().display()
            ))
            .args(["-c", "fsync=off"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start postgres");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = Command::new(self.bin.join("pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-q"])
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "throwaway PostgreSQL never came up"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A fast shutdown (SIGINT): clients are disconnected at once.
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // The postmaster's own pid (under runuser it is not the child's).
        let pid_file = self.dir.path().join("data/postmaster.pid");
        let pid = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|t| t.lines().next().map(str::to_owned))
            .unwrap_or_else(|| child.id().to_string());
        let _ = Command::new("kill").args(["-INT", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while child.try_wait().ok().flatten().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.wait();
        // The postmaster removes its pid file last.
        while pid_file.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Throwaway {
    fn drop(&mut self) {
        self.stop();
    }
}

#[tokio::test]
async fn a_postgres_restart_mid_run_is_survived() {
    let fake = FakeUpstream::start().await;
    fake.behavior().set_tokens(80);
    fake.behavior().set_delay(Duration::from_millis(25));
    let mut pg = tokio::task::spawn_blocking(Throwaway::init).await.unwrap();
    let schema = PgSchema::on(&pg.url());
    // A serves the API (and a reader) only; B executes the run.
    let a = Daemon::start_on(&node_config(&fake, 0), &[], Some(schema.clone())).await;
    let b = Daemon::start_on(&node_config(&fake, 4096), &[], Some(schema.clone())).await;
    let api = a.api();
    let id = api.start_run("outlive the database").await;
    let mut s = api.sse(&format!("/v1/runs/{id}/events/stream"), &[]).await;
    let before = s
        .until(|seen| {
            seen.iter()
                .filter(|m| m.data["type"] == "step.progress")
                .count()
                >= 5
        })
        .await;

    let pg = tokio::task::spawn_blocking(move || {
        pg.stop();
        pg
    })
    .await
    .unwrap();
    // While it is gone: answered 503 STORE_UNAVAILABLE, nothing hangs.
    let r = api.get(&format!("/v1/runs/{id}")).await;
    assert_eq!(r.status, 503, "{:?}", r.body);
    assert_eq!(r.reason(), "STORE_UNAVAILABLE");
    let r = api
        .post_idem(
            "/v1/runs",
            &agentd_key(),
            &serde_json::json!({"input": {"user_query": "while down"}}),
        )
        .await;
    assert_eq!(r.status, 503, "{:?}", r.body);
    assert_eq!(r.reason(), "STORE_UNAVAILABLE");
    tokio::time::sleep(Duration::from_secs(1)).await;

    let mut pg = tokio::task::spawn_blocking(move || {
        let mut pg = pg;
        pg.start();
        pg
    })
    .await
    .unwrap();

    // Back: the run finishes, every event seq exactly once, the answer whole.
    let deadline = Instant::now() + Duration::from_secs(60);
    let run = loop {
        let r = api.get(&format!("/v1/runs/{id}")).await;
        if r.status == 200 && r.body["status"] == "succeeded" {
            break r.body;
        }
        assert!(
            Instant::now() < deadline,
            "the run never finished: {:?}",
            r.body
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // The reader on A stayed connected throughout: its node's listener
    // reconnected and sent it back to the store, so it saw every event once.
    let rest: Vec<Msg> = s
        .collect()
        .await
        .into_iter()
        .inspect(|m| assert_ne!(m.event, "error", "{m:?}"))
        .filter(|m| m.event == "run_event")
        .collect();
    let all: Vec<Msg> = before.into_iter().chain(rest).collect();
    assert_gapless(&all, 1);
    let fresh: Vec<Msg> = api
        .sse(&format!("/v1/runs/{id}/events/stream"), &[])
        .await
        .collect()
        .await
        .into_iter()
        .filter(|m| m.event == "run_event")
        .collect();
    assert_eq!(
        types(&fresh),
        types(&all),
        "a new reader reads the same log"
    );
    assert_eq!(reconstruct(&all), FakeUpstream::expected_text(80));
    assert_eq!(run["output"]["text"], FakeUpstream::expected_text(80));
    assert!(
        types(&all).iter().any(|t| t == "run.worker.recovered"),
        "the interrupted attempt was recovered: {:?}",
        types(&all)
    );
    // The daemons go before their database does.
    drop((a, b));
    drop(schema);
    tokio::task::spawn_blocking(move || pg.stop())
        .await
        .unwrap();
}
