"""The operator's tools: the ``hub-resilience`` command, the event planner, the rehearsal
(``simulate``), the demo and what they run on (docs/architecture.md). Never deployed in a hub."""
