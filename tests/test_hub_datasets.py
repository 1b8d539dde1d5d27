"""The hub dataset catalogue, offline: every config loads its fixture rows into the loader
contract, no formatter lets the label be read off its template, and an unreachable hub
fails with a message that says how to use a local copy."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import OmegaConf

from w2s_lightning.data import hub
from w2s_lightning.data.formatters import FORMATTERS, Example, Formatter, each_option, get_formatter
from w2s_lightning.errors import DatasetError

ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = ROOT / "conf"
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "hub"
KNOBS = ("balance", "holdout_fraction", "test_seed", "n_weak", "n_strong", "n_val", "n_test")
LABEL_WORDS = {"correct", "incorrect", "right", "wrong", "true", "false", "yes", "no"}


def hub_configs() -> dict[str, dict]:
    configs = {}
    for path in sorted((CONF_DIR / "dataset").glob("*.yaml")):
        raw = yaml.safe_load(path.read_text())
        if raw.get("loader", {}).get("_target_") == "w2s_lightning.data.hub.load_hub":
            configs[path.stem] = raw
    return configs


CONFIGS = hub_configs()
NAMES = sorted(CONFIGS)


def fixture_rows(name: str) -> list[dict]:
    return [json.loads(line) for line in (FIXTURES / f"{name}.jsonl").read_text().splitlines() if line.strip()]


def fixture_copy(tmp_path: Path, name: str) -> Path:
    """The dataset's fixture as a local copy holding both of its configured splits."""
    loader = CONFIGS[name]["loader"]
    for split in (loader["train_split"], loader["test_split"]):
        shutil.copy(FIXTURES / f"{name}.jsonl", tmp_path / f"{split}.jsonl")
    return tmp_path


def load(name: str, **overrides) -> dict:
    """Instantiate the config's `loader` node as the pipeline does."""
    node = OmegaConf.create({"dataset": CONFIGS[name]})
    for key, value in overrides.items():
        OmegaConf.update(node, f"dataset.{key}", value)
    try:
        return instantiate(node.dataset.loader)
    except InstantiationException as error:  # hydra wraps the loader's own error, message included
        raise error.__cause__ from None


# ---------------------------------------------------------------- the catalogue


def test_catalogue_covers_the_reference_and_the_nlp_sweep():
    reference = {"sciq", "boolq", "cosmos_qa", "amazon_polarity", "anthropic_hh"}
    # The 22 tasks of the paper's NLP sweep, as EleutherAI lists them.
    # fmt: off
    sweep = {
        "anli_r2", "cola", "dream", "ethics_deontology", "ethics_justice", "ethics_virtue", "ethics_utilitarianism",
        "mc_taco", "amazon_polarity", "hellaswag", "multirc", "openbookqa", "paws", "piqa", "quail", "quartz",
        "social_i_qa", "sst2", "wic", "twitter_sentiment", "sciq", "boolq", "cosmos_qa",
    }
    # fmt: on
    assert reference | sweep <= set(NAMES)
    assert {CONFIGS[name]["loader"]["formatter"] for name in NAMES} == set(FORMATTERS)


@pytest.mark.parametrize("name", NAMES)
def test_config_documents_itself(name):
    raw, text = CONFIGS[name], (CONF_DIR / "dataset" / f"{name}.yaml").read_text()
    assert raw["name"] == name and "/" in raw["hub_id"] and raw["local_path"] is None
    assert all(knob in raw for knob in KNOBS)
    assert raw["n_test"] >= 500 and min(raw["n_weak"], raw["n_strong"], raw["n_val"]) > 0
    # The header quotes the formatter's template exactly, so the docs cannot drift from the code.
    assert f"# Template: {json.dumps(get_formatter(raw['loader']['formatter']).template)}" in text
    for line in text.splitlines():
        key = line.split(":")[0].strip()
        is_knob = line.strip() and not line.startswith("#") and key not in {"loader", "_target_"}
        if is_knob and "${" not in line and key != "name":
            assert " # " in line, f"{name}.yaml: knob without a comment: {line!r}"


def test_configs_compose_as_hydra_options():
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        for name in NAMES:
            cfg = compose(config_name=f"dataset/{name}", overrides=[f"dataset.local_path={FIXTURES}"])
            assert cfg.dataset.loader.local_path == str(FIXTURES)


# ---------------------------------------------------------------- the loader contract


@pytest.mark.parametrize("name", NAMES)
def test_fixture_rows_load_into_the_contract(name, tmp_path):
    frames = load(name, local_path=str(fixture_copy(tmp_path, name)))
    assert set(frames) == {"train", "test"}
    for split, frame in frames.items():
        assert {"id", "text", "label", "group"} <= set(frame.columns), split
        assert frame["id"].map(type).eq(str).all() and frame["text"].map(type).eq(str).all()
        assert frame["text"].str.strip().ne("").all()
        assert set(frame["label"]) == {0, 1}, f"{name} {split}: fixtures must give both labels"
    ids = list(frames["train"]["id"]) + list(frames["test"]["id"])
    assert len(ids) == len(set(ids))
    again = load(name, local_path=str(tmp_path))
    assert all(frames[s].equals(again[s]) for s in frames), "ids, texts and labels must be stable across loads"
    # Cuttable slots are marked where the formatter declares one, and the span is that slot.
    fmt = get_formatter(CONFIGS[name]["loader"]["formatter"])
    train = frames["train"]
    if fmt.cut is None:
        assert (train["cut_start"] < 0).all()
    else:
        spans = [text[s:e] for text, s, e in zip(train["text"], train["cut_start"], train["cut_end"])]
        assert all(span and span == span.strip() for span in spans)


def test_save_to_disk_and_parquet_copies_load_like_jsonl(tmp_path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = fixture_rows("openbookqa")
    (tmp_path / "jsonl").mkdir()
    expected = load("openbookqa", local_path=str(fixture_copy(tmp_path / "jsonl", "openbookqa")))
    datasets.DatasetDict({s: datasets.Dataset.from_list(rows) for s in ("train", "test")}).save_to_disk(
        str(tmp_path / "saved")
    )
    (tmp_path / "parquet").mkdir()
    for split in ("train", "test"):
        pq.write_table(pa.Table.from_pylist(rows), tmp_path / "parquet" / f"{split}.parquet")
    for copy in ("saved", "parquet"):
        frames = load("openbookqa", local_path=str(tmp_path / copy))
        assert all(frames[s].equals(expected[s]) for s in expected), copy


def test_local_copy_errors_name_the_fix(tmp_path):
    with pytest.raises(DatasetError, match=r"not a folder.*dataset.local_path"):
        load("sciq", local_path=str(tmp_path / "missing"))
    shutil.copy(FIXTURES / "sciq.jsonl", tmp_path / "train.jsonl")
    with pytest.raises(DatasetError, match=r"no split 'test'.*test.jsonl"):
        load("sciq", local_path=str(tmp_path))


def test_hidden_test_labels_and_foreign_schemas_are_refused(tmp_path):
    (tmp_path / "train.jsonl").write_text(json.dumps({"sentence": "ok", "label": 1, "idx": 0}) + "\n")
    (tmp_path / "validation.jsonl").write_text(json.dumps({"sentence": "hidden", "label": -1, "idx": 0}) + "\n")
    with pytest.raises(DatasetError, match=r"no labelled examples.*validation"):
        load("cola", local_path=str(tmp_path))
    shutil.copy(FIXTURES / "sst2.jsonl", tmp_path / "train.jsonl")
    shutil.copy(FIXTURES / "sst2.jsonl", tmp_path / "test.jsonl")
    with pytest.raises(DatasetError, match=r"formatter 'sciq'.*'question'"):
        load("sciq", local_path=str(tmp_path))
    with pytest.raises(DatasetError, match=r"no formatter 'nope'"):
        load("sciq", **{"loader.formatter": "nope"})


# ---------------------------------------------------------------- the hub


@pytest.mark.parametrize("name", NAMES)
def test_unreachable_hub_says_how_to_use_a_local_copy(name, monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach the Hugging Face Hub")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DatasetError) as caught:
        load(name)
    message = str(caught.value)
    assert f"dataset '{name}'" in message and CONFIGS[name]["hub_id"] in message
    assert "dataset.local_path=" in message and "save_to_disk" in message and "ConnectionError" in message


def test_offline_mode_without_a_cache_gives_the_same_advice(monkeypatch, tmp_path):
    import datasets
    import huggingface_hub

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path)  # a developer's cached copy must not answer
    with pytest.raises(DatasetError, match=r"dataset 'sciq'.*allenai/sciq.*dataset.local_path="):
        load("sciq")


def test_datasets_with_loading_scripts_are_read_from_the_parquet_export(monkeypatch):
    import datasets

    calls = []

    def fake_load(path, name=None, **kwargs):
        calls.append((path, name, kwargs))
        if len(calls) == 1:
            raise RuntimeError("Dataset scripts are no longer supported, but found piqa.py")
        return datasets.Dataset.from_list(fixture_rows("piqa"))

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    monkeypatch.setattr(hub, "export_config", lambda hub_id: "plain_text")
    frames = load("piqa", **{"loader.test_split": None})
    assert set(frames["train"]["label"]) == {0, 1}
    path, _, kwargs = calls[1]
    assert path == "ybisk/piqa" and kwargs["revision"] == hub.PARQUET_EXPORT
    assert kwargs["data_files"] == {"train": "plain_text/train/*.parquet"}


def test_save_copy_writes_a_local_copy_the_loader_reads(monkeypatch, tmp_path):
    import datasets

    rows = fixture_rows("social_i_qa")
    monkeypatch.setattr(datasets, "load_dataset", lambda *args, **kwargs: datasets.Dataset.from_list(rows))
    hub.save_copy("allenai/social_i_qa", None, ["train", "validation"], str(tmp_path / "copy"))
    assert sorted(p.name for p in (tmp_path / "copy").iterdir()) == ["train.parquet", "validation.parquet"]
    from_copy = load("social_i_qa", local_path=str(tmp_path / "copy"))
    from_hub = load("social_i_qa")
    assert all(from_copy[s].equals(from_hub[s]) for s in ("train", "test"))


# ---------------------------------------------------------------- what each formatter means


def rendered(name: str) -> list[Example]:
    fmt = get_formatter(CONFIGS[name]["loader"]["formatter"])
    return [e for i, row in enumerate(fixture_rows(name)) for e in fmt.render(row, random.Random(i))]


def positives(name: str) -> list[dict]:
    return [e.slots for e in rendered(name) if e.label == 1]


def test_multiple_choice_keys_point_at_the_right_option():
    assert [s["answer"] for s in positives("sciq")] == ["carbon dioxide", "heart", "100"]
    assert [s["answer"] for s in positives("openbookqa")] == [
        "a steel spoon in a cafeteria",
        "drops",
        "animals eating fruit",
    ]
    assert [s["answer"] for s in positives("social_i_qa")] == ["grateful to Jordan", "dry off and change clothes"]
    assert [s["answer"] for s in positives("hellaswag")] == [
        "spreads butter on one slice and adds cheese.",
        "scrubs the car door with a sponge.",
    ]
    assert [s["answer"] for s in positives("quail")] == ["She watered the tomatoes.", "Taller than Lena."]
    assert [s["answer"] for s in positives("dream")] == ["She has to work.", "Five dollars."]
    # One example per option, one of them positive.
    assert len(rendered("sciq")) == 12 and len(rendered("piqa")) == 4


def test_binary_readings_of_three_way_and_split_fields():
    assert [e.label for e in rendered("anli_r2")] == [1, 0, 0]  # neutral and contradiction are not entailed
    virtue = rendered("ethics_virtue")[0].slots
    assert virtue == {"sentence": "Tom returned the wallet he found with all the cash still inside.", "trait": "honest"}
    assert len(rendered("cola")) == 4 and len(rendered("hellaswag")) == 8  # unlabelled rows give nothing


@pytest.mark.parametrize("name", ["anthropic_hh", "ethics_utilitarianism"])
def test_pairwise_label_says_whether_a_is_the_preferred_one(name):
    rows, fmt = fixture_rows(name), get_formatter(CONFIGS[name]["loader"]["formatter"])
    orders = set()
    for i, row in enumerate(rows):
        (example,) = fmt.render(row, random.Random(i))
        preferred = hub_reply(row["chosen"]) if name == "anthropic_hh" else row["baseline"]
        assert (example.slots["a"] == preferred.strip()) == bool(example.label)
        assert preferred.strip() in (example.slots["a"], example.slots["b"])
        orders.add(example.label)
    assert orders == {0, 1}


def hub_reply(transcript: str) -> str:
    return transcript.rsplit("\n\nAssistant:", 1)[1]


# ---------------------------------------------------------------- label leaks


def content_leaves(row: dict, fields: tuple[str, ...]) -> list[str]:
    leaves = []

    def walk(value):
        if isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)
        elif isinstance(value, str) and value.strip():
            leaves.append(value.strip())

    for field in fields:
        value = row
        for part in field.split("."):
            value = value[part]
        walk(value)
    return leaves


def residue(value: str, leaves: list[str]) -> str:
    """What of a slot value is not the row's own content: "" when it is a piece of one content
    field, or content fields joined by whitespace; otherwise the leftover text."""
    if not value or any(re.search(rf"(?<!\w){re.escape(value)}(?!\w)", leaf) for leaf in leaves):
        return ""
    for leaf in sorted(leaves, key=len, reverse=True):
        value = value.replace(leaf, " ")
    return " ".join(value.split())


def skeleton(fmt: Formatter, example: Example, leaves: list[str]) -> str:
    assert example.text == fmt.template.format(**example.slots)
    return fmt.template.format(**{key: f"<{residue(value, leaves)}>" for key, value in example.slots.items()})


def leak_report(fmt: Formatter, rows: list[dict]) -> list[str]:
    """Problems that would let a model read the label off the formatting, not the content."""
    skeletons: dict[int, set[str]] = {0: set(), 1: set()}
    for i, row in enumerate(rows):
        leaves = content_leaves(row, fmt.content)
        for example in fmt.render(row, random.Random(i)):
            skeletons[example.label].add(skeleton(fmt, example, leaves))
    problems = []
    if not skeletons[0] or not skeletons[1]:
        problems.append(f"fixtures give only labels {[k for k, v in skeletons.items() if v]}")
    if len(skeletons[0] | skeletons[1]) > 1:
        problems.append(f"text outside the row's content differs: label 0 {skeletons[0]} vs label 1 {skeletons[1]}")
    words = {label: set(re.findall(r"[a-z]+", " ".join(found).lower())) for label, found in skeletons.items()}
    one_sided = (words[0] ^ words[1]) & LABEL_WORDS
    if one_sided:
        problems.append(f"label words only with one label: {sorted(one_sided)}")
    return problems


@pytest.mark.parametrize("name", NAMES)
def test_label_cannot_be_read_off_the_template(name):
    fmt = get_formatter(CONFIGS[name]["loader"]["formatter"])
    assert leak_report(fmt, fixture_rows(name)) == []


def test_leak_check_catches_the_known_catalogue_leaks():
    # The key shown as its letter, wrong options as their text (a public openbookqa formatter).
    def letter_for_key(row, rng):
        texts, keys = row["choices"]["text"], row["choices"]["label"]
        return [
            (
                {"question": row["question_stem"], "answer": row["answerKey"] if key == row["answerKey"] else text},
                int(key == row["answerKey"]),
            )
            for text, key in zip(texts, keys, strict=True)
        ]

    # The answer word in the input (public ethics formatters).
    def answer_in_input(row, rng):
        return [({"scenario": row["scenario"], "answer": "yes" if row["label"] else "no"}, row["label"])]

    # A right option cleaned differently from the wrong ones.
    def shouted_key(row, rng):
        return [
            ({**s, "answer": s["answer"].upper() if y else s["answer"]}, y)
            for s, y in each_option({"question": row["question"]}, [row["correct_answer"], row["distractor1"]], 0)
        ]

    cases = [
        (
            Formatter("leaky_obqa", "Q: {question}\nA: {answer}", ("question_stem", "choices.text"), letter_for_key),
            "openbookqa",
        ),
        (
            Formatter("leaky_ethics", "{scenario}\nReasonable: {answer}", ("scenario",), answer_in_input),
            "ethics_justice",
        ),
        (
            Formatter(
                "leaky_case", "Q: {question}\nA: {answer}", ("question", "correct_answer", "distractor1"), shouted_key
            ),
            "sciq",
        ),
    ]
    for fmt, fixture in cases:
        assert leak_report(fmt, fixture_rows(fixture)), fmt.name
    assert any("label words" in p for p in leak_report(cases[1][0], fixture_rows("ethics_justice")))
