"""A non-editable install works on its own: its command-line modules run from the installed copy.

The package is built from a copy of the checkout (a build leaves build/ and *.egg-info beside setup.py),
offline, without dependencies or build isolation, into a folder that PYTHONPATH names; the commands run
from an empty folder, so neither the checkout nor an editable install can supply the modules.
"""
import importlib.metadata
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TOP_LEVEL_SKIPPED = {".git", "docs", "data", "runs", "out", "build"}   # history, study results, large outputs

def _installed(name: str) -> bool:
    """Whether a distribution is installed, asked of its metadata: importlib.util.find_spec("pip") would make
    setuptools' distutils shim step aside for the rest of the session, and a later torch.compile (inductor
    imports setuptools) would then fail on the standard library's distutils."""
    try:
        importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


pytestmark = pytest.mark.skipif(not (_installed("pip") and _installed("setuptools")),
                                reason="building the package needs pip and setuptools")


def _skip(folder: str, names: list[str]) -> list[str]:
    top = TOP_LEVEL_SKIPPED if Path(folder) == REPO else set()
    return [n for n in names if n in top or n == "__pycache__" or n.endswith(".egg-info")]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The folder `pip install --target` put the packages in."""
    root = tmp_path_factory.mktemp("install")
    shutil.copytree(REPO, root / "src", ignore=_skip)
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
                    "--no-cache-dir", "--disable-pip-version-check", "--quiet", "--target", str(root / "site"),
                    str(root / "src")], check=True, capture_output=True, text=True)
    return root / "site"


@pytest.mark.parametrize("module", ["ambient.train", "ambient.sample", "ambient.study", "ambient.eval",
                                    "ambient.dataset_tool", "ambient.convert", "ambient.gmm"])
def test_module_runs_from_a_non_editable_install(installed, tmp_path, module):
    env = dict(os.environ, PYTHONPATH=str(installed))
    run = subprocess.run([sys.executable, "-m", module, "--help"], cwd=tmp_path, env=env, capture_output=True,
                         text=True, check=False)
    assert run.returncode == 0, run.stderr
    assert f"usage: python -m {module}" in run.stdout
    where = subprocess.run([sys.executable, "-c", f"import {module} as m; print(m.__file__)"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, check=True).stdout.strip()
    assert Path(where).resolve().is_relative_to(installed.resolve()), where


# The public API that outside tests and users' scripts import (DESIGN.md's names), used once each.
PUBLIC_API = """
import sys
from pathlib import Path
import torch
from kernels import ambient_loss, attention, noise_injection
from ambient.networks import EDMPrecond, SongUNet
from ambient.data import AmbientDataset, load_dataset
from ambient.sampler import edm_sampler
import ambient, kernels
base = load_dataset("digits")
ds = AmbientDataset(base, n_clean=100, sigma_n=0.2, seed=0)
net = EDMPrecond(8, 1, model_channels=8, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4]).eval()
assert isinstance(net.model, SongUNet)
y = torch.stack([ds[i]["image"] for i in range(3)])
s, sn = torch.full((3,), 0.5), torch.tensor([ds[i]["sigma_n"] for i in range(3)], dtype=torch.float32)
x = noise_injection(y, s, sn, seed=1, eps=torch.randn_like(y))
loss = ambient_loss(net(x, s), x, y, s, sn)
q = torch.randn(1, 2, 5, 4)
o = attention(q, q, q)
img = edm_sampler(net, torch.randn(2, 1, 8, 8), num_steps=3)
print(len(base), ds.n_clean, tuple(loss.shape), tuple(o.shape), tuple(img.shape))
print(Path(ambient.__file__).parent.parent, Path(kernels.__file__).parent.parent)
"""


def test_the_public_api_imports_from_a_non_editable_install(installed, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(installed))
    run = subprocess.run([sys.executable, "-c", PUBLIC_API], cwd=tmp_path, env=env, capture_output=True, text=True,
                         check=False)
    assert run.returncode == 0, run.stderr
    figures, roots = run.stdout.splitlines()
    assert figures == "1797 100 (3,) (1, 2, 5, 4) (2, 1, 8, 8)"
    assert {Path(r).resolve() for r in roots.split()} == {installed.resolve()}
