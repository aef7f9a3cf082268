"""Small LLaDA-MoE folders in the published layout, their weights reproduced from a seed.

``published_moe_folder(path, name, dtype)`` writes what a published LLaDA-MoE checkpoint holds: a config.json naming
``"model_type": "llada"`` and ``"architectures": ["LLaDAMoEModelLM"]`` with the release's config keys and an
``auto_map`` to the release's remote-code files (absent here), the weights under the published names in two
safetensors shards with an index. The weights are drawn from a seed key by key, independently of Genjo's model
code, so the same folder can be rebuilt anywhere: tests/fixtures/moe_reference.json holds the logits the release's
own modeling code gave on these folders (tests/fixtures/record_moe_reference.py), and tests/test_moe.py checks
Genjo's against them.
"""

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

# The release's config keys, at small sizes: head_dim 16, 8 experts, 2 per token. Each variant turns on what the
# issue asks to be checked (qk-norm off, GQA, a shared expert, the expert bias, a tied head) plus the fields whose
# release behaviour differs from their name (norm_topk_prob, routed_scaling_factor: ignored by the release's code).
BASE_CONFIG = {
    "vocab_size": 96,
    "hidden_size": 64,
    "dense_intermediate_size": 96,
    "expert_intermediate_size": 32,
    "shared_expert_intermediate_size": None,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "hidden_act": "silu",
    "max_position_embeddings": 64,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "partial_rotary_factor": 1.0,
    "rope_scaling": None,
    "attention_bias": False,
    "clip_qkv": None,
    "num_experts": 8,
    "num_experts_per_tok": 2,
    "router_aux_loss_coef": 0.01,
    "norm_topk_prob": False,
    "qk_layernorm": True,
    "moe_layer_freq": [1, 1],
    "moe_router_enable_expert_bias": False,
    "moe_router_score_function": "softmax",
    "routed_scaling_factor": 1,
    "router_num_group": None,
    "router_topk_group": None,
    "tie_word_embeddings": False,
    "eos_token_id": 1,
    "pad_token_id": 1,
    "use_cache": False,
}
VARIANTS = {
    "base": {},
    "gqa_no_qknorm_bias_clip": {
        "num_key_value_heads": 2,
        "qk_layernorm": False,
        "attention_bias": True,
        "clip_qkv": 1.5,
    },
    "shared_expert_bias": {
        "shared_expert_intermediate_size": 48,
        "moe_router_enable_expert_bias": True,
        "norm_topk_prob": True,
        "routed_scaling_factor": 2.5,
    },
    "tied_dense_partial_rope": {
        "tie_word_embeddings": True,
        "moe_layer_freq": [0, 1],
        "partial_rotary_factor": 0.5,
        "num_experts_per_tok": 3,
    },
}
RELEASE_AUTO_MAP = {
    "AutoConfig": "configuration_lladamoe.LLaDAConfig",
    "AutoModel": "modeling_lladamoe.LLaDAMoEModelLM",
    "AutoModelForCausalLM": "modeling_lladamoe.LLaDAMoEModelLM",
}
SEED = 2024


def release_config(name: str) -> dict:
    """The config.json of variant ``name``, as the release writes it."""
    config = {**BASE_CONFIG, **VARIANTS[name]}
    return {**config, "model_type": "llada", "architectures": ["LLaDAMoEModelLM"], "auto_map": RELEASE_AUTO_MAP,
            "torch_dtype": "bfloat16"}  # fmt: skip


def weight_shapes(config: dict) -> dict[str, tuple]:
    """Published weight name -> shape, in a fixed order, for a release config."""
    d, v, heads, kv = (config[k] for k in ("hidden_size", "vocab_size", "num_attention_heads", "num_key_value_heads"))
    head_dim = d // heads
    shapes = {"model.embed_tokens.weight": (v, d)}
    for i, kind in enumerate(config["moe_layer_freq"]):
        p = f"model.layers.{i}."
        shapes[p + "input_layernorm.weight"] = (d,)
        for name, rows in (("q", heads), ("k", kv), ("v", kv), ("o", heads)):
            shapes[p + f"self_attn.{name}_proj.weight"] = (rows * head_dim, d) if name != "o" else (d, d)
            if config["attention_bias"]:
                shapes[p + f"self_attn.{name}_proj.bias"] = (rows * head_dim,) if name != "o" else (d,)
        if config["qk_layernorm"]:
            shapes[p + "self_attn.q_norm.weight"] = (head_dim,)
            shapes[p + "self_attn.k_norm.weight"] = (head_dim,)
        shapes[p + "post_attention_layernorm.weight"] = (d,)
        mlps = []
        if kind:
            shapes[p + "mlp.gate.weight"] = (config["num_experts"], d)
            if config["moe_router_enable_expert_bias"]:
                shapes[p + "mlp.expert_bias"] = (config["num_experts"],)
            mlps += [(f"mlp.experts.{e}.", config["expert_intermediate_size"]) for e in range(config["num_experts"])]
            if config["shared_expert_intermediate_size"] is not None:
                mlps.append(("shared_expert.", config["shared_expert_intermediate_size"]))
        else:
            mlps.append(("mlp.", config["dense_intermediate_size"]))
        for prefix, hidden in mlps:
            shapes[p + prefix + "gate_proj.weight"] = (hidden, d)
            shapes[p + prefix + "up_proj.weight"] = (hidden, d)
            shapes[p + prefix + "down_proj.weight"] = (d, hidden)
    shapes["model.norm.weight"] = (d,)
    if not config["tie_word_embeddings"]:
        shapes["lm_head.weight"] = (v, d)
    return shapes


def seeded_weights(config: dict, seed: int = SEED) -> dict[str, torch.Tensor]:
    """fp32 weights, each drawn from its own generator (seed, position in weight_shapes): norms 1 + N(0, 0.1^2),
    the expert bias N(0, 0.05^2), biases N(0, 0.1^2), matrices N(0, 1 / fan_in) (the router 3x wider, so that the
    routing is decided), the embedding N(0, 1)."""
    weights = {}
    for index, (name, shape) in enumerate(weight_shapes(config).items()):
        generator = torch.Generator().manual_seed(seed * 100_003 + index)
        noise = torch.randn(shape, generator=generator)
        if name.endswith("norm.weight"):
            weights[name] = 1 + 0.1 * noise
        elif name.endswith("expert_bias"):
            weights[name] = 0.05 * noise
        elif name.endswith(".bias"):
            weights[name] = 0.1 * noise
        elif name == "model.embed_tokens.weight":
            weights[name] = noise
        else:
            weights[name] = noise * shape[1] ** -0.5 * (3.0 if name.endswith("mlp.gate.weight") else 1.0)
    return weights


def published_moe_folder(
    path, name: str = "base", dtype: torch.dtype = torch.bfloat16, seed: int = SEED, overrides: dict = None
) -> Path:
    """Write variant ``name`` in the published layout into the folder path: config.json, two safetensors shards in
    ``dtype`` and their index. overrides: config keys changed (the weights follow the config's shapes). Returns
    the folder."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    config = {**release_config(name), **(overrides or {})}
    config["torch_dtype"] = str(dtype).removeprefix("torch.")
    (path / "config.json").write_text(json.dumps(config, indent=2))
    weights = {k: v.to(dtype).contiguous() for k, v in seeded_weights(config, seed).items()}
    names = list(weights)
    shards = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2 :]}  # fmt: skip
    weight_map = {}
    for file, keys in shards.items():
        save_file({k: weights[k] for k in keys}, str(path / file), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(keys, file))
    total = sum(t.numel() * t.element_size() for t in weights.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (path / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return path


def reference_input_ids(vocab_size: int, seed: int = SEED) -> torch.Tensor:
    """(2, 12) int64: the input of the recorded logits (some of it the mask-like id 2, as a canvas has)."""
    ids = torch.randint(3, vocab_size, (2, 12), generator=torch.Generator().manual_seed(seed))
    ids[:, 7:] = 2
    return ids


def logit_figures(logits: torch.Tensor, seed: int = SEED) -> dict:
    """What the fixture records of logits (B, T, V): sums, 16 values at seeded positions (fp32 numbers) and the
    argmax of every position."""
    x = logits.float()
    generator = torch.Generator().manual_seed(seed)
    picks = [tuple(int(torch.randint(0, n, (1,), generator=generator)) for n in x.shape) for _ in range(16)]
    return {
        "sum": float(x.sum()),
        "abs_sum": float(x.abs().sum()),
        "square_sum": float(x.pow(2).sum()),
        "picks": [[*p, float(x[p])] for p in picks],
        "argmax": x.argmax(-1).tolist(),
    }
