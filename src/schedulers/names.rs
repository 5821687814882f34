//! Scheduler names: diffusers class names, the A1111/ComfyUI names users type, and how a request's name and
//! overrides merge with the model's `scheduler_config.json` into one [`ResolvedScheduler`].
//!
//! Layer: schedulers. The A1111 ↔ diffusers table is the one in diffusers' scheduler overview
//! (`docs/source/en/api/schedulers/overview.md`, diffusers 0.42.1); ComfyUI sampler and scheduler names map onto
//! the same entries.

use serde_json::{Map, Value};

use super::common::option_field;
use super::{dpmsolver_multistep, dpmsolver_singlestep, unipc};
use super::{euler, Scheduler, SchedulerConfig};
use crate::error::{Error, Result};

/// The diffusers scheduler classes sdxlrt knows by name (the Karras-compatible schedulers SD/SDXL UIs offer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SchedulerClass {
    /// `EulerDiscreteScheduler` (A1111 "Euler").
    EulerDiscrete,
    /// `EulerAncestralDiscreteScheduler` ("Euler a").
    EulerAncestralDiscrete,
    /// `DPMSolverMultistepScheduler` ("DPM++ 2M", "DPM++ 2M SDE").
    DpmSolverMultistep,
    /// `DPMSolverSinglestepScheduler` ("DPM++ SDE" in diffusers' table).
    DpmSolverSinglestep,
    /// `DDIMScheduler` ("DDIM").
    Ddim,
    /// `KDPM2DiscreteScheduler` ("DPM2").
    Kdpm2Discrete,
    /// `KDPM2AncestralDiscreteScheduler` ("DPM2 a").
    Kdpm2AncestralDiscrete,
    /// `HeunDiscreteScheduler` ("Heun").
    HeunDiscrete,
    /// `LMSDiscreteScheduler` ("LMS").
    LmsDiscrete,
    /// `UniPCMultistepScheduler` ("UniPC").
    UniPcMultistep,
}

impl SchedulerClass {
    /// Every known class, in the order they are listed to users.
    pub const ALL: [SchedulerClass; 10] = [
        SchedulerClass::EulerDiscrete,
        SchedulerClass::EulerAncestralDiscrete,
        SchedulerClass::DpmSolverMultistep,
        SchedulerClass::DpmSolverSinglestep,
        SchedulerClass::Ddim,
        SchedulerClass::Kdpm2Discrete,
        SchedulerClass::Kdpm2AncestralDiscrete,
        SchedulerClass::HeunDiscrete,
        SchedulerClass::LmsDiscrete,
        SchedulerClass::UniPcMultistep,
    ];

    /// The diffusers class name.
    pub fn class_name(self) -> &'static str {
        match self {
            SchedulerClass::EulerDiscrete => "EulerDiscreteScheduler",
            SchedulerClass::EulerAncestralDiscrete => "EulerAncestralDiscreteScheduler",
            SchedulerClass::DpmSolverMultistep => "DPMSolverMultistepScheduler",
            SchedulerClass::DpmSolverSinglestep => "DPMSolverSinglestepScheduler",
            SchedulerClass::Ddim => "DDIMScheduler",
            SchedulerClass::Kdpm2Discrete => "KDPM2DiscreteScheduler",
            SchedulerClass::Kdpm2AncestralDiscrete => "KDPM2AncestralDiscreteScheduler",
            SchedulerClass::HeunDiscrete => "HeunDiscreteScheduler",
            SchedulerClass::LmsDiscrete => "LMSDiscreteScheduler",
            SchedulerClass::UniPcMultistep => "UniPCMultistepScheduler",
        }
    }

    /// The class with this exact diffusers class name.
    pub fn from_class_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.class_name() == name)
    }

    /// The option keys a request may override for this class (its diffusers `__init__` arguments, plus step
    /// arguments exposed as options), in diffusers' order.
    pub fn accepted_keys(self) -> &'static [&'static str] {
        match self {
            SchedulerClass::EulerDiscrete => euler::KEYS,
            SchedulerClass::EulerAncestralDiscrete => super::euler_ancestral::KEYS,
            SchedulerClass::DpmSolverMultistep => dpmsolver_multistep::KEYS,
            SchedulerClass::DpmSolverSinglestep => dpmsolver_singlestep::KEYS,
            SchedulerClass::Ddim => super::ddim::KEYS,
            SchedulerClass::Kdpm2Discrete => super::kdpm2::KEYS,
            SchedulerClass::Kdpm2AncestralDiscrete => super::kdpm2_ancestral::KEYS,
            SchedulerClass::LmsDiscrete => super::lms::KEYS,
            SchedulerClass::HeunDiscrete => super::heun::KEYS,
            SchedulerClass::UniPcMultistep => unipc::KEYS,
        }
    }

    /// diffusers' default for each accepted key, where implemented (JSON values; used by
    /// [`ResolvedScheduler::describe`] to list only the options that differ from the class defaults).
    fn defaults(self) -> Map<String, Value> {
        match self {
            SchedulerClass::EulerDiscrete => euler::defaults(),
            SchedulerClass::EulerAncestralDiscrete => super::euler_ancestral::defaults(),
            SchedulerClass::Ddim => super::ddim::defaults(),
            SchedulerClass::Kdpm2Discrete | SchedulerClass::Kdpm2AncestralDiscrete => super::kdpm2::defaults(),
            SchedulerClass::HeunDiscrete => super::heun::defaults(),
            SchedulerClass::LmsDiscrete => super::lms::defaults(),
            SchedulerClass::DpmSolverMultistep => dpmsolver_multistep::defaults(),
            SchedulerClass::DpmSolverSinglestep => dpmsolver_singlestep::defaults(),
            SchedulerClass::UniPcMultistep => unipc::defaults(),
        }
    }
}

/// A request name: the class plus the options the name implies (e.g. "DPM++ 2M Karras" → Karras sigmas).
struct NamedChoice {
    class: SchedulerClass,
    options: Vec<(&'static str, Value)>,
}

/// A base name, its class, and the options it implies.
type BaseName = (&'static str, SchedulerClass, &'static [(&'static str, &'static str)]);

/// Base names (A1111 and ComfyUI sampler names; matched case-insensitively) and what they mean, after diffusers'
/// overview table.
const BASE_NAMES: &[BaseName] = &[
    ("Euler", SchedulerClass::EulerDiscrete, &[]),
    ("Euler a", SchedulerClass::EulerAncestralDiscrete, &[]),
    ("euler_ancestral", SchedulerClass::EulerAncestralDiscrete, &[]),
    ("Heun", SchedulerClass::HeunDiscrete, &[]),
    ("LMS", SchedulerClass::LmsDiscrete, &[]),
    ("DDIM", SchedulerClass::Ddim, &[]),
    ("UniPC", SchedulerClass::UniPcMultistep, &[]),
    ("uni_pc", SchedulerClass::UniPcMultistep, &[]),
    ("DPM2", SchedulerClass::Kdpm2Discrete, &[]),
    ("dpm_2", SchedulerClass::Kdpm2Discrete, &[]),
    ("DPM2 a", SchedulerClass::Kdpm2AncestralDiscrete, &[]),
    ("dpm_2_ancestral", SchedulerClass::Kdpm2AncestralDiscrete, &[]),
    ("DPM++ 2M", SchedulerClass::DpmSolverMultistep, &[]),
    ("dpmpp_2m", SchedulerClass::DpmSolverMultistep, &[]),
    ("DPM++ 2M SDE", SchedulerClass::DpmSolverMultistep, &[("algorithm_type", "sde-dpmsolver++")]),
    ("dpmpp_2m_sde", SchedulerClass::DpmSolverMultistep, &[("algorithm_type", "sde-dpmsolver++")]),
    ("DPM++ SDE", SchedulerClass::DpmSolverSinglestep, &[]),
    ("dpmpp_sde", SchedulerClass::DpmSolverSinglestep, &[]),
];

/// Schedule suffixes ("DPM++ 2M Karras", ComfyUI "dpmpp_2m karras") and the options they set.
const SUFFIXES: &[(&str, &[(&str, bool)])] = &[
    ("Karras", &[("use_karras_sigmas", true)]),
    ("Exponential", &[("use_exponential_sigmas", true)]),
    ("Beta", &[("use_beta_sigmas", true)]),
];

/// Looks a request name up: a diffusers class name, or a base name with an optional schedule suffix
/// (case-insensitive, runs of spaces collapsed).
fn lookup(name: &str) -> Option<NamedChoice> {
    if let Some(class) = SchedulerClass::ALL.into_iter().find(|c| c.class_name().eq_ignore_ascii_case(name.trim())) {
        return Some(NamedChoice { class, options: Vec::new() });
    }
    let norm = name.split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase();
    let base = |s: &str| {
        BASE_NAMES.iter().find(|(n, _, _)| n.to_lowercase() == s).map(|(_, class, opts)| NamedChoice {
            class: *class,
            options: opts.iter().map(|(k, v)| (*k, Value::from(*v))).collect(),
        })
    };
    if let Some(choice) = base(&norm) {
        return Some(choice);
    }
    let (head, tail) = norm.rsplit_once(' ')?;
    let (_, opts) = SUFFIXES.iter().find(|(s, _)| s.to_lowercase() == tail)?;
    let mut choice = base(head)?;
    choice.options.extend(opts.iter().map(|(k, v)| (*k, Value::from(*v))));
    Some(choice)
}

/// Every name [`resolve`] accepts, for error messages.
fn accepted_names() -> String {
    let classes: Vec<&str> = SchedulerClass::ALL.iter().map(|c| c.class_name()).collect();
    let bases: Vec<&str> = BASE_NAMES.iter().map(|(n, _, _)| *n).collect();
    let suffixes: Vec<&str> = SUFFIXES.iter().map(|(s, _)| *s).collect();
    format!(
        "a diffusers class ({}) or a sampler name ({}), optionally followed by a schedule ({}); names are \
         case-insensitive",
        classes.join(", "),
        bases.join(", "),
        suffixes.join(", ")
    )
}

/// Every class, for error messages.
fn available() -> String {
    SchedulerClass::ALL.iter().map(|c| c.class_name()).collect::<Vec<_>>().join(", ")
}

/// A scheduler choice resolved against the model: which class, and the merged configuration in force.
#[derive(Debug, Clone)]
pub struct ResolvedScheduler {
    /// The diffusers class name.
    pub class_name: &'static str,
    /// The merged configuration: the model's JSON, then the options the name implies, then the request overrides.
    pub config: SchedulerConfig,
    /// The class.
    pub class: SchedulerClass,
    /// The validated, class-specific options.
    validated: Validated,
}

/// Class-specific options, validated at resolve time so that `build` only fails on the step count.
#[derive(Debug, Clone)]
enum Validated {
    /// `EulerDiscreteScheduler`.
    Euler(euler::EulerConfig),
    /// `EulerAncestralDiscreteScheduler`.
    EulerAncestral(super::euler_ancestral::EulerAncestralConfig),
    /// `DDIMScheduler`.
    Ddim(super::ddim::DdimConfig),
    /// `KDPM2DiscreteScheduler`.
    Kdpm2(super::kdpm2::Kdpm2Config),
    /// `KDPM2AncestralDiscreteScheduler`.
    Kdpm2Ancestral(super::kdpm2_ancestral::Kdpm2AncestralConfig),
    /// `HeunDiscreteScheduler`.
    Heun(super::heun::HeunConfig),
    /// `LMSDiscreteScheduler`.
    Lms(super::lms::LmsConfig),
    /// `DPMSolverMultistepScheduler`.
    DpmMultistep(dpmsolver_multistep::DpmMultistepConfig),
    /// `DPMSolverSinglestepScheduler`.
    DpmSinglestep(dpmsolver_singlestep::DpmSinglestepConfig),
    /// `UniPCMultistepScheduler`.
    UniPc(unipc::UniPcConfig),
}

impl ResolvedScheduler {
    /// Builds a fresh scheduler for `num_inference_steps` (diffusers' `set_timesteps`). Build one per request: some
    /// schedulers keep per-step history.
    ///
    /// Errors: [`Error::InvalidField`] (`data.steps`) for 0 steps.
    pub fn build(&self, num_inference_steps: usize) -> Result<Box<dyn Scheduler>> {
        match &self.validated {
            Validated::Euler(c) => Ok(Box::new(c.build(num_inference_steps)?)),
            Validated::EulerAncestral(c) => Ok(Box::new(c.build(num_inference_steps)?)),
            Validated::Ddim(c) => Ok(Box::new(c.build(num_inference_steps)?)),
            Validated::Kdpm2(c) => Ok(Box::new(c.build(num_inference_steps)?)),
            Validated::Kdpm2Ancestral(c) => Ok(Box::new(c.build(num_inference_steps)?)),
            Validated::Heun(c) => Ok(Box::new(c.build(num_inference_steps)?)),
            Validated::Lms(c) => Ok(Box::new(c.build(num_inference_steps)?)),
            Validated::DpmMultistep(c) => Ok(Box::new(c.build(num_inference_steps)?)),
            Validated::DpmSinglestep(c) => Ok(Box::new(c.build(num_inference_steps)?)),
            Validated::UniPc(c) => Ok(Box::new(c.build(num_inference_steps)?)),
        }
    }

    /// `{"name": <diffusers class>, "options": {...}}` with the options in force that differ from the class's
    /// diffusers defaults (model-config values included), for response metadata.
    pub fn describe(&self) -> Value {
        let merged = self.config.to_map();
        let defaults = self.class.defaults();
        let mut options = Map::new();
        for &key in self.class.accepted_keys() {
            let value = merged.get(key).cloned().unwrap_or(Value::Null);
            let default = defaults.get(key).cloned().unwrap_or(Value::Null);
            if value.is_null() || json_equal(&value, &default) {
                continue;
            }
            options.insert(key.to_string(), value);
        }
        serde_json::json!({ "name": self.class_name, "options": options })
    }
}

/// JSON equality that treats `1` and `1.0` as the same number.
fn json_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

/// Resolves a request's scheduler name and option overrides against the model's scheduler config.
///
/// `name`: a diffusers class name or an A1111/ComfyUI name ("Euler", "Euler a", "DPM++ 2M Karras", "dpmpp_2m_sde
/// karras", …); `None` uses the model's `_class_name`. The configuration is merged like diffusers'
/// `from_config(model_config, **options)`: the model's JSON, then the options the name implies, then `overrides`.
///
/// Errors: unknown name → [`Error::InvalidField`] `data.scheduler` listing the accepted names; an override key the class does not take or a value of
/// the wrong type or range → [`Error::InvalidField`] `data.scheduler.<key>`; options diffusers cannot honour
/// exactly here → [`Error::Unsupported`].
pub fn resolve(
    name: Option<&str>,
    overrides: &Map<String, Value>,
    model: &SchedulerConfig,
) -> Result<ResolvedScheduler> {
    let choice = match name {
        Some(n) => lookup(n).ok_or_else(|| {
            Error::field("data.scheduler", format!("unknown scheduler `{n}`; expected {}", accepted_names()))
        })?,
        None => {
            let class_name = model.class_name.as_deref().ok_or_else(|| {
                Error::model_invalid(
                    "scheduler/scheduler_config.json",
                    "has no `_class_name`; name a scheduler in the request",
                )
            })?;
            let class = SchedulerClass::from_class_name(class_name).ok_or_else(|| {
                Error::unsupported(
                    "data.scheduler",
                    format!(
                        "the model's scheduler {class_name} is not supported; name one of: {available}",
                        available = available()
                    ),
                )
            })?;
            NamedChoice { class, options: Vec::new() }
        }
    };
    let class = choice.class;

    let accepted = class.accepted_keys();
    let mut merged = model.to_map();
    for (key, value) in choice.options {
        // "Euler a Karras": the schedule suffix names an option the class does not have in diffusers.
        if !accepted.contains(&key) {
            return Err(Error::field(
                "data.scheduler",
                format!(
                    "{} does not support `{key}` (implied by the name `{}`)",
                    class.class_name(),
                    name.unwrap_or("")
                ),
            ));
        }
        merged.insert(key.to_string(), value);
    }
    for (key, value) in overrides {
        if !accepted.contains(&key.as_str()) {
            return Err(Error::field(
                option_field(key),
                format!("{} does not take this option; accepted: {}", class.class_name(), accepted.join(", ")),
            ));
        }
        // Type-check each override on its own so that the error names it.
        let mut single = Map::new();
        single.insert(key.clone(), value.clone());
        if let Err(e) = SchedulerConfig::from_map(single) {
            return Err(Error::field(option_field(key), format!("{value} has the wrong type: {e}")));
        }
        merged.insert(key.clone(), value.clone());
    }
    merged.insert("_class_name".into(), Value::from(class.class_name()));
    let config = SchedulerConfig::from_map(merged)
        .map_err(|e| Error::Internal(format!("merged scheduler config does not deserialize: {e}")))?;
    let validated = match class {
        SchedulerClass::EulerDiscrete => Validated::Euler(euler::EulerConfig::new(&config)?),
        SchedulerClass::EulerAncestralDiscrete => {
            Validated::EulerAncestral(super::euler_ancestral::EulerAncestralConfig::new(&config)?)
        }
        SchedulerClass::Ddim => Validated::Ddim(super::ddim::DdimConfig::new(&config)?),
        SchedulerClass::Kdpm2Discrete => Validated::Kdpm2(super::kdpm2::Kdpm2Config::new(&config)?),
        SchedulerClass::Kdpm2AncestralDiscrete => {
            Validated::Kdpm2Ancestral(super::kdpm2_ancestral::Kdpm2AncestralConfig::new(&config)?)
        }
        SchedulerClass::HeunDiscrete => Validated::Heun(super::heun::HeunConfig::new(&config)?),
        SchedulerClass::LmsDiscrete => Validated::Lms(super::lms::LmsConfig::new(&config)?),
        SchedulerClass::DpmSolverMultistep => {
            Validated::DpmMultistep(dpmsolver_multistep::DpmMultistepConfig::new(&config)?)
        }
        SchedulerClass::DpmSolverSinglestep => {
            Validated::DpmSinglestep(dpmsolver_singlestep::DpmSinglestepConfig::new(&config)?)
        }
        SchedulerClass::UniPcMultistep => Validated::UniPc(unipc::UniPcConfig::new(&config)?),
    };
    Ok(ResolvedScheduler { class_name: class.class_name(), config, class, validated })
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Map, Value};

    use super::super::testutil::SDXL_JSON;
    use super::*;
    use crate::error::ErrorCode;

    fn sdxl() -> SchedulerConfig {
        SchedulerConfig::from_json(SDXL_JSON).expect("parses")
    }

    fn map(v: Value) -> Map<String, Value> {
        v.as_object().cloned().expect("object")
    }

    fn field_of(e: &Error) -> &str {
        match e {
            Error::InvalidField { field, .. } | Error::Unsupported { field, .. } => field,
            _ => "",
        }
    }

    #[test]
    fn no_name_uses_the_model_class_and_describes_sdxl_options() {
        let r = resolve(None, &Map::new(), &sdxl()).expect("resolves");
        assert_eq!(r.class_name, "EulerDiscreteScheduler");
        assert_eq!(
            r.describe(),
            json!({"name": "EulerDiscreteScheduler", "options": {
                "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
                "timestep_spacing": "leading", "steps_offset": 1}})
        );
        // Keys of other schedulers stay in the merged config; unknown ones are reported.
        assert_eq!(r.config.clip_sample, Some(false));
        assert_eq!(r.config.unknown_keys(), vec!["skip_prk_steps"]);
    }

    #[test]
    fn euler_names_resolve_case_insensitively_with_schedule_suffixes() {
        for name in ["Euler", "euler", " EULER ", "EulerDiscreteScheduler", "eulerdiscretescheduler"] {
            let r = resolve(Some(name), &Map::new(), &sdxl()).expect(name);
            assert_eq!(r.class_name, "EulerDiscreteScheduler", "{name}");
            assert_eq!(r.config.use_karras_sigmas, Some(false), "{name}");
        }
        let r = resolve(Some("Euler  Karras"), &Map::new(), &sdxl()).expect("resolves");
        assert_eq!(r.config.use_karras_sigmas, Some(true));
        assert_eq!(r.describe()["options"]["use_karras_sigmas"], json!(true));
        let r = resolve(Some("euler exponential"), &Map::new(), &sdxl()).expect("resolves");
        assert_eq!(r.config.use_exponential_sigmas, Some(true));
    }

    #[test]
    fn request_overrides_win_over_name_options_and_model_config() {
        let r = resolve(
            Some("Euler Karras"),
            &map(json!({"use_karras_sigmas": false, "timestep_spacing": "trailing", "s_churn": 0.5})),
            &sdxl(),
        )
        .expect("resolves");
        assert_eq!(r.config.use_karras_sigmas, Some(false));
        let d = r.describe();
        assert_eq!(d["options"]["timestep_spacing"], json!("trailing"));
        assert_eq!(d["options"]["s_churn"], json!(0.5));
        assert!(d["options"].get("use_karras_sigmas").is_none(), "{d}");
        assert_eq!(r.build(4).expect("builds").timesteps(), &[999.0, 749.0, 499.0, 249.0]);
    }

    #[test]
    fn a1111_and_comfyui_names_resolve_to_their_diffusers_class() {
        let names = [
            ("Euler a", "EulerAncestralDiscreteScheduler"),
            ("DPM++ 2M", "DPMSolverMultistepScheduler"),
            ("DPM++ 2M Karras", "DPMSolverMultistepScheduler"),
            ("DPM++ 2M SDE Karras", "DPMSolverMultistepScheduler"),
            ("dpmpp_2m_sde karras", "DPMSolverMultistepScheduler"),
            ("DPM++ SDE", "DPMSolverSinglestepScheduler"),
            ("DPM2", "KDPM2DiscreteScheduler"),
            ("DPM2 a Karras", "KDPM2AncestralDiscreteScheduler"),
            ("Heun", "HeunDiscreteScheduler"),
            ("LMS Karras", "LMSDiscreteScheduler"),
            ("DDIM", "DDIMScheduler"),
            ("UniPC", "UniPCMultistepScheduler"),
            ("UniPCMultistepScheduler", "UniPCMultistepScheduler"),
        ];
        for (name, class) in names {
            assert_eq!(resolve(Some(name), &Map::new(), &sdxl()).expect(name).class_name, class, "{name}");
        }
    }

    #[test]
    fn unknown_names_list_the_accepted_ones() {
        for name in ["Euler b", "DPM++ 3M", "karras", "", "Euler Karras Karras"] {
            let err = resolve(Some(name), &Map::new(), &sdxl()).expect_err(name);
            assert_eq!(err.code(), ErrorCode::InvalidRequest, "{name}");
            assert_eq!(field_of(&err), "data.scheduler");
            assert!(err.to_string().contains("DPM++ 2M SDE") && err.to_string().contains("Karras"), "{err}");
        }
    }

    #[test]
    fn bad_overrides_name_the_option() {
        let cases = [
            (json!({"solver_order": 2}), "data.scheduler.solver_order", ErrorCode::InvalidRequest),
            (json!({"use_karras_sigmas": "yes"}), "data.scheduler.use_karras_sigmas", ErrorCode::InvalidRequest),
            (json!({"timestep_spacing": "middle"}), "data.scheduler.timestep_spacing", ErrorCode::InvalidRequest),
            (json!({"prediction_type": "flow"}), "data.scheduler.prediction_type", ErrorCode::InvalidRequest),
            (json!({"beta_schedule": "cosine"}), "data.scheduler.beta_schedule", ErrorCode::InvalidRequest),
            (json!({"final_sigmas_type": "one"}), "data.scheduler.final_sigmas_type", ErrorCode::InvalidRequest),
            (json!({"trained_betas": [0.1, 0.2]}), "data.scheduler.trained_betas", ErrorCode::InvalidRequest),
            (json!({"sigma_min": -1.0}), "data.scheduler.sigma_min", ErrorCode::InvalidRequest),
            (json!({"s_churn": -1.0}), "data.scheduler.s_churn", ErrorCode::InvalidRequest),
            (
                json!({"use_karras_sigmas": true, "use_exponential_sigmas": true}),
                "data.scheduler.use_karras_sigmas",
                ErrorCode::InvalidRequest,
            ),
            (json!({"use_beta_sigmas": true}), "data.scheduler.use_beta_sigmas", ErrorCode::Unsupported),
        ];
        for (overrides, field, code) in cases {
            let err = resolve(Some("Euler"), &map(overrides.clone()), &sdxl()).expect_err(&overrides.to_string());
            assert_eq!((field_of(&err), err.code()), (field, code), "{overrides}: {err}");
        }
        let err = resolve(Some("Euler"), &map(json!({"clip_sample": true})), &sdxl()).expect_err("unknown key");
        assert!(err.to_string().contains("accepted: num_train_timesteps, beta_start"), "{err}");
        let err = resolve(Some("Euler Beta"), &Map::new(), &sdxl()).expect_err("beta sigmas");
        assert_eq!(err.code(), ErrorCode::Unsupported);
    }

    #[test]
    fn model_configs_without_a_usable_class_are_reported() {
        let err = resolve(None, &Map::new(), &SchedulerConfig::default()).expect_err("no class");
        assert_eq!(err.code(), ErrorCode::ModelInvalid);
        let pndm = SchedulerConfig::from_json(r#"{"_class_name": "PNDMScheduler"}"#).expect("parses");
        let err = resolve(None, &Map::new(), &pndm).expect_err("pndm");
        assert_eq!(err.code(), ErrorCode::Unsupported);
        assert!(err.to_string().contains("PNDMScheduler"), "{err}");
        // Naming a scheduler works even when the model's class is unknown.
        assert!(resolve(Some("Euler"), &Map::new(), &pndm).is_ok());
    }

    #[test]
    fn s_tmax_accepts_infinity_text() {
        let r = resolve(Some("Euler"), &map(json!({"s_tmax": "Infinity", "s_churn": 1.0})), &sdxl()).expect("ok");
        assert_eq!(r.config.s_tmax, Some(f64::INFINITY));
    }

    #[test]
    fn every_class_name_round_trips_and_lists_its_keys() {
        for class in SchedulerClass::ALL {
            assert_eq!(SchedulerClass::from_class_name(class.class_name()), Some(class));
            assert!(class.accepted_keys().contains(&"num_train_timesteps"));
        }
    }
}
