"""The reader process (molgiae.data.read_ahead): same items as reading in line, failures
reported, the child stopped when the consumer stops. Real files, real RDKit, a real child."""
from __future__ import annotations

import time

import numpy as np
import pytest

from molgiae.data.read_ahead import ReadAhead, ReadAheadError, positioned_items, read_positioned
from molgiae.data.readers import iter_records
from molgiae.data.record import ConformerRecord, RecordError
from tests.molfiles import molblock, write_sdf

SYMBOLS = {1: "H", 6: "C", 7: "N", 8: "O", 9: "F"}


@pytest.fixture(scope="module")
def inputs(qm9_fixture_npz, tmp_path_factory) -> list[str]:
    """QM9 npz, an SDF with a malformed block in the middle, an XYZ (SMILES perceived) with a NaN
    frame, a missing file."""
    tmp = tmp_path_factory.mktemp("read_ahead")
    recs = [r for r in iter_records(qm9_fixture_npz)][:6]
    blocks = [molblock(r.elements, r.coords, f"m{k}") for k, r in enumerate(recs[:3])]
    sdf = write_sdf(tmp / "few.sdf", blocks[:2] + ["garbage\nnot a molblock\n"] + blocks[2:])
    frames = []
    for k, r in enumerate(recs[3:]):
        coords = r.coords.copy()
        if k == 1:
            coords[0, 0] = np.nan
        frames.append(f"{r.n_atoms}\nx{k}\n" + "".join(
            f"{SYMBOLS[z]} {x:.6f} {y:.6f} {w:.6f}\n" for z, (x, y, w) in zip(r.elements, coords)))
    xyz = tmp / "frames.xyz"
    xyz.write_text("".join(frames))
    return [str(qm9_fixture_npz), str(sdf), str(xyz), str(tmp / "missing.sdf")]


def same(a: list, b: list) -> None:
    assert [p for p, _ in a] == [p for p, _ in b]
    for (_, x), (_, y) in zip(a, b):
        assert type(x) is type(y)
        if isinstance(x, RecordError):
            assert (x.source, x.index, x.reason, x.name) == (y.source, y.index, y.reason, y.name)
        else:
            assert (x.source, x.index, x.name, x.smiles, x.properties) == (y.source, y.index, y.name, y.smiles, y.properties)
            assert np.array_equal(x.elements, y.elements) and np.array_equal(x.coords, y.coords)


@pytest.mark.parametrize("shard", [None, (1, 3)])
def test_reader_process_gives_the_items_of_reading_in_line(inputs, shard):
    in_line, sources = read_positioned(inputs, shard=shard, perceive=True)
    expected = list(in_line)
    ahead, ahead_sources = read_positioned(inputs, shard=shard, perceive=True, read_ahead=True)
    got = list(ahead)
    same(got, expected)
    assert ahead_sources == sources and len(sources) == 4
    kinds = {type(x).__name__ for _, x in got}
    assert kinds == {"ConformerRecord", "RecordError"}
    if shard is None:
        xyz = [x for _, x in got if isinstance(x, ConformerRecord) and x.source == inputs[2]]
        assert xyz and all(x.smiles for x in xyz)  # perceived in the child
        reasons = [x.reason for _, x in got if isinstance(x, RecordError)]
        assert any("could not parse" in r for r in reasons) and any("non-finite" in r for r in reasons)
        assert any("file not found" in r for r in reasons)
    else:
        assert all(p % 3 == 1 for p, _ in got)


def test_small_chunks_and_depth_keep_order(inputs):
    expected = list(positioned_items(inputs))
    same(list(ReadAhead(inputs, chunk=1, depth=1)), expected)


def test_a_failing_reader_is_reported_with_its_traceback(inputs):
    with pytest.raises(ReadAheadError, match="(?s)reader process failed.*TypeError: read_records"):
        list(ReadAhead(inputs, {"no_such_option": 1}))


def test_abandoned_iteration_stops_the_reader(qm9_fixture_npz):
    reader = ReadAhead([str(qm9_fixture_npz)] * 50, chunk=4, depth=2)
    it = iter(reader)
    first = [next(it) for _ in range(3)]
    assert [p for p, _ in first] == [0, 1, 2]
    it.close()  # the generator's finally: close()
    deadline = time.monotonic() + 10
    while reader._process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert reader._process.poll() is not None
    assert not reader._pump.is_alive()
