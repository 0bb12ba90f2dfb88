"""The relay's daemon in the probe's own process (bench/gc_probe.py,
bench/memory_probe.py): a temporary store with one seller and one order,
delivering to Postfix's `smtp-sink`, on uvloop as `relay serve` runs."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import AsyncIterator

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from relay.aliases import mint_alias  # noqa: E402
from relay.config import settings_from_dict  # noqa: E402
from relay.logs import configure_logging  # noqa: E402
from relay.server import RelayDaemon  # noqa: E402

from peers import free_port  # noqa: E402


def ready(tool: str) -> bool:
    """smtp-sink is there (else say so), and uvloop is the event loop if installed."""
    if not shutil.which("smtp-sink"):
        print(f"{tool}: needs Postfix's smtp-sink (apt-get install postfix)", file=sys.stderr)
        return False
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    return True


@contextlib.asynccontextmanager
async def relay_with_sink(directory: str, limits: dict | None = None) -> AsyncIterator[tuple[RelayDaemon, str]]:
    """A started daemon and the seller alias a buyer writes to."""
    sink_port = free_port()
    sink_cmd = ["smtp-sink", "-c", f"127.0.0.1:{sink_port}", "1000"]
    if os.geteuid() == 0:
        sink_cmd[1:1] = ["-u", "nobody"]
    sink = subprocess.Popen(sink_cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    settings = settings_from_dict({
        "store": {"path": f"{directory}/relay.sqlite3"}, "listen": {"mx": "127.0.0.1:0"},
        "delivery": {"smarthost": f"127.0.0.1:{sink_port}", "tls": "none"},
        "limits": limits or {}, "logging": {"level": "error"}})
    configure_logging(settings.logging.level)
    daemon = RelayDaemon(settings)
    try:
        await daemon.start()
        await daemon.store.add_seller("s1", "Shop", ["sam@shop.example"])
        order = await daemon.store.open_order("o1", "s1", "bob@buyer.test", None, mint_alias)
        alias = order.seller_alias
        yield daemon, alias if "@" in alias else f"{alias}@{settings.relay.domain}"
    finally:
        await daemon.stop()
        sink.terminate()
        sink.wait(10)
