"""The model being trained: a new one built from TrainArgs, or a checkpoint loaded to start from; gradient
checkpointing; and saving a usable checkpoint folder."""

import functools
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import torch

from ..configuration_genjo import GenjoConfig
from ..configuration_genjo_moe import GenjoMoeConfig
from ..loading import load_config, load_tokenizer, model_class
from ..modeling_genjo import GenjoModelLM
from ..modeling_genjo_moe import GenjoMoeModelLM
from ..storage import replacing_folder
from ..tokenizer import special_token_ids
from .args import TrainArgs
from .losses import OBJECTIVES


def new_model(args: TrainArgs, tokenizer):
    """A freshly initialised fp32 model of the architecture in args: a GenjoModelLM (causal when the objective is),
    or with args.num_experts a GenjoMoeModelLM (the LLaDA-MoE block, every MLP a mixture of experts)."""
    ids = special_token_ids(tokenizer)
    missing = [name for name, i in ids.items() if i is None or i == tokenizer.unk_token_id]
    if missing:
        raise ValueError(f"The tokenizer lacks the special tokens of {missing}; Genjo needs those of "
                         "genjo/tokenizer.py (SPECIAL_TOKENS), e.g. <|mdm_mask|> for the mask.")  # fmt: skip
    if len(tokenizer) > args.vocab_size:
        raise ValueError(f"The tokenizer has {len(tokenizer)} tokens but --vocab-size is {args.vocab_size}; "
                         f"pass --vocab-size {len(tokenizer)} or more.")  # fmt: skip
    if args.num_experts:
        return GenjoMoeModelLM(moe_config(args, ids))
    config = GenjoConfig(
        d_model=args.d_model,
        n_layers=args.n_layers,
        n_heads=args.n_heads,
        n_kv_heads=args.n_heads,
        mlp_hidden_size=args.mlp_hidden_size,
        rope_theta=args.rope_theta,
        max_sequence_length=args.max_sequence_length,
        vocab_size=args.vocab_size,
        embedding_size=args.vocab_size,
        **config_token_ids(ids),
        init_fn="mitchell",
        precision="fp32",
        causal=OBJECTIVES[args.objective].causal,
    )
    return GenjoModelLM(config)


def config_token_ids(ids: dict) -> dict:
    """The special-token fields of a model config, from ``special_token_ids``."""
    names = ("mask_token_id", "eos_token_id", "pad_token_id", "bos_token_id", "eot_token_id")
    return {name: ids[name] for name in names}


def moe_config(args: TrainArgs, ids: dict) -> GenjoMoeConfig:
    """The mixture-of-experts config of args: LLaDA-MoE's block (qk-norm, softmax top-k router) at args' sizes.

    Each expert's hidden size defaults to mlp_hidden_size / experts_per_token, so that a token meets as many MLP
    weights as in the dense model of the same flags (the same active parameters, up to the router).
    """
    if OBJECTIVES[args.objective].causal:
        raise ValueError(f"--num-experts builds a bidirectional mask predictor; --objective {args.objective} trains "
                         "causal models. Use --objective mdm, or --num-experts 0.")  # fmt: skip
    if not 1 <= args.experts_per_token <= args.num_experts:
        raise ValueError(f"--experts-per-token ({args.experts_per_token}) must be 1..--num-experts "
                         f"({args.num_experts}).")  # fmt: skip
    expert_size = args.expert_hidden_size or args.mlp_hidden_size // args.experts_per_token
    return GenjoMoeConfig(
        hidden_size=args.d_model,
        num_hidden_layers=args.n_layers,
        num_attention_heads=args.n_heads,
        num_key_value_heads=args.n_heads,
        dense_intermediate_size=args.mlp_hidden_size,
        expert_intermediate_size=expert_size,
        num_experts=args.num_experts,
        num_experts_per_tok=args.experts_per_token,
        rope_theta=args.rope_theta,
        max_position_embeddings=args.max_sequence_length,
        vocab_size=args.vocab_size,
        **config_token_ids(ids),
    )


def load_training_tokenizer(folder):
    """A checkpoint's tokenizer (never through remote code: a published folder's auto_map would prompt), or
    a tokenizer-only folder's."""
    if (Path(folder) / "config.json").exists():
        return load_tokenizer(str(folder))
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)


def load_training_model(folder):
    """A Genjo or published-layout checkpoint (dense or LLaDA-MoE) in fp32, its config read without remote code."""
    config = load_config(str(folder))
    return model_class(config).from_pretrained(str(folder), config=config, dtype=torch.float32)


def model_blocks(model) -> torch.nn.ModuleList:
    """The blocks of a GenjoModelLM (``model.transformer.blocks``) or a GenjoMoeModelLM (``model.layers``)."""
    inner = model.model
    return inner.layers if isinstance(model, GenjoMoeModelLM) else inner.transformer.blocks


def enable_gradient_checkpointing(model) -> None:
    """Recompute each block's activations (GenjoBlock, GenjoMoeBlock) in the backward pass instead of keeping them.

    Memory for activations drops from one set per block to one block's worth, for about one more
    forward pass of compute. Gradients are unchanged.
    """
    from torch.utils.checkpoint import checkpoint

    def checkpointed(forward, *args, **kwargs):
        if not torch.is_grad_enabled():
            return forward(*args, **kwargs)
        return checkpoint(forward, *args, use_reentrant=False, **kwargs)

    for block in model_blocks(model):
        block.forward = functools.partial(checkpointed, block.forward)


def write_checkpoint(model, tokenizer, folder, sampler_defaults: Optional[dict] = None, state_dict=None) -> None:
    """Write weights (safetensors), config, modeling code and tokenizer into folder (an empty one: the
    staging folder of a crash-safe save; ``save_checkpoint`` is the call that replaces a checkpoint).

    sampler_defaults: written into config.json (the settings scripts use for flags left unset), or None.
    state_dict: the full weights when the model is sharded (FSDP), else None (the model's own).
    """
    if sampler_defaults is not None:
        model.config.sampler_defaults = sampler_defaults
    with own_class(model):
        model.save_pretrained(str(folder), state_dict=state_dict)
    tokenizer.save_pretrained(str(folder))


@contextmanager
def own_class(model):
    """The model seen as its own class (GenjoModelLM, GenjoMoeModelLM) inside the block, when FSDP2 sharded it.

    ``fully_shard`` swaps a model's class for a subclass made on the fly (``FSDPGenjoModelLM``, defined in
    torch's FSDP code), and save_pretrained copies the file that defines the model's class, and the files it
    imports, beside the weights: torch's ``_fsdp_*.py`` instead of genjo's modeling code, which the config's
    auto_map names. Saving as the own class writes the modeling code; the weights come from the full state_dict
    gathered beforehand, so the FSDP hooks are not needed while saving. A model that is not sharded is unchanged.
    """
    from torch.distributed.fsdp import FSDPModule

    sharded_class = type(model)
    if not isinstance(model, FSDPModule):
        yield model
        return
    model.__class__ = next(c for c in sharded_class.__mro__ if not issubclass(c, FSDPModule))
    try:
        yield model
    finally:
        model.__class__ = sharded_class


def save_checkpoint(model, tokenizer, folder: str, sampler_defaults: Optional[dict] = None, state_dict=None) -> None:
    """Hugging Face folder with weights (safetensors), config, modeling code and tokenizer, saved crash-safe:
    written beside folder, fsync'ed, then swapped in (genjo/storage.py), so a kill leaves the previous
    folder or the new one, never a partial one. Arguments as ``write_checkpoint``."""
    with replacing_folder(folder) as staging:
        write_checkpoint(model, tokenizer, staging, sampler_defaults, state_dict)
