"""The HTML report of a real (small) pipeline run: self-contained, complete, escaped."""

from __future__ import annotations

import base64
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from loganomaly.config import load_config
from loganomaly.evaluation import report
from loganomaly.evaluation import stage as evaluate
from loganomaly.features import stage as featurize
from loganomaly.ingest import stage as ingest
from loganomaly.ingest import synthetic
from loganomaly.lake.tables import Lake
from loganomaly.scoring import stage as score
from loganomaly.training import stage as train

CONF = Path(__file__).resolve().parents[2] / "conf"
VOID = {"meta", "img", "br", "hr", "link", "input"}


@pytest.fixture(scope="module")
def run(spark, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """generate -> ingest -> featurize -> train -> score, as small as still has every anomaly kind."""
    root = tmp_path_factory.mktemp("report")
    cfg = load_config(
        profile="test",
        overrides=[f"lake.root={root / 'lake'}", "lake.engine=deltars", "generate.hosts=2", "generate.days=2",
                   "train.epochs=2"],
        conf_dir=CONF,
    )
    data = synthetic.generate(root / "raw", cfg.generate)
    lake = Lake(spark, cfg.lake.root, "deltars")
    ingest.run(spark, cfg, [str(root / "raw")], lake=lake)
    featurize.run(spark, cfg, lake=lake)
    train.run(spark, cfg, root / "model", lake=lake)
    score.run(spark, cfg, root / "model", lake=lake)
    return cfg, lake, root, data.labels_path


class _Checker(HTMLParser):
    """Collects tags, ids and image sources, and fails on mismatched or unclosed elements."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.ids: set[str] = set()
        self.images: list[str] = []
        self.tags: set[str] = set()
        self.errors: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        values = dict(attrs)
        if values.get("id"):
            self.ids.add(str(values["id"]))
        if tag == "img":
            self.images.append(str(values.get("src")))
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:]}")
        else:
            self.stack.pop()


def _check(path: Path) -> tuple[str, _Checker]:
    text = path.read_text(encoding="utf-8")
    checker = _Checker()
    checker.feed(text)
    checker.close()
    assert text.startswith("<!DOCTYPE html>")
    assert not checker.errors and not checker.stack, (checker.errors, checker.stack)
    assert "script" not in checker.tags and "link" not in checker.tags and "<script" not in text.lower()
    # base64 may hold "//", so look for URLs outside the embedded images only
    outside = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", text)
    assert not re.search(r"(?:https?:)?//[a-z0-9]|url\(|@import", outside, re.I), "external reference"
    for src in checker.images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]).startswith(b"\x89PNG\r\n\x1a\n")
    return text, checker


@pytest.mark.spark
@pytest.mark.slow
def test_report_with_labels_is_complete_and_self_contained(spark, run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cfg, lake, root, labels = run
    summary = evaluate.run(spark, cfg, root / "model", labels=str(labels), lake=lake)
    assert summary.results["stored"]["recall"] > 0.5
    out = report.build_report(spark, cfg, root / "model", tmp_path / "r" / "report.html", lake=lake,
                              labels=labels, figures_dir=tmp_path / "png")
    text, checker = _check(out)
    assert {"summary", "timelines", "anomalies", "evaluation", "training"} <= checker.ids
    assert len(checker.images) == 4  # timelines, histogram, PR/ROC, training
    assert sorted(p.stem for p in (tmp_path / "png").glob("*.png")) == [
        "pr_roc", "score_histogram", "timelines", "training"]
    assert summary.model_version in text and "host-0" in text
    assert "ROC-AUC" in text and "best F1" in text and "evaluations v0" in text
    assert text.count("<tr>") > 5  # the top anomalies table has rows


@pytest.mark.spark
@pytest.mark.slow
def test_report_without_labels_says_why_there_are_no_curves(spark, run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cfg, lake, root, _ = run
    out = report.build_report(spark, cfg, root / "model", tmp_path / "report.html", lake=lake, max_entities=1)
    text, checker = _check(out)
    assert len(checker.images) == 3  # no PR/ROC
    assert "hold only normal windows" in text  # synthetic events carry no labels
    assert "The 1 entity with the highest maximum score (of 2)" in text


def test_text_is_escaped() -> None:
    cell = '<script>alert("x")</script> & <img src=x>'
    html = report._table(["<b>h</b>"], [[cell]])
    assert "<script" not in html and "<img" not in html and "<b>" not in html
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &lt;img src=x&gt;" in html
