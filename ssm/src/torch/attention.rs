//! Causal attention by torch's `scaled_dot_product_attention` (FlashAttention or the
//! memory-efficient kernel on a GPU, its flash-style CPU kernel otherwise), in the layouts of
//! `ops::attention`: q (b, lq, h, hd), k, v (b, lk, hkv, hd), queries at the last lq positions.

use tch::{Kind, Tensor};

/// o (b, lq, h, hd) = causal softmax(scale · q kᵀ) v; `scale` defaults to 1/sqrt(hd). Grouped
/// query heads read kv head `hq / (h / hkv)`, as ours.
pub fn sdpa(q: &Tensor, k: &Tensor, v: &Tensor, scale: Option<f64>) -> Tensor {
    let (lq, h, lk, hkv) = (q.size()[1], q.size()[2], k.size()[1], k.size()[2]);
    let heads_first = |t: &Tensor| t.transpose(1, 2);
    let o = if lq == lk {
        Tensor::scaled_dot_product_attention(
            &heads_first(q),
            &heads_first(k),
            &heads_first(v),
            None::<Tensor>,
            0.0,
            true,
            scale,
            hkv != h,
        )
    } else {
        // torch's is_causal aligns the mask top-left; ours (and decoding's) bottom-right.
        let i = Tensor::arange(lq, (Kind::Int64, q.device())).unsqueeze(1);
        let j = Tensor::arange(lk, (Kind::Int64, q.device())).unsqueeze(0);
        let mask = j.le_tensor(&(i + (lk - lq)));
        Tensor::scaled_dot_product_attention(
            &heads_first(q),
            &heads_first(k),
            &heads_first(v),
            Some(mask),
            0.0,
            false,
            scale,
            hkv != h,
        )
    };
    heads_first(&o)
}
