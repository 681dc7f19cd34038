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
    /// The size of each writable tmpfs (`/work`, `/tmp`), in MiB.
    pub disk_mb: Option<u64>,
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

/// An operator's `[sandbox]` limits that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PolicyError {
    #[error("`{section}.{field}` must be at least 1")]
    Zero {
        section: &'static str,
        field: &'static str,
    },
    #[error("`defaults.{field}` ({default}) is above `maximums.{field}` ({max})")]
    DefaultAboveMax {
        field: &'static str,
        default: u64,
        max: u64,
    },
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
    /// The operator's defaults and maximums (`[sandbox.defaults]`,
    /// `[sandbox.maximums]`) over the built-in ones; each set value at
    /// least 1, and no default above its maximum.
    pub fn configured(
        defaults: &LimitsRequest,
        maximums: &LimitsRequest,
    ) -> Result<LimitPolicy, PolicyError> {
        let base = LimitPolicy::default();
        let over = |section: &'static str, base: &Limits, set: &LimitsRequest| {
            let pick = |field: &'static str, v: Option<u64>, d: u64| match v {
                Some(0) => Err(PolicyError::Zero { section, field }),
                v => Ok(v.unwrap_or(d)),
            };
            Ok::<_, PolicyError>(Limits {
                memory_mb: pick("memory_mb", set.memory_mb, base.memory_mb)?,
                cpu_secs: pick("cpu_secs", set.cpu_secs, base.cpu_secs)?,
                wall_clock_secs: pick(
                    "wall_clock_secs",
                    set.wall_clock_secs,
                    base.wall_clock_secs,
                )?,
                pids: pick("pids", set.pids, base.pids)?,
                output_bytes: pick("output_bytes", set.output_bytes, base.output_bytes)?,
                disk_mb: pick("disk_mb", set.disk_mb, base.disk_mb)?,
            })
        };
        let maximums = over("maximums", &base.maximums, maximums)?;
        // A maximum lowered below a built-in default lowers that default.
        let floor = Limits {
            memory_mb: base.defaults.memory_mb.min(maximums.memory_mb),
            cpu_secs: base.defaults.cpu_secs.min(maximums.cpu_secs),
            wall_clock_secs: base.defaults.wall_clock_secs.min(maximums.wall_clock_secs),
            pids: base.defaults.pids.min(maximums.pids),
            output_bytes: base.defaults.output_bytes.min(maximums.output_bytes),
            disk_mb: base.defaults.disk_mb.min(maximums.disk_mb),
        };
        let defaults = over("defaults", &floor, defaults)?;
        for (field, default, max) in [
            ("memory_mb", defaults.memory_mb, maximums.memory_mb),
            ("cpu_secs", defaults.cpu_secs, maximums.cpu_secs),
            (
                "wall_clock_secs",
                defaults.wall_clock_secs,
                maximums.wall_clock_secs,
            ),
            ("pids", defaults.pids, maximums.pids),
            ("output_bytes", defaults.output_bytes, maximums.output_bytes),
            ("disk_mb", defaults.disk_mb, maximums.disk_mb),
        ] {
            if default > max {
                return Err(PolicyError::DefaultAboveMax {
                    field,
                    default,
                    max,
                });
            }
        }
        Ok(LimitPolicy { defaults, maximums })
    }

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
            disk_mb: pick("disk_mb", req.disk_mb, d.disk_mb, m.disk_mb)?,
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

    #[test]
    fn configured_limits_are_checked_and_fill_the_rest() {
        let p = LimitPolicy::configured(
            &LimitsRequest {
                memory_mb: Some(128),
                ..Default::default()
            },
            &LimitsRequest {
                memory_mb: Some(512),
                wall_clock_secs: Some(5),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(p.defaults.memory_mb, 128);
        assert_eq!(p.maximums.memory_mb, 512);
        // The built-in default (30 s) is lowered to the new maximum.
        assert_eq!(p.defaults.wall_clock_secs, 5);
        assert_eq!(p.maximums.pids, LimitPolicy::default().maximums.pids);
        let zero = LimitsRequest {
            pids: Some(0),
            ..Default::default()
        };
        assert_eq!(
            LimitPolicy::configured(&zero, &LimitsRequest::default()),
            Err(PolicyError::Zero {
                section: "defaults",
                field: "pids"
            })
        );
        let high = LimitsRequest {
            cpu_secs: Some(100),
            ..Default::default()
        };
        let low = LimitsRequest {
            cpu_secs: Some(50),
            ..Default::default()
        };
        assert!(matches!(
            LimitPolicy::configured(&high, &low),
            Err(PolicyError::DefaultAboveMax {
                field: "cpu_secs",
                ..
            })
        ));
    }
}
