"""How fast scoring runs, measured: the runtime benchmark (`throughput`), the fast path against the reference
pipeline (`fastpath`), the machine's matrix-multiply peak and the model's achieved rate (`peak`), and the
`benchmark --baseline reference` report that runs them all on the same items (`baseline`).

Why apart from `protocol`: the protocol's numbers (params, FLOPs, C, E, CES) are rules that do not depend on
the machine; every number here is a timing of this machine, at this moment. The package sits above
`protocol` (it counts FLOPs with the protocol's counter) and below serving and the CLI."""
