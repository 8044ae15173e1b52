"""Address and time policy: ignore lists, Postfix mynetworks (real postconf), time window."""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from popwatch.errors import ConfigError
from popwatch.event import LoginEvent
from popwatch.policy import NetRule, Policy, parse_network, postfix_mynetworks, run_command

NOW = 1_800_000_000.0
LOOPBACK = [ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128")]


def ev(ip: str, t: float = NOW) -> LoginEvent:
    return LoginEvent(ip=ip, time=t, pattern="p", rule="login")


def test_loopback_ignored_by_default_list_and_others_written() -> None:
    p = Policy(LOOPBACK, 1800)
    assert p.decide(ev("127.0.0.1"), NOW) is None
    assert p.decide(ev("127.5.6.7"), NOW) is None
    assert p.decide(ev("::1"), NOW) is None
    assert p.decide(ev("192.0.2.10"), NOW) == int(NOW)
    assert p.decide(ev("2001:db8::5"), NOW) == int(NOW)


def test_empty_ignore_list_ignores_nothing() -> None:
    assert Policy([], 1800).decide(ev("127.0.0.2"), NOW) == int(NOW)


def test_v4_and_v6_networks() -> None:
    p = Policy([ipaddress.ip_network("198.51.100.0/24"), ipaddress.ip_network("2001:db8::/32")], 60)
    assert p.ignored("198.51.100.200")
    assert not p.ignored("198.51.101.1")
    assert p.ignored("2001:db8:1::7")
    assert not p.ignored("2001:db9::1")


def test_not_a_host_address_is_never_written() -> None:
    assert Policy([], 60).ignored("10.1")


def test_time_window_old_event_authorizes_nothing() -> None:
    p = Policy([], 1800)
    assert p.decide(ev("192.0.2.1", NOW - 1800), NOW) is None  # exactly the lifetime: expired
    assert p.decide(ev("192.0.2.1", NOW - 1799.5), NOW) == int(NOW - 1799.5)
    assert p.decide(ev("192.0.2.1", NOW - 86400 * 365), NOW) is None


def test_future_time_is_clamped_to_now() -> None:
    p = Policy([], 1800)
    assert p.decide(ev("192.0.2.1", NOW + 3600), NOW) == int(NOW)
    assert p.decide(ev("192.0.2.1", NOW + 86400 * 365), NOW) == int(NOW)


def test_negation_first_match_wins() -> None:
    rules = [
        NetRule(ipaddress.ip_network("192.0.2.7/32"), negate=True),
        NetRule(ipaddress.ip_network("192.0.2.0/24")),
    ]
    p = Policy(rules, 60)
    assert not p.ignored("192.0.2.7")
    assert p.ignored("192.0.2.8")


def test_parse_network_forms() -> None:
    assert parse_network("192.0.2.0/24") == ipaddress.ip_network("192.0.2.0/24")
    assert parse_network("192.0.2.9/24") == ipaddress.ip_network("192.0.2.0/24")  # host bits
    assert parse_network("192.0.2.9") == ipaddress.ip_network("192.0.2.9/32")
    assert parse_network("[2001:db8::]/32") == ipaddress.ip_network("2001:db8::/32")
    assert parse_network("[::1]/128") == ipaddress.ip_network("::1/128")
    # mapped networks become IPv4, since mapped clients are stored as IPv4
    assert parse_network("[::ffff:127.0.0.0]/104") == ipaddress.ip_network("127.0.0.0/8")
    with pytest.raises(ValueError):
        parse_network("example.com")


class FakePostconf:
    """A stand-in runner for parameters a test defines; real postconf is tested below."""

    def __init__(self, params: dict[str, str]) -> None:
        self.params = params
        self.calls: list[list[str]] = []

    def __call__(self, argv: Sequence[str]) -> str:
        self.calls.append(list(argv))
        name = argv[-1]
        if name not in self.params:
            raise subprocess.CalledProcessError(1, argv, "", f"postconf: warning: {name}: unknown")
        return self.params[name] + "\n"


def test_mynetworks_follows_vars_files_and_negation(tmp_path: Path) -> None:
    nets = tmp_path / "nets"
    nets.write_text("# office\n198.51.100.0/24   # LAN\n!203.0.113.9\n203.0.113.0/24\n")
    run = FakePostconf(
        {
            "mynetworks": f"127.0.0.0/8, $extra {nets} cidr:/etc/postfix/x.cidr",
            "extra": "${more}",
            "more": "[2001:db8::]/48",
        }
    )
    rules = postfix_mynetworks(run)
    p = Policy(rules, 60)
    assert p.ignored("127.0.0.1")
    assert p.ignored("2001:db8:0:1::1")
    assert p.ignored("198.51.100.3")
    assert not p.ignored("203.0.113.9")  # excluded by "!"
    assert p.ignored("203.0.113.10")
    assert not p.ignored("192.0.2.1")
    assert [c[-1] for c in run.calls] == ["mynetworks", "extra", "more"]


def test_mynetworks_loop_is_an_error() -> None:
    with pytest.raises(ConfigError, match="nested too deeply"):
        postfix_mynetworks(FakePostconf({"mynetworks": "$a", "a": "$mynetworks"}))


def test_mynetworks_bad_word_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match='bad network "not-a-net"'):
        postfix_mynetworks(FakePostconf({"mynetworks": "127.0.0.0/8 not-a-net"}))
    with pytest.raises(ConfigError, match="cannot read"):
        postfix_mynetworks(FakePostconf({"mynetworks": str(tmp_path / "absent")}))


def test_mynetworks_postconf_failure_and_absence() -> None:
    with pytest.raises(ConfigError, match="failed"):
        postfix_mynetworks(FakePostconf({}))
    with pytest.raises(ConfigError, match="not installed"):
        postfix_mynetworks(run_command, ("/nonexistent/postconf",))


@pytest.mark.skipif(shutil.which("postconf") is None, reason="postconf (Postfix) not installed")
def test_mynetworks_from_real_postconf(tmp_path: Path) -> None:
    """A private Postfix configuration directory read by the real postconf."""
    nets = tmp_path / "trusted"
    nets.write_text("198.51.100.0/24\n")
    (tmp_path / "main.cf").write_text(
        "office = 203.0.113.0/25\n"
        f"mynetworks = 127.0.0.0/8 [::ffff:127.0.0.0]/104 [::1]/128 $office {nets}\n"
    )
    rules = postfix_mynetworks(run_command, ("postconf", "-c", str(tmp_path)))
    p = Policy(rules, 60)
    assert p.ignored("127.0.0.1") and p.ignored("::1")
    assert p.ignored("203.0.113.100") and not p.ignored("203.0.113.200")
    assert p.ignored("198.51.100.1")
    assert not p.ignored("192.0.2.1")


@pytest.mark.skipif(shutil.which("postconf") is None, reason="postconf (Postfix) not installed")
def test_mynetworks_default_of_real_postconf(tmp_path: Path) -> None:
    (tmp_path / "main.cf").write_text("mynetworks_style = host\n")
    rules = postfix_mynetworks(run_command, ("postconf", "-c", str(tmp_path)))
    assert Policy(rules, 60).ignored("127.0.0.1")


# -- the integer test agrees with ipaddress' own membership ---------------------------------

_RULES = [
    NetRule(ipaddress.ip_network("10.0.0.0/8")),
    NetRule(ipaddress.ip_network("10.1.2.0/24"), negate=True),
    NetRule(ipaddress.ip_network("192.0.2.128/25")),
    NetRule(ipaddress.ip_network("0.0.0.0/0"), negate=True),
    NetRule(ipaddress.ip_network("2001:db8::/32")),
    NetRule(ipaddress.ip_network("::1/128")),
]


def _reference(rules: Sequence[NetRule], ip: str) -> bool:
    """Policy.ignored as it was written before the integer fast path."""
    from popwatch.address import parse_host
    from popwatch.errors import AddressError

    try:
        addr = parse_host(ip)
    except AddressError:
        return True
    for rule in rules:
        if addr.version == rule.network.version and addr in rule.network:
            return not rule.negate
    return False


@given(
    st.one_of(
        st.ip_addresses().map(str),
        st.ip_addresses(v=4).map(lambda a: str(a).replace(".", ".0", 1)),  # leading zero
        st.tuples(*[st.integers(0, 300)] * 4).map(lambda t: ".".join(map(str, t))),
        st.sampled_from(["10.1", "10.1.2.3.4", "", "::ffff:10.1.2.3", "1e1.0.0.1", "\u0661.2.3.4"]),
    ),
    st.integers(0, len(_RULES)),
)
def test_ignored_agrees_with_ipaddress_membership(ip: str, start: int) -> None:
    rules = _RULES[start:]
    assert Policy(rules, 60).ignored(ip) == _reference(rules, ip)


def test_ignored_fails_closed_on_non_canonical_quads() -> None:
    p = Policy([], 60)
    assert p.ignored("010.1.2.3") and p.ignored("256.1.1.1") and p.ignored("1.2.3")
    assert not p.ignored("10.1.2.3")
