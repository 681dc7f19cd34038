//! Between MCP and the model: the names a model may call, and a tool result
//! as the text a model reads.

use rmcp::model::{CallToolResult, ContentBlock, ResourceContents};

use crate::tools::ToolOutput;

/// Model APIs accept tool names matching `^[a-zA-Z0-9_-]{1,64}$`.
pub const MAX_TOOL_NAME: usize = 64;

/// The most of one result the model is shown; a server answering with a
/// whole file must not blow the context window or the event log.
pub const MAX_RESULT_BYTES: usize = 64 * 1024;

/// Separates the server's name from its tool's: `fs__read_file`.
pub const SEPARATOR: &str = "__";

/// `SERVER__tool`, with every character a model API refuses replaced by `_`
/// and cut to [`MAX_TOOL_NAME`]. `taken` holds names already given: a name
/// that sanitizes onto one of them gets `_2`, `_3`… so no tool shadows another.
pub fn exposed_name(server: &str, tool: &str, taken: &dyn Fn(&str) -> bool) -> String {
    let raw: String = format!("{server}{SEPARATOR}{tool}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    // ASCII only from here on, so byte lengths are character counts.
    let base = cut(&raw, MAX_TOOL_NAME);
    if !taken(base) {
        return base.to_owned();
    }
    (2u32..)
        .map(|n| {
            let suffix = format!("_{n}");
            format!("{}{suffix}", cut(&raw, MAX_TOOL_NAME - suffix.len()))
        })
        .find(|candidate| !taken(candidate))
        .unwrap_or_else(|| base.to_owned())
}

fn cut(s: &str, max: usize) -> &str {
    &s[..s.len().min(max)]
}

/// The model's view of a `tools/call` answer: text blocks as they are,
/// other blocks named (`[image: image/png]`), joined by newlines; an
/// `isError` result becomes an error result.
pub fn render(result: &CallToolResult) -> ToolOutput {
    let mut parts: Vec<String> = result.content.iter().map(block_text).collect();
    if parts.is_empty()
        && let Some(structured) = &result.structured_content
    {
        parts.push(structured.to_string());
    }
    let text = truncate(parts.join("\n"));
    if result.is_error == Some(true) {
        ToolOutput::error(text)
    } else {
        ToolOutput::ok(text)
    }
}

fn block_text(block: &ContentBlock) -> String {
    match block {
        ContentBlock::Text(t) => t.text.clone(),
        ContentBlock::Image(i) => format!("[image: {}]", i.mime_type),
        ContentBlock::Audio(a) => format!("[audio: {}]", a.mime_type),
        ContentBlock::Resource(r) => match &r.resource {
            ResourceContents::TextResourceContents { uri, text, .. } => {
                format!("[resource: {uri}]\n{text}")
            }
            ResourceContents::BlobResourceContents { uri, mime_type, .. } => format!(
                "[resource: {uri} ({})]",
                mime_type.as_deref().unwrap_or("binary")
            ),
            _ => "[resource]".to_owned(),
        },
        ContentBlock::ResourceLink(link) => format!("[resource link: {}]", link.uri),
        // A kind of block newer than this build: named, never dropped silently.
        _ => "[content of an unknown kind]".to_owned(),
    }
}

/// Cuts at a character boundary at most [`MAX_RESULT_BYTES`] in, and says so.
fn truncate(mut text: String) -> String {
    if text.len() <= MAX_RESULT_BYTES {
        return text;
    }
    let mut at = MAX_RESULT_BYTES;
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    let total = text.len();
    text.truncate(at);
    text.push_str(&format!("\n[truncated: {total} bytes in all]"));
    text
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use rmcp::model::{ContentBlock, EmbeddedResource};
    use serde_json::json;

    use super::*;

    fn name(server: &str, tool: &str) -> String {
        exposed_name(server, tool, &|_| false)
    }

    #[test]
    fn names_are_prefixed_sanitized_and_capped() {
        assert_eq!(name("fs", "read_file"), "fs__read_file");
        assert_eq!(name("fs", "weird.name/v1"), "fs__weird_name_v1");
        assert_eq!(name("fs", "café ☕"), "fs__caf___");
        let long = name("srv", &"x".repeat(100));
        assert_eq!(long.len(), MAX_TOOL_NAME);
        assert!(long.starts_with("srv__xxx"));
    }

    #[test]
    fn names_that_collide_get_a_suffix_within_the_cap() {
        let mut taken = HashSet::new();
        for tool in ["a.b", "a/b", "a b"] {
            let n = exposed_name("s", tool, &|c| taken.contains(c));
            taken.insert(n);
        }
        let mut got: Vec<_> = taken.into_iter().collect();
        got.sort();
        assert_eq!(got, ["s__a_b", "s__a_b_2", "s__a_b_3"]);

        let long = "y".repeat(80);
        let first = exposed_name("s", &long, &|_| false);
        let second = exposed_name("s", &long, &|c| c == first);
        assert_eq!(second.len(), MAX_TOOL_NAME);
        assert!(second.ends_with("_2"));
    }

    #[test]
    fn text_is_joined_and_other_blocks_are_named() {
        let result = CallToolResult::success(vec![
            ContentBlock::text("one"),
            ContentBlock::image("AAAA", "image/png"),
            ContentBlock::Resource(EmbeddedResource::new(ResourceContents::text(
                "body",
                "file:///a.txt",
            ))),
            ContentBlock::text("two"),
        ]);
        assert_eq!(
            render(&result),
            ToolOutput::ok("one\n[image: image/png]\n[resource: file:///a.txt]\nbody\ntwo")
        );
    }

    #[test]
    fn is_error_is_an_error_and_structured_content_stands_in_for_none() {
        let failed = CallToolResult::error(vec![ContentBlock::text("nope")]);
        assert_eq!(render(&failed), ToolOutput::error("nope"));
        let mut structured = CallToolResult::success(vec![]);
        structured.structured_content = Some(json!({"n": 1}));
        assert_eq!(render(&structured), ToolOutput::ok(r#"{"n":1}"#));
    }

    #[test]
    fn huge_results_are_cut_on_a_character_boundary() {
        let text = "é".repeat(MAX_RESULT_BYTES);
        let out = render(&CallToolResult::success(vec![ContentBlock::text(text)]));
        assert!(out.content.len() < MAX_RESULT_BYTES + 64);
        assert!(out.content.ends_with(&format!(
            "[truncated: {} bytes in all]",
            2 * MAX_RESULT_BYTES
        )));
    }
}
