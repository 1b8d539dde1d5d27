"""Weights shipped as one file that transformers cannot load as a model folder become a model
folder the first time they are read, and that folder is what every later load reads.

A `pretrained` source (hub id aside: a local path or `pkg://module/path`) that names a file with
a suffix in `CONVERTERS` goes through the converter registered for it:

- `.gguf`: transformers' own GGUF loader (`from_pretrained(..., gguf_file=...)` with the `gguf`
  package), dequantised to float32; the tokenizer comes from the same file.
- `.onnx`: `onnx_bert`, a BERT encoder exported to ONNX (a sentence-transformers export, say):
  its weights are read from the graph and named for `BertModel`.

The folder is a stage cache entry, `<stage cache root>/convert/<key>/` (inside a run, the run's
`paths.cache_dir`; elsewhere `$W2S_ROOT/.cache/stages`, or `./.cache/stages` without W2S_ROOT),
keyed by the source file's content and the converter, written into a temporary folder and
renamed into place, with the sizes and sha256 of its files in record.json, under the entry's
lock: parallel sweep jobs convert once, and an entry that no longer matches its record is set
aside and converted again. `python -m w2s_lightning.cache
list` shows the entries. Converting SmolLM2-135M from its Q4_1 GGUF takes about a minute; loading
the saved copy, under a second."""

from __future__ import annotations

import importlib
import json
import logging
import os
import shutil
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from w2s_lightning.cache import RECORD, StageCache, check, checksums, default_root, sha256, stage_key
from w2s_lightning.errors import ModelLoadError
from w2s_lightning.locks import HOST

log = logging.getLogger(__name__)

STAGE = "convert"
# Bump when a converter's output changes, so entries written by the old code miss.
CONVERT_VERSION = 1
# A file suffix and the dotted path of the function that turns such a file into a model folder:
# `hook(source: Path, folder: Path) -> dict`, the dict going into the entry's record.
CONVERTERS = {
    ".gguf": "w2s_lightning.models.convert.gguf_causal_lm",
    ".onnx": "w2s_lightning.models.convert.onnx_bert",
}

# Within a process a checked entry is trusted while its source file is unchanged: record.json's
# sha256 check reads every byte (half a gigabyte for SmolLM2), and a stage loads config,
# tokenizer and weights through three separate calls.
_checked: dict[tuple[str, str, int, int], Path] = {}
# The stage cache a running experiment converts into (`into`); None outside a run.
_root: Path | None = None


@contextmanager
def into(root: Path) -> Iterator[None]:
    """Within the block, sources convert into the stage cache at `root` (a run's
    `paths.cache_dir`, so a cache shared across hosts shares the converted models too)."""
    global _root
    before, _root = _root, Path(root)
    try:
        yield
    finally:
        _root = before


def converter_for(path: Path) -> str | None:
    """The dotted path of the converter for this file, None for anything that loads as it is."""
    return CONVERTERS.get(path.suffix.lower()) if path.is_file() else None


def hook(dotted: str):
    module, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module), name)


def source_key(source: Path, converter: str) -> str:
    """The entry's key: the file's bytes, not its path, so a moved environment keeps its entry
    and a changed file misses it."""
    return stage_key(STAGE, {"sha256": sha256(source), "converter": converter, "convert_version": CONVERT_VERSION})


def materialise(source: Path, root: Path | None = None) -> Path:
    """The model folder converted from `source`, converting it only if no intact copy exists."""
    source = source.resolve()
    converter = converter_for(source)
    if converter is None:
        raise ModelLoadError(f"{source} is not a file of a convertible format {sorted(CONVERTERS)}")
    stat = source.stat()
    cache = StageCache(root or _root or default_root())
    memo = (str(cache.path(STAGE, "")), str(source), stat.st_size, stat.st_mtime_ns)
    if (done := _checked.get(memo)) is not None and done.is_dir():
        return done
    key = source_key(source, converter)
    final = cache.path(STAGE, key)
    if check(final)[1] is not None:
        final.parent.mkdir(parents=True, exist_ok=True)
        with cache.lock(STAGE, key):
            # Another job may have converted it while this one waited for the lock.
            if final.exists() and (problem := check(final)[1]) is not None:
                aside = final.parent / f".corrupt-{key}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
                os.replace(final, aside)
                log.warning(
                    "converted model %s is damaged: %s; moved it to %s, converting again", final, problem, aside
                )
            if not final.exists():
                convert_into(source, converter, final, key)
    _checked[memo] = final
    return final


def convert_into(source: Path, converter: str, final: Path, key: str) -> None:
    """Under the entry's lock: convert into a temporary folder, then rename it into place."""
    log.info("converting %s with %s into %s (once; later loads read the saved copy)", source.name, converter, final)
    start = time.perf_counter()
    tmp = final.parent / f".{key}.tmp-{HOST}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        try:
            made = hook(converter)(source, tmp)
        except ImportError as err:
            raise ModelLoadError(
                f"converting {source.name} needs the '{err.name}' module; fix: pip install -e \".[ladder]\" "
                f"(or pip install {err.name})"
            ) from err
        record = {
            "model": source.name,
            "source": str(source),
            "converter": converter,
            **made,
            "stage": STAGE,
            "key": key,
            "convert_seconds": time.perf_counter() - start,
            "finished_at": time.time(),
            "files": checksums(tmp),
        }
        (tmp / RECORD).write_text(json.dumps(record, indent=2))
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("converted %s in %.1f s", source.name, time.perf_counter() - start)


# --- GGUF ----------------------------------------------------------------------------------


def gguf_causal_lm(source: Path, folder: Path) -> dict:
    """A GGUF language model, dequantised to float32, saved as a causal-LM folder with its
    tokenizer: `AutoModel` reads the backbone from it, `AutoModelForCausalLM` the LM head too
    (generative finetuning and zero-shot labels)."""
    import gguf  # noqa: F401  # transformers' GGUF reader needs it; fail here with the fix
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    # dequantize=True: with a GGUF matmul kernel at hand transformers would keep the weights
    # packed, and a packed model cannot be saved or trained.
    loaded = AutoModelForCausalLM.from_pretrained(
        source.parent,
        gguf_file=source.name,
        quantization_config=GgufConfig(dequantize=True),
        dtype=torch.float32,
    )
    state = loaded.state_dict()
    config = loaded.config
    # The quantizer marks the loaded model unsaveable; a plain model of the same config with the
    # dequantised weights is an ordinary float32 checkpoint.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(state, strict=False)
    # Tied output embeddings appear under both names or under one, depending on the version.
    tied = {n for n in missing if n.endswith("lm_head.weight")} if config.tie_word_embeddings else set()
    if set(missing) - tied or unexpected:
        raise ModelLoadError(
            f"{source.name}: the dequantised weights do not fit {type(model).__name__} (missing "
            f"{sorted(set(missing) - tied)[:5]}, unexpected {sorted(unexpected)[:5]})"
        )
    if tied:
        model.tie_weights()
    model.eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    same_as_saved(model, AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32), source.name)
    return {
        "architecture": type(model).__name__,
        "parameters": sum(p.numel() for p in model.parameters()),
        "dtype": "float32",
    }


@torch.inference_mode()
def same_as_saved(model, saved, what: str) -> None:
    """The saved folder must compute what the converted model computes: bit for bit, since the
    same float32 weights run the same code."""
    saved.eval()
    ids = torch.arange(1, 17).view(2, 8) % model.config.vocab_size
    if not torch.equal(model(input_ids=ids).logits, saved(input_ids=ids).logits):
        raise ModelLoadError(f"{what}: the re-saved model does not reproduce the converted one")


# --- ONNX BERT -----------------------------------------------------------------------------

WORD_EMBEDDINGS = "embeddings.word_embeddings.weight"


def onnx_bert(source: Path, folder: Path) -> dict:
    """A BERT encoder exported to ONNX, as a `BertModel` folder (no tokenizer: an ONNX file
    ships none, so the catalogue entry names one). Every weight of the graph is placed: the
    named ones (embeddings, biases, LayerNorms) by their name, each anonymous matrix
    (`onnx::MatMul_*`, stored transposed) by the name of the bias added to its product. The
    config comes from the graph's shapes and constants; anything that does not fit BERT stops
    the conversion."""
    import onnx
    from onnx import numpy_helper
    from transformers import BertConfig, BertModel

    graph = onnx.load(str(source)).graph
    tensors = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    anchor = next((n for n in tensors if n.endswith(WORD_EMBEDDINGS)), None)
    if anchor is None:
        raise ModelLoadError(f"{source.name}: no '{WORD_EMBEDDINGS}' in the graph, so it is not a BERT export")
    prefix = anchor[: -len(WORD_EMBEDDINGS)]
    state = {n[len(prefix) :]: a for n, a in tensors.items() if n.startswith(prefix)}
    consumers = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            consumers[name].append(node)
    for node in graph.node:
        weights = [n for n in node.input if n in tensors and not n.startswith(prefix)]
        if node.op_type != "MatMul" or not weights:
            continue
        biases = [
            n for add in consumers[node.output[0]] if add.op_type == "Add" for n in add.input if n.startswith(prefix)
        ]
        if len(weights) != 1 or len(biases) != 1 or not biases[0].endswith(".bias"):
            raise ModelLoadError(f"{source.name}: cannot tell which layer the matrix {weights} of {node.name} is")
        state[biases[0][len(prefix) : -len("bias")] + "weight"] = tensors[weights[0]].T
    used = {n for n in tensors if n.startswith(prefix)} | {
        n for node in graph.node if node.op_type == "MatMul" for n in node.input if n in tensors
    }
    if unused := sorted(set(tensors) - used):
        raise ModelLoadError(f"{source.name}: weights of the graph that no BERT layer takes: {unused[:5]}")

    config = BertConfig(
        vocab_size=state[WORD_EMBEDDINGS].shape[0],
        hidden_size=state[WORD_EMBEDDINGS].shape[1],
        num_hidden_layers=len({n.split(".")[2] for n in state if n.startswith("encoder.layer.")}),
        num_attention_heads=state[WORD_EMBEDDINGS].shape[1] // head_dim(graph, source.name),
        intermediate_size=state["encoder.layer.0.intermediate.dense.bias"].shape[0],
        max_position_embeddings=state["embeddings.position_embeddings.weight"].shape[0],
        type_vocab_size=state["embeddings.token_type_embeddings.weight"].shape[0],
        layer_norm_eps=layer_norm_eps(graph, source.name),
        hidden_act=activation(graph, source.name),
    )
    # Sentence-encoder exports drop BertModel's pooler layer (mean pooling never reads it), yet
    # AutoModel builds one; saved as zeros it loads without a missing-weights report each time and
    # outputs 0, so nothing can mistake it for a trained layer.
    pooler = {"pooler.dense.weight", "pooler.dense.bias"}
    model = BertModel(config, add_pooling_layer=True)
    expected = model.state_dict()
    zeroed = sorted(pooler - set(state))
    state.update({n: np.zeros(tuple(expected[n].shape), dtype=np.float32) for n in zeroed})
    if set(state) != set(expected):
        raise ModelLoadError(
            f"{source.name}: the graph's weights and BertModel's differ: only in the graph "
            f"{sorted(set(state) - set(expected))[:5]}, only in BertModel {sorted(set(expected) - set(state))[:5]}"
        )
    for name, array in state.items():
        if tuple(array.shape) != tuple(expected[name].shape):
            raise ModelLoadError(
                f"{source.name}: {name} is {array.shape} in the graph, BERT wants {expected[name].shape}"
            )
    model.load_state_dict({n: torch.from_numpy(np.array(a, dtype=np.float32)) for n, a in state.items()}, strict=True)
    model.save_pretrained(folder)
    weights = sum(p.numel() for n, p in model.named_parameters() if n not in zeroed)
    return {"architecture": "BertModel", "parameters": weights, "zeroed": zeroed, "dtype": "float32"}


def _constants(graph) -> dict:
    from onnx import numpy_helper

    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            for attribute in node.attribute:
                if attribute.name == "value":
                    values[node.output[0]] = numpy_helper.to_array(attribute.t)
    return values


def head_dim(graph, what: str) -> int:
    """Attention scores are q·k divided by sqrt(head size): the scalar each layer divides the
    product of two activations by (a MatMul with no weight) gives the head size."""
    values = _constants(graph)
    producers = {out: node for node in graph.node for out in node.output}
    sizes = set()
    for node in graph.node:
        if node.op_type != "Div" or node.input[1] not in values or values[node.input[1]].size != 1:
            continue
        product = producers.get(node.input[0])
        if product is not None and product.op_type == "MatMul" and not any(i in values for i in product.input):
            sizes.add(round(float(values[node.input[1]]) ** 2))
    if len(sizes) != 1:
        raise ModelLoadError(f"{what}: cannot read the attention head size from the graph (found {sorted(sizes)})")
    return sizes.pop()


def layer_norm_eps(graph, what: str) -> float:
    import onnx

    eps = {
        onnx.helper.get_attribute_value(a)
        for node in graph.node
        if node.op_type == "LayerNormalization"
        for a in node.attribute
        if a.name == "epsilon"
    }
    if len(eps) != 1:
        raise ModelLoadError(f"{what}: expected one LayerNorm epsilon in the graph, found {sorted(eps)}")
    return float(eps.pop())


def activation(graph, what: str) -> str:
    """BERT's exact GELU is exported through Erf; the tanh approximation through Tanh."""
    ops = {node.op_type for node in graph.node}
    if "Erf" in ops and "Tanh" not in ops:
        return "gelu"
    if "Tanh" in ops and "Erf" not in ops:
        return "gelu_new"
    raise ModelLoadError(f"{what}: cannot tell the activation from the graph's operators")
