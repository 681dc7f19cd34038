//! Sandboxes (issue 5, seed 004): the `/v1/sandboxes` API, and escapes
//! that must fail — each ends with the right kill reason or refusal, in the
//! result and in the audit trail, with the daemon healthy afterwards.

use futures::future::join_all;
use serde_json::{Value, json};

use crate::support::*;

/// What one sandbox left behind.
pub struct Ran {
    pub view: Value,
    pub frames: Vec<Msg>,
    pub result: Value,
    pub audit: Vec<Value>,
}

impl Ran {
    /// The structured result the code reported.
    pub fn reported(&self) -> &Value {
        &self.result["result"]
    }

    pub fn actions(&self) -> Vec<String> {
        self.audit
            .iter()
            .map(|a| a["action"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    /// `workload_exited`'s details in the store's trail.
    pub fn exit_entry(&self) -> Value {
        self.audit
            .iter()
            .find(|a| a["action"] == "workload_exited")
            .unwrap_or_else(|| panic!("no workload_exited in {:?}", self.audit))["details"]
            .clone()
    }
}

/// Creates a sandbox, follows its stream to `end`, reads result and audit.
pub async fn run(api: &Api, body: Value) -> Ran {
    let created = api.post("/v1/sandboxes", &body).await;
    assert_eq!(created.status, 201, "{:?}", created.body);
    let id = created.body["id"].as_str().expect("id").to_owned();
    let frames = api
        .sse(&format!("/v1/sandboxes/{id}/stream"), &[])
        .await
        .collect()
        .await;
    assert_eq!(
        frames.last().map(|m| m.event.as_str()),
        Some("end"),
        "{frames:?}"
    );
    let result = api.get(&format!("/v1/sandboxes/{id}/result")).await;
    assert_eq!(result.status, 200, "{:?}", result.body);
    let audit = api.get(&format!("/v1/sandboxes/{id}/audit")).await;
    assert_eq!(audit.status, 200);
    let view = api.get(&format!("/v1/sandboxes/{id}")).await.body;
    Ran {
        view,
        frames,
        result: result.body,
        audit: audit.body["data"].as_array().cloned().unwrap_or_default(),
    }
}

pub async fn python(api: &Api, code: &str, limits: Value) -> Ran {
    run(
        api,
        json!({"code": code, "language": "python", "limits": limits}),
    )
    .await
}

async fn assert_healthy(api: &Api) {
    let h = api.get("/health").await;
    assert_eq!(h.status, 200);
    assert_eq!(h.body["sandbox"]["healthy"], true, "{:?}", h.body);
    // And still able to run code.
    let ok = python(api, "print('still here')", json!({})).await;
    assert_eq!(ok.result["stdout"], "still here\n");
}

#[tokio::test]
async fn a_sandbox_streams_its_output_and_reports_a_structured_result() {
    let d = Daemon::start_with_config("").await;
    let api = d.api();
    let h = api.get("/health").await;
    assert_eq!(h.body["sandbox"]["backend"], "linux-namespaces");
    assert_eq!(h.body["sandbox"]["healthy"], true, "{:?}", h.body);

    let ran = python(
        &api,
        "import agentd, sys\nprint('out')\nprint('err', file=sys.stderr)\nagentd.result({'ok': True, 'n': 42})\n",
        json!({}),
    )
    .await;
    assert_eq!(ran.view["phase"], "succeeded", "{:?}", ran.view);
    assert_eq!(ran.result["exit_code"], 0);
    assert_eq!(ran.result["stdout"], "out\n");
    assert_eq!(ran.result["stderr"], "err\n");
    assert_eq!(ran.reported(), &json!({"ok": true, "n": 42}));
    let kinds: Vec<&str> = ran.frames.iter().map(|m| m.event.as_str()).collect();
    for k in ["phase", "stdout", "stderr", "audit", "result", "end"] {
        assert!(kinds.contains(&k), "{k} missing from {kinds:?}");
    }
    assert_eq!(ran.frames[0].data["phase"], "pending");
    assert_eq!(
        ran.actions(),
        [
            "session_created",
            "sandbox_started",
            "workload_exited",
            "result_collected"
        ]
    );

    // Bash, with the documented result helper; a result that is not JSON
    // is refused, not trusted.
    let bash = run(
        &api,
        json!({"code": "echo hi; agentd_result '{\"shell\": true}'", "language": "bash"}),
    )
    .await;
    assert_eq!(bash.result["stdout"], "hi\n");
    assert_eq!(bash.reported(), &json!({"shell": true}));
    let junk = run(
        &api,
        json!({"code": "echo '{not json' >&3", "language": "bash"}),
    )
    .await;
    assert_eq!(junk.reported(), &Value::Null);
    assert!(
        junk.result["result_error"]
            .as_str()
            .unwrap()
            .contains("not JSON")
    );

    // List, get, teardown.
    let list = api.get("/v1/sandboxes?limit=2").await;
    assert_eq!(list.body["data"].as_array().unwrap().len(), 2);
    assert_eq!(list.body["data"][0]["id"], junk.view["id"]);
    let id = ran.view["id"].as_str().unwrap();
    assert_eq!(api.delete(&format!("/v1/sandboxes/{id}")).await.status, 204);
    let gone = api.get(&format!("/v1/sandboxes/{id}")).await;
    assert_eq!(gone.body["phase"], "torn_down");
    let trail = api.get(&format!("/v1/sandboxes/{id}/audit")).await;
    assert_eq!(
        trail.body["data"].as_array().unwrap().last().unwrap()["action"],
        "session_torn_down"
    );
}

#[tokio::test]
async fn bad_requests_and_other_tenants_are_refused() {
    let d = Daemon::start_with_config("").await;
    let api = d.api();
    for (body, field) in [
        (json!({"code": "print(1)", "language": "ruby"}), "language"),
        (json!({"code": "", "language": "python"}), "code"),
        (
            json!({"code": "1", "language": "python", "limits": {"memory_mb": 0}}),
            "memory_mb",
        ),
        (
            json!({"code": "1", "language": "python", "limits": {"pids": 1000000}}),
            "pids",
        ),
        (
            json!({"code": "1", "language": "python", "extra": 1}),
            "extra",
        ),
        (
            json!({"code": "1", "language": "python", "egress": {"mode": "allow_list", "allow": ["10.0.0.1"]}}),
            "egress",
        ),
    ] {
        let r = api.post("/v1/sandboxes", &body).await;
        assert_eq!(r.status, 400, "{body}: {:?}", r.body);
        assert_eq!(r.reason(), "INVALID_REQUEST");
        assert!(
            r.body["error"].as_str().unwrap().contains(field),
            "{:?}",
            r.body
        );
    }
    assert_eq!(api.get("/v1/sandboxes").await.body["data"], json!([]));

    let mine = python(&api, "print(1)", json!({})).await;
    let id = mine.view["id"].as_str().unwrap();
    let other = api.clone().on_tenant("other");
    for path in ["", "/result", "/audit"] {
        let r = other.get(&format!("/v1/sandboxes/{id}{path}")).await;
        assert_eq!(r.status, 404);
        assert_eq!(r.reason(), "SANDBOX_NOT_FOUND");
    }
    assert_eq!(
        other.delete(&format!("/v1/sandboxes/{id}")).await.status,
        404
    );
    assert_eq!(other.get("/v1/sandboxes").await.body["data"], json!([]));
}

#[tokio::test]
async fn delete_kills_a_running_sandbox() {
    let d = Daemon::start_with_config("").await;
    let api = d.api();
    let created = api
        .post(
            "/v1/sandboxes",
            &json!({"code": "import time\nprint('up', flush=True)\ntime.sleep(60)", "language": "python"}),
        )
        .await;
    let id = created.body["id"].as_str().unwrap().to_owned();
    let mut stream = api.sse(&format!("/v1/sandboxes/{id}/stream"), &[]).await;
    while let Some(m) = stream.next().await {
        if m.event == "stdout" {
            break;
        }
    }
    let early = api.get(&format!("/v1/sandboxes/{id}/result")).await;
    assert_eq!(early.status, 409);
    assert_eq!(early.reason(), "SANDBOX_RUNNING");
    assert_eq!(api.delete(&format!("/v1/sandboxes/{id}")).await.status, 204);
    let rest = stream.collect().await;
    assert_eq!(rest.last().unwrap().event, "end");
    let result = api.get(&format!("/v1/sandboxes/{id}/result")).await.body;
    assert_eq!(result["phase"], "torn_down");
    assert_eq!(result["kill_reason"], "torn_down");
}

/// The escape attempts, all at once in one daemon.
#[tokio::test]
async fn escapes_fail_and_the_daemon_stays_healthy() {
    let d = Daemon::start_with_config("").await;
    let api = d.api();
    let port = d.url.rsplit(':').next().unwrap().to_owned();
    let secrets = format!(
        r#"
import os, glob, agentd
found = []
for p in {paths}:
    try:
        open(p, 'rb').read(1); found.append('read ' + p)
    except OSError:
        pass
    try:
        os.listdir(p); found.append('list ' + p)
    except OSError:
        pass
token = '{token}'
if token in repr(dict(os.environ)): found.append('environ')
for f in glob.glob('/proc/*/environ') + glob.glob('/proc/*/cmdline'):
    try:
        if token.encode() in open(f, 'rb').read(): found.append(f)
    except OSError:
        pass
comms = [open(c).read().strip() for c in glob.glob('/proc/[0-9]*/comm')]
agentd.result({{'found': found, 'comms': comms, 'uid': os.getuid(),
    'cap_eff': [l for l in open('/proc/self/status') if l.startswith('CapEff')][0].split()[1]}})
"#,
        paths = json!([
            d.data_dir().join("agentd.db").display().to_string(),
            d.data_dir().display().to_string(),
            d.dir.path().join("agentd.toml").display().to_string(),
            "/etc/shadow",
            "/root",
            "/home",
            "/proc/1/root/etc/shadow",
            "/sys/fs/cgroup",
        ]),
        token = TOKEN,
    );
    let descriptors = r#"
import os, agentd
open_fds = sorted(int(f) for f in os.listdir('/proc/self/fd'))
usable = []
for fd in range(4, 256):
    try:
        os.fstat(fd); usable.append(fd)
    except OSError:
        pass
agentd.result({'usable': usable, 'listed': open_fds})
"#;
    let syscalls = r#"
import ctypes, os, agentd
libc = ctypes.CDLL(None, use_errno=True)
def attempt(name, *args):
    rc = getattr(libc, name)(*args)
    return (rc, ctypes.get_errno())
out = {
    'ptrace_attach': attempt('ptrace', 16, 1, 0, 0),
    'unshare_user': attempt('unshare', 0x10000000),
    'unshare_net': attempt('unshare', 0x40000000),
    'mount': attempt('mount', b'none', b'/tmp', b'tmpfs', 0, None),
    'setns': attempt('setns', 0, 0),
}
killed = []
try:
    os.kill(-1, 9)
except OSError:
    pass
for pid in range(2, 4096):
    try:
        os.kill(pid, 9); killed.append(pid)
    except OSError:
        pass
out['killed'] = killed
agentd.result(out)
"#;
    let writes = r#"
import os, errno, agentd
wrote = []
for p in ['/usr/evil', '/etc/passwd', '/opt/agentd/main.py', '/evil', '/proc/sys/kernel/hostname', '/dev/evil']:
    try:
        with open(p, 'w') as f: f.write('x')
        wrote.append(p)
    except OSError:
        pass
ok = []
for p in ['/work/ok', '/tmp/ok']:
    with open(p, 'w') as f: f.write('fine')
    ok.append(p)
total, err = 0, None
try:
    with open('/work/fill', 'wb') as f:
        chunk = b'0' * (1 << 20)
        while True:
            f.write(chunk); f.flush(); total += len(chunk)
except OSError as e:
    err = errno.errorcode.get(e.errno)
agentd.result({'wrote': wrote, 'ok': ok, 'filled_mb': total >> 20, 'fill_error': err})
"#;
    let network = format!(
        r#"
import socket, agentd
out = {{}}
def tcp(host, port):
    s = socket.socket(); s.settimeout(2)
    try:
        s.connect((host, port)); return 'connected'
    except OSError as e:
        return type(e).__name__
out['tcp_public'] = tcp('1.1.1.1', 443)
out['tcp_daemon'] = tcp('127.0.0.1', {port})
try:
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.sendto(b'x', ('8.8.8.8', 53)); out['udp'] = 'sent'
except OSError as e:
    out['udp'] = type(e).__name__
try:
    socket.getaddrinfo('example.com', 80); out['dns'] = 'resolved'
except OSError as e:
    out['dns'] = type(e).__name__
try:
    socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0); out['netlink'] = 'opened'
except OSError as e:
    out['netlink'] = type(e).__name__
agentd.result(out)
"#
    );
    let runs = join_all([
        python(&api, &secrets, json!({})),
        python(&api, descriptors, json!({})),
        python(&api, syscalls, json!({})),
        python(&api, writes, json!({})),
        python(&api, &network, json!({})),
    ])
    .await;
    for r in &runs {
        assert_eq!(r.view["phase"], "succeeded", "{:?} {:?}", r.view, r.result);
    }
    let secrets = runs[0].reported();
    assert_eq!(secrets["found"], json!([]), "{secrets}");
    assert_eq!(secrets["uid"], 1000);
    assert_eq!(secrets["cap_eff"], "0000000000000000");
    // Host /proc is not visible: only the sandbox's own process.
    assert_eq!(secrets["comms"], json!(["python3"]), "{secrets}");

    let fds = runs[1].reported();
    assert_eq!(fds["usable"], json!([]), "{fds}");

    let sys = runs[2].reported();
    for name in [
        "ptrace_attach",
        "unshare_user",
        "unshare_net",
        "mount",
        "setns",
    ] {
        assert_eq!(sys[name][0], -1, "{name}: {sys}");
        assert_eq!(sys[name][1], 1, "{name} fails with EPERM: {sys}");
    }
    assert_eq!(sys["killed"], json!([]), "{sys}");

    let w = runs[3].reported();
    assert_eq!(w["wrote"], json!([]), "{w}");
    assert_eq!(w["ok"], json!(["/work/ok", "/tmp/ok"]));
    assert!(w["filled_mb"].as_u64().unwrap() <= 64, "{w}");
    assert!(
        ["ENOSPC", "EFBIG"].contains(&w["fill_error"].as_str().unwrap()),
        "{w}"
    );

    let net = runs[4].reported();
    assert_ne!(net["tcp_public"], "connected", "{net}");
    assert_ne!(net["tcp_daemon"], "connected", "{net}");
    assert_ne!(net["udp"], "sent", "{net}");
    assert_ne!(net["dns"], "resolved", "{net}");
    assert_ne!(net["netlink"], "opened", "{net}");

    assert_healthy(&api).await;
}

#[tokio::test]
async fn each_limit_kills_with_its_reason() {
    let d = Daemon::start_with_config("").await;
    let api = d.api();
    let fork_bomb =
        "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n";
    let runs = join_all([
        python(&api, fork_bomb, json!({"pids": 32, "wall_clock_secs": 30})),
        python(&api, "x = 'a' * (512 << 20)\n", json!({"memory_mb": 64})),
        python(
            &api,
            "while True:\n    pass\n",
            json!({"cpu_secs": 1, "wall_clock_secs": 60}),
        ),
        python(
            &api,
            "import time\ntime.sleep(60)\n",
            json!({"wall_clock_secs": 1}),
        ),
        python(
            &api,
            "while True:\n    print('x' * 1000)\n",
            json!({"output_bytes": 10000}),
        ),
    ])
    .await;
    let expected = [
        "pids_exceeded",
        "memory_exceeded",
        "cpu_exceeded",
        "wall_clock_exceeded",
        "output_exceeded",
    ];
    for (r, reason) in runs.iter().zip(expected) {
        assert_eq!(r.view["phase"], "killed", "{reason}: {:?}", r.view);
        assert_eq!(r.view["kill_reason"], reason, "{:?}", r.result);
        assert_eq!(r.result["kill_reason"], reason);
        assert_eq!(r.exit_entry()["kill_reason"], reason);
        let last_phase = r.frames.iter().rev().find(|m| m.event == "phase").unwrap();
        assert_eq!(last_phase.data["kill_reason"], reason);
    }
    // The flood was cut at the cap exactly.
    assert_eq!(runs[4].result["stdout"].as_str().unwrap().len(), 10000);
    assert_healthy(&api).await;
}

/// One after another, so each request takes the spare helper started
/// behind the one before (its group made with that request's limits): the
/// memory cap that applies is always the request's own, raised and lowered.
#[tokio::test]
async fn a_spare_helper_takes_each_requests_own_limits() {
    let d = Daemon::start_with_config("").await;
    let api = d.api();
    let hog = "x = 'a' * (128 << 20)\nprint(len(x) >> 20)\n";
    for (memory_mb, fits) in [(512, true), (64, false), (512, true), (64, false)] {
        // Time for the next spare to be ready.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let r = python(&api, hog, json!({"memory_mb": memory_mb})).await;
        if fits {
            assert_eq!(r.view["phase"], "succeeded", "{memory_mb}: {:?}", r.result);
            assert_eq!(r.result["stdout"], "128\n");
        } else {
            assert_eq!(
                r.view["kill_reason"], "memory_exceeded",
                "{memory_mb}: {:?}",
                r.result
            );
        }
    }
    assert_healthy(&api).await;
}
