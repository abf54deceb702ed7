"""A gunicorn config with nativeguard: web workers retire between requests by native growth.

Instead of ``max_requests`` (a restart every N requests, leaking or not), each
worker is judged after every request by the WorkerPool policy: gc +
``malloc_trim`` first, then growth since its first request and the fitted
growth slope. A worker that leaks finishes its request, exits through
gunicorn's graceful path and the arbiter starts a fresh one.

Run (sync workers, or ``-k uvicorn_worker.UvicornWorker`` with an ASGI app):

    gunicorn -c examples/gunicorn_conf.py --chdir examples web_app:application
"""

import nativeguard.gunicorn

bind = "127.0.0.1:8000"
workers = 2
nativeguard.gunicorn.install(globals(), max_growth_mb=150, growth_slope_mb_per_task=0.5)
