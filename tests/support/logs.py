"""eddy's JSON log lines, as the tests and the bench read them."""

from __future__ import annotations

import json


def log_events(path: str, name: str) -> list[dict]:
    """Every event `name` logged to the file at `path`, oldest first ([] if there is none)."""
    found = []
    try:
        with open(path, errors="replace") as f:
            for line in f:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if isinstance(record, dict) and record.get("event") == name:
                    found.append(record)
    except FileNotFoundError:
        pass
    return found
