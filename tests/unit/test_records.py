"""Wire messages: round trips, malformed bytes, versions and embedding checks."""

from pathlib import Path

import msgpack
import numpy as np
import pytest

from memory_server.records import (FORMAT_VERSION, EmbeddingError, MemoryRecord, Provenance, RewardEvent, WireError,
                                   check_embedding, decode_record, decode_reward_event, encode_record,
                                   encode_reward_event)


def make_record(dim: int = 8, **kw) -> MemoryRecord:
    vec = np.arange(dim, dtype=np.float32) / dim
    prov = Provenance(episode_id="ep-1", task_id="t-3", env="textworld", model_id="epiq-tiny", adapter_version=2,
                      writer="actor-0", retrieved_ids=["m1", "m2"])
    return MemoryRecord(namespace="ns", intent="take the coin", embedding=vec, experience="1. go east\n2. take coin",
                        kind="success", provenance=prov, **kw)


def test_record_round_trip():
    rec = make_record(q=0.25, visits=3, last_reward=-1.0, created_at=100.0, updated_at=200.5)
    back = decode_record(encode_record(rec))
    assert back == rec
    assert back.embedding.dtype == np.float32 and back.embedding.shape == (8,)
    assert back.provenance.retrieved_ids == ["m1", "m2"]
    assert len(rec.id) == 32 and rec.id != make_record().id


def test_record_defaults():
    rec = make_record()
    assert rec.q == 0.0 and rec.visits == 0 and rec.last_reward is None and rec.updated_at == rec.created_at
    assert decode_record(encode_record(rec)).last_reward is None


def test_reward_event_round_trip():
    ev = RewardEvent(episode_id="ep-9", memory_ids=["a", "b"], reward=1.0, time=12.5, adapter_version=4, memory_version=17)
    assert decode_reward_event(encode_reward_event(ev)) == ev
    with pytest.raises(ValueError, match="finite"):
        RewardEvent(episode_id="ep", memory_ids=[], reward=float("nan"), time=0.0, adapter_version=0, memory_version=0)


@pytest.mark.parametrize("data", [b"", b"\xc1", b"\x92\x01", b"\x81\xa1v", b"garbage \xff\x00"])
def test_malformed_bytes_are_wire_errors(data):
    with pytest.raises(WireError):
        decode_record(data)
    with pytest.raises(WireError):
        decode_reward_event(data)


def test_wrong_version_type_and_missing_fields():
    obj = msgpack.unpackb(encode_record(make_record()))
    with pytest.raises(WireError, match="format version 99"):
        decode_record(msgpack.packb({**obj, "v": 99}))
    with pytest.raises(WireError, match="expected a 'reward' message"):
        decode_reward_event(encode_record(make_record()))
    del obj["experience"]
    with pytest.raises(WireError, match="missing field 'experience'"):
        decode_record(msgpack.packb(obj))
    ev = msgpack.unpackb(encode_reward_event(RewardEvent("ep", ["a"], 1.0, 0.0, 0, 0)))
    with pytest.raises(WireError, match="'reward' must be float"):
        decode_reward_event(msgpack.packb({**ev, "reward": "1"}))
    with pytest.raises(WireError, match="list of strings"):
        decode_reward_event(msgpack.packb({**ev, "memory_ids": [1, 2]}))
    with pytest.raises(WireError, match="finite"):
        decode_reward_event(msgpack.packb({**ev, "reward": float("inf")}))


def test_bad_arrays_on_the_wire():
    obj = msgpack.unpackb(encode_record(make_record()))
    emb = obj["embedding"]
    with pytest.raises(WireError, match="data bytes"):
        decode_record(msgpack.packb({**obj, "embedding": {**emb, "shape": [9]}}))
    with pytest.raises(WireError, match="not allowed"):
        decode_record(msgpack.packb({**obj, "embedding": {**emb, "dtype": "|O"}}))
    with pytest.raises(WireError, match="float32"):
        decode_record(msgpack.packb({**obj, "embedding": {**emb, "dtype": "<i4", "shape": [8]}}))
    nan = np.full(8, np.nan, dtype=np.float32)
    with pytest.raises(WireError, match="NaN"):
        decode_record(msgpack.packb({**obj, "embedding": {**emb, "data": nan.tobytes()}}))
    with pytest.raises(WireError, match="kind"):
        decode_record(msgpack.packb({**obj, "kind": "maybe"}))


def test_check_embedding():
    out = check_embedding([0.6, 0.8], dim=2)
    assert out.dtype == np.float32 and out.flags["C_CONTIGUOUS"]
    assert check_embedding(np.arange(6, dtype=np.float64)[::2], dim=3).flags["C_CONTIGUOUS"]
    with pytest.raises(EmbeddingError, match="NaN/inf"):
        check_embedding(np.array([0.1, np.nan, 0.2]), dim=3)
    with pytest.raises(EmbeddingError, match="NaN/inf"):
        check_embedding(np.array([0.1, np.inf]), dim=2)
    with pytest.raises(EmbeddingError, match="NaN/inf"):
        check_embedding(np.array([1e39, 0.0]), dim=2)  # overflows float32
    with pytest.raises(EmbeddingError, match="dimension 3, expected 384"):
        check_embedding(np.zeros(3), dim=384)
    with pytest.raises(EmbeddingError, match="1-D"):
        check_embedding(np.zeros((2, 3)), dim=3)
    with pytest.raises(EmbeddingError, match="numeric"):
        check_embedding(np.array(["a", "b"]))
    with pytest.raises(EmbeddingError):
        make_record(dim=4).__class__(namespace="ns", intent="", embedding=np.array([np.nan]), experience="",
                                     kind="failure", provenance=make_record().provenance)


def test_format_version_is_one():
    assert FORMAT_VERSION == 1


# --------------------------------------------------------------------------- the envelope (common.wire)

def test_envelope_is_common_wire_and_unchanged():
    from common import wire
    from memory_server import records

    assert records.WireError is wire.WireError and records.FORMAT_VERSION == wire.FORMAT_VERSION
    assert records.encode_array is wire.encode_array and records.decode_array is wire.decode_array
    # the bytes of a reward event as written before the envelope moved to common.wire: no wire change
    ev = RewardEvent(episode_id="ep-9", memory_ids=["a", "b"], reward=1.0, time=12.5, adapter_version=4, memory_version=17)
    assert encode_reward_event(ev).hex() == (
        "88a17601a474797065a6726577617264aa657069736f64655f6964a465702d39aa6d656d6f72795f69647392a161a162a6726577617264"
        "cb3ff0000000000000a474696d65cb4029000000000000af616461707465725f76657273696f6e04ae6d656d6f72795f76657273696f6e11")
    rec = MemoryRecord(namespace="ns", intent="take the coin", embedding=np.arange(4, dtype=np.float32) / 4,
                       experience="go east", kind="success", provenance=make_record().provenance, id="m0", q=0.25,
                       visits=3, last_reward=-1.0, created_at=100.0, updated_at=200.5)
    import hashlib

    assert hashlib.sha256(encode_record(rec)).hexdigest() == \
        "e2140b4a8ba57c5a0f912826a1413ed1d2f9fa9409e38f55009896d443364d98"


def test_wire_pack_unpack_and_field_readers():
    from common.wire import decode_array, encode_array, field_of, pack, str_list_of, unpack

    blob = pack("probe", {"n": 3, "x": 2, "names": ["a"], "arr": encode_array(np.arange(3, dtype="<i8"))})
    obj = unpack(blob, "probe")
    assert obj["v"] == FORMAT_VERSION and obj["type"] == "probe"
    assert field_of(obj, "n", int, "probe") == 3
    assert field_of(obj, "x", float, "probe") == 2.0 and type(field_of(obj, "x", float, "probe")) is float
    assert str_list_of(obj, "names", "probe") == ["a"]
    assert decode_array(field_of(obj, "arr", dict, "probe")).tolist() == [0, 1, 2]
    with pytest.raises(WireError, match="expected a 'other' message"):
        unpack(blob, "other")
    with pytest.raises(WireError, match="probe: expected bytes"):
        unpack("text", "probe")  # type: ignore[arg-type]
    with pytest.raises(WireError, match="probe: missing field 'm'"):
        field_of(obj, "m", int, "probe")
    with pytest.raises(WireError, match="field 'n' must be str or bytes, got int"):
        field_of(obj, "n", (str, bytes), "probe")
    with pytest.raises(WireError, match="must be int, got bool"):
        field_of({"b": True}, "b", int, "probe")
    with pytest.raises(WireError, match="array: expected a map"):
        decode_array([1, 2])


@pytest.mark.parametrize("field,value", [("created_at", float("nan")), ("updated_at", float("inf")),
                                         ("visits", 1.5), ("visits", -1), ("last_reward", float("nan")),
                                         ("q", 1e308)])
def test_a_record_with_a_bad_number_is_refused(field: str, value: object) -> None:
    v = np.ones(4, dtype=np.float32) / 2
    kw = dict(namespace="t", intent="i", embedding=v, experience="x", kind="success",
              provenance=Provenance("ep", "t", "textworld", "m", 0, "w", []))
    with pytest.raises(ValueError, match=field):
        MemoryRecord(**kw, **{field: value})


def test_a_forged_reward_magnitude_is_refused() -> None:
    with pytest.raises(ValueError, match="reward must be within"):
        RewardEvent("ep", ["m"], 1e308, 0.0, 0, 0)


def test_memory_import_of_a_malformed_file_is_one_line_and_exit_2(tmp_path: Path, capsys) -> None:
    from memory_server.cli import main

    for text in ("[1, 2]\n", '{"id": "m"}\n', '{"id": "m", "embedding": [1], "provenance": 3}\n', "{not json\n"):
        bad = tmp_path / "bad.jsonl"
        bad.write_text(text)
        assert main(["import", "--url", "redis://127.0.0.1:1/0", "--in", str(bad)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "bad.jsonl:1" in err, err
