"""Configuration: TOML in, typed frozen settings out.

Every key has its default here and only here (config.example.toml mirrors this
file and a test keeps the two in step).  Unknown keys and wrong types are
errors that name the key, so an operator's typo never silently falls back to a
default.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from relay.filters.settings import FilterSettings, parse_filter_settings


class ConfigError(Exception):
    """The configuration is unusable; the message names the offending key."""


@dataclass(frozen=True)
class RelaySection:
    domain: str = "relay.example"  # aliases are minted on this domain
    hostname: str = "mx.relay.example"  # banner, HELO and Message-ID domain
    # Mail to postmaster (RFC 5321 section 4.5.1) goes here, never to a party.
    postmaster: str = "postmaster@localhost"


@dataclass(frozen=True)
class StoreSection:
    path: str = "var/relay.sqlite3"
    busy_timeout: float = 10.0  # seconds to wait for a lock held by another process, then 451


@dataclass(frozen=True)
class ListenSection:
    mx: str = "127.0.0.1:2525"
    # Sellers' submission port (STARTTLS, then AUTH); "" = off. Needs [tls].
    submission: str = ""
    # Processes accepting from the same listening sockets, one per core; each
    # delivers what it accepted. More than 1 needs fixed ports (not port 0).
    workers: int = 1
    # "auto": each worker process kept on a CPU of its own (relay.affinity);
    # "none": where the kernel puts it.
    cpu_affinity: str = "none"


@dataclass(frozen=True)
class TLSSection:
    # PEM certificate chain (leaf first) and its key; both "" = no STARTTLS offered.
    cert: str = ""
    key: str = ""


@dataclass(frozen=True)
class DeliverySection:
    mode: str = "smtp"  # "smtp" (smarthost) or "maildir" (development)
    smarthost: str = "127.0.0.1:2526"
    maildir: str = "var/outbox"  # used when mode = "maildir"
    tls: str = "opportunistic"  # STARTTLS to the smarthost: "none", "opportunistic" or "required"
    cafile: str = ""  # CA bundle that verifies the smarthost when tls = "required"; "" = system store
    connections: int = 16  # persistent connections kept to the smarthost (Postfix: 20 per destination)
    timeout: float = 60.0  # seconds for each SMTP step to the smarthost
    # RFC 5321 section 4.5.4.1: retry with back-off, give up after 4-5 days.
    retry_initial: float = 300.0
    retry_max: float = 3600.0
    lifetime: float = 432000.0
    poll_interval: float = 1.0  # how often the queue is scanned for due retries


@dataclass(frozen=True)
class LimitsSection:
    message_size: int = 26214400  # 25 MiB, advertised with SIZE (RFC 1870)
    header_field: int = 8192  # one header field, unfolded (CPython gh-136063)
    header_total: int = 102400  # the whole header block (Postfix's default)
    mime_depth: int = 20  # nested multiparts (deeper ones crash serialisers)
    recipients: int = 1  # alias recipients per transaction; more get 452 4.5.3
    command_timeout: float = 300.0  # RFC 5321 section 4.5.3.2
    # Slow-loris in DATA (THREATS #16): the client must keep sending, and on
    # average at least this many bytes a second (Postfix smtpd_min_data_rate).
    min_data_rate: int = 500  # bytes/s after a grace of command_timeout; 0 = no rate floor
    # Connection floods (THREATS #17): caps checked at accept time, 421 4.7.0.
    max_connections: int = 200  # all listeners together
    max_connections_per_ip: int = 20  # per IPv4 address or IPv6 /64
    session_timeout: float = 1200.0  # a session's whole life, 421 4.4.2 (chasquid: 20 min)
    error_limit: int = 20  # 5xx replies per session, then 421 4.7.0 (Postfix hard limit)
    transactions: int = 100  # MAIL commands per session, then 421 4.7.0 (OpenSMTPD)
    command_limit: int = 20  # NOOP, RSET, VRFY, EXPN and HELP, each, per session
    # Directory harvest (THREATS #33): unknown recipients per client in a window.
    harvest_limit: int = 50  # then 421 4.7.0 and close
    harvest_window: float = 3600.0
    tarpit_free: int = 10  # unknown recipients answered at once
    tarpit_step: float = 1.0  # then a delay from this, doubling
    tarpit_max: float = 30.0  # well below the 5-minute client timeout
    # AUTH on the submission port (THREATS #18).
    auth_failures: int = 3  # per session, then 421 4.7.0 and close
    auth_ip_failures: int = 10  # per client in auth_window, then AUTH gets 454 4.7.0
    auth_window: float = 900.0
    drain_timeout: float = 30.0  # on SIGTERM, time for transactions in progress to finish


@dataclass(frozen=True)
class MetricsSection:
    listen: str = ""  # GET /metrics and /healthz, e.g. "127.0.0.1:9325"; "" = off


@dataclass(frozen=True)
class LoggingSection:
    level: str = "info"


@dataclass(frozen=True)
class SenderAuthSection:
    # THREATS #35: mail from a party must pass SPF or DKIM for a domain aligned
    # with its From (as DMARC, RFC 7489). Needs real DNS, hence off by default.
    mode: str = "off"  # "off", "record" (check and audit, never refuse) or "enforce"
    alignment: str = "relaxed"  # "relaxed" (same organizational domain) or "strict" (same domain)
    nameservers: tuple[str, ...] = ()  # "ip" or "ip:port" ("[v6]:port"); () = the system resolver
    timeout: float = 10.0  # seconds for all lookups of one message; then 451


@dataclass(frozen=True)
class Settings:
    relay: RelaySection = field(default_factory=RelaySection)
    store: StoreSection = field(default_factory=StoreSection)
    listen: ListenSection = field(default_factory=ListenSection)
    tls: TLSSection = field(default_factory=TLSSection)
    delivery: DeliverySection = field(default_factory=DeliverySection)
    limits: LimitsSection = field(default_factory=LimitsSection)
    metrics: MetricsSection = field(default_factory=MetricsSection)
    logging: LoggingSection = field(default_factory=LoggingSection)
    sender_auth: SenderAuthSection = field(default_factory=SenderAuthSection)
    filters: FilterSettings = field(default_factory=FilterSettings)
    source: str = "embedded development default"


_SECTIONS = {
    "relay": RelaySection,
    "store": StoreSection,
    "listen": ListenSection,
    "tls": TLSSection,
    "delivery": DeliverySection,
    "limits": LimitsSection,
    "metrics": MetricsSection,
    "logging": LoggingSection,
    "sender_auth": SenderAuthSection,
}

_CHOICES = {
    "listen.cpu_affinity": ("none", "auto"),
    "delivery.mode": ("smtp", "maildir"),
    "delivery.tls": ("none", "opportunistic", "required"),
    "logging.level": ("debug", "info", "warning", "error"),
    "sender_auth.mode": ("off", "record", "enforce"),
    "sender_auth.alignment": ("relaxed", "strict"),
}

# With no config file at all, `relay serve` must run on a fresh machine with no
# other server: deliver into a maildir under ./var instead of a smarthost.
EMBEDDED_DEVELOPMENT_OVERRIDES = {"delivery": {"mode": "maildir"}}


def _check_type(key: str, value: Any, expected: Any) -> Any:
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if typing.get_origin(expected) is tuple:  # tuple[str, ...]: a TOML list of strings
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{key} must be a list of strings")
        return tuple(value)
    if expected in (int, float, str, bool):
        if isinstance(value, bool) != (expected is bool) or not isinstance(value, expected):
            raise ConfigError(f"{key} must be {_type_name(expected)}, not {_type_name(type(value))}")
        return value
    raise AssertionError(f"unsupported type for {key}: {expected}")


def _type_name(t: Any) -> str:
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false",
            list: "a list", dict: "a table"}.get(t, getattr(t, "__name__", str(t)))


def _parse_section(name: str, cls: type, raw: Any) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"[{name}] must be a table")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    values = {}
    for key, value in raw.items():
        if key not in known:
            raise ConfigError(f"unknown key {name}.{key}")
        values[key] = _check_type(f"{name}.{key}", value, hints[key])
        choices = _CHOICES.get(f"{name}.{key}")
        if choices and values[key] not in choices:
            raise ConfigError(f"{name}.{key} must be one of {', '.join(choices)}, not {values[key]!r}")
    return cls(**values)


def _validate(settings: Settings) -> None:
    for key in ("listen.mx", "delivery.smarthost"):
        section, name = key.split(".")
        parse_hostport(key, getattr(getattr(settings, section), name))
    if not 1 <= settings.listen.workers <= 64:
        raise ConfigError("listen.workers must be between 1 and 64")
    if settings.listen.workers > 1 and parse_hostport("listen.mx", settings.listen.mx)[1] == 0:
        raise ConfigError("listen.workers above 1 needs a fixed listen.mx port, not 0")
    for key in ("listen.submission", "metrics.listen"):  # optional: "" = off
        section, name = key.split(".")
        if getattr(getattr(settings, section), name):
            parse_hostport(key, getattr(getattr(settings, section), name))
    if bool(settings.tls.cert) != bool(settings.tls.key):
        raise ConfigError("tls.cert and tls.key must be set together (or both left empty)")
    if settings.listen.submission and not settings.tls.cert:
        raise ConfigError("listen.submission needs tls.cert and tls.key: AUTH is offered only after STARTTLS")
    for key, value in (("relay.domain", settings.relay.domain), ("relay.hostname", settings.relay.hostname)):
        if not value or any(c.isspace() or c in "@<>[]" for c in value) or value != value.lower():
            raise ConfigError(f"{key} must be a lowercase domain name, not {value!r}")
    positive = [("limits.message_size", settings.limits.message_size), ("limits.header_field", settings.limits.header_field),
                ("limits.header_total", settings.limits.header_total), ("limits.mime_depth", settings.limits.mime_depth),
                ("limits.recipients", settings.limits.recipients), ("delivery.connections", settings.delivery.connections),
                ("delivery.timeout", settings.delivery.timeout), ("delivery.retry_initial", settings.delivery.retry_initial),
                ("delivery.retry_max", settings.delivery.retry_max), ("delivery.lifetime", settings.delivery.lifetime),
                ("delivery.poll_interval", settings.delivery.poll_interval),
                ("limits.command_timeout", settings.limits.command_timeout),
                ("store.busy_timeout", settings.store.busy_timeout),
                ("sender_auth.timeout", settings.sender_auth.timeout)]
    lim = settings.limits
    positive += [(f"limits.{name}", getattr(lim, name)) for name in (
        "max_connections", "max_connections_per_ip", "session_timeout", "error_limit", "transactions",
        "command_limit", "harvest_limit", "harvest_window", "tarpit_step", "auth_failures", "auth_ip_failures",
        "auth_window", "drain_timeout")]
    for key, value in positive:
        if value <= 0:
            raise ConfigError(f"{key} must be greater than zero")
    for key, value in (("limits.tarpit_free", lim.tarpit_free), ("limits.tarpit_max", lim.tarpit_max),
                       ("limits.min_data_rate", lim.min_data_rate)):
        if value < 0:
            raise ConfigError(f"{key} must not be negative")
    for entry in settings.sender_auth.nameservers:
        parse_nameserver("sender_auth.nameservers", entry)
    if "@" not in settings.relay.postmaster:
        raise ConfigError("relay.postmaster must be an email address")


def check_files(settings: Settings) -> None:
    """Load the files the configuration names (TLS certificate and key, CA
    bundle), so that `check-config`, start-up and SIGHUP refuse a broken one
    naming the key instead of failing at the first STARTTLS."""
    from relay.tls import client_context, server_context

    if settings.tls.cert:
        for key, path in (("tls.cert", settings.tls.cert), ("tls.key", settings.tls.key)):
            if not os.path.isfile(path):
                raise ConfigError(f"{key}: {path} does not exist or is not a file")
        try:
            server_context(settings.tls.cert, settings.tls.key)
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            raise ConfigError(f"tls.cert and tls.key cannot be loaded as a certificate and its key: "
                              f"{getattr(exc, 'reason', None) or exc}") from None
    if settings.delivery.cafile:
        try:
            client_context(verify=True, cafile=settings.delivery.cafile)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"delivery.cafile: {settings.delivery.cafile} cannot be loaded: "
                              f"{getattr(exc, 'strerror', None) or getattr(exc, 'reason', None) or exc}") from None


# RFC 1123 labels, and "_", which container service names use and resolvers take.
_HOST_NAME = re.compile(r"(?=.{1,253}\.?$)[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
                        r"(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*\.?")


def parse_hostport(key: str, value: str) -> tuple[str, int]:
    """Split "host:port" (IPv6 as "[::1]:25"; port 0 picks a free port); errors name the key.
    The host is an IP address or a host name (RFC 1123): "999.1.1.1", "exa mple" or
    "http://x" would only fail later, when the daemon binds or connects."""
    import ipaddress

    host, sep, port = value.rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")
    if bracketed:
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigError(f"{key} must look like host:port, not {value!r}")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    if bracketed != (address is not None and address.version == 6):
        raise ConfigError(f"{key} must look like host:port, with an IPv6 address in brackets, not {value!r}")
    if address is None and (not _HOST_NAME.fullmatch(host) or host.rstrip(".").replace(".", "").isdigit()):
        raise ConfigError(f"{key}: {host!r} is neither an IP address nor a host name (in {value!r})")
    return host, int(port)


def parse_nameserver(key: str, value: str) -> tuple[str, int]:
    """A name server as an IP address with an optional port: "192.0.2.53",
    "127.0.0.1:5353", "2001:db8::53" or "[2001:db8::53]:53" (a name would
    itself need a resolver); errors name the key."""
    import ipaddress

    host, port = value.strip(), 53
    if host.startswith("["):
        inner, sep, rest = host[1:].partition("]")
        if not sep or (rest and (not rest.startswith(":") or not rest[1:].isdigit())):
            raise ConfigError(f"{key}: {value!r} is not an IP address with an optional :port")
        host, port = inner, int(rest[1:]) if rest else 53
    elif host.count(":") == 1:
        host, _, port_text = host.partition(":")
        if not port_text.isdigit():
            raise ConfigError(f"{key}: {value!r} is not an IP address with an optional :port")
        port = int(port_text)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(f"{key}: {value!r} is not an IP address with an optional :port") from None
    if not 0 < port < 65536:
        raise ConfigError(f"{key}: port {port} is out of range")
    return host, port


# A replacement worker process (relay.workers) is started with the primary's
# running configuration in this environment variable, not from the file:
# the file may hold changes a reload refused (listen, store, metrics need a
# restart) or text that does not load at all.
RUNNING_SETTINGS_ENV = "RELAY_RUNNING_SETTINGS"


def settings_to_json(settings: Settings) -> str:
    """The settings as JSON that settings_from_json reads back equal."""
    return json.dumps({"source": settings.source, "sections": {
        name: value for name, value in dataclasses.asdict(settings).items() if name != "source"}})


def settings_from_json(text: str) -> Settings:
    data = json.loads(text)
    return settings_from_dict(data["sections"], source=data["source"])


def to_toml(config: dict[str, Any]) -> str:
    """A configuration mapping ({section: {key: value}}) as TOML text: the
    inverse of loading, for the tests' and the benchmark's relay processes.
    Tables nested inside a section are written inline."""
    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{" + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + "}"
        raise TypeError(v)

    lines = []
    for section, body in config.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {value(v)}" for k, v in body.items()]
        lines.append("")
    return "\n".join(lines)


def settings_from_dict(raw: dict[str, Any], source: str = "<dict>") -> Settings:
    parts: dict[str, Any] = {}
    for name, value in raw.items():
        if name == "filters":
            try:
                parts["filters"] = parse_filter_settings(value)
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
        elif name in _SECTIONS:
            parts[name] = _parse_section(name, _SECTIONS[name], value)
        else:
            raise ConfigError(f"unknown section [{name}]")
    settings = Settings(**parts, source=source)
    _validate(settings)
    return settings


def load_settings(path: str | None = None) -> Settings:
    """Load `path`, else $RELAY_CONFIG, else the embedded development default."""
    path = path or os.environ.get("RELAY_CONFIG") or None
    if path is None:
        return settings_from_dict(EMBEDDED_DEVELOPMENT_OVERRIDES, source="embedded development default")
    file = Path(path)
    try:
        raw = tomllib.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"configuration file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"configuration file {path} cannot be read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"configuration file {path} is not valid TOML: {exc}") from None
    # Relative paths are relative to the working directory, as for sqlite3 and most tools.
    return settings_from_dict(raw, source=str(file))
