//! `scheduler/scheduler_config.json` as diffusers writes it: one struct with the diffusers field names of all ten
//! supported scheduler classes, every field optional (absent or `null` = the chosen class's default).
//!
//! Layer: schedulers (pure data; parsing a JSON string is the only I/O-like thing here). Field names and class
//! defaults are those of diffusers 0.42.1 (`@register_to_config def __init__` of each scheduler class).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// The model's `scheduler/scheduler_config.json` (or a merged request configuration), with diffusers' field names.
///
/// Every known field is `None` when absent or `null`; the scheduler class applies its own default then (diffusers'
/// class defaults differ: `beta_start` is 0.0001 for Euler and 0.00085 for Heun). Keys no supported class knows are
/// kept in [`SchedulerConfig::unknown`] so they can be reported; they are not an error (diffusers ignores them too).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SchedulerConfig {
    /// `_class_name`: the diffusers class the model was saved with (`EulerDiscreteScheduler` for SDXL base).
    #[serde(rename = "_class_name", skip_serializing_if = "Option::is_none")]
    pub class_name: Option<String>,
    /// `_diffusers_version`: the diffusers version that wrote the file (informational).
    #[serde(rename = "_diffusers_version", skip_serializing_if = "Option::is_none")]
    pub diffusers_version: Option<String>,

    /// Number of diffusion steps the model was trained with.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub num_train_timesteps: Option<usize>,
    /// First beta of the training schedule.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub beta_start: Option<f64>,
    /// Last beta of the training schedule.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub beta_end: Option<f64>,
    /// `linear`, `scaled_linear` or `squaredcos_cap_v2`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub beta_schedule: Option<String>,
    /// Explicit betas (replace `beta_start`/`beta_end`/`beta_schedule`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trained_betas: Option<Vec<f64>>,
    /// `epsilon`, `v_prediction` or `sample`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prediction_type: Option<String>,
    /// `linspace`, `leading` or `trailing` (Table 2 of arXiv:2305.08891).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timestep_spacing: Option<String>,
    /// Added to every timestep of the `leading` spacing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steps_offset: Option<usize>,
    /// Rescale betas to zero terminal SNR (arXiv:2305.08891, Algorithm 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rescale_betas_zero_snr: Option<bool>,

    /// Euler: `linear` or `log_linear` interpolation of the inference sigmas.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interpolation_type: Option<String>,
    /// Karras et al. (arXiv:2206.00364) noise levels.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub use_karras_sigmas: Option<bool>,
    /// Exponentially spaced noise levels.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub use_exponential_sigmas: Option<bool>,
    /// Beta-distribution noise levels (arXiv:2407.12173).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub use_beta_sigmas: Option<bool>,
    /// Smallest sigma for the Karras/exponential/beta schedules (default: the training schedule's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sigma_min: Option<f64>,
    /// Largest sigma for the Karras/exponential/beta schedules (default: the training schedule's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sigma_max: Option<f64>,
    /// Euler: `discrete` or `continuous` timesteps.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timestep_type: Option<String>,
    /// `zero` or `sigma_min`: the sigma after the last step.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub final_sigmas_type: Option<String>,

    /// Multistep/singlestep/UniPC solver order.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub solver_order: Option<usize>,
    /// Dynamic thresholding (Imagen, arXiv:2205.11487).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thresholding: Option<bool>,
    /// Percentile for dynamic thresholding.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dynamic_thresholding_ratio: Option<f64>,
    /// Threshold ceiling for dynamic thresholding.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sample_max_value: Option<f64>,
    /// DPM-Solver: `dpmsolver++`, `sde-dpmsolver++`, `dpmsolver`, `sde-dpmsolver`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub algorithm_type: Option<String>,
    /// DPM-Solver `midpoint`/`heun`; UniPC `bh1`/`bh2`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub solver_type: Option<String>,
    /// Use a lower order on the final steps.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lower_order_final: Option<bool>,
    /// DPM-Solver multistep: Euler on the final step.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub euler_at_final: Option<bool>,
    /// DPM-Solver multistep: uniform logSNR steps.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub use_lu_lambdas: Option<bool>,
    /// Flow-matching sigmas.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub use_flow_sigmas: Option<bool>,
    /// Flow-matching shift.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flow_shift: Option<f64>,
    /// DPM-Solver: clipping threshold for the minimum lambda (may be `-Infinity` in saved configs).
    #[serde(skip_serializing_if = "Option::is_none", deserialize_with = "de_f64_or_special")]
    pub lambda_min_clipped: Option<f64>,
    /// DPM-Solver: `learned`/`learned_range` or null.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub variance_type: Option<String>,
    /// Resolution-dependent timestep shifting.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub use_dynamic_shifting: Option<bool>,
    /// `exponential` or `linear` time shift.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time_shift_type: Option<String>,
    /// DDIM/Heun: clip the predicted sample.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clip_sample: Option<bool>,
    /// DDIM/Heun: clipping range.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clip_sample_range: Option<f64>,
    /// DDIM: the final alpha-cumprod is 1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub set_alpha_to_one: Option<bool>,
    /// UniPC: predict x0.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub predict_x0: Option<bool>,
    /// UniPC: steps without the corrector.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disable_corrector: Option<Vec<usize>>,
    /// UniPC: an optional predictor scheduler (only `null` is meaningful in a JSON file).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub solver_p: Option<Value>,
    /// UniPC: terminal shift of flow sigmas.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shift_terminal: Option<f64>,

    /// Euler `step()` argument `s_churn` (not a diffusers config key; a request option here). Default 0.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub s_churn: Option<f64>,
    /// Euler `step()` argument `s_tmin`. Default 0.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub s_tmin: Option<f64>,
    /// Euler `step()` argument `s_tmax`. Default +infinity (`"Infinity"` accepted).
    #[serde(skip_serializing_if = "Option::is_none", deserialize_with = "de_f64_or_special")]
    pub s_tmax: Option<f64>,
    /// Euler `step()` argument `s_noise`. Default 1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub s_noise: Option<f64>,
    /// DDIM `step()` argument `eta` (the pipelines' `eta`, the weight of the noise in DDIM's formula (16); not a
    /// diffusers config key, a request option here). Default 0.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eta: Option<f64>,

    /// Keys no supported scheduler class knows (for example PNDM's `skip_prk_steps`), kept to be reported.
    #[serde(flatten)]
    pub unknown: Map<String, Value>,
}

impl SchedulerConfig {
    /// Parses `scheduler_config.json` text. Python's non-standard `Infinity`/`-Infinity`/`NaN` number tokens (which
    /// `json.dumps` writes, e.g. for `lambda_min_clipped`) are accepted.
    ///
    /// Errors: [`Error::InvalidJson`] when the text is not a JSON object of the expected field types.
    pub fn from_json(text: &str) -> Result<Self> {
        let value: Value = serde_json::from_str(&quote_python_specials(text))
            .map_err(|e| Error::InvalidJson(format!("scheduler config: {e}")))?;
        if !value.is_object() {
            return Err(Error::InvalidJson("scheduler config: expected a JSON object".into()));
        }
        serde_json::from_value(value).map_err(|e| Error::InvalidJson(format!("scheduler config: {e}")))
    }

    /// The configuration as a JSON object (absent fields omitted, unknown keys included).
    pub fn to_map(&self) -> Map<String, Value> {
        match serde_json::to_value(self) {
            Ok(Value::Object(map)) => map,
            // Serializing plain data with string keys cannot fail and always yields an object.
            _ => Map::new(),
        }
    }

    /// Builds a configuration from a JSON object (the inverse of [`SchedulerConfig::to_map`]).
    pub(crate) fn from_map(map: Map<String, Value>) -> std::result::Result<Self, serde_json::Error> {
        serde_json::from_value(Value::Object(map))
    }

    /// The keys of [`SchedulerConfig::unknown`], sorted.
    pub fn unknown_keys(&self) -> Vec<&str> {
        let mut keys: Vec<&str> = self.unknown.keys().map(String::as_str).collect();
        keys.sort_unstable();
        keys
    }
}

/// Deserializes an optional float that may also be written as the strings `"Infinity"`, `"-Infinity"` or `"NaN"`
/// (what [`quote_python_specials`] turns Python's bare tokens into).
fn de_f64_or_special<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Option<f64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum NumOrText {
        Num(f64),
        Text(String),
    }
    match Option::<NumOrText>::deserialize(d)? {
        None => Ok(None),
        Some(NumOrText::Num(x)) => Ok(Some(x)),
        Some(NumOrText::Text(s)) => match s.as_str() {
            "Infinity" | "inf" => Ok(Some(f64::INFINITY)),
            "-Infinity" | "-inf" => Ok(Some(f64::NEG_INFINITY)),
            "NaN" | "nan" => Ok(Some(f64::NAN)),
            other => Err(serde::de::Error::custom(format!("expected a number, got the string {other:?}"))),
        },
    }
}

/// Replaces Python's bare `Infinity`, `-Infinity` and `NaN` tokens (outside strings) by quoted strings so that a
/// strict JSON parser accepts the text; [`de_f64_or_special`] turns them back into floats.
fn quote_python_specials(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.contains("Infinity") && !text.contains("NaN") {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    let mut in_string = false;
    let mut escaped = false;
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
            rest = &rest[c.len_utf8()..];
            continue;
        }
        if c == '"' {
            in_string = true;
            out.push(c);
            rest = &rest[1..];
            continue;
        }
        let token = ["-Infinity", "Infinity", "NaN"].into_iter().find(|t| rest.starts_with(t));
        if let Some(t) = token {
            out.push('"');
            out.push_str(t);
            out.push('"');
            rest = &rest[t.len()..];
        } else {
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::super::testutil::SDXL_JSON;
    use super::*;

    #[test]
    fn sdxl_config_parses_with_diffusers_names_and_reports_unknown_keys() {
        let c = SchedulerConfig::from_json(SDXL_JSON).expect("parses");
        assert_eq!(c.class_name.as_deref(), Some("EulerDiscreteScheduler"));
        assert_eq!(c.beta_start, Some(0.00085));
        assert_eq!(c.beta_end, Some(0.012));
        assert_eq!(c.beta_schedule.as_deref(), Some("scaled_linear"));
        assert_eq!(c.timestep_spacing.as_deref(), Some("leading"));
        assert_eq!(c.steps_offset, Some(1));
        assert_eq!(c.trained_betas, None);
        assert_eq!(c.unknown_keys(), vec!["skip_prk_steps"]);
    }

    #[test]
    fn python_infinity_tokens_are_accepted_outside_strings_only() {
        let c = SchedulerConfig::from_json(r#"{"lambda_min_clipped": -Infinity, "_class_name": "NaN Infinity"}"#)
            .expect("parses");
        assert_eq!(c.lambda_min_clipped, Some(f64::NEG_INFINITY));
        assert_eq!(c.class_name.as_deref(), Some("NaN Infinity"));
    }

    #[test]
    fn wrong_types_and_non_objects_are_invalid_json() {
        for text in [r#"{"steps_offset": "one"}"#, "[1]", "{", r#"{"beta_start": -Infinity}"#] {
            let err = SchedulerConfig::from_json(text).expect_err(text);
            assert!(matches!(err, Error::InvalidJson(_)), "{text}: {err}");
        }
    }

    #[test]
    fn to_map_round_trips() {
        let c = SchedulerConfig::from_json(SDXL_JSON).expect("parses");
        let back = SchedulerConfig::from_map(c.to_map()).expect("round trip");
        assert_eq!(back, c);
    }
}
