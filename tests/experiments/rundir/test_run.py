"""experiments/rundir/run.py: --model_dir opened for a training run, and a finished run's
results as experiments.compare reads them."""

import pytest

from experiments.common import UserError
from experiments.rundir import files
from experiments.rundir.run import TrainingRun, completed_results

FLAGS = {"method": "dcm", "nets": ["wrn_10_1", "wrn_10_1"], "epochs": 2, "model_dir": "x"}


def test_an_empty_model_dir_is_refused_and_nothing_is_written(tmp_path, monkeypatch):
    # `--model_dir=$UNSET` wrote flags.json, history.csv, logs/, ... into the current folder.
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="--model_dir is empty"):
        TrainingRun.open("", FLAGS, overwrite=False, chief=True)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name,text", [(files.FLAGS_FILE, '{"a":' * 100000),
                                       (files.FLAGS_FILE, "[" * 200000)])
def test_deeply_nested_flags_json_is_damaged_not_a_recursion_error(tmp_path, name, text):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / name).write_text(text)
    with pytest.raises(UserError, match=r"flags.json is damaged \(nested deeper than Python"):
        TrainingRun.open(str(folder), FLAGS, overwrite=False, chief=True)


def test_completed_results_and_atomic_json(tmp_path):
    assert completed_results(str(tmp_path)) is None
    (tmp_path / "results.json").write_text('{"complete": tru')  # cut short
    assert completed_results(str(tmp_path)) is None
    files.write_json(str(tmp_path / "results.json"), {"complete": True, "x": (1, 2)})
    assert completed_results(str(tmp_path)) == {"complete": True, "x": [1, 2]}
    assert not list(tmp_path.glob("*.tmp"))
