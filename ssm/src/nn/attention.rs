//! Causal multi-head self-attention (Vaswani et al., 2017) with grouped-query attention (Ainslie
//! et al., 2023), rotary or learned absolute positions, and a KV cache for decoding.
//!
//! ```text
//! x (b, l, d) ─ q_proj ─ q (b, l, h, hd)   ─ RoPE ─┐
//!             ─ k_proj ─ k (b, l, hkv, hd) ─ RoPE ─┼─ attention (tiled, causal) ─ o (b, l, h, hd)
//!             ─ v_proj ─ v (b, l, hkv, hd) ────────┘
//! out = o_proj(o) (b, l, d)
//! ```
//!
//! With a [`KvCache`], the new keys and values are appended to it and the queries attend over the
//! whole cache; the queries are the last positions (`ops::attention` aligns the causal mask to the
//! bottom right), and RoPE rotates them at their absolute positions, the cache length onwards.

use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

use super::init::{full, normal};
use super::{Module, Param};
use crate::error::{Error, Result};
use crate::ops::attention::{AttentionGrads, AttentionOutput, attention_bwd, attention_fwd};
use crate::ops::copy::{add_broadcast, copy_cols, sum_leading_into};
use crate::ops::linear::{linear_bwd, linear_fwd};
use crate::ops::rope::{rope_bwd, rope_fwd_inplace};
use crate::tensor::{Device, Float, Shape, Tensor};

/// How a model tells attention where each token is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PosEncoding {
    /// Rotary embeddings of q and k in every attention layer (RoFormer; Llama's convention).
    #[default]
    Rope,
    /// A learned table of absolute positions added to the token embedding (GPT-2); the model
    /// cannot see positions at or beyond its `max_seq_len`.
    Learned,
    /// No position information: causal masking alone (NoPE; Haviv et al., 2022).
    None,
}

/// Sizes of one attention layer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttentionDims {
    pub d_model: usize,
    /// Query heads h.
    pub n_heads: usize,
    /// Key/value heads hkv, dividing h (grouped-query attention; h for plain multi-head).
    pub n_kv_heads: usize,
    /// Width hd of one head.
    pub head_dim: usize,
    /// Biases on the four projections.
    pub bias: bool,
    /// The RoPE base, or `None` for no rotation.
    pub rope_base: Option<f64>,
}

/// Keys and values of the tokens seen so far by one layer, for decoding: k, v (b, len, hkv, hd),
/// after RoPE. Appending rebuilds both tensors, which costs as much as the attention step reads
/// from them anyway.
#[derive(Clone, Debug)]
pub struct KvCache<T: Float = f32> {
    pub k: Tensor<T>,
    pub v: Tensor<T>,
    spare: Tensor<T>,
}

impl<T: Float> KvCache<T> {
    /// An empty cache for `b` sequences on `device`.
    pub fn new(b: usize, n_kv_heads: usize, head_dim: usize, device: Device) -> Result<Self> {
        let empty = || Tensor::zeros([b, 0, n_kv_heads, head_dim], device);
        Ok(KvCache {
            k: empty()?,
            v: empty()?,
            spare: Tensor::default(),
        })
    }

    /// Tokens cached per sequence: the position of the next token.
    pub fn len(&self) -> usize {
        self.k.dims()[1]
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends k_new, v_new (b, l, hkv, hd) after the cached tokens of each sequence.
    fn append(&mut self, k_new: &Tensor<T>, v_new: &Tensor<T>) -> Result<()> {
        let [b, len, hkv, hd] = *self.k.dims() else {
            return Err(Error::shape(
                "KvCache::append",
                "cached keys",
                "[b, len, hkv, hd]",
                self.k.dims(),
            ));
        };
        let l = match *k_new.dims() {
            [bn, l, hn, dn] if bn == b && hn == hkv && dn == hd => l,
            _ => {
                return Err(Error::shape(
                    "KvCache::append",
                    "new keys",
                    format!("[{b}, l, {hkv}, {hd}]"),
                    k_new.dims(),
                ));
            }
        };
        self.v
            .expect_dims("KvCache::append", "cached values", self.k.dims())?;
        v_new.expect_dims("KvCache::append", "new values", k_new.dims())?;
        let row = hkv * hd;
        for (cache, new) in [(&mut self.k, k_new), (&mut self.v, v_new)] {
            self.spare
                .reset_output([b, len + l, hkv, hd], new.device())?;
            if len > 0 {
                copy_cols(cache, &mut self.spare, b, [0, 0], len * row, false)?;
            }
            copy_cols(new, &mut self.spare, b, [0, len * row], l * row, false)?;
            std::mem::swap(cache, &mut self.spare);
        }
        Ok(())
    }
}

/// Activations a forward keeps for the backward; reused from step to step.
#[derive(Clone, Debug, Default)]
struct Cache<T: Float> {
    /// (b, l, h, hd) and (b, l, hkv, hd), after RoPE.
    q: Tensor<T>,
    k: Tensor<T>,
    v: Tensor<T>,
    /// o (b, l, h·hd) between calls, lse (b, h, l).
    attn: AttentionOutput<T>,
    /// The last forward was a training forward without a KV cache.
    trainable: bool,
}

/// Gradient scratch buffers; reused from step to step.
#[derive(Clone, Debug, Default)]
struct Scratch<T: Float> {
    d_o: Tensor<T>,
    grads: Option<AttentionGrads<T>>,
    dq: Tensor<T>,
    dk: Tensor<T>,
}

/// Gives `t` other dims with the same number of elements, without copying.
fn set_dims<T: Float>(t: &mut Tensor<T>, dims: impl Into<Shape>) -> Result<()> {
    *t = std::mem::take(t).reshape(dims)?;
    Ok(())
}

#[derive(Clone, Debug)]
pub struct CausalSelfAttention<T: Float = f32> {
    pub dims: AttentionDims,
    /// (h·hd, d), (hkv·hd, d), (hkv·hd, d) and (d, h·hd), PyTorch's layout.
    pub q_proj: Param<T>,
    pub k_proj: Param<T>,
    pub v_proj: Param<T>,
    pub o_proj: Param<T>,
    pub q_bias: Option<Param<T>>,
    pub k_bias: Option<Param<T>>,
    pub v_bias: Option<Param<T>>,
    pub o_bias: Option<Param<T>>,
    cache: Cache<T>,
    scratch: Scratch<T>,
}

impl<T: Float> CausalSelfAttention<T> {
    /// Projections drawn from N(0, std²), o_proj from N(0, out_std²) (GPT-2 scales the residual
    /// outputs down with depth), biases zero.
    pub fn new(dims: AttentionDims, std: f64, out_std: f64, rng: &mut StdRng) -> Self {
        let AttentionDims {
            d_model: d,
            n_heads: h,
            n_kv_heads: hkv,
            head_dim: hd,
            ..
        } = dims;
        let bias = |len: usize| dims.bias.then(|| Param::new(full(&[len], 0.0), false));
        CausalSelfAttention {
            dims,
            q_proj: Param::new(normal(rng, &[h * hd, d], std), true),
            k_proj: Param::new(normal(rng, &[hkv * hd, d], std), true),
            v_proj: Param::new(normal(rng, &[hkv * hd, d], std), true),
            o_proj: Param::new(normal(rng, &[d, h * hd], out_std), true),
            q_bias: bias(h * hd),
            k_bias: bias(hkv * hd),
            v_bias: bias(hkv * hd),
            o_bias: bias(d),
            cache: Cache::default(),
            scratch: Scratch::default(),
        }
    }

    /// An empty KV cache for `b` sequences, on the device of the parameters.
    pub fn new_cache(&self, b: usize) -> Result<KvCache<T>> {
        let device = self.q_proj.value.device();
        KvCache::new(b, self.dims.n_kv_heads, self.dims.head_dim, device)
    }

    /// out (b, l, d) = attention(x (b, l, d)). With `kv`, the tokens continue the cached
    /// sequences (prefill and decoding) and are appended to the cache; `train` keeps what the
    /// backward needs, which only a forward without a cache supports.
    pub fn forward(
        &mut self,
        x: &Tensor<T>,
        out: &mut Tensor<T>,
        kv: Option<&mut KvCache<T>>,
        train: bool,
    ) -> Result<()> {
        let AttentionDims {
            n_heads: h,
            n_kv_heads: hkv,
            head_dim: hd,
            ..
        } = self.dims;
        let [b, l, _] = *x.dims() else {
            return Err(Error::shape(
                "CausalSelfAttention::forward",
                "x",
                "[b, l, d]",
                x.dims(),
            ));
        };
        let c = &mut self.cache;
        linear_fwd(
            x,
            &self.q_proj.value,
            self.q_bias.as_ref().map(|p| &p.value),
            &mut c.q,
        )?;
        linear_fwd(
            x,
            &self.k_proj.value,
            self.k_bias.as_ref().map(|p| &p.value),
            &mut c.k,
        )?;
        linear_fwd(
            x,
            &self.v_proj.value,
            self.v_bias.as_ref().map(|p| &p.value),
            &mut c.v,
        )?;
        set_dims(&mut c.q, [b, l, h, hd])?;
        set_dims(&mut c.k, [b, l, hkv, hd])?;
        set_dims(&mut c.v, [b, l, hkv, hd])?;
        let offset = kv.as_ref().map_or(0, |kv| kv.len());
        if let Some(base) = self.dims.rope_base {
            rope_fwd_inplace(&mut c.q, offset, base)?;
            rope_fwd_inplace(&mut c.k, offset, base)?;
        }
        c.trainable = train && kv.is_none();
        match kv {
            None => attention_fwd(&c.q, &c.k, &c.v, None, &mut c.attn)?,
            Some(kv) => {
                kv.append(&c.k, &c.v)?;
                attention_fwd(&c.q, &kv.k, &kv.v, None, &mut c.attn)?;
            }
        }
        set_dims(&mut c.attn.o, [b, l, h * hd])?;
        linear_fwd(
            &c.attn.o,
            &self.o_proj.value,
            self.o_bias.as_ref().map(|p| &p.value),
            out,
        )
    }

    /// dx += ∂L/∂x given dout, for the `x` of the last training forward (without a KV cache).
    pub fn backward(&mut self, x: &Tensor<T>, dout: &Tensor<T>, dx: &mut Tensor<T>) -> Result<()> {
        let AttentionDims {
            n_heads: h,
            n_kv_heads: hkv,
            head_dim: hd,
            ..
        } = self.dims;
        let mut c = std::mem::take(&mut self.cache);
        let mut s = std::mem::take(&mut self.scratch);
        let result = self.backward_with(x, dout, dx, &mut c, &mut s, [h, hkv, hd]);
        self.cache = c;
        self.scratch = s;
        result
    }

    fn backward_with(
        &mut self,
        x: &Tensor<T>,
        dout: &Tensor<T>,
        dx: &mut Tensor<T>,
        c: &mut Cache<T>,
        s: &mut Scratch<T>,
        [h, hkv, hd]: [usize; 3],
    ) -> Result<()> {
        if !c.trainable {
            return Err(Error::config(
                "train",
                "CausalSelfAttention::backward needs a training forward without a KV cache",
            ));
        }
        let [b, l] = [c.q.dims()[0], c.q.dims()[1]];
        s.d_o.reset([b, l, h * hd], dout.device())?;
        linear_bwd(
            &c.attn.o,
            &self.o_proj.value,
            dout,
            Some(&mut s.d_o),
            &mut self.o_proj.grad,
            self.o_bias.as_mut().map(|p| &mut p.grad),
        )?;
        set_dims(&mut s.d_o, [b, l, h, hd])?;
        set_dims(&mut c.attn.o, [b, l, h, hd])?;
        let mut g = s.grads.take().unwrap_or_else(|| AttentionGrads {
            dq: Tensor::default(),
            dk: Tensor::default(),
            dv: Tensor::default(),
        });
        g.dq.reset_like(&c.q)?;
        g.dk.reset_like(&c.k)?;
        g.dv.reset_like(&c.v)?;
        let attn = attention_bwd(&c.q, &c.k, &c.v, &c.attn, &s.d_o, &mut g);
        set_dims(&mut c.attn.o, [b, l, h * hd])?;
        attn?;
        // RoPE is orthogonal: its backward rotates the gradient back, into fresh buffers.
        let (dq, dk) = match self.dims.rope_base {
            Some(base) => {
                s.dq.reset_like(&g.dq)?;
                s.dk.reset_like(&g.dk)?;
                rope_bwd(&g.dq, 0, base, &mut s.dq)?;
                rope_bwd(&g.dk, 0, base, &mut s.dk)?;
                (&mut s.dq, &mut s.dk)
            }
            None => (&mut g.dq, &mut g.dk),
        };
        set_dims(dq, [b, l, h * hd])?;
        set_dims(dk, [b, l, hkv * hd])?;
        set_dims(&mut g.dv, [b, l, hkv * hd])?;
        linear_bwd(
            x,
            &self.q_proj.value,
            dq,
            Some(&mut *dx),
            &mut self.q_proj.grad,
            self.q_bias.as_mut().map(|p| &mut p.grad),
        )?;
        linear_bwd(
            x,
            &self.k_proj.value,
            dk,
            Some(&mut *dx),
            &mut self.k_proj.grad,
            self.k_bias.as_mut().map(|p| &mut p.grad),
        )?;
        linear_bwd(
            x,
            &self.v_proj.value,
            &g.dv,
            Some(dx),
            &mut self.v_proj.grad,
            self.v_bias.as_mut().map(|p| &mut p.grad),
        )?;
        s.grads = Some(g);
        Ok(())
    }

    /// The same layer in another float type, with fresh caches.
    pub fn cast<U: Float>(&self) -> CausalSelfAttention<U> {
        let o = |p: &Option<Param<T>>| p.as_ref().map(Param::cast);
        CausalSelfAttention {
            dims: self.dims,
            q_proj: self.q_proj.cast(),
            k_proj: self.k_proj.cast(),
            v_proj: self.v_proj.cast(),
            o_proj: self.o_proj.cast(),
            q_bias: o(&self.q_bias),
            k_bias: o(&self.k_bias),
            v_bias: o(&self.v_bias),
            o_bias: o(&self.o_bias),
            cache: Cache::default(),
            scratch: Scratch::default(),
        }
    }
}

impl<T: Float> Module<T> for CausalSelfAttention<T> {
    fn visit_params(&mut self, f: &mut dyn FnMut(&str, &mut Param<T>)) {
        let projections = [
            ("q_proj", &mut self.q_proj, &mut self.q_bias),
            ("k_proj", &mut self.k_proj, &mut self.k_bias),
            ("v_proj", &mut self.v_proj, &mut self.v_bias),
            ("o_proj", &mut self.o_proj, &mut self.o_bias),
        ];
        for (name, w, bias) in projections {
            f(&format!("{name}.weight"), w);
            if let Some(p) = bias {
                f(&format!("{name}.bias"), p);
            }
        }
    }
}

/// A learned table of absolute positions (GPT-2's `wpe`), added to the token embedding.
#[derive(Clone, Debug)]
pub struct LearnedPositions<T: Float = f32> {
    /// (max_seq_len, d).
    pub table: Param<T>,
}

impl<T: Float> LearnedPositions<T> {
    /// A table drawn from N(0, std²).
    pub fn new(max_seq_len: usize, d: usize, std: f64, rng: &mut StdRng) -> Self {
        LearnedPositions {
            table: Param::new(normal(rng, &[max_seq_len, d], std), true),
        }
    }

    /// Rows of the table: the number of positions the model can see.
    pub fn max_len(&self) -> usize {
        self.table.value.dims()[0]
    }

    /// Checks that positions offset..offset + l exist; the error names `max_seq_len`.
    fn check(&self, offset: usize, l: usize) -> Result<()> {
        if offset + l > self.max_len() {
            let reason = format!(
                "positions up to {} needed, the learned table has {}",
                offset + l,
                self.max_len()
            );
            return Err(Error::config("max_seq_len", reason));
        }
        Ok(())
    }

    /// x (b, l, d) += table[offset..offset + l] for every sequence.
    pub fn forward(&self, x: &mut Tensor<T>, offset: usize) -> Result<()> {
        let [_, l, d] = *x.dims() else {
            return Err(Error::shape(
                "LearnedPositions::forward",
                "x",
                "[b, l, d]",
                x.dims(),
            ));
        };
        self.check(offset, l)?;
        add_broadcast(&self.table.value, offset * d, x)
    }

    /// table.grad[offset..offset + l] += Σ over sequences of dx (b, l, d).
    pub fn backward(&mut self, dx: &Tensor<T>, offset: usize) -> Result<()> {
        let [_, l, d] = *dx.dims() else {
            return Err(Error::shape(
                "LearnedPositions::backward",
                "dx",
                "[b, l, d]",
                dx.dims(),
            ));
        };
        self.check(offset, l)?;
        sum_leading_into(dx, &mut self.table.grad, offset * d)
    }

    pub fn cast<U: Float>(&self) -> LearnedPositions<U> {
        LearnedPositions {
            table: self.table.cast(),
        }
    }
}

impl<T: Float> Module<T> for LearnedPositions<T> {
    fn visit_params(&mut self, f: &mut dyn FnMut(&str, &mut Param<T>)) {
        f("weight", &mut self.table);
    }
}
