"""Command-line options of the pytest-benchmark tests (bench/test_benchmarks.py)."""
import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("ambient benchmarks")
    group.addoption("--bench-device", choices=["auto", "cpu", "cuda"], default="auto")
    group.addoption("--bench-presets", default="ddpmpp,tiny", help="comma-separated: ddpmpp, tiny")
    group.addoption("--bench-full", action="store_true",
                    help="on a CPU also the trainer steps bench/run.py leaves out with --quick (torch.compile, "
                         "DDPM++: minutes)")
