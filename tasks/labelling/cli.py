"""`rlhf label queue` builds the queue of pairs; `rlhf label serve` starts the labelling page on 127.0.0.1."""

from __future__ import annotations

import argparse
from pathlib import Path

from tasks.labelling.store import LABELS_FILE, QUEUE_FILE

HOST = "127.0.0.1"  # the page has no login: it answers on this machine only (reach it through an SSH tunnel)


def add_commands(sub: argparse._SubParsersAction) -> None:
    label = sub.add_parser("label", help="human preference labelling").add_subparsers(dest="action", required=True)
    queue = label.add_parser("queue", help="add pairs to label: two models' responses to held-out prompts")
    queue.add_argument("--first", type=Path, default=Path("models/sft"), help="model folder of side a (models/sft)")
    queue.add_argument("--second", type=Path, default=Path("models/ppo"), help="model folder of side b (models/ppo)")
    queue.add_argument("--count", type=int, default=32, help="evaluation prompts to sample (32)")
    queue.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file (generation settings)")
    queue.add_argument("--queue", type=Path, default=QUEUE_FILE, help=f"queue file ({QUEUE_FILE})")
    serve = label.add_parser("serve", help="start the labelling page on 127.0.0.1")
    serve.add_argument("--port", type=int, default=8765, help="port (8765)")
    serve.add_argument("--queue", type=Path, default=QUEUE_FILE, help=f"queue file ({QUEUE_FILE})")
    serve.add_argument("--labels", type=Path, default=LABELS_FILE, help=f"labels file ({LABELS_FILE})")


def run(args: argparse.Namespace) -> None:
    if args.action == "queue":
        from tasks.labelling.queue_builder import build_queue
        from tasks.params import load_params

        added = build_queue(load_params(args.params), args.first, args.second, args.count, args.queue)
        print(f"{added} new pairs in {args.queue}")
        return
    import uvicorn

    from tasks.labelling.app import create_app
    from tasks.labelling.ratings import RATINGS_FILE, REQUESTS_FILE, RatingQueue
    from tasks.labelling.store import LabellingQueue, LabelLog, read_queue

    queue = LabellingQueue(read_queue(args.queue) if args.queue.is_file() else [], LabelLog(args.labels))
    ratings = RatingQueue(args.labels.parent / REQUESTS_FILE.name, args.labels.parent / RATINGS_FILE.name)
    progress, address = queue.progress(), f"http://{HOST}:{args.port}"
    print(f"labelling {progress['total'] - progress['labelled']} of {progress['total']} pairs at {address}/")
    print(f"rating the responses PPO waits on (a `human` reward source) at {address}/rate")
    print(f"labels and ratings go to {args.labels.parent}", flush=True)
    uvicorn.run(create_app(queue, ratings), host=HOST, port=args.port, log_level="warning")
