"""Limits on `.keras` files before they are read: decompressed sizes and config nesting."""

import struct
import zipfile
import zlib

import keras
import pytest

import dcm_keras
from dcm_keras import archives, data

pytestmark = pytest.mark.core  # also run with oneDNN off and under JAX unless large (conftest.py)


@pytest.fixture(scope="module")
def small_model_file(tmp_path_factory):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)], name="small")
    path = str(tmp_path_factory.mktemp("model") / "small.keras")
    dcm_keras.save_network(model, path)
    return path


def _members(path):
    with zipfile.ZipFile(path) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def _write_zip(path, members):
    """A zip of (name, data, method, crc, declared size) members, written by hand so that a
    member may declare what it expands to without the writer decompressing anything."""
    out, central = bytearray(), bytearray()
    for name, data, method, crc, size in members:
        name = name.encode()
        central += struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, method, 0, 0x21, crc,
                               len(data), size, len(name), 0, 0, 0, 0, 0, len(out)) + name
        out += struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, method, 0, 0x21, crc, len(data),
                           size, len(name), 0) + name + data
    out += central + struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, len(members), len(members),
                                 len(central), len(out), 0)
    with open(path, "wb") as f:
        f.write(bytes(out))


def _deflated_zeros(mib):
    """A raw deflate stream that expands to `mib` MiB of zeros, built in milliseconds: after a
    full flush the compressor starts afresh, so each MiB compresses to the same bytes."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    chunk = compressor.compress(b"\0" * 2**20) + compressor.flush(zlib.Z_FULL_FLUSH)
    return chunk * mib + compressor.flush()


def test_a_zip_bomb_is_refused_before_any_byte_is_decompressed(small_model_file, tmp_path):
    good = _members(small_model_file)
    bomb = tmp_path / "bomb.keras"
    weights = _deflated_zeros(1024)  # about 1 MB that expands to 1 GiB
    # The CRC is not even computed (0): had anything been decompressed before the size check,
    # the refusal would name a failing CRC instead.
    _write_zip(bomb, [(name, good[name], zipfile.ZIP_STORED, zlib.crc32(good[name]),
                       len(good[name])) for name in ("metadata.json", "config.json")]
               + [("model.weights.h5", weights, zipfile.ZIP_DEFLATED, 0, 2**30)])
    assert bomb.stat().st_size < 2**21
    with zipfile.ZipFile(bomb) as archive:  # a well-formed zip, as zipfile reads it
        assert archive.getinfo("model.weights.h5").file_size == 2**30
    with pytest.raises(dcm_keras.UserError,
                       match=r"bomb.keras \(1.0 MiB\) expands to 1.0 GiB \(model.weights.h5: "
                             r"1.0 GiB\), more than the 256.0 MiB allowed"):
        dcm_keras.load_network(str(bomb))


def test_an_oversized_config_member_is_refused(small_model_file, tmp_path):
    good = _members(small_model_file)
    path = tmp_path / "big_config.keras"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("metadata.json", good["metadata.json"])
        archive.writestr("config.json", good["config.json"] + b" " * archives.MAX_JSON_BYTES)
        archive.writestr("model.weights.h5", good["model.weights.h5"])
    with pytest.raises(dcm_keras.UserError, match=r"config.json expands to 32.0 MiB, more than"):
        dcm_keras.load_network(str(path))


def test_the_cap_leaves_genuine_files_alone_and_can_be_set(small_model_file):
    assert dcm_keras.load_network(small_model_file).count_params() == 15
    with pytest.raises(dcm_keras.UserError, match="max_expanded_bytes=N"):
        dcm_keras.load_network(small_model_file, max_expanded_bytes=1000)
    # Keras stores members uncompressed: a large genuine file is within 20 x its own size.
    assert archives.expanded_cap(2**31) == 20 * 2**31
    assert archives.expanded_cap(1000) == archives.MIN_EXPANDED_CAP


def test_config_depth_counts_brackets_outside_strings_only():
    assert archives.config_depth(b"3") == 0
    assert archives.config_depth(b'{"a": "[[[\\"[[{", "b": [1, {"c": []}]}') == 4
    assert archives.config_depth(b'["\\\\", [[]]]') == 3  # an escaped backslash ends no string
    assert archives.config_depth(b"[" * 100_000 + b"]" * 100_000) == 100_000


def test_a_deeply_nested_config_is_one_clear_error(small_model_file, tmp_path):
    good = _members(small_model_file)
    path = tmp_path / "deep.keras"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("metadata.json", good["metadata.json"])
        archive.writestr("config.json", b'{"class_name": "Functional", "config": '
                         + b"[" * 100_000 + b"]" * 100_000 + b"}")
        archive.writestr("model.weights.h5", good["model.weights.h5"])
    with pytest.raises(dcm_keras.UserError, match="config.json nests 100001 levels deep"):
        dcm_keras.load_network(str(path))


def test_real_configs_nest_far_below_the_limit(small_model_file, tmp_path):
    dcm = dcm_keras.DCM([dcm_keras.networks.build("wrn_10_1", 10, input_shape=(32, 32, 3))],
                        connections="none")
    exported = dcm.export_network(0, preprocessing=data.get_info("cifar10"))
    for name, model in (("dcm", dcm), ("net1", exported)):
        path = str(tmp_path / f"{name}.keras")
        model.save(path) if name == "dcm" else dcm_keras.save_network(model, path)
        depth = archives.config_depth(_members(path)["config.json"])
        assert 4 <= depth <= archives.MAX_CONFIG_DEPTH // 5, (name, depth)


def test_a_recursion_error_within_the_limit_is_one_clear_error(small_model_file, monkeypatch):
    def recurse(*args, **kwargs):
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(keras.saving, "load_model", recurse)
    with pytest.raises(dcm_keras.UserError, match="config.json nests too deeply to load"):
        dcm_keras.load_network(small_model_file)
