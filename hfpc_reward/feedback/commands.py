"""`hfpc feedback select|push|pull|agreement|curve`: the human-feedback loop around Label Studio.

hfpc feedback select SCORES.jsonl --n 100 --out picks.jsonl [--strategy random] [--clusters C.json]
hfpc feedback push picks.jsonl --url URL --document-root ROOT [--images-root DIR]  (token: --token)
hfpc feedback pull FEEDBACK_DIR --url URL --project ID [--picks picks.jsonl]  (or --export EXPORT.json)
hfpc feedback agreement FEEDBACK_DIR
hfpc feedback curve OUT_DIR [--seeds 5 --pool 480 --budget 160 --step 16]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

from hfpc_reward.data.manifest import read_jsonl, read_manifest, write_jsonl
from hfpc_reward.errors import UsageError
from hfpc_reward.runs import RunOutput

logger = logging.getLogger(__name__)

TOKEN_ENV = "LABEL_STUDIO_API_KEY"
AGREEMENT_NAME = "agreement.json"


def add_feedback_arguments(parser: argparse.ArgumentParser) -> None:
    from hfpc_reward.feedback.select import STRATEGIES

    actions = parser.add_subparsers(dest="feedback_command", metavar="ACTION", required=True)

    select = actions.add_parser("select", help="choose which scored pairs people label next")
    select.add_argument("scores", type=Path, help="`hfpc score` output (JSON Lines with background_score)")
    select.add_argument("--out", type=Path, required=True, help="picks JSON Lines to write")
    select.add_argument("--n", type=int, default=100, help="pairs to pick")
    select.add_argument("--strategy", choices=STRATEGIES, default=STRATEGIES[0])
    select.add_argument(
        "--threshold", type=float, help="reward model's pass threshold (default: --reward-model's)"
    )
    select.add_argument("--reward-model", type=Path, help="reward-model folder whose threshold to use")
    select.add_argument("--clusters", type=Path, help="`hfpc data clusters` JSON: spread over its clusters")
    select.add_argument("--per-original", type=int, default=2, help="most picks per original")
    select.add_argument(
        "--exclude", type=Path, nargs="*", default=[], help="manifests of pairs already labelled"
    )
    select.add_argument("--seed", type=int, default=0, help="tie-break / random-draw seed")

    push = actions.add_parser("push", help="create a Label Studio project and import picks as tasks")
    push.add_argument("picks", type=Path, help="picks from `hfpc feedback select`")
    _server_arguments(push)
    push.add_argument(
        "--document-root", type=Path, required=True, help="the server's LOCAL_FILES_DOCUMENT_ROOT"
    )
    push.add_argument(
        "--images-root", type=Path, help="the pool's image folder (default: the picks' common folder)"
    )
    push.add_argument("--project", type=int, help="add to this project id instead of creating one")
    push.add_argument("--title", default="HFPC pass/fail", help="title of a new project")

    pull = actions.add_parser("pull", help="import finished Label Studio annotations into a feedback folder")
    pull.add_argument("folder", type=Path, help="feedback folder (labels.jsonl, manifest.jsonl, ...)")
    pull.add_argument("--export", type=Path, help="a Label Studio JSON export file (instead of the server)")
    _server_arguments(pull, required=False)
    pull.add_argument("--project", type=int, help="project id to export from the server")
    pull.add_argument(
        "--picks",
        type=Path,
        nargs="*",
        default=[],
        help="pushed picks (and their .pushed.json receipts): report deleted tasks",
    )

    agree = actions.add_parser(
        "agreement", help="annotator agreement and contested pairs of a feedback folder"
    )
    agree.add_argument("folder", type=Path)

    from hfpc_reward.feedback.curve import add_curve_arguments

    add_curve_arguments(actions.add_parser("curve", help="learning curve: active vs random selection"))


def _server_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument("--url", required=required, help="Label Studio URL, e.g. http://127.0.0.1:8080")
    parser.add_argument(
        "--token", default=os.environ.get(TOKEN_ENV), help=f"API token (default: ${TOKEN_ENV})"
    )


def run_feedback(args: argparse.Namespace) -> int:
    return {"select": _select, "push": _push, "pull": _pull, "agreement": _agreement, "curve": _curve}[
        args.feedback_command
    ](args)


def _select(args: argparse.Namespace) -> int:
    from hfpc_reward.data.clusters import ClusterAssignment
    from hfpc_reward.feedback.select import candidates, pair_id, select

    threshold = args.threshold
    if threshold is None and args.reward_model:
        stored = args.reward_model / "config.json"
        if not stored.is_file():
            raise UsageError(
                f"{args.reward_model} has no config.json: give a reward-model folder (train-reward's model/)"
            )
        threshold = json.loads(stored.read_text()).get("threshold")
        if threshold is None:
            raise UsageError(
                f"{args.reward_model} is not a trained reward model (its config.json has no threshold): "
                "give train-reward's model/ folder"
            )
    if threshold is None:
        raise UsageError("give the reward model's pass threshold: --threshold T or --reward-model FOLDER")
    clusters = ClusterAssignment.load(args.clusters).assignment if args.clusters else None
    labelled = {pair_id(row.origin, row.generation) for path in args.exclude for row in read_manifest(path)}
    pool, skipped = candidates(read_manifest(args.scores), threshold, clusters, labelled)
    if not pool:
        raise UsageError(f"{args.scores}: no scored pair to pick from ({skipped}); run `hfpc score` first")
    picks = select(pool, args.n, args.strategy, args.seed, args.per_original)
    write_jsonl(args.out, picks)
    logger.info(
        "%d picks (%s, %d disagreeing) from %d candidates (left out: %s) -> %s",
        len(picks),
        args.strategy,
        sum(p["disagreement"] > 0 for p in picks),
        len(pool),
        skipped,
        args.out,
    )
    return 0


def _push(args: argparse.Namespace) -> int:
    from hfpc_reward.feedback.labelstudio import LabelStudioClient, check_images_root, task_for_pick

    picks = read_jsonl(args.picks)
    if not picks:
        raise UsageError(f"{args.picks} holds no picks; run `hfpc feedback select` first")
    broken = [
        n
        for n, pick in enumerate(picks, 1)
        if not all(pick.get(k) for k in ("origin", "generation", "pair_id"))
    ]
    if broken:
        raise UsageError(
            f"{args.picks}:{broken[0]}: a pick needs origin, generation and pair_id; give the output of "
            "`hfpc feedback select`"
        )
    try:
        images_root = args.images_root or Path(
            os.path.commonpath([p[k] for p in picks for k in ("origin", "generation")])
        )
    except ValueError as exc:  # absolute and relative paths mixed, or on other drives
        raise UsageError(f"{args.picks}: no folder holds every image ({exc}); pass --images-root") from None
    check_images_root(args.document_root, images_root)
    tasks, pushed = [], []
    for pick in picks:
        try:
            tasks.append(task_for_pick(pick, args.document_root, images_root))
            pushed.append(pick)
        except UsageError as exc:  # one bad pick does not stop the others
            logger.warning("pick %s not pushed: %s", pick.get("pair_id"), exc)
    if not tasks:
        raise UsageError(f"no pick of {args.picks} could be pushed (see the warnings above); nothing sent")
    client = LabelStudioClient(args.url, args.token)
    project = args.project or client.create_project(args.title, f"{len(tasks)} pairs from {args.picks}")["id"]
    client.add_local_storage(project, images_root)
    task_ids = client.import_tasks(project, tasks)
    record = {
        "url": args.url,
        "project": project,
        "tasks": dict(zip([p["pair_id"] for p in pushed], task_ids)),
    }
    receipt = _receipt(args.picks)
    receipt.write_text(json.dumps(record, indent=1))
    logger.info(
        "pushed %d of %d picks to project %d at %s (%s)",
        len(task_ids),
        len(picks),
        project,
        args.url,
        receipt,
    )
    return 0


def _receipt(picks: Path) -> Path:
    """Where `push` records what it sent: picks.jsonl -> picks.pushed.json (project, pair id -> task id)."""
    return picks.with_name(picks.stem + ".pushed.json")


def _pushed_pairs(picks: Path) -> list[str]:
    """The pair ids of the picks that push sent (from its receipt; all picks when there is none)."""
    if not picks.is_file():
        raise UsageError(f"--picks {picks} does not exist: give the picks file that `feedback push` sent")
    receipt = _receipt(picks)
    if receipt.is_file():
        try:
            return list(json.loads(receipt.read_text())["tasks"])
        except (ValueError, KeyError, TypeError) as exc:
            raise UsageError(f"{receipt} is not a push receipt ({type(exc).__name__}: {exc})") from None
    return [pick.get("pair_id") for pick in read_jsonl(picks) if pick.get("pair_id")]


def _pull(args: argparse.Namespace) -> int:
    from hfpc_reward.feedback.agreement import agreement
    from hfpc_reward.feedback.export import LABELS_NAME, annotations_of, import_annotations, read_export
    from hfpc_reward.feedback.labelstudio import LabelStudioClient

    if args.export:
        tasks = read_export(args.export)
    elif args.url and args.project:
        client = LabelStudioClient(args.url, args.token)
        tasks, emails = client.export(args.project), client.user_emails()
        for annotation in (a for task in tasks for a in task.get("annotations") or []):
            annotation["completed_by"] = emails.get(
                annotation.get("completed_by"), annotation.get("completed_by")
            )
    else:
        raise UsageError("give --export EXPORT.json, or --url and --project to export from the server")
    pushed = [pair for path in args.picks for pair in _pushed_pairs(path)]
    rows, problems = annotations_of(tasks, pushed)
    # the run contract: one pull at a time writes the folder (an append-only log must not interleave)
    with RunOutput(args.folder, {"command": "feedback pull"}, resume=True, folder=True, name="feedback pull"):
        counts = import_annotations(args.folder, rows, problems)
        figures = agreement(read_jsonl(args.folder / LABELS_NAME))
        (args.folder / AGREEMENT_NAME).write_text(json.dumps(figures, indent=1))
    logger.info(
        "pulled %s; Krippendorff's alpha %s -> %s", counts, figures["krippendorff_alpha"], args.folder
    )
    return 0


def _agreement(args: argparse.Namespace) -> int:
    from hfpc_reward.feedback.agreement import agreement
    from hfpc_reward.feedback.export import CONTESTED_NAME, LABELS_NAME

    labels = read_jsonl(args.folder / LABELS_NAME)
    if not labels:
        raise UsageError(f"{args.folder} has no {LABELS_NAME}; run `hfpc feedback pull {args.folder}` first")
    print(json.dumps(agreement(labels), indent=1))
    for pair in read_jsonl(args.folder / CONTESTED_NAME):
        print(f"contested: {pair['generation']}  votes {pair['votes']}  reasons {pair['reasons']}")
    return 0


def _curve(args: argparse.Namespace) -> int:
    from hfpc_reward.feedback.curve import run_curve

    return run_curve(args)
