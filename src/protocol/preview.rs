//! `data.output.preview` → [`PreviewParams`]: whether the progress callback gets live previews, how they are made,
//! how often and of which latents. Types were checked by [`crate::protocol::wire`]; here are the rules.
//!
//! - `enabled: false` (or `preview: false`, null, absent): no previews. The other keys are still checked, so a
//!   misspelt method fails the request instead of failing later when previews are switched on.
//! - `enabled: true`, or `enabled` absent with any other key given: previews.
//! - `method`: `latent2rgb` (default) or `vae`, any case.
//! - `interval`: an integer from 1 to [`MAX_PREVIEW_INTERVAL`], default 1: a preview after every `interval`-th
//!   denoising step (`step % interval == 0`) and always after the loop's last step, so the final preview shows
//!   the finished latents.
//! - `source`: `denoised` (default) or `noisy`, any case.

use crate::error::{Error, Result};
use crate::protocol::params::{PreviewMethod, PreviewParams, PreviewSource};
use crate::protocol::wire::WirePreview;

/// Largest accepted `interval` (more than any schedule has steps).
pub const MAX_PREVIEW_INTERVAL: u32 = 10_000;

/// The previews `preview` asks for, if any.
pub fn preview_params(preview: Option<&WirePreview>) -> Result<Option<PreviewParams>> {
    let Some(p) = preview else { return Ok(None) };
    let method = match p.method.as_deref().map(str::to_ascii_lowercase).as_deref() {
        None | Some("latent2rgb") => PreviewMethod::Latent2Rgb,
        Some("vae") => PreviewMethod::Vae,
        Some(_) => {
            return Err(Error::field(
                "data.output.preview.method",
                format!(
                    "unknown preview method {:?}: use \"latent2rgb\" (fast, 1/8 size) or \"vae\" (full decode)",
                    p.method.as_deref().unwrap_or_default()
                ),
            ))
        }
    };
    let source = match p.source.as_deref().map(str::to_ascii_lowercase).as_deref() {
        None | Some("denoised") => PreviewSource::Denoised,
        Some("noisy") => PreviewSource::Noisy,
        Some(_) => {
            return Err(Error::field(
                "data.output.preview.source",
                format!(
                    "unknown preview source {:?}: use \"denoised\" (the step's estimate of the final image) or \
                     \"noisy\" (the latents after the step)",
                    p.source.as_deref().unwrap_or_default()
                ),
            ))
        }
    };
    let interval = match p.interval {
        None => 1,
        Some(n) if (1..=i64::from(MAX_PREVIEW_INTERVAL)).contains(&n) => n as u32,
        Some(n) => {
            return Err(Error::field(
                "data.output.preview.interval",
                format!(
                    "must be an integer from 1 to {MAX_PREVIEW_INTERVAL} (denoising steps between previews), got {n}"
                ),
            ))
        }
    };
    let requested = match p.enabled {
        Some(enabled) => enabled,
        None => p.method.is_some() || p.interval.is_some() || p.source.is_some(),
    };
    Ok(requested.then_some(PreviewParams { method, interval, source }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::invalid_field;

    fn wire(enabled: Option<bool>, method: Option<&str>, interval: Option<i64>, source: Option<&str>) -> WirePreview {
        WirePreview { enabled, method: method.map(Into::into), interval, source: source.map(Into::into) }
    }

    #[test]
    fn absent_or_disabled_previews_ask_for_nothing() {
        assert_eq!(preview_params(None).unwrap(), None);
        assert_eq!(preview_params(Some(&wire(Some(false), Some("vae"), Some(3), None))).unwrap(), None);
        assert_eq!(preview_params(Some(&wire(None, None, None, None))).unwrap(), None);
    }

    #[test]
    fn enabled_previews_default_to_latent2rgb_every_step_of_the_denoised_estimate() {
        let p = preview_params(Some(&wire(Some(true), None, None, None))).unwrap().unwrap();
        assert_eq!(
            p,
            PreviewParams { method: PreviewMethod::Latent2Rgb, interval: 1, source: PreviewSource::Denoised }
        );
    }

    #[test]
    fn any_key_without_enabled_turns_previews_on_and_names_parse_in_any_case() {
        let p = preview_params(Some(&wire(None, Some("VAE"), None, None))).unwrap().unwrap();
        assert_eq!(p.method, PreviewMethod::Vae);
        let p = preview_params(Some(&wire(None, None, Some(4), Some("Noisy")))).unwrap().unwrap();
        assert_eq!((p.interval, p.source), (4, PreviewSource::Noisy));
    }

    #[test]
    fn bad_values_are_errors_naming_the_field_even_when_disabled() {
        let cases = [
            (wire(Some(true), Some("taesd"), None, None), "data.output.preview.method", "taesd"),
            (wire(Some(false), Some("taesd"), None, None), "data.output.preview.method", "latent2rgb"),
            (wire(Some(true), None, Some(0), None), "data.output.preview.interval", "1 to 10000"),
            (wire(Some(true), None, Some(10_001), None), "data.output.preview.interval", "got 10001"),
            (wire(Some(true), None, None, Some("x0")), "data.output.preview.source", "\"x0\""),
        ];
        for (w, field, needle) in cases {
            let (f, message) = invalid_field(preview_params(Some(&w)));
            assert_eq!(f, field);
            assert!(message.contains(needle), "{message}");
        }
    }
}
