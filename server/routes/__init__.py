"""HTTP handlers, one module per group: `solve` (/v1/solve), `openai` (/v1/completions,
/v1/chat/completions, /v1/models), `admin` (/admin/models...), `ops` (/health, /ready, /metrics)."""
