//! The weight update of one module, ΔW = scale · f(factors), accumulated in f32 and added to the base weight in
//! the base weight's own dtype — what diffusers' `fuse_lora` (PEFT `merge`) and A1111's `networks.py` compute:
//! - LoRA / LoCon: ΔW = (alpha / r) · up · down, with `up` `[out, r]` and `down` `[r, in·kh·kw]` (convolution
//!   factors flattened; r = down's first dimension; no alpha → scale 1, as PEFT files without alphas load).
//! - LoHa: ΔW = (alpha / r) · (w1a · w1b) ⊙ (w2a · w2b), r = w1b's first dimension.
//! - LoKr: ΔW = scale · w1 ⊗ w2 with scale = alpha / r where r is the rank of the factorized factor (w1_b's, else
//!   w2_b's first dimension), and 1 when neither factor is factorized (LyCORIS' and A1111's rule).

use super::formats::{Factor, Mat, Patch};
use super::keymap::Layout;
use crate::runtime::onnx_proto::{decode_floats, encode_floats};

/// `out [m, n] += s · a [m, k] · b [k, n]`.
///
/// A register-blocked kernel (4 rows × 16 columns of accumulators, summed over k, then scaled and added), compiled
/// twice: for AVX2+FMA, chosen at run time, and for the baseline target. Each output element is
/// `out + s · Σ_p a[i, p] · b[p, j]` summed in p order, so both variants agree to float rounding.
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
    kernel::<false>(a, b, m, k, n, s, out);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn matmul_acc_avx2(a: &[f32], b: &[f32], m: usize, k: usize, n: usize, s: f32, out: &mut [f32]) {
    kernel::<true>(a, b, m, k, n, s, out);
}

const MR: usize = 4;
const NR: usize = 16;

#[inline(always)]
fn madd<const FMA: bool>(x: f32, y: f32, acc: f32) -> f32 {
    if FMA {
        x.mul_add(y, acc)
    } else {
        acc + x * y
    }
}

#[inline(always)]
fn kernel<const FMA: bool>(a: &[f32], b: &[f32], m: usize, k: usize, n: usize, s: f32, out: &mut [f32]) {
    let mut i = 0;
    while i + MR <= m {
        rows_block::<FMA, MR>(a, b, i, k, n, s, out);
        i += MR;
    }
    while i < m {
        rows_block::<FMA, 1>(a, b, i, k, n, s, out);
        i += 1;
    }
}

/// Rows `i..i + R` of the product: R × NR accumulators per column block (kept in registers: R is a constant).
#[inline(always)]
fn rows_block<const FMA: bool, const R: usize>(
    a: &[f32],
    b: &[f32],
    i: usize,
    k: usize,
    n: usize,
    s: f32,
    out: &mut [f32],
) {
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
                    acc[r][c] = madd::<FMA>(f, brow[c], acc[r][c]);
                }
            }
        }
        for r in 0..R {
            let o: &mut [f32; NR] = (&mut out[(i + r) * n + j..(i + r) * n + j + NR]).try_into().expect("NR columns");
            for c in 0..NR {
                o[c] = madd::<FMA>(s, acc[r][c], o[c]);
            }
        }
        j += NR;
    }
    for r in 0..R {
        for j in full_cols..n {
            let mut acc = 0f32;
            for p in 0..k {
                acc = madd::<FMA>(a_rows[r][p], b[p * n + j], acc);
            }
            out[(i + r) * n + j] = madd::<FMA>(s, acc, out[(i + r) * n + j]);
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
    }
}

/// The alpha scale of a patch (`alpha / rank`, or 1).
pub fn alpha_scale(patch: &Patch, alpha: Option<f32>) -> f32 {
    let rank = match patch {
        Patch::LoRa { down, .. } => Some(down.rows()),
        Patch::LoHa { w1b, .. } => Some(w1b.rows()),
        Patch::LoKr { w1, w2 } => w1.rank().or_else(|| w2.rank()),
    };
    match (alpha, rank) {
        (Some(a), Some(r)) if r > 0 => a / r as f32,
        _ => 1.0,
    }
}

/// Add `scale · ΔW` (shape [`delta_shape`]) to `acc`, a `[out, cols]` f32 buffer.
pub fn accumulate(patch: &Patch, scale: f32, acc: &mut [f32]) {
    match patch {
        Patch::LoRa { down, up } => matmul_acc(&up.data, &down.data, up.rows(), down.rows(), down.cols(), scale, acc),
        Patch::LoHa { w1a, w1b, w2a, w2b } => {
            let (x, y) = (product(w1a, w1b), product(w2a, w2b));
            for ((o, a), b) in acc.iter_mut().zip(&x).zip(&y) {
                *o += scale * a * b;
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
                            *o += f * v;
                        }
                    }
                }
            }
        }
    }
}

/// `base += delta` where `delta` is `[out, cols]` in torch layout and `base` is stored in `layout`.
pub fn add_delta(base: &mut [f32], delta: &[f32], out: usize, cols: usize, layout: Layout) {
    match layout {
        Layout::Torch => base.iter_mut().zip(delta).for_each(|(b, d)| *b += d),
        Layout::Transposed => {
            for o in 0..out {
                for c in 0..cols {
                    base[c * out + o] += delta[o * cols + c];
                }
            }
        }
    }
}

/// `base + delta` as little-endian bytes of `data_type`, from `base` in that type and layout: decoded, added and
/// encoded a block at a time (no full-size f32 copy of the weight).
pub fn add_delta_encoded(
    base: &[u8],
    data_type: i32,
    delta: &[f32],
    out: usize,
    cols: usize,
    layout: Layout,
) -> Vec<u8> {
    const BLOCK: usize = 4096;
    let size = base.len() / delta.len().max(1);
    let mut result = Vec::with_capacity(base.len());
    for (b, raw) in base.chunks(BLOCK * size).enumerate() {
        let mut values = decode_floats(raw, data_type);
        let first = b * BLOCK;
        match layout {
            Layout::Torch => values.iter_mut().zip(&delta[first..]).for_each(|(v, d)| *v += d),
            Layout::Transposed => {
                // base is [cols, out]: element e is (c = e / out, o = e % out).
                for (k, v) in values.iter_mut().enumerate() {
                    let e = first + k;
                    *v += delta[(e % out) * cols + e / out];
                }
            }
        }
        result.extend_from_slice(&encode_floats(&values, data_type));
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mat(shape: &[usize], seed: u32) -> Mat {
        let n: usize = shape.iter().product();
        let data =
            (0..n).map(|i| (((i as u32).wrapping_mul(2654435761u32) ^ seed) % 1000) as f32 / 500.0 - 1.0).collect();
        Mat { shape: shape.to_vec(), data }
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
            let mut generic = vec![1f32; m * n];
            kernel::<false>(&a.data, &b.data, m, k, n, -0.5, &mut generic);
            assert!(out.iter().zip(&generic).all(|(x, y)| (x - y).abs() < 1e-6));
        }
    }

    #[test]
    fn transposed_layout_adds_the_transpose() {
        let mut base = vec![0f32; 6]; // [in 3, out 2]
        add_delta(&mut base, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 2, 3, Layout::Transposed);
        assert_eq!(base, [1.0, 4.0, 2.0, 5.0, 3.0, 6.0]);
        // The blockwise encoded version agrees, in every float type and across block boundaries.
        use crate::runtime::onnx_proto::{DT_BFLOAT16, DT_FLOAT, DT_FLOAT16};
        let (out, cols) = (70, 130);
        let delta: Vec<f32> = mat(&[out, cols], 9).data;
        let base: Vec<f32> = mat(&[out, cols], 10).data;
        for dt in [DT_FLOAT, DT_FLOAT16, DT_BFLOAT16] {
            for layout in [Layout::Torch, Layout::Transposed] {
                let raw = encode_floats(&base, dt);
                let mut want = decode_floats(&raw, dt);
                add_delta(&mut want, &delta, out, cols, layout);
                let got = add_delta_encoded(&raw, dt, &delta, out, cols, layout);
                assert_eq!(got, encode_floats(&want, dt), "{dt} {layout:?}");
            }
        }
    }
}
