"""Responses rendered by entropy, on a hand-worked token table: the HTML page parses, escapes
every piece of text, marks exactly the table's top-20% tokens (the trainer's ceil(0.2 * N),
ties to the earlier token) and carries each token's entropy and log-prob; the PNG is written."""

from html.parser import HTMLParser
from types import SimpleNamespace

import pytest
import torch

from megatron_fork.analysis.render import shown_samples, write_html, write_png
from megatron_fork.analysis.token_table import Detokenizer, TokenTableWriter

PIECES = ["<b>", "&", "x", "y", "a", "<", "b", "c", "d", "e"]
# Ten tokens over two samples. The top 20% is ceil(0.2 * 10) = 2 tokens, the two largest:
# "<" (1.2) and "<b>" (0.9); the threshold is the smaller, 0.9. ("e", 0.6, is the 80th
# percentile: at or above it would mark 3.)
ENTROPY = torch.tensor([0.9, 0.1, 0.5, 0.05, 0.2, 1.2, 0.0, 0.3, 0.4, 0.6])
LOGPROB = -torch.arange(10, dtype=torch.float32) / 10
TOP = {"<b>", "<"}


def _table(path, entropy=ENTROPY):
    words = Detokenizer(lambda t: PIECES[t], lambda ids: "".join(PIECES[i] for i in ids))
    samples = [
        SimpleNamespace(request_id="s&0", prompt_ids=(2, 1), output_ids=(0, 1, 2, 3)),
        SimpleNamespace(request_id="s1", prompt_ids=(4,), output_ids=(4, 5, 6, 7, 8, 9)),
    ]
    scores = [(LOGPROB[:4], entropy[:4]), (LOGPROB[4:], entropy[4:])]
    with TokenTableWriter(path, {"model": "m<1>", "temperature": 1.0}) as table:
        table.write(samples, scores, words)
    return path


class _Spans(HTMLParser):
    """Every token span's classes, title and text; every start tag seen."""

    def __init__(self):
        super().__init__()
        self.spans, self.tags, self._open = [], [], None

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        attrs = dict(attrs)
        if tag == "span" and "tok" in attrs.get("class", "").split():
            self._open = {"classes": attrs["class"].split(), "title": attrs["title"], "text": ""}

    def handle_data(self, data):
        if self._open is not None:
            self._open["text"] += data

    def handle_endtag(self, tag):
        if tag == "span" and self._open is not None:
            self.spans.append(self._open)
            self._open = None


def test_html_escapes_and_marks_exactly_the_top_tokens(tmp_path):
    out = write_html(_table(tmp_path / "t.parquet"), tmp_path / "page.html", samples=2)
    page = out.read_text()
    parser = _Spans()
    parser.feed(page)
    parser.close()
    tokens = parser.spans
    assert [s["text"] for s in tokens] == PIECES  # "<b>", "&" and "<" came through as text
    assert {s["text"] for s in tokens if "top" in s["classes"]} == TOP
    assert "b" not in parser.tags  # the piece "<b>" did not become a tag
    assert "&lt;b&gt;" in page and "&amp;" in page and "s&amp;0" in page
    assert "<title>Token entropy: m&lt;1&gt;</title>" in page
    assert tokens[1]["title"] == "entropy 0.1000 nats, log-prob -0.1000"
    assert tokens[5]["title"] == "entropy 1.2000 nats, log-prob -0.5000"
    assert "<style>" in page and 'class="bar"' in page  # inline CSS and the colour scale


def test_shown_samples_threshold_and_limit(tmp_path):
    shown = shown_samples(_table(tmp_path / "t.parquet"), samples=1)
    assert shown.threshold == pytest.approx(0.9)
    assert [s["sample"] for s in shown.samples] == ["s&0"] and shown.samples[0]["prompt"] == "x&"
    assert [t["top"] for t in shown.samples[0]["tokens"]] == [True, False, False, False]


def test_ties_mark_exactly_the_trainers_count(tmp_path):
    # 0.7 at table rows 2, 4 and 8 (the second sample starts at row 4): k = 2, so the earlier
    # two, rows 2 and 4, are marked and row 8 is not, though its entropy equals the threshold.
    tied = torch.tensor([0.1, 0.2, 0.7, 0.3, 0.7, 0.0, 0.5, 0.4, 0.7, 0.6])
    shown = shown_samples(_table(tmp_path / "t.parquet", tied), samples=2)
    marks = [t["top"] for s in shown.samples for t in s["tokens"]]
    assert [i for i, top in enumerate(marks) if top] == [2, 4]
    assert shown.threshold == pytest.approx(0.7)


def test_png_is_written(tmp_path):
    out = write_png(_table(tmp_path / "t.parquet"), tmp_path / "r.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 5_000
    assert not (tmp_path / "r.png.tmp").exists()
