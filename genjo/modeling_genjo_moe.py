"""The Genjo mixture-of-experts mask predictor: the LLaDA-MoE architecture (arXiv 2509.24389).

A bidirectional Transformer whose MLPs are sparse mixtures of SwiGLU experts: each token goes to the
``num_experts_per_tok`` experts its router scores highest (7B parameters, 1.4B active per token in the
published LLaDA-MoE-7B-A1B). Module and parameter names are those of the published checkpoints
(``model.layers.N.self_attn.q_proj.weight``, ``model.layers.N.mlp.experts.E.gate_proj.weight``, ``lm_head.weight``,
...), so those load unchanged. Everything the sampler relies on works as in the dense model (modeling_genjo.py,
whose RMSNorm, RoPE, cached attention, positions and padding bias are reused): attention masks, ``logits_mask``,
the key/value cache with ``replace_position``, meta-device construction, ``device_map``.

Block: h = x + Attn(RMSNorm(x)); out = h + MoE(RMSNorm(h)) (+ a shared expert where configured). Attention:
q/k/v projections, a per-head RMSNorm of q and k (``qk_layernorm``), RoPE, bidirectional softmax attention.

Shapes: B = batch, T = query length, S = key length, D = hidden_size, H = query heads, Hkv = key/value heads,
Dh = head dim, E = experts, k = experts per token, N = tokens routed (B * T, or fewer under an output mask),
V = vocab_size.

This file is copied next to the weights by ``save_pretrained`` and imported there as remote code, so it depends
on nothing but ``torch``, ``transformers``, ``modeling_genjo.py`` and the two configuration files.
"""

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.utils import ModelOutput

from .configuration_genjo_moe import GenjoMoeConfig
from .modeling_genjo import (
    DiffusionGenerate,
    KVCache,
    RMSNorm,
    RotaryEmbedding,
    additive_attention_bias,
    apply_rotary,
    cached_attention,
    check_forward_arguments,
    key_length,
    query_positions,
    raise_on_loading_problems,
    write_auto_map,
)


@dataclass
class GenjoMoeLMOutput(ModelOutput):
    """What GenjoMoeModelLM returns: ``logits`` (B, T, V) (or (N, V) under ``logits_mask``), ``cache`` (a KVCache
    when use_cache, also readable as ``past_key_values``), ``hidden_states``, and with ``output_router_logits``
    the routers' logits (one (B*T, E) tensor per MoE block) and ``aux_loss``, their load-balancing loss."""

    loss: Optional[torch.Tensor] = None
    aux_loss: Optional[torch.Tensor] = None
    logits: Optional[torch.Tensor] = None
    cache: Optional[KVCache] = None
    hidden_states: Optional[tuple[torch.Tensor, ...]] = None
    router_logits: Optional[tuple[torch.Tensor, ...]] = None

    @property
    def past_key_values(self) -> Optional[KVCache]:
        return self.cache


def load_balancing_loss(router_logits: tuple[torch.Tensor, ...], num_experts: int, top_k: int) -> torch.Tensor:
    """The Switch Transformer load-balancing loss in Mixtral's top-k form (arXiv 2101.03961, eq. 4-6).

    router_logits: one (N, E) tensor per MoE block. Over all blocks' tokens together, f[j, e] is the share of
    tokens whose j-th choice is expert e and P[e] the mean router probability of e; the loss is
    E * sum_{j,e} f[j, e] P[e] (fp32 scalar): k when every expert gets the same share, up to E * k when one expert
    takes every token. Differentiable through P (the choices are not).
    """
    logits = torch.cat([layer.float().to(router_logits[0].device) for layer in router_logits])  # (L * N, E)
    probs = logits.softmax(dim=-1)
    chosen = probs.topk(top_k, dim=-1).indices  # (L * N, k)
    share = F.one_hot(chosen, num_experts).float().mean(dim=0)  # (k, E)
    return num_experts * (share * probs.mean(dim=0)).sum()


class ExpertMLP(nn.Module):
    """SwiGLU MLP: down_proj(silu(gate_proj(x)) * up_proj(x)); x (..., D) -> (..., D). An expert, a shared expert
    or a dense block's MLP, by its hidden size."""

    def __init__(self, hidden_size: int, intermediate_size: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class SparseMoe(nn.Module):
    """The router (``gate``) and the experts of one block.

    Router, as the release's code: logits in the model's dtype, softmax over the E experts in fp32, plus the expert
    bias where enabled (the biased scores are also the weights), top-k; the k weights renormalised to sum to 1 only
    with ``norm_topk_prob`` (never in the release) and multiplied by ``routed_scaling_factor`` (1 in the release),
    then cast to the model's dtype. Output: sum over the chosen experts of weight x expert(x).
    """

    def __init__(self, config: GenjoMoeConfig):
        super().__init__()
        self.num_experts, self.top_k = config.num_experts, config.num_experts_per_tok
        self.norm_topk_prob, self.scaling = bool(config.norm_topk_prob), float(config.routed_scaling_factor)
        self.gate = nn.Linear(config.hidden_size, config.num_experts, bias=False)
        self.experts = nn.ModuleList(
            ExpertMLP(config.hidden_size, config.expert_intermediate_size) for _ in range(config.num_experts)
        )
        if config.moe_router_enable_expert_bias:
            self.register_buffer("expert_bias", torch.zeros(config.num_experts))  # saved: part of the checkpoint
        else:
            self.expert_bias = None

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (N, D) -> router logits (N, E) in x's dtype, weights (N, k) in x's dtype, experts (N, k) int64."""
        logits = self.gate(x)
        scores = logits.softmax(dim=-1, dtype=torch.float32)
        if self.expert_bias is not None:
            scores = scores + self.expert_bias
        weights, experts = scores.topk(self.top_k, dim=-1)
        if self.norm_topk_prob:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        if self.scaling != 1.0:
            weights = weights * self.scaling
        return logits, weights.to(x.dtype), experts

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (N, D) -> (output (N, D), router logits (N, E)).

        Dispatch grouped by expert: the N*k (token, choice) pairs are sorted by expert once, each expert runs on its
        contiguous slice of rows and adds its weighted outputs back to its tokens (in expert order for each token,
        as the release adds them). The loop is over the E experts, never over tokens.
        """
        logits, weights, experts = self.route(x)
        flat = experts.flatten()  # (N*k,): the expert of pair (token n, choice j) at n*k + j
        order = flat.argsort(stable=True)
        token = order // self.top_k  # (N*k,) the token of each sorted pair
        if x.device.type == "meta":  # shapes only (benchmarks' dry runs): an even split stands for the routing
            share, extra = divmod(len(flat), self.num_experts)
            counts = [share + (e < extra) for e in range(self.num_experts)]
        else:
            counts = torch.bincount(flat, minlength=self.num_experts).tolist()  # the one host sync
        pair_weights = weights.flatten()[order, None]  # (N*k, 1), grouped by expert as token
        out = torch.zeros_like(x)
        # An idle expert still runs (on no rows) when gradients flow, so that every parameter is in the graph:
        # data-parallel training (DDP) fails on a step where a parameter receives no gradient on some process.
        run_idle = torch.is_grad_enabled()
        for e, (tokens, w) in enumerate(zip(token.split(counts), pair_weights.split(counts))):
            if counts[e] or run_idle:  # gathered per expert: no (N*k, D) copy of the input
                out.index_add_(0, tokens, self.experts[e](x[tokens]) * w)
        return out, logits


class GenjoMoeBlock(nn.Module):
    """Pre-norm block: h = x + Attn(input_layernorm(x)); out = h + MLP(post_attention_layernorm(h)), the MLP being
    the mixture of experts (plus the shared expert where configured) or, for a dense block, one SwiGLU MLP."""

    def __init__(self, config: GenjoMoeConfig, layer_id: int):
        super().__init__()
        self.layer_id = layer_id
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = GenjoMoeAttention(config)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.is_moe = bool(config.moe_layer_freq[layer_id])
        if self.is_moe:
            self.mlp = SparseMoe(config)
            if config.shared_expert_intermediate_size is not None:
                self.shared_expert = ExpertMLP(config.hidden_size, config.shared_expert_intermediate_size)
        else:
            self.mlp = ExpertMLP(config.hidden_size, config.dense_intermediate_size)

    def forward(
        self, x, rope, attention_bias=None, layer_past=None, replace_position=None, use_cache=False, output_mask=None
    ):
        """x: (B, T, D); rope: cos, sin (B, 1, T, Dr). Returns (B, T, D), the present K/V, and the router logits
        (N, E) (None for a dense block).

        output_mask: optional (B, T) bool; every position still serves as a key and value, but the output
        projection and the MLP run only there and the block returns (N, D).
        """
        a, present = self.self_attn(
            self.input_layernorm(x), rope, attention_bias, layer_past, replace_position, use_cache, output_mask
        )
        h = (x if output_mask is None else x[output_mask]) + a
        n = self.post_attention_layernorm(h)
        flat = n.reshape(-1, n.shape[-1])  # (N, D)
        router_logits = None
        if self.is_moe:
            mixed, router_logits = self.mlp(flat)
            if hasattr(self, "shared_expert"):
                mixed = mixed + self.shared_expert(flat)
        else:
            mixed = self.mlp(flat)
        return h + mixed.view(h.shape), present, router_logits


class GenjoMoeAttention(nn.Module):
    """Bidirectional multi-head attention with per-head q/k RMSNorm (``qk_layernorm``), optional biases and
    ``clip_qkv``, RoPE over the first Dr = Dh * partial_rotary_factor dims, grouped-query attention."""

    def __init__(self, config: GenjoMoeConfig):
        super().__init__()
        d, self.n_heads, self.n_kv_heads = config.hidden_size, config.num_attention_heads, config.num_key_value_heads
        self.head_dim = d // self.n_heads
        self.clip_qkv = config.clip_qkv
        bias = bool(config.attention_bias)
        self.q_proj = nn.Linear(d, self.n_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(d, self.n_kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(d, self.n_kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, d, bias=bias)
        if config.qk_layernorm:  # one weight of Dh, shared by every head
            self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
            self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps)

    def forward(self, x, rope, attention_bias, layer_past, replace_position, use_cache, output_mask=None):
        """Attention of the T queries in x (B, T, D) over all S keys (the cache: ``cached_attention``).

        Returns (B, T, D), or (N, D) for the N true positions of ``output_mask`` (B, T) bool, and the present K/V.
        """
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim)
        k = self.k_proj(x).view(B, T, self.n_kv_heads, self.head_dim)
        v = self.v_proj(x).view(B, T, self.n_kv_heads, self.head_dim)
        if hasattr(self, "q_norm"):
            q, k = self.q_norm(q), self.k_norm(k)
        if self.clip_qkv is not None:
            q, k, v = (t.clamp(-self.clip_qkv, self.clip_qkv) for t in (q, k, v))
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, heads, T, Dh)
        q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        out, present = cached_attention(q, k, v, attention_bias, layer_past, replace_position, use_cache)
        out = out.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim)
        if output_mask is not None:
            out = out[output_mask]  # (N, H * Dh)
        return self.o_proj(out), present


def check_supported(config: GenjoMoeConfig) -> None:
    """ValueError naming the config key that this implementation cannot run (before any weight is built)."""
    problems = []
    if config.hidden_act != "silu":
        problems.append(f"hidden_act={config.hidden_act!r} (only 'silu')")
    if getattr(config, "rope_scaling", None) is not None:
        problems.append(f"rope_scaling={config.rope_scaling!r} (only null: plain RoPE)")
    if config.moe_router_score_function not in (None, "softmax"):
        problems.append(f"moe_router_score_function={config.moe_router_score_function!r} (only 'softmax')")
    if (config.router_num_group or 1) > 1 or (config.router_topk_group or 1) > 1:
        problems.append(f"router_num_group={config.router_num_group}, router_topk_group={config.router_topk_group} "
                        "(grouped routing is not implemented: leave them null)")  # fmt: skip
    if config.attention_dropout:
        problems.append(f"attention_dropout={config.attention_dropout} (only 0)")
    if not 0 < (config.partial_rotary_factor or 0) <= 1:
        problems.append(f"partial_rotary_factor={config.partial_rotary_factor} (must be in (0, 1])")
    if config.hidden_size % config.num_attention_heads or config.num_attention_heads % config.num_key_value_heads:
        problems.append(f"hidden_size={config.hidden_size}, num_attention_heads={config.num_attention_heads}, "
                        f"num_key_value_heads={config.num_key_value_heads} (hidden_size must divide by the heads, "
                        "the heads by the key/value heads)")  # fmt: skip
    if not 1 <= config.num_experts_per_tok <= config.num_experts:
        problems.append(f"num_experts_per_tok={config.num_experts_per_tok} (must be 1..num_experts="
                        f"{config.num_experts})")  # fmt: skip
    if len(config.moe_layer_freq) != config.num_hidden_layers or set(config.moe_layer_freq) - {0, 1}:
        problems.append(f"moe_layer_freq={config.moe_layer_freq} (one 0 (dense) or 1 (MoE) per block, "
                        f"num_hidden_layers={config.num_hidden_layers})")  # fmt: skip
    if problems:
        raise ValueError("GenjoMoeConfig cannot be run: " + "; ".join(problems) + ".")


class GenjoMoeModel(nn.Module):
    """Embedding, blocks and final norm, under the published names (``embed_tokens``, ``layers``, ``norm``)."""

    def __init__(self, config: GenjoMoeConfig):
        super().__init__()
        check_supported(config)
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(GenjoMoeBlock(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(config)  # shared by all blocks; holds no parameters

    def forward(
        self,
        input_ids: Optional[torch.LongTensor],
        inputs_embeds: Optional[torch.FloatTensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        attention_bias: Optional[torch.Tensor] = None,
        past_key_values: Optional[KVCache] = None,
        use_cache: bool = False,
        output_hidden_states: bool = False,
        position_ids: Optional[torch.LongTensor] = None,
        replace_position: Optional[torch.BoolTensor] = None,
        output_mask: Optional[torch.BoolTensor] = None,
    ):
        """Final hidden states (B, T, D) after ``norm``, or (N, D) at the N true positions of output_mask (B, T).

        The arguments mean what they mean in GenjoModel.forward (modeling_genjo.py): attention_mask (B, S) of 1/0
        over all keys, cached ones included; position_ids (B, T), by default from the mask; past_key_values /
        replace_position: the prefix and dual caches. Returns (hidden, presents (a KVCache or None), hidden_states
        (n_layers + 1 tensors or None), router_logits (one (N_l, E) tensor per MoE block)).
        """
        x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        B, T, _ = x.shape
        S = key_length(past_key_values, replace_position, T)
        if attention_mask is not None and attention_mask.shape != (B, S):
            raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}; expected (B, S) = {(B, S)}.")
        position_ids, max_position = query_positions(attention_mask, position_ids, replace_position, B, T, S, x.device)
        rope = self.rotary_emb(position_ids, max_position)
        bias = additive_attention_bias(attention_mask, attention_bias, T, S, x.dtype, False, x.device)
        hidden_states = [] if output_hidden_states else None
        presents = [] if use_cache else None
        router_logits = []
        for i, block in enumerate(self.layers):
            if hidden_states is not None:
                hidden_states.append(x)
            layer_past = past_key_values[i] if past_key_values is not None else None
            last_mask = output_mask if i == len(self.layers) - 1 else None
            x, present, logits = block(x, rope, bias, layer_past, replace_position, use_cache, last_mask)
            if presents is not None:
                presents.append(present)
            if logits is not None:
                router_logits.append(logits)
        x = self.norm(x)
        if hidden_states is not None:
            hidden_states.append(x)
        return x, presents, tuple(hidden_states) if hidden_states is not None else None, tuple(router_logits)


class GenjoMoePreTrainedModel(PreTrainedModel):
    config_class = GenjoMoeConfig
    base_model_prefix = "model"
    _no_split_modules = ["GenjoMoeBlock"]  # a block (its experts with it) is the unit of device_map and FSDP
    # Each layer's cache lives on its block's device and the dual cache is updated in place (modeling_genjo.py).
    _skip_keys_device_placement = ["past_key_values", "cache"]
    # A tied folder may still carry lm_head.weight (a copy of the embedding); the forward uses the embedding.
    _keys_to_ignore_on_load_unexpected = [r"^lm_head\.weight$"]
    _supports_sdpa = True
    supports_gradient_checkpointing = False

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """N(0, initializer_range) for linear and embedding weights (as the release), zero biases, unit norms."""
        if isinstance(module, RMSNorm):
            nn.init.ones_(module.weight)
        elif isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=self.config.initializer_range)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, SparseMoe) and module.expert_bias is not None:
            nn.init.zeros_(module.expert_bias)


class GenjoMoeModelLM(DiffusionGenerate, GenjoMoePreTrainedModel):
    """Hugging Face wrapper: ``model`` is the :class:`GenjoMoeModel`, ``lm_head`` the output projection (absent
    when ``tie_word_embeddings``: the embedding is used)."""

    supports_logits_mask = True  # forward(logits_mask=...) computes the LM head only where asked

    def __init__(self, config: GenjoMoeConfig):
        super().__init__(config)
        self.model = GenjoMoeModel(config)
        if not config.tie_word_embeddings:
            self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def output_projection(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits (..., V) from final hidden states (..., D)."""
        if self.config.tie_word_embeddings:
            return F.linear(hidden, self.model.embed_tokens.weight)
        return self.lm_head(hidden)

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
        output_router_logits: bool = False,
        return_dict: Optional[bool] = None,
        cache_position: Optional[torch.Tensor] = None,  # ignored: positions come from the mask
        position_ids: Optional[torch.LongTensor] = None,
        replace_position: Optional[torch.BoolTensor] = None,
        logits_mask: Optional[torch.BoolTensor] = None,
        last_logits_only: bool = False,
        **kwargs,
    ):
        """Logits for every query position.

        input_ids: (B, T) int64, or inputs_embeds (B, T, D). attention_mask (B, S), attention_bias,
        past_key_values / replace_position, position_ids: as GenjoModelLM (modeling_genjo.py).
        logits_mask: optional (B, T) bool; logits only there, returned as (N, V) in row-major order; the last
            block's output projection and MLP (its experts) run only there too.
        output_router_logits: also return the routers' logits and their load-balancing loss (``aux_loss``,
            unweighted: training multiplies it by ``router_aux_loss_coef``).
        Returns GenjoMoeLMOutput(logits (B, T, V) in the model's dtype, cache, hidden_states, router_logits,
        aux_loss).
        """
        check_forward_arguments(input_ids, inputs_embeds, labels, output_attentions)
        use_cache = self.config.use_cache if use_cache is None else use_cache
        return_dict = return_dict if return_dict is not None else getattr(self.config, "return_dict", True)
        # Outputs are wanted only where logits are: the last block runs its output projection and MLP there alone.
        output_mask = logits_mask if not output_hidden_states and not last_logits_only else None
        hidden, presents, hidden_states, router_logits = self.model(
            input_ids, inputs_embeds, attention_mask, attention_bias, past_key_values, use_cache,
            bool(output_hidden_states), position_ids, replace_position, output_mask,
        )  # fmt: skip
        if last_logits_only:
            hidden = hidden[:, -1:, :]
        elif logits_mask is not None and output_mask is None:
            hidden = hidden[logits_mask.to(hidden.device)]  # (N, D)
        logits = self.output_projection(hidden)
        aux_loss = None
        if output_router_logits and router_logits:
            aux_loss = load_balancing_loss(router_logits, self.config.num_experts, self.config.num_experts_per_tok)
        if not return_dict:
            return tuple(v for v in (logits, presents, hidden_states) if v is not None)
        return GenjoMoeLMOutput(logits=logits, cache=presents, hidden_states=hidden_states, aux_loss=aux_loss,
                                router_logits=router_logits if output_router_logits else None)  # fmt: skip

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """PreTrainedModel.from_pretrained, but a missing (an expert, the expert bias, ...), unexpected or
        mis-shaped weight is an error naming the key."""
        want_info = kwargs.pop("output_loading_info", False)
        # Mis-shaped weights are reported in the loading info (transformers would raise naming none of them).
        kwargs.setdefault("ignore_mismatched_sizes", True)
        model, info = super().from_pretrained(*args, output_loading_info=True, **kwargs)
        fields = "num_hidden_layers, hidden_size, num_experts, expert_intermediate_size, ..."
        raise_on_loading_problems(info, "Genjo MoE (LLaDA-MoE)", fields)
        return (model, info) if want_info else model

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.embed_tokens = value

    def get_output_embeddings(self):
        return self.model.embed_tokens if self.config.tie_word_embeddings else self.lm_head

    def set_output_embeddings(self, value) -> None:
        if self.config.tie_word_embeddings:
            self.model.embed_tokens = value
        else:
            self.lm_head = value

    def tie_weights(self, *args, **kwargs):
        """Weight tying is done in the forward (``output_projection``), never by sharing parameters."""

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Save weights, config, and this modeling code (with the files it imports) with an ``auto_map``."""
        super().save_pretrained(save_directory, *args, **kwargs)
        write_auto_map(save_directory, "configuration_genjo_moe.GenjoMoeConfig", "modeling_genjo_moe.GenjoMoeModelLM")


GenjoMoeConfig.register_for_auto_class()
GenjoMoeModelLM.register_for_auto_class("AutoModel")

__all__ = ["GenjoMoeConfig", "GenjoMoeLMOutput", "GenjoMoeModel", "GenjoMoeModelLM", "GenjoMoePreTrainedModel"]
