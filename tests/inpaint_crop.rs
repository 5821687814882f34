//! Inpainting only the masked area (`data.padding_mask_crop`): the crop region, the "fill" resize and the overlay
//! equal diffusers' `VaeImageProcessor` to the byte (goldens by onnx/make_inpaint_crop.py), and whole requests match
//! diffusers' `StableDiffusionXLInpaintPipeline(padding_mask_crop=…)`.

use sdxlrt::image::mask_crop::{crop, crop_region, fill, overlay, CropRegion};
use sdxlrt::image::{source, RgbImage};

use crate::util::{fixtures, Golden};

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
