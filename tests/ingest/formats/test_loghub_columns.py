"""The column-wise Loghub path (:mod:`loganomaly.ingest.formats.loghub_columns`) gives exactly the
per-line path's batches, on every built-in pattern it has a plan for.

Each test writes a file of generated lines (good ones and random edits of them: odd characters,
tabs, non-ASCII, doubled spaces, impossible dates, other levels) and runs it through the ingest
task's parsing block by block and line by line (the reference), comparing every column of every
row, quarantine reasons included, and checks the block path took lines.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import pytest

from loganomaly.ingest import stage
from loganomaly.ingest.formats import FormatOptions, parse_file_blocks
from loganomaly.ingest.formats.base import _Clock
from loganomaly.ingest.formats.loghub import LOGHUB_PATTERNS, LoghubParser
from loganomaly.ingest.formats.loghub_columns import _optional_groups, _re2
from tests.ingest.formats.helpers import assert_same_batches, lines_taken, month_walk

_LEVELS = ["INFO", "INFO", "WARN", "ERROR", "FATAL", "DEBUG", "x", "SEVERE"]


def _hdfs(rng: random.Random) -> str:
    date = rng.choice(
        ["081109", "081110", "081231", "090101"] * 5 + ["081332", "080230", "691231", "681231", "000229"]
    )
    time = rng.choice(["203615", "235959", "000000"] * 5 + ["246000", "126060"])
    block = f"blk_{rng.choice(['', '-'])}{rng.randrange(10**18)}"
    content = rng.choice(
        [
            f"Receiving block {block} src: /10.250.19.102:54106 dest: /10.250.19.102:50010",
            f"PacketResponder 1 for block {block} terminating",
            "no block id here",
            "",
        ]
    )
    return (
        f"{date} {time} {rng.randrange(1, 999)} {rng.choice(_LEVELS)} dfs.DataNode$PacketResponder: {content}"
    )


def _hadoop(rng: random.Random) -> str:
    return (
        f"2015-{rng.choice(['10', '02', '13'])}-{rng.choice(['18', '29', '30', '31'])} "
        f"{rng.randrange(24):02d}:{rng.randrange(60):02d}:{rng.randrange(60):02d},{rng.randrange(1000):03d} "
        f"{rng.choice(_LEVELS)} [{rng.choice(['main', 'IPC Server handler 0 on 62270', ''])}] "
        f"org.apache.hadoop.mapreduce.v2.app.MRAppMaster: Created MRAppMaster for application "
        f"appattempt_1445144423722_{rng.randrange(10**4):04d}_000001"
    )


def _spark(rng: random.Random) -> str:
    return (
        f"{rng.choice(['17', '70', '68'])}/{rng.choice(['06', '12', '00'])}/{rng.choice(['09', '31'])} "
        f"20:10:{rng.randrange(62):02d} {rng.choice(_LEVELS)} executor.CoarseGrainedExecutorBackend: "
        f"Registered signal handlers for [TERM, HUP, INT] {rng.randrange(100)}"
    )


def _zookeeper(rng: random.Random) -> str:
    return (
        f"2015-07-29 17:41:44,{rng.randrange(1000):03d} - {rng.choice(_LEVELS)}  "
        f"[QuorumPeer[myid={rng.randrange(4)}]/0:0:0:0:0:0:0:0:2181:FastLeaderElection@{rng.randrange(999)}] - "
        f"Notification time out: {rng.randrange(10**5)}"
    )


def _windows(rng: random.Random) -> str:
    return (
        f"2016-09-{rng.choice(['28', '31'])} 04:30:{rng.randrange(60):02d}, "
        f"{rng.choice(['Info', 'Warning', 'Error', 'Info'])}                  {rng.choice(['CBS', 'CSI'])}    "
        f"Loaded Servicing Stack v6.1.7601.{rng.randrange(10**5)} with Core: C:\\Windows\\winsxs\\cbscore.dll"
    )


def _apache(rng: random.Random) -> str:
    return (
        f"[{rng.choice(['Sun', 'Mon'])} {rng.choice(['Dec', 'Feb', 'Jan', 'Foo'])} {rng.choice(['04', '30', '31'])} "
        f"04:47:{rng.randrange(60):02d} {rng.choice(['2005', '1969', '2100'])}] "
        f"[{rng.choice(['notice', 'error', 'warn'])}] workerEnv.init() ok /etc/httpd/conf/workers2.properties"
    )


def _healthapp(rng: random.Random) -> str:
    return (
        f"2017122{rng.randrange(10)}-{rng.randrange(25)}:{rng.randrange(61)}:{rng.randrange(61)}:{rng.randrange(1000)}"
        f"|{rng.choice(['Step_LSC', 'Step_SPUtils', ''])}|{rng.randrange(10**8)}|onStandStepChanged {rng.randrange(10**4)}"
    )


_EPOCHS = ["1118770931"] * 12 + [
    "0",
    "007",
    "4102444799",
    "4102444800",
    "99999999999",
    "100000000000",
    "1118770931123",
    "1118770931123456",
    str(10**17 + 5),
    str(10**18 - 1),
    str(10**19),
]


def _bgl(rng: random.Random) -> str:
    node = rng.choice(["R23-M0-NB-C:J05-U01", "R30-M1-N4-C:J11-U11", "-"])
    frac = rng.choice(["384920"] * 6 + ["1234567", "5", "", "12a", "000001"])
    return (
        f"{rng.choice(['-', '-', '-', 'KERNDTLB', 'APPSEV'])} {rng.choice(_EPOCHS)} 2005.06.14 {node} "
        f"2005-06-14-10.42.11.{frac} {node} RAS {rng.choice(['KERNEL', 'APP'])} "
        f"{rng.choice(['INFO', 'FATAL', 'SEVERE', 'WARNING'])} generating core.{rng.randrange(9999)}"
    )


def _hpc(rng: random.Random) -> str:
    return (
        f"{rng.randrange(10**6)} node-{rng.randrange(300)} {rng.choice(['node', 'unix.hw'])} "
        f"{rng.choice(['state_change.unavailable', 'boot'])} {rng.choice(['1077804742', '107780474', '4102444800'])} "
        f"{rng.choice(['1', '-1'])} Component State Change: Component \042alt0\042 is in the unavailable state"
    )


def _thunderbird(rng: random.Random) -> str:
    component = rng.choice(["crond(pam_unix)[2915]", "kernel", "sshd[123]", "ntpd[1]"])
    return (
        f"{rng.choice(['-', '-', 'VAPI'])} {rng.choice(_EPOCHS)} 2005.11.09 dn{rng.randrange(999)} Nov "
        f"{rng.randrange(1, 31)} 12:01:{rng.randrange(60):02d} dn228/dn228 {component}: session closed for user root"
    )


GENERATORS: dict[str, Callable[[random.Random], str]] = {
    "HDFS": _hdfs, "Hadoop": _hadoop, "Spark": _spark, "Zookeeper": _zookeeper, "Windows": _windows,
    "Apache": _apache, "HealthApp": _healthapp, "BGL": _bgl, "HPC": _hpc, "Thunderbird": _thunderbird,
}  # fmt: skip
_EDITS = ["9", "a", " ", "  ", "\t", "ü", "-", ":", "[", "]", "|", ",", "\x1f", "\u00a0", "٣"]


def _edit(rng: random.Random, line: str) -> str:
    if not line or rng.random() >= 0.25:
        return line
    i = rng.randrange(len(line))
    return line[:i] + rng.choice(_EDITS) + line[i + rng.choice([0, 1]) :]


def _write(path: Path, name: str, seed: int, n: int = 2000) -> None:
    rng = random.Random(seed)
    lines = [_edit(rng, GENERATORS[name](rng)) for _ in range(n)]
    lines += ["", "garbage", "   "]
    path.write_bytes("\n".join(lines).encode() + b"\n\xff\xfe bad bytes\n")


_MON = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]


def _day_time(rng: random.Random) -> tuple[int, str]:
    return rng.randrange(1, 29), f"{rng.randrange(24):02d}:{rng.randrange(60):02d}:{rng.randrange(60):02d}"


def _linux(rng: random.Random, month: int) -> str:
    day, hms = _day_time(rng)
    return (
        f"{_MON[month - 1]} {day:2d} {hms} combo {rng.choice(['sshd(pam_unix)[19939]', 'su(pam_unix)', 'kernel'])}: "
        f"authentication failure; logname= uid={rng.randrange(9)}"
    )


def _openssh(rng: random.Random, month: int) -> str:
    day, hms = _day_time(rng)
    return (
        f"{_MON[month - 1]} {day} {hms} LabSZ sshd[{rng.randrange(99999)}]: Failed password for root from "
        f"183.62.140.253 port {rng.randrange(65536)} ssh2"
    )


def _mac(rng: random.Random, month: int) -> str:
    day, hms = _day_time(rng)
    address = rng.choice(["", " (0x7f8)", " ()"])
    return (
        f"{_MON[month - 1]} {day:2d} {hms} calvisitor-10-105-160-95 {rng.choice(['kernel', 'com.apple.x', 'a b'])}"
        f"[{rng.randrange(999)}]{address}: IOThunderboltSwitch<0>(0x0)::listenerCallback - {rng.randrange(99)}"
    )


def _android(rng: random.Random, month: int) -> str:
    day, hms = _day_time(rng)
    return (
        f"{month:02d}-{day:02d} {hms}.{rng.randrange(1000):03d}  {rng.randrange(9999)}  {rng.randrange(9999)} "
        f"{rng.choice('VDIWEFA')} WindowManager: printFreezingDisplayLogsopening app wtoken = {rng.randrange(99)}"
    )


def _proxifier(rng: random.Random, month: int) -> str:
    day, hms = _day_time(rng)
    return (
        f"[{month:02d}.{day:02d} {hms}] {rng.choice(['chrome.exe', 'Dropbox.exe *64', ''])} - "
        f"proxy.cse.cuhk.edu.hk:5070 open through proxy proxy.cse.cuhk.edu.hk:5070 HTTPS"
    )


YEARLESS: dict[str, Callable[[random.Random, int], str]] = {
    "Linux": _linux, "OpenSSH": _openssh, "Mac": _mac, "Android": _android, "Proxifier": _proxifier,
}  # fmt: skip


def test_every_generated_pattern_has_a_plan() -> None:
    """The generators cover the patterns with a plan (a new plan needs a generator here)."""
    planned = {name for name in LOGHUB_PATTERNS
               if LoghubParser(FormatOptions(format="loghub"), _Clock(None, 2020), name)._plan is not None}  # fmt: skip
    assert planned == set(GENERATORS) | set(YEARLESS)
    assert planned == set(LOGHUB_PATTERNS) - {"OpenStack"}  # its entity regex looks behind: RE2 has none


@pytest.mark.parametrize("odd", [0.0, 0.003, 0.05])
@pytest.mark.parametrize("name", sorted(YEARLESS))
def test_year_less_patterns_give_the_per_line_batches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, odd: float
) -> None:
    """Year-less times: the years over December -> January steps and the clock's state across
    blocks; a block with a line it cannot date (an edit: non-ASCII, an impossible date, a month
    13) goes per line whole. The same batches; blocks without such a line go column-wise."""
    monkeypatch.setattr(stage, "BATCH_ROWS", 150)
    rng = random.Random(name)
    lines = [GEN(rng, month) if rng.random() >= odd else _edit(rng, GEN(rng, month))
             for month in month_walk(rng, 2400) for GEN in [YEARLESS[name]]]  # fmt: skip
    path = tmp_path / f"{name}.log"
    path.write_bytes("\n".join(lines).encode() + b"\n")
    options = FormatOptions(format="loghub", pattern=name, year=2001)
    assert_same_batches(path, options)
    taken = sum(len(b.columns.positions) for b in parse_file_blocks(path, 300, options=options, block_lines=150)
                if b.columns)  # fmt: skip
    assert taken > (2000 if odd == 0.0 else 600 if odd < 0.01 else 50)


def test_a_year_less_block_starting_on_the_last_time_keeps_the_reference_year(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As for RFC 3164 syslog: the reference reuses the last parsed time without moving the clock."""
    monkeypatch.setattr(stage, "BATCH_ROWS", 21)
    head = "Dec 31 23:59:59 combo su(pam_unix): x"
    lines = [head] * 20 + ["Feb 30 00:00:00 combo su(pam_unix): impossible"]
    lines += [head] + [f"Jan  1 00:00:{i:02d} combo su(pam_unix): y {i}" for i in range(20)]
    path = tmp_path / "linux.log"
    path.write_bytes("\n".join(lines).encode() + b"\n")
    assert_same_batches(path, FormatOptions(format="loghub", pattern="Linux", year=2020))


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_generated_lines_give_the_per_line_batches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    monkeypatch.setattr(stage, "BATCH_ROWS", 700)
    path = tmp_path / f"{name}.log"
    _write(path, name, seed=len(name))
    options = FormatOptions(format="loghub", pattern=name)
    assert_same_batches(path, options)
    assert lines_taken(path, options) > 250


@pytest.mark.parametrize(
    "options",
    [
        FormatOptions(format="loghub", pattern="HDFS", default_entity="dflt"),
        FormatOptions(format="loghub", pattern="HDFS", entity_field="Pid"),
        FormatOptions(format="loghub", pattern="HDFS", label_field="Level", level_field="Component"),
        FormatOptions(format="loghub", pattern="HDFS", timezone="Europe/Paris"),
        FormatOptions(
            format="loghub",
            pattern="<Date> <Time> <Pid> <Level> <Component>: <Content>",
            timestamp_format="%y%m%d %H%M%S",
        ),
        FormatOptions(
            format="loghub",
            pattern="<Date> <Time> <Pid> <Level> <Component>: <Content>",
            timestamp_fields=["Date", "Time"],
            timestamp_format="%y%m%d %H%M%S",
        ),
    ],
    ids=["default_entity", "entity_field", "fields", "timezone", "custom", "custom_time_fields"],
)
def test_options_give_the_per_line_batches(tmp_path: Path, options: FormatOptions) -> None:
    path = tmp_path / "hdfs.log"
    _write(path, "HDFS", seed=9, n=1200)
    assert_same_batches(path, options)
    taken = lines_taken(path, options)
    assert taken == 0 if options.timezone else taken > 300


def test_unnamed_groups_and_optional_fields() -> None:
    assert _re2(r"a(b)(?:c)(?P<x>[(]d)\(e") == r"a(?:b)(?:c)(?P<x>[(]d)\(e"
    assert _re2(r"(\d+)-([a-z]{3})", name="t") == r"(?P<t0>\d+)-(?P<t1>[a-z]{3})"
    assert _optional_groups(r"(?P<a>x)(\[(?P<b>\d+)\])?(?P<c>y|z)(?:(?P<d>w)|v)") == {"b", "d"}


def test_an_empty_label_field_is_no_label(tmp_path: Path) -> None:
    """HealthApp's component may be empty: as the label field, "" and "-" both mean no label."""
    path = tmp_path / "health.log"
    _write(path, "HealthApp", seed=4, n=1500)
    options = FormatOptions(format="loghub", pattern="HealthApp", label_field="Component")
    assert_same_batches(path, options)
    assert lines_taken(path, options) > 250
