//! `[mcp.NAME]` in `agentd.toml`: how to reach one MCP server, checked at
//! startup so a bad table stops the daemon with its name and the problem
//! instead of failing every run that uses it.

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

use crate::agents::ApprovalPolicy;

/// The only variable a stdio server gets beside its own `env` table: enough
/// to find interpreters (`npx`, `uvx`, `python3`), and nothing of the
/// daemon's own environment (model keys, the admin token).
pub const STDIO_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// Longest server name: it prefixes each tool name, which models cap at 64.
pub const MAX_SERVER_NAME: usize = 32;

/// One `[mcp.NAME]` table, as written.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McpServerSpec {
    /// A stdio server: the program and its arguments.
    #[serde(default)]
    pub command: Option<Vec<String>>,
    /// A streamable HTTP server: `http(s)://host/path`.
    #[serde(default)]
    pub url: Option<String>,
    /// A stdio server's whole environment, beside `PATH`.
    #[serde(default)]
    pub env: IndexMap<String, String>,
    /// Whether its tools' calls wait for a human unless the agent says
    /// otherwise. Default `always`: the operator vouches for a server's
    /// code, not for what a model asks it to do.
    #[serde(default = "default_approval")]
    pub approval: ApprovalPolicy,
    /// Longest wait for one call (and for connecting and listing tools).
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
}

fn default_approval() -> ApprovalPolicy {
    ApprovalPolicy::Always
}

fn default_timeout_secs() -> u64 {
    60
}

/// How a validated server is reached.
#[derive(Clone, Debug, PartialEq)]
pub enum McpTransportSpec {
    Stdio {
        program: String,
        args: Vec<String>,
        env: IndexMap<String, String>,
    },
    Http {
        url: String,
    },
}

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("[mcp.{server}]: {message}")]
pub struct McpConfigError {
    pub server: String,
    pub message: String,
}

impl McpServerSpec {
    /// Checks the table named `name` and says how to reach it.
    pub fn transport(&self, name: &str) -> Result<McpTransportSpec, McpConfigError> {
        let bad = |message: String| McpConfigError {
            server: name.to_owned(),
            message,
        };
        if name.is_empty()
            || name.len() > MAX_SERVER_NAME
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(bad(format!(
                "a server name is 1 to {MAX_SERVER_NAME} letters, digits, '_' or '-'"
            )));
        }
        if self.timeout_secs == 0 {
            return Err(bad("timeout_secs must be positive".into()));
        }
        match (&self.command, &self.url) {
            (Some(_), Some(_)) => Err(bad(
                "set either command (a stdio server) or url (streamable HTTP), not both".into(),
            )),
            (None, None) => Err(bad(
                "set command (a stdio server) or url (streamable HTTP)".into()
            )),
            (Some(command), None) => {
                let Some((program, args)) = command.split_first() else {
                    return Err(bad("command is empty".into()));
                };
                if program.trim().is_empty() {
                    return Err(bad("command names no program".into()));
                }
                if command.iter().any(|a| a.contains('\0')) {
                    return Err(bad("command contains a NUL byte".into()));
                }
                for (key, value) in &self.env {
                    if key.is_empty() || key.contains(['=', '\0']) || value.contains('\0') {
                        return Err(bad(format!("env has an invalid variable {key:?}")));
                    }
                }
                Ok(McpTransportSpec::Stdio {
                    program: program.clone(),
                    args: args.to_vec(),
                    env: self.env.clone(),
                })
            }
            (None, Some(url)) => {
                if !self.env.is_empty() {
                    return Err(bad(
                        "env applies to stdio servers (command) only, not to url".into(),
                    ));
                }
                let parsed = reqwest::Url::parse(url)
                    .map_err(|e| bad(format!("url {url:?} is not a URL: {e}")))?;
                if !matches!(parsed.scheme(), "http" | "https") {
                    return Err(bad(format!(
                        "url {url:?} must use http or https, not {:?}",
                        parsed.scheme()
                    )));
                }
                if parsed.host_str().is_none_or(str::is_empty) {
                    return Err(bad(format!("url {url:?} names no host")));
                }
                Ok(McpTransportSpec::Http { url: url.clone() })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tables written as JSON: the daemon reads TOML into the same serde types.
    fn parse(table: &str) -> McpServerSpec {
        serde_json::from_str(table).expect("parses")
    }

    #[test]
    fn defaults_are_approval_always_and_a_minute() {
        let s = parse(r#"{"command": ["srv"]}"#);
        assert_eq!(s.approval, ApprovalPolicy::Always);
        assert_eq!(s.timeout_secs, 60);
        assert_eq!(
            s.transport("fs"),
            Ok(McpTransportSpec::Stdio {
                program: "srv".into(),
                args: vec![],
                env: IndexMap::new()
            })
        );
    }

    #[test]
    fn exactly_one_of_command_and_url() {
        let both = parse(r#"{"command": ["srv"], "url": "http://127.0.0.1/mcp"}"#);
        let err = both.transport("x").unwrap_err();
        assert!(err.to_string().contains("not both"), "{err}");
        assert!(err.to_string().starts_with("[mcp.x]"), "{err}");
        let neither = parse(r#"{}"#);
        assert!(neither.transport("x").is_err());
    }

    #[test]
    fn bad_commands_urls_names_and_env_are_refused() {
        for (name, table, needle) in [
            ("x", r#"{"command": []}"#, "empty"),
            ("x", r#"{"command": [" "]}"#, "no program"),
            ("x", r#"{"url": "ftp://h/mcp"}"#, "http or https"),
            ("x", r#"{"url": "file:///etc/passwd"}"#, "http or https"),
            ("x", r#"{"url": "not a url"}"#, "not a URL"),
            (
                "x",
                r#"{"url": "http://h/mcp", "env": {"A": "1"}}"#,
                "stdio",
            ),
            (
                "x",
                r#"{"command": ["s"], "env": {"A=B": "1"}}"#,
                "invalid variable",
            ),
            ("x", r#"{"command": ["s"], "timeout_secs": 0}"#, "positive"),
            ("a.b", r#"{"command": ["s"]}"#, "server name"),
            ("", r#"{"command": ["s"]}"#, "server name"),
        ] {
            let err = parse(table).transport(name).unwrap_err();
            assert!(err.message.contains(needle), "{table}: {err}");
        }
    }

    #[test]
    fn unknown_keys_and_policies_do_not_parse() {
        assert!(serde_json::from_str::<McpServerSpec>(r#"{"command": ["s"], "cmd": 1}"#).is_err());
        assert!(
            serde_json::from_str::<McpServerSpec>(r#"{"command": ["s"], "approval": "maybe"}"#)
                .is_err()
        );
    }

    #[test]
    fn an_http_server_keeps_its_url() {
        let s = parse(r#"{"url": "https://mcp.example.com/mcp", "approval": "never"}"#);
        assert_eq!(s.approval, ApprovalPolicy::Never);
        assert_eq!(
            s.transport("remote"),
            Ok(McpTransportSpec::Http {
                url: "https://mcp.example.com/mcp".into()
            })
        );
    }
}
