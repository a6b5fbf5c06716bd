"""Background jobs on Redis (RQ) when ``REDIS_URL`` is set; ``manage.py worker``
runs them. Without Redis, plugins run their jobs inside the web process.

A job queued here outlives the web process that queued it: the worker runs it
even if that process is stopped or recycled right after the click. The worker
builds the app once, then forks one child per job (RQ's default); the child
first drops the connections it inherited (``engine.dispose(close=False)``), so
no database connection is ever shared between two processes.

Jobs are stored with RQ's JSON serializer (never pickle), and the worker runs
only the functions plugins declare through ``register_job_functions``: anyone
who can write to Redis could otherwise make the worker run any function. Keep
Redis reachable only from this application's machines (bind it to a private
address, require a password).

**Queues.** Jobs go to the default queue unless their function names another
(``job_queue = "pitr"``): jobs that need another user than the service's (a PITR
backup runs pgBackRest, which needs root or the cluster's owner) get a queue of
their own, so that a root worker takes only those and the service user's worker
the rest. On one queue each took the other's jobs and failed them.
``manage.py worker`` serves the default queue; ``--queue NAME`` (repeatable;
``default`` for the default one) the named ones.
"""

from __future__ import annotations

import os
import socket

import click
from flask import Flask, current_app
from flask.cli import with_appcontext

from .redis_link import redis_client

#: RQ job timeout: a job running longer is stopped (jobs over large databases
#: take minutes; this is a guard against a hung job, not a target)
JOB_TIMEOUT = 6 * 3600


#: the queue of jobs whose function names none
DEFAULT_QUEUE = "default"


def queue_name(app: Flask, queue: str = DEFAULT_QUEUE) -> str:
    """Redis' name of a queue: ``REDIS_PREFIX`` + ``jobs`` (the default queue, as
    before queues had names) or ``jobs:<queue>``."""
    suffix = "" if queue == DEFAULT_QUEUE else f":{queue}"
    return f"{app.config['REDIS_PREFIX']}jobs{suffix}"


def task_queue(app: Flask | None = None, queue: str = DEFAULT_QUEUE):
    """The app's RQ queue named ``queue``, or None without REDIS_URL (run jobs
    in-process then)."""
    app = app or current_app
    client = redis_client(app)
    if client is None:
        return None
    from rq import Queue
    from rq.serializers import JSONSerializer

    return Queue(queue_name(app, queue), connection=client, default_timeout=JOB_TIMEOUT,
                 serializer=JSONSerializer)


def job_queue(function) -> str:
    """The queue a job function's jobs go to (its ``job_queue``, else the default)."""
    return getattr(function, "job_queue", None) or DEFAULT_QUEUE


def queue_workers(app: Flask, queue: str = DEFAULT_QUEUE) -> int | None:
    """How many workers take ``queue`` now (RQ's registry of live workers), or None
    without Redis or when it does not answer: a page says so when nobody will take
    a job it queued."""
    client = redis_client(app)
    if client is None:
        return None
    from redis import RedisError
    from rq import Worker

    try:
        return Worker.count(connection=client, queue=task_queue(app, queue))
    except RedisError:
        return None


def job_name(function) -> str:
    """The dotted name RQ stores for a job's function."""
    return f"{function.__module__}.{function.__qualname__}"


def declared_jobs(app: Flask) -> list:
    """The job functions plugins declared (``register_job_functions``)."""
    from .registry import hook_items

    return list(hook_items(app.extensions["plugin_manager"], "register_job_functions"))


def allowed_jobs(app: Flask) -> frozenset[str]:
    return frozenset(job_name(f) for f in declared_jobs(app))


def known_queues(app: Flask) -> list[str]:
    """The default queue and every queue a declared job function names."""
    named = sorted({job_queue(f) for f in declared_jobs(app)} - {DEFAULT_QUEUE})
    return [DEFAULT_QUEUE, *named]


class JobRefused(RuntimeError):
    """A queued job names a function no plugin declared."""


def _worker_class(allowed: frozenset[str]):
    from rq import Worker

    class AppWorker(Worker):
        """RQ's forking worker; each job runs in a child inside the app's context,
        and only if its function is on the allow-list."""

        def perform_job(self, job, queue, *args, **kwargs):
            from .extensions import db

            if job.func_name not in allowed:  # fails like any job, without importing it
                refused = JobRefused(f"{job.func_name[:200]!r} is not a declared job function")

                def refuse():
                    raise refused

                job.perform = refuse
            db.engine.dispose(close=False)  # the parent's pooled connections stay its own
            return super().perform_job(job, queue, *args, **kwargs)

        def unsubscribe(self):
            """Stop listening for RQ's commands, in an order that cannot take a minute.
            RQ unsubscribes, then stops its listening thread; a thread that reads the
            reply before the stop comes waits up to 60 s for a new subscription, and
            redis-py 8's stop() waits for the thread. A busy machine lost that race and
            an idle worker took up to a minute to end on SIGTERM. The flag goes down
            first here, so the unsubscription's reply is the thread's last message."""
            thread, pubsub = getattr(self, "pubsub_thread", None), getattr(self, "pubsub", None)
            if thread is None or pubsub is None:
                return super().unsubscribe()
            try:
                thread.stop(timeout=0)  # redis-py 8 would wait for the thread here
            except TypeError:  # redis-py before 8: stop() only lowers the flag
                thread.stop()
            pubsub.unsubscribe()
            thread.join(timeout=5)
            pubsub.close()

    return AppWorker


@click.command("worker")
@click.option("--burst", is_flag=True, help="Run the jobs waiting now, then exit.")
@click.option("--queue", "queues", multiple=True, metavar="NAME",
              help="Take the jobs of this queue (repeatable; 'default' for the default "
                   "one). Without it: the default queue. PITR backups from the page have "
                   "the queue 'pitr', for a worker run as root.")
@with_appcontext
def worker_command(burst: bool, queues: tuple[str, ...]) -> None:
    """Run the background jobs plugins queue in Redis (jobs started from a page,
    queued drills). Needs REDIS_URL; start one or more next to the web server."""
    app = current_app._get_current_object()
    if not (app.config.get("REDIS_URL") or "").strip():
        raise click.ClickException("REDIS_URL is not set: jobs run inside the web process "
                                   "and no worker is needed")
    known = known_queues(app)
    unknown = [q for q in queues if q not in known]
    if unknown:
        raise click.ClickException(f"no queue named {unknown[0]!r}: "
                                   f"the queues are {', '.join(known)}")
    from .metrics_folder import use_folder

    use_folder(app)  # its jobs count in serve's PROMETHEUS_MULTIPROC_DIR
    import redis
    from rq import Queue
    from rq.serializers import JSONSerializer

    # a connection of its own without a socket timeout: the worker waits on Redis
    connection = redis.Redis.from_url(app.config["REDIS_URL"])
    try:
        connection.ping()
    except redis.RedisError:
        raise click.ClickException("Redis does not answer at REDIS_URL") from None
    served = [Queue(queue_name(app, q), connection=connection, default_timeout=JOB_TIMEOUT,
                    serializer=JSONSerializer) for q in dict.fromkeys(queues or [DEFAULT_QUEUE])]
    worker = _worker_class(allowed_jobs(app))(served, connection=connection,
                                              serializer=JSONSerializer,
                                              name=f"{socket.gethostname()}-{os.getpid()}")
    click.echo(f"worker {worker.name} waiting for jobs on {', '.join(q.name for q in served)}",
               err=True)
    worker.work(burst=burst, logging_level="WARNING")
