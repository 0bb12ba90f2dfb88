"""Every CLI error path: one sentence on stderr, exit 2, nothing stored."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def cli(tmp_path):
    config = tmp_path / "relay.toml"
    config.write_text(f'[store]\npath = "{tmp_path / "relay.sqlite3"}"\n')

    def run(*args: str, input: bytes | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "relay", "--config", str(config), *args], cwd=tmp_path,
                              capture_output=True, input=input, timeout=60)

    run.db = tmp_path / "relay.sqlite3"  # type: ignore[attr-defined]
    return run


def rows(db: Path, table: str) -> int:
    con = sqlite3.connect(db)
    try:
        return con.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
    finally:
        con.close()


def assert_usage_error(result: subprocess.CompletedProcess, *words: str) -> None:
    assert result.returncode == 2, result
    err = result.stderr.decode()
    assert err.startswith("relay") and len(err.strip().splitlines()) == 1, err  # one sentence (CONTRACT.md)
    for word in words:
        assert word in err, err
    assert "Traceback" not in err


def test_seller_add_prints_json_and_normalises(cli):
    result = cli("seller", "add", "s1", "--name", "Sam's Shop", "--email", "Sam@Shop.EXAMPLE",
                 "--email", "orders@shop.example")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"seller": "s1", "name": "Sam's Shop",
                                         "emails": ["sam@shop.example", "orders@shop.example"]}


@pytest.mark.parametrize("bad", ["not-an-address", "a@b@c.example", "sam@", "@shop.example", "sam @shop.example",
                                 "sam@shop..example", "<sam@shop.example>", "sam@-shop.example"])
def test_seller_add_with_a_bad_address_stores_nothing(cli, bad):
    result = cli("seller", "add", "s1", "--name", "Shop", "--email", "ok@shop.example", "--email", bad)
    assert_usage_error(result, "--email")
    assert len(result.stderr.decode().strip().splitlines()) == 1
    assert rows(cli.db, "sellers") == 0


@pytest.mark.parametrize("name", ["rita@buyer.test", "Rita (RITA2@Buyer.test)", "Shop N <owner@shopn.example>",
                                  "Sam at sam@localhost"])
def test_a_name_holding_an_email_address_is_refused(cli, name):
    """A display name is shown to the other side: one that holds an address
    would either show it or, caught by the rewriter, get every message of
    that party refused with a reason the writer cannot act on.  So it is
    bad input, refused at once, and nothing is stored."""
    assert_usage_error(cli("seller", "add", "s1", "--name", name, "--email", "sam@shop.example"), "--name", "address")
    assert rows(cli.db, "sellers") == 0
    assert cli("seller", "add", "s1", "--name", "Shop@Home", "--email", "sam@shop.example").returncode == 0
    assert_usage_error(cli("order", "open", "o1", "--seller", "s1", "--buyer", "rita@buyer.test", "--buyer-name",
                           name), "--buyer-name", "address")
    assert rows(cli.db, "orders") == 0


@pytest.mark.parametrize("name", ["Evil\r\nBcc: x@y.example", "Tab\there", "Bell\x07", "Line\u2028break"])
def test_a_name_that_is_not_one_line_of_text_is_refused(cli, name):
    assert_usage_error(cli("seller", "add", "s1", "--name", name, "--email", "sam@shop.example"), "--name")
    assert rows(cli.db, "sellers") == 0
    cli("seller", "add", "s1", "--name", "Shop", "--email", "sam@shop.example")
    assert_usage_error(cli("order", "open", "o1", "--seller", "s1", "--buyer", "bob@buyer.test", "--buyer-name",
                           name), "--buyer-name")
    assert rows(cli.db, "orders") == 0


def test_order_open_mints_distinct_aliases_idempotently(cli):
    cli("seller", "add", "s1", "--name", "Shop", "--email", "sam@shop.example")
    first = json.loads(cli("order", "open", "o1", "--seller", "s1", "--buyer", "bob@buyer.test").stdout)
    again = json.loads(cli("order", "open", "o1", "--seller", "s1", "--buyer", "BOB@buyer.test").stdout)
    assert first == again
    assert set(first) == {"order", "buyer_alias", "seller_alias"}
    assert first["buyer_alias"] != first["seller_alias"]
    for alias in (first["buyer_alias"], first["seller_alias"]):
        local, domain = alias.split("@")
        assert domain == "relay.example" and len(local) >= 16 and local == local.lower()
    other = json.loads(cli("order", "open", "o2", "--seller", "s1", "--buyer", "bob@buyer.test").stdout)
    assert {other["buyer_alias"], other["seller_alias"]}.isdisjoint({first["buyer_alias"], first["seller_alias"]})


def test_order_open_errors(cli):
    assert_usage_error(cli("order", "open", "o1", "--seller", "ghost", "--buyer", "bob@buyer.test"), "ghost")
    cli("seller", "add", "s1", "--name", "Shop", "--email", "sam@shop.example")
    assert_usage_error(cli("order", "open", "o1", "--seller", "s1", "--buyer", "bob"), "--buyer")
    cli("order", "open", "o1", "--seller", "s1", "--buyer", "bob@buyer.test")
    assert_usage_error(cli("order", "open", "o1", "--seller", "s1", "--buyer", "eve@buyer.test"), "o1")
    assert_usage_error(cli("order", "open", "o9", "--seller", "s1"), "--buyer")
    assert rows(cli.db, "orders") == 1


def test_reserved_test_domains_are_valid_addresses(cli):
    cli("seller", "add", "s1", "--name", "Shop", "--email", "sam@shop.test", "--email", "x@localhost",
        "--email", "y@z.invalid", "--email", "w@v.example")
    for i, buyer in enumerate(["b@buyer.test", "b@localhost", "b@x.invalid", "b@y.example"]):
        result = cli("order", "open", f"o{i}", "--seller", "s1", "--buyer", buyer)
        assert result.returncode == 0, result.stderr


def test_an_address_that_needs_smtputf8_is_refused_where_mail_would_go_to_it(cli):
    """THREATS #57: the relay does not use SMTPUTF8 (RFC 6531), so it could
    never send to a UTF-8 local part: registering one is refused at once, in
    one sentence, instead of queueing mail that can never leave.  A UTF-8
    domain is fine: it has an ASCII form (IDNA)."""
    result = cli("seller", "add", "s1", "--name", "Shop", "--email", "jürgen@shop.example")
    assert_usage_error(result, "--email", "SMTPUTF8")
    assert len(result.stderr.decode().strip().splitlines()) == 1
    assert rows(cli.db, "sellers") == 0
    assert cli("seller", "add", "s1", "--name", "Shop", "--email", "sam@shöp.example").returncode == 0
    result = cli("order", "open", "o1", "--seller", "s1", "--buyer", "jürgen@buyer.test")
    assert_usage_error(result, "--buyer", "SMTPUTF8")
    assert rows(cli.db, "orders") == 0
    opened = cli("order", "open", "o1", "--seller", "s1", "--buyer", "bob@büyer.test")
    assert opened.returncode == 0, opened.stderr


def test_optout_add_list_remove(cli):
    assert cli("optout", "add", "Bob@Buyer.test").returncode == 0
    assert cli("optout", "list").stdout.decode().split() == ["bob@buyer.test"]
    assert cli("optout", "remove", "bob@buyer.test").returncode == 0
    assert cli("optout", "list").stdout == b""
    assert_usage_error(cli("optout", "remove", "bob@buyer.test"), "bob@buyer.test")
    assert_usage_error(cli("optout", "add", "bob"), "address")


def test_audit_and_queue_errors(cli):
    assert_usage_error(cli("audit", "show", "42"), "42")
    assert_usage_error(cli("audit", "show", "abc"))
    assert_usage_error(cli("audit", "show", "1", "--part", "sideways"))
    assert_usage_error(cli("queue", "retry", "7"), "7")
    assert cli("audit", "list", "--order", "missing", "--json").stdout == b""
    assert cli("queue", "list").returncode == 0


def test_usage_errors_exit_2(cli):
    assert_usage_error(cli())
    assert_usage_error(cli("frobnicate"))
    assert_usage_error(cli("seller", "add", "s1"))
    assert_usage_error(cli("filter", "test", "/no/such.eml", "--from", "a@b.example", "--to", "x@relay.example"))


def test_a_usage_error_names_the_command_and_its_help(cli):
    err = cli("seller", "add", "s1").stderr.decode()
    assert err.startswith("relay seller add: ") and "--name" in err and "relay seller add --help" in err, err


@pytest.mark.parametrize("args", [("optout", "list"), ("check-config",), ("seller", "add", "s1", "--name", "S",
                                                                          "--email", "s@shop.example")])
def test_a_reader_that_stops_early_gets_no_traceback(cli, tmp_path, args):
    """`relay audit list | head -1`: once the reader has gone, the command
    stops quietly (exit 1: not everything was written), as the shell's own
    tools do, with no Python traceback on stderr."""
    assert cli("optout", "add", "bob@buyer.test").returncode == 0
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader has gone before the first line
    try:
        result = subprocess.run([sys.executable, "-m", "relay", "--config", str(tmp_path / "relay.toml"), *args],
                                cwd=tmp_path, stdout=write_end, stderr=subprocess.PIPE, timeout=60)
    finally:
        os.close(write_end)
    assert result.returncode == 1 and result.stderr == b"", result.stderr.decode()


def test_config_flag_after_the_command_works(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text('[relay]\ndomain = "other.example"\n')
    result = subprocess.run([sys.executable, "-m", "relay", "check-config", "--config", str(config)],
                            capture_output=True, timeout=60)
    assert result.returncode == 0 and b"c.toml" in result.stdout


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "relay"
    result = subprocess.run([str(script), "--help"], capture_output=True, timeout=60)
    assert result.returncode == 0 and b"serve" in result.stdout


def test_filter_test_prints_findings_and_stores_nothing(cli, tmp_path):
    cli("seller", "add", "s1", "--name", "Shop", "--email", "sam@shop.example")
    aliases = json.loads(cli("order", "open", "o1", "--seller", "s1", "--buyer", "bob@buyer.test").stdout)
    eml = tmp_path / "m.eml"
    eml.write_text(f"From: sam@shop.example\nTo: {aliases['buyer_alias']}\nSubject: hi\n\n"
                   "Visit https://cheap-mugs.example/sale for a coupon: 20% off your next order!\n")
    result = cli("filter", "test", str(eml), "--from", "sam@shop.example", "--to", aliases["buyer_alias"])
    assert result.returncode == 0, result.stderr
    out = result.stdout.decode()
    assert "[link]" in out and "[promotion]" in out
    assert "verdict: rejected" in out
    assert "reply: 550 5.7.1 [link]" in out
    clean = tmp_path / "clean.eml"
    clean.write_text(f"From: sam@shop.example\nTo: {aliases['buyer_alias']}\nSubject: hi\n\nYour parcel left today.\n")
    out = cli("filter", "test", str(clean), "--from", "sam@shop.example", "--to", aliases["buyer_alias"]).stdout
    assert b"findings: none" in out and b"verdict: accepted" in out
    assert rows(cli.db, "audit") == 0 and rows(cli.db, "queue") == 0
    assert_usage_error(cli("filter", "test", str(clean), "--from", "sam@shop.example", "--to", "nobody@relay.example"))
