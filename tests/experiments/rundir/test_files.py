"""experiments/rundir/files.py: JSON read by the scripts (damage in one line, never a
RecursionError) and the free-space check."""

import os

import pytest

from experiments.common import UserError
from experiments.rundir import files


@pytest.mark.parametrize("text", ["[" * 200000, '{"a":' * 100000, '{"a": tru', "1" * 5000])
def test_every_json_reader_calls_deep_nesting_damage_not_a_recursion_error(text):
    with pytest.raises(files.DamagedJSON) as caught:
        files.parse_json(text)
    assert isinstance(caught.value, ValueError) and not isinstance(caught.value, RecursionError)
    if text.startswith("[["):
        assert "nested deeper than Python can read" in str(caught.value)


def test_deeply_nested_json_file_is_damaged_in_one_line(tmp_path):
    path = tmp_path / "config.json"
    path.write_text("[" * 50000)
    assert files.read_json(str(path)) is None
    with pytest.raises(UserError, match=r"The config .*config.json is damaged: nested"):
        files.load_json_object(str(path), "The config")


def test_a_disk_message_names_the_folder_not_its_descriptor(tmp_path, monkeypatch):
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(OSError, match=f"and {tmp_path} has") as caught:
            files.check_free_space(f"/proc/self/fd/{fd}", 2**60, "this test")
        assert "/proc/self/fd" not in str(caught.value)
        with pytest.raises(OSError, match="and the run has"):
            files.check_free_space(f"/proc/self/fd/{fd}", 2**60, "this test", where="the run")
    finally:
        os.close(fd)
