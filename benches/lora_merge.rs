//! LoRA merge speed on real SDXL shapes (not a timed test): a rank-32 LoRA on every attention and feed-forward
//! Linear of the SDXL base UNet and both text encoders, shapes from the public SDXL configs, random weights (no
//! download), merged into random float16 base weights with the library's own merge code
//! (`merge::apply_in_place`: ΔW = up · down in f32 tiles, added to the weight and written back as float16 in place),
//! on every core, largest weight first, as `LoraSet::plan_graph` does.
//!
//! Run: `cargo bench --bench lora_merge`. Prints per part and in total: wall-clock of the merges, the workers' CPU
//! time (user + sys), GFLOP of the ΔW products per CPU-second, and a "memory pass" (one read and one write of every
//! base byte on every core: the memory-traffic floor). Random data generation is not timed; weights are generated
//! and merged in batches of about 1 GiB to keep memory bounded. `SDXLRT_BENCH_PARTS=text_encoder` limits the run to
//! some parts; `SDXLRT_BENCH_MICRO=out,cols,reps,rank[,copies]` times one weight (or copies) on one thread instead.
//! `SDXLRT_BENCH_FACTORS=bf16` makes the LoRA's factors bfloat16 values (a LoRA saved in bf16, which CPUs with
//! AVX512_BF16 merge with the pair kernel), instead of float16 values (a LoRA saved in fp16, the default).
//!
//! Measured 2026-11-27 on the 2-core Zen 4 VM (AVX-512), idle, median of 3: wall 1.11 s, CPU 2.14 s, 87 GFLOP per
//! CPU-second (before the fused in-place kernel: 16.9 s wall, 31.9 s CPU). The goal (≤ 1 s on 2 cores) is
//! not met: 187 GFLOP at the measured FMA peak of two cores (~225 GFLOP/s) alone takes ~0.83 s. With bf16 factors
//! (2026-12-02, `SDXLRT_BENCH_FACTORS=bf16`, the AVX512_BF16 pair kernel): wall 0.69–0.79 s. With the prefetch
//! across row groups (2026-12-03, interleaved A/B, the kernel 10–20 % below its earlier rates that day): median
//! 1.238 → 1.057 s and 1.28 → 1.24 s, best 1.011 s. It also prints one core's FMA peak measured in the same run and
//! the share of it the merge reached (76–78 % that day). With each value updated by one fused multiply-add
//! (2026-12-03, the VM in its fast phase, 6 interleaved runs): median 0.968 → 0.955 s, 82–86 % of the FMA peak;
//! 1.04–1.21 s in the VM's slow phases. Details and the breakdown: docs/benchmarks.md, "LoRA merge".

use std::sync::Mutex;
use std::time::{Duration, Instant};

use sdxlrt::lora::formats::{Mat, Patch};
use sdxlrt::lora::keymap::Layout;
use sdxlrt::lora::merge;
use sdxlrt::runtime::onnx_proto::{encode_floats, DT_FLOAT16};

const RANK: usize = 32;

/// The LoRA file's dtype the factors' values are rounded to (`SDXLRT_BENCH_FACTORS`: `f16`, the default, or `bf16`).
fn factor_dtype() -> &'static str {
    match std::env::var("SDXLRT_BENCH_FACTORS").as_deref() {
        Ok("bf16") => "bf16",
        Ok("f16") | Err(_) => "f16",
        Ok(other) => panic!("SDXLRT_BENCH_FACTORS={other}: f16 or bf16"),
    }
}

/// `n` random factor values as a LoRA file of [`factor_dtype`] holds them.
fn factor(rng: &mut Rng, n: usize) -> Vec<f32> {
    let values = rng.fill(n, 0.1);
    match factor_dtype() {
        "bf16" => values.into_iter().map(|v| half::bf16::from_f32(v).to_f32()).collect(),
        _ => values.into_iter().map(|v| half::f16::from_f32(v).to_f32()).collect(),
    }
}

/// (out, in) of every Linear a kohya LoRA targets in the SDXL base UNet (diffusers config: block_out_channels
/// 320/640/1280, transformer_layers_per_block 1/2/10, cross_attention_dim 2048, GEGLU feed-forward ×4).
fn unet_linears() -> Vec<(usize, usize)> {
    // (channels, attentions, transformer blocks per attention): down_blocks.1, down_blocks.2, mid, up_blocks.0/1.
    let blocks = [(640, 2, 2), (1280, 2, 10), (1280, 1, 10), (1280, 3, 10), (640, 3, 2)];
    let mut out = Vec::new();
    for (d, attentions, layers) in blocks {
        for _ in 0..attentions {
            out.extend([(d, d), (d, d)]); // proj_in, proj_out
            for _ in 0..layers {
                out.extend([(d, d); 4]); // attn1 to_q/to_k/to_v/to_out.0
                out.extend([(d, d), (d, 2048), (d, 2048), (d, d)]); // attn2
                out.extend([(8 * d, d), (d, 4 * d)]); // ff.net.0.proj (GEGLU), ff.net.2
            }
        }
    }
    out
}

/// q/k/v/out_proj, fc1, fc2 of a CLIP text encoder.
fn clip_linears(hidden: usize, mlp: usize, layers: usize) -> Vec<(usize, usize)> {
    (0..layers).flat_map(|_| [(hidden, hidden); 4].into_iter().chain([(mlp, hidden), (hidden, mlp)])).collect()
}

struct Rng(u64);

impl Rng {
    fn fill(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n)
            .map(|_| {
                self.0 ^= self.0 << 13;
                self.0 ^= self.0 >> 7;
                self.0 ^= self.0 << 17;
                ((self.0 >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * scale
            })
            .collect()
    }
}

struct Job {
    patch: Patch,
    base: Vec<u8>,
    out: usize,
    cols: usize,
}

/// CPU time of the calling thread (so the figures mean something on a busy machine too).
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid out-pointer for clock_gettime.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Merge `jobs` on `threads` threads as `LoraSet::plan_graph` does: largest weight first, each merged in place into
/// its own buffer (production merges into the fresh copy `read_raw` returns). Returns the CPU time the workers
/// spent.
fn merge_all(jobs: &mut [Job], threads: usize) -> Duration {
    jobs.sort_by_key(|j| std::cmp::Reverse(j.out * j.cols));
    let queue = Mutex::new(jobs.iter_mut());
    let cpu = Mutex::new(Duration::ZERO);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                let start = thread_cpu();
                loop {
                    let Some(job) = queue.lock().expect("queue").next() else { break };
                    let scale = 0.8 * merge::alpha_scale(&job.patch, Some(16.0));
                    merge::apply_in_place(
                        &mut job.base,
                        DT_FLOAT16,
                        job.out,
                        job.cols,
                        Layout::Torch,
                        &[(&job.patch, scale)],
                    )
                    .expect("merge");
                }
                *cpu.lock().expect("cpu") += thread_cpu() - start;
            });
        }
    });
    cpu.into_inner().expect("cpu")
}

/// One read and one write of every base byte on `threads` threads (what any in-place merge must at least move): a
/// memory-traffic floor for the run. The bytes are restored by doing it twice; the second pass is not timed.
fn memory_pass(jobs: &mut [Job], threads: usize) -> Duration {
    let flip = std::hint::black_box(0x5a5a_5a5a_5a5a_5a5au64);
    let pass = |jobs: &mut [Job]| {
        let queue = Mutex::new(jobs.iter_mut());
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| loop {
                    let Some(job) = queue.lock().expect("queue").next() else { break };
                    for w in job.base.chunks_exact_mut(8) {
                        let x = u64::from_le_bytes(w.try_into().expect("8 bytes")) ^ flip;
                        w.copy_from_slice(&x.to_le_bytes());
                    }
                });
            }
        });
    };
    let t = Instant::now();
    pass(jobs);
    let elapsed = t.elapsed();
    pass(jobs);
    elapsed
}

struct Totals {
    wall: Duration,
    cpu: Duration,
    memory: Duration,
    params: usize,
}

fn bench(name: &str, shapes: &[(usize, usize)], threads: usize, rng: &mut Rng) -> Totals {
    let mut t = Totals { wall: Duration::ZERO, cpu: Duration::ZERO, memory: Duration::ZERO, params: 0 };
    t.params = shapes.iter().map(|(o, i)| o * i).sum();
    // Generate and merge about 1 GiB of base weights at a time (production merges a whole graph in one queue; the
    // fewer the batches, the less the workers wait for each other at batch ends).
    let mut batches: Vec<&[(usize, usize)]> = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, (o, c)) in shapes.iter().enumerate() {
        bytes += 2 * o * c;
        if bytes >= 1 << 30 || i + 1 == shapes.len() {
            batches.push(&shapes[start..=i]);
            (start, bytes) = (i + 1, 0);
        }
    }
    for chunk in batches {
        let mut jobs: Vec<Job> = chunk
            .iter()
            .map(|&(out, cols)| {
                let down = Mat { shape: vec![RANK, cols], data: factor(rng, RANK * cols) };
                let up = Mat { shape: vec![out, RANK], data: factor(rng, out * RANK) };
                let base = encode_floats(&rng.fill(out * cols, 0.05), DT_FLOAT16);
                Job { patch: Patch::LoRa { down, up }, base, out, cols }
            })
            .collect();
        t.memory += memory_pass(&mut jobs, threads);
        let start = Instant::now();
        t.cpu += merge_all(&mut jobs, threads);
        t.wall += start.elapsed();
    }
    let gflop = 2.0 * RANK as f64 * t.params as f64 / 1e9;
    println!(
        "{name:>15}: {:>4} Linears, {:>5.0} M params, {gflop:>6.1} GFLOP: wall {:>6.3} s, CPU {:>6.3} s \
         ({:.1} GFLOP per CPU-second); memory pass {:.3} s",
        shapes.len(),
        t.params as f64 / 1e6,
        t.wall.as_secs_f64(),
        t.cpu.as_secs_f64(),
        gflop / t.cpu.as_secs_f64(),
        t.memory.as_secs_f64()
    );
    t
}

/// `SDXLRT_BENCH_MICRO=out,cols,reps,rank[,copies]`: one float16 weight merged `reps` times on this thread (kernel
/// speed without the thread pool; a small weight stays in cache), or `copies` weights with their own factors, each
/// merged `reps` times in turn (the weights and factors come from memory, as in the full run).
fn micro(spec: &str, rng: &mut Rng) {
    let usage = "SDXLRT_BENCH_MICRO=out,cols,reps,rank[,copies]";
    let v: Vec<usize> = spec.split(',').map(|x| x.trim().parse().expect(usage)).collect();
    let (out, cols, reps, rank) = match v[..] {
        [out, cols, reps, rank, ..] => (out, cols, reps, rank),
        _ => panic!("{usage}"),
    };
    let copies = v.get(4).copied().unwrap_or(1);
    let mut jobs: Vec<(Vec<u8>, Patch)> = (0..copies)
        .map(|_| {
            let down = Mat { shape: vec![rank, cols], data: factor(rng, rank * cols) };
            let up = Mat { shape: vec![out, rank], data: factor(rng, out * rank) };
            (encode_floats(&rng.fill(out * cols, 0.05), DT_FLOAT16), Patch::LoRa { down, up })
        })
        .collect();
    let start = thread_cpu();
    for _ in 0..reps {
        for (base, patch) in &mut jobs {
            merge::apply_in_place(base, DT_FLOAT16, out, cols, Layout::Torch, &[(patch, 0.01)]).expect("merge");
        }
    }
    let cpu = (thread_cpu() - start).as_secs_f64();
    let gflop = 2.0 * rank as f64 * (out * cols * reps * copies) as f64 / 1e9;
    println!("micro {out}x{cols} rank {rank} x{reps} x{copies}: {:.1} GFLOP per CPU-second", gflop / cpu);
}

fn main() {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("rank-{RANK} {} LoRA merge into float16 SDXL weights, {threads} threads", factor_dtype());
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    if let Ok(spec) = std::env::var("SDXLRT_BENCH_MICRO") {
        micro(&spec, &mut rng);
        return;
    }
    let parts = [
        ("unet", unet_linears()),
        ("text_encoder", clip_linears(768, 3072, 12)),
        ("text_encoder_2", clip_linears(1280, 5120, 32)),
    ];
    let mut total = Totals { wall: Duration::ZERO, cpu: Duration::ZERO, memory: Duration::ZERO, params: 0 };
    let only = std::env::var("SDXLRT_BENCH_PARTS").ok();
    for (name, shapes) in &parts {
        if only.as_deref().is_some_and(|o| !o.split(',').any(|x| x == *name)) {
            continue;
        }
        let t = bench(name, shapes, threads, &mut rng);
        total.wall += t.wall;
        total.cpu += t.cpu;
        total.memory += t.memory;
        total.params += t.params;
    }
    let gflop = 2.0 * RANK as f64 * total.params as f64 / 1e9;
    println!(
        "{:>15}: {:>5.0} M params, {gflop:>6.1} GFLOP: wall {:.3} s, CPU {:.3} s ({:.1} GFLOP per CPU-second); \
         memory pass {:.3} s ({:.1} GB/s read+write)",
        "total",
        total.params as f64 / 1e6,
        total.wall.as_secs_f64(),
        total.cpu.as_secs_f64(),
        gflop / total.cpu.as_secs_f64(),
        total.memory.as_secs_f64(),
        4.0 * total.params as f64 / 1e9 / total.memory.as_secs_f64()
    );
    // This VM's speed drifts by 10-20 % within an hour: the peak measured in the same run says what a wall time means.
    if let Some(peak) = fma_peak() {
        println!(
            "{:>15}: {peak:.1} GFLOP/s per core (f32 FMA, this run); the merge ran at {:.0} % of it per CPU-second, and \
             {gflop:.1} GFLOP on {threads} such cores take at least {:.3} s",
            "FMA peak",
            100.0 * gflop / total.cpu.as_secs_f64() / peak,
            gflop / (peak * threads as f64)
        );
    }
}

/// One core's f32 FMA rate (GFLOP/s): 12 independent chains of 512-bit (else 256-bit) FMAs for ~0.1 s, the best of
/// 3; `None` without FMA.
fn fma_peak() -> Option<f64> {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::*;
        // 12 chains, indexed, with an empty asm statement per round (as measured to keep them in registers).
        #[target_feature(enable = "avx512f")]
        #[inline(never)]
        unsafe fn chains512(n: usize) -> [__m512; 12] {
            let (x, y) = (_mm512_set1_ps(0.999_999), _mm512_set1_ps(1e-7));
            let mut acc = [_mm512_set1_ps(1.0); 12];
            for _ in 0..n {
                for a in &mut acc {
                    *a = _mm512_fmadd_ps(*a, x, y);
                }
                std::arch::asm!("", options(nomem, nostack));
            }
            acc
        }
        #[target_feature(enable = "avx2,fma")]
        #[inline(never)]
        unsafe fn chains256(n: usize) -> [__m256; 12] {
            let (x, y) = (_mm256_set1_ps(0.999_999), _mm256_set1_ps(1e-7));
            let mut acc = [_mm256_set1_ps(1.0); 12];
            for _ in 0..n {
                for a in &mut acc {
                    *a = _mm256_fmadd_ps(*a, x, y);
                }
                std::arch::asm!("", options(nomem, nostack));
            }
            acc
        }
        // The chains' values go to `black_box`, so that they are computed.
        let (flop_per_iter, run): (f64, fn(usize)) = if is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F (checked).
            (12.0 * 32.0, |n| _ = std::hint::black_box(unsafe { chains512(n) }))
        } else if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has AVX2 and FMA (checked).
            (12.0 * 16.0, |n| _ = std::hint::black_box(unsafe { chains256(n) }))
        } else {
            return None;
        };
        let n = 30_000_000;
        let best = (0..3)
            .map(|_| {
                let start = thread_cpu();
                run(std::hint::black_box(n));
                (thread_cpu() - start).as_secs_f64()
            })
            .fold(f64::INFINITY, f64::min);
        Some(flop_per_iter * n as f64 / best / 1e9)
    }
    #[cfg(not(target_arch = "x86_64"))]
    None
}
