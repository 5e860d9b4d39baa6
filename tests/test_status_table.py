"""`eddy status` prints each tier's use under the table, with the bytes held by extents.

Held bytes belong to blocks that left an extent another block still uses: they are in the
tier's files and count against its size, so a tier's files hold used + held bytes.
"""

from eddy.base.pb import cache_pb2
from eddy.cache_cli import _print_table

MiB = 1 << 20


def test_the_tiers_line_shows_held_bytes_where_a_tier_has_some(capsys):
    resp = cache_pb2.StatusResponse(
        datasets=[cache_pb2.DatasetStatus(dataset_id="d1", volumes=["pvc-a"], size_known=True,
                                          ufs_total_bytes=4 * MiB, cached_bytes=4 * MiB,
                                          phase="Ready")],
        tier_used={"MEM": 3 * MiB, "SSD": MiB}, tier_size={"MEM": 8 * MiB, "SSD": 64 * MiB},
        tier_held={"MEM": MiB})
    _print_table(resp, wide=False)
    out = capsys.readouterr().out
    assert "tiers: MEM 3.00MiB/8.00MiB (+1.00MiB held), SSD 1.00MiB/64.00MiB\n" in out
