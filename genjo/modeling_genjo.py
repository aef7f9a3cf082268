"""The Genjo mask predictor: a Llama-style Transformer without the causal mask.

Given a partially masked sequence, the model predicts every position at once (arXiv 2502.09992).
The time step t is never an input. Module and parameter names are those of the published
checkpoints (``model.transformer.blocks.N.q_proj.weight``, ...), so those load unchanged.

Shapes: B = batch, T = query length, S = key length (T, or more with a KV cache), D = d_model,
H = query heads, Hkv = key/value heads, Dh = head dim, V = embedding_size.

This file is copied next to the weights by ``save_pretrained`` and imported there as remote code,
so it depends on nothing but ``torch``, ``transformers`` and ``configuration_genjo.py``. Only
``GenjoModelLM.generate`` needs the ``genjo`` package (the sampler), and imports it when called.
"""

import inspect
import json
import os
from dataclasses import dataclass
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.utils import ModelOutput, logging

from .configuration_genjo import GenjoConfig

logger = logging.get_logger(__name__)

# One (key, value) pair per layer, each (B, Hkv, S, Dh); keys are stored after RoPE.
KVCache = list[tuple[torch.Tensor, torch.Tensor]]


class GenjoOutput(NamedTuple):
    logits: torch.Tensor  # (B, T, V)
    attn_key_values: Optional[KVCache]  # present keys/values when use_cache
    hidden_states: Optional[tuple[torch.Tensor, ...]]  # n_layers + 1 tensors of (B, T, D)


@dataclass
class GenjoLMOutput(ModelOutput):
    """What GenjoModelLM returns: ``logits`` (B, T, V) (or (N, V) under ``logits_mask``), ``cache`` (a
    KVCache when use_cache, also readable as ``past_key_values``), ``hidden_states``.

    Transformers 5.24 renamed ModelOutput's ``past_key_values`` field to ``cache`` and warns on every
    construction or read under the old name, so Genjo stores its list of (K, V) under ``cache`` and
    serves ``past_key_values`` itself: the same object, no warning, on every transformers 5 release.
    """

    loss: Optional[torch.Tensor] = None
    logits: Optional[torch.Tensor] = None
    cache: Optional[KVCache] = None
    hidden_states: Optional[tuple[torch.Tensor, ...]] = None

    @property
    def past_key_values(self) -> Optional[KVCache]:
        return self.cache


class RMSNorm(nn.Module):
    """x * rsqrt(mean(x^2) + eps), computed in fp32, cast back, then scaled by the weight."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.amp.is_autocast_available(x.device.type):  # the meta device (shape-only dry runs)
            return self._normalize(x)
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self._normalize(x)

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """[-x2, x1] for x = [x1, x2] split in halves on the last dim (not interleaved)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class RotaryEmbedding(nn.Module):
    """Rotary position embedding tables, in fp32.

    The cos/sin tables are plain attributes, not buffers: they are derived from the config, must
    never be saved, and must exist even when the model was built on the meta device.
    """

    def __init__(self, config: GenjoConfig):
        super().__init__()
        # Rotated dims Dr per head: all of them, or the first head_dim * partial_rotary_factor (LLaDA-MoE's field).
        self.head_dim = int(config.d_model // config.n_heads * (getattr(config, "partial_rotary_factor", None) or 1))
        # rope_theta, scaled by a context extension (config.rope_extension) where the config has one
        self.theta = getattr(config, "rope_base", config.rope_theta)
        self.table_length = config.max_sequence_length
        self._tables: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def tables(self, length: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin tables (P, Dr) in fp32 for positions 0..P-1, P >= length, grown on demand."""
        cached = self._tables.get(device)
        if cached is not None and cached[0].shape[0] >= length:
            return cached
        length = max(self.table_length, length)
        exponent = torch.arange(0, self.head_dim, 2, device=device, dtype=torch.float) / self.head_dim
        inv_freq = 1.0 / (self.theta**exponent)  # (Dr/2,)
        positions = torch.arange(length, device=device, dtype=torch.float)
        angles = torch.outer(positions, inv_freq)  # (P, Dr/2)
        angles = torch.cat((angles, angles), dim=-1)  # (P, Dr): rotate-half layout, not interleaved
        self._tables[device] = (angles.cos(), angles.sin())
        return self._tables[device]

    def forward(self, position_ids: torch.Tensor, max_position: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin (B, 1, T, Dr) fp32 for position_ids (B, T) whose values are <= max_position."""
        cos, sin = self.tables(max_position + 1, position_ids.device)
        return cos[position_ids].unsqueeze(1), sin[position_ids].unsqueeze(1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (B, H, T, Dh) in fp32: x cos + rotate_half(x) sin; returns x's dtype.

    cos, sin: (B, 1, T, Dr). With Dr < Dh (partial rotary) only the first Dr dims turn; the rest pass as they are.
    """
    x32 = x.float()
    rotary_dim = cos.shape[-1]
    if rotary_dim < x.shape[-1]:
        turned, kept = x32[..., :rotary_dim], x32[..., rotary_dim:]
        return torch.cat((turned * cos + rotate_half(turned) * sin, kept), dim=-1).to(x.dtype)
    return (x32 * cos + rotate_half(x32) * sin).to(x.dtype)


def cached_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attention_bias: Optional[torch.Tensor],
    layer_past: Optional[tuple[torch.Tensor, torch.Tensor]],
    replace_position: Optional[torch.Tensor],
    use_cache: bool,
) -> tuple[torch.Tensor, Optional[tuple[torch.Tensor, torch.Tensor]]]:
    """Bidirectional SDPA of the queries q (B, H, T, Dh) over the keys k and values v (B, Hkv, T, Dh) (after RoPE).

    Without ``layer_past`` the keys are k itself (S = T). With ``layer_past`` (B, Hkv, P, Dh) and no
    ``replace_position``, k and v are appended after the cached ones (S = P + T; the prefix cache). With
    ``replace_position`` (B, P) bool holding T true entries per row, they overwrite the cache in place at those
    columns (S = P; the dual cache). attention_bias: additive (1|B, 1, T, S) or None. Grouped-query attention
    repeats each key/value head H / Hkv times. Returns the output (B, H, T, Dh) and the present (K, V) when use_cache.
    """
    if layer_past is not None and replace_position is not None:
        past_k, past_v = layer_past
        # (B, Hkv, P, Dh) viewed as (B, P, Hkv, Dh): boolean indexing picks (B*T, Hkv, Dh)
        past_k.transpose(1, 2)[replace_position] = k.transpose(1, 2).reshape(-1, *k.shape[1::2])
        past_v.transpose(1, 2)[replace_position] = v.transpose(1, 2).reshape(-1, *v.shape[1::2])
        k, v = past_k, past_v
    elif layer_past is not None:
        k = torch.cat((layer_past[0], k), dim=2)
        v = torch.cat((layer_past[1], v), dim=2)
    present = (k, v) if use_cache else None
    n_heads, n_kv_heads = q.shape[1], k.shape[1]
    if n_kv_heads != n_heads:  # grouped-query attention
        k = k.repeat_interleave(n_heads // n_kv_heads, dim=1)
        v = v.repeat_interleave(n_heads // n_kv_heads, dim=1)
    out = F.scaled_dot_product_attention(
        q, k, v, attn_mask=attention_bias, dropout_p=0.0, is_causal=False, scale=q.shape[-1] ** -0.5
    )  # (B, H, T, Dh)
    return out, present


def key_length(past_key_values: Optional[KVCache], replace_position: Optional[torch.Tensor], T: int) -> int:
    """S, the number of keys a forward of T queries attends to: T, the cache's length (dual cache: its columns
    are overwritten), or the cache's length + T (prefix cache: appended)."""
    if past_key_values is None:
        return T
    cached = past_key_values[0][0].shape[2]
    return cached if replace_position is not None else cached + T


def query_positions(
    attention_mask: Optional[torch.Tensor],
    position_ids: Optional[torch.Tensor],
    replace_position: Optional[torch.Tensor],
    B: int,
    T: int,
    S: int,
    device,
) -> tuple[torch.Tensor, int]:
    """RoPE positions (B, T) int64 of the queries and their maximum.

    Given position_ids, those. Else from attention_mask (B, S): ``cumsum(mask) - 1`` so that each row's first real
    token is position 0, else 0..S-1; then the query columns are taken: those of replace_position (B, S) bool (dual
    cache), or the last T (a prefix cache sits before them).
    """
    if position_ids is not None:
        return position_ids, int(position_ids.max())
    if attention_mask is not None:
        all_positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # (B, S)
    else:
        all_positions = torch.arange(S, device=device).expand(B, S)
    if replace_position is not None:
        return all_positions[replace_position].view(B, T), S - 1
    return all_positions[:, S - T :], S - 1  # derived positions never exceed the key length


def additive_attention_bias(
    attention_mask, attention_bias, T: int, S: int, dtype, causal: bool = False, device=None
) -> Optional[torch.Tensor]:
    """Additive bias (1|B, 1, T, S) in the query dtype, or None when nothing is hidden.

    attention_mask: (B, S) of 1 (token) / 0 (padding): padding keys are hidden. attention_bias: optional
    (1|B, 1, S, S) or (1|B, 1, T, S); bool/int true = allowed, float = additive (square ones are sliced to the last
    T query rows). causal (config.causal, the autoregressive twin only): query i, the key at column S - T + i, also
    sees no key after itself.
    """
    min_value = torch.finfo(torch.float32).min
    bias = None
    if attention_mask is not None and not bool(attention_mask.all()):
        pad_bias = (1.0 - attention_mask.float()) * min_value  # (B, S)
        bias = pad_bias[:, None, None, :]
    if attention_bias is not None:
        if attention_bias.dtype in (torch.bool, torch.int32, torch.int64, torch.uint8):
            extra = torch.zeros(attention_bias.shape, dtype=torch.float32, device=attention_bias.device)
            extra = extra.masked_fill(~attention_bias.bool(), min_value)
        else:
            extra = attention_bias.float()
        extra = extra[..., extra.shape[-2] - T :, :S]
        bias = extra if bias is None else bias + extra
    if causal:
        future = torch.ones(T, S, dtype=torch.bool, device=device).triu(S - T + 1)  # (T, S)
        extra = torch.zeros(T, S, device=device).masked_fill(future, min_value)[None, None]
        bias = extra if bias is None else bias + extra
    if bias is None:
        return None
    # The sum of two minima is -inf in fp32; clamp keeps softmax finite for fully hidden rows.
    return bias.clamp(min=min_value).to(dtype)


class GenjoBlock(nn.Module):
    """Pre-norm Llama block: h = x + Attn(norm(x)); out = h + SwiGLU(norm(h))."""

    def __init__(self, config: GenjoConfig, layer_id: int):
        super().__init__()
        self.layer_id = layer_id
        self.n_heads = config.n_heads
        self.n_kv_heads = config.n_kv_heads
        self.head_dim = config.d_model // config.n_heads
        self.is_causal = bool(getattr(config, "causal", False))  # for attention helpers; the mask is in the bias
        d, kv_dim, hidden = config.d_model, config.n_kv_heads * self.head_dim, config.mlp_hidden_size
        self.attn_norm = RMSNorm(d, config.rms_norm_eps)
        self.ff_norm = RMSNorm(d, config.rms_norm_eps)
        self.q_proj = nn.Linear(d, d, bias=False)
        self.k_proj = nn.Linear(d, kv_dim, bias=False)
        self.v_proj = nn.Linear(d, kv_dim, bias=False)
        self.attn_out = nn.Linear(d, d, bias=False)
        self.ff_proj = nn.Linear(d, hidden, bias=False)  # the gate, through SiLU
        self.up_proj = nn.Linear(d, hidden, bias=False)
        self.ff_out = nn.Linear(hidden, d, bias=False)  # down projection

    def attention(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        attention_bias: Optional[torch.Tensor],
        layer_past: Optional[tuple[torch.Tensor, torch.Tensor]],
        replace_position: Optional[torch.Tensor],
        use_cache: bool,
        output_mask: Optional[torch.Tensor] = None,
    ) -> tuple[torch.Tensor, Optional[tuple[torch.Tensor, torch.Tensor]]]:
        """Bidirectional attention of the T queries in x (B, T, D) over all S keys.

        layer_past, replace_position: the cache and how x's keys join it (``cached_attention``).
        Returns (B, T, D), or (N, D) for the N true positions of ``output_mask`` (B, T) bool.
        """
        B, T, D = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        out, present = cached_attention(q, k, v, attention_bias, layer_past, replace_position, use_cache)
        out = out.transpose(1, 2).reshape(B, T, D)
        if output_mask is not None:
            out = out[output_mask]  # (N, D)
        return self.attn_out(out), present

    def forward(
        self, x, rope, attention_bias=None, layer_past=None, replace_position=None, use_cache=False, output_mask=None
    ):
        """x: (B, T, D); rope: cos, sin (B, 1, T, Dh). Returns (B, T, D) and the present K/V.

        output_mask: optional (B, T) bool; every position still serves as a key and value, but the
        output projection and the MLP run only there and the block returns (N, D).
        """
        a, present = self.attention(
            self.attn_norm(x), rope, attention_bias, layer_past, replace_position, use_cache, output_mask
        )
        h = (x if output_mask is None else x[output_mask]) + a
        n = self.ff_norm(h)
        out = h + self.ff_out(F.silu(self.ff_proj(n)) * self.up_proj(n))
        return out, present


def _check_supported(config: GenjoConfig) -> None:
    unsupported = {
        "block_type": (config.block_type, "llama"),
        "activation_type": (config.activation_type, "silu"),
        "layer_norm_type": (config.layer_norm_type, "rms"),
        "rope": (config.rope, True),
        "alibi": (config.alibi, False),
        "include_bias": (config.include_bias, False),
        "include_qkv_bias": (config.include_qkv_bias, False),
        "bias_for_layer_norm": (config.bias_for_layer_norm, False),
        "attention_layer_norm": (config.attention_layer_norm, False),
        "layer_norm_with_affine": (config.layer_norm_with_affine, True),
        "scale_logits": (config.scale_logits, False),
        "input_emb_norm": (config.input_emb_norm, False),
        "block_group_size": (config.block_group_size, 1),
        "clip_qkv": (config.clip_qkv, None),
    }
    for name, (value, supported) in unsupported.items():
        if value != supported:
            raise NotImplementedError(f"GenjoConfig.{name}={value!r} is not implemented (only {supported!r}).")
    if config.d_model % config.n_heads or config.n_heads % config.n_kv_heads:
        raise ValueError(
            f"d_model ({config.d_model}) must be divisible by n_heads ({config.n_heads}), and n_heads "
            f"by n_kv_heads ({config.n_kv_heads})."
        )


class GenjoModel(nn.Module):
    """Embedding, blocks, final norm and LM head, under the published names ``transformer.*``."""

    def __init__(self, config: GenjoConfig):
        super().__init__()
        _check_supported(config)
        self.config = config
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.embedding_size, config.d_model),
                blocks=nn.ModuleList(GenjoBlock(config, i) for i in range(config.n_layers)),
                ln_f=RMSNorm(config.d_model, config.rms_norm_eps),
            )
        )
        if not config.weight_tying:
            self.transformer["ff_out"] = nn.Linear(config.d_model, config.embedding_size, bias=False)
        self.rotary_emb = RotaryEmbedding(config)  # shared by all blocks; holds no parameters
        _set_init_std(config, self)

    def lm_head(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits (..., V) from post-ln_f hidden states (..., D)."""
        if self.config.weight_tying:
            return F.linear(hidden, self.transformer.wte.weight)
        return self.transformer.ff_out(hidden)

    def forward(
        self,
        input_ids: Optional[torch.LongTensor],
        input_embeddings: Optional[torch.FloatTensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        attention_bias: Optional[torch.Tensor] = None,
        past_key_values: Optional[KVCache] = None,
        use_cache: bool = False,
        last_logits_only: bool = False,
        output_hidden_states: Optional[bool] = None,
        position_ids: Optional[torch.LongTensor] = None,
        replace_position: Optional[torch.BoolTensor] = None,
        logits_mask: Optional[torch.BoolTensor] = None,
    ) -> GenjoOutput:
        """Logits for every query position.

        input_ids: (B, T) int64, or input_embeddings (B, T, D).
        attention_mask: (B, S) of 1 (token) / 0 (padding) over all keys, cached ones included.
            Padding keys are hidden from every query; padding queries produce ignored outputs.
        attention_bias: optional (1|B, 1, S, S) or (1|B, 1, T, S); bool/int true = allowed, float
            = additive. Square biases are sliced to the last T query rows.
        past_key_values / replace_position: see :meth:`GenjoBlock.attention`.
        position_ids: (B, T); by default derived from attention_mask so that each row's first real
            token is position 0 (then sliced to the query columns when a cache is used).
        logits_mask: optional (B, T) bool; logits are then computed only there and returned as
            (N, V), N = logits_mask.sum(), in row-major order (the LM head is ~7% of the 8B's FLOPs
            and its output 0.25 MB per position: the likelihood needs it at masked slots only); the
            last block's output projection and MLP then run only there too.
        Returns GenjoOutput with logits (B, T, V) (or (B, 1, V) with last_logits_only) in the
        model's dtype.
        """
        x = self.transformer.wte(input_ids) if input_embeddings is None else input_embeddings
        B, T, _ = x.shape
        S = key_length(past_key_values, replace_position, T)
        if attention_mask is not None and attention_mask.shape != (B, S):
            raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}; expected (B, S) = {(B, S)}.")
        position_ids, max_position = query_positions(attention_mask, position_ids, replace_position, B, T, S, x.device)
        rope = self.rotary_emb(position_ids, max_position)
        causal = getattr(self.config, "causal", False)  # the autoregressive twin only
        bias = additive_attention_bias(attention_mask, attention_bias, T, S, x.dtype, causal, x.device)
        hidden_states = [] if output_hidden_states else None
        presents = [] if use_cache else None
        # Outputs are wanted only where logits are: the last block runs its output projection and MLP
        # there alone (other positions still feed its attention as keys and values).
        last_output_mask = logits_mask if hidden_states is None and not last_logits_only else None
        for i, block in enumerate(self.transformer.blocks):
            if hidden_states is not None:
                hidden_states.append(x)
            layer_past = past_key_values[i] if past_key_values is not None else None
            output_mask = last_output_mask if i == len(self.transformer.blocks) - 1 else None
            x, present = block(x, rope, bias, layer_past, replace_position, use_cache, output_mask)
            if presents is not None:
                presents.append(present)
        if last_logits_only:
            x = x[:, -1:, :]
        x = self.transformer.ln_f(x)
        if hidden_states is not None:
            hidden_states.append(x)
        if logits_mask is not None and last_output_mask is None:
            x = x[logits_mask.to(x.device)]  # (N, D); under a device_map the last block may sit elsewhere
        logits = self.lm_head(x)
        return GenjoOutput(logits, presents, tuple(hidden_states) if hidden_states is not None else None)


class GenjoPreTrainedModel(PreTrainedModel):
    config_class = GenjoConfig
    base_model_prefix = "model"
    _no_split_modules = ["GenjoBlock"]
    # Under a device_map, accelerate moves a module's inputs to its device and its outputs back to the
    # input's device; each layer's cache lives on its block's device and the dual cache is updated in
    # place, so neither the cache argument nor the output's cache may be copied.
    _skip_keys_device_placement = ["past_key_values", "cache"]
    _supports_sdpa = True
    supports_gradient_checkpointing = False

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """Truncated-normal init with the std that ``_set_init_std`` attached to each weight's module.

        Transformers calls this on every module, leaves first; only leaves own weights.
        """
        if isinstance(module, RMSNorm):
            nn.init.ones_(module.weight)
        elif isinstance(module, (nn.Linear, nn.Embedding)):
            std = getattr(module, "init_std", self.config.init_std)
            cutoff = self.config.init_cutoff_factor or 3.0
            nn.init.trunc_normal_(module.weight, mean=0.0, std=std, a=-cutoff * std, b=cutoff * std)


def _set_init_std(config: GenjoConfig, model: "GenjoModel") -> None:
    """Attach the init std of every weight: "mitchell" (from fan-in and depth, as the release) or "normal"."""
    if config.init_fn not in ("mitchell", "normal"):
        raise NotImplementedError(f"init_fn={config.init_fn!r} is not implemented (use 'mitchell' or 'normal').")
    mitchell = config.init_fn == "mitchell"
    d = config.d_model
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module.init_std = d**-0.5 if mitchell else config.init_std
    if mitchell:  # residual outputs shrink with depth
        for block in model.transformer.blocks:
            depth = 2 * (block.layer_id + 1)
            block.attn_out.init_std = (d * depth) ** -0.5
            block.ff_out.init_std = (config.mlp_hidden_size * depth) ** -0.5


GENJO_MISSING = (
    "GenjoModelLM.generate() runs Genjo's diffusion sampler, which lives in the genjo package, and that package "
    "cannot be imported here. Install it: `pip install -e .` in a clone of the Genjo repository (or pip install "
    "the genjo package where it is published); or sample from the repository itself: `from genjo import generate; "
    "generate(model, input_ids, ...)` or `python generate.py --model <this checkpoint folder>`. The forward pass "
    "(model(input_ids).logits) needs only torch and transformers."
)

# transformers generate() options with no counterpart in masked diffusion, and what to use instead.
AUTOREGRESSIVE_OPTIONS = {
    "do_sample": "sampling is on when temperature > 0 (temperature=0 is greedy)",
    "top_k": "proposals are drawn from the full softmax at `temperature`",
    "top_p": "proposals are drawn from the full softmax at `temperature`",
    "num_beams": "there is no beam search in diffusion sampling",
    "max_length": "pass max_new_tokens, the answer length",
    "min_new_tokens": "the answer has exactly max_new_tokens slots; EOS fills what the model leaves",
    "num_return_sequences": "repeat the rows of input_ids (at temperature > 0 they then differ)",
    "eos_token_id": "pass eos_id (default: config.eos_token_id)",
    "generation_config": "pass the sampler settings as keyword arguments",
}


def genjo_sampler():
    """The ``genjo.sampling`` and ``genjo.settings`` modules, imported on first use.

    This file must import with torch and transformers alone (it ships as remote code), so the sampler is not
    imported at module level; transformers' check of a remote file's imports skips this try block.
    """
    try:
        from genjo import sampling, settings
    except ImportError as error:
        raise ImportError(GENJO_MISSING) from error
    return sampling, settings


class FinalTokensStreamer:
    """Feeds a transformers-style streamer (``put(tokens)``, ``end()``) the answer tokens that are final.

    A diffusion step commits tokens anywhere in the current block, so the canvas is not text that grows at its
    end. A committed token never changes, though, so the answer's columns before the first still-masked slot
    (in every row) are final: after each step they are put as a (B, n) int64 CPU tensor, left to right, each
    column once. Concatenated, the puts are exactly the new tokens.
    """

    def __init__(self, streamer, prompt_length: int, mask_id: int):
        self.streamer = streamer
        self.prompt_length = prompt_length
        self.mask_id = mask_id
        self.sent = 0  # answer columns already put

    def send_up_to(self, canvas: torch.Tensor) -> None:
        """Put the columns of canvas (B, L + G) that became final since the last call."""
        answer = canvas[:, self.prompt_length :]
        masked = (answer == self.mask_id).any(dim=0)  # (G,): a column is final once no row has a mask there
        final = int(masked.int().argmax()) if bool(masked.any()) else answer.shape[1]
        if final > self.sent:
            self.streamer.put(answer[:, self.sent : final].cpu())
            self.sent = final


class DiffusionGenerate:  # not named *GenerationMixin: transformers would take the model for one of its own
    """``model.generate(...)`` for a Genjo mask predictor, dense or mixture-of-experts: the transformers entry point
    over the one sampler (genjo.sampling), which it imports only when called (remote code needs no genjo)."""

    def generate(
        self,
        input_ids: Optional[torch.LongTensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        *,
        max_new_tokens: Optional[int] = None,
        steps: Optional[int] = None,
        block_length: Optional[int] = None,
        temperature: Optional[float] = None,
        return_new_tokens_only: bool = False,
        streamer=None,
        step_callback=None,
        **settings,
    ) -> torch.LongTensor:
        """Sample answers by reverse masked diffusion: the transformers spelling of ``genjo.generate``.

        ``model.generate(**tokenizer(text, return_tensors="pt"), max_new_tokens=32)`` calls the one sampler,
        ``genjo.sampling.generate``, and returns what it returns. It needs the ``genjo`` package (an ImportError
        says how to install it); the model itself does not.

        input_ids: (B, L) int64 prompt, left-padded when B > 1; attention_mask: (B, L) of 1 / 0, or None.
        max_new_tokens: the answer length (the sampler's gen_length; a multiple of block_length, else a
            ValueError). Every one of these slots is decoded; the model writes EOS after a shorter answer.
        steps, block_length, temperature and the other sampler settings (cfg_scale, remasking, threshold,
            factor, cache, early_stop, logits_eos_inf, confidence_eos_eot_inf, and mask_id, eos_id, eot_id,
            stats): as in ``genjo.generate``. A setting left None takes the checkpoint's config.json
            ``sampler_defaults``, else Genjo's fallback (``genjo.settings.resolve_sampler_settings``).
        return_new_tokens_only: return (B, max_new_tokens), the answer alone.
        streamer: an object with ``put(tokens)`` and ``end()`` (e.g. transformers' TextStreamer). As in
            transformers it first gets the prompt (B, L), then the answer's tokens as they become final: after
            each step, the columns before the first slot still masked in any row, as (B, n); ``end()`` when
            done. Diffusion commits tokens out of order, so a column is streamed only once all of its left is
            committed; with low-confidence remasking that is mostly block by block.
        step_callback: called with genjo's StepInfo (the whole canvas, proposals, confidences, commits) after
            every step: the way to watch the unordered denoising itself.

        Returns the (B, L + max_new_tokens) int64 canvas (prompt, then answer) on input_ids' device, or the
        answer alone with return_new_tokens_only. Raises ValueError naming the argument for bad input.
        """
        sampling, sampler_settings = genjo_sampler()
        # generate()'s keywords outside the settings table: mask_id, eos_id, eot_id, stats
        passed_through = set(inspect.signature(sampling.generate).parameters) - set(sampler_settings.SETTINGS)
        passed_through -= {"model", "prompt", "attention_mask", "step_callback"}
        accepted = set(sampler_settings.SETTINGS) | passed_through
        for name in settings:
            if name not in accepted:
                hint = AUTOREGRESSIVE_OPTIONS.get(name, "")
                raise ValueError(f"{name} is not a setting of Genjo's diffusion sampler{': ' + hint if hint else ''}. "
                                 f"Settings: max_new_tokens, {', '.join(sorted(accepted))}, "
                                 "return_new_tokens_only, streamer, step_callback.")  # fmt: skip
        gen_length = settings.pop("gen_length", None)
        if max_new_tokens is not None and gen_length is not None and max_new_tokens != gen_length:
            raise ValueError(f"max_new_tokens ({max_new_tokens}) and gen_length ({gen_length}) name the same "
                             "answer length: pass one of them.")  # fmt: skip
        if input_ids is None:
            raise ValueError("Pass input_ids, the (B, L) int64 prompt (e.g. **tokenizer(text, return_tensors='pt')).")
        given = dict(settings, gen_length=max_new_tokens if max_new_tokens is not None else gen_length, steps=steps,
                     block_length=block_length, temperature=temperature)  # fmt: skip
        resolved = sampler_settings.resolve_sampler_settings(given, self)
        unset = sorted(name for name in sampler_settings.CORE_SETTINGS if given.get(name) is None)
        if resolved["gen_length"] % resolved["block_length"]:
            raise ValueError(f"max_new_tokens ({resolved['gen_length']}) must be a multiple of block_length "
                             f"({resolved['block_length']}{', the default' if block_length is None else ''})"
                             f": pass block_length={resolved['gen_length']} for a single block, or a max_new_tokens "
                             f"that block_length divides.")  # fmt: skip
        other_keywords = {name: value for name, value in settings.items() if name in passed_through}
        try:
            sampling.check_sampler_settings(self, **resolved, **other_keywords)
        except ValueError as error:
            origin = f"; {', '.join(unset)} came from the checkpoint's sampler_defaults or fallbacks" if unset else ""
            raise ValueError(f"{error} (max_new_tokens is gen_length{origin})") from None
        sampling.check_prompt(self, input_ids)

        prompt_length = input_ids.shape[1]
        callback = step_callback
        if streamer is not None:
            mask_id = settings.get("mask_id")
            final = FinalTokensStreamer(streamer, prompt_length, mask_id if mask_id is not None else
                                        sampling.config_int(self, "mask_token_id"))  # fmt: skip

            def callback(info):
                final.send_up_to(info.canvas)
                if step_callback is not None:
                    step_callback(info)

            streamer.put(input_ids.cpu())
        try:
            canvas = sampling.generate(
                self, input_ids, attention_mask, **resolved, **other_keywords, step_callback=callback
            )
            if streamer is not None:
                final.send_up_to(canvas)  # what early stop filled with EOS after the last step
        finally:
            if streamer is not None:
                streamer.end()
        return canvas[:, prompt_length:] if return_new_tokens_only else canvas


class GenjoModelLM(DiffusionGenerate, GenjoPreTrainedModel):
    """Hugging Face wrapper: ``GenjoModelLM.model`` is the :class:`GenjoModel`; ``generate`` samples answers."""

    supports_logits_mask = True  # forward(logits_mask=...) computes the LM head only where asked

    def __init__(self, config: GenjoConfig, model: Optional[GenjoModel] = None, init_params: bool = False):
        # init_params is accepted for compatibility with the original release; weights are always
        # initialised by post_init (and then overwritten by from_pretrained).
        super().__init__(config)
        self.model = model if model is not None else GenjoModel(config)
        self.post_init()

    def forward(
        self,
        input_ids: Optional[torch.LongTensor] = None,
        inputs_embeds: Optional[torch.FloatTensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        attention_bias: Optional[torch.Tensor] = None,
        past_key_values: Optional[KVCache] = None,
        labels: Optional[torch.LongTensor] = None,
        use_cache: Optional[bool] = None,
        output_attentions: Optional[bool] = None,
        output_hidden_states: Optional[bool] = None,
        return_dict: Optional[bool] = None,
        cache_position: Optional[torch.Tensor] = None,  # ignored: positions come from the mask
        position_ids: Optional[torch.LongTensor] = None,
        replace_position: Optional[torch.BoolTensor] = None,
        logits_mask: Optional[torch.BoolTensor] = None,
        **kwargs,
    ):
        """See :meth:`GenjoModel.forward`. Returns GenjoLMOutput(logits (B, T, V), cache, hidden_states)."""
        check_forward_arguments(input_ids, inputs_embeds, labels, output_attentions)
        if use_cache is None:
            use_cache = self.config.use_cache
        return_dict = return_dict if return_dict is not None else getattr(self.config, "return_dict", True)
        outputs = self.model(
            input_ids,
            input_embeddings=inputs_embeds,
            attention_mask=attention_mask,
            attention_bias=attention_bias,
            past_key_values=past_key_values,
            use_cache=use_cache,
            output_hidden_states=output_hidden_states,
            position_ids=position_ids,
            replace_position=replace_position,
            logits_mask=logits_mask,
        )
        if not return_dict:
            return tuple(v for v in (outputs.logits, outputs.attn_key_values, outputs.hidden_states) if v is not None)
        return GenjoLMOutput(logits=outputs.logits, cache=outputs.attn_key_values, hidden_states=outputs.hidden_states)

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """PreTrainedModel.from_pretrained, but a missing, unexpected or mis-shaped weight is an error.

        Published checkpoints are loaded by their exact key names; silently initialising a missing
        weight at random would give a model that runs and answers nonsense.
        """
        want_info = kwargs.pop("output_loading_info", False)
        # Mis-shaped weights are reported in the loading info (transformers would raise naming none of them).
        kwargs.setdefault("ignore_mismatched_sizes", True)
        model, info = super().from_pretrained(*args, output_loading_info=True, **kwargs)
        raise_on_loading_problems(info, "Genjo", "n_layers, d_model, ...")
        return (model, info) if want_info else model

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.transformer.wte

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.transformer.wte = value

    def get_output_embeddings(self):
        return self.model.transformer.wte if self.config.weight_tying else self.model.transformer.ff_out

    def set_output_embeddings(self, value) -> None:
        if self.config.weight_tying:
            self.model.transformer.wte = value
        else:
            self.model.transformer.ff_out = value

    def tie_weights(self, *args, **kwargs):
        """Weight tying is done in the forward (``lm_head``), never by sharing parameters."""

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Save weights, config, and this modeling code with an ``auto_map`` for remote code."""
        super().save_pretrained(save_directory, *args, **kwargs)
        write_auto_map(save_directory, "configuration_genjo.GenjoConfig", "modeling_genjo.GenjoModelLM")


def check_forward_arguments(input_ids, inputs_embeds, labels, output_attentions) -> None:
    """The Hugging Face forward arguments a Genjo model cannot honour: a ValueError, or a warning for labels."""
    if output_attentions:
        raise ValueError("output_attentions=True is not supported: attention runs in fused SDPA kernels.")
    if labels is not None:
        logger.warning_once("labels are ignored: the diffusion loss lives in genjo.train.losses; loss is None.")
    if input_ids is None and inputs_embeds is None:
        raise ValueError("Pass input_ids (B, T) or inputs_embeds (B, T, D).")


def raise_on_loading_problems(info: dict, architecture: str, fields: str) -> None:
    """ValueError naming the missing, unexpected or mis-shaped weights of a ``from_pretrained`` loading info.

    Published checkpoints are loaded by their exact key names; silently initialising a missing weight at random
    would give a model that runs and answers nonsense. fields: the config fields to check, for the message.
    """
    problems = {k: sorted(info.get(k) or []) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    problems = {k: v for k, v in problems.items() if v}
    if problems:
        details = "; ".join(
            f"{k}: {', '.join(map(str, v[:5]))}{' ...' if len(v) > 5 else ''}" for k, v in problems.items()
        )
        raise ValueError(f"The checkpoint does not match the {architecture} architecture ({details}). "
                         f"Check config.json ({fields}) against the weights.")  # fmt: skip


def write_auto_map(save_directory, config_class: str, model_class: str) -> None:
    """Point a saved folder's config.json ``auto_map`` at the model code saved beside it ("module.Class" names), so
    that ``AutoModel.from_pretrained(folder, trust_remote_code=True)`` loads it with transformers alone."""
    config_path = os.path.join(save_directory, "config.json")
    with open(config_path) as f:
        config = json.load(f)
    config["auto_map"] = {"AutoConfig": config_class, "AutoModel": model_class, "AutoModelForCausalLM": model_class}
    with open(config_path, "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
        f.write("\n")


GenjoConfig.register_for_auto_class()
GenjoModelLM.register_for_auto_class("AutoModel")

__all__ = ["GenjoConfig", "GenjoLMOutput", "GenjoModel", "GenjoModelLM", "GenjoOutput", "GenjoPreTrainedModel"]
