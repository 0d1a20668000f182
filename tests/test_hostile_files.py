"""Hostile data set files: each refused with one error naming the file and the problem, never a hang or an
allocation."""
import io
import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import tifffile
from PIL import Image

from ambient.data.sources import MAX_RESOLUTION, load_dataset
from ambient.data.tool import main as dataset_tool


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (4, 4)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_npy_header_declaring_a_huge_shape_is_refused_before_allocating(tmp_path):
    header = repr({"descr": "<f4", "fortran_order": False, "shape": (8, 8, 2**40)}).encode()
    header += b" " * (-(10 + len(header) + 1) % 64) + b"\n"
    (tmp_path / "a.npy").write_bytes(b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header)
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": None, "sigma_n": [["a.npy", 0.1]]}))
    with pytest.raises(ValueError, match=r"a\.npy has shape \(8, 8, 1099511627776\)"):
        load_dataset(tmp_path)


@pytest.mark.parametrize("text, message", [
    ('{"labels": [["a.png", 0]], "labels": [["a.png", 1]]}', "gives the key 'labels' twice"),
    ('{"labels": [["a.png", 0], ["a.png", 1]]}', "lists 'a.png' twice"),
])
def test_duplicates_in_dataset_json_are_refused(tmp_path, text, message):
    (tmp_path / "a.png").write_bytes(_png())
    (tmp_path / "dataset.json").write_text(text)
    with pytest.raises(ValueError, match=f"dataset.json.*{message}"):
        load_dataset(tmp_path)


def test_duplicate_zip_members_are_refused(tmp_path):
    with pytest.warns(UserWarning), zipfile.ZipFile(tmp_path / "d.zip", "w") as archive:
        archive.writestr("a.png", _png())
        archive.writestr("a.png", _png())
    with pytest.raises(ValueError, match=r"d\.zip: zip entry 'a\.png' appears twice"):
        load_dataset(tmp_path / "d.zip")


@pytest.mark.parametrize("fifo", ["b.png", "dataset.json"])
def test_a_fifo_in_a_folder_is_refused_not_read(tmp_path, fifo):
    (tmp_path / "a.png").write_bytes(_png())
    os.mkfifo(tmp_path / fifo)
    code = f"from ambient.data.sources import load_dataset; load_dataset({str(tmp_path)!r})"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30,
                         cwd=os.path.dirname(os.path.dirname(__file__)))
    assert run.returncode != 0 and f"{fifo} is not a regular file" in run.stderr


@pytest.mark.parametrize("first", [True, False])
def test_a_png_declaring_a_huge_image_is_refused_before_decoding(tmp_path, first):
    """A few-kB PNG declaring more than MAX_RESOLUTION on a side: refused on its header, first file or not."""
    side = MAX_RESOLUTION + int(np.random.default_rng().integers(1, 3000))
    buffer = io.BytesIO()
    Image.new("L", (side, 3)).save(buffer, format="PNG")
    (tmp_path / ("a.png" if first else "b.png")).write_bytes(buffer.getvalue())
    (tmp_path / ("b.png" if first else "a.png")).write_bytes(_png())
    with pytest.raises(ValueError, match=rf"{'a' if first else 'b'}\.png (declares a {side}x3|images differ)"):
        load_dataset(tmp_path)


def test_a_tiff_declaring_a_huge_image_is_refused_before_decoding(tmp_path, capsys):
    """dataset_tool reads TIFF itself (16-bit): a zlib TIFF of a few kB that would decode to more than 32 MiB."""
    src = tmp_path / "src"
    src.mkdir()
    side = MAX_RESOLUTION + int(np.random.default_rng().integers(1, 200))
    tifffile.imwrite(src / "a.tif", np.zeros((side, side), np.uint16), compression="zlib")
    assert (src / "a.tif").stat().st_size < 1 << 20
    assert dataset_tool(["--source", str(src), "--dest", str(tmp_path / "out"), "--sigma-n", "0.1"]) != 0
    err = capsys.readouterr().err
    assert f"a.tif declares a {side}x{side}" in err and "Traceback" not in err, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("value", ["1" * 400, "-" + "9" * 400, "1e400"])
def test_a_huge_sigma_n_in_a_sigma_table_is_one_error(tmp_path, capsys, value):
    src = tmp_path / "src"
    src.mkdir()
    np.save(src / "a.npy", np.zeros((4, 4), np.float32))
    (tmp_path / "sigma.json").write_text('{"a.npy": ' + value + "}")
    assert dataset_tool(["--source", str(src), "--dest", str(tmp_path / "out"), "--sigma-n-from",
                         str(tmp_path / "sigma.json")]) != 0
    err = capsys.readouterr().err
    assert "error: " in err and "sigma.json: the sigma_n of 'a.npy' must be a finite number >= 0 and <= 80" in err, err
    assert not (tmp_path / "out").exists()
