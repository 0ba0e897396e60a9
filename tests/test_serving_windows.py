"""albert-serve batches windows, not calls: requests preprocessed on arrival, their windows batched across
requests by near-equal length, a long request interleaved with small ones, finished requests answered at once,
given-up requests dropped from the queue, per-request work limits."""
from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from runtime import pipeline
from serving.batcher import LENGTH_SLACK, Batcher
from serving.requests import Call, Limits
from tests.test_serving import SLOW, albert_serve, metric, post, same, slow_site  # noqa: F401

LONG = {"question": "Who went home?", "context": "Alice went home early today. " * 3000}  # 87,000 characters
QA_PARAMS = {"doc_stride": 16, "max_seq_len": 32}  # ~3,260 windows of 32 tokens


@pytest.fixture(scope="module")
def qa_bundle(handmade_bundle):
    return handmade_bundle("question-answering")


@pytest.fixture(scope="module")
def qa(qa_bundle):
    return pipeline(qa_bundle)


class Recorder:
    """pipe.forward that records each batch's window shapes."""

    def __init__(self, pipe):
        self.pipe, self.forward, self.batches = pipe, pipe.forward, []

    def __call__(self, windows, batch_size=None):
        self.batches.append([w["input_ids"].shape for w in windows])
        return self.forward(windows, batch_size)


def test_windows_of_many_requests_batch_by_near_equal_length_and_short_requests_finish_first(qa, monkeypatch):
    """In-process: one long QA request (hundreds of windows) and 12 short ones of mixed lengths queued at once.
    Every batch holds windows of near-equal length and equal shape apart from it; the short requests are
    answered before the long one (its windows interleave with theirs); every answer is pipeline()'s."""
    recorder = Recorder(qa)
    monkeypatch.setattr(qa, "forward", recorder)
    long = {"question": "Who?", "context": "Alice went home early today. " * 200}
    shorts = [{"question": "Who?" if i % 2 else "Where does the one named Bob live these days?",
               "context": "Bob lives in Paris. " * (1 + i % 4)} for i in range(12)]
    calls = [Call(long, QA_PARAMS, single=True)] + [Call(item, {}, single=True) for item in shorts]

    async def scenario():
        batcher = Batcher(qa, max_batch_size=4, max_delay=0.05)
        batcher.start()
        order = []
        futures = [batcher.submit(call) for call in calls]
        for index, future in enumerate(futures):
            future.add_done_callback(lambda _, i=index: order.append(i))
        answers = await asyncio.gather(*futures)
        await batcher.stop()
        return order, answers

    order, answers = asyncio.run(scenario())
    assert answers == [qa(long, **QA_PARAMS)] + [qa(item) for item in shorts]
    assert order[-1] == 0, order  # the long request finishes last although it came first
    assert sum(len(b) for b in recorder.batches) == len(qa.preprocess(long, **QA_PARAMS).windows) + 12
    for shapes in recorder.batches:
        assert len(shapes) <= 4 and len({s[:-1] for s in shapes}) == 1
        lengths = [s[-1] for s in shapes]
        assert max(lengths) <= lengths[0] * LENGTH_SLACK[0] + LENGTH_SLACK[1], shapes
        assert min(lengths) * LENGTH_SLACK[0] + LENGTH_SLACK[1] >= lengths[0], shapes


def test_an_idle_engine_does_not_wait_and_a_given_up_request_stops_taking_batches(qa, monkeypatch):
    recorder = Recorder(qa)
    monkeypatch.setattr(qa, "forward", recorder)
    long = {"question": "Who?", "context": "Alice went home early today. " * 400}
    windows = len(qa.preprocess(long, **QA_PARAMS).windows)

    async def scenario():
        batcher = Batcher(qa, max_batch_size=2, max_delay=2.0)  # a 2 s delay applies only to arrivals in flight
        batcher.start()
        started = time.perf_counter()
        one = await batcher.submit(Call({"question": "Who?", "context": "Bob lives here."}, {}, single=True))
        idle_seconds = time.perf_counter() - started
        future = batcher.submit(Call(long, QA_PARAMS, single=True))
        while not recorder.batches[1:]:
            await asyncio.sleep(0.001)
        future.cancel()  # what --timeout-s does to a request it gives up
        await asyncio.sleep(0.2)
        after_cancel = sum(len(b) for b in recorder.batches)
        await asyncio.sleep(0.3)
        await batcher.stop()
        return one, idle_seconds, after_cancel, sum(len(b) for b in recorder.batches), batcher.depth

    one, idle_seconds, after_cancel, total, depth = asyncio.run(scenario())
    assert one == qa({"question": "Who?", "context": "Bob lives here."})
    assert idle_seconds < 1.0, idle_seconds
    assert total == after_cancel < windows / 2, (total, windows)
    assert depth == 0


def test_a_long_request_over_http_interleaves_with_small_ones(qa_bundle, qa):
    """One QA request of ~3,260 windows in flight; small requests sent meanwhile each answer within 5 s and
    before it; all answers equal pipeline()'s."""
    small = {"question": "Who?", "context": "Alice went home."}

    async def scenario(url):
        async with httpx.AsyncClient(trust_env=False, timeout=120) as http:
            started = time.monotonic()
            long = asyncio.create_task(http.post(url + "/models/question-answering",
                                                 json={"inputs": LONG, "parameters": QA_PARAMS}))
            await asyncio.sleep(0.3)
            smalls = []
            for _ in range(5):
                sent = time.monotonic()
                response = await http.post(url + "/models/question-answering", json={"inputs": small})
                smalls.append((response, time.monotonic() - sent, long.done()))
            response = await long
            return response, time.monotonic() - started, smalls

    with albert_serve(qa_bundle, args=["--max-batch-size", "4", "--max-windows", "4096"]) as (url, _):
        long, long_seconds, smalls = asyncio.run(scenario(url))
    assert long.status_code == 200 and long.json() == same(qa(LONG, **QA_PARAMS))
    for response, seconds, long_done in smalls:
        assert response.status_code == 200 and response.json() == same(qa(small))
        assert seconds < 5
    assert not any(long_done for _, _, long_done in smalls[:3]), (long_seconds, [s for _, s, _ in smalls])


def test_work_limits_are_one_413_naming_the_limit_and_timeouts_504(qa_bundle, slow_site, handmade_bundle):
    with albert_serve(qa_bundle, args=["--max-windows", "100"]) as (url, _):
        response = post(url, "/models/question-answering", {"inputs": LONG, "parameters": QA_PARAMS})
        assert response.status_code == 413
        assert response.json() == {"error": "this request makes over 100 model windows (--max-windows); send shorter "
                                            "inputs or fewer of them, or a larger stride"}
        metrics = httpx.get(url + "/metrics", trust_env=False).text
        assert metric(metrics, "albert_serve_batch_size_count") == 0
        fine = post(url, "/models/question-answering", {"inputs": {"question": "Who?", "context": "Alice went."}})
        assert fine.status_code == 200
    with albert_serve(handmade_bundle("fill-mask"), args=["--timeout-s", "1"], site=slow_site) as (url, process):
        started = time.monotonic()
        response = post(url, "/models/fill-mask", {"inputs": SLOW})  # its batch takes 3 s
        assert response.status_code == 504 and time.monotonic() - started < 2.5
        assert response.json() == {"error": "no answer within 1 s (--timeout-s); try again later or send fewer inputs"}
        time.sleep(2.5)  # the batch running when the request gave up finishes; nothing of it is left queued
        assert post(url, "/models/fill-mask", {"inputs": "A [MASK] here."}).status_code == 200
        assert process.poll() is None


def test_limits_defaults_match_the_command_line():
    from serving.cli import parser

    args = parser().parse_args(["bundle"])
    limits = Limits()
    assert (args.max_windows, args.max_answers, args.max_response_bytes, args.read_timeout_s,
            args.max_batch_tokens) == (limits.max_windows, limits.max_answers, limits.max_response_bytes,
                                       limits.read_timeout, limits.max_batch_tokens)


def test_a_batch_holds_at_most_max_batch_tokens_padded_and_a_longer_window_runs_alone(qa, monkeypatch):
    """Windows of 8 to 32 tokens under a budget of 100: every batch's windows x its longest window's length is
    at most 100, a 128-token window (over the budget alone) runs by itself, and every answer is pipeline()'s."""
    recorder = Recorder(qa)
    monkeypatch.setattr(qa, "forward", recorder)
    items = [({"question": "Who?", "context": "Bob lives in Paris. " * (1 + i % 5)}, {"max_seq_len": 32})
             for i in range(10)]
    items.append(({"question": "Who?", "context": "Bob lives in Paris. " * 40}, {"max_seq_len": 128}))

    async def scenario():
        batcher = Batcher(qa, max_batch_size=8, max_delay=0.05, limits=Limits(max_batch_tokens=100))
        batcher.start()
        answers = await asyncio.gather(*[batcher.submit(Call(item, params, single=True)) for item, params in items])
        await batcher.stop()
        return answers

    answers = asyncio.run(scenario())
    assert answers == [qa(item, **params) for item, params in items]
    lengths = [[shape[-1] for shape in shapes] for shapes in recorder.batches]
    assert all(len(batch) * max(batch) <= 100 for batch in lengths if len(batch) > 1), lengths
    assert [128] in lengths and any(len(batch) > 2 for batch in lengths), lengths


class StageRecorder:
    """A batcher's executor that records, in a list shared with the others, which stage each job it is given runs."""

    def __init__(self, executor, label: str, stages: list[str]):
        self.executor, self.label, self.stages = executor, label, stages

    def submit(self, function, *args):
        self.stages.append(f"{self.label} {function.__name__}")
        return self.executor.submit(function, *args)

    def shutdown(self, **kwargs):
        self.executor.shutdown(**kwargs)


def outcome(future: asyncio.Future):
    """A finished future's answer, or its error's type and message."""
    return future.result() if future.exception() is None else (type(future.exception()), str(future.exception()))


def test_each_request_s_stages_run_where_its_size_says_and_every_answer_and_error_is_as_anywhere(
        handmade_bundle, monkeypatch):
    """A short text is preprocessed and, when its windows and answers are few, postprocessed on the event loop;
    longer texts, more windows or answers go to the host thread, and a long request's (over BULK_CHARS characters,
    over BULK_WINDOWS windows) to the bulk thread. Answers and errors are the same wherever the stages run and
    are pipeline()'s."""
    import serving.batcher as batcher_module

    pipe = pipeline(handmade_bundle("fill-mask"))
    short = "the [MASK] grows in the sun."
    long = short + " plants grow." * 180  # 2368 characters, cut to the model's 128 tokens
    cut = {"truncation": True}
    cases = [  # (call, where its stages run off the event loop)
        (Call(short, {}, single=True), []),
        (Call([short, short], {}, single=False), []),
        (Call(short, {"top_k": 65}, single=True), ["host finish"]),  # 65 answers: past INLINE_ANSWERS
        (Call([short] * 3, {}, single=False), ["host finish"]),  # 3 windows: past INLINE_WINDOWS
        (Call(long, {"top_k": 2, **cut}, single=True), ["host prepare"]),
        (Call(long, {"top_k": 65, **cut}, single=True), ["host prepare", "host finish"]),
        (Call(long * 9, cut, single=True), ["bulk prepare"]),  # 21,312 characters: past BULK_CHARS
        (Call([short] * 65, {}, single=False), ["bulk finish"]),  # 65 windows: past BULK_WINDOWS
        (Call("no mask here", {}, single=True), []),
        (Call(short, {"top_k": 0}, single=True), []),
        (Call(short, {"top_k": 600}, single=True), []),  # over --max-answers: 413 before anything runs
        (Call("no mask here " * 200, cut, single=True), ["host prepare"]),
        (Call(short, {"targets": ["sun", "water"] * 400}, single=True), ["host prepare"]),  # 3,200 characters
    ]
    answers = 8
    assert len(short) * 65 < batcher_module.INLINE_CHARS < len(long) < batcher_module.BULK_CHARS < len(long) * 9

    def answered(inline: bool):
        if not inline:
            monkeypatch.setattr(batcher_module, "INLINE_CHARS", -1)
            monkeypatch.setattr(batcher_module, "INLINE_WINDOWS", -1)

        async def scenario():
            batcher = Batcher(pipe, max_batch_size=4, max_delay=0.0, limits=Limits(max_answers=500))
            stages: list[str] = []
            batcher.host = StageRecorder(batcher.host, "host", stages)
            batcher.bulk = StageRecorder(batcher.bulk, "bulk", stages)
            batcher.start()
            ran, outcomes = [], []
            for call, _ in cases:
                before = len(stages)
                future = batcher.submit(call)
                await asyncio.wait([future])
                outcomes.append(outcome(future))
                ran.append(stages[before:])
            await batcher.stop()
            return ran, outcomes

        return asyncio.run(scenario())

    ran, inline = answered(inline=True)
    assert ran == [expected for _, expected in cases]
    ran_off_the_loop, off_the_loop = answered(inline=False)
    assert all(len(stages) == 2 for stages in ran_off_the_loop[:answers])
    assert inline == off_the_loop
    assert inline[:answers] == [pipe(call.inputs, **call.params) for call, _ in cases[:answers]]
    assert [kind.__name__ for kind, _ in inline[answers:-1]] == ["NoMaskTokenError", "OptionError", "RequestError",
                                                                  "NoMaskTokenError"]
    assert inline[-1] == pipe(short, targets=["sun", "water"] * 400)
    assert "over 500 answers (--max-answers" in inline[answers + 2][1]


def test_small_answers_are_serialized_on_the_loop_large_ones_on_a_thread(monkeypatch):
    import numpy as np

    import serving.app as app_module

    threaded = []

    async def to_thread(function):
        threaded.append(function)
        return function()

    monkeypatch.setattr(app_module.asyncio, "to_thread", to_thread)
    small = [{"score": 0.5, "token": 7, "token_str": "sun", "sequence": "the sun grows."}] * 5
    large = [{"score": 0.5, "token": 7}] * 200
    for content, on_a_thread in [(small, False), (large, True), ("x" * 64 * 300, True), (np.zeros(300), True),
                                 ({"a": [[1, 2]] * 100}, False), ({"a": [[1, 2]] * 200}, True)]:
        before = len(threaded)
        body = asyncio.run(app_module.json_answer(content, Limits())).body
        assert body == app_module.answer_json(content).encode("utf-8")
        assert (len(threaded) > before) == on_a_thread, content
