//! Both CLIP tokenizers and text encoders, and SDXL's prompt conditioning as diffusers'
//! `StableDiffusionXLPipeline.encode_prompt` builds it: the penultimate hidden states of both encoders concatenated
//! on the last axis, and the pooled `text_embeds` of encoder 2. A refiner has only the second encoder: its
//! conditioning is that encoder's alone.

use std::sync::Arc;

use ndarray::{concatenate, Array2, Array3, ArrayD, Axis, Ix2, Ix3};

use super::model_dir::ModelDir;
use crate::error::{Error, Result};
use crate::runtime::tensor::ids_value;
use crate::runtime::{CancelToken, ModelSession, SessionConfig};
use crate::tokenizer::ClipTokenizer;

/// One prompt's conditioning.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptEmbeds {
    /// `[1, 77, D1 + D2]` (a refiner: `[1, 77, D2]`).
    pub embeds: Array3<f32>,
    /// `[1, P]` (text_encoder_2's projection).
    pub pooled: Array2<f32>,
}

impl PromptEmbeds {
    /// All-zero conditioning of the same shape (diffusers' `force_zeros_for_empty_prompt`).
    pub fn zeros_like(&self) -> Self {
        PromptEmbeds { embeds: Array3::zeros(self.embeds.raw_dim()), pooled: Array2::zeros(self.pooled.raw_dim()) }
    }
}

/// Token ids of one prompt for both tokenizers (for tests and diagnostics).
#[derive(Debug, Clone, PartialEq)]
pub struct PromptIds {
    /// tokenizer/ ids, `[77]`; empty for a refiner (no first encoder).
    pub ids_1: Vec<i64>,
    /// tokenizer_2/ ids, `[77]`.
    pub ids_2: Vec<i64>,
    /// Whether either tokenizer dropped tokens past its 77-token window.
    pub truncated: bool,
}

/// The two tokenizers and text encoders of an SDXL model (a refiner: the second only).
#[derive(Debug)]
pub struct TextEncoders {
    first: Option<FirstEncoder>,
    tokenizer_2: ClipTokenizer,
    encoder_2: Arc<ModelSession>,
    hidden_2: String,
}

/// CLIP ViT-L: `tokenizer/` and `text_encoder/`, and the name of its penultimate hidden-state output.
#[derive(Debug)]
struct FirstEncoder {
    tokenizer: ClipTokenizer,
    encoder: Arc<ModelSession>,
    hidden: String,
}

/// `hidden_states.{n-2}`: the penultimate layer's output (SDXL's `hidden_states[-2]`).
fn penultimate_output(session: &ModelSession) -> Result<String> {
    let count =
        session.outputs().iter().filter_map(|o| o.name.strip_prefix("hidden_states.")?.parse::<usize>().ok()).max();
    match count {
        Some(last) if last >= 1 => Ok(format!("hidden_states.{}", last - 1)),
        _ => Err(Error::model_invalid(
            session.path(),
            "text encoder exports no `hidden_states.N` outputs; re-export with output_hidden_states (onnx/export_onnx.py)",
        )),
    }
}

impl TextEncoders {
    /// Load `tokenizer/`, `tokenizer_2/`, `text_encoder/` and `text_encoder_2/` of `dir` (a refiner: the
    /// second pair only).
    pub fn load(env: &ort::environment::Environment, dir: &ModelDir, config: &SessionConfig) -> Result<Self> {
        let encoder_1 = match dir.refiner {
            true => None,
            false => Some(Arc::new(ModelSession::load(env, &dir.graph("text_encoder"), "text_encoder", config)?)),
        };
        let encoder_2 = ModelSession::load(env, &dir.graph("text_encoder_2"), "text_encoder_2", config)?;
        Self::from_sessions(dir, encoder_1, Arc::new(encoder_2))
    }

    /// The tokenizers of `dir` with already loaded encoder sessions (shared between pipelines whose LoRAs leave
    /// an encoder unchanged). `encoder_1` is `None` for a refiner.
    pub fn from_sessions(
        dir: &ModelDir,
        encoder_1: Option<Arc<ModelSession>>,
        encoder_2: Arc<ModelSession>,
    ) -> Result<Self> {
        let first = match encoder_1 {
            Some(encoder) => {
                encoder.input("input_ids")?;
                let tokenizer = ClipTokenizer::from_dir(&dir.root.join("tokenizer"))?;
                Some(FirstEncoder { tokenizer, hidden: penultimate_output(&encoder)?, encoder })
            }
            None => None,
        };
        let tokenizer_2 = ClipTokenizer::from_dir(&dir.root.join("tokenizer_2"))?;
        let hidden_2 = penultimate_output(&encoder_2)?;
        if !encoder_2.has_output("text_embeds") {
            return Err(Error::model_invalid(encoder_2.path(), "text_encoder_2 has no `text_embeds` output"));
        }
        encoder_2.input("input_ids")?;
        Ok(TextEncoders { first, tokenizer_2, encoder_2, hidden_2 })
    }

    /// The two encoder sessions (the first is `None` for a refiner).
    pub fn sessions(&self) -> (Option<&Arc<ModelSession>>, &Arc<ModelSession>) {
        (self.first.as_ref().map(|f| &f.encoder), &self.encoder_2)
    }

    /// Token ids of `text` for both tokenizers (padded/truncated to their windows).
    pub fn tokenize(&self, text: &str) -> Result<PromptIds> {
        self.tokenize_pair(text, text)
    }

    /// Token ids of `text` for the first tokenizer and `text_2` for the second (diffusers' `prompt_2`). A refiner
    /// encodes `text`: diffusers' `encode_prompt` pairs its prompts `[prompt, prompt_2]` with its one encoder, so
    /// the refiner's only encoder gets `prompt`.
    pub fn tokenize_pair(&self, text: &str, text_2: &str) -> Result<PromptIds> {
        let Some(first) = &self.first else {
            let b = self.tokenizer_2.encode(text)?;
            return Ok(PromptIds { truncated: b.truncated, ids_1: Vec::new(), ids_2: b.ids });
        };
        let a = first.tokenizer.encode(text)?;
        let b = self.tokenizer_2.encode(text_2)?;
        Ok(PromptIds { truncated: a.truncated || b.truncated, ids_1: a.ids, ids_2: b.ids })
    }

    /// Encode one prompt.
    pub fn encode(&self, ids: &PromptIds, cancel: &CancelToken) -> Result<PromptEmbeds> {
        let h1 = match &self.first {
            Some(first) => Some((run_encoder(&first.encoder, &ids.ids_1, &[&first.hidden], cancel)?, first)),
            None => None,
        };
        let mut out2 = run_encoder(&self.encoder_2, &ids.ids_2, &[&self.hidden_2, "text_embeds"], cancel)?;
        let pooled = out2.pop().expect("two outputs requested");
        let h2 = out2.pop().expect("two outputs requested");
        let as3 = |a: ArrayD<f32>, s: &ModelSession| {
            a.into_dimensionality::<Ix3>()
                .map_err(|e| Error::model_invalid(s.path(), format!("hidden states are not [B, S, D]: {e}")))
        };
        let h2 = as3(h2, &self.encoder_2)?;
        let embeds = match h1 {
            None => h2,
            Some((h1, first)) => {
                let h1 = as3(h1.into_iter().next().expect("one output requested"), &first.encoder)?;
                if h1.shape()[1] != h2.shape()[1] {
                    return Err(Error::model_invalid(
                        self.encoder_2.path(),
                        format!("text encoders disagree on sequence length ({} vs {})", h1.shape()[1], h2.shape()[1]),
                    ));
                }
                concatenate(Axis(2), &[h1.view(), h2.view()])
                    .map_err(|e| Error::Internal(format!("concatenating prompt embeddings: {e}")))?
            }
        };
        let pooled = pooled
            .into_dimensionality::<Ix2>()
            .map_err(|e| Error::model_invalid(self.encoder_2.path(), format!("text_embeds is not [B, P]: {e}")))?;
        Ok(PromptEmbeds { embeds, pooled })
    }
}

fn run_encoder(session: &ModelSession, ids: &[i64], wanted: &[&str], cancel: &CancelToken) -> Result<Vec<ArrayD<f32>>> {
    let spec = session.input("input_ids")?;
    let array = ArrayD::from_shape_vec(vec![1, ids.len()], ids.to_vec())
        .map_err(|e| Error::Internal(format!("token id array: {e}")))?;
    let value = ids_value(array, spec.elem, "text encoder", "input_ids")?;
    session.run(vec![("input_ids".to_string(), value)], wanted, cancel)
}
