//! LoRA merged at load time vs diffusers' `load_lora_weights` + `fuse_lora` (goldens from onnx/make_lora.py):
//! kohya (SGM names, LoCon convs, alpha) and PEFT files with the same factors, two LoRAs at 0.7 / -0.3, separate
//! UNet / text-encoder weights, the constant-folded export, PEFT bias changes; weight 0 is bit-identical to no
//! LoRA; both ways an override reaches ONNX Runtime change the output; formats diffusers does not read (LyCORIS
//! Tucker, full and kohya DoRA) against the plain factors they equal; every error path.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use sdxlrt::engine::Engine;
use sdxlrt::lora::formats::Component;
use sdxlrt::lora::{LoraFileCache, LoraSet, LoraSpec};
use sdxlrt::pipeline::{Progress, ProgressEvent, SdxlPipeline};
use sdxlrt::runtime::merged_data::MergedData;
use sdxlrt::runtime::onnx_proto::OnnxModel;
use sdxlrt::runtime::{CancelToken, ModelSession, Placement, SessionConfig};
use serde_json::{json, Value};

use crate::util::{copy_dir, fixtures, options_json, Golden};

#[derive(Default)]
struct Capture {
    steps: BTreeMap<usize, Vec<f32>>,
}

impl Progress for Capture {
    fn report(&mut self, _: &ProgressEvent<'_>) -> bool {
        true
    }
    fn on_latents(&mut self, _image: u32, step: Option<usize>, latents: ndarray::ArrayViewD<'_, f32>) {
        if let Some(i) = step {
            self.steps.insert(i, latents.iter().copied().collect());
        }
    }
}

fn engine() -> Engine {
    Engine::new(Some(&options_json())).expect("engine")
}

/// The golden's request for `model` with its `loras` metadata as `data.lora.models`.
fn request(g: &Golden, model: &str) -> (String, Value) {
    let loras: Vec<Value> = serde_json::from_str(&g.meta["loras"]).unwrap();
    let models: Vec<Value> = loras
        .iter()
        .map(|l| {
            let mut m = json!({"name": l["file"], "weight": l["weight"]});
            for k in ["unet_weight", "text_encoder_weight"] {
                if let Some(v) = l.get(k) {
                    m[k] = v.clone();
                }
            }
            m
        })
        .collect();
    let mut req: Value = serde_json::from_str(&g.request(model, true)).unwrap();
    req["data"]["lora"] = json!({"enabled": true, "models": models});
    (req.to_string(), Value::Array(models))
}

/// Run one LoRA golden through the engine; check every step's latents and the image. Returns the response.
fn check_case(engine: &Engine, model: &str, case: &str) -> Value {
    let g = Golden::load(case);
    let (req, models) = request(&g, model);
    let mut capture = Capture::default();
    let outcome = engine.generate(&req, &mut capture, true);
    assert!(outcome.error.is_none(), "{case}: {:?}\n{}", outcome.error, outcome.response_json);
    let steps: usize = g.meta("steps");
    let mut worst = 0f32;
    for i in 0..steps {
        let got = &capture.steps[&i];
        worst = worst.max(assert_close!(
            got,
            g.t(&format!("latents_step_{i}")).f32,
            1e-4,
            1e-5,
            "{case} ({model}): latents after step {i}"
        ));
    }
    let want = &g.t("image_u8").u8;
    let got = &outcome.images[0].data;
    let image_worst = got.iter().zip(want).map(|(a, b)| (*a as i16 - *b as i16).abs()).max().unwrap();
    assert!(image_worst <= 1, "{case} ({model}): image differs from diffusers by {image_worst}/255");
    eprintln!("{case} ({model}): max |latents - diffusers| {worst:.2e}, image {image_worst}/255");
    let resp: Value = serde_json::from_str(&outcome.response_json).unwrap();
    // The metadata lists the LoRAs as requested.
    let listed = &resp["data"]["generated_images"][0]["metadata"]["loras"];
    let names: Vec<&str> = listed.as_array().unwrap().iter().map(|l| l["name"].as_str().unwrap()).collect();
    let want_names: Vec<&str> = models.as_array().unwrap().iter().map(|m| m["name"].as_str().unwrap()).collect();
    assert_eq!(names, want_names, "{case}");
    resp
}

#[test]
fn kohya_and_peft_files_match_diffusers_fuse_lora() {
    let engine = engine();
    let resp = check_case(&engine, "tiny-sdxl", "lora_kohya");
    assert_eq!(resp["data"]["generated_images"][0]["metadata"]["loras"], json!([{"name": "kohya_a", "weight": 1.0}]));
    assert!(resp["warnings"].as_array().unwrap().is_empty(), "{}", resp["warnings"]);
    check_case(&engine, "tiny-sdxl", "lora_peft");
}

#[test]
fn dora_in_peft_format_matches_diffusers_fuse_lora() {
    // peft_dora at weight 0.8: PEFT rescales each output channel to its magnitude over the norm of base + 0.8 ΔW.
    let engine = engine();
    let resp = check_case(&engine, "tiny-sdxl", "lora_dora");
    assert!(resp["warnings"].as_array().unwrap().is_empty(), "every DoRA key applied: {}", resp["warnings"]);
    check_case(&engine, "tiny-sdxl-folded", "lora_dora"); // transposed weights: norms along the other axis
}

#[test]
fn peft_bias_changes_match_diffusers_fuse_lora() {
    // peft_bias (PEFT lora_bias=True) at 0.9: each module's lora_B.bias is added to its bias at weight · alpha / r.
    let engine = engine();
    for model in ["tiny-sdxl", "tiny-sdxl-folded"] {
        let resp = check_case(&engine, model, "lora_bias");
        assert!(resp["warnings"].as_array().unwrap().is_empty(), "every bias key applied: {}", resp["warnings"]);
    }
    // The same file without its bias changes gives another image: a dropped bias change fails the check above.
    let bytes = std::fs::read(fixtures().join("loras/peft_bias.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let weights: Vec<(String, Vec<usize>, Vec<f32>)> = st
        .tensors()
        .into_iter()
        .filter(|(k, _)| !k.ends_with(".bias"))
        .map(|(k, t)| {
            let values = t.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
            (k, t.shape().to_vec(), values)
        })
        .collect();
    let dir = temp_root(&[("peft_bias.safetensors", safetensors_file(&weights))]);
    let engine = Engine::new(Some(&json!({"models_root": dir.path(), "intra_op_threads": 1}).to_string())).unwrap();
    let g = Golden::load("lora_bias");
    let outcome = engine.generate(&request(&g, "tiny-sdxl").0, &mut Capture::default(), true);
    let want = &g.t("image_u8").u8;
    let worst = outcome.images[0].data.iter().zip(want).map(|(a, b)| (*a as i16 - *b as i16).abs()).max().unwrap();
    assert!(worst > 1, "without its bias changes the LoRA's image moves by only {worst}/255");
}

#[test]
fn two_loras_and_split_weights_match_diffusers() {
    let engine = engine();
    check_case(&engine, "tiny-sdxl", "lora_two");
    let resp = check_case(&engine, "tiny-sdxl", "lora_split");
    assert_eq!(
        resp["data"]["generated_images"][0]["metadata"]["loras"],
        json!([{"name": "kohya_a", "weight": 1.0, "unet_weight": 0.5, "text_encoder_weight": 1.5}])
    );
}

#[test]
fn an_a1111_lora_tag_in_the_prompt_is_the_same_as_the_lora_field() {
    // lora_split is kohya_a with text-encoder weight 1.5 and UNet weight 0.5: A1111's <lora:kohya_a:1.5:0.5>.
    let engine = engine();
    let by_field = check_case(&engine, "tiny-sdxl", "lora_split");
    let g = Golden::load("lora_split");
    let mut req: Value = serde_json::from_str(&g.request("tiny-sdxl", true)).unwrap();
    let prompt = req["data"]["prompt"].as_str().unwrap().to_string();
    req["data"]["prompt"] = json!(format!("{prompt} <lora:kohya_a:1.5:0.5>"));
    let outcome = engine.generate(&req.to_string(), &mut Capture::default(), true);
    let by_tag: Value = serde_json::from_str(&outcome.response_json).unwrap();
    let image =
        |r: &Value| crate::util::pixels_of_image_data(r["data"]["generated_images"][0]["image_data"].as_str().unwrap());
    assert!(image(&by_tag) == image(&by_field), "the tag and the field give different images");
    assert_eq!(
        by_tag["data"]["generated_images"][0]["metadata"]["loras"],
        json!([{"name": "kohya_a", "weight": 1.5, "unet_weight": 0.5}])
    );
}

#[test]
fn folded_export_with_the_same_lora_matches_diffusers() {
    let engine = engine();
    check_case(&engine, "tiny-sdxl-folded", "lora_kohya");
    check_case(&engine, "tiny-sdxl-folded", "lora_two");
}

#[test]
fn fused_attention_export_with_the_same_lora_matches_diffusers() {
    // --fused-attention keeps the Q/K/V/out projection names, so LoRA keys still find their targets.
    let (_root, options) = crate::util::fused_attention_root();
    let engine = Engine::new(Some(&options)).expect("engine");
    let resp = check_case(&engine, "tiny-sdxl-fused", "lora_kohya");
    assert!(resp["warnings"].as_array().unwrap().is_empty(), "{}", resp["warnings"]);
}

#[test]
fn the_lora_goldens_differ_from_the_base_model() {
    // Guards the tests above: a dropped override would have to move the image by this much to pass.
    let engine = engine();
    let g = Golden::load("lora_kohya");
    let outcome = engine.generate(&g.request("tiny-sdxl", true), &mut Capture::default(), true);
    let diff = outcome.images[0].data.iter().zip(&g.t("image_u8").u8).map(|(a, b)| (*a as i16 - *b as i16).abs()).max();
    assert!(diff.unwrap() > 40, "the LoRA changes the image by only {diff:?}/255");
}

#[test]
fn weight_zero_is_bit_identical_to_no_lora() {
    let engine = engine();
    let g = Golden::load("lora_kohya");
    let base = engine.generate(&g.request("tiny-sdxl", true), &mut Capture::default(), true);
    let mut req: Value = serde_json::from_str(&g.request("tiny-sdxl", true)).unwrap();
    req["data"]["lora"] = json!({"models": [{"name": "kohya_a", "weight": 0.0}, {"name": "peft_b", "weight": 0}]});
    let zero = engine.generate(&req.to_string(), &mut Capture::default(), true);
    assert!(zero.error.is_none(), "{}", zero.response_json);
    assert_eq!(base.images[0].data, zero.images[0].data);
}

fn spec(name: &str, weight: f32) -> LoraSpec {
    LoraSpec {
        name: name.into(),
        path: fixtures().join("loras").join(format!("{name}.safetensors")),
        field: "data.lora.models[0].name".into(),
        weight,
        unet_weight: weight,
        text_encoder_weight: weight,
    }
}

#[test]
fn changing_the_lora_set_rebuilds_only_the_graphs_it_touches() {
    let engine = engine();
    let env = &engine.runtime().env;
    let config = SessionConfig { intra_op_threads: Some(1), ..Default::default() };
    let root = fixtures().join("tiny-sdxl");
    let cache = LoraFileCache::default();
    let base = SdxlPipeline::load(env, &root, &config).unwrap();
    // peft_b patches the UNet and text_encoder_2 only.
    let b = LoraSet::load(vec![spec("peft_b", 0.5)], &cache).unwrap();
    let with_b = SdxlPipeline::load_variant(env, &root, &config, &b, None, Some(&base)).unwrap();
    assert!(with_b.shares_graph(&base, Component::TextEncoder));
    assert!(!with_b.shares_graph(&base, Component::TextEncoder2));
    assert!(!with_b.shares_graph(&base, Component::Unet));
    // The same set again shares everything; a different weight rebuilds the touched graphs.
    let again = SdxlPipeline::load_variant(env, &root, &config, &b, None, Some(&with_b)).unwrap();
    for c in Component::ALL {
        assert!(again.shares_graph(&with_b, c), "{c:?}");
    }
    let b2 = LoraSet::load(vec![spec("peft_b", 0.25)], &cache).unwrap();
    let other = SdxlPipeline::load_variant(env, &root, &config, &b2, None, Some(&with_b)).unwrap();
    assert!(!other.shares_graph(&with_b, Component::Unet));
    assert!(other.shares_graph(&with_b, Component::TextEncoder));
    // Weight 0 gives the base sessions themselves.
    let zero = LoraSet::load(vec![spec("kohya_a", 0.0)], &cache).unwrap();
    let z = SdxlPipeline::load_variant(env, &root, &config, &zero, None, Some(&base)).unwrap();
    for c in Component::ALL {
        assert!(z.shares_graph(&base, c), "{c:?}");
    }
    assert!(b.cache_key() != b2.cache_key() && b.cache_key() != 0 && LoraSet::empty().cache_key() == 0);
}

/// Run the tiny UNet once on fixed inputs.
fn unet_out(session: &ModelSession) -> Vec<f32> {
    use sdxlrt::runtime::tensor::float_value;
    let arr = |shape: &[usize], seed: f32| {
        let n: usize = shape.iter().product();
        ndarray::ArrayD::from_shape_vec(shape.to_vec(), (0..n).map(|i| (i as f32 * 0.37 + seed).sin()).collect())
            .unwrap()
    };
    let f = sdxlrt::runtime::tensor::Elem::F32;
    let inputs = vec![
        ("sample".to_string(), float_value(arr(&[1, 4, 8, 8], 0.1), f, "unet", "sample").unwrap()),
        ("timestep".to_string(), float_value(arr(&[], 0.5).mapv(|_| 500.0), f, "unet", "timestep").unwrap()),
        ("encoder_hidden_states".to_string(), float_value(arr(&[1, 77, 64], 0.2), f, "unet", "ehs").unwrap()),
        ("text_embeds".to_string(), float_value(arr(&[1, 32], 0.3), f, "unet", "te").unwrap()),
        ("time_ids".to_string(), float_value(arr(&[1, 6], 0.4).mapv(|_| 64.0), f, "unet", "ti").unwrap()),
    ];
    session.run(inputs, &["out_sample"], &CancelToken::new()).unwrap().remove(0).iter().copied().collect()
}

#[test]
fn both_override_routes_reach_onnx_runtime() {
    // External-data initializers are written to a temporary external-data file (beside hard links of the model's
    // data) as they are merged (default) or, where that folder cannot be made, inlined into the in-memory model
    // or, past the size limit, passed as AddExternalInitializers. All must give the same output, different from
    // the base model's, leave no temporary files and never touch the model's folder.
    let engine = engine();
    let env = &engine.runtime().env;
    let config = SessionConfig { intra_op_threads: Some(1), ..Default::default() };
    let set = LoraSet::load(vec![spec("kohya_a", 1.0)], &LoraFileCache::default()).unwrap();
    let path = fixtures().join("tiny-sdxl/unet/model.onnx");
    let listing = |dir: &Path| -> Vec<(std::ffi::OsString, u64)> {
        let mut v: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap())
            .map(|e| (e.file_name(), e.metadata().unwrap().len()))
            .collect();
        v.sort();
        v
    };
    let model_folder = listing(path.parent().unwrap());
    let base = unet_out(&ModelSession::load(env, &path, "unet", &config).unwrap());
    let scratch = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap(); // the repository's filesystem
    let mut outs = Vec::new();
    let missing = scratch.path().join("missing/folder");
    for (limit, parent, to_file) in
        [(u64::MAX, scratch.path().to_path_buf(), true), (u64::MAX, missing.clone(), false), (0, missing, false)]
    {
        let parent = Some(parent);
        let placement = Placement { max_inline_bytes: limit, scratch_parent: parent };
        let plan = set.plan_graph(OnnxModel::read(&path).unwrap(), Component::Unet, None, &placement).unwrap();
        let o = plan.overrides.unwrap();
        let model = o.model();
        let held_external =
            (0..model.initializers.len()).filter(|&i| model.initializers[i].is_external() && o.held_value(i).is_some());
        let (held_external, written) = (held_external.count(), o.written_to_file());
        assert!(held_external + written > 50, "the LoRA patches {} external-data weights", held_external + written);
        if to_file {
            assert_eq!(held_external, 0, "external-data weights went to the file as they were merged, none held");
        } else {
            assert_eq!(written, 0, "nothing is written without a temporary folder");
        }
        outs.push(unet_out(&ModelSession::load_with_overrides(env, "unet", &config, o).unwrap()));
        assert!(listing(scratch.path()).is_empty(), "temporary files left: {:?}", listing(scratch.path()));
    }
    let change = base.iter().zip(&outs[0]).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(change > 1e-2, "the LoRA changed the UNet output by only {change}");
    assert_close!(outs[1], outs[0], 1e-5, 1e-5, "inlined vs temporary external-data file");
    assert_close!(outs[2], outs[0], 1e-5, 1e-5, "AddExternalInitializers vs temporary external-data file");
    assert_eq!(listing(path.parent().unwrap()), model_folder, "the model's folder is untouched");
}

#[test]
fn merged_weights_file_links_the_model_data_and_vanishes_on_drop() {
    let path = fixtures().join("tiny-sdxl/unet/model.onnx");
    let model = OnnxModel::read(&path).unwrap();
    let parent = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let data = MergedData::create(&model, &[parent.path().to_path_buf()]).expect("same filesystem: hard links work");
    let folder = data.folder().to_path_buf();
    let link = folder.join("model.onnx_data");
    assert_eq!(std::fs::read(&link).unwrap(), std::fs::read(path.with_file_name("model.onnx_data")).unwrap());
    let (_file, placed) = data.reserve(&[(3, 10), (7, 70_000)]).unwrap();
    assert_eq!((placed[&3].offset, placed[&3].length), (0, 10));
    assert_eq!((placed[&7].offset, placed[&7].length), (65536, 70_000), "offsets are 64 KiB aligned");
    let file = folder.join(&placed[&3].location);
    assert_eq!(std::fs::metadata(&file).unwrap().len(), 65536 + 70_000, "the file has its full length");
    drop(data);
    assert!(!folder.exists(), "the temporary folder is removed");
    assert!(path.with_file_name("model.onnx_data").is_file(), "removing the link leaves the model's data");
}

#[test]
fn merged_weights_go_to_the_model_folder_when_the_temp_folder_cannot_take_them() {
    // (a temp folder on another filesystem cannot hold hard links to the model's data: tmpfs, a container's overlay)
    let root = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let model_dir = root.path().join("tiny-sdxl");
    copy_dir(&fixtures().join("tiny-sdxl"), &model_dir);
    let listing = |d: &Path| {
        let mut v: Vec<_> = std::fs::read_dir(d).unwrap().map(|e| e.unwrap().file_name()).collect();
        v.sort();
        v
    };
    let before = listing(&model_dir);
    let model = OnnxModel::read(&model_dir.join("unet/model.onnx")).unwrap();
    let parents = MergedData::default_parents(&model);
    assert_eq!(parents, vec![std::env::temp_dir(), model_dir.clone()], "the temp folder first, then the model's");
    let unusable = root.path().join("no/such/folder");
    let data = MergedData::create(&model, &[unusable, parents[1].clone()]).expect("made in the model's folder");
    assert_eq!(data.folder().parent().unwrap(), model_dir);
    assert!(data.folder().file_name().unwrap().to_string_lossy().starts_with(".sdxlrt-merged-"), "a hidden folder");
    assert!(data.folder().join("model.onnx_data").is_file(), "the model's data linked beside the merged weights");
    drop(data);
    assert_eq!(listing(&model_dir), before, "nothing is left in the model's folder");
}

// ---------------------------------------------------------------------------------------------------------------
// error paths and warnings

/// A models_root in a temp folder: copies of tiny-sdxl and the fixture LoRAs, plus the given files in `loras/`.
fn temp_root(files: &[(&str, Vec<u8>)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixtures().join("tiny-sdxl"), &dir.path().join("tiny-sdxl"));
    copy_dir(&fixtures().join("loras"), &dir.path().join("loras"));
    for (name, bytes) in files {
        std::fs::write(dir.path().join("loras").join(name), bytes).unwrap();
    }
    dir
}

/// A float32 `.safetensors` file of (key, shape, values).
fn safetensors_file<K: AsRef<str>>(tensors: &[(K, Vec<usize>, Vec<f32>)]) -> Vec<u8> {
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(k, s, d)| (k.as_ref().to_string(), s.clone(), d.iter().flat_map(|v| v.to_le_bytes()).collect()))
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = bytes
        .iter()
        .map(|(k, s, b)| {
            (k.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b).unwrap())
        })
        .collect();
    safetensors::tensor::serialize(views, None).unwrap()
}

/// Small deterministic test values in [-0.4, 0.4], a different sequence per seed.
fn ramp(seed: usize, n: usize) -> Vec<f32> {
    (0..n).map(|i| (((i * 7 + seed * 13) % 17) as f32 - 8.0) * 0.05).collect()
}

/// The pixels of the image `generate` makes with `loras`, which must apply without a warning (the PNGs differ in
/// their embedded parameters, which name the LoRAs).
fn image_of(root: &Path, loras: Value) -> Vec<u8> {
    let resp = generate(root, loras);
    assert!(resp["warnings"].as_array().is_none_or(|w| w.is_empty()), "{}", resp["warnings"]);
    crate::util::pixels_of_image_data(resp["data"]["generated_images"][0]["image_data"].as_str().unwrap())
}

fn generate(root: &Path, loras: Value) -> Value {
    let engine = Engine::new(Some(&json!({"models_root": root, "intra_op_threads": 1}).to_string())).unwrap();
    let req = json!({"prompt": "a cat", "models": {"base": "tiny-sdxl"}, "dimensions": {"width": 64, "height": 64},
                     "hyperparameters": {"num_inference_steps": 1, "seed": 1}, "lora": {"models": loras}});
    let outcome = engine.generate(&req.to_string(), &mut Capture::default(), false);
    serde_json::from_str(&outcome.response_json).unwrap()
}

fn expect_error(resp: &Value, code: &str, needles: &[&str]) {
    assert_eq!(resp["error_code"], code, "{resp}");
    let msg = resp["error"].as_str().unwrap();
    for n in needles {
        assert!(msg.contains(n), "error {msg:?} should mention {n:?}");
    }
}

const Q: &str = "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q";

#[test]
fn missing_escaping_and_outside_files_are_errors_naming_the_field() {
    let outside = tempfile::NamedTempFile::new().unwrap();
    let dir = temp_root(&[]);
    let root = dir.path();
    let cases = [
        (json!([{"name": "nope"}]), "data.lora.models[0].name", "does not exist"),
        (json!([{"name": "kohya_a"}, {"name": "../tiny-sdxl/model_index.json"}]), "data.lora.models[1].name", ".."),
        (json!([{"name": outside.path()}]), "data.lora.models[0].name", "outside models_root"),
    ];
    for (loras, field, hint) in cases {
        let resp = generate(root, loras);
        expect_error(&resp, "invalid_request", &[field, hint]);
    }
}

#[test]
fn corrupt_unmatched_and_misshapen_files_are_clear_errors() {
    let good = std::fs::read(fixtures().join("loras/peft_b.safetensors")).unwrap();
    let truncated = good[..good.len() - 1000].to_vec();
    let sd15 = safetensors_file(&[
        ("lora_unet_foo_bar.lora_down.weight", vec![2, 8], vec![0.1; 16]),
        ("lora_unet_foo_bar.lora_up.weight", vec![8, 2], vec![0.1; 16]),
    ]);
    let misshapen = safetensors_file(&[
        (&format!("{Q}.lora_A.weight"), vec![2, 32], vec![0.1; 64]),
        (&format!("{Q}.lora_B.weight"), vec![16, 2], vec![0.1; 32]),
    ]);
    let conv = "lora_unet_input_blocks_1_0_in_layers_2";
    let tucker_misshapen = safetensors_file(&[
        (&format!("{conv}.lora_down.weight"), vec![2, 16, 1, 1], vec![0.1; 32]),
        (&format!("{conv}.lora_mid.weight"), vec![2, 3, 3, 3], vec![0.1; 54]),
        (&format!("{conv}.lora_up.weight"), vec![16, 2, 1, 1], vec![0.1; 32]),
    ]);
    let mut loha = vec![(format!("{conv}.hada_t1"), vec![2, 2, 3], vec![0.1; 12])];
    for n in 1..=2 {
        loha.push((format!("{conv}.hada_w{n}_a"), vec![2, 16], vec![0.1; 32]));
        loha.push((format!("{conv}.hada_w{n}_b"), vec![2, 16], vec![0.1; 32]));
    }
    let dir = temp_root(&[
        ("truncated.safetensors", truncated),
        ("garbage.safetensors", b"definitely not safetensors".to_vec()),
        ("sd15.safetensors", sd15),
        ("misshapen.safetensors", misshapen),
        ("tucker_misshapen.safetensors", tucker_misshapen),
        ("tucker_loha_misshapen.safetensors", safetensors_file(&loha)),
    ]);
    let root = dir.path();
    expect_error(&generate(root, json!([{"name": "truncated"}])), "model_invalid", &["truncated.safetensors"]);
    expect_error(&generate(root, json!([{"name": "garbage"}])), "model_invalid", &["garbage.safetensors"]);
    expect_error(
        &generate(root, json!([{"name": "kohya_a"}, {"name": "sd15"}])),
        "invalid_request",
        &["data.lora.models[1].name", "no tensor", "sd15.safetensors"],
    );
    expect_error(
        &generate(root, json!([{"name": "misshapen"}])),
        "model_invalid",
        &["misshapen.safetensors", "attn1.to_q"],
    );
    expect_error(
        &generate(root, json!([{"name": "tucker_misshapen"}])),
        "model_invalid",
        &["tucker_misshapen.safetensors", "in_layers_2", "lora_mid [2, 3, 3, 3]"],
    );
    expect_error(
        &generate(root, json!([{"name": "tucker_loha_misshapen"}])),
        "model_invalid",
        &["tucker_loha_misshapen.safetensors", "in_layers_2", "hada_t1 [2, 2, 3]"],
    );
}

#[test]
fn a_tucker_locon_merges_like_the_plain_locon_it_factors() {
    // LyCORIS Tucker LoCon on a 3×3 conv: ΔW[o, i, y, x] = Σ_{n,m} up[o, n] · mid[n, m, y, x] · down[m, i]
    // (A1111's rebuild_cp_decomposition). The same ΔW written as a plain LoCon must give the same image.
    let (r, c) = (2usize, 16usize);
    let (down, mid, up) = (ramp(1, r * c), ramp(2, r * r * 9), ramp(3, c * r));
    let mut folded = vec![0f32; r * c * 9];
    for n in 0..r {
        for i in 0..c {
            for yx in 0..9 {
                folded[(n * c + i) * 9 + yx] = (0..r).map(|m| mid[(n * r + m) * 9 + yx] * down[m * c + i]).sum();
            }
        }
    }
    let name = "lora_unet_input_blocks_1_0_in_layers_2";
    let key = |part: &str| format!("{name}.{part}");
    let tucker = safetensors_file(&[
        (&key("lora_down.weight"), vec![r, c, 1, 1], down),
        (&key("lora_mid.weight"), vec![r, r, 3, 3], mid),
        (&key("lora_up.weight"), vec![c, r, 1, 1], up.clone()),
        (&key("alpha"), vec![], vec![1.0]),
    ]);
    let plain = safetensors_file(&[
        (&key("lora_down.weight"), vec![r, c, 3, 3], folded),
        (&key("lora_up.weight"), vec![c, r, 1, 1], up),
        (&key("alpha"), vec![], vec![1.0]),
    ]);
    let dir = temp_root(&[("tucker.safetensors", tucker), ("plain.safetensors", plain)]);
    let image = |loras: Value| image_of(dir.path(), loras);
    let with_tucker = image(json!([{"name": "tucker", "weight": 1.0}]));
    assert!(with_tucker == image(json!([{"name": "plain", "weight": 1.0}])), "Tucker and plain LoCon differ");
    assert!(with_tucker != image(json!([])), "the Tucker LoCon changed nothing");
}

#[test]
fn a_lycoris_full_module_adds_its_diff_and_diff_b_like_the_peft_module_they_equal() {
    // LyCORIS full (A1111's network_full): W += weight · diff, b += weight · diff_b, no alpha. The same change as
    // PEFT factors: lora_A = diff, lora_B = identity, lora_B.bias = diff_b (scale 1, no alpha): identical images.
    let c = 16usize;
    let (diff, diff_b) = (ramp(1, c * c * 9), ramp(2, c));
    let name = "lora_unet_input_blocks_1_0_in_layers_2";
    let peft = "unet.down_blocks.0.resnets.0.conv1";
    let identity: Vec<f32> = (0..c * c).map(|e| if e / c == e % c { 1.0 } else { 0.0 }).collect();
    let full = |weight: bool, bias: bool| {
        let mut tensors = Vec::new();
        if weight {
            tensors.push((format!("{name}.diff"), vec![c, c, 3, 3], diff.clone()));
        }
        if bias {
            tensors.push((format!("{name}.diff_b"), vec![c], diff_b.clone()));
        }
        safetensors_file(&tensors)
    };
    let factors = safetensors_file(&[
        (&format!("{peft}.lora_A.weight"), vec![c, c, 3, 3], diff.clone()),
        (&format!("{peft}.lora_B.weight"), vec![c, c, 1, 1], identity),
        (&format!("{peft}.lora_B.bias"), vec![c], diff_b.clone()),
    ]);
    let dir = temp_root(&[
        ("full.safetensors", full(true, true)),
        ("weight_only.safetensors", full(true, false)),
        ("bias_only.safetensors", full(false, true)),
        ("factors.safetensors", factors),
    ]);
    let image = |loras: Value| image_of(dir.path(), loras);
    let lora = |name: &str, weight: f32| image(json!([{"name": name, "weight": weight}]));
    let with_full = lora("full", 0.7);
    assert!(with_full == lora("factors", 0.7), "the full module and its PEFT factors differ");
    let none = image(json!([]));
    for (part, alone) in [("diff", lora("weight_only", 0.7)), ("diff_b", lora("bias_only", 0.7))] {
        assert!(alone != none, "{part} alone changed nothing");
        assert!(alone != with_full, "{part} alone gives the image of diff and diff_b together");
    }
    assert!(lora("full", 0.0) == none, "weight 0 must be the image without LoRA");
}

#[test]
fn an_alpha_scales_a_peft_bias_change_like_its_matrices() {
    // PEFT merges lora_B.bias at weight · alpha / r: with alpha = r / 2 and lora_B (matrix and bias) doubled, the
    // change is the same to the bit (powers of two); a bias added without alpha / r would be twice as large.
    let (r, c) = (2usize, 16usize);
    let scaled = |seed: usize, n: usize, gain: f32| -> Vec<f32> { ramp(seed, n).iter().map(|v| v * gain).collect() };
    let m = "unet.down_blocks.0.resnets.0.conv1";
    let file = |gain: f32, alpha: Option<f32>| {
        let mut tensors = vec![
            (format!("{m}.lora_A.weight"), vec![r, c, 3, 3], scaled(1, r * c * 9, 1.0)),
            (format!("{m}.lora_B.weight"), vec![c, r, 1, 1], scaled(2, c * r, gain)),
            (format!("{m}.lora_B.bias"), vec![c], scaled(3, c, 4.0 * gain)),
        ];
        tensors.extend(alpha.map(|a| (format!("{m}.alpha"), vec![], vec![a])));
        safetensors_file(&tensors)
    };
    let dir = temp_root(&[("plain.safetensors", file(1.0, None)), ("halved.safetensors", file(2.0, Some(1.0)))]);
    let image = |name: &str| image_of(dir.path(), json!([{"name": name, "weight": 1.0}]));
    assert!(image("plain") == image("halved"), "alpha / r must scale lora_B.bias as it scales lora_B");
}

#[test]
fn lycoris_norm_modules_change_the_norm_layers_as_editing_their_values_does() {
    // LyCORIS train_norm (A1111's network_norm): scale += weight · w_norm, shift += weight · b_norm, on a resnet's
    // GroupNorm and a transformer's LayerNorm (SGM names). The same change written into a copy of the model's
    // values gives the same image to the bit; the folded export (GroupNorm scale and shift as renamed [C, 1, 1]
    // constants) gives it within 1/255.
    let norms = [
        ("lora_unet_input_blocks_1_0_in_layers_0", "down_blocks.0.resnets.0.norm1", 16usize),
        (
            "lora_unet_input_blocks_4_1_transformer_blocks_0_norm1",
            "down_blocks.1.attentions.0.transformer_blocks.0.norm1",
            32,
        ),
    ];
    let mut tensors = Vec::new();
    for (i, (kohya, _, c)) in norms.iter().enumerate() {
        tensors.push((format!("{kohya}.w_norm"), vec![*c], ramp(2 * i + 1, *c)));
        tensors.push((format!("{kohya}.b_norm"), vec![*c], ramp(2 * i + 2, *c)));
    }
    let dir = temp_root(&[("norms.safetensors", safetensors_file(&tensors))]);
    copy_dir(&fixtures().join("tiny-sdxl-folded"), &dir.path().join("tiny-sdxl-folded"));
    // tiny-sdxl with the changes written into its UNet at weight 0.6, as the merge computes them (f32, one fused
    // multiply-add per value).
    let weight = 0.6f32;
    copy_dir(&fixtures().join("tiny-sdxl"), &dir.path().join("edited"));
    let unet_path = dir.path().join("edited/unet/model.onnx");
    let unet = OnnxModel::read(&unet_path).unwrap();
    let mut edit = sdxlrt::runtime::onnx_proto::edit::Edit::default();
    for (i, (_, module, c)) in norms.iter().enumerate() {
        for (j, part) in ["weight", "bias"].iter().enumerate() {
            let index = unet.initializer_index(&format!("{module}.{part}")).unwrap();
            let change = ramp(2 * i + 1 + j, *c);
            let new: Vec<f32> =
                unet.read_f32(index).unwrap().iter().zip(&change).map(|(w, d)| weight.mul_add(*d, *w)).collect();
            edit.replace
                .insert(index, sdxlrt::runtime::onnx_proto::encode_floats(&new, unet.initializers[index].data_type));
        }
    }
    std::fs::write(&unet_path, unet.edited(&edit).unwrap()).unwrap();
    let pixels = |model: &str, loras: Value| -> Vec<u8> {
        let engine = Engine::new(Some(&json!({"models_root": dir.path(), "intra_op_threads": 1}).to_string())).unwrap();
        let req = json!({"prompt": "a cat", "models": {"base": model}, "dimensions": {"width": 64, "height": 64},
                         "hyperparameters": {"num_inference_steps": 2, "seed": 1}, "lora": {"models": loras}});
        let outcome = engine.generate(&req.to_string(), &mut Capture::default(), true);
        let resp: Value = serde_json::from_str(&outcome.response_json).unwrap();
        assert!(resp["warnings"].as_array().is_none_or(|w| w.is_empty()), "every key applied: {}", resp["warnings"]);
        outcome.images[0].data.clone()
    };
    let lora = json!([{"name": "norms", "weight": weight}]);
    let merged = pixels("tiny-sdxl", lora.clone());
    assert_eq!(merged, pixels("edited", json!([])), "the norm module differs from editing the values");
    assert_ne!(merged, pixels("tiny-sdxl", json!([])), "the norm module changed nothing");
    let folded = pixels("tiny-sdxl-folded", lora);
    let worst = merged.iter().zip(&folded).map(|(a, b)| (*a as i16 - *b as i16).abs()).max().unwrap();
    assert!(worst <= 1, "the folded export with the norm module differs by {worst}/255");
    let worst_plain =
        folded.iter().zip(&pixels("tiny-sdxl-folded", json!([]))).map(|(a, b)| (*a as i16 - *b as i16).abs()).max();
    assert!(worst_plain.unwrap() > 1, "the norm module changed nothing on the folded export");
}

#[test]
fn bias_changes_that_do_not_fit_are_clear_errors_or_reported() {
    let conv = "lora_unet_input_blocks_1_0_in_layers_2";
    let lora_q = || {
        vec![
            (format!("{Q}.lora_A.weight"), vec![2, 32], vec![0.05f32; 64]),
            (format!("{Q}.lora_B.weight"), vec![32, 2], vec![0.05f32; 64]),
        ]
    };
    let mut q_with_bias = lora_q();
    q_with_bias.push((format!("{Q}.lora_B.bias"), vec![32], vec![0.1; 32])); // to_q has no bias
    let dir = temp_root(&[
        ("matrix.safetensors", safetensors_file(&[(format!("{conv}.diff_b"), vec![4, 4], vec![0.1; 16])])),
        ("stray.safetensors", safetensors_file(&[(format!("{Q}.lora_B.bias"), vec![32], vec![0.1; 32])])),
        (
            "mixed.safetensors",
            safetensors_file(&[
                (format!("{conv}.diff"), vec![16, 16, 3, 3], vec![0.1; 2304]),
                (format!("{conv}.lora_down.weight"), vec![2, 16, 3, 3], vec![0.1; 288]),
                (format!("{conv}.lora_up.weight"), vec![16, 2, 1, 1], vec![0.1; 32]),
            ]),
        ),
        ("short.safetensors", safetensors_file(&[(format!("{conv}.diff_b"), vec![8], vec![0.1; 8])])),
        ("norm_matrix.safetensors", safetensors_file(&[(format!("{conv}.w_norm"), vec![4, 4], vec![0.1; 16])])),
        ("biasless.safetensors", safetensors_file(&q_with_bias)),
    ]);
    let root = dir.path();
    let case = |name: &str| generate(root, json!([{ "name": name }]));
    expect_error(&case("matrix"), "model_invalid", &["matrix.safetensors", "diff_b", "must be a vector"]);
    expect_error(&case("stray"), "model_invalid", &["stray.safetensors", "lora_B.bias", "without the lora_A/lora_B"]);
    expect_error(&case("mixed"), "model_invalid", &["mixed.safetensors", "both a full diff and low-rank"]);
    expect_error(&case("short"), "model_invalid", &["short.safetensors", "8x1 update", "conv1.bias"]);
    expect_error(&case("norm_matrix"), "model_invalid", &["norm_matrix.safetensors", "w_norm", "must be a vector"]);
    // A bias change for a module without a bias is skipped and reported; the rest of the module applies.
    let resp = case("biasless");
    assert_eq!(resp["success"], true, "{resp}");
    let w: Vec<&str> = resp["warnings"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert!(w.iter().any(|w| w.contains("LoRA `biasless`: applied 2 of 3 tensors, skipped 1")), "{w:?}");
}

/// A Tucker factor pair as the plain pair it folds into (A1111's make_weight_cp): `a` `[r, out]`, `b` `[r, in]`,
/// `core` `[r, r, 3, 3]` → (aᵀ `[out, r]`, b' `[r, in, 3, 3]`), b'[n, i, yx] = Σ_m core[n, m, yx] · b[m, i] in f64.
fn tucker_as_plain(a: &[f32], b: &[f32], core: &[f32], r: usize, out: usize, inputs: usize) -> (Vec<f32>, Vec<f32>) {
    let a_t: Vec<f32> = (0..out * r).map(|e| a[(e % r) * out + e / r]).collect();
    let mut folded = vec![0f32; r * inputs * 9];
    for n in 0..r {
        for i in 0..inputs {
            for yx in 0..9 {
                let sum: f64 =
                    (0..r).map(|m| f64::from(core[(n * r + m) * 9 + yx]) * f64::from(b[m * inputs + i])).sum();
                folded[(n * inputs + i) * 9 + yx] = sum as f32;
            }
        }
    }
    (a_t, folded)
}

#[test]
fn tucker_loha_and_lokr_merge_like_the_plain_factors_they_fold_into() {
    // LyCORIS Tucker LoHa (hada_t1/hada_t2) and LoKr (lokr_t2) on a 3×3 conv [16, 16, 3, 3]: each Tucker product
    // is w_aᵀ · core × w_b; the same factors written plainly must give the same image, and not the image without LoRA.
    let (r, c) = (2usize, 16usize);
    let name = "lora_unet_input_blocks_1_0_in_layers_2";
    let key = |part: &str| format!("{name}.{part}");
    let mut tucker_loha = vec![(key("alpha"), vec![], vec![1.0])];
    let mut plain_loha = tucker_loha.clone();
    for n in 1..=2 {
        let (a, b, core) = (ramp(n, r * c), ramp(n + 2, r * c), ramp(n + 4, r * r * 9));
        let (a_t, folded) = tucker_as_plain(&a, &b, &core, r, c, c);
        tucker_loha.push((key(&format!("hada_w{n}_a")), vec![r, c], a));
        tucker_loha.push((key(&format!("hada_w{n}_b")), vec![r, c], b));
        tucker_loha.push((key(&format!("hada_t{n}")), vec![r, r, 3, 3], core));
        plain_loha.push((key(&format!("hada_w{n}_a")), vec![c, r], a_t));
        plain_loha.push((key(&format!("hada_w{n}_b")), vec![r, c, 3, 3], folded));
    }
    // LoKr: w1 [4, 4] whole, w2 [4, 4, 3, 3] as Tucker (r = 2), Kronecker product [16, 16, 3, 3].
    let (a, b, core) = (ramp(7, r * 4), ramp(8, r * 4), ramp(9, r * r * 9));
    let (a_t, folded) = tucker_as_plain(&a, &b, &core, r, 4, 4);
    let w1 = (key("lokr_w1"), vec![4, 4], ramp(10, 16));
    let alpha = (key("alpha"), vec![], vec![1.0]);
    let tucker_lokr = vec![
        w1.clone(),
        alpha.clone(),
        (key("lokr_w2_a"), vec![r, 4], a),
        (key("lokr_w2_b"), vec![r, 4], b),
        (key("lokr_t2"), vec![r, r, 3, 3], core),
    ];
    let plain_lokr = vec![w1, alpha, (key("lokr_w2_a"), vec![4, r], a_t), (key("lokr_w2_b"), vec![r, 4, 3, 3], folded)];
    let dir = temp_root(&[
        ("tucker_loha.safetensors", safetensors_file(&tucker_loha)),
        ("plain_loha.safetensors", safetensors_file(&plain_loha)),
        ("tucker_lokr.safetensors", safetensors_file(&tucker_lokr)),
        ("plain_lokr.safetensors", safetensors_file(&plain_lokr)),
    ]);
    let image = |loras: Value| image_of(dir.path(), loras);
    let none = image(json!([]));
    for kind in ["loha", "lokr"] {
        let tucker = image(json!([{"name": format!("tucker_{kind}"), "weight": 1.0}]));
        assert!(tucker == image(json!([{"name": format!("plain_{kind}"), "weight": 1.0}])), "Tucker {kind} differs");
        assert!(tucker != none, "the Tucker {kind} changed nothing");
    }
}

#[test]
fn a_kohya_dora_scale_merges_by_a1111s_rule_and_does_nothing_at_weight_zero() {
    // kohya/LyCORIS DoRA on a 3×3 conv [16, 16, 3, 3], `dora_scale` [1, in, 1, 1] (A1111's rule): the merged weight
    // is W + weight · ((W + ΔW) · m / ‖W + ΔW‖ − W), the norms per input channel. With m equal to the norms of
    // W + ΔW themselves the decomposition is the identity, so the file must give the plain LoCon's image; with
    // other magnitudes another image; at weight 0 the image without LoRA (unlike PEFT's DoRA).
    let (r, c) = (2usize, 16usize);
    let (down, up) = (ramp(1, r * c * 9), ramp(3, c * r));
    let unet = OnnxModel::read(&fixtures().join("tiny-sdxl/unet/model.onnx")).unwrap();
    let w = unet.read_f32(unet.initializer_index("down_blocks.0.resnets.0.conv1.weight").unwrap()).unwrap();
    // W + ΔW with alpha / r = 1 / 2, and its norm per input channel (over outputs and kernel positions), in f64.
    let merged: Vec<f64> = (0..c * c * 9)
        .map(|e| {
            let (o, col) = (e / (c * 9), e % (c * 9));
            let delta: f64 = (0..r).map(|k| f64::from(up[o * r + k]) * f64::from(down[k * c * 9 + col])).sum();
            f64::from(w[e]) + 0.5 * delta
        })
        .collect();
    let norms: Vec<f32> = (0..c)
        .map(|i| {
            let channel = (0..c).flat_map(|o| (i * 9..(i + 1) * 9).map(move |col| o * c * 9 + col));
            channel.map(|e| merged[e] * merged[e]).sum::<f64>().sqrt() as f32
        })
        .collect();
    let name = "lora_unet_input_blocks_1_0_in_layers_2";
    let key = |part: &str| format!("{name}.{part}");
    let file = |magnitudes: Option<Vec<f32>>| {
        let mut tensors = vec![
            (key("lora_down.weight"), vec![r, c, 3, 3], down.clone()),
            (key("lora_up.weight"), vec![c, r, 1, 1], up.clone()),
            (key("alpha"), vec![], vec![1.0]),
        ];
        tensors.extend(magnitudes.map(|m| (key("dora_scale"), vec![1, c, 1, 1], m)));
        safetensors_file(&tensors)
    };
    // Other magnitudes per channel (a uniform factor would mostly vanish in the GroupNorm that follows), and the
    // change they should make, W' − W = (W + ΔW) · m / ‖W + ΔW‖ − W, written as a full-rank LoCon (up = identity).
    let varied: Vec<f32> = norms.iter().enumerate().map(|(i, n)| n * [0.5, 1.0, 2.0][i % 3]).collect();
    let change: Vec<f32> = (0..c * c * 9)
        .map(|e| (merged[e] * f64::from(varied[e % (c * 9) / 9] / norms[e % (c * 9) / 9]) - f64::from(w[e])) as f32)
        .collect();
    let identity: Vec<f32> = (0..c * c).map(|e| if e / c == e % c { 1.0 } else { 0.0 }).collect();
    let full_rank = safetensors_file(&[
        (&key("lora_down.weight"), vec![c, c, 3, 3], change),
        (&key("lora_up.weight"), vec![c, c, 1, 1], identity),
        (&key("alpha"), vec![], vec![c as f32]),
    ]);
    let dir = temp_root(&[
        ("plain.safetensors", file(None)),
        ("own_norms.safetensors", file(Some(norms))),
        ("varied.safetensors", file(Some(varied.clone()))),
        ("full_rank.safetensors", full_rank),
    ]);
    let pixels = |loras: Value| -> Vec<u8> {
        let resp = generate(dir.path(), loras);
        assert!(resp["warnings"].as_array().is_none_or(|w| w.is_empty()), "every key applied: {}", resp["warnings"]);
        let b64 = resp["data"]["generated_images"][0]["image_data"].as_str().unwrap();
        use base64::Engine as _;
        let png = base64::engine::general_purpose::STANDARD.decode(b64).unwrap();
        image::load_from_memory(&png).unwrap().to_rgb8().into_raw()
    };
    let lora = |name: &str, weight: f32| pixels(json!([{"name": name, "weight": weight}]));
    let plain = lora("plain", 1.0);
    let worst = |a: &[u8], b: &[u8]| a.iter().zip(b).map(|(x, y)| (*x as i16 - *y as i16).abs()).max().unwrap();
    assert!(worst(&lora("own_norms", 1.0), &plain) <= 1, "DoRA to its own norms must be the plain LoCon");
    let with_varied = lora("varied", 1.0);
    assert!(worst(&with_varied, &plain) > 1, "other magnitudes changed nothing");
    assert!(worst(&with_varied, &lora("full_rank", 1.0)) <= 1, "DoRA differs from the change A1111's rule makes");
    assert_eq!(lora("varied", 0.0), pixels(json!([])), "weight 0 must be the image without LoRA");
}

#[test]
fn unmatched_keys_become_warnings_with_counts() {
    let mut tensors = vec![
        (format!("{Q}.lora_A.weight"), vec![2, 32], vec![0.05f32; 64]),
        (format!("{Q}.lora_B.weight"), vec![32, 2], vec![0.05f32; 64]),
        ("unet.down_blocks.7.attentions.0.proj_in.lora_A.weight".to_string(), vec![2, 32], vec![0.1f32; 64]),
        ("unet.down_blocks.7.attentions.0.proj_in.lora_B.weight".to_string(), vec![32, 2], vec![0.1f32; 64]),
        ("some_trainer_state".to_string(), vec![1], vec![1.0f32]),
    ];
    tensors.push((format!("{Q}.alpha"), vec![], vec![2.0]));
    let dir = temp_root(&[("partial.safetensors", safetensors_file(&tensors))]);
    let resp = generate(dir.path(), json!([{"name": "partial", "weight": 0.5}]));
    assert_eq!(resp["success"], true, "{resp}");
    let w: Vec<&str> = resp["warnings"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert!(w.iter().any(|w| w.contains("LoRA `partial`: applied 3 of 6 tensors, skipped 3")), "{w:?}");
    assert_eq!(resp["data"]["generated_images"][0]["metadata"]["loras"], json!([{"name": "partial", "weight": 0.5}]));
    // The same file and weight spelled otherwise reuses the merged sessions; warnings and metadata still use the
    // request's own spelling.
    let engine = Engine::new(Some(&json!({"models_root": dir.path(), "intra_op_threads": 1}).to_string())).unwrap();
    let req = |name: &str| {
        json!({"prompt": "a cat", "models": {"base": "tiny-sdxl"}, "dimensions": {"width": 64, "height": 64},
               "hyperparameters": {"num_inference_steps": 1, "seed": 1},
               "lora": {"models": [{"name": name, "weight": 0.5}]}})
        .to_string()
    };
    engine.generate(&req("partial"), &mut Capture::default(), false);
    let again = engine.generate(&req("partial.safetensors"), &mut Capture::default(), false);
    let resp: Value = serde_json::from_str(&again.response_json).unwrap();
    let metrics = &resp["data"]["processing_metrics"];
    assert_eq!(metrics["model_load_time"], 0.0, "the merged sessions are reused: {metrics}");
    let w = resp["warnings"].to_string();
    assert!(w.contains("LoRA `partial.safetensors`: applied 3 of 6"), "{w}");
    assert_eq!(resp["data"]["generated_images"][0]["metadata"]["loras"][0]["name"], "partial.safetensors");
}

#[test]
fn lora_files_resolve_by_name_path_and_absolute_path() {
    let root = fixtures();
    let field = "f";
    let want = fixtures().join("loras/peft_b.safetensors").canonicalize().unwrap();
    for name in ["peft_b", "peft_b.safetensors", want.to_str().unwrap()] {
        assert_eq!(sdxlrt::lora::resolve_path(&root, name, field).unwrap(), want, "{name}");
    }
    let _ = PathBuf::new();
}

#[test]
fn sessions_are_cached_by_file_content_and_weights() {
    let dir = temp_root(&[]);
    let root = dir.path();
    let loras = root.join("loras");
    std::fs::copy(loras.join("peft_b.safetensors"), loras.join("mine.safetensors")).unwrap();
    let engine = Engine::new(Some(&json!({"models_root": root, "intra_op_threads": 1}).to_string())).unwrap();
    let run = |prompt: &str, weight: f32, scheduler: &str| {
        let req = json!({"prompt": prompt, "models": {"base": "tiny-sdxl"}, "scheduler": scheduler,
                         "dimensions": {"width": 64, "height": 64},
                         "hyperparameters": {"num_inference_steps": 2, "seed": 3},
                         "lora": {"models": [{"name": "mine", "weight": weight}]}});
        let out = engine.generate(&req.to_string(), &mut Capture::default(), true);
        assert!(out.error.is_none(), "{}", out.response_json);
        out.images[0].data.clone()
    };
    let variants = || {
        let mut v: Vec<String> = engine.cache().loaded().into_iter().map(|m| m.variant).collect();
        v.sort();
        v
    };
    let first = run("a cat", 0.8, "EulerDiscreteScheduler");
    assert_eq!(variants().len(), 1);
    // Another prompt or scheduler: the same sessions.
    run("a dog", 0.8, "EulerDiscreteScheduler");
    run("a dog", 0.8, "Euler");
    assert_eq!(variants().len(), 1);
    // Another weight: a new variant.
    run("a cat", 0.4, "EulerDiscreteScheduler");
    assert_eq!(variants().len(), 2);
    // Same name and weight, new content: a new variant and a different image.
    std::fs::copy(loras.join("kohya_a.safetensors"), loras.join("mine.safetensors")).unwrap();
    let changed = run("a cat", 0.8, "EulerDiscreteScheduler");
    let v = variants();
    assert_eq!(v.len(), 3, "{v:?}");
    assert_ne!(first, changed);
}
