"""The three processes of the side-by-side benchmark (issue 7).

* `Sink`: Postfix's `smtp-sink` on a loopback port, the common next hop of both
  systems; it counts every message it receives (`-c`: `sess=N quit=N mesg=N`).
* `PostfixPeer`: a private Postfix instance (its own config, queue and data
  directories under a temporary directory, started with `postfix -c DIR start`)
  configured as a plain relay: one smtpd on 127.0.0.1:PORT, `relay_domains` =
  the test domains, `relayhost = [127.0.0.1]:SINK`, no local delivery.
* `RelayUnderTest`: `python -m relay --config TMP.toml serve`, delivery mode
  smtp to the same sink, default filter chain, audit and durability on.

Everything listens on 127.0.0.1 only and is stopped by `stop()` (also on
Ctrl-C: `run.py` stops them in a `finally`).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from relay.config import to_toml

ROOT = Path(__file__).resolve().parent.parent
TEST_DOMAINS = ("shop.example", "buyer.test")  # where the real parties live
RELAY_DOMAIN = "relay.example"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.settimeout(2)
                sock.recv(512)  # the banner
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing answers on 127.0.0.1:{port} after {timeout} s")


# ------------------------------------------------------------------ smtp-sink

class Sink:
    """`smtp-sink -c` on a free loopback port; `count` is messages received (DATA ended)."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self._count = 0
        self._lock = threading.Lock()
        self._reader: threading.Thread | None = None

    def start(self) -> "Sink":
        exe = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
        args = [exe, "-c", "-m", "1024", "-t", "300"]
        if os.geteuid() == 0:
            args += ["-u", "nobody"]  # required when run as root
        args += [f"127.0.0.1:{self.port}", "1024"]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        wait_port(self.port)
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        buf = b""
        fd = self.proc.stdout.fileno()
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                return
            buf += chunk
            records = buf.replace(b"\n", b"\r").split(b"\r")
            buf = records.pop()
            for rec in reversed(records):
                pos = rec.rfind(b"mesg=")
                if pos != -1:
                    try:
                        n = int(rec[pos + 5:].split()[0])
                    except (ValueError, IndexError):
                        continue
                    with self._lock:
                        self._count = max(self._count, n)
                    break

    @property
    def count(self) -> int:
        with self._lock:
            return self._count

    def wait_for(self, target: int, timeout: float) -> float | None:
        """Block until `count >= target`; the monotonic time it happened, or None on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.count >= target:
                return time.monotonic()
            time.sleep(0.005)
        return None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# ------------------------------------------------------------------- Postfix

MASTER_CF = """\
# service type  private unpriv  chroot  wakeup  maxproc command
127.0.0.1:{port} inet n - n - - smtpd
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""

MAIN_CF = """\
# A private Postfix instance for bench/run.py: a plain relay on loopback.
compatibility_level = 3.6
queue_directory = {root}/spool
data_directory = {root}/data
daemon_directory = {daemon_directory}
meta_directory = {meta_directory}
shlib_directory = {shlib_directory}
command_directory = {command_directory}
mail_owner = postfix
setgid_group = postdrop
maillog_file_prefixes = {root}
maillog_file = {root}/maillog
myhostname = peer.bench.test
mydomain = bench.test
myorigin = $myhostname
inet_interfaces = loopback-only
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
mydestination =
local_recipient_maps =
local_transport = error:5.1.1 no local delivery here
alias_maps =
alias_database =
relay_domains = {relay_domains}
relay_recipient_maps =
relayhost = [127.0.0.1]:{sink_port}
smtpd_relay_restrictions = reject_unauth_destination
smtpd_recipient_restrictions =
smtpd_banner = $myhostname ESMTP
smtp_tls_security_level = none
smtpd_tls_security_level = none
smtputf8_enable = no
biff = no
message_size_limit = 31457280
default_process_limit = 600
smtpd_client_connection_count_limit = 0
"""


class PostfixPeer:
    """A private Postfix instance under `workdir`; `postfix -c DIR start/stop`."""

    def __init__(self, workdir: Path, sink_port: int):
        self.root = workdir
        self.conf = workdir / "etc"
        self.port = free_port()
        self.sink_port = sink_port
        self.started = False

    def _postconf_default(self, name: str, fallback: str) -> str:
        try:
            out = subprocess.run(["postconf", "-d", "-h", name], capture_output=True, text=True, timeout=30)
            return out.stdout.strip() or fallback
        except (OSError, subprocess.SubprocessError):
            return fallback

    def start(self) -> "PostfixPeer":
        if os.geteuid() != 0:
            raise RuntimeError("the Postfix peer needs root (postfix -c DIR start)")
        # Postfix daemons run as `postfix` and must reach the queue directory.
        for d in (self.root, self.conf):
            d.mkdir(parents=True, exist_ok=True)
            os.chmod(d, 0o755)
        (self.root / "data").mkdir(exist_ok=True)
        shutil.chown(self.root / "data", user="postfix")  # master.lock, caches: written as mail_owner
        (self.root / "spool").mkdir(exist_ok=True)
        os.chmod(self.root / "spool", 0o755)
        p = self.root.parent
        while p != p.parent:  # every parent must be traversable
            try:
                mode = p.stat().st_mode
                if not mode & 0o001:
                    os.chmod(p, mode | 0o011)
            except OSError:
                pass
            p = p.parent
        values = {
            "root": str(self.root), "sink_port": self.sink_port, "relay_domains": " ".join(TEST_DOMAINS),
            "daemon_directory": self._postconf_default("daemon_directory", "/usr/lib/postfix/sbin"),
            "meta_directory": self._postconf_default("meta_directory", "/etc/postfix"),
            "shlib_directory": self._postconf_default("shlib_directory", "/usr/lib/postfix"),
            "command_directory": self._postconf_default("command_directory", "/usr/sbin"),
        }
        (self.conf / "main.cf").write_text(MAIN_CF.format(**values))
        (self.conf / "master.cf").write_text(MASTER_CF.format(port=self.port))
        self._postfix("start")
        self.started = True
        wait_port(self.port)
        return self

    def _postfix(self, action: str) -> subprocess.CompletedProcess:
        out = subprocess.run(["postfix", "-c", str(self.conf), action], capture_output=True, text=True, timeout=60)
        if out.returncode != 0 and action == "start":
            # postfix(1) reports on stderr only to a terminal; its log file says why.
            try:
                log = (self.root / "maillog").read_text(errors="replace")[-1500:]
            except OSError:
                log = ""
            raise RuntimeError(f"postfix -c {self.conf} start failed (run it under `script` to see why): "
                               f"{out.stderr.strip() or out.stdout.strip()} {log}")
        return out

    def master_pid(self) -> int | None:
        try:
            return int((self.root / "spool" / "pid" / "master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def queue_size(self) -> int:
        n = 0
        for sub in ("incoming", "active", "deferred", "maildrop", "hold"):
            for _dirpath, _dirs, files in os.walk(self.root / "spool" / sub):
                n += len(files)
        return n

    def stop(self) -> None:
        if not self.started:
            return
        self._postfix("stop")
        pid = self.master_pid()
        deadline = time.monotonic() + 15
        while pid and time.monotonic() < deadline and _alive(pid):
            time.sleep(0.1)
        if pid and _alive(pid):
            self._postfix("abort")
        self.started = False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


# --------------------------------------------------------------------- relay

class RelayUnderTest:
    """`python -m relay --config DIR/relay.toml serve`; its log goes to DIR/relay.log."""

    def __init__(self, workdir: Path, sink_port: int, extra: dict[str, dict[str, Any]] | None = None,
                 workers: int = 1, cpu_affinity: str = "none"):
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.db = workdir / "relay.sqlite3"
        self.config_path = workdir / "relay.toml"
        self.log_path = workdir / "relay.log"
        config: dict[str, dict[str, Any]] = {
            "relay": {"domain": RELAY_DOMAIN, "hostname": "mx.relay.example"},
            "store": {"path": str(self.db)},
            "listen": {"mx": "127.0.0.1:0"},
            # Defaults apart from the next hop (loopback sink, no STARTTLS: the
            # Postfix peer does not use TLS either) ...
            "delivery": {"mode": "smtp", "smarthost": f"127.0.0.1:{sink_port}", "tls": "none"},
            # ... and the connection caps: every benchmark client comes from
            # 127.0.0.1 (defaults: 200 in all, 20 per address); the 500-idle
            # run needs more than that.
            "limits": {"max_connections": 1000, "max_connections_per_ip": 1000},
        }
        if workers > 1:  # listen.workers (SO_REUSEPORT) needs a fixed port
            config["listen"] = {"mx": f"127.0.0.1:{free_port()}", "workers": workers}
        if cpu_affinity != "none":
            config["listen"]["cpu_affinity"] = cpu_affinity
        for section, body in (extra or {}).items():
            config.setdefault(section, {}).update(body)
        self.config = config
        self.config_path.write_text(to_toml(config))
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self._log = None

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        env = dict(os.environ)
        env.pop("RELAY_CONFIG", None)
        out = subprocess.run([sys.executable, "-m", "relay", "--config", str(self.config_path), *args],
                             cwd=str(self.workdir), env=env, capture_output=True, text=True, timeout=600)
        if check and out.returncode != 0:
            raise RuntimeError(f"relay {' '.join(args)} exited {out.returncode}: {out.stderr.strip()}")
        return out

    def start(self, timeout: float = 60.0) -> "RelayUnderTest":
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env.pop("RELAY_CONFIG", None)
        env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self._log = open(self.log_path, "ab")
        offset = self._log.tell()
        self.proc = subprocess.Popen([sys.executable, "-m", "relay", "--config", str(self.config_path), "serve"],
                                     cwd=str(self.workdir), env=env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=self._log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("relay exited at start:\n" + self._tail(offset))
            with open(self.log_path, "rb") as fh:
                fh.seek(offset)
                for line in fh:
                    if b'"relay.started"' in line:
                        event = json.loads(line)
                        self.port = int(event["listen"].rpartition(":")[2])
                        return self
            time.sleep(0.05)
        raise RuntimeError("relay did not start:\n" + self._tail(offset))

    def _tail(self, offset: int) -> str:
        with open(self.log_path, "rb") as fh:
            fh.seek(offset)
            return fh.read()[-3000:].decode("utf-8", "replace")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self, timeout: float = 60.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None
        return self.proc.returncode


# ------------------------------------------------------- process measurements

def tree_status(pid: int) -> dict[str, int]:
    """VmRSS / VmHWM (kB) summed over a process and its descendants (listen.workers)."""
    out = {"VmRSS": 0, "VmHWM": 0, "processes": 0}
    for p in descendants(pid):
        st = proc_status(p)
        if st:
            out["VmRSS"] += st.get("VmRSS", 0)
            out["VmHWM"] += st.get("VmHWM", 0)
            out["processes"] += 1
    return out


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS / VmHWM (kB) of one process."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    key, val = line.split(":", 1)
                    out[key] = int(val.split()[0])
    except OSError:
        pass
    return out


def reset_peak_rss(pid: int) -> bool:
    """Reset VmHWM (Linux: write 5 to clear_refs); False where not allowed."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def cpu_seconds(pid: int, reaped_children: bool = False) -> float:
    """utime + stime of one process (its threads included), in seconds; with
    `reaped_children`, plus the time of children it has waited for."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rpartition(")")[2].split()
        ticks = int(fields[11]) + int(fields[12])
        if reaped_children:
            ticks += int(fields[13]) + int(fields[14])
        return ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def descendants(pid: int) -> list[int]:
    """pid and all its descendants (by /proc/*/stat ppid)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                ppid = int(fh.read().rpartition(")")[2].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def tree_cpu_seconds(pid: int) -> float:
    return sum(cpu_seconds(p, reaped_children=True) for p in descendants(pid))


def tree_pss_kb(pid: int) -> int:
    """Proportional set size of a process tree (shared pages counted once)."""
    total = 0
    for p in descendants(pid):
        try:
            with open(f"/proc/{p}/smaps_rollup") as fh:
                for line in fh:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            pass
    return total
