"""``python -m fuller``: the same CLI as the ``fuller`` console script."""

from fuller.cli import main

raise SystemExit(main())
