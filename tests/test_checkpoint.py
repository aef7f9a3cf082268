"""Checkpoints: save/load round trips, remote code through AutoModel, the published layout."""

import json
import textwrap

import pytest
import torch
from conftest import run_outside_the_repo, tiny_model
from safetensors.torch import load_file, save_file

from genjo import GenjoModelLM
from genjo.tokenizer import build_tokenizer

IDS = torch.tensor([[7, 8, 9, 10, 11, 2, 2, 2]])


def test_save_load_round_trip(tmp_path):
    model = tiny_model(3)
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "genjo" and config["architectures"] == ["GenjoModelLM"]
    assert config["auto_map"] == {
        "AutoConfig": "configuration_genjo.GenjoConfig",
        "AutoModel": "modeling_genjo.GenjoModelLM",
        "AutoModelForCausalLM": "modeling_genjo.GenjoModelLM",
    }
    assert (tmp_path / "modeling_genjo.py").exists() and (tmp_path / "configuration_genjo.py").exists()
    loaded = GenjoModelLM.from_pretrained(tmp_path)
    assert torch.equal(loaded(IDS).logits, model(IDS).logits)


def test_auto_model_remote_code_in_a_fresh_interpreter(tmp_path):
    """Only transformers is needed to load a saved folder: the project is not on sys.path."""
    folder = tmp_path / "genjo-ckpt"
    model = tiny_model(4)
    model.save_pretrained(folder)
    build_tokenizer().save_pretrained(folder)
    torch.save(model(IDS).logits, tmp_path / "expected.pt")
    script = textwrap.dedent(f"""
        import sys, torch
        assert not any(p.endswith("main") or "genjo" in p for p in sys.path if p), sys.path
        from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer
        for cls in (AutoModel, AutoModelForCausalLM):
            m = cls.from_pretrained({str(folder)!r}, trust_remote_code=True).eval()
            assert type(m).__name__ == "GenjoModelLM", type(m)
            assert type(m).__module__.startswith("transformers_modules"), type(m).__module__
            logits = m(torch.tensor({IDS.tolist()})).logits
            assert torch.equal(logits, torch.load({str(tmp_path / "expected.pt")!r})), "logits differ"
        tok = AutoTokenizer.from_pretrained({str(folder)!r})
        text = tok.apply_chat_template([dict(role="user", content="hi")], add_generation_prompt=True, tokenize=False)
        assert text.startswith("<|startoftext|><|start_header_id|>user"), text
        print("OK")
    """)
    run_outside_the_repo(script, tmp_path)


def test_published_layout_loads_as_is(tmp_path):
    """A folder of the original release: its model_type/architectures/auto_map, sharded safetensors + index."""
    model = tiny_model(5)
    model.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    config = json.loads((tmp_path / "config.json").read_text())
    config.update(
        model_type="llada",
        architectures=["LLaDAModelLM"],
        auto_map={
            "AutoConfig": "configuration_llada.LLaDAConfig",
            "AutoModel": "modeling_llada.LLaDAModelLM",
            "AutoModelForCausalLM": "modeling_llada.LLaDAModelLM",
        },
    )
    (tmp_path / "config.json").write_text(json.dumps(config))
    for name in ("modeling_genjo.py", "configuration_genjo.py"):
        (tmp_path / name).unlink()
    loaded = GenjoModelLM.from_pretrained(tmp_path)
    assert torch.equal(loaded(IDS).logits, model(IDS).logits)
    assert loaded.config.model_type == "genjo" and loaded.config.architectures == ["GenjoModelLM"]
    loaded.save_pretrained(tmp_path / "resaved")
    resaved = json.loads((tmp_path / "resaved" / "config.json").read_text())
    assert resaved["auto_map"]["AutoModel"] == "modeling_genjo.GenjoModelLM"


@pytest.mark.parametrize("change", ["missing", "unexpected"])
def test_missing_or_unexpected_keys_are_errors(tmp_path, change):
    model = tiny_model(6)
    model.save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    if change == "missing":
        del weights["model.transformer.blocks.1.up_proj.weight"]
    else:
        weights["model.transformer.blocks.9.q_proj.weight"] = torch.zeros(2, 2)
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=f"{change}_keys"):
        GenjoModelLM.from_pretrained(tmp_path)


def test_load_model_helper_dtype_and_missing_default(tmp_path):
    from genjo.loading import load_model

    tiny_model(7).save_pretrained(tmp_path)
    model = load_model(str(tmp_path), device="cpu", with_tokenizer=False)
    assert model.dtype == torch.float32 and not model.training
    model = load_model(str(tmp_path), device="cpu", dtype=torch.bfloat16, with_tokenizer=False)
    assert model.dtype == torch.bfloat16
