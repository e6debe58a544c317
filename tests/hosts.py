"""Several hosts on one machine, as a real deployment has them: Linux network namespaces joined by
bridges, each host with its own addresses, made and removed by the tests (root needed).

Two networks, as in a cloud deployment: ``backend`` (Redis, storage and the worker hosts: a private
network) and ``ops`` (Redis, storage, the operator hosts and this test process: the addresses an
operator reaches). Redis and storage have one address on each, so a worker reaches Redis by another
address than the operator's, and cannot reach the operator's at all.

Nothing of it is in the namespace the tests run from, so that namespace's firewall never sees its
traffic: the bridges are in a "switch" namespace of their own (a fresh network namespace: no
iptables or nftables rules, every policy ACCEPT), and this test process has its seat on the ops
network in a namespace too (:attr:`Cluster.here`), whose sockets it opens with :meth:`Host.entered`.
A host firewall (Docker sets the root namespace's FORWARD policy to DROP, and with br_netfilter
bridged frames go through it) therefore cannot drop what the hosts send each other.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import os
import random
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
_clusters = itertools.count()


def run_ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def _setns(fd: int) -> None:
    """This thread (only this one) into the network namespace ``fd`` refers to (os.setns is 3.12+)."""
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"setns: {os.strerror(error)}")


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
    name: str  # also the bridge's interface name in the switch namespace
    subnet: str  # first three octets, e.g. "10.213.7"

    def address(self, host_number: int) -> str:
        return f"{self.subnet}.{host_number}"


@dataclass
class Host:
    """One network namespace: a machine with an address on each network it is attached to."""

    name: str
    netns: str
    number: int
    switch: str = ""  # the namespace holding the bridges and the bridge-side veths
    addresses: dict[str, str] = field(default_factory=dict)  # network name -> address
    links: dict[str, str] = field(default_factory=dict)  # network name -> bridge-side veth (switch ns)
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

    @contextlib.contextmanager
    def entered(self) -> Iterator[None]:
        """The calling thread is on this host meanwhile: sockets it opens are this host's (and stay
        so afterwards), processes it starts begin here. Other threads are not moved."""
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        try:
            there = os.open(f"/run/netns/{self.netns}", os.O_RDONLY)
            try:
                _setns(there)
            finally:
                os.close(there)
            try:
                yield
            finally:
                _setns(home)
        finally:
            os.close(home)

    def wait_for_port(self, address: str, port: int, timeout: float = 30) -> None:
        """Until something listens on ``address:port`` as seen from this host."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                with self.entered(), socket.create_connection((address, port), timeout=1):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError(f"nothing listening on {address}:{port} seen from {self.name} "
                                         f"after {timeout} s") from None
                time.sleep(0.1)

    def cut_off(self) -> None:
        """Link down on every network: packets to and from this host are dropped (connections stall)."""
        for link in self.links.values():
            run_ip("-n", self.switch, "link", "set", link, "down")

    def reconnect(self) -> None:
        for link in self.links.values():
            run_ip("-n", self.switch, "link", "set", link, "up")

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
            if pid == os.getpid():  # this process, with a thread on the host (see entered): not a host's
                continue
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for process in self.processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)


class Cluster:
    """Networks and hosts, created on demand and all removed by :meth:`close`.

    Every namespace and link is made by ``ip -n``/``netns`` directly where it belongs: none is ever
    in the namespace this process runs from, and none is left there by :meth:`close`."""

    def __init__(self) -> None:
        self.prefix = f"ms{os.getpid() % 10000:04d}{next(_clusters) % 10}"
        octet = random.Random(os.getpid()).randrange(16, 250)
        self.networks = {
            "backend": Network(f"{self.prefix}bk", f"10.213.{octet}"),
            "ops": Network(f"{self.prefix}op", f"10.214.{octet}"),
        }
        self.switch = f"{self.prefix}-switch"
        self.hosts: dict[str, Host] = {}
        self.made_switch = False
        try:
            run_ip("netns", "add", self.switch)
            self.made_switch = True
            for network in self.networks.values():
                run_ip("-n", self.switch, "link", "add", network.name, "type", "bridge")
                run_ip("-n", self.switch, "link", "set", network.name, "up")
            # This test process's seat on the ops network (host number 1), like an operator's laptop.
            self.here = self.add_host("here", 1, ("ops",))
        except BaseException:
            self.close()
            raise

    def add_host(self, name: str, number: int, networks: tuple[str, ...]) -> Host:
        host = Host(name=name, netns=f"{self.prefix}-{name}", number=number, switch=self.switch)
        run_ip("netns", "add", host.netns)
        self.hosts[name] = host  # from here on close() removes it, even if the rest fails
        run_ip("-n", host.netns, "link", "set", "lo", "up")
        for index, network_name in enumerate(networks):
            network = self.networks[network_name]
            inside, outside = f"{self.prefix}{number}i{index}", f"{self.prefix}{number}o{index}"
            run_ip("-n", self.switch, "link", "add", outside, "type", "veth", "peer", "name", inside,
                   "netns", host.netns)
            run_ip("-n", self.switch, "link", "set", outside, "master", network.name)
            run_ip("-n", self.switch, "link", "set", outside, "up")
            address = network.address(number)
            run_ip("-n", host.netns, "addr", "add", f"{address}/24", "dev", inside)
            run_ip("-n", host.netns, "link", "set", inside, "up")
            host.addresses[network_name] = address
            host.links[network_name] = outside
        return host

    def close(self) -> None:
        """Every process on the hosts killed, every namespace removed: their veths and the bridges
        go with them."""
        for host in self.hosts.values():
            host.kill_everything()
            with contextlib.suppress(subprocess.CalledProcessError):
                run_ip("netns", "del", host.netns)
        if self.made_switch:
            with contextlib.suppress(subprocess.CalledProcessError):
                run_ip("netns", "del", self.switch)


@contextlib.contextmanager
def cluster() -> Iterator[Cluster]:
    made = Cluster()
    try:
        yield made
    finally:
        made.close()


@contextlib.contextmanager
def scratch_namespace(name: str) -> Iterator[Host]:
    """A bare network namespace of its own (only ``lo``), removed afterwards with what ran in it."""
    host = Host(name=name, netns=f"ms{os.getpid() % 10000:04d}{next(_clusters) % 10}-{name}", number=0)
    run_ip("netns", "add", host.netns)
    try:
        run_ip("-n", host.netns, "link", "set", "lo", "up")
        yield host
    finally:
        host.kill_everything()
        with contextlib.suppress(subprocess.CalledProcessError):
            run_ip("netns", "del", host.netns)
