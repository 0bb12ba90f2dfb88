"""TLS contexts for STARTTLS on our listeners and for delivery to the next hop.

TLS 1.2 is the floor on both sides (RFC 8996 deprecates 1.0 and 1.1); the cipher
choice is left to OpenSSL's defaults, which track current guidance better than a
list written here would.
"""

from __future__ import annotations

import os
import ssl

__all__ = ["client_context", "server_context"]


def server_context(cert_path: str | os.PathLike[str], key_path: str | os.PathLike[str]) -> ssl.SSLContext:
    """A server context for STARTTLS (aiosmtpd ``tls_context=``) or implicit TLS.

    ``cert_path`` is the PEM certificate chain, leaf first; ``key_path`` its private key.
    Raises ``OSError`` for a missing file and ``ssl.SSLError`` for a bad or mismatched
    pair: configuration errors the caller reports with the key's name.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # Renegotiation is a DoS lever and adds nothing for SMTP; compression is CRIME.
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_CIPHER_SERVER_PREFERENCE
    # One-shot clients: session tickets only cost key-rotation worries.
    context.options |= ssl.OP_NO_TICKET
    context.load_cert_chain(os.fspath(cert_path), os.fspath(key_path))
    return context


def client_context(verify: bool, cafile: str | os.PathLike[str] | None = None) -> ssl.SSLContext:
    """A client context for delivery.

    ``verify=True``: the peer's chain must validate against ``cafile`` (or the system's
    trust store when None) and match the host name given to ``wrap_socket``/
    ``server_hostname``; use it for a configured smarthost. ``verify=False``:
    opportunistic encryption without authentication (RFC 7435), as MTAs do towards
    arbitrary MX hosts; ``cafile`` is then ignored.
    """
    if verify:
        context = ssl.create_default_context(
            ssl.Purpose.SERVER_AUTH, cafile=os.fspath(cafile) if cafile is not None else None
        )
    else:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    return context
