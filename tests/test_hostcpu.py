"""Precision, layout and threads chosen by the host: bf16 only where native and measured faster, channels-last for
fp32 on a CPU, threads per process."""
import json

import pytest
import torch

import train
from ambient.train import hostcpu
from ambient.train import train as run_training


@pytest.mark.parametrize("kind, precision", [("cpu-avx2", "fp32"), ("cpu-avx512", "fp32"),
                                             ("cpu-avx512-bf16", "bf16"), ("cpu-avx512-amx", "bf16")])
def test_auto_precision_follows_the_cpu_kind(monkeypatch, kind, precision):
    monkeypatch.setattr(hostcpu, "this_host_kind", lambda: kind)
    chosen, why = hostcpu.auto_precision(torch.device("cpu"))
    assert chosen == precision and why.startswith(kind)
    assert hostcpu.auto_precision(torch.device("cuda")) == ("bf16", "cuda")


@pytest.mark.parametrize("device, precision, layout", [("cpu", "fp32", "channels_last"), ("cpu", "bf16", "contiguous"),
                                                       ("cuda", "bf16", "contiguous"), ("cuda", "fp32", "contiguous")])
def test_auto_memory_format(device, precision, layout):
    assert hostcpu.auto_memory_format(torch.device(device), precision) == layout


def test_emulated_avx2_reads_as_avx2():
    assert hostcpu.host_kind("AVX2", {"amx_bf16", "avx512_bf16"}) == "cpu-avx2"


@pytest.mark.parametrize("env, world, threads", [(None, 1, "cores"), (None, 4, 1), ("3", 1, 3), ("3", 4, 3)])
def test_default_threads(monkeypatch, env, world, threads):
    monkeypatch.setattr(hostcpu, "available_cores", lambda: 7)
    if env is None:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", env)
    assert hostcpu.default_threads(world) == (7 if threads == "cores" else threads)


def test_the_choice_is_in_the_first_line_and_config_json(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(hostcpu, "this_host_kind", lambda: "cpu-avx2")
    threads = torch.get_num_threads()
    try:
        run_training(train.parse_args(["--data", "digits", "--model-channels", "8", "--batch", "16", "--kimg", "0.016",
                                       "--grid-size", "1", "--no-progress", "--threads", "1",
                                       "--run-dir", str(tmp_path / "run")]))
    finally:
        torch.set_num_threads(threads)
    first = capsys.readouterr().out.splitlines()[0]
    assert "fp32 (cpu-avx2: no native bf16), 1 thread(s)" in first
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["precision"] == "fp32" and config["threads"] == 1 and config["host_kind"] == "cpu-avx2"
    assert config["memory_format"] == "channels_last"
    assert config["precision_reason"] == "cpu-avx2: no native bf16"
