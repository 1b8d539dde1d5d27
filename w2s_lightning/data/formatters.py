"""Hub rows as binary (text, label) examples.

Each formatter owns one fixed template. Its slots are filled with the row's own text, cleaned
the same way whichever label the example gets, so the label cannot be read off the template:
no answer letters for one label and answer text for the other, no label words in the input.
Multiple-choice items become one example per distinct option (label 1 for the key); pairwise
preferences show both candidates as A and B in a seeded random order (label 1 when A is the
preferred one). `content` names the hub fields whose text may fill a slot; the leak tests strip
exactly that text and require what is left to be the same for both labels.

`cut` names the one slot that may be shortened when a text is longer than a model reads (the
passage, context or dialogue); the question and the answer are never cut, so truncation cannot
turn the options of one question into the same input. `cut_from` says which end of that slot
goes first: the end of a passage, the start of a dialogue (its last turns lead to the answer).

`item` names the fields that identify the item a row belongs to: every example of one item
lands in the same split. A row is its own item unless a passage, context or scenario is shared
by several rows (reading comprehension asks several questions about one passage), in which case
the shared text is the item, so no passage is seen in training and labelled or tested again."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from w2s_lightning.errors import DatasetError

Slots = dict[str, str]
Build = Callable[[dict, "random.Random | None"], list[tuple[Slots, int]]]
ItemKey = Callable[[dict], str]


class Example(NamedTuple):
    text: str
    label: int
    slots: Slots
    cut_start: int = -1  # characters [cut_start, cut_end) of `text` are the cuttable slot; -1: none
    cut_end: int = -1


@dataclass(frozen=True)
class Formatter:
    name: str
    template: str  # str.format template; every slot comes from the row's content fields
    content: tuple[str, ...]  # hub fields (dotted for nested ones) whose text may appear in a slot
    build: Build  # row -> [(slots, label)]; [] for rows without a usable label
    random_order: bool = False  # needs a per-row seeded rng to order candidates
    cut: str | None = None  # the slot that may be shortened to fit max_length; None: no slot may
    cut_from: str = "end"  # which end of the cut slot is dropped first: "end" or "start"
    item: ItemKey | None = None  # row -> the text that identifies its item; None: the row is the item

    def item_of(self, row: dict, index: int) -> str:
        if self.item is None:
            return str(index)
        return hashlib.sha1(self.item(row).encode()).hexdigest()[:16]

    def __post_init__(self):
        if self.cut is not None and self.template.count("{" + self.cut + "}") != 1:
            raise ValueError(f"formatter {self.name}: cut slot '{self.cut}' must appear once in the template")

    def render(self, row: dict, rng: random.Random | None = None) -> list[Example]:
        examples = []
        for slots, label in self.build(row, rng):
            clean = {key: str(value).strip() for key, value in slots.items()}
            text = self.template.format(**clean)
            start = end = -1
            if self.cut is not None:
                start = len(self.template.split("{" + self.cut + "}")[0].format(**clean))
                end = start + len(clean[self.cut])
            examples.append(Example(text, int(label), clean, start, end))
        return examples


FORMATTERS: dict[str, Formatter] = {}


def formatter(
    name: str,
    template: str,
    content: Sequence[str],
    random_order: bool = False,
    cut: str | None = None,
    cut_from: str = "end",
    item: Sequence[str] | ItemKey | None = None,
):
    """`item`: the fields shared by the rows of one item, or a function of the row."""
    if item is not None and not callable(item):
        fields = tuple(item)
        item = lambda row: "\x1f".join(str(row[f]) for f in fields)  # noqa: E731

    def register(build: Build) -> Build:
        FORMATTERS[name] = Formatter(name, template, tuple(content), build, random_order, cut, cut_from, item)
        return build

    return register


def get_formatter(name: str) -> Formatter:
    if name not in FORMATTERS:
        raise DatasetError(f"no formatter '{name}'; fix: set dataset.loader.formatter to one of {sorted(FORMATTERS)}")
    return FORMATTERS[name]


# ---------------------------------------------------------------- shared shapes


def binary_label(value) -> int | None:
    """The row's 0/1 label; None for the unlabelled rows of hidden test splits (-1 or empty)."""
    if value is None or value == "" or int(value) < 0:
        return None
    label = int(value)
    if label not in (0, 1):
        raise ValueError(f"label {value!r} is not 0/1")
    return label


def labelled(slots: Slots, value) -> list[tuple[Slots, int]]:
    label = binary_label(value)
    return [] if label is None else [(slots, label)]


def each_option(shared: Slots, options: Sequence[str], key: int | None) -> list[tuple[Slots, int]]:
    """One example per distinct option under the slot `answer`; label 1 for the key. An option
    that repeats the key's text is dropped: the same text cannot carry both labels."""
    if key is None:
        return []
    right = str(options[key]).strip()
    if not right:
        return []
    examples, seen = [], set()
    for index, option in enumerate(options):
        text = str(option).strip()
        if not text or text in seen or (index != key and text == right):
            continue
        seen.add(text)
        examples.append(({**shared, "answer": text}, int(index == key)))
    return examples


def option_index(value, first: int = 0) -> int | None:
    """A key stored as a number (possibly a string, possibly 1-based); None when hidden."""
    if value is None or value == "" or int(value) < first:
        return None
    return int(value) - first


def preference(shared: Slots, preferred: str, other: str, rng: random.Random) -> list[tuple[Slots, int]]:
    """Both candidates as `a` and `b` in a seeded random order; label 1 when A is preferred."""
    preferred, other = preferred.strip(), other.strip()
    if not preferred or not other or preferred == other:
        return []
    a_preferred = rng.random() < 0.5
    a, b = (preferred, other) if a_preferred else (other, preferred)
    return [({**shared, "a": a, "b": b}, int(a_preferred))]


# ---------------------------------------------------------------- openai/weak-to-strong's five


@formatter(
    "sciq",
    "Question: {question}\nAnswer: {answer}",
    ["question", "correct_answer", "distractor1", "distractor2", "distractor3"],
)
def sciq(row, rng):
    options = [row["correct_answer"], row["distractor1"], row["distractor2"], row["distractor3"]]
    return each_option({"question": row["question"]}, options, 0)


@formatter(
    "boolq", "Passage: {passage}\nQuestion: {question}?", ["passage", "question"], cut="passage", item=["passage"]
)
def boolq(row, rng):
    # The hub's questions are lower case without a question mark; the template adds it for every row.
    return labelled({"passage": row["passage"], "question": row["question"].rstrip("?")}, row["answer"])


@formatter(
    "cosmos_qa",
    "Context: {context}\nQuestion: {question}\nAnswer: {answer}",
    ["context", "question", "answer0", "answer1", "answer2", "answer3"],
    cut="context",
    item=["context"],
)
def cosmos_qa(row, rng):
    options = [row[f"answer{i}"] for i in range(4)]
    return each_option({"context": row["context"], "question": row["question"]}, options, option_index(row["label"]))


@formatter("amazon_polarity", "Title: {title}\nReview: {content}", ["title", "content"], cut="content")
def amazon_polarity(row, rng):
    return labelled({"title": row["title"], "content": row["content"]}, row["label"])


HH_TURN = "\n\nAssistant:"


def last_turn(transcript: str) -> tuple[str, str] | None:
    cut = transcript.rfind(HH_TURN)
    return None if cut < 0 else (transcript[:cut], transcript[cut + len(HH_TURN) :])


@formatter(
    "anthropic_hh",
    "{dialogue}\n\nResponse A: {a}\n\nResponse B: {b}",
    ["chosen", "rejected"],
    random_order=True,
    cut="dialogue",
    cut_from="start",  # the last turns are what the responses answer
)
def anthropic_hh(row, rng):
    # One response read alone does not say whether it was chosen; two side by side do.
    chosen, rejected = last_turn(row["chosen"]), last_turn(row["rejected"])
    if chosen is None or rejected is None or chosen[0].strip() != rejected[0].strip():
        return []
    return preference({"dialogue": chosen[0]}, chosen[1], rejected[1], rng)


# ---------------------------------------------------------------- the NLP sweep


@formatter(
    "anli",
    "Premise: {premise}\nHypothesis: {hypothesis}\nDoes the premise entail the hypothesis?",
    ["premise", "hypothesis"],
    cut="premise",
    item=["premise"],
)
def anli(row, rng):
    # 0 entailment, 1 neutral, 2 contradiction: entailed (1) against not entailed (0), as in RTE.
    if option_index(row["label"]) is None:
        return []
    return [({"premise": row["premise"], "hypothesis": row["hypothesis"]}, int(int(row["label"]) == 0))]


@formatter("cola", "Sentence: {sentence}\nIs this sentence acceptable English?", ["sentence"], cut="sentence")
def cola(row, rng):
    return labelled({"sentence": row["sentence"]}, row["label"])


@formatter(
    "dream",
    "Dialogue:\n{dialogue}\nQuestion: {question}\nAnswer: {answer}",
    ["dialogue", "question", "choice"],
    cut="dialogue",
    cut_from="start",
    item=["dialogue"],
)
def dream(row, rng):
    options = list(row["choice"])
    key = options.index(row["answer"]) if row["answer"] in options else None
    return each_option({"dialogue": "\n".join(row["dialogue"]), "question": row["question"]}, options, key)


@formatter(
    "ethics_deontology",
    "Scenario: {scenario}\nExcuse: {excuse}\nIs this excuse reasonable?",
    ["scenario", "excuse"],
    cut="scenario",
    item=["scenario"],
)
def ethics_deontology(row, rng):
    return labelled({"scenario": row["scenario"], "excuse": row["excuse"]}, row["label"])


@formatter("ethics_justice", "Statement: {scenario}\nIs this reasonable?", ["scenario"], cut="scenario")
def ethics_justice(row, rng):
    return labelled({"scenario": row["scenario"]}, row["label"])


@formatter(
    "ethics_virtue",
    "Sentence: {sentence}\nTrait: {trait}\nDoes the person in the sentence show this trait?",
    ["scenario"],
    cut="sentence",
    item=lambda row: row["scenario"].rpartition("[SEP]")[0].strip(),  # one sentence, five traits
)
def ethics_virtue(row, rng):
    # The hub stores "sentence [SEP] trait" in one field; the template shows them as two slots.
    sentence, sep, trait = row["scenario"].rpartition("[SEP]")
    if not sep:
        return []
    return labelled({"sentence": sentence, "trait": trait}, row["label"])


@formatter(
    "ethics_utilitarianism",
    "Scenario A: {a}\nScenario B: {b}\nIs scenario A more pleasant than scenario B?",
    ["baseline", "less_pleasant"],
    random_order=True,
)
def ethics_utilitarianism(row, rng):
    # Every hub row lists the more pleasant scenario first; the seeded order hides which is which.
    return preference({}, row["baseline"], row["less_pleasant"], rng)


@formatter(
    "mc_taco",
    "Context: {sentence}\nQuestion: {question}\nCandidate answer: {answer}",
    ["sentence", "question", "answer"],
    cut="sentence",
    item=["sentence"],  # several questions per sentence, each with many candidate rows
)
def mc_taco(row, rng):
    return labelled({"sentence": row["sentence"], "question": row["question"], "answer": row["answer"]}, row["label"])


# The start of the context goes first: its end is what the continuation continues.
@formatter(
    "hellaswag",
    "Context: {context}\nContinuation: {answer}",
    ["ctx", "endings"],
    cut="context",
    cut_from="start",
    item=["ctx"],
)
def hellaswag(row, rng):
    return each_option({"context": row["ctx"]}, row["endings"], option_index(row["label"]))


@formatter(
    "multirc",
    "Passage: {paragraph}\nQuestion: {question}\nCandidate answer: {answer}",
    ["paragraph", "question", "answer"],
    cut="paragraph",
    item=["paragraph"],  # many questions per paragraph, each with many candidate rows
)
def multirc(row, rng):
    slots = {"paragraph": row["paragraph"], "question": row["question"], "answer": row["answer"]}
    return labelled(slots, row["label"])


def keyed_choices(row) -> tuple[list[str], int | None]:
    """`choices: {text, label}` with `answerKey` naming one label: the option texts and the key."""
    texts, keys = list(row["choices"]["text"]), list(row["choices"]["label"])
    return texts, keys.index(row["answerKey"]) if row["answerKey"] in keys else None


@formatter("openbookqa", "Question: {question}\nAnswer: {answer}", ["question_stem", "choices.text"])
def openbookqa(row, rng):
    # Every option, the key included, is shown by its text, never by its letter.
    texts, key = keyed_choices(row)
    return each_option({"question": row["question_stem"]}, texts, key)


@formatter(
    "paws",
    "Sentence 1: {sentence1}\nSentence 2: {sentence2}\nDo these sentences mean the same thing?",
    ["sentence1", "sentence2"],
)
def paws(row, rng):
    return labelled({"sentence1": row["sentence1"], "sentence2": row["sentence2"]}, row["label"])


@formatter("piqa", "Goal: {goal}\nSolution: {answer}", ["goal", "sol1", "sol2"])
def piqa(row, rng):
    return each_option({"goal": row["goal"]}, [row["sol1"], row["sol2"]], option_index(row["label"]))


@formatter(
    "quail",
    "Passage: {context}\nQuestion: {question}\nAnswer: {answer}",
    ["context", "question", "answers"],
    cut="context",
    item=["context"],  # about fifteen questions per passage
)
def quail(row, rng):
    options = row["answers"]
    return each_option(
        {"context": row["context"], "question": row["question"]}, options, option_index(row["correct_answer_id"])
    )


@formatter(
    "quartz",
    "Passage: {para}\nQuestion: {question}\nAnswer: {answer}",
    ["para", "question", "choices.text"],
    cut="para",
    item=["para"],
)
def quartz(row, rng):
    texts, key = keyed_choices(row)
    return each_option({"para": row["para"], "question": row["question"]}, texts, key)


@formatter(
    "social_i_qa",
    "Context: {context}\nQuestion: {question}\nAnswer: {answer}",
    ["context", "question", "answerA", "answerB", "answerC"],
    cut="context",
    item=["context"],
)
def social_i_qa(row, rng):
    options = [row["answerA"], row["answerB"], row["answerC"]]
    # The hub's label is "1", "2" or "3".
    return each_option(
        {"context": row["context"], "question": row["question"]}, options, option_index(row["label"], first=1)
    )


@formatter("sst2", "Review: {sentence}", ["sentence"], cut="sentence")
def sst2(row, rng):
    return labelled({"sentence": row["sentence"]}, row["label"])


@formatter(
    "wic",
    "Word: {word}\nSentence 1: {sentence1}\nSentence 2: {sentence2}\n"
    "Is the word used with the same meaning in both sentences?",
    ["word", "sentence1", "sentence2"],
)
def wic(row, rng):
    return labelled({"word": row["word"], "sentence1": row["sentence1"], "sentence2": row["sentence2"]}, row["label"])


@formatter("twitter_sentiment", "Tweet: {text}", ["text"], cut="text")
def twitter_sentiment(row, rng):
    return labelled({"text": row["text"]}, row["label"])
