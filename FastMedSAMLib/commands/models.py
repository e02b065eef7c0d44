"""`fastmedsam models list | pull NAME | verify [NAME] | path NAME` — the weights registry and the user cache."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Sequence


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "models",
        help="list, download and verify model weights",
        description="Model weights from the registry (models/registry.json), kept sha256-verified in the user cache "
        "($FASTMEDSAM_CACHE, else $XDG_CACHE_HOME/fastmedsam, else ~/.cache/fastmedsam).",
    )
    sub = p.add_subparsers(dest="models_command", required=True, metavar="ACTION")

    ls = sub.add_parser("list", help="the registry's models and the state of their weights")
    ls.set_defaults(func=run_list)

    pull = sub.add_parser(
        "pull",
        help="download weights into the cache and verify them",
        description="Download NAME's weights, check size and sha256, then move them into the cache. A verified "
        "cached copy is kept unless --force; a corrupt one is replaced. $FASTMEDSAM_MIRROR (base URL serving "
        "<base>/<name>/<file>) replaces the registry's sources.",
    )
    pull.add_argument("name", help="registry model name (see `fastmedsam models list`)")
    origin = pull.add_mutually_exclusive_group()
    origin.add_argument("--url", help="download from this URL instead (https://, http:// or file://)")
    origin.add_argument("--file", help="import a file you downloaded by hand (e.g. from Google Drive)")
    pull.add_argument("--source", help="use this registry source id (e.g. efficientvit-sam-upstream)")
    pull.add_argument("--force", action="store_true", help="download even when a verified copy is cached")
    pull.add_argument("--quiet", action="store_true", help="no progress bar")
    pull.set_defaults(func=run_pull)

    verify = sub.add_parser("verify", help="full sha256 check of cached weights (exit 1 on any mismatch)")
    verify.add_argument("name", nargs="?", help="one model (default: every model with weights present)")
    verify.set_defaults(func=run_verify)

    path = sub.add_parser("path", help="print where NAME's weights file lives (it may not exist yet)")
    path.add_argument("name")
    path.add_argument("--source", help="registry source id with its own file name")
    path.set_defaults(func=run_path)


def _table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def run_list(args: argparse.Namespace) -> int:
    from ..weights.registry import default_model, list_specs
    from ..weights.store import cache_dir, cache_state

    default = default_model()
    rows: List[Sequence[str]] = [("NAME", "FAMILY", "DIM", "PROMPTS", "INPUT", "LICENCE", "WEIGHTS")]
    for spec in list_specs():
        rows.append((
            spec.name + (" *" if spec.name == default else ""),
            spec.family,
            spec.dimensionality,
            ",".join(spec.prompts),
            "x".join(str(v) for v in spec.input_size),
            spec.licence,
            cache_state(spec.name),
        ))
    print(_table(rows))
    print(f"\n* default model; cache: {cache_dir()}")
    return 0


def run_pull(args: argparse.Namespace) -> int:
    from ..errors import WeightsError
    from ..weights.store import fetch_weights, verify, weights_path

    path = weights_path(args.name, args.source)
    if path.is_file() and not args.force:
        try:
            sha = verify(args.name, args.source)
        except WeightsError as exc:
            print(f"{exc}\ndownloading again", file=sys.stderr)
        else:
            print(f"{args.name}: already cached and verified (sha256 {sha}): {path}")
            return 0
    url = Path(args.file).resolve().as_uri() if args.file else args.url
    if args.file and not Path(args.file).is_file():
        raise WeightsError(f"--file {args.file}: no such file")
    path = fetch_weights(args.name, url=url, source=args.source, progress=not args.quiet)
    print(f"{args.name}: verified (sha256 {verify(args.name, args.source)}): {path}")
    return 0


def run_verify(args: argparse.Namespace) -> int:
    from ..errors import WeightsError
    from ..weights.registry import list_specs
    from ..weights.store import verify, weights_path

    names = [args.name] if args.name else [s.name for s in list_specs() if weights_path(s.name).is_file()]
    if not names:
        print("no model weights are present; pull them with `fastmedsam models pull NAME`")
        return 0
    failed = 0
    for name in names:
        try:
            print(f"ok      {name}  sha256 {verify(name)}  {weights_path(name)}")
        except WeightsError as exc:
            failed += 1
            print(f"FAILED  {name}: {exc}")
    return 1 if failed else 0


def run_path(args: argparse.Namespace) -> int:
    from ..weights.store import weights_path

    print(weights_path(args.name, args.source))
    return 0
