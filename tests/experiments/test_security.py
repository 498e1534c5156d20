"""Security: model files load only with safe_mode=True, nothing unpickles data, and the scripts
never write outside the folder the user named (no path from a flag or config escapes it, and no
symbolic link inside it is written through).

The source checks parse the package, the experiment scripts and the benchmarks with `ast`, so
comments and strings do not count and aliases (`import numpy as xp`) do.
"""

import ast
import importlib.util
import json
import os
from pathlib import Path

import pytest

from cli_helpers import REPO, TINY_TRAIN_FLAGS, message_lines, run

pytestmark = [
    pytest.mark.large,  # runs the scripts in subprocesses: `make test-fast` skips it
    pytest.mark.requires_tensorflow("experiment scripts are tested on TensorFlow"),
]

SOURCE_DIRS = ("dcm_keras", "experiments", "benchmarks")
PICKLING_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve",
                    "marshal", "torch"}


def _sources():
    files = [p for d in SOURCE_DIRS if (REPO / d).is_dir()
             for p in sorted((REPO / d).rglob("*.py"))]
    assert any(p.parent.name == "dcm_keras" for p in files)
    return files


def _calls(tree):
    """(dotted name of the callee, ast.Call) for every call, e.g. ('np.load', node)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            parts, func = [], node.func
            while isinstance(func, ast.Attribute):
                parts.append(func.attr)
                func = func.value
            if isinstance(func, ast.Name):
                parts.append(func.id)
            yield ".".join(reversed(parts)), node


def _keyword(node, name):
    return next((k.value for k in node.keywords if k.arg == name), None)


def _is_constant(value, expected):
    return isinstance(value, ast.Constant) and value.value is expected


def test_every_model_load_is_safe():
    loads = []
    for path in _sources():
        tree = ast.parse(path.read_text(), str(path))
        for name, node in _calls(tree):
            where = f"{path.relative_to(REPO)}:{node.lineno}"
            assert not name.endswith("enable_unsafe_deserialization"), where
            if name.split(".")[-1] == "load_model":
                loads.append(where)
                assert _is_constant(_keyword(node, "safe_mode"), True), \
                    f"{where}: {name}() without safe_mode=True"
    assert loads, "expected dcm_keras.export.load_network to call load_model"


# The peer's profiler runs in the peer's own venv and must import torch to run its step; it may
# never call torch.load (checked below), the one torch function that unpickles.
TORCH_ALLOWED = {"benchmarks/peer_profile.py"}


def test_nothing_unpickles():
    for path in _sources():
        tree = ast.parse(path.read_text(), str(path))
        where = str(path.relative_to(REPO))
        forbidden = PICKLING_MODULES - ({"torch"} if where in TORCH_ALLOWED else set())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    assert alias.name.split(".")[0] not in forbidden, (where, alias.name)
            if isinstance(node, ast.ImportFrom) and node.module:
                assert node.module.split(".")[0] not in forbidden, (where, node.module)
        for name, node in _calls(tree):
            assert not (name.split(".")[-1] == "load" and name.split(".")[0] == "torch"), \
                f"{where}:{node.lineno}: torch.load unpickles"
            last = name.split(".")[-1]
            if last == "load" and name.split(".")[0] in ("np", "numpy", "onp"):
                assert _is_constant(_keyword(node, "allow_pickle"), False), \
                    f"{where}:{node.lineno}: {name}() without allow_pickle=False"
            assert last != "read_pickle", f"{where}:{node.lineno}: {name}()"
            assert not (last == "load" and name.split(".")[0] == "yaml"), \
                f"{where}:{node.lineno}: yaml.load (use yaml.safe_load)"


def test_cifar_comes_from_the_binary_archives():
    """tfds, which prepares CIFAR for dcm_keras.data, reads the binary tarballs, not the pickles."""
    spec = importlib.util.find_spec("tensorflow_datasets")  # locates it without importing it
    source = (Path(spec.origin).parent / "image_classification" / "cifar.py").read_text()
    assert "cifar-10-binary.tar.gz" in source and "cifar-100-binary.tar.gz" in source
    assert "python.tar.gz" not in source and "pickle" not in source
    registry = (REPO / "dcm_keras" / "data" / "registry.py").read_text()
    assert '(("cifar10", 10), ("cifar100", 100))' in registry
    assert "DatasetSpec(_name, TfdsReader()" in registry


def test_load_network_refuses_a_lambda_layer(tmp_path):
    import keras

    from dcm_keras import load_network

    model = keras.Sequential([keras.Input((2,)), keras.layers.Lambda(lambda x: x * 2.0)])
    path = tmp_path / "lambda.keras"
    model.save(path)
    with pytest.raises(ValueError, match="lambda.keras cannot be loaded:.*Lambda.*safe_mode"):
        load_network(str(path))


# --- writes stay inside the folder the user named ---------------------------------------------


def test_write_json_replaces_a_link_instead_of_following_it(tmp_path):
    from experiments.rundir import files

    outside = tmp_path / "outside.json"
    outside.write_text("keep")
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "results.json").symlink_to(outside)
    files.write_json(str(folder / "results.json"), {"complete": True})
    assert outside.read_text() == "keep"
    assert not (folder / "results.json").is_symlink()
    assert json.loads((folder / "results.json").read_text()) == {"complete": True}


def test_names_and_links_are_checked(tmp_path):
    from experiments import common
    from experiments.rundir import files

    for bad in ("..", ".", "../x", "a/b", "/abs", ".hidden", ""):
        with pytest.raises(ValueError, match="not a plain name"):
            common.check_name(bad, "Name")
    assert common.check_name("wrn_16_2", "Name") == "wrn_16_2"
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    files.check_no_symlinks(str(tmp_path), "real/a/b.txt", "new/file")
    with pytest.raises(ValueError, match="link is a symbolic link"):
        files.check_no_symlinks(str(tmp_path), "link/file")
    with pytest.raises(ValueError, match="outside"):
        files.check_no_symlinks(str(tmp_path / "real"), "../escape")


def _snapshot(folder: Path):
    return {str(p.relative_to(folder)): (p.is_symlink(), p.read_bytes() if p.is_file() else None)
            for p in sorted(folder.rglob("*"))}


@pytest.mark.parametrize("link", ["net1.keras", "history.csv", "logs", "backup"])
def test_train_refuses_a_link_inside_model_dir(tmp_path, small_folder, link):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "precious.txt").write_text("keep")
    model_dir = tmp_path / "run"
    model_dir.mkdir()
    target = outside if link in ("logs", "backup") else outside / "precious.txt"
    (model_dir / link).symlink_to(target)
    before, outside_before = _snapshot(model_dir), _snapshot(outside)
    result = run("train", f"--dataset=image_folder:{small_folder}", f"--model_dir={model_dir}",
                 "--epochs=1", *TINY_TRAIN_FLAGS, timeout=120)
    assert result.returncode != 0
    lines = message_lines(result.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert f"{model_dir / link} is a symbolic link" in lines[0] and "refusing" in lines[0]
    assert _snapshot(model_dir) == before and _snapshot(outside) == outside_before


def test_compare_names_cannot_leave_the_work_dir(tmp_path):
    work_dir = tmp_path / "work"
    cases = {
        "name": {"name": "../escaped", "rows": [["wrn_10_1", "wrn_10_1"]]},
        "nets": {"name": "ok", "rows": [["../../escaped", "wrn_10_1"]]},
        "seeds": {"name": "ok", "rows": [["wrn_10_1"]], "seeds": ["0/../../escaped"]},
    }
    for case, overrides in cases.items():
        config = {"methods": ["baseline"], "seeds": [0], "train_flags": {"epochs": 1},
                  **overrides}
        path = tmp_path / f"{case}.json"
        path.write_text(json.dumps(config))
        result = run("compare", f"--config={path}", f"--work_dir={work_dir}", timeout=60)
        assert result.returncode != 0, case
        lines = message_lines(result.stderr)
        assert len(lines) == 1 and lines[0].startswith("error: "), (case, lines)
    assert not (tmp_path / "escaped").exists() and not work_dir.exists()

    # A link inside the work dir, on the way to a run's folder, is not followed either.
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    work_dir.mkdir()
    (work_dir / "tiny").symlink_to(outside)
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps({"name": "tiny", "rows": [["wrn_10_1"]], "methods": ["baseline"],
                                "seeds": [0], "train_flags": {"epochs": 1}}))
    result = run("compare", f"--config={path}", f"--work_dir={work_dir}", timeout=60)
    assert result.returncode != 0
    assert "tiny is a symbolic link" in result.stderr and "Traceback" not in result.stderr
    assert os.listdir(outside) == []
