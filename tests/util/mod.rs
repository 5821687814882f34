//! Test helpers: fixture paths, goldens, `assert_close!`, and safe wrappers around the C ABI calls.
#![allow(dead_code)]

use std::collections::HashMap;
use std::ffi::{c_char, c_void, CStr, CString};
use std::path::PathBuf;

use sdxlrt::ffi::boundary::sdxl_last_error;
use sdxlrt::ffi::buffers::{sdxl_image_batch, sdxl_image_batch_free, sdxl_string_free};
use sdxlrt::ffi::engine::{sdxl_engine_create, sdxl_engine_free, sdxl_generate, sdxl_generate_images};
use sdxlrt::ffi::handles::sdxl_engine;
use sdxlrt::ffi::progress::sdxl_progress_cb;
use sdxlrt::ffi::status::sdxl_status;

/// Records the latents the pipeline shows it: the initial latents per first image index, and the latents after
/// each scheduler step per (first image index, evaluation index).
#[derive(Default)]
pub struct Capture {
    pub initial: std::collections::BTreeMap<u32, Vec<f32>>,
    pub steps: std::collections::BTreeMap<(u32, usize), Vec<f32>>,
}

impl sdxlrt::pipeline::Progress for Capture {
    fn report(&mut self, _: &sdxlrt::pipeline::ProgressEvent<'_>) -> bool {
        true
    }
    fn on_latents(&mut self, image_index: u32, step: Option<usize>, latents: ndarray::ArrayViewD<'_, f32>) {
        let v = latents.iter().copied().collect();
        match step {
            None => self.initial.insert(image_index, v),
            Some(i) => self.steps.insert((image_index, i), v),
        };
    }
}

/// `tests/fixtures`.
pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Copy the folder `from` (recursively) to `to`.
pub fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let dest = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &dest);
        } else {
            std::fs::copy(entry.path(), dest).unwrap();
        }
    }
}

/// A models_root holding `tiny-sdxl-fused` (tiny-sdxl with the UNet of onnx/export_onnx.py --fused-attention, whose
/// attention cores are com.microsoft MultiHeadAttention nodes) and the LoRA fixtures, and engine options for it.
pub fn fused_attention_root() -> (tempfile::TempDir, String) {
    let root = tempfile::tempdir().unwrap();
    let model = root.path().join("tiny-sdxl-fused");
    copy_dir(&fixtures().join("tiny-sdxl"), &model);
    std::fs::remove_dir_all(model.join("unet")).unwrap();
    copy_dir(&fixtures().join("tiny-sdxl-fused-unet/unet"), &model.join("unet"));
    copy_dir(&fixtures().join("loras"), &root.path().join("loras"));
    let options = serde_json::json!({ "models_root": root.path(), "intra_op_threads": 1 }).to_string();
    (root, options)
}

/// A models_root holding `tiny-sdxl-inpaint` (tiny-sdxl with the 9-channel inpainting UNet of
/// onnx/make_inpaint_unet.py, tests/fixtures/tiny-sdxl-inpaint-unet/unet/), and engine options for it.
pub fn inpaint_unet_root() -> (tempfile::TempDir, String) {
    let root = tempfile::tempdir().unwrap();
    let model = root.path().join("tiny-sdxl-inpaint");
    copy_dir(&fixtures().join("tiny-sdxl"), &model);
    std::fs::remove_dir_all(model.join("unet")).unwrap();
    copy_dir(&fixtures().join("tiny-sdxl-inpaint-unet/unet"), &model.join("unet"));
    let options = serde_json::json!({ "models_root": root.path(), "intra_op_threads": 1 }).to_string();
    (root, options)
}

/// Engine options for the bundled fixtures (ONNX Runtime from ORT_DYLIB_PATH, as scripts/test.sh sets it).
pub fn options_json() -> String {
    serde_json::json!({ "models_root": fixtures(), "intra_op_threads": 1 }).to_string()
}

/// The calling thread's last error text.
pub fn last_error() -> String {
    unsafe { CStr::from_ptr(sdxl_last_error()) }.to_string_lossy().into_owned()
}

/// An engine created and freed through the ABI.
pub struct AbiEngine(pub *mut sdxl_engine);

unsafe impl Send for AbiEngine {}
unsafe impl Sync for AbiEngine {}

/// A reply: the status, the parsed JSON (Null when none was written) and the last error text.
#[derive(Debug)]
pub struct Reply {
    pub status: sdxl_status,
    pub json: serde_json::Value,
    pub error: String,
}

impl AbiEngine {
    /// `sdxl_engine_create` with `options` (None → NULL).
    pub fn create(options: Option<&str>) -> Result<Self, (sdxl_status, String)> {
        let opts = options.map(|o| CString::new(o).unwrap());
        let mut engine = std::ptr::null_mut();
        let status = sdxl_engine_create(opts.as_ref().map_or(std::ptr::null(), |o| o.as_ptr()), &mut engine);
        if status == sdxl_status::Ok {
            assert!(!engine.is_null());
            Ok(AbiEngine(engine))
        } else {
            assert!(engine.is_null(), "engine_out must stay untouched on failure");
            Err((status, last_error()))
        }
    }

    /// The bundled-fixture engine.
    pub fn fixtures() -> Self {
        Self::create(Some(&options_json())).unwrap_or_else(|e| panic!("engine_create failed: {e:?}"))
    }

    /// `sdxl_generate` with an optional progress callback.
    pub fn generate_with(&self, request: &str, cb: sdxl_progress_cb, user_data: *mut c_void) -> Reply {
        let req = CString::new(request).unwrap();
        let mut out: *mut c_char = std::ptr::null_mut();
        let status = sdxl_generate(self.0, req.as_ptr(), cb, user_data, &mut out);
        Reply { status, json: take_string(out), error: last_error() }
    }

    /// `sdxl_generate` without progress.
    pub fn generate(&self, request: &str) -> Reply {
        self.generate_with(request, None, std::ptr::null_mut())
    }

    /// `sdxl_generate_images`: the reply and the raw images (width, height, stride, seed, pixels).
    pub fn generate_images(&self, request: &str) -> (Reply, Vec<RawImage>) {
        let req = CString::new(request).unwrap();
        let mut out: *mut c_char = std::ptr::null_mut();
        let mut batch: *mut sdxl_image_batch = std::ptr::null_mut();
        let status = sdxl_generate_images(self.0, req.as_ptr(), None, std::ptr::null_mut(), &mut out, &mut batch);
        let error = last_error();
        let mut images = Vec::new();
        if !batch.is_null() {
            let b = unsafe { &*batch };
            for i in 0..b.count {
                let img = unsafe { &*b.images.add(i) };
                let data = unsafe { std::slice::from_raw_parts(img.data, (img.stride * img.height) as usize) };
                images.push(RawImage {
                    width: img.width,
                    height: img.height,
                    stride: img.stride,
                    seed: img.seed,
                    data: data.to_vec(),
                });
            }
            sdxl_image_batch_free(batch);
        }
        (Reply { status, json: take_string(out), error }, images)
    }
}

impl Drop for AbiEngine {
    fn drop(&mut self) {
        sdxl_engine_free(self.0);
    }
}

/// One image copied out of an `sdxl_image_batch`.
#[derive(Debug, Clone, PartialEq)]
pub struct RawImage {
    pub width: u32,
    pub height: u32,
    pub stride: u32,
    pub seed: u64,
    pub data: Vec<u8>,
}

/// Parse and free a string returned by the library.
pub fn take_string(s: *mut c_char) -> serde_json::Value {
    if s.is_null() {
        return serde_json::Value::Null;
    }
    let text = unsafe { CStr::from_ptr(s) }.to_string_lossy().into_owned();
    sdxl_string_free(s);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("response is not JSON ({e}): {text}"))
}

/// A tensor from a golden file, as f32/i64/u8 data plus its shape.
#[derive(Debug, Clone)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub f32: Vec<f32>,
    pub i64: Vec<i64>,
    pub u8: Vec<u8>,
}

/// A golden case written by onnx/goldens.py.
pub struct Golden {
    pub name: String,
    pub meta: HashMap<String, String>,
    pub tensors: HashMap<String, Tensor>,
}

impl Golden {
    /// Load `tests/fixtures/goldens/<name>.safetensors`.
    pub fn load(name: &str) -> Self {
        let path = fixtures().join("goldens").join(format!("{name}.safetensors"));
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let mut tensors = HashMap::new();
        for (key, view) in st.tensors() {
            let data = view.data();
            let mut t = Tensor { shape: view.shape().to_vec(), f32: vec![], i64: vec![], u8: vec![] };
            match view.dtype() {
                safetensors::Dtype::F32 => {
                    t.f32 = data.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
                }
                safetensors::Dtype::I64 => {
                    t.i64 = data.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect()
                }
                safetensors::Dtype::U8 => t.u8 = data.to_vec(),
                other => panic!("unexpected dtype {other:?} for {key}"),
            }
            tensors.insert(key, t);
        }
        Golden { name: name.into(), meta: meta.metadata().clone().unwrap_or_default(), tensors }
    }

    /// A tensor by name (panics with the list of names when absent).
    pub fn t(&self, key: &str) -> &Tensor {
        self.tensors.get(key).unwrap_or_else(|| {
            let mut keys: Vec<_> = self.tensors.keys().collect();
            keys.sort();
            panic!("golden {} has no tensor {key}; it has {keys:?}", self.name)
        })
    }

    /// A metadata value parsed as T.
    pub fn meta<T: std::str::FromStr>(&self, key: &str) -> T
    where
        T::Err: std::fmt::Debug,
    {
        self.meta[key].parse().unwrap()
    }

    /// The request JSON that reproduces this case.
    pub fn request(&self, model: &str, parallel: bool) -> String {
        let mut data = serde_json::json!({
            "prompt": self.meta["prompt"],
            "models": { "base": model },
            "hyperparameters": {
                "num_inference_steps": self.meta::<u32>("steps"),
                "guidance_scale": self.meta::<f32>("guidance_scale"),
                "seed": self.meta::<u64>("seed"),
            },
            "dimensions": { "width": self.meta::<u32>("width"), "height": self.meta::<u32>("height") },
            "batch": { "size": self.meta::<u32>("batch_size"), "parallel": parallel },
            "output": { "format": "png", "return_image_data": true },
        });
        for key in ["negative_prompt", "prompt_2", "negative_prompt_2"] {
            if let Some(text) = self.meta.get(key) {
                data[key] = serde_json::json!(text);
            }
        }
        // onnx/make_prompts.py's cases: A1111's emphasis syntax and long prompts
        if let Some(syntax) = self.meta.get("prompt_syntax") {
            data["prompt_syntax"] = serde_json::json!(syntax);
        }
        // onnx/make_stages.py's cases: a custom VAE, a refiner and its switch point, a scheduler for both
        for key in ["vae", "refiner"] {
            if let Some(name) = self.meta.get(key) {
                data["models"][key] = serde_json::json!(name);
            }
        }
        for (key, field) in [
            ("aesthetic_score", "refiner_aesthetic_score"),
            ("negative_aesthetic_score", "refiner_negative_aesthetic_score"),
        ] {
            if self.meta.contains_key(key) {
                data["hyperparameters"][field] = serde_json::json!(self.meta::<f64>(key));
            }
        }
        if self.meta.contains_key("refiner_start") {
            data["hyperparameters"]["refiner_switch_at"] = serde_json::json!(self.meta::<f64>("refiner_start"));
        }
        if let Some(name) = self.meta.get("scheduler") {
            data["scheduler"] = serde_json::json!(name);
        }
        // onnx/make_guidance_rescale.py's and onnx/make_clip_skip.py's cases
        if self.meta.contains_key("guidance_rescale") {
            data["hyperparameters"]["guidance_rescale"] = serde_json::json!(self.meta::<f64>("guidance_rescale"));
        }
        if self.meta.contains_key("clip_skip") {
            data["hyperparameters"]["clip_skip"] = serde_json::json!(self.meta::<u32>("clip_skip"));
        }
        // onnx/make_micro_conditioning.py's cases: original_size, crops_coords_top_left, target_size
        if let Some(micro) = self.meta.get("micro_conditioning") {
            let micro: serde_json::Map<String, serde_json::Value> = serde_json::from_str(micro).unwrap();
            data["dimensions"].as_object_mut().unwrap().extend(micro);
        }
        // onnx/make_controlnet.py's cases: ControlNet units (models, control images, scales, windows)
        if let Some(nets) = self.meta.get("controlnets") {
            let list = |key: &str| -> Vec<serde_json::Value> { serde_json::from_str(&self.meta[key]).unwrap() };
            let (images, scales) = (list("control_images"), list("conditioning_scales"));
            let (starts, ends) = (list("control_guidance_start"), list("control_guidance_end"));
            let nets: Vec<String> = serde_json::from_str(nets).unwrap();
            let units: Vec<serde_json::Value> = nets
                .iter()
                .enumerate()
                .map(|(k, net)| {
                    let image = fixtures().join("controlnet").join(images[k].as_str().unwrap());
                    serde_json::json!({"type": "test", "model_path": net, "control_image": image,
                        "conditioning_scale": scales[k], "guidance_start": starts[k], "guidance_end": ends[k]})
                })
                .collect();
            data["controlnet"] = serde_json::json!({ "enabled": true, "models": units });
            // make_controlnet.py's / make_img2img.py's guess-mode cases
            if let Some(guess) = self.meta.get("guess_mode") {
                data["controlnet"]["guess_mode"] = serde_json::json!(guess == "true");
            }
        }
        // onnx/make_img2img.py's cases: the init image and the strength
        if let Some(image) = self.meta.get("init_image") {
            data["init_image"] = serde_json::json!(fixtures().join("img2img").join(image));
            data["hyperparameters"]["strength"] = serde_json::json!(self.meta::<f64>("strength"));
        }
        // onnx/make_inpaint.py's cases: the mask
        if let Some(mask) = self.meta.get("mask_image") {
            data["mask_image"] = serde_json::json!(fixtures().join("inpaint").join(mask));
        }
        // onnx/make_inpaint_crop.py's cases: only the mask's area
        if self.meta.contains_key("padding_mask_crop") {
            data["padding_mask_crop"] = serde_json::json!(self.meta::<u32>("padding_mask_crop"));
        }
        if self.meta.contains_key("mask_blur") {
            data["mask_blur"] = serde_json::json!(self.meta::<f64>("mask_blur"));
        }
        serde_json::json!({ "message_type": "inference_request", "request_id": self.name, "data": data }).to_string()
    }
}

/// Compare two float slices: every |got - want| ≤ atol + rtol·|want|. On failure, name the worst element.
pub fn check_close(got: &[f32], want: &[f32], atol: f32, rtol: f32, what: &str) -> Result<f32, String> {
    if got.len() != want.len() {
        return Err(format!("{what}: length {} != {}", got.len(), want.len()));
    }
    let mut worst = (0usize, 0f32, 0f32);
    let mut max_abs = 0f32;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let d = (g - w).abs();
        if !(d.is_finite() || g == w) {
            return Err(format!("{what}: non-finite at {i}: got {g}, want {w}"));
        }
        let excess = d - (atol + rtol * w.abs());
        if excess > worst.1 || (i == 0 && excess > 0.0) {
            worst = (i, excess, d);
        }
        max_abs = max_abs.max(d);
    }
    if worst.1 > 0.0 {
        let i = worst.0;
        return Err(format!(
            "{what}: element {i}: got {}, want {} (|diff| {:.3e} > atol {atol:.1e} + rtol {rtol:.1e}·|want|); max |diff| {max_abs:.3e}",
            got[i], want[i], worst.2
        ));
    }
    Ok(max_abs)
}

/// The largest |a - b| between two byte images and the index of its first occurrence; `(255, len)` when the
/// lengths differ.
pub fn max_u8_diff(a: &[u8], b: &[u8]) -> (u8, usize) {
    if a.len() != b.len() {
        return (255, a.len().min(b.len()));
    }
    a.iter().zip(b).map(|(x, y)| x.abs_diff(*y)).enumerate().fold((0, 0), |m, (i, d)| if d > m.0 { (d, i) } else { m })
}

/// `check_close` that panics with its message.
#[macro_export]
macro_rules! assert_close {
    ($got:expr, $want:expr, $atol:expr, $rtol:expr, $($what:tt)+) => {
        match $crate::util::check_close(&$got, &$want, $atol, $rtol, &format!($($what)+)) {
            Ok(max) => max,
            Err(msg) => panic!("{msg}"),
        }
    };
}

/// The latents after every UNet evaluation, in the order they came, per first image index of a batch chunk. A
/// refiner's evaluation indices restart inside the base's (Heun re-evaluates the switch timestep), so an ordered
/// list, not a map by index.
#[derive(Default)]
pub struct Sequence {
    /// The latents after each evaluation, per chunk.
    pub steps: std::collections::BTreeMap<u32, Vec<Vec<f32>>>,
    /// The starting latents (noise × init_noise_sigma, or image-to-image's noised init latents), per chunk.
    pub initial: std::collections::BTreeMap<u32, Vec<f32>>,
}

impl sdxlrt::pipeline::Progress for Sequence {
    fn report(&mut self, _: &sdxlrt::pipeline::ProgressEvent<'_>) -> bool {
        true
    }
    fn on_latents(&mut self, image_index: u32, step: Option<usize>, latents: ndarray::ArrayViewD<'_, f32>) {
        let values = latents.iter().copied().collect();
        match step {
            Some(_) => self.steps.entry(image_index).or_default().push(values),
            None => {
                self.initial.insert(image_index, values);
            }
        }
    }
}

/// Run golden `case` on `engine` (the batch as one tensor, or one image at a time); check the latents after every
/// UNet evaluation (base then refiner) within 1e-4 + 1e-5·|x| and the images within ±1/255; return the response
/// JSON.
pub fn check_case(engine: &sdxlrt::engine::Engine, case: &str, parallel: bool) -> serde_json::Value {
    check_case_on(engine, "tiny-sdxl", case, parallel)
}

/// [`check_case`] with the request's base model `model`.
pub fn check_case_on(engine: &sdxlrt::engine::Engine, model: &str, case: &str, parallel: bool) -> serde_json::Value {
    let g = Golden::load(case);
    let mut seen = Sequence::default();
    let outcome = engine.generate(&g.request(model, parallel), &mut seen, true);
    assert!(outcome.error.is_none(), "{case}: {:?}\n{}", outcome.error, outcome.response_json);
    let evaluations = g.tensors.keys().filter(|k| k.starts_with("latents_step_")).count();
    for (chunk, steps) in &seen.steps {
        assert_eq!(steps.len(), evaluations, "{case}: latents of the chunk at image {chunk}, base and refiner");
    }
    // onnx/make_img2img.py's goldens: the init image's latents noised to the first step's level
    if let Some(want) = g.tensors.get("noised_latents") {
        let got: Vec<f32> = seen.initial.values().flatten().copied().collect();
        assert_close!(got, want.f32, 1e-4, 1e-5, "{case} (parallel {parallel}): noised init latents");
    }
    for i in 0..evaluations {
        let got: Vec<f32> = seen.steps.values().flat_map(|steps| steps[i].iter().copied()).collect();
        let want = &g.t(&format!("latents_step_{i}")).f32;
        assert_close!(got, want, 1e-4, 1e-5, "{case} (parallel {parallel}): latents after evaluation {i}");
    }
    let want = &g.t("image_u8").u8;
    let got: Vec<u8> = outcome.images.iter().flat_map(|im| im.data.iter().copied()).collect();
    assert_eq!(got.len(), want.len(), "{case}: image size");
    let (worst, at) = max_u8_diff(&got, want);
    assert!(worst <= 1, "{case}: image differs from diffusers by {worst}/255 at byte {at}");
    serde_json::from_str(&outcome.response_json).unwrap()
}

/// The RGB8 pixels of a base64 encoded image (`image_data`): what to compare between requests, whose files differ in
/// their embedded generation parameters.
pub fn pixels_of_image_data(b64: &str) -> Vec<u8> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD.decode(b64).expect("base64 image data");
    image::load_from_memory(&bytes).expect("an encoded image").to_rgb8().into_raw()
}

/// A progress sink that records every (stage, step, total steps) reported and never cancels.
#[derive(Default)]
pub struct Stages(pub Vec<(sdxlrt::pipeline::Stage, u32, u32)>);

impl sdxlrt::pipeline::Progress for Stages {
    fn report(&mut self, event: &sdxlrt::pipeline::ProgressEvent<'_>) -> bool {
        self.0.push((event.stage, event.step, event.total_steps));
        true
    }
}
