"""``python -m hub_resilience.service``: the command line configure() gives the hub."""
import sys

from hub_resilience.service.commands import ServiceApp

sys.exit(ServiceApp.main())
