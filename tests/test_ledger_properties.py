"""A stateful property test of the exactly-once ledger (issue 23, item 4).

Hypothesis drives random sequences of what the producer, consumers, aggregators, ``consumer
requeue`` and the reconciler do to a handful of videos, against a real Redis and the real ledger
script, through the project's own functions (``enqueue_videos``, ``publish_many``,
``publish_failure``, ``receive_batch`` + ``apply_raws``, ``recover_unrecorded``, ``requeue_failed``,
``reconcile``). A plain Python model of what each video's state must be is the oracle; after every
step the Redis state must equal it, every video must be in exactly one state, and each model's
counts must equal the histogram of its predictions' top-1.
"""

from __future__ import annotations

import collections
import json
from dataclasses import dataclass, field
from unittest import mock

import redis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test

from aggregator.drain import DrainReport, apply_raws, recover_unrecorded
from aggregator.reconcile import reconcile
from consumer.context import bind_context
from consumer.failure_callback import publish_failure
from moments_stream import ledger, results
from moments_stream.failures import requeue_failed
from moments_stream.keys import Keys
from moments_stream.outcome import VideoOutcome, counted, failed
from moments_stream.queues import enqueue_videos, video_queue
from moments_stream.redis_conn import text
from moments_stream.settings import Settings

VIDEOS = ("b/v/0.mp4", "b/v/1.mp4", "b/v/2.mp4")
MODEL_A = "v1-aaaaaaaaaaaa-11111111"
MODEL_B = "v1-bbbbbbbbbbbb-22222222"
MODELS = (MODEL_A, MODEL_B)
CATEGORIES = ("juggling", "running", "diving")
RECONCILE_AFTER_S = 10
RECONCILE_ROUNDS = 2


@dataclass
class Model:
    """What each video's state must be (the oracle), and what holds it."""

    seen: dict[str, str] = field(default_factory=dict)  # video -> the version last enqueued
    versions: dict[str, list[str]] = field(default_factory=dict)  # every version ever enqueued
    pending: dict[str, tuple[str, str | None]] = field(default_factory=dict)  # video -> (version, model)
    target: dict[str, str | None] = field(default_factory=dict)  # the model the last job was for
    failed: dict[str, tuple[str, str | None]] = field(default_factory=dict)  # video -> (version, for_model)
    predictions: dict[str, dict[str, tuple[str, str]]] = field(default_factory=dict)  # model -> video -> (fp, top1)
    outbox: dict[str, tuple[VideoOutcome, bool]] = field(default_factory=dict)  # field -> (outcome, newer schema)
    queue: list[tuple[VideoOutcome, bool]] = field(default_factory=list)  # the results list, in order
    jobs: collections.Counter[str] = field(default_factory=collections.Counter)  # rq jobs holding each video
    published: list[VideoOutcome] = field(default_factory=list)  # every outcome published (redelivery)
    orphan_since: dict[str, float] = field(default_factory=dict)  # reconciler: first seen with no job
    rounds: dict[str, int] = field(default_factory=dict)  # reconciler: re-enqueues so far

    current: str | None = None  # the model the live table holds
    counted_ever: set[str] = field(default_factory=set)  # every model that has counted a video

    def record(self, outcome: VideoOutcome, fallback_model: str | None) -> ledger.RecordResult:
        """What the ledger must make of one outcome: the rules of README's "Queue design"."""
        video, fingerprint, for_model = outcome.video, outcome.fingerprint, outcome.for_model
        model = outcome.model_id or (fallback_model or "" if not outcome.counted else "")
        self.outbox.pop(outcome.outbox_field, None)
        if self.seen.get(video, fingerprint) != fingerprint:
            return ledger.RecordResult.STALE
        waiting = self.pending.get(video)
        answered = False
        if waiting is not None and waiting[0] == fingerprint:
            # A prediction answers a job for any model or for its own; a failure only the job it names.
            answered = waiting[1] in (None, model) and (outcome.counted or for_model == waiting[1])
            if answered:
                del self.pending[video]
        by_model = self.predictions.setdefault(model, {})
        if outcome.counted:
            # The live table follows a model that counts for the first time, or one a --reclassify
            # was for (even when its prediction is a duplicate: the consumers run it now).
            job_model = waiting[1] if answered and waiting is not None else None
            if self.current != model and (self.current is None or job_model == model
                                          or model not in self.counted_ever):
                self.current = model
        if by_model.get(video, ("", ""))[0] == fingerprint:
            return ledger.RecordResult.DUPLICATE
        if outcome.counted:
            self.counted_ever.add(model)
            by_model[video] = (fingerprint, outcome.top1)
            failure = self.failed.get(video)
            if failure is not None and (failure[0] != fingerprint or failure[1] in (None, model)):
                del self.failed[video]
            return ledger.RecordResult.RECORDED
        if for_model is None and any(by.get(video, ("", ""))[0] == fingerprint for by in self.predictions.values()):
            return ledger.RecordResult.DUPLICATE  # the job for any model was answered by a count
        failure = self.failed.get(video)
        if not answered and failure is not None and failure[0] == fingerprint and failure[1] != for_model:
            return ledger.RecordResult.DUPLICATE  # a late failure of another job never hides this one's
        for by in self.predictions.values():  # an older version's prediction is retracted
            if video in by and by[video][0] != fingerprint:
                del by[video]
        self.failed[video] = (fingerprint, for_model)
        return ledger.RecordResult.RECORDED


class LedgerMachine(RuleBasedStateMachine):
    redis_url = ""
    steps_run = 0  # checks run, all examples together (after the start and after each step)

    def __init__(self) -> None:
        super().__init__()
        self.client = redis.Redis.from_url(self.redis_url)
        self.client.flushdb()
        self.settings = Settings.from_env({
            "MOMENTS_REDIS_URL": self.redis_url, "MOMENTS_BUCKET": "b",
            "MOMENTS_RECONCILE_AFTER": str(RECONCILE_AFTER_S), "MOMENTS_RECONCILE_ROUNDS": str(RECONCILE_ROUNDS),
        })
        self.keys = self.settings.keys
        self.results = results.open_results_queue(self.client, self.settings)
        self.model = Model()
        self.clock = 1000.0
        self.fingerprints = 0

    def teardown(self) -> None:
        self.client.flushdb()
        self.client.close()

    def enqueued(self) -> list[str]:
        return sorted(self.model.seen)

    # The producer ------------------------------------------------------------------------------

    @rule(video=st.sampled_from(VIDEOS))
    def enqueue(self, video: str) -> None:
        """A new video, or a replaced file (a new fingerprint), as `producer enqueue` finds it."""
        self.fingerprints += 1
        fingerprint = f"{self.fingerprints}:{self.fingerprints}"
        assert enqueue_videos(self.client, self.settings, {video: fingerprint}, only_new=True) == 1
        self.model.seen[video] = fingerprint
        self.model.versions.setdefault(video, []).append(fingerprint)
        self.model.pending[video] = (fingerprint, None)
        self.model.target[video] = None
        self.model.jobs[video] += 1

    @precondition(lambda self: self.model.seen)
    @rule(pick=st.integers(0, 2), model_id=st.sampled_from(MODELS))
    def reclassify(self, pick: int, model_id: str) -> None:
        """`producer enqueue --reclassify --for-model`: the version last enqueued, for one model."""
        video = self.enqueued()[pick % len(self.model.seen)]
        fingerprint = self.model.seen[video]
        assert enqueue_videos(self.client, self.settings, {video: fingerprint}, model_id=model_id) == 1
        self.model.pending[video] = (fingerprint, model_id)
        self.model.target[video] = model_id
        self.model.jobs[video] += 1

    # Consumers ---------------------------------------------------------------------------------

    @precondition(lambda self: self.model.seen)
    @rule(
        pick=st.integers(0, 2),
        older=st.sampled_from([0, 0, 0, 1, 2]),  # 0: the version last enqueued; more: an older one (stale)
        model_id=st.sampled_from(MODELS),
        top1=st.sampled_from(CATEGORIES),
        kind=st.sampled_from(["counted", "counted", "counted", "failed", "failed in the outbox alone", "newer schema"]),
        for_its_model=st.booleans(),
    )
    def publish(self, pick: int, older: int, model_id: str, top1: str, kind: str, for_its_model: bool) -> None:
        """A consumer's outcome: counted with a top-1, or failed (through the queue, or left in the
        outbox alone when the queue refuses it), of the live or a stale version, by either model;
        or an outcome of a newer release's consumer (schema 2)."""
        video = self.enqueued()[pick % len(self.model.seen)]
        versions = self.model.versions[video]
        fingerprint = versions[max(0, len(versions) - 1 - older)]
        if kind in ("counted", "newer schema"):
            outcome = counted(video, fingerprint, model_id, [(top1, 0.9), ("other", 0.1)], worker="w")
        else:
            outcome = failed(video, fingerprint, "injected", worker="w", model_id=model_id,
                             for_model=model_id if for_its_model else None)
        if kind == "newer schema":
            self.publish_newer_schema(outcome)
        elif kind == "failed in the outbox alone":
            publish_failure(self.client, self.settings, outcome)  # no consumer context: the outbox alone
            self.model.outbox[outcome.outbox_field] = (outcome, False)
        else:
            results.publish_many(self.client, self.keys, [outcome])
            self.model.outbox[outcome.outbox_field] = (outcome, False)
            self.model.queue.append((outcome, False))
        if kind != "newer schema":
            self.model.published.append(outcome)

    def publish_newer_schema(self, outcome: VideoOutcome) -> None:
        """What a consumer of a newer release publishes (as ``publish_many`` does, with schema 2)."""
        document = outcome.published(1.0).to_json() | {"schema": 2}
        raw = json.dumps(document)
        self.client.hset(self.keys.outbox(), outcome.outbox_field, raw)
        self.client.rpush(self.keys.results_list(), raw)
        self.model.outbox[outcome.outbox_field] = (outcome, True)
        self.model.queue.append((outcome, True))

    @precondition(lambda self: self.model.published)
    @rule(pick=st.integers(0, 1000))
    def redeliver(self, pick: int) -> None:
        """The same outcome again (a consumer cut off past its lease, a retried job): a duplicate."""
        outcome = self.model.published[pick % len(self.model.published)]
        results.publish_many(self.client, self.keys, [outcome])
        self.model.outbox[outcome.outbox_field] = (outcome, False)
        self.model.queue.append((outcome, False))

    # Aggregators -------------------------------------------------------------------------------

    def apply(self, entries: list[tuple[VideoOutcome, bool]]) -> None:
        for outcome, newer in entries:
            if not newer:
                self.model.record(outcome, None)

    @precondition(lambda self: self.model.queue)
    @rule(take=st.integers(1, 4), keep=st.integers(0, 4))
    def aggregate(self, take: int, keep: int) -> None:
        """An aggregator pops up to ``take`` messages and records the first ``keep`` of them; when it
        keeps fewer it dies after popping: the rest are lost from the list (the outbox keeps them)."""
        raws = self.results.receive(0.01, take)
        popped, self.model.queue = self.model.queue[: len(raws)], self.model.queue[len(raws):]
        assert len(raws) == len(popped) == min(take, len(raws) + len(self.model.queue))
        apply_raws(self.client, self.keys, raws[:keep], DrainReport())
        self.apply(popped[:keep])

    @rule()
    def aggregator_dies_before_popping(self) -> None:
        """An aggregator that dies before it pops changes nothing: the messages wait in the list."""

    @rule()
    def recover_outbox(self) -> None:
        """An aggregator records every outbox entry (its queue message lost), in the order it reads
        them; a newer release's entry stays for an upgraded aggregator."""
        assert {text(name) for name in self.client.hkeys(self.keys.outbox())} == set(self.model.outbox)
        # The order is the one the ledger is handed (HSCAN's): a hash's order can change between two
        # reads while Redis rehashes it, and outcomes of two models for one video depend on it.
        handed: list[VideoOutcome] = []
        record_batch = ledger.record_batch

        def recording(client: redis.Redis, keys: Keys, outcomes: list[VideoOutcome]) -> list[ledger.RecordResult]:
            handed.extend(outcomes)
            return record_batch(client, keys, outcomes)

        newer = sum(newer for _, newer in self.model.outbox.values())
        report = DrainReport()
        with mock.patch.object(ledger, "record_batch", recording):
            recover_unrecorded(self.client, self.keys, 0, report)
        assert report.newer_schema == newer and report.dead_letters == 0
        assert len(handed) == len(self.model.outbox) - newer
        self.apply([self.model.outbox[outcome.outbox_field] for outcome in handed])

    # Operators ---------------------------------------------------------------------------------

    @precondition(lambda self: self.model.seen)
    @rule(pick=st.integers(0, 2))
    def requeue(self, pick: int) -> None:
        """`consumer requeue VIDEO`: a failed video pending again (the version last enqueued, for
        the model its failed job was for), with a new job; nothing for a video not failed."""
        video = self.enqueued()[pick % len(self.model.seen)]
        requeued = requeue_failed(self.client, self.settings, [video])
        if video in self.model.failed:
            assert requeued == [video]
            _, for_model = self.model.failed.pop(video)
            self.model.pending[video] = (self.model.seen[video], for_model)
            self.model.target[video] = for_model
            self.model.jobs[video] += 1
        else:
            assert requeued == []

    @rule()
    def lose_every_job(self) -> None:
        """The rq queue deleted with its jobs (a Redis restored without them, a bug)."""
        queue = video_queue(self.client, self.settings)
        for job_id in queue.job_ids:
            self.client.delete(f"rq:job:{job_id}")
        self.client.delete(queue.key)
        self.model.jobs.clear()

    @rule(seconds=st.sampled_from([1.0, RECONCILE_AFTER_S / 2, float(RECONCILE_AFTER_S)]))
    def clock_advances(self, seconds: float) -> None:
        self.clock += seconds

    @rule()
    def reconcile_round(self) -> None:
        """One round of the reconciler at the controlled clock, against what the model says holds
        each pending video (a queued job, an outbox entry of any version or model)."""
        model = self.model
        fallback = ledger.current_model(self.client, self.keys)
        report = reconcile(self.client, self.settings, now=self.clock)
        assert not report.skipped
        if not model.pending:
            model.orphan_since.clear()
            model.rounds.clear()
            assert (report.requeued, report.failed) == (0, 0)
            return
        outboxed = {outcome.video for outcome, _ in model.outbox.values()}
        orphans = [video for video in model.pending if not model.jobs[video] and video not in outboxed]
        model.orphan_since = {video: at for video, at in model.orphan_since.items() if video in orphans}
        model.rounds = {video: count for video, count in model.rounds.items() if video in model.pending}
        due = [video for video in orphans if video in model.orphan_since
               and self.clock - model.orphan_since[video] >= RECONCILE_AFTER_S]
        for video in orphans:
            model.orphan_since.setdefault(video, self.clock)
        requeued = failures = 0
        for video in due:
            fingerprint, model_id = model.pending[video]
            del model.orphan_since[video]
            if model.rounds.get(video, 0) >= RECONCILE_ROUNDS:
                del model.rounds[video]
                reason = "no job held it"
                assert model.record(failed(video, fingerprint, reason, model_id=model_id), fallback) is (
                    ledger.RecordResult.RECORDED)
                failures += 1
            else:
                model.rounds[video] = model.rounds.get(video, 0) + 1
                model.jobs[video] += 1
                requeued += 1
        assert (report.requeued, report.failed) == (requeued, failures)
        assert report.watched == len(orphans) - len(due)

    # Invariants --------------------------------------------------------------------------------

    def redis_hash(self, key: str) -> dict[str, str]:
        return {text(name): text(value) for name, value in self.client.hgetall(key).items()}

    @invariant()
    def redis_holds_what_the_model_says(self) -> None:
        LedgerMachine.steps_run += 1
        model = self.model
        pending = {video: json.loads(entry) for video, entry in self.redis_hash(self.keys.pending()).items()}
        assert {video: (entry["fingerprint"], entry["model"]) for video, entry in pending.items()} == model.pending
        records = {video: json.loads(raw) for video, raw in self.redis_hash(self.keys.failed()).items()}
        assert {video: (record["fingerprint"], record.get("for_model")) for video, record in records.items()} == (
            model.failed)
        for model_id in (*MODELS, ""):
            stored = {video: json.loads(raw) for video, raw in self.redis_hash(self.keys.predictions(model_id)).items()}
            assert {video: (record["fingerprint"], record["top5"][0][0]) for video, record in stored.items()} == (
                model.predictions.get(model_id, {})), model_id
        assert set(self.redis_hash(self.keys.outbox())) == set(model.outbox)
        assert self.client.llen(self.keys.results_list()) == len(model.queue)
        assert self.redis_hash(self.keys.seen()) == model.seen

    @invariant()
    def counts_are_the_histogram_of_the_predictions(self) -> None:
        for model_id in (*MODELS, ""):
            predictions = self.redis_hash(self.keys.predictions(model_id))
            histogram = collections.Counter(json.loads(raw)["top5"][0][0] for raw in predictions.values())
            assert ledger.counts(self.client, self.keys, model_id) == dict(histogram), model_id

    @invariant()
    def the_live_table_is_the_current_models(self) -> None:
        """``moments:counts`` and ``moments:ranking`` hold the current model's counts, never another's;
        every ranking holds its counts."""
        current = self.client.get(self.keys.current_model())
        assert (text(current) if current is not None else None) == self.model.current
        live = ledger.counts(self.client, self.keys, self.model.current) if self.model.current is not None else {}
        assert {text(k): int(v) for k, v in self.client.hgetall(self.keys.live_counts()).items()} == live
        pairs = [(self.keys.live_counts(), self.keys.live_ranking())]
        pairs += [(self.keys.counts(model_id), self.keys.ranking(model_id)) for model_id in (*MODELS, "")]
        for counts_key, ranking_key in pairs:
            counts = {text(k): int(v) for k, v in self.client.hgetall(counts_key).items()}
            ranking = {text(k): int(v) for k, v in self.client.zrange(ranking_key, 0, -1, withscores=True)}
            assert ranking == counts, counts_key

    @invariant()
    def every_video_is_in_exactly_one_state(self) -> None:
        """Pending (for the version last enqueued); else, for the model its last job was for (any
        model when none was named), that version counted by it or failed for it: exactly one, never
        neither, never both. And never counted under a model and failed by that model at once
        (``aggregator check``'s ``counted_and_failed``)."""
        model = self.model
        for video, fingerprint in model.seen.items():
            if video in model.pending:
                assert model.pending[video][0] == fingerprint
                continue
            target = model.target[video]
            counted_by = {model_id for model_id, by_video in model.predictions.items()
                          if by_video.get(video, ("", ""))[0] == fingerprint}
            counted = bool(counted_by) if target is None else target in counted_by
            failed_for_it = model.failed.get(video) == (fingerprint, target)
            assert counted != failed_for_it, (video, target, counted_by, model.failed.get(video))
            assert video not in model.failed or model.failed[video][0] == fingerprint  # of the version last enqueued
        failures = {text(video): json.loads(raw) for video, raw in self.client.hgetall(self.keys.failed()).items()}
        for model_id in ledger.known_models(self.client, self.keys):
            for video in self.client.hkeys(self.keys.predictions(model_id)):
                failure = failures.get(text(video))
                if failure is not None and failure["fingerprint"] == json.loads(
                        self.client.hget(self.keys.predictions(model_id), video))["fingerprint"]:
                    assert failure.get("model_id") not in (None, model_id), (text(video), model_id)

EXAMPLES, STEPS = 150, 80  # about 10,000 steps in all (some examples stop early), ~25 s


def test_the_ledger_keeps_every_video_in_exactly_one_state(redis_url: str) -> None:
    bind_context(None)  # no consumer context: a failure the queue refuses waits in the outbox alone
    LedgerMachine.redis_url = redis_url
    LedgerMachine.steps_run = 0
    run_state_machine_as_test(
        LedgerMachine,
        settings=settings(max_examples=EXAMPLES, stateful_step_count=STEPS, derandomize=True, database=None,
                          deadline=None, suppress_health_check=list(HealthCheck)),
    )
    assert LedgerMachine.steps_run >= 3000, LedgerMachine.steps_run
