"""
A GPT in one file: the GPT-2 architecture (pre-norm blocks, learned positions, GELU MLP, tied input and output
embeddings), written to be read top to bottom.

Three small generic hooks let the technique modules plug in without this file importing any of them:
  1. `attn_add`: an optional per-layer vector added to the attention output right before `c_proj`
     (the planner's conditioning enters here);
  2. `GPT.body` returns the output of every block in one pass, not only the last (the depth ensemble reads the
     late layers);
  3. `GPT.body` + `GPT.head` give hidden states and logits without a loss, so train.py can apply another head or
     another loss (the n-gram soft targets).
With every hook unused, `GPT.forward` is the plain model.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F


@dataclass
class GPTConfig:
    block_size: int = 256
    vocab_size: int = 50304  # GPT-2's 50257 padded up to a multiple of 64: faster matmuls, unused rows never fire
    n_layer: int = 6
    n_head: int = 6
    n_embd: int = 384
    dropout: float = 0.0
    bias: bool = True  # biases in Linear layers and LayerNorms, as GPT-2
    flash: bool = True  # use PyTorch's fused scaled_dot_product_attention; False runs the readable version

    def __post_init__(self):
        problems = []
        for name in ("block_size", "vocab_size", "n_layer", "n_head", "n_embd"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.n_head >= 1 and self.n_embd % self.n_head != 0:
            problems.append(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if not 0.0 <= self.dropout < 1.0:
            problems.append(f"dropout must be in [0, 1), got {self.dropout}")
        if problems:
            raise ValueError("invalid model config: " + "; ".join(problems))


class KVCache:
    """Keys and values of every layer for the tokens seen so far, preallocated to block_size."""

    def __init__(self, config, batch_size, device, dtype):
        shape = (config.n_layer, batch_size, config.n_head, config.block_size, config.n_embd // config.n_head)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.length = 0  # number of positions filled

    def append(self, layer, k, v):
        """Store this step's keys/values for one layer and return all keys/values so far."""
        start, end = self.length, self.length + k.size(2)
        self.k[layer, :, :, start:end] = k
        self.v[layer, :, :, start:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]


class CausalSelfAttention(nn.Module):

    def __init__(self, config, layer):
        super().__init__()
        self.layer = layer
        self.n_head = config.n_head
        self.dropout = config.dropout
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # q, k, v in one matmul
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.attn_dropout = nn.Dropout(config.dropout)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.flash = config.flash and hasattr(F, "scaled_dot_product_attention")

    def forward(self, x, attn_add=None, kv_cache=None):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        if kv_cache is not None:
            k, v = kv_cache.append(self.layer, k, v)
        # Generation fills the cache with one prompt pass and then one token at a time, so a causal mask is needed
        # exactly when several queries arrive together, and then queries and keys are the same positions.
        causal = T > 1
        if self.flash:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0,
                                               is_causal=causal)
        else:
            y = self.manual_attention(q, k, v, causal)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        if attn_add is not None:
            y = y + attn_add
        return self.resid_dropout(self.c_proj(y))

    def manual_attention(self, q, k, v, causal):
        """softmax(q k^T / sqrt(d)) v with future keys masked out: what the fused kernel computes."""
        att = (q @ k.transpose(-2, -1)) / math.sqrt(k.size(-1))
        if causal:
            T_q, T_k = q.size(2), k.size(2)
            future = torch.ones(T_q, T_k, dtype=torch.bool, device=q.device).triu(T_k - T_q + 1)
            att = att.masked_fill(future, float("-inf"))
        att = self.attn_dropout(F.softmax(att.float(), dim=-1).type_as(q))
        return att @ v


class MLP(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU(approximate="tanh")  # GPT-2's GELU, so OpenAI's weights compute what they were trained to
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):

    def __init__(self, config, layer):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config, layer)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x, attn_add=None, kv_cache=None):
        x = x + self.attn(self.ln_1(x), attn_add, kv_cache)
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config, layer) for layer in range(config.n_layer)]),
            ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # tied: one matrix reads and writes tokens

        self.apply(self._init_weights)
        # GPT-2: each residual branch's output projection is scaled so the residual stream's variance does not
        # grow with depth (two branches per block).
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding=True):
        """Parameter count; the position table is left out by default since it does no matmul work."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.transformer.wpe.weight.numel() if non_embedding else n

    def body(self, idx, attn_add=None, kv_cache=None):
        """Run the blocks and return every block's output, a list of n_layer tensors of shape (B, T, n_embd).

        attn_add: None, or a list with one entry per layer, each None or a tensor broadcastable to (B, T, n_embd)
        that is added to that layer's attention output before c_proj.
        """
        B, T = idx.size()
        start = kv_cache.length if kv_cache is not None else 0
        if start + T > self.config.block_size:
            raise ValueError(f"sequence of length {start + T} is longer than block_size {self.config.block_size}")
        pos = torch.arange(start, start + T, dtype=torch.long, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        hidden = []
        for layer, block in enumerate(self.transformer.h):
            x = block(x, attn_add[layer] if attn_add is not None else None, kv_cache)
            hidden.append(x)
        if kv_cache is not None:
            kv_cache.length += T
        return hidden

    def head(self, h):
        """Final LayerNorm then the tied LM head: hidden states -> logits."""
        return self.lm_head(self.transformer.ln_f(h))

    def forward(self, idx, targets=None, attn_add=None):
        """The plain model: logits for every position, and the mean cross-entropy when targets are given
        (targets equal to -1 are ignored)."""
        logits = self.head(self.body(idx, attn_add)[-1])
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.flatten(0, 1), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    def crop_block_size(self, block_size):
        """Shrink the context (e.g. to tune a checkpoint on shorter sequences) by cutting the position table."""
        assert block_size <= self.config.block_size
        self.config.block_size = block_size
        self.transformer.wpe.weight = nn.Parameter(self.transformer.wpe.weight[:block_size])

    def flops_per_token(self):
        """Forward + backward FLOPs per token: 6 per parameter plus the attention scores (PaLM appendix B)."""
        cfg = self.config
        return 6 * self.num_params() + 12 * cfg.n_layer * cfg.n_embd * cfg.block_size

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, use_cache=True, logits_fn=None,
                 attn_add_fn=None):
        """Sample max_new_tokens tokens after the prompt idx (B, T). temperature 0 is greedy decoding.

        With use_cache the prompt runs once and each new token only attends to the cached keys and values; once
        the text no longer fits in block_size the window slides, positions shift and the cache is rebuilt each
        step, which gives exactly the no-cache result.
        logits_fn(hidden) maps the list of block outputs at the last position to logits (default: the plain head).
        attn_add_fn(idx, start) returns the attn_add list for positions start.. of idx, or None.
        """
        logits_fn = logits_fn or (lambda hidden: self.head(hidden[-1]))
        cache = None
        for _ in range(max_new_tokens):
            window = idx[:, -self.config.block_size:]
            if use_cache and cache is not None and idx.size(1) <= self.config.block_size:
                new = window[:, cache.length:]  # the one token sampled last step
            else:
                dtype = self.lm_head.weight.dtype
                cache = KVCache(self.config, idx.size(0), idx.device, dtype) if use_cache else None
                new = window
            start = window.size(1) - new.size(1)
            attn_add = attn_add_fn(window, start) if attn_add_fn is not None else None
            hidden = self.body(new, attn_add, cache)
            logits = logits_fn([h[:, -1] for h in hidden]).float()
            idx = torch.cat((idx, sample_next(logits, temperature, top_k)), dim=1)
        return idx


def configure_optimizers(module, weight_decay, learning_rate, betas, device_type):
    """AdamW over a module's trainable parameters (the GPT, or the GPT with the techniques' modules), with weight
    decay on matrices only (not on biases, LayerNorm gains or other vectors). Frozen parameters are left out, so a
    frozen base costs no optimizer state. On CUDA and the CPU the fused kernel, which PyTorch never picks by itself:
    one pass over each parameter instead of a dozen small ops; on the CPU a third of the multi-tensor (foreach)
    update's time, and AdamW to float rounding, not bit for bit. Elsewhere (MPS) the foreach update."""
    params = [p for p in module.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    fused = device_type in ("cuda", "cpu")
    return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, **({"fused": True} if fused else {"foreach": True}))


def sample_next(logits, temperature=1.0, top_k=None):
    """One token per row from logits (B, V): argmax when temperature is 0, else top-k softmax sampling."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(F.softmax(logits, dim=-1), num_samples=1)


# Dense bf16 tensor-core peak per GPU, in FLOP/s, for the model-FLOPs-utilisation estimate.
PEAK_BF16_FLOPS = {"A100": 312e12, "H100": 989e12, "H200": 989e12}


def peak_flops(device_name):
    """Peak bf16 FLOP/s for a CUDA device name such as 'NVIDIA H100 80GB HBM3', or None when unknown."""
    for gpu, flops in PEAK_BF16_FLOPS.items():
        if gpu in device_name:
            return flops
    return None


def estimate_mfu(model, tokens_per_sec, device_name):
    """Model FLOPs utilisation: achieved training FLOP/s over the GPU's peak; None off the known GPUs (CPU, MPS)."""
    peak = peak_flops(device_name)
    if peak is None:
        return None
    return model.flops_per_token() * tokens_per_sec / peak
