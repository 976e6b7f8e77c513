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
- ``kernel_service``  KernelService: ``<state>/kernels`` + kernels table; list/show, pull from the catalog
                  (an operation), import, rm (refused while a VM boots it), ``ensure`` for VM create.
- ``image_service``   ImageService: ``<state>/images`` + images table; build (golden), pull (catalog, bundle
                  URL/file, OCI registry), export, register, promote, delete, cache prune; every producer
                  writes into a work dir, the image's kernel is ensured, then one rename + row commits it.
- ``logs``        JSON-lines logging to ``<state>/bangerd.log``.
- ``dns``         the ``.vm`` DNS server (UDP+TCP, 127.0.0.1:42069): ``<name>.vm`` A records for running VMs.

Lock ordering (always acquire left to right, never hold a right-hand lock while taking a left-hand one):

    per-VM lock -> workspace lock -> {create lock, image lock, kernel lock} -> leaf locks (store, tap pool)

Within the middle tier an image change takes the image lock, then the kernel lock (it may pull its kernel).

Global locks are held only around millisecond critical sections (reserve name + IP + insert row); every
wait is cancellable.
"""
