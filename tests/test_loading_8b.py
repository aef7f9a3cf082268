"""The 8B user path, proven on small published-layout folders: loading that never prompts, clear
errors, device_map offload, genjo.convert, no deprecation warnings, bounded likelihood memory."""

import json
import logging
import os
import sys
import textwrap

import pexpect
import pytest
import torch
from conftest import load_benchmark, run_outside_the_repo, tiny_model
from transformers import AutoModel, AutoTokenizer

from generate import generate
from genjo.loading import DEFAULT_MODEL, add_model_arguments, check_checkpoint, load_from_args, load_model

PROMPT = torch.tensor([[0, 3, 17, 22, 9, 41], [0, 3, 30, 31, 12, 8]])
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def published_folder(path, seed: int = 5, **overrides):
    """A folder in the original release's layout: 6 safetensors shards + index, the tokenizer, and a
    config.json naming llada / LLaDAModelLM with an auto_map to remote-code files that are absent."""
    model = tiny_model(seed, **overrides)
    model.save_pretrained(path, max_shard_size="20KB")
    AutoTokenizer.from_pretrained(DEFAULT_MODEL).save_pretrained(path)
    config = json.loads((path / "config.json").read_text())
    config.update(model_type="llada", architectures=["LLaDAModelLM"], auto_map={
        "AutoConfig": "configuration_llada.LLaDAConfig",
        "AutoModel": "modeling_llada.LLaDAModelLM",
        "AutoModelForCausalLM": "modeling_llada.LLaDAModelLM",
    })  # fmt: skip
    (path / "config.json").write_text(json.dumps(config))
    for name in ("modeling_genjo.py", "configuration_genjo.py"):
        (path / name).unlink()
    assert len(list(path.glob("model-*.safetensors"))) == 6
    return model


def test_published_folder_loads_on_a_terminal_without_prompt_or_warning(tmp_path):
    """On a pty, AutoTokenizer would ask "Do you wish to run the custom code? [y/N]"; load_model must not."""
    folder = tmp_path / "published"
    published_folder(folder)
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {REPO!r})
        from genjo.loading import load_model
        model, tokenizer = load_model({str(folder)!r}, device="cpu")
        print("LOADED", type(model).__name__, tokenizer.mask_token)
    """)
    env = dict(os.environ, HF_MODULES_CACHE=str(tmp_path / "modules"), OMP_NUM_THREADS="1")
    child = pexpect.spawn(sys.executable, ["-c", script], env=env, timeout=120, encoding="utf-8")
    index = child.expect([r"\[y/N\]", "LOADED GenjoModelLM .*\n", pexpect.EOF])
    output = child.before + (child.after if isinstance(child.after, str) else "")
    child.close()
    assert index == 1, f"no clean load on a terminal: {output[-2000:]}"
    rest = child.before or ""
    assert "custom code" not in output + rest and "model of type `llada`" not in output + rest, output


def test_auto_model_does_not_load_a_published_folder_and_convert_fixes_it(tmp_path):
    """transformers 5 follows the published auto_map to remote-code files: absent here, so AutoModel
    fails; `python -m genjo.convert` re-saves the folder with Genjo's code and AutoModel then works."""
    from genjo.convert import convert

    folder, converted = tmp_path / "published", tmp_path / "converted"
    model = published_folder(folder)
    with pytest.raises(OSError, match="configuration_llada.py"):
        AutoModel.from_pretrained(folder, trust_remote_code=True)
    with pytest.raises(ValueError, match="trust_remote_code=True"):
        AutoModel.from_pretrained(folder, trust_remote_code=False)
    convert(str(folder), str(converted))
    with pytest.raises(FileExistsError, match="not an empty folder"):
        convert(str(folder), str(converted))
    torch.save(model(PROMPT).logits, tmp_path / "expected.pt")
    run_outside_the_repo(textwrap.dedent(f"""
        import torch
        from transformers import AutoModel, AutoTokenizer
        m = AutoModel.from_pretrained({str(converted)!r}, trust_remote_code=True).eval()
        assert type(m).__module__.startswith("transformers_modules"), type(m).__module__
        assert torch.equal(m(torch.tensor({PROMPT.tolist()})).logits, torch.load({str(tmp_path / "expected.pt")!r}))
        tok = AutoTokenizer.from_pretrained({str(converted)!r}, trust_remote_code=True)
        assert tok.convert_tokens_to_ids("<|mdm_mask|>") == 2
        print("OK")
    """), tmp_path)  # fmt: skip


def test_missing_and_non_checkpoint_folders_fail_clearly(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    for local in ("./nowhere", str(tmp_path / "nowhere"), "~/no-such-genjo-folder", "runs/base/final", "runs/x"):
        with pytest.raises(FileNotFoundError, match="does not exist"):
            load_model(local, device="cpu")
    (tmp_path / "weights-only").mkdir()
    (tmp_path / "weights-only" / "model.safetensors").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_model(str(tmp_path / "weights-only"), device="cpu")
    assert check_checkpoint("GSAI-ML/Genjo-8B-Instruct") == "GSAI-ML/Genjo-8B-Instruct"  # a hub id passes


def test_missing_embedded_checkpoint_names_the_real_command(monkeypatch, tmp_path):
    import genjo.loading as loading

    missing = str(tmp_path / "genjo-tiny-instruct")
    monkeypatch.setattr(loading, "DEFAULT_MODEL", missing)
    with pytest.raises(FileNotFoundError, match=r"python -m genjo\.train recipe --replace-shipped`"):
        loading.load_model(missing, device="cpu")


def test_device_map_auto_with_disk_offload_gives_the_same_tokens(tmp_path):
    model = tiny_model(0, init_fn="normal", init_std=0.5, n_layers=4)
    model.save_pretrained(tmp_path / "ckpt")
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    offloaded = load_model(str(tmp_path / "ckpt"), with_tokenizer=False, device_map="auto",
                           max_memory={"cpu": size // 2}, offload_folder=str(tmp_path / "offload"))  # fmt: skip
    placement = offloaded.hf_device_map
    assert placement["model.transformer.blocks.0"] == "cpu" and placement["model.transformer.blocks.3"] == "disk"
    # accelerate moves inputs to each module's device and outputs back; caches must stay where they are
    from accelerate.utils import send_to_device

    out = offloaded(PROMPT, use_cache=True)
    skip = offloaded._hf_hook.skip_keys
    moved = send_to_device(out, "meta", skip_keys=skip)
    assert moved.logits.device.type == "meta" and moved.cache[0][0] is out.cache[0][0]
    moved_in = send_to_device(dict(input_ids=PROMPT, past_key_values=out.cache), "meta", skip_keys=skip)
    assert moved_in["past_key_values"][0][0] is out.cache[0][0]
    for cache in (None, "prefix", "dual"):
        for temperature in (0.0, 0.8):
            kwargs = dict(steps=16, gen_length=16, block_length=8, cache=cache, temperature=temperature)
            torch.manual_seed(1)
            expected = generate(model, PROMPT, **kwargs)
            torch.manual_seed(1)
            assert torch.equal(generate(offloaded, PROMPT, **kwargs), expected), (cache, temperature)


def test_every_script_gets_device_map(tmp_path):
    tiny_model(2).save_pretrained(tmp_path)
    parser = add_model_arguments(__import__("argparse").ArgumentParser())
    args = parser.parse_args(["--model", str(tmp_path), "--device-map", "auto"])
    model = load_from_args(args, with_tokenizer=False)
    assert set(getattr(model, "hf_device_map", {"": "cpu"}).values()) == {"cpu"} and model.device.type == "cpu"
    with pytest.raises(ValueError, match="not both"):
        load_from_args(parser.parse_args(["--model", str(tmp_path), "--device-map", "auto", "--device", "cpu"]))


def test_no_deprecation_warning_from_the_model_output(model):
    """transformers 5.24 warns on every ModelOutput built or read with `past_key_values`."""
    from transformers.utils import logging as hf_logging

    hf_logging.get_logger("transformers").warning_once.cache_clear()
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    root = logging.getLogger("transformers")
    root.addHandler(handler)
    try:
        out = model(PROMPT, use_cache=True)
        assert out.past_key_values is out.cache and len(out.past_key_values) == 2
        generate(model, PROMPT, steps=8, gen_length=8, block_length=4, cache="dual")
        generate(model, PROMPT, steps=8, gen_length=8, block_length=4, cache="prefix")
    finally:
        root.removeHandler(handler)
    assert not [r for r in records if "deprecated" in r.getMessage()], [r.getMessage() for r in records]


@pytest.mark.parametrize("cfg", [0.0, 1.5])
def test_likelihood_log_normalizer_chunks_equal_the_whole(cfg):
    from genjo.likelihood import guided_logits, log_normalizers

    cond, uncond = torch.randn(10, 64).bfloat16(), torch.randn(10, 64).bfloat16()
    uncond = uncond if cfg > 0 else None
    whole = torch.logsumexp(guided_logits(cond, uncond, cfg).float(), dim=-1)
    assert torch.equal(log_normalizers(cond, uncond, cfg, chunk=3), whole)


def test_bench_forward_dry_run_of_the_8b_on_meta(capsys):
    bench_forward = load_benchmark("bench_forward")
    from genjo import GenjoConfig

    args = __import__("argparse").Namespace(length=320, gen_length=64, block_length=32, batch_size=1,
                                            context_lengths="8192,32768,131072")  # fmt: skip
    bench_forward.dry_run(GenjoConfig(), torch.bfloat16, args)
    printed = capsys.readouterr().out
    assert "8,015,581,184 parameters" in printed and "weights 14.93 GiB" in printed
    assert "| full forward | (1, 320) | (1, 320, 126464) |" in printed
    assert "| 1024 | 1280 | 0.62 GiB |" in printed  # KV cache per row: 0.5 MiB per token in bf16
    # long context: LongLLaDA's factor at 8K, UltraLLaDA's at 128K; KV cache 0.5 MiB per token; logits 247 KiB per token
    assert "| 8192 | 4 / 4 | 14.93 |" in printed and "| 32768 | 45 / 55 | 14.93 |" in printed
    assert "| 131072 | 562 / 871 | 14.93 | 19.12 | 63.97 | 64.00 | 30.88 | 8 |" in printed


def test_published_folder_samples_with_the_release_scripts_settings(tmp_path):
    """A published folder names no sampler settings: unset flags take the original scripts' (block 32), the
    settings table's resolution applies them, and a folder Genjo saves keeps them."""
    from genjo.configuration_genjo import RELEASE_SAMPLER_DEFAULTS
    from genjo.loading import load_model
    from genjo.settings import resolve_sampler_settings

    published_folder(tmp_path / "published")
    model = load_model(str(tmp_path / "published"), device="cpu", with_tokenizer=False)
    settings = resolve_sampler_settings({"steps": 64}, model)
    assert (settings["gen_length"], settings["steps"], settings["block_length"]) == (128, 64, 32)
    model.save_pretrained(tmp_path / "saved")
    saved = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert saved["sampler_defaults"] == RELEASE_SAMPLER_DEFAULTS and saved["model_type"] == "genjo"
