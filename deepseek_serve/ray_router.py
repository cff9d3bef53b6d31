"""Ray Serve request router for code completion: cache affinity within bounds on load.

vLLM's prefix cache only helps when a prompt lands on a replica that already holds its prefix.
Editor traffic is very repetitive: completions in one file share the file's head (FIM prompts
start with the code before the cursor), the files of one repository share its context, and one
editor session keeps coming back. So:

1. a request with a session key (the OpenAI ``user`` field) goes to the replica that session used
   before;
2. otherwise, to the replica known to hold the longest prefix of its token ids (ties: the less
   loaded), if that prefix covers at least ``min_match`` of the prompt;
3. otherwise (a prefix no replica holds) to the replica with the smallest share of recent requests
   among those within ``imbalance`` requests in flight of the least loaded, so that files spread
   evenly; without affinity, to the least-loaded replica.

Affinity yields to load, in two ways, but an idle replica (nothing in flight) always keeps its
hits, so a session on an idle system never moves. A replica whose share of recent requests
(counted with exponential decay over about ``window`` requests) would exceed ``balance`` times
the mean takes none for its cache alone: consistent hashing with bounded loads (Mirrokni, Thorup
and Zadimoghaddam, SODA 2018; HAProxy's ``hash-balance-factor``), over a window of requests
rather than requests in flight, so that a short burst into one file does not throw its hits
away but a lasting hot spot does spill. A hot prefix (most editors in one repository) thus
spills onto a second replica, which then holds it too, and later requests for it choose among
both. And a replica running more than ``imbalance`` requests beyond the least-loaded one takes
none either (bursts).

Prefixes are remembered as chained hashes of fixed-size token blocks (``block`` tokens each, like
vLLM's own cache blocks) in a bounded LRU table; each block hash keeps the replicas that served it.
Load is the number of requests this router has in flight on each replica, and each replica's
share of the requests it routed lately. The router lives in the process that holds the
deployment handle (the HTTP server), so it sees every request that server sends.

Ray Serve calls ``choose_replicas`` and the ``on_*`` hooks; the ranks it gets back are tried in
order, each one subject to the replica's ``max_ongoing_requests``.
"""

from __future__ import annotations

import math
import random
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from ray.serve.request_router import PendingRequest, ReplicaID, RequestRouter, RunningReplica

DEFAULT_BLOCK = 16
DEFAULT_BALANCE = 1.25  # a replica's share of recent requests: at most 1.25x the mean
DEFAULT_WINDOW = 100  # "recent": each request routed decays earlier ones by 1 - 1/100
DEFAULT_IMBALANCE = 8  # requests in flight beyond the least-loaded replica's
DEFAULT_TABLE_SIZE = 200_000  # block hashes remembered (a few MB)
MAX_BLOCKS = 8192  # hashed per prompt (128k tokens of 16)
EARLY_COMPLETIONS_KEPT = 4096  # ids completed before routed (refused ones never are: bounded)


def block_hashes(token_ids: Sequence[int], block: int, limit: int) -> list[int]:
    """Chained hashes of the first full ``block``-token blocks: ``h[i]`` names the prefix
    ``token_ids[: (i + 1) * block]``; at most ``limit`` of them."""
    out: list[int] = []
    prev = 0
    for start in range(0, min(len(token_ids) // block, limit) * block, block):
        prev = hash((prev, tuple(token_ids[start : start + block])))
        out.append(prev)
    return out


def request_keys(pending: PendingRequest | None) -> tuple[list[int], str | None]:
    """The prompt token ids and session key of an ``EngineReplica.generate`` call."""
    if pending is None or len(pending.args) < 3:
        return [], None
    _, token_ids, options = pending.args[:3]
    return list(token_ids), getattr(options, "session", None)


class AffinityRouter(RequestRouter):
    """Session and prefix affinity within bounds on load; see the module docstring."""

    def initialize_state(
        self,
        affinity: bool = True,
        block: int = DEFAULT_BLOCK,
        min_match: float = 0.1,
        balance: float = DEFAULT_BALANCE,
        window: int = DEFAULT_WINDOW,
        imbalance: int = DEFAULT_IMBALANCE,
        table_size: int = DEFAULT_TABLE_SIZE,
        **kwargs: Any,
    ) -> None:
        self.affinity = affinity
        self.block = block
        self.min_match = min_match
        self.balance = balance  # 0: no bound on a replica's share of recent requests
        self.decay = 1.0 - 1.0 / max(window, 1)
        self.imbalance = imbalance
        self.table_size = table_size
        # block hash -> the replicas that served it, the most recent last
        self.prefixes: OrderedDict[int, dict[ReplicaID, None]] = OrderedDict()
        self.sessions: OrderedDict[str, ReplicaID] = OrderedDict()
        self.load: dict[ReplicaID, int] = {}  # requests in flight
        self.share: dict[ReplicaID, float] = {}  # requests routed, decayed per request routed
        self.routed: dict[str, ReplicaID] = {}  # internal request id -> replica
        # Ray Serve registers the completion callback before it confirms the routing: a quick
        # request can complete before it is routed. Those ids wait here so their routing does
        # not count load that never ends (which would starve that replica of new requests).
        self.completed_early: OrderedDict[str, None] = OrderedDict()

    # --- choosing ---

    def with_room(self, replicas: list[ReplicaID]) -> list[ReplicaID]:
        """The replicas that may take a request for their cache alone: an idle one (nothing in
        flight: the request costs no one anything there, and a session on an idle system never
        moves); else one within ``balance`` times the mean share of recent requests (counting
        this one) and within ``imbalance`` requests in flight of the least loaded."""
        least = min((self.load.get(r, 0) for r in replicas), default=0)
        shares = [self.share.get(r, 0.0) for r in replicas]
        # Rounded up, as bounded loads do: someone always has room, the first requests included.
        bound = math.ceil(self.balance * (sum(shares) + 1) / max(len(replicas), 1))
        room = []
        for r, share in zip(replicas, shares, strict=True):
            load = self.load.get(r, 0)
            if load == 0 or (
                (self.balance <= 0 or share + 1 <= bound) and load - least <= self.imbalance
            ):
                room.append(r)
        return room

    def matches(self, token_ids: list[int]) -> dict[ReplicaID, int]:
        """Per replica, how many leading tokens of ``token_ids`` it is known to hold."""
        depth: dict[ReplicaID, int] = {}
        live: set[ReplicaID] | None = None
        for i, h in enumerate(block_hashes(token_ids, self.block, MAX_BLOCKS)):
            owners = self.prefixes.get(h)
            if not owners:
                break
            live = set(owners) if live is None else live.intersection(owners)
            if not live:
                break
            for replica in live:
                depth[replica] = (i + 1) * self.block
        return depth

    def preferred(
        self, token_ids: list[int], session: str | None, room: list[ReplicaID] | None = None
    ) -> ReplicaID | None:
        """The replica affinity picks among ``room`` (all known replicas when None), or None."""
        if not self.affinity:
            return None
        if session is not None and session in self.sessions:
            owner = self.sessions[session]
            if room is None or owner in room:
                return owner
        depth = self.matches(token_ids)
        fits = {r: d for r, d in depth.items() if room is None or r in room}
        if not fits:
            return None
        # The longest match; among equal ones, the fewest in flight, then the smaller share.
        best = min(fits, key=lambda r: (-fits[r], *self._busy(r)))
        return best if fits[best] >= self.min_match * len(token_ids) else None

    def _busy(self, replica: ReplicaID) -> tuple[int, float]:
        """Requests in flight, then share of recent requests: the order "less loaded" means."""
        return self.load.get(replica, 0), self.share.get(replica, 0.0)

    async def choose_replicas(
        self,
        candidate_replicas: list[RunningReplica],
        pending_request: PendingRequest | None = None,
    ) -> list[list[RunningReplica]]:
        if pending_request is not None:
            pending_request.routing_context.should_backoff = True
        if not candidate_replicas:
            return []
        shuffled = random.sample(candidate_replicas, len(candidate_replicas))  # ties: any
        by_load = sorted(shuffled, key=lambda r: self._busy(r.replica_id))
        if self.affinity:
            room = self.with_room([r.replica_id for r in by_load])
            want = self.preferred(*request_keys(pending_request), room=room)
            if want is None:
                # A prefix no replica holds: it will draw its followers where it lands, so it
                # goes to the smallest share of recent requests among the replicas within
                # ``imbalance`` of the least loaded (files spread evenly, not by the moment's
                # in-flight counts).
                least = self.load.get(by_load[0].replica_id, 0)
                near = [
                    r.replica_id
                    for r in by_load
                    if self.load.get(r.replica_id, 0) - least <= self.imbalance
                ]
                want = min(near, key=lambda r: self.share.get(r, 0.0))
            first = [r for r in by_load if r.replica_id == want]
            rest = [r for r in by_load if r.replica_id != want]
            return [first, *([rest] if rest else [])]
        # Least-loaded first, then everyone (Serve picks the shortest queue within a rank).
        return [[by_load[0]], by_load]

    # --- bookkeeping (called by Ray Serve) ---

    def on_request_routed(
        self, pending_request: PendingRequest, replica_id: ReplicaID, result: Any
    ) -> None:
        request_id = pending_request.metadata.internal_request_id
        if request_id in self.completed_early:
            del self.completed_early[request_id]  # already over: no load to count
        else:
            self.load[replica_id] = self.load.get(replica_id, 0) + 1
            self.routed[request_id] = replica_id
        for rid in self.share:
            self.share[rid] *= self.decay
        self.share[replica_id] = self.share.get(replica_id, 0.0) + 1.0
        if not self.affinity:
            return
        token_ids, session = request_keys(pending_request)
        if session is not None:
            self._remember(self.sessions, session, replica_id)
        for h in block_hashes(token_ids, self.block, MAX_BLOCKS):
            owners = self.prefixes.get(h)
            if owners is None:
                owners = self.prefixes[h] = {}
            owners.pop(replica_id, None)
            owners[replica_id] = None
            self.prefixes.move_to_end(h)
        while len(self.prefixes) > self.table_size:
            self.prefixes.popitem(last=False)

    def on_request_completed(self, replica_id: ReplicaID, internal_request_id: str) -> None:
        if self.routed.pop(internal_request_id, None) is not None:
            self.load[replica_id] = max(0, self.load.get(replica_id, 0) - 1)
        else:  # before its routing was confirmed, or refused by the replica (never routed)
            self._remember_early(internal_request_id)

    def _remember_early(self, request_id: str) -> None:
        self.completed_early[request_id] = None
        while len(self.completed_early) > EARLY_COMPLETIONS_KEPT:
            self.completed_early.popitem(last=False)

    def on_replica_actor_died(self, replica_id: ReplicaID) -> None:
        super().on_replica_actor_died(replica_id)
        self._forget({replica_id})

    def update_replicas(self, replicas: list[RunningReplica]) -> None:
        super().update_replicas(replicas)
        alive = {r.replica_id for r in replicas}
        self._forget(set(self.load) - alive)

    def _forget(self, gone: set[ReplicaID]) -> None:
        if not gone:
            return
        for h, owners in list(self.prefixes.items()):
            for rid in gone.intersection(owners):
                del owners[rid]
            if not owners:
                del self.prefixes[h]
        for session in [k for k, v in self.sessions.items() if v in gone]:
            del self.sessions[session]
        for rid in gone:
            self.load.pop(rid, None)
            self.share.pop(rid, None)
        for req in [k for k, v in self.routed.items() if v in gone]:
            del self.routed[req]

    def _remember(self, table: OrderedDict[str, ReplicaID], key: str, replica: ReplicaID) -> None:
        table[key] = replica
        table.move_to_end(key)
        while len(table) > self.table_size:
            table.popitem(last=False)
