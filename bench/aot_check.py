"""Ahead-of-time compiles of every Triton kernel of kernels/ for sm_90 (H100/H200) and sm_80 (A100), on a CPU.

    python -m bench.aot_check                        # the CI check: the table, exit 1 when a GPU would refuse
    python -m bench.aot_check --markdown aot.md      #   or punish a kernel; also as a markdown table
    python -m bench.aot_check --only attention --arch 90
    python -m bench.aot_check --denylist             # after a kernel change: this Triton's table of
                                                     #   kernels/attention_triton._DENIED anew

No GPU is needed: Triton's own compiler and its bundled ptxas build each kernel for the target.

What is compiled is captured, not restated. The trainer's own code paths run on small CPU tensors while Triton's
launch machinery specialises every launch for the target (a stand-in driver names the GPU; Triton's
`jit_cache_hook` keeps each specialisation instead of compiling and launching it). So the dtypes, the 16-byte
divisibility of pointers and integers and the arguments specialised to constants (the UNet's unit stride along
N, its single head) are those a GPU run compiles. An autotuned kernel contributes every candidate its pruning keeps
at that launch (Triton's `Autotuner.warmup`). The workloads (`workloads()`):

  attention  every self-attention layer of the tiny, DDPM++ and NCSN++ networks (N = 64, 256; D = 64, 256) and of
             narrower and wider ones (--model-channels 8 and 64: D = 32, 128), through UNetBlock._attend, forward
             and backward, in fp32 (TF32 on, and off as --no-tf32), fp16 and bf16
  noise,     AmbientLoss as the trainer calls it (both weightings) at the presets' image shapes, and the other
  loss       variants of the public ops (given eps, fused network input, no gradient), in fp32, fp16 and bf16

Checks, per compile and target (what a GPU would refuse or punish):

  compile     triton.compile and ptxas succeed
  shared      shared memory per block <= the target's opt-in maximum (sm_90: 227 KiB, sm_80: 163 KiB)
  spills      no spill stores or loads (ptxas -v)
  registers   registers x threads <= 64 Ki, the register file of one SM

and over a full run: every @triton.jit `*_kernel` of kernels/ is compiled, and every autotune candidate is kept by
the pruning for some workload (a candidate never kept is dead weight in the list).

Each compile's result is cached in ~/.cache/ambient/aot (or $AMBIENT_CACHE_DIR/aot), keyed by the kernel's source
(Triton's cache_key, which covers the jit functions it calls), its specialisation and options, the target, Triton's
version and ptxas's: a warm run only captures (seconds). Compiles run in `--jobs` processes (default: all cores).
Run it in a process without TRITON_INTERPRET (the interpreter path has no autotuning and one fixed tile).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import importlib
import io
import json
import multiprocessing
import os
import pkgutil
import re
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch
import triton
from triton import knobs
from triton.backends.compiler import GPUTarget
from triton.runtime import driver
from triton.runtime.autotuner import Autotuner
from triton.runtime.jit import JITFunction

import kernels
from ambient.common.atomic import write_json
from ambient.data.streams import step_seed
from ambient.model.loss import AmbientLoss
from bench.presets import PRESET_DATA, attention_layers
from bench.report import format_table


@dataclasses.dataclass(frozen=True)
class Arch:
    """A compile target and what one of its blocks may use."""

    capability: int
    gpus: str
    max_shared: int          # bytes of shared memory per block (the opt-in maximum)


ARCHS = {90: Arch(90, "H100/H200", 227 * 1024), 80: Arch(80, "A100", 163 * 1024)}
REGISTER_FILE = 64 * 1024    # 32-bit registers per SM (sm_80, sm_90): registers x threads of one block must fit
CACHE_VERSION = 1            # bump when what is stored per compile changes


@dataclasses.dataclass
class Launch:
    """One specialisation of one kernel, as a launch for `arch` would compile it."""

    workload: str
    kernel: JITFunction
    arch: int
    flags: str               # the kernel's constexpr flags, e.g. "PRECISION=tf32" or "AMBIENT GRAD"
    config: str              # tile and launch options, e.g. "BLOCK_M=64 BLOCK_N=32 BLOCK_D=256 w8 s2"
    data: str                # Triton's specialisation data (JSON), what JITFunction.preload compiles

    @property
    def name(self) -> str:
        return self.kernel.fn.__name__

    def cache_key(self) -> str:
        """Kernel source (with the jit functions it calls), specialisation, options, target, Triton, ptxas."""
        from triton.compiler import make_backend
        backend = make_backend(GPUTarget("cuda", self.arch, 32))
        parts = [CACHE_VERSION, self.kernel.cache_key, self.data, triton.__version__, backend.hash()]
        return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


class _TargetDriver:
    """Just enough of a Triton driver to specialise and compile for `arch` without a GPU; nothing is launched."""

    def __init__(self, arch: int):
        self.target = GPUTarget("cuda", arch, 32)

    def get_current_device(self) -> int:
        return self.target.arch      # one device per target: Triton keys its per-device caches by it

    def get_current_stream(self, device: int) -> int:
        return 0

    def get_current_target(self) -> GPUTarget:
        return self.target


@contextlib.contextmanager
def _targeting(arch: int) -> Iterator[None]:
    """Make Triton specialise and compile for `arch` (restoring the previous driver after)."""
    previous = driver._active     # noqa: SLF001 - DriverConfig has no getter; None means "create on first use"
    driver.set_active(_TargetDriver(arch))
    try:
        yield
    finally:
        driver.set_active(previous)


def kernel_modules() -> list[Any]:
    """The modules of kernels/ that define Triton kernels (their names end in _triton)."""
    return [importlib.import_module(f"kernels.{m.name}") for m in pkgutil.iter_modules(kernels.__path__)
            if m.name.endswith("_triton")]


def all_kernels() -> dict[str, JITFunction]:
    """Every @triton.jit function named *_kernel defined in kernels/ (helpers it calls are compiled within)."""
    return {obj.fn.__name__: obj for module in kernel_modules() for obj in vars(module).values()
            if isinstance(obj, JITFunction) and obj.module == module.__name__ and obj.fn.__name__.endswith("_kernel")}


def all_tuners() -> list[Autotuner]:
    return [obj for module in kernel_modules() for obj in vars(module).values() if isinstance(obj, Autotuner)]


def config_label(kernel: JITFunction, constants: dict, num_warps: int, num_stages: int) -> tuple[str, str]:
    """('PRECISION=tf32', 'BLOCK_M=64 BLOCK_N=32 BLOCK_D=256 w8 s2'): the kernel's own constexpr flags (booleans
    named when true), then its tile sizes and launch options. Arguments Triton specialised to a constant (a unit
    stride, one head) are in the specialisation data only."""
    flags, tile = [], []
    for (index, *_), value in sorted(constants.items()):
        param = kernel.params[index]
        if param.name.startswith("BLOCK"):
            tile.append(f"{param.name}={value}")
        elif param.is_constexpr and value is not False:
            flags.append(param.name if value is True else f"{param.name}={value}")
    return " ".join(flags), " ".join(tile + [f"w{num_warps}", f"s{num_stages}"])


def _warm_candidates(tuner: Autotuner, *args: Any, grid: Any, warmup: bool, **kwargs: Any) -> None:
    """Autotuner.run while capturing: every candidate the pruning keeps is specialised, none is timed."""
    tuner.warmup(*args, grid=grid, **kwargs)


@contextlib.contextmanager
def capturing(arch: int, sink: list[Launch], workload: Callable[[], str]) -> Iterator[None]:
    """Record every Triton launch made inside as a Launch for `arch` (named `workload()`), instead of running it."""
    def hook(*, fn: Any, compile: dict, **_: Any) -> bool:
        kernel = fn.jit_function
        sink.append(Launch(workload(), kernel, arch,
                           *config_label(kernel, compile["constants"], compile["num_warps"], compile["num_stages"]),
                           compile["specialization_data"]))
        return True   # skip the compile (and so the launch)

    checks = [(m, m.check_launchable) for m in kernel_modules() if hasattr(m, "check_launchable")]
    old_hook, old_run = knobs.runtime.jit_cache_hook, Autotuner.run
    try:
        for module, _ in checks:
            module.check_launchable = lambda *tensors: None     # CPU tensors stand in for CUDA ones
        knobs.runtime.jit_cache_hook, Autotuner.run = hook, _warm_candidates
        with _targeting(arch):
            yield
    finally:
        knobs.runtime.jit_cache_hook, Autotuner.run = old_hook, old_run
        for module, check in checks:
            module.check_launchable = check


# --- workloads: the trainer's own code paths on small CPU tensors -------------------------------------------------

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# (preset, --model-channels): the presets' own widths, and one narrower and one wider network for head dims 32, 128.
ATTENTION_NETWORKS = [("tiny", None), ("tiny", 8), ("ddpmpp", None), ("ddpmpp", 64), ("ncsnpp", None)]


def _attention(block: Any, res: int, dtype: torch.dtype, tf32: bool) -> None:
    """One UNet attention layer forward and backward, as in training (the qkv map in the block's layout)."""
    qkv = torch.randn(1, 3 * block.out_channels, res, res).to(dtype).requires_grad_()
    allow = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        block.attn_backend = "triton"
        out = block._attend(qkv)     # noqa: SLF001 - the exact layout the network hands to kernels.attention
        out.backward(torch.randn_like(out))
    finally:
        torch.backends.cuda.matmul.allow_tf32 = allow


class _ScaleDenoiser(torch.nn.Module):
    """Stands in for EDMPrecond: a float32 output of x's shape that depends on a trained weight."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        return x.float() * self.scale


def _noise_and_loss(preset: str, dtype: torch.dtype) -> None:
    """The trainer's AmbientLoss (fp32: as training calls it), then the public ops' other variants."""
    channels, res = PRESET_DATA[preset]
    y = torch.randn(2, channels, res, res).to(dtype)
    sigma_n = torch.tensor([0.0, 0.2])
    if dtype == torch.float32:
        for weighting in ("edm", "ambient"):
            loss, _ = AmbientLoss(weighting=weighting, backend="triton")(
                _ScaleDenoiser(), y, sigma_n, torch.randn(2), seed=step_seed(0, 3), offset=y[0].numel())
            loss.sum().backward()
    sigma = torch.tensor([0.5, 1.3])
    kernels.noise_injection(y, sigma, sigma_n, seed=5, backend="triton")
    kernels.noise_injection(y, sigma, sigma_n, seed=5, eps=torch.randn_like(y), backend="triton")
    kernels.noise_injection_net_input(y, sigma, sigma_n, seed=5, backend="triton")
    denoised = y.clone().requires_grad_()
    for weighting in ("edm", "ambient"):
        kernels.ambient_loss(denoised, y, y, sigma, sigma_n, weighting=weighting, backend="triton").sum().backward()
    with torch.no_grad():
        kernels.ambient_loss(denoised, y, y, sigma, sigma_n, backend="triton")


def workloads() -> dict[str, Callable[[], None]]:
    """Name -> the calls that make that workload's launches."""
    out: dict[str, Callable[[], None]] = {}
    precisions = [("fp32", True), ("fp32-ieee", False), ("fp16", True), ("bf16", True)]
    for preset, width in ATTENTION_NETWORKS:
        for res, block in attention_layers(preset, **({} if width is None else {"model_channels": width})):
            shape = f"N{res * res} D{block.out_channels // block.num_heads} H{block.num_heads}"
            for precision, tf32 in precisions:
                dtype = DTYPES[precision.split("-")[0]]
                name = f"attention {preset}{'' if width is None else f'-c{width}'} {shape} {precision}"
                out[name] = lambda b=block, r=res, d=dtype, t=tf32: _attention(b, r, d, t)
    by_shape: dict[tuple[int, int], str] = {}
    for preset, shape in PRESET_DATA.items():   # the noise and loss kernels see the image shape, not the network
        by_shape.setdefault(shape, preset)
    for (channels, res), preset in by_shape.items():
        for precision, dtype in DTYPES.items():
            out[f"noise+loss {preset} {channels}x{res}x{res} {precision}"] = (
                lambda p=preset, d=dtype: _noise_and_loss(p, d))
    return out


def capture(calls: dict[str, Callable[[], None]], archs: list[int]) -> list[Launch]:
    """The launches of every workload for every target, one per distinct (kernel, specialisation, target)."""
    launches: list[Launch] = []
    current = [""]
    for arch in archs:
        with capturing(arch, launches, lambda: current[0]):
            for name, call in calls.items():
                current[0] = name
                call()
    unique: dict[tuple[str, str, int], Launch] = {}
    for launch in launches:
        unique.setdefault((launch.name, launch.data, launch.arch), launch)
    return list(unique.values())


# --- compiling, in worker processes ---------------------------------------------------------------------------------

_PTXAS = {"regs": r"Used (\d+) registers", "stack": r"(\d+) bytes stack frame",
          "spill_stores": r"(\d+) bytes spill stores", "spill_loads": r"(\d+) bytes spill loads"}


def parse_ptxas_log(log: str) -> dict[str, int]:
    """Registers, stack frame and spill bytes from `ptxas -v` output (the last function reported)."""
    found = {}
    for field, pattern in _PTXAS.items():
        values = re.findall(pattern, log)
        if not values:
            raise ValueError(f"no {field!r} in the ptxas log: {log[-500:]!r}")
        found[field] = int(values[-1])
    return found


def compile_one(module: str, name: str, data: str, arch: int) -> dict[str, Any]:
    """Compile one specialisation for `arch` with Triton and ptxas; resources used, or the error."""
    kernel = getattr(importlib.import_module(module), name)
    log = io.StringIO()
    with knobs.nvidia.scope(), knobs.cache.scope(), tempfile.TemporaryDirectory() as cache, _targeting(arch):
        knobs.nvidia.dump_ptxas_log = True      # printed by Triton after ptxas succeeds
        knobs.cache.dir = cache                 # a cold Triton cache: ptxas always runs, so its log is there
        try:
            with contextlib.redirect_stdout(log):
                compiled = kernel.preload(data)
        except Exception as exc:  # noqa: BLE001 - the failure is the result
            lines = [line for line in str(exc).splitlines() if line.strip()]
            return {"error": f"{type(exc).__name__}: " + " | ".join(lines[:3])[:400]}
    meta = compiled.metadata
    return {**parse_ptxas_log(log.getvalue()), "shared": meta.shared, "threads": meta.num_warps * 32}


def _compile_task(task: tuple[str, str, str, int]) -> dict[str, Any]:
    return compile_one(*task)


def cache_dir() -> Path:
    root = os.environ.get("AMBIENT_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "ambient")
    return Path(root) / "aot"


def compile_all(launches: list[Launch], jobs: int, use_cache: bool = True,
                log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Each launch's resources (cached ones read back), in the launches' order."""
    folder = cache_dir()
    keys = [launch.cache_key() for launch in launches]
    results: list[dict[str, Any] | None] = [None] * len(launches)
    if use_cache:
        for i, key in enumerate(keys):
            with contextlib.suppress(OSError, ValueError):
                results[i] = json.loads((folder / f"{key}.json").read_text())
    todo = [i for i, r in enumerate(results) if r is None]
    log(f"{len(launches)} compiles, {len(launches) - len(todo)} cached, {len(todo)} to do on {jobs} process(es)")
    if not todo:
        return results
    start = time.monotonic()
    tasks = [(launches[i].kernel.module, launches[i].name, launches[i].data, launches[i].arch) for i in todo]
    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        for done, (i, result) in enumerate(zip(todo, pool.map(_compile_task, tasks)), 1):
            results[i] = result
            if "error" not in result:
                write_json(result, folder / f"{keys[i]}.json", indent=None)
            if done % 50 == 0 or done == len(todo):
                log(f"  compiled {done}/{len(todo)} ({time.monotonic() - start:.0f} s)")
    return results


# --- checks and the table ---------------------------------------------------------------------------------------------

def problems(launch: Launch, result: dict[str, Any]) -> list[str]:
    """What a GPU of the launch's target would refuse or punish (empty: fine)."""
    if "error" in result:
        return [f"does not compile: {result['error']}"]
    arch, found = ARCHS[launch.arch], []
    if result["shared"] > arch.max_shared:
        found.append(f"shared memory {result['shared']} B > {arch.max_shared} B ({arch.max_shared // 1024} KiB)")
    if result["spill_stores"] or result["spill_loads"]:
        found.append(f"spills {result['spill_stores']} B stores, {result['spill_loads']} B loads")
    if result["regs"] * result["threads"] > REGISTER_FILE:
        found.append(f"{result['regs']} registers x {result['threads']} threads > {REGISTER_FILE}")
    return found


def _tile(launch: Launch) -> tuple[str, int, str, int, str] | None:
    """(kernel, major, operands, BLOCK_D, 'BMxBNwW') of an autotuned attention launch, as DENIED keys it; else None."""
    fields = dict(re.findall(r"(\w+)=(\S+)", f"{launch.flags} {launch.config}"))
    if "BLOCK_N" not in fields or "PRECISION" not in fields:
        return None
    operands = fields["PRECISION"] if json.loads(launch.data)["signature"]["Q"] == "*fp32" else "16"
    warps = re.search(r"\bw(\d+)", launch.config).group(1)
    return (launch.name, launch.arch // 10, operands, int(fields["BLOCK_D"]),
            f"{fields['BLOCK_M']}x{fields['BLOCK_N']}w{warps}")


def triton_release(version: str = triton.__version__) -> str:
    """'3.6' of '3.6.0': the key of this Triton's table in kernels/attention_triton._DENIED."""
    return ".".join(version.split("+")[0].split(".")[:2])


def denylist(launches: list[Launch], results: list[dict[str, Any]]) -> str:
    """This Triton's table of kernels/attention_triton._DENIED from this run's verdicts: the autotune candidates
    with problems."""
    bad: dict[tuple[str, int, str, int], set[str]] = {}
    for launch, result in zip(launches, results):
        if (tile := _tile(launch)) is not None and problems(launch, result):
            bad.setdefault(tile[:4], set()).add(tile[4])
    return "\n".join(f"{kernel} {major} {operands} {block_d}: {' '.join(sorted(tiles))}"
                     for (kernel, major, operands, block_d), tiles in sorted(bad.items()))


def coverage_problems(launches: list[Launch]) -> list[str]:
    """Kernels of kernels/ never compiled; autotune candidates that no workload's pruning keeps."""
    found = [f"{name}: no workload launches it (add one to bench/aot_check.workloads)"
             for name in sorted(set(all_kernels()) - {launch.name for launch in launches})]
    for tuner in all_tuners():
        kept = {launch.config for launch in launches if launch.kernel is tuner.fn}
        for config in tuner.configs:
            label = f"BLOCK_M={config.kwargs['BLOCK_M']} BLOCK_N={config.kwargs['BLOCK_N']}"
            warps = f"w{config.num_warps} s{config.num_stages}"
            if not any(k.startswith(label) and k.endswith(warps) for k in kept):
                found.append(f"{tuner.fn.fn.__name__}: candidate {label} {warps} is pruned for every workload")
    return found


def table(launches: list[Launch], results: list[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """One row per (kernel, workload, flags, config): registers, spills, shared memory per target, and the verdict."""
    archs = sorted({launch.arch for launch in launches}, reverse=True)
    rows: dict[tuple[str, str, str, str], dict[int, tuple[Launch, dict[str, Any]]]] = {}
    for launch, result in zip(launches, results):
        key = (launch.name, launch.workload, launch.flags, launch.config)
        while launch.arch in rows.get(key, {}):     # another specialisation alike in all these (e.g. N % 16)
            key = (*key[:3], key[3] + " (2)")
        rows.setdefault(key, {})[launch.arch] = (launch, result)
    header = ["kernel", "workload", "flags", "config"]
    for arch in archs:
        header += [f"sm_{arch} regs", "spill B", "smem KiB"]
    header.append("verdict")
    body = []
    for (name, workload, flags, config), per_arch in sorted(rows.items()):
        line: list[Any] = [name, workload, flags, config]
        verdicts = []
        for arch in archs:
            launch, result = per_arch.get(arch, (None, {}))
            if "error" in result or launch is None:
                line += ["-", "-", "-"]
            else:
                line += [result["regs"], result["spill_stores"] + result["spill_loads"],
                         f"{result['shared'] / 1024:.1f}"]
            verdicts += [f"sm_{arch}: {p}" for p in (problems(launch, result) if launch else [])]
        line.append("; ".join(verdicts) or "ok")
        body.append(line)
    return header, body


def markdown(header: list[str], body: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in body]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="90,80", help="comma-separated compute capabilities (90, 80)")
    parser.add_argument("--only", action="append", help="keep only workloads whose name contains this (repeatable)")
    parser.add_argument("--kernel", action="append", help="keep only kernels whose name contains this (repeatable)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="compile processes")
    parser.add_argument("--no-cache", action="store_true", help="compile everything again")
    parser.add_argument("--inject-config", action="append", default=[], metavar="KERNEL:BMxBNxWARPS",
                        help="test hook: add an autotune candidate to KERNEL's list (e.g. a tile that spills)")
    parser.add_argument("--out", help="write every compile's result here (JSON)")
    parser.add_argument("--markdown", help="write the table here (markdown)")
    parser.add_argument("--denylist", action="store_true",
                        help="compile every candidate, ignoring kernels/attention_triton._DENIED, and print this "
                             "Triton's table anew from the verdicts (after a kernel or Triton change)")
    return parser.parse_args(argv)


def _inject(specs: list[str]) -> None:
    tuners = {tuner.fn.fn.__name__: tuner for tuner in all_tuners()}
    for spec in specs:
        name, _, tile = spec.partition(":")
        bm, bn, warps = map(int, tile.split("x"))
        tuners[name].configs.append(triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=warps, num_stages=2))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from kernels._triton_utils import INTERPRET
    if INTERPRET:
        print("TRITON_INTERPRET is set: the interpreter path has no autotuning; run without it", file=sys.stderr)
        return 2
    start = time.monotonic()
    archs = [int(a) for a in args.arch.split(",")]
    _inject(args.inject_config)
    from kernels.attention_triton import DENIED, DENIED_TRITONS
    release = triton_release()
    if release not in DENIED_TRITONS:
        print(f"note: kernels/attention_triton._DENIED has no table of Triton {release}'s verdicts (it has "
              f"{', '.join(DENIED_TRITONS)}; the pruning drops their union); should this check fail, record one "
              f"with --denylist")
    if args.denylist:                 # judge every candidate the generic bound keeps, as the tables were made
        DENIED.clear()
    calls = {name: call for name, call in workloads().items() if not args.only or any(s in name for s in args.only)}
    launches = [launch for launch in capture(calls, archs)
                if not args.kernel or any(k in launch.name for k in args.kernel)]
    captured = time.monotonic() - start
    results = compile_all(launches, args.jobs, use_cache=not args.no_cache)
    header, body = table(launches, results)
    print(format_table(header, body))
    failures = [f"{launch.name} / {launch.workload} / {launch.flags} / {launch.config} / sm_{launch.arch}: {p}"
                for launch, result in zip(launches, results) for p in problems(launch, result)]
    if not args.only and not args.kernel:
        failures += coverage_problems(launches)
    if args.markdown:
        Path(args.markdown).write_text(markdown(header, body))
    if args.out:
        Path(args.out).write_text(json.dumps(
            {"triton": triton.__version__, "archs": {a: dataclasses.asdict(ARCHS[a]) for a in archs},
             "compiles": [{"kernel": launch.name, "workload": launch.workload, "flags": launch.flags,
                           "config": launch.config, "specialization": json.loads(launch.data),
                           "arch": launch.arch, **result, "problems": problems(launch, result)}
                          for launch, result in zip(launches, results)],
             "failures": failures}, indent=1))
    print(f"{len(body)} rows, {len(launches)} compiles for {', '.join(f'sm_{a}' for a in archs)}; "
          f"captured in {captured:.1f} s, {time.monotonic() - start:.1f} s in all")
    if args.denylist:
        print(f'Triton {release}\'s table of kernels/attention_triton._DENIED:\n    "{release}": """\n'
              f'{denylist(launches, results)}\n""",')
    for failure in failures:
        print(f"FAIL {failure}")
    print(f"AOT check: {'FAILED, ' + str(len(failures)) + ' problem(s)' if failures else 'PASS'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
