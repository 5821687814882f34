//! `data.hires` → [`HiresParams`]: A1111's "Hires. fix" — text-to-image at the request's size, the result upscaled
//! to a target size, then an image-to-image pass there (`modules/processing.py`,
//! `StableDiffusionProcessingTxt2Img.sample_hr_pass`). Types were checked by [`crate::protocol::wire`]; here are the
//! rules.
//!
//! - `enabled: false` (or `hires: false`, null, absent): one pass; the other keys are not checked (the C# binding
//!   always sends them). `enabled: true`, or `enabled` absent with any other key given: two passes.
//! - The target: `scale` (A1111's `hr_scale`, from 1 to [`MAX_HIRES_SCALE`], default [`DEFAULT_HIRES_SCALE`]) or
//!   `width` / `height` (A1111's `hr_resize_x` / `hr_resize_y`; positive multiples of 8), not both. A scaled side
//!   is `int(side × scale)` (A1111) rounded down to a multiple of 8 (A1111's latent path interpolates to
//!   `target // 8` latents; the UNet needs whole latents in every path); with only `width` or only `height` the
//!   other side keeps the first pass's aspect ratio, `given × other // side` (A1111), rounded down the same way.
//!   With both, the latents or the image are stretched to exactly that size (ComfyUI's latent upscale with
//!   `crop: disabled`; A1111 crops to the first pass's aspect ratio instead). The target obeys the engine's size
//!   limits as `data.dimensions` does.
//! - `upscaler` (default `latent`, A1111's default): `latent` (A1111's "Latent": torch's bilinear
//!   `F.interpolate`, `antialias=False`), `latent-nearest` ("Latent (nearest)"), `latent-nearest-exact` ("Latent
//!   (nearest-exact)"), `lanczos` (decode, Pillow's Lanczos, encode) or an ONNX upscaler model's name, resolved as
//!   `data.output.upscale.model` is (decode, the model's passes, a Lanczos resize to the target). Other `latent…`
//!   names (A1111's antialiased and bicubic latent modes) are refused.
//! - `strength` (A1111's denoising strength; 0–1, default [`DEFAULT_HIRES_STRENGTH`], A1111's UI default) and
//!   `steps` (A1111's `hr_second_pass_steps`: 0 or absent = the first pass's steps): the second pass runs
//!   `int(steps × strength)` steps, as image-to-image does; one that runs none is an error.
//! - `controlnet` (sd-webui-controlnet's `hr_option`, for all the request's `data.controlnet` units at once):
//!   `both` (default, "Both"), `first` ("Low res only") or `second` ("High res only"), case-insensitive, A1111's
//!   display names accepted. With ControlNet units the first pass is diffusers'
//!   `StableDiffusionXLControlNetPipeline` at the request's size and the second its
//!   `StableDiffusionXLControlNetImg2ImgPipeline` at the target size, each control image resized to that size from
//!   the image as sent (after its preprocessor), not from the first pass's copy — sd-webui-controlnet's
//!   `get_control` (`scripts/controlnet.py`) runs the preprocessor once and makes the low- and high-resolution
//!   control images from that one map with `detectmap_proc(detected_map, …, h, w)` and `(…, hr_y, hr_x)`. A pass
//!   a unit sits out gets no residuals from it (`ParamBase.disabled_by_hr_option` in `scripts/hook.py`). Without
//!   units the key is ignored (with a warning).
//! - Refused with `data.init_image` (and so a mask) and `data.models.refiner` (not built).

use crate::error::{Error, Result};
use crate::protocol::normalize::img2img_steps;
use crate::protocol::params::{HiresControlNet, HiresParams, HiresTarget, HiresUpscaler, LatentInterpolation};
use crate::protocol::wire::WireHires;

/// `scale` when the request gives no target (A1111's `hr_scale` default).
pub const DEFAULT_HIRES_SCALE: f64 = 2.0;
/// Largest accepted `scale` (the size limits usually bind first).
pub const MAX_HIRES_SCALE: f64 = 8.0;
/// `strength` when the request leaves it out: A1111's txt2img "Denoising strength" slider default (its API's
/// `StableDiffusionProcessingTxt2Img.denoising_strength` defaults to 0.75).
pub const DEFAULT_HIRES_STRENGTH: f64 = 0.7;
/// The `controlnet` choices, as the request spells them (A1111's display names are accepted too).
pub const HIRES_CONTROLNET_CHOICES: [&str; 3] = ["both", "first", "second"];
/// The upscaler names built in, as the request spells them; anything else names an upscaler model.
pub const BUILT_IN_UPSCALERS: [&str; 4] = ["latent", "latent-nearest", "latent-nearest-exact", "lanczos"];

/// The second pass `hires` asks for, if any. `steps` is the first pass's `num_inference_steps` and `max_steps`
/// the engine's limit.
pub fn hires_params(hires: Option<&WireHires>, steps: u32, max_steps: u32) -> Result<Option<HiresParams>> {
    let Some(h) = hires else { return Ok(None) };
    let given = h.scale.is_some()
        || h.width.is_some()
        || h.height.is_some()
        || h.upscaler.is_some()
        || h.strength.is_some()
        || h.steps.is_some()
        || h.controlnet.is_some();
    if !h.enabled.unwrap_or(given) {
        return Ok(None);
    }
    let side = |field: &str, v: Option<i64>| -> Result<Option<u32>> {
        match v {
            None => Ok(None),
            Some(v) if v > 0 && v % 8 == 0 && v <= i64::from(u32::MAX) => Ok(Some(v as u32)),
            Some(v) => Err(Error::field(field, format!("must be a positive multiple of 8 (pixels), got {v}"))),
        }
    };
    let width = side("data.hires.width", h.width)?;
    let height = side("data.hires.height", h.height)?;
    let target = match (h.scale, width.is_some() || height.is_some()) {
        (Some(_), true) => {
            return Err(Error::field(
                "data.hires.scale",
                "give either scale or width/height for the second pass's size, not both",
            ))
        }
        (Some(s), false) if s.is_finite() && (1.0..=MAX_HIRES_SCALE).contains(&s) => HiresTarget::Scale(s),
        (Some(s), false) => {
            return Err(Error::field(
                "data.hires.scale",
                format!("must be a number from 1 to {MAX_HIRES_SCALE} (times the width and height), got {s}"),
            ))
        }
        (None, true) => HiresTarget::Size { width, height },
        (None, false) => HiresTarget::Scale(DEFAULT_HIRES_SCALE),
    };
    let upscaler = match h.upscaler.as_deref().map(str::trim) {
        None => HiresUpscaler::Latent(LatentInterpolation::Bilinear),
        Some("") => return Err(Error::field("data.hires.upscaler", format!("is empty: {}", upscaler_choices()))),
        Some(name) => upscaler(name)?,
    };
    let strength = match h.strength {
        None => DEFAULT_HIRES_STRENGTH,
        Some(s) if (0.0..=1.0).contains(&s) => s,
        Some(s) => return Err(Error::field("data.hires.strength", format!("must be a number from 0 to 1, got {s}"))),
    };
    let second_steps = match h.steps {
        None | Some(0) => None,
        Some(s) if s >= 1 && s <= i64::from(max_steps) => Some(s as u32),
        Some(s) => {
            return Err(Error::field(
                "data.hires.steps",
                format!("must be 0 (the first pass's steps) or an integer from 1 to {max_steps}, got {s}"),
            ))
        }
    };
    let run = second_steps.unwrap_or(steps);
    if img2img_steps(run, strength) == 0 {
        return Err(Error::field(
            "data.hires.strength",
            format!(
                "{strength} leaves none of the second pass's {run} steps to run: it runs int(steps × strength) \
                 steps, so raise strength or data.hires.steps"
            ),
        ));
    }
    let controlnet = match h.controlnet.as_deref() {
        None => HiresControlNet::Both,
        Some(name) => HiresControlNet::from_name(name).ok_or_else(|| {
            Error::field(
                "data.hires.controlnet",
                format!(
                    "{name:?} is not a choice: use \"both\" (both passes), \"first\" (the text-to-image pass only) or \
                     \"second\" (the hires pass only); A1111's \"Both\", \"Low res only\" and \"High res only\" work too"
                ),
            )
        })?,
    };
    Ok(Some(HiresParams { target, upscaler, strength, steps: second_steps, controlnet }))
}

impl HiresControlNet {
    /// The choice `name` names (trimmed, case-insensitive): one of [`HIRES_CONTROLNET_CHOICES`] or A1111's
    /// display name (sd-webui-controlnet's `HiResFixOption` values); `None` for anything else.
    pub fn from_name(name: &str) -> Option<Self> {
        match name.trim().to_ascii_lowercase().as_str() {
            "both" => Some(HiresControlNet::Both),
            "first" | "low res only" => Some(HiresControlNet::First),
            "second" | "high res only" => Some(HiresControlNet::Second),
            _ => None,
        }
    }

    /// The name the reply's metadata gives it: `both`, `first` or `second`.
    pub fn name(self) -> &'static str {
        match self {
            HiresControlNet::Both => "both",
            HiresControlNet::First => "first",
            HiresControlNet::Second => "second",
        }
    }

    /// Whether the ControlNet units condition the first (text-to-image) pass.
    pub fn in_first_pass(self) -> bool {
        self != HiresControlNet::Second
    }

    /// Whether the ControlNet units condition the second (hires) pass.
    pub fn in_second_pass(self) -> bool {
        self != HiresControlNet::First
    }
}

/// The upscaler `name` (case-insensitive for the built-in ones; A1111's display names are accepted too).
fn upscaler(name: &str) -> Result<HiresUpscaler> {
    let lower = name.to_ascii_lowercase();
    Ok(match lower.as_str() {
        "latent" | "latent-bilinear" => HiresUpscaler::Latent(LatentInterpolation::Bilinear),
        "latent-nearest" | "latent (nearest)" => HiresUpscaler::Latent(LatentInterpolation::Nearest),
        "latent-nearest-exact" | "latent (nearest-exact)" => HiresUpscaler::Latent(LatentInterpolation::NearestExact),
        "lanczos" => HiresUpscaler::Lanczos,
        other if other.starts_with("latent") => {
            return Err(Error::field(
                "data.hires.upscaler",
                format!("{name:?} is not built (no antialiased or bicubic latent upscale); {}", upscaler_choices()),
            ))
        }
        _ => HiresUpscaler::Model(name.to_owned()),
    })
}

fn upscaler_choices() -> String {
    format!(
        "use one of {} or the name of an ONNX upscaler model under models_root/upscalers",
        BUILT_IN_UPSCALERS.iter().map(|n| format!("\"{n}\"")).collect::<Vec<_>>().join(", ")
    )
}

impl HiresUpscaler {
    /// The name the reply's metadata gives it: a built-in name or the model's.
    pub fn name(&self) -> &str {
        match self {
            HiresUpscaler::Latent(LatentInterpolation::Bilinear) => "latent",
            HiresUpscaler::Latent(LatentInterpolation::Nearest) => "latent-nearest",
            HiresUpscaler::Latent(LatentInterpolation::NearestExact) => "latent-nearest-exact",
            HiresUpscaler::Lanczos => "lanczos",
            HiresUpscaler::Model(name) => name,
        }
    }

    /// The name A1111's UI and infotext give it (`Hires upscaler`), which [`hires_params`] accepts back.
    pub fn a1111_name(&self) -> &str {
        match self {
            HiresUpscaler::Latent(LatentInterpolation::Bilinear) => "Latent",
            HiresUpscaler::Latent(LatentInterpolation::Nearest) => "Latent (nearest)",
            HiresUpscaler::Latent(LatentInterpolation::NearestExact) => "Latent (nearest-exact)",
            HiresUpscaler::Lanczos => "Lanczos",
            HiresUpscaler::Model(name) => name,
        }
    }
}

impl HiresParams {
    /// The second pass's `(width, height)` for a first pass of `width` × `height`, each side rounded down to a
    /// multiple of `multiple` (8 for SDXL: whole latents). Errors name `data.hires.scale` / `width` / `height`
    /// when a side would be under `multiple`.
    pub fn target_size(&self, (width, height): (u32, u32), multiple: u32) -> Result<(u32, u32)> {
        let m = multiple.max(1);
        let down = |v: u64| v - v % u64::from(m);
        let (w, h, field) = match self.target {
            HiresTarget::Scale(s) => {
                (down((f64::from(width) * s) as u64), down((f64::from(height) * s) as u64), "data.hires.scale")
            }
            HiresTarget::Size { width: Some(tw), height: Some(th) } => (down(tw.into()), down(th.into()), "data.hires"),
            HiresTarget::Size { width: Some(tw), height: None } => {
                (down(tw.into()), down(u64::from(tw) * u64::from(height) / u64::from(width.max(1))), "data.hires.width")
            }
            HiresTarget::Size { width: None, height: Some(th) } => (
                down(u64::from(th) * u64::from(width) / u64::from(height.max(1))),
                down(th.into()),
                "data.hires.height",
            ),
            HiresTarget::Size { width: None, height: None } => (width.into(), height.into(), "data.hires"),
        };
        if w == 0 || h == 0 || w > u64::from(u32::MAX) || h > u64::from(u32::MAX) {
            return Err(Error::field(
                field,
                format!("gives a {w}×{h} second pass from {width}×{height}; each side needs at least {m} pixels"),
            ));
        }
        Ok((w as u32, h as u32))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(v: serde_json::Value) -> WireHires {
        let request = serde_json::json!({"prompt": "x", "hires": v});
        let mut warnings = Vec::new();
        crate::protocol::wire::WireRequest::from_value(&request, &mut warnings).unwrap().data.hires.unwrap()
    }

    fn params(v: serde_json::Value) -> Result<Option<HiresParams>> {
        hires_params(Some(&wire(v)), 20, 500)
    }

    fn field_of(r: Result<Option<HiresParams>>) -> String {
        match r {
            Err(Error::InvalidField { field, .. }) => field,
            other => panic!("expected InvalidField, got {other:?}"),
        }
    }

    #[test]
    fn disabled_or_absent_blocks_ask_for_one_pass_and_are_not_checked() {
        assert_eq!(hires_params(None, 20, 500).unwrap(), None);
        for v in [
            serde_json::json!(false),
            serde_json::json!({}),
            serde_json::json!({"enabled": false, "scale": 99, "upscaler": "latent (bicubic)", "strength": 7}),
        ] {
            assert_eq!(params(v.clone()).unwrap(), None, "{v}");
        }
    }

    #[test]
    fn defaults_are_a1111s_latent_scale_2_strength_0_7_and_the_first_passs_steps() {
        for v in [serde_json::json!(true), serde_json::json!({"enabled": true})] {
            let p = params(v).unwrap().unwrap();
            assert_eq!(p.target, HiresTarget::Scale(2.0));
            assert_eq!(p.upscaler, HiresUpscaler::Latent(LatentInterpolation::Bilinear));
            assert_eq!((p.strength, p.steps), (0.7, None));
        }
        // Without `enabled`, any key asks for the second pass; steps 0 is the first pass's.
        let p = params(serde_json::json!({"steps": 0, "upscaler": "Lanczos"})).unwrap().unwrap();
        assert_eq!((p.upscaler, p.steps), (HiresUpscaler::Lanczos, None));
    }

    #[test]
    fn upscaler_names_are_built_in_modes_or_model_names() {
        for (name, want) in [
            ("latent", HiresUpscaler::Latent(LatentInterpolation::Bilinear)),
            ("Latent", HiresUpscaler::Latent(LatentInterpolation::Bilinear)),
            ("latent-nearest", HiresUpscaler::Latent(LatentInterpolation::Nearest)),
            ("Latent (nearest-exact)", HiresUpscaler::Latent(LatentInterpolation::NearestExact)),
            ("lanczos", HiresUpscaler::Lanczos),
            (" 4x-UltraSharp ", HiresUpscaler::Model("4x-UltraSharp".into())),
        ] {
            let p = params(serde_json::json!({"upscaler": name})).unwrap().unwrap();
            assert_eq!(p.upscaler, want, "{name}");
        }
        assert_eq!(HiresUpscaler::Model("x2".into()).name(), "x2");
        assert_eq!(HiresUpscaler::Latent(LatentInterpolation::NearestExact).name(), "latent-nearest-exact");
    }

    #[test]
    fn controlnet_passes_are_both_by_default_and_accept_a1111s_names() {
        assert_eq!(params(serde_json::json!(true)).unwrap().unwrap().controlnet, HiresControlNet::Both);
        for (name, want) in [
            ("both", HiresControlNet::Both),
            ("Both", HiresControlNet::Both),
            ("first", HiresControlNet::First),
            ("Low res only", HiresControlNet::First),
            (" SECOND ", HiresControlNet::Second),
            ("High res only", HiresControlNet::Second),
        ] {
            let p = params(serde_json::json!({"controlnet": name})).unwrap().unwrap();
            assert_eq!(p.controlnet, want, "{name}");
            assert_eq!(HiresControlNet::from_name(want.name()), Some(want));
        }
        assert!(HiresControlNet::First.in_first_pass() && !HiresControlNet::First.in_second_pass());
        assert!(!HiresControlNet::Second.in_first_pass() && HiresControlNet::Second.in_second_pass());
        assert!(HiresControlNet::Both.in_first_pass() && HiresControlNet::Both.in_second_pass());
    }

    #[test]
    fn every_invalid_field_is_named() {
        for (v, field) in [
            (serde_json::json!({"scale": 0.5}), "data.hires.scale"),
            (serde_json::json!({"scale": 8.5}), "data.hires.scale"),
            (serde_json::json!({"scale": 2, "width": 128}), "data.hires.scale"),
            (serde_json::json!({"width": 100}), "data.hires.width"),
            (serde_json::json!({"width": 0}), "data.hires.width"),
            (serde_json::json!({"height": -8}), "data.hires.height"),
            (serde_json::json!({"upscaler": ""}), "data.hires.upscaler"),
            (serde_json::json!({"upscaler": "Latent (bicubic antialiased)"}), "data.hires.upscaler"),
            (serde_json::json!({"strength": 1.5}), "data.hires.strength"),
            (serde_json::json!({"strength": -0.1}), "data.hires.strength"),
            (serde_json::json!({"strength": 0.04}), "data.hires.strength"),
            (serde_json::json!({"steps": 4, "strength": 0.2}), "data.hires.strength"),
            (serde_json::json!({"steps": -1}), "data.hires.steps"),
            (serde_json::json!({"steps": 501}), "data.hires.steps"),
            (serde_json::json!({"controlnet": "both passes"}), "data.hires.controlnet"),
            (serde_json::json!({"controlnet": ""}), "data.hires.controlnet"),
        ] {
            assert_eq!(field_of(params(v.clone())), field, "{v}");
        }
    }

    #[test]
    fn target_sizes_truncate_then_round_down_to_whole_latents() {
        let at = |v: serde_json::Value, base: (u32, u32)| params(v).unwrap().unwrap().target_size(base, 8);
        // int(64 × 1.5) = 96; int(72 × 1.5) = 108 → 104 (A1111's target // 8 latents).
        assert_eq!(at(serde_json::json!({"scale": 1.5}), (64, 72)).unwrap(), (96, 104));
        assert_eq!(at(serde_json::json!({"enabled": true}), (64, 48)).unwrap(), (128, 96));
        // One side given: the other keeps the aspect ratio, given × other // side, rounded down.
        assert_eq!(at(serde_json::json!({"width": 104}), (64, 48)).unwrap(), (104, 72));
        assert_eq!(at(serde_json::json!({"height": 80}), (64, 48)).unwrap(), (104, 80));
        // Both: exactly that size (stretched).
        assert_eq!(at(serde_json::json!({"width": 96, "height": 128}), (64, 64)).unwrap(), (96, 128));
        // A side under 8 pixels is an error naming the side given.
        let r = params(serde_json::json!({"width": 8})).unwrap().unwrap().target_size((64, 16), 8);
        assert_eq!(field_of(r.map(|_| None)), "data.hires.width");
    }

    #[test]
    fn requests_carry_hires_and_wrong_types_name_the_inner_field() {
        use crate::protocol::normalize::{parse_request, RequestLimits};
        let parse = |hires: serde_json::Value| {
            let request = serde_json::json!({"prompt": "a cat", "hires": hires});
            parse_request(&request.to_string(), &RequestLimits::default())
        };
        let p = parse(serde_json::json!({"enabled": true, "scale": 1.5, "steps": 3.0, "denoise": 0.5})).unwrap();
        let h = p.params.hires.unwrap();
        assert_eq!((h.target, h.steps), (HiresTarget::Scale(1.5), Some(3)));
        assert_eq!(p.warnings, ["ignored unknown field data.hires.denoise"]);
        for (hires, field) in [
            (serde_json::json!({"scale": "2"}), "data.hires.scale"),
            (serde_json::json!({"steps": 2.5}), "data.hires.steps"),
            (serde_json::json!({"enabled": "yes"}), "data.hires.enabled"),
            (serde_json::json!({"upscaler": 4}), "data.hires.upscaler"),
            (serde_json::json!({"controlnet": true}), "data.hires.controlnet"),
            (serde_json::json!([true]), "data.hires"),
            (serde_json::json!(2), "data.hires"),
        ] {
            let r = parse(hires.clone()).map(|p| p.params.hires);
            assert_eq!(field_of(r), field, "{hires}");
        }
    }
}
