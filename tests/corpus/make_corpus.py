#!/usr/bin/env python3
"""Generate the leak corpus: messages shaped like real mail clients' output.

Run `python tests/corpus/make_corpus.py` from the repository root; it rewrites
every `*.eml` file and MANIFEST.json in this folder, byte for byte the same on
every run (no clock, no randomness: pseudo-random tokens come from hashes).

Conventions every file follows, so one harness can run each file in both
directions (tests/test_anonymity_corpus.py):

- the writer is "Alice Real" <alice.real@sender.example>; her domain is
  sender.example; her client and provider hosts are *.sender.example and the
  documentation addresses 198.51.100.0/24 and 2001:db8::/32;
- the message is addressed to ALIAS-PLACEHOLDER@relay.example, which the
  harness replaces by the real alias before sending;
- the counterparty "Bob Real" <bob.real@recipient.example> may appear in
  quoted history, Cc and attachments; the relay must turn it into his alias;
- unknown third parties (carol@third.example) may appear and may survive;
- Message-IDs the writer's side created end in sender.example.

Lines end in CRLF, as on the wire.  Signatures and keys were made once with
gpg and openssl for a throw-away identity and are embedded below, so the
script needs neither tool.
"""

from __future__ import annotations

import base64
import hashlib
import json
import quopri
import struct
import sys
import zlib
from pathlib import Path

HERE = Path(__file__).resolve().parent

ALICE = "alice.real@sender.example"
BOB = "bob.real@recipient.example"
ALIAS = "ALIAS-PLACEHOLDER@relay.example"

ENTRIES: list[dict] = []
BUILDERS = []


def eml(category: str, note: str, expect: str = "deliver"):
    """Register a builder; its name (underscores) becomes the file name."""
    assert expect in ("deliver", "reject", "strip")

    def wrap(fn):
        BUILDERS.append((fn.__name__ + ".eml", category, note, expect, fn))
        return fn

    return wrap


# ---------------------------------------------------------------- helpers

def tok(seed: str, n: int = 16, alphabet: str = "0123456789abcdef") -> str:
    """A deterministic pseudo-random token."""
    out = []
    counter = 0
    while len(out) < n:
        digest = hashlib.sha256(f"{seed}/{counter}".encode()).digest()
        out.extend(alphabet[b % len(alphabet)] for b in digest)
        counter += 1
    return "".join(out[:n])


ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
UPPERHEX = "0123456789ABCDEF"


def fake_b64(seed: str, nbytes: int) -> str:
    data = b""
    counter = 0
    while len(data) < nbytes:
        data += hashlib.sha256(f"{seed}/{counter}".encode()).digest()
        counter += 1
    return base64.b64encode(data[:nbytes]).decode()


def fold_b64(value: str, first: int, width: int = 76, indent: str = "\t") -> str:
    """Fold a long base64 header value the way signers do."""
    lines = [value[:first]]
    value = value[first:]
    while value:
        lines.append(indent + value[:width])
        value = value[width:]
    return "\n".join(lines)


def b64(data: bytes, width: int = 76) -> str:
    enc = base64.b64encode(data).decode()
    return "\n".join(enc[i:i + width] for i in range(0, len(enc), width)) + "\n"


def b64text(text: str, charset: str = "utf-8", width: int = 76) -> str:
    """Base64 of canonical (CRLF) text, as clients encode text parts."""
    return b64(text.replace("\n", "\r\n").encode(charset), width)


def qp(text: str, charset: str = "utf-8") -> str:
    enc = quopri.encodestring(text.encode(charset), quotetabs=False).decode("ascii")
    return enc


def dkim(domain: str, selector: str, seed: str, headers: str, identity: str | None = None) -> str:
    ident = f" i={identity};" if identity else ""
    bh = fake_b64(seed + "bh", 32)
    b = fake_b64(seed + "b", 256)
    return (
        f"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed;\n"
        f"        d={domain}; s={selector};{ident} t=1741083248; x=1741688048; darn=relay.example;\n"
        f"        h={headers};\n"
        f"        bh={bh};\n"
        f"        {fold_b64('b=' + b, 70, 70, '        ')}\n"
    )


def make_png(seed: str, w: int = 16, h: int = 16) -> bytes:
    """A small valid PNG whose pixels come from `seed`."""
    raw = b""
    for y in range(h):
        row = hashlib.sha256(f"{seed}/{y}".encode()).digest() * 2
        raw += b"\x00" + row[: w * 3]

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def make_pdf(title: str) -> bytes:
    """A minimal one-page PDF; it names no address."""
    stream = f"BT /F1 18 Tf 72 720 Td ({title}) Tj ET".encode()
    objs = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n"
    offsets = []
    for i, body in enumerate(objs, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % i + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objs) + 1)
    for off in offsets:
        out += b"%010d 00000 n \n" % off
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objs) + 1, xref)
    return out


def tnef(subject: str, body: str, attachment_name: str, attachment: bytes) -> bytes:
    """A winmail.dat as Outlook writes it: legacy attributes plus MAPI props.

    The sender's address sits in attFrom (ASCII) and in MAPI string
    properties, both 8-bit (PT_STRING8) and UTF-16 (PT_UNICODE).
    """

    def attr(level: int, attr_id: int, data: bytes) -> bytes:
        return (struct.pack("<BII", level, attr_id, len(data)) + data
                + struct.pack("<H", sum(data) & 0xFFFF))

    def pad4(b: bytes) -> bytes:
        return b + b"\x00" * (-len(b) % 4)

    def prop_str8(tag: int, value: str) -> bytes:
        v = value.encode("cp1252") + b"\x00"
        return struct.pack("<HHII", 0x001E, tag, 1, len(v)) + pad4(v)

    def prop_unicode(tag: int, value: str) -> bytes:
        v = value.encode("utf-16-le") + b"\x00\x00"
        return struct.pack("<HHII", 0x001F, tag, 1, len(v)) + pad4(v)

    def prop_long(tag: int, value: int) -> bytes:
        return struct.pack("<HHI", 0x0003, tag, value)

    name = b"Alice Real\x00"
    addr = b"SMTP:ALICE.REAL@SENDER.EXAMPLE\x00"
    triple = struct.pack("<HHHH", 0x0004, 16 + len(name) + len(addr) + 8, len(name), len(addr))
    triple += name + addr + b"\x00" * 8
    props = [
        prop_unicode(0x0037, subject),  # PR_SUBJECT
        prop_str8(0x0C1A, "Alice Real"),  # PR_SENDER_NAME
        prop_str8(0x0C1E, "SMTP"),  # PR_SENDER_ADDRTYPE
        prop_str8(0x0C1F, ALICE),  # PR_SENDER_EMAIL_ADDRESS
        prop_unicode(0x0042, "Alice Real"),  # PR_SENT_REPRESENTING_NAME
        prop_unicode(0x0065, ALICE),  # PR_SENT_REPRESENTING_EMAIL_ADDRESS
        prop_unicode(0x5D01, ALICE),  # PR_SENDER_SMTP_ADDRESS
        prop_long(0x0E07, 0x00000001),  # PR_MESSAGE_FLAGS
        prop_unicode(0x1000, body),  # PR_BODY
    ]
    msg_props = struct.pack("<I", len(props)) + b"".join(props)
    attach_props = [prop_unicode(0x3707, attachment_name), prop_long(0x3705, 1)]
    out = struct.pack("<IH", 0x223E9F78, 0x6C4A)
    out += attr(1, 0x00089006, struct.pack("<I", 0x00010000))  # attTnefVersion
    out += attr(1, 0x00069007, struct.pack("<II", 1252, 0))  # attOemCodepage
    out += attr(1, 0x00078008, b"IPM.Microsoft Mail.Note\x00")  # attMessageClass
    out += attr(1, 0x00068000, triple)  # attFrom
    out += attr(1, 0x00018004, subject.encode("cp1252") + b"\x00")  # attSubject
    out += attr(1, 0x00069003, msg_props)  # attMsgProps
    out += attr(2, 0x00069002, struct.pack("<HIIIIII", 1, 0xFFFFFFFF, 0, 0, 0, 0, 0))  # attAttachRendData
    out += attr(2, 0x00018010, attachment_name.encode("cp1252") + b"\x00")  # attAttachTitle
    out += attr(2, 0x0006800F, attachment)  # attAttachData
    out += attr(2, 0x00069005, struct.pack("<I", len(attach_props)) + b"".join(attach_props))  # attAttachment
    return out


def vcard_apple() -> str:
    return (
        "BEGIN:VCARD\n"
        "VERSION:3.0\n"
        "PRODID:-//Apple Inc.//macOS 15.3.1//EN\n"
        "N:Real;Alice;;;\n"
        "FN:Alice Real\n"
        "ORG:Real Ceramics;\n"
        f"EMAIL;type=INTERNET;type=WORK;type=pref:{ALICE}\n"
        "EMAIL;type=INTERNET;type=HOME:alice.private@sender.example\n"
        "TEL;type=CELL;type=VOICE;type=pref:+1 555 0100 123\n"
        "item1.ADR;type=WORK;type=pref:;;12 Kiln Lane;Springfield;;01101;USA\n"
        "item1.X-ABADR:us\n"
        "item2.URL;type=pref:https://ceramics.sender.example\n"
        "item2.X-ABLabel:_$!<HomePage>!$_\n"
        "REV:2025-03-01T09:00:00Z\n"
        "END:VCARD\n"
    )


# ------------------------------------------------- embedded crypto material
# Made once for the throw-away identity Alice Real <alice.real@sender.example>:
#   gpg --faked-system-time 20250301T090000 --quick-gen-key ... ed25519 sign never
#   openssl req -x509 ... -addext subjectAltName=email:alice.real@sender.example
# The private keys were discarded.  See sign_material() for what was signed.

PGP_FPR = "5DE6596A5497972D8C5B1F7620BC4E33DEA29610"
PGP_PUBLIC_KEY = """\
-----BEGIN PGP PUBLIC KEY BLOCK-----

mDMEZ8LMkBYJKwYBBAHaRw8BAQdAtddj1JtWz55ix+zjrueBfe7u2JV/frd6n6d1
ezv5kgW0JkFsaWNlIFJlYWwgPGFsaWNlLnJlYWxAc2VuZGVyLmV4YW1wbGU+iJAE
ExYIADgWIQRd5llqVJeXLYxbH3YgvE4z3qKWEAUCZ8LMkAIbAwULCQgHAgYVCgkI
CwIEFgIDAQIeAQIXgAAKCRAgvE4z3qKWEP49AP9b2uTxdOohfU9hgEB8bbpyVbgX
XjsFoO7HkZ9RfCZ2pgEAyxD32lMdY4jpwVe/J4v/sfLxzj1h9bqCufKo7bc82AM=
=Ysvw
-----END PGP PUBLIC KEY BLOCK-----
"""
PGP_KEYDATA_B64 = (
    "mDMEZ8LMkBYJKwYBBAHaRw8BAQdAtddj1JtWz55ix+zjrueBfe7u2JV/frd6n6d1ezv5kgW0JkFsaWNlIFJlYWwgPGFsaWNlLnJlYWxAc2VuZGVyLmV4YW1wbGU+iJAEExYIADgWIQRd5llqVJeXLYxbH3YgvE4z3qKWEAUCZ8LMkAIbAwULCQgHAgYVCgkICwIEFgIDAQIeAQIXgAAKCRAgvE4z3qKWEP49AP9b2uTxdOohfU9hgEB8bbpyVbgXXjsFoO7HkZ9RfCZ2pgEAyxD32lMdY4jpwVe/J4v/sfLxzj1h9bqCufKo7bc82AM="
)
PGP_CLEARSIGNED = """\
-----BEGIN PGP SIGNED MESSAGE-----
Hash: SHA256

Hi Bob,

this text is signed inline, my key is below.

Alice
-----BEGIN PGP SIGNATURE-----

iHUEARYIAB0WIQRd5llqVJeXLYxbH3YgvE4z3qKWEAUCZ8bSbgAKCRAgvE4z3qKW
ELYMAQCYbbemDwgjEYHue33EFOPioioXjdatJouFb+Tnocd5EAEApEjjd8vb0Hli
IJ7P+oRPQJ7xjenwfEjUaNs/YuV2iAQ=
=eDXY
-----END PGP SIGNATURE-----
"""
PGP_MIME_SIGNATURE = """\
-----BEGIN PGP SIGNATURE-----

iHUEABYIAB0WIQRd5llqVJeXLYxbH3YgvE4z3qKWEAUCZ8bSbgAKCRAgvE4z3qKW
EBshAQCuT8aDp0PjtJCFWk2+odk0UoJf7HWRRQJBQD8WrEWCXAD/WgLNIdIqCvxs
A8zlfj08Ht5w2GOZ/yoWAyvVXbXJ4g0=
=Cat7
-----END PGP SIGNATURE-----
"""
SMIME_SIGNATURE_B64 = """\
MIIGQQYJKoZIhvcNAQcCoIIGMjCCBi4CAQExDTALBglghkgBZQMEAgEwCwYJKoZIhvcNAQcBoIID
oDCCA5wwggKEoAMCAQICFAhx/AI6ACGxzpB81Tc6KCR8HqTeMA0GCSqGSIb3DQEBCwUAMD8xEzAR
BgNVBAMMCkFsaWNlIFJlYWwxKDAmBgkqhkiG9w0BCQEWGWFsaWNlLnJlYWxAc2VuZGVyLmV4YW1w
bGUwHhcNMjYxMTI3MDMyOTE3WhcNMjkxMTI2MDMyOTE3WjA/MRMwEQYDVQQDDApBbGljZSBSZWFs
MSgwJgYJKoZIhvcNAQkBFhlhbGljZS5yZWFsQHNlbmRlci5leGFtcGxlMIIBIjANBgkqhkiG9w0B
AQEFAAOCAQ8AMIIBCgKCAQEAt1wwdJJZZcYGUx272GOSSKe2tPDxDzo3visLE9Mm/u2IC4EUSjP4
573YNqLuuefd+8BmQXS5AdZRMnqFYQ5G5V/N4DT4BF6iPk5YI/nFJLaLwVpL1B45uHPKalcMeJRd
2aQwSdwuIiv90hr9tqcXtBY4hOqiE1cOXexcGTjnPsN56gi19Kjdq1pPTauxWoxWF+0G8TFol+N1
OiQStHo8eY3QtA0MguJKqKYPkxjgoHaRWUIcDEdTtCn+I6HtD0egC9UzIBrd6Crm1+IYtI2sJs4m
A2zGVIrvTFq+wtNDlUsEVIA4XsNQ0CHNkGv7u8Z0bRQV9pwtOQO5ZW8KycYcHQIDAQABo4GPMIGM
MB0GA1UdDgQWBBSMp9Ugp4Y7v23BXA3Q9ELfkND/hDAfBgNVHSMEGDAWgBSMp9Ugp4Y7v23BXA3Q
9ELfkND/hDAPBgNVHRMBAf8EBTADAQH/MCQGA1UdEQQdMBuBGWFsaWNlLnJlYWxAc2VuZGVyLmV4
YW1wbGUwEwYDVR0lBAwwCgYIKwYBBQUHAwQwDQYJKoZIhvcNAQELBQADggEBAHLlzifXAQvCwPmF
p5j9vCqQdcbJV5wDZlBvkUQsLpd0E7QNnI+FLqaWBY8toIq3N56kY7/gf5GLSDx2ZJqwZGqRRD8P
o08AQLAgrz6B/h8l9WkS7tPfV8oSk4QHlT+t2wGoCdp40nZwmSUZxudnFme961EhuO+rTgjVgza5
82/xqP9s3Ei557jeMH5yShYYyAOvSa/Zw0T3tWU+48bCHZNlNTvmQIJudM5gQUFq4s7agDbhVONQ
iVp94W1i60tUsdIuHSyvIC+SLhjvsFoog/xJAEMwUUlsSY9slZPW9lcfMaQCFScVinJZSt4YgOkk
sULuqZhD9F0tK8PyhspVz/wxggJnMIICYwIBATBXMD8xEzARBgNVBAMMCkFsaWNlIFJlYWwxKDAm
BgkqhkiG9w0BCQEWGWFsaWNlLnJlYWxAc2VuZGVyLmV4YW1wbGUCFAhx/AI6ACGxzpB81Tc6KCR8
HqTeMAsGCWCGSAFlAwQCAaCB5DAYBgkqhkiG9w0BCQMxCwYJKoZIhvcNAQcBMBwGCSqGSIb3DQEJ
BTEPFw0yNjExMjcwMzMzMzdaMC8GCSqGSIb3DQEJBDEiBCB5C/HGlHuXj4AKwrbySNpzsAicoHo7
OIYtvkfYTLAHfjB5BgkqhkiG9w0BCQ8xbDBqMAsGCWCGSAFlAwQBKjALBglghkgBZQMEARYwCwYJ
YIZIAWUDBAECMAoGCCqGSIb3DQMHMA4GCCqGSIb3DQMCAgIAgDANBggqhkiG9w0DAgIBQDAHBgUr
DgMCBzANBggqhkiG9w0DAgIBKDANBgkqhkiG9w0BAQEFAASCAQBt+JD26/Ie7/I3Pp+8PwPgcbQd
q6MfCekkVb03n1Khfd/HFHSh6D2RZr4WHf6p8zLVybyLYMYSb6YoJGBiL7w8AJ6ZAR97FD4AmU/A
MfOi+T7DlcU64WbJCo4kIia2ehJdveC6/vXL87wY1cou1n4XNoiKnIl39KxiQcfNgrUOrDgXx91o
eyKVVrdb/0QmNLLtWMwqQkGLNa6MuTGaJGCz3KWSpjXGu/tHtGRKt2PrYBOYnPBCIxAdrEAQf6wF
58ZuhvUnv9ccyM7ayzI6L1FJySvznawN55hyLooLhWRM3qhXET1u/A88qF/qjW1XY2JTY+Tx0apQ
A1pFNQOnDV80
"""


# ------------------------------------------------------------ client profiles

def gmail_received(seed: str) -> str:
    return (
        f"Received: by mail-qk1-f41.sender.example with SMTP id af79cd13be357-7c3d{tok(seed, 10)}so{tok(seed + 'n', 7, '0123456789')}85a.2\n"
        f"        for <{ALIAS}>; Tue, 04 Mar 2025 02:14:08 -0800 (PST)\n"
        f"X-Received: by 2002:a05:620a:4554:b0:7c3:c8f1:2a4b with SMTP id af79cd13be357-7c3d8e4e3c7mr{tok(seed + 'x', 9, '0123456789')}85a.12.1741083247654;\n"
        f"        Tue, 04 Mar 2025 02:14:07 -0800 (PST)\n"
        f"Received: from [192.168.1.23] ([198.51.100.7])\n"
        f"        by smtp.sender.example with ESMTPSA id {tok(seed + 'e', 20, ALNUM)}\n"
        f"        for <{ALIAS}>\n"
        f"        (version=TLS1_3 cipher=TLS_AES_256_GCM_SHA384 bits=256/256);\n"
        f"        Tue, 04 Mar 2025 02:14:07 -0800 (PST)\n"
    )


def gmail_top(seed: str, subject: str, *, date: str = "Tue, 4 Mar 2025 11:14:06 +0100",
              to: str = f"Bob Real <{ALIAS}>", cc: str | None = None, refs: str | None = None,
              boundary: str | None = None, ctype: str | None = None) -> str:
    h = gmail_received(seed)
    h += dkim("sender.example", "20230601", seed,
              "to:subject:message-id:date:from:in-reply-to:references\n         :mime-version:from:to:cc:subject:date:message-id:reply-to")
    h += (
        f"X-Google-DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed;\n"
        f"        d=1e100.net; s=20230601; t=1741083248; x=1741688048;\n"
        f"        h=to:subject:message-id:date:from:in-reply-to:references\n"
        f"         :mime-version:x-gm-message-state:from:to:cc:subject:date:message-id\n"
        f"         :reply-to;\n"
        f"        bh={fake_b64(seed + 'gbh', 32)};\n"
        f"        b={fake_b64(seed + 'gb', 64)}\n"
        f"X-Gm-Message-State: AOJu0Yw{tok(seed + 'gm', 60, ALNUM)}\n"
        f"X-Gm-Gg: ASbGnc{tok(seed + 'gg', 90, ALNUM)}\n"
        f"X-Google-Smtp-Source: AGHT+IE{tok(seed + 'gs', 60, ALNUM)}==\n"
        "MIME-Version: 1.0\n"
    )
    if refs:
        h += f"References: {refs}\nIn-Reply-To: {refs.split()[-1]}\n"
    h += (
        f"From: Alice Real <{ALICE}>\n"
        f"Date: {date}\n"
        f"X-Gm-Features: AQ5f1Jr{tok(seed + 'gf', 40, ALNUM)}\n"
        f"Message-ID: <CAF8kq3{tok(seed + 'mid', 28, ALNUM)}+{tok(seed + 'mid2', 6, ALNUM)}@mail.sender.example>\n"
        f"Subject: {subject}\n"
        f"To: {to}\n"
    )
    if cc:
        h += f"Cc: {cc}\n"
    if boundary:
        h += f'Content-Type: {ctype or "multipart/alternative"}; boundary="{boundary}"\n'
    elif ctype:
        h += f"Content-Type: {ctype}\n"
    return h


def gboundary(seed: str) -> str:
    return "000000000000" + tok(seed, 16)


def outlook_received(seed: str) -> str:
    host = "DB9PR07MB7" + tok(seed + "h", 4, UPPERHEX)
    return (
        f"Received: from {host}.eurprd07.prod.sender.example (2001:db8:a4:17::14) by\n"
        f" AM0PR07MB4{tok(seed + 'h2', 4, UPPERHEX)}.eurprd07.prod.sender.example (2001:db8:a4:1c::9) with\n"
        f" Microsoft SMTP Server (version=TLS1_2,\n"
        f" cipher=TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384) id 15.20.8489.25; Tue, 4 Mar 2025\n"
        f" 10:14:08 +0000\n"
        f"Received: from {host}.eurprd07.prod.sender.example\n"
        f" ([fe80::5a3b:1c2d:9e8f:4a7b]) by {host}.eurprd07.prod.sender.example\n"
        f" ([fe80::5a3b:1c2d:9e8f:4a7b%5]) with mapi id 15.20.8489.025; Tue, 4 Mar 2025\n"
        f" 10:14:07 +0000\n"
    ), host


def outlook_top(seed: str, subject: str, *, thread_topic: str | None = None, refs: str | None = None,
                has_attach: bool = False, tnef_corr: str = "", ctype: str = "", extra: str = "",
                to: str = f"Bob Real <{ALIAS}>", cc: str | None = None,
                date: str = "Tue, 4 Mar 2025 10:14:07 +0000") -> str:
    rec, host = outlook_received(seed)
    mid = f"<{host}{tok(seed + 'm', 26, UPPERHEX)}@{host}.eurprd07.prod.sender.example>"
    h = rec
    h += (
        "ARC-Seal: i=1; a=rsa-sha256; s=arcselector10001; d=sender.example; cv=none;\n"
        f" {fold_b64('b=' + fake_b64(seed + 'as', 256), 74, 75, ' ')}\n"
        "ARC-Message-Signature: i=1; a=rsa-sha256; c=relaxed/relaxed; d=sender.example;\n"
        " s=arcselector10001;\n"
        " h=From:Date:Subject:Message-ID:Content-Type:MIME-Version:X-MS-Exchange-AntiSpam-MessageData-ChunkCount:X-MS-Exchange-AntiSpam-MessageData-0:X-MS-Exchange-AntiSpam-MessageData-1;\n"
        f" bh={fake_b64(seed + 'abh', 32)};\n"
        f" {fold_b64('b=' + fake_b64(seed + 'ab', 256), 74, 75, ' ')}\n"
        "ARC-Authentication-Results: i=1; mx.sender.example 1; spf=pass\n"
        f" smtp.mailfrom=sender.example; dmarc=pass action=none header.from=sender.example;\n"
        f" dkim=pass header.d=sender.example; arc=none\n"
        f"{dkim('sender.example', 'selector1', seed, 'From:Date:Subject:Message-ID:Content-Type:MIME-Version:X-MS-Exchange-SenderADCheck', ALICE)}"
        f"From: Alice Real <{ALICE}>\n"
        f"To: {to}\n"
    )
    if cc:
        h += f"Cc: {cc}\n"
    h += (
        f"Subject: {subject}\n"
        f"Thread-Topic: {thread_topic or subject}\n"
        f"Thread-Index: AQHbjO{tok(seed + 'ti', 30, ALNUM)}==\n"
        f"Date: {date}\n"
        f"Message-ID: {mid}\n"
    )
    if refs:
        h += f"References: {refs}\nIn-Reply-To: {refs.split()[-1]}\n"
    h += (
        "Accept-Language: en-GB, en-US\n"
        "Content-Language: en-GB\n"
        f"X-MS-Has-Attach: {'yes' if has_attach else ''}\n"
        f"X-MS-TNEF-Correlator: {tnef_corr}\n"
        "msip_labels:\n"
        "authentication-results: dkim=none (message not signed)\n"
        f" header.d=none;dmarc=none action=none header.from=sender.example;\n"
        "x-ms-publictraffictype: Email\n"
        f"x-ms-traffictypediagnostic: {host}:EE_|AM0PR07MB4{tok(seed + 'h2', 4, UPPERHEX)}:EE_\n"
        f"x-ms-office365-filtering-correlation-id: {tok(seed + 'c1', 8)}-{tok(seed + 'c2', 4)}-{tok(seed + 'c3', 4)}-{tok(seed + 'c4', 4)}-{tok(seed + 'c5', 12)}\n"
        "x-originating-ip: [198.51.100.7]\n"
        "x-ms-exchange-senderadcheck: 1\n"
        "x-ms-exchange-antispam-relay: 0\n"
        f"x-microsoft-antispam-message-info: {tok(seed + 'ami', 70, ALNUM)}\n"
        "Content-Type: " + ctype + "\n"
        "MIME-Version: 1.0\n"
        "X-OriginatorOrg: sender.example\n"
        f"X-MS-Exchange-CrossTenant-AuthAs: Internal\n"
        f"X-MS-Exchange-CrossTenant-AuthSource: {host}.eurprd07.prod.sender.example\n"
        f"X-MS-Exchange-CrossTenant-Network-Message-Id: {tok(seed + 'n1', 8)}-{tok(seed + 'n2', 4)}-{tok(seed + 'n3', 4)}-{tok(seed + 'n4', 4)}-{tok(seed + 'n5', 12)}\n"
        "X-MS-Exchange-CrossTenant-originalarrivaltime: 04 Mar 2025 10:14:07.6543\n"
        " (UTC)\n"
        "X-MS-Exchange-CrossTenant-fromentityheader: Hosted\n"
        f"X-MS-Exchange-CrossTenant-userprincipalname: {tok(seed + 'upn', 40, ALNUM)}\n"
        f"X-MS-Exchange-Transport-CrossTenantHeadersStamped: AM0PR07MB4{tok(seed + 'h2', 4, UPPERHEX)}\n"
    )
    return h + extra


def obound(seed: str) -> str:
    return f"_000_DB9PR07MB7{tok(seed, 32, UPPERHEX)}eurp_"


def apple_top(seed: str, subject: str, *, ctype: str, cte: str | None = None, refs: str | None = None,
              to: str = f"Bob Real <{ALIAS}>", cc: str | None = None,
              date: str = "Tue, 4 Mar 2025 11:14:06 +0100", mailer: str = "Apple Mail (2.3826.400.131.1.6)",
              mime: str = "Mime-Version: 1.0 (Mac OS X Mail 16.0 \\(3826.400.131.1.6\\))") -> str:
    h = (
        "Return-Path: <alice.real@sender.example>\n"
        "Received: from smtpclient.apple (p5b0c1a2d.dip0.isp.example [198.51.100.45])\n"
        "        by smtp.sender.example (Postfix) with ESMTPSA id 4Z6HQ02XkTz9sRk\n"
        f"        for <{ALIAS}>; Tue,  4 Mar 2025 11:14:07 +0100 (CET)\n"
        + dkim("sender.example", "mail", seed, "From:Subject:Date:To:Message-Id:Mime-Version:Content-Type", ALICE)
        + f"Content-Type: {ctype}\n"
    )
    if cte:
        h += f"Content-Transfer-Encoding: {cte}\n"
    h += f"{mime}\nSubject: {subject}\n"
    if refs:
        h += f"In-Reply-To: {refs.split()[-1]}\n"
    h += f"From: Alice Real <{ALICE}>\n"
    h += f"Date: {date}\n"
    if cc:
        h += f"Cc: {cc}\n"
    if refs:
        h += f"References: {refs}\n"
    h += (
        f"To: {to}\n"
        f"Message-Id: <{tok(seed + 'mid', 8, UPPERHEX)}-{tok(seed + 'm2', 4, UPPERHEX)}-{tok(seed + 'm3', 4, UPPERHEX)}-"
        f"{tok(seed + 'm4', 4, UPPERHEX)}-{tok(seed + 'm5', 12, UPPERHEX)}@sender.example>\n"
        f"X-Mailer: {mailer}\n"
    )
    return h


def aboundary(seed: str) -> str:
    return (f"Apple-Mail={'_'}{tok(seed, 8, UPPERHEX)}-{tok(seed + '1', 4, UPPERHEX)}-{tok(seed + '2', 4, UPPERHEX)}-"
            f"{tok(seed + '3', 4, UPPERHEX)}-{tok(seed + '4', 12, UPPERHEX)}")


def tb_top(seed: str, subject: str, *, ctype: str, cte: str | None = None, refs: str | None = None,
           to: str = f"Bob Real <{ALIAS}>", cc: str | None = None, extra: str = "",
           date: str = "Tue, 4 Mar 2025 11:14:06 +0100",
           ua: str = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101\n Thunderbird/128.7.1") -> str:
    mid = f"<{tok(seed + 'a', 8)}-{tok(seed + 'b', 4)}-{tok(seed + 'c', 4)}-{tok(seed + 'd', 4)}-{tok(seed + 'e', 12)}@sender.example>"
    h = (
        "Received: from [192.168.1.23] (p5b0c1a2d.dip0.isp.example [198.51.100.45])\n"
        "\t(using TLSv1.3 with cipher TLS_AES_128_GCM_SHA256 (128/128 bits)\n"
        "\t key-exchange X25519 server-signature RSA-PSS (2048 bits) server-digest SHA256)\n"
        "\t(No client certificate requested)\n"
        "\tby smtp.sender.example (Postfix) with ESMTPSA id 4Z6HQ02XkTz9sRk;\n"
        "\tTue,  4 Mar 2025 11:14:07 +0100 (CET)\n"
        + dkim("sender.example", "mail", seed, "Date:MIME-Version:From:Subject:To:References:In-Reply-To:Content-Type")
        + f"Message-ID: {mid}\n"
        + f"Date: {date}\n"
        + "MIME-Version: 1.0\n"
        + f"User-Agent: {ua}\n"
    )
    if refs:
        h += f"References: {refs}\n"
    h += "Content-Language: en-US\n"
    h += f"To: {to}\n"
    if cc:
        h += f"Cc: {cc}\n"
    h += f"From: Alice Real <{ALICE}>\n"
    h += f"Subject: {subject}\n"
    if refs:
        h += f"In-Reply-To: {refs.split()[-1]}\n"
    h += extra
    h += f"Content-Type: {ctype}\n"
    if cte:
        h += f"Content-Transfer-Encoding: {cte}\n"
    return h


def tboundary(seed: str) -> str:
    return "------------" + tok(seed, 24, ALNUM)


RELAY_REF = "<r.7f3a9c2e1b4d5f60@mx.relay.example>"  # an id the writer saw on the relay's mail
OWN_REF = "<3b9c2f1e-8d4a-4f6b-a1c2-7e9d0f3b5a6c@sender.example>"  # her own earlier message

# Bob's earlier message as the writer saw it (through the relay) and as she quotes it.
BOB_TEXT = ("Hi Alice,\n\nthank you for the quick shipping. The blue mug arrived with a small chip on\n"
            "the handle. Could you send a replacement, or should I return it first?\n\nBest,\nBob\n")


def quote(text: str, prefix: str = "> ") -> str:
    return "".join(prefix + line if line else prefix.rstrip() for line in text.splitlines(True))


def html_quote(text: str) -> str:
    return "<br>".join(text.rstrip("\n").split("\n"))


SIG_TEXT = f"--\nAlice Real\nReal Ceramics\n{ALICE}\n"
SIG_HTML = (f'<div>-- <br>Alice Real<br>Real Ceramics<br>'
            f'<a href="mailto:{ALICE}" target="_blank">{ALICE}</a></div>')


# ================================================================== gmail

@eml("gmail", "Gmail multipart/alternative with signature (mailto link) and full Gmail header set (DKIM, X-Gm-*, X-Received, Received from client IP)")
def gmail_alternative():
    bd = gboundary("g1")
    text = f"Hi Bob,\n\nyour order has shipped today, tracking number 1Z999AA10123456784.\n\n{SIG_TEXT}"
    html = (f'<div dir="ltr"><div>Hi Bob,</div><div><br></div><div>your order has shipped today, tracking number '
            f'1Z999AA10123456784.</div><div><br></div><span class="gmail_signature_prefix">-- </span><br>'
            f'<div dir="ltr" class="gmail_signature" data-smartmail="gmail_signature"><div dir="ltr">Alice Real<div>Real Ceramics</div>'
            f'<div><a href="mailto:{ALICE}" target="_blank">{ALICE}</a></div></div></div></div>\n')
    return (gmail_top("g1", "Your order has shipped", boundary=bd)
            + f"\n--{bd}\nContent-Type: text/plain; charset=\"UTF-8\"\n\n{text}\n"
            + f"--{bd}\nContent-Type: text/html; charset=\"UTF-8\"\n\n{html}\n--{bd}--\n")


@eml("reply-quoted", "Gmail reply: attribution line with Bob's real address, quoted history in text and gmail_quote blockquote with mailto, References to her own earlier sender.example id")
def gmail_reply_quoted():
    bd = gboundary("g2")
    attribution = f"On Tue, 4 Mar 2025 at 09:02, Bob Real <{BOB}> wrote:"
    text = ("Hi Bob,\n\nsorry about that! I will send a replacement today, no need to return the\n"
            "chipped one.\n\nAlice\n\n" + attribution + "\n\n" + quote(BOB_TEXT) + ">\n> " + "\n")
    html = ('<div dir="ltr"><div>Hi Bob,</div><div><br></div><div>sorry about that! I will send a replacement today, '
            'no need to return the chipped one.</div><div><br></div><div>Alice</div></div><br><div class="gmail_quote '
            'gmail_quote_container"><div dir="ltr" class="gmail_attr">On Tue, 4 Mar 2025 at 09:02, Bob Real &lt;<a '
            f'href="mailto:{BOB}">{BOB}</a>&gt; wrote:<br></div><blockquote class="gmail_quote" style="margin:0px 0px '
            '0px 0.8ex;border-left:1px solid rgb(204,204,204);padding-left:1ex"><div dir="ltr">'
            + html_quote(BOB_TEXT) + "</div>\n</blockquote></div>\n")
    return (gmail_top("g2", "Re: Chipped mug", refs=f"{OWN_REF} {RELAY_REF}", boundary=bd)
            + f"\n--{bd}\nContent-Type: text/plain; charset=\"UTF-8\"\nContent-Transfer-Encoding: quoted-printable\n\n{qp(text)}\n"
            + f"--{bd}\nContent-Type: text/html; charset=\"UTF-8\"\nContent-Transfer-Encoding: quoted-printable\n\n{qp(html)}\n--{bd}--\n")


@eml("multipart-related", "Gmail HTML with inline image: multipart/related, cid: reference, X-Attachment-Id, base64 PNG (no address: must arrive byte-identical)")
def gmail_inline_image():
    outer, alt = gboundary("g3o"), gboundary("g3a")
    png = make_png("g3")
    cid = "ii_m7u2k3hl0"
    text = "Hi Bob,\n\nhere is the glaze colour you asked about:\n[image: glaze.png]\n\nAlice\n"
    html = ('<div dir="ltr">Hi Bob,<div><br></div><div>here is the glaze colour you asked about:</div><div>'
            f'<img src="cid:{cid}" alt="glaze.png" width="16" height="16"><br></div><div><br></div><div>Alice</div></div>\n')
    return (gmail_top("g3", "Glaze colour", boundary=outer, ctype="multipart/related")
            + f"\n--{outer}\nContent-Type: multipart/alternative; boundary=\"{alt}\"\n\n"
            + f"--{alt}\nContent-Type: text/plain; charset=\"UTF-8\"\n\n{text}\n"
            + f"--{alt}\nContent-Type: text/html; charset=\"UTF-8\"\n\n{html}\n--{alt}--\n"
            + f"--{outer}\nContent-Type: image/png; name=\"glaze.png\"\nContent-Disposition: inline; filename=\"glaze.png\"\n"
            + f"Content-Transfer-Encoding: base64\nContent-ID: <{cid}>\nX-Attachment-Id: {cid}\n\n{b64(png)}--{outer}--\n")


@eml("gmail", "Gmail inline forward: '---------- Forwarded message ---------' block naming both parties, HTML with <wbr> inside the displayed addresses")
def gmail_forward_inline():
    bd = gboundary("g4")
    text = ("FYI, see below.\n\n---------- Forwarded message ---------\n"
            f"From: Bob Real <{BOB}>\nDate: Tue, 4 Mar 2025 at 09:02\nSubject: Chipped mug\n"
            f"To: Alice Real <{ALICE}>\n\n\n" + BOB_TEXT)
    html = ('<div dir="ltr">FYI, see below.<br><br><div class="gmail_quote gmail_quote_container"><div dir="ltr" '
            'class="gmail_attr">---------- Forwarded message ---------<br>From: <strong class="gmail_sendername" '
            f'dir="auto">Bob Real</strong> <span dir="auto">&lt;<a href="mailto:{BOB}">bob.real@recipient.<wbr>example</a>&gt;</span><br>'
            'Date: Tue, 4 Mar 2025 at 09:02<br>Subject: Chipped mug<br>To: Alice Real &lt;<a href="mailto:'
            f'{ALICE}">alice.real@<wbr>sender.example</a>&gt;<br></div><br><br>' + html_quote(BOB_TEXT) + "</div></div>\n")
    return (gmail_top("g4", "Fwd: Chipped mug", cc="carol@third.example", boundary=bd)
            + f"\n--{bd}\nContent-Type: text/plain; charset=\"UTF-8\"\n\n{text}\n"
            + f"--{bd}\nContent-Type: text/html; charset=\"UTF-8\"\n\n{html}\n--{bd}--\n")


@eml("gmail", "Gmail with a PDF attachment (multipart/mixed > alternative + application/pdf; no address inside: byte-identical)")
def gmail_pdf_attachment():
    outer, alt = gboundary("g5o"), gboundary("g5a")
    pdf = make_pdf("Invoice 2025-0412")
    return (gmail_top("g5", "Invoice for order 2025-0412", boundary=outer, ctype="multipart/mixed")
            + f"\n--{outer}\nContent-Type: multipart/alternative; boundary=\"{alt}\"\n\n"
            + f"--{alt}\nContent-Type: text/plain; charset=\"UTF-8\"\n\nInvoice attached.\n\nAlice\n\n"
            + f"--{alt}\nContent-Type: text/html; charset=\"UTF-8\"\n\n<div dir=\"ltr\">Invoice attached.<div><br></div><div>Alice</div></div>\n\n--{alt}--\n"
            + f"--{outer}\nContent-Type: application/pdf; name=\"invoice-2025-0412.pdf\"\n"
            + "Content-Disposition: attachment; filename=\"invoice-2025-0412.pdf\"\nContent-Transfer-Encoding: base64\n"
            + f"Content-ID: <f_m7u2q1xz0>\nX-Attachment-Id: f_m7u2q1xz0\n\n{b64(pdf)}--{outer}--\n")


def ics_event(seed: str, method: str, organizer: str, attendees: list[str], *, fold_organizer: bool = False,
              prodid: str = "-//Google Inc//Google Calendar 70.9054//EN") -> str:
    org_line = f"ORGANIZER;CN=Alice Real:mailto:{organizer}"
    if fold_organizer:
        # RFC 5545 folds at 75 octets; Outlook folds wherever that falls, here inside the address.
        org_line = org_line[:40] + "\n " + org_line[40:]
    lines = [
        "BEGIN:VCALENDAR", f"PRODID:{prodid}", "VERSION:2.0", "CALSCALE:GREGORIAN", f"METHOD:{method}",
        "BEGIN:VEVENT", "DTSTART:20250310T150000Z", "DTEND:20250310T153000Z", "DTSTAMP:20250304T101406Z",
        org_line, f"UID:{tok(seed, 26, ALNUM)}@sender.example",
    ]
    for a in attendees:
        lines.append(f"ATTENDEE;CUTYPE=INDIVIDUAL;ROLE=REQ-PARTICIPANT;PARTSTAT=NEEDS-ACTION;RSVP=\n TRUE;CN={a[0]};X-NUM-GUESTS=0:mailto:{a[1]}")
    lines += [
        "X-MICROSOFT-CDO-OWNERAPPTID:-1543289218", "CREATED:20250304T101405Z",
        "DESCRIPTION:Call about the replacement mug.\\n\\nQuestions? Write to " + organizer,
        "LAST-MODIFIED:20250304T101405Z", "LOCATION:", "SEQUENCE:0", "STATUS:CONFIRMED",
        "SUMMARY:Call about the replacement mug", "TRANSP:OPAQUE",
        "BEGIN:VALARM", "ACTION:DISPLAY", "DESCRIPTION:This is an event reminder", "TRIGGER:-P0DT0H10M0S", "END:VALARM",
        "END:VEVENT", "END:VCALENDAR",
    ]
    return "\n".join(lines) + "\n"


@eml("icalendar", "Gmail calendar invite: text/calendar method=REQUEST inside alternative plus invite.ics attachment (base64), ORGANIZER/ATTENDEE mailto: and address in DESCRIPTION")
def gmail_calendar_invite():
    outer, alt = gboundary("g6o"), gboundary("g6a")
    ics = ics_event("g6", "REQUEST", ALICE, [("Bob Real", BOB), ("Alice Real", ALICE)])
    text = ("Call about the replacement mug\nMonday 10 March 2025 · 4:00 – 4:30pm\nCentral European Time - Paris\n\n"
            f"Organizer\nAlice Real\n{ALICE}\n\nGuests\nBob Real\n{BOB}\n\nInvitation from Google Calendar\n")
    html = (f'<div><p>Call about the replacement mug</p><p>Organizer: Alice Real <a href="mailto:{ALICE}">{ALICE}</a></p>'
            f'<p>Guests: <a href="mailto:{BOB}">Bob Real</a></p></div>\n')
    return (gmail_top("g6", "Invitation: Call about the replacement mug @ Mon 10 Mar 2025 4pm - 4:30pm (CET) (Bob Real)",
                      boundary=outer, ctype="multipart/mixed").replace("Subject: Invitation: Call about the replacement mug @ Mon 10 Mar 2025 4pm - 4:30pm (CET) (Bob Real)",
                                                                       "Subject: Invitation: Call about the replacement mug @ Mon 10 Mar 2025 4pm -\n 4:30pm (CET) (Bob Real)")
            + f"\n--{outer}\nContent-Type: multipart/alternative; boundary=\"{alt}\"\n\n"
            + f"--{alt}\nContent-Type: text/plain; charset=\"UTF-8\"; format=flowed; delsp=yes\nContent-Transfer-Encoding: base64\n\n{b64text(text)}\n"
            + f"--{alt}\nContent-Type: text/html; charset=\"UTF-8\"\nContent-Transfer-Encoding: quoted-printable\n\n{qp(html)}\n"
            + f"--{alt}\nContent-Type: text/calendar; charset=\"UTF-8\"; method=REQUEST\nContent-Transfer-Encoding: 7bit\n\n{ics}\n--{alt}--\n"
            + f"--{outer}\nContent-Type: application/ics; name=\"invite.ics\"\nContent-Disposition: attachment; filename=\"invite.ics\"\n"
            + f"Content-Transfer-Encoding: base64\n\n{b64text(ics)}--{outer}--\n")


# ================================================================= outlook

OUTLOOK_DIVIDER = ("________________________________\n"
                   f"From: Bob Real <{BOB}>\nSent: Tuesday, March 4, 2025 9:02 AM\n"
                   f"To: Alice Real <{ALICE}>\nSubject: Chipped mug\n\n")


def outlook_html(body_html: str, quoted_html: str = "") -> str:
    return (
        '<html xmlns:v="urn:schemas-microsoft-com:vml" xmlns:o="urn:schemas-microsoft-com:office:office" '
        'xmlns:w="urn:schemas-microsoft-com:office:word" xmlns:m="http://schemas.microsoft.com/office/2004/12/omml" '
        'xmlns="http://www.w3.org/TR/REC-html40">\n<head>\n<meta http-equiv="Content-Type" content="text/html; charset=us-ascii">\n'
        '<meta name="Generator" content="Microsoft Word 15 (filtered medium)">\n<style><!--\n'
        '/* Font Definitions */\n@font-face\n\t{font-family:"Cambria Math";\n\tpanose-1:2 4 5 3 5 4 6 3 2 4;}\n'
        'p.MsoNormal, li.MsoNormal, div.MsoNormal\n\t{margin:0cm;\n\tfont-size:11.0pt;\n\tfont-family:"Calibri",sans-serif;}\n'
        'a:link, span.MsoHyperlink\n\t{mso-style-priority:99;\n\tcolor:#0563C1;\n\ttext-decoration:underline;}\n'
        '--></style>\n</head>\n<body lang="EN-GB" link="#0563C1" vlink="#954F72" style="word-wrap:break-word">\n'
        '<div class="WordSection1">\n' + body_html + quoted_html + "</div>\n</body>\n</html>\n"
    )


@eml("outlook", "Outlook/Exchange multipart/alternative: Thread-Index, X-MS-Exchange-*, x-originating-ip, ARC-*, Authentication-Results, DKIM i=alice..., MsoNormal HTML with mailto signature")
def outlook_alternative():
    bd = obound("o1")
    text = (f"Hello Bob,\n\nThe replacement is on its way.\n\nKind regards,\nAlice Real\nReal Ceramics | {ALICE}\n")
    html = outlook_html(
        '<p class="MsoNormal">Hello Bob,<o:p></o:p></p>\n<p class="MsoNormal"><o:p>&nbsp;</o:p></p>\n'
        '<p class="MsoNormal">The replacement is on its way.<o:p></o:p></p>\n<p class="MsoNormal"><o:p>&nbsp;</o:p></p>\n'
        '<p class="MsoNormal">Kind regards,<o:p></o:p></p>\n<p class="MsoNormal">Alice Real<o:p></o:p></p>\n'
        f'<p class="MsoNormal">Real Ceramics | <a href="mailto:{ALICE}">{ALICE}</a><o:p></o:p></p>\n')
    return (outlook_top("o1", "Replacement shipped", ctype=f'multipart/alternative;\n\tboundary="{bd}"')
            + f"\n--{bd}\nContent-Type: text/plain; charset=\"us-ascii\"\nContent-Transfer-Encoding: quoted-printable\n\n{qp(text)}\n"
            + f"--{bd}\nContent-Type: text/html; charset=\"us-ascii\"\nContent-Transfer-Encoding: quoted-printable\n\n{qp(html)}\n--{bd}--\n")


@eml("reply-quoted", "Outlook reply: '________________________________ From: Bob Real <bob.real@...> Sent: ...' header block in text and HTML (mailto), In-Reply-To/References")
def outlook_reply_quoted():
    bd = obound("o2")
    text = "Hi Bob,\n\nNo problem at all, a new one goes out today.\n\nAlice\n\n" + OUTLOOK_DIVIDER + BOB_TEXT
    quoted = ('<div id="appendonsend"></div>\n<hr style="display:inline-block;width:98%" tabindex="-1">\n'
              '<div id="divRplyFwdMsg" dir="ltr"><font face="Calibri, sans-serif" style="font-size:11pt" color="#000000">'
              f'<b>From:</b> Bob Real &lt;<a href="mailto:{BOB}">{BOB}</a>&gt;<br>\n<b>Sent:</b> Tuesday, March 4, 2025 9:02 AM<br>\n'
              f'<b>To:</b> Alice Real &lt;{ALICE}&gt;<br>\n<b>Subject:</b> Chipped mug</font>\n<div>&nbsp;</div>\n</div>\n'
              '<div><p class="MsoNormal">' + html_quote(BOB_TEXT) + "</p></div>\n")
    html = outlook_html('<p class="MsoNormal">Hi Bob,</p>\n<p class="MsoNormal">No problem at all, a new one goes out today.</p>\n'
                        '<p class="MsoNormal">Alice</p>\n', quoted)
    return (outlook_top("o2", "RE: Chipped mug", thread_topic="Chipped mug", refs=RELAY_REF,
                        ctype=f'multipart/alternative;\n\tboundary="{bd}"')
            + f"\n--{bd}\nContent-Type: text/plain; charset=\"us-ascii\"\nContent-Transfer-Encoding: quoted-printable\n\n{qp(text)}\n"
            + f"--{bd}\nContent-Type: text/html; charset=\"us-ascii\"\nContent-Transfer-Encoding: quoted-printable\n\n{qp(html)}\n--{bd}--\n")


@eml("outlook", "Outlook rich text (TNEF): application/ms-tnef winmail.dat whose MAPI props name alice in ASCII and UTF-16, X-MS-TNEF-Correlator; the winmail.dat cannot be rewritten", expect="strip")
def outlook_winmail_tnef():
    bd = obound("o3")
    corr = f"<DB9PR07MB7{tok('o3c', 26, UPPERHEX)}@DB9PR07MB7{tok('o3h', 4, UPPERHEX)}.eurprd07.prod.sender.example>"
    body = "Hello Bob,\r\n\r\nPlease find the care instructions attached.\r\n\r\nAlice Real\r\n" + ALICE + "\r\n"
    dat = tnef("Care instructions", body, "care.txt", b"Hand wash only. Not for the microwave.\r\n")
    text = "Hello Bob,\n\nPlease find the care instructions attached.\n\nAlice Real\n"
    return (outlook_top("o3", "Care instructions", has_attach=True, tnef_corr=corr,
                        ctype=f'multipart/mixed;\n\tboundary="{bd}"')
            + f"\n--{bd}\nContent-Type: text/plain; charset=\"us-ascii\"\nContent-Transfer-Encoding: quoted-printable\n\n{qp(text)}\n"
            + f"--{bd}\nContent-Type: application/ms-tnef; name=\"winmail.dat\"\nContent-Description: winmail.dat\n"
            + f"Content-Disposition: attachment; filename=\"winmail.dat\"; size={len(dat)};\n"
            + "\tcreation-date=\"Tue, 04 Mar 2025 10:14:07 GMT\";\n\tmodification-date=\"Tue, 04 Mar 2025 10:14:07 GMT\"\n"
            + f"Content-Transfer-Encoding: base64\n\n{b64(dat)}\n--{bd}--\n")


@eml("icalendar", "Outlook meeting request: text/calendar method=REQUEST base64, ORGANIZER line folded inside the address (RFC 5545 folding), ATTENDEE mailto: Bob")
def outlook_meeting_request():
    bd = obound("o4")
    ics = ics_event("o4", "REQUEST", ALICE, [("Bob Real", BOB)], fold_organizer=True,
                    prodid="Microsoft Exchange Server 2010")
    text = "Let us talk about the replacement on Monday.\n"
    html = outlook_html('<p class="MsoNormal">Let us talk about the replacement on Monday.</p>\n')
    return (outlook_top("o4", "Call about the replacement mug",
                        ctype=f'multipart/alternative;\n\tboundary="{bd}"',
                        extra="X-MS-Exchange-Calendar-Series-Instance-Id: BAAAAJ" + tok("o4s", 40, ALNUM) + "\n")
            + f"\n--{bd}\nContent-Type: text/plain; charset=\"us-ascii\"\n\n{text}\n"
            + f"--{bd}\nContent-Type: text/html; charset=\"us-ascii\"\n\n{html}\n"
            + f"--{bd}\nContent-Type: text/calendar; charset=\"utf-8\"; method=REQUEST\nContent-Transfer-Encoding: base64\n\n{b64text(ics)}\n--{bd}--\n")


@eml("address-headers", "Outlook with read receipts requested: Disposition-Notification-To and Return-Receipt-To name alice (an RFC 8098 receipt would go real to real)")
def outlook_read_receipt():
    bd = obound("o5")
    text = "Bob,\n\nplease confirm you received the tracking number 1Z999AA10123456784.\n\nAlice\n"
    extra = (f"Disposition-Notification-To: \"Alice Real\" <{ALICE}>\n"
             f"Return-Receipt-To: <{ALICE}>\n"
             "X-Priority: 1\nImportance: high\n")
    return (outlook_top("o5", "Tracking number", ctype=f'multipart/alternative;\n\tboundary="{bd}"', extra=extra)
            + f"\n--{bd}\nContent-Type: text/plain; charset=\"us-ascii\"\n\n{text}\n"
            + f"--{bd}\nContent-Type: text/html; charset=\"us-ascii\"\n\n"
            + outlook_html('<p class="MsoNormal">Bob,</p>\n<p class="MsoNormal">please confirm you received the tracking number 1Z999AA10123456784.</p>\n<p class="MsoNormal">Alice</p>\n')
            + f"\n--{bd}--\n")


@eml("outlook", "Outlook HTML with inline signature logo in multipart/related (Content-ID image001.png@01DB8CF3...) and a .docx-style attachment name without address")
def outlook_related_logo():
    rel, alt, mixed = obound("o6r"), obound("o6a"), obound("o6m")
    png = make_png("o6logo", 24, 8)
    pdf = make_pdf("Price list 2025")
    cid = "image001.png@01DB8CF3.5E2A6B10"
    text = f"Hi Bob,\n\nour new price list is attached.\n\nAlice Real\n[cid:{cid}]\n{ALICE}\n"
    html = outlook_html('<p class="MsoNormal">Hi Bob,</p>\n<p class="MsoNormal">our new price list is attached.</p>\n'
                        f'<p class="MsoNormal">Alice Real<br><img width="24" height="8" src="cid:{cid}" alt="logo"><br>'
                        f'<a href="mailto:{ALICE}"><span style="color:#0563C1">{ALICE}</span></a></p>\n')
    return (outlook_top("o6", "Price list", has_attach=True, ctype=f'multipart/mixed;\n\tboundary="{mixed}"')
            + f"\n--{mixed}\nContent-Type: multipart/related;\n\tboundary=\"{rel}\";\n\ttype=\"multipart/alternative\"\n\n"
            + f"--{rel}\nContent-Type: multipart/alternative;\n\tboundary=\"{alt}\"\n\n"
            + f"--{alt}\nContent-Type: text/plain; charset=\"us-ascii\"\nContent-Transfer-Encoding: quoted-printable\n\n{qp(text)}\n"
            + f"--{alt}\nContent-Type: text/html; charset=\"us-ascii\"\nContent-Transfer-Encoding: quoted-printable\n\n{qp(html)}\n--{alt}--\n\n"
            + f"--{rel}\nContent-Type: image/png; name=\"image001.png\"\nContent-Description: image001.png\n"
            + f"Content-Disposition: inline; filename=\"image001.png\"; size={len(png)};\n\tcreation-date=\"Tue, 04 Mar 2025 10:14:07 GMT\";\n"
            + f"\tmodification-date=\"Tue, 04 Mar 2025 10:14:07 GMT\"\nContent-ID: <{cid}>\nContent-Transfer-Encoding: base64\n\n{b64(png)}\n--{rel}--\n\n"
            + f"--{mixed}\nContent-Type: application/pdf; name=\"Price list 2025.pdf\"\nContent-Description: Price list 2025.pdf\n"
            + f"Content-Disposition: attachment; filename=\"Price list 2025.pdf\"; size={len(pdf)};\n"
            + "\tcreation-date=\"Tue, 04 Mar 2025 10:12:31 GMT\";\n\tmodification-date=\"Tue, 04 Mar 2025 10:14:07 GMT\"\n"
            + f"Content-Transfer-Encoding: base64\n\n{b64(pdf)}\n--{mixed}--\n")


# =================================================================== apple

@eml("apple-mail", "Apple Mail plain text, 7bit us-ascii, Message-Id <UUID@sender.example>, Return-Path with her address, signature")
def apple_plain():
    body = f"Hi Bob,\n\nThe mugs are packed and will ship tomorrow morning.\n\nAlice\n\n{ALICE}\n"
    return apple_top("a1", "Packing update", ctype="text/plain;\n\tcharset=us-ascii", cte="7bit") + "\n" + body


@eml("reply-quoted", "Apple Mail reply: multipart/alternative QP; '> On 4 Mar 2025, at 09:02, Bob Real <bob.real@...> wrote:' and <blockquote type=\"cite\"> with mailto")
def apple_reply_quoted():
    bd = aboundary("a2")
    attribution = f"On 4 Mar 2025, at 09:02, Bob Real <{BOB}> wrote:"
    text = "Hi Bob,\n\nOf course, a replacement is on the way.\n\nAlice\n\n> " + attribution + "\n> \n" + quote(BOB_TEXT) + "\n"
    html = ('<html><head><meta http-equiv="content-type" content="text/html; charset=utf-8"></head><body style="overflow-wrap: '
            'break-word; -webkit-nbsp-mode: space; line-break: after-white-space;">Hi Bob,<div><br></div><div>Of course, a '
            'replacement is on the way.</div><div><br></div><div>Alice<br id="lineBreakAtBeginningOfMessage"><div><br>'
            f'<blockquote type="cite"><div>On 4 Mar 2025, at 09:02, Bob Real &lt;{BOB}&gt; wrote:</div><br '
            'class="Apple-interchange-newline"><div><div>' + html_quote(BOB_TEXT) + "</div></div></blockquote></div><br></div></body></html>")
    return (apple_top("a2", "Re: Chipped mug", ctype=f'multipart/alternative;\n\tboundary="{bd}"', refs=RELAY_REF)
            + f"\n\n--{bd}\nContent-Transfer-Encoding: quoted-printable\nContent-Type: text/plain;\n\tcharset=utf-8\n\n{qp(text)}\n"
            + f"--{bd}\nContent-Transfer-Encoding: quoted-printable\nContent-Type: text/html;\n\tcharset=utf-8\n\n{qp(html)}\n--{bd}--\n")


@eml("multipart-related", "Apple Mail HTML with inline photo: alternative > related, Content-ID <UUID> (no domain), image/png base64, Apple-Mail boundaries")
def apple_inline_photo():
    alt, rel = aboundary("a3a"), aboundary("a3r")
    png = make_png("a3photo", 32, 32)
    cid = f"{tok('a3c', 8, UPPERHEX)}-{tok('a3c1', 4, UPPERHEX)}-{tok('a3c2', 4, UPPERHEX)}-{tok('a3c3', 4, UPPERHEX)}-{tok('a3c4', 12, UPPERHEX)}"
    text = "Hi Bob,\n\nthis is the new glaze.\n\n\n\nAlice\n"
    html = ('<html><head><meta http-equiv="content-type" content="text/html; charset=us-ascii"></head><body style="overflow-wrap: '
            'break-word; -webkit-nbsp-mode: space; line-break: after-white-space;">Hi Bob,<div><br></div><div>this is the new glaze.'
            f'</div><div><br></div><div><img apple-inline="yes" id="{tok("a3i", 8, UPPERHEX)}" src="cid:{cid}"></div><div><br></div>'
            '<div>Alice</div></body></html>')
    return (apple_top("a3", "New glaze", ctype=f'multipart/alternative;\n\tboundary="{alt}"')
            + f"\n\n--{alt}\nContent-Transfer-Encoding: 7bit\nContent-Type: text/plain;\n\tcharset=us-ascii\n\n{text}\n"
            + f"--{alt}\nContent-Type: multipart/related;\n\ttype=\"text/html\";\n\tboundary=\"{rel}\"\n\n\n"
            + f"--{rel}\nContent-Transfer-Encoding: 7bit\nContent-Type: text/html;\n\tcharset=us-ascii\n\n{html}\n"
            + f"--{rel}\nContent-Transfer-Encoding: base64\nContent-Disposition: inline;\n\tfilename=glaze.png\n"
            + f"Content-Type: image/png;\n\tx-unix-mode=0644;\n\tname=\"glaze.png\"\nContent-Id: <{cid}>\n\n{b64(png)}\n--{rel}--\n\n--{alt}--\n")


@eml("vcard", "Apple Mail with her contact card: text/vcard attachment 'Alice Real.vcf' base64, EMAIL;type=INTERNET;type=pref:alice... (a second sender.example address too)")
def apple_vcard():
    bd = aboundary("a4")
    vcf = vcard_apple()
    return (apple_top("a4", "My contact details", ctype=f'multipart/mixed;\n\tboundary="{bd}"')
            + f"\n\n--{bd}\nContent-Transfer-Encoding: 7bit\nContent-Type: text/plain;\n\tcharset=us-ascii\n\nHi Bob, my card is attached.\n\nAlice\n\n"
            + f"--{bd}\nContent-Disposition: attachment;\n\tfilename=\"Alice Real.vcf\"\nContent-Type: text/vcard;\n\tname=\"Alice Real.vcf\"\n"
            + f"Content-Transfer-Encoding: base64\n\n{b64text(vcf)}\n--{bd}--\n")


@eml("smime", "Apple Mail S/MIME signed: multipart/signed protocol=application/pkcs7-signature, smime.p7s whose certificate has subjectAltName email:alice...", expect="strip")
def apple_smime_signed():
    bd = aboundary("a5")
    return (apple_top("a5", "Signed: order confirmation",
                      ctype=f'multipart/signed;\n\tboundary="{bd}";\n\tprotocol="application/pkcs7-signature";\n\tmicalg=sha-256')
            + f"\n\n--{bd}\n{SMIME_SIGNED_PART}\n--{bd}\nContent-Disposition: attachment;\n\tfilename=smime.p7s\n"
            + "Content-Type: application/pkcs7-signature;\n\tname=smime.p7s\nContent-Transfer-Encoding: base64\n\n"
            + SMIME_SIGNATURE_B64 + f"\n--{bd}--\n")


SMIME_SIGNED_PART = ("Content-Transfer-Encoding: 7bit\nContent-Type: text/plain;\n\tcharset=us-ascii\n\n"
                     "Hi Bob,\n\nthis confirms your order 2025-0412 (one blue mug).\n\nAlice Real\n")


# ============================================================= thunderbird

@eml("thunderbird", "Thunderbird with Autocrypt: addr=alice...; keydata= (OpenPGP key whose user id is the address), format=flowed")
def thunderbird_autocrypt():
    keydata = "\n ".join(PGP_KEYDATA_B64[i:i + 76] for i in range(0, len(PGP_KEYDATA_B64), 76))
    extra = f"Autocrypt: addr={ALICE}; keydata=\n {keydata}\n"
    body = ("Hi Bob,\n\nthe replacement mug went out this morning, you should have it by Friday. \n"
            "Let me know if anything else is wrong with the order.\n\nCheers,\nAlice\n")
    return tb_top("t1", "Replacement sent", ctype="text/plain; charset=UTF-8; format=flowed", cte="7bit", extra=extra) + "\n" + body


@eml("pgp", "Thunderbird PGP/MIME signed with her public key attached (application/pgp-keys OpenPGP_0x...asc) and signature.asc; Autocrypt header", expect="strip")
def thunderbird_pgp_mime():
    bd = tboundary("t2")
    extra = (f"Autocrypt: addr={ALICE}; keydata=\n "
             + "\n ".join(PGP_KEYDATA_B64[i:i + 76] for i in range(0, len(PGP_KEYDATA_B64), 76)) + "\n")
    return (tb_top("t2", "Signed: replacement", extra=extra,
                   ctype=f'multipart/signed; micalg=pgp-sha256;\n protocol="application/pgp-signature";\n boundary="{bd}"')
            + "\nThis is an OpenPGP/MIME signed message (RFC 4880 and 3156)\n"
            + f"--{bd}\n{PGP_MIME_SIGNED_PART}\n--{bd}\nContent-Type: application/pgp-signature; name=\"OpenPGP_signature.asc\"\n"
            + "Content-Description: OpenPGP digital signature\nContent-Disposition: attachment; filename=\"OpenPGP_signature.asc\"\n\n"
            + PGP_MIME_SIGNATURE + f"\n--{bd}--\n")


PGP_INNER_BOUNDARY = "------------" + tok("t2inner", 24, ALNUM)
PGP_MIME_SIGNED_PART = (
    f"Content-Type: multipart/mixed; boundary=\"{PGP_INNER_BOUNDARY}\";\n protected-headers=\"v1\"\n"
    f"Message-ID: <{tok('t2a', 8)}-{tok('t2b', 4)}-{tok('t2c', 4)}-{tok('t2d', 4)}-{tok('t2e', 12)}@sender.example>\n"
    "Date: Tue, 4 Mar 2025 11:14:06 +0100\nMIME-Version: 1.0\nUser-Agent: Mozilla Thunderbird\n"
    f"To: Bob Real <{ALIAS}>\nFrom: Alice Real <{ALICE}>\nSubject: Signed: replacement\n\n"
    f"--{PGP_INNER_BOUNDARY}\nContent-Type: text/plain; charset=UTF-8; format=flowed\nContent-Transfer-Encoding: base64\n\n"
    + b64text("Hi Bob,\n\nthis message is signed; my key is attached.\n\nAlice\n")
    + f"\n--{PGP_INNER_BOUNDARY}\nContent-Type: application/pgp-keys; name=\"OpenPGP_0x{PGP_FPR[-16:]}.asc\"\n"
    f"Content-Disposition: attachment; filename=\"OpenPGP_0x{PGP_FPR[-16:]}.asc\"\n"
    "Content-Description: OpenPGP public key\nContent-Transfer-Encoding: quoted-printable\n\n"
    "@@PGP_PUBLIC_KEY_QP@@"
    f"\n--{PGP_INNER_BOUNDARY}--\n"
)


@eml("pgp", "Inline PGP clear-signed text with her public key block pasted below the signature (the armoured key holds the address in binary)", expect="strip")
def thunderbird_pgp_inline():
    body = PGP_CLEARSIGNED + "\n" + PGP_PUBLIC_KEY
    return tb_top("t3", "Inline signed", ctype="text/plain; charset=UTF-8", cte="7bit") + "\n" + body


@eml("reply-quoted", "Thunderbird reply, format=flowed: 'On 04/03/2025 09:02, Bob Real wrote:' plus deeper history with both parties' addresses in older attribution lines")
def thunderbird_reply_history():
    older = (f"On 03/03/2025 18:40, Alice Real wrote:\n> Hi Bob, the mug shipped today.\n>\n"
             f"> On 03/03/2025 12:01, Bob Real <{BOB}> wrote:\n>> When will my order ship?\n")
    body = ("Hi Bob,\n\nthe replacement ships tomorrow. \nSorry again for the trouble.\n\nAlice\n\n"
            "On 04/03/2025 09:02, Bob Real wrote:\n" + quote(BOB_TEXT) + ">\n" + quote(older))
    return tb_top("t4", "Re: Chipped mug", ctype="text/plain; charset=UTF-8; format=flowed", cte="7bit",
                  refs=f"{OWN_REF} {RELAY_REF}") + "\n" + body


@eml("multipart-related", "Thunderbird HTML with pasted image: multipart/related, Content-ID <part1.XXXX.YYYY@sender.example> (her domain in a part header) and cid: reference")
def thunderbird_related_cid():
    alt, rel = tboundary("t5a"), tboundary("t5r")
    png = make_png("t5img", 20, 20)
    cid = f"part1.{tok('t5c', 8, ALNUM)}.{tok('t5d', 8, ALNUM)}@sender.example"
    html = ('<!DOCTYPE html>\n<html>\n  <head>\n    <meta http-equiv="content-type" content="text/html; charset=UTF-8">\n'
            '  </head>\n  <body>\n    <p>Hi Bob,</p>\n    <p>the chip you describe looks like this one?</p>\n'
            f'    <p><img src="cid:{cid}" alt="" width="20" height="20"></p>\n    <p>Alice<br>\n    </p>\n  </body>\n</html>\n')
    text = "Hi Bob,\n\nthe chip you describe looks like this one?\n\nAlice\n"
    return (tb_top("t5", "Which chip?", ctype=f'multipart/alternative;\n boundary="{alt}"')
            + f"\nThis is a multi-part message in MIME format.\n--{alt}\nContent-Type: text/plain; charset=UTF-8; format=flowed\nContent-Transfer-Encoding: 7bit\n\n{text}\n"
            + f"--{alt}\nContent-Type: multipart/related;\n boundary=\"{rel}\"\n\n\n--{rel}\nContent-Type: text/html; charset=UTF-8\nContent-Transfer-Encoding: 7bit\n\n{html}\n"
            + f"--{rel}\nContent-Type: image/png; name=\"chip.png\"\nContent-Disposition: inline; filename=\"chip.png\"\n"
            + f"Content-Id: <{cid}>\nContent-Transfer-Encoding: base64\n\n{b64(png)}\n--{rel}--\n\n--{alt}--\n")


@eml("rfc2231", "Thunderbird attachment whose name is her address: filename*=utf-8''alice.real%40sender.example.pdf and name*= (PDF body holds no address)")
def thunderbird_rfc2231_filename():
    bd = tboundary("t6")
    pdf = make_pdf("Statement")
    return (tb_top("t6", "Statement", ctype=f'multipart/mixed; boundary="{bd}"')
            + f"\nThis is a multi-part message in MIME format.\n--{bd}\nContent-Type: text/plain; charset=UTF-8; format=flowed\nContent-Transfer-Encoding: 7bit\n\n"
            + "Statement attached.\n\nAlice\n\n"
            + f"--{bd}\nContent-Type: application/pdf;\n name*=utf-8''alice.real%40sender.example.pdf\n"
            + "Content-Disposition: attachment;\n filename*=utf-8''alice.real%40sender.example.pdf\n"
            + f"Content-Transfer-Encoding: base64\n\n{b64(pdf)}\n--{bd}--\n")


@eml("rfc2231", "RFC 2231 continuations splitting her address across filename*0*/filename*1* segments, with a non-ASCII character (Thunderbird's encoding of long names)")
def thunderbird_rfc2231_continuation():
    bd = tboundary("t7")
    pdf = make_pdf("Reçu")
    return (tb_top("t7", "Receipt", ctype=f'multipart/mixed; boundary="{bd}"')
            + f"\nThis is a multi-part message in MIME format.\n--{bd}\nContent-Type: text/plain; charset=UTF-8; format=flowed\nContent-Transfer-Encoding: 7bit\n\n"
            + "Receipt attached.\n\nAlice\n\n"
            + f"--{bd}\nContent-Type: application/pdf;\n name*0*=utf-8''Re%C3%A7u%20pour%20alice.real;\n name*1*=%40sender.example.pdf\n"
            + "Content-Disposition: attachment;\n filename*0*=utf-8''Re%C3%A7u%20pour%20alice.real;\n filename*1*=%40sender.example.pdf\n"
            + f"Content-Transfer-Encoding: base64\n\n{b64(pdf)}\n--{bd}--\n")


@eml("forward-rfc822", "Thunderbird forward as attachment: message/rfc822 holding Bob's original to her, with its own Received/DKIM/Message-ID (recipient.example) and her address in To; inner Delivered-To alice")
def thunderbird_forward_rfc822():
    bd = tboundary("t8")
    inner = (
        f"Return-Path: <{BOB}>\nDelivered-To: {ALICE}\n"
        "Received: from mx.sender.example\n\tby mailbox.sender.example with LMTP\n\tid 0AbCdEf1a2b3c4d5e6f7 (envelope-from <bob.real@recipient.example>)\n"
        f"\tfor <{ALICE}>; Tue, 04 Mar 2025 09:02:11 +0100\n"
        "Received: from mail.recipient.example (mail.recipient.example [192.0.2.25])\n\tby mx.sender.example (Postfix) with ESMTPS id 4Z6FzX1q2Bz9sQm\n"
        f"\tfor <{ALICE}>; Tue,  4 Mar 2025 09:02:11 +0100 (CET)\n"
        + dkim("recipient.example", "s1", "t8inner", "from:to:subject:date:message-id")
        + f"Message-ID: <20250304080210.GA12345@recipient.example>\nDate: Tue, 4 Mar 2025 09:02:10 +0100\n"
        f"From: Bob Real <{BOB}>\nTo: Alice Real <{ALICE}>\nSubject: Chipped mug\n"
        "MIME-Version: 1.0\nContent-Type: text/plain; charset=us-ascii\nContent-Disposition: inline\n\n" + BOB_TEXT
    )
    return (tb_top("t8", "Fwd: Chipped mug", ctype=f'multipart/mixed; boundary="{bd}"', to="carol@third.example",
                   cc=f"Bob Real <{ALIAS}>")
            + f"\nThis is a multi-part message in MIME format.\n--{bd}\nContent-Type: text/plain; charset=UTF-8; format=flowed\nContent-Transfer-Encoding: 7bit\n\n"
            + "Carol, Bob, see the original complaint attached.\n\nAlice\n\n"
            + f"--{bd}\nContent-Type: message/rfc822; name=\"Chipped mug.eml\"\nContent-Disposition: attachment; filename=\"Chipped mug.eml\"\n\n{inner}\n--{bd}--\n")


# ================================================================== mobile

@eml("mobile", "iPhone Mail plain text, quoted-printable utf-8 (curly quotes), 'Sent from my iPhone', X-Mailer: iPhone Mail")
def ios_plain():
    body = "Hi Bob,\n\nI’ll ship the replacement on Thursday — it’s packed.\n\nSent from my iPhone\n"
    return (apple_top("m1", "Replacement", ctype="text/plain;\n\tcharset=utf-8", cte="quoted-printable",
                      mailer="iPhone Mail (22D72)", mime="Mime-Version: 1.0 (1.0)")
            + "\n" + qp(body))


@eml("mobile", "iPhone Mail reply: alternative with base64 HTML, '> On 4 Mar 2025, at 09:02, Bob Real <bob.real@...> wrote:' (HTML: blockquote, mailto with %40)")
def ios_reply_base64():
    bd = "Apple-Mail-" + tok("m2", 8, UPPERHEX) + "-" + tok("m2a", 4, UPPERHEX) + "-" + tok("m2b", 4, UPPERHEX) + "-" + tok("m2c", 4, UPPERHEX) + "-" + tok("m2d", 12, UPPERHEX)
    text = (f"Will do!\n\nSent from my iPhone\n\n> On 4 Mar 2025, at 09:02, Bob Real <{BOB}> wrote:\n> \n> " + "\n> ".join(BOB_TEXT.rstrip().split("\n")) + "\n")
    html = ('<html><head><meta http-equiv="content-type" content="text/html; charset=utf-8"></head><body dir="auto">Will do!'
            '<div><br id="lineBreakAtBeginningOfSignature"><div dir="ltr">Sent from my iPhone</div><div dir="ltr"><br>'
            '<blockquote type="cite">On 4 Mar 2025, at 09:02, Bob Real &lt;<a href="mailto:bob.real%40recipient.example">'
            f'{BOB}</a>&gt; wrote:<br><br></blockquote></div><blockquote type="cite"><div dir="ltr">'
            + html_quote(BOB_TEXT) + "</div></blockquote></div></body></html>")
    return (apple_top("m2", "Re: Chipped mug", ctype=f'multipart/alternative; boundary={bd}', cte="7bit", refs=RELAY_REF,
                      mailer="iPhone Mail (22D72)", mime="Mime-Version: 1.0 (1.0)")
            + f"\n\n--{bd}\nContent-Type: text/plain;\n\tcharset=utf-8\nContent-Transfer-Encoding: quoted-printable\n\n{qp(text)}\n"
            + f"--{bd}\nContent-Type: text/html;\n\tcharset=utf-8\nContent-Transfer-Encoding: base64\n\n{b64text(html)}--{bd}--\n")


@eml("mobile", "Outlook for iOS: alternative with 'Get Outlook for iOS<https://aka.ms/o0ukef>', Thread-Index, x-originating-ip, divider with both addresses")
def outlook_ios():
    bd = obound("m3")
    text = ("Thanks Bob, on it.\n\nGet Outlook for iOS<https://aka.ms/o0ukef>\n" + OUTLOOK_DIVIDER + BOB_TEXT)
    html = ('<html><head><meta http-equiv="Content-Type" content="text/html; charset=us-ascii"></head><body><div dir="ltr">'
            'Thanks Bob, on it.</div><div dir="ltr"><br></div><div id="ms-outlook-mobile-signature"><div dir="ltr">Get '
            '<a href="https://aka.ms/o0ukef">Outlook for iOS</a></div></div><hr style="display:inline-block;width:98%" tabindex="-1">'
            f'<div id="divRplyFwdMsg" dir="ltr"><b>From:</b> Bob Real &lt;{BOB}&gt;<br><b>Sent:</b> Tuesday, March 4, 2025 9:02:10 AM<br>'
            f'<b>To:</b> Alice Real &lt;{ALICE}&gt;<br><b>Subject:</b> Chipped mug</div><div>' + html_quote(BOB_TEXT) + "</div></body></html>\n")
    return (outlook_top("m3", "Re: Chipped mug", thread_topic="Chipped mug", refs=RELAY_REF,
                        ctype=f'multipart/alternative;\n\tboundary="{bd}"')
            + f"\n--{bd}\nContent-Type: text/plain; charset=\"us-ascii\"\nContent-Transfer-Encoding: quoted-printable\n\n{qp(text)}\n"
            + f"--{bd}\nContent-Type: text/html; charset=\"us-ascii\"\nContent-Transfer-Encoding: quoted-printable\n\n{qp(html)}\n--{bd}--\n")


@eml("mobile", "Samsung Email on Android: '--_com.samsung.android.email_' boundary, base64 HTML with 'Sent from my Galaxy' and original-message block naming both parties")
def samsung_email():
    bd = "--_com.samsung.android.email_" + tok("m4", 19, "0123456789")
    text = (f"Ok, thanks!\n\n\n\nSent from my Galaxy\n\n\n-------- Original message --------\nFrom: Bob Real <{BOB}> \n"
            f"Date: 04/03/2025 09:02 (GMT+01:00) \nTo: Alice Real <{ALICE}> \nSubject: Chipped mug \n\n" + BOB_TEXT)
    html = ('<html><head><meta http-equiv="Content-Type" content="text/html; charset=UTF-8"></head><body dir="auto">'
            '<div dir="auto">Ok, thanks!</div><div dir="auto"><br></div><div dir="auto"><br></div><div id="composer_signature" '
            'dir="auto"><div style="font-size:12px;color:#575757" dir="auto">Sent from my Galaxy</div></div><div dir="auto"><br></div>'
            '<div><br></div><div align="left" dir="auto" style="font-size:100%;color:#000000"><div>-------- Original message --------</div>'
            f'<div>From: Bob Real &lt;{BOB}&gt; </div><div>Date: 04/03/2025  09:02  (GMT+01:00) </div><div>To: Alice Real &lt;{ALICE}&gt; </div>'
            '<div>Subject: Chipped mug </div><div><br></div></div>' + html_quote(BOB_TEXT) + "</body></html>")
    h = (
        "Received: from [10.153.22.7] (unknown [198.51.100.99])\n\tby smtp.sender.example (Postfix) with ESMTPSA id 4Z6J1b0kQwz9sT1\n"
        f"\tfor <{ALIAS}>; Tue,  4 Mar 2025 11:20:44 +0100 (CET)\n"
        + dkim("sender.example", "mail", "m4", "Date:From:To:Subject:In-Reply-To:References:From", ALICE)
        + f"Message-ID: <{tok('m4mid', 24, ALNUM)}.{tok('m4x', 8, '0123456789')}@email.android.com>\n"
        "Date: Tue, 04 Mar 2025 11:20:42 +0100\n"
        f"Subject: RE: Chipped mug\nIn-Reply-To: {RELAY_REF}\nReferences: {RELAY_REF}\n"
        "Importance: normal\nFrom: Alice Real <alice.real@sender.example>\n"
        f"To: Bob Real <{ALIAS}>\nMIME-Version: 1.0\nContent-Type: multipart/alternative; boundary=\"{bd}\"\n"
    )
    return (h + f"\n--{bd}\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: base64\n\n{b64text(text)}\n"
            + f"--{bd}\nContent-Type: text/html; charset=utf-8\nContent-Transfer-Encoding: base64\n\n{b64text(html)}\n--{bd}--\n\n")


@eml("mobile", "K-9 Mail / Thunderbird for Android: 8bit utf-8 format=flowed body with emoji and attribution line with Bob's address")
def k9_mail():
    body = ("Hi Bob 👋\n\nthe replacement is on its way, tracking 1Z999AA10123456784. \nGrüße aus der Werkstatt!\n\n"
            f"Am 4. März 2025 09:02:10 MEZ schrieb Bob Real <{BOB}>:\n" + quote(BOB_TEXT))
    h = (
        "Received: from [127.0.0.1] (unknown [198.51.100.131])\n\tby smtp.sender.example (Postfix) with ESMTPSA id 4Z6J2m5pLbz9sTR\n"
        f"\tfor <{ALIAS}>; Tue,  4 Mar 2025 11:22:01 +0100 (CET)\n"
        + dkim("sender.example", "mail", "m5", "Date:From:To:Subject:In-Reply-To:References")
        + "Date: Tue, 04 Mar 2025 11:21:58 +0100\n"
        f"From: Alice Real <{ALICE}>\nTo: Bob Real <{ALIAS}>\nSubject: Re: Chipped mug\n"
        "User-Agent: Thunderbird for Android\n"
        f"In-Reply-To: {RELAY_REF}\nReferences: {RELAY_REF}\n"
        "Message-ID: <" + f"{tok('m5a', 8)}-{tok('m5b', 4)}-{tok('m5c', 4)}-{tok('m5d', 4)}-{tok('m5e', 12)}" + "@sender.example>\n"
        "MIME-Version: 1.0\nContent-Type: text/plain;\n charset=utf-8;\n format=flowed\nContent-Transfer-Encoding: 8bit\n"
    )
    return h + "\n" + body


@eml("mobile", "Yahoo Mail for Android: '----=_Part_' boundary, 'On Tuesday, March 4, 2025, 9:02 AM, Bob Real <bob.real@...> wrote:' in text and yahoo_quoted HTML")
def yahoo_android():
    bd = "----=_Part_" + tok("m6", 7, "0123456789") + "_" + tok("m6b", 9, "0123456789") + ".1741083606183"
    attribution = f"On Tuesday, March 4, 2025, 9:02 AM, Bob Real <{BOB}> wrote:"
    text = "Sure, I will send it.\n\nSent from Yahoo Mail on Android \n \n  " + attribution + "   \n" + BOB_TEXT
    html = ('Sure, I will send it.<br><br><div id="ymail_android_signature"><a id="ymail_android_signature_link" '
            'href="https://go.onelink.me/107872968?pid=InProduct&amp;c=Global_Internal_YGrowth_AndroidEmailSig__AndroidUsers">Sent from Yahoo Mail on Android</a></div> '
            f'<br> <blockquote style="margin: 0 0 20px 0;"> <div style="font-family:Roboto, sans-serif; color:#6D00F6;"> <div>On Tuesday, March 4, 2025, 9:02 AM, Bob Real &lt;{BOB}&gt; wrote:</div> </div> '
            '<div style="padding: 10px 0 0 20px; margin: 10px 0 0 0; border-left: 1px solid #6D00F6;"> <div id="yiv1234567890"><div>'
            + html_quote(BOB_TEXT) + "</div></div> </div> </blockquote>")
    h = (
        "Received: from 198.51.100.201 by smtp.sender.example with HTTP; Tue, 4 Mar 2025 10:20:06 +0000\n"
        + dkim("sender.example", "s2048", "m6", "Date:From:To:In-Reply-To:References:Subject:From:Subject")
        + "X-YMail-OSG: " + tok("m6osg", 120, ALNUM) + "\n"
        + "X-Sonic-MF: <alice.real@sender.example>\nX-Sonic-ID: " + tok("m6sid", 8) + "-" + tok("m6s2", 4) + "\n"
        + "Date: Tue, 4 Mar 2025 10:20:06 +0000 (UTC)\n"
        f"From: Alice Real <{ALICE}>\nTo: Bob Real <{ALIAS}>\n"
        "Message-ID: <" + tok("m6mid", 10, "0123456789") + "." + tok("m6m2", 7, "0123456789") + ".1741083606183@mail.sender.example>\n"
        f"In-Reply-To: {RELAY_REF}\nReferences: {RELAY_REF}\nSubject: Re: Chipped mug\nMIME-Version: 1.0\n"
        f"Content-Type: multipart/alternative; \n\tboundary=\"{bd}\"\nX-Mailer: WebService/1.1.23369 YMailNorrin\n"
    )
    return (h + f"\n--{bd}\nContent-Type: text/plain; charset=UTF-8\nContent-Transfer-Encoding: 7bit\n\n{text}\n"
            + f"--{bd}\nContent-Type: text/html; charset=UTF-8\nContent-Transfer-Encoding: 7bit\n\n{html}\n--{bd}--\n")


# ================================================================= webmail

@eml("webmail", "Roundcube webmail: X-Sender alice, Received from the browser's IP [198.51.100.77] by webmail.sender.example, Organization, X-Originating-IP")
def roundcube():
    bd = "=_" + tok("w1", 32)
    h = (
        "Received: from webmail.sender.example (localhost [127.0.0.1])\n\tby smtp.sender.example (Postfix) with ESMTPA id 4Z6K0a2Tq3z9sVx\n"
        f"\tfor <{ALIAS}>; Tue,  4 Mar 2025 11:30:12 +0100 (CET)\n"
        + dkim("sender.example", "mail", "w1", "MIME-Version:Date:From:To:Subject:Message-ID:Content-Type")
        + "MIME-Version: 1.0\nDate: Tue, 04 Mar 2025 11:30:12 +0100\n"
        f"From: Alice Real <{ALICE}>\nTo: Bob Real <{ALIAS}>\nSubject: Shipping delay\n"
        "Organization: Real Ceramics\n"
        f"Message-ID: <{tok('w1mid', 32)}@sender.example>\n"
        f"X-Sender: {ALICE}\nX-Originating-IP: [198.51.100.77]\nUser-Agent: Roundcube Webmail/1.6.9\n"
        f"Content-Type: multipart/alternative;\n boundary=\"{bd}\"\n"
    )
    text = "Hi Bob,\n\nthe courier is late this week; expect the parcel on Monday.\n\nAlice\n"
    html = ('<html><head><meta http-equiv="Content-Type" content="text/html; charset=UTF-8" /></head><body style=\'font-size: 10pt; '
            'font-family: Verdana,Geneva,sans-serif\'>\n<p>Hi Bob,</p>\n<p>the courier is late this week; expect the parcel on Monday.</p>\n'
            f'<p>Alice</p>\n<div id="signature">-- <br /><a href="mailto:{ALICE}">{ALICE}</a></div>\n</body></html>\n')
    return (h + f"\n--{bd}\nContent-Transfer-Encoding: 7bit\nContent-Type: text/plain; charset=US-ASCII;\n format=flowed\n\n{text}\n"
            + f"--{bd}\nContent-Transfer-Encoding: quoted-printable\nContent-Type: text/html; charset=UTF-8\n\n{qp(html)}\n--{bd}--\n")


# =========================================================== html and parts

@eml("html-only", "HTML-only message (no text part): mailto: links with %40, &#64; and &#x40;, an entity-encoded address in visible text")
def html_only_entities():
    html = ('<html><body><p>Hello Bob,</p>\n'
            '<p>For returns write to <a href="mailto:alice.real%40sender.example?subject=Return">alice.real&#64;sender.example</a> '
            'or <a href="mailto:alice.real&#x40;sender.example">our returns desk</a>.</p>\n'
            '<p>Fully encoded: &#97;&#108;&#105;&#99;&#101;&#46;&#114;&#101;&#97;&#108;&#64;&#115;&#101;&#110;&#100;&#101;&#114;&#46;&#101;&#120;&#97;&#109;&#112;&#108;&#101;</p>\n'
            '<p>Named entity: alice.real&commat;sender.example</p>\n'
            '<p>Best, Alice</p></body></html>\n')
    return (gmail_top("h1", "Returns", ctype='text/html; charset="UTF-8"') + "Content-Transfer-Encoding: 7bit\n\n" + html)


@eml("html-only", "HTML-only, base64, windows-1252, Bob's address in a table cell and a data-attribute, alice in <title>")
def html_only_base64_cp1252():
    html = ('<!DOCTYPE html><html><head><title>Order 2025-0412 – Alice Real &lt;' + ALICE + '&gt;</title></head><body>'
            '<table><tr><td>Customer</td><td data-email="' + BOB + '">Bob Real</td></tr>'
            '<tr><td>Shop</td><td>Real Ceramics – ' + ALICE + '</td></tr></table>'
            '<p>Merci beaucoup, à bientôt!</p></body></html>\n')
    return (outlook_top("h2", "Order 2025-0412", ctype='text/html; charset="windows-1252"')
            + "Content-Transfer-Encoding: base64\n\n" + b64text(html, "cp1252"))


@eml("multipart-alternative", "multipart/alternative with text part 7bit and HTML part QP; the HTML hides the address behind tags (<span>, <wbr>, a soft hyphen &shy;)")
def alternative_tag_split():
    bd = gboundary("h3")
    text = f"Contact me at {ALICE} or reply to this message.\n"
    html = ('<div dir="ltr">Contact me at <span class="il">alice.real</span>@<span class="il">sender</span>.example '
            'or at alice.real@sen&shy;der.example or alice.real@<wbr>sender.example, or reply to this message.</div>\n')
    return (gmail_top("h3", "Contact", boundary=bd)
            + f"\n--{bd}\nContent-Type: text/plain; charset=\"UTF-8\"\n\n{text}\n"
            + f"--{bd}\nContent-Type: text/html; charset=\"UTF-8\"\nContent-Transfer-Encoding: quoted-printable\n\n{qp(html)}\n--{bd}--\n")


@eml("forward-rfc822", "Outlook forward as attachment: message/rfc822 whose inner message is multipart/alternative with base64 parts naming both parties and a References chain at sender.example")
def outlook_forward_rfc822_nested():
    bd = obound("f1")
    ibd = gboundary("f1inner")
    inner_text = f"Alice,\n\nI paid by card, the receipt went to {BOB}.\n\nBob\n\nOn Mon, 3 Mar 2025, Alice Real <{ALICE}> wrote:\n> Did the payment go through?\n"
    inner_html = (f'<div>Alice,<br><br>I paid by card, the receipt went to <a href="mailto:{BOB}">{BOB}</a>.<br><br>Bob</div>'
                  f'<div>On Mon, 3 Mar 2025, Alice Real &lt;<a href="mailto:{ALICE}">{ALICE}</a>&gt; wrote:<br>'
                  '<blockquote>Did the payment go through?</blockquote></div>\n')
    inner = (
        "Received: from mail.recipient.example (mail.recipient.example [192.0.2.25])\n\tby mx.sender.example with ESMTPS id 4Z6FzX1q2Bz9sQn;\n\tMon, 3 Mar 2025 20:10:11 +0100\n"
        f"From: Bob Real <{BOB}>\nTo: Alice Real <{ALICE}>\nSubject: Re: Payment\nDate: Mon, 3 Mar 2025 20:10:10 +0100\n"
        "Message-ID: <CAB0bRe4lxyz123456789@recipient.example>\n"
        "In-Reply-To: <a1b2c3d4-0000-4000-8000-123456789abc@sender.example>\n"
        "References: <a1b2c3d4-0000-4000-8000-123456789abc@sender.example>\n"
        f"MIME-Version: 1.0\nContent-Type: multipart/alternative; boundary=\"{ibd}\"\n\n"
        f"--{ibd}\nContent-Type: text/plain; charset=\"UTF-8\"\nContent-Transfer-Encoding: base64\n\n{b64text(inner_text)}\n"
        f"--{ibd}\nContent-Type: text/html; charset=\"UTF-8\"\nContent-Transfer-Encoding: base64\n\n{b64text(inner_html)}\n--{ibd}--\n"
    )
    text = "See Bob's message below about the payment.\n\nAlice\n"
    return (outlook_top("f1", "FW: Payment", has_attach=True, ctype=f'multipart/mixed;\n\tboundary="{bd}"', to="carol@third.example",
                        cc=f"Bob Real <{ALIAS}>")
            + f"\n--{bd}\nContent-Type: text/plain; charset=\"us-ascii\"\n\n{text}\n"
            + f"--{bd}\nContent-Type: message/rfc822\nContent-Disposition: attachment;\n\tcreation-date=\"Tue, 04 Mar 2025 10:14:07 GMT\";\n"
            + f"\tmodification-date=\"Tue, 04 Mar 2025 10:14:07 GMT\"\n\n{inner}\n--{bd}--\n")


@eml("icalendar", "Calendar reply (METHOD:REPLY, Outlook 'Accepted:'): ATTENDEE;PARTSTAT=ACCEPTED:mailto:ALICE.REAL@SENDER.EXAMPLE (upper case), ORGANIZER Bob")
def calendar_reply_accept():
    bd = obound("c1")
    ics = ("BEGIN:VCALENDAR\nMETHOD:REPLY\nPRODID:Microsoft Exchange Server 2010\nVERSION:2.0\nBEGIN:VEVENT\n"
           "ATTENDEE;PARTSTAT=ACCEPTED;CN=Alice Real:mailto:ALICE.REAL@SENDER.EXAMPLE\n"
           f"ORGANIZER;CN=Bob Real:mailto:{BOB}\nDTSTART:20250310T150000Z\nDTEND:20250310T153000Z\n"
           "UID:040000008200E00074C5B7101A82E00800000000" + tok("c1uid", 40, UPPERHEX) + "\n"
           "SUMMARY;LANGUAGE=en-GB:Accepted: Call about the replacement mug\nDTSTAMP:20250304T101407Z\nSEQUENCE:0\n"
           "END:VEVENT\nEND:VCALENDAR\n")
    return (outlook_top("c1", "Accepted: Call about the replacement mug",
                        ctype=f'multipart/alternative;\n\tboundary="{bd}";\n\ttype="text/calendar"')
            + f"\n--{bd}\nContent-Type: text/plain; charset=\"us-ascii\"\n\n\n"
            + f"--{bd}\nContent-Type: text/calendar; charset=\"utf-8\"; method=REPLY\nContent-Transfer-Encoding: base64\n\n{b64text(ics)}\n--{bd}--\n")


@eml("icalendar", "Thunderbird (Lightning) invitation: text/calendar in alternative plus invite.ics attachment 8bit, ATTENDEE mailto: Bob, ORGANIZER alice, UID @sender.example")
def thunderbird_calendar_invite():
    alt = tboundary("c2")
    mixed = tboundary("c2m")
    ics = ics_event("c2", "REQUEST", ALICE, [("Bob Real", BOB)], prodid="-//Mozilla.org/NONSGML Mozilla Calendar V1.1//EN")
    text = ("Alice Real has invited you to Call about the replacement mug.\n\nWhen: Monday, 10 March 2025 16:00 - 16:30 Europe/Paris\n"
            f"Organiser: Alice Real <{ALICE}>\nAttendees: Bob Real <{BOB}>\n")
    return (tb_top("c2", "Invitation: Call about the replacement mug", ctype=f'multipart/mixed; boundary="{mixed}"')
            + f"\n--{mixed}\nContent-Type: multipart/alternative; boundary=\"{alt}\"\n\n"
            + f"--{alt}\nContent-Type: text/plain; charset=UTF-8\nContent-Transfer-Encoding: 8bit\n\n{text}\n"
            + f"--{alt}\nContent-Type: text/calendar; charset=UTF-8; method=REQUEST\nContent-Transfer-Encoding: 8bit\n\n{ics}\n--{alt}--\n\n"
            + f"--{mixed}\nContent-Type: application/ics; name=\"invite.ics\"\nContent-Disposition: attachment; filename=\"invite.ics\"\n"
            + f"Content-Transfer-Encoding: 8bit\n\n{ics}\n--{mixed}--\n")


@eml("vcard", "Outlook business card: text/x-vcard vCard 2.1 with EMAIL;PREF;INTERNET and a QUOTED-PRINTABLE NOTE containing the address split by a soft line break")
def outlook_vcard21():
    bd = obound("v1")
    vcf = ("BEGIN:VCARD\nVERSION:2.1\nN;LANGUAGE=en-gb:Real;Alice\nFN:Alice Real\nORG:Real Ceramics\n"
           "TEL;WORK;VOICE:+1 555 0100 123\n"
           f"EMAIL;PREF;INTERNET:{ALICE}\n"
           "NOTE;ENCODING=QUOTED-PRINTABLE:Orders: write to alice.real=40sender.ex=\nample, not to the shop address.\n"
           "X-MS-OL-DEFAULT-POSTAL-ADDRESS:0\nREV:20250304T101407Z\nEND:VCARD\n")
    text = "Bob, my business card is attached.\n\nAlice\n"
    return (outlook_top("v1", "Business card", has_attach=True, ctype=f'multipart/mixed;\n\tboundary="{bd}"')
            + f"\n--{bd}\nContent-Type: text/plain; charset=\"us-ascii\"\n\n{text}\n"
            + f"--{bd}\nContent-Type: text/x-vcard; name=\"Alice Real.vcf\"\nContent-Description: Alice Real.vcf\n"
            + "Content-Disposition: attachment; filename=\"Alice Real.vcf\"; size=331;\n\tcreation-date=\"Tue, 04 Mar 2025 10:14:07 GMT\";\n"
            + f"\tmodification-date=\"Tue, 04 Mar 2025 10:14:07 GMT\"\n\n{vcf}\n--{bd}--\n")


@eml("vcard", "vCard 4.0 inline (text/vcard, Content-Disposition inline) with EMAIL;TYPE=work, a second contact (Bob) in the same file and IMPP mailto:")
def vcard4_two_contacts():
    bd = tboundary("v2")
    vcf = ("BEGIN:VCARD\nVERSION:4.0\nFN:Alice Real\nN:Real;Alice;;;\n"
           f"EMAIL;TYPE=work:{ALICE}\nIMPP;PREF=1:xmpp:{ALICE}\nEND:VCARD\n"
           "BEGIN:VCARD\nVERSION:4.0\nFN:Bob Real\nN:Real;Bob;;;\n"
           f"EMAIL;TYPE=home:{BOB}\nEND:VCARD\n")
    return (tb_top("v2", "Contacts", ctype=f'multipart/mixed; boundary="{bd}"')
            + f"\nThis is a multi-part message in MIME format.\n--{bd}\nContent-Type: text/plain; charset=UTF-8; format=flowed\nContent-Transfer-Encoding: 7bit\n\n"
            + "Both of our cards, for your address book.\n\nAlice\n\n"
            + f"--{bd}\nContent-Type: text/vcard; charset=UTF-8; name=\"contacts.vcf\"\nContent-Disposition: inline; filename=\"contacts.vcf\"\n"
            + f"Content-Transfer-Encoding: quoted-printable\n\n{qp(vcf)}\n--{bd}--\n")


# ================================================================ encodings

@eml("rfc2047", "RFC 2047 Q-encoded display name that decodes to her address: From: =?utf-8?q?alice.real=40sender.example?= <alice.real@...>")
def rfc2047_name_is_address():
    body = "Hi Bob,\n\njust checking the parcel arrived.\n\nAlice\n"
    return (tb_top("e1", "Parcel", ctype="text/plain; charset=UTF-8; format=flowed", cte="7bit")
            .replace(f"From: Alice Real <{ALICE}>", f"From: =?utf-8?q?alice=2Ereal=40sender=2Eexample?= <{ALICE}>") + "\n" + body)


@eml("rfc2047", "RFC 2047 B-encoded names and subject: 'Alice Réal', Cc 'Bob Réal' <bob.real@...>, a Subject whose encoded words split her address across two words")
def rfc2047_b_encoded():
    name = "=?UTF-8?B?" + base64.b64encode("Alice Réal".encode()).decode() + "?="
    bobname = "=?UTF-8?B?" + base64.b64encode("Bob Réal".encode()).decode() + "?="
    subject = ("=?UTF-8?Q?R=C3=A9ponse_pour_alice=2Ereal=40send?=\n =?UTF-8?Q?er=2Eexample_=E2=80=93_commande?=")
    body = "Bonjour Bob,\n\nmerci pour votre commande.\n\nAlice\n"
    h = tb_top("e2", subject, ctype="text/plain; charset=UTF-8; format=flowed", cte="8bit",
               cc=f"{bobname} <{BOB}>").replace(f"From: Alice Real <{ALICE}>", f"From: {name} <{ALICE}>")
    return h + "\n" + body


@eml("smtputf8-idn", "SMTPUTF8 message: raw UTF-8 in Subject and display names, Cc to an IDN U-label address and a punycode address, 8bit UTF-8 body naming her address")
def smtputf8_idn():
    body = (f"Hallo Bob,\n\nJürgen von der Bücherei (jürgen@bücher.example, auch jurgen@xn--bcher-kva.example) hat\n"
            f"die Lieferung bestätigt. Fragen bitte an {ALICE}.\n\nAlice\n")
    h = tb_top("e3", "Lieferung bestätigt ✔", ctype="text/plain; charset=UTF-8; format=flowed", cte="8bit",
               to=f"Bob Réal <{ALIAS}>", cc="Jürgen Müller <jürgen@bücher.example>, <jurgen@xn--bcher-kva.example>")
    h = h.replace(f"From: Alice Real <{ALICE}>", f"From: Alice Réal <{ALICE}>")
    return h + "\n" + body


@eml("8bit", "8bit latin-1 body (charset=iso-8859-1) with accented text and a quoted German attribution naming Bob's address")
def eightbit_latin1():
    body = ("Sehr geehrter Herr Real,\n\nvielen Dank für Ihre Bestellung. Die Tasse wird morgen verschickt; über\n"
            "Rückfragen freue ich mich unter " + ALICE + ".\n\nMit freundlichen Grüßen\nAlice\n\n"
            f"Am 04.03.2025 um 09:02 schrieb Bob Real <{BOB}>:\n> Wann wird meine Bestellung verschickt?\n")
    h = tb_top("e4", "Ihre Bestellung", ctype="text/plain; charset=iso-8859-1; format=flowed", cte="8bit")
    return [h + "\n", body.encode("latin-1")]


@eml("8bit", "8bit utf-8 HTML-and-text alternative (Content-Transfer-Encoding: 8bit both), CJK and emoji around the addresses")
def eightbit_utf8_alternative():
    bd = tboundary("e5")
    text = f"ボブさん、\n\nご注文ありがとうございます 🙏\n連絡先: {ALICE}\n\nアリス\n\n2025/03/04 9:02, Bob Real <{BOB}> wrote:\n> こんにちは\n"
    html = (f'<html><body><p>ボブさん、</p><p>ご注文ありがとうございます 🙏</p><p>連絡先: <a href="mailto:{ALICE}">{ALICE}</a></p>'
            f'<p>アリス</p><blockquote>2025/03/04 9:02, Bob Real &lt;{BOB}&gt; wrote:<br>こんにちは</blockquote></body></html>\n')
    return (tb_top("e5", "=?UTF-8?B?" + base64.b64encode("ご注文".encode()).decode() + "?=", ctype=f'multipart/alternative;\n boundary="{bd}"')
            + f"\nThis is a multi-part message in MIME format.\n--{bd}\nContent-Type: text/plain; charset=UTF-8\nContent-Transfer-Encoding: 8bit\n\n{text}\n"
            + f"--{bd}\nContent-Type: text/html; charset=UTF-8\nContent-Transfer-Encoding: 8bit\n\n{html}\n--{bd}--\n")


@eml("long-lines", "HTML 7bit with lines of 990-998 octets (Outlook-style unwrapped HTML) holding her address, so replacing it with a longer alias forces folding or re-encoding")
def long_lines_html():
    line1 = f'<p>Questions: <a href="mailto:{ALICE}">{ALICE}</a></p><table><tr>'
    i = 0
    while True:
        cell = f'<td style="padding:2px 4px;border:1px solid #ccc">item {i}</td>'
        if len(line1) + len(cell) + len("</tr></table>") > 998:
            break
        line1 += cell
        i += 1
    line1 += "</tr></table>"
    pad = "x" * 2000
    line2 = f"<p>{BOB} wrote: " + pad
    line2 = line2[:998 - 4] + "</p>"
    line3 = ("<!-- generated by shop mailer " + "0123456789abcdef" * 70)[:998 - len(ALICE) - 5] + " " + ALICE + " -->"
    html = "<html><body>\n" + line1 + "\n" + line2 + "\n" + line3 + "\n</body></html>\n"
    assert all(len(line.encode()) <= 998 for line in html.split("\n"))
    return (gmail_top("l1", "Long lines", ctype='text/html; charset="UTF-8"') + "Content-Transfer-Encoding: 7bit\n\n" + html)


@eml("long-lines", "text/plain 8bit with a 998-octet line ending in her address (the longest line SMTP allows)")
def long_lines_plain():
    line = ("Order notes: " + "lorem ipsum dolor sit amet " * 40)[:998 - len(ALICE) - 1] + " " + ALICE
    assert len(line) == 998
    body = "Hi Bob,\n\n" + line + "\n\nAlice\n"
    return tb_top("l2", "Notes", ctype="text/plain; charset=UTF-8", cte="8bit") + "\n" + body


@eml("mixed-case", "Mixed/upper case everywhere: From/Reply-To ALICE.REAL@SENDER.EXAMPLE, To the alias in upper case, Cc Bob.Real@Recipient.Example, body and mailto in odd case")
def mixed_case():
    body = ("Hi Bob,\n\nWrite to ALICE.REAL@SENDER.EXAMPLE or Alice.Real@Sender.Example, not to the shop.\n"
            "Your address on file is Bob.Real@Recipient.Example.\n\nAlice\n")
    h = tb_top("c3", "Addresses", ctype="text/plain; charset=UTF-8; format=flowed", cte="7bit",
               to="Bob Real <ALIAS-PLACEHOLDER@RELAY.EXAMPLE>", cc="Bob.Real@Recipient.Example",
               extra="Reply-To: Alice Real <ALICE.REAL@SENDER.EXAMPLE>\n")
    h = h.replace(f"From: Alice Real <{ALICE}>", "From: Alice Real <ALICE.REAL@SENDER.EXAMPLE>")
    return h + "\n" + body


@eml("zero-width", "Zero-width characters inside addresses (U+200B, U+200C, U+200D, U+2060, U+FEFF, soft hyphen) in QP utf-8 text and HTML")
def zero_width():
    bd = gboundary("z1")
    zw = ["alice.real\u200b@sender.example", "alice\u200c.real@sender.example", "alice.real@\u200dsender.example",
          "alice.real@sender\u2060.example", "\ufeffalice.real@sender.example", "alice.re\u00adal@sender.example",
          "bob.real\u200b@recipient.example"]
    text = "Hi Bob,\n\n" + "\n".join(f"Address {i}: {a}" for i, a in enumerate(zw, 1)) + "\n\nAlice\n"
    html = ("<div>" + "<br>".join(f'<a href="mailto:{a}">{a}</a>' for a in zw)
            + '<br>alice.real&#8203;@sender.example &#x200B;alice.real@sender.example</div>\n')
    return (gmail_top("z1", "Zero width", boundary=bd)
            + f"\n--{bd}\nContent-Type: text/plain; charset=\"UTF-8\"\nContent-Transfer-Encoding: quoted-printable\n\n{qp(text)}\n"
            + f"--{bd}\nContent-Type: text/html; charset=\"UTF-8\"\nContent-Transfer-Encoding: quoted-printable\n\n{qp(html)}\n--{bd}--\n")


@eml("encoded-at", "Plain text with URL-encoded and entity forms: tracking/unsubscribe links ?email=alice.real%40sender.example, %2540 double encoding, &#64; in text/plain")
def percent_encoded_text():
    body = ("Hi Bob,\n\nTrack your parcel: https://track.example/p?id=1Z999&notify=alice.real%40sender.example\n"
            "Double encoded: https://track.example/r?u=mailto%3Aalice.real%2540sender.example\n"
            "Your copy: https://track.example/p?id=1Z999&to=bob.real%40recipient.example\n"
            "Typed in text: alice.real&#64;sender.example and alice.real&#x40;sender.example\n\nAlice\n")
    return tb_top("p1", "Tracking", ctype="text/plain; charset=UTF-8; format=flowed", cte="7bit") + "\n" + body


@eml("mailto", "mailto: links with subject/body/cc parameters naming both parties, a mailto in a text part inside <>, and an HTML button")
def mailto_links():
    bd = gboundary("p2")
    text = (f"Reply here: <mailto:{ALICE}?subject=Order%202025-0412&cc={BOB}>\n"
            f"Or use the button in the HTML version.\n")
    html = (f'<p><a href="mailto:{ALICE}?subject=Order%202025-0412&amp;cc={BOB}&amp;body=Hello%20Alice%20({ALICE})">Reply</a></p>'
            f'<p><a href="MAILTO:ALICE.REAL@SENDER.EXAMPLE" style="background:#06c;color:#fff;padding:8px">Contact the seller</a></p>\n')
    return (gmail_top("p2", "Reply buttons", boundary=bd)
            + f"\n--{bd}\nContent-Type: text/plain; charset=\"UTF-8\"\n\n{text}\n"
            + f"--{bd}\nContent-Type: text/html; charset=\"UTF-8\"\nContent-Transfer-Encoding: quoted-printable\n\n{qp(html)}\n--{bd}--\n")


@eml("quoted-printable", "Quoted-printable with soft line breaks inside addresses ('alice.real@sender.=' / 'example'), =40 for @ and =2E for dots")
def qp_soft_break():
    body = ("Hi Bob,=0A=0AThis line is long enough that the encoder wraps it right inside the addres=\n"
            "s alice.real@sender.=\nexample which is mine, and yours is bob.real=\n@recipient.example.=0A\n"
            "Encoded at: alice.real=40sender.example and alice=2Ereal=40sender=2Eexample.\n\nAlice\n")
    return (apple_top("q1", "QP", ctype="text/plain;\n\tcharset=utf-8", cte="quoted-printable") + "\n" + body)


@eml("base64", "base64 text and HTML bodies (76-column lines, so addresses straddle base64 line breaks), utf-8")
def base64_bodies():
    bd = "----=_Part_" + tok("b1", 7, "0123456789") + "_" + tok("b1b", 9, "0123456789") + ".1741083606183"
    text = (f"Dear Bob,\n\nall correspondence to {ALICE} please; your address {BOB} is on file.\n\n"
            f"Kind regards\nAlice Real <{ALICE}>\n")
    html = (f"<p>Dear Bob,</p><p>all correspondence to <a href='mailto:{ALICE}'>{ALICE}</a> please; your address "
            f"{BOB} is on file.</p><p>Kind regards<br>Alice Real &lt;{ALICE}&gt;</p>\n")
    return (gmail_top("b1", "Correspondence", boundary=bd)
            + f"\n--{bd}\nContent-Type: text/plain; charset=UTF-8\nContent-Transfer-Encoding: base64\n\n{b64text(text)}\n"
            + f"--{bd}\nContent-Type: text/html; charset=UTF-8\nContent-Transfer-Encoding: base64\n\n{b64text(html)}\n--{bd}--\n")


@eml("base64", "Plain-text attachment notes.txt (base64, text/plain; name=) with both addresses, next to a PNG that must arrive unchanged")
def text_attachment_base64():
    bd = tboundary("b2")
    notes = f"Customer: Bob Real <{BOB}>\nSeller: Alice Real <{ALICE}>\nOrder: 2025-0412\n"
    png = make_png("b2png")
    return (tb_top("b2", "Order notes", ctype=f'multipart/mixed; boundary="{bd}"')
            + f"\nThis is a multi-part message in MIME format.\n--{bd}\nContent-Type: text/plain; charset=UTF-8; format=flowed\nContent-Transfer-Encoding: 7bit\n\n"
            + "Notes and a photo attached.\n\nAlice\n\n"
            + f"--{bd}\nContent-Type: text/plain; charset=UTF-8; name=\"notes.txt\"\nContent-Disposition: attachment; filename=\"notes.txt\"\n"
            + f"Content-Transfer-Encoding: base64\n\n{b64text(notes)}\n"
            + f"--{bd}\nContent-Type: image/png; name=\"mug.png\"\nContent-Disposition: attachment; filename=\"mug.png\"\n"
            + f"Content-Transfer-Encoding: base64\n\n{b64(png)}\n--{bd}--\n")


# ======================================================== address headers

@eml("group-syntax", "Group syntax: To: 'Order 2025-0412': alias, Bob's real address;  Cc: undisclosed-recipients:;  and a group holding alice")
def group_syntax():
    body = "Hi all,\n\nsee you Monday.\n\nAlice\n"
    h = tb_top("g7", "Team", ctype="text/plain; charset=UTF-8; format=flowed", cte="7bit",
               to=f"Order 2025-0412: Bob Real <{ALIAS}>, Bob Real <{BOB}>;",
               cc=f"undisclosed-recipients:;, Shop team: Alice Real <{ALICE}>, carol@third.example;")
    return h + "\n" + body


@eml("duplicate-headers", "Duplicate headers real traffic has: several Received, two DKIM-Signature (RSA and Ed25519), two Comments, Keywords naming her")
def duplicate_headers():
    extra = (dkim("sender.example", "ed2025", "d1ed", "From:To:Subject:Date:Message-ID").replace("rsa-sha256", "ed25519-sha256")
             + f"Comments: sent by {ALICE}\nComments: via the shop dashboard\nKeywords: order, {ALICE}\n")
    body = "Hi Bob,\n\nthe parcel left today.\n\nAlice\n"
    h = tb_top("d1", "Parcel left", ctype="text/plain; charset=UTF-8; format=flowed", cte="7bit", extra=extra)
    return ("Received: from smtp.sender.example (smtp.sender.example [198.51.100.3])\n\tby relay-out.sender.example (Postfix)"
            f" with ESMTPS id 4Z6HQ03Abcz9sRm\n\tfor <{ALIAS}>; Tue,  4 Mar 2025 11:14:08 +0100 (CET)\n" + h + "\n" + body)


@eml("duplicate-headers", "Two Reply-To headers (both hers, different case; RFC 5322 allows one): THREATS #52 allows reject or collapse, the relay refuses", expect="reject")
def duplicate_reply_to():
    extra = f"Reply-To: Alice Real <{ALICE}>\nReply-To: <ALICE.REAL@sender.example>\n"
    body = "Hi Bob,\n\nthe parcel left today.\n\nAlice\n"
    return tb_top("d3", "Parcel left", ctype="text/plain; charset=UTF-8; format=flowed", cte="7bit", extra=extra) + "\n" + body


@eml("duplicate-headers", "Two From headers (RFC 5322 section 3.6 allows one): refused by policy (THREATS #52)", expect="reject")
def duplicate_from():
    body = "Hi Bob,\n\nhello.\n\nAlice\n"
    h = tb_top("d2", "Hello", ctype="text/plain; charset=UTF-8; format=flowed", cte="7bit")
    h = h.replace(f"From: Alice Real <{ALICE}>\n", f"From: Alice Real <{ALICE}>\nFrom: Alice <alice.real@SENDER.EXAMPLE>\n")
    return h + "\n" + body


@eml("address-headers", "Every identity-bearing header at once: Sender, Reply-To, Return-Path, Errors-To, X-Sender, X-Envelope-From, Delivered-To, X-Original-To, X-Originating-IP, Received-SPF, Authentication-Results, ARC-*, DKIM i=, Organization, X-Mailer")
def address_headers_all():
    extra = (
        f"Sender: Alice Real <{ALICE}>\nReply-To: Alice Real <{ALICE}>\nErrors-To: <{ALICE}>\n"
        f"X-Sender: {ALICE}\nX-Envelope-From: <{ALICE}>\nDelivered-To: {ALICE}\nX-Original-To: {ALICE}\n"
        "X-Originating-IP: [198.51.100.7]\nX-Forwarded-For: 198.51.100.7, 2001:db8:5:6::7\n"
        f"Received-SPF: pass (sender.example: domain of {ALICE} designates 198.51.100.7 as permitted sender)\n"
        f" client-ip=198.51.100.7; envelope-from={ALICE}; helo=mail-qk1-f41.sender.example;\n"
        "Authentication-Results: mx.sender.example;\n       dkim=pass header.i=@sender.example header.s=mail header.b=Xy12AbCd;\n"
        f"       spf=pass (sender.example: domain of {ALICE} designates 198.51.100.7 as permitted sender) smtp.mailfrom={ALICE};\n"
        "       dmarc=pass (p=REJECT sp=REJECT dis=NONE) header.from=sender.example\n"
        "Organization: Real Ceramics (sender.example)\nX-Mailer: Real Ceramics Shop Mailer 2.1\n"
        f"Return-Path: <{ALICE}>\n"
    )
    body = "Hi Bob,\n\nyour parcel is ready for pickup.\n\nAlice\n"
    return (tb_top("x1", "Ready for pickup", ctype="text/plain; charset=UTF-8; format=flowed", cte="7bit", extra=extra)
            .replace("MIME-Version: 1.0\n", "MIME-Version: 1.0\n" + dkim("sender.example", "shop", "x1b", "From:To:Subject", ALICE), 1)
            + "\n" + body)


@eml("address-headers", "Resent-* block (she re-sends an earlier message): Resent-From/Sender/To/Date/Message-ID naming her and her domain")
def resent_headers():
    extra = (
        f"Resent-From: Alice Real <{ALICE}>\nResent-Sender: <{ALICE}>\nResent-To: Bob Real <{ALIAS}>\n"
        f"Resent-Cc: Bob Real <{BOB}>\n"
        "Resent-Date: Tue, 4 Mar 2025 11:40:00 +0100\n"
        f"Resent-Message-ID: <resent-{tok('r1', 16)}@sender.example>\n"
    )
    body = "Hi Bob,\n\nre-sending my message from yesterday in case it got lost.\n\nAlice\n"
    return tb_top("r1", "Shipping date", ctype="text/plain; charset=UTF-8; format=flowed", cte="7bit", extra=extra) + "\n" + body


@eml("address-headers", "Mailing-list style headers from her shop's newsletter tool: List-Id, List-Post/List-Help/List-Owner/List-Unsubscribe mailto: with %40, List-Unsubscribe-Post, Precedence, Feedback-ID")
def list_headers():
    extra = (
        "List-Id: Real Ceramics customers <customers.sender.example>\n"
        "List-Post: <mailto:customers@sender.example>\n"
        "List-Help: <mailto:customers-request@sender.example?subject=help>\n"
        f"List-Owner: <mailto:{ALICE}>\n"
        "List-Unsubscribe: <mailto:unsubscribe@sender.example?subject=unsubscribe%20alice.real%40sender.example>,\n"
        " <https://lists.sender.example/u/" + tok("ls1", 24, ALNUM) + ">\n"
        "List-Unsubscribe-Post: List-Unsubscribe=One-Click\n"
        "Precedence: bulk\nFeedback-ID: 2025-03:customers:campaign:sender.example\n"
        "Sender: \"customers\" <customers-bounces+alice.real=sender.example@sender.example>\n"
    )
    body = "Hi Bob,\n\nthis is the note about your order we send every customer.\n\nAlice\n"
    return tb_top("ls", "About your order", ctype="text/plain; charset=UTF-8; format=flowed", cte="7bit", extra=extra) + "\n" + body


@eml("address-headers", "Addresses in header comments and old-style forms: From: alice.real@sender.example (Alice Real), To: alias (Bob, also bob.real@...), Message-ID and References at her domain, In-Reply-To with comment")
def header_comments():
    body = "Hi Bob,\n\nold-school mail client here.\n\nAlice\n"
    h = (
        "Received: from mail-qk1-f41.sender.example (mail-qk1-f41.sender.example [198.51.100.7])\n"
        f"\tby smtp.sender.example (8.17.1/8.17.1) with ESMTP id 524AE7xq012345\n\tfor <{ALIAS}>; Tue, 4 Mar 2025 11:14:07 +0100\n"
        f"Message-Id: <202503041014.524AE7xq012345@mail-qk1-f41.sender.example>\n"
        f"From: {ALICE} (Alice Real)\n"
        f"To: {ALIAS} (Bob, also {BOB})\n"
        "Subject: Old school\n"
        f"In-Reply-To: {RELAY_REF} (Bob Real's message of \"Tue, 4 Mar 2025 09:02:10 +0100\")\n"
        f"References: {OWN_REF} {RELAY_REF}\n"
        "Date: Tue, 4 Mar 2025 11:14:06 +0100\n"
        "X-Mailer: mail (GNU Mailutils 3.17)\nMIME-Version: 1.0\nContent-Type: text/plain; charset=us-ascii\n"
    )
    return h + "\n" + body


@eml("address-headers", "Multipart with preamble and epilogue that hold addresses (list software footer placed after the close boundary; THREATS #51)")
def preamble_epilogue():
    bd = tboundary("pe")
    return (tb_top("pe", "Footer", ctype=f'multipart/alternative; boundary="{bd}"')
            + f"\nThis is a multi-part message in MIME format. Sent by {ALICE}.\n"
            + f"--{bd}\nContent-Type: text/plain; charset=UTF-8\nContent-Transfer-Encoding: 7bit\n\nHi Bob, hello from the shop.\n\n"
            + f"--{bd}\nContent-Type: text/html; charset=UTF-8\nContent-Transfer-Encoding: 7bit\n\n<p>Hi Bob, hello from the shop.</p>\n\n"
            + f"--{bd}--\n\n_______________________________________________\nManage your subscription: {ALICE}\n")


# =================================================================== hostile

@eml("hostile", "Encoded newline in Subject (CVE-2024-6923): an encoded word decoding to LF followed by 'Bcc:'; refuse header values that decode to CR or LF", expect="reject")
def hostile_encoded_newline():
    body = "Hi Bob.\n"
    h = tb_top("hx1", "=?UTF-8?Q?Order_question=0ABcc:_carol@third.example?=",
               ctype="text/plain; charset=UTF-8; format=flowed", cte="7bit")
    return h + "\n" + body


@eml("hostile", "Parser differential (CVE-2023-27043): From: alice.real@sender.example)<bob.real@recipient.example> parses with defects; one parser, reject on defects", expect="reject")
def hostile_parser_differential():
    body = "Hi.\n"
    h = tb_top("hx2", "Hello", ctype="text/plain; charset=UTF-8", cte="7bit")
    h = h.replace(f"From: Alice Real <{ALICE}>", f"From: {ALICE})<{BOB}>")
    return h + "\n" + body


@eml("hostile", "MIME nesting 30 deep (limit 20): refused before 250 with 554 5.6.0 (THREATS #50)", expect="reject")
def hostile_deep_nesting():
    depth = 30
    head = tb_top("hx3", "Nested", ctype='multipart/mixed; boundary="b0"')
    body = "\n"
    for i in range(1, depth):
        body += f"--b{i - 1}\nContent-Type: multipart/mixed; boundary=\"b{i}\"\n\n"
    body += f"--b{depth - 1}\nContent-Type: text/plain\n\nfrom {ALICE}\n"
    for i in range(depth - 1, -1, -1):
        body += f"--b{i}--\n"
    return head + body


@eml("hostile", "Truncated multipart: the close boundary is missing and the last part is cut short (a structural defect; THREATS #51)", expect="reject")
def hostile_missing_close_boundary():
    bd = tboundary("hx4")
    return (tb_top("hx4", "Cut short", ctype=f'multipart/mixed; boundary="{bd}"')
            + f"\n--{bd}\nContent-Type: text/plain; charset=UTF-8\n\nHi Bob,\n\nsee the attachment.\n\n"
            + f"--{bd}\nContent-Type: application/pdf; name=\"a.pdf\"\nContent-Transfer-Encoding: base64\n\nJVBERi0xLjQK\n")


# ============================================================== assembling

def material_placeholders(text: str) -> str:
    pk_qp = qp(PGP_PUBLIC_KEY.replace("\r\n", "\n"))
    return text.replace("@@PGP_PUBLIC_KEY_QP@@", pk_qp)


def to_wire(value) -> bytes:
    """Join a builder's result and give every line a CRLF ending."""
    parts = value if isinstance(value, list) else [value]
    out = b""
    for p in parts:
        if isinstance(p, str):
            p = material_placeholders(p).encode("utf-8")
        out += p
    out = out.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    return out


def signed_parts() -> dict[str, bytes]:
    """What the embedded signatures were made over (canonical CRLF form)."""
    return {
        "pgp_mime": to_wire(PGP_MIME_SIGNED_PART),
        "smime": to_wire(SMIME_SIGNED_PART),
    }


def build() -> list[tuple[str, bytes, dict]]:
    out = []
    for name, category, note, expect, fn in BUILDERS:
        data = to_wire(fn())
        for i, line in enumerate(data.split(b"\r\n"), 1):
            assert len(line) <= 998, f"{name}: line {i} is {len(line)} octets"
        out.append((name, data, {"file": name, "category": category, "note": note, "expect": expect}))
    return out


def main(argv: list[str]) -> int:
    target = Path(argv[1]) if len(argv) > 1 else HERE
    built = build()
    names = {name for name, _, _ in built}
    assert len(names) == len(built), "duplicate file name"
    for old in target.glob("*.eml"):
        if old.name not in names:
            old.unlink()
    for name, data, _ in built:
        (target / name).write_bytes(data)
    manifest = [entry for _, _, entry in built]
    (target / "MANIFEST.json").write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {len(built)} messages to {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
