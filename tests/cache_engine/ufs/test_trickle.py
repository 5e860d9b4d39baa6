"""An http(s) source that sends a byte at a time is given up at the dataset's sourceTimeout."""

from __future__ import annotations

import time

import pytest

from cache_engine.spec import parse_parameters
from cache_engine.ufs import UfsUnavailable
from cache_engine.ufs.http import HttpUfs
from tests.support.http_source import HttpSource

TIMEOUT = 1.0
MARGIN = 3.0


def test_a_dripping_answer_is_given_up_after_the_source_timeout(tmp_path):
    (tmp_path / "f.bin").write_bytes(bytes(range(256)) * 256)  # 64 KiB: over an hour at 50 ms
    with HttpSource(tmp_path) as http:
        ufs = HttpUfs(parse_parameters({"source": http.url, "sourceTimeout": str(TIMEOUT)}))
        try:
            assert ufs.read("f.bin", 0, 16) == bytes(range(16))
            http.drip = 0.05
            start = time.monotonic()
            with pytest.raises(UfsUnavailable, match="read timed out"):
                ufs.read("f.bin", 0, 64 << 10)
            assert time.monotonic() - start < TIMEOUT * MARGIN
            http.drip = 0.0  # the server recovers: the next read is whole
            assert ufs.read("f.bin", 0, 64 << 10) == bytes(range(256)) * 256
        finally:
            http.drip = 0.0
            ufs.close()
