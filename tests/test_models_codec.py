"""Model round trips, forward/backward compatibility, and codec error mapping."""

from __future__ import annotations

import time

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cal_redis import models as m
from cal_redis.codec import (
    check,
    check_changes,
    decode,
    decode_batch,
    decode_event,
    encode,
    event,
    merge_encode,
    merge_update,
)
from cal_redis.errors import SerializationError, ValidationError

SAMPLES: list[msgspec.Struct] = [
    m.Region(id="r1", code="euw", name="EU West"),
    m.Proxy(id="p1", region_id="r1", host="sip.example", port=5061, transport="tls"),
    m.Account(id="a1", name="Acme", domain="acme.example", code="ACME"),
    m.User(id="u1", account_id="a1", email="a@acme.example", extension="100"),
    m.Device(id="d1", account_id="a1", sip_username="d1sip", mac="00:11:22:33:44:55"),
    m.Ddi(id="+441234567890", account_id="a1", destination_type="user", destination_id="u1"),
    m.Trunk(id="t1", account_id="a1", ips=["10.0.0.1", "2001:db8::1"]),
    m.Hook(id="h1", account_id="a1", url="https://h.example", events=["call.start"]),
    m.Asset(id="as1", account_id="a1", kind="prompt", size=123),
    m.Address(id="ad1", account_id="a1", city="Leeds", emergency=True),
    m.AgentStatus(user_id="u1", account_id="a1", status=m.AgentState.AVAILABLE, registered=True),
    m.SessionData(id="s1", account_id="a1", user_id="u1", data={"k": [1, 2]}),
    m.QueueMeta(name="support", account_id="a1", max_size=10),
    m.Conversation(id="c1", account_id="a1", participants=["u1", "u2"]),
    m.FlowState(id="f1", account_id="a1", state="ivr", data={"step": 3}),
    m.WsConnection(id="w1", account_id="a1", user_id="u1", node_id="n1"),
]


@pytest.mark.parametrize("obj", SAMPLES, ids=lambda o: type(o).__name__)
def test_round_trip(obj: msgspec.Struct) -> None:
    data = encode(obj)
    assert decode(data, type(obj), key="k") == obj
    assert b'"created_at"' in data or not hasattr(obj, "created_at")


@pytest.mark.parametrize("obj", SAMPLES, ids=lambda o: type(o).__name__)
def test_unknown_fields_ignored_missing_defaulted(obj: msgspec.Struct) -> None:
    cls = type(obj)
    natural = "user_id" if cls is m.AgentStatus else "name" if cls is m.QueueMeta else "id"
    data = msgspec.json.encode({natural: "x1", "field_from_the_future": {"a": 1}})
    got = decode(data, cls, key="k")
    assert getattr(got, natural) == "x1"
    assert got == cls(**{natural: "x1"})


def test_id_is_required() -> None:
    with pytest.raises(SerializationError) as info:
        decode(b'{"email": "a@b"}', m.User, key="cal:users", field="u1")
    assert "cal:users" in str(info.value) and "u1" in str(info.value)
    assert isinstance(info.value.__cause__, msgspec.ValidationError)


def test_wrong_shape_and_bad_json_name_the_key() -> None:
    for bad in (b"{not json", b'{"id": 5}', b"[1,2]", b'"str"'):
        with pytest.raises(SerializationError) as info:
            decode(bad, m.User, key="cal:users", field="u9")
        assert info.value.key == "cal:users" and info.value.field == "u9"


def test_models_are_frozen() -> None:
    u = m.User(id="u1")
    with pytest.raises(AttributeError):
        u.email = "x"  # type: ignore[misc]


def test_timestamps_are_int_ms() -> None:
    t = m.now_ms()
    assert isinstance(t, int) and t > 1_700_000_000_000


def test_decode_batch_keeps_none_in_place_and_names_the_culprit() -> None:
    raws = [encode(m.User(id="a")), None, encode(m.User(id="c"))]
    out = decode_batch(raws, m.User, key="cal:users", fields=["a", "b", "c"])
    assert [u.id if u else None for u in out] == ["a", None, "c"]
    with pytest.raises(SerializationError) as info:
        decode_batch([raws[0], b"{bad"], m.User, key="cal:users", fields=["a", "b"])
    assert info.value.field == "b"
    assert decode_batch([], m.User, key="k", fields=[]) == []


def test_event_data_optional() -> None:
    e = decode_event(b'{"type":"UserUpdate","id":"u1","data":{"id":"u1"}}', channel="cal:events")
    assert e.has_data and bytes(e.data) == b'{"id":"u1"}'
    e2 = decode_event(b'{"type":"UserDelete","id":"u1"}', channel="cal:events")
    assert not e2.has_data and e2.account_id is None
    assert not decode_event(b'{"type":"UserUpdate","data":null}', channel="c").has_data
    assert encode(m.Event(type="UserSync")) == b'{"type":"UserSync"}'
    with pytest.raises(SerializationError):
        decode_event(b'{"id": "no type"}', channel="cal:events")


def test_event_builder_stamps_ms_and_us_from_one_clock_read() -> None:
    before = time.time_ns() // 1000
    raw = msgspec.json.decode(event("UserUpdate", "u1", origin="o1"))
    after = time.time_ns() // 1000
    assert before <= raw["ts_us"] <= after
    assert raw["ts"] == raw["ts_us"] // 1000  # the same instant, coarser
    assert raw["ts_us"] < 2**53  # exact in JSON readers that use doubles


def test_event_without_ts_us_decodes_and_omits_it() -> None:
    e = decode_event(b'{"type":"UserUpdate","id":"u1","ts":5}', channel="cal:events")
    assert e.ts == 5 and e.ts_us == 0
    assert b"ts_us" not in encode(e)


def test_merge_keeps_fields_this_version_does_not_know() -> None:
    old = b'{"id":"u1","email":"old@x","pager":"555","nested":{"a":[1]}}'
    merged = msgspec.json.decode(merge_encode(old, m.User(id="u1", email="new@x"), key="k"))
    assert merged["email"] == "new@x" and merged["pager"] == "555"
    assert merged["nested"] == {"a": [1]}
    assert msgspec.json.decode(merge_encode(None, m.User(id="u1"), key="k"))["id"] == "u1"
    with pytest.raises(SerializationError):
        merge_encode(b"[1]", m.User(id="u1"), key="k")


def test_merge_update_writes_the_full_object_and_keeps_unknown() -> None:
    old = b'{"id":"u1","name":"A","pager":"555"}'
    user, data = merge_update(old, m.User, {"name": "B"}, key="k")
    stored = msgspec.json.decode(data)
    assert user.name == "B" and stored["pager"] == "555"
    # a stored record missing fields comes back complete: every field of the model
    assert set(m.User.__struct_fields__) <= set(stored)
    with pytest.raises(SerializationError):
        merge_update(b"[1]", m.User, {"name": "B"}, key="k")


def test_check_changes_names_the_field() -> None:
    assert check_changes(m.User, {"name": "B"}) == {"name": "B"}
    with pytest.raises(ValidationError, match="enabled") as info:
        check_changes(m.User, {"enabled": "not-a-bool"})
    assert info.value.argument == "enabled"
    with pytest.raises(ValidationError, match="unknown") as info:
        check_changes(m.User, {"nonsense": 1})
    assert info.value.argument == "nonsense"


def test_check_names_the_field_of_a_wrongly_typed_struct() -> None:
    with pytest.raises(ValidationError) as info:
        check(m.User(id="u", name=5), "user")  # type: ignore[arg-type]
    assert info.value.argument == "user.name"


@given(
    st.builds(
        m.User,
        id=st.text(min_size=1, max_size=20),
        email=st.text(max_size=30),
        extension=st.text(max_size=6),
        enabled=st.booleans(),
        created_at=st.integers(min_value=0, max_value=2**62),
    )
)
def test_user_round_trip_property(user: m.User) -> None:
    assert decode(encode(user), m.User, key="k") == user
