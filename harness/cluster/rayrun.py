"""The Ray runtime of a sweep: start local Ray (or join a cluster) and make sure a local one
does not outlive the driver.

A local runtime is guarded (``harness.cluster.orphans``): after ``ray.init`` the record
``<results>/ray/driver-<pid>.json`` names the driver, this host, the Ray session folder, the
node id and the pids of every process of the session; a watchdog stops them if the driver dies
by any signal, and the next sweep stops what a dead driver left before it starts its own. On a
clean exit the runtime is shut down and the record removed.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from harness.cluster import orphans

Echo = Callable[[str], None]


def _env() -> None:
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # our own one-line summaries instead
    # Ctrl-C as SIGTERM (KeyboardInterrupt): Tune's own handler would end the run normally and
    # hand back the interrupted trials as if they had finished
    os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")


def _echo_cluster(address: str | None, echo: Echo) -> None:
    import ray

    echo(
        f"ray: {'cluster at ' + address if address else 'local'}, "
        f"{int(ray.cluster_resources().get('CPU', 0))} CPUs on {len(ray.nodes())} node(s)"
    )


def _quiet() -> None:
    """Tune's own logging down; SIGTERM as Ctrl-C (ray.init installs a handler that aborts)."""
    from harness.cluster import launch

    logging.getLogger("ray.tune").setLevel(logging.WARNING)
    launch.sigterm_as_interrupt()


def _session() -> tuple[str | None, str | None]:
    """(session folder, node id) of the local Ray runtime this process started."""
    import ray

    try:
        session = ray._private.worker._global_node.get_session_dir_path()
    except AttributeError:  # a Ray without the private handle: the node id still marks workers
        session = None
    return session, ray.get_runtime_context().get_node_id()


@contextmanager
def runtime(address: str | None, base: Path, echo: Echo) -> Iterator[None]:
    """Ray for one sweep: join ``address``, reuse a runtime this process already has, or start
    a local one (all cores, never an unrelated running cluster), guarded and shut down at the
    end."""
    _env()
    import ray

    if address or ray.is_initialized():
        if not ray.is_initialized():
            ray.init(
                address=address,
                include_dashboard=False,
                log_to_driver=False,
                logging_level=logging.WARNING,
            )
        _quiet()
        _echo_cluster(address, echo)
        yield
        return
    orphans.reap_dead(orphans.guard_dir(base, "ray"), echo)  # what a killed sweep left
    with orphans.guard(orphans.guard_dir(base, "ray"), "a local Ray runtime") as g:
        try:
            ray.init(
                address="local",
                num_cpus=os.cpu_count() or 1,
                include_dashboard=False,
                log_to_driver=False,
                logging_level=logging.WARNING,
            )
            session, node = _session()
            marks = {"cmdline": [session] if session else [], "environ": [f"RAY_NODE_ID={node}"]}
            g.update(what=f"Ray session {session}", marks=marks, extra={"session_dir": session})
            g.track([])
            _quiet()
            _echo_cluster(None, echo)
            yield
        finally:  # even when interrupted inside ray.init: whatever it started is named
            g.track_children()
            ray.shutdown()
            g.stop_remaining()
