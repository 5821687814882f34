//! The AVX-512 path: register tiles of up to 6 rows × 64 columns (24 zmm accumulators; 6 × 64 measured a little
//! faster than 8 × 48 and 4 × 96 on Zen 4), fed a column chunk of `b` at a time so that the chunk stays in L2, with
//! the update of the stored weight fused into each tile's epilogue. On Zen 4 it does ~35 % more per CPU-second than
//! the AVX2 kernel (fewer instructions per FMA, 32 registers).
//!
//! Terms whose factors are all exact bfloat16 values (a LoRA file stored in bf16) and whose rank is even run on CPUs
//! with AVX512_BF16 (Zen 4, Sapphire Rapids) through `VDPBF16PS`, which multiplies two bf16 pairs per f32 lane per
//! instruction: half the instructions of the f32 loop. Its lane computes `(acc + x₁·y₁) + x₀·y₀`, each sum rounded
//! to nearest even and each product exact (8-bit significands), so packing rank index p into the high half and
//! p + 1 into the low half makes it the f32 path's chain `fma(a_p, b_p, acc)`, then `fma(a_{p+1}, b_{p+1}, ·)`, to
//! the bit (checked against the instruction on Zen 4 for 3.2 M random lanes). The instruction flushes subnormal
//! inputs and results to zero, which f32 FMA does not; only values below 1.2e-38 differ, far under a half-float
//! weight's resolution.
//!
//! The AVX-512 intrinsics are stable since Rust 1.89: this module needs `rust-version` ≥ 1.89 in Cargo.toml.

use std::arch::x86_64::*;

use super::{prefetch, prefetch_ahead, Term};
use crate::runtime::onnx_proto::{DT_BFLOAT16, DT_FLOAT16};

/// Whether the CPU has what [`apply`] is compiled for.
pub(super) fn available() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
}

/// Whether the CPU also has AVX512_BF16 (for [`apply_bf16`]).
pub(super) fn bf16_available() -> bool {
    available() && is_x86_feature_detected!("avx512bf16")
}

/// 16 stored values ↔ f32 lanes (`mask` selects the lanes that exist).
trait Store {
    /// Bytes per stored value.
    const SIZE: usize;
    unsafe fn load(p: *const u8, e: usize, mask: __mmask16) -> __m512;
    unsafe fn store(p: *mut u8, e: usize, mask: __mmask16, v: __m512);
}

struct F32;
struct F16;
struct Bf16;

impl Store for F32 {
    const SIZE: usize = 4;
    #[inline(always)]
    unsafe fn load(p: *const u8, e: usize, mask: __mmask16) -> __m512 {
        _mm512_maskz_loadu_ps(mask, p.cast::<f32>().add(e))
    }
    #[inline(always)]
    unsafe fn store(p: *mut u8, e: usize, mask: __mmask16, v: __m512) {
        _mm512_mask_storeu_ps(p.cast::<f32>().add(e), mask, v)
    }
}

impl Store for F16 {
    const SIZE: usize = 2;
    #[inline(always)]
    unsafe fn load(p: *const u8, e: usize, mask: __mmask16) -> __m512 {
        _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, p.cast::<i16>().add(e)))
    }
    #[inline(always)]
    unsafe fn store(p: *mut u8, e: usize, mask: __mmask16, v: __m512) {
        // Round to nearest even, as `half::f16::from_f32` does.
        let h = _mm512_cvtps_ph::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v);
        _mm256_mask_storeu_epi16(p.cast::<i16>().add(e), mask, h)
    }
}

impl Store for Bf16 {
    const SIZE: usize = 2;
    #[inline(always)]
    unsafe fn load(p: *const u8, e: usize, mask: __mmask16) -> __m512 {
        let bits = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mask, p.cast::<i16>().add(e)));
        _mm512_castsi512_ps(_mm512_slli_epi32::<16>(bits))
    }
    #[inline(always)]
    unsafe fn store(p: *mut u8, e: usize, mask: __mmask16, v: __m512) {
        // `half::bf16::from_f32`, element by element (bfloat16 weights are rare; the rounding rule is its own).
        let mut lanes = [0f32; 16];
        _mm512_storeu_ps(lanes.as_mut_ptr(), v);
        let dst = p.cast::<u16>().add(e);
        for (l, &x) in lanes.iter().enumerate() {
            if mask & (1 << l) != 0 {
                dst.add(l).write_unaligned(half::bf16::from_f32(x).to_bits().to_le());
            }
        }
    }
}

const TILE_ROWS: usize = 6;
const TILE_V: usize = 4;
const TILE_COLS: usize = 16 * TILE_V;
/// How many tiles ahead the stored weight is prefetched.
const PREFETCH_TILES: usize = 2;
/// Bytes of `b` a column chunk may span (Zen 4 and recent Intel cores have ≥ 1 MiB of L2).
const CHUNK_BYTES: usize = 256 * 1024;

/// # Safety
/// The CPU has the features of [`available`]; `base` holds m·n values of `data_type` (float16, bfloat16, else
/// float32); each term's `a` has m·k values and `b` k·n.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,fma,f16c")]
pub(super) unsafe fn apply(base: &mut [u8], data_type: i32, m: usize, n: usize, terms: &[Term<'_>]) {
    match data_type {
        DT_FLOAT16 => run::<F16, false>(base.as_mut_ptr(), m, n, terms),
        DT_BFLOAT16 => run::<Bf16, false>(base.as_mut_ptr(), m, n, terms),
        _ => run::<F32, false>(base.as_mut_ptr(), m, n, terms),
    }
}

/// [`apply`] with the bf16 pair kernel for the terms marked [`Term::bf16`] (see the module docs).
///
/// # Safety
/// As [`apply`], and the CPU has [`bf16_available`].
#[target_feature(enable = "avx512f,avx512bw,avx512vl,fma,f16c,avx512bf16")]
pub(super) unsafe fn apply_bf16(base: &mut [u8], data_type: i32, m: usize, n: usize, terms: &[Term<'_>]) {
    match data_type {
        DT_FLOAT16 => run::<F16, true>(base.as_mut_ptr(), m, n, terms),
        DT_BFLOAT16 => run::<Bf16, true>(base.as_mut_ptr(), m, n, terms),
        _ => run::<F32, true>(base.as_mut_ptr(), m, n, terms),
    }
}

/// Rank indices `p` and `p + 1` of a bf16-exact value pair as one 32-bit lane: `p` in the high half (the
/// instruction's first product), `p + 1` in the low half.
#[inline(always)]
fn pair(first: f32, second: f32) -> u32 {
    (first.to_bits() & 0xFFFF_0000) | (second.to_bits() >> 16)
}

thread_local! {
    /// Per thread: the current column chunk of every term's `b`, repacked (see [`run`]); reused across calls.
    static PANEL: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Column chunk by column chunk (sized so that the chunk of every `b` stays in L2): repack each term's `b`
/// columns into tile strips (`[strip][p][TILE_COLS]`, zero-padded, so that a tile reads one contiguous run; with
/// `BF`, a bf16 term's rows two by two as [`pair`]s), then walk the rows in tiles.
#[inline(always)]
unsafe fn run<S: Store, const BF: bool>(base: *mut u8, m: usize, n: usize, terms: &[Term<'_>]) {
    // Panel rows per strip of each term, and the paired `a` of the bf16 terms ([m, k / 2]).
    let rows: Vec<usize> = terms.iter().map(|t| if BF && t.bf16 { t.k / 2 } else { t.k }).collect();
    let a_pairs: Vec<Vec<u32>> = terms
        .iter()
        .map(|t| match BF && t.bf16 {
            true => t.a.chunks_exact(2).map(|p| pair(p[0], p[1])).collect(),
            false => Vec::new(),
        })
        .collect();
    let ks: usize = rows.iter().sum();
    let chunk = (CHUNK_BYTES / (4 * ks.max(1)) / TILE_COLS).max(1) * TILE_COLS;
    let mut offsets = vec![0usize; terms.len()];
    // Taken out of the thread-local (not borrowed in a closure, which would not inherit the target features).
    let mut panel = PANEL.take();
    if panel.len() < ks * chunk {
        panel.resize(ks * chunk, 0.0);
    }
    let mut j0 = 0;
    while j0 < n {
        let j1 = n.min(j0 + chunk);
        // The first row group's `a` rows and first tiles, while `b` is repacked (the tiles ask for the rest).
        prefetch_a::<BF>(terms, &a_pairs, 0);
        for r in 0..TILE_ROWS {
            prefetch(base.wrapping_add((r * n + j0) * S::SIZE), PREFETCH_TILES * TILE_COLS * S::SIZE);
        }
        let strip_count = (j1 - j0).div_ceil(TILE_COLS);
        let mut off = 0;
        for ((t, o), &k) in terms.iter().zip(offsets.iter_mut()).zip(&rows) {
            *o = off;
            for strip in 0..strip_count {
                let c0 = j0 + strip * TILE_COLS;
                let w = TILE_COLS.min(j1 - c0);
                for p in 0..k {
                    let dst = &mut panel[off + (strip * k + p) * TILE_COLS..][..TILE_COLS];
                    if k == t.k {
                        dst[..w].copy_from_slice(&t.b[p * n + c0..p * n + c0 + w]);
                    } else {
                        let (first, second) = (&t.b[2 * p * n + c0..][..w], &t.b[(2 * p + 1) * n + c0..][..w]);
                        for ((d, &x), &y) in dst.iter_mut().zip(first).zip(second) {
                            *d = f32::from_bits(pair(x, y));
                        }
                    }
                    dst[w..].fill(0.0);
                }
            }
            off += strip_count * k * TILE_COLS;
        }
        let view = Panel { data: panel.as_ptr(), offsets: &offsets, rows: &rows, a_pairs: &a_pairs };
        let mut i = 0;
        while i < m {
            let rows = TILE_ROWS.min(m - i);
            match rows {
                8 => strips::<S, 8, BF>(base, n, i, j0, j1, terms, &view),
                7 => strips::<S, 7, BF>(base, n, i, j0, j1, terms, &view),
                6 => strips::<S, 6, BF>(base, n, i, j0, j1, terms, &view),
                5 => strips::<S, 5, BF>(base, n, i, j0, j1, terms, &view),
                4 => strips::<S, 4, BF>(base, n, i, j0, j1, terms, &view),
                3 => strips::<S, 3, BF>(base, n, i, j0, j1, terms, &view),
                2 => strips::<S, 2, BF>(base, n, i, j0, j1, terms, &view),
                _ => strips::<S, 1, BF>(base, n, i, j0, j1, terms, &view),
            }
            i += rows;
        }
        j0 = j1;
    }
    PANEL.set(panel);
}

/// Asks for every term's `a` rows (paired rows for a bf16 term of a `BF` run) of the row group at `i`.
#[inline(always)]
unsafe fn prefetch_a<const BF: bool>(terms: &[Term<'_>], a_pairs: &[Vec<u32>], i: usize) {
    for (t, pairs) in terms.iter().zip(a_pairs) {
        let (k, a) = match BF && t.bf16 {
            true => (t.k / 2, pairs.as_ptr().cast::<u8>()),
            false => (t.k, t.a.as_ptr().cast::<u8>()),
        };
        prefetch(a.wrapping_add(i * k * 4), TILE_ROWS * k * 4);
    }
}

/// The repacked `b` of the current column chunk: term t's strip s starts at `offsets[t] + s · rows[t] ·
/// TILE_COLS`; `a_pairs[t]` is a bf16 term's paired `a` (empty for the others).
struct Panel<'o> {
    data: *const f32,
    offsets: &'o [usize],
    rows: &'o [usize],
    a_pairs: &'o [Vec<u32>],
}

impl Panel<'_> {
    /// Term `ti`'s sums for the R rows at `i` and the 16V columns of `strip`.
    #[inline(always)]
    unsafe fn products<const R: usize, const V: usize, const BF: bool>(
        &self,
        t: &Term<'_>,
        ti: usize,
        i: usize,
        strip: usize,
    ) -> [[__m512; V]; R] {
        let b = self.data.add(self.offsets[ti] + strip * self.rows[ti] * TILE_COLS);
        if BF && t.bf16 {
            let kp = t.k / 2;
            products_bf16::<R, V>(self.a_pairs[ti].as_ptr().add(i * kp), kp, b)
        } else {
            products::<R, V>(t, i, b)
        }
    }
}

/// Rows `i..i + R`, columns `j0..j1`, in full tiles and a masked last tile.
#[inline(always)]
unsafe fn strips<S: Store, const R: usize, const BF: bool>(
    base: *mut u8,
    n: usize,
    i: usize,
    j0: usize,
    j1: usize,
    terms: &[Term<'_>],
    panel: &Panel<'_>,
) {
    // The next row group's rows of every `a` are first read by its first tile: ask for them now.
    prefetch_a::<BF>(terms, panel.a_pairs, i + R);
    let mut j = j0;
    let mut strip = 0;
    while j + TILE_COLS <= j1 {
        tile::<S, R, TILE_V, BF>(base, n, i, j, (j0, j1), 0xFFFF, terms, panel, strip);
        j += TILE_COLS;
        strip += 1;
    }
    let w = j1 - j;
    if w > 0 {
        let vectors = w.div_ceil(16);
        // 1..=16 columns in the last vector.
        let mask = ((1u32 << (w - 16 * (vectors - 1))) - 1) as __mmask16;
        match vectors {
            1 => tile::<S, R, 1, BF>(base, n, i, j, (j0, j1), mask, terms, panel, strip),
            2 => tile::<S, R, 2, BF>(base, n, i, j, (j0, j1), mask, terms, panel, strip),
            3 => tile::<S, R, 3, BF>(base, n, i, j, (j0, j1), mask, terms, panel, strip),
            4 => tile::<S, R, 4, BF>(base, n, i, j, (j0, j1), mask, terms, panel, strip),
            5 => tile::<S, R, 5, BF>(base, n, i, j, (j0, j1), mask, terms, panel, strip),
            _ => tile::<S, R, 6, BF>(base, n, i, j, (j0, j1), mask, terms, panel, strip),
        }
    }
}

/// One R × 16V tile: the stored weight decoded to f32, then per term, in order, `w = fma(s, acc, w)` with acc =
/// Σ_p a[i + r, p] · b[p, j..] a chain of fused multiply-adds from zero, and `w` rounded back to the stored type
/// once. `last_mask` selects the columns of the last vector.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn tile<S: Store, const R: usize, const V: usize, const BF: bool>(
    base: *mut u8,
    n: usize,
    i: usize,
    j: usize,
    (j0, j1): (usize, usize),
    last_mask: __mmask16,
    terms: &[Term<'_>],
    panel: &Panel<'_>,
    strip: usize,
) {
    // The stored weight is read once, after the first term's products: ask for the lines of the tile
    // PREFETCH_TILES further along now, so that its epilogue does not wait on memory (the rows are too many streams
    // for the hardware prefetcher). Near the end of the chunk that tile is at the start of the next row group.
    // Prefetching never faults, so the address may run past the end.
    prefetch_ahead(base, (n, S::SIZE), (i, R), (j, j0, j1), PREFETCH_TILES * TILE_COLS, TILE_COLS * S::SIZE);
    let mask = |v: usize| if v + 1 == V { last_mask } else { 0xFFFF };
    let at = |r: usize, v: usize| (i + r) * n + j + 16 * v;
    if let [t] = terms {
        // One term (the usual case): straight from registers into the weight.
        let acc = panel.products::<R, V, BF>(t, 0, i, strip);
        let s = _mm512_set1_ps(t.s);
        for (r, row) in acc.iter().enumerate() {
            for (v, x) in row.iter().enumerate() {
                let (e, mask) = (at(r, v), mask(v));
                S::store(base, e, mask, _mm512_fmadd_ps(s, *x, S::load(base, e, mask)));
            }
        }
        return;
    }
    // Several terms: the running values wait in `w`.
    let mut w = [[_mm512_setzero_ps(); V]; R];
    for (ti, t) in terms.iter().enumerate() {
        let acc = panel.products::<R, V, BF>(t, ti, i, strip);
        let s = _mm512_set1_ps(t.s);
        for r in 0..R {
            for v in 0..V {
                let prev = if ti == 0 { S::load(base, at(r, v), mask(v)) } else { w[r][v] };
                w[r][v] = _mm512_fmadd_ps(s, acc[r][v], prev);
            }
        }
    }
    for (r, row) in w.iter().enumerate() {
        for (v, x) in row.iter().enumerate() {
            S::store(base, at(r, v), mask(v), *x);
        }
    }
}

/// Σ_p a[i + r, p] · b[p, ..] for the tile's R rows and 16V columns, `b` the term's packed strip.
#[inline(always)]
unsafe fn products<const R: usize, const V: usize>(t: &Term<'_>, i: usize, mut b: *const f32) -> [[__m512; V]; R] {
    let k = t.k;
    let a = t.a.as_ptr().add(i * k);
    let mut acc = [[_mm512_setzero_ps(); V]; R];
    for p in 0..k {
        let mut bv = [_mm512_setzero_ps(); V];
        for (v, x) in bv.iter_mut().enumerate() {
            *x = _mm512_loadu_ps(b.add(16 * v));
        }
        for (r, row) in acc.iter_mut().enumerate() {
            let f = _mm512_set1_ps(*a.add(r * k + p));
            for (x, bx) in row.iter_mut().zip(&bv) {
                *x = _mm512_fmadd_ps(f, *bx, *x);
            }
        }
        b = b.add(TILE_COLS);
    }
    acc
}

/// [`products`] for a bf16 term: `a` its paired rows (`[R][kp]` from the tile's first row), `b` its packed strip of
/// pairs; one `VDPBF16PS` per two rank indices (see the module docs).
#[target_feature(enable = "avx512f,avx512bf16")]
#[inline]
unsafe fn products_bf16<const R: usize, const V: usize>(
    a: *const u32,
    kp: usize,
    mut b: *const f32,
) -> [[__m512; V]; R] {
    let mut acc = [[_mm512_setzero_ps(); V]; R];
    for q in 0..kp {
        let mut bv = [_mm512_setzero_ps(); V];
        for (v, x) in bv.iter_mut().enumerate() {
            *x = _mm512_loadu_ps(b.add(16 * v));
        }
        for (r, row) in acc.iter_mut().enumerate() {
            let f: __m512bh = std::mem::transmute(_mm512_set1_epi32(*a.add(r * kp + q) as i32));
            for (x, bx) in row.iter_mut().zip(&bv) {
                *x = _mm512_dpbf16_ps(*x, f, std::mem::transmute::<__m512, __m512bh>(*bx));
            }
        }
        b = b.add(TILE_COLS);
    }
    acc
}
