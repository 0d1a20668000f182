"""The trainer's command line is derived from TrainConfig: every field has a flag (or is excluded on purpose),
each flag lands in its field, and the CLIs run as modules."""
import dataclasses
import random
import subprocess
import sys
from pathlib import Path

import pytest

from ambient.data import DATA_OPTIONS, make_dataset
from ambient.train import TrainConfig, config_flags
from ambient.train import cli as train

ROOT = Path(__file__).resolve().parents[1]
# Fields without a flag, on purpose: sample_steps (the snapshot grids are previews at EDM's 18 Heun steps; images
# to keep or score come from ambient.sample --steps and ambient.eval).
NO_FLAG = {"sample_steps"}
FIELDS = [f.name for f in dataclasses.fields(TrainConfig)]
# field: (the flag's value, the field's value); the flag's name comes from the parser.
VALUES = {
    "data": ("digits", "digits"), "n_clean": ("5", 5), "n_noisy": ("6", 6), "clean_fraction": ("0.3", 0.3),
    "all_clean": (None, True),
    "sigma_n": ("0.1,0.4", (0.1, 0.4)), "sigma_share": ("1", (1.0,)), "p_clean": ("0.5", 0.5),
    "keep_fraction": ("0.5", 0.5), "data_seed": ("3", 3), "cond": (None, True), "xflip": (None, True),
    "max_shift": ("2", 2), "workers": ("1", 1), "preset": ("ddpmpp", "ddpmpp"), "model_channels": ("32", 32),
    "attn_resolutions": ("7,14", (7, 14)),
    "dropout": ("0.1", 0.1), "sigma_sampling": ("truncate", "truncate"), "weighting": ("ambient", "ambient"),
    "P_mean": ("-1", -1.0), "P_std": ("2", 2.0), "batch": ("48", 48), "batch_gpu": ("8", 8), "lr": ("0.002", 0.002),
    "consistency": ("0.5", 0.5), "consistency_batch": ("3", 3), "consistency_steps": ("2", 2),
    "consistency_repeats": ("4", 4),
    "lr_rampup_kimg": ("2", 2.0), "lr_decay": ("none", "none"),
    "ema_halflife_kimg": ("3", 3.0), "ema_rampup_ratio": ("none", None),
    "kimg": ("4", 4.0), "seed": ("7", 7), "precision": ("bf16", "bf16"), "threads": ("2", 2), "tf32": (None, False),
    "memory_format": ("contiguous", "contiguous"),
    "kernels": ("torch", "torch"), "compile": (None, True), "sigma_min_per_image": (None, False),
    "window_factor": (None, True),
    "max_bad_steps": ("4", 4), "run_dir": ("r", "r"),
    "outdir": ("o", "o"), "resume": ("auto", "auto"), "init_from": ("runs/a", "runs/a"),
    "allow_change": ("lr,P-mean", ("lr", "P_mean")),
    "tick_kimg": ("1", 1.0), "snap_kimg": ("2", 2.0),
    "keep_ckpts": ("5", 5), "grid_size": ("9", 9), "snap_grid_size": ("4", 4), "device": ("cpu", "cpu"),
    "progress": (None, False), "tensorboard": (None, False),
}


# Flags a field's flag needs beside it to be valid (the library's rules: keep_fraction is the Bernoulli mode's).
COMPANIONS = {"keep_fraction": ["--p-clean", "0.5"], "window_factor": ["--sigma-min-per-image"],
              "sigma_sampling": ["--no-sigma-min-per-image"]}
NEGATED = {"sigma_min_per_image"}       # on by default: its --no- form is the one that changes it


def parsed(argv: list[str]) -> TrainConfig:
    """The TrainConfig the parser makes of `argv`, before parse_args checks the library's rules."""
    return TrainConfig(**vars(train.build_parser().parse_args(argv)))


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
    argv = [flags()[name][-1 if name in NEGATED else 0]] + ([text] if text is not None else []) + \
        COMPANIONS.get(name, [])
    assert getattr(train.parse_args(argv), name) == expected != getattr(TrainConfig(), name), argv


def test_windows_are_on_by_default_and_the_image_first_draw_is_one_flag_away(capsys):
    assert train.parse_args([]).sigma_min_per_image and train.parse_args(["--sigma-min-per-image"]).sigma_min_per_image
    assert not train.parse_args(["--no-sigma-min-per-image"]).sigma_min_per_image
    assert train.parse_args(["--no-sigma-min-per-image", "--sigma-sampling", "truncate"]).sigma_sampling == "truncate"
    with pytest.raises(SystemExit) as e:
        train.parse_args(["--sigma-sampling", "truncate"])
    assert e.value.code == 2 and "add --no-sigma-min-per-image" in capsys.readouterr().err
    assert config_flags({"sigma_min_per_image": False}) == ["--no-sigma-min-per-image"]
    assert config_flags({"sigma_min_per_image": True}) == []

def test_ema_rampup_ratio_takes_a_number_or_none(capsys):
    assert train.parse_args([]).ema_rampup_ratio == TrainConfig().ema_rampup_ratio == 0.05
    assert train.parse_args(["--ema-rampup-ratio", "0.1"]).ema_rampup_ratio == 0.1
    assert train.parse_args(["--ema-rampup-ratio", "None"]).ema_rampup_ratio is None
    with pytest.raises(SystemExit) as e:
        train.parse_args(["--ema-rampup-ratio", "0"])
    assert e.value.code == 2 and "argument --ema-rampup-ratio: must be > 0" in capsys.readouterr().err


def test_attn_resolutions_takes_levels_or_none_and_reaches_the_network(capsys):
    """Not given: the preset's (no override) where it names a level, else the coarsest level; 'none': no attention
    blocks by level (an empty list, written back as none); levels: an override of the network, which build_network
    checks against the network's levels."""
    assert train.parse_args([]).attn_resolutions is None
    assert "attn_resolutions" not in TrainConfig().network_kwargs(32, 1, 0)               # tiny's own 8
    assert "attn_resolutions" not in TrainConfig().network_kwargs(16, 1, 0)               # 16, 8, 4: the study's
    assert TrainConfig().network_kwargs(28, 1, 0)["attn_resolutions"] == [7]              # 28, 14, 7: no 8
    assert TrainConfig().network_kwargs(64, 1, 0)["attn_resolutions"] == [16]
    assert TrainConfig(preset="ddpmpp").network_kwargs(64, 3, 0).get("attn_resolutions") is None    # its 16
    assert train.parse_args(["--attn-resolutions", "none"]).attn_resolutions == ()
    assert config_flags({"attn_resolutions": ()}) == ["--attn-resolutions", "none"]
    cfg = train.parse_args(["--attn-resolutions", "7"])
    assert cfg.network_kwargs(28, 1, 0)["attn_resolutions"] == [7]
    for text, message in (("0", "must be a positive integer"), (",", "holds no numbers")):
        with pytest.raises(SystemExit):
            train.parse_args(["--attn-resolutions", text])
        assert message in capsys.readouterr().err


def test_the_default_split_lives_in_the_library():
    """`python train.py` and `train(TrainConfig())` are one run: the paper's 10% clean + 90% noisy at sigma_n 0.2."""
    assert train.parse_args([]) == TrainConfig()
    for cfg in (TrainConfig(data="digits"), train.parse_args(["--data", "digits"])):
        ds = make_dataset(**cfg.data_options())
        assert (ds.n_clean, ds.n_noisy, ds.counts_by_sigma) == (180, 1617, {0.2: 1617})     # round(0.1 x 1797)
    assert make_dataset("digits", n_clean=5).n_clean == 5                  # another way chosen: no default
    everything = make_dataset(**train.parse_args(["--data", "digits", "--all-clean"]).data_options())
    assert (everything.n_clean, everything.n_noisy) == (1797, 0)
    with pytest.raises(ValueError, match="one way to say which images are clean, not n_clean/n_noisy and all_clean"):
        make_dataset("digits", n_clean=5, all_clean=True)


def test_data_options_are_config_fields():
    assert set(DATA_OPTIONS) <= set(FIELDS) and set(TrainConfig().data_options()) == set(DATA_OPTIONS)


def test_config_flags_is_the_inverse_of_the_parser():
    rng = random.Random()
    for _ in range(20):
        names = rng.sample(sorted(VALUES), 8)
        values = {n: VALUES[n][1] for n in names}
        values["sigma_n"] = (0.2, 0.2000001)                         # floats written exactly
        argv = config_flags(values)
        assert {k: getattr(parsed(argv), k) for k in values} == values, argv
        assert parsed(config_flags(dataclasses.asdict(parsed(argv)))) == parsed(argv)     # a whole config too
    assert config_flags({"ema_rampup_ratio": None, "model_channels": None}) == ["--ema-rampup-ratio", "none"]
    with pytest.raises(ValueError, match="sample_steps"):
        config_flags({"sample_steps": 4})


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


@pytest.mark.parametrize("args, message", [
    (["--keep-fraction", "0.5"], "--keep-fraction applies to the Bernoulli mode (--p-clean)"),
    (["--n-clean", "5", "--p-clean", "0.5"], "choose one way to say which images are clean, not --n-clean/--n-noisy "
                                             "and --p-clean"),
    (["--sigma-n", "0.1,0.4", "--sigma-share", "1"], "--sigma-share has 1 entries but --sigma-n has 2 levels"),
    (["--allow-change", "lr,lrr"], "--allow-change names no setting: lrr"),
])
def test_the_librarys_rules_are_usage_errors_naming_the_flags(capsys, args, message):
    """The rules live in the library (check_split_options, TrainConfig); the command line states them in flags."""
    with pytest.raises(SystemExit) as e:
        train.parse_args(args)
    err = capsys.readouterr().err
    assert e.value.code == 2 and "usage:" in err and message in err, err
