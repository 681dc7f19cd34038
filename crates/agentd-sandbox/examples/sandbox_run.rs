//! Runs one program in a sandbox without a daemon, for trying the isolation
//! by hand: `sandbox_run python 'print(1)'` (as root). Prints the frames and
//! the result as JSON lines. Records go to a throwaway SQLite store.

use std::sync::Arc;

use agentd_core::TenantId;
use agentd_sandbox::service::{AuditOrigin, EgressCeiling};
use agentd_sandbox::{CreateRequest, Language, SandboxConfig, SandboxService};
use agentd_store::sqlite::{SqliteConfig, SqliteStore};

fn main() {
    if std::env::args().nth(1).as_deref() == Some(agentd_sandbox::INIT_SUBCOMMAND) {
        agentd_sandbox::init_main();
    }
    let args: Vec<String> = std::env::args().collect();
    let language = match args.get(1).map(String::as_str) {
        Some("bash") => Language::Bash,
        _ => Language::Python,
    };
    let code = args
        .get(2)
        .cloned()
        .unwrap_or_else(|| "print('hello')".into());
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async move {
        let exe = std::env::current_exe().expect("exe");
        let dir = tempfile::tempdir().expect("temp dir");
        let store = SqliteStore::open(&SqliteConfig {
            data_dir: dir.path().to_owned(),
            fsync: false,
        })
        .await
        .expect("store");
        let svc = SandboxService::start(SandboxConfig::new(exe), Arc::new(store));
        println!("{}", serde_json::to_string(&svc.health().await).unwrap());
        let origin = AuditOrigin {
            tenant: TenantId::default_tenant(),
            actor: "cli".into(),
            actor_id: None,
            client_ip: None,
            request_id: None,
        };
        let started = std::time::Instant::now();
        let session = match svc
            .create(CreateRequest {
                code,
                language,
                limits: Default::default(),
                egress: Default::default(),
                labels: Default::default(),
                origin,
                ceiling: EgressCeiling {
                    hosts: vec![],
                    ports: vec![],
                    check_addr: Arc::new(|_| Ok(())),
                },
            })
            .await
        {
            Ok(s) => s,
            Err(e) => {
                println!("create failed: {e}");
                return;
            }
        };
        let mut rx = session.subscribe();
        let mut seen = 0;
        loop {
            let (frames, ended) = session.frames_from(seen);
            seen += frames.len();
            for f in frames {
                println!("{}", serde_json::to_string(&f).unwrap());
            }
            if ended {
                break;
            }
            let _ = rx.changed().await;
        }
        println!("{}", serde_json::to_string(&session.result()).unwrap());
        println!("elapsed {:?}", started.elapsed());
    });
}
