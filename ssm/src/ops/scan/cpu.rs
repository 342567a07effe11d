//! The selective scan (Mamba's S6 recurrence) on the CPU, token-major.
//!
//! Work is cut into tasks of one sequence and a range of channel tiles. A tile holds `TILE`
//! consecutive channels of one group, so every inner loop runs over a fixed-size array of
//! channels and vectorizes, and the state of a tile, (n, TILE), stays in L1. The forward saves the
//! state at the start of every `CHUNK` steps; the backward walks chunks from last to first,
//! recomputes the chunk's states from its saved start (keeping them in a small buffer that stays
//! in L2) and runs the reverse recurrence for ∂L/∂h. Saved memory is (b, l / CHUNK, n, d).

use rayon::prelude::*;
use ssm_kernels::scan::{ScanDims, ScanGradsOf, ScanInputsOf};

use crate::backend::cpu::{SharedMut, multiversion, reduce_parts_into, split, threads};
use crate::float::Float;

/// Channels processed together by one inner loop.
pub const TILE: usize = 32;
/// Steps between saved states.
pub const CHUNK: usize = 64;

/// Saved states per sequence on the CPU, one per [`CHUNK`] steps: (b, chunks, n, d). Not
/// `ScanDims::chunks`, which counts the kernels' chunks.
pub fn chunks(dims: ScanDims) -> usize {
    dims.l.div_ceil(CHUNK)
}

/// Inputs as host slices; layouts as in `ops::scan`.
pub type ScanArgs<'a, T> = ScanInputsOf<&'a [T]>;

/// Gradient outputs as host slices, all accumulated into.
pub type ScanGradsMut<'a, T> = ScanGradsOf<&'a mut [T]>;

/// (group, first channel, width) of a tile of channels.
type TileSpan = (usize, usize, usize);
/// A task: one sequence and a range of indices into the tile list.
type Task = (usize, std::ops::Range<usize>);

/// Every tile, and the tasks that share them out.
fn tasks(dims: ScanDims) -> (Vec<TileSpan>, Vec<Task>) {
    // (group, first channel, width) for every tile; tiles never straddle groups.
    let dg = dims.d / dims.g;
    let mut tiles = Vec::new();
    for gi in 0..dims.g {
        let mut d0 = gi * dg;
        while d0 < (gi + 1) * dg {
            let w = TILE.min((gi + 1) * dg - d0);
            tiles.push((gi, d0, w));
            d0 += w;
        }
    }
    let per_seq = (2 * threads()).div_ceil(dims.b).clamp(1, tiles.len());
    let mut work = Vec::new();
    for bi in 0..dims.b {
        for r in split(tiles.len(), per_seq) {
            work.push((bi, r));
        }
    }
    (tiles, work)
}

/// Per-tile constants in lane layout, zero past the tile's width: A (n, TILE), delta_bias, D.
struct TileConsts<T> {
    a: Vec<T>,
    bias: [T; TILE],
    d_skip: [T; TILE],
}

fn tile_consts<T: Float>(args: &ScanArgs<T>, n: usize, d0: usize, w: usize) -> TileConsts<T> {
    let mut a = vec![T::zero(); n * TILE];
    for s in 0..n {
        for i in 0..w {
            a[s * TILE + i] = args.a[(d0 + i) * n + s];
        }
    }
    let opt = |v: Option<&[T]>| v.map_or([T::zero(); TILE], |v| load(v, d0, w));
    TileConsts {
        a,
        bias: opt(args.delta_bias),
        d_skip: opt(args.d_skip),
    }
}

/// `w` values from `src[start..]` in lanes, zero past them.
#[inline(always)]
fn load<T: Float>(src: &[T], start: usize, w: usize) -> [T; TILE] {
    // A copy of constant length compiles to a few vector moves; one of variable length would be a
    // call to memcpy, which costs more than the loads themselves at this size.
    if w == TILE {
        return src[start..start + TILE].try_into().unwrap();
    }
    let mut v = [T::zero(); TILE];
    v[..w].copy_from_slice(&src[start..start + w]);
    v
}

/// The pre-activation delta + bias and dt (through softplus when asked) of one step.
#[inline(always)]
fn dt_lanes<T: Float>(
    args: &ScanArgs<T>,
    tc: &TileConsts<T>,
    row: usize,
    w: usize,
) -> ([T; TILE], [T; TILE]) {
    let mut raw = load(args.delta, row, w);
    for (r, &b) in raw.iter_mut().zip(&tc.bias) {
        *r += b;
    }
    let mut dt = raw;
    if args.delta_softplus {
        for v in dt.iter_mut() {
            *v = v.fast_softplus();
        }
    }
    (raw, dt)
}

#[inline(always)]
fn sigmoid<T: Float>(x: T) -> T {
    T::one() / (T::one() + (-x).fast_exp_fused())
}

/// dst[i] += lanes[i] for the first dst.len() lanes.
#[inline(always)]
fn add_lanes<T: Float>(dst: &mut [T], lanes: &[T; TILE]) {
    for (o, &v) in dst.iter_mut().zip(lanes) {
        *o += v;
    }
}

#[inline(always)]
fn hsum<T: Float>(v: &[T; TILE]) -> T {
    let mut acc = [T::zero(); 8];
    for j in 0..TILE / 8 {
        for i in 0..8 {
            acc[i] += v[j * 8 + i];
        }
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]))
}

/// Forward: y (b, l, d); optionally the last state (b, d, n) and the chunk states (b, chunks, n, d).
pub fn scan_fwd<T: Float>(
    args: &ScanArgs<T>,
    dims: ScanDims,
    y: &mut [T],
    last: Option<&mut [T]>,
    saved: Option<&mut [T]>,
) {
    let (tiles, work) = tasks(dims);
    let y = SharedMut::new(y);
    let last = last.map(SharedMut::new);
    let saved = saved.map(SharedMut::new);
    work.par_iter().for_each(|(bi, range)| {
        let mut h = vec![T::zero(); dims.n * TILE];
        for &(gi, d0, w) in &tiles[range.clone()] {
            // SAFETY: this task alone owns sequence bi, channels d0..d0+w of y, last and saved.
            unsafe { fwd_tile_dispatch(args, dims, *bi, gi, d0, w, &mut h, y, last, saved) };
        }
    });
}

multiversion!(fwd_tile_dispatch => fwd_tile(args: &ScanArgs<T>, dims: ScanDims, bi: usize, gi: usize, d0: usize, w: usize, h: &mut [T], y: SharedMut<T>, last: Option<SharedMut<T>>, saved: Option<SharedMut<T>>));

#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn fwd_tile<T: Float>(
    args: &ScanArgs<T>,
    dims: ScanDims,
    bi: usize,
    gi: usize,
    d0: usize,
    w: usize,
    h: &mut [T],
    y: SharedMut<T>,
    last: Option<SharedMut<T>>,
    saved: Option<SharedMut<T>>,
) {
    let ScanDims { l, d, n, g, .. } = dims;
    let tc = tile_consts(args, n, d0, w);
    h.fill(T::zero());
    if let Some(h0) = args.h0 {
        for s in 0..n {
            for i in 0..w {
                h[s * TILE + i] = h0[(bi * d + d0 + i) * n + s];
            }
        }
    }
    let (mut dtu, mut acc) = ([T::zero(); TILE], [T::zero(); TILE]);
    for t in 0..l {
        if let Some(sv) = saved
            && t % CHUNK == 0
        {
            let base = (bi * chunks(dims) + t / CHUNK) * n * d;
            for s in 0..n {
                // SAFETY: sequence bi, channels d0..d0+w belong to this task.
                unsafe { sv.slice(base + s * d + d0, w) }
                    .copy_from_slice(&h[s * TILE..s * TILE + w]);
            }
        }
        let row = (bi * l + t) * d + d0;
        let (_, dt) = dt_lanes(args, &tc, row, w);
        let u = load(args.u, row, w);
        for i in 0..TILE {
            dtu[i] = dt[i] * u[i];
            acc[i] = tc.d_skip[i] * u[i];
        }
        let bc = ((bi * l + t) * g + gi) * n;
        for s in 0..n {
            let (bn, cn) = (args.b[bc + s], args.c[bc + s]);
            let hs: &mut [T; TILE] = (&mut h[s * TILE..(s + 1) * TILE]).try_into().unwrap();
            let an: &[T; TILE] = tc.a[s * TILE..(s + 1) * TILE].try_into().unwrap();
            for i in 0..TILE {
                let decay = (dt[i] * an[i]).fast_exp_fused();
                hs[i] = decay * hs[i] + dtu[i] * bn;
                acc[i] += cn * hs[i];
            }
        }
        if let Some(z) = args.z {
            let z = load(z, row, w);
            for i in 0..TILE {
                acc[i] *= z[i] * sigmoid(z[i]);
            }
        }
        // SAFETY: as above.
        unsafe { y.slice(row, w) }.copy_from_slice(&acc[..w]);
    }
    if let Some(ls) = last {
        for i in 0..w {
            // SAFETY: as above.
            let row = unsafe { ls.slice((bi * d + d0 + i) * n, n) };
            for (s, v) in row.iter_mut().enumerate() {
                *v = h[s * TILE + i];
            }
        }
    }
}

/// Per-sequence partial sums of the parameter gradients, reduced in order after the tasks.
struct Partials<T> {
    /// (b, n_split, l, g, n) for dB and dC.
    db: Vec<T>,
    dc: Vec<T>,
    /// (b, d, n) for dA; (b, d) for dD and d_delta_bias.
    da: Vec<T>,
    dd: Vec<T>,
    dbias: Vec<T>,
}

/// Backward: accumulates every gradient from dy (b, l, d) and, if given, the gradient of the last
/// state dlast (b, d, n); `saved` is what the forward saved.
pub fn scan_bwd<T: Float>(
    args: &ScanArgs<T>,
    dims: ScanDims,
    saved: &[T],
    dy: &[T],
    dlast: Option<&[T]>,
    grads: ScanGradsMut<T>,
) {
    let ScanDims { b, l, d, n, g } = dims;
    let (tiles, work) = tasks(dims);
    let splits = work.len() / b;
    let bc_len = l * g * n;
    let mut p = Partials {
        db: vec![T::zero(); work.len() * bc_len],
        dc: vec![T::zero(); work.len() * bc_len],
        da: vec![T::zero(); b * d * n],
        dd: vec![T::zero(); b * d],
        dbias: vec![T::zero(); b * d],
    };
    let out = BwdOut {
        du: SharedMut::new(grads.du),
        ddelta: SharedMut::new(grads.ddelta),
        dz: grads.dz.map(SharedMut::new),
        dh0: grads.dh0.map(SharedMut::new),
        da: SharedMut::new(&mut p.da),
        dd: SharedMut::new(&mut p.dd),
        dbias: SharedMut::new(&mut p.dbias),
    };
    p.db.par_chunks_exact_mut(bc_len)
        .zip(p.dc.par_chunks_exact_mut(bc_len))
        .zip(work.par_iter())
        .for_each(|((pdb, pdc), (bi, range))| {
            let mut buf = BwdBuf::new(n);
            for &(gi, d0, w) in &tiles[range.clone()] {
                let tile = Tile { bi: *bi, gi, d0, w };
                // SAFETY: this task alone owns sequence bi, channels d0..d0+w of the per-channel
                // outputs, and its own dB/dC partial rows.
                unsafe {
                    bwd_tile_dispatch(args, dims, tile, saved, dy, dlast, &mut buf, pdb, pdc, out)
                };
            }
        });
    // dB, dC: sum the splits of each sequence.
    for bi in 0..b {
        let rows = bi * splits * bc_len..(bi + 1) * splits * bc_len;
        reduce_parts_into(
            &p.db[rows.clone()],
            bc_len,
            &mut grads.db[bi * bc_len..(bi + 1) * bc_len],
        );
        reduce_parts_into(
            &p.dc[rows],
            bc_len,
            &mut grads.dc[bi * bc_len..(bi + 1) * bc_len],
        );
    }
    reduce_parts_into(&p.da, d * n, grads.da);
    if let Some(dd) = grads.dd_skip {
        reduce_parts_into(&p.dd, d, dd);
    }
    if let Some(dbias) = grads.ddelta_bias {
        reduce_parts_into(&p.dbias, d, dbias);
    }
}

#[derive(Clone, Copy)]
struct BwdOut<T> {
    du: SharedMut<T>,
    ddelta: SharedMut<T>,
    dz: Option<SharedMut<T>>,
    dh0: Option<SharedMut<T>>,
    da: SharedMut<T>,
    dd: SharedMut<T>,
    dbias: SharedMut<T>,
}

#[derive(Clone, Copy)]
struct Tile {
    bi: usize,
    gi: usize,
    d0: usize,
    w: usize,
}

/// Scratch of one task: the chunk's states and decays (CHUNK, n, TILE), dt per step, the chunk's
/// start state, the running state and ∂L/∂h (n, TILE).
struct BwdBuf<T> {
    hs: Vec<T>,
    decays: Vec<T>,
    dts: Vec<[T; TILE]>,
    raws: Vec<[T; TILE]>,
    start: Vec<T>,
    h: Vec<T>,
    dh: Vec<T>,
    da: Vec<T>,
}

impl<T: Float> BwdBuf<T> {
    fn new(n: usize) -> Self {
        BwdBuf {
            hs: vec![T::zero(); CHUNK * n * TILE],
            decays: vec![T::zero(); CHUNK * n * TILE],
            dts: vec![[T::zero(); TILE]; CHUNK],
            raws: vec![[T::zero(); TILE]; CHUNK],
            start: vec![T::zero(); n * TILE],
            h: vec![T::zero(); n * TILE],
            dh: vec![T::zero(); n * TILE],
            da: vec![T::zero(); n * TILE],
        }
    }
}

multiversion!(bwd_tile_dispatch => bwd_tile(args: &ScanArgs<T>, dims: ScanDims, tile: Tile, saved: &[T], dy: &[T], dlast: Option<&[T]>, buf: &mut BwdBuf<T>, pdb: &mut [T], pdc: &mut [T], out: BwdOut<T>));

#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn bwd_tile<T: Float>(
    args: &ScanArgs<T>,
    dims: ScanDims,
    tile: Tile,
    saved: &[T],
    dy: &[T],
    dlast: Option<&[T]>,
    buf: &mut BwdBuf<T>,
    pdb: &mut [T],
    pdc: &mut [T],
    out: BwdOut<T>,
) {
    let ScanDims { l, d, n, g, .. } = dims;
    let Tile { bi, gi, d0, w } = tile;
    let tc = tile_consts(args, n, d0, w);
    let nt = n * TILE;
    buf.dh.fill(T::zero());
    buf.da.fill(T::zero());
    if let Some(dl) = dlast {
        for s in 0..n {
            for i in 0..w {
                buf.dh[s * TILE + i] = dl[(bi * d + d0 + i) * n + s];
            }
        }
    }
    let (mut dd_acc, mut dbias_acc) = ([T::zero(); TILE], [T::zero(); TILE]);
    let (mut du, mut ddt, mut lane_c, mut lane_b) = (
        [T::zero(); TILE],
        [T::zero(); TILE],
        [T::zero(); TILE],
        [T::zero(); TILE],
    );
    for c in (0..chunks(dims)).rev() {
        let t0 = c * CHUNK;
        let len = CHUNK.min(l - t0);
        // Recompute the chunk's states from its saved start.
        let base = (bi * chunks(dims) + c) * n * d;
        buf.start.fill(T::zero());
        for s in 0..n {
            for i in 0..w {
                buf.start[s * TILE + i] = saved[base + s * d + d0 + i];
            }
        }
        buf.h.copy_from_slice(&buf.start);
        for k in 0..len {
            let row = (bi * l + t0 + k) * d + d0;
            let (raw, dt) = dt_lanes(args, &tc, row, w);
            (buf.raws[k], buf.dts[k]) = (raw, dt);
            let u = load(args.u, row, w);
            let mut dtu = [T::zero(); TILE];
            for i in 0..TILE {
                dtu[i] = dt[i] * u[i];
            }
            let bc = ((bi * l + t0 + k) * g + gi) * n;
            for s in 0..n {
                let bn = args.b[bc + s];
                let hcur: &mut [T; TILE] =
                    (&mut buf.h[s * TILE..(s + 1) * TILE]).try_into().unwrap();
                let an: &[T; TILE] = tc.a[s * TILE..(s + 1) * TILE].try_into().unwrap();
                let off = k * nt + s * TILE;
                let dec: &mut [T; TILE] = (&mut buf.decays[off..off + TILE]).try_into().unwrap();
                let hk: &mut [T; TILE] = (&mut buf.hs[off..off + TILE]).try_into().unwrap();
                for i in 0..TILE {
                    dec[i] = (dt[i] * an[i]).fast_exp_fused();
                    hcur[i] = dec[i] * hcur[i] + dtu[i] * bn;
                    hk[i] = hcur[i];
                }
            }
        }
        // Reverse through the chunk.
        for k in (0..len).rev() {
            let t = t0 + k;
            let row = (bi * l + t) * d + d0;
            let bc = ((bi * l + t) * g + gi) * n;
            let dt = buf.dts[k];
            let u = load(args.u, row, w);
            let mut dyp = load(dy, row, w);
            if let Some(z) = args.z {
                // The output before gating, y = C·h + D u, recomputed from the chunk's states.
                let mut ypre = [T::zero(); TILE];
                for i in 0..TILE {
                    ypre[i] = tc.d_skip[i] * u[i];
                }
                for s in 0..n {
                    let cn = args.c[bc + s];
                    let hk = &buf.hs[k * nt + s * TILE..k * nt + (s + 1) * TILE];
                    for i in 0..TILE {
                        ypre[i] += cn * hk[i];
                    }
                }
                let z = load(z, row, w);
                let mut dz = [T::zero(); TILE];
                for i in 0..TILE {
                    // silu'(z) = s (1 + z (1 - s)) with s = sigmoid(z).
                    let sg = sigmoid(z[i]);
                    dz[i] = dyp[i] * ypre[i] * sg * (T::one() + z[i] * (T::one() - sg));
                    dyp[i] *= z[i] * sg;
                }
                if let Some(out_dz) = out.dz {
                    // SAFETY: sequence bi, channels d0..d0+w belong to this task.
                    add_lanes(unsafe { out_dz.slice(row, w) }, &dz);
                }
            }
            // Σ_s ∂L/∂h_t[s] · B_t[s] per channel: both ∂L/∂u (times dt) and ∂L/∂dt (times u) need it.
            let mut gb = [T::zero(); TILE];
            let mut dtu = [T::zero(); TILE];
            for i in 0..TILE {
                dd_acc[i] += dyp[i] * u[i];
                dtu[i] = dt[i] * u[i];
                ddt[i] = T::zero();
            }
            for s in 0..n {
                let (bn, cn) = (args.b[bc + s], args.c[bc + s]);
                let off = k * nt + s * TILE;
                let prev: &[T; TILE] = if k > 0 {
                    buf.hs[off - nt..off - nt + TILE].try_into().unwrap()
                } else {
                    buf.start[s * TILE..(s + 1) * TILE].try_into().unwrap()
                };
                let hk: &[T; TILE] = buf.hs[off..off + TILE].try_into().unwrap();
                let dec: &[T; TILE] = buf.decays[off..off + TILE].try_into().unwrap();
                let an: &[T; TILE] = tc.a[s * TILE..(s + 1) * TILE].try_into().unwrap();
                let gh: &mut [T; TILE] =
                    (&mut buf.dh[s * TILE..(s + 1) * TILE]).try_into().unwrap();
                let ga: &mut [T; TILE] =
                    (&mut buf.da[s * TILE..(s + 1) * TILE]).try_into().unwrap();
                for i in 0..TILE {
                    // ∂L/∂h_t: from the output at t and from h_{t+1} (already scaled by its decay).
                    let gv = gh[i] + cn * dyp[i];
                    lane_c[i] = dyp[i] * hk[i];
                    // h_t = decay · h_{t-1} + dt · B · u with decay = exp(dt · A).
                    let g_prev = gv * dec[i] * prev[i];
                    ddt[i] += g_prev * an[i];
                    ga[i] += g_prev * dt[i];
                    gb[i] += gv * bn;
                    lane_b[i] = gv * dtu[i];
                    gh[i] = gv * dec[i];
                }
                pdc[bc - (bi * l * g * n) + s] += hsum(&lane_c);
                pdb[bc - (bi * l * g * n) + s] += hsum(&lane_b);
            }
            for i in 0..TILE {
                ddt[i] += gb[i] * u[i];
                du[i] = dyp[i] * tc.d_skip[i] + gb[i] * dt[i];
            }
            let raw = &buf.raws[k];
            let mut dx = ddt;
            if args.delta_softplus {
                // softplus'(x) = sigmoid(x), and 1 above the threshold of 20.
                for i in 0..TILE {
                    let slope = if raw[i] > T::from_f64(20.0) {
                        T::one()
                    } else {
                        sigmoid(raw[i])
                    };
                    dx[i] *= slope;
                }
            }
            for i in 0..TILE {
                dbias_acc[i] += dx[i];
            }
            // SAFETY: as above.
            unsafe {
                add_lanes(out.ddelta.slice(row, w), &dx);
                add_lanes(out.du.slice(row, w), &du);
            }
        }
    }
    // SAFETY: per-sequence partials and dh0 rows of this task's channels.
    unsafe {
        add_lanes(out.dd.slice(bi * d + d0, w), &dd_acc);
        add_lanes(out.dbias.slice(bi * d + d0, w), &dbias_acc);
        for i in 0..w {
            let at = (bi * d + d0 + i) * n;
            for (s, v) in out.da.slice(at, n).iter_mut().enumerate() {
                *v += buf.da[s * TILE + i];
            }
            if let Some(dh0) = out.dh0 {
                for (s, v) in dh0.slice(at, n).iter_mut().enumerate() {
                    *v += buf.dh[s * TILE + i];
                }
            }
        }
    }
}
