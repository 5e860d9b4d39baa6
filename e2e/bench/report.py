"""The bench's output: the printed table, the JSON file and the PNG chart, from one `Results`."""

from __future__ import annotations

import json
import os
from collections.abc import Callable

from .results import DATASETS, DISK, MODEL, PEER_PHASES, PEERS, PHASES, REFERENCES, Results, Row

LABELS = {"tmpfs/direct": "tmpfs direct read", "s3/raw": "S3 raw parallel GETs",
          "eddy/sequential": "eddy sequential read", "eddy/loader": "eddy loader, no prefetch",
          "eddy/loader-prefetch": "eddy loader, prefetch", "s3fs/loader": "s3fs loader",
          "direct/read": "disk direct read"}
COLORS = {"tmpfs": "#9e9e9e", "s3": "#616161", "eddy": "#1f77b4", "rclone": "#ff7f0e",
          "s3fs": "#2ca02c", "direct": "#9e9e9e"}
CHARTED = (*DATASETS, DISK)  # one chart panel each, in MB/s or files/s


def _label(system: str, phase: str) -> str:
    return LABELS.get(f"{system}/{phase}", f"{system} {phase}")


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def table(results: Results, meta: dict) -> str:
    lines = [f"eddy bench: {meta['machine']['summary']}",
             f"  {meta['command']}", ""]
    for dataset in DATASETS:
        info = meta["datasets"][dataset]
        lines.append(info["title"])
        lines.append(f"  {'what':<22} {'seconds':>8} {'MB/s':>9} {'files/s':>9} "
                     f"{'peak RSS':>9}  note")
        for row in results.rows.values():
            if row.dataset != dataset:
                continue
            note = row.skipped and f"skipped: {row.skipped}" or row.error and \
                f"FAILED: {row.error}" or ""
            rss = "-" if row.peak_rss_mib is None else f"{row.peak_rss_mib:.0f} MiB"
            files_s = row.files_s if info["files"] > 1 else None
            lines.append(f"  {_label(row.system, row.phase):<22} {_num(row.seconds, '8.2f'):>8} "
                         f"{_num(row.mb_s, '9.1f'):>9} {_num(files_s, '9.0f'):>9} "
                         f"{rss:>9}  {note}".rstrip())
        others = [f"{s}/{p}" for s, p in REFERENCES] + [f"{p} same" for p in PEERS]
        lines.append(f"  eddy / {'':<15}" + "".join(f"{o:>14}" for o in others))
        for phase in PHASES:
            cells = [results.ratio(dataset, phase, f"{s}/{p}") for s, p in REFERENCES]
            cells += [results.ratio(dataset, phase, f"{p}/{phase}") if phase in PEER_PHASES
                      else None for p in PEERS]
            lines.append(f"  eddy {phase:<17}" + "".join(
                f"{_num(c, '.2f') + ('x' if c is not None else ''):>14}" for c in cells))
        lines.append("")
    lines += _model_table(results, meta)
    lines += _disk_table(results, meta)
    lines.append("targets")
    for t in results.targets():
        verdict = {True: "met", False: "NOT MET", None: "not measured"}[t["met"]]
        got = f"{t['ratio']:.2f}x" if t["ratio"] is not None else t["not_measured_because"]
        lines.append(f"  {verdict:<13} {t['target']}: {got}")
    return "\n".join(lines)


def _model_table(results: Results, meta: dict) -> list[str]:
    """The model rows: each one's time over eddy's sequential cold read of the file."""
    ratios = {r["row"]: r["time_ratio"] for r in results.model_ratios()}
    return _rows_table(results, meta, MODEL, "time / seq",
                       lambda row: ratios.get(row.id, 1.0 if row.measured else None))


def _disk_table(results: Results, meta: dict) -> list[str]:
    """The disk rows: each one's throughput over the direct read of the same disk."""
    ratios = {r["eddy"]: r["ratio"] for r in results.ratios() if r["dataset"] == DISK}
    return _rows_table(results, meta, DISK, "/ direct",
                       lambda row: ratios.get(row.phase) if row.system == "eddy"
                       else 1.0 if row.measured else None)


def _rows_table(results: Results, meta: dict, dataset: str, ratio_name: str,
                ratio_of: Callable[[Row], float | None]) -> list[str]:
    """A dataset's rows with one ratio column, under the dataset's title."""
    lines = [meta["datasets"][dataset]["title"],
             f"  {'what':<26} {'seconds':>8} {'MB/s':>9} {'peak RSS':>9} {ratio_name:>11}  note"]
    for row in results.rows.values():
        if row.dataset != dataset:
            continue
        note = row.skipped and f"skipped: {row.skipped}" or row.error and \
            f"FAILED: {row.error}" or ""
        rss = "-" if row.peak_rss_mib is None else f"{row.peak_rss_mib:.0f} MiB"
        ratio = ratio_of(row)
        ratio_text = "-" if ratio is None else f"{ratio:.2f}x"
        lines.append(f"  {_label(row.system, row.phase):<26} {_num(row.seconds, '8.2f'):>8} "
                     f"{_num(row.mb_s, '9.1f'):>9} {rss:>9} {ratio_text:>11}  {note}".rstrip())
    return lines + [""]


def write_json(results: Results, meta: dict, path: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump({**meta, **results.to_json()}, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


def write_chart(results: Results, meta: dict, path: str) -> None:
    """One panel per dataset (the big file, the small ones, the big file on a disk):
    horizontal bars on a log axis (MB/s, or files/s for the small files), eddy against the
    references and the peers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullFormatter

    fig, axes = plt.subplots(1, len(CHARTED), figsize=(6.5 * len(CHARTED), 5.5))
    for ax, dataset in zip(axes, CHARTED, strict=True):
        rows = [r for r in results.rows.values() if r.dataset == dataset]
        per_file = meta["datasets"][dataset]["files"] > 1
        unit = "files/s" if per_file else "MB/s"
        values = [(r.files_s if per_file else r.mb_s) if r.measured else 0 for r in rows]
        ax.barh(range(len(rows)), values, color=[COLORS[r.system] for r in rows])
        ax.set_yticks(range(len(rows)), [_label(r.system, r.phase) for r in rows])
        ax.invert_yaxis()
        ax.set_xscale("log")
        if any(values):
            ax.set_xlim(right=max(values) * 2)  # room for the last label
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:,.0f}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(f"{unit} (log scale; higher is better)")
        ax.set_title(meta["datasets"][dataset]["title"], fontsize=9, wrap=True)
        for y, row in enumerate(rows):
            text = (f"{values[y]:,.0f}" if row.measured
                    else "skipped" if row.skipped else "failed")
            ax.annotate(text, (max(values[y], ax.get_xlim()[0]), y), xytext=(3, 0),
                        textcoords="offset points", va="center", fontsize=8)
    fig.suptitle(f"eddy bench: {meta['machine']['summary']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
