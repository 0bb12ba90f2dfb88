"""Decode a delivered message at every MIME level into one searchable text."""

from __future__ import annotations

from email import message_from_bytes, policy


def all_decoded_text(data: bytes) -> str:
    msg = message_from_bytes(data, policy=policy.default)
    chunks: list[str] = [data.decode("utf-8", "replace")]
    for part in msg.walk():
        for name, value in part.items():
            chunks.append(f"{name}: {value}")
        if part.is_multipart():
            continue
        payload = part.get_payload(decode=True) or b""
        charset = part.get_content_charset() or "utf-8"
        try:
            chunks.append(payload.decode(charset, "replace"))
        except LookupError:
            chunks.append(payload.decode("utf-8", "replace"))
    return "\n".join(chunks)
