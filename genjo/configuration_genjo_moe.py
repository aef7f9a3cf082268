"""Configuration of the Genjo mixture-of-experts mask predictor (the LLaDA-MoE architecture, arXiv 2509.24389).

The field names are those of the published LLaDA-MoE checkpoints' ``config.json`` (``hidden_size``,
``num_experts``, ``expert_intermediate_size``, ...), so a published folder loads as it is. Genjo's names of the
dense model (``d_model``, ``n_layers``, ``n_heads``, ``n_kv_heads``, ``max_sequence_length``, ``embedding_size``)
are aliases of them, so the sampler, the likelihood and the scripts read either model the same way.

A published folder names ``"model_type": "llada"`` (the dense 8B's string too) and ``"architectures":
["LLaDAMoEModelLM"]``; its config is read for its architecture fields, translated to what the release's modeling
code does (GUIDELINES.md, "Deliberate differences"): the top-k weights are never renormalised and never scaled,
the router's score is always the softmax.

This file is copied next to the weights by ``save_pretrained`` and imported there as remote code, so it depends
on nothing but ``transformers`` and ``configuration_genjo.py``.
"""

from transformers import PretrainedConfig

from .configuration_genjo import RELEASE_SAMPLER_DEFAULTS, take_fields

# The published LLaDA-MoE-7B-A1B architecture (16 blocks, all MoE; 64 experts, 8 per token). Every field can be
# overridden by keyword; a folder's config.json overrides them all.
LLADA_MOE_7B_DEFAULTS = {
    "vocab_size": 157184,
    "hidden_size": 2048,
    "dense_intermediate_size": 8192,  # the MLP of a dense block (moe_layer_freq 0); the 7B has none
    "expert_intermediate_size": 1024,
    "shared_expert_intermediate_size": None,  # None: no shared expert
    "num_hidden_layers": 16,
    "num_attention_heads": 16,
    "num_key_value_heads": None,  # None means num_attention_heads (no grouped-query attention)
    "hidden_act": "silu",
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-5,
    "rope_theta": 50000.0,
    "partial_rotary_factor": 1.0,  # share of each head's dims that RoPE turns
    "attention_bias": False,
    "attention_dropout": 0.0,
    "clip_qkv": None,
    "num_experts": 64,
    "num_experts_per_tok": 8,
    "router_aux_loss_coef": 0.01,  # weight of the load-balancing loss in training
    "norm_topk_prob": False,  # renormalise the top-k router weights to sum to 1
    "qk_layernorm": True,  # RMSNorm over each head's query and key vectors (one weight of head_dim, shared by heads)
    "moe_layer_freq": None,  # per block 1 (MoE) or 0 (dense MLP); None: every block is MoE
    "moe_router_enable_expert_bias": False,  # a per-expert bias added to the router's scores before the top-k
    "moe_router_score_function": "softmax",
    "routed_scaling_factor": 1.0,  # multiplies the top-k weights
    "initializer_range": 0.02,
    "mask_token_id": 156895,
    "eos_token_id": 156892,
    "pad_token_id": 156892,
    "bos_token_id": None,
    "eot_token_id": None,  # None: the EOS (a published folder's <|role_end|> is read from its tokenizer)
}

# The names under which the original release published this architecture (model_type "llada" alone is not enough:
# the dense 8B's config has it too).
RELEASE_MOE_ARCHITECTURES = ("LLaDAMoEModelLM", "LLaDAMoEModel")
# Config keys that only a mixture-of-experts config holds: what tells a folder's config.json apart from a dense one.
MOE_CONFIG_KEYS = ("num_experts", "expert_intermediate_size", "num_experts_per_tok")
# Release fields its modeling code reads but never uses: Genjo's config takes the behaviour the code has.
# (router_num_group and router_topk_group, also unused, are dropped.)
RELEASE_BEHAVIOUR = {"norm_topk_prob": False, "routed_scaling_factor": 1.0, "moe_router_score_function": "softmax"}


class GenjoMoeConfig(PretrainedConfig):
    """Hyper-parameters of :class:`GenjoMoeModelLM` (defaults: the published LLaDA-MoE-7B-A1B)."""

    model_type = "genjo_moe"
    keys_to_ignore_at_inference = ["cache", "past_key_values"]
    attribute_map = {
        "d_model": "hidden_size",
        "n_layers": "num_hidden_layers",
        "n_heads": "num_attention_heads",
        "n_kv_heads": "num_key_value_heads",
        "max_sequence_length": "max_position_embeddings",
        "embedding_size": "vocab_size",
        "weight_tying": "tie_word_embeddings",
    }

    def __init__(self, use_cache: bool = False, rope_scaling=None, router_num_group=None, router_topk_group=None,
                 **kwargs):  # fmt: skip
        # A published config names the original release; those names must not leak into a folder Genjo saves (its
        # auto_map would point at modules that are not there), and its fields mean what the release's code does.
        if any(a in RELEASE_MOE_ARCHITECTURES for a in kwargs.get("architectures") or []):
            for name in ("architectures", "auto_map", "model_type"):
                kwargs.pop(name, None)
            kwargs.update(RELEASE_BEHAVIOUR)
            router_num_group = router_topk_group = None
            kwargs.setdefault("sampler_defaults", dict(RELEASE_SAMPLER_DEFAULTS))
        fields = take_fields(kwargs, self.attribute_map, LLADA_MOE_7B_DEFAULTS)
        if fields["num_key_value_heads"] is None:
            fields["num_key_value_heads"] = fields["num_attention_heads"]
        if fields["moe_layer_freq"] is None:
            fields["moe_layer_freq"] = [1] * fields["num_hidden_layers"]
        if fields["eot_token_id"] is None:
            fields["eot_token_id"] = fields["eos_token_id"]
        token_ids = {k: fields.pop(k) for k in ("eos_token_id", "pad_token_id", "bos_token_id")}
        tie = kwargs.pop("tie_word_embeddings", False)
        for name, value in fields.items():
            setattr(self, name, value)
        if rope_scaling is not None:  # not implemented: kept only so that the model can refuse it
            self.rope_scaling = rope_scaling
        # Grouped routing (router_num_group groups, router_topk_group of them kept) is not implemented: kept only
        # so that the model can refuse a config that asks for it.
        self.router_num_group = router_num_group
        self.router_topk_group = router_topk_group
        self.use_cache = use_cache
        kwargs.setdefault("architectures", ["GenjoMoeModelLM"])
        super().__init__(**token_ids, tie_word_embeddings=tie, **kwargs)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def moe_layers(self) -> list[int]:
        """Indices of the blocks whose MLP is the mixture of experts (the others have a dense MLP)."""
        return [i for i, kind in enumerate(self.moe_layer_freq) if kind]
