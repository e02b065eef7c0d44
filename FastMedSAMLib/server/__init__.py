"""The FastMedSAM HTTP server (FastAPI): `create_app(settings)` serves Sessions to `RemoteSession` clients.

`settings` (FASTMEDSAM_ environment), `auth` (named bearer tokens, constant-time), `stores` (image blobs and
sessions, LRU by bytes, idle eviction), `pool` (one warm Session per model, a lock per model), `jobs` (long
predictions polled and cancellable), `routes/` (one router per topic), `app` (the factory and the error handler).
"""
