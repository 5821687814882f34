//! `data.prompt_syntax: "weighted"`: A1111's emphasis syntax and prompts longer than 77 tokens, against
//! onnx/make_prompts.py's goldens (compel 2.5.1's per-token-weight API → diffusers' StableDiffusionXLPipeline with
//! the embeddings): embeddings ≤ 1e-5, latents after every step ≤ 1e-4 + 1e-5·|x|, images ±1/255. Each case's image
//! is ≥ 5/255 from diffusers' plain reading of the same text, so ignoring the syntax fails here. The default
//! `"plain"` stays diffusers' reading (goldens.py's long_prompt, truncated with a warning).

use sdxlrt::engine::Engine;
use sdxlrt::pipeline::text::TextEncoders;
use sdxlrt::pipeline::SdxlPipeline;
use sdxlrt::protocol::prompt_syntax::parse_attention;
use sdxlrt::runtime::{CancelToken, SessionConfig};

use crate::util::{check_case, fixtures, options_json, Golden};

fn engine() -> Engine {
    Engine::new(Some(&options_json())).expect("engine")
}

fn pipeline(engine: &Engine) -> SdxlPipeline {
    SdxlPipeline::load(&engine.runtime().env, &fixtures().join("tiny-sdxl"), &SessionConfig::default()).unwrap()
}

/// `text` through the weighted text path alone, both encoders given `text`, padded to `chunks` (its own count when
/// `None`).
fn encode(text: &TextEncoders, prompt: &str, chunks: Option<usize>) -> sdxlrt::pipeline::text::PromptEmbeds {
    let cancel = CancelToken::new();
    let pieces = parse_attention("data.prompt", prompt).unwrap();
    let ids = text.tokenize_weighted(&pieces, &pieces).unwrap();
    let empty = text.empty_hidden(&cancel).unwrap();
    text.encode_weighted(&ids, chunks.unwrap_or(ids.chunk_count()), &empty, &cancel).unwrap()
}

fn flat(a: &ndarray::ArrayD<f32>) -> Vec<f32> {
    a.iter().copied().collect()
}

#[test]
fn weighted_prompt_embeddings_equal_compels_chunked_and_weighted_ones() {
    let engine = engine();
    let p = pipeline(&engine);
    let g = Golden::load("prompts_embeds");
    let prompts: Vec<String> = serde_json::from_str(&g.meta["prompts"]).unwrap();
    assert_eq!(prompts.len(), 5);
    for (k, prompt) in prompts.iter().enumerate() {
        let e = encode(p.text_encoders(), prompt, None);
        let want = g.t(&format!("prompt_embeds_{k}"));
        assert_eq!(e.embeds.shape(), want.shape.as_slice(), "prompt {k} {prompt:?}: shape");
        assert_close!(flat(&e.embeds.into_dyn()), want.f32, 1e-5, 0.0, "prompt {k}: prompt_embeds");
        let want = &g.t(&format!("pooled_prompt_embeds_{k}")).f32;
        assert_close!(flat(&e.pooled.into_dyn()), want, 1e-5, 0.0, "prompt {k}: pooled_prompt_embeds");
    }
}

#[test]
fn a_long_prompt_is_encoded_whole_in_five_chunks_and_matches_diffusers() {
    let engine = engine();
    let g = Golden::load("prompts_long");
    assert_eq!(g.meta["chunks"], "5");
    // The text path: the prompt's 5 chunks, and the short negative prompt padded with empty chunks to 5.
    let p = pipeline(&engine);
    for (key, text) in [("prompt_embeds", &g.meta["prompt"]), ("negative_prompt_embeds", &g.meta["negative_prompt"])] {
        let e = encode(p.text_encoders(), text, Some(5));
        assert_close!(flat(&e.embeds.into_dyn()), g.t(key).f32, 1e-5, 0.0, "{key}");
    }
    let reply = check_case(&engine, "prompts_long", false);
    assert_eq!(reply["warnings"], serde_json::json!([]), "{reply}");
    // The reply says how the prompt was read: 319 tokens (tokenizer/ of the tiny model), 5 chunks; the negative
    // prompt's own tokens.
    let info = &reply["data"]["generated_images"][0]["metadata"]["prompt"];
    assert_eq!((info["syntax"].as_str(), info["chunks"].as_u64()), (Some("weighted"), Some(5)), "{info}");
    assert!(info["tokens"].as_u64().unwrap() > 4 * 75, "{info}");
    assert!(info["negative_tokens"].as_u64().unwrap() < 75, "{info}");
}

#[test]
fn emphasis_weights_above_and_below_one_and_nesting_match_the_interpolation_from_the_empty_prompt() {
    let reply = check_case(&engine(), "prompts_weights", false);
    assert_eq!(reply["warnings"], serde_json::json!([]), "{reply}");
}

#[test]
fn break_starts_a_new_chunk_and_a_missing_negative_prompt_is_zeros_of_that_length() {
    let engine = engine();
    let g = Golden::load("prompts_break");
    assert_eq!((g.meta["chunks"].as_str(), g.meta.get("negative_prompt")), ("2", None));
    check_case(&engine, "prompts_break", false);
    // The batch as one tensor gives the same latents.
    check_case(&engine, "prompts_break", true);
}

#[test]
fn the_refiner_encodes_a_weighted_long_prompt_with_its_one_encoder_as_compel_does() {
    let engine = engine();
    let reply = check_case(&engine, "prompts_refiner", false);
    let info = &reply["data"]["generated_images"][0]["metadata"]["prompt"];
    assert_eq!(info["chunks"].as_u64(), Some(5), "{reply}");
    // The refiner's conditioning alone: its text_encoder_2 chunks, the negative prompt padded to 5 chunks.
    let g = Golden::load("prompts_refiner");
    let refiner =
        SdxlPipeline::load(&engine.runtime().env, &fixtures().join("tiny-sdxl-refiner"), &SessionConfig::default())
            .unwrap();
    for (key, text) in
        [("refiner_prompt_embeds", &g.meta["prompt"]), ("refiner_negative_prompt_embeds", &g.meta["negative_prompt"])]
    {
        let e = encode(refiner.text_encoders(), text, Some(5));
        assert_close!(flat(&e.embeds.into_dyn()), g.t(key).f32, 1e-5, 0.0, "{key}");
    }
}

#[test]
fn plain_syntax_still_truncates_long_prompts_with_a_warning_as_diffusers_does() {
    let reply = check_case(&engine(), "long_prompt", false);
    assert!(reply["data"]["generated_images"][0]["metadata"].get("prompt").is_none(), "{reply}");
    let warnings = reply["warnings"].to_string();
    assert!(warnings.contains("longer than 77 tokens and was truncated"), "{warnings}");
    assert!(warnings.contains("prompt_syntax"), "{warnings}");
}

#[test]
fn a_second_encoder_prompt_longer_than_the_first_pads_the_first_with_empty_chunks() {
    let engine = engine();
    let p = pipeline(&engine);
    let text = p.text_encoders();
    let long = Golden::load("prompts_long").meta["prompt"].clone();
    let cancel = CancelToken::new();
    let short = parse_attention("data.prompt", "a (cat:1.2)").unwrap();
    let ids = text.tokenize_weighted(&short, &parse_attention("data.prompt_2", &long).unwrap()).unwrap();
    assert_eq!(ids.chunk_count(), 5);
    let empty = text.empty_hidden(&cancel).unwrap();
    let e = text.encode_weighted(&ids, 5, &empty, &cancel).unwrap();
    assert_eq!(e.embeds.shape(), [1, 5 * 77, 64]);
    // The first encoder's chunks 2..5 are the empty prompt's states; its first chunk is "a (cat:1.2)" alone.
    let alone = encode(text, "a (cat:1.2)", Some(5));
    let first = |a: &ndarray::Array3<f32>| a.slice(ndarray::s![.., .., ..32]).to_owned();
    assert_eq!(first(&e.embeds), first(&alone.embeds));
}

#[test]
fn weighted_syntax_errors_name_their_field() {
    let engine = engine();
    let g = Golden::load("cfg_neg");
    let run = |edit: &dyn Fn(&mut serde_json::Value)| -> String {
        let mut request: serde_json::Value = serde_json::from_str(&g.request("tiny-sdxl", false)).unwrap();
        edit(&mut request["data"]);
        let outcome = engine.generate(&request.to_string(), &mut crate::util::Sequence::default(), true);
        outcome.error.map(|e| e.to_string()).unwrap_or_default()
    };
    let e = run(&|d| d["prompt_syntax"] = serde_json::json!("a1111"));
    assert!(e.contains("data.prompt_syntax") && e.contains("a1111"), "{e}");
    let e = run(&|d| {
        d["prompt_syntax"] = serde_json::json!("weighted");
        d["negative_prompt"] = serde_json::json!("(blurry:1.2.3)");
    });
    assert!(e.contains("data.negative_prompt") && e.contains("1.2.3"), "{e}");
    // More than 20 chunks (1500 tokens) is an error naming the text.
    let e = run(&|d| {
        d["prompt_syntax"] = serde_json::json!("weighted");
        d["negative_prompt_2"] = serde_json::json!(vec!["a"; 20 * 75 + 1].join(" "));
    });
    assert!(e.contains("data.negative_prompt_2") && e.contains("21 chunks"), "{e}");
    // Unbalanced brackets are no error (A1111 weights the rest, or reads a stray bracket as text).
    let e = run(&|d| {
        d["prompt_syntax"] = serde_json::json!("weighted");
        d["prompt"] = serde_json::json!("a (cat] on a [mat");
        d["hyperparameters"]["num_inference_steps"] = serde_json::json!(1);
    });
    assert_eq!(e, "");
}
