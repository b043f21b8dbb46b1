//! The roofline of the products: this CPU's peak multiply-adds per second (int8 on VNNI or
//! AVX2's `vpmaddwd`, fp32 on FMA; one thread, then every thread at once) against what
//! dinoedge's int8 and fp32 kernels reach on ViT-S/14's own product shapes, on one thread and
//! then on every thread (how the products scale: issue 17's "all cores over one thread"), and
//! one block's fused attention likewise.
//!
//! `cargo bench --bench roofline` (no fixtures needed; the peak loops mean something only in
//! an optimised build of this file, as `cargo bench` makes). The peak loops run 12 independent
//! accumulators, so that neither latency nor memory bounds them: what they measure is the
//! issue rate of the multiply-add instructions at the clock the CPU runs now. Compare a model
//! run with it: ViT-S/14 at 224 is 6.12 GMAC, of which 5.46 are the 72 weight products
//! (`dinoedge bench --profile` gives their time).

use std::time::Instant;

use dinoedge_kernels::qgemm::{self, Activations, Epilogue, PackedWeights, Weights};
use dinoedge_kernels::sgemm;
use dinoedge_model::attention::{self, Dims, Layout, Spec, Step};
use tract_linalg::multithread::{Executor, multithread_tract_scope};

#[cfg(target_arch = "x86_64")]
mod peak {
    use std::arch::x86_64::*;

    /// `iters` × 12 `vpdpbusd` on zmm registers (64 multiply-adds each).
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub unsafe fn vnni512(iters: u64) -> i32 {
        let a = _mm512_set1_epi32(0x0101_0101);
        let b = _mm512_set1_epi32(0x0102_0102);
        let mut acc = [_mm512_setzero_si512(); 12];
        for _ in 0..iters {
            for v in acc.iter_mut() {
                *v = _mm512_dpbusd_epi32(*v, a, b);
            }
        }
        let mut s = _mm512_setzero_si512();
        for v in acc {
            s = _mm512_add_epi32(s, v);
        }
        _mm512_reduce_add_epi32(s)
    }

    /// `iters` × 12 `vpmaddwd` + `vpaddd` on ymm registers (16 multiply-adds each): the
    /// int8 rate of an AVX2 machine, as dinoedge's AVX2 kernel reaches it (bytes widened to
    /// 16 bits; `vpmaddubsw` would saturate).
    #[target_feature(enable = "avx2")]
    pub unsafe fn madd256(iters: u64) -> i32 {
        let b = _mm256_set1_epi16(-2);
        let mut acc = [_mm256_set1_epi16(3); 12];
        for _ in 0..iters {
            // each product reads its own accumulator, so none can be hoisted out of the loop
            for v in acc.iter_mut() {
                *v = _mm256_add_epi32(*v, _mm256_madd_epi16(*v, b));
            }
        }
        let mut s = _mm256_setzero_si256();
        for v in acc {
            s = _mm256_add_epi32(s, v);
        }
        let mut out = [0i32; 8];
        // SAFETY: `out` holds 8 integers.
        unsafe { _mm256_storeu_si256(out.as_mut_ptr() as *mut __m256i, s) };
        out.iter().fold(0, |x, y| x.wrapping_add(*y))
    }

    /// `iters` × 12 `vfmadd` on zmm registers (16 multiply-adds each).
    #[target_feature(enable = "avx512f")]
    pub unsafe fn fma512(iters: u64) -> f32 {
        let a = _mm512_set1_ps(0.999_999);
        let b = _mm512_set1_ps(1e-7);
        let mut acc = [_mm512_setzero_ps(); 12];
        for _ in 0..iters {
            for v in acc.iter_mut() {
                *v = _mm512_fmadd_ps(*v, a, b);
            }
        }
        let mut s = _mm512_setzero_ps();
        for v in acc {
            s = _mm512_add_ps(s, v);
        }
        _mm512_reduce_add_ps(s)
    }

    /// `iters` × 6 `tdpbusd` on AMX tiles (16 rows of 64 bytes by 16 columns: 16,384
    /// multiply-adds each) into 6 independent accumulator tiles.
    ///
    /// # Safety
    /// The CPU has AMX and this process may use it (`qgemm::kernel_name() == "amx"`).
    pub unsafe fn amx(iters: u64) -> f64 {
        use std::arch::asm;
        #[repr(C, align(64))]
        struct Config([u8; 64]);
        let mut config = Config([0; 64]);
        config.0[0] = 1;
        for t in 0..8 {
            config.0[16 + 2 * t] = 64;
            config.0[48 + t] = 16;
        }
        let zeros = [0u8; 1024];
        // SAFETY: the caller's promise; the loads read 16 rows of 64 bytes from `zeros`.
        unsafe {
            asm!(
                "ldtilecfg [{c}]",
                "tilezero tmm0", "tilezero tmm1", "tilezero tmm2",
                "tilezero tmm3", "tilezero tmm4", "tilezero tmm5",
                "tileloadd tmm6, [{z} + {s}*1]",
                "tileloadd tmm7, [{z} + {s}*1]",
                c = in(reg) config.0.as_ptr(), z = in(reg) zeros.as_ptr(), s = in(reg) 64usize,
            );
            for _ in 0..iters {
                asm!(
                    "tdpbusd tmm0, tmm6, tmm7",
                    "tdpbusd tmm1, tmm6, tmm7",
                    "tdpbusd tmm2, tmm6, tmm7",
                    "tdpbusd tmm3, tmm6, tmm7",
                    "tdpbusd tmm4, tmm6, tmm7",
                    "tdpbusd tmm5, tmm6, tmm7",
                    options(nostack, nomem),
                );
            }
            asm!("tilerelease", options(nostack, nomem));
        }
        iters as f64
    }

    /// `iters` × 12 `vfmadd` on ymm registers (8 multiply-adds each): AVX2 machines.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn fma256(iters: u64) -> f32 {
        let a = _mm256_set1_ps(0.999_999);
        let b = _mm256_set1_ps(1e-7);
        let mut acc = [_mm256_setzero_ps(); 12];
        for _ in 0..iters {
            for v in acc.iter_mut() {
                *v = _mm256_fmadd_ps(*v, a, b);
            }
        }
        let mut s = _mm256_setzero_ps();
        for v in acc {
            s = _mm256_add_ps(s, v);
        }
        let mut out = [0f32; 8];
        // SAFETY: `out` holds 8 floats.
        unsafe { _mm256_storeu_ps(out.as_mut_ptr(), s) };
        out.iter().sum()
    }
}

/// A peak loop: its name, the CPU feature it needs, multiply-adds per iteration, the loop.
#[cfg(target_arch = "x86_64")]
type Peak = (&'static str, &'static str, f64, fn(u64) -> f64);

/// Multiply-adds per second of `f(iters)` doing `macs_per_iter` each, best of 5, on `threads`
/// threads at once (summed).
fn rate(threads: usize, macs_per_iter: f64, f: fn(u64) -> f64) -> f64 {
    let iters = 20_000_000u64;
    let best = (0..5)
        .map(|_| {
            let t = Instant::now();
            std::thread::scope(|s| {
                for _ in 0..threads {
                    s.spawn(|| std::hint::black_box(f(iters)));
                }
            });
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min);
    threads as f64 * iters as f64 * macs_per_iter / best
}

/// The int8 weights a product is measured with.
#[derive(Clone, Copy)]
enum Spread {
    /// Spread evenly over every byte (the worst case for AVX2: widened to 16 bits).
    Even,
    /// Bell-shaped, the largest at ±127 about five deviations out, as a trained matrix's
    /// per-tensor quantisation gives: AVX2 multiplies them as bytes, the few pairs beyond
    /// `VPMADDUBSW`'s range split off (`PackedWeights::split_pairs`).
    Bell,
    /// In `−64..=64` (`quantize.py --reduce-range`): bytes on AVX2, nothing split.
    SevenBit,
}

/// Seconds of `f`, best of 20, with dinoedge's kernels splitting their work over `threads`
/// (tract's executor, as a backbone with `--threads` runs them; inline on one).
fn best_of_20(threads: usize, mut f: impl FnMut()) -> f64 {
    let executor = if threads == 1 {
        Executor::SingleThread
    } else {
        Executor::multithread(threads)
    };
    multithread_tract_scope(executor, || {
        (0..20)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed().as_secs_f64()
            })
            .fold(f64::INFINITY, f64::min)
    })
}

/// GMAC/s of dinoedge's int8 product on `m x k x n`, on `threads`.
fn product(m: usize, k: usize, n: usize, spread: Spread, threads: usize) -> f64 {
    let a: Vec<u8> = (0..m * k).map(|i| (i * 7 % 251) as u8).collect();
    let mut state = 0x2545_f491_u32;
    let mut uniform = move || {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        state as f32 / u32::MAX as f32
    };
    let b: Vec<i8> = (0..k * n)
        .map(|i| match spread {
            Spread::Even => (i * 13 % 255) as i8,
            // twelve uniforms less 6: a normal deviate within ±6
            Spread::Bell => {
                let z = (0..12).map(|_| uniform()).sum::<f32>() - 6.0;
                (z * 127.0 / 4.9).round().clamp(-127.0, 127.0) as i8
            }
            Spread::SevenBit => ((i * 13 % 129) as i32 - 64) as i8,
        })
        .collect();
    let w = PackedWeights::new(Weights::I8(&b), k, n, &[0]).unwrap();
    let mut out = vec![0f32; m * n];
    let epilogue = Epilogue::Scale {
        scale: 1e-3,
        bias: None,
    };
    let best = best_of_20(threads, || {
        qgemm::matmul(&Activations::U8(&a, 3), &w, &epilogue, &mut out).unwrap()
    });
    std::hint::black_box(&out);
    (m * k * n) as f64 / best / 1e9
}

/// GMAC/s of dinoedge's `f32` product on `[m, k] × [k, n]`, on `threads`, best of 20.
fn product_f32(m: usize, k: usize, n: usize, threads: usize) -> f64 {
    let a: Vec<f32> = (0..m * k).map(|i| (i % 17) as f32 * 0.1 - 0.8).collect();
    let b: Vec<f32> = (0..k * n).map(|i| (i % 13) as f32 * 0.01 - 0.06).collect();
    let w = sgemm::PackedF32::new(&b, k, n).unwrap();
    let mut out = vec![0f32; m * n];
    let best = best_of_20(threads, || sgemm::matmul(&a, &w, None, &mut out).unwrap());
    std::hint::black_box(&out);
    (m * k * n) as f64 / best / 1e9
}

/// Milliseconds of one block's fused attention (`heads` × `tokens` × 64, scaled by 1/8), on
/// `threads`, best of 20, with Q, K and V read where DINOv2's ONNX graph leaves them: one
/// `[tokens, 3, heads, 64]` tensor, and the output `[tokens, heads, 64]`.
fn attention(heads: usize, tokens: usize, int8: bool, threads: usize) -> f64 {
    let d = 64;
    let width = 3 * heads * d;
    let qkv: Vec<f32> = (0..tokens * width)
        .map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * 2.0)
        .collect();
    let lay = Layout {
        head: d,
        row: width,
        col: 1,
    };
    let spec = Spec {
        dims: Dims {
            heads,
            queries: tokens,
            keys: tokens,
            depth: d,
            value_depth: d,
        },
        q: lay,
        k: lay,
        v: lay,
        out: Layout {
            head: d,
            row: heads * d,
            col: 1,
        },
        before: vec![Step::Scale(0.125)],
        after: Vec::new(),
        int8,
    };
    let (q, k, v) = (&qkv[..], &qkv[heads * d..], &qkv[2 * heads * d..]);
    let mut out = vec![0f32; tokens * heads * d];
    best_of_20(threads, || {
        attention::attend(&spec, q, k, v, &mut out).unwrap()
    }) * 1e3
}

fn main() {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    println!("roofline ({threads} threads):");
    #[cfg(target_arch = "x86_64")]
    {
        let has = |f: &str| match f {
            // dinoedge's own detection, which also asks Linux for the tiles' state
            "amx" => qgemm::kernel_name() == "amx",
            "vnni" => {
                is_x86_feature_detected!("avx512vnni") && is_x86_feature_detected!("avx512bw")
            }
            "avx512" => is_x86_feature_detected!("avx512f"),
            _ => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
        };
        // SAFETY (each closure): the features were detected just before it runs.
        let peaks: [Peak; 5] = [
            // n / 64 iterations of 6 instructions: 1,536 multiply-adds per unit of `n`
            (
                "int8 tdpbusd tiles",
                "amx",
                6.0 * 16384.0 / 64.0,
                |n| unsafe { peak::amx(n / 64) },
            ),
            ("int8 vpdpbusd zmm", "vnni", 12.0 * 64.0, |n| unsafe {
                peak::vnni512(n) as f64
            }),
            ("int8 vpmaddwd ymm", "avx2", 12.0 * 16.0, |n| unsafe {
                peak::madd256(n) as f64
            }),
            ("fp32 vfmadd zmm", "avx512", 12.0 * 16.0, |n| unsafe {
                peak::fma512(n) as f64
            }),
            ("fp32 vfmadd ymm", "avx2", 12.0 * 8.0, |n| unsafe {
                peak::fma256(n) as f64
            }),
        ];
        for (name, feature, macs, f) in peaks {
            if !has(feature) {
                println!("  {name:<20} not on this CPU");
                continue;
            }
            let one = rate(1, macs, f);
            let all = rate(threads, macs, f);
            println!(
                "  {name:<20} peak {:>6.1} GMAC/s on 1 thread, {:>6.1} on {threads} ({:.2}x)",
                one / 1e9,
                all / 1e9,
                all / one
            );
        }
    }
    println!(
        "dinoedge's products (1 thread, int8 kernel {}; ViT-S/14 has 257 tokens at 224, 705 at 308x448):",
        qgemm::kernel_name()
    );
    let shapes = [
        ("qkv 257x384x1152", 257, 384, 1152),
        ("proj 257x384x384", 257, 384, 384),
        ("fc1 257x384x1536", 257, 384, 1536),
        ("fc2 257x1536x384", 257, 1536, 384),
        ("qkv 705x384x1152", 705, 384, 1152),
        ("fc2 705x1536x384", 705, 1536, 384),
        ("square 1024^3", 1024, 1024, 1024),
    ];
    for (what, m, k, n) in shapes {
        println!(
            "  {what:<20} int8 {:>6.1} GMAC/s  bell {:>6.1}  7-bit {:>6.1}  fp32 {:>6.1} GMAC/s",
            product(m, k, n, Spread::Even, 1),
            product(m, k, n, Spread::Bell, 1),
            product(m, k, n, Spread::SevenBit, 1),
            product_f32(m, k, n, 1)
        );
    }
    if threads > 1 {
        println!("the same on {threads} threads (GMAC/s, and over 1 thread measured just before):");
        for (what, m, k, n) in shapes {
            let scaled = |rate: &dyn Fn(usize) -> f64| {
                let one = rate(1);
                let all = rate(threads);
                format!("{all:>6.1} ({:.2}x)", all / one)
            };
            println!(
                "  {what:<20} int8 {}  bell {}  fp32 {}",
                scaled(&|t| product(m, k, n, Spread::Even, t)),
                scaled(&|t| product(m, k, n, Spread::Bell, t)),
                scaled(&|t| product_f32(m, k, n, t)),
            );
        }
    }
    println!("one block's fused attention (6 heads of 64, as ViT-S/14; 1 thread, then {threads}):");
    for (what, tokens) in [("224x224, 257 tokens", 257), ("308x448, 705 tokens", 705)] {
        let macs = 2.0 * 6.0 * (tokens * tokens * 64) as f64;
        for int8 in [true, false] {
            let one = attention(6, tokens, int8, 1);
            let all = attention(6, tokens, int8, threads);
            println!(
                "  {what:<20} {:<5} {one:>6.2} ms  {:>6.1} GMAC/s; {all:>6.2} ms on {threads} ({:.2}x)",
                if int8 { "int8" } else { "fp32" },
                macs / one / 1e6,
                one / all
            );
        }
    }
}
