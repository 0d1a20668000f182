"""Data-scaling studies: train and evaluate one model per (n_clean, n_noisy, sigma_n, seed), then tabulate.

    python -m ambient.study --config docs/study/cpu.toml          # the committed CPU study
    python -m ambient.study --dir runs/study --n-clean 500,1000,5000 --n-noisy 0,4500 --sigma-n 0.2 --kimg 40
    python -m ambient.study --dir runs/t1 --table1 5000 --sigma-n 0.2 --seeds 0-2 --jobs 2
    python -m ambient.study --config docs/study/cpu.toml --report-only    # results of the points finished so far

Every point trains through `python -m ambient.train` (under torchrun with --nproc > 1) in
DIR/points/NAME/run with --resume auto, then is evaluated by `python -m ambient.eval` into
DIR/points/NAME/metrics.json (the newest checkpoint; with --eval-snapshots K also the K - 1 before it,
as metrics-STEP.json, to show whether the metric still moves). `--seeds` are training seeds; which
images are clean or noisy and their noise are fixed by `--data-seed` for every point, so the spread
over seeds is training noise alone. A point whose metrics file exists is skipped; an interrupted point
continues from its last checkpoint. Subprocesses import the same `ambient` as the study (PYTHONPATH),
so a study can run from a `git worktree` at a fixed commit. Results (ambient.study.report): results.csv,
results.json, a figure of the metric against n_clean per n_noisy, Table 1 per sigma_n with 2-sigma
verdicts, the equivalent clean count and worth of every mixed point (table and figure), the
effective-sample fit, the metric at the last snapshots, each point's last sample grid (samples/NAME.png)
and its evaluation images (samples/NAME.npz, uint8). With --eval-stop-noisy every noisy-only point (n_clean = 0)
is evaluated a second time with the sampler stopped at its sigma_n (STOP_METRICS, STOP_SAMPLES beside
metrics.json; samples/NAME-stop.npz), and the report sets both samplers side by side. With --score-fid nothing is
trained or evaluated: the kept samples of every finished point are scored with Inception FID against --ref
(samples/NAME-fid.json), and the report sets FID beside the study's metric. With --restore-rounds K every noisy
point's trained model then restores its own noisy images and is fine-tuned on them, K rounds (`python -m
ambient.restore --rounds K --resume` into DIR/points/NAME/restore), and the point's metrics score the last round.
"""
import argparse
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
import tomllib
import zipfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ambient.common import cli
from ambient.common.atomic import file_sha256, write_json
from ambient.common.images import from_uint8
from ambient.data import load_dataset
from ambient.data.sources import check_regular_file, parse_json
from ambient.eval import METRICS, metrics
from ambient.io import list_checkpoints
from ambient.train import config_flags
from ambient.train.cli import add_flags, given_flags
from ambient.train.config import flag_name

from .report import table1_pairs, write_results

IMPORT_ROOT = Path(__file__).resolve().parents[2]     # the folder `ambient` was imported from
SHARED = ("data", "data_seed", "preset", "model_channels", "batch", "kimg")     # training options of the study
POINT_FIELDS = ("n_clean", "n_noisy", "clean_fraction", "all_clean", "p_clean", "keep_fraction", "sigma_n",
                "sigma_share", "seed", "run_dir", "outdir", "resume")            # set by each point
STOP_METRICS, STOP_SAMPLES = "stop-metrics.json", "stop-samples.npz"    # a noisy-only point stopped at sigma_n
RESTORE_DIR = "restore"          # a point's restoration rounds (ambient.restore --rounds): data-k, run-k
FID_SUFFIX = "-fid.json"          # samples/NAME-fid.json: Inception FID of samples/NAME.npz (--score-fid)
_print_lock = threading.Lock()


class StudyError(RuntimeError):
    """A point that failed to train or evaluate, or settings that contradict an existing study."""


def say(msg: str) -> None:
    with _print_lock:
        print(msg, flush=True)


@dataclass(frozen=True, order=True)
class Point:
    """One training run of the study; clean-only points carry sigma_n = 0."""
    n_clean: int
    n_noisy: int
    sigma_n: float
    seed: int

    @property
    def name(self) -> str:
        noise = f"_s{self.sigma_n!r}" if self.n_noisy else ""        # repr: distinct levels, distinct names
        return f"c{self.n_clean}_n{self.n_noisy}{noise}_seed{self.seed}"


def make_points(n_clean: Sequence[int] = (), n_noisy: Sequence[int] = (), sigma_n: Sequence[float] = (0.2,),
                seeds: Sequence[int] = (0,), pairs: Sequence[tuple[int, int]] = ()) -> list[Point]:
    """The grid n_clean x n_noisy plus explicit (n_clean, n_noisy) pairs, for every sigma_n (noisy points
    only) and seed; sorted, without duplicates or empty points."""
    if any(s <= 0 for s in sigma_n):
        raise ValueError(f"sigma_n levels must be > 0, got {list(sigma_n)}")
    combos = {(c, m) for c in n_clean for m in n_noisy} | set(pairs)
    points = {Point(c, m, s if m else 0.0, seed) for c, m in combos if c + m > 0
              for s in (sigma_n if m else (0.0,)) for seed in seeds}
    if not points:
        raise ValueError("the study has no points: give --n-clean and --n-noisy, --points or --table1")
    if any(p.n_noisy for p in points) and not sigma_n:
        raise ValueError("noisy points need at least one --sigma-n level")
    return sorted(points)


# ----------------------------------------------------------------------------------------------
# Running points

@dataclass
class Settings:
    """What every point shares: training options, evaluation, launcher."""
    train: dict[str, Any] = field(default_factory=dict)    # TrainConfig fields every point shares, e.g. {"kimg": 40}
    eval_n: int = 1000
    eval_steps: int = 18
    metric: str = "fd_mnist"
    ref: str | None = None
    inception_path: str | None = None
    eval_snapshots: int = 1
    eval_stop_noisy: bool = False      # also evaluate each noisy-only point with the sampler stopped at its sigma_n
    restore_rounds: int = 0            # > 0: each noisy point's model then restores its noisy images, K rounds
    restore_kimg: float | None = None  # each round's fine-tuning length (None: the point's)
    nproc: int = 1
    threads: int | None = None

    def __post_init__(self) -> None:
        clash = sorted(set(self.train) & set(POINT_FIELDS))
        if clash:
            raise StudyError(f"{', '.join(map(flag_name, clash))} would set every point alike, but each point of a "
                             "study sets its own (n_clean, n_noisy, sigma_n, seed and its run directory)")

    def train_args_for(self, p: Point, run_dir: Path) -> list[str]:
        """The trainer's arguments for point `p` (without the launcher): its TrainConfig as flags."""
        point = {"n_clean": p.n_clean, "n_noisy": p.n_noisy, "seed": p.seed, "progress": False,
                 "run_dir": str(run_dir), "resume": "auto"}
        if p.n_noisy:
            point["sigma_n"] = (p.sigma_n,)
        return config_flags({**self.train, **point})

    def launcher(self) -> list[str]:
        if self.nproc > 1:
            return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={self.nproc}",
                    "-m", "ambient.train"]
        return [sys.executable, "-m", "ambient.train"]

    def restore_args(self, p: Point, run_dir: Path) -> list[str]:
        """`python -m ambient.restore` of point `p` once its model in `run_dir` is trained (empty when the study
        restores nothing or `p` has no noisy image): its own training images, K rounds, into RESTORE_DIR beside."""
        if not (self.restore_rounds and p.n_noisy):
            return []
        kimg = [] if self.restore_kimg is None else ["--kimg", repr(self.restore_kimg)]
        return [sys.executable, "-m", "ambient.restore", str(run_dir), "--dest", str(run_dir.parent / RESTORE_DIR),
                "--rounds", str(self.restore_rounds), *kimg, "--resume"]

    def evaluated_run(self, p: Point, folder: Path) -> Path:
        """The run whose checkpoints a point's metrics score: its last restoration round's, else its own."""
        if self.restore_args(p, folder / "run"):
            return folder / RESTORE_DIR / f"run-{self.restore_rounds}"
        return folder / "run"

    def eval_args(self, ckpt: Path, out: Path, samples: Path | None = None,
                  sigma_stop: float | None = None) -> list[str]:
        args = [sys.executable, "-m", "ambient.eval", "--ckpt", str(ckpt), "--n", str(self.eval_n),
                "--steps", str(self.eval_steps), "--metric", self.metric, "--out", str(out), "--no-progress"]
        if sigma_stop is not None:
            args += ["--sigma-stop", repr(sigma_stop)]
        if samples is not None:
            args += ["--samples-out", str(samples)]
        if self.ref:
            args += ["--ref", self.ref]
        if self.inception_path:
            args += ["--inception-path", self.inception_path]
        return args


def _run_logged(cmd: list[str], log: Path, env: dict[str, str], what: str) -> float:
    """Run `cmd` with stdout and stderr appended to `log`; wall seconds, or StudyError with the log's tail."""
    start = time.perf_counter()
    with open(log, "a") as f:
        f.write(f"$ {shlex.join(cmd)}\n")
        f.flush()
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, check=False).returncode
    if rc != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise StudyError(f"{what} failed (exit {rc}); see {log}:\n{tail}")
    return time.perf_counter() - start


# A point's files and the entries the study reads from them: (required, check, what it must be). The study and
# ambient.eval write them atomically, so a file that fails these checks was damaged or edited by hand.
Entries = dict[str, tuple[bool, Callable[[Any], bool], str]]
MAX_POINT_FILE = 1 << 20


def _finite(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def metrics_entries(metric: str) -> Entries:
    """What metrics.json (and metrics-STEP.json) must hold: the metric and n; the rest the report reads if there."""
    optional = (f"{metric}_sd", f"{metric}_floor", "kid", "memorised", "nn_ratio", "kimg")
    return {metric: (True, _finite, "a finite number"),
            "n": (True, lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0, "a positive integer"),
            **{k: (False, _finite, "a finite number") for k in optional}}


def _strings(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(a, str) for a in v)


POINT_ENTRIES: Entries = {
    "train_args": (True, _strings, "a list of strings"), "restore_args": (False, _strings, "a list of strings"),
    "train_seconds": (True, _finite, "a finite number"), "restore_seconds": (False, _finite, "a finite number"),
    "eval_seconds": (False, _finite, "a finite number")}


def read_point_file(path: Path, entries: Entries) -> dict[str, Any]:
    """The JSON object of a point's file (point.json, metrics*.json) with `entries` checked (an optional one may be
    absent or null); StudyError naming the file when it is not a regular file of at most MAX_POINT_FILE bytes of
    JSON, not an object, or lacks or mistypes an entry. Such a point is neither re-run nor reported: its file is not
    the study's, and running it again would overwrite what someone put there."""
    hint = ("delete it to evaluate the point again" if path.name.startswith("metrics") else
            "delete it to score the samples again" if path.name.endswith(FID_SUFFIX) else
            "delete the point's folder to train it again")
    try:
        check_regular_file(str(path))
        if (size := path.stat().st_size) > MAX_POINT_FILE:
            raise ValueError(f"{path} holds {size} bytes, more than a point's file ever does ({MAX_POINT_FILE})")
        data = parse_json(path.read_bytes(), str(path))
        if not isinstance(data, dict):
            raise ValueError(f"{path} holds {type(data).__name__}, not a JSON object")
        for key, (required, ok, what) in entries.items():
            if key not in data and required:
                raise ValueError(f'{path} has no "{key}" entry')
            if key in data and not (ok(data[key]) or (not required and data[key] is None)):
                raise ValueError(f'{path}: "{key}" must be {what}, got {json.dumps(data[key])[:80]}')
    except (OSError, ValueError) as e:
        raise StudyError(f"{e}; {hint}") from None
    return data


FID_ENTRIES: Entries = {
    "fid": (True, _finite, "a finite number"), "kid": (True, _finite, "a finite number"),
    "n": (True, lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 1, "an integer > 1"),
    "samples_sha256": (True, lambda v: isinstance(v, str), "a string")}


def _subprocess_env(s: Settings) -> dict[str, str]:
    """The environment of a point's subprocesses: they import `ambient` from where the study did; PYTHONSAFEPATH
    keeps `-m` from putting the working directory (which may hold another checkout) before PYTHONPATH."""
    env = dict(os.environ, PYTHONSAFEPATH="1",
               PYTHONPATH=os.pathsep.join([str(IMPORT_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))
    if s.threads is not None:
        env["OMP_NUM_THREADS"] = str(s.threads)
    return env


def _started_in(record: dict[str, Any], folder: Path) -> str:
    """How the point folder was spelled when point.json was written: its run directory's parent (--run-dir is always
    FOLDER/run), relative or absolute as that study's --dir was."""
    args = record.get("train_args", [])
    flag = args.index("--run-dir") if "--run-dir" in args[:-1] else None
    return os.path.dirname(args[flag + 1]) if flag is not None else str(folder)


def _as_point_args(args: list[str], folder: str) -> list[str]:
    """A point's recorded command in terms of the point: its folder written FOLDER and the restorer's interpreter
    dropped, so that a study continued with another spelling of --dir (relative, absolute) or another Python finds
    its started points the same."""
    if args[1:3] == ["-m", "ambient.restore"]:
        args = args[1:]
    return ["FOLDER" + a[len(folder):] if a == folder or a.startswith(folder + os.sep) else a for a in args]


def run_point(p: Point, study_dir: Path, s: Settings) -> Path:
    """Train (or continue) and evaluate one point unless its metrics file exists; returns the point folder.

    point.json records the training arguments; a point first run with other arguments is refused.
    """
    folder = study_dir / "points" / p.name
    metrics_file = folder / "metrics.json"
    if metrics_file.exists():
        say(f"skip {p.name}: {metrics_file} exists")
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    run_dir = folder / "run"
    args, restore = s.train_args_for(p, run_dir), s.restore_args(p, run_dir)
    record_file = folder / "point.json"
    record = read_point_file(record_file, POINT_ENTRIES) if os.path.lexists(record_file) else {"train_seconds": 0.0}
    started_in = _started_in(record, folder)
    for key, what, given in (("train_args", "training", args), ("restore_args", "restoration", restore)):
        if key in record and _as_point_args(record[key], started_in) != _as_point_args(given, str(folder)):
            raise StudyError(f"point {p.name} in {study_dir} was started with {what} arguments "
                             f"{shlex.join(record[key])}, not {shlex.join(given)}; use a new --dir for new settings")
        if given:
            record[key] = given
    write_json(record, record_file)
    env = _subprocess_env(s)
    say(f"train {p.name} ({'continuing' if run_dir.exists() else 'new'})")
    record["train_seconds"] += _run_logged(s.launcher() + args, folder / "train.log", env, f"training {p.name}")
    write_json(record, record_file)
    if restore:
        say(f"restore {p.name} ({s.restore_rounds} round(s))")
        record["restore_seconds"] = record.get("restore_seconds", 0.0) + _run_logged(
            restore, folder / "restore.log", env, f"restoring {p.name}")
        write_json(record, record_file)
    say(f"eval {p.name}")
    *earlier, newest = list_checkpoints(s.evaluated_run(p, folder))[-s.eval_snapshots:]
    record.setdefault("eval_seconds", 0.0)
    for ckpt_dir in earlier:                      # older snapshots first: metrics.json marks the point done
        out = folder / f"metrics-{ckpt_dir.name.rpartition('-')[2]}.json"
        if not out.exists():
            record["eval_seconds"] += _run_logged(s.eval_args(ckpt_dir, out), folder / "eval.log", env,
                                                  f"evaluating {p.name} at {ckpt_dir.name}")
    record["eval_seconds"] += _run_logged(s.eval_args(newest, metrics_file, folder / "samples.npz"),
                                          folder / "eval.log", env, f"evaluating {p.name}")
    write_json(record, record_file)
    say(f"done {p.name}: {read_point_file(metrics_file, metrics_entries(s.metric))[s.metric]:.3f}")
    return folder


def evaluate_stopped(p: Point, study_dir: Path, s: Settings) -> None:
    """A finished noisy-only point's newest checkpoint (the one metrics.json scored) evaluated again with the
    sampler stopped at its sigma_n, into STOP_METRICS and STOP_SAMPLES, unless STOP_METRICS exists; other points,
    and points not yet finished, are left alone."""
    folder = study_dir / "points" / p.name
    out = folder / STOP_METRICS
    if p.n_clean or not p.n_noisy or not (folder / "metrics.json").exists():
        return
    if out.exists():
        say(f"skip {p.name} stopped at sigma_n: {out} exists")
        return
    run = s.evaluated_run(p, folder)
    ckpts = list_checkpoints(run)
    if not ckpts:
        raise StudyError(f"cannot evaluate {p.name} stopped at sigma_n = {p.sigma_n:g}: no checkpoint in "
                         f"{run} (its metrics.json was made elsewhere)")
    say(f"eval {p.name} stopped at sigma_n = {p.sigma_n:g}")
    _run_logged(s.eval_args(ckpts[-1], out, folder / STOP_SAMPLES, sigma_stop=p.sigma_n), folder / "eval.log",
                _subprocess_env(s), f"evaluating {p.name} stopped at sigma_n")
    say(f"done {p.name} stopped at sigma_n: {json.loads(out.read_text())[s.metric]:.3f}")


def run_points(points: Sequence[Point], study_dir: Path, s: Settings, jobs: int = 1) -> list[str]:
    """Run every point, `jobs` at a time: started ones first, then seed by seed, each seed's clean-only curve
    (largest first) before the noisy points by noise level, so a study cut short has every setting at its
    first seeds; the error messages of the points that failed."""
    errors: list[str] = []
    points = sorted(points, key=lambda p: (not (study_dir / "points" / p.name / "run").exists(), p.seed, p.sigma_n,
                                           -p.n_clean))

    def one(p: Point) -> None:
        try:
            run_point(p, study_dir, s)
            if s.eval_stop_noisy:
                evaluate_stopped(p, study_dir, s)
        except StudyError as e:
            say(f"error: {e}")
            errors.append(str(e))

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        list(pool.map(one, points))
    return errors


# ----------------------------------------------------------------------------------------------
# Inception FID of the kept samples

def read_samples(path: Path) -> torch.Tensor:
    """The images of a samples file (`ambient.eval --samples-out`: uint8 (N, H, W, C) under "images", N >= 2) in
    [-1, 1]; StudyError naming the file when it is missing or is not such a file."""
    try:
        check_regular_file(str(path))
        with np.load(path, allow_pickle=False) as f:
            pixels = f["images"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise StudyError(f"{path} is not a samples file ({type(e).__name__}: {e}); copy it again from the point's "
                         "samples.npz") from None
    if pixels.dtype != np.uint8 or pixels.ndim != 4 or len(pixels) < 2 or pixels.shape[3] not in (1, 3):
        raise StudyError(f"{path} holds {pixels.dtype} images of shape {pixels.shape}, not uint8 (N >= 2, H, W, "
                         "1 or 3); copy it again from the point's samples.npz")
    return from_uint8(pixels)


def score_fid(names: Sequence[str], samples_dir: Path, ref: str, inception_path: str | None = None) -> list[str]:
    """Inception FID and KID (`ambient.eval.metrics`, as `ambient.eval --metric fid` scores them) of the kept samples
    of every point in `names` (samples_dir/NAME.npz, and NAME-stop.npz where it exists) against the images of `ref`,
    each into samples_dir/NAME[-stop]-fid.json, unless that file already scores the same samples (their sha256).
    The reference's features are computed once (metrics.reference_features caches them). Returns one error per
    point whose samples file is missing or damaged; with no usable Inception weights or reference, that one error
    (and those before it)."""
    try:
        ref_sha, weights = metrics.content_sha256(ref), metrics.inception_file(inception_path)
        model = metrics.load_inception(weights)
    except (OSError, ValueError) as e:
        say(f"error: cannot score FID: {e}")
        return [f"cannot score FID: {e}"]
    weights_sha, ref_feats, errors = file_sha256(weights), None, []
    for stem in (stem for name in names for stem in (name, f"{name}-stop")):
        npz, out = samples_dir / f"{stem}.npz", samples_dir / f"{stem}{FID_SUFFIX}"
        if stem.endswith("-stop") and not npz.exists():
            continue
        try:
            images = read_samples(npz)
            sha = file_sha256(npz)
            if out.exists() and read_point_file(out, FID_ENTRIES)["samples_sha256"] == sha:
                say(f"skip {stem}: {out} scores these samples")
                continue
            if ref_feats is None:
                start = time.perf_counter()
                try:
                    ref_feats = metrics.reference_features(ref, model, weights)
                except (OSError, ValueError) as e:
                    say(f"error: cannot score FID: the reference: {e}")
                    return [*errors, f"cannot score FID: the reference: {e}"]
                say(f"FID reference {ref}: {len(ref_feats)} images, {time.perf_counter() - start:.0f} s")
            start = time.perf_counter()
            feats = metrics.inception_features([images], feature_extractor=model)
            result = {"fid": metrics.frechet_distance(*metrics.feature_stats(feats), *metrics.feature_stats(ref_feats)),
                      "kid": metrics.kid(feats, ref_feats), "n": len(feats), "n_ref": len(ref_feats),
                      "ref": str(ref), "ref_sha256": ref_sha, "inception": weights.name,
                      "inception_sha256": weights_sha, "samples": npz.name, "samples_sha256": sha,
                      "seconds": round(time.perf_counter() - start, 1)}
        except StudyError as e:
            say(f"error: {e}")
            errors.append(str(e))
            continue
        write_json(result, out)
        say(f"fid {stem}: {result['fid']:.3f} ({result['seconds']:.0f} s)")
    return errors


def fid_columns(rows: Sequence[dict], samples_dir: Path) -> list[str]:
    """Set each row's "fid" and "fid_stop" from samples_dir/NAME[-stop]-fid.json (None where not scored); one error
    per damaged file, whose value stays None."""
    errors = []
    for r in rows:
        for key, stem in (("fid", r["name"]), ("fid_stop", f"{r['name']}-stop")):
            path = samples_dir / f"{stem}{FID_SUFFIX}"
            r[key] = None
            if os.path.lexists(path):
                try:
                    r[key] = read_point_file(path, FID_ENTRIES)["fid"]
                except StudyError as e:
                    errors.append(str(e))
    return errors


# ----------------------------------------------------------------------------------------------
# Results

def _snapshots(folder: Path, metric: str) -> dict[str, float]:
    """{kimg: metric} of every evaluated snapshot of a point (metrics-STEP.json and metrics.json)."""
    found = {}
    for f in sorted(folder.glob("metrics*.json")):
        m = read_point_file(f, metrics_entries(metric))
        found[f"{m.get('kimg') or 0:g}"] = m[metric]
    return dict(sorted(found.items(), key=lambda kv: float(kv[0])))


def _stopped(folder: Path, metric: str) -> dict[str, float | None]:
    """value_stop and sd_stop of a point: the metric and its bootstrap sd in its STOP_METRICS (None without)."""
    path = folder / STOP_METRICS
    stop = read_point_file(path, metrics_entries(metric)) if path.exists() else {}
    return {"value_stop": stop.get(metric), "sd_stop": stop.get(f"{metric}_sd")}


def collect(points: Sequence[Point], study_dir: Path, metric: str) -> tuple[list[dict], list[str]]:
    """One row per point with a metrics file, and one error per point whose files are damaged (read_point_file)."""
    rows, errors = [], []
    for p in points:
        folder = study_dir / "points" / p.name
        if not os.path.lexists(folder / "metrics.json"):
            continue
        try:
            m = read_point_file(folder / "metrics.json", metrics_entries(metric))
            record = folder / "point.json"
            rec = read_point_file(record, POINT_ENTRIES) if os.path.lexists(record) else {}
            snapshots, stopped = _snapshots(folder, metric), _stopped(folder, metric)
        except StudyError as e:
            errors.append(str(e))
            continue
        rows.append({"name": p.name, "n_clean": p.n_clean, "n_noisy": p.n_noisy, "sigma_n": p.sigma_n,
                     "seed": p.seed, "metric": metric, "value": m[metric], "sd": m.get(f"{metric}_sd"),
                     "floor": m.get(f"{metric}_floor"), "kid": m.get("kid"), "memorised": m.get("memorised"),
                     "nn_ratio": m.get("nn_ratio"), "n": m["n"], "kimg": m.get("kimg"),
                     "snapshots": json.dumps(snapshots),
                     "train_seconds": rec.get("train_seconds"), "restore_seconds": rec.get("restore_seconds"),
                     "eval_seconds": rec.get("eval_seconds"),
                     **stopped})
    return rows, errors


def copy_samples(rows: Sequence[dict], study_dir: Path, out: Path, s: Settings) -> None:
    """Every point's last sample grid (out/samples/NAME.png, of the run its metrics score) and evaluation images
    (out/samples/NAME.npz; stopped at sigma_n: out/samples/NAME-stop.npz)."""
    (out / "samples").mkdir(parents=True, exist_ok=True)
    for r in rows:
        folder = study_dir / "points" / r["name"]
        point = Point(r["n_clean"], r["n_noisy"], r["sigma_n"], r["seed"])
        grids = sorted(s.evaluated_run(point, folder).glob("samples-*.png"))
        if grids:
            shutil.copyfile(grids[-1], out / "samples" / f"{r['name']}.png")
        if (folder / "samples.npz").exists():
            shutil.copyfile(folder / "samples.npz", out / "samples" / f"{r['name']}.npz")
        if (folder / STOP_SAMPLES).exists():
            shutil.copyfile(folder / STOP_SAMPLES, out / "samples" / f"{r['name']}-stop.npz")


# ----------------------------------------------------------------------------------------------
# Command line

def _listed(kind: Callable[[str], Any]) -> Callable[[str], list]:
    """Parser of a comma-separated list, e.g. "500,5000"."""
    def parse(text: str) -> list:
        return [kind(part.strip()) for part in text.split(",") if part.strip()]
    return parse


def _pair(text: str) -> tuple[int, int]:
    c, sep, m = text.partition(":")
    if not sep:
        raise argparse.ArgumentTypeError(f"a point is n_clean:n_noisy, got {text!r}")
    return cli.nonneg_int(c), cli.nonneg_int(m)


def _setting_seeds(text: str) -> tuple[int, int, float, int]:
    parts = text.split(":")
    if len(parts) != 4:
        raise argparse.ArgumentTypeError(f"a setting's seeds are n_clean:n_noisy:sigma_n:count, got {text!r}")
    return (cli.nonneg_int(parts[0]), cli.nonneg_int(parts[1]), cli.nonneg_float(parts[2]),
            cli.positive_int(parts[3]))


def with_setting_seeds(points: Sequence[Point], counts: Sequence[tuple[int, int, float, int]]) -> list[Point]:
    """`points` plus, for each (n_clean, n_noisy, sigma_n, K), that setting's points for seeds 0..K-1 (a
    power plan's count; clean-only settings take sigma_n 0). A setting not among `points` is an error."""
    settings = {(p.n_clean, p.n_noisy, p.sigma_n) for p in points}
    out = set(points)
    for c, m, s, k in counts:
        key = (c, m, s if m else 0.0)
        if key not in settings:
            raise ValueError(f"--setting-seeds {c}:{m}:{s:g}:{k} names no setting of the study")
        out |= {Point(*key, seed) for seed in range(k)}
    return sorted(out)


def _seeds(text: str) -> list[int]:
    return list(cli.int_range(text))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ambient.study", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dir", help="study directory (points/ and the results); required here or in --config")
    p.add_argument("--config", help="JSON or TOML file whose keys are these options (e.g. n_clean = [500, 5000]); "
                                    "options given on the command line win")
    p.add_argument("--results", help="folder for results.csv/json, table.md and the figure (default: --dir)")
    g = p.add_argument_group("points")
    g.add_argument("--n-clean", type=_listed(cli.nonneg_int), default=[], help="e.g. 500,1000,5000")
    g.add_argument("--n-noisy", type=_listed(cli.nonneg_int), default=[], help="e.g. 0,4500")
    g.add_argument("--points", type=_listed(_pair), default=[],
                   help="explicit n_clean:n_noisy pairs, e.g. 500:4500,5000:0")
    g.add_argument("--table1", type=cli.positive_int, nargs="?", const=0, default=None, metavar="N",
                   help="the paper's Table 1 points for N images (default N: the data set size)")
    g.add_argument("--sigma-n", type=_listed(cli.positive_float), default=[0.2], help="noise levels, e.g. 0.2,0.4")
    g.add_argument("--seeds", type=_seeds, default=[0], help="training seeds, e.g. 0-2 (one model per seed and point)")
    g.add_argument("--setting-seeds", type=_listed(_setting_seeds), default=[], metavar="C:M:S:K,...",
                   help="train setting (n_clean C, n_noisy M, sigma_n S) with seeds 0..K-1 (e.g. a power plan's "
                        "count, see ambient.study.power); the other settings keep --seeds")
    g = p.add_argument_group("training (ambient.train's own options, the same for every point; --data-seed fixes "
                             "which images are clean or noisy, and their noise, for every point and seed)")
    add_flags(g, SHARED)
    g.add_argument("--train-args", default="",
                   help="more ambient.train options, e.g. '--precision bf16 --snap-kimg 10' (not those a point sets)")
    g = p.add_argument_group("evaluation and execution")
    g.add_argument("--eval-n", type=cli.positive_int, default=Settings.eval_n, help="images per evaluation")
    g.add_argument("--eval-steps", type=cli.positive_int, default=Settings.eval_steps)
    g.add_argument("--metric", choices=METRICS, default=Settings.metric)
    g.add_argument("--ref", help="reference images (fid: required; fd_mnist: the real images at the model's "
                                 "resolution, default the embedded MNIST-5k)")
    g.add_argument("--eval-snapshots", type=cli.positive_int, default=Settings.eval_snapshots,
                   help="evaluate this many of the newest checkpoints of each point (convergence check)")
    g.add_argument("--eval-stop-noisy", action="store_true",
                   help=f"also evaluate every noisy-only point (n_clean = 0) with the sampler stopped at its sigma_n "
                        f"(the denoised estimate there) into {STOP_METRICS} beside metrics.json; the report shows "
                        "both samplers")
    g.add_argument("--inception-path")
    g.add_argument("--restore-rounds", type=cli.nonneg_int, default=0, metavar="K",
                   help=f"after training, each noisy point's model restores its own noisy images and is fine-tuned on "
                        f"them, K rounds (python -m ambient.restore --rounds K, into points/NAME/{RESTORE_DIR}); the "
                        "point's metrics score the last round's model")
    g.add_argument("--restore-kimg", type=cli.positive_float, help="each restoration round's training length "
                                                                    "(default: the study's --kimg)")
    g.add_argument("--nproc", type=cli.positive_int, default=1, help="processes per training run (torchrun)")
    g.add_argument("--jobs", type=cli.positive_int, default=1, help="points run at the same time")
    g.add_argument("--threads", type=cli.positive_int, help="OMP_NUM_THREADS of every run (default: 1 with --jobs > 1, "
                                                          "else inherited, and the trainer takes every core)")
    g.add_argument("--score-fid", action="store_true",
                   help=f"train and evaluate nothing: score Inception FID and KID of every finished point's kept "
                        f"samples (RESULTS/samples/NAME.npz and NAME-stop.npz) against --ref, into NAME{FID_SUFFIX} "
                        "beside them (the points already scored are skipped), then write the results with FID beside "
                        "the study's metric")
    g.add_argument("--report-only", action="store_true",
                   help="train and evaluate nothing: write the results of the points finished so far (e.g. while the "
                        "study itself still runs)")
    return p


def config_argv(config: dict[str, Any]) -> list[str]:
    """A config file's keys as the options they stand for: n_clean = [500, 5000] -> --n-clean=500,5000,
    points = [[100, 900]] -> --points=100:900, report_only = true -> --report-only (false: left out)."""
    argv = []
    for key, value in config.items():
        option = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            argv += [option] if value else []
        elif isinstance(value, list):
            argv.append(f"{option}=" + ",".join(":".join(map(str, v)) if isinstance(v, list) else str(v)
                                                for v in value))
        else:
            argv.append(f"{option}={value}")
    return argv


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command line over config file over defaults: the config's options are parsed as if given first."""
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    first = parser.parse_args(argv)
    if first.config:
        path = Path(first.config)
        try:
            config = tomllib.loads(path.read_text()) if path.suffix == ".toml" else json.loads(path.read_text())
        except (OSError, ValueError) as e:
            parser.error(f"cannot read config {path}: {e}")
        known = set(vars(first)) - {"config"}
        unknown = sorted(set(config) - known)
        if unknown:
            parser.error(f"unknown key(s) in {path}: {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        argv = config_argv(config) + argv
    args = parser.parse_args(argv)
    if not args.dir:
        parser.error("the study directory is missing: give --dir or dir = ... in --config")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    a = parse_args(argv)
    try:
        if a.table1 == 0:
            try:
                a.table1 = len(load_dataset(a.data))
            except (OSError, ValueError) as e:
                raise ValueError(f"--table1 without N counts the images of --data {a.data}: {e}") from None
        pairs = [*a.points, *(table1_pairs(a.table1).values() if a.table1 is not None else ())]
        points = with_setting_seeds(make_points(a.n_clean, a.n_noisy, a.sigma_n, a.seeds, pairs), a.setting_seeds)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        extra = given_flags(shlex.split(a.train_args))
    except ValueError as e:
        print(f"error: --train-args {a.train_args!r}: {e}", file=sys.stderr)
        return 2
    if own := sorted(set(extra) & set(SHARED)):
        print(f"error: --train-args sets {', '.join(map(flag_name, own))}: give the study's own option instead",
              file=sys.stderr)
        return 2
    try:
        s = Settings(train={**{k: getattr(a, k) for k in SHARED}, **extra}, eval_n=a.eval_n, eval_steps=a.eval_steps,
                     metric=a.metric, ref=a.ref, inception_path=a.inception_path, eval_snapshots=a.eval_snapshots,
                     eval_stop_noisy=a.eval_stop_noisy, restore_rounds=a.restore_rounds, restore_kimg=a.restore_kimg,
                     nproc=a.nproc, threads=a.threads if a.threads is not None or a.jobs == 1 else 1)  # jobs: 1 thread
    except StudyError as e:
        print(f"error: --train-args: {e}", file=sys.stderr)
        return 2
    if a.restore_kimg is not None and not a.restore_rounds:
        print("error: --restore-kimg sets the length of restoration rounds: give --restore-rounds too", file=sys.stderr)
        return 2
    if a.score_fid and (a.metric == "fid" or not a.ref):
        print("error: --score-fid scores FID beside the study's metric against --ref: "
              + ("this study's metric is FID already" if a.metric == "fid" else "give --ref"), file=sys.stderr)
        return 2
    study_dir = Path(a.dir)
    config = {k: v for k, v in vars(a).items() if k not in ("config",)}
    results = Path(a.results or study_dir)
    fixed = a.report_only or a.score_fid
    say(f"study {study_dir}: " + (f"the results of {len(points)} point(s), nothing trained or evaluated"
                                  if fixed else f"{len(points)} point(s), {a.jobs} at a time"))
    start = time.perf_counter()
    errors = [] if fixed else run_points(points, study_dir, s, a.jobs)
    rows, damaged = collect(points, study_dir, a.metric)
    if rows:
        copy_samples(rows, study_dir, results, s)
        if a.score_fid:
            errors += score_fid([r["name"] for r in rows], results / "samples", a.ref, a.inception_path)
        damaged += fid_columns(rows, results / "samples")
    for e in damaged:
        print(f"error: {e}", file=sys.stderr)
    if rows:
        print(write_results(rows, results, a.metric, a.data, config))
        say(f"results in {results} ({len(rows)} of {len(points)} points, {time.perf_counter() - start:.0f} s)")
    if errors:
        print(f"error: {len(errors)} point(s) failed", file=sys.stderr)
    return 1 if errors or damaged else 0


if __name__ == "__main__":
    sys.exit(main())
