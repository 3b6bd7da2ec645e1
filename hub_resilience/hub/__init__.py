"""What runs inside JupyterHub: ResilientKubeSpawner, its QoS, activity and spawn-phase
policies and the hub process's metrics (docs/architecture.md). Nothing here imports the
service or the tools."""
