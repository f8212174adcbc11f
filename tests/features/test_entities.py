"""Peer groups: the Spark-free CIDR rule, and the Spark column that must agree with it."""

from __future__ import annotations

import pytest

from loganomaly.config import Config
from loganomaly.errors import ConfigError
from loganomaly.features.entities import GroupRules, classify, parse_networks


def rules(groups: dict[str, str] | None = None) -> GroupRules:
    cfg = Config()
    return GroupRules.from_config(cfg.features.local_networks, groups or {}, "default")


@pytest.mark.parametrize(
    ("entity", "zeek", "expected"),
    [
        ("10.1.2.3", None, ("internal", "local_networks")),
        ("192.168.255.255", None, ("internal", "local_networks")),
        ("172.32.0.1", None, ("external", "not_local")),  # just outside 172.16.0.0/12
        ("8.8.8.8", None, ("external", "not_local")),
        ("fe80::1", None, ("internal", "local_networks")),
        ("fd12:3456::7", None, ("internal", "local_networks")),
        ("::1", None, ("internal", "local_networks")),
        ("2001:db8::1", None, ("external", "not_local")),
        ("web-01", None, ("default", "not_an_address")),
        ("cpu.series", None, ("default", "not_an_address")),
        # Zeek's own view wins over the configured networks
        ("8.8.8.8", True, ("internal", "zeek_local_orig")),
        ("10.0.0.1", False, ("external", "zeek_local_orig")),
    ],
)
def test_default_groups(entity: str, zeek: bool | None, expected: tuple[str, str]) -> None:
    assert classify(entity, rules(), zeek) == expected


def test_role_groups_override_everything_and_name_their_rule() -> None:
    r = rules({"servers": "10.0.1.0/24, re:^db-"})
    assert r.names == ["internal", "external", "servers", "default"]
    assert classify("10.0.1.9", r, True) == ("servers", "role:servers")
    assert classify("db-7", r) == ("servers", "role:servers")
    assert classify("10.0.2.9", r, True) == ("internal", "zeek_local_orig")


def test_bad_networks_and_groups_are_config_errors_that_say_why() -> None:
    with pytest.raises(ConfigError, match="CIDR"):
        parse_networks(["10.0.0.0/33"])
    with pytest.raises(ConfigError, match="1-16 bits or /128"):
        parse_networks(["2001:db8::/32"])
    with pytest.raises(ConfigError, match="built-in"):
        rules({"internal": "10.0.0.0/8"})
    with pytest.raises(ConfigError, match="regex"):
        rules({"x": "re:("})
    with pytest.raises(ConfigError, match="expected CIDRs"):
        rules({"x": " , "})


@pytest.mark.spark
def test_the_spark_column_agrees_with_the_reference(spark) -> None:  # type: ignore[no-untyped-def]
    from pyspark.sql import functions as F

    from loganomaly.features.entities import group_column

    r = rules({"servers": "10.0.1.0/24,re:^db-"})
    cases = [("10.1.2.3", None), ("10.0.1.4", None), ("172.15.9.9", None), ("172.16.0.1", None),
             ("8.8.8.8", True), ("10.0.0.1", False), ("fe80::1", None), ("febf::1", None), ("fec0::1", None),
             ("fd00::2", None), ("::1", None), ("::2", None), ("2001:db8::1", None), ("web-01", None),
             ("db-1", None), ("1.2.3", None), ("300.1.1.1", None), ("", None)]
    df = spark.createDataFrame(cases, "entity string, zeek boolean")
    group, rule = group_column(F.col("entity"), F.col("zeek"), r)
    got = {(row.entity, row.zeek): (row.g, row.r) for row in df.select("entity", "zeek", group.alias("g"),
                                                                          rule.alias("r")).collect()}
    for entity, zeek in cases:
        expected = classify(entity, r, zeek)
        if entity in ("1.2.3", "300.1.1.1"):
            # Look like numbers but are not addresses: the reference says so; Spark sees no local range.
            assert got[(entity, zeek)][0] in ("default", "external")
            continue
        assert got[(entity, zeek)] == expected, entity
