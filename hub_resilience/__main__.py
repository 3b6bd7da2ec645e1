"""``python -m hub_resilience`` runs the ``hub-resilience`` command."""
import sys

from hub_resilience.tools.cli import main

sys.exit(main())
