"""`imageretrieval catalog add|update|delete|list|compact`: edit the live catalog from the command line.

The same store the API writes (<WORKDIR>/catalog/): a running service applies these writes within a
second; the original styles.csv is never modified.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path


def register(sub) -> None:
    from ..cli import add_settings_flags

    p = sub.add_parser("catalog", help="add, update, delete and list products of the live catalog",
                       description="Edit the live catalog (<WORKDIR>/catalog/): journaled, durable, applied by a "
                                   "running API within a second. The original styles.csv is never modified.")
    csub = p.add_subparsers(dest="catalog_command", metavar="ACTION", required=True)
    add = csub.add_parser("add", help="add the products of a styles.csv-like file, one image per id")
    add.add_argument("--styles", type=Path, required=True, help="CSV with a header: id and styles.csv columns")
    add.add_argument("--images", type=Path, required=True, help="folder with <id>.jpg (or .png, .webp, ...)")
    update = csub.add_parser("update", help="change products' metadata and/or images")
    update.add_argument("--styles", type=Path, help="CSV rows: id and the columns to change")
    update.add_argument("--images", type=Path, help="folder with new images, <id>.jpg (ids of --styles or --id)")
    update.add_argument("--id", type=int, action="append", help="product id (with --set / --images)")
    update.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="a field to change")
    delete = csub.add_parser("delete", help="delete products")
    delete.add_argument("--id", type=int, action="append", required=True, help="product id; repeat for several")
    listing = csub.add_parser("list", help="changes journaled since a sequence number or time")
    listing.add_argument("--since", default="0", help="sequence number, or ISO time (2026-12-06T10:00)")
    listing.add_argument("--json", action="store_true")
    compact = csub.add_parser("compact", help="fold the journal into a snapshot now (the API does it periodically)")
    for action in (add, update, delete):
        action.add_argument("--model", action="append",
                            help="models whose vectors are stored with the write (default: every built index)")
    for action, func in ((add, run_add), (update, run_update), (delete, run_delete), (listing, run_list),
                         (compact, run_compact)):
        action.set_defaults(func=func)
        add_settings_flags(action, default=argparse.SUPPRESS)


def _rows(path: Path):
    from ..cli import CLIError
    from ..live.products import parse_styles_rows

    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise CLIError(f"cannot read {path}: {exc}") from exc
    return parse_styles_rows(text, str(path), max_rows=None)


def _report(changes, models) -> int:
    counts = Counter(c.action for c in changes)
    for c in changes:
        if c.action != "unchanged":
            print(f"{c.action} {c.id}")
    summary = ", ".join(f"{n} {action}" for action, n in sorted(counts.items()))
    changed = any(c.action != "unchanged" for c in changes)
    print(f"{summary or 'nothing to do'}; indexes updated: {', '.join(models) if changed and models else 'none'}")
    return 0


def run_add(args, settings) -> int:
    from ..cli import CLIError
    from ..live.offline import ProductWrite, find_image, write_products

    if not args.images.is_dir():
        raise CLIError(f"--images {args.images}: not a folder")
    writes = [ProductWrite("add", pid, fields, find_image(args.images, pid)) for pid, fields in _rows(args.styles)]
    return _report(*write_products(settings, writes, args.model))


def run_update(args, settings) -> int:
    from ..cli import CLIError
    from ..live.offline import ProductWrite, find_image, write_products

    if args.set and not args.id:
        raise CLIError("--set changes the products named by --id: add --id ID (for a --styles file, put the "
                       "column in the file)")
    if args.images is not None and not args.images.is_dir():
        raise CLIError(f"--images {args.images}: not a folder")
    updates: dict[int, dict] = {}
    if args.styles is not None:
        updates.update(dict(_rows(args.styles)))
    for pid in args.id or []:
        fields = {}
        for item in args.set:
            name, sep, value = item.partition("=")
            if not sep:
                raise CLIError(f"--set {item!r}: write FIELD=VALUE")
            fields[name.strip()] = value
        updates.setdefault(pid, {}).update(fields)
    if not updates:
        raise CLIError("nothing to update: give --styles, or --id with --set and/or --images")
    writes = []
    for pid, fields in updates.items():
        image = find_image(args.images, pid) if args.images is not None else None
        if not fields and image is None:
            raise CLIError(f"product {pid}: no field to set (--set FIELD=VALUE) and no new image"
                           + (f" ({pid}.jpg or another image format) in {args.images}" if args.images is not None
                              else " (--images DIR)"))
        writes.append(ProductWrite("update", pid, fields, image))
    return _report(*write_products(settings, writes, args.model))


def run_delete(args, settings) -> int:
    from ..live.offline import ProductWrite, write_products

    return _report(*write_products(settings, [ProductWrite("delete", pid) for pid in args.id], args.model))


def _since(since: str) -> tuple[int, datetime | None]:
    """--since: a sequence number, or a time (UTC unless it names its zone)."""
    from ..cli import CLIError

    if since.isdigit():
        return int(since), None
    try:
        when = datetime.fromisoformat(since)
    except ValueError as exc:
        raise CLIError(f"--since {since!r}: a sequence number or an ISO time such as 2026-12-06T10:00") from exc
    return 0, when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def run_list(args, settings) -> int:
    from ..live.store import LiveCatalog

    catalog = LiveCatalog(settings.dataset_root, settings.workdir)
    seq, when = _since(args.since)
    rows = []
    if seq < catalog.snapshot_seq:  # folded into the snapshot: its time is gone, the changes are not
        for pid, product in sorted(catalog.changed_ids().items()):
            rows.append({"seq": catalog.snapshot_seq, "time": None, "id": pid,
                         "action": "deleted" if product is None else "changed", "compacted": True})
    for entry in catalog.entries_since(max(seq, catalog.snapshot_seq)):
        stamp = entry.meta.get("time")
        if when is not None and stamp and datetime.fromisoformat(stamp) < when:
            continue
        for op in entry.ops:
            rows.append({"seq": entry.seq, "time": stamp, "id": op["id"],
                         "action": "deleted" if op["op"] == "delete" else "put", "key": entry.meta.get("key")})
    if args.json:
        print(json.dumps(rows))
        return 0
    for r in rows:
        print(f"{r['seq']:>8}  {r['time'] or '(compacted)':<29}  {r['action']:<7}  {r['id']}")
    print(f"{len(rows)} change(s); catalog at seq {catalog.seq}, {len(catalog)} products")
    return 0


def run_compact(args, settings) -> int:
    from ..live.store import LiveCatalog, storage_error

    catalog = LiveCatalog(settings.dataset_root, settings.workdir)
    try:
        seq = catalog.compact()
    except OSError as exc:  # the journal stays as it was: nothing is lost
        raise storage_error(exc) from exc
    print(f"catalog snapshot at seq {seq}: {len(catalog.changed_ids())} products differ from the original catalog")
    return 0
