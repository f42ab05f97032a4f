"""What the tests and the benchmarks share: real parts, started and stopped for them.

* ``ports.free_port`` — a TCP port on 127.0.0.1 that nothing listens on;
* ``waiting.poll_until`` — a bounded poll (a count, never a timing assertion);
* ``serve.ServeProcess`` — ``trainvitals serve`` in a subprocess on a free port;
* ``browser`` — Debian's Chromium, launched headless the one way that works here;
* ``postgres.PostgresCluster`` — a throwaway PostgreSQL cluster on 127.0.0.1.

The benchmarks import it as ``tests.support`` (``bench/common.py`` puts the repository root on
``sys.path``); the tests too (``python -m pytest`` runs from the repository root).
"""
