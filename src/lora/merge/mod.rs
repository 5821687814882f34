//! The weight update of one module, ΔW = scale · f(factors), accumulated in f32 and added to the base weight in
//! the base weight's own dtype — what diffusers' `fuse_lora` (PEFT `merge`) and A1111's `networks.py` compute:
//! - LoRA / LoCon: ΔW = (alpha / r) · up · down, with `up` `[out, r]` and `down` `[r, in·kh·kw]` (convolution
//!   factors flattened; r = down's first dimension; no alpha → scale 1, as PEFT files without alphas load).
//! - LoHa: ΔW = (alpha / r) · (w1a · w1b) ⊙ (w2a · w2b), r = w1b's first dimension.
//! - LoKr: ΔW = scale · w1 ⊗ w2 with scale = alpha / r where r is the rank of the factorized factor (w1_b's, else
//!   w2_b's first dimension), and 1 when neither factor is factorized (LyCORIS' and A1111's rule).

use super::formats::{DoraAxis, DoraRule, Factor, Magnitude, Mat, Patch};
use super::keymap::Layout;
use crate::runtime::onnx_proto::{
    decode_floats, decode_floats_into, encode_floats, encode_floats_into, float_elem_size,
};

/// `out [m, n] += s · a [m, k] · b [k, n]`.
///
/// A register-blocked kernel (4 rows × 16 columns of accumulators, summed over k, then scaled and added), compiled
/// twice: for AVX2+FMA, chosen at run time, and for the baseline target. Every element is
/// `fma(s, Σ_p a[i, p] · b[p, j], out)` with the sum a chain of fused multiply-adds from 0 in p order, in both
/// variants (the baseline one calls the C library's `fmaf` where the target has no FMA instruction), so the result
/// does not depend on the CPU — and equals [`apply_in_place`]'s fast path to the bit.
pub fn matmul_acc(a: &[f32], b: &[f32], m: usize, k: usize, n: usize, s: f32, out: &mut [f32]) {
    assert!(a.len() >= m * k && b.len() >= k * n && out.len() >= m * n, "matmul_acc: slices too short");
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU supports the features the function is compiled for (checked just above).
            unsafe { matmul_acc_avx2(a, b, m, k, n, s, out) };
            return;
        }
    }
    kernel(a, b, m, k, n, s, out);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn matmul_acc_avx2(a: &[f32], b: &[f32], m: usize, k: usize, n: usize, s: f32, out: &mut [f32]) {
    kernel(a, b, m, k, n, s, out);
}

const MR: usize = 4;
const NR: usize = 16;

#[inline(always)]
fn madd(x: f32, y: f32, acc: f32) -> f32 {
    x.mul_add(y, acc)
}

#[inline(always)]
fn kernel(a: &[f32], b: &[f32], m: usize, k: usize, n: usize, s: f32, out: &mut [f32]) {
    let mut i = 0;
    while i + MR <= m {
        rows_block::<MR>(a, b, i, k, n, s, out);
        i += MR;
    }
    while i < m {
        rows_block::<1>(a, b, i, k, n, s, out);
        i += 1;
    }
}

/// Rows `i..i + R` of the product: R × NR accumulators per column block (kept in registers: R is a constant).
#[inline(always)]
fn rows_block<const R: usize>(a: &[f32], b: &[f32], i: usize, k: usize, n: usize, s: f32, out: &mut [f32]) {
    let a_rows: [&[f32]; R] = std::array::from_fn(|r| &a[(i + r) * k..(i + r + 1) * k]);
    let full_cols = n - n % NR;
    let mut j = 0;
    while j < full_cols {
        let mut acc = [[0f32; NR]; R];
        for p in 0..k {
            let brow: &[f32; NR] = b[p * n + j..p * n + j + NR].try_into().expect("NR columns");
            for r in 0..R {
                let f = a_rows[r][p];
                for c in 0..NR {
                    acc[r][c] = madd(f, brow[c], acc[r][c]);
                }
            }
        }
        for r in 0..R {
            let o: &mut [f32; NR] = (&mut out[(i + r) * n + j..(i + r) * n + j + NR]).try_into().expect("NR columns");
            for c in 0..NR {
                o[c] = madd(s, acc[r][c], o[c]);
            }
        }
        j += NR;
    }
    for r in 0..R {
        for j in full_cols..n {
            let mut acc = 0f32;
            for p in 0..k {
                acc = madd(a_rows[r][p], b[p * n + j], acc);
            }
            out[(i + r) * n + j] = madd(s, acc, out[(i + r) * n + j]);
        }
    }
}

fn product(a: &Mat, b: &Mat) -> Vec<f32> {
    let mut out = vec![0f32; a.rows() * b.cols()];
    matmul_acc(&a.data, &b.data, a.rows(), a.cols(), b.cols(), 1.0, &mut out);
    out
}

impl Factor {
    fn materialize(&self) -> (usize, usize, Vec<f32>) {
        match self {
            Factor::Full(m) => (m.rows(), m.cols(), m.data.clone()),
            Factor::Product(a, b) => (a.rows(), b.cols(), product(a, b)),
        }
    }

    fn rank(&self) -> Option<usize> {
        match self {
            Factor::Full(_) => None,
            Factor::Product(_, b) => Some(b.rows()),
        }
    }
}

/// The shape `[out, cols]` of a patch's ΔW.
pub fn delta_shape(patch: &Patch) -> (usize, usize) {
    match patch {
        Patch::LoRa { down, up } => (up.rows(), down.cols()),
        Patch::LoHa { w1a, w1b, .. } => (w1a.rows(), w1b.cols()),
        Patch::LoKr { w1, w2 } => {
            let dims = |f: &Factor| match f {
                Factor::Full(m) => (m.rows(), m.cols()),
                Factor::Product(a, b) => (a.rows(), b.cols()),
            };
            let ((a, b), (c, d)) = (dims(w1), dims(w2));
            (a * c, b * d)
        }
        Patch::Full { diff } => (diff.rows(), diff.cols()),
    }
}

/// The alpha scale of a patch (`alpha / rank`, or 1; a full `diff` has no rank and, as in A1111's `network_full`,
/// no alpha).
pub fn alpha_scale(patch: &Patch, alpha: Option<f32>) -> f32 {
    let rank = match patch {
        Patch::LoRa { down, .. } => Some(down.rows()),
        Patch::LoHa { w1b, .. } => Some(w1b.rows()),
        Patch::LoKr { w1, w2 } => w1.rank().or_else(|| w2.rank()),
        Patch::Full { .. } => None,
    };
    match (alpha, rank) {
        (Some(a), Some(r)) if r > 0 => a / r as f32,
        _ => 1.0,
    }
}

/// Add `scale · ΔW` (shape [`delta_shape`]) to `acc`, a `[out, cols]` f32 buffer: each value becomes
/// `fma(scale, ΔW value, acc value)`, as in [`matmul_acc`] (so a full `diff` and the LoRA factors `diff` · identity
/// change a weight alike, to the bit).
pub fn accumulate(patch: &Patch, scale: f32, acc: &mut [f32]) {
    match patch {
        Patch::LoRa { down, up } => matmul_acc(&up.data, &down.data, up.rows(), down.rows(), down.cols(), scale, acc),
        Patch::LoHa { w1a, w1b, w2a, w2b } => {
            let (x, y) = (product(w1a, w1b), product(w2a, w2b));
            for ((o, a), b) in acc.iter_mut().zip(&x).zip(&y) {
                *o = scale.mul_add(a * b, *o);
            }
        }
        Patch::LoKr { w1, w2 } => {
            let (a, b, x) = w1.materialize();
            let (c, d, y) = w2.materialize();
            let cols = b * d;
            for i in 0..a {
                for j in 0..b {
                    let f = scale * x[i * b + j];
                    for k in 0..c {
                        let row = &mut acc[(i * c + k) * cols + j * d..(i * c + k) * cols + (j + 1) * d];
                        for (o, &v) in row.iter_mut().zip(&y[k * d..(k + 1) * d]) {
                            *o = f.mul_add(v, *o);
                        }
                    }
                }
            }
        }
        Patch::Full { diff } => acc.iter_mut().zip(&diff.data).for_each(|(o, d)| *o = scale.mul_add(*d, *o)),
    }
}

/// `base` (little-endian `data_type` values stored in `layout`) as f32 in torch layout `[out, cols]`.
fn decode_torch(base: &[u8], data_type: i32, out: usize, cols: usize, layout: Layout) -> Vec<f32> {
    let stored = decode_floats(base, data_type);
    match layout {
        Layout::Torch => stored,
        Layout::Transposed => transpose(&stored, cols, out),
    }
}

/// [`decode_torch`] backwards: `values` (`[out, cols]`) rounded to `data_type` and written over `base`.
fn encode_torch(values: &[f32], base: &mut [u8], data_type: i32, out: usize, cols: usize, layout: Layout) {
    let stored = match layout {
        Layout::Torch => encode_floats(values, data_type),
        Layout::Transposed => encode_floats(&transpose(values, out, cols), data_type),
    };
    base.copy_from_slice(&stored);
}

/// One term of [`apply_dora`].
#[derive(Debug, Clone, Copy)]
pub struct DoraTerm<'a> {
    /// The factors.
    pub patch: &'a Patch,
    /// alpha / rank (see [`alpha_scale`]).
    pub alpha_scale: f32,
    /// The LoRA's weight in the request.
    pub weight: f32,
    /// DoRA magnitudes, if the module has them.
    pub magnitude: Option<&'a Magnitude>,
}

/// `base` merged with `terms` in order when one of them is DoRA. Per term, with Δ = alpha_scale · ΔW(patch):
/// - a plain term adds weight · Δ;
/// - a PEFT DoRA term (what diffusers' `fuse_lora` runs, PEFT's `DoraLinearVariant.merge_unsafe`) makes each
///   output channel `o` of the weight `m[o] / ‖W₀[o] + weight·Δ[o]‖ · (W[o] + weight·Δ[o])`, where W₀ is the
///   unmerged base and W the weight so far; so at weight 0 it still rescales the channels to its magnitudes;
/// - a kohya/LyCORIS DoRA term (`dora_scale`, A1111's `apply_weight_decompose` and ComfyUI's `weight_decompose`)
///   makes D = (W + Δ) · m / ‖W + Δ‖, the norms taken per output channel or per input channel (all output
///   channels and kernel positions of it) as the magnitudes' shape says, and the weight becomes W + weight · (D − W);
///   at weight 0 it changes nothing.
///
/// `spatial` is the number of kernel positions per input channel (kh · kw; 1 for a Linear). Computed in f32 (the
/// norms summed in f64) on a `[out, cols]` copy and rounded to the stored type once; `base` is untouched when a
/// shape does not fit.
pub fn apply_dora(
    base: &mut [u8],
    data_type: i32,
    out: usize,
    cols: usize,
    spatial: usize,
    layout: Layout,
    terms: &[DoraTerm<'_>],
) -> Result<(), String> {
    check_fit(base, data_type, out, cols, terms.iter().map(|t| t.patch))?;
    for m in terms.iter().filter_map(|t| t.magnitude) {
        let (want, what) = match m.rule {
            DoraRule::Kohya(DoraAxis::Input) => (cols / spatial.max(1), "input"),
            _ => (out, "output"),
        };
        if m.values.len() != want {
            return Err(format!("a DoRA magnitude of {} values does not fit {want} {what} channels", m.values.len()));
        }
    }
    let w0 = decode_torch(base, data_type, out, cols, layout);
    let mut w = w0.clone();
    let mut delta = vec![0f32; out * cols];
    for t in terms {
        delta.fill(0.0);
        match t.magnitude {
            // As `apply_in_place` merges it.
            None => accumulate(t.patch, t.alpha_scale * t.weight, &mut w),
            Some(Magnitude { values: m, rule: DoraRule::Peft }) => {
                accumulate(t.patch, t.alpha_scale * t.weight, &mut delta);
                let rows = w.chunks_exact_mut(cols).zip(delta.chunks_exact(cols)).zip(w0.chunks_exact(cols));
                for (o, ((row, d), base_row)) in rows.enumerate() {
                    let norm = norm(base_row.iter().zip(d).map(|(b, d)| b + d));
                    let factor = m[o] / norm;
                    row.iter_mut().zip(d).for_each(|(x, d)| *x = factor * (*x + d));
                }
            }
            Some(Magnitude { values: m, rule: DoraRule::Kohya(axis) }) => {
                accumulate(t.patch, t.alpha_scale, &mut delta);
                delta.iter_mut().zip(&w).for_each(|(d, x)| *d += x); // W + Δ
                let factors: Vec<f32> = match axis {
                    DoraAxis::Output => {
                        delta.chunks_exact(cols).zip(m).map(|(row, m)| m / norm(row.iter().copied())).collect()
                    }
                    DoraAxis::Input => {
                        // One row-major pass (a column walk would stride through the whole weight per channel).
                        let mut squares = vec![0f64; m.len()];
                        for (e, v) in delta.iter().enumerate() {
                            squares[e % cols / spatial.max(1)] += f64::from(*v).powi(2);
                        }
                        squares.iter().zip(m).map(|(s, m)| m / s.sqrt() as f32).collect()
                    }
                };
                for (e, (x, merged)) in w.iter_mut().zip(&delta).enumerate() {
                    let f = match axis {
                        DoraAxis::Output => factors[e / cols],
                        DoraAxis::Input => factors[e % cols / spatial.max(1)],
                    };
                    *x += t.weight * (merged * f - *x);
                }
            }
        }
    }
    encode_torch(&w, base, data_type, out, cols, layout);
    Ok(())
}

/// The Euclidean norm of `values`, summed in f64.
fn norm(values: impl Iterator<Item = f32>) -> f32 {
    values.map(|v| f64::from(v).powi(2)).sum::<f64>().sqrt() as f32
}

/// One LoRA term of a fused merge in storage orientation: the stored weight (`[m, n]` row-major) gets
/// `s · a [m, k] · b [k, n]`.
struct Term<'a> {
    a: std::borrow::Cow<'a, [f32]>,
    b: std::borrow::Cow<'a, [f32]>,
    k: usize,
    s: f32,
    /// Every factor value is an exact bfloat16 and `k` is even: the AVX-512 path may use its bf16 pair kernel.
    bf16: bool,
}

/// True when every value has a zero low half, i.e. is exactly a bfloat16 (a factor read from a bf16 file).
fn bf16_exact(values: &[f32]) -> bool {
    values.iter().all(|v| v.to_bits() & 0xFFFF == 0)
}

/// `[rows, cols]` → `[cols, rows]`.
fn transpose(data: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0f32; data.len()];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = data[r * cols + c];
        }
    }
    t
}

/// Which implementation [`apply_in_place`] uses for LoRA terms (tests compare them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    /// The fastest the CPU supports (the bf16 pair kernel for bf16 factors on AVX512_BF16 CPUs).
    Auto,
    /// The AVX-512 f32 kernel even for bf16 factors.
    #[cfg_attr(not(test), allow(dead_code))]
    Avx512,
    /// The AVX2 kernel even on AVX-512 CPUs (where available).
    #[cfg_attr(not(test), allow(dead_code))]
    Avx2,
    /// The portable row-block path (what CPUs without AVX2, FMA and F16C run).
    #[cfg_attr(not(test), allow(dead_code))]
    Portable,
    /// The portable path with the baseline (no SIMD extensions) build of the product kernel.
    #[cfg_attr(not(test), allow(dead_code))]
    Scalar,
}

/// `base += Σ scale · ΔW(patch)` over `terms`, in place: `base` holds little-endian `data_type` values
/// (float32, float16 or bfloat16) of a weight whose ΔW is `[out, cols]`, stored in `layout`.
///
/// The result equals, to the bit, the reference and still the path for LoHa and LoKr terms: the weight decoded to
/// f32, [`accumulate`] of every term into it (in order), rounded back to `data_type` once. For a LoRA term each
/// value becomes `fma(scale, Σ_p up[o, p] · down[p, c], w)`, the sum a chain of fused multiply-adds from 0 in p
/// order. Plain LoRA / LoCon terms never materialize ΔW: the stored weight is walked in tiles (6 rows × 64 columns
/// on AVX-512 CPUs, 6 × 16 on AVX2 ones, whose accumulators stay in registers; 8-row blocks with a reused
/// per-thread f32 buffer elsewhere), and each tile's `up · down`, summed in f32, goes into the decoded weight by
/// that one fused multiply-add, rounded back and stored in place.
/// Errors (instead of touching `base`) when its length or a factor's shape does not fit `[out, cols]`.
pub fn apply_in_place(
    base: &mut [u8],
    data_type: i32,
    out: usize,
    cols: usize,
    layout: Layout,
    terms: &[(&Patch, f32)],
) -> Result<(), String> {
    apply_with(base, data_type, out, cols, layout, terms, Path::Auto)
}

/// Whether `base` holds `out × cols` values of `data_type` and every patch's ΔW is `[out, cols]` with factors of
/// the lengths the product kernels read; the message says what does not fit.
fn check_fit<'p>(
    base: &[u8],
    data_type: i32,
    out: usize,
    cols: usize,
    patches: impl IntoIterator<Item = &'p Patch>,
) -> Result<(), String> {
    let Some(size) = float_elem_size(data_type) else {
        return Err(format!("data type {data_type} is not float32, float16 or bfloat16"));
    };
    if base.len() != out * cols * size {
        return Err(format!("{} bytes do not hold {out} x {cols} values of {size} bytes", base.len()));
    }
    for patch in patches {
        if delta_shape(patch) != (out, cols) {
            let (o, c) = delta_shape(patch);
            return Err(format!("a {o} x {c} update does not fit a {out} x {cols} weight"));
        }
        if let Patch::LoRa { down, up } = patch {
            // The kernels read `up` as [out, r] and `down` as [r, cols].
            let r = down.rows();
            if up.data.len() != out * r || down.data.len() != r * cols {
                return Err(format!(
                    "LoRA factors of {} and {} values do not make [{out}, {r}] · [{r}, {cols}]",
                    up.data.len(),
                    down.data.len()
                ));
            }
        }
    }
    Ok(())
}

fn apply_with(
    base: &mut [u8],
    data_type: i32,
    out: usize,
    cols: usize,
    layout: Layout,
    terms: &[(&Patch, f32)],
    path: Path,
) -> Result<(), String> {
    check_fit(base, data_type, out, cols, terms.iter().map(|t| t.0))?;
    if terms.is_empty() || out * cols == 0 {
        return Ok(());
    }
    if !terms.iter().all(|(p, _)| matches!(p, Patch::LoRa { .. })) {
        reference_apply(base, data_type, out, cols, layout, terms);
        return Ok(());
    }
    // Storage orientation: torch [out, cols] = up · down; transposed [cols, out] = downᵀ · upᵀ (the same products,
    // fma(x, y, acc) being symmetric in x and y).
    let (m, n) = match layout {
        Layout::Torch => (out, cols),
        Layout::Transposed => (cols, out),
    };
    let lora_terms: Vec<Term<'_>> = terms
        .iter()
        .filter_map(|(patch, s)| match patch {
            Patch::LoRa { down, up } => {
                let k = down.rows();
                let bf16 = k % 2 == 0 && path == Path::Auto && bf16_exact(&down.data) && bf16_exact(&up.data);
                Some(match layout {
                    Layout::Torch => Term { a: (&up.data[..]).into(), b: (&down.data[..]).into(), k, s: *s, bf16 },
                    Layout::Transposed => Term {
                        a: transpose(&down.data, k, cols).into(),
                        b: transpose(&up.data, out, k).into(),
                        k,
                        s: *s,
                        bf16,
                    },
                })
            }
            _ => None,
        })
        .collect();
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY (both calls): the CPU has the features (checked); `base` holds m·n values of `data_type` (checked
        // above), every term's `a` is [m, k] and `b` [k, n] (delta_shape checked above), and there is a term.
        if path == Path::Auto && lora_terms.iter().any(|t| t.bf16) && avx512::bf16_available() {
            unsafe { avx512::apply_bf16(base, data_type, m, n, &lora_terms) };
            return Ok(());
        }
        if matches!(path, Path::Auto | Path::Avx512) && avx512::available() {
            unsafe { avx512::apply(base, data_type, m, n, &lora_terms) };
            return Ok(());
        }
        if matches!(path, Path::Auto | Path::Avx2) && avx2::available() {
            unsafe { avx2::apply(base, data_type, m, n, &lora_terms) };
            return Ok(());
        }
    }
    portable_apply(base, data_type, m, n, &lora_terms, path == Path::Scalar);
    Ok(())
}

/// The reference: the weight decoded to f32, every term's scale · ΔW added in order ([`accumulate`]), rounded back
/// once. What every LoRA path must equal to the bit; the path for LoHa, LoKr and full terms.
fn reference_apply(base: &mut [u8], data_type: i32, out: usize, cols: usize, layout: Layout, terms: &[(&Patch, f32)]) {
    let mut values = decode_torch(base, data_type, out, cols, layout);
    for (patch, scale) in terms {
        accumulate(patch, *scale, &mut values);
    }
    encode_torch(&values, base, data_type, out, cols, layout);
}

/// Rows per block of the portable path.
const BLOCK_ROWS: usize = 8;

thread_local! {
    /// The portable path's per-thread f32 block (`BLOCK_ROWS` rows of the widest weight seen), reused across calls.
    static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `BLOCK_ROWS` rows at a time: decoded into a reused f32 buffer, every term added ([`matmul_acc`]), encoded back
/// in place.
fn portable_apply(base: &mut [u8], data_type: i32, m: usize, n: usize, terms: &[Term<'_>], scalar: bool) {
    let size = base.len() / (m * n);
    SCRATCH.with(|cell| {
        let mut scratch = cell.borrow_mut();
        if scratch.len() < BLOCK_ROWS * n {
            scratch.resize(BLOCK_ROWS * n, 0.0);
        }
        let mut i = 0;
        while i < m {
            let rows = BLOCK_ROWS.min(m - i);
            let block = &mut scratch[..rows * n];
            let raw = &mut base[i * n * size..(i + rows) * n * size];
            decode_floats_into(raw, data_type, block);
            for t in terms {
                let a = &t.a[i * t.k..(i + rows) * t.k];
                if scalar {
                    kernel(a, &t.b, rows, t.k, n, t.s, block);
                } else {
                    matmul_acc(a, &t.b, rows, t.k, n, t.s, block);
                }
            }
            encode_floats_into(block, data_type, raw);
            i += rows;
        }
    });
}

#[cfg(target_arch = "x86_64")]
mod avx2;

/// Asks for the cache lines of the `bytes` bytes at `p` (`PREFETCHT0`), for the x86 kernels.
///
/// # Safety
/// None beyond the caller's: prefetching never faults, so `p` may lie past the end of an allocation (use
/// `wrapping_add` to make it).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn prefetch(p: *const u8, bytes: usize) {
    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
    for line in 0..bytes.div_ceil(64) {
        _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(64 * line) as *const i8);
    }
}

/// Asks for the stored weight's lines that a tile walk over the column chunk `j0..j1` reaches `ahead` columns after
/// the tile at column `j` of rows `i..i + rows`: further along the same rows, or, past the chunk's end, as far into
/// the next row group (rows `i + rows..`, from `j0`). The weight has `n` values of `size` bytes per row; `bytes` per
/// row are asked for.
///
/// # Safety
/// As [`prefetch`]: none beyond the caller's.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn prefetch_ahead(
    base: *const u8,
    (n, size): (usize, usize),
    (i, rows): (usize, usize),
    (j, j0, j1): (usize, usize, usize),
    ahead: usize,
    bytes: usize,
) {
    let to = j + ahead;
    let (pi, pj) = if to < j1 { (i, to) } else { (i + rows, j0 + (to - j1)) };
    for r in 0..rows {
        prefetch(base.wrapping_add(((pi + r) * n + pj) * size), bytes);
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512;

#[cfg(test)]
mod tests {
    use super::*;

    fn mat(shape: &[usize], seed: u32) -> Mat {
        let n: usize = shape.iter().product();
        let data =
            (0..n).map(|i| (((i as u32).wrapping_mul(2654435761u32) ^ seed) % 1000) as f32 / 500.0 - 1.0).collect();
        Mat { shape: shape.to_vec(), data }
    }

    #[test]
    fn dora_rescales_each_output_channel_to_its_magnitude_even_at_weight_zero() {
        let (out, cols) = (3, 5);
        let w: Vec<f32> = mat(&[out, cols], 7).data;
        let patch = Patch::LoRa { down: mat(&[2, cols], 1), up: mat(&[out, 2], 2) };
        let m = Magnitude { values: vec![0.5f32, 2.0, 3.0], rule: DoraRule::Peft };
        let norms = |v: &[f32], rows: usize, n: usize| -> Vec<f32> {
            (0..rows).map(|o| v[o * n..(o + 1) * n].iter().map(|x| x * x).sum::<f32>().sqrt()).collect()
        };
        for (layout, scale) in [(Layout::Torch, 0.0f32), (Layout::Torch, 0.8), (Layout::Transposed, 0.8)] {
            let stored = if layout == Layout::Torch { w.clone() } else { transpose(&w, out, cols) };
            let mut base = encode_floats(&stored, crate::runtime::onnx_proto::DT_FLOAT);
            let term = DoraTerm { patch: &patch, alpha_scale: 1.0, weight: scale, magnitude: Some(&m) };
            apply_dora(&mut base, crate::runtime::onnx_proto::DT_FLOAT, out, cols, 1, layout, &[term]).unwrap();
            let got = decode_floats(&base, crate::runtime::onnx_proto::DT_FLOAT);
            let got = if layout == Layout::Torch { got } else { transpose(&got, cols, out) };
            for (n, want) in norms(&got, out, cols).iter().zip(&m.values) {
                assert!((n - want).abs() < 1e-5, "{layout:?} scale {scale}: row norm {n}, magnitude {want}");
            }
            if scale == 0.0 {
                // weight 0: the direction is the base's, only the lengths change
                let base_norms = norms(&w, out, cols);
                for o in 0..out {
                    for c in 0..cols {
                        let want = w[o * cols + c] * m.values[o] / base_norms[o];
                        assert!((got[o * cols + c] - want).abs() < 1e-6);
                    }
                }
            }
        }
        let mut base = encode_floats(&w, crate::runtime::onnx_proto::DT_FLOAT);
        let before = base.clone();
        let short = Magnitude { values: vec![0.5, 2.0], rule: DoraRule::Peft };
        let term = DoraTerm { patch: &patch, alpha_scale: 1.0, weight: 1.0, magnitude: Some(&short) };
        let err = apply_dora(&mut base, crate::runtime::onnx_proto::DT_FLOAT, out, cols, 1, Layout::Torch, &[term]);
        assert!(err.unwrap_err().contains("2 values does not fit 3 output channels"));
        assert_eq!(base, before, "untouched on error");
    }

    #[test]
    fn kohya_dora_gives_each_channel_its_magnitude_at_weight_one_and_blends_at_other_weights() {
        // A 3×3 convolution [out 4, in 3, 3, 3]: `dora_scale` [1, in, 1, 1] normalizes each input channel over all
        // output channels and kernel positions (A1111's rule), [out, 1, 1, 1] each output channel.
        let (out, inputs, spatial) = (4, 3, 9);
        let cols = inputs * spatial;
        let dt = crate::runtime::onnx_proto::DT_FLOAT;
        let w: Vec<f32> = mat(&[out, cols], 5).data;
        let patch = Patch::LoRa { down: mat(&[2, cols], 3), up: mat(&[out, 2], 4) };
        let merged = |weight: f32, m: &Magnitude| {
            let mut base = encode_floats(&w, dt);
            let term = DoraTerm { patch: &patch, alpha_scale: 0.5, weight, magnitude: Some(m) };
            apply_dora(&mut base, dt, out, cols, spatial, Layout::Torch, &[term]).unwrap();
            decode_floats(&base, dt)
        };
        let by_input = |v: &[f32], i: usize| -> f32 {
            (0..out).flat_map(|o| &v[o * cols + i * spatial..][..spatial]).map(|x| x * x).sum::<f32>().sqrt()
        };
        let by_output =
            |v: &[f32], o: usize| -> f32 { v[o * cols..][..cols].iter().map(|x| x * x).sum::<f32>().sqrt() };
        let cases = [
            (Magnitude { values: vec![1.5, 0.25, 2.0], rule: DoraRule::Kohya(DoraAxis::Input) }, inputs),
            (Magnitude { values: vec![1.5, 0.25, 2.0, 0.75], rule: DoraRule::Kohya(DoraAxis::Output) }, out),
        ];
        for (m, channels) in &cases {
            let full = merged(1.0, m);
            for c in 0..*channels {
                let n = match m.rule {
                    DoraRule::Kohya(DoraAxis::Input) => by_input(&full, c),
                    _ => by_output(&full, c),
                };
                assert!(
                    (n - m.values[c]).abs() < 1e-5,
                    "{:?}: channel {c} norm {n}, magnitude {}",
                    m.rule,
                    m.values[c]
                );
            }
            // Weight 0.3: 30 % of the way from the base to the full DoRA weight; weight 0: the base, to the bit.
            let part = merged(0.3, m);
            for ((p, f), b) in part.iter().zip(&full).zip(&w) {
                assert!((p - (b + 0.3 * (f - b))).abs() < 1e-6, "{:?}", m.rule);
            }
            assert_eq!(bits(&merged(0.0, m)), bits(&w), "{:?}", m.rule);
        }
        // The norms are those of base + alpha_scale · ΔW: a magnitude equal to them changes nothing.
        let delta = {
            let mut d = vec![0f32; out * cols];
            accumulate(&patch, 0.5, &mut d);
            d.iter().zip(&w).map(|(d, b)| d + b).collect::<Vec<f32>>()
        };
        let own = Magnitude {
            values: (0..out).map(|o| by_output(&delta, o)).collect(),
            rule: DoraRule::Kohya(DoraAxis::Output),
        };
        for (a, b) in merged(1.0, &own).iter().zip(&delta) {
            assert!((a - b).abs() < 1e-5);
        }
        // One value per input channel is checked against the input channels, not the columns.
        let wrong = Magnitude { values: vec![1.0; cols], rule: DoraRule::Kohya(DoraAxis::Input) };
        let term = DoraTerm { patch: &patch, alpha_scale: 1.0, weight: 1.0, magnitude: Some(&wrong) };
        let err = apply_dora(&mut encode_floats(&w, dt), dt, out, cols, spatial, Layout::Torch, &[term]).unwrap_err();
        assert!(err.contains("27 values does not fit 3 input channels"), "{err}");
    }

    fn naive(a: &Mat, b: &Mat) -> Vec<f32> {
        let (m, k, n) = (a.rows(), a.cols(), b.cols());
        let mut out = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] = (0..k).map(|p| a.data[i * k + p] * b.data[p * n + j]).sum();
            }
        }
        out
    }

    #[test]
    fn lora_conv_delta_is_up_times_flattened_down() {
        let down = mat(&[3, 5, 3, 3], 1);
        let up = mat(&[4, 3, 1, 1], 2);
        let patch = Patch::LoRa { down: down.clone(), up: up.clone() };
        assert_eq!(delta_shape(&patch), (4, 45));
        assert_eq!(alpha_scale(&patch, Some(1.5)), 0.5);
        assert_eq!(alpha_scale(&patch, None), 1.0);
        let mut acc = vec![0f32; 4 * 45];
        accumulate(&patch, 2.0, &mut acc);
        let want = naive(&Mat { shape: vec![4, 3], data: up.data }, &Mat { shape: vec![3, 45], data: down.data });
        for (a, w) in acc.iter().zip(&want) {
            assert!((a - 2.0 * w).abs() < 1e-5);
        }
    }

    #[test]
    fn loha_and_lokr_match_their_definitions() {
        let (w1a, w1b, w2a, w2b) = (mat(&[6, 2], 1), mat(&[2, 4], 2), mat(&[6, 2], 3), mat(&[2, 4], 4));
        let p = Patch::LoHa { w1a: w1a.clone(), w1b: w1b.clone(), w2a: w2a.clone(), w2b: w2b.clone() };
        let mut acc = vec![0f32; 24];
        accumulate(&p, 1.0, &mut acc);
        let (x, y) = (naive(&w1a, &w1b), naive(&w2a, &w2b));
        assert!(acc.iter().zip(x.iter().zip(&y)).all(|(a, (x, y))| (a - x * y).abs() < 1e-5));
        assert_eq!(alpha_scale(&p, Some(4.0)), 2.0);

        // kron([2,3], [3,2]) = [6, 6]: element (i*3+k, j*2+l) = w1[i,j] * w2[k,l].
        let w1 = mat(&[2, 3], 5);
        let (a, b) = (mat(&[3, 1], 6), mat(&[1, 2], 7));
        let p = Patch::LoKr { w1: Factor::Full(w1.clone()), w2: Factor::Product(a.clone(), b.clone()) };
        assert_eq!(delta_shape(&p), (6, 6));
        assert_eq!(alpha_scale(&p, Some(3.0)), 3.0);
        let mut acc = vec![0f32; 36];
        accumulate(&p, 1.0, &mut acc);
        let w2 = naive(&a, &b);
        for i in 0..2 {
            for j in 0..3 {
                for k in 0..3 {
                    for l in 0..2 {
                        let want = w1.data[i * 3 + j] * w2[k * 2 + l];
                        assert!((acc[(i * 3 + k) * 6 + j * 2 + l] - want).abs() < 1e-6);
                    }
                }
            }
        }
        let full = Patch::LoKr { w1: Factor::Full(w1), w2: Factor::Full(mat(&[3, 2], 8)) };
        assert_eq!(alpha_scale(&full, Some(3.0)), 1.0);
    }

    #[test]
    fn blocked_kernel_matches_the_naive_product_on_ragged_shapes() {
        for (m, k, n) in [(1, 1, 1), (5, 3, 17), (4, 32, 16), (9, 7, 40), (3, 2, 5)] {
            let (a, b) = (mat(&[m, k], 11), mat(&[k, n], 12));
            let mut out = vec![1f32; m * n];
            matmul_acc(&a.data, &b.data, m, k, n, -0.5, &mut out);
            let want = naive(&a, &b);
            for (o, w) in out.iter().zip(&want) {
                assert!((o - (1.0 - 0.5 * w)).abs() < 1e-5, "{m}x{k}x{n}");
            }
            // The baseline build of the kernel (fused multiply-adds in software where needed) agrees to the bit.
            let mut generic = vec![1f32; m * n];
            kernel(&a.data, &b.data, m, k, n, -0.5, &mut generic);
            assert_eq!(bits(&out), bits(&generic), "{m}x{k}x{n}");
        }
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    /// [`reference_apply`] on a copy.
    fn reference(base: &[u8], dt: i32, out: usize, cols: usize, layout: Layout, terms: &[(&Patch, f32)]) -> Vec<u8> {
        let mut merged = base.to_vec();
        reference_apply(&mut merged, dt, out, cols, layout, terms);
        merged
    }

    fn lora(out: usize, cols: usize, rank: usize, seed: u32) -> Patch {
        Patch::LoRa { down: mat(&[rank, cols], seed), up: mat(&[out, rank], seed + 1) }
    }

    /// `patch` with every factor value cut to a bfloat16 (what a bf16 LoRA file holds once read).
    fn to_bf16(patch: Patch) -> Patch {
        let cut =
            |m: Mat| Mat { data: m.data.iter().map(|v| f32::from_bits(v.to_bits() & 0xFFFF_0000)).collect(), ..m };
        match patch {
            Patch::LoRa { down, up } => Patch::LoRa { down: cut(down), up: cut(up) },
            other => other,
        }
    }

    #[test]
    fn bf16_factors_merge_to_the_same_bits_on_every_path() {
        use crate::runtime::onnx_proto::{DT_FLOAT, DT_FLOAT16};
        // On AVX512_BF16 CPUs `Auto` runs the pair kernel for the even-rank terms (rank 3 keeps the f32 loop).
        for (si, &(out, cols)) in [(6, 64), (17, 97), (13, 2100), (5, 90), (64, 40)].iter().enumerate() {
            let seed = 300 + 10 * si as u32;
            let p1 = to_bf16(lora(out, cols, 32, seed));
            let (p2, p3) = (to_bf16(lora(out, cols, 4, seed + 2)), to_bf16(lora(out, cols, 3, seed + 4)));
            let mixed = lora(out, cols, 8, seed + 6); // not bf16: the f32 loop beside the pair kernel
            let term_sets: [Vec<(&Patch, f32)>; 3] =
                [vec![(&p1, 0.4)], vec![(&p1, 0.7), (&p2, -0.3)], vec![(&p3, 1.0), (&p1, 0.25), (&mixed, 2.0)]];
            let base_f: Vec<f32> = mat(&[out, cols], seed + 9).data.iter().map(|v| v * 8.0).collect();
            for dt in [DT_FLOAT16, DT_FLOAT] {
                let raw = encode_floats(&base_f, dt);
                for layout in [Layout::Torch, Layout::Transposed] {
                    for terms in &term_sets {
                        let want = reference(&raw, dt, out, cols, layout, terms);
                        for path in [Path::Auto, Path::Avx512, Path::Avx2, Path::Portable] {
                            let mut got = raw.clone();
                            apply_with(&mut got, dt, out, cols, layout, terms, path).unwrap();
                            assert!(got == want, "{out}x{cols} dt {dt} {layout:?} {} terms {path:?}", terms.len());
                        }
                    }
                }
            }
        }
        assert!(bf16_exact(&[1.0, -0.5, 2f32.powi(-60)]) && !bf16_exact(&[1.0, 0.1]));
    }

    #[test]
    fn fused_in_place_merge_equals_the_reference_to_the_bit() {
        use crate::runtime::onnx_proto::{DT_BFLOAT16, DT_FLOAT, DT_FLOAT16};
        // Ragged rows and columns (tile tails, masked vectors), a column count over one chunk of `b` at rank 32
        // (2,016 columns), and one to three terms of different ranks and signs.
        let shapes = [(1, 1), (3, 5), (6, 64), (9, 50), (17, 97), (13, 2100), (64, 40), (7, 130), (5, 90)];
        for (si, &(out, cols)) in shapes.iter().enumerate() {
            let seed = 20 + 10 * si as u32;
            let (p1, p2, p3) = (lora(out, cols, 32, seed), lora(out, cols, 4, seed + 2), lora(out, cols, 1, seed + 4));
            let term_sets: [Vec<(&Patch, f32)>; 3] =
                [vec![(&p1, 0.4)], vec![(&p1, 0.7), (&p2, -0.3)], vec![(&p3, 1.0), (&p1, 0.25), (&p2, 2.0)]];
            let mut base_f: Vec<f32> = mat(&[out, cols], seed + 9).data.iter().map(|v| v * 8.0).collect();
            base_f[0] = -0.0; // a signed zero the update must not flip
            for dt in [DT_FLOAT16, DT_BFLOAT16, DT_FLOAT] {
                let raw = encode_floats(&base_f, dt);
                for layout in [Layout::Torch, Layout::Transposed] {
                    for terms in &term_sets {
                        let want = reference(&raw, dt, out, cols, layout, terms);
                        for path in [Path::Auto, Path::Avx2, Path::Portable, Path::Scalar] {
                            let mut got = raw.clone();
                            apply_with(&mut got, dt, out, cols, layout, terms, path).unwrap();
                            assert!(got == want, "{out}x{cols} dt {dt} {layout:?} {} terms {path:?}", terms.len());
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn zero_updates_keep_every_bit_of_the_base() {
        use crate::runtime::onnx_proto::DT_FLOAT16;
        let (out, cols) = (9, 20);
        let zero = Patch::LoRa { down: Mat { shape: vec![2, cols], data: vec![0.0; 2 * cols] }, up: mat(&[out, 2], 3) };
        let base: Vec<f32> = (0..out * cols).map(|i| if i % 2 == 0 { -0.0 } else { i as f32 * 0.1 }).collect();
        let raw = encode_floats(&base, DT_FLOAT16);
        for path in [Path::Auto, Path::Avx2, Path::Portable, Path::Scalar] {
            let mut got = raw.clone();
            apply_with(&mut got, DT_FLOAT16, out, cols, Layout::Torch, &[(&zero, -1.0)], path).unwrap();
            // Each value becomes fma(-1, +0, w) = w + (-0): w itself, -0.0 included.
            assert_eq!(got, raw, "{path:?}");
        }
    }

    #[test]
    fn loha_and_lokr_terms_merge_in_place_through_the_reference() {
        use crate::runtime::onnx_proto::DT_FLOAT16;
        let loha =
            Patch::LoHa { w1a: mat(&[6, 2], 1), w1b: mat(&[2, 4], 2), w2a: mat(&[6, 2], 3), w2b: mat(&[2, 4], 4) };
        let plain = lora(6, 4, 3, 5);
        let Patch::LoHa { w1a, w1b, w2a, w2b } = &loha else { unreachable!() };
        let Patch::LoRa { down, up } = &plain else { unreachable!() };
        let (x, y, z) = (naive(w1a, w1b), naive(w2a, w2b), naive(up, down));
        let w: Vec<f32> = mat(&[6, 4], 6).data.iter().map(|v| half::f16::from_f32(*v).to_f32()).collect();
        for layout in [Layout::Torch, Layout::Transposed] {
            let stored = if layout == Layout::Torch { w.clone() } else { transpose(&w, 6, 4) };
            let mut got = encode_floats(&stored, DT_FLOAT16);
            apply_in_place(&mut got, DT_FLOAT16, 6, 4, layout, &[(&plain, 0.5), (&loha, -1.0)]).unwrap();
            let got = decode_torch(&got, DT_FLOAT16, 6, 4, layout);
            for e in 0..24 {
                let want = w[e] + 0.5 * z[e] - x[e] * y[e];
                assert!((got[e] - want).abs() <= 1e-3 * want.abs().max(1.0), "{layout:?} [{e}]: {} vs {want}", got[e]);
            }
        }
    }

    #[test]
    fn misfitting_buffers_and_factors_are_errors() {
        use crate::runtime::onnx_proto::DT_FLOAT16;
        let p = lora(4, 6, 2, 1);
        let mut short = vec![0u8; 4 * 6 * 2 - 2];
        assert!(apply_in_place(&mut short, DT_FLOAT16, 4, 6, Layout::Torch, &[(&p, 1.0)]).is_err());
        let mut raw = vec![0u8; 4 * 6 * 2];
        assert!(apply_in_place(&mut raw, DT_FLOAT16, 6, 4, Layout::Torch, &[(&p, 1.0)]).is_err());
        assert!(apply_in_place(&mut raw, 7, 4, 6, Layout::Torch, &[(&p, 1.0)]).is_err());
        // Factors whose inner dimensions disagree (the fields are public) are refused, not read out of bounds.
        let bad = Patch::LoRa { down: mat(&[2, 6], 1), up: Mat { shape: vec![4, 2], data: vec![0.5; 4] } };
        assert!(apply_in_place(&mut raw, DT_FLOAT16, 4, 6, Layout::Torch, &[(&bad, 1.0)]).is_err());
        assert!(raw.iter().all(|&b| b == 0), "nothing written on error");
    }

    #[test]
    fn transposed_weights_are_read_and_written_as_their_transpose() {
        use crate::runtime::onnx_proto::{DT_FLOAT, DT_FLOAT16};
        let stored = [1.0f32, 4.0, 2.0, 5.0, 3.0, 6.0]; // [in 3, out 2]
        for dt in [DT_FLOAT, DT_FLOAT16] {
            let raw = encode_floats(&stored, dt);
            let torch = decode_torch(&raw, dt, 2, 3, Layout::Transposed);
            assert_eq!(torch, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0], "[out 2, in 3]");
            let mut back = vec![0u8; raw.len()];
            encode_torch(&torch, &mut back, dt, 2, 3, Layout::Transposed);
            assert_eq!(back, raw);
        }
    }
}
