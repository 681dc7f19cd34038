//! What a caller asks for (seed 004's create request, the `run_code` tool's
//! arguments) and the operator's defaults and maximums it is checked against.

use serde::{Deserialize, Serialize};

/// The interpreters a sandbox runs: the host's own, never one the code brings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Language {
    /// `/usr/bin/python3`, with the `agentd` helper module importable.
    Python,
    /// `/bin/bash`, with `agentd_result` defined through `BASH_ENV`.
    Bash,
}

impl Language {
    pub fn as_str(self) -> &'static str {
        match self {
            Language::Python => "python",
            Language::Bash => "bash",
        }
    }
}

/// Request `limits` (DESIGN §6): each optional, filled from the server's
/// defaults and refused above its maximums.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsRequest {
    pub memory_mb: Option<u64>,
    pub cpu_secs: Option<u64>,
    pub wall_clock_secs: Option<u64>,
    pub pids: Option<u64>,
    pub output_bytes: Option<u64>,
}

/// Limits in force for one sandbox, every one set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Memory of the whole sandbox (its cgroup), tmpfs pages included.
    pub memory_mb: u64,
    /// CPU time of all its processes together (cpuacct).
    pub cpu_secs: u64,
    pub wall_clock_secs: u64,
    /// Tasks (processes and threads) alive at once.
    pub pids: u64,
    /// stdout and stderr together.
    pub output_bytes: u64,
    /// Size of each of the writable tmpfs mounts (`/work`, `/tmp`).
    pub disk_mb: u64,
}

/// The operator's `[sandbox]` defaults and ceilings for [`Limits`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LimitPolicy {
    pub defaults: Limits,
    pub maximums: Limits,
}

impl Default for LimitPolicy {
    fn default() -> Self {
        LimitPolicy {
            defaults: Limits {
                memory_mb: 256,
                cpu_secs: 10,
                wall_clock_secs: 30,
                pids: 64,
                output_bytes: 1 << 20,
                disk_mb: 64,
            },
            maximums: Limits {
                memory_mb: 2048,
                cpu_secs: 300,
                wall_clock_secs: 600,
                pids: 1024,
                output_bytes: 16 << 20,
                disk_mb: 64,
            },
        }
    }
}

/// A request that cannot be honoured; nothing was started.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    #[error("invalid field `limits.{field}`: must be between 1 and {max}")]
    LimitOutOfRange { field: &'static str, max: u64 },
    #[error("invalid field `code`: must not be empty")]
    EmptyCode,
    #[error("invalid field `code`: larger than {0} bytes")]
    CodeTooLarge(usize),
    #[error("invalid field `egress`: {0}")]
    Egress(String),
    #[error("invalid field `labels`: {0}")]
    Labels(String),
}

/// Largest program accepted, so a request cannot fill the sandbox's root.
pub const MAX_CODE_BYTES: usize = 512 * 1024;

impl LimitPolicy {
    /// The request's limits over the defaults, each checked against its maximum.
    pub fn resolve(&self, req: &LimitsRequest) -> Result<Limits, SpecError> {
        let pick = |field: &'static str, v: Option<u64>, d: u64, max: u64| match v {
            None => Ok(d.min(max)),
            Some(v) if (1..=max).contains(&v) => Ok(v),
            Some(_) => Err(SpecError::LimitOutOfRange { field, max }),
        };
        let (d, m) = (&self.defaults, &self.maximums);
        Ok(Limits {
            memory_mb: pick("memory_mb", req.memory_mb, d.memory_mb, m.memory_mb)?,
            cpu_secs: pick("cpu_secs", req.cpu_secs, d.cpu_secs, m.cpu_secs)?,
            wall_clock_secs: pick(
                "wall_clock_secs",
                req.wall_clock_secs,
                d.wall_clock_secs,
                m.wall_clock_secs,
            )?,
            pids: pick("pids", req.pids, d.pids, m.pids)?,
            output_bytes: pick(
                "output_bytes",
                req.output_bytes,
                d.output_bytes,
                m.output_bytes,
            )?,
            disk_mb: d.disk_mb.min(m.disk_mb),
        })
    }
}

/// Checks the program text.
pub fn check_code(code: &str) -> Result<(), SpecError> {
    if code.trim().is_empty() {
        return Err(SpecError::EmptyCode);
    }
    if code.len() > MAX_CODE_BYTES {
        return Err(SpecError::CodeTooLarge(MAX_CODE_BYTES));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_fill_defaults_and_refuse_above_maximum() {
        let p = LimitPolicy::default();
        let l = p
            .resolve(&LimitsRequest {
                memory_mb: Some(64),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(l.memory_mb, 64);
        assert_eq!(l.cpu_secs, p.defaults.cpu_secs);
        let e = p
            .resolve(&LimitsRequest {
                pids: Some(0),
                ..Default::default()
            })
            .unwrap_err();
        assert_eq!(
            e,
            SpecError::LimitOutOfRange {
                field: "pids",
                max: 1024
            }
        );
    }
}
