"""The fixture the tests of experiments/rundir/ share: a run folder, opened and locked."""

import pytest

from experiments.rundir.directory import RunDirectory


@pytest.fixture
def run(tmp_path):
    folder = RunDirectory.open(str(tmp_path / "run"), lock=True)
    yield folder
    folder.close()
