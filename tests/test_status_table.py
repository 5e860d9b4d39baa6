"""`eddy status` prints each tier's use under the table, fastest first, with the bytes held by
extents.

Held bytes belong to blocks that left an extent another block still uses: they are in the
tier's files and count against its size, so a tier's files hold used + held bytes.
"""

from eddy.base.pb import cache_pb2
from eddy.cache_cli import _print_table

MiB = 1 << 20


def _status(**tiers) -> cache_pb2.StatusResponse:
    return cache_pb2.StatusResponse(
        datasets=[cache_pb2.DatasetStatus(dataset_id="d1", volumes=["pvc-a"], size_known=True,
                                          ufs_total_bytes=4 * MiB, cached_bytes=4 * MiB,
                                          phase="Ready")], **tiers)


def _tiers_line(resp, capsys) -> str:
    _print_table(resp, wide=False)
    return next(line for line in capsys.readouterr().out.splitlines()
                if line.startswith("tiers: "))


def test_the_tiers_line_shows_held_bytes_where_a_tier_has_some(capsys):
    resp = _status(tiers=["MEM", "SSD"], tier_used={"MEM": 3 * MiB, "SSD": MiB},
                   tier_size={"MEM": 8 * MiB, "SSD": 64 * MiB}, tier_held={"MEM": MiB})
    assert _tiers_line(resp, capsys) == \
        "tiers: MEM 3.00MiB/8.00MiB (+1.00MiB held), SSD 1.00MiB/64.00MiB"


def test_the_tiers_line_keeps_the_nodes_order_not_the_maps(capsys):
    # A protobuf map has no order (CI once printed SSD before MEM); `tiers` carries the node's.
    sizes = {"HDD": 256 * MiB, "SSD": 64 * MiB, "MEM": 8 * MiB}
    resp = _status(tiers=["MEM", "SSD", "HDD"], tier_size=sizes)
    assert _tiers_line(resp, capsys) == \
        "tiers: MEM 0B/8.00MiB, SSD 0B/64.00MiB, HDD 0B/256.00MiB"


def test_an_engine_that_sends_no_order_gets_its_tiers_by_name(capsys):
    resp = _status(tier_size={"SSD": 64 * MiB, "MEM": 8 * MiB})
    assert _tiers_line(resp, capsys) == "tiers: MEM 0B/8.00MiB, SSD 0B/64.00MiB"
