"""The HTTP machinery every dialect shares: what a request passes before a route (``gate``:
caps, ``auth`` keys, ``quotas``), request ids, metrics and logs (``observability``), SSE and
disconnects (``streaming``), editor sessions (``sessions``), the engine with bookkeeping
(``tracking``), the routes' shared ``state`` and the server's ``lifecycle``.

Imports: ``prompts``, ``engine``, ``errors``, ``settings``. Never ``routes``.
"""
