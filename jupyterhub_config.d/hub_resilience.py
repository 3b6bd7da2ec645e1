# hub-resilience drop-in for JupyterHub's config directory.
#
# zero-to-jupyterhub runs every *.py file in /usr/local/etc/jupyterhub/jupyterhub_config.d
# with the hub's config object `c` in scope, after it has loaded hub.config; any other
# jupyterhub_config.py can do the same with exec(). configure(c) reads its options from
# c.HubResilience (z2jh: hub.config.HubResilience) and the culler's from c.Culler
# (hub.config.Culler); hub.config.HubResilience.enabled: false turns it off.
from hub_resilience import configure

configure(c)  # noqa: F821 - `c` comes from the file that runs this one
