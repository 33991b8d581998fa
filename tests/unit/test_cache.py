"""The activation cache: atomic, checksummed, never unpickled."""

from __future__ import annotations

import numpy as np
import pytest

from geomcheck.run.cache import ArrayCache, CacheWarning, cache_key


def arrays():
    return {"a/pre/mean": np.arange(6, dtype=np.float64).reshape(2, 3), "a/pre/count": np.array([4])}


def test_key_is_stable_and_order_independent():
    assert cache_key({"x": 1, "y": [1, 2]}) == cache_key({"y": [1, 2], "x": 1})
    assert cache_key({"x": 1}) != cache_key({"x": 2})


def test_store_then_load_round_trips_arrays_and_meta(tmp_path):
    cache = ArrayCache(tmp_path)
    cache.store("k", arrays(), {"model": "m"})
    loaded, meta = cache.load("k")
    np.testing.assert_array_equal(loaded["a/pre/mean"], arrays()["a/pre/mean"])
    assert meta == {"model": "m"}
    assert [p.name for p in tmp_path.iterdir()] == ["k.safetensors"]  # no temporary file left


def test_second_get_or_compute_does_not_compute(tmp_path):
    cache, calls = ArrayCache(tmp_path), []

    def compute():
        calls.append(1)
        return arrays()

    first = cache.get_or_compute("k", compute, {})
    second = cache.get_or_compute("k", compute, {})
    assert (first[2], second[2], len(calls)) == (False, True, 1)


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_corrupt_entry_is_detected_and_recomputed(tmp_path, damage):
    cache = ArrayCache(tmp_path)
    path = cache.store("k", arrays(), {})
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) - 5]
    else:
        data[-3] ^= 0xFF  # a flipped bit in the tensor bytes: only the checksum can see it
    path.write_bytes(bytes(data))
    with pytest.warns(CacheWarning, match="corrupt"):
        result, _, hit = cache.get_or_compute("k", arrays, {})
    assert not hit
    np.testing.assert_array_equal(result["a/pre/mean"], arrays()["a/pre/mean"])
    assert cache.load("k") is not None  # rewritten whole


WRITER = """
import signal, sys, numpy as np
# a user's Ctrl-C reaches a foreground writer with Python's handler; a suite started as a background job
# (`make test &`) hands its children SIGINT ignored, and Python then installs no handler at all
signal.signal(signal.SIGINT, signal.default_int_handler)
from pathlib import Path
from geomcheck.run.cache import ArrayCache
cache = ArrayCache(Path(sys.argv[1]))
big = {"x": np.random.default_rng(0).standard_normal((64, 1024, 1024)).astype(np.float32)}  # 256 MB
print("ready", flush=True)
i = 0
while True:
    cache.store(f"k{i % 3}", big, {"i": i})
    i += 1
"""


@pytest.mark.slow
@pytest.mark.parametrize("signal_name", ["SIGINT", "SIGKILL"])
def test_killing_a_writer_mid_write_leaves_every_entry_whole(tmp_path, signal_name):
    import signal
    import subprocess
    import sys
    import time

    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob("*.safetensors")) and time.monotonic() < deadline:
        time.sleep(0.05)  # wait for the first whole entry, however slow the machine
    time.sleep(0.3)  # then strike during a later write (each 256 MB write takes longer than this)
    proc.send_signal(getattr(signal, signal_name))
    proc.wait(timeout=60)
    cache = ArrayCache(tmp_path)
    entries = sorted(tmp_path.glob("*.safetensors"))
    assert entries, "the writer finished no entry before the signal"
    for entry in entries:
        arrays, meta = cache.load(entry.stem)  # checksum verified: never a torn entry
        assert arrays["x"].shape == (64, 1024, 1024)
    if signal_name == "SIGINT":  # Python unwinds: the temporary file is removed too
        assert not list(tmp_path.glob(".*.tmp"))
