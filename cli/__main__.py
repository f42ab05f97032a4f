"""``python -m trainvitals.cli``: the ``trainvitals`` command."""

from trainvitals.cli.main import main

raise SystemExit(main())
