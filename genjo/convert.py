"""Re-save a published checkpoint folder (LLaDA or LLaDA-MoE) as a Genjo folder: the same weights, Genjo's
config, its modeling code and an ``auto_map``, and the tokenizer, so that plain transformers loads the result.

    python -m genjo.convert SRC DST            # SRC: a published folder or hub id; DST: a new folder
    AutoModel.from_pretrained(DST, trust_remote_code=True)   # then works, with Genjo's code

The weights keep their names and values (the published names are Genjo's); ``--dtype`` keeps the
stored precision by default.
"""

import argparse
import os

import torch

from .cli import run_command


def convert(src: str, dst: str, dtype: str = "auto", max_shard_size: str = "5GB") -> None:
    """Load src on the CPU (config read without remote code) and save it to dst (a new or empty folder)."""
    from .loading import load_config, load_tokenizer, model_class
    from .storage import replacing_folder

    if os.path.exists(dst) and (not os.path.isdir(dst) or os.listdir(dst)):
        raise FileExistsError(f"{dst} already exists and is not an empty folder; choose a new destination.")
    if dtype not in ("auto", "bfloat16", "float16", "float32"):
        raise ValueError(f"dtype={dtype!r} is unknown; use auto (the stored one), bfloat16, float16 or float32.")
    config = load_config(src)
    torch_dtype = dtype if dtype == "auto" else getattr(torch, dtype)
    model = model_class(config).from_pretrained(src, config=config, dtype=torch_dtype)
    # written beside dst and renamed into place once complete: a kill never leaves a partial dst
    with replacing_folder(dst) as staging:
        model.save_pretrained(staging, max_shard_size=max_shard_size)
        load_tokenizer(src, config).save_pretrained(staging)


def main() -> None:
    # the docstring's first paragraph (its first line alone stops mid-sentence)
    description = " ".join(__doc__.split("\n\n")[0].split())
    parser = argparse.ArgumentParser(prog="python -m genjo.convert", description=description)
    parser.add_argument("src", help="published (or Genjo) checkpoint folder, or hub id")
    parser.add_argument("dst", help="new folder to write")
    parser.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float16", "float32"],
                        help="weights dtype of the copy (default: the stored one)")  # fmt: skip
    parser.add_argument("--max-shard-size", default="5GB", help="largest safetensors shard (default: %(default)s)")
    args = parser.parse_args()
    convert(args.src, args.dst, args.dtype, args.max_shard_size)
    print(f"wrote {args.dst}: load it with genjo.load_model or AutoModel.from_pretrained(..., trust_remote_code=True)")


if __name__ == "__main__":
    run_command(main, prog="python -m genjo.convert")
