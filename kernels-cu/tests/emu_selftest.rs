//! The emulation against hand-computed CUDA semantics: shuffles with every width, votes, atomics,
//! barriers, early-exiting threads, poisoned and dynamic shared memory, built-in indices, and the
//! errors it must report (deadlock, divergent and partial-mask warp operations).

use ssm_kernels::emu::{self, Schedule};
use ssm_kernels::{KernelArgs, Launch, LaunchConfig, host_ptr, host_ptr_mut};

use crate::common::{SEEDS, run, schedules};

fn cfg(grid: u32, block: u32, shared: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (grid, 1, 1),
        block_dim: (block, 1, 1),
        shared_mem_bytes: shared,
    }
}

/// What a shuffle reads from a lane that does not exist or has exited.
const POISON: i32 = -1;

/// The eight results of `emu_test_warp_ops` for thread `t`, by the CUDA programming guide.
fn expected_warp_ops(input: &[i32], t: usize, width: usize, arg: usize) -> [i32; 8] {
    let warp = &input[t / 32 * 32..(t / 32 * 32 + 32).min(input.len())];
    let lane = t % 32;
    let base = lane & !(width - 1);
    let own = input[t];
    let at = |src: usize| warp.get(src).copied().unwrap_or(POISON);
    let shfl = at(base + (arg & (width - 1)));
    let up = if lane >= base + arg {
        at(lane - arg)
    } else {
        own
    };
    let down = if lane + arg < base + width {
        at(lane + arg)
    } else {
        own
    };
    let xor = if (lane ^ arg) < base + width {
        at(lane ^ arg)
    } else {
        own
    };
    let ballot = warp
        .iter()
        .enumerate()
        .fold(0u32, |m, (j, v)| m | (((v & 1) as u32) << j));
    let any = warp.contains(&7) as i32;
    let all = warp.iter().all(|&v| v >= 0) as i32;
    let xor1 = if (lane ^ 1) < base + width {
        at(lane ^ 1)
    } else {
        own
    };
    [shfl, up, down, xor, ballot as i32, any, all, xor1]
}

#[test]
fn shuffles_and_votes_follow_cuda_semantics_for_every_width() {
    for threads in [64usize, 48] {
        let input: Vec<i32> = (0..threads as i32).map(|i| (i * 7 + 3) % 11).collect();
        for width in [1usize, 2, 4, 8, 16, 32] {
            for arg in [0usize, 1, 3, 5, 16] {
                let mut out = vec![0i32; threads * 8];
                let launch = Launch {
                    kernel: "emu_test_warp_ops",
                    config: cfg(1, threads as u32, 0),
                    args: KernelArgs::new()
                        .ptr(host_ptr(&input))
                        .ptr(host_ptr_mut(&mut out))
                        .i32(width as i32)
                        .i32(arg as i32),
                };
                // SAFETY: input has `threads` ints, out has 8 per thread.
                unsafe { run(&[launch], Schedule::Random(width as u64 * 31 + arg as u64)) };
                for t in 0..threads {
                    assert_eq!(
                        out[8 * t..8 * t + 8],
                        expected_warp_ops(&input, t, width, arg),
                        "thread {t} of {threads}, width {width}, arg {arg}"
                    );
                }
            }
        }
    }
}

#[test]
fn exited_threads_leave_barriers_and_ballots() {
    let input: Vec<f32> = (0..128).map(|i| i as f32).collect();
    for live in [1usize, 40, 100, 128] {
        for schedule in schedules()
            .into_iter()
            .chain([Schedule::InOrder, Schedule::Threads])
        {
            let mut out = vec![0.0f32; 129];
            let launch = Launch {
                kernel: "emu_test_early_exit",
                config: cfg(1, 128, 0),
                args: KernelArgs::new()
                    .ptr(host_ptr(&input))
                    .ptr(host_ptr_mut(&mut out))
                    .i32(live as i32),
            };
            // SAFETY: input has 128 floats, out 129.
            unsafe { run(&[launch], schedule) };
            for t in 0..live {
                let lanes = (live - t / 32 * 32).min(32) as f32;
                assert_eq!(
                    out[t],
                    input[(t + 1) % live] + 1000.0 * lanes,
                    "live {live}, thread {t}, {schedule:?}"
                );
            }
            assert_eq!(
                out[live],
                input[..live].iter().sum::<f32>(),
                "live {live}: sum"
            );
        }
    }
}

#[test]
fn atomics_count_every_thread_of_every_block() {
    for schedule in schedules().into_iter().chain([Schedule::Threads]) {
        let (mut fsum, mut count, mut imax) = ([0.0f32], [0u32], [-1i32]);
        let launch = Launch {
            kernel: "emu_test_atomics",
            config: cfg(5, 96, 0),
            args: KernelArgs::new()
                .ptr(host_ptr_mut(&mut fsum))
                .ptr(host_ptr_mut(&mut count))
                .ptr(host_ptr_mut(&mut imax)),
        };
        // SAFETY: each pointer is to one live element.
        unsafe { run(&[launch], schedule) };
        assert_eq!(
            (fsum[0], count[0], imax[0]),
            (480.0, 480, 479),
            "{schedule:?}"
        );
    }
}

fn reverse(barrier: bool, schedule: Schedule) -> bool {
    let (blocks, n) = (3usize, 256usize);
    let input: Vec<f32> = (0..blocks * n).map(|i| i as f32).collect();
    let mut out = vec![0.0f32; blocks * n];
    let launch = Launch {
        kernel: "emu_test_reverse",
        config: cfg(blocks as u32, n as u32, 0),
        args: KernelArgs::new()
            .ptr(host_ptr(&input))
            .ptr(host_ptr_mut(&mut out))
            .i32(barrier as i32),
    };
    // SAFETY: both buffers hold blocks * n floats.
    unsafe { run(&[launch], schedule) };
    (0..blocks * n).all(|i| out[i] == 2.0 * input[i / n * n + n - 1 - i % n])
}

#[test]
fn barriers_order_shared_memory_and_their_absence_is_caught() {
    for schedule in schedules()
        .into_iter()
        .chain([Schedule::InOrder, Schedule::Threads])
    {
        assert!(reverse(true, schedule), "with the barrier, {schedule:?}");
    }
    for seed in SEEDS {
        assert!(
            !reverse(false, Schedule::Random(seed)),
            "without the barrier, seed {seed} must read unwritten shared memory"
        );
    }
}

#[test]
fn unwritten_shared_memory_reads_as_nan() {
    let mut out = vec![0.0f32; 32];
    let launch = Launch {
        kernel: "emu_test_poison",
        config: cfg(2, 32, 0),
        args: KernelArgs::new().ptr(host_ptr_mut(&mut out)),
    };
    // SAFETY: out holds one float per thread.
    unsafe { run(&[launch], Schedule::Random(3)) };
    assert!(out.iter().all(|v| v.to_bits() == u32::MAX), "{out:?}");
}

#[test]
fn shared_memory_of_templates_is_poisoned_in_every_block() {
    let (blocks, n) = (3usize, 64usize);
    for schedule in schedules()
        .into_iter()
        .chain([Schedule::InOrder, Schedule::Threads])
    {
        let mut out = vec![0.0f32; blocks * n];
        let launch = Launch {
            kernel: "emu_test_poison_template",
            config: cfg(blocks as u32, n as u32, 0),
            args: KernelArgs::new().ptr(host_ptr_mut(&mut out)),
        };
        // SAFETY: out holds one float per thread of the grid.
        unsafe { run(&[launch], schedule) };
        for (i, v) in out.iter().enumerate() {
            let written = i < n && i % 2 == 0;
            assert!(
                if written { *v == i as f32 } else { v.is_nan() },
                "block {}, thread {}: {v}, {schedule:?}",
                i / n,
                i % n
            );
        }
    }
}

#[test]
fn bank_conflicts_are_counted_as_a_gpu_serves_them() {
    // (stride, wide, degree): lanes 32 words apart share a bank; lanes on one word are a
    // broadcast; an odd stride spreads over all banks; 32 doubles are 64 words, two per bank.
    let cases = [
        (1, false, 1),
        (0, false, 1),
        (2, false, 2),
        (4, false, 4),
        (32, false, 32),
        (33, false, 1),
        (1, true, 2),
        (16, true, 32),
    ];
    for (stride, wide, degree) in cases {
        let mut out = vec![0.0f32; 64];
        let launch = Launch {
            kernel: "emu_test_banks",
            config: cfg(1, 64, 0),
            args: KernelArgs::new()
                .ptr(host_ptr_mut(&mut out))
                .i32(stride)
                .i32(wide as i32),
        };
        // SAFETY: out holds one float per thread.
        let c = unsafe { emu::launch_counting_banks(&launch, Schedule::Random(2)) }.unwrap();
        let ctx = format!("stride {stride}, wide {wide}: {c:?}");
        // Per warp: the store (conflict-free) and the load.
        assert_eq!((c.requests, c.sites.len()), (4, 2), "{ctx}");
        assert_eq!(
            (c.worst, c.degree_sum),
            (degree, 2 + 2 * degree as u64),
            "{ctx}"
        );
    }
}

#[test]
fn dynamic_shared_memory_is_sized_by_the_launch_and_poisoned() {
    let n = 200usize;
    let mut out = vec![0.0f32; n + 1];
    let launch = Launch {
        kernel: "emu_test_dynamic_shared",
        config: cfg(1, n as u32, (4 * (n + 1)) as u32),
        args: KernelArgs::new().ptr(host_ptr_mut(&mut out)).i32(n as i32),
    };
    // SAFETY: out holds n + 1 floats.
    unsafe { run(&[launch], Schedule::Random(9)) };
    assert!((0..n).all(|t| out[t] == (n - 1 - t) as f32));
    assert!(out[n].is_nan());
}

#[test]
fn built_in_indices_cover_3d_grids_and_blocks() {
    let (grid, block) = ((3u32, 2u32, 2u32), (5u32, 3u32, 2u32));
    let threads = (block.0 * block.1 * block.2) as usize;
    let blocks = (grid.0 * grid.1 * grid.2) as usize;
    let mut out = vec![0u32; 4 * threads * blocks];
    let launch = Launch {
        kernel: "emu_test_indices",
        config: LaunchConfig {
            grid_dim: grid,
            block_dim: block,
            shared_mem_bytes: 0,
        },
        args: KernelArgs::new().ptr(host_ptr_mut(&mut out)),
    };
    // SAFETY: out holds 4 words per thread of the grid.
    unsafe { run(&[launch], Schedule::Random(5)) };
    let pack = |x: u32, y: u32, z: u32| x | y << 10 | z << 20;
    for (bi, bo) in out.chunks_exact(4 * threads).enumerate() {
        let b = bi as u32;
        let bidx = pack(b % grid.0, b / grid.0 % grid.1, b / (grid.0 * grid.1));
        for (ti, o) in bo.chunks_exact(4).enumerate() {
            let t = ti as u32;
            let tidx = pack(t % block.0, t / block.0 % block.1, t / (block.0 * block.1));
            assert_eq!(
                o,
                [
                    tidx,
                    bidx,
                    pack(block.0, block.1, block.2),
                    pack(grid.0, grid.1, grid.2)
                ]
            );
        }
    }
}

#[test]
fn misuse_is_reported_not_hung() {
    let cases = [
        (0, "deadlock"),
        (1, "divergent warp operations"),
        (2, "partial-mask"),
    ];
    for (which, needle) in cases {
        let mut out = vec![0i32; 32];
        let launch = Launch {
            kernel: "emu_test_misuse",
            config: cfg(1, 32, 0),
            args: KernelArgs::new().ptr(host_ptr_mut(&mut out)).i32(which),
        };
        // SAFETY: out holds one int per thread.
        let err =
            unsafe { emu::launch(&launch, Schedule::Random(1)) }.expect_err("misuse must fail");
        assert!(err.to_string().contains(needle), "case {which}: {err}");
    }
}

#[test]
fn argument_lists_are_checked_against_the_kernel() {
    assert_eq!(emu::signature("emu_test_reverse").unwrap(), [8, 8, 4]);
    let launch = Launch {
        kernel: "emu_test_reverse",
        config: cfg(1, 32, 0),
        args: KernelArgs::new().ptr(0).ptr(0),
    };
    // SAFETY: rejected before running: the argument list is one short.
    let err = unsafe { emu::launch(&launch, Schedule::InOrder) }.expect_err("short argument list");
    assert!(err.to_string().contains("do not match"), "{err}");
}
