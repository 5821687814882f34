//! The Canny preprocessor (`data.controlnet.models[i].preprocessor: "canny"`): bit for bit OpenCV's `cv2.Canny` on
//! onnx/make_canny.py's goldens (tests/fixtures/controlnet/canny/), the engine feeding the ControlNet the same image
//! as the golden edge map sent with no preprocessor, its metadata, and its errors.

use sdxlrt::engine::Engine;
use sdxlrt::image::canny::{canny, canny_rgb};
use sdxlrt::image::source;
use sdxlrt::pipeline::NoProgress;

use crate::util::{fixtures, options_json, Golden};

fn canny_dir() -> std::path::PathBuf {
    fixtures().join("controlnet/canny")
}

/// The golden cases: (input file, low, high, edge map file).
fn cases() -> Vec<(String, f64, f64, String)> {
    let text = std::fs::read_to_string(canny_dir().join("cases.json")).expect("cases.json");
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    doc["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let s = |k: &str| c[k].as_str().unwrap().to_owned();
            (s("input"), c["low_threshold"].as_f64().unwrap(), c["high_threshold"].as_f64().unwrap(), s("edges"))
        })
        .collect()
}

fn load(name: &str) -> sdxlrt::image::RgbImage {
    let path = canny_dir().join(name);
    source::load(path.to_str().unwrap(), "test").unwrap()
}

#[test]
fn edge_maps_equal_opencv_canny_bit_for_bit_on_every_golden() {
    let cases = cases();
    assert_eq!(cases.len(), 48, "make_canny.py writes 8 inputs × 6 threshold pairs");
    let mut failures = Vec::new();
    let mut edge_pixels = 0;
    for (input, low, high, edges) in &cases {
        let image = load(input);
        // The greyscale golden decodes to three equal channels: its first channel is cv2.Canny's output.
        let want: Vec<u8> = load(edges).data.iter().step_by(3).copied().collect();
        let got = canny(&image, *low, *high);
        edge_pixels += want.iter().filter(|&&v| v == 255).count();
        if got != want {
            let differ = got.iter().zip(&want).filter(|(a, b)| a != b).count();
            failures.push(format!("{input} {low}/{high}: {differ} of {} pixels differ", want.len()));
        }
        let rgb = canny_rgb(&image, *low, *high);
        assert!(rgb.data.chunks(3).zip(&got).all(|(p, &e)| p == [e, e, e]), "{input}: channels stacked");
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ from cv2.Canny:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    assert!(edge_pixels > 2000, "the goldens exercise edges ({edge_pixels} edge pixels)");
}

fn engine() -> Engine {
    Engine::new(Some(&options_json())).expect("engine")
}

/// The ControlNet golden's request with unit 0's `control_image` and `preprocessor` replaced.
fn request_with(control_image: &std::path::Path, preprocessor: serde_json::Value) -> serde_json::Value {
    let g = Golden::load("controlnet");
    let mut r: serde_json::Value = serde_json::from_str(&g.request("tiny-sdxl", true)).unwrap();
    let unit = &mut r["data"]["controlnet"]["models"][0];
    unit["control_image"] = control_image.to_str().unwrap().into();
    unit["preprocessor"] = preprocessor;
    r
}

/// How many bytes of `a` and `b` differ (a length difference counts as all of them), for short failure messages.
fn bytes_differing(a: &[u8], b: &[u8]) -> usize {
    if a.len() != b.len() {
        return a.len().max(b.len());
    }
    a.iter().zip(b).filter(|(x, y)| x != y).count()
}

fn generate(engine: &Engine, request: &serde_json::Value) -> (serde_json::Value, Vec<u8>) {
    let outcome = engine.generate(&request.to_string(), &mut NoProgress, true);
    let reply: serde_json::Value = serde_json::from_str(&outcome.response_json).unwrap();
    assert!(outcome.error.is_none(), "{reply}");
    (reply, outcome.images[0].data.clone())
}

#[test]
fn a_photo_with_the_canny_preprocessor_gives_the_image_of_its_golden_edge_map_sent_as_is() {
    let engine = engine();
    let photo = canny_dir().join("photo_67x45.png");
    let (reply, with_canny) = generate(&engine, &request_with(&photo, "canny".into()));
    let edges = canny_dir().join("photo_67x45_100_200.png");
    let (plain_reply, from_edges) = generate(&engine, &request_with(&edges, "none".into()));
    let differ = bytes_differing(&with_canny, &from_edges);
    assert_eq!(differ, 0, "canny on the photo = cv2.Canny's edge map sent with no preprocessor");
    let unit = &reply["data"]["generated_images"][0]["metadata"]["controlnets"][0];
    assert_eq!(
        unit["preprocessor"],
        serde_json::json!({"type": "canny", "low_threshold": 100.0, "high_threshold": 200.0})
    );
    let plain_unit = &plain_reply["data"]["generated_images"][0]["metadata"]["controlnets"][0];
    assert!(plain_unit.get("preprocessor").is_none(), "{plain_unit}");
    // The photo itself, with no preprocessor, is a different control image.
    let (_, from_photo) = generate(&engine, &request_with(&photo, serde_json::Value::Null));
    assert_ne!(bytes_differing(&from_photo, &with_canny), 0, "the photo as sent is another control image");
    // Other thresholds reach the engine too.
    let custom = serde_json::json!({"type": "canny", "low_threshold": 300, "high_threshold": 600});
    let (reply, with_custom) = generate(&engine, &request_with(&photo, custom));
    let (_, from_custom_edges) =
        generate(&engine, &request_with(&canny_dir().join("photo_67x45_300_600.png"), "none".into()));
    assert_eq!(bytes_differing(&with_custom, &from_custom_edges), 0, "300/600");
    let unit = &reply["data"]["generated_images"][0]["metadata"]["controlnets"][0];
    assert_eq!(unit["preprocessor"]["low_threshold"], 300.0);
}

#[test]
fn bad_thresholds_and_unknown_preprocessors_are_errors_naming_the_field() {
    let engine = engine();
    let photo = canny_dir().join("photo_67x45.png");
    let field = "data.controlnet.models[0].preprocessor";
    let cases = [
        (
            serde_json::json!({"type": "canny", "low_threshold": -1}),
            format!("{field}.low_threshold"),
            "invalid_request",
        ),
        (
            serde_json::json!({"type": "canny", "high_threshold": "high"}),
            format!("{field}.high_threshold"),
            "invalid_request",
        ),
        (
            serde_json::json!({"type": "canny", "low_threshold": 300}),
            format!("{field}.low_threshold"),
            "invalid_request",
        ),
        (
            serde_json::json!({"type": "canny", "high_threshold": 20000}),
            format!("{field}.high_threshold"),
            "invalid_request",
        ),
        (serde_json::json!("depth_midas"), field.to_owned(), "unsupported"),
        (serde_json::json!({"type": "openpose"}), field.to_owned(), "unsupported"),
    ];
    for (preprocessor, field, code) in cases {
        let outcome = engine.generate(&request_with(&photo, preprocessor.clone()).to_string(), &mut NoProgress, false);
        let reply: serde_json::Value = serde_json::from_str(&outcome.response_json).unwrap();
        assert_eq!(reply["success"], false, "{preprocessor}");
        assert_eq!(reply["error_code"], code, "{preprocessor}: {reply}");
        let error = reply["error"].as_str().unwrap();
        assert!(error.contains(&format!("{field}:")) || error.contains(&field), "{preprocessor}: {error}");
        if code == "unsupported" {
            assert!(error.contains("\"canny\""), "the error names the built-in preprocessor: {error}");
        }
    }
    // An unknown key in the preprocessor object is a warning, and the unit runs.
    let with_extra = serde_json::json!({"type": "canny", "aperture_size": 5});
    let (reply, _) = generate(&engine, &request_with(&photo, with_extra));
    let warnings = reply["warnings"].to_string();
    assert!(warnings.contains("ignored unknown field data.controlnet.models[0].preprocessor.aperture_size"), "{reply}");
}

#[test]
fn with_padding_mask_crop_canny_runs_on_the_whole_photo_before_the_cut() {
    // Inpainting only the mask's area cuts the control image like the init image; the preprocessor sees the whole
    // image first, as diffusers' docs run cv2.Canny before calling the pipeline. The init image itself is the photo.
    let engine = engine();
    let g = Golden::load("inpaint_controlnet_crop");
    let mut r: serde_json::Value = serde_json::from_str(&g.request("tiny-sdxl", false)).unwrap();
    let init = r["data"]["init_image"].as_str().unwrap().to_owned();
    let edges = canny_rgb(&source::load(&init, "test").unwrap(), 100.0, 200.0);
    let dir = tempfile::tempdir().unwrap();
    let edges_path = dir.path().join("edges.png");
    std::fs::write(&edges_path, edges.encode(sdxlrt::protocol::params::ImageFormat::Png, 95, &[]).unwrap()).unwrap();
    let unit = &mut r["data"]["controlnet"]["models"][0];
    unit["control_image"] = init.clone().into();
    unit["preprocessor"] = "canny".into();
    let (reply, with_canny) = generate(&engine, &r);
    assert_eq!(
        reply["data"]["generated_images"][0]["metadata"]["init_image"]["mask_crop"],
        serde_json::json!([30, 1, 80, 51])
    );
    let unit = &mut r["data"]["controlnet"]["models"][0];
    unit["control_image"] = edges_path.to_str().unwrap().into();
    unit["preprocessor"] = serde_json::Value::Null;
    let (_, from_edges) = generate(&engine, &r);
    assert_eq!(bytes_differing(&with_canny, &from_edges), 0, "Canny of the whole image, then the cut");
}
