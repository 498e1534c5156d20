"""Fixtures for the command-line experiment tests (helpers live in cli_helpers.py)."""

import pytest

from cli_helpers import write_image_folder


@pytest.fixture(scope="session")
def small_folder(tmp_path_factory) -> str:
    """3 classes, 16 training and 4 test images each (48 / 12), 8x8."""
    return write_image_folder(tmp_path_factory.mktemp("small_folder"), 3, 16, 4)


@pytest.fixture(scope="session")
def hundred_class_folder(tmp_path_factory) -> str:
    """100 classes (so top-5 error is reported), 2 training and 1 test image each, 8x8."""
    return write_image_folder(tmp_path_factory.mktemp("hundred_folder"), 100, 2, 1, seed=1)
