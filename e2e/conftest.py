"""The e2e tests use the same S3 server fixtures as tests/."""

from tests.conftest import s3_bucket, s3_server  # noqa: F401 - fixtures, found by name
