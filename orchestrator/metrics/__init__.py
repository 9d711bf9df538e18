"""Prometheus metrics: what each process counts, and how it serves them.

    http          every API request by route template, method and status, and its latency
    ingestion     events accepted, ingestion refusals by reason, routing lag, the
                  unrouted backlog the sweeper sees
    journeys      journeys entered, ended and converted (by journey key), arbitration
                  outcomes by reason and their latency
    exposition    the registry a process serves (multiprocess for forked API processes),
                  `/metrics` on the API, a metrics port for the other processes
    sdk           the Temporal SDK's own metrics (its runtime's Prometheus endpoint)

The channels' metrics (messages, provider latency, retries, rate-limit waits, ranking
answers) are in `channels.metrics`, as `channels/` imports nothing from here.
"""
