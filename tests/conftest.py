"""Fixtures shared by the whole test suite."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hub_resilience.tools.check_config import OFFLINE_KUBECONFIG


@pytest.fixture(scope="session")
def offline_kubeconfig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A kubeconfig that KubeSpawner can load without a cluster.

    KubeSpawner loads its client configuration when a spawner is constructed, even when a
    test only builds pod manifests (which makes no API call). The server address is a closed
    loopback port, so a test that did call the API would fail loudly rather than reach
    anything.
    """
    import kubernetes_asyncio.config.kube_config as kube_config

    path = tmp_path_factory.mktemp("kube") / "config"
    path.write_text(OFFLINE_KUBECONFIG)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KUBECONFIG", str(path))
        # kubernetes_asyncio reads $KUBECONFIG once, when it is first imported (which another
        # test may have done already), so its default location is pointed here as well.
        patch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(path))
        yield path


@pytest.fixture
def make_spawner(offline_kubeconfig: Path) -> Callable[..., object]:
    """Build a real ResilientKubeSpawner (with KubeSpawner's mock user and hub) from traits."""
    from traitlets.config import Config

    from hub_resilience.hub.spawner import ResilientKubeSpawner
    from hub_resilience.settings import HubResilience

    def factory(config: dict | None = None, **traits: object) -> ResilientKubeSpawner:
        """``config``: ResilientKubeSpawner traits, and HubResilience traits (the activity
        sizing the spawner reads from the hub's config), each set in its own section."""
        c = Config()
        for name, value in (config or {}).items():
            section = "HubResilience" if HubResilience.class_traits().get(name) else (
                "ResilientKubeSpawner"
            )
            c[section][name] = value
        return ResilientKubeSpawner(_mock=True, config=c, **traits)

    return factory
