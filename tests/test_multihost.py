"""Every stage on its own host, as in production (tests/hosts.py): Redis (password + TLS, AOF) and an
S3-compatible store each with an address on a private backend network and one on the operators'
network; two worker hosts running ``consumer start`` that reach Redis and storage only by their
backend addresses; operator hosts running ``producer`` and ``aggregator`` by the other addresses.

Each case ends with exact counts, no video lost or counted twice, and ``recovered from outbox 0``
(no aggregator is killed here, so the results queue, not the rescue path, must carry every result).
Faults are timed by the test barrier the consumers are started with (tests/barrier.py), not by sleeps.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from tests.barrier import barrier_vars
from tests.hosts import Cluster, Host, cluster, namespaces_unavailable, scratch_namespace
from tests.pipeline import direct_top1, make_clips, pipeline_environment, wait_until
from tests.redis_server import TLS_CAPABLE_BINARY, make_tls_files
from tests.s3_server import ACCESS_KEY, SECRET_KEY, lithops_s3_environment, s3_client

pytestmark = pytest.mark.e2e

REDIS_PORT = 6380  # TLS only
S3_PORT = 5000
PASSWORD = "multi-host-secret"
BIN = Path(__file__).resolve().parents[1] / ".venv" / "bin"


def drop_everything(host: Host) -> None:
    """Policy DROP on INPUT, FORWARD and OUTPUT in ``host``'s namespace (what Docker does to FORWARD,
    and more), with iptables or else nft; skips the test when neither is installed."""
    env = {"PATH": os.environ.get("PATH", os.defpath)}
    if iptables := shutil.which("iptables"):
        for chain in ("INPUT", "FORWARD", "OUTPUT"):
            done = host.run(iptables, "-P", chain, "DROP", env=env)
            assert done.returncode == 0, done.stderr
    elif nft := shutil.which("nft"):
        chains = "".join(f"chain {hook} {{ type filter hook {hook} priority 0; policy drop; }} "
                         for hook in ("input", "forward", "output"))
        done = host.run(nft, f"add table inet drop {{ {chains}}}", env=env)
        assert done.returncode == 0, done.stderr
    else:
        pytest.skip("neither iptables nor nft is installed: no firewall to test against")


def test_hosts_reach_each_other_whatever_the_firewall_where_the_tests_run(tmp_path: Path) -> None:
    """The harness's traffic never passes the firewall of the namespace the tests run from (Docker's
    FORWARD DROP, with br_netfilter, dropped every bridged packet when the bridges were there): run
    from a namespace that drops everything, its hosts reach each other and this process reaches
    them, and nothing of the harness is in that namespace."""
    reason = namespaces_unavailable()
    if reason:
        pytest.skip(reason)
    with scratch_namespace("caller") as caller:
        drop_everything(caller)
        # The firewall is in force there: even a connection to its own loopback gets nowhere.
        done = caller.run(sys.executable, "-c", "import socket; server = socket.create_server(('127.0.0.1', 0)); "
                          "socket.create_connection(server.getsockname(), timeout=2)", env={})
        assert "TimeoutError" in done.stderr, done
        with caller.entered(), cluster() as made:
            server = made.add_host("server", 2, ("backend", "ops"))
            client = made.add_host("client", 10, ("backend",))
            server.start(sys.executable, "-m", "http.server", "-b", "0.0.0.0", "8000", env={},
                         log=tmp_path / "http.log")
            made.here.wait_for_port(server.addresses["ops"], 8000)  # this process, on the ops network
            done = client.run(sys.executable, "-c", "import socket; socket.create_connection("
                              f"({server.addresses['backend']!r}, 8000), timeout=10)", env={})
            assert done.returncode == 0, done.stderr  # host to host, on the backend network
            links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True)
            assert [line.split(": ")[1] for line in links.stdout.splitlines()] == ["lo"], links.stdout
        assert f"{made.prefix}-" not in netns_names()


def netns_names() -> str:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout


def test_cluster_removes_everything_it_made_even_when_a_step_fails() -> None:
    reason = namespaces_unavailable()
    if reason:
        pytest.skip(reason)
    with pytest.raises(subprocess.CalledProcessError), cluster() as made:
        made.add_host("first", 5, ("backend", "ops"))
        made.add_host("second", 5, ("backend",))  # its namespace made, then its veth's name is taken
    assert {"here", "first", "second"} <= set(made.hosts)
    assert f"{made.prefix}-" not in netns_names()


@dataclass
class Deployment:
    cluster: Cluster
    redis: Host
    storage: Host
    workers: list[Host]
    operators: list[Host]
    root: Path
    tls_ca: Path
    redis_log: Path

    def redis_url(self, network: str) -> str:
        address = self.redis.addresses[network]
        return f"rediss://:{PASSWORD}@{address}:{REDIS_PORT}/0?ssl_ca_certs={self.tls_ca}"

    def start_redis(self) -> None:
        backend, ops = self.redis.addresses["backend"], self.redis.addresses["ops"]
        data, tls = self.root / "redis-data", self.root / "tls"
        data.mkdir(exist_ok=True)
        self.redis.start(
            TLS_CAPABLE_BINARY, "--bind", backend, ops, "--port", "0", "--tls-port", str(REDIS_PORT),
            "--tls-cert-file", str(tls / "server.pem"), "--tls-key-file", str(tls / "server.key"),
            "--tls-ca-cert-file", str(self.tls_ca), "--tls-auth-clients", "no", "--requirepass", PASSWORD,
            "--appendonly", "yes", "--dir", str(data), "--save", "",
            env={}, log=self.redis_log,
        )
        self.cluster.here.wait_for_port(ops, REDIS_PORT)

    def stop_redis(self) -> None:
        """SHUTDOWN (AOF flushed), as a restart of the Redis host does."""
        with contextlib.suppress(redis.ConnectionError):
            self.observer().shutdown()
        for process in self.redis.processes:
            process.wait(timeout=30)
        self.redis.processes.clear()

    def observer(self) -> redis.Redis:
        """This test's own client: on the ops network, like an operator's laptop (its connections are
        opened from the cluster's ``here`` host)."""
        here = self.cluster.here

        class HereConnection(redis.SSLConnection):
            def _connect(self):
                with here.entered():
                    return super()._connect()

        return redis.Redis.from_url(self.redis_url("ops"), connection_class=HereConnection)

    def create_bucket(self, bucket: str) -> None:
        with self.cluster.here.entered():
            s3_client(f"http://{self.storage.addresses['ops']}:{S3_PORT}").create_bucket(Bucket=bucket)

    def environment(self, host: Host, base: dict[str, str], network: str, home: Path) -> dict[str, str]:
        """What a stage on ``host`` is configured with: its own Redis and storage addresses, and its
        own temporary directory (Lithops keeps its localhost state and function logs there)."""
        endpoint = f"http://{self.storage.addresses[network]}:{S3_PORT}"
        storage = lithops_s3_environment("minio", endpoint, "lithops-internal", home)
        (home / "tmp").mkdir(parents=True, exist_ok=True)
        return {**base, **storage, "MOMENTS_REDIS_URL": self.redis_url(network), "TMPDIR": str(home / "tmp"),
                "MOMENTS_DATA_DIR": str(home / "data")}


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    reason = namespaces_unavailable()
    if reason:
        print(f"multi-host tests skipped: {reason}")
        pytest.skip(reason)
    if not Path(TLS_CAPABLE_BINARY).exists():
        pytest.fail(f"{TLS_CAPABLE_BINARY} (Debian's redis-server, with TLS) is needed: .ci/run installs it")
    root = tmp_path_factory.mktemp("hosts")
    with cluster() as made:
        redis_host = made.add_host("redis", 2, ("backend", "ops"))
        storage = made.add_host("storage", 3, ("backend", "ops"))
        workers = [made.add_host(f"worker{index}", 10 + index, ("backend",)) for index in (1, 2)]
        operators = [made.add_host(f"operator{index}", 20 + index, ("ops",)) for index in (1, 2)]
        tls = make_tls_files(root / "tls", *redis_host.addresses.values())
        found = Deployment(made, redis_host, storage, workers, operators, root, tls.ca, root / "redis.log")
        found.start_redis()
        storage.start(str(BIN / "moto_server"), "-H", "0.0.0.0", "-p", str(S3_PORT), env={}, log=root / "moto.log")
        made.here.wait_for_port(storage.addresses["ops"], S3_PORT)
        found.create_bucket("lithops-internal")
        yield found


@dataclass
class Run:
    """One pipeline of its own (namespace, bucket) on the shared hosts."""

    deployment: Deployment
    base: dict[str, str]
    namespace: str
    bucket: str
    expected: dict[str, str]  # clip name -> top-1 from `consumer classify`
    logs: Path
    barrier: Path

    def env(self, host: Host, **extra: str) -> dict[str, str]:
        network = "ops" if host in self.deployment.operators else "backend"
        home = self.logs.parent / "hosts" / host.name
        return {**self.deployment.environment(host, self.base, network, home), **extra}

    def host_logs(self, host: Host) -> str:
        """Everything ``host``'s stages and their Lithops functions logged in this run."""
        files = (self.logs.parent / "hosts" / host.name).rglob("*.log")
        return "".join(path.read_text(errors="replace") for path in files if path.is_file())

    def run(self, host: Host, *argv: str) -> str:
        done = host.run(str(BIN / argv[0]), *argv[1:], env=self.env(host))
        assert done.returncode == 0, f"{argv} on {host.name}: {done.stderr[-3000:]}"
        return done.stdout

    def start(self, host: Host, *argv: str, **extra: str):
        log = self.logs / f"{host.name}-{argv[0]}-{uuid.uuid4().hex[:4]}.log"
        return host.start(str(BIN / argv[0]), *argv[1:], env=self.env(host, **extra), log=log), log

    def key(self, name: str) -> str:
        return f"{self.namespace}:{name}"

    def wait_all_recorded(self, client: redis.Redis, timeout: float = 300) -> None:
        pending = self.key("pending")
        wait_until(lambda: client.hlen(pending) == 0, timeout, "every video counted or failed", interval=0.5)

    def counts(self, client: redis.Redis) -> dict[str, int]:
        (model,) = [m.decode() for m in client.zrevrange(self.key("models"), 0, 0)]
        return {k.decode(): int(v) for k, v in client.hgetall(self.key(f"counts:{model}")).items()}

    def stop_aggregator(self, process, log: Path) -> str:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=60)
        (report,) = [line for line in log.read_text().splitlines() if line.startswith("counted ")]
        return report


@pytest.fixture()
def pipeline(deployment: Deployment, tmp_path: Path, checkpoint_v1: Path, categories_v1: Path) -> Iterator[Run]:
    namespace = f"mh{uuid.uuid4().hex[:6]}"
    bucket = f"videos-{namespace}"
    deployment.create_bucket(bucket)
    base = pipeline_environment("unused://", checkpoint_v1, categories_v1, tmp_path / "data")
    # a job of a killed or cut-off consumer is retried 1 s later, not 5 s (MOMENTS_RETRY_INTERVALS)
    base.update(MOMENTS_BUCKET=bucket, MOMENTS_NAMESPACE=namespace, MOMENTS_CONSUMER_LEASE="4",
                MOMENTS_RETRY_INTERVALS="1", AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY)
    folder = tmp_path / "in"
    expected = direct_top1(dict(base, MOMENTS_REDIS_URL="redis://127.0.0.1:1/0"), make_clips(folder, range(12)))
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    run = Run(deployment, base, namespace, bucket, expected, tmp_path / "logs", barrier)
    yield run
    for host in deployment.workers + deployment.operators:
        for process in host.processes:
            if process.poll() is None:
                process.kill()
        host.processes.clear()
    shutil.rmtree(tmp_path / "in", ignore_errors=True)


def upload_and_enqueue(run: Run, operator: Host, folder: Path) -> None:
    run.run(operator, "producer", "upload", str(folder), "in/")
    run.run(operator, "producer", "enqueue", "in/")


def finish_consumers(run: Run, consumers: list, client: redis.Redis) -> list[dict]:
    run.wait_all_recorded(client)
    run.run(run.deployment.operators[0], "consumer", "stop")
    summaries = []
    for process, log in consumers:
        assert process.wait(timeout=120) == 0, log.read_text()[-3000:]
        summaries += [json.loads(line) for line in log.read_text().splitlines() if line.startswith('{"worker"')]
    return summaries


def assert_exact(run: Run, client: redis.Redis) -> None:
    assert run.counts(client) == collections.Counter(run.expected.values())
    assert client.hlen(run.key("failed")) == 0 and client.hlen(run.key("dead-letters")) == 0
    assert client.hlen(run.key("outbox")) == 0


def test_stages_on_their_own_hosts_two_producers_and_two_aggregators_at_once(pipeline: Run, tmp_path: Path) -> None:
    run, deployment = pipeline, pipeline.deployment
    client = deployment.observer()
    first, second = deployment.operators
    run.run(first, "producer", "upload", str(tmp_path / "in"), "in/")
    producers = [run.start(operator, "producer", "enqueue", "in/") for operator in (first, second)]
    for process, log in producers:
        assert process.wait(timeout=120) == 0, log.read_text()[-3000:]
    enqueued = [int(log.read_text().split("enqueued ")[1].split(",")[0]) for _, log in producers]
    assert sum(enqueued) == 12, enqueued  # each video enqueued once, by one producer or the other
    assert client.llen(f"rq:queue:{run.namespace}-videos") == 12

    aggregators = [run.start(operator, "aggregator", "run") for operator in (first, second)]
    consumers = [run.start(worker, "consumer", "start", "--workers", "1") for worker in deployment.workers]
    finish_consumers(run, consumers, client)
    reports = [run.stop_aggregator(process, log) for process, log in aggregators]

    assert_exact(run, client)
    assert sum(int(report.split()[1].rstrip(",")) for report in reports) == 12, reports
    assert all("recovered from outbox 0," in report and "duplicates 0," in report for report in reports), reports


def hold(run: Run, video: str) -> None:
    (run.barrier / f"hold-{Path(video).name}").touch()


def release(run: Run, video: str) -> None:
    (run.barrier / f"hold-{Path(video).name}").unlink()


def reached(run: Run, video: str) -> bool:
    return (run.barrier / f"reached-{Path(video).name}").exists()


def held_pid(run: Run, video: str) -> int:
    return int((run.barrier / f"reached-{Path(video).name}").read_text())


def test_worker_host_cut_off_mid_video_then_back(pipeline: Run, tmp_path: Path) -> None:
    run, deployment = pipeline, pipeline.deployment
    client = deployment.observer()
    video = f"{run.bucket}/in/clip00.mp4"
    hold(run, video)
    upload_and_enqueue(run, deployment.operators[0], tmp_path / "in")
    aggregator = run.start(deployment.operators[0], "aggregator", "run")
    held_worker, other_worker = deployment.workers
    consumers = [run.start(held_worker, "consumer", "start", "--workers", "1",
                           **barrier_vars(run.barrier))]
    wait_until(lambda: reached(run, video), 180, "worker 1 holding the video before publishing it")
    held_worker.cut_off()
    try:
        consumers.append(run.start(other_worker, "consumer", "start", "--workers", "1"))
        # Worker 1's lease (4 s) lapses; worker 2 takes the video over and the whole set is counted.
        run.wait_all_recorded(client)
        counted_by = json.loads(client.hget(run.key(f"predictions:{current(run, client)}"), video))["worker"]
        assert f"-{held_pid(run, video)}-" not in counted_by  # another worker did it
    finally:
        held_worker.reconnect()
    release(run, video)
    # Worker 1 comes back and publishes its late outcome: recorded as a duplicate, counted once.
    wait_until(lambda: b"duplicate_ignored" in _read(run.logs), 180, "the late outcome arriving", interval=0.5)
    finish_consumers(run, consumers, client)
    report = run.stop_aggregator(*aggregator)
    assert_exact(run, client)
    assert "duplicates 1," in report and "recovered from outbox 0," in report, report


def current(run: Run, client: redis.Redis) -> str:
    return client.zrevrange(run.key("models"), 0, 0)[0].decode()


def _read(logs: Path) -> bytes:
    return b"".join(path.read_bytes() for path in logs.glob("*.log"))


def start_with_a_video_held(run: Run, video: str):
    """Clips enqueued, the aggregator on operator 1, worker 1 holding ``video`` before publishing it
    (so the fault lands while that video is in hand); returns the aggregator and worker 1's consumers."""
    deployment = run.deployment
    hold(run, video)
    upload_and_enqueue(run, deployment.operators[0], run.logs.parent / "in")
    aggregator = run.start(deployment.operators[0], "aggregator", "run")
    consumers = run.start(deployment.workers[0], "consumer", "start", "--workers", "1",
                          **barrier_vars(run.barrier))
    wait_until(lambda: reached(run, video), 180, "worker 1 holding the video before publishing it")
    return aggregator, consumers


def test_worker_host_killed_outright_mid_video(pipeline: Run) -> None:
    run, deployment = pipeline, pipeline.deployment
    client = deployment.observer()
    video = f"{run.bucket}/in/clip03.mp4"
    aggregator, _ = start_with_a_video_held(run, video)
    doomed, survivor = deployment.workers
    doomed.kill_everything()  # the launcher, its Lithops functions, everything on the host
    consumers = [run.start(survivor, "consumer", "start", "--workers", "1")]
    finish_consumers(run, consumers, client)
    report = run.stop_aggregator(*aggregator)

    assert_exact(run, client)
    counted_by = json.loads(client.hget(run.key(f"predictions:{current(run, client)}"), video))["worker"]
    assert f"-{held_pid(run, video)}-" not in counted_by
    assert "recovered from outbox 0," in report and "duplicates 0," in report, report


def test_redis_host_restarted_mid_run(pipeline: Run) -> None:
    run, deployment = pipeline, pipeline.deployment
    video = f"{run.bucket}/in/clip05.mp4"
    aggregator, worker_one = start_with_a_video_held(run, video)
    consumers = [worker_one, run.start(deployment.workers[1], "consumer", "start", "--workers", "1")]
    deployment.stop_redis()
    deployment.start_redis()  # the same data directory: AOF replayed
    release(run, video)
    client = deployment.observer()
    finish_consumers(run, consumers, client)
    report = run.stop_aggregator(*aggregator)

    assert_exact(run, client)
    assert "recovered from outbox 0," in report, report


def test_storage_host_unreachable_for_a_while(pipeline: Run) -> None:
    run, deployment = pipeline, pipeline.deployment
    client = deployment.observer()
    video = f"{run.bucket}/in/clip07.mp4"
    aggregator, worker_one = start_with_a_video_held(run, video)
    storage_address = deployment.storage.addresses["backend"]
    worker = deployment.workers[0]
    worker.block(storage_address)
    try:
        release(run, video)  # worker 1 publishes it, then cannot download its next video
        wait_until(lambda: "storage_unreachable_retrying" in run.host_logs(worker), 120,
                   "worker 1 retrying its download", interval=0.5)
        assert client.hlen(run.key("failed")) == 0
    finally:
        worker.unblock(storage_address)
    finish_consumers(run, [worker_one], client)
    report = run.stop_aggregator(*aggregator)

    assert_exact(run, client)  # nothing recorded as a bad video
    assert "recovered from outbox 0," in report, report
