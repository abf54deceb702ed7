"""nativeguard's engine, which names no SDK: scopes, release steps, the reaper, ``@guarded``.

What is here: the release engine (``_scope``), release steps per type
(``_adapters``), the off-thread teardown (``_reaper``), ``@guarded``
(``_guarded``), the proxies handed out for managed objects (``_proxy``,
``_managed``), the constructor hook (``_construction``), the seam every SDK is
described through (``_integration``), and what they share: exceptions
(``_errors``), redaction (``_redact``), the heap (``_malloc``) and holder
chains (``_holders``). Nothing here imports an integration or an SDK
(tests/core/test_integration_seam.py parses the imports). The public faces
(``nativeguard``, ``nativeguard.verify``, ``nativeguard.isolate``) re-export
what users need; import from them, not from here.
"""
