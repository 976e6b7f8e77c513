"""bangerd: the daemon that owns VMs, images, kernels, host networking and state.

Modules:

- ``main``        entry point: config, instance lock (``run/bangerd.lock``), signals, serve.
- ``app``         the composition root ``Daemon.open(config, layout)``: builds store, services, server;
                  ``dispatch`` validates params against the METHODS table.
- ``methods``     the whole RPC surface in one table: name -> (params model, handler).
- ``server``      Unix-socket JSON-RPC server: SO_PEERCRED owner check, framing, per-request tasks,
                  cancellation of in-flight requests when the client disconnects.
- ``operations``  long-running, staged, cancellable operations the CLI polls.
- ``locks``       KeyedLock: named per-key locks.
- ``logs``        JSON-lines logging to ``<state>/bangerd.log``.

Lock ordering (always acquire left to right, never hold a right-hand lock while taking a left-hand one):

    per-VM lock -> workspace lock -> {create lock, image lock, kernel lock} -> leaf locks (store, tap pool)

Global locks are held only around millisecond critical sections (reserve name + IP + insert row); every
wait is cancellable.
"""
