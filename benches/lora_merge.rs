//! LoRA merge speed on real SDXL shapes (not a timed test): a rank-32 LoRA on every attention and feed-forward
//! Linear of the SDXL base UNet and both text encoders, shapes from the public SDXL configs, random weights (no
//! download), merged into random float16 base weights with the library's own merge code (ΔW = up · down in f32,
//! added to the weight, written back as float16), on every core.
//!
//! Run: `cargo bench --bench lora_merge` (prints one line per part and the total, wall-clock and the workers' CPU
//! time). Random data generation is not timed; modules are generated and merged in chunks to keep memory bounded.
//! `SDXLRT_BENCH_PARTS=text_encoder` limits the run to some parts.
//!
//! Measured (2026-11-27, the 2-core x86-64 dev VM with AVX2+FMA, shared with other builds, load ≈ 3):
//!
//! | part | Linears | params | ΔW GFLOP | wall | CPU |
//! |---|---:|---:|---:|---:|---:|
//! | unet | 722 | 2,208 M | 141.3 | 13.5 s | 12.6 s |
//! | text_encoder | 72 | 85 M | 5.4 | 0.4 s | 0.3 s |
//! | text_encoder_2 | 192 | 629 M | 40.3 | 4.4 s | 2.9 s |
//! | total | 986 | 2,922 M | 187.0 | 18.3 s | 15.9 s |
//!
//! The goal (≤ 1 s on 2 cores) is not met: the rank-32 ΔW alone is 187 GFLOP, about the peak of two
//! AVX2/FMA cores for one second; the kernel (4×16 register blocks, runtime AVX2+FMA dispatch) reaches ~40 GFLOP per
//! CPU-second on the text-encoder shapes and less on the large UNet matrices, where allocation and memory traffic
//! (a float32 ΔW per weight, float16 decode/encode) weigh more.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use sdxlrt::lora::formats::{Mat, Patch};
use sdxlrt::lora::keymap::Layout;
use sdxlrt::lora::merge;
use sdxlrt::runtime::onnx_proto::{encode_floats, DT_FLOAT16};

const RANK: usize = 32;

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

/// Merge `jobs` on `threads` threads, as `LoraSet::plan_graph` does. Returns the merged weights and the CPU time
/// the workers spent.
fn merge_all(jobs: &[Job], threads: usize) -> (Vec<Vec<u8>>, Duration) {
    let next = AtomicUsize::new(0);
    let cpu = std::sync::Mutex::new(Duration::ZERO);
    let mut results: Vec<(usize, Vec<u8>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let start = thread_cpu();
                    let mut done = Vec::new();
                    while let Some(job) = jobs.get(next.fetch_add(1, Ordering::Relaxed)) {
                        let mut delta = vec![0f32; job.out * job.cols];
                        merge::accumulate(&job.patch, 0.8 * merge::alpha_scale(&job.patch, Some(16.0)), &mut delta);
                        let merged =
                            merge::add_delta_encoded(&job.base, DT_FLOAT16, &delta, job.out, job.cols, Layout::Torch);
                        done.push((job.out * job.cols, merged));
                    }
                    *cpu.lock().expect("cpu") += thread_cpu() - start;
                    done
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().expect("worker")).collect()
    });
    results.sort_by_key(|r| r.0);
    (results.into_iter().map(|r| r.1).collect(), cpu.into_inner().expect("cpu"))
}

fn bench(name: &str, shapes: &[(usize, usize)], threads: usize, rng: &mut Rng) -> (Duration, Duration, usize) {
    let mut timed = Duration::ZERO;
    let mut cpu = Duration::ZERO;
    let params: usize = shapes.iter().map(|(o, i)| o * i).sum();
    for chunk in shapes.chunks(24) {
        let jobs: Vec<Job> = chunk
            .iter()
            .map(|&(out, cols)| {
                let down = Mat { shape: vec![RANK, cols], data: rng.fill(RANK * cols, 0.1) };
                let up = Mat { shape: vec![out, RANK], data: rng.fill(out * RANK, 0.1) };
                let base = encode_floats(&rng.fill(out * cols, 0.05), DT_FLOAT16);
                Job { patch: Patch::LoRa { down, up }, base, out, cols }
            })
            .collect();
        let t = Instant::now();
        let (merged, c) = merge_all(&jobs, threads);
        timed += t.elapsed();
        cpu += c;
        assert_eq!(merged.len(), jobs.len());
    }
    let gflop = 2.0 * RANK as f64 * params as f64 / 1e9;
    println!(
        "{name:>15}: {:>4} Linears, {:>5.0} M params, {gflop:>6.1} GFLOP for ΔW: wall {:>6.2} s, CPU {:>6.2} s \
         ({:.1} GFLOP per CPU-second)",
        shapes.len(),
        params as f64 / 1e6,
        timed.as_secs_f64(),
        cpu.as_secs_f64(),
        gflop / cpu.as_secs_f64()
    );
    (timed, cpu, params)
}

fn main() {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("rank-{RANK} LoRA merge into float16 SDXL weights, {threads} threads");
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let parts = [
        ("unet", unet_linears()),
        ("text_encoder", clip_linears(768, 3072, 12)),
        ("text_encoder_2", clip_linears(1280, 5120, 32)),
    ];
    let (mut total, mut cpu, mut params) = (Duration::ZERO, Duration::ZERO, 0);
    let only = std::env::var("SDXLRT_BENCH_PARTS").ok();
    for (name, shapes) in &parts {
        if only.as_deref().is_some_and(|o| !o.split(',').any(|x| x == *name)) {
            continue;
        }
        let (t, c, p) = bench(name, shapes, threads, &mut rng);
        total += t;
        cpu += c;
        params += p;
    }
    println!(
        "{:>15}: {:>5.0} M params: wall {:.2} s, CPU {:.2} s (wall on an idle machine ≈ CPU / {threads})",
        "total",
        params as f64 / 1e6,
        total.as_secs_f64(),
        cpu.as_secs_f64()
    );
}
