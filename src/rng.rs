//! Torch-compatible random numbers: `torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed))`,
//! bit for bit on x86-64 (see `../shared/research/tiny_fixtures.md` §6).
//!
//! [`TorchGenerator::new(seed)`](TorchGenerator::new) followed by [`randn(numel)`](TorchGenerator::randn) returns
//! exactly the float32 values torch returns for any shape with `numel` elements, and successive draws on one generator
//! continue its stream exactly as torch does (including the cached second Box-Muller value of the scalar path).
//!
//! What torch does, and what is ported here (torch 2.x, `aten/src/ATen`):
//! * `core/MT19937RNGEngine.h`: a plain MT19937 seeded with `init_genrand(seed & 0xffffffff)`; `manual_seed` keeps
//!   only the low 32 bits of the seed (`2**32 + 5` draws what `5` draws).
//! * `native/cpu/DistributionTemplates.h` `normal_kernel`: a contiguous float tensor with `numel >= 16` goes through
//!   `normal_fill`: one 24-bit uniform `(u32 & 0xffffff) * 2^-24` per element is drawn first, then every full block of
//!   16 is turned into normals in place by Box-Muller on 8 pairs (`u[j]` gives the radius, `u[j + 8]` the angle); when
//!   `numel % 16 != 0` the **last** 16 values are drawn again from 16 fresh uniforms and transformed once more.
//! * x86-64 wheels run the AVX2 specialisation `NormalFill16<float, true>` (also under AVX512), which evaluates `log`
//!   and `sincos` with the cephes polynomials of `native/cpu/avx_mathfun.h` in float32. The compiler contracted
//!   several multiply/add pairs of those polynomials into FMA instructions; `normal_fill_16` reproduces them with
//!   `f32::mul_add` at exactly those sites and plain f32 arithmetic everywhere else (a libm-based Box-Muller agrees
//!   with torch on only ~61% of values, max error 1.9e-6). Torch on other ISAs (aarch64, `ATEN_CPU_CAPABILITY=
//!   default`) uses a scalar kernel and itself differs from x86 torch by up to ~2e-6; we always match x86 torch.
//! * `numel < 16` uses `core/DistributionsHelper.h` `normal_distribution<double>`: two 53-bit uniforms from
//!   `random64()` (two engine draws, the first one the high word), `r = sqrt(-2 log1p(-u2))`, `theta = 2 pi u1`;
//!   it returns `r cos(theta)` and caches `r sin(theta)` in the generator for the next scalar draw. The cache survives
//!   `normal_fill` draws in between, and `manual_seed` clears it.
//!
//! diffusers' `randn_tensor` draws the whole batch tensor in one call from a single generator ([`TorchGenerator`]),
//! or one call per batch item from a list of generators ([`BatchGenerators`]).

/// A source of standard-normal noise for a whole batch tensor, drawn in the order diffusers draws it.
pub trait NoiseSource {
    /// Standard-normal values for a tensor of `shape` (row-major), as `randn_tensor(shape, generator=…)` gives them.
    fn randn(&mut self, shape: &[usize]) -> Vec<f32>;
}

/// Number of elements of a tensor of `shape` (1 for a scalar shape `[]`).
///
/// Shapes come from validated request dimensions; an overflowing product is a programming error and saturates
/// (the allocation that follows then fails loudly rather than drawing a wrapped, too small tensor).
fn numel(shape: &[usize]) -> usize {
    let n = shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
    debug_assert!(n.is_some(), "tensor shape {shape:?} overflows usize");
    n.unwrap_or(usize::MAX)
}

// ---------------------------------------------------------------------------------------------------------------
// MT19937 (port of at::mt19937_engine)
// ---------------------------------------------------------------------------------------------------------------

const MT_N: usize = 624;
const MT_M: usize = 397;
const MT_MATRIX_A: u32 = 0x9908_b0df;
const MT_UPPER_MASK: u32 = 0x8000_0000;
const MT_LOWER_MASK: u32 = 0x7fff_ffff;

/// The 32-bit Mersenne Twister as torch's CPU generator runs it (`at::mt19937_engine`, `init_genrand` seeding).
#[derive(Clone)]
struct Mt19937 {
    state: [u32; MT_N],
    /// Index of the next state word to temper; `MT_N` means "regenerate first".
    next: usize,
}

impl Mt19937 {
    /// `init_genrand(seed & 0xffffffff)`, as `mt19937_engine::init_with_uint32` does.
    fn new(seed: u64) -> Self {
        let mut state = [0u32; MT_N];
        state[0] = seed as u32; // low 32 bits, as torch
        for j in 1..MT_N {
            let prev = state[j - 1];
            state[j] = 1_812_433_253u32.wrapping_mul(prev ^ (prev >> 30)).wrapping_add(j as u32);
        }
        Self { state, next: MT_N }
    }

    /// Regenerates the whole state block (the standard MT19937 twist).
    fn twist(&mut self) {
        let s = &mut self.state;
        for k in 0..MT_N {
            let y = (s[k] & MT_UPPER_MASK) | (s[(k + 1) % MT_N] & MT_LOWER_MASK);
            let mag = if y & 1 != 0 { MT_MATRIX_A } else { 0 };
            s[k] = s[(k + MT_M) % MT_N] ^ (y >> 1) ^ mag;
        }
        self.next = 0;
    }

    /// The next tempered 32-bit output.
    fn next_u32(&mut self) -> u32 {
        if self.next >= MT_N {
            self.twist();
        }
        let mut y = self.state[self.next];
        self.next += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }
}

// ---------------------------------------------------------------------------------------------------------------
// The generator
// ---------------------------------------------------------------------------------------------------------------

/// torch's CPU generator (`torch.Generator("cpu").manual_seed(seed)`), restricted to what `torch.randn` uses.
#[derive(Clone)]
pub struct TorchGenerator {
    engine: Mt19937,
    initial_seed: u64,
    /// `CPUGeneratorImpl::next_double_normal_sample_`: the second Box-Muller value of the scalar path.
    next_double_normal: Option<f64>,
}

impl std::fmt::Debug for TorchGenerator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TorchGenerator")
            .field("initial_seed", &self.initial_seed)
            .field("next_double_normal", &self.next_double_normal)
            .finish_non_exhaustive()
    }
}

impl TorchGenerator {
    /// A generator in the state of `torch.Generator("cpu").manual_seed(seed)`: MT19937 seeded with the low 32 bits of
    /// `seed` and no cached normal value.
    pub fn new(seed: u64) -> Self {
        Self { engine: Mt19937::new(seed), initial_seed: seed, next_double_normal: None }
    }

    /// The seed this generator was created with, as torch's `Generator.initial_seed()` reports it (all 64 bits,
    /// although only the low 32 bits influence the stream).
    pub fn initial_seed(&self) -> u64 {
        self.initial_seed
    }

    /// `torch.randn(numel, generator=self)` in float32: `numel` standard-normal values, advancing the generator
    /// exactly as torch does. Any shape with `numel` elements gives the same values in row-major order.
    pub fn randn(&mut self, numel: usize) -> Vec<f32> {
        if numel >= 16 {
            self.normal_fill(numel)
        } else {
            // normal_kernel's serial path: `static_cast<float>(normal_distribution<double>(0, 1)(gen))`.
            (0..numel).map(|_| self.normal_f64() as f32).collect()
        }
    }

    /// `uniform_real_distribution<float>(0, 1)`: 24 random bits of one engine draw, scaled by 2^-24.
    fn uniform_f32(&mut self) -> f32 {
        const DIVISOR: f32 = 1.0 / (1u32 << 24) as f32;
        // `x * (to - from) + from` with to = 1, from = 0 is exactly `x`.
        (self.engine.next_u32() & 0x00ff_ffff) as f32 * DIVISOR
    }

    /// `uniform_real_distribution<double>(0, 1)`: 53 bits of `random64()` (first draw = high word), scaled by 2^-53.
    fn uniform_f64(&mut self) -> f64 {
        const DIVISOR: f64 = 1.0 / (1u64 << 53) as f64;
        let hi = u64::from(self.engine.next_u32());
        let lo = u64::from(self.engine.next_u32());
        (((hi << 32) | lo) & ((1u64 << 53) - 1)) as f64 * DIVISOR
    }

    /// `at::normal_distribution<double>(0, 1)` (DistributionsHelper.h), with the generator's cached second value.
    fn normal_f64(&mut self) -> f64 {
        // `transformation::normal(ret, mean = 0, std = 1)` is `ret * 1 + 0`; the `+ 0.0` turns -0 into +0 as it does.
        if let Some(cached) = self.next_double_normal.take() {
            return cached + 0.0;
        }
        let u1 = self.uniform_f64();
        let u2 = self.uniform_f64();
        let r = (-2.0 * (-u2).ln_1p()).sqrt();
        let theta = 2.0 * std::f64::consts::PI * u1;
        self.next_double_normal = Some(r * theta.sin());
        r * theta.cos() + 0.0
    }

    /// `normal_fill<float>` (DistributionTemplates.h): all uniforms first, Box-Muller per block of 16, and the last
    /// 16 values redrawn when `numel` is not a multiple of 16. Requires `numel >= 16`.
    fn normal_fill(&mut self, numel: usize) -> Vec<f32> {
        debug_assert!(numel >= 16);
        let mut data: Vec<f32> = (0..numel).map(|_| self.uniform_f32()).collect();
        for block in data.chunks_exact_mut(16) {
            normal_fill_16(block);
        }
        if !numel.is_multiple_of(16) {
            let tail = &mut data[numel - 16..];
            for v in tail.iter_mut() {
                *v = self.uniform_f32();
            }
            normal_fill_16(tail);
        }
        data
    }
}

impl NoiseSource for TorchGenerator {
    /// One draw of `numel(shape)` values, as `randn_tensor(shape, generator=<one CPU generator>)`.
    fn randn(&mut self, shape: &[usize]) -> Vec<f32> {
        TorchGenerator::randn(self, numel(shape))
    }
}

/// One [`TorchGenerator`] per batch item, item `i` seeded `first_seed + i` (wrapping): diffusers'
/// `randn_tensor(shape, generator=[torch.Generator("cpu").manual_seed(first_seed + i) for i in range(batch)])`.
#[derive(Debug, Clone)]
pub struct BatchGenerators {
    first_seed: u64,
    generators: Vec<TorchGenerator>,
}

impl BatchGenerators {
    /// `batch` generators seeded `first_seed`, `first_seed + 1`, … (wrapping at 2^64).
    pub fn new(first_seed: u64, batch: usize) -> Self {
        let mut this = Self { first_seed, generators: Vec::with_capacity(batch) };
        this.ensure(batch);
        this
    }

    /// Number of generators (the batch size this was built for).
    pub fn len(&self) -> usize {
        self.generators.len()
    }

    /// Whether there are no generators (batch size 0).
    pub fn is_empty(&self) -> bool {
        self.generators.is_empty()
    }

    /// The generator of batch item `index`, if there is one.
    pub fn get_mut(&mut self, index: usize) -> Option<&mut TorchGenerator> {
        self.generators.get_mut(index)
    }

    /// Makes sure item `count - 1` has a generator, seeding new ones `first_seed + i` as [`BatchGenerators::new`].
    fn ensure(&mut self, count: usize) {
        for i in self.generators.len()..count {
            self.generators.push(TorchGenerator::new(self.first_seed.wrapping_add(i as u64)));
        }
    }
}

impl NoiseSource for BatchGenerators {
    /// Item `i` of `shape[0]` items is drawn from generator `i` with `numel(shape[1..])` values, items in order
    /// (diffusers: `torch.cat([torch.randn((1,) + shape[1:], generator=g[i]) for i in range(batch)])`).
    ///
    /// `shape[0]` must equal [`len`](BatchGenerators::len): anything else is a programming error (debug builds
    /// assert). Release builds stay well defined: missing items get generators seeded `first_seed + i` exactly as
    /// `new` would have made them, and surplus generators are left unused. A scalar shape `[]` counts as one item.
    fn randn(&mut self, shape: &[usize]) -> Vec<f32> {
        debug_assert!(!shape.is_empty(), "a batch noise shape needs a batch dimension");
        let (batch, item_shape) = shape.split_first().map_or((1, &[][..]), |(&b, rest)| (b, rest));
        debug_assert_eq!(batch, self.generators.len(), "noise batch size differs from the number of generators");
        self.ensure(batch);
        let per_item = numel(item_shape);
        let mut out = Vec::with_capacity(per_item.saturating_mul(batch));
        for generator in &mut self.generators[..batch] {
            out.extend(generator.randn(per_item));
        }
        out
    }
}

// ---------------------------------------------------------------------------------------------------------------
// NormalFill16<float, true> and avx_mathfun.h, one lane at a time
// ---------------------------------------------------------------------------------------------------------------
//
// The constants are written as the C++ does (double literals rounded once to float). `mul_add` marks exactly the
// multiply/add pairs GCC fused into FMA instructions in torch's AVX2 build; every other operation is a plain f32
// operation, as in the source. Do not "simplify" either: both change bits.

/// `2.0f * c10::pi<double>`, computed in double and rounded to float.
const TWO_PI: f32 = (2.0 * std::f64::consts::PI) as f32;

const MIN_NORM_POS: f32 = f32::MIN_POSITIVE; // 0x00800000
const INV_MANT_MASK: u32 = !0x7f80_0000;
const SIGN_MASK: u32 = 0x8000_0000;

/// `0.707106781186547524` (1 / sqrt 2) in the source; this is the same double.
const CEPHES_SQRTHF: f32 = std::f64::consts::FRAC_1_SQRT_2 as f32;
const CEPHES_LOG_P: [f32; 9] = [
    7.037_683_629_2e-2_f64 as f32,
    -1.151_461_031_0e-1_f64 as f32,
    1.167_699_874_0e-1_f64 as f32,
    -1.242_014_084_6e-1_f64 as f32,
    1.424_932_278_7e-1_f64 as f32,
    -1.666_805_766_5e-1_f64 as f32,
    2.000_071_476_5e-1_f64 as f32,
    -2.499_999_399_3e-1_f64 as f32,
    3.333_333_117_4e-1_f64 as f32,
];
const CEPHES_LOG_Q1: f32 = -2.121_944_40e-4_f64 as f32;
const CEPHES_LOG_Q2: f32 = 0.693_359_375_f64 as f32;

const MINUS_CEPHES_DP1: f32 = -0.785_156_25_f64 as f32;
#[allow(clippy::excessive_precision)] // the literal as avx_mathfun.h writes it
const MINUS_CEPHES_DP2: f32 = -2.418_756_484_985_351_562_5e-4_f64 as f32;
#[allow(clippy::excessive_precision)] // the literal as avx_mathfun.h writes it
const MINUS_CEPHES_DP3: f32 = -3.774_894_977_445_941_08e-8_f64 as f32;
const SINCOF_P0: f32 = -1.951_529_589_1e-4_f64 as f32;
const SINCOF_P1: f32 = 8.332_160_873_6e-3_f64 as f32;
const SINCOF_P2: f32 = -1.666_665_461_1e-1_f64 as f32;
const COSCOF_P0: f32 = 2.443_315_711_809_948e-5_f64 as f32;
const COSCOF_P1: f32 = -1.388_731_625_493_765e-3_f64 as f32;
const COSCOF_P2: f32 = 4.166_664_568_298_827e-2_f64 as f32;
const CEPHES_FOPI: f32 = 1.273_239_544_735_16_f64 as f32; // 4 / pi

/// `NormalFill16<float, true>::operator()` with mean 0 and std 1: Box-Muller on `data[j]`, `data[j + 8]`, j < 8.
fn normal_fill_16(data: &mut [f32]) {
    debug_assert_eq!(data.len(), 16);
    for j in 0..8 {
        let u1 = 1.0 - data[j];
        let u2 = data[j + 8];
        let radius = (-2.0 * log_ps(u1)).sqrt();
        let theta = TWO_PI * u2;
        let (sin_theta, cos_theta) = sincos_ps(theta);
        // `_mm256_fmadd_ps(n, std = 1, mean = 0)` is exactly `n + 0` (which turns -0 into +0).
        data[j] = radius * cos_theta + 0.0;
        data[j + 8] = radius * sin_theta + 0.0;
    }
}

/// `log256_ps` (avx_mathfun.h, cephes `logf`) for one lane: NaN for `x <= 0`.
fn log_ps(x: f32) -> f32 {
    let invalid = x <= 0.0; // _CMP_LE_OS
    let x = if x > MIN_NORM_POS { x } else { MIN_NORM_POS }; // _mm256_max_ps(x, min_norm_pos)
    let exponent = (x.to_bits() >> 23) as i32;
    let x = f32::from_bits((x.to_bits() & INV_MANT_MASK) | 0.5f32.to_bits());
    let mut e = (exponent - 0x7f) as f32 + 1.0;
    let below = x < CEPHES_SQRTHF; // _CMP_LT_OS
    let tmp = if below { x } else { 0.0 };
    let mut x = x - 1.0;
    e -= if below { 1.0 } else { 0.0 };
    x += tmp;
    let z = x * x;
    let mut y = CEPHES_LOG_P[0];
    for &p in &CEPHES_LOG_P[1..] {
        y = y.mul_add(x, p); // fused in torch's build
    }
    y *= x;
    y = y.mul_add(z, e * CEPHES_LOG_Q1); // fused: y * z + e * q1
    y -= z * 0.5; // z * 0.5 is exact, fused or not
    x += y;
    x += e * CEPHES_LOG_Q2; // e * q2 is exact, fused or not
    if invalid {
        f32::from_bits(u32::MAX) // `x | invalid_mask`: all bits set, a NaN
    } else {
        x
    }
}

/// `_mm256_cvttps_epi32` for one lane: truncation, and `i32::MIN` (the "integer indefinite") when out of range.
fn cvtt_ps_epi32(x: f32) -> i32 {
    if !(-2_147_483_648.0..2_147_483_648.0).contains(&x) {
        i32::MIN // out of range or NaN
    } else {
        x as i32
    }
}

/// `sincos256_ps` (avx_mathfun.h, cephes `sinf`/`cosf`) for one lane: `(sin x, cos x)`.
fn sincos_ps(x: f32) -> (f32, f32) {
    let mut sign_bit_sin = x.to_bits() & SIGN_MASK;
    let x = f32::from_bits(x.to_bits() & !SIGN_MASK);
    let y = x * CEPHES_FOPI;
    let mut imm2 = cvtt_ps_epi32(y);
    imm2 = imm2.wrapping_add(1) & !1;
    let y = imm2 as f32;
    let imm4 = imm2;
    let swap_sign_bit_sin = ((imm2 & 4) as u32) << 29;
    let poly_mask: u32 = if imm2 & 2 == 0 { u32::MAX } else { 0 };
    // "Extended precision modular arithmetic": x = ((x - y*DP1) - y*DP2) - y*DP3, each step fused.
    let mut x = y.mul_add(MINUS_CEPHES_DP1, x);
    x = y.mul_add(MINUS_CEPHES_DP2, x);
    x = y.mul_add(MINUS_CEPHES_DP3, x);
    let sign_bit_cos = ((!imm4.wrapping_sub(2) & 4) as u32) << 29;
    sign_bit_sin ^= swap_sign_bit_sin;

    let z = x * x;
    // cos polynomial (0 <= x <= pi/4)
    let mut yc = COSCOF_P0.mul_add(z, COSCOF_P1);
    yc = yc.mul_add(z, COSCOF_P2);
    yc *= z;
    yc = yc.mul_add(z, -(z * 0.5)); // fused: y * z - z * 0.5
    yc += 1.0;
    // sin polynomial
    let mut ys = SINCOF_P0.mul_add(z, SINCOF_P1);
    ys = ys.mul_add(z, SINCOF_P2);
    ys *= z;
    ys = ys.mul_add(x, x); // fused: y2 * x + x

    // Select both results with bit masks and the same add/sub sequence as the source (it fixes the zero signs).
    let ysin2 = f32::from_bits(poly_mask & ys.to_bits());
    let ysin1 = f32::from_bits(!poly_mask & yc.to_bits());
    let ys = ys - ysin2;
    let yc = yc - ysin1;
    let sin = ysin1 + ysin2;
    let cos = yc + ys;
    (f32::from_bits(sin.to_bits() ^ sign_bit_sin), f32::from_bits(cos.to_bits() ^ sign_bit_cos))
}

#[cfg(test)]
mod tests {
    //! Goldens: `tests/fixtures/rng/randn_goldens.safetensors`, written by `onnx/rng_goldens.py` with x86-64 torch.
    //! Every comparison is on bits.

    use super::*;
    use safetensors::{Dtype, SafeTensors};

    const GOLDENS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/rng/randn_goldens.safetensors");
    const SEEDS: [u64; 6] = [0, 1, 42, (1 << 31) - 1, (1 << 32) + 7, 123_456_789];

    fn goldens() -> Vec<u8> {
        std::fs::read(GOLDENS).unwrap_or_else(|e| panic!("cannot read {GOLDENS}: {e}"))
    }

    fn f32s(st: &SafeTensors<'_>, key: &str) -> Vec<f32> {
        let t = st.tensor(key).unwrap_or_else(|e| panic!("golden {key}: {e}"));
        assert_eq!(t.dtype(), Dtype::F32, "{key}");
        t.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
    }

    fn u64s(st: &SafeTensors<'_>, key: &str) -> Vec<u64> {
        let t = st.tensor(key).unwrap_or_else(|e| panic!("golden {key}: {e}"));
        assert_eq!(t.dtype(), Dtype::U64, "{key}");
        t.data().chunks_exact(8).map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes"))).collect()
    }

    fn shape_name(shape: &[usize]) -> String {
        shape.iter().map(usize::to_string).collect::<Vec<_>>().join("x")
    }

    /// Asserts `got == want` bit for bit, listing the first mismatches; returns the number of values compared.
    fn assert_bits(label: &str, got: &[f32], want: &[f32]) -> usize {
        assert_eq!(got.len(), want.len(), "{label}: length");
        let bad: Vec<usize> = (0..got.len()).filter(|&i| got[i].to_bits() != want[i].to_bits()).collect();
        if !bad.is_empty() {
            let list: Vec<String> = bad
                .iter()
                .take(10)
                .map(|&i| {
                    format!(
                        "  [{i}] got {:e} ({:#010x}) want {:e} ({:#010x})",
                        got[i],
                        got[i].to_bits(),
                        want[i],
                        want[i].to_bits()
                    )
                })
                .collect();
            panic!("{label}: {} of {} values differ:\n{}", bad.len(), got.len(), list.join("\n"));
        }
        got.len()
    }

    /// The wrapping sums `onnx/rng_goldens.py` stores for large draws: `[sum(bits), sum(bits * (i + 1))]`.
    fn bit_sums(values: &[f32]) -> [u64; 2] {
        values.iter().enumerate().fold([0u64; 2], |[s, w], (i, v)| {
            let b = u64::from(v.to_bits());
            [s.wrapping_add(b), w.wrapping_add(b.wrapping_mul(i as u64 + 1))]
        })
    }

    #[test]
    fn mt19937_matches_the_reference_stream() {
        // C++ [rand.predef]: the 10000th output of a default-constructed std::mt19937 (seed 5489) is 4123659995.
        let mut mt = Mt19937::new(5489);
        let v = (0..10_000).map(|_| mt.next_u32()).last();
        assert_eq!(v, Some(4_123_659_995));
    }

    #[test]
    fn seed_keeps_only_the_low_32_bits() {
        // torch: manual_seed(4294967301) draws what manual_seed(5) draws (the golden script asserts it too).
        for n in [3, 256] {
            let a = TorchGenerator::new(4_294_967_301).randn(n);
            let b = TorchGenerator::new(5).randn(n);
            assert_bits(&format!("seed 2^32+5 vs 5, numel {n}"), &a, &b);
        }
        assert_eq!(TorchGenerator::new(4_294_967_301).initial_seed(), 4_294_967_301);
    }

    #[test]
    fn small_and_medium_draws_match_torch() {
        let bytes = goldens();
        let st = SafeTensors::deserialize(&bytes).expect("goldens parse");
        let shapes: [&[usize]; 10] =
            [&[1, 4, 8, 8], &[1, 4, 7, 9], &[16], &[17], &[3], &[5], &[2, 4, 8, 12], &[1], &[15], &[31]];
        let mut compared = 0;
        for seed in SEEDS {
            for shape in shapes {
                let key = format!("full/s{seed}/{}", shape_name(shape));
                let got = NoiseSource::randn(&mut TorchGenerator::new(seed), shape);
                compared += assert_bits(&key, &got, &f32s(&st, &key));
            }
        }
        eprintln!("small_and_medium_draws_match_torch: {compared} values, 0 mismatches");
    }

    #[test]
    fn large_draws_match_torch() {
        let bytes = goldens();
        let st = SafeTensors::deserialize(&bytes).expect("goldens parse");
        let (mut sampled, mut summed) = (0, 0);
        for seed in SEEDS {
            for shape in [[1usize, 4, 128, 128], [1, 4, 127, 129]] {
                let key = format!("sum/s{seed}/{}", shape_name(&shape));
                let got = NoiseSource::randn(&mut TorchGenerator::new(seed), &shape);
                sampled += assert_bits(&format!("{key}/head"), &got[..64], &f32s(&st, &format!("{key}/head")));
                sampled +=
                    assert_bits(&format!("{key}/tail"), &got[got.len() - 64..], &f32s(&st, &format!("{key}/tail")));
                let strided: Vec<f32> = got.iter().step_by(997).copied().collect();
                sampled += assert_bits(&format!("{key}/strided"), &strided, &f32s(&st, &format!("{key}/strided")));
                assert_eq!(bit_sums(&got).to_vec(), u64s(&st, &format!("{key}/bits")), "{key}: bit sums differ");
                summed += got.len();
            }
        }
        eprintln!("large_draws_match_torch: {summed} values under bit sums, {sampled} sampled values, 0 mismatches");
    }

    #[test]
    fn interleaved_draws_on_one_generator_match_torch() {
        let bytes = goldens();
        let st = SafeTensors::deserialize(&bytes).expect("goldens parse");
        let shapes: [&[usize]; 4] = [&[3], &[1, 4, 8, 8], &[5], &[1, 4, 7, 9]];
        let mut compared = 0;
        for seed in [0, 42, (1 << 32) + 7] {
            let mut generator = TorchGenerator::new(seed);
            for (k, shape) in shapes.iter().enumerate() {
                let key = format!("interleaved/s{seed}/{k}_{}", shape_name(shape));
                let got = NoiseSource::randn(&mut generator, shape);
                compared += assert_bits(&key, &got, &f32s(&st, &key));
            }
        }
        eprintln!("interleaved_draws_on_one_generator_match_torch: {compared} values, 0 mismatches");
    }

    #[test]
    fn batch_generators_match_diffusers_generator_lists() {
        let bytes = goldens();
        let st = SafeTensors::deserialize(&bytes).expect("goldens parse");
        let cases: [(u64, &[usize]); 4] =
            [(42, &[2, 4, 8, 12]), (7, &[2, 4, 7, 9]), ((1 << 32) - 1, &[2, 4, 8, 8]), (5, &[2, 3])];
        let mut compared = 0;
        for (first, shape) in cases {
            let key = format!("batch/s{first}/{}", shape_name(shape));
            let mut generators = BatchGenerators::new(first, shape[0]);
            assert_eq!(generators.len(), shape[0]);
            let got = generators.randn(shape);
            compared += assert_bits(&key, &got, &f32s(&st, &key));
        }
        eprintln!("batch_generators_match_diffusers_generator_lists: {compared} values, 0 mismatches");
    }

    #[test]
    fn batch_seeds_wrap_and_items_use_their_own_generator() {
        let mut generators = BatchGenerators::new(u64::MAX, 2);
        assert_eq!(generators.get_mut(1).map(|g| g.initial_seed()), Some(0));
        let got = generators.randn(&[2, 4, 2, 2]);
        let mut want = TorchGenerator::new(u64::MAX).randn(16);
        want.extend(TorchGenerator::new(0).randn(16));
        assert_bits("wrapping batch seeds", &got, &want);
    }

    #[test]
    fn empty_draws_are_empty() {
        let mut generator = TorchGenerator::new(0);
        assert!(generator.randn(0).is_empty());
        assert!(NoiseSource::randn(&mut generator, &[1, 0, 8]).is_empty());
        // An empty draw leaves the stream where it was.
        assert_bits("after empty draws", &generator.randn(20), &TorchGenerator::new(0).randn(20));
    }

    #[test]
    fn log_and_sincos_handle_edge_inputs_like_the_avx_code() {
        // u = 0 gives log(1) = 0, radius 0 and +0 outputs (fmadd(-0, 1, 0) = +0).
        let mut block = [0.0f32; 16];
        block[8] = 0.75; // theta = 3 pi / 2: cos < 0, so radius * cos would be -0
        normal_fill_16(&mut block);
        assert!(block.iter().all(|v| v.to_bits() == 0), "{block:?}");
        assert!(log_ps(0.0).is_nan() && log_ps(-1.0).is_nan());
        assert_eq!(log_ps(1.0), 0.0);
        let (s, c) = sincos_ps(0.0);
        assert_eq!((s.to_bits(), c), (0, 1.0));
    }

    #[test]
    fn draw_timing_1x4x128x128() {
        // Measured, not asserted: run with `--release -- --nocapture` to see it.
        let start = std::time::Instant::now();
        let v = NoiseSource::randn(&mut TorchGenerator::new(0), &[1, 4, 128, 128]);
        let elapsed = start.elapsed();
        assert_eq!(v.len(), 65_536);
        eprintln!("draw_timing_1x4x128x128: {:.3} ms", elapsed.as_secs_f64() * 1e3);
    }
}
