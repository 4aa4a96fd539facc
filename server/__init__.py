"""EarlyTom front end: an OpenAI-compatible server in front of vLLM backends running the plugin.

Installed as ``earlytom_server`` (``server/`` in the repository). Importing this package is cheap;
the pieces live in their own modules:

- :mod:`earlytom_server.settings`  -- every knob, from the environment (``EARLYTOM_*``) or the CLI
- :mod:`earlytom_server.schemas`   -- the request fields accepted, plus the ``earlytom`` extension
- :mod:`earlytom_server.errors`    -- OpenAI-shaped errors
- :mod:`earlytom_server.media`     -- video/image checks (decoding as the engine does, size), frames-as-video
- :mod:`earlytom_server.media_sources` -- http(s) fetching (public addresses only) and file:// paths
- :mod:`earlytom_server.proxy`     -- backend pool, health, fewest-in-flight routing, relaying
- :mod:`earlytom_server.supervisor`-- the vLLM child process started when no backend URL is given
- :mod:`earlytom_server.metrics`   -- the ``earlytom_*`` Prometheus metrics
- :mod:`earlytom_server.app`       -- ``create_app(settings)``: the routes
- :mod:`earlytom_server.frontend`  -- request handling behind them: auth, admission, forwarding
- :mod:`earlytom_server.prepare`   -- request bodies read, checked and rewritten for the backend
- :mod:`earlytom_server.relay`     -- streamed answers relayed and counted
- :mod:`earlytom_server.openapi`   -- the published API: ``/openapi.json``, ``/docs``, ``/redoc``
- :mod:`earlytom_server.cli`       -- ``earlytom-serve``
"""
