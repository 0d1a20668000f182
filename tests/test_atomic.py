"""ambient.common.atomic: the rename happens only when the write finished; a failed write leaves the old file and no
temporary behind, for files and folders alike."""
import json

import numpy as np
import pytest

from ambient.common.atomic import atomic_path, write_json


def _listing(folder):
    return sorted(p.name for p in folder.iterdir())


def test_write_json_round_trips_and_replaces(tmp_path):
    rng = np.random.default_rng()
    data = {"x": rng.normal(size=7).tolist(), "n": int(rng.integers(1, 1000))}
    path = write_json(data, tmp_path / "sub" / "m.json")      # parent folders made
    assert json.loads(path.read_text()) == data and path.read_text().endswith("\n")
    write_json({"n": 3}, path)
    assert json.loads(path.read_text()) == {"n": 3}
    assert _listing(path.parent) == ["m.json"]


@pytest.mark.parametrize("folder", [False, True])
def test_a_failed_write_keeps_the_old_content_and_leaves_nothing(tmp_path, folder):
    dest = tmp_path / "out"
    dest.write_text("old") if not folder else (dest.mkdir(), (dest / "a").write_text("old"))
    with pytest.raises(RuntimeError, match="disk full"), atomic_path(dest) as tmp:
        assert tmp.parent == dest.parent and tmp.name.startswith(".")
        if folder:
            tmp.mkdir()
            (tmp / "a").write_text("half")
        else:
            tmp.write_text("half")
        raise RuntimeError("disk full")
    assert (dest / "a" if folder else dest).read_text() == "old"
    assert _listing(tmp_path) == ["out"]


def test_the_temporary_keeps_the_suffix(tmp_path):
    """np.savez appends .npz to a name without it; the temporary must keep the suffix so the rename finds it."""
    images = np.random.default_rng().integers(0, 256, size=(5, 3, 3, 1), dtype=np.uint8)
    with atomic_path(tmp_path / "s.npz") as tmp:
        assert tmp.suffix == ".npz"
        np.savez_compressed(tmp, images=images)
    np.testing.assert_array_equal(np.load(tmp_path / "s.npz")["images"], images)
    assert _listing(tmp_path) == ["s.npz"]
