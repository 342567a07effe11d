"""Generate the PyTorch/HF-transformers reference fixtures for the tiny-Mamba parity tests.

Produces, under ssm/tests/fixtures/:
  hf_tiny_mamba/config.json, model.safetensors (+ generation_config.json)
      a random tiny transformers MambaForCausalLM (d_model 32, d_state 8, 2 layers, expand 2,
      d_conv 4, dt_rank 2, vocab 64, tied embeddings) saved with save_pretrained; every
      parameter is perturbed away from its init so that no gradient path is trivial.
  hf_tiny_mamba_ref.safetensors
      input_ids (i64 [2,16]), logits (f32 [2,16,64]), loss (f32 [1]) and grad.<HF param name>
      (f32) for every parameter; loss = mean next-token cross-entropy over the 2*15 positions.
  hf_tiny_mamba_ref.json
      human-readable summary: tensor names/shapes, loss, torch/transformers versions.

The model runs transformers' pure-PyTorch path (no mamba_ssm / causal_conv1d / hub kernels;
asserted below) on CPU in float32, and is cross-checked against an independent textbook
Mamba-1 implementation (selective_scan_ref semantics) written here.

Regenerate (from the repo root):
    scripts/setup-venv --fixtures && .venv/bin/python scripts/make_fixtures.py
"""
import importlib.util
import inspect
import json
import os
import shutil

os.environ["USE_HUB_KERNELS"] = "0"  # never consult the HF kernels hub

import torch
import torch.nn.functional as F
import safetensors
from safetensors import safe_open
from safetensors.torch import save_file
import transformers
from transformers import MambaConfig, MambaForCausalLM
from transformers.models.mamba import modeling_mamba

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(REPO, "ssm", "tests", "fixtures")
MODEL_DIR = os.path.join(OUT, "hf_tiny_mamba")
REF = os.path.join(OUT, "hf_tiny_mamba_ref")
BATCH, SEQ = 2, 16

torch.manual_seed(0)
torch.use_deterministic_algorithms(True)

# --- 1. make sure the slow (pure PyTorch) path is what runs ------------------------------------
for pkg in ("mamba_ssm", "causal_conv1d", "kernels", "mambapy"):
    assert importlib.util.find_spec(pkg) is None, f"{pkg} is installed; fixtures must use the torch path"
for fn in ("mamba_inner_fn", "mamba_selective_scan", "causal_conv1d_fn"):
    closure = inspect.getclosurevars(getattr(modeling_mamba, fn)).nonlocals
    assert closure["is_new_implementation"] is False, f"{fn} is not the reference torch implementation"

# --- 2. tiny random model, every parameter perturbed ------------------------------------------
config = MambaConfig(
    vocab_size=64, hidden_size=32, state_size=8, num_hidden_layers=2, expand=2, conv_kernel=4,
    time_step_rank=2, use_bias=False, use_conv_bias=True, tie_word_embeddings=True,
    layer_norm_epsilon=1e-5, residual_in_fp32=True, use_mambapy=False, use_cache=False,
)
model = MambaForCausalLM(config).to(torch.float32)
assert model.lm_head.weight is model.backbone.embeddings.weight, "embeddings not tied"

g = torch.Generator().manual_seed(1)
with torch.no_grad():
    for name, p in model.named_parameters():
        noise = torch.randn(p.shape, generator=g)
        if name.endswith(("norm.weight", "norm_f.weight", ".D", "conv1d.bias", "A_log", "dt_proj.bias")):
            # init is constant (ones/zeros/log(1..N)) or a per-channel constant: add absolute noise;
            # A_log stays ~log(1..N), softplus(dt_proj.bias) stays ~1e-3..0.1 (scaled by e^{+-0.1})
            p.add_(0.1 * noise)
        else:  # random matrices: relative noise
            p.add_(0.1 * p.std() * noise)
model.eval()  # no dropout anywhere; eval and train take the same torch path (checked below)

# --- 3. forward / loss / backward -------------------------------------------------------------
input_ids = torch.randint(0, config.vocab_size, (BATCH, SEQ), generator=torch.Generator().manual_seed(2))
logits = model(input_ids, use_cache=False).logits
V = config.vocab_size
loss = F.cross_entropy(logits[:, :-1].reshape(-1, V), input_ids[:, 1:].reshape(-1))
loss.backward()
params = dict(model.named_parameters())  # tied lm_head.weight is deduplicated -> embeddings only
assert "lm_head.weight" not in params and "backbone.embeddings.weight" in params

with torch.no_grad():
    model.train()
    assert torch.equal(model(input_ids).logits, logits), "train-mode forward differs"
    model.eval()


# --- 4. independent textbook Mamba-1 (selective_scan_ref semantics) as a cross-check ----------
def reference(p, ids):
    def rms(x, w):
        return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + config.layer_norm_epsilon))

    E, N, K, R = config.intermediate_size, config.state_size, config.conv_kernel, config.time_step_rank
    h = p["backbone.embeddings.weight"][ids]
    for i in range(config.num_hidden_layers):
        q = lambda s: p[f"backbone.layers.{i}.{s}"]
        x, z = (rms(h, q("norm.weight")) @ q("mixer.in_proj.weight").T).split(E, dim=-1)
        w = q("mixer.conv1d.weight")[:, 0, :]  # (E, K): y[t] = b + sum_k w[k] * x[t-K+1+k]
        xp = F.pad(x, (0, 0, K - 1, 0))
        x = F.silu(q("mixer.conv1d.bias") + sum(w[:, k] * xp[:, k:k + SEQ] for k in range(K)))
        dt, Bm, Cm = (x @ q("mixer.x_proj.weight").T).split([R, N, N], dim=-1)
        dt = F.softplus(dt @ q("mixer.dt_proj.weight").T + q("mixer.dt_proj.bias"))  # (B, L, E)
        A = -torch.exp(q("mixer.A_log"))  # (E, N)
        s, ys = torch.zeros(ids.shape[0], E, N), []
        for t in range(SEQ):
            s = torch.exp(dt[:, t, :, None] * A) * s + dt[:, t, :, None] * Bm[:, t, None, :] * x[:, t, :, None]
            ys.append((s * Cm[:, t, None, :]).sum(-1) + q("mixer.D") * x[:, t])
        y = torch.stack(ys, dim=1) * F.silu(z)
        h = h + y @ q("mixer.out_proj.weight").T
    return rms(h, p["backbone.norm_f.weight"]) @ p["backbone.embeddings.weight"].T


ref_params = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
ref_logits = reference(ref_params, input_ids)
F.cross_entropy(ref_logits[:, :-1].reshape(-1, V), input_ids[:, 1:].reshape(-1)).backward()
print(f"cross-check vs textbook Mamba: max|dlogits| = {(ref_logits - logits).abs().max():.2e}")
assert torch.allclose(ref_logits, logits, atol=1e-5, rtol=1e-5)
for k, v in params.items():
    assert torch.allclose(ref_params[k].grad, v.grad, atol=1e-6, rtol=1e-4), k
# float64 run of the same reference: how accurate are the f32 fixtures (relative L2 error)?
p64 = {k: v.detach().double().requires_grad_(True) for k, v in params.items()}
logits64 = reference(p64, input_ids)
F.cross_entropy(logits64[:, :-1].reshape(-1, V), input_ids[:, 1:].reshape(-1)).backward()
rel = lambda a, b: ((a.double() - b).norm() / b.norm()).item()
f32_vs_f64 = {"logits": rel(logits, logits64)} | {f"grad.{k}": rel(v.grad, p64[k].grad) for k, v in params.items()}

# --- 5. write fixtures ------------------------------------------------------------------------
shutil.rmtree(MODEL_DIR, ignore_errors=True)
model.save_pretrained(MODEL_DIR, safe_serialization=True)
with safe_open(os.path.join(MODEL_DIR, "model.safetensors"), "pt") as f:
    saved = sorted(f.keys())
print("model.safetensors holds:", ", ".join(saved))
assert "lm_head.weight" not in saved and "backbone.embeddings.weight" in saved
assert sorted(saved) == sorted(params), "saved tensors differ from the parameter list"
keep = {"config.json", "model.safetensors", "generation_config.json"}
for extra in set(os.listdir(MODEL_DIR)) - keep:
    os.remove(os.path.join(MODEL_DIR, extra))

tensors = {"input_ids": input_ids, "logits": logits.detach(), "loss": loss.detach().reshape(1)}
tensors |= {f"grad.{k}": v.grad for k, v in params.items()}
tensors = {k: v.contiguous() for k, v in tensors.items()}
versions = {"torch": torch.__version__, "transformers": transformers.__version__,
            "safetensors": safetensors.__version__}
# one metadata key only: safetensors writes the metadata map in hash order, more keys = unstable bytes
generator = "scripts/make_fixtures.py; " + ", ".join(f"{k} {v}" for k, v in versions.items())
save_file(tensors, REF + ".safetensors", metadata={"generator": generator})
summary = {
    "regenerate": "scripts/setup-venv --fixtures && .venv/bin/python scripts/make_fixtures.py",
    "loss": loss.item(),
    "loss_definition": "F.cross_entropy(logits[:, :-1].reshape(-1, V), input_ids[:, 1:].reshape(-1)), mean",
    "tied_embedding_grad": "grad.backbone.embeddings.weight = embedding-lookup grad + lm_head grad",
    "versions": versions,
    "rel_l2_err_f32_vs_f64": {k: float(f"{v:.2e}") for k, v in f32_vs_f64.items()},
    "tensors": {k: f"{str(v.dtype).removeprefix('torch.')} {list(v.shape)}" for k, v in tensors.items()},
}
with open(REF + ".json", "w") as f:
    json.dump(summary, f, indent=1)
    f.write("\n")

print(f"\nloss = {loss.item():.8f}\n{'name':<50} {'dtype':<8} {'shape':<12} {'norm':>10} {'f32 err':>8}")
for k, v in tensors.items():
    err = f"{f32_vs_f64[k]:.1e}" if k in f32_vs_f64 else ""
    print(f"{k:<50} {str(v.dtype)[6:]:<8} {str(list(v.shape)):<12} {v.double().norm():10.3e} {err:>8}")
mine = [os.path.join(MODEL_DIR, f) for f in os.listdir(MODEL_DIR)] + [REF + ".safetensors", REF + ".json"]
total = sum(map(os.path.getsize, mine))
print(f"\nfixtures total: {total / 1024:.1f} KiB")
assert total < 2 * 1024 * 1024
