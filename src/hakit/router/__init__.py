"""The built-in HTTP/1.1 reverse proxy: forwards users to the node that may serve.

- pool.py      which node gets a request: modes, drains, sticky_down policy (pure)
- balance.py   new users: least-outstanding / round robin, slow start (pure)
- sticky.py    the three sticky strategies: cookie reading and rewriting
- secret.py    the cluster secret that signs the lb-cookie (created once, race-free)
- headers.py   header rewriting and body framing rules (pure)
- pages.py     the maintenance page and error answers
- http.py      client connections (httptools parser, pipelining, limits)
- exchange.py  one request/response: backend choice, streaming, backpressure
- seams.py     what an exchange needs from its router and its client connection (protocols)
- upstream.py  backend connections and the keep-alive pool
- server.py    the Router: listening, cluster-state refresh, passive down marks
- accesslog.py the access log (common, combined, json; buffered writer thread)
- metrics.py   per-node counters and latency histograms, Prometheus text format
- admin.py     the admin port: /metrics and /nodes; the router's view for `hakit status`
- health.py    the check state machine (fall/rise/drain) and the HealthBoard (pure)
- checks.py    the router's own /status checks of each node; TCP and send/expect checks
- tcp.py       the TCP failover proxy (`[[tcp_proxy]]`), sharing health.py
- native.py    the compiled (mypyc) or pure choice of the per-request modules

The per-request modules run compiled (mypyc) when a fresh build exists: see
native.py. The next line decides, before any of them is imported.
"""

from hakit.router.native import use_compiled

__path__ = use_compiled(__path__, __file__)

from hakit.router.hooks import ExchangeHooks
from hakit.router.limits import ProxyLimits
from hakit.router.pool import choose_backend, eligible_backends
from hakit.router.server import Router, run_router

__all__ = [
    "ExchangeHooks",
    "ProxyLimits",
    "Router",
    "choose_backend",
    "eligible_backends",
    "run_router",
]
