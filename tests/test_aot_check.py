"""bench/aot_check.py: ahead-of-time sm_90 / sm_80 compiles fail on a kernel a GPU would refuse or punish.

The check runs in subprocesses without TRITON_INTERPRET (this test process interprets Triton; the check needs the
autotuned GPU path), each with its own cache folder, so what is asserted was compiled here. Two candidate tiles are
broken on purpose through the check's test hook: one too large for shared memory, one that spills registers.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench import aot_check

REPO = Path(__file__).resolve().parents[1]
WORKLOAD = "attention tiny N64 D64 H1 bf16"   # the tiny preset's attention layer in training precision


def run_check(cache: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["AMBIENT_CACHE_DIR"] = str(cache)
    return subprocess.run([sys.executable, "-m", "bench.aot_check", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO, env=env)


@pytest.fixture(scope="module")
def forward_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[subprocess.CompletedProcess, dict]]:
    """The forward kernel's candidates at the tiny preset's attention on sm_90: as they are, and with a 16 x 1024 tile
    (K and V blocks of 1024 rows: over 227 KiB of shared memory) and a 128 x 128 tile of 4 warps (spills) added."""
    cache = tmp_path_factory.mktemp("aot-cache")
    runs = {}
    for name, extra in (("clean", []), ("broken", ["--inject-config", "_attn_fwd_kernel:16x1024x8",
                                                   "--inject-config", "_attn_fwd_kernel:128x128x4"])):
        out = cache.parent / f"{name}.json"
        done = run_check(cache, "--only", WORKLOAD, "--kernel", "_attn_fwd", "--arch", "90", "--out", str(out), *extra)
        runs[name] = (done, json.loads(out.read_text()) if out.exists() else {})
    return runs


def test_the_candidates_as_they_are_pass(forward_runs):
    done, result = forward_runs["clean"]
    assert done.returncode == 0, done.stdout + done.stderr
    assert "AOT check: PASS" in done.stdout
    compiles = result["compiles"]
    assert {c["kernel"] for c in compiles} == {"_attn_fwd_kernel"} and {c["arch"] for c in compiles} == {90}
    assert len(compiles) >= 2
    for c in compiles:
        assert c["problems"] == [] and 0 < c["regs"] <= 255 and c["spill_stores"] == c["spill_loads"] == 0
        assert 0 < c["shared"] <= 227 * 1024


def test_a_tile_too_large_and_a_tile_that_spills_fail_it(forward_runs):
    done, result = forward_runs["broken"]
    assert done.returncode == 1, done.stdout + done.stderr
    assert "AOT check: FAILED" in done.stdout
    by_config = {c["config"]: c for c in result["compiles"]}
    large = by_config["BLOCK_M=16 BLOCK_N=1024 BLOCK_D=64 w8 s2"]
    assert large["shared"] > 227 * 1024 and any(p.startswith("shared memory") for p in large["problems"])
    spills = by_config["BLOCK_M=128 BLOCK_N=128 BLOCK_D=64 w4 s2"]
    assert spills["spill_stores"] > 0 and any(p.startswith("spills") for p in spills["problems"])
    assert "FAIL _attn_fwd_kernel" in done.stdout and "BLOCK_M=16 BLOCK_N=1024" in done.stdout
    clean = {c["config"] for c in forward_runs["clean"][1]["compiles"]}
    assert all(by_config[config]["problems"] == [] for config in clean)      # the others are untouched


def test_what_is_compiled_is_the_trainers_specialisation(forward_runs):
    """q, k, v come from the UNet's qkv map: unit stride along N and one head are specialised to constants, the
    strides along D (3N) to multiples of 16; the output and log-sum-exp are contiguous."""
    compiles = forward_runs["clean"][1]["compiles"]
    spec = compiles[0]["specialization"]
    assert spec["name"] == "kernels.attention_triton._attn_fwd_kernel" and spec["target"]["arch"] == 90
    assert spec["signature"]["Q"] == "*bf16" and spec["signature"]["LSE"] == "*fp32"
    for stride in ("sq_n", "sk_n", "sv_n", "H"):
        assert spec["signature"][stride] == "constexpr"
    assert spec["signature"]["sq_d"] == "i32"
    assert all(c["specialization"]["signature"] == spec["signature"] for c in compiles)


def test_a_warm_run_compiles_nothing(tmp_path):
    cache = tmp_path / "cache"
    args = ["--only", "noise+loss tiny 1x32x32 fp32", "--kernel", "_noise", "--arch", "80"]
    first, second = run_check(cache, *args), run_check(cache, *args)
    assert first.returncode == 0 and second.returncode == 0, first.stdout + first.stderr
    assert "0 cached" in first.stdout and " 0 to do" in second.stdout


def test_every_kernel_module_is_found():
    code = "from bench.aot_check import all_kernels; print(sorted(all_kernels()))"
    done = subprocess.run([sys.executable, "-c", code],
                          capture_output=True, text=True, timeout=120, cwd=REPO,
                          env={k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(sorted(["_attn_fwd_kernel", "_attn_bwd_delta_kernel", "_attn_bwd_dkdv_kernel",
                                              "_attn_bwd_dq_kernel", "_loss_kernel", "_noise_kernel"]))


def test_the_ptxas_log_is_read_and_a_missing_field_refused():
    log = ("ptxas info    : Compiling entry function '_attn_fwd_kernel' for 'sm_90a'\n"
           "ptxas info    : Function properties for _attn_fwd_kernel\n"
           "    24 bytes stack frame, 16 bytes spill stores, 12 bytes spill loads\n"
           "ptxas info    : Used 255 registers, used 1 barriers, 24 bytes cumulative stack size\n")
    assert aot_check.parse_ptxas_log(log) == {"regs": 255, "stack": 24, "spill_stores": 16, "spill_loads": 12}
    with pytest.raises(ValueError, match="regs"):
        aot_check.parse_ptxas_log(log.replace("Used 255 registers", ""))


@pytest.mark.parametrize("result, found", [
    ({"regs": 200, "stack": 0, "spill_stores": 0, "spill_loads": 0, "shared": 163 * 1024, "threads": 256}, []),
    ({"regs": 200, "stack": 0, "spill_stores": 0, "spill_loads": 0, "shared": 163 * 1024 + 1, "threads": 256},
     ["shared memory 166913 B > 166912 B (163 KiB)"]),
    ({"regs": 255, "stack": 8, "spill_stores": 4, "spill_loads": 4, "shared": 0, "threads": 256},
     ["spills 4 B stores, 4 B loads"]),
    ({"regs": 255, "stack": 0, "spill_stores": 0, "spill_loads": 0, "shared": 0, "threads": 512},
     ["255 registers x 512 threads > 65536"]),
    ({"error": "CompilationError: at 12:4"}, ["does not compile: CompilationError: at 12:4"]),
])
def test_verdicts_against_the_sm80_limits(result, found):
    launch = aot_check.Launch("w", None, 80, "", "BLOCK=1024 w8 s3", "{}")
    assert aot_check.problems(launch, result) == found


def test_the_pruning_drops_the_union_of_every_tritons_table():
    """A tile that spills under one Triton is dropped under all: DENIED holds every table's tiles, and only those."""
    from kernels import attention_triton
    tables = [attention_triton._denied(t) for t in attention_triton._DENIED.values()]
    assert len(tables) >= 2 and attention_triton.DENIED_TRITONS == tuple(attention_triton._DENIED)
    for key, tiles in attention_triton.DENIED.items():
        assert tiles == set().union(*(table.get(key, set()) for table in tables))
    merged = attention_triton._denied("_attn_fwd_kernel 9 16 64: 32x32w4\n_attn_fwd_kernel 8 16 64: 16x16w4",
                                      "_attn_fwd_kernel 9 16 64: 64x64w8 32x32w4")
    assert merged == {("_attn_fwd_kernel", 9, "16", 64): {(32, 32, 4), (64, 64, 8)},
                      ("_attn_fwd_kernel", 8, "16", 64): {(16, 16, 4)}}


@pytest.mark.parametrize("version, release", [("3.6.0", "3.6"), ("3.10.1+git1a2b3c", "3.10"), ("3.8.0", "3.8")])
def test_the_table_key_of_a_triton_version(version, release):
    assert aot_check.triton_release(version) == release


def test_the_printed_table_reads_back_as_the_verdicts():
    """--denylist prints the tiles with problems in the format _denied reads; tiles without problems stay out."""
    from kernels import attention_triton
    fine = {"regs": 128, "stack": 0, "spill_stores": 0, "spill_loads": 0, "shared": 1024, "threads": 256}
    spills = {**fine, "spill_stores": 8, "spill_loads": 4}
    launches = [aot_check.Launch("w", attention_triton._attn_fwd_kernel, arch, "PRECISION=tf32",
                                 f"BLOCK_M={bm} BLOCK_N={bn} BLOCK_D=64 w{w} s2",
                                 json.dumps({"signature": {"Q": q}}))
                for arch, q, (bm, bn, w) in [(90, "*bf16", (64, 64, 8)), (90, "*bf16", (32, 32, 4)),
                                             (80, "*fp32", (128, 64, 8))]]
    text = aot_check.denylist(launches, [spills, fine, spills])
    assert attention_triton._denied(text) == {("_attn_fwd_kernel", 9, "16", 64): {(64, 64, 8)},
                                              ("_attn_fwd_kernel", 8, "tf32", 64): {(128, 64, 8)}}
