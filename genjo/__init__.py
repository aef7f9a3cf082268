"""Genjo: a masked diffusion language model (arXiv 2502.09992).

from genjo import generate, get_log_likelihood, load_model

model, tokenizer = load_model()                       # the embedded instruct model
out = generate(model, prompt_ids, steps=32, gen_length=32, block_length=32)
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from .configuration_genjo import GenjoConfig
from .configuration_genjo_moe import GenjoMoeConfig
from .likelihood import get_log_likelihood, get_log_likelihoods
from .loading import DEFAULT_BASE_MODEL, DEFAULT_MODEL, add_model_arguments, load_model, load_tokenizer
from .long_context import extend_context, rope_scaling_factor
from .modeling_genjo import GenjoModel, GenjoModelLM
from .modeling_genjo_moe import GenjoMoeModelLM
from .sampling import GenerationStats, StepInfo, generate
from .settings import SAMPLER_SETTINGS, add_sampler_arguments, resolve_sampler_settings

__version__ = "0.1.0"  # the package version (pyproject.toml reads it from here)

AutoConfig.register("genjo", GenjoConfig, exist_ok=True)
AutoModel.register(GenjoConfig, GenjoModelLM, exist_ok=True)
AutoModelForCausalLM.register(GenjoConfig, GenjoModelLM, exist_ok=True)
AutoConfig.register("genjo_moe", GenjoMoeConfig, exist_ok=True)
AutoModel.register(GenjoMoeConfig, GenjoMoeModelLM, exist_ok=True)
AutoModelForCausalLM.register(GenjoMoeConfig, GenjoMoeModelLM, exist_ok=True)

__all__ = [
    "DEFAULT_BASE_MODEL",
    "DEFAULT_MODEL",
    "GenerationStats",
    "GenjoConfig",
    "GenjoModel",
    "GenjoModelLM",
    "GenjoMoeConfig",
    "GenjoMoeModelLM",
    "SAMPLER_SETTINGS",
    "StepInfo",
    "add_sampler_arguments",
    "generate",
    "get_log_likelihood",
    "get_log_likelihoods",
    "add_model_arguments",
    "extend_context",
    "load_model",
    "load_tokenizer",
    "resolve_sampler_settings",
    "rope_scaling_factor",
]
