//! Landlock, applied by the child before exec: a second wall behind the
//! mount namespace. The system directories are read and execute only, the
//! two tmpfs mounts are the only writable places, TCP bind and connect are
//! denied except to the egress proxy's port, and signals and abstract Unix
//! sockets cannot reach outside the sandbox's domain.

use landlock::{
    ABI, Access, AccessFs, AccessNet, CompatLevel, Compatible, NetPort, Ruleset, RulesetAttr,
    RulesetCreatedAttr, RulesetStatus, Scope, path_beneath_rules,
};

/// The newest ABI these rules were written and tested against (kernel 6.12+).
const ABI_TARGET: ABI = ABI::V6;

/// Paths inside the new root and what the code may do there.
const READ_ONLY: [&str; 8] = [
    "/usr", "/bin", "/sbin", "/lib", "/lib64", "/etc", "/opt", "/proc",
];
const WRITABLE: [&str; 3] = ["/work", "/tmp", "/dev"];

pub(crate) fn restrict(proxy_port: Option<u16>) -> Result<(), String> {
    let e = |what: &str| {
        let what = what.to_owned();
        move |e: landlock::RulesetError| format!("landlock {what}: {e}")
    };
    let existing = |paths: &'static [&'static str]| {
        paths
            .iter()
            .copied()
            .filter(|p| std::path::Path::new(p).exists())
            .collect::<Vec<_>>()
    };
    let mut ruleset = Ruleset::default()
        // Filesystem rules are required: refuse to run where they cannot apply.
        .set_compatibility(CompatLevel::HardRequirement)
        .handle_access(AccessFs::from_all(ABI::V1))
        .map_err(e("fs"))?
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(AccessFs::from_all(ABI_TARGET))
        .map_err(e("fs"))?
        .handle_access(AccessNet::from_all(ABI_TARGET))
        .map_err(e("net"))?
        .scope(Scope::from_all(ABI_TARGET))
        .map_err(e("scope"))?
        .create()
        .map_err(e("create"))?
        // The root holds only the skeleton: listing it reveals nothing.
        .add_rules(path_beneath_rules(["/"], AccessFs::ReadDir))
        .map_err(e("root rule"))?
        .add_rules(path_beneath_rules(
            existing(&READ_ONLY),
            AccessFs::from_read(ABI_TARGET),
        ))
        .map_err(e("read rules"))?
        .add_rules(path_beneath_rules(
            existing(&WRITABLE),
            AccessFs::from_all(ABI_TARGET),
        ))
        .map_err(e("write rules"))?;
    if let Some(port) = proxy_port {
        ruleset = ruleset
            .add_rule(NetPort::new(port, AccessNet::ConnectTcp))
            .map_err(e("proxy port"))?;
    }
    let status = ruleset.restrict_self().map_err(e("restrict"))?;
    if status.ruleset == RulesetStatus::NotEnforced {
        return Err("landlock is not enforced on this kernel".into());
    }
    Ok(())
}

/// Whether this kernel enforces Landlock at all (for `/health`).
pub fn available() -> bool {
    // SAFETY: landlock_create_ruleset(NULL, 0, VERSION) only returns the ABI.
    let abi = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            1u32,
        )
    };
    abi >= 1
}
