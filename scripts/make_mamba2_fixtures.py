"""Generate the PyTorch/HF-transformers reference fixtures for the tiny-Mamba-2 parity tests.

Produces, under ssm/tests/fixtures/:
  hf_tiny_mamba2/config.json, model.safetensors
      a random tiny transformers Mamba2ForCausalLM (hidden 32, 2 layers, expand 2, head_dim 8 so
      8 heads, 2 groups, state 8, conv 4, chunk 8, biases on, tied embeddings, vocab 64) saved
      with save_pretrained; every parameter perturbed away from its init.
  hf_tiny_mamba2_ref.safetensors
      input_ids (i64 [2,13]: L is not a multiple of the chunk), logits (f32 [2,13,64]), loss (f32
      [1]) and grad.<HF param name> for every parameter; loss = mean next-token cross-entropy.
  hf_tiny_mamba2_ref.json
      a readable summary.

transformers' pure-PyTorch path runs (its chunked `torch_forward`: no mamba_ssm, causal_conv1d or
hub kernels, asserted below) on CPU in float32; the loss and gradients are cross-checked against
the same model run with chunk_size 1 (the plain recurrence) in float64.

Regenerate (from the repo root):
    scripts/setup-venv --fixtures && .venv/bin/python scripts/make_mamba2_fixtures.py
"""
import importlib.util
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
from transformers import Mamba2Config, Mamba2ForCausalLM

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(REPO, "ssm", "tests", "fixtures")
MODEL_DIR = os.path.join(OUT, "hf_tiny_mamba2")
REF = os.path.join(OUT, "hf_tiny_mamba2_ref")
BATCH, SEQ = 2, 13

torch.manual_seed(0)
torch.use_deterministic_algorithms(True)
for pkg in ("mamba_ssm", "causal_conv1d", "kernels"):
    assert importlib.util.find_spec(pkg) is None, f"{pkg} is installed; fixtures must use the torch path"


def make_config(chunk):
    return Mamba2Config(
        vocab_size=64, hidden_size=32, num_hidden_layers=2, expand=2, head_dim=8, num_heads=8,
        n_groups=2, state_size=8, conv_kernel=4, chunk_size=chunk, use_bias=True, use_conv_bias=True,
        tie_word_embeddings=True, layer_norm_epsilon=1e-5, residual_in_fp32=True, use_cache=False,
    )


config = make_config(8)
model = Mamba2ForCausalLM(config).to(torch.float32)
assert model.lm_head.weight is model.backbone.embeddings.weight, "embeddings not tied"
g = torch.Generator().manual_seed(1)
with torch.no_grad():
    for name, p in model.named_parameters():
        noise = torch.randn(p.shape, generator=g)
        if name.endswith(("norm.weight", "norm_f.weight", ".D", "bias", "A_log")):
            p.add_(0.1 * noise)  # constant or per-head inits: absolute noise
        else:
            p.add_(0.1 * p.std() * noise)  # random matrices: relative noise
model.eval()

input_ids = torch.randint(0, config.vocab_size, (BATCH, SEQ), generator=torch.Generator().manual_seed(2))
V = config.vocab_size


def loss_of(m, dtype):
    m.zero_grad()
    logits = m.to(dtype)(input_ids, use_cache=False).logits
    loss = F.cross_entropy(logits[:, :-1].reshape(-1, V), input_ids[:, 1:].reshape(-1))
    loss.backward()
    return logits, loss


logits, loss = loss_of(model, torch.float32)
params = dict(model.named_parameters())
assert "lm_head.weight" not in params and "backbone.embeddings.weight" in params
grads = {k: v.grad.detach().clone() for k, v in params.items()}

# Cross-check: the same weights with chunk 1 (every step its own chunk: the recurrence) in f64.
check = Mamba2ForCausalLM(make_config(1))
check.load_state_dict(model.state_dict())
logits64, loss64 = loss_of(check, torch.float64)
rel = lambda a, b: ((a.double() - b).norm() / b.norm()).item()
f32_vs_f64 = {"logits": rel(logits, logits64)}
f32_vs_f64 |= {f"grad.{k}": rel(grads[k], v.grad) for k, v in check.named_parameters()}
print(f"chunked f32 vs recurrent f64: max|dlogits| = {(logits.double() - logits64).abs().max():.2e}")
assert all(v < 1e-4 for v in f32_vs_f64.values()), f32_vs_f64

shutil.rmtree(MODEL_DIR, ignore_errors=True)
model.to(torch.float32).save_pretrained(MODEL_DIR, safe_serialization=True)
with safe_open(os.path.join(MODEL_DIR, "model.safetensors"), "pt") as f:
    saved = sorted(f.keys())
assert sorted(saved) == sorted(params), "saved tensors differ from the parameter list"
for extra in set(os.listdir(MODEL_DIR)) - {"config.json", "model.safetensors", "generation_config.json"}:
    os.remove(os.path.join(MODEL_DIR, extra))

tensors = {"input_ids": input_ids, "logits": logits.detach(), "loss": loss.detach().reshape(1)}
tensors |= {f"grad.{k}": v for k, v in grads.items()}
tensors = {k: v.contiguous() for k, v in tensors.items()}
versions = {"torch": torch.__version__, "transformers": transformers.__version__,
            "safetensors": safetensors.__version__}
generator = "scripts/make_mamba2_fixtures.py; " + ", ".join(f"{k} {v}" for k, v in versions.items())
save_file(tensors, REF + ".safetensors", metadata={"generator": generator})
summary = {
    "regenerate": "scripts/setup-venv --fixtures && .venv/bin/python scripts/make_mamba2_fixtures.py",
    "loss": loss.item(),
    "versions": versions,
    "rel_l2_err_f32_chunked_vs_f64_recurrent": {k: float(f"{v:.2e}") for k, v in f32_vs_f64.items()},
    "tensors": {k: f"{str(v.dtype).removeprefix('torch.')} {list(v.shape)}" for k, v in tensors.items()},
}
with open(REF + ".json", "w") as f:
    json.dump(summary, f, indent=1)
    f.write("\n")
print(f"loss = {loss.item():.8f}; {len(tensors)} tensors")
