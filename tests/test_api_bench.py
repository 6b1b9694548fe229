"""`imageretrieval bench serve` report helpers: the table, and that other sections of the doc survive."""

from __future__ import annotations

from imageretrieval.benchmarks.serve import SECTION_TITLE, BareForward, LevelResult, render, replace_section
from imageretrieval.settings import Settings


def _section(p50: float) -> str:
    bare = BareForward(single_ms=40.0, single_ips=25.0, batch=32, batch_ms=1300.0, batch_ips=24.6,
                       single_runs=48, batch_runs=6)
    c1 = LevelResult(1, sent=3, ok=3, wall_s=0.15, latencies_ms=[p50, p50, p50])
    c32 = LevelResult(32, sent=40, ok=40, wall_s=2.0, latencies_ms=[900.0] * 40, mean_batch=30.0)
    return render("m", Settings(device="cpu", precision="fp32"), "q", 8, bare, [c1, c32], "cmd", 32, 44072,
                  (0.2, 1.5))


def test_render_reports_goals_from_the_numbers():
    good, slow = _section(50.0), _section(80.0)
    assert good.startswith(SECTION_TITLE) and "| API `POST /api/search` | 32 | 40 | 0 |" in good
    assert "index of 44072 products" in good and "0.2 / 1.5" in good
    assert "concurrency 1: p50 50.0 ms" in good and "+ 15 ms = 55.0 ms: **met**" in good
    assert "= 55.0 ms: **not met**" in slow
    assert "20.0 img/s = 0.81x" in good and "**met**" in good.split("concurrency 32")[1]


def test_replace_section_keeps_other_sections(tmp_path):
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\n## Pipeline\n\npipeline table\n")
    replace_section(doc, _section(50.0))
    replace_section(doc, _section(80.0))  # replaced, not appended twice
    text = doc.read_text()
    assert text.count(SECTION_TITLE) == 1 and "## Pipeline\n\npipeline table" in text and "p50 80.0 ms" in text
    doc.write_text(text + "\n## Later\n\nkept\n")
    replace_section(doc, _section(50.0))
    text = doc.read_text()
    assert "## Later\n\nkept" in text and "## Pipeline" in text and "p50 50.0 ms" in text
