"""Data-scaling studies: train and evaluate one model per (n_clean, n_noisy, sigma_n, seed), then tabulate.

    python -m ambient.study --dir runs/study --n-clean 500,1000,5000 --n-noisy 0,4500 --sigma-n 0.2 --kimg 40
    python -m ambient.study --dir runs/t1 --table1 5000 --sigma-n 0.2 --seeds 0-2 --jobs 2
    python -m ambient.study --dir runs/study --config study.toml        # the same keys as the options

Every point trains through train.py (`python train.py`, or torchrun with --nproc > 1) in
DIR/points/NAME/run with --resume auto, then is evaluated by `python -m ambient.eval` into
DIR/points/NAME/metrics.json. A point whose metrics file exists is skipped; an interrupted point
continues from its last checkpoint. Results: results.csv, results.json, a figure of the metric
against n_clean per n_noisy, the paper's Table 1 layout (table.md), the worth fit per sigma_n and
each point's last sample grid (samples/NAME.png).
"""
import argparse
import csv
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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from . import cli, scaling
from .eval import METRICS, write_json

TRAIN_SCRIPT = Path(__file__).resolve().parent.parent / "train.py"
TABLE1 = ("100% clean", "100% noisy", "10% clean only", "90% noisy + 10% clean")
CSV_FIELDS = ("name", "n_clean", "n_noisy", "sigma_n", "seed", "metric", "value", "sd", "floor", "kid", "n", "kimg",
              "train_seconds", "eval_seconds")
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
        noise = f"_s{self.sigma_n:g}" if self.n_noisy else ""
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


def table1_pairs(n: int) -> dict[str, tuple[int, int]]:
    """The paper's four Table 1 settings for a data set of n images, as (n_clean, n_noisy)."""
    tenth = round(n / 10)
    if tenth < 1:
        raise ValueError(f"--table1 needs a data set of at least 5 images, got {n}")
    return dict(zip(TABLE1, ((n, 0), (0, n), (tenth, 0), (tenth, n - tenth))))


# ----------------------------------------------------------------------------------------------
# Running points

@dataclass
class Settings:
    """What every point shares: training arguments, evaluation, launcher."""
    data: str = "mnist"
    kimg: float = 40.0
    preset: str = "tiny"
    model_channels: int | None = None
    batch: int = 64
    train_args: tuple[str, ...] = ()
    eval_n: int = 1000
    eval_steps: int = 18
    metric: str = "fd_mnist"
    ref: str | None = None
    inception_path: str | None = None
    nproc: int = 1
    threads: int | None = None

    def train_args_for(self, p: Point, run_dir: Path) -> list[str]:
        """train.py's arguments for point `p` (without the launcher)."""
        args = ["--data", self.data, "--n-clean", str(p.n_clean), "--n-noisy", str(p.n_noisy)]
        if p.n_noisy:
            args += ["--sigma-n", f"{p.sigma_n:g}"]
        args += ["--seed", str(p.seed), "--data-seed", str(p.seed), "--preset", self.preset]
        if self.model_channels is not None:
            args += ["--model-channels", str(self.model_channels)]
        args += ["--batch", str(self.batch), "--kimg", f"{self.kimg:g}", *self.train_args, "--no-progress",
                 "--run-dir", str(run_dir), "--resume", "auto"]
        return args

    def launcher(self) -> list[str]:
        if self.nproc > 1:
            return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={self.nproc}",
                    str(TRAIN_SCRIPT)]
        return [sys.executable, str(TRAIN_SCRIPT)]

    def eval_args(self, run_dir: Path, out: Path) -> list[str]:
        args = [sys.executable, "-m", "ambient.eval", "--ckpt", str(run_dir), "--n", str(self.eval_n),
                "--steps", str(self.eval_steps), "--metric", self.metric, "--out", str(out), "--no-progress"]
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
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env).returncode
    if rc != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise StudyError(f"{what} failed (exit {rc}); see {log}:\n{tail}")
    return time.perf_counter() - start


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
    args = s.train_args_for(p, run_dir)
    record_file = folder / "point.json"
    record = json.loads(record_file.read_text()) if record_file.exists() else {"train_seconds": 0.0}
    if record.get("train_args", args) != args:
        raise StudyError(f"point {p.name} in {study_dir} was started with train.py {shlex.join(record['train_args'])}, "
                         f"not {shlex.join(args)}; use a new --dir for new settings")
    record["train_args"] = args
    write_json(record, record_file)
    env = dict(os.environ)
    if s.threads is not None:
        env["OMP_NUM_THREADS"] = str(s.threads)
    say(f"train {p.name} ({'continuing' if run_dir.exists() else 'new'})")
    record["train_seconds"] += _run_logged(s.launcher() + args, folder / "train.log", env, f"training {p.name}")
    write_json(record, record_file)
    say(f"eval {p.name}")
    record["eval_seconds"] = _run_logged(s.eval_args(run_dir, metrics_file), folder / "eval.log", env,
                                         f"evaluating {p.name}")
    write_json(record, record_file)
    say(f"done {p.name}: {json.loads(metrics_file.read_text())[s.metric]:.3f}")
    return folder


def run_points(points: Sequence[Point], study_dir: Path, s: Settings, jobs: int = 1) -> list[str]:
    """Run every point, `jobs` at a time, started ones first; the error messages of the points that failed."""
    errors: list[str] = []
    points = sorted(points, key=lambda p: not (study_dir / "points" / p.name / "run").exists())

    def one(p: Point) -> None:
        try:
            run_point(p, study_dir, s)
        except StudyError as e:
            say(f"error: {e}")
            errors.append(str(e))

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        list(pool.map(one, points))
    return errors


# ----------------------------------------------------------------------------------------------
# Results

def collect(points: Sequence[Point], study_dir: Path, metric: str) -> list[dict]:
    """One row per point with a metrics file."""
    rows = []
    for p in points:
        folder = study_dir / "points" / p.name
        if not (folder / "metrics.json").exists():
            continue
        m = json.loads((folder / "metrics.json").read_text())
        rec = json.loads((folder / "point.json").read_text()) if (folder / "point.json").exists() else {}
        rows.append({"name": p.name, "n_clean": p.n_clean, "n_noisy": p.n_noisy, "sigma_n": p.sigma_n,
                     "seed": p.seed, "metric": metric, "value": m[metric], "sd": m.get(f"{metric}_sd"),
                     "floor": m.get(f"{metric}_floor"),
                     "kid": m.get("kid"), "n": m["n"], "kimg": m.get("kimg"),
                     "train_seconds": rec.get("train_seconds"), "eval_seconds": rec.get("eval_seconds")})
    return rows


def _group_cells(group: Sequence[dict]) -> str:
    """'value | bootstrap sd | seeds' cells of a group of rows: mean ± sd over seeds, mean bootstrap sd."""
    values = [r["value"] for r in group]
    value = f"{values[0]:.2f}" if len(values) == 1 else f"{np.mean(values):.2f} ± {np.std(values, ddof=1):.2f}"
    sds = [r["sd"] for r in group if r["sd"] is not None]
    return f"{value} | {f'{np.mean(sds):.2f}' if sds else ''} | {len(group)}"


def _floor_lines(rows: Sequence[dict]) -> list[str]:
    return [f"| real vs real (floor) | | | {floor:.2f} | | n = {n} |"
            for n, floor in sorted({(r["n"], r["floor"]) for r in rows if r["floor"] is not None})]


def _header(first: str, metric: str) -> list[str]:
    return [f"| {first} | n_clean | n_noisy | {metric} | bootstrap sd | seeds |", "|---|---|---|---|---|---|"]


def summary_table(rows: Sequence[dict], metric: str, data: str) -> str:
    """Markdown: one line per (n_clean, n_noisy, sigma_n) with the metric over seeds, and the floor."""
    keys = sorted({(r["n_clean"], r["n_noisy"], r["sigma_n"]) for r in rows})
    lines = _header(f"{data}: sigma_n", metric)
    for c, m, s in keys:
        group = [r for r in rows if (r["n_clean"], r["n_noisy"], r["sigma_n"]) == (c, m, s)]
        lines.append(f"| {f'{s:g}' if m else '-'} | {c} | {m} | {_group_cells(group)} |")
    return "\n".join(lines + _floor_lines(rows))


def table1(rows: Sequence[dict], sigma_n: float, metric: str, data: str) -> tuple[str, bool | None] | None:
    """Markdown of the paper's Table 1 layout at `sigma_n` (None if none of its points were run: mean ± sd over
    seeds, and the mean bootstrap sd of a single evaluation), and whether
    metric(100% clean) <= metric(90% noisy + 10% clean) < min(metric(10% clean only), metric(100% noisy))
    holds for the means over seeds (None when a setting is missing)."""
    size = max(r["n_clean"] + r["n_noisy"] for r in rows)
    means: dict[str, float] = {}
    lines = _header(f"{data}, sigma_n = {sigma_n:g}", metric)
    for label, (c, m) in table1_pairs(size).items():
        group = [r for r in rows if r["n_clean"] == c and r["n_noisy"] == m
                 and (m == 0 or math.isclose(r["sigma_n"], sigma_n))]
        if group:
            means[label] = float(np.mean([r["value"] for r in group]))
            lines.append(f"| {label} | {c} | {m} | {_group_cells(group)} |")
    if not means:
        return None
    holds = None
    if len(means) == len(TABLE1):
        holds = bool(means[TABLE1[0]] <= means[TABLE1[3]] < min(means[TABLE1[1]], means[TABLE1[2]]))
    return "\n".join(lines + _floor_lines(rows)), holds


def ordering_sentence(holds: bool | None, metric: str) -> str:
    """States the paper's ordering and whether it holds."""
    rule = (f"{metric}(100% clean) <= {metric}(90% noisy + 10% clean) < "
            f"min({metric}(10% clean only), {metric}(100% noisy))")
    verdict = {True: "holds", False: "does NOT hold", None: "cannot be checked (a setting is missing)"}[holds]
    return f"The paper's ordering {rule} {verdict}."


def worth_fits(rows: Sequence[dict]) -> tuple[dict[float, dict], list[str]]:
    """scaling.fit_worth per sigma_n where there are enough points, and one sentence per sigma_n."""
    fits, sentences = {}, []
    for s in sorted({r["sigma_n"] for r in rows if r["n_noisy"]}):
        try:
            fits[s] = scaling.fit_worth(rows, "value", sigma_n=s)
            sentences.append(scaling.worth_sentence(fits[s], s))
        except ValueError as e:
            sentences.append(f"At sigma_n = {s:g} the worth of a noisy image cannot be fitted: {e}.")
    return fits, sentences


def _spread(group: Sequence[dict]) -> float:
    """Error bar of one point: sd over seeds, or with one seed the bootstrap sd of its evaluation."""
    if len(group) > 1:
        return float(np.std([r["value"] for r in group], ddof=1))
    return group[0]["sd"] or 0.0


def plot(rows: Sequence[dict], path: Path, metric: str) -> Path:
    """PNG: the metric against n_clean, one line per n_noisy (mean over seeds; bars: sd over seeds, or the
    bootstrap sd with one seed), one panel per sigma_n; the real-vs-real floor dashed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sigmas = sorted({r["sigma_n"] for r in rows if r["n_noisy"]}) or [0.0]
    fig, axes = plt.subplots(1, len(sigmas), figsize=(5 * len(sigmas), 4), squeeze=False, sharey=True)
    for ax, s in zip(axes[0], sigmas):
        sel = [r for r in rows if r["n_noisy"] == 0 or math.isclose(r["sigma_n"], s)]
        for i, m in enumerate(sorted({r["n_noisy"] for r in sel})):
            ncs = sorted({r["n_clean"] for r in sel if r["n_noisy"] == m})
            groups = [[r for r in sel if r["n_noisy"] == m and r["n_clean"] == c] for c in ncs]
            ax.errorbar(ncs, [np.mean([r["value"] for r in g]) for g in groups], yerr=[_spread(g) for g in groups],
                        fmt="o-", color=f"C{i}", capsize=3, label=f"n_noisy = {m}")
        for n, floor in sorted({(r["n"], r["floor"]) for r in sel if r["floor"] is not None}):
            ax.axhline(floor, color="gray", ls="--", label=f"floor (real vs real, n = {n})")
        positive = [r["n_clean"] for r in sel if r["n_clean"] > 0]
        ax.set_xscale("symlog", linthresh=min(positive, default=1))
        ax.set_yscale("log")
        ax.set(xlabel="n_clean", title=f"sigma_n = {s:g}" if s else "clean only")
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel(f"{metric} (bars: sd over seeds, or bootstrap sd)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def copy_sample_grids(rows: Sequence[dict], study_dir: Path, out: Path) -> None:
    """The last sample grid of every point's run, as out/samples/NAME.png."""
    (out / "samples").mkdir(parents=True, exist_ok=True)
    for r in rows:
        grids = sorted((study_dir / "points" / r["name"] / "run").glob("samples-*.png"))
        if grids:
            shutil.copyfile(grids[-1], out / "samples" / f"{r['name']}.png")


def write_results(rows: Sequence[dict], out: Path, metric: str, data: str, config: dict) -> str:
    """results.csv, results.json, the figure and table.md under `out`; returns the text summary."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    parts, orderings = ["All points:", "", summary_table(rows, metric, data), ""], {}
    for s in sorted({r["sigma_n"] for r in rows if r["n_noisy"]}):
        result = table1(rows, s, metric, data)
        if result is not None:
            parts += ["Table 1 layout:", "", result[0], "", ordering_sentence(result[1], metric), ""]
            orderings[f"{s:g}"] = result[1]
    fits, sentences = worth_fits(rows)
    parts += sentences
    text = "\n".join(parts)
    (out / "table.md").write_text(text + "\n")
    write_json({"config": config, "rows": list(rows), "table1_ordering_holds": orderings,
                "worth": {f"{s:g}": f for s, f in fits.items()}, "worth_sentences": sentences},
               out / "results.json")
    plot(rows, out / f"{metric}_vs_n_clean.png", metric)
    return text


# ----------------------------------------------------------------------------------------------
# Command line

def _listed(kind: Any) -> Any:
    """Parser of a comma-separated list (from the command line) or a list (from a config file)."""
    def parse(value: Any) -> list:
        if isinstance(value, (list, tuple)):       # from a config file; a pair may be [500, 4500]
            return [kind(":".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)) for v in value]
        return [kind(part.strip()) for part in str(value).split(",") if part.strip()]
    return parse


def _pair(text: str) -> tuple[int, int]:
    c, sep, m = text.partition(":")
    if not sep:
        raise argparse.ArgumentTypeError(f"a point is n_clean:n_noisy, got {text!r}")
    return cli.nonneg_int(c), cli.nonneg_int(m)


def _seeds(value: Any) -> list[int]:
    return [int(v) for v in value] if isinstance(value, list) else cli.int_range(str(value))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ambient.study", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dir", required=True, help="study directory (points/ and the results)")
    p.add_argument("--config", help="JSON or TOML file whose keys are these options (e.g. n_clean = [500, 5000]); "
                                    "options given on the command line win")
    p.add_argument("--results", help="folder for results.csv/json, table.md and the figure (default: --dir)")
    g = p.add_argument_group("points")
    g.add_argument("--data", default="mnist", help="mnist, digits, or an EDM data set folder / zip")
    g.add_argument("--n-clean", type=_listed(cli.nonneg_int), default=[], help="e.g. 500,1000,5000")
    g.add_argument("--n-noisy", type=_listed(cli.nonneg_int), default=[], help="e.g. 0,4500")
    g.add_argument("--points", type=_listed(_pair), default=[],
                   help="explicit n_clean:n_noisy pairs, e.g. 500:4500,5000:0")
    g.add_argument("--table1", type=cli.positive_int, nargs="?", const=0, default=None, metavar="N",
                   help="the paper's Table 1 points for N images (default N: the data set size)")
    g.add_argument("--sigma-n", type=_listed(cli.positive_float), default=[0.2], help="noise levels, e.g. 0.2,0.4")
    g.add_argument("--seeds", type=_seeds, default=[0], help="e.g. 0-2 (training and data seed of each point)")
    g = p.add_argument_group("training (passed to train.py)")
    g.add_argument("--kimg", type=cli.positive_float, default=Settings.kimg)
    g.add_argument("--preset", choices=("tiny", "ddpmpp", "ncsnpp"), default=Settings.preset)
    g.add_argument("--model-channels", type=cli.positive_int)
    g.add_argument("--batch", type=cli.positive_int, default=Settings.batch)
    g.add_argument("--train-args", default="", help="more train.py options, e.g. '--precision bf16 --snap-kimg 10'")
    g = p.add_argument_group("evaluation and execution")
    g.add_argument("--eval-n", type=cli.positive_int, default=Settings.eval_n, help="images per evaluation")
    g.add_argument("--eval-steps", type=cli.positive_int, default=Settings.eval_steps)
    g.add_argument("--metric", choices=METRICS, default=Settings.metric)
    g.add_argument("--ref", help="--metric fid: reference images")
    g.add_argument("--inception-path")
    g.add_argument("--nproc", type=cli.positive_int, default=1, help="processes per training run (torchrun)")
    g.add_argument("--jobs", type=cli.positive_int, default=1, help="points run at the same time")
    g.add_argument("--threads", type=cli.positive_int, help="OMP_NUM_THREADS of every run (default: inherited)")
    return p


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command line over config file over defaults."""
    parser = build_parser()
    first = parser.parse_args(argv)
    if first.config:
        path = Path(first.config)
        try:
            config = tomllib.loads(path.read_text()) if path.suffix == ".toml" else json.loads(path.read_text())
        except (OSError, ValueError) as e:
            parser.error(f"cannot read config {path}: {e}")
        known = {a.dest for a in parser._actions} - {"help", "config", "dir"}
        unknown = sorted(set(config) - known)
        if unknown:
            parser.error(f"unknown key(s) in {path}: {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        try:
            for action in parser._actions:
                if action.dest in config and action.type is not None and not isinstance(config[action.dest], bool):
                    config[action.dest] = action.type(config[action.dest])
        except (argparse.ArgumentTypeError, ValueError) as e:
            parser.error(f"bad value in {path}: {e}")
        parser.set_defaults(**config)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    a = parse_args(argv)
    pairs = list(a.points)
    if a.table1 is not None:
        if a.table1 == 0:
            from .data import load_dataset
            a.table1 = len(load_dataset(a.data))
        pairs += list(table1_pairs(a.table1).values())
    try:
        points = make_points(a.n_clean, a.n_noisy, a.sigma_n, a.seeds, pairs)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    s = Settings(data=a.data, kimg=a.kimg, preset=a.preset, model_channels=a.model_channels, batch=a.batch,
                 train_args=tuple(shlex.split(a.train_args)), eval_n=a.eval_n, eval_steps=a.eval_steps,
                 metric=a.metric, ref=a.ref, inception_path=a.inception_path, nproc=a.nproc, threads=a.threads)
    study_dir = Path(a.dir)
    config = {k: v for k, v in vars(a).items() if k not in ("config",)}
    say(f"study {study_dir}: {len(points)} point(s), {a.jobs} at a time")
    start = time.perf_counter()
    errors = run_points(points, study_dir, s, a.jobs)
    rows = collect(points, study_dir, a.metric)
    if rows:
        print(write_results(rows, Path(a.results or study_dir), a.metric, a.data, config))
        copy_sample_grids(rows, study_dir, Path(a.results or study_dir))
        say(f"results in {Path(a.results or study_dir)} ({len(rows)} of {len(points)} points, "
            f"{time.perf_counter() - start:.0f} s)")
    if errors:
        print(f"error: {len(errors)} point(s) failed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
