"""Running the builder's work in parallel (joblib: loky processes or a Dask cluster), the
progress bar, and the workers' watch on their parent. Shared by ``build``, ``add`` and
``export``.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
import warnings
from collections.abc import Iterable, Iterator

from fingerprint_pretrain.builder.errors import BuildError

__all__ = ["available_cores", "chunks", "progress_bar", "run_parallel", "watch_parent"]

_WATCHED_PARENT: int | None = None


def watch_parent(main_pid: int, interval: float = 0.5) -> None:
    """In a worker process started by ``main_pid``: exit as soon as that process is gone.

    A worker whose parent dies (``kill -9`` of ``fp-build``) is re-parented, so a daemon thread
    polls ``os.getppid()`` every ``interval`` seconds and ends the process when it changes.
    Workers that are not direct children of ``main_pid`` (a remote Dask cluster) and the main
    process itself (``--jobs 1``) are left alone. Idempotent per process.
    """
    global _WATCHED_PARENT
    if _WATCHED_PARENT == main_pid or os.getppid() != main_pid:
        return
    _WATCHED_PARENT = main_pid

    def watch() -> None:
        while os.getppid() == main_pid:
            time.sleep(interval)
        os._exit(1)  # the main process died: nobody will collect this worker's results

    threading.Thread(target=watch, name="fp-build-parent-watch", daemon=True).start()


def _init_worker(main_pid: int) -> None:
    """Initializer of the loky workers (always direct children of the main process): exit at
    once if the main process died while this worker was starting, else watch it."""
    if os.getppid() != main_pid:
        os._exit(1)
    watch_parent(main_pid)


def _in_worker(main_pid: int, function, *task):
    """Run one task in a worker, first making sure the worker dies with the main process."""
    watch_parent(main_pid)
    return function(*task)


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def progress_bar(total: int | None, initial: int, desc: str, enabled: bool, unit: str = "struct"):
    """A tqdm bar with rate and ETA, or None when progress output is off.

    The rate (and so the ETA) is measured from the first update on: the seconds before it,
    while the workers start and import pymatgen (~15 s for ``fp-build add``), count in the
    elapsed time but not in the rate, which would otherwise start far too low and, smoothed,
    show an absurd ETA for the first minute.
    """
    if not enabled:
        return None
    from tqdm import tqdm

    class WarmStartBar(tqdm):
        _warm = False

        def update(self, n: int = 1) -> bool | None:
            if self._warm or self.disable:
                return super().update(n)
            self._warm = True  # the first chunk: counted, not timed; shown with the next one
            self.n += n
            self.last_print_n, self.last_print_t = self.n, self._time()
            return None

    return WarmStartBar(
        total=total, initial=initial, desc=desc, unit=unit, smoothing=0.05, dynamic_ncols=True
    )


def chunks(items: Iterator, size: int) -> Iterator[list]:
    """Consecutive lists of ``size`` items (the last may be shorter)."""
    while True:
        chunk = list(itertools.islice(items, size))
        if not chunk:
            return
        yield chunk


def run_parallel(
    function, tasks: Iterable[tuple], jobs: int, backend: str, scheduler: str | None
) -> Iterator:
    """Run ``function(*task)`` for each task; results in task order, a bounded number in
    flight (memory stays flat however many tasks there are)."""
    if jobs == 1:
        for task in tasks:
            yield function(*task)
        return
    from joblib import Parallel, delayed, parallel_config

    client = None
    if backend == "dask":
        try:
            from distributed import Client, LocalCluster
        except ImportError:
            raise BuildError(
                "--backend dask needs dask.distributed: pip install 'dask[distributed]'"
            ) from None
        if scheduler:
            client = Client(scheduler)
        else:
            client = Client(LocalCluster(n_workers=jobs, threads_per_worker=1, processes=True))
    try:
        # Stopping early (an error, --strict) cancels queued tasks; joblib warns about that.
        warnings.filterwarnings("ignore", message=".*tasks which were still being processed")
        main_pid = os.getpid()
        # loky workers watch the main process from their start (a kill -9 of fp-build while
        # they import must not leave them behind); Dask workers from their first task
        worker_init = (
            {"initializer": _init_worker, "initargs": (main_pid,)} if backend == "loky" else {}
        )
        with parallel_config(backend=backend, n_jobs=jobs, **worker_init):
            runner = Parallel(return_as="generator", pre_dispatch="2*n_jobs", batch_size=1)
            yield from runner(delayed(_in_worker)(main_pid, function, *task) for task in tasks)
    finally:
        if client is not None:
            cluster = client.cluster
            client.close()
            if cluster is not None and not scheduler:
                cluster.close()
