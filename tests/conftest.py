"""Test set-up: Triton runs under its CPU interpreter unless a GPU is present.

TRITON_INTERPRET is read when `@triton.jit` decorates, so it is set here, before any
kernel module is imported.
"""
import os
import subprocess

if not os.environ.get("AMBIENT_NATIVE_TRITON"):
    try:
        has_gpu = subprocess.run(["nvidia-smi", "-L"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        has_gpu = False
    if not has_gpu:
        os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")   # CI has 2 cores; tests also start subprocesses
