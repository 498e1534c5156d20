"""benchmarks/machine.py: the output rule every benchmark script shares."""

import json

import pytest
from absl import app

from benchmarks import machine


def test_an_existing_output_is_refused_before_measuring_and_never_overwritten(tmp_path):
    path = tmp_path / "result.json"
    machine.refuse_existing_output(str(path))  # nothing there: allowed
    machine.refuse_existing_output(None)  # no --output_json: nothing to check
    machine.write_new_json(str(path), {"rows": [1, 2]})
    assert json.loads(path.read_text()) == {"rows": [1, 2]}
    with pytest.raises(app.UsageError, match="never overwritten"):
        machine.refuse_existing_output(str(path))
    with pytest.raises(FileExistsError):
        machine.write_new_json(str(path), {"rows": []})
    assert json.loads(path.read_text()) == {"rows": [1, 2]}
    (tmp_path / "link.json").symlink_to(tmp_path / "missing.json")  # a dangling link counts too
    with pytest.raises(app.UsageError):
        machine.refuse_existing_output(str(tmp_path / "link.json"))
