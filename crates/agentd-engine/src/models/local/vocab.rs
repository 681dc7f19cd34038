//! What a GGUF says about its text: the tokenizer rebuilt from its own
//! vocabulary and merges, its stop tokens, and its chat template rendered
//! over the conversation.

use candle_core::quantized::gguf_file;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, Tokenizer};

use super::LocalError;
use crate::models::ChatMessage;

/// GGUF's `tokenizer.ggml.token_type` for control tokens (`<|im_end|>`…).
const TOKEN_TYPE_CONTROL: i32 = 3;

/// ChatML, for a GGUF that carries no `tokenizer.chat_template`.
const CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// The model's text side, built once at load.
pub struct Vocab {
    pub tokenizer: Tokenizer,
    /// Generation ends at any of these (end of sequence, end of turn).
    pub stop_ids: Vec<u32>,
    /// The Jinja chat template (the GGUF's own, else ChatML).
    template: String,
    bos: String,
    eos: String,
}

fn md<'a>(ct: &'a gguf_file::Content, key: &str) -> Result<&'a gguf_file::Value, LocalError> {
    ct.metadata
        .get(key)
        .ok_or_else(|| LocalError::Unsupported(format!("the GGUF has no {key}")))
}

fn gguf_err(e: candle_core::Error) -> LocalError {
    LocalError::Unsupported(e.to_string())
}

impl Vocab {
    /// Byte-level BPE (`tokenizer.ggml.model = "gpt2"`) from the GGUF's
    /// tokens and merges; control tokens are special (one id each, never
    /// split, dropped when decoding).
    pub fn from_gguf(ct: &gguf_file::Content) -> Result<Vocab, LocalError> {
        let kind = md(ct, "tokenizer.ggml.model")?
            .to_string()
            .map_err(gguf_err)?;
        if kind != "gpt2" {
            return Err(LocalError::Unsupported(format!(
                "tokenizer {kind:?}: only byte-level BPE (\"gpt2\") tokenizers are supported"
            )));
        }
        let tokens: Vec<String> = md(ct, "tokenizer.ggml.tokens")?
            .to_vec()
            .map_err(gguf_err)?
            .iter()
            .map(|v| v.to_string().cloned())
            .collect::<Result<_, _>>()
            .map_err(gguf_err)?;
        let merges: Vec<(String, String)> = md(ct, "tokenizer.ggml.merges")?
            .to_vec()
            .map_err(gguf_err)?
            .iter()
            .map(|v| {
                let m = v.to_string().map_err(gguf_err)?;
                m.split_once(' ')
                    .map(|(a, b)| (a.to_owned(), b.to_owned()))
                    .ok_or_else(|| LocalError::Unsupported(format!("malformed merge {m:?}")))
            })
            .collect::<Result<_, _>>()?;
        let types: Vec<i32> = match ct.metadata.get("tokenizer.ggml.token_type") {
            Some(v) => v
                .to_vec()
                .map_err(gguf_err)?
                .iter()
                .map(|t| t.to_i32())
                .collect::<Result<_, _>>()
                .map_err(gguf_err)?,
            None => Vec::new(),
        };
        let vocab: tokenizers::models::bpe::Vocab = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| LocalError::Unsupported(format!("tokenizer: {e}")))?;
        let mut tokenizer = Tokenizer::new(bpe);
        let byte_level = ByteLevel::new(false, true, true);
        // llama.cpp's "smollm" pre-tokenizer splits digits one by one first.
        let pre = match ct
            .metadata
            .get("tokenizer.ggml.pre")
            .and_then(|v| v.to_string().ok())
        {
            Some(p) if p == "smollm" => PreTokenizerWrapper::Sequence(Sequence::new(vec![
                PreTokenizerWrapper::Digits(Digits::new(true)),
                PreTokenizerWrapper::ByteLevel(byte_level),
            ])),
            _ => PreTokenizerWrapper::ByteLevel(byte_level),
        };
        tokenizer.with_pre_tokenizer(Some(pre));
        tokenizer.with_decoder(Some(ByteLevelDecoder::default()));
        let special: Vec<AddedToken> = tokens
            .iter()
            .zip(&types)
            .filter(|(_, t)| **t == TOKEN_TYPE_CONTROL)
            .map(|(s, _)| AddedToken::from(s.clone(), true))
            .collect();
        tokenizer
            .add_special_tokens(special)
            .map_err(|e| LocalError::Unsupported(format!("tokenizer: {e}")))?;

        let token_at = |key: &str| -> Option<(u32, String)> {
            let id = ct.metadata.get(key)?.to_u32().ok()?;
            Some((id, tokens.get(id as usize)?.clone()))
        };
        let (eos_id, eos) = token_at("tokenizer.ggml.eos_token_id").ok_or_else(|| {
            LocalError::Unsupported("the GGUF names no end-of-sequence token".into())
        })?;
        let bos = token_at("tokenizer.ggml.bos_token_id")
            .map(|(_, t)| t)
            .unwrap_or_default();
        let mut stop_ids = vec![eos_id];
        // End-of-turn markers of the common templates, when the vocabulary
        // has them: a chat turn ends there even if eos is another token.
        for marker in ["<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end|>"] {
            if let Some(id) = tokenizer.token_to_id(marker)
                && !stop_ids.contains(&id)
            {
                stop_ids.push(id);
            }
        }
        let template = ct
            .metadata
            .get("tokenizer.chat_template")
            .and_then(|v| v.to_string().ok())
            .cloned()
            .unwrap_or_else(|| CHATML.to_owned());
        let vocab = Vocab {
            tokenizer,
            stop_ids,
            template,
            bos,
            eos,
        };
        // A template this build cannot render is a load error, not a run's.
        vocab.render(&[ChatMessage::user("hi")])?;
        Ok(vocab)
    }

    /// The prompt for `messages`, ending where the assistant's reply begins.
    pub fn render(&self, messages: &[ChatMessage]) -> Result<String, LocalError> {
        // What templates read: `message['role']`, `message['content']`.
        let msg = |role: &str, content: String| {
            minijinja::Value::from(std::collections::BTreeMap::from([
                ("role", minijinja::Value::from(role)),
                ("content", minijinja::Value::from(content)),
            ]))
        };
        let msgs: Vec<minijinja::Value> = messages
            .iter()
            .map(|m| match m {
                ChatMessage::System { content } => msg("system", content.clone()),
                ChatMessage::User {
                    content,
                    attachments,
                } => {
                    // A text model sees that files were sent, not their bytes.
                    let mut content = content.clone();
                    for a in attachments {
                        content.push_str(&format!("\n[attached file {:?} omitted]", a.name));
                    }
                    msg("user", content)
                }
                ChatMessage::Assistant(turn) => msg("assistant", turn.content.clone()),
                // Local agents have no tools; a result in a history that
                // came from elsewhere is shown as what the user relayed.
                ChatMessage::Tool(r) => msg("user", format!("Result of {}: {}", r.name, r.content)),
            })
            .collect();
        let mut env = minijinja::Environment::new();
        env.add_function(
            "raise_exception",
            |msg: String| -> Result<String, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    msg,
                ))
            },
        );
        let template = env
            .template_from_str(&self.template)
            .map_err(|e| LocalError::Template(e.to_string()))?;
        template
            .render(minijinja::context! {
                messages => msgs,
                add_generation_prompt => true,
                bos_token => self.bos.as_str(),
                eos_token => self.eos.as_str(),
            })
            .map_err(|e| LocalError::Template(e.to_string()))
    }

    /// Token ids of a rendered prompt (special tokens recognised).
    pub fn encode(&self, prompt: &str) -> Result<Vec<u32>, LocalError> {
        self.tokenizer
            .encode(prompt, false)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| LocalError::Internal(format!("tokenizer: {e}")))
    }
}
