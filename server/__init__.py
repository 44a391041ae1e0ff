"""The HTTP service: requests in, searched programs out.

In: JSON requests (``/v1/solve``, OpenAI-style ``/v1/completions`` and ``/v1/chat/completions``,
admin hot-swap), configuration from `Settings` (``RESTRL_*`` environment or `restrl serve` flags).
Out: programs with their value, candidates, usage and the model versions that served them (JSON or
Server-Sent Events), Prometheus metrics, readiness. Inside: the wire protocol (`server.protocol`),
the one list of errors (`server.errors`), OpenAI token streaming (`server.streaming`), the active
model pair and hot swap (`server.registry`), admission control and deadlines (`server.admission`,
`server.services`), and the search strategies of `search` run on the engines of `models`. Nothing imports `server`.
"""

from server.app import build_app
from server.services import Services
from server.settings import Settings

__all__ = ["Settings", "Services", "build_app"]
