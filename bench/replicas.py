"""Broker replicas on one PostgreSQL behind nginx: what each more replica and exact admission cost.

The fake OpenAI backend and the verifiable service (simulated TEE) on a local devnet; then, for
each setting, N ``zgserve broker`` processes of one provider on a fresh PostgreSQL database
(127.0.0.1:5432) behind a real nginx with ``deploy/nginx.conf``, and the same load through it:
non-streamed chats of one user from 32 connections. The direct call to the backend is measured in
the same run as the yardstick. Printed: requests/s, the ratio to direct, p50/p99 latency, the CPU
per request of all broker processes together and of the PostgreSQL server (its processes' utime +
stime from /proc), and the fees recorded (every answer billed).

On one machine every replica competes for the same cores: the ratios say what a replica and a
shared admission cost per request, not how far more machines would scale.

    .venv/bin/python bench/replicas.py [--seconds 4] [--connections 32]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import uvloop
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.loadgen import Run, cpu_seconds, load, spawn, spawn_service  # noqa: E402
from tests.integration.broker.processes import find_nginx, nginx_conf  # noqa: E402
from zgserve.client.tokens import ephemeral_token  # noqa: E402
from zgserve.common.money import OG  # noqa: E402
from zgserve.common.net import free_port, wait_http  # noqa: E402
from zgserve.devnet.network import start_devnet  # noqa: E402

PG = "postgresql://postgres@127.0.0.1:5432/postgres"
# (replicas, shared admission, budget requests: 0 = a hold row per request)
SETTINGS = [
    (1, False, 0),
    (1, True, 0),
    (1, True, 16),
    (2, True, 16),
    (3, True, 16),
    (3, True, 0),
    (3, False, 0),
]


def postgres_pids() -> list[int]:
    """Every process of the PostgreSQL server (its backends come and go; those alive are summed)."""
    out = subprocess.run(["pgrep", "-x", "postgres"], capture_output=True, text=True, check=False)
    return [int(p) for p in out.stdout.split()]


def cpu_of(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):
            total += cpu_seconds(pid)
    return total


@contextlib.asynccontextmanager
async def database() -> AsyncIterator[str]:
    name = f"zgserve_bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(PG)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    try:
        yield PG.replace("postgresql://", "postgresql+asyncpg://").rsplit("/", 1)[0] + "/" + name
    finally:
        admin = await asyncpg.connect(PG)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@contextlib.asynccontextmanager
async def replicas(
    n: int, shared: bool, budget: int, base: dict[str, object], tmp: Path, db_url: str
) -> AsyncIterator[tuple[str, list[subprocess.Popen[bytes]]]]:
    """``n`` brokers behind nginx; yields the load balancer's URL and the broker processes."""
    zgserve = str(Path(sys.executable).parent / "zgserve")
    procs: list[subprocess.Popen[bytes]] = []
    ports = [free_port() for _ in range(n)]
    try:
        for i, port in enumerate(ports):
            config = base | {
                "server": {"host": "127.0.0.1", "port": port},
                "database": {"url": db_url},
                "billing": {"sharedAdmission": shared, "admissionBudgetRequests": budget},
                "registration": {"enabled": i == 0},
            }
            path = tmp / f"replica-{n}-{shared}-{budget}-{i}.yaml"
            path.write_text(yaml.safe_dump(config))
            procs.append(spawn([zgserve, "broker", "-c", str(path)], log=path.with_suffix(".log")))
            await wait_http(f"http://127.0.0.1:{port}/health", 60, 200)
        nginx = find_nginx()
        assert nginx is not None, "nginx is needed (scripts/install.sh installs it)"
        lb_port = free_port()
        work = tmp / f"nginx-{n}-{shared}-{budget}"
        work.mkdir()
        conf = nginx_conf(work, lb_port, [f"127.0.0.1:{p}" for p in ports])
        (work / "nginx").mkdir()
        lb = spawn([nginx, "-p", str(work / "nginx"), "-c", str(conf), "-g", "daemon off;"])
        try:
            await wait_http(f"http://127.0.0.1:{lb_port}/health", 30, 200)
            yield f"http://127.0.0.1:{lb_port}", procs
        finally:
            lb.terminate()
            lb.wait(10)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()


async def recorded_fees(db_url: str) -> tuple[int, int]:
    conn = await asyncpg.connect(db_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        row = await conn.fetchrow("SELECT count(*), coalesce(sum(fee), 0) FROM broker_requests")
        return int(row[0]), int(row[1])
    finally:
        await conn.close()


async def main(seconds: float, connections: int) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="zg-bench-replicas-"))
    async with start_devnet(users=0, lock_time=3600) as devnet:
        backend, service, backend_url, service_url = await spawn_service(tmp)
        try:
            provider = await devnet.new_account()
            base: dict[str, object] = {
                "servingUrl": "http://127.0.0.1:3080",
                "targetUrl": f"{service_url}/v1",
                "model": "fake-model",
                "inputPrice": 1,
                "outputPrice": 1,
                "privateKeys": [provider.private_key],
                "network": {"deployment": str(devnet.deployment.save(tmp / "deployment.json"))},
                "tee": {"backend": "simulated", "keyFile": str(tmp / "tee.json")},
                "settlement": {"enabled": False},
                "limits": {"maxGlobalConcurrent": 0, "maxPerUserConcurrent": 0, "perUserRPM": 0},
                "logging": {"level": "WARNING"},
            }
            body = json.dumps(
                {"model": "fake-model", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8}
            ).encode()
            url = f"{backend_url}/v1/chat/completions"
            direct = await load(url, body, stream=False, connections=connections, seconds=seconds)
            rows: list[tuple[int, str, Run, int]] = []
            acknowledged = False
            for n, shared, budget in SETTINGS:
                mode = "off" if not shared else (f"budgets of {budget}" if budget else "a hold per request")
                async with (
                    database() as db_url,
                    replicas(n, shared, budget, base, tmp, db_url) as (lb, procs),
                ):
                    if not acknowledged:
                        owner = devnet.chain.inference(devnet.owner_wallet())
                        await owner.acknowledge_tee_signer_by_owner(provider.address)
                        acknowledged = True
                    user = await devnet.new_account()
                    ledger = devnet.chain.ledger(devnet.chain.wallet(user.private_key))
                    await ledger.add_ledger(20 * OG)
                    await ledger.transfer_fund(provider.address, 10 * OG)
                    token = ephemeral_token(user.private_key, provider.address, generation=0)
                    pids = {f"broker-{i}": p.pid for i, p in enumerate(procs)}
                    pg_before = cpu_of(postgres_pids())
                    run = await load(
                        f"{lb}/v1/proxy/chat/completions",
                        body,
                        headers=token.headers(),
                        stream=False,
                        connections=connections,
                        seconds=seconds,
                        pids=pids,
                    )
                    run.cpu["postgres"] = cpu_of(postgres_pids()) - pg_before
                    count, _fees = await recorded_fees(db_url)
                    rows.append((n, mode, run, count))
            print_table(direct, rows, connections)
        finally:
            for proc in (service, backend):
                proc.terminate()
                proc.wait(10)


def print_table(direct: Run, rows: list[tuple[int, str, Run, int]], connections: int) -> None:
    print()
    p50 = direct.pct(0.5) * 1e3
    print(f"direct to the backend: {direct.rps:.0f} r/s, p50 {p50:.2f} ms ({connections} connections)")
    print()
    print(
        f"| {'replicas':>8} | {'shared admission':>20} | {'r/s':>6} | {'/direct':>7} | {'p50 ms':>6} "
        f"| {'p99 ms':>6} | {'brokers CPU us':>14} | {'PostgreSQL CPU us':>17} | {'recorded':>8} |"
    )
    print("|" + "|".join("-" * w for w in (10, 22, 8, 9, 8, 8, 16, 19, 10)) + "|")
    for n, mode, run, count in rows:
        brokers = sum(v for k, v in run.cpu.items() if k.startswith("broker-"))
        per = run.requests + 20  # the warm-up requests are recorded and cost CPU too
        print(
            f"| {n:>8} | {mode:>20} | {run.rps:>6.0f} | {run.rps / direct.rps:>7.2f} "
            f"| {run.pct(0.5) * 1e3:>6.2f} | {run.pct(0.99) * 1e3:>6.2f} | {brokers / per * 1e6:>14.0f} "
            f"| {run.cpu['postgres'] / per * 1e6:>17.0f} | {count:>8} |"
        )
    print()
    print("recorded: fee records in the database after the run (= requests answered, warm-up included).")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="duration of each measured run")
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    uvloop.run(main(args.seconds, args.connections))
