"""Several hosts on one machine, as a real deployment has them: Linux network namespaces joined by
bridges, each host with its own addresses, made and removed by the tests (root needed).

Two networks, as in a cloud deployment: ``backend`` (Redis, storage and the worker hosts: a private
network) and ``ops`` (Redis, storage, the operator host and this test process: the addresses an
operator reaches). Redis and storage have one address on each, so a worker reaches Redis by another
address than the operator's, and cannot reach the operator's at all.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path


def run_ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def namespaces_unavailable() -> str | None:
    """Why network namespaces cannot be made here, or ``None`` when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns)"
    probe = f"msprobe{os.getpid()}"
    try:
        run_ip("netns", "add", probe)
    except (OSError, subprocess.CalledProcessError) as error:
        detail = getattr(error, "stderr", "") or str(error)
        return f"cannot create a network namespace: {detail.strip()}"
    run_ip("netns", "del", probe)
    return None


@dataclass
class Network:
    name: str  # also the bridge's interface name in the root namespace
    subnet: str  # first three octets, e.g. "10.213.7"

    def address(self, host_number: int) -> str:
        return f"{self.subnet}.{host_number}"


@dataclass
class Host:
    """One network namespace: a machine with an address on each network it is attached to."""

    name: str
    netns: str
    number: int
    addresses: dict[str, str] = field(default_factory=dict)  # network name -> address
    links: dict[str, str] = field(default_factory=dict)  # network name -> bridge-side veth (root ns)
    processes: list[subprocess.Popen] = field(default_factory=list)

    def command(self, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.netns, *argv]

    def run(self, *argv: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.command(*argv), env=env, capture_output=True, text=True, timeout=timeout)

    def start(self, *argv: str, env: dict[str, str], log: Path) -> subprocess.Popen[str]:
        """A long-running process on this host; its output goes to ``log`` (never a pipe nobody reads)."""
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("a") as out:
            process = subprocess.Popen(self.command(*argv), env=env, stdout=out, stderr=subprocess.STDOUT,
                                       text=True, start_new_session=True)
        self.processes.append(process)
        return process

    def cut_off(self) -> None:
        """Link down on every network: packets to and from this host are dropped (connections stall)."""
        for link in self.links.values():
            run_ip("link", "set", link, "down")

    def reconnect(self) -> None:
        for link in self.links.values():
            run_ip("link", "set", link, "up")

    def block(self, address: str) -> None:
        """``address`` becomes unreachable from this host (no route: connections fail at once)."""
        run_ip("-n", self.netns, "route", "add", "unreachable", f"{address}/32")

    def unblock(self, address: str) -> None:
        run_ip("-n", self.netns, "route", "del", "unreachable", f"{address}/32")

    def pids(self) -> list[int]:
        done = subprocess.run(["ip", "netns", "pids", self.netns], capture_output=True, text=True)
        return [int(pid) for pid in done.stdout.split()]

    def kill_everything(self) -> None:
        """The machine dies: every process on it is killed at once (SIGKILL), its daemons too."""
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for process in self.processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)


class Cluster:
    """Networks and hosts, created on demand and all removed by :meth:`close`."""

    def __init__(self) -> None:
        tag = f"{os.getpid() % 10000:04d}"
        self.prefix = f"ms{tag}"
        octet = random.Random(os.getpid()).randrange(16, 250)
        self.networks = {
            "backend": Network(f"{self.prefix}bk", f"10.213.{octet}"),
            "ops": Network(f"{self.prefix}op", f"10.214.{octet}"),
        }
        self.hosts: dict[str, Host] = {}
        for network in self.networks.values():
            run_ip("link", "add", network.name, "type", "bridge")
            run_ip("link", "set", network.name, "up")
        # This test process sits on the ops network (host number 1), like an operator's laptop.
        ops = self.networks["ops"]
        run_ip("addr", "add", f"{ops.address(1)}/24", "dev", ops.name)

    def add_host(self, name: str, number: int, networks: tuple[str, ...]) -> Host:
        host = Host(name=name, netns=f"{self.prefix}-{name}", number=number)
        run_ip("netns", "add", host.netns)
        run_ip("-n", host.netns, "link", "set", "lo", "up")
        for index, network_name in enumerate(networks):
            network = self.networks[network_name]
            inside, outside = f"{self.prefix}{number}i{index}", f"{self.prefix}{number}o{index}"
            run_ip("link", "add", inside, "type", "veth", "peer", "name", outside)
            run_ip("link", "set", inside, "netns", host.netns)
            run_ip("link", "set", outside, "master", network.name)
            run_ip("link", "set", outside, "up")
            address = network.address(number)
            run_ip("-n", host.netns, "addr", "add", f"{address}/24", "dev", inside)
            run_ip("-n", host.netns, "link", "set", inside, "up")
            host.addresses[network_name] = address
            host.links[network_name] = outside
        self.hosts[name] = host
        return host

    def close(self) -> None:
        for host in self.hosts.values():
            host.kill_everything()
            with contextlib.suppress(subprocess.CalledProcessError):
                run_ip("netns", "del", host.netns)
        for network in self.networks.values():
            with contextlib.suppress(subprocess.CalledProcessError):
                run_ip("link", "del", network.name)


def wait_for_port(address: str, port: int, timeout: float = 30) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((address, port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise AssertionError(f"nothing listening on {address}:{port} after {timeout} s") from None
            time.sleep(0.1)


@contextlib.contextmanager
def cluster() -> Iterator[Cluster]:
    made = Cluster()
    try:
        yield made
    finally:
        made.close()
