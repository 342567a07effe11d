//! The SSD scan of Mamba-2 (state space duality; Dao & Gu 2024, arXiv 2405.21060, §6), in the
//! layouts of `ssm::ops::ssd`: x, y (b, l, h, p); dt (b, l, h); A, D, dt_bias (h); B, C
//! (b, l, g, n), head `hh` uses group `hh / (h / g)`; initial and last state (b, h, p, n); the
//! states at chunk starts kept for the backward (b, chunks, h, p, n), `chunks = ceil(l / chunk)`.
//! Optional inputs and outputs are `None`.
//!
//! The structs of inputs and gradients over a handle `X` are shared by `ssm`'s op API (tensors),
//! its CPU kernels (host slices) and the launches (device addresses).

use crate::GradBuffer;

/// Sizes of one SSD scan: batch, length, heads, head dim, groups of B/C, state size, and the
/// chunk length of the chunked form (the granularity of the saved states).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SsdDims {
    pub b: usize,
    pub l: usize,
    pub h: usize,
    pub p: usize,
    pub g: usize,
    pub n: usize,
    pub chunk: usize,
}

impl SsdDims {
    pub fn chunks(&self) -> usize {
        self.l.div_ceil(self.chunk)
    }

    /// Elements of the saved chunk-start states, (b, chunks, h, p, n).
    pub fn chunk_states_len(&self) -> usize {
        self.b * self.chunks() * self.h * self.p * self.n
    }

    /// Heads per group of B and C.
    pub fn heads_per_group(&self) -> usize {
        self.h / self.g
    }
}

/// The inputs of one SSD scan, over handles `X`. `dt_limit` clamps Δ after the bias and the
/// softplus (transformers' `time_step_limit`; `[0, ∞)` is no limit).
#[derive(Clone, Copy, Debug)]
pub struct SsdInputsOf<X> {
    pub x: X,
    pub dt: X,
    pub a: X,
    pub b: X,
    pub c: X,
    pub d_skip: Option<X>,
    pub dt_bias: Option<X>,
    pub dt_softplus: bool,
    pub dt_limit: [f64; 2],
    pub h0: Option<X>,
}

/// No limit on Δ.
pub const NO_DT_LIMIT: [f64; 2] = [0.0, f64::INFINITY];

impl<X> SsdInputsOf<X> {
    /// Every input through `f`, in field order, stopping at the first error.
    pub fn try_map<Y, E>(
        self,
        mut f: impl FnMut(X) -> std::result::Result<Y, E>,
    ) -> std::result::Result<SsdInputsOf<Y>, E> {
        Ok(SsdInputsOf {
            x: f(self.x)?,
            dt: f(self.dt)?,
            a: f(self.a)?,
            b: f(self.b)?,
            c: f(self.c)?,
            d_skip: self.d_skip.map(&mut f).transpose()?,
            dt_bias: self.dt_bias.map(&mut f).transpose()?,
            dt_softplus: self.dt_softplus,
            dt_limit: self.dt_limit,
            h0: self.h0.map(&mut f).transpose()?,
        })
    }

    /// References to every input.
    pub fn each_ref(&self) -> SsdInputsOf<&X> {
        SsdInputsOf {
            x: &self.x,
            dt: &self.dt,
            a: &self.a,
            b: &self.b,
            c: &self.c,
            d_skip: self.d_skip.as_ref(),
            dt_bias: self.dt_bias.as_ref(),
            dt_softplus: self.dt_softplus,
            dt_limit: self.dt_limit,
            h0: self.h0.as_ref(),
        }
    }

    /// Every input present: x, dt, A, B, C, then the optional ones given.
    pub fn present(self) -> Vec<X> {
        let opts = [self.d_skip, self.dt_bias, self.h0];
        [self.x, self.dt, self.a, self.b, self.c]
            .into_iter()
            .chain(opts.into_iter().flatten())
            .collect()
    }
}

/// The gradients of an SSD scan's inputs, added into, over handles `X`; options follow the
/// inputs. `ddt` is the gradient of the raw dt, before bias, softplus and limits.
#[derive(Clone, Copy, Debug)]
pub struct SsdGradsOf<X> {
    pub dx: X,
    pub ddt: X,
    pub da: X,
    pub db: X,
    pub dc: X,
    pub dd_skip: Option<X>,
    pub ddt_bias: Option<X>,
    pub dh0: Option<X>,
}

impl<X> SsdGradsOf<X> {
    /// One gradient per input of `inp`, from `f`: an option present where its input is.
    pub fn try_like<Y, E>(
        inp: SsdInputsOf<Y>,
        f: impl FnMut(Y) -> std::result::Result<X, E>,
    ) -> std::result::Result<Self, E> {
        let g = inp.try_map(f)?;
        Ok(SsdGradsOf {
            dx: g.x,
            ddt: g.dt,
            da: g.a,
            db: g.b,
            dc: g.c,
            dd_skip: g.d_skip,
            ddt_bias: g.dt_bias,
            dh0: g.h0,
        })
    }

    /// Every gradient through `f`, in field order, stopping at the first error.
    pub fn try_map<Y, E>(
        self,
        mut f: impl FnMut(X) -> std::result::Result<Y, E>,
    ) -> std::result::Result<SsdGradsOf<Y>, E> {
        Ok(SsdGradsOf {
            dx: f(self.dx)?,
            ddt: f(self.ddt)?,
            da: f(self.da)?,
            db: f(self.db)?,
            dc: f(self.dc)?,
            dd_skip: self.dd_skip.map(&mut f).transpose()?,
            ddt_bias: self.ddt_bias.map(&mut f).transpose()?,
            dh0: self.dh0.map(&mut f).transpose()?,
        })
    }

    /// Mutable references to every gradient.
    pub fn each_mut(&mut self) -> SsdGradsOf<&mut X> {
        SsdGradsOf {
            dx: &mut self.dx,
            ddt: &mut self.ddt,
            da: &mut self.da,
            db: &mut self.db,
            dc: &mut self.dc,
            dd_skip: self.dd_skip.as_mut(),
            ddt_bias: self.ddt_bias.as_mut(),
            dh0: self.dh0.as_mut(),
        }
    }

    /// Every gradient present: dx, ddt, dA, dB, dC, then the optional ones given.
    pub fn present(self) -> Vec<X> {
        let opts = [self.dd_skip, self.ddt_bias, self.dh0];
        [self.dx, self.ddt, self.da, self.db, self.dc]
            .into_iter()
            .chain(opts.into_iter().flatten())
            .collect()
    }
}

impl<X: GradBuffer> SsdGradsOf<X> {
    /// Zero gradients shaped like the inputs and on their device.
    pub fn zeros_like(inp: &SsdInputsOf<&X>) -> std::result::Result<Self, X::Error> {
        Self::try_like(*inp, X::zeros_like)
    }

    /// Sets every gradient to zero, keeping the buffers.
    pub fn zero_(&mut self) -> std::result::Result<(), X::Error> {
        self.each_mut().present().into_iter().try_for_each(X::zero_)
    }
}
