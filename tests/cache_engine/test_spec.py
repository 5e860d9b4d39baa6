"""Volume parameters, checked directly and as a CO sends them (CreateVolume over gRPC)."""

from __future__ import annotations

from dataclasses import replace

import grpc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cache_engine.spec import (
    SECRET_KEYS,
    DatasetSpec,
    Source,
    parse_parameters,
    parse_quantity,
    parse_secrets,
    parse_source,
)
from csi.controller import ControllerService
from csi.state.volumes import SqliteVolumeStore
from eddy.base.errors import InvalidArgument, InvalidParameter
from eddy.base.pb import csi_pb2, csi_pb2_grpc
from tests.support.grpc_server import serve

MiB, GiB = 1 << 20, 1 << 30
LOCAL = {"source": "local:///data"}

# (id, parameters, words the message must contain)
INVALID = [
    ("unknown-key", LOCAL | {"cacheSize": "1Gi"}, ["cacheSize", "unknown"]),
    ("no-source", {"blockSize": "4Mi"}, ["source", "required"]),
    ("bad-size", LOCAL | {"cacheCapacity": "20Gx"}, ["cacheCapacity", "20Gx"]),
    ("negative-size", LOCAL | {"cacheCapacity": "-1Gi"}, ["cacheCapacity"]),
    ("size-too-small", LOCAL | {"cacheCapacity": "1Ki"}, ["cacheCapacity", "minimum"]),
    ("size-beyond-int64", LOCAL | {"cacheCapacity": "9Ei"}, ["cacheCapacity", "maximum"]),
    ("block-not-power-of-two", LOCAL | {"blockSize": "3Mi"}, ["blockSize", "power of two"]),
    ("block-too-small", LOCAL | {"blockSize": "4Ki"}, ["blockSize", "minimum"]),
    ("block-too-big", LOCAL | {"blockSize": "1Gi"}, ["blockSize", "maximum"]),
    ("ftp-scheme", {"source": "ftp://host/data"}, ["source", "scheme", "ftp"]),
    ("no-scheme", {"source": "/data"}, ["source", "scheme"]),
    ("local-two-slashes", {"source": "local://data"}, ["source", "local:///"]),
    ("local-relative", {"source": "local:relative/dir"}, ["source", "absolute"]),
    ("dotdot-local", {"source": "local:///data/../etc"}, ["source", ".."]),
    ("dotdot-s3", {"source": "s3://bucket/a/../../b"}, ["source", ".."]),
    ("control-char", {"source": "local:///da\nta"}, ["source", "control"]),
    ("s3-no-bucket", {"source": "s3://"}, ["source", "bucket"]),
    ("s3-bad-bucket", {"source": "s3://Bad_Bucket/x"}, ["source", "bucket"]),
    ("s3-ip-bucket", {"source": "s3://10.0.0.1/x"}, ["source", "bucket"]),
    ("s3-query", {"source": "s3://bucket/x?versionId=1"}, ["source", "query"]),
    ("pvc-no-name", {"source": "pvc://default"}, ["source", "pvc://"]),
    ("nfs-port", {"source": "nfs://nas:2049/exports"}, ["source", "no port"]),
    ("nfs-no-export", {"source": "nfs://nas"}, ["source", "export"]),
    ("http-no-host", {"source": "https:///path"}, ["source", "host"]),
    ("credentials-in-url", {"source": "s3://AKIA:hunter2@bucket/x"}, ["source", "credentials"]),
    ("credentials-in-http", {"source": "https://user:hunter2@h/x"}, ["source", "credentials"]),
    ("secret-as-parameter", LOCAL | {"secretAccessKey": "hunter2"}, ["secretAccessKey",
                                                                     "secret"]),
    ("key-id-as-parameter", LOCAL | {"accessKeyId": "AKIA"}, ["accessKeyId"]),
    ("bad-ttl", LOCAL | {"metadataTTL": "soon"}, ["metadataTTL", "soon"]),
    ("negative-ttl", LOCAL | {"metadataTTL": "-5"}, ["metadataTTL"]),
    ("nan-ttl", LOCAL | {"metadataTTL": "nan"}, ["metadataTTL"]),
    ("bad-read-ahead", LOCAL | {"readAhead": "lots"}, ["readAhead", "integer"]),
    ("read-ahead-too-big", LOCAL | {"readAhead": "1000"}, ["readAhead"]),
    ("empty-tier", LOCAL | {"tiers": "MEM,,SSD"}, ["tiers"]),
    ("bad-tier-name", LOCAL | {"tiers": "MEM,/dev/sda"}, ["tiers"]),
    ("repeated-tier", LOCAL | {"tiers": "MEM,MEM"}, ["tiers", "twice"]),
    ("endpoint-on-local", LOCAL | {"endpoint": "http://minio:9000"}, ["endpoint", "s3"]),
    ("endpoint-not-url", {"source": "s3://b-1/x", "endpoint": "minio:9000"}, ["endpoint"]),
    ("endpoint-credentials", {"source": "s3://b-1/x", "endpoint": "http://u:hunter2@m"},
     ["endpoint", "credentials"]),
    ("bad-region", {"source": "s3://b-1/x", "region": "US East"}, ["region"]),
    ("preload-dotdot", LOCAL | {"preload": "a,../b"}, ["preload", ".."]),
    ("uid-not-a-number", LOCAL | {"uid": "nobody"}, ["uid", "numeric"]),
    ("uid-negative", LOCAL | {"uid": "-1"}, ["uid", "numeric"]),
    ("uid-signed", LOCAL | {"uid": "+5"}, ["uid", "numeric"]),
    ("uid-arabic-digits", LOCAL | {"uid": "\u0663"}, ["uid", "numeric"]),
    ("uid-no-change-value", LOCAL | {"uid": "4294967295"}, ["uid", "outside"]),
    ("gid-too-big", LOCAL | {"gid": "99999999999"}, ["gid", "outside"]),
    ("gid-empty", LOCAL | {"gid": ""}, ["gid", "numeric"]),
    ("file-mode-not-octal", LOCAL | {"fileMode": "0648"}, ["fileMode", "octal"]),
    ("file-mode-symbolic", LOCAL | {"fileMode": "u+r"}, ["fileMode", "octal"]),
    ("file-mode-setuid", LOCAL | {"fileMode": "4755"}, ["fileMode", "0000..0777", "setuid"]),
    ("file-mode-too-long", LOCAL | {"fileMode": "00644"}, ["fileMode", "octal"]),
    ("dir-mode-sticky", LOCAL | {"dirMode": "1777"}, ["dirMode", "sticky"]),
    ("dir-mode-empty", LOCAL | {"dirMode": ""}, ["dirMode", "octal"]),
    ("dir-mode-spaces", LOCAL | {"dirMode": " 755"}, ["dirMode", "octal"]),
    ("bad-source-timeout", LOCAL | {"sourceTimeout": "forever"}, ["sourceTimeout", "forever"]),
    ("zero-source-timeout", LOCAL | {"sourceTimeout": "0"}, ["sourceTimeout", "outside"]),
    ("nan-source-timeout", LOCAL | {"sourceTimeout": "nan"}, ["sourceTimeout", "outside"]),
    ("source-timeout-too-long", LOCAL | {"sourceTimeout": "3600"}, ["sourceTimeout", "240"]),
    ("zero-source-concurrency", LOCAL | {"sourceConcurrency": "0"}, ["sourceConcurrency"]),
    ("bad-source-concurrency", LOCAL | {"sourceConcurrency": "many"},
     ["sourceConcurrency", "integer"]),
    ("unknown-prefetch", LOCAL | {"prefetch": "eager"}, ["prefetch", "eager", "safetensors"]),
    ("empty-prefetch", LOCAL | {"prefetch": ""}, ["prefetch", "off, safetensors, whole"]),
    ("prefetch-as-boolean", LOCAL | {"prefetch": "true"}, ["prefetch", "true"]),
    ("direct-io-as-boolean", LOCAL | {"directIO": "true"}, ["directIO", "true", "cold, off"]),
    ("prefetch-wait-as-word", LOCAL | {"prefetchWait": "long"}, ["prefetchWait", "seconds"]),
    ("negative-prefetch-wait", LOCAL | {"prefetchWait": "-1"}, ["prefetchWait", "0..600"]),
    ("prefetch-wait-too-long", LOCAL | {"prefetchWait": "3600"}, ["prefetchWait", "600"]),
]

RESERVED = {
    "csi.storage.k8s.io/pv/name": "pv-1",
    "csi.storage.k8s.io/pvc/name": "claim",
    "csi.storage.k8s.io/pvc/namespace": "default",
    "csi.storage.k8s.io/fstype": "ext4",
}

# (id, parameters, expected spec)
VALID = [
    ("defaults", LOCAL, DatasetSpec(Source("local", "local:///data", root="/data"))),
    ("reserved-keys", LOCAL | RESERVED, DatasetSpec(Source("local", "local:///data",
                                                           root="/data"))),
    ("local-normalised", {"source": "local:////data/./x/"},
     DatasetSpec(Source("local", "local:///data/x", root="/data/x"))),
    ("s3-everything", {
        "source": "s3://my-bucket/train/", "endpoint": "http://minio:9000/",
        "region": "eu-west-1", "cacheCapacity": "20Gi", "tiers": "MEM, SSD",
        "blockSize": "1Mi", "preload": "/a,b/c", "metadataTTL": "immutable", "readAhead": "0",
     }, DatasetSpec(
        Source("s3", "s3://my-bucket/train", bucket="my-bucket", root="train"),
        endpoint="http://minio:9000", region="eu-west-1", cache_capacity=20 * GiB,
        tiers=("MEM", "SSD"), block_size=MiB, preload=("a", "b/c"), metadata_ttl=None,
        read_ahead=0)),
    ("s3-bucket-only", {"source": "s3://bucket", "preload": "true", "metadataTTL": "0.5"},
     DatasetSpec(Source("s3", "s3://bucket", bucket="bucket"), preload=True,
                 metadata_ttl=0.5)),
    ("pvc", {"source": "pvc://team-a/datasets/imagenet", "cacheCapacity": "1.5Gi"},
     DatasetSpec(Source("pvc", "pvc://team-a/datasets/imagenet", bucket="team-a",
                        root="datasets/imagenet"), cache_capacity=3 * GiB // 2)),
    ("nfs", {"source": "nfs://nas.example.com//exports/./models/"},
     DatasetSpec(Source("nfs", "nfs://nas.example.com/exports/models", bucket="nas.example.com",
                        root="/exports/models"))),
    ("https", {"source": "https://example.com/data/?x=1", "preload": "false",
               "readAhead": "64", "blockSize": "64Mi", "metadataTTL": "1234567"},
     DatasetSpec(Source("https", "https://example.com/data/?x=1",
                        root="https://example.com/data/?x=1"),
                 read_ahead=64, block_size=64 * MiB, metadata_ttl=1234567.0)),
    ("s3-owner-and-modes", {"source": "s3://bucket", "uid": "1000", "gid": "0100",
                            "fileMode": "0o640", "dirMode": "750"},
     DatasetSpec(Source("s3", "s3://bucket", bucket="bucket"), uid=1000, gid=100,
                 file_mode=0o640, dir_mode=0o750)),
    ("local-closed-to-all", LOCAL | {"fileMode": "0", "dirMode": "0000", "gid": "4294967294"},
     DatasetSpec(Source("local", "local:///data", root="/data"), gid=4294967294, file_mode=0,
                 dir_mode=0)),
    ("source-limits", LOCAL | {"sourceTimeout": "2.5", "sourceConcurrency": "3"},
     DatasetSpec(Source("local", "local:///data", root="/data"), source_timeout=2.5,
                 source_concurrency=3)),
    ("prefetch-safetensors", {"source": "s3://bucket", "prefetch": " SafeTensors "},
     DatasetSpec(Source("s3", "s3://bucket", bucket="bucket"), prefetch="safetensors")),
    ("prefetch-whole", LOCAL | {"prefetch": "whole"},
     DatasetSpec(Source("local", "local:///data", root="/data"), prefetch="whole")),
    ("prefetch-off", LOCAL | {"prefetch": "off"},
     DatasetSpec(Source("local", "local:///data", root="/data"))),
    ("direct-io-off", LOCAL | {"directIO": " Off"},
     DatasetSpec(Source("local", "local:///data", root="/data"), direct_io="off")),
    ("direct-io-cold", LOCAL | {"directIO": "cold"},
     DatasetSpec(Source("local", "local:///data", root="/data"))),
    ("prefetch-no-wait", LOCAL | {"prefetch": "safetensors", "prefetchWait": "0"},
     DatasetSpec(Source("local", "local:///data", root="/data"), prefetch="safetensors",
                 prefetch_wait=0.0)),
    ("prefetch-wait-default", LOCAL | {"prefetchWait": "60"},
     DatasetSpec(Source("local", "local:///data", root="/data"))),
    ("prefetch-wait-fraction", LOCAL | {"prefetchWait": "2.5"},
     DatasetSpec(Source("local", "local:///data", root="/data"), prefetch_wait=2.5)),
]


def _ids(table):
    return [row[0] for row in table]


@pytest.mark.parametrize("case, params, words", INVALID, ids=_ids(INVALID))
def test_invalid_parameters_are_refused_naming_the_key(case, params, words):
    with pytest.raises(InvalidParameter) as info:
        parse_parameters(params)
    for word in words:
        assert word in str(info.value)
    assert "hunter2" not in str(info.value)


@pytest.mark.parametrize("case, params, expected", VALID, ids=_ids(VALID))
def test_valid_parameters_parse_to_the_spec(case, params, expected):
    spec = parse_parameters(params)
    assert spec == expected
    assert spec.extra == {k: v for k, v in params.items() if k.startswith("csi.storage.k8s.io/")}
    # The canonical parameters parse back to the same spec and have no reserved keys.
    canonical = spec.to_parameters()
    assert parse_parameters(canonical) == spec
    assert not any(k.startswith("csi.storage.k8s.io/") for k in canonical)


def test_mount_keys_stay_with_the_mount_and_are_not_sent_to_the_engine():
    spec = parse_parameters({"source": "s3://bucket", "uid": "1000", "fileMode": "640",
                             "directIO": "off", "prefetchWait": "5"})
    assert spec.to_parameters()["fileMode"] == "0640"
    assert spec.to_parameters()["directIO"] == "off"
    assert spec.to_parameters()["prefetchWait"] == "5"
    sent = spec.engine_parameters()
    # An engine that predates these keys would refuse them; it needs none of them.
    assert not set(sent) & {"uid", "gid", "fileMode", "dirMode", "directIO", "prefetchWait"}
    assert parse_parameters(sent) == replace(spec, uid=None, file_mode=None, direct_io="cold",
                                             prefetch_wait=60.0)


def test_parse_quantity():
    assert parse_quantity("4096") == 4096
    assert parse_quantity("4Ki") == 4096
    assert parse_quantity("500M") == 500 * 10**6
    assert parse_quantity("0.5Gi") == GiB // 2
    for bad in ("20Gx", "", "Gi", "-1", "1e9", "1 Gi"):
        with pytest.raises(ValueError):
            parse_quantity(bad)


def test_secrets_are_checked_and_never_echoed():
    assert parse_secrets({"accessKeyId": "AKIA", "secretAccessKey": "hunter2"}) == {
        "accessKeyId": "AKIA", "secretAccessKey": "hunter2"}
    for bad in ({"accessKeyId": "AKIA"}, {"password": "hunter2"}):
        with pytest.raises(InvalidParameter) as info:
            parse_secrets(bad)
        assert "hunter2" not in str(info.value)


# --- the same table through CreateVolume --------------------------------------------------


@pytest.fixture(scope="module")
def controller(tmp_path_factory):
    store = SqliteVolumeStore.in_state_dir(tmp_path_factory.mktemp("state"))
    # No pvc:// resolution here (tests/csi/test_pvc.py has it): parameters come back as given.
    with serve(ControllerService(store, resolve=lambda spec: spec)) as served:
        yield csi_pb2_grpc.ControllerStub(served.channel)
    store.close()


def _create(controller, name, params):
    cap = csi_pb2.VolumeCapability(
        mount=csi_pb2.VolumeCapability.MountVolume(),
        access_mode=csi_pb2.VolumeCapability.AccessMode(
            mode=csi_pb2.VolumeCapability.AccessMode.MULTI_NODE_READER_ONLY))
    return controller.CreateVolume(csi_pb2.CreateVolumeRequest(
        name=name, parameters=params, volume_capabilities=[cap]))


@pytest.mark.parametrize("case, params, words", INVALID, ids=_ids(INVALID))
def test_create_volume_refuses_invalid_parameters(controller, case, params, words):
    with pytest.raises(grpc.RpcError) as info:
        _create(controller, f"bad-{case}", params)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    for word in words:
        assert word in info.value.details()
    assert "hunter2" not in info.value.details()


@pytest.mark.parametrize("case, params, expected", VALID, ids=_ids(VALID))
def test_create_volume_returns_the_canonical_parameters(controller, case, params, expected):
    volume = _create(controller, f"good-{case}", params).volume
    assert dict(volume.volume_context) == expected.to_parameters()
    assert volume.capacity_bytes == (expected.cache_capacity or 0)


# --- fuzzing: any text gives a spec or InvalidArgument, never another exception -------------

KNOWN_KEYS = ("endpoint", "region", "cacheCapacity", "tiers", "blockSize", "preload",
              "metadataTTL", "readAhead", "uid", "gid", "fileMode", "dirMode",
              "sourceTimeout", "sourceConcurrency", "prefetch", "directIO", "prefetchWait")
SOURCES = ("local:///data", "s3://bucket/x", "pvc://ns/claim/sub", "nfs://nas/exports",
           "https://example.com/d/", "http://[::1]:8080/x", "local://", "s3://", "http://[")
# Any character (lone surrogates too: a command line's undecodable bytes become those), and
# the characters parsers split on, so that fuzzed values reach past the first check.
ANY_TEXT = st.text(st.characters(exclude_categories=()), max_size=40)
SYNTAX = st.text("0123456789.eE+-_ kMGTPEi,/:@?#%[]\n\x00MEMSSDtrueimmutableo", max_size=40)
VALUES = st.one_of(ANY_TEXT, SYNTAX, st.sampled_from(SOURCES),
                   st.tuples(st.sampled_from(SOURCES), st.one_of(ANY_TEXT, SYNTAX))
                   .map("".join))
KNOWN_PARAMETERS = st.fixed_dictionaries(
    {"source": VALUES}, optional={key: VALUES for key in KNOWN_KEYS})
# Values each key could well take, so that whole specs parse and their round trip is tried.
PLAUSIBLE_PARAMETERS = st.fixed_dictionaries({"source": st.sampled_from(SOURCES[:6])}, optional={
    "endpoint": st.sampled_from(("http://minio:9000/", "https://[::1]:9000", "http://[x")),
    "region": st.from_regex(r"[a-z0-9-]{1,40}\n?", fullmatch=True),
    "cacheCapacity": st.tuples(st.integers(0, 10**30).map(str),
                               st.sampled_from(("", ".5", ".0001")),
                               st.sampled_from(("", "Ki", "Gi", "k", "E", "Ei"))).map("".join),
    "tiers": st.lists(st.sampled_from(("MEM", "SSD", " HDD", "x")), min_size=1, max_size=3)
    .map(",".join),
    "blockSize": st.sampled_from(("64Ki", "1Mi", "4194304", "64Mi", "3Mi", "128Mi", "0.5Mi")),
    "preload": st.one_of(st.lists(st.one_of(SYNTAX, ANY_TEXT), max_size=3).map(",".join),
                         st.sampled_from(("true", "No", "/true", "0/", "a,,b", ".."))),
    "metadataTTL": st.one_of(st.floats().map(repr), st.sampled_from(("immutable", "1e-320"))),
    "readAhead": st.integers(-5, 100).map(str),
    "uid": st.integers(-1, 1 << 33).map(str),
    "gid": st.one_of(st.integers(0, 70000).map(str), st.from_regex(r"0*[0-9]{1,11}\n?",
                                                                  fullmatch=True)),
    "fileMode": st.tuples(st.sampled_from(("", "0", "0o")), st.integers(0, 0o7777))
    .map(lambda t: f"{t[0]}{t[1]:o}"),
    "dirMode": st.from_regex(r"(0o)?[0-9]{1,5}", fullmatch=True),
    "sourceTimeout": st.one_of(st.floats().map(repr), st.sampled_from(("60", "0.1", "1e2"))),
    "sourceConcurrency": st.integers(-1, 100).map(str),
    "prefetch": st.sampled_from(("off", "safetensors", "whole", " Whole", "OFF", "true", "")),
    "directIO": st.sampled_from(("cold", "off", " OFF", "on", "")),
    "prefetchWait": st.one_of(st.floats().map(repr), st.sampled_from(("0", "60", "1e3"))),
})
ANY_PARAMETERS = st.dictionaries(st.one_of(st.sampled_from(KNOWN_KEYS + ("source",)), ANY_TEXT,
                                           st.just("csi.storage.k8s.io/pvc/name")),
                                 VALUES, max_size=6)


@settings(max_examples=300, deadline=None)
@given(st.one_of(PLAUSIBLE_PARAMETERS, KNOWN_PARAMETERS, ANY_PARAMETERS))
def test_fuzzed_parameters_give_a_spec_that_round_trips_or_invalid_argument(params):
    try:
        spec = parse_parameters(params)
    except InvalidArgument:
        return
    canonical = spec.to_parameters()
    assert parse_parameters(canonical) == spec
    assert parse_parameters(canonical).to_parameters() == canonical


@settings(max_examples=300, deadline=None)
@given(VALUES)
def test_fuzzed_sources_give_a_source_or_invalid_argument(value):
    try:
        source = parse_source(value)
    except InvalidArgument:
        return
    assert parse_source(source.uri) == source


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.one_of(st.sampled_from(SECRET_KEYS), ANY_TEXT),
                       st.one_of(ANY_TEXT, SYNTAX).map(lambda v: "hunter2" + v), max_size=4))
def test_fuzzed_secrets_are_kept_or_refused_without_showing_a_value(secrets):
    try:
        kept = parse_secrets(secrets)
    except InvalidArgument as e:
        assert "hunter2" not in str(e)
        return
    assert kept == secrets
