"""The built-in HTTP/1.1 reverse proxy: forwards users to the node that may serve.

- pool.py      which node gets a request (pure)
- headers.py   header rewriting and body framing rules (pure)
- pages.py     the maintenance page and error answers
- http.py      client connections (httptools parser, pipelining, limits)
- exchange.py  one request/response: backend choice, streaming, backpressure
- upstream.py  backend connections and the keep-alive pool
- server.py    the Router: listening, cluster-state refresh, passive down marks
"""

from hakit.router.exchange import ExchangeHooks
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
