"""Meshmarket's OpenAI-compatible gateway (`mesh serve`): any application that speaks OpenAI's API
gets verified, paid answers from the market, and a page to watch the market.

    backend.py    the interface to the market: Backend, CompletionRequest, Completion, GatewayError
    config.py     GatewayConfig (caps, key, limits)
    schema.py     OpenAI request validation; response and chunk shapes
    http.py       one ASGI exchange; JSON, SSE, host checks
    app.py        the ASGI application: routes, auth, SSE streaming, spending, the explorer's files
    spending.py   per-request and per-day (UTC) spending caps
    streaming.py  which seat's text a stream may show before the seats are compared
    catalog.py    models, offers and manifests, kept warm
    lanes.py      several queries of one account at once (transactions, job slots)
    dispatch.py   Dispatcher: one verified, paid query per request (consumer.ask), its errors by code
    receipts.py   from a Receipt to an OpenAI answer, usage and the `meshmarket` field
    snapshot.py   the explorer's data (ledger, catalog, observations)
    serve.py      hypercorn's trio worker in the caller's loop
    runner.py     run_gateway: node, backend, HTTP, until a graceful stop
    explorer/     the market explorer page (HTML, JS, CSS; no build step, no CDN)

docs/GATEWAY.md has the how-to, the settings, the errors and the decisions.
"""
