"""What runs in the resilience service process: the stopped-server handler, the culler and
their metrics (docs/architecture.md). Nothing here imports the hub's code or the tools."""
