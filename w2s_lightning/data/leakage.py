"""The duplicate and leakage guard. Texts are compared after normalising what varies between
copies of one text (case, whitespace, URLs, user mentions, a leading retweet marker), so a
retweet or a re-crawled row counts as the same text. Within the training pool a repeated text
is dropped (two copies could land in A and B); a training text that also stands in the test
set is dropped from training. Every drop is counted; more than `max_overlap` of a pool is an
error naming the files."""

from __future__ import annotations

import functools
import logging
import re

import pandas as pd

from w2s_lightning.errors import DatasetError

log = logging.getLogger(__name__)

URL = re.compile(r"(?:https?://|www\.)\S+", re.IGNORECASE)
MENTION = re.compile(r"(?<!\w)@\w+")
SPACE = re.compile(r"\s+")
RETWEET = re.compile(r"^(?:rt\b[\s:]*)+")


@functools.lru_cache(maxsize=1 << 17)  # a pool is normalised up to 3 times a run; bounded for hub-sized pools
def normalise(text: str) -> str:
    text = SPACE.sub(" ", MENTION.sub(" ", URL.sub(" ", str(text).lower()))).strip()
    return RETWEET.sub("", text).strip(" :")


def source_of(frame: pd.DataFrame, default: str) -> str:
    """Where a frame was read from, as its loader recorded it (for messages)."""
    return frame.attrs.get("source", default)


def drop_repeats(frame: pd.DataFrame, dataset: str, max_overlap: float, knob: str) -> tuple[pd.DataFrame, int]:
    """Keep the first copy of each normalised text."""
    repeated = frame["text"].map(normalise).duplicated()
    n = int(repeated.sum())
    share = n / max(1, len(frame))
    if share > max_overlap:
        raise DatasetError(
            f"dataset '{dataset}': {n} of {len(frame)} examples ({share:.1%}) of {source_of(frame, 'the data')} "
            "repeat another example's text (compared ignoring case, whitespace, URLs and @mentions), more than "
            f"{knob}={max_overlap}; fix: deduplicate the file, or raise {knob} to drop the repeats and go on"
        )
    return frame[~repeated].reset_index(drop=True), n


def drop_test_overlap(
    pool: pd.DataFrame, test: pd.DataFrame, dataset: str, max_overlap: float, knob: str
) -> tuple[pd.DataFrame, int]:
    """Training examples whose text stands in the test set."""
    overlapping = pool["text"].map(normalise).isin(set(test["text"].map(normalise)))
    n = int(overlapping.sum())
    share = n / max(1, len(test))
    if share > max_overlap:
        raise DatasetError(
            f"dataset '{dataset}': {n} training examples of {source_of(pool, 'the training data')} share their text "
            f"with the test set {source_of(test, '')} ({share:.1%} of the test set's size, compared ignoring case, "
            f"whitespace, URLs and @mentions), more than {knob}={max_overlap}; fix: remove the test texts from the "
            f"training file, or raise {knob} to drop them from training and go on"
        )
    return pool[~overlapping].reset_index(drop=True), n
