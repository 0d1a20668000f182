"""A study over damaged point files, and study options that used to end in tracebacks (issue 25, class 3): a
point's metrics*.json or point.json that is not what the study wrote is one error naming the file, in
`--report-only` and in a normal run, and nothing of the study is changed; `--table1` on a missing or small data set
and `--train-args` the trainer refuses (`--help` included) are one usage error."""
import json
import math
import os

import numpy as np
import pytest

from ambient.data.tool import main as dataset_tool
from ambient.study import runner as study

POINT = "c4_n0_seed0"
ARGS = ["--points", "4:0", "--model-channels", "8", "--batch", "4", "--kimg", "0.008"]


def _study(root, metrics=None, record=None, snapshot=None):
    """A study folder with one evaluated point, as the study and ambient.eval write it, with fresh values."""
    rng = np.random.default_rng()
    folder = root / "points" / POINT
    folder.mkdir(parents=True)
    value = float(rng.uniform(1, 100))
    files = {"metrics.json": metrics or {"fd_mnist": value, "fd_mnist_sd": 0.5, "n": 8, "kimg": 0.008, "kid": 0.1,
                                         "memorised": 0.0, "nn_ratio": 2.0, "ref": None},
             "metrics-000000001.json": snapshot or {"fd_mnist": value * 2, "n": 8, "kimg": 0.004},
             "point.json": record or {"train_args": ["--seed", "0"], "train_seconds": float(rng.uniform(1, 9))}}
    for name, content in files.items():
        (folder / name).write_text(json.dumps(content))
    return folder, value


def _tree(root):
    return {p: (p.is_dir(), p.read_bytes() if p.is_file() else None) for p in root.rglob("*")}


def test_an_intact_point_is_reported(tmp_path, capsys):
    folder, value = _study(tmp_path / "s")
    assert study.main(["--dir", str(tmp_path / "s"), *ARGS, "--results", str(tmp_path / "r"), "--report-only"]) == 0
    row = json.loads((tmp_path / "r" / "results.json").read_text())["rows"][0]
    assert row["name"] == POINT and row["value"] == value and json.loads(row["snapshots"]) == {
        "0.004": value * 2, "0.008": value}


def _fifo(path):
    path.unlink()
    os.mkfifo(path)


def _folder(path):
    path.unlink()
    path.mkdir()


DAMAGE = {                                      # file -> (how it is damaged, what the error says)
    "bad JSON": (lambda p: p.write_text('{"fd_mnist": 3.'), "is not valid JSON"),
    "a list": (lambda p: p.write_text("[1, 2]"), "holds list, not a JSON object"),
    "a folder": (_folder, "is not a regular file"),
    "a FIFO": (_fifo, "is not a regular file"),
    "huge": (lambda p: p.write_bytes(b" " * (study.MAX_POINT_FILE + 1)), "more than a point's file ever does"),
    "duplicate keys": (lambda p: p.write_text(p.read_text()[:-1] + ", " + p.read_text()[1:]), "twice"),
}
METRICS_DAMAGE = {
    "no metric": (lambda p: p.write_text('{"n": 8}'), 'has no "fd_mnist" entry'),
    "metric as text": (lambda p: p.write_text('{"fd_mnist": "4.2", "n": 8}'), '"fd_mnist" must be a finite number'),
    "metric NaN": (lambda p: p.write_text('{"fd_mnist": NaN, "n": 8}'), '"fd_mnist" must be a finite number'),
    "n a float": (lambda p: p.write_text('{"fd_mnist": 4.2, "n": 8.5}'), '"n" must be a positive integer'),
    "kimg as text": (lambda p: p.write_text('{"fd_mnist": 4.2, "n": 8, "kimg": "x"}'), '"kimg" must be a finite'),
}
POINT_DAMAGE = {
    "no train_args": (lambda p: p.write_text('{"train_seconds": 1.0}'), 'has no "train_args" entry'),
    "train_args as text": (lambda p: p.write_text('{"train_args": "--seed 0", "train_seconds": 1.0}'),
                           '"train_args" must be a list of strings'),
    "seconds as a list": (lambda p: p.write_text('{"train_args": [], "train_seconds": [1]}'),
                          '"train_seconds" must be a finite number'),
}
CASES = [(f, *d) for f in ("metrics.json", "metrics-000000001.json", "point.json") for d in DAMAGE.values()]
CASES += [(f, *d) for f in ("metrics.json", "metrics-000000001.json") for d in METRICS_DAMAGE.values()]
CASES += [("point.json", *d) for d in POINT_DAMAGE.values()]


@pytest.mark.parametrize("report_only", [True, False], ids=["report-only", "run"])
@pytest.mark.parametrize("name, damage, message", CASES)
def test_a_damaged_point_file_is_one_error_naming_it(tmp_path, capsys, report_only, name, damage, message):
    """Nothing is re-run: the study writes these files atomically, so a damaged one is someone else's, and
    training or evaluating the point again would overwrite it."""
    folder, _ = _study(tmp_path / "s")
    damage(folder / name)
    before = _tree(tmp_path / "s")
    capsys.readouterr()
    code = study.main(["--dir", str(tmp_path / "s"), *ARGS, "--results", str(tmp_path / "r"),
                       *(["--report-only"] if report_only else [])])
    out, err = capsys.readouterr()
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 1 and len(errors) == 1 and str(folder / name) in errors[0] and message in errors[0], err
    assert f"train {POINT}" not in out and f"eval {POINT}" not in out and _tree(tmp_path / "s") == before


def test_a_damaged_record_of_an_unfinished_point_stops_it_before_training(tmp_path, capsys):
    folder, _ = _study(tmp_path / "s")
    (folder / "metrics.json").unlink()
    (folder / "point.json").write_text('{"train_args": {"--seed": 0}, "train_seconds": 1.0}')
    before = _tree(tmp_path / "s")
    assert study.main(["--dir", str(tmp_path / "s"), *ARGS]) == 1
    out = capsys.readouterr().out
    assert f'{folder / "point.json"}: "train_args" must be a list of strings' in out and f"train {POINT}" not in out
    assert _tree(tmp_path / "s") == before


def test_table1_on_a_missing_or_small_data_set_is_one_error(tmp_path, capsys):
    small = tmp_path / "small"
    n = int(np.random.default_rng().integers(1, 5))                 # Table 1 needs 5 images
    assert dataset_tool(["--source", "digits", "--dest", str(small), "--max-images", str(n)]) == 0
    for data, message in [(tmp_path / "none", "data set not found"),
                          (small, f"needs a data set of at least 5 images, got {n}")]:
        capsys.readouterr()
        assert study.main(["--dir", str(tmp_path / "s"), "--table1", "--data", str(data)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("train_args, message", [
    ("--help", "unrecognized arguments: --help"), ("-h", "unrecognized arguments: -h"),
    ("--no-such-flag 3", "unrecognized arguments: --no-such-flag 3"),
    (f"--lr {math.inf}", "argument --lr: 'inf' is not a finite number"),
    ("--precision fp8", "argument --precision: invalid choice"),
    ('--lr "0.1', "No closing quotation"), ("--resume", "argument --resume: expected one argument"),
])
def test_train_args_the_trainer_refuses_are_one_usage_error(tmp_path, capsys, train_args, message):
    capsys.readouterr()
    assert study.main(["--dir", str(tmp_path / "s"), *ARGS, f"--train-args={train_args}"]) == 2
    out, err = capsys.readouterr()
    assert err.startswith("error: --train-args") and message in err and len(err.splitlines()) == 1, err
    assert "usage:" not in out + err and not (tmp_path / "s").exists()
