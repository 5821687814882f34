//! ControlNet, as diffusers' `StableDiffusionXLControlNetPipeline` runs it: at every UNet evaluation each unit's
//! ControlNet sees the same (scaled, CFG-doubled) latents, timestep and text conditioning as the UNet, plus its
//! control image; its residuals, times the unit's conditioning scale — zero outside the unit's
//! `guidance_start`..`guidance_end` window — are summed over the units (`MultiControlNetModel`) and added to the
//! UNet's skip connections and middle block, through the inputs [`crate::runtime::controlnet_inputs`] gives the
//! UNet graph at load.
//!
//! # ControlNet graphs
//!
//! `<models_root>/controlnet/<name>/model.onnx` (what `onnx/export_onnx.py --controlnet` writes from a diffusers
//! `ControlNetModel` folder) or `<models_root>/controlnet/<name>.onnx`. Inputs `sample`, `timestep`,
//! `encoder_hidden_states`, `controlnet_cond` (the control image `[N, 3, H, W]` in [0, 1]), `text_embeds`,
//! `time_ids` and optionally `conditioning_scale` (a scalar the graph multiplies its residuals by; without it
//! sdxlrt multiplies them, the same float32 product). Outputs: the down residuals in diffusers' order, then the
//! middle block's (`down_block_res_sample_<i>` and `mid_block_res_sample` are put in that order whatever their
//! declared order; a graph with other names is read in declared order). A `config.json` beside it saying
//! `global_pool_conditions` (the shuffle ControlNets) marks a pooled ControlNet (below).
//!
//! # Guess mode
//!
//! `data.controlnet.guess_mode`, diffusers' `guess_mode`, for all the units of a request. With classifier-free
//! guidance the ControlNets run on the conditional half of the batch only (its latents, text conditioning, time ids
//! and one control image per image) and the unconditional half gets zero residuals (`torch.cat([zeros_like(d),
//! d])`); with or without guidance, a unit's residual `k` of `n` (the down residuals, then the middle block's) is
//! multiplied by `logspace(-1, 0, n)[k] × conditioning_scale` in float32 ([`guess_mode_scales`], bit for bit
//! `torch.logspace`), from 0.1 for the first skip connection to 1 for the middle block, instead of by the scale
//! alone. A graph with a `conditioning_scale` input then gets 1 and sdxlrt multiplies (`r × 1` is `r`, so the
//! products are diffusers'). The guidance windows apply as without guess mode.
//!
//! A pooled ControlNet (`global_pool_conditions`) always averages its residuals over height and width after
//! scaling (`ControlNetModel.forward`'s `torch.mean(sample, dim=(2, 3), keepdim=True)`); a graph exported from it
//! does that itself (its residuals come out `[N, C, 1, 1]`), and sdxlrt averages the residuals of one that does not.
//! Pooled residuals keep their `[N, C, 1, 1]` shape: the sum over the units and the UNet's `Add` broadcast them
//! over the skip connection, as torch does. Guess mode does not change a pooled unit's scale (diffusers:
//! `guess_mode and not global_pool_conditions`). As in `StableDiffusionXLControlNetPipeline` and its img2img
//! twin, guess mode is on when the request asks for it or when the *first* unit is pooled
//! (`MultiControlNetModel`: `nets[0].config.global_pool_conditions`); `StableDiffusionXLControlNetInpaintPipeline`
//! has no such line, so when inpainting only the request turns it on (the engine warns).
//!
//! # Control images
//!
//! Decoded to RGB ([`crate::image::source`]), resized to the output size with Pillow's Lanczos when their size
//! differs (diffusers' `VaeImageProcessor` with `do_normalize=False`), divided by 255, and repeated for every row
//! of the UNet batch. Inpainting only the mask's area (`data.padding_mask_crop`) cuts them to that area first, as
//! the init image (the engine's `controlnets.rs`).
//!
//! # Inpainting
//!
//! With a mask the run is diffusers' `StableDiffusionXLControlNetInpaintPipeline`: the ControlNets get the 4
//! scaled latent channels also when an inpainting UNet gets 9 (the latents, the mask, the masked image's latents),
//! their windows count the evaluations left after `strength`, and a 4-channel UNet's latents are blended with the
//! noised init image after every step as without ControlNets ([`mod@super::denoise`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ndarray::{Array4, ArrayD, Axis, IxDyn};

use super::denoise::{timestep_value, UnetConditioning};
use crate::error::{Error, Result};
use crate::image::RgbImage;
use crate::model_files::FileKind;
use crate::protocol::params::ControlNetRequest;
use crate::runtime::tensor::{float_value, Elem};
use crate::runtime::{BoundGraph, CancelToken, ModelSession, SessionConfig};

/// ControlNet graph files: `<models_root>/controlnet/<name>.onnx`.
const CONTROLNET_FILES: FileKind = FileKind { folder: "controlnet", extension: "onnx", what: "ControlNet" };

/// The inputs a ControlNet graph must have besides the optional `conditioning_scale`.
const REQUIRED_INPUTS: [&str; 6] =
    ["sample", "timestep", "encoder_hidden_states", "controlnet_cond", "text_embeds", "time_ids"];

/// The ControlNet graph `name` names (see the module docs): a folder holding `model.onnx`, or an `.onnx` file,
/// under `<models_root>/controlnet/`, or either as an absolute path inside `models_root`; errors name `field`.
pub fn resolve(models_root: &Path, name: &str, field: &str) -> Result<PathBuf> {
    let folder = if Path::new(name).is_absolute() {
        PathBuf::from(name)
    } else {
        models_root.join(CONTROLNET_FILES.folder).join(name)
    };
    if folder.is_dir() {
        let inside = format!("{}/model.onnx", name.trim_end_matches(['/', '\\']));
        return CONTROLNET_FILES.resolve(models_root, &inside, field);
    }
    CONTROLNET_FILES.resolve(models_root, name, field)
}

/// A loaded ControlNet graph.
#[derive(Debug)]
pub struct ControlNet {
    session: ModelSession,
    /// Output names: the down residuals in order, then the middle block's.
    outputs: Vec<String>,
    /// Whether the graph takes `conditioning_scale`.
    scale_input: bool,
    /// Whether its `config.json` says `global_pool_conditions` (see the module docs).
    global_pool: bool,
}

impl ControlNet {
    /// Load the ControlNet graph at `path` with the engine's session settings and check its inputs and outputs.
    pub fn load(env: &ort::environment::Environment, path: &Path, config: &SessionConfig) -> Result<Self> {
        let invalid = |m: String| Error::model_invalid(path, m);
        let global_pool = global_pool_conditions(path)?;
        let session = ModelSession::load(env, path, "controlnet", config)?;
        for name in REQUIRED_INPUTS {
            if session.input(name).is_err() {
                let have: Vec<&str> = session.inputs().iter().map(|i| i.name.as_str()).collect();
                return Err(invalid(format!(
                    "a ControlNet graph takes {REQUIRED_INPUTS:?} (and optionally conditioning_scale); this one has \
                     no `{name}` (inputs {have:?}); export it with onnx/export_onnx.py --controlnet"
                )));
            }
        }
        let declared: Vec<String> = session.outputs().iter().map(|o| o.name.clone()).collect();
        let ours: Vec<String> = (0..declared.len().saturating_sub(1))
            .map(|i| format!("down_block_res_sample_{i}"))
            .chain(std::iter::once("mid_block_res_sample".to_string()))
            .collect();
        let outputs = if declared.iter().all(|d| ours.contains(d)) { ours } else { declared };
        if outputs.len() < 2 {
            return Err(invalid(format!(
                "a ControlNet graph returns its down residuals and its middle block's; this one has {} output(s)",
                outputs.len()
            )));
        }
        let scale_input = session.input("conditioning_scale").is_ok();
        Ok(ControlNet { session, outputs, scale_input, global_pool })
    }

    /// Whether its config says `global_pool_conditions`: its residuals are averaged over height and width, and as
    /// a request's first unit it turns guess mode on (see the module docs).
    pub fn global_pool(&self) -> bool {
        self.global_pool
    }

    /// How many down residuals (skip connections) the graph returns.
    pub fn down_residuals(&self) -> usize {
        self.outputs.len() - 1
    }

    /// The file the graph was loaded from.
    pub fn path(&self) -> &Path {
        self.session.path()
    }
}

/// Whether the `config.json` beside a `model.onnx` (when there is one) says `global_pool_conditions` (diffusers'
/// `ControlNetModel` config, e.g. the shuffle ControlNets'); a config that is not JSON is an error.
fn global_pool_conditions(path: &Path) -> Result<bool> {
    if path.file_name().is_none_or(|f| f != "model.onnx") {
        return Ok(false); // a bare `<name>.onnx` has no config of its own
    }
    let config = path.with_file_name("config.json");
    let Ok(text) = std::fs::read_to_string(&config) else { return Ok(false) };
    let value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::model_invalid(&config, format!("the ControlNet's config.json is not JSON: {e}")))?;
    Ok(value.get("global_pool_conditions").and_then(serde_json::Value::as_bool) == Some(true))
}

/// diffusers' guess-mode scales for `n` residuals (the down residuals, then the middle block's) at conditioning
/// scale `scale`: `torch.logspace(-1, 0, n) * scale` in float32, as `ControlNetModel.forward` computes them.
/// torch's CPU `logspace` (ATen `RangeFactories.cpp`): `step = (end - start) / (n - 1)` in double, element `i`
/// is `pow(10.0, start + step * i)` for the first half and `pow(10.0, end - step * (n - 1 - i))` for the rest,
/// in double, rounded to float32; the product with the Python float `scale` is a float32 product.
pub fn guess_mode_scales(n: usize, scale: f32) -> Vec<f32> {
    let (start, end) = (-1.0f64, 0.0f64);
    if n == 1 {
        return vec![10f64.powf(start) as f32 * scale];
    }
    let step = (end - start) / (n - 1) as f64;
    let halfway = n / 2;
    (0..n)
        .map(|i| {
            let exponent = if i < halfway { start + step * i as f64 } else { end - step * (n - 1 - i) as f64 };
            10f64.powf(exponent) as f32 * scale
        })
        .collect()
}

/// One ControlNet unit of a request, ready to run: its graph, its control image as the UNet batch rows get it,
/// its scale and its window.
#[derive(Debug, Clone)]
pub struct ControlUnit {
    net: Arc<ControlNet>,
    /// `[1, 3, H, W]` in [0, 1].
    image: Array4<f32>,
    scale: f32,
    start: f64,
    end: f64,
    /// The request field of the unit (`data.controlnet.models[i]`).
    field: String,
    /// Whether the run is in guess mode (the same for every unit of a request; see the module docs).
    guess_mode: bool,
    /// False when the unit sits this denoising loop out (hires fix's `data.hires.controlnet`): scale 0 at every
    /// evaluation, so the UNet gets zero residuals from it.
    active: bool,
}

impl ControlUnit {
    /// The unit `request` asks for, with `net` loaded, for `width` × `height` images, its control image already
    /// decoded and preprocessed (and, for inpainting only the mask's area, already cut to it; see
    /// `engine::controlnets`): `image` resized and scaled to [0, 1] (see the module docs).
    pub fn from_image(
        net: Arc<ControlNet>,
        request: &ControlNetRequest,
        image: &RgbImage,
        width: u32,
        height: u32,
    ) -> Self {
        ControlUnit {
            net,
            image: control_tensor(image, width, height),
            scale: request.conditioning_scale,
            start: request.guidance_start,
            end: request.guidance_end,
            field: request.field.clone(),
            guess_mode: false,
            active: true,
        }
    }

    /// Run the unit in guess mode (diffusers' `guess_mode`, given to every unit of a request) or not.
    pub fn set_guess_mode(&mut self, on: bool) {
        self.guess_mode = on;
    }

    /// Whether the unit runs in guess mode.
    pub fn guess_mode(&self) -> bool {
        self.guess_mode
    }

    /// Let the unit condition its denoising loop (the default) or sit it out: a unit that sits out has scale 0
    /// at every evaluation, so its residuals are zeros (the UNet, which has residual inputs, then computes what
    /// it computes without them, to the bit). Hires fix's `data.hires.controlnet` uses it for the pass a unit
    /// skips (sd-webui-controlnet's `disabled_by_hr_option`).
    pub fn set_active(&mut self, on: bool) {
        self.active = on;
    }

    /// Whether the unit conditions its denoising loop (see [`Self::set_active`]).
    pub fn is_active(&self) -> bool {
        self.active
    }

    /// The graph.
    pub fn net(&self) -> &ControlNet {
        &self.net
    }

    /// The request field of the unit.
    pub fn field(&self) -> &str {
        &self.field
    }

    /// The scale at evaluation `i` of `n` (the scheduler's whole timestep list): diffusers'
    /// `controlnet_conditioning_scale * controlnet_keep[i]`, where `keep` is 0 when `i / n < start` or
    /// `(i + 1) / n > end`, else 1.
    pub fn scale_at(&self, i: usize, n: usize) -> f32 {
        if !self.active {
            return 0.0;
        }
        scale_in_window(self.scale, (self.start, self.end), i, n)
    }
}

/// `scale` at evaluation `i` of `n`, 0 outside the window `(start, end)` (see [`ControlUnit::scale_at`]).
fn scale_in_window(scale: f32, (start, end): (f64, f64), i: usize, n: usize) -> f32 {
    let (i, n) = (i as f64, n as f64);
    if i / n < start || (i + 1.0) / n > end {
        0.0
    } else {
        scale
    }
}

/// `image` resized to `width` × `height` (Pillow's Lanczos, only when the size differs) as `[1, 3, H, W]` / 255.
pub fn control_tensor(image: &RgbImage, width: u32, height: u32) -> Array4<f32> {
    let image = crate::image::lanczos::at_size(image, width, height);
    let (w, h) = (width as usize, height as usize);
    Array4::from_shape_fn((1, 3, h, w), |(_, c, y, x)| f32::from(image.data[(y * w + x) * 3 + c]) / 255.0)
}

/// The units' graphs bound for one denoising loop, and the residual sum they give per evaluation.
pub struct ControlRun<'u> {
    units: &'u [ControlUnit],
    bound: Vec<BoundGraph<'u>>,
    /// Guess mode with guidance: the graphs see the conditional half of the batch only, and the unconditional
    /// half gets zero residuals.
    cond_half: bool,
    /// Zero residuals of the shapes the units give, for evaluations where no unit applies.
    zeros: Option<Vec<ArrayD<f32>>>,
}

impl<'u> ControlRun<'u> {
    /// Bind every unit's graph with the loop's conditioning `cond` (`[uncond, cond]` halves when `guided`) and
    /// control image: all the UNet's rows, or in guess mode with guidance the conditional half's.
    pub fn bind(units: &'u [ControlUnit], cond: &UnetConditioning, guided: bool) -> Result<Self> {
        let cond_half = guided && units.first().is_some_and(|u| u.guess_mode);
        let all = cond.encoder_hidden_states.shape()[0];
        let first = if cond_half { all / 2 } else { 0 };
        let half = |a: ArrayD<f32>| a.slice_axis(Axis(0), (first..all).into()).to_owned();
        let rows = all - first;
        let mut bound = Vec::with_capacity(units.len());
        for unit in units {
            let session = &unit.net.session;
            let input = |name: &str, a: ArrayD<f32>| -> Result<(String, ort::value::DynValue)> {
                Ok((name.to_string(), float_value(a, session.input(name)?.elem, "controlnet", name)?))
            };
            let views = vec![unit.image.view(); rows];
            let images = ndarray::concatenate(Axis(0), &views)
                .map_err(|e| Error::Internal(format!("control image batch: {e}")))?;
            let fixed = vec![
                input("encoder_hidden_states", half(cond.encoder_hidden_states.clone().into_dyn()))?,
                input("text_embeds", half(cond.text_embeds.clone().into_dyn()))?,
                input("time_ids", half(cond.time_ids.clone().into_dyn()))?,
                input("controlnet_cond", images.into_dyn())?,
            ];
            let outputs: Vec<&str> = unit.net.outputs.iter().map(String::as_str).collect();
            bound.push(session.bind(fixed, &outputs)?);
        }
        Ok(ControlRun { units, bound, cond_half, zeros: None })
    }

    /// The summed residuals of evaluation `i` of `n` on the UNet input `sample` at timestep `t`: the down
    /// residuals in order, then the middle block's. Units whose scale is 0 there are not run (their residuals
    /// are zeros, as diffusers' product with 0 gives).
    pub fn residuals(
        &mut self,
        sample: &ArrayD<f32>,
        t: f32,
        (i, n): (usize, usize),
        last: bool,
        cancel: &CancelToken,
    ) -> Result<Vec<ArrayD<f32>>> {
        // diffusers' guess mode with guidance: `control_model_input` is the scaled latents alone, which are the
        // CFG batch's second half
        let sample = match self.cond_half {
            true => {
                let rows = sample.shape()[0];
                sample.slice_axis(Axis(0), (rows / 2..rows).into()).to_owned()
            }
            false => sample.clone(),
        };
        let rows = sample.shape()[0];
        let mut sum: Option<Vec<ArrayD<f32>>> = None;
        for (unit, graph) in self.units.iter().zip(self.bound.iter_mut()) {
            let scale = unit.scale_at(i, n);
            if scale == 0.0 && (sum.is_some() || self.zeros.is_some()) {
                continue;
            }
            let net = &unit.net;
            let session = &net.session;
            // diffusers: `guess_mode and not global_pool_conditions` weights the residuals on a log scale
            let per_residual = unit.guess_mode && !net.global_pool;
            let mut changing = vec![
                (
                    "sample".to_string(),
                    float_value(sample.clone(), session.input("sample")?.elem, "controlnet", "sample")?,
                ),
                ("timestep".to_string(), timestep_value(session, t, rows)?),
            ];
            if net.scale_input {
                let fed = if per_residual { 1.0 } else { scale };
                changing.push(("conditioning_scale".to_string(), scale_value(session, fed)?));
            }
            let mut out = graph.run(changing, last, cancel)?;
            if per_residual {
                // diffusers' `sample * scale` for each residual's own scale, in float32
                let scales = guess_mode_scales(out.len(), scale);
                out.iter_mut().zip(scales).for_each(|(r, s)| r.mapv_inplace(|v| v * s));
            } else if !net.scale_input {
                // diffusers' `sample * conditioning_scale`, in float32
                out.iter_mut().for_each(|r| r.mapv_inplace(|v| v * scale));
            }
            if net.global_pool {
                out = out.into_iter().map(spatial_mean).collect::<Result<_>>()?;
            }
            sum = Some(match sum {
                None => out,
                Some(acc) => {
                    acc.into_iter().zip(&out).map(|(a, r)| add_broadcast(a, r, &unit.field)).collect::<Result<_>>()?
                }
            });
        }
        let sum = match sum {
            Some(s) => s,
            None => self.zeros.clone().ok_or_else(|| Error::Internal("no ControlNet residuals".into()))?,
        };
        if self.zeros.is_none() {
            self.zeros = Some(sum.iter().map(|r| ArrayD::zeros(r.raw_dim())).collect());
        }
        if !self.cond_half {
            return Ok(sum);
        }
        // `torch.cat([torch.zeros_like(d), d])`: nothing for the unconditional half
        sum.into_iter()
            .map(|r| {
                ndarray::concatenate(Axis(0), &[ArrayD::zeros(r.raw_dim()).view(), r.view()])
                    .map_err(|e| Error::Internal(format!("guess-mode residuals: {e}")))
            })
            .collect()
    }
}

/// `r` averaged over its last two axes (height, width), keeping them as 1 (`torch.mean(r, dim=(2, 3),
/// keepdim=True)`), summed in float64; a residual already `[N, C, 1, 1]` (a pooled graph's) is returned as it is.
fn spatial_mean(r: ArrayD<f32>) -> Result<ArrayD<f32>> {
    let shape = r.shape().to_vec();
    let [n, c, h, w] = shape[..] else {
        return Err(Error::Internal(format!("a ControlNet residual of shape {shape:?}, not [N, C, H, W]")));
    };
    if h * w == 1 {
        return Ok(r);
    }
    let mut out = ArrayD::zeros(IxDyn(&[n, c, 1, 1]));
    for ((b, ch), sum) in (0..n).flat_map(|b| (0..c).map(move |ch| (b, ch))).zip(out.iter_mut()) {
        let plane = r.slice(ndarray::s![b, ch, .., ..]);
        *sum = (plane.iter().map(|&v| f64::from(v)).sum::<f64>() / (h * w) as f64) as f32;
    }
    Ok(out)
}

/// `a + r` with torch's broadcasting (a pooled unit's `[N, C, 1, 1]` residual onto another's `[N, C, H, W]`), in
/// float32; shapes that do not broadcast are an error naming the unit `field`.
fn add_broadcast(mut a: ArrayD<f32>, r: &ArrayD<f32>, field: &str) -> Result<ArrayD<f32>> {
    if a.shape() == r.shape() {
        a += r;
        return Ok(a);
    }
    let shape: Option<Vec<usize>> = (a.ndim() == r.ndim())
        .then(|| {
            a.shape()
                .iter()
                .zip(r.shape())
                .map(|(&x, &y)| match (x, y) {
                    _ if x == y => Some(x),
                    (1, _) => Some(y),
                    (_, 1) => Some(x),
                    _ => None,
                })
                .collect()
        })
        .flatten();
    let mismatch = || {
        Error::field(
            field,
            format!(
                "this ControlNet's residuals have shape {:?} where the units before it give {:?}",
                r.shape(),
                a.shape()
            ),
        )
    };
    let shape = IxDyn(&shape.ok_or_else(mismatch)?);
    let mut out = a.broadcast(shape.clone()).ok_or_else(mismatch)?.to_owned();
    out += &r.broadcast(shape).ok_or_else(mismatch)?;
    Ok(out)
}

/// `conditioning_scale` shaped and typed as the graph declares it: a scalar or `[1]`.
fn scale_value(graph: &ModelSession, scale: f32) -> Result<ort::value::DynValue> {
    let spec = graph.input("conditioning_scale")?;
    let shape: Vec<usize> = if spec.shape.is_empty() { vec![] } else { vec![1; spec.shape.len()] };
    let a = ArrayD::from_shape_vec(IxDyn(&shape), vec![scale])
        .map_err(|e| Error::Internal(format!("conditioning_scale: {e}")))?;
    match spec.elem {
        Elem::F32 | Elem::F16 => float_value(a, spec.elem, "controlnet", "conditioning_scale"),
        other => Err(Error::model_invalid(graph.path(), format!("conditioning_scale of type {other:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_keeps_the_evaluations_diffusers_keeps() {
        // diffusers, 5 timesteps, start 0.25, end 0.75: i/5 >= 0.25 from i = 2, (i+1)/5 <= 0.75 up to i = 2
        let kept: Vec<f32> = (0..5).map(|i| scale_in_window(0.8, (0.25, 0.75), i, 5)).collect();
        assert_eq!(kept, [0.0, 0.0, 0.8, 0.0, 0.0]);
        // Heun, 5 steps = 9 evaluations: i/9 >= 0.25 from i = 3, (i+1)/9 <= 0.75 up to i = 5
        let kept: Vec<usize> = (0..9).filter(|&i| scale_in_window(0.8, (0.25, 0.75), i, 9) > 0.0).collect();
        assert_eq!(kept, [3, 4, 5]);
        assert!((0..7).all(|i| scale_in_window(0.8, (0.0, 1.0), i, 7) == 0.8));
    }

    #[test]
    fn control_images_are_resized_only_when_their_size_differs_and_scaled_to_one() {
        let image = RgbImage { width: 2, height: 1, seed: 0, data: vec![0, 51, 255, 255, 0, 102] };
        let t = control_tensor(&image, 2, 1);
        assert_eq!(t.shape(), [1, 3, 1, 2]);
        assert_eq!(t.iter().copied().collect::<Vec<_>>(), [0.0, 1.0, 0.2, 0.0, 1.0, 0.4]);
        let big = control_tensor(&image, 4, 2);
        assert_eq!(big.shape(), [1, 3, 2, 4]);
    }

    #[test]
    fn pooled_controlnets_are_known_by_their_config() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("model.onnx");
        assert!(!global_pool_conditions(&model).unwrap(), "no config.json");
        std::fs::write(dir.path().join("config.json"), r#"{"global_pool_conditions": false}"#).unwrap();
        assert!(!global_pool_conditions(&model).unwrap());
        std::fs::write(dir.path().join("config.json"), r#"{"global_pool_conditions": true}"#).unwrap();
        assert!(global_pool_conditions(&model).unwrap());
        assert!(!global_pool_conditions(&dir.path().join("other.onnx")).unwrap(), "a bare file has no config");
        std::fs::write(dir.path().join("config.json"), "{").unwrap();
        assert!(global_pool_conditions(&model).is_err());
    }

    #[test]
    fn guess_mode_scales_are_torch_logspace_times_the_scale_bit_for_bit() {
        // torch 2.15 (the golden venv's): torch.logspace(-1, 0, n).numpy().view(np.uint32)
        let bits = |n: usize, scale: f32| guess_mode_scales(n, scale).iter().map(|s| s.to_bits()).collect::<Vec<_>>();
        // the tiny UNet's 6 skip connections + mid
        let seven = [1036831949, 1041649018, 1046256950, 1050798235, 1055761980, 1060006184, 1065353216];
        assert_eq!(bits(7, 1.0), seven);
        // SDXL's 9 + mid
        let ten = [
            1036831949, 1040466227, 1042993217, 1046256950, 1049524112, 1052246230, 1055761980, 1058633677, 1061565989,
            1065353216,
        ];
        assert_eq!(bits(10, 1.0), ten);
        // smallest for the first skip connection, 1x the scale for the middle block, float32 products
        let s = guess_mode_scales(7, 0.8);
        assert_eq!(s[6], 0.8);
        assert!(s.windows(2).all(|w| w[0] < w[1]), "{s:?}");
        assert_eq!(s[0], f32::from_bits(seven[0]) * 0.8);
        assert_eq!(guess_mode_scales(7, 0.0), [0.0; 7]);
    }

    #[test]
    fn pooled_residuals_are_spatial_means_and_broadcast_when_summed() {
        let r = ArrayD::from_shape_vec(IxDyn(&[1, 2, 2, 2]), vec![1.0, 2.0, 3.0, 4.0, -1.0, -1.0, 5.0, 5.0]).unwrap();
        let pooled = spatial_mean(r.clone()).unwrap();
        assert_eq!(pooled.shape(), [1, 2, 1, 1]);
        assert_eq!(pooled.iter().copied().collect::<Vec<_>>(), [2.5, 2.0]);
        assert_eq!(spatial_mean(pooled.clone()).unwrap(), pooled, "already pooled: unchanged");
        let sum = add_broadcast(r.clone(), &pooled, "f").unwrap();
        assert_eq!(sum.iter().copied().collect::<Vec<_>>(), [3.5, 4.5, 5.5, 6.5, 1.0, 1.0, 7.0, 7.0]);
        assert_eq!(add_broadcast(pooled.clone(), &r, "f").unwrap(), sum);
        let other = ArrayD::zeros(IxDyn(&[1, 3, 2, 2]));
        let e = add_broadcast(r, &other, "data.controlnet.models[1]").unwrap_err();
        assert!(matches!(e, Error::InvalidField { ref field, .. } if field == "data.controlnet.models[1]"), "{e}");
    }

    #[test]
    fn controlnets_resolve_as_folders_or_files_inside_models_root() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("controlnet/canny")).unwrap();
        std::fs::write(root.path().join("controlnet/canny/model.onnx"), b"x").unwrap();
        std::fs::write(root.path().join("controlnet/depth.onnx"), b"x").unwrap();
        let real = |p: &str| root.path().join(p).canonicalize().unwrap();
        assert_eq!(resolve(root.path(), "canny", "f").unwrap(), real("controlnet/canny/model.onnx"));
        assert_eq!(resolve(root.path(), "depth", "f").unwrap(), real("controlnet/depth.onnx"));
        let abs = root.path().join("controlnet/canny");
        assert_eq!(resolve(root.path(), abs.to_str().unwrap(), "f").unwrap(), real("controlnet/canny/model.onnx"));
        assert!(matches!(resolve(root.path(), "nope", "f"), Err(Error::InvalidField { .. })));
        assert!(matches!(resolve(root.path(), "../x", "f"), Err(Error::InvalidField { .. })));
    }
}
