"""Deterministic synthetic network and system activity with injected, labelled anomalies.

Why: the pipeline needs data that runs anywhere (tests, ``make demo``) and whose ground truth
is known. Several hosts produce Zeek-conn-like JSON lines and RFC 5424 syslog text over several
days with a diurnal cycle; from day ``anomaly_from_day`` on, a port scan, a failure storm, a
traffic spike and an SSH brute force are injected, each on one host for 10-20 minutes, and
written to ``labels.csv``. The same config always gives byte-identical files.
"""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from loganomaly.config import GenerateConfig

log = logging.getLogger(__name__)

ANOMALY_KINDS = ("port_scan", "failure_storm", "traffic_spike", "ssh_bruteforce")
USERS = ["alice", "bob", "carol", "dave", "erin", "svc-backup", "svc-deploy"]
EXTERNAL = ["93.184.216.34", "151.101.1.69", "140.82.112.3", "104.16.132.229", "172.217.16.142", "13.107.42.14"]
SERVICES = [(443, "tcp", "ssl"), (80, "tcp", "http"), (53, "udp", "dns"), (123, "udp", "ntp"), (22, "tcp", "ssh")]
SERVICE_CDF = np.cumsum([0.55, 0.15, 0.22, 0.04, 0.04])[:-1]
# (app, severity, message template); severity per RFC 5424 (6 info, 5 notice, 4 warning).
SYSLOG_NORMAL = [
    ("sshd", 6, "Accepted publickey for {user} from 10.0.0.{peer} port {port} ssh2"),
    ("sshd", 6, "pam_unix(sshd:session): session closed for user {user}"),
    ("CRON", 6, "({user}) CMD (/usr/local/bin/backup.sh --incremental)"),
    ("systemd", 6, "Started Session {n} of user {user}."),
    ("systemd", 5, "Starting Daily apt upgrade and clean activities..."),
    ("nginx", 6, "GET /api/v1/items/{n} 200 {bytes}"),
    ("kernel", 6, "eth0: link up, 1000 Mbps, full duplex"),
    ("sudo", 5, "{user} : TTY=pts/0 ; PWD=/home/{user} ; USER=root ; COMMAND=/usr/bin/systemctl status nginx"),
    ("chronyd", 6, "Selected source 10.0.0.1"),
    ("nginx", 4, "upstream response time {secs}s exceeds 1s for /api/v1/search"),
]
SYSLOG_WEIGHTS = np.array([0.12, 0.12, 0.1, 0.12, 0.04, 0.3, 0.02, 0.05, 0.1, 0.03])
FAILURE_MESSAGES = [
    ("kernel", 3, "blk_update_request: I/O error, dev sda, sector {n} op 0x1:(WRITE)"),
    ("kernel", 2, "EXT4-fs error (device sda1): ext4_journal_check_start:83: Detected aborted journal"),
    ("systemd", 3, "postgresql.service: Main process exited, code=killed, status=9/KILL"),
    ("systemd", 3, "postgresql.service: Failed with result 'signal'."),
    ("systemd", 5, "postgresql.service: Scheduled restart job, restart counter is at {n}."),
    ("nginx", 3, "connect() failed (111: Connection refused) while connecting to upstream 127.0.0.1:5432"),
]


@dataclass
class InjectedAnomaly:
    entity: str
    start: dt.datetime
    end: dt.datetime
    kind: str


@dataclass
class GeneratedData:
    files: list[Path]
    labels_path: Path
    n_lines: int
    anomalies: list[InjectedAnomaly] = field(default_factory=list)
    #: Benign level shifts of :func:`generate_metrics` with ``drift``: (host, time) of each step.
    level_shifts: list[tuple[str, dt.datetime]] = field(default_factory=list)


@dataclass(frozen=True)
class MetricDrift:
    """How :func:`generate_metrics`' series move while staying normal (none of it is labelled).

    Real hosts do not keep the level they had during training: a deploy moves CPU and disk to a new
    level and keeps them there, load follows the day, memory creeps. A detector fitted once on the
    first days reads all of that as anomalous; this is what the per-entity baseline must follow.

    Attributes:
        shift_at: where each host's level shifts, as fractions of the series (one step per
            fraction); host ``h`` shifts ``h`` hours later than host 0, so shifts are not
            simultaneous across the fleet.
        shift_size: relative size of each shift (0.3 = CPU, memory and disk I/O at 130 % of their
            level after it; shifts compound).
        drift_per_day: slow linear drift, relative per day, on all three metrics.
        season_amplitude: daily cycle on memory (relative), which the default series lack; CPU and
            disk I/O keep their own daily cycle.
    """

    shift_at: tuple[float, ...] = (0.45,)
    shift_size: float = 0.3
    drift_per_day: float = 0.02
    season_amplitude: float = 0.1

    def __post_init__(self) -> None:
        if not all(0 < f < 1 for f in self.shift_at):
            raise ValueError(f"shift_at fractions must be in (0, 1), got {self.shift_at}")
        if self.shift_size <= -1:
            raise ValueError(f"shift_size must be > -1 (a level cannot go below zero), got {self.shift_size}")


def _host(i: int) -> str:
    return f"host-{i + 1:02d}"


def _ip(i: int) -> str:
    return f"10.0.0.{i + 10}"


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _diurnal(minutes: np.ndarray) -> np.ndarray:
    """Activity multiplier over the day: low at night, peak mid-afternoon (0.25 .. 1.75)."""
    hour = (minutes % 1440) / 60.0
    return 1.0 + 0.75 * np.sin((hour - 9.0) / 24.0 * 2 * np.pi)


def _poisson_times(rng: np.random.Generator, start: float, minutes: int, rate: float) -> np.ndarray:
    """Sorted event times over ``minutes`` with a per-minute Poisson count shaped by the diurnal cycle."""
    m = np.arange(minutes)
    counts = rng.poisson(rate * _diurnal(m))
    base = np.repeat(start + m * 60.0, counts)
    return np.sort(base + rng.uniform(0, 60, size=len(base)))


def _conn(ts: float, host: int, rng: np.random.Generator, **over: Any) -> dict[str, Any]:
    u = rng.random(4)
    port, proto, service = SERVICES[int(np.searchsorted(SERVICE_CDF, u[0]))]
    normal = rng.standard_normal(3)
    duration = float(np.exp(-0.5 + 1.0 * normal[0]))
    orig = int(np.exp(6.5 + 1.0 * normal[1]))
    resp = int(np.exp(8.5 + 1.3 * normal[2]))
    rec: dict[str, Any] = {
        "ts": round(ts, 6),
        "uid": f"C{int(u[1] * 2**52):013x}",
        "host": _host(host),
        "id.orig_h": _ip(host),
        "id.orig_p": 32768 + int(u[2] * 28232),
        "id.resp_h": "10.0.0.1" if service in ("dns", "ntp") else EXTERNAL[int(u[3] * (3 + host % 3))],
        "id.resp_p": port,
        "proto": proto,
        "service": service,
        "duration": round(duration, 6),
        "orig_bytes": orig,
        "resp_bytes": resp,
        "conn_state": "SF",
        "orig_pkts": max(1, orig // 500),
        "resp_pkts": max(1, resp // 1200),
    }
    rec.update(over)
    return rec


def _syslog(ts: float, host: int, app: str, severity: int, message: str, pid: int) -> str:
    pri = 8 * 4 + severity if app in ("sshd", "sudo") else 8 * 3 + severity  # auth(4) or daemon(3)
    if app == "kernel":
        pri = severity
    return f"<{pri}>1 {_iso(ts)} {_host(host)} {app} {pid} - - {message}"


def _fill(template: str, rng: np.random.Generator) -> str:
    return template.format(
        user=USERS[int(rng.integers(0, len(USERS)))],
        peer=int(rng.integers(2, 250)),
        port=int(rng.integers(32768, 61000)),
        n=int(rng.integers(1, 99999)),
        bytes=int(rng.integers(200, 90000)),
        secs=round(float(rng.uniform(1.0, 3.0)), 3),
    )


def _plan(cfg: GenerateConfig, rng: np.random.Generator, t0: float) -> list[InjectedAnomaly]:
    """Place one anomaly of each kind per anomalous day on distinct hosts, at non-overlapping times."""
    plan = []
    days = list(range(cfg.anomaly_from_day, cfg.days))
    for day in days:
        hosts = rng.permutation(cfg.hosts)
        slots = rng.choice(np.arange(2, 22), size=len(ANOMALY_KINDS), replace=False)  # hour of day
        for j, kind in enumerate(ANOMALY_KINDS):
            # With one anomalous day all kinds land on it; with more, spread them over the days.
            if j % len(days) != days.index(day):
                continue
            start = t0 + day * 86400 + int(slots[j]) * 3600 + int(rng.integers(0, 40)) * 60
            length = int(rng.integers(10, 21)) * 60
            plan.append(
                InjectedAnomaly(
                    _host(int(hosts[j % cfg.hosts])),
                    dt.datetime.fromtimestamp(start, dt.timezone.utc),
                    dt.datetime.fromtimestamp(start + length, dt.timezone.utc),
                    kind,
                )
            )
    return sorted(plan, key=lambda a: a.start)


def _inject(
    anomaly: InjectedAnomaly, rng: np.random.Generator, conns: list[dict[str, Any]], logs: dict[int, list[tuple[float, str]]]
) -> None:
    host = int(anomaly.entity.split("-")[1]) - 1
    start, end = anomaly.start.timestamp(), anomaly.end.timestamp()
    pid = int(rng.integers(1000, 30000))
    if anomaly.kind == "port_scan":
        target = f"10.0.1.{int(rng.integers(2, 250))}"
        ports = rng.permutation(np.arange(1, 1025))[: int(rng.integers(400, 700))]
        times = np.sort(rng.uniform(start, end, len(ports)))
        for ts, port in zip(times, ports, strict=True):
            conns.append(
                _conn(float(ts), host, rng, **{"id.resp_h": target, "id.resp_p": int(port), "proto": "tcp",
                      "service": "-", "duration": 0.0, "orig_bytes": 0, "resp_bytes": 0,
                      "conn_state": str(rng.choice(["REJ", "S0"])), "orig_pkts": 1, "resp_pkts": 0})
            )
    elif anomaly.kind == "traffic_spike":
        target = "185.220.101." + str(int(rng.integers(2, 250)))
        for ts in np.sort(rng.uniform(start, end, int(rng.integers(6, 12)))):
            size = int(rng.lognormal(19.5, 0.4))  # hundreds of MB: ~100x+ normal bytes per step
            conns.append(_conn(float(ts), host, rng, **{"id.resp_h": target, "id.resp_p": 443, "service": "ssl",
                               "duration": round(float(rng.uniform(60, 240)), 3), "orig_bytes": size,
                               "resp_bytes": int(size // 200), "orig_pkts": size // 1400, "resp_pkts": size // 50000}))
    elif anomaly.kind == "failure_storm":
        for ts in np.sort(rng.uniform(start, end, int(rng.integers(250, 400)))):
            app, sev, template = FAILURE_MESSAGES[int(rng.integers(0, len(FAILURE_MESSAGES)))]
            logs[host].append((float(ts), _syslog(float(ts), host, app, sev, _fill(template, rng), pid)))
        for ts in np.sort(rng.uniform(start, end, int(rng.integers(60, 120)))):
            conns.append(_conn(float(ts), host, rng, **{"id.resp_h": "10.0.0.5", "id.resp_p": 5432, "service": "-",
                               "duration": 0.0, "orig_bytes": 0, "resp_bytes": 0, "conn_state": "REJ"}))
    elif anomaly.kind == "ssh_bruteforce":
        attacker = f"45.155.{int(rng.integers(1, 250))}.{int(rng.integers(1, 250))}"
        for ts in np.sort(rng.uniform(start, end, int(rng.integers(300, 500)))):
            user = str(rng.choice(["admin", "root", "test", "oracle", "ubuntu", "pi", "git"]))
            msg = f"Failed password for invalid user {user} from {attacker} port {int(rng.integers(30000, 65000))} ssh2"
            logs[host].append((float(ts), _syslog(float(ts), host, "sshd", 4, msg, pid)))


def generate(out_dir: str | Path, cfg: GenerateConfig) -> GeneratedData:
    """Write the synthetic data set under ``out_dir`` and return what was written.

    Layout: ``conn/conn-YYYY-MM-DD.jsonl`` (the last day gzip-compressed), ``syslog/host-NN.log``,
    and ``labels.csv`` (``entity,start,end,kind``).
    """
    out = Path(out_dir)
    rng = np.random.default_rng(cfg.seed)
    t0 = dt.datetime.fromisoformat(cfg.start).replace(tzinfo=dt.timezone.utc).timestamp()
    minutes = cfg.days * 1440
    conns: list[dict[str, Any]] = []
    logs: dict[int, list[tuple[float, str]]] = {h: [] for h in range(cfg.hosts)}
    for h in range(cfg.hosts):
        # Hosts differ in how busy they are, so a model must learn several normals.
        scale = 0.6 + 0.8 * (h % 4) / 3
        for ts in _poisson_times(rng, t0, minutes, cfg.conn_per_minute * scale):
            conns.append(_conn(float(ts), h, rng))
        pid = int(rng.integers(500, 5000))
        times = _poisson_times(rng, t0, minutes, cfg.syslog_per_minute * scale)
        choices = rng.choice(len(SYSLOG_NORMAL), size=len(times), p=SYSLOG_WEIGHTS)
        for ts, c in zip(times, choices, strict=True):
            app, sev, template = SYSLOG_NORMAL[int(c)]
            logs[h].append((float(ts), _syslog(float(ts), h, app, sev, _fill(template, rng), pid)))
    anomalies = _plan(cfg, rng, t0)
    for anomaly in anomalies:
        _inject(anomaly, rng, conns, logs)

    files: list[Path] = []
    n_lines = 0
    conn_dir = out / "conn"
    conn_dir.mkdir(parents=True, exist_ok=True)
    conns.sort(key=lambda r: r["ts"])
    by_day: dict[int, list[str]] = {}
    for rec in conns:
        by_day.setdefault(int((rec["ts"] - t0) // 86400), []).append(json.dumps(rec, separators=(",", ":")))
    for day in range(cfg.days):
        name = (dt.datetime.fromtimestamp(t0, dt.timezone.utc) + dt.timedelta(days=day)).strftime("%Y-%m-%d")
        lines = by_day.get(day, [])
        text = ("\n".join(lines) + "\n") if lines else ""
        if day == cfg.days - 1 and cfg.days > 1:
            path = conn_dir / f"conn-{name}.jsonl.gz"
            # mtime=0: byte-identical output for the same seed.
            with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
                gz.write(text.encode())
        else:
            path = conn_dir / f"conn-{name}.jsonl"
            path.write_text(text, encoding="utf-8")
        files.append(path)
        n_lines += len(lines)
    log_dir = out / "syslog"
    log_dir.mkdir(parents=True, exist_ok=True)
    for h, entries in logs.items():
        entries.sort(key=lambda e: e[0])
        path = log_dir / f"{_host(h)}.log"
        path.write_text("".join(line + "\n" for _, line in entries), encoding="utf-8")
        files.append(path)
        n_lines += len(entries)
    labels = out / "labels.csv"
    with open(labels, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["entity", "start", "end", "kind"])
        for a in anomalies:
            writer.writerow([a.entity, a.start.strftime("%Y-%m-%dT%H:%M:%SZ"), a.end.strftime("%Y-%m-%dT%H:%M:%SZ"), a.kind])
    log.info("generated %d lines in %d files with %d anomalies under %s", n_lines, len(files), len(anomalies), out)
    return GeneratedData(files=files, labels_path=labels, n_lines=n_lines, anomalies=anomalies)


# ------------------------------------------------------------------ metric series (CSV)
#: Columns of :func:`generate_metrics`' CSV files after ``timestamp`` and ``host``.
METRIC_COLUMNS = ("cpu", "mem_used", "disk_io")


def generate_metrics(
    out_dir: str | Path,
    hosts: int = 3,
    days: int = 1,
    start: str = "2024-03-04",
    anomalies: int = 0,
    seed: int = 0,
    drift: MetricDrift | None = None,
) -> GeneratedData:
    """One-minute metric series per host (``metrics.csv``: ``timestamp,host,cpu,mem_used,disk_io,label``).

    CPU and disk I/O follow a diurnal cycle with noise; memory drifts slowly. ``anomalies``
    episodes of 20 minutes each (a stuck CPU at 100 % with disk I/O collapsing, on one host) are
    written with ``label=incident`` on their rows and to ``labels.csv`` as intervals, so the same
    data can be judged through the events' labels or the interval file. Deterministic per seed.

    ``drift`` (see :class:`MetricDrift`) adds benign level shifts, a daily cycle on memory and slow
    drift; the shifts are returned in ``level_shifts``. It draws no random numbers, so the noise is
    the same with and without it, and the default (``None``) writes exactly the bytes it wrote
    before the option existed.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    t0 = dt.datetime.fromisoformat(start).replace(tzinfo=dt.timezone.utc).timestamp()
    minutes = np.arange(days * 1440)
    plan: list[InjectedAnomaly] = []
    for k in range(anomalies):
        m0 = int(rng.integers(60, days * 1440 - 60))
        plan.append(InjectedAnomaly(_host(k % hosts), dt.datetime.fromtimestamp(t0 + m0 * 60, dt.timezone.utc),
                                    dt.datetime.fromtimestamp(t0 + (m0 + 20) * 60, dt.timezone.utc), "incident"))
    rows: list[tuple[Any, ...]] = []
    shifts: list[tuple[str, dt.datetime]] = []
    for h in range(hosts):
        load = _diurnal(minutes % 1440) * (0.5 + 0.2 * h)
        cpu = np.clip(0.15 + 0.5 * load + rng.normal(0, 0.03, len(minutes)), 0, 1)
        mem = 2.0e9 + 3.0e8 * h + np.cumsum(rng.normal(0, 1e6, len(minutes)))
        disk = np.maximum(0, 200 + 800 * load + rng.normal(0, 40, len(minutes)))
        if drift is not None:
            factor, at = _drift_factor(drift, len(minutes), offset=60 * h)
            cpu = np.clip(cpu * factor, 0, 1)
            mem = mem * factor * (1 + drift.season_amplitude * (_diurnal(minutes % 1440) - 1))
            disk = disk * factor
            shifts.extend((_host(h), dt.datetime.fromtimestamp(t0 + m * 60, dt.timezone.utc)) for m in at)
        labels = [""] * len(minutes)
        for a in plan:
            if a.entity != _host(h):
                continue
            lo = int((a.start.timestamp() - t0) // 60)
            cpu[lo : lo + 20], disk[lo : lo + 20] = 1.0, 5.0
            for i in range(lo, lo + 20):
                labels[i] = "incident"
        for i, m in enumerate(minutes):
            rows.append((t0 + m * 60, _host(h), f"{cpu[i]:.4f}", f"{mem[i]:.0f}", f"{disk[i]:.1f}", labels[i]))
    rows.sort(key=lambda r: (r[0], r[1]))
    path = out / "metrics.csv"
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["timestamp", "host", *METRIC_COLUMNS, "label"])
        for r in rows:
            writer.writerow([_iso(r[0]), *r[1:]])
    labels_path = out / "labels.csv"
    with labels_path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["entity", "start", "end", "kind"])
        for a in plan:
            writer.writerow([a.entity, a.start.isoformat(), a.end.isoformat(), a.kind])
    return GeneratedData([path], labels_path, len(rows) + 1, plan, sorted(shifts, key=lambda s: (s[1], s[0])))


def _drift_factor(drift: MetricDrift, n: int, offset: int) -> tuple[np.ndarray, list[int]]:
    """Multiplier per minute (level shifts times slow drift) and the minutes where shifts happen."""
    minute = np.arange(n)
    at = [min(n - 1, int(f * n) + offset) for f in drift.shift_at]
    factor = 1 + drift.drift_per_day * minute / 1440.0
    for m in at:
        factor = factor * np.where(minute >= m, 1 + drift.shift_size, 1.0)
    return factor, at


# ------------------------------------------------------------------ HDFS-style block sessions
_HDFS_NORMAL = (
    "dfs.FSNamesystem: BLOCK* NameSystem.allocateBlock: /user/root/rand/_temporary/part-{part}. {blk}",
    "dfs.DataNode$DataXceiver: Receiving block {blk} src: /10.250.{a}.{b}:{port} dest: /10.250.{a}.{b}:50010",
    "dfs.DataNode$PacketResponder: PacketResponder {n} for block {blk} terminating",
    "dfs.DataNode$PacketResponder: Received block {blk} of size 67108864 from /10.250.{a}.{b}",
    "dfs.FSNamesystem: BLOCK* NameSystem.addStoredBlock: blockMap updated: 10.250.{a}.{b}:50010 is added to {blk} "
    "size 67108864",
)
_HDFS_FAILURES = (
    "dfs.DataNode: Exception in receiveBlock for block {blk} java.io.IOException: Connection reset by peer",
    "dfs.DataNode$PacketResponder: PacketResponder {blk} {n} Exception java.io.InterruptedIOException: "
    "Interruped while waiting for IO on channel",
    "dfs.DataNode$DataXceiver: writeBlock {blk} received exception java.io.IOException: Could not read from stream",
)


def generate_hdfs(out_dir: str | Path, blocks: int = 200, anomalous: int = 0, seed: int = 0,
                  start: str = "2008-11-09T20:00:00") -> GeneratedData:
    """HDFS_v1-format lines (``HDFS.log``) for ``blocks`` block sessions and ``anomaly_label.csv``.

    A normal block is allocated, received by three data nodes and stored three times (the
    HDFS_v1 shape); an anomalous one (``anomalous`` of them, labels ``Anomaly``) also logs a write
    failure and stops after one or two replicas. Block ids are ``blk_<n>`` as in HDFS, so
    ``features.session_key: params:blk_-?\\d+`` groups them. Deterministic per seed.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    t = dt.datetime.fromisoformat(start).replace(tzinfo=dt.timezone.utc).timestamp()
    bad = set(rng.choice(blocks, size=anomalous, replace=False).tolist()) if anomalous else set()
    lines: list[tuple[float, str]] = []
    labels: list[tuple[str, str]] = []
    for i in range(blocks):
        blk = f"blk_{'-' if rng.random() < 0.5 else ''}{int(rng.integers(10**17, 10**18))}"
        labels.append((blk, "Anomaly" if i in bad else "Normal"))
        t += float(rng.exponential(20.0))
        replicas = int(rng.integers(1, 3)) if i in bad else 3
        fields = {"blk": blk, "part": f"{i:05d}", "port": int(rng.integers(30000, 60000)), "n": int(rng.integers(0, 3))}
        steps = [_HDFS_NORMAL[0]] + [_HDFS_NORMAL[1]] * replicas
        if i in bad:
            steps.append(_HDFS_FAILURES[int(rng.integers(len(_HDFS_FAILURES)))])
        steps += [_HDFS_NORMAL[2], _HDFS_NORMAL[3]] * replicas + [_HDFS_NORMAL[4]] * replicas
        ts = t
        for template in steps:
            ts += float(rng.exponential(0.5))
            text = template.format(a=int(rng.integers(1, 250)), b=int(rng.integers(1, 250)), **fields)
            lines.append((ts, text))
    lines.sort(key=lambda x: x[0])
    path = out / "HDFS.log"
    with path.open("w") as fh:
        for ts, text in lines:
            when = dt.datetime.fromtimestamp(ts, dt.timezone.utc)
            level = "WARN" if "Exception" in text or "exception" in text else "INFO"
            fh.write(f"{when:%y%m%d %H%M%S} {int(rng.integers(10, 999))} {level} {text}\n")
    labels_path = out / "anomaly_label.csv"
    with labels_path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["BlockId", "Label"])
        writer.writerows(labels)
    return GeneratedData([path], labels_path, len(lines), [])
