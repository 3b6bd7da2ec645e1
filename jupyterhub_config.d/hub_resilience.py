# hub-resilience drop-in for JupyterHub's config directory.
#
# zero-to-jupyterhub runs every *.py file in /usr/local/etc/jupyterhub/jupyterhub_config.d
# with the hub's config object `c` in scope; any other jupyterhub_config.py can do the same
# with exec(). This calls hub_resilience.configure(c, ...) with the options read from the
# HUB_RESILIENCE_<OPTION> environment variables (docs/configuration.md lists them);
# HUB_RESILIENCE_ENABLED=false turns it off.
from hub_resilience.configure import configure_from_environment

configure_from_environment(c)  # noqa: F821 - `c` comes from the file that runs this one
