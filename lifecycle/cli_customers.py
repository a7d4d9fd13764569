"""`lifecycle customers erase|export ID`: a customer's rights from the command line (docs/privacy.md).

    lifecycle customers export c-1042 > c-1042.json   # everything held about them, as JSON
    lifecycle customers erase c-1042                  # gone; their addresses suppressed by hash only
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys

from lifecycle.settings import Settings

_IDENTIFIER = re.compile(r"\S(?:.*\S)?")


def add_customers_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    customers = subparsers.add_parser("customers", help="a customer's data: erase or export it (docs/privacy.md)")
    sub = customers.add_subparsers(dest="customers_command", required=True)
    erase = sub.add_parser("erase", help="erase a customer: profile, events, stored emails and tracking; their "
                                         "addresses stay suppressed by salted hash; a tombstone goes to Kafka")
    erase.add_argument("customer_id")
    export = sub.add_parser("export", help="everything held about a customer, as JSON on standard output")
    export.add_argument("customer_id")


def run_customers_command(args: argparse.Namespace, settings: Settings) -> int:
    customer_id: str = args.customer_id
    if not _IDENTIFIER.fullmatch(customer_id) or len(customer_id) > 128 or any(ord(c) < 32 for c in customer_id):
        print(f"error: {customer_id!r} is no customer id (1 to 128 characters, no control characters, no space"
              " at either end)", file=sys.stderr)
        return 2
    if args.customers_command == "erase":
        return asyncio.run(_erase(settings, customer_id))
    return asyncio.run(_export(settings, customer_id))


async def _erase(settings: Settings, customer_id: str) -> int:
    from aiokafka.errors import KafkaError

    from lifecycle.clock import make_clock
    from lifecycle.db.engine import make_engine
    from lifecycle.kafka import make_producer
    from lifecycle.privacy import erase_customer, publish_tombstones

    engine = make_engine(settings, "cli", pool_size=1)
    try:
        removed = await erase_customer(engine, customer_id, await make_clock(settings.clock, engine).now())
    finally:
        await engine.dispose()
    producer = make_producer(settings)
    try:
        async with asyncio.timeout(30):
            await producer.start()
            topics = await publish_tombstones(producer, [settings.events_topic, settings.triggers_topic],
                                              customer_id)
    except (KafkaError, OSError, TimeoutError) as exc:
        print(f"error: the rows are erased but the tombstone is not in Kafka at {settings.kafka_bootstrap} "
              f"({str(exc) or type(exc).__name__}); run this command again", file=sys.stderr)
        return 1
    finally:
        await producer.stop()
    rows = ", ".join(f"{table} {count}" for table, count in removed.items() if count)
    print(f"{customer_id}: erased ({rows or 'nothing was held'}); tombstone published to {', '.join(topics)}")
    return 0


async def _export(settings: Settings, customer_id: str) -> int:
    from lifecycle.clock import make_clock
    from lifecycle.db.engine import make_engine
    from lifecycle.privacy import export_customer

    engine = make_engine(settings, "cli", pool_size=1)
    try:
        found = await export_customer(engine, customer_id, await make_clock(settings.clock, engine).now())
    finally:
        await engine.dispose()
    if found is None:
        print(f"error: nothing is held about customer {customer_id!r}", file=sys.stderr)
        return 1
    print(json.dumps(found, indent=2, ensure_ascii=False))
    return 0
