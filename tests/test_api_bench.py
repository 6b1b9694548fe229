"""`python -m benchmarks serve` report helpers: the table, and that other sections of the doc survive."""

from __future__ import annotations

from benchmarks.__main__ import build_parser
from benchmarks.report import write_section
from benchmarks.serve import SECTION_TITLE, BareForward, LevelResult, multipart_request, parse_server_timing, render
from imageretrieval.settings import Settings


def _section(p50: float) -> str:
    bare = BareForward(batch=32, singles=[0.040] * 47 + [0.5], batches=[1.3] * 6)
    c1 = LevelResult(1, sent=3, ok=3, wall_s=0.15, latencies_ms=[p50, p50, p50],
                     stages={"decode": [3.0, 4.0, 5.0], "forward": [40.0] * 3, "total": [45.0] * 3})
    c32 = LevelResult(32, sent=40, ok=40, wall_s=2.0, latencies_ms=[900.0] * 40, mean_batch=30.0)
    return render("m", Settings(device="cpu", precision="fp32"), "q", 8, bare, [c1, c32], "cmd", 32, 44072,
                  (0.2, 1.5), rounds=4)


def test_render_reports_goals_from_the_numbers():
    good, slow = _section(50.0), _section(80.0)
    assert good.startswith(SECTION_TITLE) and "| API `POST /api/search` | 32 | 40 | 0 |" in good
    assert "index of 44072 products" in good and "0.2 / 1.5" in good
    assert "concurrency 1: p50 50.0 ms" in good and "+ 15 ms = 55.0 ms: **met**" in good
    assert "= 55.0 ms: **not met**" in slow
    assert "20.0 img/s = 0.81x" in good and "**met**" in good.split("concurrency 32")[1]
    assert "| bare forward, batch 1 | 1 | 48 | 0 | 40.0 |" in good  # median: one slow outlier ignored
    assert "decode 4.0, forward 40.0; handler total 45.0; the remaining 5.0 ms" in good


def test_searches_at_a_shoppers_pace_get_their_own_row():
    bare = BareForward(batch=32, singles=[0.040] * 8, batches=[1.3] * 6)
    c1 = LevelResult(1, sent=3, ok=3, wall_s=0.15, latencies_ms=[50.0] * 3)
    paced = LevelResult(1, sent=4, ok=4, wall_s=0.4, latencies_ms=[70.0, 80.0, 90.0, 100.0],
                        stages={"forward": [60.0, 61.0, 62.0, 63.0]})
    section = render("m", Settings(device="cpu", precision="fp32"), "q", 8, bare, [c1], "cmd", 32, 10, (0.2, 0.2),
                     rounds=1, paced=paced, pace_s=2.0)
    assert "| API `POST /api/search`, one every 2 s (a shopper's pace) | 1 | 4 | 0 | 85.0 |" in section
    assert "quiet for 2 s before each search) the same search takes p50 85.0 ms" in section
    assert "forward 61.5" in section and "errors: 0 of 7 requests" in section


def test_server_timing_header_is_parsed():
    value = 'decode;dur=3.10, queue;dur=0.05, forward;dur=25.00;desc="batch of 4", search;dur=1.2, total;dur=30'
    assert parse_server_timing(value) == {"decode": 3.1, "queue": 0.05, "forward": 25.0, "search": 1.2,
                                          "total": 30.0}
    assert parse_server_timing("") == {} and parse_server_timing("x;dur=abc, y") == {}


def test_prepared_upload_is_a_valid_http_request():
    raw = multipart_request("127.0.0.1", 8000, "q.jpg", b"\xff\xd8 jpeg bytes \r\n--not-a-boundary", top_k=7)
    head, body = raw.split(b"\r\n\r\n", 1)
    lines = head.decode().split("\r\n")
    assert lines[0] == "POST /api/search HTTP/1.1"
    headers = dict(line.split(": ", 1) for line in lines[1:])
    assert int(headers["Content-Length"]) == len(body)
    boundary = headers["Content-Type"].split("boundary=")[1]
    parts = body.split(f"--{boundary}".encode())
    assert parts[-1] == b"--\r\n" and len(parts) == 4  # preamble, top_k, image, epilogue
    assert b'name="top_k"\r\n\r\n7\r\n' in parts[1]
    assert parts[2].endswith(b"\r\n\r\n\xff\xd8 jpeg bytes \r\n--not-a-boundary\r\n")


def test_the_serving_section_replaces_itself_and_keeps_the_others(tmp_path):
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\n<!-- bench:pipeline -->\n## Pipeline\n\npipeline table\n<!-- /bench:pipeline -->\n")
    write_section("serve", _section(50.0), doc)
    write_section("serve", _section(80.0), doc)  # replaced, not appended twice
    text = doc.read_text()
    assert text.count(SECTION_TITLE) == 1 and "## Pipeline\n\npipeline table" in text and "p50 80.0 ms" in text
    assert "<!-- bench:pipeline -->\n## Pipeline" in text  # another benchmark's section survives
    doc.write_text(text + "\n## Later\n\nkept\n")
    write_section("serve", _section(50.0), doc)
    text = doc.read_text()
    assert "## Later\n\nkept" in text and "## Pipeline" in text and "p50 50.0 ms" in text


def test_benchmarks_run_as_a_module_of_the_checkout_not_of_the_package():
    args = build_parser().parse_args(["serve", "--no-write", "--workdir", "/tmp/w"])
    assert args.bench == "serve" and args.no_write and args.workdir == "/tmp/w"
    import importlib.util

    assert importlib.util.find_spec("imageretrieval.benchmarks") is None  # not in the installed package
