"""Gas spent on settlement over a simulated day: the deadline policy against settling every interval.

One devnet (anvil, official contracts), one provider, ``--users`` users with random
deposits. A day of traffic is simulated in ``--tick``-second steps: each step
records each user's requests (Poisson, ``--rate`` per hour, stopping where a
balance guard would), lets some users ask for a refund (and withdraw it once it
unlocks), moves the chain clock by one step and runs one settlement round. The
same seeded workload runs twice from the same chain snapshot:

* **deadline** -- this engine's default policy (``zgserve.broker.settlement.policy``);
* **naive** -- every user with unsettled fees, every step (what the official
  broker's periodic force-settlement does).

Printed: settlement transactions, entries, total gas, settled requests, gas per
settled request, fees settled, fees still unsettled at the end of the day (owed,
not lost) and fees lost to refunds that unlocked first.

    .venv/bin/python bench/settlement_gas.py [--users 40] [--rate 6] [--tick 300] [--seed 7]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import func, select  # noqa: E402
from sqlalchemy.ext.asyncio import AsyncEngine  # noqa: E402

from zgserve.broker.db import create_engine, repo  # noqa: E402
from zgserve.broker.db.models import FeeRecord, RequestRow  # noqa: E402
from zgserve.broker.settlement import journal  # noqa: E402
from zgserve.broker.settlement.builder import SigningContext  # noqa: E402
from zgserve.broker.settlement.config import SettlementConfig  # noqa: E402
from zgserve.broker.settlement.engine import SettlementEngine  # noqa: E402
from zgserve.broker.settlement.models import BatchRow, EntryRow  # noqa: E402
from zgserve.broker.settlement.policy import IntervalPolicy, Policy  # noqa: E402
from zgserve.chain import ChainClient, InferenceServing, TxPolicy  # noqa: E402
from zgserve.common.money import OG, fmt_og  # noqa: E402
from zgserve.common.signing import Signer  # noqa: E402
from zgserve.devnet.deployment import DevAccount  # noqa: E402
from zgserve.devnet.network import Devnet, start_devnet  # noqa: E402
from zgserve.devnet.testing import PROVIDER_STAKE, service_params  # noqa: E402

DAY = 86_400
INPUT_PRICE = 10**9  # neuron per token
OUTPUT_PRICE = 4 * 10**11  # a 300-token answer costs ~0.00012 0G, about 2x one settlement entry's gas
# Wallets pay eth_gasPrice without the default 10 % markup: on anvil the markup feeds back
# into the next suggestion and the price would grow by 10 % per transaction.
BENCH_TX_POLICY = TxPolicy(gas_price_buffer_percent=0)


@dataclass
class Workload:
    """The seeded traffic of one simulated day, identical for every policy."""

    deposits: list[int]
    requests: list[list[list[tuple[int, int]]]]  # [tick][user] -> [(input tokens, output tokens)]
    refund_tick: dict[int, int]  # user -> tick at which they ask for a refund

    @classmethod
    def make(cls, users: int, ticks: int, tick: int, rate: float, refunders: float, seed: int) -> Workload:
        rng = random.Random(seed)
        deposits = [rng.choice((1, 2, 3, 5)) * OG for _ in range(users)]
        lam = rate * tick / 3600
        requests = [
            [
                [(rng.randint(50, 600), rng.randint(20, 500)) for _ in range(_poisson(rng, lam))]
                for _ in range(users)
            ]
            for _ in range(ticks)
        ]
        chosen = rng.sample(range(users), max(1, round(users * refunders)))
        refund_tick = {u: rng.randint(ticks // 6, ticks * 3 // 4) for u in chosen}
        return cls(deposits, requests, refund_tick)


def _poisson(rng: random.Random, lam: float) -> int:
    limit, k, p = math.exp(-lam), 0, rng.random()
    while p > limit:
        k += 1
        p *= rng.random()
    return k


@dataclass
class Result:
    name: str
    txs: int = 0
    entries: int = 0
    gas: int = 0
    settled_requests: int = 0
    fees_settled: int = 0
    unsettled_end: int = 0
    lost: int = 0
    partial: int = 0
    recorded: int = 0
    seconds: float = 0.0

    @property
    def gas_per_request(self) -> float:
        return self.gas / self.settled_requests if self.settled_requests else float("nan")


async def run_day(
    name: str,
    net: Devnet,
    chain: ChainClient,
    provider: DevAccount,
    signer: Signer,
    users: list[DevAccount],
    work: Workload,
    policy: Policy | None,
    tick: int,
    dbdir: Path,
) -> Result:
    started = time.monotonic()
    result = Result(name)
    db = create_engine(f"sqlite+aiosqlite:///{dbdir}/{name}.db", sqlite_synchronous="NORMAL")
    await journal.migrate(db)
    inference = chain.inference(chain.wallet(provider.private_key))
    sim_now = float(await chain.block_timestamp())
    engine = SettlementEngine(
        db=db,
        chain=chain,
        inference=inference,
        signing=SigningContext(net.deployment.chain_id, inference.address, provider.address, signer),
        config=SettlementConfig(enabled=True),
        policy=policy,
        clock=lambda: sim_now,
    )
    spent = [0] * len(users)  # what a balance guard would count against each deposit
    refunded_at: dict[int, float] = {}
    withdrawn: set[int] = set()
    lock_time = net.deployment.lock_time or 3600
    for t, per_user in enumerate(work.requests):
        records = []
        for u, calls in enumerate(per_user):
            if u in refunded_at:
                continue  # everything is a pending refund: the guard refuses them
            for tokens_in, tokens_out in calls:
                fee = tokens_in * INPUT_PRICE + tokens_out * OUTPUT_PRICE
                if spent[u] + fee > work.deposits[u] * 9 // 10:
                    break
                spent[u] += fee
                records.append(_record(users[u].address, tokens_in, tokens_out, fee, sim_now))
        if records:
            async with db.begin() as conn:
                await repo.insert_records(conn, records)
        for u, at in work.refund_tick.items():
            if at == t:
                await chain.ledger(chain.wallet(users[u].private_key)).retrieve_fund([provider.address])
                refunded_at[u] = sim_now
            elif u in refunded_at and u not in withdrawn and sim_now >= refunded_at[u] + lock_time + tick:
                # Unlocked: the user takes back whatever fees have not been settled out of it.
                await chain.ledger(chain.wallet(users[u].private_key)).retrieve_fund([provider.address])
                withdrawn.add(u)
        sim_now += tick
        await net.increase_time(tick)
        await engine.run_round()
    await _tally(result, db, inference, users, work)
    await db.dispose()
    result.seconds = time.monotonic() - started
    return result


def _record(user: str, tokens_in: int, tokens_out: int, fee: int, at: float) -> FeeRecord:
    return FeeRecord(
        request_id=uuid.uuid4().hex,
        user=user.lower(),
        model="bench",
        endpoint="/v1/chat/completions",
        stream=False,
        input_tokens=tokens_in,
        output_tokens=tokens_out,
        input_price=INPUT_PRICE,
        output_price=OUTPUT_PRICE,
        fee=fee,
        response_id=None,
        status="complete",
        created_at=datetime.fromtimestamp(at, UTC),
    )


async def _tally(
    result: Result, db: AsyncEngine, inference: InferenceServing, users: list[DevAccount], work: Workload
) -> None:
    async with db.connect() as conn:
        batches = (await conn.execute(select(BatchRow.gas_used).where(BatchRow.state == "done"))).all()
        result.txs = len(batches)
        result.gas = sum(int(g[0] or 0) for g in batches)
        entries = (await conn.execute(select(EntryRow.status, EntryRow.paid, EntryRow.unpaid))).all()
        result.entries = len(entries)
        result.partial = sum(1 for e in entries if e[0] == "partial")
        result.fees_settled = sum(int(e[1] or 0) for e in entries if e[0] in ("success", "partial"))
        result.settled_requests = int(
            (await conn.execute(select(func.count()).where(RequestRow.settled.is_(True)))).scalar() or 0
        )
        result.recorded = (await repo.list_requests(conn, limit=1)).fee
        result.unsettled_end = await repo.total_unsettled(conn)
    # Fees lost: recorded, settled as PARTIAL-unpaid, or left unsettled for a user who withdrew.
    withdrawn_users = {users[u].address.lower() for u in work.refund_tick}
    accounts = await inference.get_batch_accounts_by_users([u.address for u in users])
    async with db.connect() as conn:
        owed = await repo.unsettled_by_user(conn)
    for user, account in zip(users, accounts, strict=True):
        key = user.address.lower()
        if key in withdrawn_users and owed.get(key, 0) > account.balance:
            result.lost += owed[key] - account.balance
    result.lost += sum(int(e[2] or 0) for e in entries)


async def setup(
    net: Devnet, chain: ChainClient, users: int, work: Workload
) -> tuple[DevAccount, Signer, list[DevAccount]]:
    provider = await net.new_account(10**6 * OG)
    signer = Signer.generate()
    wallet = chain.wallet(provider.private_key)
    params = service_params(signer.address, input_price=INPUT_PRICE, output_price=OUTPUT_PRICE)
    await chain.inference(wallet).add_or_update_service(params, stake=PROVIDER_STAKE)
    await chain.inference(chain.wallet(net.deployment.owner.private_key)).acknowledge_tee_signer_by_owner(  # type: ignore[union-attr]
        provider.address
    )
    accounts = []
    for deposit in work.deposits:
        user = await net.new_account()
        ledger = chain.ledger(chain.wallet(user.private_key))
        await ledger.add_ledger(deposit + 3 * OG)
        await ledger.transfer_fund(provider.address, deposit)
        accounts.append(user)
    return provider, signer, accounts


def table(results: list[Result], args: argparse.Namespace, requests: int) -> str:
    head = (
        f"Simulated day: {args.users} users, {args.rate:g} requests/user/hour ({requests} requests offered), "
        f"{args.tick} s steps, "
        f"{max(1, round(args.users * args.refunders))} users refunding mid-day (lockTime 3600 s), "
        f"seed {args.seed}."
    )
    rows = [
        "| policy | settlement txs | entries | total gas | settled requests | gas / settled request "
        "| fees settled | unsettled at end (owed) | lost to refunds | PARTIAL |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        rows.append(
            f"| {r.name} | {r.txs} | {r.entries} | {r.gas:,} | {r.settled_requests} "
            f"| {r.gas_per_request:,.0f} | {fmt_og(r.fees_settled)} | {fmt_og(r.unsettled_end)} "
            f"| {fmt_og(r.lost)} | {r.partial} |"
        )
    deadline, naive = results
    ratio_tx = naive.txs / deadline.txs if deadline.txs else float("inf")
    ratio_gas = naive.gas_per_request / deadline.gas_per_request
    tail = (
        f"\nDeadline policy: {ratio_tx:.1f}x fewer transactions, "
        f"{naive.gas / max(deadline.gas, 1):.1f}x less gas, "
        f"{ratio_gas:.1f}x less gas per settled request. Run times: "
        + ", ".join(f"{r.name} {r.seconds:.0f} s" for r in results)
    )
    return head + "\n\n" + "\n".join(rows) + tail


async def main(args: argparse.Namespace) -> None:
    ticks = DAY // args.tick
    work = Workload.make(args.users, ticks, args.tick, args.rate, args.refunders, args.seed)
    async with start_devnet(users=0, lock_time=3600) as net:
        chain = ChainClient(net.network_config(BENCH_TX_POLICY), abis=net.chain.abis)
        await chain.open()
        try:
            provider, signer, users = await setup(net, chain, args.users, work)
            snapshot = await net.snapshot()
            results = []
            with tempfile.TemporaryDirectory(prefix="zg-settle-bench-") as tmp:
                for name, policy in (("deadline", None), ("naive", IntervalPolicy())):
                    await net.revert(snapshot)
                    snapshot = await net.snapshot()
                    for wallet_key in (provider.private_key, *(u.private_key for u in users)):
                        await chain.wallet(wallet_key).reset_nonce()
                    results.append(
                        await run_day(
                            name, net, chain, provider, signer, users, work, policy, args.tick, Path(tmp)
                        )
                    )
                    print(f"  {name}: done in {results[-1].seconds:.0f} s", file=sys.stderr)
        finally:
            await chain.close()
    offered = sum(len(c) for per_tick in work.requests for c in per_tick)
    print(table(results, args, offered))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--users", type=int, default=40)
    parser.add_argument("--rate", type=float, default=6.0, help="requests per user per hour")
    parser.add_argument("--tick", type=int, default=300, help="simulation step and naive interval, seconds")
    parser.add_argument("--refunders", type=float, default=0.1, help="share of users who refund mid-day")
    parser.add_argument("--seed", type=int, default=7)
    asyncio.run(main(parser.parse_args()))
