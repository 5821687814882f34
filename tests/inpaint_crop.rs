//! Inpainting only the masked area (`data.padding_mask_crop`) and blurring the mask (`data.mask_blur`): the crop
//! region, the "fill" resize, the overlay and the blur equal diffusers' `VaeImageProcessor` (Pillow) to the byte
//! (goldens by onnx/make_inpaint_crop.py), and whole requests match diffusers'
//! `StableDiffusionXLInpaintPipeline(padding_mask_crop=…)`, with the mask given through `mask_processor.blur`.

use std::collections::BTreeMap;

use sdxlrt::image::blur::gaussian_blur;
use sdxlrt::image::mask_crop::{crop, crop_region, fill, overlay, CropRegion};
use sdxlrt::image::{source, RgbImage};

use sdxlrt::engine::Engine;
use sdxlrt::pipeline::NoProgress;

use crate::util::{check_case, fixtures, options_json, Golden};

fn load(path: &str) -> RgbImage {
    source::load(fixtures().join(path).to_str().unwrap(), "test").unwrap()
}

fn rgb(t: &crate::util::Tensor) -> RgbImage {
    RgbImage { width: t.shape[1] as u32, height: t.shape[0] as u32, seed: 0, data: t.u8.clone() }
}

/// `got` equals `want` (rows of `row` bytes), or a panic naming the first differing byte's row and column.
fn same_bytes(got: &[u8], want: &[u8], row: usize, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: size");
    if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
        let differing = got.iter().zip(want).filter(|(a, b)| a != b).count();
        panic!(
            "{what}: {differing} bytes differ, the first at row {} byte {}: {} vs {}",
            i / row,
            i % row,
            got[i],
            want[i]
        );
    }
}

#[test]
fn crop_fill_and_overlay_equal_diffusers_image_processor_to_the_byte() {
    let g = Golden::load("mask_crop_ops");
    let ops: Vec<(String, u32, u32, u32)> = serde_json::from_str(&g.meta["ops"]).unwrap();
    let init = load("img2img/init_80x60.png");
    for (k, (mask_name, width, height, pad)) in ops.iter().enumerate() {
        let mask = load(&format!("inpaint/{mask_name}"));
        let region = crop_region(&mask, *width, *height, *pad).unwrap();
        let r = &g.t(&format!("region_{k}")).i64;
        let want = CropRegion { x1: r[0] as u32, y1: r[1] as u32, x2: r[2] as u32, y2: r[3] as u32 };
        assert_eq!(region, want, "case {k}: region");
        let filled = fill(&crop(&init, region), *width, *height);
        same_bytes(&filled.data, &g.t(&format!("init_{k}")).u8, *width as usize * 3, &format!("case {k}: init"));
        let mask_l: Vec<u8> = fill(&crop(&mask, region), *width, *height).data.chunks(3).map(|p| p[0]).collect();
        same_bytes(&mask_l, &g.t(&format!("mask_{k}")).u8, *width as usize, &format!("case {k}: mask"));
        let generated = rgb(g.t(&format!("generated_{k}")));
        let got = overlay(&init, &mask, &generated, region);
        same_bytes(&got.data, &g.t(&format!("overlay_{k}")).u8, 80 * 3, &format!("case {k}: overlay"));
    }
}

#[test]
fn only_the_masks_area_is_inpainted_and_put_back_as_diffusers_does() {
    let engine = Engine::new(Some(&options_json())).unwrap();
    // inpaint_crop: a 50 x 50 area for 64 x 64; inpaint_crop_fill: the whole 80 x 60 image for 96 x 64 (fill bands)
    for (case, region) in [("inpaint_crop", [30, 1, 80, 51]), ("inpaint_crop_fill", [0, 0, 80, 60])] {
        let reply = check_case(&engine, case, false);
        let image = &reply["data"]["generated_images"][0];
        assert_eq!(
            (image["width"].as_u64(), image["height"].as_u64()),
            (Some(80), Some(60)),
            "{case}: the init image's size"
        );
        assert_eq!(image["metadata"]["init_image"]["mask_crop"], serde_json::json!(region), "{case}");
    }
}

#[test]
fn outside_the_mask_the_init_images_pixels_stay_exactly() {
    let engine = Engine::new(Some(&options_json())).unwrap();
    let g = Golden::load("inpaint_crop");
    let outcome = engine.generate(&g.request("tiny-sdxl", false), &mut NoProgress, true);
    assert!(outcome.error.is_none(), "{}", outcome.response_json);
    let (init, mask) = (load("img2img/init_80x60.png"), load("inpaint/mask_crop_80x60.png"));
    let image = &outcome.images[0];
    let (mut kept, mut redrawn) = (0, 0);
    for ((got, want), m) in image.data.chunks(3).zip(init.data.chunks(3)).zip(mask.data.chunks(3)) {
        match m[0] {
            0 => {
                assert_eq!(got, want);
                kept += 1;
            }
            255 => redrawn += u32::from(got != want),
            _ => {}
        }
    }
    assert!(kept > 3500 && redrawn > 30, "kept {kept}, redrawn {redrawn}");
}

#[test]
fn a_mask_of_another_size_or_with_nothing_masked_is_refused_naming_the_mask() {
    let engine = Engine::new(Some(&options_json())).unwrap();
    let g = Golden::load("inpaint_crop");
    let with_mask = |mask: &str| {
        let mut request: serde_json::Value = serde_json::from_str(&g.request("tiny-sdxl", false)).unwrap();
        request["data"]["mask_image"] = serde_json::json!(fixtures().join(mask));
        let outcome = engine.generate(&request.to_string(), &mut NoProgress, false);
        let reply: serde_json::Value = serde_json::from_str(&outcome.response_json).unwrap();
        reply["error"].to_string()
    };
    let other_size = with_mask("inpaint/mask_64.png");
    assert!(other_size.contains("data.mask_image") && other_size.contains("64×64"), "{other_size}");
    let black = tempfile::tempdir().unwrap();
    let path = black.path().join("black.png");
    image::RgbImage::new(80, 60).save(&path).unwrap();
    let nothing = with_mask(path.to_str().unwrap());
    assert!(nothing.contains("data.mask_image") && nothing.contains("black everywhere"), "{nothing}");
    check_case(&engine, "inpaint_crop", false);
}

#[test]
fn mask_blur_equals_pillows_gaussian_blur_to_the_byte() {
    // VaeImageProcessor.blur(image, blur_factor=r) = Pillow's GaussianBlur(r): L masks and RGB noise, radii 0 to 33
    // (33 is larger than the 5 x 3 and 1 x 7 images)
    let g = Golden::load("mask_blur_ops");
    let images: BTreeMap<String, String> = serde_json::from_str(&g.meta["images"]).unwrap();
    let radii: Vec<f64> = serde_json::from_str(&g.meta["radii"]).unwrap();
    assert!(images.len() >= 5 && radii.len() >= 7);
    for (name, path) in &images {
        let input = if path.is_empty() { rgb(g.t(&format!("input_{name}"))) } else { load(path) };
        for (k, radius) in radii.iter().enumerate() {
            let want = g.t(&format!("blur_{name}_{k}"));
            assert_eq!(want.shape[..2], [input.height as usize, input.width as usize], "{name}");
            let got = gaussian_blur(&input, *radius as f32);
            let what = format!("{name} ({}x{}) radius {radius}", input.width, input.height);
            if want.shape.len() == 2 {
                // an L mask: read as grey RGB, every channel blurs as the L image
                let grey: Vec<u8> = got.data.chunks(3).map(|p| p[0]).collect();
                assert!(got.data.chunks(3).all(|p| p[0] == p[1] && p[1] == p[2]), "{what}: grey");
                same_bytes(&grey, &want.u8, input.width as usize, &what);
            } else {
                same_bytes(&got.data, &want.u8, input.width as usize * 3, &what);
            }
        }
    }
}

#[test]
fn a_blurred_masks_area_is_inpainted_and_put_back_as_diffusers_does() {
    // inpaint_crop_blur: mask_crop_80x60.png blurred by 4 reaches further, so its region is larger than the
    // unblurred mask's ([30, 1, 80, 51] in inpaint_crop): the region, the run's mask and the overlay see the blur
    let engine = Engine::new(Some(&options_json())).unwrap();
    let g = Golden::load("inpaint_crop_blur");
    assert_eq!(g.meta["mask_blur"], "4");
    let reply = check_case(&engine, "inpaint_crop_blur", false);
    let image = &reply["data"]["generated_images"][0];
    assert_eq!((image["width"].as_u64(), image["height"].as_u64()), (Some(80), Some(60)));
    let blurred = gaussian_blur(&load("inpaint/mask_crop_80x60.png"), 4.0);
    let r = crop_region(&blurred, 64, 64, 4).unwrap();
    assert_eq!(image["metadata"]["init_image"]["mask_crop"], serde_json::json!([r.x1, r.y1, r.x2, r.y2]));
    assert_eq!([r.x1, r.y1, r.x2, r.y2], [23, 0, 80, 57], "diffusers' get_crop_region of the blurred mask");
    assert_eq!(image["metadata"]["init_image"]["mask"]["blur"], 4.0, "the blur is echoed");
}

#[test]
fn a_negative_mask_blur_or_one_without_a_mask_is_refused_naming_the_field() {
    let engine = Engine::new(Some(&options_json())).unwrap();
    let g = Golden::load("inpaint_crop_blur");
    let error = |edit: &dyn Fn(&mut serde_json::Value)| {
        let mut request: serde_json::Value = serde_json::from_str(&g.request("tiny-sdxl", false)).unwrap();
        edit(&mut request["data"]);
        let outcome = engine.generate(&request.to_string(), &mut NoProgress, false);
        assert!(outcome.error.is_some() && outcome.images.is_empty(), "{}", outcome.response_json);
        let reply: serde_json::Value = serde_json::from_str(&outcome.response_json).unwrap();
        reply["error"].to_string()
    };
    let negative = error(&|d| d["mask_blur"] = serde_json::json!(-1.5));
    assert!(negative.contains("data.mask_blur") && negative.contains("-1.5"), "{negative}");
    let no_mask = error(&|d| {
        d.as_object_mut().unwrap().remove("mask_image");
        d.as_object_mut().unwrap().remove("padding_mask_crop");
    });
    assert!(no_mask.contains("data.mask_blur") && no_mask.contains("needs data.mask_image"), "{no_mask}");
}
