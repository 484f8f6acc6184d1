"""Every key pattern of SPEC in both styles, and the id validation rules."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cal_redis import KeyBuilder, ValidationError
from cal_redis.keys import canonical_ip, validate_id, validate_ident

PLAIN = KeyBuilder()
CLUSTER = KeyBuilder(cluster=True)


def test_global_keys() -> None:
    for kb in (PLAIN, CLUSTER):
        assert kb.REGIONS == "cal:regions"
        assert kb.PROXIES == "cal:proxies"
        assert kb.ACCOUNTS == "cal:accounts"
        assert kb.USERS == "cal:users"
        assert kb.LAYOUT == "cal:meta:layout"
        assert kb.WS_CONNECTIONS == "cal:ws:connections"
        assert kb.EVENTS == "cal:events"
        assert kb.trunk_ip("10.0.0.1") == "cal:trunk:10.0.0.1"
        assert kb.trunk_ip("2001:0db8:0000::0001") == "cal:trunk:2001:db8::1"


def test_ident_hashes_per_style() -> None:
    assert PLAIN.global_ident_hashes() == (
        "cal:region:idents", "cal:account:idents", "cal:user:idents")
    assert CLUSTER.global_ident_hashes() == (
        "cal:region:idents:{cal:regions}",
        "cal:account:idents:{cal:accounts}",
        "cal:user:idents:{cal:users}",
    )
    assert (PLAIN.style, CLUSTER.style) == ("standalone", "cluster")


def test_cluster_write_keys_share_a_slot() -> None:
    """Every ident hash hashes to its table's slot; an account's keys to one slot."""
    from redis.crc import key_slot

    def slot(key: str) -> int:
        return key_slot(key.encode())

    for table, idents in (
        (CLUSTER.REGIONS, CLUSTER.REGION_IDENTS),
        (CLUSTER.ACCOUNTS, CLUSTER.ACCOUNT_IDENTS),
        (CLUSTER.USERS, CLUSTER.USER_IDENTS),
    ):
        assert slot(idents) == slot(table)
    assert slot(PLAIN.USERS) != slot(PLAIN.USER_IDENTS)  # why the standalone style cannot
    a = "acc42"
    account_keys = [CLUSTER.devices(a), CLUSTER.device_idents(a), CLUSTER.sessions_active(a),
                    CLUSTER.session(a, "s1"), CLUSTER.queue(a, "q"), CLUSTER.ws_connections(a),
                    CLUSTER.agents_connected(a), CLUSTER.flow_state(a, "f")]
    assert {slot(k) for k in account_keys} == {slot("{acc42}")}


ACCOUNT_KEYS = [
    ("devices", (), "devices"),
    ("device_idents", (), "device:idents"),
    ("ddis", (), "ddis"),
    ("trunks", (), "trunks"),
    ("hooks", (), "hooks"),
    ("assets", (), "assets"),
    ("addresses", (), "addresses"),
    ("agent_status", ("u7",), "agent:status:u7"),
    ("agents_by_user", (), "agents:by_user"),
    ("agents_registered", (), "agents:registered"),
    ("agents_available", (), "agents:available"),
    ("agents_connected", (), "agents:connected"),
    ("session", ("s1",), "session:s1"),
    ("sessions_active", (), "sessions:active"),
    ("queue", ("support",), "queue:support"),
    ("queues_meta", (), "queues:meta"),
    ("conversation", ("c9",), "conversation:c9"),
    ("flow_state", ("f3",), "flow_state:f3"),
    ("account_events", (), "events"),
    ("ws_connections", (), "ws:connections"),
]


@pytest.mark.parametrize(("method", "extra", "suffix"), ACCOUNT_KEYS)
def test_account_keys_both_styles(method: str, extra: tuple[str, ...], suffix: str) -> None:
    assert getattr(PLAIN, method)("acc42", *extra) == f"cal:account:acc42:{suffix}"
    assert getattr(CLUSTER, method)("acc42", *extra) == f"cal:account:{{acc42}}:{suffix}"


@pytest.mark.parametrize(
    "bad",
    ["", "a" * 257, "é" * 129, "a:b", "a*", "a?", "a[", "a]", "a{", "a}", "a b", "a\tb",
     "a\nb", "a\x00b", "a\x1bb", "a\x7f", "a\u2003b"],
)
def test_bad_ids_rejected_naming_the_argument(bad: str) -> None:
    with pytest.raises(ValidationError) as info:
        validate_id(bad, "user_id")
    assert info.value.argument == "user_id"
    assert "user_id" in str(info.value)


@pytest.mark.parametrize("bad", [None, 42, b"u1", ["u1"], 1.5])
def test_non_str_ids_rejected(bad: object) -> None:
    with pytest.raises(ValidationError) as info:
        validate_id(bad, "account_id")
    assert info.value.argument == "account_id"


def test_max_length_is_bytes() -> None:
    assert validate_id("a" * 256, "x") == "a" * 256
    assert validate_id("é" * 128, "x") == "é" * 128  # 256 bytes
    with pytest.raises(ValidationError):
        validate_id("é" * 128 + "a", "x")


def test_builders_validate_each_argument() -> None:
    with pytest.raises(ValidationError) as info:
        PLAIN.devices("acc:42")
    assert info.value.argument == "account_id"
    with pytest.raises(ValidationError) as info:
        PLAIN.session("acc42", "s*")
    assert info.value.argument == "session_id"
    with pytest.raises(ValidationError) as info:
        CLUSTER.agent_status("acc42", "}")
    assert info.value.argument == "user_id"


def test_idents_may_hold_what_a_hash_field_can() -> None:
    assert validate_ident("Jane Doe <jane@x.io>", "ident") == "Jane Doe <jane@x.io>"
    assert validate_ident("00:11:22:33:44:55", "ident")
    for bad in ("", "a\x00", "x" * 1025, 5):
        with pytest.raises(ValidationError):
            validate_ident(bad, "ident")


@pytest.mark.parametrize("bad", ["", "10.0.0", "999.1.1.1", "fe80::1%eth0", "host.example", " 10.0.0.1", 7])
def test_bad_trunk_ips(bad: object) -> None:
    with pytest.raises(ValidationError) as info:
        canonical_ip(bad)
    assert info.value.argument == "trunk_ip"


def test_account_id_from_channel() -> None:
    assert PLAIN.account_id_from_channel("cal:account:acc42:events") == "acc42"
    assert CLUSTER.account_id_from_channel("cal:account:{acc42}:events") == "acc42"
    assert PLAIN.account_id_from_channel("cal:events") is None
    assert PLAIN.account_id_from_channel("cal:account:a:b:events") is None


@given(st.text(min_size=1, max_size=80))
def test_valid_ids_never_contain_separators(s: str) -> None:
    try:
        v = validate_id(s, "id")
    except ValidationError:
        return
    assert not any(c in v for c in ":*?[]{}") and not any(c.isspace() for c in v)
    assert PLAIN.devices(v) == f"cal:account:{v}:devices"
    assert PLAIN.account_id_from_channel(PLAIN.account_events(v)) == v


def test_validate_ids_batch_names_the_first_bad_position() -> None:
    from cal_redis.keys import validate_ids

    validate_ids([], "ids")
    validate_ids(["u1", "u2", "é" * 64, "x" * 200], "ids")
    for bad, pos in ((["u1", "u:2", "u*3"], 1), (["u1", ""], 1), ([5, "u"], 0),
                     (["ok", "a" * 257], 1), (["a", "b c"], 1)):
        with pytest.raises(ValidationError) as info:
            validate_ids(bad, "ids")
        assert info.value.argument == f"ids[{pos}]"


@given(st.text(st.characters(max_codepoint=0xA0), max_size=6) | st.sampled_from(" :*?[]{}\x7f\t"))
def test_validate_ids_agrees_with_validate_id_per_character(value: str) -> None:
    from cal_redis.keys import validate_ids

    try:
        validate_id(value, "x")
        expected_ok = True
    except ValidationError:
        expected_ok = False
    try:
        validate_ids(["ok", value + "a"], "ids")
        ok = True
    except ValidationError as err:
        assert err.argument == "ids[1]"
        ok = False
    assert ok == (expected_ok or value == "")


@given(
    st.lists(
        st.text(max_size=12) | st.text(st.characters(max_codepoint=127), max_size=12), max_size=8
    )
)
def test_validate_ids_agrees_with_validate_id(values: list[str]) -> None:
    from cal_redis.keys import validate_ids

    expected_ok = True
    for v in values:
        try:
            validate_id(v, "x")
        except ValidationError:
            expected_ok = False
            break
    try:
        validate_ids(list(values), "ids")
        ok = True
    except ValidationError:
        ok = False
    assert ok == expected_ok
