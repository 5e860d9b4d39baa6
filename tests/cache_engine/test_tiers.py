"""Node tier flags: `--tier NAME:PATH:SIZE[:HIGH:LOW]`."""

from __future__ import annotations

import pytest

from cache_engine.tiers import Tier, parse_tier, parse_tiers
from eddy.base.errors import InvalidArgument


def test_tier_with_defaults_and_with_watermarks():
    assert parse_tier("MEM:/dev/shm/eddy:4Gi") == Tier("MEM", "/dev/shm/eddy", 4 << 30, 0.95,
                                                       0.85)
    assert parse_tier("SSD:/var/cache/eddy/:100G:0.9:0.5") == Tier(
        "SSD", "/var/cache/eddy", 100 * 10**9, 0.9, 0.5)


@pytest.mark.parametrize("flag, problem", [
    ("MEM:/dev/shm", "expected NAME:PATH:SIZE"),
    ("MEM:/a:4Gi:0.9", "expected NAME:PATH:SIZE"),
    ("1MEM:/a:4Gi", "not a tier name"),
    ("MEM:rel/dir:4Gi", "must be absolute"),
    ("MEM:/:4Gi", "root directory"),
    ("MEM:/a:lots", "not a size"),
    ("MEM:/a:0", "must be positive"),
    ("MEM:/a:4Gi:high:low", "not fractions"),
    ("MEM:/a:4Gi:0.5:0.9", "0 < LOW <= HIGH <= 1"),
    ("MEM:/a:4Gi:1.5:0.9", "0 < LOW <= HIGH <= 1"),
    ("MEM:/a:4Gi:0.9:0", "0 < LOW <= HIGH <= 1"),
])
def test_bad_tier_flags_are_refused_naming_the_flag(flag, problem):
    with pytest.raises(InvalidArgument, match=problem) as err:
        parse_tier(flag)
    assert repr(flag) in str(err.value)


def test_tiers_keep_their_order_and_refuse_duplicates_and_overlaps():
    tiers = parse_tiers(["MEM:/dev/shm/eddy:1Gi", "SSD:/var/eddy:10Gi"])
    assert [t.name for t in tiers] == ["MEM", "SSD"]
    with pytest.raises(InvalidArgument, match="given twice"):
        parse_tiers(["MEM:/a:1Gi", "MEM:/b:1Gi"])
    with pytest.raises(InvalidArgument, match="overlap"):
        parse_tiers(["MEM:/var/eddy:1Gi", "SSD:/var/eddy/ssd:1Gi"])
    with pytest.raises(InvalidArgument, match="overlap"):
        parse_tiers(["MEM:/var/eddy:1Gi", "SSD:/var/eddy/:1Gi"])
    assert len(parse_tiers(["MEM:/var/eddy:1Gi", "SSD:/var/eddy2:1Gi"])) == 2
