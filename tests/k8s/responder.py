"""Stand-in for the notebook servers of the local cluster's pods.

KWOK makes pods *look* Running, but no container runs, so nothing would answer the hub's
readiness check on ``http://<podIP>:<port>/``. This process watches the pods of one namespace
and, for every container that KWOK reports as running, serves HTTP on ``podIP:containerPort``
(every TCP port the pod spec declares; KubeSpawner declares 8888), answering 200 on any path.
It stops serving when the container stops running, the pod is being deleted, or the pod is
gone -- so a deleted user server really becomes unreachable.

Pod addresses are in 127.0.0.0/8 (the nodes' podCIDRs), which Linux routes to the loopback
interface: binding them needs no privileges. Addresses outside loopback are never bound.

Runs as its own process (started by tests/k8s/cluster.py) so the test process's event loop
being busy or blocked can never make a "user server" unreachable::

    python tests/k8s/responder.py --kubeconfig admin.kubeconfig --namespace hub \\
        --health-address 127.0.0.1:8099

``GET /healthz`` on the health address answers 200 once the first pod list is processed;
``GET /endpoints`` lists what is served. Only the standard library, tornado and PyYAML.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import ipaddress
import json
import logging
import ssl
import sys
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import tornado.httpclient
import tornado.httpserver
import tornado.web
import yaml

try:  # Look like the jupyterhub-singleuser the hub expects, so it logs no version warning.
    from jupyterhub._version import __version__ as JUPYTERHUB_VERSION
except ImportError:  # pragma: no cover - the responder also works without JupyterHub
    JUPYTERHUB_VERSION = None

log = logging.getLogger("responder")

#: The pod annotation the KWOK stages read too (tests/k8s/stages); "no-server" is ours alone.
SIMULATE_ANNOTATION = "hub-resilience.test/simulate"
NO_SERVER = "no-server"

WATCH_SECONDS = 240
RETRY_SECONDS = 1.0


@dataclass(frozen=True)
class Endpoint:
    """One address a running container listens on."""

    ip: str
    port: int


@dataclass(frozen=True)
class Owner:
    """Which pod and container an endpoint belongs to."""

    namespace: str
    pod: str
    uid: str
    container: str

    def describe(self) -> dict[str, str]:
        return {
            "namespace": self.namespace,
            "pod": self.pod,
            "uid": self.uid,
            "container": self.container,
        }


def pod_endpoints(pod: Mapping[str, Any]) -> dict[Endpoint, Owner]:
    """The endpoints a pod would have listening, judged from its spec and status alone:
    running containers' declared TCP ports on the pod IP; nothing while the pod is being
    deleted, not Running, or has an address outside loopback, nor for a pod annotated
    ``hub-resilience.test/simulate: no-server`` (a server that never starts listening)."""
    metadata = pod.get("metadata") or {}
    status = pod.get("status") or {}
    spec = pod.get("spec") or {}
    ip = status.get("podIP")
    if metadata.get("deletionTimestamp") or status.get("phase") != "Running" or not ip:
        return {}
    if (metadata.get("annotations") or {}).get(SIMULATE_ANNOTATION) == NO_SERVER:
        return {}
    try:
        if not ipaddress.ip_address(ip).is_loopback:
            return {}
    except ValueError:
        return {}
    running = {
        container_status.get("name")
        for container_status in status.get("containerStatuses") or []
        if (container_status.get("state") or {}).get("running") is not None
    }
    endpoints: dict[Endpoint, Owner] = {}
    for container in spec.get("containers") or []:
        if container.get("name") not in running:
            continue
        for port in container.get("ports") or []:
            if port.get("protocol", "TCP") != "TCP" or not port.get("containerPort"):
                continue
            endpoints[Endpoint(ip, int(port["containerPort"]))] = Owner(
                namespace=metadata.get("namespace", ""),
                pod=metadata.get("name", ""),
                uid=metadata.get("uid", ""),
                container=container["name"],
            )
    return endpoints


def desired_endpoints(pods: Iterable[Mapping[str, Any]]) -> dict[Endpoint, Owner]:
    """Everything that should be listening for these pods."""
    desired: dict[Endpoint, Owner] = {}
    for pod in pods:
        desired.update(pod_endpoints(pod))
    return desired


@dataclass(frozen=True)
class ApiAccess:
    """Where the API server is and how to authenticate, read from a token kubeconfig."""

    server: str
    token: str
    ssl_context: ssl.SSLContext

    @classmethod
    def from_kubeconfig(cls, text: str) -> ApiAccess:
        config = yaml.safe_load(text)
        contexts = {c["name"]: c["context"] for c in config["contexts"]}
        context = contexts[config["current-context"]]
        cluster = next(c["cluster"] for c in config["clusters"] if c["name"] == context["cluster"])
        user = next(u["user"] for u in config["users"] if u["name"] == context["user"])
        ca = base64.b64decode(cluster["certificate-authority-data"]).decode()
        return cls(cluster["server"], user["token"], ssl.create_default_context(cadata=ca))


class EchoHandler(tornado.web.RequestHandler):
    """Answers 200 on any path and method, naming the pod it stands in for."""

    def initialize(self, responder: Responder, endpoint: Endpoint) -> None:
        self.responder = responder
        self.endpoint = endpoint

    def _answer(self, *args: Any) -> None:
        owner = self.responder.owners.get(self.endpoint)
        if JUPYTERHUB_VERSION:
            self.set_header("X-JupyterHub-Version", JUPYTERHUB_VERSION)
        if owner is not None:
            self.set_header("X-Responder-Pod", f"{owner.namespace}/{owner.pod}")
        self.write({"path": self.request.path, **(owner.describe() if owner else {})})

    get = post = put = patch = delete = options = _answer

    def head(self, *args: Any) -> None:
        self.set_status(200)


class HealthHandler(tornado.web.RequestHandler):
    def initialize(self, responder: Responder) -> None:
        self.responder = responder

    def get(self, what: str) -> None:
        if what == "healthz":
            if not self.responder.synced:
                self.set_status(503)
            self.write({"synced": self.responder.synced})
        else:
            self.set_header("Content-Type", "application/json")
            self.write(json.dumps(self.responder.describe_endpoints()))


class Responder:
    """Keeps one HTTP server per desired endpoint, following the pods through list+watch."""

    def __init__(self, access: ApiAccess, namespace: str) -> None:
        self.access = access
        self.namespace = namespace
        self.pods: dict[str, Mapping[str, Any]] = {}
        self.owners: dict[Endpoint, Owner] = {}
        self.servers: dict[Endpoint, tornado.httpserver.HTTPServer] = {}
        self.synced = False
        self.client = tornado.httpclient.AsyncHTTPClient()

    def describe_endpoints(self) -> list[dict[str, Any]]:
        return [
            {"ip": endpoint.ip, "port": endpoint.port, **self.owners[endpoint].describe()}
            for endpoint in sorted(self.servers, key=lambda e: (e.ip, e.port))
        ]

    # -- serving -----------------------------------------------------------------------------

    def reconcile(self) -> None:
        desired = desired_endpoints(self.pods.values())
        for endpoint in [e for e in self.servers if e not in desired]:
            server = self.servers.pop(endpoint)
            self.owners.pop(endpoint, None)
            server.stop()
            asyncio.ensure_future(server.close_all_connections())
            log.info("stopped serving %s:%s", endpoint.ip, endpoint.port)
        for endpoint, owner in desired.items():
            self.owners[endpoint] = owner
            if endpoint in self.servers:
                continue
            app = tornado.web.Application(
                [(r"/.*", EchoHandler, {"responder": self, "endpoint": endpoint})],
                log_function=_quiet,
            )
            server = tornado.httpserver.HTTPServer(app)
            try:
                server.listen(endpoint.port, address=endpoint.ip)
            except OSError as error:
                # Usually an address still held by a pod that is going away; retried by the
                # periodic reconcile.
                log.warning(
                    "cannot serve %s:%s for %s/%s yet: %s",
                    endpoint.ip,
                    endpoint.port,
                    owner.namespace,
                    owner.pod,
                    error,
                )
                self.owners.pop(endpoint, None)
                continue
            self.servers[endpoint] = server
            log.info(
                "serving %s:%s for %s/%s", endpoint.ip, endpoint.port, owner.namespace, owner.pod
            )

    # -- following the API server ------------------------------------------------------------

    def _request(self, path: str, **kwargs: Any) -> tornado.httpclient.HTTPRequest:
        return tornado.httpclient.HTTPRequest(
            self.access.server + path,
            headers={"Authorization": f"Bearer {self.access.token}", "Accept": "application/json"},
            ssl_options=self.access.ssl_context,
            **kwargs,
        )

    async def list_pods(self) -> str:
        """Replace the pod cache with a fresh list; returns its resourceVersion."""
        response = await self.client.fetch(
            self._request(f"/api/v1/namespaces/{self.namespace}/pods", request_timeout=30)
        )
        body = json.loads(response.body)
        self.pods = {item["metadata"]["uid"]: item for item in body.get("items") or []}
        self.reconcile()
        self.synced = True
        return body["metadata"]["resourceVersion"]

    async def watch_pods(self, resource_version: str) -> str | None:
        """Follow changes from ``resource_version``; returns where to continue, or None when
        a fresh list is needed (history expired, or the stream broke)."""
        state = {"version": resource_version, "relist": False}
        buffer = bytearray()

        def on_chunk(chunk: bytes) -> None:
            buffer.extend(chunk)
            while b"\n" in buffer:
                line, _, rest = bytes(buffer).partition(b"\n")
                buffer[:] = rest
                if line.strip():
                    self._apply_event(json.loads(line), state)

        query = urllib.parse.urlencode(
            {
                "watch": "1",
                "resourceVersion": resource_version,
                "allowWatchBookmarks": "true",
                "timeoutSeconds": str(WATCH_SECONDS),
            }
        )
        response = await self.client.fetch(
            self._request(
                f"/api/v1/namespaces/{self.namespace}/pods?{query}",
                streaming_callback=on_chunk,
                request_timeout=WATCH_SECONDS + 30,
            ),
            raise_error=False,
        )
        if response.code != 200 or state["relist"]:
            if response.code != 200:
                log.info("watch ended with %s; listing again", response.code)
            return None
        return state["version"]

    def _apply_event(self, event: Mapping[str, Any], state: dict[str, Any]) -> None:
        kind = event.get("type")
        obj = event.get("object") or {}
        if kind == "ERROR":
            # 410 Gone: our resourceVersion is too old. Any error: start over from a list.
            state["relist"] = True
            return
        version = (obj.get("metadata") or {}).get("resourceVersion")
        if version:
            state["version"] = version
        if kind == "BOOKMARK":
            return
        uid = obj["metadata"]["uid"]
        if kind == "DELETED":
            self.pods.pop(uid, None)
        else:
            self.pods[uid] = obj
        self.reconcile()

    async def run(self) -> None:
        version: str | None = None
        while True:
            try:
                if version is None:
                    version = await self.list_pods()
                version = await self.watch_pods(version)
            except Exception as error:  # noqa: BLE001 - keep serving; retry after a pause
                log.warning("API server error (%r); listing again in %ss", error, RETRY_SECONDS)
                version = None
                await asyncio.sleep(RETRY_SECONDS)

    async def retry_failed_binds(self) -> None:
        while True:
            await asyncio.sleep(1)
            self.reconcile()


def _quiet(handler: tornado.web.RequestHandler) -> None:
    """Per-request logging off: the hub's polling would flood the log."""


def parse_address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(
            f"--health-address must look like 127.0.0.1:8099, got {text!r}"
        )
    return host, int(port)


async def serve(access: ApiAccess, namespace: str, health: tuple[str, int]) -> None:
    responder = Responder(access, namespace)
    health_app = tornado.web.Application(
        [(r"/(healthz|endpoints)", HealthHandler, {"responder": responder})], log_function=_quiet
    )
    health_app.listen(health[1], address=health[0])
    log.info(
        "health on http://%s:%s/healthz, following pods in %s", health[0], health[1], namespace
    )
    await asyncio.gather(responder.run(), responder.retry_failed_binds())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--kubeconfig", required=True, help="kubeconfig allowed to list and watch pods"
    )
    parser.add_argument("--namespace", required=True, help="namespace whose pods get a responder")
    parser.add_argument(
        "--health-address",
        type=parse_address,
        required=True,
        help="host:port for /healthz and /endpoints",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stdout
    )
    with open(args.kubeconfig) as f:
        access = ApiAccess.from_kubeconfig(f.read())
    asyncio.run(serve(access, args.namespace, args.health_address))
    return 0


if __name__ == "__main__":
    sys.exit(main())
