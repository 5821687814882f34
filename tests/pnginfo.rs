//! Generation parameters inside the encoded images (`data.output.embed_parameters`): A1111's infotext in a PNG
//! `parameters` chunk (tEXt, or iTXt beyond Latin-1) with sdxlrt's JSON record in an `sdxlrt` chunk, JPEG/WebP EXIF
//! `UserComment`; in `image_data` and in files alike; the pixels the same as without.

use std::io::Cursor;

use base64::Engine as _;
use sdxlrt::ffi::status::sdxl_status;
use sdxlrt::image::metadata::read_user_comment;

use crate::util::AbiEngine;

/// A request for the tiny model with `output` and `extra` data fields (3 steps, seed 42, DPM++ 2M Karras).
fn request(output: serde_json::Value, extra: serde_json::Value) -> String {
    let mut v = serde_json::json!({
        "request_id": "p1",
        "data": {
            "prompt": "a lighthouse at dusk", "negative_prompt": "blurry, dark",
            "models": {"base": "tiny-sdxl"}, "scheduler": "DPM++ 2M Karras",
            "hyperparameters": {"num_inference_steps": 3, "guidance_scale": 5.0, "seed": 42},
            "output": output,
        }
    });
    if let serde_json::Value::Object(m) = extra {
        for (k, val) in m {
            v["data"][k] = val;
        }
    }
    v.to_string()
}

/// The encoded bytes of every image of a successful reply.
fn images(reply: &crate::util::Reply) -> Vec<Vec<u8>> {
    assert_eq!(reply.status, sdxl_status::Ok, "{}", reply.json);
    reply.json["data"]["generated_images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|img| base64::engine::general_purpose::STANDARD.decode(img["image_data"].as_str().unwrap()).unwrap())
        .collect()
}

/// A PNG's text chunks (keyword, text, whether it was iTXt), in file order within each kind, read with `png`.
fn png_text(bytes: &[u8]) -> Vec<(String, String, bool)> {
    let reader = png::Decoder::new(Cursor::new(bytes)).read_info().unwrap();
    let info = reader.info();
    let mut out: Vec<_> =
        info.uncompressed_latin1_text.iter().map(|t| (t.keyword.clone(), t.text.clone(), false)).collect();
    assert!(info.compressed_latin1_text.is_empty(), "no zTXt");
    out.extend(info.utf8_text.iter().map(|t| (t.keyword.clone(), t.get_text().unwrap(), true)));
    out
}

fn pixels(bytes: &[u8]) -> Vec<u8> {
    image::load_from_memory(bytes).unwrap().to_rgb8().into_raw()
}

fn version() -> String {
    format!("Version: sdxlrt {}", env!("CARGO_PKG_VERSION"))
}

#[test]
fn txt2img_png_carries_a1111s_infotext_as_parameters_then_the_sdxlrt_record() {
    let engine = AbiEngine::fixtures();
    let reply = engine.generate(&request(serde_json::json!({"format": "png"}), serde_json::json!({})));
    let png = &images(&reply)[0];
    let text = png_text(png);
    assert_eq!(text.len(), 2, "{text:?}");
    // A1111's create_infotext, by hand: prompt, "Negative prompt:" line, fields in its order; CFG 5.0 is "5" (as
    // A1111's sliders write it), DPM++ 2M Karras is the sampler plus schedule type (A1111 1.9+).
    let expected = format!(
        "a lighthouse at dusk\nNegative prompt: blurry, dark\nSteps: 3, Sampler: DPM++ 2M, Schedule type: Karras, \
         CFG scale: 5, Seed: 42, Size: 64x64, Model: tiny-sdxl, RNG: CPU, {}",
        version()
    );
    assert_eq!(text[0], ("parameters".to_string(), expected, false));
    assert_eq!(text[1].0, "sdxlrt");
    let record: serde_json::Value = serde_json::from_str(&text[1].1).unwrap();
    assert_eq!(record["metadata"], reply.json["data"]["generated_images"][0]["metadata"], "the reply's metadata");
    assert_eq!(
        (record["prompt"].as_str(), record["negative_prompt"].as_str()),
        (Some("a lighthouse at dusk"), Some("blurry, dark"))
    );
}

#[test]
fn each_image_of_a_batch_carries_its_own_seed() {
    let engine = AbiEngine::fixtures();
    let reply = engine.generate(&request(serde_json::json!({}), serde_json::json!({"batch": {"size": 3}})));
    let seeds: Vec<String> = images(&reply)
        .iter()
        .map(|png| {
            let text = &png_text(png)[0].1;
            let fields = text.lines().last().unwrap();
            fields.split(", ").find_map(|f| f.strip_prefix("Seed: ")).unwrap().to_string()
        })
        .collect();
    assert_eq!(seeds, ["42", "43", "44"]);
}

#[test]
fn embed_parameters_false_writes_no_chunk_and_the_same_pixels() {
    let engine = AbiEngine::fixtures();
    let with = &images(&engine.generate(&request(serde_json::json!({}), serde_json::json!({}))))[0];
    let without =
        &images(&engine.generate(&request(serde_json::json!({"embed_parameters": false}), serde_json::json!({}))))[0];
    assert!(png_text(without).is_empty());
    assert!(!png_text(with).is_empty());
    assert_eq!(pixels(with), pixels(without), "embedding parameters changes no pixel");
    // Without text the file is exactly what `image`'s PNG encoder wrote before parameters existed.
    let img = image::load_from_memory(without).unwrap().to_rgb8();
    let mut plain = Vec::new();
    image::codecs::png::PngEncoder::new(&mut plain)
        .write_image(img.as_raw(), img.width(), img.height(), image::ExtendedColorType::Rgb8)
        .unwrap();
    assert_eq!(&plain, without);
    use image::ImageEncoder as _;
}

#[test]
fn a_prompt_beyond_latin1_goes_to_an_itxt_chunk_and_reads_back_exactly() {
    let engine = AbiEngine::fixtures();
    let prompt = "灯台, 夕暮れ — «phare» 🌅";
    let reply = engine.generate(&request(serde_json::json!({}), serde_json::json!({"prompt": prompt})));
    let text = png_text(&images(&reply)[0]);
    let (key, value, itxt) = &text[0];
    assert_eq!((key.as_str(), *itxt), ("parameters", true));
    assert!(value.starts_with(&format!("{prompt}\nNegative prompt: blurry, dark\nSteps: 3, ")), "{value}");
    // Latin-1 text beyond ASCII stays in a tEXt chunk, as Pillow writes it.
    let reply = engine.generate(&request(serde_json::json!({}), serde_json::json!({"prompt": "café crème"})));
    let text = png_text(&images(&reply)[0]);
    assert!(!text[0].2 && text[0].1.starts_with("café crème\n"), "{text:?}");
}

#[test]
fn saved_files_carry_the_same_parameters_as_image_data() {
    let engine = AbiEngine::fixtures();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.png");
    let reply = engine.generate(&request(
        serde_json::json!({"save_path": path, "return_image_data": true}),
        serde_json::json!({"batch": {"size": 2}}),
    ));
    let data = images(&reply);
    assert_eq!(std::fs::read(&path).unwrap(), data[0]);
    assert_eq!(std::fs::read(dir.path().join("a_1.png")).unwrap(), data[1]);
    assert!(png_text(&data[1])[0].1.contains("Seed: 43"));
}

#[test]
fn jpeg_and_webp_carry_the_infotext_as_exif_user_comment_with_the_same_pixels() {
    let engine = AbiEngine::fixtures();
    for format in ["jpeg", "webp"] {
        let prompt = "a lighthouse, 灯台";
        let on = request(serde_json::json!({"format": format}), serde_json::json!({"prompt": prompt}));
        let off = request(
            serde_json::json!({"format": format, "embed_parameters": false}),
            serde_json::json!({"prompt": prompt}),
        );
        let (with, without) = (&images(&engine.generate(&on))[0], &images(&engine.generate(&off))[0]);
        let exif = |bytes: &[u8]| {
            use image::ImageDecoder as _;
            let mut decoder: Box<dyn image::ImageDecoder> = match format {
                "jpeg" => Box::new(image::codecs::jpeg::JpegDecoder::new(Cursor::new(bytes)).unwrap()),
                _ => Box::new(image::codecs::webp::WebPDecoder::new(Cursor::new(bytes)).unwrap()),
            };
            decoder.exif_metadata().unwrap()
        };
        let comment = read_user_comment(&exif(with).expect("an EXIF block")).unwrap();
        assert!(
            comment.starts_with(&format!("{prompt}\nNegative prompt: blurry, dark\nSteps: 3, Sampler: DPM++ 2M")),
            "{comment}"
        );
        assert!(comment.ends_with(&version()), "{comment}");
        assert_eq!(exif(without), None, "{format}: no EXIF when turned off");
        assert_eq!(pixels(with), pixels(without), "{format}: the EXIF block changes no pixel");
    }
}

#[test]
fn parameters_too_long_for_a_jpeg_are_an_error_when_asked_for_and_a_warning_by_default() {
    let engine = AbiEngine::fixtures();
    // 40,000 characters are 80,000 bytes of UTF-16: more than a JPEG's 64 KiB EXIF segment.
    let long = serde_json::json!({"negative_prompt": "x".repeat(40_000)});
    let reply =
        engine.generate(&request(serde_json::json!({"format": "jpeg", "embed_parameters": true}), long.clone()));
    assert_eq!(reply.status, sdxl_status::InvalidRequest, "{}", reply.json);
    assert!(reply.error.contains("data.output.embed_parameters"), "{}", reply.error);
    let reply = engine.generate(&request(serde_json::json!({"format": "jpeg"}), long.clone()));
    let warnings = reply.json["warnings"].to_string();
    assert!(warnings.contains("data.output.embed_parameters"), "{warnings}");
    let jpeg = &images(&reply)[0];
    use image::ImageDecoder as _;
    assert_eq!(image::codecs::jpeg::JpegDecoder::new(Cursor::new(jpeg)).unwrap().exif_metadata().unwrap(), None);
    // PNG carries them whole.
    let reply = engine.generate(&request(serde_json::json!({"format": "png", "embed_parameters": true}), long));
    assert!(png_text(&images(&reply)[0])[0].1.contains(&"x".repeat(40_000)));
}
