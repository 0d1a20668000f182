"""The trainer's command line is derived from TrainConfig: every field has a flag (or is excluded on purpose),
each flag lands in its field, and the CLIs run as modules."""
import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from ambient import train
from ambient.training import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
# Fields without a flag, on purpose: sample_steps (the snapshot grids are previews at EDM's 18 Heun steps; images
# to keep or score come from ambient.sample --steps and ambient.eval).
NO_FLAG = {"sample_steps"}
FIELDS = [f.name for f in dataclasses.fields(TrainConfig)]
# field: (the flag's value, the field's value); the flag's name comes from the parser.
VALUES = {
    "data": ("digits", "digits"), "n_clean": ("5", 5), "n_noisy": ("6", 6), "clean_fraction": ("0.3", 0.3),
    "sigma_n": ("0.1,0.4", (0.1, 0.4)), "sigma_share": ("1", (1.0,)), "p_clean": ("0.5", 0.5),
    "keep_fraction": ("0.5", 0.5), "data_seed": ("3", 3), "cond": (None, True), "xflip": (None, True),
    "max_shift": ("2", 2), "workers": ("1", 1), "preset": ("ddpmpp", "ddpmpp"), "model_channels": ("32", 32),
    "dropout": ("0.1", 0.1), "sigma_sampling": ("truncate", "truncate"), "weighting": ("ambient", "ambient"),
    "P_mean": ("-1", -1.0), "P_std": ("2", 2.0), "batch": ("32", 32), "batch_gpu": ("8", 8), "lr": ("0.001", 0.001),
    "lr_rampup_kimg": ("2", 2.0), "ema_halflife_kimg": ("3", 3.0), "ema_rampup_ratio": ("none", None),
    "kimg": ("4", 4.0), "seed": ("7", 7), "precision": ("bf16", "bf16"), "threads": ("2", 2), "tf32": (None, False),
    "kernels": ("torch", "torch"), "compile": (None, True), "max_bad_steps": ("4", 4), "run_dir": ("r", "r"),
    "outdir": ("o", "o"), "resume": ("auto", "auto"), "tick_kimg": ("1", 1.0), "snap_kimg": ("2", 2.0),
    "keep_ckpts": ("5", 5), "grid_size": ("9", 9), "snap_grid_size": ("4", 4), "device": ("cpu", "cpu"),
    "progress": (None, False),
}


def flags() -> dict[str, list[str]]:
    """field -> its flag's option strings, from the parser itself."""
    return {a.dest: a.option_strings for a in train.build_parser()._actions}


def test_every_field_has_a_flag_or_is_excluded_on_purpose():
    reachable = flags()
    assert {name for name in FIELDS if name not in reachable} == NO_FLAG
    assert set(VALUES) == set(FIELDS) - NO_FLAG            # and each flag is exercised below


@pytest.mark.parametrize("name", sorted(set(FIELDS) - NO_FLAG))
def test_each_flag_lands_in_its_field(name):
    text, expected = VALUES[name]
    argv = flags()[name][:1] + ([text] if text is not None else [])
    assert getattr(train.parse_args(argv), name) == expected != getattr(TrainConfig(), name), argv


def test_ema_rampup_ratio_takes_a_number_or_none(capsys):
    assert train.parse_args([]).ema_rampup_ratio == TrainConfig().ema_rampup_ratio == 0.05
    assert train.parse_args(["--ema-rampup-ratio", "0.1"]).ema_rampup_ratio == 0.1
    assert train.parse_args(["--ema-rampup-ratio", "None"]).ema_rampup_ratio is None
    with pytest.raises(SystemExit) as e:
        train.parse_args(["--ema-rampup-ratio", "0"])
    assert e.value.code == 2 and "argument --ema-rampup-ratio: must be > 0" in capsys.readouterr().err


def test_the_transforming_flags():
    assert train.parse_args([]).clean_fraction == 0.1                      # the paper's 10% clean by default
    assert train.parse_args(["--n-clean", "5"]).clean_fraction is None     # unless another mode is chosen
    cfg = train.parse_args(["--all-clean"])
    assert cfg.n_noisy == 0 and cfg.clean_fraction is None


def test_a_field_declared_without_option_is_refused(monkeypatch):
    @dataclasses.dataclass
    class Extended(TrainConfig):
        new_knob: int = 3

    monkeypatch.setattr(train, "TrainConfig", Extended)
    with pytest.raises(TypeError, match="new_knob"):
        train.build_parser()


def test_resume_command_repeats_how_training_was_started(monkeypatch):
    argv = ["--kimg", "2", "--run-dir", "old", "--resume=old", "--seed", "1"]
    tail = "--kimg 2 --seed 1 --run-dir runs/r --resume auto"
    assert train.resume_command(argv, "runs/r") == f"python -m ambient.train {tail}"     # main() called by code
    monkeypatch.setattr(sys, "argv", ["train.py"])
    monkeypatch.setattr(sys.modules["__main__"], "__spec__", None, raising=False)      # `python train.py`
    assert train.resume_command(argv, "runs/r") == f"python train.py {tail}"


@pytest.mark.parametrize("module", ["ambient.train", "ambient.sample"])
def test_the_clis_run_as_modules(module):
    proc = subprocess.run([sys.executable, "-m", module, "--help"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0 and f"python -m {module}" in proc.stdout, proc.stderr
