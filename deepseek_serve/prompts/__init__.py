"""DeepSeek knowledge with no HTTP in it: which variant is served and its special tokens
(``variant``), the verified tokenizer and its self-check (``tokenizer``), turning requests into
checked token ids (``builder``), packing repository context into the window (``packing``) and
request priorities (``scheduling``).

Imports: ``templates``, ``engine`` (its data types), ``errors``, ``settings``. Never ``http`` or
``routes``.
"""
