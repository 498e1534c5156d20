"""dcm_keras.atomic.replacing: a file written by path is whole or absent, never written through
a link."""

import os

import pytest

from dcm_keras.atomic import replacing, stem_and_extension

pytestmark = pytest.mark.core  # also run with oneDNN off and under JAX unless large (conftest.py)


def test_a_link_at_the_path_is_replaced_not_followed(tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("keep")
    path = tmp_path / "result.json"
    path.symlink_to(outside)
    with replacing(str(path)) as tmp:
        assert os.path.dirname(tmp) == str(tmp_path) and tmp.endswith(".tmp.json")
        with open(tmp, "w") as f:
            f.write("new")
    assert outside.read_text() == "keep" and not path.is_symlink()
    assert path.read_text() == "new" and oct(path.stat().st_mode & 0o777) == "0o644"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outside.txt", "result.json"]


def test_an_error_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "net.weights.h5"
    path.write_text("old")
    with pytest.raises(RuntimeError, match="killed"):
        with replacing(str(path)) as tmp:
            assert tmp.endswith(".tmp.weights.h5")  # Keras insists on the whole extension
            with open(tmp, "w") as f:
                f.write("half")
            raise RuntimeError("killed")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == [path.name]


def test_a_temporary_that_cannot_be_made_names_the_users_path(tmp_path):
    path = tmp_path / "missing" / "table.md"
    with pytest.raises(FileNotFoundError, match=f"Cannot write {path}: No such file") as caught:
        with replacing(str(path)):
            pass
    assert ".tmp" not in str(caught.value)
    with pytest.raises(FileNotFoundError, match=f"Cannot save {path}:"):
        with replacing(str(path), verb="save"):
            pass


def test_stem_and_extension():
    assert stem_and_extension("net1.weights.h5") == ("net1", ".weights.h5")
    assert stem_and_extension("net1.keras") == ("net1", ".keras")
    assert stem_and_extension("flagfile") == ("flagfile", "")
