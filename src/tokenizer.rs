//! CLIP byte-level BPE tokenization for SDXL's two tokenizers.
//!
//! The goal is bit-identical ids to what diffusers' SDXL pipeline gets from transformers (5.x)
//! `CLIPTokenizer.from_pretrained(folder)(prompt, padding="max_length", max_length=77, truncation=True)`.
//! transformers 5's `CLIPTokenizer.__init__` (`models/clip/tokenization_clip.py`) always rebuilds its
//! `tokenizers` pipeline from the vocabulary and merges, even when the folder has a `tokenizer.json`
//! (only the vocabulary, merges and added tokens of that file are used). This module ports that:
//!
//! * model: BPE, `end_of_word_suffix = "</w>"`, empty continuing-subword prefix, no dropout, `fuse_unk = false`,
//!   unk token from the config (`<|endoftext|>` by default);
//! * normalizer: NFC, `\s+` → `" "`, lowercase;
//! * pre-tokenizer: the CLIP split regex (with `<|startoftext|>`/`<|endoftext|>` alternatives, as in
//!   transformers 5) with `behavior="removed", invert=True`, then ByteLevel (no prefix space, GPT-2 regex on);
//! * post-processing: `bos … eos` (transformers sets a `RobertaProcessing(eos, bos)`), truncation to
//!   `max_length - 2` content tokens, padding to `max_length` with the pad token.
//!
//! Special tokens are added to the tokenizer exactly the way transformers 5.24 adds them in
//! `PreTrainedTokenizerBase._from_pretrained` and `TokenizersBackend.__init__`: first the added tokens of
//! `tokenizer_config.json`'s `added_tokens_decoder` (or, when that key is absent, of `tokenizer.json`), sorted
//! by id, then the named special tokens (bos, eos, unk, sep, pad, cls, mask, then additional ones) whose text is
//! not among them. Their `lstrip`/`rstrip`/`normalized` flags come from the config files. Two consequences
//! matter for SDXL:
//! * `tokenizer_2` of SDXL pads with `"!"`, so `"!"` is a special added token there: every `!` in a prompt
//!   becomes its own id 0 (`"!!"` is `[0, 0]`), while `tokenizer` merges it normally (`"!!</w>"`).
//! * A literal `<|endoftext|>` in a prompt is the special token. The real SDXL configs mark it
//!   `normalized: true`, so `<|ENDOFTEXT|>` matches as well (after lowercasing).

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};
use tokenizers::models::bpe::{Merges, Vocab, BPE};
use tokenizers::normalizers::replace::ReplacePattern;
use tokenizers::normalizers::{Lowercase, Replace, Sequence as NormalizerSequence, NFC};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreTokenizerSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

use crate::error::{Error, Result};

/// The context length of every CLIP text encoder (its position-embedding table has 77 rows).
pub const CLIP_MAX_LENGTH: usize = 77;

/// transformers' default `bos_token` for CLIP.
const DEFAULT_BOS: &str = "<|startoftext|>";
/// transformers' default `eos_token`, `unk_token` and `pad_token` for CLIP.
const DEFAULT_EOS: &str = "<|endoftext|>";

/// CLIP's pre-tokenization regex as transformers 5's `CLIPTokenizer` writes it.
const CLIP_SPLIT_REGEX: &str =
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";

/// The order in which transformers walks the named special tokens (`SPECIAL_TOKENS_ATTRIBUTES`).
const SPECIAL_TOKEN_KEYS: [&str; 7] =
    ["bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"];

/// Which end of the sequence padding or truncation applies to (`padding_side` / `truncation_side`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Left,
    Right,
}

/// A CLIP tokenizer loaded from a diffusers/optimum `tokenizer` or `tokenizer_2` folder.
pub struct ClipTokenizer {
    tokenizer: Tokenizer,
    dir: PathBuf,
    max_length: usize,
    bos_id: u32,
    eos_id: u32,
    pad_id: u32,
    padding_side: Side,
    truncation_side: Side,
}

impl std::fmt::Debug for ClipTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClipTokenizer")
            .field("dir", &self.dir)
            .field("max_length", &self.max_length)
            .field("bos_id", &self.bos_id)
            .field("eos_id", &self.eos_id)
            .field("pad_id", &self.pad_id)
            .finish_non_exhaustive()
    }
}

/// The ids of one prompt, ready for a CLIP text encoder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    /// `max_length` ids: bos, the (possibly truncated) prompt tokens, eos, then padding.
    pub ids: Vec<i64>,
    /// Whether the prompt had more than `max_length - 2` tokens and was cut.
    pub truncated: bool,
    /// How many prompt tokens truncation dropped (0 when not truncated).
    pub dropped_tokens: usize,
}

impl ClipTokenizer {
    /// Load from a diffusers/optimum tokenizer folder: tokenizer.json if present, else vocab.json + merges.txt
    /// (+ special_tokens_map.json / tokenizer_config.json for pad token and model_max_length), as public SDXL ONNX
    /// repos ship. Build the same pipeline transformers' CLIP fast converter builds (NFC, whitespace collapse,
    /// lowercase, CLIP split regex, byte-level, BPE with `</w>` suffix, bos/eos post-processing).
    pub fn from_dir(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            return Err(Error::ModelNotFound {
                path: dir.to_path_buf(),
                message: "tokenizer folder does not exist".into(),
            });
        }
        match catch_unwind(AssertUnwindSafe(|| Self::load(dir))) {
            Ok(result) => result,
            Err(panic) => Err(Error::model_invalid(
                dir,
                format!("the tokenizer files could not be loaded ({})", panic_message(panic.as_ref())),
            )),
        }
    }

    /// Ids padded/truncated to max_length (bos ... eos pad...), plus whether the text was truncated.
    pub fn encode(&self, text: &str) -> Result<Encoded> {
        // transformers' fast tokenizer encodes with character offsets; the ids do not depend on the offset
        // type, but using the same entry point keeps the code path identical.
        let encoding = catch_unwind(AssertUnwindSafe(|| self.tokenizer.encode_char_offsets(text, false)))
            .map_err(|panic| Error::Internal(format!("tokenizer panicked: {}", panic_message(panic.as_ref()))))?
            .map_err(|e| Error::Internal(format!("tokenizing the prompt failed: {e}")))?;
        Ok(self.finish(encoding.get_ids()))
    }

    /// The tokens of `text` without bos/eos, padding or truncation (what transformers gives for
    /// `tokenizer(text, truncation=False)["input_ids"][1:-1]`): the unit compel and A1111 chunk long prompts from.
    pub fn content_ids(&self, text: &str) -> Result<Vec<u32>> {
        let encoding = catch_unwind(AssertUnwindSafe(|| self.tokenizer.encode_char_offsets(text, false)))
            .map_err(|panic| Error::Internal(format!("tokenizer panicked: {}", panic_message(panic.as_ref()))))?
            .map_err(|e| Error::Internal(format!("tokenizing the prompt failed: {e}")))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// One chunk of a long prompt as the encoder takes it: `bos`, `content` (at most `max_length - 2` tokens, else
    /// an internal error), `eos`, then padding on the tokenizer's padding side — the ids [`Self::encode`] gives a text
    /// of these tokens — and the index of the first content token in them.
    pub fn chunk(&self, content: &[u32]) -> Result<(Vec<i64>, usize)> {
        if content.len() > self.max_length - 2 {
            return Err(Error::Internal(format!(
                "a prompt chunk of {} tokens does not fit the {}-token window",
                content.len(),
                self.max_length
            )));
        }
        let offset = match self.padding_side {
            Side::Right => 1,
            Side::Left => self.max_length - content.len() - 1,
        };
        Ok((self.finish(content).ids, offset))
    }

    /// Turn the prompt's tokens into the padded model input, as `tokenizers` does for
    /// `truncation=True` (strategy longest_first, stride 0), the `RobertaProcessing` post-processor
    /// transformers installs for CLIP, and `padding="max_length"`.
    fn finish(&self, content: &[u32]) -> Encoded {
        let room = self.max_length - 2;
        let dropped_tokens = content.len().saturating_sub(room);
        let kept = match self.truncation_side {
            Side::Right => &content[..content.len() - dropped_tokens],
            Side::Left => &content[dropped_tokens..],
        };
        let mut tokens = Vec::with_capacity(self.max_length);
        tokens.push(self.bos_id);
        tokens.extend_from_slice(kept);
        tokens.push(self.eos_id);
        let padding = std::iter::repeat_n(self.pad_id, self.max_length - tokens.len());
        let ids: Vec<u32> = match self.padding_side {
            Side::Right => tokens.into_iter().chain(padding).collect(),
            Side::Left => padding.chain(tokens).collect(),
        };
        Encoded { ids: ids.into_iter().map(i64::from).collect(), truncated: dropped_tokens > 0, dropped_tokens }
    }

    /// The padded sequence length (`model_max_length` of the config, at most 77).
    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// Id of the padding token (`<|endoftext|>` for SDXL's `tokenizer`, `"!"` = 0 for `tokenizer_2`).
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// Id of `<|startoftext|>` (49406 in the real CLIP vocabulary).
    pub fn bos_id(&self) -> u32 {
        self.bos_id
    }

    /// Id of `<|endoftext|>` (49407 in the real CLIP vocabulary).
    pub fn eos_id(&self) -> u32 {
        self.eos_id
    }

    fn load(dir: &Path) -> Result<Self> {
        let tokenizer_json_path = dir.join("tokenizer.json");
        let tokenizer_json = if tokenizer_json_path.is_file() { Some(read_json(&tokenizer_json_path)?) } else { None };
        let config_path = dir.join("tokenizer_config.json");
        let config = match optional_json(&config_path)? {
            Some(Value::Object(map)) => map,
            Some(_) => return Err(Error::model_invalid(&config_path, "expected a JSON object")),
            None => Map::new(),
        };
        let map_path = dir.join("special_tokens_map.json");
        let special_map = match optional_json(&map_path)? {
            Some(Value::Object(map)) => Some(map),
            Some(_) => return Err(Error::model_invalid(&map_path, "expected a JSON object")),
            None => None,
        };

        // Vocabulary and merges: transformers takes them from tokenizer.json when present
        // (`TokenizersBackend.convert_to_native_format`), else from vocab.json + merges.txt.
        let (vocab, merges) = match &tokenizer_json {
            Some(json) => vocab_merges_from_tokenizer_json(json, &tokenizer_json_path)?,
            None => read_vocab_merges(dir)?,
        };
        if vocab.is_empty() {
            return Err(Error::model_invalid(dir, "the vocabulary is empty"));
        }

        let specials = resolve_special_tokens(&config, special_map.as_ref(), tokenizer_json.as_ref(), dir)?;
        let unk = specials.named("unk_token").map_or(DEFAULT_EOS.to_string(), |t| t.content.clone());

        let model = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .unk_token(unk)
            .continuing_subword_prefix(String::new())
            .end_of_word_suffix("</w>".into())
            .fuse_unk(false)
            .build()
            .map_err(|e| Error::model_invalid(dir, format!("invalid BPE vocabulary/merges: {e}")))?;

        let internal = |what: &str, e: tokenizers::Error| Error::Internal(format!("building the CLIP {what}: {e}"));
        let normalizer = NormalizerSequence::new(vec![
            NFC.into(),
            Replace::new(ReplacePattern::Regex(r"\s+".into()), " ").map_err(|e| internal("normalizer", e))?.into(),
            Lowercase.into(),
        ]);
        let split = Split::new(SplitPattern::Regex(CLIP_SPLIT_REGEX.into()), SplitDelimiterBehavior::Removed, true)
            .map_err(|e| internal("pre-tokenizer", e))?;
        let pre_tokenizer = PreTokenizerSequence::new(vec![split.into(), ByteLevel::new(false, true, true).into()]);

        let mut tokenizer = Tokenizer::new(model);
        // The normalizer must be in place before tokens are added: tokens with `normalized: true` are matched
        // against the normalized text, which the added vocabulary precomputes when they are added.
        tokenizer.with_normalizer(Some(normalizer)).map_err(|e| internal("normalizer", e))?;
        tokenizer.with_pre_tokenizer(Some(pre_tokenizer));
        tokenizer.add_tokens(specials.to_add.clone()).map_err(|e| internal("added tokens", e))?;

        let max_length = max_length_from_config(&config, &config_path)?;
        let json = tokenizer_json.as_ref();
        let padding_side = side_from_config(&config, "padding_side", json, "padding", &config_path)?;
        let truncation_side = side_from_config(&config, "truncation_side", json, "truncation", &config_path)?;

        let id_of = |key: &str| -> Result<u32> {
            let content = specials.named(key).map_or("", |t| t.content.as_str());
            tokenizer.token_to_id(content).ok_or_else(|| {
                Error::model_invalid(dir, format!("{key} {content:?} is not in the tokenizer's vocabulary"))
            })
        };
        let bos_id = id_of("bos_token")?;
        let eos_id = id_of("eos_token")?;
        let pad_id = id_of("pad_token")?;
        // A token outside the model vocabulary would get a fresh id past the text encoder's embedding table.
        let vocab_size = tokenizer.get_vocab_size(false) as u32;
        for (key, id) in [("bos_token", bos_id), ("eos_token", eos_id), ("pad_token", pad_id)] {
            if id >= vocab_size {
                return Err(Error::model_invalid(
                    dir,
                    format!("{key} has id {id}, outside the vocabulary of {vocab_size} tokens"),
                ));
            }
        }

        Ok(Self {
            tokenizer,
            dir: dir.to_path_buf(),
            max_length,
            bos_id,
            eos_id,
            pad_id,
            padding_side,
            truncation_side,
        })
    }
}

/// The special and added tokens of a folder, resolved the way transformers 5 resolves them.
struct SpecialTokens {
    /// Named special tokens (`bos_token`, ...) after resolution.
    named: HashMap<&'static str, AddedToken>,
    /// Tokens to add to the `tokenizers` added vocabulary, in transformers' order.
    to_add: Vec<AddedToken>,
}

impl SpecialTokens {
    fn named(&self, key: &str) -> Option<&AddedToken> {
        self.named.get(key)
    }
}

/// Port of the special/added-token handling of transformers 5.24 `PreTrainedTokenizerBase._from_pretrained`
/// and `TokenizersBackend.__init__` for a `CLIPTokenizer` folder.
fn resolve_special_tokens(
    config: &Map<String, Value>,
    special_map: Option<&Map<String, Value>>,
    tokenizer_json: Option<&Value>,
    dir: &Path,
) -> Result<SpecialTokens> {
    let config_path = dir.join("tokenizer_config.json");
    let mut added: Vec<(u32, AddedToken)> = Vec::new();
    let mut values: HashMap<&'static str, Value> = HashMap::new();
    for key in SPECIAL_TOKEN_KEYS {
        if let Some(v) = config.get(key) {
            values.insert(key, v.clone());
        }
    }
    let mut extra: Vec<(Value, TokenSource)> = config
        .get("additional_special_tokens")
        .or_else(|| config.get("extra_special_tokens"))
        .and_then(Value::as_array)
        .map(|a| a.iter().map(|v| (v.clone(), TokenSource::Config)).collect())
        .unwrap_or_default();
    let mut named_sources: HashMap<&'static str, TokenSource> =
        values.keys().map(|&k| (k, TokenSource::Config)).collect();

    if let Some(decoder) = config.get("added_tokens_decoder") {
        // Newer configs: the added tokens are listed with their ids; special_tokens_map.json and the
        // added tokens of tokenizer.json are then not read at all.
        let decoder = decoder
            .as_object()
            .ok_or_else(|| Error::model_invalid(&config_path, "added_tokens_decoder is not an object"))?;
        for (id, token) in decoder {
            let id: u32 = id.parse().map_err(|_| {
                Error::model_invalid(&config_path, format!("added_tokens_decoder key {id:?} is not a token id"))
            })?;
            let token = parse_token_object(token, TokenSource::AddedTokensDecoder, &config_path)?;
            added.push((id, token));
        }
    } else {
        // Legacy layout: special_tokens_map.json overrides tokenizer_config.json key by key.
        if let Some(map) = special_map {
            for key in SPECIAL_TOKEN_KEYS {
                if let Some(v) = map.get(key) {
                    values.insert(key, v.clone());
                    named_sources.insert(key, TokenSource::SpecialTokensMap);
                }
            }
            if let Some(list) = map.get("additional_special_tokens").and_then(Value::as_array) {
                extra = list.iter().map(|v| (v.clone(), TokenSource::SpecialTokensMap)).collect();
            }
        }
        if let Some(json) = tokenizer_json {
            let path = dir.join("tokenizer.json");
            if let Some(list) = json.get("added_tokens") {
                let list = list.as_array().ok_or_else(|| Error::model_invalid(&path, "added_tokens is not a list"))?;
                for token in list {
                    let id = token
                        .get("id")
                        .and_then(Value::as_u64)
                        .and_then(|id| u32::try_from(id).ok())
                        .ok_or_else(|| Error::model_invalid(&path, "an added token has no valid id"))?;
                    added.push((id, parse_token_object(token, TokenSource::TokenizerJson, &path)?));
                }
            }
        }
    }
    added.sort_by_key(|(id, _)| *id);

    // Named special tokens in transformers' order, with CLIPTokenizer's defaults for bos/eos/unk/pad. Strings
    // become special, non-normalized tokens; objects keep their flags. A token whose text is already an added
    // token takes that added token's flags and is not added again. When two named tokens share a text with
    // different flags (eos and unk), the later one wins, as in `tokenizers`' `add_tokens`.
    let mut named = HashMap::new();
    let mut specials_in_order = Vec::new();
    for key in SPECIAL_TOKEN_KEYS {
        let default = match key {
            "bos_token" => Some(DEFAULT_BOS),
            "eos_token" | "unk_token" | "pad_token" => Some(DEFAULT_EOS),
            _ => None,
        };
        let token = match values.get(key) {
            Some(value) => {
                let source = named_sources.get(key).copied().unwrap_or(TokenSource::Config);
                parse_special_value(value, source, key, &config_path)?
            }
            None => default.map(|d| AddedToken::from(d, true)),
        };
        let Some(mut token) = token else {
            if default.is_some() {
                return Err(Error::model_invalid(&config_path, format!("{key} is null; a CLIP tokenizer needs one")));
            }
            continue;
        };
        if let Some((_, existing)) = added.iter().find(|(_, t)| t.content == token.content) {
            token = existing.clone();
        }
        named.insert(key, token.clone());
        specials_in_order.push(token);
    }
    for (value, source) in &extra {
        if let Some(token) = parse_special_value(value, *source, "additional_special_tokens", &config_path)? {
            specials_in_order.push(token);
        }
    }
    let mut to_add: Vec<AddedToken> = added.iter().map(|(_, t)| t.clone()).collect();
    for token in specials_in_order {
        if !added.iter().any(|(_, t)| t.content == token.content) && !to_add.contains(&token) {
            to_add.push(token);
        }
    }
    Ok(SpecialTokens { named, to_add })
}

/// Where a token description was read from; it decides the defaults of missing flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TokenSource {
    /// `tokenizer_config.json`, e.g. `{"__type": "AddedToken", ...}` (transformers: `AddedToken(**obj)`).
    Config,
    /// `special_tokens_map.json` (transformers: `AddedToken(**value, special=True)`).
    SpecialTokensMap,
    /// `tokenizer_config.json`'s `added_tokens_decoder` (transformers: `AddedToken(**token)`).
    AddedTokensDecoder,
    /// `tokenizer.json`'s `added_tokens`.
    TokenizerJson,
}

/// A named special token value: a string, an AddedToken object, or null (`None`).
fn parse_special_value(value: &Value, source: TokenSource, key: &str, path: &Path) -> Result<Option<AddedToken>> {
    match value {
        Value::Null => Ok(None),
        // transformers: `AddedToken(value, rstrip=False, lstrip=False, normalized=False, special=True)`.
        Value::String(s) => Ok(Some(AddedToken::from(s.clone(), true))),
        Value::Object(_) => {
            let mut token = parse_token_object(value, source, path)?;
            token.special = true;
            Ok(Some(token))
        }
        _ => Err(Error::model_invalid(path, format!("{key} must be a string or an object with \"content\""))),
    }
}

/// An `AddedToken` object (`content`, `lstrip`, `rstrip`, `single_word`, `normalized`, `special`).
/// A missing `normalized` defaults to `!special`, as in `tokenizers.AddedToken`.
fn parse_token_object(value: &Value, source: TokenSource, path: &Path) -> Result<AddedToken> {
    let obj = value.as_object().ok_or_else(|| Error::model_invalid(path, "a special token entry is not an object"))?;
    let content = obj
        .get("content")
        .and_then(Value::as_str)
        .ok_or_else(|| Error::model_invalid(path, "a special token entry has no string \"content\""))?;
    let flag = |name: &str| -> Result<Option<bool>> {
        match obj.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(Error::model_invalid(path, format!("token {content:?}: \"{name}\" must be a boolean"))),
        }
    };
    let special = match source {
        TokenSource::SpecialTokensMap => true,
        _ => flag("special")?.unwrap_or(false),
    };
    let mut token = AddedToken::from(content.to_string(), special);
    token.single_word = flag("single_word")?.unwrap_or(false);
    token.lstrip = flag("lstrip")?.unwrap_or(false);
    token.rstrip = flag("rstrip")?.unwrap_or(false);
    token.normalized = flag("normalized")?.unwrap_or(!special);
    Ok(token)
}

/// `model_max_length` (or the legacy `max_len`), capped at 77: configs without it, or with transformers'
/// "unlimited" 1e30, still describe a CLIP text encoder with 77 positions.
fn max_length_from_config(config: &Map<String, Value>, path: &Path) -> Result<usize> {
    let value = config.get("model_max_length").or_else(|| config.get("max_len"));
    let Some(value) = value.filter(|v| !v.is_null()) else { return Ok(CLIP_MAX_LENGTH) };
    let n = value
        .as_f64()
        .filter(|n| n.is_finite() || *n == f64::INFINITY)
        .ok_or_else(|| Error::model_invalid(path, format!("model_max_length {value} is not a number")))?;
    if n < 2.0 {
        return Err(Error::model_invalid(path, format!("model_max_length {value} leaves no room for bos and eos")));
    }
    if n >= CLIP_MAX_LENGTH as f64 {
        Ok(CLIP_MAX_LENGTH)
    } else {
        Ok(n as usize)
    }
}

/// `padding_side` / `truncation_side` of tokenizer_config.json; when the config has none, the `direction` of
/// tokenizer.json's `padding` / `truncation` section (transformers' `TokenizersBackend.__init__` uses it as the
/// default); else "right".
fn side_from_config(
    config: &Map<String, Value>,
    key: &str,
    tokenizer_json: Option<&Value>,
    json_section: &str,
    path: &Path,
) -> Result<Side> {
    let parse = |value: &Value, path: &Path| match value.as_str().map(str::to_ascii_lowercase).as_deref() {
        Some("right") => Ok(Side::Right),
        Some("left") => Ok(Side::Left),
        _ => Err(Error::model_invalid(path, format!("{key} must be \"right\" or \"left\", not {value}"))),
    };
    match config.get(key) {
        Some(Value::Null) | None => {}
        Some(value) => return parse(value, path),
    }
    match tokenizer_json.and_then(|json| json.get(json_section)).and_then(|section| section.get("direction")) {
        Some(Value::Null) | None => Ok(Side::Right),
        Some(direction) => parse(direction, &path.with_file_name("tokenizer.json")),
    }
}

/// vocab.json + merges.txt, read with the rules of `tokenizers`' `BPE::read_file` (which transformers uses),
/// but rejecting vocabulary entries that are not token ids instead of skipping them.
fn read_vocab_merges(dir: &Path) -> Result<(Vocab, Merges)> {
    let vocab_path = dir.join("vocab.json");
    let merges_path = dir.join("merges.txt");
    for path in [&vocab_path, &merges_path] {
        if !path.is_file() {
            return Err(Error::ModelNotFound {
                path: path.clone(),
                message: "the tokenizer folder has neither tokenizer.json nor vocab.json + merges.txt".into(),
            });
        }
    }
    let vocab = parse_vocab(&read_json(&vocab_path)?, &vocab_path)?;
    let text = std::fs::read_to_string(&merges_path)
        .map_err(|e| Error::model_invalid(&merges_path, format!("cannot read merges: {e}")))?;
    let mut merges = Vec::new();
    // `tokenizers::models::bpe::convert_merges_to_hashmap`: skip "#version" lines, every other line is "a b".
    for (rank, line) in text.lines().filter(|l| !l.starts_with("#version")).enumerate() {
        let mut parts = line.split(' ');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(a), Some(b), None) => merges.push((a.to_string(), b.to_string())),
            _ => {
                return Err(Error::model_invalid(
                    &merges_path,
                    format!("merge {} ({line:?}) is not two tokens separated by one space", rank + 1),
                ))
            }
        }
    }
    Ok((vocab, merges))
}

/// Vocabulary and merges of a `tokenizer.json` BPE model (`vocab` as an object, `merges` as "a b" strings or
/// `["a", "b"]` pairs).
fn vocab_merges_from_tokenizer_json(json: &Value, path: &Path) -> Result<(Vocab, Merges)> {
    let model = json.get("model").ok_or_else(|| Error::model_invalid(path, "tokenizer.json has no \"model\""))?;
    match model.get("type").and_then(Value::as_str) {
        Some("BPE") | None => {}
        Some(other) => {
            return Err(Error::model_invalid(path, format!("tokenizer.json has a {other} model, CLIP needs BPE")))
        }
    }
    let vocab = parse_vocab(model.get("vocab").unwrap_or(&Value::Null), path)?;
    let list = model
        .get("merges")
        .and_then(Value::as_array)
        .ok_or_else(|| Error::model_invalid(path, "tokenizer.json's BPE model has no merges list"))?;
    let mut merges = Vec::with_capacity(list.len());
    for (rank, merge) in list.iter().enumerate() {
        let pair = match merge {
            Value::String(s) => {
                let mut parts = s.split(' ');
                match (parts.next(), parts.next(), parts.next()) {
                    (Some(a), Some(b), None) => Some((a.to_string(), b.to_string())),
                    _ => None,
                }
            }
            Value::Array(items) => match items.as_slice() {
                [Value::String(a), Value::String(b)] => Some((a.clone(), b.clone())),
                _ => None,
            },
            _ => None,
        };
        merges.push(pair.ok_or_else(|| Error::model_invalid(path, format!("merge {} is not a token pair", rank + 1)))?);
    }
    Ok((vocab, merges))
}

/// A `{token: id}` object.
fn parse_vocab(value: &Value, path: &Path) -> Result<Vocab> {
    let obj = value.as_object().ok_or_else(|| Error::model_invalid(path, "the vocabulary is not a JSON object"))?;
    obj.iter()
        .map(|(token, id)| {
            id.as_u64()
                .and_then(|id| u32::try_from(id).ok())
                .map(|id| (token.clone(), id))
                .ok_or_else(|| Error::model_invalid(path, format!("vocabulary entry {token:?} has no valid id ({id})")))
        })
        .collect()
}

/// Parse a required JSON file: missing → ModelNotFound, unreadable or malformed → ModelInvalid.
fn read_json(path: &Path) -> Result<Value> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::ModelNotFound { path: path.to_path_buf(), message: "file does not exist".into() })
        }
        Err(e) => return Err(Error::model_invalid(path, format!("cannot read: {e}"))),
    };
    serde_json::from_str(&text).map_err(|e| Error::model_invalid(path, format!("invalid JSON: {e}")))
}

/// Parse an optional JSON file (`None` when it does not exist).
fn optional_json(path: &Path) -> Result<Option<Value>> {
    if path.exists() {
        read_json(path).map(Some)
    } else {
        Ok(None)
    }
}

/// The text of a caught panic payload.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
    const EOS: &str = "<|endoftext|>";

    fn fixture(rel: &str) -> PathBuf {
        Path::new(FIXTURES).join(rel)
    }

    /// tests/fixtures/tokenizer_ids.json: ids transformers' CLIPTokenizer gives, per style and prompt.
    struct Expected {
        json: Value,
    }

    impl Expected {
        fn load() -> Self {
            let text = fs::read_to_string(fixture("tokenizer_ids.json")).expect("tokenizer_ids.json");
            Self { json: serde_json::from_str(&text).expect("valid tokenizer_ids.json") }
        }
        fn prompts(&self) -> Vec<String> {
            self.json["prompts"].as_array().unwrap().iter().map(|p| p.as_str().unwrap().to_string()).collect()
        }
        fn ids(&self, style: &str, prompt: &str) -> Vec<i64> {
            let ids = &self.json[style][prompt];
            ids.as_array()
                .unwrap_or_else(|| panic!("{style}: {prompt:?}"))
                .iter()
                .map(|v| v.as_i64().unwrap())
                .collect()
        }
        fn untruncated_len(&self, style: &str, prompt: &str) -> usize {
            self.json[format!("{style}_untruncated_len")][prompt].as_u64().unwrap() as usize
        }
    }

    /// Encode every fixture prompt with `tok` and compare ids, truncation flag and dropped count to `style`.
    fn check_style(tok: &ClipTokenizer, style: &str) {
        let expected = Expected::load();
        let prompts = expected.prompts();
        assert!(prompts.len() >= 9, "{style}: too few prompts");
        for prompt in &prompts {
            let got = tok.encode(prompt).unwrap();
            assert_eq!(got.ids, expected.ids(style, prompt), "{style}: {prompt:?}");
            let full = expected.untruncated_len(style, prompt);
            assert_eq!(got.truncated, full > 77, "{style}: {prompt:?}");
            assert_eq!(got.dropped_tokens, full.saturating_sub(77), "{style}: {prompt:?}");
        }
    }

    /// A folder with the given files (name, content) plus copies of `copy_from`'s vocab.json and merges.txt.
    fn folder_with(copy_from: &Path, files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for name in ["vocab.json", "merges.txt"] {
            fs::copy(copy_from.join(name), dir.path().join(name)).unwrap();
        }
        for (name, content) in files {
            fs::write(dir.path().join(name), content).unwrap();
        }
        dir
    }

    /// A tokenizer.json holding only the BPE vocabulary/merges of `from` and its added tokens (what
    /// transformers reads from such a file), with merges in the newer `[a, b]` form.
    fn tokenizer_json_folder(from: &Path, pad: &str) -> tempfile::TempDir {
        let vocab: Value = serde_json::from_str(&fs::read_to_string(from.join("vocab.json")).unwrap()).unwrap();
        let merges: Vec<Value> = fs::read_to_string(from.join("merges.txt"))
            .unwrap()
            .lines()
            .filter(|l| !l.starts_with("#version"))
            .map(|l| {
                let (a, b) = l.split_once(' ').unwrap();
                serde_json::json!([a, b])
            })
            .collect();
        let added: Vec<Value> = ["<|startoftext|>", EOS, pad]
            .iter()
            .map(|t| {
                serde_json::json!({"id": vocab[*t], "content": t, "single_word": false, "lstrip": false,
                                   "rstrip": false, "normalized": false, "special": true})
            })
            .collect();
        let json = serde_json::json!({"version": "1.0", "added_tokens": added,
                                      "model": {"type": "BPE", "vocab": vocab, "merges": merges}});
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("tokenizer.json"), json.to_string()).unwrap();
        let config = serde_json::json!({"pad_token": pad, "model_max_length": 77});
        fs::write(dir.path().join("tokenizer_config.json"), config.to_string()).unwrap();
        dir
    }

    fn pad_config(pad: &str) -> String {
        serde_json::json!({"pad_token": pad, "model_max_length": 77}).to_string()
    }

    #[test]
    fn full_vocab_vocab_merges_path_matches_transformers() {
        let full = fixture("clip-vocab-full");
        // transformers with the pad token as a keyword argument; here the same through tokenizer_config.json.
        let eos_pad = ClipTokenizer::from_dir(&full).unwrap();
        assert_eq!((eos_pad.bos_id(), eos_pad.eos_id(), eos_pad.pad_id()), (49406, 49407, 49407));
        check_style(&eos_pad, "full_eos_pad");
        let bang = folder_with(&full, &[("tokenizer_config.json", &pad_config("!"))]);
        let bang_pad = ClipTokenizer::from_dir(bang.path()).unwrap();
        assert_eq!(bang_pad.pad_id(), 0);
        check_style(&bang_pad, "full_bang_pad");
    }

    #[test]
    fn full_vocab_tokenizer_json_path_matches_transformers() {
        let full = fixture("clip-vocab-full");
        for (pad, style) in [(EOS, "full_eos_pad"), ("!", "full_bang_pad")] {
            let dir = tokenizer_json_folder(&full, pad);
            check_style(&ClipTokenizer::from_dir(dir.path()).unwrap(), style);
        }
    }

    #[test]
    fn tiny_sdxl_tokenizers_match_transformers() {
        // tiny-sdxl: with tokenizer.json; tiny-sdxl-folded: vocab.json + merges.txt + configs only.
        for model in ["tiny-sdxl", "tiny-sdxl-folded"] {
            let tok = ClipTokenizer::from_dir(&fixture(&format!("{model}/tokenizer"))).unwrap();
            assert_eq!((tok.bos_id(), tok.eos_id(), tok.pad_id(), tok.max_length()), (998, 999, 999, 77), "{model}");
            check_style(&tok, "v1000_eos_pad");
            let tok2 = ClipTokenizer::from_dir(&fixture(&format!("{model}/tokenizer_2"))).unwrap();
            assert_eq!((tok2.bos_id(), tok2.eos_id(), tok2.pad_id(), tok2.max_length()), (998, 999, 0, 77), "{model}");
            check_style(&tok2, "v1000_bang_pad");
        }
    }

    #[test]
    fn bang_is_a_special_token_when_it_pads() {
        // transformers 5.24: the pad token "!" of tokenizer_2 is an added special token, so each "!" is id 0.
        let tok = ClipTokenizer::from_dir(&fixture("tiny-sdxl/tokenizer")).unwrap();
        let tok2 = ClipTokenizer::from_dir(&fixture("tiny-sdxl/tokenizer_2")).unwrap();
        assert_eq!(tok.encode("hello!! world!").unwrap().ids[..9], [998, 71, 826, 334, 748, 641, 730, 256, 999]);
        assert_eq!(tok2.encode("hello!! world!").unwrap().ids[..10], [998, 71, 826, 334, 0, 0, 641, 730, 0, 999]);
        assert_eq!(tok2.encode("hi !x! ").unwrap().ids[..7], [998, 71, 328, 0, 343, 0, 999]);
    }

    #[test]
    fn literal_special_tokens_follow_the_config_flags() {
        // A literal <|endoftext|> is the special token in every layout.
        for model in ["tiny-sdxl", "tiny-sdxl-folded"] {
            let tok = ClipTokenizer::from_dir(&fixture(&format!("{model}/tokenizer_2"))).unwrap();
            let ids = tok.encode("a <|endoftext|> b<|startoftext|>").unwrap().ids;
            assert_eq!(ids[..6], [998, 320, 999, 321, 998, 999], "{model}");
        }
        // Upper case: tokenizer.json marks the specials normalized=false (BPE pieces), the SDXL-style configs
        // normalized=true (matched after lowercasing). Both as transformers 5.24 does it.
        let json = ClipTokenizer::from_dir(&fixture("tiny-sdxl/tokenizer_2")).unwrap();
        assert_eq!(
            json.encode("A<|ENDOFTEXT|>").unwrap().ids[..14],
            [998, 320, 27, 347, 524, 639, 69, 600, 87, 339, 91, 285, 999, 0]
        );
        let folded = ClipTokenizer::from_dir(&fixture("tiny-sdxl-folded/tokenizer_2")).unwrap();
        assert_eq!(folded.encode("A<|ENDOFTEXT|>").unwrap().ids[..5], [998, 320, 999, 999, 0]);
    }

    #[test]
    fn empty_prompt_is_bos_eos_then_padding() {
        let tok = ClipTokenizer::from_dir(&fixture("tiny-sdxl/tokenizer")).unwrap();
        let got = tok.encode("").unwrap();
        assert_eq!(got.ids.len(), 77);
        assert_eq!(got.ids[..2], [998, 999]);
        assert!(got.ids[2..].iter().all(|&id| id == 999));
        assert!(!got.truncated);
        let tok2 = ClipTokenizer::from_dir(&fixture("tiny-sdxl/tokenizer_2")).unwrap();
        let got = tok2.encode("   ").unwrap();
        assert_eq!(got.ids[..2], [998, 999]);
        assert!(got.ids[2..].iter().all(|&id| id == 0));
    }

    #[test]
    fn truncation_keeps_75_tokens_and_reports_the_rest() {
        let tok = ClipTokenizer::from_dir(&fixture("clip-vocab-full")).unwrap();
        let exact = "a ".repeat(75);
        let got = tok.encode(&exact).unwrap();
        assert!(!got.truncated);
        assert_eq!((got.ids[75], got.ids[76]), (320, 49407));
        let got = tok.encode(&"a ".repeat(80)).unwrap();
        assert!(got.truncated);
        assert_eq!(got.dropped_tokens, 5);
        assert_eq!(got.ids.len(), 77);
        assert_eq!((got.ids[0], got.ids[75], got.ids[76]), (49406, 320, 49407));
    }

    #[test]
    fn config_variants() {
        let full = fixture("clip-vocab-full");
        // transformers' "unlimited" model_max_length and a missing one are both CLIP's 77.
        let dir = folder_with(&full, &[("tokenizer_config.json", r#"{"model_max_length": 1e30}"#)]);
        assert_eq!(ClipTokenizer::from_dir(dir.path()).unwrap().max_length(), 77);
        let dir = folder_with(
            &full,
            &[("tokenizer_config.json", r#"{"model_max_length": 1000000000000000019884624838656}"#)],
        );
        assert_eq!(ClipTokenizer::from_dir(dir.path()).unwrap().max_length(), 77);
        // A shorter context is honoured.
        let dir = folder_with(&full, &[("tokenizer_config.json", r#"{"model_max_length": 8}"#)]);
        let tok = ClipTokenizer::from_dir(dir.path()).unwrap();
        let got = tok.encode("a photograph of an astronaut riding a horse").unwrap();
        assert_eq!(got.ids, [49406, 320, 8853, 539, 550, 18376, 6765, 49407]);
        assert_eq!(got.dropped_tokens, 2);
        // pad_token as an AddedToken object, in special_tokens_map.json (which overrides tokenizer_config.json).
        let dir = folder_with(
            &full,
            &[
                ("tokenizer_config.json", r#"{"pad_token": "<|endoftext|>"}"#),
                ("special_tokens_map.json", r#"{"pad_token": {"content": "!", "lstrip": false, "normalized": false}}"#),
            ],
        );
        assert_eq!(ClipTokenizer::from_dir(dir.path()).unwrap().pad_id(), 0);
        // The newer layout: added_tokens_decoder in tokenizer_config.json, special_tokens_map.json ignored.
        let config = r#"{"added_tokens_decoder": {
            "0": {"content": "!", "lstrip": false, "normalized": false, "rstrip": false, "single_word": false, "special": true},
            "49406": {"content": "<|startoftext|>", "lstrip": false, "normalized": true, "rstrip": false, "single_word": false, "special": true},
            "49407": {"content": "<|endoftext|>", "lstrip": false, "normalized": false, "rstrip": false, "single_word": false, "special": true}},
            "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "!", "unk_token": "<|endoftext|>",
            "model_max_length": 77}"#;
        let dir = folder_with(
            &full,
            &[("tokenizer_config.json", config), ("special_tokens_map.json", r#"{"pad_token": "<|endoftext|>"}"#)],
        );
        let tok = ClipTokenizer::from_dir(dir.path()).unwrap();
        assert_eq!(tok.pad_id(), 0);
        assert_eq!(tok.encode("hi!").unwrap().ids[..4], [49406, 1883, 0, 49407]);
        // Without padding_side in the config, tokenizer.json's padding direction is the default (transformers 5).
        let dir = tokenizer_json_folder(&full, EOS);
        let path = dir.path().join("tokenizer.json");
        let mut json: Value = serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
        json["padding"] = serde_json::json!({"direction": "Left", "pad_id": 0, "pad_token": "!"});
        fs::write(&path, json.to_string()).unwrap();
        let tok = ClipTokenizer::from_dir(dir.path()).unwrap();
        assert_eq!((tok.pad_id(), tok.encode("a").unwrap().ids[74..].to_vec()), (49407, vec![49406, 320, 49407]));
        // padding_side "left" pads in front.
        let dir = folder_with(&full, &[("tokenizer_config.json", r#"{"padding_side": "left"}"#)]);
        let ids = ClipTokenizer::from_dir(dir.path()).unwrap().encode("a").unwrap().ids;
        assert_eq!(ids[74..], [49406, 320, 49407]);
        assert!(ids[..74].iter().all(|&id| id == 49407));
    }

    fn assert_not_found(result: Result<ClipTokenizer>) {
        match result {
            Err(e @ Error::ModelNotFound { .. }) => assert!(!e.to_string().is_empty()),
            other => panic!("expected ModelNotFound, got {other:?}"),
        }
    }

    fn assert_invalid(result: Result<ClipTokenizer>, needle: &str) {
        match result {
            Err(e @ Error::ModelInvalid { .. }) => assert!(e.to_string().contains(needle), "{e} lacks {needle:?}"),
            other => panic!("expected ModelInvalid ({needle}), got {other:?}"),
        }
    }

    #[test]
    fn missing_files_are_model_not_found() {
        assert_not_found(ClipTokenizer::from_dir(Path::new("/nonexistent/sdxl/tokenizer")));
        let empty = tempfile::tempdir().unwrap();
        assert_not_found(ClipTokenizer::from_dir(empty.path()));
        fs::write(empty.path().join("vocab.json"), "{}").unwrap();
        assert_not_found(ClipTokenizer::from_dir(empty.path()));
    }

    #[test]
    fn corrupt_files_are_model_invalid() {
        let full = fixture("clip-vocab-full");
        let v1000 = fixture("tiny-sdxl-folded/tokenizer");
        let dir = folder_with(&v1000, &[("vocab.json", "{\"a\": 1,")]);
        assert_invalid(ClipTokenizer::from_dir(dir.path()), "vocab.json");
        let dir = folder_with(&v1000, &[("vocab.json", "[1, 2]")]);
        assert_invalid(ClipTokenizer::from_dir(dir.path()), "not a JSON object");
        let dir = folder_with(&v1000, &[("vocab.json", r#"{"a": -1}"#)]);
        assert_invalid(ClipTokenizer::from_dir(dir.path()), "valid id");
        let dir = folder_with(&v1000, &[("vocab.json", "{}")]);
        assert_invalid(ClipTokenizer::from_dir(dir.path()), "empty");
        let dir = folder_with(&v1000, &[("merges.txt", "#version: 0.2\nt h\nthis line is bad\n")]);
        assert_invalid(ClipTokenizer::from_dir(dir.path()), "merge 2");
        let dir = folder_with(&v1000, &[("merges.txt", "#version: 0.2\nt h\n\n")]);
        assert_invalid(ClipTokenizer::from_dir(dir.path()), "merge 2");
        // A merge of tokens the vocabulary lacks.
        let dir = folder_with(&v1000, &[("merges.txt", "#version: 0.2\nzzzz qqqq\n")]);
        assert_invalid(ClipTokenizer::from_dir(dir.path()), "BPE");
        let dir = folder_with(&v1000, &[("tokenizer.json", "{\"model\": ")]);
        assert_invalid(ClipTokenizer::from_dir(dir.path()), "tokenizer.json");
        let dir = folder_with(&v1000, &[("tokenizer.json", r#"{"model": {"type": "WordPiece", "vocab": {}}}"#)]);
        assert_invalid(ClipTokenizer::from_dir(dir.path()), "WordPiece");
        let dir = folder_with(
            &v1000,
            &[("tokenizer.json", r#"{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": [1]}}"#)],
        );
        assert_invalid(ClipTokenizer::from_dir(dir.path()), "merge 1");
        let dir = folder_with(&v1000, &[("tokenizer_config.json", "not json")]);
        assert_invalid(ClipTokenizer::from_dir(dir.path()), "tokenizer_config.json");
        let dir = folder_with(&v1000, &[("special_tokens_map.json", "[]")]);
        assert_invalid(ClipTokenizer::from_dir(dir.path()), "JSON object");
        let dir = folder_with(&v1000, &[("tokenizer_config.json", r#"{"pad_token": 5}"#)]);
        assert_invalid(ClipTokenizer::from_dir(dir.path()), "pad_token");
        let dir = folder_with(&v1000, &[("tokenizer_config.json", r#"{"pad_token": null}"#)]);
        assert_invalid(ClipTokenizer::from_dir(dir.path()), "pad_token");
        let dir = folder_with(&full, &[("tokenizer_config.json", r#"{"pad_token": "<pad>"}"#)]);
        assert_invalid(ClipTokenizer::from_dir(dir.path()), "pad_token");
        let dir = folder_with(&full, &[("tokenizer_config.json", r#"{"model_max_length": 1}"#)]);
        assert_invalid(ClipTokenizer::from_dir(dir.path()), "model_max_length");
        let dir = folder_with(&full, &[("tokenizer_config.json", r#"{"model_max_length": "77"}"#)]);
        assert_invalid(ClipTokenizer::from_dir(dir.path()), "model_max_length");
        let dir = folder_with(&full, &[("tokenizer_config.json", r#"{"padding_side": "middle"}"#)]);
        assert_invalid(ClipTokenizer::from_dir(dir.path()), "padding_side");
    }

    #[test]
    fn tokenizer_is_shareable_across_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<ClipTokenizer>();
    }
}
