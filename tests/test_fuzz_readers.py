"""Fuzzing of every reader of jal's files: damaged, truncated, foreign or random files get a JalError, never
another exception, and never hang.

Each example damages one file of a valid run directory, filter directory or MNIST IDX folder (its bytes mutated
or cut short, random JSON of the wrong shape, a random .npy header, dtype or shape, a pickle, a folder in its
place, ...), then calls every reader and the directory checks on it. JAL_FUZZ_EXAMPLES sets how many damaged
files are made in all, shared between the tests (default: about a minute on two cores):

    JAL_FUZZ_EXAMPLES=100000 .venv/bin/pytest tests/test_fuzz_readers.py --hypothesis-show-statistics
"""

from __future__ import annotations

import contextlib
import copy
import gzip
import io
import json
import os
import shutil
import signal
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
from conftest import idx_bytes, synthetic_mnist
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jal import store
from jal.data.mnist import IDX_FILES, IMAGES_MAGIC, LABELS_MAGIC, load_idx_dir, read_idx
from jal.errors import JalError
from jal.report import filtering_rows, runs_rows, table_rows
from tests.test_run_dir_checks import PARAMS, filter_files, npy_bytes, run_files, write_dir

EXAMPLES = int(os.environ.get("JAL_FUZZ_EXAMPLES", "3000"))
FUZZ_TESTS = 3  # the tests below share the examples
SECONDS = 10  # far beyond what reading a file this small takes: more is a hang
fuzz = settings(
    max_examples=max(1, -(-EXAMPLES // FUZZ_TESTS)),  # rounded up: at least EXAMPLES in all
    deadline=None,  # the alarm below catches hangs; timing varies too much between machines
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


class Hang(BaseException):
    """Not an Exception, so that no reader's handler can take it for a read error."""


@contextlib.contextmanager
def within(seconds: float):
    def interrupt(signum, frame):
        raise Hang(f"still reading after {seconds} s")

    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# Damage -----------------------------------------------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
# Values one step from valid ones: the edges of indices, sizes and ranges.
NEAR = st.sampled_from(
    [-1, 0, 1, 2, 3, 9, 10, 11, 2**31, 2**64, 10**400, 0.5, -0.5, 1.5, float("nan"), float("inf"), -float("inf"),
     1e308, "", "0", None, True, False, [], {}, [0], [-1], [10]]
)  # fmt: skip


@st.composite
def mutated_bytes(draw, valid: bytes) -> bytes:
    data = bytearray(valid)
    for _ in range(draw(st.integers(1, 8))):
        # Headers hold most of the structure: aim there half of the time.
        at = draw(st.integers(0, min(len(data), 160)) | st.integers(0, len(data)))
        operation = draw(st.sampled_from(["set", "insert", "delete"]))
        if operation == "set" and at < len(data):
            data[at] = draw(st.integers(0, 255))
        elif operation == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        else:
            del data[at : at + draw(st.integers(1, 8))]
    return bytes(data)


def _paths(value, path=()):
    """Every place in a JSON value: the keys and indices that lead to it."""
    yield path
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, inner in items:
        yield from _paths(inner, (*path, key))


@st.composite
def mutated_json(draw, valid):
    """`valid` with one of its values replaced (a nearby value or random JSON) or removed."""
    value = copy.deepcopy(valid)
    path = draw(st.sampled_from(list(_paths(value))))
    if not path:
        return draw(JSON)
    parent = value
    for key in path[:-1]:
        parent = parent[key]
    if draw(st.integers(0, 3)) == 0:
        del parent[path[-1]]
    else:
        parent[path[-1]] = draw(NEAR | JSON)
    return value


@st.composite
def json_file(draw, valid: bytes) -> bytes:
    text = draw(
        st.sampled_from(["", " \n", "[" * 10_000, '{"a": ' * 5_000, '{"a": 1', "\ufeff{}", "null", "NaN"])
        | JSON.map(json.dumps)
        | mutated_json(json.loads(valid)).map(json.dumps)
    )
    return text.encode("utf-8", "surrogatepass")


@st.composite
def jsonl_file(draw, valid: bytes) -> bytes:
    lines = [json.loads(line) for line in valid.decode().splitlines(keepends=True) if line.endswith("\n")]
    at = draw(st.integers(0, len(lines) - 1))
    operation = draw(st.sampled_from(["mutate", "insert", "delete", "garbage", "unterminated"]))
    if operation == "mutate":
        lines[at] = draw(mutated_json(lines[at]))
    elif operation == "insert":
        lines.insert(at, draw(NEAR | JSON))
    elif operation == "delete":
        del lines[at]
    text = "".join(json.dumps(line) + "\n" for line in lines)
    if operation == "garbage":
        text = text.replace("\n", "\n" + draw(st.text(max_size=12)) + "\n", 1)
    elif operation == "unterminated":
        text = text[: draw(st.integers(0, len(text)))]
    return text.encode("utf-8", "surrogatepass")


DTYPES = ["<f4", ">f4", "<f8", "<f2", "<i8", ">i8", "<i4", "|u1", "<u8", "|b1", "<c8", "<U3", "|S2", "|V4",
          "<M8[s]", [("a", "<f4")], [("a", "<i8"), ("b", "|u1")]]  # fmt: skip
DESCRS = ["'<f4'", "'<i8'", "'|O'", "'<f4", "'x'", "5", "None", "[('a', '<f4')]", "'<U99999999999'", "{}", "'<f4'}"]
SHAPES = ["()", "(10,)", "(4, 10)", "(-1,)", "(4, -10)", "(2**62,)", "(4611686018427387904, 4)", "(1.5,)",
          "('a',)", "[4, 10]", "(4, 10, 0)", "(0, 10)"]  # fmt: skip


@st.composite
def npy_array(draw) -> bytes:
    """A well-formed .npy file of any dtype and shape."""
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    shape = tuple(draw(st.lists(st.integers(0, 12), max_size=3)))
    raw = draw(st.binary(min_size=dtype.itemsize * int(np.prod(shape)), max_size=dtype.itemsize * int(np.prod(shape))))
    array = np.frombuffer(raw, dtype).reshape(shape)
    return npy_bytes(np.asfortranarray(array) if draw(st.booleans()) else array)


@st.composite
def npy_pickle(draw) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.array([draw(JSON)], dtype=object), allow_pickle=True)
    return buffer.getvalue()


@st.composite
def npy_header(draw) -> bytes:
    """A .npy file with a hand-made header: any descr, shape, order, version and stated length."""
    descr = draw(st.sampled_from(DESCRS) | st.text(max_size=10).map(repr))
    shape = draw(st.sampled_from(SHAPES) | st.lists(st.integers(-3, 2**64), max_size=3).map(lambda s: repr(tuple(s))))
    order = draw(st.sampled_from(["False", "True", "0", "'x'"]))
    header = "{'descr': %s, 'fortran_order': %s, 'shape': %s, }" % (descr, order, shape)  # noqa: UP031
    header = (header + draw(st.text(max_size=4)) + " " * 16)[: draw(st.integers(1, 200))] + "\n"
    encoded = header.encode("utf-8", "surrogatepass")
    major = draw(st.sampled_from([1, 2, 3, 9]))
    stated = draw(st.just(len(encoded)) | st.integers(0, 70_000))
    length = struct.pack("<H" if major == 1 else "<I", min(stated, 65535) if major == 1 else stated)
    return b"\x93NUMPY" + bytes([major, 0]) + length + encoded + draw(st.binary(max_size=200))


def npy_file(valid: bytes):
    return npy_array() | npy_pickle() | npy_header() | mutated_bytes(valid) | st.just(valid[:-4] + valid[-3:])


@st.composite
def damaged(draw, valid: bytes, name: str) -> bytes | str:
    """New content for the file `name`, or "folder" or "missing" for a folder in its place or no file."""
    formed = {".json": json_file, ".jsonl": jsonl_file, ".npy": npy_file}[Path(name).suffix](valid)
    return draw(
        formed
        | mutated_bytes(valid)
        | st.integers(0, len(valid) - 1).map(lambda n: valid[:n])  # cut short
        | st.binary(max_size=300)
        | st.sampled_from(["folder", "missing"])
    )


def put(directory: Path, files: dict[str, bytes], name: str, content: bytes | str) -> None:
    """`directory` with the valid `files`, but `content` for `name`."""
    if directory.exists():
        shutil.rmtree(directory)
    write_dir(directory, files)
    if content == "missing":
        (directory / name).unlink()
    elif content == "folder":
        (directory / name).unlink()
        (directory / name).mkdir()
        (directory / name / "x").write_bytes(b"x")
    else:
        (directory / name).write_bytes(content)


def only_jal_errors(directory: Path, *readers) -> list:
    """What each reader returns; a JalError naming `directory` counts as an answer, any other exception fails."""
    results = []
    with within(SECONDS):
        for reader in readers:
            try:
                results.append(reader(directory))
            except JalError as e:
                assert str(directory) in str(e), f"{e} does not name the directory"
                results.append(e)
    return results


# The tests --------------------------------------------------------------------------------------------------

RUN, FILTER = run_files(), filter_files()
TEMPLATE = {"w": np.zeros(PARAMS, np.float32)}
RUN_READERS = (
    store.read_config,
    store.read_metrics,
    lambda d: store.read_scores(d, "pool")[:],
    lambda d: store.read_scores(d, "test")[:],
    store.read_pool_indices,
    store.read_history,
    store.read_analysis,
    lambda d: store.read_model(d, 1, TEMPLATE),
    store.is_filter_dir,
)
FILTER_READERS = (store.read_config, store.read_filtering, store.read_pool_indices)


def analysis_table(run_dir: Path):
    analysis = store.read_analysis(run_dir)
    return None if analysis is None else table_rows(analysis)


@pytest.fixture(scope="module")
def folder():
    with tempfile.TemporaryDirectory() as tmp:
        yield Path(tmp)


@pytest.mark.slow
@fuzz
@given(data=st.data())
def test_run_directory_readers(folder, data):
    name = data.draw(st.sampled_from(sorted(RUN)), label="file")
    put(folder / "run", RUN, name, data.draw(damaged(RUN[name], name), label="content"))
    *_, checked = only_jal_errors(folder / "run", *RUN_READERS, store.check_directory)
    if checked is None:  # what passes the checks is what the report and the figures can use
        only_jal_errors(folder / "run", lambda d: runs_rows([d]), analysis_table)


@pytest.mark.slow
@fuzz
@given(data=st.data())
def test_filter_directory_readers(folder, data):
    name = data.draw(st.sampled_from(sorted(FILTER)), label="file")
    put(folder / "filter", FILTER, name, data.draw(damaged(FILTER[name], name), label="content"))
    *_, checked = only_jal_errors(folder / "filter", *FILTER_READERS, store.check_directory)
    if checked is None:
        only_jal_errors(folder / "filter", filtering_rows)


def _idx_files() -> dict[str, bytes]:
    arrays = synthetic_mnist(3, 2)
    magics = [IMAGES_MAGIC if field.endswith("images") else LABELS_MAGIC for field in IDX_FILES]
    return {name: idx_bytes(a, m) for (name, _), a, m in zip(IDX_FILES.values(), arrays, magics, strict=True)}


IDX = _idx_files()
# Powers of two: products that overflow 64 bits to a small number.
DIMENSIONS = st.integers(0, 2**32 - 1) | st.integers(0, 31).map(lambda e: 2**e) | st.sampled_from([0, 1, 3, 28])


@st.composite
def idx_header(draw, valid: bytes) -> bytes:
    """`valid` with other dimensions (and sometimes another magic number) in its header."""
    if draw(st.booleans()):
        magic = valid[:4]
    else:
        magic = bytes([0, 0, draw(st.sampled_from([8, 9, 0x0D, 0])), draw(st.integers(0, 255))])
    ndim = magic[3]
    dims = b"".join(d.to_bytes(4, "big") for d in draw(st.lists(DIMENSIONS, min_size=ndim % 8, max_size=ndim % 8)))
    return magic + dims + valid[4 + 4 * valid[3] :][: draw(st.integers(0, 3000))]


@pytest.mark.slow
@fuzz
@given(data=st.data())
def test_idx_readers(folder, data):
    name = data.draw(st.sampled_from(sorted(IDX)), label="file")
    valid = IDX[name]
    content = data.draw(
        idx_header(valid) | mutated_bytes(valid) | st.integers(0, len(valid) - 1).map(lambda n: valid[:n])
        | st.binary(max_size=300) | st.sampled_from(["folder", "missing"]),
        label="content",
    )  # fmt: skip
    gzipped = data.draw(st.booleans(), label="gzipped")
    if gzipped and isinstance(content, bytes):
        content = gzip.compress(content, mtime=0)
        if data.draw(st.booleans(), label="gzip damaged"):
            content = data.draw(mutated_bytes(content) | st.integers(0, len(content)).map(lambda n: content[:n]))
    files = {n: gzip.compress(b, mtime=0) if gzipped else b for n, b in IDX.items()}
    suffix = ".gz" if gzipped else ""
    directory = folder / "mnist"
    put(directory, {n + suffix: b for n, b in files.items()}, name + suffix, content)
    magic = IMAGES_MAGIC if "images" in name else LABELS_MAGIC
    only_jal_errors(directory, lambda d: read_idx(d / (name + suffix), magic=magic), load_idx_dir)


@pytest.mark.parametrize("dims", [(2**31, 2**31, 2**16), (2**32 - 1, 2**32 - 1, 0)])
def test_idx_dimensions_beyond_64_bits(dims, tmp_path):
    """A header whose dimensions multiply past 2**64: numpy's product wraps around, so the size is computed exactly."""
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(IMAGES_MAGIC.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims))
    with pytest.raises(JalError, match="train-images-idx3-ubyte: "):
        read_idx(path, magic=IMAGES_MAGIC)
