//! `agentd serve` run bare, to its exit or its listening line: startup must
//! refuse configurations it cannot serve safely, naming the problem.

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::TOKEN;

/// How a bare `agentd serve` run ended.
pub enum Outcome {
    /// Exited before listening: the exit code and stderr.
    Exited(Option<i32>, String),
    /// Printed its listening line (and was then killed).
    Listened,
}

/// Runs the real binary on a fresh directory with these arguments, variables
/// and file contents, until it exits or says it listens.
pub fn run_serve(args: &[&str], env: &[(&str, &str)], config: Option<&str>) -> Outcome {
    let dir = tempfile::tempdir().expect("temp dir");
    if let Some(c) = config {
        std::fs::write(dir.path().join("agentd.toml"), c).expect("write config");
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_agentd"))
        .arg("serve")
        .args(["--addr", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .args(args)
        .current_dir(dir.path())
        .env("AGENTD_ADMIN_TOKEN", TOKEN)
        .env("RUST_LOG", "warn")
        .env_remove("AGENTD_HTTP_CORS_ALLOW_ORIGINS")
        .env_remove("AGENTD_CHAT_CORS_ALLOW_ORIGINS")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn agentd");
    let stdout = child.stdout.take().expect("stdout");
    let first_line = std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        line
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            let mut stderr = String::new();
            child
                .stderr
                .take()
                .expect("stderr")
                .read_to_string(&mut stderr)
                .expect("read stderr");
            let line = first_line.join().expect("reader");
            if line.starts_with("agentd listening on") {
                return Outcome::Listened;
            }
            return Outcome::Exited(status.code(), stderr);
        }
        if first_line.is_finished() {
            let line = first_line.join().expect("reader");
            if line.starts_with("agentd listening on") {
                let _ = child.kill();
                let _ = child.wait();
                return Outcome::Listened;
            }
            // Stdout closed without the line: the process is exiting.
            let status = child.wait().expect("wait");
            let mut stderr = String::new();
            child
                .stderr
                .take()
                .expect("stderr")
                .read_to_string(&mut stderr)
                .expect("read stderr");
            return Outcome::Exited(status.code(), stderr);
        }
        assert!(
            Instant::now() < deadline,
            "agentd neither exited nor listened"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn assert_refuses(outcome: Outcome, words: &[&str]) {
    match outcome {
        Outcome::Listened => panic!("started despite a bad list (expected {words:?})"),
        Outcome::Exited(code, stderr) => {
            assert_ne!(code, Some(0), "{stderr}");
            for w in words {
                assert!(stderr.contains(w), "{w:?} not in {stderr}");
            }
        }
    }
}

/// The JWKS fixture the server crate's JWT tests use.
fn jwks_fixture() -> String {
    concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../agentd-server/tests/fixtures/jwt_jwks.json"
    )
    .to_owned()
}

fn jwt_section(body: &str) -> String {
    format!("[auth.jwt]\nissuer = \"https://idp.example\"\naudience = \"agentd\"\n{body}\n")
}

#[test]
fn jwt_settings_that_verify_let_the_daemon_start() {
    let rs = jwt_section(&format!(
        "algorithm = \"RS256\"\njwks_file = \"{}\"",
        jwks_fixture()
    ));
    assert!(matches!(run_serve(&[], &[], Some(&rs)), Outcome::Listened));
    let hs = jwt_section("algorithm = \"HS256\"\nhs256_secret_env = \"AGENTD_TEST_JWT_SECRET\"");
    let secret = [("AGENTD_TEST_JWT_SECRET", "0123456789abcdef0123456789abcdef")];
    assert!(matches!(
        run_serve(&[], &secret, Some(&hs)),
        Outcome::Listened
    ));
}

#[test]
fn startup_refuses_jwt_settings_it_cannot_verify_with() {
    let cases = [
        (
            jwt_section("algorithm = \"HS256\"\nhs256_secret_env = \"AGENTD_TEST_UNSET_SECRET\""),
            vec!["[auth.jwt]", "AGENTD_TEST_UNSET_SECRET is not set"],
        ),
        (
            jwt_section("algorithm = \"RS256\""),
            vec!["exactly one of jwks_file and jwks_url"],
        ),
        (
            jwt_section("algorithm = \"none\"\nhs256_secret_env = \"X\""),
            vec!["unknown variant", "none"],
        ),
        (
            jwt_section("algorithm = \"HS256\"\nhs256_secret = \"inline\""),
            vec!["unknown field", "hs256_secret"],
        ),
        (
            jwt_section("algorithm = \"RS256\"\njwks_file = \"/nonexistent/jwks.json\""),
            vec!["cannot read the JWKS file /nonexistent/jwks.json"],
        ),
        (
            "[auth]\nnope = 1\n".to_owned(),
            vec!["unknown field", "nope"],
        ),
    ];
    for (config, words) in cases {
        assert_refuses(run_serve(&[], &[], Some(&config)), &words);
    }
}
