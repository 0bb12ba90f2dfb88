"""The `relay` command line (CONTRACT.md, "Command line").

Exit codes: 0 success, 2 bad usage / bad input / bad configuration, 1 other
failures.  Errors are one sentence on stderr; nothing is half-written, since
every change is one store transaction.  Every command works while
`relay serve` runs on the same store (SQLite WAL, busy timeout).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sqlite3
import sys
import unicodedata
from pathlib import Path
from typing import Any, Sequence

from relay import notify
from relay.affinity import AFFINITY_UNDER_SYSTEMD, cpu_plan, pin_process
from relay.aliases import AddressError, mint_alias, normalize_address
from relay.config import (RUNNING_SETTINGS_ENV, ConfigError, Settings, check_files, load_settings,
                          settings_from_json)
from relay.sharing import ListenError, Shared
from relay.store import NotFound, StorageError, Store


class UsageError(Exception):
    """Bad input from the user: exit 2."""


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one sentence, exit 2
        print(f"{self.prog}: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> ArgumentParser:
    common = ArgumentParser(add_help=False)
    common.add_argument("--config", default=argparse.SUPPRESS,
                        help="configuration file (default: $RELAY_CONFIG, else the embedded development default)")
    parser = ArgumentParser(prog="relay", description="An anonymizing SMTP relay for marketplaces.",
                            parents=[common])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=ArgumentParser)

    serve = sub.add_parser("serve", parents=[common], help="run the daemon in the foreground")
    # Internal: how the primary starts a replacement worker process (relay.workers).
    serve.add_argument("--acceptor", action="store_true", help=argparse.SUPPRESS)
    serve.add_argument("--listen-fd", action="append", default=[], help=argparse.SUPPRESS)
    serve.add_argument("--metrics-fd", type=int, help=argparse.SUPPRESS)
    serve.add_argument("--cpu", type=int, help=argparse.SUPPRESS)  # listen.cpu_affinity: the one it replaces
    sub.add_parser("check-config", parents=[common], help="validate the configuration")

    seller = sub.add_parser("seller", parents=[common], help="sellers").add_subparsers(
        dest="action", required=True, parser_class=ArgumentParser)
    add = seller.add_parser("add", parents=[common], help="register a seller")
    add.add_argument("id")
    add.add_argument("--name", required=True)
    add.add_argument("--email", action="append", required=True,
                     help="approved sender address; the first receives buyer mail")

    passwd = seller.add_parser("passwd", parents=[common],
                               help="set a seller's submission (SMTP AUTH) password: one line on stdin, "
                                    "or prompted twice on a terminal")
    passwd.add_argument("id")

    order = sub.add_parser("order", parents=[common], help="orders").add_subparsers(
        dest="action", required=True, parser_class=ArgumentParser)
    open_ = order.add_parser("open", parents=[common], help="mint an order's aliases")
    open_.add_argument("order")
    open_.add_argument("--seller", required=True)
    open_.add_argument("--buyer", required=True)
    open_.add_argument("--buyer-name")

    optout = sub.add_parser("optout", parents=[common], help="buyer opt-outs").add_subparsers(
        dest="action", required=True, parser_class=ArgumentParser)
    for name in ("add", "remove"):
        p = optout.add_parser(name, parents=[common])
        p.add_argument("address")
    optout.add_parser("list", parents=[common])

    audit = sub.add_parser("audit", parents=[common], help="the audit record").add_subparsers(
        dest="action", required=True, parser_class=ArgumentParser)
    alist = audit.add_parser("list", parents=[common])
    alist.add_argument("--order")
    alist.add_argument("--json", action="store_true")
    show = audit.add_parser("show", parents=[common])
    show.add_argument("id", type=int)
    show.add_argument("--part", choices=("inbound", "outbound"), default="inbound")

    queue = sub.add_parser("queue", parents=[common], help="the outbound queue").add_subparsers(
        dest="action", required=True, parser_class=ArgumentParser)
    qlist = queue.add_parser("list", parents=[common])
    qlist.add_argument("--json", action="store_true")
    retry = queue.add_parser("retry", parents=[common])
    retry.add_argument("id", nargs="?", type=int)

    filt = sub.add_parser("filter", parents=[common], help="try the filter chain").add_subparsers(
        dest="action", required=True, parser_class=ArgumentParser)
    ftest = filt.add_parser("test", parents=[common], help="run a message through the chain without sending it")
    ftest.add_argument("file")
    ftest.add_argument("--from", dest="sender", required=True)
    ftest.add_argument("--to", dest="alias", required=True)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The console script.  A reader that stops early (`relay audit list |
    head -1`) ends the command quietly with exit 1, as the shell's own tools
    do, instead of a traceback for the broken pipe."""
    try:
        code = _main(argv)
        sys.stdout.flush()  # (here, not at the interpreter's exit, where a broken pipe is reported)
        return code
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # nothing more goes to the pipe, at exit either
        return 1


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "serve" and args.acceptor and RUNNING_SETTINGS_ENV in os.environ:
            # A replacement worker: the primary's running configuration, not the file's (relay.workers).
            settings = settings_from_json(os.environ.pop(RUNNING_SETTINGS_ENV))
        else:
            settings = load_settings(getattr(args, "config", None))
    except ConfigError as exc:
        print(f"relay: configuration error: {exc}", file=sys.stderr)
        return 2
    if args.command in ("check-config", "serve"):
        try:
            check_files(settings)
        except ConfigError as exc:
            print(f"relay: configuration error: {exc}", file=sys.stderr)
            return 2
    if args.command == "check-config":
        print(f"configuration OK ({settings.source})")
        return 0
    if args.command == "serve":
        from relay.logs import configure_logging

        configure_logging(settings.logging.level)
        _use_uvloop()
        if args.acceptor:
            if args.cpu is not None:
                _pin(args.cpu)
            return _serve_acceptor(settings, getattr(args, "config", None),
                                   Shared.inherit(args.listen_fd, args.metrics_fd))
        return _serve_processes(settings, getattr(args, "config", None))
    from relay.logs import configure_logging

    configure_logging("warning")
    if (args.command, args.action) == ("seller", "passwd"):
        # Read (and hash) the password before the store is opened: a prompt
        # must not hold anything open, and a bad input changes nothing.
        try:
            args.password_hash = _read_password_hash()
        except UsageError as exc:
            print(f"relay: {exc}", file=sys.stderr)
            return 2
    return _run(_with_store(settings, args))


def _serve_processes(settings: Settings, config_path: str | None) -> int:
    """One process per listen.workers, forked before any event loop or
    thread exists.  They accept from the same listening sockets
    (relay.sharing) and share the store through SQLite; each delivers what
    it accepted (relay.delivery).  Delivery claims left by a process that was
    killed are dropped first, so its messages go out now rather than a lease
    later."""
    from relay.server import serve
    from relay.store import release_all_claims
    from relay.storelock import hold_the_service

    try:
        Path(settings.store.path).parent.mkdir(parents=True, exist_ok=True)
        taken = hold_the_service(settings.store.path) is not None  # (held until the service's processes end)
    except OSError:
        taken = True  # (no lock file to be had: the daemon's own open of the store says what is wrong)
    if not taken:
        from relay.logs import get_logger

        get_logger().error("relay.stopped", error=f"another relay serve is running on the store {settings.store.path}")
        return 1
    try:
        release_all_claims(settings.store.path, settings.store.busy_timeout)
    except (sqlite3.Error, OSError):
        pass  # the daemon's own open of the store says what is wrong
    plan = cpu_plan(settings.listen.cpu_affinity, settings.listen.workers)
    if settings.listen.workers <= 1:
        if plan:
            _pin(plan[0])
        return _run(serve(settings, config_path))
    try:
        shared = Shared.create(settings)
    except ListenError as exc:
        from relay.logs import get_logger

        get_logger().error("relay.stopped", error=str(exc))
        return 2 if exc.configuration else 1
    children: list[int] = []
    for k in range(1, settings.listen.workers):
        pid = os.fork()
        if pid == 0:  # an acceptor
            if plan:
                _pin(plan[k])
            notify.leave_to_the_primary(os.environ)
            code = 1
            try:
                code = _serve_acceptor(settings, config_path, shared)
            finally:
                os._exit(code)
        children.append(pid)
    if plan:  # (after the forks: each acceptor pinned itself)
        _pin(plan[0])
    return _run(serve(settings, config_path, role="primary", workers=children, shared=shared, cpus=plan))


def _pin(cpu: int) -> None:
    """listen.cpu_affinity = "auto": this process on `cpu` (relay.affinity),
    before its event loop and threads exist; if refused, it runs unpinned
    and says so."""
    error = pin_process(cpu)
    if error is not None:
        from relay.logs import get_logger

        get_logger().warning("relay.cpu_affinity_refused", cpu=cpu, pid=os.getpid(), error=error,
                             hint=AFFINITY_UNDER_SYSTEMD)


def _serve_acceptor(settings: Settings, config_path: str | None, shared: Shared) -> int:
    """A worker process other than the primary: forked above, or started by
    the primary in place of one that died (`serve --acceptor`, on the
    sockets it inherited).  It never drops claims as a service start does:
    the live processes hold theirs."""
    from relay.server import serve

    _die_with_parent()
    if os.getppid() == 1:  # the primary died before the line above
        return 1
    return _run(serve(settings, config_path, role="acceptor", shared=shared))


def _die_with_parent() -> None:
    """Linux: an acceptor gets SIGTERM if the primary dies (PR_SET_PDEATHSIG)."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGTERM))
    except (OSError, AttributeError):
        pass


def _use_uvloop() -> None:
    """uvloop, where installed, roughly halves the event loop's own cost per
    SMTP command; the daemon works the same without it."""
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def _run(coro) -> int:
    try:
        return asyncio.run(coro)
    except KeyboardInterrupt:
        return 1


async def _with_store(settings: Settings, args: argparse.Namespace) -> int:
    try:
        store = await Store.open(settings.store.path, settings.store.busy_timeout)
    except StorageError as exc:
        print(f"relay: cannot open the store {settings.store.path}: {exc}", file=sys.stderr)
        return 1
    try:
        handler = COMMANDS[(args.command, args.action)]
        return await handler(store, settings, args)
    except UsageError as exc:
        print(f"relay: {exc}", file=sys.stderr)
        return 2
    except StorageError as exc:
        print(f"relay: storage error: {exc}", file=sys.stderr)
        return 1
    finally:
        await store.close()


def _address(value: str, what: str) -> str:
    try:
        return normalize_address(value)
    except AddressError as exc:
        raise UsageError(f"{what}: {exc}") from None


def _deliverable_address(value: str, what: str) -> str:
    """An address the relay will send mail to.  It does not use SMTPUTF8
    (RFC 6531; THREATS #57), so a UTF-8 local part could never be sent to:
    refused now rather than queued mail that can never leave.  A UTF-8
    domain has an ASCII form (IDNA), which normalize_address returns."""
    address = _address(value, what)
    if not address.isascii():
        raise UsageError(f"{what}: {value.strip()!r} has a non-ASCII local part, which needs SMTPUTF8; "
                         "the relay does not use SMTPUTF8, so it could not deliver to it")
    return address


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, ensure_ascii=False))


# An address inside a display name: local@domain.tld, or @localhost (CONTRACT: a reserved name).
_ADDRESS_IN_NAME = re.compile(r"[\w.!#$%&'*+/=?^`{|}~-]+@(?:(?:[\w-]+\.)+[\w-]+|localhost\b)", re.IGNORECASE)


def _check_display_name(value: str, option: str) -> None:
    """A party's name as the other side will see it in From: one line of
    text, and no email address (the rewriter would refuse every message
    that shows it, THREATS: no real address reaches the other side)."""
    if any(unicodedata.category(c) in ("Cc", "Zl", "Zp") for c in value):
        raise UsageError(f"{option}: a name must be one line of text, without control characters")
    if _ADDRESS_IN_NAME.search(value):
        raise UsageError(f"{option}: a name must not hold an email address (the other side sees the name)")


async def seller_add(store: Store, settings: Settings, args: argparse.Namespace) -> int:
    if not args.id.strip() or not args.name.strip():
        raise UsageError("the seller id and name must not be empty")
    _check_display_name(args.name, "--name")
    emails: list[str] = []
    for e in args.email:
        address = _deliverable_address(e, "--email")
        if address not in emails:
            emails.append(address)
    seller = await store.add_seller(args.id, args.name, emails)
    _print_json({"seller": seller.id, "name": seller.name, "emails": list(seller.emails)})
    return 0


def _read_password_hash() -> str:
    """One line from stdin when it is not a terminal (scripts, provisioning),
    else a getpass prompt twice; returns the relay.passwords hash."""
    from relay.passwords import MAX_PASSWORD_BYTES, hash_password

    if sys.stdin is None:
        raise UsageError("no password given: pipe one line to stdin")
    if sys.stdin.isatty():
        import getpass

        try:
            first = getpass.getpass("New password: ")
            second = getpass.getpass("Repeat the password: ")
        except EOFError:
            raise UsageError("no password given") from None
        if first != second:
            raise UsageError("the two passwords do not match; nothing was changed")
        password = first
    else:
        try:
            password = sys.stdin.readline().rstrip("\r\n")
        except UnicodeDecodeError:
            raise UsageError("the password on stdin is not valid UTF-8") from None
    if not password:
        raise UsageError("the password must not be empty")
    if len(password.encode("utf-8")) > MAX_PASSWORD_BYTES:
        raise UsageError(f"the password is longer than {MAX_PASSWORD_BYTES} bytes")
    return hash_password(password)


async def seller_passwd(store: Store, settings: Settings, args: argparse.Namespace) -> int:
    try:
        await store.set_seller_password(args.id, args.password_hash)
    except NotFound:
        raise UsageError(f"unknown seller {args.id!r}; add it first with `relay seller add`") from None
    _print_json({"seller": args.id, "password": "set"})
    return 0


async def order_open(store: Store, settings: Settings, args: argparse.Namespace) -> int:
    if not args.order.strip():
        raise UsageError("the order id must not be empty")
    buyer = _deliverable_address(args.buyer, "--buyer")
    if args.buyer_name is not None:
        _check_display_name(args.buyer_name, "--buyer-name")
    try:
        order = await store.open_order(args.order, args.seller, buyer, args.buyer_name, mint_alias)
    except NotFound:
        raise UsageError(f"unknown seller {args.seller!r}; add it first with `relay seller add`") from None
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    domain = settings.relay.domain
    _print_json({"order": order.id, "buyer_alias": f"{order.buyer_alias}@{domain}",
                 "seller_alias": f"{order.seller_alias}@{domain}"})
    return 0


async def optout_add(store: Store, settings: Settings, args: argparse.Namespace) -> int:
    address = _address(args.address, "address")
    await store.optout_add(address)
    print(address)
    return 0


async def optout_remove(store: Store, settings: Settings, args: argparse.Namespace) -> int:
    address = _address(args.address, "address")
    if not await store.optout_remove(address):
        raise UsageError(f"{address} has not opted out")
    print(address)
    return 0


async def optout_list(store: Store, settings: Settings, args: argparse.Namespace) -> int:
    for address in await store.optout_list():
        print(address)
    return 0


async def audit_list(store: Store, settings: Settings, args: argparse.Namespace) -> int:
    for row in await store.audit_list(args.order):
        if args.json:
            row = dict(row)
            row.pop("findings", None)
            _print_json(row)
        else:
            reasons = ",".join(row["reasons"]) or "-"
            print(f"{row['id']}\t{row['received_at']}\t{row['order'] or '-'}\t{row['direction']}\t"
                  f"{row['verdict']}\t{reasons}\t{row['delivery'] or '-'}\t{row['subject'] or ''}")
    return 0


async def audit_show(store: Store, settings: Settings, args: argparse.Namespace) -> int:
    row = await store.audit_get(args.id)
    if row is None:
        raise UsageError(f"no audit record {args.id}")
    data = row[args.part]
    if data is None:
        why = "it was not relayed" if args.part == "outbound" else "it was refused before its content was read"
        raise UsageError(f"audit record {args.id} has no {args.part} message ({why})")
    sys.stdout.buffer.write(bytes(data))
    sys.stdout.buffer.flush()
    return 0


async def queue_list(store: Store, settings: Settings, args: argparse.Namespace) -> int:
    for e in await store.queue_list():
        obj = {"id": e.id, "audit_id": e.audit_id, "kind": e.kind, "state": e.state, "attempts": e.attempts,
               "recipient": e.rcpt_to, "next_attempt": e.next_attempt, "last_error": e.last_error}
        if args.json:
            _print_json(obj)
        else:
            print(f"{e.id}\t{e.kind}\t{e.state}\t{e.attempts}\t{e.audit_id or '-'}\t{e.last_error or ''}")
    return 0


async def queue_retry(store: Store, settings: Settings, args: argparse.Namespace) -> int:
    try:
        count = await store.queue_retry(args.id)
    except NotFound as exc:
        raise UsageError(str(exc)) from None
    print(f"{count} queue entr{'y' if count == 1 else 'ies'} due now")
    return 0


async def filter_test(store: Store, settings: Settings, args: argparse.Namespace) -> int:
    from relay.pipeline import Pipeline

    try:
        with open(args.file, "rb") as fh:
            content = fh.read()
    except OSError as exc:
        raise UsageError(f"cannot read {args.file}: {exc.strerror}") from None
    pipeline = Pipeline(settings, store)
    recipient, reply = await pipeline.resolve_recipient(args.alias)
    if recipient is None or recipient.kind != "alias":
        raise UsageError(f"{args.alias} is not an alias of an open order ({reply})")
    outcome = await pipeline.process(args.sender, recipient, content.replace(b"\r\n", b"\n").replace(
        b"\n", b"\r\n"), dry_run=True)
    print(f"direction: {recipient.direction}")
    if not outcome.findings:
        print("findings: none")
    for f in outcome.findings:
        action = settings.filters.action_for(f.code)
        print(f"finding: [{f.code}] {action} {f.location}: {f.fragment!r}")
    print(f"critical: {str(outcome.critical).lower()}")
    print(f"verdict: {outcome.verdict}")
    print(f"reply: {outcome.reply}")
    return 0


COMMANDS = {
    ("seller", "add"): seller_add,
    ("seller", "passwd"): seller_passwd,
    ("order", "open"): order_open,
    ("optout", "add"): optout_add,
    ("optout", "remove"): optout_remove,
    ("optout", "list"): optout_list,
    ("audit", "list"): audit_list,
    ("audit", "show"): audit_show,
    ("queue", "list"): queue_list,
    ("queue", "retry"): queue_retry,
    ("filter", "test"): filter_test,
}
