//! Inpainting with ControlNets (`data.mask_image` with `data.controlnet`): parity with diffusers'
//! `StableDiffusionXLControlNetInpaintPipeline` on goldens made by onnx/make_inpaint_controlnet.py from the same tiny
//! weights — a 4-channel UNet blending after every step, strength 1, a batch with two ControlNets, the 9-channel
//! inpainting UNet, and only the mask's area (`data.padding_mask_crop`) — the starting latents and the latents after
//! every step ≤ 1e-4 + 1e-5·|x|, images within ±1/255; then errors.

use sdxlrt::engine::Engine;
use sdxlrt::image::mask_crop::{crop, crop_region, fill};
use sdxlrt::image::source;
use sdxlrt::pipeline::controlnet::control_tensor;
use sdxlrt::pipeline::NoProgress;

use crate::util::{
    check_case, check_case_on, copy_dir, fixtures, inpaint_unet_root, max_u8_diff, options_json, Golden,
};

fn engine() -> Engine {
    Engine::new(Some(&options_json())).expect("engine")
}

/// The reply to `request` on `engine` (images asked for), as JSON, and the images' bytes.
fn run(engine: &Engine, request: &serde_json::Value) -> (serde_json::Value, Vec<u8>) {
    let outcome = engine.generate(&request.to_string(), &mut NoProgress, true);
    let reply = serde_json::from_str(&outcome.response_json).unwrap();
    (reply, outcome.images.iter().flat_map(|im| im.data.iter().copied()).collect())
}

fn request(g: &Golden, model: &str) -> serde_json::Value {
    serde_json::from_str(&g.request(model, false)).unwrap()
}

#[test]
fn inpainting_with_a_controlnet_matches_diffusers_and_its_window_counts_the_steps_left() {
    // 5 steps at strength 0.8: 4 evaluations; the window 0.2..0.8 keeps evaluations 1 and 2 of those 4 (over the
    // whole 5-step schedule it would keep 1, 2 and 3)
    let engine = engine();
    let g = Golden::load("inpaint_controlnet");
    assert_eq!(g.t("controlnet_scales").f32, [0.0, 0.8, 0.8, 0.0]);
    let reply = check_case(&engine, "inpaint_controlnet", false);
    let meta = &reply["data"]["generated_images"][0]["metadata"];
    assert_eq!(meta["controlnets"][0]["model"], "tiny-controlnet");
    assert_eq!(meta["init_image"]["denoising_steps"], 4);
    // the ControlNet matters: without it the same request is plain inpainting, clearly another image
    let mut without = request(&g, "tiny-sdxl");
    without["data"].as_object_mut().unwrap().remove("controlnet");
    let (reply, image) = run(&engine, &without);
    assert_eq!(reply["success"], true, "{reply}");
    let (worst, _) = max_u8_diff(&image, &g.t("image_u8").u8);
    assert!(worst >= 5, "the ControlNet changed the inpainted image by only {worst}/255");
}

#[test]
fn at_strength_one_inpainting_with_a_controlnet_starts_from_pure_noise_as_diffusers_does() {
    check_case(&engine(), "inpaint_controlnet_full", true);
}

#[test]
fn a_batch_with_two_controlnets_draws_and_sums_as_diffusers_does() {
    // Euler ancestral (step noise per generator), two units, the second from evaluation 2 of 4 on
    let engine = engine();
    check_case(&engine, "inpaint_controlnet_batch2", false);
    check_case(&engine, "inpaint_controlnet_batch2", true);
}

#[test]
fn a_9_channel_inpainting_unet_takes_the_mask_while_the_controlnet_gets_the_4_latent_channels() {
    let (root, options) = inpaint_unet_root();
    copy_dir(&fixtures().join("controlnet"), &root.path().join("controlnet"));
    let engine = Engine::new(Some(&options)).expect("engine");
    check_case_on(&engine, "tiny-sdxl-inpaint", "inpaint9_controlnet", false);
}

#[test]
fn only_the_masks_area_is_inpainted_with_the_control_image_cut_as_the_init_image_is() {
    let engine = engine();
    let reply = check_case(&engine, "inpaint_controlnet_crop", false);
    let image = &reply["data"]["generated_images"][0];
    assert_eq!((image["width"].as_u64(), image["height"].as_u64()), (Some(80), Some(60)), "the init image's size");
    assert_eq!(image["metadata"]["init_image"]["mask_crop"], serde_json::json!([30, 1, 80, 51]));
    // The tensor the ControlNet gets equals diffusers' preprocessed control image to the bit: cut to the region,
    // "fill"-resized (Lanczos), / 255; the uncut image resized would be another one.
    let g = Golden::load("inpaint_controlnet_crop");
    let load = |p: &str| source::load(fixtures().join(p).to_str().unwrap(), "test").unwrap();
    let (control, mask) = (load("controlnet/control_80x60.png"), load("inpaint/mask_crop_80x60.png"));
    let region = crop_region(&mask, 64, 64, 4).unwrap();
    let t = control_tensor(&fill(&crop(&control, region), 64, 64), 64, 64);
    assert_eq!(t.shape(), g.t("control_image_0").shape.as_slice());
    assert_eq!(t.iter().copied().collect::<Vec<f32>>(), g.t("control_image_0").f32);
    let uncut = control_tensor(&control, 64, 64);
    assert_ne!(uncut.iter().copied().collect::<Vec<f32>>(), g.t("control_image_0").f32);
}

#[test]
fn with_padding_mask_crop_a_control_image_of_another_size_is_refused_naming_it() {
    // diffusers cuts the control image at the init image's crop coordinates whatever its size; sdxlrt needs the
    // init image's size so that those coordinates mean the same pixels
    let engine = engine();
    let g = Golden::load("inpaint_controlnet_crop");
    let mut r = request(&g, "tiny-sdxl");
    r["data"]["controlnet"]["models"][0]["control_image"] =
        serde_json::json!(fixtures().join("controlnet/control_64.png"));
    let (reply, _) = run(&engine, &r);
    assert_eq!(reply["error_code"], "invalid_request", "{reply}");
    let error = reply["error"].as_str().unwrap();
    assert!(error.contains("data.controlnet.models[0].control_image") && error.contains("64×64"), "{error}");
    assert!(error.contains("80×60") && error.contains("padding_mask_crop"), "{error}");
}

/// `model` (an ONNX `ModelProto`) with its graph's last output left out (protobuf: ModelProto.graph is field 7,
/// GraphProto.output field 12; every other byte copied).
fn without_last_output(model: &[u8]) -> Vec<u8> {
    fn varint(b: &[u8], i: &mut usize) -> u64 {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = b[*i];
            *i += 1;
            v |= u64::from(byte & 0x7f) << shift;
            if byte < 0x80 {
                break;
            }
        }
        v
    }
    fn put_varint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }
    /// The fields of a message: (field number, whole field's byte range, payload range for length-delimited ones).
    fn fields(b: &[u8]) -> Vec<(u64, std::ops::Range<usize>, Option<std::ops::Range<usize>>)> {
        let (mut i, mut out) = (0, Vec::new());
        while i < b.len() {
            let start = i;
            let key = varint(b, &mut i);
            let payload = match key & 7 {
                0 => {
                    varint(b, &mut i);
                    None
                }
                1 => {
                    i += 8;
                    None
                }
                5 => {
                    i += 4;
                    None
                }
                2 => {
                    let n = varint(b, &mut i) as usize;
                    i += n;
                    Some(i - n..i)
                }
                w => panic!("wire type {w}"),
            };
            out.push((key >> 3, start..i, payload));
        }
        out
    }
    let mut out = Vec::with_capacity(model.len());
    for (field, whole, payload) in fields(model) {
        match (field, payload) {
            (7, Some(p)) => {
                let graph = &model[p];
                let parts = fields(graph);
                let last = parts.iter().rposition(|f| f.0 == 12).expect("graph outputs");
                let mut g = Vec::with_capacity(graph.len());
                for (k, (_, range, _)) in parts.iter().enumerate() {
                    if k != last {
                        g.extend_from_slice(&graph[range.clone()]);
                    }
                }
                put_varint(&mut out, 7 << 3 | 2);
                put_varint(&mut out, g.len() as u64);
                out.extend_from_slice(&g);
            }
            _ => out.extend_from_slice(&model[whole]),
        }
    }
    out
}

#[test]
fn a_controlnet_for_another_unet_is_refused_naming_its_model_path_and_the_engine_keeps_working() {
    // tiny-controlnet without its middle-block output: 5 down residuals where the UNet takes 6, as a ControlNet
    // made for another architecture would give
    let root = tempfile::tempdir().unwrap();
    copy_dir(&fixtures().join("tiny-sdxl"), &root.path().join("tiny-sdxl"));
    copy_dir(&fixtures().join("controlnet"), &root.path().join("controlnet"));
    let other = root.path().join("controlnet/other");
    std::fs::create_dir_all(&other).unwrap();
    let bytes = std::fs::read(fixtures().join("controlnet/tiny-controlnet/model.onnx")).unwrap();
    std::fs::write(other.join("model.onnx"), without_last_output(&bytes)).unwrap();
    let options = serde_json::json!({ "models_root": root.path(), "intra_op_threads": 1 }).to_string();
    let engine = Engine::new(Some(&options)).expect("engine");
    let g = Golden::load("inpaint_controlnet");
    let mut r = request(&g, "tiny-sdxl");
    r["data"]["controlnet"]["models"][0]["model_path"] = serde_json::json!("other");
    let (reply, _) = run(&engine, &r);
    assert_eq!(reply["success"], false, "{reply}");
    let error = reply["error"].as_str().unwrap();
    assert!(error.contains("data.controlnet.models[0].model_path"), "{error}");
    assert!(error.contains("returns 5 skip-connection residuals") && error.contains("takes 6"), "{error}");
    let (reply, image) = run(&engine, &request(&g, "tiny-sdxl"));
    assert_eq!(reply["success"], true, "the engine still works: {reply}");
    let (worst, at) = max_u8_diff(&image, &g.t("image_u8").u8);
    assert!(worst <= 1, "after the error the image differs from diffusers by {worst}/255 at byte {at}");
}
