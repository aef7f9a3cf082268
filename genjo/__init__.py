"""Genjo: a masked diffusion language model (arXiv 2502.09992).

``from genjo import GenjoConfig, GenjoModelLM, load_model``.
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from .configuration_genjo import GenjoConfig
from .loading import DEFAULT_BASE_MODEL, DEFAULT_MODEL, add_model_arguments, load_model, load_tokenizer
from .modeling_genjo import GenjoModel, GenjoModelLM

__version__ = "0.1.0"  # the package version (pyproject.toml reads it from here)

AutoConfig.register("genjo", GenjoConfig, exist_ok=True)
AutoModel.register(GenjoConfig, GenjoModelLM, exist_ok=True)
AutoModelForCausalLM.register(GenjoConfig, GenjoModelLM, exist_ok=True)

__all__ = [
    "DEFAULT_BASE_MODEL",
    "DEFAULT_MODEL",
    "GenjoConfig",
    "GenjoModel",
    "GenjoModelLM",
    "add_model_arguments",
    "load_model",
    "load_tokenizer",
]
