"""The node's staging records on disk: one per volume id, whatever the id, across restarts."""

from __future__ import annotations

import json
import os

import pytest

from csi.state.staging import StagedVolume, StagingRecords, file_name

IDS = ["a/b", "a_b", "a%2Fb", "..", ".", "-rf", "a\0b", "ü/ß", "x" * 300, "y" * 300]


def test_every_volume_id_gets_a_file_of_its_own(tmp_path):
    records = StagingRecords(str(tmp_path))
    for i, volume_id in enumerate(IDS):
        records.save(StagedVolume(volume_id, f"/staging/{i}", {"source": "local:///d"}),
                     secrets={"accessKeyId": str(i)})
    names = {file_name(v) for v in IDS}
    assert len(names) == len(IDS)
    assert all("/" not in n and "\0" not in n and len(n) <= 255 for n in names)
    loaded, problems = StagingRecords(str(tmp_path)).load_all()
    assert not problems
    assert sorted(v.volume_id for v in loaded) == sorted(IDS)
    for i, volume_id in enumerate(IDS):
        assert records.secrets(volume_id) == {"accessKeyId": str(i)}
    for volume_id in IDS:
        records.remove(volume_id)
    assert os.listdir(tmp_path / "node") == []


@pytest.mark.parametrize("old_name", ["a_b", "vol-1"])
def test_a_record_under_the_old_naming_rule_is_renamed_and_then_removable(tmp_path, old_name):
    volume_id = "a/b" if old_name == "a_b" else "vol-1"
    node = tmp_path / "node"
    node.mkdir()
    (node / f"{old_name}.json").write_text(json.dumps(
        {"volume_id": volume_id, "staging_path": "/s", "parameters": {}}))
    (node / f"{old_name}.secrets").write_text(json.dumps({"accessKeyId": "k"}))
    records = StagingRecords(str(tmp_path))
    loaded, _ = records.load_all()
    assert [v.volume_id for v in loaded] == [volume_id]
    assert records.secrets(volume_id) == {"accessKeyId": "k"}
    records.remove(volume_id)
    assert os.listdir(node) == []
