"""README.md and the guides in docs/: every Python block runs or says why not, links resolve.

Convention (docs/layout.md, "Tests"): the line right before a ```python block is either
`<!-- run by: tests/FILE.py::test_NAME -->`, naming the test that executes it (the tests in this
file pick their blocks by that comment), or `<!-- not run: REASON -->`. A block of Python in a
fence not labelled `python`, or indented as a code block, is refused: it would escape the rule.
"""

import os
import pathlib
import re
import subprocess
import sys
import warnings

import keras
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = [README] + sorted((REPO / "docs").glob("*.md")) + [REPO / "docs" / "results" / "README.md"]
MAX_README_LINES = 300
# docs/accuracy.md is the user's answer; the record of every run is docs/results/README.md.
MAX_ACCURACY_LINES = 300
# Guides a teammate is writing: a link to one is checked once it exists (remove when committed).
PENDING = {REPO / "docs" / "run_directory.md"}

FENCE = re.compile(r"^```([\w-]*)[^\n]*\n(.*?)^```[ \t]*$", re.M | re.S)
MARKER = re.compile(r"<!--\s*(not run|run by):\s*(.*?)\s*-->")
LOOKS_LIKE_PYTHON = re.compile(r"^\s*(import \w|from [\w.]+ import \w)", re.M)
RUN_BY = re.compile(r"(tests/[\w/]+\.py)::(test_\w+)")


def _rel(path):
    return path.relative_to(REPO).as_posix()


def _blocks(path):
    """(language, code, marker kind, marker text, line number) of every fenced block."""
    text = path.read_text()
    out = []
    for match in FENCE.finditer(text):
        before = text[:match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        marker = MARKER.fullmatch(before.strip())
        line = text.count("\n", 0, match.start()) + 1
        out.append((match.group(1), match.group(2), marker.group(1) if marker else None,
                    marker.group(2) if marker else None, line))
    return out


def _marked(path, test_name):
    """The python blocks of `path` whose marker names `test_name`, in order."""
    return [code for lang, code, kind, what, _ in _blocks(path)
            if lang == "python" and kind == "run by" and what.endswith("::" + test_name)]


def _outside_fences(text):
    return FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)


# --- The rule itself ------------------------------------------------------------------------

def test_readme_is_short():
    lines = len(README.read_text().splitlines())
    assert lines <= MAX_README_LINES, f"README.md has {lines} lines; move detail into docs/"


def test_accuracy_page_is_short():
    lines = len((REPO / "docs" / "accuracy.md").read_text().splitlines())
    assert lines <= MAX_ACCURACY_LINES, (
        f"docs/accuracy.md has {lines} lines (at most {MAX_ACCURACY_LINES}); move the record of "
        "runs into docs/results/README.md")


@pytest.mark.parametrize("path", DOCS, ids=_rel)
def test_every_python_block_runs_or_says_why_not(path):
    problems = []
    for lang, code, kind, what, line in _blocks(path):
        where = f"{_rel(path)}:{line}"
        if lang != "python":
            if LOOKS_LIKE_PYTHON.search(code) and lang not in ("bash", "sh", "shell"):
                problems.append(f"{where}: Python in a ```{lang} block; label it ```python")
            continue
        if kind is None:
            problems.append(f"{where}: no <!-- run by: ... --> or <!-- not run: reason --> line")
        elif kind == "not run":
            if len(what.split()) < 3:
                problems.append(f"{where}: 'not run' needs a reason, got {what!r}")
        else:
            ref = RUN_BY.fullmatch(what)
            if not ref:
                problems.append(f"{where}: 'run by' must name tests/FILE.py::test_NAME, got {what!r}")
                continue
            test_file = REPO / ref.group(1)
            if not test_file.exists():
                problems.append(f"{where}: {ref.group(1)} does not exist")
            elif f"def {ref.group(2)}(" not in test_file.read_text():
                problems.append(f"{where}: {ref.group(1)} has no {ref.group(2)}")
            elif path.name not in test_file.read_text():
                problems.append(f"{where}: {ref.group(1)} never reads {path.name}")
    for number, text in enumerate(_outside_fences(path.read_text()).splitlines(), 1):
        if re.match(r"( {4}|\t)\s*(import \w|from [\w.]+ import \w)", text):
            problems.append(f"{_rel(path)}:{number}: Python in an indented block; fence it")
    assert not problems, "\n".join(problems)


def test_readme_markers_name_the_tests_that_read_those_blocks():
    """tests/test_readme.py reads README blocks 0 and 1; test_heads.py the one with attach_heads."""
    python = [(code, what) for lang, code, kind, what, _ in _blocks(README) if lang == "python"]
    assert python[0][1] == "tests/test_readme.py::test_readme_api_example_runs"
    assert python[1][1] == "tests/test_readme.py::test_readme_byo_network_example_builds"
    heads = [what for code, what in python if "attach_heads" in code]
    assert heads == ["tests/networks/test_heads.py::test_readme_your_own_backbone_example_runs"]


def _slug(heading):
    """GitHub's anchor for a heading: lower case, punctuation and symbols dropped, spaces to '-'."""
    text = re.sub(r"[`*]", "", heading.strip().lower())
    text = "".join(c for c in text if c.isalnum() or c in " -_")
    return text.replace(" ", "-")


def _anchors(path):
    seen, anchors = {}, set()
    for line in _outside_fences(path.read_text()).splitlines():
        match = re.match(r"#{1,6}\s+(.*)", line)
        if match:
            slug = _slug(match.group(1))
            anchors.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
            seen[slug] = seen.get(slug, 0) + 1
    return anchors


def test_slug_matches_github():
    assert _slug("A keras.applications pair (MobileNetV3Small, 128 × 200, CPU)") == \
        "a-kerasapplications-pair-mobilenetv3small-128--200-cpu"
    assert _slug("Scoring an exported network: `experiments.evaluate`") == \
        "scoring-an-exported-network-experimentsevaluate"
    assert _slug("Your own backbone: `attach_heads`") == "your-own-backbone-attach_heads"


@pytest.mark.parametrize("path", DOCS, ids=_rel)
def test_relative_links_resolve(path):
    problems, pending = [], []
    text = _outside_fences(path.read_text())
    text = re.sub(r"`[^`\n]*`", "", text)  # code spans are not links
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.exists():
            (pending if dest in PENDING else problems).append(f"{_rel(path)}: {target}")
            continue
        if anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            problems.append(f"{_rel(path)}: {target} (no such heading in {dest.name})")
    if pending:
        warnings.warn(f"links to guides not written yet: {pending}")
    assert not problems, "\n".join(problems)


# --- The guides' blocks, run ---------------------------------------------------------------

@pytest.mark.large
def test_backbones_keras_hub_block():
    pytest.importorskip("keras_hub")  # pip install -e '.[hub]'
    blocks = _marked(REPO / "docs" / "backbones.md", "test_backbones_keras_hub_block")
    assert len(blocks) == 1
    namespace = {}
    exec(blocks[0], namespace)  # noqa: S102 - our own guide
    dcm = namespace["dcm"]
    assert namespace["nets"][0].branch_points == ["stack0_block0_add", "stack1_block0_add"]
    assert all(net == ["aux1", "aux2", "logits"] for net in dcm.heads)
    assert len(dcm.edges) == 18 and dcm.compiled


def _exported_run(tmp_path):
    """A Fashion-MNIST network as train.py exports it, at the recipe's path runs/x/net1.keras."""
    import dcm_keras
    from dcm_keras import data, networks

    info = data.get_info("fashion_mnist")
    nets = [networks.build("wrn_10_1", info.num_classes, input_shape=info.image_shape)
            for _ in range(2)]
    (tmp_path / "runs" / "x").mkdir(parents=True)
    dcm_keras.save_network(dcm_keras.DCM(nets).export_network(0, preprocessing=info),
                           str(tmp_path / "runs" / "x" / "net1.keras"))


def _run(code, cwd):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.mark.large
@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="SavedModel and TFLite")
def test_shipping_recipe(tmp_path):
    from dcm_keras import data

    blocks = _marked(REPO / "docs" / "shipping.md", "test_shipping_recipe")
    assert len(blocks) == 2  # the recipe, then reading the contract back
    _exported_run(tmp_path)
    # "no dcm_keras needed": the recipe runs in a process where importing it fails.
    out = _run("import sys; sys.modules['dcm_keras'] = None\n" + "\n".join(blocks), tmp_path)
    lines = [line for line in out.splitlines() if not line.startswith(" ")]
    assert lines[0] == "(None, 28, 28, 1)"
    assert float(lines[1]) < 1e-4  # SavedModel against Keras, same raw images
    mean, std = re.findall(r"\[([^\]]+)\]", lines[-1])
    assert float(mean) == pytest.approx(data.FASHION_MNIST_MEAN[0], rel=1e-6)
    assert float(std) == pytest.approx(data.FASHION_MNIST_STD[0], rel=1e-6)
    assert (tmp_path / "net1_saved" / "saved_model.pb").exists()
    assert (tmp_path / "net1.tflite").stat().st_size > 100_000


@pytest.mark.large
@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="ONNX through tf2onnx")
def test_shipping_onnx_block(tmp_path):
    pytest.importorskip("tf2onnx")  # pip install -e '.[onnx]'
    pytest.importorskip("onnxruntime")
    blocks = _marked(REPO / "docs" / "shipping.md", "test_shipping_onnx_block")
    assert len(blocks) == 1
    _exported_run(tmp_path)
    out = _run(blocks[0], tmp_path)
    assert float(out.strip().splitlines()[-1]) < 1e-4
    assert (tmp_path / "net1.onnx").exists()
