"""python -m ambient.study.methods: each method's study beside the plain one, on synthetic study results whose
answers are known (Welch intervals from scipy, worths from a curve linear in log n, background noise of the kept
samples), and bad input."""
import json
import math

import numpy as np
import pytest
import torch
from scipy import stats

from ambient.common.images import from_uint8, to_uint8
from ambient.eval import metrics
from ambient.study import methods

SIZES = (100, 200, 500, 1000)


def curve(n: float) -> float:
    """The clean-only metric of n images: linear in log n, as scaling.clean_count_for interpolates it."""
    return 60.0 - 8.0 * math.log(n)


def _row(c, m, s, seed, value, seconds, memorised=0.0):
    name = f"c{c}_n{m}" + (f"_s{s!r}" if m else "") + f"_seed{seed}"
    return {"name": name, "n_clean": c, "n_noisy": m, "sigma_n": s if m else 0.0, "seed": seed, "metric": "fd_mnist",
            "value": value, "sd": 1.0, "floor": 0.5, "n": 100, "memorised": memorised, "train_seconds": seconds,
            "restore_seconds": None, "fid": 3 * value}


def _study(folder, rows, rng, noise_sd):
    """results.json of `rows` and a samples/NAME.npz per row: dark images with one bright stroke, and Gaussian
    noise of sd `noise_sd` on the background."""
    (folder / "samples").mkdir(parents=True)
    for r in rows:
        x = np.full((20, 1, 12, 12), -1.0) + noise_sd * rng.standard_normal((20, 1, 12, 12))
        x[:, :, 5:7, 2:10] = 0.8
        np.savez(folder / "samples" / f"{r['name']}.npz", images=to_uint8(torch.from_numpy(x)))
    (folder / "results.json").write_text(json.dumps({"rows": rows}))
    return folder


@pytest.fixture
def studies(tmp_path):
    """Plain: the clean-only curve and, at sigma_n 0.2 and 0.4, 100 clean + 900 noisy (worth 0.5, 0.3) and 1000
    noisy (worth 0.3, 0.2); "good": worth 0.8 mixed and 0.6 noisy-only at both levels; "half": mixed only, better
    at 0.2, plain's own values at 0.4. 3 seeds each, fresh seed noise."""
    rng = np.random.default_rng()
    jitter = lambda: float(rng.normal(0, 0.05))                              # noqa: E731
    plain = [_row(n, 0, 0.0, k, curve(n) + jitter(), 1000.0 + k) for n in SIZES for k in range(3)]
    truth = {"plain": {(100, 0.2): 0.5, (100, 0.4): 0.3, (0, 0.2): 0.3, (0, 0.4): 0.2},
             "good": {(100, 0.2): 0.8, (100, 0.4): 0.8, (0, 0.2): 0.6, (0, 0.4): 0.6},
             "half": {(100, 0.2): 0.8, (100, 0.4): 0.3}}
    rows = {name: [_row(c, 1000 - c, s, k, curve(c + w * (1000 - c)) + jitter(),
                        (1000.0 if name == "plain" else 3000.0) + k, memorised=0.01 * k)
                   for (c, s), w in by_setting.items() for k in range(3)] for name, by_setting in truth.items()}
    rows["half"][3:] = [{**r, "train_seconds": 3000.0 + r["seed"]} for r in rows["plain"][3:6]]   # no effect at 0.4
    folders = {"plain": _study(tmp_path / "plain", plain + rows["plain"], rng, 0.15),
               "good": _study(tmp_path / "good", rows["good"], rng, 0.05),
               "half": _study(tmp_path / "half", rows["half"], rng, 0.05)}
    return folders, rows, truth


def test_methods_side_by_side_against_known_answers(studies, tmp_path):
    folders, rows, truth = studies
    text = methods.write_comparison(folders["plain"], {"good": folders["good"], "half": folders["half"]},
                                    tmp_path / "out")
    result = json.loads((tmp_path / "out" / "comparison.json").read_text())
    entries = result["entries"]
    assert (tmp_path / "out" / "methods.png").stat().st_size > 1000
    assert text in (tmp_path / "out" / "table.md").read_text()
    assert [(e["sigma_n"], e["n_clean"], e["method"]) for e in entries] == [
        (s, c, name) for s in (0.2, 0.4) for c in (100, 0) for name in ("plain", "good", "half")
        if (c, s) in truth[name]]
    for e in entries:
        key, name = (e["n_clean"], e["sigma_n"]), e["method"]
        mine = [r for r in rows[name] if (r["n_clean"], r["sigma_n"]) == key]
        values, base = [r["value"] for r in mine], [r["value"] for r in rows["plain"]
                                                     if (r["n_clean"], r["sigma_n"]) == key]
        assert e["mean"] == pytest.approx(np.mean(values)) and e["seeds"] == 3
        assert e["worth"]["worth"] == pytest.approx(truth[name][key], abs=0.02) and e["worth"]["bound"] == "="
        assert e["copies"] == pytest.approx(0.01)
        assert e["seconds"] == pytest.approx(1001.0 if name == "plain" else 3001.0)
        assert e["cost_ratio"] == pytest.approx(e["seconds"] / 1001.0)
        images = [from_uint8(np.load(folders[name] / "samples" / f"{r['name']}.npz")["images"]) for r in mine]
        assert e["background"] == pytest.approx(np.mean([metrics.background_noise(x) for x in images]))
        assert e["background"] == pytest.approx(0.15 if name == "plain" else 0.05, rel=0.35)
        if name == "plain":
            assert e["diff"] is None and e["verdict"] is None
            continue
        ci = stats.ttest_ind(values, base, equal_var=False).confidence_interval(0.95)
        assert e["diff"] == pytest.approx(np.mean(values) - np.mean(base))
        assert (e["low"], e["high"]) == pytest.approx((ci.low, ci.high))
        assert e["verdict"] == e["fid"]["verdict"] == ("better" if truth[name][key] > truth["plain"][key] else "tie")
        assert e["fid"]["diff"] == pytest.approx(3 * e["diff"]) and e["fid"]["mean"] == pytest.approx(3 * e["mean"])
    # Table 1 with each method: complete for "good" (its ordering holds on the means), incomplete for "half".
    assert result["table1"]["good 0.2"]["means"] == result["table1"]["good 0.4"]["means"] == "holds"
    assert result["table1"]["half 0.2"]["means"] is None and "Table 1 with half" in text
    assert result["qualifying"] == ["good"]
    assert "| FID | FID difference (Welch 95%) | FID verdict |" in text
    for e in entries:                                 # one row per entry, every row as wide as the header
        assert text.count(f"| {e['sigma_n']:g} | {e['n_clean']} | {e['n_noisy']} | {e['method']} |") == 1
    table = [line for line in text.splitlines() if line.startswith("| 0.")]
    assert len(table) == len(entries) and {line.count("|") for line in table} == {text.splitlines()[2].count("|")}
    assert "qualify for the combination (90% noisy + 10% clean better than plain by the means test at every noise " \
           "level): good." in text


def test_bad_input_gets_one_clear_error(studies, tmp_path, capsys):
    folders, _, _ = studies
    assert methods.main(["--plain", str(folders["plain"]), "--method", f"x={tmp_path / 'none'}",
                         "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "results.json is not a study's results" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit) as exc:
        methods.main(["--plain", str(folders["plain"]), "--method", "no-folder", "--out", str(tmp_path / "out")])
    assert exc.value.code == 2 and "a method is NAME=FOLDER" in capsys.readouterr().err
