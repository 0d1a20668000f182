"""The third adversarial pass (issue 25), beyond the run directory (tests/test_rundir.py): evaluation reads a noisy
data set as stored (class 2), and pixel values and noise levels are checked where they are read, after the cast to
float32, for range (class 4); a run in which every step is skipped is an error."""
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ambient.data import AmbientDataset, load_dataset, make_dataset
from ambient.data.tool import main as dataset_tool
from ambient.eval import reference_images, training_images
from ambient.train import TrainingDiverged
from ambient.train import cli as train
from ambient.train import train as train_run

FAST = ["--model-channels", "8", "--batch", "16", "--tick-kimg", "0.016", "--grid-size", "4", "--no-progress",
        "--snap-kimg", "1"]


def noisy_set(folder: Path, images: list[np.ndarray], sigmas: list[float]) -> Path:
    """A noisy data set as the README writes one: float .npy images, sigma_n per file in dataset.json."""
    folder.mkdir()
    entries = []
    for i, (image, sigma) in enumerate(zip(images, sigmas)):
        np.save(folder / f"img{i:04d}.npy", image)
        entries.append([f"img{i:04d}.npy", sigma])
    (folder / "dataset.json").write_text(json.dumps({"sigma_n": entries, "labels": None}))
    return folder


def test_evaluation_reads_a_noisy_data_set_as_stored(tmp_path):
    noisy = tmp_path / "noisy"
    assert dataset_tool(["--source", "digits", "--dest", str(noisy), "--add-noise", "0.3",
                         "--noisy-fraction", "0.75", "--seed", "2"]) == 0
    base = load_dataset(str(noisy))
    stored = torch.stack([base[i][0] for i in range(len(base))])                # float32 on [-1, 1] with noise
    ref = reference_images(str(noisy), (1, 8, 8))
    assert ref.dtype == torch.float32 and torch.equal(ref, stored)
    assert ref.mean() > -0.8 and ref.std() > 0.5                                 # not u / 127.5 - 1 of floats
    ds = make_dataset(str(noisy))
    meta = {"config": {"data": str(noisy)}, "dataset": ds.describe()}
    images = training_images(meta)
    assert torch.equal(images, stored[ds.indices])
    np.testing.assert_allclose(images[ds.is_clean].numpy() * 127.5 + 127.5,
                               np.round(images[ds.is_clean].numpy() * 127.5 + 127.5), atol=1e-4)   # 8-bit clean
    assert training_images({**meta, "dataset": "another data set"}) is None     # not what it was trained on


@pytest.mark.parametrize("value, dtype, sigma, message", [
    (1e300, np.float64, 0.2, r"infinite value\(s\) as float32"),      # finite as float64, inf as float32
    (3.5e38, np.float64, 0.2, r"infinite value\(s\) as float32"),
    (200.0, np.float32, 0.2, "values up to 200"),                   # the 0..255 scale
    (3.5, np.float32, 0.2, "values up to 3.5"),                     # 12.5 sigma out
])
def test_implausible_pixels_are_refused_when_the_set_is_opened(tmp_path, value, dtype, sigma, message):
    rng = np.random.default_rng()
    images = [(rng.uniform(-1, 1, (6, 6)) + sigma * rng.standard_normal((6, 6))).astype(dtype) for _ in range(5)]
    images[3][2, 4] = value
    folder = noisy_set(tmp_path / "set", images, [sigma] * 5)
    with pytest.raises(ValueError, match=f"img0003.npy.*{message}"):
        load_dataset(str(folder))
    images[3][2, 4] = 1 + 9 * sigma                                 # 9 sigma out: rare, still plausible
    load_dataset(str(noisy_set(tmp_path / "ok", images, [sigma] * 5)))


@pytest.mark.parametrize("sigma", [1e30, 81.0, 10 ** 400, float("nan")])
def test_noise_levels_beyond_the_samplers_range_are_refused(tmp_path, sigma):
    images = [np.zeros((6, 6), np.float32)] * 3
    folder = tmp_path / "set"
    noisy_set(folder, images, [0.1, 0.1, 0.1])
    meta = json.loads((folder / "dataset.json").read_text())
    meta["sigma_n"][1][1] = sigma
    (folder / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"img0001.npy' must be a finite number >= 0 and <= 80"):
        load_dataset(str(folder))
    if isinstance(sigma, float):
        with pytest.raises(ValueError, match=r"sigma_n must be finite, >= 0 and <= 80"):
            AmbientDataset(load_dataset("digits"), sigma_n=sigma)


def test_a_run_whose_every_step_is_skipped_is_an_error(tmp_path):
    """P_mean = 1e4 draws infinite noise levels: every loss is NaN and every step is skipped. Fewer steps than
    --max-bad-steps used to end "done" with exit 0 and a checkpoint of the untrained network. The flag refuses
    such a P_mean now (tests/test_parse_bounds.py), so the loop's own guard is reached through the library."""
    run = tmp_path / "run"
    cfg = train.parse_args(["--data", "digits", *FAST, "--run-dir", str(run), "--kimg", "0.048"])
    with pytest.raises(TrainingDiverged, match="every one of the 3 steps of this run had non-finite gradients"):
        train_run(dataclasses.replace(cfg, P_mean=1e4))
    assert not list(run.glob("checkpoint-*"))
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in log] == [None, None]                  # ticks of skipped steps log no loss
