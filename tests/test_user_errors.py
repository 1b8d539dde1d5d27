"""Bad input, one clear message. Each case is a mistake a user can make (a knob out of range, a
broken data file) and must stop with one line `error: ...` on stderr that names the knob or the
file and the fix, a non-zero exit status and no traceback. The tables run in-process through
the reporter `train.py` uses; a few cases run the real command line to prove the wiring."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest
from hydra.utils import instantiate

from w2s_lightning.checks import check_config
from w2s_lightning.cli import main_task, report_errors
from w2s_lightning.data.files import read_table, validate_frame
from w2s_lightning.data.sources import load_local

from .helpers import ROOT, TINY, compose_cfg
from .test_cli import env


def one_error_line(capsys, fn, *args, **kwargs) -> str:
    """Run `fn` through the CLI's reporter; return its one message, checking the exit."""
    with pytest.raises(SystemExit) as stop:
        report_errors(fn, *args, **kwargs)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    [line] = err.splitlines()
    assert line.startswith("error: ") and "; fix: " in line
    return line


# override -> what the message must also say (it always says the knob, its value and "fix")
KNOB_CASES = {
    "dataset.n_weak=0": "an integer >= 1",
    "dataset.n_strong=-5": "an integer >= 1",
    "dataset.n_val=0": "an integer >= 1",
    "dataset.n_test=0": "an integer >= 1",
    "dataset.n_weak=1.5": "an integer >= 1",
    "train.epochs=0": "set train.epochs to an integer >= 1",
    "train.epochs=abc": "an integer >= 1",
    "train.epochs=1.5": "an integer >= 1",
    "weak_model.batch_size=0": "an integer >= 1",
    "strong_model.eval_batch_size=0": "an integer >= 1",
    "strong_model.micro_batch_size=0": "null or an integer >= 1",
    "strong_model.micro_batch_size=1000": "at most 16",
    "weak_model.lr=0": "a finite number > 0",
    "strong_model.lr=-1": "a finite number > 0",
    "strong_model.lr=inf": "a finite number > 0",
    "strong_model.lr=nan": "a finite number > 0",
    "weak_model.max_length=0": "an integer >= 1",
    "strong_model.attn_implementation=flash": "null or one of eager, sdpa",
    "dataset.holdout_fraction=0": "0 < x < 1",
    "dataset.holdout_fraction=1": "0 < x < 1",
    "ceiling_split=c": "a or b",
    "train.warmup_ratio=1": "0 <= x < 1",
    "train.warmup_ratio=-0.1": "0 <= x < 1",
    "train.grad_clip=0": "null or a finite number > 0",
    "++dataset.max_overlap=1.0": "0 <= x < 1",
    "loss=logconf loss.aux_coef=1.5": "0 <= x <= 1",
    "loss=logconf loss.warmup_frac=-0.2": "0 <= x <= 1",
    "loss=product loss.warmup_frac=2": "0 <= x <= 1",
    "seed=-1": "an integer >= 0",
    "seed=1.5": "an integer >= 0",
}


@pytest.mark.parametrize(("overrides", "says"), KNOB_CASES.items(), ids=list(KNOB_CASES))
def test_a_bad_knob_is_named_with_its_value_and_fix(tmp_path, capsys, overrides, says):
    cfg = compose_cfg(tmp_path, *overrides.split())
    line = one_error_line(capsys, check_config, cfg)
    knob = overrides.split()[-1].lstrip("+").split("=")[0]
    assert line.startswith(f"error: {knob}=") and says in line


def test_the_shipped_defaults_pass_the_checks(tmp_path):
    check_config(compose_cfg(tmp_path))


# Every file holds the word SECRET in its texts, labels and ids: messages must never quote it.
def jsonl(*lines: str):
    return lambda path: path.write_text("".join(line + "\n" for line in lines))


def rows(*records: dict):
    def write(path):
        frame = pd.DataFrame(list(records), columns=None if records else ["text", "label"])
        if path.suffix == ".parquet":
            frame.to_parquet(path)
        elif path.suffix == ".csv":
            frame.to_csv(path, index=False)
        else:
            frame.to_json(path, orient="records", lines=True)

    return write


def text(content: str | bytes):
    return lambda path: path.write_bytes(content if isinstance(content, bytes) else content.encode())


LINE = '{"text": "SECRET", "label": 1}'
GOOD = {"text": "SECRET one", "label": 1, "uid": "SECRET-a", "item": "SECRET-q1"}
NEXT = {"text": "SECRET two", "label": 0, "uid": "SECRET-b", "item": "SECRET-q1"}
FILE_CASES = {
    # id: (file name, writer or None for no file, column settings, what the message must say)
    "missing file": ("nope.jsonl", None, {}, "does not exist; fix: set dataset.path"),
    "missing test file": ("nope.csv", None, {"knob": "dataset.test_path"}, "fix: set dataset.test_path"),
    "a folder": ("data.jsonl", lambda p: p.mkdir(), {}, "is a folder"),
    "unknown suffix": ("data.txt", text("SECRET"), {}, "use .jsonl, .csv or .parquet"),
    "json, not json lines": ("data.json", text('[{"text": "SECRET"}]'), {}, "use .jsonl"),
    "empty jsonl": ("data.jsonl", text(""), {}, "is empty (0 bytes)"),
    "empty csv": ("data.csv", text(""), {}, "is empty (0 bytes)"),
    "empty parquet": ("data.parquet", text(""), {}, "is empty (0 bytes)"),
    "only blank lines": ("data.jsonl", text("\n  \n\n"), {}, "only whitespace"),
    "csv header only": ("data.csv", text("text,label\n"), {}, "has no rows"),
    "parquet without rows": ("data.parquet", rows(), {}, "has no rows"),
    "latin-1 jsonl": ("data.jsonl", text('{"text": "SECRET", "label": 1}\n{"text": "caf\xe9"}\n'.encode("latin-1")),
                      {}, "byte offset 44, line 2); fix: save it as UTF-8"),
    "utf-16 csv": ("data.csv", text("text,label\nSECRET,1\n".encode("utf-16")), {}, "save it as UTF-8"),
    "truncated json line": ("data.jsonl", jsonl('{"text": "SECRET", "label": 1}', '{"text": "SECRET", "lab'), {},
                            "line 2 is not valid JSON"),
    "single quotes": ("data.jsonl", jsonl("{'text': 'SECRET', 'label': 1}"), {}, "line 1 is not valid JSON"),
    "array line": ("data.jsonl", jsonl('{"text": "SECRET", "label": 1}', '["SECRET", 1]'), {},
                   "line 2 holds an array, not a JSON object"),
    "string line": ("data.jsonl", jsonl('"SECRET"'), {}, "line 1 holds a string"),
    "number line": ("data.jsonl", jsonl('{"text": "SECRET", "label": 1}', "", "7"), {}, "line 3 holds a number"),
    "csv extra field": ("data.csv", text("text,label\nSECRET,1\nSECRET, two,0\n"), {}, "not valid CSV at line 3"),
    "csv open quote": ("data.csv", text('text,label\nSECRET,1\n"SECRET,0\n'), {}, "not valid CSV at line 3"),
    "not parquet": ("data.parquet", text("SECRET,1\n" * 5), {}, "not a readable parquet file"),
    "no text column": ("data.jsonl", rows({"body": "SECRET", "label": 1}), {}, "no column 'text' (dataset.text_column"),
    "no label column": ("data.csv", rows({"text": "SECRET", "y": 1}), {},
                        "fix: set dataset.label_column"),
    "label 2": ("data.jsonl", rows(GOOD, {**NEXT, "label": 2}), {}, "a number other than 0 or 1 in line 2"),
    "label 0.5": ("data.parquet", rows(GOOD, {**NEXT, "label": 0.5}), {}, "a number other than 0 or 1 in row 2"),
    "label -1 in csv": ("data.csv", rows({**GOOD, "label": -1}, NEXT), {}, "in row 1 below the header"),
    "label 3 after blank lines": ("data.jsonl", jsonl(LINE, "", LINE, "  ", '{"text": "SECRET", "label": 3}'), {},
                                  "in line 5"),
    "label yes": ("data.jsonl", rows(GOOD, {**NEXT, "label": "SECRET yes"}), {}, "not 0 or 1 in line 2"),
    "label missing": ("data.jsonl", jsonl('{"text": "SECRET", "label": 1}', '{"text": "SECRET"}'), {},
                      "column 'label' is empty in line 2"),
    "empty text": ("data.jsonl", rows(GOOD, {**NEXT, "text": ""}), {}, "column 'text' is empty in line 2"),
    "blank text": ("data.csv", rows({**GOOD, "text": "   "}, NEXT), {}, "'text' is empty in row 1 below the header"),
    "null text": ("data.jsonl", jsonl('{"text": null, "label": 1}'), {}, "'text' is empty in line 1"),
    "no id column": ("data.jsonl", rows(GOOD), {"id_column": "key"}, "no column 'key' (dataset.id_column"),
    "duplicate ids": ("data.jsonl", rows(GOOD, NEXT, {**NEXT, "uid": "SECRET-a"}), {"id_column": "uid"},
                      "repeats an id (line 1 and line 3"),
    "missing id": ("data.jsonl", rows(GOOD, {**NEXT, "uid": None}), {"id_column": "uid"}, "'uid' is empty in line 2"),
    "no group column": ("data.jsonl", rows(GOOD), {"group_column": "question"}, "fix: set dataset.group_column"),
    "missing group": ("data.jsonl", rows(GOOD, {**NEXT, "item": " "}), {"group_column": "item"}, "empty in line 2"),
}  # fmt: skip


def load(path, knob: str = "dataset.path", **columns) -> None:
    """What `load_local` does with each file: read it, then check its columns and rows."""
    validate_frame(
        read_table(path, knob), f"dataset file {path}", **{"text_column": "text", "label_column": "label", **columns}
    )


@pytest.mark.parametrize(("name", "write", "columns", "says"), FILE_CASES.values(), ids=list(FILE_CASES))
def test_a_bad_file_is_named_with_the_place_and_fix_but_not_its_contents(tmp_path, capsys, name, write, columns, says):
    path = tmp_path / name
    if write is not None:
        write(path)
    line = one_error_line(capsys, load, path, **columns)
    assert f"dataset file {path}" in line and says in line
    assert "SECRET" not in line


def test_files_that_are_fine_pass(tmp_path):
    """A byte-order mark, Windows line ends, blank lines, labels as 0.0/1.0 or "1" and numeric
    texts are all fine: the checks must not cry wolf."""
    (tmp_path / "ok.jsonl").write_bytes(b'\xef\xbb\xbf{"text": "a", "label": 1}\r\n\r\n{"text": 2, "label": "0"}\r\n')
    (tmp_path / "ok.csv").write_text('text,label,uid\nsome text,1.0,1\n"b, quoted",0.0,2\n')
    rows(GOOD, NEXT)(tmp_path / "ok.parquet")
    for name in ("ok.jsonl", "ok.csv", "ok.parquet"):
        load(tmp_path / name)
    assert load_local(str(tmp_path / "ok.csv"), id_column="uid")["train"]["label"].tolist() == [1, 0]


def test_an_error_wrapped_by_instantiate_is_reported_as_itself(tmp_path, capsys):
    loader = {"_target_": "w2s_lightning.data.sources.load_local", "path": str(tmp_path / "nope.jsonl")}
    line = one_error_line(capsys, instantiate, loader)
    assert line == f"error: dataset file {tmp_path / 'nope.jsonl'} does not exist; fix: set dataset.path to your file"


def test_in_a_sweep_a_user_error_ends_the_job_but_not_the_sweep(tmp_path, capsys):
    assert report_errors(load, tmp_path / "nope.jsonl", multirun=True) is None
    assert capsys.readouterr().err.startswith("error: dataset file")


def test_a_bug_keeps_its_traceback():
    with pytest.raises(ZeroDivisionError):
        report_errors(lambda: 1 / 0)


def test_the_task_train_py_runs_reports_a_bad_file(tmp_path, capsys):
    cfg = compose_cfg(tmp_path, "dataset=local", f"dataset.path={tmp_path / 'nope.jsonl'}")
    line = one_error_line(capsys, main_task, cfg)
    assert "nope.jsonl does not exist" in line


# The real command line: (overrides, exit status, what stderr must say).
CLI_CASES = {
    "bad knob": (["train.epochs=0"], 2, "error: train.epochs=0: must be an integer >= 1; fix:"),
    "bad file": (["dataset=local", "dataset.path={bad}"], 2, "bad.jsonl: line 2 is not valid JSON"),
    "unknown option": (["loss=nope"], 1, "Could not find 'loss/nope'"),
    "wrong type": (["strong_model.batch_size=abc"], 1, "could not be converted to Integer"),
}


@pytest.mark.parametrize(("overrides", "code", "says"), CLI_CASES.values(), ids=list(CLI_CASES))
def test_the_command_line_prints_one_message_and_no_traceback(tmp_path, overrides, code, says):
    jsonl(LINE, '{"text": "SECRET"')(tmp_path / "bad.jsonl")
    overrides = [o.format(bad=tmp_path / "bad.jsonl") for o in overrides]
    cmd = [sys.executable, str(ROOT / "train.py"), *TINY, f"paths.root_dir={tmp_path}", *overrides]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == code
    assert says in proc.stderr and "Traceback" not in proc.stderr and "SECRET" not in proc.stderr
    if code == 2:  # ours, where Hydra's own messages take several lines
        assert sum(line.startswith("error: ") for line in proc.stderr.splitlines()) == 1
