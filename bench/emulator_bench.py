"""Bulk-identify throughput of the emulator (limits off).

Sends ``--calls`` bulk identify calls of ``--batch`` users (~15 properties, some nested) from
``--threads`` threads, waits until every operation is ``completed`` and prints users/s
measured from the first request to the last completion. Bodies are serialised before the
clock starts, so the figure is the server's, not the client's JSON encoder's.

    .venv/bin/python bench/emulator_bench.py [--calls 200] [--batch 1000] [--threads 4] [--db PATH]
"""

from __future__ import annotations

import argparse
import queue
import threading
import time
from typing import Any

import httpx
import orjson

from consumer.emulator import EmulatorServer


def make_user(n: int) -> dict[str, Any]:
    return {
        "id": f"user-{n}",
        "email": f"user{n}@example.com",
        "name": f"User {n}",
        "phone_number": f"+1555{n % 10_000_000:07d}",
        "timezone": "Europe/Berlin",
        "locale": "de-DE",
        "plan": "pro" if n % 3 else "free",
        "seats": n % 50,
        "active": bool(n % 2),
        "score": n * 0.5,
        "tags": ["a", "b", str(n % 7)],
        "company": {"id": f"c{n % 100}", "name": f"Company {n % 100}", "size": n % 500},
        "address": {"city": "Berlin", "geo": {"lat": 52.52, "lon": 13.40}},
        "utm": {"source": "newsletter", "campaign": f"c{n % 13}"},
        "last_seen_at": "2026-11-22T10:00:00Z",
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--db", default=None, help="SQLite file (default: in memory)")
    args = parser.parse_args()

    # Half the users appear twice, so updates (merge with a stored user) are measured too.
    distinct = args.calls * args.batch // 2
    bodies = [
        orjson.dumps(
            {"users": [make_user((c * args.batch + i) % distinct) for i in range(args.batch)]}
        )
        for c in range(args.calls)
    ]
    work: queue.Queue[bytes] = queue.Queue()
    for body in bodies:
        work.put(body)
    op_ids: list[str] = []
    errors: list[str] = []

    with EmulatorServer(rate_limits="off", db=args.db) as server:
        headers = {"authorization": f"Bearer {server.api_key}", "content-type": "application/json"}

        def sender() -> None:
            with httpx.Client(base_url=server.url, headers=headers, timeout=120) as client:
                while True:
                    try:
                        body = work.get_nowait()
                    except queue.Empty:
                        return
                    response = client.post("/v1/users/bulk/identify", content=body)
                    if response.status_code != 200:
                        errors.append(f"{response.status_code} {response.text[:200]}")
                        continue
                    op_ids.append(response.json()["id"])

        started = time.perf_counter()
        threads = [threading.Thread(target=sender) for _ in range(args.threads)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        sent = time.perf_counter()
        with httpx.Client(base_url=server.url, headers=headers, timeout=120) as client:
            pending = list(op_ids)
            while pending:
                status = client.get(f"/v1/bulk_operations/{pending[-1]}").json()["status"]
                if status == "completed":
                    pending.pop()
                elif status == "failed":
                    errors.append(f"operation {pending.pop()} failed")
                else:
                    time.sleep(0.005)
        done = time.perf_counter()
        stats = server.stats()

    users = len(op_ids) * args.batch
    print(f"calls={len(op_ids)} users={users} stored={stats['users']} errors={len(errors)}")
    print(f"all requests answered in {sent - started:.2f}s, all applied in {done - started:.2f}s")
    print(f"throughput: {users / (done - started):,.0f} users/s")
    for error in errors[:5]:
        print("error:", error)
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
