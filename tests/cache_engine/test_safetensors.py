"""Reading a safetensors header: the ranges it names, and nothing from a file that is not one."""

from __future__ import annotations

import json

import pytest

from cache_engine.safetensors import MAX_HEADER_BYTES, header_length, span_blocks, tensor_spans
from tests.support.model_files import safetensors_file, safetensors_header

TENSORS = {"w0": 4000, "w1": 96, "w2": 10_000}


def _spans(data: bytes):
    n = header_length(data[:9], len(data))
    return None if n is None else tensor_spans(data[8:8 + n], len(data))


def test_a_header_names_the_file_from_its_start_to_the_end_of_its_last_tensor():
    data = safetensors_file(TENSORS)
    assert _spans(data) == [(0, len(data))]  # header and tensors back to back: one span
    assert _spans(data + b"trailing bytes") == [(0, len(data))]


def test_ranges_are_merged_and_ordered_whatever_the_order_of_the_header():
    header = {"b": {"dtype": "U8", "shape": [10], "data_offsets": [100, 110]},
              "a": {"dtype": "U8", "shape": [10], "data_offsets": [0, 10]},
              "c": {"dtype": "U8", "shape": [5], "data_offsets": [105, 115]},
              "empty": {"dtype": "U8", "shape": [0], "data_offsets": [7, 7]}}
    raw = json.dumps(header).encode()
    data = len(raw).to_bytes(8, "little") + raw + bytes(115)
    start = 8 + len(raw)
    assert _spans(data) == [(0, start + 10), (start + 100, start + 115)]


@pytest.mark.parametrize("first, file_size", [
    (b"", 100),
    ((2).to_bytes(8, "little") + b"{}", 9),  # the file is shorter than its header says
    (b"PK\x03\x04" + bytes(5), 1 << 30),  # a zip file (a .pt checkpoint is one)
    ((50).to_bytes(8, "little") + b"[", 1 << 30),  # a header that is not an object
    ((MAX_HEADER_BYTES + 1).to_bytes(8, "little") + b"{", 1 << 40),
    ((1 << 63).to_bytes(8, "little") + b"{", 1 << 62),
], ids=["empty", "past-the-end", "zip", "array", "header-too-long", "length-huge"])
def test_bytes_that_cannot_start_a_safetensors_file_have_no_header(first, file_size):
    assert header_length(first, file_size) is None


@pytest.mark.parametrize("header", [
    b"{not json}", b"{\xff\xfe}", b'{"w": [0, 10]}', b'{"w": {"data_offsets": [0]}}',
    b'{"w": {"data_offsets": [10, 0]}}', b'{"w": {"data_offsets": [-5, 0]}}',
    b'{"w": {"data_offsets": [0, 1.5]}}', b'{"w": {"data_offsets": [0, true]}}',
    b'{"w": {"data_offsets": [0, 100000]}}', b"[" * 100_000,
], ids=["not-json", "not-utf8", "no-dict", "one-offset", "backwards", "negative", "float",
        "bool", "past-the-end", "deep"])
def test_a_header_that_is_wrong_names_nothing(header):
    assert tensor_spans(header, 8 + len(header) + 1000) is None


def test_the_header_alone_is_a_span_of_a_file_without_tensors():
    data = safetensors_header({})
    assert _spans(data) == [(0, len(data))]


def test_span_blocks_names_each_block_once_in_order():
    assert list(span_blocks([(0, 10), (15, 16), (30, 41)], 10)) == [0, 1, 3, 4]
    assert list(span_blocks([(0, 1)], 10)) == [0]
    assert list(span_blocks([], 10)) == []
