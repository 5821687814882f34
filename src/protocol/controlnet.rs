//! `data.controlnet` → [`ControlNetRequest`]s: which ControlNets condition the base model, on which control images,
//! how strongly and over which part of the schedule. Types were checked by [`crate::protocol::wire`]; here are the
//! rules.
//!
//! - `enabled: false` (or `controlnet: false`): no ControlNet; listed units are ignored with a warning (as
//!   `data.lora`). `enabled` absent with units listed, or `true`: every unit applies.
//! - `model_path` (required): a ControlNet under `<models_root>/controlnet/` (see [`crate::pipeline::controlnet`]).
//! - `control_image` (required): the conditioning image as the ControlNet expects it (an edge map for a canny
//!   ControlNet, a depth map for a depth one), or the photo a `preprocessor` turns into one: a file path, a
//!   `data:image/…;base64,` URL or bare base64 data. It is resized to the output size as diffusers does.
//! - `conditioning_scale`: 0 to [`MAX_CONDITIONING_SCALE`], default 1 (diffusers' `controlnet_conditioning_scale`,
//!   A1111's weight, ComfyUI's strength).
//! - `guidance_start` / `guidance_end`: the fraction of the denoising steps where the unit starts and stops
//!   applying, default 0 and 1 (diffusers' `control_guidance_start` / `control_guidance_end`, A1111's guidance
//!   start / end, ComfyUI's start / end percent).
//! - `type`: a label (`canny`, `depth`, …), echoed in the response metadata.
//! - `preprocessor`: absent, `"none"` or `{"type": "none"}`: `control_image` is used as sent. `"canny"` or
//!   `{"type": "canny", "low_threshold": 100, "high_threshold": 200}` (`name` may stand for `type`; the thresholds
//!   default to 100 and 200 as in diffusers' docs): `control_image` is a photo, and its edge map by OpenCV's
//!   `cv2.Canny(image, low_threshold, high_threshold)` ([`crate::image::canny`]), stacked to three channels, is the
//!   control image. Thresholds are gradient magnitudes `|dx| + |dy|` from 0 to [`MAX_CANNY_THRESHOLD`] (not
//!   ComfyUI's 0–1 fractions) with `low_threshold <= high_threshold`; OpenCV swaps them otherwise, sdxlrt refuses.
//!   Unknown keys in the object are warnings. Any other preprocessor (depth estimation, …) is not built in and is
//!   refused rather than ignored.
//! - `guess_mode` (on `data.controlnet`, not on a unit; default false): diffusers' `guess_mode`, which covers all
//!   the units of a call ([`guess_mode`]). Without units that apply it is ignored with a warning.

use serde_json::Value;

use crate::error::{Error, Result};
use crate::protocol::params::{ControlNetRequest, Preprocessor};
use crate::protocol::wire::{describe, WireControlNet};

/// Largest accepted `conditioning_scale` (ComfyUI's strength goes to 10 as well).
pub const MAX_CONDITIONING_SCALE: f64 = 10.0;
/// Most ControlNet units in one request.
pub const MAX_CONTROLNETS: usize = 8;

/// The units `controlnet` asks for, in request order.
pub fn controlnet_requests(
    controlnet: Option<&WireControlNet>,
    warnings: &mut Vec<String>,
) -> Result<Vec<ControlNetRequest>> {
    let Some(cn) = controlnet else { return Ok(Vec::new()) };
    let units = cn.models.clone().unwrap_or_default();
    if cn.enabled == Some(false) {
        if !units.is_empty() {
            warnings.push(format!("data.controlnet.enabled is false: {} ControlNet unit(s) ignored", units.len()));
        }
        return Ok(Vec::new());
    }
    if units.len() > MAX_CONTROLNETS {
        return Err(Error::field(
            "data.controlnet.models",
            format!("{} ControlNet units; at most {MAX_CONTROLNETS} are allowed per request", units.len()),
        ));
    }
    let mut out = Vec::with_capacity(units.len());
    for (i, u) in units.iter().enumerate() {
        let path = format!("data.controlnet.models[{i}]");
        let required = |value: &Option<String>, key: &str, what: &str| -> Result<String> {
            match value.as_deref().map(str::trim) {
                Some(v) if !v.is_empty() => Ok(v.to_owned()),
                _ => Err(Error::field(format!("{path}.{key}"), format!("missing: {what}"))),
            }
        };
        let model = required(
            &u.model_path,
            "model_path",
            "name the ControlNet (a folder or .onnx file under models_root/controlnet)",
        )?;
        let control_image = required(
            &u.control_image,
            "control_image",
            "give the control image (a file path, a data: URL or base64 image data)",
        )?;
        let conditioning_scale = match u.conditioning_scale {
            None => 1.0,
            Some(s) if s.is_finite() && (0.0..=MAX_CONDITIONING_SCALE).contains(&s) => s as f32,
            Some(s) => {
                return Err(Error::field(
                    format!("{path}.conditioning_scale"),
                    format!("must be a number from 0 to {MAX_CONDITIONING_SCALE}, got {s}"),
                ))
            }
        };
        let fraction = |key: &str, v: Option<f64>, default: f64| -> Result<f64> {
            match v {
                None => Ok(default),
                Some(f) if (0.0..=1.0).contains(&f) => Ok(f),
                Some(f) => Err(Error::field(
                    format!("{path}.{key}"),
                    format!("must be a fraction of the steps from 0 to 1, got {f}"),
                )),
            }
        };
        let guidance_start = fraction("guidance_start", u.guidance_start, 0.0)?;
        let guidance_end = fraction("guidance_end", u.guidance_end, 1.0)?;
        if guidance_start >= guidance_end {
            return Err(Error::field(
                format!("{path}.guidance_start"),
                format!("must be below guidance_end ({guidance_start} >= {guidance_end})"),
            ));
        }
        let preprocessor = preprocessor(u.preprocessor.as_ref(), &format!("{path}.preprocessor"), warnings)?;
        out.push(ControlNetRequest {
            model,
            kind: u.kind.clone().filter(|k| !k.trim().is_empty()),
            control_image,
            conditioning_scale,
            guidance_start,
            guidance_end,
            preprocessor,
            field: path,
        });
    }
    if cn.enabled == Some(true) && out.is_empty() {
        warnings
            .push("data.controlnet.enabled is true but data.controlnet.models is empty: no ControlNet applied".into());
    }
    Ok(out)
}

/// `data.controlnet.guess_mode` for the units `units` that apply: false when absent, and ignored with a warning
/// when no unit applies.
pub fn guess_mode(
    controlnet: Option<&WireControlNet>,
    units: &[ControlNetRequest],
    warnings: &mut Vec<String>,
) -> bool {
    let asked = controlnet.and_then(|cn| cn.guess_mode).unwrap_or(false);
    if asked && units.is_empty() {
        warnings.push("data.controlnet.guess_mode is ignored: no ControlNet unit applies".into());
        return false;
    }
    asked
}

/// The preprocessor `value` asks for, or `None` for "no preprocessor": absent, `""`, `"none"`, or an object whose
/// `type` (or `name`) is one of those, or an object of nulls. `"canny"` or `{"type": "canny", "low_threshold",
/// "high_threshold"}` is [`Preprocessor::Canny`] (see [`canny`]); any other name is refused as not built in.
fn preprocessor(value: Option<&Value>, field: &str, warnings: &mut Vec<String>) -> Result<Option<Preprocessor>> {
    let (name, settings) = match value {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) => (s.as_str(), None),
        Some(Value::Object(map)) => match map.get("type").or_else(|| map.get("name")) {
            None | Some(Value::Null) if map.values().all(Value::is_null) => return Ok(None),
            Some(Value::String(s)) => (s.as_str(), Some(map)),
            _ => {
                return Err(Error::field(field, "expected a preprocessor name or an object with a string `type`"));
            }
        },
        Some(other) => {
            return Err(Error::field(field, format!("expected a preprocessor name, got {}", describe(other))));
        }
    };
    match name.trim().to_ascii_lowercase().as_str() {
        "" | "none" => Ok(None),
        "canny" => canny(settings, field, warnings).map(Some),
        _ => Err(Error::unsupported(
            field,
            format!(
                "preprocessor {name:?} is not built in (the built-in one is \"canny\"): send the control image \
                 already preprocessed (e.g. a depth map for a depth ControlNet) with preprocessor \"none\""
            ),
        )),
    }
}

/// Keys of a `{"type": "canny", …}` preprocessor object.
const CANNY_KEYS: &[&str] = &["type", "name", "low_threshold", "high_threshold"];

/// Largest accepted Canny threshold. The largest gradient `|dx| + |dy|` of an 8-bit image is 2040, so any threshold
/// from there on finds no edges; larger numbers are most likely a mistake.
pub const MAX_CANNY_THRESHOLD: f64 = 10_000.0;

/// `cv2.Canny`'s thresholds from the preprocessor object `settings` (`None`: the bare name `"canny"`), default 100
/// and 200 as diffusers' docs and ONNX Runtime's SDXL demo call it. Unknown keys are warnings, as elsewhere in the
/// request. `low_threshold > high_threshold` is refused, where OpenCV would silently swap them.
fn canny(
    settings: Option<&serde_json::Map<String, Value>>,
    field: &str,
    warnings: &mut Vec<String>,
) -> Result<Preprocessor> {
    let number = |key: &str, default: f64| -> Result<f64> {
        let path = format!("{field}.{key}");
        match settings.and_then(|m| m.get(key)) {
            None | Some(Value::Null) => Ok(default),
            Some(Value::Number(n)) => match n.as_f64() {
                Some(v) if v.is_finite() && (0.0..=MAX_CANNY_THRESHOLD).contains(&v) => Ok(v),
                _ => Err(Error::field(
                    path,
                    format!("must be a gradient threshold from 0 to {MAX_CANNY_THRESHOLD}, got {n}"),
                )),
            },
            Some(other) => Err(Error::field(path, format!("must be a number, got {}", describe(other)))),
        }
    };
    let low_threshold = number("low_threshold", 100.0)?;
    let high_threshold = number("high_threshold", 200.0)?;
    if low_threshold > high_threshold {
        return Err(Error::field(
            format!("{field}.low_threshold"),
            format!("must not exceed high_threshold ({low_threshold} > {high_threshold})"),
        ));
    }
    if let Some(map) = settings {
        for key in map.keys().filter(|k| !CANNY_KEYS.contains(&k.as_str())) {
            warnings.push(format!("ignored unknown field {field}.{key}"));
        }
    }
    Ok(Preprocessor::Canny { low_threshold, high_threshold })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::wire::WireControlNetUnit;
    use serde_json::json;

    fn unit() -> WireControlNetUnit {
        WireControlNetUnit {
            model_path: Some("canny".into()),
            control_image: Some("edges.png".into()),
            ..Default::default()
        }
    }

    fn requests(
        enabled: Option<bool>,
        units: Vec<WireControlNetUnit>,
    ) -> (Result<Vec<ControlNetRequest>>, Vec<String>) {
        let mut warnings = Vec::new();
        let cn = WireControlNet { enabled, models: Some(units), guess_mode: None };
        (controlnet_requests(Some(&cn), &mut warnings), warnings)
    }

    fn canny(preprocessor: Value) -> WireControlNetUnit {
        WireControlNetUnit { preprocessor: Some(preprocessor), ..unit() }
    }

    fn failing_field(u: WireControlNetUnit) -> (String, String) {
        match requests(None, vec![u]).0 {
            Err(Error::InvalidField { field, message }) | Err(Error::Unsupported { field, message }) => {
                (field, message)
            }
            other => panic!("expected a field error, got {other:?}"),
        }
    }

    #[test]
    fn defaults_are_diffusers_defaults() {
        let (r, w) = requests(None, vec![unit()]);
        let r = r.unwrap();
        assert!(w.is_empty());
        assert_eq!(r.len(), 1);
        let u = &r[0];
        assert_eq!((u.model.as_str(), u.control_image.as_str()), ("canny", "edges.png"));
        assert_eq!((u.conditioning_scale, u.guidance_start, u.guidance_end), (1.0, 0.0, 1.0));
        assert_eq!(u.kind, None);
        assert_eq!(u.preprocessor, None);
        assert_eq!(u.field, "data.controlnet.models[0]");
    }

    #[test]
    fn disabled_blocks_ignore_their_units_with_a_warning() {
        let (r, w) = requests(Some(false), vec![unit(), WireControlNetUnit::default()]);
        assert!(r.unwrap().is_empty());
        assert_eq!(w, ["data.controlnet.enabled is false: 2 ControlNet unit(s) ignored"]);
        let (r, w) = requests(Some(true), vec![]);
        assert!(r.unwrap().is_empty());
        assert!(w[0].contains("models is empty"), "{w:?}");
        assert!(controlnet_requests(None, &mut Vec::new()).unwrap().is_empty());
    }

    #[test]
    fn bad_units_name_their_field() {
        let cases: Vec<(WireControlNetUnit, &str, &str)> = vec![
            (WireControlNetUnit { model_path: None, ..unit() }, "model_path", "missing"),
            (WireControlNetUnit { model_path: Some(" ".into()), ..unit() }, "model_path", "missing"),
            (WireControlNetUnit { control_image: None, ..unit() }, "control_image", "missing"),
            (WireControlNetUnit { conditioning_scale: Some(-0.1), ..unit() }, "conditioning_scale", "from 0 to 10"),
            (WireControlNetUnit { conditioning_scale: Some(11.0), ..unit() }, "conditioning_scale", "from 0 to 10"),
            (WireControlNetUnit { guidance_start: Some(1.5), ..unit() }, "guidance_start", "from 0 to 1"),
            (WireControlNetUnit { guidance_end: Some(-1.0), ..unit() }, "guidance_end", "from 0 to 1"),
            (
                WireControlNetUnit { guidance_start: Some(0.6), guidance_end: Some(0.6), ..unit() },
                "guidance_start",
                "below guidance_end",
            ),
            (WireControlNetUnit { preprocessor: Some(Value::from("depth")), ..unit() }, "preprocessor", "not built in"),
            (
                WireControlNetUnit { preprocessor: Some(serde_json::json!({"type": "depth_midas"})), ..unit() },
                "preprocessor",
                "not built in",
            ),
            (WireControlNetUnit { preprocessor: Some(Value::from(3)), ..unit() }, "preprocessor", "expected"),
            (canny(json!({"type": "canny", "low_threshold": -1})), "preprocessor.low_threshold", "from 0 to 10000"),
            (canny(json!({"type": "canny", "high_threshold": 1e5})), "preprocessor.high_threshold", "from 0 to 10000"),
            (canny(json!({"type": "canny", "low_threshold": "100"})), "preprocessor.low_threshold", "must be a number"),
            (
                canny(json!({"name": "canny", "high_threshold": true})),
                "preprocessor.high_threshold",
                "must be a number",
            ),
            (
                canny(json!({"type": "canny", "low_threshold": 300, "high_threshold": 200})),
                "preprocessor.low_threshold",
                "must not exceed high_threshold (300 > 200)",
            ),
            (canny(json!({"type": "canny", "low_threshold": 250})), "preprocessor.low_threshold", "(250 > 200)"),
            (canny(json!({"low_threshold": 50})), "preprocessor", "string `type`"),
        ];
        for (u, key, needle) in cases {
            let (field, message) = failing_field(u);
            assert_eq!(field, format!("data.controlnet.models[0].{key}"));
            assert!(message.contains(needle), "{key}: {message}");
        }
        let (r, _) = requests(None, vec![unit(); MAX_CONTROLNETS + 1]);
        assert!(matches!(r, Err(Error::InvalidField { field, .. }) if field == "data.controlnet.models"));
    }

    #[test]
    fn guess_mode_is_off_by_default_and_ignored_with_a_warning_without_units() {
        let cn = |enabled: Option<bool>, units: Vec<WireControlNetUnit>, guess_mode: Option<bool>| WireControlNet {
            enabled,
            models: Some(units),
            guess_mode,
        };
        let run = |wire: WireControlNet| {
            let mut warnings = Vec::new();
            let units = controlnet_requests(Some(&wire), &mut warnings).unwrap();
            (guess_mode(Some(&wire), &units, &mut warnings), warnings)
        };
        assert_eq!(run(cn(None, vec![unit()], None)), (false, vec![]));
        assert_eq!(run(cn(None, vec![unit()], Some(false))), (false, vec![]));
        assert_eq!(run(cn(Some(true), vec![unit(), unit()], Some(true))), (true, vec![]));
        let (on, w) = run(cn(Some(false), vec![unit()], Some(true)));
        assert!(!on);
        assert_eq!(w.last().unwrap(), "data.controlnet.guess_mode is ignored: no ControlNet unit applies");
        assert!(!guess_mode(None, &[], &mut Vec::new()));
    }

    #[test]
    fn no_preprocessor_in_any_spelling_is_accepted() {
        for p in [
            Value::Null,
            Value::from(""),
            Value::from("none"),
            Value::from("None"),
            serde_json::json!({"type": "none"}),
            serde_json::json!({"name": "none", "low_threshold": 100}),
            serde_json::json!({}),
        ] {
            let u = WireControlNetUnit { preprocessor: Some(p.clone()), ..unit() };
            assert!(requests(None, vec![u]).0.is_ok(), "{p}");
        }
    }

    #[test]
    fn canny_takes_diffusers_default_thresholds_or_the_requested_ones() {
        let parsed = |p: Value| {
            let (r, w) = requests(None, vec![canny(p)]);
            (r.unwrap()[0].preprocessor, w)
        };
        let defaults = Some(Preprocessor::Canny { low_threshold: 100.0, high_threshold: 200.0 });
        for p in [Value::from("canny"), Value::from(" Canny "), json!({"type": "canny"}), json!({"name": "CANNY"})] {
            assert_eq!(parsed(p.clone()), (defaults, vec![]), "{p}");
        }
        let (p, w) = parsed(json!({"type": "canny", "low_threshold": 0, "high_threshold": 0, "blur": 3}));
        assert_eq!(p, Some(Preprocessor::Canny { low_threshold: 0.0, high_threshold: 0.0 }));
        assert_eq!(w, ["ignored unknown field data.controlnet.models[0].preprocessor.blur"]);
        let (p, _) = parsed(json!({"type": "canny", "low_threshold": 50.5, "high_threshold": null}));
        assert_eq!(p, Some(Preprocessor::Canny { low_threshold: 50.5, high_threshold: 200.0 }));
        let (p, _) = parsed(json!({"type": "canny", "low_threshold": 300, "high_threshold": 600}));
        assert_eq!(p, Some(Preprocessor::Canny { low_threshold: 300.0, high_threshold: 600.0 }));
    }

    #[test]
    fn unknown_preprocessors_are_refused_naming_canny_as_the_built_in_one() {
        let (field, message) = failing_field(canny(json!({"type": "openpose"})));
        assert_eq!(field, "data.controlnet.models[0].preprocessor");
        assert!(message.contains("\"openpose\" is not built in") && message.contains("\"canny\""), "{message}");
        assert!(matches!(requests(None, vec![canny(Value::from("hed"))]).0, Err(Error::Unsupported { .. })));
    }
}
