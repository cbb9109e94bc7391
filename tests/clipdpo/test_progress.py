"""Progress lines inside long work (clipdpo.progress): the rate and ETA maths against values worked out by
hand, the rate limit on a fake clock, quiet mode, and the stages' hooks."""

from __future__ import annotations

from clipdpo.progress import Progress, duration, eta_seconds, progress_line, rate


def test_rate_and_eta_by_hand():
    assert rate(30, 10.0) == 3.0 and rate(5, 0.0) is None
    assert eta_seconds(30, 120, 10.0) == 30.0  # 90 left at 3/s
    assert eta_seconds(30, 120, 10.0, start=20) == 90.0  # a resumed run did 10 in 10 s itself: 90 left at 1/s
    assert eta_seconds(0, 10, 5.0) is None and eta_seconds(20, 20, 5.0) == 0.0
    assert eta_seconds(20, 20, 0.0) == 0.0 and eta_seconds(3, 20, 0.0) is None


def test_durations_and_the_line_by_hand():
    assert [duration(s) for s in (None, 0.4, 45, 59.6, 725, 11220)] == ["?", "0s", "45s", "1m00s", "12m05s", "3h07m"]
    # 120 of 400 in 10 s: 12/s, 280 left -> 23.3 s
    assert (
        progress_line("generate captions (llava)", 120, 400, 10.0, "requests")
        == "generate captions (llava): 120/400 requests (30%), 12.0 requests/s, ETA 23s"
    )
    # a resumed training: 50 of 200 steps, 10 of them in this process's 4 s -> 2.5 steps/s, 150 left -> 60 s
    assert (
        progress_line("train", 50, 200, 4.0, "steps", 40, loss=0.6931, tokens_per_s=1234.5)
        == "train: 50/200 steps (25%), 2.5 steps/s, ETA 1m00s, loss 0.693, tokens per s 1,234"
    )


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_lines_at_most_every_interval_and_at_the_end(monkeypatch):
    monkeypatch.delenv("CLIPDPO_QUIET", raising=False)
    clock, said = Clock(), []
    work = Progress("score: texts", 100, unit="texts", every_s=10.0, clock=clock, say=said.append)
    clock.now = 104.0
    assert work.advance(20) is None  # 4 s in: not yet
    clock.now = 110.0
    assert work.advance(20) == "score: texts: 40/100 texts (40%), 4 texts/s, ETA 15s"  # 60 left at 4/s
    clock.now = 115.0
    assert work.advance(40) is None  # 5 s after the last line
    clock.now = 116.0
    assert work.advance(20) == "score: texts: 100/100 texts (100%), 6.25 texts/s, ETA 0s"  # done: always shown
    assert len(said) == 2 and said[1].endswith("ETA 0s")


def test_short_work_logs_nothing_and_quiet_mode_logs_nothing(monkeypatch):
    clock, said = Clock(), []
    short = Progress("evaluate base / pope", 8, unit="items", every_s=10.0, clock=clock, say=said.append)
    clock.now = 103.0
    assert short.advance(8) is None and said == []  # done within one interval: no line
    monkeypatch.setenv("CLIPDPO_QUIET", "1")
    long = Progress("train", 10, unit="steps", every_s=1.0, clock=clock, say=said.append)
    clock.now = 200.0
    assert long.advance(5) is None and long.finish() is None and said == []


def test_finish_counts_what_an_engine_did_not_report(monkeypatch):
    monkeypatch.delenv("CLIPDPO_QUIET", raising=False)
    clock, said = Clock(), []
    work = Progress("generate QA (llm)", 50, unit="requests", every_s=5.0, clock=clock, say=said.append)
    clock.now = 125.0  # vLLM took the whole list in one call
    assert work.finish() == "generate QA (llm): 50/50 requests (100%), 2 requests/s, ETA 0s" and work.done == 50


def test_the_hf_engine_counts_its_batches_into_the_generate_line(tmp_path, monkeypatch, caplog):
    import logging

    from PIL import Image

    from clipdpo.demo.models import build_tiny_llava
    from clipdpo.engines import HFEngine, ImageRequest, ModelSpec, Sampling
    from clipdpo.generate.shard import with_progress

    monkeypatch.setenv("CLIPDPO_PROGRESS_SECONDS", "0")  # a line after every batch
    monkeypatch.delenv("CLIPDPO_QUIET", raising=False)
    path = build_tiny_llava(str(tmp_path / "llava"))
    engine = HFEngine(ModelSpec(name="tiny", path=path, engine="hf", device="cpu"), batch_size=2)
    requests = [ImageRequest(image=Image.new("RGB", (32, 32)), prompt="Describe.", n=1, seed=k) for k in range(5)]
    with caplog.at_level(logging.INFO, logger="clipdpo.progress"):
        with_progress(
            engine, "generate captions (tiny)", len(requests), lambda e: e.caption(requests, Sampling(max_new_tokens=2))
        )
    lines = [r.getMessage() for r in caplog.records if r.name == "clipdpo.progress"]
    assert [line.split(",")[0] for line in lines] == [
        "generate captions (tiny): 2/5 requests (40%)",
        "generate captions (tiny): 4/5 requests (80%)",
        "generate captions (tiny): 5/5 requests (100%)",
    ]
    assert engine.progress is None  # the engine is left as it was
