//! Both CLIP tokenizers and text encoders, and SDXL's prompt conditioning as diffusers'
//! `StableDiffusionXLPipeline.encode_prompt` builds it: the penultimate hidden states of both encoders concatenated
//! on the last axis, and the pooled `text_embeds` of encoder 2. A refiner has only the second encoder: its
//! conditioning is that encoder's alone.
//!
//! With `data.prompt_syntax: "weighted"` ([`TextEncoders::encode_weighted`]) a prompt is encoded in 77-token chunks
//! ([`super::prompt_chunks`]), each through each encoder on its own, the hidden states joined along the sequence
//! axis, and each token's weight `w` applied as ComfyUI (`comfy/sd1_clip.py`) and compel
//! (`EmbeddingsProvider.build_weighted_embedding_tensor`) apply it: `z_empty + (z − z_empty) · w`, with `z_empty` the
//! hidden states of the empty prompt at the same position; a token at weight 1 keeps `z` as it is. The pooled
//! embedding is text_encoder_2's `text_embeds` of the first chunk, unweighted (compel's `get_pooled_embeddings`,
//! which encodes the first 77 tokens; ComfyUI's first chunk).

use std::sync::Arc;

use ndarray::{concatenate, s, Array2, Array3, ArrayD, Axis, Ix2, Ix3};

use super::model_dir::ModelDir;
use super::prompt_chunks::{self, Chunks};
use crate::error::{Error, Result};
use crate::protocol::prompt_syntax::Piece;
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

/// A weighted prompt's chunks for both tokenizers ([`TextEncoders::tokenize_weighted`]).
#[derive(Debug, Clone, PartialEq)]
pub struct WeightedIds {
    /// tokenizer/'s chunks; `None` for a refiner.
    pub chunks_1: Option<Chunks>,
    /// tokenizer_2/'s chunks.
    pub chunks_2: Chunks,
}

impl WeightedIds {
    /// The most chunks either encoder gets.
    pub fn chunk_count(&self) -> usize {
        self.chunks_1.as_ref().map_or(0, |c| c.ids.len()).max(self.chunks_2.ids.len())
    }

    /// The prompt's tokens (the most of either tokenizer), bos/eos/padding not counted.
    pub fn tokens(&self) -> usize {
        self.chunks_1.as_ref().map_or(0, |c| c.tokens).max(self.chunks_2.tokens)
    }
}

/// The empty prompt's hidden states, `[1, 77, D]` per encoder ([`TextEncoders::empty_hidden`]): compel's and
/// ComfyUI's `z_empty`, the anchor of the weights and the padding chunk.
#[derive(Debug, Clone)]
pub struct EmptyHidden {
    first: Option<Array3<f32>>,
    second: Array3<f32>,
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
    skipped_output(session, 0)
}

/// `hidden_states[-(clip_skip + 2)]` of `session`'s `hidden_states.0` (the embeddings) … `hidden_states.n` (the
/// last layer): diffusers' `clip_skip` for SDXL, 0 being the penultimate layer.
fn skipped_output(session: &ModelSession, clip_skip: u32) -> Result<String> {
    let last =
        session.outputs().iter().filter_map(|o| o.name.strip_prefix("hidden_states.")?.parse::<usize>().ok()).max();
    let Some(last) = last.filter(|&n| n >= 1) else {
        return Err(Error::model_invalid(
            session.path(),
            "text encoder exports no `hidden_states.N` outputs; re-export with output_hidden_states (onnx/export_onnx.py)",
        ));
    };
    match (last - 1).checked_sub(clip_skip as usize) {
        Some(layer) => Ok(format!("hidden_states.{layer}")),
        None => Err(Error::field(
            "data.hyperparameters.clip_skip",
            format!(
                "{clip_skip} is too many for the text encoder {}: its {last} layers allow at most {}",
                session.path().display(),
                last - 1
            ),
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

    /// The chunks of the parsed prompts `pieces` for the first tokenizer and `pieces_2` for the second (a refiner
    /// chunks `pieces`, as [`Self::tokenize_pair`] does).
    pub fn tokenize_weighted(&self, pieces: &[Piece], pieces_2: &[Piece]) -> Result<WeightedIds> {
        let Some(first) = &self.first else {
            return Ok(WeightedIds { chunks_1: None, chunks_2: prompt_chunks::chunk(&self.tokenizer_2, pieces)? });
        };
        Ok(WeightedIds {
            chunks_1: Some(prompt_chunks::chunk(&first.tokenizer, pieces)?),
            chunks_2: prompt_chunks::chunk(&self.tokenizer_2, pieces_2)?,
        })
    }

    /// The hidden states of the empty prompt (`bos eos` and padding) through each encoder.
    pub fn empty_hidden(&self, cancel: &CancelToken) -> Result<EmptyHidden> {
        let first = match &self.first {
            Some(f) => {
                let (ids, _) = f.tokenizer.chunk(&[])?;
                Some(as3(run_encoder(&f.encoder, &ids, &[&f.hidden], cancel)?.remove(0), &f.encoder)?)
            }
            None => None,
        };
        let (ids, _) = self.tokenizer_2.chunk(&[])?;
        let second = as3(run_encoder(&self.encoder_2, &ids, &[&self.hidden_2], cancel)?.remove(0), &self.encoder_2)?;
        Ok(EmptyHidden { first, second })
    }

    /// Encode a weighted prompt as `chunks` chunks (at least [`WeightedIds::chunk_count`]): each encoder's chunks
    /// one at a time, weighted, then `empty`'s hidden states for each chunk it lacks (compel's
    /// `pad_conditioning_tensors_to_same_length`), joined along the sequence axis; the encoders joined on the last
    /// axis. Pooled: text_encoder_2's `text_embeds` of its first chunk.
    pub fn encode_weighted(
        &self,
        ids: &WeightedIds,
        chunks: usize,
        empty: &EmptyHidden,
        cancel: &CancelToken,
    ) -> Result<PromptEmbeds> {
        let (h2, pooled) =
            weighted_hidden(&self.encoder_2, &self.hidden_2, &ids.chunks_2, chunks, &empty.second, cancel)?;
        let pooled = pooled
            .ok_or_else(|| Error::Internal("a weighted prompt has no chunk".into()))?
            .into_dimensionality::<Ix2>()
            .map_err(|e| Error::model_invalid(self.encoder_2.path(), format!("text_embeds is not [B, P]: {e}")))?;
        let embeds = match (&self.first, &ids.chunks_1, &empty.first) {
            (Some(first), Some(chunks_1), Some(empty_1)) => {
                let (h1, _) = weighted_hidden(&first.encoder, &first.hidden, chunks_1, chunks, empty_1, cancel)?;
                concatenate(Axis(2), &[h1.view(), h2.view()])
                    .map_err(|e| Error::Internal(format!("concatenating prompt embeddings: {e}")))?
            }
            (None, None, None) => h2,
            _ => return Err(Error::Internal("weighted prompt ids do not fit the text encoders".into())),
        };
        Ok(PromptEmbeds { embeds, pooled })
    }

    /// Encode one prompt, its hidden states from layer `-(clip_skip + 2)` of each encoder (0: SDXL's penultimate).
    pub fn encode(&self, ids: &PromptIds, clip_skip: u32, cancel: &CancelToken) -> Result<PromptEmbeds> {
        let layer = |session: &ModelSession, penultimate: &str| match clip_skip {
            0 => Ok(penultimate.to_string()),
            skip => skipped_output(session, skip),
        };
        let h1 = match &self.first {
            Some(first) => {
                let hidden = layer(&first.encoder, &first.hidden)?;
                Some((run_encoder(&first.encoder, &ids.ids_1, &[&hidden], cancel)?, first))
            }
            None => None,
        };
        let hidden_2 = layer(&self.encoder_2, &self.hidden_2)?;
        let mut out2 = run_encoder(&self.encoder_2, &ids.ids_2, &[&hidden_2, "text_embeds"], cancel)?;
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

/// `chunks` chunks of one encoder's hidden states `[1, 77 · chunks, D]` (its own chunks weighted with
/// [`apply_weights`], then `empty` for the rest), and the pooled output `text_embeds` of its first chunk when the
/// encoder has one (text_encoder_2).
fn weighted_hidden(
    session: &ModelSession,
    hidden: &str,
    ids: &Chunks,
    chunks: usize,
    empty: &Array3<f32>,
    cancel: &CancelToken,
) -> Result<(Array3<f32>, Option<ArrayD<f32>>)> {
    let mut parts = Vec::with_capacity(chunks);
    let mut pooled = None;
    for k in 0..chunks {
        let Some(chunk) = ids.ids.get(k) else {
            parts.push(empty.clone());
            continue;
        };
        let wants_pooled = k == 0 && session.has_output("text_embeds");
        let wanted: &[&str] = if wants_pooled { &[hidden, "text_embeds"] } else { &[hidden] };
        let mut out = run_encoder(session, chunk, wanted, cancel)?;
        if wants_pooled {
            pooled = out.pop();
        }
        let z = as3(out.remove(0), session)?;
        if z.shape() != empty.shape() {
            return Err(Error::model_invalid(
                session.path(),
                format!("a prompt chunk gives hidden states {:?}, the empty prompt {:?}", z.shape(), empty.shape()),
            ));
        }
        parts.push(apply_weights(z, empty, &ids.weights[k]));
    }
    let views: Vec<_> = parts.iter().map(|p| p.view()).collect();
    let joined = concatenate(Axis(1), &views).map_err(|e| Error::Internal(format!("joining prompt chunks: {e}")))?;
    Ok((joined, pooled))
}

/// Each token's weight `w` on one chunk's hidden states `z` `[1, S, D]`: `empty + (z − empty) · w` in float32 at
/// each position whose weight is not 1 (compel's `build_weighted_embedding_tensor`, whose `torch.where` keeps `z`
/// where the weight is 1; ComfyUI's `encode_token_weights`).
pub fn apply_weights(mut z: Array3<f32>, empty: &Array3<f32>, weights: &[f32]) -> Array3<f32> {
    for (t, &w) in weights.iter().enumerate().filter(|(_, &w)| w != 1.0) {
        z.slice_mut(s![0, t, ..]).zip_mut_with(&empty.slice(s![0, t, ..]), |v, &e| *v = e + (*v - e) * w);
    }
    z
}

/// `a` as `[B, S, D]` hidden states of `session`.
fn as3(a: ArrayD<f32>, session: &ModelSession) -> Result<Array3<f32>> {
    a.into_dimensionality::<Ix3>()
        .map_err(|e| Error::model_invalid(session.path(), format!("hidden states are not [B, S, D]: {e}")))
}

fn run_encoder(session: &ModelSession, ids: &[i64], wanted: &[&str], cancel: &CancelToken) -> Result<Vec<ArrayD<f32>>> {
    let spec = session.input("input_ids")?;
    let array = ArrayD::from_shape_vec(vec![1, ids.len()], ids.to_vec())
        .map_err(|e| Error::Internal(format!("token id array: {e}")))?;
    let value = ids_value(array, spec.elem, "text encoder", "input_ids")?;
    session.run(vec![("input_ids".to_string(), value)], wanted, cancel)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_interpolate_from_the_empty_prompt_and_weight_one_keeps_z_bit_for_bit() {
        let z = Array3::from_shape_vec((1, 3, 2), vec![1.0, 2.0, 3.0, 4.0, 0.1, 0.7]).unwrap();
        let empty = Array3::from_shape_vec((1, 3, 2), vec![0.5, 0.5, 1.0, -1.0, 0.3, 0.2]).unwrap();
        let got = apply_weights(z.clone(), &empty, &[1.0, 1.5, 0.5]);
        assert_eq!(got.slice(s![0, 0, ..]).to_vec(), [1.0, 2.0]);
        assert_eq!(got.slice(s![0, 1, ..]).to_vec(), [1.0 + (3.0 - 1.0) * 1.5, -1.0 + (4.0f32 - -1.0) * 1.5]);
        assert_eq!(got.slice(s![0, 2, ..]).to_vec(), [0.3 + (0.1f32 - 0.3) * 0.5, 0.2 + (0.7f32 - 0.2) * 0.5]);
        // Weight 0 gives the empty prompt's states.
        assert_eq!(apply_weights(z, &empty, &[0.0, 0.0, 0.0]), empty);
    }
}
