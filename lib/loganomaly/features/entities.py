"""Entities and their peer groups: which group judges an entity, decided from data and config.

A new entity (an internet host seen once, a server added yesterday) has no history of its own;
it is judged against its peers. Peers are a group: ``internal`` and ``external`` addresses by
default, or a role group the user names (``features.groups``: servers, printers...). An entity
that is not an address (a hostname, a component, a metric series) gets ``features.default_group``.

Order of the rules, first match wins (the ``entities.group_rule`` column records which):

1. ``role:<name>``: a configured role group whose CIDRs hold the address or whose regex matches
   the entity name;
2. ``zeek_local_orig``: Zeek's ``local_orig`` on the entity's own connections (it originated
   them, ``entity = id.orig_h``), the monitored network's own view of what is local;
3. ``local_networks`` / ``not_local``: the address inside or outside ``features.local_networks``;
4. ``not_an_address``: the default group.

The CIDR maths here is Spark-free and tested without a JVM (:func:`classify` is the reference);
:func:`group_column` is the same rule as a Spark column expression (no Python UDF): IPv4 ranges
compare the address as a number, IPv6 networks compare the first 16-bit group (enough for
link-local ``fe80::/10`` and unique-local ``fc00::/7``) or the whole address for a ``/128``.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from loganomaly.errors import ConfigError

if TYPE_CHECKING:
    from pyspark.sql import Column

INTERNAL = "internal"
EXTERNAL = "external"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(specs: Sequence[str], key: str = "features.local_networks") -> list[Network]:
    """CIDR strings -> networks.

    Raises:
        ConfigError: a string is not a network, or an IPv6 prefix :func:`group_column` cannot
            test in Spark (longer than 16 bits and shorter than 128).
    """
    out: list[Network] = []
    for spec in specs:
        try:
            net = ipaddress.ip_network(spec.strip(), strict=False)
        except ValueError as exc:
            raise ConfigError(f"{key}: {spec!r} is not a network in CIDR notation ({exc})") from None
        if net.version == 6 and 16 < net.prefixlen < 128:
            raise ConfigError(f"{key}: IPv6 network {spec!r}: prefixes of 1-16 bits or /128 are supported")
        out.append(net)
    return out


@dataclass(frozen=True)
class RoleRule:
    """One role group: networks and/or entity-name regexes (``features.groups`` value)."""

    name: str
    networks: tuple[Network, ...]
    patterns: tuple[str, ...]

    @classmethod
    def parse(cls, name: str, spec: str) -> RoleRule:
        """``"10.0.1.0/24, re:^db-"`` -> the rule.

        Raises:
            ConfigError: a bad CIDR or regex, or an empty rule.
        """
        nets: list[str] = []
        patterns: list[str] = []
        for part in (p.strip() for p in spec.split(",")):
            if not part:
                continue
            if part.startswith("re:"):
                try:
                    re.compile(part[3:])
                except re.error as exc:
                    raise ConfigError(f"features.groups.{name}: bad regex {part[3:]!r}: {exc}") from None
                patterns.append(part[3:])
            else:
                nets.append(part)
        if not nets and not patterns:
            raise ConfigError(f"features.groups.{name}: expected CIDRs and/or re:<regex>, got {spec!r}")
        return cls(name, tuple(parse_networks(nets, f"features.groups.{name}")), tuple(patterns))


@dataclass(frozen=True)
class GroupRules:
    """Everything that decides an entity's group (built from ``features`` config)."""

    local_networks: tuple[Network, ...]
    roles: tuple[RoleRule, ...]
    default_group: str

    @classmethod
    def from_config(cls, local_networks: Sequence[str], groups: Mapping[str, str], default_group: str) -> GroupRules:
        roles = tuple(RoleRule.parse(name, spec) for name, spec in groups.items())
        clash = {r.name for r in roles} & {INTERNAL, EXTERNAL}
        if clash:
            raise ConfigError(f"features.groups: {sorted(clash)} are built-in groups; choose other names")
        return cls(tuple(parse_networks(local_networks)), roles, default_group)

    @property
    def names(self) -> list[str]:
        """Every group an entity can get, in feature order."""
        out = [INTERNAL, EXTERNAL, *(r.name for r in self.roles)]
        return out + ([self.default_group] if self.default_group not in out else [])


def parse_address(entity: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The entity as an address, or None when it is a name."""
    try:
        return ipaddress.ip_address(entity.strip())
    except ValueError:
        return None


def classify(entity: str, rules: GroupRules, zeek_local: bool | None = None) -> tuple[str, str]:
    """(group, rule) of one entity: the reference of :func:`group_column`.

    Args:
        entity: the entity name.
        rules: the configured rules.
        zeek_local: Zeek's ``local_orig`` on the entity's connections (None when absent).
    """
    addr = parse_address(entity)
    for role in rules.roles:
        if addr is not None and any(addr in net for net in role.networks if net.version == addr.version):
            return role.name, f"role:{role.name}"
        if any(re.search(p, entity) for p in role.patterns):
            return role.name, f"role:{role.name}"
    if zeek_local is not None:
        return (INTERNAL if zeek_local else EXTERNAL), "zeek_local_orig"
    if addr is None:
        return rules.default_group, "not_an_address"
    if any(addr in net for net in rules.local_networks if net.version == addr.version):
        return INTERNAL, "local_networks"
    return EXTERNAL, "not_local"


# ---------------------------------------------------------------- Spark expressions
def in_networks(addr: Column, networks: Sequence[Network]) -> Column:
    """Whether the address string ``addr`` lies in any of ``networks`` (false for names, null-safe).

    IPv4: the four octets as one number against each network's range. IPv6 (only for the
    prefixes :func:`parse_networks` accepts): the first 16-bit group, or equality for ``/128``.
    """
    from pyspark.sql import functions as F

    text = F.lower(F.trim(addr))
    octets = F.split(text, r"\.")
    is_v4 = text.rlike(r"^\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}$")
    values = [F.coalesce(F.try_element_at(octets, F.lit(i + 1)).try_cast("long"), F.lit(-1)) for i in range(4)]
    octets_ok = values[0].between(0, 255)
    for v in values[1:]:
        octets_ok = octets_ok & v.between(0, 255)
    as_number = (values[0] * (1 << 24)) + (values[1] * (1 << 16)) + (values[2] * (1 << 8)) + values[3]
    is_v4 = is_v4 & octets_ok
    is_v6 = text.contains(":") & text.rlike(r"^[0-9a-f:.]+$")
    # The first group of an IPv6 address ("" when it starts with "::", i.e. 0).
    head = F.split(text, ":").getItem(0)
    head_value = F.when(head == "", F.lit(0)).otherwise(F.conv(head, 16, 10).try_cast("long"))
    tests: list[Column] = []
    for net in networks:
        lo, hi = int(net.network_address), int(net.broadcast_address)
        if net.version == 4:
            tests.append(is_v4 & as_number.between(lo, hi))
        elif net.prefixlen == 128:
            tests.append(is_v6 & (text == F.lit(net.network_address.compressed)))
        else:
            tests.append(is_v6 & head_value.between(lo >> 112, hi >> 112))
    if not tests:
        return F.lit(False)
    out = tests[0]
    for t in tests[1:]:
        out = out | t
    return F.coalesce(out, F.lit(False))


def is_address(addr: Column) -> Column:
    """Whether the string looks like an IPv4 or IPv6 address (the shape :func:`in_networks` reads)."""
    from pyspark.sql import functions as F

    text = F.lower(F.trim(addr))
    return F.coalesce(
        text.rlike(r"^\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}$") | (text.contains(":") & text.rlike(r"^[0-9a-f:.]+$")),
        F.lit(False),
    )


def group_column(entity: Column, zeek_local: Column, rules: GroupRules) -> tuple[Column, Column]:
    """(group, rule) of each row as Spark columns, the rule of :func:`classify`.

    Args:
        entity: the entity name.
        zeek_local: boolean, Zeek's ``local_orig`` of the entity (null when unknown).
        rules: the configured rules.
    """
    from pyspark.sql import functions as F

    branches: list[tuple[Column, str, str]] = []
    for role in rules.roles:
        cond = in_networks(entity, role.networks) if role.networks else F.lit(False)
        for pattern in role.patterns:
            cond = cond | F.coalesce(entity.rlike(pattern), F.lit(False))
        branches.append((cond, role.name, f"role:{role.name}"))
    branches.append((zeek_local.isNotNull() & zeek_local, INTERNAL, "zeek_local_orig"))
    branches.append((zeek_local.isNotNull() & ~zeek_local, EXTERNAL, "zeek_local_orig"))
    branches.append((~is_address(entity), rules.default_group, "not_an_address"))
    branches.append((in_networks(entity, rules.local_networks), INTERNAL, "local_networks"))
    group = F.lit(EXTERNAL)
    rule = F.lit("not_local")
    for cond, name, how in reversed(branches):
        group = F.when(cond, F.lit(name)).otherwise(group)
        rule = F.when(cond, F.lit(how)).otherwise(rule)
    return group, rule
