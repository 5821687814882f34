//! A weighted prompt ([`crate::protocol::prompt_syntax`]) as token chunks for one CLIP encoder, the way compel
//! (`EmbeddingsProvider.get_token_ids_and_expand_weights` with `truncate=False` and `SplitLongTextMode.BRUTAL`) and
//! ComfyUI build them:
//!
//! - each piece of text is tokenized on its own (no bos/eos) and its tokens get the piece's weight (float64 → float32);
//! - the tokens are cut into chunks of `max_length − 2` (75), in order, with no search for a comma or word end
//!   (A1111 moves the tail after a late comma to the next chunk; compel's default looks for a sentence end: both
//!   would change which tokens share a chunk);
//! - each chunk is `bos + tokens + eos`, padded to `max_length` as the tokenizer pads, bos/eos/padding at weight 1;
//! - `BREAK` ends the chunk: the tokens after it start a new one. Every stretch between `BREAK`s gets at least one
//!   chunk (an empty one when it has no tokens), except an empty stretch after the last `BREAK` (A1111 adds no chunk
//!   for it). An empty prompt is one chunk, `bos eos` and padding — the empty prompt's ids.

use crate::error::Result;
use crate::protocol::prompt_syntax::Piece;
use crate::tokenizer::ClipTokenizer;

/// The most chunks a weighted text may take (1500 tokens): every chunk lengthens the sequence each UNet
/// cross-attention reads, so a prompt of megabytes would exhaust memory; a longer text is an error naming its field.
pub const MAX_CHUNKS: usize = 20;

/// A prompt's chunks for one encoder.
#[derive(Debug, Clone, PartialEq)]
pub struct Chunks {
    /// The ids of each chunk (`max_length` each).
    pub ids: Vec<Vec<i64>>,
    /// The weight of each id (`max_length` each; 1 for bos, eos and padding).
    pub weights: Vec<Vec<f32>>,
    /// The prompt's tokens, bos/eos/padding not counted.
    pub tokens: usize,
}

impl Chunks {
    /// Whether any token has a weight other than 1.
    pub fn weighted(&self) -> bool {
        self.weights.iter().flatten().any(|&w| w != 1.0)
    }
}

/// The chunks of the parsed prompt `pieces` for `tokenizer`.
pub fn chunk(tokenizer: &ClipTokenizer, pieces: &[Piece]) -> Result<Chunks> {
    let room = tokenizer.max_length() - 2;
    let mut segments: Vec<Vec<(u32, f32)>> = vec![Vec::new()];
    for piece in pieces {
        match piece {
            Piece::Break => segments.push(Vec::new()),
            Piece::Text { text, weight } => {
                let ids = tokenizer.content_ids(text)?;
                let last = segments.last_mut().expect("starts with one segment");
                last.extend(ids.into_iter().map(|id| (id, *weight as f32)));
            }
        }
    }
    if segments.len() > 1 && segments.last().is_some_and(Vec::is_empty) {
        segments.pop();
    }
    let mut out = Chunks { ids: Vec::new(), weights: Vec::new(), tokens: 0 };
    for segment in &segments {
        out.tokens += segment.len();
        let parts: Vec<&[(u32, f32)]> = if segment.is_empty() { vec![&[]] } else { segment.chunks(room).collect() };
        for part in parts {
            let content: Vec<u32> = part.iter().map(|&(id, _)| id).collect();
            let (ids, offset) = tokenizer.chunk(&content)?;
            let mut weights = vec![1.0f32; ids.len()];
            for (k, &(_, w)) in part.iter().enumerate() {
                weights[offset + k] = w;
            }
            out.ids.push(ids);
            out.weights.push(weights);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::prompt_syntax::parse_attention;
    use std::path::PathBuf;

    fn tokenizer() -> ClipTokenizer {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/clip-vocab-full");
        ClipTokenizer::from_dir(&dir).unwrap()
    }

    fn chunks(text: &str) -> Chunks {
        let tok = tokenizer();
        chunk(&tok, &parse_attention("data.prompt", text).unwrap()).unwrap()
    }

    #[test]
    fn a_short_prompt_is_one_chunk_equal_to_the_plain_ids() {
        let tok = tokenizer();
        let c = chunks("a photograph of an astronaut riding a horse");
        assert_eq!(c.ids, vec![tok.encode("a photograph of an astronaut riding a horse").unwrap().ids]);
        assert_eq!(c.tokens, 8);
        assert!(!c.weighted());
        assert_eq!(chunks("").ids, vec![tok.encode("").unwrap().ids]);
    }

    #[test]
    fn long_prompts_are_cut_every_75_tokens_each_chunk_bos_eos_padded() {
        let tok = tokenizer();
        // "a" is one token: 160 of them are chunks of 75, 75 and 10.
        let c = chunks(&vec!["a"; 160].join(" "));
        assert_eq!((c.ids.len(), c.tokens), (3, 160));
        let a = tok.content_ids("a").unwrap()[0] as i64;
        for (k, n) in [(0, 75), (1, 75), (2, 10)] {
            let ids = &c.ids[k];
            assert_eq!(ids.len(), 77);
            assert_eq!(ids[0], tok.bos_id() as i64);
            assert!(ids[1..=n].iter().all(|&id| id == a), "chunk {k}");
            assert_eq!(ids[n + 1], tok.eos_id() as i64);
            assert!(ids[n + 2..].iter().all(|&id| id == tok.pad_id() as i64));
        }
        // Exactly 75 tokens still fit one chunk.
        assert_eq!(chunks(&vec!["a"; 75].join(" ")).ids.len(), 1);
        assert_eq!(chunks(&vec!["a"; 76].join(" ")).ids.len(), 2);
    }

    #[test]
    fn weights_follow_their_tokens_and_bos_eos_padding_stay_at_one() {
        let c = chunks("a (red:1.5) [cube]");
        let w = &c.weights[0];
        assert_eq!(&w[..5], &[1.0, 1.0, 1.5, (1.0f64 / 1.1) as f32, 1.0]);
        assert!(w[5..].iter().all(|&x| x == 1.0));
        assert!(c.weighted());
        // The weight is the float64 product rounded once to float32.
        let c = chunks("(((house:1.3)))");
        assert_eq!(c.weights[0][1], 1.5730000000000004f64 as f32);
    }

    #[test]
    fn break_starts_a_new_chunk_and_a_trailing_break_adds_none() {
        let tok = tokenizer();
        let c = chunks("a cat BREAK a dog");
        assert_eq!(c.ids, vec![tok.encode("a cat").unwrap().ids, tok.encode("a dog").unwrap().ids]);
        assert_eq!(chunks("a cat BREAK").ids.len(), 1);
        let c = chunks("BREAK a BREAK BREAK b");
        let empty = tok.encode("").unwrap().ids;
        assert_eq!(c.ids, vec![empty.clone(), tok.encode("a").unwrap().ids, empty, tok.encode("b").unwrap().ids]);
        // A stretch longer than 75 tokens before a BREAK takes its own chunks.
        assert_eq!(chunks(&format!("{} BREAK b", vec!["a"; 80].join(" "))).ids.len(), 3);
    }

    #[test]
    fn pieces_are_tokenized_apart_as_a1111_and_compel_do() {
        let tok = tokenizer();
        // "photo" and "graph" as two pieces are two words, not "photograph".
        let c = chunks("photo(graph:1.2)");
        let want: Vec<u32> = [tok.content_ids("photo").unwrap(), tok.content_ids("graph").unwrap()].concat();
        let got: Vec<u32> = c.ids[0][1..1 + want.len()].iter().map(|&id| id as u32).collect();
        assert_eq!(got, want);
        assert_ne!(want, tok.content_ids("photograph").unwrap());
    }
}
