//! Reading LoRA `.safetensors` files into modules: which model part a module patches, under which name, and
//! with which low-rank factors.
//!
//! Formats (key suffixes after the module name):
//! - kohya LoRA / LoCon: `lora_unet_…`, `lora_te1_…` (`lora_te_…` for a single text encoder), `lora_te2_…` with
//!   `.lora_down.weight`, `.lora_up.weight`, `.alpha`. Module names are flattened with `_` and may use SGM block
//!   names (`lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q`); [`super::keymap`] resolves them.
//! - diffusers / PEFT: `unet.<module>`, `text_encoder.<module>`, `text_encoder_2.<module>` with
//!   `.lora_A.weight` / `.lora_B.weight` (also `.lora_A.default.weight`), optional `.alpha`; and diffusers' older
//!   spellings `.lora.down.weight` / `.lora.up.weight`, `.lora_linear_layer.down/up.weight` and attention
//!   processors (`attn1.processor.to_q_lora.down.weight`).
//! - LyCORIS LoHa (`.hada_w1_a`, `.hada_w1_b`, `.hada_w2_a`, `.hada_w2_b`) and LoKr (`.lokr_w1` or
//!   `.lokr_w1_a`/`.lokr_w1_b`, `.lokr_w2` or `.lokr_w2_a`/`.lokr_w2_b`), with the same prefixes.
//! - LyCORIS Tucker LoCon: `.lora_down` `[r, in, 1, 1]`, `.lora_mid` `[r, r, kh, kw]`, `.lora_up` `[out, r, 1, 1]`,
//!   ΔW[o, i, y, x] = Σ_{n,m} up[o, n] · mid[n, m, y, x] · down[m, i] (A1111's `rebuild_cp_decomposition`). The
//!   mid is folded into the down factor when the file is read, so it merges as the LoCon `[r, in, kh, kw]` it is.
//!
//! - DoRA in PEFT's format: a LoRA module with `.lora_magnitude_vector`; in kohya/LyCORIS's: any module above with
//!   `.dora_scale` `[out, 1, …]` or `[1, in, …]` (see [`super::merge::apply_dora`] for both rules).
//!
//! - LyCORIS Tucker LoHa (`.hada_t1` / `.hada_t2` with `.hada_wN_a` `[r, out]`, `.hada_wN_b` `[r, in]`) and Tucker
//!   LoKr (`.lokr_t2` with `.lokr_w2_a` `[r, out]`, `.lokr_w2_b` `[r, in]`): each product is w_aᵀ · core ×
//!   w_b (A1111's `make_weight_cp`), folded the same way into an ordinary `[out, r]` · `[r, in, kh, kw]` pair.
//!
//! - LyCORIS full modules: `.diff`, the whole ΔW in the weight's torch shape (A1111's `network_full`: scaled by
//!   the LoRA's weight only, no alpha); and norm modules (`train_norm`): `.w_norm` `[C]` added to a GroupNorm's or
//!   LayerNorm's scale, `.b_norm` `[C]` to its shift (A1111's `network_norm`, same scaling).
//!
//! Bias changes: LyCORIS `.diff_b` / `.b_norm` `[out]` (at the LoRA's weight, with or without a `.diff` /
//! `.w_norm`) and PEFT's `.lora_B.bias` (`lora_bias=True`: at weight · alpha / r, as PEFT merges it) — see
//! [`BiasDelta`].
//!
//! Anything else (a `dora_scale` whose shape does not say its axis, unknown keys) is kept as "unsupported" and
//! reported as skipped, never applied half-way.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};

use crate::error::{Error, Result};

/// The model part a LoRA module patches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Component {
    /// `unet/`.
    Unet,
    /// `text_encoder/` (CLIP ViT-L).
    TextEncoder,
    /// `text_encoder_2/` (OpenCLIP bigG).
    TextEncoder2,
}

impl Component {
    /// All components, in load order.
    pub const ALL: [Component; 3] = [Component::TextEncoder, Component::TextEncoder2, Component::Unet];

    /// The graph folder name.
    pub fn folder(self) -> &'static str {
        match self {
            Component::Unet => "unet",
            Component::TextEncoder => "text_encoder",
            Component::TextEncoder2 => "text_encoder_2",
        }
    }
}

/// How a module is named in the file.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum ModuleName {
    /// kohya: the module path with every `.` turned into `_` (ambiguous; resolved against the graph's names).
    Flat(String),
    /// diffusers/PEFT: the module path as in diffusers/transformers (`down_blocks.1.attentions.0.proj_in`).
    Dotted(String),
}

/// A float tensor read from the file.
#[derive(Debug, Clone, PartialEq)]
pub struct Mat {
    /// Shape as stored.
    pub shape: Vec<usize>,
    /// Values, row-major.
    pub data: Vec<f32>,
}

impl Mat {
    /// First dimension (1 for scalars).
    pub fn rows(&self) -> usize {
        self.shape.first().copied().unwrap_or(1)
    }

    /// Product of the remaining dimensions.
    pub fn cols(&self) -> usize {
        self.shape.iter().skip(1).product()
    }

    /// `[rows, cols]` → `[cols, rows]`.
    fn transposed(&self) -> Mat {
        let (rows, cols) = (self.rows(), self.cols());
        let data = (0..rows * cols).map(|e| self.data[(e % rows) * cols + e / rows]).collect();
        Mat { shape: vec![cols, rows], data }
    }
}

/// The low-rank factors of one module.
#[derive(Debug, Clone, PartialEq)]
pub enum Patch {
    /// LoRA / LoCon: ΔW = up · down, down `[r, in(, kh, kw)]`, up `[out, r(, 1, 1)]`.
    LoRa {
        /// `lora_down` / `lora_A`.
        down: Mat,
        /// `lora_up` / `lora_B`.
        up: Mat,
    },
    /// LoHa: ΔW = (w1a · w1b) ⊙ (w2a · w2b).
    LoHa {
        /// `hada_w1_a` `[out, r]`.
        w1a: Mat,
        /// `hada_w1_b` `[r, in…]`.
        w1b: Mat,
        /// `hada_w2_a`.
        w2a: Mat,
        /// `hada_w2_b`.
        w2b: Mat,
    },
    /// LoKr: ΔW = w1 ⊗ w2 (Kronecker product), each factor full or as a product a · b.
    LoKr {
        /// `lokr_w1`, or (`lokr_w1_a`, `lokr_w1_b`).
        w1: Factor,
        /// `lokr_w2`, or (`lokr_w2_a`, `lokr_w2_b`).
        w2: Factor,
    },
    /// A full update (LyCORIS `diff`; a norm's `w_norm` or a bias change as `[out, 1]`): ΔW = diff.
    Full {
        /// `[out, in(, kh, kw)]`, or `[out, 1]`.
        diff: Mat,
    },
}

/// One LoKr factor.
#[derive(Debug, Clone, PartialEq)]
pub enum Factor {
    /// Stored whole.
    Full(Mat),
    /// Stored as a low-rank product a · b.
    Product(Mat, Mat),
}

/// One module of a LoRA file.
#[derive(Debug, Clone, PartialEq)]
pub struct Module {
    /// The part it patches.
    pub component: Component,
    /// Its name in the file's convention.
    pub name: ModuleName,
    /// The factors; `None` when the module uses a variant we do not apply (see `unsupported`).
    pub patch: Option<Patch>,
    /// `.alpha`, if stored.
    pub alpha: Option<f32>,
    /// DoRA: the magnitudes the merged weight's channels get (PEFT `lora_magnitude_vector` or kohya/LyCORIS
    /// `dora_scale`).
    pub magnitude: Option<Magnitude>,
    /// A change to the module's bias; its key is the last of `keys`.
    pub bias: Option<BiasDelta>,
    /// The file's keys for this module.
    pub keys: Vec<String>,
    /// Why the module cannot be applied, when `patch` and `bias` are `None`.
    pub unsupported: Option<String>,
}

impl Module {
    /// Whether the module changes anything (a weight, a bias or both).
    pub fn applies(&self) -> bool {
        self.patch.is_some() || self.bias.is_some()
    }
}

/// A change to a module's bias: `bias += scale · values`.
#[derive(Debug, Clone, PartialEq)]
pub struct BiasDelta {
    /// The values, one per output channel, as the `[out, 1]` full update ([`Patch::Full`]) of the `[out]` bias.
    pub patch: Patch,
    /// How it is scaled: by the LoRA's weight and the module's alpha / r (PEFT's `lora_B.bias`, merged like the
    /// matrices it comes with) or by the weight alone (LyCORIS `diff_b` / `b_norm`, as A1111's `network_full` and
    /// `network_norm` add them).
    pub alpha_scaled: bool,
}

/// DoRA magnitudes and how they apply ([`super::merge::apply_dora`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Magnitude {
    /// One value per channel of the axis `rule` names.
    pub values: Vec<f32>,
    /// Whose rule merges them.
    pub rule: DoraRule,
}

/// The two DoRA merge rules in the wild.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DoraRule {
    /// PEFT (`lora_magnitude_vector`, what diffusers fuses): per output channel, rescaled even at weight 0.
    Peft,
    /// kohya/LyCORIS (`dora_scale`, as A1111 and ComfyUI merge it): the LoRA's weight scales the change.
    Kohya(DoraAxis),
}

/// The channels a kohya/LyCORIS `dora_scale` normalizes, read from its shape: `[out, 1, …]` or `[1, in, …]`
/// (LyCORIS' `wd_on_out` true or false).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DoraAxis {
    /// One magnitude per output channel (a row of the `[out, in·kh·kw]` weight).
    Output,
    /// One magnitude per input channel (its column, or its kh·kw columns for a convolution).
    Input,
}

impl DoraAxis {
    /// The axis a `dora_scale` of `shape` scales; `None` when the shape does not say (a vector, or no singleton).
    fn of(shape: &[usize]) -> Option<Self> {
        match shape {
            [1, n, rest @ ..] if *n > 1 && rest.iter().all(|&d| d == 1) => Some(DoraAxis::Input),
            [n, rest @ ..] if *n > 1 && !rest.is_empty() && rest.iter().all(|&d| d == 1) => Some(DoraAxis::Output),
            _ => None,
        }
    }
}

/// A parsed LoRA file.
#[derive(Debug, Clone)]
pub struct LoraFile {
    /// Where it was read from.
    pub path: PathBuf,
    /// Its modules, sorted by component and name.
    pub modules: Vec<Module>,
    /// Keys that belong to no known module layout.
    pub unknown_keys: Vec<String>,
    /// A 64-bit hash of the file's bytes (cache keys).
    pub content_hash: u64,
    /// Size in bytes.
    pub size: u64,
}

impl LoraFile {
    /// Number of tensors in the file.
    pub fn tensor_count(&self) -> usize {
        self.modules.iter().map(|m| m.keys.len()).sum::<usize>() + self.unknown_keys.len()
    }

    /// Whether any module targets `component`.
    pub fn touches(&self, component: Component) -> bool {
        self.modules.iter().any(|m| m.component == component && m.applies())
    }
}

/// Key suffixes, longest first within each family, and what they hold.
const SUFFIXES: &[(&str, Part)] = &[
    (".lora_down.weight", Part::Down),
    (".lora_up.weight", Part::Up),
    (".lora_A.default.weight", Part::Down),
    (".lora_B.default.weight", Part::Up),
    (".lora_A.weight", Part::Down),
    (".lora_B.weight", Part::Up),
    (".lora_linear_layer.down.weight", Part::Down),
    (".lora_linear_layer.up.weight", Part::Up),
    ("_lora.down.weight", Part::Down),
    ("_lora.up.weight", Part::Up),
    (".lora.down.weight", Part::Down),
    (".lora.up.weight", Part::Up),
    (".alpha", Part::Alpha),
    (".hada_w1_a", Part::Hada(0)),
    (".hada_w1_b", Part::Hada(1)),
    (".hada_w2_a", Part::Hada(2)),
    (".hada_w2_b", Part::Hada(3)),
    (".lokr_w1_a", Part::Lokr(1)),
    (".lokr_w1_b", Part::Lokr(2)),
    (".lokr_w2_a", Part::Lokr(4)),
    (".lokr_w2_b", Part::Lokr(5)),
    (".lokr_w1", Part::Lokr(0)),
    (".lokr_w2", Part::Lokr(3)),
    (".lora_mid.weight", Part::Mid),
    (".hada_t1", Part::HadaCore(0)),
    (".hada_t2", Part::HadaCore(1)),
    (".lokr_t2", Part::LokrCore),
    (".dora_scale", Part::DoraScale),
    (".lora_magnitude_vector", Part::Magnitude),
    (".diff_b", Part::DiffBias),
    (".diff", Part::Diff),
    (".w_norm", Part::NormWeight),
    (".b_norm", Part::DiffBias),
    (".lora_B.bias", Part::UpBias),
];

#[derive(Debug, Clone, Copy, PartialEq)]
enum Part {
    Down,
    Up,
    /// LyCORIS Tucker LoCon's core tensor.
    Mid,
    Alpha,
    Hada(usize),
    /// A Tucker LoHa's core for its first or second product.
    HadaCore(usize),
    Lokr(usize),
    /// A Tucker LoKr's core for its second factor.
    LokrCore,
    /// PEFT's DoRA magnitude (one value per output channel).
    Magnitude,
    /// kohya/LyCORIS DoRA magnitudes.
    DoraScale,
    /// LyCORIS full module's ΔW.
    Diff,
    /// LyCORIS norm module's scale change.
    NormWeight,
    /// LyCORIS bias change (full or norm module).
    DiffBias,
    /// PEFT `lora_B.bias`.
    UpBias,
}

#[derive(Default)]
struct Parts {
    down: Option<Mat>,
    up: Option<Mat>,
    mid: Option<Mat>,
    alpha: Option<f32>,
    hada: [Option<Mat>; 4],
    hada_core: [Option<Mat>; 2],
    lokr: [Option<Mat>; 6],
    lokr_core: Option<Mat>,
    magnitude: Option<Mat>,
    dora_scale: Option<Mat>,
    diff: Option<Mat>,
    /// (key, tensor) of a `diff_b` or `lora_B.bias`, and whether alpha / r scales it.
    bias: Option<(String, Mat, bool)>,
    unsupported: Option<&'static str>,
    keys: Vec<String>,
}

/// The component and module name of a module prefix, or None for keys of no known model part.
fn split_prefix(prefix: &str) -> Option<(Component, ModuleName)> {
    let flat = [
        ("lora_unet_", Component::Unet),
        ("lora_te1_", Component::TextEncoder),
        ("lora_te2_", Component::TextEncoder2),
        ("lora_te_", Component::TextEncoder),
    ];
    for (p, c) in flat {
        if let Some(rest) = prefix.strip_prefix(p) {
            return Some((c, ModuleName::Flat(rest.to_string())));
        }
    }
    let dotted = [
        ("unet.", Component::Unet),
        ("text_encoder_2.", Component::TextEncoder2),
        ("text_encoder.", Component::TextEncoder),
    ];
    for (p, c) in dotted {
        if let Some(rest) = prefix.strip_prefix(p) {
            return Some((c, ModuleName::Dotted(clean_dotted(rest, c))));
        }
    }
    None
}

/// diffusers' older names → module paths: `attn1.processor.to_q` → `attn1.to_q`, `to_out` → `to_out.0`; text
/// encoder attention processors `to_q` → `q_proj` etc.
fn clean_dotted(name: &str, component: Component) -> String {
    let mut s = name.replace(".processor.", ".");
    if component == Component::Unet {
        if s.ends_with(".to_out") {
            s.push_str(".0");
        }
    } else {
        for (old, new) in [("to_q", "q_proj"), ("to_k", "k_proj"), ("to_v", "v_proj"), ("to_out", "out_proj")] {
            if let Some(head) = s.strip_suffix(old) {
                if head.ends_with("self_attn.") {
                    s = format!("{head}{new}");
                    break;
                }
            }
        }
    }
    s
}

fn read_mat(st: &SafeTensors<'_>, key: &str, path: &Path) -> Result<Mat> {
    let view = st.tensor(key).map_err(|e| Error::model_invalid(path, format!("tensor `{key}`: {e}")))?;
    let bytes = view.data();
    let data: Vec<f32> = match view.dtype() {
        Dtype::F32 => bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
        Dtype::F16 => bytes.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        Dtype::BF16 => bytes.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        Dtype::F64 => {
            bytes.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32).collect()
        }
        other => {
            return Err(Error::model_invalid(
                path,
                format!("tensor `{key}` has dtype {other:?}; LoRA tensors must be floats"),
            ))
        }
    };
    if let Some(bad) = data.iter().position(|v| !v.is_finite()) {
        return Err(Error::model_invalid(path, format!("tensor `{key}` holds a non-finite value at element {bad}")));
    }
    Ok(Mat { shape: view.shape().to_vec(), data })
}

/// [`read_mat`] of a tensor that must be a vector (one value per channel); `what` names it in the error.
fn read_vector(st: &SafeTensors<'_>, key: &str, path: &Path, what: &str) -> Result<Mat> {
    let m = read_mat(st, key, path)?;
    if m.shape.len() != 1 {
        return Err(Error::model_invalid(
            path,
            format!("{what} `{key}` must be a vector [C], has shape {:?}", m.shape),
        ));
    }
    Ok(m)
}

/// A stable 64-bit FNV-1a hash of `bytes`, 8 bytes at a time (content fingerprints for cache keys).
pub fn content_hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        h ^= u64::from_le_bytes(c.try_into().expect("8 bytes"));
        h = h.wrapping_mul(0x0000_0100_0000_01b3).rotate_left(29);
    }
    for &b in chunks.remainder() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^ bytes.len() as u64
}

/// Parse the bytes of a LoRA file read from `path`. Corrupt or truncated files are `Error::ModelInvalid`.
pub fn parse(path: &Path, bytes: &[u8]) -> Result<LoraFile> {
    let st = SafeTensors::deserialize(bytes)
        .map_err(|e| Error::model_invalid(path, format!("not a readable .safetensors LoRA file: {e}")))?;
    let mut groups: BTreeMap<String, Parts> = BTreeMap::new();
    let mut unknown_keys = Vec::new();
    let mut names: Vec<String> = st.names().into_iter().map(String::from).collect();
    names.sort();
    for key in names {
        let Some((prefix, part)) =
            SUFFIXES.iter().find_map(|(s, p)| key.strip_suffix(s).map(|prefix| (prefix.to_string(), *p)))
        else {
            unknown_keys.push(key);
            continue;
        };
        let g = groups.entry(prefix).or_default();
        if !matches!(part, Part::DiffBias | Part::UpBias) {
            g.keys.push(key.clone());
        }
        match part {
            Part::Down => g.down = Some(read_mat(&st, &key, path)?),
            Part::Up => g.up = Some(read_mat(&st, &key, path)?),
            Part::Mid => g.mid = Some(read_mat(&st, &key, path)?),
            Part::Alpha => {
                let m = read_mat(&st, &key, path)?;
                if m.data.len() != 1 {
                    return Err(Error::model_invalid(
                        path,
                        format!("`{key}` must be a scalar, has shape {:?}", m.shape),
                    ));
                }
                g.alpha = Some(m.data[0]);
            }
            Part::Hada(i) => g.hada[i] = Some(read_mat(&st, &key, path)?),
            Part::HadaCore(i) => g.hada_core[i] = Some(read_mat(&st, &key, path)?),
            Part::Lokr(i) => g.lokr[i] = Some(read_mat(&st, &key, path)?),
            Part::LokrCore => g.lokr_core = Some(read_mat(&st, &key, path)?),
            Part::Magnitude => g.magnitude = Some(read_mat(&st, &key, path)?),
            Part::DoraScale => g.dora_scale = Some(read_mat(&st, &key, path)?),
            Part::Diff | Part::NormWeight if g.diff.is_some() => {
                return Err(Error::model_invalid(
                    path,
                    format!("`{key}` and another full change both change one weight"),
                ))
            }
            Part::Diff => g.diff = Some(read_mat(&st, &key, path)?),
            Part::NormWeight => {
                let m = read_vector(&st, &key, path, "norm change")?;
                // A `[C]` scale merges as a `[C, 1]` update.
                g.diff = Some(Mat { shape: vec![m.data.len(), 1], data: m.data });
            }
            Part::DiffBias | Part::UpBias => {
                if let Some((other, ..)) = &g.bias {
                    return Err(Error::model_invalid(path, format!("`{other}` and `{key}` both change one bias")));
                }
                let m = read_vector(&st, &key, path, "bias change")?;
                g.bias = Some((key, m, part == Part::UpBias));
            }
        }
    }
    let mut modules = Vec::new();
    for (prefix, mut g) in groups {
        let Some((component, name)) = split_prefix(&prefix) else {
            unknown_keys.extend(g.keys);
            continue;
        };
        let peft = g.magnitude.take().map(|m| Magnitude { values: m.data, rule: DoraRule::Peft });
        if peft.is_some() && g.down.is_none() && g.up.is_none() {
            g.unsupported = Some("DoRA (lora_magnitude_vector) with anything but LoRA matrices");
        }
        let kohya = g.dora_scale.take().and_then(|m| match DoraAxis::of(&m.shape) {
            Some(axis) => Some(Magnitude { values: m.data, rule: DoraRule::Kohya(axis) }),
            None => {
                g.unsupported = Some("kohya/LyCORIS DoRA whose dora_scale shape is neither [out, 1, …] nor [1, in, …]");
                None
            }
        });
        if peft.is_some() && kohya.is_some() {
            g.unsupported = Some("DoRA with both lora_magnitude_vector and dora_scale");
        }
        let magnitude = peft.or(kohya);
        let (alpha, mut keys, bias) = (g.alpha, std::mem::take(&mut g.keys), g.bias.take());
        let (patch, mut unsupported) = build_patch(g, &prefix, path)?;
        let magnitude = magnitude.filter(|_| patch.is_some());
        let bias = match bias {
            Some((key, ..)) if unsupported.is_some() => {
                keys.push(key);
                None
            }
            Some((key, _, true)) if !matches!(patch, Some(Patch::LoRa { .. })) => {
                return Err(Error::model_invalid(
                    path,
                    format!("`{key}` comes without the lora_A/lora_B it belongs to"),
                ))
            }
            Some((key, m, alpha_scaled)) => {
                keys.push(key);
                let diff = Mat { shape: vec![m.data.len(), 1], data: m.data };
                Some(BiasDelta { patch: Patch::Full { diff }, alpha_scaled })
            }
            None => None,
        };
        if patch.is_none() && bias.is_none() && unsupported.is_none() {
            unsupported = Some("an alpha without LoRA matrices".into());
        }
        modules.push(Module { component, name, patch, alpha, magnitude, bias, keys, unsupported });
    }
    modules.sort_by(|a, b| (a.component, &a.name).cmp(&(b.component, &b.name)));
    Ok(LoraFile {
        path: path.to_path_buf(),
        modules,
        unknown_keys,
        content_hash: content_hash(bytes),
        size: bytes.len() as u64,
    })
}

type Built = (Option<Patch>, Option<String>);

/// A Tucker factor's input side with its core folded in: `core` `[r, r, kh, kw]` and `down` `[r, in(, 1, 1)]` give
/// `[r, in, kh, kw]` with down'[n, i, y, x] = Σ_m core[n, m, y, x] · down[m, i] (summed in f64, rounded once).
/// `names` (core, down) name the tensors in the error.
fn fold_tucker_mid(mid: &Mat, down: &Mat, names: (&str, &str)) -> std::result::Result<Mat, String> {
    let (r, inputs) = (down.rows(), down.cols());
    let square = mid.shape.len() == 4 && mid.shape[0] == r && mid.shape[1] == r;
    if !square || down.shape.iter().skip(2).any(|&d| d != 1) {
        return Err(format!(
            "Tucker {} {:?} and {} {:?} do not chain (the core must be [r, r, kh, kw], the other [r, in, 1, 1])",
            names.0, mid.shape, names.1, down.shape
        ));
    }
    let kernel = mid.shape[2] * mid.shape[3];
    let mut data = vec![0f32; r * inputs * kernel];
    for n in 0..r {
        for i in 0..inputs {
            for yx in 0..kernel {
                let sum: f64 = (0..r)
                    .map(|m| f64::from(mid.data[(n * r + m) * kernel + yx]) * f64::from(down.data[m * inputs + i]))
                    .sum();
                data[(n * inputs + i) * kernel + yx] = sum as f32;
            }
        }
    }
    Ok(Mat { shape: vec![r, inputs, mid.shape[2], mid.shape[3]], data })
}

/// The patch of one module's factors (`prefix` and `path` for errors).
fn build_patch(parts: Parts, prefix: &str, path: &Path) -> Result<Built> {
    let Parts { down, up, mid, hada, hada_core, lokr, lokr_core, diff, unsupported, .. } = parts;
    if let Some(what) = unsupported {
        return Ok((None, Some(format!("{what} is not supported"))));
    }
    let incomplete = |what: &str| Error::model_invalid(path, format!("module `{prefix}`: {what}"));
    if let Some(diff) = diff {
        if down.is_some() || up.is_some() || hada.iter().chain(&lokr).any(Option::is_some) {
            return Err(incomplete("has both a full diff and low-rank factors"));
        }
        if diff.shape.len() < 2 {
            return Err(incomplete(&format!("diff must be [out, in(, kh, kw)], is {:?}", diff.shape)));
        }
        return Ok((Some(Patch::Full { diff }), None));
    }
    let down = match (mid, down) {
        (Some(mid), Some(down)) => {
            Some(fold_tucker_mid(&mid, &down, ("lora_mid", "lora_down")).map_err(|m| incomplete(&m))?)
        }
        (Some(_), None) => return Err(incomplete("has lora_mid without lora_down")),
        (None, down) => down,
    };
    if down.is_some() || up.is_some() {
        let (Some(down), Some(up)) = (down, up) else {
            return Err(incomplete("has only one of the two LoRA matrices (down/up, A/B)"));
        };
        if down.shape.len() < 2 || up.shape.len() < 2 || up.shape[1] != down.shape[0] || up.cols() != down.rows() {
            return Err(incomplete(&format!(
                "LoRA up {:?} and down {:?} do not chain (up must be [out, r(, 1, 1)], down [r, in(, kh, kw)])",
                up.shape, down.shape
            )));
        }
        return Ok((Some(Patch::LoRa { down, up }), None));
    }
    if hada.iter().any(Option::is_some) {
        let [Some(w1a), Some(w1b), Some(w2a), Some(w2b)] = hada else {
            return Err(incomplete("LoHa needs hada_w1_a, hada_w1_b, hada_w2_a and hada_w2_b"));
        };
        // Tucker LoHa (A1111's make_weight_cp): w_a `[r, out]`, w_b `[r, in]`, core `[r, r, kh, kw]` make the
        // product w_aᵀ · fold(core, w_b), an ordinary `[out, r]` · `[r, in, kh, kw]` pair.
        let [t1, t2] = hada_core;
        let tucker = |a: Mat, b: Mat, core: Option<Mat>, n: &str| match core {
            None => Ok((a, b)),
            Some(core) if a.shape.len() == 2 => {
                let names = (format!("hada_t{n}"), format!("hada_w{n}_b"));
                let b = fold_tucker_mid(&core, &b, (&names.0, &names.1)).map_err(|m| incomplete(&m))?;
                Ok((a.transposed(), b))
            }
            Some(_) => Err(incomplete(&format!("Tucker LoHa hada_w{n}_a must be [r, out], is {:?}", a.shape))),
        };
        let (w1a, w1b) = tucker(w1a, w1b, t1, "1")?;
        let (w2a, w2b) = tucker(w2a, w2b, t2, "2")?;
        let ok = w1a.cols() == w1b.rows()
            && w2a.cols() == w2b.rows()
            && w1a.rows() == w2a.rows()
            && w1b.cols() == w2b.cols();
        if !ok {
            return Err(incomplete("LoHa factor shapes do not chain"));
        }
        return Ok((Some(Patch::LoHa { w1a, w1b, w2a, w2b }), None));
    }
    if lokr.iter().any(Option::is_some) {
        let [w1, w1a, w1b, w2, w2a, w2b] = lokr;
        let factor = |full: Option<Mat>, a: Option<Mat>, b: Option<Mat>, n: &str| match (full, a, b) {
            (Some(f), None, None) => Ok(Factor::Full(f)),
            (None, Some(a), Some(b)) if a.cols() == b.rows() => Ok(Factor::Product(a, b)),
            _ => Err(incomplete(&format!("LoKr needs lokr_{n} or a chaining lokr_{n}_a and lokr_{n}_b"))),
        };
        let w1 = factor(w1, w1a, w1b, "w1")?;
        // Tucker LoKr: lokr_w2_a `[r, out]`, lokr_w2_b `[r, in]` and lokr_t2 `[r, r, kh, kw]` (make_weight_cp).
        let w2 = match (lokr_core, w2a, w2b) {
            (Some(core), Some(a), Some(b)) if w2.is_none() && a.shape.len() == 2 && a.rows() == b.rows() => {
                let b = fold_tucker_mid(&core, &b, ("lokr_t2", "lokr_w2_b")).map_err(|m| incomplete(&m))?;
                Factor::Product(a.transposed(), b)
            }
            (Some(_), ..) => {
                return Err(incomplete("Tucker LoKr needs lokr_w2_a [r, out] and lokr_w2_b [r, in] with lokr_t2"))
            }
            (None, a, b) => factor(w2, a, b, "w2")?,
        };
        return Ok((Some(Patch::LoKr { w1, w2 }), None));
    }
    // No weight change (a bias change alone, or only an alpha: the caller tells them apart).
    Ok((None, None))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/loras").join(name)
    }

    #[test]
    fn kohya_and_peft_fixtures_parse_to_the_same_factors() {
        let read = |n: &str| {
            let p = fixture(n);
            parse(&p, &std::fs::read(&p).unwrap()).unwrap()
        };
        let k = read("kohya_a.safetensors");
        let p = read("peft_a.safetensors");
        assert!(k.unknown_keys.is_empty() && p.unknown_keys.is_empty());
        assert_eq!(k.modules.len(), 225);
        assert_eq!(p.modules.len(), 225);
        assert_eq!(k.tensor_count(), 675);
        assert!(k.modules.iter().all(|m| m.patch.is_some() && m.alpha == Some(2.0)));
        assert!(p.modules.iter().all(|m| m.patch.is_some() && m.alpha.is_none()));
        let m = p
            .modules
            .iter()
            .find(|m| m.name == ModuleName::Dotted("down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q".into()))
            .unwrap();
        let Some(Patch::LoRa { down, up }) = &m.patch else { panic!() };
        assert_eq!((down.shape.clone(), up.shape.clone()), (vec![4, 32], vec![32, 4]));
        assert_ne!(k.content_hash, p.content_hash);
    }

    #[test]
    fn a_dora_scale_says_its_axis_by_its_singleton_dimension() {
        assert_eq!(DoraAxis::of(&[1, 640]), Some(DoraAxis::Input));
        assert_eq!(DoraAxis::of(&[1, 320, 1, 1]), Some(DoraAxis::Input));
        assert_eq!(DoraAxis::of(&[640, 1]), Some(DoraAxis::Output));
        assert_eq!(DoraAxis::of(&[320, 1, 1, 1]), Some(DoraAxis::Output));
        // A vector (or a single value) does not say which channels it scales: the module is reported, not guessed.
        assert_eq!(DoraAxis::of(&[640]), None);
        assert_eq!(DoraAxis::of(&[1, 1]), None);
        assert_eq!(DoraAxis::of(&[4, 640]), None);
    }

    #[test]
    fn old_diffusers_names_are_cleaned() {
        assert_eq!(
            split_prefix("unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.processor.to_out"),
            Some((
                Component::Unet,
                ModuleName::Dotted("down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_out.0".into())
            ))
        );
        assert_eq!(
            split_prefix("text_encoder.text_model.encoder.layers.0.self_attn.to_k"),
            Some((Component::TextEncoder, ModuleName::Dotted("text_model.encoder.layers.0.self_attn.k_proj".into())))
        );
        assert_eq!(split_prefix("lora_te_text_model_x").unwrap().0, Component::TextEncoder);
        assert_eq!(split_prefix("model.diffusion_model.x"), None);
    }

    #[test]
    fn truncated_and_garbage_files_are_model_errors() {
        let p = fixture("peft_b.safetensors");
        let bytes = std::fs::read(&p).unwrap();
        for bad in [&bytes[..bytes.len() - 100], &bytes[..5], b"not a safetensors file at all".as_slice()] {
            let e = parse(&p, bad).unwrap_err();
            assert!(matches!(e, Error::ModelInvalid { .. }), "{e}");
        }
    }
}
