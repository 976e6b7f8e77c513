"""bangerd: the daemon that owns VMs, images, kernels, host networking and state.

Modules:

- ``main``        entry point: config, instance lock (``run/bangerd.lock``), signals, serve; ``--install PATH``
                  serves a system install as its owner over bangerd-root (``host.privileged.RemotePrivileged``);
                  ``--check-migrations`` exits 0/1/2 (current / would migrate / newer than this version).
- ``app``         the composition root ``Daemon.open(config, layout)``: builds store, services, server;
                  ``dispatch`` validates params against the METHODS table.
- ``methods``     the whole RPC surface in one table: each ``banger.api`` declaration -> its handler.
- ``server``      Unix-socket JSON-RPC server: SO_PEERCRED owner check, framing, per-request tasks,
                  cancellation of in-flight requests when the client disconnects; bounded (connections,
                  in-flight requests per connection, unfinished frames time out).
- ``operations``  long-running, staged, cancellable operations the CLI polls.
- ``locks``       KeyedLock: named per-key locks.
- ``kernel_service``  KernelService: ``<state>/kernels`` + kernels table; list/show, pull from the catalog
                  (an operation), import, rm (refused while a VM boots it), ``ensure`` for VM create.
- ``image_service``   ImageService: ``<state>/images`` + images table; build (golden), pull (catalog, bundle
                  URL/file, OCI registry), export, register, promote, delete, cache prune; as the owner a build
                  or registry pull runs in a user namespace the privileged seam maps; every producer
                  writes into a work dir, the image's kernel is ensured, then one rename + row commits it.
- ``vm_service``  VMService: every VM request (create, start/stop/restart/kill/delete, prune, set, logs,
                  stats, connect, ports); owns the per-VM lock and the create lock; fans out multi-VM calls.
- ``vm_create``   the create pipeline's pure parts and disk steps (spec, row, root + work disk, a clone's
                  overlays over its template).
- ``templates``   TemplateService: ``<state>/templates``: snapshot templates (one cold boot + QEMU save per
                  VM shape), found or built for a create, listed and pruned; owns the template lock.
- ``exec_service``  ExecService: ``vm.exec.*``: commands run through each running VM's guest agent (one
                  multiplexed AgentLink per VM), output long-polled by the CLI; owns the agent-link lock
                  (held while a young boot's agent is waited for, up to AGENT_GRACE after launch).
- ``vm_lifecycle``  Lifecycle: the VM's host key (made and pinned at create), the per-start config disk,
                  TAP + TAP filter + NAT, VMM launch (noting whether the image carries banger-agent),
                  readiness (sshd; the agent for an image with none), a clone's restore and re-homing
                  (``guest.rehome``), stop, release.
- ``vm_handles``  ``handles.json`` (running VM's pid, sockets, TAP, NAT) and ``disks.json`` per VM dir.
- ``reconcile``   at start: re-adopt live VMMs, undo interrupted creates, mark dead VMs, sweep TAPs;
                  while running: the dead-VMM watcher and the stale reaper.
- ``sweep``       the start-up sweep of what a crashed daemon left: orphaned VMMs, NAT rules and TAP
                  filters of VMs not running, unused dm/loop devices, staging and scratch directories.
- ``network``     NetworkService: bridge, warm TAP pool (leaf lock), guest IPs, per-VM NAT; releases that
                  could not reach bangerd-root are queued and retried at the next acquire and at close.
- ``runtime``     RuntimeService: auto|firecracker|qemu from the cached KVM boot probe; VMM drivers; jailer on/off.
- ``workspace_service``  WorkspaceService: ``vm.workspace.prepare`` (host repo -> one tar over SSH -> guest
                  git repo whose HEAD is the host's), a clone's workspace disk built on the host
                  (``workspace.image``, for create), and ``vm.workspace.export`` (changed files through
                  the agent, the patch made by the host's git, ``workspace.export_host``; else one binary
                  patch made in the guest; big ones read back over the socket in chunks); owns the
                  per-VM workspace lock and never takes the VM lock.
- ``workspace_stream``  host tar piped into a guest command, guest stdout drained into a host file.
- ``logs``        JSON-lines logging to ``<state>/bangerd.log``, rotated at a size cap; throttled noise.
- ``dns``         the ``.vm`` DNS server (UDP+TCP, 127.0.0.1:42069): ``<name>.vm`` A records for running VMs;
                  TCP connections capped.

Services and what they own: KernelService (kernels dir + table, kernel lock), ImageService (images dir +
table, image lock), VMService (VM rows + dirs, per-VM lock, create lock; it holds TemplateService
(templates dir, template lock) and ExecService (agent links, exec sessions, agent-link lock)),
NetworkService (bridge, TAP pool, NAT rules, TAP filters), RuntimeService (probe lock). Every root-only host
change goes through ``host.privileged``, which the composition root hands to every service that needs it
(storage included): in process when bangerd is root, bangerd-root when it serves a system install as the
owner.

Lock ordering (always acquire left to right, never hold a right-hand lock while taking a left-hand one):

    per-VM lock -> workspace lock -> {create lock, image lock, kernel lock, template lock}
                 -> leaf locks (bridge, tap pool, agent link)

Within the middle tier an image change takes the image lock, then the kernel lock (it may pull its kernel).
A create takes the template lock (building a template if needed) before the create lock and the new VM's
lock, and never holds it while taking either.

Global locks are held only around millisecond critical sections (reserve name + IP + insert row); every
wait is cancellable.
"""
