//! Sandbox egress (issue 5): allow-list sandboxes reach listed hosts through
//! their proxy — admitted by the operator's ceiling, not by the request
//! alone — and every other way out is refused and audited. And `run_code`:
//! an agent's code in the same sandbox, under its approval and egress policy.

use fake_upstream::{FakeUpstream, ScriptedTurn};
use serde_json::{Value, json};

use crate::sandbox::run;
use crate::support::*;

/// The fake's web server is on loopback: the operator opens exactly it.
fn operator(fake: &FakeUpstream) -> String {
    format!(
        "[egress]\nallow_cidrs = [\"127.0.0.1/32\", \"::1/128\"]\nallowed_ports = [{}]\n\n[sandbox]\negress_allow = [\"localhost\"]\n",
        fake.addr.port()
    )
}

fn fetch_program(port: u16) -> String {
    format!(
        r#"
import socket, ssl, urllib.request, urllib.error, agentd
def get(url):
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.read().decode()
    except urllib.error.HTTPError as e:
        return 'HTTP %d' % e.code
    except Exception as e:
        return type(e).__name__
out = {{}}
out['listed'] = get('http://localhost:{port}/web/page')
out['beyond_ceiling'] = get('http://other.test:{port}/web/page')
out['unlisted'] = get('http://example.com:{port}/web/page')
out['ip_literal'] = get('http://127.0.0.1:{port}/web/page')
try:
    socket.getaddrinfo('example.com', 80); out['dns'] = 'resolved'
except OSError as e:
    out['dns'] = type(e).__name__
s = socket.socket(); s.settimeout(2)
try:
    s.connect(('127.0.0.1', {port})); out['direct'] = 'connected'
except OSError as e:
    out['direct'] = type(e).__name__
# A tunnel to a listed host whose TLS names another one.
try:
    t = socket.create_connection(('127.0.0.1', 3128), timeout=10)
    t.sendall(b'CONNECT localhost:{port} HTTP/1.1\r\nHost: localhost:{port}\r\n\r\n')
    out['connect'] = t.recv(64).decode().split('\r\n')[0]
    ssl.create_default_context().wrap_socket(t, server_hostname='evil.test')
    out['sni'] = 'handshake'
except Exception as e:
    out['sni'] = type(e).__name__
agentd.result(out)
"#
    )
}

fn denials(audit: &[Value]) -> Vec<(String, String)> {
    audit
        .iter()
        .filter(|a| a["action"] == "egress_denied")
        .map(|a| {
            let d = &a["details"];
            (
                d["host"].as_str().unwrap_or_default().to_owned(),
                d["reason"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn allow_list_reaches_listed_hosts_only_through_the_proxy() {
    let fake = FakeUpstream::start().await;
    let port = fake.addr.port();
    let d = Daemon::start_with_config(&operator(&fake)).await;
    let api = d.api();

    // A request cannot widen the ceiling: other.test is dropped.
    let ran = run(
        &api,
        json!({
            "code": fetch_program(port),
            "language": "python",
            "egress": {"mode": "allow_list", "allow": ["localhost", "other.test"]},
        }),
    )
    .await;
    assert_eq!(ran.view["phase"], "succeeded", "{:?}", ran.result);
    assert_eq!(ran.view["egress"]["allow"], json!(["localhost"]));
    assert_eq!(ran.view["egress"]["dropped"], json!(["other.test"]));
    let out = ran.reported();
    assert!(
        out["listed"]
            .as_str()
            .unwrap()
            .contains("hello from the page"),
        "{out}"
    );
    for k in ["beyond_ceiling", "unlisted", "ip_literal"] {
        assert_eq!(out[k], "HTTP 403", "{k}: {out}");
    }
    assert_ne!(out["dns"], "resolved", "{out}");
    assert_ne!(out["direct"], "connected", "{out}");
    assert_eq!(
        out["connect"], "HTTP/1.1 200 Connection established",
        "{out}"
    );
    assert_ne!(out["sni"], "handshake", "{out}");
    assert_eq!(
        fake.web_hits(),
        1,
        "only the listed fetch reached the server"
    );

    let allowed: Vec<&Value> = ran
        .audit
        .iter()
        .filter(|a| a["action"] == "egress_allowed")
        .collect();
    assert_eq!(allowed.len(), 1, "{:?}", ran.audit);
    assert_eq!(allowed[0]["details"]["host"], "localhost");
    assert_eq!(
        denials(&ran.audit),
        [
            ("other.test".to_owned(), "HOST_NOT_ALLOWED".to_owned()),
            ("example.com".to_owned(), "HOST_NOT_ALLOWED".to_owned()),
            ("127.0.0.1".to_owned(), "IP_LITERAL".to_owned()),
            ("localhost".to_owned(), "SNI_MISMATCH".to_owned()),
        ]
    );
    // The frames carried the same decisions as they happened.
    let audit_frames = ran
        .frames
        .iter()
        .filter(|m| m.event == "audit" && m.data["action"] == "egress_denied")
        .count();
    assert_eq!(audit_frames, 4);

    // deny_all (the default) has no proxy at all.
    let closed = run(
        &api,
        json!({"code": fetch_program(port), "language": "python"}),
    )
    .await;
    assert_eq!(
        closed.reported()["listed"],
        "URLError",
        "{:?}",
        closed.result
    );
    assert_eq!(fake.web_hits(), 1);
    assert!(denials(&closed.audit).is_empty());
}

#[tokio::test]
async fn run_code_runs_an_agents_code_after_approval_under_its_egress() {
    let fake = FakeUpstream::start().await;
    let port = fake.addr.port();
    let code = format!(
        "import urllib.request, agentd\nprint('hi')\npage = urllib.request.urlopen('http://localhost:{port}/web/page').read().decode()\nagentd.result({{'n': 42, 'page': page.strip()[:40]}})\n"
    );
    fake.behavior().push_turns([
        ScriptedTurn::call(
            "c1",
            "run_code",
            json!({"language": "python", "code": code}),
        ),
        ScriptedTurn::text(&["done"]),
    ]);
    let config = format!(
        "{}\n{}\n[agents.assistant]\ntools = [\"run_code\"]\napproval = {{ run_code = \"always\" }}\negress = {{ mode = \"allow_list\", allow = [\"localhost\"] }}\n",
        config_for(&fake),
        operator(&fake)
    );
    let d = Daemon::start_with_config(&config).await;
    let api = d.api();
    let run_id = api.start_run("compute").await;
    let paused = api.wait_status(&run_id, "awaiting_input").await;
    assert_eq!(paused["status"], "awaiting_input");
    // Nothing ran before the approval.
    assert_eq!(api.get("/v1/sandboxes").await.body["data"], json!([]));
    let r = api
        .post(
            &format!("/v1/runs/{run_id}/signal"),
            &json!({"action": "approve"}),
        )
        .await;
    assert!(r.status < 300, "{:?}", r.body);
    let done = api.wait_terminal(&run_id).await;
    assert_eq!(done["status"], "succeeded", "{done:?}");
    let evs = api.events(&run_id).await;
    let finished = evs
        .iter()
        .find(|e| e["type"] == "tool.finished")
        .expect("tool.finished");
    let v = &finished["payload"]["value"];
    assert_eq!(v["is_error"], false, "{v}");
    let out: Value = serde_json::from_str(v["content"].as_str().unwrap()).unwrap();
    assert_eq!(out["exit_code"], 0);
    assert_eq!(out["stdout"], "hi\n");
    assert_eq!(out["result"]["n"], 42);
    assert!(
        out["result"]["page"].as_str().unwrap().contains("hello"),
        "{out}"
    );

    // The sandbox is visible, labelled with its run, and audited.
    let list = api.get("/v1/sandboxes").await;
    let sbx = &list.body["data"][0];
    assert_eq!(sbx["labels"]["run_id"], run_id.as_str());
    assert_eq!(sbx["egress"]["allow"], json!(["localhost"]));
    let trail = api
        .get(&format!(
            "/v1/sandboxes/{}/audit",
            sbx["id"].as_str().unwrap()
        ))
        .await;
    let actions: Vec<&str> = trail.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["action"].as_str().unwrap())
        .collect();
    assert!(actions.contains(&"egress_allowed"), "{actions:?}");
    assert_eq!(
        trail.body["data"][0]["actor"],
        format!("run:{run_id}").as_str()
    );
}
