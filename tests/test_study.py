"""Tests for ambient.eval (the evaluation CLI), ambient.study (scaling-law studies) and its report.

One micro study (2 points of a 8-channel UNet on MNIST-5k subsets, 2 training steps, 8 images evaluated
with 2 sampler steps) is run once per module; the FD-MNIST classifier is a 1-epoch one trained into a
temporary cache (AMBIENT_CACHE), so nothing depends on ~/.cache.
"""
import csv
import json
import math
import shutil
import statistics

import numpy as np
import pytest
import torch

from ambient.common.images import to_uint8
from ambient.data.sources import load_dataset
from ambient.eval import evaluation as ev
from ambient.eval import metrics
from ambient.io import checkpoint, load_network
from ambient.model import edm_time_steps, generate
from ambient.networks import build_network
from ambient.study import power, report
from ambient.study import runner as study
from ambient.train import TrainConfig
from ambient.train import cli as train_cli

POINTS = ["--points", "16:0,8:8"]
MICRO = ["--data", "mnist", *POINTS, "--sigma-n", "0.2", "--model-channels", "8", "--batch", "16",
         "--kimg", "0.032", "--eval-n", "8", "--eval-steps", "2", "--threads", "1", "--eval-snapshots", "2",
         "--train-args", "--grid-size 4 --tick-kimg 1 --snap-kimg 0.016 --lr-rampup-kimg 0.01"]


@pytest.fixture(scope="module")
def classifier_cache(tmp_path_factory):
    """A quickly trained (1 epoch) classifier in a temporary cache that subprocesses find through AMBIENT_CACHE."""
    path = tmp_path_factory.mktemp("ambient_cache")
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(metrics, "_EPOCHS", 1)
        torch.set_num_threads(1)
        metrics.get_feature_extractor(path)
        torch.set_num_threads(threads)
        mp.setenv("AMBIENT_CACHE", str(path))
        yield path


@pytest.fixture(scope="module")
def micro_study(tmp_path_factory, classifier_cache):
    """(study directory, stdout) of a finished 2-point micro study."""
    root = tmp_path_factory.mktemp("study") / "s"
    assert study.main(["--dir", str(root), *MICRO]) == 0
    return root


def _mtimes(root):
    return {p: p.stat().st_mtime_ns for p in (root / "points").rglob("*") if p.is_file()}


def test_micro_study_writes_well_formed_results(micro_study):
    with open(micro_study / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["name"], r["n_clean"], r["n_noisy"]) for r in rows] == [("c8_n8_s0.2_seed0", "8", "8"),
                                                                     ("c16_n0_seed0", "16", "0")]
    assert set(rows[0]) == set(report.CSV_FIELDS)
    for r in rows:
        assert math.isfinite(float(r["value"])) and float(r["value"]) > 0 and float(r["floor"]) > 0
        assert float(r["sd"]) > 0
        assert r["metric"] == "fd_mnist" and r["n"] == "8" and float(r["kimg"]) == pytest.approx(0.032)
    res = json.loads((micro_study / "results.json").read_text())
    assert [r["name"] for r in res["rows"]] == [r["name"] for r in rows]
    assert res["config"]["kimg"] == 0.032 and res["table1_ordering"] == {"0.2": None}
    assert "cannot be fitted" in res["worth_sentences"][0] and res["equivalent_clean"] == []
    for r in rows:   # both snapshots evaluated (step 1 at 0.016 kimg, step 2 at 0.032), the newest is the value
        snaps = json.loads(r["snapshots"])
        assert list(snaps) == ["0.016", "0.032"] and snaps["0.032"] == pytest.approx(float(r["value"]))
        assert 0 <= float(r["memorised"]) <= 1 and float(r["nn_ratio"]) > 0
    png = (micro_study / "fd_mnist_vs_n_clean.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    table = (micro_study / "table.md").read_text()
    assert f"| 0.2 | 8 | 8 | {float(rows[0]['value']):.2f} | {float(rows[0]['sd']):.2f} | 1 |" in table
    assert f"| - | 16 | 0 | {float(rows[1]['value']):.2f} |" in table
    assert sorted(p.name for p in (micro_study / "samples").iterdir()) == [
        "c16_n0_seed0.npz", "c16_n0_seed0.png", "c8_n8_s0.2_seed0.npz", "c8_n8_s0.2_seed0.png"]
    samples = np.load(micro_study / "samples" / "c8_n8_s0.2_seed0.npz")["images"]
    assert samples.dtype == np.uint8 and samples.shape == (8, 32, 32, 1)
    point = json.loads((micro_study / "points" / "c8_n8_s0.2_seed0" / "point.json").read_text())
    args = point["train_args"]
    assert args[args.index("--n-noisy") + 1] == "8" and point["train_seconds"] > 0
    assert args[args.index("--data-seed") + 1] == "0" and args[args.index("--seed") + 1] == "0"


def test_rerun_skips_finished_points(micro_study, capsys):
    before = _mtimes(micro_study)
    assert study.main(["--dir", str(micro_study), *MICRO]) == 0
    out = capsys.readouterr().out
    assert out.count("skip ") == 2 and "train " not in out and "eval " not in out
    assert _mtimes(micro_study) == before


def test_report_only_writes_results_without_running_anything(micro_study, capsys, tmp_path):
    before = _mtimes(micro_study)
    # One point more than was run: it is neither trained nor evaluated, only missing from the results.
    assert study.main(["--dir", str(micro_study), *MICRO, "--points", "16:0,8:8,4:0", "--results", str(tmp_path),
                       "--report-only"]) == 0
    out = capsys.readouterr().out
    assert "train " not in out and "eval " not in out and "(2 of 3 points" in out and "at a time" not in out
    assert _mtimes(micro_study) == before and not (micro_study / "points" / "c4_n0_seed0").exists()
    with open(tmp_path / "results.csv") as f:
        assert [r["name"] for r in csv.DictReader(f)] == ["c8_n8_s0.2_seed0", "c16_n0_seed0"]


def test_interrupted_point_continues_and_changed_settings_are_refused(micro_study, capsys, monkeypatch):
    folder = micro_study / "points" / "c16_n0_seed0"
    (folder / "metrics.json").unlink()
    ckpts = sorted(p.name for p in (folder / "run").glob("checkpoint-*"))
    # Different training settings for a started point: one clear error, nothing touched.
    assert study.main(["--dir", str(micro_study), *MICRO, "--kimg", "0.064"]) == 1
    assert "was started with" in capsys.readouterr().out and not (folder / "metrics.json").exists()
    # The same settings, the study's folder spelled relative to another working directory (point.json says it
    # absolute): the run is continued (already complete: no new checkpoint) and evaluated again.
    monkeypatch.chdir(micro_study.parent)
    assert study.main(["--dir", micro_study.name, *MICRO]) == 0
    out = capsys.readouterr().out
    assert "train c16_n0_seed0 (continuing)" in out and "skip c8_n8_s0.2_seed0" in out
    assert sorted(p.name for p in (folder / "run").glob("checkpoint-*")) == ckpts
    assert (folder / "train.log").read_text().count("$ ") == 2


def test_eval_cli_writes_fd_mnist_with_floor_independent_of_batch(micro_study, tmp_path, capsys):
    run = micro_study / "points" / "c8_n8_s0.2_seed0" / "run"
    outs = []
    for batch in (8, 3):
        out = tmp_path / f"m{batch}.json"
        assert ev.main(["--ckpt", str(run), "--n", "8", "--steps", "2", "--batch", str(batch), "--out", str(out),
                        "--no-progress"]) == 0
        outs.append(json.loads(out.read_text()))
    m = outs[0]
    assert m["fd_mnist"] > 0 and m["fd_mnist_floor"] > 0 and m["floor_n"] == 8 and m["n"] == 8
    assert sum(m["class_histogram"]) == 8 and len(m["class_histogram"]) == 10 and "kid" in m
    assert m["fd_mnist"] == pytest.approx(outs[1]["fd_mnist"], rel=1e-4)   # image i comes from seed i
    assert "FD-MNIST" in capsys.readouterr().out
    # The study's own evaluation of this point used the same seeds and steps.
    saved = json.loads((run.parent / "metrics.json").read_text())
    assert saved["fd_mnist"] == pytest.approx(m["fd_mnist"], rel=1e-4)


def _save_digits_model(run_dir):
    kwargs = dict(preset="tiny", img_resolution=8, img_channels=1, label_dim=0, model_channels=8,
                  channel_mult=[1, 2], attn_resolutions=[])
    sd = build_network(**kwargs).state_dict()
    checkpoint.save_checkpoint(run_dir, 0, sd, sd, {"step": 0}, {"network": kwargs, "kimg": 0.0})


@pytest.mark.parametrize("extra, message", [
    (["--ckpt", "{tmp}/missing"], "no such checkpoint"),
    (["--ckpt", "{tmp}/digits"], "needs --ref: the real images at its resolution"),
    (["--ckpt", "{tmp}/digits", "--metric", "fid"], "needs --ref"),
    (["--ckpt", "{tmp}/digits", "--metric", "fid", "--ref", "{tmp}/nowhere"], "not found"),
    (["--ckpt", "{tmp}/digits", "--ref", "mnist"], "holds 1x32x32 images, the model makes 1x8x8"),
])
def test_eval_cli_bad_input_gets_one_clear_error(tmp_path, capsys, extra, message):
    _save_digits_model(tmp_path / "digits")
    out = tmp_path / "m.json"
    assert ev.main([a.format(tmp=tmp_path) for a in extra] + ["--n", "4", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and not out.exists()


def test_eval_scores_an_8x8_model_against_its_own_resolution_and_keeps_quantised_samples(classifier_cache, tmp_path):
    _save_digits_model(tmp_path / "digits")
    out, npz = tmp_path / "m.json", tmp_path / "s.npz"
    assert ev.main(["--ckpt", str(tmp_path / "digits"), "--ref", "digits", "--n", "6", "--steps", "2", "--batch", "4",
                    "--out", str(out), "--samples-out", str(npz), "--no-progress"]) == 0
    m = json.loads(out.read_text())
    assert m["resolution"] == 8 and m["ref"] == "digits" and m["fd_mnist"] > 0 and m["fd_mnist_floor"] > 0
    assert "memorised" not in m                      # the checkpoint records no training configuration
    images = np.load(npz)["images"]
    assert images.dtype == np.uint8 and images.shape == (6, 8, 8, 1)
    # The score is that of the saved 8-bit images: scoring them again gives the same FD.
    again = metrics.fd_mnist(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1,
                             reference=ev.reference_images("digits", (1, 8, 8)), cache_dir=classifier_cache)
    assert again["fd_mnist"] == pytest.approx(m["fd_mnist"], rel=1e-6)



def test_a_native_28x28_model_trains_and_is_scored_against_the_32x32_mnist_without_ref(classifier_cache, tmp_path,
                                                                                       capsys):
    """--data mnist28 through the trainer's command line (2 steps), then ambient.eval with no --ref: its samples
    are padded to 32x32 as MNIST-5k was and scored against it; copies are sought among its 28x28 training images."""
    args = ["--data", "mnist28", "--model-channels", "8", "--batch", "8", "--kimg", "0.016", "--grid-size", "1",
            "--snap-grid-size", "1", "--threads", "1", "--no-progress", "--no-tensorboard"]
    assert train_cli.main([*args, "--attn-resolutions", "8", "--run-dir", str(tmp_path / "bad")]) == 1
    err = capsys.readouterr().err
    assert "attn_resolutions 8: the 28x28 network has no such level; its levels are 28, 14, 7" in err
    run = tmp_path / "run"
    assert train_cli.main([*args, "--attn-resolutions", "7", "--run-dir", str(run)]) == 0
    out = tmp_path / "m.json"
    assert ev.main(["--ckpt", str(run), "--n", "16", "--steps", "2", "--out", str(out), "--no-progress"]) == 0
    m = json.loads(out.read_text())
    assert m["resolution"] == 28 and m["ref"] is None and m["n"] == 16 and sum(m["class_histogram"]) == 16
    assert all(math.isfinite(m[k]) for k in ("fd_mnist", "fd_mnist_floor", "fd_mnist_sd", "kid", "memorised",
                                             "nn_ratio"))


@pytest.mark.parametrize("extra, message", [
    (["--sigma-stop", "0"], "must be > 0"),
    (["--sigma-stop", "nan"], "not a finite number"),
    (["--sigma-stop", "inf"], "not a finite number"),
    (["--sigma-stop", "80"], "in [sigma_min, sigma_max) = [0.002, 80)"),
    (["--sigma-stop", "0.001"], "in [sigma_min, sigma_max) = [0.002, 80)"),
    (["--sigma-stop", "0.3", "--sigma-min", "0.5"], "in [sigma_min, sigma_max) = [0.5, 80)"),
])
def test_eval_sigma_stop_is_checked_before_anything_is_loaded(tmp_path, capsys, extra, message):
    out = tmp_path / "m.json"
    with pytest.raises(SystemExit) as e:            # the checkpoint does not exist: the flag is checked first
        ev.main(["--ckpt", str(tmp_path / "missing"), *extra, "--out", str(out)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "error: argument --sigma-stop: " in err and message in err
    assert "Traceback" not in err and not out.exists()
    with pytest.raises(ValueError, match="sigma_stop must be a finite level"):     # the library function alike
        ev.evaluate(tmp_path / "missing", sigma_stop=80.0)


STOP_STUDY = ["--data", "digits", "--ref", "digits", "--points", "0:16", "--sigma-n", "0.3", "--model-channels", "8",
              "--batch", "8", "--kimg", "0.016", "--eval-n", "6", "--eval-steps", "5", "--threads", "1",
              "--train-args", "--grid-size 4 --tick-kimg 1 --snap-kimg 0.016 --lr-rampup-kimg 0.01"]


def test_eval_stop_noisy_adds_a_stopped_evaluation_beside_metrics_json_and_resumes(classifier_cache, tmp_path,
                                                                                  capsys):
    root = tmp_path / "s"
    folder = root / "points" / "c0_n16_s0.3_seed0"
    assert study.main(["--dir", str(root), *STOP_STUDY]) == 0              # a study run without the option
    assert not (folder / study.STOP_METRICS).exists() and "stopped" not in (root / "table.md").read_text()
    before = {f: f.read_bytes() for f in (folder / "metrics.json", folder / "samples.npz")}
    before_metrics = before[folder / "metrics.json"]
    capsys.readouterr()
    # Switched on later: the finished point is only evaluated again, stopped; nothing it had is changed.
    assert study.main(["--dir", str(root), *STOP_STUDY, "--eval-stop-noisy"]) == 0
    out = capsys.readouterr().out
    assert "train " not in out and "eval c0_n16_s0.3_seed0 stopped at sigma_n = 0.3" in out
    assert {f: f.read_bytes() for f in before} == before
    stop = json.loads((folder / study.STOP_METRICS).read_text())
    full = json.loads((folder / "metrics.json").read_text())
    levels = edm_time_steps(5)                                           # 80, 17.5, 2.5, 0.17, 0.002
    assert stop["sigma_stop"] == 0.3 and stop["sigma_stopped"] == levels[3].item() and full["sigma_stop"] is None
    assert stop["ckpt"] == full["ckpt"] and stop["n"] == full["n"] == 6
    # The stopped samples are the sampler's, stopped, on the checkpoint metrics.json scored; not the full ones.
    net, _ = load_network(stop["ckpt"])
    direct = torch.cat([im for _, im in generate(net, range(6), (1, 8, 8), batch=4, num_steps=5, sigma_stop=0.3)])
    images = np.load(folder / study.STOP_SAMPLES)["images"]
    assert np.array_equal(images, to_uint8(direct))
    assert not np.array_equal(images, np.load(folder / "samples.npz")["images"])
    with open(root / "results.csv") as f:
        (row,) = csv.DictReader(f)
    assert float(row["value_stop"]) == stop["fd_mnist"] and float(row["value"]) == full["fd_mnist"]
    assert float(row["sd_stop"]) == stop["fd_mnist_sd"]
    table = (root / "table.md").read_text()
    assert (f"| 0.3 | 16 | {full['fd_mnist']:.2f} | {full['fd_mnist_sd']:.2f} | 1 | {stop['fd_mnist']:.2f} | "
            f"{stop['fd_mnist_sd']:.2f} | 1 |") in table
    assert (root / "samples" / "c0_n16_s0.3_seed0-stop.npz").read_bytes() == (folder / study.STOP_SAMPLES).read_bytes()
    # Resumable: a third run evaluates nothing.
    before = _mtimes(root)
    assert study.main(["--dir", str(root), *STOP_STUDY, "--eval-stop-noisy"]) == 0
    out = capsys.readouterr().out
    assert "eval " not in out and "skip c0_n16_s0.3_seed0 stopped at sigma_n" in out and _mtimes(root) == before
    # A point whose checkpoints are gone (its metrics.json made elsewhere): one error naming it, nothing invented.
    shutil.rmtree(folder / "run")
    (folder / study.STOP_METRICS).unlink()
    assert study.main(["--dir", str(root), *STOP_STUDY, "--eval-stop-noisy"]) == 1
    out = capsys.readouterr().out
    assert "error: cannot evaluate c0_n16_s0.3_seed0 stopped at sigma_n = 0.3: no checkpoint" in out
    assert not (folder / study.STOP_METRICS).exists() and (folder / "metrics.json").read_bytes() == before_metrics
    with open(root / "results.csv") as f:
        assert next(csv.DictReader(f))["value_stop"] == ""

RESTORE_STUDY = ["--data", "digits", "--ref", "digits", "--points", "8:8,12:0", "--sigma-n", "0.3", "--model-channels",
                 "8", "--batch", "8", "--kimg", "0.016", "--eval-n", "6", "--eval-steps", "3", "--threads", "1",
                 "--eval-snapshots", "2",
                 "--train-args", "--grid-size 4 --tick-kimg 1 --snap-kimg 0.008 --lr-rampup-kimg 0.004"]
RESTORE = ["--restore-rounds", "1", "--restore-kimg", "0.016"]


def test_restore_rounds_score_the_restored_model_of_each_noisy_point(classifier_cache, tmp_path, capsys):
    """--restore-rounds 1: the noisy point's model restores the images it trained on and is fine-tuned on them; its
    metrics, samples and grid are the fine-tuned model's; the clean-only point is trained as in any study; other
    restoration settings for a started point are refused, nothing touched."""
    root = tmp_path / "s"
    assert study.main(["--dir", str(root), *RESTORE_STUDY, *RESTORE]) == 0
    mixed, clean = root / "points" / "c8_n8_s0.3_seed0", root / "points" / "c12_n0_seed0"
    trained = load_dataset(str(mixed / "restore" / "data-0"))        # the point's own training images
    assert sorted(trained.sigma_n.tolist()) == [0.0] * 8 + [0.3] * 8
    restored = json.loads((mixed / "restore" / "data-1" / "dataset.json").read_text())["restoration"]
    assert restored["checkpoint"] == str(checkpoint.list_checkpoints(mixed / "run")[-1])
    finetuned = checkpoint.list_checkpoints(mixed / "restore" / "run-1")
    config = json.loads((mixed / "restore" / "run-1" / "config.json").read_text())
    assert config["init_from"] == str(mixed / "run") and config["kimg"] == 0.016 and len(finetuned) == 2
    assert json.loads((mixed / "metrics.json").read_text())["ckpt"] == str(finetuned[-1])
    assert json.loads((mixed / f"metrics-{finetuned[0].name.rpartition('-')[2]}.json").read_text())["ckpt"] == str(
        finetuned[0])
    assert (root / "samples" / f"{mixed.name}.png").read_bytes() == sorted(
        (mixed / "restore" / "run-1").glob("samples-*.png"))[-1].read_bytes()
    assert json.loads((clean / "metrics.json").read_text())["ckpt"].startswith(str(clean / "run"))
    assert not (clean / "restore").exists()
    with open(root / "results.csv") as f:
        rows = {r["name"]: r for r in csv.DictReader(f)}
    assert float(rows[mixed.name]["restore_seconds"]) > 0 and rows[clean.name]["restore_seconds"] == ""
    record = json.loads((mixed / "point.json").read_text())
    assert record["restore_args"][-7:] == ["--dest", str(mixed / "restore"), "--rounds", "1", "--kimg", "0.016",
                                           "--resume"]
    # Other restoration settings for the started point: one error, nothing touched.
    (mixed / "metrics.json").unlink()
    before = _mtimes(root)
    capsys.readouterr()
    assert study.main(["--dir", str(root), *RESTORE_STUDY, *RESTORE, "--restore-rounds", "2"]) == 1
    assert "was started with restoration arguments" in capsys.readouterr().out and _mtimes(root) == before
    assert study.main(["--dir", str(root), *RESTORE_STUDY, "--restore-kimg", "0.016"]) == 2
    assert "give --restore-rounds too" in capsys.readouterr().err
    # The same settings from another Python (point.json names the interpreter that restored): continued.
    record["restore_args"][0] = "/opt/another/python3"
    (mixed / "point.json").write_text(json.dumps(record))
    assert study.main(["--dir", str(root), *RESTORE_STUDY, *RESTORE]) == 0
    assert f"restore {mixed.name} (1 round(s))" in capsys.readouterr().out and (mixed / "metrics.json").exists()


def test_grid_points_share_clean_runs_and_table1_pairs():
    pts = study.make_points([500, 5000], [0, 4500], [0.2, 0.4], [0, 1])
    assert len(pts) == 2 * 2 + 2 * 2 * 2                      # clean-only points are not repeated per sigma_n
    assert {p.sigma_n for p in pts if p.n_noisy == 0} == {0.0}
    assert study.Point(500, 4500, 0.2, 1).name == "c500_n4500_s0.2_seed1"
    assert report.table1_pairs(5000) == {"100% clean": (5000, 0), "100% noisy": (0, 5000),
                                         "10% clean only": (500, 0), "90% noisy + 10% clean": (500, 4500)}
    with pytest.raises(ValueError, match="no points"):
        study.make_points([], [], [0.2], [0])
    s = study.Settings(nproc=2)
    assert s.launcher()[1:4] == ["-m", "torch.distributed.run", "--standalone"]
    assert s.launcher()[-2:] == study.Settings().launcher()[1:] == ["-m", "ambient.train"]   # no path to train.py
    # Training seeds vary the training only: the clean/noisy split and the noise come from the data seed.
    args = study.Settings(train={"data_seed": 3}).train_args_for(study.Point(100, 900, 0.2, 5), study.Path("r"))
    assert args[args.index("--seed") + 1] == "5" and args[args.index("--data-seed") + 1] == "3"


def test_the_training_options_are_the_trainers_own(capsys):
    """The study declares no training field of its own: its options are TrainConfig's (same defaults), a point's
    flags are its TrainConfig written back (config_flags), and --train-args cannot override what a point sets."""
    a = study.parse_args(["--dir", "d"])
    assert {k: getattr(a, k) for k in study.SHARED} == {k: getattr(TrainConfig(), k) for k in study.SHARED}
    s = study.Settings(train={"kimg": 40.0, "data": "digits", "precision": "fp32"})
    args = s.train_args_for(study.Point(10, 90, 0.2000001, 1), study.Path("r"))
    cfg = train_cli.parse_args(args)
    assert (cfg.kimg, cfg.data, cfg.precision, cfg.n_clean, cfg.n_noisy, cfg.sigma_n, cfg.seed, cfg.resume,
            cfg.progress) == (40.0, "digits", "fp32", 10, 90, (0.2000001,), 1, "auto", False)
    assert study.Point(10, 90, 0.2, 0).name != study.Point(10, 90, 0.2000001, 0).name      # distinct levels
    with pytest.raises(study.StudyError, match="--n-clean, --seed would set every point alike"):
        study.Settings(train={"n_clean": 50, "seed": 7})
    for extra, message in (("--seed 7 --n-clean 50", "--n-clean, --seed would set every point alike"),
                           ("--kimg 5", "--train-args sets --kimg: give the study's own option")):
        assert study.main(["--dir", "d", "--n-clean", "10", "--n-noisy", "0", "--train-args", extra]) == 2
        assert message in capsys.readouterr().err


def _rows(values):
    pairs = report.table1_pairs(5000).values()
    return [{"n_clean": c, "n_noisy": m, "sigma_n": 0.2 if m else 0.0, "value": v, "sd": 0.5, "floor": 1.0,
             "n": 1000}
            for (c, m), v in zip(pairs, values)]


# One seed per setting, bootstrap sd 0.5 each: a difference counts beyond 2 x sqrt(0.5^2 + 0.5^2) = 1.41.
@pytest.mark.parametrize("values, verdict", [((5, 30, 20, 7), "holds"), ((8, 30, 20, 7), "holds"),
                                             ((5, 30, 20, 25), "does NOT hold"), ((9, 30, 20, 7), "does NOT hold"),
                                             ((5, 8, 20, 7), "unresolved"), ((5, 30, 7.5, 7), "unresolved")])
def test_table1_ordering(values, verdict):
    text, got, means = report.table1(_rows(values), 0.2, "fd_mnist", "mnist")
    assert got == verdict and verdict in report.ordering_sentence(got, "fd_mnist")
    assert means is None and "needs 2 seeds" in text                    # one seed: the means test cannot run
    assert f"| 90% noisy + 10% clean | 500 | 4500 | {values[3]:.2f} | 0.50 | 1 |" in text
    assert "| real vs real (floor) | | | 1.00 | | n = 1000 |" in text
    assert report.table1(_rows(values)[:3], 0.2, "fd_mnist", "mnist")[1] is None


def test_setting_seeds_add_seeds_to_one_setting_only(capsys):
    """--setting-seeds C:M:S:K trains that setting with seeds 0..K-1, keeps --seeds for the others, and names a
    setting that is not in the study."""
    a = study.parse_args(["--dir", "d", "--setting-seeds", "0:100:0.2:5,100:0:0:4"])
    base = study.make_points([100, 0], [0, 100], [0.2, 0.4], [0, 1])
    points = study.with_setting_seeds(base, a.setting_seeds)
    seeds = {}
    for p in points:
        seeds.setdefault((p.n_clean, p.n_noisy, p.sigma_n), []).append(p.seed)
    assert seeds == {(0, 100, 0.2): [0, 1, 2, 3, 4], (0, 100, 0.4): [0, 1], (100, 0, 0.0): [0, 1, 2, 3],
                     (100, 100, 0.2): [0, 1], (100, 100, 0.4): [0, 1]}
    with pytest.raises(ValueError, match="--setting-seeds 0:100:0.3:5 names no setting"):
        study.with_setting_seeds(base, [(0, 100, 0.3, 5)])
    with pytest.raises(SystemExit):
        study.parse_args(["--dir", "d", "--setting-seeds", "0:100:5"])
    assert "n_clean:n_noisy:sigma_n:count" in capsys.readouterr().err


def test_means_verdict_decides_what_the_per_run_rule_cannot():
    """A 100%-noisy setting that scatters (sd 6) over 12 seeds around a mean 8 above the mixed one: no single run
    is beyond 2 combined sds, so the per-run verdict stays unresolved; the means differ beyond their Welch
    interval, so the means verdict holds."""
    rng = np.random.default_rng()
    centre = dict(zip(report.TABLE1, (6.0, 15.0, 31.0, 7.0)))
    spread = dict(zip(report.TABLE1, (0.3, 6.0, 1.0, 0.3)))
    rows = []
    for label, (c, m) in report.table1_pairs(1000).items():
        n = 12 if label == "100% noisy" else 4
        z = rng.standard_normal(n)
        for v in centre[label] + spread[label] * (z - z.mean()) / z.std(ddof=1):    # mean and sd exact
            rows.append({"n_clean": c, "n_noisy": m, "sigma_n": 0.2 if m else 0.0, "value": v, "sd": 1.0,
                         "floor": 1.0, "n": 1000})
    text, runs, means = report.table1(rows, 0.2, "fd_mnist", "mnist")
    assert (runs, means) == ("unresolved", "holds")
    assert "| 90% noisy + 10% clean < 100% noisy | 8.00 |" in text


def test_welch_interval_matches_scipy_and_covers_the_true_gap():
    """welch() against scipy's Welch t-test interval on fresh draws, and its coverage over 3000 fresh pairs of
    samples with unequal n and sd: 95% within binomial bounds (sd 0.4%)."""
    from scipy import stats
    rng = np.random.default_rng()
    a, b = rng.normal(3, 0.4, 5), rng.normal(5, 3.0, 11)
    ci = stats.ttest_ind(b, a, equal_var=False).confidence_interval(0.95)
    np.testing.assert_allclose(power.welch(a, b)[1:], (ci.low, ci.high), rtol=1e-10)
    covered = sum(lo <= 2 <= hi for lo, hi in (power.welch(rng.normal(3, 0.4, 5), rng.normal(5, 3.0, 11))[1:]
                                               for _ in range(3000)))
    assert abs(covered / 3000 - 0.95) < 0.015
    with pytest.raises(ValueError, match="at least 2 seeds"):
        power.welch([1.0], [2.0, 3.0])


def test_welch_power_matches_simulation_and_the_plan_reaches_it():
    """welch_power against the rejection rate of 12000 simulated experiments at the planned seeds, and the seed
    plan: every reachable comparison at >= POWER, seeds only added, a gap of 0 reported unreachable."""
    rng = np.random.default_rng()
    gap, sd_a, sd_b, n_a, n_b = 1.5, 0.5, 2.0, 4, 9
    predicted = power.welch_power(gap, sd_a, sd_b, n_a, n_b)
    rejected = np.mean([power.compare_means(rng.normal(0, sd_a, n_a), rng.normal(gap, sd_b, n_b)) == "yes"
                        for _ in range(12000)])
    # 400k simulations: rejection rate 0.4723, predicted 0.4767 (the noncentral t is an approximation for Welch).
    # With 3000 experiments (sd 0.009) the old 0.03 bound failed 2.7e-3 of runs; 12000 (sd 0.0046) leave 5.6 sd.
    assert 0.3 < predicted < 0.9 and abs(rejected - predicted) < 0.03
    z = rng.standard_normal(3)
    unit = (z - z.mean()) / z.std(ddof=1)
    settings = {"mixed": 7 + 0.3 * unit, "noisy": 13.6 + 6.9 * unit, "tenth": 31 + 2 * unit, "same": 7 + unit}
    counts, plan = power.seed_plan(settings, [("mixed", "noisy"), ("mixed", "tenth"), ("mixed", "same")])
    by = {r["worse"]: r for r in plan}
    assert by["noisy"]["reachable"] and by["noisy"]["power"] >= power.POWER and counts["noisy"] > counts["mixed"] >= 3
    assert by["tenth"]["seeds_worse"] >= 3 and by["tenth"]["power"] > 0.99
    assert not by["same"]["reachable"] and counts["same"] == 3
    assert power.welch_power(6.6, 0.3, 6.9, counts["mixed"], counts["noisy"] - 1) < power.POWER


def test_welch_power_is_the_noncentral_t_tail_and_stays_finite_where_scipys_is_not():
    from scipy import stats
    rng = np.random.default_rng()
    for _ in range(40):
        gap, (sd_a, sd_b), (n_a, n_b) = rng.uniform(0, 8), rng.uniform(0.2, 4, 2), rng.integers(2, 17, 2)
        va, vb = sd_a**2 / n_a, sd_b**2 / n_b
        nu = (va + vb) ** 2 / (va**2 / (n_a - 1) + vb**2 / (n_b - 1))
        crit, nc = stats.t.ppf(1 - power.ALPHA / 2, nu), gap / math.sqrt(va + vb)
        reference = stats.nct.sf(crit, nu, nc) + stats.nct.cdf(-crit, nu, nc)
        if np.isfinite(reference):
            assert abs(power.welch_power(gap, sd_a, sd_b, n_a, n_b) - reference) < 1e-6
    assert abs(power.welch_power(0.0, 1.3, 0.7, 5, 7) - power.ALPHA) < 1e-6          # no gap: the test's level
    # A large noncentrality (about 20 at nu 2.03), where scipy's noncentral t gave NaN: power 1, not NaN.
    assert 0.999 < power.welch_power(24.0, 0.30000000000000004, 1.9999999999999978, 3, 3) <= 1

def test_compare_uses_the_spread_over_seeds():
    def setting(values):
        return [{"value": v, "sd": 0.01} for v in values]
    # sds over seeds 1 and 1: a difference counts beyond 2 x sqrt(2) = 2.83, whatever the bootstrap sd says.
    assert report.compare(setting([10, 11, 12]), setting([13, 14, 15])) == "yes"         # 3 apart
    assert report.compare(setting([10, 11, 12]), setting([12, 13, 14])) == "tie"         # 2 apart
    assert report.compare(setting([13, 14, 15]), setting([10, 11, 12])) == "no"


def test_equivalent_counts_and_worth_table_from_synthetic_curves():
    def metric(n_eff):
        return 300 * n_eff ** -0.6 + 2
    rows = [{"n_clean": c, "n_noisy": 0, "sigma_n": 0.0, "value": metric(c) * f}
            for c in (100, 200, 500, 1000) for f in (0.98, 1.0, 1.02)]
    rows += [{"n_clean": 100, "n_noisy": 900, "sigma_n": 0.2, "value": metric(100 + 0.4 * 900) * f}
             for f in (0.98, 1.0, 1.02)]
    rows += [{"n_clean": 0, "n_noisy": 1000, "sigma_n": 0.2, "value": metric(50) * f} for f in (0.98, 1.0, 1.02)]
    noisy, mixed = report.equivalent_counts(rows)                      # sorted by n_clean
    assert (noisy["n_clean"], noisy["bound"], noisy["n_equiv"]) == (0, "<", 100)
    assert noisy["worth"] == pytest.approx(0.1)                         # an upper bound: 100 / 1000
    assert mixed["bound"] == "=" and mixed["worth"] == pytest.approx(0.4, abs=0.03)
    assert mixed["ci_low"] < mixed["worth"] < mixed["ci_high"]
    table = report.equivalent_table([mixed, noisy])
    assert "| 0.2 | 0 | 1000 | < 100 | < 0.100 |  | 3 |" in table
    assert f"| 0.2 | 100 | 900 | {mixed['n_equiv']:.0f} | {mixed['worth']:.3f} | {mixed['ci_low']:.2f} - " in table


def test_write_results_with_mixed_points_draws_the_worth_figure(tmp_path):
    def metric(n_eff):
        return 300 * n_eff ** -0.6 + 2
    settings = [(c, 0, 0.0, metric(c)) for c in (100, 200, 500, 1000)]
    settings += [(100, 900, s, metric(100 + w * 900)) for s, w in ((0.2, 0.5), (0.4, 0.2))]
    settings += [(0, 1000, s, metric(60)) for s in (0.2, 0.4)]
    rows = [{"name": f"c{c}_n{m}_s{s:g}_seed{seed}", "n_clean": c, "n_noisy": m, "sigma_n": s, "seed": seed,
             "metric": "fd_mnist", "value": v * (1 + 0.01 * (seed - 1)), "sd": 0.5, "floor": 1.0, "kid": None,
             "memorised": 0.0, "nn_ratio": 1.0, "n": 1000, "kimg": 240.0,
             "snapshots": json.dumps({"200": v * 1.1, "240": v}), "train_seconds": 1.0, "eval_seconds": 1.0}
            for c, m, s, v in settings for seed in range(3)]
    text = report.write_results(rows, tmp_path, "fd_mnist", "mnist", {})
    png = (tmp_path / "worth.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    res = json.loads((tmp_path / "results.json").read_text())
    worth = {(e["sigma_n"], e["n_clean"]): e for e in res["equivalent_clean"]}
    assert worth[(0.2, 100)]["worth"] == pytest.approx(0.5, abs=0.05) and worth[(0.4, 100)]["worth"] < 0.3
    assert worth[(0.2, 0)]["bound"] == "<" and "fd_mnist @ 200 kimg" in text
    assert res["table1_ordering"] == {"0.2": "holds", "0.4": "holds"}



PRICE_SIGMAS = (0.1, 0.2, 0.4, 0.8)


def price_study(worth_of, rng, sd=0.01):
    """Rows of the price plan with a known answer: the clean-only curve f(n) = 100 - 10 ln n (linear in log n, so
    clean_count_for inverts it exactly) at 50-500 images, mixed points n_clean + n_noisy = 500 at n_clean 50,
    100, 200 and noisy-only points at sigma_n 0.1-0.8 scoring f(n_clean + worth_of(sigma_n) n_noisy); 3 seeds
    each, every value with fresh N(0, sd^2) seed noise."""
    def f(n):
        return 100 - 10 * math.log(n)
    settings = [(c, 0, 0.0, f(c)) for c in (50, 100, 200, 300, 500)]
    settings += [(c, 500 - c, s, f(c + worth_of(s) * (500 - c))) for c in (0, 50, 100, 200) for s in PRICE_SIGMAS]
    return [{"name": f"c{c}_n{m}_s{s:g}_seed{seed}", "n_clean": c, "n_noisy": m, "sigma_n": s, "seed": seed,
             "value": v + sd * rng.normal(), "sd": 0.5, "floor": 1.0, "memorised": None, "n": 1000,
             "snapshots": "{}"} for c, m, s, v in settings for seed in range(3)]


def exponential_worth(sigma_n):
    return math.exp(-(sigma_n / 0.3) ** 1.5)


def test_price_list_recovers_the_worth_its_price_and_the_exponential_decay(tmp_path):
    """Worth exp(-(sigma_n / 0.3)^1.5) read back at every mixed point, its price 1 / w, the exponential fitted
    per n_clean and preferred; the noisy-only series (at sigma_n 0.8: 500 x 0.013 = 6 images, below the curve's 50,
    a bound) has 3 usable levels and is named as not fitted. Seed sd 0.01 moves a worth by about n' 0.01 / (10
    n_noisy) < 0.002 (15 draws: at most 0.003 off, s and the exponent within 1%)."""
    rows = price_study(exponential_worth, np.random.default_rng())
    text = report.write_results(rows, tmp_path, "fd_mnist", "mnist", {})
    res = json.loads((tmp_path / "results.json").read_text())
    prices = {(p["n_clean"], p["sigma_n"]): p for p in res["price_list"]}
    assert sorted(prices) == [(c, s) for c in (0, 50, 100, 200) for s in PRICE_SIGMAS]
    for (c, s), p in prices.items():
        if (c, s) == (0, 0.8):
            assert (p["bound"], p["price_bound"]) == ("<", ">") and p["price"] == pytest.approx(1 / p["worth"])
            assert p["worth"] == pytest.approx(50 / 500) and "| 0.8 | 0 (noisy only) | 500 | < 0.100 |  | > 10.00 |  |"\
                in text
            continue
        assert p["bound"] == p["price_bound"] == "=" and p["worth"] == pytest.approx(exponential_worth(s), abs=0.01)
        assert p["price"] == pytest.approx(1 / p["worth"]) and p["ci_low"] < p["worth"] < p["ci_high"]
        assert (p["price_low"], p["price_high"]) == pytest.approx((1 / p["ci_high"], 1 / p["ci_low"]))
        assert (f"| {s:g} | {c or '0 (noisy only)'} | {500 - c} | {p['worth']:.3f} | {p['ci_low']:.3f} - "
                f"{p['ci_high']:.3f} | {p['price']:.2f} | {p['price_low']:.2f} - {p['price_high']:.2f} | 3 |") in text
    fits = res["worth_decay_fits"]
    assert sorted(fits, key=int) == ["50", "100", "200"]
    for c, fit in fits.items():
        assert fit["n_levels"] == 4 and fit["preferred"] == "exponential", fit
        assert fit["exponential"]["s"] == pytest.approx(0.3, rel=0.05)
        assert fit["exponential"]["exponent"] == pytest.approx(1.5, rel=0.05)
        assert f"n_clean = {c}: exponential w = exp(-(sigma_n/" in text
    assert "Not fitted, fewer than 4 usable noise levels" in text and "n_clean = 0 (3 of 4 levels usable, left out " \
        "sigma_n 0.8)" in text
    png = (tmp_path / "price.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_price_list_fits_prefer_the_power_law_on_power_law_data():
    rows = price_study(lambda s: 1 / (1 + (s / 0.3) ** 2), np.random.default_rng())
    fits, sentences = report.worth_decay_fits(report.equivalent_counts(rows))
    assert sorted(fits) == [0, 50, 100, 200]            # the noisy-only worth stays inside the curve: 500 x 0.12
    for fit in fits.values():
        assert fit["preferred"] == "power", fit
        assert fit["power"]["s"] == pytest.approx(0.3, rel=0.05)
        assert fit["power"]["exponent"] == pytest.approx(2, rel=0.05)
    assert len(sentences) == 4 and all(line.endswith("preferred power.") for line in sentences)


def test_a_worth_ci_reaching_below_0_gives_an_unbounded_price():
    """A mixed point whose seeds straddle the 100-image clean model (one seed 2 worse, below it; the others at
    worth 0.1 and 0.2): resamples of that seed three times or twice beside the 0.1 one (4 of 27) score worse
    than 100 clean images, a worth < 0, so ci_low < 0."""
    rng = np.random.default_rng()
    rows = [{"n_clean": c, "n_noisy": 0, "sigma_n": 0.0, "value": 100 - 10 * math.log(c) + 0.01 * rng.normal()}
            for c in (50, 100, 200, 500) for _ in range(3)]
    rows += [{"n_clean": 100, "n_noisy": 400, "sigma_n": 0.4, "value": 100 - 10 * math.log(n) + 0.01 * rng.normal()}
             for n in (100 * math.exp(-0.2), 140, 180)]
    (p,) = report.price_list(report.equivalent_counts(rows))
    assert p["ci_low"] < 0 < p["worth"] < p["ci_high"] and p["bound"] == "="
    assert p["price"] == pytest.approx(1 / p["worth"]) and p["price_low"] == pytest.approx(1 / p["ci_high"])
    assert p["price_high"] is None
    assert f"| {p['price']:.2f} | {1 / p['ci_high']:.2f} - inf | 3 |" in report.price_table([p])


def test_a_study_without_a_second_sigma_n_per_n_clean_writes_no_price_list(tmp_path):
    rows = [r for r in price_study(exponential_worth, np.random.default_rng()) if r["sigma_n"] in (0.0, 0.2)]
    eqs = report.equivalent_counts(rows)
    assert len(eqs) == 4 and not report.has_price_list(eqs)
    text = report.write_results(rows, tmp_path, "fd_mnist", "mnist", {})
    res = json.loads((tmp_path / "results.json").read_text())
    assert "price" not in text and not (tmp_path / "price.png").exists() and (tmp_path / "worth.png").exists()
    assert "price_list" not in res and "worth_decay_fits" not in res

def test_noisy_only_points_under_both_samplers_and_table1_under_each(tmp_path):
    """Fresh draws with a known answer: at sigma_n 0.2 the 100%-noisy seeds scatter under the full sampler (the
    ordering unresolved) and sit 5 above the mixed setting when stopped (2 seeds, the third not evaluated stopped;
    every draw within 0.1 of its setting's value, so each sd <= 0.15 and the Welch half-width is at most
    t_0.975(df >= 1) 0.15 sqrt(1/3 + 1/2) = 12.71 x 0.137 = 1.7 against a gap >= 4.8: the ordering holds); at 0.4
    none was evaluated stopped, shown as dashes."""
    rng = np.random.default_rng()
    jitter = rng.uniform(-0.1, 0.1, size=20)
    settings = {(1000, 0, 0.0): 6.0, (100, 0, 0.0): 30.0, (100, 900, 0.2): 7.0, (100, 900, 0.4): 9.0}
    rows = [{"name": f"c{c}_n{m}_s{s:g}_seed{seed}", "n_clean": c, "n_noisy": m, "sigma_n": s, "seed": seed,
             "value": v + jitter[3 * i + seed], "sd": 0.5, "floor": 1.0, "memorised": None, "n": 1000,
             "snapshots": "{}"} for i, ((c, m, s), v) in enumerate(settings.items()) for seed in range(3)]
    full = {0.2: [7.5, 40.0, 8.0] + rng.uniform(0, 1, 3), 0.4: rng.uniform(10, 30, 3)}
    stop = {0.2: [12.0 + jitter[18], 12.0 + jitter[19], None], 0.4: [None] * 3}
    rows += [{**rows[0], "name": f"c0_n1000_s{s:g}_seed{seed}", "n_clean": 0, "n_noisy": 1000, "sigma_n": s,
              "seed": seed, "value": full[s][seed], "value_stop": stop[s][seed], "sd_stop": 0.3}
             for s in (0.2, 0.4) for seed in range(3)]
    text, verdicts = report.samplers_table(rows, "fd_mnist", "mnist")

    def mean_sd(v):
        return f"{statistics.mean(v):.2f} ± {statistics.stdev(v):.2f}"
    stopped, mixed = stop[0.2][:2], [r["value"] for r in rows if (r["n_clean"], r["sigma_n"]) == (100, 0.2)]
    assert f"| 0.2 | 1000 | {mean_sd(full[0.2])} | 0.50 | 3 | {mean_sd(stopped)} | 0.30 | 2 |" in text
    assert f"| 0.4 | 1000 | {mean_sd(full[0.4])} | 0.50 | 3 | - | - | 0 |" in text
    lines = {tuple(line.split(" | ")[:2]): line for line in text.splitlines()}
    assert lines["| 0.2", "full (to 0.002)"].startswith(f"| 0.2 | full (to 0.002) | {mean_sd(full[0.2])} (3 seeds) | ")
    assert lines["| 0.2", "full (to 0.002)"].endswith("| tie | tie | unresolved | unresolved |")
    assert lines["| 0.2", "stopped at sigma_n"] == (
        f"| 0.2 | stopped at sigma_n | {mean_sd(stopped)} (2 seeds) | "
        f"{statistics.mean(stopped) - statistics.mean(mixed):.2f} | "
        "{1:.2f} to {2:.2f} | yes | yes | holds | holds |".format(*power.welch(mixed, stopped)))
    assert lines["| 0.4", "stopped at sigma_n"] == "| 0.4 | stopped at sigma_n | - | - | - | - | - | - | - |"
    assert verdicts == {"0.2": ("holds", "holds"), "0.4": (None, None)}
    report.write_results(rows, tmp_path, "fd_mnist", "mnist", {})
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["table1_ordering"]["0.2"] == res["table1_ordering_means"]["0.2"] == "unresolved"
    assert res["table1_ordering_stopped"] == {"0.2": "holds", "0.4": None}
    assert res["table1_ordering_means_stopped"] == {"0.2": "holds", "0.4": None}
    assert text in (tmp_path / "table.md").read_text()

def test_summary_table_groups_seeds():
    rows = [{"n_clean": 500, "n_noisy": 0, "sigma_n": 0.0, "value": v, "sd": 1.0, "floor": 2.0, "n": 100}
            for v in (10, 14)]
    text = report.summary_table(rows, "fd_mnist", "mnist")
    assert "| - | 500 | 0 | 12.00 ± 2.83 | 1.00 | 2 |" in text
    assert "| real vs real (floor) | | | 2.00 | | n = 100 |" in text


def test_worth_fit_sentence_per_sigma():
    rows = [{"n_clean": c, "n_noisy": m, "sigma_n": 0.2 if m else 0.0, "seed": 0,
             "value": 50 * (c + 0.3 * m) ** -0.5 + 0.1}
            for c in (100, 300, 1000, 3000) for m in (0, 1000, 4000)]
    # 100% noisy points follow another law (no clean images for the low noise levels): left out of the fit.
    rows += [{"n_clean": 0, "n_noisy": m, "sigma_n": 0.2, "seed": 0, "value": 1e3} for m in (1000, 4000)]
    fits, sentences = report.worth_fits(rows)
    assert fits[0.2]["w"] == pytest.approx(0.3, rel=0.05) and fits[0.2]["n_points"] == 12
    assert sentences[0].startswith("Effective-sample model (points with n_clean > 0): At sigma_n = 0.2 one noisy "
                                   "image is worth 0.3")


def test_config_file_with_command_line_override(tmp_path):
    cfg = tmp_path / "study.toml"
    cfg.write_text('n_clean = [500, 5000]\nn_noisy = [0, 4500]\nsigma_n = [0.2, 0.4]\nseeds = [0, 1]\n'
                   'kimg = 5\npoints = [[100, 900]]\ndir = "runs/x"\ndata_seed = 4\neval_snapshots = 3\n')
    a = study.parse_args(["--dir", "d", "--config", str(cfg), "--kimg", "7"])
    assert a.n_clean == [500, 5000] and a.sigma_n == [0.2, 0.4] and a.seeds == [0, 1]
    assert a.points == [(100, 900)] and a.kimg == 7.0 and a.dir == "d" and a.data_seed == 4
    assert study.parse_args(["--config", str(cfg)]).dir == "runs/x" and a.eval_snapshots == 3
    with pytest.raises(SystemExit):
        study.parse_args(["--n-clean", "5"])                            # no study directory anywhere
    (tmp_path / "bad.json").write_text('{"n_clen": [1]}')
    with pytest.raises(SystemExit):
        study.parse_args(["--dir", "d", "--config", str(tmp_path / "bad.json")])
    # Flags, option-like strings and optional values are read as on the command line.
    (tmp_path / "flags.toml").write_text('dir = "d"\nreport_only = true\ntrain_args = "--precision fp32"\n'
                                         'table1 = 100\n')
    a = study.parse_args(["--config", str(tmp_path / "flags.toml")])
    assert a.report_only and a.train_args == "--precision fp32" and a.table1 == 100
