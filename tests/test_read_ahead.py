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


def reader_children() -> list[int]:
    """PIDs of this process's children that are molgiae reader processes (Linux /proc)."""
    import os
    from pathlib import Path

    pids = []
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():
        pids += [int(p) for p in (task / "children").read_text().split()]
    found = []
    for pid in pids:
        try:
            if b"_child_main" in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
        except FileNotFoundError:
            pass
    return found


def test_interrupted_embed_with_reader_process_leaves_no_file_and_no_process(tiny_model, qm9_fixture_npz, tmp_path):
    from molgiae.embedding import embed_to_hdf5

    seen = []

    def progress(k):
        seen.append(k)
        if len(seen) == 90:
            raise KeyboardInterrupt

    out = tmp_path / "emb.h5"
    with pytest.raises(KeyboardInterrupt):
        embed_to_hdf5(tiny_model, [str(qm9_fixture_npz)] * 3, out, batch_size=8, window_batches=2,
                      progress=progress, read_ahead=True)
    assert not out.exists() and not any(".tmp-" in p.name for p in tmp_path.iterdir())
    assert reader_children() == []


def test_ctrl_c_on_the_command_stops_both_processes(tiny_checkpoint, qm9_fixture_npz, tmp_path):
    """SIGINT to the process group of a running `molgiae embed` (what Ctrl-C does): both
    processes end, no output file, no temporary file."""
    import os
    import signal
    import subprocess
    import sys

    recs = list(iter_records(qm9_fixture_npz))
    blocks = [molblock(r.elements, r.coords, r.name) for r in recs]
    sdf = write_sdf(tmp_path / "many.sdf", blocks * 40)
    out = tmp_path / "emb.h5"
    proc = subprocess.Popen(
        [sys.executable, "-m", "molgiae", "embed", str(sdf), "-o", str(out), "--model", str(tiny_checkpoint),
         "--device", "cpu", "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while not any(".tmp-" in p.name for p in tmp_path.iterdir()):  # embedding has begun
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    proc.communicate(timeout=60)
    assert proc.returncode != 0
    time.sleep(0.5)
    assert not out.exists() and not any(".tmp-" in p.name for p in tmp_path.iterdir())
    assert processes_in_group(proc.pid) == []


def processes_in_group(pgid: int) -> list[int]:
    """PIDs whose process group is ``pgid`` (Linux /proc; field 5 of /proc/PID/stat)."""
    from pathlib import Path

    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


def test_allocator_settings_apply_on_glibc():
    """The `molgiae` command's allocator tuning and the per-window heap trim (glibc Linux, where
    CI and clusters run; elsewhere both are documented no-ops). Tuned, a freed 64 MiB block stays
    in the heap (untuned, glibc would have served it by mmap and unmapped it on free); the trim
    then gives it back to the system."""
    import os
    import platform

    from molgiae.runtime import release_free_memory, tune_allocator

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("glibc-only settings")
    assert tune_allocator() is True and tune_allocator() is True

    def resident_mib() -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    block = np.ones(64 << 17)  # 64 MiB, every page touched
    before = resident_mib()
    del block
    kept = resident_mib()
    release_free_memory()
    after = resident_mib()
    assert kept > before - 16, (before, kept)  # tuned: the freed block is kept for reuse
    assert after < kept - 32, (kept, after)  # the trim returned it
