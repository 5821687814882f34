//! `data.output.upscale` → [`UpscaleParams`]: whether the request asks for upscaling, with which model and
//! factor. Types were checked by [`crate::protocol::wire`]; here are the rules.
//!
//! - `enabled: false` (or `upscale: false`, null, absent): no upscaling; the other keys are not checked, since the
//!   C# binding always sends them.
//! - `enabled: true`, or `enabled` absent with a `factor` or `model` given: upscaling.
//! - `factor`: an integer from 1 to [`MAX_UPSCALE_FACTOR`], default [`DEFAULT_UPSCALE_FACTOR`]. The image ends
//!   exactly `factor` times wider and taller whatever the model's own scale (see [`crate::pipeline::upscale`]).
//! - `model`: required, as sdxlrt has no built-in upscaler. The one exception is `factor: 1` without a model,
//!   which asks for nothing: the image is kept as generated and a warning says so.

use crate::error::{Error, Result};
use crate::protocol::params::UpscaleParams;
use crate::protocol::wire::WireUpscale;

/// `factor` when the request leaves it out (the seed's C# default).
pub const DEFAULT_UPSCALE_FACTOR: u32 = 2;
/// Largest accepted `factor` (A1111's extras tab goes to 8 too).
pub const MAX_UPSCALE_FACTOR: u32 = 8;

/// The upscaling `upscale` asks for, if any; `warnings` gets a note when a block asks for nothing.
pub fn upscale_params(upscale: Option<&WireUpscale>, warnings: &mut Vec<String>) -> Result<Option<UpscaleParams>> {
    let Some(u) = upscale else { return Ok(None) };
    let model = u.model.as_deref().map(str::trim).filter(|m| !m.is_empty());
    let requested = match u.enabled {
        Some(enabled) => enabled,
        None => u.factor.is_some() || model.is_some(),
    };
    if !requested {
        return Ok(None);
    }
    let factor = match u.factor {
        None => DEFAULT_UPSCALE_FACTOR,
        Some(f) if (1..=i64::from(MAX_UPSCALE_FACTOR)).contains(&f) => f as u32,
        Some(f) => {
            return Err(Error::field(
                "data.output.upscale.factor",
                format!("must be an integer from 1 to {MAX_UPSCALE_FACTOR} (times the width and height), got {f}"),
            ))
        }
    };
    match model {
        Some(model) => Ok(Some(UpscaleParams { model: model.to_owned(), factor })),
        None if factor == 1 => {
            warnings.push("data.output.upscale: factor 1 without a model leaves the image as generated".into());
            Ok(None)
        }
        None => Err(Error::field(
            "data.output.upscale.model",
            "missing: sdxlrt has no built-in upscaler; name an ONNX super-resolution model under \
             models_root/upscalers (e.g. \"4x-UltraSharp\" for upscalers/4x-UltraSharp.onnx), or set enabled false",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(enabled: Option<bool>, factor: Option<i64>, model: Option<&str>) -> WireUpscale {
        WireUpscale { enabled, factor, model: model.map(str::to_owned) }
    }

    fn params(w: WireUpscale) -> (Result<Option<UpscaleParams>>, Vec<String>) {
        let mut warnings = Vec::new();
        (upscale_params(Some(&w), &mut warnings), warnings)
    }

    fn field_of(r: Result<Option<UpscaleParams>>) -> String {
        match r {
            Err(Error::InvalidField { field, .. }) => field,
            other => panic!("expected InvalidField, got {other:?}"),
        }
    }

    #[test]
    fn disabled_or_empty_blocks_ask_for_nothing_and_are_not_checked() {
        for w in [
            wire(Some(false), Some(2), None),
            wire(Some(false), Some(99), Some("x")),
            wire(None, None, None),
            wire(None, None, Some("  ")),
        ] {
            let (r, warnings) = params(w.clone());
            assert_eq!(r.unwrap(), None, "{w:?}");
            assert!(warnings.is_empty());
        }
        assert_eq!(upscale_params(None, &mut Vec::new()).unwrap(), None);
    }

    #[test]
    fn enabled_blocks_take_the_model_and_default_factor_2() {
        let (r, _) = params(wire(Some(true), None, Some(" 4x-UltraSharp ")));
        assert_eq!(r.unwrap(), Some(UpscaleParams { model: "4x-UltraSharp".into(), factor: 2 }));
        // Without `enabled`, a model or factor asks for upscaling.
        let (r, _) = params(wire(None, Some(8), Some("m")));
        assert_eq!(r.unwrap(), Some(UpscaleParams { model: "m".into(), factor: 8 }));
        let (r, _) = params(wire(Some(true), Some(1), Some("m")));
        assert_eq!(r.unwrap(), Some(UpscaleParams { model: "m".into(), factor: 1 }));
    }

    #[test]
    fn factors_outside_1_to_8_name_the_factor_field() {
        for f in [0, -2, 9, 1 << 40] {
            let (r, _) = params(wire(Some(true), Some(f), Some("m")));
            assert_eq!(field_of(r), "data.output.upscale.factor", "factor {f}");
        }
    }

    #[test]
    fn a_missing_model_is_an_error_unless_factor_is_1() {
        for w in [wire(Some(true), None, None), wire(None, Some(2), None), wire(Some(true), Some(4), Some(""))] {
            assert_eq!(field_of(params(w).0), "data.output.upscale.model");
        }
        let (r, warnings) = params(wire(Some(true), Some(1), None));
        assert_eq!(r.unwrap(), None);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
    }

    #[test]
    fn requests_carry_the_upscale_and_wrong_types_name_the_inner_field() {
        use crate::protocol::normalize::{parse_request, RequestLimits};
        let parse = |upscale: serde_json::Value| {
            let request = serde_json::json!({"prompt": "a cat", "output": {"upscale": upscale}});
            parse_request(&request.to_string(), &RequestLimits::default())
        };
        let p = parse(serde_json::json!({"enabled": true, "factor": 4.0, "model": "x4", "tile": 256})).unwrap();
        assert_eq!(p.params.output.upscale, Some(UpscaleParams { model: "x4".into(), factor: 4 }));
        assert_eq!(p.warnings, ["ignored unknown field data.output.upscale.tile"]);
        assert_eq!(parse(serde_json::json!(false)).unwrap().params.output.upscale, None);
        for (upscale, field) in [
            (serde_json::json!({"enabled": true, "factor": "2", "model": "m"}), "data.output.upscale.factor"),
            (serde_json::json!({"enabled": true, "factor": 2.5, "model": "m"}), "data.output.upscale.factor"),
            (serde_json::json!({"enabled": "yes", "model": "m"}), "data.output.upscale.enabled"),
            (serde_json::json!({"enabled": true, "model": 4}), "data.output.upscale.model"),
            (serde_json::json!([{"model": "m"}]), "data.output.upscale"),
            (serde_json::json!({"enabled": true, "factor": 2}), "data.output.upscale.model"),
        ] {
            let r = parse(upscale.clone()).map(|p| p.params.output.upscale);
            assert_eq!(field_of(r), field, "{upscale}");
        }
    }
}
