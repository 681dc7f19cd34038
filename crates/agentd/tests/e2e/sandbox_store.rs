//! Sandbox sessions in the store (issue 5): an ended sandbox is read from
//! the store, so it outlives the daemon; one the daemon was running when it
//! died is ended as `daemon_restarted` on the next start; and the operator's
//! `[sandbox]` limits (defaults and maximums) from the config file.

use std::time::Duration;

use serde_json::{Value, json};

use crate::sandbox::python;
use crate::support::*;

/// Polls the sandbox until `done` holds for its view.
async fn wait_view(api: &Api, id: &str, done: impl Fn(&Value) -> bool) -> Value {
    // On PostgreSQL an orphan is ended once its deadline (wall clock + 10 s)
    // passes, by a sweep every 5 s.
    for _ in 0..160 {
        let v = api.get(&format!("/v1/sandboxes/{id}")).await.body;
        if done(&v) {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("sandbox {id} never got there");
}

#[tokio::test]
async fn ended_sandboxes_outlive_the_daemon_and_orphans_are_ended() {
    let mut d = Daemon::start_with_config("").await;
    let api = d.api();
    let first = python(
        &api,
        "import agentd\nprint('kept')\nagentd.result({'n': 1})",
        json!({}),
    )
    .await;
    let first_id = first.view["id"].as_str().unwrap().to_owned();
    let second = python(&api, "import sys\nsys.exit(3)", json!({})).await;
    let second_id = second.view["id"].as_str().unwrap().to_owned();
    assert_eq!(second.view["phase"], "failed");

    // One still running when the daemon dies (kill -9: no shutdown code).
    let created = api
        .post(
            "/v1/sandboxes",
            &json!({"code": "import time\nprint('up', flush=True)\ntime.sleep(60)",
                    "language": "python", "limits": {"wall_clock_secs": 2}}),
        )
        .await;
    assert_eq!(created.status, 201, "{:?}", created.body);
    let orphan = created.body["id"].as_str().unwrap().to_owned();
    let mut stream = api
        .sse(&format!("/v1/sandboxes/{orphan}/stream"), &[])
        .await;
    while let Some(m) = stream.next().await {
        if m.event == "stdout" {
            break;
        }
    }
    let listed = api.get(&format!("/v1/sandboxes/{orphan}")).await.body;
    assert_eq!(listed["phase"], "running", "{listed}");
    d.kill9();
    d.restart().await;
    // On a new port.
    let api = d.api();

    // The ended ones, whole, from the store.
    let view = api.get(&format!("/v1/sandboxes/{first_id}")).await;
    assert_eq!(view.status, 200, "{:?}", view.body);
    assert_eq!(view.body, first.view, "the view survives unchanged");
    let result = api.get(&format!("/v1/sandboxes/{first_id}/result")).await;
    assert_eq!(result.status, 200);
    assert_eq!(result.body, first.result, "the result survives unchanged");
    assert_eq!(result.body["stdout"], "kept\n");
    assert_eq!(result.body["result"], json!({"n": 1}));
    let failed = api.get(&format!("/v1/sandboxes/{second_id}/result")).await;
    assert_eq!(failed.body["exit_code"], 3);

    // The orphan: ended, not left running. Its record may still say
    // `pending` if the daemon died before its `running` write committed:
    // either is swept.
    let ended = wait_view(&api, &orphan, |v| {
        v["phase"] != "running" && v["phase"] != "pending"
    })
    .await;
    assert_eq!(ended["phase"], "killed", "{ended}");
    assert_eq!(ended["kill_reason"], "daemon_restarted", "{ended}");
    assert!(ended["finished_at"].is_string(), "{ended}");
    let r = api.get(&format!("/v1/sandboxes/{orphan}/result")).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["kill_reason"], "daemon_restarted");

    // List: newest first, paged by cursor, all three.
    let page = api.get("/v1/sandboxes?limit=2").await.body;
    let ids: Vec<&str> = page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [orphan.as_str(), second_id.as_str()]);
    let cursor = page["next_cursor"].as_str().expect("a next page");
    let rest = api
        .get(&format!("/v1/sandboxes?limit=2&cursor={cursor}"))
        .await
        .body;
    assert_eq!(rest["data"].as_array().unwrap().len(), 1);
    assert_eq!(rest["data"][0]["id"], first_id.as_str());
    assert_eq!(rest["next_cursor"], Value::Null);

    // Another tenant sees none of it.
    let other = api.clone().on_tenant("other");
    for path in ["", "/result", "/audit", "/stream"] {
        let r = other.get(&format!("/v1/sandboxes/{first_id}{path}")).await;
        assert_eq!(r.status, 404, "{path}");
        assert_eq!(r.reason(), "SANDBOX_NOT_FOUND");
    }
    assert_eq!(
        other
            .delete(&format!("/v1/sandboxes/{first_id}"))
            .await
            .status,
        404
    );
    assert_eq!(other.get("/v1/sandboxes").await.body["data"], json!([]));

    // The stream of an ended sandbox replays its summary from the store.
    let frames = api
        .sse(&format!("/v1/sandboxes/{first_id}/stream"), &[])
        .await
        .collect()
        .await;
    let kinds: Vec<&str> = frames.iter().map(|m| m.event.as_str()).collect();
    assert_eq!(kinds.last(), Some(&"end"), "{kinds:?}");
    assert!(
        kinds.contains(&"audit") && kinds.contains(&"result"),
        "{kinds:?}"
    );
    let out = frames.iter().find(|m| m.event == "stdout").unwrap();
    assert_eq!(out.data["data"], "kept\n");

    // Teardown after the restart: in the store, with its audit entry.
    assert_eq!(
        api.delete(&format!("/v1/sandboxes/{first_id}"))
            .await
            .status,
        204
    );
    let gone = api.get(&format!("/v1/sandboxes/{first_id}")).await.body;
    assert_eq!(gone["phase"], "torn_down");
    assert!(gone["torn_down_at"].is_string());
    let trail = api.get(&format!("/v1/sandboxes/{first_id}/audit")).await;
    let actions: Vec<&str> = trail.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "session_created",
            "sandbox_started",
            "workload_exited",
            "result_collected",
            "session_torn_down"
        ]
    );
}

#[tokio::test]
async fn configured_limits_fill_requests_and_bound_them() {
    let d = Daemon::start_with_config(
        r#"
[sandbox.defaults]
memory_mb = 96
wall_clock_secs = 7

[sandbox.maximums]
memory_mb = 128
pids = 40
output_bytes = 4096
"#,
    )
    .await;
    let api = d.api();
    let ran = python(&api, "print('x' * 10000)", json!({})).await;
    let limits = &ran.view["limits"];
    assert_eq!(limits["memory_mb"], 96, "{limits}");
    assert_eq!(limits["wall_clock_secs"], 7);
    // A maximum below the built-in default lowers the default to it.
    assert_eq!(limits["pids"], 40);
    assert_eq!(limits["output_bytes"], 4096);
    assert_eq!(limits["cpu_secs"], 10, "unset: the built-in default");
    // And it is enforced: the output was cut at the configured cap.
    assert_eq!(ran.view["kill_reason"], "output_exceeded");
    assert_eq!(ran.result["stdout"].as_str().unwrap().len(), 4096);

    for (limits, field) in [
        (json!({"memory_mb": 129}), "limits.memory_mb"),
        (json!({"pids": 41}), "limits.pids"),
        (json!({"output_bytes": 4097}), "limits.output_bytes"),
        (json!({"disk_mb": 65}), "limits.disk_mb"),
    ] {
        let r = api
            .post(
                "/v1/sandboxes",
                &json!({"code": "print(1)", "language": "python", "limits": limits}),
            )
            .await;
        assert_eq!(r.status, 400, "{limits}: {:?}", r.body);
        assert_eq!(r.reason(), "INVALID_REQUEST");
        let message = r.body["error"].as_str().unwrap();
        assert!(message.contains(field), "{message}");
    }
    let at_max = python(
        &api,
        "print(1)",
        json!({"memory_mb": 128, "pids": 40, "disk_mb": 8}),
    )
    .await;
    assert_eq!(at_max.view["phase"], "succeeded", "{:?}", at_max.view);
    assert_eq!(at_max.view["limits"]["disk_mb"], 8);
}

#[test]
fn startup_refuses_sandbox_limits_it_cannot_honour() {
    use crate::startup::{assert_refuses, run_serve};
    for (config, words) in [
        (
            "[sandbox.defaults]\ncpu_secs = 100\n[sandbox.maximums]\ncpu_secs = 50\n",
            vec![
                "[sandbox] limits",
                "`defaults.cpu_secs` (100) is above `maximums.cpu_secs` (50)",
            ],
        ),
        (
            "[sandbox.maximums]\npids = 0\n",
            vec!["[sandbox] limits", "`maximums.pids` must be at least 1"],
        ),
        (
            "[sandbox.defaults]\nswap_mb = 1\n",
            vec!["unknown field", "swap_mb"],
        ),
    ] {
        assert_refuses(run_serve(&[], &[], Some(config)), &words);
    }
}
