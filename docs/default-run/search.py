"""The search for the default run (issue 24): candidates trained with train.py and scored with ambient.eval, and
their training steps' CPU cost beside the previous default's, measured side by side.

    python docs/default-run/search.py train --out /tmp/search      # train every candidate, 2 at a time, 1 thread each
    python docs/default-run/search.py eval --out /tmp/search       # FD-MNIST + confident share at EVAL_AT snapshots
    python docs/default-run/search.py cost --rounds 7              # step CPU-s per image, interleaved, 1 thread
    python docs/default-run/search.py table --out /tmp/search      # quality against cost: Markdown, quality-vs-cost.png

The candidates and the rule that picks the default were fixed before any was trained (README.md here): the
lowest FD-MNIST at 1000 samples among the snapshots whose training-step cost is at most half the previous
default's, which must also beat the previous default's confident share; ties within the FD's bootstrap sd go
to the cheaper one.
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from ambient.train import hostcpu
from ambient.train.config import config_flags

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
# The previous default (1e30798): these flags at its code's step (contiguous layout, foreach Adam).
PREVIOUS = {"batch": 64, "kimg": 80.0, "lr": 2e-3, "ema_halflife_kimg": 10.0}
# name -> TrainConfig fields that differ from TrainConfig(); every candidate trains the paper's setting (the
# embedded MNIST-5k, 10% clean + 90% noisy at sigma_n 0.2, unconditional) for 40 kimg.
CANDIDATES = {
    "b64-lr2e-3": {"batch": 64, "lr": 2e-3},
    "b32-lr2e-3": {"batch": 32, "lr": 2e-3},
    "b32-lr1e-3": {"batch": 32, "lr": 1e-3},
    "b16-lr1e-3": {"batch": 16, "lr": 1e-3},
    "b32-lr2e-3-ema5": {"batch": 32, "lr": 2e-3, "ema_halflife_kimg": 5.0},
    "b32-lr2e-3-pmean-0.8": {"batch": 32, "lr": 2e-3, "P_mean": -0.8},
    # round 2 (README.md): learn more per image, or pay less per image
    "b64-lr2e-3-windows": {"batch": 64, "lr": 2e-3, "sigma_min_per_image": True},
    "b32-lr2e-3-windows-compile": {"batch": 32, "lr": 2e-3, "sigma_min_per_image": True, "compile": True},
    "b32-lr2e-3-compile": {"batch": 32, "lr": 2e-3, "compile": True},
    # round 3 (README.md): the levers measured to help, together, at 36 kimg (under half the cost), eager;
    # scored at their end only
    **{name: {"batch": 32, "P_mean": -0.8, "sigma_min_per_image": True, "kimg": 36.0, **fields} for name, fields in {
        "combo-lr1e-3": {"lr": 1e-3},
        "combo-lr1e-3-cos": {"lr": 1e-3, "lr_decay": "cosine"},
        "combo-lr2e-3-cos": {"lr": 2e-3, "lr_decay": "cosine"},
        "combo-lr2e-3-cos-ramp2": {"lr": 2e-3, "lr_decay": "cosine", "lr_rampup_kimg": 2.0},
    }.items()},
    # round 4 (README.md): round 3's passing recipe at MNIST's native 28x28, scored at their end only
    **{name: {"data": "mnist28", "batch": 32, "lr": 1e-3, "lr_decay": "cosine", "P_mean": -0.8,
              "sigma_min_per_image": True, **fields} for name, fields in {
        "n28-36kimg": {"kimg": 36.0},
        "n28-44kimg": {"kimg": 44.0},
        "n28-attn7-40kimg": {"kimg": 40.0, "attn_resolutions": (7,)},
    }.items()},
}
KIMG = 40.0                 # rounds 1 and 2: each trains 40 kimg, scored at EVAL_AT
EVAL_AT = (20.0, 40.0)      # kimg of the snapshots scored


def run_kimg(name: str) -> float:
    """The images a candidate trains, in thousands."""
    return CANDIDATES[name].get("kimg", KIMG)


def eval_points(name: str) -> tuple[float, ...]:
    """kimg of a candidate's snapshots that are scored: a round-3 one's end only (a decaying rate makes a mid-run
    snapshot no stand-in for a shorter run)."""
    return (CANDIDATES[name]["kimg"],) if "kimg" in CANDIDATES[name] else EVAL_AT


def train_all(out: Path, parallel: int, names: list[str]) -> None:
    """Train the candidates `names` not trained yet, `parallel` at a time with one thread each; their CPU seconds
    (user + system of the whole process, from wait4) go to OUT/NAME/cpu.json."""
    todo = [n for n in names if not (out / n / "cpu.json").exists()]
    running: dict[int, tuple[str, subprocess.Popen]] = {}
    while todo or running:
        while todo and len(running) < parallel:
            name = todo.pop(0)
            argv = [sys.executable, str(ROOT / "train.py"), *config_flags({"kimg": KIMG, **CANDIDATES[name]}),
                    "--run-dir", str(out / name / "run"), "--threads", "1", "--no-progress", "--snap-kimg", "10",
                    "--keep-ckpts", "10", "--resume", "auto"]
            log = open(out / f"{name}.log", "w")
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env={**os.environ,
                                                                                   "OMP_NUM_THREADS": "1"})
            running[proc.pid] = (name, proc)
        pid, status, usage = os.wait4(-1, 0)
        name, proc = running.pop(pid)
        if status != 0:
            raise SystemExit(f"{name} failed (status {status}): see {out / name}.log")
        (out / name / "cpu.json").write_text(json.dumps({"cpu_s": usage.ru_utime + usage.ru_stime,
                                                          "host_kind": hostcpu.this_host_kind()}) + "\n")
        print(f"trained {name}: {usage.ru_utime + usage.ru_stime:.0f} CPU-s", flush=True)


def eval_all(out: Path, names: list[str], at: tuple[float, ...] | None = None) -> None:
    """ambient.eval (1000 samples, 18 steps, EMA) of each candidate's snapshots at `at` kimg (default: eval_points)."""
    for name in names:
        run = out / name / "run"
        batch = json.loads((run / "config.json").read_text())["batch"]
        steps = [int(c.name.split("-")[1]) for c in run.glob("checkpoint-*")]
        for kimg in at or eval_points(name):   # snapshots fall every floor(snap_kimg * 1000 / batch) steps: the nearest
            step = min(steps, key=lambda s: abs(s * batch - kimg * 1000))
            target = out / name / f"eval-{kimg:g}kimg.json"
            if target.exists():
                continue
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            subprocess.run([sys.executable, "-m", "ambient.eval", "--ckpt", str(run / f"checkpoint-{step:09d}"),
                            "--n", "1000", "--out", str(target), "--no-progress"], check=True,
                           env={**os.environ, "OMP_NUM_THREADS": "2"})
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            print(f"{name} at {kimg:g} kimg: {json.loads(target.read_text())['fd_mnist']:.2f} "
                  f"({after.ru_utime - before.ru_utime:.0f} CPU-s)", flush=True)


def cost(rounds: int) -> dict[str, float]:
    """Training-step CPU seconds per image (one thread, thread CPU time, rounds interleaved) of the previous
    default's step and of each candidate's batch at today's step."""
    from bench.bench_train import TrainStep
    torch.set_num_threads(1)
    precision = hostcpu.auto_precision(torch.device("cpu"))[0]
    steps = {"previous": TrainStep("tiny", PREVIOUS["batch"], precision, "torch", False, torch.device("cpu"),
                                   memory_format="contiguous")}
    prev = steps["previous"].state
    prev.optimizer = torch.optim.Adam(prev.net.parameters(), lr=2e-3, betas=(0.9, 0.999), eps=1e-8, foreach=True)
    for fields in CANDIDATES.values():
        if (key := step_key(fields)) not in steps:
            extra = {"resolution": 28} if fields.get("data") == "mnist28" else {}
            if "attn_resolutions" in fields:
                extra["attn_resolutions"] = fields["attn_resolutions"]
            steps[key] = TrainStep("tiny", fields["batch"], precision, "torch", False, torch.device("cpu"), **extra)
    return _step_cost(steps, precision, rounds)


def step_key(fields: dict) -> str:
    """The name of a candidate's training step in cost.json: its batch, and its resolution and attention where they
    differ from the 32x32 preset's (b32, b32-28x28, b32-28x28-attn7)."""
    key = f"b{fields['batch']}" + ("-28x28" if fields.get("data") == "mnist28" else "")
    return key + "".join(f"-attn{r}" for r in fields.get("attn_resolutions", ()))


def _step_cost(steps: dict, precision: str, rounds: int) -> dict[str, float]:
    """CPU seconds per image of each bench.bench_train.TrainStep, measured side by side (interleaved rounds)."""
    from bench.harness import Workload, measure
    workloads = [Workload(name, step, images=step.batch) for name, step in steps.items()]
    timings = measure([], workloads, torch.device("cpu"), rounds=rounds, log=lambda s: None)
    per_img = {w.id: statistics.median(timings[w.id].cpu) / w.images for w in workloads}
    print(f"host {hostcpu.this_host_kind()}, {precision}, 1 thread, thread CPU time, {rounds} interleaved rounds")
    for name, s in per_img.items():
        print(f"{name:<12} {1e3 * s:7.3f} ms per image ({1 / s:6.1f} img/CPU-s, {s / next(iter(per_img.values())):.3f}"
              f" x the first)")
    return per_img


def table(out: Path) -> str:
    """The quality-per-cost table (Markdown) of every scored snapshot, the previous default's first, and the figure
    quality-vs-cost.png here: FD-MNIST and the confident share against training-step CPU-minutes (cost.json's
    per-image step cost times the images trained; for a compiled candidate, which that benchmark does not time,
    its whole run's CPU-s, compile and grids included, pro rata)."""
    from ambient.common.plotting import pyplot
    per_img = json.loads((out / "cost.json").read_text())["per_img_s"]
    previous = json.loads((out / "old-default-eval.json").read_text())
    budget = per_img["previous"] * PREVIOUS["kimg"] * 1000
    rows = [("previous default (80 kimg, b64)", PREVIOUS["kimg"], budget, previous)]
    for name, fields in CANDIDATES.items():
        for kimg in eval_points(name):
            path = out / name / f"eval-{kimg:g}kimg.json"
            if not path.exists():
                continue
            if fields.get("compile"):    # the eager benchmark does not time it: the run's own CPU-s, compile included
                cpu_s = json.loads((out / name / "cpu.json").read_text())["cpu_s"] * kimg / run_kimg(name)
            else:
                cpu_s = per_img[step_key(fields)] * kimg * 1000
            rows.append((name, kimg, cpu_s, json.loads(path.read_text())))
    lines = ["| run | kimg | step CPU-min | cost / previous | FD-MNIST (sd) | confident |", "|---|---|---|---|---|---|"]
    for name, kimg, cpu_s, m in rows:
        lines.append(f"| {name} | {kimg:g} | {cpu_s / 60:.1f} | {cpu_s / budget:.2f} | {m['fd_mnist']:.2f} "
                     f"({m['fd_mnist_sd']:.2f}) | {m['confident']:.1%} |")
    plt = pyplot()
    fig, (ax_fd, ax_conf) = plt.subplots(1, 2, figsize=(10, 4))
    names = ["previous default (80 kimg, b64)", *CANDIDATES]
    colors = plt.get_cmap("tab20")(np.arange(len(names)) % 20)
    for k, name in enumerate(names):           # a colour per run, a marker per group of rounds
        pts = [(cpu_s / 60, m) for n, _, cpu_s, m in rows if n == name]
        if pts:
            x, style = [p[0] for p in pts], dict(marker="osD^v"[k // 4 % 5], color=colors[k], label=name)
            ax_fd.errorbar(x, [p[1]["fd_mnist"] for p in pts], yerr=[p[1]["fd_mnist_sd"] for p in pts], capsize=3,
                           **style)
            ax_conf.plot(x, [100 * p[1]["confident"] for p in pts], **style)
    for ax, label in ((ax_fd, "FD-MNIST (1000 samples)"), (ax_conf, "recognised with p > 0.9 (%)")):
        ax.axvline(budget / 120, color="grey", linestyle="--", linewidth=1)
        ax.set_xlabel(f"training-step CPU-minutes ({hostcpu.this_host_kind()}, one thread)")
        ax.set_ylabel(label)
    ax_fd.set_title("lower is better; dashed: half the previous default's cost", fontsize=9)
    ax_conf.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(HERE / "quality-vs-cost.png", dpi=110)
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=("train", "eval", "cost", "table"))
    p.add_argument("--out", type=Path, default=Path("/tmp/search"))
    p.add_argument("--parallel", type=int, default=2)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--at", help="comma-separated kimg of the snapshots to score (default: EVAL_AT)")
    p.add_argument("--names", help="comma-separated candidates to train or score (default: all)")
    a = p.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    names = a.names.split(",") if a.names else list(CANDIDATES)
    if unknown := sorted(set(names) - CANDIDATES.keys()):
        p.error(f"no such candidate: {', '.join(unknown)}")
    if a.what == "train":
        train_all(a.out, a.parallel, names)
    elif a.what == "eval":
        eval_all(a.out, names, tuple(float(k) for k in a.at.split(",")) if a.at else None)
    elif a.what == "table":
        print(table(a.out))
    else:
        per_img = cost(a.rounds)
        (a.out / "cost.json").write_text(json.dumps({"host_kind": hostcpu.this_host_kind(), "per_img_s": per_img,
                                                     "previous": PREVIOUS, "kimg": KIMG}, indent=1) + "\n")


if __name__ == "__main__":
    main()
