"""Prove anonymity end to end: every corpus message, both directions, real SMTP.

For each file in tests/corpus (see MANIFEST.json and make_corpus.py) and each
direction, the harness writes as Alice <alice.real@sender.example> to the
alias of Bob <bob.real@recipient.example> through a real `relay serve`
process, collects what reaches the downstream sink and checks:

- nothing of Alice survives: her address in any spelling, her domain in any
  header, her Message-IDs, her client's host names and IP addresses
  (tests/leakcheck.py decodes every MIME level before looking);
- Bob's real address was replaced by his alias wherever Alice wrote it
  (the delivered To: may name him: it is his own mailbox);
- the message parses, its lines fit RFC 5322 and its envelope sender is on
  the relay's domain;
- it still says the same thing: every text part equals the original's once
  both real addresses are replaced by their aliases (compared decoded,
  normalised and whitespace-folded; HTML compared by its text), the subject
  likewise, and every attachment that names nobody arrives byte-identical;
- a message the manifest marks "reject" gets a 5xx and nothing is delivered.

The filter chain is emptied ({"filters": {"order": []}}): content filters
would rightly refuse third-party addresses in seller mail, and this test is
about the rewriting, not the filters.  One relay per direction, one order per
direction, the files sent one after another.
"""

from __future__ import annotations

import asyncio
import base64
import importlib.util
import ipaddress
import json
import os
import re
import smtplib
import time
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import Message
from email.utils import getaddresses
from pathlib import Path

import pytest

from leakcheck import find_leaks, is_textual, iter_parts, normalise, parse, part_bytes, part_text

CORPUS = Path(__file__).resolve().parent / "corpus"
MANIFEST = json.loads((CORPUS / "MANIFEST.json").read_text(encoding="utf-8"))

ALICE = "alice.real@sender.example"  # the writer, in every file
BOB = "bob.real@recipient.example"  # the counterparty
WRITER_DOMAIN = "sender.example"
PLACEHOLDER = re.compile(rb"ALIAS-PLACEHOLDER@relay\.example", re.IGNORECASE)
DEFAULT_EHLO = "mail-qk1-f41.sender.example"
CLIENT_IP = "127.0.0.1"  # where the harness connects from; a Received naming it leaks it

DIRECTIONS = ("seller_to_buyer", "buyer_to_seller")
# Headers that carry the route a message took: every IP literal in them is the writer's.
ROUTE_HEADERS = {"received", "x-received", "x-originating-ip", "x-forwarded-for", "received-spf",
                 "authentication-results", "arc-authentication-results", "x-sender-ip"}
CALENDAR_TYPES = {"text/calendar", "application/ics", "text/vcard", "text/x-vcard", "text/directory"}
STRIP_NOTE = re.compile(r"\[[^\[\]]{0,80}\bremoved\b[^\[\]]{0,80}\]")
PGP_NOISE = re.compile(
    r"-----BEGIN PGP (PUBLIC KEY BLOCK|SIGNATURE)-----.*?-----END PGP \1-----"
    r"|-----BEGIN PGP SIGNED MESSAGE-----\s*(?:Hash:[^\n]*\n)*", re.DOTALL)


# ------------------------------------------------------- corpus-only tests

def test_manifest_lists_every_file():
    files = {p.name for p in CORPUS.glob("*.eml")}
    listed = [e["file"] for e in MANIFEST]
    assert len(listed) == len(set(listed))
    assert set(listed) == files
    assert len(files) >= 60
    for e in MANIFEST:
        assert e["expect"] in ("deliver", "reject", "strip"), e
        assert e["category"] and e["note"], e


def test_corpus_is_what_make_corpus_generates(tmp_path):
    spec = importlib.util.spec_from_file_location("make_corpus", CORPUS / "make_corpus.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["make_corpus.py", str(tmp_path)])
    for entry in MANIFEST:
        assert (tmp_path / entry["file"]).read_bytes() == (CORPUS / entry["file"]).read_bytes(), entry["file"]
    assert json.loads((tmp_path / "MANIFEST.json").read_text(encoding="utf-8")) == MANIFEST


@pytest.mark.parametrize("entry", MANIFEST, ids=lambda e: e["file"])
def test_corpus_file_is_wire_ready_and_leaky(entry):
    """Each original is valid SMTP data, names the alias, and the checker sees Alice in it."""
    data = (CORPUS / entry["file"]).read_bytes()
    head = data.split(b"\r\n\r\n", 1)[0]
    assert PLACEHOLDER.search(head), "no ALIAS-PLACEHOLDER in the header"
    assert all(len(line) <= 998 for line in data.split(b"\r\n"))
    assert b"\n" not in data.replace(b"\r\n", b"") and b"\r" not in data.replace(b"\r\n", b"")
    found = find_leaks(data, [ALICE], [WRITER_DOMAIN], [], [])
    assert any(ALICE in line for line in found)


# ------------------------------------------------------------- helpers

def substitute(data: bytes, alias: str) -> bytes:
    def one(m: re.Match) -> bytes:
        return (alias.upper() if m.group(0).isupper() else alias).encode()

    return PLACEHOLDER.sub(one, data)


ID_HEADERS = {"message-id", "references", "in-reply-to", "resent-message-id", "content-id", "x-ms-tnef-correlator"}


def writer_ids(msg: Message) -> set[str]:
    """Message-IDs and Content-IDs the writer's side created (…@…sender.example)."""
    ids: set[str] = set()
    for _, part, _ in iter_parts(msg):
        for name, value in part.items():
            if name.lower() not in ID_HEADERS:
                continue
            for m in re.finditer(r"<([^<>\s]+@[^<>\s]*sender\.example)>", str(value), re.IGNORECASE):
                ids.add(m.group(1))
    return ids


def writer_hosts(msg: Message, ehlo: str) -> set[str]:
    hosts = {ehlo, CLIENT_IP}
    for name, value in msg.items():
        if name.lower() not in ROUTE_HEADERS:
            continue
        text = str(value)
        hosts.update(m.group(0).rstrip(".") for m in re.finditer(r"[A-Za-z0-9.-]+\.sender\.example\.?", text))
        for token in re.split(r"[^0-9A-Fa-f:.%]", text):
            candidate = token.strip(".:").split("%")[0]
            if not candidate or (candidate.count(".") != 3 and candidate.count(":") < 2):
                continue
            try:
                ipaddress.ip_address(candidate)
            except ValueError:
                continue
            hosts.add(candidate.lower())
    return hosts


def ehlo_name(msg: Message) -> str:
    for value in msg.get_all("Received") or []:
        m = re.search(r"\b([a-z0-9-]+(?:\.[a-z0-9-]+)*\.sender\.example)\b", str(value), re.IGNORECASE)
        if m:
            return m.group(1)
    return DEFAULT_EHLO


def canon_text(text: str, ctype: str, mapping: dict[str, str]) -> str:
    """A text part as a reader sees it, real addresses replaced, whitespace folded."""
    if ctype in CALENDAR_TYPES:
        text = re.sub(r"\r?\n[ \t]", "", text)  # RFC 5545/6350 unfolding
        if "quoted-printable" in text.lower():  # vCard 2.1 property values
            text = re.sub(r"=\r?\n", "", text)
            text = re.sub(r"=([0-9A-Fa-f]{2})", lambda m: chr(int(m.group(1), 16)), text)
    text = PGP_NOISE.sub(" ", text)
    if ctype == "text/html":
        text = re.sub(r"(?is)<(style|script|head)\b.*?</\1\s*>", " ", text)
        text = re.sub(r"(?i)<br\s*/?>|</?(p|div|tr|li|blockquote|table|h\d)\b[^>]*>", "\n", text)
        text = re.sub(r"<[^<>]*>", "", text)
    text = normalise(text)
    for real, alias in mapping.items():
        text = text.replace(real.casefold(), alias.casefold())
    text = re.sub(r"cid:[^\s\"'<>]+", "cid:", text)
    return re.sub(r"\s+", " ", text).strip()


def first_difference(a: str, b: str) -> str:
    i = next((k for k, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    return f"at {i}: expected …{a[max(0, i - 40):i + 60]!r}… got …{b[max(0, i - 40):i + 60]!r}…"


def mentions(part: Message, addresses: list[str]) -> bool:
    """Does this leaf's decoded content name one of the addresses?"""
    body = base64.encodebytes(part_bytes(part)).replace(b"\n", b"\r\n")
    fake = (f"Content-Type: {part.get_content_type()}; charset=\"{part.get_content_charset() or 'utf-8'}\"\r\n"
            "Content-Transfer-Encoding: base64\r\n\r\n").encode() + body
    return any(not line.startswith("raw") for line in find_leaks(fake, addresses))


def leaves(msg: Message) -> list[tuple[str, Message]]:
    return [(path, part) for path, part, _ in iter_parts(msg) if not part.is_multipart()]


def subject_of(msg: Message) -> str:
    value = msg.get("Subject")
    if value is None:
        return ""
    from email.header import Header, decode_header
    if isinstance(value, Header):  # compat32 keeps raw 8-bit header bytes as "unknown-8bit" chunks
        return "".join(b.decode("utf-8", "replace") if isinstance(b, bytes) else b for b, _ in decode_header(value))
    text = str(value)
    if any("\udc80" <= ch <= "\udcff" for ch in text):  # raw 8-bit header bytes: read them as UTF-8
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    try:
        from email.header import decode_header, make_header
        return str(make_header(decode_header(text)))
    except Exception:
        return text


@dataclass
class Outcome:
    file: str
    expect: str
    result: str = ""  # "delivered", "refused <code> <text>"
    problems: list[str] = field(default_factory=list)
    delivered: bytes | None = field(default=None, repr=False)


def send(host: str, port: int, ehlo: str, mail_from: str, rcpt: str, data: bytes) -> tuple[int, str]:
    """Send like a mail client would; returns (code, text) of the final reply."""
    head, _, body = data.partition(b"\r\n\r\n")
    try:
        with smtplib.SMTP(host, port, local_hostname=ehlo, timeout=30) as smtp:
            smtp.ehlo()
            options = []
            if any(b > 127 for b in body) and smtp.has_extn("8bitmime"):
                options.append("BODY=8BITMIME")
            if any(b > 127 for b in head) and smtp.has_extn("smtputf8"):
                options.append("SMTPUTF8")
            smtp.sendmail(mail_from, [rcpt], data, mail_options=options)
            return 250, "accepted"
    except smtplib.SMTPRecipientsRefused as exc:
        code, text = next(iter(exc.recipients.values()))
        return code, text.decode("utf-8", "replace")
    except (smtplib.SMTPSenderRefused, smtplib.SMTPDataError) as exc:
        return exc.smtp_code, exc.smtp_error.decode("utf-8", "replace")
    except smtplib.SMTPResponseException as exc:
        return exc.smtp_code, exc.smtp_error.decode("utf-8", "replace")
    except (smtplib.SMTPServerDisconnected, OSError) as exc:
        return 0, f"connection failed: {exc}"


# -------------------------------------------------------------- the check

def check_delivered(entry: dict, original: bytes, delivered, aliases: dict[str, str], to_alias: str,
                    domain: str, ehlo: str) -> list[str]:
    """Every way the delivered message may fall short; empty when it is right."""
    problems: list[str] = []
    data: bytes = delivered.data
    orig = parse(original)
    mapping = {ALICE: aliases["alice"], BOB: aliases["bob"]}

    # Envelope.
    if not delivered.mail_from.lower().endswith("@" + domain) or ALICE in delivered.mail_from.lower():
        problems.append(f"envelope sender {delivered.mail_from!r} is not on {domain}")
    if [r.lower() for r in delivered.rcpt_tos] != [BOB]:
        problems.append(f"envelope recipients {delivered.rcpt_tos} are not [{BOB}]")

    # The invariant: nothing of Alice's.
    problems += ["leak: " + line for line in find_leaks(data, [ALICE], [WRITER_DOMAIN], writer_ids(orig),
                                                         writer_hosts(orig, ehlo))]
    # Bob's real address must have become his alias, except in the To: of his own copy.
    for line in find_leaks(data, [BOB]):
        if not line.startswith(("header To:", "header Delivered-To:", "raw ")):
            problems.append("not replaced: " + line)

    # It parses, cleanly.
    try:
        new = message_from_bytes(data, policy=policy.default)
        for part in new.walk():
            for _name, value in part.items():
                str(value)
            if part.defects:
                problems.append(f"parse defects in {part.get_content_type()}: "
                                + ", ".join(type(d).__name__ for d in part.defects))
    except Exception as exc:  # the delivered message must parse
        return problems + [f"delivered message does not parse: {exc!r}"]
    got = parse(data)

    # From is the writer's alias.
    from_addrs = [a.lower() for _, a in getaddresses(got.get_all("From") or [])]
    if from_addrs != [aliases["alice"]]:
        problems.append(f"From is {from_addrs}, expected [{aliases['alice']}]")

    # Same subject, once addresses are replaced.
    want, have = canon_text(subject_of(orig), "text/plain", mapping), canon_text(subject_of(got), "text/plain", {})
    if want != have:
        problems.append(f"subject differs: expected {want!r}, got {have!r}")

    # Same text, part by part, in order; attachments that name nobody unchanged.
    got_leaves = leaves(got)
    used: set[int] = set()
    cursor = 0
    for path, part in leaves(orig):
        ctype = part.get_content_type()
        named = mentions(part, [ALICE, BOB])
        if is_textual(part) and (part.get_content_maintype() == "text" or ctype == "application/ics"):
            match = next((i for i in range(cursor, len(got_leaves))
                          if i not in used and got_leaves[i][1].get_content_type() == ctype), None)
            if match is None:
                if named and entry["expect"] == "strip":
                    continue
                problems.append(f"text part {path or 'body'} ({ctype}) is missing")
                continue
            used.add(match)
            cursor = match + 1
            want = canon_text(part_text(part), ctype, mapping)
            have = canon_text(part_text(got_leaves[match][1]), ctype, {})
            if entry["expect"] == "strip":
                # Where it removed something, a relay may leave a short note saying so.
                have = re.sub(r"\s+", " ", STRIP_NOTE.sub(" ", have)).strip()
            if want != have:
                problems.append(f"text part {path or 'body'} ({ctype}) differs {first_difference(want, have)}")
        else:
            blob = part_bytes(part)
            match = next((i for i, (_, g) in enumerate(got_leaves) if i not in used and part_bytes(g) == blob), None)
            if match is not None:
                used.add(match)
            elif not named and entry["expect"] != "strip":
                problems.append(f"attachment {path or 'body'} ({ctype}, {part.get_filename()!r}) is missing or altered")

    # Every cid: reference in the delivered HTML still resolves.
    cids = {str(p.get("Content-ID", "")).strip().strip("<>").lower() for _, p in got_leaves if p.get("Content-ID")}
    for _, part in got_leaves:
        if part.get_content_type() == "text/html":
            for ref in re.findall(r"cid:([^\s\"'<>]+)", part_text(part), re.IGNORECASE):
                if normalise(ref) not in {normalise(c) for c in cids}:
                    problems.append(f"cid:{ref} in the HTML names no part")
    return problems


async def run_direction(relay, direction: str) -> list[Outcome]:
    if direction == "seller_to_buyer":
        relay.add_seller("seller-alice", "Alice Real", [ALICE])
        order = relay.open_order("order-s2b", "seller-alice", BOB, "Bob Real")
        aliases = {"alice": order["seller_alias"].lower(), "bob": order["buyer_alias"].lower()}
    else:
        relay.add_seller("seller-bob", "Bob Real", [BOB])
        order = relay.open_order("order-b2s", "seller-bob", ALICE, "Alice Real")
        aliases = {"alice": order["buyer_alias"].lower(), "bob": order["seller_alias"].lower()}
    to_alias = aliases["bob"]
    host, port = relay.mx
    outcomes: list[Outcome] = []
    delivered_count = 0
    for entry in MANIFEST:
        outcome = Outcome(entry["file"], entry["expect"])
        outcomes.append(outcome)
        original = substitute((CORPUS / entry["file"]).read_bytes(), to_alias)
        ehlo = ehlo_name(parse(original))
        code, text = await asyncio.to_thread(send, host, port, ehlo, ALICE, to_alias, original)
        if code == 250:
            delivered_count += 1
            try:
                messages = await relay.sink.wait_for_count(delivered_count, timeout=15)
            except AssertionError as exc:
                delivered_count -= 1
                outcome.result = "accepted, never delivered"
                outcome.problems.append(f"accepted but not delivered: {exc}")
                continue
            outcome.result = "delivered"
            outcome.delivered = messages[delivered_count - 1].data
            if entry["expect"] == "reject":
                outcome.problems.append("accepted a message the relay must refuse")
            outcome.problems += check_delivered(entry, original, messages[delivered_count - 1], aliases, to_alias,
                                                relay.domain, ehlo)
        else:
            outcome.result = f"refused {code} {text}"
            # 8-bit headers without SMTPUTF8 advertised: refusing is allowed (THREATS #57),
            # but for that reason, not as an unauthorised sender the writer cannot fix.
            eight_bit_headers = any(b > 127 for b in original.split(b"\r\n\r\n", 1)[0])
            if entry["expect"] == "reject":
                if not 500 <= code < 600:
                    outcome.problems.append(f"refused with {code}, expected a 5xx: {text}")
            elif eight_bit_headers and 500 <= code < 600:
                if "sender_not_authorized" in text:
                    outcome.problems.append(f"8-bit headers refused for the wrong reason: {code} {text}")
            else:
                outcome.problems.append(f"refused: {code} {text}")
    # Nothing refused turns up later.
    await asyncio.sleep(1.0)
    if len(relay.sink.messages) != delivered_count:
        outcomes.append(Outcome("(all)", "", "", [f"sink has {len(relay.sink.messages)} messages, "
                                                  f"expected {delivered_count}: a refused message was delivered"]))
    return outcomes


def report(direction: str, outcomes: list[Outcome]) -> str:
    bad = [o for o in outcomes if o.problems]
    lines = [f"{direction}: {len(bad)} of {len(outcomes)} corpus files fail"]
    for o in bad:
        lines.append(f"- {o.file} [expect {o.expect}; {o.result}]")
        lines += [f"    {p}" for p in o.problems]
    # LEAK_REPORT_DIR=folder keeps the findings as JSON and every delivered message as .eml.
    path = os.environ.get("LEAK_REPORT_DIR")
    if path:
        folder = Path(path) / direction
        folder.mkdir(parents=True, exist_ok=True)
        (Path(path) / f"{direction}.json").write_text(json.dumps(
            [{k: v for k, v in o.__dict__.items() if k != "delivered"} for o in outcomes],
            indent=1, ensure_ascii=False), encoding="utf-8")
        for o in outcomes:
            if o.delivered is not None:
                (folder / o.file).write_bytes(o.delivered)
    return "\n".join(lines)


@pytest.mark.parametrize("direction", DIRECTIONS)
async def test_corpus_end_to_end(relay_factory, direction):
    started = time.monotonic()
    relay = await relay_factory({"filters": {"order": []}})
    outcomes = await run_direction(relay, direction)
    summary = report(direction, outcomes)
    assert time.monotonic() - started < 110, "the corpus run is too slow"
    assert not any(o.problems for o in outcomes), summary
