//! The x86-64 fast path (AVX2 + FMA + F16C): register tiles of up to 6 rows × 16 columns (12 ymm accumulators),
//! fed a column chunk of `b` at a time (repacked so that a tile reads one contiguous run, and small enough to stay in
//! L2), with the update of the stored weight fused into each tile's epilogue. For CPUs without AVX-512 (most desktop
//! ones before Zen 4).

use std::arch::x86_64::*;

use super::{prefetch, prefetch_ahead, Term};
use crate::runtime::onnx_proto::{DT_BFLOAT16, DT_FLOAT16};

/// Whether the CPU has what [`apply`] is compiled for.
pub(super) fn available() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c")
}

/// 8 stored values ↔ f32 lanes.
trait Store {
    /// Bytes per stored value.
    const SIZE: usize;
    unsafe fn load(p: *const u8) -> __m256;
    unsafe fn store(p: *mut u8, v: __m256);
}

struct F32;
struct F16;
struct Bf16;

impl Store for F32 {
    const SIZE: usize = 4;
    #[inline(always)]
    unsafe fn load(p: *const u8) -> __m256 {
        _mm256_loadu_ps(p.cast::<f32>())
    }
    #[inline(always)]
    unsafe fn store(p: *mut u8, v: __m256) {
        _mm256_storeu_ps(p.cast::<f32>(), v)
    }
}

impl Store for F16 {
    const SIZE: usize = 2;
    #[inline(always)]
    unsafe fn load(p: *const u8) -> __m256 {
        _mm256_cvtph_ps(_mm_loadu_si128(p.cast::<__m128i>()))
    }
    #[inline(always)]
    unsafe fn store(p: *mut u8, v: __m256) {
        // Round to nearest even, as `half::f16::from_f32` does.
        _mm_storeu_si128(p.cast::<__m128i>(), _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v))
    }
}

impl Store for Bf16 {
    const SIZE: usize = 2;
    #[inline(always)]
    unsafe fn load(p: *const u8) -> __m256 {
        let bits = _mm256_cvtepu16_epi32(_mm_loadu_si128(p.cast::<__m128i>()));
        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(bits))
    }
    #[inline(always)]
    unsafe fn store(p: *mut u8, v: __m256) {
        // `half::bf16::from_f32`, element by element (bfloat16 weights are rare; the rounding rule is its own).
        let mut lanes = [0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), v);
        for (l, &x) in lanes.iter().enumerate() {
            p.add(2 * l).cast::<[u8; 2]>().write_unaligned(half::bf16::from_f32(x).to_le_bytes());
        }
    }
}

const TILE_ROWS: usize = 6;
const TILE_V: usize = 2;
const TILE_COLS: usize = 8 * TILE_V;
/// How many tiles ahead the stored weight is prefetched.
const PREFETCH_TILES: usize = 4;
/// Bytes of `b` a column chunk may span (Zen 4 and recent Intel cores have ≥ 1 MiB of L2).
const CHUNK_BYTES: usize = 256 * 1024;

thread_local! {
    /// Per thread: the current column chunk of every term's `b`, repacked (see [`run`]); reused across calls.
    static PANEL: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

/// # Safety
/// The CPU has the features of [`available`]; `base` holds m·n values of `data_type` (float16, bfloat16, else
/// float32); each term's `a` has m·k values and `b` k·n; `terms` is not empty.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn apply(base: &mut [u8], data_type: i32, m: usize, n: usize, terms: &[Term<'_>]) {
    match data_type {
        DT_FLOAT16 => run::<F16>(base.as_mut_ptr(), m, n, terms),
        DT_BFLOAT16 => run::<Bf16>(base.as_mut_ptr(), m, n, terms),
        _ => run::<F32>(base.as_mut_ptr(), m, n, terms),
    }
}

/// Column chunk by column chunk (sized so that the chunk of every `b` stays in L2): repack each term's `b`
/// columns into tile strips (`[strip][p][TILE_COLS]`, zero-padded), then walk the rows in tiles.
#[inline(always)]
unsafe fn run<S: Store>(base: *mut u8, m: usize, n: usize, terms: &[Term<'_>]) {
    let ks: usize = terms.iter().map(|t| t.k).sum();
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
        for t in terms {
            prefetch(t.a.as_ptr().cast(), TILE_ROWS * t.k * 4);
        }
        for r in 0..TILE_ROWS {
            prefetch(base.wrapping_add((r * n + j0) * S::SIZE), PREFETCH_TILES * TILE_COLS * S::SIZE);
        }
        let strip_count = (j1 - j0).div_ceil(TILE_COLS);
        let mut off = 0;
        for (t, o) in terms.iter().zip(offsets.iter_mut()) {
            *o = off;
            for strip in 0..strip_count {
                let c0 = j0 + strip * TILE_COLS;
                let w = TILE_COLS.min(j1 - c0);
                for p in 0..t.k {
                    let dst = &mut panel[off + (strip * t.k + p) * TILE_COLS..][..TILE_COLS];
                    dst[..w].copy_from_slice(&t.b[p * n + c0..p * n + c0 + w]);
                    dst[w..].fill(0.0);
                }
            }
            off += strip_count * t.k * TILE_COLS;
        }
        let view = Panel { data: panel.as_ptr(), offsets: &offsets };
        let mut i = 0;
        while i < m {
            let rows = TILE_ROWS.min(m - i);
            match rows {
                6 => strips::<S, 6>(base, n, i, j0, j1, terms, &view),
                5 => strips::<S, 5>(base, n, i, j0, j1, terms, &view),
                4 => strips::<S, 4>(base, n, i, j0, j1, terms, &view),
                3 => strips::<S, 3>(base, n, i, j0, j1, terms, &view),
                2 => strips::<S, 2>(base, n, i, j0, j1, terms, &view),
                _ => strips::<S, 1>(base, n, i, j0, j1, terms, &view),
            }
            i += rows;
        }
        j0 = j1;
    }
    PANEL.set(panel);
}

/// The repacked `b` of the current column chunk: term t's strip s starts at `offsets[t] + s · k_t · TILE_COLS`.
struct Panel<'o> {
    data: *const f32,
    offsets: &'o [usize],
}

/// Rows `i..i + R`, columns `j0..j1`, in full tiles and a last partial one.
#[inline(always)]
unsafe fn strips<S: Store, const R: usize>(
    base: *mut u8,
    n: usize,
    i: usize,
    j0: usize,
    j1: usize,
    terms: &[Term<'_>],
    panel: &Panel<'_>,
) {
    // The next row group's rows of every `a` are first read by its first tile: ask for them now.
    for t in terms {
        prefetch(t.a.as_ptr().cast::<u8>().wrapping_add((i + R) * t.k * 4), TILE_ROWS * t.k * 4);
    }
    let mut j = j0;
    let mut strip = 0;
    while j + TILE_COLS <= j1 {
        tile::<S, R>(base, n, i, (j, j0, j1), TILE_COLS, terms, panel, strip);
        j += TILE_COLS;
        strip += 1;
    }
    if j < j1 {
        tile::<S, R>(base, n, i, (j, j0, j1), j1 - j, terms, panel, strip);
    }
}

/// One R × 16 tile (`width` ≤ 16 columns of it exist): the stored weight decoded to f32, then per term, in order,
/// `w = fma(s, acc, w)` with acc = Σ_p a[i + r, p] · b[p, j..] a chain of fused multiply-adds from zero, and `w`
/// rounded back to the stored type once.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn tile<S: Store, const R: usize>(
    base: *mut u8,
    n: usize,
    i: usize,
    (j, j0, j1): (usize, usize, usize),
    width: usize,
    terms: &[Term<'_>],
    panel: &Panel<'_>,
    strip: usize,
) {
    // The stored weight is read once, after the first term's products: ask for its lines PREFETCH_TILES tiles
    // ahead now, so that the epilogue does not wait on memory (the rows are too many streams for the hardware
    // prefetcher). Near the end of the chunk that tile is at the start of the next row group. Prefetching never
    // faults, so the address may run past the end.
    prefetch_ahead(base, (n, S::SIZE), (i, R), (j, j0, j1), PREFETCH_TILES * TILE_COLS, TILE_COLS * S::SIZE);
    // A partial tile goes through a stack copy of its columns (zero-padded; a full tile does not touch it).
    let mut partial = std::mem::MaybeUninit::<[[u8; TILE_COLS * 4]; R]>::uninit();
    let rows: [*mut u8; R] = std::array::from_fn(|r| {
        let p = base.add(((i + r) * n + j) * S::SIZE);
        if width == TILE_COLS {
            return p;
        }
        let copy = partial.as_mut_ptr().cast::<u8>().add(r * TILE_COLS * 4);
        std::ptr::write_bytes(copy, 0, TILE_COLS * 4);
        std::ptr::copy_nonoverlapping(p, copy, width * S::SIZE);
        copy
    });
    // The running values; with one term (the usual case) they never leave the registers. The stored weight is
    // loaded after the first term's products, when the accumulators free the registers.
    let mut w = [[_mm256_setzero_ps(); TILE_V]; R];
    for (ti, t) in terms.iter().enumerate() {
        let acc = products::<R>(t, i, panel.data.add(panel.offsets[ti] + strip * t.k * TILE_COLS));
        let s = _mm256_set1_ps(t.s);
        for r in 0..R {
            for v in 0..TILE_V {
                let prev = if ti == 0 { S::load(rows[r].add(8 * v * S::SIZE)) } else { w[r][v] };
                w[r][v] = _mm256_fmadd_ps(s, acc[r][v], prev);
            }
        }
    }
    for (r, (row, &p)) in w.iter().zip(&rows).enumerate() {
        for (v, x) in row.iter().enumerate() {
            S::store(p.add(8 * v * S::SIZE), *x);
        }
        if width < TILE_COLS {
            std::ptr::copy_nonoverlapping(p, base.add(((i + r) * n + j) * S::SIZE), width * S::SIZE);
        }
    }
}

/// Σ_p a[i + r, p] · b[p, ..] for the tile's R rows and 16 columns, `b` the term's packed strip.
#[inline(always)]
unsafe fn products<const R: usize>(t: &Term<'_>, i: usize, mut b: *const f32) -> [[__m256; TILE_V]; R] {
    let k = t.k;
    let a = t.a.as_ptr().add(i * k);
    let mut acc = [[_mm256_setzero_ps(); TILE_V]; R];
    for p in 0..k {
        let mut bv = [_mm256_setzero_ps(); TILE_V];
        for (v, x) in bv.iter_mut().enumerate() {
            *x = _mm256_loadu_ps(b.add(8 * v));
        }
        for (r, row) in acc.iter_mut().enumerate() {
            let f = _mm256_set1_ps(*a.add(r * k + p));
            for (x, bx) in row.iter_mut().zip(&bv) {
                *x = _mm256_fmadd_ps(f, *bx, *x);
            }
        }
        b = b.add(TILE_COLS);
    }
    acc
}
