"""Alias lookups answered from memory while they are known to be current.

Every RCPT to an alias needs the order, whose alias it is, and the seller
with its approved addresses.  Read from SQLite that is a trip to the store's
reader thread and back, which under load cost the event loop 100-250 µs of
CPU a message, more than the query itself; an answer from memory costs a
dict lookup.

What an alias names never changes (aliases are minted once and never reused
or reassigned), but a seller's name and addresses and an order's buyer name
do.  The store counts such changes (`parties_version`, bumped by triggers
whatever program made the change).  A remembered answer is used only if:

- no relay process (the CLI included) has committed a newer version: the
  committing writer notes it in the write-turn file, which is read here
  (relay.storelock), so a change made with the CLI reaches the next RCPT;
- it was read at the newest version this process has seen, and that version
  was seen, by a lookup or by one of this process's commits (every few
  milliseconds under load), less than FRESH_FOR seconds ago: a change made
  by another program (sqlite3) reaches RCPT within FRESH_FOR.

A message accepted or refused on a remembered answer is still checked
against the store: its commit carries the version and fails with
StaleParties (writing nothing) if the parties changed in between; the
pipeline then looks the alias up again and judges the message again.  A
refusal at RCPT is only ever made on a fresh read (`fresh`).

Unknown aliases are not remembered: a new order's aliases work at once, a
client guessing aliases cannot fill the memory, and every local part that
names no alias still costs the same store lookup (THREATS #33: the same
reply and the same work for whatever is not an alias; a known alias is told
apart by its 250 anyway).  At most MAX_ENTRIES
answers are kept, the least recently used dropped first.
"""

from __future__ import annotations

import time

from relay.aliases import looks_like_alias
from relay.store import AliasMatch, Store

FRESH_FOR = 0.1  # seconds: how old the newest seen version may be for a remembered answer
MAX_ENTRIES = 8192  # about 1 KB each


class AliasCache:
    def __init__(self, store: Store, fresh_for: float = FRESH_FOR, max_entries: int = MAX_ENTRIES):
        self.store = store
        self.fresh_for = fresh_for
        self.max_entries = max_entries
        self._entries: dict[str, AliasMatch] = {}
        self.hits = 0  # for tests and benchmarks
        self.reads = 0

    async def find(self, local: str, fresh: bool = False) -> AliasMatch | None:
        """The match of a lowercased local part, from memory if current, else
        from the store; `fresh` always reads the store.  A local part that
        cannot be an alias is still looked up (as one that matches nothing):
        the same work whatever its shape (THREATS #33)."""
        local = local if looks_like_alias(local) else "\x00" + local[:64]
        if not fresh:
            remembered = self._current(local)
            if remembered is not None:
                self.hits += 1
                return remembered
        self.reads += 1
        match = await self.store.find_alias(local)
        if match is None:
            self._entries.pop(local, None)
        else:
            self._remember(local, match)
        return match

    def _current(self, local: str) -> AliasMatch | None:
        match = self._entries.get(local)
        if match is None:
            return None
        version, seen_at = self.store.parties_seen
        if match.parties_version != version or time.monotonic() - seen_at > self.fresh_for \
                or match.parties_version < self.store.parties_version_noted():
            return None
        self._entries[local] = self._entries.pop(local)  # most recently used goes last
        return match

    def _remember(self, local: str, match: AliasMatch) -> None:
        self._entries.pop(local, None)
        while len(self._entries) >= self.max_entries:
            del self._entries[next(iter(self._entries))]
        self._entries[local] = match
