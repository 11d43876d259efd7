"""What the broker costs on top of the verifiable service and its backend.

Three processes: the fake OpenAI backend (tests/fakes), the verifiable service in
front of it, and the broker in front of the service, on a local devnet (anvil and
the official contracts; the broker registers itself, the owner acknowledges it,
a user funds a sub-account). The same load goes to the backend directly, through
the service, and through broker + service (authenticated with an SDK-format
token, admitted by the balance guard, metered, recorded in SQLite with FULL
sync, signed by the service), non-streamed and as 20-chunk streams, with 1 and
32 connections. Printed, as one table: requests/s, the ratio to direct, the
latency added at p50 and p99, and the CPU time per request of the service and of
the broker process, read from /proc/<pid>/stat before and after each run.

    .venv/bin/python bench/proxy_overhead.py [--seconds 4]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import aiohttp
import uvloop
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.loadgen import Run, load, spawn, spawn_service  # noqa: E402
from zgserve.client.tokens import ephemeral_token  # noqa: E402
from zgserve.common.money import OG  # noqa: E402
from zgserve.common.net import free_port, wait_http  # noqa: E402
from zgserve.devnet.network import start_devnet  # noqa: E402


async def main(seconds: float) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="zg-bench-broker-"))
    broker_port = free_port()
    zgserve = str(Path(sys.executable).parent / "zgserve")
    procs: list[subprocess.Popen[bytes]] = []
    async with start_devnet(users=1, lock_time=3600) as devnet:
        try:
            dep_file = devnet.deployment.save(tmp / "deployment.json")
            provider = await devnet.new_account()
            fake, service, backend_url, service_url = await spawn_service(tmp)
            procs += [fake, service]
            config = {
                "servingUrl": f"http://127.0.0.1:{broker_port}",
                "targetUrl": f"{service_url}/v1",
                "model": "fake-model",
                "inputPrice": 1_000_000_000,
                "outputPrice": 2_000_000_000,
                "privateKeys": [provider.private_key],
                "network": {"deployment": str(dep_file)},
                "server": {"host": "127.0.0.1", "port": broker_port},
                "database": {"url": f"sqlite+aiosqlite:///{tmp}/broker.db"},
                "tee": {"backend": "simulated", "keyFile": str(tmp / "tee.json")},
                "logging": {"level": "WARNING"},
            }
            (tmp / "provider.yaml").write_text(yaml.safe_dump(config))
            broker = spawn([zgserve, "broker", "-c", str(tmp / "provider.yaml")], log=tmp / "broker.log")
            procs.append(broker)
            await wait_http(f"http://127.0.0.1:{broker_port}/health", 60, 200)
            await devnet.chain.inference(devnet.owner_wallet()).acknowledge_tee_signer_by_owner(
                provider.address
            )

            user = await devnet.new_account()
            ledger = devnet.chain.ledger(devnet.chain.wallet(user.private_key))
            await ledger.add_ledger(20 * OG)
            await ledger.transfer_fund(provider.address, 10 * OG)
            token = ephemeral_token(user.private_key, provider.address, generation=0)

            rows = []
            for stream in (False, True):
                body = json.dumps(
                    {
                        "model": "fake-model",
                        "messages": [{"role": "user", "content": "Tell me about signed answers, briefly."}],
                        "stream": stream,
                        "fake": {"chunks": 20},
                    }
                ).encode()
                plain = {"Content-Type": "application/json"}
                authed = plain | token.headers()
                for connections in (1, 32):
                    pids = {"service": service.pid, "broker": broker.pid, "backend": fake.pid}
                    direct = await load(
                        f"{backend_url}/v1/chat/completions",
                        body,
                        headers=plain,
                        stream=stream,
                        connections=connections,
                        seconds=seconds,
                        pids=pids,
                    )
                    via_service = await load(
                        f"{service_url}/v1/chat/completions",
                        body,
                        headers=plain,
                        stream=stream,
                        connections=connections,
                        seconds=seconds,
                        pids=pids,
                    )
                    via_broker = await load(
                        f"http://127.0.0.1:{broker_port}/v1/proxy/chat/completions",
                        body,
                        headers=authed,
                        stream=stream,
                        connections=connections,
                        seconds=seconds,
                        pids=pids,
                    )
                    rows.append((stream, connections, direct, via_service, via_broker))
            print_table(rows)
            async with (
                aiohttp.ClientSession() as session,
                session.get(f"http://127.0.0.1:{broker_port}/v1/request?limit=1") as resp,
            ):
                recorded = (await resp.json())["metadata"]["total"]
            print(f"\nrequests recorded by the broker during the run: {recorded}")
        finally:
            for proc in reversed(procs):
                proc.terminate()
            for proc in procs:
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()


def print_table(rows: list[tuple[bool, int, Run, Run, Run]]) -> None:
    print()
    print(
        f"| {'mode':<16} | {'conns':>5} | {'direct r/s':>10} | {'service r/s':>11} | {'broker r/s':>10} "
        f"| {'broker/direct':>13} | {'+p50 ms':>7} | {'+p99 ms':>7} | {'svc CPU us':>10} "
        f"| {'broker CPU us':>13} | {'sum us':>6} | {'backend CPU us':>14} |"
    )
    print("|" + "|".join("-" * w for w in (18, 7, 12, 13, 12, 15, 9, 9, 12, 15, 8, 16)) + "|")
    for stream, conns, direct, svc, brk in rows:
        mode = "stream 20 chunks" if stream else "non-streamed"
        svc_us, brk_us = brk.cpu_us("service"), brk.cpu_us("broker")
        print(
            f"| {mode:<16} | {conns:>5} | {direct.rps:>10.0f} | {svc.rps:>11.0f} | {brk.rps:>10.0f} "
            f"| {brk.rps / direct.rps:>13.2f} | {(brk.pct(0.5) - direct.pct(0.5)) * 1e3:>7.2f} "
            f"| {(brk.pct(0.99) - direct.pct(0.99)) * 1e3:>7.2f} | {svc_us:>10.0f} | {brk_us:>13.0f} "
            f"| {svc_us + brk_us:>6.0f} | {brk.cpu_us('backend'):>14.0f} |"
        )
    print()
    print("+p50/+p99: latency added by broker + service over the backend alone. backend CPU us: the fake")
    print("backend's own CPU per request in the same run, a yardstick for how loaded the machine was.")
    print("CPU us: utime+stime per request of each process in the broker run (authenticated, metered,")
    print("recorded, signed). Targets: broker + service <= 800 us per request, < 2 ms added p50 at 1 conn.")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="duration of each measured run")
    args = parser.parse_args()
    uvloop.run(main(args.seconds))
