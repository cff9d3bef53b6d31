"""Ray Serve request router for code completion: cache affinity first, least-loaded otherwise.

vLLM's prefix cache only helps when a prompt lands on the replica that already holds its prefix.
Editor traffic is very repetitive: completions in one file share the file's head (FIM prompts
start with the code before the cursor), and one editor session keeps coming back. So:

1. a request with a session key (the OpenAI ``user`` field) goes to the replica that session used
   before;
2. otherwise, to the replica that most recently served the longest known prefix of its token ids,
   if that prefix covers at least ``min_match`` of the prompt;
3. otherwise (or when the preferred replica is busier than the least-loaded one by more than
   ``imbalance``) to the least-loaded replica.

Prefixes are remembered as chained hashes of fixed-size token blocks (``block`` tokens each, like
vLLM's own cache blocks) in a bounded LRU table. Load is the number of requests this router has in
flight on each replica. The router lives in the process that holds the deployment handle (the
HTTP server), so the table sees every request that server sends.

Ray Serve calls ``choose_replicas`` and the ``on_*`` hooks; the ranks it gets back are tried in
order, each one subject to the replica's ``max_ongoing_requests``.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from ray.serve.request_router import PendingRequest, ReplicaID, RequestRouter, RunningReplica

DEFAULT_BLOCK = 16
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
    """Session and prefix affinity with a load guard; see the module docstring."""

    def initialize_state(
        self,
        affinity: bool = True,
        block: int = DEFAULT_BLOCK,
        min_match: float = 0.1,
        imbalance: int = 8,
        table_size: int = DEFAULT_TABLE_SIZE,
        **kwargs: Any,
    ) -> None:
        self.affinity = affinity
        self.block = block
        self.min_match = min_match
        self.imbalance = imbalance
        self.table_size = table_size
        self.prefixes: OrderedDict[int, ReplicaID] = OrderedDict()
        self.sessions: OrderedDict[str, ReplicaID] = OrderedDict()
        self.load: dict[ReplicaID, int] = {}
        self.routed: dict[str, ReplicaID] = {}  # internal request id -> replica
        # Ray Serve registers the completion callback before it confirms the routing: a quick
        # request can complete before it is routed. Those ids wait here so their routing does
        # not count load that never ends (which would starve that replica of new requests).
        self.completed_early: OrderedDict[str, None] = OrderedDict()

    # --- choosing ---

    def preferred(self, token_ids: list[int], session: str | None) -> ReplicaID | None:
        if not self.affinity:
            return None
        if session is not None and session in self.sessions:
            return self.sessions[session]
        best: ReplicaID | None = None
        matched = 0
        for i, h in enumerate(block_hashes(token_ids, self.block, MAX_BLOCKS)):
            owner = self.prefixes.get(h)
            if owner is None:
                break
            best, matched = owner, (i + 1) * self.block
        if best is None or matched < self.min_match * len(token_ids):
            return None
        return best

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
        by_load = sorted(shuffled, key=lambda r: self.load.get(r.replica_id, 0))
        least = self.load.get(by_load[0].replica_id, 0)
        want = self.preferred(*request_keys(pending_request))
        for replica in by_load:
            if replica.replica_id == want:
                if self.load.get(want, 0) - least <= self.imbalance:
                    rest = [r for r in by_load if r.replica_id != want]
                    return [[replica], *([rest] if rest else [])]
                break
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
        if not self.affinity:
            return
        token_ids, session = request_keys(pending_request)
        if session is not None:
            self._remember(self.sessions, session, replica_id)
        for h in block_hashes(token_ids, self.block, MAX_BLOCKS):
            self._remember(self.prefixes, h, replica_id)

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
        for h in [k for k, v in self.prefixes.items() if v in gone]:
            del self.prefixes[h]
        for session in [k for k, v in self.sessions.items() if v in gone]:
            del self.sessions[session]
        for rid in gone:
            self.load.pop(rid, None)
        for req in [k for k, v in self.routed.items() if v in gone]:
            del self.routed[req]

    def _remember(self, table: OrderedDict[Any, ReplicaID], key: Any, replica: ReplicaID) -> None:
        table[key] = replica
        table.move_to_end(key)
        while len(table) > self.table_size:
            table.popitem(last=False)
