"""`asr-pipeline ingest`, `ingest-batch` and `backfill`: what new_transcripts_sensor does, run by a person."""

from __future__ import annotations

import sys

from asr_pipeline.cli.runs import (_definitions, _instance, _reap_dead_runs, _run, _run_batch_as_launched,
                                   _run_batches_in_parallel)


def ingest(defs=None, parallel: int = 1) -> list[str]:
    """What new_transcripts_sensor does, without the daemon: register new batches, (re)process new, changed and
    never-materialized ones. Every registered batch is checked (a person runs this, not a 60 s tick).
    parallel > 1: that many batches at once, each a run in its own process, executed as a launched run."""
    from asr_pipeline.defs.ingest.planning import plan_ingest, request_lines, request_tags

    defs = defs or _definitions()
    instance = _instance()
    _reap_dead_runs(instance)  # a batch whose CLI run was killed is not "running": it is processed again
    database, settings = defs.resources["database"], defs.resources["settings"]
    table = database.open_table()
    try:
        # every pending row is cut now (no waiting for more), every batch is checked, failed ones retried at once
        plan = plan_ingest(instance, table, settings, check_all=True, max_wait_s=0)
    finally:
        table.dispose()
    print(f"ingest: {plan.summary()}")
    for line in request_lines(plan):
        print(f"ingest: again {line}")
    for request in plan.requests:
        print(f"ingest: batch {request.key} ({request.reason})")
    tags = request_tags(plan)  # the sensor's run tags: the next plan reads the fingerprint a failed run was for
    if parallel > 1 and len(plan.requests) > 1:
        _run_batches_in_parallel([r.key for r in plan.requests], parallel, tags)
    else:
        failed = []
        for request in plan.requests:  # one failing batch does not keep the others from being processed
            try:
                _run("asr_ingest", partition_key=request.key, defs=defs, tags=tags[request.key], instance=instance)
            except SystemExit as exc:
                print(exc, file=sys.stderr)
                failed.append(request.key)
        if failed:
            raise SystemExit(f"ingest failed for batches {failed} (details above; `asr-pipeline status` shows each "
                             "batch's state and reason)")
    return [r.key for r in plan.requests]


def cmd_ingest(args) -> None:
    if args.parallel < 1:
        raise SystemExit("--parallel must be at least 1")
    ingest(parallel=args.parallel)


def cmd_ingest_batch(args) -> None:
    import json

    try:
        tags = json.loads(args.tags) if args.tags else {}
    except json.JSONDecodeError as exc:
        raise SystemExit(f"--tags is not JSON: {exc}") from None
    if not isinstance(tags, dict) or not all(isinstance(k, str) and k.startswith("asr/") and isinstance(v, str)
                                             for k, v in tags.items()):
        raise SystemExit('--tags must be a JSON object of asr/ tags with string values, e.g. '
                         '{"asr/reason": "retry"} (Dagster\'s own tags are not set this way)')
    _run_batch_as_launched(args.key, tags)


def cmd_backfill(args) -> None:
    """Re-process registered batches (after a featurizer change, say): in-process, one after another."""
    from asr_pipeline.core.batches import parse_batch_key
    from asr_pipeline.defs.ingest.partitions import INGEST_BATCHES
    from asr_pipeline.defs.ingest.planning import backfill_tags

    defs, instance = _definitions(), _instance()
    _reap_dead_runs(instance)
    registered = sorted(instance.get_dynamic_partitions(INGEST_BATCHES.name))
    why: dict[str, str] = {}
    if getattr(args, "stale", False):
        from asr_pipeline.defs.common.versions import stale_batch_reasons

        stale = stale_batch_reasons(instance, defs.resources["settings"], registered)
        if not stale:
            print("backfill: no stale batch (every featurized batch was made with the current settings)")
            return
        for key, reason in sorted(stale.items()):
            print(f"backfill: {key} is stale: {reason}")
        args.partitions, why = sorted(stale), stale
    if args.all:
        chosen = registered
    elif args.partitions:
        unknown = sorted(set(args.partitions) - set(registered))
        if unknown:
            raise SystemExit(f"not registered ingest batches: {unknown}; `asr-pipeline status` lists them")
        chosen = sorted(set(args.partitions))
    else:
        low = parse_batch_key(args.from_key)[0] if args.from_key else 0
        high = parse_batch_key(args.to_key)[1] if args.to_key else float("inf")
        chosen = [k for k in registered if parse_batch_key(k)[0] >= low and parse_batch_key(k)[1] <= high]
    if not chosen:
        raise SystemExit("no registered ingest batch matches; run `asr-pipeline ingest` first")
    table = defs.resources["database"].open_table()
    try:
        for n, key in enumerate(chosen, 1):
            print(f"backfill: {n}/{len(chosen)} {key}")
            _run("asr_ingest", partition_key=key, defs=defs, instance=instance,
                 tags=backfill_tags(table, key, why.get(key, "re-processed by `asr-pipeline backfill`")))
    finally:
        table.dispose()
