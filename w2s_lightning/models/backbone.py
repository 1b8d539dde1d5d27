"""Load a Hugging Face backbone and its tokenizer from a catalogue entry.

`pretrained` takes three forms: a hub id (`gpt2`) or local folder, `pkg://module/subdir`
for weights that a pip package ships (no network), or `model_type:gpt2` for random weights
from the library's default config of that architecture (throughput checks, tests). A local or
`pkg://` path may also name a single GGUF or ONNX file, which is converted into a model folder
once (`w2s_lightning.models.convert`). A hub id may name a `revision` (branch, tag or commit),
such as an earlier Pythia checkpoint."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from transformers import AutoConfig, AutoModel, AutoTokenizer, PretrainedConfig

from w2s_lightning.errors import ModelLoadError
from w2s_lightning.models import convert
from w2s_lightning.models.identity import MODEL_TYPE_PREFIX, PKG_PREFIX, package_of

DROPOUT_SUFFIXES = ("dropout", "pdrop", "dropout_prob")
# Activations that transformers writes as several elementwise Python ops, and torch's single
# kernel of the same function (tests/test_models.py checks each pair agrees to float32 rounding).
# In a profile of small GPT-2 trainings on a CPU (bench/peer.py), gelu_new's forward alone took 12% of the time.
FUSED_ACTIVATIONS = {
    "gelu_new": "gelu_pytorch_tanh",
    "gelu_fast": "gelu_pytorch_tanh",
    "gelu_python_tanh": "gelu_pytorch_tanh",
    "gelu_python": "gelu",
}
ACTIVATION_KEYS = ("activation_function", "hidden_act")  # GPT-2 and kin; BERT, Phi and most others


def resolve_source(source: str) -> str:
    """A `pkg://` source becomes the path inside the installed package; a file in a format that
    `convert.CONVERTERS` reads (a GGUF or ONNX file) becomes the model folder converted from it,
    converted on first use and read from the cache after that."""
    if not source.startswith(PKG_PREFIX):
        path = Path(source).expanduser()
        if not path.exists():
            return source
    else:
        module, subdir = package_of(source)
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.submodule_search_locations:
            dist = module.replace("_", "-")
            raise ModelLoadError(f"model source {source}: package '{module}' is not installed; fix: pip install {dist}")
        path = Path(next(iter(spec.submodule_search_locations))) / subdir
    return str(convert.materialise(path) if convert.converter_for(path) else path)


def model_revision(spec) -> str | None:
    """The entry's `revision`, for its own hub repo. Refused with any other source: a local
    folder or package holds one snapshot and transformers would silently load it whatever the
    revision, and random weights have none."""
    revision = getattr(spec, "revision", None)
    if revision is None:
        return None
    source = spec.pretrained
    if source.startswith((MODEL_TYPE_PREFIX, PKG_PREFIX)) or Path(source).expanduser().exists():
        raise ModelLoadError(
            f"model '{spec.name}' names revision '{revision}', but its source '{source}' is not a hub id "
            "and has no revisions; fix: set `pretrained` to the hub id, or download that revision "
            "(huggingface-cli download ID --revision REV --local-dir DIR), point `pretrained` at DIR "
            "and set revision: null"
        )
    return revision


def _hub_error(what: str, source: str, key: str, err: Exception) -> ModelLoadError:
    return ModelLoadError(
        f"could not load the {what} '{source}': {err}. If this machine is offline, download it "
        f"elsewhere (huggingface-cli download {source}) and point the catalogue entry at the "
        f"folder, e.g. strong_model.{key}=/path/to/{source.split('/')[-1]} (or weak_model.{key})"
    )


def load_config(spec) -> PretrainedConfig:
    overrides = dict(spec.config_overrides or {})
    if spec.pretrained.startswith(MODEL_TYPE_PREFIX):
        config = AutoConfig.for_model(spec.pretrained[len(MODEL_TYPE_PREFIX) :], **overrides)
    else:
        source = resolve_source(spec.pretrained)
        try:
            config = AutoConfig.from_pretrained(
                source, revision=model_revision(spec), trust_remote_code=spec.trust_remote_code, **overrides
            )
        except OSError as err:
            raise _hub_error("model config", spec.pretrained, "pretrained", err) from err
    if attention := getattr(spec, "attn_implementation", None):  # checks.py vetted the name
        config._attn_implementation = attention  # every model built from this config, any head, uses it
    if getattr(spec, "fused_activations", True):  # a catalogue entry always has it; a hand-built spec may not
        for key in ACTIVATION_KEYS:
            if getattr(config, key, None) in FUSED_ACTIVATIONS:
                setattr(config, key, FUSED_ACTIVATIONS[getattr(config, key)])
    if spec.dropout is not None:
        for key, value in config.to_dict().items():
            if key.endswith(DROPOUT_SUFFIXES) and isinstance(value, float):
                setattr(config, key, spec.dropout)
    return config


def load_tokenizer(spec):
    source = spec.tokenizer or spec.pretrained
    # A tokenizer from another source has its own revisions; the entry's belongs to `pretrained`.
    revision = model_revision(spec) if source == spec.pretrained else None
    if source.startswith(MODEL_TYPE_PREFIX):
        raise ModelLoadError(
            f"model '{spec.name}' has random weights ({source}) and so needs an explicit tokenizer; "
            "fix: set its `tokenizer` to a hub id, folder or pkg:// source"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            resolve_source(source), revision=revision, trust_remote_code=spec.trust_remote_code
        )
    except OSError as err:
        raise _hub_error("tokenizer", source, "tokenizer", err) from err
    if tokenizer.pad_token is None:
        # GPT-2 and most decoders ship no pad token; pooling reads the attention mask, so
        # which id fills the padding does not matter.
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return tokenizer


def random_weights(spec) -> bool:
    """An entry whose weights are drawn, not loaded: what it computes depends on the seed."""
    return bool(spec.from_scratch) or spec.pretrained.startswith(MODEL_TYPE_PREFIX)


def load_backbone(spec, config: PretrainedConfig | None = None):
    config = config or load_config(spec)
    revision = model_revision(spec)
    if random_weights(spec):
        return AutoModel.from_config(config, trust_remote_code=spec.trust_remote_code)
    source = resolve_source(spec.pretrained)
    try:
        return AutoModel.from_pretrained(
            source, config=config, revision=revision, trust_remote_code=spec.trust_remote_code
        )
    except OSError as err:
        raise _hub_error("model weights", spec.pretrained, "pretrained", err) from err
