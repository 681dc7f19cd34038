//! Starts the sandbox service for `serve`: the operator's `[sandbox]` and
//! `[egress]` settings, the store that keeps sessions and their audit
//! trail, and the start-up probe whose answer `/health` reports.

use std::path::PathBuf;
use std::sync::Arc;

use agentd_engine::tools::OperatorEgress;
use agentd_engine::tools::run_code::addr_check;
use agentd_sandbox::service::EgressCeiling;
use agentd_sandbox::{HostRule, LimitPolicy, SandboxConfig, SandboxService};
use agentd_server::SandboxApi;
use agentd_store::Store;
use anyhow::{Context, bail};

use crate::config::Settings;

pub fn start(
    settings: &Settings,
    store: Arc<dyn Store>,
    egress: &OperatorEgress,
) -> anyhow::Result<SandboxApi> {
    let mut hosts = Vec::new();
    for (i, entry) in settings.sandbox.egress_allow.iter().enumerate() {
        match HostRule::parse(entry) {
            Some(rule) => hosts.push(rule),
            None => bail!("[sandbox] egress_allow[{i}] = {entry:?} is not a host name or *.domain"),
        }
    }
    // The running binary itself, even if its file is replaced meanwhile.
    let mut config = SandboxConfig::new(PathBuf::from("/proc/self/exe"));
    if let Some(n) = settings.sandbox.max_running {
        config.max_running = n;
    }
    config.limits = LimitPolicy::configured(&settings.sandbox.defaults, &settings.sandbox.maximums)
        .context("invalid [sandbox] limits")?;
    let service = SandboxService::start(config, store);
    Ok(SandboxApi {
        service,
        ceiling: EgressCeiling {
            hosts,
            ports: egress.allowed_ports.clone(),
            check_addr: addr_check(egress),
        },
    })
}
