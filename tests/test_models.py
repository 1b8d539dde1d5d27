"""Backbone + head: mask pooling, local loading of a decoder with no pad token, linear
probes, LoRA, and gradient checkpointing that actually runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import GPT2Config, GPT2Model, PreTrainedTokenizerFast

from w2s_lightning.config import CONF_DIR, load_model_spec
from w2s_lightning.models.backbone import FUSED_ACTIVATIONS, ModelLoadError, load_config, load_tokenizer, resolve_source
from w2s_lightning.models.classifier import Classifier, pool
from w2s_lightning.pipeline import run


def spec(name: str, **changes):
    node = load_model_spec(CONF_DIR / "model" / f"{name}.yaml")
    return OmegaConf.merge(node, changes)


def test_last_token_pooling_reads_the_mask_not_the_ids():
    hidden = torch.arange(2 * 4 * 1, dtype=torch.float).view(2, 4, 1)
    right_padded = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    left_padded = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    assert pool(hidden, right_padded, "last").squeeze(-1).tolist() == [1.0, 7.0]
    assert pool(hidden, left_padded, "last").squeeze(-1).tolist() == [3.0, 7.0]
    assert pool(hidden, right_padded, "mean").squeeze(-1).tolist() == [0.5, 5.5]
    with pytest.raises(ValueError, match="fix: set the model's pooling"):
        pool(hidden, right_padded, "max")


def test_a_token_id_of_zero_does_not_move_the_pooled_position():
    model = Classifier(spec("tiny_gpt2"))
    model.eval()
    ids = torch.tensor([[5, 0, 7, 0, 0]])  # id 0 is a real token here; the last two are padding
    mask = torch.tensor([[1, 1, 1, 0, 0]])
    with torch.no_grad():
        padded = model(ids, mask)
        unpadded = model(ids[:, :3], mask[:, :3])
    torch.testing.assert_close(padded, unpadded)


@pytest.fixture
def local_gpt2(tmp_path):
    """A GPT-2-shaped model and a word-level tokenizer with no pad token, saved to a folder."""
    vocab = {w: i for i, w in enumerate(["<|endoftext|>", "good", "bad", "movie", "a", "the", "[UNK]"])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>", unk_token="[UNK]")
    tokenizer.save_pretrained(tmp_path)
    GPT2Model(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=len(vocab), n_positions=32)).save_pretrained(
        tmp_path
    )
    return tmp_path


def test_local_decoder_without_pad_token_loads_and_pads(local_gpt2):
    entry = spec("gpt2", pretrained=str(local_gpt2), micro_batch_size=None)
    tokenizer = load_tokenizer(entry)
    assert tokenizer.pad_token == tokenizer.eos_token
    model = Classifier(entry)
    assert model.pooling == "last"
    batch = tokenizer(["a good movie", "bad"], padding=True, return_tensors="pt")
    assert model(batch["input_ids"], batch["attention_mask"]).shape == (2, 2)


def test_remote_code_stays_off_unless_the_model_file_turns_it_on():
    assert load_model_spec(CONF_DIR / "model" / "gpt2.yaml").trust_remote_code is False


def test_missing_package_and_missing_hub_model_say_how_to_fix(monkeypatch):
    with pytest.raises(ModelLoadError, match="pip install no-such-pkg"):
        resolve_source("pkg://no_such_pkg/model")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match=r"point the catalogue entry at the folder"):
        Classifier(spec("gpt2", pretrained="nobody/not-a-model-w2s"))


def test_linear_probe_trains_only_the_head():
    model = Classifier(spec("tiny_bert", linear_probe=True))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"head.weight", "head.bias"}
    assert set(model.trainable_state_dict()) == trainable


def test_lora_saves_only_adapters_and_head():
    model = Classifier(spec("tiny_pythia", lora={"enabled": True, "target_modules": ["query_key_value"]}))
    saved = model.trainable_state_dict()
    assert {"head.weight", "head.bias"} <= set(saved)
    assert all(name.startswith("head.") or "lora_" in name for name in saved)
    assert len(saved) > 2


def test_gradient_checkpointing_runs_during_training():
    """The reference trains in eval mode, where Hugging Face skips checkpointing; here the
    backbone trains in train mode with dropout off, so the checkpointed path really runs."""
    model = Classifier(spec("tiny_gpt2", gradient_checkpointing=True))
    calls = []
    for module in model.backbone.modules():
        if getattr(module, "gradient_checkpointing", False) and hasattr(module, "_gradient_checkpointing_func"):
            inner = module._gradient_checkpointing_func
            module._gradient_checkpointing_func = lambda *a, _inner=inner, **k: calls.append(1) or _inner(*a, **k)
    assert model.backbone.training and model.backbone.is_gradient_checkpointing
    assert all(p == 0.0 for k, p in model.backbone.config.to_dict().items() if k.endswith("pdrop"))
    ids = torch.randint(0, 1000, (2, 8))
    model(ids, torch.ones_like(ids)).sum().backward()
    assert len(calls) == model.backbone.config.n_layer
    model.eval()  # where the reference trains: checkpointing silently off
    model(ids, torch.ones_like(ids)).sum().backward()
    assert len(calls) == model.backbone.config.n_layer


def test_the_pipeline_trains_with_checkpointing_and_accumulation(make_cfg):
    cfg = make_cfg("strong_model.gradient_checkpointing=true", "strong_model.micro_batch_size=4", "loss=logconf")
    run(cfg)
    results = json.loads((Path(cfg.paths.output_dir) / "results.json").read_text())
    assert results["status"] == "done" and 0 <= results["student"]["acc"] <= 1


@pytest.mark.parametrize(("written", "fused"), sorted(FUSED_ACTIVATIONS.items()))
def test_each_fused_activation_computes_the_function_it_replaces(written, fused):
    from transformers.activations import ACT2FN

    x = torch.linspace(-12, 12, 100_001)
    torch.testing.assert_close(ACT2FN[fused](x), ACT2FN[written](x), rtol=0, atol=2e-6)


def test_gpt2_runs_the_fused_gelu_unless_the_entry_keeps_its_own():
    from transformers.activations import GELUTanh, NewGELUActivation

    def activations(model):
        return {type(m) for m in model.backbone.modules() if type(m).__name__.endswith(("GELUActivation", "GELUTanh"))}

    assert load_config(spec("tiny_gpt2")).activation_function == "gelu_pytorch_tanh"
    assert activations(Classifier(spec("tiny_gpt2"))) == {GELUTanh}
    own = spec("tiny_gpt2", fused_activations=False)
    assert load_config(own).activation_function == "gelu_new"
    assert activations(Classifier(own)) == {NewGELUActivation}
    # Both compute one function: the same weights give the same logits to float32 rounding.
    torch.manual_seed(0)
    fused = Classifier(spec("tiny_gpt2", head_init_std=0.02))
    torch.manual_seed(0)
    written = Classifier(spec("tiny_gpt2", head_init_std=0.02, fused_activations=False))
    ids = torch.randint(0, 1000, (3, 12))
    torch.testing.assert_close(fused(ids, torch.ones_like(ids)), written(ids, torch.ones_like(ids)), rtol=0, atol=1e-5)


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_the_entry_chooses_the_attention_kernel_of_every_model_built_from_it(attention):
    from transformers import AutoModelForCausalLM

    entry = spec("tiny_gpt2", attn_implementation=attention)
    assert Classifier(entry).backbone.config._attn_implementation == attention
    assert AutoModelForCausalLM.from_config(load_config(entry)).config._attn_implementation == attention
    assert Classifier(spec("tiny_gpt2")).backbone.config._attn_implementation == "sdpa"  # null: the library's


def test_head_and_logits_stay_float32_under_bf16_autocast():
    model = Classifier(spec("tiny_bert"))
    ids = torch.tensor([[101, 2000, 2001, 102]])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids))
        assert model.head(torch.ones(1, 32)).dtype == torch.bfloat16  # autocast is on: a bare head call is bf16
    assert logits.dtype == torch.float32


def clipping_system(scaler) -> tuple[object, torch.optim.Optimizer]:
    from types import SimpleNamespace

    from w2s_lightning.losses import CrossEntropy
    from w2s_lightning.models.system import ClassifierSystem

    system = ClassifierSystem(spec("tiny_gpt2"), CrossEntropy(), torch.optim.AdamW, grad_clip=1.0)
    system._trainer = SimpleNamespace(strategy=object(), precision_plugin=SimpleNamespace(scaler=scaler))
    params = [p for p in system.parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.full_like(p, 10.0)
    return system, torch.optim.AdamW(params, lr=1e-3, fused=True)


def test_a_fused_optimizer_is_clipped_to_the_norm_without_a_loss_scaler():
    system, optimizer = clipping_system(scaler=None)  # float32 or bf16-mixed
    system.clip_norm(optimizer)
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in system.parameters()]))
    assert norm == pytest.approx(1.0, rel=1e-3)  # from 10 per element: a norm in the thousands


def test_a_fused_optimizer_with_fp16_loss_scaling_is_refused_with_the_fix():
    from w2s_lightning.errors import ConfigError

    system, optimizer = clipping_system(scaler=object())  # 16-mixed: gradients are scaled until the step
    with pytest.raises(ConfigError, match=r"optimizer\.fused=false"):
        system.clip_norm(optimizer)
