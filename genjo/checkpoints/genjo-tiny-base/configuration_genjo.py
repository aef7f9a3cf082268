"""Configuration of the Genjo mask predictor.

The field names are those of the published 8B checkpoints' ``config.json`` (OLMo-style names such
as ``d_model`` and ``n_layers``), so a published folder loads as it is. The usual Hugging Face names
(``hidden_size``, ``num_hidden_layers``, ``num_attention_heads``, ...) are aliases of them.

This file is copied next to the weights by ``save_pretrained`` and imported there as remote code,
so it depends on nothing but ``transformers``.
"""

from transformers import PretrainedConfig

# The published 8B architecture. Every field can be overridden by keyword.
GENJO_8B_DEFAULTS = {
    "d_model": 4096,
    "n_heads": 32,
    "n_kv_heads": None,  # None means n_heads (no grouped-query attention)
    "n_layers": 32,
    "mlp_ratio": 4,
    "mlp_hidden_size": 12288,
    "activation_type": "silu",
    "block_type": "llama",
    "block_group_size": 1,
    "alibi": False,
    "alibi_bias_max": 8.0,
    "rope": True,
    "rope_full_precision": True,
    "rope_theta": 500000.0,
    "flash_attention": False,
    "attention_dropout": 0.0,
    "multi_query_attention": None,
    "attention_layer_norm": False,
    "attention_layer_norm_with_affine": True,
    "residual_dropout": 0.0,
    "embedding_dropout": 0.0,
    "input_emb_norm": False,
    "layer_norm_type": "rms",
    "layer_norm_with_affine": True,
    "rms_norm_eps": 1e-5,
    "max_sequence_length": 4096,
    "include_bias": False,
    "include_qkv_bias": False,
    "bias_for_layer_norm": False,
    "scale_logits": False,
    "clip_qkv": None,
    "vocab_size": 126464,
    "embedding_size": 126464,
    "weight_tying": False,
    "init_device": None,
    "init_fn": "mitchell",
    "init_std": 0.02,
    "init_cutoff_factor": None,
    "precision": "amp_bf16",
    "mask_token_id": 126336,
    "eos_token_id": 126081,
    "pad_token_id": 126081,
    "bos_token_id": 126080,
    "eot_token_id": 126348,
}

# Names under which the original release published the same architecture. A config.json that
# carries them is read for its architecture fields only.
RELEASE_MODEL_TYPES = ("llada",)
RELEASE_ARCHITECTURES = ("LLaDAModelLM",)
# The sampler settings of the original release's own scripts (its generate.py and chat.py): what a published
# folder, which names none, samples with when the user sets nothing (genjo/settings.py resolves them).
RELEASE_SAMPLER_DEFAULTS = {"gen_length": 128, "steps": 128, "block_length": 32, "temperature": 0.0,
                            "remasking": "low_confidence"}  # fmt: skip


def take_fields(kwargs: dict, attribute_map: dict, defaults: dict) -> dict:
    """The architecture fields of a config's keyword arguments: the defaults, overridden by the keys of defaults
    found in kwargs under their names or their ``attribute_map`` aliases (popped from kwargs)."""
    for alias, name in attribute_map.items():
        if alias in kwargs:
            kwargs[name] = kwargs.pop(alias)
    return {**defaults, **{k: kwargs.pop(k) for k in list(kwargs) if k in defaults}}


class GenjoConfig(PretrainedConfig):
    """Hyper-parameters of :class:`GenjoModelLM` (defaults: the published 8B model).

    Only the Llama-style block is implemented (RMSNorm, SiLU-gated MLP, RoPE, no biases); other
    values of the enum fields parse, and the model raises ``NotImplementedError`` for them.
    """

    model_type = "genjo"
    keys_to_ignore_at_inference = ["cache", "past_key_values"]
    attribute_map = {
        "hidden_size": "d_model",
        "num_hidden_layers": "n_layers",
        "num_attention_heads": "n_heads",
        "num_key_value_heads": "n_kv_heads",
        "intermediate_size": "mlp_hidden_size",
        "max_position_embeddings": "max_sequence_length",
    }

    def __init__(self, use_cache: bool = False, causal: bool = False, rope_extension=None, **kwargs):
        # Published checkpoints name the original release here; those names must not leak into a
        # folder that Genjo saves (its auto_map would point at modules that are not there).
        if kwargs.get("model_type") in RELEASE_MODEL_TYPES:
            kwargs.pop("model_type")
            kwargs.setdefault("sampler_defaults", dict(RELEASE_SAMPLER_DEFAULTS))
        if any(a in RELEASE_ARCHITECTURES for a in kwargs.get("architectures") or []):
            kwargs.pop("architectures")
            kwargs.pop("auto_map", None)
            kwargs.setdefault("sampler_defaults", dict(RELEASE_SAMPLER_DEFAULTS))
        fields = take_fields(kwargs, self.attribute_map, GENJO_8B_DEFAULTS)
        if fields["n_kv_heads"] is None:
            fields["n_kv_heads"] = fields["n_heads"]
        if fields["embedding_size"] is None:
            fields["embedding_size"] = fields["vocab_size"]
        if fields["mlp_hidden_size"] is None:
            fields["mlp_hidden_size"] = fields["mlp_ratio"] * fields["d_model"]
        token_ids = {k: fields.pop(k) for k in ("eos_token_id", "pad_token_id", "bos_token_id")}
        for name, value in fields.items():
            setattr(self, name, value)
        self.use_cache = use_cache
        # True only for the autoregressive twin of the reversal experiment (a causal mask, trained on the
        # next-token loss); every Genjo mask predictor is bidirectional.
        self.causal = causal
        # A context extension by RoPE base scaling (genjo.long_context.extend_context), or None: a dict with
        # "factor" (the model's RoPE base is rope_theta x factor; rope_theta stays the trained base),
        # "rope_scaling" (the law that chose it: "ntk", "diffusion-aware", "none" or "factor"), "train_length"
        # (the trained context) and "context_length" (the target, also max_sequence_length).
        self.rope_extension = rope_extension
        kwargs.setdefault("architectures", ["GenjoModelLM"])
        kwargs.setdefault("tie_word_embeddings", fields["weight_tying"])
        super().__init__(**token_ids, **kwargs)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def rope_base(self) -> float:
        """The RoPE base the model runs with: rope_theta, times the factor of a context extension if any."""
        extension = getattr(self, "rope_extension", None)
        if not extension or extension.get("factor", 1.0) == 1.0:
            return self.rope_theta
        return self.rope_theta * extension["factor"]
